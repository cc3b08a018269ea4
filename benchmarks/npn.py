"""Quick CPU benchmark of NPN: real runs of the CPU-sized recipes, and the cost of ARM.

Run ``python -m benchmarks.npn`` (about 12 minutes on 2 shared cores) or ``--only moons`` for
the Moons runs alone (about 3 minutes; a partial run replaces its rows in an existing result
file). It writes ``benchmarks/results/npn-quick.json`` and prints a Markdown table. Every run is
the ``neuroplast train`` command recorded next to its numbers, so a row is reproduced by pasting
its command.

1. **Runs**: the CPU-sized recipes (``neuroplast/recipes/npn-*-cpu.toml``): Moons prune and
   expand (seeds 0, 1, 2; expand also with ``--npn-implementation physical``; prune also with
   five and ten times the reference's lambdas), LeNet-300-100 prune and LeNet-5-Caffe prune on
   MNIST (seed 0). For each: the final epoch's validation and test accuracy, the per-layer
   architecture (units with ``pi >= 0.5``), the compact model's parameters and nonzero
   weights, the run time, and the mean epoch time per stage (stage 1 is plain training of
   the starting network, so stage 2 / stage 1 is the cost of ARM within one run).
2. **ARM cost per step**: the median time of one NPN training step with stochastic gates (ARM:
   two forward passes, one backward) against one plain step of the same starting network, for
   LeNet-300-100 and LeNet-5 at batch 128, timed interleaved.

``--full-moons`` runs the full Moons recipes instead (``neuroplast/recipes/npn-moons-*.toml``,
2000 epochs: prune with the reference's lambdas and with five times them, expand with mask and
physical units; seeds 0, 1, 2; 37 minutes on one shared core), writes
``benchmarks/results/npn-moons-full.json`` and copies each seed-0 run's decision-boundary plot
next to it (``npn-moons-full-<run>-boundary.png``).

Thread count: ``--threads`` (default 1; on a machine shared by several jobs, extra intra-op
threads mostly spin) is applied to every run through ``OMP_NUM_THREADS`` and recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("benchmarks/results/npn-quick.json")
FULL_MOONS_OUT = Path("benchmarks/results/npn-moons-full.json")
RUNS_DIR = Path("runs/bench-npn")
MNIST = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
RECIPES = "neuroplast/recipes"  # the installed recipes, relative to the checkout


def _jobs(only: str | None) -> list[tuple[str, list[str]]]:
    """(name, extra CLI arguments) of every run."""
    jobs: list[tuple[str, list[str]]] = []
    for seed in (0, 1, 2):
        jobs.append((f"moons-sparse-s{seed}", ["--config", f"{RECIPES}/npn-moons-sparse-cpu.toml",
                                                "--seed", str(seed)]))
        jobs.append((f"moons-expand-s{seed}", ["--config", f"{RECIPES}/npn-moons-expand-cpu.toml",
                                                "--seed", str(seed)]))
        jobs.append((f"moons-expand-physical-s{seed}", [
            "--config", f"{RECIPES}/npn-moons-expand-cpu.toml", "--seed", str(seed),
            "--npn-implementation", "physical"]))
        # The reference's lambdas prune little in 200 plasticity epochs; stronger ones do.
        for factor in (5, 10):
            lambdas = f"{4.289e-5 * factor:.4g},{1.7157e-3 * factor:.5g}"
            jobs.append((f"moons-sparse-lambda{factor}x-s{seed}", [
                "--config", f"{RECIPES}/npn-moons-sparse-cpu.toml", "--seed", str(seed),
                "--npn-lambdas", lambdas]))
    for name, recipe in (("lenet300-mnist-prune-s0", "npn-lenet300-mnist-prune-cpu.toml"),
                         ("lenet5-mnist-sparse-s0", "npn-lenet5-mnist-sparse-cpu.toml")):
        jobs.append((name, ["--config", f"{RECIPES}/{recipe}", "--data-dir", MNIST, "--seed", "0"]))
    if only:
        jobs = [job for job in jobs if job[0].startswith(only)]
    return jobs


def _full_moons_jobs() -> list[tuple[str, list[str]]]:
    """The full 2000-epoch Moons recipes, as the issue's Moons rows: prune and expand."""
    lambdas_5x = f"{4.289e-5 * 5:.4g},{1.7157e-3 * 5:.5g}"
    variants = {
        "sparse": ["--config", f"{RECIPES}/npn-moons-sparse.toml"],
        "sparse-lambda5x": ["--config", f"{RECIPES}/npn-moons-sparse.toml",
                            "--npn-lambdas", lambdas_5x],
        "expand": ["--config", f"{RECIPES}/npn-moons-expand.toml"],
        "expand-physical": ["--config", f"{RECIPES}/npn-moons-expand.toml",
                            "--npn-implementation", "physical"],
    }
    return [(f"moons-full-{variant}-s{seed}", [*arguments, "--seed", str(seed)])
            for seed in (0, 1, 2) for variant, arguments in variants.items()]


def _stage_seconds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean epoch time of each stage (1: k = inf before any finite k, 2: finite k, 3: after)."""
    stages: dict[str, list[float]] = {"1": [], "2": [], "3": []}
    seen_finite = False
    for row in rows:
        k = row["method"]["k"]
        finite = k != float("inf")
        seen_finite = seen_finite or finite
        stage = "2" if finite else ("3" if seen_finite else "1")
        stages[stage].append(row["seconds"])
    return {stage: statistics.mean(times) for stage, times in stages.items() if times}


def run_job(name: str, arguments: list[str], threads: int) -> dict[str, Any]:
    """Train one run with the ``neuroplast`` command and collect its final-epoch numbers."""
    out = RUNS_DIR / name
    command = ["neuroplast", "train", *arguments, "--out", str(out), "--overwrite",
               "--no-progress"]
    executable = str(Path(sys.executable).with_name("neuroplast"))
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([executable, *command[1:]], check=True, env=environment,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    stages = _stage_seconds(rows)
    events = [event for row in rows for event in row["events"]]
    return {
        "name": name,
        "command": f"OMP_NUM_THREADS={threads} " + shlex.join(command),
        "seed": summary["seed"],
        "epochs": summary["epochs"],
        "val_accuracy": last["val_accuracy"],
        "test_accuracy": last["test_accuracy"],
        "test_error_percent": round(100 * (1 - last["test_accuracy"]), 2),
        "initial_widths": dict(zip(summary["layer_names"], summary["initial_widths"],
                                   strict=True)),
        "final_widths": last["widths"],
        "architecture": "-".join(str(width) for width in last["widths"].values()),
        "params_compact": last["params"],
        "nonzero_weights": last["method"]["nonzero_weights"],
        "train_seconds": round(summary["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "epoch_seconds_by_stage": {k: round(v, 4) for k, v in stages.items()},
        "stage2_over_stage1": round(stages["2"] / stages["1"], 2)
        if "1" in stages and "2" in stages else None,
        "woken_units": sum("woke" in event for event in events),
        "physical_resizes": sum(event.startswith(("grew", "pruned")) for event in events),
    }


def time_steps(threads: int, repetitions: int = 40) -> list[dict[str, Any]]:
    """Median seconds of one ARM training step against one plain step, interleaved.

    ``npn_full_antithetic`` is the same ARM step with the antithetic pass recomputing the whole
    first gated layer (``arm_loss(antithetic_delta=False)``), to show what the delta saves.
    """
    import functools
    from unittest import mock

    import torch

    import neuroplast.methods.npn as npn_module
    from neuroplast.data import load_dataset
    from neuroplast.gates.npn import arm_loss
    from neuroplast.methods import FixedWidth
    from neuroplast.methods.npn import NPN
    from neuroplast.models import build_model
    from neuroplast.train.loop import TrainConfig, Trainer

    torch.set_num_threads(threads)
    data = load_dataset("mnist", MNIST)
    x, y = data.x_train[:128], data.y_train[:128]
    full_pass = functools.partial(arm_loss, antithetic_delta=False)
    variants = {"plain": FixedWidth, "npn": lambda: NPN(k_schedule="1:7"),
                "npn_full_antithetic": lambda: NPN(k_schedule="1:7")}
    results = []
    for model_name in ("lenet300", "lenet5"):
        trainers = {}
        for label, make in variants.items():
            torch.manual_seed(0)
            model = build_model(model_name, (1, 28, 28), 10)
            method = make()
            trainer = Trainer(model, data, method, TrainConfig(epochs=1, progress=False))
            method.on_train_begin(trainer)
            trainers[label] = trainer
        samples: dict[str, list[float]] = {label: [] for label in variants}
        for repetition in range(repetitions + 5):
            labels = list(variants)
            order = labels if repetition % 2 else labels[::-1]
            for label in order:
                trainer = trainers[label]
                patch = (mock.patch.object(npn_module, "arm_loss", full_pass)
                         if label == "npn_full_antithetic" else contextlib.nullcontext())
                with patch:
                    started = time.perf_counter()
                    trainer.optimizer.zero_grad(set_to_none=True)
                    loss, _ = trainer.method.training_loss(trainer, x, y)
                    loss.backward()
                    trainer.method.after_backward(trainer)
                    trainer.optimizer.step()
                    elapsed = time.perf_counter() - started
                if repetition >= 5:  # warm-up
                    samples[label].append(elapsed)
        plain, npn, full = (statistics.median(samples[label]) for label in variants)
        results.append({"model": model_name, "batch": 128, "threads": threads,
                        "plain_step_ms": round(1000 * plain, 2),
                        "npn_step_ms": round(1000 * npn, 2),
                        "ratio": round(npn / plain, 2),
                        "npn_full_antithetic_step_ms": round(1000 * full, 2),
                        "full_antithetic_ratio": round(full / plain, 2)})
    return results


def _table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | val acc | test acc | architecture | params (compact) | nonzero weights | "
             "time (s) | stage 2 / stage 1 epoch |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(
            f"| {run['name']} | {run['val_accuracy']:.3f} | {run['test_accuracy']:.4f} | "
            f"{run['architecture']} | {run['params_compact']:,} | {run['nonzero_weights']:,} | "
            f"{run['train_seconds']} | {run['stage2_over_stage1']} |")
    return "\n".join(lines)


def _keep_boundary_plot(name: str, out: Path) -> None:
    """Copy a run's decision-boundary plot next to the result file (runs/ is not committed)."""
    plot = RUNS_DIR / name / "decision_boundary.png"
    if plot.exists():
        target = out.with_name(f"{out.stem}-{name.removeprefix('moons-full-')}-boundary.png")
        target.write_bytes(plot.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="run only jobs whose name starts so")
    parser.add_argument("--no-step-timing", action="store_true")
    parser.add_argument("--full-moons", action="store_true",
                        help="the full 2000-epoch Moons recipes (3 seeds) instead, with "
                             "decision-boundary plots; no step timing")
    args = parser.parse_args(argv)
    if args.full_moons and args.out == DEFAULT_OUT:
        args.out = FULL_MOONS_OUT
    started = time.perf_counter()
    runs = []
    jobs = _full_moons_jobs() if args.full_moons else _jobs(args.only)
    if args.full_moons and args.only:
        jobs = [job for job in jobs if job[0].startswith(args.only)]
    for name, arguments in jobs:
        print(f"running {name} ...", flush=True)
        runs.append(run_job(name, arguments, args.threads))
        if args.full_moons and name.endswith("-s0"):
            _keep_boundary_plot(name, args.out)
    steps = [] if args.no_step_timing or args.full_moons else time_steps(args.threads)
    result = {
        "benchmark": "npn-moons-full" if args.full_moons else "npn-quick",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": args.threads, "load_average_at_end": os.getloadavg()},
        "total_seconds": None,
        "runs": runs,
        "step_cost": steps,
    }
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.only and args.out.exists():
        # A partial rerun replaces its own rows in the existing file and keeps the others.
        previous = json.loads(args.out.read_text())
        fresh = {run["name"] for run in runs}
        result["runs"] = [r for r in previous["runs"] if r["name"] not in fresh] + runs
        result["step_cost"] = steps or previous.get("step_cost", [])
        result["total_seconds"] = previous.get("total_seconds")
        result["partial_reruns"] = [*previous.get("partial_reruns", []),
                                    {"only": args.only, "date": result["date"],
                                     "seconds": round(time.perf_counter() - started, 1)}]
        runs = result["runs"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(_table(runs))
    for row in steps:
        print(f"{row['model']}: plain step {row['plain_step_ms']} ms, NPN (ARM) step "
              f"{row['npn_step_ms']} ms, ratio {row['ratio']} (whole antithetic pass: "
              f"{row['npn_full_antithetic_step_ms']} ms, {row['full_antithetic_ratio']})")
    print(f"wrote {args.out} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
