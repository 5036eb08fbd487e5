"""Seeded few-shot / full-shot training manifests: which files every arm of a comparison trains on.

A k-shot manifest holds, per category, k/2 normal and k/2 anomalous images drawn from the training
pool (the reference trains on the labelled *test* split of the auxiliary dataset, aaclip-method.md §7-8).
The draw for a category comes from ``make_numpy_generator(seed, "split", k, crc32(dataset),
crc32(category), label)`` over the pool's images sorted by relative path, so a manifest is a function
of (dataset, k, seed) and the pool alone: independent of reader order, of the other categories, and
of the arm that asks for it. ``full_shot`` takes the whole pool.

The JSON record carries the sorted file list (paths relative to the dataset root), labels, categories
and the sha256 of the canonical list; `read_manifest` re-hashes the list and checks that every file
still exists.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..fileio import read_json, sha256_bytes, write_json
from ..seeding import make_numpy_generator
from .readers import read_dataset
from .records import DatasetSpec, Sample

__all__ = [
    "MANIFEST_FORMAT",
    "TRAINING_MODES",
    "Manifest",
    "make_fewshot_manifest",
    "make_split_file",
    "manifest_sha256",
    "read_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

#: Format tag of manifest files.
MANIFEST_FORMAT: Final = "aaclip_xattn.manifest/1"
#: ``few_shot``: k/2 normal + k/2 anomalous per category; ``full_shot``: the whole pool.
TRAINING_MODES: Final = ("few_shot", "full_shot")

_ENTRY_KEYS: Final = ("image_path", "mask_path", "label", "category", "defect_type", "split")
_REQUIRED_KEYS: Final = (
    "format",
    "dataset",
    "layout",
    "root",
    "training_mode",
    "shot",
    "seed",
    "categories",
    "counts",
    "samples",
    "sha256",
)


@dataclass(frozen=True)
class Manifest:
    """A verified training manifest.

    Attributes:
        path: The manifest file.
        dataset: Dataset name.
        layout: Dataset layout it was read with.
        root: Dataset root the sample paths are relative to.
        training_mode: ``few_shot`` or ``full_shot``.
        shot: ``"<k>"`` or ``"full"``.
        seed: Sampling seed.
        samples: Samples with paths joined to ``root``, sorted by relative image path.
        categories: Sorted category names.
        counts: Category → ``{"normal": n, "anomalous": m}``.
        sha256: sha256 of the canonical sample list (see `manifest_sha256`).
    """

    path: Path
    dataset: str
    layout: str | None
    root: Path
    training_mode: str
    shot: str
    seed: int
    samples: tuple[Sample, ...]
    categories: tuple[str, ...]
    counts: Mapping[str, Mapping[str, int]]
    sha256: str


def manifest_sha256(entries: Sequence[Mapping[str, Any]]) -> str:
    """Return the sha256 of a manifest's sample list in canonical JSON (sorted keys, no spaces).

    Args:
        entries: The manifest's ``samples`` list.

    Returns:
        Hex digest.
    """
    canonical = json.dumps(list(entries), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_bytes(canonical.encode("ascii"))


def _parse_shot(shot: int | str | None, training_mode: str) -> int | None:
    if training_mode not in TRAINING_MODES:
        raise ValueError(
            f"training_mode {training_mode!r} is not valid; expected one of {', '.join(TRAINING_MODES)}"
        )
    if training_mode == "full_shot":
        if shot not in (None, "full"):
            raise ValueError(f"training_mode 'full_shot' takes shot 'full' (or none), got {shot!r}")
        return None
    value: Any = shot
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"few-shot: shot must be a positive even integer, got {shot!r}")
    if value % 2:
        raise ValueError(
            f"few-shot: shot {value} is odd; k-shot draws k/2 normal + k/2 anomalous images per category, "
            "so k must be even"
        )
    return value


def _relative(path: Path, root: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path}: not inside the dataset root {root}") from None


def _entry(sample: Sample, root: Path) -> dict[str, Any]:
    return {
        "image_path": _relative(sample.image_path, root),
        "mask_path": None if sample.mask_path is None else _relative(sample.mask_path, root),
        "label": int(sample.label),
        "category": sample.category,
        "defect_type": sample.defect_type,
        "split": sample.split,
    }


def make_fewshot_manifest(
    samples: Sequence[Sample],
    *,
    dataset: str,
    shot: int | str | None,
    seed: int,
    training_mode: str = "few_shot",
    root: str | os.PathLike | None = None,
    layout: str | None = None,
) -> dict[str, Any]:
    """Draw a training manifest from a labelled pool.

    Args:
        samples: The training pool (for the reference: the training dataset's test split).
        dataset: Dataset name (enters the RNG stream, so different datasets get unrelated draws).
        shot: k for ``few_shot`` (a positive even integer, or its decimal string); ``None`` or
            ``"full"`` for ``full_shot``.
        seed: Sampling seed.
        training_mode: One of `TRAINING_MODES`.
        root: Dataset root the paths are stored relative to (default: the pool's common folder; a
            ``.jsonl`` file stands for its folder).
        layout: Recorded layout name.

    Returns:
        The manifest as a JSON-ready dict (see module docstring); ``samples`` sorted by image path.

    Raises:
        ValueError: Odd or non-positive k, an unknown mode, an empty pool, duplicate images, or a
            category with fewer than k/2 normal or k/2 anomalous images (naming category, needed, available).
    """
    k = _parse_shot(shot, training_mode)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"manifest seed must be a non-negative integer, got {seed!r}")
    if not samples:
        raise ValueError(f"dataset {dataset!r}: the training pool is empty")
    if root is None:
        parents = [os.path.abspath(s.image_path.parent) for s in samples]
        root_path = Path(os.path.commonpath(parents))
    else:
        if Path(root).is_file():  # a JSONL manifest: its paths are relative to its folder
            root = Path(root).parent
        root_path = Path(os.path.abspath(root))
    entries = [_entry(s, root_path) for s in samples]
    duplicates = [p for p, n in Counter(e["image_path"] for e in entries).items() if n > 1]
    if duplicates:
        raise ValueError(f"dataset {dataset!r}: image(s) listed more than once in the pool: {duplicates[:3]}")
    entries.sort(key=lambda e: e["image_path"])
    categories = sorted({e["category"] for e in entries})
    if k is not None:
        chosen: list[dict[str, Any]] = []
        crc_dataset = zlib.crc32(dataset.encode("utf-8"))
        for category in categories:
            for label, kind in ((0, "normal"), (1, "anomalous")):
                pool = [e for e in entries if e["category"] == category and e["label"] == label]
                need = k // 2
                if len(pool) < need:
                    raise ValueError(
                        f"few-shot {k}: category {category!r} of dataset {dataset!r} needs {need} {kind} "
                        f"images, only {len(pool)} available"
                    )
                rng = make_numpy_generator(
                    seed, "split", k, crc_dataset, zlib.crc32(category.encode("utf-8")), label
                )
                picks = rng.choice(len(pool), size=need, replace=False)
                chosen.extend(pool[int(i)] for i in picks)
        entries = sorted(chosen, key=lambda e: e["image_path"])
    counts: dict[str, dict[str, int]] = {c: {"normal": 0, "anomalous": 0} for c in categories}
    for e in entries:
        counts[e["category"]]["normal" if e["label"] == 0 else "anomalous"] += 1
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "layout": layout,
        "root": str(root if root is not None else root_path),
        "training_mode": training_mode,
        "shot": "full" if k is None else str(k),
        "seed": seed,
        "categories": categories,
        "counts": counts,
        "n_samples": len(entries),
        "samples": entries,
        "sha256": manifest_sha256(entries),
    }
    logger.info(
        "manifest %s shot %s seed %d: %d images over %d categories (sha256 %s)",
        dataset,
        manifest["shot"],
        seed,
        len(entries),
        len(categories),
        manifest["sha256"][:12],
    )
    return manifest


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write a manifest as JSON (atomic; ``indent=2``, sorted keys) after checking its hash.

    Args:
        path: Output file.
        manifest: From `make_fewshot_manifest`.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: If the manifest's ``sha256`` does not match its sample list.
    """
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"write_manifest: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if manifest_sha256(manifest["samples"]) != manifest["sha256"]:
        raise ValueError("write_manifest: 'sha256' does not match the sample list; the manifest was modified")
    return write_json(path, dict(manifest))


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Read a manifest, verify the sha256 of its sample list and that every listed file exists.

    A relative ``root`` in the file is resolved against the current working directory (the
    workflow's directory), as it was given when the manifest was made.

    Args:
        path: Manifest file.
        check_files: Check that every image and mask exists (default on).

    Returns:
        The verified `Manifest`.

    Raises:
        FileNotFoundError: If the manifest or a listed file is missing (naming both).
        RuntimeError: If the file is not a manifest, lacks keys, or its list does not match its sha256.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise RuntimeError(
            f"{path}: not a training manifest (format {found!r}, expected {MANIFEST_FORMAT!r})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise RuntimeError(f"{path}: manifest lacks key(s) {missing}")
    entries = data["samples"]
    bad = next((e for e in entries if not isinstance(e, dict) or set(e) != set(_ENTRY_KEYS)), None)
    if bad is not None:
        raise RuntimeError(f"{path}: malformed sample entry {bad!r}; expected keys {', '.join(_ENTRY_KEYS)}")
    digest = manifest_sha256(entries)
    if digest != data["sha256"]:
        raise RuntimeError(
            f"{path}: sha256 of the sample list is {digest}, the manifest records {data['sha256']}; "
            "the file was edited after it was written (regenerate it)"
        )
    root = Path(data["root"])
    samples = []
    for e in entries:
        image = root / e["image_path"]
        mask = None if e["mask_path"] is None else root / e["mask_path"]
        if check_files:
            for file in (image, mask):
                if file is not None and not file.is_file():
                    raise FileNotFoundError(
                        f"{path}: listed file {file} does not exist (dataset root {root}); "
                        "regenerate the dataset or the manifest"
                    )
        samples.append(Sample(image, mask, e["label"], e["category"], e["defect_type"], e["split"]))
    return Manifest(
        path=path,
        dataset=data["dataset"],
        layout=data["layout"],
        root=root,
        training_mode=data["training_mode"],
        shot=str(data["shot"]),
        seed=int(data["seed"]),
        samples=tuple(samples),
        categories=tuple(data["categories"]),
        counts=data["counts"],
        sha256=data["sha256"],
    )


def make_split_file(
    spec: DatasetSpec,
    path: str | os.PathLike,
    *,
    shot: int | str | None,
    seed: int,
    training_mode: str = "few_shot",
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Read a dataset's training pool (its test split), draw a manifest and write it to ``path``.

    One call for the workflow's ``fewshot_split`` rule.

    Args:
        spec: The training dataset.
        path: Output manifest file.
        shot: As in `make_fewshot_manifest`.
        seed: Sampling seed.
        training_mode: One of `TRAINING_MODES`.
        categories: Restrict the pool to these categories.

    Returns:
        The manifest written.
    """
    pool = read_dataset(spec.root, spec.layout, split="test", categories=categories)
    root = spec.root.parent if spec.layout == "jsonl" and spec.root.is_file() else spec.root
    manifest = make_fewshot_manifest(
        pool,
        dataset=spec.name,
        shot=shot,
        seed=seed,
        training_mode=training_mode,
        root=root,
        layout=spec.layout,
    )
    write_manifest(path, manifest)
    return manifest
