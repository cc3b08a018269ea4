"""The training loop: batches, evaluation, policy callbacks, metrics and checkpoints.

The loop knows nothing of NPN or MetaNet: a :class:`~neuroplast.policy.Method` shapes the loss
and resizes the model from its callbacks. The services around it are callbacks too
(:mod:`neuroplast.train.callbacks`): the collapse guard, the progress bar and epoch lines, the
metrics log, the checkpoint when one is due, and the signal handling that lets Ctrl-C (or a
scheduler's SIGTERM) finish the running batch, save the exact position and stop. A checkpoint
holds everything needed to continue exactly (weights at their current widths, optimizer,
scheduler, every random generator, the policy's state, the position in the epoch), so
``resume`` gives the same result as a run that never stopped.

Training data are tensors, map-style datasets read per batch (:mod:`neuroplast.data.lazy`) or
any iterable of batches (:mod:`neuroplast.data.stream`). Distributed training is a strategy
object (:mod:`neuroplast.distributed`): each rank takes its share of every global batch, the
model is re-wrapped after every resize, and the ranks are checked to agree after every point
where a policy may act. Only rank 0 writes files.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..core.count import count_model
from ..data import DataSplits
from ..data.augment import BatchAugmentation, black_fill, check_augmentation
from ..distributed import DistributedContext, SingleProcess
from ..policy import Callback, Context, Method
from .callbacks import (
    Checkpointing,
    CollapseGuard,
    EpochPrinter,
    Interruption,
    MetricsLog,
    ProgressBar,
    TrainingCollapsed,
)
from .config import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    TrainConfig,
    check_device,
    make_optimizer,
    make_scheduler,
)

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULERS", "EpochProgress", "TrainConfig", "Trainer",
           "TrainingDiverged", "check_device", "make_optimizer", "make_scheduler"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EpochProgress:
    """Where the running epoch stands: what a mid-epoch checkpoint records to resume from."""

    epoch_rng: torch.Tensor  # the data generator's state when the epoch began (its order)
    batch: int = 0  # batches fully applied
    step: int = 0  # optimizer steps taken when the last of them ended
    seen: int = 0  # training examples in those batches
    loss_sum: float = 0.0  # their summed loss
    correct: torch.Tensor | int = 0  # their correct predictions (a device tensor: no sync)

    def add(self, loss_sum: float, correct: torch.Tensor | int, seen: int, step: int) -> None:
        """Count one more applied batch."""
        self.batch, self.step = self.batch + 1, step
        self.loss_sum += loss_sum
        self.correct = self.correct + correct
        self.seen += seen

    def state(self) -> dict[str, Any]:
        return {"epoch_rng": self.epoch_rng, "batch": self.batch, "seen": self.seen,
                "loss_sum": self.loss_sum, "correct": int(self.correct)}


class Trainer(Context):
    """Train ``model`` on ``data`` under a sizing ``method``.

    Example::

        data = load_dataset("digits")
        model = build_model("mlp", data.input_shape, data.num_classes, widths=[32])
        trainer = Trainer(model, data, FixedWidth(), TrainConfig(epochs=5), run_dir="runs/demo")
        trainer.fit()
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        method: Method,
        config: TrainConfig | None = None,
        run_dir: str | os.PathLike | None = None,
        callbacks: Sequence[Callback] = (),
        distributed: DistributedContext | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.config.validate()
        self.distributed = distributed
        self.strategy = distributed if distributed is not None else SingleProcess()
        if not self.strategy.is_main:
            self.config.progress = False  # one progress bar: rank 0's
        self.device = check_device(self.config.device)
        self.strategy.check_device(self.device)
        # Batches are indexed out of the data where it lies: CPU data (the default) is copied to
        # the device a batch at a time; data already there (``data.to(device)``) is not copied.
        self.data = data
        self.streamed = getattr(data.x_train, "streamed", False)
        if self.streamed and self.strategy.world_size > 1:
            raise ValueError("streamed training data (an iterable of batches) trains in one "
                             "process: give each rank indexable data (tensors, or "
                             "neuroplast.data.dataset_splits over a map-style dataset)")
        check_augmentation(self.config.augment, self.config.augment_padding, data.input_shape)
        channels = data.input_shape[0] if data.input_shape else 1
        self.augmentation = BatchAugmentation(
            self.config.augment, self.config.augment_padding, self.config.seed,
            black_fill(data.input_mean, data.input_std, channels))
        self.method = method
        # The loop's own services come last: they see the epoch as the method left it.
        self.callbacks: list[Callback] = [
            Interruption(), method, CollapseGuard(), *callbacks, ProgressBar(), EpochPrinter(),
            MetricsLog(), Checkpointing()]
        self.model = method.prepare_model(model).to(self.device)
        groups = method.param_groups(self.model, self.config.lr)
        self.optimizer = make_optimizer(self.config, groups or self.model.parameters())
        self.scheduler = make_scheduler(self.config, self.optimizer)
        self.data_generator = torch.Generator().manual_seed(self.config.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.train_seconds = 0.0
        self.initial_widths = method.live_widths(self.model)
        self.history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] = {}
        self.events: list[str] = []
        self.stop_training = False
        self.stopped_early: str | None = None
        self.progress: EpochProgress | None = None  # the running epoch's
        self.interrupt_signal: int | None = None  # set by a held Ctrl-C or SIGTERM
        self.save_seconds: float | None = None  # what writing the last checkpoint cost
        self._position: dict[str, Any] | None = None  # set when resuming mid-epoch
        self._saved: tuple[int, int | None] | None = None  # (epoch, batch) of the checkpoint
        self.loss_scale = 1.0  # this rank's weight of its share of the batch (1 in one process)
        self.batch_rows: tuple[int, torch.Tensor] | None = None  # (global size, rows) under DDP

    @property
    def is_main(self) -> bool:
        """True in a single process and on rank 0: the process that writes files."""
        return self.strategy.is_main

    @property
    def train_model(self) -> nn.Module:
        """What training forward passes go through: the model, or its DDP wrapper (rebuilt
        after every resize). Policies resize ``model``, never this."""
        return self.strategy.training_model(self.model)

    @property
    def batches_per_epoch(self) -> int | None:
        """Training batches per epoch (None for a stream that cannot say)."""
        if self.streamed:
            return len(self.data.x_train) or None
        return math.ceil(len(self.data.y_train) / self.config.batch_size)

    @property
    def mid_epoch(self) -> bool:
        """True when restored from a checkpoint saved part-way through an epoch (Ctrl-C)."""
        return self._position is not None

    def _agree(self, where: str, full: bool = False, diverged: bool = False) -> bool:
        """Under DDP: check that the ranks hold the same model after a point a policy may act;
        returns whether any rank's loss ``diverged`` (see ``DistributedContext.agree``)."""
        return self.strategy.agree(self.model, where, full, diverged)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` (or a policy sets ``stop_training``); returns history.

        Raises nothing for a diverged loss, a collapse or Ctrl-C: each stops the run, keeps a
        usable checkpoint and sets ``stopped_early``.
        """
        try:
            self._call("on_train_begin")
            self._agree("when training starts", full=True)
            while self.epoch < self.config.epochs and not self.stop_training:
                epoch, started = self.epoch + 1, time.perf_counter()
                self.events, self.progress = [], self._epoch_progress()
                self.strategy.sync_rng_()
                self._call("on_epoch_begin", epoch)
                self._agree(f"at the start of epoch {epoch}")
                train = self._train_epoch(epoch)
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
                if self.scheduler is not None:
                    self.scheduler.step()
                record = self._epoch_record(epoch, train, lr)
                record["seconds"] = time.perf_counter() - started
                self.train_seconds += record["seconds"]
                self.epoch = epoch
                self.history.append(record)
                self._call("on_epoch_logged", record)
            self._call("on_train_end")
            self._agree("when training ends", full=True)
            self.save()  # what on_train_end changed (a final compaction) is kept too
        except (TrainingCollapsed, TrainingDiverged, KeyboardInterrupt) as error:
            self._stopped(error)
        except RuntimeError as error:
            failure = self.strategy.failure(error, self.epoch + 1)
            if failure is None:
                raise
            raise failure from None
        finally:
            self._call("on_exit")
        return self.history

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training batches (from a mid-epoch position when resuming);
        returns the epoch's mean training loss and accuracy."""
        progress = self.progress
        assert progress is not None
        self.model.train()
        batches = self._epoch_batches(epoch, progress)
        try:
            while True:
                self._stop_if_interrupted()  # between batches, so none is half applied
                try:
                    x, y, index = next(batches)
                except StopIteration:
                    break
                except RuntimeError:
                    # A SIGTERM to the whole job also stops a DataLoader's workers: the fetch
                    # fails because of the interrupt being held, which is what it reports.
                    if self.interrupt_signal is not None:
                        raise KeyboardInterrupt from None
                    raise
                progress.add(*self._train_batch(epoch, index, x, y), step=self.step)
        except KeyboardInterrupt:
            # The exact position only between batches: an interrupt raised inside one (a
            # second signal, a callback's) may follow its optimizer step, so that run resumes
            # from the last checkpoint instead. DDP ranks stop at an epoch's end.
            if self.strategy.stops_alone and progress.step == self.step:
                self._position = progress.state()
            raise
        finally:
            self.loss_scale, self.batch_rows = 1.0, None
        totals = torch.tensor([progress.loss_sum, float(progress.correct), float(progress.seen)],
                              dtype=torch.float64)
        loss_sum, correct, seen = self.all_reduce_sum_(totals).tolist()
        accuracy = round(correct) / max(seen, 1) if self.objective.classifies else math.nan
        return loss_sum / max(seen, 1), accuracy

    def _train_batch(self, epoch: int, index: int, x: torch.Tensor, y: torch.Tensor
                     ) -> tuple[float, torch.Tensor | int, int]:
        """One optimizer step on this process's share of a global batch; returns its summed
        loss, correct predictions and example count (zeros for a rank with no share)."""
        self._call("on_batch_begin", x, y)
        self.optimizer.zero_grad(set_to_none=True)
        value, correct, loss = self._backward(x, y)
        if not math.isfinite(value) and self.strategy.stops_alone:
            self._diverged(value, epoch, index)  # before the step: the last state stays good
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self._call("after_backward")
        self.optimizer.step()
        self.step += 1
        self._call("on_batch_end", loss)
        if not self.strategy.stops_alone and self._agree(
                f"after batch {index + 1} of epoch {epoch}", diverged=not math.isfinite(value)):
            self._diverged(value, epoch, index)  # on every rank at once
        if not self.loss_scale:  # a rank with no share of this batch counts nothing
            return 0.0, 0, 0
        return value * len(y), correct, len(y)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ batches
    def _epoch_progress(self) -> EpochProgress:
        """A fresh epoch's progress, or the checkpoint's when resuming mid-epoch."""
        position, self._position = self._position, None
        if position is None:
            return EpochProgress(self.data_generator.get_state(), step=self.step)
        correct = torch.tensor(position["correct"], dtype=torch.long, device=self.device)
        return EpochProgress(position["epoch_rng"], position["batch"], self.step,
                             position["seen"], position["loss_sum"], correct)

    def _epoch_batches(self, epoch: int, progress: EpochProgress
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The epoch's batches (this process's share, on the device, augmented) from
        ``progress.batch`` on, with their index in the epoch."""
        data = self.data
        if self.streamed:
            batches = data.x_train.epoch(self.config.seed, epoch, skip=progress.batch)
            for index, (x, y) in enumerate(batches, start=progress.batch):
                x = x.to(self.device, non_blocking=True)
                yield (self.augmentation(x, epoch, index, None, len(y)),
                       y.to(self.device, non_blocking=True), index)
            return
        self.data_generator.set_state(progress.epoch_rng)
        order = torch.randperm(len(data.y_train), generator=self.data_generator)
        order = order.to(data.y_train.device)  # no per-batch index copy for device data
        size = self.config.batch_size
        for index in range(progress.batch, math.ceil(len(order) / size)):
            batch = order[index * size : (index + 1) * size]
            rows = self._share(batch)
            x = data.x_train[rows].to(self.device, non_blocking=True)
            y = data.y_train[rows].to(self.device, non_blocking=True)
            rows_of_batch = None if self.batch_rows is None else self.batch_rows[1]
            yield self.augmentation(x, epoch, index, rows_of_batch, len(batch)), y, index

    def _backward(self, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[float, torch.Tensor | int, torch.Tensor]:
        """The method's loss and its gradients for one batch, in ``config.accumulate``
        micro-batches whose losses are weighted by their share; returns the batch's mean loss,
        its correct predictions and the (detached) loss."""
        share, rows = self.loss_scale, self.batch_rows
        # Every rank runs as many micro-batches (each backward is an all-reduce under DDP):
        # as many as the smallest share of the global batch allows.
        size = len(y) if rows is None else rows[0]
        count = min(max(1, min(self.config.accumulate, size // self.strategy.world_size)),
                    len(y))
        # (one batch, the common case, is not split: no index tensors made per step)
        parts = [None] if count == 1 else torch.arange(len(y)).tensor_split(count)
        value, correct = 0.0, 0
        objective = self.objective
        try:
            for part in parts:
                whole = part is None
                x_part, y_part = (x, y) if whole else (x[part], y[part])
                weight = 1.0 if whole else len(part) / len(y)
                if rows is not None and not whole:  # DDP: this part's rows of the global batch
                    self.batch_rows = (rows[0], rows[1][part.to(rows[1].device)])
                with self.autocast():
                    loss, outputs = self.method.training_loss(self, x_part, y_part)
                scale = share * weight
                (loss * scale if scale != 1.0 else loss).backward()
                value += loss.item() * weight  # one sync: divergence check and running mean
                right = objective.correct(outputs, y_part)
                if right is not None:
                    correct = correct + right
        finally:
            self.batch_rows = rows
        return value, correct, loss.detach() if len(parts) == 1 else torch.tensor(value)

    def _diverged(self, value: float, epoch: int, index: int) -> None:
        raise TrainingDiverged(
            f"the training loss became {value} at epoch {epoch}, batch {index + 1}: lower "
            f"the learning rate (now {self.config.lr})")

    def _share(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch, setting ``loss_scale`` and ``batch_rows``.

        DDP averages the ranks' gradients, so a rank's mean loss is weighted by its share of
        the global batch times the number of ranks: the average is then the global batch's
        mean gradient even when the batch does not split evenly.
        """
        world = self.strategy.world_size
        if world == 1:  # one process: the whole batch, as it is
            self.loss_scale, self.batch_rows = 1.0, None
            return rows
        positions = self.strategy.shard(torch.arange(len(rows)))
        if len(positions) == 0:
            # More ranks than examples left: this rank joins with one row weighted zero.
            self.loss_scale, self.batch_rows = 0.0, (len(rows), torch.zeros(1, dtype=torch.long))
            return rows[:1]
        self.loss_scale = len(positions) * world / len(rows)
        self.batch_rows = (len(rows), positions)
        return rows[positions]

    def _epoch_record(self, epoch: int, train: tuple[float, float], lr: float):
        # Evaluate and decide with rank 0's BatchNorm statistics, as its checkpoint will.
        self.strategy.broadcast_buffers_(self.model)
        self.strategy.sync_rng_()
        val = self.evaluate(self.data.x_val, self.data.y_val)
        test = self.evaluate(self.data.x_test, self.data.y_test)
        self.last_metrics = {
            "epoch": epoch, "train_loss": train[0], "train_accuracy": train[1],
            "val_loss": val.loss, "val_accuracy": val.accuracy, "val_loss_se": val.loss_se,
            "test_loss": test.loss, "test_accuracy": test.accuracy,
        }
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch)
        self._agree(f"at the end of epoch {epoch}", full=True)
        live = self.method.live_model(self.model)
        count = count_model(live, self.data.input_shape)
        record = {
            **self.last_metrics,
            "widths": self.method.live_widths(self.model),
            "params": count.params,
            "macs": count.macs,
            "seconds": 0.0,  # fit() times the whole epoch, this record included
            "lr": lr,
            "events": list(self.events),
            "method": self.method.metrics(self),
        }
        return record

    def _stop_if_interrupted(self) -> None:
        if self.interrupt_signal is not None:
            raise KeyboardInterrupt

    def _stopped(self, error: BaseException) -> None:
        """Why the run stopped early, said and recorded (the checkpoint kept is named)."""
        kept = "" if self._saved is None or self.run_dir is None else \
            f" The checkpoint of epoch {self._saved[0]} is kept."
        if isinstance(error, TrainingCollapsed):
            self.stopped_early = f"collapsed: {error}"
            self._tell(f"training stopped: {error}.{kept}")
        elif isinstance(error, TrainingDiverged):
            self.stopped_early = f"diverged: {error}"
            kept = ("No epoch finished, so there is no checkpoint to resume."
                    if self._saved is None or self.run_dir is None else
                    f"The last good checkpoint (epoch {self._saved[0]}) is kept.")
            self._tell(f"training stopped: {error}. {kept}")
        else:  # an interrupt; a preemption notice is told apart for the exit status
            self.stopped_early = ("interrupted by SIGTERM"
                                  if self.interrupt_signal == signal.SIGTERM else "interrupted")
            if self._position is not None:
                self.save()
            self._tell(self._interrupted_message())

    def _interrupted_message(self) -> str:
        """What an interrupted run leaves to resume: said from the checkpoint really on disk."""
        if self.run_dir is None:
            return f"interrupted in epoch {self.epoch + 1}"
        if self._saved is None:
            return "interrupted before anything was saved: nothing to resume"
        epoch, batch = self._saved
        if batch is not None:
            return (f"interrupted in epoch {epoch + 1} after {batch} batches: saved; "
                    "`neuroplast resume` continues from there")
        return (f"interrupted: the checkpoint of epoch {epoch} is kept; `neuroplast resume` "
                "continues from it")

    def _say(self, text: str) -> None:
        if self.config.progress and self.is_main:
            tqdm.write(text)

    def _tell(self, text: str) -> None:
        """Why the run stopped: shown even with ``progress`` off."""
        if self.is_main:
            tqdm.write(text, file=sys.stderr)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoint"

    def save(self, directory: str | os.PathLike | None = None) -> Path | None:
        """Write the checkpoint (by default ``<run_dir>/checkpoint``)."""
        target = Path(directory) if directory is not None else self.checkpoint_dir
        if target is None or not self.is_main:
            return None
        extra = {
            "config": asdict(self.config),
            "train_seconds": self.train_seconds,
            "initial_widths": self.initial_widths,
            "history": self.history,
            "position": self._position,
        }
        started = time.perf_counter()
        path = save_checkpoint(
            target, self.model, self.optimizer, self.scheduler, epoch=self.epoch,
            step=self.step, method_state=self.method.state_dict(), extra=extra,
            generators={"data": self.data_generator},
        )
        if target == self.checkpoint_dir:
            self._saved = (self.epoch, (self._position or {}).get("batch"))
            self.save_seconds = time.perf_counter() - started
        return path

    def restore(self, directory: str | os.PathLike) -> Checkpoint:
        """Continue from a checkpoint: widths, weights, optimizer, scheduler, RNG, policy state."""
        checkpoint = load_checkpoint(directory, model=self.model)
        # A resize in the saved run replaced parameters: rebuild the optimizer over the loaded ones.
        groups = self.method.param_groups(self.model, self.config.lr)
        self.optimizer = make_optimizer(self.config, groups or self.model.parameters())
        checkpoint.restore_optimizer(self.optimizer)
        self.scheduler = make_scheduler(self.config, self.optimizer)
        if self.scheduler is not None:
            checkpoint.restore_scheduler(self.scheduler)
        self.method.load_state_dict(checkpoint.method_state)
        extra = checkpoint.extra
        self.epoch, self.step = checkpoint.epoch, checkpoint.step
        self.train_seconds = extra["train_seconds"]
        self.initial_widths = extra["initial_widths"]
        self.history = extra["history"]
        self._position = extra.get("position")
        self._saved = (self.epoch, (self._position or {}).get("batch"))
        checkpoint.restore_rng({"data": self.data_generator})
        return checkpoint
