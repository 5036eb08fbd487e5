"""Exception and warning types that callers may need to catch by class."""

from __future__ import annotations

__all__ = ["CheckpointError", "NonFiniteLossError", "UndefinedMetricWarning"]


class CheckpointError(RuntimeError):
    """A checkpoint file exists but its contents do not fit the model (shapes, keys, truncation)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names stage, epoch and step."""


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. one class only) and was returned as NaN."""
