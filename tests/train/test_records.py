"""Record helpers: train_log.csv round trip, run.json field check, identity diff."""

from __future__ import annotations

import pytest

from aaclip_xattn.train.records import (
    RUN_FORMAT,
    RUN_RECORD_FIELDS,
    TRAIN_LOG_COLUMNS,
    diff_identity,
    read_run_record,
    read_train_log,
    write_run_record,
    write_train_log,
)


def test_train_log_round_trips_with_full_precision(tmp_path):
    rows = [
        {"stage": "text", "epoch": 1, "steps": 3, "loss": 1 / 3, "lr": 1e-5, "seconds": 0.25},
        {"stage": "image", "epoch": 1, "steps": 8, "loss": 2.0000000001, "lr": 5e-4, "seconds": 1.5},
    ]
    path = write_train_log(tmp_path / "train_log.csv", rows)
    assert path.read_text().splitlines()[0] == ",".join(TRAIN_LOG_COLUMNS)
    assert read_train_log(path) == rows


def test_run_record_requires_every_field(tmp_path):
    record = {key: None for key in RUN_RECORD_FIELDS}
    record["format"] = RUN_FORMAT
    write_run_record(tmp_path / "run.json", record)
    assert read_run_record(tmp_path / "run.json") == record
    del record["verification"]
    with pytest.raises(ValueError, match=r"run record lacks the field\(s\) \['verification'\]"):
        write_run_record(tmp_path / "bad.json", record)
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(RuntimeError, match="not a run record"):
        read_run_record(tmp_path / "other.json")


def test_diff_identity_names_nested_keys_and_treats_tuples_as_lists():
    old = {"arm": "baseline", "hyperparameters": {"text_lr": 1e-5, "betas": [0.5, 0.999]}}
    new = {"arm": "baseline", "hyperparameters": {"text_lr": 2e-5, "betas": (0.5, 0.999)}, "seed": 1}
    assert diff_identity(old, new) == ["hyperparameters.text_lr", "seed"]
    assert diff_identity(old, old) == []


def test_run_json_has_every_field_with_the_runs_values(baseline_run, train_manifest):
    import torch

    from aaclip_xattn import __version__
    from aaclip_xattn.data import read_manifest
    from aaclip_xattn.fileio import read_json, sha256_file
    from aaclip_xattn.prompts import descriptions_sha256

    run_dir, record = baseline_run
    on_disk = read_run_record(run_dir / "run.json")
    assert on_disk == read_json(run_dir / "run.json")
    assert set(RUN_RECORD_FIELDS) <= set(on_disk)
    assert on_disk["format"] == RUN_FORMAT and on_disk["status"] == "completed"
    assert (
        on_disk["arm"],
        on_disk["seed"],
        on_disk["train_dataset"],
        on_disk["shot"],
        on_disk["training_mode"],
    ) == (
        "baseline",
        0,
        "synth_small",
        "4",
        "few_shot",
    )
    hyper = on_disk["hyperparameters"]
    for key in (
        "text_lr", "image_lr", "text_epoch", "image_epoch", "text_batch_size", "image_batch_size", "preset",
        "backbone", "pretrained", "image_size", "vv_axis", "stage1_levels", "noise_aug", "augment", "fusion",
        "optimizer_carryover", "descriptions_sha256", "evaluated_checkpoint",
    ):  # fmt: skip
        assert key in hyper, key
    assert (hyper["text_epoch"], hyper["image_epoch"], hyper["text_lr"], hyper["image_lr"]) == (
        1,
        1,
        1e-5,
        5e-4,
    )
    assert (hyper["image_size"], hyper["vv_axis"], hyper["stage1_levels"]) == (64, "batch", "last")
    assert hyper["descriptions_sha256"] == descriptions_sha256(None)  # category names in words
    assert on_disk["epochs_completed"] == {"text": 1, "image": 1}
    assert on_disk["steps_completed"] == {"text": 2, "image": 4}
    assert on_disk["manifest"] == {
        "path": str(train_manifest),
        "sha256": read_manifest(train_manifest).sha256,
    }
    assert (
        on_disk["loaded_checkpoints"] == []
        and on_disk["loaded_fingerprints"] == {}
        and on_disk["skipped_keys"] == []
    )
    assert set(on_disk["initial_fingerprints"]) == {"text_adapter", "image_adapter"}
    assert on_disk["initial_fingerprints"]["text_adapter"] != on_disk["final_fingerprints"]["text_adapter"]
    assert (
        on_disk["verification"]["text_adapter"]["sha256"] == on_disk["initial_fingerprints"]["text_adapter"]
    )
    assert on_disk["verification"]["text_cross_attn"]["present"] is False
    for name in ("text_adapter", "image_adapter"):
        assert on_disk["final_checkpoints"][name]["sha256"] == sha256_file(run_dir / f"{name}.pth")
    assert [len(on_disk["epoch_losses"][s]) for s in ("text", "image")] == [1, 1]
    assert (
        on_disk["versions"]["aaclip_xattn"] == __version__
        and on_disk["versions"]["torch"] == torch.__version__
    )
    assert on_disk["device"] == "cpu" and all(on_disk["wall_time_s"][s] > 0 for s in ("text", "image"))
    rows = read_train_log(run_dir / "train_log.csv")
    assert [(r["stage"], r["epoch"], r["steps"], r["lr"]) for r in rows] == [
        ("text", 1, 2, 1e-5),
        ("image", 1, 4, 5e-4),
    ]
    assert [r["loss"] for r in rows] == [
        on_disk["epoch_losses"]["text"][0],
        on_disk["epoch_losses"]["image"][0],
    ]
    log = (run_dir / "train.log").read_text()
    assert "WEIGHT INITIALIZATION VERIFICATION" in log and "text epoch 1: loss" in log
