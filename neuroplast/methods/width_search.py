"""MetaNet's width search: grow while it helps, compress while it is free, bisect, fine-tune.

The search trains the network at one width for a *rung* of epochs, reads its validation
accuracy, resizes, and trains the next rung, never restarting:

1. **up**: from the start width, double while each doubling sets a record beyond the noise;
   once in a search, a record within the noise earns one more doubling, judged with it
   against the rungs before both (a gain per doubling smaller than the noise adds up);
2. **down**: then halve, from the smallest width within the noise of the best, while the
   halved network stays within the noise of the best;
3. **bisect**: between the smallest width within the noise of the best and the largest width
   below it, try their geometric middle while they are more than :data:`BISECT_RATIO` apart;
4. **choose** the smallest width within the noise of the best, and train it to the end of the
   epoch budget.

*The noise* is the task panel's tolerance (``benchmarks/panel.py``): 0.5 points of accuracy
or one binomial standard error of the best accuracy on the validation split, whichever is
larger. The fixed-width sweeps' "sufficient width" is chosen by the same rule.

Every run, from a small start or a large one, so ends with a descent by compression from
the widest network that helped. That is what makes the two starts meet: a network shrunk
from a wider one keeps what the wider one learned, while one grown to the same width from a
narrower one has to learn it, and a search that compared the one kind on the way up with the
other on the way down ended wherever it started.

How the width moves:

- **growth** appends fresh units (the core's ``grow_units``: default fan-in, zero fan-out, so
  the function does not change) whose Adam second moments start at their layer's mean
  (MetaNet's ``warm_second_moments``). With a cold state, Adam's shared step count gives them
  steps several times the learning rate and they die: MNIST, 8 -> 16 units after 6 epochs, 12
  epochs, 3 seeds: 92.5 % cold, 94.1 % warm (fixed 8: 92.1 %, fixed 16: 94.6 %). Copies of
  existing units (division) stay copies: from 2 units the search never saw a doubling help;
- **shrinking** keeps the units whose activations best reconstruct what the layer feeds its
  consumer, on a sample of training inputs (greedy orthogonal matching pursuit), and refits
  the consumer's weights and bias to that reconstruction by least squares (:func:`compress`;
  it generalises folding the removed units' mean into the bias). Removing the
  least-expressed units instead removed whole groups of redundant units at once (each
  carries a share of their joint output, so each looks weak): on the planted task of the
  tests, 32 -> 16 units dropped to 86-93 % and the descent stopped there, while compression
  keeps 96-97 % down to the planted width. A digits network of 1024 units compressed to 64
  keeps its 99.0 % before any further training;
- a rung that has to start from another network than the current one (a bisection after a
  halving that cost too much, or the final choice) starts from a copy of the network taken
  at the end of that width's last rung (kept for every width within the noise of the best,
  on the CPU); the optimizer state is then cleared, since its moments described another
  network. The chosen width so trains on from the network its accuracy was measured on.

A rung trains until its validation accuracy stalls: it ends with the first epoch that does
not beat the rung's earlier epochs by more than the noise (the first rung, which trains from
the initialisation, with the second such epoch in a row). Its accuracy is the mean of its
last two epochs, and the network goes on from the better of the two (a rung ends on an epoch
without a record, which is sometimes a spike of the loss). The search ends by
:data:`SEARCH_SHARE` of the epoch budget, so the chosen width always trains the rest of it,
the low-learning-rate end of a cosine schedule included.

:class:`WidthLadder` is the decision alone (no training): which width to train next, given
each rung's accuracy. :class:`WidthSearch` runs it inside the training loop.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.optim import OptimizerArg
from ..core.resize import grow_units, prune_units
from .expression import dense_group, feature_module
from .proliferation import warm_second_moments

if TYPE_CHECKING:
    from ..core.trace import TracedGroup, UnitGraph
    from ..policy import Context

TOLERANCE_POINTS = 0.005  # the least tolerance: 0.5 points of accuracy, as the panel's
BISECT_RATIO = 1.5  # bisect while the bracket is wider: one step after a halving that cost
# The search ends by this share of the epoch budget: about eight rungs of two or three epochs
# fit in 20 of 30 epochs (at half, searches from 2 or 128 units were cut off before they ended).
SEARCH_SHARE = 0.67
COMPRESSION_SAMPLES = 1024  # training inputs a compression reconstructs (at least)


def tolerance(accuracy: float, examples: int) -> float:
    """How far an accuracy may fall short of ``accuracy`` by chance on ``examples`` examples:
    0.5 points or one binomial standard error, whichever is larger (the panel's rule)."""
    if examples <= 0 or not 0 <= accuracy <= 1:
        return TOLERANCE_POINTS
    return max(TOLERANCE_POINTS, math.sqrt(accuracy * (1 - accuracy) / examples))


class WidthLadder:
    """Which width to train next, from the validation accuracy of each width tried so far.

    Example (no training: ``accuracy_of`` stands for a rung at that width)::

        ladder = WidthLadder(start=8, examples=1000)
        width = ladder.next_width()
        while width is not None:
            ladder.record(width, accuracy_of(width))
            width = ladder.next_width()
        ladder.choice()  # the smallest width within the noise of the best
    """

    def __init__(self, start: int, min_width: int = 1, max_width: int = 4096,
                 examples: int = 0) -> None:
        self.start, self.min_width, self.max_width = start, min_width, max_width
        self.examples = examples  # validation examples: the noise of an accuracy
        self.noise: float | None = None  # a score's noise when it is not an accuracy
        self.rungs: list[tuple[int, float]] = []  # (width, accuracy) in the order trained
        self.direction = "up"
        # The way up's one climb on a gain within the noise: "unused", "open" (the last
        # doubling went on with one) or "spent".
        self.credit = "unused"

    # ------------------------------------------------------------------ what the rungs say
    def accuracies(self) -> dict[int, float]:
        """Each width's accuracy at its latest rung (the measurement the search acts on)."""
        return dict(self.rungs)

    def tolerance(self, best: float | None = None) -> float:
        """How far below ``best`` (by default the best rung's) a rung is within noise."""
        best = max(self.accuracies().values()) if best is None else best
        return self.noise if self.noise is not None else tolerance(best, self.examples)

    def good(self) -> list[int]:
        """The widths whose accuracy is within the noise of the best, smallest first."""
        accuracies = self.accuracies()
        floor = max(accuracies.values()) - self.tolerance()
        return sorted(w for w, a in accuracies.items() if a >= floor - 1e-12)

    def choice(self) -> int:
        """The smallest width within the noise of the best (the start before any rung)."""
        return self.good()[0] if self.rungs else self.start

    # ------------------------------------------------------------------ the ladder
    def record(self, width: int, accuracy: float) -> None:
        """The validation accuracy of a rung at ``width``."""
        self.rungs.append((width, accuracy))

    def next_width(self) -> int | None:
        """The width of the next rung, or None when the search is done."""
        if not self.rungs:
            return self.start
        width, accuracy = self.rungs[-1]
        if self.direction == "up":
            if self._growth_helps(accuracy) and 2 * width <= self.max_width:
                return 2 * width  # the start, or doubling helped: double (again)
            self.direction = "down"
            return self._halve()
        if self.direction == "down":
            if width in self.good():
                return self._halve()  # halving cost nothing: halve again
            self.direction = "bisect"
        return self._bisect()

    def _growth_helps(self, accuracy: float) -> bool:
        """Whether the way up goes on after a rung at ``accuracy``: after the start; after a
        doubling that beat every earlier rung beyond the noise; and, once in a search, after
        one that beat them within the noise. The doubling after that one is judged with it,
        against the rungs before both: a task whose accuracy gains less than the noise per
        doubling (teacher-d50-h16: +0.9 and +1.2 points from 8 to 32 units, noise 0.7) gains
        more over two. (Only once: each later rung has trained longer, and a climb on credit
        after credit ran a planted task's search from 2 units to 128, out of its budget.)"""
        earlier = [a for _, a in self.rungs[:-1]]
        if not earlier:
            return True
        reference = earlier[:-1] if self.credit == "open" else earlier
        if self.credit == "open":
            self.credit = "spent"
        if reference and accuracy > max(reference) + self.tolerance(max(reference)):
            return True
        if self.credit == "unused" and accuracy > max(earlier):
            self.credit = "open"  # a record within the noise: one more doubling decides
            return True
        return False

    def _halve(self) -> int | None:
        """Half the smallest width within the noise of the best (a width the way up measured
        is measured again: by compression now)."""
        half = self.good()[0] // 2
        if half >= self.min_width:
            return half
        self.direction = "bisect"
        return self._bisect()

    def _bisect(self) -> int | None:
        """The geometric middle of the smallest width within the noise of the best and the
        largest width below it, while they are more than :data:`BISECT_RATIO` apart."""
        high = self.good()[0]
        below = [w for w in self.accuracies() if w < high]
        if not below or high <= BISECT_RATIO * max(below) or high - max(below) < 2:
            return None
        low = max(below)
        return min(max(round(math.sqrt(low * high)), low + 1), high - 1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "min_width": self.min_width, "max_width": self.max_width,
                "examples": self.examples, "direction": self.direction,
                "rungs": [list(rung) for rung in self.rungs], "noise": self.noise,
                "credit": self.credit}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WidthLadder:
        ladder = cls(state["start"], state["min_width"], state["max_width"], state["examples"])
        ladder.rungs = [(int(w), float(a)) for w, a in state["rungs"]]
        ladder.direction = state["direction"]
        ladder.noise = state.get("noise")
        ladder.credit = str(state.get("credit", "unused"))
        return ladder


class WidthSearch:
    """The search in the training loop: rungs, resizes, copies, then the chosen width.

    All ``layers`` follow the first one's ladder, each scaled from its own starting width.
    """

    def __init__(self, min_width: int = 1, max_width: int = 4096,
                 share: float = SEARCH_SHARE) -> None:
        self.min_width, self.max_width, self.share = min_width, max_width, share
        self.layers: list[str] = []
        self.starts: dict[str, int] = {}
        self.ladder: WidthLadder | None = None
        self.rung: list[float] = []  # the current rung's validation accuracies
        self.previous: dict[str, torch.Tensor] = {}  # the model one epoch ago (CPU)
        self.copies: dict[int, dict[str, torch.Tensor]] = {}  # width -> model state (CPU)
        self.searching = True

    def begin(self, trainer: Context, layers: list[str]) -> None:
        """Before training (also on resume, which keeps the starts and the rungs)."""
        self.layers = layers
        self.units = unit_access(trainer)
        if not self.starts:
            self.starts = {layer: self.units.width(layer) for layer in layers}
        if self.ladder is None:
            self.ladder = WidthLadder(self.starts[layers[0]], self.min_width, self.max_width,
                                      examples=len(getattr(trainer.data, "y_val", ())))

    def search_end(self, epochs: int) -> int:
        """The last epoch the search may use."""
        return max(1, math.floor(self.share * epochs))

    def epoch_end(self, trainer: Context, epoch: int) -> None:
        if not self.searching:
            return
        ladder = self.ladder
        assert ladder is not None
        metrics = trainer.last_metrics
        accuracy, noise = trainer.validation_score()
        if not trainer.objective.classifies:  # a regression: minus the loss, within its noise
            ladder.noise = noise
        elif not math.isfinite(accuracy):  # no validation split: the training accuracy stands in
            accuracy = float(metrics.get("train_accuracy", 0.0))
        self.rung.append(accuracy)
        end = self.search_end(trainer.config.epochs)
        if epoch < end and not self._stalled(patience=1 if ladder.rungs else 2):
            self.previous = _copy(trainer.model)
            return  # still learning at this width
        # The rung's result: the mean of its last two epochs (a rung ends on an epoch that set
        # no record, sometimes a spike of the loss); the network goes on from the better one.
        last_two = self.rung[-2:]
        value = sum(last_two) / len(last_two)
        if accuracy < last_two[0]:
            trainer.model.load_state_dict(self.previous)
        self.rung, self.previous = [], {}
        width = self._width(trainer)
        ladder.record(width, value)
        good = ladder.good()
        self.copies = {w: c for w, c in self.copies.items() if w in good}
        if width in good:
            self.copies[width] = _copy(trainer.model)
        following = ladder.next_width()
        if following is not None and epoch + 2 > end:
            following = None  # no room for another rung (each takes two epochs or more)
        def said(score: float) -> str:  # an accuracy, or (regression) minus the loss
            return f"{score:.2%}" if ladder.noise is None else f"{-score:.4g}"

        measure = "val accuracy" if ladder.noise is None else "val loss"
        text = f"search: rung {len(ladder.rungs)} at {width}: {measure} {said(value)}"
        if following is None:
            self.searching = False
            # (A width without a copy can be good again when the best was measured again.)
            following = min((w for w in good if w == width or w in self.copies), default=width)
            spread = said(ladder.tolerance() * (1 if ladder.noise is None else -1))
            trainer.log_event(f"{text}; chose {following}, the smallest width within "
                              f"{spread} of the best "
                              f"({said(max(ladder.accuracies().values()))}); training it to the "
                              "end of the budget")
            if following != width:
                self._restore(trainer, following)
            self.copies = {}
            return
        trainer.log_event(f"{text}; next {following}")
        sources = [w for w in self.copies if w > following]
        if width not in good and sources:
            # This network cost too much: resize the smallest good one above the next width.
            self._restore(trainer, min(sources))
        self._resize(trainer, following, epoch)

    def _stalled(self, patience: int) -> bool:
        """Whether each of the rung's last ``patience`` epochs beat none of the epochs before
        it by more than the noise."""
        assert self.ladder is not None
        if len(self.rung) <= patience:
            return False
        for k in range(1, patience + 1):
            best = max(self.rung[:-k])
            if self.rung[-k] > best + self.ladder.tolerance(best):
                return False
        return True

    def _width(self, trainer: Context) -> int:
        return self.units.width(self.layers[0])

    def _targets(self, width: int) -> dict[str, int]:
        """Every layer's width for ``width`` units in the first: scaled from its start."""
        scale = width / self.starts[self.layers[0]]
        return {layer: min(self.max_width, max(self.min_width, round(start * scale)))
                for layer, start in self.starts.items()}

    def _resize(self, trainer: Context, width: int, epoch: int) -> None:
        generator = torch.Generator().manual_seed(trainer.config.seed * 1_000_003 + epoch)
        for layer, target in self._targets(width).items():
            current = self.units.width(layer)
            if target > current:
                self.units.grow(layer, target - current, trainer.optimizer, generator)
                trainer.log_event(f"search: {layer} +{target - current} to {target}")
            elif target < current:
                inputs, _ = trainer.training_examples(max(COMPRESSION_SAMPLES, 2 * target),
                                                      generator)
                how = self.units.shrink(layer, target, inputs, trainer.optimizer)
                trainer.log_event(f"search: {layer} {how} from {current} to {target}")

    def _restore(self, trainer: Context, width: int) -> None:
        """Back to the copy of the network taken at the end of ``width``'s last rung."""
        model = trainer.model
        for layer, target in self._targets(width).items():
            self.units.resize(layer, target, trainer.optimizer)
        model.load_state_dict(self.copies[width])
        # The moments described another network; a fresh start suits the copy better.
        for parameter in model.parameters():
            trainer.optimizer.state.pop(parameter, None)
        trainer.log_event(f"search: back to the network of the rung at {width}")

    # ------------------------------------------------------------------ reporting and state
    def metrics(self) -> dict[str, float]:
        rungs = len(self.ladder.rungs) if self.ladder is not None else 0
        return {"phase": 0 if self.searching else 1, "rungs": rungs}

    def state_dict(self) -> dict[str, Any]:
        return {
            "starts": dict(self.starts),
            "ladder": None if self.ladder is None else self.ladder.state_dict(),
            "rung": list(self.rung),
            "previous": dict(self.previous),
            "searching": self.searching,
            "copies": {w: dict(c) for w, c in self.copies.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.starts = dict(state["starts"])
        self.ladder = None if state["ladder"] is None else WidthLadder.from_state(state["ladder"])
        self.rung = [float(a) for a in state["rung"]]
        self.previous = dict(state["previous"])
        self.searching = bool(state["searching"])
        self.copies = {int(w): dict(c) for w, c in state["copies"].items()}


class ChainUnits:
    """The search's resizes on a model's declared chains (built-in and registered models):
    growth warms Adam's second moments, shrinking is :func:`compress`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def width(self, layer: str) -> int:
        return dense_group(self.model, layer).width

    def grow(self, layer: str, n: int, optimizer: OptimizerArg,
             generator: torch.Generator) -> None:
        current = self.width(layer)
        grow_units(self.model, layer, n, optimizer=optimizer, generator=generator)
        warm_second_moments(self.model, layer, current, optimizer)

    def shrink(self, layer: str, keep: int, inputs: torch.Tensor,
               optimizer: OptimizerArg) -> str:
        compress(self.model, layer, keep, inputs, optimizer=optimizer)
        return "compressed"

    def resize(self, layer: str, target: int, optimizer: OptimizerArg) -> None:
        current = self.width(layer)
        if target < current:
            prune_units(self.model, layer, torch.arange(target), optimizer=optimizer)
        elif target > current:
            grow_units(self.model, layer, target - current, optimizer=optimizer)


class TracedUnits:
    """The search's resizes on a traced model's groups (``trace_unit_groups``): any layer's
    units, a residual stream, attention heads. Shrinking a group that one Linear reads, a
    column per unit, chooses and refits as :func:`compress` does; any other keeps the units of
    largest weight norm in and out."""

    def __init__(self, graph: UnitGraph) -> None:
        self.graph = graph

    def width(self, layer: str) -> int:
        return self.graph.group(layer).width

    def grow(self, layer: str, n: int, optimizer: OptimizerArg,
             generator: torch.Generator) -> None:
        self.graph.grow(layer, n, optimizer=optimizer, generator=generator)

    def shrink(self, layer: str, keep: int, inputs: torch.Tensor,
               optimizer: OptimizerArg) -> str:
        group = self.graph.group(layer)
        reader = self._linear_reader(group)
        if reader is not None and len(inputs):
            # One Linear reads the units, a column each: choose and refit as compress does.
            name, linear, columns = reader
            x = _capture(self.graph.model, linear, inputs, linear.weight.device, True)
            chosen, new_weight, shift = select_and_refit(
                x[:, columns], linear.weight[:, columns], linear.bias is not None, keep)
            self.graph.prune(layer, chosen, optimizer=optimizer)
            kept_columns = self._linear_reader(group)[2]
            _install(linear.weight, linear.bias, new_weight, shift, kept_columns)
            return "compressed"
        energy = {"produces": torch.zeros(group.width, dtype=torch.float64),
                  "consumes": torch.zeros(group.width, dtype=torch.float64)}
        for tensor in group.tensors:
            if tensor.role not in energy:
                continue
            module_name, _, attr = tensor.name.rpartition(".")
            values = getattr(self.graph.model.get_submodule(module_name), attr).detach()
            per_entry = values.double().cpu().square().transpose(0, tensor.dim)
            per_entry = per_entry.reshape(per_entry.shape[0], -1).sum(1)
            units, _, _ = self.graph.atoms.positions(tensor.atom, group.atom, group.width)
            inside = units >= 0
            energy[tensor.role].index_add_(0, units[inside], per_entry[inside])
        score = energy["produces"].sqrt() * energy["consumes"].sqrt()
        chosen = torch.argsort(score, descending=True)[:keep].sort().values
        self.graph.prune(layer, chosen, optimizer=optimizer)
        return "shrunk (largest weights kept)"

    def _linear_reader(self, group: TracedGroup) -> tuple[str, nn.Linear, torch.Tensor] | None:
        """The one Linear that reads the group, and its column of each unit (in unit order),
        or None (several readers, a block of columns per unit, a norm over the units)."""
        readers = [t for t in group.tensors if t.role == "consumes"]
        if len(readers) != 1 or not readers[0].name.endswith(".weight") or readers[0].dim != 1:
            return None
        norms = (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))
        for tensor in group.tensors:  # a norm over the units: fewer of them change it
            owner = self.graph.model.get_submodule(tensor.name.rpartition(".")[0])
            if tensor.role == "per_unit" and isinstance(owner, norms):
                return None
        name = readers[0].name.rpartition(".")[0]
        linear = self.graph.model.get_submodule(name)
        if type(linear) is not nn.Linear:
            return None
        units, _, _ = self.graph.atoms.positions(readers[0].atom, group.atom, group.width)
        columns = torch.nonzero(units >= 0).reshape(-1)
        if len(columns) != group.width:
            return None
        return name, linear, columns[torch.argsort(units[columns])]

    def resize(self, layer: str, target: int, optimizer: OptimizerArg) -> None:
        current = self.width(layer)
        if target < current:
            self.graph.prune(layer, torch.arange(target), optimizer=optimizer)
        elif target > current:
            self.graph.grow(layer, target - current, optimizer=optimizer)


def unit_access(context: Context) -> ChainUnits | TracedUnits:
    """How the search resizes the context's model: its traced graph if it has one."""
    graph = getattr(context, "graph", None)
    return TracedUnits(graph) if graph is not None else ChainUnits(context.model)


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state, on the CPU (not a view that training would change)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def compress(model: nn.Module, layer: str, keep: int, inputs: torch.Tensor, *,
             optimizer: OptimizerArg = None, ridge: float = 1e-6) -> None:
    """Shrink ``layer`` to ``keep`` units, preserving what it feeds its consumer on ``inputs``
    (see :func:`select_and_refit`). Costs about ``3 * keep * width * len(inputs)``
    multiply-adds."""
    if len(inputs) == 0:
        raise ValueError(f"compressing '{layer}' needs training inputs to refit on; got none")
    group = dense_group(model, layer)
    h = _capture(model, feature_module(group), inputs, group.consumer.weight.device, False)
    chosen, new_weight, shift = select_and_refit(
        h.reshape(-1, group.width), group.consumer.weight, group.consumer.bias is not None, keep,
        ridge)
    group = prune_units(model, layer, chosen, optimizer=optimizer)
    _install(group.consumer.weight, group.consumer.bias, new_weight, shift)


def _capture(model: nn.Module, watched: nn.Module, inputs: torch.Tensor, device: torch.device,
             reader_input: bool) -> torch.Tensor:
    """What ``watched`` outputs (or, with ``reader_input``, takes in) over ``inputs``, in eval
    mode (no dropout, no BatchNorm statistics update), float64 on the CPU."""
    captured: list[torch.Tensor] = []
    if reader_input:
        handle = watched.register_forward_pre_hook(
            lambda _module, args: captured.append(args[0].detach()))
    else:
        handle = watched.register_forward_hook(
            lambda _module, _inputs, output: captured.append(output.detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in inputs.split(512):
                model(chunk.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat([c.reshape(-1, c.shape[-1]) if reader_input else c for c in captured]
                     ).double().cpu()


def select_and_refit(h: torch.Tensor, weight: torch.Tensor, has_bias: bool, keep: int,
                     ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``keep`` units of ``h`` (examples x units, what a Linear reader with ``weight`` reads)
    that best reproduce the reader's input ``W h``, and the reader's refitted weight columns
    and bias shift.

    The units are chosen greedily (orthogonal matching pursuit): each step keeps the unit
    whose centred activation, made orthogonal to those already kept, explains most of what is
    left of ``W h``. The reader's weights and bias are then refitted by (ridge-regularised)
    least squares, so the kept units take over the removed ones' share; without an exact
    reconstruction, what is lost is what the others cannot express.
    """
    width = h.shape[1]
    weight = weight.detach().double().cpu()
    # Centred, the reader's bias takes over the removed units' mean output; without a bias
    # the mean must be reconstructed too.
    mean = h.mean(0) if has_bias else torch.zeros(width, dtype=h.dtype)
    centred = h - mean
    target = centred @ weight.T
    residual, basis = target.clone(), centred.clone()
    norms = basis.square().sum(0)
    floor = 1e-12 * float(norms.max().clamp_min(1e-300))
    kept: list[int] = []
    free = torch.ones(width, dtype=torch.bool)
    while len(kept) < keep:
        gain = (basis.T @ residual).square().sum(1) / norms.clamp_min(floor)
        gain[~free | (norms <= floor)] = -1.0
        unit = int(torch.argmax(gain))
        if gain[unit] < 0:  # the rest are constant on these inputs: the bias holds them
            rest = torch.nonzero(free).flatten()
            kept += rest[: keep - len(kept)].tolist()
            break
        q = basis[:, unit] / norms[unit].sqrt()
        residual -= torch.outer(q, q @ residual)
        basis -= torch.outer(q, q @ basis)
        norms = basis.square().sum(0)
        kept.append(unit)
        free[unit] = False
    chosen = torch.tensor(sorted(kept), dtype=torch.long)
    sub = centred[:, chosen]
    gram = sub.T @ sub
    gram += ridge * float(gram.diagonal().mean().clamp_min(1e-12)) * torch.eye(len(chosen),
                                                                                 dtype=gram.dtype)
    new_weight = torch.linalg.solve(gram, sub.T @ target).T
    shift = mean @ weight.T - mean[chosen] @ new_weight.T  # the removed units' mean, and more
    return chosen, new_weight, shift


def _install(weight: torch.Tensor, bias: torch.Tensor | None, new_weight: torch.Tensor,
             shift: torch.Tensor, columns: torch.Tensor | None = None) -> None:
    """Write refitted columns (all, or ``columns``) and add the bias shift."""
    with torch.no_grad():
        if columns is None:
            weight.copy_(new_weight.to(weight))
        else:
            weight[:, columns.to(weight.device)] = new_weight.to(weight)
        if bias is not None:
            bias.add_(shift.to(bias))
