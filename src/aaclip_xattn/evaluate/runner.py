"""Per-category evaluation tables: load a checkpoint, score a test set, compute metrics, write CSV + sidecar.

One forward pass per test image and one metric pass per category: the text anchors (and, for
cross-attention models, the prompt embeddings) are computed once per category, the maps of the whole
category are kept as one float32 array, and :func:`~aaclip_xattn.evaluate.metrics.compute_pixel_metrics`
ranks them with a single sort.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from tqdm.auto import tqdm

from aaclip_xattn import __version__
from aaclip_xattn.checkpoint import (
    EPOCH_KEY,
    IMAGE_ADAPTER_KEY,
    IMAGE_CHECKPOINT_NAME,
    IMAGE_CROSS_ATTN_KEY,
    TEXT_ADAPTER_KEY,
    TEXT_CHECKPOINT_NAME,
    TEXT_CROSS_ATTN_KEY,
    load_adapter_state,
    load_checkpoint_file,
)
from aaclip_xattn.data.readers import read_dataset
from aaclip_xattn.data.records import DatasetSpec, Sample
from aaclip_xattn.data.transforms import load_image, load_mask, normalize
from aaclip_xattn.errors import CheckpointError
from aaclip_xattn.evaluate.metrics import (
    AUPRO_FPR_LIMIT,
    AUPRO_MODES,
    IMAGE_METRICS,
    METRIC_NAMES,
    compute_image_metrics,
    compute_pixel_metrics,
    mean_over_categories,
)
from aaclip_xattn.evaluate.scoring import (
    DOMAINS,
    FUSION_MODES,
    MASK_RULE,
    UPSAMPLE_RULE,
    category_text_inputs,
    fuse_image_scores,
    get_blur_settings,
    is_cross_attention_model,
    score_images,
)
from aaclip_xattn.fileio import read_json, sha256_bytes, sha256_file, write_csv, write_json
from aaclip_xattn.prompts import Descriptions

__all__ = [
    "COUNT_COLUMNS",
    "EVAL_COLUMNS",
    "MEAN_ROW",
    "SIDECAR_FORMAT",
    "EvalCheckpoints",
    "EvalConfig",
    "add_mean_row",
    "apply_checkpoints",
    "build_sidecar",
    "compute_test_list_sha256",
    "evaluate_checkpoint",
    "evaluate_run",
    "read_checkpoints",
    "write_eval_outputs",
]

logger = logging.getLogger(__name__)

#: Count columns of an evaluation table, before the metrics.
COUNT_COLUMNS: Final = ("category", "n_images", "n_normal", "n_anomalous")
#: Every column of an evaluation table, in order.
EVAL_COLUMNS: Final = COUNT_COLUMNS + METRIC_NAMES
#: ``category`` value of the per-dataset mean row (unweighted mean over categories, NaN skipped).
MEAN_ROW: Final = "mean"
#: Format tag of the JSON sidecar.
SIDECAR_FORMAT: Final = "aaclip_xattn.eval/1"
_OVERLAY_ALPHA: Final = 0.5


@dataclass(frozen=True)
class EvalConfig:
    """How a checkpoint is evaluated (the workflow's ``evaluate`` section; the CLI builds the same).

    Attributes:
        fusion: Image-score fusion: ``transductive`` (reference, per-category min-max, default) or ``none``.
        aupro_mode: ``exact`` or ``legacy200`` (only for matching published numbers).
        aupro_fpr_limit: Upper FPR bound of AUPRO, in (0, 1].
        domain: ``industrial`` (blur 7/σ 1, 0.5/0.5 fusion) or ``medical`` (blur 9/σ 1.5, map-only fusion).
        batch_size: Test images per forward pass.
        device: Torch device string (``cpu``, ``cuda``, ``cuda:1``).
        amp: bfloat16 autocast for the forward pass (a speed option, not a reproduction setting).
        save_maps: Overlay PNGs to write per category (0 = none; needs a maps directory).
        legacy_zero: Score single-class categories' image metrics 0 instead of NaN, as the reference
            does; only for reproducing its log means.
        descriptions: Class-descriptions JSON file (``None``: category names in words).
        num_workers: DataLoader workers decoding test images.
    """

    fusion: str = "transductive"
    aupro_mode: str = "exact"
    aupro_fpr_limit: float = AUPRO_FPR_LIMIT
    domain: str = "industrial"
    batch_size: int = 8
    device: str = "cpu"
    amp: bool = False
    save_maps: int = 0
    legacy_zero: bool = False
    descriptions: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ValueError(
                f"EvalConfig.fusion must be one of {', '.join(FUSION_MODES)}; got {self.fusion!r}"
            )
        if self.aupro_mode not in AUPRO_MODES:
            raise ValueError(
                f"EvalConfig.aupro_mode must be one of {', '.join(AUPRO_MODES)}; got {self.aupro_mode!r}"
            )
        limit = self.aupro_fpr_limit
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0.0 < float(limit) <= 1.0:
            raise ValueError(f"EvalConfig.aupro_fpr_limit must be a number in (0, 1]; got {limit!r}")
        object.__setattr__(self, "aupro_fpr_limit", float(limit))
        if self.domain not in DOMAINS:
            raise ValueError(f"EvalConfig.domain must be one of {', '.join(DOMAINS)}; got {self.domain!r}")
        for name, low in (("batch_size", 1), ("save_maps", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EvalConfig.{name} must be an integer >= {low}; got {value!r}")
        for name in ("amp", "legacy_zero"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EvalConfig.{name} must be true or false; got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"EvalConfig.device must be a device string such as 'cpu' or 'cuda'; got {self.device!r}"
            )
        if self.descriptions is not None:
            if not isinstance(self.descriptions, str | os.PathLike):
                raise ValueError(
                    f"EvalConfig.descriptions must be a file path or null; got {self.descriptions!r}"
                )
            object.__setattr__(self, "descriptions", os.fspath(self.descriptions))

    @classmethod
    def field_names(cls) -> list[str]:
        """Return the valid keys of :meth:`from_mapping`."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> EvalConfig:
        """Build a config from a mapping; missing keys take defaults, unknown keys are an error.

        Raises:
            ValueError: Unknown key (the message lists the valid ones) or an invalid value.
        """
        unknown = sorted(set(mapping) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"evaluate config: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(cls.field_names())}"
            )
        return cls(**dict(mapping))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True)
class EvalCheckpoints:
    """The two checkpoint files of a model to evaluate, read once.

    Attributes:
        kind: ``baseline`` or ``xattn`` (cross-attention keys present in the files).
        text_path, image_path: The files.
        text, image: Their contents.
        text_sha256, image_sha256: sha256 of the files' bytes.
    """

    kind: str
    text_path: Path
    image_path: Path
    text: dict[str, Any]
    image: dict[str, Any]
    text_sha256: str
    image_sha256: str

    def record(self) -> dict[str, Any]:
        """Return the sidecar's ``checkpoint`` entry: image file path/sha256/epoch, the text file, the kind."""
        return {
            "path": str(self.image_path),
            "sha256": self.image_sha256,
            "epoch": _epoch(self.image),
            "kind": self.kind,
            "text_adapter": {
                "path": str(self.text_path),
                "sha256": self.text_sha256,
                "epoch": _epoch(self.text),
            },
        }


def _epoch(content: Mapping[str, Any]) -> int | None:
    epoch = content.get(EPOCH_KEY)
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def read_checkpoints(
    image_checkpoint: str | os.PathLike, text_checkpoint: str | os.PathLike | None = None
) -> EvalCheckpoints:
    """Read ``image_adapter.pth`` and its ``text_adapter.pth`` and detect baseline vs cross-attention.

    Args:
        image_checkpoint: The image checkpoint (``{"image_adapter": ..., "epoch": n, ...}``).
        text_checkpoint: The text checkpoint; default ``text_adapter.pth`` beside the image checkpoint.

    Returns:
        The files' contents and fingerprints; ``kind`` is ``xattn`` when ``image_cross_attn`` or
        ``text_cross_attn`` is present.

    Raises:
        FileNotFoundError: A file is missing (the message names the path expected).
        CheckpointError: A file is unreadable or lacks its adapter key, or only one of the two files
            carries cross-attention weights.
    """
    image_path = Path(image_checkpoint)
    if not image_path.is_file():
        raise FileNotFoundError(
            f"--checkpoint {image_path}: no such file (expected an {IMAGE_CHECKPOINT_NAME})"
        )
    text_path = (
        Path(text_checkpoint) if text_checkpoint is not None else image_path.with_name(TEXT_CHECKPOINT_NAME)
    )
    if not text_path.is_file():
        raise FileNotFoundError(
            f"{text_path}: no such file; the text checkpoint is expected beside the image checkpoint {image_path}"
        )
    image = load_checkpoint_file(image_path, expect_key=IMAGE_ADAPTER_KEY)
    text = load_checkpoint_file(text_path, expect_key=TEXT_ADAPTER_KEY)
    has_image_xattn, has_text_xattn = IMAGE_CROSS_ATTN_KEY in image, TEXT_CROSS_ATTN_KEY in text
    if has_image_xattn != has_text_xattn:
        have, lack = (image_path, text_path) if has_image_xattn else (text_path, image_path)
        key = TEXT_CROSS_ATTN_KEY if has_image_xattn else IMAGE_CROSS_ATTN_KEY
        raise CheckpointError(
            f"{have} holds cross-attention weights but {lack} has no {key!r}; "
            "both files of a cross-attention run carry them (were files of two runs mixed?)"
        )
    return EvalCheckpoints(
        kind="xattn" if has_image_xattn else "baseline",
        text_path=text_path,
        image_path=image_path,
        text=text,
        image=image,
        text_sha256=sha256_file(text_path),
        image_sha256=sha256_file(image_path),
    )


def apply_checkpoints(model: torch.nn.Module, checkpoints: EvalCheckpoints) -> None:
    """Load the adapters (and cross-attention modules) of ``checkpoints`` into ``model``, strictly.

    Raises:
        CheckpointError: Model kind and files disagree, or a key or shape does not fit the model (the
            message names the key, both shapes and the likely cause, e.g. another backbone).
    """
    model_kind = "xattn" if is_cross_attention_model(model) else "baseline"
    if model_kind != checkpoints.kind:
        raise CheckpointError(
            f"{checkpoints.image_path}: a {checkpoints.kind} checkpoint cannot be loaded into a {model_kind} model"
        )
    parts = [
        (TEXT_ADAPTER_KEY, checkpoints.text, checkpoints.text_path, checkpoints.text_sha256),
        (IMAGE_ADAPTER_KEY, checkpoints.image, checkpoints.image_path, checkpoints.image_sha256),
    ]
    if checkpoints.kind == "xattn":
        parts += [
            (TEXT_CROSS_ATTN_KEY, checkpoints.text, checkpoints.text_path, checkpoints.text_sha256),
            (IMAGE_CROSS_ATTN_KEY, checkpoints.image, checkpoints.image_path, checkpoints.image_sha256),
        ]
    for key, content, path, digest in parts:
        load_adapter_state(
            getattr(model, key),
            content[key],
            source=path,
            component=key,
            strict=True,
            sha256=digest,
            epoch=_epoch(content),
        )
        logger.info("loaded %s from %s", key, path)


# --------------------------------------------------------------------------------------------------
# evaluation


class _TestImages(torch.utils.data.Dataset):
    """Test samples → ``(uint8 image (3, S, S), bool mask (S, S))``; no augmentation."""

    def __init__(self, samples: Sequence[Sample], size: int) -> None:
        self.samples = list(samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = load_image(sample.image_path, self.size)
        mask = load_mask(sample.mask_path, self.size)[0] != 0
        return image, mask


def compute_test_list_sha256(samples: Sequence[Sample], root: str | os.PathLike | None = None) -> str:
    """Return the sha256 of a test list: sorted ``category, label, image path`` lines.

    Paths are taken relative to ``root`` (the dataset root; a JSONL file's folder) when they lie under
    it, so the fingerprint does not depend on where the dataset is mounted.
    """
    base = None if root is None else Path(root)
    if base is not None and base.is_file():
        base = base.parent
    lines = []
    for sample in samples:
        path = Path(sample.image_path)
        if base is not None:
            try:
                path = path.relative_to(base)
            except ValueError:
                pass
        lines.append(f"{sample.category}\t{sample.label}\t{path.as_posix()}")
    return sha256_bytes("\n".join(sorted(lines)).encode("utf-8"))


def evaluate_checkpoint(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    cfg: EvalConfig,
    *,
    categories: Sequence[str] | None = None,
    maps_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate a loaded model on test samples, one row per category.

    Args:
        model: ``AdaptedCLIP`` or ``AdaptedCLIPWithCrossAttention`` with its checkpoints loaded.
        samples: Test samples (any number of categories).
        cfg: Evaluation settings.
        categories: Categories to evaluate (default: all in ``samples``, sorted).
        maps_dir: Folder for overlay PNGs (``cfg.save_maps`` per category); ``None`` writes none.
        progress: Show a progress bar over batches.

    Returns:
        Rows with :data:`EVAL_COLUMNS` (no mean row; see :func:`add_mean_row`).

    Raises:
        ValueError: No samples, or a requested category has none.
    """
    if not samples:
        raise ValueError("evaluate_checkpoint: no test samples given")
    present = sorted({s.category for s in samples})
    wanted = present if categories is None else list(categories)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(
            f"categories {missing} have no test samples; categories present: {', '.join(present)}"
        )
    device = torch.device(cfg.device)
    model.eval()
    model.to(device)
    rows = []
    for category in wanted:
        subset = [s for s in samples if s.category == category]
        rows.append(_evaluate_category(model, category, subset, cfg, device, maps_dir, progress))
    return rows


def _evaluate_category(
    model: torch.nn.Module,
    category: str,
    samples: Sequence[Sample],
    cfg: EvalConfig,
    device: torch.device,
    maps_dir: str | os.PathLike | None,
    progress: bool,
) -> dict[str, Any]:
    size = int(model.image_size)
    n = len(samples)
    anchors, prompts = category_text_inputs(model, category)
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    raw = np.empty(n, dtype=np.float64)
    keep = min(cfg.save_maps, n) if maps_dir is not None else 0
    # Overlays of images spread over the category (normal and each defect folder), not just the first few.
    chosen = sorted({int(i) for i in np.linspace(0, n - 1, keep).round()}) if keep else []
    kept_images: dict[int, torch.Tensor] = {}
    loader = torch.utils.data.DataLoader(
        _TestImages(samples, size), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers
    )
    start = 0
    bar = tqdm(loader, desc=category, leave=False, disable=None if progress else True)
    for images_u8, batch_masks in bar:
        stop = start + images_u8.shape[0]
        images = normalize(images_u8).to(device, non_blocking=True)
        batch_maps, batch_raw = score_images(
            model, images, anchors, domain=cfg.domain, prompt_embeddings=prompts, amp=cfg.amp
        )
        maps[start:stop] = batch_maps.cpu().numpy()
        raw[start:stop] = batch_raw.cpu().numpy()
        masks[start:stop] = batch_masks.numpy()
        for index in chosen:
            if start <= index < stop:
                kept_images[index] = images_u8[index - start]
        start = stop
    labels = np.array([s.label for s in samples], dtype=np.int64)
    scores = fuse_image_scores(
        raw, maps.max(axis=(1, 2)), maps.min(axis=(1, 2)), fusion=cfg.fusion, domain=cfg.domain
    )
    row: dict[str, Any] = {
        "category": category,
        "n_images": n,
        "n_normal": int(np.count_nonzero(labels == 0)),
        "n_anomalous": int(np.count_nonzero(labels == 1)),
    }
    if cfg.legacy_zero and (row["n_normal"] == 0 or row["n_anomalous"] == 0):
        logger.warning("%s: single-label category scored 0 (legacy_zero), not NaN", category)
        row.update(dict.fromkeys(IMAGE_METRICS, 0.0))
    else:
        row.update(compute_image_metrics(scores, labels))
    if chosen:
        _save_overlays(
            Path(maps_dir),
            category,
            [samples[i] for i in chosen],
            [kept_images[i] for i in chosen],
            maps[chosen],
            masks[chosen],
            maps,
        )
    row.update(compute_pixel_metrics(maps, masks, aupro_mode=cfg.aupro_mode, fpr_limit=cfg.aupro_fpr_limit))
    del maps, masks
    logger.info(
        "%s: %d images, image AUROC %.4f, pixel AUROC %.4f, AUPRO %.4f (%s)",
        category,
        n,
        row["image_auroc"],
        row["pixel_auroc"],
        row["pixel_aupro"],
        cfg.aupro_mode,
    )
    return row


def _save_overlays(
    folder: Path,
    category: str,
    samples: Sequence[Sample],
    images: Sequence[torch.Tensor],
    maps: np.ndarray,
    masks: np.ndarray,
    all_maps: np.ndarray,
) -> None:
    """Write ``image | heat-map overlay | ground truth`` PNGs, the map scaled by the category's min-max."""
    from matplotlib import colormaps
    from PIL import Image

    from aaclip_xattn.fileio import atomic_write_bytes

    low, high = float(all_maps.min()), float(all_maps.max())
    scale = high - low if high > low else 1.0
    cmap = colormaps["jet"]
    for sample, image, amap, mask in zip(samples, images, maps, masks, strict=True):
        rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
        heat = cmap((amap - low) / scale)[..., :3] * 255.0
        overlay = (1 - _OVERLAY_ALPHA) * rgb + _OVERLAY_ALPHA * heat
        truth = np.repeat(mask[..., None].astype(np.float32) * 255.0, 3, axis=2)
        panel = np.concatenate([rgb, overlay, truth], axis=1).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(panel).save(buffer, format="PNG")
        name = f"{sample.defect_type}_{Path(sample.image_path).stem}.png"
        atomic_write_bytes(folder / category / name, buffer.getvalue())
    logger.info("wrote %d overlays of %s to %s", len(samples), category, folder / category)


def add_mean_row(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Append the unweighted mean over categories (NaN skipped) as a ``mean`` row.

    Returns:
        ``(rows + [mean row], skipped)`` where ``skipped[metric]`` counts the categories left out.
    """
    rows = [dict(r) for r in rows]
    means, skipped = mean_over_categories(rows, METRIC_NAMES)
    mean_row: dict[str, Any] = {"category": MEAN_ROW}
    for column in COUNT_COLUMNS[1:]:
        mean_row[column] = int(sum(int(r[column]) for r in rows))
    mean_row.update(means)
    return [*rows, mean_row], skipped


def build_sidecar(
    *,
    cfg: EvalConfig,
    model: torch.nn.Module,
    dataset: DatasetSpec,
    samples: Sequence[Sample],
    checkpoints: EvalCheckpoints,
    skipped: Mapping[str, int],
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the JSON sidecar of an evaluation table: conventions, test list, checkpoint, run identity."""
    descriptions = getattr(model, "descriptions", None)
    desc_sha = descriptions.sha256 if descriptions is not None else Descriptions(cfg.descriptions).sha256
    run = dict(run or {})
    return {
        "format": SIDECAR_FORMAT,
        "conventions": {
            "map_resolution": int(model.image_size),
            "blur": {"domain": cfg.domain, **get_blur_settings(cfg.domain)},
            "upsample": UPSAMPLE_RULE,
            "aupro_mode": cfg.aupro_mode,
            "aupro_fpr_limit": cfg.aupro_fpr_limit,
            "aupro_connectivity": 8,
            "ap_definition": "step (sum of delta recall x precision)",
            "threshold_rule": "score >= t at every distinct score",
            "fusion": cfg.fusion,
            "normalisation": "per-category min-max (maps: all pixels; raw image scores: all images)"
            if cfg.fusion == "transductive"
            else "none",
            "mask_rule": MASK_RULE,
            "undefined": "0 (legacy_zero)" if cfg.legacy_zero else "nan",
            "descriptions_sha256": desc_sha,
        },
        "test_dataset": {"name": dataset.name, "layout": dataset.layout, "root": str(dataset.root)},
        "test_list_sha256": compute_test_list_sha256(samples, dataset.root),
        "n_images": len(samples),
        "categories": sorted({s.category for s in samples}),
        "skipped_categories": dict(skipped),
        "checkpoint": checkpoints.record(),
        "run": {
            "arm": run.get("arm"),
            "seed": run.get("seed"),
            "train_dataset": run.get("train_dataset", run.get("dataset")),
            "shot": run.get("shot"),
        },
        "eval_config": cfg.to_dict(),
        "versions": {"aaclip_xattn": __version__, "torch": torch.__version__},
    }


def write_eval_outputs(
    csv_path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], sidecar: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write the table (``csv_path``) and its sidecar (same stem, ``.json``) atomically."""
    csv_path = Path(csv_path)
    json_path = csv_path.with_suffix(".json")
    write_csv(csv_path, rows, EVAL_COLUMNS)
    write_json(json_path, sidecar)
    logger.info("wrote %s and %s", csv_path, json_path)
    return csv_path, json_path


def model_options_from_run(hyper: Mapping[str, Any], descriptions: str | None = None) -> dict[str, Any]:
    """ModelConfig options of a run: its ``model_options`` and the descriptions it trained with.

    Args:
        hyper: The ``hyperparameters`` block of the run's ``run.json``.
        descriptions: A descriptions file that overrides the one the run trained with.
    """
    options = dict(hyper.get("model_options") or {})
    descriptions = descriptions if descriptions is not None else hyper.get("descriptions")
    if descriptions is not None:
        options["descriptions"] = descriptions
    return options


def _run_image_checkpoint(run_dir: Path, hyper: Mapping[str, Any]) -> Path:
    choice = hyper.get("evaluated_checkpoint", "last")
    if isinstance(choice, str) and choice.startswith("epoch") and choice[5:].isdigit():
        return run_dir / f"image_adapter_{int(choice[5:])}.pth"
    if choice not in (None, "last"):
        raise ValueError(
            f"{run_dir / 'run.json'}: evaluated_checkpoint {choice!r} is not 'last' or 'epoch<k>'"
        )
    return run_dir / IMAGE_CHECKPOINT_NAME


def evaluate_run(
    run_dir: str | os.PathLike,
    test_datasets: Sequence[DatasetSpec],
    out_dir: str | os.PathLike,
    cfg: EvalConfig,
    *,
    progress: bool = False,
) -> dict[str, Path]:
    """Evaluate one training run on each test dataset; write ``<out_dir>/<name>.csv`` and ``.json``.

    The model is rebuilt from the run's ``run.json`` hyperparameters (backbone, pretrained, image size,
    ``model_options`` and the training ``descriptions`` unless ``cfg.descriptions`` is set), the kind is read from the checkpoint keys (and must agree with the arm), and the
    run's ``text_adapter.pth`` + ``image_adapter.pth`` (or ``image_adapter_<k>.pth`` for
    ``evaluated_checkpoint: epoch<k>``) are loaded strictly.

    Args:
        run_dir: The run directory (``run.json`` and the checkpoints).
        test_datasets: Datasets to evaluate (their test split).
        out_dir: Output folder (overlays, when ``cfg.save_maps`` > 0, go to ``<out_dir>/<name>_maps/``).
        cfg: Evaluation settings.
        progress: Show progress bars.

    Returns:
        ``{test dataset name: csv path}``.

    Raises:
        FileNotFoundError: Missing ``run.json``, checkpoint or dataset.
        CheckpointError: Checkpoints that do not fit the model or contradict the run's arm.
        ValueError: Invalid run record values.
    """
    from aaclip_xattn.factory import create_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_json(run_dir / "run.json")
    hyper = run.get("hyperparameters") or {}
    checkpoints = read_checkpoints(_run_image_checkpoint(run_dir, hyper), run_dir / TEXT_CHECKPOINT_NAME)
    arm = run.get("arm")
    if isinstance(arm, str):
        expected = "xattn" if arm.startswith("xattn") else "baseline"
        if expected != checkpoints.kind:
            raise CheckpointError(
                f"{checkpoints.image_path}: run.json names arm {arm!r} ({expected}) but the checkpoint "
                f"files hold a {checkpoints.kind} model"
            )
    model = create_model(
        checkpoints.kind,
        backbone=hyper.get("backbone", "tiny"),
        pretrained=hyper.get("pretrained"),
        image_size=hyper.get("image_size"),
        device=cfg.device,
        **model_options_from_run(hyper, cfg.descriptions),
    )
    apply_checkpoints(model, checkpoints)
    written: dict[str, Path] = {}
    for spec in test_datasets:
        samples = read_dataset(spec.root, spec.layout, split="test")
        maps_dir = out_dir / f"{spec.name}_maps" if cfg.save_maps else None
        rows = evaluate_checkpoint(model, samples, cfg, maps_dir=maps_dir, progress=progress)
        table, skipped = add_mean_row(rows)
        sidecar = build_sidecar(
            cfg=cfg,
            model=model,
            dataset=spec,
            samples=samples,
            checkpoints=checkpoints,
            skipped=skipped,
            run=run,
        )
        written[spec.name] = write_eval_outputs(out_dir / f"{spec.name}.csv", table, sidecar)[0]
    return written
