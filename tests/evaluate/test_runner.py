"""The evaluation runner and ``inference.py`` end to end on a tiny synthetic dataset with tiny models."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from aaclip_xattn.data.readers import read_dataset
from aaclip_xattn.data.records import DatasetSpec
from aaclip_xattn.errors import CheckpointError, UndefinedMetricWarning
from aaclip_xattn.evaluate.cli import inference_main
from aaclip_xattn.evaluate.metrics import IMAGE_METRICS, METRIC_NAMES, PIXEL_METRICS
from aaclip_xattn.evaluate.runner import (
    EVAL_COLUMNS,
    EvalConfig,
    add_mean_row,
    compute_test_list_sha256,
    evaluate_checkpoint,
    evaluate_run,
)
from aaclip_xattn.fileio import read_csv, read_json, sha256_file, write_json
from aaclip_xattn.prompts import Descriptions

CATEGORIES = ["brick", "grass"]


@pytest.fixture
def quiet_cli(monkeypatch):
    """Keep the CLI from replacing pytest's logging handlers."""
    monkeypatch.setattr("aaclip_xattn.logs.configure_logging", lambda *a, **k: None)


@pytest.fixture(scope="module")
def samples(eval_dataset_root):
    return read_dataset(eval_dataset_root, "mvtec", split="test")


@pytest.fixture(scope="module")
def baseline_rows(tiny_baseline, samples):
    return evaluate_checkpoint(tiny_baseline, samples, EvalConfig(batch_size=4))


def _cli(args, tmp_path, checkpoint, root, extra=()):
    return inference_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synth",
            "--dataset_root",
            str(root),
            "--layout",
            "mvtec",
            "--backbone",
            "tiny",
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--out",
            str(tmp_path / "results.csv"),
            *args,
            *extra,
        ]
    )


# --------------------------------------------------------------------------------------------------
# the command end to end


def test_inference_command_writes_table_and_sidecar_equal_to_the_in_memory_model(
    save_reference_checkpoints,
    tiny_baseline,
    baseline_rows,
    samples,
    eval_dataset_root,
    tmp_path,
    quiet_cli,
    capsys,
):
    _, image_ckpt = save_reference_checkpoints(tiny_baseline, tmp_path / "run")
    maps_dir = tmp_path / "maps"
    rc = _cli(
        ["--save_maps", str(maps_dir), "--save_maps_count", "2"], tmp_path, image_ckpt, eval_dataset_root
    )
    assert rc == 0, capsys.readouterr().err
    table = read_csv(tmp_path / "results.csv")
    assert list(table[0]) == list(EVAL_COLUMNS)
    assert [r["category"] for r in table] == [*CATEGORIES, "mean"]
    for row, want in zip(table, baseline_rows, strict=False):
        assert (int(row["n_images"]), int(row["n_normal"]), int(row["n_anomalous"])) == (6, 3, 3)
        for metric in METRIC_NAMES:
            value = float(row[metric])
            assert math.isfinite(value) and 0.0 <= value <= 1.0
            assert value == pytest.approx(want[metric], abs=1e-12), (row["category"], metric)
    mean = table[-1]
    assert int(mean["n_images"]) == 12
    assert float(mean["pixel_aupro"]) == pytest.approx(
        sum(r["pixel_aupro"] for r in baseline_rows) / 2, abs=1e-12
    )

    sidecar = read_json(tmp_path / "results.json")
    conventions = sidecar["conventions"]
    assert conventions["map_resolution"] == tiny_baseline.image_size == 128
    assert (conventions["blur"]["kernel"], conventions["blur"]["sigma"]) == (7, 1.0)
    assert conventions["aupro_mode"] == "exact" and conventions["aupro_fpr_limit"] == 0.3
    assert conventions["fusion"] == "transductive" and conventions["mask_rule"] == "nearest_nonzero"
    assert conventions["descriptions_sha256"] == tiny_baseline.descriptions.sha256
    assert sidecar["test_list_sha256"] == compute_test_list_sha256(samples, eval_dataset_root)
    assert sidecar["checkpoint"]["sha256"] == sha256_file(image_ckpt)
    assert sidecar["checkpoint"]["kind"] == "baseline" and sidecar["checkpoint"]["epoch"] == 0
    assert sidecar["skipped_categories"] == dict.fromkeys(METRIC_NAMES, 0)
    # 2 overlays spread over the category: its first and its last image
    brick = [s for s in samples if s.category == "brick"]
    want = sorted(f"{s.defect_type}_{s.image_path.stem}.png" for s in (brick[0], brick[-1]))
    assert sorted(p.name for p in (maps_dir / "brick").iterdir()) == want
    out = capsys.readouterr().out
    assert "pixel_aupro" in out and "mean" in out


def test_inference_rebuilds_the_model_from_the_run_json_beside_the_checkpoint(
    save_reference_checkpoints, tiny_baseline, baseline_rows, eval_dataset_root, tmp_path, quiet_cli, capsys
):
    _, image_ckpt = save_reference_checkpoints(tiny_baseline, tmp_path / "run")
    write_json(
        image_ckpt.parent / "run.json",
        {"arm": "baseline", "seed": 3, "hyperparameters": {"backbone": "tiny", "image_size": 128}},
    )
    args = ["--checkpoint", str(image_ckpt), "--dataset_root", str(eval_dataset_root), "--layout", "mvtec"]
    rc = inference_main([*args, "--batch_size", "4", "--out", str(tmp_path / "r.csv")])
    assert rc == 0, capsys.readouterr().err
    table = read_csv(tmp_path / "r.csv")
    assert float(table[0]["pixel_auroc"]) == pytest.approx(baseline_rows[0]["pixel_auroc"], abs=1e-12)
    assert read_json(tmp_path / "r.json")["run"]["seed"] == 3


def test_inference_detects_cross_attention_from_the_checkpoint_keys(
    save_reference_checkpoints, tiny_xattn, eval_dataset_root, tmp_path, quiet_cli, samples
):
    model = tiny_xattn
    with torch.no_grad():
        saved = (model.text_cross_attn.gate.item(), model.image_cross_attn.gate.item())
        model.text_cross_attn.gate.fill_(0.5)
        model.image_cross_attn.gate.fill_(0.25)
    try:
        _, image_ckpt = save_reference_checkpoints(model, tmp_path / "xrun")
        expected = evaluate_checkpoint(
            model, samples, EvalConfig(batch_size=4, aupro_mode="legacy200"), categories=["grass"]
        )
    finally:
        with torch.no_grad():
            model.text_cross_attn.gate.fill_(saved[0])
            model.image_cross_attn.gate.fill_(saved[1])
    rc = _cli(["--aupro_mode", "legacy200", "--categories", "grass"], tmp_path, image_ckpt, eval_dataset_root)
    assert rc == 0
    sidecar = read_json(tmp_path / "results.json")
    assert sidecar["checkpoint"]["kind"] == "xattn"
    assert sidecar["conventions"]["aupro_mode"] == "legacy200"
    row = read_csv(tmp_path / "results.csv")[0]
    for metric in METRIC_NAMES:
        assert float(row[metric]) == pytest.approx(expected[0][metric], abs=1e-12)


# --------------------------------------------------------------------------------------------------
# errors: one line, exit status 2


def test_missing_checkpoint_and_text_adapter_are_named(tmp_path, eval_dataset_root, quiet_cli, capsys):
    missing = tmp_path / "nowhere" / "image_adapter.pth"
    assert _cli([], tmp_path, missing, eval_dataset_root) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {missing}: no such file" in err and err.count("\n") == 1
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    torch.save({"image_adapter": {}, "epoch": 0}, lonely / "image_adapter.pth")
    assert _cli([], tmp_path, lonely / "image_adapter.pth", eval_dataset_root) == 2
    assert (
        f"{lonely / 'text_adapter.pth'}: no such file; the text checkpoint is expected beside"
        in capsys.readouterr().err
    )


def test_missing_dataset_root_names_the_flag(
    save_reference_checkpoints, tiny_baseline, tmp_path, quiet_cli, capsys
):
    _, image_ckpt = save_reference_checkpoints(tiny_baseline, tmp_path / "run")
    rc = inference_main(["--checkpoint", str(image_ckpt), "--layout", "mvtec", "--backbone", "tiny"])
    assert rc == 2
    assert "--dataset_root is required" in capsys.readouterr().err


def test_checkpoint_of_another_backbone_gets_the_shape_error(
    save_reference_checkpoints, tiny_baseline, eval_dataset_root, tmp_path, quiet_cli, capsys
):
    text_ckpt, image_ckpt = save_reference_checkpoints(tiny_baseline, tmp_path / "run")
    content = torch.load(text_ckpt, weights_only=True)
    content["text_adapter"]["0.fc.0.weight"] = torch.zeros(64, 64)
    torch.save(content, text_ckpt)
    assert _cli([], tmp_path, image_ckpt, eval_dataset_root) == 2
    err = capsys.readouterr().err
    assert "'0.fc.0.weight'" in err and "(64, 64)" in err and "(128, 128)" in err


# --------------------------------------------------------------------------------------------------
# evaluate_run


def _write_run(folder, model, arm, save_reference_checkpoints, **hyper):
    save_reference_checkpoints(model, folder)
    write_json(
        folder / "run.json",
        {
            "arm": arm,
            "seed": 3,
            "train_dataset": "synth_a",
            "shot": "4",
            "hyperparameters": {"backbone": "tiny", "pretrained": None, "image_size": 128, **hyper},
        },
    )


def test_evaluate_run_writes_one_table_per_test_dataset_with_the_run_identity(
    save_reference_checkpoints, tiny_baseline, baseline_rows, eval_dataset_root, tmp_path
):
    run_dir = tmp_path / "runs" / "baseline"
    descriptions = tmp_path / "descriptions.json"
    write_json(descriptions, {"brick": "red brick wall", "grass": "green lawn"})
    _write_run(run_dir, tiny_baseline, "baseline", save_reference_checkpoints, descriptions=str(descriptions))
    spec = DatasetSpec(name="synth_test", layout="mvtec", root=eval_dataset_root)
    written = evaluate_run(run_dir, [spec], tmp_path / "eval", EvalConfig(batch_size=4, save_maps=1))
    assert len(list((tmp_path / "eval" / "synth_test_maps" / "grass").iterdir())) == 1
    assert written == {"synth_test": tmp_path / "eval" / "synth_test.csv"}
    table = read_csv(written["synth_test"])
    assert [r["category"] for r in table] == [*CATEGORIES, "mean"]
    assert all(math.isfinite(float(r[m])) for r in table for m in METRIC_NAMES)
    # Other descriptions give other anchors: the pixel maps change, the table is not the default one.
    assert any(
        float(r["pixel_auroc"]) != w["pixel_auroc"] for r, w in zip(table, baseline_rows, strict=False)
    )
    sidecar = read_json(tmp_path / "eval" / "synth_test.json")
    assert sidecar["conventions"]["descriptions_sha256"] == Descriptions(descriptions).sha256
    assert sidecar["run"] == {"arm": "baseline", "seed": 3, "train_dataset": "synth_a", "shot": "4"}
    assert sidecar["checkpoint"]["path"] == str(run_dir / "image_adapter.pth")
    assert sidecar["test_dataset"]["name"] == "synth_test"


def test_evaluate_run_refuses_checkpoints_that_contradict_the_arm(
    save_reference_checkpoints, tiny_baseline, eval_dataset_root, tmp_path
):
    run_dir = tmp_path / "runs" / "xattn_from_base"
    _write_run(run_dir, tiny_baseline, "xattn_from_base", save_reference_checkpoints)
    spec = DatasetSpec(name="synth_test", layout="mvtec", root=eval_dataset_root)
    with pytest.raises(
        CheckpointError, match="run.json names arm 'xattn_from_base' .* hold a baseline model"
    ):
        evaluate_run(run_dir, [spec], tmp_path / "eval", EvalConfig())


# --------------------------------------------------------------------------------------------------
# rows


def test_category_rows_are_isolated_from_other_categories(tiny_baseline, baseline_rows, samples):
    alone = evaluate_checkpoint(tiny_baseline, samples, EvalConfig(batch_size=4), categories=["grass"])
    assert alone[0]["category"] == "grass"
    for metric in METRIC_NAMES:
        assert alone[0][metric] == pytest.approx(baseline_rows[1][metric], abs=1e-12)


def test_fusion_none_changes_only_image_metrics(tiny_baseline, baseline_rows, samples):
    rows = evaluate_checkpoint(tiny_baseline, samples, EvalConfig(fusion="none", batch_size=4))
    for row, base in zip(rows, baseline_rows, strict=True):
        for metric in PIXEL_METRICS:
            assert row[metric] == pytest.approx(base[metric], abs=1e-12)
    assert any(
        row[m] != base[m] for row, base in zip(rows, baseline_rows, strict=True) for m in IMAGE_METRICS
    )


def test_single_label_category_is_nan_unless_legacy_zero(tiny_baseline, samples):
    anomalous = [s for s in samples if s.label == 1 and s.category == "brick"]
    with pytest.warns(
        UndefinedMetricWarning, match=r"image_(auroc|ap|f1_max) is undefined \(no normal images"
    ):
        rows = evaluate_checkpoint(tiny_baseline, anomalous, EvalConfig())
    assert all(math.isnan(rows[0][m]) for m in IMAGE_METRICS)
    assert all(math.isfinite(rows[0][m]) for m in PIXEL_METRICS)
    table, skipped = add_mean_row(rows)
    assert skipped["image_auroc"] == 1 and math.isnan(table[-1]["image_auroc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)  # legacy_zero does not compute the NaN
        zero = evaluate_checkpoint(tiny_baseline, anomalous, EvalConfig(legacy_zero=True))
    assert all(zero[0][m] == 0.0 for m in IMAGE_METRICS)


def test_test_list_sha256_ignores_order_and_mount_point(samples, eval_dataset_root, tmp_path):
    digest = compute_test_list_sha256(samples, eval_dataset_root)
    assert compute_test_list_sha256(samples[::-1], eval_dataset_root) == digest
    moved = eval_dataset_root.parent / "moved_copy"
    import shutil

    shutil.copytree(eval_dataset_root, moved)
    assert compute_test_list_sha256(read_dataset(moved, "mvtec"), moved) == digest
    assert compute_test_list_sha256(samples[1:], eval_dataset_root) != digest


def test_evaluated_checkpoint_epoch_k_is_kept_by_training_and_read_by_the_evaluator(
    small_manifest_factory, eval_dataset_root, tmp_path
):
    from aaclip_xattn.data import DatasetSpec
    from aaclip_xattn.train import TrainConfig, run_training

    cfg = TrainConfig(
        backbone="tiny",
        image_size=64,
        text_epoch=1,
        image_epoch=2,
        text_batch_size=4,
        image_batch_size=2,
        device="cpu",
        seed=0,
        save_every_epoch=True,
        evaluated_checkpoint="epoch1",
    )
    run_dir = tmp_path / "run"
    run_training(cfg, run_dir=run_dir, manifest_path=small_manifest_factory(0), arm="baseline")
    kept = [run_dir / f"image_adapter_{k}.pth" for k in (1, 2)]
    assert all(p.is_file() for p in kept)
    assert sha256_file(kept[1]) != sha256_file(kept[0])
    spec = DatasetSpec(name="synth", layout="mvtec", root=eval_dataset_root)
    evaluate_run(run_dir, [spec], tmp_path / "eval", EvalConfig(batch_size=4))
    sidecar = read_json(tmp_path / "eval" / "synth.json")
    assert sidecar["checkpoint"]["sha256"] == sha256_file(kept[0])
    assert sidecar["checkpoint"]["epoch"] == 1
