"""The four arms: registry, each arm's run and checkpoints, base loading and optimizer carry-over."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aaclip_xattn.checkpoint import load_checkpoint_file, tensor_fingerprint
from aaclip_xattn.fileio import sha256_file
from aaclip_xattn.train import get_arm, list_arms, run_training


def test_registry_lists_the_four_arms_and_rejects_unknown_names():
    assert list_arms() == ["baseline", "xattn_from_base", "xattn_scratch", "baseline_continued"]
    assert [(get_arm(a).kind, get_arm(a).from_base) for a in list_arms()] == [
        ("baseline", False),
        ("xattn", True),
        ("xattn", False),
        ("baseline", True),
    ]
    with pytest.raises(ValueError, match="unknown arm 'xattn'; valid arms: baseline, xattn_from_base"):
        get_arm("xattn")


def test_from_base_arm_needs_the_base_and_fresh_arms_refuse_one(tiny_cfg, train_manifest, tmp_path):
    with pytest.raises(
        ValueError, match="arm xattn_from_base starts from that seed's baseline.*--load_base_image_adapter"
    ):
        run_training(
            tiny_cfg,
            run_dir=tmp_path,
            manifest_path=train_manifest,
            arm="xattn_from_base",
            base_text_adapter="t",
        )
    with pytest.raises(
        ValueError, match="arm xattn_scratch starts from fresh adapters; it takes no base checkpoint"
    ):
        run_training(
            tiny_cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="xattn_scratch", base_dir=tmp_path
        )


@pytest.mark.parametrize("arm", ["xattn_from_base", "xattn_scratch", "baseline_continued"])
def test_every_arm_trains_one_epoch_each_and_writes_reference_format(
    arm, baseline_run, tiny_cfg, train_manifest, tmp_path
):
    base_dir, base_record = baseline_run
    from_base = get_arm(arm).from_base
    record = run_training(
        tiny_cfg,
        run_dir=tmp_path,
        manifest_path=train_manifest,
        arm=arm,
        base_dir=base_dir if from_base else None,
    )
    assert record["status"] == "completed" and record["epochs_completed"] == {"text": 1, "image": 1}
    assert record["steps_completed"] == {"text": 2, "image": 4}
    text = load_checkpoint_file(tmp_path / "text_adapter.pth", expect_key="text_adapter")
    image = load_checkpoint_file(tmp_path / "image_adapter.pth", expect_key="image_adapter")
    xattn = get_arm(arm).kind == "xattn"
    assert ("text_cross_attn" in text) is xattn and ("image_cross_attn" in image) is xattn
    assert "image_cross_attn" not in text and "text_cross_attn" not in image
    assert (
        text["epoch"] == 1 and image["epoch"] == 1 and "text_optimizer" in text and "image_optimizer" in image
    )
    assert text["param_names"][0].startswith("text_adapter.")
    if xattn:
        assert text["param_names"][-1].startswith("text_cross_attn.")
        assert image["param_names"][-1].startswith("image_cross_attn.")
    assert record["final_checkpoints"]["image_adapter"]["sha256"] == sha256_file(
        tmp_path / "image_adapter.pth"
    )
    if from_base:
        assert record["loaded_checkpoints"] == [
            {
                "role": "base_text_adapter",
                "path": str(base_dir / "text_adapter.pth"),
                "sha256": sha256_file(base_dir / "text_adapter.pth"),
            },
            {
                "role": "base_image_adapter",
                "path": str(base_dir / "image_adapter.pth"),
                "sha256": sha256_file(base_dir / "image_adapter.pth"),
            },
        ]
        # The loaded adapters are exactly the baseline's final ones.
        for name in ("text_adapter", "image_adapter"):
            assert record["loaded_fingerprints"][name] == base_record["final_fingerprints"][name]
            assert record["initial_fingerprints"][name] == base_record["final_fingerprints"][name]
        assert record["optimizer_state_loaded"] == {"text": True, "image": True}
    else:
        assert record["loaded_checkpoints"] == [] and record["optimizer_state_loaded"] == {
            "text": False,
            "image": False,
        }
        # Fresh arms of one seed share the adapter init (the "init" stream).
        for name in ("text_adapter", "image_adapter"):
            assert record["initial_fingerprints"][name] == base_record["initial_fingerprints"][name]
    if xattn:
        assert set(record["initial_fingerprints"]) == {
            "text_adapter",
            "image_adapter",
            "text_cross_attn",
            "image_cross_attn",
        }
        assert record["verification"]["text_cross_attn"]["present"] is True


def _moments(state: dict, index: int) -> dict:
    return state["state"].get(index, {})


def test_optimizer_carryover_restores_base_moments_tensor_by_tensor(
    baseline_run, tiny_cfg, train_manifest, tmp_path
):
    """With 0 epochs, the saved optimizer holds exactly what was carried over from the base."""
    base_dir, _ = baseline_run
    cfg = dataclasses.replace(tiny_cfg, text_epoch=0, image_epoch=0)
    record = run_training(
        cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="xattn_from_base", base_dir=base_dir
    )
    for stage in ("text", "image"):
        base = load_checkpoint_file(base_dir / f"{stage}_adapter.pth")
        new = load_checkpoint_file(tmp_path / f"{stage}_adapter.pth")
        base_opt, new_opt = base[f"{stage}_optimizer"], new[f"{stage}_optimizer"]
        base_index = {name: i for i, name in enumerate(base["param_names"])}
        n_adapter = n_fresh = 0
        for i, name in enumerate(new["param_names"]):
            if name.startswith(f"{stage}_adapter."):
                want, got = _moments(base_opt, base_index[name]), _moments(new_opt, i)
                assert set(got) == {"step", "exp_avg", "exp_avg_sq"}
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
                n_adapter += 1
            else:
                assert name.startswith(f"{stage}_cross_attn.") and _moments(new_opt, i) == {}
                n_fresh += 1
        assert n_adapter == len(base["param_names"]) and n_fresh > 0
        assert record["optimizer_carryover"][stage]["carried"] == [
            n for n in new["param_names"] if n.startswith(f"{stage}_adapter.")
        ]
        assert new_opt["param_groups"][0]["lr"] == (1e-5 if stage == "text" else 5e-4)


def test_no_optimizer_carryover_starts_fresh(baseline_run, tiny_cfg, train_manifest, tmp_path):
    base_dir, _ = baseline_run
    cfg = dataclasses.replace(tiny_cfg, text_epoch=0, image_epoch=0, optimizer_carryover=False)
    record = run_training(
        cfg, run_dir=tmp_path, manifest_path=train_manifest, arm="baseline_continued", base_dir=base_dir
    )
    assert record["optimizer_state_loaded"] == {"text": False, "image": False}
    assert load_checkpoint_file(tmp_path / "text_adapter.pth")["text_optimizer"]["state"] == {}
    assert record["hyperparameters"]["optimizer_carryover"] is False
    assert (
        tensor_fingerprint(load_checkpoint_file(tmp_path / "text_adapter.pth")["text_adapter"])
        == record["loaded_fingerprints"]["text_adapter"]
    )
