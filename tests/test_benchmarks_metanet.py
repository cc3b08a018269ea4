"""The MetaNet benchmark's bookkeeping: experiment selection and the validation-loss view."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

import benchmarks.metanet as metanet_benchmark  # noqa: E402
from benchmarks.metanet import Experiment, InterruptedRun, main, run_experiment  # noqa: E402
from neuroplast.train import run  # noqa: E402


def _row(name, width, seed, losses, accuracy):
    return {"key": f"metanet-mnist-{name}-e20-s{seed}", "dataset": "mnist", "experiment": name,
            "method": "fixed", "options": {}, "seed": seed, "start_width": width,
            "final_width": width, "test_accuracy": accuracy, "val_accuracy": accuracy,
            "params": 1, "neuron_epochs": width * len(losses), "epochs": len(losses),
            "planned_epochs": len(losses), "train_seconds": 1.0, "wall_seconds": 1.0,
            "stopped_early": False, "widths": [width] * len(losses), "val_losses": losses,
            "events": [[] for _ in losses], "command": "neuroplast train ..."}


def test_only_takes_several_names_and_the_val_loss_view_reads_the_rows(tmp_path):
    rows = [_row("fixed-8", 8, 0, [0.5, 0.3, 0.4], 0.90),
            _row("fixed-8", 8, 1, [0.6, 0.2, 0.25], 0.92),
            _row("fixed-16", 16, 0, [0.4, 0.1, 0.3], 0.95),
            _row("fixed-32", 32, 0, [0.3, 0.2, 0.1], 0.97)]
    for row in rows:
        (tmp_path / f"{row['key']}.json").write_text(json.dumps(row))
    code = main(["--full", "--table", "--val-loss", "--out-dir", str(tmp_path),
                 "--runs-dir", str(tmp_path / "runs"), "--only", "fixed-8,fixed-16"])
    assert code == 0
    summary = json.loads((tmp_path / "metanet-full.json").read_text())
    assert sorted(r["key"] for r in summary["rows"]) == sorted(r["key"] for r in rows[:3])
    table = (tmp_path / "metanet-full-val-loss.md").read_text()
    # fixed-8: best losses 0.3 (epoch 2) and 0.2 (epoch 2), final 0.4 and 0.25, acc 90 and 92
    assert "| 8 | 2 | 0.2500 | 2 | 0.3250 | 91.00 |" in table
    assert "| 16 | 1 | 0.1000 | 2 | 0.3000 | 95.00 |" in table
    assert "| 32 |" not in table


def test_an_interrupted_run_writes_no_row(tmp_path, monkeypatch):
    # The row's file marks an experiment done: a SIGTERM'd run must not be skipped next time.
    def interrupted(config):
        (Path(config.run_dir())).mkdir(parents=True)
        (Path(config.run_dir()) / "metrics.jsonl").write_text("")
        return {"stopped_early": "interrupted by SIGTERM", "final_widths": [8], "epochs": 0,
                "test_accuracy": 0.5, "val_accuracy": 0.5, "params": 1, "train_seconds": 1.0}

    monkeypatch.setattr(run, "train_run", interrupted)
    # The process-wide flag this sets goes back to False after the test.
    monkeypatch.setattr(metanet_benchmark, "_interrupted", False)
    experiment = Experiment("mnist", "fixed-8", 8, 20, 0)
    with pytest.raises(InterruptedRun, match="interrupted by SIGTERM: no row written"):
        run_experiment(experiment, "data", str(tmp_path / "runs"), 1, str(tmp_path))
    assert not list(tmp_path.glob("*.json"))
    # A pool worker outlives a killed grid process and keeps its queued experiments: after an
    # interruption it must not train them.
    calls = []
    monkeypatch.setattr(run, "train_run", calls.append)
    with pytest.raises(InterruptedRun, match="not started: an earlier run in this process"):
        run_experiment(Experiment("mnist", "fixed-16", 16, 20, 0), "data",
                       str(tmp_path / "runs"), 1, str(tmp_path))
    assert calls == [] and not list(tmp_path.glob("*.json"))


def test_a_pool_worker_whose_grid_process_is_gone_trains_nothing_and_exits(tmp_path,
                                                                           monkeypatch):
    calls = []
    monkeypatch.setattr(run, "train_run", calls.append)
    monkeypatch.setattr(metanet_benchmark, "_interrupted", False)
    # The worker was started by another process than its parent now (the grid was killed).
    monkeypatch.setattr(metanet_benchmark, "_grid_pid", os.getppid() + 1)
    def leave(code):
        raise SystemExit(code)

    monkeypatch.setattr(metanet_benchmark.os, "_exit", leave)
    with pytest.raises(SystemExit) as left:
        run_experiment(Experiment("mnist", "fixed-8", 8, 20, 0), "data",
                       str(tmp_path / "runs"), 1, str(tmp_path))
    assert left.value.code == 130
    assert calls == [] and not list(tmp_path.glob("*.json"))
