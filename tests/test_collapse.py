"""No silent collapse: a run whose sizing decisions leave a layer empty or end at chance level
stops with the cause and the fix, and the command line exits non-zero."""

import json
import math

import pytest
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
                     "--npn-lambdas", "5e-2,1e-5", "--npn-lambda-unit", "weight",
                     "--no-npn-adaptive", "--npn-gate-lr", "0.1", "--no-progress",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert "fc1 has no input features left" in err and "--npn-lambdas" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"].startswith("collapsed:")
    assert summary["epochs"] < 12  # it stopped when the last input closed
    # The last good epoch's checkpoint is kept: the run can be inspected or resumed from it.
    assert (tmp_path / "run" / "checkpoint").exists()


def test_a_residual_block_with_no_units_left_is_not_a_collapse_but_an_empty_stem_is():
    from neuroplast.train import CollapseGuard, TrainingCollapsed

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 8, 8, generator=generator)
    y = torch.randint(0, 3, (48,), generator=generator)
    data = DataSplits("images", x[:16], y[:16], x[16:32], y[16:32], x[32:], y[32:], 3, (3, 8, 8))
    method = NPN()
    torch.manual_seed(0)
    trainer = Trainer(build_model("resnet20", (3, 8, 8), 3), data, method,
                      TrainConfig(epochs=1, progress=False))
    model = trainer.model
    with torch.no_grad():
        model.layer1[0].bn1[1].phi.fill_(-1.0)  # the first block's inner channels: all closed
    assert method.live_widths(model)["layer1.0.conv1"] == 0
    # Independent check that the network still reads its input, then the guard agrees.
    model.eval()
    assert not torch.allclose(model(x[:1]), model(x[1:2]))
    CollapseGuard().on_epoch_end(trainer, 1)
    with torch.no_grad():
        model.conv1_gate.phi.fill_(-1.0)  # the stem: nothing reaches any block
    assert torch.allclose(model(x[:1]), model(x[1:2]))
    with pytest.raises(TrainingCollapsed, match="conv1 has no output channels left"):
        CollapseGuard().on_epoch_end(trainer, 1)


def test_a_run_stopped_at_its_end_keeps_the_checkpoint_of_its_last_epoch(tmp_path):
    from neuroplast.train.run import RunConfig, train_run

    data = _label_noise_data()
    config = RunConfig(method="npn", model="mlp", widths=[16], out=str(tmp_path / "run"),
                       method_options={"k_schedule": "1:inf"},
                       train=TrainConfig(epochs=6, batch_size=50, lr=0.02, progress=False))
    import neuroplast.train.run as run_module

    original = run_module._load_data
    run_module._load_data = lambda config: data  # the noise labels, through the whole run
    try:
        summary = train_run(config)
    finally:
        run_module._load_data = original
    assert summary["stopped_early"].startswith("collapsed: npn ended")
    # The automatic rule skips most epochs' checkpoints; the last one is written before the
    # end-of-run check can stop the run, so what the summary describes is what is on disk.
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())
    assert manifest["epoch"] == 6 == summary["epochs"]


def test_a_dominant_class_does_not_make_a_learning_network_look_collapsed():
    from neuroplast.train import CollapseGuard, TrainingCollapsed

    # 95 % of one class: an accuracy at the majority share says little, the loss says more.
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 4, generator=generator)
    y = (x[:, 0] > 1.645).long()  # about 5 % positives, decided by one feature
    data = DataSplits("rare", x[:1000], y[:1000], x[1000:2000], y[1000:2000], x[2000:],
                      y[2000:], 2, (4,))
    trainer = _fit(NPN(k_schedule="1:inf"), data)
    share = float(y[1000:2000].float().mean())
    chance = max(share, 1 - share)
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    # At the majority share, a loss well under the class shares' entropy is learning...
    trainer.last_metrics.update(val_accuracy=chance, val_loss=entropy / 3, val_loss_se=0.01)
    CollapseGuard().on_train_end(trainer)
    # ...and a loss at that entropy is not.
    trainer.last_metrics.update(val_loss=entropy, val_loss_se=0.01)
    with pytest.raises(TrainingCollapsed, match="chance level"):
        CollapseGuard().on_train_end(trainer)
