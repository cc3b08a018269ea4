"""Optimizer surgery: an optimizer follows its parameters through every resize.

When a resize replaces a parameter by a new tensor of another shape, every optimizer holding it
is updated in the same step: the new parameter takes the old one's place in its param group
(hyper-parameters untouched), every per-parameter state tensor shaped like the parameter
(SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) is
index-selected along the resized dimension and zero-padded for new units, scalar state such as
``step`` is kept, and the old parameter's entry is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

OptimizerArg = torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None


class UnsupportedOptimizerStateError(TypeError):
    """An optimizer keeps state neuroplast cannot map onto a resized parameter."""


def remap_tensor(
    tensor: torch.Tensor, dim: int, kept: torch.Tensor, appended: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the slices ``kept`` of ``tensor`` along ``dim``, then append ``appended``.

    ``kept`` indexes the old tensor (in the new order); ``appended`` holds the new slices and has
    the same shape as ``tensor`` except along ``dim``.
    """
    keeps_all = kept.numel() == tensor.shape[dim] and bool(
        torch.equal(kept, torch.arange(kept.numel(), device=kept.device)))
    # A grow keeps every old slice in place: skip the copy an index_select would make.
    kept_part = tensor if keeps_all else tensor.index_select(dim, kept.to(tensor.device))
    if appended is None or appended.shape[dim] == 0:
        return kept_part.clone() if keeps_all else kept_part  # never alias the old tensor
    return torch.cat([kept_part, appended.to(dtype=tensor.dtype, device=tensor.device)], dim)


def zeros_along(tensor: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """Zeros shaped like ``tensor`` except ``count`` long along ``dim``."""
    shape = list(tensor.shape)
    shape[dim] = count
    return tensor.new_zeros(shape)


def as_optimizer_list(optimizer: OptimizerArg) -> list[torch.optim.Optimizer]:
    """Normalize the optimizer argument of the resize functions to a list."""
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    optimizers = list(optimizer)
    for item in optimizers:
        if not isinstance(item, torch.optim.Optimizer):
            raise TypeError(f"expected torch.optim.Optimizer, got {type(item).__name__}")
    return optimizers


def carry_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer],
    old: nn.Parameter,
    new: nn.Parameter,
    dim: int,
    kept: torch.Tensor,
    added: int,
) -> None:
    """Move ``old``'s place and state in each optimizer to ``new``.

    Args:
        optimizers: optimizers that may hold ``old`` (those that do not are left alone).
        old, new: the parameter before and after the resize.
        dim: the resized dimension.
        kept: indices along ``dim`` of ``old`` that survive, in their new order.
        added: number of new slices appended after the kept ones (their state starts at zero).
    """
    for optimizer in optimizers:
        found = False
        for group in optimizer.param_groups:
            for position, param in enumerate(group["params"]):
                if param is old:
                    group["params"][position] = new
                    found = True
        if not found:
            continue
        state = optimizer.state.pop(old, None)
        if not state:
            continue
        carried = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                if value.shape != old.shape:
                    raise UnsupportedOptimizerStateError(
                        f"{type(optimizer).__name__} keeps state '{key}' of shape "
                        f"{tuple(value.shape)} for a parameter of shape {tuple(old.shape)}; "
                        "neuroplast can only carry state shaped like its parameter across a "
                        "resize (SGD, Adam, AdamW, RMSprop, Adagrad and the like)"
                    )
                carried[key] = remap_tensor(value, dim, kept, zeros_along(value, dim, added))
            else:
                # Scalars such as Adam's `step` keep counting, so bias correction continues.
                carried[key] = value
        optimizer.state[new] = carried
