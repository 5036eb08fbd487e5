"""Gated cross-attention and ``AdaptedCLIPWithCrossAttention``, the AA-CLIP variant under test.

Design
------
Two :class:`GatedCrossAttention` modules are added to the baseline :class:`~aaclip_xattn.model.AdaptedCLIP`:

* ``text_cross_attn`` makes the text anchors image-conditioned. The two anchors of an image
  (``(B, 2, D)``: normal, anomalous) are the queries; the image's patch features ``(B, L, D)`` are the
  keys/values; the gated output is added to the anchors (:meth:`condition_anchors`). Which patch
  features it reads: in **stage 1** the frozen stage-1 V-V features of the last tap
  (``stage1_features(...)[-1]``, the ones the stage-1 loss uses); in **stage 2 and at test time** the
  adapted layer-``depth`` seg tokens (``encode_image(...).seg_tokens[-1]``), both L2-normalised per
  token and living in the joint space of the anchors.
* ``image_cross_attn`` makes the patch features text-aware. For every tap, the ``ln_post``-ed patch
  tokens ``(B, L, vision_width)`` are the queries and the image's class prompt embeddings
  ``(B, P, D)`` (P = 16 sentences) are the keys/values; the gated output is added to the tokens before
  ``seg_proj`` and ``det_proj``. One module is shared by all taps.

**Why gated, and why the gate starts at exactly 0.** Output = ``gate * out_proj(attention)``, added
residually by the caller, with a learnable scalar ``gate`` initialised to ``0.0``. A zero gate makes the
variant *start exactly at the baseline's function*: with adapters loaded from a trained baseline
(arm ``xattn_from_base``), the first forward pass reproduces the baseline's maps and scores bit for bit
(``x + 0 * y == x`` in IEEE arithmetic for finite ``y``), so any later difference is what training the
cross-attention adds, not a perturbation of the starting point. A ``tanh(gate)`` with a small non-zero
init (Flamingo-style) would start *near* the baseline, not at it, and the comparison would no longer
isolate the effect; ``tanh`` of a zero init would be exact too, but brings nothing here (the gate stays
small in practice) and shrinks the gate's gradient for larger values. The gate's own gradient at 0 is
non-zero (``<out_proj(attention), upstream grad>``), so training leaves the baseline immediately; the
projections get gradients once the gate is non-zero.

**No re-normalisation after the residual.** The conditioned anchors and patch features are not
re-normalised, so that gate 0 is exact (re-normalising an already unit-norm vector changes it by
rounding) and the baseline's formulas (logits ``100 * seg . T``, score ``(det . T_A + 1) / 2``) apply
unchanged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from .adapters import make_linear
from .model import AdaptedCLIP, ModelConfig

__all__ = ["AdaptedCLIPWithCrossAttention", "GatedCrossAttention"]

logger = logging.getLogger(__name__)


class GatedCrossAttention(nn.Module):
    """Multi-head cross-attention whose output is scaled by a learnable scalar gate (initially 0).

    ``forward(x, context) = gate * out_proj(MHA(q_proj(x), k_proj(context), v_proj(context)))``; the
    caller adds it to ``x``. Projections are Xavier-uniform with zero biases.

    Args:
        query_dim: width of the queries ``x``.
        context_dim: width of the keys/values ``context``.
        num_heads: attention heads; must divide ``inner_dim``.
        inner_dim: width of the attention space (default ``query_dim``).
        device: parameter device.
        generator: RNG of the Xavier-uniform init (q, k, v, out in that order).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        *,
        num_heads: int,
        inner_dim: int | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        inner_dim = query_dim if inner_dim is None else inner_dim
        if num_heads < 1 or inner_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must be positive and divide inner_dim={inner_dim}")
        self.num_heads = num_heads
        self.inner_dim = inner_dim
        self.q_proj = make_linear(query_dim, inner_dim, bias=True, device=device, generator=generator)
        self.k_proj = make_linear(context_dim, inner_dim, bias=True, device=device, generator=generator)
        self.v_proj = make_linear(context_dim, inner_dim, bias=True, device=device, generator=generator)
        self.out_proj = make_linear(inner_dim, query_dim, bias=True, device=device, generator=generator)
        self.gate = nn.Parameter(torch.zeros((), device=device))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.inner_dim // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from ``x`` ``(B, Q, query_dim)`` to ``context`` ``(B, K, context_dim)``.

        Returns:
            ``(B, Q, query_dim)``: the gated update (not yet added to ``x``).
        """
        if x.ndim != 3 or context.ndim != 3 or x.shape[0] != context.shape[0]:
            raise ValueError(
                f"GatedCrossAttention expects x (B, Q, C) and context (B, K, C'), got "
                f"{tuple(x.shape)} and {tuple(context.shape)}"
            )
        q, k, v = (
            self._split(self.q_proj(x)),
            self._split(self.k_proj(context)),
            self._split(self.v_proj(context)),
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.inner_dim)
        return self.gate * self.out_proj(out)


class AdaptedCLIPWithCrossAttention(AdaptedCLIP):
    """AA-CLIP with ``text_cross_attn`` (anchors <- patches) and ``image_cross_attn`` (patches <- prompts).

    Args:
        clip: the open_clip backbone.
        config: as :class:`~aaclip_xattn.model.AdaptedCLIP`; ``xattn_heads`` sets the heads of both modules.
        tokenizer: CLIP BPE tokenizer.
        generator: RNG of the init (adapters first, then ``text_cross_attn``, then ``image_cross_attn``).
    """

    def __init__(
        self,
        clip: CLIP,
        config: ModelConfig | None = None,
        *,
        tokenizer: SimpleTokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(clip, config, tokenizer=tokenizer, generator=generator)
        heads = self.config.xattn_heads
        device = self.device
        self.text_cross_attn = GatedCrossAttention(
            self.embed_dim, self.embed_dim, num_heads=heads, device=device, generator=generator
        )
        self.image_cross_attn = GatedCrossAttention(
            self.vision_width, self.embed_dim, num_heads=heads, device=device, generator=generator
        )

    def _condition_patches(
        self, patches: torch.Tensor, prompt_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if prompt_embeddings is None:
            raise ValueError(
                "AdaptedCLIPWithCrossAttention.encode_image needs prompt_embeddings (B, P, D) of each "
                "image's class (model.anchors_for(categories)[1]) for image_cross_attn"
            )
        if (
            prompt_embeddings.ndim != 3
            or prompt_embeddings.shape[0] != patches.shape[0]
            or prompt_embeddings.shape[2] != self.embed_dim
        ):
            raise ValueError(
                f"prompt_embeddings must be ({patches.shape[0]}, P, {self.embed_dim}), "
                f"got {tuple(prompt_embeddings.shape)}"
            )
        return patches + self.image_cross_attn(patches, prompt_embeddings)

    def condition_anchors(self, anchors: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """Return ``anchors + gate * cross_attn(anchors, patch_features)`` (no re-normalisation).

        Args:
            anchors: ``(B, D, 2)``, or ``(D, 2)`` shared by the batch.
            patch_features: ``(B, L, D)`` (stage 1: stage-1 features of the last tap; stage 2 and test:
                the last seg tokens).

        Returns:
            ``(B, D, 2)`` conditioned anchors.
        """
        if patch_features.ndim != 3 or patch_features.shape[2] != self.embed_dim:
            raise ValueError(
                f"patch_features must be (B, L, {self.embed_dim}), got {tuple(patch_features.shape)}"
            )
        if anchors.ndim == 2:
            anchors = anchors.unsqueeze(0).expand(patch_features.shape[0], -1, -1)
        if (
            anchors.ndim != 3
            or anchors.shape[0] != patch_features.shape[0]
            or anchors.shape[1:] != (self.embed_dim, 2)
        ):
            raise ValueError(
                f"anchors must be ({patch_features.shape[0]}, {self.embed_dim}, 2), got {tuple(anchors.shape)}"
            )
        queries = anchors.transpose(1, 2)
        return (queries + self.text_cross_attn(queries, patch_features)).transpose(1, 2)
