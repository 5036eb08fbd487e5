"""Embedded synthetic anomaly datasets in the exact MVTec AD layout, built from scikit-image's bundled images.

Each category is a texture source: one of the images scikit-image ships (and can load offline),
optionally a texture-like region of it and a tint for grayscale sources. Normal images are random
crops of that region, rotated by a multiple of 90° and optionally mirrored, resized to the image size,
with mild photometric variation. Anomalous images are normal images with one synthesised defect
(``scratch``, ``hole``, ``stain`` or ``cutpaste``) whose mask is exactly the set of pixels the defect
wrote. Everything is a function of the config (seed included): the same config gives byte-identical
files.

Two default datasets with disjoint categories and source images, `DEFAULT_SYNTHETIC_DATASETS`, let the
default study train on one and test zero-shot on the other (as the paper trains on VisA and tests on
MVTec AD).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

from .. import __version__
from ..fileio import atomic_write_bytes, write_json
from ..seeding import make_numpy_generator

__all__ = [
    "DEFAULT_SYNTHETIC_DATASETS",
    "DEFECT_TYPES",
    "SYNTHETIC_FORMAT",
    "SyntheticConfig",
    "TextureSource",
    "get_texture",
    "list_textures",
    "make_default_datasets",
    "make_synthetic_dataset",
]

logger = logging.getLogger(__name__)

#: Format tag written to ``dataset.json``.
SYNTHETIC_FORMAT: Final = "aaclip_xattn.synthetic/1"
#: Defect types the generator can synthesise.
DEFECT_TYPES: Final = ("scratch", "hole", "stain", "cutpaste")

_SPLIT_TRAIN_GOOD: Final = 0
_SPLIT_TEST_GOOD: Final = 1
_SPLIT_TEST_ANOMALOUS: Final = 2


@dataclass(frozen=True)
class TextureSource:
    """Where a synthetic category's texture comes from.

    Attributes:
        image: Name of a ``skimage.data`` function that loads without a download.
        region: ``(top, left, bottom, right)`` as fractions of the source image.
        tint: RGB multipliers applied to grayscale sources (colour sources ignore it).
        crop: Largest crop side, in source pixels, before resizing to the image size.
    """

    image: str
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: int = 256


_TEXTURES: Final[dict[str, TextureSource]] = {
    # default training dataset
    "brick": TextureSource("brick", tint=(0.95, 0.62, 0.5)),
    "grass": TextureSource("grass", tint=(0.62, 0.9, 0.5)),
    "wood": TextureSource("coffee", region=(0.0, 0.8, 0.55, 1.0)),
    "fabric": TextureSource("astronaut", region=(0.72, 0.03, 0.97, 0.2)),
    # default test dataset
    "gravel": TextureSource("gravel", tint=(0.9, 0.84, 0.72)),
    "moon": TextureSource("moon"),
    "tissue": TextureSource("immunohistochemistry"),
    "stars": TextureSource("hubble_deep_field"),
    "fur": TextureSource("chelsea", region=(0.0, 0.35, 0.25, 0.65)),
    "fundus": TextureSource("retina", region=(0.25, 0.45, 0.5, 0.7)),
    "paper": TextureSource("text", tint=(1.0, 0.96, 0.86)),
    "coins": TextureSource("coins", tint=(0.92, 0.86, 0.7)),
    # extra sources, usable in a custom config
    "lawn": TextureSource("camera", region=(0.85, 0.78, 1.0, 1.0), tint=(0.7, 0.9, 0.6)),
    "page": TextureSource("page", region=(0.25, 0.0, 0.8, 1.0)),
    "sky": TextureSource("rocket", region=(0.0, 0.3, 0.3, 0.5)),
}


def list_textures() -> list[str]:
    """Return the names of the texture sources a synthetic category may use."""
    return list(_TEXTURES)


def get_texture(name: str) -> TextureSource:
    """Return the texture source called ``name``.

    Raises:
        ValueError: If the name is unknown (the message lists the valid ones).
    """
    if name not in _TEXTURES:
        raise ValueError(f"unknown synthetic category {name!r}; valid categories: {', '.join(_TEXTURES)}")
    return _TEXTURES[name]


@dataclass(frozen=True)
class SyntheticConfig:
    """What a synthetic dataset contains.

    Attributes:
        categories: Category names, each a texture source from `list_textures()`.
        image_size: Side of the square images in pixels.
        n_train_good: Normal images per category in ``train/good``.
        n_test_good: Normal images per category in ``test/good``.
        n_test_anomalous: Anomalous images per category, spread round-robin over ``defect_types``.
        defect_types: Defects to synthesise, from `DEFECT_TYPES`.
        seed: Seed of the ``synthetic`` RNG stream.
    """

    categories: tuple[str, ...]
    image_size: int = 128
    n_train_good: int = 8
    n_test_good: int = 16
    n_test_anomalous: int = 16
    defect_types: tuple[str, ...] = DEFECT_TYPES
    seed: int = 0

    def __post_init__(self) -> None:
        categories = (self.categories,) if isinstance(self.categories, str) else tuple(self.categories)
        defects = (self.defect_types,) if isinstance(self.defect_types, str) else tuple(self.defect_types)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "defect_types", defects)
        if not categories:
            raise ValueError(
                "synthetic config: 'categories' is empty; give at least one of " + ", ".join(_TEXTURES)
            )
        for name in categories:
            get_texture(name)
        if len(set(categories)) != len(categories):
            raise ValueError(f"synthetic config: 'categories' has duplicates: {list(categories)}")
        if not defects:
            raise ValueError(f"synthetic config: 'defect_types' is empty; valid: {', '.join(DEFECT_TYPES)}")
        bad = [d for d in defects if d not in DEFECT_TYPES]
        if bad or len(set(defects)) != len(defects):
            raise ValueError(
                f"synthetic config: 'defect_types' {list(defects)} is not valid; expected distinct values "
                f"from {', '.join(DEFECT_TYPES)}"
            )
        for key, low in (
            ("image_size", 32),
            ("n_train_good", 0),
            ("n_test_good", 1),
            ("n_test_anomalous", 1),
            ("seed", 0),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"synthetic config: {key!r} must be an integer >= {low}, got {value!r}")
        if self.image_size > 1024:
            raise ValueError(f"synthetic config: 'image_size' must be <= 1024, got {self.image_size}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SyntheticConfig:
        """Build a config from a mapping, rejecting unknown keys.

        Args:
            mapping: Keys are the field names; missing keys take their defaults (``categories`` is required).

        Returns:
            The validated config.

        Raises:
            ValueError: On unknown keys, a missing ``categories`` or an invalid value.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(valid))
        if unknown:
            raise ValueError(f"synthetic config: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        if "categories" not in mapping:
            raise ValueError("synthetic config: missing key 'categories'")
        values = dict(mapping)
        for key in ("categories", "defect_types"):
            if key in values and not isinstance(values[key], str):
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready mapping (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["categories"] = list(self.categories)
        out["defect_types"] = list(self.defect_types)
        return out


#: The default study's datasets: train on ``synth_train`` (4 categories), test zero-shot on
#: ``synth_test`` (8 categories; disjoint categories and source images).
DEFAULT_SYNTHETIC_DATASETS: Final[Mapping[str, SyntheticConfig]] = {
    "synth_train": SyntheticConfig(categories=("brick", "grass", "wood", "fabric"), seed=0),
    "synth_test": SyntheticConfig(
        categories=("gravel", "moon", "tissue", "stars", "fur", "fundus", "paper", "coins"), seed=1
    ),
}


# ----------------------------------------------------------------------------------------- textures


def _load_region(name: str) -> np.ndarray:
    """Return the category's source region as float32 RGB in [0, 255]."""
    texture = _TEXTURES[name]
    try:
        array = np.asarray(getattr(skdata, texture.image)())
    except Exception as exc:  # noqa: BLE001 - any loader failure gets one clear message
        raise RuntimeError(
            f"synthetic category {name!r}: cannot load skimage.data.{texture.image}() ({exc})"
        ) from exc
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    array = array.astype(np.float32)
    if array.ndim == 2:
        array = array[..., None] * np.asarray(texture.tint, dtype=np.float32)
    array = array[..., :3]
    height, width = array.shape[:2]
    top, left, bottom, right = texture.region
    region = array[int(top * height) : int(bottom * height), int(left * width) : int(right * width)]
    return np.ascontiguousarray(np.clip(region, 0, 255))


class _Sources:
    """Source regions loaded once per generation call (no module-level cache)."""

    def __init__(self) -> None:
        self._regions: dict[str, np.ndarray] = {}

    def region(self, name: str) -> np.ndarray:
        if name not in self._regions:
            self._regions[name] = _load_region(name)
        return self._regions[name]


def _texture_patch(sources: _Sources, name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Crop, rotate/mirror and resize a patch of ``name``'s texture to ``(size, size, 3)`` float32."""
    region = sources.region(name)
    height, width = region.shape[:2]
    side_max = min(height, width, _TEXTURES[name].crop)
    side = max(8, int(round(side_max * rng.uniform(0.7, 1.0))))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    patch = region[top : top + side, left : left + side]
    patch = np.rot90(patch, k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    image = Image.fromarray(np.clip(np.rint(patch), 0, 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _normal_image(sources: _Sources, name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A normal image: texture patch with mild brightness/contrast change and sensor noise, uint8."""
    patch = _texture_patch(sources, name, size, rng)
    gain = rng.uniform(0.92, 1.08)
    contrast = rng.uniform(0.9, 1.1)
    mean = patch.mean()
    patch = (patch - mean) * contrast + mean * gain
    patch = patch + rng.normal(0.0, 2.0, size=patch.shape)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- defects


def _blob_mask(size: int, rng: np.random.Generator, radius_frac: tuple[float, float]) -> np.ndarray:
    """An irregular star-convex blob as a boolean ``(size, size)`` mask."""
    radius = size * rng.uniform(*radius_frac)
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    n = 14
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.55, 1.0, n)
    points = [
        (float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii, strict=True)
    ]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas) > 0


def _scratch(image: np.ndarray, rng: np.random.Generator, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    n_points = int(rng.integers(3, 6))
    start = rng.uniform(0.15 * size, 0.85 * size, 2)
    heading = rng.uniform(0, 2 * np.pi)
    step = size * rng.uniform(0.08, 0.16)
    points = [tuple(float(v) for v in start)]
    for _step in range(n_points - 1):
        heading += rng.uniform(-0.5, 0.5)
        start = np.clip(start + step * np.array([np.cos(heading), np.sin(heading)]), 0, size - 1)
        points.append((float(start[0]), float(start[1])))
    width = max(1, int(round(size * rng.uniform(0.012, 0.03))))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=width, joint="curve")
    mask = np.asarray(canvas) > 0
    bright = image.mean() < 128
    level = rng.uniform(215, 250) if bright else rng.uniform(5, 40)
    value = np.clip(level + rng.normal(0, 6, size=(int(mask.sum()), 3)), 0, 255)
    out = image.astype(np.float32)
    out[mask] = value
    return out, mask


def _hole(image: np.ndarray, rng: np.random.Generator, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    mask = _blob_mask(image.shape[0], rng, (0.05, 0.11))
    out = image.astype(np.float32)
    darkness = rng.uniform(0.08, 0.25)
    light = rng.uniform(170, 220)
    if out[mask].mean() < 70:  # on a dark texture a hole shows the light background behind it
        out[mask] = light + rng.normal(0, 4, size=(int(mask.sum()), 3))
    else:
        out[mask] = out[mask] * darkness + rng.uniform(0, 12)
    return out, mask


def _stain(image: np.ndarray, rng: np.random.Generator, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    mask = _blob_mask(image.shape[0], rng, (0.08, 0.16))
    hue = rng.uniform(0, 1)
    colour = np.asarray(
        Image.new("HSV", (1, 1), (int(hue * 255), 220, 210)).convert("RGB"), dtype=np.float32
    )[0, 0]
    alpha = rng.uniform(0.55, 0.8)
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out, mask


def _cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    sources: _Sources,
    category: str,
    categories: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    others = [c for c in categories if c != category]
    donor = others[int(rng.integers(0, len(others)))] if others else category
    patch = _normal_image(sources, donor, size, rng).astype(np.float32)
    if donor == category:
        patch = 255.0 - patch  # a single-category dataset pastes its own texture, inverted
    height = int(size * rng.uniform(0.12, 0.28))
    width = int(size * rng.uniform(0.12, 0.28))
    top = int(rng.integers(0, size - height + 1))
    left = int(rng.integers(0, size - width + 1))
    src_top = int(rng.integers(0, size - height + 1))
    src_left = int(rng.integers(0, size - width + 1))
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, left : left + width] = True
    out = image.astype(np.float32)
    out[mask] = patch[src_top : src_top + height, src_left : src_left + width].reshape(-1, 3)
    return out, mask


_DEFECTS: Final = {"scratch": _scratch, "hole": _hole, "stain": _stain, "cutpaste": _cutpaste}
assert tuple(_DEFECTS) == DEFECT_TYPES


def _anomalous_image(
    sources: _Sources,
    category: str,
    defect: str,
    size: int,
    rng: np.random.Generator,
    categories: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint8 (S, S, 3), mask bool (S, S))``; the mask is exactly the changed pixels."""
    base = _normal_image(sources, category, size, rng)
    for _attempt in range(8):
        out, region = _DEFECTS[defect](base, rng, sources=sources, category=category, categories=categories)
        image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        changed = (image != base).any(axis=2)
        # A pixel whose defect value happens to round to its old value is not part of the anomaly.
        mask = region & changed
        if mask.sum() >= max(4, 0.5 * region.sum()):
            return image, mask
    raise RuntimeError(
        f"synthetic {category}/{defect}: could not synthesise a visible defect"
    )  # pragma: no cover


# -------------------------------------------------------------------------------------------- writing


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1, optimize=False)
    return buffer.getvalue()


def _rng(
    cfg: SyntheticConfig, category: str, split_code: int, defect_code: int, index: int
) -> np.random.Generator:
    return make_numpy_generator(
        cfg.seed, "synthetic", zlib.crc32(category.encode()), split_code, defect_code, index
    )


def make_synthetic_dataset(
    out_dir: str | os.PathLike, cfg: SyntheticConfig, *, overwrite: bool = False
) -> Path:
    """Write a synthetic dataset in the exact MVTec AD layout.

    Files: ``<cat>/train/good/000.png``, ``<cat>/test/good/000.png``, ``<cat>/test/<defect>/000.png``,
    ``<cat>/ground_truth/<defect>/000_mask.png`` (0/255, ``L`` mode) and ``dataset.json`` (format,
    config, package version). Anomalous image ``i`` of a category gets ``cfg.defect_types[i % n]``.
    Every image is drawn from its own stream ``(seed, category, split, defect, index)``, so a
    category's images do not depend on the other categories. Writes are atomic per file.

    Args:
        out_dir: Dataset root to create.
        cfg: What to generate.
        overwrite: Replace an existing synthetic dataset (one holding our ``dataset.json``).

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: If ``out_dir`` is not empty and not replaceable.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not (overwrite and (out_dir / "dataset.json").is_file()):
            hint = (
                "pass overwrite=True (--overwrite) to replace it"
                if (out_dir / "dataset.json").is_file()
                else ("choose an empty or new folder")
            )
            raise FileExistsError(f"{out_dir}: exists and is not empty; {hint}")
        shutil.rmtree(out_dir)
    size = cfg.image_size
    sources = _Sources()
    n_files = 0
    for category in cfg.categories:
        cat_dir = out_dir / category
        for split, split_code, count in (
            ("train", _SPLIT_TRAIN_GOOD, cfg.n_train_good),
            ("test", _SPLIT_TEST_GOOD, cfg.n_test_good),
        ):
            for index in range(count):
                image = _normal_image(sources, category, size, _rng(cfg, category, split_code, 0, index))
                atomic_write_bytes(cat_dir / split / "good" / f"{index:03d}.png", _png_bytes(image))
                n_files += 1
        per_defect: dict[str, int] = {}
        for index in range(cfg.n_test_anomalous):
            defect = cfg.defect_types[index % len(cfg.defect_types)]
            number = per_defect.get(defect, 0)
            per_defect[defect] = number + 1
            rng = _rng(cfg, category, _SPLIT_TEST_ANOMALOUS, DEFECT_TYPES.index(defect), number)
            image, mask = _anomalous_image(sources, category, defect, size, rng, cfg.categories)
            atomic_write_bytes(cat_dir / "test" / defect / f"{number:03d}.png", _png_bytes(image))
            atomic_write_bytes(
                cat_dir / "ground_truth" / defect / f"{number:03d}_mask.png",
                _png_bytes(mask.astype(np.uint8) * 255),
            )
            n_files += 2
        logger.info(
            "synthetic %s: %d train/good, %d test/good, %d anomalous (%s)",
            category,
            cfg.n_train_good,
            cfg.n_test_good,
            cfg.n_test_anomalous,
            ", ".join(f"{d} {n}" for d, n in per_defect.items()),
        )
    write_json(
        out_dir / "dataset.json",
        {"format": SYNTHETIC_FORMAT, "layout": "mvtec", "config": cfg.to_dict(), "version": __version__},
    )
    logger.info("wrote synthetic dataset %s (%d image files)", out_dir, n_files)
    return out_dir


def make_default_datasets(out_root: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write every dataset of `DEFAULT_SYNTHETIC_DATASETS` to ``out_root/<name>``.

    Args:
        out_root: Parent folder.
        overwrite: Replace existing synthetic datasets.

    Returns:
        Dataset name → root.
    """
    out_root = Path(out_root)
    return {
        name: make_synthetic_dataset(out_root / name, cfg, overwrite=overwrite)
        for name, cfg in DEFAULT_SYNTHETIC_DATASETS.items()
    }
