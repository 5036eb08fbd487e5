"""Dataset readers: MVTec AD, VisA, BTAD, MPDD folders and AA-CLIP JSONL manifests → `Sample` lists.

Every reader pairs masks with images by file stem (never by sorted position), checks that each
anomalous image has a mask of the image's size, reads every image header (so an unreadable file is
reported up front, naming the path), and logs per-category counts. Nothing is dropped silently: a
layout problem is an error that names the path and what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from PIL import Image, UnidentifiedImageError

from .records import LAYOUTS, SPLITS, Sample

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUMMARY_COLUMNS",
    "format_summary",
    "get_layout",
    "list_layouts",
    "read_dataset",
    "summarize",
]

logger = logging.getLogger(__name__)

#: File extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS: Final = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Columns of the rows `summarize` returns.
SUMMARY_COLUMNS: Final = ("category", "split", "defect_type", "n_normal", "n_anomalous", "with_mask")

_VISA_CSV: Final = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS: Final = ("object", "split", "label", "image", "mask")
_VISA_LABELS: Final = {"normal": 0, "anomaly": 1}


# --------------------------------------------------------------------------------------------- helpers


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _list_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """Return ``(width, height)`` from the file header, naming ``path`` if it cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RuntimeError(
            f"{path}: cannot read {what} ({exc}); expected a PNG, JPEG, BMP or TIFF image"
        ) from exc


def _check_pair(image_path: Path, mask_path: Path | None) -> None:
    """Read both headers; raise when the mask's size differs from the image's."""
    image_size = _image_size(image_path, "an image")
    if mask_path is None:
        return
    mask_size = _image_size(mask_path, f"the mask of {image_path.name}")
    if mask_size != image_size:
        raise RuntimeError(
            f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} (WxH) but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}; a mask must have its image's size"
        )


def _select_categories(available: Sequence[str], requested: Sequence[str] | None, where: Path) -> list[str]:
    if requested is None:
        return list(available)
    if isinstance(requested, str):
        requested = [requested]
    missing = [c for c in requested if c not in available]
    if missing:
        raise ValueError(
            f"{where}: unknown categor{'y' if len(missing) == 1 else 'ies'} {missing}; "
            f"available: {', '.join(available) or '(none)'}"
        )
    return list(requested)


# --------------------------------------------------------------------------------------------- readers


def _make_folder_reader(
    normal_name: str, mask_suffixes: tuple[str, ...], mask_doc: str
) -> Callable[..., list[Sample]]:
    """Build a reader for MVTec-style folders (``<cat>/<split>/<defect>/*``, ``<cat>/ground_truth/...``).

    ``mask_suffixes`` are the stem suffixes a mask may carry, tried in order (``"_mask"`` for
    MVTec/MPDD; ``"_mask"`` then ``""`` for BTAD); ``mask_doc`` describes the expected mask path in error messages.
    """

    def read(root: Path, split: str, categories: Sequence[str] | None) -> list[Sample]:
        cat_dirs = _list_dirs(root)
        if not cat_dirs:
            raise FileNotFoundError(
                f"{root}: no category folders (expected <category>/{split}/{normal_name}/*.png)"
            )
        names = _select_categories([d.name for d in cat_dirs], categories, root)
        samples: list[Sample] = []
        for name in names:
            samples.extend(_read_category(root / name, name, split))
        return samples

    def _read_category(cat_dir: Path, category: str, split: str) -> list[Sample]:
        split_dir = cat_dir / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"{split_dir}: missing (expected {category}/{split}/<defect_type>/ image folders, "
                f"normal images in {category}/{split}/{normal_name}/)"
            )
        loose = _list_images(split_dir)
        if loose:
            raise RuntimeError(
                f"{split_dir}: {len(loose)} image(s) directly in the split folder (e.g. {loose[0].name}); "
                f"expected them inside {category}/{split}/<defect_type>/"
            )
        samples: list[Sample] = []
        for defect_dir in _list_dirs(split_dir):
            images = _list_images(defect_dir)
            if not images:
                raise FileNotFoundError(
                    f"{defect_dir}: folder without images (expected {', '.join(IMAGE_EXTENSIONS)} files)"
                )
            defect = defect_dir.name
            if defect == normal_name:
                for path in images:
                    _check_pair(path, None)
                    samples.append(Sample(path, None, 0, category, defect, split))
                continue
            masks = _mask_index(cat_dir / "ground_truth" / defect)
            for path in images:
                mask = masks.pop(path.stem, None)
                if mask is None:
                    raise FileNotFoundError(
                        f"{path}: anomalous image without a mask; expected "
                        f"{cat_dir / 'ground_truth' / defect / mask_doc.format(stem=path.stem)}"
                    )
                _check_pair(path, mask)
                samples.append(Sample(path, mask, 1, category, defect, split))
            for stem, mask in sorted(masks.items()):
                logger.warning("%s: mask without an image (no %s/%s.*); ignored", mask, defect_dir, stem)
        if not samples:
            raise FileNotFoundError(
                f"{split_dir}: category folder without images (expected {category}/{split}/<defect_type>/*.png)"
            )
        return samples

    def _mask_index(mask_dir: Path) -> dict[str, Path]:
        index: dict[str, Path] = {}
        if not mask_dir.is_dir():
            return index
        for path in _list_images(mask_dir):
            for suffix in mask_suffixes:
                if suffix and not path.stem.endswith(suffix):
                    continue
                key = path.stem[: len(path.stem) - len(suffix)] if suffix else path.stem
                if key in index and index[key] != path:
                    raise RuntimeError(
                        f"{mask_dir}: two masks for image stem {key!r}: {index[key].name} and {path.name}"
                    )
                index[key] = path
                break
            else:
                logger.warning("%s: not a mask name (expected %s); ignored", path, mask_doc)
        return index

    return read


_read_mvtec = _make_folder_reader("good", ("_mask",), "{stem}_mask.png")
_read_btad = _make_folder_reader("ok", ("_mask", ""), "{stem}.png")


def _read_visa(root: Path, split: str, categories: Sequence[str] | None) -> list[Sample]:
    csv_path = root / _VISA_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such file (a VisA root holds split_csv/1cls.csv)")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RuntimeError(
                f"{csv_path}: missing column(s) {missing}; expected columns {', '.join(_VISA_COLUMNS)}"
            )
        rows = [(line, row) for line, row in enumerate(reader, start=2)]
    splits = sorted({row["split"] for _, row in rows})
    rows = [(line, row) for line, row in rows if row["split"] == split]
    if not rows:
        raise RuntimeError(f"{csv_path}: no rows with split {split!r}; splits present: {splits}")
    available = sorted({row["object"] for _, row in rows})
    wanted = set(_select_categories(available, categories, csv_path))
    samples: list[Sample] = []
    for line, row in rows:
        if row["object"] not in wanted:
            continue
        where = f"{csv_path} line {line}"
        if row["label"] not in _VISA_LABELS:
            raise RuntimeError(f"{where}: label {row['label']!r}; expected 'normal' or 'anomaly'")
        label = _VISA_LABELS[row["label"]]
        if not row["image"]:
            raise RuntimeError(f"{where}: empty 'image' column")
        image = root / row["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found (paths are relative to {root})")
        mask = root / row["mask"] if row["mask"] else None
        if label == 1 and mask is None:
            raise FileNotFoundError(f"{where}: anomalous image {image} without a mask (empty 'mask' column)")
        if label == 0 and mask is not None:
            raise RuntimeError(f"{where}: normal image {image} has a mask {mask}; expected an empty 'mask'")
        if mask is not None and mask.stem != image.stem:
            raise RuntimeError(
                f"{where}: mask {mask.name} does not pair with image {image.name} (stems must match)"
            )
        _check_pair(image, mask)
        defect = "good" if label == 0 else "anomaly"
        samples.append(Sample(image, mask, label, row["object"], defect, split))
    return sorted(samples, key=lambda s: (s.category, s.image_path))


def _jsonl_file(root: Path) -> Path:
    if root.is_file():
        return root
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix == ".jsonl")
    if len(files) != 1:
        raise FileNotFoundError(
            f"{root}: expected a .jsonl manifest or a folder holding exactly one, found "
            f"{len(files)} ({', '.join(p.name for p in files) or 'none'})"
        )
    return files[0]


def _jsonl_label(value: Any, where: str) -> int:
    if not isinstance(value, bool) and isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise RuntimeError(f"{where}: 'label' is {value!r}; expected 0 or 1 (int or float)")


def _read_jsonl(root: Path, split: str, categories: Sequence[str] | None) -> list[Sample]:
    path = _jsonl_file(root)
    base = path.parent
    records: list[tuple[str, dict[str, Any]]] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise RuntimeError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("image_path", "label", "class_name") if k not in record]
        if missing:
            raise RuntimeError(
                f"{where}: missing key(s) {missing}; expected image_path, label, class_name, mask_path"
            )
        records.append((where, record))
    if not records:
        raise RuntimeError(f"{path}: no records (expected one JSON object per line)")
    available = sorted({str(r["class_name"]) for _, r in records})
    wanted = set(_select_categories(available, categories, path))
    samples: list[Sample] = []
    for where, record in records:
        category = str(record["class_name"])
        if category not in wanted:
            continue
        label = _jsonl_label(record["label"], where)
        image = base / record["image_path"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found (paths are relative to {base})")
        mask_value = record.get("mask_path") or None
        mask = base / mask_value if mask_value else None
        if label == 1 and mask is None:
            raise FileNotFoundError(
                f"{where}: anomalous image {image} has no 'mask_path'; every label-1 record needs a mask"
            )
        if label == 0 and mask is not None:
            raise RuntimeError(f"{where}: normal image {image} has mask_path {mask_value!r}; expected none")
        _check_pair(image, mask)
        defect = str(
            record.get("defect_type") or record.get("specie_name") or ("good" if label == 0 else "anomaly")
        )
        samples.append(Sample(image, mask, label, category, defect, split))
    return samples


_READERS: Final[dict[str, Callable[[Path, str, Sequence[str] | None], list[Sample]]]] = {
    "mvtec": _read_mvtec,
    "visa": _read_visa,
    "btad": _read_btad,
    "mpdd": _read_mvtec,
    "jsonl": _read_jsonl,
}
assert tuple(_READERS) == LAYOUTS


def list_layouts() -> list[str]:
    """Return the names of the supported dataset layouts."""
    return list(_READERS)


def get_layout(name: str) -> Callable[[Path, str, Sequence[str] | None], list[Sample]]:
    """Return the reader for layout ``name``.

    Raises:
        ValueError: If the layout is unknown (the message lists the valid ones).
    """
    if name not in _READERS:
        raise ValueError(f"unknown dataset layout {name!r}; valid layouts: {', '.join(_READERS)}")
    return _READERS[name]


def read_dataset(
    root: str | os.PathLike,
    layout: str,
    *,
    split: str = "test",
    categories: Sequence[str] | None = None,
) -> list[Sample]:
    """Read a dataset folder (or JSONL manifest) into `Sample` records.

    Layouts:
        ``mvtec`` / ``mpdd``: ``<cat>/train/good``, ``<cat>/test/<defect>``,
        masks ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
        ``btad``: ``<cat>/train/ok``, ``<cat>/test/{ok,ko}``, masks ``<cat>/ground_truth/ko/<stem>.png``
        (``<stem>_mask.png`` is accepted too).
        ``visa``: ``split_csv/1cls.csv`` (``object,split,label,image,mask``; paths relative to ``root``).
        ``jsonl``: AA-CLIP manifest, one object per line with ``image_path``, ``label`` (0/1, int or
        float), ``class_name`` and ``mask_path`` (empty or absent for normal images); paths relative to
        the file's folder. ``root`` is the file or a folder holding exactly one ``.jsonl``; ``split`` is
        only recorded on the samples.

    Args:
        root: Dataset root.
        layout: One of `list_layouts()`.
        split: ``train`` or ``test``.
        categories: Categories to read (default: all, discovered and sorted).

    Returns:
        Samples ordered by category, then defect folder and file name (VisA/JSONL: file order).

    Raises:
        FileNotFoundError: Missing root, category folder without images, anomalous image without mask.
        ValueError: Unknown layout, split or category.
        RuntimeError: Unreadable image, mask size differing from its image, malformed CSV/JSONL.
    """
    reader = get_layout(layout)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset root does not exist (layout {layout!r})")
    if layout != "jsonl" and not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root is not a folder (layout {layout!r})")
    samples = reader(root, split, categories)
    counts: dict[str, Counter[int]] = {}
    for sample in samples:
        counts.setdefault(sample.category, Counter())[sample.label] += 1
    for category, count in counts.items():
        logger.info(
            "%s [%s, %s] %s: %d images (%d normal, %d anomalous)",
            root,
            layout,
            split,
            category,
            count[0] + count[1],
            count[0],
            count[1],
        )
    return samples


def summarize(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Count samples per category, split and defect type.

    Args:
        samples: Samples from `read_dataset`.

    Returns:
        Rows with keys `SUMMARY_COLUMNS`, sorted by category, split, defect type; ``with_mask`` counts
        samples that have a mask file.
    """
    table: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in samples:
        key = (s.category, s.split, s.defect_type)
        row = table.setdefault(
            key,
            {
                "category": key[0],
                "split": key[1],
                "defect_type": key[2],
                "n_normal": 0,
                "n_anomalous": 0,
                "with_mask": 0,
            },
        )
        row["n_normal" if s.label == 0 else "n_anomalous"] += 1
        row["with_mask"] += s.mask_path is not None
    return [table[key] for key in sorted(table)]


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """Render `summarize` rows as an aligned text table with per-category and grand totals.

    Args:
        rows: Rows from `summarize`.

    Returns:
        The table, one line per row, ending with a ``total`` line.
    """
    lines: list[list[str]] = [list(SUMMARY_COLUMNS)]
    totals = Counter()
    per_category: dict[str, Counter] = {}
    for row in rows:
        lines.append([str(row[c]) for c in SUMMARY_COLUMNS])
        for key in ("n_normal", "n_anomalous", "with_mask"):
            totals[key] += row[key]
            per_category.setdefault(row["category"], Counter())[key] += row[key]
    lines.append(
        ["total", "", f"{len(per_category)} categories", *(str(totals[k]) for k in SUMMARY_COLUMNS[3:])]
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(SUMMARY_COLUMNS))]
    numeric = {3, 4, 5}
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(w) if i in numeric and n else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0 or n == len(lines) - 2:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
