"""Data-parallel training on this machine: 1 process against 2, and what a resize costs under DDP.

    python -m benchmarks.distributed [--quick] [--out benchmarks/results/distributed.json]

Three set-ups train the same model on MNIST (real files from ../shared/data/mnist, else random
tensors of MNIST's shape) with the same global batch of 128, one thread per process, in one run
of this script, for two models: LeNet-300-100 (all 55,000 training examples; a 2 ms step, so
communication weighs heavily) and LeNet-5-Caffe (16,384 examples; a 20 ms step):

* ``plain``: one process, no process group (the trainer as a single-process user runs it);
* ``ddp-1``: one rank under DDP (the cost of the wrapper, the per-step agreement check and
  sharded evaluation with nothing to share);
* ``ddp-2``: two ranks, each training on half of every global batch.

Each reports the wall time of a whole epoch (training and evaluation, as the user sees it,
after a warm-up epoch) and training examples per second. Then, in each set-up, a resize event:
pruning 10 % of fc1's units with the optimizer surgery, plus (under DDP) the cross-rank check
of every tensor and the re-wrap that rebuilds DDP's gradient buckets, timed against the median
training step measured in the same process.

Both processes share this machine's 2 cores, so ``ddp-2`` shows what data parallelism can gain
when each rank has one core of its own; on a busy machine it cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from neuroplast.core.groups import layer_widths
from neuroplast.data import DataError, DataSplits, load_dataset
from neuroplast.distributed import init_distributed, launched_by_torchrun
from neuroplast.methods import FixedWidth
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig, Trainer

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
DEFAULT_OUT = Path("benchmarks/results/distributed.json")
BATCH = 128


MODELS = {"lenet300": (None, 8192), "lenet5": (16384, 4096)}  # training examples: full, quick


def _data(examples: int | None) -> tuple[DataSplits, str]:
    try:
        data = load_dataset("mnist", SHARED_MNIST, seed=0)
        source = "MNIST (../shared/data/mnist)"
    except DataError:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(70000, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (70000,), generator=generator)
        source = "random tensors shaped like MNIST (no MNIST files found)"
        data = DataSplits(name=source, x_train=images[:55000], y_train=labels[:55000],
                          x_val=images[55000:60000], y_val=labels[55000:60000],
                          x_test=images[60000:], y_test=labels[60000:],
                          input_shape=(1, 28, 28), num_classes=10)
    if examples is not None:
        data = DataSplits(name=data.name, x_train=data.x_train[:examples],
                          y_train=data.y_train[:examples], x_val=data.x_val[:2000],
                          y_val=data.y_val[:2000], x_test=data.x_test[:5000],
                          y_test=data.y_test[:5000], input_shape=data.input_shape,
                          num_classes=data.num_classes)
    return data, source


def _step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> float:
    started = time.perf_counter()
    trainer.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(trainer.train_model(x), y).backward()
    trainer.optimizer.step()
    return time.perf_counter() - started


def worker(model_name: str, quick: bool, out: Path) -> None:
    """One process of a set-up: epochs, then steps and resize events; rank 0 writes ``out``."""
    torch.set_num_threads(1)
    context = init_distributed("gloo", timeout_s=600) if launched_by_torchrun() else None
    data, source = _data(MODELS[model_name][1 if quick else 0])
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, data.num_classes)
    epochs = 2 if quick else 3
    trainer = Trainer(model, data, FixedWidth(),
                      TrainConfig(epochs=epochs, batch_size=BATCH, progress=False, threads=1),
                      distributed=context)
    trainer.fit()
    epoch_seconds = [row["seconds"] for row in trainer.history[1:]]  # after the warm-up epoch

    # Steps and resize events, alternating; every rank trains on its share of a global batch.
    generator = torch.Generator().manual_seed(1)
    rank, world = (0, 1) if context is None else (context.rank, context.world_size)
    steps, events, first_steps = [], [], []
    for event in range(5 if quick else 10):
        for _ in range(20):
            rows = torch.randint(0, len(data.y_train), (BATCH,), generator=generator)[rank::world]
            steps.append(_step(trainer, data.x_train[rows], data.y_train[rows]))
        width = layer_widths(trainer.model)["fc1"]
        started = time.perf_counter()
        trainer.prune("fc1", list(range(width - max(1, width // 10))))
        trainer._agree(f"after resize event {event}")  # the check the loop runs after a hook
        trainer.train_model  # noqa: B018 - the re-wrap (under DDP) happens on this access
        events.append(time.perf_counter() - started)
        rows = torch.randint(0, len(data.y_train), (BATCH,), generator=generator)[rank::world]
        first_steps.append(_step(trainer, data.x_train[rows], data.y_train[rows]))
    if rank == 0:
        step = statistics.median(steps)
        out.write_text(json.dumps({
            "data": source,
            "train_examples": len(data.y_train),
            "epoch_seconds": epoch_seconds,
            "examples_per_second": len(data.y_train) / statistics.median(epoch_seconds),
            "median_step_ms": 1000 * step,
            "median_resize_event_ms": 1000 * statistics.median(events),
            "resize_event_in_steps": statistics.median(events) / step,
            "first_step_after_resize_ms": 1000 * statistics.median(first_steps),
            "fc1_width_after_events": layer_widths(trainer.model)["fc1"],
        }))
    if context is not None:
        context.close()


def _run(model: str, setup: str, quick: bool, folder: Path) -> dict:
    out = folder / f"{model}-{setup}.json"
    flags = ["--model", model, "--worker", "--worker-out", str(out)] + (
        ["--quick"] if quick else [])
    if setup == "plain":
        command = [sys.executable, "-m", "benchmarks.distributed", *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", setup.split("-")[1], "-m", "benchmarks.distributed",
                   *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["command"] = " ".join(command[1:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples, 2 epochs")
    parser.add_argument("--model", choices=tuple(MODELS), help="one model only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.quick, args.worker_out)
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for model in [args.model] if args.model else list(MODELS):
            rows = {}
            for setup in ("plain", "ddp-1", "ddp-2"):
                rows[setup] = _run(model, setup, args.quick, Path(folder))
                print(model, setup, json.dumps(rows[setup]), flush=True)
            plain = rows["plain"]["examples_per_second"]
            for row in rows.values():
                row["throughput_vs_plain"] = row["examples_per_second"] / plain
            results[model] = rows
    report = {
        "benchmark": "data-parallel training: 1 vs 2 processes, and a resize event under DDP",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{platform.python_version()}, 1 thread per process, gloo",
        "training": "Adam, global batch 128, FixedWidth; resize = prune 10 % of fc1",
        "quick": args.quick,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("\n| model | set-up | epoch s | examples/s | vs plain | step ms | resize event ms | "
          "event / step |\n|---|---|---|---|---|---|---|---|")
    for model, rows in results.items():
        for name, row in rows.items():
            print(f"| {model} | {name} | {statistics.median(row['epoch_seconds']):.2f} | "
                  f"{row['examples_per_second']:.0f} | {row['throughput_vs_plain']:.2f}x | "
                  f"{row['median_step_ms']:.2f} | {row['median_resize_event_ms']:.1f} | "
                  f"{row['resize_event_in_steps']:.1f} |")


if __name__ == "__main__":
    main()
