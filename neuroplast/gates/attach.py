"""Put gate modules into an existing model where neuroplast's chains will see them.

:func:`insert_module` puts a module right before or after a named layer: inside an
``nn.Sequential`` it becomes a new child at that position; inside a registered block (whose
``forward`` calls its children by name) the layer is replaced by ``nn.Sequential(layer, gate)``,
which the block's chain walks through as if both were listed.

:func:`attach_npn_gates` places NPN gates where the NPN reference puts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.groups import find_unit_groups, model_chains
from ..core.layers import layer_coupling
from .npn import NPNGate


def insert_module(
    model: nn.Module, anchor: str, module: nn.Module, name: str, *, after: bool = True
) -> str:
    """Insert ``module`` right after (or before) the submodule ``anchor``; return its name.

    Example::

        model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), out=nn.Linear(8, 2)))
        insert_module(model, "act", UnitMask(8), "mask")   # -> "mask", between act and out
    """
    parent_name, _, child = anchor.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:
        raise KeyError(f"model has no layer named '{anchor}'")
    prefix = f"{parent_name}." if parent_name else ""
    if isinstance(parent, nn.Sequential):
        if name in parent._modules or "." in name:
            raise ValueError(f"cannot insert '{name}' next to '{anchor}': name taken or dotted")
        children = list(parent._modules.items())
        parent._modules.clear()
        for key, value in children:
            if key == child and not after:
                parent._modules[name] = module
            parent._modules[key] = value
            if key == child and after:
                parent._modules[name] = module
        return prefix + name
    # A block calls its children by attribute name: wrap the anchor so the call runs both.
    original = parent._modules[child]
    pair = (original, module) if after else (module, original)
    setattr(parent, child, nn.Sequential(*pair))
    return f"{anchor}.{1 if after else 0}"


@dataclass
class GatedLayer:
    """One layer whose units carry NPN gates, and what its L0 and L2 terms are made of.

    Attributes:
        name: the gated layer (a conv: its output channels; a Linear: its input features).
        gate_name: qualified name of the :class:`NPNGate` module.
        gate: the gate module (it outlives every resize; its tensors are replaced in place).
        weights_per_gate: weights one gate switches, at the layer's full size (a conv:
            ``in_channels * kernel``; a Linear: ``out_features``); the reference's L0 term
            counts these.
        params_per_gate: parameters one gate's unit holds in the compact network, at the
            model's full size: a hidden unit's row of weights and its bias, its per-unit
            layers (BatchNorm) and the next layer's columns it feeds; an input feature, the
            first layer's column; a unit that cannot be removed (a ResNet stem channel), 0.
            What closing the gate removes from an export.
        governed: the module whose ``weight`` the gates switch, and ``dim`` the dimension of
            that weight indexed by the gates (0: conv filters; 1: Linear input columns).
        source: for a Linear's input gates, the Linear whose units they switch (None: the
            network's input features, or a conv's feature positions).
    """

    name: str
    gate_name: str
    gate: NPNGate
    weights_per_gate: int
    governed: nn.Module
    dim: int
    source: str | None = None  # the Linear whose units a Linear's input gates switch
    params_per_gate: int | None = None  # None: not measured (counted as weights_per_gate)

    @property
    def counts(self) -> str:
        """What the gates switch: a conv's output channels, the units of the hidden Linear
        before a gated Linear, or the input features it reads (the network's own)."""
        if self.dim == 0:
            return "output channels"
        return "input features" if self.source is None else f"units of {self.source}"

    @property
    def size(self) -> int:
        """Number of gates (units, or unit positions for a per-position gate)."""
        return self.gate.phi.numel()

    def expected_l0(self) -> torch.Tensor:
        """Expected number of active weights, ``weights_per_gate * sum(pi)`` (differentiable)."""
        return self.weights_per_gate * self.gate.probability().sum()

    def gated_l2(self) -> torch.Tensor:
        """``sum_j pi_j * ||w_j||^2 / 2`` with ``pi`` detached (NPN's expected L2), plus the
        consumer's bias for input gates."""
        weight = self.governed.weight
        dims = [d for d in range(weight.dim()) if d != self.dim]
        norms = weight.pow(2).sum(dims)
        bias = getattr(self.governed, "bias", None)
        extra = weight.new_zeros(())
        if bias is not None:
            if self.dim == 0:
                norms = norms + bias.pow(2)
            else:
                extra = bias.pow(2).sum()
        pi = self.gate.probability().detach().reshape(-1)
        return 0.5 * ((pi * norms).sum() + extra)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1


def _channels_before(entries, index: int) -> int | None:
    """Channels of the feature map flowing into ``entries[index]`` (a Flatten), if known."""
    for _, module in reversed(entries[:index]):
        if _is_conv(module):
            return module.out_channels
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return module.num_features
        coupling = layer_coupling(module)
        if coupling is None or not coupling.passthrough:
            return None
    return None


def _gate_anchor(entries, index: int) -> str:
    """Where a conv's channel gate goes in a plain chain: after its BatchNorm, then past the
    ReLU and pooling layers that follow.

    A non-negative per-channel factor commutes with those layers exactly (``relu(z x) =
    z relu(x)``, ``maxpool(z x) = z maxpool(x)`` for ``z >= 0``), so the network computes the
    same function; placed later, the gate leaves more of the network before it, which ARM's two
    passes share (:func:`~neuroplast.gates.npn.arm_loss`).
    """
    position = index
    follower = entries[position + 1] if position + 1 < len(entries) else None
    if follower is not None and isinstance(follower[1], nn.modules.batchnorm._BatchNorm):
        position += 1
    while position + 1 < len(entries):
        coupling = layer_coupling(entries[position + 1][1])
        if coupling is None or not (coupling.passthrough and coupling.positively_homogeneous):
            break
        position += 1
    return entries[position][0]


def _reads_raw_input(entries, index: int) -> bool:
    """Whether ``entries[index]`` is the chain's first layer that mixes features (a Linear
    with only reshapes or elementwise layers before it reads the network's input itself)."""
    return not any(isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
                   for _, module in entries[:index])


def _hidden_linear_before(entries, index: int) -> str | None:
    """The Linear whose outputs reach ``entries[index]``, if the nearest layer that mixes
    features before it is one (its units are what ``entries[index]``'s input gates switch)."""
    for name, module in reversed(entries[:index]):
        if isinstance(module, nn.Linear):
            return name
        if isinstance(module, nn.modules.conv._ConvNd):
            return None
    return None


def _plan(model: nn.Module, input_gates: bool = True) -> list[tuple]:
    """(anchor name, after?, gated module, width, positions[, source]) for every gate."""
    chains = model_chains(model)
    plans = []
    if isinstance(model, nn.Sequential):
        entries = chains[0]
        for index, (name, module) in enumerate(entries):
            if not input_gates and isinstance(module, nn.Linear) and _reads_raw_input(
                    entries, index):
                continue  # its gates would select the raw input features
            if _is_conv(module):
                plans.append((_gate_anchor(entries, index), True, module, module.out_channels,
                              None))
            elif isinstance(module, nn.Linear):
                previous = entries[index - 1] if index > 0 else None
                flatten = previous is not None and isinstance(previous[1], nn.Flatten)
                channels = _channels_before(entries, index - 1) if flatten else None
                if channels and module.in_features % channels == 0 and (
                        module.in_features > channels):
                    # Gate each (channel, position) feature before the Flatten, so the gates
                    # still belong to their channel when the conv is resized.
                    positions = module.in_features // channels
                    plans.append((previous[0], False, module, channels, positions))
                else:
                    plans.append((name, False, module, module.in_features, None,
                                  _hidden_linear_before(entries, index)))
        block_chains = chains[1:]
    else:
        block_chains = chains
    groups = find_unit_groups(model)
    for entries in block_chains:
        for index, (name, module) in enumerate(entries):
            if _is_conv(module) and name in groups:
                follower = entries[index + 1] if index + 1 < len(entries) else None
                after_bn = follower is not None and isinstance(
                    follower[1], nn.modules.batchnorm._BatchNorm)
                anchor = follower[0] if after_bn else name
                plans.append((anchor, True, module, module.out_channels, None))
    return plans


def attach_npn_gates(
    model: nn.Module, *, k: float = math.inf, gate_type: type[NPNGate] = NPNGate,
    input_gates: bool = True,
) -> list[GatedLayer]:
    """Insert NPN gates where the NPN reference puts them; return the gated layers in order.

    * every convolution of the top-level chain (a stem included) and every resizable
      convolution inside a registered block (a ResNet block's first conv): one gate per
      output channel, right after the conv or after its BatchNorm (in the top-level chain,
      past the ReLU and pooling that follow: the same function, see ``_gate_anchor``);
    * every Linear of the top-level chain: one gate per *input* feature, right before it (so
      an MLP's first layer selects raw input features); after a Flatten that follows a conv,
      one gate per (channel, position), placed before the Flatten.

    ``input_gates=False`` leaves out the gates of a first Linear that reads the network's
    input (an MLP's raw input features), so only hidden units are gated.

    ``gate_type`` puts another kind of gate on the same units (the ``l0hc`` baseline's
    :class:`~neuroplast.gates.hard_concrete.HardConcreteGate`), so methods compare like for like.

    Example::

        model = build_model("lenet5", (1, 28, 28), 10)
        [layer.name for layer in attach_npn_gates(model)]   # ['conv1', 'conv2', 'fc1', 'out']
    """
    plans = _plan(model, input_gates)
    if not plans:
        hint = "" if input_gates else (
            " (a single Linear has only input features to gate: --npn-input-gates)")
        raise ValueError(
            f"found no Linear or Conv layer to gate in {type(model).__name__}: NPN gates go on "
            f"the layers of an nn.Sequential (or the resizable convs of registered blocks){hint}"
        )
    inserted: list[tuple[nn.Module, NPNGate, int, str | None]] = []
    for anchor, after, gated, width, positions, *source in plans:
        gate = NPNGate(width, positions, k=k) if gate_type is NPNGate else gate_type(
            width, positions)
        label = next(n for n, m in model.named_modules() if m is gated).rpartition(".")[2]
        insert_module(model, anchor, gate, f"{label}_gate", after=after)
        inserted.append((gated, gate, 0 if after else 1, source[0] if source else None))
    names = {id(module): name for name, module in model.named_modules()}
    unit_params = _parameters_per_unit(model, {id(gate) for _, gate, _, _ in inserted})
    layers = []
    for gated, gate, dim, source in inserted:
        weight = gated.weight
        per_gate = math.prod(weight.shape) // weight.shape[dim]
        # A hidden unit (a conv's channel, the Linear before an input gate) holds parameters
        # on both sides of the gate; a network input feature only the first layer's column.
        owner = names[id(gated)] if dim == 0 else source
        # A unit in no unit group (a ResNet stem channel feeds the residual stream) cannot be
        # removed: closing its gate saves no parameter.
        params = unit_params.get(owner, 0) if owner else per_gate
        layers.append(GatedLayer(names[id(gated)], names[id(gate)], gate, per_gate, gated, dim,
                                 source, params))
    return layers


def _parameters_per_unit(model: nn.Module, gates: set[int]) -> dict[str, int]:
    """Parameters one unit of each unit group holds (every coupled parameter tensor's share:
    the producer's row or filter and bias, BatchNorm's scale and shift, the consumer's
    columns), gates left out: the compact network has none."""
    counts = {}
    for name, group in find_unit_groups(model).items():
        total = 0
        for coupled in group.tensors:
            tensor = getattr(coupled.module, coupled.tensor_name, None)
            if id(coupled.module) not in gates and isinstance(tensor, nn.Parameter):
                total += tensor.numel()
        counts[name] = total // group.width
    return counts
