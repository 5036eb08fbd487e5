"""Shared glue of the workflow scripts: turn the ``snakemake`` object into package calls."""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aaclip_xattn.fileio import write_csv

__all__ = [
    "BENCHMARK_KEYS",
    "build_synthetic_config",
    "collect_benchmarks",
    "run_seed_group_job",
    "run_train_job",
]

logger = logging.getLogger(__name__)

#: Wildcard columns that lead every row of results/stats/benchmarks.csv.
BENCHMARK_KEYS = ("rule", "train_dataset", "shot", "seed", "arm")


def build_synthetic_config(spec: Mapping[str, Any]):
    """Build a ``SyntheticConfig`` from a config `synthetic` mapping.

    ``preset`` names an entry of ``DEFAULT_SYNTHETIC_DATASETS``; the other keys override its fields.

    Args:
        spec: The dataset's `synthetic` section.

    Returns:
        The package's ``SyntheticConfig``.

    Raises:
        ValueError: Unknown preset (the valid ones are listed) or a bad field (from ``from_mapping``).
    """
    from aaclip_xattn.data import DEFAULT_SYNTHETIC_DATASETS, SyntheticConfig

    values = dict(spec)
    preset = values.pop("preset", None)
    if preset is None:
        return SyntheticConfig.from_mapping(values)
    if preset not in DEFAULT_SYNTHETIC_DATASETS:
        raise ValueError(
            f"datasets[].synthetic.preset: unknown preset {preset!r}; "
            f"valid presets: {', '.join(sorted(DEFAULT_SYNTHETIC_DATASETS))}"
        )
    base = DEFAULT_SYNTHETIC_DATASETS[preset]
    return SyntheticConfig.from_mapping({**dataclasses.asdict(base), **values})


def run_train_job(smk: Any, arm: str) -> None:
    """Train one arm of one (dataset, shot, seed) from a Snakemake job.

    Args:
        smk: The ``snakemake`` object of a ``train_<arm>`` rule.
        arm: The arm this rule trains.
    """
    from aaclip_xattn.devices import gpu_slot
    from aaclip_xattn.logs import configure_logging
    from aaclip_xattn.seeding import seed_everything

    configure_logging(smk.log[0])
    seed = int(smk.wildcards.seed)
    run_dir = Path(smk.output.record).parent
    base_dir = Path(smk.input.base_record).parent if "base_record" in smk.input.keys() else None
    with gpu_slot(smk.params.train["device"]):
        # Import after the slot is taken: CUDA_VISIBLE_DEVICES must be set before CUDA initialises.
        from aaclip_xattn.train import TrainConfig, run_training

        seed_everything(seed)
        cfg = TrainConfig.from_mapping({**smk.params.train, "seed": seed}, source="config.yaml: train")
        run_training(cfg, run_dir=run_dir, manifest_path=Path(smk.input.manifest), arm=arm, base_dir=base_dir)


def run_seed_group_job(smk: Any) -> None:
    """Train the seeds of one ``train_group_<arm>_<k>`` job together (``train_seed_group``).

    The seeds come from ``params.seeds``; every seed's run directory is the parent of its ``run.json``
    output, its manifest the matching ``manifests`` input and, for the from-base arms, its baseline
    directory the parent of the matching ``base_run`` input (all lists in the group's seed order).

    Args:
        smk: The ``snakemake`` object of a ``train_group_<arm>_<k>`` rule (``params.arm``,
            ``params.seeds``, ``params.train``).
    """
    from aaclip_xattn.devices import gpu_slot
    from aaclip_xattn.logs import configure_logging
    from aaclip_xattn.seeding import seed_everything

    configure_logging(smk.log[0])
    seeds = [int(seed) for seed in smk.params.seeds]
    records = list(smk.output.record)
    manifests = list(smk.input.manifests)
    bases = list(smk.input.base_run) if "base_run" in smk.input.keys() else [None] * len(seeds)
    if not len(seeds) == len(records) == len(manifests) == len(bases):
        raise ValueError(
            f"rule {smk.rule}: params.seeds ({len(seeds)}), output.record ({len(records)}), "
            f"input.manifests ({len(manifests)}) and input.base_run ({len(bases)}) must list one entry per seed"
        )
    members = [
        {
            "seed": seed,
            "run_dir": str(Path(record).parent),
            "manifest_path": manifest,
            "base_dir": None if base is None else str(Path(base).parent),
        }
        for seed, record, manifest, base in zip(seeds, records, manifests, bases, strict=True)
    ]
    with gpu_slot(smk.params.train["device"]):
        # Import after the slot is taken: CUDA_VISIBLE_DEVICES must be set before CUDA initialises.
        from aaclip_xattn.train import TrainConfig
        from aaclip_xattn.train.seed_batched import SeedMember, train_seed_group

        # The group's processes seed the global RNGs with their first seed (training itself draws only
        # from per-seed streams, so this affects nothing a seed's result depends on).
        seed_everything(seeds[0])
        cfg = TrainConfig.from_mapping({**smk.params.train, "seed": seeds[0]}, source="config.yaml: train")
        group = [SeedMember.from_mapping(m, source=f"rule {smk.rule}: seed member") for m in members]
        train_seed_group(cfg, group, arm=smk.params.arm)


def collect_benchmarks(records: Sequence[Mapping[str, Any]], out_csv: str | Path) -> Path:
    """Concatenate Snakemake benchmark TSVs into one CSV with the run's wildcard columns first.

    Args:
        records: One mapping per benchmark file: ``path`` plus the `BENCHMARK_KEYS` values.
        out_csv: Output CSV path.

    Returns:
        The written path.
    """
    rows: list[dict[str, Any]] = []
    measures: list[str] = []
    for record in records:
        with open(record["path"], newline="", encoding="utf-8") as handle:
            for measured in csv.DictReader(handle, delimiter="\t"):
                measures += [key for key in measured if key not in measures]
                rows.append({**{key: record[key] for key in BENCHMARK_KEYS}, **measured})
    logger.info("collected %d benchmark rows into %s", len(rows), out_csv)
    return write_csv(out_csv, rows, [*BENCHMARK_KEYS, *measures])
