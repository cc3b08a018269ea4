"""Neuron expression for MetaNet: per-unit activation statistics, scores, and autophagy.

A unit's *expression* is how much of the network's output it carries: its mean absolute
activation times the norm of its outgoing weights. The fraction of inputs on which it is exactly
zero (APoZ, Hu et al. 2016) is a second signal that catches dead ReLUs whatever their weights.
Statistics are gathered by forward hooks during ordinary training batches, so measuring costs
three reductions over a batch's activations and no extra forward pass.

The functions here are policy-free building blocks; :mod:`neuroplast.methods.metanet` decides
when they run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.groups import UnitGroup, get_unit_group
from ..core.optim import OptimizerArg
from ..core.resize import prune_units

# Modules whose output is the same units as their input but that do not define the unit's
# value as the consumer sees it in expectation (dropout) or at all (identity, flatten).
PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


def dense_group(model: nn.Module, layer: str) -> UnitGroup:
    """The unit group of ``layer``, checked to be a fully connected layer feeding one.

    MetaNet's statistics, bias folding and gradient-guided birth are defined for a Linear
    producer whose units are the consumer's input features one to one.
    """
    group = get_unit_group(model, layer)
    if not isinstance(group.producer, nn.Linear) or not isinstance(group.consumer, nn.Linear):
        raise ValueError(
            f"metanet resizes fully connected layers, but layer '{layer}' is a "
            f"{type(group.producer).__name__} feeding a {type(group.consumer).__name__}; use an "
            "MLP (--model mlp) or name only its Linear hidden layers"
        )
    if group.features_per_unit != 1:
        raise ValueError(f"layer '{layer}' is flattened into its consumer; metanet needs a "
                         "Linear -> Linear connection")
    return group


def feature_module(group: UnitGroup) -> nn.Module:
    """The module whose output is the units' value as their consumer reads it.

    That is the last activation / per-unit layer between producer and consumer (dropout is
    skipped: inverted dropout keeps the expectation), or the producer itself when there is none.
    """
    for _, module in reversed(group.path):
        if not isinstance(module, PASS_THROUGH):
            return module
    return group.producer


@dataclass
class UnitStats:
    """Running sums of one layer's unit activations over the samples seen (float64)."""

    abs_sum: torch.Tensor
    sum: torch.Tensor
    zeros: torch.Tensor
    count: int = 0

    @classmethod
    def empty(cls, width: int, device: torch.device | str | None = None) -> UnitStats:
        zeros = torch.zeros(width, dtype=torch.float64, device=device)
        return cls(zeros.clone(), zeros.clone(), zeros.clone(), 0)

    @property
    def width(self) -> int:
        return self.abs_sum.numel()

    def add(self, activations: torch.Tensor) -> None:
        """Accumulate a batch of activations shaped ``(batch, units)``."""
        h = activations.detach()
        if self.abs_sum.device != h.device:  # sums resumed from a checkpoint sit on the CPU
            self.abs_sum, self.sum, self.zeros = (t.to(h.device)
                                                  for t in (self.abs_sum, self.sum, self.zeros))
        self.abs_sum += h.abs().sum(0, dtype=torch.float64)
        self.sum += h.sum(0, dtype=torch.float64)
        self.zeros += (h == 0).sum(0, dtype=torch.float64)
        self.count += h.shape[0]

    def reduce(self, all_reduce_sum_: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the statistics over data-parallel ranks (``trainer.all_reduce_sum_``) in place."""
        width = self.width
        packed = torch.cat([self.abs_sum, self.sum, self.zeros,
                            torch.tensor([float(self.count)], dtype=torch.float64,
                                         device=self.abs_sum.device)])
        all_reduce_sum_(packed)
        self.abs_sum, self.sum, self.zeros = (packed[i * width : (i + 1) * width].clone()
                                              for i in range(3))
        self.count = int(packed[-1])

    # The sums live where the activations do; what decisions read comes back to the CPU,
    # once per cycle, where the policies keep their bookkeeping.
    def mean_abs(self) -> torch.Tensor:
        """Mean absolute activation per unit (on the CPU)."""
        return self.abs_sum.cpu() / max(self.count, 1)

    def mean(self) -> torch.Tensor:
        """Mean (signed) activation per unit: what bias folding adds to the consumer (CPU)."""
        return self.sum.cpu() / max(self.count, 1)

    def zero_fraction(self) -> torch.Tensor:
        """Fraction of samples on which each unit output exactly zero (APoZ; on the CPU)."""
        return self.zeros.cpu() / max(self.count, 1)

    def select(self, keep: torch.Tensor) -> UnitStats:
        """The statistics of the units ``keep`` (a boolean mask or indices) selects."""
        keep = keep.to(self.abs_sum.device)
        return UnitStats(self.abs_sum[keep], self.sum[keep], self.zeros[keep], self.count)

    def to_state(self) -> dict[str, object]:
        return {"abs_sum": self.abs_sum.cpu(), "sum": self.sum.cpu(),
                "zeros": self.zeros.cpu(), "count": self.count}

    @classmethod
    def from_state(cls, state: dict) -> UnitStats:
        return cls(state["abs_sum"].clone(), state["sum"].clone(), state["zeros"].clone(),
                   int(state["count"]))


class ExpressionMonitor:
    """Forward hooks that accumulate :class:`UnitStats` for some layers while ``active``.

    Only forward passes in training mode count, so evaluation passes are ignored. The hooks sit
    on modules a resize never replaces (activations), so they survive growth and pruning.

    Example::

        monitor = ExpressionMonitor()
        monitor.attach(model, ["fc1"])
        monitor.active = True
        ...  # train
        monitor.stats["fc1"].mean_abs()
    """

    def __init__(self) -> None:
        self.active = False
        self.stats: dict[str, UnitStats] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module, layers: Iterable[str]) -> None:
        """Hook the layers' activations (replacing hooks attached before)."""
        self.detach()
        for layer in layers:
            module = feature_module(dense_group(model, layer))
            self._handles.append(module.register_forward_hook(self._hook(layer)))

    def detach(self) -> None:
        """Remove the hooks; the statistics stay."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget every statistic (the next active batch starts new sums)."""
        self.stats = {}

    def _hook(self, layer: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not (self.active and module.training):
                return
            h = output.reshape(output.shape[0], -1)
            stats = self.stats.get(layer)
            if stats is None or stats.width != h.shape[1]:
                # First batch, or the layer was resized outside a cycle end: start afresh.
                stats = self.stats[layer] = UnitStats.empty(h.shape[1], h.device)
            stats.add(h)

        return record


def outgoing_norms(group: UnitGroup) -> torch.Tensor:
    """L2 norm of each unit's outgoing weights (its consumer column), on the CPU."""
    weight = group.consumer.weight
    return weight.detach().norm(dim=0).double().cpu()


def expression_scores(model: nn.Module, layer: str, mean_abs: torch.Tensor) -> torch.Tensor:
    """Expression per unit: mean |activation| times the norm of its outgoing weights."""
    group = dense_group(model, layer)
    norms = outgoing_norms(group)
    if norms.numel() != mean_abs.numel():
        raise ValueError(f"statistics for {mean_abs.numel()} units but layer '{layer}' has "
                         f"{norms.numel()}")
    return mean_abs.double().cpu() * norms


def under_expressed(
    scores: torch.Tensor,
    zero_fraction: torch.Tensor,
    *,
    threshold: float,
    dead_fraction: float,
) -> torch.Tensor:
    """Boolean mask: score below ``threshold`` times the layer's mean, or (nearly) always zero."""
    mean = scores.mean() if scores.numel() else scores.new_zeros(())
    return (scores < threshold * mean) | (zero_fraction >= dead_fraction)


def select_autophagy(
    scores: torch.Tensor,
    low: torch.Tensor,
    eligible: torch.Tensor,
    low_cycles: torch.Tensor,
    *,
    patience: int,
    max_removal: float,
    min_width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update consecutive-low counters and choose the units to remove this cycle.

    Args:
        scores: expression per unit (the lowest go first when the cap bites).
        low: units under-expressed this cycle.
        eligible: units old enough to be judged (newborns are protected).
        low_cycles: consecutive cycles each unit has been under-expressed so far.
        patience: a unit goes once it has been low this many consecutive cycles.
        max_removal: at most this fraction of the layer (rounded down) per cycle.
        min_width: never leave fewer units than this.

    Returns:
        ``(remove, low_cycles)``: sorted indices to remove, and the updated counters.
    """
    counters = torch.where(low & eligible, low_cycles + 1, torch.zeros_like(low_cycles))
    candidates = torch.nonzero(counters >= patience).flatten()
    width = scores.numel()
    cap = min(math.floor(max_removal * width + 1e-9), max(width - min_width, 0))
    if candidates.numel() > cap:
        order = torch.argsort(scores[candidates], stable=True)
        candidates = candidates[order[:cap]]
    return candidates.sort().values, counters


def remove_units(
    model: nn.Module,
    layer: str,
    remove: Sequence[int] | torch.Tensor,
    *,
    mean_activation: torch.Tensor | None = None,
    optimizer: OptimizerArg = None,
) -> UnitGroup:
    """Remove units of ``layer``, first folding their mean contribution into the consumer bias.

    With ``mean_activation`` (the units' mean output on some data), the consumer's bias gains
    ``W_out[:, remove] @ mean_activation[remove]``, so on that data the consumer's mean output
    is exactly what it was: removal only loses the units' variation around their mean.
    """
    group = dense_group(model, layer)
    remove = torch.as_tensor(remove, dtype=torch.long).reshape(-1).cpu()
    if remove.numel() == 0:
        return group
    if mean_activation is not None:
        bias = group.consumer.bias
        if bias is None:
            raise ValueError(f"cannot fold removed units of '{layer}' into '{group.consumer_name}'"
                             ": it has no bias")
        with torch.no_grad():
            weight = group.consumer.weight
            columns = weight[:, remove.to(weight.device)].double()
            folded = columns @ mean_activation[remove].to(weight.device).double()
            bias += folded.to(bias.dtype)
    keep = torch.ones(group.width, dtype=torch.bool)
    keep[remove] = False
    return prune_units(model, layer, torch.nonzero(keep).flatten(), optimizer=optimizer)
