"""Logging setup for entry points: one handler, warnings captured, optional log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(path: str | os.PathLike | None = None, *, level: int = logging.INFO) -> None:
    """Install a root handler writing to ``path`` (and stderr when ``path`` is None); capture warnings.

    Called once by each CLI (with ``None``) and by each workflow script (with ``snakemake.log[0]``).
    With a path, stderr is also pointed at the log file so that tracebacks land there.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        sys.stderr = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives for the process
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
