"""The command line as a user meets it: jobs, recipes, exports, and every error message."""

import json
from pathlib import Path

import pytest
import torch

from neuroplast import cli

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TINY = ["--dataset", "digits", "--model", "mlp", "--widths", "8", "--epochs", "1",
        "--no-progress"]


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_report_export_round(tmp_path, capsys):
    code, out, _ = run(capsys, "train", *TINY, "--out", tmp_path / "run")
    assert code == 0 and "test accuracy" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["command"].startswith("neuroplast train --dataset digits")
    code, out, _ = run(capsys, "report", tmp_path / "run")
    assert code == 0 and out.strip().endswith("report.md")
    code, out, _ = run(capsys, "export", tmp_path / "run", "--format", "torchscript")
    assert code == 0
    scripted = torch.jit.load(out.strip())
    assert scripted(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_recipe_file_and_typed_options_merge(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('dataset = "digits"\nmodel = "mlp"\nwidths = [5, 4]\nepochs = 2\n'
                      'batch-size = 100\nprogress = false\n')
    code, _, _ = run(capsys, "train", "--config", recipe, "--epochs", "1", "--out", tmp_path / "r")
    assert code == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["widths"] == [5, 4] and config["train"]["epochs"] == 1
    assert config["train"]["batch_size"] == 100


@pytest.mark.parametrize("written,widths", [("16", [16]), ('"12,6"', [12, 6]),
                                            ('"12,x"', None), ('[4, 0]', None), ("true", None)])
def test_recipe_widths_take_the_command_line_forms_or_name_the_problem(
        tmp_path, capsys, written, widths):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'dataset = "digits"\nepochs = 1\nwidths = {written}\n')
    code, _, err = run(capsys, "train", "--config", recipe, "--no-progress",
                       "--out", tmp_path / "r")
    if widths is None:
        assert code == 2 and "widths = [300, 100]" in err and "Traceback" not in err
    else:
        assert code == 0
        assert json.loads((tmp_path / "r" / "config.json").read_text())["widths"] == widths


def test_a_recipe_option_of_another_method_names_the_method(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('dataset = "digits"\nepochs = 1\nnpn_k = 3.0\n')  # forgot method
    code, _, err = run(capsys, "train", "--config", recipe, "--out", tmp_path / "r")
    assert code == 2 and "npn_k is an option of method npn, but this run uses method fixed" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "magic"], "unknown method 'magic'; choose one of: fixed"),
        (["--model", "gpt5"], "unknown model 'gpt5'; choose one of: mlp"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--epochs", "-2"], "epochs must be >= 1"),
        (["--widths", "8,0"], "widths must be integers >= 1"),
        (["--model", "lenet300", "--widths", "5,5,5"], "lenet300 widths (fc1, fc2 units"),
        (["--val-fraction", "0"], "val_fraction must be a number in (0, 1)"),
        (["--lr", "0"], "learning rate must be a positive number"),
        (["--threads", "0"], "threads must be >= 1"),
        (["--activation", "swish"], "unknown activation 'swish'; choose one of"),
        (["--model", "resnet20", "--activation", "tanh"], "--activation applies to the models"),
        (["--method", "metanet", "--metanet-strategy", "metabolism",
          "--metanet-proliferation", "splitting"],
         "splitting needs an activation with a second derivative (--activation tanh"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "train-images-idx3-ubyte"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, capsys, args, message):
    code, _, err = run(capsys, "train", *TINY, *args, "--out", tmp_path / "run")
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_lenet5_widths_name_what_they_are(tmp_path, capsys):
    # digits are 8x8, too small for LeNet-5's convolutions: a 16x16 home-made set instead
    import numpy as np

    data = tmp_path / "img.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((40, 1, 16, 16), dtype=np.float32), y=np.arange(40) % 4)
    code, _, err = run(capsys, "train", *TINY, "--model", "lenet5", "--dataset", "npz",
                       "--data-dir", data, "--widths", "5", "--out", tmp_path / "run")
    assert code == 2 and "lenet5 widths (conv1, conv2 channels, fc1 units" in err
    assert "must be 3 numbers, got 1" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_occupied_output_directory_is_refused_unless_overwrite(tmp_path, capsys):
    assert run(capsys, "train", *TINY, "--out", tmp_path)[0] == 0
    code, _, err = run(capsys, "train", *TINY, "--out", tmp_path)
    assert code == 2 and "--overwrite" in err and "resume" in err
    assert run(capsys, "train", *TINY, "--out", tmp_path, "--overwrite")[0] == 0


def test_commands_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    for command in ("resume", "export", "report"):
        code, _, err = run(capsys, command, tmp_path)
        assert code == 2 and "run" in err, command


def test_method_option_of_another_method_is_refused():
    with pytest.raises(ValueError, match="is an option of --method"):
        cli.config_from_options({"method": "fixed", "npn.mode": "prune"})


def test_no_arguments_means_the_default_job():
    config = cli.config_from_options({})
    assert (config.method, config.dataset) == (cli.DEFAULT_JOB["method"], "digits")
    # Where and how it runs does not change which job it is...
    config = cli.config_from_options({"out": "elsewhere", "seed": 3, "threads": 1})
    assert (config.method, config.dataset, config.out) == ("metanet", "digits", "elsewhere")
    assert config.train.seed == 3
    # ...but choosing any part of the job does: the rest takes the ordinary defaults.
    config = cli.config_from_options({"dataset": "moons"})
    assert (config.method, config.dataset) == ("fixed", "moons")


def test_an_option_that_does_not_choose_the_job_changes_only_itself():
    default = cli.config_from_options({})
    config = cli.config_from_options({"epochs": 50})
    assert (config.method, config.dataset, config.widths) == ("metanet", "digits", [1024])
    assert config.train.epochs == 50
    # Everything else is the default job's (compared field by field with the plain default).
    for name in ("lr", "scheduler", "optimizer", "batch_size", "seed"):
        assert getattr(config.train, name) == getattr(default.train, name), name
    assert (default.train.epochs, default.train.lr, default.train.scheduler) == (
        30, 0.01, "cosine")


def test_a_method_brings_its_own_schedule_unless_a_recipe_or_an_option_sets_it(tmp_path):
    config = cli.config_from_options({"method": "metanet", "dataset": "digits", "widths": [4]})
    assert (config.train.epochs, config.train.lr, config.train.scheduler) == (30, 0.01, "cosine")
    config = cli.config_from_options({"method": "metanet", "epochs": 5})
    assert (config.train.epochs, config.train.lr) == (5, 0.01)
    recipe = tmp_path / "r.toml"
    recipe.write_text('method = "metanet"\ndataset = "digits"\nepochs = 4\n')
    config = cli.config_from_options({"config": str(recipe)})
    # The recipe says what it says: no method default slips under it.
    assert (config.train.epochs, config.train.lr, config.train.scheduler) == (4, 1e-3, "none")


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs ../shared/data/mnist")
def test_mnist_from_the_shared_copy_trains(tmp_path, capsys):
    code, _, _ = run(capsys, "train", "--dataset", "mnist", "--data-dir", MNIST, "--model", "mlp",
                     "--widths", "16", "--epochs", "1", "--batch-size", "512", "--no-progress",
                     "--out", tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["test_accuracy"] > 0.85


def test_parsed_train_arguments_make_a_config_without_the_launch_options():
    # What benchmarks do: parse a `neuroplast train` line, then build its RunConfig.
    from neuroplast.cli import build_parser, config_from_options

    args = vars(build_parser().parse_args(
        ["train", "--method", "metanet", "--dataset", "digits", "--epochs", "3",
         "--metanet-growth-fraction", "1.0"]))
    args.pop("command")
    config = config_from_options(args)
    assert config.method == "metanet" and config.train.epochs == 3
    assert config.method_options["growth_fraction"] == 1.0


def test_the_csv_label_column_can_be_chosen(tmp_path, capsys):
    rows = ["a,b,digit"] + [f"{i % 3 + 0.1 * i},{-i},{i % 3}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    common = ("train", "--dataset", "csv", "--data-dir", tmp_path / "d.csv", "--epochs", "1",
              "--no-progress")
    code, _, err = run(capsys, *common, "--out", tmp_path / "a")
    assert code == 2 and "--label-column" in err  # no column named label, y, target, class
    code, _, _ = run(capsys, *common, "--label-column", "digit", "--out", tmp_path / "b")
    assert code == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["initial_widths"] and summary["test_accuracy"] is not None


def test_train_help_is_short_and_a_method_help_lists_that_method(capsys):
    from neuroplast.methods import METHODS, method_fields

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    general = capsys.readouterr().out
    assert "--epochs" in general and "--npn-k" not in general and "--metanet-" not in general
    assert "neuroplast train --method M --help" in general
    for method in ("npn", "metanet"):
        with pytest.raises(SystemExit):
            cli.main(["train", "--method", method, "--help"])
        text = capsys.readouterr().out
        kind = METHODS[method]
        flag = {f.name: f"--{method}-{f.name.replace('_', '-')}" for f in method_fields(method)}
        top = [name for name in flag if name not in kind.internal_options and not any(
            name in names for names in kind.option_groups.values())]
        assert 4 <= len(top) <= 8, (method, top)  # a handful of top-level options
        # every option but the internal constants, each group under its own heading
        for name, option in flag.items():
            assert (option + " " in text) != (name in kind.internal_options), option
        for title in kind.option_groups:
            assert f"{method}, {title}:" in text
        # the internal constants are documented, and still parse
        page = (Path(__file__).parent.parent / "docs" / f"{method}.md").read_text()
        assert all(name in page or flag[name] in page for name in kind.internal_options)
        others = [m for m in METHODS if m != method]
        assert not any(f"--{other}-" in text for other in others)
    assert len(general.splitlines()) < 150
    # A flag of a method not chosen still parses, and is refused with the reason.
    code, _, err = run(capsys, "train", "--npn-k", "3", "--dataset", "moons", "--epochs", "1")
    assert code == 2 and "is an option of --method npn" in err


def test_each_epoch_says_validation_and_the_test_accuracy_comes_once_at_the_end(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "digits", "--model", "mlp", "--widths", "8",
                     "--epochs", "3", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all(" val " in line for line in epochs)
    assert not any("test" in line for line in epochs)  # no epoch is picked by its test score
    assert sum("test accuracy" in line for line in out.splitlines()) == 1
