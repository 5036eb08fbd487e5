"""Scoring: fusion modes against direct numpy, map arithmetic identities, batched scoring of both model kinds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from aaclip_xattn import model as model_lib
from aaclip_xattn.evaluate.runner import EvalConfig
from aaclip_xattn.evaluate.scoring import (
    BLUR_SETTINGS,
    category_text_inputs,
    fuse_image_scores,
    get_blur_settings,
    list_fusion_modes,
    score_images,
)

# --------------------------------------------------------------------------------------------------
# fusion


def _direct_fusion(maps, raw, domain):
    normalised = (maps - maps.min()) / (maps.max() - maps.min())
    map_score = normalised.reshape(len(maps), -1).max(axis=1)
    if domain == "medical":
        return map_score
    return 0.5 * map_score + 0.5 * (raw - raw.min()) / (raw.max() - raw.min())


@pytest.mark.parametrize("domain", ["industrial", "medical"])
def test_transductive_fusion_equals_min_max_over_all_pixels_of_the_category(domain):
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 3.0, size=(7, 9, 9)) - 4.0
    raw = rng.random(7) * 0.2 + 0.4
    got = fuse_image_scores(
        raw, maps.max(axis=(1, 2)), maps.min(axis=(1, 2)), fusion="transductive", domain=domain
    )
    np.testing.assert_allclose(got, _direct_fusion(maps, raw, domain), rtol=0, atol=1e-15)


def test_none_fusion_returns_the_raw_scores_and_constant_inputs_normalise_to_zero():
    raw = np.array([0.3, 0.7, 0.5])
    np.testing.assert_array_equal(
        fuse_image_scores(raw, [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], fusion="none"), raw
    )
    constant = fuse_image_scores([0.5, 0.5], [2.0, 2.0], [2.0, 2.0], fusion="transductive")
    np.testing.assert_array_equal(constant, [0.0, 0.0])
    assert set(list_fusion_modes()) == {"transductive", "none"}


def test_fusion_rejects_unknown_modes_and_mismatched_lengths():
    with pytest.raises(ValueError, match="unknown fusion mode 'minmax'; valid modes: transductive, none"):
        fuse_image_scores([0.1], [1.0], [0.0], fusion="minmax")
    with pytest.raises(ValueError, match="unknown domain 'satellite'; valid domains: industrial, medical"):
        fuse_image_scores([0.1], [1.0], [0.0], domain="satellite")
    with pytest.raises(ValueError, match="one value per image; got 2, 1, 1"):
        fuse_image_scores([0.1, 0.2], [1.0], [0.0])


# --------------------------------------------------------------------------------------------------
# map arithmetic


@pytest.mark.parametrize("domain", ["industrial", "medical"])
def test_sum_then_upsample_equals_per_tap_upsample_then_sum(domain):
    gen = torch.Generator().manual_seed(0)
    grid, dim, size = 10, 16, 47
    taps = [
        F.normalize(torch.randn(3, grid * grid, dim, generator=gen, dtype=torch.float64), dim=-1)
        for _ in range(4)
    ]
    anchors = F.normalize(torch.randn(dim, 2, generator=gen, dtype=torch.float64), dim=0)
    fused = model_lib.anomaly_map(taps, anchors, size, domain)
    per_tap = sum(
        model_lib.upsample_map(
            model_lib.blur_grid(model_lib.grid_anomaly_map(model_lib.patch_logits(t, anchors)), domain), size
        )
        for t in taps
    )
    assert fused.shape == (3, size, size)
    torch.testing.assert_close(fused, per_tap, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("domain", ["industrial", "medical"])
def test_recorded_blur_settings_match_the_model_blur(domain):
    settings = get_blur_settings(domain)
    radius = settings["kernel"] // 2
    maps = np.random.default_rng(1).random((2, 12, 12))
    # scipy 'mirror' is torch's 'reflect' (edge pixel not repeated); truncate fixes the kernel size.
    want = np.stack(
        [
            ndimage.gaussian_filter(m, settings["sigma"], mode="mirror", truncate=radius / settings["sigma"])
            for m in maps
        ]
    )
    got = model_lib.blur_grid(torch.from_numpy(maps), domain).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert BLUR_SETTINGS["industrial"]["kernel"] == 7 and BLUR_SETTINGS["medical"]["sigma"] == 1.5


# --------------------------------------------------------------------------------------------------
# batched scoring


def _images(model, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=gen)


def test_score_images_matches_model_score_and_is_batch_independent(tiny_baseline):
    images = _images(tiny_baseline, 3)
    anchors, prompts = category_text_inputs(tiny_baseline, "bottle")
    assert prompts is None and anchors.shape == (tiny_baseline.embed_dim, 2)
    maps, raw = score_images(tiny_baseline, images, anchors)
    reference = tiny_baseline.score(images, ["bottle"] * 3)
    torch.testing.assert_close(maps, reference["anomaly_map"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(raw, reference["image_score"], rtol=1e-6, atol=1e-6)
    single_maps, single_raw = score_images(tiny_baseline, images[1:2], anchors)
    torch.testing.assert_close(single_maps[0], maps[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(single_raw[0], raw[1], rtol=1e-6, atol=1e-6)
    assert maps.dtype == torch.float32 and maps.shape == (
        3,
        tiny_baseline.image_size,
        tiny_baseline.image_size,
    )


def test_score_images_conditions_cross_attention_anchors_per_image(tiny_xattn):
    model = copy.deepcopy(tiny_xattn)
    with torch.no_grad():
        model.text_cross_attn.gate.fill_(0.7)
        model.image_cross_attn.gate.fill_(0.3)
    images = _images(model, 2, seed=3)
    anchors, prompts = category_text_inputs(model, "grass")
    assert prompts.shape == (16, model.embed_dim)
    maps, raw = score_images(model, images, anchors, prompt_embeddings=prompts)
    reference = model.score(images, ["grass", "grass"])
    torch.testing.assert_close(maps, reference["anomaly_map"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(raw, reference["image_score"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="cross-attention model needs prompt_embeddings"):
        score_images(model, images, anchors)


def test_cross_attention_model_with_zero_gates_scores_like_the_baseline(tiny_baseline, tiny_xattn):
    model = copy.deepcopy(tiny_xattn)
    model.text_adapter.load_state_dict(tiny_baseline.text_adapter.state_dict())
    model.image_adapter.load_state_dict(tiny_baseline.image_adapter.state_dict())
    assert model.text_cross_attn.gate.item() == 0.0 and model.image_cross_attn.gate.item() == 0.0
    images = _images(model, 2, seed=5)
    base = score_images(tiny_baseline, images, category_text_inputs(tiny_baseline, "wood")[0])
    anchors, prompts = category_text_inputs(model, "wood")
    xattn = score_images(model, images, anchors, prompt_embeddings=prompts)
    torch.testing.assert_close(xattn[0], base[0], rtol=0, atol=0)
    torch.testing.assert_close(xattn[1], base[1], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# EvalConfig


def test_eval_config_from_mapping_rejects_unknown_keys_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'fuson'; valid keys: fusion, aupro_mode"):
        EvalConfig.from_mapping({"fuson": "none"})
    cfg = EvalConfig.from_mapping({"fusion": "none", "aupro_mode": "legacy200", "batch_size": 2})
    assert (cfg.fusion, cfg.aupro_mode, cfg.batch_size, cfg.aupro_fpr_limit) == ("none", "legacy200", 2, 0.3)
    assert EvalConfig.from_mapping(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fusion", "minmax", "EvalConfig.fusion must be one of transductive, none; got 'minmax'"),
        ("aupro_mode", "legacy", "EvalConfig.aupro_mode must be one of exact, legacy200; got 'legacy'"),
        ("aupro_fpr_limit", 0.0, r"EvalConfig.aupro_fpr_limit must be a number in \(0, 1\]; got 0.0"),
        ("domain", "auto", "EvalConfig.domain must be one of industrial, medical; got 'auto'"),
        ("batch_size", 0, "EvalConfig.batch_size must be an integer >= 1; got 0"),
        ("amp", "yes", "EvalConfig.amp must be true or false; got 'yes'"),
    ],
)
def test_eval_config_rejects_bad_values_naming_the_field(key, value, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig.from_mapping({key: value})
