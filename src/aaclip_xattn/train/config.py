"""Training configuration (``TrainConfig``) and the seed guide's schedule presets.

Precedence of the four schedule values (``text_epoch``, ``image_epoch``, ``text_lr``, ``image_lr``):
**an explicit value > the preset > the base default**. ``None`` in the config means "not given". A preset
applies only to the from-base arms (``xattn_from_base`` and ``baseline_continued`` alike, so the control
stays matched); ``baseline`` and ``xattn_scratch`` always use the base values unless a value is given
explicitly. ``conservative`` is the base schedule (the seed guide's step 6 "same as base");
``aggressive`` is text_epoch 3, image_epoch 10, text_lr 5e-6, image_lr 2.5e-4.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aaclip_xattn.fileio import read_yaml_mapping
from aaclip_xattn.train.arms import ArmSpec

__all__ = [
    "BASE_SCHEDULE",
    "TrainConfig",
    "get_preset",
    "list_presets",
    "load_train_config",
    "resolve_schedule",
]

logger = logging.getLogger(__name__)

#: The reference's schedule (method spec §7); the ``conservative`` preset equals it.
BASE_SCHEDULE: Final[dict[str, float | int]] = {
    "text_epoch": 5,
    "image_epoch": 20,
    "text_lr": 1e-5,
    "image_lr": 5e-4,
}

_PRESETS: Final[dict[str, dict[str, float | int]]] = {
    "conservative": dict(BASE_SCHEDULE),
    "aggressive": {"text_epoch": 3, "image_epoch": 10, "text_lr": 5e-6, "image_lr": 2.5e-4},
}

_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "preset": tuple(_PRESETS),
    "vv_axis": ("batch", "token", "value_only"),
    "stage1_levels": ("last", "all"),
    "noise_aug": ("off", "legacy"),
    "fusion": ("transductive", "none"),
    "device": ("auto", "cpu", "cuda"),
}

_EPOCH_CHECKPOINT = re.compile(r"^epoch([1-9][0-9]*)$")


def list_presets() -> list[str]:
    """Return the schedule preset names."""
    return list(_PRESETS)


def get_preset(name: str) -> dict[str, float | int]:
    """Return a copy of the preset's schedule values.

    Raises:
        ValueError: Unknown preset; the message lists the valid ones.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(_PRESETS)}")
    return dict(_PRESETS[name])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run besides the data, the arm and the paths.

    Schedule values left at ``None`` are resolved by :func:`resolve_schedule` (explicit > preset > base).
    """

    # Backbone: open_clip name or "tiny"; a local weights file or None (random init / packaged config).
    backbone: str = "tiny"
    pretrained: str | None = None
    # Input size in pixels; None keeps the backbone's own size.
    image_size: int | None = None
    # Schedule; None means "the preset's value" (from-base arms) or the base value (other arms).
    text_epoch: int | None = None
    image_epoch: int | None = None
    text_lr: float | None = None
    image_lr: float | None = None
    # Batch sizes of stage 1 (text) and stage 2 (image); the stage-2 milestones count iterations.
    text_batch_size: int = 16
    image_batch_size: int = 2
    # Stage-2 MultiStepLR, in iterations, stepped every iteration.
    lr_milestones: tuple[int, ...] = (16000, 32000)
    lr_gamma: float = 0.5
    adam_betas: tuple[float, float] = (0.5, 0.999)
    # Schedule preset for the from-base arms: conservative (base values) | aggressive.
    preset: str = "conservative"
    # Stage-1 V-V attention axis: batch (reference) | token (intended) | value_only.
    vv_axis: str = "batch"
    # Stage-1 loss levels: last (reference quirk) | all.
    stage1_levels: str = "last"
    # Gaussian-noise augmentation: off (current reference) | legacy (std 1, fires 30 % of the time).
    noise_aug: str = "off"
    # Random augmentation (spatial in both stages, colour in stage 2).
    augment: bool = True
    # Image-score fusion the evaluator will use; recorded here so that every arm declares it up front.
    fusion: str = "transductive"
    # From-base arms: map the base checkpoint's Adam state onto the new optimizer.
    optimizer_carryover: bool = True
    # Loading the base adapters: strict key matching (a skipped key is an error) or not (recorded).
    strict_load: bool = True
    # Also keep image_adapter_{k}.pth after every image epoch k.
    save_every_epoch: bool = False
    # The checkpoint the evaluator reads: "last" or "epoch<k>", fixed before any result exists.
    evaluated_checkpoint: str = "last"
    device: str = "auto"
    # bf16 autocast (a speed option, not a reproduction setting).
    amp: bool = False
    # perf (issue 8): restore the reference's fp32 numerics (no bf16/TF32/fused V-V/compile), also on CUDA.
    reproduce_reference: bool = False
    # perf (issue 8): fast-path overrides, aaclip_xattn.perf.PerfConfig keys; unset switches follow the
    # device (on for CUDA, off for CPU); `amp: true` above also forces bf16 on.
    perf: Mapping[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    seed: int = 111
    # JSON file category -> description, or None for the category names in words.
    descriptions: str | None = None
    # Extra ModelConfig fields passed to create_model (adapter counts, taps, activation, ...).
    model_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "train config") -> TrainConfig:
        """Build and validate a config from a mapping; unknown keys are an error.

        Args:
            mapping: Keys are field names.
            source: Where the mapping came from (a file name, "command line"), used in messages.

        Raises:
            ValueError: An unknown key (the valid keys are listed) or an invalid value (key named).
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(valid))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        values = dict(mapping)
        for key in ("lr_milestones", "adam_betas"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        if "model_options" in values:
            values["model_options"] = dict(values["model_options"] or {})
        if "perf" in values:
            values["perf"] = dict(values["perf"] or {})
        if values.get("pretrained") is not None:
            values["pretrained"] = str(values["pretrained"])
        if values.get("descriptions") is not None:
            values["descriptions"] = str(values["descriptions"])
        cfg = cls(**values)
        cfg.validate(source=source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        out["adam_betas"] = list(self.adam_betas)
        out["model_options"] = copy.deepcopy(dict(self.model_options))
        out["perf"] = dict(self.perf)
        return out

    def validate(self, *, source: str = "train config") -> None:
        """Check every value; raise ``ValueError`` naming the key, the value and what was expected."""

        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{source}: {key}={getattr(self, key)!r} is invalid; expected {expected}")

        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise bad(key, "one of " + ", ".join(choices))
        for key in ("text_epoch", "image_epoch"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 0):
                raise bad(key, "an integer >= 0 or null (the preset's value)")
        for key in ("text_lr", "image_lr"):
            value = getattr(self, key)
            if value is not None and (not _is_number(value) or not value > 0):
                raise bad(key, "a number > 0 or null (the preset's value)")
        for key in ("text_batch_size", "image_batch_size"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise bad(key, "an integer >= 1")
        if not _is_int(self.num_workers) or self.num_workers < 0:
            raise bad("num_workers", "an integer >= 0")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise bad("image_size", "a positive integer or null")
        if not isinstance(self.lr_milestones, tuple) or not all(
            _is_int(m) and m > 0 for m in self.lr_milestones
        ):
            raise bad("lr_milestones", "a list of positive integers (iterations)")
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise bad("lr_milestones", "an increasing list")
        if not _is_number(self.lr_gamma) or not 0 < self.lr_gamma <= 1:
            raise bad("lr_gamma", "a number in (0, 1]")
        if (
            not isinstance(self.adam_betas, tuple)
            or len(self.adam_betas) != 2
            or not all(_is_number(b) and 0 <= b < 1 for b in self.adam_betas)
        ):
            raise bad("adam_betas", "two numbers in [0, 1)")
        for key in (
            "augment",
            "optimizer_carryover",
            "strict_load",
            "save_every_epoch",
            "amp",
            "reproduce_reference",
        ):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if self.evaluated_checkpoint != "last" and not _EPOCH_CHECKPOINT.match(
            str(self.evaluated_checkpoint)
        ):
            raise bad("evaluated_checkpoint", '"last" or "epoch<k>" with k >= 1')
        if not isinstance(self.backbone, str) or not self.backbone:
            raise bad("backbone", "an open_clip model name or 'tiny'")
        if not isinstance(self.model_options, Mapping):
            raise bad("model_options", "a mapping of ModelConfig fields")
        if not isinstance(self.perf, Mapping):
            raise bad("perf", "a mapping of PerfConfig switches (aaclip_xattn.perf)")
        try:
            self.perf_settings("cpu")
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def perf_settings(self, device: Any) -> Any:
        """Return the resolved ``aaclip_xattn.perf.PerfConfig`` of this config on ``device``.

        ``perf`` overrides win; ``amp: true`` forces bf16 on; ``reproduce_reference`` turns every numeric
        fast path off; the rest follows the device (on for CUDA, off for CPU).
        """
        from aaclip_xattn.perf import resolve_perf

        overrides = dict(self.perf)
        if self.amp:
            overrides.setdefault("amp", True)
        return resolve_perf(device, reproduce_reference=self.reproduce_reference, overrides=overrides)

    def evaluated_epoch(self) -> int | None:
        """Return k for ``evaluated_checkpoint="epoch<k>"``, None for ``"last"``."""
        match = _EPOCH_CHECKPOINT.match(self.evaluated_checkpoint)
        return int(match.group(1)) if match else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_schedule(cfg: TrainConfig, arm: ArmSpec) -> dict[str, float | int]:
    """Resolve ``text_epoch``, ``image_epoch``, ``text_lr``, ``image_lr`` for one arm.

    Explicit values win; otherwise a from-base arm takes the preset's value and every other arm the
    base value (``BASE_SCHEDULE``).

    Raises:
        ValueError: ``evaluated_checkpoint="epoch<k>"`` with k beyond the resolved ``image_epoch``.
    """
    fallback = get_preset(cfg.preset) if arm.from_base else dict(BASE_SCHEDULE)
    if not arm.from_base and cfg.preset != "conservative":
        logger.info(
            "preset %r applies only to from-base arms; arm %s uses the base schedule", cfg.preset, arm.name
        )
    resolved: dict[str, float | int] = {}
    for key, default in fallback.items():
        value = getattr(cfg, key)
        resolved[key] = default if value is None else value
    epoch = cfg.evaluated_epoch()
    if epoch is not None and epoch > int(resolved["image_epoch"]):
        raise ValueError(
            f"evaluated_checkpoint={cfg.evaluated_checkpoint!r} is beyond image_epoch={resolved['image_epoch']} "
            f"for arm {arm.name}; choose 'last' or an epoch <= {resolved['image_epoch']}"
        )
    return resolved


def load_train_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file of ``TrainConfig`` keys, apply ``overrides`` and validate.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a YAML mapping, or a key or value is invalid (file named).
    """
    path = Path(path)
    data = read_yaml_mapping(
        path,
        missing="no such config file (expected YAML with TrainConfig keys)",
        not_mapping="expected a mapping of TrainConfig keys, got {type}",
    )
    merged = {**data, **dict(overrides or {})}
    return TrainConfig.from_mapping(merged, source=str(path))
