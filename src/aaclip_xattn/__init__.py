"""AA-CLIP baseline and cross-attention variant: faithful model, fair training, exact evaluation, honest stats."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
