"""The policy interface: what a sizing method is, and what it may read and do.

A policy (NPN, MetaNet, a baseline) is one small :class:`Method`: callbacks plus the few places
it may shape training. It decides *when* and *where* a network changes size and resizes through
the :class:`Context` it is given (``grow``/``prune``/``split`` keep the optimizer in step and
log the event); it never writes files.

The :class:`Context` is everything a method may use: the model and optimizer, the epoch and the
planned number of epochs (``config.epochs``), the seed and learning rate (``config``), the data
(``data.x_train``, ``data.x_val``, ...), the last epoch's metrics, event logging, an all-reduce,
and ``stop_training``. Two loops provide it: :class:`~neuroplast.train.Trainer` (the command
line's) and :class:`~neuroplast.sizing.SelfSizing` (inside your own loop).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from .core.groups import layer_widths
from .core.resize import grow_units, prune_units, split_units
from .distributed import SingleProcess
from .objective import Objective, objective

if TYPE_CHECKING:  # only for type hints
    from .core.trace import UnitGraph
    from .data import DataSplits
    from .distributed import DistributedContext
    from .train.loop import TrainConfig


class Evaluation(NamedTuple):
    """A model's mean loss, accuracy and the standard error of that mean on one split."""

    loss: float
    accuracy: float
    loss_se: float


class Context:
    """What a sizing method may read and do; a training loop fills it in.

    Attributes:
        model: the network (policies resize this one).
        optimizer: the optimizer whose state follows every resize.
        config: the loop's settings: ``epochs`` (planned), ``lr``, ``seed``, ``eval_batch_size``.
        data: the splits (``x_train``, ``y_train``, ``x_val``, ``y_val``; the test split is read
            once, at the end).
        epoch: completed epochs.
        last_metrics: the last epoch's ``val_loss``, ``val_accuracy``, ``val_loss_se``, ...
        stop_training: set it to end training after the current epoch.
        device: where the model lives.
        graph: the traced unit groups of a model neuroplast cannot walk (or None), for
            methods that resize any group (MetaNet's search).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    data: DataSplits
    device: torch.device
    distributed: DistributedContext | None = None
    strategy: DistributedContext | SingleProcess = SingleProcess()  # one process, or DDP ranks
    graph: UnitGraph | None = None  # a traced model's unit groups; None: its declared chains
    epoch: int = 0
    stop_training: bool = False

    def __init__(self) -> None:
        self.last_metrics: dict[str, Any] = {}
        self.events: list[str] = []

    @property
    def objective(self) -> Objective:
        """What training minimises (``config.loss``: cross-entropy by default, or mse)."""
        return objective(getattr(getattr(self, "config", None), "loss", "cross-entropy"))

    def validation_score(self) -> tuple[float, float]:
        """The last epoch's validation score (higher is better: the accuracy, or minus the
        loss for a regression) and its standard error: what methods keep the best of."""
        return self.objective.score(self.last_metrics, len(self.data.y_val))

    def training_examples(self, count: int, generator: torch.Generator
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``count`` training examples drawn at random with ``generator`` (for methods
        that refit on examples, such as MetaNet's compression)."""
        data = self.data
        stream = getattr(data.x_train, "examples", None)
        if stream is not None:  # training data streamed: the first examples of a seeded pass
            return stream(count, generator)
        count = min(count, len(data.y_train))
        index = torch.randperm(len(data.y_train), generator=generator)[:count]
        index = index.to(data.y_train.device)
        return data.x_train[index], data.y_train[index]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes under ``config.precision`` (bfloat16 autocast for "bf16-mixed")."""
        if getattr(self.config, "precision", "32") != "bf16-mixed":
            return contextlib.nullcontext()  # (cheaper than a disabled autocast, every step)
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def live_widths(self) -> dict[str, int]:
        """Units in use per resizable layer (a traced model's: per unit group)."""
        if self.graph is not None:
            return self.graph.widths()
        return self.method.live_widths(self.model)

    def width_meanings(self) -> dict[str, str]:
        """What each entry of :meth:`live_widths` counts."""
        if self.graph is not None:
            kinds = {"units": "units it outputs", "stream": "channels of the residual stream",
                     "heads": "attention heads"}
            return {name: kinds[group.kind] for name, group in self.graph.groups.items()}
        return self.method.width_meanings(self.model)

    @property
    def train_model(self) -> nn.Module:
        """What training forward passes go through (a DDP wrapper under data parallelism)."""
        return self.model

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over data-parallel ranks in place (nothing in one process).

        Policies call it on statistics gathered from their rank's batches (activation sums,
        counts) before deciding from them, so every rank decides the same.
        """
        return self.strategy.all_reduce_sum_(tensor)

    def log_event(self, text: str) -> None:
        """Record a structural event (shown in the progress output, metrics and report)."""
        self.events.append(text)

    def grow(self, layer: str, n: int, **values: Any):
        """``grow_units`` with this trainer's optimizer, logged as an event."""
        group = grow_units(self.model, layer, n, optimizer=self.optimizer, **values)
        self.log_event(f"grew {layer} by {n} to {group.width}")
        return group

    def prune(self, layer: str, keep):
        """``prune_units`` with this trainer's optimizer, logged as an event."""
        before = layer_widths(self.model)[layer]
        group = prune_units(self.model, layer, keep, optimizer=self.optimizer)
        self.log_event(f"pruned {layer} by {before - group.width} to {group.width}")
        return group

    def split(self, layer: str, units, **options: Any):
        """``split_units`` with this trainer's optimizer, logged as an event."""
        group = split_units(self.model, layer, units, optimizer=self.optimizer, **options)
        self.log_event(f"split {len(units)} units of {layer} to {group.width}")
        return group

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> Evaluation:
        """Mean loss (``objective``), accuracy (NaN for a regression) and the loss's standard
        error on a split (eval mode).

        Under DDP every rank must call it: each evaluates its share and the sums are reduced.
        """
        if len(targets) == 0:
            return Evaluation(math.nan, math.nan, math.nan)
        objective = self.objective
        was_training = self.model.training
        self.model.eval()
        # Each rank evaluates its share (one process: all of it); the sums are reduced.
        total = len(targets)
        inputs, targets = self.strategy.shard(inputs), self.strategy.shard(targets)
        # summed loss, squared loss, correct predictions
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for start in range(0, len(targets), self.config.eval_batch_size):
            x = inputs[start : start + self.config.eval_batch_size].to(self.device)
            y = targets[start : start + self.config.eval_batch_size].to(self.device)
            with self.autocast():
                outputs = self.model(x).float()
            losses = objective.example_losses(outputs, y).double()
            sums[0] += losses.sum()
            sums[1] += losses.square().sum()
            correct = objective.correct(outputs, y)
            sums[2] += correct if correct is not None else math.nan
        self.model.train(was_training)
        loss_sum, square_sum, correct = self.all_reduce_sum_(sums).cpu().tolist()
        mean = loss_sum / total
        variance = max(square_sum / total - mean * mean, 0.0) * total / max(total - 1, 1)
        return Evaluation(mean, correct / total, math.sqrt(variance / total))



def option(default: Any, help: str) -> Any:
    """A method hyper-parameter: a dataclass field whose ``help`` the command line shows.

    Example: ``keep: float = option(0.5, "fraction of units kept")`` becomes ``--<method>-keep``.
    """
    from dataclasses import field

    return field(default=default, metadata={"help": help})


class Callback:
    """Hooks a training loop calls (the :class:`~neuroplast.train.Trainer`, or your own through
    :class:`~neuroplast.sizing.SelfSizing`); all optional, all no-ops here."""

    def on_train_begin(self, trainer: Context) -> None:
        """Before the first epoch (also when a run is resumed)."""

    def on_train_end(self, trainer: Context) -> None:
        """After the last epoch, before the summary is written."""

    def on_epoch_begin(self, trainer: Context, epoch: int) -> None:
        """Before the epoch's first batch; ``epoch`` counts from 1."""

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        """After the epoch's evaluation (``trainer.last_metrics``); resize here."""

    def on_batch_begin(self, trainer: Context, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Before the forward pass of a training batch."""

    def after_backward(self, trainer: Context) -> None:
        """Gradients are ready and the optimizer has not stepped yet."""

    def on_batch_end(self, trainer: Context, loss: torch.Tensor) -> None:
        """After the optimizer step; ``loss`` is the batch's (detached) training loss."""

    def on_epoch_logged(self, trainer: Context, record: dict[str, Any]) -> None:
        """The epoch's record is complete and in the history (print, log, checkpoint here)."""

    def on_exit(self, trainer: Context) -> None:
        """Training is over, however it ended (close files here)."""

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
    #: True for a method that resizes the groups of a traced model (``Context.graph``).
    resizes_traced_groups: ClassVar[bool] = False
    #: True for a method that reads training examples itself (MetaNet's compression).
    reads_training_examples: ClassVar[bool] = False
    #: Training settings (TrainConfig fields) the method needs to finish its own schedule; the
    #: command line uses them for a run without a recipe, under any option typed.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: ``--help`` lists a method's options in groups: these titles name the options a strategy
    #: or mode owns (``{"expand mode (--npn-mode expand)": ("init_sizes", ...)}``); options in
    #: no group are the method's top-level ones (a handful, what most runs touch).
    option_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Internal constants: set in a recipe or from Python, never listed by ``--help``.
    internal_options: ClassVar[tuple[str, ...]] = ()
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

    def penalty(self, trainer: Context) -> torch.Tensor | None:
        """A regularizer added to the data loss (an L0 term, say), or None."""
        return None

    def training_loss(
        self, trainer: Context, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss to back-propagate and the logits, for one training batch.

        Run the forward pass through ``trainer.train_model`` (the DDP wrapper under
        distributed training, else the model itself).
        """
        logits = getattr(trainer, "train_model", trainer.model)(inputs)
        loss = trainer.objective.loss(logits, targets)
        extra = self.penalty(trainer)
        return (loss if extra is None else loss + extra), logits

    def metrics(self, trainer: Context) -> dict[str, float]:
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


