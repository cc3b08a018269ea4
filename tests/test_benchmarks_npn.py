"""The NPN benchmark's job lists and the plots it keeps (the runs themselves are benchmarks)."""

import shlex
import sys
from pathlib import Path

import torch
from torch import nn

import neuroplast as npl
from neuroplast import cli
from neuroplast.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import npn, npn_tables  # noqa: E402


def _config(arguments):
    return arguments[arguments.index("--config") + 1]


def test_full_moons_jobs_are_the_full_recipes_on_three_seeds_each():
    jobs = npn._full_moons_jobs()
    names = [name for name, _ in jobs]
    assert len(names) == len(set(names)) == 12
    for name, arguments in jobs:
        assert (ROOT / _config(arguments)).exists()
        assert not _config(arguments).endswith("-cpu.toml")  # the full 2000-epoch recipes
        assert name.endswith(f"-s{arguments[arguments.index('--seed') + 1]}")
    physical = [args for name, args in jobs if "physical" in name]
    assert len(physical) == 3 and all("physical" in args for args in physical)


def test_quick_jobs_use_the_cpu_recipes_and_only_filters_them():
    assert all(_config(args).endswith("-cpu.toml") for _, args in npn._jobs(None))
    assert {name for name, _ in npn._jobs("moons-expand")} == {
        f"moons-expand{kind}-s{seed}" for kind in ("", "-physical") for seed in (0, 1, 2)}


def test_a_seed_0_boundary_plot_is_kept_beside_the_result_file(tmp_path, monkeypatch):
    monkeypatch.setattr(npn, "RUNS_DIR", tmp_path / "runs")
    run = tmp_path / "runs" / "moons-full-expand-s0"
    run.mkdir(parents=True)
    (run / "decision_boundary.png").write_bytes(b"\x89PNG fake")
    out = tmp_path / "results" / "npn-moons-full.json"
    out.parent.mkdir()
    npn._keep_boundary_plot("moons-full-expand-s0", out)
    assert (out.parent / "npn-moons-full-expand-s0-boundary.png").read_bytes() == b"\x89PNG fake"
    npn._keep_boundary_plot("moons-full-sparse-s0", out)  # no plot (no matplotlib): nothing
    assert len(list(out.parent.iterdir())) == 1


def test_result_tables_show_each_run_as_its_recipe_plus_what_it_added():
    typed_out = ("neuroplast train --config recipes/npn-lenet5-mnist-sparse.toml --data-dir d "
                 "--epochs 100 --optimizer sgd --lr 0.05 --weight-decay 5e-4 --scheduler cosine "
                 "--lr-milestones '' --npn-gate-optimizer adam --npn-gate-lr 3e-3 "
                 "--npn-lambdas 1,2,3,4 --seed 1 --out runs/x")
    assert npn_tables._recipe_and_settings(typed_out) == (
        "npn-lenet5-mnist-sparse-sgd", "--npn-lambdas 1,2,3,4")
    # one SGD option different (here the epochs): not the SGD recipe, every option shown
    longer = typed_out.replace("--epochs 100", "--epochs 200")
    recipe, settings = npn_tables._recipe_and_settings(longer)
    assert recipe == "npn-lenet5-mnist-sparse" and "--epochs 200" in settings
    assert "--lr-milestones ''" in settings and "--seed" not in settings


def test_expand_runs_typed_out_show_as_the_expand_recipe_and_equal_it():
    options = ("--npn-mode expand --npn-k 1 --npn-wake-logit 0 --npn-init-sizes 7,16,256,16 "
               "--lr 0.02 --npn-lambdas 2.5e-4,8.3333e-6,8e-6,6e-4 --epochs 130 "
               "--npn-stages 0.154,0.538 --npn-implementation physical")
    typed_out = (f"neuroplast train --config neuroplast/recipes/npn-lenet5-mnist-sparse-sgd.toml "
                 f"--data-dir d {options} --seed 1 --out runs/x")
    assert npn_tables._recipe_and_settings(typed_out) == (
        "npn-lenet5-mnist-expand-sgd", "(the recipe)")
    # the -small recipe is still found for its own runs, and a partial match is not a recipe
    small = typed_out.replace(options, "--npn-implementation physical --npn-lambdas "
                              "2.5e-4,8.3333e-6,6.5e-6,6e-4 --epochs 130 --npn-stages 0.154,0.538")
    assert npn_tables._recipe_and_settings(small)[0] == "npn-lenet5-mnist-sparse-sgd-small"
    other = npn_tables._recipe_and_settings(typed_out.replace("--lr 0.02", "--lr 0.01"))
    assert other[0] == "npn-lenet5-mnist-sparse-sgd" and "--lr 0.01" in other[1]
    # what the typed-out command trains is what the recipe trains
    recipe = cli.config_from_options(
        {"config": str(ROOT / "neuroplast/recipes/npn-lenet5-mnist-expand-sgd.toml")}).to_json()
    # (waking one unit per improving epoch was the default when these runs were made)
    words = [*shlex.split(typed_out)[1:], "--npn-growth", "0"]
    words[words.index("--config") + 1] = str(ROOT / words[words.index("--config") + 1])
    args = vars(cli.build_parser().parse_args(words))
    typed = cli.config_from_options({k: v for k, v in args.items() if k != "command"}).to_json()
    for config in (recipe, typed):
        config.pop("out"), config.pop("data_dir"), config.pop("command")
        config["train"].pop("seed")
    assert recipe == typed


def test_result_tables_cover_every_committed_full_mnist_run():
    rows = npn_tables.lenet5_rows()
    files = {row[-1] for row in rows}
    assert {"npn-lenet5-sgd-s0.json", "npn-lenet5-sparse-full-s0.json",
            "npn-lenet5-expand-full-physical-s0.json"} <= files
    goal_rows = [row for row in rows if row[8] == "**both**"]
    for row in goal_rows:  # the goal's bounds, checked from the printed cells
        widths = [int(width) for width in row[5].split("-")]
        assert float(row[4].split()[0]) <= 1.0
        assert all(w <= g for w, g in zip(widths, (9, 18, 65, 25), strict=True))
    assert npn_tables.lenet300_rows()


def test_runs_on_augmented_images_are_flagged_in_the_goal_column():
    plain = "neuroplast train --config recipes/r.toml --seed 0"
    assert npn_tables._meets(True, True, plain) == "**both**"
    assert npn_tables._meets(True, True, plain + " --augment crop") == "**both** (augmented)"
    assert npn_tables._meets(False, True, plain + " --augment none") == "widths only"


def test_table_params_are_what_compaction_leaves_of_those_widths():
    # A network whose first Linear reads only some inputs, compacted: its parameters counted.
    def compact_count(name, widths, live_inputs):
        model = build_model(name, (1, 28, 28), 10, widths=widths).eval()
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            first.weight[:, live_inputs:] = 0
        return npl.count_parameters(npl.compact_model(model))

    assert npn_tables.lenet300_params(278, 82, 31) == compact_count("lenet300", [82, 31], 278)
    assert npn_tables.lenet5_params(9, 16, 41, 16) == compact_count("lenet5", [9, 16, 16], 41)


def test_the_validation_choice_reads_validation_errors_only(tmp_path, monkeypatch):
    import json

    def run(val, test, widths, lam):
        return {"seed": 0, "val_accuracy": val, "test_accuracy": test, "final_widths": widths,
                "command": f"neuroplast train --config recipes/npn-lenet5-mnist-sparse-sgd.toml "
                           f"--npn-lambdas {lam}", "epochs": 100, "train_seconds": 60}

    runs = [run(0.990, 0.9950, [9, 16, 40, 16], "1"),   # best on test
            run(0.992, 0.9910, [9, 16, 40, 16], "2"),   # best on validation
            run(0.999, 0.9990, [20, 50, 800, 500], "3")]  # best of all, but too wide
    (tmp_path / "npn-lenet5-sgd-s0.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(npn_tables, "RESULTS", tmp_path)
    [row] = npn_tables.chosen_on_validation()
    assert row[:4] == ["LeNet-5-Caffe", "prune", "0", "2 of 3"]
    assert "--npn-lambdas 2" in row[4]
    assert row[5:9] == ["0.80 %", "0.90 %", "9-16-40-16", "0.50 %"]
