"""Rule collect_benchmarks: gather the training/evaluation benchmark TSVs into one CSV."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from aaclip_xattn.logs import configure_logging
from common import collect_benchmarks


def main(smk) -> None:
    """Write results/stats/benchmarks.csv with the runs' wildcard columns first."""
    configure_logging(smk.log[0])
    collect_benchmarks(smk.params.records, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
