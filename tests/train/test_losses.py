"""Losses against the reference fixture (tests/fixtures/aaclip_small) and against their definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aaclip_xattn.train import losses

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "aaclip_small"


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURE / "expected.pt")


@pytest.fixture(scope="module")
def tol() -> dict:
    tolerances = json.loads((FIXTURE / "fixture.json").read_text())["tolerances"]
    return {key: value["tol"] for key, value in tolerances.items()}


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def test_stage1_losses_match_reference_fixture(expected, tol):
    s1, anchors, masks = expected["stage1"], expected["text"]["anchors"], expected["inputs"]["masks"]
    per_level = torch.stack([losses.seg_loss(f, anchors, masks) for f in s1["features_batch"]])
    assert _max_err(per_level, s1["seg_loss_per_level"]) <= tol["stage1.seg_loss_per_level"]
    assert _max_err(losses.orthogonal_loss(anchors), s1["orthogonal_loss"]) <= tol["stage1.orthogonal_loss"]
    total, parts = losses.stage1_loss(list(s1["features_batch"]), anchors, masks, levels="last")
    assert _max_err(total, s1["train_loss"]) <= tol["stage1.train_loss"]
    assert parts["total"] == pytest.approx(float(total))


def test_stage1_loss_per_image_anchors_equal_shared_anchors(expected):
    s1, anchors, masks = expected["stage1"], expected["text"]["anchors"], expected["inputs"]["masks"]
    per_image = anchors.unsqueeze(0).expand(2, -1, -1).clone()
    shared, _ = losses.stage1_loss(list(s1["features_batch"]), anchors, masks)
    gathered, _ = losses.stage1_loss(list(s1["features_batch"]), per_image, masks)
    torch.testing.assert_close(shared, gathered, rtol=0, atol=1e-7)


def test_stage1_levels_all_sums_every_level_and_counts_orthogonal_once(expected):
    s1, anchors, masks = expected["stage1"], expected["text"]["anchors"], expected["inputs"]["masks"]
    total, _ = losses.stage1_loss(list(s1["features_batch"]), anchors, masks, levels="all")
    want = s1["seg_loss_per_level"].double().sum() + 0.1 * s1["orthogonal_loss"].double()
    assert float(total) == pytest.approx(float(want), abs=4e-5)
    with pytest.raises(ValueError, match="stage1_levels must be one of last, all, got 'first'"):
        losses.stage1_loss(list(s1["features_batch"]), anchors, masks, levels="first")


def test_stage2_losses_match_reference_fixture(expected, tol):
    s2, image, anchors = expected["stage2"], expected["image"], expected["text"]["anchors"]
    masks, labels = expected["inputs"]["masks"], expected["inputs"]["labels"]
    per_level = torch.stack([losses.seg_loss(t, anchors, masks) for t in image["seg_tokens"]])
    assert _max_err(per_level, s2["seg_loss_per_level"]) <= tol["stage2.seg_loss_per_level"]
    ce = losses.image_ce_loss(image["det_token"], anchors, labels)
    assert _max_err(ce, s2["ce_loss"]) <= tol["stage2.ce_loss"]
    total, parts = losses.stage2_loss(list(image["seg_tokens"]), image["det_token"], anchors, masks, labels)
    assert _max_err(total, s2["total_loss"]) <= tol["stage2.total_loss"]
    assert set(parts) == {"ce", "seg", "total"}


def test_focal_loss_equals_pointwise_definition():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 2, 5, 5, generator=gen), dim=1)
    mask = (torch.rand(2, 5, 5, generator=gen) > 0.5).float()
    smooth = 1e-5
    terms = []
    for b in range(2):
        for i in range(5):
            for j in range(5):
                c = int(mask[b, i, j])
                pt = (1 - smooth) * probs[b, c, i, j].item() + smooth * probs[b, 1 - c, i, j].item() + smooth
                terms.append(-((1 - pt) ** 2) * math.log(pt))
    assert float(losses.focal_loss(probs, mask)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dice_loss_is_one_minus_mean_per_sample_dice():
    prob = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    dice0 = (2 * 1 + 1) / (1 + 1 + 1)
    dice1 = (0 + 1) / (2 + 0 + 1)
    assert float(losses.dice_loss(prob, target)) == pytest.approx(1 - (dice0 + dice1) / 2)


def test_orthogonal_loss_squares_the_batch_mean_not_each_term():
    anchors = torch.zeros(2, 3, 2)
    anchors[0, 0, 0], anchors[0, 0, 1] = 1.0, 1.0  # <T_N, T_A> = 1
    anchors[1, 0, 0], anchors[1, 0, 1] = 1.0, -1.0  # <T_N, T_A> = -1
    assert float(losses.orthogonal_loss(anchors)) == 0.0
    anchors[1, 0, 1] = 0.5
    assert float(losses.orthogonal_loss(anchors)) == pytest.approx(((1 + 0.5) / 2) ** 2)


def test_image_ce_has_no_temperature_so_unit_vectors_cannot_go_below_0127():
    det = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    anchors = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])  # (D=2, 2): perfect separation at |logit| = 1
    ce = losses.image_ce_loss(det, anchors, torch.tensor([1, 1]))
    assert float(ce) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_anchor_shape_errors_name_the_expected_shapes():
    with pytest.raises(
        ValueError, match=r"anchors must have shape \(D, 2\) or \(B=2, D, 2\), got \(3, 4, 2\)"
    ):
        losses.seg_loss(torch.zeros(2, 4, 4), torch.zeros(3, 4, 2), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="patch count 5 is not a square grid"):
        losses.seg_loss(torch.zeros(2, 5, 4), torch.zeros(4, 2), torch.zeros(2, 1, 8, 8))
