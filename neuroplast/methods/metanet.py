"""``metanet``: a network that finds its own hidden width, by search or by metabolism.

Two strategies (``strategy``):

- ``search`` (the default): :mod:`neuroplast.methods.width_search`. Double the width while
  that helps beyond the validation noise (once, a gain within it earns one more doubling,
  judged with it), then compress it while halving costs nothing beyond that noise, bisect
  once, and train the smallest width within the noise of the best to the end of the budget.
  It reads only ``layers``, ``min_width``, ``max_width`` and ``search_share``; setting an
  option of the metabolism under it is an error, not a no-op.
- ``metabolism``: the Metabolize Neural Network (Dai et al., arXiv 1809.00837),
  reconstructed, described below. It did not find a task's width with its defaults (from
  1024 units it grew on tasks that need 12-24, from 8 it ended anywhere from 16 to 419), so
  it is no longer the default; the recipes select it.

Only the paper's abstract is available, so the metabolism is a reconstruction faithful to it
(see ``docs/metanet.md`` for every decision). A shallow network metabolises its hidden
neurons in *cycles* of ``cycle_epochs`` epochs:

1. train a cycle; during its last epoch, forward hooks gather each unit's mean |activation|,
   mean activation and fraction of zero outputs (no extra forward pass);
2. **autophagy**: a unit whose expression (mean |activation| x norm of its outgoing weights)
   stays under ``autophagy_threshold`` x the layer's mean, or that is zero on at least
   ``dead_fraction`` of the samples, for ``autophagy_patience`` consecutive cycles is removed,
   unless its expression is rising by more than ``recovery`` per cycle; newborns are protected
   for ``protect_cycles`` cycles, at most ``max_removal`` of a layer goes per cycle, never below
   ``min_width``, and the removed units' mean contribution is folded into the next layer's bias;
3. **proliferation** when the growth trigger fires: ``max(growth_min, growth_fraction x
   width)`` units by random birth, division, gradient-guided birth or splitting steepest
   descent (smooth activations only). The plateau trigger fires when the cycle did not improve
   the best validation loss by ``plateau_threshold`` (relative) and by ``significance``
   standard errors of that loss, unless the network is memorising
   (validation worse while training still improves by more than that), the last growth has not
   yet paid off, or autophagy removed neurons of the layer in the last ``brake_cycles`` cycles
   (it has neurons to spare). A growth pays off when, within ``stable_cycles`` cycles, the loss
   beats the best before it by ``payoff_threshold`` (relative) and beyond the noise; one that
   does not ends proliferation for the run (``payoff="error"``: judged on the validation
   error with thinning's tolerance instead, and kept for thinning to cut back);
4. **thinning** (``thinning`` > 0, off by default): on a cycle without progress that does not
   grow, while the network has neurons to spare (it memorises, or autophagy is shedding) or
   once proliferation has ended, the ``thinning`` fraction of each layer's least-expressed
   neurons goes (autophagy's removals that cycle count towards it). A thinning is kept when
   the mean validation error of the ``stable_cycles`` cycles after it is within
   ``thinning_cost`` (relative) or ``thinning_significance`` standard errors of the lowest
   such mean seen before; one that is not is undone by division and ends thinning and
   proliferation. Growth and thinning wait for each other's verdict, and neither starts when
   the budget leaves no time to judge it;
5. repeat until the widths have not changed and the validation loss has set no record for
   ``stable_cycles`` cycles; then train the final widths to the end of the budget (or, with
   ``stop_when_stable``, fine-tune ``finetune_epochs`` and stop); the last ``finetune_epochs``
   of the epoch budget are always fixed-width.

Every resize is physical (the core's ``grow_units`` / ``prune_units`` / ``split_units``) with
the trainer's optimizer carried along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from ..core.groups import UnsupportedModelError, select_unit_groups
from ..policy import Method, option
from .expression import (
    ExpressionMonitor,
    UnitStats,
    dense_group,
    expression_scores,
    remove_units,
    select_autophagy,
    under_expressed,
)
from .proliferation import (
    divide,
    gradient_birth,
    random_birth,
    splitting_activation,
    steepest_split,
    warm_second_moments,
)
from .width_search import SEARCH_SHARE, WidthSearch

if TYPE_CHECKING:
    from ..core.trace import UnitGraph
    from ..policy import Context

STRATEGIES = ("search", "metabolism")
PROLIFERATIONS = ("division", "random", "gradient", "splitting", "none")
TRIGGERS = ("plateau", "schedule")
PAYOFFS = ("loss", "error")
PHASES = ("metabolism", "finetune", "done")
# Options only the metabolism reads: set under the search, they would silently do nothing.
METABOLISM_OPTIONS = (
    "proliferation", "division_noise", "birth_fanout_std", "gradient_eps", "gradient_samples",
    "split_step", "warm_moments", "autophagy", "cycle_epochs", "trigger", "plateau_threshold",
    "payoff_threshold", "payoff", "significance", "schedule_cycles", "growth_fraction",
    "growth_min", "autophagy_threshold", "dead_fraction", "autophagy_patience", "recovery",
    "protect_cycles", "max_removal", "thinning", "thinning_cost", "thinning_significance",
    "brake_cycles", "stable_cycles", "finetune_epochs", "stop_when_stable", "fold_bias")


@dataclass
class MetaNet(Method):
    """A hidden width found by a width search (default) or a metabolism cycle.

    Example::

        Trainer(build_model("mlp", (1, 28, 28), 10, widths=[8]), data, MetaNet(),
                TrainConfig(epochs=30, lr=0.01, scheduler="cosine")).fit()
        MetaNet(strategy="metabolism", proliferation="gradient", cycle_epochs=1)
    """

    name = "metanet"
    resizes_traced_groups = True  # its width search runs on a traced model's groups
    reads_training_examples = True  # compression refits on training inputs
    description = ("MetaNet: grows the hidden width while it helps, compresses it while it "
                   "is free (or metabolises it: proliferation and autophagy in cycles)")
    # The default job's schedule. The search takes at most the first two thirds of it, where
    # the cosine rate is still at least a quarter of its start; the chosen width the rest.
    train_defaults = {"epochs": 30, "lr": 0.01, "scheduler": "cosine"}
    # Runs whose config.json holds only the options typed predate the search: the metabolism.
    legacy_defaults = {"strategy": "metabolism"}
    # The search (the default) reads the five top-level options; the metabolism owns the rest.
    option_groups = {"metabolism strategy (--metanet-strategy metabolism)": (
        "proliferation", "autophagy", "cycle_epochs", "trigger", "payoff", "growth_fraction",
        "thinning", "finetune_epochs", "stop_when_stable")}
    internal_options = (
        "plateau_threshold", "payoff_threshold", "significance", "schedule_cycles", "growth_min",
        "division_noise", "birth_fanout_std", "gradient_eps", "gradient_samples", "split_step",
        "autophagy_threshold", "dead_fraction", "autophagy_patience", "recovery",
        "protect_cycles", "max_removal", "fold_bias", "warm_moments", "thinning_cost",
        "thinning_significance", "brake_cycles", "stable_cycles")

    strategy: str = option(
        "search", "search (double the width while validation improves beyond its noise, "
                  "then compress it while it costs nothing beyond that noise, bisect, train "
                  "the smallest width within the noise of the best to the end; reads only "
                  "layers, min-width, max-width and search-share) or metabolism (the cycles "
                  "of proliferation and autophagy that every other option tunes)")
    search_share: float = option(
        SEARCH_SHARE, "search: the share of the epoch budget the search may take; the width "
                      "it chooses trains for the rest")
    proliferation: str = option(
        "division", "how neurons are born: division (a copy of an expressed parent), random, "
                    "gradient (GradMax-like), splitting (splitting steepest descent; needs a "
                    "smooth activation such as --activation tanh) or none (autophagy only)")
    autophagy: bool = option(True, "remove under-expressed neurons")
    layers: str = option(
        "first", "which hidden layers are sized: first, all, or names like fc1,fc2 (the "
                 "search scales them all by one factor)")
    cycle_epochs: int = option(1, "epochs per metabolism cycle")
    trigger: str = option(
        "plateau", "when to proliferate: plateau (the validation loss stalled) or schedule "
                   "(every cycle for the first schedule-cycles cycles)")
    plateau_threshold: float = option(
        0.2, "trigger plateau: grow when a cycle improves the best validation loss by less "
              "than this fraction (not when it got worse while the training loss still "
              "improves by more: that network is memorising, not short of neurons)")
    payoff_threshold: float = option(
        0.05, "a growth pays off when, within stable-cycles cycles, the validation loss falls "
              "this fraction (and beyond the noise) below the best before it; one that does "
              "not ends proliferation")
    payoff: str = option(
        "loss", "what a growth must lower to pay off: loss (the validation loss, by "
                "payoff-threshold and beyond the noise, within stable-cycles cycles) or error "
                "(the mean validation error since it, within stable-cycles cycles, below the "
                "lowest stable-cycles mean before it by more than thinning-cost or "
                "thinning-significance standard errors: thinning's test, mirrored; a growth "
                "that does not pay is kept, for thinning to cut back)")
    significance: float = option(
        2.0, "a validation loss is progress only when it beats the best by more than this "
             "many standard errors; a growth has paid off only after such a record")
    schedule_cycles: int = option(5, "trigger schedule: grow at each of the first N cycles")
    growth_fraction: float = option(1.0, "neurons added per event, as a fraction of the width")
    growth_min: int = option(4, "at least this many neurons per proliferation event")
    max_width: int = option(4096, "never grow a layer beyond this width")
    division_noise: float = option(
        0.05, "division: std of the noise on the copy's fan-in, relative to std(W_in)")
    birth_fanout_std: float = option(
        0.0, "random birth: fan-out std relative to std(W_out) (0 keeps outputs unchanged)")
    gradient_eps: float = option(
        0.1, "gradient birth: bias of new units, in stds of the layer's pre-activations, so "
             "ReLU passes their fan-in gradient (absorbed by the next bias: outputs unchanged)")
    gradient_samples: int = option(
        1024, "gradient birth and splitting: training samples the gradient direction or the "
              "splitting matrices are estimated on")
    split_step: float = option(
        0.05, "splitting: parent and copy move this fraction of the norm of the parent's "
              "fan-in and bias away from it, each way along the split direction")
    autophagy_threshold: float = option(
        0.3, "a neuron is under-expressed below this fraction of its layer's mean expression")
    dead_fraction: float = option(
        0.99, "...or when its activation is zero on at least this fraction of samples")
    autophagy_patience: int = option(
        2, "remove a neuron after this many consecutive under-expressed cycles")
    recovery: float = option(
        0.25, "an under-expressed neuron whose expression rose by more than this fraction "
              "since the last cycle is recovering, not dying (newborns start small)")
    protect_cycles: int = option(1, "newborn neurons are not judged for this many cycles")
    max_removal: float = option(0.3, "remove at most this fraction of a layer per cycle")
    min_width: int = option(
        0, "never shrink a layer below this width (0: 1 for the search, 8 for the metabolism)")
    fold_bias: bool = option(True, "fold removed neurons' mean output into the next bias")
    warm_moments: bool = option(
        True, "random and gradient births start with their layer's mean Adam second moment, "
              "not zero (division copies keep zero: their larger first steps help them "
              "diverge from their parents; the same for splitting copies)")
    thinning: float = option(
        0.0, "on a validation plateau without growth, while the network has neurons to spare "
             "(memorising, or autophagy shedding) or once proliferation has ended, remove this "
             "fraction of every layer's least-expressed neurons (0: off); see thinning-cost")
    thinning_cost: float = option(
        0.01, "a thinning is kept when the mean validation error of the stable-cycles cycles "
              "after it is within this fraction (or the noise) of the lowest such mean seen "
              "before it; one that is not is undone by division and ends thinning and "
              "proliferation")
    thinning_significance: float = option(
        1.0, "thinning: a validation error is worse than the reference only when it is more "
             "than this many (binomial) standard errors above it")
    brake_cycles: int = option(
        0, "a layer that lost neurons to autophagy does not grow for this many cycles after "
           "(0: stable-cycles)")
    stable_cycles: int = option(
        3, "stop metabolising after this many cycles without a size change or a validation "
           "improvement")
    finetune_epochs: int = option(
        2, "the budget's last epochs are fixed-width; with stop-when-stable, the fixed-width "
           "epochs that close the run once the widths settle")
    stop_when_stable: bool = option(
        False, "end the run finetune-epochs after the widths settle, instead of training the "
               "final widths for the rest of the epoch budget (saves time; a slow learner "
               "may stop early)")

    def __post_init__(self) -> None:
        if type(self.min_width) is int and self.min_width == 0 and self.strategy in STRATEGIES:
            self.min_width = 8 if self.strategy == "metabolism" else 1  # 0: the strategy's own
        self._check_options()
        self._search: WidthSearch | None = None
        if self.strategy == "search":
            self._search = WidthSearch(self.min_width, self.max_width, share=self.search_share)
        self._monitor = ExpressionMonitor()
        self._layers: list[str] = []
        self._units: dict[str, dict[str, torch.Tensor]] = {}  # age, low per layer
        self._phase = "metabolism"
        self._cycle = 0
        self._finetune_until = 0
        self._best_val: float | None = None
        self._last_train: float | None = None
        self._stable = 0
        self._since_improvement = 0
        self._growth_events = 0
        self._growth_reference: float | None = None  # best val loss at an unpaid growth
        self._growth_cycle = 0  # the cycle of that growth
        self._growth_errors: list[float] = []  # payoff error: the errors since it
        self._growth_exhausted = False  # a growth failed to pay off: no more proliferation
        self._shrunk_at: dict[str, int] = {}  # the cycle each layer last lost neurons
        self._recent_errors: list[float] = []  # the last stable_cycles validation errors
        self._best_error: float | None = None  # their lowest mean so far (thinning's signal)
        self._thin_reference: float | None = None  # that mean when an unjudged thinning began
        self._thin_errors: list[float] = []  # the errors since it
        self._thinned: dict[str, int] = {}  # neurons each layer lost to it
        self._regrow: dict[str, int] = {}  # neurons to give back (it cost too much)
        self._thinning_exhausted = False
        self._progress = True
        self._births = 0
        self._deaths = 0
        self._neuron_epochs = 0
        self._epoch_births = 0
        self._epoch_deaths = 0
        self._val_improvement = math.nan
        self._train_improvement = math.nan

    # ------------------------------------------------------------------ options
    def _check_options(self) -> None:
        def fail(option: str, why: str) -> None:
            value = getattr(self, option)
            raise ValueError(f"--metanet-{option.replace('_', '-')} {why}, got {value!r}")

        def number(option: str) -> float:
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                fail(option, "must be a number")
            return value

        def integer(option: str, low: int) -> None:
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(option, f"must be an integer >= {low}")

        if self.strategy not in STRATEGIES:
            fail("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.proliferation not in PROLIFERATIONS:
            fail("proliferation", f"must be one of {', '.join(PROLIFERATIONS)}")
        if self.trigger not in TRIGGERS:
            fail("trigger", f"must be one of {', '.join(TRIGGERS)}")
        if self.payoff not in PAYOFFS:
            fail("payoff", f"must be one of {', '.join(PAYOFFS)}")
        for flag in ("autophagy", "fold_bias", "warm_moments", "stop_when_stable"):
            if not isinstance(getattr(self, flag), bool):
                fail(flag, "must be true or false")
        if not isinstance(self.layers, str) or not self.layers.strip():
            fail("layers", "must be 'first', 'all' or comma-separated layer names")
        for name, low in (("cycle_epochs", 1), ("schedule_cycles", 0),
                          ("growth_min", 1), ("max_width", 1), ("gradient_samples", 1),
                          ("autophagy_patience", 1), ("protect_cycles", 0), ("min_width", 1),
                          ("stable_cycles", 1), ("brake_cycles", 0), ("finetune_epochs", 0)):
            integer(name, low)
        for name in ("plateau_threshold", "payoff_threshold", "significance", "recovery",
                     "thinning_significance",
                     "growth_fraction", "division_noise", "birth_fanout_std",
                     "autophagy_threshold"):
            if number(name) < 0:
                fail(name, "must be >= 0")
        for name in ("gradient_eps", "split_step"):
            if not 0 < number(name) < math.inf:
                fail(name, "must be a positive number")
        if not 0 < number("search_share") <= 1:
            fail("search_share", "must be in (0, 1]")
        if not 0 < number("dead_fraction") <= 1:
            fail("dead_fraction", "must be in (0, 1]")
        if not 0 <= number("thinning") < 1:
            fail("thinning", "must be in [0, 1)")
        if number("thinning_cost") < 0:
            fail("thinning_cost", "must be >= 0")
        if not 0 <= number("max_removal") <= 1:
            fail("max_removal", "must be in [0, 1]")
        if self.min_width > self.max_width:
            fail("min_width", f"must not exceed --metanet-max-width ({self.max_width})")
        if self.strategy == "search":
            defaults = {f.name: f.default for f in fields(self)}
            changed = [name for name in METABOLISM_OPTIONS
                       if getattr(self, name) != defaults[name]]
            if changed:
                flags = ", ".join(f"--metanet-{name.replace('_', '-')}" for name in changed)
                raise ValueError(f"{flags} tune the metabolism, which this run does not use: "
                                 "add --metanet-strategy metabolism (metanet_strategy = "
                                 "\"metabolism\" in a recipe), or drop them")
        elif self.search_share != SEARCH_SHARE:
            fail("search_share", "is an option of --metanet-strategy search")

    def _resolve_layers(self, model: torch.nn.Module, graph: UnitGraph | None = None
                        ) -> list[str]:
        if graph is not None:
            return self._traced_layers(graph)
        names = list(select_unit_groups(model, self.layers, "--metanet-layers"))
        if not names:
            raise ValueError("metanet found no resizable hidden layer in this model")
        for name in names:
            dense_group(model, name)  # clear error for conv layers
            if self.proliferation == "splitting":
                splitting_activation(model, name)  # clear error for ReLU, before training
        return names

    def _traced_layers(self, graph: UnitGraph) -> list[str]:
        """The groups a traced model's search resizes: every layer's units by default (not
        its residual streams or heads, which ``layers`` may name)."""
        if self._search is None:
            raise ValueError("on a traced model metanet runs its width search; the metabolism "
                             "needs an MLP's Linear layers (drop --metanet-strategy metabolism)")
        spec = self.layers.strip()
        units = [name for name, group in graph.groups.items() if group.kind == "units"]
        if spec in ("all", "first"):
            names = units if spec == "all" else units[:1]
        else:
            names = [name.strip() for name in spec.split(",") if name.strip()]
            unknown = [name for name in names if name not in graph.groups]
            if unknown:
                raise ValueError(f"metanet layers {unknown} are not unit groups of this model; "
                                 f"its groups are {list(graph.groups)}")
        if not names:
            raise ValueError("metanet found no resizable group in this model")
        return names

    # ------------------------------------------------------------------ hooks
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Check the layers to metabolise exist and are fully connected (no change). A model
        neuroplast cannot walk is checked against its traced groups when training begins."""
        try:
            self._resolve_layers(model)
        except UnsupportedModelError:
            pass
        return model

    def on_train_begin(self, trainer: Context) -> None:
        self._layers = self._resolve_layers(trainer.model, getattr(trainer, "graph", None))
        if self._search is not None:
            self._search.begin(trainer, self._layers)
            return
        for layer in self._layers:
            width = dense_group(trainer.model, layer).width
            units = self._units.get(layer)
            if units is None or units["age"].numel() != width:
                # Starting units count as grown-up: a dead one may go after the first cycles.
                self._units[layer] = {
                    "age": torch.full((width,), self.protect_cycles, dtype=torch.long),
                    "low": torch.zeros(width, dtype=torch.long),
                    "score": torch.full((width,), math.inf),  # no rise to protect them
                }
        self._monitor.attach(trainer.model, self._layers)
        if self._phase == "done":
            trainer.stop_training = True

    def on_train_end(self, trainer: Context) -> None:
        self._monitor.detach()

    def on_epoch_begin(self, trainer: Context, epoch: int) -> None:
        if self._search is not None:
            return
        self._epoch_births = self._epoch_deaths = 0
        # Statistics describe the network autophagy acts on, so only the cycle's last epoch.
        self._monitor.active = self._phase == "metabolism" and self._cycle_ends(trainer, epoch)

    def _cycle_ends(self, trainer: Context, epoch: int) -> bool:
        # No event on the budget's last epoch: the logged metrics would describe another net.
        last = trainer.config.epochs - max(self.finetune_epochs, 1)
        return epoch % self.cycle_epochs == 0 and epoch <= last

    def on_epoch_end(self, trainer: Context, epoch: int) -> None:
        if self._search is not None:
            self._search.epoch_end(trainer, epoch)
            return
        self._neuron_epochs += sum(self._width(layer) for layer in self._layers)
        self._monitor.active = False
        if self._phase == "finetune":
            if epoch >= self._finetune_until:
                self._phase = "done"
                trainer.stop_training = True
            return
        if self._phase != "metabolism" or not self._cycle_ends(trainer, epoch):
            return
        self._end_cycle(trainer, epoch)
        next_end = epoch + self.cycle_epochs
        if self._converged():
            self._phase = "finetune"
            if not self.stop_when_stable:
                self._finetune_until = trainer.config.epochs
                trainer.log_event("metanet: widths stable, training them to the end of the budget")
                return
            self._finetune_until = epoch + self.finetune_epochs
            trainer.log_event(f"metanet: widths stable, fine-tuning {self.finetune_epochs} epochs")
            if self.finetune_epochs == 0:
                self._phase = "done"
                trainer.stop_training = True
        elif not self._cycle_ends(trainer, next_end):
            self._phase = "finetune"  # the budget leaves no room for another cycle
            self._finetune_until = trainer.config.epochs

    # ------------------------------------------------------------------ the cycle
    def _width(self, layer: str) -> int:
        return self._units[layer]["age"].numel()

    def _end_cycle(self, trainer: Context, epoch: int) -> None:
        self._cycle += 1
        generator = torch.Generator().manual_seed(trainer.config.seed * 1_000_003 + epoch)
        metrics = trainer.last_metrics
        train_loss = float(metrics.get("train_loss", math.nan))
        val_loss = float(metrics.get("val_loss", math.nan))
        noise = self.significance * float(metrics.get("val_loss_se", 0.0))
        if not math.isfinite(val_loss):  # no validation split: the training loss stands in
            val_loss, noise = train_loss, 0.0
        self._val_improvement = _improvement(self._best_val, val_loss)
        self._train_improvement = _improvement(self._last_train, train_loss)
        # A record by less than the loss's noise is luck, not progress (on easy data the
        # relative improvements of a near-zero loss are all noise).
        error, size = self._validation_error(trainer, val_loss)
        self._settle_growth(trainer, val_loss, noise, error, size)
        self._settle_thinning(trainer, error, size, noise)
        self._recent_errors = [*self._recent_errors, error][-self.stable_cycles:]
        if len(self._recent_errors) == self.stable_cycles:
            mean = sum(self._recent_errors) / self.stable_cycles
            self._best_error = mean if self._best_error is None else min(self._best_error, mean)
        # A growth or thinning that cannot be judged before the budget's fixed-width end would
        # leave the run at a width no verdict backs, so none starts in the last cycles.
        judgeable = self._cycles_left(trainer, epoch) >= self.stable_cycles
        self._progress = self._best_val is None or (
            val_loss < self._best_val - noise
            and self._val_improvement >= self.plateau_threshold)
        grow = self._growth_fires() and (judgeable or self.trigger == "schedule")

        scores: dict[str, torch.Tensor] = {}
        shrunk: set[str] = set()
        for layer in sorted(self._monitor.stats):  # the same order on every rank
            self._monitor.stats[layer].reduce(trainer.all_reduce_sum_)
        widths = {layer: self._width(layer) for layer in self._layers}  # before autophagy
        for layer in self._layers:
            units = self._units[layer]
            units["age"] += 1
            stats = self._monitor.stats.get(layer)
            if stats is None or stats.width != units["age"].numel():
                continue  # nothing measured (an empty epoch): judge nobody
            scores[layer] = expression_scores(trainer.model, layer, stats.mean_abs())
            if self.autophagy and self._autophagy(trainer, layer, stats, scores):
                shrunk.add(layer)
                self._shrunk_at[layer] = self._cycle
        changed = bool(shrunk)
        grown = False
        if grow:
            attempted = False
            for layer in self._layers:
                if self.trigger == "schedule" or not self._shedding(layer):
                    attempted = True
                    grown |= self._proliferate(trainer, layer, scores.get(layer), generator)
            self._growth_events += 1
            if grown:
                if self.payoff == "error":
                    best = error if self._best_error is None else self._best_error
                else:
                    best = val_loss if self._best_val is None else min(self._best_val, val_loss)
                self._growth_reference, self._growth_cycle = best, self._cycle
                self._growth_errors = []
            elif attempted and self.proliferation == "splitting" and self.trigger == "plateau":
                # No split lowers the loss: like a growth that did not pay off, and asking
                # again every cycle would only repeat the eigenproblems.
                self._growth_exhausted = True
                trainer.log_event("metanet: no split lowers the loss; proliferation ends")
            changed |= grown
        changed |= self._regrow_thinned(trainer, scores, generator)
        if judgeable and self._thinning_fires(grown):
            thinned = {layer: self._thin(trainer, layer, scores, widths[layer])
                       for layer in self._layers if layer in scores}
            self._thinned = {layer: n for layer, n in thinned.items() if n}
            if self._thinned:
                self._thin_reference = error if self._best_error is None else self._best_error
                self._thin_errors = []
                changed = True
        self._monitor.clear()

        # Any record, even within the noise, says training still helps: not converged yet.
        record = self._best_val is None or val_loss < self._best_val
        self._since_improvement = 0 if record else self._since_improvement + 1
        self._stable = 0 if changed else self._stable + 1
        if record:
            self._best_val = val_loss
        self._last_train = train_loss

    def _settle_growth(self, trainer: Context, val_loss: float, noise: float,
                       error: float, size: int) -> None:
        """Judge the pending growth. With ``payoff="loss"`` it pays off when, within
        ``stable_cycles`` cycles, the validation loss beats the best before it by
        ``payoff_threshold`` (relative) and by more than the noise. With ``payoff="error"``,
        when, within ``stable_cycles`` cycles, the mean validation error since it is below
        the lowest ``stable_cycles``-cycle mean before it by more than thinning's tolerance.

        A growth that does not pay off ends proliferation for the run: the network is not short
        of neurons. It is not undone: with thinning on, the cuts that follow start from it, so
        a run from a small start is judged, like one from a large start, against the error of
        a network wider than it needs. Any significant improvement would not do, because a
        network still learning its way down a long, gentle loss slope improves after every
        growth, which is then credited with what training did (Moons from 8 doubled to 547
        neurons that way).
        """
        reference = self._growth_reference
        if reference is None:
            return
        if self.payoff == "error":
            # The mean so far: a clear gain need not wait for the whole window (a doubling
            # every stable-cycles cycles would take 20 epochs from 8 to 1024 neurons).
            self._growth_errors.append(error)
            mean = sum(self._growth_errors) / len(self._growth_errors)
            paid = mean < reference - self._error_tolerance(mean, reference, size, noise)
        else:
            paid = val_loss < reference - max(self.payoff_threshold * abs(reference), noise)
        if not paid and self._cycle - self._growth_cycle < self.stable_cycles:
            return
        self._growth_reference, self._growth_errors = None, []
        if not paid:
            self._growth_exhausted = True
            trainer.log_event("metanet: the last growth did not pay off; proliferation ends")

    def _error_tolerance(self, mean: float, reference: float, size: int,
                         loss_noise: float) -> float:
        """How far a mean validation error may stray from ``reference`` by chance: the larger
        of ``thinning_cost`` (relative) and ``thinning_significance`` binomial standard
        errors on ``size`` examples (``loss_noise`` when the error is a loss, ``size`` 0).

        The standard error is taken at the larger of the two errors, with one error and one
        success added, so that a perfect score still has some noise: on easy data a single
        misclassified example would otherwise decide every verdict.
        """
        noise = loss_noise
        if size:
            level = (max(mean, reference) * size + 1) / (size + 2)
            noise = self.thinning_significance * math.sqrt(level * (1 - level) / size)
        return max(self.thinning_cost * reference, noise)

    def _validation_error(self, trainer: Context, val_loss: float) -> tuple[float, int]:
        """Thinning's signal: the validation error and the number of examples it is measured
        on, or the validation loss and 0 when no accuracy is logged.

        Not the loss: a network that memorises grows more confident, so its validation loss
        rises while its error does not, and a loss-judged thinning cut MNIST from 1024 to 15
        neurons (95.2 %), each step excused by the drift before it.
        """
        accuracy = float(trainer.last_metrics.get("val_accuracy", math.nan))
        size = len(getattr(trainer.data, "y_val", ()))
        if not math.isfinite(accuracy) or size == 0:
            return val_loss, 0
        return 1.0 - accuracy, size

    def _settle_thinning(self, trainer: Context, error: float, size: int,
                         loss_noise: float) -> None:
        """Judge the pending thinning once ``stable_cycles`` cycles have passed: kept when
        their mean validation error is within ``thinning_cost`` (relative) or
        ``thinning_significance`` standard errors of the lowest such mean the run had seen
        when it began; otherwise its neurons are given back (by division), and thinning and
        proliferation end. Without a validation error (``size`` 0) the loss and its noise
        stand in.

        Means over ``stable_cycles`` cycles on both sides, because single epochs' errors
        scatter by about their standard error: against the single lowest error, a thinning
        of MNIST from 1024 failed on one bad epoch at 339 neurons. And the reference is that
        lowest mean, not the error just before the thinning: judged step by step, a run of
        small losses each within the noise adds up to a large one.
        """
        reference = self._thin_reference
        if reference is None:
            return
        self._thin_errors.append(error)
        if len(self._thin_errors) < self.stable_cycles:
            return
        mean = sum(self._thin_errors) / len(self._thin_errors)
        self._thin_reference, self._thin_errors = None, []
        if mean <= reference + self._error_tolerance(mean, reference, size, loss_noise):
            self._thinned = {}
            return
        # The width is now bracketed: growth stops too (MNIST from 1024 doubled right after
        # an undone thinning, from 314 to 628 neurons, and the growth did not pay).
        self._regrow, self._thinned = self._thinned, {}
        self._thinning_exhausted = self._growth_exhausted = True
        trainer.log_event("metanet: the last thinning cost too much; it is undone, and "
                          "thinning and proliferation end")

    def _cycles_left(self, trainer: Context, epoch: int) -> int:
        """Cycle ends still to come before the budget's fixed-width epochs."""
        last = trainer.config.epochs - max(self.finetune_epochs, 1)
        return max(last - epoch, 0) // self.cycle_epochs

    def _thinning_fires(self, grown: bool) -> bool:
        """Thin on a validation plateau while the network has neurons to spare (it memorises,
        or autophagy is shedding some), or on any plateau once proliferation cannot fire."""
        if (self.thinning == 0 or grown or self._thinning_exhausted or self._progress
                or self._thin_reference is not None or self._growth_reference is not None):
            return False
        if self._memorising() or any(self._shedding(layer) for layer in self._layers):
            return True
        if self.proliferation == "none":
            return True
        if self.trigger == "schedule":
            return self._growth_events >= self.schedule_cycles
        return self._growth_exhausted

    def _thin(
        self, trainer: Context, layer: str, scores: dict[str, torch.Tensor], cycle_width: int
    ) -> int:
        """Remove ``layer``'s least-expressed neurons until the cycle, autophagy included, has
        taken the ``thinning`` fraction of the ``cycle_width`` it began with.

        Counting autophagy's removals keeps a layer that sheds a few neurons every cycle
        thinnable, without cutting it twice in one cycle.
        """
        width = self._width(layer)
        taken = cycle_width - width
        n = min(math.floor(self.thinning * cycle_width) - taken, width - self.min_width)
        if n <= 0:
            return 0
        remove = torch.argsort(scores[layer], stable=True)[:n].sort().values
        self._remove(trainer, layer, remove, scores, "thinning")
        return n

    def _regrow_thinned(
        self, trainer: Context, scores: dict[str, torch.Tensor], generator: torch.Generator
    ) -> bool:
        """Give back, by division of the most expressed neurons, what a failed thinning took."""
        regrown = False
        for layer, count in self._regrow.items():
            n = min(count, self._width(layer), self.max_width - self._width(layer))
            if n <= 0:
                continue
            group, _ = divide(trainer.model, layer, n, scores=scores.get(layer),
                              noise=self.division_noise, optimizer=trainer.optimizer,
                              generator=generator)
            self._add_newborns(layer, n)
            trainer.log_event(f"metanet: {layer} +{n} to {group.width} (thinning undone)")
            regrown = True
        self._regrow = {}
        return regrown

    def _growth_fires(self) -> bool:
        if self.proliferation == "none":
            return False
        if self._thin_reference is not None or self._regrow:
            return False  # a thinning is being judged, or its neurons are being given back
        if self.trigger == "schedule":
            return self._growth_events < self.schedule_cycles
        if self._growth_exhausted:
            return False
        # Plateau: needs a previous cycle to compare with.
        val, train = self._val_improvement, self._train_improvement
        if math.isnan(val) or math.isnan(train) or self._growth_reference is not None:
            return False  # no reference yet, or the last growth has not paid off
        return not self._progress and not self._memorising()

    def _memorising(self) -> bool:
        """The validation loss got worse while the training loss still improves by at least
        the plateau threshold: the network has capacity to spare."""
        val, train = self._val_improvement, self._train_improvement
        return val < 0 and train >= self.plateau_threshold

    def _shedding(self, layer: str) -> bool:
        """Whether autophagy removed neurons of ``layer`` in the last ``brake_cycles`` cycles.

        A layer still shedding under-expressed neurons has neurons to spare, so it does not
        grow. Without this brake a network learning its way down a long loss slope (a run of
        significant improvements, each under the plateau threshold) doubled again and again
        while autophagy trimmed it (Moons from 8, seed 0: growth every few cycles to 149).
        """
        shrunk_at = self._shrunk_at.get(layer)
        brake = self.brake_cycles or self.stable_cycles
        return shrunk_at is not None and self._cycle - shrunk_at < brake

    def _converged(self) -> bool:
        return (self._stable >= self.stable_cycles
                and self._since_improvement >= self.stable_cycles)

    def _autophagy(
        self, trainer: Context, layer: str, stats: UnitStats, scores: dict[str, torch.Tensor]
    ) -> bool:
        units = self._units[layer]
        low = under_expressed(scores[layer], stats.zero_fraction(),
                              threshold=self.autophagy_threshold,
                              dead_fraction=self.dead_fraction)
        low &= scores[layer] <= (1 + self.recovery) * units["score"]  # not recovering
        units["score"] = scores[layer].clone()
        eligible = units["age"] > self.protect_cycles
        remove, units["low"] = select_autophagy(
            scores[layer], low, eligible, units["low"], patience=self.autophagy_patience,
            max_removal=self.max_removal, min_width=self.min_width)
        if remove.numel() == 0:
            return False
        self._remove(trainer, layer, remove, scores, "autophagy")
        return True

    def _remove(
        self, trainer: Context, layer: str, remove: torch.Tensor,
        scores: dict[str, torch.Tensor], reason: str,
    ) -> None:
        """Remove units of ``layer`` (their mean output folded into the next bias)."""
        units = self._units[layer]
        mean = self._monitor.stats[layer].mean() if self.fold_bias else None
        group = remove_units(trainer.model, layer, remove, mean_activation=mean,
                             optimizer=trainer.optimizer)
        keep = torch.ones(units["age"].numel(), dtype=torch.bool)
        keep[remove] = False
        for key in units:
            units[key] = units[key][keep]
        scores[layer] = scores[layer][keep]
        self._monitor.stats[layer] = self._monitor.stats[layer].select(keep)
        self._deaths += remove.numel()
        self._epoch_deaths += remove.numel()
        trainer.log_event(f"{reason}: {layer} -{remove.numel()} to {group.width}")

    def _proliferate(
        self, trainer: Context, layer: str, scores: torch.Tensor | None,
        generator: torch.Generator,
    ) -> bool:
        width = self._width(layer)
        n = max(self.growth_min, math.ceil(self.growth_fraction * width))
        n = min(n, self.max_width - width)
        if self.proliferation in ("division", "splitting"):
            n = min(n, width)  # each unit divides at most once per event
        if n <= 0:
            return False
        model, optimizer = trainer.model, trainer.optimizer
        if self.proliferation == "division":
            group, _ = divide(model, layer, n, scores=scores, noise=self.division_noise,
                              optimizer=optimizer, generator=generator)
        elif self.proliferation == "random":
            group = random_birth(model, layer, n, fanout_std=self.birth_fanout_std,
                                 optimizer=optimizer, generator=generator)
        elif self.proliferation == "splitting":
            inputs, targets = self._sample(trainer, generator)
            group, parents = steepest_split(model, layer, n, inputs=inputs, targets=targets,
                                            step=self.split_step, optimizer=optimizer,
                                            loss_fn=trainer.objective)
            if parents.numel() == 0:
                trainer.log_event(f"proliferation (splitting): no unit of {layer} has a split "
                                  "that lowers the loss")
                return False
            if parents.numel() < n:  # only units with a negative splitting eigenvalue split
                trainer.log_event(f"proliferation (splitting): {parents.numel()} of the {n} "
                                  f"requested units of {layer} have a split that lowers the loss")
            n = parents.numel()
        else:
            inputs, targets = self._sample(trainer, generator)
            group = gradient_birth(model, layer, n, inputs=inputs, targets=targets,
                                   eps=self.gradient_eps, optimizer=optimizer,
                                   generator=generator, loss_fn=trainer.objective)
        if self.warm_moments and self.proliferation in ("random", "gradient"):
            warm_second_moments(model, layer, width, optimizer)
        self._add_newborns(layer, n)
        trainer.log_event(f"proliferation ({self.proliferation}): {layer} +{n} to {group.width}")
        return True

    def _add_newborns(self, layer: str, n: int) -> None:
        """Books for ``n`` units appended to ``layer``: age 0, protected, no history."""
        units = self._units[layer]
        units["age"] = torch.cat([units["age"], torch.zeros(n, dtype=torch.long)])
        units["low"] = torch.cat([units["low"], torch.zeros(n, dtype=torch.long)])
        units["score"] = torch.cat([units["score"], torch.zeros(n)])
        self._births += n
        self._epoch_births += n

    def _sample(
        self, trainer: Context, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gradient_samples`` training examples, drawn from the cycle's generator."""
        return trainer.training_examples(self.gradient_samples, generator)

    # ------------------------------------------------------------------ reporting and state
    def metrics(self, trainer: Context) -> dict[str, float]:
        if self._search is not None:
            return self._search.metrics()
        return {
            "cycle": self._cycle,
            "phase": PHASES.index(self._phase),
            "births": self._epoch_births,
            "deaths": self._epoch_deaths,
            "total_births": self._births,
            "total_deaths": self._deaths,
            "neuron_epochs": self._neuron_epochs,
        } | {  # the improvements exist from the second cycle on
            key: value for key, value in (("val_improvement", self._val_improvement),
                                          ("train_improvement", self._train_improvement))
            if not math.isnan(value)
        }

    def state_dict(self) -> dict[str, Any]:
        if self._search is not None:
            return {"search": self._search.state_dict()}
        return {
            "layers": list(self._layers),
            "units": {layer: dict(units) for layer, units in self._units.items()},
            "stats": {layer: s.to_state() for layer, s in self._monitor.stats.items()},
            "phase": self._phase,
            "cycle": self._cycle,
            "finetune_until": self._finetune_until,
            "best_val": self._best_val,
            "last_train": self._last_train,
            "stable": self._stable,
            "since_improvement": self._since_improvement,
            "growth_events": self._growth_events,
            "growth_reference": self._growth_reference,
            "growth_cycle": self._growth_cycle,
            "growth_exhausted": self._growth_exhausted,
            "growth_errors": list(self._growth_errors),
            "shrunk_at": dict(self._shrunk_at),
            "recent_errors": list(self._recent_errors),
            "best_error": self._best_error,
            "thin_errors": list(self._thin_errors),
            "thin_reference": self._thin_reference,
            "thinned": dict(self._thinned),
            "regrow": dict(self._regrow),
            "thinning_exhausted": self._thinning_exhausted,
            "progress": self._progress,
            "births": self._births,
            "deaths": self._deaths,
            "neuron_epochs": self._neuron_epochs,
            "val_improvement": _json_float(self._val_improvement),
            "train_improvement": _json_float(self._train_improvement),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "search" in state:
            if self._search is None:
                raise ValueError("this checkpoint holds a MetaNet width search, but the run "
                                 "is configured for --metanet-strategy metabolism")
            self._search.load_state_dict(state["search"])
            return
        if self._search is not None:
            # A metabolism's checkpoint from before the search was the default (its config.json
            # names no strategy): it goes on metabolising.
            self.strategy, self._search = "metabolism", None
        self._layers = list(state["layers"])
        self._units = {layer: {k: v.clone() for k, v in units.items()}
                       for layer, units in state["units"].items()}
        for units in self._units.values():  # checkpoints from before the recovery rule
            units.setdefault("score", torch.full((units["age"].numel(),), math.inf))
        self._monitor.stats = {layer: UnitStats.from_state(s)
                               for layer, s in state["stats"].items()}
        self._phase = state["phase"]
        self._cycle = state["cycle"]
        self._finetune_until = state["finetune_until"]
        self._best_val = state["best_val"]
        self._last_train = state["last_train"]
        self._stable = state["stable"]
        self._since_improvement = state["since_improvement"]
        self._growth_events = state["growth_events"]
        self._shrunk_at = dict(state.get("shrunk_at", {}))
        self._recent_errors = list(state.get("recent_errors", []))
        self._best_error = state.get("best_error")
        self._thin_errors = list(state.get("thin_errors", []))
        self._thin_reference = state.get("thin_reference")
        self._thinned = dict(state.get("thinned", {}))
        self._regrow = dict(state.get("regrow", {}))
        self._thinning_exhausted = state.get("thinning_exhausted", False)
        self._growth_cycle = state.get("growth_cycle", self._cycle)
        self._growth_exhausted = state.get("growth_exhausted", False)
        self._growth_errors = list(state.get("growth_errors", []))
        self._growth_reference = state.get(  # checkpoints from before it had a reference
            "growth_reference", None if state.get("growth_paid", True) else state["best_val"])
        self._progress = state.get("progress", True)
        self._births = state["births"]
        self._deaths = state["deaths"]
        self._neuron_epochs = state["neuron_epochs"]
        self._val_improvement = _float(state["val_improvement"])
        self._train_improvement = _float(state["train_improvement"])


def _improvement(previous: float | None, current: float) -> float:
    """Relative decrease from ``previous`` to ``current`` (NaN without a previous value)."""
    if previous is None or not math.isfinite(previous) or previous == 0:
        return math.nan
    return (previous - current) / abs(previous)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)
