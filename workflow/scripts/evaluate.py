"""Rule evaluate_<train dataset>: score one run on every test dataset of its training dataset."""

# No `from __future__` import: Snakemake prepends its preamble to scripts, and such imports must come first.
from pathlib import Path

from aaclip_xattn.devices import gpu_slot, resolve_device
from aaclip_xattn.logs import configure_logging


def main(smk) -> None:
    """Write <test_dataset>.csv and .json for each test dataset into the run's eval directory."""
    configure_logging(smk.log[0])
    with gpu_slot(smk.params.evaluate["device"]):
        # Import after the slot is taken: CUDA_VISIBLE_DEVICES must be set before CUDA initialises.
        from aaclip_xattn.data import DatasetSpec
        from aaclip_xattn.evaluate import EvalConfig, evaluate_run

        settings = smk.params.evaluate
        cfg = EvalConfig.from_mapping({**settings, "device": resolve_device(settings["device"])})
        tests = [
            DatasetSpec(spec["name"], spec["layout"], Path(spec["root"])) for spec in smk.params.test_datasets
        ]
        evaluate_run(Path(smk.input.run).parent, tests, Path(smk.output.tables[0]).parent, cfg)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
