"""Rule train_xattn_from_base: train the `xattn_from_base` arm of one (dataset, shot, seed)."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from common import run_train_job


def main(smk) -> None:
    """Train the run whose files the rule declares."""
    run_train_job(smk, arm="xattn_from_base")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
