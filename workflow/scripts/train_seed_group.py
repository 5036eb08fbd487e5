"""Rule train_group_<arm>_<k>: train one seed group of one arm and (dataset, shot) in one process."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from common import run_seed_group_job


def main(smk) -> None:
    """Train the group's seeds, writing every seed's run files the rule declares."""
    run_seed_group_job(smk)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
