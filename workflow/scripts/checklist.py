"""Rule checklist: verify the fair-comparison checklist from the run records."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.fileio import read_json
from aaclip_xattn.logs import configure_logging
from aaclip_xattn.stats.checklist import run_checklist
from aaclip_xattn.stats.config import StatsConfig


def main(smk) -> None:
    """Write results/stats/checklist.json against the launch manifest of planned runs."""
    configure_logging(smk.log[0])
    cfg = StatsConfig.from_mapping(smk.params.stats, source="config.yaml: stats")
    # results/stats/expected_runs.json -> results
    results_dir = Path(smk.input.expected).parents[1]
    run_checklist(results_dir, cfg, expected=read_json(smk.input.expected))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
