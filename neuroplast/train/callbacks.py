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

import math
import signal
import threading
from typing import Any

import torch
from tqdm.auto import tqdm

from ..policy import Callback, Context, Method, option

__all__ = ["Callback", "Checkpointing", "CollapseGuard", "Context", "EpochPrinter", "Interruption",
           "Method", "MetricsLog", "ProgressBar", "TrainingCollapsed", "option"]


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
        if not trainer.method.resizes or targets.numel() == 0:
            return
        if not trainer.objective.classifies:
            self._check_regression(trainer, targets)
            return
        if accuracy is None or targets.dim() != 1 or targets.is_floating_point():
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


    @staticmethod
    def _check_regression(trainer: Context, targets: torch.Tensor) -> None:
        """A regression whose validation loss is no lower (beyond two standard errors) than
        predicting the training targets' mean, the best constant, did not learn."""
        loss = trainer.last_metrics.get("val_loss")
        if loss is None or not math.isfinite(loss) or len(targets) < 2:
            return
        reference = trainer.data.y_train if len(trainer.data.y_train) else targets
        constant = reference.double().mean(0).to(targets.device)
        baseline = float(trainer.objective.loss(constant.expand_as(targets).double(),
                                                targets.double()))
        margin = 2 * (trainer.last_metrics.get("val_loss_se") or 0.0)
        if loss >= baseline - margin:
            widths = "-".join(map(str, trainer.live_widths().values()))
            raise TrainingCollapsed(
                f"{trainer.method.name} ended at validation loss {loss:.4g}, no better than "
                f"predicting the mean target ({baseline:.4g}), with widths {widths}: the network "
                "did not learn; try a smaller penalty, a wider start or a lower learning rate")


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
        if trainer.objective.classifies:
            scores = f"acc {record['train_accuracy']:.2%}  val {record['val_accuracy']:.2%}"
        else:
            scores = f"val loss {record['val_loss']:.4g}"
        trainer._say(
            f"epoch {record['epoch']}/{trainer.config.epochs}  loss {record['train_loss']:.4f}  "
            f"{scores}  "
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


class ProgressBar(Callback):
    """A progress bar per epoch on the terminal (none when stderr is a log file), with the
    running training loss, accuracy and widths."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_epoch_begin(self, trainer: Context, epoch: int) -> None:
        self._close()
        done = trainer.progress.batch if trainer.progress is not None else 0
        self.bar = tqdm(total=trainer.batches_per_epoch, initial=done,
                        desc=f"epoch {epoch}/{trainer.config.epochs}", leave=False,
                        # None: no bar when stderr is a log file, where it would only add noise
                        disable=None if trainer.config.progress else True,
                        dynamic_ncols=True, mininterval=0.5)

    def on_batch_end(self, trainer: Context, loss: torch.Tensor) -> None:
        bar, progress = self.bar, trainer.progress
        if bar is None or progress is None:
            return
        if bar.disable is False and progress.batch % 10 == 0 and progress.seen:
            widths = "-".join(str(w) for w in trainer.live_widths().values())
            accuracy = (f" acc {int(progress.correct) / progress.seen:.3f}"
                        if trainer.objective.classifies else "")
            bar.set_postfix_str(f"loss {progress.loss_sum / progress.seen:.4f}{accuracy} "
                                f"widths {widths}", refresh=False)
        bar.update(1)

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        self._close()

    def on_exit(self, trainer: Context) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Interruption(Callback):
    """Hold a Ctrl-C (SIGINT) or a SIGTERM (a scheduler's preemption notice) until the running
    batch is done, so a checkpoint never records a batch as pending that the optimizer has
    already applied: the handler sets ``trainer.interrupt_signal`` and the loop stops between
    batches, saving its exact position. A second signal stops at once.

    Only in the main thread of a single process (signal handlers live there; under DDP a
    rank stops at the epoch's end), and only for a signal whose handler is still Python's
    default (one ignored under nohup, or someone else's handler, is left alone).
    """

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}

    def on_train_begin(self, trainer: Context) -> None:
        trainer.interrupt_signal = None  # a fit() after an interrupted one starts afresh
        if not trainer.strategy.stops_alone or \
                threading.current_thread() is not threading.main_thread():
            return

        def hold(signum: int, frame: Any) -> None:
            if trainer.interrupt_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            trainer.interrupt_signal = signum

        for number, default in self.DEFAULTS.items():
            if signal.getsignal(number) is default:
                self.previous[number] = default
                signal.signal(number, hold)

    def on_exit(self, trainer: Context) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}


class Checkpointing(Callback):
    """The checkpoint at an epoch's end when it is due (``config.checkpoint_every``; by
    default whenever writing it costs under 5 % of the training since the last). The trainer
    itself saves after training and at an interrupt between batches."""

    def __init__(self) -> None:
        self.unsaved_seconds = 0.0  # training time since the last checkpoint

    def on_epoch_logged(self, trainer: Context, record: dict[str, Any]) -> None:
        if self.due(trainer, record["seconds"]):
            trainer.save()
            self.unsaved_seconds = 0.0

    def due(self, trainer: Context, epoch_seconds: float) -> bool:
        """Whether the epoch just finished is checkpointed: every ``checkpoint_every`` epochs,
        or (0) once the training since the last checkpoint is at least 19 times what writing
        it cost (the trainer's ``save_seconds``)."""
        self.unsaved_seconds += epoch_seconds
        if trainer.epoch >= trainer.config.epochs or trainer.stop_training:
            return True  # the last epoch, kept before on_train_end can stop the run
        every = trainer.config.checkpoint_every
        if every:
            return trainer.epoch % every == 0
        cost = trainer.save_seconds
        return cost is None or self.unsaved_seconds >= 19 * cost
