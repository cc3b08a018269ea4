"""Benchmark of MetaNet: does a metabolising MLP find its width, and at what cost?

Run ``python -m benchmarks.metanet`` for the quick grid (MNIST, one seed, 20 epochs; about 5
minutes on 2 busy CPU cores with ``--jobs 2``; ``--datasets fashion-mnist`` for the same on
Fashion-MNIST) or ``--full`` for the issue's grid (MNIST,
Fashion-MNIST and CIFAR-10, seeds 0-2, a fixed-width sweep 8..2048). Every experiment is one
``neuroplast train`` run; its row is written to ``benchmarks/results/metanet-<dataset>-<name>-
e<epochs>-s<seed>.json`` as soon as it finishes, and experiments whose file exists are skipped,
so an interrupted grid continues where it stopped. At the end the rows of the chosen grid are
gathered (for every data set done so far) into ``metanet-<grid>.json`` and printed as a Markdown
table (``--table`` only does that, without training), and ``metanet-<grid>-widths.png`` plots
the width of the metabolising runs over the epochs, each proliferation and autophagy marked.

Per run: test accuracy at the final epoch, final width, parameters, neuron-epochs (the sum over
epochs of the hidden width trained in that epoch: the cost measure of the issue), epochs,
wall-clock training time, the seed and the command that reproduces the run.

Experiments per data set:

- ``fixed-<w>``: fixed width ``w`` (quick: 8, 32, 128, 512; full: 8, 16, ..., 2048);
- ``growth-<p>-from8``: proliferation ``p`` only (no autophagy) from 8 (quick: division);
- ``metanet-<p>-from8`` / ``metanet-<p>-from1024``: full MetaNet, each proliferation method;
- ``autophagy-from1024``: autophagy only;
- ``metanet-division-thin-from8`` / ``-from1024``: MetaNet (division) with thinning
  (``--metanet-thinning 0.25``): validation plateaus without growth, while the network has
  neurons to spare or once growth has ended, remove a quarter of the least-expressed neurons
  while the validation error allows.
- ``metanet-division-thin-err-from8`` / ``-from1024``: the same, with growth judged on the
  validation error too (``--metanet-payoff error``): a growth pays off when the error falls by
  more than thinning's tolerance; one that does not is kept, and thinning starts from it.
- ``metanet-division-halve-err-from8`` / ``-from1024``: the same, each thinning halving the
  layer (``--metanet-thinning 0.5``), as each growth doubles it: the width is searched on the
  same factor-2 ladder from either side.

``--activation tanh`` (or sigmoid, gelu) runs the same grid with that hidden activation as
its own grid (``metanet-<dataset>-tanh-...`` rows, ``metanet-quick-tanh.json``), adding
``splitting`` (splitting steepest descent), which needs a smooth activation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroplast.models.mlp import ACTIVATIONS

RESULTS = Path("benchmarks/results")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repo
DATA_DIRS = {
    "mnist": str(SHARED / "mnist"),
    "fashion-mnist": str(SHARED / "fashion-mnist"),
    "cifar10": str(SHARED / "cifar10-jpeg.tar.gz"),
}
PROLIFERATIONS = ("division", "gradient", "random")
THINNING = 0.25  # the metanet-division-thin runs: --metanet-thinning
HALVING = 0.5  # the metanet-division-halve-err runs: each cut halves the layer
BATCH_SIZE = 128


@dataclass(frozen=True)
class Experiment:
    """One training run of the grid."""

    dataset: str
    name: str
    width: int
    epochs: int
    seed: int
    method: str = "fixed"
    options: dict[str, Any] = field(default_factory=dict)
    activation: str = "relu"

    @property
    def key(self) -> str:
        grid = "" if self.activation == "relu" else f"{self.activation}-"
        return f"metanet-{self.dataset}-{grid}{self.name}-e{self.epochs}-s{self.seed}"

    def command(self, data_dir: str, runs_dir: str, threads: int) -> list[str]:
        """The ``neuroplast train`` arguments that reproduce this run."""
        args = ["neuroplast", "train", "--method", self.method, "--model", "mlp",
                "--dataset", self.dataset, "--data-dir", data_dir, "--widths", str(self.width),
                "--epochs", str(self.epochs), "--batch-size", str(BATCH_SIZE),
                "--seed", str(self.seed), "--threads", str(threads), "--no-progress",
                "--out", f"{runs_dir}/{self.key}", "--overwrite"]
        if self.activation != "relu":
            args += ["--activation", self.activation]
        if self.method == "metanet":  # this grid measured the metabolism cycle
            args += ["--metanet-strategy", "metabolism", "--scheduler", "none", "--lr", "1e-3"]
        for option, value in self.options.items():
            flag = f"--metanet-{option.replace('_', '-')}"
            if isinstance(value, bool):
                args.append(flag if value else f"--no-metanet-{option.replace('_', '-')}")
            else:
                args += [flag, str(value)]
        return args


def grid(full: bool, datasets: list[str], seeds: list[int], epochs: int,
         activation: str = "relu") -> list[Experiment]:
    """The experiments of the quick or the full grid (with a smooth activation, splitting too)."""
    widths = [8 * 2**i for i in range(9)] if full else [8, 32, 128, 512]
    proliferations = PROLIFERATIONS + (() if activation == "relu" else ("splitting",))
    growth = proliferations if full else ("division",)
    runs: list[tuple[str, int, str, dict[str, Any]]] = [
        (f"fixed-{width}", width, "fixed", {}) for width in widths]
    runs += [(f"growth-{p}-from8", 8, "metanet", {"proliferation": p, "autophagy": False})
             for p in growth]
    for p in proliferations:
        runs += [(f"metanet-{p}-from{start}", start, "metanet", {"proliferation": p})
                 for start in (8, 1024)]
    runs.append(("autophagy-from1024", 1024, "metanet", {"proliferation": "none"}))
    runs += [(f"metanet-division-thin-from{start}", start, "metanet",
              {"proliferation": "division", "thinning": THINNING}) for start in (8, 1024)]
    runs += [(f"metanet-division-thin-err-from{start}", start, "metanet",
              {"proliferation": "division", "thinning": THINNING, "payoff": "error"})
             for start in (8, 1024)]
    runs += [(f"metanet-division-halve-err-from{start}", start, "metanet",
              {"proliferation": "division", "thinning": HALVING, "payoff": "error"})
             for start in (8, 1024)]
    return [Experiment(dataset, name, width, epochs, seed, method, options, activation)
            for dataset in datasets for seed in seeds for name, width, method, options in runs]


class InterruptedRun(RuntimeError):
    """A run of the grid was stopped by Ctrl-C or SIGTERM before its budget ended."""


# A pool worker keeps the runs already queued for it even when the grid process is gone, and
# before these two checks it trained them unseen: set once one of this process's runs was
# interrupted (the signal reached the workers too: Ctrl-C in a terminal, `pkill -f`), and the
# grid process's id, so that a worker whose parent alone was killed notices too.
_interrupted = False
_grid_pid: int | None = None


def _remember_grid(pid: int) -> None:
    """Pool initializer: the worker's grid process."""
    global _grid_pid
    _grid_pid = pid


def run_experiment(experiment: Experiment, data_dir: str, runs_dir: str, threads: int,
                   out_dir: str) -> dict[str, Any]:
    """Train one experiment through the CLI's own code path and write its JSON row.

    Raises :class:`InterruptedRun`, writing no row, when the run was stopped by a signal, and
    at once for every later experiment handed to the same process.
    """
    global _interrupted
    from neuroplast.cli import build_parser, config_from_options
    from neuroplast.train import run

    if _interrupted:
        raise InterruptedRun(f"{experiment.key} not started: an earlier run in this process "
                             "was interrupted")
    if _grid_pid is not None and os.getppid() != _grid_pid:
        # Nobody will read a result or send more work: leave rather than idle forever.
        print(f"{experiment.key} not started: the grid process is gone", file=sys.stderr)
        os._exit(130)

    args = experiment.command(data_dir, runs_dir, threads)
    parsed = build_parser().parse_args(args[1:])
    options = {k: v for k, v in vars(parsed).items() if k != "command"}
    config = config_from_options(options, shlex.join(args))
    started = time.perf_counter()
    summary = run.train_run(config)
    wall = time.perf_counter() - started
    if str(summary["stopped_early"] or "").startswith("interrupted"):
        # A row's file marks the experiment done: an interrupted run must not leave one.
        _interrupted = True
        raise InterruptedRun(f"{experiment.key} was {summary['stopped_early']}: no row written "
                             "(run the grid again to redo it)")
    rows = [json.loads(line) for line in
            (Path(config.run_dir()) / "metrics.jsonl").read_text().splitlines()]
    widths, width, neuron_epochs = [], experiment.width, 0
    for record in rows:
        neuron_epochs += width  # the width trained during this epoch
        width = record["widths"]["fc1"]
        widths.append(width)
    result = {
        "key": experiment.key,
        "dataset": experiment.dataset,
        "experiment": experiment.name,
        "method": experiment.method,
        "options": experiment.options,
        "activation": experiment.activation,
        "seed": experiment.seed,
        "start_width": experiment.width,
        "final_width": summary["final_widths"][0],
        "test_accuracy": summary["test_accuracy"],
        "val_accuracy": summary["val_accuracy"],
        "params": summary["params"],
        "neuron_epochs": neuron_epochs,
        "epochs": summary["epochs"],
        "planned_epochs": experiment.epochs,
        "train_seconds": round(summary["train_seconds"], 2),
        "wall_seconds": round(wall, 2),
        "stopped_early": summary["stopped_early"],
        "widths": widths,
        "val_losses": [record.get("val_loss") for record in rows],
        "events": [record["events"] for record in rows],
        "command": shlex.join(args),
        "threads": threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "torch_threads": threads,
    }
    target = Path(out_dir) / f"{experiment.key}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(target)  # a half-written row never looks finished
    return result


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of result rows."""
    lines = ["| data | experiment | seed | start | final width | test acc | params | "
             "neuron-epochs | epochs | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['experiment']} | {row['seed']} | {row['start_width']} | "
            f"{row['final_width']} | {row['test_accuracy']:.2%} | {row['params']:,} | "
            f"{row['neuron_epochs']:,} | {row['epochs']} | {row['train_seconds']:.0f} |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> str:
    """Mean over seeds per experiment, and the issue's three goals checked per data set.

    Goals: the final widths from 8 and from 1024 within 25 % of each other (per proliferation
    method); test accuracy within 0.3 points of the best fixed width of the sweep; fewer
    neuron-epochs than the cheapest fixed width whose mean accuracy is at least as high.
    """
    import statistics

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    lines = []
    for dataset in sorted({row["dataset"] for row in rows}):
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["seed"]):
            groups.setdefault(row["experiment"], []).append(row)
        stats = {
            name: {"acc": mean([100 * r["test_accuracy"] for r in group]),
                   "acc_sd": spread([100 * r["test_accuracy"] for r in group]),
                   "width": mean([r["final_width"] for r in group]),
                   "widths": [r["final_width"] for r in group],
                   "ne": mean([r["neuron_epochs"] for r in group]),
                   "params": mean([r["params"] for r in group]), "seeds": len(group)}
            for name, group in groups.items()}
        fixed = {name: s for name, s in stats.items() if name.startswith("fixed-")}
        best_fixed = max(fixed.values(), key=lambda s: s["acc"]) if fixed else None
        lines += [f"#### {dataset}", "",
                  "| experiment | seeds | test acc % (mean ± sd) | final widths | params | "
                  "neuron-epochs | within 0.3 of best fixed | cheapest fixed at that acc "
                  "(neuron-epochs) |",
                  "|---|---|---|---|---|---|---|---|"]
        def order(name: str) -> tuple:  # fixed widths by size, after the resizing runs
            return (1, int(name[6:]), "") if name.startswith("fixed-") else (0, 0, name)

        for name, s in sorted(stats.items(), key=lambda item: order(item[0])):
            if name.startswith("fixed-"):
                goal = cheaper = ""
            else:
                goal = ("yes" if best_fixed and s["acc"] >= best_fixed["acc"] - 0.3
                        else f"no ({best_fixed['acc'] - s['acc']:.2f} below)" if best_fixed
                        else "")
                reaching = [f for f in fixed.values() if f["acc"] >= s["acc"]]
                cheapest = min(reaching, key=lambda f: f["ne"]) if reaching else None
                if cheapest is None:
                    cheaper = "none reaches it"
                else:
                    verdict = "fewer" if s["ne"] < cheapest["ne"] else "MORE"
                    cheaper = f"{cheapest['ne']:,.0f}: {verdict}"
            lines.append(
                f"| {name} | {s['seeds']} | {s['acc']:.2f} ± {s['acc_sd']:.2f} | "
                f"{' / '.join(str(w) for w in s['widths'])} | {s['params']:,.0f} | "
                f"{s['ne']:,.0f} | {goal} | {cheaper} |")
        pairs = []
        for method in PROLIFERATIONS + ("splitting", "division-thin", "division-thin-err",
                                         "division-halve-err"):
            small, large = (stats.get(f"metanet-{method}-from{start}") for start in (8, 1024))
            if small and large:
                ratio = min(small["width"], large["width"]) / max(small["width"], large["width"])
                pairs.append(f"{method}: {small['width']:.0f} vs {large['width']:.0f} "
                             f"({'within' if ratio >= 0.75 else 'NOT within'} 25 %)")
        if best_fixed:
            best = next(name for name, s in fixed.items() if s is best_fixed)
            lines += ["", f"Best fixed width: {best} at {best_fixed['acc']:.2f} %."]
        if pairs:
            lines += [f"Mean final width from 8 vs from 1024: {'; '.join(pairs)}."]
        lines.append("")
    return "\n".join(lines)


def val_loss_table(rows: list[dict[str, Any]], runs_dir: str) -> str:
    """What a run can see: each fixed width's best and final validation loss beside its final
    test accuracy (mean over seeds), from the rows' ``val_losses`` or their run directories.

    It shows whether the validation loss, the signal MetaNet's growth rules read, still rewards
    a width that the final test accuracy rewards.
    """
    import statistics

    lines = []
    for dataset in sorted({row["dataset"] for row in rows}):
        fixed: dict[int, list[tuple[float, int, float, float]]] = {}
        for row in rows:
            if row["dataset"] != dataset or not row["experiment"].startswith("fixed-"):
                continue
            losses = row.get("val_losses")
            metrics = Path(runs_dir) / row["key"] / "metrics.jsonl"
            if not losses and metrics.exists():
                losses = [json.loads(line).get("val_loss")
                          for line in metrics.read_text().splitlines()]
            if not losses or None in losses:
                continue
            best = min(range(len(losses)), key=losses.__getitem__)
            fixed.setdefault(row["start_width"], []).append(
                (losses[best], best + 1, losses[-1], 100 * row["test_accuracy"]))
        if not fixed:
            continue
        lines += [f"#### {dataset}: validation loss of the fixed widths (mean over seeds)", "",
                  "| width | seeds | best val loss | at epoch | final val loss | "
                  "final test acc % |",
                  "|---|---|---|---|---|---|"]
        for width in sorted(fixed):
            columns = list(zip(*fixed[width], strict=True))
            best, epoch, final, accuracy = (statistics.fmean(c) for c in columns)
            lines.append(f"| {width} | {len(fixed[width])} | {best:.4f} | {epoch:.0f} | "
                         f"{final:.4f} | {accuracy:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_widths(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Width over epochs of the resizing runs, proliferation (^) and autophagy (v) marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    resizing = [row for row in rows if row["method"] == "metanet"]
    datasets = sorted({row["dataset"] for row in resizing})
    if not datasets:
        return None
    figure = Figure(figsize=(9, 4 * len(datasets)), layout="constrained")
    FigureCanvasAgg(figure)
    for index, dataset in enumerate(datasets, start=1):
        axis = figure.add_subplot(len(datasets), 1, index)
        for row in (r for r in resizing if r["dataset"] == dataset):
            epochs = list(range(len(row["widths"]) + 1))
            widths = [row["start_width"], *row["widths"]]
            (line,) = axis.plot(epochs, widths, drawstyle="steps-post", linewidth=1.4,
                                label=f"{row['experiment']} s{row['seed']}")
            for epoch, events in enumerate(row["events"], start=1):
                for event, marker in (("proliferation", "^"), ("autophagy", "v")):
                    if any(text.startswith(event) for text in events):
                        axis.plot([epoch], [row["widths"][epoch - 1]], marker=marker,
                                  color=line.get_color(), markersize=6)
        axis.set_yscale("log", base=2)
        axis.set_title(f"MetaNet on {dataset}: hidden width (^ proliferation, v autophagy)")
        axis.set_xlabel("epoch")
        axis.set_ylabel("hidden units")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="x-small", ncol=2)
    figure.savefig(path, dpi=110)
    return path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the issue's grid: 3 data sets, seeds 0-2, widths 8..2048")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated (default: mnist; full: mnist,fashion-mnist,cifar10)")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0; full 0,1,2)")
    parser.add_argument("--epochs", type=int, default=20, help="epoch budget per run")
    parser.add_argument("--only", default=None,
                        help="run only experiments whose name contains one of these "
                             "comma-separated texts (e.g. fixed-512,metanet-division)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--activation", default="relu", choices=ACTIVATIONS,
                        help="hidden activation (default relu); another one (tanh, sigmoid, "
                             "gelu) is its own grid and adds MetaNet's splitting")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the JSON rows go")
    parser.add_argument("--runs-dir", default="/tmp/neuroplast-bench-metanet",
                        help="run directories (checkpoints, reports)")
    parser.add_argument("--table", action="store_true", help="only print the existing rows")
    parser.add_argument("--val-loss", action="store_true",
                        help="also write metanet-<grid>-val-loss.md: each fixed width's best "
                             "and final validation loss (needs the run directories of rows "
                             "written before val_losses were recorded)")
    for dataset, path in DATA_DIRS.items():
        parser.add_argument(f"--{dataset}-dir", default=path, help=f"{dataset} data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    default_sets = "mnist,fashion-mnist,cifar10" if args.full else "mnist"
    datasets = (args.datasets or default_sets).split(",")
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.full else "0")).split(",")]
    only = None if args.only is None else [text for text in args.only.split(",") if text]

    def chosen(experiment: Experiment) -> bool:
        return only is None or any(text in experiment.name for text in only)

    experiments = [e for e in grid(args.full, datasets, seeds, args.epochs, args.activation)
                   if chosen(e)]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [e for e in experiments if not (out_dir / f"{e.key}.json").exists()]
    if not args.table:
        print(f"{len(experiments)} experiments, {len(experiments) - len(todo)} done, "
              f"{len(todo)} to run", flush=True)
        dirs = {d: getattr(args, f"{d.replace('-', '_')}_dir") for d in DATA_DIRS}
        # The biggest runs first, so parallel jobs finish together.
        todo.sort(key=lambda e: -e.width)
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), initializer=_remember_grid,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_experiment, e, dirs[e.dataset], args.runs_dir,
                                   args.threads, str(out_dir)): e for e in todo}
            for future, experiment in futures.items():
                try:
                    row = future.result()
                except InterruptedRun as stopped:
                    print(f"stopped: {stopped}", file=sys.stderr, flush=True)
                    pool.shutdown(cancel_futures=True)
                    return 130
                print(f"{experiment.key}: test {row['test_accuracy']:.2%}, width "
                      f"{row['start_width']} -> {row['final_width']}, "
                      f"{row['neuron_epochs']:,} neuron-epochs, {row['train_seconds']:.0f}s",
                      flush=True)
    # The summary covers every data set of the grid done so far, whichever ran this time.
    done = [e for e in grid(args.full, list(DATA_DIRS), seeds, args.epochs, args.activation)
            if chosen(e) and (out_dir / f"{e.key}.json").exists()]
    rows = [json.loads((out_dir / f"{e.key}.json").read_text()) for e in done]
    # Another epoch budget is another grid: its own summary beside the 20-epoch one.
    grid_name = "full" if args.full else "quick"
    if args.epochs != 20:
        grid_name += f"-e{args.epochs}"
    if args.activation != "relu":
        grid_name += f"-{args.activation}"
    summary = {"grid": grid_name, "epochs": args.epochs, "batch_size": BATCH_SIZE,
               "python": sys.version.split()[0], "rows": rows}
    (out_dir / f"metanet-{grid_name}.json").write_text(json.dumps(summary, indent=1))
    plot_widths(rows, out_dir / f"metanet-{grid_name}-widths.png")
    text = summarise(rows)
    (out_dir / f"metanet-{grid_name}-summary.md").write_text(text)
    if args.val_loss:
        losses = val_loss_table(rows, args.runs_dir)
        (out_dir / f"metanet-{grid_name}-val-loss.md").write_text(losses)
        text += "\n" + losses
    print(table(rows))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
