"""``npn``: Neural Plasticity Networks (Li & Ji, arXiv 1908.08118).

Every gated layer's units carry a stochastic binary gate ``z ~ Bernoulli(sigmoid(k * phi))``
(:class:`~neuroplast.gates.npn.NPNGate`). The loss is the data loss plus, per gated layer,
``lambda * cost_per_gate * sum(sigmoid(k * phi))`` (an L0 penalty: by default ``lambda`` prices
each parameter a unit holds, as a fraction of the loss of a model that learned nothing; the
reference's unit prices each weight a gate switches) and a gate-weighted L2 term; ``phi`` is trained
with the unbiased ARM estimator. One parameter ``k`` runs three stages:

1. ``k = inf``: deterministic gates, plain training of the initially active sub-network;
2. the chosen ``k``: plasticity, units switch on and off (and, in ``expand`` mode, one more
   unit per layer wakes after each epoch whose validation objective improved);
3. ``k = inf`` again: the architecture hardens and the survivors are fine-tuned.

``--npn-implementation mask`` allocates every unit, as the reference does, until the gates
harden for good (then the closed units go, at no change to the function);
``physical`` materializes a hibernating unit only when it wakes and removes units once their
gate is (practically) off, so compute follows the live width. Both end in the same plain compact
network (``live_model``). The mapping of the reference's constants is in ``docs/npn.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from ..core.groups import find_unit_groups
from ..core.resize import expand_unit_indices, grow_units, prune_units
from ..gates.attach import GatedLayer, attach_npn_gates
from ..gates.npn import INF, NPNGate, arm_loss, check_k, compact_npn, gradient_term
from ..policy import Method

if TYPE_CHECKING:
    from ..policy import Context

MODES = ("prune", "expand")
# The adaptive price's steps: doubled while validation holds, halved when it falls. It starts
# low (a first plastic epoch must not already cut what the network needs, or the best plastic
# epoch would be a ruin) and climbs a factor 128 in seven epochs, a short run's plastic stage.
PRICE_UP, PRICE_DOWN = 2.0, 0.5
SMOOTHING = 3  # plastic epochs averaged into the adaptive price's yardstick
IMPLEMENTATIONS = ("mask", "physical")
LAMBDA_UNITS = ("parameter", "weight")
GATE_OPTIMIZERS = ("shared", "adam")


def parse_k_schedule(text: str) -> list[tuple[int, float]]:
    """``"1:inf,11:7,41:inf"`` -> ``[(1, inf), (11, 7.0), (41, inf)]``.

    Each entry is ``<first epoch>:<k>`` (epochs count from 1); ``k`` holds until the next entry,
    and epochs before the first entry train at ``k = inf``.
    """
    schedule: list[tuple[int, float]] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        epoch_text, sep, k_text = part.partition(":")
        try:
            epoch = int(epoch_text)
        except ValueError:
            epoch = 0
        if not sep or epoch < 1:
            raise ValueError(
                f"bad NPN k schedule entry '{part.strip()}': write <first epoch>:<k>, e.g. "
                "'1:inf,11:7,41:inf' (epochs count from 1)"
            )
        if schedule and epoch <= schedule[-1][0]:
            raise ValueError(f"NPN k schedule epochs must increase, got '{text}'")
        schedule.append((epoch, check_k(k_text.strip())))
    if not schedule:
        raise ValueError(f"empty NPN k schedule '{text}'")
    return schedule


@dataclass
class NPN(Method):
    """Neural Plasticity Networks: stochastic binary gates, an L0 penalty, ARM and one ``k``.

    Example::

        method = NPN(mode="expand", k=1.0, lambdas=(4.3e-5, 1.7e-3), init_sizes=(3, 3))
        Trainer(build_model("mlp", (100,), 2, widths=[80]), load_dataset("moons"), method,
                TrainConfig(epochs=200)).fit()
    """

    name = "npn"
    description = "Neural Plasticity Networks: L0 gates trained with ARM, pruning or expansion"
    # Three stages need room: 12 epochs of plain training, 30 plastic, 18 of fine-tuning.
    train_defaults = {"epochs": 60}
    legacy_defaults = {"input_gates": True, "gate_lr": None, "growth": 0.0, "adaptive": False,
                       "lambdas": (1e-4,), "lambda_unit": "weight"}
    option_groups = {"expand mode (--npn-mode expand)": (
        "init_sizes", "growth", "wake_logit", "hibernate_logit")}
    internal_options = ("lambda_unit", "l2", "init_logit", "init_k", "phi_std", "per_example",
                        "gate_lr", "gate_optimizer", "prune_below")

    mode: str = field(default="prune", metadata={
        "help": "prune: all units start active; expand: a few start active, the rest hibernate"})
    input_gates: bool = field(default=False, metadata={
        "help": "also gate the raw input features of a first Linear (an MLP's inputs), "
                "selecting inputs as the reference's MLPs do; off: hidden units only"})
    implementation: str = field(default="mask", metadata={
        "help": "mask: every unit allocated until the gates harden (the reference); physical: "
                "units are added when they wake and removed when they die"})
    k: float = field(default=7.0, metadata={
        "help": "k of the plasticity stage (pi = sigmoid(k*phi)); 0: dropout, inf: none"})
    stages: tuple[float, ...] = field(default=(0.2, 0.7), metadata={
        "help": "ends of stage 1 (k=inf) and stage 2 (k) as fractions of the epochs"})
    k_schedule: str = field(default="", metadata={
        "help": "explicit schedule '<epoch>:<k>,...', e.g. '1:inf,11:7,41:inf' (overrides "
                "stages; epochs before the first entry use k=inf)"})
    lambdas: tuple[float, ...] = field(default=(1e-6,), metadata={
        "help": "L0 price, one per gated layer or one for all: per parameter a unit holds, as "
                "a share of the null loss (the loss of predicting the validation targets' class "
                "frequencies or mean); the recipes' lambda_unit 'weight' prices each weight a "
                "gate switches instead"})
    adaptive: bool = field(default=True, metadata={
        "help": "prune mode: find the price on validation data (the lambdas doubled after "
                "every plastic epoch whose validation accuracy stays within noise of the best "
                "mean of three successive plastic epochs, halved after one well below it; when "
                "plasticity ends, the gates of the smallest network within noise come back; a "
                "layer keeps its last unit); both modes: k*phi capped at init_logit so no gate "
                "saturates open. Off: the lambdas as given, as the reference"})
    lambda_unit: str = field(default="parameter", metadata={
        "help": "parameter: lambdas price every parameter a unit holds in the compact network "
                "(its row, bias and the next layer's columns), times the null loss, so one "
                "value carries over between data sets, losses and layers; weight: per weight "
                "the gate's own layer switches, in the loss's units (the reference's unit, "
                "the recipes')"})
    l2: float = field(default=0.0, metadata={
        "help": "coefficient of the gate-weighted L2 term sum pi_j ||w_j||^2 / 2"})
    init_sizes: tuple[float, ...] = field(default=(3,), metadata={
        "help": "expand mode: initially active units per gated layer (values < 1: fractions)"})
    growth: float = field(default=0.25, metadata={
        "help": "expand mode: after an epoch whose validation objective improved, a layer whose "
                "allocated units are all active wakes this fraction of them more (at least one; "
                "0: one unit, as the reference)"})
    wake_logit: float = field(default=0.1, metadata={
        "help": "expand mode: a woken unit gets k*phi = this (pi = sigmoid of it)"})
    init_logit: float = field(default=3.0, metadata={
        "help": "active units start at phi = init_logit / init_k"})
    hibernate_logit: float = field(default=-40.0, metadata={
        "help": "hibernating units start at phi = hibernate_logit / init_k"})
    init_k: float = field(default=7.0, metadata={"help": "the k0 that scales the initial phi"})
    phi_std: float = field(default=0.01, metadata={"help": "std of the initial and woken phi"})
    per_example: bool = field(default=False, metadata={
        "help": "draw gates per example instead of once per mini-batch"})
    gate_lr: float | None = field(default=0.05, metadata={
        "help": "learning rate of phi (None: the run's --lr, as the reference); the gates need "
                "to travel further per step than the weights"})
    gate_optimizer: str = field(default="shared", metadata={
        "help": "shared: phi is a param group of the run's optimizer; adam: phi has its own "
                "Adam (the reference's ResNet: SGD for weights, Adam for phi)"})
    prune_below: float = field(default=1e-3, metadata={
        "help": "physical: remove a unit once its pi (at the next epoch's k) is below this"})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown NPN mode '{self.mode}'; choose one of {MODES}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown NPN implementation '{self.implementation}'; choose one of "
                f"{IMPLEMENTATIONS}")
        self.k = check_k(self.k)
        self.init_k = check_k(self.init_k)
        if not 0 < self.init_k < INF:
            raise ValueError(f"NPN init_k must be a positive finite number, got {self.init_k}")
        self.lambdas = tuple(float(value) for value in _as_tuple(self.lambdas))
        if not self.lambdas or any(not value >= 0 or math.isinf(value) for value in self.lambdas):
            raise ValueError(f"NPN lambdas must be finite numbers >= 0, got {self.lambdas}")
        if not self.l2 >= 0 or math.isinf(self.l2):
            raise ValueError(f"NPN l2 must be a finite number >= 0, got {self.l2}")
        self.stages = tuple(float(value) for value in _as_tuple(self.stages))
        if len(self.stages) != 2 or not 0 <= self.stages[0] <= self.stages[1] <= 1:
            raise ValueError(
                f"NPN stages must be two fractions 0 <= end1 <= end2 <= 1, got {self.stages}")
        if self.k_schedule:
            parse_k_schedule(self.k_schedule)
        self.init_sizes = tuple(float(value) for value in _as_tuple(self.init_sizes))
        if not self.init_sizes or any(
                not value > 0 or (value >= 1 and value != int(value)) for value in self.init_sizes):
            raise ValueError(
                "NPN init_sizes must be unit counts >= 1 or fractions in (0, 1), got "
                f"{self.init_sizes}")
        if self.lambda_unit not in LAMBDA_UNITS:
            raise ValueError(f"unknown NPN lambda_unit '{self.lambda_unit}'; choose one of "
                             f"{LAMBDA_UNITS}")
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise ValueError(f"unknown NPN gate_optimizer '{self.gate_optimizer}'; choose one "
                             f"of {GATE_OPTIMIZERS}")
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ValueError(f"NPN gate_lr must be > 0, got {self.gate_lr}")
        if not 0 <= self.prune_below < 0.5:
            raise ValueError(f"NPN prune_below must be in [0, 0.5), got {self.prune_below}")
        if not 0 <= self.growth <= 1 or math.isnan(self.growth):
            raise ValueError(f"NPN growth must be a fraction in [0, 1], got {self.growth}")
        if self.phi_std < 0:
            raise ValueError(f"NPN phi_std must be >= 0, got {self.phi_std}")
        self._layers: list[GatedLayer] = []
        self._schedule: list[tuple[int, float]] = [(1, INF)]
        self._epochs: int | None = None
        self._k_now = INF
        self._best: float | None = None
        self._price_scale = 1.0  # adaptive: the factor on every lambda
        self._null_loss: float | None = None  # lambda_unit "parameter": the loss's own scale
        self._kept: dict[str, Any] | None = None  # adaptive: gates of the smallest good epoch
        self._best_accuracy: float | None = None  # adaptive: the yardstick (best full mean)
        self._readings: list[float] = []  # adaptive: the last plastic epochs' accuracies
        self._logged_widths: dict[str, int] = {}  # live widths when events were last logged
        self._allocated: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # unit group -> gated layer whose gate decides it
        self._reserve: dict[str, torch.Tensor] = {}
        self._gate_optimizer: torch.optim.Adam | None = None
        self._gate_optimizer_state: dict[str, Any] | None = None

    # ----------------------------------------------------------------- schedule
    def schedule(self, epochs: int) -> list[tuple[int, float]]:
        """The k schedule as ``(first epoch, k)`` pairs for a run of ``epochs`` epochs."""
        if self.k_schedule:
            return parse_k_schedule(self.k_schedule)
        end1, end2 = (round(fraction * epochs) for fraction in self.stages)
        entries = [(1, INF), (end1 + 1, self.k), (end2 + 1, INF)]
        # Drop stages that get no epochs (a later entry with the same start wins).
        kept: dict[int, float] = {}
        for start, k in entries:
            kept[start] = k
        return sorted(kept.items())

    def k_at(self, epoch: int) -> float:
        """The k used during ``epoch`` (counting from 1)."""
        k = INF
        for start, value in self._schedule:
            if start <= epoch:
                k = value
        return k

    def set_k(self, k: float) -> None:
        """Give every gate the slope ``k``."""
        self._k_now = check_k(k)
        for layer in self._layers:
            layer.gate.k = self._k_now
            # phi learns only at a finite k > 0; frozen otherwise (k = inf: plain training,
            # k = 0: dropout), so no optimizer moves it and DDP does not wait for its gradient.
            layer.gate.phi.requires_grad_(0 < self._k_now < math.inf)

    # ----------------------------------------------------------------- model
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Attach the gates, initialize ``phi``; in physical expand mode drop hibernating units."""
        self._layers = sorted(attach_npn_gates(model, input_gates=self.input_gates),
                              key=_module_order(model))
        for layer in self._layers:
            layer.gate.per_example = self.per_example
        self._check_per_layer(self.lambdas, "lambdas")
        counts = self._initial_counts()
        self._allocated = {}
        for layer, count in zip(self._layers, counts, strict=True):
            flat = layer.gate.phi.data.view(-1)
            flat.normal_(self.init_logit / self.init_k, self.phi_std)
            if count < flat.numel():
                flat[count:].normal_(self.hibernate_logit / self.init_k, self.phi_std)
            self._allocated[layer.name] = count
        self._owners = {}
        by_gate = {id(layer.gate): layer for layer in self._layers}
        for group_name, group in find_unit_groups(model).items():
            for _, module in group.path:
                if isinstance(module, NPNGate) and not module.positional and id(module) in by_gate:
                    self._owners[group_name] = by_gate[id(module)].name
        self._reserve = {}
        if self.implementation == "physical" and self.mode == "expand":
            self._capture_reserve(model)
            for group_name, layer_name in self._owners.items():
                count = self._allocated[layer_name]
                if count < find_unit_groups(model)[group_name].width:
                    prune_units(model, group_name, list(range(count)))
        self.set_k(self._k_now)
        return model

    def _check_per_layer(self, values: tuple, what: str) -> None:
        if len(values) not in (1, len(self._layers)):
            names = ", ".join(layer.name for layer in self._layers)
            hint = "" if self.input_gates else (
                "; an MLP's raw input features are gated only with --npn-input-gates "
                "(npn_input_gates = true)")
            raise ValueError(
                f"NPN {what} has {len(values)} values for {len(self._layers)} gated layers "
                f"({names}): give one per layer, input to output, or a single value for all"
                f"{hint}")

    def _per_layer(self, values: tuple) -> list:
        return list(values) * len(self._layers) if len(values) == 1 else list(values)

    def _initial_counts(self) -> list[int]:
        if self.mode == "prune":
            return [layer.size for layer in self._layers]
        self._check_per_layer(self.init_sizes, "init_sizes")
        counts = []
        for layer, value in zip(self._layers, self._per_layer(self.init_sizes), strict=True):
            count = math.floor(value * layer.size) if value < 1 else int(value)
            if not 1 <= count <= layer.size:
                raise ValueError(
                    f"NPN init size {value:g} of layer '{layer.name}' gives {count} units; it "
                    f"must give 1 to {layer.size}")
            counts.append(count)
        return counts

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Weights in one group; every ``phi`` in another, with its own lr and no weight decay
        (or, with ``gate_optimizer="adam"``, not in the run's optimizer at all)."""
        phis = [self._gate(model, layer).phi for layer in self._layers]
        ids = {id(phi) for phi in phis}
        weights = [p for p in model.parameters() if id(p) not in ids]
        if self.gate_optimizer == "adam":
            return [{"params": weights}]
        return [{"params": weights},
                {"params": phis, "lr": self.gate_lr or lr, "weight_decay": 0.0}]

    def _optimizers(self, trainer: Context) -> list[torch.optim.Optimizer]:
        extra = [self._gate_optimizer] if self._gate_optimizer is not None else []
        return [trainer.optimizer, *extra]

    def _start_gate_optimizer(self, trainer: Context) -> None:
        if self._gate_optimizer is not None and self._gate_optimizer_state is None:
            return  # already running over the current phi
        phis = [layer.gate.phi for layer in self._layers]
        self._gate_optimizer = torch.optim.Adam(phis, lr=self.gate_lr or trainer.config.lr)
        if self._gate_optimizer_state is not None:
            self._gate_optimizer.load_state_dict(self._gate_optimizer_state)
            self._gate_optimizer_state = None

    @staticmethod
    def _gate(model: nn.Module, layer: GatedLayer) -> NPNGate:
        return model.get_submodule(layer.gate_name)

    # ----------------------------------------------------------------- loss
    def _prices(self) -> list[float]:
        """Each gated layer's price of one open gate now: its lambda times the adaptive scale
        times what one gate costs (see ``lambda_unit``)."""
        scale = self._price_scale
        if self.lambda_unit == "parameter":
            scale *= self._null_loss or 1.0
        return [lam * scale * self._gate_cost(layer)
                for lam, layer in zip(self._per_layer(self.lambdas), self._layers, strict=True)]

    def _gate_cost(self, layer: GatedLayer) -> int:
        if self.lambda_unit == "parameter" and layer.params_per_gate is not None:
            return layer.params_per_gate
        return layer.weights_per_gate

    def penalty(self, trainer: Context | None = None) -> torch.Tensor:
        """``sum_l price_l * sum(pi_l) + l2 * gated_l2_l`` at the current k."""
        total = self._layers[0].gate.phi.new_zeros(())
        for layer, price in zip(self._layers, self._prices(), strict=True):
            if price:
                total = total + price * layer.gate.probability().sum()
            if self.l2:
                total = total + self.l2 * layer.gated_l2()
        return total

    def training_loss(
        self, trainer: Context, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The data loss of the main pass + penalty, with ARM's and the L0 term's gradients for
        ``phi`` as zero-valued autograd terms (:func:`~neuroplast.gates.npn.gradient_term`)."""
        if not self._layers:
            raise RuntimeError("NPN.prepare_model must run before training")
        gates = [layer.gate for layer in self._layers]
        # A hand-written loop without data parallelism may pass any object with a ``model``.
        loss, logits = arm_loss(getattr(trainer, "train_model", trainer.model), gates, inputs,
                                targets, loss_fn=getattr(trainer, "objective", cross_entropy),
                                draw_rows=getattr(trainer, "batch_rows", None))
        return loss + self._penalty_with_l0_gradient(), logits

    def _penalty_with_l0_gradient(self) -> torch.Tensor:
        """:meth:`penalty`, the L0 term's gradient given in closed form.

        ``d/dphi price * sum sigmoid(k phi) = price * k * pi (1 - pi)`` as a
        :func:`~neuroplast.gates.npn.gradient_term` spares a dozen autograd nodes per step (a
        tenth of a LeNet-300-100 step); the gate-weighted L2 term, whose gradient goes to the
        weights, stays in autograd.
        """
        total = self._layers[0].gate.phi.new_zeros(())
        l0 = self._layers[0].gate.phi.new_zeros(())  # its value; the gradient is given below
        estimates = []
        for layer, price in zip(self._layers, self._prices(), strict=True):
            gate = layer.gate
            if price:
                with torch.no_grad():
                    pi = gate.probability()
                    l0 += price * pi.sum()
                    if gate.stochastic and gate.k > 0 and gate.phi.requires_grad:
                        estimates.append((gate.phi, (price * gate.k) * pi * (1 - pi)))
            if self.l2:
                total = total + self.l2 * layer.gated_l2()
        return total + l0 + gradient_term(estimates)

    # ----------------------------------------------------------------- callbacks
    def on_train_begin(self, trainer: Context) -> None:
        self._logged_widths = self.live_widths(trainer.model)
        self._epochs = trainer.config.epochs
        self._schedule = self.schedule(self._epochs)
        if self.mode == "expand" and len(trainer.data.y_val) == 0:
            raise ValueError(
                "NPN expand mode decides growth on the validation loss, and this data set has "
                "no validation split: pass --val-fraction")
        if self.lambda_unit == "parameter" and self._null_loss is None:
            self._null_loss = _null_loss(trainer)
        self.set_k(self.k_at(trainer.epoch + 1))
        if self.gate_optimizer == "adam":
            self._start_gate_optimizer(trainer)

    def on_epoch_begin(self, trainer: Context, epoch: int) -> None:
        self.set_k(self.k_at(epoch))
        if self._kept is not None and not _plastic(self._k_now) and _plastic(
                self.k_at(epoch - 1)):
            self._restore_kept(trainer)
        if self.implementation == "mask" and self._hardened(epoch):
            # From here on no gate can open: a closed unit only costs compute, so the mask
            # run sheds it (the decisions and the function stay the same).
            self._remove_dead(trainer, INF)

    def _hardened(self, epoch: int) -> bool:
        """Whether ``epoch`` and every later one train at k = inf after a plastic epoch."""
        last = self._epochs if self._epochs is not None else epoch
        return (any(_plastic(self.k_at(e)) for e in range(1, epoch))
                and not any(math.isfinite(self.k_at(e)) for e in range(epoch, last + 1)))

    def after_backward(self, trainer: Context) -> None:
        if self._gate_optimizer is not None:
            # Follow the run's learning-rate schedule step by step (a warm-up moves it within
            # an epoch), as one shared optimizer would.
            decay = trainer.optimizer.param_groups[0]["lr"] / trainer.config.lr
            for group in self._gate_optimizer.param_groups:
                group["lr"] = (self.gate_lr or trainer.config.lr) * decay
            self._gate_optimizer.step()
            # Cleared after its step (the run's optimizer does not hold phi), so the gradients
            # of accumulated micro-batches add up until then.
            self._gate_optimizer.zero_grad(set_to_none=True)

    def on_batch_end(self, trainer: Context, loss: torch.Tensor) -> None:
        if not self.adaptive or math.isinf(self._k_now) or self._k_now == 0:
            return
        # Keep k * phi at most init_logit: a gate that ARM's noise pushed into the sigmoid's
        # flat top would get no L0 gradient (pi (1 - pi) ~ 0) and stay open at any price.
        ceiling = self.init_logit / self._k_now
        with torch.no_grad():
            for layer in self._layers:
                phi = layer.gate.phi.view(-1)
                phi.clamp_(max=ceiling)
                if not layer.gate.positional:
                    # A layer never closes its last unit: the price alone would empty it. (A
                    # position's gate is not a unit: its channel's gate keeps one open.)
                    strongest = phi.argmax()
                    phi[strongest] = phi[strongest].clamp(min=1.0 / self._k_now)

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        plastic = not math.isinf(self._k_now)
        if self.mode == "expand" and plastic:
            with torch.no_grad():
                objective = trainer.last_metrics["val_loss"] + float(self.penalty(trainer))
            if self._best is None or objective < self._best:
                self._best = objective
                self._expand(trainer)
        if self.adaptive and self.mode == "prune":
            self._adapt_price(trainer, _plastic(self._k_now), epoch)
        if self.implementation == "physical":
            last = self._epochs is not None and epoch >= self._epochs
            self._remove_dead(trainer, self._k_now if last else self.k_at(epoch + 1))
        self._log_width_changes(trainer)

    def _adapt_price(self, trainer: Context, plastic: bool, epoch: int = 0) -> None:
        """After a plastic epoch: double the price while the validation accuracy stays within
        noise of the yardstick (the best mean of :data:`SMOOTHING` successive plastic epochs'),
        hold it within twice that, halve it below; and keep the gates of the smallest network
        within noise (restored when plasticity ends).

        Noise is one standard error of the best accuracy on this validation set, and never
        less than half a point (the tolerance of the task panel's sufficient width); for a
        regression the score is minus the validation loss and its noise the loss's standard
        error.
        """
        accuracy, noise = trainer.validation_score()
        examples = len(trainer.data.y_val)
        if not plastic or not math.isfinite(accuracy) or not examples:
            return
        # The yardstick comes from the plastic epochs only (gates drawn at random cost a fixed
        # network some accuracy, which is not pruning's cost), and is the best mean of
        # SMOOTHING successive readings: the best single reading of many is a lucky one, so
        # far above the typical one that the smaller networks read after it seemed to cost
        # accuracy, the price fell and the run kept a large network. Until SMOOTHING readings
        # exist, the mean of those there are stands in, and is not kept.
        self._readings = (self._readings + [accuracy])[-SMOOTHING:]
        smoothed = sum(self._readings) / len(self._readings)
        if len(self._readings) == SMOOTHING:
            self._best_accuracy = (smoothed if self._best_accuracy is None
                                   else max(self._best_accuracy, smoothed))
        best = smoothed if self._best_accuracy is None else self._best_accuracy
        tolerance = (max(0.005, math.sqrt(best * (1 - best) / examples))
                     if trainer.objective.classifies else noise)
        self._keep_if_smallest(trainer, epoch, accuracy, best, tolerance)
        if accuracy >= best - tolerance:
            self._price_scale *= PRICE_UP
        elif accuracy < best - 2 * tolerance:  # between the two: hold the price
            self._price_scale *= PRICE_DOWN

    def _keep_if_smallest(self, trainer: Context, epoch: int, accuracy: float, best: float,
                          tolerance: float) -> None:
        """Remember the gates of the smallest network (parameters of its export) whose
        validation score is within noise of the yardstick."""
        if accuracy < best - tolerance:
            return
        size = sum(parameter.numel() for parameter in
                   self.live_model(trainer.model, select_inputs=False).parameters())
        kept = self._kept
        if kept is None or kept["accuracy"] < best - tolerance or size <= kept["size"]:
            self._kept = {
                "epoch": epoch, "size": size, "accuracy": accuracy,
                "phi": {layer.name: layer.gate.phi.detach().clone() for layer in self._layers},
                "unit_id": {layer.name: layer.gate.unit_id.clone() for layer in self._layers},
                # units with an open gate (a channel: any of its positions), which the physical
                # implementation keeps allocated until they are restored
                "open": {layer.name: layer.gate.unit_id[
                    layer.gate.phi.detach().reshape(len(layer.gate.unit_id), -1).amax(1) > 0]
                    for layer in self._layers}}

    def _restore_kept(self, trainer: Context) -> None:
        """When plasticity ends, go back to the kept gates: a price raised until the validation
        score falls has cut an epoch or two too far. The physical implementation kept their
        units allocated (see :meth:`_remove_dead`); afterwards the closed ones go."""
        kept, self._kept = self._kept, None
        with torch.no_grad():
            for layer in self._layers:
                ids, phi = kept["unit_id"][layer.name], kept["phi"][layer.name]
                now = layer.gate.unit_id
                if torch.equal(now, ids):
                    layer.gate.phi.copy_(phi)
                else:  # physical: units removed since are a subset of those kept then
                    index = {int(unit): row for row, unit in enumerate(ids.tolist())}
                    rows = torch.tensor([index[int(unit)] for unit in now.tolist()])
                    layer.gate.phi.copy_(phi.index_select(0, rows))
        trainer.log_event(f"restored the gates of epoch {kept['epoch']}, the smallest network "
                          f"within noise of the best ({kept['size']:,} parameters)")
        if self.implementation == "physical":
            self._remove_dead(trainer, self._k_now)

    def _log_width_changes(self, trainer: Context) -> None:
        """Say which gated layers closed or opened units this epoch (a report's events)."""
        widths = self.live_widths(trainer.model)
        for layer in self._layers:
            before, now = self._logged_widths.get(layer.name), widths[layer.name]
            if before is not None and now != before:
                change = "closed" if now < before else "opened"
                trainer.log_event(f"{layer.name}: {abs(now - before)} {layer.counts} {change} "
                                  f"({before} -> {now})")
        self._logged_widths = widths

    def collapse_advice(self, layer: str) -> str:
        """NPN's fix for a layer whose gates all closed: a lower price for its units."""
        return ("lower this layer's lambda (--npn-lambdas, one value per gated layer, input "
                "to output)")

    # ----------------------------------------------------------------- expansion
    def _expand(self, trainer: Context) -> None:
        """Wake hibernating units after an improving epoch.

        ``growth = 0`` is the reference's rule: a layer wakes one unit, and only while every
        unit it has allocated is active. Otherwise a layer wakes ``growth`` times its active
        units (at least one), whatever the penalty closed meanwhile: the price decides which
        units stay, the validation objective whether to add more.
        """
        for layer in self._layers:
            allocated = self._allocated[layer.name]
            if allocated >= self._nominal_size(layer):
                continue
            active = int(layer.gate.active().sum())
            if self.growth == 0 and active < allocated:
                continue
            count = max(1, math.ceil(self.growth * active))
            k = self._k_now if self._k_now > 0 else self.init_k
            for index in range(allocated, min(allocated + count, self._nominal_size(layer))):
                noise = self.phi_std * float(torch.randn(()))
                # Growing by a fraction, a unit must be born on (at k = 7 a symmetric draw
                # would close about one woken unit in twelve).
                value = self.wake_logit / k + (abs(noise) if self.growth else noise)
                self._wake(trainer, layer, index, value)
                self._allocated[layer.name] = index + 1

    def _nominal_size(self, layer: GatedLayer) -> int:
        return layer.gate.nominal_width * math.prod(layer.gate.phi.shape[1:])

    def _wake(self, trainer: Context, layer: GatedLayer, index: int, value: float) -> None:
        gate = layer.gate
        group_name = next((g for g, owner in self._owners.items() if owner == layer.name), None)
        physical = self.implementation == "physical"
        if physical and group_name is not None:
            self._grow_unit(trainer, group_name, layer, index, value)
            return
        positions = math.prod(gate.phi.shape[1:])
        unit, position = divmod(index, positions)
        rows = torch.nonzero(gate.unit_id == unit).reshape(-1)
        if rows.numel():
            gate.phi.data.view(gate.phi.shape[0], -1)[rows[0], position] = value
        else:
            # The unit's channel is not materialized yet: it wakes with this phi when it is.
            self._reserve[f"{layer.gate_name}.phi"].view(gate.nominal_width, -1)[
                unit, position] = value
        trainer.log_event(f"woke {layer.name} unit {index}")

    def _capture_reserve(self, model: nn.Module) -> None:
        """The full-size initial values of every tensor that a gated unit group resizes."""
        groups = find_unit_groups(model)
        for group_name in self._owners:
            for coupled in groups[group_name].tensors:
                tensor = getattr(coupled.module, coupled.tensor_name, None)
                if tensor is not None and coupled.key not in self._reserve:
                    self._reserve[coupled.key] = tensor.detach().cpu().clone()  # bookkeeping

    def _unit_ids(self, group_name: str, width: int) -> torch.Tensor:
        owner = self._owners.get(group_name)
        if owner is None:
            return torch.arange(width)
        layer = next(layer for layer in self._layers if layer.name == owner)
        return layer.gate.unit_id.cpu().clone()

    def _grow_unit(
        self, trainer: Context, group_name: str, layer: GatedLayer, index: int, value: float
    ) -> None:
        """Materialize full-size unit ``index``: the weights it has in the full-size network."""
        groups = find_unit_groups(trainer.model)
        group = groups[group_name]
        owners = {}
        for other in groups.values():
            block = other.features_per_unit
            for coupled in other.tensors:
                owners[(coupled.key, coupled.dim)] = (
                    other.name, block if coupled.role == "consumes" else 1, other.width)
        own_block = group.features_per_unit
        values = {}
        for coupled in group.tensors:
            if getattr(coupled.module, coupled.tensor_name, None) is None:
                continue
            block = own_block if coupled.role == "consumes" else 1
            piece = self._reserve[coupled.key].index_select(
                coupled.dim, expand_unit_indices(torch.tensor([index]), block))
            for dim in range(piece.dim()):
                other = owners.get((coupled.key, dim))
                if dim == coupled.dim or other is None:
                    continue
                name, other_block, width = other
                ids = self._unit_ids(name, width)
                piece = piece.index_select(dim, expand_unit_indices(ids, other_block))
            values[coupled.key] = piece
        values[f"{layer.gate_name}.phi"] = torch.full((1,), value)
        # Every value is given; a throwaway generator keeps the core's default draws from
        # moving the global random stream, so mask and physical runs draw the same numbers.
        # (Called directly rather than through trainer.grow so a gate optimizer follows too.)
        group = grow_units(trainer.model, group_name, 1, values=values,
                           optimizer=self._optimizers(trainer), generator=torch.Generator())
        trainer.log_event(f"grew {group_name} by 1 to {group.width}")
        trainer.log_event(f"woke {layer.name} unit {index}")

    def _remove_dead(self, trainer: Context, k: float) -> None:
        """Physically remove units whose gate is (practically) off at the coming ``k``."""
        for group_name, layer_name in self._owners.items():
            layer = next(layer for layer in self._layers if layer.name == layer_name)
            pi = layer.gate.probability(k).detach()
            alive = pi >= self.prune_below
            if self._kept is not None:  # units the kept gates open stay until restored
                alive |= torch.isin(layer.gate.unit_id, self._kept["open"][layer.name])
            keep = torch.nonzero(alive).reshape(-1)
            if keep.numel() == 0:
                keep = layer.gate.phi.detach().argmax().reshape(1)  # a layer keeps one unit
            if keep.numel() < pi.numel():
                prune_units(trainer.model, group_name, keep, optimizer=self._optimizers(trainer))
                trainer.log_event(
                    f"pruned {group_name} by {pi.numel() - keep.numel()} to {keep.numel()}")

    # ----------------------------------------------------------------- reporting
    def live_widths(self, model: nn.Module) -> dict[str, int]:
        """Units (or unit positions) per gated layer whose gate is on (pi >= 0.5), in order."""
        return {layer.name: int(self._gate(model, layer).active().sum())
                for layer in self._layers}

    def width_meanings(self, model: nn.Module) -> dict[str, str]:
        """A gated conv counts its output channels, a gated Linear its input features."""
        return {layer.name: layer.counts for layer in self._layers}

    def live_model(self, model: nn.Module, select_inputs: bool = True) -> nn.Module:
        """The plain compact network the gated model is at test time."""
        return compact_npn(model, select_inputs=select_inputs)

    def metrics(self, trainer: Context) -> dict[str, float]:
        """k, the expected active weights, the penalty and the compact model's nonzero weights."""
        # Zero columns count no nonzero weights, so skip the input selection and its trace.
        compact = self.live_model(trainer.model, select_inputs=False)
        nonzero = sum(int(torch.count_nonzero(module.weight)) for module in compact.modules()
                      if isinstance(getattr(module, "weight", None), torch.Tensor)
                      and module.weight.dim() >= 2)
        with torch.no_grad():
            expected = sum(float(layer.expected_l0()) for layer in self._layers)
            penalty = float(self.penalty(trainer))
        return {"k": self._k_now, "price_scale": self._price_scale,
                "expected_active_weights": expected, "penalty": penalty,
                "nonzero_weights": nonzero}

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {"best": self._best, "allocated": dict(self._allocated),
                 "reserve": dict(self._reserve), "price_scale": self._price_scale,
                 "best_accuracy": self._best_accuracy, "null_loss": self._null_loss,
                 "kept": self._kept, "readings": list(self._readings)}
        if self._gate_optimizer is not None:
            state["gate_optimizer"] = self._gate_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._best = state.get("best")
        self._price_scale = float(state.get("price_scale", 1.0))
        self._best_accuracy = state.get("best_accuracy")
        self._null_loss = state.get("null_loss")
        self._kept = state.get("kept")
        # (A checkpoint from before the running mean holds the best single reading as the
        # yardstick, and no readings: such a run goes on held to that reading.)
        self._readings = [float(a) for a in state.get("readings", [])]
        self._allocated = {str(k): int(v) for k, v in state.get("allocated", {}).items()}
        self._reserve = {str(k): v.clone() for k, v in state.get("reserve", {}).items()}
        # Loaded into the gate optimizer when training (re)starts, over the loaded phi.
        self._gate_optimizer_state = state.get("gate_optimizer")


def _plastic(k: float) -> bool:
    """Whether gates are drawn at random and priced (k = 0 is dropout: phi does not move)."""
    return 0 < k < INF


def _null_loss(trainer: Context) -> float:
    """The loss of the best constant prediction on the validation targets (a held-out sample
    of the task's; the training targets where there is no validation split), the unit of the
    ``parameter`` price; 1 where there are no targets or they are all alike.

    The validation split is indexable and drawn at random wherever the data comes from (a
    stream's first batches need not be: an unshuffled stream is often sorted by class), and
    every loop that sizes a network has one: the Trainer, SelfSizing and the integrations
    price alike.
    """
    data = trainer.data
    targets = data.y_val if len(data.y_val) else data.y_train
    targets = torch.as_tensor(targets)
    if not len(targets):
        return 1.0
    return trainer.objective.null_loss(targets.cpu()) or 1.0


def _as_tuple(value: Any) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, str):
        return tuple(float(part) for part in value.split(",") if part.strip())
    return (value,)


def _module_order(model: nn.Module):
    order = {id(module): index for index, module in enumerate(model.modules())}
    return lambda layer: order[id(layer.governed)]
