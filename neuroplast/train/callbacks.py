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

from typing import Any

import torch

from ..policy import Callback, Context, Method, option

__all__ = ["Callback", "Checkpointing", "CollapseGuard", "Context", "EpochPrinter", "Method",
           "MetricsLog", "TrainingCollapsed", "option"]


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

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        method = trainer.method
        widths = trainer.live_widths()
        meanings = trainer.width_meanings()
        for layer, width in widths.items():
            # A residual block whose units are all gone passes its input on: only a network
            # whose outputs no longer differ between inputs has collapsed.
            if width == 0 and _output_ignores_input(trainer):
                raise TrainingCollapsed(
                    f"after epoch {epoch}, {layer} has no {_plural(meanings.get(layer))} left, "
                    "so the network's output no longer depends on its input: "
                    f"{method.collapse_advice(layer)}")

    def on_train_end(self, trainer: Context) -> None:
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
            widths = "-".join(map(str, trainer.live_widths().values()))
            raise TrainingCollapsed(
                f"{trainer.method.name} ended at {accuracy:.1%} validation accuracy, chance "
                f"level for this data ({chance:.1%} is the largest class), with widths {widths}: "
                "the network did not learn; try a smaller penalty, a wider start or a lower "
                "learning rate")


def _output_ignores_input(trainer: Context, rows: int = 64) -> bool:
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


class EpochPrinter(Callback):
    """A line per epoch: training loss and accuracy, validation accuracy, widths, parameters,
    time and the epoch's events (the test accuracy is said once, at the end: an epoch is never
    chosen by it)."""

    def on_epoch_logged(self, trainer: Context, record: dict[str, Any]) -> None:
        events = f"  [{'; '.join(record['events'])}]" if record["events"] else ""
        widths = "-".join(str(w) for w in trainer.live_widths().values())
        trainer._say(
            f"epoch {record['epoch']}/{trainer.config.epochs}  loss {record['train_loss']:.4f}  "
            f"acc {record['train_accuracy']:.2%}  val {record['val_accuracy']:.2%}  "
            f"widths {widths}  params {record['params']:,}  {record['seconds']:.1f}s{events}")


class MetricsLog(Callback):
    """``metrics.jsonl`` (and TensorBoard with ``config.tensorboard``) in the run directory, a
    line per epoch, written by the main process; a resumed run drops the lines of the epochs
    it runs again."""

    def __init__(self) -> None:
        self.logger = None

    def on_train_begin(self, trainer: Context) -> None:
        if getattr(trainer, "run_dir", None) is not None and trainer.is_main:
            from ..report import MetricsLogger

            self.logger = MetricsLogger(trainer.run_dir, tensorboard=trainer.config.tensorboard)
            self.logger.truncate_to(trainer.epoch)

    def on_epoch_logged(self, trainer: Context, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(record)

    def on_exit(self, trainer: Context) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None


class Checkpointing(Callback):
    """The checkpoint at an epoch's end when it is due (``config.checkpoint_every``; by
    default whenever writing it costs under 5 % of the training since the last). The trainer
    itself saves after training and at an interrupt between batches."""

    def on_epoch_logged(self, trainer: Context, record: dict[str, Any]) -> None:
        if trainer._checkpoint_due(record["seconds"]):
            trainer.save()

