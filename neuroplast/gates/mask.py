"""A fixed 0/1 (or scale) mask per unit: the simplest gate, for mask-mode pruning."""

from __future__ import annotations

import torch
from torch import nn

from ..core.layers import LayerCoupling, register_layer


def scale_units(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply unit ``j`` (dim 1 of ``x``, any number of trailing spatial dims) by ``scale[j]``."""
    return x * scale.view(1, -1, *([1] * (x.dim() - 2)))


class UnitMask(nn.Module):
    """Multiplies each unit by a stored value (1 keeps it, 0 silences it).

    Put it right after a layer (or its BatchNorm); the mask follows the units through every
    resize, and :func:`neuroplast.compact_model` removes masked units and folds the rest.
    """

    def __init__(self, width: int):
        super().__init__()
        if width < 1:
            raise ValueError(f"UnitMask width must be >= 1, got {width}")
        self.register_buffer("mask", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_units(x, self.mask)

    def extra_repr(self) -> str:
        return f"{self.mask.numel()}, live={int((self.mask != 0).sum())}"


register_layer(
    UnitMask,
    LayerCoupling(
        per_unit=(("mask", 0),),
        new_unit_fill={"mask": 1.0},
        positively_homogeneous=True,
        test_scale=lambda module: module.mask,
    ),
)
