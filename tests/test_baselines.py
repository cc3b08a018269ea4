"""Baseline policies: each one's own promise, against an independent computation."""

import math

import pytest
import torch
from run_helpers import InterruptAt, assert_same_run

from neuroplast.data import load_dataset
from neuroplast.methods import build_method
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig, Trainer
from neuroplast.train.run import RunConfig, resume_run, train_run


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trainer(data, method, widths=(12, 6), epochs=4):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=list(widths))
    trainer = Trainer(model, data, method, TrainConfig(epochs=epochs, progress=False))
    method.on_train_begin(trainer)
    return trainer


def test_magnitude_removes_the_smallest_norm_units(digits):
    method = build_method("magnitude", {"keep": 0.5, "start_epoch": 1, "end_epoch": 1,
                                        "layers": "fc1"})
    trainer = _trainer(digits, method)
    fc1 = trainer.model.fc1
    with torch.no_grad():
        fc1.weight.mul_(torch.linspace(0.1, 2.0, 12).flip(0)[:, None])  # shuffle norms
    norms = torch.cat([fc1.weight, fc1.bias[:, None]], 1).norm(dim=1)
    expected = sorted(torch.argsort(norms, descending=True)[:6].tolist())
    kept_rows = fc1.weight.detach()[expected].clone()
    method.on_epoch_end(trainer, 1)
    assert trainer.model.fc1.out_features == 6
    assert torch.equal(trainer.model.fc1.weight, kept_rows)


def test_apoz_removes_a_dead_unit_and_keeps_a_busy_one(digits):
    method = build_method("apoz", {"keep": 0.75, "start_epoch": 1, "end_epoch": 1,
                                   "layers": "fc1"})
    trainer = _trainer(digits, method, widths=(8, 6))
    fc1 = trainer.model.fc1
    with torch.no_grad():
        fc1.bias[3] = -1e3  # ReLU output always zero: the dead unit
        fc1.bias[5] = 1e3   # always active
        marker = fc1.weight[5].clone()
    method.on_epoch_end(trainer, 1)
    assert trainer.model.fc1.out_features == 6
    rows = trainer.model.fc1.weight.detach()
    assert (trainer.model.fc1.bias == -1e3).sum() == 0
    assert any(torch.equal(row, marker) for row in rows)


def test_gradual_schedule_follows_the_cubic_curve_to_the_target(digits):
    method = build_method("magnitude", {"keep": 0.25, "start_epoch": 2, "end_epoch": 5})
    fractions = [method.kept_fraction(epoch, 10) for epoch in range(1, 8)]
    assert fractions[0] == 1.0 and fractions[-1] == 0.25
    assert all(a >= b for a, b in zip(fractions, fractions[1:], strict=False))
    assert fractions[2] == pytest.approx(0.25 + 0.75 * (1 - 2 / 4) ** 3)


def test_gradual_magnitude_run_ends_at_the_target_widths(tmp_path):
    config = RunConfig(method="magnitude", model="mlp", dataset="digits", widths=[20, 10],
                       out=str(tmp_path), method_options={"keep": 0.3, "start_epoch": 1,
                                                          "end_epoch": 3},
                       train=TrainConfig(epochs=5, lr=0.01, progress=False))
    summary = train_run(config)
    assert summary["final_widths"] == [math.ceil(0.3 * 20), math.ceil(0.3 * 10)]
    assert summary["test_accuracy"] > 0.5


def test_net2net_widening_preserves_outputs(digits):
    method = build_method("net2net", {"factor": 1.5, "every": 1, "events": 1, "noise": 0.0})
    trainer = _trainer(digits, method, widths=(8, 6))
    trainer.model.eval()
    x = digits.x_test[:50]
    expected = trainer.model(x)
    method.on_epoch_end(trainer, 1)
    assert (trainer.model.fc1.out_features, trainer.model.fc2.out_features) == (12, 9)
    torch.testing.assert_close(trainer.model(x), expected, rtol=1e-5, atol=1e-5)


def test_net2net_factor_above_two_splits_repeatedly(digits):
    method = build_method("net2net", {"factor": 3.0, "every": 1, "events": 1, "noise": 0.0,
                                      "layers": "fc2"})
    trainer = _trainer(digits, method, widths=(8, 4))
    trainer.model.eval()
    expected = trainer.model(digits.x_test[:20])
    method.on_epoch_end(trainer, 1)
    assert trainer.model.fc2.out_features == 12
    torch.testing.assert_close(trainer.model(digits.x_test[:20]), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name,options,message", [
    ("magnitude", {"keep": 0}, "keep must be a fraction"),
    ("apoz", {"start_epoch": 0}, "epochs must be >= 1"),
    ("net2net", {"factor": 1.0}, "factor must be > 1"),
    ("magnitude", {"start_epoch": 4, "end_epoch": 2}, "end-epoch .2. is before"),
])
def test_bad_options_are_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_method(name, options)


def test_pruning_that_would_start_after_the_last_epoch_is_refused(tmp_path):
    config = RunConfig(method="magnitude", model="mlp", dataset="digits", widths=[4],
                       out=str(tmp_path / "run"), method_options={"start_epoch": 5},
                       train=TrainConfig(epochs=2, progress=False, threads=1))
    with pytest.raises(ValueError, match="start-epoch 5 is after the run's last epoch"):
        train_run(config)


@pytest.mark.parametrize("name", ["magnitude", "apoz", "net2net"])
def test_unknown_layer_fails_before_training_and_leaves_no_run_behind(tmp_path, name):
    out = tmp_path / "run"
    config = RunConfig(method=name, model="mlp", dataset="digits", widths=[4], out=str(out),
                       method_options={"layers": "fc9"},
                       train=TrainConfig(epochs=3, progress=False, threads=1))
    with pytest.raises(ValueError, match=rf"--{name}-layers names \['fc9'\]"):
        train_run(config)
    assert not out.exists()  # nothing trained, nothing to resume: the --out is free again
    config.method_options = {}
    assert train_run(config)["epochs"] == 3


@pytest.mark.parametrize("name,options", [
    ("magnitude", {"keep": 0.3, "start_epoch": 1, "end_epoch": 4}),
    ("net2net", {"factor": 1.5, "every": 1, "events": 3}),
])
def test_interrupted_baseline_run_resumes_to_the_same_result(tmp_path, name, options):
    def config(out):
        return RunConfig(method=name, model="mlp", dataset="digits", widths=[12], out=str(out),
                         method_options=options,
                         train=TrainConfig(epochs=5, lr=0.01, progress=False, threads=1))

    train_run(config(tmp_path / "straight"))
    cut = train_run(config(tmp_path / "cut"), callbacks=[InterruptAt(epoch=3, batch=4)])
    assert cut["stopped_early"] == "interrupted"
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")
