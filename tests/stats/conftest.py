"""Fixtures of the stats tests: a realistic fake results tree (evaluation CSVs and sidecars per run).

``build_fake_results`` writes ``<root>/eval/<train_dataset>/shot<k>/seed<s>/<arm>/<test_dataset>.csv``
(+ ``.json`` sidecar) with known values, so tests can recompute every statistic from the truth. The
``fake_results_factory`` fixture exposes it to any test under ``tests/stats`` (the checklist and report
tests may use it too).
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from aaclip_xattn.fileio import write_json
from aaclip_xattn.stats.config import METRICS

ARMS = ("baseline", "xattn_from_base", "xattn_scratch", "baseline_continued")
DEFAULT_TEST_DATASETS = {
    "synth_a": ("bottle", "cable", "grid", "screw", "tile"),
    "synth_b": ("candle", "pcb", "fryum", "macaroni"),
}
DEFAULT_EFFECTS = {
    "baseline": 0.0,
    "xattn_from_base": 0.03,
    "xattn_scratch": 0.0,
    "baseline_continued": 0.005,
}
PIXEL_METRICS = tuple(m for m in METRICS if m.startswith("pixel_"))


@dataclass
class FakeResults:
    """What ``build_fake_results`` wrote.

    Attributes:
        root: The results directory (holds ``eval/``).
        csvs: Every evaluation CSV written, sorted.
        values: Truth: ``(train_dataset, shot, seed, arm, test_dataset, category, metric) -> value``.
    """

    root: Path
    csvs: list[Path] = field(default_factory=list)
    values: dict[tuple, float] = field(default_factory=dict)


def build_fake_results(
    root: Path,
    *,
    train_datasets: Sequence[str] = ("synth_a",),
    shots: Sequence[str] = ("4",),
    seeds: Sequence[int] = (0, 1, 2),
    arms: Sequence[str] = ARMS,
    test_datasets: Mapping[str, Sequence[str]] = DEFAULT_TEST_DATASETS,
    effects: Mapping[str, float] = DEFAULT_EFFECTS,
    shared_noise: float = 0.01,
    arm_noise: float = 0.005,
    nan_categories: Sequence[str] = (),
    ceiling_categories: Sequence[str] = (),
    skip: Sequence[tuple[str, int]] = (),
    rng_seed: int = 0,
) -> FakeResults:
    """Write a fake evaluation tree with known values.

    Each metric of (category) starts from a base in [0.6, 0.9]; each seed adds noise shared by all arms
    (pairing) plus a smaller arm-specific noise; each arm adds its ``effects`` shift. Values are clipped
    to [0, 1] and rounded to 6 decimals (as real metrics have finitely many digits).

    Args:
        root: Results directory to write into.
        train_datasets: Training datasets.
        shots: ``"<k>"`` or ``"full"`` values.
        seeds: Training seeds.
        arms: Arms to write.
        test_datasets: Test dataset → its categories (every run is evaluated on all of them).
        effects: Arm → shift added to every metric (fraction, e.g. 0.03 = 3 pp).
        shared_noise: SD of the seed noise shared across arms.
        arm_noise: SD of the arm-specific noise.
        nan_categories: Categories whose pixel metrics are NaN (no anomalous pixels).
        ceiling_categories: Categories where every arm scores 1.0 on every metric.
        skip: ``(arm, seed)`` runs not to write (missing runs).
        rng_seed: Seed of the fake values.

    Returns:
        The written tree and its truth.
    """
    rng = np.random.default_rng(rng_seed)
    out = FakeResults(root=Path(root))
    for train_dataset in train_datasets:
        for shot in shots:
            shot_dir = "full" if shot == "full" else f"shot{shot}"
            base = {
                (td, cat, m): rng.uniform(0.6, 0.9)
                for td, cats in test_datasets.items()
                for cat in cats
                for m in METRICS
            }
            for seed in seeds:
                shared = {key: rng.normal(0.0, shared_noise) for key in base}
                for arm in arms:
                    own = {key: rng.normal(0.0, arm_noise) for key in base}
                    if (arm, seed) in skip:
                        continue
                    run_dir = out.root / "eval" / train_dataset / shot_dir / f"seed{seed}" / arm
                    for td, cats in test_datasets.items():
                        rows = []
                        for cat in cats:
                            row = {"category": cat, "n_images": 20, "n_normal": 12, "n_anomalous": 8}
                            for m in METRICS:
                                if cat in ceiling_categories:
                                    value = 1.0
                                elif cat in nan_categories and m in PIXEL_METRICS:
                                    value = math.nan
                                else:
                                    raw = base[(td, cat, m)] + effects.get(arm, 0.0) + shared[(td, cat, m)]
                                    value = round(float(np.clip(raw + own[(td, cat, m)], 0.0, 1.0)), 6)
                                row[m] = value
                                out.values[(train_dataset, shot, seed, arm, td, cat, m)] = value
                            rows.append(row)
                        mean_row = {
                            "category": "mean",
                            "n_images": 20 * len(cats),
                            "n_normal": 12 * len(cats),
                            "n_anomalous": 8 * len(cats),
                        }
                        for m in METRICS:
                            mean_row[m] = (
                                float(np.nanmean([r[m] for r in rows]))
                                if any(not math.isnan(r[m]) for r in rows)
                                else math.nan
                            )
                        path = run_dir / f"{td}.csv"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with path.open("w", newline="", encoding="utf-8") as handle:
                            writer = csv.DictWriter(
                                handle,
                                fieldnames=["category", "n_images", "n_normal", "n_anomalous", *METRICS],
                            )
                            writer.writeheader()
                            for r in [*rows, mean_row]:
                                writer.writerow(
                                    {k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()}
                                )
                        write_json(
                            run_dir / f"{td}.json",
                            {
                                "conventions": {
                                    "map_resolution": 128,
                                    "blur": True,
                                    "aupro_mode": "exact",
                                    "aupro_fpr_limit": 0.3,
                                    "fusion": "transductive",
                                    "mask_rule": "nonzero",
                                    "descriptions_sha256": "0" * 64,
                                },
                                "test_list_sha256": hashlib.sha256(td.encode()).hexdigest(),
                                "checkpoint": {
                                    "path": f"runs/{train_dataset}/{shot_dir}/seed{seed}/{arm}",
                                    "sha256": "0" * 64,
                                    "epoch": 20,
                                },
                                "run": {"arm": arm, "seed": seed, "dataset": train_dataset, "shot": shot},
                            },
                        )
                        out.csvs.append(path)
    out.csvs.sort()
    return out


@pytest.fixture
def fake_results_factory(tmp_path: Path) -> Callable[..., FakeResults]:
    """Return ``build_fake_results`` writing under a fresh ``tmp_path`` subdirectory per call."""
    counter = iter(range(1000))

    def _factory(**kwargs) -> FakeResults:
        return build_fake_results(tmp_path / f"results{next(counter)}", **kwargs)

    return _factory


@pytest.fixture
def fake_results(fake_results_factory) -> FakeResults:
    """The default fake tree: one training run setting, 3 seeds, 4 arms, 9 categories over 2 test datasets."""
    return fake_results_factory()


@pytest.fixture(scope="session")
def shared_fake_results(tmp_path_factory) -> FakeResults:
    """The default fake tree, built once per session; tests must not modify it."""
    return build_fake_results(tmp_path_factory.mktemp("shared_results"))
