"""Learning-rate milestones (the reference NPN recipes' MultiStepLR): the rate each epoch trains
with, across a Ctrl-C and resume, and the errors a wrong milestone list gets."""

import json

import pytest
from run_helpers import InterruptAt, assert_same_run

from neuroplast import cli
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run


def _config(out, **train):
    options = dict(epochs=5, batch_size=64, seed=2, progress=False, threads=1, lr=0.01,
                   scheduler="step", lr_milestones=[2, 4], lr_gamma=0.1)
    options.update(train)
    return RunConfig(method="fixed", model="mlp", dataset="digits", widths=[12],
                     out=str(out), train=TrainConfig(**options))


def _epoch_lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_epoch_trains_with_the_rate_its_milestones_give(tmp_path):
    train_run(_config(tmp_path / "run"))
    # Written out by hand: 0.01 for epochs 1-2, x0.1 after epoch 2, x0.1 again after epoch 4.
    assert _epoch_lrs(tmp_path / "run") == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4])


def test_without_milestones_step_decays_every_third_of_the_epochs(tmp_path):
    train_run(_config(tmp_path / "run", epochs=6, lr_milestones=[], lr_gamma=0.5))
    assert _epoch_lrs(tmp_path / "run") == pytest.approx([1e-2] * 2 + [5e-3] * 2 + [2.5e-3] * 2)


def test_resume_across_a_milestone_equals_an_uninterrupted_run(tmp_path):
    train_run(_config(tmp_path / "straight"))
    cut = train_run(_config(tmp_path / "cut"), callbacks=[InterruptAt(epoch=4, batch=3)])
    assert cut["stopped_early"] == "interrupted"
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(scheduler="none"), "need the step scheduler: add --scheduler step"),
        (dict(lr_milestones=[4, 2]), "increasing epoch numbers >= 1"),
        (dict(lr_milestones=[0, 3]), "increasing epoch numbers >= 1"),
        (dict(lr_gamma=0.0), "lr gamma must be in (0, 1]"),
        (dict(lr_milestones="60,120"), "lr milestones must be a list of epoch numbers"),
        (dict(lr_milestones=[1.0]), "lr milestones must be a list of epoch numbers"),
        (dict(lr_gamma="0.1"), "lr_gamma must be a number, got '0.1'"),
        (dict(epochs=2.5), "epochs must be an integer, got 2.5"),
    ],
)
def test_wrong_milestones_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        _config("unused", **options).train.validate()


def test_command_line_milestones_reach_the_run(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "digits", "--widths", "8", "--epochs", "3",
                     "--lr", "0.01", "--scheduler", "step", "--lr-milestones", "1",
                     "--lr-gamma", "0.5", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    assert _epoch_lrs(tmp_path / "run") == pytest.approx([1e-2, 5e-3, 5e-3])
    code = cli.main(["train", "--dataset", "digits", "--epochs", "2", "--lr-milestones", "1",
                     "--no-progress", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "add --scheduler step" in err and "Traceback" not in err


def test_a_recipe_may_give_one_milestone_as_a_number_and_a_wrong_type_is_named(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('dataset = "digits"\nwidths = [8]\nepochs = 3\nlr = 0.01\n'
                      'scheduler = "step"\nlr_milestones = 2\nprogress = false\n')
    assert cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 0
    assert _epoch_lrs(tmp_path / "run") == pytest.approx([1e-2, 1e-2, 1e-3])
    recipe.write_text('dataset = "digits"\nepochs = "3"\n')
    assert cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "epochs must be an integer, got '3'" in err and "Traceback" not in err
