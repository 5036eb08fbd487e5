"""Tests for checkpoint saving, verified loading, optimizer carry-over and fingerprints.

The stand-in modules below have exactly the attribute names and state-dict layouts of the real
adapters (aaclip-method.md §10), so the reference fixture files load into them unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aaclip_xattn import checkpoint as ckpt
from aaclip_xattn.checkpoint import (
    CHECKPOINT_FORMAT,
    NON_STRICT_CLI_FLAG,
    REFERENCE_IMAGE_ADAPTER_KEYS,
    REFERENCE_TEXT_ADAPTER_KEYS,
    LoadReport,
    ShapeMismatch,
    load_adapter_state,
    load_base_image_adapter,
    load_base_text_adapter,
    load_checkpoint_file,
    load_optimizer_state,
    map_optimizer_state,
    optimizer_param_names,
    reference_param_names,
    save_image_checkpoint,
    save_text_checkpoint,
    tensor_fingerprint,
    verify_weight_loading,
)
from aaclip_xattn.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures" / "aaclip_small"
REF_TEXT = FIXTURES / "text_adapter.pth"
REF_IMAGE = FIXTURES / "image_adapter.pth"


# ------------------------------------------------------------------------------------------------
# Stand-ins with the reference key layout
# ------------------------------------------------------------------------------------------------


class _Adapter(nn.Module):
    def __init__(self, dim: int, device: str | None = None) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim, bias=False, device=device), nn.LeakyReLU())


class _Head(nn.Module):
    def __init__(self, d_in: int, d_out: int, device: str | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out, bias=False, device=device)


class _GatedCrossAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))


class _Model(nn.Module):
    """A stand-in AdaptedCLIP: frozen 'clip', text_adapter, image_adapter, optional cross-attention."""

    def __init__(
        self, text_dim: int = 8, width: int = 12, *, xattn: bool = False, meta: bool = False
    ) -> None:
        super().__init__()
        device = "meta" if meta else None
        self.clip = nn.Linear(4, 4)
        self.clip.requires_grad_(False)
        self.text_adapter = nn.ModuleList([_Adapter(text_dim, device) for _ in range(4)])
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList([_Adapter(width, device) for _ in range(6)]),
                "seg_proj": nn.ModuleList([_Head(width, text_dim, device) for _ in range(4)]),
                "det_proj": _Head(width, text_dim, device),
            }
        )
        if meta:
            self.text_adapter.to_empty(device="cpu")
            self.image_adapter.to_empty(device="cpu")
        if xattn:
            self.text_cross_attn = _GatedCrossAttention(text_dim)
            self.image_cross_attn = _GatedCrossAttention(text_dim)


def _vit_l_model(xattn: bool = False) -> _Model:
    # ViT-L shapes (768 text / 1024 vision); storage left uninitialised since the test loads into it.
    model = _Model(768, 1024, meta=True)
    if xattn:
        model.text_cross_attn = _GatedCrossAttention(8)
        model.image_cross_attn = _GatedCrossAttention(8)
    return model


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(steps):
        optimizer.zero_grad()
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()


def _adam(params) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=1e-2, betas=(0.5, 0.999))


def _stage_params(model: _Model, stage: str) -> list[nn.Parameter]:
    adapter = model.text_adapter if stage == "text" else model.image_adapter
    cross = getattr(model, f"{stage}_cross_attn", None)
    return list(adapter.parameters()) + (list(cross.parameters()) if cross is not None else [])


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["text", "image"])
def test_save_load_round_trip_restores_weights_optimizer_and_extra(tmp_path, stage):
    torch.manual_seed(0)
    model = _Model(xattn=True)
    optimizer = _adam(_stage_params(model, stage))
    _train_steps(model, optimizer, 3)
    rng_state = torch.get_rng_state()
    sched = {"milestones": {16000: 1}, "last_epoch": 30, "gamma": 0.5, "_last_lr": [0.00025]}
    save = save_text_checkpoint if stage == "text" else save_image_checkpoint
    path = save(tmp_path / f"{stage}_adapter.pth", model, optimizer, 4, scheduler=sched, torch_rng=rng_state)

    content = load_checkpoint_file(path, expect_key=f"{stage}_adapter")
    assert content["epoch"] == 4
    assert content["format"] == CHECKPOINT_FORMAT
    assert content["scheduler"] == sched
    assert torch.equal(content["torch_rng"], rng_state)
    adapter = getattr(model, f"{stage}_adapter")
    cross = getattr(model, f"{stage}_cross_attn")
    expected_names = [f"{stage}_adapter.{n}" for n, _ in adapter.named_parameters()] + [
        f"{stage}_cross_attn.{n}" for n, _ in cross.named_parameters()
    ]
    assert content["param_names"] == expected_names
    for key, value in adapter.state_dict().items():
        assert torch.equal(content[f"{stage}_adapter"][key], value)
    for key, value in cross.state_dict().items():
        assert torch.equal(content[f"{stage}_cross_attn"][key], value)
    other = "image" if stage == "text" else "text"
    assert f"{other}_adapter" not in content and f"{other}_optimizer" not in content

    # The saved optimizer state restores into a fresh optimizer over the same parameter order.
    fresh = _adam(_stage_params(model, stage))
    fresh.load_state_dict(content[f"{stage}_optimizer"])
    params = _stage_params(model, stage)
    for p in params:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fresh.state[p][key], optimizer.state[p][key], rtol=0, atol=0)

    # Loading the adapter into a differently initialised model gives the same weights and fingerprint.
    torch.manual_seed(1)
    target = _Model(xattn=True)
    assert tensor_fingerprint(getattr(target, f"{stage}_adapter")) != tensor_fingerprint(adapter)
    loader = load_base_text_adapter if stage == "text" else load_base_image_adapter
    report = loader(target, path)
    assert report.loaded == tuple(adapter.state_dict())
    assert not report.skipped
    assert report.epoch == 4
    assert report.sha256 == ckpt.sha256_bytes(path.read_bytes())
    assert (
        report.fingerprint
        == tensor_fingerprint(adapter)
        == tensor_fingerprint(getattr(target, f"{stage}_adapter"))
    )
    # Base adapters only: the cross-attention module keeps its own (different) weights.
    assert tensor_fingerprint(getattr(target, f"{stage}_cross_attn")) != tensor_fingerprint(cross)
    assert json.loads(json.dumps(report.to_record()))["loaded"] == list(report.loaded)


def test_save_without_optimizer_omits_optimizer_and_param_names(tmp_path):
    model = _Model()
    path = save_text_checkpoint(tmp_path / "text_adapter.pth", model, None, 0)
    content = load_checkpoint_file(path)
    assert set(content) == {"text_adapter", "epoch", "format"}
    with pytest.raises(CheckpointError, match=r"no 'text_optimizer' entry .*saved without its optimizer"):
        load_optimizer_state(
            content, model, _adam(model.text_adapter.parameters()), stage="text", source=str(path)
        )


def test_plain_reference_pattern_loads_our_files(tmp_path):
    torch.manual_seed(3)
    model = _Model()
    path = save_image_checkpoint(
        tmp_path / "image_adapter.pth", model, _adam(model.image_adapter.parameters()), 1
    )
    target = _Model()
    target.image_adapter.load_state_dict(torch.load(path)["image_adapter"])
    assert tensor_fingerprint(target.image_adapter) == tensor_fingerprint(model.image_adapter)


def test_save_rejects_reserved_and_unsafe_extra_and_bad_epoch(tmp_path):
    model = _Model()
    path = tmp_path / "text_adapter.pth"
    with pytest.raises(ValueError, match=r"reserved checkpoint keys \['param_names'\]"):
        save_text_checkpoint(path, model, None, 1, param_names=["x"])
    with pytest.raises(ValueError, match=r"extra\['rng'\]\['numpy'\] is a numpy.ndarray.*weights_only=True"):
        save_text_checkpoint(path, model, None, 1, rng={"numpy": np.zeros(3), "torch": torch.get_rng_state()})
    with pytest.raises(ValueError, match=r"extra\['loss'\] is a numpy.float64"):
        save_text_checkpoint(path, model, None, 1, loss=np.float64(0.5))
    with pytest.raises(ValueError, match=r"epoch must be a non-negative int, got -1"):
        save_text_checkpoint(path, model, None, -1)
    with pytest.raises(
        ValueError, match=r"optimizer parameter 0 of group 0 \(shape \(3,\)\) is not a parameter"
    ):
        save_text_checkpoint(path, model, _adam([nn.Parameter(torch.zeros(3))]), 1)
    assert not path.exists()


def test_saved_tensors_are_compact_copies_of_strided_views(tmp_path):
    model = _vit_l_model()
    ref = torch.load(REF_TEXT, weights_only=True)["text_adapter"]
    model.text_adapter.load_state_dict(ref, assign=True)  # parameters now are the fixture's strided views
    assert not model.text_adapter[0].fc[0].weight.is_contiguous()
    path = save_text_checkpoint(tmp_path / "text_adapter.pth", model, None, 5)
    saved = torch.load(path, weights_only=True)["text_adapter"]
    for key, value in saved.items():
        assert value.is_contiguous()
        assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
        assert torch.equal(value, ref[key])


# ------------------------------------------------------------------------------------------------
# The reference fixture files
# ------------------------------------------------------------------------------------------------


def test_reference_fixture_files_load_strictly_into_vit_l_shaped_adapters():
    fixture = json.loads((FIXTURES / "fixture.json").read_text())
    model = _vit_l_model(xattn=True)
    text = load_base_text_adapter(model, REF_TEXT)
    image = load_base_image_adapter(model, REF_IMAGE)
    assert text.loaded == REFERENCE_TEXT_ADAPTER_KEYS
    assert image.loaded == REFERENCE_IMAGE_ADAPTER_KEYS
    assert (text.epoch, image.epoch) == (5, 15)
    # Independent oracle for the file hash: the fixture's own manifest.
    assert text.sha256 == fixture["files"]["text_adapter.pth"]["sha256"]
    assert image.sha256 == fixture["files"]["image_adapter.pth"]["sha256"]
    raw_text = torch.load(REF_TEXT, weights_only=True)["text_adapter"]
    raw_image = torch.load(REF_IMAGE, weights_only=True)["image_adapter"]
    for key in REFERENCE_TEXT_ADAPTER_KEYS:
        assert torch.equal(model.text_adapter.state_dict()[key], raw_text[key])
    for key in REFERENCE_IMAGE_ADAPTER_KEYS:
        assert torch.equal(model.image_adapter.state_dict()[key], raw_image[key])
    # Fingerprints ignore strides: the loaded contiguous parameters hash like the fixture's views.
    assert text.fingerprint == tensor_fingerprint(raw_text)
    assert image.fingerprint == tensor_fingerprint(raw_image)


def test_reference_fixture_loads_with_the_plain_pattern():
    model = _vit_l_model()
    model.text_adapter.load_state_dict(torch.load(REF_TEXT)["text_adapter"])
    model.image_adapter.load_state_dict(torch.load(REF_IMAGE)["image_adapter"])
    assert tensor_fingerprint(model.text_adapter) == tensor_fingerprint(torch.load(REF_TEXT)["text_adapter"])


def test_reference_fixture_optimizer_without_steps_maps_to_empty_state():
    model = _vit_l_model(xattn=True)
    report = load_base_text_adapter(model, REF_TEXT)
    new_opt = _adam(_stage_params(model, "text"))
    summary = load_optimizer_state(report.checkpoint, model, new_opt, stage="text", source=str(REF_TEXT))
    assert summary["base_names_from"] == "reference order"
    assert summary["carried"] == []
    assert summary["no_base_state"] == [f"text_adapter.{k}" for k in REFERENCE_TEXT_ADAPTER_KEYS]
    assert summary["fresh"] == [f"text_cross_attn.{n}" for n, _ in model.text_cross_attn.named_parameters()]
    assert new_opt.state_dict()["state"] == {}
    assert reference_param_names(model, "image") == [
        f"image_adapter.{k}" for k in REFERENCE_IMAGE_ADAPTER_KEYS
    ]


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_size_mismatch_names_every_parameter_with_both_shapes():
    model = _Model(text_dim=128)
    with pytest.raises(CheckpointError) as info:
        load_base_text_adapter(model, REF_TEXT)
    message = str(info.value)
    assert "4 size mismatch(es)" in message
    for key in REFERENCE_TEXT_ADAPTER_KEYS:
        expected = (
            f"'{key}' has shape (768, 768) in {REF_TEXT}, model expects (128, 128): "
            "trained with another backbone or adapter size?"
        )
        assert expected in message
    # The model was left untouched by the failed strict load.
    assert model.text_adapter[0].fc[0].weight.shape == (128, 128)


def test_image_size_mismatch_names_each_head_shape(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_base_image_adapter(_Model(text_dim=8, width=12), REF_IMAGE)
    message = str(info.value)
    assert message.count("trained with another backbone or adapter size?") == 11
    assert re.search(
        r"'layer_adapters\.5\.fc\.0\.weight' has shape \(1024, 1024\) in .*, model expects \(12, 12\)",
        message,
    )
    assert re.search(
        r"'det_proj\.fc\.weight' has shape \(768, 1024\) in .*, model expects \(8, 12\)", message
    )


@pytest.mark.parametrize(
    "extra_key",
    ["text_cross_attn.q_proj.weight", "q_proj.weight", "gate", "out_proj.bias"],
)
def test_unexpected_cross_attention_keys_explain_non_strict_loading(extra_key):
    model = _Model()
    state = dict(model.text_adapter.state_dict())
    state[extra_key] = torch.zeros(8, 8)
    with pytest.raises(CheckpointError) as info:
        load_adapter_state(
            model.text_adapter, state, source="ckpt/xattn/text_adapter.pth", component="text_adapter"
        )
    message = str(info.value)
    assert message.startswith("ckpt/xattn/text_adapter.pth: cannot load 'text_adapter' strictly:")
    assert f"unexpected cross-attention keys ['{extra_key}']" in message
    assert "a cross-attention checkpoint is probably being loaded as a base text_adapter" in message
    assert f"strict=False, or {NON_STRICT_CLI_FLAG} on the command line" in message


def test_other_unexpected_and_missing_keys_are_listed_with_prefix_hint():
    model = _Model()
    state = {f"text_adapter.{k}": v for k, v in model.text_adapter.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_adapter_state(model.text_adapter, state, source="x.pth", component="text_adapter")
    message = str(info.value)
    assert "unexpected keys (in the checkpoint, not in the model): ['text_adapter.0.fc.0.weight'," in message
    assert "missing keys (in the model, not in the checkpoint): ['0.fc.0.weight', '1.fc.0.weight'," in message
    assert "hint: the checkpoint's keys carry the prefix 'text_adapter.'; strip it" in message
    assert "cross-attention" not in message


def test_head_relu_key_layout_gets_proj_relu_hint():
    model = _Model()
    state = {
        k.replace("det_proj.fc.", "det_proj.fc.0."): v for k, v in model.image_adapter.state_dict().items()
    }
    with pytest.raises(CheckpointError, match=r"(?s)'det_proj\.fc\.0\.weight'.*other proj_relu setting"):
        load_adapter_state(model.image_adapter, state, source="image_adapter.pth", component="image_adapter")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "run" / "text_adapter.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no such checkpoint file")):
        load_base_text_adapter(_Model(), missing)
    with pytest.raises(FileNotFoundError, match=r"it is a directory; give the \.pth file inside it"):
        load_checkpoint_file(tmp_path)


@pytest.mark.parametrize("corruption", ["first_half", "drop_last_bytes", "empty", "text"])
def test_truncated_or_foreign_file_names_path_and_says_truncated(tmp_path, corruption):
    model = _Model()
    good = save_text_checkpoint(tmp_path / "good.pth", model, _adam(model.text_adapter.parameters()), 1)
    data = good.read_bytes()
    blob = {
        "first_half": data[: len(data) // 2],
        "drop_last_bytes": data[:-16],
        "empty": b"",
        "text": b"epoch: 5\ntext_adapter: yes\n",
    }[corruption]
    bad = tmp_path / "text_adapter.pth"
    bad.write_bytes(blob)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{bad}: cannot be read ({len(blob)} bytes): the file is truncated or not a torch checkpoint"
        ),
    ):
        load_base_text_adapter(model, bad)


def test_file_refused_by_safe_load_says_so(tmp_path):
    path = tmp_path / "text_adapter.pth"
    torch.save({"text_adapter": {}, "rng": np.zeros(3)}, path)
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{path}: holds Python objects that a safe load (torch.load(weights_only=True)) refuses"
        ),
    ):
        load_checkpoint_file(path)


def test_wrong_top_level_key_names_path_key_and_keys_found(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{REF_IMAGE}: no top-level key 'text_adapter'; keys found: ['epoch', 'image_adapter', "
            "'image_optimizer']; is this an image_adapter.pth given as a text adapter?"
        ),
    ):
        load_base_text_adapter(_vit_l_model(), REF_IMAGE)
    bare = tmp_path / "bare.pth"
    torch.save(_Model().text_adapter.state_dict(), bare)
    with pytest.raises(
        CheckpointError, match=r"no top-level key 'text_adapter'.*looks like a bare state dict"
    ):
        load_checkpoint_file(bare, expect_key="text_adapter")
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match=r"holds a list, expected a dict"):
        load_checkpoint_file(listed)


# ------------------------------------------------------------------------------------------------
# Non-strict loading
# ------------------------------------------------------------------------------------------------


def test_non_strict_load_returns_and_logs_exactly_the_skipped_keys(caplog):
    torch.manual_seed(0)
    source_model = _Model()
    target = _Model()
    before = {k: v.clone() for k, v in target.image_adapter.state_dict().items()}
    state = dict(source_model.image_adapter.state_dict())
    del state["seg_proj.2.fc.weight"]
    state["det_proj.fc.weight"] = torch.ones(3, 12)
    state["image_cross_attn.k_proj.weight"] = torch.ones(8, 8)
    state["extra.scale"] = torch.ones(1)

    with caplog.at_level(logging.WARNING, logger="aaclip_xattn.checkpoint"):
        report = load_adapter_state(
            target.image_adapter,
            state,
            source="base/image_adapter.pth",
            component="image_adapter",
            strict=False,
        )
    assert isinstance(report, LoadReport)
    assert report.unexpected == ("image_cross_attn.k_proj.weight", "extra.scale")
    assert report.missing == ("seg_proj.2.fc.weight",)
    assert report.mismatched == (ShapeMismatch("det_proj.fc.weight", (3, 12), (8, 12)),)
    expected_loaded = [
        k
        for k in source_model.image_adapter.state_dict()
        if k not in {"seg_proj.2.fc.weight", "det_proj.fc.weight"}
    ]
    assert list(report.loaded) == expected_loaded
    after = target.image_adapter.state_dict()
    for key in expected_loaded:
        assert torch.equal(after[key], state[key])
    for key in ("seg_proj.2.fc.weight", "det_proj.fc.weight"):
        assert torch.equal(after[key], before[key])

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert text.startswith("base/image_adapter.pth: loaded 9 of 11 tensors into 'image_adapter' non-strictly")
    assert "skipped unexpected ['image_cross_attn.k_proj.weight', 'extra.scale']" in text
    assert "missing ['seg_proj.2.fc.weight']" in text
    assert "mismatched ['det_proj.fc.weight (3, 12) vs model (8, 12)']" in text
    assert report.to_record()["mismatched"] == [
        {"key": "det_proj.fc.weight", "checkpoint_shape": [3, 12], "model_shape": [8, 12]}
    ]


def test_non_strict_load_of_a_file_that_fits_nothing_is_an_error():
    with pytest.raises(CheckpointError, match=r"nothing in it fits 'text_adapter'.*is this the right file\?"):
        load_base_text_adapter(_Model(), REF_TEXT, strict=False)


def test_non_strict_base_load_skips_nothing_when_all_fits(caplog):
    with caplog.at_level(logging.WARNING, logger="aaclip_xattn.checkpoint"):
        report = load_base_text_adapter(_vit_l_model(), REF_TEXT, strict=False)
    assert not report.skipped
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def test_interrupted_save_keeps_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model = _Model()
    path = save_text_checkpoint(tmp_path / "text_adapter.pth", model, None, 1)
    old_bytes = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial checkpoint bytes")
        raise KeyboardInterrupt("simulated kill during torch.save")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        model.text_adapter[0].fc[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        save_text_checkpoint(path, model, None, 2)
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["text_adapter.pth"]
    assert load_checkpoint_file(path)["epoch"] == 1


# ------------------------------------------------------------------------------------------------
# Optimizer carry-over
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names_in_file", [True, False])
def test_map_optimizer_state_carries_adam_moments_for_adapters_and_leaves_cross_attn_fresh(
    tmp_path, names_in_file
):
    torch.manual_seed(0)
    base = _Model()
    base_opt = _adam(base.text_adapter.parameters())
    _train_steps(base, base_opt, 3)
    path = save_text_checkpoint(tmp_path / "text_adapter.pth", base, base_opt, 5)
    if not names_in_file:  # a reference file: no param_names, reference order applies
        content = torch.load(path, weights_only=True)
        del content["param_names"], content["format"]
        torch.save(content, path)

    new = _Model(xattn=True)
    report = load_base_text_adapter(new, path)
    # Cross-attention first: matching must go by name, not by position.
    new_opt = _adam(list(new.text_cross_attn.parameters()) + list(new.text_adapter.parameters()))
    summary = load_optimizer_state(report.checkpoint, new, new_opt, stage="text", source=str(path))

    adapter_names = [f"text_adapter.{n}" for n, _ in new.text_adapter.named_parameters()]
    cross_names = [f"text_cross_attn.{n}" for n, _ in new.text_cross_attn.named_parameters()]
    assert summary["carried"] == adapter_names
    assert summary["fresh"] == cross_names
    assert summary["dropped"] == [] and summary["no_base_state"] == []
    assert summary["base_names_from"] == ("param_names" if names_in_file else "reference order")
    assert summary["base_steps"] == dict.fromkeys(adapter_names, 3.0)
    for (_, p_new), p_base in zip(
        new.text_adapter.named_parameters(), base.text_adapter.parameters(), strict=True
    ):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(new_opt.state[p_new][key], base_opt.state[p_base][key], rtol=0, atol=0)
    for p in new.text_cross_attn.parameters():
        assert p not in new_opt.state
    assert new_opt.param_groups[0]["lr"] == 1e-2

    # One more step with the same gradients moves the carried adapters exactly as the base would.
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=gen) for p in base.text_adapter.parameters()]
    for opt, params in (
        (base_opt, list(base.text_adapter.parameters())),
        (new_opt, list(new.text_adapter.parameters())),
    ):
        opt.zero_grad()
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    assert tensor_fingerprint(new.text_adapter) == tensor_fingerprint(base.text_adapter)
    # The fresh cross-attention parameters start their own Adam count at their first gradient.
    new_opt.zero_grad()
    for p in new.text_cross_attn.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    new_opt.step()
    assert all(new_opt.state[p]["step"].item() == 1.0 for p in new.text_cross_attn.parameters())
    assert all(new_opt.state[p]["step"].item() == 4.0 for p in new.text_adapter.parameters())

    if not names_in_file:
        # Without names at all, the adapter parameters of the new order stand for the reference order.
        third = _Model(xattn=True)
        third_opt = _adam(list(third.text_cross_attn.parameters()) + list(third.text_adapter.parameters()))
        content = torch.load(path, weights_only=True)
        summary = map_optimizer_state(
            content["text_optimizer"], None, optimizer_param_names(third, third_opt), third_opt
        )
        assert summary["carried"] == adapter_names and summary["fresh"] == cross_names
        for p_new, p_base in zip(
            third.text_adapter.parameters(), base_opt.param_groups[0]["params"], strict=True
        ):
            assert third_opt.state[p_new]["exp_avg"].shape == p_base.shape
        torch.testing.assert_close(
            third_opt.state[next(third.text_adapter.parameters())]["exp_avg"],
            content["text_optimizer"]["state"][0]["exp_avg"],
            rtol=0,
            atol=0,
        )


def test_map_optimizer_state_rejects_shape_and_count_mismatches():
    torch.manual_seed(0)
    base = _Model(text_dim=8)
    base_opt = _adam(base.text_adapter.parameters())
    _train_steps(base, base_opt, 1)
    state = base_opt.state_dict()
    names = optimizer_param_names(base, base_opt)
    other = _Model(text_dim=6)
    other_opt = _adam(other.text_adapter.parameters())
    with pytest.raises(
        CheckpointError,
        match=r"'text_adapter\.0\.fc\.0\.weight': base exp_avg has shape \(8, 8\), new parameter \(6, 6\)",
    ):
        map_optimizer_state(state, names, optimizer_param_names(other, other_opt), other_opt, source="b.pth")
    with pytest.raises(CheckpointError, match=r"covers 4 parameters but 3 names are known"):
        map_optimizer_state(state, names[:3], names, _adam(base.text_adapter.parameters()), source="b.pth")
    with pytest.raises(ValueError, match=r"new_param_names has 2 names but the new optimizer holds 4"):
        map_optimizer_state(state, names, names[:2], _adam(base.text_adapter.parameters()))


# ------------------------------------------------------------------------------------------------
# Fingerprints and verification
# ------------------------------------------------------------------------------------------------


def test_fingerprint_ignores_strides_and_sees_every_element_name_and_dtype():
    buffer = torch.arange(60, dtype=torch.float32)
    view = buffer.as_strided((4, 5), (7, 1), 3)
    assert not view.is_contiguous()
    base = tensor_fingerprint({"w": view})
    assert base == tensor_fingerprint({"w": view.contiguous().clone()})
    changed = view.clone()
    changed[3, 4] += 1e-6
    assert tensor_fingerprint({"w": changed}) != base
    assert tensor_fingerprint({"v": view}) != base
    assert tensor_fingerprint({"w": view.double()}) != base
    assert tensor_fingerprint({"w": view.reshape(5, 4)}) != base
    assert tensor_fingerprint({"w": view, "b": torch.zeros(2)}) == tensor_fingerprint(
        {"b": torch.zeros(2), "w": view}
    )
    module = _Model().text_adapter
    assert tensor_fingerprint(module) == tensor_fingerprint(dict(module.state_dict()))
    with pytest.raises(TypeError, match=r"value of 'epoch' is a int, not a tensor"):
        tensor_fingerprint({"epoch": 3})


def test_verify_weight_loading_matches_the_guide_formula_and_reports_absent_components(caplog):
    torch.manual_seed(0)
    base = _Model()
    with caplog.at_level(logging.INFO, logger="aaclip_xattn.checkpoint"):
        table = verify_weight_loading(base)
    oracle = float(np.mean([np.abs(p.detach().numpy()).mean() for p in base.text_adapter.parameters()]))
    assert table["text_adapter"]["mean_abs"] == pytest.approx(oracle, rel=1e-6)
    assert table["text_adapter"]["n_params"] == 4 * 8 * 8
    assert table["image_adapter"]["n_params"] == 6 * 12 * 12 + 5 * 12 * 8
    assert table["image_adapter"]["sha256"] == tensor_fingerprint(base.image_adapter)
    assert table["text_cross_attn"] == {"present": False, "mean_abs": None, "sha256": None, "n_params": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert "WEIGHT INITIALIZATION VERIFICATION" in messages
    assert f"text_adapter mean weight magnitude: {oracle:.6f}" in "\n".join(messages)
    assert "image_cross_attn: absent (not part of this model)" in messages

    xattn = _Model(xattn=True)
    table = verify_weight_loading(xattn, logging.getLogger("custom"))
    params = list(xattn.image_cross_attn.parameters())
    assert table["image_cross_attn"]["n_params"] == 4 * (8 * 8 + 8) + 1
    # The zero gate counts as one tensor of mean 0, as in the guide's formula.
    expected = sum(float(p.detach().abs().mean()) for p in params) / len(params)
    assert table["image_cross_attn"]["mean_abs"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# The package's real adapter classes
# ------------------------------------------------------------------------------------------------


def test_reference_fixture_loads_strictly_into_the_real_adapter_classes():
    adapters = pytest.importorskip("aaclip_xattn.adapters")
    model = nn.Module()
    model.text_adapter = adapters.TextAdapter(768, 768, 3, device="meta").to_empty(device="cpu")
    model.image_adapter = adapters.ImageAdapter(1024, 768, 6, 4, device="meta").to_empty(device="cpu")
    assert tuple(model.text_adapter.state_dict()) == REFERENCE_TEXT_ADAPTER_KEYS
    assert tuple(model.image_adapter.state_dict()) == REFERENCE_IMAGE_ADAPTER_KEYS
    text = load_base_text_adapter(model, REF_TEXT)
    image = load_base_image_adapter(model, REF_IMAGE)
    assert text.fingerprint == tensor_fingerprint(torch.load(REF_TEXT, weights_only=True)["text_adapter"])
    assert image.fingerprint == tensor_fingerprint(torch.load(REF_IMAGE, weights_only=True)["image_adapter"])

    relu = nn.Module()
    relu.image_adapter = adapters.ImageAdapter(1024, 768, 6, 4, proj_relu=True, device="meta").to_empty(
        device="cpu"
    )
    with pytest.raises(
        CheckpointError, match=r"(?s)missing keys .*'det_proj\.fc\.0\.weight'.*other proj_relu setting"
    ):
        load_base_image_adapter(relu, REF_IMAGE)


def test_package_re_exports_the_checkpoint_api():
    import aaclip_xattn

    assert aaclip_xattn.load_base_text_adapter is load_base_text_adapter
    assert aaclip_xattn.LoadReport is LoadReport
    assert "map_optimizer_state" in aaclip_xattn.__all__


@pytest.fixture(scope="module")
def tiny_models():
    """The real tiny baseline and cross-attention models (skipped until create_model exists)."""
    try:
        from aaclip_xattn import create_model
    except ImportError:
        pytest.skip("aaclip_xattn.create_model is not available yet")
    torch.manual_seed(0)
    return create_model("baseline", backbone="tiny"), create_model("xattn", backbone="tiny")


def test_real_tiny_baseline_checkpoint_initialises_the_cross_attention_model(tmp_path, tiny_models):
    baseline, xattn = tiny_models
    text_opt = _adam(baseline.text_adapter.parameters())
    image_opt = _adam(baseline.image_adapter.parameters())
    _train_steps(baseline, text_opt, 2)
    _train_steps(baseline, image_opt, 2, seed=1)
    text_path = save_text_checkpoint(tmp_path / "text_adapter.pth", baseline, text_opt, 5)
    image_path = save_image_checkpoint(tmp_path / "image_adapter.pth", baseline, image_opt, 20)
    assert "text_cross_attn" not in load_checkpoint_file(text_path)

    cross_before = tensor_fingerprint(xattn.text_cross_attn)
    text = load_base_text_adapter(xattn, text_path)
    image = load_base_image_adapter(xattn, image_path)
    assert text.loaded == tuple(baseline.text_adapter.state_dict())
    assert image.loaded == tuple(baseline.image_adapter.state_dict())
    assert tensor_fingerprint(xattn.text_adapter) == tensor_fingerprint(baseline.text_adapter)
    assert tensor_fingerprint(xattn.image_adapter) == tensor_fingerprint(baseline.image_adapter)
    assert tensor_fingerprint(xattn.text_cross_attn) == cross_before

    new_opt = _adam(_stage_params(xattn, "image"))
    summary = load_optimizer_state(image.checkpoint, xattn, new_opt, stage="image", source=str(image_path))
    assert summary["carried"] == [f"image_adapter.{n}" for n, _ in xattn.image_adapter.named_parameters()]
    assert summary["fresh"] == [f"image_cross_attn.{n}" for n, _ in xattn.image_cross_attn.named_parameters()]

    table = verify_weight_loading(baseline)
    assert table["image_cross_attn"]["present"] is False
    assert verify_weight_loading(xattn)["text_cross_attn"]["sha256"] == cross_before
