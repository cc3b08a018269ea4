"""Compact export: a plain PyTorch model with only the live units, TorchScript and ONNX files.

:func:`compact_model` removes every unit a gate switches off at test time, folds the surviving
gates' test-time scales into a neighbouring layer (the producer's rows, a BatchNorm's affine
parameters, or the consumer's columns, whichever is reachable through scale-preserving layers),
and drops the gates. A Linear left reading dead features (zero columns: a network's raw inputs,
or the positions of a flattened feature map, whose gates no unit group can remove) is narrowed
to its live inputs behind an ``index_select``, so those features cost nothing either. What is
left contains only ``torch.nn`` layers and tensor operations (models with custom blocks, or a
feature selection, are traced into a ``torch.fx.GraphModule``), so it runs without neuroplast
installed.
"""

from __future__ import annotations

import copy
import os
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .core.groups import find_unit_groups, model_chains
from .core.layers import layer_coupling
from .core.resize import expand_unit_indices, prune_units


class ExportError(RuntimeError):
    """The model cannot be compacted or exported; the message says why."""


def _test_scale(module: nn.Module) -> torch.Tensor | None:
    coupling = layer_coupling(module)
    if coupling is None or coupling.test_scale is None:
        return None
    return coupling.test_scale(module).detach().reshape(-1)


def _prune_dead_units(model: nn.Module) -> None:
    for name, group in find_unit_groups(model).items():
        scale = torch.ones(group.width)
        last_zero = torch.full((group.width,), -1)  # path position of a unit's last closed gate
        for position, (_, module) in enumerate(group.path):
            gate_scale = _test_scale(module)
            if gate_scale is not None:
                scale = scale * gate_scale.to(scale)
                last_zero[gate_scale.cpu() == 0] = position
        dead = torch.nonzero(scale == 0).reshape(-1)
        if dead.numel() == group.width:
            # A layer keeps one unit: it stays as it is (its zero scale folded in below), so it
            # delivers what it did, and its constant must not also move into the bias.
            dead = dead[1:]
        removable = _fold_dead_units(group, dead, last_zero)
        keep = torch.ones(group.width, dtype=torch.bool)
        keep[removable] = False
        alive = torch.nonzero(keep).reshape(-1)
        if alive.numel() < group.width:
            prune_units(model, name, alive)


def _fold_dead_units(group, dead: torch.Tensor, last_zero: torch.Tensor) -> torch.Tensor:
    """The dead units that can be removed without changing the model's outputs.

    A closed gate makes a unit 0, but what the consumer reads from it is what the layers after
    the gate make of 0: 0 through ReLU or pooling, a constant through a BatchNorm's shift or a
    sigmoid. Such a constant moves into the consumer's bias (exact for a Linear, and for a
    conv without padding, whose every output reads the same number of inputs); a unit whose
    constant cannot move stays, its gate's 0 folded into it, so it still delivers the constant.
    """
    removable = []
    for position in torch.unique(last_zero[dead]).tolist():
        units = dead[last_zero[dead] == position]
        constant = _constant_after(group.path[position + 1 :], group.width)
        if constant is None:
            continue
        values = constant[units]
        shifting = values != 0
        if bool(shifting.any()) and not _add_to_consumer_bias(
                group, units[shifting], values[shifting]):
            continue
        removable.append(units)
    return torch.cat(removable) if removable else torch.zeros(0, dtype=torch.long)


# Layers that map a unit that is one constant everywhere to that same constant (eval mode).
_CONSTANT_MAPS = (
    nn.Identity, nn.Flatten, nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def _constant_after(modules, width: int) -> torch.Tensor | None:
    """Per unit, what ``modules`` (eval mode) make of a unit that is 0 everywhere; None when
    that is not one number per unit (a padded average pooling of a nonzero constant) or a
    layer's effect is unknown."""
    x = torch.zeros(1, width)
    for _, module in modules:
        scale = _test_scale(module)
        coupling = layer_coupling(module)
        if scale is not None:
            x = x * scale.to(x)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None:
                return None  # normalises by each batch's statistics even in eval mode
            x = nn.functional.batch_norm(
                x, module.running_mean.detach().float().cpu(),
                module.running_var.detach().float().cpu(),
                None if module.weight is None else module.weight.detach().float().cpu(),
                None if module.bias is None else module.bias.detach().float().cpu(),
                training=False, eps=module.eps)
        elif isinstance(module, nn.modules.pooling._AvgPoolNd) and bool(x.any()) and (
                module.count_include_pad and any(torch.tensor(module.padding).reshape(-1))):
            return None  # the border windows average in the zero padding
        elif isinstance(module, _CONSTANT_MAPS):
            continue
        elif coupling is not None and coupling.passthrough:
            x = module(x)  # an elementwise activation
        elif not bool(x.any()) and coupling is not None and coupling.positively_homogeneous:
            continue
        else:
            return None
    return x.reshape(-1)


def _add_to_consumer_bias(group, units: torch.Tensor, values: torch.Tensor) -> bool:
    """Add what ``units`` (constant ``values``) feed the consumer to its bias, if exact."""
    consumer = group.consumer
    weight = consumer.weight.detach()
    values = values.to(weight)
    if isinstance(consumer, nn.Linear):
        block = group.features_per_unit
        columns = expand_unit_indices(units.to(weight.device), block)
        shift = weight[:, columns] @ values.repeat_interleave(block)
    elif isinstance(consumer, nn.modules.conv._ConvNd):
        if isinstance(consumer.padding, str) or any(consumer.padding):
            return False  # border outputs read fewer inputs than the others
        shift = (weight[:, units.to(weight.device)].flatten(2).sum(2) * values).sum(1)
    else:
        return False
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros_like(shift))
    consumer.bias.data.add_(shift)
    return True


def _scale_along(tensor: torch.Tensor, dim: int, scale: torch.Tensor) -> None:
    shape = [1] * tensor.dim()
    shape[dim] = -1
    tensor.mul_(scale.to(tensor).view(shape))


def _fold_backward(entries, index: int, scale: torch.Tensor) -> bool:
    for _, module in reversed(entries[:index]):
        coupling = layer_coupling(module)
        if coupling is None:
            return False
        if coupling.produces:
            for tensor_name, dim in coupling.produces:
                tensor = getattr(module, tensor_name, None)
                if tensor is not None:
                    _scale_along(tensor.data, dim, scale)
            return True
        if coupling.per_unit and coupling.test_scale is None:
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if weight is None or bias is None:
                return False  # a BatchNorm without affine parameters has nowhere to put it
            _scale_along(weight.data, 0, scale)
            _scale_along(bias.data, 0, scale)
            return True
        if not (coupling.positively_homogeneous or coupling.test_scale is not None):
            return False
    return False


def _fold_forward(entries, index: int, scale: torch.Tensor) -> bool:
    block = 1
    for _, module in entries[index + 1 :]:
        coupling = layer_coupling(module)
        if coupling is None:
            return False
        if coupling.consumes:
            tensor_name, dim = coupling.consumes[0]
            tensor = getattr(module, tensor_name)
            features = tensor.shape[dim]
            if features % scale.numel():
                return False
            block = features // scale.numel()
            _scale_along(tensor.data, dim, scale.repeat_interleave(block))
            return True
        if not (coupling.positively_homogeneous or coupling.test_scale is not None):
            return False
    return False


def _fold_and_remove_gates(model: nn.Module) -> None:
    for entries in model_chains(model):
        for index, (name, module) in enumerate(entries):
            scale = _test_scale(module)
            if scale is None:
                continue
            if not torch.all(scale == 1):
                folded = bool(torch.all(scale >= 0)) and (
                    _fold_backward(entries, index, scale) or _fold_forward(entries, index, scale)
                )
                if not folded:
                    raise ExportError(
                        f"cannot fold the test-time scale of gate '{name}' into a neighbouring "
                        "layer: put the gate next to a Linear/Conv or BatchNorm, with only "
                        "ReLU-like layers or pooling in between"
                    )
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.Sequential):
                del parent._modules[child]
            else:
                setattr(parent, child, nn.Identity())


class SelectFeatures(nn.Module):
    """Keeps the features ``index`` of the last dimension: what a narrowed Linear reads.

    Compaction puts one in front of a Linear whose other input features are dead, then traces
    it into a plain ``index_select``; the exported model does not need this class.
    """

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.detach().to(torch.long).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.index)


def _narrowable(module: nn.Module, uses: Counter[int]) -> bool:
    """A plain Linear used once, with its own weight, nothing transforming or watching it."""
    return (
        type(module) is nn.Linear
        and uses[id(module)] == 1 and uses[id(module.weight)] == 1
        and not parametrize.is_parametrized(module)
        and not (module._forward_hooks or module._forward_pre_hooks)
    )


def _select_live_features(model: nn.Module) -> None:
    """Narrow every Linear of a Sequential that reads dead features (all-zero weight columns).

    For finite inputs such columns contribute exactly nothing, so selecting the live features
    first and dropping the columns changes no output. Left alone: a Linear whose columns are
    all zero (its output is its bias), one used twice or sharing its weight (narrowing one use
    would break the other), a subclass or parametrized one, and any Linear in a Sequential
    subclass, whose own ``forward`` may index its children.
    """
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    uses.update(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for parent in list(model.modules()):
        if type(parent) is not nn.Sequential:
            continue
        rebuilt: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in parent._modules.items():
            if module is not None and _narrowable(module, uses):
                live = module.weight.detach().ne(0).any(0)
                if bool(live.any()) and not bool(live.all()):
                    index = torch.nonzero(live).reshape(-1)
                    selector = f"{name}_inputs"
                    while selector in parent._modules:
                        selector += "_"
                    rebuilt[selector] = SelectFeatures(index)
                    module.weight = nn.Parameter(module.weight.detach()[:, index],
                                                 requires_grad=module.weight.requires_grad)
                    module.in_features = int(index.numel())
            rebuilt[name] = module
        if len(rebuilt) != len(parent._modules):
            parent._modules = rebuilt


def _is_plain(model: nn.Module) -> bool:
    return all(type(m).__module__.startswith("torch.") for m in model.modules())


def compact_model(model: nn.Module, select_inputs: bool = True) -> nn.Module:
    """A copy of ``model`` with only its live units, made of plain PyTorch layers, in eval mode.

    Units whose gates are off at test time are removed physically; live gates are folded into a
    neighbouring layer, so the compact model makes the same predictions as ``model.eval()``.
    With ``select_inputs`` a Linear directly inside an ``nn.Sequential`` that reads dead input
    features (all-zero columns) reads only its live ones, behind an ``index_select``; the
    result is then a ``torch.fx.GraphModule`` (reach layers with ``get_submodule``, not
    ``[0]``), which neuroplast cannot resize further. ``select_inputs=False`` keeps the dead
    features as zero columns and the model's structure, for more pruning or growing.

    Example::

        plain = compact_model(model)
        torch.save(plain, "model.pt")   # loads without neuroplast installed
    """
    compact = copy.deepcopy(model).eval()
    for parameter in compact.parameters():
        parameter.grad = None
    if any(_test_scale(module) is not None for module in compact.modules()):
        # Without gates nothing is dead, and an already compact (traced) model has no chains
        # to discover: compacting it again changes nothing (nor is a gateless model checked
        # for layers neuroplast could not resize).
        _prune_dead_units(compact)
        _fold_and_remove_gates(compact)
    if select_inputs:
        _select_live_features(compact)
    if hasattr(compact, "neuroplast_spec"):
        del compact.neuroplast_spec
    if not _is_plain(compact):
        try:
            compact = torch.fx.symbolic_trace(compact)
        except Exception as error:  # fx raises many types; all mean "not traceable"
            raise ExportError(
                f"the compact model holds custom modules and could not be traced into plain "
                f"PyTorch with torch.fx: {error}"
            ) from error
    return compact.eval()


MeanStd = tuple[list[float], list[float]]


def standardisation_layer(mean: list[float], std: list[float], input_ndim: int) -> nn.Module:
    """A plain PyTorch layer computing ``(x - mean) / std`` per channel (dimension 1).

    An eval-mode BatchNorm without affine parameters and with ``eps = 0`` is exactly that, and
    every runtime (TorchScript, ONNX) knows it, so an exported file needs nothing custom.
    """
    if input_ndim not in (1, 2, 3):
        raise ExportError(f"cannot standardise inputs of {input_ndim} dimensions per example")
    norm_class = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[input_ndim - 1]
    layer = norm_class(len(mean), eps=0.0, affine=False)
    layer.running_mean.copy_(torch.tensor(mean, dtype=torch.float32))
    layer.running_var.copy_(torch.tensor(std, dtype=torch.float32).square())
    return layer.eval()


def _exportable(
    model: nn.Module, input_shape: tuple[int, ...], mean_std: MeanStd | None
) -> nn.Module:
    compact = compact_model(model)
    if mean_std is None:
        return compact
    front = standardisation_layer(*mean_std, input_ndim=len(input_shape))
    return nn.Sequential(front.to(_example_input(compact, input_shape).device), compact).eval()


def _example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    """A fixed random batch for tracing, on the model's device."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    return x.to(device)


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    mean_std: MeanStd | None = None,
) -> Path:
    """Compact ``model`` and save it as TorchScript (``torch.jit.load`` runs it, no neuroplast).

    ``mean_std`` (per-channel lists) puts the input standardisation in front of the network.
    """
    path = Path(path)
    compact = _exportable(model, input_shape, mean_std)
    with torch.no_grad():
        scripted = torch.jit.trace(compact, _example_input(compact, input_shape))
    _atomic_save(lambda tmp: torch.jit.save(scripted, tmp), path)
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    mean_std: MeanStd | None = None,
) -> Path:
    """Compact ``model`` and save it as ONNX with a dynamic batch dimension.

    ``mean_std`` (per-channel lists) puts the input standardisation in front of the network.
    """
    path = Path(path)
    compact = _exportable(model, input_shape, mean_std)
    example = _example_input(compact, input_shape)

    def write(tmp: str) -> None:
        try:
            torch.onnx.export(
                compact, (example,), tmp, input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
            )
        except Exception as error:
            missing = _missing_onnx_package(error)
            if missing is None:
                raise
            raise ExportError(
                f"ONNX export needs an extra package ({missing}): pip install 'neuroplast[onnx]'"
            ) from error

    _atomic_save(write, path)
    return path


def _missing_onnx_package(error: BaseException) -> str | None:
    """The package whose absence ``error`` reports (torch wraps the ImportError), or None."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError):
            return error.name or "onnx"
        if "not installed" in str(error):  # torch.onnx.OnnxExporterError: "Module onnx is ..."
            return "onnx"
        error = error.__cause__ or error.__context__
    return None


def _atomic_save(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
