"""A sizing method inside your own training loop.

:class:`SelfSizing` is the :class:`~neuroplast.policy.Context` of a loop you wrote: it holds
the method (NPN, MetaNet, a baseline), calls its hooks where the Trainer would, and evaluates
the validation split at each epoch's end, where the method decides (NPN's k schedule, its
price and expand steps, physical pruning; MetaNet's width search). Driven with the same
batches, seed and settings, it makes the Trainer's decisions: it runs the same method code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .data import DataSplits
from .policy import Context, Method
from .train.callbacks import CollapseGuard
from .train.loop import TrainConfig

Split = tuple[torch.Tensor, torch.Tensor]


class SelfSizing(Context):
    """Make the model of your own loop self-sizing with ``method``, in five lines.

    Args:
        method: a method name (``"npn"``, ``"metanet"``, ``"magnitude"``, ...; see
            ``neuroplast list``) or a :class:`~neuroplast.policy.Method` object.
        model: your model (an ``nn.Sequential``, a registered or built-in model); a method that
            adds gates adds them in place, so keep using ``sizing.model``.
        optimizer: your optimizer over ``model.parameters()``; parameters a method adds (NPN's
            gates) join it as a new param group, and its state follows every resize.
        epochs: how many epochs your loop runs (the method's schedule follows it).
        val: the validation split ``(inputs, targets)``: every decision is taken on it.
        train: the training split, for methods that read training examples (MetaNet's search,
            NPN's expand mode); batches still come from your loop.
        seed: the seed of the method's own random choices.
        example: an example input to trace the model with (any model: a residual network, a
            transformer); its unit groups (:func:`~neuroplast.trace_unit_groups`) are what
            MetaNet's search resizes, by default every layer's units (``layers="..."`` names
            groups, residual streams and heads included). Without it the model's declared chains
            are used.
        prepared: ``model`` already went through ``method.prepare_model`` (the Lightning and
            Hugging Face integrations prepare it before their framework builds the optimizer).
        loss: ``"cross-entropy"`` (classification) or ``"mse"`` (regression: float targets;
            the method's loss, validation and decisions use the squared error).
        **options: the method's options (``k_schedule="1:7,1001:inf"``, ``mode="expand"``).

    Example::

        sizing = SelfSizing("npn", model, optimizer, epochs=20, val=(x_val, y_val))
        for epoch in range(20):
            for x, y in batches:
                optimizer.zero_grad()
                sizing.loss(x, y).backward()   # the method's loss: ARM's two passes for NPN
                sizing.step()                  # optimizer.step() and the method's batch hooks
            sizing.epoch_end()                 # validation, decisions, resizing
    """

    def __init__(self, method: str | Method, model: nn.Module,
                 optimizer: torch.optim.Optimizer, *, epochs: int, val: Split,
                 train: Split | None = None, seed: int = 0, example: Any = None,
                 prepared: bool = False, loss: str = "cross-entropy", **options: Any) -> None:
        super().__init__()
        if isinstance(method, str):
            from .methods import build_method

            method = build_method(method, options)
        elif options:
            raise TypeError("give options to the Method object itself, not to SelfSizing")
        parameter = next(model.parameters())
        self.device = parameter.device
        x_val, y_val = val
        if train is None and method.reads_training_examples:
            raise ValueError(f"{method.name} reads training examples itself (its compression "
                             "refits on them): pass train=(x_train, y_train)")
        x_train, y_train = train if train is not None else (x_val[:0], y_val[:0])
        self.data = DataSplits(
            name="own loop", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
            x_test=x_val[:0], y_test=y_val[:0],
            num_classes=1 if y_val.is_floating_point() else
            int(max(y_val.max(), y_train.max() if len(y_train) else 0)) + 1,
            input_shape=tuple(x_val.shape[1:]))
        first = optimizer.param_groups[0]  # (its lr before a scheduler's warm-up, if any)
        self.config = TrainConfig(epochs=epochs, lr=first.get("initial_lr", first["lr"]),
                                  seed=seed, progress=False, loss=loss)
        self.config.validate()
        self.method = method
        if example is not None:
            if not method.resizes_traced_groups:
                raise ValueError(
                    f"example= traces the model for methods that resize its unit groups "
                    f"(metanet); {method.name} does not: drop example=, or put NPN gates on a "
                    "traced model with neuroplast.gates.attach_traced_gates")
            from .core.trace import trace_unit_groups

            self.graph = trace_unit_groups(model, example)
        # An integration prepares the model before its framework builds the optimizer.
        self.model = (model if prepared else method.prepare_model(model)).to(self.device)
        self.optimizer = optimizer
        join_optimizer(method, self.model, optimizer, self.config.lr)
        self.callbacks = [method, CollapseGuard()]
        self._in_epoch = False
        self._finished = False
        # loss summed over examples, correct, examples, examples whose predictions were scored
        self._sums = [0.0, 0, 0, 0]
        self._loss: torch.Tensor | None = None
        for callback in self.callbacks:
            callback.on_train_begin(self)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The method's training loss for one batch (call ``backward()`` on it)."""
        self.begin_batch(inputs, targets)
        loss, outputs = self.method.training_loss(self, inputs, targets)
        correct = self.objective.correct(outputs, targets)
        self.record_batch(loss, len(targets), None if correct is None else int(correct))
        return loss

    def step(self) -> None:
        """After ``backward()``: the method's gradient hooks, ``optimizer.step()``, its batch
        hooks."""
        if self._loss is None:
            raise RuntimeError("call sizing.loss(x, y) and backward() before sizing.step()")
        self.gradients_ready()
        self.optimizer.step()
        self.end_batch()

    # The pieces of loss() and step(), for a framework that runs the forward, backward and
    # optimizer step itself (neuroplast.integrations): called in this order, once per batch.
    def begin_batch(self, inputs: Any = None, targets: Any = None) -> None:
        """Start an epoch at its first batch; train mode; the method's ``on_batch_begin``."""
        if not self._in_epoch:
            self._in_epoch, self.events, self._sums = True, [], [0.0, 0, 0, 0]
            for callback in self.callbacks:
                callback.on_epoch_begin(self, self.epoch + 1)
        self.model.train()
        for callback in self.callbacks:
            callback.on_batch_begin(self, inputs, targets)

    def record_batch(self, loss: torch.Tensor, examples: int, correct: int | None = None) -> None:
        """Count the batch's loss (and correct predictions, when known) in the epoch's
        training metrics."""
        self._loss = loss.detach()
        self._sums[0] += float(self._loss) * examples
        self._sums[2] += examples
        if correct is not None:
            self._sums[1] += correct
            self._sums[3] += examples

    def gradients_ready(self) -> None:
        """Gradients are in and the optimizer has not stepped: the method's ``after_backward``."""
        for callback in self.callbacks:
            callback.after_backward(self)

    def end_batch(self) -> None:
        """After the optimizer step: the method's ``on_batch_end``."""
        loss = self._loss if self._loss is not None else torch.zeros(())
        for callback in self.callbacks:
            callback.on_batch_end(self, loss)
        self._loss = None

    def finish(self) -> None:
        """The method's ``on_train_end`` (NPN's final compaction), once."""
        if not self._finished:
            self._finished = True
            for callback in self.callbacks:
                callback.on_train_end(self)

    def epoch_end(self) -> dict[str, Any]:
        """Evaluate the validation split and let the method decide; returns the epoch's
        metrics with the widths and events. After the last epoch the method finishes (NPN's
        final compaction); ``stop_training`` says whether it wants to stop early."""
        epoch = self.epoch + 1
        loss_sum, correct, seen, scored = self._sums
        val = self.evaluate(self.data.x_val, self.data.y_val)
        self.last_metrics = {
            "epoch": epoch, "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / scored if scored else math.nan, "val_loss": val.loss,
            "val_accuracy": val.accuracy, "val_loss_se": val.loss_se,
        }
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch)
        self.epoch, self._in_epoch = epoch, False
        if epoch >= self.config.epochs or self.stop_training:
            self.finish()
        return {**self.last_metrics, "widths": self.live_widths(),
                "events": list(self.events)}


def join_optimizer(method: Method, model: nn.Module, optimizer: torch.optim.Optimizer,
                   lr: float) -> bool:
    """Add the parameters the method's param groups list and ``optimizer`` lacks (NPN's gates)
    as new param groups, with the method's settings; True when a group was added."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    added = False
    for group in method.param_groups(model, lr) or []:
        fresh = [p for p in group["params"] if id(p) not in known]
        if fresh:
            optimizer.add_param_group({**group, "params": fresh})
            known.update(id(p) for p in fresh)
            added = True
    return added
