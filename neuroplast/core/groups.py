"""Unit groups: every tensor coupled to one layer's units, found by walking the model's chains.

A *chain* is a sequence of modules through which units flow one after the other: the children of
an ``nn.Sequential`` (nested Sequentials are flattened into it), or a chain declared by a
registered block. Within a chain, a producer (Linear, Conv) starts a group; the walk then
collects per-unit layers (BatchNorm, gates), passes through activations, pooling and dropout,
notes a Flatten, and ends at the consumer (the next Linear or Conv). Anything else ends the walk
and the layer is reported as not resizable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn
from torch.nn.utils import parametrize

from .layers import (
    UnsupportedLayerError,
    block_coupling,
    layer_coupling,
    unsupported_layer_message,
)

Role = Literal["produces", "consumes", "per_unit"]


class UnsupportedModelError(TypeError):
    """neuroplast cannot see how units flow through the model."""


class NotResizableError(ValueError):
    """The named layer exists but its units cannot be resized; the message says why."""


@dataclass(frozen=True)
class CoupledTensor:
    """One tensor slice that follows a group's units."""

    module_name: str
    module: nn.Module
    tensor_name: str
    dim: int
    role: Role

    @property
    def key(self) -> str:
        """``"<module>.<tensor>"``, the name used for values given to a grow."""
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name


@dataclass
class UnitGroup:
    """The units of one producer layer and every tensor coupled to them."""

    name: str
    producer: nn.Module
    consumer_name: str
    consumer: nn.Module
    tensors: list[CoupledTensor]
    path: list[tuple[str, nn.Module]] = field(default_factory=list)
    flattened: bool = False

    @property
    def width(self) -> int:
        """Current number of units."""
        first = self.tensors[0]
        return getattr(first.module, first.tensor_name).shape[first.dim]

    @property
    def consumer_inputs(self) -> int:
        """Number of consumer input features (columns) fed by this group."""
        for coupled in self.tensors:
            if coupled.role == "consumes":
                return getattr(coupled.module, coupled.tensor_name).shape[coupled.dim]
        raise AssertionError("a unit group always has a consumer")

    @property
    def features_per_unit(self) -> int:
        """Consumer input features owned by one unit (H*W after a Flatten, else 1)."""
        width, inputs = self.width, self.consumer_inputs
        if inputs % width != 0 or (not self.flattened and inputs != width):
            raise UnsupportedModelError(
                f"layer '{self.name}' has {width} units but its consumer "
                f"'{self.consumer_name}' reads {inputs} features; the model's shapes are "
                "inconsistent (did a resize happen outside neuroplast?)"
            )
        return inputs // width

    def per_role(self, role: Role) -> list[CoupledTensor]:
        """The coupled tensors with a given role."""
        return [coupled for coupled in self.tensors if coupled.role == role]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _expand(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    # Nested Sequentials run their children in order, so they belong to the enclosing chain.
    if isinstance(module, nn.Sequential):
        entries = []
        for child_name, child in module.named_children():
            entries.extend(_expand(_join(prefix, child_name), child))
        return entries
    return [(prefix, module)]


def model_chains(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """All chains of ``model`` as lists of ``(qualified name, module)``."""
    chains: list[list[tuple[str, nn.Module]]] = []

    def visit_chain(entries: list[tuple[str, nn.Module]]) -> None:
        chains.append(entries)
        for name, module in entries:
            visit_block(name, module)

    def visit_block(name: str, module: nn.Module) -> None:
        block = block_coupling(module)
        if block is None:
            return
        for chain in block.chains(module):
            entries = []
            for child in chain:
                try:
                    child_module = module.get_submodule(child)
                except AttributeError as error:
                    raise UnsupportedModelError(
                        f"block '{name or type(module).__name__}' ({type(module).__name__}) "
                        f"declares a chain through '{child}', which it does not have"
                    ) from error
                entries.extend(_expand(_join(name, child), child_module))
            visit_chain(entries)

    if isinstance(model, nn.Sequential):
        visit_chain(_expand("", model))
    elif block_coupling(model) is not None:
        visit_block("", model)
    elif layer_coupling(model) is None:
        kind = type(model).__name__
        children = list(model._modules)[:3] or ["layer1", "act", "layer2"]
        raise UnsupportedModelError(
            f"neuroplast cannot see how units flow through {kind} without running it: find its "
            "unit groups from one forward pass with neuroplast.trace_unit_groups(model, "
            "example_input), build it as nn.Sequential, or declare its chains with "
            f"neuroplast.register_block({kind}, [{children!r}, ...]) (children in the order "
            "the units flow through them)"
        )
    return chains


def _reparametrized(name: str, module: nn.Module) -> str | None:
    """Why a module whose tensors are computed from others (weight_norm, spectral_norm) is not
    resizable, or None: resizing its visible weight would leave the hidden originals as they were
    and fail at the next forward pass."""
    kind = type(module).__name__
    if parametrize.is_parametrized(module):
        kind = type(module).__bases__[0].__name__  # torch subclasses it as Parametrized<kind>
        names = list(module.parametrizations.keys())
        return (f"'{name}' ({kind}) has parametrized tensors ({', '.join(names)}), which "
                "neuroplast cannot resize: remove them first with torch.nn.utils.parametrize."
                f"remove_parametrizations(module, '{names[0]}')")
    hooks = [type(hook).__name__ for hook in module._forward_pre_hooks.values()]
    legacy = [hook for hook in hooks if hook in ("WeightNorm", "SpectralNorm")]
    if legacy:
        return (f"'{name}' ({kind}) uses the hook-based {legacy[0]}, which neuroplast cannot "
                "resize: remove it first (torch.nn.utils.remove_weight_norm or "
                "remove_spectral_norm)")
    return None


def _walk_from(
    entries: list[tuple[str, nn.Module]], start: int
) -> UnitGroup | str:
    """Build the group of the producer at ``entries[start]``, or say why there is none."""
    name, producer = entries[start]
    coupling = layer_coupling(producer)
    tensors = [
        CoupledTensor(name, producer, tensor, dim, "produces") for tensor, dim in coupling.produces
    ]
    path: list[tuple[str, nn.Module]] = []
    flattened = False
    for other_name, module in entries[start + 1 :]:
        kind = type(module).__name__
        if block_coupling(module) is not None:
            return (
                f"its units flow into block '{other_name}' ({kind}), where they join a "
                "residual sum; only layers inside a block can be resized"
            )
        other = layer_coupling(module)
        if other is None:
            return unsupported_layer_message(other_name, module)
        reason = other.check(module) if other.check else None
        if reason:
            return f"'{other_name}' ({kind}) is in the way: {reason}"
        reason = _reparametrized(other_name, module)
        if reason:
            return reason
        if other.consumes:
            tensors += [
                CoupledTensor(other_name, module, tensor, dim, "consumes")
                for tensor, dim in other.consumes
            ]
            return UnitGroup(name, producer, other_name, module, tensors, path, flattened)
        if other.per_unit:
            if flattened:
                return f"per-unit layer '{other_name}' ({kind}) after a Flatten is not supported"
            tensors += [
                CoupledTensor(other_name, module, tensor, dim, "per_unit")
                for tensor, dim in other.per_unit
            ]
        elif other.flattens:
            flattened = True
        elif not other.passthrough:
            return f"'{other_name}' ({kind}) neither passes, keeps nor consumes units"
        path.append((other_name, module))
    return (
        "its outputs leave the chain it sits in (they are the model's outputs or a block's "
        "output), so no layer consumes them that could be resized with it"
    )


def _discover(model: nn.Module) -> tuple[dict[str, UnitGroup], dict[str, str]]:
    groups: dict[str, UnitGroup] = {}
    blocked: dict[str, str] = {}
    for entries in model_chains(model):
        for index, (name, module) in enumerate(entries):
            coupling = layer_coupling(module)
            if coupling is None or not coupling.produces:
                continue
            reason = coupling.check(module) if coupling.check else None
            result = reason or _reparametrized(name, module) or _walk_from(entries, index)
            if isinstance(result, UnitGroup):
                groups[name] = result
            else:
                blocked[name] = result
    return groups, blocked


def find_unit_groups(model: nn.Module) -> dict[str, UnitGroup]:
    """Every resizable layer of ``model``, keyed by its qualified name, input to output.

    Example::

        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        find_unit_groups(model)["0"].width   # 8
    """
    return _discover(model)[0]


def get_unit_group(model: nn.Module, layer: str) -> UnitGroup:
    """The unit group of ``layer``, or a clear error saying why it cannot be resized."""
    groups, blocked = _discover(model)
    if layer in groups:
        return groups[layer]
    if layer in blocked:
        raise NotResizableError(f"layer '{layer}' cannot be resized: {blocked[layer]}")
    names = dict(model.named_modules())
    choices = ", ".join(groups) or "none"
    if layer not in names:
        raise NotResizableError(f"model has no layer named '{layer}'; resizable layers: {choices}")
    module = names[layer]
    if layer_coupling(module) is None and block_coupling(module) is None:
        raise UnsupportedLayerError(unsupported_layer_message(layer, module))
    raise NotResizableError(
        f"layer '{layer}' ({type(module).__name__}) does not produce resizable units in any "
        f"chain neuroplast can see; resizable layers: {choices}"
    )


def select_unit_groups(model: nn.Module, spec: str, option: str) -> dict[str, UnitGroup]:
    """The unit groups a policy's layer option names: ``all``, ``first`` or ``fc1,fc2``.

    ``option`` is the flag the user typed (``--magnitude-layers``), named in the error for a
    layer that is not resizable, so that a wrong name fails before training starts.
    """
    groups = find_unit_groups(model)
    spec = spec.strip()
    if spec == "all":
        return groups
    if spec == "first":
        return dict(list(groups.items())[:1])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in groups]
    if unknown:
        raise NotResizableError(f"{option} names {unknown}, which are not resizable layers of "
                                f"this model; its resizable layers are {list(groups)}")
    return {name: groups[name] for name in names}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Current width of every resizable layer, input to output."""
    return {name: group.width for name, group in find_unit_groups(model).items()}
