"""The training loop: exact resume (after Ctrl-C and after a real kill), NaN handling, files."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from run_helpers import InterruptAt, assert_same_run

from neuroplast import cli
from neuroplast.core.checkpoint import load_checkpoint
from neuroplast.train import Callback
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Python's own SIGINT handler for these tests: a suite started in the background (`cmd
    &`, nohup) inherits SIGINT ignored, which neuroplast rightly leaves alone, and then no
    real Ctrl-C reaches the run."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _config(out, epochs=4, **train):
    # A checkpoint after every epoch, so each test knows which one a stop leaves behind.
    options = dict(epochs=epochs, batch_size=32, seed=3, progress=False, threads=1,
                   checkpoint_every=1)
    options.update(train)
    return RunConfig(method="fixed", model="mlp", dataset="digits", widths=[16],
                     out=str(out), train=TrainConfig(**options))


def test_ctrl_c_saves_mid_epoch_and_resume_equals_an_uninterrupted_run(tmp_path):
    train_run(_config(tmp_path / "straight"))
    summary = train_run(_config(tmp_path / "cut"), callbacks=[InterruptAt(epoch=3, batch=7)])
    assert summary["stopped_early"] == "interrupted" and summary["epochs"] == 2
    assert load_checkpoint(tmp_path / "cut" / "checkpoint").extra["position"]["batch"] == 6
    resumed = resume_run(tmp_path / "cut")
    assert resumed["epochs"] == 4 and resumed["stopped_early"] is None
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


class CtrlCAfterStep(Callback):
    """A real SIGINT landing after the optimizer step of a batch (epoch and batch from 1), the
    moment at which recording that batch as still pending would apply it twice on resume."""

    def __init__(self, epoch, batch, times=1, signal_number=signal.SIGINT):
        self.epoch, self.batch, self.times, self.seen = epoch, batch, times, 0
        self.signal_number = signal_number

    def on_epoch_begin(self, trainer, epoch):
        self.seen = 0

    def on_batch_end(self, trainer, loss):
        self.seen += 1
        if trainer.epoch + 1 == self.epoch and self.seen == self.batch:
            for _ in range(self.times):
                signal.raise_signal(self.signal_number)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_a_real_ctrl_c_after_a_step_waits_for_the_batch_and_resume_is_exact(
        tmp_path, capsys, signal_number):
    # SIGTERM is what a cluster scheduler sends before it preempts a job
    train_run(_config(tmp_path / "straight"))
    summary = train_run(_config(tmp_path / "cut"),
                        callbacks=[CtrlCAfterStep(epoch=3, batch=5, signal_number=signal_number)])
    assert summary["epochs"] == 2
    # the command line then exits as if killed by the signal (130 / 143): not finished
    assert cli._exit_status(summary["stopped_early"]) == 128 + signal_number
    checkpoint = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert checkpoint.extra["position"]["batch"] == 5  # batches 1-5 applied, 6 next
    per_epoch = load_checkpoint(tmp_path / "straight" / "checkpoint").step // 4
    assert checkpoint.step == 2 * per_epoch + 5  # no optimizer step lost or repeated
    assert "after 5 batches: saved" in capsys.readouterr().err  # shown without progress
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


class RaiseAfterStep(Callback):
    """A KeyboardInterrupt from elsewhere (another SIGINT handler, a library) after a step."""

    def on_batch_end(self, trainer, loss):
        if trainer.epoch == 2 and trainer.step % 36 == 5:
            raise KeyboardInterrupt


def test_an_interrupt_inside_a_batch_after_its_step_resumes_from_the_epoch_end(tmp_path, capsys):
    train_run(_config(tmp_path / "straight"))
    train_run(_config(tmp_path / "cut"), callbacks=[RaiseAfterStep()])
    checkpoint = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert checkpoint.epoch == 2 and checkpoint.extra["position"] is None  # not batch 5 again
    assert "checkpoint of epoch 2 is kept" in capsys.readouterr().err
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_stopped_before_anything_was_saved_leaves_no_run_behind(tmp_path, capsys):
    out = tmp_path / "run"
    summary = train_run(_config(out), callbacks=[CtrlCAfterStep(epoch=1, batch=3, times=2)])
    assert summary["stopped_early"] == "interrupted"
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists()  # the same --out works again without --overwrite
    assert train_run(_config(out, epochs=1))["epochs"] == 1


def test_a_second_ctrl_c_stops_at_once_and_resumes_from_the_last_epoch(tmp_path, capsys):
    train_run(_config(tmp_path / "straight"))
    train_run(_config(tmp_path / "cut"), callbacks=[CtrlCAfterStep(epoch=3, batch=5, times=2)])
    checkpoint = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert checkpoint.epoch == 2 and checkpoint.extra["position"] is None
    assert "checkpoint of epoch 2 is kept" in capsys.readouterr().err
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


KILL_MID_EPOCH = textwrap.dedent(
    """
    import os, signal, sys
    from neuroplast.train import Callback
    from neuroplast.train.loop import TrainConfig
    from neuroplast.train.run import RunConfig, train_run

    class Kill(Callback):
        def on_batch_end(self, trainer, loss):
            if trainer.epoch == 2 and trainer.step % 45 == 5:   # in the middle of epoch 3
                os.kill(os.getpid(), signal.SIGKILL)

    config = RunConfig(method="fixed", model="mlp", dataset="digits", widths=[16], out=sys.argv[1],
                       train=TrainConfig(epochs=4, batch_size=32, seed=3, progress=False,
                                         threads=1, checkpoint_every=1))
    train_run(config, callbacks=[Kill()])
    """
)


def test_killed_mid_epoch_then_resumed_equals_an_uninterrupted_run(tmp_path):
    train_run(_config(tmp_path / "straight"))
    done = subprocess.run([sys.executable, "-c", KILL_MID_EPOCH, str(tmp_path / "killed")])
    assert done.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "killed" / "checkpoint").epoch == 2
    resume_run(tmp_path / "killed")
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


class PoisonAt(Callback):
    def on_epoch_begin(self, trainer, epoch):
        if epoch == 3:
            with torch.no_grad():
                trainer.model.fc1.weight[0, 0] = float("nan")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    summary = train_run(_config(tmp_path), callbacks=[PoisonAt()])
    assert summary["stopped_early"].startswith("diverged")
    assert "nan" in summary["stopped_early"] and "learning rate" in summary["stopped_early"]
    # said even with progress off, naming the checkpoint that really exists
    assert "last good checkpoint (epoch 2) is kept" in capsys.readouterr().err
    checkpoint = load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint.epoch == 2
    assert all(torch.isfinite(t).all() for t in checkpoint.model.state_dict().values())
    assert (tmp_path / "report.md").exists()


def test_run_directory_holds_what_it_promises(tmp_path):
    summary = train_run(_config(tmp_path, epochs=2))
    for name in ("summary.json", "metrics.jsonl", "config.json", "report.md", "widths.png",
                 "checkpoint/checkpoint.json"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    required = {"method", "model", "dataset", "seed", "epochs", "test_accuracy", "initial_widths",
                "final_widths", "params", "macs", "train_seconds"}
    assert required <= saved.keys()
    assert saved["initial_widths"] == saved["final_widths"] == [16]
    assert saved["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < saved["test_accuracy"] <= 1.0


def test_seeded_runs_repeat_exactly(tmp_path):
    train_run(_config(tmp_path / "a", epochs=2))
    train_run(_config(tmp_path / "b", epochs=2))
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resuming_a_finished_run_is_refused(tmp_path):
    train_run(_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="already finished"):
        resume_run(tmp_path)


def test_evaluation_reports_the_standard_error_of_the_mean_loss():
    from torch.nn import functional as F

    from neuroplast import build_model
    from neuroplast.data import load_dataset
    from neuroplast.methods import build_method
    from neuroplast.train.loop import Trainer

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[16])
    trainer = Trainer(model, data, build_method("fixed", {}),
                      TrainConfig(epochs=1, eval_batch_size=37, progress=False))
    result = trainer.evaluate(data.x_val, data.y_val)
    with torch.no_grad():
        losses = F.cross_entropy(model(data.x_val), data.y_val, reduction="none").double()
    assert result.loss == pytest.approx(losses.mean().item(), rel=1e-6)
    assert result.loss_se == pytest.approx(
        (losses.std() / len(losses) ** 0.5).item(), rel=1e-6)
    assert result.accuracy == pytest.approx(
        (model(data.x_val).argmax(1) == data.y_val).double().mean().item())


def test_resume_may_change_the_thread_count_and_refuses_a_bad_one(tmp_path, capsys):
    from neuroplast import cli

    train_run(_config(tmp_path / "cut"), callbacks=[InterruptAt(epoch=2, batch=3)])
    assert cli.main(["resume", str(tmp_path / "cut"), "--threads", "0"]) == 2
    assert "threads must be >= 1" in capsys.readouterr().err
    assert cli.main(["resume", str(tmp_path / "cut"), "--threads", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["epochs"] == 4
    # the run's own record keeps the setting it was started with
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["threads"] == 1
