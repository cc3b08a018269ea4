"""Self-sizing inside other frameworks' training loops: Lightning and Hugging Face.

* :class:`~neuroplast.integrations.lightning.NeuroplastCallback`, a Lightning ``Callback``;
* :class:`~neuroplast.integrations.huggingface.SelfSizingTrainer`, a ``transformers.Trainer``
  (a subclass: a ``TrainerCallback`` can neither change the loss nor the optimizer's groups).

Both drive a :class:`~neuroplast.sizing.SelfSizing` context, so a method runs the code it runs
under ``neuroplast train``; this module holds what they share. The framework, not neuroplast,
computes the loss, so NPN's ARM estimator runs the user's whole loss computation twice (see
:func:`sized_loss`). A run resumes from the framework's own checkpoint: the method's state goes
into it (:meth:`FrameworkSizing.state`), and a network a resize left narrower or wider than
the freshly built one takes the checkpoint's widths before its weights load
(:func:`resize_to_state_dict`). Nothing here imports Lightning or transformers:
``import neuroplast`` and ``import neuroplast.integrations`` never need them.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..core.groups import find_unit_groups
from ..core.resize import set_layer_widths
from ..gates.npn import (
    _antithetic,
    _frozen_batchnorm_statistics,
    _rng_state,
    _set_rng_state,
    gradient_term,
    npn_gates,
)
from ..methods.npn import NPN
from ..policy import Context, Evaluation, Method
from ..sizing import SelfSizing, join_optimizer

__all__ = ["NeuroplastCallback", "SelfSizingTrainer"]


def __getattr__(name: str) -> Any:
    # The framework loads only when its integration is used.
    if name == "NeuroplastCallback":
        from .lightning import NeuroplastCallback

        return NeuroplastCallback
    if name == "SelfSizingTrainer":
        from .huggingface import SelfSizingTrainer

        return SelfSizingTrainer
    raise AttributeError(f"module 'neuroplast.integrations' has no attribute '{name}'")


def build(method: str | Method, options: Mapping[str, Any]) -> Method:
    """The method object for a name and options, or the object given (then without options)."""
    if isinstance(method, str):
        from ..methods import build_method

        return build_method(method, dict(options))
    if options:
        raise TypeError("give options to the Method object itself, not to the integration")
    return method


def refuse_distributed(world_size: int, framework: str) -> None:
    """A resize changes parameter shapes on one process only: DDP's reducer and the other
    ranks' replicas would no longer match, so the integrations run on one device."""
    if world_size > 1:
        raise RuntimeError(
            f"neuroplast's {framework} integration runs on one device (this run has "
            f"{world_size} processes): a resize would change one replica's parameters under "
            "DDP. Use `neuroplast train --distributed ...` (neuroplast's own data-parallel "
            "trainer, which resizes every rank alike) or a single device")


def prepare(method: Method, model: nn.Module) -> tuple[nn.Module, set[str]]:
    """``method.prepare_model(model)`` and the names of the parameters it added (NPN's
    ``phi``; names, as a resize replaces the tensors but keeps their names).

    Runs before the framework builds its optimizer, so the gates exist when it does.
    """
    if getattr(method, "per_example", False):
        raise ValueError(
            f"{method.name} with per-example gate draws needs per-example losses, which a "
            "framework's loss does not give: use per_example=False (one draw per batch)")
    before = {id(p) for p in model.parameters()}
    prepared = method.prepare_model(model)
    return prepared, {name for name, p in prepared.named_parameters() if id(p) not in before}


def adopt_optimizer(method: Method, model: nn.Module, optimizer: torch.optim.Optimizer,
                    added_names: set[str], scheduled: bool) -> None:
    """Give the method's own parameters the optimizer settings ``SelfSizing`` gives them.

    The framework built ``optimizer`` over every parameter, the gates too (with the weights'
    learning rate and weight decay): take them out of those groups, then let the method put
    them into groups of their own (NPN: ``gate_lr``, no decay; or its own Adam). ``scheduled``:
    an LR scheduler already holds one entry per group, so a new group would break it.
    """
    added = {id(p) for name, p in model.named_parameters() if name in added_names}
    for group in optimizer.param_groups:
        if not all(id(p) in added for p in group["params"]):  # leave a group of gates alone
            group["params"] = [p for p in group["params"] if id(p) not in added]
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    wanted = [p for group in method.param_groups(model, lr) or [] for p in group["params"]
              if id(p) not in known]
    if wanted and scheduled:
        raise ValueError(
            f"{method.name} adds {len(wanted)} parameter tensors (its gates) as a param group of "
            "your optimizer, and an LR scheduler built with the optimizer expects its groups "
            "unchanged: build the optimizer without a scheduler, or give the gates their own "
            "optimizer (NPN: gate_optimizer='adam')")
    join_optimizer(method, model, optimizer, lr)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's, Lightning's)."""
    while not type(optimizer).__module__.startswith("torch.") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward pass: a tensor, or a model output's ``logits`` entry."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


class _Logits(nn.Module):
    """``model`` with its output reduced to logits, in the same train/eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.train(model.training)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(inputs))


class FrameworkSizing(SelfSizing):
    """``SelfSizing`` whose validation runs a model that returns a dict or a model output
    (Hugging Face's ``{"loss": ..., "logits": ...}``) as well as one that returns logits.

    ``resume``: what :meth:`state` returned when the framework saved its checkpoint; the
    method's state and the completed epochs are restored before the method's
    ``on_train_begin`` runs, as :meth:`neuroplast.train.Trainer.restore` does.
    """

    def __init__(self, method: Method, *args: Any, resume: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        if resume:
            method.load_state_dict(resume["method"])
            self.epoch = int(resume["epoch"])  # read by the method's on_train_begin
        super().__init__(method, *args, **kwargs)

    def catch_up(self, completed: int) -> list[dict[str, Any]]:
        """The epoch ends a checkpoint missed: a framework that saves on a step writes the
        last step of an epoch before that epoch's end hook runs, and resumes after it. Each
        missed end evaluates and decides now, on the weights the epoch ended with (its
        training metrics are then empty); returns their records."""
        records = []
        while self.epoch < completed and not self._finished:
            records.append(self.epoch_end())
        return records

    def state(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """What a resume needs, for the framework's checkpoint: the completed epochs, the
        method's state, the live widths and the epochs' ``history``. From a checkpoint written
        within an epoch the method begins that epoch again where the framework resumes it
        (the epoch's training metrics then count only the batches after the resume)."""
        return {"epoch": self.epoch, "method": self.method.state_dict(),
                "widths": self.live_widths(), "history": list(history)}

    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> Evaluation:
        model = self.model
        self.model = _Logits(model)  # only for this evaluation; resizes use the model itself
        try:
            return super().evaluate(inputs, targets)
        finally:
            self.model = model


def sized_loss(method: Method, model: nn.Module, compute: Callable[[], torch.Tensor],
               context: Context | None = None,
               quiet: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               penalty_scale: float = 1.0) -> torch.Tensor:
    """The user's loss with the method's terms: its penalty and, for NPN, ARM's gradient.

    ``compute()`` runs the user's loss computation (the forward pass included) on the current
    batch. For NPN with random gates it runs twice, as in
    :func:`~neuroplast.gates.npn.arm_loss`: with staged draws ``u``, the main pass (gates
    ``1[u < pi]``, with autograd), then the antithetic one (``1[u > 1 - pi]``, no autograd,
    BatchNorm statistics frozen, dropout replaying the main pass's draws, under ``quiet()``,
    e.g. muted logging). The loss returned is the main one plus
    :func:`~neuroplast.gates.npn.gradient_term` of ``k * (F1 - F2) * (u - 1/2)``, a
    zero-valued term carrying ARM's gradient into ``phi``, plus the penalty (times
    ``penalty_scale``: a framework that adds micro-batches' losses without dividing them
    counts it once per step only so).
    """
    if not model.training or not torch.is_grad_enabled():
        return compute()  # evaluation: the user's loss as it is
    if not isinstance(method, NPN):  # the default training_loss: the loss plus the penalty
        loss = compute()
        extra = method.penalty(context)
        return loss if extra is None else loss + penalty_scale * extra
    gates = [gate for gate in npn_gates(model) if gate.training and gate.stochastic]
    if any(gate.per_example for gate in gates):
        raise ValueError("NPN in a framework's loop draws its gates once per batch: "
                         "per_example=False")
    learning = [gate for gate in gates if gate.k > 0]
    if not learning:  # k = inf (deterministic) or k = 0 (dropout): one pass, no ARM
        return compute() + penalty_scale * method._penalty_with_l0_gradient()
    draws = {gate: gate.draw(1) for gate in gates}  # per batch: the batch size is not used
    device = learning[0].phi.device
    try:
        for gate, u in draws.items():
            gate.stage_draws(u)
        state = _rng_state(device)
        main = compute()
        _set_rng_state(state, device)  # the antithetic pass's dropout draws what main drew
        with torch.no_grad(), _antithetic(gates), _frozen_batchnorm_statistics(model), quiet():
            other = compute()
    finally:
        for gate in gates:
            gate.stage_draws(None)
    difference = other.detach() - main.detach()
    term = gradient_term((gate.phi, gate.k * difference * (draws[gate] - 0.5))
                         for gate in learning)
    return main + term + penalty_scale * method._penalty_with_l0_gradient()


def batch_size(batch: Any) -> int:
    """Examples in a batch: the length of its first tensor (1 when there is none)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    items: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else (
        batch if isinstance(batch, (list, tuple)) else ())
    return next((batch_size(item) for item in items if isinstance(item, torch.Tensor)), 1)


def planned_epochs(epochs: float | None, framework: str, max_steps: int | None = None,
                   steps_per_epoch: float | None = None) -> int:
    """The planned number of epochs, which a method's schedule follows: ``epochs``, or the
    epochs ``max_steps`` optimizer steps take at ``steps_per_epoch``, whichever ends first.

    ``None``, a number <= 0 (Lightning's -1), infinity or ``sys.maxsize`` (Hugging Face's
    epochs over a data set of unknown length) mean "not set".
    """

    def known(value: float | None) -> bool:
        return value is not None and value > 0 and not math.isinf(value) and value < sys.maxsize

    plans = [math.ceil(epochs)] if known(epochs) else []
    if known(max_steps) and known(steps_per_epoch):
        plans.append(math.ceil(max_steps / steps_per_epoch))
    if not plans:
        raise ValueError(f"neuroplast's {framework} integration needs the planned number of "
                         "epochs (its method's schedule follows it): set max_epochs, or "
                         "max_steps with training data of known length")
    return min(plans)


def saved_widths(network: nn.Module, state_dict: Mapping[str, torch.Tensor],
                 prefix: str = "") -> dict[str, int]:
    """The widths of ``network``'s resizable layers in a state dict of it (keys under
    ``prefix``): each layer's units counted along its first coupled tensor, as
    :func:`~neuroplast.core.groups.layer_widths` counts them on the network."""
    widths = {}
    for name, group in find_unit_groups(network).items():
        first = group.tensors[0]
        tensor = state_dict.get(prefix + first.key)
        if isinstance(tensor, torch.Tensor) and tensor.dim() > first.dim:
            widths[name] = int(tensor.shape[first.dim])
    return widths


def resize_to_state_dict(network: nn.Module) -> RemovableHandle:
    """Make ``network.load_state_dict`` (or its parent's) first resize the network's layers to
    the widths of the state dict it loads (a checkpoint of a run that removed or added units),
    with :func:`~neuroplast.core.resize.set_layer_widths`, as
    :func:`~neuroplast.core.checkpoint.load_checkpoint` does; the weights then load into
    tensors of their shapes. Before the optimizer exists only: a resize here carries no
    optimizer state. Returns the hook's handle (``remove()`` it once the checkpoint loaded).
    """

    def hook(module: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str,
             *args: Any) -> None:
        set_layer_widths(module, saved_widths(module, state_dict, prefix))

    return network.register_load_state_dict_pre_hook(hook)
