"""Helpers of the workflow tests: copy the workflow, run Snakemake, parse its dry-run output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_PARTS = ["Snakefile", "workflow", "config", "profiles", "envs"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ARMS = ["baseline", "xattn_from_base", "xattn_scratch", "baseline_continued"]
TRAIN_RULES = [f"train_{arm}" for arm in ARMS]
AGGREGATES = [
    "write_expected_runs",
    "collect_metrics",
    "collect_benchmarks",
    "stats",
    "checklist",
    "report",
    "all",
]


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not results/ or .snakemake/) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def job_resources(output: str, rule: str) -> list[str]:
    """Return the `resources:` line of every planned job of ``rule``."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", output)
    return [
        re.search(r"resources: (.*)", block).group(1)
        for block in blocks
        if re.match(rf"(?:local)?rule {rule}:", block)
    ]
