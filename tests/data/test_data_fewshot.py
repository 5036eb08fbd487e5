"""Few-shot manifests: reproducible from (dataset, k, seed), identical across arms, hash-verified."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from aaclip_xattn.data import (
    DatasetSpec,
    Sample,
    make_fewshot_manifest,
    make_split_file,
    manifest_sha256,
    read_manifest,
    write_manifest,
)
from aaclip_xattn.fileio import sha256_file

POOL_SIZES = {"alpha": (10, 8), "beta": (12, 9), "gamma": (6, 6)}  # category: (normal, anomalous)


def _pool(root: Path) -> list[Sample]:
    samples = []
    for category, (n_normal, n_anomalous) in POOL_SIZES.items():
        for i in range(n_normal):
            path = root / category / "test" / "good" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"n")
            samples.append(Sample(path, None, 0, category, "good", "test"))
        for i in range(n_anomalous):
            path = root / category / "test" / "bad" / f"{i:03d}.png"
            mask = root / category / "ground_truth" / "bad" / f"{i:03d}_mask.png"
            for p in (path, mask):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"a")
            samples.append(Sample(path, mask, 1, category, "bad", "test"))
    return samples


def test_manifest_draws_half_normal_half_anomalous_per_category(tmp_path):
    pool = _pool(tmp_path)
    manifest = make_fewshot_manifest(pool, dataset="toy", shot=8, seed=0, root=tmp_path, layout="mvtec")
    assert manifest["shot"] == "8" and manifest["training_mode"] == "few_shot"
    assert manifest["categories"] == ["alpha", "beta", "gamma"]
    assert manifest["counts"] == {c: {"normal": 4, "anomalous": 4} for c in POOL_SIZES}
    entries = manifest["samples"]
    assert [e["image_path"] for e in entries] == sorted(e["image_path"] for e in entries)
    assert Counter((e["category"], e["label"]) for e in entries) == {
        (c, lab): 4 for c in POOL_SIZES for lab in (0, 1)
    }
    pool_paths = {s.image_path.relative_to(tmp_path).as_posix() for s in pool}
    assert {e["image_path"] for e in entries} <= pool_paths
    for e in entries:
        assert (e["mask_path"] is None) == (e["label"] == 0)
        if e["mask_path"]:
            assert Path(e["mask_path"]).stem == Path(e["image_path"]).stem + "_mask"
    assert manifest["sha256"] == manifest_sha256(entries)


def test_manifest_is_a_function_of_dataset_shot_seed(tmp_path):
    pool = _pool(tmp_path)
    baseline_arm = make_fewshot_manifest(pool, dataset="toy", shot=4, seed=3, root=tmp_path)
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    xattn_arm = make_fewshot_manifest(shuffled, dataset="toy", shot=4, seed=3, root=tmp_path)
    assert baseline_arm == xattn_arm
    write_manifest(tmp_path / "a.json", baseline_arm)
    write_manifest(tmp_path / "b.json", xattn_arm)
    assert sha256_file(tmp_path / "a.json") == sha256_file(tmp_path / "b.json")

    def files(seed: int, dataset: str = "toy") -> list[str]:
        m = make_fewshot_manifest(pool, dataset=dataset, shot=4, seed=seed, root=tmp_path)
        return [e["image_path"] for e in m["samples"]]

    assert files(4) != files(3)
    assert files(3, dataset="other") != files(3)
    # Over many seeds the sampler reaches every image of the pool (it is not stuck on a prefix).
    seen = {path for seed in range(40) for path in files(seed)}
    assert len(seen) == sum(n + a for n, a in POOL_SIZES.values())


def test_full_shot_takes_the_whole_pool(tmp_path):
    pool = _pool(tmp_path)
    manifest = make_fewshot_manifest(
        pool, dataset="toy", shot=None, seed=0, training_mode="full_shot", root=tmp_path
    )
    assert manifest["shot"] == "full"
    assert manifest["n_samples"] == len(pool)
    assert manifest["counts"]["beta"] == {"normal": 12, "anomalous": 9}
    with pytest.raises(ValueError, match=r"training_mode 'full_shot' takes shot 'full' \(or none\), got 8"):
        make_fewshot_manifest(pool, dataset="toy", shot=8, seed=0, training_mode="full_shot")


def test_odd_shot_and_too_few_images_are_errors(tmp_path):
    pool = _pool(tmp_path)
    with pytest.raises(ValueError, match=r"shot 5 is odd; k-shot draws k/2 normal \+ k/2 anomalous"):
        make_fewshot_manifest(pool, dataset="toy", shot=5, seed=0)
    with pytest.raises(
        ValueError,
        match=r"few-shot 14: category 'gamma' of dataset 'toy' needs 7 normal images, only 6 available",
    ):
        make_fewshot_manifest(pool, dataset="toy", shot=14, seed=0)
    with pytest.raises(
        ValueError, match=r"few-shot 18: category 'alpha' of dataset 'toy' needs 9 anomalous images, only 8"
    ):
        make_fewshot_manifest(pool, dataset="toy", shot=18, seed=0)
    with pytest.raises(
        ValueError, match=r"training_mode 'some_shot' is not valid; expected one of few_shot, full_shot"
    ):
        make_fewshot_manifest(pool, dataset="toy", shot=4, seed=0, training_mode="some_shot")


def test_read_manifest_round_trip_and_verification(tmp_path):
    pool = _pool(tmp_path / "data")
    manifest = make_fewshot_manifest(
        pool, dataset="toy", shot=6, seed=1, root=tmp_path / "data", layout="mvtec"
    )
    path = write_manifest(tmp_path / "splits" / "seed1.json", manifest)
    loaded = read_manifest(path)
    assert loaded.sha256 == manifest["sha256"] and loaded.shot == "6" and loaded.seed == 1
    assert loaded.categories == ("alpha", "beta", "gamma")
    by_path = {s.image_path: s for s in pool}
    assert len(loaded.samples) == 18
    for sample in loaded.samples:
        assert by_path[sample.image_path] == sample  # same record as the pool's

    record = json.loads(path.read_text())
    record["samples"][0]["label"] = 1 - record["samples"][0]["label"]
    path.write_text(json.dumps(record))
    with pytest.raises(
        RuntimeError, match=r"seed1\.json: sha256 of the sample list is [0-9a-f]{64}, the manifest records"
    ):
        read_manifest(path)

    write_manifest(path, manifest)
    missing = tmp_path / "data" / manifest["samples"][-1]["image_path"]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=rf"seed1\.json: listed file {missing} does not exist"):
        read_manifest(path)
    assert len(read_manifest(path, check_files=False).samples) == 18


def test_write_manifest_refuses_an_edited_manifest(tmp_path):
    manifest = make_fewshot_manifest(_pool(tmp_path), dataset="toy", shot=2, seed=0, root=tmp_path)
    manifest["samples"] = manifest["samples"][1:]
    with pytest.raises(ValueError, match="'sha256' does not match the sample list"):
        write_manifest(tmp_path / "m.json", manifest)


def test_split_file_on_default_synthetic_train_dataset_supports_shot_32(default_synthetic_root, tmp_path):
    spec = DatasetSpec(name="synth_train", layout="mvtec", root=default_synthetic_root / "synth_train")
    manifest = make_split_file(spec, tmp_path / "shot32" / "seed0.json", shot=32, seed=0)
    assert manifest["counts"] == {
        c: {"normal": 16, "anomalous": 16} for c in ("brick", "fabric", "grass", "wood")
    }
    again = make_split_file(spec, tmp_path / "again.json", shot=32, seed=0)
    assert again["sha256"] == manifest["sha256"]
    assert read_manifest(tmp_path / "shot32" / "seed0.json").sha256 == manifest["sha256"]
    with pytest.raises(
        ValueError, match=r"few-shot 34: category 'brick' of dataset 'synth_train' needs 17 normal"
    ):
        make_split_file(spec, tmp_path / "x.json", shot=34, seed=0)


def test_manifest_from_jsonl_file_root(tmp_path, write_image, write_mask):
    lines = []
    for i in range(2):
        write_image(tmp_path / "imgs" / f"n{i}.png", (8, 8))
        write_image(tmp_path / "imgs" / f"a{i}.png", (8, 8))
        write_mask(tmp_path / "masks" / f"a{i}.png", (8, 8))
        lines.append({"image_path": f"imgs/n{i}.png", "label": 0, "class_name": "c", "mask_path": ""})
        lines.append(
            {"image_path": f"imgs/a{i}.png", "label": 1.0, "class_name": "c", "mask_path": f"masks/a{i}.png"}
        )
    jsonl = tmp_path / "full-shot.jsonl"
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = DatasetSpec(name="tiny", layout="jsonl", root=jsonl)
    manifest = make_split_file(spec, tmp_path / "m.json", shot=2, seed=0)
    assert manifest["root"] == str(tmp_path)
    assert [e["image_path"][:6] for e in manifest["samples"]] == ["imgs/a", "imgs/n"]
    assert {s.image_path.parent for s in read_manifest(tmp_path / "m.json").samples} == {tmp_path / "imgs"}
