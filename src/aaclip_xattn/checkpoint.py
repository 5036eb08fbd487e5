"""Checkpoints: atomic save in the reference format, verified loading, optimizer carry-over, fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import torch
from torch import nn

from aaclip_xattn.errors import CheckpointError
from aaclip_xattn.fileio import atomic_open, sha256_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPONENTS",
    "CROSS_ATTN_MARKERS",
    "EPOCH_KEY",
    "FORMAT_KEY",
    "IMAGE_ADAPTER_KEY",
    "IMAGE_CHECKPOINT_NAME",
    "IMAGE_CROSS_ATTN_KEY",
    "IMAGE_OPTIMIZER_KEY",
    "NON_STRICT_CLI_FLAG",
    "PARAM_NAMES_KEY",
    "REFERENCE_IMAGE_ADAPTER_KEYS",
    "REFERENCE_TEXT_ADAPTER_KEYS",
    "RESERVED_KEYS",
    "TEXT_ADAPTER_KEY",
    "TEXT_CHECKPOINT_NAME",
    "TEXT_CROSS_ATTN_KEY",
    "TEXT_OPTIMIZER_KEY",
    "LoadReport",
    "ShapeMismatch",
    "load_adapter_state",
    "load_base_image_adapter",
    "load_base_text_adapter",
    "load_checkpoint_file",
    "load_optimizer_state",
    "map_optimizer_state",
    "optimizer_param_names",
    "reference_param_names",
    "save_image_checkpoint",
    "save_text_checkpoint",
    "tensor_fingerprint",
    "verify_weight_loading",
]

logger = logging.getLogger(__name__)

#: Top-level keys of the reference checkpoint files (aaclip-method.md §10).
TEXT_ADAPTER_KEY: Final = "text_adapter"
TEXT_OPTIMIZER_KEY: Final = "text_optimizer"
IMAGE_ADAPTER_KEY: Final = "image_adapter"
IMAGE_OPTIMIZER_KEY: Final = "image_optimizer"
EPOCH_KEY: Final = "epoch"
#: Keys the cross-attention arms add (text_cross_attn in text_adapter.pth, image_cross_attn in image_adapter.pth).
TEXT_CROSS_ATTN_KEY: Final = "text_cross_attn"
IMAGE_CROSS_ATTN_KEY: Final = "image_cross_attn"
#: Keys only our own files carry: the optimizer's parameter order as qualified names, and the format tag.
PARAM_NAMES_KEY: Final = "param_names"
FORMAT_KEY: Final = "format"
CHECKPOINT_FORMAT: Final = "aaclip_xattn/1"
#: Keys that ``**extra`` metadata may not overwrite.
RESERVED_KEYS: Final = frozenset(
    {
        TEXT_ADAPTER_KEY,
        TEXT_OPTIMIZER_KEY,
        IMAGE_ADAPTER_KEY,
        IMAGE_OPTIMIZER_KEY,
        EPOCH_KEY,
        TEXT_CROSS_ATTN_KEY,
        IMAGE_CROSS_ATTN_KEY,
        PARAM_NAMES_KEY,
        FORMAT_KEY,
    }
)
#: File names the reference writes into its save directory.
TEXT_CHECKPOINT_NAME: Final = "text_adapter.pth"
IMAGE_CHECKPOINT_NAME: Final = "image_adapter.pth"
#: State-dict keys of the reference adapters (head-ReLU flag off): 3 text adapters + the text projection,
#: and 6 image layer adapters, 4 segmentation heads and the detection head.
REFERENCE_TEXT_ADAPTER_KEYS: Final = tuple(f"{i}.fc.0.weight" for i in range(4))
REFERENCE_IMAGE_ADAPTER_KEYS: Final = (
    *(f"layer_adapters.{i}.fc.0.weight" for i in range(6)),
    *(f"seg_proj.{i}.fc.weight" for i in range(4)),
    "det_proj.fc.weight",
)
#: Components reported by ``verify_weight_loading`` (the seed guide's step 5), in its order.
COMPONENTS: Final = (TEXT_ADAPTER_KEY, IMAGE_ADAPTER_KEY, TEXT_CROSS_ATTN_KEY, IMAGE_CROSS_ATTN_KEY)
#: Key parts that identify cross-attention weights (GatedCrossAttention's submodules and gate).
CROSS_ATTN_MARKERS: Final = frozenset({"q_proj", "k_proj", "v_proj", "out_proj", "gate"})
#: Command-line flag of the training programs that loads a base checkpoint non-strictly.
NON_STRICT_CLI_FLAG: Final = "--non_strict_load"

_STAGE_KEYS: Final = {
    "text": (TEXT_ADAPTER_KEY, TEXT_OPTIMIZER_KEY, TEXT_CROSS_ATTN_KEY),
    "image": (IMAGE_ADAPTER_KEY, IMAGE_OPTIMIZER_KEY, IMAGE_CROSS_ATTN_KEY),
}
_SAFE_SCALARS: Final = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class ShapeMismatch(NamedTuple):
    """One tensor whose shape differs between a checkpoint and the model."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What one adapter load did: which keys were loaded and which were skipped, and from which file.

    Attributes:
        source: The checkpoint path (or a description of where the state dict came from).
        component: The model attribute loaded into (``"text_adapter"``, ``"image_adapter"``, ...).
        strict: Whether the load was strict (then nothing was skipped).
        loaded: State-dict keys copied into the module, in checkpoint order.
        unexpected: Checkpoint keys the module does not have (skipped).
        missing: Module keys the checkpoint lacks (left at their current values).
        mismatched: Keys present in both with different shapes (skipped).
        sha256: sha256 of the checkpoint file's bytes as read, or None when no file was read.
        epoch: The checkpoint's ``epoch`` entry, or None.
        fingerprint: ``tensor_fingerprint`` of the module after loading.
        checkpoint: The whole checkpoint dict as loaded (optimizer state, param_names, metadata), for
            ``load_optimizer_state``; excluded from comparison, repr and ``to_record``.
    """

    source: str
    component: str
    strict: bool
    loaded: tuple[str, ...]
    unexpected: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    mismatched: tuple[ShapeMismatch, ...] = ()
    sha256: str | None = None
    epoch: int | None = None
    fingerprint: str = ""
    checkpoint: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def skipped(self) -> bool:
        """Whether anything was skipped (unexpected, missing or mismatched keys)."""
        return bool(self.unexpected or self.missing or self.mismatched)

    def to_record(self) -> dict[str, Any]:
        """Return a JSON-ready dict for ``run.json`` (without the checkpoint content)."""
        return {
            "source": self.source,
            "component": self.component,
            "strict": self.strict,
            "sha256": self.sha256,
            "epoch": self.epoch,
            "fingerprint": self.fingerprint,
            "loaded": list(self.loaded),
            "unexpected": list(self.unexpected),
            "missing": list(self.missing),
            "mismatched": [
                {
                    "key": m.key,
                    "checkpoint_shape": list(m.checkpoint_shape),
                    "model_shape": list(m.model_shape),
                }
                for m in self.mismatched
            ],
        }


# --------------------------------------------------------------------------------------------------
# Fingerprints and verification
# --------------------------------------------------------------------------------------------------


def tensor_fingerprint(module_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Return a sha256 over the sorted names, dtypes, shapes and contiguous bytes of every tensor.

    The digest depends only on the values: a strided view and its contiguous clone, or a tensor
    sharing storage with others, hash the same as a fresh copy; any change of one element changes it.

    Args:
        module_or_state_dict: A module (its ``state_dict()``, buffers included) or a mapping of names
            to tensors.

    Returns:
        The hex sha256 digest.

    Raises:
        TypeError: A mapping value is not a tensor (the message names the key).
    """
    if isinstance(module_or_state_dict, nn.Module):
        items = module_or_state_dict.state_dict()
    elif isinstance(module_or_state_dict, Mapping):
        items = module_or_state_dict
    else:
        raise TypeError(
            f"tensor_fingerprint expects an nn.Module or a mapping of tensors, got "
            f"{type(module_or_state_dict).__name__}"
        )
    digest = hashlib.sha256()
    for name in sorted(items):
        tensor = items[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"tensor_fingerprint: value of {name!r} is a {type(tensor).__name__}, not a tensor"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0"
        # Length-prefixed so that no two different sequences of (name, header, bytes) can collide.
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header.encode("utf-8"))
        raw = flat.view(torch.uint8).numpy()
        digest.update(raw.nbytes.to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def verify_weight_loading(
    model: nn.Module, logger: logging.Logger | None = None
) -> dict[str, dict[str, Any]]:
    """Summarise the adapter and cross-attention weights as the seed guide's step 5 does.

    ``mean_abs`` is the guide's statistic: the mean over the component's parameter tensors of
    ``p.abs().mean()`` (each tensor weighs the same, whatever its size). A component the model lacks
    (the cross-attention modules of a baseline model) is reported as absent.

    Args:
        model: The adapted model (``text_adapter``, ``image_adapter``, optional ``text_cross_attn`` and
            ``image_cross_attn`` attributes).
        logger: Where to log the table at INFO; the module logger by default.

    Returns:
        ``{component: {"present", "mean_abs", "sha256", "n_params"}}`` for the four components of
        ``COMPONENTS``; ``n_params`` counts scalar parameters. Absent components have
        ``present=False``, ``mean_abs=None``, ``sha256=None``, ``n_params=0``.
    """
    log = logger if logger is not None else logging.getLogger(__name__)
    table: dict[str, dict[str, Any]] = {}
    for name in COMPONENTS:
        module = getattr(model, name, None)
        if module is None:
            table[name] = {"present": False, "mean_abs": None, "sha256": None, "n_params": 0}
            continue
        if not isinstance(module, nn.Module):
            raise TypeError(f"model.{name} is a {type(module).__name__}, expected an nn.Module")
        params = list(module.parameters())
        with torch.no_grad():
            mean_abs = sum(p.abs().mean().item() for p in params) / len(params) if params else None
        table[name] = {
            "present": True,
            "mean_abs": mean_abs,
            "sha256": tensor_fingerprint(module),
            "n_params": sum(p.numel() for p in params),
        }
    rule = "=" * 60
    log.info(rule)
    log.info("WEIGHT INITIALIZATION VERIFICATION")
    log.info(rule)
    for name, row in table.items():
        if not row["present"]:
            log.info("%s: absent (not part of this model)", name)
        elif row["mean_abs"] is None:
            log.info("%s: present but has no parameters", name)
        else:
            log.info(
                "%s mean weight magnitude: %.6f (n_params=%d, sha256=%s)",
                name,
                row["mean_abs"],
                row["n_params"],
                row["sha256"][:16],
            )
    log.info(rule)
    return table


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Return the qualified model names of the optimizer's parameters, in the optimizer's order.

    Args:
        model: The model owning the parameters (names are relative to it, e.g.
            ``"text_adapter.0.fc.0.weight"``, ``"text_cross_attn.q_proj.weight"``).
        optimizer: An optimizer over parameters of ``model``.

    Returns:
        One name per parameter, groups concatenated in order (the order of ``state_dict()`` indices).

    Raises:
        ValueError: The optimizer holds a parameter that is not part of ``model``.
    """
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    out: list[str] = []
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            name = names.get(id(param))
            if name is None:
                raise ValueError(
                    f"optimizer parameter {i} of group {g} (shape {tuple(param.shape)}) is not a parameter of "
                    f"the model; build the optimizer from the model's own parameters"
                )
            out.append(name)
    return out


def reference_param_names(model: nn.Module, stage: Literal["text", "image"]) -> list[str]:
    """Return the reference optimizer's parameter order for a stage, as qualified names.

    The reference builds each stage's Adam over the adapter's ``parameters()`` only, so a reference
    file's optimizer state indices follow the adapter's module order: text = ``text_adapter`` in order;
    image = ``layer_adapters``, ``seg_proj``, ``det_proj``.

    Args:
        model: A model with ``text_adapter`` / ``image_adapter``.
        stage: ``"text"`` or ``"image"``.

    Returns:
        Names like ``"text_adapter.0.fc.0.weight"``.
    """
    adapter_key = _stage_keys(stage)[0]
    module = _component(model, adapter_key)
    return [f"{adapter_key}.{n}" for n, _ in module.named_parameters()]


def save_text_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    **extra: Any,
) -> Path:
    """Write ``text_adapter.pth`` in the reference format, atomically.

    Content: ``text_adapter`` (state dict), ``text_optimizer`` (Adam state dict, omitted when
    ``optimizer`` is None), ``epoch``, ``text_cross_attn`` when the model has one, ``param_names``
    (the optimizer's parameter order; omitted with the optimizer), ``format``, and ``extra``.

    Args:
        path: Destination file; its directory is created.
        model: Model with ``text_adapter`` (and optionally ``text_cross_attn``).
        optimizer: The stage-1 optimizer, or None.
        epoch: Epochs completed (>= 0).
        **extra: Metadata (scheduler state, RNG state, ...): tensors, numbers, strings, None and
            dicts/lists/tuples of those, so that ``torch.load(weights_only=True)`` reads them back.

    Returns:
        The path written.

    Raises:
        ValueError: ``epoch`` is not a non-negative int, an ``extra`` key is reserved, or an ``extra``
            value cannot be loaded with ``weights_only=True`` (the message names the key path).
    """
    return _save_stage_checkpoint("text", path, model, optimizer, epoch, extra)


def save_image_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    **extra: Any,
) -> Path:
    """Write ``image_adapter.pth`` in the reference format, atomically.

    Same as ``save_text_checkpoint`` with ``image_adapter``, ``image_optimizer`` and ``image_cross_attn``.

    Args:
        path: Destination file; its directory is created.
        model: Model with ``image_adapter`` (and optionally ``image_cross_attn``).
        optimizer: The stage-2 optimizer, or None.
        epoch: Epochs completed (>= 0).
        **extra: Metadata, as for ``save_text_checkpoint``.

    Returns:
        The path written.

    Raises:
        ValueError: As for ``save_text_checkpoint``.
    """
    return _save_stage_checkpoint("image", path, model, optimizer, epoch, extra)


def _save_stage_checkpoint(
    stage: str,
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    extra: Mapping[str, Any],
) -> Path:
    adapter_key, optimizer_key, cross_key = _stage_keys(stage)
    path = Path(path)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{path}: epoch must be a non-negative int, got {epoch!r}")
    clash = sorted(set(extra) & RESERVED_KEYS)
    if clash:
        raise ValueError(
            f"{path}: extra metadata may not use the reserved checkpoint keys {clash}; "
            f"reserved: {sorted(RESERVED_KEYS)}"
        )
    for key, value in extra.items():
        _check_weights_only_safe(value, f"{path}: extra[{key!r}]")

    payload: dict[str, Any] = {
        adapter_key: _detached_state(_component(model, adapter_key)),
        EPOCH_KEY: epoch,
        FORMAT_KEY: CHECKPOINT_FORMAT,
    }
    cross = getattr(model, cross_key, None)
    if cross is not None:
        payload[cross_key] = _detached_state(_component(model, cross_key))
    if optimizer is not None:
        payload[PARAM_NAMES_KEY] = optimizer_param_names(model, optimizer)
        payload[optimizer_key] = optimizer.state_dict()
    payload.update(extra)
    with atomic_open(path) as handle:
        torch.save(payload, handle)
    logger.info(
        "wrote %s (epoch %d, %s%s)", path, epoch, adapter_key, f" + {cross_key}" if cross is not None else ""
    )
    return path


def _detached_state(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    # Compact copies: a view into a larger (or shared) storage would otherwise drag the whole buffer
    # into the file, as the reference fixture's strided views would.
    return OrderedDict(
        (k, v.detach().cpu().clone(memory_format=torch.contiguous_format))
        for k, v in module.state_dict().items()
    )


def _check_weights_only_safe(value: Any, where: str) -> None:
    # Exact types for scalars: numpy.float64 subclasses float but is refused by a safe load.
    if isinstance(value, torch.Tensor | torch.Size) or type(value) in _SAFE_SCALARS:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise ValueError(
                    f"{where}: dict key {key!r} is a {type(key).__name__}; only str/int keys load with "
                    f"weights_only=True"
                )
            _check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_weights_only_safe(item, f"{where}[{i}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}, which torch.load(weights_only=True) "
        f"refuses; store tensors, numbers, strings, None or dicts/lists of those (e.g. float(x), "
        f"torch.as_tensor(array), x.tolist())"
    )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_checkpoint_file(
    path: str | os.PathLike,
    *,
    expect_key: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint dict safely (``torch.load(weights_only=True)``) with clear errors.

    Args:
        path: The ``.pth`` file.
        expect_key: A top-level key the file must have (e.g. ``"text_adapter"``).
        map_location: Where tensors are loaded (CPU by default).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        CheckpointError: The file is truncated or not a torch checkpoint, holds objects a safe load
            refuses, is not a dict, or lacks ``expect_key`` (the message lists the keys found).
    """
    return _read_checkpoint(path, expect_key=expect_key, map_location=map_location)[0]


def _read_checkpoint(
    path: str | os.PathLike,
    *,
    expect_key: str | None,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], str]:
    path = Path(path)
    what = (
        f"a {expect_key}.pth checkpoint"
        if expect_key in (TEXT_ADAPTER_KEY, IMAGE_ADAPTER_KEY)
        else "a checkpoint"
    )
    if not path.is_file():
        hint = " (it is a directory; give the .pth file inside it)" if path.is_dir() else ""
        raise FileNotFoundError(f"{path}: no such checkpoint file, expected {what}{hint}")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    try:
        content = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{path}: holds Python objects that a safe load (torch.load(weights_only=True)) refuses; "
                f"re-save it with plain tensors and numbers. Detail: {str(exc).splitlines()[-1][:300]}"
            ) from exc
        raise _corrupt(path, len(data), exc) from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch raises OSError, EOFError, KeyError or RuntimeError on bad bytes
        raise _corrupt(path, len(data), exc) from exc
    if not isinstance(content, dict):
        raise CheckpointError(
            f"{path}: holds a {type(content).__name__}, expected a dict such as "
            f"{{'{expect_key or TEXT_ADAPTER_KEY}': state_dict, ..., 'epoch': n}}"
        )
    if expect_key is not None and expect_key not in content:
        raise CheckpointError(
            f"{path}: no top-level key {expect_key!r}; keys found: {sorted(map(str, content))}"
            + _key_hint(expect_key, content)
        )
    return content, digest


def _corrupt(path: Path, size: int, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: cannot be read ({size} bytes): the file is truncated or not a torch checkpoint "
        f"({type(exc).__name__}: {str(exc)[:200]})"
    )


def _key_hint(expect_key: str, content: Mapping[str, Any]) -> str:
    other = {TEXT_ADAPTER_KEY: IMAGE_ADAPTER_KEY, IMAGE_ADAPTER_KEY: TEXT_ADAPTER_KEY}.get(expect_key)
    if other is not None and other in content:
        given = "text adapter" if expect_key == TEXT_ADAPTER_KEY else "image adapter"
        return f"; is this an {other}.pth given as a {given}?"
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        return f"; this looks like a bare state dict; a checkpoint holds it under {expect_key!r}"
    return ""


def load_adapter_state(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str | os.PathLike,
    component: str = "adapter",
    strict: bool = True,
    sha256: str | None = None,
    epoch: int | None = None,
) -> LoadReport:
    """Copy a state dict into ``module``, explaining every key that does not fit.

    Strict (default): any size mismatch, unexpected or missing key raises one ``CheckpointError``
    that names every offending key (with both shapes for a mismatch, and the likely cause).
    Non-strict: loads the tensors whose key and shape fit, skips the rest, and logs at WARNING
    exactly what it skipped.

    Args:
        module: The target module (e.g. ``model.text_adapter``).
        state_dict: Tensors by key, as stored in the checkpoint.
        source: Where the state dict came from (the file path), named in messages.
        component: The model attribute being loaded, named in messages.
        strict: Raise on any mismatch instead of skipping.
        sha256: sha256 of the source file, recorded in the report.
        epoch: The checkpoint's epoch, recorded in the report.

    Returns:
        A ``LoadReport``.

    Raises:
        CheckpointError: Strict load with mismatching keys or shapes; a state dict that is not a
            mapping of tensors; a non-strict load where nothing fits.
    """
    source = str(source)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{source}: {component!r} holds a {type(state_dict).__name__}, expected a state dict (key -> tensor)"
        )
    bad = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {component!r} entries that are not tensors: {bad}")
    model_state = module.state_dict()
    unexpected = tuple(k for k in state_dict if k not in model_state)
    missing = tuple(k for k in model_state if k not in state_dict)
    mismatched = tuple(
        ShapeMismatch(k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in state_dict.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    )
    mismatched_keys = {m.key for m in mismatched}
    fitting = OrderedDict(
        (k, v) for k, v in state_dict.items() if k in model_state and k not in mismatched_keys
    )

    if strict and (unexpected or missing or mismatched):
        raise CheckpointError(_strict_message(source, component, unexpected, missing, mismatched))
    if not fitting and model_state:
        raise CheckpointError(
            f"{source}: nothing in it fits {component!r} (no key with a matching shape), so even a "
            f"non-strict load would load nothing; is this the right file?\n"
            + _strict_message(source, component, unexpected, missing, mismatched)
        )
    module.load_state_dict(fitting, strict=strict)
    report = LoadReport(
        source=source,
        component=component,
        strict=strict,
        loaded=tuple(fitting),
        unexpected=unexpected,
        missing=missing,
        mismatched=mismatched,
        sha256=sha256,
        epoch=epoch,
        fingerprint=tensor_fingerprint(module),
    )
    if report.skipped:
        logger.warning(
            "%s: loaded %d of %d tensors into %r non-strictly; skipped unexpected %s, missing %s "
            "(left at their current values), mismatched %s",
            source,
            len(report.loaded),
            len(model_state),
            component,
            list(unexpected),
            list(missing),
            [f"{m.key} {m.checkpoint_shape} vs model {m.model_shape}" for m in mismatched],
        )
    else:
        logger.info("%s: loaded %d tensors into %r", source, len(report.loaded), component)
    return report


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _looks_cross_attn(key: str) -> bool:
    parts = key.split(".")
    return (
        key.startswith((f"{TEXT_CROSS_ATTN_KEY}.", f"{IMAGE_CROSS_ATTN_KEY}."))
        or "cross_attn" in key
        or any(p in CROSS_ATTN_MARKERS for p in parts)
    )


def _strict_message(
    source: str,
    component: str,
    unexpected: Sequence[str],
    missing: Sequence[str],
    mismatched: Sequence[ShapeMismatch],
) -> str:
    lines = [f"{source}: cannot load {component!r} strictly:"]
    if mismatched:
        lines.append(f"  {len(mismatched)} size mismatch(es):")
        lines.extend(
            f"    {m.key!r} has shape {_shape(m.checkpoint_shape)} in {source}, model expects "
            f"{_shape(m.model_shape)}: trained with another backbone or adapter size?"
            for m in mismatched
        )
    cross = [k for k in unexpected if _looks_cross_attn(k)]
    other_unexpected = [k for k in unexpected if k not in cross]
    if cross:
        lines.append(
            f"  unexpected cross-attention keys {cross}: a cross-attention checkpoint is probably being "
            f"loaded as a base {component}; load it non-strictly (strict=False, or {NON_STRICT_CLI_FLAG} "
            f"on the command line) to skip them"
        )
    if other_unexpected:
        lines.append(f"  unexpected keys (in the checkpoint, not in the model): {other_unexpected}")
    if missing:
        lines.append(f"  missing keys (in the model, not in the checkpoint): {list(missing)}")
    hints = _layout_hints(component, unexpected, missing)
    lines.extend(f"  hint: {h}" for h in hints)
    return "\n".join(lines)


def _layout_hints(component: str, unexpected: Sequence[str], missing: Sequence[str]) -> list[str]:
    hints: list[str] = []
    missing_set = set(missing)
    for prefix in (f"{component}.", "module."):
        if any(k.startswith(prefix) and k[len(prefix) :] in missing_set for k in unexpected):
            hints.append(f"the checkpoint's keys carry the prefix {prefix!r}; strip it before loading")
    relu_on = any(k.replace(".fc.0.", ".fc.") in missing_set for k in unexpected if ".fc.0." in k)
    relu_off = any(k.replace(".fc.", ".fc.0.") in missing_set for k in unexpected if ".fc.0." not in k)
    if (relu_on or relu_off) and component == IMAGE_ADAPTER_KEY:
        hints.append(
            "the head keys differ only by '.fc.0.' vs '.fc.': the checkpoint was trained with the other "
            "proj_relu setting; use the same proj_relu as in training"
        )
    return hints


def load_base_text_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """Load only ``text_adapter`` from a base ``text_adapter.pth`` (the seed guide's step 2).

    Neither ``text_cross_attn`` (kept fresh even when the file has one) nor the optimizer is loaded;
    the optimizer state travels in ``report.checkpoint`` for ``load_optimizer_state``.

    Args:
        model: Model with ``text_adapter``.
        path: The checkpoint file.
        strict: As for ``load_adapter_state``.
        map_location: Where tensors are read to before copying into the model.

    Returns:
        A ``LoadReport`` with the file's sha256, epoch and content.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Unreadable file, no ``text_adapter`` key, or keys/shapes that do not fit.
    """
    return _load_base("text", model, path, strict=strict, map_location=map_location)


def load_base_image_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """Load only ``image_adapter`` from a base ``image_adapter.pth`` (the seed guide's step 2).

    Args:
        model: Model with ``image_adapter``.
        path: The checkpoint file.
        strict: As for ``load_adapter_state``.
        map_location: Where tensors are read to before copying into the model.

    Returns:
        A ``LoadReport`` with the file's sha256, epoch and content.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Unreadable file, no ``image_adapter`` key, or keys/shapes that do not fit.
    """
    return _load_base("image", model, path, strict=strict, map_location=map_location)


def _load_base(
    stage: str, model: nn.Module, path: str | os.PathLike, *, strict: bool, map_location: str | torch.device
) -> LoadReport:
    adapter_key, _, cross_key = _stage_keys(stage)
    module = _component(model, adapter_key)
    content, digest = _read_checkpoint(path, expect_key=adapter_key, map_location=map_location)
    epoch = content.get(EPOCH_KEY)
    report = load_adapter_state(
        module,
        content[adapter_key],
        source=str(path),
        component=adapter_key,
        strict=strict,
        sha256=digest,
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
    )
    if cross_key in content:
        logger.info("%s: its %r weights were not loaded (base adapters only)", path, cross_key)
    return dataclasses.replace(report, checkpoint=content)


# --------------------------------------------------------------------------------------------------
# Optimizer state
# --------------------------------------------------------------------------------------------------


def map_optimizer_state(
    base_optimizer_state: Mapping[str, Any],
    base_param_names: Sequence[str] | None,
    new_param_names: Sequence[str],
    new_optimizer: torch.optim.Optimizer,
    *,
    reference_names: Sequence[str] | None = None,
    source: str = "base checkpoint",
) -> dict[str, Any]:
    """Carry a base optimizer's per-parameter state onto a new optimizer, matching parameters by name.

    Parameters present in both get the base state (Adam: ``step``, ``exp_avg``, ``exp_avg_sq``,
    cast to each parameter's device and dtype); parameters only in the new optimizer (cross-attention)
    start fresh (no state). The new optimizer keeps its own hyperparameters (lr, betas, ...): the arm's
    configuration, not the base file's, decides them.

    Args:
        base_optimizer_state: ``optimizer.state_dict()`` of the base run (``state``, ``param_groups``).
        base_param_names: The base optimizer's parameter order as qualified names (our files'
            ``param_names``), or None for a reference file, whose order is the adapter's module order:
            then ``reference_names`` gives it, or, without those, the adapter parameters of
            ``new_param_names`` (those under ``text_adapter.`` / ``image_adapter.``) in their order.
        new_param_names: Qualified names of ``new_optimizer``'s parameters in its order
            (``optimizer_param_names(model, new_optimizer)``).
        new_optimizer: The optimizer to fill; its current state is replaced.
        reference_names: The reference order for a file without ``param_names``
            (``reference_param_names(model, stage)``).
        source: Named in error messages (the checkpoint path).

    Returns:
        A summary: ``carried`` (names given base state), ``fresh`` (new names absent from the base),
        ``no_base_state`` (in the base but never stepped there), ``dropped`` (base names absent from the
        new optimizer), ``base_names_from`` (``"param_names"`` or ``"reference order"``), and
        ``base_steps`` (name -> base step count, for the carried ones).

    Raises:
        CheckpointError: The base state is malformed, its parameter count differs from the names, or a
            carried moment's shape differs from the new parameter's.
        ValueError: ``new_param_names`` does not match ``new_optimizer``'s parameter count.
    """
    if not isinstance(base_optimizer_state, Mapping) or not {"state", "param_groups"} <= set(
        base_optimizer_state
    ):
        raise CheckpointError(
            f"{source}: optimizer state must be a dict with 'state' and 'param_groups', got "
            f"{type(base_optimizer_state).__name__}"
            + (
                f" with keys {sorted(base_optimizer_state)}"
                if isinstance(base_optimizer_state, Mapping)
                else ""
            )
        )
    base_ids = [pid for group in base_optimizer_state["param_groups"] for pid in group["params"]]
    new_params = [p for group in new_optimizer.param_groups for p in group["params"]]
    new_param_names = list(new_param_names)
    if len(new_param_names) != len(new_params):
        raise ValueError(
            f"new_param_names has {len(new_param_names)} names but the new optimizer holds {len(new_params)} "
            f"parameters; use optimizer_param_names(model, optimizer)"
        )
    if base_param_names is None:
        names_from = "reference order"
        prefixes = (f"{TEXT_ADAPTER_KEY}.", f"{IMAGE_ADAPTER_KEY}.")
        base_names = (
            list(reference_names)
            if reference_names is not None
            else [n for n in new_param_names if n.startswith(prefixes)]
        )
    else:
        names_from = PARAM_NAMES_KEY
        base_names = list(base_param_names)
    if len(base_names) != len(base_ids):
        raise CheckpointError(
            f"{source}: the optimizer state covers {len(base_ids)} parameters but {len(base_names)} names "
            f"are known for it ({names_from}); the base run's optimizer held other parameters "
            f"(another adapter count?)"
        )
    base_state = base_optimizer_state["state"]
    base_by_name = dict(zip(base_names, base_ids, strict=True))

    new_state: dict[int, Any] = {}
    carried: list[str] = []
    fresh: list[str] = []
    no_base_state: list[str] = []
    base_steps: dict[str, float] = {}
    problems: list[str] = []
    for index, (name, param) in enumerate(zip(new_param_names, new_params, strict=True)):
        if name not in base_by_name:
            fresh.append(name)
            continue
        state = base_state.get(base_by_name[name])
        if not state:
            no_base_state.append(name)
            continue
        for key, value in state.items():
            if (
                isinstance(value, torch.Tensor)
                and value.dim() > 0
                and tuple(value.shape) != tuple(param.shape)
            ):
                problems.append(
                    f"{name!r}: base {key} has shape {_shape(tuple(value.shape))}, new parameter "
                    f"{_shape(tuple(param.shape))}"
                )
        new_state[index] = dict(state)
        carried.append(name)
        step = state.get("step")
        if step is not None:
            base_steps[name] = float(step.item() if isinstance(step, torch.Tensor) else step)
    if problems:
        raise CheckpointError(
            f"{source}: optimizer state does not fit the new parameters: "
            + "; ".join(problems)
            + ". Trained with another backbone or adapter size?"
        )
    new_param_set = set(new_param_names)
    dropped = [n for n in base_names if n not in new_param_set]
    # Optimizer.load_state_dict casts moments to each parameter's device/dtype and keeps 'step' as
    # Adam expects; the new param_groups keep the arm's own hyperparameters.
    target = new_optimizer.state_dict()
    new_optimizer.load_state_dict({"state": new_state, "param_groups": target["param_groups"]})
    summary = {
        "carried": carried,
        "fresh": fresh,
        "no_base_state": no_base_state,
        "dropped": dropped,
        "base_names_from": names_from,
        "base_steps": base_steps,
        "source": source,
    }
    logger.info(
        "%s: optimizer state carried for %d parameters, fresh for %d (%s), no base state for %d",
        source,
        len(carried),
        len(fresh),
        ", ".join(fresh) if fresh else "none",
        len(no_base_state),
    )
    if dropped:
        logger.warning(
            "%s: base optimizer state of %s has no parameter in the new optimizer", source, dropped
        )
    return summary


def load_optimizer_state(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    stage: Literal["text", "image"],
    source: str = "base checkpoint",
) -> dict[str, Any]:
    """Carry a loaded checkpoint's stage optimizer state onto ``optimizer`` (see ``map_optimizer_state``).

    The base parameter order comes from the file's ``param_names`` when present, else from the
    reference order (``reference_param_names(model, stage)``).

    Args:
        checkpoint: The checkpoint dict (``LoadReport.checkpoint`` or ``load_checkpoint_file``).
        model: The model owning ``optimizer``'s parameters.
        optimizer: The new optimizer to fill.
        stage: ``"text"`` or ``"image"``.
        source: The checkpoint path, named in messages.

    Returns:
        ``map_optimizer_state``'s summary.

    Raises:
        CheckpointError: The checkpoint has no optimizer state for the stage, or it does not fit.
    """
    _, optimizer_key, _ = _stage_keys(stage)
    if optimizer_key not in checkpoint or checkpoint[optimizer_key] is None:
        raise CheckpointError(
            f"{source}: no {optimizer_key!r} entry (keys found: {sorted(map(str, checkpoint))}); the base run "
            f"was saved without its optimizer, so its state cannot be carried over"
        )
    return map_optimizer_state(
        checkpoint[optimizer_key],
        checkpoint.get(PARAM_NAMES_KEY),
        optimizer_param_names(model, optimizer),
        optimizer,
        reference_names=reference_param_names(model, stage),
        source=source,
    )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _stage_keys(stage: str) -> tuple[str, str, str]:
    try:
        return _STAGE_KEYS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(_STAGE_KEYS)}") from None


def _component(model: nn.Module, name: str) -> nn.Module:
    module = getattr(model, name, None)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"model ({type(model).__name__}) has no {name!r} module"
            + ("" if module is None else f" ({name} is a {type(module).__name__})")
        )
    return module
