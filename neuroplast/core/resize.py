"""Grow and prune the units of a layer, physically, from any training loop.

Both operations are one generic step over a :class:`~neuroplast.core.groups.UnitGroup`: keep some
of the old units (in order), append new ones, and do it to every coupled tensor, its gradient
and its optimizer state at once. Parameters are replaced by new ``nn.Parameter`` objects of the
new shape, never reshaped in place, so no stale view survives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .groups import CoupledTensor, UnitGroup, get_unit_group
from .layers import layer_coupling
from .optim import (
    OptimizerArg,
    as_optimizer_list,
    carry_optimizer_state,
    check_optimizer_state,
    remap_tensor,
    zeros_along,
)


def _replace_tensor(
    coupled: CoupledTensor,
    kept: torch.Tensor,
    appended: torch.Tensor | None,
    optimizers: list[torch.optim.Optimizer],
) -> None:
    module, name, dim = coupled.module, coupled.tensor_name, coupled.dim
    old = getattr(module, name)
    added = 0 if appended is None else appended.shape[dim]
    with torch.no_grad():
        data = remap_tensor(old.detach(), dim, kept, appended)
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(data, requires_grad=old.requires_grad)
        if old.grad is not None:
            # A gradient held across the resize stays aligned with its units; new units get 0.
            new.grad = remap_tensor(old.grad, dim, kept, zeros_along(old.grad, dim, added))
        setattr(module, name, new)
        carry_optimizer_state(optimizers, old, new, dim, kept, added)
    else:
        module._buffers[name] = data


def _update_width_attributes(group: UnitGroup, width: int, block: int) -> None:
    for module in {id(c.module): c.module for c in group.tensors}.values():
        coupling = layer_coupling(module)
        if module is group.producer and coupling.produces_attr:
            setattr(module, coupling.produces_attr, width)
        elif module is group.consumer and coupling.consumes_attr:
            setattr(module, coupling.consumes_attr, width * block)
        elif coupling.per_unit_attr:
            setattr(module, coupling.per_unit_attr, width)


def expand_unit_indices(units: torch.Tensor, block: int) -> torch.Tensor:
    """Unit indices -> feature indices when each unit owns ``block`` consecutive features."""
    if block == 1:
        return units
    return (units[:, None] * block + torch.arange(block, device=units.device)).reshape(-1)


def _rebuild_group(
    group: UnitGroup,
    kept: torch.Tensor,
    new_values: Mapping[str, torch.Tensor],
    added: int,
    optimizer: OptimizerArg,
) -> UnitGroup:
    optimizers = as_optimizer_list(optimizer)
    block = group.features_per_unit  # read before the tensors change
    present = [getattr(c.module, c.tensor_name, None) for c in group.tensors]
    check_optimizer_state(optimizers, [t for t in present if isinstance(t, nn.Parameter)])
    for coupled in group.tensors:
        if getattr(coupled.module, coupled.tensor_name, None) is None:
            continue  # e.g. bias=False, or BatchNorm without running statistics
        index = expand_unit_indices(kept, block) if coupled.role == "consumes" else kept
        appended = new_values.get(coupled.key) if added else None
        _replace_tensor(coupled, index, appended, optimizers)
    _update_width_attributes(group, kept.numel() + added, block)
    return group


def _check_units(group: UnitGroup, units: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    # Unit indices are bookkeeping, kept on the CPU; each tensor gets them on its own device.
    index = torch.as_tensor(units, dtype=torch.long).reshape(-1).cpu()
    width = group.width
    if index.numel() and (index.min() < 0 or index.max() >= width):
        bad = index[(index < 0) | (index >= width)].tolist()
        raise IndexError(
            f"{what} of layer '{group.name}' must be unit indices in 0..{width - 1}; "
            f"got out-of-range {bad[:10]}"
        )
    if index.unique().numel() != index.numel():
        raise ValueError(f"{what} of layer '{group.name}' lists some units more than once")
    return index


def prune_units(
    model: nn.Module,
    layer: str,
    keep: Sequence[int] | torch.Tensor,
    *,
    optimizer: OptimizerArg = None,
) -> UnitGroup:
    """Keep only the units ``keep`` of ``layer`` (in their original order); remove the rest.

    Every coupled tensor is index-selected: the layer's weight rows and bias, a following
    BatchNorm, gates, and the consumer's input columns. The optimizer's state follows.

    Example::

        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.Adam(model.parameters())
        prune_units(model, "0", keep=[0, 2, 5], optimizer=opt)   # hidden width 8 -> 3
    """
    group = get_unit_group(model, layer)
    kept = _check_units(group, keep, "keep").sort().values
    if kept.numel() < 1:
        raise ValueError(
            f"cannot prune layer '{layer}' to 0 units: a layer keeps at least 1 unit "
            "(keep must list at least one unit index)"
        )
    return _rebuild_group(group, kept, {}, 0, optimizer)


def _new_value_shapes(group: UnitGroup, n: int) -> dict[str, tuple[CoupledTensor, list[int]]]:
    """Shape of the slice each coupled tensor gains when ``n`` units are appended."""
    shapes = {}
    block = group.features_per_unit
    for coupled in group.tensors:
        tensor = getattr(coupled.module, coupled.tensor_name, None)
        if tensor is None:
            continue
        shape = list(tensor.shape)
        shape[coupled.dim] = n * (block if coupled.role == "consumes" else 1)
        shapes[coupled.key] = (coupled, shape)
    return shapes


def _default_new_values(
    group: UnitGroup, n: int, generator: torch.Generator | None, given: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """PyTorch's default init for the fan-in, zero fan-out, neutral per-unit state.

    Keys in ``given`` are skipped, so values the caller supplies draw no random numbers.
    """
    values: dict[str, torch.Tensor] = {}
    for key, (coupled, shape) in _new_value_shapes(group, n).items():
        if given and key in given:
            values[key] = torch.empty(shape)  # placeholder: replaced by the given value
            continue
        dtype = getattr(coupled.module, coupled.tensor_name).dtype
        if coupled.role == "produces":
            weight = getattr(group.producer, "weight", None)
            fan_in = math.prod(weight.shape[1:]) if weight is not None else 1
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            values[key] = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
        elif coupled.role == "per_unit":
            fill = layer_coupling(coupled.module).new_unit_fill.get(coupled.tensor_name, 0.0)
            values[key] = torch.full(shape, fill, dtype=dtype)
        else:
            values[key] = torch.zeros(shape, dtype=dtype)
    return values


def grow_units(
    model: nn.Module,
    layer: str,
    n: int,
    *,
    fan_in: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    fan_out: torch.Tensor | None = None,
    values: Mapping[str, torch.Tensor] | None = None,
    optimizer: OptimizerArg = None,
    generator: torch.Generator | None = None,
) -> UnitGroup:
    """Append ``n`` new units to ``layer``.

    Args:
        fan_in: the new units' incoming weights, shaped like the layer's weight with ``n`` rows
            (default: PyTorch's default uniform init).
        bias: the new units' biases, shape ``(n,)`` (default: PyTorch's default init).
        fan_out: the consumer's new input columns, shaped like its weight with ``n`` (times the
            features per unit after a Flatten) along dim 1. Default zeros, so the network's
            function is unchanged by the grow.
        values: values for any other coupled tensor, keyed ``"<module name>.<tensor name>"``
            (e.g. ``{"1.weight": ...}`` for a BatchNorm at index 1); default neutral values
            (BatchNorm weight 1, bias 0, running mean 0, running variance 1; others 0).
        optimizer: optimizer(s) whose state follows; new units' state starts as a fresh
            parameter's (zero moments for SGD and Adam).
        generator: random source for the default fan-in.

    Example::

        grow_units(model, "0", 4, optimizer=opt)   # 4 fresh units that do not change outputs yet
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"grow_units needs n >= 1 new units for layer '{layer}', got {n!r}")
    group = get_unit_group(model, layer)
    given = dict(values or {})
    produces = group.per_role("produces")
    if fan_in is not None:
        given[produces[0].key] = fan_in
    if bias is not None:
        if len(produces) < 2 or getattr(group.producer, produces[1].tensor_name) is None:
            raise ValueError(f"layer '{layer}' has no bias to give new units")
        given[produces[1].key] = bias
    if fan_out is not None:
        given[group.per_role("consumes")[0].key] = fan_out
    new_values = _default_new_values(group, n, generator, given)
    for key, value in given.items():
        if key not in new_values:
            raise KeyError(
                f"grow of '{layer}' got values for '{key}', which is not coupled to its units; "
                f"coupled tensors: {', '.join(new_values)}"
            )
        expected = new_values[key].shape
        value = torch.as_tensor(value)
        if value.shape != expected:
            raise ValueError(
                f"values for '{key}' when growing '{layer}' by {n} must have shape "
                f"{tuple(expected)}, got {tuple(value.shape)}"
            )
        new_values[key] = value.detach()
    kept = torch.arange(group.width)
    return _rebuild_group(group, kept, new_values, n, optimizer)


def split_units(
    model: nn.Module,
    layer: str,
    units: Sequence[int] | torch.Tensor,
    *,
    noise_std: float = 0.0,
    optimizer: OptimizerArg = None,
    generator: torch.Generator | None = None,
) -> UnitGroup:
    """Divide each of ``units`` into two: a copy is appended and both halves share the fan-out.

    The copy gets the parent's fan-in (plus Gaussian noise of ``noise_std`` on the weights),
    bias and per-unit state (BatchNorm statistics, gates); parent and copy each keep half of the
    parent's outgoing weights, so with ``noise_std=0`` the network computes the same function.
    This is Net2Net widening and MetaNet's division. The copies' optimizer state starts as a fresh
    parameter's, not as the parent's.
    """
    group = get_unit_group(model, layer)
    parents = _check_units(group, units, "units to split")
    if parents.numel() < 1:
        raise ValueError(f"split_units needs at least one unit of layer '{layer}' to split")
    block = group.features_per_unit
    columns = expand_unit_indices(parents, block)
    values = {}
    for coupled in group.tensors:
        tensor = getattr(coupled.module, coupled.tensor_name, None)
        if tensor is None:
            continue
        index = columns if coupled.role == "consumes" else parents
        copy = tensor.detach().index_select(coupled.dim, index.to(tensor.device)).clone()
        if coupled.role == "consumes":
            copy = copy * 0.5
        elif coupled.role == "produces" and coupled.tensor_name == "weight" and noise_std > 0:
            # Drawn on the CPU generator, so a seed gives the same copies on every device.
            noise = torch.randn(copy.shape, generator=generator, dtype=copy.dtype)
            copy = copy + noise_std * noise.to(copy.device)
        values[coupled.key] = copy
    _rebuild_group(group, torch.arange(group.width), values, parents.numel(), optimizer)
    with torch.no_grad():
        for coupled in group.per_role("consumes"):
            weight = getattr(coupled.module, coupled.tensor_name)
            where = columns.to(weight.device)
            weight.index_copy_(coupled.dim, where, weight.index_select(coupled.dim, where) * 0.5)
    return group


def set_layer_widths(model: nn.Module, widths: Mapping[str, int]) -> None:
    """Resize layers to the given widths: prune to the first units or grow zero-valued units.

    Used to rebuild a model of saved shapes before loading its weights; it draws no random
    numbers, so loading a checkpoint leaves every random generator untouched.
    """
    for layer, width in widths.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width of layer '{layer}' must be an integer >= 1, got {width!r}")
        group = get_unit_group(model, layer)
        current = group.width
        if width < current:
            prune_units(model, layer, list(range(width)))
        elif width > current:
            zeros = {
                key: torch.zeros(shape) for key, (_, shape) in
                _new_value_shapes(group, width - current).items()
            }
            _rebuild_group(group, torch.arange(current), zeros, width - current, None)
