"""Preprocessing against the reference fixture; seeded joint augmentation of image and mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aaclip_xattn.data import (
    CLIP_MEAN,
    CLIP_STD,
    AnomalyDataset,
    AugmentParams,
    Sample,
    apply_augment,
    draw_augment_params,
    load_image,
    load_mask,
    normalize,
    read_dataset,
)
from aaclip_xattn.seeding import make_generator

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "aaclip_small"


def test_preprocessing_matches_reference_fixture():
    expected = torch.load(FIXTURE / "expected.pt")["inputs"]
    samples = read_dataset(FIXTURE / "inputs" / "meta.jsonl", "jsonl")
    assert [s.image_path.name for s in samples] == expected["file_names"]
    images = torch.stack([normalize(load_image(s.image_path, 112)) for s in samples])
    masks = torch.stack([load_mask(s.mask_path, 112) for s in samples])
    assert images.dtype == torch.float32 and images.shape == expected["images"].shape
    assert (images - expected["images"]).abs().max().item() <= 5e-6
    assert torch.equal(masks, expected["masks"])
    assert torch.equal(torch.tensor([s.label for s in samples]), expected["labels"])


def test_load_image_is_uint8_and_normalize_is_clip_affine(tmp_path, write_image):
    path = write_image(tmp_path / "g.png", (30, 20), mode="L")
    image = load_image(path, 16)
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # gray → RGB
    x = normalize(torch.full((3, 2, 2), 200, dtype=torch.uint8))
    oracle = [(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    np.testing.assert_allclose(x[:, 0, 0].numpy(), oracle, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="normalize expects a uint8 image tensor, got torch.float32"):
        normalize(x)


def test_load_mask_binarises_before_nearest_resize(tmp_path, write_mask):
    path = write_mask(tmp_path / "m.png", (8, 8), value=3, box=(0, 0, 4, 8))
    mask = load_mask(path, 16)
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.float32
    assert torch.equal(mask[0, :, :8], torch.ones(16, 8)) and torch.equal(mask[0, :, 8:], torch.zeros(16, 8))
    assert torch.equal(load_mask(None, 5), torch.zeros(1, 5, 5))


def test_load_errors_name_the_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"bad\.png: cannot decode image"):
        load_image(bad, 8)
    with pytest.raises(FileNotFoundError, match=r"none\.png: no such mask file"):
        load_mask(tmp_path / "none.png", 8)


def _marked(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A black uint8 image and an empty mask, both marked with the same off-centre 3×3 block."""
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    image[:, 5:8, 20:23] = 255
    mask[:, 5:8, 20:23] = 1
    return image, mask


def test_augmentation_moves_mask_exactly_with_image():
    image, mask = _marked()
    moved = 0
    for index in range(40):
        gen = make_generator(3, "augment", 0, index)
        params = draw_augment_params(gen, stage=1, image_size=32)
        out_image, out_mask = apply_augment(image, mask, params)
        marker_in_image = out_image[0] > 1.0  # 255 normalises to ≈ 1.93; black to ≈ -1.79; fill 0
        assert marker_in_image.any()
        assert torch.equal(marker_in_image, out_mask[0] == 1)
        moved += not torch.equal(out_mask, mask.float())
    assert moved >= 30  # P(no spatial op) = 1/16, so nearly every draw moves the block


def test_augmentation_flip_lands_where_expected():
    image, mask = _marked()
    out_image, out_mask = apply_augment(image, mask, AugmentParams(hflip=True, vflip=True))
    assert torch.equal(torch.nonzero(out_mask[0]).amin(0), torch.tensor([32 - 8, 32 - 23]))
    assert torch.equal(out_image[0] > 1.0, out_mask[0] == 1)
    _, shifted = apply_augment(image, mask, AugmentParams(translate=(4, -2)))
    assert torch.equal(torch.nonzero(shifted[0]).amin(0), torch.tensor([3, 24]))


def test_colour_jitter_acts_on_uint8_before_normalisation():
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    out, _ = apply_augment(image, torch.zeros(1, 4, 4), AugmentParams(brightness=2.0))
    oracle = [(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), oracle, atol=1e-6)


def test_augment_draws_follow_reference_probabilities():
    n = 4000
    draws = [
        draw_augment_params(make_generator(0, "augment", 0, i), stage=2, image_size=100, noise_aug="legacy")
        for i in range(n)
    ]

    def rate(pred) -> float:
        return sum(map(pred, draws)) / n

    tol = 0.03  # > 3.5 binomial standard deviations at n = 4000
    assert rate(lambda p: p.brightness is not None) == pytest.approx(0.7, abs=tol)
    assert rate(lambda p: p.contrast is not None) == pytest.approx(0.7, abs=tol)
    assert rate(lambda p: p.saturation is not None) == pytest.approx(0.7, abs=tol)
    assert rate(lambda p: p.angle is not None) == pytest.approx(0.5, abs=tol)
    assert rate(lambda p: p.translate is not None) == pytest.approx(0.5, abs=tol)
    assert rate(lambda p: p.hflip) == pytest.approx(0.5, abs=tol)
    assert rate(lambda p: p.vflip) == pytest.approx(0.5, abs=tol)
    assert rate(lambda p: p.noise) == pytest.approx(0.3, abs=tol)
    angles = [p.angle for p in draws if p.angle is not None]
    shifts = [v for p in draws if p.translate is not None for v in p.translate]
    factors = [p.brightness for p in draws if p.brightness is not None]
    assert -30 <= min(angles) < -28 and 28 < max(angles) <= 30
    assert min(shifts) == -15 and max(shifts) == 15
    assert 0.5 <= min(factors) < 0.52 and 1.48 < max(factors) <= 1.5
    stage1 = draw_augment_params(make_generator(0, "augment", 0, 0), stage=1, image_size=100)
    assert stage1.brightness is stage1.contrast is stage1.saturation is None and not stage1.noise


def test_legacy_noise_has_unit_std():
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64)
    clean, _ = apply_augment(image, mask, AugmentParams())
    noisy, _ = apply_augment(
        image, mask, AugmentParams(noise=True), generator=make_generator(0, "augment", 0, 0)
    )
    assert (noisy - clean).std().item() == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="params.noise is set but no generator"):
        apply_augment(image, mask, AugmentParams(noise=True))


def _samples(tmp_path, write_image, write_mask, n: int = 4) -> list[Sample]:
    out = []
    for i in range(n):
        image = write_image(tmp_path / f"{i}.png", (20 + i, 18), value=30 * i)
        mask = write_mask(tmp_path / f"{i}_mask.png", (20 + i, 18)) if i % 2 else None
        out.append(Sample(image, mask, i % 2, "c", "bad" if i % 2 else "good", "test"))
    return out


def test_dataset_augmentation_depends_only_on_seed_epoch_index(tmp_path, write_image, write_mask):
    samples = _samples(tmp_path, write_image, write_mask)
    a = AnomalyDataset(samples, 24, stage=2, augment=True, seed=7)
    b = AnomalyDataset(samples, 24, stage=2, augment=True, seed=7)
    items_a = [a[i] for i in range(4)]
    items_b = [b[i] for i in reversed(range(4))][::-1]  # other access order, e.g. another worker
    for x, y in zip(items_a, items_b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["label"] == y["label"] and x["index"] == y["index"] and x["category"] == "c"
    # Sample 1 of a shorter list (other neighbours) still gets its own draw.
    c = AnomalyDataset(samples[:2], 24, stage=2, augment=True, seed=7)
    assert torch.equal(c[1]["image"], items_a[1]["image"])
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], items_a[i]["image"]) for i in range(4))
    other_seed = AnomalyDataset(samples, 24, stage=2, augment=True, seed=8)
    assert any(not torch.equal(other_seed[i]["image"], items_a[i]["image"]) for i in range(4))


def test_dataset_without_augmentation_is_plain_preprocessing(tmp_path, write_image, write_mask):
    samples = _samples(tmp_path, write_image, write_mask)
    dataset = AnomalyDataset(samples, 24, stage=2, augment=False, seed=7)
    dataset.preload()
    for i, sample in enumerate(samples):
        item = dataset[i]
        assert torch.equal(item["image"], normalize(load_image(sample.image_path, 24)))
        assert torch.equal(item["mask"], load_mask(sample.mask_path, 24))
        assert item["image"].shape == (3, 24, 24) and item["mask"].shape == (1, 24, 24)
    assert sum(bool(item["mask"].any()) for item in dataset) == 2
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["label"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="noise_aug 'on' is not valid; expected one of off, legacy"):
        AnomalyDataset(samples, 24, noise_aug="on")


def test_clip_constants_equal_backbone():
    from aaclip_xattn import backbone

    assert (CLIP_MEAN, CLIP_STD) == (backbone.CLIP_MEAN, backbone.CLIP_STD)
