"""Fixtures of the data-layer tests: tiny image writers and the default synthetic datasets (built once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aaclip_xattn.data import make_default_datasets


def _write_image(path: Path, size: tuple[int, int], value: int = 128, *, mode: str = "RGB") -> Path:
    """Write a small image of ``size`` (W, H) whose pixels encode their position (so pairs are checkable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = (np.add.outer(np.arange(height), np.arange(width)) * 7 + value) % 256
    array = ramp.astype(np.uint8)
    if mode == "RGB":
        array = np.stack([array, 255 - array, np.full_like(array, value)], axis=-1)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _write_mask(
    path: Path, size: tuple[int, int], value: int = 255, box: tuple[int, int, int, int] | None = None
) -> Path:
    """Write an ``L`` mask of ``size`` (W, H) with ``value`` inside ``box`` (left, top, right, bottom)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    array = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box or (1, 1, width // 2, height // 2)
    array[top:bottom, left:right] = value
    Image.fromarray(array, mode="L").save(path)
    return path


@pytest.fixture
def write_image():
    """Return the image writer ``write_image(path, (W, H), value=128, mode="RGB")``."""
    return _write_image


@pytest.fixture
def write_mask():
    """Return the mask writer ``write_mask(path, (W, H), value=255, box=None)``."""
    return _write_mask


@pytest.fixture(scope="session")
def default_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two default synthetic datasets, generated once per test session (a few seconds)."""
    root = tmp_path_factory.mktemp("synthetic_defaults")
    make_default_datasets(root)
    return root
