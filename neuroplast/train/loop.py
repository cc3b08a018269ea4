"""The training loop: batches, evaluation, policy callbacks, metrics and a checkpoint per epoch.

The loop knows nothing of NPN or MetaNet: a :class:`~neuroplast.train.callbacks.Method` shapes
the loss and resizes the model from its callbacks. Every epoch ends with a checkpoint holding
everything needed to continue exactly (weights at their current widths, optimizer, scheduler,
every random generator, the policy's state), so ``resume`` after a crash gives the same result
as a run that never stopped. Ctrl-C (or SIGTERM) finishes the running batch, saves a checkpoint
there and stops cleanly.

With a :class:`~neuroplast.distributed.DistributedContext` the same loop trains data-parallel
under DDP: each rank takes its share of every global batch, the model is re-wrapped after every
resize, and the ranks are checked to agree after every point where a policy may act (see
:mod:`neuroplast.distributed`). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
from .callbacks import Checkpointing, CollapseGuard, EpochPrinter, MetricsLog, TrainingCollapsed

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("32", "bf16-mixed")
SCHEDULERS = ("none", "cosine", "step")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Hyper-parameters of the loop itself (the method's live on the method)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"
    lr_milestones: list[int] = field(default_factory=list)  # "step": decay at these epochs
    lr_gamma: float = 0.1  # "step": the factor applied at each decay
    seed: int = 0
    eval_batch_size: int = 1000
    progress: bool = True
    tensorboard: bool = False
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    device: str = "cpu"  # where the model trains: cpu, cuda, cuda:N
    augment: str = "none"  # training images: none, crop (random shifts) or crop-flip
    augment_padding: int = 4  # the largest shift, in pixels
    # Write the checkpoint every N epochs; 0: whenever the training time since the last one is
    # at least 19 times what writing it cost (checkpoints then take at most 5 % of the time).
    # The last epoch and an interrupt between batches are always saved; a resume is exact
    # from any checkpoint (an interrupt elsewhere resumes from the last one written).
    checkpoint_every: int = 0
    # "bf16-mixed": forward passes under torch.autocast in bfloat16 (CPU and CUDA); weights,
    # gradients and optimizer state stay float32.
    precision: str = "32"
    grad_clip: float = 0.0  # clip the gradients' total norm to this before each step; 0: off
    accumulate: int = 1  # split each batch into this many micro-batches, one step per batch

    def __post_init__(self) -> None:
        if isinstance(self.lr_milestones, int) and not isinstance(self.lr_milestones, bool):
            self.lr_milestones = [self.lr_milestones]  # `lr_milestones = 400` in a recipe

    def _check_types(self) -> None:
        """A recipe can hold any TOML value: name the option whose value has the wrong type."""
        def integer(value: Any) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def number(value: Any) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        checks = {"an integer": (integer, ("epochs", "batch_size", "seed", "eval_batch_size",
                                           "augment_padding", "accumulate")),
                  "a number": (number, ("lr", "momentum", "weight_decay", "lr_gamma",
                                        "grad_clip")),
                  "a string": (lambda v: isinstance(v, str),
                               ("optimizer", "scheduler", "device", "augment", "precision"))}
        for kind, (check, names) in checks.items():
            for name in names:
                if not check(getattr(self, name)):
                    raise ValueError(f"{name} must be {kind}, got {getattr(self, name)!r}")
        if self.threads is not None and not integer(self.threads):
            raise ValueError(f"threads must be an integer, got {self.threads!r}")
        milestones = self.lr_milestones
        if not isinstance(milestones, (list, tuple)) or not all(map(integer, milestones)):
            raise ValueError(f"lr milestones must be a list of epoch numbers, e.g. [400] or "
                             f"--lr-milestones 60,120; got {milestones!r}")

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent option."""
        self._check_types()
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0 or math.isinf(self.lr):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight decay must be >= 0 and momentum in [0, 1)")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError("checkpoint every must be an epoch count >= 1, or 0 for a "
                             f"checkpoint whenever it costs under 5 % of the time, got "
                             f"{self.checkpoint_every!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.precision}'; choose one of {PRECISIONS}")
        if not self.grad_clip >= 0 or math.isinf(self.grad_clip):
            raise ValueError(f"grad clip must be a gradient norm > 0, or 0 for none, got "
                             f"{self.grad_clip}")
        if not 1 <= self.accumulate <= self.batch_size:
            raise ValueError(f"accumulate must be between 1 and the batch size "
                             f"({self.batch_size}): micro-batches per step, got {self.accumulate}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; choose one of {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler '{self.scheduler}'; choose one of {SCHEDULERS}")
        if self.lr_milestones and self.scheduler != "step":
            raise ValueError(f"lr milestones {self.lr_milestones} need the step scheduler: add "
                             "--scheduler step (scheduler = \"step\" in a recipe); to train "
                             "a recipe that has milestones at a constant rate, pass --lr-gamma 1")
        if any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(
                set(self.lr_milestones)):
            raise ValueError(f"lr milestones must be increasing epoch numbers >= 1, got "
                             f"{self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr gamma must be in (0, 1], got {self.lr_gamma}")
        check_device(self.device)
        check_augmentation(self.augment, self.augment_padding)


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, or a ValueError saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {name} is not a device: use cpu, cuda or cuda:N "
                         f"({error})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no usable CUDA device "
                             "(torch.cuda.is_available() is False); use --device cpu, or "
                             "install a CUDA build of PyTorch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        # (MPS has no float64, which evaluation and MetaNet's statistics accumulate in.)
        raise ValueError(f"--device {name}: neuroplast trains on cpu or cuda")
    return device


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer named in ``config`` over ``params`` (parameters or param groups)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """An epoch-stepped learning-rate schedule, or None."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step" and config.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, config.lr_milestones,
                                                    config.lr_gamma)
    if config.scheduler == "step":  # without milestones: decay every third of the epochs
        return torch.optim.lr_scheduler.StepLR(optimizer, max(1, config.epochs // 3),
                                               config.lr_gamma)
    return None


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
        check_augmentation(self.config.augment, self.config.augment_padding, data.input_shape)
        channels = data.input_shape[0] if data.input_shape else 1
        self.augmentation = BatchAugmentation(
            self.config.augment, self.config.augment_padding, self.config.seed,
            black_fill(data.input_mean, data.input_std, channels))
        self.method = method
        # The loop's own services come last: they see the epoch as the method left it.
        self.callbacks: list[Callback] = [method, CollapseGuard(), *callbacks, EpochPrinter(),
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
        self._position: dict[str, Any] | None = None  # set when resuming mid-epoch
        self._saved: tuple[int, int | None] | None = None  # (epoch, batch) of the checkpoint
        self._save_seconds: float | None = None  # what writing the last checkpoint cost
        self._unsaved_seconds = 0.0  # training time since then
        self._stop_signal: int | None = None
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

    def _agree(self, where: str, full: bool = False, diverged: bool = False) -> bool:
        """Under DDP: check that the ranks hold the same model after a point a policy may act;
        returns whether any rank's loss ``diverged`` (see ``DistributedContext.agree``)."""
        return self.strategy.agree(self.model, where, full, diverged)

    @property
    def mid_epoch(self) -> bool:
        """True when restored from a checkpoint saved part-way through an epoch (Ctrl-C)."""
        return self._position is not None

    # ------------------------------------------------------------------ helpers for policies
    # ------------------------------------------------------------------ training
    def _batches(self, epoch_rng: torch.Tensor):
        self.data_generator.set_state(epoch_rng)
        order = torch.randperm(len(self.data.y_train), generator=self.data_generator)
        order = order.to(self.data.y_train.device)  # no per-batch index copy for device data
        return [order[i : i + self.config.batch_size]
                for i in range(0, len(order), self.config.batch_size)]

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        position = self._position or {}
        self._position = None
        epoch_rng = position.get("epoch_rng", self.data_generator.get_state())
        batches = self._batches(epoch_rng)
        first = position.get("batch", 0)
        loss_sum = position.get("loss_sum", 0.0)
        correct = torch.tensor(position.get("correct", 0), dtype=torch.long, device=self.device)
        seen = position.get("seen", 0)
        self.model.train()
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch}/{self.config.epochs}",
                   # None: no bar when stderr is a log file, where it would only add noise
                   disable=None if self.config.progress else True, leave=False,
                   dynamic_ncols=True,
                   mininterval=0.5)
        done, steps_done = first, self.step  # batches fully applied, and the steps they took
        interrupt = _InterruptFlag()
        try:
            with _deferred_interrupt(interrupt, enabled=self.strategy.stops_alone):
                for index in range(first, len(batches)):
                    if interrupt.requested:  # between batches, so none is half applied
                        raise KeyboardInterrupt
                    batch_loss, batch_correct, batch_seen = self._train_batch(
                        epoch, index, batches[index])
                    loss_sum += batch_loss
                    correct += batch_correct
                    seen += batch_seen
                    done, steps_done = index + 1, self.step
                    if bar.disable is False and index % 10 == 0 and seen:
                        bar.set_postfix_str(
                            f"loss {loss_sum / seen:.4f} acc {correct.item() / seen:.3f} "
                            f"widths {self._width_text()}", refresh=False)
                    bar.update(1)
                if interrupt.requested:  # during the epoch's last batch
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._stop_signal = interrupt.signal_number
            # Save the exact position only between batches: an interrupt raised inside one
            # (a second signal, another handler's, a callback's) may follow its optimizer
            # step, so that run resumes from the last epoch's end instead. A rank's partial
            # sums are not the run's either (DDP stops at the epoch's end).
            if self.strategy.stops_alone and self.step == steps_done:
                self._position = {"epoch_rng": epoch_rng, "batch": done, "seen": seen,
                                  "loss_sum": loss_sum, "correct": correct.item()}
            raise
        finally:
            bar.close()
            self.loss_scale, self.batch_rows = 1.0, None
        totals = torch.tensor([loss_sum, float(correct.item()), float(seen)], dtype=torch.float64)
        loss_sum, correct_total, seen = self.all_reduce_sum_(totals).tolist()
        return loss_sum / max(seen, 1), round(correct_total) / max(seen, 1)

    def _train_batch(
        self, epoch: int, index: int, batch: torch.Tensor
    ) -> tuple[float, torch.Tensor, int]:
        """One optimizer step on this process's share of a global batch; returns its summed
        loss, correct predictions and example count (zeros for a rank with no share)."""
        rows = self._share(batch)
        x = self.data.x_train[rows].to(self.device, non_blocking=True)
        y = self.data.y_train[rows].to(self.device, non_blocking=True)
        rows_of_batch = None if self.batch_rows is None else self.batch_rows[1]
        x = self.augmentation(x, epoch, index, rows_of_batch, len(batch))
        for callback in self.callbacks:
            callback.on_batch_begin(self, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        value, correct, loss = self._backward(x, y)
        if not math.isfinite(value) and self.strategy.stops_alone:
            self._diverged(value, epoch, index)  # before the step: the last state stays good
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        for callback in self.callbacks:
            callback.after_backward(self)
        self.optimizer.step()
        self.step += 1
        if self.loss_scale:  # a rank with no share of this batch counts nothing
            sums = (value * len(y), correct, len(y))
        else:
            sums = (0.0, torch.zeros((), dtype=torch.long, device=self.device), 0)
        for callback in self.callbacks:
            callback.on_batch_end(self, loss)
        if self._agree(f"after batch {index + 1} of epoch {epoch}",
                       diverged=not math.isfinite(value)):
            self._diverged(value, epoch, index)  # on every rank at once
        return sums

    def _backward(self, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """The method's loss and its gradients for one batch, in ``config.accumulate``
        micro-batches whose losses are weighted by their share; returns the batch's mean loss,
        its correct predictions and the (detached) loss."""
        share, rows = self.loss_scale, self.batch_rows
        # Every rank runs as many micro-batches (each backward is an all-reduce under DDP):
        # as many as the smallest share of the global batch allows.
        size = len(y) if rows is None else rows[0]
        count = max(1, min(self.config.accumulate, size // self.strategy.world_size))
        parts = torch.arange(len(y)).tensor_split(min(count, len(y)))
        value, correct = 0.0, torch.zeros((), dtype=torch.long, device=self.device)
        try:
            for part in parts:
                whole = len(parts) == 1
                x_part, y_part = (x, y) if whole else (x[part], y[part])
                weight = 1.0 if whole else len(part) / len(y)
                if rows is not None and not whole:  # DDP: this part's rows of the global batch
                    self.batch_rows = (rows[0], rows[1][part.to(rows[1].device)])
                with self.autocast():
                    loss, logits = self.method.training_loss(self, x_part, y_part)
                scale = share * weight
                (loss * scale if scale != 1.0 else loss).backward()
                value += loss.item() * weight  # one sync: divergence check and running mean
                correct = correct + (logits.detach().argmax(1) == y_part).sum()
        finally:
            self.batch_rows = rows
        return value, correct, torch.tensor(value)

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

    def _width_text(self) -> str:
        return "-".join(str(w) for w in self.method.live_widths(self.model).values())

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

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` (or a policy sets ``stop_training``); returns history.

        Raises nothing for a diverged loss or Ctrl-C: both stop the run, keep a usable
        checkpoint and set ``stopped_early``.
        """
        try:
            for callback in self.callbacks:
                callback.on_train_begin(self)
            self._agree("when training starts", full=True)
            while self.epoch < self.config.epochs and not self.stop_training:
                epoch = self.epoch + 1
                started = time.perf_counter()
                self.events = []
                self.strategy.sync_rng_()
                for callback in self.callbacks:
                    callback.on_epoch_begin(self, epoch)
                self._agree(f"at the start of epoch {epoch}")
                train = self._train_epoch(epoch)
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
                if self.scheduler is not None:
                    self.scheduler.step()
                record = self._epoch_record(epoch, train, lr)
                seconds = time.perf_counter() - started
                record["seconds"] = seconds
                self.train_seconds += seconds
                self.epoch = epoch
                self.history.append(record)
                for callback in self.callbacks:
                    callback.on_epoch_logged(self, record)
            for callback in self.callbacks:
                callback.on_train_end(self)
            self._agree("when training ends", full=True)
            self.save()  # what on_train_end changed (a final compaction) is kept too
        except TrainingCollapsed as error:
            self.stopped_early = f"collapsed: {error}"
            kept = ("" if self._saved is None or self.run_dir is None else
                    f" The checkpoint of epoch {self._saved[0]} is kept.")
            self._tell(f"training stopped: {error}.{kept}")
        except TrainingDiverged as error:
            self.stopped_early = f"diverged: {error}"
            kept = ("No epoch finished, so there is no checkpoint to resume."
                    if self._saved is None or self.run_dir is None else
                    f"The last good checkpoint (epoch {self._saved[0]}) is kept.")
            self._tell(f"training stopped: {error}. {kept}")
        except RuntimeError as error:
            failure = self.strategy.failure(error, self.epoch + 1)
            if failure is None:
                raise
            raise failure from None
        except KeyboardInterrupt:
            # A preemption notice is told apart so the command line can exit as if killed by it.
            self.stopped_early = ("interrupted by SIGTERM" if self._stop_signal == signal.SIGTERM
                                  else "interrupted")
            if self._position is not None:
                self.save()
            self._tell(self._interrupted_message())
        finally:
            for callback in self.callbacks:
                callback.on_exit(self)
        return self.history

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
    def _checkpoint_due(self, epoch_seconds: float) -> bool:
        """Whether the epoch just finished is checkpointed (``TrainConfig.checkpoint_every``)."""
        self._unsaved_seconds += epoch_seconds
        if self.epoch >= self.config.epochs or self.stop_training:
            return True  # the last epoch, kept before on_train_end can stop the run
        every = self.config.checkpoint_every
        if every:
            return self.epoch % every == 0
        return self._save_seconds is None or self._unsaved_seconds >= 19 * self._save_seconds

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
            self._save_seconds = time.perf_counter() - started
            self._unsaved_seconds = 0.0
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


class _InterruptFlag:
    requested = False  # Ctrl-C pressed: stop before the next batch
    signal_number: int | None = None  # which signal asked


@contextlib.contextmanager
def _deferred_interrupt(flag: _InterruptFlag, enabled: bool) -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) or a SIGTERM (a scheduler's preemption notice) until the running
    batch is done, so a checkpoint never records a batch as pending that the optimizer has
    already applied; a second signal stops at once.

    Only in the main thread of a single process (signal handlers live there; under DDP a
    rank stops at the epoch's end anyway), and only for a signal whose handler is still
    Python's default (one ignored under nohup, or someone else's handler, is left alone).
    """
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in defaults}
    held = [number for number, default in defaults.items() if previous[number] is default]

    def hold(signum, frame) -> None:
        if flag.requested:  # a second signal: stop now, even inside a batch
            raise KeyboardInterrupt
        flag.requested, flag.signal_number = True, signum

    for number in held:
        signal.signal(number, hold)
    try:
        yield
    finally:
        for number in held:
            signal.signal(number, previous[number])
