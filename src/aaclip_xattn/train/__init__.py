"""Training (DESIGN ``train/``): losses, stage 1 and stage 2 loops, schedule presets, the four arms, resume.

Quick start (the seed guide's two steps, on a synthetic dataset)::

    python -m aaclip_xattn.data make-synthetic --help          # make a small MVTec-format dataset
    python train.py --dataset MVTec --training_mode few_shot --shot 32 --text_epoch 5 --image_epoch 20 \\
        --text_batch_size 16 --image_batch_size 2 --dataset_root DATA --save_path ckpt/baseline_mvtec
    python train_cross_attention.py --dataset MVTec --shot 32 --dataset_root DATA \\
        --load_base_text_adapter ckpt/baseline_mvtec/text_adapter.pth \\
        --load_base_image_adapter ckpt/baseline_mvtec/image_adapter.pth --save_path ckpt/cross_attn_mvtec

The workflow calls :func:`run_training` directly with a :class:`TrainConfig`.
"""

from __future__ import annotations

from aaclip_xattn.train.arms import ArmSpec, get_arm, list_arms
from aaclip_xattn.train.config import (
    BASE_SCHEDULE,
    TrainConfig,
    get_preset,
    list_presets,
    load_train_config,
    resolve_schedule,
)
from aaclip_xattn.train.runner import ResumeMismatchError, run_training

__all__ = [
    "BASE_SCHEDULE",
    "ArmSpec",
    "ResumeMismatchError",
    "TrainConfig",
    "get_arm",
    "get_preset",
    "list_arms",
    "list_presets",
    "load_train_config",
    "resolve_schedule",
    "run_training",
]
