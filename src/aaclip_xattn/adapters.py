"""AA-CLIP adapters: norm-matched residual blend, ``TextAdapter`` and ``ImageAdapter`` (reference key names).

Key layout (method spec §10): ``TextAdapter`` is a ``ModuleList`` whose items each hold
``fc = Sequential(Linear(no bias), LeakyReLU(0.01))`` -> ``0.fc.0.weight`` ... ``n.fc.0.weight``, the last
item being the replacement text projection. ``ImageAdapter`` is a ``ModuleDict`` with ``layer_adapters``
(same item type), ``seg_proj`` (one head per tap) and ``det_proj``; a head's ``fc`` is a bare ``Linear``
(``fc.weight``), or ``Sequential(Linear, LeakyReLU)`` (``fc.0.weight``) with ``proj_relu`` on.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import nn

__all__ = [
    "LEAKY_SLOPE",
    "ImageAdapter",
    "LinearAdapter",
    "ProjectionHead",
    "TextAdapter",
    "blend_residual",
    "make_linear",
]

#: Negative slope of every adapter's LeakyReLU (torch's default, as in the reference).
LEAKY_SLOPE: Final = 0.01


def blend_residual(x: torch.Tensor, adapted: torch.Tensor, weight: float) -> torch.Tensor:
    """Blend an adapter output into the residual stream with norm matching (method spec §4.1).

    ``adapted`` is rescaled per token to the L2 norm of ``x`` (over the last axis), then
    ``x <- weight * adapted + (1 - weight) * x``. Applied to every token (padding and CLS included).

    Args:
        x: token states ``(..., C)``.
        adapted: the adapter output for ``x``, same shape.
        weight: blend weight lambda in [0, 1] (0.1 in the reference).

    Returns:
        The blended states, same shape as ``x``.
    """
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    return weight * adapted + (1 - weight) * x


def make_linear(
    in_features: int,
    out_features: int,
    *,
    bias: bool = False,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> nn.Linear:
    """Return a ``Linear`` with Xavier-uniform weight (and zero bias), drawn from ``generator``.

    The module is created without torch's default init (so no draw from the global RNG); with
    ``generator=None`` the Xavier draw uses the global RNG, as ``nn.init`` does.
    """
    if device is None:
        device = torch.get_default_device()
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias, device=device)
    if layer.weight.device.type != "meta":
        with torch.no_grad():
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    return layer


class LinearAdapter(nn.Module):
    """One adapter: ``fc = Sequential(Linear(in -> out, no bias), LeakyReLU(0.01))``.

    Args:
        in_features: input width.
        out_features: output width.
        device: parameter device.
        generator: RNG of the Xavier-uniform init.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            make_linear(in_features, out_features, device=device, generator=generator),
            nn.LeakyReLU(LEAKY_SLOPE),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in)`` to ``(..., out)``."""
        return self.fc(x)


class ProjectionHead(nn.Module):
    """A seg/det head: ``fc = Linear(no bias)``, or ``Sequential(Linear, LeakyReLU)`` with ``relu``.

    Args:
        in_features: input width (vision width).
        out_features: output width (joint embedding dim).
        relu: append a LeakyReLU (the reference's head-ReLU flag; off reproduces the published numbers).
        device: parameter device.
        generator: RNG of the Xavier-uniform init.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        relu: bool = False,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        linear = make_linear(in_features, out_features, device=device, generator=generator)
        self.fc: nn.Module = nn.Sequential(linear, nn.LeakyReLU(LEAKY_SLOPE)) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in)`` to ``(..., out)``."""
        return self.fc(x)


class TextAdapter(nn.ModuleList):
    """Text-side adapters plus the replacement text projection (last item).

    Args:
        width: text transformer width.
        embed_dim: joint embedding dim (output of the projection).
        num_layers: adapters after text blocks ``0 .. num_layers - 1``.
        device: parameter device.
        generator: RNG of the Xavier-uniform init (adapters first, then the projection).
    """

    def __init__(
        self,
        width: int,
        embed_dim: int,
        num_layers: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        modules = [LinearAdapter(width, width, device=device, generator=generator) for _ in range(num_layers)]
        modules.append(LinearAdapter(width, embed_dim, device=device, generator=generator))
        super().__init__(modules)

    @property
    def num_layers(self) -> int:
        """Number of residual adapters (excluding the projection)."""
        return len(self) - 1

    @property
    def projection(self) -> LinearAdapter:
        """The replacement text projection (Linear + LeakyReLU), applied to the pooled EOT features."""
        return self[len(self) - 1]


class ImageAdapter(nn.ModuleDict):
    """Image-side adapters (``layer_adapters``), per-tap heads (``seg_proj``) and ``det_proj``.

    Args:
        width: vision transformer width.
        embed_dim: joint embedding dim.
        num_layers: adapters after vision blocks ``0 .. num_layers - 1``.
        num_taps: number of seg heads (one per tap).
        proj_relu: LeakyReLU on the heads (changes the state-dict keys to ``fc.0.weight``).
        device: parameter device.
        generator: RNG of the Xavier-uniform init (layer adapters, seg heads, det head, in that order).
    """

    def __init__(
        self,
        width: int,
        embed_dim: int,
        num_layers: int,
        num_taps: int,
        *,
        proj_relu: bool = False,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        layer_adapters = nn.ModuleList(
            [LinearAdapter(width, width, device=device, generator=generator) for _ in range(num_layers)]
        )
        seg_proj = nn.ModuleList(
            [
                ProjectionHead(width, embed_dim, relu=proj_relu, device=device, generator=generator)
                for _ in range(num_taps)
            ]
        )
        det_proj = ProjectionHead(width, embed_dim, relu=proj_relu, device=device, generator=generator)
        super().__init__({"layer_adapters": layer_adapters, "seg_proj": seg_proj, "det_proj": det_proj})

    @property
    def num_layers(self) -> int:
        """Number of residual layer adapters."""
        return len(self["layer_adapters"])
