"""Atomic writes, fingerprints and record round trips of the torch-free file helpers."""

from __future__ import annotations

import hashlib
import math

import pytest

from aaclip_xattn import fileio


def test_write_json_round_trip_keeps_nan_and_sorts_keys(tmp_path):
    path = tmp_path / "sub" / "record.json"
    fileio.write_json(path, {"b": 1.5, "a": float("nan"), "c": [1, 2]})
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    back = fileio.read_json(path)
    assert back["b"] == 1.5 and back["c"] == [1, 2] and math.isnan(back["a"])


def test_atomic_open_keeps_old_file_when_interrupted(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old complete content")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_open(path) as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_sha256_file_matches_hashlib_and_names_missing_path(tmp_path):
    path = tmp_path / "x.bin"
    data = bytes(range(256)) * 5000
    fileio.atomic_write_bytes(path, data)
    assert fileio.sha256_file(path) == hashlib.sha256(data).hexdigest() == fileio.sha256_bytes(data)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        fileio.sha256_file(tmp_path / "missing.bin")


def test_csv_round_trip_keeps_full_float_precision(tmp_path):
    path = tmp_path / "t.csv"
    value = 0.1 + 0.2
    fileio.write_csv(path, [{"name": "a", "v": value}, {"name": "b", "v": 2}], ["name", "v"])
    rows = fileio.read_csv(path)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert float(rows[0]["v"]) == value


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        fileio.read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RuntimeError, match="bad.json: not valid JSON"):
        fileio.read_json(bad)


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = fileio.atomic_write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_csv_writes_numpy_scalars_as_plain_numbers(tmp_path):
    import numpy as np

    path = fileio.write_csv(tmp_path / "n.csv", [{"v": np.float64(0.1), "i": np.int64(3)}], ["v", "i"])
    assert path.read_text().splitlines()[1] == "0.1,3"


def test_read_yaml_mapping_reads_mappings_and_names_the_file_in_errors(tmp_path):
    kwargs = {"missing": "no such thing (expected X)", "not_mapping": "expected a mapping, found {type}"}
    good = tmp_path / "cfg.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert fileio.read_yaml_mapping(good, **kwargs) == {"a": 1, "b": ["x", "y"]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert fileio.read_yaml_mapping(empty, **kwargs) == {}
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping, found list$"):
        fileio.read_yaml_mapping(listed, **kwargs)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML \("):
        fileio.read_yaml_mapping(broken, **kwargs)
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml: no such thing \(expected X\)$"):
        fileio.read_yaml_mapping(tmp_path / "nope.yaml", **kwargs)
