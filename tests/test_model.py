"""AdaptedCLIP: config scaling, frozen backbone, adapted encoders against open_clip oracles, maps, stage 1."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from aaclip_xattn.adapters import blend_residual
from aaclip_xattn.backbone import build_backbone
from aaclip_xattn.factory import create_model
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
    vv_block_forward,
)


def _images(batch: int, seed: int = 0, size: int = 128) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ config


def test_config_defaults_scale_with_depth():
    vit_l = ModelConfig().resolve(12, 24)
    assert (vit_l.text_adapter_layers, vit_l.image_adapter_layers, vit_l.taps, vit_l.vv_start_block) == (
        3,
        6,
        (6, 12, 18, 24),
        5,
    )
    tiny = ModelConfig().resolve(4, 8)
    assert (tiny.text_adapter_layers, tiny.image_adapter_layers, tiny.taps, tiny.vv_start_block) == (
        1,
        2,
        (2, 4, 6, 8),
        2,
    )
    vit_b = ModelConfig().resolve(12, 12)
    assert (vit_b.image_adapter_layers, vit_b.taps, vit_b.vv_start_block) == (3, (3, 6, 9, 12), 2)
    assert ModelConfig().resolve(2, 8).text_adapter_layers == 1  # min 1
    explicit = ModelConfig(taps=(1, 8), image_adapter_layers=0, vv_start_block=8).resolve(4, 8)
    assert (explicit.taps, explicit.image_adapter_layers, explicit.vv_start_block) == ((1, 8), 0, 8)
    assert ModelConfig().blend == 0.1 and not ModelConfig().proj_relu and ModelConfig().activation == "gelu"


def test_config_from_mapping_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'tapz'; valid keys: text_adapter_layers, .*taps"):
        ModelConfig.from_mapping({"tapz": [1]})
    cfg = ModelConfig.from_mapping({"taps": [2, 4], "blend": 0.2})
    assert cfg.taps == (2, 4) and cfg.blend == 0.2
    assert ModelConfig.from_mapping(cfg.to_dict()) == cfg
    with_desc = ModelConfig(descriptions={"bottle": "dark bottle"})
    assert with_desc.to_dict()["descriptions"] == {"bottle": "dark bottle"}
    assert ModelConfig.from_mapping(with_desc.to_dict()) == with_desc
    assert hash(copy.deepcopy(with_desc)) == hash(with_desc)  # frozen, hashable, deep-copyable


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"taps": (4, 2)}, "strictly increasing"),
        ({"taps": (0, 2)}, "positive ints"),
        ({"blend": 1.5}, r"blend must be a number in \[0, 1\]"),
        ({"activation": "relu"}, "activation must be one of gelu, quick_gelu"),
        ({"text_adapter_layers": -1}, "text_adapter_layers must be a non-negative int"),
        ({"proj_relu": "yes"}, "proj_relu must be a bool"),
        ({"xattn_heads": 0}, "xattn_heads must be a positive int"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"taps": (2, 9)}, r"taps=\[2, 9\] reach beyond the 8 vision blocks"),
        ({"text_adapter_layers": 5}, "text_adapter_layers=5 exceeds the 4 text blocks"),
        ({"vv_start_block": 9}, "vv_start_block=9 exceeds the 8 vision blocks"),
    ],
)
def test_config_resolve_checks_the_backbone(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields).resolve(4, 8)


# ------------------------------------------------------------------ structure


def test_vit_l_14_336_trainable_counts_and_placement_on_meta():
    model = create_model("baseline", "ViT-L-14-336", image_size=518, device="meta")
    cfg = model.config
    assert (cfg.text_adapter_layers, cfg.image_adapter_layers, cfg.taps, cfg.vv_start_block) == (
        3,
        6,
        (6, 12, 18, 24),
        5,
    )
    assert (model.embed_dim, model.image_size, model.grid_size) == (768, 518, 37)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(v for k, v in trainable.items() if k.startswith("text_adapter.")) == 2_359_296
    assert sum(v for k, v in trainable.items() if k.startswith("image_adapter.")) == 10_223_616
    assert sum(trainable.values()) == 12_582_912
    assert not any(k.startswith("clip.") for k in trainable)


def test_backbone_is_frozen_and_stays_in_eval_after_train(tiny_model_factory):
    model = tiny_model_factory()
    model.train()
    assert model.training and model.text_adapter.training and model.image_adapter.training
    assert not model.clip.training and not any(m.training for m in model.clip.modules())
    assert all(not p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.text_adapter.parameters())
    model.eval()
    assert not model.training


def test_activation_must_match_the_backbone():
    with pytest.raises(ValueError, match="activation='quick_gelu' but the backbone was built with 'gelu'"):
        AdaptedCLIP(build_backbone("tiny"), ModelConfig(activation="quick_gelu"))
    model = create_model("baseline", activation="quick_gelu")
    assert model.config.activation == "quick_gelu"


# ------------------------------------------------------------------ text


def _hook_adapters(blocks, adapters, count: int, blend: float) -> list:
    """Apply the blend after blocks 0..count-1 via forward hooks on open_clip's own blocks."""

    def make(index: int):
        def hook(module, args, output):
            return blend_residual(output, adapters[index](output), blend)

        return hook

    return [blocks[i].register_forward_hook(make(i)) for i in range(count)]


def test_text_encoder_equals_open_clip_with_hooked_adapters(tiny_model_factory):
    model = tiny_model_factory(text_adapter_layers=2, blend=0.3)
    sentences = model.class_prompts("metal_nut")[1][:5]
    tokens = model.tokenize(sentences)
    with torch.no_grad():
        ours = model.encode_text(tokens)
        oracle_clip = copy.deepcopy(model.clip)
        oracle_clip.text_projection.copy_(torch.eye(128))  # tiny: text width == embed dim
        handles = _hook_adapters(oracle_clip.transformer.resblocks, model.text_adapter, 2, 0.3)
        pooled = oracle_clip.encode_text(tokens)
        for handle in handles:
            handle.remove()
        expected = F.leaky_relu(pooled @ model.text_adapter[2].fc[0].weight.T, 0.01)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    # the adapters matter: without them the features differ
    with torch.no_grad():
        plain = F.leaky_relu(oracle_clip.encode_text(tokens) @ model.text_adapter[2].fc[0].weight.T, 0.01)
    assert (plain - ours).abs().max() > 1e-3


def test_prompt_embeddings_and_anchors(tiny_model_factory):
    model = tiny_model_factory()
    with torch.no_grad():
        emb = model.prompt_embeddings(["metal_nut", "screw"])
        anchors = model.text_anchors(["metal_nut", "screw"])
        normal, abnormal = model.class_prompts("screw")
        direct = F.normalize(model.encode_text(model.tokenize(normal + abnormal)), dim=-1)
    assert emb.shape == (2, 16, 128) and anchors.shape == (2, 128, 2)
    torch.testing.assert_close(emb[1], direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 16))
    expected_n = emb[:, :6].mean(1) / emb[:, :6].mean(1).norm(dim=-1, keepdim=True)
    expected_a = emb[:, 6:].mean(1) / emb[:, 6:].mean(1).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(anchors[..., 0], expected_n)
    torch.testing.assert_close(anchors[..., 1], expected_a)
    per_image, prompts = model.anchors_for(["screw", "metal_nut", "screw"])
    torch.testing.assert_close(per_image, anchors[[1, 0, 1]], rtol=0, atol=1e-6)
    assert prompts.shape == (3, 16, 128)


def test_anchors_carry_gradients_into_the_text_adapter_only(tiny_model_factory):
    model = tiny_model_factory()
    model.text_anchors(["bottle"]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_adapter.parameters())
    assert all(p.grad is None for p in model.clip.parameters())


def test_too_long_prompt_is_an_error(tiny_model_factory):
    model = tiny_model_factory(descriptions={"long": " ".join(["word"] * 80)})
    with pytest.raises(ValueError, match=r"needs \d+ tokens, more than the context length 77"):
        model.text_anchors(["long"])


def test_descriptions_file_option_and_sha256(tiny_model_factory, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"bottle": "dark bottle"}), encoding="utf-8")
    model = tiny_model_factory(descriptions=str(path))
    assert model.class_prompts("bottle")[0][1] == "a photo of dark bottle."
    assert (
        model.descriptions.sha256
        == create_model("baseline", descriptions={"bottle": "dark bottle"}).descriptions.sha256
    )
    with pytest.raises(ValueError, match=r"d\.json: no description for category 'screw'"):
        model.class_prompts("screw")
    clone = copy.deepcopy(model)  # config and descriptions survive a deep copy (e.g. an EMA/snapshot)
    assert clone.class_prompts("bottle") == model.class_prompts("bottle")


# ------------------------------------------------------------------ image


def test_image_features_equal_open_clip_with_hooked_adapters(tiny_model_factory):
    model = tiny_model_factory(image_adapter_layers=3, blend=0.25)
    images = _images(2)
    with torch.no_grad():
        ours = model.encode_image(images)
        visual = copy.deepcopy(model.clip.visual)
        handles = _hook_adapters(visual.transformer.resblocks, model.image_adapter["layer_adapters"], 3, 0.25)
        out = visual.forward_intermediates(
            images, indices=[1, 3, 5, 7], output_fmt="NLC", intermediates_only=True
        )
        for handle in handles:
            handle.remove()
        patches = [visual.ln_post(t) for t in out["image_intermediates"]]
        seg = [
            F.normalize(p @ h.fc.weight.T, dim=-1)
            for p, h in zip(patches, model.image_adapter["seg_proj"], strict=True)
        ]
        det = F.normalize(patches[-1] @ model.image_adapter["det_proj"].fc.weight.T, dim=-1).mean(1)
    assert len(ours.seg_tokens) == 4 and ours.seg_tokens[0].shape == (2, 64, 128)
    for got, want in zip(ours.seg_tokens, seg, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.det_token, det, rtol=0, atol=1e-6)
    assert ours.det_token.norm(dim=-1).max() < 1  # mean of unit vectors, not re-normalised


def test_adapters_write_into_the_residual_stream_from_block_zero(tiny_model_factory):
    # the block-2 tap (after block index 1) must see adapter 1; adapter 2 must not touch it
    model = tiny_model_factory(image_adapter_layers=3)
    images = _images(1)
    with torch.no_grad():
        before = model.encode_image(images).seg_tokens
        model.image_adapter["layer_adapters"][2].fc[0].weight.mul_(-1)
        after2 = model.encode_image(images).seg_tokens
        model.image_adapter["layer_adapters"][1].fc[0].weight.mul_(-1)
        after1 = model.encode_image(images).seg_tokens
    assert torch.equal(before[0], after2[0]) and not torch.equal(before[1], after2[1])
    assert not torch.equal(after2[0], after1[0])


def test_wrong_image_shape_is_an_error(tiny_model_factory):
    model = tiny_model_factory()
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 128, 128\), got \(2, 3, 64, 64\)"):
        model.encode_image(torch.zeros(2, 3, 64, 64))


# ------------------------------------------------------------------ maps


def test_patch_logits_and_scores_against_float64_numpy():
    gen = torch.Generator().manual_seed(0)
    seg = F.normalize(torch.randn(2, 16, 8, generator=gen), dim=-1)
    anchors = F.normalize(torch.randn(2, 8, 2, generator=gen), dim=1)
    det = torch.randn(2, 8, generator=gen) * 0.1
    logits = patch_logits(seg, anchors)
    ref = 100 * np.einsum("bld,bdk->bkl", seg.double().numpy(), anchors.double().numpy()).reshape(2, 2, 4, 4)
    np.testing.assert_allclose(logits.numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(grid_anomaly_map(logits).numpy(), (ref[:, 1] + 1 - ref[:, 0]) / 2, atol=2e-5)
    dots = np.einsum("bd,bdk->bk", det.double().numpy(), anchors.double().numpy())
    np.testing.assert_allclose(det_logits(det, anchors).numpy(), dots, atol=1e-6)
    np.testing.assert_allclose(image_score(det, anchors).numpy(), (dots[:, 1] + 1) / 2, atol=1e-6)
    # one shared (D, 2) matrix gives the same as repeating it per image
    shared = anchors[0]
    torch.testing.assert_close(patch_logits(seg, shared), patch_logits(seg, shared.expand(2, -1, -1)))
    torch.testing.assert_close(image_score(det, shared), image_score(det, shared.expand(2, -1, -1)))


@pytest.mark.parametrize(
    ("domain", "sigma", "radius"), [("industrial", 1.0, 3), ("medical", 1.5, 4), ("Medical", 1.5, 4)]
)
def test_blur_matches_scipy_gaussian_with_reflect_border(domain, sigma, radius):
    maps = torch.randn(3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = np.stack([ndi.gaussian_filter(m, sigma, mode="mirror", radius=radius) for m in maps.numpy()])
    np.testing.assert_allclose(blur_grid(maps, domain).numpy(), expected, atol=1e-12)
    replicate = np.stack([ndi.gaussian_filter(m, sigma, mode="nearest", radius=radius) for m in maps.numpy()])
    assert np.abs(replicate - expected).max() > 1e-3  # the border mode matters


def test_blur_errors():
    with pytest.raises(ValueError, match="domain must be one of industrial, medical"):
        blur_grid(torch.zeros(1, 8, 8), "retail")
    with pytest.raises(ValueError, match="grid 4x4 is too small for the 9x9"):
        blur_grid(torch.zeros(1, 4, 4), "medical")


def test_upsample_is_bilinear_align_corners_true():
    maps = torch.randn(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = np.stack(
        [ndi.zoom(m, 112 / 8, order=1, mode="nearest", grid_mode=False) for m in maps.numpy()]
    )
    np.testing.assert_allclose(upsample_map(maps, 112).numpy(), expected, atol=1e-12)
    assert torch.equal(upsample_map(maps, 112)[:, 0, 0], maps[:, 0, 0])  # corners map to corners


def test_anomaly_map_sums_taps_on_the_grid_like_per_tap_maps():
    gen = torch.Generator().manual_seed(3)
    seg = [F.normalize(torch.randn(2, 64, 16, generator=gen), dim=-1) for _ in range(4)]
    anchors = F.normalize(torch.randn(16, 2, generator=gen), dim=0)
    for domain in ("industrial", "medical"):
        fast = anomaly_map(seg, anchors, 96, domain)
        per_tap = sum(
            upsample_map(blur_grid(grid_anomaly_map(patch_logits(s, anchors)), domain), 96) for s in seg
        )
        assert fast.shape == (2, 96, 96)
        torch.testing.assert_close(fast, per_tap, rtol=0, atol=2e-5)


def test_score_composes_the_pure_functions(tiny_model_factory):
    model = tiny_model_factory()
    images = _images(2, seed=4)
    out = model.score(images, ["screw", "bottle"], domain="medical")
    with torch.no_grad():
        anchors = model.text_anchors(["screw", "bottle"])
        anchors = torch.stack([anchors[0], anchors[1]])
        feats = model.encode_image(images)
    assert out["anomaly_map"].shape == (2, 128, 128) and out["image_score"].shape == (2,)
    torch.testing.assert_close(
        out["anomaly_map"], anomaly_map(feats.seg_tokens, anchors, 128, "medical"), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(out["image_score"], image_score(feats.det_token, anchors), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="got 1 categories for 2 images"):
        model.score(images, ["screw"])


def test_make_anchors_of_unit_rows():
    emb = F.normalize(torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(5)), dim=-1)
    anchors = make_anchors(emb)
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(1, 2))


# ------------------------------------------------------------------ stage 1


def _vv_oracle(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Token-axis V-V attention via torch's own MultiheadAttention with q and k slices set to v's."""
    clone = copy.deepcopy(block)
    width = x.shape[-1]
    with torch.no_grad():
        w, b = clone.attn.in_proj_weight, clone.attn.in_proj_bias
        w[:width] = w[2 * width :]
        w[width : 2 * width] = w[2 * width :]
        b[:width] = b[2 * width :]
        b[width : 2 * width] = b[2 * width :]
        return clone(x)


def _randomise_biases(block: torch.nn.Module) -> None:
    with torch.no_grad():
        block.attn.in_proj_bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(6))


def test_vv_block_against_multihead_attention_oracle():
    clip = build_backbone("tiny")
    block = copy.deepcopy(clip.visual.transformer.resblocks[3])
    _randomise_biases(block)
    x = torch.randn(3, 65, 192, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(
            vv_block_forward(block, x, "token"), _vv_oracle(block, x), rtol=0, atol=1e-5
        )
        # batch axis: attention over the images at each token position == token attention on the transpose
        batch = vv_block_forward(block, x, "batch")
        torch.testing.assert_close(
            batch, _vv_oracle(block, x.transpose(0, 1)).transpose(0, 1), rtol=0, atol=1e-5
        )
        single = torch.cat([vv_block_forward(block, x[i : i + 1], "batch") for i in range(3)])
        torch.testing.assert_close(single, vv_block_forward(block, x, "value_only"), rtol=0, atol=1e-6)
        assert (batch - single).abs().max() > 1e-4


def test_stage1_modes(tiny_model_factory):
    model = tiny_model_factory()
    images = _images(3, seed=8)
    batch = model.stage1_features(images, vv_axis="batch")
    value_only = model.stage1_features(images, vv_axis="value_only")
    token = model.stage1_features(images, vv_axis="token")
    token_alone = model.stage1_features(images[:1], vv_axis="token")
    batch_alone = model.stage1_features(images[:1], vv_axis="batch")
    assert len(batch) == 4 and batch[0].shape == (3, 64, 128)
    assert not batch[0].requires_grad
    for j in range(4):
        torch.testing.assert_close(token_alone[j][0], token[j][0], rtol=0, atol=1e-5)  # batch-independent
        torch.testing.assert_close(
            batch_alone[j][0], value_only[j][0], rtol=0, atol=1e-6
        )  # N=1: batch == value_only
        assert batch[j].norm(dim=-1).max() <= 2 + 1e-5
    # tap 2 is after block index 1, before V-V starts at block 2: identical in every mode
    assert torch.equal(batch[0], token[0])
    assert (batch[-1] - token[-1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="vv_axis must be one of batch, token, value_only"):
        model.stage1_features(images, vv_axis="tokens")


def test_stage1_without_vv_blocks_equals_plain_clip_features(tiny_model_factory):
    model = tiny_model_factory(vv_start_block=8)
    images = _images(2, seed=9)
    feats = model.stage1_features(images)
    visual = model.clip.visual
    with torch.no_grad():
        out = visual.forward_intermediates(images, indices=[1, 3, 5, 7], output_fmt="NLC")
        cls = F.normalize(out["image_features"], dim=-1)
        expected = [
            F.normalize(visual.ln_post(t) @ visual.proj, dim=-1) + cls[:, None]
            for t in out["image_intermediates"]
        ]
    for got, want in zip(feats, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
