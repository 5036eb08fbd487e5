"""Synthetic MVTec-format datasets: determinism, exact masks, default datasets, config validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_xattn.data import (
    DEFAULT_SYNTHETIC_DATASETS,
    SyntheticConfig,
    list_textures,
    make_synthetic_dataset,
    read_dataset,
    summarize,
)
from aaclip_xattn.data import synthetic as syn

SMALL = {
    "categories": ["brick", "moon"],
    "image_size": 32,
    "n_train_good": 1,
    "n_test_good": 2,
    "n_test_anomalous": 4,
}


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    cfg = SyntheticConfig.from_mapping({**SMALL, "seed": 5})
    first = _hashes(make_synthetic_dataset(tmp_path / "a", cfg))
    second = _hashes(make_synthetic_dataset(tmp_path / "b", cfg))
    other = _hashes(
        make_synthetic_dataset(tmp_path / "c", SyntheticConfig.from_mapping({**SMALL, "seed": 6}))
    )
    assert len(first) == 2 * (1 + 2 + 4 + 4) + 1
    assert first == second
    images = [k for k in first if k.endswith(".png")]
    assert set(other) == set(first)
    assert all(first[k] != other[k] for k in images if "/test/" in k or "/train/" in k)


def test_layout_and_dataset_json(tmp_path):
    cfg = SyntheticConfig.from_mapping(SMALL)
    root = make_synthetic_dataset(tmp_path / "d", cfg)
    assert sorted(p.relative_to(root / "brick").as_posix() for p in (root / "brick").rglob("*.png")) == [
        "ground_truth/cutpaste/000_mask.png",
        "ground_truth/hole/000_mask.png",
        "ground_truth/scratch/000_mask.png",
        "ground_truth/stain/000_mask.png",
        "test/cutpaste/000.png",
        "test/good/000.png",
        "test/good/001.png",
        "test/hole/000.png",
        "test/scratch/000.png",
        "test/stain/000.png",
        "train/good/000.png",
    ]
    record = json.loads((root / "dataset.json").read_text())
    assert record["config"] == cfg.to_dict() and record["layout"] == "mvtec" and record["config"]["seed"] == 0
    image = Image.open(root / "brick" / "test" / "hole" / "000.png")
    mask = Image.open(root / "brick" / "ground_truth" / "hole" / "000_mask.png")
    assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (32, 32), "L", (32, 32))
    assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}


@pytest.mark.parametrize("defect", syn.DEFECT_TYPES)
def test_defect_mask_is_exactly_the_changed_pixels(defect):
    sources = syn._Sources()
    cfg = SyntheticConfig(categories=("grass", "stars"), image_size=64)
    for category in cfg.categories:
        for index in range(3):
            rng = syn._rng(cfg, category, 2, syn.DEFECT_TYPES.index(defect), index)
            image, mask = syn._anomalous_image(sources, category, defect, 64, rng, cfg.categories)
            rng = syn._rng(cfg, category, 2, syn.DEFECT_TYPES.index(defect), index)
            base = syn._normal_image(sources, category, 64, rng)  # the first draw of the same stream
            changed = (image != base).any(axis=2)
            assert np.array_equal(changed, mask)
            assert mask.sum() >= 10
            assert np.abs(image.astype(int) - base.astype(int))[mask].mean() > 20  # visible


def test_default_datasets_shape_and_masks(default_synthetic_root):
    train_cfg = DEFAULT_SYNTHETIC_DATASETS["synth_train"]
    test_cfg = DEFAULT_SYNTHETIC_DATASETS["synth_test"]
    assert len(train_cfg.categories) >= 4 and len(test_cfg.categories) >= 8
    assert not set(train_cfg.categories) & set(test_cfg.categories)
    sources = {name: syn.get_texture(name).image for name in (*train_cfg.categories, *test_cfg.categories)}
    assert not {sources[c] for c in train_cfg.categories} & {sources[c] for c in test_cfg.categories}
    for name, cfg in DEFAULT_SYNTHETIC_DATASETS.items():
        samples = read_dataset(default_synthetic_root / name, "mvtec")
        assert sorted({s.category for s in samples}) == sorted(cfg.categories)
        for category in cfg.categories:
            rows = [r for r in summarize(samples) if r["category"] == category]
            assert sum(r["n_normal"] for r in rows) >= 16 and sum(r["n_anomalous"] for r in rows) >= 16
            assert {r["defect_type"] for r in rows} == {"good", "scratch", "hole", "stain", "cutpaste"}
        for s in samples:
            if s.label == 0:
                assert s.mask_path is None
                assert not (s.image_path.parent.parent.parent / "ground_truth" / "good").exists()
            else:
                assert np.asarray(Image.open(s.mask_path)).any(), s.mask_path
        train = read_dataset(default_synthetic_root / name, "mvtec", split="train")
        assert len(train) == cfg.n_train_good * len(cfg.categories) and {s.label for s in train} == {0}


def test_config_validation_messages(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['size'\]; valid keys: categories, image_size"):
        SyntheticConfig.from_mapping({"categories": ["brick"], "size": 64})
    with pytest.raises(
        ValueError, match=r"unknown synthetic category 'marble'; valid categories: brick, grass"
    ):
        SyntheticConfig(categories=("marble",))
    with pytest.raises(
        ValueError, match=r"'defect_types' \['crack'\] is not valid; expected distinct values from scratch"
    ):
        SyntheticConfig(categories=("brick",), defect_types=("crack",))
    with pytest.raises(ValueError, match=r"'image_size' must be an integer >= 32, got 8"):
        SyntheticConfig(categories=("brick",), image_size=8)
    with pytest.raises(ValueError, match="missing key 'categories'"):
        SyntheticConfig.from_mapping({})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match=r"busy: exists and is not empty; choose an empty or new folder"
    ):
        make_synthetic_dataset(tmp_path / "busy", SyntheticConfig(categories=("brick",), image_size=32))


def test_overwrite_replaces_only_a_synthetic_dataset(tmp_path):
    cfg = SyntheticConfig.from_mapping({**SMALL, "categories": ["paper"]})
    root = make_synthetic_dataset(tmp_path / "s", cfg)
    with pytest.raises(FileExistsError, match=r"pass overwrite=True \(--overwrite\) to replace it"):
        make_synthetic_dataset(root, cfg)
    (root / "paper" / "test" / "good" / "stale.png").write_bytes(b"x")
    make_synthetic_dataset(root, cfg, overwrite=True)
    assert not (root / "paper" / "test" / "good" / "stale.png").exists()


def test_every_texture_source_loads_offline():
    sources = syn._Sources()
    for name in list_textures():
        region = sources.region(name)
        assert region.ndim == 3 and region.shape[2] == 3 and min(region.shape[:2]) >= 64, name
        assert region.std() > 5, name  # a texture, not a flat patch
