"""Data layer: dataset layouts → `Sample` records, synthetic MVTec-format data, seeded manifests, transforms."""

from __future__ import annotations

from .fewshot import (
    MANIFEST_FORMAT,
    TRAINING_MODES,
    Manifest,
    make_fewshot_manifest,
    make_split_file,
    manifest_sha256,
    read_manifest,
    write_manifest,
)
from .readers import format_summary, get_layout, list_layouts, read_dataset, summarize
from .records import LAYOUTS, DatasetSpec, Sample
from .synthetic import (
    DEFAULT_SYNTHETIC_DATASETS,
    DEFECT_TYPES,
    SyntheticConfig,
    list_textures,
    make_default_datasets,
    make_synthetic_dataset,
)
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    NOISE_AUG_MODES,
    AnomalyDataset,
    AugmentParams,
    apply_augment,
    apply_spatial,
    draw_augment_params,
    load_image,
    load_mask,
    normalize,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_SYNTHETIC_DATASETS",
    "DEFECT_TYPES",
    "LAYOUTS",
    "MANIFEST_FORMAT",
    "NOISE_AUG_MODES",
    "TRAINING_MODES",
    "AnomalyDataset",
    "AugmentParams",
    "DatasetSpec",
    "Manifest",
    "Sample",
    "SyntheticConfig",
    "apply_augment",
    "apply_spatial",
    "draw_augment_params",
    "format_summary",
    "get_layout",
    "list_layouts",
    "list_textures",
    "load_image",
    "load_mask",
    "make_default_datasets",
    "make_fewshot_manifest",
    "make_split_file",
    "make_synthetic_dataset",
    "manifest_sha256",
    "normalize",
    "read_dataset",
    "read_manifest",
    "summarize",
    "write_manifest",
]
