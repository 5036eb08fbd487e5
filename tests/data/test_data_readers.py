"""Readers on layout-identical fixtures built here: counts, stem pairing, and every error message."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from aaclip_xattn.data import LAYOUTS, DatasetSpec, list_layouts, load_mask, read_dataset, summarize
from aaclip_xattn.data.readers import format_summary


def _mvtec(root: Path, write_image, write_mask, *, category: str = "bottle") -> Path:
    """MVTec layout: 2 train/good, 2 test/good, broken {000, 007} (+ an orphan 005 mask), crack {001}."""
    cat = root / category
    for i in range(2):
        write_image(cat / "train" / "good" / f"{i:03d}.png", (12, 10))
        write_image(cat / "test" / "good" / f"{i:03d}.png", (12, 10))
    # Each anomalous image has its own size; its mask must have the same one, so a position-based
    # pairing (000, 005, 007 masks vs 000, 007 images) would fail the size check or pair wrongly.
    write_image(cat / "test" / "broken" / "000.png", (16, 12))
    write_image(cat / "test" / "broken" / "007.png", (20, 14))
    write_image(cat / "test" / "crack" / "001.png", (18, 18))
    write_mask(cat / "ground_truth" / "broken" / "007_mask.png", (20, 14))
    write_mask(cat / "ground_truth" / "broken" / "005_mask.png", (9, 9))
    write_mask(cat / "ground_truth" / "broken" / "000_mask.png", (16, 12))
    write_mask(cat / "ground_truth" / "crack" / "001_mask.png", (18, 18))
    return root


def test_layout_registry_matches_records():
    assert tuple(list_layouts()) == LAYOUTS


def test_mvtec_reader_counts_and_pairs_by_stem(tmp_path, write_image, write_mask, caplog):
    root = _mvtec(tmp_path / "mvtec", write_image, write_mask)
    _mvtec(tmp_path / "mvtec", write_image, write_mask, category="zipper")
    with caplog.at_level(logging.INFO):
        samples = read_dataset(root, "mvtec")
    assert len(samples) == 2 * 5
    assert [s.category for s in samples] == ["bottle"] * 5 + ["zipper"] * 5
    normal = [s for s in samples if s.label == 0]
    anomalous = [s for s in samples if s.label == 1]
    assert len(normal) == 4 and all(s.mask_path is None and s.defect_type == "good" for s in normal)
    assert len(anomalous) == 6
    for s in anomalous:
        assert s.mask_path.name == f"{s.image_path.stem}_mask.png"
        assert s.mask_path.parent.name == s.defect_type == s.image_path.parent.name
        assert Image.open(s.mask_path).size == Image.open(s.image_path).size
    assert {s.split for s in samples} == {"test"}
    assert "005_mask.png: mask without an image" in caplog.text
    assert "bottle: 5 images (2 normal, 3 anomalous)" in caplog.text

    train = read_dataset(root, "mvtec", split="train", categories=["zipper"])
    assert [(s.category, s.split, s.label, s.image_path.name) for s in train] == [
        ("zipper", "train", 0, "000.png"),
        ("zipper", "train", 0, "001.png"),
    ]


def test_mpdd_reads_mvtec_style(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "MPDD", write_image, write_mask, category="bracket_black")
    samples = read_dataset(root, "mpdd")
    assert summarize(samples) == [
        {
            "category": "bracket_black",
            "split": "test",
            "defect_type": d,
            "n_normal": n,
            "n_anomalous": a,
            "with_mask": a,
        }
        for d, n, a in (("broken", 0, 2), ("crack", 0, 1), ("good", 2, 0))
    ]


def test_btad_reader_same_stem_and_mask_suffix(tmp_path, write_image, write_mask):
    root = tmp_path / "BTech"
    for i in range(3):
        write_image(root / "01" / "train" / "ok" / f"{i:04d}.bmp", (10, 10))
    write_image(root / "01" / "test" / "ok" / "0000.bmp", (10, 10))
    write_image(root / "01" / "test" / "ko" / "0000.bmp", (14, 10))
    write_image(root / "01" / "test" / "ko" / "0001.bmp", (10, 14))
    write_mask(root / "01" / "ground_truth" / "ko" / "0001.png", (10, 14))
    write_mask(root / "01" / "ground_truth" / "ko" / "0000.png", (14, 10))
    write_image(root / "02" / "test" / "ok" / "0000.png", (8, 8))
    write_image(root / "02" / "test" / "ko" / "0003.PNG", (8, 8))
    write_mask(root / "02" / "ground_truth" / "ko" / "0003_mask.png", (8, 8))
    samples = read_dataset(root, "btad")
    got = [
        (s.category, s.defect_type, s.label, s.image_path.name, s.mask_path and s.mask_path.name)
        for s in samples
    ]
    assert got == [
        ("01", "ko", 1, "0000.bmp", "0000.png"),
        ("01", "ko", 1, "0001.bmp", "0001.png"),
        ("01", "ok", 0, "0000.bmp", None),
        ("02", "ko", 1, "0003.PNG", "0003_mask.png"),
        ("02", "ok", 0, "0000.png", None),
    ]
    assert len(read_dataset(root, "btad", split="train", categories=["01"])) == 3


def _visa(root: Path, write_image, write_mask) -> Path:
    rows = [("object", "split", "label", "image", "mask")]
    for cat in ("candle", "pcb1"):
        base = root / cat / "Data"
        for i in range(3):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, (15, 10))
            rows.append((cat, "train" if i == 0 else "test", "normal", rel, ""))
        for i in (2, 0, 1):  # anomalies listed out of order; masks use value 1 and 7, not 255
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            write_image(root / rel, (15 + i, 10))
            write_mask(base / "Masks" / "Anomaly" / f"{i:03d}.png", (15 + i, 10), value=1 if i else 7)
            rows.append((cat, "test", "anomaly", rel, f"{cat}/Data/Masks/Anomaly/{i:03d}.png"))
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def test_visa_reader_reads_csv_and_binarises_masks(tmp_path, write_image, write_mask):
    root = _visa(tmp_path / "VisA", write_image, write_mask)
    samples = read_dataset(root, "visa")
    assert len(samples) == 2 * (2 + 3)
    assert [(r["category"], r["n_normal"], r["n_anomalous"]) for r in summarize(samples)] == [
        ("candle", 0, 3),
        ("candle", 2, 0),
        ("pcb1", 0, 3),
        ("pcb1", 2, 0),
    ]
    for s in samples:
        if s.label:
            assert s.mask_path.stem == s.image_path.stem
            assert Image.open(s.mask_path).size == Image.open(s.image_path).size
            mask = load_mask(s.mask_path, 10)
            assert set(mask.unique().tolist()) == {0.0, 1.0}  # values 1 and 7 both mean "anomalous"
    train = read_dataset(root, "visa", split="train")
    assert [(s.category, s.label) for s in train] == [("candle", 0), ("pcb1", 0)]


def test_jsonl_reader_int_and_float_labels_and_empty_mask(tmp_path, write_image, write_mask):
    root = tmp_path / "ds"
    write_image(root / "a" / "good.png", (10, 10))
    write_image(root / "a" / "bad.png", (11, 10))
    write_mask(root / "a" / "bad_mask.png", (11, 10))
    write_image(root / "b" / "good.png", (10, 10))
    write_image(root / "b" / "bad.png", (10, 12))
    write_mask(root / "b" / "bad_mask.png", (10, 12))
    lines = [
        {"image_path": "a/good.png", "label": 0, "class_name": "alpha", "mask_path": ""},
        {"image_path": "a/bad.png", "label": 1, "class_name": "alpha", "mask_path": "a/bad_mask.png"},
        {"image_path": "b/good.png", "label": 0.0, "class_name": "beta"},
        {"image_path": "b/bad.png", "label": 1.0, "class_name": "beta", "mask_path": "b/bad_mask.png"},
    ]
    (root / "full-shot.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples = read_dataset(root, "jsonl")
    assert samples == read_dataset(root / "full-shot.jsonl", "jsonl")
    assert [(s.category, s.label, s.defect_type, s.mask_path and s.mask_path.name) for s in samples] == [
        ("alpha", 0, "good", None),
        ("alpha", 1, "anomaly", "bad_mask.png"),
        ("beta", 0, "good", None),
        ("beta", 1, "anomaly", "bad_mask.png"),
    ]
    assert all(type(s.label) is int for s in samples)
    assert [s.category for s in read_dataset(root, "jsonl", categories=["beta"])] == ["beta", "beta"]


def test_jsonl_reader_on_reference_fixture():
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "aaclip_small" / "inputs" / "meta.jsonl"
    samples = read_dataset(fixture, "jsonl")
    assert [(s.image_path.name, s.label, s.category, s.mask_path and s.mask_path.name) for s in samples] == [
        ("img0_normal.png", 0, "bottle", None),
        ("img1_defect.png", 1, "bottle", "img1_defect_mask.png"),
    ]


# ------------------------------------------------------------------------------------------- errors


def test_error_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: dataset root does not exist \(layout 'mvtec'\)"):
        read_dataset(tmp_path / "nowhere", "mvtec")


def test_error_unknown_layout(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown dataset layout 'kitti'; valid layouts: mvtec, visa, btad, mpdd, jsonl"
    ):
        read_dataset(tmp_path, "kitti")


def test_error_unknown_split_and_category(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    with pytest.raises(ValueError, match=r"unknown split 'val'; valid splits: train, test"):
        read_dataset(root, "mvtec", split="val")
    with pytest.raises(ValueError, match=r"unknown category \['cable'\]; available: bottle"):
        read_dataset(root, "mvtec", categories=["cable"])


def test_error_category_folder_without_images(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    (root / "cable" / "test").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError,
        match=r"cable/test: category folder without images \(expected cable/test/<defect_type>/\*\.png\)",
    ):
        read_dataset(root, "mvtec")
    (root / "cable" / "test" / "good").mkdir()
    (root / "cable" / "test" / "good" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"cable/test/good: folder without images"):
        read_dataset(root, "mvtec")


def test_error_category_without_split_folder(tmp_path, write_image):
    write_image(tmp_path / "m" / "bottle" / "test" / "good" / "000.png", (8, 8))
    with pytest.raises(
        FileNotFoundError, match=r"bottle/train: missing \(expected bottle/train/<defect_type>/"
    ):
        read_dataset(tmp_path / "m", "mvtec", split="train")


def test_error_anomalous_image_without_mask(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    (root / "bottle" / "ground_truth" / "broken" / "007_mask.png").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"broken/007\.png: anomalous image without a mask; expected .*bottle/ground_truth/broken/007_mask\.png",
    ):
        read_dataset(root, "mvtec")


def test_error_mask_size_differs(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    write_mask(root / "bottle" / "ground_truth" / "crack" / "001_mask.png", (18, 17))
    with pytest.raises(
        RuntimeError, match=r"001_mask\.png: mask is 18x17 \(WxH\) but its image .*crack/001\.png is 18x18"
    ):
        read_dataset(root, "mvtec")


def test_error_unreadable_image(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    (root / "bottle" / "test" / "good" / "000.png").write_bytes(b"not a png at all")
    with pytest.raises(
        RuntimeError, match=r"test/good/000\.png: cannot read an image .*expected a PNG, JPEG, BMP or TIFF"
    ):
        read_dataset(root, "mvtec")


def test_error_visa_anomaly_without_mask_and_missing_csv(tmp_path, write_image, write_mask):
    with pytest.raises(FileNotFoundError, match=r"split_csv/1cls\.csv: no such file"):
        read_dataset(tmp_path, "visa")
    root = _visa(tmp_path / "VisA", write_image, write_mask)
    csv_path = root / "split_csv" / "1cls.csv"
    text = csv_path.read_text().replace("candle/Data/Masks/Anomaly/002.png", "")
    csv_path.write_text(text)
    with pytest.raises(
        FileNotFoundError, match=r"1cls\.csv line 5: anomalous image .*002\.JPG without a mask"
    ):
        read_dataset(root, "visa")


def test_error_jsonl_anomalous_without_mask_and_bad_label(tmp_path, write_image):
    write_image(tmp_path / "x.png", (8, 8))
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"image_path": "x.png", "label": 1, "class_name": "c", "mask_path": ""}) + "\n"
    )
    with pytest.raises(
        FileNotFoundError, match=r"m\.jsonl line 1: anomalous image .*x\.png has no 'mask_path'"
    ):
        read_dataset(path, "jsonl")
    path.write_text(json.dumps({"image_path": "x.png", "label": 2, "class_name": "c"}) + "\n")
    with pytest.raises(RuntimeError, match=r"m\.jsonl line 1: 'label' is 2; expected 0 or 1"):
        read_dataset(path, "jsonl")
    path.write_text(json.dumps({"image_path": "y.png", "label": 0, "class_name": "c"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"m\.jsonl line 1: image .*y\.png not found"):
        read_dataset(path, "jsonl")


def test_dataset_spec_from_mapping_validates():
    spec = DatasetSpec.from_mapping(
        {"name": "synth_train", "layout": "mvtec", "root": "results/data/synth_train"}
    )
    assert spec.root == Path("results/data/synth_train")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['path'\]; valid keys: name, layout, root"):
        DatasetSpec.from_mapping({"name": "a", "layout": "mvtec", "root": "x", "path": "y"})
    with pytest.raises(ValueError, match=r"dataset 'a': unknown layout 'coco'; valid layouts: mvtec"):
        DatasetSpec.from_mapping({"name": "a", "layout": "coco", "root": "x"})
    with pytest.raises(ValueError, match=r"dataset name 'a\.b' is not valid"):
        DatasetSpec(name="a.b", layout="mvtec", root=Path("x"))


def test_format_summary_aligns_and_totals(tmp_path, write_image, write_mask):
    root = _mvtec(tmp_path / "m", write_image, write_mask)
    table = format_summary(summarize(read_dataset(root, "mvtec")))
    lines = table.splitlines()
    assert lines[0].split() == ["category", "split", "defect_type", "n_normal", "n_anomalous", "with_mask"]
    assert lines[-1].split() == ["total", "1", "categories", "2", "3", "3"]
    assert len({len(line) for line in lines[1:-1] if not line.startswith("-")}) == 1  # aligned columns
