"""Fixtures of the perf tests: a tiny synthetic dataset and per-seed few-shot manifests (64 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

PERF_CATEGORIES = ("brick", "grass")
PERF_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def perf_dataset_root(tmp_path_factory) -> Path:
    """A 2-category MVTec-format dataset at 64 px with 4 normal + 4 anomalous test images per category."""
    from aaclip_xattn.data import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("perf_data") / "synth_perf"
    cfg = SyntheticConfig(
        categories=PERF_CATEGORIES,
        image_size=PERF_IMAGE_SIZE,
        n_train_good=0,
        n_test_good=4,
        n_test_anomalous=4,
        seed=0,
    )
    return Path(make_synthetic_dataset(root, cfg))


@pytest.fixture(scope="session")
def perf_manifest_factory(perf_dataset_root, tmp_path_factory):
    """Return ``make(seed, shot=4) -> Path``: the seed's few-shot manifest (cached per seed and shot)."""
    from aaclip_xattn.data import make_fewshot_manifest, read_dataset, write_manifest

    samples = read_dataset(perf_dataset_root, "mvtec", split="test")
    out = tmp_path_factory.mktemp("perf_splits")
    made: dict[tuple[int, int], Path] = {}

    def make(seed: int, shot: int = 4) -> Path:
        if (seed, shot) not in made:
            manifest = make_fewshot_manifest(
                samples,
                dataset="synth_perf",
                shot=shot,
                seed=seed,
                training_mode="few_shot",
                root=perf_dataset_root,
                layout="mvtec",
            )
            made[(seed, shot)] = write_manifest(out / f"shot{shot}_seed{seed}.json", manifest)
        return made[(seed, shot)]

    return make
