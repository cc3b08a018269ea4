"""Structured-pruning baselines: remove whole units by a score, gradually or at once.

``magnitude`` scores a unit by the L2 norm of its incoming weights (and bias); ``apoz`` by how
often its activation is non-zero on the validation split (1 - the Average Percentage of Zeros of
Hu et al. 2016). Both share one schedule: between ``start_epoch`` and ``end_epoch`` the kept
fraction of every pruned layer falls from 1 to ``keep`` along Zhu & Gupta's cubic curve (one
step when the two epochs are equal: one-shot pruning); the remaining epochs fine-tune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.groups import UnitGroup, select_unit_groups
from ..policy import Method, option

if TYPE_CHECKING:
    from ..policy import Context



@dataclass
class StructuredPruning(Method):
    """Gradual (or one-shot) structured pruning to a target width; subclasses define the score."""

    name = "structured"
    keep: float = option(0.5, "fraction of each pruned layer's starting units kept at the end")
    start_epoch: int = option(1, "prune first at the end of this epoch")
    end_epoch: int = option(0, "prune last at the end of this epoch (0: half the epochs; "
                                "equal to start-epoch: one-shot)")
    layers: str = option("all", "layers to prune: all, or names such as fc1,fc2")
    min_width: int = option(1, "never prune a layer below this many units")

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise ValueError(f"{self.name} keep must be a fraction in (0, 1], got {self.keep}")
        if self.start_epoch < 1 or self.end_epoch < 0:
            raise ValueError(f"{self.name} epochs must be >= 1 (end-epoch 0: automatic)")
        if self.min_width < 1:
            raise ValueError(f"{self.name} min_width must be >= 1, got {self.min_width}")
        if self.end_epoch and self.end_epoch < self.start_epoch:
            raise ValueError(f"--{self.name}-end-epoch ({self.end_epoch}) is before "
                             f"--{self.name}-start-epoch ({self.start_epoch})")
        self._initial: dict[str, int] = {}

    def _targets(self, trainer: Context) -> dict[str, UnitGroup]:
        return select_unit_groups(trainer.model, self.layers, f"--{self.name}-layers")

    def on_train_begin(self, trainer: Context) -> None:
        if self.start_epoch > trainer.config.epochs:
            raise ValueError(f"--{self.name}-start-epoch {self.start_epoch} is after the run's "
                             f"last epoch ({trainer.config.epochs}): nothing would be pruned")
        if not self._initial:  # a resumed run keeps the widths it started from
            self._initial = {name: g.width for name, g in self._targets(trainer).items()}

    def kept_fraction(self, epoch: int, epochs: int) -> float:
        """Fraction of the starting width kept after pruning at the end of ``epoch``."""
        end = self.end_epoch or max(self.start_epoch, epochs // 2)
        if epoch < self.start_epoch:
            return 1.0
        if epoch >= end:
            return self.keep
        progress = (epoch - self.start_epoch + 1) / (end - self.start_epoch + 1)
        return self.keep + (1 - self.keep) * (1 - progress) ** 3

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        end = self.end_epoch or max(self.start_epoch, trainer.config.epochs // 2)
        if not self.start_epoch <= epoch <= end:
            return
        fraction = self.kept_fraction(epoch, trainer.config.epochs)
        for name, group in self._targets(trainer).items():
            target = max(self.min_width, math.ceil(fraction * self._initial[name]))
            if target >= group.width:
                continue
            scores = self.scores(trainer, group)
            keep = torch.topk(scores, target).indices.sort().values
            trainer.prune(name, keep)

    def scores(self, trainer: Context, group: UnitGroup) -> torch.Tensor:
        """One score per unit of ``group``; the highest ``target`` units are kept."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"initial": dict(self._initial)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._initial = dict(state.get("initial", {}))


@dataclass
class MagnitudePruning(StructuredPruning):
    """Remove the units whose incoming weights (and bias) have the smallest L2 norm."""

    name = "magnitude"
    description = "structured pruning of the smallest-norm units, then fine-tuning"

    def scores(self, trainer: Context, group: UnitGroup) -> torch.Tensor:
        norms = torch.zeros(group.width)
        for coupled in group.per_role("produces"):
            tensor = getattr(coupled.module, coupled.tensor_name)
            if tensor is not None:
                rows = tensor.detach().movedim(coupled.dim, 0).reshape(group.width, -1)
                norms += rows.pow(2).sum(1).cpu()
        return norms.sqrt()


@dataclass
class APoZPruning(StructuredPruning):
    """Remove the units whose activation is zero most often on the validation split."""

    name = "apoz"
    description = "structured pruning of the units most often zero (APoZ), then fine-tuning"
    samples: int = option(2000, "validation examples the zero rate is measured on")

    @torch.no_grad()
    def scores(self, trainer: Context, group: UnitGroup) -> torch.Tensor:
        # The unit's output as the consumer sees it: after the last layer on the path.
        watched = group.path[-1][1] if group.path else group.producer
        nonzero = torch.zeros(group.width)
        count = 0

        def record(_module, _inputs, output):
            nonlocal count
            flat = output.detach().movedim(1, -1).reshape(-1, group.width)
            nonzero.add_((flat != 0).sum(0).cpu().float())
            count += flat.shape[0]

        handle = watched.register_forward_hook(record)
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            inputs = trainer.data.x_val[: self.samples]
            for start in range(0, len(inputs), 500):
                trainer.model(inputs[start : start + 500].to(trainer.device))
        finally:
            handle.remove()
            trainer.model.train(was_training)
        return nonzero / max(count, 1)
