"""What training minimises: a classification's cross-entropy or a regression's squared error.

The loop, evaluation and every method read the objective through the
:class:`~neuroplast.policy.Context` (``context.objective``), chosen by ``TrainConfig.loss``.
Methods decide on :meth:`Objective.score`: the validation accuracy for a classification, the
negative validation loss for a regression, each with its standard error, so one rule ("keep the
smallest network within noise of the best") serves both.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F


class Objective:
    """A training loss and how a prediction is scored."""

    name: ClassVar[str] = ""
    #: True when predictions are classes (accuracy is measured, targets are class indices).
    classifies: ClassVar[bool] = False

    def example_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One loss per example (float32 or wider)."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss: what is back-propagated."""
        return self.example_losses(outputs, targets).mean()

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
        """``loss(outputs, targets, reduction="mean"|"none")``, as ``F.cross_entropy`` is
        called (so an objective stands wherever a loss function is expected)."""
        if reduction == "none":
            return self.example_losses(outputs, targets)
        return self.loss(outputs, targets)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Correct predictions in the batch, or None where there is no accuracy."""
        return None

    def null_loss(self, targets: torch.Tensor) -> float:
        """The loss of the best constant prediction for these targets: what a model that
        learned nothing loses. A price in its units follows the loss's scale."""
        raise NotImplementedError

    def score(self, metrics: dict[str, Any], examples: int) -> tuple[float, float]:
        """The validation score a method keeps the best of (higher is better) and its
        standard error, from an epoch's metrics measured on ``examples`` examples."""
        loss = float(metrics.get("val_loss", math.nan))
        return -loss, float(metrics.get("val_loss_se") or 0.0)


class CrossEntropy(Objective):
    """Classification: cross-entropy over logits, scored by accuracy."""

    name = "cross-entropy"
    classifies = True

    def example_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, reduction="none")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.detach().argmax(1) == targets).sum()

    def null_loss(self, targets: torch.Tensor) -> float:
        """The entropy of the class frequencies (nats)."""
        frequencies = torch.bincount(targets.reshape(-1).long()).double() / targets.numel()
        frequencies = frequencies[frequencies > 0]
        return float(-(frequencies * frequencies.log()).sum())

    def score(self, metrics: dict[str, Any], examples: int) -> tuple[float, float]:
        accuracy = float(metrics.get("val_accuracy", math.nan))
        if not math.isfinite(accuracy) or examples <= 0:
            return super().score(metrics, examples)
        return accuracy, math.sqrt(accuracy * (1 - accuracy) / examples)


class MeanSquaredError(Objective):
    """Regression: the mean squared error over every output of an example.

    Targets are float tensors shaped like the outputs; one target per example may be a 1-D
    tensor for a model with one output.
    """

    name = "mse"

    def example_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if targets.dim() == 1 and outputs.dim() == 2 and outputs.shape[1] == 1:
            outputs = outputs[:, 0]
        if outputs.shape != targets.shape:
            raise ValueError(f"the model's outputs are shaped {tuple(outputs.shape)} and the "
                             f"regression targets {tuple(targets.shape)}: give the model one "
                             "output per target value")
        return (outputs - targets.to(outputs.dtype)).square().reshape(len(targets), -1).mean(1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.example_losses(outputs, targets).mean()

    def null_loss(self, targets: torch.Tensor) -> float:
        """The targets' variance, averaged over the outputs (predicting their mean)."""
        values = targets.double().reshape(len(targets), -1)
        return float(values.var(0, unbiased=False).mean())


LOSSES: dict[str, type[Objective]] = {"cross-entropy": CrossEntropy, "mse": MeanSquaredError}


def objective(name: str) -> Objective:
    """The objective a ``TrainConfig.loss`` names."""
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss '{name}'; choose one of {tuple(LOSSES)}") from None
