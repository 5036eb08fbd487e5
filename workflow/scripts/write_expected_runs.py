"""Rule write_expected_runs: write the launch manifest (every planned run) for the checklist."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from aaclip_xattn.fileio import write_json
from aaclip_xattn.logs import configure_logging


def main(smk) -> None:
    """Write the planned runs, as listed by the config, to results/stats/expected_runs.json."""
    configure_logging(smk.log[0])
    write_json(smk.output.expected, list(smk.params.expected))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
