"""GPU placement for workflow jobs: a lock-file pool that gives each concurrent job its own GPU.

Snakemake's ``--resources gpu=N`` only limits how many GPU jobs run at once; every job would still
open ``cuda:0``. :func:`gpu_slot` closes that gap on one multi-GPU machine: each job takes an exclusive
``fcntl`` lock on one file per visible GPU (``<lock_dir>/<host>-gpu<id>.lock``), sets
``CUDA_VISIBLE_DEVICES`` to that GPU for its lifetime, and the lock is freed when the job ends, also
when it is killed (the kernel drops ``flock`` locks of dead processes). The slot must be taken before
torch initialises CUDA, which reads ``CUDA_VISIBLE_DEVICES`` once. With one visible GPU (a SLURM job,
a single-GPU machine) or none, or on ``device="cpu"``, it does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_LOCK_DIR", "acquire_gpu", "gpu_slot", "resolve_device", "visible_gpus"]

logger = logging.getLogger(__name__)

#: Where the lock files live unless a directory is given; one per user, shared by all workflows.
DEFAULT_LOCK_DIR: Final[Path] = Path(tempfile.gettempdir()) / f"aaclip_xattn-gpu-locks-{os.getuid()}"

_ENV: Final[str] = "CUDA_VISIBLE_DEVICES"


def visible_gpus() -> list[str]:
    """Return the GPU ids this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES`` wins when set (ids or UUIDs; ``""`` or ``-1`` mean none). Otherwise the
    ids are ``0 … n-1`` with ``n = torch.cuda.device_count()``, which counts through NVML and does not
    initialise CUDA, so the variable can still be set afterwards.

    Returns:
        The ids, in order; empty without GPUs.
    """
    value = os.environ.get(_ENV)
    if value is not None:
        ids = [part.strip() for part in value.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        return [] if not ids or ids[0] == "-1" else ids
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def resolve_device(device: str) -> str:
    """Turn a configured device into a torch device string: ``auto`` becomes ``cuda`` or ``cpu``.

    Call it inside `gpu_slot`, on the machine that runs the job (the submit host may have no GPU).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or an explicit torch device such as ``cuda:1``.

    Returns:
        ``device`` unchanged unless it is ``auto``.
    """
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _lock_path(lock_dir: Path, gpu: str) -> Path:
    # The host name keeps jobs on different nodes sharing a file system from blocking each other.
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in gpu)
    return lock_dir / f"{socket.gethostname()}-gpu{safe}.lock"


def acquire_gpu(
    gpus: Sequence[str],
    lock_dir: str | os.PathLike,
    *,
    timeout_s: float | None = None,
    poll_s: float = 0.2,
) -> tuple[str, int]:
    """Lock the first free GPU of ``gpus``, waiting while all are taken.

    Args:
        gpus: Candidate ``CUDA_VISIBLE_DEVICES`` ids (at least one).
        lock_dir: Directory of the lock files (created if missing).
        timeout_s: Give up after this many seconds; None waits forever.
        poll_s: Seconds between attempts while every GPU is taken.

    Returns:
        ``(gpu_id, fd)``: the id and the open file descriptor holding its lock; close ``fd`` to release.

    Raises:
        ValueError: ``gpus`` is empty.
        TimeoutError: Every GPU stayed locked for ``timeout_s`` seconds (the message names the lock files).
    """
    if not gpus:
        raise ValueError("acquire_gpu: no GPUs to choose from; expected at least one CUDA_VISIBLE_DEVICES id")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    waited = False
    while True:
        for gpu in gpus:
            fd = os.open(_lock_path(lock_dir, gpu), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return gpu, fd
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            raise TimeoutError(
                f"every GPU ({', '.join(gpus)}) stayed locked for {timeout_s:g} s; lock files in {lock_dir}. "
                "Run with --resources gpu=<number of GPUs> so Snakemake never starts more GPU jobs than GPUs."
            )
        if not waited:
            logger.info("all %d GPUs are taken (locks in %s); waiting for one", len(gpus), lock_dir)
            waited = True
        time.sleep(poll_s)


@contextlib.contextmanager
def gpu_slot(
    device: str,
    *,
    lock_dir: str | os.PathLike | None = None,
    gpus: Sequence[str] | None = None,
    timeout_s: float | None = None,
) -> Iterator[str | None]:
    """Give the enclosed code one GPU of its own by setting ``CUDA_VISIBLE_DEVICES``.

    Use it in entry points around everything that may touch CUDA::

        with gpu_slot(cfg.device):
            run_training(cfg, ...)

    Args:
        device: The configured device: ``cpu`` (no-op), ``cuda`` or ``auto``.
        lock_dir: Lock-file directory; `DEFAULT_LOCK_DIR` when None.
        gpus: Candidate ids; `visible_gpus` when None.
        timeout_s: Passed to `acquire_gpu`.

    Yields:
        The GPU id now in ``CUDA_VISIBLE_DEVICES``, or None when nothing was changed (cpu, no GPU, or a
        single visible GPU, which needs no arbitration).
    """
    if device == "cpu":
        yield None
        return
    candidates = list(visible_gpus() if gpus is None else gpus)
    if len(candidates) <= 1:
        yield None
        return
    gpu, fd = acquire_gpu(candidates, DEFAULT_LOCK_DIR if lock_dir is None else lock_dir, timeout_s=timeout_s)
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = gpu
    logger.info("using GPU %s of %s (CUDA_VISIBLE_DEVICES=%s)", gpu, ",".join(candidates), gpu)
    try:
        yield gpu
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous
        os.close(fd)
