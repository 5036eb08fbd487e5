"""Backbone building: registry, weights files (plain, safetensors, TorchScript), cache-only tags, freezing."""

from __future__ import annotations

import logging
import urllib.request
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from aaclip_xattn.backbone import CLIP_MEAN, CLIP_STD, build_backbone, list_backbones, resolve_pretrained

MICRO = "test-micro-vit"
MICRO_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture
def micro_arch(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register a micro 'real' architecture (not ``tiny``) in open_clip's registry for this test."""
    list_backbones()  # registers tiny first, so the registry dict is not replaced under the patch
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, MICRO, MICRO_CFG)
    return MICRO


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", refuse)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_clip_constants_are_the_openai_values():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_tiny_is_frozen_eval_deterministic_and_leaves_global_rng_alone(caplog):
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.INFO, logger="aaclip_xattn.backbone"):
        first = build_backbone("tiny")
    assert torch.equal(state, torch.random.get_rng_state())
    second = build_backbone("tiny")
    _assert_same_state(_state(first), _state(second))
    other_seed = build_backbone("tiny", init_seed=1)
    assert not torch.equal(first.visual.proj, other_seed.visual.proj)
    assert not first.training and not any(m.training for m in first.modules())
    assert all(not p.requires_grad for p in first.parameters())
    # the embedded study: INFO, never a WARNING
    records = [r for r in caplog.records if r.name == "aaclip_xattn.backbone"]
    assert any(r.levelno == logging.INFO and "random init" in r.getMessage() for r in records)
    assert not any(r.levelno >= logging.WARNING for r in records)
    assert first.visual.grid_size == (8, 8) and first.visual.transformer.width == 192
    assert first.visual.transformer.resblocks[0].attn.num_heads == 3


def test_random_init_of_a_real_architecture_warns(micro_arch, caplog):
    with caplog.at_level(logging.INFO, logger="aaclip_xattn.backbone"):
        build_backbone(micro_arch)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "aaclip_xattn.backbone"]
    assert warned and "RANDOM INIT" in warned[0].getMessage()


def test_activation_selects_gelu_or_quick_gelu():
    assert isinstance(build_backbone("tiny").visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    quick = build_backbone("tiny", activation="quick_gelu")
    assert isinstance(quick.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(quick.transformer.resblocks[0].mlp.gelu, QuickGELU)
    with pytest.raises(ValueError, match="activation must be one of gelu, quick_gelu"):
        build_backbone("tiny", activation="relu")


def test_unknown_backbone_names_itself():
    with pytest.raises(ValueError, match="unknown backbone 'ViT-Q-99'"):
        build_backbone("ViT-Q-99")


def test_non_vit_architecture_is_refused():
    with pytest.raises(ValueError, match="RN50.*VisionTransformer"):
        build_backbone("RN50", device="meta")


@pytest.mark.parametrize("layout", ["plain", "state_dict_module_prefix", "safetensors"])
def test_weights_file_round_trip(tmp_path, layout):
    source = _state(build_backbone("tiny", init_seed=3))
    if layout == "plain":
        path = tmp_path / "w.pt"
        torch.save(source, path)
    elif layout == "state_dict_module_prefix":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    loaded = build_backbone("tiny", pretrained=path)
    _assert_same_state(source, _state(loaded))
    assert all(not p.requires_grad for p in loaded.parameters())


def test_position_embedding_is_resized_bicubic_with_antialias(tmp_path):
    source = build_backbone("tiny", init_seed=4)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    resized = build_backbone("tiny", pretrained=path, image_size=160)  # grid 8 -> 10
    old = source.visual.positional_embedding.detach()
    new = resized.visual.positional_embedding.detach()
    assert new.shape == (101, 192)
    assert torch.equal(new[0], old[0])  # CLS row kept
    grid = old[1:].reshape(1, 8, 8, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(10, 10), mode="bicubic", antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(100, 192)
    torch.testing.assert_close(new[1:], expected, rtol=0, atol=1e-7)
    no_aa = F.interpolate(grid, size=(10, 10), mode="bicubic", antialias=False, align_corners=False)
    assert (no_aa.permute(0, 2, 3, 1).reshape(100, 192) - new[1:]).abs().max() > 1e-4
    # every other tensor is loaded unchanged
    assert torch.equal(resized.visual.proj, source.visual.proj)


def _save_openai_torchscript(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Write a TorchScript archive in OpenAI's layout: fp16 weights, top-level keys, extra int buffers."""
    half = {k: v.detach().half() for k, v in model.state_dict().items()}

    class OpenAIStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            clone = build_backbone("tiny").half()
            clone.load_state_dict(half)
            for name, child in clone.named_children():
                setattr(self, name, child)
            for name, param in clone.named_parameters(recurse=False):
                self.register_parameter(name, param)
            self.register_buffer("input_resolution", torch.tensor(128))
            self.register_buffer("context_length", torch.tensor(77))
            self.register_buffer("vocab_size", torch.tensor(49408))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(OpenAIStyle())
        torch.jit.save(scripted, str(path))
    return half


def test_openai_torchscript_archive_loads_and_upcasts(tmp_path):
    path = tmp_path / "ViT-tiny-openai.pt"
    half = _save_openai_torchscript(build_backbone("tiny", init_seed=5), path)
    with pytest.raises(RuntimeError, match="TorchScript"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.load(path, weights_only=True)  # why the loader needs its own TorchScript path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = build_backbone("tiny", pretrained=path)
    state = loaded.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    for key, value in half.items():
        assert torch.equal(state[key], value.float()), key


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "ViT-L-14-336px.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere/ViT-L-14-336px\.pt"):
        build_backbone("ViT-L-14-336", pretrained=missing)


def test_weights_of_another_architecture_are_refused_naming_the_file(tmp_path, micro_arch):
    path = tmp_path / "tiny_weights.pt"
    torch.save(build_backbone("tiny").state_dict(), path)
    with pytest.raises(
        RuntimeError, match=rf"tiny_weights\.pt: weights do not fit open_clip architecture '{MICRO}'"
    ):
        build_backbone(micro_arch, pretrained=path)


def test_uncached_tag_raises_without_downloading(tmp_path, no_network):
    with pytest.raises(
        FileNotFoundError, match="'openai' of 'ViT-L-14-336' is not in the local cache.*no download"
    ):
        build_backbone("ViT-L-14-336", pretrained="openai", cache_dir=tmp_path)


def test_unknown_tag_lists_known_tags(tmp_path, no_network):
    with pytest.raises(ValueError, match="neither an existing weights file nor an open_clip tag.*openai"):
        build_backbone("ViT-L-14-336", pretrained="laion9000", cache_dir=tmp_path)


def test_cached_url_tag_is_used(tmp_path, monkeypatch, no_network):
    source = build_backbone("tiny", init_seed=6)
    torch.save(source.state_dict(), tmp_path / "tiny-weights.pt")
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        "tiny",
        {"cachedtag": {"url": "https://example.invalid/x/tiny-weights.pt"}},
    )
    assert resolve_pretrained("tiny", "cachedtag", cache_dir=tmp_path) == tmp_path / "tiny-weights.pt"
    _assert_same_state(
        _state(source), _state(build_backbone("tiny", pretrained="cachedtag", cache_dir=tmp_path))
    )


def test_cached_hf_hub_tag_is_used(tmp_path, monkeypatch, no_network):
    from safetensors.torch import save_file

    repo = tmp_path / "models--someorg--tiny-clip"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    source = build_backbone("tiny", init_seed=7)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        str(snapshot / "open_clip_model.safetensors"),
    )
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED, "tiny", {"hubtag": {"hf_hub": "someorg/tiny-clip/"}}
    )
    found = resolve_pretrained("tiny", "hubtag", cache_dir=tmp_path)
    assert found.name == "open_clip_model.safetensors"
    _assert_same_state(
        _state(source), _state(build_backbone("tiny", pretrained="hubtag", cache_dir=tmp_path))
    )


def test_meta_device_builds_shapes_only_and_refuses_weights(tmp_path):
    model = build_backbone("ViT-L-14-336", device="meta", image_size=518)
    assert model.visual.positional_embedding.shape == (37 * 37 + 1, 1024)
    assert model.visual.proj.is_meta
    path = tmp_path / "w.pt"
    torch.save({}, path)
    with pytest.raises(ValueError, match="meta"):
        build_backbone("ViT-L-14-336", device="meta", pretrained=path)
