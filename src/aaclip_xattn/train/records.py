"""Training records: ``train_log.csv`` rows, the ``run.json`` evidence record and the resume identity."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from aaclip_xattn.fileio import read_csv, read_json, write_csv, write_json

__all__ = [
    "RUN_FORMAT",
    "RUN_RECORD_FIELDS",
    "TRAIN_LOG_COLUMNS",
    "collect_versions",
    "diff_identity",
    "read_run_record",
    "read_train_log",
    "write_run_record",
    "write_train_log",
]

logger = logging.getLogger(__name__)

RUN_FORMAT: Final = "aaclip_xattn.run/1"
#: Columns of ``train_log.csv``: stage (text | image), epoch (1-based), cumulative steps of the stage,
#: mean loss of the epoch, learning rate of its last step, wall time of the epoch in seconds.
TRAIN_LOG_COLUMNS: Final = ("stage", "epoch", "steps", "loss", "lr", "seconds")
#: Every field of ``run.json`` that the stats step reads (docs/architecture.md "Records read by the stats step").
RUN_RECORD_FIELDS: Final = (
    "format",
    "arm",
    "seed",
    "train_dataset",
    "shot",
    "training_mode",
    "status",
    "hyperparameters",
    "epochs_completed",
    "steps_completed",
    "manifest",
    "loaded_checkpoints",
    "loaded_fingerprints",
    "optimizer_state_loaded",
    "initial_fingerprints",
    "verification",
    "final_checkpoints",
    "final_fingerprints",
    "epoch_losses",
    "skipped_keys",
    "versions",
    "device",
    "wall_time_s",
)


def collect_versions() -> dict[str, str]:
    """Return the package, torch and open_clip versions."""
    import open_clip
    import torch

    from aaclip_xattn import __version__

    return {
        "aaclip_xattn": __version__,
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
    }


def write_train_log(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``train_log.csv`` atomically with :data:`TRAIN_LOG_COLUMNS`."""
    return write_csv(path, rows, TRAIN_LOG_COLUMNS)


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``train_log.csv`` back with typed values."""
    out = []
    for row in read_csv(path):
        out.append(
            {
                "stage": row["stage"],
                "epoch": int(row["epoch"]),
                "steps": int(row["steps"]),
                "loss": float(row["loss"]),
                "lr": float(row["lr"]),
                "seconds": float(row["seconds"]),
            }
        )
    return out


def write_run_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``run.json`` atomically after checking that every required field is present.

    Raises:
        ValueError: A field of :data:`RUN_RECORD_FIELDS` is missing (programmer error, named).
    """
    missing = [key for key in RUN_RECORD_FIELDS if key not in record]
    if missing:
        raise ValueError(f"{path}: run record lacks the field(s) {missing}")
    return write_json(path, dict(record))


def read_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``run.json`` and check its format tag and fields.

    Raises:
        FileNotFoundError: No such file.
        RuntimeError: Another format, or required fields missing (named).
    """
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RuntimeError(f"{path}: not a run record (format {found!r}, expected {RUN_FORMAT!r})")
    missing = [key for key in RUN_RECORD_FIELDS if key not in record]
    if missing:
        raise RuntimeError(f"{path}: run record lacks the field(s) {missing}")
    return record


def diff_identity(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Return the dotted key paths whose values differ between two nested mappings (sorted)."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_identity(a, b, prefix=f"{path}."))
        elif _normalise(a) != _normalise(b):
            out.append(path)
    return out


_MISSING: Final = object()


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value
