"""Command line ``python -m aaclip_xattn.stats RESULTS_DIR``: collect → compare → checklist → report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aaclip_xattn.fileio import write_json
from aaclip_xattn.logs import configure_logging
from aaclip_xattn.stats.collect import collect_metrics
from aaclip_xattn.stats.compare import run_comparisons
from aaclip_xattn.stats.config import StatsConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m aaclip_xattn.stats``."""
    parser = argparse.ArgumentParser(
        prog="python -m aaclip_xattn.stats",
        description="Re-run the statistical analysis, the fair-comparison checklist and the report from a "
        "results directory (reads results/eval, results/runs, results/splits; writes results/stats and "
        "results/report).",
    )
    parser.add_argument("results_dir", type=Path, help="the workflow's results directory (holds eval/)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML/JSON file with the stats settings (the stats section itself or a whole config with a "
        "top-level 'stats' key); defaults otherwise",
    )
    parser.add_argument(
        "--recollect",
        action="store_true",
        help="rebuild stats/metrics_long.csv from the evaluation CSVs even if it exists",
    )
    parser.add_argument(
        "--stats-only",
        action="store_true",
        help="stop after the comparison tables (skip the checklist and the report)",
    )
    return parser


def _lazy(module: str, name: str):
    """Import ``module.name`` only when needed (matplotlib and friends stay out of the stats-only path)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"{module}.{name} is not available ({exc}); rerun with --stats-only") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the analysis; return the exit status (0 on success, 2 on a bad argument or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(None)
    results_dir: Path = args.results_dir
    if not results_dir.is_dir():
        parser.error(f"RESULTS_DIR {results_dir}: no such directory")
    try:
        cfg = StatsConfig.from_file(args.config) if args.config is not None else StatsConfig()
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--config: {exc}")
    stats_dir = results_dir / "stats"
    long_csv = stats_dir / "metrics_long.csv"
    try:
        if args.recollect or not long_csv.is_file():
            collect_metrics(results_dir, long_csv)
        paths = run_comparisons(long_csv, stats_dir, cfg)
        if not args.stats_only:
            run_checklist = _lazy("aaclip_xattn.stats.checklist", "run_checklist")
            items = run_checklist(results_dir, cfg)
            paths["checklist"] = write_json(stats_dir / "checklist.json", items)
            render_report = _lazy("aaclip_xattn.stats.report", "render_report")
            paths.update(render_report(results_dir, results_dir / "report", cfg))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
