"""Prompt sentences for AA-CLIP: state words, templates, and the class-description policy.

Default policy: a category is described by its own name in words (``metal_nut`` -> ``"metal nut"``).
A user may supply a JSON file (or mapping) of ``category -> description`` instead, e.g. to reproduce
the reference's hand-written table, which this project deliberately does not ship. Every arm of a
comparison must use the same descriptions; :attr:`Descriptions.sha256` is what runs record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "ABNORMAL_STATES",
    "NORMAL_STATES",
    "TEMPLATES",
    "Descriptions",
    "ReadOnlyMapping",
    "build_sentences",
    "category_to_words",
    "descriptions_sha256",
    "load_descriptions",
]

logger = logging.getLogger(__name__)

#: State phrases; ``{}`` takes the class description (method spec §3).
NORMAL_STATES: Final = ("{}", "a {}", "the {}")
ABNORMAL_STATES: Final = (
    "a damaged {}",
    "a broken {}",
    "a {} with flaw",
    "a {} with defect",
    "a {} with damage",
)
#: Templates; ``{}`` takes the state phrase.
TEMPLATES: Final = ("{}.", "a photo of {}.")


class ReadOnlyMapping(Mapping[str, str]):
    """An immutable, hashable, picklable copy of a ``str -> str`` mapping (unlike ``MappingProxyType``)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"ReadOnlyMapping({self._data!r})"


def category_to_words(category: str) -> str:
    """Turn a dataset folder name into words: underscores become spaces (``metal_nut`` -> ``metal nut``)."""
    words = " ".join(category.replace("_", " ").split())
    if not words:
        raise ValueError(f"category name {category!r} has no words to describe it")
    return words


def build_sentences(description: str) -> tuple[list[str], list[str]]:
    """Build the normal and abnormal prompt sentences for one class description.

    The order is state-major, template-minor, as in the reference: ``"dark bottle."``,
    ``"a photo of dark bottle."``, ``"a dark bottle."``, ...

    Args:
        description: the class description, e.g. ``"dark bottle"``.

    Returns:
        ``(normal, abnormal)``: 6 and 10 sentences.
    """
    normal = [template.format(state.format(description)) for state in NORMAL_STATES for template in TEMPLATES]
    abnormal = [
        template.format(state.format(description)) for state in ABNORMAL_STATES for template in TEMPLATES
    ]
    return normal, abnormal


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def descriptions_sha256(mapping: Mapping[str, str] | None) -> str:
    """Return the sha256 of the canonical JSON of a descriptions mapping.

    Canonical JSON: keys sorted, no whitespace, UTF-8. ``None`` (the category-name policy) hashes the
    JSON ``null``, so it differs from every user mapping, including an empty one.
    """
    return hashlib.sha256(_canonical_json(None if mapping is None else dict(mapping))).hexdigest()


def _validate_mapping(mapping: object, source: str) -> dict[str, str]:
    if not isinstance(mapping, Mapping):
        raise ValueError(
            f"{source}: expected a JSON object mapping category -> description, got {type(mapping).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{source}: entry {key!r} must map a category name to a non-empty string, got {value!r}"
            )
        out[key] = value
    return out


def load_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """Read a descriptions JSON file (``{"category": "description", ...}``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON or not a mapping of strings to non-empty strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"descriptions file {path} does not exist (expected JSON: category -> description)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"descriptions file {path} is not valid JSON ({exc})") from exc
    return _validate_mapping(data, f"descriptions file {path}")


class Descriptions:
    """The class-description policy actually used by a model.

    Args:
        source: ``None`` (category name in words), a path to a JSON file, or a mapping.
    """

    def __init__(self, source: str | os.PathLike | Mapping[str, str] | None = None) -> None:
        self.path: Path | None = None
        mapping: dict[str, str] | None
        if source is None:
            mapping = None
            self.origin = "category name in words"
        elif isinstance(source, Mapping):
            mapping = _validate_mapping(source, "descriptions mapping")
            self.origin = "mapping"
        else:
            self.path = Path(source)
            mapping = load_descriptions(self.path)
            self.origin = str(self.path)
        self._mapping = None if mapping is None else ReadOnlyMapping(mapping)
        self.sha256: str = descriptions_sha256(mapping)

    @property
    def mapping(self) -> Mapping[str, str] | None:
        """The user mapping (read-only), or ``None`` under the category-name policy."""
        return self._mapping

    def describe(self, category: str) -> str:
        """Return the description of ``category``.

        Raises:
            ValueError: a user file or mapping is in use and does not cover ``category``.
        """
        if self._mapping is None:
            return category_to_words(category)
        if category not in self._mapping:
            raise ValueError(
                f"descriptions {self.origin}: no description for category {category!r}; "
                f"add it (covered: {', '.join(sorted(self._mapping)) or 'none'})"
            )
        return self._mapping[category]

    def sentences(self, category: str) -> tuple[list[str], list[str]]:
        """Return ``(normal, abnormal)`` sentences for ``category`` (6 and 10)."""
        return build_sentences(self.describe(category))

    def __repr__(self) -> str:
        return f"Descriptions(origin={self.origin!r}, sha256={self.sha256[:12]}...)"
