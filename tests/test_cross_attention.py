"""Gated cross-attention, the cross-attention model (gate-0 exactness), and create_model."""

from __future__ import annotations

import math

import pytest
import torch

from aaclip_xattn import AdaptedCLIP, AdaptedCLIPWithCrossAttention, GatedCrossAttention, create_model
from aaclip_xattn.seeding import make_generator


def _oracle(module: GatedCrossAttention, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Float64 multi-head attention with an explicit loop over heads."""
    x, ctx = x.double(), ctx.double()

    def lin(layer, t):
        return t @ layer.weight.double().T + layer.bias.double()

    q, k, v = lin(module.q_proj, x), lin(module.k_proj, ctx), lin(module.v_proj, ctx)
    head = module.inner_dim // module.num_heads
    outs = []
    for h in range(module.num_heads):
        sl = slice(h * head, (h + 1) * head)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(head), dim=-1)
        outs.append(weights @ v[..., sl])
    return module.gate.double() * lin(module.out_proj, torch.cat(outs, dim=-1))


def test_gated_cross_attention_starts_at_zero_and_matches_the_oracle():
    module = GatedCrossAttention(12, 8, num_heads=3, generator=make_generator(0, "init"))
    assert module.gate.item() == 0.0 and module.gate.shape == ()
    assert {n for n, _ in module.named_children()} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 7, 8, generator=gen)
    assert torch.equal(module(x, ctx), torch.zeros(2, 5, 12))
    with torch.no_grad():
        module.gate.fill_(0.7)
        for layer in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            layer.bias.normal_(generator=gen)
    torch.testing.assert_close(module(x, ctx).double(), _oracle(module, x, ctx), rtol=0, atol=1e-5)


def test_gated_cross_attention_validates_heads_and_shapes():
    with pytest.raises(ValueError, match="num_heads=5 must be positive and divide inner_dim=12"):
        GatedCrossAttention(12, 8, num_heads=5)
    module = GatedCrossAttention(12, 8, num_heads=2, inner_dim=16)
    assert module.q_proj.weight.shape == (16, 12) and module.out_proj.weight.shape == (12, 16)
    with pytest.raises(ValueError, match=r"expects x \(B, Q, C\) and context"):
        module(torch.zeros(5, 12), torch.zeros(1, 3, 8))


def test_zero_gate_gradient_reaches_the_gate_first():
    module = GatedCrossAttention(8, 8, num_heads=2, generator=make_generator(0, "init"))
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    (x + module(x, ctx)).pow(2).sum().backward()
    assert module.gate.grad.abs() > 0
    assert module.q_proj.weight.grad.abs().max() == 0 and module.out_proj.weight.grad.abs().max() == 0


@pytest.fixture(scope="module")
def baseline_and_xattn():
    base = create_model("baseline", generator=make_generator(0, "init")).eval()
    xattn = create_model("xattn", generator=make_generator(9, "init")).eval()
    xattn.text_adapter.load_state_dict(base.text_adapter.state_dict())
    xattn.image_adapter.load_state_dict(base.image_adapter.state_dict())
    return base, xattn


def test_gate_zero_reproduces_the_baseline_exactly(baseline_and_xattn):
    base, xattn = baseline_and_xattn
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    categories = ["bottle", "metal_nut", "bottle"]
    for domain in ("industrial", "medical"):
        ours = xattn.score(images, categories, domain=domain)
        ref = base.score(images, categories, domain=domain)
        assert (ours["anomaly_map"] - ref["anomaly_map"]).abs().max().item() == 0.0
        assert (ours["image_score"] - ref["image_score"]).abs().max().item() == 0.0
    # stage 1: the anchors conditioned on the V-V features are the baseline's anchors, bit for bit
    anchors = base.text_anchors(["bottle"]).expand(3, -1, -1).detach()
    feats = xattn.stage1_features(images)
    assert torch.equal(xattn.condition_anchors(anchors, feats[-1]), anchors)
    assert torch.equal(xattn.condition_anchors(anchors[0], feats[-1]), anchors)  # shared (D, 2) is expanded
    assert base.condition_anchors(anchors, feats[-1]) is anchors


def test_a_nonzero_gate_changes_maps_and_scores(baseline_and_xattn):
    base, xattn = baseline_and_xattn
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    ref = base.score(images, ["bottle", "bottle"])
    try:
        with torch.no_grad():
            xattn.image_cross_attn.gate.fill_(0.5)
            xattn.text_cross_attn.gate.fill_(0.5)
        ours = xattn.score(images, ["bottle", "bottle"])
    finally:
        with torch.no_grad():
            xattn.image_cross_attn.gate.zero_()
            xattn.text_cross_attn.gate.zero_()
    assert (ours["anomaly_map"] - ref["anomaly_map"]).abs().max() > 1e-3
    assert (ours["image_score"] - ref["image_score"]).abs().max() > 1e-6


def test_image_cross_attention_acts_on_every_tap_before_the_heads(baseline_and_xattn):
    _, xattn = baseline_and_xattn
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, prompts = xattn.anchors_for(["bottle"])
        plain = xattn.encode_image(images, prompt_embeddings=prompts)
        try:
            xattn.image_cross_attn.gate.fill_(1.0)
            gated = xattn.encode_image(images, prompt_embeddings=prompts)
        finally:
            xattn.image_cross_attn.gate.zero_()
    for a, b in zip(plain.seg_tokens, gated.seg_tokens, strict=True):
        assert (a - b).abs().max() > 1e-5
    assert (plain.det_token - gated.det_token).abs().max() > 1e-6


def test_cross_attention_model_structure_and_errors(baseline_and_xattn):
    _, xattn = baseline_and_xattn
    assert isinstance(xattn, AdaptedCLIPWithCrossAttention) and isinstance(xattn, AdaptedCLIP)
    assert xattn.text_cross_attn.q_proj.weight.shape == (128, 128)
    assert xattn.image_cross_attn.q_proj.weight.shape == (192, 192)
    assert xattn.image_cross_attn.k_proj.weight.shape == (192, 128)
    assert xattn.text_cross_attn.num_heads == 8
    images = torch.zeros(2, 3, 128, 128)
    with pytest.raises(ValueError, match="needs prompt_embeddings"):
        xattn.encode_image(images)
    with pytest.raises(ValueError, match=r"prompt_embeddings must be \(2, P, 128\), got \(1, 16, 128\)"):
        xattn.encode_image(images, prompt_embeddings=torch.zeros(1, 16, 128))
    with pytest.raises(ValueError, match=r"anchors must be \(2, 128, 2\)"):
        xattn.condition_anchors(torch.zeros(3, 128, 2), torch.zeros(2, 64, 128))
    # the trainable groups: adapters + both cross-attention modules; backbone frozen
    names = {n.split(".")[0] for n, p in xattn.named_parameters() if p.requires_grad}
    assert names == {"text_adapter", "image_adapter", "text_cross_attn", "image_cross_attn"}


def test_create_model_kinds_and_options():
    with pytest.raises(ValueError, match="unknown model kind 'crossattn'; valid kinds: baseline, xattn"):
        create_model("crossattn")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'lambda'; valid options: text_adapter_layers, .*blend"
    ):
        create_model("baseline", **{"lambda": 0.1})
    model = create_model("xattn", taps=[4, 8], xattn_heads=4, image_adapter_layers=1, image_size=96)
    assert model.config.taps == (4, 8) and len(model.image_adapter["seg_proj"]) == 2
    assert model.text_cross_attn.num_heads == 4 and model.image_size == 96 and model.grid_size == 6
    feats = model.encode_image(torch.zeros(1, 3, 96, 96), prompt_embeddings=model.anchors_for(["x"])[1])
    assert len(feats.seg_tokens) == 2 and feats.seg_tokens[0].shape == (1, 36, 128)


def test_generator_makes_cross_attention_init_reproducible():
    a = create_model("xattn", generator=make_generator(3, "init"))
    b = create_model("xattn", generator=make_generator(3, "init"))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    c = create_model("xattn", generator=make_generator(4, "init"))
    assert not torch.equal(a.image_cross_attn.q_proj.weight, c.image_cross_attn.q_proj.weight)
