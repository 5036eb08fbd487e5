"""Rule check_dataset: read a real dataset in place (every file checked) and write its summary table."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from aaclip_xattn.data import read_dataset, summarize
from aaclip_xattn.fileio import write_csv
from aaclip_xattn.logs import configure_logging


def main(smk) -> None:
    """Scan the dataset's test split and write the per-category counts."""
    configure_logging(smk.log[0])
    spec = smk.params.dataset
    rows = summarize(read_dataset(spec["root"], spec["layout"], split="test"))
    write_csv(smk.output.summary, rows, list(rows[0]))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
