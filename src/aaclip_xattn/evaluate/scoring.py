"""Scoring: anomaly maps and image scores of a batch, and the image-score fusion (normalisation) modes.

The map arithmetic itself (per-tap cosine logits, blur on the patch grid, one upsampling of the sum of
the four taps, the raw image score ``(det·T_A + 1)/2``) lives in :mod:`aaclip_xattn.model`; this module
runs it batched under ``torch.inference_mode`` (optionally with autocast), conditions the anchors of a
cross-attention model per image, and turns raw image scores into the reported ones (``fusion``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import torch

from aaclip_xattn import model as model_lib

__all__ = [
    "BLUR_SETTINGS",
    "DOMAINS",
    "FUSION_MODES",
    "MASK_RULE",
    "UPSAMPLE_RULE",
    "category_text_inputs",
    "fuse_image_scores",
    "get_blur_settings",
    "is_cross_attention_model",
    "list_fusion_modes",
    "score_images",
]

logger = logging.getLogger(__name__)

_FUSION_MODES: Final = {
    "transductive": "reference: per-category min-max normalisation of the maps (all pixels) and of the raw "
    "image scores; industrial 0.5*max(normalised map) + 0.5*normalised score, medical max(normalised map)",
    "none": "non-transductive: the raw image score (det·T_A + 1)/2 as it is",
}
#: Image-score fusion modes (aaclip-method.md §9 step 6).
FUSION_MODES: Final = tuple(_FUSION_MODES)
#: Gaussian blur of the patch-grid maps per domain (aaclip-method.md §9 step 2; the kernels are
#: ``model.BLUR_KERNELS``), as recorded in evaluation sidecars.
BLUR_SETTINGS: Final = {
    domain: {"kernel": int(kernel), "sigma": float(sigma), "border": "reflect", "applied_on": "patch_grid"}
    for domain, (kernel, sigma) in model_lib.BLUR_KERNELS.items()
}
#: Domains that select the blur and the fusion rule.
DOMAINS: Final = tuple(BLUR_SETTINGS)
#: How ground-truth masks reach the map resolution (binarise != 0, then nearest resize).
MASK_RULE: Final = "nearest_nonzero"
#: How the summed grid map reaches the image size.
UPSAMPLE_RULE: Final = "bilinear_align_corners"


def list_fusion_modes() -> dict[str, str]:
    """Return a copy of the fusion modes with a one-line description each."""
    return dict(_FUSION_MODES)


def get_blur_settings(domain: str) -> dict[str, Any]:
    """Return a copy of the blur settings of ``domain``.

    Raises:
        ValueError: Unknown domain (the message lists the valid ones).
    """
    if domain not in BLUR_SETTINGS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return dict(BLUR_SETTINGS[domain])


def is_cross_attention_model(model: torch.nn.Module) -> bool:
    """Return whether ``model`` carries the cross-attention modules (``text_cross_attn``/``image_cross_attn``)."""
    return hasattr(model, "image_cross_attn") or hasattr(model, "text_cross_attn")


def category_text_inputs(model: torch.nn.Module, category: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute a category's text anchors once (and its prompt embeddings for cross-attention models).

    Args:
        model: ``AdaptedCLIP`` or ``AdaptedCLIPWithCrossAttention``.
        category: Category name (turned into prompts by the model's description policy).

    Returns:
        ``(anchors (D, 2), prompt_embeddings (P, D) or None)``.
    """
    with torch.inference_mode():
        anchors = model.text_anchors([category])[0]
        prompts = model.prompt_embeddings([category])[0] if is_cross_attention_model(model) else None
    return anchors, prompts


def score_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    anchors: torch.Tensor,
    *,
    domain: str = "industrial",
    prompt_embeddings: torch.Tensor | None = None,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the anomaly maps and raw image scores of one batch (one forward pass per image).

    For a cross-attention model, ``prompt_embeddings`` feed ``image_cross_attn`` and the anchors are
    conditioned per image on the layer-24 segmentation tokens (``model.condition_anchors``); a baseline
    model uses the anchors as they are.

    Args:
        model: The adapted model, in eval mode, on the device of ``images``.
        images: ``(B, 3, S, S)`` normalised images.
        anchors: ``(D, 2)`` text anchors ``[T_N, T_A]`` of the batch's category (or ``(B, D, 2)``).
        domain: ``"industrial"`` or ``"medical"`` (blur kernel 7/σ 1 or 9/σ 1.5).
        prompt_embeddings: ``(P, D)`` or ``(B, P, D)`` prompt embeddings (cross-attention models only).
        amp: Run the forward under bfloat16 (CUDA) autocast; the outputs are returned as float32.

    Returns:
        ``(maps (B, S, S), raw_scores (B,))`` float32: the sum of the four blurred taps upsampled once, and
        ``(det·T_A + 1)/2``.
    """
    get_blur_settings(domain)
    batch = images.shape[0]
    xattn = is_cross_attention_model(model)
    if anchors.dim() == 2:
        anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
    kwargs: dict[str, Any] = {}
    if xattn:
        if prompt_embeddings is None:
            raise ValueError("a cross-attention model needs prompt_embeddings for image_cross_attn")
        if prompt_embeddings.dim() == 2:
            prompt_embeddings = prompt_embeddings.unsqueeze(0).expand(batch, -1, -1)
        kwargs["prompt_embeddings"] = prompt_embeddings
    with torch.inference_mode(), _autocast(images.device, amp):
        features = model.encode_image(images, **kwargs)
        anchors = anchors.to(features.det_token.dtype)
        if xattn:
            anchors = model.condition_anchors(anchors, features.seg_tokens[-1])
        maps = model_lib.anomaly_map(features.seg_tokens, anchors, model.image_size, domain)
        raw = model_lib.image_score(features.det_token, anchors)
    return maps.float(), raw.float()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _min_max(values: np.ndarray, low: float, high: float) -> np.ndarray:
    # A constant input (high == low) has no scale; the reference would divide by zero (nan). Map it to 0.
    span = high - low
    if span == 0:
        return np.zeros_like(values, dtype=np.float64)
    return (values.astype(np.float64) - low) / span


def fuse_image_scores(
    raw_scores: Sequence[float] | np.ndarray,
    map_max: Sequence[float] | np.ndarray,
    map_min: Sequence[float] | np.ndarray,
    *,
    fusion: str = "transductive",
    domain: str = "industrial",
) -> np.ndarray:
    """Turn one category's raw image scores into the reported image scores.

    ``transductive`` (reference): the pixel maps are min-max normalised over **all pixels of the
    category's test set** (only each image's max and min are needed) and the raw scores over the
    category's images; industrial: ``0.5·max(normalised map) + 0.5·normalised raw score``; medical:
    ``max(normalised map)``. ``none``: the raw score unchanged. A constant quantity normalises to 0.

    Args:
        raw_scores: ``(N,)`` raw image scores ``(det·T_A + 1)/2`` of the category's test images.
        map_max: ``(N,)`` maximum of each image's anomaly map.
        map_min: ``(N,)`` minimum of each image's anomaly map.
        fusion: One of ``FUSION_MODES``.
        domain: One of ``DOMAINS``.

    Returns:
        ``(N,)`` float64 image scores.

    Raises:
        ValueError: Unknown mode or domain, or arrays of different lengths.
    """
    if fusion not in _FUSION_MODES:
        raise ValueError(f"unknown fusion mode {fusion!r}; valid modes: {', '.join(FUSION_MODES)}")
    get_blur_settings(domain)
    raw = np.asarray(raw_scores, dtype=np.float64).reshape(-1)
    highs = np.asarray(map_max, dtype=np.float64).reshape(-1)
    lows = np.asarray(map_min, dtype=np.float64).reshape(-1)
    if not raw.size == highs.size == lows.size:
        raise ValueError(
            f"raw_scores, map_max and map_min must have one value per image; got {raw.size}, {highs.size}, {lows.size}"
        )
    if fusion == "none":
        return raw.copy()
    map_score = _min_max(highs, float(lows.min()), float(highs.max()))
    if domain == "medical":
        return map_score
    return 0.5 * map_score + 0.5 * _min_max(raw, float(raw.min()), float(raw.max()))
