"""The policy interface: callbacks the training loop calls, and the ``Method`` a policy is.

A policy (NPN, MetaNet, a baseline) is one small class. It decides *when* and *where* a network
changes size and calls the core's ``grow_units`` / ``prune_units`` (through the trainer's
``grow``/``prune``/``split`` helpers, which keep the optimizer in step and log the event). It
never writes files; the trainer does.

The same hooks can drive a hand-written loop: call them where the comments say, with any object
that has ``model``, ``optimizer`` and ``epoch`` attributes and the helper methods used
(``all_reduce_sum_`` may simply return its argument in one process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # only for type hints; the loop imports this module
    from .loop import Trainer


def option(default: Any, help: str) -> Any:
    """A method hyper-parameter: a dataclass field whose ``help`` the command line shows.

    Example: ``keep: float = option(0.5, "fraction of units kept")`` becomes ``--<method>-keep``.
    """
    from dataclasses import field

    return field(default=default, metadata={"help": help})


class Callback:
    """Hooks called by :class:`~neuroplast.train.loop.Trainer`; all optional, all no-ops here."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (also when a run is resumed)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, before the summary is written."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before the epoch's first batch; ``epoch`` counts from 1."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After the epoch's evaluation (``trainer.last_metrics``); resize here."""

    def on_batch_begin(self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Before the forward pass of a training batch."""

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients are ready and the optimizer has not stepped yet."""

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """After the optimizer step; ``loss`` is the batch's (detached) training loss."""

    def state_dict(self) -> dict[str, Any]:
        """JSON values and tensors to checkpoint (restored before training resumes)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Method(Callback):
    """A sizing policy: callbacks plus the few places a method may shape training.

    Subclasses are dataclasses whose fields are the method's hyper-parameters; the command
    line exposes each field ``foo_bar`` of method ``name`` as ``--name-foo-bar``.
    """

    name: ClassVar[str] = "method"
    description: ClassVar[str] = ""
    #: False for a method that never changes the architecture (``fixed``).
    resizes: ClassVar[bool] = True
    #: Training settings (TrainConfig fields) the method needs to finish its own schedule; the
    #: command line uses them for a run without a recipe, under any option typed.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: Options whose default has changed, with the value they had for runs whose config.json
    #: predates neuroplast recording every option (so an old run still rebuilds its model).
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt a freshly built model before the optimizer exists (e.g. attach gates).

        Must be deterministic in structure: a resumed run calls it again on a fresh model and
        then loads the checkpoint into the result.
        """
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]] | None:
        """Optimizer param groups, or None for one group over all parameters."""
        return None

    def penalty(self, trainer: Trainer) -> torch.Tensor | None:
        """A regularizer added to the data loss (an L0 term, say), or None."""
        return None

    def training_loss(
        self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss to back-propagate and the logits, for one training batch.

        Run the forward pass through ``trainer.train_model`` (the DDP wrapper under
        distributed training, else the model itself).
        """
        logits = getattr(trainer, "train_model", trainer.model)(inputs)
        loss = F.cross_entropy(logits, targets)
        extra = self.penalty(trainer)
        return (loss if extra is None else loss + extra), logits

    def manual_gradient_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters whose gradient the method writes outside autograd (NPN's ARM term).

        Under DDP they are left out of the wrapper and the trainer averages their gradients
        across ranks itself, after ``backward()`` and before ``after_backward``.
        """
        return []

    def metrics(self, trainer: Trainer) -> dict[str, float]:
        """Method-specific scalars logged each epoch (``k``, expected L0, ...)."""
        return {}

    def live_model(self, model: nn.Module, select_inputs: bool = True) -> nn.Module:
        """The model as it would be exported (used to count parameters and MACs).

        ``select_inputs=False`` keeps a compact model's dead input features as zero columns
        (see :func:`~neuroplast.export.compact_model`), so neuroplast can still resize it.
        """
        return model

    def live_widths(self, model: nn.Module) -> dict[str, int]:
        """Units per resizable layer that are really in use, input to output."""
        from ..core.groups import layer_widths

        return layer_widths(model)

    def width_meanings(self, model: nn.Module) -> dict[str, str]:
        """What each entry of :meth:`live_widths` counts, for summaries and reports."""
        return dict.fromkeys(self.live_widths(model), "units it outputs")

    def collapse_advice(self, layer: str) -> str:
        """How to keep ``layer`` from losing every unit (said when a run collapses)."""
        return "start wider or use a smaller penalty"

    def options(self) -> dict[str, Any]:
        """The method's hyper-parameters as a JSON-able dict."""
        from dataclasses import asdict, is_dataclass

        return asdict(self) if is_dataclass(self) else {}


class TrainingCollapsed(RuntimeError):
    """A sizing decision left the network unable to use its input (see :class:`CollapseGuard`)."""


class CollapseGuard(Callback):
    """Stop a run whose sizing decisions collapsed the network, with the cause and the fix.

    After every epoch: a layer left with no live unit (for a gated Linear, every input feature
    closed) when the network now gives every validation input the same output (an emptied
    residual block is allowed: its input passes around it). After the last epoch:
    a method that resizes and ends with validation accuracy at chance (the majority class's
    share, plus two standard errors of that share on the validation set) and a validation
    loss no lower than predicting the class shares would score has failed, whatever its widths.
    The trainer turns the error into ``stopped_early`` and the command line into a non-zero exit.
    """

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        method = trainer.method
        widths = method.live_widths(trainer.model)
        meanings = method.width_meanings(trainer.model)
        for layer, width in widths.items():
            # A residual block whose units are all gone passes its input on: only a network
            # whose outputs no longer differ between inputs has collapsed.
            if width == 0 and _output_ignores_input(trainer):
                raise TrainingCollapsed(
                    f"after epoch {epoch}, {layer} has no {_plural(meanings.get(layer))} left, "
                    "so the network's output no longer depends on its input: "
                    f"{method.collapse_advice(layer)}")

    def on_train_end(self, trainer: Trainer) -> None:
        targets = trainer.data.y_val
        accuracy = trainer.last_metrics.get("val_accuracy")
        if not trainer.method.resizes or accuracy is None or targets.dim() != 1 \
                or targets.numel() == 0 or targets.is_floating_point():
            return
        shares = torch.bincount(targets).double() / targets.numel()
        chance = float(shares.max())
        margin = 2 * (chance * (1 - chance) / targets.numel()) ** 0.5
        # Predicting the class shares alone scores their entropy: a loss below it (beyond its
        # noise) is learning, even when the accuracy barely beats a dominant class.
        prior_loss = float(-(shares[shares > 0] * shares[shares > 0].log()).sum())
        loss = trainer.last_metrics.get("val_loss")
        loss_margin = 2 * (trainer.last_metrics.get("val_loss_se") or 0.0)
        learned = loss is not None and loss < prior_loss - loss_margin
        if accuracy <= chance + margin and not learned:
            widths = "-".join(map(str, trainer.method.live_widths(trainer.model).values()))
            raise TrainingCollapsed(
                f"{trainer.method.name} ended at {accuracy:.1%} validation accuracy, chance "
                f"level for this data ({chance:.1%} is the largest class), with widths {widths}: "
                "the network did not learn; try a smaller penalty, a wider start or a lower "
                "learning rate")


def _output_ignores_input(trainer: Trainer, rows: int = 64) -> bool:
    """Whether the model (in eval mode) gives every one of some validation inputs the same
    output; with fewer than two inputs at hand, an empty layer is taken at its word."""
    inputs = trainer.data.x_val if len(trainer.data.x_val) >= 2 else trainer.data.x_train
    if len(inputs) < 2:
        return True
    model = trainer.model
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs[:rows].to(trainer.device)).float()
    finally:
        model.train(training)
    spread = (outputs - outputs[:1]).abs().max()
    return bool(spread <= 1e-6 * (1 + outputs.abs().max()))


def _plural(meaning: str | None) -> str:
    """'units it outputs' -> 'units', 'input features' stays: what a zero width has none of."""
    if not meaning or meaning.startswith("units it"):
        return "units"
    return meaning
