"""MetaNet: each proliferation method's promise, autophagy, bias folding, the cycle, options.

Every check compares the network after an event with the same network before it (a deep
copy), or with a quantity computed here independently of the code under test.
"""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from neuroplast import build_model, layer_widths
from neuroplast.data import load_dataset
from neuroplast.methods import build_method
from neuroplast.methods.expression import (
    ExpressionMonitor,
    expression_scores,
    remove_units,
    select_autophagy,
    under_expressed,
)
from neuroplast.methods.metanet import MetaNet as _MetaNet
from neuroplast.methods.proliferation import (
    choose_parents,
    divide,
    gradient_birth,
    gradient_fan_out,
    gradient_matrix,
    random_birth,
)
from neuroplast.policy import Context


def MetaNet(**options) -> _MetaNet:
    """MetaNet's metabolism cycle, the behaviour these tests pin down (the default strategy is
    the width search: tests/test_metanet_search.py)."""
    return _MetaNet(**{"strategy": "metabolism", **options})


def _model(widths=(12,), inputs=20, classes=5, dropout=0.0):
    return build_model("mlp", (inputs,), classes, widths=list(widths), dropout=dropout)


def _data(n=256, inputs=20, classes=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def _train_a_little(model, x, y, steps=30):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return optimizer


def _model_with_dead_units(width, dead):
    """An MLP whose first ``dead`` hidden units never fire (a huge negative bias)."""
    model = _model(widths=(width,))
    with torch.no_grad():
        model.fc1.bias[:dead] = -1e3
    return model


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).double()


# ----------------------------------------------------------------------------- proliferation
def test_random_birth_leaves_outputs_unchanged_and_adds_fresh_fan_in():
    model = _model()
    x, y = _data()
    optimizer = _train_a_little(model, x, y)
    before = copy.deepcopy(model)
    random_birth(model, "fc1", 5, optimizer=optimizer, generator=torch.Generator().manual_seed(0))
    assert layer_widths(model)["fc1"] == 17
    assert torch.allclose(_outputs(model, x), _outputs(before, x), atol=1e-6)
    assert model.fc1.weight[12:].abs().sum() > 0 and model.out.weight[:, 12:].abs().sum() == 0
    assert torch.equal(model.fc1.weight[:12], before.fc1.weight)


def test_random_birth_with_fanout_noise_moves_outputs_a_little():
    model = _model()
    x, _ = _data()
    before = copy.deepcopy(model)
    random_birth(model, "fc1", 5, fanout_std=0.1)
    with torch.no_grad():  # the outputs move by exactly the new units' contribution
        new = torch.relu(x @ model.fc1.weight[12:].T + model.fc1.bias[12:])
        expected = (new @ model.out.weight[:, 12:].T).double()
    change = _outputs(model, x) - _outputs(before, x)
    assert change.abs().max() > 0 and torch.allclose(change, expected, atol=1e-5)
    assert model.out.weight[:, 12:].std().item() == pytest.approx(
        0.1 * before.out.weight.std().item(), rel=0.5)


def test_gradient_birth_leaves_outputs_unchanged_in_eval_and_train_mode():
    model = _model(dropout=0.0)
    x, y = _data()
    optimizer = _train_a_little(model, x, y)
    before = copy.deepcopy(model)
    gradient_birth(model, "fc1", 7, inputs=x, targets=y, optimizer=optimizer,
                   generator=torch.Generator().manual_seed(0))
    assert layer_widths(model)["fc1"] == 19
    assert torch.allclose(_outputs(model, x), _outputs(before, x), atol=1e-5)
    model.train(), before.train()
    with torch.no_grad():
        assert torch.allclose(model(x), before(x), atol=1e-5)
    # Zero fan-in, positive bias (ReLU active), non-zero fan-out.
    assert model.fc1.weight[12:].abs().sum() == 0 and (model.fc1.bias[12:] > 0).all()
    assert (model.out.weight[:, 12:].norm(dim=0) > 0).all()


def test_division_with_zero_noise_is_exactly_function_preserving():
    model = _model()
    x, y = _data()
    optimizer = _train_a_little(model, x, y)
    before = copy.deepcopy(model)
    _, parents = divide(model, "fc1", 4, noise=0.0, optimizer=optimizer,
                        generator=torch.Generator().manual_seed(0))
    assert layer_widths(model)["fc1"] == 16 and parents.numel() == 4
    assert torch.allclose(_outputs(model, x), _outputs(before, x), atol=1e-6)
    assert torch.equal(model.fc1.weight[12:], before.fc1.weight[parents])


def test_division_noise_moves_outputs_by_exactly_the_copies_difference():
    model = _model()
    x, y = _data()
    _train_a_little(model, x, y)
    before = copy.deepcopy(model)
    _, parents = divide(model, "fc1", 4, noise=0.1, generator=torch.Generator().manual_seed(0))
    # Independent computation: each copy c of parent p adds 0.5 * w_out[p] * (relu(copy) -
    # relu(parent)) to the logits; everything else is unchanged.
    with torch.no_grad():
        parent_act = torch.relu(x @ before.fc1.weight[parents].T + before.fc1.bias[parents])
        copy_act = torch.relu(x @ model.fc1.weight[12:].T + model.fc1.bias[12:])
        expected = 0.5 * (copy_act - parent_act) @ before.out.weight[:, parents].T
    change = _outputs(model, x) - _outputs(before, x)
    assert change.abs().max() > 1e-4  # the noise really is there
    assert torch.allclose(change, expected.double(), atol=1e-5)
    noise = model.fc1.weight[12:] - before.fc1.weight[parents]
    assert noise.std().item() == pytest.approx(0.1 * before.fc1.weight.std().item(), rel=0.2)


def test_division_chooses_parents_in_proportion_to_expression():
    scores = torch.tensor([0.0, 1.0, 3.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(2000):
        counts[choose_parents(scores, 1, generator)] += 1
    assert counts[0] + counts[3] < 5
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.15)
    # More parents than expressed units: the unexpressed ones are drawn last, without repeats.
    assert choose_parents(scores, 4, generator).tolist() == [0, 1, 2, 3]


def _new_unit_gradient_norm(model, x, y, first_new):
    model.zero_grad()
    model.train()
    F.cross_entropy(model(x), y).backward()
    parts = [model.fc1.weight.grad[first_new:], model.fc1.bias.grad[first_new:],
             model.out.weight.grad[:, first_new:]]
    return math.sqrt(sum(float(p.pow(2).sum()) for p in parts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_birth_gives_new_weights_more_gradient_than_random_birth(seed):
    data = load_dataset("digits")
    x, y = data.x_train.flatten(1), data.y_train
    torch.manual_seed(seed)
    base = _model(inputs=64, classes=10)
    _train_a_little(base, x, y, steps=20)
    guided, random_ = copy.deepcopy(base), copy.deepcopy(base)
    gradient_birth(guided, "fc1", 3, inputs=x, targets=y)
    random_birth(random_, "fc1", 3, generator=torch.Generator().manual_seed(seed))
    guided_norm = _new_unit_gradient_norm(guided, x, y, 12)
    random_norm = _new_unit_gradient_norm(random_, x, y, 12)
    assert guided_norm > 3 * random_norm


def test_gradient_birth_fan_in_gradient_is_the_gradmax_one_and_beats_random_directions():
    model = _model()
    x, y = _data()
    _train_a_little(model, x, y, steps=5)
    g = gradient_matrix(model, "fc1", x, y)
    # Independent G: autograd on a copy whose hidden layer is read out explicitly.
    with torch.no_grad():
        hidden = torch.relu(x @ model.fc1.weight.T + model.fc1.bias)
    logits = (hidden @ model.out.weight.T + model.out.bias).detach().requires_grad_(True)
    (delta,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    assert torch.allclose(g, (delta.T @ x).double(), atol=1e-6)

    grown = copy.deepcopy(model)
    gradient_birth(grown, "fc1", 2, inputs=x, targets=y, scale=1.0)
    grown.zero_grad()
    F.cross_entropy(grown(x), y).backward()
    fan_out = grown.out.weight[:, 12:].detach().double()
    # ReLU is active at the new units (positive bias), so autograd's fan-in gradient is w^T G.
    assert torch.allclose(grown.fc1.weight.grad[12:].double(), fan_out.T @ g, atol=1e-5)
    best = (fan_out.T @ g).norm(dim=1)
    directions = torch.randn(5, 200, generator=torch.Generator().manual_seed(0)).double()
    random_norms = (directions / directions.norm(dim=0)).T @ g
    assert best[0] >= random_norms.norm(dim=1).max() - 1e-9
    assert best[0] == pytest.approx(torch.linalg.svdvals(g)[0].item(), rel=1e-6)


def test_gradient_fan_out_beyond_the_rank_gives_distinct_columns_of_the_requested_norm():
    g = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)).double()
    columns = gradient_fan_out(g, 7, 2.0, torch.Generator().manual_seed(1))
    assert columns.shape == (3, 7)
    assert torch.allclose(columns.norm(dim=0), torch.full((7,), 2.0, dtype=torch.float64))
    gram = columns[:, :3].T @ columns[:, :3] / 4
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64), atol=1e-9)
    cosine = (columns.T @ columns) / 4
    assert (cosine - torch.eye(7, dtype=torch.float64)).abs().max() < 1 - 1e-6


# ----------------------------------------------------------------------------- autophagy
def _stats(model, x, layer="fc1"):
    monitor = ExpressionMonitor()
    monitor.attach(model, [layer])
    monitor.active = True
    model.train()
    with torch.no_grad():
        model(x[:100]), model(x[100:])
    monitor.detach()
    return monitor.stats[layer]


def test_monitor_statistics_match_a_direct_computation_and_ignore_eval_passes():
    model = _model()
    x, _ = _data()
    stats = _stats(model, x)
    model.eval()
    model(x)  # not counted: eval mode and detached monitor
    with torch.no_grad():
        h = torch.relu(x @ model.fc1.weight.T + model.fc1.bias).double()
    assert stats.count == len(x)
    assert torch.allclose(stats.mean_abs(), h.abs().mean(0))
    assert torch.allclose(stats.mean(), h.mean(0))
    assert torch.allclose(stats.zero_fraction(), (h == 0).double().mean(0))
    scores = expression_scores(model, "fc1", stats.mean_abs())
    assert torch.allclose(scores, h.abs().mean(0) * model.out.weight.detach().double().norm(dim=0))


def test_bias_folding_keeps_the_mean_output_on_the_data_of_the_statistics():
    model = _model()
    x, y = _data()
    _train_a_little(model, x, y)
    stats = _stats(model, x)
    remove = [1, 4, 5, 9]
    plain = copy.deepcopy(model)
    before = _outputs(model, x)
    remove_units(model, "fc1", remove, mean_activation=stats.mean())
    remove_units(plain, "fc1", remove)
    assert layer_widths(model)["fc1"] == 8
    assert torch.allclose(_outputs(model, x).mean(0), before.mean(0), atol=1e-5)
    unfolded_shift = (_outputs(plain, x).mean(0) - before.mean(0)).abs().max()
    assert unfolded_shift > 1e-2  # without folding the mean really moves


def test_autophagy_removes_a_planted_dead_neuron_and_keeps_a_planted_important_one():
    model = _model()
    x, y = _data()
    _train_a_little(model, x, y)
    with torch.no_grad():
        model.fc1.bias[3] = -1e3  # dead: zero on every input
        model.fc1.weight[7] *= 3  # important: strong activation...
        model.out.weight[:, 7] *= 10  # ...and strong outgoing weights
        model.out.weight[:, 2] *= 1e-3  # under-expressed but alive
    stats = _stats(model, x)
    scores = expression_scores(model, "fc1", stats.mean_abs())
    low = under_expressed(scores, stats.zero_fraction(), threshold=0.1, dead_fraction=0.99)
    assert low[3] and low[2] and not low[7]
    width = 12
    counters = torch.zeros(width, dtype=torch.long)
    everyone = torch.ones(width, dtype=torch.bool)
    options = dict(patience=2, max_removal=0.5, min_width=4)
    remove, counters = select_autophagy(scores, low, everyone, counters, **options)
    assert remove.numel() == 0 and counters[3] == 1  # one low cycle is not enough
    remove, counters = select_autophagy(scores, low, everyone, counters, **options)
    assert 3 in remove.tolist() and 2 in remove.tolist() and 7 not in remove.tolist()
    important = model.fc1.weight[7].clone()
    remove_units(model, "fc1", remove, mean_activation=stats.mean())
    assert any(torch.equal(row, important) for row in model.fc1.weight)
    assert (model.fc1.bias > -100).all()


def test_autophagy_respects_protection_cap_and_minimum_width():
    scores = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.0, 5.0, 5.0, 5.0]).double()
    low = torch.tensor([True, True, True, False, False, False, False, False])
    counters = torch.tensor([5, 5, 5, 0, 0, 0, 0, 0])
    eligible = torch.tensor([True, False, True, True, True, True, True, True])
    remove, counters = select_autophagy(scores, low, eligible, counters, patience=2,
                                        max_removal=1.0, min_width=1)
    assert remove.tolist() == [0, 2] and counters.tolist()[:3] == [6, 0, 6]
    eligible[:] = True
    remove, _ = select_autophagy(scores, low, eligible, counters, patience=1, max_removal=0.25,
                                 min_width=1)
    assert remove.tolist() == [0, 1]  # cap: floor(0.25 * 8) = 2, lowest scores first
    remove, _ = select_autophagy(scores, low, eligible, counters, patience=1, max_removal=1.0,
                                 min_width=7)
    assert remove.tolist() == [0]  # never below the minimum width


# ----------------------------------------------------------------------------- the cycle
def _fake_trainer(model, epochs=20, x=None, y=None):
    """The attributes MetaNet uses, so a test can script the losses a cycle sees."""
    x, y = _data() if x is None else (x, y)
    trainer = Context()  # its training_examples, objective and all-reduce, no loop around it
    trainer.model, trainer.optimizer = model, torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer.config = SimpleNamespace(epochs=epochs, seed=0)
    trainer.data = SimpleNamespace(x_train=x, y_train=y)
    trainer.log_event = lambda text: None
    return trainer


def _script(method, trainer, losses, val_loss_se=0.0, before_epoch=None, val_errors=None,
            val_size=10_000):
    """Run epochs with given (train_loss, val_loss), and validation errors on ``val_size``
    examples if given; returns the width after each epoch."""
    widths = []
    x = trainer.data.x_train
    if val_errors is not None:
        trainer.data.y_val = torch.zeros(val_size, dtype=torch.long)
    method.on_train_begin(trainer)
    for epoch, (train, val) in enumerate(losses, start=1):
        if before_epoch is not None:
            before_epoch(trainer.model, epoch)
        method.on_epoch_begin(trainer, epoch)
        trainer.model.train()
        with torch.no_grad():
            trainer.model(x)
        trainer.last_metrics = {"train_loss": train, "val_loss": val, "val_loss_se": val_loss_se}
        if val_errors is not None:
            trainer.last_metrics["val_accuracy"] = 1.0 - val_errors[epoch - 1]
        method.on_epoch_end(trainer, epoch)
        widths.append(layer_widths(trainer.model)["fc1"])
        if trainer.stop_training:
            break
    return widths


def test_plateau_trigger_grows_on_a_stall_but_not_while_improving_or_memorising():
    method = MetaNet(proliferation="random", autophagy=False, growth_fraction=0.5, growth_min=2,
                     plateau_threshold=0.1)
    trainer = _fake_trainer(_model(widths=(8,)))
    losses = [(1.0, 1.0), (0.5, 0.5),   # learning fast: no growth
              (0.49, 0.49),             # stalled on both: grow 8 -> 12
              (0.40, 0.40),             # 18% under the loss before growth: it paid off (5%)
              (0.30, 0.41),             # validation worse while training improves: memorising
              (0.299, 0.405),           # both stalled: grow 12 -> 18
              (0.298, 0.385),           # a record, but under 5% below 0.40: not paid yet, wait
              (0.297, 0.36)]            # 10% under 0.40: paid; 6.5% under the best: stalled
    assert _script(method, trainer, losses) == [8, 8, 12, 12, 12, 18, 18, 27]


def test_a_growth_that_does_not_pay_off_ends_proliferation():
    method = MetaNet(proliferation="random", autophagy=False, growth_fraction=0.5, growth_min=2,
                     plateau_threshold=0.1, stable_cycles=2)
    trainer = _fake_trainer(_model(widths=(8,)))
    events = []
    trainer.log_event = events.append
    # After the first stall every cycle sets a small record: training goes on, and is stalled.
    losses = [(1.0, 1.0), (0.99, 0.99)] + [(0.99 - 0.01 * e, 0.99 - 0.01 * e) for e in range(1, 8)]
    widths = _script(method, trainer, losses)
    assert widths == [8, 12] + [12] * 7  # cycle 2 grows; 2 cycles without paying end it
    assert "metanet: the last growth did not pay off; proliferation ends" in events


def test_records_within_the_noise_do_not_pay_for_more_growth():
    # A solved problem: the validation loss dips and stalls by turns, every dip far inside its
    # standard error. Blind to the noise, each dip pays for the growth before it.
    dips = [0.02, 0.0195, 0.012, 0.0119, 0.007, 0.0069, 0.004, 0.0039, 0.0023, 0.00229]
    losses = [(loss, loss) for loss in dips]
    options = dict(proliferation="random", autophagy=False, growth_fraction=0.5, growth_min=2)

    blind = MetaNet(**options, significance=0.0)
    widths = _script(blind, _fake_trainer(_model(widths=(8,))), losses, val_loss_se=0.01)
    assert widths == [8, 12, 12, 18, 18, 27, 27, 41, 41, 62]  # a growth per dip: the runaway

    aware = MetaNet(**options)  # significance 2: a payoff must beat the best by 0.02
    widths = _script(aware, _fake_trainer(_model(widths=(8,))), losses, val_loss_se=0.01)
    assert widths == [8, 12] + [12] * 8  # the first stall grows once; nothing pays after

    # The same dips on a precise loss are real progress: each pays.
    widths = _script(MetaNet(**options), _fake_trainer(_model(widths=(8,))), losses,
                     val_loss_se=1e-6)
    assert widths[-1] == 62


def test_an_under_expressed_but_recovering_neuron_is_spared_and_a_stagnant_one_goes():
    model = _model(widths=(12,))
    x, y = _data()
    _train_a_little(model, x, y)
    with torch.no_grad():
        model.out.weight[:, 2] *= 1e-3  # stagnant: under-expressed, and stays so
        model.out.weight[:, 5] *= 1e-3  # recovering: starts as low, then doubles

    def strengthen(model, epoch):
        if epoch == 2:  # before any removal shifts the indices
            with torch.no_grad():
                model.out.weight[:, 5] *= 2

    method = MetaNet(proliferation="none", autophagy_threshold=0.1, protect_cycles=0,
                     autophagy_patience=2, max_removal=0.5, min_width=4)
    trainer = _fake_trainer(model, x=x, y=y)
    before = model.out.weight.detach().clone()
    widths = _script(method, trainer, [(1.0, 1.0)] * 3, before_epoch=strengthen)
    assert widths == [12, 11, 11]  # judged low at cycles 1 and 2: the stagnant one goes
    survivors = model.out.weight.detach()
    assert not any(torch.allclose(column, before[:, 2]) for column in survivors.T)
    assert any(torch.allclose(column, before[:, 5] * 2) for column in survivors.T)

    # Without the recovery rule both go.
    model = _model(widths=(12,))
    _train_a_little(model, x, y)
    with torch.no_grad():
        model.out.weight[:, 2] *= 1e-3
        model.out.weight[:, 5] *= 1e-3
    method = MetaNet(proliferation="none", autophagy_threshold=0.1, protect_cycles=0,
                     autophagy_patience=2, max_removal=0.5, min_width=4, recovery=math.inf)
    widths = _script(method, _fake_trainer(model, x=x, y=y), [(1.0, 1.0)] * 3,
                     before_epoch=strengthen)
    assert widths == [12, 10, 10]


def test_a_layer_shedding_neurons_does_not_proliferate_for_stable_cycles_cycles():
    model = _model_with_dead_units(12, 4)
    method = MetaNet(proliferation="random", autophagy_threshold=0.0, protect_cycles=0,
                     max_removal=0.5, growth_fraction=0.5, stable_cycles=3)
    trainer = _fake_trainer(model)
    stalled = [(1.0 - 0.005 * e, 1.0 - 0.005 * e) for e in range(6)]  # records, no progress
    # Cycle 2: the dead units go; cycles 2-4 the layer counts as shedding, so the stall does
    # not grow it; cycle 5 does.
    assert _script(method, trainer, stalled) == [12, 8, 8, 8, 12, 12]


def test_brake_cycles_shortens_the_pause_after_shedding():
    model = _model_with_dead_units(12, 4)
    method = MetaNet(proliferation="random", autophagy_threshold=0.0, protect_cycles=0,
                     max_removal=0.5, growth_fraction=0.5, stable_cycles=3, brake_cycles=1)
    stalled = [(1.0 - 0.005 * e, 1.0 - 0.005 * e) for e in range(6)]
    # Cycle 2 sheds the dead units; only that cycle counts as shedding, so cycle 3 grows.
    assert _script(method, _fake_trainer(model), stalled)[:3] == [12, 8, 12]


def test_schedule_trigger_grows_every_cycle_for_the_first_n_cycles():
    method = MetaNet(proliferation="random", autophagy=False, trigger="schedule",
                     schedule_cycles=2, cycle_epochs=2, growth_fraction=0.5, growth_min=1)
    trainer = _fake_trainer(_model(widths=(8,)))
    widths = _script(method, trainer, [(1.0 - 0.1 * e, 1.0 - 0.1 * e) for e in range(8)])
    assert widths == [8, 12, 12, 18, 18, 18, 18, 18]


def test_stable_widths_and_no_improvement_end_in_a_fine_tune_then_stop():
    method = MetaNet(proliferation="none", autophagy=False, stable_cycles=2, finetune_epochs=2,
                     stop_when_stable=True)
    trainer = _fake_trainer(_model(widths=(8,)), epochs=30)
    widths = _script(method, trainer, [(0.5, 0.5)] * 30)
    # Cycles 2 and 3 bring no change and no improvement -> fine-tune epochs 4, 5 -> stop.
    assert len(widths) == 5 and trainer.stop_training
    assert method.metrics(trainer)["phase"] == 2


def test_metabolism_metabolises_every_hidden_layer_with_layers_all():
    model = _model(widths=(8, 6))
    method = MetaNet(proliferation="division", layers="all", trigger="schedule", autophagy=False,
                     schedule_cycles=1, growth_fraction=0.5, growth_min=1)
    trainer = _fake_trainer(model)
    _script(method, trainer, [(1.0, 1.0), (0.9, 0.9)])
    assert layer_widths(model) == {"fc1": 12, "fc2": 9}


@pytest.mark.parametrize(
    "options,message",
    [
        ({"proliferation": "mitosis"}, "--metanet-proliferation must be one of division"),
        ({"trigger": "sometimes"}, "--metanet-trigger must be one of plateau, schedule"),
        ({"cycle_epochs": 0}, "--metanet-cycle-epochs must be an integer >= 1"),
        ({"growth_fraction": -0.5}, "--metanet-growth-fraction must be >= 0"),
        ({"max_removal": 1.5}, "--metanet-max-removal must be in [0, 1]"),
        ({"dead_fraction": 0}, "--metanet-dead-fraction must be in (0, 1]"),
        ({"min_width": 64, "max_width": 32}, "--metanet-min-width must not exceed"),
        ({"plateau_threshold": float("nan")}, "--metanet-plateau-threshold must be a number"),
        ({"gradient_eps": 0.0}, "--metanet-gradient-eps must be a positive number"),
        ({"split_step": 0.0}, "--metanet-split-step must be a positive number"),
        ({"autophagy": "yes"}, "--metanet-autophagy must be true or false"),
        ({"growth_min": 2.5}, "--metanet-growth-min must be an integer >= 1"),
        ({"layers": " "}, "--metanet-layers must be"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_method("metanet", {"strategy": "metabolism", **options})


def test_layers_that_metanet_cannot_resize_are_clear_errors():
    with pytest.raises(ValueError, match=r"--metanet-layers names \['fc9'\]"):
        MetaNet(layers="fc9").prepare_model(_model())
    lenet = build_model("lenet5", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="metanet resizes fully connected layers"):
        MetaNet().prepare_model(lenet)
    with pytest.raises(ValueError, match="BatchNorm"):
        model = build_model("mlp", (20,), 5, widths=[8], batchnorm=True)
        x, y = _data()
        gradient_birth(model, "fc1", 2, inputs=x, targets=y)
