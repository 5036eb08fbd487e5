"""Command lines ``train.py`` and ``train_cross_attention.py`` with the seed guide's flags.

``train.py`` trains the ``baseline`` arm, or ``baseline_continued`` when both ``--load_base_*`` flags are
given. ``train_cross_attention.py`` trains ``xattn_from_base`` (both ``--load_base_*`` flags) or, with
``--scratch``, ``xattn_scratch``; without either it stops and asks, because training the cross-attention
model from scratch and comparing it with the baseline is the unfair comparison of the guide's step 7.

Precedence of every training setting: **explicit flag > ``--config`` file > ``--preset`` > default**;
presets touch only the from-base arms (see ``aaclip_xattn.train.config``). Each program writes the
few-shot manifest of ``--dataset_root`` to ``<save_path>/split.json`` and calls ``run_training``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "train_cross_attention_main", "train_main"]

logger = logging.getLogger(__name__)

_DESCRIPTION = {
    "train": (
        "Train the AA-CLIP baseline (stage 1: text adapters; stage 2: image adapters). With "
        "--load_base_text_adapter and --load_base_image_adapter it trains the 'baseline_continued' control: "
        "the baseline again from its own adapters and optimizer state, the same budget as the "
        "cross-attention model gets."
    ),
    "xattn": (
        "Train AA-CLIP with cross-attention. With --load_base_text_adapter and --load_base_image_adapter "
        "(the fair comparison): start from the baseline's adapters and optimizer state, cross-attention "
        "fresh with gates at 0. With --scratch: everything fresh (the guide's step 10 model 2)."
    ),
}
_EPILOG = (
    "Precedence: explicit flag > --config file > --preset > default. Presets (conservative = base lr and "
    "epochs; aggressive = text_epoch 3, image_epoch 10, text_lr 5e-6, image_lr 2.5e-4) apply only to runs "
    "that start from a base model. Rerunning the same command continues an interrupted run. "
    "Without a real dataset, make one: python -m aaclip_xattn.data make-synthetic --help"
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only where its help text does not already explain it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Flags (nargs=0) explain themselves; a store_false flag's implicit True is not a default.
        if "default" in text or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser(program: str) -> argparse.ArgumentParser:
    """Return the parser of ``train.py`` (``program="train"``) or ``train_cross_attention.py`` (``"xattn"``)."""
    prog = "train.py" if program == "train" else "train_cross_attention.py"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION[program],
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        help="dataset name used in records (MVTec, VisA or any label); default: the folder name of --dataset_root",
    )
    data.add_argument("--dataset_root", default=None, help="dataset folder (required); see --layout")
    data.add_argument(
        "--layout",
        default="mvtec",
        choices=["mvtec", "visa", "btad", "mpdd", "jsonl"],
        help="folder layout of --dataset_root",
    )
    data.add_argument(
        "--split",
        default="test",
        choices=["test", "train"],
        help="split the training list is drawn from (the reference trains on the auxiliary dataset's test split)",
    )
    data.add_argument(
        "--training_mode",
        default="few_shot",
        choices=["few_shot", "full_shot"],
        help="few_shot draws --shot images per class (half normal, half anomalous); full_shot uses the whole split",
    )
    data.add_argument("--shot", type=int, default=32, help="images per class in few_shot mode")
    data.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the split, data order, augmentation and adapter init (default 111)",
    )

    sched = parser.add_argument_group("schedule")
    sched.add_argument(
        "--text_epoch", type=int, default=None, help="stage-1 epochs (default: preset, base 5)"
    )
    sched.add_argument(
        "--image_epoch", type=int, default=None, help="stage-2 epochs (default: preset, base 20)"
    )
    sched.add_argument(
        "--text_lr", type=float, default=None, help="stage-1 Adam lr (default: preset, base 1e-5)"
    )
    sched.add_argument(
        "--image_lr", type=float, default=None, help="stage-2 Adam lr (default: preset, base 5e-4)"
    )
    sched.add_argument("--text_batch_size", type=int, default=None, help="stage-1 batch size (default 16)")
    sched.add_argument(
        "--image_batch_size",
        type=int,
        default=None,
        help="stage-2 batch size (default 2; the LR milestones count iterations)",
    )
    sched.add_argument(
        "--preset",
        default=None,
        choices=["conservative", "aggressive"],
        help="schedule preset for runs from a base model (default conservative)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone", default=None, help="open_clip model name, e.g. ViT-L-14-336, or 'tiny' (default tiny)"
    )
    model.add_argument(
        "--pretrained", default=None, help="local weights file of the backbone (nothing is downloaded)"
    )
    model.add_argument(
        "--image_size", type=int, default=None, help="input size in pixels (default: the backbone's)"
    )
    model.add_argument(
        "--descriptions", default=None, help="JSON file category -> description used in the prompts"
    )
    model.add_argument(
        "--vv_axis",
        default=None,
        choices=["batch", "token", "value_only"],
        help="stage-1 V-V attention axis (default batch, the reference's)",
    )
    model.add_argument(
        "--stage1_levels",
        default=None,
        choices=["last", "all"],
        help="stage-1 loss levels (default last, the reference's)",
    )
    model.add_argument(
        "--noise_aug",
        default=None,
        choices=["off", "legacy"],
        help="legacy Gaussian-noise augmentation (default off)",
    )
    model.add_argument("--no_augment", action="store_true", default=None, help="turn random augmentation off")

    base = parser.add_argument_group("starting from a base model")
    base.add_argument("--load_base_text_adapter", default=None, help="base run's text_adapter.pth")
    base.add_argument("--load_base_image_adapter", default=None, help="base run's image_adapter.pth")
    if program == "xattn":
        base.add_argument(
            "--scratch",
            action="store_true",
            help="train the cross-attention model from fresh adapters (no base)",
        )
    base.add_argument(
        "--no_optimizer_carryover",
        action="store_true",
        default=None,
        help="start the optimizer fresh instead of carrying the base run's Adam state",
    )
    strict = base.add_mutually_exclusive_group()
    strict.add_argument(
        "--strict_load",
        dest="strict_load",
        action="store_true",
        default=None,
        help="load base adapters strictly: any unexpected, missing or mis-shaped key is an error (default)",
    )
    strict.add_argument(
        "--non_strict_load",
        dest="strict_load",
        action="store_false",
        help="load what fits, skip the rest (recorded in run.json)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--save_path",
        required=True,
        help="output folder: checkpoints, run.json, train_log.csv, train.log, split.json",
    )
    run.add_argument("--config", default=None, help="YAML file of TrainConfig keys (flags override it)")
    run.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="device (default auto)")
    run.add_argument(
        "--amp", action="store_true", default=None, help="bf16 autocast (speed, not reproduction)"
    )
    # perf (issue 8): fast paths are on by default on CUDA and off on CPU.
    run.add_argument(
        "--reproduce_reference",
        action="store_true",
        default=None,
        help="the reference's fp32 numerics: no bf16, TF32, fused V-V attention or torch.compile, also on CUDA",
    )
    run.add_argument(
        "--perf",
        default=None,
        metavar="KEY=BOOL[,KEY=BOOL]",
        help="fast-path overrides, e.g. compile=false,amp=true (keys: amp, fused_attention, compile, tf32, "
        "channels_last, device_loss, pin_memory); unset ones follow the device",
    )
    run.add_argument(
        "--save_every_epoch",
        action="store_true",
        default=None,
        help="also keep image_adapter_{k}.pth after every image epoch",
    )
    run.add_argument(
        "--evaluated_checkpoint",
        default=None,
        help="'last' or 'epoch<k>': the checkpoint the evaluator reads (default last)",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="discard resume state of a different configuration in --save_path",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    return parser


# Flags that map one-to-one onto TrainConfig keys.
_CONFIG_FLAGS = (
    "seed",
    "text_epoch",
    "image_epoch",
    "text_lr",
    "image_lr",
    "text_batch_size",
    "image_batch_size",
    "preset",
    "backbone",
    "pretrained",
    "image_size",
    "descriptions",
    "vv_axis",
    "stage1_levels",
    "noise_aug",
    "strict_load",
    "device",
    "amp",
    "reproduce_reference",
    "save_every_epoch",
    "evaluated_checkpoint",
)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {key: getattr(args, key) for key in _CONFIG_FLAGS if getattr(args, key) is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.no_optimizer_carryover:
        overrides["optimizer_carryover"] = False
    if args.perf is not None:
        overrides["perf"] = _parse_perf(args.perf)
    return overrides


def _parse_perf(text: str) -> dict[str, bool]:
    """Parse ``--perf compile=false,amp=true`` into a dict (``ValueError`` naming the flag on bad input)."""
    out: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or value.strip().lower() not in ("true", "false", "1", "0", "on", "off"):
            raise ValueError(f"--perf: {item!r} is invalid; expected KEY=true|false, e.g. compile=false")
        out[key.strip()] = value.strip().lower() in ("true", "1", "on")
    return out


def _select_arm(program: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    text, image = args.load_base_text_adapter, args.load_base_image_adapter
    if (text is None) != (image is None):
        given, missing = (
            ("--load_base_text_adapter", "--load_base_image_adapter")
            if text is not None
            else ("--load_base_image_adapter", "--load_base_text_adapter")
        )
        parser.error(f"{given} needs {missing} too: a base model is both stages' adapters")
    from_base = text is not None
    if program == "train":
        return "baseline_continued" if from_base else "baseline"
    if args.scratch and from_base:
        parser.error("--scratch trains from fresh adapters; do not combine it with --load_base_* flags")
    if from_base:
        return "xattn_from_base"
    if not args.scratch:
        parser.error(
            "give the base model (--load_base_text_adapter and --load_base_image_adapter, the fair comparison) "
            "or --scratch to train the cross-attention model from fresh adapters (an unfair comparison "
            "with the baseline: see the guide's step 7)"
        )
    return "xattn_scratch"


def _dataset_name(args: argparse.Namespace) -> str:
    if args.dataset is not None:
        return args.dataset
    stem = Path(args.dataset_root).resolve().name or "dataset"
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem)


def _main(program: str, argv: Sequence[str] | None) -> int:
    parser = build_parser(program)
    args = parser.parse_args(argv)
    arm = _select_arm(program, args, parser)
    if args.dataset_root is None:
        parser.error(
            "--dataset_root is required: the folder of the training dataset (with --layout). "
            "Without a real dataset: python -m aaclip_xattn.data make-synthetic --help"
        )
    if args.shot < 1 and args.training_mode == "few_shot":
        parser.error(f"--shot must be >= 1 in few_shot mode, got {args.shot} (use --training_mode full_shot)")

    from aaclip_xattn.logs import configure_logging

    configure_logging(None)
    if args.quiet:
        # Quiet on the console only: train.log in --save_path still receives INFO records.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    from aaclip_xattn.errors import CheckpointError, NonFiniteLossError

    try:
        return _run(program, args, arm)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as exc:
        message = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 1 if isinstance(exc, NonFiniteLossError) else 2


def _run(program: str, args: argparse.Namespace, arm: str) -> int:
    from aaclip_xattn.data import make_fewshot_manifest, read_dataset, write_manifest
    from aaclip_xattn.seeding import seed_everything
    from aaclip_xattn.train.config import TrainConfig, load_train_config
    from aaclip_xattn.train.runner import run_training

    overrides = _config_overrides(args)
    if args.config is not None:
        cfg = load_train_config(args.config, overrides)
    else:
        cfg = TrainConfig.from_mapping(overrides, source="command line")
    seed_everything(cfg.seed)
    save_path = Path(args.save_path)
    samples = read_dataset(args.dataset_root, args.layout, split=args.split)
    manifest = make_fewshot_manifest(
        samples,
        dataset=_dataset_name(args),
        shot=args.shot if args.training_mode == "few_shot" else None,
        seed=cfg.seed,
        training_mode=args.training_mode,
        root=args.dataset_root,
        layout=args.layout,
    )
    manifest_path = save_path / "split.json"
    write_manifest(manifest_path, manifest)
    record = run_training(
        cfg,
        run_dir=save_path,
        manifest_path=manifest_path,
        arm=arm,
        base_text_adapter=args.load_base_text_adapter,
        base_image_adapter=args.load_base_image_adapter,
        progress=not args.quiet,
        restart=args.restart,
    )
    losses = record["epoch_losses"]
    print(
        f"{arm}: text {record['epochs_completed']['text']} epochs "
        f"(last loss {losses['text'][-1] if losses['text'] else float('nan'):.4f}), "
        f"image {record['epochs_completed']['image']} epochs "
        f"(last loss {losses['image'][-1] if losses['image'] else float('nan'):.4f}); "
        f"checkpoints in {save_path}"
    )
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train.py`` (arms ``baseline`` / ``baseline_continued``); returns the exit status."""
    return _main("train", argv)


def train_cross_attention_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``train_cross_attention.py`` (arms ``xattn_from_base`` / ``xattn_scratch``)."""
    return _main("xattn", argv)
