"""Adapters: norm-matched blend, reference key names and shapes, parameter counts, Xavier init."""

from __future__ import annotations

import math

import pytest
import torch

from aaclip_xattn.adapters import ImageAdapter, TextAdapter, blend_residual, make_linear
from aaclip_xattn.seeding import make_generator

# ViT-L-14-336 dims: text width 768, vision width 1024, joint 768; 3 text and 6 image adapters, 4 taps.
TEXT_KEYS = {f"{i}.fc.0.weight": (768, 768) for i in range(4)}
IMAGE_KEYS = {
    **{f"layer_adapters.{i}.fc.0.weight": (1024, 1024) for i in range(6)},
    **{f"seg_proj.{i}.fc.weight": (768, 1024) for i in range(4)},
    "det_proj.fc.weight": (768, 1024),
}


def test_blend_matches_float64_oracle_and_norm_matching():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    a = torch.rand(3, 7, 16, generator=gen, dtype=torch.float64) * 5
    out = blend_residual(x, a, 0.1)
    rescaled = a * (x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True))
    expected = 0.1 * rescaled + 0.9 * x
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # lambda 1 keeps only the adapter direction, at the norm of x; lambda 0 is the identity
    full = blend_residual(x, a, 1.0)
    torch.testing.assert_close(full.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(
        torch.nn.functional.cosine_similarity(full, a, dim=-1), torch.ones(3, 7, dtype=torch.float64)
    )
    assert torch.equal(blend_residual(x, a, 0.0), x)


def test_reference_shaped_state_dicts_load_strictly():
    gen = torch.Generator().manual_seed(1)
    text = TextAdapter(768, 768, 3)
    image = ImageAdapter(1024, 768, 6, 4)
    assert {k: tuple(v.shape) for k, v in text.state_dict().items()} == TEXT_KEYS
    assert {k: tuple(v.shape) for k, v in image.state_dict().items()} == IMAGE_KEYS
    text_sd = {k: torch.randn(s, generator=gen) for k, s in TEXT_KEYS.items()}
    image_sd = {k: torch.randn(s, generator=gen) for k, s in IMAGE_KEYS.items()}
    text.load_state_dict(text_sd, strict=True)
    image.load_state_dict(image_sd, strict=True)
    for key, value in text_sd.items():
        assert torch.equal(text.state_dict()[key], value)
    assert torch.equal(image["det_proj"].fc.weight, image_sd["det_proj.fc.weight"])
    assert torch.equal(text.projection.fc[0].weight, text_sd["3.fc.0.weight"])


def test_vit_l_trainable_parameter_counts():
    text = TextAdapter(768, 768, 3, device="meta")
    image = ImageAdapter(1024, 768, 6, 4, device="meta")
    assert sum(p.numel() for p in text.parameters()) == 2_359_296 == 4 * 768**2
    assert sum(p.numel() for p in image.parameters()) == 10_223_616
    assert not any(m.bias is not None for m in image.modules() if isinstance(m, torch.nn.Linear))


def test_proj_relu_changes_head_keys_and_behaviour():
    image = ImageAdapter(8, 4, 1, 2, proj_relu=True)
    assert set(image.state_dict()) == {
        "layer_adapters.0.fc.0.weight",
        "seg_proj.0.fc.0.weight",
        "seg_proj.1.fc.0.weight",
        "det_proj.fc.0.weight",
    }
    x = torch.randn(5, 8)
    out = image["det_proj"](x)
    expected = torch.nn.functional.leaky_relu(x @ image["det_proj"].fc[0].weight.T, 0.01)
    torch.testing.assert_close(out, expected)


def test_adapters_are_linear_then_leaky_relu():
    text = TextAdapter(6, 5, 2)
    x = torch.randn(3, 6)
    w = text[0].fc[0].weight
    pre = x @ w.T
    torch.testing.assert_close(text[0](x), torch.where(pre > 0, pre, 0.01 * pre))
    assert text.num_layers == 2 and text.projection.fc[0].weight.shape == (5, 6)


def test_xavier_uniform_init_from_generator_without_global_rng():
    state = torch.random.get_rng_state()
    a = ImageAdapter(256, 128, 2, 4, generator=make_generator(0, "init"))
    b = ImageAdapter(256, 128, 2, 4, generator=make_generator(0, "init"))
    c = ImageAdapter(256, 128, 2, 4, generator=make_generator(1, "init"))
    assert torch.equal(state, torch.random.get_rng_state())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
        assert not torch.equal(value, c.state_dict()[key])
    weight = a["seg_proj"][0].fc.weight
    bound = math.sqrt(6 / (256 + 128))
    assert weight.abs().max() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    # the layers of one module are drawn one after another, not identically
    assert not torch.equal(a["layer_adapters"][0].fc[0].weight, a["layer_adapters"][1].fc[0].weight)


def test_make_linear_bias_is_zero():
    layer = make_linear(4, 3, bias=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.bias, torch.zeros(3))
