"""The four arms of one comparison (DESIGN.md "The arms"): what each starts from and which model it builds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

__all__ = ["ArmSpec", "get_arm", "list_arms"]


@dataclass(frozen=True)
class ArmSpec:
    """One arm of the comparison.

    Attributes:
        name: Registry name (also the run directory name).
        kind: Model kind passed to ``create_model``: ``"baseline"`` or ``"xattn"``.
        from_base: Whether the arm starts from that seed's ``baseline`` adapters and optimizer state.
        role: One line saying why the arm exists.
    """

    name: str
    kind: str
    from_base: bool
    role: str


_ARMS: Final[dict[str, ArmSpec]] = {
    "baseline": ArmSpec(
        "baseline",
        "baseline",
        False,
        "AA-CLIP baseline: fresh adapters, stage 1 then stage 2 (seed guide step 1)",
    ),
    "xattn_from_base": ArmSpec(
        "xattn_from_base",
        "xattn",
        True,
        "cross-attention on top of the baseline's adapters and optimizer state (seed guide steps 2-4)",
    ),
    "xattn_scratch": ArmSpec(
        "xattn_scratch",
        "xattn",
        False,
        "cross-attention model trained from fresh adapters (seed guide step 10)",
    ),
    "baseline_continued": ArmSpec(
        "baseline_continued",
        "baseline",
        True,
        "control: the baseline trained again from its own adapters, same budget as xattn_from_base",
    ),
}


def list_arms() -> list[str]:
    """Return the arm names in registry order."""
    return list(_ARMS)


def get_arm(name: str) -> ArmSpec:
    """Return a copy of the arm named ``name``.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if name not in _ARMS:
        raise ValueError(f"unknown arm {name!r}; valid arms: {', '.join(_ARMS)}")
    return dataclasses.replace(_ARMS[name])
