"""Shared fixtures of the training tests: a tiny synthetic dataset, its manifest, a tiny config, a baseline run."""

from __future__ import annotations

from pathlib import Path

import pytest

TRAIN_CATEGORIES = ("brick", "grass")
IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def train_dataset_root(tmp_path_factory) -> Path:
    """A 2-category MVTec-format dataset at 64 px with 4 normal + 4 anomalous test images per category."""
    from aaclip_xattn.data import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("train_data") / "synth_small"
    cfg = SyntheticConfig(
        categories=TRAIN_CATEGORIES,
        image_size=IMAGE_SIZE,
        n_train_good=0,
        n_test_good=4,
        n_test_anomalous=4,
        seed=0,
    )
    return Path(make_synthetic_dataset(root, cfg))


@pytest.fixture(scope="session")
def train_manifest(train_dataset_root, tmp_path_factory) -> Path:
    """A 4-shot manifest (2 normal + 2 anomalous per category: 8 images)."""
    from aaclip_xattn.data import make_fewshot_manifest, read_dataset, write_manifest

    samples = read_dataset(train_dataset_root, "mvtec", split="test")
    manifest = make_fewshot_manifest(
        samples,
        dataset="synth_small",
        shot=4,
        seed=0,
        training_mode="few_shot",
        root=train_dataset_root,
        layout="mvtec",
    )
    return write_manifest(tmp_path_factory.mktemp("splits") / "seed0.json", manifest)


@pytest.fixture(scope="session")
def tiny_cfg():
    """Tiny backbone at 64 px, 1 + 1 epochs, batch 4 / 2, CPU: 2 text steps and 4 image steps per epoch."""
    from aaclip_xattn.train import TrainConfig

    return TrainConfig(
        backbone="tiny",
        image_size=IMAGE_SIZE,
        text_epoch=1,
        image_epoch=1,
        text_batch_size=4,
        image_batch_size=2,
        device="cpu",
        seed=0,
    )


@pytest.fixture(scope="session")
def baseline_run(tiny_cfg, train_manifest, tmp_path_factory) -> tuple[Path, dict]:
    """One baseline run (shared by the from-base tests): its directory and run record."""
    from aaclip_xattn.train import run_training

    run_dir = tmp_path_factory.mktemp("runs") / "baseline"
    record = run_training(tiny_cfg, run_dir=run_dir, manifest_path=train_manifest, arm="baseline")
    return run_dir, record
