"""MetaNet thinning: plateaus without growth remove the least-expressed neurons (while the
network memorises or sheds, or once proliferation has ended), a thinning that costs too much
is undone, and resume reproduces a thinning run exactly.

The scripted cycles feed MetaNet chosen losses (as ``tests/test_metanet.py`` does) and compare
the network after each event with a copy taken before it.
"""

import copy

import pytest
import torch
from run_helpers import InterruptAt, assert_same_run, epoch_metrics
from test_metanet import (
    _data,
    _fake_trainer,
    _model,
    _model_with_dead_units,
    _script,
    _train_a_little,
)

from neuroplast import layer_widths
from neuroplast.methods import build_method
from neuroplast.methods.metanet import MetaNet as _MetaNet
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run


def MetaNet(**options) -> _MetaNet:
    """MetaNet's metabolism cycle, the behaviour these tests pin down (the default strategy is
    the width search: tests/test_metanet_search.py)."""
    return _MetaNet(**{"strategy": "metabolism", **options})


THIN = dict(proliferation="none", autophagy=False, thinning=0.25, thinning_cost=0.05, min_width=4,
            stable_cycles=2)


def test_plateaus_thin_until_one_costs_too_much_which_is_undone_and_ends_thinning():
    method = MetaNet(**THIN)
    trainer = _fake_trainer(_model(widths=(16,)))
    events = []
    trainer.log_event = events.append
    # A thinning is judged on the mean of the stable-cycles (2) cycles after it, against the
    # lowest mean of 2 consecutive cycles seen before it (0.50); thinning-cost 5 %.
    losses = [(0.5, 0.50),   # first cycle: nothing to compare with
              (0.5, 0.50),   # plateau: thin 16 -> 12
              (0.5, 0.51),   # judging
              (0.5, 0.52),   # mean 0.515, within 5 % of 0.50: kept; thin 12 -> 9
              (0.5, 0.60),   # judging
              (0.5, 0.58),   # mean 0.59, 18 % over: undone, +3 -> 12, thinning ends
              (0.5, 0.58), (0.5, 0.58)]
    widths = _script(method, trainer, losses)
    assert widths == [16, 12, 12, 9, 9, 12, 12, 12]
    assert events.count("metanet: the last thinning cost too much; it is undone, and "
                        "thinning and proliferation end") == 1
    assert "metanet: fc1 +3 to 12 (thinning undone)" in events
    assert method.metrics(trainer)["total_deaths"] == 7
    assert method.metrics(trainer)["total_births"] == 3


def test_thinning_within_the_noise_is_kept():
    # Mean 0.5725 after the first thinning, 14.5 % over 0.50, but the loss's noise
    # (2 standard errors of 0.05) is larger than that.
    losses = [(0.5, 0.5), (0.5, 0.5), (0.5, 0.55), (0.5, 0.595)]
    widths = _script(MetaNet(**THIN), _fake_trainer(_model(widths=(16,))), losses,
                     val_loss_se=0.05)
    assert widths == [16, 12, 12, 9]
    widths = _script(MetaNet(**THIN), _fake_trainer(_model(widths=(16,))), losses,
                     val_loss_se=0.0)
    assert widths == [16, 12, 12, 16]  # a precise loss: undone


def _script_errors(method, trainer, val_errors, val_size):
    """Like ``_script``, with a validation error per epoch; the loss rises all along."""
    trainer.data.y_val = torch.zeros(val_size, dtype=torch.long)
    widths = []
    method.on_train_begin(trainer)
    for epoch, error in enumerate(val_errors, start=1):
        method.on_epoch_begin(trainer, epoch)
        trainer.model.train()
        with torch.no_grad():
            trainer.model(trainer.data.x_train)
        trainer.last_metrics = {"train_loss": 0.5 / epoch, "val_loss": 0.1 * epoch,
                                "val_loss_se": 0.0, "val_accuracy": 1.0 - error}
        method.on_epoch_end(trainer, epoch)
        widths.append(layer_widths(trainer.model)["fc1"])
    return widths


def _thin_widths(errors, val_size, **options):
    """Widths of a 16-unit layer thinned under ``errors``, judged on ``val_size`` examples."""
    method = MetaNet(**{**THIN, **options})
    return _script_errors(method, _fake_trainer(_model(widths=(16,))), errors, val_size)


KEPT, UNDONE = [16, 12, 12, 9, 9], [16, 12, 12, 16, 16]


def test_thinning_is_judged_on_the_validation_error_not_the_overconfident_loss():
    # The loss rises every cycle (memorising), the error does not move: thinning goes on.
    assert _thin_widths([0.02] * 5, 10_000) == KEPT
    # The error rises 0.5 points over the best (2 % -> 2.5 %), more than its standard error
    # on 10,000 examples (0.16 points at 2.5 %; thinning-significance 1): thinning is undone.
    rise = [0.02, 0.02, 0.025, 0.025, 0.025]
    assert _thin_widths(rise, 10_000) == UNDONE
    # On 500 examples the same rise is within the noise (0.72 points): kept ...
    assert _thin_widths(rise, 500) == KEPT
    # ... unless a rise need only pass half a standard error (0.36 points).
    assert _thin_widths(rise, 500, thinning_significance=0.5) == UNDONE
    assert _thin_widths([0.02, 0.02, 0.023, 0.023, 0.023], 500,
                        thinning_significance=0.5) == KEPT


def test_a_perfect_validation_score_still_leaves_room_for_one_mistake():
    # Best error 0 on 500 examples: one misclassified example after a cut (0.2 %) is within
    # the noise, but 10 (2 %) are not.
    assert _thin_widths([0.0, 0.0, 0.002, 0.002, 0.002], 500) == KEPT
    assert _thin_widths([0.0, 0.0, 0.02, 0.02, 0.02], 500) == UNDONE


def test_scheduled_growth_waits_for_a_thinning_verdict_too():
    method = MetaNet(proliferation="random", trigger="schedule", schedule_cycles=10,
                     growth_fraction=0.5, autophagy=False, thinning=0.25, thinning_cost=0.05,
                     min_width=4, max_width=16, stable_cycles=2)
    # Cycles 1-2: the scheduled growths find the layer at its maximum width. Cycle 2
    # memorises: thin 16 -> 12. Cycle 3: a scheduled growth would refill it to 16 in the
    # middle of the verdict; it waits. Cycle 4: the cut cost too much and is given back.
    losses = [(1.0, 0.5), (0.5, 0.51), (0.49, 0.6), (0.48, 0.6)]
    assert _script(method, _fake_trainer(_model(widths=(16,))), losses) == [16, 12, 12, 16]


def test_thinning_removes_the_least_expressed_neurons_and_keeps_the_mean_output():
    model = _model(widths=(16,))
    x, y = _data()
    _train_a_little(model, x, y)
    weak = [1, 6, 11, 14]
    with torch.no_grad():
        for unit in weak:  # tiny fan-out: the least expressed, whatever their activations
            model.out.weight[:, unit] *= 1e-3
    before = copy.deepcopy(model)
    trainer = _fake_trainer(model, x=x, y=y)
    widths = _script(MetaNet(**THIN), trainer, [(0.5, 0.5), (0.5, 0.5)])
    assert widths == [16, 12]
    kept = [unit for unit in range(16) if unit not in weak]
    assert torch.equal(model.fc1.weight, before.fc1.weight[kept])
    assert torch.equal(model.out.weight, before.out.weight[:, kept])
    # The removed units' mean output on the data was folded into the next bias.
    model.train()
    before.train()
    with torch.no_grad():
        assert torch.allclose(model(x).mean(0), before(x).mean(0), atol=1e-5)


def test_a_cycle_with_autophagy_and_thinning_removes_the_thinning_fraction_in_all():
    model = _model(widths=(16,))
    x, y = _data()
    _train_a_little(model, x, y)
    with torch.no_grad():
        model.fc1.bias[[3, 9]] = -1e3  # two dead units: autophagy removes them
        model.out.weight[:, 12] *= 1e-3  # the least expressed living unit
    before = copy.deepcopy(model)
    method = MetaNet(**{**THIN, "autophagy": True}, autophagy_threshold=0.0, protect_cycles=0,
                     autophagy_patience=1, max_removal=0.5)
    trainer = _fake_trainer(model, x=x, y=y)
    widths = _script(method, trainer, [(0.5, 0.5), (0.5, 0.5)])
    # Cycle 1 (no plateau yet): autophagy takes the dead pair. Cycle 2: a plateau, thinning
    # takes floor(0.25 * 14) = 3 more.
    assert widths == [14, 11]

    model2 = copy.deepcopy(before)
    trainer = _fake_trainer(model2, x=x, y=y)
    # Both in one cycle: a plateau on the cycle autophagy acts tops up to floor(0.25 * 16) = 4.
    method = MetaNet(**{**THIN, "autophagy": True}, autophagy_threshold=0.0, protect_cycles=0,
                     autophagy_patience=2, max_removal=0.5)
    widths = _script(method, trainer, [(0.5, 0.5), (0.5, 0.5)])
    assert widths == [16, 12]
    survivors = model2.out.weight.detach()
    for unit in (3, 9, 12):
        assert not any(torch.equal(c, before.out.weight[:, unit]) for c in survivors.T)
    # The bias fold used each removed unit's own mean, so the mean output is unchanged.
    model2.train()
    before.train()
    with torch.no_grad():
        assert torch.allclose(model2(x).mean(0), before(x).mean(0), atol=1e-5)


def test_thinning_waits_for_proliferation_to_end():
    method = MetaNet(proliferation="random", autophagy=False, thinning=0.25, min_width=4,
                     growth_fraction=0.5, growth_min=2, stable_cycles=2)
    trainer = _fake_trainer(_model(widths=(8,)))
    # A stall grows 8 -> 12; the growth has not paid 2 cycles later; then plateaus thin.
    losses = [(0.5, 0.5)] * 6
    assert _script(method, trainer, losses) == [8, 12, 12, 9, 9, 7]


def test_a_memorising_network_thins_before_proliferation_has_ended():
    method = MetaNet(proliferation="random", autophagy=False, thinning=0.25, min_width=4,
                     growth_fraction=0.5, growth_min=2, stable_cycles=2)
    trainer = _fake_trainer(_model(widths=(16,)))
    # Validation worse while training still improves by more than the plateau threshold (0.2):
    # no growth (it has capacity to spare), a thinning instead.
    losses = [(1.0, 0.5), (0.5, 0.51), (0.3, 0.52)]
    assert _script(method, trainer, losses) == [16, 12, 12]


def test_a_layer_that_autophagy_is_shedding_thins_instead_of_waiting():
    model = _model_with_dead_units(16, 2)
    options = dict(proliferation="random", autophagy_threshold=0.0, autophagy_patience=1,
                   protect_cycles=0, max_removal=0.5, min_width=4, stable_cycles=2)
    losses = [(0.5, 0.5), (0.5, 0.5)]
    # Cycle 1 removes the dead pair; cycle 2 stalls while the layer counts as shedding, so it
    # may not grow: it thins by a quarter of 14 instead.
    widths = _script(MetaNet(**options, thinning=0.25), _fake_trainer(copy.deepcopy(model)),
                     losses)
    assert widths == [14, 11]
    widths = _script(MetaNet(**options), _fake_trainer(model), losses)
    assert widths == [14, 14]  # without thinning the stall just waits


def test_no_growth_while_a_thinning_is_not_judged_yet():
    method = MetaNet(proliferation="random", autophagy=False, thinning=0.25, min_width=4,
                     growth_fraction=0.5, growth_min=2, stable_cycles=2)
    # Cycle 2 memorises: thin 16 -> 12. Cycle 3 stalls (a growth's cue) while the thinning
    # is being judged: no growth. Cycle 4 stalls too, and the thinning is undone: the
    # neurons come back, and proliferation ends with thinning.
    losses = [(1.0, 0.5), (0.5, 0.51), (0.49, 0.6), (0.48, 0.6), (0.47, 0.6), (0.46, 0.6)]
    widths = _script(method, _fake_trainer(_model(widths=(16,))), losses)
    assert widths == [16, 12, 12, 16, 16, 16]


def test_thinning_never_goes_below_the_minimum_width():
    widths = _script(MetaNet(**{**THIN, "min_width": 10}), _fake_trainer(_model(widths=(16,))),
                     [(0.5, 0.5)] * 7)
    assert widths == [16, 12, 12, 10, 10, 10, 10]


@pytest.mark.parametrize("options,message", [
    ({"thinning": 1.0}, r"--metanet-thinning must be in \[0, 1\)"),
    ({"thinning": -0.1}, r"--metanet-thinning must be in \[0, 1\)"),
    ({"thinning_cost": -1}, "--metanet-thinning-cost must be >= 0"),
    ({"thinning_significance": -1}, "--metanet-thinning-significance must be >= 0"),
])
def test_bad_thinning_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_method("metanet", {"strategy": "metabolism", **options})


def _config(out, epochs=8, payoff="loss"):
    options = {"strategy": "metabolism", "proliferation": "division", "trigger": "schedule",
               "schedule_cycles": 2,
               "growth_fraction": 1.0, "growth_min": 2, "thinning": 0.25, "min_width": 4,
               "stable_cycles": 1, "finetune_epochs": 1, "plateau_threshold": 10.0,
               "payoff": payoff}
    return RunConfig(method="metanet", model="mlp", dataset="digits", widths=[8], out=str(out),
                     method_options=options,
                     train=TrainConfig(epochs=epochs, batch_size=64, seed=3, progress=False,
                                       threads=1))


@pytest.mark.parametrize("payoff", ["loss", "error"])
def test_a_thinning_run_resumes_exactly(tmp_path, payoff):
    straight = train_run(_config(tmp_path / "straight", payoff=payoff))
    events = [e for row in epoch_metrics(tmp_path / "straight") for e in row["events"]]
    assert any(e.startswith("thinning: fc1") for e in events), events
    cut = tmp_path / "cut"
    train_run(_config(cut, payoff=payoff), callbacks=[InterruptAt(epoch=4, batch=3)])
    resumed = resume_run(cut)
    assert resumed["final_widths"] == straight["final_widths"]
    assert_same_run(tmp_path / "straight", cut)


def test_no_growth_or_thinning_that_the_budget_leaves_no_time_to_judge():
    losses = [(1.0, 1.0), (0.5, 0.5), (0.5, 0.5), (0.5, 0.5), (0.5, 0.5), (0.5, 0.5)]
    # 6 epochs, the last 2 fixed-width: cycle ends 1-4. A stall in cycle 3 leaves one cycle
    # before the fixed-width end, fewer than the stable-cycles (2) a verdict needs.
    for options in ({"proliferation": "random", "growth_fraction": 0.5},
                    {"proliferation": "none", "thinning": 0.25, "min_width": 4}):
        method = MetaNet(autophagy=False, stable_cycles=2, finetune_epochs=2, **options)
        assert _script(method, _fake_trainer(_model(widths=(8,)), epochs=6), losses) == [8] * 6
        # With two more epochs the same stall has time to be judged.
        method = MetaNet(autophagy=False, stable_cycles=2, finetune_epochs=2, **options)
        widths = _script(method, _fake_trainer(_model(widths=(8,)), epochs=8), losses)
        assert widths[2] != 8
