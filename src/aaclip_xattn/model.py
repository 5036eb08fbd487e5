"""``AdaptedCLIP``: text anchors per category, adapted image forward with taps, anomaly maps, image scores.

Everything follows ``shared/reference/aaclip-method.md`` §3-§5 and §9 on open_clip 3.x's batch-first
towers. The map arithmetic is a set of pure functions (also used by evaluation and the losses).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn

from .adapters import ImageAdapter, TextAdapter, blend_residual
from .backbone import ACTIVATIONS, freeze_backbone
from .prompts import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, Descriptions, ReadOnlyMapping

__all__ = [
    "BLUR_KERNELS",
    "NUM_ABNORMAL_SENTENCES",
    "NUM_NORMAL_SENTENCES",
    "VV_AXES",
    "AdaptedCLIP",
    "ImageFeatures",
    "ModelConfig",
    "anomaly_map",
    "blur_grid",
    "det_logits",
    "gaussian_kernel1d",
    "grid_anomaly_map",
    "image_score",
    "list_domains",
    "make_anchors",
    "patch_logits",
    "upsample_map",
    "vv_block_forward",
]

logger = logging.getLogger(__name__)

#: Gaussian blur of the patch-grid maps per domain: (kernel size, sigma), reflect border (§9.2).
BLUR_KERNELS: Final = MappingProxyType({"industrial": (7, 1.0), "medical": (9, 1.5)})
#: Stage-1 V-V attention axis modes (§5): the reference's batch-axis quirk, per-image tokens, no attention.
VV_AXES: Final = ("batch", "token", "value_only")
NUM_NORMAL_SENTENCES: Final = len(NORMAL_STATES) * len(TEMPLATES)
NUM_ABNORMAL_SENTENCES: Final = len(ABNORMAL_STATES) * len(TEMPLATES)
_LOGIT_SCALE: Final = 100.0


def list_domains() -> list[str]:
    """Return the blur domains (``industrial``, ``medical``)."""
    return list(BLUR_KERNELS)


@dataclass(frozen=True)
class ModelConfig:
    """Adapter placement and method modes; ``None`` fields scale with the backbone depth.

    Defaults reproduce the reference on ``ViT-L-14-336`` (12 text, 24 vision blocks): 3 text adapters,
    6 image adapters, taps 6/12/18/24, V-V attention from block 5. Call :meth:`resolve` to fill them.
    """

    #: Text adapters after text blocks ``0 .. n-1``; default ``max(1, round(depth_text * 3 / 12))``.
    text_adapter_layers: int | None = None
    #: Image adapters after vision blocks ``0 .. n-1``; default ``round(depth_vision * 6 / 24)``.
    image_adapter_layers: int | None = None
    #: 1-based vision blocks after which features are tapped; default depth/4, 2/4, 3/4, 4/4.
    taps: tuple[int, ...] | None = None
    #: 0-based first vision block with stage-1 V-V attention; default ``round(depth_vision * 5 / 24)``.
    vv_start_block: int | None = None
    #: Blend weight lambda of the norm-matched residual adapters (text and image).
    blend: float = 0.1
    #: LeakyReLU on ``seg_proj``/``det_proj`` (off in the reference; changes checkpoint keys).
    proj_relu: bool = False
    #: ``gelu`` (exact, reference) or ``quick_gelu``; must match how the backbone was built.
    activation: str = "gelu"
    #: Class descriptions: ``None`` (category name in words), a JSON file path, or a mapping.
    descriptions: str | os.PathLike | Mapping[str, str] | None = None
    #: Attention heads of the cross-attention modules (``xattn`` only).
    xattn_heads: int = 8

    def __post_init__(self) -> None:
        for name in ("text_adapter_layers", "image_adapter_layers", "vv_start_block"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"ModelConfig.{name} must be a non-negative int or None, got {value!r}")
        if self.taps is not None:
            taps = self.taps
            if isinstance(taps, str | bytes) or not isinstance(taps, Sequence):
                raise ValueError(
                    f"ModelConfig.taps must be a sequence of 1-based block numbers, got {taps!r}"
                )
            if not taps or any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in taps):
                raise ValueError(
                    f"ModelConfig.taps must be non-empty positive ints (1-based blocks), got {taps!r}"
                )
            if list(taps) != sorted(set(taps)):
                raise ValueError(f"ModelConfig.taps must be strictly increasing, got {list(taps)!r}")
            object.__setattr__(self, "taps", tuple(taps))
        if (
            isinstance(self.blend, bool)
            or not isinstance(self.blend, int | float)
            or not 0.0 <= self.blend <= 1.0
        ):
            raise ValueError(f"ModelConfig.blend must be a number in [0, 1], got {self.blend!r}")
        object.__setattr__(self, "blend", float(self.blend))
        if not isinstance(self.proj_relu, bool):
            raise ValueError(f"ModelConfig.proj_relu must be a bool, got {self.proj_relu!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"ModelConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        desc = self.descriptions
        if desc is not None and not isinstance(desc, str | os.PathLike | Mapping):
            raise ValueError(f"ModelConfig.descriptions must be a file path, a mapping or None, got {desc!r}")
        if isinstance(desc, Mapping):
            object.__setattr__(self, "descriptions", ReadOnlyMapping(desc))
        if (
            not isinstance(self.xattn_heads, int)
            or isinstance(self.xattn_heads, bool)
            or self.xattn_heads < 1
        ):
            raise ValueError(f"ModelConfig.xattn_heads must be a positive int, got {self.xattn_heads!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        """Return the valid keys of :meth:`from_mapping`."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping, rejecting unknown keys (the message lists the valid ones)."""
        unknown = sorted(set(mapping) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"ModelConfig: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(cls.field_names())}"
            )
        values = dict(mapping)
        if isinstance(values.get("taps"), list):
            values["taps"] = tuple(values["taps"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (descriptions as a path string or a plain dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["taps"] = None if self.taps is None else list(self.taps)
        desc = self.descriptions
        out["descriptions"] = (
            dict(desc) if isinstance(desc, Mapping) else (None if desc is None else os.fspath(desc))
        )
        return out

    @property
    def is_resolved(self) -> bool:
        """Whether every depth-dependent field has a value."""
        return None not in (
            self.text_adapter_layers,
            self.image_adapter_layers,
            self.taps,
            self.vv_start_block,
        )

    def resolve(self, text_depth: int, vision_depth: int) -> ModelConfig:
        """Fill the depth-dependent defaults and check ranges against the backbone depths.

        Args:
            text_depth: number of text transformer blocks.
            vision_depth: number of vision transformer blocks.

        Returns:
            A config with every field set.

        Raises:
            ValueError: a field does not fit the backbone (e.g. a tap beyond the last block).
        """
        text_layers = self.text_adapter_layers
        if text_layers is None:
            text_layers = max(1, round(text_depth * 3 / 12))
        image_layers = self.image_adapter_layers
        if image_layers is None:
            image_layers = round(vision_depth * 6 / 24)
        taps = self.taps
        if taps is None:
            taps = tuple(sorted({max(1, round(vision_depth * k / 4)) for k in range(1, 5)}))
        vv_start = self.vv_start_block
        if vv_start is None:
            vv_start = round(vision_depth * 5 / 24)
        if text_layers > text_depth:
            raise ValueError(
                f"ModelConfig.text_adapter_layers={text_layers} exceeds the {text_depth} text blocks"
            )
        if image_layers > vision_depth:
            raise ValueError(
                f"ModelConfig.image_adapter_layers={image_layers} exceeds the {vision_depth} vision blocks"
            )
        if taps[-1] > vision_depth:
            raise ValueError(
                f"ModelConfig.taps={list(taps)} reach beyond the {vision_depth} vision blocks (1-based)"
            )
        if vv_start > vision_depth:
            raise ValueError(
                f"ModelConfig.vv_start_block={vv_start} exceeds the {vision_depth} vision blocks"
            )
        return dataclasses.replace(
            self,
            text_adapter_layers=text_layers,
            image_adapter_layers=image_layers,
            taps=tuple(taps),
            vv_start_block=vv_start,
        )


@dataclass(frozen=True)
class ImageFeatures:
    """Adapted image features.

    Attributes:
        seg_tokens: one ``(B, L, D)`` tensor per tap, L2-normalised per token.
        det_token: ``(B, D)`` mean of the per-token-normalised ``det_proj`` outputs (not re-normalised).
    """

    seg_tokens: list[torch.Tensor]
    det_token: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Map arithmetic (pure functions)
# --------------------------------------------------------------------------------------------------


def _grid_side(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid")
    return side


def _check_anchors(anchors: torch.Tensor, batch: int) -> None:
    if anchors.ndim == 2:
        if anchors.shape[1] != 2:
            raise ValueError(f"anchors must be (D, 2) or (B, D, 2), got {tuple(anchors.shape)}")
    elif anchors.ndim == 3:
        if anchors.shape[0] != batch or anchors.shape[2] != 2:
            raise ValueError(f"anchors must be (D, 2) or ({batch}, D, 2), got {tuple(anchors.shape)}")
    else:
        raise ValueError(f"anchors must be (D, 2) or (B, D, 2), got {tuple(anchors.shape)}")


def patch_logits(seg_tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Return ``100 * (seg . T)`` on the patch grid.

    Args:
        seg_tokens: ``(B, L, D)`` patch features (row-major grid order, L = G*G).
        anchors: ``(D, 2)`` shared or ``(B, D, 2)`` per image; column 0 normal, 1 anomalous.

    Returns:
        ``(B, 2, G, G)`` logits, channel 0 normal, 1 anomalous.
    """
    batch, num_patches, _ = seg_tokens.shape
    _check_anchors(anchors, batch)
    side = _grid_side(num_patches)
    sims = seg_tokens @ anchors  # (B, L, 2); broadcasting covers both anchor layouts
    return (_LOGIT_SCALE * sims).permute(0, 2, 1).reshape(batch, 2, side, side)


def grid_anomaly_map(logits: torch.Tensor) -> torch.Tensor:
    """Return ``(logit_A + 1 - logit_N) / 2`` for ``(B, 2, G, G)`` logits, shape ``(B, G, G)``."""
    return (logits[:, 1] + 1 - logits[:, 0]) / 2


def gaussian_kernel1d(size: int, sigma: float, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the normalised 1-D Gaussian kernel (kornia's convention: centred, sums to 1)."""
    x = torch.arange(size, dtype=dtype) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    kernel = torch.exp(-x.pow(2.0) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur_grid(maps: torch.Tensor, domain: str = "industrial") -> torch.Tensor:
    """Gaussian-blur patch-grid maps with a reflect border (industrial 7/1.0, medical 9/1.5).

    Separable, as kornia's ``gaussian_blur2d``: a horizontal pass then a vertical pass, each padding
    with ``reflect``.

    Args:
        maps: ``(..., G, G)`` maps.
        domain: ``industrial`` or ``medical`` (case-insensitive).

    Returns:
        Blurred maps, same shape.
    """
    key = domain.lower()
    if key not in BLUR_KERNELS:
        raise ValueError(f"domain must be one of {', '.join(BLUR_KERNELS)}, got {domain!r}")
    size, sigma = BLUR_KERNELS[key]
    height, width = maps.shape[-2:]
    pad = size // 2
    if pad >= min(height, width):
        raise ValueError(
            f"grid {height}x{width} is too small for the {size}x{size} reflect-padded blur ({key})"
        )
    kernel = gaussian_kernel1d(size, sigma, dtype=maps.dtype).to(maps.device)
    x = maps.reshape(-1, 1, height, width)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))
    return x.reshape(maps.shape)


def upsample_map(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly upsample ``(B, G, G)`` maps to ``(B, size, size)`` with ``align_corners=True``."""
    return F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True).squeeze(1)


def anomaly_map(
    seg_tokens: Sequence[torch.Tensor], anchors: torch.Tensor, image_size: int, domain: str = "industrial"
) -> torch.Tensor:
    """Return the pixel anomaly map: the sum over taps of the blurred, upsampled grid maps.

    Blur and upsampling are linear, so the tap maps are summed on the grid first and blurred and
    upsampled once (same result up to rounding, 4x cheaper).

    Args:
        seg_tokens: per-tap ``(B, L, D)`` features.
        anchors: ``(D, 2)`` or ``(B, D, 2)``.
        image_size: output side S.
        domain: blur domain.

    Returns:
        ``(B, S, S)`` maps.
    """
    if not seg_tokens:
        raise ValueError("anomaly_map needs at least one tap")
    total = sum(grid_anomaly_map(patch_logits(tokens, anchors)) for tokens in seg_tokens)
    return upsample_map(blur_grid(total, domain), image_size)


def det_logits(det_token: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Return the raw image logits ``det . T`` (no temperature), shape ``(B, 2)``."""
    _check_anchors(anchors, det_token.shape[0])
    if anchors.ndim == 2:
        return det_token @ anchors
    return (det_token.unsqueeze(1) @ anchors).squeeze(1)


def image_score(det_token: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Return the raw image score ``(det . T_A + 1) / 2``, shape ``(B,)``."""
    return (det_logits(det_token, anchors)[:, 1] + 1) / 2


def make_anchors(sentence_embeddings: torch.Tensor, num_normal: int = NUM_NORMAL_SENTENCES) -> torch.Tensor:
    """Average L2-normalised sentence embeddings per state and re-normalise.

    Args:
        sentence_embeddings: ``(C, P, D)`` L2-normalised; the first ``num_normal`` rows are normal.
        num_normal: number of normal sentences.

    Returns:
        ``(C, D, 2)`` anchors, column 0 normal, 1 anomalous.
    """
    normal = F.normalize(sentence_embeddings[:, :num_normal].mean(dim=1), dim=-1)
    abnormal = F.normalize(sentence_embeddings[:, num_normal:].mean(dim=1), dim=-1)
    return torch.stack([normal, abnormal], dim=-1)


def vv_block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, axis: str, *, fused: bool = False, groups: int = 1
) -> torch.Tensor:
    """Run one open_clip block with its attention replaced by V-V attention (method spec §5).

    Only the value slice of the in-projection (weight and bias) is used; per head
    ``softmax(v v^T / sqrt(head_dim)) v``, then the block's out-projection; the MLP runs unchanged.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` (batch-first).
        x: ``(N, T, C)`` token states.
        axis: ``batch`` (attend over the N images at each token position: the reference's quirk),
            ``token`` (over the T tokens of each image) or ``value_only`` (no attention).
        fused: compute the attention with ``F.scaled_dot_product_attention`` (a perf fast path, equal
            to the explicit softmax within float rounding) instead of the explicit softmax.
        groups: split the N images into this many equal consecutive groups; the ``batch`` axis then
            attends within each group only (seed-batched training: one group per seed). Other axes
            ignore it.

    Returns:
        ``(N, T, C)`` states after the block.
    """
    if axis not in VV_AXES:
        raise ValueError(f"vv_axis must be one of {', '.join(VV_AXES)}, got {axis!r}")
    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    head_dim = width // heads
    weight = attn.in_proj_weight[2 * width :]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width :]
    v = F.linear(block.ln_1(x), weight, bias)
    if axis != "value_only":
        n, t = v.shape[:2]
        if axis == "batch" and groups != 1:
            # perf: seed-batched groups (aaclip_xattn.train.seed_batched); attend within each group.
            if groups < 1 or n % groups:
                raise ValueError(f"groups={groups} must be a positive divisor of the {n} images")
            vh = v.reshape(groups, n // groups, t, heads, head_dim).permute(0, 2, 3, 1, 4)
        else:
            vh = v.reshape(n, t, heads, head_dim)
            # Sequence axis last-but-one: tokens of one image ('token') or images at one position ('batch').
            vh = vh.permute(0, 2, 1, 3) if axis == "token" else vh.permute(1, 2, 0, 3)
        if fused:
            out = F.scaled_dot_product_attention(vh, vh, vh)
        else:
            weights = torch.softmax((vh @ vh.transpose(-2, -1)) * head_dim**-0.5, dim=-1)
            out = weights @ vh
        if axis == "batch" and groups != 1:
            out = out.permute(0, 3, 1, 2, 4)
        else:
            out = out.permute(0, 2, 1, 3) if axis == "token" else out.permute(2, 0, 1, 3)
        v = out.reshape(n, t, width)
    x = x + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _backbone_activation(clip: CLIP) -> str:
    return "quick_gelu" if isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU) else "gelu"


class AdaptedCLIP(nn.Module):
    """The AA-CLIP model: a frozen open_clip CLIP plus ``text_adapter`` and ``image_adapter``.

    Args:
        clip: an open_clip ``CLIP`` built by :func:`aaclip_xattn.backbone.build_backbone` (it is frozen here).
        config: placement and modes; depth-dependent fields are resolved against ``clip``.
        tokenizer: CLIP BPE tokenizer; default ``SimpleTokenizer(context_length=clip.context_length)``.
        generator: RNG of the adapters' Xavier-uniform init.

    Attributes:
        clip: the frozen backbone (always in ``eval()``).
        text_adapter: :class:`TextAdapter` (keys ``0.fc.0.weight`` ...).
        image_adapter: :class:`ImageAdapter` (``layer_adapters``, ``seg_proj``, ``det_proj``).
        config: the resolved :class:`ModelConfig`.
        descriptions: the :class:`Descriptions` policy in use (``descriptions.sha256`` for run records).
        embed_dim, image_size, grid_size: joint dim D, input side S, patch-grid side G.
    """

    def __init__(
        self,
        clip: CLIP,
        config: ModelConfig | None = None,
        *,
        tokenizer: SimpleTokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        config = config if config is not None else ModelConfig()
        visual = clip.visual
        self.config = config.resolve(len(clip.transformer.resblocks), len(visual.transformer.resblocks))
        built_with = _backbone_activation(clip)
        if built_with != self.config.activation:
            raise ValueError(
                f"ModelConfig.activation={self.config.activation!r} but the backbone was built with "
                f"{built_with!r}; build it with build_backbone(..., activation={self.config.activation!r})"
            )
        self.clip = freeze_backbone(clip)
        self.descriptions = Descriptions(self.config.descriptions)
        self.embed_dim: int = int(visual.proj.shape[1])
        if visual.image_size[0] != visual.image_size[1]:
            raise ValueError(f"square inputs only; backbone image size is {visual.image_size}")
        self.image_size: int = int(visual.image_size[0])
        self.grid_size: int = int(visual.grid_size[0])
        self.vision_width: int = int(visual.transformer.width)
        self.text_width: int = int(clip.transformer.width)
        device = visual.proj.device
        self.text_adapter = TextAdapter(
            self.text_width,
            self.embed_dim,
            self.config.text_adapter_layers,
            device=device,
            generator=generator,
        )
        self.image_adapter = ImageAdapter(
            self.vision_width,
            self.embed_dim,
            self.config.image_adapter_layers,
            len(self.config.taps),
            proj_relu=self.config.proj_relu,
            device=device,
            generator=generator,
        )
        self.tokenizer = (
            tokenizer if tokenizer is not None else SimpleTokenizer(context_length=clip.context_length)
        )

    # ---------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> AdaptedCLIP:
        """Set train/eval mode on the adapters; the backbone always stays in ``eval()``."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the backbone."""
        return self.clip.visual.proj.device

    # ---------------------------------------------------------------- text
    def class_prompts(self, category: str) -> tuple[list[str], list[str]]:
        """Return the ``(normal, abnormal)`` sentences of ``category`` under the description policy."""
        return self.descriptions.sentences(category)

    def tokenize(self, sentences: Sequence[str]) -> torch.Tensor:
        """Tokenise sentences with CLIP BPE, ``(n, context_length)`` int64; too-long prompts are an error.

        Raises:
            ValueError: a sentence needs more than ``context_length`` tokens (SOT and EOT included).
        """
        context = self.tokenizer.context_length
        for sentence in sentences:
            count = len(self.tokenizer.encode(sentence)) + 2
            if count > context:
                raise ValueError(
                    f"prompt {sentence!r} needs {count} tokens, more than the context length {context}; "
                    f"shorten the class description (no truncation is done)"
                )
        return self.tokenizer(list(sentences)).to(self.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the adapted text encoder (§4.2) and return the projected EOT features, not normalised.

        Token embedding + positional embedding -> blocks (causal mask as open_clip) with blended
        adapters after the first ``text_adapter_layers`` blocks -> ``ln_final`` -> EOT (argmax id) ->
        the replacement projection (Linear + LeakyReLU). The original ``text_projection`` is unused.

        Args:
            tokens: ``(n, context_length)`` token ids.

        Returns:
            ``(n, D)`` features.
        """
        clip = self.clip
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype)
        x = x + clip.positional_embedding.to(cast_dtype)
        num_adapters = self.config.text_adapter_layers
        for index, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if index < num_adapters:
                x = blend_residual(x, self.text_adapter[index](x), self.config.blend)
        x = clip.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.text_adapter.projection(pooled)

    def prompt_embeddings(self, categories: Sequence[str]) -> torch.Tensor:
        """Return L2-normalised sentence embeddings, ``(C, P, D)``: 6 normal rows, then 10 abnormal."""
        if isinstance(categories, str):
            raise ValueError("categories must be a sequence of category names, not a single string")
        sentences: list[str] = []
        for category in categories:
            normal, abnormal = self.class_prompts(category)
            sentences.extend(normal + abnormal)
        per_class = NUM_NORMAL_SENTENCES + NUM_ABNORMAL_SENTENCES
        features = F.normalize(self.encode_text(self.tokenize(sentences)), dim=-1)
        return features.reshape(len(categories), per_class, -1)

    def text_anchors(self, categories: Sequence[str]) -> torch.Tensor:
        """Return anchors ``T = [T_N, T_A]`` per category, ``(C, D, 2)`` (grad flows into ``text_adapter``)."""
        return make_anchors(self.prompt_embeddings(categories))

    def anchors_for(self, categories: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return per-image anchors and prompt embeddings for a batch's categories.

        Each distinct category is encoded once.

        Args:
            categories: one category name per image (length B).

        Returns:
            ``(anchors (B, D, 2), prompt_embeddings (B, P, D))``.
        """
        if isinstance(categories, str):
            raise ValueError("categories must be a sequence of category names, not a single string")
        unique = list(dict.fromkeys(categories))
        embeddings = self.prompt_embeddings(unique)
        anchors = make_anchors(embeddings)
        index = torch.tensor([unique.index(c) for c in categories], device=embeddings.device)
        return anchors[index], embeddings[index]

    # ---------------------------------------------------------------- image
    def _check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )

    def _embed_image(self, images: torch.Tensor) -> torch.Tensor:
        # As open_clip's VisionTransformer does before its blocks (patch dropout is identity in eval).
        self._check_images(images)
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def _adapted_blocks(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self._embed_image(images)
        taps = set(self.config.taps)
        num_adapters = self.config.image_adapter_layers
        adapters = self.image_adapter["layer_adapters"]
        tapped: list[torch.Tensor] = []
        for index, block in enumerate(self.clip.visual.transformer.resblocks):
            x = block(x)
            if index < num_adapters:
                x = blend_residual(x, adapters[index](x), self.config.blend)
            if index + 1 in taps:
                tapped.append(x)
        return tapped, x

    def _condition_patches(
        self, patches: torch.Tensor, prompt_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """Hook for the cross-attention variant; the baseline leaves the patch features unchanged."""
        return patches

    def encode_image(
        self, images: torch.Tensor, *, prompt_embeddings: torch.Tensor | None = None
    ) -> ImageFeatures:
        """Run the adapted image forward (§4.3).

        Blocks with blended adapters after the first ``image_adapter_layers`` blocks (CLS included);
        taps after the configured blocks; drop CLS; shared ``ln_post``; per-tap ``seg_proj`` + per-token
        L2 norm; ``det_proj`` on the last block's patch tokens, per-token L2 norm, mean over patches.

        Args:
            images: ``(B, 3, S, S)`` normalised images.
            prompt_embeddings: ``(B, P, D)`` sentence embeddings of each image's class; read by the
                cross-attention variant, ignored by the baseline.

        Returns:
            :class:`ImageFeatures`.
        """
        tapped, final = self._adapted_blocks(images)
        ln_post = self.clip.visual.ln_post
        patches = [self._condition_patches(ln_post(x[:, 1:]), prompt_embeddings) for x in tapped]
        heads = self.image_adapter["seg_proj"]
        seg = [F.normalize(head(p), dim=-1) for head, p in zip(heads, patches, strict=True)]
        if self.config.taps[-1] == len(self.clip.visual.transformer.resblocks):
            last = patches[-1]
        else:
            last = self._condition_patches(ln_post(final[:, 1:]), prompt_embeddings)
        det = F.normalize(self.image_adapter["det_proj"](last), dim=-1).mean(dim=1)
        return ImageFeatures(seg_tokens=seg, det_token=det)

    def condition_anchors(self, anchors: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """Return image-conditioned anchors; the baseline returns ``anchors`` unchanged.

        Args:
            anchors: ``(B, D, 2)`` (or ``(D, 2)``).
            patch_features: ``(B, L, D)``.
        """
        return anchors

    @torch.no_grad()
    def stage1_features(
        self, images: torch.Tensor, *, vv_axis: str = "batch", fused: bool = False, groups: int = 1
    ) -> list[torch.Tensor]:
        """Return the frozen stage-1 V-V features (§5), one ``(B, L, D)`` tensor per tap.

        Blocks before ``vv_start_block`` run unchanged and are shared by two passes; from there one pass
        uses V-V attention (:func:`vv_block_forward`) and the other is the unmodified CLIP. Each tap of
        the V-V pass -> drop CLS -> ``ln_post`` -> original ``visual.proj`` -> L2 norm, plus the
        L2-normalised global embedding ``ln_post(CLS) @ proj`` of the unmodified pass (not
        re-normalised). Uses the frozen backbone only (no adapters).

        Args:
            images: ``(B, 3, S, S)``.
            vv_axis: ``batch`` (reference; depends on batch composition), ``token`` or ``value_only``.
            fused: V-V attention with ``F.scaled_dot_product_attention`` (see :func:`vv_block_forward`).
            groups: independent equal groups of consecutive images for the ``batch`` axis (seed-batched).
        """
        if vv_axis not in VV_AXES:
            raise ValueError(f"vv_axis must be one of {', '.join(VV_AXES)}, got {vv_axis!r}")
        visual = self.clip.visual
        x = self._embed_image(images)
        taps = set(self.config.taps)
        start = self.config.vv_start_block
        tapped: list[torch.Tensor] = []
        x_vv: torch.Tensor | None = None
        for index, block in enumerate(visual.transformer.resblocks):
            if index >= start:
                x_vv = vv_block_forward(
                    block, x if x_vv is None else x_vv, vv_axis, fused=fused, groups=groups
                )
            x = block(x)
            if index + 1 in taps:
                tapped.append(x if x_vv is None else x_vv)
        cls = F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)
        return [
            F.normalize(visual.ln_post(t[:, 1:]) @ visual.proj, dim=-1) + cls.unsqueeze(1) for t in tapped
        ]

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def score(self, images: torch.Tensor, categories: Sequence[str], *, domain: str = "industrial") -> dict:
        """Score a batch: pixel anomaly maps and raw image scores (before any per-class normalisation).

        Args:
            images: ``(B, 3, S, S)``.
            categories: one category per image.
            domain: blur domain (``industrial`` or ``medical``).

        Returns:
            ``{"anomaly_map": (B, S, S), "image_score": (B,), "det_logits": (B, 2)}``.
        """
        if len(categories) != images.shape[0]:
            raise ValueError(f"got {len(categories)} categories for {images.shape[0]} images")
        anchors, embeddings = self.anchors_for(categories)
        features = self.encode_image(images, prompt_embeddings=embeddings)
        anchors = self.condition_anchors(anchors, features.seg_tokens[-1])
        return {
            "anomaly_map": anomaly_map(features.seg_tokens, anchors, self.image_size, domain),
            "image_score": image_score(features.det_token, anchors),
            "det_logits": det_logits(features.det_token, anchors),
        }
