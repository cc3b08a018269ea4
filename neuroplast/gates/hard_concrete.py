"""Hard-concrete gates: the L0 relaxation of Louizos, Welling & Kingma (ICLR 2018), a baseline.

Each unit has a parameter ``log_alpha`` (stored as ``phi``, so the gate shares NPN's unit
bookkeeping: positions, unit ids that follow resizes, folding into a compact model). In
training a gate is a reparameterized sample

    s = sigmoid((log u - log(1 - u) + log_alpha) / beta),  u ~ U(0, 1)
    z = min(1, max(0, s * (zeta - gamma) + gamma))

(a binary concrete stretched to ``(gamma, zeta) = (-0.1, 1.1)`` and clipped, so exact 0 and 1
have positive probability), differentiable in ``log_alpha`` by autograd: no ARM, one forward
pass. The expected L0 norm has a closed form, ``P(z != 0) = sigmoid(log_alpha - beta *
log(-gamma / zeta))``; at test time ``z = min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) +
gamma))``, and a unit counts as live when that is above 0.
"""

from __future__ import annotations

import math

import torch

from .npn import NPNGate

GAMMA, ZETA = -0.1, 1.1  # the stretch interval
BETA = 2.0 / 3.0  # the temperature Louizos et al. use


class HardConcreteGate(NPNGate):
    """A hard-concrete gate per unit (dim 1 of the input); ``phi`` holds ``log_alpha``.

    Example::

        gate = HardConcreteGate(8)
        gate.phi.data.fill_(math.log(9))   # P(z != 0) = sigmoid(log 9 - beta log(1/11)) = 0.99
        y = gate(torch.randn(4, 8))        # training: a fresh z per example (or per batch)
    """

    def __init__(
        self, width: int, positions: int | None = None, *, beta: float = BETA,
        per_example: bool = True, **unused: object,
    ) -> None:
        super().__init__(width, positions, per_example=per_example)
        if not 0 < beta < math.inf:
            raise ValueError(f"hard-concrete temperature beta must be > 0, got {beta}")
        self.beta = beta

    @property
    def stochastic(self) -> bool:
        return True  # no k: the relaxation is always sampled in training

    def probability(self, k: float | None = None) -> torch.Tensor:
        """``P(z != 0)`` per gate, the expected L0 norm's terms (differentiable)."""
        return torch.sigmoid(self.phi - self.beta * math.log(-GAMMA / ZETA))

    def test_gate(self) -> torch.Tensor:
        """The deterministic test-time gate in ``[0, 1]``."""
        s = torch.sigmoid(self.phi.detach())
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def active(self) -> torch.Tensor:
        """Units (or positions) the test-time gate keeps."""
        return self.test_gate() > 0

    def sample(self, batch_size: int) -> torch.Tensor:
        """A training sample of ``z`` (with a batch dim per example), differentiable."""
        u = self.draw(batch_size).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.phi) / self.beta)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.phi.shape[0]:
            raise ValueError(
                f"HardConcreteGate of width {self.phi.shape[0]} got input of shape "
                f"{tuple(x.shape)}: dim 1 must hold the gated units")
        z = self.sample(x.shape[0]) if self.training else self.test_gate()
        return x * self._broadcast(z.to(x.dtype), x)

    def extra_repr(self) -> str:
        shape = "x".join(map(str, self.phi.shape))
        mode = "per example" if self.per_example else "per batch"
        return f"{shape}, beta={self.beta:.3g}, live={int(self.active().sum())}, draws {mode}"
