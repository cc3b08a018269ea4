"""MetaNet inside real runs: reproducibility, exact resume, recipes and the command line."""

import json

import pytest
from run_helpers import InterruptAt, assert_same_run, epoch_metrics

from neuroplast import cli
from neuroplast.core.checkpoint import load_checkpoint
from neuroplast.methods import build_method
from neuroplast.recipes import RECIPE_DIR
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run

RECIPES = sorted(RECIPE_DIR.glob("metanet-*.toml"))

# Small enough for a second per run, busy enough that every kind of event happens.
BUSY = {"strategy": "metabolism", "trigger": "schedule", "schedule_cycles": 3,
        "growth_fraction": 0.5, "growth_min": 2,
        "autophagy_threshold": 0.6, "autophagy_patience": 1, "protect_cycles": 0,
        "min_width": 4, "finetune_epochs": 1}




def _config(out, proliferation="division", epochs=6, **options):
    method_options = {**BUSY, "proliferation": proliferation, **options}
    # Splitting needs a smooth activation (ReLU's splitting matrices are all zero).
    activation = "tanh" if proliferation == "splitting" else None
    return RunConfig(method="metanet", model="mlp", dataset="digits", widths=[8], out=str(out),
                     activation=activation, method_options=method_options,
                     train=TrainConfig(epochs=epochs, batch_size=64, seed=5, progress=False,
                                       threads=1))


def _events(run_dir):
    return [event for row in epoch_metrics(run_dir) for event in row["events"]]


@pytest.mark.parametrize("proliferation", ["division", "random", "gradient", "splitting"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, proliferation):
    straight = train_run(_config(tmp_path / "straight", proliferation))
    events = _events(tmp_path / "straight")
    assert any("proliferation" in e for e in events) and any("autophagy" in e for e in events)
    assert len({row["widths"]["fc1"] for row in epoch_metrics(tmp_path / "straight")}) > 2
    # Ctrl-C in the middle of a cycle's statistics, then again at an epoch boundary.
    cut = tmp_path / "cut"
    summary = train_run(_config(cut, proliferation), callbacks=[InterruptAt(epoch=3, batch=5)])
    assert summary["stopped_early"] == "interrupted"
    assert load_checkpoint(cut / "checkpoint").method_state["stats"]["fc1"]["count"] > 0
    summary = resume_run(cut, callbacks=[InterruptAt(epoch=5, batch=1)])
    assert summary["stopped_early"] == "interrupted"
    resumed = resume_run(cut)
    assert resumed["stopped_early"] is None and resumed["final_widths"] == straight["final_widths"]
    assert_same_run(tmp_path / "straight", cut)


def test_seeded_metanet_runs_repeat_exactly(tmp_path):
    train_run(_config(tmp_path / "a", "gradient", epochs=4))
    train_run(_config(tmp_path / "b", "gradient", epochs=4))
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_converged_run_stops_early_and_logs_neuron_epochs(tmp_path):
    config = _config(tmp_path, "none", epochs=12, autophagy=False, stable_cycles=2,
                     stop_when_stable=True)
    # Steps far below float32 resolution: the weights, so the validation loss, never move,
    # and no cycle after the first sets a record.
    config.train.optimizer, config.train.lr = "sgd", 1e-30
    summary = train_run(config)
    rows = epoch_metrics(tmp_path)
    # Cycle 1 sets the record, cycles 2-3 set none and change nothing, fine-tune epoch 4.
    assert summary["epochs"] == 4 and summary["stopped_early"] is None
    assert [row["method"]["phase"] for row in rows] == [0, 0, 1, 2]
    assert rows[-1]["method"]["neuron_epochs"] == 4 * 8


def test_a_converged_run_trains_its_widths_to_the_end_of_the_budget_by_default(tmp_path):
    config = _config(tmp_path, "none", epochs=7, autophagy=False, stable_cycles=2)
    config.train.optimizer, config.train.lr = "sgd", 1e-30
    summary = train_run(config)
    rows = epoch_metrics(tmp_path)
    assert summary["epochs"] == 7 and summary["stopped_early"] is None
    assert [row["method"]["phase"] for row in rows] == [0, 0, 1, 1, 1, 1, 2]


def test_command_line_trains_metanet_and_rejects_bad_options(tmp_path, capsys):
    base = ["train", "--method", "metanet", "--dataset", "digits", "--widths", "8", "--epochs",
            "3", "--no-progress", "--threads", "1", "--metanet-proliferation", "gradient",
            "--metanet-trigger", "schedule", "--metanet-strategy", "metabolism",
            "--out", str(tmp_path / "ok")]
    assert cli.main(base) == 0
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    typed = {"proliferation": "gradient", "trigger": "schedule", "strategy": "metabolism"}
    assert {key: config["method_options"][key] for key in typed} == typed
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["final_widths"] == [16]
    capsys.readouterr()
    bad = base[:-1] + [str(tmp_path / "bad"), "--metanet-proliferation", "mitosis"]
    assert cli.main(bad) == 2
    assert "--metanet-proliferation must be one of division" in capsys.readouterr().err
    bad = base[:-1] + [str(tmp_path / "bad2"), "--metanet-layers", "fc7"]
    assert cli.main(bad) == 2
    assert "--metanet-layers names ['fc7']" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipes_are_valid_metanet_jobs(recipe):
    config = cli.config_from_options({"config": str(recipe)})
    assert config.method == "metanet" and config.dataset in ("mnist", "fashion-mnist", "cifar10")
    assert config.widths in ([8], [1024])
    build_method(config.method, config.method_options)


def test_there_are_recipes_for_every_data_set_and_both_starting_sizes():
    names = {path.stem for path in RECIPES}
    for dataset in ("mnist", "fashion-mnist", "cifar10"):
        for start in ("8", "1024"):
            assert f"metanet-{dataset}-from{start}" in names
