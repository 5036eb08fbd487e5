"""Training losses of AA-CLIP (method spec §6): focal, Dice, orthogonal, image CE and the stage totals."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F

__all__ = [
    "FOCAL_GAMMA",
    "FOCAL_SMOOTH",
    "DICE_SMOOTH",
    "LOGIT_SCALE",
    "ORTHOGONAL_WEIGHT",
    "STAGE1_LEVELS",
    "dice_loss",
    "focal_loss",
    "image_ce_loss",
    "orthogonal_loss",
    "pixel_probabilities",
    "seg_loss",
    "seg_loss_from_logits",
    "stage1_loss",
    "stage2_loss",
]

logger = logging.getLogger(__name__)

#: Focal exponent γ; no α weighting (the reference's ``FocalLoss`` with ``alpha=None``).
FOCAL_GAMMA: Final = 2.0
#: Clamp of the one-hot target and offset of ``pt`` in the focal loss.
FOCAL_SMOOTH: Final = 1e-5
#: Additive smoothing in the numerator and denominator of the soft Dice coefficient.
DICE_SMOOTH: Final = 1.0
#: Scale of the cosine logits ``100 · (feature · T)``.
LOGIT_SCALE: Final = 100.0
#: Weight of the orthogonal loss in stage 1 (the reference's ``text_norm_weight``).
ORTHOGONAL_WEIGHT: Final = 0.1
#: Stage-1 loss-level modes: ``last`` (reference quirk: only the last tap trains) or ``all``.
STAGE1_LEVELS: Final = ("last", "all")


def _per_image_anchors(anchors: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast ``(D, 2)`` anchors to ``(B, D, 2)``; pass ``(B, D, 2)`` through after a shape check."""
    if anchors.dim() == 2:
        return anchors.unsqueeze(0).expand(batch, -1, -1)
    if anchors.dim() != 3 or anchors.shape[0] != batch or anchors.shape[-1] != 2:
        raise ValueError(f"anchors must have shape (D, 2) or (B={batch}, D, 2), got {tuple(anchors.shape)}")
    return anchors


def _patch_logits(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Return ``100 · (features · T)`` as a ``(B, 2, G, G)`` grid (same arithmetic as ``model.patch_logits``).

    Args:
        features: Patch features ``(B, L, D)`` with ``L = G·G`` in row-major grid order.
        anchors: ``(D, 2)`` shared or ``(B, D, 2)`` per image; column 0 normal, column 1 anomalous.
    """
    batch, length, _ = features.shape
    grid = int(round(length**0.5))
    if grid * grid != length:
        raise ValueError(f"patch count {length} is not a square grid")
    anchors = _per_image_anchors(anchors, batch)
    logits = LOGIT_SCALE * torch.bmm(features, anchors)  # (B, L, 2)
    return logits.permute(0, 2, 1).reshape(batch, 2, grid, grid)


def pixel_probabilities(logits: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Upsample grid logits bilinearly (``align_corners=True``) and take the softmax over the 2 channels.

    Args:
        logits: ``(B, 2, G, G)`` patch logits.
        size: Output size ``S`` or ``(H, W)``.

    Returns:
        ``(B, 2, H, W)`` probabilities, channel 0 normal, channel 1 anomalous.
    """
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return torch.softmax(upsampled, dim=1)


def focal_loss(
    probs: torch.Tensor, mask: torch.Tensor, *, gamma: float = FOCAL_GAMMA, smooth: float = FOCAL_SMOOTH
) -> torch.Tensor:
    """Focal loss on softmax probabilities, as the reference's ``FocalLoss`` (no α), mean over pixels.

    The one-hot target is clamped to ``[smooth/(C−1), 1−smooth]``; ``pt = Σ_c onehot·p + smooth``;
    loss ``= −(1 − pt)^γ · log pt``, averaged over all pixels of the batch.

    Args:
        probs: ``(B, C, H, W)`` class probabilities (after softmax).
        mask: ``(B, 1, H, W)`` or ``(B, H, W)`` integer-valued target (0 normal, 1 anomalous).
        gamma: Focusing exponent.
        smooth: Target clamp and ``pt`` offset.

    Returns:
        Scalar loss.
    """
    num_class = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, num_class)
    target = mask.reshape(-1).long()
    one_hot = F.one_hot(target, num_class).to(flat.dtype)
    one_hot = one_hot.clamp(smooth / (num_class - 1), 1.0 - smooth)
    pt = (one_hot * flat).sum(1) + smooth
    return (-torch.pow(1.0 - pt, gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, *, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice loss computed per sample, ``1 − mean_b dice_b`` (the reference's ``BinaryDiceLoss``).

    Args:
        prob: ``(B, H, W)`` (or any ``(B, …)``) probabilities of one channel.
        target: Same number of elements per sample, values in ``[0, 1]``.
        smooth: Added to numerator ``2·Σ p·t`` and denominator ``Σ p + Σ t``.

    Returns:
        Scalar loss.
    """
    batch = prob.shape[0]
    p = prob.reshape(batch, -1)
    t = target.reshape(batch, -1).to(p.dtype)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.sum() / batch


def seg_loss_from_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Segmentation loss of one level: focal + Dice(anomaly, mask) + Dice(normal, 1 − mask).

    Args:
        logits: ``(B, 2, G, G)`` patch logits.
        masks: ``(B, 1, S, S)`` binary masks (1 inside the defect).

    Returns:
        Scalar loss.
    """
    probs = pixel_probabilities(logits, masks.shape[-2:])
    target = masks.reshape(masks.shape[0], *masks.shape[-2:])
    return focal_loss(probs, target) + dice_loss(probs[:, 1], target) + dice_loss(probs[:, 0], 1.0 - target)


def seg_loss(features: torch.Tensor, anchors: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Segmentation loss of one level from patch features and anchors (§6).

    Args:
        features: ``(B, L, D)`` patch features.
        anchors: ``(D, 2)`` or per-image ``(B, D, 2)``.
        masks: ``(B, 1, S, S)`` binary masks.

    Returns:
        Scalar loss.
    """
    return seg_loss_from_logits(_patch_logits(features, anchors), masks)


def orthogonal_loss(anchors: torch.Tensor) -> torch.Tensor:
    """Return ``(mean_b ⟨T_N, T_A⟩_b)²``: the batch mean is squared, not each term (reference quirk §14.5).

    Args:
        anchors: ``(D, 2)`` or ``(B, D, 2)``, one entry per image (each image's class anchors).

    Returns:
        Scalar loss.
    """
    if anchors.dim() == 2:
        anchors = anchors.unsqueeze(0)
    return (anchors[..., 0] * anchors[..., 1]).sum(-1).mean() ** 2


def image_ce_loss(det_token: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the raw logits ``det · [T_N, T_A]`` (no temperature; §6).

    Args:
        det_token: ``(B, D)`` global image features.
        anchors: ``(D, 2)`` or ``(B, D, 2)``.
        labels: ``(B,)`` integer labels (0 normal, 1 anomalous).

    Returns:
        Scalar loss.
    """
    anchors = _per_image_anchors(anchors, det_token.shape[0])
    logits = torch.bmm(det_token.unsqueeze(1), anchors).squeeze(1)
    return F.cross_entropy(logits, labels.long())


def stage1_loss(
    features: Sequence[torch.Tensor],
    anchors: torch.Tensor,
    masks: torch.Tensor,
    *,
    levels: str = "last",
    orthogonal_weight: float = ORTHOGONAL_WEIGHT,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-1 (text) loss: ``seg(last) + 0.1·orth`` (``last``, reference) or ``Σ_l seg(l) + 0.1·orth`` (``all``).

    Args:
        features: The 4 frozen stage-1 feature levels, each ``(B, L, D)``.
        anchors: Per-image anchors ``(B, D, 2)`` (or shared ``(D, 2)``), with gradients.
        masks: ``(B, 1, S, S)``.
        levels: ``"last"`` or ``"all"``.
        orthogonal_weight: Weight of the orthogonal term (counted once).

    Returns:
        ``(total, parts)`` with ``parts`` holding the float values of ``seg``, ``orthogonal`` and ``total``.

    Raises:
        ValueError: ``levels`` is not one of :data:`STAGE1_LEVELS`.
    """
    if levels not in STAGE1_LEVELS:
        raise ValueError(f"stage1_levels must be one of {', '.join(STAGE1_LEVELS)}, got {levels!r}")
    used = [features[-1]] if levels == "last" else list(features)
    seg = sum(seg_loss(level, anchors, masks) for level in used)
    orth = orthogonal_loss(anchors)
    total = seg + orthogonal_weight * orth
    return total, {
        "seg": float(seg.detach()),
        "orthogonal": float(orth.detach()),
        "total": float(total.detach()),
    }


def stage2_loss(
    seg_tokens: Sequence[torch.Tensor],
    det_token: torch.Tensor,
    anchors: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage-2 (image) loss: image CE + Σ over the 4 taps of the segmentation loss.

    Args:
        seg_tokens: The 4 adapted tap features, each ``(B, L, D)``.
        det_token: ``(B, D)``.
        anchors: ``(D, 2)`` or ``(B, D, 2)`` (no gradient needed).
        masks: ``(B, 1, S, S)``.
        labels: ``(B,)``.

    Returns:
        ``(total, parts)`` with the float values of ``ce``, ``seg`` and ``total``.
    """
    ce = image_ce_loss(det_token, anchors, labels)
    seg = sum(seg_loss(level, anchors, masks) for level in seg_tokens)
    total = ce + seg
    return total, {"ce": float(ce.detach()), "seg": float(seg.detach()), "total": float(total.detach())}
