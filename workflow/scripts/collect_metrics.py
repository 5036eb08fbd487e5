"""Rule collect_metrics: concatenate every evaluation table into results/stats/metrics_long.csv."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.logs import configure_logging
from aaclip_xattn.stats.collect import collect_metrics


def main(smk) -> None:
    """Build the long metrics table from the declared evaluation CSVs."""
    configure_logging(smk.log[0])
    collect_metrics([Path(p) for p in smk.input.tables], Path(smk.output.metrics))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
