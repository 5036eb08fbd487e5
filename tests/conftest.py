"""Shared fixtures: a factory of tiny AA-CLIP models (the embedded ``tiny`` backbone, seeded adapters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., Any]:
    """Return ``make(kind="baseline", seed=0, **options)`` building a fresh tiny model in eval mode.

    The backbone is the deterministic random ``tiny`` build, so two models share identical backbone
    weights; adapters are drawn from ``make_generator(seed, "init")``.
    """
    from aaclip_xattn.factory import create_model
    from aaclip_xattn.seeding import make_generator

    def make(kind: str = "baseline", seed: int = 0, **options: Any):
        return create_model(kind, "tiny", generator=make_generator(seed, "init"), **options).eval()

    return make
