"""Stage 2 (image): train the image adapters and heads (and ``image_cross_attn``) with fixed text anchors."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from aaclip_xattn.train.losses import stage2_loss
from aaclip_xattn.train.stage1 import (
    STAGE_IMAGE,
    EpochResult,
    _loss_meter,
    _progress,
    check_finite,
    class_indices,
    epoch_loader,
    epoch_result,
    optimizer_step,
    trainable_parameters,
)

__all__ = ["TextState", "build_image_optimizer", "compute_text_state", "train_image_epoch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextState:
    """Fixed text-side inputs of stage 2, computed once after stage 1 under no-grad.

    Attributes:
        classes: Class names, the row order of the tensors.
        anchors: ``(C, D, 2)`` anchors from the trained text adapter.
        prompt_embeddings: ``(C, P, D)`` sentence embeddings for ``image_cross_attn``, or None (baseline).
    """

    classes: tuple[str, ...]
    anchors: torch.Tensor
    prompt_embeddings: torch.Tensor | None


def compute_text_state(model: nn.Module, classes: Sequence[str], *, with_cross_attn: bool) -> TextState:
    """Compute the stage-2 anchors (and, for xattn, prompt embeddings) once under no-grad."""
    with torch.no_grad():
        anchors = model.text_anchors(list(classes)).detach()
        prompts = model.prompt_embeddings(list(classes)).detach() if with_cross_attn else None
    return TextState(tuple(classes), anchors, prompts)


def build_image_optimizer(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    milestones: Sequence[int],
    gamma: float,
    with_cross_attn: bool,
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR, list[str]]:
    """Build the stage-2 Adam over ``image_adapter`` (then ``image_cross_attn``) and its MultiStepLR.

    The schedule counts iterations and is stepped after every optimizer step.
    """
    modules = ["image_adapter", "image_cross_attn"] if with_cross_attn else ["image_adapter"]
    params, names = trainable_parameters(model, modules)
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    return optimizer, scheduler, names


def train_image_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    dataset: Dataset,
    *,
    text: TextState,
    epoch: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    amp: bool = False,
    step_offset: int = 0,
    progress: bool = False,
    perf: Any = None,
) -> EpochResult:
    """Run one stage-2 epoch: adapted forward, CE + Σ over the 4 taps of the segmentation loss.

    For the cross-attention model each image's anchors are conditioned on its own layer-24 seg tokens
    (``model.condition_anchors``, with ``text_cross_attn`` frozen), and ``image_cross_attn`` receives
    each image's class prompt embeddings.

    Args:
        model: The adapted model.
        optimizer: Adam over the image parameters.
        scheduler: MultiStepLR stepped every iteration.
        dataset: Stage-2 ``AnomalyDataset`` (``set_epoch`` is called with ``epoch``).
        text: Fixed anchors (and prompt embeddings) from :func:`compute_text_state`.
        epoch: 0-based epoch; the data order comes from ``make_generator(seed, "data_order", 2, epoch)``.
        batch_size: Images per batch (no ``drop_last``).
        seed: Run seed.
        device: Where the model lives.
        num_workers: DataLoader workers.
        amp: bf16 autocast.
        step_offset: Steps already taken in this stage (for messages).
        progress: Show a tqdm bar.
        perf: ``aaclip_xattn.perf.PerfConfig`` fast paths (``torch.compile`` of the image forward with
            eager fallback, device-side loss sums, pinned memory, channels-last); None is the plain path.

    Returns:
        The epoch's :class:`EpochResult`.

    Raises:
        NonFiniteLossError: A loss is NaN or infinite (stage, epoch and step named).
    """
    from aaclip_xattn.perf import PerfConfig, compile_with_fallback, prepare_images

    perf = perf if perf is not None else PerfConfig()
    encode = compile_with_fallback(model.encode_image, perf, name="image forward")
    meter = _loss_meter(perf, device, "image", epoch, step_offset)
    start = time.perf_counter()
    loader = epoch_loader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        stage=STAGE_IMAGE,
        epoch=epoch,
        pin_memory=perf.pin_memory,
    )
    model.train()
    anchors_all = text.anchors.to(device)
    prompts_all = text.prompt_embeddings.to(device) if text.prompt_embeddings is not None else None
    total = 0.0
    steps = 0
    lr = float(optimizer.param_groups[0]["lr"])
    for batch in _progress(loader, progress=progress, desc=f"image epoch {epoch + 1}"):
        images = prepare_images(batch["image"], perf, device)
        masks = batch["mask"].to(device)
        labels = torch.as_tensor(batch["label"]).to(device)
        idx = class_indices(list(batch["category"]), text.classes).to(device)
        prompts = prompts_all[idx] if prompts_all is not None else None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            features = encode(images, prompt_embeddings=prompts)
            seg_tokens = [t.float() for t in features.seg_tokens]
            anchors = model.condition_anchors(anchors_all[idx], seg_tokens[-1])
            if meter is not None:
                from aaclip_xattn.train.seed_batched import stage2_total_loss

                loss = stage2_total_loss(
                    seg_tokens, features.det_token.float(), anchors.float(), masks, labels
                )
            else:
                loss, _ = stage2_loss(seg_tokens, features.det_token.float(), anchors.float(), masks, labels)
        if meter is not None:
            meter.add(loss)
            lr = float(optimizer.param_groups[0]["lr"])
            optimizer_step(optimizer, loss, scheduler)
            steps += 1
            continue
        step = step_offset + steps + 1
        check_finite(loss, "image (2)", epoch, step)
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer_step(optimizer, loss, scheduler)
        total += loss.item()
        steps += 1
        logger.debug("image epoch %d step %d loss %.6f lr %g", epoch + 1, step, loss.item(), lr)
    return epoch_result(meter, total, steps, lr, start)
