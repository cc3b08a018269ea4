"""No silent collapse: a run whose sizing decisions leave a layer empty or end at chance level
stops with the cause and the fix, and the command line exits non-zero."""

import json

import torch

from neuroplast import cli
from neuroplast.data import DataSplits
from neuroplast.methods.fixed import FixedWidth
from neuroplast.methods.npn import NPN
from neuroplast.models import build_model
from neuroplast.train import TrainConfig, Trainer


def _label_noise_data(n: int = 600, features: int = 6, seed: int = 0) -> DataSplits:
    """Labels drawn independently of the inputs: no network can beat chance on held-out data."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    third = n // 3
    return DataSplits("noise", x[:third], y[:third], x[third:2 * third], y[third:2 * third],
                      x[2 * third:], y[2 * third:], 2, (features,))


def _fit(method, data):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[16])
    config = TrainConfig(epochs=3, batch_size=50, lr=0.02, progress=False)
    trainer = Trainer(model, data, method, config)
    trainer.fit()
    return trainer


def test_a_resizing_method_at_chance_level_is_stopped_and_a_fixed_run_is_not():
    data = _label_noise_data()
    # Chance by construction: the validation accuracy is within two standard errors of the
    # majority share, whatever the network learned on the training rows.
    npn = _fit(NPN(k_schedule="1:inf"), data)
    assert npn.stopped_early is not None and npn.stopped_early.startswith("collapsed: npn ended")
    assert "chance level" in npn.stopped_early
    fixed = _fit(FixedWidth(), data)
    assert fixed.stopped_early is None


def test_a_learnable_task_is_not_called_a_collapse():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(600, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()  # a linear rule any MLP learns in a few epochs
    data = DataSplits("rule", x[:200], y[:200], x[200:400], y[200:400], x[400:], y[400:], 2, (6,))
    trainer = _fit(NPN(k_schedule="1:inf"), data)
    assert trainer.stopped_early is None
    assert trainer.last_metrics["val_accuracy"] > 0.8


def test_the_command_line_exits_non_zero_naming_the_layer_and_the_fix(tmp_path, capsys):
    # An input price so high that NPN closes every input feature of the moons MLP.
    code = cli.main(["train", "--method", "npn", "--dataset", "moons", "--model", "mlp",
                     "--widths", "80", "--epochs", "12", "--batch-size", "32", "--lr", "0.01",
                     "--npn-input-gates", "--npn-k", "7", "--npn-stages", "0.1,0.8",
                     "--npn-lambdas", "5e-2,1e-5", "--npn-gate-lr", "0.1", "--no-progress",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert "fc1 has no input features left" in err and "--npn-lambdas" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"].startswith("collapsed:")
    assert summary["epochs"] < 12  # it stopped when the last input closed
    # The last good epoch's checkpoint is kept: the run can be inspected or resumed from it.
    assert (tmp_path / "run" / "checkpoint").exists()
