"""Build a frozen open_clip backbone by name from a local weights file, the open_clip cache, or random init.

The embedded ``tiny`` architecture (``model_configs/tiny.json``, open_clip's config format) travels the
same build path as ``ViT-L-14-336``; it is registered with open_clip on first use. Nothing here touches
the network: an open_clip pretrained tag is used only when its file is already in the local cache.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import open_clip
import torch
from open_clip.factory import load_state_dict as _open_clip_load_state_dict
from open_clip.model import CLIP, resize_pos_embed, resize_text_pos_embed
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

__all__ = [
    "ACTIVATIONS",
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_INIT_SEED",
    "WEIGHT_SUFFIXES",
    "build_backbone",
    "freeze_backbone",
    "list_backbones",
    "load_backbone_weights",
    "resolve_pretrained",
]

logger = logging.getLogger(__name__)

#: CLIP preprocessing mean and standard deviation (RGB, images scaled to [0, 1]).
CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)

#: Activation modes (method spec §14 #1): exact GELU reproduces the reference, QuickGELU is "correct" CLIP.
ACTIVATIONS: Final = ("gelu", "quick_gelu")

#: File suffixes treated as a weights file rather than an open_clip pretrained tag.
WEIGHT_SUFFIXES: Final = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

#: Seed of the random initialisation of a backbone built without weights. Fixed, so that every process
#: (every arm of a comparison) builds the same random ``tiny`` backbone; drawn in a forked RNG state.
TINY_INIT_SEED: Final = 0

_TINY_NAME: Final = "tiny"
_TINY_CONFIG: Final = Path(__file__).with_name("model_configs") / "tiny.json"
# Keys OpenAI's TorchScript archives carry besides the weights (open_clip drops them too).
_JIT_EXTRA_KEYS: Final = ("input_resolution", "context_length", "vocab_size")
_HF_WEIGHT_FILES: Final = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _register_tiny() -> None:
    if _TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(_TINY_CONFIG)


def list_backbones() -> list[str]:
    """Return the open_clip architecture names that can be built (``tiny`` included)."""
    _register_tiny()
    return list(open_clip.list_models())


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or Path(value).suffix.lower() in WEIGHT_SUFFIXES
        or Path(value).is_file()
    )


def resolve_pretrained(
    name: str, pretrained: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Resolve ``pretrained`` to a local weights file without touching the network.

    Args:
        name: open_clip architecture name (e.g. ``"ViT-L-14-336"``).
        pretrained: a local weights file, or an open_clip pretrained tag (e.g. ``"openai"``) whose file is
            already in the Hugging Face cache or open_clip's URL cache (``~/.cache/clip``).
        cache_dir: cache root to search instead of the defaults (both kinds of cache are looked up there).

    Returns:
        The path of the weights file.

    Raises:
        FileNotFoundError: the file does not exist, or the tag's file is not cached (nothing is downloaded).
        ValueError: ``pretrained`` is neither a path nor a known tag of ``name``.
    """
    text = os.fspath(pretrained)
    if isinstance(pretrained, os.PathLike) or _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist (backbone {name!r})")
        return path
    cfg = open_clip.get_pretrained_cfg(name, text)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"pretrained={text!r} is neither an existing weights file nor an open_clip tag of {name!r}; "
            f"known tags: {', '.join(tags) if tags else '(none)'}"
        )
    looked: list[str] = []
    if cfg.get("file"):
        looked.append(str(cfg["file"]))
        if Path(cfg["file"]).is_file():
            return Path(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        found = _find_in_hf_cache(hub, cache_dir, looked)
        if found is not None:
            return found
    url = cfg.get("url", "")
    if url:
        root = Path(cache_dir) if cache_dir is not None else Path("~/.cache/clip").expanduser()
        candidate = root / os.path.basename(url)
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"open_clip pretrained tag {text!r} of {name!r} is not in the local cache (looked for: "
        f"{'; '.join(looked) or 'nothing to look for'}); no download is attempted. "
        f"Download it once, or pass a local weights file as pretrained=<path>"
    )


def _find_in_hf_cache(hub: str, cache_dir: str | os.PathLike | None, looked: list[str]) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
        looked.append(f"hf:{hub} (huggingface_hub not installed)")
        return None
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else list(_HF_WEIGHT_FILES)
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for fname in names:
        looked.append(f"hf:{repo_id}/{fname}")
        hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if _is_torchscript_archive(path):
        # OpenAI's released checkpoints are TorchScript archives; torch.load(weights_only=True) refuses
        # them, so read the archive's tensors with torch.jit.load (no Python unpickling involved).
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        for key in _JIT_EXTRA_KEYS:
            state.pop(key, None)
        return state
    try:
        state = _open_clip_load_state_dict(str(path), device="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise RuntimeError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path}: expected a state dict of tensors (optionally under 'state_dict')")
    return dict(state)


def load_backbone_weights(model: CLIP, path: str | os.PathLike, *, name: str = "") -> None:
    """Load a weights file into an open_clip ``CLIP`` model, strictly, as open_clip's loader does.

    Accepts a plain state dict (``.pt``/``.pth``/``.bin``, optionally under ``"state_dict"``, optional
    ``module.`` prefix), a ``.safetensors`` file, or an OpenAI TorchScript archive (fp16 values are
    converted to the model's float32). The visual position embedding is resized to the model's grid
    with open_clip's ``resize_pos_embed`` (bicubic, ``antialias=True``, CLS row kept).

    Args:
        model: the open_clip model to fill.
        path: the weights file.
        name: architecture name, used in error messages.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file cannot be read or its tensors do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist (backbone {name!r})")
    state = _read_state_dict(path)
    # Upcast before the position-embedding resize: bicubic interpolation of fp16 values on CPU would
    # round differently from resizing the exact (upcast) values.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise RuntimeError(
            f"{path}: weights do not fit open_clip architecture {name!r} ({exc}); wrong backbone name?"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{path}: weights do not fit open_clip architecture {name!r}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}); "
            f"wrong backbone name?"
        )


def freeze_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """Set ``requires_grad=False`` on every parameter, switch to ``eval()`` and return the model."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _check_supported(model: torch.nn.Module, name: str) -> None:
    if not isinstance(model, CLIP):
        raise ValueError(
            f"backbone {name!r} builds {type(model).__name__}; AA-CLIP needs open_clip's CLIP class "
            f"(built-in text transformer), not a custom/HF text tower"
        )
    visual = model.visual
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.proj is None:
        raise ValueError(
            f"backbone {name!r}: AA-CLIP needs a plain open_clip VisionTransformer (class token, "
            f"ln_post, proj); got {type(visual).__name__}"
        )
    if visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ValueError(
            f"backbone {name!r}: vision pool type {visual.pool_type!r} not supported (need 'tok')"
        )
    for tower, blocks in (("vision", visual.transformer.resblocks), ("text", model.transformer.resblocks)):
        if not all(isinstance(b, ResidualAttentionBlock) for b in blocks):
            raise ValueError(f"backbone {name!r}: {tower} tower uses custom attention blocks, not supported")
    if not (visual.transformer.batch_first and model.transformer.batch_first):
        raise ValueError(f"backbone {name!r}: sequence-first transformers are not supported")
    if model.text_pool_type != "argmax":
        raise ValueError(f"backbone {name!r}: text pool type {model.text_pool_type!r} (need 'argmax')")


def build_backbone(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    image_size: int | None = None,
    activation: str = "gelu",
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    init_seed: int = TINY_INIT_SEED,
) -> CLIP:
    """Build a frozen, eval-mode open_clip CLIP model by architecture name.

    Args:
        name: open_clip architecture (``"ViT-L-14-336"``, ``"ViT-B-16"``, ...) or the embedded ``"tiny"``.
        pretrained: a local weights file (state dict, safetensors or OpenAI TorchScript archive), an
            open_clip tag whose file is already cached, or ``None`` for a random init.
        image_size: force this input size (open_clip's ``force_image_size``); loaded position embeddings
            are resized bicubically with antialiasing.
        activation: ``"gelu"`` (exact GELU, the reference) or ``"quick_gelu"``; overrides the config.
        device: where to put the model. ``"meta"`` builds shapes only (no weights allowed), e.g. to count
            parameters of a large architecture without allocating memory.
        cache_dir: cache root searched for pretrained tags (default: the HF cache and ``~/.cache/clip``).
        init_seed: seed of the random init when ``pretrained`` is ``None``; drawn in a forked RNG state,
            so the global RNGs are untouched and every process builds the same random model.

    Returns:
        The open_clip ``CLIP`` model with every parameter frozen and in ``eval()`` mode.

    Raises:
        ValueError: unknown architecture, activation or unsupported architecture family.
        FileNotFoundError: a weights file is missing, or a tag is not cached.
        RuntimeError: the weights do not fit the architecture.
    """
    _register_tiny()
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown backbone {name!r}; valid open_clip architectures include 'tiny', 'ViT-L-14-336', "
            f"'ViT-B-16' (see open_clip.list_models())"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if image_size is not None and (
        not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0
    ):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    device = torch.device(device)
    path = None if pretrained is None else resolve_pretrained(name, pretrained, cache_dir=cache_dir)
    if path is not None and device.type == "meta":
        raise ValueError("device='meta' builds shapes only; it cannot load pretrained weights")

    cfg = open_clip.get_model_config(name)
    if (
        cfg.get("custom_text", False)
        or "multimodal_cfg" in cfg
        or "hf_model_name" in cfg.get("text_cfg", {})
        or "timm_model_name" in cfg.get("vision_cfg", {})
    ):
        raise ValueError(
            f"backbone {name!r} is not a plain CLIP (custom/HF text tower, timm vision tower or CoCa); "
            f"AA-CLIP needs open_clip's CLIP class with a VisionTransformer"
        )
    cfg.pop("custom_text", None)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    # Same construction as open_clip.create_model for a plain CLIP (fp32, no cast dtype), without its
    # download logic and its root-logger warnings.
    cfg["quick_gelu"] = activation == "quick_gelu"
    if device.type == "meta":
        with torch.device("meta"):
            model = CLIP(**cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = CLIP(**cfg)
        _check_supported(model, name)
        if path is not None:
            load_backbone_weights(model, path, name=name)
            logger.info("backbone %s: loaded weights from %s", name, path)
        elif name == _TINY_NAME:
            logger.info("backbone tiny: embedded study architecture, random init (seed %d)", init_seed)
        else:
            logger.warning(
                "backbone %s: no pretrained weights given, RANDOM INIT (seed %d); results are meaningless "
                "for anomaly detection",
                name,
                init_seed,
            )
        model = model.to(device)
    _check_supported(model, name)
    return freeze_backbone(model)
