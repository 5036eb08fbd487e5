"""Rule fewshot_split: draw the seeded training list of one (dataset, shot, seed)."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from aaclip_xattn.data import make_fewshot_manifest, read_dataset, write_manifest
from aaclip_xattn.logs import configure_logging


def main(smk) -> None:
    """Sample k/2 normal + k/2 anomalous images per category (or take all for full_shot)."""
    configure_logging(smk.log[0])
    spec, split = smk.params.dataset, smk.params.split
    samples = read_dataset(spec["root"], spec["layout"], split="test")
    manifest = make_fewshot_manifest(
        samples,
        dataset=split["dataset"],
        shot=split["shot"],
        seed=split["seed"],
        training_mode=split["training_mode"],
        root=spec["root"],
        layout=spec["layout"],
    )
    write_manifest(smk.output.manifest, manifest)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
