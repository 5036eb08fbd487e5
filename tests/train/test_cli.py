"""train.py / train_cross_attention.py: flags, arm selection, errors, and the seed guide's command lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from aaclip_xattn.train.cli import build_parser, train_cross_attention_main, train_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """The entry points configure the root logger (their job); give it back to pytest afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _tiny(root: Path) -> list[str]:
    return [
        "--dataset_root",
        str(root),
        "--layout",
        "mvtec",
        "--backbone",
        "tiny",
        "--image_size",
        "64",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--quiet",
    ]


def _guide(save_path: Path, *flags: str) -> list[str]:
    """A seed-guide command line: MVTec, 2 shots, 1 + 1 epochs, ``flags``, saving to ``save_path``."""
    return [
        "--dataset",
        "MVTec",
        "--shot",
        "2",
        "--text_epoch",
        "1",
        "--image_epoch",
        "1",
        *flags,
        "--save_path",
        str(save_path),
    ]


@pytest.mark.parametrize("program", ["train", "xattn"])
def test_help_documents_every_flag(program, capsys):
    parser = build_parser(program)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    flags = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    assert len(flags) > 30
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    for flag in flags:
        assert flag in text
    for guide_flag in (
        "--dataset",
        "--training_mode",
        "--shot",
        "--text_epoch",
        "--image_epoch",
        "--text_batch_size",
        "--image_batch_size",
        "--save_path",
        "--load_base_text_adapter",
        "--load_base_image_adapter",
        "--text_lr",
        "--image_lr",
    ):
        assert guide_flag in flags


def test_xattn_without_base_or_scratch_asks_for_one(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cross_attention_main(["--save_path", "x", "--dataset_root", "y"])
    assert exc.value.code == 2
    assert (
        "give the base model (--load_base_text_adapter and --load_base_image_adapter"
        in capsys.readouterr().err
    )


def test_one_base_flag_alone_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--save_path", "x", "--dataset_root", "y", "--load_base_text_adapter", "t.pth"])
    assert exc.value.code == 2
    assert "--load_base_text_adapter needs --load_base_image_adapter too" in capsys.readouterr().err


def test_scratch_with_base_flags_is_an_error(capsys):
    argv = [
        "--save_path",
        "x",
        "--scratch",
        "--load_base_text_adapter",
        "t",
        "--load_base_image_adapter",
        "i",
    ]
    with pytest.raises(SystemExit):
        train_cross_attention_main(argv)
    assert "--scratch trains from fresh adapters; do not combine it" in capsys.readouterr().err


def test_missing_dataset_root_names_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--dataset", "MVTec", "--save_path", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset_root is required" in err and "make-synthetic" in err


def test_missing_base_checkpoint_is_one_line_exit_2(small_dataset_root, tmp_path, capsys):
    argv = [
        "--shot",
        "2",
        "--save_path",
        str(tmp_path / "x"),
        "--load_base_text_adapter",
        str(tmp_path / "nope.pth"),
        "--load_base_image_adapter",
        str(tmp_path / "nope.pth"),
        *_tiny(small_dataset_root),
    ]
    assert train_cross_attention_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pth: no such checkpoint file" in err[0]


def test_seed_guide_command_lines_run(small_dataset_root, tmp_path, capsys):
    """Steps 1, 2, 6 (both presets), 10 and the control, with the guide's flags and tiny epochs."""
    tiny = _tiny(small_dataset_root)
    ckpt = tmp_path / "ckpt"
    base = ckpt / "baseline_mvtec"
    load = [
        "--load_base_text_adapter",
        str(base / "text_adapter.pth"),
        "--load_base_image_adapter",
        str(base / "image_adapter.pth"),
    ]
    few_shot = ["--training_mode", "few_shot"]
    commands = [
        (train_main, _guide(base, *few_shot, "--text_batch_size", "4", "--image_batch_size", "2")),
        (
            train_cross_attention_main,
            _guide(ckpt / "cross_attn_mvtec", *few_shot, *load, "--text_batch_size", "4"),
        ),
        (
            train_cross_attention_main,
            _guide(ckpt / "from_base", *load, "--text_lr", "0.00001", "--image_lr", "0.0005"),
        ),
        (train_cross_attention_main, _guide(ckpt / "from_base_fast", *load, "--preset", "aggressive")),
        (train_cross_attention_main, _guide(ckpt / "scratch", "--scratch")),
        (train_main, _guide(ckpt / "continued", *load)),
    ]
    for main, argv in commands:
        assert main(argv + tiny) == 0, argv

    def run(name):
        return json.loads((tmp_path / "ckpt" / name / "run.json").read_text())

    assert run("baseline_mvtec")["arm"] == "baseline"
    assert run("cross_attn_mvtec")["arm"] == "xattn_from_base"
    assert run("scratch")["arm"] == "xattn_scratch"
    assert run("continued")["arm"] == "baseline_continued"
    fast = run("from_base_fast")["hyperparameters"]
    assert (fast["preset"], fast["text_epoch"], fast["text_lr"], fast["image_lr"]) == (
        "aggressive",
        1,
        5e-6,
        2.5e-4,
    )
    assert run("from_base")["hyperparameters"]["text_lr"] == 1e-5
    assert run("cross_attn_mvtec")["optimizer_state_loaded"] == {"text": True, "image": True}
    assert run("cross_attn_mvtec")["train_dataset"] == "MVTec" and run("cross_attn_mvtec")["shot"] == "2"
    assert (base / "split.json").is_file()
    out = capsys.readouterr().out
    assert "baseline: text 1 epochs" in out


def test_root_shims_call_the_entry_points():
    for name, func in (
        ("train.py", "train_main"),
        ("train_cross_attention.py", "train_cross_attention_main"),
    ):
        text = (ROOT / name).read_text()
        assert f"from aaclip_xattn.train.cli import {func}" in text and f"raise SystemExit({func}())" in text
