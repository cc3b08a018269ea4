"""NPN gates: one stochastic binary gate per unit, trained with the ARM gradient estimator.

A gate keeps one real parameter ``phi`` per unit; the unit is on with probability
``pi = sigmoid(k * phi)``. In training the gate is an exact 0/1 draw (one draw per mini-batch,
shared by its examples, or one per example); at test time it is ``pi`` where ``pi >= 0.5`` and 0
elsewhere. ``k`` moves the gate between two classic regimes:

* ``k = inf`` (an explicit mode, not a large number): ``z = 1[phi > 0]``, deterministic, and
  ``phi`` receives no gradient, so the active sub-network trains as a plain network;
* ``k = 0``: ``pi = 0.5`` for every unit, i.e. dropout with rate 0.5, and ``phi`` is untouched.

:func:`arm_loss` runs the two forward passes of ARM (Yin & Zhou) that share the same uniform
draws and returns the loss with a zero-valued term whose gradient for every ``phi`` is ARM's
unbiased estimate, so loss scaling, gradient accumulation, AMP's ``GradScaler`` and clipping act
on it as on every other gradient.
:func:`compact_npn` turns a gated model into a plain one with identical test-time predictions.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.groups import model_chains
from ..core.layers import LayerCoupling, layer_coupling, register_layer
from ..export import ExportError, compact_model
from .mask import UnitMask

INF = math.inf


def check_k(k: float | str) -> float:
    """``k`` as a float in ``[0, inf]``; ``"inf"``/``"infinity"`` are accepted spellings of inf.

    Raises ValueError for a negative or NaN ``k``: ``pi = sigmoid(k * phi)`` with ``k < 0``
    would switch on exactly the units the penalty is pushing off.
    """
    try:
        value = float(k)
    except (TypeError, ValueError):
        raise ValueError(f"NPN k must be a number >= 0 or 'inf', got {k!r}") from None
    if math.isnan(value) or value < 0:
        raise ValueError(
            f"NPN k must be >= 0 (0: dropout with rate 0.5; inf: deterministic gates), got {k!r}"
        )
    return value


class NPNGate(nn.Module):
    """A stochastic binary gate on each unit (dim 1 of the input), ``pi = sigmoid(k * phi)``.

    Args:
        width: number of gated units (a Linear's input features, a conv's output channels).
        positions: if given, one gate per unit *and* position (``phi`` is ``(width,
            positions)``), e.g. LeNet-5's 800 features = 50 channels x 16 positions, gated
            before the Flatten so the gates still follow their channel through a resize.
        k: the gate's slope; ``math.inf`` makes the gates deterministic.
        per_example: draw one gate sample per example instead of one per mini-batch.

    The gate is a per-unit layer of its unit group (``phi`` and ``unit_id`` follow every
    prune/grow). ``unit_id`` is each unit's index in the full-size layer, so the random draws of
    a physically smaller layer match those of the full one unit for unit.

    Example::

        gate = NPNGate(8, k=7.0)
        nn.init.constant_(gate.phi, 0.5)
        y = gate(torch.randn(4, 8))   # each unit kept with probability sigmoid(3.5)
    """

    def __init__(
        self, width: int, positions: int | None = None, *, k: float = INF, per_example: bool = False
    ) -> None:
        super().__init__()
        if width < 1 or (positions is not None and positions < 1):
            raise ValueError(
                f"NPNGate needs width >= 1 and positions >= 1, got {width}, {positions}")
        shape = (width,) if positions is None else (width, positions)
        self.phi = nn.Parameter(torch.zeros(shape))
        self.register_buffer("unit_id", torch.arange(width))
        self.k = k
        self.per_example = per_example
        self.nominal_width = width  # the full-size layer's width: the index space of unit_id
        self._draws: torch.Tensor | None = None
        self._staged: tuple[torch.Tensor, torch.Tensor] | None = None  # (main z, antithetic z)
        self._antithetic = False

    @property
    def k(self) -> float:
        """The slope of ``pi = sigmoid(k * phi)``, in ``[0, inf]``."""
        return self._k

    @k.setter
    def k(self, value: float) -> None:
        self._k = check_k(value)

    @property
    def positional(self) -> bool:
        """True when the gate has one entry per unit and position."""
        return self.phi.dim() == 2

    @property
    def stochastic(self) -> bool:
        """True when training draws random gates (``k`` finite)."""
        return not math.isinf(self._k)

    def probability(self, k: float | None = None) -> torch.Tensor:
        """``pi = sigmoid(k * phi)`` (differentiable in ``phi`` for finite ``k > 0``).

        ``k`` defaults to the gate's own. At ``k = inf`` this is ``1[phi > 0]`` and at
        ``k = 0`` it is 0.5, both constants without a graph, so ``phi`` gets no gradient.
        """
        k = self._k if k is None else check_k(k)
        if math.isinf(k):
            return (self.phi.detach() > 0).to(self.phi.dtype)
        if k == 0:
            return torch.full_like(self.phi.detach(), 0.5)
        return torch.sigmoid(k * self.phi)

    def test_gate(self) -> torch.Tensor:
        """The test-time gate: ``pi`` where ``pi >= 0.5``, else 0 (same shape as ``phi``)."""
        pi = self.probability().detach()
        return torch.where(pi >= 0.5, pi, torch.zeros_like(pi))

    def active(self) -> torch.Tensor:
        """Boolean mask of the units (or unit positions) counted in the architecture."""
        return self.probability().detach() >= 0.5

    def draw(self, batch_size: int) -> torch.Tensor:
        """Uniform draws for one training step, shaped like ``phi`` (with a batch dim per example).

        The draws are made for the full-size layer and then picked by ``unit_id``, so a
        physically pruned or grown layer sees the same numbers as its full-size twin.
        """
        lead = (batch_size,) if self.per_example else ()
        tail = tuple(self.phi.shape[1:])
        options = {"device": self.phi.device, "dtype": self.phi.dtype}
        full = torch.rand(*lead, self.nominal_width, *tail, **options)
        layout = self._id_layout()
        if layout == "outside":
            # Units added outside NPN have no place in the full-size layer: draw them afresh.
            return torch.rand(*lead, *self.phi.shape, **options)
        return full if layout == "all" else full.index_select(len(lead), self.unit_id)

    def _id_layout(self) -> str:
        """"all" (every full-size unit, in order), "some", or "outside" (ids beyond the layer).

        Cached until ``unit_id`` changes (a resize replaces it), so a training step does not
        pay two reductions and a device sync per gate for it.
        """
        ids = self.unit_id
        cached = getattr(self, "_layout_of", None)  # (the ids tensor itself, its version)
        if cached is None or cached[0] is not ids or cached[1] != ids._version:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.nominal_width):
                layout = "outside"
            elif ids.numel() == self.nominal_width and bool(
                    (ids == torch.arange(self.nominal_width, device=ids.device)).all()):
                layout = "all"
            else:
                layout = "some"
            self._layout_of, self._layout = (ids, ids._version), layout
        return self._layout

    def stage_draws(self, draws: torch.Tensor | None) -> None:
        """Use ``draws`` for the following forward passes (``None`` returns to fresh draws).

        Both gates of ARM's pair are computed here once, not in each of the two passes.
        """
        self._draws = draws
        self._staged = None
        if draws is not None and self.stochastic:
            with torch.no_grad():
                pi = self.probability()
                self._staged = ((draws < pi).to(pi.dtype), (draws > 1 - pi).to(pi.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.phi.shape[0]:
            raise ValueError(
                f"NPNGate of width {self.phi.shape[0]} got input of shape {tuple(x.shape)}: "
                "dim 1 must hold the gated units"
            )
        if not self.training:
            z = self.test_gate()
        elif not self.stochastic:
            z = (self.phi.detach() > 0).to(x.dtype)
        elif getattr(self, "_staged", None) is not None:
            z = self._staged[1 if self._antithetic else 0].to(x.dtype)
        else:
            u = self._draws if self._draws is not None else self.draw(x.shape[0])
            pi = self.probability().detach()
            # ARM's pair of gates from one draw: z2 = 1[u < pi] (main), z1 = 1[u > 1 - pi].
            z = (u > 1 - pi) if self._antithetic else (u < pi)
            z = z.to(x.dtype)
        out = x * self._broadcast(z, x)
        if self.stochastic and self._k > 0 and self.phi.requires_grad and torch.is_grad_enabled():
            # phi's gradient comes from ARM's term outside this pass; a zero-valued use here
            # makes phi a parameter the forward pass used, so data-parallel training (DDP)
            # averages its gradient like every other.
            out = out + 0.0 * self.phi.sum().to(out.dtype)
        return out

    def _broadcast(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        batched = z.dim() > self.phi.dim()
        lead = z.shape[0] if batched else 1
        if not self.positional:
            return z.reshape(lead, -1, *([1] * (x.dim() - 2)))
        positions = math.prod(x.shape[2:])
        if positions != self.phi.shape[1]:
            raise ValueError(
                f"NPNGate with {self.phi.shape[1]} positions per unit got input of shape "
                f"{tuple(x.shape)} ({positions} positions per unit)"
            )
        return z.reshape(lead, *x.shape[1:])

    def extra_repr(self) -> str:
        shape = "x".join(map(str, self.phi.shape))
        live = int(self.active().sum())
        mode = "per example" if self.per_example else "per batch"
        return f"{shape}, k={self._k:g}, live={live}, draws {mode}"


def _gate_test_scale(gate: NPNGate) -> torch.Tensor:
    if gate.positional:
        raise ExportError(
            "an NPN gate with one entry per feature position cannot be folded by compact_model: "
            "use neuroplast.gates.compact_npn(model), which folds these gates first"
        )
    return gate.test_gate()


register_layer(
    NPNGate,
    LayerCoupling(
        per_unit=(("phi", 0), ("unit_id", 0)),
        # A unit grown without NPN's help gets phi = 0 (pi = 0.5) and no full-size index.
        new_unit_fill={"phi": 0.0, "unit_id": -1.0},
        positively_homogeneous=True,
        test_scale=_gate_test_scale,
    ),
)


def npn_gates(model: nn.Module) -> list[NPNGate]:
    """Every :class:`NPNGate` of ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, NPNGate)]


# --------------------------------------------------------------------------- ARM
@contextlib.contextmanager
def _frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps normalizing by batch statistics but leaves its running statistics alone."""
    changed = [
        module for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.training and module.track_running_stats
    ]
    for module in changed:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in changed:
            module.track_running_stats = True


@contextlib.contextmanager
def _antithetic(gates: Iterable[NPNGate]) -> Iterator[None]:
    gates = list(gates)
    for gate in gates:
        gate._antithetic = True
    try:
        yield
    finally:
        for gate in gates:
            gate._antithetic = False


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _couples_examples(model: nn.Module) -> bool:
    return any(
        isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
        for module in model.modules()
    )


def arm_loss(
    model: nn.Module,
    gates: Sequence[NPNGate],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    draw_rows: tuple[int, torch.Tensor] | None = None,
    share_prefix: bool = True,
    antithetic_delta: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data loss of one training batch, with the ARM gradient of every gate's ``phi``.

    Draws ``u`` once per gate, runs the main pass with ``z2 = 1[u < pi]`` (with autograd) and
    the antithetic pass with ``z1 = 1[u > 1 - pi]`` (without). The returned loss is the main
    pass's, plus :func:`gradient_term` of ``k * (loss(z1) - loss(z2)) * (u - 1/2)`` for each
    stochastic gate: its value is 0 and its gradient for ``phi`` is that estimate. So
    ``loss.backward()`` gives the weights their gradients and every ``phi`` ARM's, and scaling
    the loss (accumulation, ``GradScaler``) scales both alike.

    Both passes see the same computation except for the gates: BatchNorm normalizes each pass
    by its own batch statistics (the training-mode function whose expectation ARM estimates)
    and only the main pass updates the running statistics; other random layers (dropout)
    replay the main pass's draws. ``loss_fn(logits, targets, reduction=...)`` defaults to
    cross-entropy.

    With per-example draws, the estimate for gate ``j`` is ``k * mean_i (f1_i - f2_i) (u_ij -
    1/2)`` with per-example losses ``f_i``; when BatchNorm couples the examples of a batch it
    is ``k * sum_i (F1 - F2) (u_ij - 1/2)`` with the batch-mean losses ``F`` instead, which
    stays unbiased.

    For data-parallel training, where ``inputs`` are some rows of a larger batch:
    ``draw_rows = (global batch size, rows)`` makes per-example draws for the whole batch and
    keeps these rows, so every process draws what one process on the whole batch would.

    The layers before the first random gate compute the same thing in both passes: for an
    ``nn.Sequential`` model they run once and the antithetic pass starts from their output
    (``share_prefix``; it costs nothing in exactness, and with the conv gates placed after
    their ReLU and pooling it saves LeNet-5's first conv block).

    When that first random gate draws once per batch and feeds a Linear or convolution
    directly, the two passes differ there only in the units whose pair of gates disagrees
    (probability ``2 min(pi, 1 - pi)``: rare for a gate that has made up its mind), and the
    layer is linear: its antithetic output is the main one plus those units' contribution
    (``antithetic_delta``, with ``share_prefix``, for an exact ``nn.Linear``/``nn.Conv1d-3d``
    without hooks; equal up to float rounding, and it spares most of LeNet-300-100's first
    layer, 88 % of its multiply-adds, in the antithetic pass).

    Returns ``(mean loss of the main pass, its logits)``.
    """
    random_gates = [gate for gate in gates if gate.training and gate.stochastic]
    learning = [gate for gate in random_gates if gate.k > 0]
    if not learning:
        # k = inf (deterministic) or k = 0 (dropout): phi gets no data gradient, one pass.
        logits = model(inputs)
        return loss_fn(logits, targets), logits
    batch = inputs.shape[0]
    if draw_rows is None:
        draws = {gate: gate.draw(batch) for gate in random_gates}
    else:
        size, rows = draw_rows
        draws = {gate: gate.draw(size)[rows] if gate.per_example else gate.draw(size)
                 for gate in random_gates}
    for gate, u in draws.items():
        gate.stage_draws(u)
    prefix, rest = _split_at_first_gate(model, random_gates) if share_prefix else ([], [model])
    # rest = [gate, layer, *after] when the antithetic pass may reuse the layer's main output.
    delta = antithetic_delta and _delta_layer(rest, draws)
    try:
        shared = _run(prefix, inputs)
        state = _rng_state(inputs.device)  # the suffix's random layers replay the same draws
        if delta:
            first = _run(rest[:2], shared)
            saved = first.detach().clone()  # an in-place layer after it may overwrite it
            logits = _run(rest[2:], first)
        else:
            logits = _run(rest, shared)
        main = loss_fn(logits, targets, reduction="none")
        _set_rng_state(state, inputs.device)
        with torch.no_grad(), _antithetic(random_gates), _frozen_batchnorm_statistics(model):
            if delta:
                start = _antithetic_output(rest[0], rest[1], shared, saved)
                other = loss_fn(_run(rest[2:], start), targets, reduction="none")
            else:
                other = loss_fn(_run(rest, shared), targets, reduction="none")
    finally:
        for gate in random_gates:
            gate.stage_draws(None)
    main_detached = main.detach()
    batch_difference = other.mean() - main_detached.mean()
    coupled = _couples_examples(model)
    estimates = []
    for gate in learning:
        u = draws[gate] - 0.5
        if u.dim() == gate.phi.dim():  # one draw shared by the batch
            grad = batch_difference * u
        elif coupled:
            grad = batch_difference * u.sum(0)
        else:
            difference = (other - main_detached).reshape(batch, *([1] * gate.phi.dim()))
            grad = (difference * u).mean(0)
        estimates.append((gate.phi, gate.k * grad))
    return main.mean() + gradient_term(estimates), logits


def gradient_term(estimates: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A zero-valued term whose gradient for each parameter is the given estimate.

    ``sum(g * p) - sum(g * p).detach()`` with ``g`` detached: added to a loss it leaves the
    value alone and puts ``g`` into ``p``'s gradient through autograd, scaled with the loss.
    This is how an estimator that is not the derivative of a computed value (ARM's) or a
    derivative written in closed form (the L0 term's) reaches ``phi``.
    """
    total = None
    for parameter, estimate in estimates:
        term = (estimate.detach().to(parameter.dtype) * parameter).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total - total.detach()


def _delta_layer(rest: Sequence[nn.Module], draws: dict[NPNGate, torch.Tensor]) -> bool:
    """Whether ``rest`` starts with a random gate drawn once per batch and the plain Linear or
    convolution it feeds, so the antithetic pass may start from that layer's main output."""
    if len(rest) < 2 or not isinstance(rest[0], NPNGate) or rest[0] not in draws:
        return False
    gate, layer = rest[0], rest[1]
    if gate.positional or draws[gate].dim() != gate.phi.dim() or gate._forward_hooks or \
            layer._forward_hooks or layer._forward_pre_hooks or gate._forward_pre_hooks:
        return False
    # Exact types: a subclass may transform its weight or add a nonlinearity in forward.
    if type(layer) is nn.Linear:
        return layer.in_features == gate.phi.shape[0]
    return (type(layer) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and layer.groups == 1
            and layer.in_channels == gate.phi.shape[0])


def _antithetic_output(
    gate: NPNGate, layer: nn.Module, x: torch.Tensor, main_output: torch.Tensor
) -> torch.Tensor:
    """``layer(gate(x))`` under the antithetic gates, from its output under the main ones.

    ``layer`` is linear in its input, so only the units whose two gates differ contribute to
    the difference; when more than half differ, recomputing the layer is cheaper.
    """
    main_gate, antithetic_gate = gate._staged
    difference = antithetic_gate - main_gate
    units = difference.nonzero().reshape(-1)
    if units.numel() == 0:
        return main_output
    linear = isinstance(layer, nn.Linear)
    if 2 * units.numel() > difference.numel() or (linear and x.dim() != 2):
        return layer(gate(x))  # (a Linear on (N, units, ...) inputs maps their last dim)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    change = x.index_select(1, units) * difference[units].reshape(shape).to(x.dtype)
    weight = layer.weight.index_select(1, units)
    if linear:
        return main_output + F.linear(change, weight)
    return main_output + layer._conv_forward(change, weight, None)


def _run(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def _split_at_first_gate(
    model: nn.Module, gates: Sequence[NPNGate]
) -> tuple[list[nn.Module], list[nn.Module]]:
    """The children of a plain ``nn.Sequential`` before and from its first random gate."""
    if type(model) is not nn.Sequential or model._forward_hooks or model._forward_pre_hooks:
        return [], [model]  # a custom forward (or hooks on the whole model): run it whole
    ids = {id(gate) for gate in gates}
    children = list(model)
    for index, child in enumerate(children):
        if any(id(module) in ids for module in child.modules()):
            return children[:index], children[index:]
    return [], [model]


# --------------------------------------------------------------------------- export
def _consumer_after(entries, index: int):
    for _, module in entries[index + 1:]:
        coupling = layer_coupling(module)
        if coupling is not None and coupling.consumes:
            return module
        if coupling is None or not (coupling.positively_homogeneous or coupling.flattens):
            return None
    return None


def fold_positional_gates(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose per-position gates are folded into the following layer.

    Each per-position :class:`NPNGate` multiplies its consumer's input columns by its test-time
    gate (dead features become zero columns) and is replaced by a :class:`UnitMask` that
    switches off the channels none of whose features survive, so :func:`compact_model` can
    remove them. Test-time predictions are unchanged.
    """
    folded = copy.deepcopy(model)
    for entries in model_chains(folded):
        for index, (name, module) in enumerate(entries):
            if not (isinstance(module, NPNGate) and module.positional):
                continue
            consumer = _consumer_after(entries, index)
            if consumer is None:
                raise ExportError(
                    f"NPN gate '{name}' has no Linear/Conv after it (through a Flatten) to "
                    "fold into"
                )
            scale = module.test_gate()
            tensor_name, dim = layer_coupling(consumer).consumes[0]
            weight = getattr(consumer, tensor_name)
            shape = [1] * weight.dim()
            shape[dim] = -1
            with torch.no_grad():
                weight.mul_(scale.reshape(shape).to(weight))
            mask = UnitMask(scale.shape[0]).to(scale.device)
            mask.mask.copy_((scale > 0).any(1).to(mask.mask))
            parent_name, _, child = name.rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            parent._modules[child] = mask
    return folded


def compact_npn(model: nn.Module, select_inputs: bool = True) -> nn.Module:
    """A plain, compact copy of a model with NPN gates; same predictions as ``model.eval()``.

    Dead units (test-time gate 0) are removed, live gates folded into a neighbouring layer.
    Gates that no unit group owns (a network's raw input features, a residual stem) fold into
    a neighbour as scales; a Linear then reads only its live input features (see
    :func:`~neuroplast.export.compact_model`, also for ``select_inputs``).
    """
    return compact_model(fold_positional_gates(model), select_inputs=select_inputs)
