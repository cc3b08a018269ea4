"""Overhead of neuroplast's training loop against a minimal hand-written PyTorch loop, and
bf16 mixed precision against float32 in the same loop.

Both loops train the same model (same seed, same data tensors in memory, same batch order rule)
for the same epochs and evaluate validation and test after each epoch; neuroplast also writes
its checkpoint, metrics line and parameter/MAC count every epoch. The three variants
(neuroplast float32, hand-written float32, neuroplast ``--precision bf16-mixed``) are timed
alternately in one process, so background load hits them alike.

    python -m benchmarks.loop [--quick] [--out benchmarks/results/loop.json]

Two readings: the median epoch of 2-epoch runs (what a run pays once, the Trainer's
construction and its first and final checkpoints, included) and the steady-state epoch (the
slope between runs of 1 and 3 epochs), with the once-per-run cost apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from neuroplast.data import load_dataset
from neuroplast.methods import FixedWidth
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig, Trainer

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def hand_written_epochs(model, data, epochs: int, batch_size: int, seed: int) -> None:
    """The loop a user would write: shuffle, step, then evaluate validation and test."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test)):
                for start in range(0, len(y), 1000):
                    logits = model(x[start : start + 1000])
                    F.cross_entropy(logits, y[start : start + 1000])
                    (logits.argmax(1) == y[start : start + 1000]).sum().item()


def neuroplast_epochs(model, data, epochs: int, batch_size: int, seed: int, run_dir: Path,
                      precision: str = "32") -> float:
    """Train with neuroplast's Trainer; returns the last epoch's validation accuracy."""
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=False,
                         precision=precision)
    return Trainer(model, data, FixedWidth(), config, run_dir=run_dir).fit()[-1]["val_accuracy"]


def measure(quick: bool, threads: int) -> dict:
    dataset, data_dir = ("mnist", SHARED_MNIST) if SHARED_MNIST.is_dir() else ("digits", None)
    data = load_dataset(dataset, data_dir, seed=0)
    model_name = "lenet300" if dataset == "mnist" else "mlp"
    # Two intra-op threads on two shared cores make single runs vary 5x (spin-waiting);
    # one thread gives stable numbers for both loops alike.
    torch.set_num_threads(threads)
    epochs, repeats, batch_size = (1, 2, 128) if quick else (2, 9, 128)
    variants = ["neuroplast", "hand_written", "neuroplast_bf16"]
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    accuracy: dict[str, float] = {}  # validation accuracy after the timed runs

    def timed(variant: str, epochs: int, run_dir: Path, keep: bool = False) -> float:
        """Seconds to build the model and train ``epochs`` epochs with ``variant`` (``keep``:
        record its validation accuracy)."""
        torch.manual_seed(0)
        model = build_model(model_name, data.input_shape, data.num_classes)
        started = time.perf_counter()
        if variant == "hand_written":
            hand_written_epochs(model, data, epochs, batch_size, 0)
        else:
            value = neuroplast_epochs(model, data, epochs, batch_size, 0, run_dir,
                                      precision="bf16-mixed" if variant.endswith("bf16") else "32")
            if keep:
                accuracy[variant] = value
        return time.perf_counter() - started

    # The steady-state epoch: the slope between runs of 1 and 3 epochs, which leaves out what
    # a run pays once (building the Trainer, the first checkpoint that measures the cost of
    # writing one, the final one after on_train_end).
    steady: dict[str, dict[int, list[float]]] = {"neuroplast": {1: [], 3: []},
                                                 "hand_written": {1: [], 3: []}}
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed round first: the first run in a process pays one-time costs (lazy
        # imports, the allocator's first growth) that would land on whichever variant is first.
        for variant in variants:
            timed(variant, 1, Path(tmp) / f"warm-{variant}")
        for repeat in range(repeats):
            # Rotate which goes first so drift in background load cancels out.
            for variant in variants[repeat % 3:] + variants[:repeat % 3]:
                run_dir = Path(tmp) / f"{variant}{repeat}"
                times[variant].append(timed(variant, epochs, run_dir, keep=True) / epochs)
        for repeat in range(2 if quick else 4):
            for variant, runs in steady.items():
                for count in runs:
                    run_dir = Path(tmp) / f"{variant}-{count}-{repeat}"
                    runs[count].append(timed(variant, count, run_dir))
    slope = {variant: (statistics.median(runs[3]) - statistics.median(runs[1])) / 2
             for variant, runs in steady.items()}
    once = {variant: statistics.median(runs[1]) - slope[variant]
            for variant, runs in steady.items()}
    bf16 = statistics.median(times["neuroplast_bf16"])
    ours, theirs = statistics.median(times["neuroplast"]), statistics.median(times["hand_written"])
    best_ours, best_theirs = min(times["neuroplast"]), min(times["hand_written"])
    return {
        "benchmark": "loop overhead",
        "command": "python -m benchmarks.loop" + (" --quick" if quick else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "dataset": dataset, "model": model_name, "batch_size": batch_size, "epochs": epochs,
        "repeats": repeats,
        "epoch_seconds": {"neuroplast": ours, "hand_written": theirs, "neuroplast_bf16": bf16},
        "best_epoch_seconds": {"neuroplast": best_ours, "hand_written": best_theirs},
        "all_epoch_seconds": times,
        "overhead": ours / theirs - 1.0,
        "overhead_best": best_ours / best_theirs - 1.0,
        "steady_epoch_seconds": slope,
        "steady_overhead": slope["neuroplast"] / slope["hand_written"] - 1.0,
        "once_per_run_seconds": once,
        "goal": "neuroplast epoch within 5% of the hand-written loop",
        "goal_met": ours / theirs - 1.0 <= 0.05,
        "steady_goal_met": slope["neuroplast"] / slope["hand_written"] - 1.0 <= 0.05,
        "bf16_over_fp32": bf16 / ours,
        "val_accuracy": accuracy,
        "note": "neuroplast's epoch includes its checkpoint, metrics.jsonl line and "
                "parameter/MAC count; both evaluate validation and test every epoch",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke check)")
    parser.add_argument("--out", default="benchmarks/results/loop.json")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    result = measure(args.quick, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    keys = ("epoch_seconds", "best_epoch_seconds", "overhead", "overhead_best", "goal_met",
            "bf16_over_fp32", "val_accuracy")
    print(json.dumps({k: result[k] for k in keys}, indent=1))
    return result


if __name__ == "__main__":
    main()
