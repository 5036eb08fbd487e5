"""AA-CLIP baseline and cross-attention variant: faithful model, fair training, exact evaluation, honest stats."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

# model API (backbone, adapters, model, cross-attention, factory)
# Lazy (PEP 562), like the checkpoint API below: importing the package must not import torch/open_clip.
_MODEL_API = {
    "AdaptedCLIP": "model",
    "AdaptedCLIPWithCrossAttention": "cross_attention",
    "GatedCrossAttention": "cross_attention",
    "ImageFeatures": "model",
    "ModelConfig": "model",
    "build_backbone": "backbone",
    "create_model": "factory",
}
__all__ += list(_MODEL_API)


def __getattr__(name: str) -> object:
    if name in _MODEL_API:
        import importlib

        return getattr(importlib.import_module(f"aaclip_xattn.{_MODEL_API[name]}"), name)
    raise AttributeError(f"module 'aaclip_xattn' has no attribute {name!r}")


# checkpoint API
# Re-exported lazily (PEP 562) so that importing the package, e.g. the torch-free ``aaclip_xattn.stats``,
# does not import torch; chains to any ``__getattr__`` defined above.
_CHECKPOINT_API = (
    "LoadReport",
    "load_adapter_state",
    "load_base_image_adapter",
    "load_base_text_adapter",
    "load_checkpoint_file",
    "load_optimizer_state",
    "map_optimizer_state",
    "save_image_checkpoint",
    "save_text_checkpoint",
    "tensor_fingerprint",
    "verify_weight_loading",
)
__all__ += list(_CHECKPOINT_API)
_getattr_before_checkpoint = globals().get("__getattr__")


def __getattr__(name: str) -> object:  # noqa: F811 - chains to the definition above
    if name in _CHECKPOINT_API:
        from aaclip_xattn import checkpoint

        return getattr(checkpoint, name)
    if _getattr_before_checkpoint is not None:
        return _getattr_before_checkpoint(name)
    raise AttributeError(f"module 'aaclip_xattn' has no attribute {name!r}")
