"""Rule report: render results/report/ (index.html, report.md, figures/)."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.logs import configure_logging
from aaclip_xattn.stats.config import StatsConfig
from aaclip_xattn.stats.report import render_report


def main(smk) -> None:
    """Render the checklist, verdicts, tables and figures."""
    configure_logging(smk.log[0])
    cfg = StatsConfig.from_mapping(smk.params.stats, source="config.yaml: stats")
    # results/stats/checklist.json -> results
    results_dir = Path(smk.input.checklist).parents[1]
    render_report(results_dir, Path(smk.output.html).parent, cfg)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
