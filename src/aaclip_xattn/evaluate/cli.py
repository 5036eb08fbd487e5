"""``inference.py``: evaluate a checkpoint on a dataset and write the per-category table and its sidecar."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["build_parser", "inference_main"]

logger = logging.getLogger(__name__)

_PROG: Final = "inference.py"
#: The reference evaluates ViT-L-14-336 at 518 px; other backbones default to their own size.
_REFERENCE_BACKBONE: Final = "ViT-L-14-336"
_REFERENCE_IMAGE_SIZE: Final = 518


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``inference.py`` (the seed guide's flags plus evaluation modes)."""
    from aaclip_xattn.data.records import LAYOUTS
    from aaclip_xattn.evaluate.metrics import AUPRO_FPR_LIMIT, AUPRO_MODES
    from aaclip_xattn.evaluate.scoring import DOMAINS, FUSION_MODES

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Evaluate an AA-CLIP (or cross-attention) checkpoint: one row per category + mean, "
        "every metric, and a JSON sidecar with the conventions.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="image_adapter.pth of the run; text_adapter.pth is read from the same folder. Baseline vs "
        "cross-attention is detected from the file's keys",
    )
    parser.add_argument(
        "--dataset", default=None, help="dataset name for the table (default: root folder name)"
    )
    parser.add_argument("--dataset_root", default=None, help="dataset root folder (required)")
    parser.add_argument("--layout", default=None, choices=LAYOUTS, help="dataset layout (required)")
    parser.add_argument("--categories", nargs="+", default=None, help="evaluate only these categories")
    parser.add_argument(
        "--backbone",
        default=None,
        help="open_clip architecture, or 'tiny' (default: the run.json beside the checkpoint, "
        f"else {_REFERENCE_BACKBONE})",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="backbone weights: local file or open_clip tag (default: the run.json beside the checkpoint)",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="input size (default: the run.json beside the checkpoint, else "
        f"{_REFERENCE_IMAGE_SIZE} for {_REFERENCE_BACKBONE}, else the backbone's)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="test images per forward pass")
    parser.add_argument(
        "--out", default="results.csv", help="output CSV; the sidecar is written beside it as .json"
    )
    parser.add_argument("--save_maps", default=None, metavar="DIR", help="write PNG overlays into DIR")
    parser.add_argument(
        "--save_maps_count", type=int, default=4, help="overlays per category with --save_maps"
    )
    parser.add_argument("--fusion", default="transductive", choices=FUSION_MODES, help="image-score fusion")
    parser.add_argument("--aupro_mode", default="exact", choices=AUPRO_MODES, help="AUPRO computation")
    parser.add_argument("--aupro_fpr_limit", type=float, default=AUPRO_FPR_LIMIT, help="AUPRO FPR limit")
    parser.add_argument("--domain", default="industrial", choices=DOMAINS, help="blur and fusion domain")
    parser.add_argument("--descriptions", default=None, metavar="FILE", help="class descriptions JSON")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (speed option)")
    parser.add_argument("--legacy_zero", action="store_true", help="single-label categories score 0, not NaN")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers decoding images")
    return parser


def _format_table(rows: Sequence[dict]) -> str:
    from aaclip_xattn.evaluate.metrics import METRIC_NAMES

    width = max(8, *(len(str(r["category"])) for r in rows))
    header = f"{'category':<{width}} {'n':>5} " + " ".join(f"{m:>13}" for m in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for row in rows:
        values = " ".join(
            f"{'nan':>13}" if math.isnan(row[m]) else f"{100 * row[m]:>13.2f}" for m in METRIC_NAMES
        )
        lines.append(f"{row['category']:<{width}} {row['n_images']:>5} {values}")
    return "\n".join(lines) + "\n(values in %)"


def inference_main(argv: Sequence[str] | None = None) -> int:
    """Run ``inference.py``; return the exit status (0 ok, 2 on a bad flag, file or checkpoint)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code or 0)
    from aaclip_xattn.logs import configure_logging

    configure_logging(None)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # CheckpointError is a RuntimeError; every user-facing error is one line naming the thing.
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2


def _model_settings(
    args: argparse.Namespace, image_checkpoint: Path
) -> tuple[str, str | None, int | None, dict, dict | None]:
    """Backbone, weights, image size and model options: explicit flags, else the run's ``run.json``.

    A run written by ``train.py`` records how its adapters were built, so ``inference.py --checkpoint
    ckpt/run/image_adapter.pth`` rebuilds the same model without repeating the training flags.
    """
    from aaclip_xattn.evaluate.runner import model_options_from_run
    from aaclip_xattn.fileio import read_json

    run_json = image_checkpoint.parent / "run.json"
    run = read_json(run_json) if run_json.is_file() else None
    hyper = dict((run or {}).get("hyperparameters") or {})
    if run is not None:
        logger.info("model settings from %s (flags override them)", run_json)
    backbone = args.backbone or hyper.get("backbone") or _REFERENCE_BACKBONE
    pretrained = args.pretrained if args.pretrained is not None else hyper.get("pretrained")
    image_size = args.image_size if args.image_size is not None else hyper.get("image_size")
    if image_size is None and backbone == _REFERENCE_BACKBONE:
        image_size = _REFERENCE_IMAGE_SIZE
    descriptions = None if args.descriptions is None else os.fspath(args.descriptions)
    options = model_options_from_run(hyper, descriptions)
    return backbone, pretrained, image_size, options, run


def _run(args: argparse.Namespace) -> int:
    import torch

    from aaclip_xattn.data.readers import read_dataset
    from aaclip_xattn.data.records import DatasetSpec
    from aaclip_xattn.evaluate.runner import (
        EvalConfig,
        add_mean_row,
        apply_checkpoints,
        build_sidecar,
        evaluate_checkpoint,
        read_checkpoints,
        write_eval_outputs,
    )
    from aaclip_xattn.factory import create_model

    if args.dataset_root is None:
        raise ValueError("--dataset_root is required (the dataset folder; there is no default location)")
    if args.layout is None:
        raise ValueError("--layout is required (one of mvtec, visa, btad, mpdd, jsonl)")
    root = Path(args.dataset_root)
    if not root.exists():
        raise FileNotFoundError(f"--dataset_root {root}: no such folder")
    name = args.dataset or (root.stem if root.is_file() else root.name)
    spec = DatasetSpec(name=name, layout=args.layout, root=root)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = EvalConfig(
        fusion=args.fusion,
        aupro_mode=args.aupro_mode,
        aupro_fpr_limit=args.aupro_fpr_limit,
        domain=args.domain,
        batch_size=args.batch_size,
        device=device,
        amp=args.amp,
        save_maps=args.save_maps_count if args.save_maps else 0,
        legacy_zero=args.legacy_zero,
        descriptions=args.descriptions,
        num_workers=args.num_workers,
    )
    checkpoints = read_checkpoints(args.checkpoint)
    backbone, pretrained, image_size, options, run = _model_settings(args, Path(checkpoints.image_path))
    model = create_model(
        checkpoints.kind,
        backbone=backbone,
        pretrained=pretrained,
        image_size=image_size,
        device=device,
        **options,
    )
    apply_checkpoints(model, checkpoints)
    samples = read_dataset(root, args.layout, split="test", categories=args.categories)
    rows = evaluate_checkpoint(model, samples, cfg, maps_dir=args.save_maps, progress=True)
    table, skipped = add_mean_row(rows)
    sidecar = build_sidecar(
        cfg=cfg, model=model, dataset=spec, samples=samples, checkpoints=checkpoints, skipped=skipped, run=run
    )
    csv_path, json_path = write_eval_outputs(args.out, table, sidecar)
    print(
        f"{name}: {checkpoints.kind} checkpoint {checkpoints.image_path} (AUPRO {cfg.aupro_mode}, fusion {cfg.fusion})"
    )
    print(_format_table(table))
    if any(skipped.values()):
        print("mean skips undefined categories: " + ", ".join(f"{m} {n}" for m, n in skipped.items() if n))
    print(f"wrote {csv_path} and {json_path}")
    return 0
