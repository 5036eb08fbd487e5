"""``create_model``: build the AA-CLIP baseline or the cross-attention variant in one call."""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import torch

from .backbone import build_backbone
from .cross_attention import AdaptedCLIPWithCrossAttention
from .model import AdaptedCLIP, ModelConfig

__all__ = ["MODEL_KINDS", "create_model", "list_model_kinds"]

logger = logging.getLogger(__name__)

_MODEL_CLASSES: Final = {"baseline": AdaptedCLIP, "xattn": AdaptedCLIPWithCrossAttention}
#: Valid ``kind`` values of :func:`create_model`.
MODEL_KINDS: Final = tuple(_MODEL_CLASSES)


def list_model_kinds() -> list[str]:
    """Return the model kinds (``baseline``, ``xattn``)."""
    return list(_MODEL_CLASSES)


def create_model(
    kind: str,
    backbone: str = "tiny",
    pretrained: str | os.PathLike | None = None,
    image_size: int | None = None,
    *,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    **options: Any,
) -> AdaptedCLIP:
    """Build a frozen backbone and wrap it as the AA-CLIP baseline or the cross-attention variant.

    Args:
        kind: ``"baseline"`` (:class:`AdaptedCLIP`) or ``"xattn"`` (:class:`AdaptedCLIPWithCrossAttention`).
        backbone: open_clip architecture name, or ``"tiny"`` (the embedded study).
        pretrained: local weights file or cached open_clip tag; ``None`` for a (seeded) random init.
        image_size: force this input size (position embeddings resized on load).
        device: device of backbone and adapters (``"meta"`` for shapes only).
        generator: RNG of the adapters' and cross-attention's init (global RNG when ``None``).
        **options: :class:`ModelConfig` fields (``text_adapter_layers``, ``image_adapter_layers``,
            ``taps``, ``vv_start_block``, ``blend``, ``proj_relu``, ``activation``, ``descriptions``,
            ``xattn_heads``).

    Returns:
        The model, adapters trainable, backbone frozen and in ``eval()``.

    Raises:
        ValueError: unknown kind or option, or an option that does not fit the backbone.
    """
    if kind not in _MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {', '.join(_MODEL_CLASSES)}")
    valid = ModelConfig.field_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"create_model: unknown option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}"
        )
    config = ModelConfig.from_mapping(options)
    clip = build_backbone(
        backbone, pretrained=pretrained, image_size=image_size, activation=config.activation, device=device
    )
    model = _MODEL_CLASSES[kind](clip, config, generator=generator)
    logger.info(
        "created %s model on %s (%s, image %d, taps %s)",
        kind,
        backbone,
        "pretrained" if pretrained is not None else "random init",
        model.image_size,
        list(model.config.taps),
    )
    return model
