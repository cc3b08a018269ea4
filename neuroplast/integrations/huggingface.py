"""A Hugging Face ``transformers.Trainer`` whose model sizes itself while it trains.

Example::

    trainer = SelfSizingTrainer(model=model, args=TrainingArguments(...), train_dataset=data,
                                method="npn", val=(x_val, y_val), model_attribute="net")
    trainer.train()
    trainer.history[-1]["widths"]

A subclass rather than a ``TrainerCallback``: callbacks can neither change the loss nor give the
gates their own param group before the LR scheduler is built. The model is prepared (NPN's
gates attached) in ``__init__``, so ``create_optimizer`` sees the gates, and moves them into the
groups the method wants before ``create_scheduler`` runs. ``compute_loss`` adds the method's
terms (ARM's two passes for NPN). A callback it installs runs the method's hooks:
``on_pre_optimizer_step`` (its ``after_backward``), ``on_step_end`` (``on_batch_end``) and
``on_epoch_end``, which evaluates ``val`` and lets the method decide and resize. A resize
replaces parameters inside the optimizer's param groups and carries their state, so the
Trainer's optimizer and LR scheduler go on as they were. The planned number of epochs, which
the method's schedule follows, is the Trainer's (``num_train_epochs``, or the epochs
``max_steps`` takes).

Resuming: ``save_model``, which writes every checkpoint's weights, also writes the sizing
state next to them (``neuroplast_sizing.json`` and ``neuroplast_sizing.safetensors``: the
method's state, the completed epochs, the history and the live widths; JSON and safetensors,
no pickle). ``train(resume_from_checkpoint=...)`` then resizes the fresh network to the
checkpoint's widths as the Trainer loads its weights (a ``load_state_dict`` pre-hook), before
it builds the optimizer whose state it restores, and restores the method's state.

Limits: one device (DDP and ``DataParallel`` are refused), gate draws per batch; under NPN the
loss is computed twice per batch (the second time without gradients). ``load_best_model_at_end``
resizes the network to the best checkpoint's widths as it loads it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..core.checkpoint import _decode, _encode, write_atomic
from ..policy import Method
from . import (
    FrameworkSizing,
    adopt_optimizer,
    batch_size,
    build,
    planned_epochs,
    prepare,
    refuse_distributed,
    resize_to_state_dict,
    sized_loss,
    unwrap_optimizer,
)

Split = tuple[torch.Tensor, torch.Tensor]

#: The files a checkpoint's sizing state is in, next to the Trainer's own.
STATE_FILE, TENSORS_FILE = "neuroplast_sizing.json", "neuroplast_sizing.safetensors"
FORMAT = "neuroplast-sizing"


class SelfSizingTrainer(Trainer):
    """``transformers.Trainer`` with a neuroplast method sizing ``model`` (or a part of it).

    Args (besides the Trainer's own, ``model`` and ``args`` first):
        method: a method name (``"npn"``, ``"metanet"``, ...) or a ``Method`` object.
        val: the validation split ``(inputs, targets)`` every decision is taken on.
        train: the training split, for methods that read examples (MetaNet's search).
        model_attribute: the attribute of ``model`` holding the network to size; it (or the
            model, by default) maps an input tensor to logits or to an output with ``logits``.
        method_options: the method's options (``{"k_schedule": "1:7"}``).
        seed: the seed of the method's own random choices.

    After ``train()``, ``history`` holds one dict per epoch (metrics, widths, events) and
    ``sizing`` the :class:`~neuroplast.sizing.SelfSizing` context. Checkpoints hold the sizing
    state too, so ``train(resume_from_checkpoint=...)`` resumes a run, its resized network
    included.
    """

    def __init__(self, model: nn.Module | None = None, args: Any = None, *trainer_args: Any,
                 method: str | Method, val: Split, train: Split | None = None,
                 model_attribute: str | None = None,
                 method_options: Mapping[str, Any] | None = None, seed: int = 0,
                 **trainer_kwargs: Any) -> None:
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        refuse_distributed(max(self.args.world_size, self.args.n_gpu), "Hugging Face")
        if self.model is None:
            raise ValueError("SelfSizingTrainer needs a model (model_init is not supported)")
        self.method = build(method, method_options or {})
        self.val, self.train_split, self.seed = val, train, seed
        self.model_attribute = model_attribute
        network = self.network
        device = next(network.parameters()).device
        network, self._added = prepare(self.method, network)
        network.to(device)  # the gates join the model where the Trainer put it
        if model_attribute:
            self.model.set_submodule(model_attribute, network)
        else:
            self.model = network
        self.sizing: FrameworkSizing | None = None
        self.history: list[dict[str, Any]] = []
        self._resume: dict[str, Any] | None = None  # a checkpoint's sizing state
        self._resize_on_load: RemovableHandle | None = None  # while a checkpoint loads
        self.add_callback(_SizingCallback(self))

    @property
    def network(self) -> nn.Module:
        """The network the method sizes."""
        if not self.model_attribute:
            return self.model
        return self.model.get_submodule(self.model_attribute)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any,
              **kwargs: Any) -> Any:
        """The Trainer's ``train``. From a checkpoint (``True``: the last in ``output_dir``) it
        also resizes the network to the checkpoint's widths before the weights load, and
        restores the method's state and ``history`` before training goes on."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self._resume = load_sizing_state(resume_from_checkpoint)
            self._resize_on_load = resize_to_state_dict(self.network)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._remove_load_hook()
            self._resume = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model`` (which writes every checkpoint's weights), with the
        sizing state next to the weights once training started."""
        super().save_model(output_dir, _internal_call)
        if self.sizing is not None and self.args.should_save:
            save_sizing_state(output_dir or self.args.output_dir,
                              self.sizing.state(self.history))

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, the method's parameters in the groups it wants them in."""
        optimizer = super().create_optimizer(model)
        adopt_optimizer(self.method, self.network, unwrap_optimizer(optimizer), self._added,
                        scheduled=self.lr_scheduler is not None)
        return optimizer

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        """The Trainer's loss with the method's terms (when training)."""
        parent = super().compute_loss
        if not model.training:  # evaluation and prediction: the loss as it is
            return parent(model, inputs, return_outputs=return_outputs,
                          num_items_in_batch=num_items_in_batch)
        if self.sizing is not None:
            self.sizing.begin_batch(inputs, inputs.get("labels"))
        outputs: list[Any] = []

        def compute() -> torch.Tensor:
            loss, output = parent(model, inputs, return_outputs=True,
                                  num_items_in_batch=num_items_in_batch)
            outputs.append(output)
            return loss

        # Where the Trainer does not divide a micro-batch's loss by the accumulation steps (the
        # model normalises by the tokens of the whole step), the penalty must be divided here.
        undivided = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None)
        scale = 1.0 / self.current_gradient_accumulation_steps if undivided else 1.0
        loss = sized_loss(self.method, self.network, compute, self.sizing, penalty_scale=scale)
        if self.sizing is not None:
            self.sizing.record_batch(loss, batch_size(inputs))
        return (loss, outputs[0]) if return_outputs else loss

    def _start_sizing(self, epochs: float, completed: float | None = None) -> None:
        self._remove_load_hook()  # the checkpoint, if any, is loaded
        resume, self._resume = self._resume, None
        self.sizing = FrameworkSizing(
            self.method, self.network, unwrap_optimizer(self.optimizer),
            epochs=planned_epochs(epochs, "Hugging Face"), val=self.val, train=self.train_split,
            seed=self.seed, prepared=True, resume=resume)
        self.history = list(resume["history"]) if resume else []
        if resume and completed:  # a step checkpoint on an epoch's last step: its end is owed
            self.history += self.sizing.catch_up(math.floor(completed + 1e-6))

    def _load_best_model(self) -> None:
        """The Trainer's ``load_best_model_at_end``, into a network resized to the best
        checkpoint's widths (a run that resized after it would not load otherwise)."""
        handle = resize_to_state_dict(self.network)
        try:
            super()._load_best_model()
        finally:
            handle.remove()

    def _remove_load_hook(self) -> None:
        if self._resize_on_load is not None:
            self._resize_on_load.remove()
            self._resize_on_load = None


def save_sizing_state(directory: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (JSON values and tensors) into ``directory``: the tensors in
    safetensors, the rest as JSON; each file replaced atomically, the JSON last."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(dict(state), tensors, "state")
    write_atomic(directory / TENSORS_FILE, safetensors.torch.save(tensors))
    manifest = {"format": FORMAT, "version": 1, "state": encoded}
    write_atomic(directory / STATE_FILE, json.dumps(manifest, indent=1).encode())


def load_sizing_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The state :func:`save_sizing_state` wrote into a checkpoint folder."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no neuroplast sizing state ({STATE_FILE}): resume from a "
            "checkpoint a SelfSizingTrainer wrote")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a neuroplast sizing state")
    tensors = safetensors.torch.load_file(Path(directory) / TENSORS_FILE)
    return _decode(manifest["state"], tensors)


class _SizingCallback(TrainerCallback):
    """The method's hooks at the Trainer's points (the subclass handles loss and optimizer)."""

    def __init__(self, trainer: SelfSizingTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._start_sizing(state.num_train_epochs, state.epoch)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.sizing is not None:
            self.trainer.sizing.gradients_ready()  # NPN with its own gate optimizer steps it

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.sizing is not None:
            self.trainer.sizing.end_batch()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sizing = self.trainer.sizing
        if sizing is None:
            return
        self.trainer.history.append(sizing.epoch_end())  # validation, decisions, resizes
        if sizing.stop_training:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.sizing is not None:
            self.trainer.sizing.finish()
