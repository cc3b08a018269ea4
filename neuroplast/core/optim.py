"""Optimizer surgery: an optimizer follows its parameters through every resize.

When a resize replaces a parameter by a new tensor of another shape, every optimizer holding it
is updated in the same step: the new parameter takes the old one's place in its param group
(hyper-parameters untouched), every per-parameter state tensor shaped like the parameter
(SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) is
index-selected along the resized dimension and padded for new units (with zeros, or with what
the optimizer itself starts a parameter at: Adagrad's ``initial_accumulator_value``, Rprop's
``lr`` as step size), scalar state such as ``step`` is kept, and the old parameter's entry is
dropped.

A consequence for Adam and AdamW: ``step`` (and so the bias correction) is one count per
tensor, so new units, whose moments start at zero, take steps of several ``lr`` for their
first few hundred steps. That is a choice of policy, not of mechanism: MetaNet's
``warm_second_moments`` gives newborns their layer's mean second moment instead.
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


def _new_unit_fill(optimizer: torch.optim.Optimizer, group: dict, key: str) -> float:
    """The value a state tensor ``key`` holds for a parameter the optimizer has never seen."""
    if isinstance(optimizer, torch.optim.Adagrad) and key == "sum":
        return float(group.get("initial_accumulator_value", 0.0))
    if isinstance(optimizer, torch.optim.Rprop) and key == "step_size":
        return float(group["lr"])
    return 0.0


def check_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer], params: Iterable[torch.Tensor]
) -> None:
    """Raise before a resize, not half-way through it, if some state cannot follow ``params``."""
    params = list(params)
    for optimizer in optimizers:
        for param in params:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise UnsupportedOptimizerStateError(
                        f"{type(optimizer).__name__} keeps state '{key}' of shape "
                        f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}; "
                        "neuroplast can only carry state shaped like its parameter across a "
                        "resize (SGD, Adam, AdamW, RMSprop, Adagrad, Rprop and the like); "
                        "nothing was changed")


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
        added: number of new slices appended after the kept ones (their state starts as the
            optimizer starts a fresh parameter's: zero, Adagrad's initial accumulator, Rprop's lr).
    """
    source = torch.cat([kept.reshape(-1).cpu(), torch.full((added,), -1, dtype=torch.long)])
    move_optimizer_state(optimizers, old, new, dim, source)


def move_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer],
    old: nn.Parameter,
    new: nn.Parameter,
    dim: int,
    source: torch.Tensor,
) -> None:
    """Like :func:`carry_optimizer_state`, for any layout: entry ``i`` of ``new`` along ``dim``
    comes from entry ``source[i]`` of ``old``, or is new where ``source[i]`` is -1."""
    check_optimizer_state(optimizers, [old])
    source = source.reshape(-1).long()
    new_entries = source < 0
    for optimizer in optimizers:
        owner = None
        for group in optimizer.param_groups:
            for position, param in enumerate(group["params"]):
                if param is old:
                    group["params"][position] = new
                    owner = group
        if owner is None:
            continue
        state = optimizer.state.pop(old, None)
        if not state:
            continue
        carried = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                index = source.to(value.device)
                moved = value.index_select(dim, index.clamp(min=0))
                if bool(new_entries.any()):
                    shape = [1] * value.dim()
                    shape[dim] = -1
                    fill = _new_unit_fill(optimizer, owner, key)
                    mask = new_entries.to(value.device).reshape(shape)
                    moved = torch.where(mask, torch.full_like(moved, fill), moved)
                carried[key] = moved
            else:
                # Scalars such as Adam's `step` keep counting, so bias correction continues.
                carried[key] = value
        optimizer.state[new] = carried
