"""One training run of one arm: build, load the base, stage 1, stage 2, resume, records (``run_training``).

Optimizer carry-over: a from-base arm maps the base checkpoint's Adam state (moments and step counts)
onto its new optimizer by parameter name (the reference's adapter order for reference files); the
cross-attention parameters start with fresh state. The learning-rate **schedule starts afresh**: a
from-base run is a new run with the baseline's schedule (stage-2 MultiStepLR counts its own iterations
from 0), so ``xattn_from_base`` and ``baseline_continued`` see the same lr sequence as ``baseline``.

Resume: after every epoch the stage's full state (adapters, cross-attention, optimizer, scheduler,
step count, epoch losses) is written atomically to ``run_dir/.resume/{text,image}.pth``; the run's
identity (resolved hyperparameters, arm, seed, manifest and base checkpoint hashes) to
``.resume/identity.json``. Rerunning the same command continues after the last completed epoch. All
randomness is derived from ``(seed, stream, stage, epoch, sample)`` (``aaclip_xattn.seeding``), so no
global RNG state needs restoring and the result is bit-identical on CPU to an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from aaclip_xattn.errors import NonFiniteLossError
from aaclip_xattn.fileio import read_json, sha256_file, write_json
from aaclip_xattn.perf import PerfConfig, backend_settings
from aaclip_xattn.seeding import make_generator, stream_seed
from aaclip_xattn.train.arms import ArmSpec, get_arm
from aaclip_xattn.train.config import TrainConfig, resolve_schedule
from aaclip_xattn.train.records import (
    RUN_FORMAT,
    collect_versions,
    diff_identity,
    write_run_record,
    write_train_log,
)
from aaclip_xattn.train.stage1 import (
    STAGE_TEXT,
    build_text_optimizer,
    is_feature_cache_exact,
    train_text_epoch,
)
from aaclip_xattn.train.stage2 import build_image_optimizer, compute_text_state, train_image_epoch

__all__ = ["RESUME_DIR", "ResumeMismatchError", "resolve_device", "run_training"]

logger = logging.getLogger(__name__)

RESUME_DIR: Final = ".resume"
_IDENTITY_FILE: Final = "identity.json"
_TEXT_RESUME: Final = "text.pth"
_IMAGE_RESUME: Final = "image.pth"
#: Config keys that do not change the result and may differ between an interrupted run and its rerun.
_NOT_IDENTITY: Final = ("device", "num_workers")


class ResumeMismatchError(ValueError):
    """The resume state in a run directory belongs to a different configuration."""


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: ``"cuda"`` requested but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


def run_training(
    cfg: TrainConfig,
    *,
    run_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    arm: str,
    base_dir: str | os.PathLike | None = None,
    progress: bool = False,
    base_text_adapter: str | os.PathLike | None = None,
    base_image_adapter: str | os.PathLike | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Train one arm (stage 1 then stage 2) and write its checkpoints and records under ``run_dir``.

    Writes ``text_adapter.pth``, ``image_adapter.pth`` (and ``image_adapter_{k}.pth`` when requested),
    ``run.json``, ``train_log.csv`` and ``train.log``; resume state lives in ``run_dir/.resume/``.
    Does not seed global RNGs (entry points call ``seed_everything``): adapter init uses the ``init``
    stream inside ``torch.random.fork_rng``, data order the ``data_order`` stream, so every arm of one
    seed sees the same initial adapters (where it has fresh ones) and the same batches.

    Args:
        cfg: The training configuration.
        run_dir: Output directory of this run.
        manifest_path: Few-shot manifest (``results/splits/...json``) listing the training samples.
        arm: ``baseline``, ``xattn_from_base``, ``xattn_scratch`` or ``baseline_continued``.
        base_dir: For from-base arms: the baseline run directory holding ``text_adapter.pth`` and
            ``image_adapter.pth``.
        progress: Show tqdm bars (off in tests and workflow jobs).
        base_text_adapter: Explicit base ``text_adapter.pth`` (overrides ``base_dir``).
        base_image_adapter: Explicit base ``image_adapter.pth`` (overrides ``base_dir``).
        restart: Discard resume state of another configuration instead of raising.

    Returns:
        The run record (the content of ``run.json``).

    Raises:
        ValueError: Bad arm, missing or superfluous base paths, impossible ``evaluated_checkpoint``.
        ResumeMismatchError: ``run_dir`` holds resume state of another configuration (keys named).
        FileNotFoundError, aaclip_xattn.errors.CheckpointError: A base checkpoint cannot be loaded.
        aaclip_xattn.errors.NonFiniteLossError: A NaN/inf loss (the last good epoch stays on disk).
    """
    spec = get_arm(arm)
    schedule = resolve_schedule(cfg, spec)
    text_path, image_path = _base_paths(spec, base_dir, base_text_adapter, base_image_adapter)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler, restore_level = _attach_log_file(run_dir / "train.log")
    try:
        device = resolve_device(cfg.device)
        # perf (issue 8): fast paths on by default on CUDA, off on CPU (the plain path, unchanged).
        perf = cfg.perf_settings(device)
        with backend_settings(perf, device):
            return _run(
                cfg,
                spec,
                schedule,
                run_dir,
                Path(manifest_path),
                text_path,
                image_path,
                progress,
                restart,
                device,
                perf,
            )
    finally:
        package_logger = logging.getLogger("aaclip_xattn")
        package_logger.removeHandler(handler)
        package_logger.setLevel(restore_level)
        handler.close()


def _base_paths(
    spec: ArmSpec,
    base_dir: str | os.PathLike | None,
    text: str | os.PathLike | None,
    image: str | os.PathLike | None,
) -> tuple[Path | None, Path | None]:
    if not spec.from_base:
        if base_dir is not None or text is not None or image is not None:
            raise ValueError(
                f"arm {spec.name} starts from fresh adapters; it takes no base checkpoint "
                "(base_dir / --load_base_text_adapter / --load_base_image_adapter). "
                "Use arm xattn_from_base or baseline_continued to start from a baseline"
            )
        return None, None
    if base_dir is not None:
        text = text if text is not None else Path(base_dir) / "text_adapter.pth"
        image = image if image is not None else Path(base_dir) / "image_adapter.pth"
    if text is None or image is None:
        missing = [
            flag
            for flag, value in (("--load_base_text_adapter", text), ("--load_base_image_adapter", image))
            if value is None
        ]
        raise ValueError(
            f"arm {spec.name} starts from that seed's baseline: give base_dir (the baseline run directory) "
            f"or both base checkpoints; missing: {', '.join(missing)}"
        )
    return Path(text), Path(image)


def _attach_log_file(path: Path) -> tuple[logging.Handler, int]:
    """Add a file handler to the package logger (never the root logger) for the run's duration."""
    package_logger = logging.getLogger("aaclip_xattn")
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    previous = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    return handler, previous


def _build_model(cfg: TrainConfig, spec: ArmSpec) -> nn.Module:
    """Create the model with adapters initialised from the ``init`` stream, leaving global RNGs untouched."""
    from aaclip_xattn import create_model

    options = dict(cfg.model_options)
    if cfg.descriptions is not None:
        options["descriptions"] = cfg.descriptions
    # The adapters draw from the "init" stream's generator; anything the backbone build draws from the
    # global RNG happens inside fork_rng under the same stream seed, so global state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "init"))
        return create_model(
            spec.kind,
            backbone=cfg.backbone,
            pretrained=cfg.pretrained,
            image_size=cfg.image_size,
            generator=make_generator(cfg.seed, "init"),
            **options,
        )


def _components(model: nn.Module) -> list[str]:
    return [
        name
        for name in ("text_adapter", "image_adapter", "text_cross_attn", "image_cross_attn")
        if hasattr(model, name)
    ]


def _fingerprints(model: nn.Module, names: list[str] | None = None) -> dict[str, str]:
    from aaclip_xattn.checkpoint import tensor_fingerprint

    return {name: tensor_fingerprint(getattr(model, name)) for name in (names or _components(model))}


def _hyperparameters(cfg: TrainConfig, schedule: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    out = cfg.to_dict()
    out.update(schedule)
    out["image_size"] = int(getattr(model, "image_size", cfg.image_size or 0)) or cfg.image_size
    # The model's canonical digest of the descriptions mapping (what the evaluator records as well).
    descriptions = getattr(model, "descriptions", None)
    out["descriptions_sha256"] = getattr(descriptions, "sha256", None)
    return out


def _run(
    cfg: TrainConfig,
    spec: ArmSpec,
    schedule: Mapping[str, Any],
    run_dir: Path,
    manifest_path: Path,
    text_path: Path | None,
    image_path: Path | None,
    progress: bool,
    restart: bool,
    device: torch.device,
    perf: PerfConfig,
) -> dict[str, Any]:
    from aaclip_xattn.checkpoint import verify_weight_loading
    from aaclip_xattn.data import read_manifest

    manifest = read_manifest(manifest_path)
    samples = list(manifest.samples)
    if not samples:
        raise ValueError(f"{manifest_path}: the manifest lists no training samples")
    classes = sorted({s.category for s in samples})
    logger.info(
        "arm %s, seed %d, %d training images of %d classes from %s, device %s",
        spec.name,
        cfg.seed,
        len(samples),
        len(classes),
        manifest_path,
        device,
    )

    model = _build_model(cfg, spec).to(device)
    with_xattn = spec.kind == "xattn"
    bases = _load_bases(model, spec, text_path, image_path, strict=cfg.strict_load, device=device)
    reports = bases.reports
    verification = verify_weight_loading(model, logger)
    initial_fingerprints = _fingerprints(model)
    hyper = _hyperparameters(cfg, schedule, model)

    identity = {
        "arm": spec.name,
        "seed": cfg.seed,
        "hyperparameters": {k: v for k, v in hyper.items() if k not in _NOT_IDENTITY},
        "manifest_sha256": manifest.sha256,
        "base_sha256": {c["role"]: c["sha256"] for c in bases.checkpoints},
    }
    resume_dir = run_dir / RESUME_DIR
    _check_identity(resume_dir, identity, restart)

    text_epochs = int(schedule["text_epoch"])
    image_epochs = int(schedule["image_epoch"])
    record = _new_record(
        spec,
        cfg,
        manifest,
        manifest_path,
        hyper=hyper,
        bases=bases,
        initial_fingerprints=initial_fingerprints,
        verification=verification,
        device=device,
    )
    record["perf"] = perf.to_dict()
    log_rows: list[dict[str, Any]] = []
    try:
        # ---------------- stage 1 (text) ----------------
        text_opt, text_names = build_text_optimizer(
            model, lr=float(schedule["text_lr"]), betas=cfg.adam_betas, with_cross_attn=with_xattn
        )
        record["param_names"]["text"] = text_names
        if spec.from_base and cfg.optimizer_carryover:
            _carry_optimizer(record, "text", reports["text"], model, text_opt, source=text_path)
        text_done, text_progress = _restore(resume_dir / _TEXT_RESUME, model, text_opt, None, "text", device)
        record["resumed_from"]["text"] = text_done
        _apply_progress(record, log_rows, "text", text_progress)
        stage1_data = _stage_dataset(cfg, samples, model.image_size, stage=1)
        cache = {} if is_feature_cache_exact(cfg.vv_axis, cfg.augment, cfg.noise_aug) else None
        record["feature_cache"] = cache is not None
        for epoch in range(text_done, text_epochs):
            result = train_text_epoch(
                model,
                text_opt,
                stage1_data,
                classes=classes,
                epoch=epoch,
                batch_size=cfg.text_batch_size,
                seed=cfg.seed,
                vv_axis=cfg.vv_axis,
                stage1_levels=cfg.stage1_levels,
                device=device,
                num_workers=cfg.num_workers,
                amp=perf.amp,
                feature_cache=cache,
                perf=perf,
                step_offset=record["steps_completed"]["text"],
                progress=progress,
            )
            _after_epoch(record, log_rows, "text", epoch, result)
            _save_resume(
                resume_dir / _TEXT_RESUME, "text", model, text_opt, None, epoch + 1, record, log_rows
            )
        _save_final(run_dir, "text", model, text_opt, record, arm=spec.name, seed=cfg.seed)
        del text_opt, cache

        # ---------------- stage 2 (image) ----------------
        _freeze_text_side(model)
        text_state = compute_text_state(model, classes, with_cross_attn=with_xattn)
        image_opt, scheduler, image_names = build_image_optimizer(
            model,
            lr=float(schedule["image_lr"]),
            betas=cfg.adam_betas,
            milestones=cfg.lr_milestones,
            gamma=cfg.lr_gamma,
            with_cross_attn=with_xattn,
        )
        record["param_names"]["image"] = image_names
        if spec.from_base and cfg.optimizer_carryover:
            _carry_optimizer(record, "image", reports["image"], model, image_opt, source=image_path)
        image_done, image_progress = _restore(
            resume_dir / _IMAGE_RESUME, model, image_opt, scheduler, "image", device
        )
        record["resumed_from"]["image"] = image_done
        _apply_progress(record, log_rows, "image", image_progress)
        stage2_data = _stage_dataset(cfg, samples, model.image_size, stage=2)
        keep_epoch = cfg.evaluated_epoch()
        for epoch in range(image_done, image_epochs):
            result = train_image_epoch(
                model,
                image_opt,
                scheduler,
                stage2_data,
                text=text_state,
                epoch=epoch,
                batch_size=cfg.image_batch_size,
                seed=cfg.seed,
                device=device,
                num_workers=cfg.num_workers,
                amp=perf.amp,
                step_offset=record["steps_completed"]["image"],
                perf=perf,
                progress=progress,
            )
            _after_epoch(record, log_rows, "image", epoch, result)
            _save_kept_epoch(cfg, run_dir, model, image_opt, epoch, keep_epoch, arm=spec.name)
            _save_resume(
                resume_dir / _IMAGE_RESUME, "image", model, image_opt, scheduler, epoch + 1, record, log_rows
            )
        _save_final(
            run_dir, "image", model, image_opt, record, arm=spec.name, seed=cfg.seed, scheduler=scheduler
        )
    except NonFiniteLossError as exc:
        _write_failed(run_dir, record, log_rows, str(exc))
        logger.error("%s", exc)
        raise

    _write_completed(run_dir, record, log_rows, model)
    logger.info(
        "arm %s done: text %d epochs (%d steps), image %d epochs (%d steps); records in %s",
        spec.name,
        record["epochs_completed"]["text"],
        record["steps_completed"]["text"],
        record["epochs_completed"]["image"],
        record["steps_completed"]["image"],
        run_dir,
    )
    return record


@dataclass(frozen=True)
class _BaseLoads:
    """What loading a from-base arm's base adapters gave (all empty for fresh-adapter arms).

    Attributes:
        reports: ``{"text": LoadReport, "image": LoadReport}`` (their ``checkpoint`` carries the optimizer).
        checkpoints: ``loaded_checkpoints`` entries of the run record (role, path, sha256).
        fingerprints: ``loaded_fingerprints`` of the run record (component -> fingerprint).
        skipped_keys: ``component:key`` of every unexpected, missing or mismatched key.
    """

    reports: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped_keys: list[str] = field(default_factory=list)


def _load_bases(
    model: nn.Module,
    spec: ArmSpec,
    text_path: Path | None,
    image_path: Path | None,
    *,
    strict: bool,
    device: torch.device,
) -> _BaseLoads:
    """Load the base ``text_adapter`` / ``image_adapter`` of a from-base arm into ``model``."""
    if not spec.from_base:
        return _BaseLoads()
    from aaclip_xattn.checkpoint import load_base_image_adapter, load_base_text_adapter

    assert text_path is not None and image_path is not None
    loads = _BaseLoads()
    loads.reports["text"] = load_base_text_adapter(model, text_path, strict=strict, map_location=device)
    loads.reports["image"] = load_base_image_adapter(model, image_path, strict=strict, map_location=device)
    for role, report in (
        ("base_text_adapter", loads.reports["text"]),
        ("base_image_adapter", loads.reports["image"]),
    ):
        loads.checkpoints.append({"role": role, "path": str(report.source), "sha256": report.sha256})
        loads.fingerprints[report.component] = report.fingerprint
        loads.skipped_keys.extend(
            f"{report.component}:{key}"
            for key in (*report.unexpected, *report.missing, *(m.key for m in report.mismatched))
        )
    return loads


def _new_record(
    spec: ArmSpec,
    cfg: TrainConfig,
    manifest: Any,
    manifest_path: Path,
    *,
    hyper: dict[str, Any],
    bases: _BaseLoads,
    initial_fingerprints: dict[str, str],
    verification: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Return the run record of a run that is starting (``status: running``, nothing trained yet)."""
    return {
        "format": RUN_FORMAT,
        "arm": spec.name,
        "seed": cfg.seed,
        "train_dataset": manifest.dataset,
        "shot": str(manifest.shot),
        "training_mode": manifest.training_mode,
        "status": "running",
        "hyperparameters": hyper,
        "epochs_completed": {"text": 0, "image": 0},
        "steps_completed": {"text": 0, "image": 0},
        "manifest": {"path": str(manifest_path), "sha256": manifest.sha256},
        "loaded_checkpoints": bases.checkpoints,
        "loaded_fingerprints": bases.fingerprints,
        "optimizer_state_loaded": {"text": False, "image": False},
        "initial_fingerprints": initial_fingerprints,
        "verification": verification,
        "final_checkpoints": {},
        "final_fingerprints": {},
        "epoch_losses": {"text": [], "image": []},
        "skipped_keys": bases.skipped_keys,
        "versions": collect_versions(),
        "device": str(device),
        "wall_time_s": {"text": 0.0, "image": 0.0},
        "load_reports": [r.to_record() for r in bases.reports.values()],
        "param_names": {},
        "optimizer_carryover": {},
        "resumed_from": {"text": 0, "image": 0},
    }


def _carry_optimizer(
    record: dict[str, Any],
    stage: str,
    report: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    source: Path | None,
) -> None:
    """Map the base checkpoint's optimizer state of ``stage`` onto ``optimizer`` and record what carried."""
    from aaclip_xattn.checkpoint import load_optimizer_state

    summary = load_optimizer_state(report.checkpoint, model, optimizer, stage=stage, source=str(source))
    record["optimizer_state_loaded"][stage] = True
    record["optimizer_carryover"][stage] = {"carried": summary["carried"], "fresh": summary["fresh"]}


def _stage_dataset(cfg: TrainConfig, samples: list, image_size: int, *, stage: int) -> Any:
    """The ``AnomalyDataset`` of ``stage`` (1 or 2) with the run's augmentation, noise and seed."""
    from aaclip_xattn.data import AnomalyDataset

    return AnomalyDataset(
        samples, image_size, stage=stage, augment=cfg.augment, seed=cfg.seed, noise_aug=cfg.noise_aug
    )


def _freeze_text_side(model: nn.Module) -> None:
    """Freeze ``text_adapter`` (and ``text_cross_attn``) before stage 2."""
    for name in ("text_adapter", "text_cross_attn"):
        if hasattr(model, name):
            getattr(model, name).requires_grad_(False)


def _save_final(
    run_dir: Path,
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    record: Mapping[str, Any],
    *,
    arm: str,
    seed: int,
    scheduler: Any = None,
) -> None:
    """Write ``{stage}_adapter.pth`` after the stage's last epoch (with the scheduler state when given)."""
    from aaclip_xattn.checkpoint import save_image_checkpoint, save_text_checkpoint

    extra: dict[str, Any] = {"arm": arm, "seed": seed, "steps": record["steps_completed"][stage]}
    if scheduler is not None:
        extra["scheduler"] = _plain(scheduler.state_dict())
    save = save_text_checkpoint if stage == "text" else save_image_checkpoint
    save(run_dir / f"{stage}_adapter.pth", model, optimizer, record["epochs_completed"][stage], **extra)


def _save_kept_epoch(
    cfg: TrainConfig,
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    keep_epoch: int | None,
    *,
    arm: str,
) -> None:
    """Write ``image_adapter_{epoch + 1}.pth`` when every epoch is kept or it is the evaluated one."""
    if cfg.save_every_epoch or keep_epoch == epoch + 1:
        from aaclip_xattn.checkpoint import save_image_checkpoint

        save_image_checkpoint(
            run_dir / f"image_adapter_{epoch + 1}.pth", model, optimizer, epoch + 1, arm=arm, seed=cfg.seed
        )


def _write_failed(run_dir: Path, record: dict[str, Any], log_rows: list[dict[str, Any]], error: str) -> None:
    """Mark the run failed with ``error`` and write its training log and run record."""
    record["status"] = "failed"
    record["error"] = error
    write_train_log(run_dir / "train_log.csv", log_rows)
    write_run_record(run_dir / "run.json", record)


def _write_completed(
    run_dir: Path, record: dict[str, Any], log_rows: list[dict[str, Any]], model: nn.Module
) -> None:
    """Record the final checkpoints and fingerprints, mark the run completed and write its records."""
    record["final_checkpoints"] = {
        name: {"path": str(run_dir / f"{name}.pth"), "sha256": sha256_file(run_dir / f"{name}.pth")}
        for name in ("text_adapter", "image_adapter")
    }
    record["final_fingerprints"] = _fingerprints(model)
    record["status"] = "completed"
    write_train_log(run_dir / "train_log.csv", log_rows)
    write_run_record(run_dir / "run.json", record)


def _check_identity(resume_dir: Path, identity: dict[str, Any], restart: bool) -> None:
    path = resume_dir / _IDENTITY_FILE
    identity = _json_roundtrip(identity)
    if path.is_file():
        old = read_json(path)
        differing = diff_identity(old, identity)
        if differing:
            if not restart:
                raise ResumeMismatchError(
                    f"{resume_dir}: resume state of another configuration (differing: {', '.join(differing)}); "
                    "rerun with the same settings to continue it, or restart from scratch (--restart / "
                    "restart=True) to discard it"
                )
            logger.warning("discarding resume state in %s (differing: %s)", resume_dir, ", ".join(differing))
            shutil.rmtree(resume_dir)
        elif restart:
            logger.warning("restart requested: discarding resume state in %s", resume_dir)
            shutil.rmtree(resume_dir)
    elif restart and resume_dir.exists():
        shutil.rmtree(resume_dir)
    write_json(path, identity)


def _json_roundtrip(obj: Any) -> Any:
    """Return ``obj`` as it reads back from JSON (tuples become lists), so comparisons are like for like."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _plain(obj: Any) -> Any:
    """Turn mapping subclasses (the scheduler's ``Counter`` of milestones) into plain dicts for a safe load."""
    if isinstance(obj, Mapping):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(value) for value in obj)
    return obj


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    stage: str,
    device: torch.device,
) -> tuple[int, dict[str, Any]]:
    """Load a stage's resume checkpoint into the model, optimizer and scheduler; return (epochs done, progress)."""
    if not path.is_file():
        return 0, {}
    from aaclip_xattn.checkpoint import load_adapter_state, load_checkpoint_file

    content = load_checkpoint_file(path, expect_key=f"{stage}_adapter", map_location=device)
    for key in (f"{stage}_adapter", f"{stage}_cross_attn"):
        if key in content:
            load_adapter_state(getattr(model, key), content[key], source=path, component=key, strict=True)
    optimizer.load_state_dict(content[f"{stage}_optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(content["scheduler"])
        scheduler.milestones = Counter(scheduler.milestones)
    done = int(content["epoch"])
    logger.info("resuming stage %s after epoch %d from %s", stage, done, path)
    return done, dict(content["progress"])


def _apply_progress(
    record: dict[str, Any], log_rows: list[dict[str, Any]], stage: str, progress: Mapping[str, Any]
) -> None:
    if not progress:
        return
    record["epochs_completed"][stage] = int(progress["epochs"])
    record["steps_completed"][stage] = int(progress["steps"])
    record["epoch_losses"][stage] = [float(v) for v in progress["losses"]]
    record["wall_time_s"][stage] = float(progress["seconds"])
    log_rows.extend(dict(row) for row in progress["log_rows"] if row["stage"] == stage)


def _after_epoch(
    record: dict[str, Any], log_rows: list[dict[str, Any]], stage: str, epoch: int, result: Any
) -> None:
    record["epochs_completed"][stage] = epoch + 1
    record["steps_completed"][stage] += result.steps
    record["epoch_losses"][stage].append(result.mean_loss)
    record["wall_time_s"][stage] += result.seconds
    log_rows.append(
        {
            "stage": stage,
            "epoch": epoch + 1,
            "steps": record["steps_completed"][stage],
            "loss": result.mean_loss,
            "lr": result.lr,
            "seconds": result.seconds,
        }
    )
    logger.info(
        "%s epoch %d: loss %.6f, %d steps, lr %g, %.1f s",
        stage,
        epoch + 1,
        result.mean_loss,
        result.steps,
        result.lr,
        result.seconds,
    )


def _save_resume(
    path: Path,
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    record: Mapping[str, Any],
    log_rows: list[dict[str, Any]],
) -> None:
    from aaclip_xattn.checkpoint import save_image_checkpoint, save_text_checkpoint

    progress = {
        "epochs": epoch,
        "steps": int(record["steps_completed"][stage]),
        "losses": [float(v) for v in record["epoch_losses"][stage]],
        "seconds": float(record["wall_time_s"][stage]),
        "log_rows": [dict(row) for row in log_rows if row["stage"] == stage],
        "saved_at": time.time(),
    }
    extra: dict[str, Any] = {"progress": progress, "stage": STAGE_TEXT if stage == "text" else 2}
    if scheduler is not None:
        extra["scheduler"] = _plain(scheduler.state_dict())
    save = save_text_checkpoint if stage == "text" else save_image_checkpoint
    save(path, model, optimizer, epoch, **extra)
