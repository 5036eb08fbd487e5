"""Faithfulness: reproduce the reference implementation's outputs on the ``aaclip_small`` fixture.

The fixture (``tests/fixtures/aaclip_small``, see its README) holds a ViT-L-14-336 backbone with random
structured weights at 112 px, reference-format adapter checkpoints and every intermediate the public
AA-CLIP code computed from them. Tolerances are read from ``fixture.json`` (key ``tolerances``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aaclip_xattn.backbone import build_backbone
from aaclip_xattn.model import (
    AdaptedCLIP,
    ModelConfig,
    anomaly_map,
    blur_grid,
    det_logits,
    grid_anomaly_map,
    image_score,
    make_anchors,
    patch_logits,
    upsample_map,
)

FIXTURE = Path(__file__).parent / "fixtures" / "aaclip_small"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    """Expected tensors and tolerances."""
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    tolerances = {
        k: v["tol"] for k, v in json.loads((FIXTURE / "fixture.json").read_text())["tolerances"].items()
    }
    return expected, tolerances


@pytest.fixture(scope="module")
def computed(reference):
    """Build the model from the fixture files once and compute every compared quantity."""
    expected, _ = reference
    meta = expected["meta"]
    clip = build_backbone("ViT-L-14-336", pretrained=FIXTURE / "backbone.pt", image_size=meta["img_size"])
    model = AdaptedCLIP(clip, ModelConfig(descriptions={meta["class_name"]: meta["description"]}))
    text_ckpt = torch.load(FIXTURE / "text_adapter.pth", weights_only=True)
    image_ckpt = torch.load(FIXTURE / "image_adapter.pth", weights_only=True)
    model.text_adapter.load_state_dict(text_ckpt["text_adapter"], strict=True)
    model.image_adapter.load_state_dict(image_ckpt["image_adapter"], strict=True)
    model.eval()

    out: dict[str, object] = {}
    images = expected["inputs"]["images"]
    normal, abnormal = model.class_prompts(meta["class_name"])
    out["text.sentences_normal"], out["text.sentences_abnormal"] = normal, abnormal
    with torch.no_grad():
        tokens = model.tokenize(normal + abnormal)
        out["text.tokens"] = tokens
        eot = model.encode_text(tokens)
        embeddings = F.normalize(eot, dim=-1)
        anchors = make_anchors(embeddings.unsqueeze(0))[0]
        out["text.adapted_eot_features"] = eot
        out["text.sentence_embeddings"] = embeddings
        out["text.anchors"] = anchors
        out["text.plain_text_features"] = model.clip.encode_text(tokens)

        features = model.encode_image(images)
        out["image.seg_tokens"] = torch.stack(features.seg_tokens)
        out["image.det_token"] = features.det_token
        out["image.final_map"] = anomaly_map(features.seg_tokens, anchors, model.image_size, "industrial")
        out["image.final_map_medical"] = anomaly_map(
            features.seg_tokens, anchors, model.image_size, "medical"
        )
        out["image.det_logits"] = det_logits(features.det_token, anchors)
        out["image.image_score"] = image_score(features.det_token, anchors)

        # map arithmetic isolated from the fixture's own features and anchors
        seg_ref, anchors_ref = expected["image"]["seg_tokens"], expected["text"]["anchors"]
        logits = torch.stack([patch_logits(s, anchors_ref) for s in seg_ref])
        raw = torch.stack([grid_anomaly_map(lg) for lg in logits])
        blurred = blur_grid(raw, "industrial")
        out["image.logits_grid"] = logits
        out["image.map_grid_raw"] = raw
        out["image.map_grid_blurred"] = blurred
        out["image.map_full"] = torch.stack([upsample_map(b, model.image_size) for b in blurred])

        visual = model.clip.visual
        inter = visual.forward_intermediates(
            images, indices=[t - 1 for t in model.config.taps], output_fmt="NLC", output_extra_tokens=True
        )
        out["backbone.taps"] = torch.stack(
            [
                torch.cat([c, p], dim=1)
                for c, p in zip(
                    inter["image_intermediates_prefix"], inter["image_intermediates"], strict=True
                )
            ]
        )
        out["backbone.pooled"] = inter["image_features"]
        out["backbone.pos_embed_resized"] = visual.positional_embedding
        out["stage1.cls_embed_normalized"] = F.normalize(inter["image_features"], dim=-1)

    out["stage1.features_batch"] = torch.stack(model.stage1_features(images, vv_axis="batch"))
    out["stage1.features_single"] = torch.stack(model.stage1_features(images, vv_axis="value_only"))
    return out


EXACT = ["text.sentences_normal", "text.sentences_abnormal", "text.tokens"]
TOLERANCED = [
    "text.adapted_eot_features",
    "text.sentence_embeddings",
    "text.anchors",
    "text.plain_text_features",
    "image.seg_tokens",
    "image.det_token",
    "image.logits_grid",
    "image.map_grid_raw",
    "image.map_grid_blurred",
    "image.map_full",
    "image.final_map",
    "image.final_map_medical",
    "image.det_logits",
    "image.image_score",
    "backbone.pos_embed_resized",
    "backbone.taps",
    "backbone.pooled",
    "stage1.features_batch",
    "stage1.features_single",
    "stage1.cls_embed_normalized",
]


def _expected(expected: dict, key: str):
    section, name = key.split(".")
    if key == "text.tokens":
        return torch.cat([expected["text"]["tokens_normal"], expected["text"]["tokens_abnormal"]])
    return expected[section][name]


@pytest.mark.parametrize("key", EXACT)
def test_prompts_and_tokens_are_exact(reference, computed, key):
    expected, _ = reference
    got, want = computed[key], _expected(expected, key)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want)
    else:
        assert got == want


@pytest.mark.parametrize("key", TOLERANCED)
def test_tensor_within_fixture_tolerance(reference, computed, key):
    expected, tolerances = reference
    got, want = computed[key], _expected(expected, key)
    assert got.shape == want.shape, key
    error = (got.double() - want.double()).abs().max().item()
    assert error <= tolerances[key], f"{key}: max abs error {error:.3e} > tolerance {tolerances[key]:.1e}"


def test_stage1_batch_mode_differs_from_single_as_in_the_reference(reference, computed):
    # the batch-axis quirk is real in the fixture (up to 0.036), so matching both is not a tautology
    gap = (computed["stage1.features_batch"] - computed["stage1.features_single"]).abs().max().item()
    assert gap > 0.01
