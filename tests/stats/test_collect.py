"""Tests of ``collect_metrics``: evaluation CSVs → ``metrics_long.csv`` and back."""

from __future__ import annotations

import csv
import math
import shutil

import pytest

from aaclip_xattn.stats.collect import LONG_COLUMNS, collect_metrics, parse_eval_path, read_metrics_long
from aaclip_xattn.stats.config import METRICS


def test_collect_metrics_round_trip_keeps_every_value_and_drops_mean_rows(fake_results_factory, tmp_path):
    fake = fake_results_factory(nan_categories=("grid",), shots=("4", "full"))
    out = collect_metrics(fake.root, tmp_path / "stats" / "metrics_long.csv")
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == LONG_COLUMNS
        raw = list(reader)
    assert len(raw) == len(fake.values)  # one row per number; no "mean" rows
    assert all(r["category"] != "mean" for r in raw)
    assert {r["value"] for r in raw if r["category"] == "grid" and r["metric"].startswith("pixel_")} == {
        "nan"
    }
    records = read_metrics_long(out)
    got = {
        (r.train_dataset, r.shot, r.seed, r.arm, r.test_dataset, r.category, r.metric): r.value
        for r in records
    }
    assert got.keys() == fake.values.keys()
    for key, value in fake.values.items():
        if math.isnan(value):
            assert math.isnan(got[key])
        else:
            assert got[key] == value  # full precision, exactly
    assert {r.shot for r in records} == {"4", "full"}


def test_collect_metrics_from_path_list_equals_directory_scan(fake_results, tmp_path):
    by_dir = collect_metrics(fake_results.root, tmp_path / "a.csv")
    by_list = collect_metrics(list(reversed(fake_results.csvs)), tmp_path / "b.csv")
    assert by_dir.read_bytes() == by_list.read_bytes()


def test_parse_eval_path_reads_keys_from_the_layout(tmp_path):
    keys = parse_eval_path(tmp_path / "eval" / "mvtec" / "full" / "seed7" / "xattn_scratch" / "visa.csv")
    assert keys == {
        "train_dataset": "mvtec",
        "shot": "full",
        "seed": 7,
        "arm": "xattn_scratch",
        "test_dataset": "visa",
    }
    assert parse_eval_path("eval/mvtec/shot16/seed0/baseline/btad.csv")["shot"] == "16"
    with pytest.raises(ValueError, match="shot directory 'shots4' is neither shot<k> nor full"):
        parse_eval_path("eval/mvtec/shots4/seed0/baseline/btad.csv")
    with pytest.raises(ValueError, match="seed directory 'run0' is not seed<s>"):
        parse_eval_path("eval/mvtec/shot4/run0/baseline/btad.csv")


def test_collect_metrics_names_missing_column_and_bad_value(fake_results, tmp_path):
    path = fake_results.csvs[0]
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("pixel_aupro")
    path.write_text(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines)
    )
    with pytest.raises(ValueError, match=r"missing column\(s\) pixel_aupro"):
        collect_metrics([path], tmp_path / "x.csv")
    lines[1] = lines[1].replace(lines[1].split(",")[4], "high", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(
        ValueError, match=r"line 2, column 'image_auroc': expected a number or nan, found 'high'"
    ):
        collect_metrics([path], tmp_path / "x.csv")


def test_collect_metrics_rejects_missing_tree_and_duplicate_runs(fake_results, tmp_path):
    with pytest.raises(FileNotFoundError, match="eval: no such directory"):
        collect_metrics(tmp_path / "nothing", tmp_path / "x.csv")
    copy = tmp_path / "other" / fake_results.csvs[0].relative_to(fake_results.root)
    copy.parent.mkdir(parents=True)
    shutil.copy(fake_results.csvs[0], copy)
    with pytest.raises(ValueError, match="the same run and test dataset as"):
        collect_metrics([fake_results.csvs[0], copy], tmp_path / "x.csv")


def test_read_metrics_long_rejects_unknown_metric(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(",".join(LONG_COLUMNS) + "\nd,4,0,baseline,d,c,image_auc,0.5\n")
    with pytest.raises(ValueError, match="unknown metric 'image_auc'; expected one of " + METRICS[0]):
        read_metrics_long(path)
