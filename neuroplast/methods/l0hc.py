"""``l0hc``: L0 regularization with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018).

The baseline NPN is measured against: the same gated units as ``npn`` (attached by
:func:`~neuroplast.gates.attach.attach_npn_gates`), the same per-weight L0 and gate-weighted L2
terms, but a continuous relaxation of the gates trained by the reparameterization trick instead
of exact binary gates trained with ARM, and no ``k`` schedule: gates are sampled for the whole
run and the deterministic test-time gate decides the architecture. Dead units (test gate 0)
are removed by compaction (``live_model``), which folds the surviving gates' scales into the
next layer.

The reference constants for LeNet-300-100 (lambda 0.1 / N per weight with N = 60000, weight
decay 5e-4 / N, initial drop rate 0.5, beta 2/3) are the defaults of ``recipes/l0hc-*.toml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..gates.attach import GatedLayer, attach_npn_gates
from ..gates.hard_concrete import BETA, HardConcreteGate
from ..gates.npn import compact_npn
from ..policy import Method, option

if TYPE_CHECKING:
    from ..policy import Context


@dataclass
class L0HardConcrete(Method):
    """Hard-concrete L0 gates on every unit NPN would gate.

    Example::

        method = L0HardConcrete(lambdas=(1.6667e-6,), l2=8.333e-9)
        Trainer(build_model("lenet300", (1, 28, 28), 10), data, method,
                TrainConfig(epochs=200, lr=1e-3, batch_size=128)).fit()
    """

    name = "l0hc"
    description = "L0 regularization with hard-concrete gates (Louizos et al. 2018), a baseline"

    lambdas: tuple[float, ...] = option(
        (1.6667e-6,), "L0 penalty per expected active weight, one per gated layer or one for all")
    l2: float = option(0.0, "coefficient of the gate-weighted L2 term sum P(z!=0) ||w||^2 / 2")
    init_droprate: float = option(
        0.5, "initial probability that a gate is closed: log_alpha = log((1 - p) / p)")
    beta: float = option(BETA, "temperature of the hard-concrete distribution")
    per_example: bool = option(True, "sample gates per example (else once per mini-batch)")
    gate_lr: float | None = option(None, "learning rate of log_alpha; unset: the run's --lr")

    def __post_init__(self) -> None:
        self.lambdas = tuple(float(v) for v in (
            self.lambdas if isinstance(self.lambdas, (list, tuple)) else (self.lambdas,)))
        if not self.lambdas or any(not v >= 0 or math.isinf(v) for v in self.lambdas):
            raise ValueError(f"l0hc lambdas must be finite numbers >= 0, got {self.lambdas}")
        if not self.l2 >= 0 or math.isinf(self.l2):
            raise ValueError(f"l0hc l2 must be a finite number >= 0, got {self.l2}")
        if not 0 < self.init_droprate < 1:
            raise ValueError(f"l0hc init_droprate must be in (0, 1), got {self.init_droprate}")
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ValueError(f"l0hc gate_lr must be > 0, got {self.gate_lr}")
        if not 0 < self.beta < math.inf:
            raise ValueError(f"l0hc beta must be > 0, got {self.beta}")
        self._layers: list[GatedLayer] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Attach a hard-concrete gate to every unit NPN gates; initialize ``log_alpha``."""
        self._layers = attach_npn_gates(model, gate_type=HardConcreteGate)
        if len(self.lambdas) not in (1, len(self._layers)):
            names = ", ".join(layer.name for layer in self._layers)
            raise ValueError(
                f"l0hc lambdas has {len(self.lambdas)} values for {len(self._layers)} gated "
                f"layers ({names}): give one per layer, input to output, or one for all")
        start = math.log((1 - self.init_droprate) / self.init_droprate)
        for layer in self._layers:
            layer.gate.beta = self.beta
            layer.gate.per_example = self.per_example
            layer.gate.phi.data.normal_(start, 0.01)  # the reference's small spread
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Weights in one group; every ``log_alpha`` in another, never weight-decayed."""
        gates = [layer.gate.phi for layer in self._layers]
        ids = {id(p) for p in gates}
        return [{"params": [p for p in model.parameters() if id(p) not in ids]},
                {"params": gates, "weight_decay": 0.0, "lr": self.gate_lr or lr}]

    def penalty(self, trainer: Context | None = None) -> torch.Tensor:
        """``sum_l lambda_l * expected active weights_l + l2 * gate-weighted L2_l``."""
        lambdas = self.lambdas * len(self._layers) if len(self.lambdas) == 1 else self.lambdas
        total = self._layers[0].gate.phi.new_zeros(())
        for layer, lam in zip(self._layers, lambdas, strict=True):
            if lam:
                total = total + lam * layer.expected_l0()
            if self.l2:
                total = total + self.l2 * layer.gated_l2()
        return total

    def live_widths(self, model: nn.Module) -> dict[str, int]:
        """Units (or unit positions) per gated layer whose test-time gate is above 0."""
        return {layer.name: int(layer.gate.active().sum()) for layer in self._layers}

    def width_meanings(self, model: nn.Module) -> dict[str, str]:
        """A gated conv counts its output channels, a gated Linear its input features."""
        return {layer.name: layer.counts for layer in self._layers}

    def collapse_advice(self, layer: str) -> str:
        """A lower price for the layer's units."""
        return "lower this layer's lambda (--l0hc-lambdas, one value per gated layer)"

    def live_model(self, model: nn.Module, select_inputs: bool = True) -> nn.Module:
        """The plain compact network: dead units removed, gate scales folded."""
        return compact_npn(model, select_inputs=select_inputs)

    def metrics(self, trainer: Context) -> dict[str, float]:
        with torch.no_grad():
            expected = sum(float(layer.expected_l0()) for layer in self._layers)
            return {"expected_active_weights": expected, "penalty": float(self.penalty())}
