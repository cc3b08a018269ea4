"""The layer protocol: how each layer type's tensors are coupled to *units*.

A unit is an output neuron of a Linear or an output channel of a Conv. Resizing a layer touches
every tensor coupled to its units, and each layer type says which tensors those are through one
small, explicit :class:`LayerCoupling`. Users register their own layers with
:func:`register_layer` and their own residual-style blocks with :func:`register_block`; nothing
is traced, so what neuroplast will touch is always visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

TensorDim = tuple[str, int]  # (tensor attribute name, dimension that indexes the units)


class UnsupportedLayerError(TypeError):
    """A layer type neuroplast does not know how to resize, named with the way to fix it."""


@dataclass(frozen=True)
class LayerCoupling:
    """How one layer type's tensors follow the units flowing through it.

    Attributes:
        produces: tensors whose ``dim`` indexes the units this layer *creates* (Linear: weight
            rows and bias).
        consumes: tensors whose ``dim`` indexes the units this layer *reads* (Linear: weight
            columns).
        per_unit: tensors of a layer that passes units through one-to-one but keeps state per
            unit (BatchNorm's affine parameters and running statistics, a gate's parameters).
        produces_attr, consumes_attr, per_unit_attr: the integer attributes that record the
            width (``out_features``, ``in_features``, ``num_features``), kept in step.
        passthrough: units flow through unchanged and the layer holds no per-unit state
            (activations, pooling, dropout).
        flattens: units become blocks of consecutive features (``nn.Flatten`` after a conv).
        positively_homogeneous: ``f(a * x) == a * f(x)`` for ``a >= 0`` (ReLU, pooling), so a
            per-unit scale can be moved across the layer when a model is compacted.
        new_unit_fill: value given to a ``per_unit`` tensor's entries for new units when the
            caller does not give one (BatchNorm weight and running_var start at 1).
        test_scale: for gate-like layers, the per-unit multiplier the layer applies at test time;
            zero marks a dead unit. :func:`neuroplast.compact_model` removes such layers.
        check: returns why a particular instance cannot be resized (grouped conv), or None.
    """

    produces: tuple[TensorDim, ...] = ()
    consumes: tuple[TensorDim, ...] = ()
    per_unit: tuple[TensorDim, ...] = ()
    produces_attr: str | None = None
    consumes_attr: str | None = None
    per_unit_attr: str | None = None
    passthrough: bool = False
    flattens: bool = False
    positively_homogeneous: bool = False
    new_unit_fill: dict[str, float] = field(default_factory=dict)
    test_scale: Callable[[nn.Module], torch.Tensor] | None = None
    check: Callable[[nn.Module], str | None] | None = None


@dataclass(frozen=True)
class BlockCoupling:
    """A container whose forward is not a plain sequence (a residual block).

    ``chains`` lists, for an instance, the sequences of child names through which units flow
    one after the other, e.g. ``[["conv1", "bn1", "relu", "conv2"]]`` for a ResNet basic block
    (activations applied functionally inside ``forward`` need not be listed). Units produced
    inside a chain can be resized; units that leave the block (into its residual sum) cannot.
    """

    chains: Callable[[nn.Module], list[list[str]]]


_LAYERS: dict[type, LayerCoupling] = {}
_BLOCKS: dict[type, BlockCoupling] = {}


def register_layer(layer_type: type, coupling: LayerCoupling) -> None:
    """Teach neuroplast how ``layer_type``'s tensors are coupled to units.

    Example::

        class Scale(nn.Module):            # multiplies each channel by a learned factor
            def __init__(self, n):
                super().__init__()
                self.factor = nn.Parameter(torch.ones(n))
            def forward(self, x):
                return x * self.factor.view(1, -1, 1, 1)

        register_layer(Scale, LayerCoupling(per_unit=(("factor", 0),), new_unit_fill={"factor": 1}))
    """
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise TypeError(f"register_layer expects an nn.Module subclass, got {layer_type!r}")
    _LAYERS[layer_type] = coupling


def register_block(block_type: type, chains: Sequence[Sequence[str]] | Callable) -> None:
    """Declare how units flow through a container that is not an ``nn.Sequential``.

    ``chains`` is either a fixed list of child-name sequences or a callable returning one for an
    instance. Example: ``register_block(BasicBlock, [["conv1", "bn1", "conv2"]])``.
    """
    if not isinstance(block_type, type) or not issubclass(block_type, nn.Module):
        raise TypeError(f"register_block expects an nn.Module subclass, got {block_type!r}")
    if callable(chains):
        _BLOCKS[block_type] = BlockCoupling(chains=chains)
    else:
        fixed = [list(chain) for chain in chains]
        _BLOCKS[block_type] = BlockCoupling(chains=lambda _module: fixed)


def _lookup(registry: dict[type, object], module: nn.Module):
    # Walk the MRO so subclasses of registered types (a custom Linear) are covered too.
    for cls in type(module).__mro__:
        if cls in registry:
            return registry[cls]
    return None


def layer_coupling(module: nn.Module) -> LayerCoupling | None:
    """The registered coupling of ``module``'s type, or None if it is unknown."""
    return _lookup(_LAYERS, module)


def block_coupling(module: nn.Module) -> BlockCoupling | None:
    """The registered block coupling of ``module``'s type, or None."""
    return _lookup(_BLOCKS, module)


def unsupported_layer_message(name: str, module: nn.Module) -> str:
    """The error text for a layer neuroplast cannot see through."""
    kind = type(module).__name__
    return (
        f"layer '{name}' ({kind}) is not supported by neuroplast: it does not know which of "
        f"its tensors follow the units. Register it with neuroplast.register_layer({kind}, "
        "LayerCoupling(...)) (or register_block for a container), or resize a different layer."
    )


def _single_group_conv(module: nn.Module) -> str | None:
    if module.groups != 1:
        return (
            f"grouped convolutions (groups={module.groups}) couple input and output channels; "
            "only groups=1 convolutions can be resized"
        )
    return None


def _batchnorm_fill() -> dict[str, float]:
    return {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


def _register_builtin_layers() -> None:
    linear = LayerCoupling(
        produces=(("weight", 0), ("bias", 0)),
        consumes=(("weight", 1),),
        produces_attr="out_features",
        consumes_attr="in_features",
    )
    register_layer(nn.Linear, linear)
    conv = LayerCoupling(
        produces=(("weight", 0), ("bias", 0)),
        consumes=(("weight", 1),),
        produces_attr="out_channels",
        consumes_attr="in_channels",
        check=_single_group_conv,
    )
    for conv_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_layer(conv_type, conv)
    norm = LayerCoupling(
        per_unit=(("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
        per_unit_attr="num_features",
        new_unit_fill=_batchnorm_fill(),
    )
    for norm_type in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        register_layer(norm_type, norm)

    homogeneous = LayerCoupling(passthrough=True, positively_homogeneous=True)
    for layer_type in (
        nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
        nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
        nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    ):
        register_layer(layer_type, homogeneous)
    # PReLU is only homogeneous with a single shared slope; a per-channel slope is per-unit state.
    register_layer(nn.PReLU, LayerCoupling(passthrough=True, check=_shared_prelu))
    elementwise = LayerCoupling(passthrough=True)
    for layer_type in (
        nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus,
        nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SELU, nn.CELU, nn.LogSigmoid,
        nn.Tanhshrink, nn.Softsign, nn.AlphaDropout,
    ):
        register_layer(layer_type, elementwise)
    register_layer(
        nn.Flatten, LayerCoupling(flattens=True, positively_homogeneous=True, check=_plain_flatten)
    )


def _shared_prelu(module: nn.Module) -> str | None:
    if module.num_parameters != 1:
        return "PReLU with one slope per channel holds per-unit state; use a shared slope"
    return None


def _plain_flatten(module: nn.Module) -> str | None:
    if module.start_dim != 1 or module.end_dim != -1:
        return "only nn.Flatten(start_dim=1, end_dim=-1) keeps each unit's features together"
    return None


_register_builtin_layers()
