"""Installed recipes (`neuroplast recipes`, `train --recipe NAME`), `--version` and `list`."""

import json
from importlib import metadata
from pathlib import Path

import pytest

import neuroplast
from neuroplast import cli
from neuroplast.recipes import RECIPE_DIR, list_recipes, recipe_description, recipe_path

QUICK = ["--epochs", "2", "--no-progress", "--threads", "1"]


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_recipes_live_inside_the_package():
    assert RECIPE_DIR == Path(neuroplast.__file__).resolve().parent / "recipes"
    assert len(list(RECIPE_DIR.glob("*.toml"))) >= 30
    assert not (Path(neuroplast.__file__).resolve().parents[1] / "recipes").exists()


def test_recipes_command_lists_each_recipe_on_one_line_with_its_summary(capsys):
    code, out, _ = run(capsys, "recipes")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # every one has a summary
    moons = next(line for line in lines if line.startswith("npn-moons-expand "))
    assert moons.split(maxsplit=1)[1] == "NPN on the 100-D two moons, expand mode"
    assert [recipe.name for recipe in list_recipes()] == [line.split()[0] for line in lines]


def test_a_summary_is_the_first_sentence_of_the_opening_comment(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("# NPN on MNIST (widths: 9-18), prune mode: more\n# and more.\nepochs = 1\n")
    assert recipe_description(recipe) == "NPN on MNIST (widths: 9-18), prune mode"
    recipe.write_text("# Two lines make\n# one sentence\nepochs = 1\n# not this\n")
    assert recipe_description(recipe) == "Two lines make one sentence"
    recipe.write_text("epochs = 1\n")
    assert recipe_description(recipe) == ""


def test_train_recipe_runs_an_installed_recipe_by_name(tmp_path, capsys):
    code, out, _ = run(capsys, "train", "--recipe", "npn-moons-sparse-cpu", *QUICK,
                       "--out", tmp_path / "run")
    assert code == 0 and "test accuracy" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    recipe = cli.read_recipe(recipe_path("npn-moons-sparse-cpu"))
    assert config["method"] == "npn" and config["widths"] == recipe["widths"]
    assert config["method_options"]["lambdas"] == recipe["npn_lambdas"]
    assert config["train"]["epochs"] == 2  # typed options override the recipe
    assert config["train"]["batch_size"] == recipe["batch_size"]
    assert recipe_path("npn-moons-sparse-cpu.toml") == recipe_path("npn-moons-sparse-cpu")


def test_an_unknown_recipe_names_the_installed_ones(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--recipe", "npn-moons", "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err
    assert "unknown recipe 'npn-moons'" in err
    assert "npn-moons-sparse-cpu" in err and "metanet-mnist-from8" in err
    assert not (tmp_path / "r").exists()


def test_recipe_and_config_together_are_refused(tmp_path, capsys):
    own = tmp_path / "own.toml"
    own.write_text('dataset = "digits"\n')
    code, _, err = run(capsys, "train", "--recipe", "npn-moons-sparse-cpu", "--config", own,
                       "--out", tmp_path / "r")
    assert code == 2 and "not both" in err


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"neuroplast {metadata.version('neuroplast')}\n"


def test_list_prints_one_method_model_and_data_set_per_line(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    for name, method in cli.METHODS.items():
        assert sum(line.split()[:1] == [name] for line in lines) == 1
        line = next(line for line in lines if line.split()[:1] == [name])
        assert line.startswith("  ") and line.endswith(method.description)
    for name in (*cli.MODELS, *cli.DATASETS):
        assert f"  {name}" in lines
    assert len(lines) == 3 + len(cli.METHODS) + len(cli.MODELS) + len(cli.DATASETS)
