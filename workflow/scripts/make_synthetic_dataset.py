"""Rule make_synthetic_dataset: generate one synthetic dataset (MVTec layout) and its summary table."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.data import make_synthetic_dataset, read_dataset, summarize
from aaclip_xattn.fileio import write_csv
from aaclip_xattn.logs import configure_logging
from common import build_synthetic_config


def main(smk) -> None:
    """Generate the dataset, then write the per-category counts of its test split."""
    configure_logging(smk.log[0])
    root = make_synthetic_dataset(Path(smk.output.root), build_synthetic_config(smk.params.synthetic))
    rows = summarize(read_dataset(root, smk.params.dataset["layout"], split="test"))
    write_csv(smk.output.summary, rows, list(rows[0]))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
