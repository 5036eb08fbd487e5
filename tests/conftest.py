"""Shared fixtures: tiny AA-CLIP models (the embedded ``tiny`` backbone, seeded adapters), a tiny synthetic
dataset at 64 px and its per-seed few-shot manifests (used by the training and perf tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMALL_CATEGORIES = ("brick", "grass")
SMALL_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., Any]:
    """Return ``make(kind="baseline", seed=0, **options)`` building a fresh tiny model in eval mode.

    The backbone is the deterministic random ``tiny`` build, so two models share identical backbone
    weights; adapters are drawn from ``make_generator(seed, "init")``.
    """
    from aaclip_xattn.factory import create_model
    from aaclip_xattn.seeding import make_generator

    def make(kind: str = "baseline", seed: int = 0, **options: Any):
        return create_model(kind, "tiny", generator=make_generator(seed, "init"), **options).eval()

    return make


@pytest.fixture(scope="session")
def small_dataset_root(tmp_path_factory) -> Path:
    """A 2-category MVTec-format dataset at 64 px with 4 normal + 4 anomalous test images per category."""
    from aaclip_xattn.data import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("small_data") / "synth_small"
    cfg = SyntheticConfig(
        categories=SMALL_CATEGORIES,
        image_size=SMALL_IMAGE_SIZE,
        n_train_good=0,
        n_test_good=4,
        n_test_anomalous=4,
        seed=0,
    )
    return Path(make_synthetic_dataset(root, cfg))


@pytest.fixture(scope="session")
def small_manifest_factory(small_dataset_root, tmp_path_factory) -> Callable[..., Path]:
    """Return ``make(seed, shot=4) -> Path``: the seed's few-shot manifest of ``small_dataset_root``.

    Cached per seed and shot; 4 shots are 2 normal + 2 anomalous images per category (8 images).
    """
    from aaclip_xattn.data import make_fewshot_manifest, read_dataset, write_manifest

    samples = read_dataset(small_dataset_root, "mvtec", split="test")
    out = tmp_path_factory.mktemp("splits")
    made: dict[tuple[int, int], Path] = {}

    def make(seed: int, shot: int = 4) -> Path:
        if (seed, shot) not in made:
            manifest = make_fewshot_manifest(
                samples,
                dataset="synth_small",
                shot=shot,
                seed=seed,
                training_mode="few_shot",
                root=small_dataset_root,
                layout="mvtec",
            )
            made[(seed, shot)] = write_manifest(out / f"shot{shot}_seed{seed}.json", manifest)
        return made[(seed, shot)]

    return make
