"""Determinism in one place: global seeding for entry points and named, independent RNG streams."""

from __future__ import annotations

import os
import random
from typing import Final, Literal

import numpy as np
import torch

__all__ = ["STREAMS", "make_generator", "make_numpy_generator", "seed_everything", "stream_seed"]

#: Named streams. Every arm of one comparison derives the same stream from the same seed, so the
#: data order and the augmentation draws are identical across arms.
STREAMS: Final = ("split", "data_order", "augment", "init", "bootstrap", "synthetic")


def stream_seed(seed: int, stream: str, *extra: int) -> int:
    """Return a 63-bit integer seed for ``(seed, stream, *extra)`` via numpy's ``SeedSequence``.

    ``extra`` distinguishes sub-streams (e.g. epoch and sample index for augmentation), so that a
    sample's random draws do not depend on worker scheduling or on which other samples were drawn.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown RNG stream {stream!r}; valid streams: {', '.join(STREAMS)}")
    entropy = [int(seed), STREAMS.index(stream), *(int(e) for e in extra)]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seeds must be non-negative integers, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def make_generator(
    seed: int, stream: str, *extra: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """Return a ``torch.Generator`` seeded for the named stream."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, stream, *extra))
    return gen


def make_numpy_generator(seed: int, stream: str, *extra: int) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` seeded for the named stream."""
    return np.random.default_rng(stream_seed(seed, stream, *extra))


def seed_everything(seed: int, *, deterministic: bool | Literal["warn"] = "warn") -> None:
    """Seed python, numpy and torch and request deterministic algorithms.

    Call once per entry point (CLI, workflow script), never from library code. ``deterministic="warn"``
    follows the reference: deterministic kernels where torch has them, a warning where it does not
    (some torch versions have no deterministic bilinear-upsample backward on CUDA).
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
