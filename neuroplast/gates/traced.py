"""Gates on the unit groups of any model: NPN or hard-concrete gates on traced groups.

A gate on a traced group (:func:`~neuroplast.core.trace.trace_unit_groups`) multiplies what the
group's consumer reads from each unit: a forward pre-hook on the consumer scales its input
features, each by its unit's gate (a head's gate scales its ``head_dim`` columns of the output
projection's input; a channel's gate its block of features after a flatten). The gate is a
submodule of the consumer (``<consumer>.unit_gate``), its ``phi`` a per-unit tensor of the
group, so it follows every prune and grow of the group. :func:`compact_traced` folds the
test-time gates into the consumer's weights and removes the closed units physically: the model
stays the user's own class, smaller, with no hook and no gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..core.trace import TracedGroup, TracedTensor, UnitGraph, copy_graph
from .npn import NPNGate

GATE_NAME = "unit_gate"


class _GateHook:
    """Scales the consumer's input features by their units' gates (a plain object, so a deep
    copy of the model copies it along with the gate it points to). ``units`` gives, for each
    feature the consumer reads, its unit, or -1 for features of other groups (left alone)."""

    def __init__(self, gate: NPNGate, dim: int, units: torch.Tensor) -> None:
        self.gate, self.dim, self.units = gate, dim, units

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        width = self.gate.phi.shape[0]
        z = self.gate(x.new_ones(x.shape[0], width))  # the gate's draw, its test value in eval
        z = torch.cat([z, z.new_ones(z.shape[0], 1)], 1)  # the last column: "not gated"
        index = torch.where(self.units >= 0, self.units, width).to(z.device)
        scale = z.index_select(1, index)  # (batch or 1, features)
        lead, features, rest = scale.shape[0], scale.shape[1], [1] * (x.dim() - 2)
        if self.dim == 1:  # a conv reads channels at dim 1
            scale = scale.reshape(lead, features, *rest)
        else:  # a Linear reads its features last
            scale = scale.reshape(lead, *rest, features)
        return (x * scale.to(x.dtype), *args[1:])


def _read_dim(module: nn.Module) -> int:
    """The dimension of a consumer's input that holds the features it reads."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def _consumer(group: TracedGroup) -> tuple[str, TracedTensor]:
    consumers = [t for t in group.tensors if t.role == "consumes"]
    modules = {t.name.rpartition(".")[0] for t in consumers}
    if len(modules) != 1:
        raise ValueError(
            f"group '{group.name}' is read by {len(modules)} layers "
            f"({', '.join(sorted(modules)) or 'none'}); gates go on groups read by one layer "
            "(a layer's units, attention heads), not on residual streams")
    module_name, consumed = modules.pop(), consumers[0]
    # The gate scales what the reader takes in: right only for a layer that multiplies its
    # input by the consumed weight (a module using its parameters inside its own forward
    # would have its input scaled instead of the units).
    module = group.graph.model.get_submodule(module_name)
    readable = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or (
        type(module).__name__ == "Conv1D")
    if not readable or not consumed.name.endswith(".weight"):
        raise ValueError(f"group '{group.name}' is read by {type(module).__name__} "
                         f"'{module_name}', not by a Linear or convolution: no gate for it")
    return module_name, consumed


def attach_traced_gates(
    graph: UnitGraph, groups: Iterable[str] | None = None, *, k: float = math.inf,
    gate_type: type[NPNGate] = NPNGate,
) -> dict[str, NPNGate]:
    """Put a gate on every unit of ``groups`` (default: every group of kind ``units`` or
    ``heads`` read by one layer); return the gates by group name.

    Example::

        graph = trace_unit_groups(model, example)
        gates = attach_traced_gates(graph, k=7.0)      # NPN gates on FFN units and heads
        # ... train with neuroplast.gates.arm_loss(model, list(gates.values()), x, y) ...
        plain = compact_traced(graph)                  # closed units removed
    """
    if groups is None:
        names = []
        for name, group in graph.groups.items():
            if group.kind == "stream":
                continue
            try:
                _consumer(group)
            except ValueError:
                continue
            names.append(name)
    else:
        names = list(groups)
    gates: dict[str, NPNGate] = {}
    for name in names:
        group = graph.group(name)
        if any(_is_gate_tensor(t) for t in group.tensors):
            raise ValueError(f"group '{name}' already has gates")
        module_name, consumed = _consumer(group)
        consumer = graph.model.get_submodule(module_name)
        width = group.width
        gate = NPNGate(width, k=k) if gate_type is NPNGate else gate_type(width)
        gate.to(consumed_tensor(graph, consumed).device).train(consumer.training)
        attr, count = GATE_NAME, 1
        while attr in consumer._modules:  # a layer reading several groups: a gate for each
            attr, count = f"{GATE_NAME}_{count}", count + 1
        consumer.add_module(attr, gate)
        units, _, _ = graph.atoms.positions(consumed.atom, group.atom, width)
        hook = _GateHook(gate, _read_dim(consumer), units)
        consumer.register_forward_pre_hook(hook)
        for tensor_name in ("phi", "unit_id"):
            group.tensors.append(TracedTensor(f"{module_name}.{attr}.{tensor_name}", 0,
                                              group.atom, "per_unit"))
        graph.on_resize.append(_refresh(hook, consumed, group))
        gates[name] = gate
    return gates


def consumed_tensor(graph: UnitGraph, tensor: TracedTensor) -> torch.Tensor:
    module_name, _, attr = tensor.name.rpartition(".")
    return getattr(graph.model.get_submodule(module_name), attr)


def _refresh(hook: _GateHook, consumed: TracedTensor, group: TracedGroup):
    # Any resize may move the features the reader takes (another group read by it, or a
    # dimension its units are part of): the layout is recomputed after each.
    def refresh(graph: UnitGraph, resized: TracedGroup) -> None:
        hook.units, _, _ = graph.atoms.positions(consumed.atom, group.atom, group.width)
    return refresh


def _is_gate_tensor(tensor: TracedTensor) -> bool:
    parts = tensor.name.split(".")
    return len(parts) >= 2 and parts[-2].startswith(GATE_NAME)


def compact_traced(graph: UnitGraph) -> nn.Module:
    """A copy of the gated model with each gate's test value folded into its consumer's
    weights, closed units removed physically, and no gate or hook left (eval mode).

    The result is the model's own class with smaller layers; it computes what the gated model
    computes in eval mode.
    """
    trial = copy_graph(graph)
    model = trial.model.eval()
    alive: dict[str, torch.Tensor] = {}
    for name, group in trial.groups.items():  # fold every gate first, at the current layout
        gate_tensors = [t for t in group.tensors if _is_gate_tensor(t)]
        if not gate_tensors:
            continue
        module_name, consumed = _consumer(group)
        consumer = model.get_submodule(module_name)
        attr = gate_tensors[0].name.split(".")[-2]
        gate = consumer._modules[attr]
        scale = gate.test_gate().detach()
        units, _, _ = trial.atoms.positions(consumed.atom, group.atom, group.width)
        factor = torch.where(units >= 0, torch.cat([scale, scale.new_ones(1)])[units], 1.0)
        weight = consumed_tensor(trial, consumed)
        shape = [1] * weight.dim()
        shape[consumed.dim] = -1
        with torch.no_grad():
            weight.mul_(factor.to(weight).reshape(shape))
        for key, hook in list(consumer._forward_pre_hooks.items()):
            if isinstance(hook, _GateHook) and hook.gate is gate:
                del consumer._forward_pre_hooks[key]
        del consumer._modules[attr]
        group.tensors = [t for t in group.tensors if t not in gate_tensors]
        kept = torch.nonzero(scale > 0).reshape(-1)
        alive[name] = kept if kept.numel() else torch.tensor([0])  # one unit, zero columns
    for name, kept in alive.items():  # then remove the closed units
        if kept.numel() < trial.groups[name].width:
            trial.prune(name, kept)
    return model
