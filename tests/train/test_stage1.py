"""Stage 1: frozen V-V features per batch, anchors per class, loss modes, feature cache, loss decrease."""

from __future__ import annotations

import copy

import pytest
import torch

from aaclip_xattn.checkpoint import tensor_fingerprint
from aaclip_xattn.train.stage1 import build_text_optimizer, is_feature_cache_exact, train_text_epoch


@pytest.fixture(scope="module")
def stage1_setup(stage_setup_factory):
    return stage_setup_factory("baseline", stage=1, augment=False)


def _epochs(setup, *, epochs=1, lr=1e-5, vv_axis="batch", levels="last", cache=None, kind_model=None):
    model, dataset, classes = setup
    model = copy.deepcopy(kind_model if kind_model is not None else model)
    optimizer, _ = build_text_optimizer(model, lr=lr, betas=(0.5, 0.999), with_cross_attn=False)
    results = [
        train_text_epoch(
            model,
            optimizer,
            dataset,
            classes=classes,
            epoch=e,
            batch_size=4,
            seed=0,
            vv_axis=vv_axis,
            stage1_levels=levels,
            device=torch.device("cpu"),
            feature_cache=cache,
        )
        for e in range(epochs)
    ]
    return model, results


def test_stage1_loss_decreases_over_a_short_run(stage1_setup):
    _, results = _epochs(stage1_setup, epochs=4, lr=1e-3)
    losses = [r.mean_loss for r in results]
    assert all(r.steps == 2 for r in results)
    assert losses[-1] < losses[0] - 0.01, losses


def test_stage1_uses_batch_features_of_the_whole_batch(stage1_setup, monkeypatch):
    model = copy.deepcopy(stage1_setup[0])
    calls = []
    original = model.stage1_features

    def spy(images, *, vv_axis="batch"):
        calls.append((images.shape[0], vv_axis))
        return original(images, vv_axis=vv_axis)

    monkeypatch.setattr(model, "stage1_features", spy)
    _epochs(stage1_setup, kind_model=model)
    assert calls == [(4, "batch"), (4, "batch")]


def test_vv_axis_and_loss_levels_run_and_differ(stage1_setup):
    start = tensor_fingerprint(stage1_setup[0].text_adapter)
    prints = {}
    for vv_axis, levels in (("batch", "last"), ("token", "last"), ("batch", "all"), ("value_only", "last")):
        model, results = _epochs(stage1_setup, lr=1e-3, vv_axis=vv_axis, levels=levels)
        assert torch.isfinite(torch.tensor(results[0].mean_loss))
        prints[(vv_axis, levels)] = (tensor_fingerprint(model.text_adapter), results[0].mean_loss)
    assert len({p for p, _ in prints.values()} | {start}) == 5
    assert prints[("batch", "all")][1] > prints[("batch", "last")][1] + 0.5  # Σ of 4 levels vs the last one


def test_feature_cache_is_used_only_when_exact_and_gives_the_same_result(stage1_setup, monkeypatch):
    assert is_feature_cache_exact("token", False, "off") and is_feature_cache_exact(
        "value_only", False, "off"
    )
    assert not is_feature_cache_exact("batch", False, "off")
    assert not is_feature_cache_exact("token", True, "off")
    model = copy.deepcopy(stage1_setup[0])
    calls = []
    original = model.stage1_features

    def spy(images, *, vv_axis="batch"):
        calls.append(images.shape[0])
        return original(images, vv_axis=vv_axis)

    monkeypatch.setattr(model, "stage1_features", spy)
    cached, _ = _epochs(stage1_setup, epochs=2, lr=1e-3, vv_axis="token", cache={}, kind_model=model)
    assert calls == [4, 4]  # epoch 2 read every image from the cache
    plain, _ = _epochs(stage1_setup, epochs=2, lr=1e-3, vv_axis="token")
    assert tensor_fingerprint(cached.text_adapter) == tensor_fingerprint(plain.text_adapter)
