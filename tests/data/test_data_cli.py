"""``python -m aaclip_xattn.data``: make-synthetic, summarize, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from aaclip_xattn.data import __main__ as cli


@pytest.fixture(autouse=True)
def _keep_pytest_logging(monkeypatch):
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


def test_make_synthetic_then_summarize(tmp_path, capsys):
    out = tmp_path / "mine"
    argv = ["make-synthetic", str(out), "--categories", "brick", "paper", "--image-size", "32", "--seed", "4"]
    argv += [
        "--n-train-good",
        "2",
        "--n-test-good",
        "3",
        "--n-test-anomalous",
        "2",
        "--defect-types",
        "hole",
        "stain",
    ]
    assert cli.main(argv) == 0
    config = json.loads((out / "dataset.json").read_text())["config"]
    assert config == {
        "categories": ["brick", "paper"],
        "defect_types": ["hole", "stain"],
        "image_size": 32,
        "n_test_anomalous": 2,
        "n_test_good": 3,
        "n_train_good": 2,
        "seed": 4,
    }
    capsys.readouterr()
    assert cli.main(["summarize", str(out), "--layout", "mvtec"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["category", "split", "defect_type", "n_normal", "n_anomalous", "with_mask"]
    assert lines[2].split() == ["brick", "test", "good", "3", "0", "0"]
    assert lines[3].split() == ["brick", "test", "hole", "0", "1", "1"]
    assert lines[-1].split() == ["total", "2", "categories", "6", "4", "4"]
    assert cli.main(["summarize", str(out), "--layout", "mvtec", "--split", "all"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["brick", "train", "good", "2", "0", "0"] in rows
    assert rows[-1] == ["total", "2", "categories", "10", "4", "4"]


def test_preset_with_override(tmp_path):
    out = tmp_path / "p"
    assert cli.main(["make-synthetic", str(out), "--preset", "synth_train", "--image-size", "32", "--n-test-good", "1",
                     "--n-test-anomalous", "1", "--n-train-good", "0"]) == 0  # fmt: skip
    config = json.loads((out / "dataset.json").read_text())["config"]
    assert config["categories"] == ["brick", "grass", "wood", "fabric"] and config["image_size"] == 32


def test_summarize_default_datasets_prints_the_table(default_synthetic_root, capsys):
    assert cli.main(["summarize", str(default_synthetic_root / "synth_test"), "--layout", "mvtec"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 8 * 5 + 2
    assert lines[-1].split() == ["total", "8", "categories", "128", "128", "128"]


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert cli.main(["summarize", str(tmp_path / "none"), "--layout", "visa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "none: dataset root does not exist" in err
    assert cli.main(["make-synthetic", str(tmp_path / "x"), "--categories", "marble"]) == 2
    assert "unknown synthetic category 'marble'" in capsys.readouterr().err
    assert cli.main(["make-synthetic", str(tmp_path / "x")]) == 2
    assert "give --preset or --categories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["summarize", str(tmp_path), "--layout", "kitti"])
    assert excinfo.value.code == 2
    assert "invalid choice: 'kitti'" in capsys.readouterr().err
