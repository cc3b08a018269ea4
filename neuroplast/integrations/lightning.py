"""A Lightning ``Callback`` that makes a LightningModule's network self-sizing.

Example::

    callback = NeuroplastCallback("npn", val=(x_val, y_val), model_attribute="model")
    Trainer(max_epochs=20, callbacks=[callback]).fit(module, loader)
    callback.history[-1]["widths"]

Lightning's hooks map onto :class:`~neuroplast.sizing.SelfSizing`'s: ``setup`` prepares the
network (NPN attaches its gates) before ``configure_optimizers`` runs; the module's
``training_step`` is wrapped so its loss carries the method's terms (ARM's two passes for
NPN); ``on_before_optimizer_step`` is the method's ``after_backward``, ``on_train_batch_end``
its ``on_batch_end``; ``on_train_epoch_end`` evaluates ``val`` and lets the method decide and
resize, with the optimizer's state carried along. The planned number of epochs, which the
method's schedule follows, is ``max_epochs``, or the epochs ``max_steps`` optimizer steps take
(``accumulate_grad_batches`` counted), whichever ends first.

Resuming: the callback's state in Lightning's checkpoints holds the method's state, the
completed epochs, the history and the live widths, so ``trainer.fit(module, ckpt_path=...)``
with a freshly built module goes on where the run stopped: the network, prepared in
``setup``, takes the checkpoint's widths as Lightning loads its weights (a
``load_state_dict`` pre-hook), before ``configure_optimizers`` builds the optimizer whose
state Lightning then restores. Lightning does not restore the global random generators, which
NPN's gate draws and a shuffling loader use.

Limits: one device (DDP is refused, see :func:`~neuroplast.integrations.refuse_distributed`),
one optimizer, automatic optimization, gate draws per batch. Under NPN the training step runs
twice per batch (the second time without gradients and with ``self.log`` muted).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.hooks import RemovableHandle

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
)

Split = tuple[torch.Tensor, torch.Tensor]


class NeuroplastCallback(Callback):
    """Make ``getattr(pl_module, model_attribute)`` self-sizing with ``method``.

    Args:
        method: a method name (``"npn"``, ``"metanet"``, ...) or a ``Method`` object.
        val: the validation split ``(inputs, targets)`` every decision is taken on.
        train: the training split, for methods that read examples (MetaNet's search).
        model_attribute: the module's attribute holding the network (it maps inputs to logits).
        seed: the seed of the method's own random choices.
        **options: the method's options (``k_schedule="1:7"``, ``implementation="physical"``).

    After training, ``history`` holds one dict per epoch (metrics, widths, events) and
    ``sizing`` the :class:`~neuroplast.sizing.SelfSizing` context. The callback's
    :meth:`state_dict` goes into Lightning's checkpoints, so ``trainer.fit(module,
    ckpt_path=...)`` resumes a run, its resized network included.
    """

    def __init__(self, method: str | Method, val: Split, train: Split | None = None,
                 model_attribute: str = "model", seed: int = 0, **options: Any) -> None:
        self.method = build(method, options)
        self.val, self.train, self.seed = val, train, seed
        self.model_attribute = model_attribute
        self.sizing: FrameworkSizing | None = None
        self.history: list[dict[str, Any]] = []
        self._added: set[str] | None = None  # names of the parameters the method added
        self._prepared: nn.Module | None = None  # the network they were added to
        self._wrapped: tuple[LightningModule, Any] | None = None  # module, its own attribute
        self._resize_on_load: RemovableHandle | None = None  # until the checkpoint loaded
        self._resume: dict[str, Any] | None = None  # the state load_state_dict was given

    def network(self, pl_module: LightningModule) -> nn.Module:
        """The network the method sizes."""
        try:
            network = pl_module.get_submodule(self.model_attribute)
        except AttributeError:
            network = None
        if not isinstance(network, nn.Module):
            raise AttributeError(f"the LightningModule has no network at .{self.model_attribute}"
                                 ": give NeuroplastCallback(model_attribute=...)")
        return network

    # ------------------------------------------------------------ before the optimizer
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            # validate/test/predict from a checkpoint of a resized network: its widths first
            if self._resize_on_load is None and self._prepared is not None:
                self._resize_on_load = resize_to_state_dict(self.network(pl_module))
            return
        refuse_distributed(trainer.world_size, "Lightning")
        if not pl_module.automatic_optimization:
            raise ValueError("neuroplast's Lightning callback needs automatic optimization: its "
                             "terms join the loss your training_step returns")
        if self._prepared is not self.network(pl_module):
            # Once per network: a second fit of the same module goes on with it as it is.
            network, self._added = prepare(self.method, self.network(pl_module))
            pl_module.set_submodule(self.model_attribute, network)
            self._prepared = network
        if self._resize_on_load is None:
            # Lightning loads a checkpoint's weights after setup, before the optimizer exists.
            self._resize_on_load = resize_to_state_dict(self.network(pl_module))
        if self._wrapped is None:
            original = pl_module.training_step
            self._wrapped = (pl_module, vars(pl_module).get("training_step"))

            def training_step(*args: Any, **kwargs: Any) -> Any:
                return self.training_step(pl_module, original, *args, **kwargs)

            pl_module.training_step = training_step

    def training_step(self, pl_module: LightningModule, original: Callable[..., Any],
                      batch: Any, *args: Any, **kwargs: Any) -> Any:
        """``original(batch, ...)`` with the method's terms in its loss (the wrapped step)."""
        pairs = batch if isinstance(batch, (list, tuple)) and len(batch) == 2 else (batch, None)
        if self.sizing is not None:
            self.sizing.begin_batch(*pairs)
        outputs: list[Any] = []

        def compute() -> torch.Tensor:
            output = original(batch, *args, **kwargs)
            outputs.append(output)
            loss = output.get("loss") if isinstance(output, Mapping) else output
            if not isinstance(loss, torch.Tensor):
                raise TypeError("under neuroplast a training_step returns its loss (a tensor, "
                                f"or a dict with 'loss'), not {type(output).__name__}")
            return loss

        loss = sized_loss(self.method, self.network(pl_module), compute, self.sizing,
                          quiet=lambda: _muted_logging(pl_module))
        if self.sizing is not None:
            self.sizing.record_batch(loss, batch_size(batch))
        main = outputs[0]  # the main pass's output, with the loss that trains
        return {**main, "loss": loss} if isinstance(main, Mapping) else loss

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError("neuroplast's Lightning callback sizes with one optimizer; "
                             f"configure_optimizers gave {len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        scheduled = any(config.scheduler.optimizer is optimizer
                        for config in trainer.lr_scheduler_configs)
        adopt_optimizer(self.method, self.network(pl_module), optimizer, self._added or set(),
                        scheduled)

    # ------------------------------------------------------------ training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_load_hook()
        resume, self._resume = self._resume, None
        self.sizing = FrameworkSizing(
            self.method, self.network(pl_module), trainer.optimizers[0],
            epochs=_planned_epochs(trainer), val=self.val, train=self.train,
            seed=self.seed, prepared=True, resume=resume)
        self.history = list(resume["history"]) if resume else []
        if resume:  # a step checkpoint on an epoch's last step: that epoch's end is owed
            self.history += self.sizing.catch_up(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The state Lightning checkpoints: the completed epochs, the method's state
        (``Method.state_dict()``), the live widths and ``history``."""
        return {} if self.sizing is None else self.sizing.state(self.history)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state for the training that follows (its ``on_train_start``)."""
        self._resume = dict(state_dict) or None

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.sizing is not None:
            self.sizing.gradients_ready()  # NPN with its own gate optimizer steps it here

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.sizing is not None:
            self.sizing.end_batch()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.sizing is None:
            return
        self.history.append(self.sizing.epoch_end())  # validation, decisions, resizes
        if self.sizing.stop_training:
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.sizing is not None:
            self.sizing.finish()  # NPN's final compaction, if the last epoch did not run it

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_load_hook()
        if self._wrapped is not None:
            module, own = self._wrapped
            del module.training_step  # the class's training_step again ...
            if own is not None:
                module.training_step = own  # ... or the instance's own
            self._wrapped = None

    def _remove_load_hook(self) -> None:
        if self._resize_on_load is not None:
            self._resize_on_load.remove()
            self._resize_on_load = None


def _planned_epochs(trainer: Trainer) -> int:
    """The epochs the method plans for: ``max_epochs``, or the epochs ``max_steps`` optimizer
    steps take (a step every ``accumulate_grad_batches`` batches and at an epoch's end),
    whichever ends first."""
    batches = trainer.num_training_batches
    per_epoch = (math.ceil(batches / trainer.accumulate_grad_batches)
                 if 0 < batches < math.inf else None)
    return planned_epochs(trainer.max_epochs, "Lightning", max_steps=trainer.max_steps,
                          steps_per_epoch=per_epoch)


@contextlib.contextmanager
def _muted_logging(module: LightningModule) -> Iterator[None]:
    """``self.log`` and ``self.log_dict`` do nothing: the antithetic pass logs no metrics."""
    saved = {name: vars(module).get(name) for name in ("log", "log_dict")}
    for name in saved:
        setattr(module, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, value in saved.items():
            delattr(module, name)
            if value is not None:
                setattr(module, name, value)
