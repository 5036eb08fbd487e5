"""Rule train_xattn_scratch: train the `xattn_scratch` arm of one (dataset, shot, seed)."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from common import run_train_job


def main(smk) -> None:
    """Train the run whose files the rule declares."""
    run_train_job(smk, arm="xattn_scratch")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
