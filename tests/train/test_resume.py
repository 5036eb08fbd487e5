"""Determinism and resume: same command twice, kill-and-rerun, config mismatch, NaN guard."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import aaclip_xattn.train.runner as runner
import aaclip_xattn.train.stage1 as stage1
import aaclip_xattn.train.stage2 as stage2
from aaclip_xattn.checkpoint import load_checkpoint_file, tensor_fingerprint
from aaclip_xattn.errors import NonFiniteLossError
from aaclip_xattn.train import ResumeMismatchError, run_training
from aaclip_xattn.train.records import read_train_log


class _Killed(Exception):
    pass


def _weights(run_dir) -> dict[str, str]:
    out = {}
    for stage in ("text", "image"):
        content = load_checkpoint_file(run_dir / f"{stage}_adapter.pth")
        for key in (f"{stage}_adapter", f"{stage}_cross_attn"):
            if key in content:
                out[key] = tensor_fingerprint(content[key])
        out[f"{stage}_optimizer"] = tensor_fingerprint(
            {f"{i}.{k}": v for i, s in content[f"{stage}_optimizer"]["state"].items() for k, v in s.items()}
        )
    return out


def test_same_command_twice_gives_bit_identical_checkpoints(baseline_run, tiny_cfg, train_manifest, tmp_path):
    base_dir, base_record = baseline_run
    record = run_training(tiny_cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline")
    assert _weights(tmp_path) == _weights(base_dir)
    assert record["final_fingerprints"] == base_record["final_fingerprints"]
    assert record["epoch_losses"] == base_record["epoch_losses"]


def _kill_on(monkeypatch, name: str, epoch: int) -> None:
    original = getattr(runner, name)

    def wrapper(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise _Killed(f"{name} epoch {epoch}")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, name, wrapper)


def test_kill_and_rerun_equals_uninterrupted_run(tiny_cfg, train_manifest, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_cfg, text_epoch=2, image_epoch=2)
    full = run_training(cfg, run_dir=tmp_path / "full", manifest_path=train_manifest, arm="xattn_scratch")
    run_dir = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _kill_on(patch, "train_text_epoch", 1)  # dies during text epoch 2, after epoch 1's checkpoint
        with pytest.raises(_Killed):
            run_training(cfg, run_dir=run_dir, manifest_path=train_manifest, arm="xattn_scratch")
    assert load_checkpoint_file(run_dir / ".resume" / "text.pth")["epoch"] == 1
    assert not (run_dir / "text_adapter.pth").exists()
    with monkeypatch.context() as patch:
        _kill_on(patch, "train_image_epoch", 1)  # the rerun dies during image epoch 2
        with pytest.raises(_Killed):
            run_training(cfg, run_dir=run_dir, manifest_path=train_manifest, arm="xattn_scratch")
    resumed = run_training(cfg, run_dir=run_dir, manifest_path=train_manifest, arm="xattn_scratch")
    assert resumed["resumed_from"] == {"text": 2, "image": 1}
    assert _weights(run_dir) == _weights(tmp_path / "full")
    assert resumed["final_fingerprints"] == full["final_fingerprints"]
    assert resumed["epoch_losses"] == full["epoch_losses"]
    assert resumed["steps_completed"] == full["steps_completed"] == {"text": 4, "image": 8}
    rows = read_train_log(run_dir / "train_log.csv")
    assert [(r["stage"], r["epoch"], r["steps"]) for r in rows] == [
        ("text", 1, 2),
        ("text", 2, 4),
        ("image", 1, 4),
        ("image", 2, 8),
    ]
    # A completed run rerun with the same command trains nothing more and keeps the weights.
    again = run_training(cfg, run_dir=run_dir, manifest_path=train_manifest, arm="xattn_scratch")
    assert again["final_fingerprints"] == full["final_fingerprints"] and again["resumed_from"] == {
        "text": 2,
        "image": 2,
    }


def test_resume_with_another_config_names_the_differing_keys(baseline_run, tiny_cfg, train_manifest):
    base_dir, _ = baseline_run
    changed = dataclasses.replace(tiny_cfg, text_lr=2e-5, vv_axis="token")
    with pytest.raises(
        ResumeMismatchError, match=r"differing: hyperparameters.text_lr, hyperparameters.vv_axis"
    ):
        run_training(changed, run_dir=base_dir, manifest_path=train_manifest, arm="baseline")


def test_restart_discards_resume_state_of_another_config(tiny_cfg, train_manifest, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, text_epoch=1, image_epoch=0)
    run_training(cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline")
    changed = dataclasses.replace(cfg, text_epoch=0)
    record = run_training(
        changed, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline", restart=True
    )
    assert record["epochs_completed"] == {"text": 0, "image": 0} and record["resumed_from"] == {
        "text": 0,
        "image": 0,
    }
    assert (
        json.loads((tmp_path / ".resume" / "identity.json").read_text())["hyperparameters"]["text_epoch"] == 0
    )


def test_nan_loss_stops_stage1_naming_stage_epoch_and_step(tiny_cfg, train_manifest, tmp_path, monkeypatch):
    def nan_loss(*args, **kwargs):
        loss = torch.tensor(float("nan"), requires_grad=True)
        return loss, {}

    monkeypatch.setattr(stage1, "stage1_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan in stage text \(1\), epoch 1, step 1"):
        run_training(tiny_cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline")
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "failed" and "epoch 1, step 1" in record["error"]


def test_nan_loss_in_stage2_keeps_the_last_good_epoch(tiny_cfg, train_manifest, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_cfg, text_epoch=0, image_epoch=2)
    original = stage2.stage2_loss
    calls = []

    def nan_after_epoch1(*args, **kwargs):
        calls.append(1)
        loss, parts = original(*args, **kwargs)
        return (loss * float("inf"), parts) if len(calls) > 5 else (loss, parts)

    monkeypatch.setattr(stage2, "stage2_loss", nan_after_epoch1)
    with pytest.raises(NonFiniteLossError, match=r"stage image \(2\), epoch 2, step 6"):
        run_training(cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline")
    assert load_checkpoint_file(tmp_path / ".resume" / "image.pth")["epoch"] == 1
    assert read_train_log(tmp_path / "train_log.csv")[-1]["epoch"] == 1
