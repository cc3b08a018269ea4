"""``standardise=False`` (``--no-standardise``): inputs as scaled, the reference NPN's MNIST."""

import json
from pathlib import Path

import pytest
import torch

from neuroplast import cli
from neuroplast.data import load_dataset

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.mark.parametrize("name,data_dir", [("digits", None), ("mnist", MNIST)])
def test_raw_inputs_are_the_scaled_pixels_and_standardising_them_gives_the_default(name,
                                                                                   data_dir):
    if data_dir is not None and not data_dir.is_dir():
        pytest.skip(f"{data_dir} is not here")
    raw = load_dataset(name, data_dir, seed=3, standardise=False)
    default = load_dataset(name, data_dir, seed=3)
    assert float(raw.x_train.min()) == 0.0 and float(raw.x_train.max()) == 1.0
    assert torch.equal(raw.y_train, default.y_train)  # the same split
    # standardised by hand with the raw training split's per-channel statistics
    std, mean = torch.std_mean(raw.x_train, dim=(0, 2, 3), correction=0, keepdim=True)
    for raw_x, default_x in ((raw.x_train, default.x_train), (raw.x_val, default.x_val),
                             (raw.x_test, default.x_test)):
        torch.testing.assert_close((raw_x - mean) / std, default_x, rtol=1e-5, atol=1e-5)


def test_the_command_line_and_recipes_reach_the_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--no-standardise",
                     "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["standardise"] is False
    assert cli.main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
                     "--out", str(tmp_path / "default")]) == 0

    def first_loss(run):
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    assert first_loss(out) != first_loss(tmp_path / "default")  # the run saw other inputs
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('dataset = "digits"\nepochs = 1\nstandardise = "no"\n')
    assert cli.main(["train", "--config", str(recipe), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "standardise must be true or false" in err and "Traceback" not in err
