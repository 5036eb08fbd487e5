"""Preprocessing (bicubic resize, CLIP normalisation, binarised masks) and the reference's seeded joint augmentation.

Images are decoded and resized once into ``uint8 (3, S, S)`` tensors (`load_image`), which
`AnomalyDataset` caches in memory; `normalize` turns them into the model's float input. The
augmentation follows the reference (aaclip-method.md §7) but draws every random number from an
explicit ``torch.Generator`` (`aaclip_xattn.seeding.make_generator(seed, "augment", epoch, index)`),
so each sample's augmentation is a function of ``(seed, epoch, index)`` alone: identical for every
arm of a comparison and independent of DataLoader workers and of the other samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from ..seeding import make_generator
from .records import Sample

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "NOISE_AUG_MODES",
    "AnomalyDataset",
    "AugmentParams",
    "apply_augment",
    "apply_spatial",
    "draw_augment_params",
    "load_image",
    "load_mask",
    "normalize",
]

logger = logging.getLogger(__name__)

# The same values as backbone.CLIP_MEAN / CLIP_STD (a test asserts equality). They are repeated here
# because backbone.py imports open_clip (~3.5 s, ~850 MB per process), which data-only jobs
# (synthetic generation, manifests, `summarize`) must not pay; DESIGN keeps `data` independent of the model.
#: CLIP per-channel mean (RGB) of [0, 1] inputs.
CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
#: CLIP per-channel standard deviation (RGB).
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)

#: ``legacy``: the published log's Gaussian noise (std 1, fires with probability 0.3); ``off``: none.
NOISE_AUG_MODES: Final = ("off", "legacy")

# Reference probabilities and ranges (aaclip-method.md §7).
_COLOR_P: Final = 0.7
_COLOR_STRENGTH: Final = 0.5  # brightness, contrast and saturation factors in [1 - 0.5, 1 + 0.5]
_ROTATE_P: Final = 0.5
_ROTATE_DEG: Final = 30.0
_TRANSLATE_P: Final = 0.5
_TRANSLATE_FRAC: Final = 0.15
_FLIP_P: Final = 0.5
_NOISE_P: Final = 0.3  # the reference tests `rand > 0.7`, so its nominal p = 0.7 fires 30 % of the time
_NOISE_STD: Final = 1.0
_N_UNIFORMS: Final = 14


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Decode an image as RGB and resize it to ``size × size`` with PIL bicubic (aspect not kept, no crop).

    This equals the reference's PIL → RGB → ``Resize((S, S), BICUBIC)`` (torchvision resizes a PIL
    image with PIL itself); checked bit-exactly against the reference fixture.

    Args:
        path: Image file (grayscale, palette and RGBA images are converted to RGB).
        size: Output side S in pixels.

    Returns:
        ``uint8`` tensor ``(3, S, S)``.

    Raises:
        FileNotFoundError: If the file does not exist.
        RuntimeError: If it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot decode image ({exc})") from exc
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Scale a ``uint8`` image to [0, 1] and normalise with `CLIP_MEAN` / `CLIP_STD`.

    Args:
        image: ``uint8`` tensor ``(..., 3, H, W)``.

    Returns:
        ``float32`` tensor of the same shape.
    """
    if image.dtype != torch.uint8:
        raise ValueError(f"normalize expects a uint8 image tensor, got {image.dtype}")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (image.to(torch.float32) / 255.0 - mean) / std


def load_mask(path: str | os.PathLike | None, size: int) -> torch.Tensor:
    """Load a ground-truth mask, binarise it (value ≠ 0) and resize it nearest-neighbour to ``size``.

    Binarising happens before resizing, so a mask stored with any non-zero value (VisA uses small
    integers) gives the same result as a 0/255 one.

    Args:
        path: Mask file, or ``None`` for a normal image (all-zero mask).
        size: Output side S in pixels.

    Returns:
        ``float32`` tensor ``(1, S, S)`` with values in {0, 1}.

    Raises:
        FileNotFoundError: If ``path`` is given but missing.
        RuntimeError: If it cannot be decoded.
    """
    if path is None:
        return torch.zeros(1, size, size, dtype=torch.float32)
    return _load_mask_uint8(Path(path), size).to(torch.float32)


def _load_mask_uint8(path: Path, size: int) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RuntimeError(f"{path}: cannot decode mask ({exc})") from exc
    if array.ndim == 3:
        channels = array.shape[2]
        array = array[..., : 3 if channels == 4 else 1 if channels == 2 else channels].any(axis=2)
    binary = Image.fromarray(((array != 0) * 255).astype(np.uint8), mode="L")
    resized = np.asarray(binary.resize((size, size), Image.Resampling.NEAREST))
    return torch.from_numpy((resized != 0).astype(np.uint8))[None]


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation draw; ``None`` / ``False`` means "not applied".

    Attributes:
        brightness: Brightness factor in [0.5, 1.5] (stage 2 only).
        contrast: Contrast factor in [0.5, 1.5] (stage 2 only).
        saturation: Saturation factor in [0.5, 1.5] (stage 2 only).
        angle: Rotation in degrees, counter-clockwise, in [-30, 30].
        translate: ``(dx, dy)`` in pixels, each at most 15 % of the side.
        hflip: Horizontal flip.
        vflip: Vertical flip.
        noise: Add N(0, 1) noise to the normalised image (``noise_aug="legacy"`` only).
    """

    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    angle: float | None = None
    translate: tuple[int, int] | None = None
    hflip: bool = False
    vflip: bool = False
    noise: bool = False


def draw_augment_params(
    generator: torch.Generator, *, stage: int, image_size: int, noise_aug: str = "off"
) -> AugmentParams:
    """Draw one sample's augmentation from ``generator`` with the reference's probabilities.

    A fixed number of uniforms is drawn whatever is applied, so the stream layout never depends on
    the stage or mode. Translation is ``round(U(-0.15 S, 0.15 S))`` pixels, as torchvision's
    ``RandomAffine`` draws it.

    Args:
        generator: Explicit generator, e.g. ``make_generator(seed, "augment", epoch, index)``.
        stage: 1 (spatial only) or 2 (colour jitter as well).
        image_size: Side S of the (square) image, for the translation range.
        noise_aug: One of `NOISE_AUG_MODES`.

    Returns:
        The drawn parameters.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if noise_aug not in NOISE_AUG_MODES:
        raise ValueError(
            f"noise_aug {noise_aug!r} is not valid; expected one of {', '.join(NOISE_AUG_MODES)}"
        )
    u = torch.rand(_N_UNIFORMS, generator=generator, dtype=torch.float64).tolist()

    def factor(apply_u: float, value_u: float) -> float | None:
        if stage != 2 or apply_u >= _COLOR_P:
            return None
        return 1.0 + _COLOR_STRENGTH * (2.0 * value_u - 1.0)

    max_shift = _TRANSLATE_FRAC * image_size
    translate = None
    if u[8] < _TRANSLATE_P:
        translate = (int(round((2.0 * u[9] - 1.0) * max_shift)), int(round((2.0 * u[10] - 1.0) * max_shift)))
    return AugmentParams(
        brightness=factor(u[0], u[1]),
        contrast=factor(u[2], u[3]),
        saturation=factor(u[4], u[5]),
        angle=(2.0 * u[7] - 1.0) * _ROTATE_DEG if u[6] < _ROTATE_P else None,
        translate=translate,
        hflip=u[11] < _FLIP_P,
        vflip=u[12] < _FLIP_P,
        noise=noise_aug == "legacy" and u[13] < _NOISE_P,
    )


def apply_spatial(
    image: torch.Tensor, mask: torch.Tensor, params: AugmentParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply rotation, translation and flips to image and mask stacked as one tensor.

    Nearest interpolation, fill 0 (the CLIP mean colour for a normalised image, "normal" for the
    mask), as the reference does on its 4-channel stack; the mask therefore moves exactly with the image.

    Args:
        image: ``(C, H, W)`` float image (normally already normalised).
        mask: ``(1, H, W)`` float mask.
        params: From `draw_augment_params`.

    Returns:
        ``(image, mask)`` with the input shapes.
    """
    stack = torch.cat([image, mask.to(image.dtype)], dim=0)
    if params.angle is not None:
        stack = TF.rotate(stack, params.angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
    if params.translate is not None:
        stack = TF.affine(
            stack,
            angle=0.0,
            translate=list(params.translate),
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST,
            fill=0.0,
        )
    if params.hflip:
        stack = TF.horizontal_flip(stack)
    if params.vflip:
        stack = TF.vertical_flip(stack)
    channels = image.shape[0]
    return stack[:channels], stack[channels:].to(mask.dtype)


def apply_augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    params: AugmentParams,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a cached ``uint8`` image and its mask; return the normalised float image and the mask.

    Order: colour jitter (brightness, contrast, saturation, each if drawn) on the ``uint8`` image →
    `normalize` → `apply_spatial` → legacy Gaussian noise. Deviation from the reference (documented):
    the reference jitters the PIL image *before* resizing; here it jitters the cached resized image,
    which is what makes the ``uint8`` cache possible. The three adjustments are pointwise or use
    image-wide statistics, so the difference is only the resampling order.

    Args:
        image: ``uint8`` ``(3, S, S)``.
        mask: ``(1, S, S)`` mask in {0, 1}.
        params: From `draw_augment_params`.
        generator: Source of the noise when ``params.noise`` (required then).

    Returns:
        ``(image float32 (3, S, S), mask float32 (1, S, S))``.
    """
    if params.brightness is not None:
        image = TF.adjust_brightness(image, params.brightness)
    if params.contrast is not None:
        image = TF.adjust_contrast(image, params.contrast)
    if params.saturation is not None:
        image = TF.adjust_saturation(image, params.saturation)
    out_image, out_mask = apply_spatial(normalize(image), mask.to(torch.float32), params)
    if params.noise:
        if generator is None:
            raise ValueError("apply_augment: params.noise is set but no generator was given")
        out_image = out_image + _NOISE_STD * torch.randn(out_image.shape, generator=generator)
    return out_image, out_mask


class AnomalyDataset(Dataset):
    """Samples → model inputs, with an in-memory ``uint8`` cache and seeded per-sample augmentation.

    Items are ``{"image": (3, S, S) float32, "mask": (1, S, S) float32, "label": int,
    "category": str, "index": int, "image_path": str}``. With ``augment=True`` the draws of item
    ``i`` in epoch ``e`` come from ``make_generator(seed, "augment", e, i)``; call `set_epoch` before
    each epoch. Decoded and resized images are cached per process; call `preload` before forking
    DataLoader workers to share one cache.

    Args:
        samples: Samples to serve, in order.
        image_size: Side S the images are resized to.
        stage: 1 (spatial augmentation) or 2 (colour jitter as well).
        augment: Switch augmentation on; ``False`` returns the plain preprocessed sample.
        seed: Seed of the ``augment`` stream (the run's seed).
        noise_aug: One of `NOISE_AUG_MODES`.
        cache: Keep decoded images in memory.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        *,
        stage: int = 2,
        augment: bool = False,
        seed: int = 0,
        noise_aug: str = "off",
        cache: bool = True,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"AnomalyDataset: stage must be 1 or 2, got {stage!r}")
        if noise_aug not in NOISE_AUG_MODES:
            raise ValueError(
                f"AnomalyDataset: noise_aug {noise_aug!r} is not valid; expected one of {', '.join(NOISE_AUG_MODES)}"
            )
        if int(image_size) < 1:
            raise ValueError(f"AnomalyDataset: image_size must be positive, got {image_size!r}")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.stage = stage
        self.augment = bool(augment)
        self.seed = int(seed)
        self.noise_aug = noise_aug
        self.cache = cache
        self.epoch = 0
        self._images: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (non-negative)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def preload(self) -> None:
        """Decode and cache every image and mask now."""
        for index in range(len(self)):
            self._load(index)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._images:
            return self._images[index], self._masks[index]
        sample = self.samples[index]
        image = load_image(sample.image_path, self.image_size)
        if sample.mask_path is None:
            mask = torch.zeros(1, self.image_size, self.image_size, dtype=torch.uint8)
        else:
            mask = _load_mask_uint8(sample.mask_path, self.image_size)
        if self.cache:
            self._images[index] = image
            self._masks[index] = mask
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask = self._load(index)
        if self.augment:
            generator = make_generator(self.seed, "augment", self.epoch, index)
            params = draw_augment_params(
                generator, stage=self.stage, image_size=self.image_size, noise_aug=self.noise_aug
            )
            out_image, out_mask = apply_augment(image, mask, params, generator=generator)
        else:
            out_image, out_mask = normalize(image), mask.to(torch.float32)
        sample = self.samples[index]
        return {
            "image": out_image,
            "mask": out_mask,
            "label": sample.label,
            "category": sample.category,
            "index": index,
            "image_path": str(sample.image_path),
        }
