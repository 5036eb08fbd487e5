"""Exact anomaly-detection metrics: image and pixel AUROC / AP / F1-max and AUPRO, from one sort.

Definitions follow ``metrics-and-datasets.md`` §1-§4. All thresholds are the distinct score values
(a sample is predicted anomalous iff ``score >= t``), tied scores form one step, counts are int64 and the
per-region overlap sums float64. Each pixel of a category is sorted exactly once (background pixels in
one plain sort, region pixels with their region ids in a small second one), and all pixel metrics of
the category come from that ranking: the curve is kept at its corner points only (see ``_Curve``), which
leaves every metric exactly unchanged, so no per-threshold loop and no per-region curve is needed.

Undefined metrics (one class only, no regions) are ``nan`` with an
:class:`~aaclip_xattn.errors.UndefinedMetricWarning`, never 0.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
from scipy import ndimage

from aaclip_xattn.errors import UndefinedMetricWarning

__all__ = [
    "AUPRO_FPR_LIMIT",
    "AUPRO_MODES",
    "IMAGE_METRICS",
    "LEGACY_THRESHOLDS",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "PixelMetricAccumulator",
    "compute_image_metrics",
    "compute_pixel_metrics",
    "label_regions",
    "list_aupro_modes",
    "mean_over_categories",
]

logger = logging.getLogger(__name__)

#: Image-level metric names, in table order.
IMAGE_METRICS: Final = ("image_auroc", "image_ap", "image_f1_max")
#: Pixel-level metric names, in table order.
PIXEL_METRICS: Final = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
#: Every metric, in table order (all higher-is-better fractions in [0, 1]).
METRIC_NAMES: Final = IMAGE_METRICS + PIXEL_METRICS
#: AUPRO integrates the PRO curve from FPR 0 to this limit and divides by it.
AUPRO_FPR_LIMIT: Final = 0.3
#: Number of sampled thresholds of the ``legacy200`` AUPRO approximation.
LEGACY_THRESHOLDS: Final = 200

_AUPRO_MODES: Final = {
    "exact": "exact AU-PRO at every distinct threshold, trapezoid to the FPR limit, divided by it",
    "legacy200": "200-threshold approximation of APRIL-GAN/AnomalyCLIP (cflow-ad); only for matching "
    "published numbers, never mixed with exact values",
}
#: Names of the AUPRO modes.
AUPRO_MODES: Final = tuple(_AUPRO_MODES)

# 8-connectivity inside each image, no connectivity across images: labelling a (N, H, W) stack with
# this structure gives ids that are unique across the category in one call.
_STRUCTURE_3D: Final = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_3D[1] = True


def list_aupro_modes() -> dict[str, str]:
    """Return a copy of the AUPRO modes with a one-line description each."""
    return dict(_AUPRO_MODES)


# --------------------------------------------------------------------------------------------------
# validation


def _as_score_array(values: Any, name: str, ndim: int) -> np.ndarray:
    """Return ``values`` as a finite float array of the given rank, or raise naming ``name``."""
    if hasattr(values, "detach"):  # torch tensors: avoid importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != ndim:
        shape = "(N,)" if ndim == 1 else "(N, H, W)"
        raise ValueError(f"{name} must have shape {shape}; got an array of shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); expected at least one score")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            first = array.reshape(-1)[np.flatnonzero(~finite.reshape(-1))[0]]
            raise ValueError(
                f"{name} must be finite; found {bad} non-finite value(s) (e.g. {first}) "
                f"in an array of shape {array.shape}"
            )
    return array


def _as_binary_array(values: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``values`` as a bool array of ``shape`` holding only 0/1, or raise naming ``name``."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.shape != shape:
        raise ValueError(f"{name} must have the shape of the scores {shape}; got {array.shape}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be binary (0/1 or bool); got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        found = np.unique(array[bad])[:5].tolist()
        raise ValueError(
            f"{name} must be binary (values 0 and 1 only); found other values, e.g. {found} "
            "(binarise masks with != 0 before resizing)"
        )
    return array.astype(bool, copy=False)


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not (0.0 < limit <= 1.0) or math.isnan(limit):
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    return limit


def _check_aupro_mode(aupro_mode: str) -> str:
    if aupro_mode not in _AUPRO_MODES:
        raise ValueError(f"aupro_mode must be one of {', '.join(AUPRO_MODES)}; got {aupro_mode!r}")
    return aupro_mode


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined ({reason}); returning nan", UndefinedMetricWarning, stacklevel=3)
    return math.nan


# --------------------------------------------------------------------------------------------------
# the sort and the curve


class _Curve:
    """The exact curve of one category at its corner points, built from one sort of the scores.

    Every sample is sorted once: the negatives (background) as a plain ascending sort, the positives
    (region pixels, a few percent) descending together with their region ids. Between two consecutive
    distinct positive scores only FP grows, so the curve is a horizontal run there (TP and PRO constant):
    such runs are collinear for the ROC and the PRO curve, add ΔRecall = 0 to AP and never hold the
    F1 maximum. The curve is therefore exactly represented by, for each distinct positive score v
    (descending), the point just above v, ``(TP(>v), FP(>v))``, and the point at v, ``(TP(≥v), FP(≥v))``,
    plus the zero point and the end point ``(P, B)``. Counts are int64, PRO sums float64.

    Attributes:
        tp, fp: ``(2m + 2,)`` int64 counts along the curve (thresholds descending).
        pro_sum: ``(2m + 2,)`` float64 sums of the covered region fractions, or ``None`` without regions.
        n_positive, n_negative: P and B.
    """

    def __init__(self, scores: np.ndarray, ids: np.ndarray, inv_area: np.ndarray | None) -> None:
        positive = ids != 0
        negatives = scores[~positive]
        negatives.sort()
        self._negatives = negatives
        pos_scores = scores[positive]
        pos_ids = ids[positive]
        del positive
        order = np.argsort(pos_scores, kind="stable")[::-1]
        self._pos_desc = pos_scores[order]
        self.n_positive = int(self._pos_desc.size)
        self.n_negative = int(negatives.size)
        ends = _run_ends(self._pos_desc)
        tp_at = ends + 1
        fp_ge = self.n_negative - np.searchsorted(negatives, self._pos_desc[ends], side="left")
        fp_gt = self.n_negative - np.searchsorted(negatives, self._pos_desc[ends], side="right")
        tp_before = np.concatenate([[0], tp_at[:-1]])
        self.tp = _interleave(0, tp_before, tp_at, self.n_positive)
        self.fp = _interleave(0, fp_gt, fp_ge, self.n_negative)
        self.pro_sum: np.ndarray | None = None
        self._pro_cum: np.ndarray | None = None
        if inv_area is not None:
            cum = np.cumsum(inv_area[pos_ids[order]])
            self._pro_cum = cum
            at = cum[ends]
            before = np.concatenate([[0.0], at[:-1]])
            self.pro_sum = _interleave(0.0, before, at, float(cum[-1]))

    def legacy_points(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(FP(>t), PROsum(>t))`` at each threshold (strict ``>``, compared in float64)."""
        negatives = self._negatives.astype(np.float64, copy=False)
        fp = self.n_negative - np.searchsorted(negatives, thresholds, side="right")
        n_above = np.searchsorted(-self._pos_desc.astype(np.float64), -thresholds, side="left")
        pro = np.concatenate([[0.0], self._pro_cum])[n_above]
        return fp.astype(np.int64), pro

    def score_range(self) -> tuple[float, float]:
        """Return the smallest and largest score of the category."""
        values = [float(a[i]) for a, i in ((self._negatives, 0), (self._pos_desc, -1)) if a.size]
        highs = [float(a[i]) for a, i in ((self._negatives, -1), (self._pos_desc, 0)) if a.size]
        return min(values), max(highs)


def _interleave(first: float, before: np.ndarray, at: np.ndarray, last: float) -> np.ndarray:
    out = np.empty(2 * at.size + 2, dtype=at.dtype)
    out[0] = first
    out[1:-1:2] = before
    out[2:-1:2] = at
    out[-1] = last
    return out


def _run_ends(sorted_values: np.ndarray) -> np.ndarray:
    """Return the int64 index of the last element of each run of equal values (tie merge)."""
    last = np.empty(sorted_values.size, dtype=bool)
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=last[:-1])
    last[-1] = True
    return np.flatnonzero(last).astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------
# curve integrals


def _auroc(tp: np.ndarray, fp: np.ndarray) -> float:
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def _average_precision(tp: np.ndarray, fp: np.ndarray) -> float:
    # Σ ΔRecall · Precision over the points where recall grows (precision is defined there).
    grows = np.flatnonzero(np.diff(tp)) + 1
    precision = tp[grows] / (tp[grows] + fp[grows])
    return float(np.sum((tp[grows] - tp[grows - 1]) / tp[-1] * precision))


def _f1_max(tp: np.ndarray, fp: np.ndarray) -> float:
    # 2PR/(P+R) == 2TP/(TP+FP+P); points with TP = 0 give 0 and never win while P > 0.
    return float(np.max(2.0 * tp / (tp + fp + tp[-1])))


def _partial_trapezoid(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area of ``y`` over non-decreasing ``x`` from ``x[0]`` to ``limit`` (interpolated)."""
    inside = int(np.searchsorted(x, limit, side="right"))
    area = float(np.trapezoid(y[:inside], x[:inside])) if inside > 1 else 0.0
    if inside < x.size and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += float(0.5 * (y0 + y_limit) * (limit - x0))
    return area


def _aupro_exact(curve: _Curve, n_regions: int, limit: float) -> float:
    fpr = curve.fp / curve.n_negative
    pro = np.minimum(curve.pro_sum / n_regions, 1.0)
    return float(_partial_trapezoid(fpr, pro, limit) / limit)


def _aupro_legacy(curve: _Curve, n_regions: int, limit: float) -> float:
    lo, hi = curve.score_range()
    if hi == lo:
        return _undefined("pixel_aupro (legacy200)", "constant score map: all thresholds coincide")
    step = (hi - lo) / LEGACY_THRESHOLDS
    # Thresholds and comparisons in float64 (the reference's float32 arange can move the result by ~1e-7).
    thresholds = lo + step * np.arange(LEGACY_THRESHOLDS, dtype=np.float64)
    fp, pro_sum = curve.legacy_points(thresholds)
    fpr_all = fp / curve.n_negative
    keep = fpr_all < limit
    if not keep.any():
        return _undefined("pixel_aupro (legacy200)", f"no sampled threshold has FPR < {limit}")
    pro = pro_sum[keep] / n_regions
    fpr = fpr_all[keep]
    span = fpr.max() - fpr.min()
    if span == 0:
        return _undefined("pixel_aupro (legacy200)", "all kept thresholds have the same FPR")
    fpr = (fpr - fpr.min()) / span
    # Thresholds ascend, so FPR descends; integrate in ascending FPR as sklearn.metrics.auc does.
    return float(np.trapezoid(pro[::-1], fpr[::-1]))


# --------------------------------------------------------------------------------------------------
# public API


def label_regions(masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected ground-truth regions of every mask, with ids unique across the stack.

    Args:
        masks: ``(N, H, W)`` binary masks (bool or 0/1).

    Returns:
        ``(labels, areas)``: ``labels`` is ``(N, H, W)`` int32 with 0 for background and ``1..R`` for the
        regions (numbered image by image); ``areas`` is ``(R + 1,)`` int64 with ``areas[0]`` the
        background pixel count.

    Raises:
        ValueError: If ``masks`` is not a binary ``(N, H, W)`` array.
    """
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W); got an array of shape {masks.shape}")
    masks = _as_binary_array(masks, "masks", masks.shape)
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE_3D)
    # Count region pixels only (a few percent of all pixels); background is the remainder.
    areas = np.bincount(labels[masks], minlength=n_regions + 1).astype(np.int64)
    areas[0] = labels.size - int(areas[1:].sum())
    return labels, areas


def compute_image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Compute image AUROC, AP and F1-max of one category.

    Args:
        scores: ``(N,)`` finite image scores, higher = more anomalous.
        labels: ``(N,)`` labels in {0, 1} (1 = anomalous).

    Returns:
        ``{"image_auroc", "image_ap", "image_f1_max"}`` as floats in [0, 1]. AUROC is the trapezoid of the
        ROC over all distinct thresholds (ties count 1/2, equals ``roc_auc_score``); AP is the step-wise
        sum of ΔRecall·Precision (equals ``average_precision_score``); F1-max is the maximum of 2PR/(P+R).
        All three are ``nan`` with an :class:`UndefinedMetricWarning` when the category holds one class only.

    Raises:
        ValueError: If the shapes differ, a score is not finite, or a label is not 0/1.
    """
    scores = _as_score_array(scores, "scores", 1)
    labels = _as_binary_array(labels, "labels", scores.shape)
    n_positive = int(np.count_nonzero(labels))
    if n_positive == 0 or n_positive == labels.size:
        which = "anomalous" if n_positive == 0 else "normal"
        reason = f"no {which} images among {labels.size}"
        return {name: _undefined(name, reason) for name in IMAGE_METRICS}
    curve = _Curve(scores, labels.astype(np.uint8), None)
    return {
        "image_auroc": _auroc(curve.tp, curve.fp),
        "image_ap": _average_precision(curve.tp, curve.fp),
        "image_f1_max": _f1_max(curve.tp, curve.fp),
    }


def compute_pixel_metrics(
    maps: Any,
    masks: Any,
    *,
    aupro_mode: str = "exact",
    fpr_limit: float = AUPRO_FPR_LIMIT,
) -> dict[str, float]:
    """Compute pixel AUROC, AP, F1-max and AUPRO of one category from one sort of its pixel scores.

    All pixels of all images (normal ones included) are pooled into one ranking. Regions are the
    8-connected components of each mask; PRO(t) is the mean over regions of the covered fraction, FPR(t)
    the fraction of background pixels at or above ``t``.

    Args:
        maps: ``(N, H, W)`` finite anomaly maps (any real dtype; ranked in that dtype, no rounding).
        masks: ``(N, H, W)`` binary ground truth (bool or 0/1).
        aupro_mode: ``"exact"`` (trapezoid of the exact PRO curve from FPR 0 to ``fpr_limit`` with linear
            interpolation at the limit, divided by ``fpr_limit``) or ``"legacy200"`` (the 200-threshold
            approximation of §4, strict ``>``, FPR < limit kept and min-max rescaled; for matching
            published numbers only).
        fpr_limit: Upper FPR bound of the AUPRO integral, in (0, 1].

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}``. AUROC is ``nan`` without anomalous or
        without background pixels, AP and F1-max without anomalous pixels, AUPRO without regions or
        background; each ``nan`` comes with an :class:`UndefinedMetricWarning`.

    Raises:
        ValueError: On shape mismatch, non-finite scores, non-binary masks, or a bad option.
    """
    _check_aupro_mode(aupro_mode)
    limit = _check_fpr_limit(fpr_limit)
    maps = _as_score_array(maps, "maps", 3)
    labels, areas = label_regions(_as_binary_array(masks, "masks", maps.shape))
    return _pixel_metrics_from_labels(maps, labels, areas, aupro_mode=aupro_mode, limit=limit)


def _pixel_metrics_from_labels(
    maps: np.ndarray, labels: np.ndarray, areas: np.ndarray, *, aupro_mode: str, limit: float
) -> dict[str, float]:
    n_regions = areas.size - 1
    n_background = int(areas[0])
    n_positive = int(labels.size - n_background)
    out: dict[str, float] = {}
    if n_positive == 0:
        reason = f"no anomalous pixels among {labels.size}"
        for name in PIXEL_METRICS:
            out[name] = _undefined(name, reason)
        return out
    inv_area = np.zeros(areas.size, dtype=np.float64)
    inv_area[1:] = 1.0 / areas[1:]
    curve = _Curve(maps.reshape(-1), labels.reshape(-1), inv_area)
    del labels
    tp, fp = curve.tp, curve.fp
    if n_background == 0:
        out["pixel_auroc"] = _undefined("pixel_auroc", f"no background pixels among {n_positive}")
    else:
        out["pixel_auroc"] = _auroc(tp, fp)
    out["pixel_ap"] = _average_precision(tp, fp)
    out["pixel_f1_max"] = _f1_max(tp, fp)
    if n_background == 0:
        out["pixel_aupro"] = _undefined("pixel_aupro", "no background pixels")
    elif aupro_mode == "exact":
        out["pixel_aupro"] = _aupro_exact(curve, n_regions, limit)
    else:
        out["pixel_aupro"] = _aupro_legacy(curve, n_regions, limit)
    return out


class PixelMetricAccumulator:
    """Collect a category's maps and masks batch by batch, then compute the pixel metrics once.

    Batches are validated and copied on :meth:`update`; :meth:`compute` labels the regions and sorts the
    pixels once, exactly as :func:`compute_pixel_metrics` on the concatenation.

    Args:
        aupro_mode: See :func:`compute_pixel_metrics`.
        fpr_limit: See :func:`compute_pixel_metrics`.
    """

    def __init__(self, *, aupro_mode: str = "exact", fpr_limit: float = AUPRO_FPR_LIMIT) -> None:
        self.aupro_mode = _check_aupro_mode(aupro_mode)
        self.fpr_limit = _check_fpr_limit(fpr_limit)
        self._maps: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._shape: tuple[int, int] | None = None

    @property
    def n_images(self) -> int:
        """Number of images added so far."""
        return sum(m.shape[0] for m in self._maps)

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch of ``(B, H, W)`` maps and binary masks (validated now, not at :meth:`compute`)."""
        maps = _as_score_array(maps, "maps", 3)
        masks = _as_binary_array(masks, "masks", maps.shape)
        if self._shape is not None and maps.shape[1:] != self._shape:
            raise ValueError(
                f"maps of one category must share one size; got {maps.shape[1:]} after {self._shape}"
            )
        self._shape = maps.shape[1:]
        self._maps.append(np.array(maps, copy=True))
        self._masks.append(np.array(masks, copy=True))

    def compute(self) -> dict[str, float]:
        """Return the pixel metrics of everything added (see :func:`compute_pixel_metrics`)."""
        if not self._maps:
            raise ValueError("PixelMetricAccumulator.compute() called before any update()")
        maps = self._maps[0] if len(self._maps) == 1 else np.concatenate(self._maps)
        masks = self._masks[0] if len(self._masks) == 1 else np.concatenate(self._masks)
        labels, areas = label_regions(masks)
        del masks
        return _pixel_metrics_from_labels(
            maps, labels, areas, aupro_mode=self.aupro_mode, limit=self.fpr_limit
        )


def mean_over_categories(
    rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] = METRIC_NAMES
) -> tuple[dict[str, float], dict[str, int]]:
    """Return the unweighted mean of each metric over categories, skipping ``nan`` categories.

    Args:
        rows: One mapping per category holding the metric values.
        metrics: Metric names to average.

    Returns:
        ``(means, skipped)``: ``means[m]`` is the mean over categories with a defined value (``nan`` when
        none has one), ``skipped[m]`` the number of categories left out because their value was ``nan``.
    """
    rows = list(rows)
    means: dict[str, float] = {}
    skipped: dict[str, int] = {}
    for metric in metrics:
        values = np.array([float(row[metric]) for row in rows], dtype=np.float64)
        defined = values[~np.isnan(values)]
        skipped[metric] = int(values.size - defined.size)
        means[metric] = float(defined.mean()) if defined.size else math.nan
        if skipped[metric]:
            logger.info(
                "mean of %s skips %d of %d categories (undefined)", metric, skipped[metric], values.size
            )
    return means, skipped
