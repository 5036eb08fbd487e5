"""Rule stats: paired comparisons of the arms on the long metrics table."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.logs import configure_logging
from aaclip_xattn.stats.compare import run_comparisons
from aaclip_xattn.stats.config import StatsConfig


def main(smk) -> None:
    """Write comparisons.csv (and its companion tables) next to the declared output."""
    configure_logging(smk.log[0])
    cfg = StatsConfig.from_mapping(smk.params.stats, source="config.yaml: stats")
    run_comparisons(Path(smk.input.metrics), Path(smk.output.comparisons).parent, cfg)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
