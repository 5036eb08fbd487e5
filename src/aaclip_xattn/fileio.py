"""Torch-free file helpers: atomic writes, sha256 fingerprints, JSON and CSV records."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_csv",
    "read_json",
    "read_yaml_mapping",
    "sha256_bytes",
    "sha256_file",
    "write_csv",
    "write_json",
]

_CHUNK = 1 << 20


def _default_mode() -> int:
    # mkstemp creates files as 0600; give the final file the mode a plain open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterable[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it onto ``path`` on success.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on POSIX:
    a reader sees either the old file or the complete new one, never a partial write. On any
    exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (``indent=2, sort_keys=True``, NaN allowed) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the path in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a JSON record)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{path}: not valid JSON ({exc})") from exc


def read_yaml_mapping(path: str | os.PathLike, *, missing: str, not_mapping: str) -> Mapping[str, Any]:
    """Read a YAML (or JSON) file whose top level must be a mapping; an empty file reads as ``{}``.

    Args:
        path: The file.
        missing: What the error says after ``"{path}: "`` when the file does not exist.
        not_mapping: What the error says after ``"{path}: "`` when the top level is not a mapping;
            ``{type}`` stands for the type name found.

    Returns:
        The top-level mapping.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not valid YAML, or the top level is not a mapping (the path named).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: {not_mapping.format(type=type(data).__name__)}")
    return data


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (mappings) with the given column order atomically; floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key, "")) for key in columns})
    return atomic_write_text(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float):
        return repr(float(value))  # shortest round-trip form, full precision
    return value


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file with a header into a list of dicts (values as strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a CSV table)")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes, read in chunks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (cannot fingerprint it)")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
