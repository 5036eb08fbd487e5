"""Shared fixtures of the training tests: the seed-0 manifest, a tiny config, a baseline run.

The tiny synthetic dataset and its manifests come from ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def train_manifest(small_manifest_factory) -> Path:
    """A 4-shot manifest of seed 0 (2 normal + 2 anomalous per category: 8 images)."""
    return small_manifest_factory(0)


@pytest.fixture(scope="session")
def stage_setup_factory(train_manifest):
    """Return ``make(kind, stage=, augment=) -> (model, dataset, classes)`` for the stage tests.

    The model is the default backbone at 64 px with adapters from ``make_generator(0, "init")``; the
    dataset is the preloaded stage-``stage`` ``AnomalyDataset`` of ``train_manifest`` (seed 0).
    """
    from aaclip_xattn import create_model
    from aaclip_xattn.data import AnomalyDataset, read_manifest
    from aaclip_xattn.seeding import make_generator

    manifest = read_manifest(train_manifest)

    def make(kind: str, *, stage: int, augment: bool):
        model = create_model(kind, image_size=IMAGE_SIZE, generator=make_generator(0, "init"))
        dataset = AnomalyDataset(manifest.samples, model.image_size, stage=stage, augment=augment, seed=0)
        dataset.preload()
        return model, dataset, list(manifest.categories)

    return make


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
