"""Count parameters and multiply-accumulates (MACs), per layer and in total."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LayerCount:
    """Parameters and MACs of one leaf layer for a single example."""

    name: str
    kind: str
    params: int
    macs: int
    output_shape: tuple[int, ...]


@dataclass
class ModelCount:
    """Per-layer counts and totals; MACs are per example."""

    layers: list[LayerCount] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def table(self) -> str:
        """A plain-text table, one row per layer with parameters or MACs."""
        rows = [f"{'layer':<28} {'type':<14} {'params':>12} {'MACs':>14}  output"]
        for layer in self.layers:
            if layer.params or layer.macs:
                rows.append(
                    f"{layer.name:<28} {layer.kind:<14} {layer.params:>12,} {layer.macs:>14,}  "
                    f"{list(layer.output_shape)}"
                )
        rows.append(f"{'total':<28} {'':<14} {self.params:>12,} {self.macs:>14,}")
        return "\n".join(rows)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    # Only the dense products matter at this scale; normalisation and activations are O(output).
    per_example = output[0].numel() if output.dim() > 0 else 1
    if isinstance(module, nn.Linear):
        return per_example * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return per_example * (module.in_channels // module.groups) * kernel
    return 0


def count_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCount:
    """Parameters and per-example MACs of every leaf layer of ``model``.

    ``input_shape`` is the shape of one example (without the batch dimension). Parameters not
    owned by a leaf layer are counted in a final ``(other)`` row.

    Example::

        count_model(nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10)), (784,))
    """
    counts: list[LayerCount] = []
    handles = []
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]

    def hook_for(name: str):
        def hook(module, _inputs, output):
            if not torch.is_tensor(output):
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            counts.append(
                LayerCount(name, type(module).__name__, params, _macs(module, output),
                           tuple(output.shape[1:]))
            )
        return hook

    for name, module in leaves:
        handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    counted = {name for name, _ in leaves}
    other = sum(
        p.numel() for n, p in model.named_parameters() if n.rpartition(".")[0] not in counted
    )
    if other:
        counts.append(LayerCount("(other)", "-", other, 0, ()))
    return ModelCount(counts)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())
