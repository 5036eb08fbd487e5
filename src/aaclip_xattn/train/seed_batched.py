"""Seed-batched training: several seeds of one arm in one process, sharing the frozen backbone.

The reference trains with batch 2, which leaves a large GPU mostly idle, and a larger batch would change
the method. Instead, S seeds of the same arm are trained together: every seed keeps its own adapters
(initialised from its own ``init`` stream), its own Adam and MultiStepLR, its own manifest, data order
(``data_order`` stream) and augmentation stream, exactly as :func:`~aaclip_xattn.train.runner.run_training`
would give it alone. One step stacks the S batches (``2 × S`` images) through the **shared frozen
backbone**, applies each seed's adapters, heads and cross-attention to its own rows with batched matrix
products (``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked per-seed weights),
computes each seed's loss on its own rows, backpropagates their sum (a seed's parameters receive only
its own loss's gradient) and steps each seed's optimizer. Every seed therefore sees the batch-2
optimisation it would see alone; ``tests/perf/test_seed_batched.py`` checks the final weights, optimizer
states and losses against separate ``run_training`` runs.

Two subtleties are handled so that the equivalence is exact in arithmetic (equal up to float rounding):

* the stage-1 V-V ``batch`` axis attends across the images of a batch, so the stacked batch is split
  into one attention group per seed (``AdaptedCLIP.stage1_features(..., groups=S)``);
* seeds whose current batch has a different size (manifests of different lengths, a short last batch)
  are stepped in sub-groups of equal batch size; a seed whose epoch is over simply stops taking steps.

Outputs are the per-seed files of ``run_training`` (``text_adapter.pth``, ``image_adapter.pth``,
``run.json``, ``train_log.csv``, ``train.log``) in each seed's run directory; ``run.json`` also records
the group (``seed_batched``) and the resolved fast paths (``perf``).

Resume: every seed keeps ``run_training``'s resume state in its own ``run_dir/.resume/``
(``identity.json``, ``text.pth``, ``image.pth``, written after every epoch), plus the previous epoch's
state (``text.prev.pth``, ``image.prev.pth``): the seeds are saved one after another, so a group killed
while saving has some seeds one epoch ahead. A rerun of the same group continues **all** seeds after
the last epoch that every seed completed (a seed that is ahead is restored from its previous state), so
the group steps exactly as an uninterrupted run did and kill + rerun gives bit-identical weights on CPU.
The identity adds the group's seeds (``seed_group``): resume state of another grouping, or of a
per-seed ``run_training`` run, is refused naming the differing keys (``restart=True`` discards it),
because a different grouping rounds differently.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from aaclip_xattn.adapters import blend_residual
from aaclip_xattn.errors import NonFiniteLossError
from aaclip_xattn.model import NUM_NORMAL_SENTENCES, ImageFeatures, make_anchors
from aaclip_xattn.perf import (
    LossMeter,
    PerfConfig,
    autocast,
    backend_settings,
    compile_with_fallback,
    prepare_images,
)
from aaclip_xattn.seeding import make_generator
from aaclip_xattn.train.arms import ArmSpec, get_arm
from aaclip_xattn.train.config import TrainConfig, resolve_schedule
from aaclip_xattn.train.losses import ORTHOGONAL_WEIGHT, image_ce_loss, orthogonal_loss, seg_loss
from aaclip_xattn.train.stage1 import (
    STAGE_IMAGE,
    STAGE_TEXT,
    EpochResult,
    build_text_optimizer,
    class_indices,
    epoch_loader,
    is_feature_cache_exact,
)
from aaclip_xattn.train.stage2 import TextState, build_image_optimizer, compute_text_state

__all__ = [
    "PREVIOUS_SUFFIX",
    "SeedGroupResumeError",
    "SeedMember",
    "grouped_condition_anchors",
    "grouped_encode_image",
    "grouped_text_anchors",
    "group_resume_epoch",
    "resolve_train_perf",
    "stacked_apply",
    "stage1_total_loss",
    "stage2_total_loss",
    "train_seed_group",
]

logger = logging.getLogger(__name__)

#: Suffix of the previous epoch's resume state next to ``.resume/{text,image}.pth``.
PREVIOUS_SUFFIX: Final = ".prev.pth"


class SeedGroupResumeError(ValueError):
    """The seeds of a group hold resume states that no common epoch can continue."""


@dataclass(frozen=True)
class SeedMember:
    """One seed of a seed-batched group: where its data comes from and where its outputs go.

    Attributes:
        seed: The run seed (split, data order, augmentation and adapter-init streams).
        run_dir: The seed's run directory (the same files as ``run_training`` writes).
        manifest_path: The seed's few-shot manifest.
        base_dir: For from-base arms: the seed's baseline run directory.
    """

    seed: int
    run_dir: Path
    manifest_path: Path
    base_dir: Path | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "seed member") -> SeedMember:
        """Build from ``{"seed", "run_dir", "manifest_path", "base_dir"?}``, rejecting unknown keys."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(valid))
        missing = [key for key in ("seed", "run_dir", "manifest_path") if key not in mapping]
        if unknown or missing:
            raise ValueError(
                f"{source}: unknown key(s) {unknown} / missing key(s) {missing}; valid keys: {', '.join(valid)}"
            )
        base = mapping.get("base_dir")
        return cls(
            int(mapping["seed"]),
            Path(mapping["run_dir"]),
            Path(mapping["manifest_path"]),
            None if base is None else Path(base),
        )


# --------------------------------------------------------------------------------------------------
# Batched per-seed modules
# --------------------------------------------------------------------------------------------------


def _stacked_params(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Stack the same-named parameters of same-shaped modules along a new leading seed axis (differentiable)."""
    named = [dict(m.named_parameters()) for m in modules]
    return {name: torch.stack([params[name] for params in named]) for name in named[0]}


def stacked_apply(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Apply module ``g`` of ``modules`` to the ``g``-th of ``len(modules)`` equal row blocks of ``x``.

    The modules (one per seed, same architecture) are evaluated as one batched call:
    ``vmap(functional_call(modules[0], stacked_params_g, x_g))``. Gradients flow into each module's own
    parameters.

    Args:
        modules: G modules of one architecture (adapters, projection heads).
        x: ``(G * N, ...)`` inputs, the rows of module ``g`` at ``[g * N, (g + 1) * N)``.

    Returns:
        ``(G * N, ...)`` outputs in the same row order.
    """
    groups = len(modules)
    if groups == 1:
        return modules[0](x)
    if x.shape[0] % groups:
        raise ValueError(f"{x.shape[0]} rows cannot be split into {groups} equal seed groups")
    params = _stacked_params(modules)
    xs = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
    out = vmap(lambda p, xi: functional_call(modules[0], p, (xi,)))(params, xs)
    return out.reshape(x.shape[0], *out.shape[2:])


def _grouped_cross_attention(
    modules: Sequence[nn.Module], x: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """``GatedCrossAttention.forward`` of G seeds on their own row blocks, the attention in one fused call."""
    groups = len(modules)
    if groups == 1:
        return modules[0](x, context)
    first = modules[0]
    batch = x.shape[0]
    q = stacked_apply([m.q_proj for m in modules], x)
    k = stacked_apply([m.k_proj for m in modules], context)
    v = stacked_apply([m.v_proj for m in modules], context)
    out = F.scaled_dot_product_attention(first._split(q), first._split(k), first._split(v))
    out = out.transpose(1, 2).reshape(batch, x.shape[1], first.inner_dim)
    out = stacked_apply([m.out_proj for m in modules], out)
    gates = torch.stack([m.gate for m in modules]).repeat_interleave(batch // groups)
    return gates.view(batch, 1, 1) * out


def _group_modules(models: Sequence[nn.Module], path: Callable[[nn.Module], nn.Module]) -> list[nn.Module]:
    return [path(m) for m in models]


def grouped_text_anchors(models: Sequence[nn.Module], categories: Sequence[str]) -> torch.Tensor:
    """Return every seed's anchors of ``categories``, ``(G, C, D, 2)``, with one text-tower pass.

    Mirrors ``AdaptedCLIP.text_anchors`` (prompt sentences → adapted text tower with each seed's text
    adapters → its projection → L2 norm → per-state means) for G seeds sharing the backbone.
    """
    first = models[0]
    groups = len(models)
    sentences: list[str] = []
    for category in categories:
        normal, abnormal = first.class_prompts(category)
        sentences.extend(normal + abnormal)
    tokens = first.tokenize(sentences).repeat(groups, 1)
    clip = first.clip
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding.to(cast_dtype)
    num_adapters = first.config.text_adapter_layers
    for index, block in enumerate(clip.transformer.resblocks):
        x = block(x, attn_mask=clip.attn_mask)
        if index < num_adapters:
            adapters = _group_modules(models, lambda m, i=index: m.text_adapter[i])
            x = blend_residual(x, stacked_apply(adapters, x), first.config.blend)
    x = clip.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    features = stacked_apply(_group_modules(models, lambda m: m.text_adapter.projection), pooled)
    features = F.normalize(features, dim=-1)
    per_class = len(sentences) // max(len(categories), 1)
    embeddings = features.reshape(groups * len(categories), per_class, -1)
    return make_anchors(embeddings, NUM_NORMAL_SENTENCES).reshape(groups, len(categories), -1, 2)


def grouped_encode_image(
    models: Sequence[nn.Module], images: torch.Tensor, *, prompt_embeddings: torch.Tensor | None = None
) -> ImageFeatures:
    """``AdaptedCLIP.encode_image`` of G seeds on their own images, the backbone run once on all of them.

    Args:
        models: G models of one kind sharing one backbone (``model.clip``).
        images: ``(G * B, 3, S, S)``; seed g's images at rows ``[g * B, (g + 1) * B)``.
        prompt_embeddings: ``(G * B, P, D)`` for cross-attention models, else None.

    Returns:
        :class:`ImageFeatures` of all ``G * B`` rows (seg tokens ``(G * B, L, D)``, det ``(G * B, D)``).
    """
    first = models[0]
    config = first.config
    x = first._embed_image(images)
    taps = set(config.taps)
    tapped: list[torch.Tensor] = []
    for index, block in enumerate(first.clip.visual.transformer.resblocks):
        x = block(x)
        if index < config.image_adapter_layers:
            adapters = _group_modules(models, lambda m, i=index: m.image_adapter["layer_adapters"][i])
            x = blend_residual(x, stacked_apply(adapters, x), config.blend)
        if index + 1 in taps:
            tapped.append(x)
    ln_post = first.clip.visual.ln_post
    xattn = hasattr(first, "image_cross_attn")
    if xattn and prompt_embeddings is None:
        raise ValueError("grouped_encode_image: cross-attention models need prompt_embeddings (G * B, P, D)")

    def condition(patches: torch.Tensor) -> torch.Tensor:
        if not xattn:
            return patches
        modules = _group_modules(models, lambda m: m.image_cross_attn)
        return patches + _grouped_cross_attention(modules, patches, prompt_embeddings)

    patches = [condition(ln_post(t[:, 1:])) for t in tapped]
    seg = [
        F.normalize(
            stacked_apply(_group_modules(models, lambda m, i=i: m.image_adapter["seg_proj"][i]), p), dim=-1
        )
        for i, p in enumerate(patches)
    ]
    if config.taps[-1] == len(first.clip.visual.transformer.resblocks):
        last = patches[-1]
    else:
        last = condition(ln_post(x[:, 1:]))
    det_heads = _group_modules(models, lambda m: m.image_adapter["det_proj"])
    det = F.normalize(stacked_apply(det_heads, last), dim=-1).mean(dim=1)
    return ImageFeatures(seg_tokens=seg, det_token=det)


def grouped_condition_anchors(
    models: Sequence[nn.Module], anchors: torch.Tensor, patch_features: torch.Tensor
) -> torch.Tensor:
    """``model.condition_anchors`` of G seeds on their own rows (the baseline returns ``anchors``).

    Args:
        models: G models of one kind.
        anchors: ``(G * B, D, 2)``.
        patch_features: ``(G * B, L, D)``.
    """
    if not hasattr(models[0], "text_cross_attn"):
        return anchors
    if len(models) == 1:
        return models[0].condition_anchors(anchors, patch_features)
    queries = anchors.transpose(1, 2)
    modules = _group_modules(models, lambda m: m.text_cross_attn)
    return (queries + _grouped_cross_attention(modules, queries, patch_features)).transpose(1, 2)


def stage1_total_loss(
    features: Sequence[torch.Tensor], anchors: torch.Tensor, masks: torch.Tensor, *, levels: str
) -> torch.Tensor:
    """``train.losses.stage1_loss`` total only: the same arithmetic, without its per-step host syncs."""
    used = [features[-1]] if levels == "last" else list(features)
    seg = sum(seg_loss(level, anchors, masks) for level in used)
    return seg + ORTHOGONAL_WEIGHT * orthogonal_loss(anchors)


def stage2_total_loss(
    seg_tokens: Sequence[torch.Tensor],
    det_token: torch.Tensor,
    anchors: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """``train.losses.stage2_loss`` total only: the same arithmetic, without its per-step host syncs."""
    ce = image_ce_loss(det_token, anchors, labels)
    seg = sum(seg_loss(level, anchors, masks) for level in seg_tokens)
    return ce + seg


# --------------------------------------------------------------------------------------------------
# The group trainer
# --------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Mutable per-seed training state (model, optimizers, data, records)."""

    member: SeedMember
    cfg: TrainConfig
    model: nn.Module
    samples: list
    classes: list[str]
    record: dict[str, Any]
    log_rows: list[dict[str, Any]]
    reports: dict[str, Any]
    text_path: Path | None
    image_path: Path | None
    text_opt: torch.optim.Optimizer | None = None
    image_opt: torch.optim.Optimizer | None = None
    scheduler: Any = None
    text_state: TextState | None = None
    cache: dict[int, list[torch.Tensor]] | None = None
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)


def train_seed_group(
    cfg: TrainConfig,
    members: Sequence[SeedMember],
    *,
    arm: str,
    progress: bool = False,
    perf: PerfConfig | None = None,
    restart: bool = False,
) -> list[dict[str, Any]]:
    """Train several seeds of one arm together and write each seed's ``run_training`` outputs.

    Rerunning an interrupted group with the same arguments continues it after the last epoch that every
    seed completed (see the module docstring).

    Args:
        cfg: The training configuration shared by the group; its ``seed`` is replaced by each member's.
        members: The seeds (distinct), each with its run directory, manifest and (from-base arms) base.
        arm: ``baseline``, ``xattn_from_base``, ``xattn_scratch`` or ``baseline_continued``.
        progress: Show a tqdm bar over the steps of each epoch.
        perf: Fast-path settings; default ``resolve_perf`` for the device (``cfg.perf`` and
            ``cfg.reproduce_reference`` when present).
        restart: Discard resume state of another configuration or grouping instead of raising.

    Returns:
        The run records (``run.json`` contents), in member order.

    Raises:
        ValueError: No members, repeated seeds or run directories, a bad arm or base paths.
        aaclip_xattn.train.runner.ResumeMismatchError: A seed's ``.resume/`` holds state of another
            configuration or group (the differing keys are named).
        SeedGroupResumeError: The seeds' resume states share no epoch to continue from.
        aaclip_xattn.errors.NonFiniteLossError: A seed's loss is NaN/inf (every member's ``run.json``
            is written with ``status: "failed"``).
    """
    from aaclip_xattn.train.runner import _attach_log_file, resolve_device

    members = [m if isinstance(m, SeedMember) else SeedMember.from_mapping(m) for m in members]
    if not members:
        raise ValueError("train_seed_group: give at least one seed member")
    seeds = [m.seed for m in members]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train_seed_group: seeds must be distinct, got {seeds}")
    dirs = [Path(m.run_dir).resolve() for m in members]
    if len(set(dirs)) != len(dirs):
        raise ValueError("train_seed_group: every seed needs its own run_dir")
    spec = get_arm(arm)
    device = resolve_device(cfg.device)
    if perf is None:
        perf = resolve_train_perf(cfg, device)
    handlers = []
    for member in members:
        Path(member.run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(_attach_log_file(Path(member.run_dir) / "train.log"))
    try:
        with backend_settings(perf, device):
            return _train_group(cfg, members, spec, device, perf, progress, restart)
    finally:
        package_logger = logging.getLogger("aaclip_xattn")
        for handler, level in reversed(handlers):
            package_logger.removeHandler(handler)
            package_logger.setLevel(level)
            handler.close()


def resolve_train_perf(cfg: TrainConfig, device: torch.device) -> PerfConfig:
    """Resolve the fast paths of a training config (``TrainConfig.perf_settings``)."""
    return cfg.perf_settings(device)


def _build_states(
    cfg: TrainConfig, members: Sequence[SeedMember], spec: ArmSpec, device: torch.device, perf: PerfConfig
) -> list[_State]:
    from aaclip_xattn.checkpoint import verify_weight_loading
    from aaclip_xattn.data import read_manifest
    from aaclip_xattn.train.runner import (
        _NOT_IDENTITY,
        _base_paths,
        _build_model,
        _fingerprints,
        _hyperparameters,
        _load_bases,
        _new_record,
    )

    states: list[_State] = []
    shared = None
    for member in members:
        member_cfg = dataclasses.replace(cfg, seed=member.seed)
        text_path, image_path = _base_paths(spec, member.base_dir, None, None)
        manifest = read_manifest(member.manifest_path)
        samples = list(manifest.samples)
        if not samples:
            raise ValueError(f"{member.manifest_path}: the manifest lists no training samples")
        if shared is None:
            model = _build_model(member_cfg, spec)
            shared = model
        else:
            # Same adapters as _build_model(member_cfg) would draw (the init stream), on the shared backbone.
            model = type(shared)(shared.clip, shared.config, generator=make_generator(member.seed, "init"))
        schedule = resolve_schedule(member_cfg, spec)
        states.append(
            _State(
                member=member,
                cfg=member_cfg,
                model=model,
                samples=samples,
                classes=sorted({s.category for s in samples}),
                record={"_manifest": manifest, "_schedule": schedule},
                log_rows=[],
                reports={},
                text_path=text_path,
                image_path=image_path,
            )
        )
    for state in states:
        state.model.to(device)
    for state in states:
        model, member_cfg = state.model, state.cfg
        manifest = state.record.pop("_manifest")
        schedule = state.record.pop("_schedule")
        bases = _load_bases(
            model, spec, state.text_path, state.image_path, strict=member_cfg.strict_load, device=device
        )
        state.reports = bases.reports
        hyper = _hyperparameters(member_cfg, schedule, model)
        initial_fingerprints = _fingerprints(model)
        state.record = _new_record(
            spec,
            member_cfg,
            manifest,
            state.member.manifest_path,
            hyper=hyper,
            bases=bases,
            initial_fingerprints=initial_fingerprints,
            verification=verify_weight_loading(model, logger),
            device=device,
        )
        state.record["seed_batched"] = {"seeds": [m.seed for m in members], "group_size": len(members)}
        state.record["perf"] = perf.to_dict()
        state.record["_schedule"] = schedule
        state.identity = {
            "arm": spec.name,
            "seed": member_cfg.seed,
            "hyperparameters": {k: v for k, v in hyper.items() if k not in _NOT_IDENTITY},
            "manifest_sha256": manifest.sha256,
            "base_sha256": {c["role"]: c["sha256"] for c in bases.checkpoints},
            "seed_group": [m.seed for m in members],
        }
    return states


def _loaders(
    states: Sequence[_State],
    datasets: Sequence[Any],
    batch_size: int,
    stage: int,
    epoch: int,
    perf: PerfConfig,
) -> list[Any]:
    iterators = []
    for state, dataset in zip(states, datasets, strict=True):
        loader = epoch_loader(
            dataset,
            batch_size=batch_size,
            num_workers=state.cfg.num_workers,
            seed=state.cfg.seed,
            stage=stage,
            epoch=epoch,
            pin_memory=perf.pin_memory,
        )
        iterators.append(iter(loader))
    return iterators


def _subgroups(batches: Sequence[tuple[int, dict]]) -> list[list[tuple[int, dict]]]:
    """Split the active seeds' batches into sub-groups of equal batch size (in seed order)."""
    by_size: dict[int, list[tuple[int, dict]]] = {}
    for index, batch in batches:
        by_size.setdefault(len(batch["label"]), []).append((index, batch))
    return list(by_size.values())


def _epoch_steps(
    states: Sequence[_State],
    iterators: Sequence[Any],
    step: Callable[[list[tuple[int, dict]]], None],
    *,
    progress: bool,
    desc: str,
) -> None:
    from tqdm import tqdm

    bar = tqdm(desc=desc, leave=False, disable=None if progress else True)
    active = list(range(len(states)))
    while active:
        batches = []
        for index in list(active):
            batch = next(iterators[index], None)
            if batch is None:
                active.remove(index)
            else:
                batches.append((index, batch))
        for group in _subgroups(batches):
            step(group)
            bar.update(1)
    bar.close()


def _cat(group: list[tuple[int, dict]], key: str) -> torch.Tensor:
    return torch.cat([torch.as_tensor(batch[key]) for _, batch in group])


def _train_group(
    cfg: TrainConfig,
    members: Sequence[SeedMember],
    spec: ArmSpec,
    device: torch.device,
    perf: PerfConfig,
    progress: bool,
    restart: bool,
) -> list[dict[str, Any]]:
    from aaclip_xattn.train.runner import (
        RESUME_DIR,
        _after_epoch,
        _carry_optimizer,
        _check_identity,
        _freeze_text_side,
        _save_final,
        _save_kept_epoch,
        _stage_dataset,
        _write_completed,
        _write_failed,
    )

    states = _build_states(cfg, members, spec, device, perf)
    for state in states:
        _check_identity(Path(state.member.run_dir) / RESUME_DIR, state.identity, restart)
    with_xattn = spec.kind == "xattn"
    models = [s.model for s in states]
    first = models[0]
    schedules = [s.record.pop("_schedule") for s in states]
    logger.info(
        "seed-batched arm %s: seeds %s on %s, perf %s",
        spec.name,
        [m.seed for m in members],
        device,
        perf.to_dict(),
    )
    run_epoch = functools.partial(
        _run_epoch,
        states,
        cfg=cfg,
        device=device,
        perf=perf,
        progress=progress,
        with_xattn=with_xattn,
        after=_after_epoch,
    )
    try:
        # ---------------- stage 1 (text) ----------------
        for state, schedule in zip(states, schedules, strict=True):
            state.text_opt, names = build_text_optimizer(
                state.model, lr=float(schedule["text_lr"]), betas=cfg.adam_betas, with_cross_attn=with_xattn
            )
            state.record["param_names"]["text"] = names
            if spec.from_base and cfg.optimizer_carryover:
                _carry_optimizer(
                    state.record,
                    "text",
                    state.reports["text"],
                    state.model,
                    state.text_opt,
                    source=state.text_path,
                )
        text_epochs = [int(s["text_epoch"]) for s in schedules]
        text_done = _restore_group(states, "text", text_epochs, device)
        exact_cache = is_feature_cache_exact(cfg.vv_axis, cfg.augment, cfg.noise_aug)
        datasets1 = []
        for state in states:
            state.cache = {} if exact_cache else None
            state.record["feature_cache"] = exact_cache
            datasets1.append(_stage_dataset(state.cfg, state.samples, first.image_size, stage=1))
        for epoch, running in _epochs_running(text_epochs, start=text_done):
            run_epoch(running, datasets1, epoch, stage="text")
            _save_group_resume(states, running, "text", epoch + 1)
        for state in states:
            _save_final(
                Path(state.member.run_dir),
                "text",
                state.model,
                state.text_opt,
                state.record,
                arm=spec.name,
                seed=state.cfg.seed,
            )
            state.text_opt = None
            state.cache = None

        # ---------------- stage 2 (image) ----------------
        datasets2 = []
        for state, schedule in zip(states, schedules, strict=True):
            _freeze_text_side(state.model)
            state.text_state = compute_text_state(state.model, state.classes, with_cross_attn=with_xattn)
            state.image_opt, state.scheduler, names = build_image_optimizer(
                state.model,
                lr=float(schedule["image_lr"]),
                betas=cfg.adam_betas,
                milestones=cfg.lr_milestones,
                gamma=cfg.lr_gamma,
                with_cross_attn=with_xattn,
            )
            state.record["param_names"]["image"] = names
            if spec.from_base and cfg.optimizer_carryover:
                _carry_optimizer(
                    state.record,
                    "image",
                    state.reports["image"],
                    state.model,
                    state.image_opt,
                    source=state.image_path,
                )
            datasets2.append(_stage_dataset(state.cfg, state.samples, first.image_size, stage=2))
        image_epochs = [int(s["image_epoch"]) for s in schedules]
        image_done = _restore_group(states, "image", image_epochs, device)
        keep_epoch = cfg.evaluated_epoch()
        for epoch, running in _epochs_running(image_epochs, start=image_done):
            run_epoch(running, datasets2, epoch, stage="image")
            for index in running:
                state = states[index]
                _save_kept_epoch(
                    state.cfg,
                    Path(state.member.run_dir),
                    state.model,
                    state.image_opt,
                    epoch,
                    keep_epoch,
                    arm=spec.name,
                )
            _save_group_resume(states, running, "image", epoch + 1)
        for state in states:
            _save_final(
                Path(state.member.run_dir),
                "image",
                state.model,
                state.image_opt,
                state.record,
                arm=spec.name,
                seed=state.cfg.seed,
                scheduler=state.scheduler,
            )
    except NonFiniteLossError as exc:
        for state in states:
            error = f"seed-batched group {[m.seed for m in members]} stopped: {exc}"
            _write_failed(Path(state.member.run_dir), state.record, state.log_rows, error)
        logger.error("%s", exc)
        raise

    records = []
    for state in states:
        _write_completed(Path(state.member.run_dir), state.record, state.log_rows, state.model)
        records.append(state.record)
    logger.info("seed-batched arm %s done: seeds %s", spec.name, [m.seed for m in members])
    return records


def _epochs_running(epochs: Sequence[int], *, start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """Yield ``(epoch, running)`` from ``start`` up to the longest schedule; ``running``: the seeds with that epoch left."""
    for epoch in range(start, max(epochs, default=0)):
        yield epoch, [i for i, n in enumerate(epochs) if epoch < n]


# --------------------------------------------------------------------------------------------------
# Group resume
# --------------------------------------------------------------------------------------------------


def _resume_paths(state: _State, stage: str) -> tuple[Path, Path]:
    """The seed's current and previous resume files of ``stage`` (``.resume/{stage}.pth``, ``.prev.pth``)."""
    from aaclip_xattn.train.runner import RESUME_DIR

    folder = Path(state.member.run_dir) / RESUME_DIR
    return folder / f"{stage}.pth", folder / f"{stage}{PREVIOUS_SUFFIX}"


def _saved_epochs(state: _State, stage: str) -> dict[int, Path]:
    """Return ``{epoch: path}`` of the seed's resume files of ``stage`` (current and previous)."""
    from aaclip_xattn.checkpoint import load_checkpoint_file

    saved: dict[int, Path] = {}
    for path in reversed(_resume_paths(state, stage)):  # the current file wins on equal epochs
        if path.is_file():
            content = load_checkpoint_file(path, expect_key=f"{stage}_adapter", map_location="cpu")
            saved[int(content["epoch"])] = path
    return saved


def group_resume_epoch(saved: Sequence[Mapping[int, Any]], epochs: Sequence[int]) -> list[int]:
    """Return the epoch each seed continues after: the last epoch that every unfinished seed completed.

    Args:
        saved: Per seed, the epochs its resume files hold (mapping keys).
        epochs: Per seed, the stage's number of epochs.

    Returns:
        Per seed, ``min(target, epochs[i])``, where ``target`` is the smallest latest saved epoch of the
        seeds that have epochs left (their schedule's length when every seed is done).
    """
    latest = [max(s, default=0) for s in saved]
    unfinished = [last for last, n in zip(latest, epochs, strict=True) if last < n]
    target = min(unfinished) if unfinished else max(epochs, default=0)
    return [min(target, n) for n in epochs]


def _restore_group(states: Sequence[_State], stage: str, epochs: Sequence[int], device: torch.device) -> int:
    """Restore every seed of the group to the common resume epoch of ``stage``; return that epoch.

    Raises:
        SeedGroupResumeError: A seed holds no state of the epoch the group continues after.
    """
    from aaclip_xattn.train.runner import _apply_progress, _restore

    saved = [_saved_epochs(state, stage) for state in states]
    resume = group_resume_epoch(saved, epochs)
    for state, have, epoch in zip(states, saved, resume, strict=True):
        if epoch and epoch not in have:
            folder = _resume_paths(state, stage)[0].parent
            raise SeedGroupResumeError(
                f"{folder}: seed {state.cfg.seed} holds {stage} resume state of epoch(s) "
                f"{sorted(have) or 'none'}, but the seed group {[s.cfg.seed for s in states]} continues "
                f"after epoch {epoch}; restart the group from scratch (restart=True) or delete the "
                "seeds' .resume/ folders"
            )
        state.record["resumed_from"][stage] = epoch
        if not epoch:
            continue
        optimizer = state.text_opt if stage == "text" else state.image_opt
        scheduler = None if stage == "text" else state.scheduler
        _, progress = _restore(have[epoch], state.model, optimizer, scheduler, stage, device)
        _apply_progress(state.record, state.log_rows, stage, progress)
    # The first epoch the group runs: seeds with a shorter schedule that are done sit below it.
    done = max(resume, default=0)
    if any(resume):
        logger.info(
            "seed group %s resumes stage %s after epoch(s) %s", [s.cfg.seed for s in states], stage, resume
        )
    return done


def _save_group_resume(states: Sequence[_State], running: Sequence[int], stage: str, epoch: int) -> None:
    """Write the running seeds' resume state of ``stage`` after ``epoch``, keeping each one's previous state."""
    from aaclip_xattn.train.runner import _save_resume

    for index in running:
        state = states[index]
        current, previous = _resume_paths(state, stage)
        if current.is_file():
            os.replace(current, previous)
        optimizer = state.text_opt if stage == "text" else state.image_opt
        scheduler = None if stage == "text" else state.scheduler
        _save_resume(current, stage, state.model, optimizer, scheduler, epoch, state.record, state.log_rows)


def _run_epoch(
    states: Sequence[_State],
    running: Sequence[int],
    datasets: Sequence[Any],
    epoch: int,
    *,
    stage: str,
    cfg: TrainConfig,
    device: torch.device,
    perf: PerfConfig,
    progress: bool,
    with_xattn: bool,
    after: Callable[..., None],
) -> None:
    """Run one epoch of ``stage`` for the seeds ``running`` (indices into ``states``), stepping each."""
    start = time.perf_counter()
    active = [states[i] for i in running]
    stage_number = STAGE_TEXT if stage == "text" else STAGE_IMAGE
    batch_size = cfg.text_batch_size if stage == "text" else cfg.image_batch_size
    iterators = _loaders(active, [datasets[i] for i in running], batch_size, stage_number, epoch, perf)
    meters = [
        LossMeter(
            device,
            device_loss=perf.device_loss,
            stage=stage,
            epoch=epoch,
            step_offset=s.record["steps_completed"][stage],
            label=f"seed {s.cfg.seed}, ",
        )
        for s in active
    ]
    lrs = [0.0] * len(active)
    for state in active:
        state.model.train()
    step = _text_step if stage == "text" else _image_step
    forward = _image_forward(perf) if stage == "image" else None

    def run(group: list[tuple[int, dict]]) -> None:
        members = [active[i] for i, _ in group]
        losses = step(members, group, cfg=cfg, device=device, perf=perf, forward=forward)
        for (index, _), loss in zip(group, losses, strict=True):
            meters[index].add(loss)
        optimizers = [m.text_opt if stage == "text" else m.image_opt for m in members]
        for (index, _), optimizer in zip(group, optimizers, strict=True):
            lrs[index] = float(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for member, optimizer in zip(members, optimizers, strict=True):
            optimizer.step()
            if stage == "image":
                member.scheduler.step()

    _epoch_steps(active, iterators, run, progress=progress, desc=f"{stage} epoch {epoch + 1}")
    seconds = time.perf_counter() - start
    for index, state in enumerate(active):
        mean, steps = meters[index].result()
        if stage == "text":
            lrs[index] = float(state.text_opt.param_groups[0]["lr"])
        after(state.record, state.log_rows, stage, epoch, EpochResult(mean, steps, lrs[index], seconds))


def _image_forward(perf: PerfConfig) -> Callable[..., ImageFeatures]:
    return compile_with_fallback(grouped_encode_image, perf, name="seed-batched image forward")


def _text_step(
    members: Sequence[_State],
    group: list[tuple[int, dict]],
    *,
    cfg: TrainConfig,
    device: torch.device,
    perf: PerfConfig,
    forward: Any,
) -> list[torch.Tensor]:
    """Forward one stage-1 step of a sub-group of equal batch size; return each seed's loss."""
    models = [m.model for m in members]
    batch = len(group[0][1]["label"])
    images = prepare_images(_cat(group, "image"), perf, device)
    masks = _cat(group, "mask").to(device)
    features = _stage1_features(members, group, images, cfg=cfg, perf=perf, device=device)
    categories = [list(b["category"]) for _, b in group]
    union = sorted({c for cats in categories for c in cats})
    losses = []
    with autocast(perf, device):
        class_anchors = grouped_text_anchors(models, union)  # (G, U, D, 2)
        anchors = torch.cat(
            [class_anchors[g][class_indices(cats, union).to(device)] for g, cats in enumerate(categories)]
        )
        anchors = grouped_condition_anchors(models, anchors, features[-1])
        for g in range(len(members)):
            rows = slice(g * batch, (g + 1) * batch)
            losses.append(
                stage1_total_loss(
                    [f[rows] for f in features], anchors[rows].float(), masks[rows], levels=cfg.stage1_levels
                )
            )
    return losses


def _stage1_features(
    members: Sequence[_State],
    group: list[tuple[int, dict]],
    images: torch.Tensor,
    *,
    cfg: TrainConfig,
    perf: PerfConfig,
    device: torch.device,
) -> list[torch.Tensor]:
    """Frozen stage-1 features of the sub-group (per-seed V-V groups), from the caches when complete."""
    keys = [[int(i) for i in torch.as_tensor(b["index"]).tolist()] for _, b in group]
    caches = [m.cache for m in members]
    if all(c is not None and all(k in c for k in ks) for c, ks in zip(caches, keys, strict=True)):
        return [
            torch.cat([torch.stack([c[k][level] for k in ks]) for c, ks in zip(caches, keys, strict=True)])
            for level in range(4)
        ]
    groups = len(members) if cfg.vv_axis == "batch" else 1
    with torch.no_grad(), autocast(perf, device):
        features = members[0].model.stage1_features(
            images, vv_axis=cfg.vv_axis, fused=perf.fused_attention, groups=groups
        )
    features = [f.detach().float() for f in features]
    batch = images.shape[0] // len(members)
    for g, (cache, ks) in enumerate(zip(caches, keys, strict=True)):
        if cache is not None:
            for row, key in enumerate(ks):
                cache[key] = [f[g * batch + row] for f in features]
    return features


def _image_step(
    members: Sequence[_State],
    group: list[tuple[int, dict]],
    *,
    cfg: TrainConfig,
    device: torch.device,
    perf: PerfConfig,
    forward: Callable[..., ImageFeatures],
) -> list[torch.Tensor]:
    """Forward one stage-2 step of a sub-group of equal batch size; return each seed's loss."""
    models = [m.model for m in members]
    batch = len(group[0][1]["label"])
    images = prepare_images(_cat(group, "image"), perf, device)
    masks = _cat(group, "mask").to(device)
    labels = _cat(group, "label").to(device)
    anchors_rows, prompt_rows = [], []
    for member, (_, b) in zip(members, group, strict=True):
        text = member.text_state
        idx = class_indices(list(b["category"]), text.classes).to(device)
        anchors_rows.append(text.anchors.to(device)[idx])
        if text.prompt_embeddings is not None:
            prompt_rows.append(text.prompt_embeddings.to(device)[idx])
    anchors = torch.cat(anchors_rows)
    prompts = torch.cat(prompt_rows) if prompt_rows else None
    losses = []
    with autocast(perf, device):
        features = forward(models, images, prompt_embeddings=prompts)
        seg_tokens = [t.float() for t in features.seg_tokens]
        anchors = grouped_condition_anchors(models, anchors, seg_tokens[-1])
        for g in range(len(members)):
            rows = slice(g * batch, (g + 1) * batch)
            losses.append(
                stage2_total_loss(
                    [t[rows] for t in seg_tokens],
                    features.det_token[rows].float(),
                    anchors[rows].float(),
                    masks[rows],
                    labels[rows],
                )
            )
    return losses
