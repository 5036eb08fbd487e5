"""Command line for the data layer: generate synthetic datasets and summarise dataset folders.

Usage::

    python -m aaclip_xattn.data make-synthetic OUT [--preset synth_train|synth_test] [--seed S]
        [--categories C ...] [--image-size N] [--n-train-good N] [--n-test-good N]
        [--n-test-anomalous N] [--defect-types D ...] [--overwrite]
    python -m aaclip_xattn.data make-defaults OUT_ROOT [--overwrite]
    python -m aaclip_xattn.data summarize ROOT --layout L [--split test] [--categories C ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..logs import configure_logging
from .readers import format_summary, list_layouts, read_dataset, summarize
from .records import SPLITS
from .synthetic import (
    DEFAULT_SYNTHETIC_DATASETS,
    DEFECT_TYPES,
    SyntheticConfig,
    list_textures,
    make_default_datasets,
    make_synthetic_dataset,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m aaclip_xattn.data``."""
    parser = argparse.ArgumentParser(
        prog="python -m aaclip_xattn.data",
        description="Generate synthetic datasets; summarise dataset folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("make-synthetic", help="write one synthetic dataset in MVTec AD layout")
    synth.add_argument("out", help="output dataset root (must be new or empty)")
    synth.add_argument(
        "--preset", choices=sorted(DEFAULT_SYNTHETIC_DATASETS), help="start from a default dataset"
    )
    synth.add_argument(
        "--categories", nargs="+", metavar="C", help=f"texture categories: {', '.join(list_textures())}"
    )
    synth.add_argument("--seed", type=int, help="generation seed (default 0, or the preset's)")
    synth.add_argument("--image-size", type=int, dest="image_size", help="image side in pixels (default 128)")
    synth.add_argument(
        "--n-train-good", type=int, dest="n_train_good", help="train/good images per category (default 8)"
    )
    synth.add_argument(
        "--n-test-good", type=int, dest="n_test_good", help="test/good images per category (default 16)"
    )
    synth.add_argument(
        "--n-test-anomalous",
        type=int,
        dest="n_test_anomalous",
        help="anomalous images per category (default 16)",
    )
    synth.add_argument(
        "--defect-types",
        nargs="+",
        dest="defect_types",
        metavar="D",
        help=f"defects: {', '.join(DEFECT_TYPES)}",
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset at OUT"
    )

    defaults = sub.add_parser("make-defaults", help="write the default datasets (synth_train, synth_test)")
    defaults.add_argument("out_root", help="parent folder; datasets go to OUT_ROOT/<name>")
    defaults.add_argument("--overwrite", action="store_true", help="replace existing synthetic datasets")

    summ = sub.add_parser("summarize", help="count images per category, split and defect type")
    summ.add_argument("root", help="dataset root (jsonl: the .jsonl file or its folder)")
    summ.add_argument("--layout", required=True, choices=list_layouts(), help="dataset layout")
    summ.add_argument(
        "--split",
        default="test",
        choices=[*SPLITS, "all"],
        help="split to read (default test, the split AA-CLIP trains and evaluates on; all = every split)",
    )
    summ.add_argument("--categories", nargs="+", metavar="C", help="only these categories")
    return parser


def _synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    mapping: dict[str, Any] = {}
    if args.preset is not None:
        mapping.update(DEFAULT_SYNTHETIC_DATASETS[args.preset].to_dict())
    for key in (
        "categories",
        "seed",
        "image_size",
        "n_train_good",
        "n_test_good",
        "n_test_anomalous",
        "defect_types",
    ):
        value = getattr(args, key)
        if value is not None:
            mapping[key] = value
    if "categories" not in mapping:
        raise ValueError("make-synthetic: give --preset or --categories")
    return SyntheticConfig.from_mapping(mapping)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 with a one-line message on a bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(None)
    try:
        if args.command == "make-synthetic":
            out = make_synthetic_dataset(args.out, _synthetic_config(args), overwrite=args.overwrite)
            print(f"wrote {out}")
        elif args.command == "make-defaults":
            for name, root in make_default_datasets(args.out_root, overwrite=args.overwrite).items():
                print(f"wrote {name}: {root}")
        else:
            splits = SPLITS if args.split == "all" else (args.split,)
            samples = [
                sample
                for split in splits
                for sample in read_dataset(args.root, args.layout, split=split, categories=args.categories)
            ]
            print(format_summary(summarize(samples)))
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
