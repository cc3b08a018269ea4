"""Data-parallel training with gloo on CPU: two real processes against one.

The two-rank runs go through ``tests/ddp_worker.py`` (one process per rank, as torchrun would
start them); the reference is the same run in this process with one rank.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import Recorder, run_config  # noqa: E402

from neuroplast.core.checkpoint import load_checkpoint  # noqa: E402
from neuroplast.train.run import resume_run, train_run  # noqa: E402

WORKER = Path(__file__).parent / "ddp_worker.py"
EPOCHS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, *args: str, world: int = 2, timeout: float = 120):
    """Start ``world`` worker processes as ranks of one gloo group; wait for all of them."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append((proc.returncode, stdout, stderr))
    return results


def saved_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a run's checkpoint, read straight from its safetensors file."""
    (path,) = (run_dir / "checkpoint").glob("tensors-*.safetensors")
    return {k[len("model/"):]: v for k, v in load_file(str(path)).items()
            if k.startswith("model/")}


def states(out: Path, rank: int, epochs) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(out / f"rank{rank}-epoch{e}.safetensors")) for e in epochs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run in one process, recorded the same way."""
    out = tmp_path_factory.mktemp("one")
    recorder = Recorder(out, rank=0)
    train_run(run_config(out / "run"), [recorder])
    rows = json.loads((out / "rank0.json").read_text())
    return out, rows


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    results = launch(out)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    return out


def test_the_run_has_growth_and_pruning_events(reference):
    _, rows = reference
    events = " ".join(e for row in rows for e in row["events"])
    assert "proliferation" in events and "autophagy" in events, events
    widths = [row["widths"]["fc1"] for row in rows]
    assert max(widths) > 12 and any(b < a for a, b in zip(widths, widths[1:], strict=False)), widths


def test_ranks_hold_identical_architecture_and_weights_after_every_epoch(two_ranks):
    rows = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(rows[0]) == EPOCHS and rows[0] == rows[1]
    for a, b in zip(states(two_ranks, 0, range(1, EPOCHS + 1)),
                    states(two_ranks, 1, range(1, EPOCHS + 1)), strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_two_ranks_equal_one_process_on_the_same_global_batch(two_ranks, reference):
    one, rows = reference
    two_rows = json.loads((two_ranks / "rank0.json").read_text())
    assert [r["widths"] for r in two_rows] == [r["widths"] for r in rows]
    assert [r["events"] for r in two_rows] == [r["events"] for r in rows]
    for a, b in zip(states(two_ranks, 0, range(1, EPOCHS + 1)),
                    states(one, 0, range(1, EPOCHS + 1)), strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    metrics = [json.loads(line) for line in
               (two_ranks / "run" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in
              (one / "run" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(metrics, single, strict=True):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert a["test_accuracy"] == b["test_accuracy"]


def test_only_rank_zero_writes_and_the_summary_counts_two_ranks(two_ranks):
    summary = json.loads((two_ranks / "run" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["epochs"] == EPOCHS
    assert len((two_ranks / "run" / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path, reference):
    one, _ = reference
    results = launch(tmp_path, "--stop-after", "3")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    assert load_checkpoint(tmp_path / "run" / "checkpoint").epoch == 3
    resume_run(tmp_path / "run", progress=False)
    final = load_checkpoint(tmp_path / "run" / "checkpoint").model.state_dict()
    expected = load_checkpoint(one / "run" / "checkpoint").model.state_dict()
    assert final.keys() == expected.keys()
    for name in final:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-4, atol=1e-5)


def test_rank_local_decisions_stop_with_a_clear_error(tmp_path):
    results = launch(tmp_path, "--disagree")
    for code, _, stderr in results:
        assert code == 3, stderr[-3000:]
        assert "different architectures" in stderr and "all-reduced" in stderr


def test_a_dead_rank_stops_the_other_with_a_clear_error(tmp_path):
    results = launch(tmp_path, "--die-at", "2", timeout=90)
    assert results[1][0] == 17
    code, _, stderr = results[0]
    assert code == 3, stderr[-3000:]
    assert "another rank stopped answering" in stderr and "resume" in stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint").epoch == 1


NPN_ARGS = ["--method", "npn", "--model", "mlp", "--widths", "16", "--epochs", "3",
            "--batch-size", "32", "--seed", "1", "--threads", "1", "--no-progress",
            "--npn-k", "2", "--npn-stages", "0.0,1.0", "--npn-lambdas", "0.01",
            "--npn-lambda-unit", "weight",
            # the price and phi's rate this test was written with (it checks equivalence)
            "--no-npn-adaptive", "--npn-gate-lr", "1e-3",
            # each rank augments its share of the batch as one process augments all of it
            "--augment", "crop-flip", "--augment-padding", "1"]


def test_the_command_line_starts_torchrun_and_npn_gates_train_as_in_one_process(tmp_path):
    """``--nproc-per-node 2`` through torchrun; NPN's ARM gradients for phi are averaged by
    the trainer (DDP leaves them alone) and each rank augments its rows as one process does,
    so the result matches one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "neuroplast", "train", *NPN_ARGS,
                          "--out", str(tmp_path / "two"), "--nproc-per-node", "2"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "neuroplast", "train", *NPN_ARGS,
                          "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2
    a, b = saved_model(tmp_path / "two"), saved_model(tmp_path / "one")
    assert any(name.endswith("phi") for name in a) and a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_distributed_without_a_launcher_says_how_to_launch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    result = subprocess.run([sys.executable, "-m", "neuroplast", "train", "--distributed",
                             "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "torchrun --nproc_per_node" in result.stderr and "Traceback" not in result.stderr


def test_a_one_process_checkpoint_resumes_on_two_ranks(tmp_path, reference):
    one, _ = reference
    train_run(run_config(tmp_path / "run"), [Recorder(tmp_path, rank=0, stop_after=2)])
    assert load_checkpoint(tmp_path / "run" / "checkpoint").epoch == 2
    results = launch(tmp_path, "--resume")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    final = load_checkpoint(tmp_path / "run" / "checkpoint").model.state_dict()
    expected = load_checkpoint(one / "run" / "checkpoint").model.state_dict()
    assert final.keys() == expected.keys()
    for name in final:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["ranks"] == 2


def test_backends_other_than_gloo_are_refused_with_the_reason(monkeypatch):
    from neuroplast.distributed import DistributedError, init_distributed

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match="GPU training is not supported yet"):
        init_distributed("nccl")
    with pytest.raises(DistributedError, match="choose gloo"):
        init_distributed("mpi")


def test_nccl_is_refused_before_torchrun_starts_any_worker(tmp_path, capsys):
    from neuroplast import cli

    code = cli.main(["train", "--dataset", "digits", "--epochs", "1", "--dist-backend", "nccl",
                     "--nproc-per-node", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "use --dist-backend gloo" in err
    assert "resume" not in err and not (tmp_path / "run").exists()
