"""The three command-line programs (``train.py``, ``train_cross_attention.py``, ``inference.py``).

Each is also installed as a console script (``aaclip-train``, ``aaclip-train-xattn``,
``aaclip-inference``). The argument parsers live beside the code they drive (``train/cli.py``,
``evaluate/cli.py``); this module is the one place the entry points are named, and it imports them
lazily so that ``--help`` does not wait for heavy imports it does not need.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["inference_main", "train_cross_attention_main", "train_main"]


def train_main(argv: Sequence[str] | None = None) -> int:
    """Run ``train.py``: the baseline arm, or ``baseline_continued`` with ``--load_base_*`` flags."""
    from aaclip_xattn.train.cli import train_main as main

    return main(argv)


def train_cross_attention_main(argv: Sequence[str] | None = None) -> int:
    """Run ``train_cross_attention.py``: ``xattn_from_base`` (with ``--load_base_*``) or ``--scratch``."""
    from aaclip_xattn.train.cli import train_cross_attention_main as main

    return main(argv)


def inference_main(argv: Sequence[str] | None = None) -> int:
    """Run ``inference.py``: evaluate a checkpoint on a dataset and write the per-category table."""
    from aaclip_xattn.evaluate.cli import inference_main as main

    return main(argv)
