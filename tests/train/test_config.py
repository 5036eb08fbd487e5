"""TrainConfig validation, presets and the schedule precedence (explicit > preset > base)."""

from __future__ import annotations

import pytest

from aaclip_xattn.train import BASE_SCHEDULE, TrainConfig, get_arm, get_preset, list_presets, resolve_schedule
from aaclip_xattn.train.config import load_train_config


def test_presets_resolve_to_the_seed_guides_values():
    base = {"text_epoch": 5, "image_epoch": 20, "text_lr": 1e-5, "image_lr": 5e-4}
    assert BASE_SCHEDULE == base
    assert get_preset("conservative") == base
    assert get_preset("aggressive") == {
        "text_epoch": 3,
        "image_epoch": 10,
        "text_lr": 5e-6,
        "image_lr": 2.5e-4,
    }
    assert list_presets() == ["conservative", "aggressive"]
    aggressive = TrainConfig(preset="aggressive")
    assert resolve_schedule(aggressive, get_arm("xattn_from_base")) == get_preset("aggressive")
    assert resolve_schedule(aggressive, get_arm("baseline_continued")) == get_preset("aggressive")
    assert resolve_schedule(TrainConfig(), get_arm("xattn_from_base")) == base


def test_preset_never_touches_arms_that_start_fresh():
    aggressive = TrainConfig(preset="aggressive")
    assert resolve_schedule(aggressive, get_arm("baseline")) == BASE_SCHEDULE
    assert resolve_schedule(aggressive, get_arm("xattn_scratch")) == BASE_SCHEDULE


def test_explicit_value_beats_preset_beats_default():
    cfg = TrainConfig(preset="aggressive", text_epoch=7, image_lr=1e-3)
    resolved = resolve_schedule(cfg, get_arm("xattn_from_base"))
    assert resolved == {"text_epoch": 7, "image_epoch": 10, "text_lr": 5e-6, "image_lr": 1e-3}
    assert resolve_schedule(cfg, get_arm("baseline")) == {
        "text_epoch": 7,
        "image_epoch": 20,
        "text_lr": 1e-5,
        "image_lr": 1e-3,
    }


def test_get_preset_returns_a_copy_and_rejects_unknown_names():
    copy = get_preset("aggressive")
    copy["text_epoch"] = 99
    assert get_preset("aggressive")["text_epoch"] == 3
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid presets: conservative, aggressive"):
        get_preset("fast")


def test_from_mapping_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(
        ValueError, match=r"my.yaml: unknown key\(s\) text_epochs; valid keys: backbone, pretrained"
    ):
        TrainConfig.from_mapping({"text_epochs": 3}, source="my.yaml")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("vv_axis", "tokens", "one of batch, token, value_only"),
        ("stage1_levels", "first", "one of last, all"),
        ("text_batch_size", 0, "an integer >= 1"),
        ("text_lr", -1.0, "a number > 0 or null"),
        ("image_epoch", 2.5, "an integer >= 0 or null"),
        ("adam_betas", [0.5], r"two numbers in \[0, 1\)"),
        ("lr_milestones", [32000, 16000], "an increasing list"),
        ("evaluated_checkpoint", "best", '"last" or "epoch<k>"'),
        ("augment", "yes", "true or false"),
        ("device", "tpu", "one of auto, cpu, cuda"),
    ],
)
def test_from_mapping_names_the_bad_key_and_what_was_expected(key, value, expected):
    with pytest.raises(ValueError, match=rf"cfg: {key}=.* is invalid; expected {expected}"):
        TrainConfig.from_mapping({key: value}, source="cfg")


def test_from_mapping_converts_yaml_lists_and_round_trips_to_dict():
    cfg = TrainConfig.from_mapping(
        {"lr_milestones": [10, 20], "adam_betas": [0.9, 0.99], "model_options": {"a": 1}}
    )
    assert cfg.lr_milestones == (10, 20) and cfg.adam_betas == (0.9, 0.99)
    assert TrainConfig.from_mapping(cfg.to_dict()) == cfg


def test_evaluated_checkpoint_beyond_the_resolved_image_epochs_is_rejected():
    cfg = TrainConfig(evaluated_checkpoint="epoch15", image_epoch=None, preset="aggressive")
    assert resolve_schedule(cfg, get_arm("baseline"))["image_epoch"] == 20
    with pytest.raises(
        ValueError, match="evaluated_checkpoint='epoch15' is beyond image_epoch=10 for arm xattn_from_base"
    ):
        resolve_schedule(cfg, get_arm("xattn_from_base"))
    assert cfg.evaluated_epoch() == 15 and TrainConfig().evaluated_epoch() is None


def test_load_train_config_reads_yaml_and_overrides_win(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("text_epoch: 2\nvv_axis: token\npreset: aggressive\n")
    cfg = load_train_config(path, {"text_epoch": 4})
    assert (cfg.text_epoch, cfg.vv_axis, cfg.preset) == (4, "token", "aggressive")
    path.write_text("- 1\n")
    with pytest.raises(ValueError, match=r"train.yaml: expected a mapping of TrainConfig keys, got list"):
        load_train_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml: no such config file"):
        load_train_config(tmp_path / "missing.yaml")
