"""Evaluation: scoring (maps, image scores, normalisation modes), exact metrics, per-category tables.

The metrics are torch-free and imported eagerly; the scoring and runner names (which need torch and the
model) are imported on first access, so ``aaclip_xattn.evaluate.metrics`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from aaclip_xattn.evaluate.metrics import (
    AUPRO_FPR_LIMIT,
    AUPRO_MODES,
    IMAGE_METRICS,
    METRIC_NAMES,
    PIXEL_METRICS,
    PixelMetricAccumulator,
    compute_image_metrics,
    compute_pixel_metrics,
    label_regions,
    list_aupro_modes,
    mean_over_categories,
)

_LAZY = {
    "BLUR_SETTINGS": "scoring",
    "DOMAINS": "scoring",
    "FUSION_MODES": "scoring",
    "MASK_RULE": "scoring",
    "category_text_inputs": "scoring",
    "fuse_image_scores": "scoring",
    "get_blur_settings": "scoring",
    "list_fusion_modes": "scoring",
    "score_images": "scoring",
    "EVAL_COLUMNS": "runner",
    "MEAN_ROW": "runner",
    "EvalCheckpoints": "runner",
    "EvalConfig": "runner",
    "add_mean_row": "runner",
    "apply_checkpoints": "runner",
    "build_sidecar": "runner",
    "compute_test_list_sha256": "runner",
    "evaluate_checkpoint": "runner",
    "evaluate_run": "runner",
    "read_checkpoints": "runner",
    "write_eval_outputs": "runner",
    "inference_main": "cli",
}

__all__ = [
    "AUPRO_FPR_LIMIT",
    "AUPRO_MODES",
    "IMAGE_METRICS",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "PixelMetricAccumulator",
    "compute_image_metrics",
    "compute_pixel_metrics",
    "label_regions",
    "list_aupro_modes",
    "mean_over_categories",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"aaclip_xattn.evaluate.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aaclip_xattn.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
