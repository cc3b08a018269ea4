"""Compact export: a plain PyTorch model with only the live units, and files that run it.

:func:`compact_model` removes every unit a gate switches off at test time, folds the surviving
gates' test-time scales into a neighbouring layer (the producer's rows, a BatchNorm's affine
parameters, or the consumer's columns, whichever is reachable through scale-preserving layers),
and drops the gates. A Linear left reading dead features (zero columns: a network's raw inputs,
or the positions of a flattened feature map, whose gates no unit group can remove) is narrowed
to its live inputs behind an ``index_select``, so those features cost nothing either. What is
left contains only ``torch.nn`` layers and tensor operations (models with custom blocks, or a
feature selection, are traced into a ``torch.fx.GraphModule``), so it runs without neuroplast
installed.

Files: a ``torch.export`` program (``.pt2``, the default), ONNX through the
``torch.export``-based exporter, the weights as safetensors with a JSON of the architecture,
and TorchScript as a legacy option. ``.pt2`` and ONNX files take a batch of any size.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import os
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from .core.groups import find_unit_groups, model_chains
from .core.layers import layer_coupling
from .core.resize import expand_unit_indices, prune_units
from .core.trace import output_tensors


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
    """Whether the model needs nothing of neuroplast to run (its own classes are the user's)."""
    return not any(type(m).__module__.startswith("neuroplast.") for m in model.modules())


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

# What an export traces the model with: a batch of real inputs (any dtype: images, table rows,
# integer token ids), a dict of them for a model called with keywords (``input_ids``), or,
# where no data is at hand, one example's shape (float32 inputs).
Example = torch.Tensor | tuple[int, ...] | Mapping[str, torch.Tensor]

FORMATS: tuple[str, ...] = ("pt2", "onnx", "safetensors", "torchscript")
"""Export formats, the default first; ``torchscript`` is legacy (PyTorch deprecates it)."""

DEFAULT_FILES = {"pt2": "model.pt2", "onnx": "model.onnx", "safetensors": "model.safetensors",
                 "torchscript": "model.torchscript.pt"}


def standardisation_layer(mean: list[float], std: list[float], input_ndim: int) -> nn.Module:
    """A plain PyTorch layer computing ``(x - mean) / std`` per channel (dimension 1).

    An eval-mode BatchNorm without affine parameters and with ``eps = 0`` is exactly that, and
    every runtime (``torch.export``, ONNX) knows it, so an exported file needs nothing custom.
    """
    if input_ndim not in (1, 2, 3):
        raise ExportError(f"cannot standardise inputs of {input_ndim} dimensions per example")
    norm_class = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[input_ndim - 1]
    layer = norm_class(len(mean), eps=0.0, affine=False)
    layer.running_mean.copy_(torch.tensor(mean, dtype=torch.float32))
    layer.running_var.copy_(torch.tensor(std, dtype=torch.float32).square())
    return layer.eval()


def example_batch(model: nn.Module, example: Example, batch: int = 2) -> torch.Tensor:
    """The batch an exporter traces ``model`` with, on the model's device.

    ``example`` is a batch of real inputs, whose dtype is kept (integer ids for a token model);
    a batch of one is repeated, since an exporter would fix the batch dimension at 1. Or it is
    one example's shape, for when no data is at hand: then a fixed float32 batch in [0, 1).
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if isinstance(example, torch.Tensor):
        if example.dim() == 0 or example.shape[0] == 0:
            raise ExportError(f"the example input needs a batch dimension and at least one "
                              f"example, got shape {tuple(example.shape)}")
        x = example.detach()
        if x.shape[0] < batch:
            x = x.repeat_interleave(-(-batch // x.shape[0]), dim=0)[:batch]
        return x.to(device)
    x = torch.rand((batch, *example), generator=torch.Generator().manual_seed(0))
    return x.to(device)


class TensorInputsOutputs(nn.Module):
    """Calls a model with keyword tensors given positionally (``names`` in order: a language
    model's ``input_ids``), and returns the tensors of what it returns (a Hugging Face output's
    fields, in order) as a tuple: the plain interface an exported file has."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model, self.names = model, list(names) if names else None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.names:
            result = self.model(**dict(zip(self.names, inputs, strict=True)))
        else:
            result = self.model(*inputs)
        return tuple(output_tensors(result))


def _exportable(
    model: nn.Module, example: Example, mean_std: MeanStd | None
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The compact model (behind the standardisation, if any) and the inputs to trace it with."""
    compact = compact_model(model)
    if isinstance(example, Mapping):
        if mean_std is not None:
            raise ExportError("input standardisation applies to a model with one input tensor, "
                              f"not to keyword inputs {list(example)}")
        names = list(example)
        inputs = tuple(example_batch(compact, example[name]) for name in names)
        return TensorInputsOutputs(compact, names).eval(), inputs
    x = example_batch(compact, example)
    if mean_std is not None:
        front = standardisation_layer(*mean_std, input_ndim=x.dim() - 1)
        compact = nn.Sequential(front.to(x.device), compact).eval()
    with torch.no_grad():
        plain_output = isinstance(compact(x), torch.Tensor)
    return (compact if plain_output else TensorInputsOutputs(compact).eval()), (x,)


def _dynamic_batch(module: nn.Module, count: int = 1) -> tuple:
    """Every input's first dimension is one dynamic batch size (``*inputs`` of a wrapper are
    one argument: its spec is one tuple)."""
    batch = torch.export.Dim("batch")
    specs = tuple({0: batch} for _ in range(count))
    return (specs,) if isinstance(module, TensorInputsOutputs) else specs


def export_program(
    model: nn.Module, example: Example, mean_std: MeanStd | None = None
) -> torch.export.ExportedProgram:
    """Compact ``model`` and capture it with ``torch.export``, the batch dimension dynamic.

    ``example`` is a batch of real inputs or one example's shape (see :func:`example_batch`);
    ``mean_std`` (per-channel lists) puts the input standardisation in front of the network.
    """
    compact, inputs = _exportable(model, example, mean_std)
    try:
        with torch.no_grad():
            return torch.export.export(compact, inputs,
                                       dynamic_shapes=_dynamic_batch(compact, len(inputs)))
    except Exception as error:  # torch.export raises many types; all mean "not exportable"
        raise ExportError(
            f"torch.export could not capture the compact model with a dynamic batch "
            f"dimension: {error}"
        ) from error


def export_pt2(
    model: nn.Module,
    path: str | os.PathLike,
    example: Example,
    mean_std: MeanStd | None = None,
) -> Path:
    """Compact ``model`` and save it as a ``torch.export`` program (``.pt2``), batch dynamic.

    ``torch.export.load(path).module()`` runs it without neuroplast installed. ``example`` is
    a batch of real inputs (their dtype is what the file takes) or one example's shape;
    ``mean_std`` (per-channel lists) puts the input standardisation in front of the network.
    """
    path = Path(path)
    program = export_program(model, example, mean_std)
    _atomic_save(lambda tmp: torch.export.save(program, tmp), path)
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example: Example,
    mean_std: MeanStd | None = None,
) -> Path:
    """Compact ``model`` and save it as ONNX (the ``torch.export``-based exporter), batch dynamic.

    The graph's input is named ``input`` and its output ``logits``. ``example`` is a batch of
    real inputs or one example's shape; ``mean_std`` (per-channel lists) puts the input
    standardisation in front of the network. Needs the ``onnx`` extra (onnx, onnxscript).
    """
    for package in ("onnx", "onnxscript"):
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise ExportError(
                f"ONNX export needs an extra package ({package}): pip install 'neuroplast[onnx]'"
            ) from error
    path = Path(path)
    compact, inputs = _exportable(model, example, mean_std)
    names = list(example) if isinstance(example, Mapping) else ["input"]
    single = not isinstance(compact, TensorInputsOutputs)

    def write(tmp: str) -> None:
        with _quiet_onnx_exporter(), torch.no_grad():
            torch.onnx.export(
                compact, inputs, tmp, dynamo=True, external_data=False, verbose=False,
                input_names=names, output_names=["logits"] if single else None,
                dynamic_shapes=_dynamic_batch(compact, len(inputs)),
            )

    _atomic_save(write, path)
    return path


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence what torch's ONNX exporter says about itself, which no caller can act on: a log
    line per torchvision operator it skips, and a FutureWarning torch 2.13 raises from its own
    use of a deprecated pytree class."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def architecture_path(weights_path: str | os.PathLike) -> Path:
    """Where :func:`export_safetensors` writes the architecture of ``weights_path``."""
    return Path(weights_path).with_suffix(".json")


# Constructor settings worth recording per layer, where a layer has them.
_LAYER_SETTINGS = (
    "in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
    "padding", "dilation", "groups", "num_features", "eps", "affine", "num_embeddings",
    "embedding_dim", "output_size", "start_dim", "end_dim", "p",
)


def _layer_record(name: str, module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    kind = f"torch.nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else (
        f"{cls.__module__}.{cls.__qualname__}")
    record: dict[str, Any] = {"name": name, "type": kind}
    for setting in _LAYER_SETTINGS:
        value = getattr(module, setting, None)
        if isinstance(value, bool | int | float | str | tuple):
            record[setting] = list(value) if isinstance(value, tuple) else value
    if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
        record["bias"] = module.bias is not None
    return record


def architecture(compact: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """A small JSON-ready account of a compact model: its input, its layers (type, widths and
    settings, in definition order) and, for a traced model, the code of its ``forward``."""
    return {
        "format": "neuroplast-compact/1",
        "input_shape": list(example.shape[1:]),
        "input_dtype": str(example.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in compact.parameters()),
        "layers": [_layer_record(name, module) for name, module in compact.named_modules()
                   if name and not list(module.children())],
        "forward": compact.code if isinstance(compact, torch.fx.GraphModule) else None,
    }


def export_safetensors(
    model: nn.Module,
    path: str | os.PathLike,
    example: Example,
    mean_std: MeanStd | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save the compact model's weights as safetensors, and its architecture as JSON beside it.

    The weights are the compact model's ``state_dict`` (no standardisation layer in front);
    the JSON (:func:`architecture_path`: same name, ``.json``) holds :func:`architecture`, the
    input standardisation ``input_mean``/``input_std`` (``mean_std``, or null) and
    ``metadata``. ``example`` gives the input's shape and dtype.
    """
    path = Path(path)
    compact = compact_model(model)
    x = example_batch(compact, example)
    tensors = {name: tensor.detach().cpu().clone().contiguous()  # no shared storage
               for name, tensor in compact.state_dict().items()}
    record = architecture(compact, x)
    record["weights"] = path.name
    record["input_mean"], record["input_std"] = mean_std if mean_std is not None else (None, None)
    record.update(metadata or {})
    _atomic_save(lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}), path)
    text = json.dumps(record, indent=1) + "\n"
    _atomic_save(lambda tmp: Path(tmp).write_text(text), architecture_path(path))
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    example: Example,
    mean_std: MeanStd | None = None,
) -> Path:
    """Legacy: compact ``model`` and save it as TorchScript (``torch.jit.load`` runs it).

    PyTorch deprecates TorchScript; prefer :func:`export_pt2`. This stays for runtimes that
    only load TorchScript, and silences the deprecation warnings of the ``torch.jit`` calls
    it makes, since asking for this format is the caller's explicit choice. ``example`` is a
    batch of real inputs or one example's shape; ``mean_std`` (per-channel lists) puts the
    input standardisation in front of the network.
    """
    path = Path(path)
    compact, x = _exportable(model, example, mean_std)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=DeprecationWarning)
        with torch.no_grad():
            scripted = torch.jit.trace(compact, x)
        _atomic_save(lambda tmp: torch.jit.save(scripted, tmp), path)
    return path


_EXPORTERS = {"pt2": export_pt2, "onnx": export_onnx, "safetensors": export_safetensors,
              "torchscript": export_torchscript}


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    example: Example,
    mean_std: MeanStd | None = None,
) -> Path:
    """Export ``model`` compacted in ``fmt``, one of :data:`FORMATS`; the file's path."""
    if fmt not in _EXPORTERS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    return _EXPORTERS[fmt](model, path, example, mean_std)


def run_example(run_dir: str | os.PathLike, standardised: bool, rows: int = 2
                ) -> torch.Tensor | None:
    """The first ``rows`` test inputs of a run's data set, None when the data is not at hand.

    ``standardised``: as the network saw them in training; otherwise as the data set holds
    them (images scaled to [0, 1]). Nothing is downloaded.
    """
    from .data import DataError, load_dataset
    from .train.run import read_config, read_data_record

    config = read_config(run_dir)
    try:
        data = load_dataset(
            config.dataset, config.data_dir, seed=config.train.seed,
            val_fraction=config.val_fraction, download=False, label_column=config.label_column,
            standardise=standardised and config.standardise)
    except (DataError, OSError):
        return None
    x = data.x_test if len(data.x_test) else data.x_train
    record = read_data_record(run_dir)
    if record is not None and list(x.shape[1:]) != list(record["input_shape"]):
        return None  # the data set changed since the run
    return x[:rows].clone() if len(x) else None


def export_run_model(
    run_dir: str | os.PathLike,
    fmt: str = "pt2",
    output: str | os.PathLike | None = None,
    standardise: bool = True,
) -> list[Path]:
    """Export a run's final model, compacted, in ``fmt`` (:data:`FORMATS`); the files written.

    The default file is ``model.<format>`` in the run directory (``safetensors`` also writes
    the architecture JSON beside it). With ``standardise`` (the default) the file starts with
    the run's input standardisation, so it takes inputs as the data set holds them (images
    scaled to [0, 1]); without it, it takes standardised inputs, as the network saw in
    training. Tracing uses real test inputs when the run's data set is at hand, otherwise
    inputs of the run's recorded shape: the data set is not needed.
    """
    from .train.run import load_run_model, read_config, read_data_record, run_standardisation

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    model, input_shape = load_run_model(run_dir)
    mean_std = run_standardisation(run_dir) if standardise else None
    example = run_example(run_dir, standardised=mean_std is None)
    target = Path(output) if output is not None else Path(run_dir) / DEFAULT_FILES[fmt]
    if fmt != "safetensors":
        path = export_model(model, target, fmt, input_shape if example is None else example,
                            mean_std)
        return [path]
    config, record = read_config(run_dir), read_data_record(run_dir) or {}
    metadata = {"model": config.model, "dataset": config.dataset,
                "num_classes": record.get("num_classes"),
                "class_names": record.get("class_names")}
    path = export_safetensors(model, target, input_shape if example is None else example,
                              mean_std, metadata)
    return [path, architecture_path(path)]


def _atomic_save(write: Callable[[str], object], path: Path) -> None:
    """Write ``path`` through a temporary file beside it (same extension), then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
