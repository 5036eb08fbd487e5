"""Stage 1 (text): train the text adapters (and ``text_cross_attn``) on frozen V-V image features."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from aaclip_xattn.errors import NonFiniteLossError
from aaclip_xattn.seeding import make_generator
from aaclip_xattn.train.losses import stage1_loss

__all__ = [
    "EpochResult",
    "build_text_optimizer",
    "check_finite",
    "class_indices",
    "epoch_loader",
    "epoch_result",
    "is_feature_cache_exact",
    "optimizer_step",
    "train_text_epoch",
]

logger = logging.getLogger(__name__)

#: Stage numbers used to derive the data-order stream ``(seed, "data_order", stage, epoch)``.
STAGE_TEXT = 1
STAGE_IMAGE = 2


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced.

    Attributes:
        mean_loss: Mean of the per-step total losses.
        steps: Optimizer steps taken in this epoch.
        lr: Learning rate of the last step.
        seconds: Wall time of the epoch.
    """

    mean_loss: float
    steps: int
    lr: float
    seconds: float


def trainable_parameters(
    model: nn.Module, module_names: Sequence[str]
) -> tuple[list[nn.Parameter], list[str]]:
    """Return the parameters of the named submodules in module order, with their qualified names.

    The order is the optimizer's parameter order: the adapter first (the reference's order), then the
    cross-attention module when present.
    """
    params: list[nn.Parameter] = []
    names: list[str] = []
    for module_name in module_names:
        module = getattr(model, module_name, None)
        if module is None:
            continue
        for name, param in module.named_parameters():
            params.append(param)
            names.append(f"{module_name}.{name}")
    return params, names


def build_text_optimizer(
    model: nn.Module, *, lr: float, betas: tuple[float, float], with_cross_attn: bool
) -> tuple[torch.optim.Adam, list[str]]:
    """Build the stage-1 Adam over ``text_adapter`` (then ``text_cross_attn``) and return it with the names."""
    modules = ["text_adapter", "text_cross_attn"] if with_cross_attn else ["text_adapter"]
    params, names = trainable_parameters(model, modules)
    return torch.optim.Adam(params, lr=lr, betas=betas), names


def class_indices(categories: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """Return the index in ``classes`` of each entry of ``categories`` as a long tensor ``(B,)``."""
    lookup = {name: i for i, name in enumerate(classes)}
    return torch.tensor([lookup[c] for c in categories], dtype=torch.long)


def is_feature_cache_exact(vv_axis: str, augment: bool, noise_aug: str) -> bool:
    """Return whether stage-1 features can be computed once and reused across epochs.

    Exact only when the features do not depend on the batch (``token``, ``value_only``) and the images
    do not change between epochs (no augmentation, no noise).
    """
    return vv_axis in ("token", "value_only") and not augment and noise_aug == "off"


def _progress(iterable, *, progress: bool, desc: str):
    # Standard tqdm: tqdm.auto (asyncio) calls iter() on the loader in its constructor, which would
    # consume the data-order generator once more and change the batches.
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if progress else True)


def train_text_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    *,
    classes: Sequence[str],
    epoch: int,
    batch_size: int,
    seed: int,
    vv_axis: str,
    stage1_levels: str,
    device: torch.device,
    num_workers: int = 0,
    amp: bool = False,
    feature_cache: dict[int, list[torch.Tensor]] | None = None,
    step_offset: int = 0,
    progress: bool = False,
    perf: Any = None,
) -> EpochResult:
    """Run one stage-1 epoch over ``dataset`` and return its mean loss.

    Per batch: frozen V-V features (``model.stage1_features``; taken from ``feature_cache`` when given
    and filled, see :func:`is_feature_cache_exact`), anchors with gradients for the distinct classes in the
    batch, gathered per image by class, conditioned per image on the last-tap features
    (``model.condition_anchors``; the identity for the baseline), then the stage-1 loss.

    Args:
        model: The adapted model (baseline or xattn).
        optimizer: Adam over the text parameters.
        dataset: Stage-1 ``AnomalyDataset`` (``set_epoch`` is called with ``epoch``).
        classes: All class names of the manifest (anchor order).
        epoch: 0-based epoch; the data order comes from ``make_generator(seed, "data_order", 1, epoch)``.
        batch_size: Images per batch (no ``drop_last``).
        seed: Run seed.
        vv_axis: ``batch`` | ``token`` | ``value_only``.
        stage1_levels: ``last`` | ``all``.
        device: Where the model lives.
        num_workers: DataLoader workers.
        amp: bf16 autocast.
        feature_cache: Dict ``sample index -> 4 (L, D) tensors`` reused across epochs, or None.
        step_offset: Steps already taken in this stage (for messages).
        progress: Show a tqdm bar.
        perf: ``aaclip_xattn.perf.PerfConfig`` fast paths (fused V-V attention, device-side loss sums,
            pinned memory, channels-last images); None is the plain path.

    Returns:
        The epoch's :class:`EpochResult`.

    Raises:
        NonFiniteLossError: A loss is NaN or infinite (stage, epoch and step named).
    """
    from aaclip_xattn.perf import PerfConfig, prepare_images

    perf = perf if perf is not None else PerfConfig()
    start = time.perf_counter()
    loader = epoch_loader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        stage=STAGE_TEXT,
        epoch=epoch,
        pin_memory=perf.pin_memory,
    )
    model.train()
    total = 0.0
    steps = 0
    meter = _loss_meter(perf, device, "text", epoch, step_offset)
    for batch in _progress(loader, progress=progress, desc=f"text epoch {epoch + 1}"):
        indices = torch.as_tensor(batch["index"])
        images = prepare_images(batch["image"], perf, device)
        masks = batch["mask"].to(device)
        features = _stage1_features(
            model, images, indices, vv_axis=vv_axis, cache=feature_cache, fused=perf.fused_attention
        )
        categories = list(batch["category"])
        present = [c for c in classes if c in set(categories)]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            class_anchors = model.text_anchors(present)
            anchors = class_anchors[class_indices(categories, present).to(device)]
            anchors = model.condition_anchors(anchors, features[-1])
            if meter is not None:
                from aaclip_xattn.train.seed_batched import stage1_total_loss

                loss = stage1_total_loss(features, anchors.float(), masks, levels=stage1_levels)
            else:
                loss, _ = stage1_loss(features, anchors.float(), masks, levels=stage1_levels)
        if meter is not None:
            meter.add(loss)
            optimizer_step(optimizer, loss)
            steps += 1
            continue
        step = step_offset + steps + 1
        check_finite(loss, "text (1)", epoch, step)
        optimizer_step(optimizer, loss)
        total += loss.item()
        steps += 1
        logger.debug("text epoch %d step %d loss %.6f", epoch + 1, step, loss.item())
    lr = float(optimizer.param_groups[0]["lr"])
    return epoch_result(meter, total, steps, lr, start)


def epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    stage: int,
    epoch: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Return the shuffled loader of one epoch (``set_epoch`` called first when the dataset has it).

    The order comes from ``make_generator(seed, "data_order", stage, epoch)``; no ``drop_last``.
    Shared by both stages and the seed-batched trainer, so every path sees the same batches.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=num_workers,
        generator=make_generator(seed, "data_order", stage, epoch),
        pin_memory=pin_memory,
    )


def check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming ``stage`` (e.g. ``"text (1)"``), epoch and step on NaN/inf."""
    if not math.isfinite(loss.item()):
        raise NonFiniteLossError(
            f"non-finite loss {loss.item()} in stage {stage}, epoch {epoch + 1}, step {step}; "
            "the last completed epoch's checkpoint is kept"
        )


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scheduler: Any = None) -> None:
    """Zero the gradients, backpropagate ``loss``, step the optimizer (then ``scheduler`` when given)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def epoch_result(meter: Any, total: float, steps: int, lr: float, start: float) -> EpochResult:
    """Build the epoch's :class:`EpochResult`: from the device-side ``meter`` when given, else ``total``."""
    if meter is not None:
        mean, steps = meter.result()
        return EpochResult(mean, steps, lr, time.perf_counter() - start)
    return EpochResult(total / max(steps, 1), steps, lr, time.perf_counter() - start)


def _loss_meter(perf: Any, device: torch.device, stage: str, epoch: int, step_offset: int) -> Any:
    """perf (issue 8): a device-side ``LossMeter`` when ``perf.device_loss``, else None (the plain loop)."""
    if not perf.device_loss:
        return None
    from aaclip_xattn.perf import LossMeter

    return LossMeter(device, device_loss=True, stage=stage, epoch=epoch, step_offset=step_offset)


def _stage1_features(
    model: nn.Module,
    images: torch.Tensor,
    indices: torch.Tensor,
    *,
    vv_axis: str,
    cache: dict[int, list[torch.Tensor]] | None,
    fused: bool = False,
) -> list[torch.Tensor]:
    """Return the 4 stage-1 feature levels for the batch, from the cache when every image is in it."""
    keys = [int(i) for i in indices.tolist()]
    if cache is not None and all(k in cache for k in keys):
        return [torch.stack([cache[k][level] for k in keys]) for level in range(4)]
    with torch.no_grad():
        if fused:
            features = [f.detach() for f in model.stage1_features(images, vv_axis=vv_axis, fused=True)]
        else:
            features = [f.detach() for f in model.stage1_features(images, vv_axis=vv_axis)]
    if cache is not None:
        for row, key in enumerate(keys):
            cache[key] = [f[row] for f in features]
    return features
