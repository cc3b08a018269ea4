"""``net2net``: widening only, by function-preserving unit copies on a schedule (Chen et al. 2016).

Every ``every`` epochs, for ``events`` times, each widened layer grows by ``factor``: randomly
chosen units are split into two copies that share their outgoing weights (the core's
``split_units``), so the network computes the same function right after the event (up to the
optional ``noise`` that lets the copies diverge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.groups import find_unit_groups, select_unit_groups
from ..policy import Method, option

if TYPE_CHECKING:
    from ..policy import Context



@dataclass
class Net2Net(Method):
    """Grow every hidden layer by function-preserving splits at fixed epochs."""

    name = "net2net"
    description = "Net2Net widening: function-preserving unit copies on a schedule"
    factor: float = option(1.5, "width multiplier per widening event")
    every: int = option(2, "epochs between widening events")
    events: int = option(3, "number of widening events")
    noise: float = option(0.01, "std of the noise on a copy's fan-in, relative to std(W_in)")
    layers: str = option("all", "layers to widen: all, or names such as fc1,fc2")

    def __post_init__(self) -> None:
        if not self.factor > 1:
            raise ValueError(f"net2net factor must be > 1, got {self.factor}")
        if self.every < 1 or self.events < 0 or self.noise < 0:
            raise ValueError("net2net every must be >= 1, events >= 0 and noise >= 0")
        self._done = 0

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Check the layers to widen exist before training starts (no change)."""
        select_unit_groups(model, self.layers, "--net2net-layers")
        return model

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        if self._done >= self.events or epoch % self.every != 0 or epoch >= trainer.config.epochs:
            return
        groups = select_unit_groups(trainer.model, self.layers, "--net2net-layers")
        for name in list(groups):
            width = groups[name].width
            added = math.ceil(width * (self.factor - 1))
            while added > 0:  # a unit is split at most once per pass, so large factors loop
                units = torch.randperm(width)[: min(added, width)].sort().values
                weight = getattr(groups[name].producer, "weight", None)
                scale = float(weight.detach().std()) if weight is not None else 1.0
                trainer.split(name, units.tolist(), noise_std=self.noise * scale)
                added -= len(units)
                width = find_unit_groups(trainer.model)[name].width
        self._done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"done": self._done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._done = int(state.get("done", 0))
