"""Performance fast paths: which are on (``PerfConfig``, ``resolve_perf``) and the helpers that apply them.

Every fast path is a switch of :class:`PerfConfig`, and each one is numerically checked against the
plain fp32 path by ``tests/perf/``. :func:`resolve_perf` turns them **on by default on CUDA** and **off
on CPU** (where the plain path stays bit-identical to a run without this module), and
``reproduce_reference=True`` restores the reference's fp32 numerics (no bf16, no TF32, explicit
softmax V-V attention, no compilation) for matching published numbers. Every arm of a study resolves
the same settings from the same config, so arms always share them.

The switches:

* ``amp``: bf16 autocast around the forward passes and losses (maps and losses within the tolerances
  stated in ``tests/perf/test_perf.py``).
* ``fused_attention``: the stage-1 V-V attention through ``F.scaled_dot_product_attention`` instead of
  an explicit softmax. The adapted image and text forwards already run open_clip's
  ``nn.MultiheadAttention`` with ``need_weights=False`` (which dispatches to the fused kernel), and
  ``GatedCrossAttention`` calls ``scaled_dot_product_attention`` itself, so only V-V needed it.
* ``compile``: ``torch.compile`` of the image forward; any failure logs a WARNING and runs eager
  (:func:`compile_with_fallback`).
* ``tf32``: TF32 tensor-core matmuls/convolutions for the fp32 parts (never under
  ``reproduce_reference``).
* ``channels_last``: images in channels-last layout, copied with ``non_blocking`` from pinned memory
  (:func:`prepare_images`).
* ``device_loss``: losses summed on the device and checked for NaN/inf once per epoch instead of a
  ``.item()`` host round trip per step (:class:`LossMeter`).
* ``pin_memory``: DataLoader pinned host memory.

The batch size is never a perf setting: a larger effective batch comes from seed-batched training
(``aaclip_xattn.train.seed_batched``), which keeps every seed's batch-2 optimisation unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

from aaclip_xattn.errors import NonFiniteLossError

__all__ = [
    "PERF_SWITCHES",
    "LossMeter",
    "PerfConfig",
    "autocast",
    "backend_settings",
    "compile_with_fallback",
    "prepare_images",
    "resolve_perf",
]

logger = logging.getLogger(__name__)

#: Boolean fast-path switches of :class:`PerfConfig`, in documentation order.
PERF_SWITCHES: Final = (
    "amp",
    "fused_attention",
    "compile",
    "tf32",
    "channels_last",
    "device_loss",
    "pin_memory",
)
#: Switches that change the numerics and are therefore off under ``reproduce_reference``.
_NUMERIC_SWITCHES: Final = ("amp", "fused_attention", "compile", "tf32", "channels_last")
_COMPILE_MODES: Final = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class PerfConfig:
    """Fast-path switches; the defaults are the plain path (what CPU runs use).

    Attributes:
        amp: bf16 autocast of forwards and losses.
        fused_attention: V-V attention via ``scaled_dot_product_attention``.
        compile: ``torch.compile`` the image forward (eager fallback on failure).
        compile_mode: ``torch.compile`` mode.
        tf32: allow TF32 matmuls and convolutions.
        channels_last: channels-last images, non-blocking host-to-device copies.
        device_loss: accumulate losses on the device, one host sync per epoch.
        pin_memory: pinned host memory in the DataLoaders.
        reproduce_reference: the reference's fp32 numerics were requested (every numeric switch off).
    """

    amp: bool = False
    fused_attention: bool = False
    compile: bool = False
    compile_mode: str = "default"
    tf32: bool = False
    channels_last: bool = False
    device_loss: bool = False
    pin_memory: bool = False
    reproduce_reference: bool = False

    def __post_init__(self) -> None:
        for name in (*PERF_SWITCHES, "reproduce_reference"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PerfConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.compile_mode not in _COMPILE_MODES:
            raise ValueError(
                f"PerfConfig.compile_mode must be one of {', '.join(_COMPILE_MODES)}, got {self.compile_mode!r}"
            )
        if self.reproduce_reference:
            on = [name for name in _NUMERIC_SWITCHES if getattr(self, name)]
            if on:
                raise ValueError(
                    f"PerfConfig: reproduce_reference=true restores the reference's fp32 numerics, but "
                    f"{', '.join(on)} {'is' if len(on) == 1 else 'are'} on; turn them off or drop "
                    "reproduce_reference"
                )

    @classmethod
    def field_names(cls) -> list[str]:
        """Return the valid keys of :meth:`from_mapping`."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "perf") -> PerfConfig:
        """Build from a mapping, rejecting unknown keys (the message lists the valid ones).

        Raises:
            ValueError: An unknown key or an invalid value (``source`` and the key named).
        """
        unknown = sorted(set(mapping) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                f"{', '.join(cls.field_names())}"
            )
        try:
            return cls(**dict(mapping))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict (recorded in ``run.json`` and the benchmark JSON)."""
        return dataclasses.asdict(self)


def resolve_perf(
    device: torch.device | str,
    *,
    reproduce_reference: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> PerfConfig:
    """Return the fast-path settings for ``device``: on by default on CUDA, off on CPU.

    Precedence: an explicit value in ``overrides`` (``None`` values count as not given) > the
    ``reproduce_reference`` defaults (every numeric switch off; ``device_loss`` and ``pin_memory`` stay
    on CUDA since they do not change a number) > the device default.

    Args:
        device: Where the run computes (``"cuda"``, ``"cuda:1"``, ``"cpu"`` or a ``torch.device``).
        reproduce_reference: Restore the reference's fp32 numerics.
        overrides: Explicit switches (:class:`PerfConfig` keys).

    Returns:
        The resolved :class:`PerfConfig`.

    Raises:
        ValueError: An unknown override key, a non-bool switch, or a numeric switch forced on together
            with ``reproduce_reference``.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    values: dict[str, Any] = {name: cuda for name in PERF_SWITCHES}
    if reproduce_reference:
        values.update({name: False for name in _NUMERIC_SWITCHES})
    values["reproduce_reference"] = bool(reproduce_reference)
    explicit = {key: value for key, value in dict(overrides or {}).items() if value is not None}
    if "reproduce_reference" in explicit and bool(explicit["reproduce_reference"]) != reproduce_reference:
        raise ValueError(
            "perf: give reproduce_reference as the keyword argument, not inside the overrides "
            f"(got reproduce_reference={explicit['reproduce_reference']!r} in the overrides)"
        )
    values.update(explicit)
    return PerfConfig.from_mapping(values, source="perf")


def autocast(perf: PerfConfig, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Return the bf16 autocast context of ``perf`` for ``device`` (a null context when ``amp`` is off)."""
    if not perf.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def backend_settings(perf: PerfConfig, device: torch.device | str) -> Iterator[None]:
    """Set the TF32 switches of ``perf`` on CUDA for the duration of the block, then restore them.

    Library code must not leave global backend state behind, so the previous values come back on exit.
    On CPU nothing is touched.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = perf.tf32
    torch.backends.cudnn.allow_tf32 = perf.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def prepare_images(images: torch.Tensor, perf: PerfConfig, device: torch.device | str) -> torch.Tensor:
    """Move a ``(B, 3, S, S)`` batch to ``device``: channels-last and non-blocking when ``perf`` says so."""
    if not perf.channels_last:
        return images.to(device)
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


class _CompiledWithFallback:
    """Call a ``torch.compile``-d function; on its first failure log a WARNING and run eager from then on."""

    def __init__(self, fn: Callable[..., Any], compiled: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.compiled = compiled
        self.name = name
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
                self.failed = True
                logger.warning(
                    "torch.compile of %s failed (%s: %s); running it eager",
                    self.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
        return self.fn(*args, **kwargs)


def compile_with_fallback(
    fn: Callable[..., Any], perf: PerfConfig, *, name: str = "forward"
) -> Callable[..., Any]:
    """Return ``fn`` compiled with ``torch.compile`` when ``perf.compile``, else ``fn`` itself.

    Compilation is lazy (it happens on the first call), so the returned callable catches a failure of
    ``torch.compile`` itself or of the first compiled call, logs a WARNING naming ``name`` and the error,
    and runs ``fn`` eager from then on. The eager and compiled functions compute the same values within
    float rounding (checked in ``tests/perf/test_perf.py``).

    Args:
        fn: The function (or module) to compile.
        perf: The settings; nothing happens unless ``perf.compile``.
        name: What ``fn`` is, for the warning.
    """
    if not perf.compile:
        return fn
    try:
        compiled = torch.compile(fn, mode=None if perf.compile_mode == "default" else perf.compile_mode)
    except Exception as exc:  # noqa: BLE001 - torch.compile unavailable (e.g. unsupported Python)
        logger.warning(
            "torch.compile of %s is unavailable (%s: %s); running it eager", name, type(exc).__name__, exc
        )
        return fn
    return _CompiledWithFallback(fn, compiled, name)


class LossMeter:
    """Sum one run's step losses and stop on a non-finite loss, with or without a host sync per step.

    With ``device_loss`` off (the plain path) every :meth:`add` reads the loss on the host and raises at
    once, before the optimizer step, as the reference loop does. With it on, the sum (float64) and the
    first non-finite step stay on the device and :meth:`result` syncs once: an epoch with a NaN/inf loss
    still raises (naming the first bad step), before the epoch's state is saved, so the last completed
    epoch's checkpoint is what remains.

    Args:
        device: Where the losses live.
        device_loss: Keep the accumulation on the device.
        stage: ``text`` or ``image`` (for messages).
        epoch: 0-based epoch (for messages).
        step_offset: Steps already taken in this stage.
        label: Extra context for messages (e.g. ``"seed 3, "``).
    """

    def __init__(
        self,
        device: torch.device | str,
        *,
        device_loss: bool,
        stage: str,
        epoch: int,
        step_offset: int = 0,
        label: str = "",
    ) -> None:
        self.device = torch.device(device)
        self.device_loss = device_loss
        self.stage = stage
        self.epoch = epoch
        self.step_offset = step_offset
        self.label = label
        self.steps = 0
        self._host_total = 0.0
        self._total = torch.zeros((), dtype=torch.float64, device=self.device)
        self._first_bad = torch.zeros((), dtype=torch.int64, device=self.device)

    def _error(self, value: float, step: int) -> NonFiniteLossError:
        number = 1 if self.stage == "text" else 2
        return NonFiniteLossError(
            f"non-finite loss {value} in {self.label}stage {self.stage} ({number}), epoch {self.epoch + 1}, "
            f"step {step}; the last completed epoch's checkpoint is kept"
        )

    def add(self, loss: torch.Tensor) -> None:
        """Record one step's scalar loss (call before ``optimizer.step()``).

        Raises:
            NonFiniteLossError: ``device_loss`` off and the loss is NaN or infinite.
        """
        self.steps += 1
        step = self.step_offset + self.steps
        if not self.device_loss:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise self._error(value, step)
            self._host_total += value
            return
        value = loss.detach().to(torch.float64)
        self._total += value
        bad = ~torch.isfinite(value) & (self._first_bad == 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)

    def result(self) -> tuple[float, int]:
        """Return ``(mean loss, steps)`` of the epoch (one host sync with ``device_loss``).

        Raises:
            NonFiniteLossError: A recorded loss was NaN or infinite (``device_loss`` on).
        """
        if not self.device_loss:
            return self._host_total / max(self.steps, 1), self.steps
        total, first_bad = self._total.item(), int(self._first_bad.item())
        if first_bad:
            raise self._error(total, first_bad)
        return total / max(self.steps, 1), self.steps
