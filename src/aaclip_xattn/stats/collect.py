"""Build the long metrics table ``metrics_long.csv`` from the per-run evaluation CSVs."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aaclip_xattn.fileio import write_csv
from aaclip_xattn.stats.config import METRICS

__all__ = [
    "EVAL_ID_COLUMNS",
    "LONG_COLUMNS",
    "MetricRecord",
    "collect_metrics",
    "find_eval_csvs",
    "parse_eval_path",
    "read_metrics_long",
]

logger = logging.getLogger(__name__)

#: Leading columns of an evaluation CSV; the seven metrics of ``METRICS`` follow.
EVAL_ID_COLUMNS: Final[tuple[str, ...]] = ("category", "n_images", "n_normal", "n_anomalous")

#: Columns of ``metrics_long.csv`` (DESIGN.md, "Tables the stats step writes").
LONG_COLUMNS: Final[tuple[str, ...]] = (
    "train_dataset",
    "shot",
    "seed",
    "arm",
    "test_dataset",
    "category",
    "metric",
    "value",
)

_MEAN_ROW: Final = "mean"
_SHOT_DIR = re.compile(r"^(?:shot(\d+)|full)$")
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass(frozen=True)
class MetricRecord:
    """One number of the long table.

    Attributes:
        train_dataset: Dataset the run was trained on.
        shot: ``"<k>"`` for few-shot or ``"full"``.
        seed: Training seed.
        arm: Arm name (``baseline``, ``xattn_from_base``, ...).
        test_dataset: Dataset the run was evaluated on.
        category: Category of the test dataset.
        metric: Metric name (one of ``METRICS``).
        value: The metric as a fraction in [0, 1]; NaN when undefined.
    """

    train_dataset: str
    shot: str
    seed: int
    arm: str
    test_dataset: str
    category: str
    metric: str
    value: float


def parse_eval_path(path: str | os.PathLike) -> dict[str, str | int]:
    """Read the run keys from ``.../<train_dataset>/<shot_dir>/seed<s>/<arm>/<test_dataset>.csv``.

    Args:
        path: An evaluation CSV path laid out as DESIGN.md fixes (``shot_dir`` is ``shot<k>`` or ``full``).

    Returns:
        ``{"train_dataset", "shot" ("<k>" or "full"), "seed" (int), "arm", "test_dataset"}``.

    Raises:
        ValueError: If the path does not follow the layout.
    """
    path = Path(path)
    parts = path.parts
    expected = "results/eval/<train_dataset>/shot<k>|full/seed<s>/<arm>/<test_dataset>.csv"
    if path.suffix != ".csv" or len(parts) < 5:
        raise ValueError(f"{path}: not an evaluation CSV path; expected {expected}")
    train_dataset, shot_dir, seed_dir, arm = parts[-5:-1]
    shot_match = _SHOT_DIR.match(shot_dir)
    seed_match = _SEED_DIR.match(seed_dir)
    if shot_match is None:
        raise ValueError(
            f"{path}: shot directory {shot_dir!r} is neither shot<k> nor full; expected {expected}"
        )
    if seed_match is None:
        raise ValueError(f"{path}: seed directory {seed_dir!r} is not seed<s>; expected {expected}")
    return {
        "train_dataset": train_dataset,
        "shot": shot_match.group(1) or "full",
        "seed": int(seed_match.group(1)),
        "arm": arm,
        "test_dataset": path.stem,
    }


def find_eval_csvs(results_dir: str | os.PathLike) -> list[Path]:
    """Return every evaluation CSV under ``results_dir/eval`` in sorted order.

    Raises:
        FileNotFoundError: If ``results_dir/eval`` does not exist or holds no evaluation CSV.
    """
    eval_dir = Path(results_dir) / "eval"
    if not eval_dir.is_dir():
        raise FileNotFoundError(
            f"{eval_dir}: no such directory (expected the evaluation results of the study)"
        )
    paths = sorted(eval_dir.glob("*/*/seed*/*/*.csv"))
    if not paths:
        raise FileNotFoundError(
            f"{eval_dir}: no evaluation CSV found (expected <train_dataset>/shot<k>/seed<s>/<arm>/<test_dataset>.csv)"
        )
    return paths


def _parse_value(text: str, path: Path, line: int, column: str) -> float:
    text = text.strip()
    if text.lower() in {"", "nan"}:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{path}: line {line}, column {column!r}: expected a number or nan, found {text!r}"
        ) from None


def _read_eval_csv(path: Path) -> list[MetricRecord]:
    keys = parse_eval_path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        missing = [c for c in (*EVAL_ID_COLUMNS, *METRICS) if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join((*EVAL_ID_COLUMNS, *METRICS))}"
            )
        extra = [c for c in header if c not in EVAL_ID_COLUMNS and c not in METRICS]
        if extra:
            logger.warning("%s: ignoring unknown column(s) %s", path, ", ".join(extra))
        records = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            category = (row["category"] or "").strip()
            if not category:
                raise ValueError(f"{path}: line {line}: empty category")
            if category == _MEAN_ROW:
                continue
            if category in seen:
                raise ValueError(f"{path}: line {line}: category {category!r} appears twice")
            seen.add(category)
            for metric in METRICS:
                value = _parse_value(row[metric] or "", path, line, metric)
                records.append(MetricRecord(category=category, metric=metric, value=value, **keys))
    if not seen:
        raise ValueError(f"{path}: no category rows (expected one row per category, then a mean row)")
    return records


def collect_metrics(
    source: str | os.PathLike | Sequence[str | os.PathLike], out_csv: str | os.PathLike
) -> Path:
    """Concatenate evaluation CSVs into the long table ``metrics_long.csv``.

    The per-dataset ``mean`` rows are dropped (they are derived). Values keep full precision; NaN is
    written as ``nan``.

    Args:
        source: A results directory (its ``eval/`` tree is scanned) or a list of evaluation CSV paths.
        out_csv: Where to write the table (atomically).

    Returns:
        ``out_csv`` as a Path.

    Raises:
        FileNotFoundError: If the results directory has no evaluation CSVs or a listed CSV is missing.
        ValueError: If a path or table does not follow the layout, or a number appears twice.
    """
    if isinstance(source, str | os.PathLike):
        paths = find_eval_csvs(source)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise ValueError("collect_metrics: the list of evaluation CSVs is empty")
    records: list[MetricRecord] = []
    owners: dict[tuple, Path] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected an evaluation CSV)")
        run_key = tuple(parse_eval_path(path).values())
        if run_key in owners:
            raise ValueError(f"{path}: the same run and test dataset as {owners[run_key]}")
        owners[run_key] = path
        records.extend(_read_eval_csv(path))
    # A stable sort keeps each file's category order and the metric order of METRICS.
    records.sort(key=lambda r: (r.train_dataset, _shot_key(r.shot), r.seed, r.arm, r.test_dataset))
    rows = [
        {
            "train_dataset": r.train_dataset,
            "shot": r.shot,
            "seed": r.seed,
            "arm": r.arm,
            "test_dataset": r.test_dataset,
            "category": r.category,
            "metric": r.metric,
            "value": float(r.value),
        }
        for r in records
    ]
    out = write_csv(out_csv, rows, LONG_COLUMNS)
    logger.info("wrote %s (%d values from %d evaluation CSVs)", out, len(rows), len(paths))
    return out


def _shot_key(shot: str) -> tuple[int, int]:
    return (1, 0) if shot == "full" else (0, int(shot))


def read_metrics_long(path: str | os.PathLike) -> list[MetricRecord]:
    """Read ``metrics_long.csv`` back into records.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a column is missing, a metric is unknown or a value is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected metrics_long.csv from collect_metrics)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LONG_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(LONG_COLUMNS)}"
            )
        records = []
        for line, row in enumerate(reader, start=2):
            if row["metric"] not in METRICS:
                raise ValueError(
                    f"{path}: line {line}: unknown metric {row['metric']!r}; expected one of {', '.join(METRICS)}"
                )
            try:
                seed = int(row["seed"])
            except ValueError:
                raise ValueError(f"{path}: line {line}: seed {row['seed']!r} is not an integer") from None
            records.append(
                MetricRecord(
                    train_dataset=row["train_dataset"],
                    shot=row["shot"],
                    seed=seed,
                    arm=row["arm"],
                    test_dataset=row["test_dataset"],
                    category=row["category"],
                    metric=row["metric"],
                    value=_parse_value(row["value"], path, line, "value"),
                )
            )
    return records
