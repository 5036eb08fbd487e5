"""One record type for every dataset layout (`Sample`) and the config entry naming a dataset (`DatasetSpec`)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["LAYOUTS", "SPLITS", "DatasetSpec", "Sample"]

#: Dataset layouts a reader exists for (see `readers.py`).
LAYOUTS: Final = ("mvtec", "visa", "btad", "mpdd", "jsonl")
#: Splits a reader can be asked for. The reference trains on the *test* split of the auxiliary dataset.
SPLITS: Final = ("train", "test")

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, whatever the layout it was read from.

    Attributes:
        image_path: Path of the image file.
        mask_path: Path of its ground-truth mask, or ``None`` for a normal image.
        label: 0 for normal, 1 for anomalous.
        category: Class / object name (e.g. ``bottle``).
        defect_type: Defect folder name (``good`` for normal images; ``anomaly`` where a layout has none).
        split: ``train`` or ``test``.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect_type: str
    split: str

    def __post_init__(self) -> None:
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise ValueError(f"{self.image_path}: label must be 0 or 1, got {self.label!r}")
        if not isinstance(self.image_path, Path):
            object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None and not isinstance(self.mask_path, Path):
            object.__setattr__(self, "mask_path", Path(self.mask_path))


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the config names it: ``{name, layout, root}``.

    Attributes:
        name: Short identifier used in result paths (letters, digits, ``_``, ``-``; no ``.`` or ``/``).
        layout: One of `LAYOUTS`.
        root: Dataset root folder (for ``jsonl``: the ``.jsonl`` file or a folder holding exactly one).
    """

    name: str
    layout: str
    root: Path

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"dataset name {self.name!r} is not valid: expected letters, digits, '_' or '-' "
                "(it becomes a path component, so no '.' or '/')"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(
                f"dataset {self.name!r}: unknown layout {self.layout!r}; valid layouts: {', '.join(LAYOUTS)}"
            )
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from a config mapping, rejecting unknown or missing keys.

        Args:
            mapping: ``{"name": ..., "layout": ..., "root": ...}``.

        Returns:
            The validated spec.

        Raises:
            ValueError: On unknown keys, missing keys, an invalid name or an unknown layout.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(valid))
        if unknown:
            raise ValueError(f"dataset entry: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
        missing = [key for key in valid if key not in mapping]
        if missing:
            raise ValueError(f"dataset entry {dict(mapping)!r}: missing key(s) {missing}")
        root = mapping["root"]
        if not isinstance(root, str | os.PathLike):
            raise ValueError(f"dataset {mapping['name']!r}: 'root' must be a path string, got {root!r}")
        return cls(name=mapping["name"], layout=mapping["layout"], root=Path(root))
