"""Stage 2: adapted forward with fixed anchors, loss decrease, the iteration-based LR schedule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from aaclip_xattn.seeding import make_generator
from aaclip_xattn.train.stage2 import build_image_optimizer, compute_text_state, train_image_epoch


@pytest.fixture(scope="module")
def stage2_setup(stage_setup_factory):
    return stage_setup_factory("xattn", stage=2, augment=True)


def _run(setup, *, epochs, milestones=(16000, 32000), with_cross_attn=True, prepare=None):
    """Train a copy of the setup's model for ``epochs``; ``prepare(model)`` runs on the copy first."""
    model, dataset, classes = setup
    model = copy.deepcopy(model)
    if prepare is not None:
        prepare(model)
    text = compute_text_state(model, classes, with_cross_attn=with_cross_attn)
    optimizer, scheduler, names = build_image_optimizer(
        model, lr=5e-4, betas=(0.5, 0.999), milestones=milestones, gamma=0.5, with_cross_attn=with_cross_attn
    )
    results = [
        train_image_epoch(
            model,
            optimizer,
            scheduler,
            dataset,
            text=text,
            epoch=e,
            batch_size=2,
            seed=0,
            device=torch.device("cpu"),
        )
        for e in range(epochs)
    ]
    return model, results, names, text


def test_stage2_loss_decreases_over_a_short_run(stage2_setup):
    _, results, names, text = _run(stage2_setup, epochs=3)
    losses = [r.mean_loss for r in results]
    assert all(r.steps == 4 for r in results)
    assert losses[-1] < losses[0] - 0.5, losses
    assert names[0].startswith("image_adapter.") and names[-1].startswith("image_cross_attn.")
    assert text.anchors.shape[0] == 2 and not text.anchors.requires_grad
    assert text.prompt_embeddings is not None and text.prompt_embeddings.shape[:2] == (2, 16)


def test_lr_milestones_count_iterations(stage2_setup):
    _, results, _, _ = _run(stage2_setup, epochs=2, milestones=(5,))
    # Steps 1-5 at 5e-4; the scheduler halves after the 5th step, so steps 6-8 run at 2.5e-4.
    assert [r.lr for r in results] == [5e-4, 2.5e-4]


def test_image_cross_attn_receives_each_images_class_prompts(stage2_setup, monkeypatch):
    _, dataset, classes = stage2_setup
    seen = []

    def watch(model):
        original = model.encode_image

        def spy(images, *, prompt_embeddings=None):
            seen.append(prompt_embeddings)
            return original(images, prompt_embeddings=prompt_embeddings)

        monkeypatch.setattr(model, "encode_image", spy)

    _, _, _, text = _run(stage2_setup, epochs=1, milestones=(100,), prepare=watch)
    batches = DataLoader(
        range(len(dataset)), batch_size=2, shuffle=True, generator=make_generator(0, "data_order", 2, 0)
    )
    assert len(seen) == len(batches) == 4
    for prompts, batch in zip(seen, batches, strict=True):
        for row, index in enumerate(batch.tolist()):
            cls = classes.index(dataset.samples[index].category)
            torch.testing.assert_close(prompts[row], text.prompt_embeddings[cls], rtol=0, atol=0)
