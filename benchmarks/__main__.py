"""The side-by-side benchmark: every method on the same work, one JSON per run, one table.

    python -m benchmarks quick              # minutes on 2 CPU cores: Moons and digits, 3 seeds
    python -m benchmarks full               # hours (run it in the background; it resumes)
    python -m benchmarks full --only mnist-lenet300 --seeds 0
    python -m benchmarks full --methods fixed npn   # rerun rows after deleting their JSON
    python -m benchmarks quick --table      # rebuild the table and plots from the JSON files
    python -m benchmarks panel --help       # the task panel: sufficient widths found from both
                                            # sides (benchmarks/panel.py)

Each run is a ``neuroplast train`` command (recorded with its numbers, so a row reproduces by
pasting it) and leaves ``benchmarks/results/<suite>/<task>--<method>--s<seed>.json`` with the
final epoch's test error, widths, parameters, MACs, wall time and mean epoch time. A run whose
JSON exists is skipped, so an interrupted suite continues where it stopped. The table
(``benchmarks/results/<suite>/table.md``) gives per task and method the mean and spread over
seeds, the epoch time relative to ``fixed`` (plain training of the starting network) from
the same suite run, and whether the method's mean is on the task's accuracy/size frontier (no
other method's mean is as good on both parameters and error and better on one);
``frontier.png`` plots test error against parameters per task (every run, and the frontier
through the methods' means), ``size.png`` each method's compact parameter count over the
epochs (first seed).

Peers (Torch-Pruning, GroMo) run from their own packages in ``benchmarks/peers.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")
RUNS = Path("runs/bench")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Task:
    """One piece of work every method is run on: data, model, starting widths, budget."""

    name: str
    base: list[str]  # neuroplast train arguments shared by every method
    methods: dict[str, list[str]] = field(default_factory=dict)  # method label -> arguments


def _tasks(suite: str) -> list[Task]:
    mnist, fashion = str(SHARED / "mnist"), str(SHARED / "fashion-mnist")
    cifar = str(SHARED / "cifar10-jpeg.tar.gz")
    adam = ["--optimizer", "adam", "--lr", "1e-3"]
    if suite == "quick":
        moons = Task("moons", ["--dataset", "moons", "--model", "mlp", "--widths", "80",
                               "--epochs", "60", "--batch-size", "32", *adam])
        digits = Task("digits", ["--dataset", "digits", "--model", "mlp", "--widths", "64",
                                 "--epochs", "20", "--batch-size", "32", "--lr", "0.01"])
        tasks = [moons, digits]
        lambdas = {"moons": "4.289e-4,1.7157e-2", "digits": "2e-4"}
    else:
        moons = Task("moons", ["--dataset", "moons", "--model", "mlp", "--widths", "80",
                               "--epochs", "400", "--batch-size", "32", *adam])
        lenet300 = Task("mnist-lenet300", ["--dataset", "mnist", "--data-dir", mnist, "--model",
                                           "lenet300", "--epochs", "20", "--batch-size", "128",
                                           *adam])
        lenet5 = Task("mnist-lenet5", ["--dataset", "mnist", "--data-dir", mnist, "--model",
                                       "lenet5", "--epochs", "10", "--batch-size", "128", *adam])
        fashion_mlp = Task("fashion-mlp", ["--dataset", "fashion-mnist", "--data-dir", fashion,
                                           "--model", "mlp", "--widths", "256", "--epochs", "20",
                                           "--batch-size", "128", *adam])
        cifar_mlp = Task("cifar10-mlp", ["--dataset", "cifar10", "--data-dir", cifar, "--model",
                                         "mlp", "--widths", "512", "--epochs", "20",
                                         "--batch-size", "128", *adam])
        tasks = [moons, lenet300, lenet5, fashion_mlp, cifar_mlp]
        lambdas = {"moons": "4.289e-5,1.7157e-3", "mnist-lenet300": "1.6667e-6",
                   "mnist-lenet5": "1.6667e-6", "fashion-mlp": "1.6667e-6",
                   "cifar10-mlp": "1.6667e-6"}
    for task in tasks:
        lam = lambdas[task.name]
        # quick: phi at the task's own rate, as before NPN's default gate rate existed
        run_lr = task.base[task.base.index("--lr") + 1] if "--lr" in task.base else "1e-3"
        gate_lr = ["--npn-gate-lr", "1e-2" if suite == "full" else run_lr]
        task.methods = {
            "fixed": ["--method", "fixed"],
            # the lambdas as given (the suite's rows predate the adaptive price)
            "npn": ["--method", "npn", "--npn-input-gates", "--npn-lambdas", lam,
                    "--npn-lambda-unit", "weight", "--npn-k", "7", "--npn-stages", "0.2,0.7",
                    "--no-npn-adaptive", *gate_lr],
            "l0hc": ["--method", "l0hc", "--l0hc-lambdas", lam,
                     *(["--l0hc-gate-lr", "1e-2"] if suite == "full" else [])],
            "magnitude": ["--method", "magnitude", "--magnitude-keep", "0.3"],
            "apoz": ["--method", "apoz", "--apoz-keep", "0.3"],
        }
        if task.name != "mnist-lenet5":  # MetaNet and net2net grow MLPs' hidden layers
            # the scheduler every other method of the suite trains with, not MetaNet's own
            task.methods["metanet"] = ["--method", "metanet", "--metanet-strategy", "metabolism",
                                       "--metanet-layers", "all",
                                       "--scheduler", "none"]
            task.methods["net2net"] = ["--method", "net2net", "--net2net-factor", "2",
                                       "--net2net-events", "2"]
    return tasks


def _small_start(task: Task) -> list[str]:
    """Growth methods start from 8 units per hidden layer (the shallow 'too small' start)."""
    base = list(task.base)
    if "--widths" in base:
        index = base.index("--widths") + 1
        base[index] = ",".join("8" for _ in base[index].split(","))
    elif "lenet300" in base:
        base[base.index("lenet300")] = "mlp"
        base += ["--widths", "8,8"]
    return base


def train(arguments: list[str], threads: int, check: bool = True) -> tuple[int, str, float]:
    """Run ``neuroplast train ARGUMENTS`` on ``threads`` CPU threads in a new process.

    Returns the exit status, its error output and the wall seconds. ``check``: a failure
    raises (its error output shown as it comes); otherwise the error output is captured and
    returned, for the caller to record.
    """
    executable = str(Path(sys.executable).with_name("neuroplast"))
    started = time.perf_counter()
    process = subprocess.run([executable, "train", *arguments], check=check,
                             stdout=subprocess.DEVNULL, stderr=None if check else subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return process.returncode, process.stderr or "", time.perf_counter() - started


def _collapsed(out: Path) -> bool:
    """Whether the run in ``out`` was stopped by neuroplast's collapse guard."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (summary.get("stopped_early") or "").startswith("collapsed")


def run_one(suite: str, task: Task, label: str, seed: int, threads: int) -> dict[str, Any]:
    """Train one (task, method, seed) with the neuroplast command; return its record."""
    out = RUNS / suite / f"{task.name}--{label}--s{seed}"
    base = _small_start(task) if label in ("metanet", "net2net") else task.base
    arguments = [*base, *task.methods[label], "--seed", str(seed), "--threads", str(threads),
                 "--out", str(out), "--overwrite", "--no-progress"]
    status, error, wall = train(arguments, threads, check=False)
    if status != 0 and not _collapsed(out):  # a collapse is a result; anything else is not
        raise RuntimeError(f"neuroplast train {shlex.join(arguments)} failed:\n{error[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {
        "suite": suite, "task": task.name, "method": label, "seed": seed,
        "command": "neuroplast train " + shlex.join(arguments),
        "epochs": summary["epochs"], "stopped_early": summary["stopped_early"],
        "test_accuracy": last["test_accuracy"],
        "test_error_percent": 100 * (1 - last["test_accuracy"]),
        "initial_widths": dict(zip(summary["layer_names"], summary["initial_widths"],
                                   strict=True)),
        "final_widths": last["widths"],
        "params": last["params"], "macs": last["macs"],
        "nonzero_weights": last["method"].get("nonzero_weights"),
        "train_seconds": summary["train_seconds"], "wall_seconds": wall,
        "epoch_seconds": statistics.mean(row["seconds"] for row in rows),
        "width_curve": [sum(row["widths"].values()) for row in rows],
        "params_curve": [row["params"] for row in rows],
    }


def run_suite(suite: str, seeds: list[int], only: str | None, threads: int,
              methods: list[str] | None = None) -> None:
    folder = RESULTS / suite
    folder.mkdir(parents=True, exist_ok=True)
    for task in _tasks(suite):
        if only and not task.name.startswith(only):
            continue
        for seed in seeds:
            for label in task.methods:
                if methods and label not in methods:
                    continue
                path = folder / f"{task.name}--{label}--s{seed}.json"
                if path.exists():
                    continue
                record = run_one(suite, task, label, seed, threads)
                path.write_text(json.dumps(record, indent=1))
                print(f"{task.name} {label} s{seed}: error {record['test_error_percent']:.2f} % "
                      f"widths {record['final_widths']} params {record['params']:,} "
                      f"{record['wall_seconds']:.0f}s", flush=True)


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def write_table(suite: str) -> str:
    """Markdown table (mean ± std over seeds) and frontier plot from the suite's JSON files."""
    folder = RESULTS / suite
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*--*--s*.json"))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["task"], record["method"]), []).append(record)
    lines = ["| task | method | seeds | test error % | final widths | params | MACs | "
             "train s | epoch time vs fixed | on the frontier | command (seed 0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    on_frontier = set()
    for task in {task for task, _ in groups}:
        means = [(statistics.mean(r["params"] for r in rows),
                  statistics.mean(r["test_error_percent"] for r in rows), method)
                 for (name, method), rows in groups.items() if name == task]
        on_frontier |= {(task, point[2]) for point in frontier(means)}
    for (task, method), rows in groups.items():
        fixed = groups.get((task, "fixed"))
        ratio = (statistics.mean(r["epoch_seconds"] for r in rows)
                 / statistics.mean(r["epoch_seconds"] for r in fixed)) if fixed else float("nan")
        widths = " / ".join("-".join(str(w) for w in r["final_widths"].values()) for r in rows)
        command = min(rows, key=lambda r: r["seed"])["command"]
        lines.append(
            f"| {task} | {method} | {len(rows)} | "
            f"{_spread([r['test_error_percent'] for r in rows])} | {widths} | "
            f"{statistics.mean(r['params'] for r in rows):,.0f} | "
            f"{statistics.mean(r['macs'] for r in rows):,.0f} | "
            f"{statistics.mean(r['train_seconds'] for r in rows):.1f} | {ratio:.2f}x | "
            f"{'yes' if (task, method) in on_frontier else 'no'} | `{command}` |")
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    _plot_per_task(groups, folder / "frontier.png", _draw_frontier)
    _plot_per_task(groups, folder / "size.png", _draw_size)
    return table


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The (params, error, label) points on the accuracy/size frontier, fewest params first.

    A point is on it when no other point is as good on both (no more parameters and no higher
    error) and better on one; points that tie exactly are all on it.
    """
    best: list[tuple[float, float, str]] = []
    for point in sorted(points, key=lambda p: (p[0], p[1])):
        if not best or point[1] < best[-1][1] or point[:2] == best[-1][:2]:
            best.append(point)
    return best


def _plot_per_task(groups: dict[tuple[str, str], list[dict]], path: Path, draw) -> None:
    """One panel per task, ``draw(axis, {method: rows})`` filling each; nothing without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return
    tasks = sorted({task for task, _ in groups})
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        draw(axis, {method: rows for (name, method), rows in sorted(groups.items())
                    if name == task})
        axis.set_title(task)
        if axis.lines or axis.collections:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_frontier(axis, methods: dict[str, list[dict]]) -> None:
    means = []
    for method, rows in methods.items():
        axis.scatter([r["params"] for r in rows], [r["test_error_percent"] for r in rows],
                     label=method, s=18)
        means.append((statistics.mean(r["params"] for r in rows),
                      statistics.mean(r["test_error_percent"] for r in rows), method))
    line = frontier(means)
    axis.step([p[0] for p in line], [p[1] for p in line], where="post", color="grey",
              linewidth=1, zorder=0, label="frontier (means)")
    axis.set_xscale("log")
    axis.set_xlabel("parameters (compact model)")
    axis.set_ylabel("test error % (final epoch)")


def _draw_size(axis, methods: dict[str, list[dict]]) -> None:
    for method, rows in methods.items():
        first = min(rows, key=lambda r: r["seed"])
        if "params_curve" in first:
            curve = first["params_curve"]
            axis.plot(range(1, len(curve) + 1), curve, label=method)
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("parameters (compact model), first seed")


def main() -> None:
    if sys.argv[1:2] == ["panel"]:  # the task panel has its own options (benchmarks/panel.py)
        from .panel import main as panel

        panel(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("suite", choices=("quick", "full"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", help="tasks whose name starts with this")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)",
                        choices=("fixed", "npn", "l0hc", "magnitude", "apoz", "metanet", "net2net"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="only rebuild the table and plot")
    args = parser.parse_args()
    if not args.table:
        run_suite(args.suite, args.seeds, args.only, args.threads, args.methods)
    print(write_table(args.suite))


if __name__ == "__main__":
    main()
