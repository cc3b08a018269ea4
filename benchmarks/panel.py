"""The task panel: do self-sizing methods find a task's sufficient width from both sides?

    python -m benchmarks panel                      # the whole panel: hours (it resumes)
    python -m benchmarks panel --only moons teacher-d10-h4-c2 --seeds 0
    python -m benchmarks panel --methods fixed npn-prune metanet
    python -m benchmarks panel --table              # rebuild table.md and widths.png only
    python -m benchmarks panel --smoke --results /tmp/panel   # 2 tiny tasks, seconds

Per task (:func:`_tasks`, with each one's epoch budget and estimated time: eight generated
teacher-student tasks, ``--dataset teacher``, plus moons, digits, one-hidden-layer MLPs on MNIST,
Fashion-MNIST and CIFAR-10, and LeNet-5 on MNIST):

1. **The fixed-width reference.** ``--method fixed`` at widths 2, 4, 8, ... up to the task's
   ``max_width`` (LeNet-5: its fc1 width, the convolutions at 20 and 50 channels), 3 seeds, the
   task's epoch budget. Each run is read at its validation-selected epoch (the epoch with the
   highest validation accuracy, the first of ties: early stopping on the validation split);
   its test accuracy is the one at that epoch. The **best width** is the one with the highest
   mean validation accuracy over seeds, the **sufficient width** the smallest width whose mean
   validation accuracy is within the tolerance of the best's. The tolerance on a set of ``n``
   examples is 0.5 points or one standard error of an accuracy ``p`` measured there,
   ``sqrt(p (1 - p) / n)``, whichever is larger. Both widths are chosen on validation data;
   the test set is read once per run, for the reported accuracies.
2. **Every self-sizing method** (:data:`METHODS`) with its defaults, no method option:
   ``neuroplast train --method M --model mlp --widths W --dataset D [--data-dir ...] --epochs E
   --batch-size B`` (LeNet-5: ``--model lenet5 --widths 20,50,W``), started too small
   (``--widths 8``) and too large (``--widths 1024``) where the method can move that way
   (pruning-only baselines start large, growing-only small), 3 seeds. It is read at its final
   epoch: test accuracy, hidden width (the last entry of summary.json's ``final_widths``: the
   last hidden layer's units, counted as ``units it outputs`` or, for gated methods, as the
   ``input features`` of the output layer) and ``train_seconds``.

Each run leaves ``<results>/<task>--<run>--s<seed>.json`` (``<run>`` is ``fixed-w<W>`` or
``<method>-from<W>``), holding the ``neuroplast train`` command and its numbers (or the error
of a command that failed before training: delete its JSON to retry it); a run whose JSON exists
is skipped, so the panel resumes where it stopped. Tasks are independent: two processes with
different ``--only`` use both cores; the whole panel takes about 6.5 hours on one core.

``table.md`` gives per (task, method, start): the mean final width, the sufficient width, their
ratio and whether it is within x2; the ratio of the two starts' widths and whether it is within
x1.5; the test accuracy against the best fixed width's (points, and whether within the test
tolerance); the training time against one fixed run at the sweep width nearest the final width,
and whether it is at most 2x; then per method and start on how many tasks each goal is met.
``widths.png`` plots final against sufficient width, log-log.

``--smoke`` runs two tiny tasks (a 600-example teacher and moons) at two widths, one seed, two
epochs, in this process (no interpreter start per run): a check of the machinery, in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shlex
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.__main__ import RESULTS, RUNS, SHARED, train
from benchmarks.core import write_json_atomic
from neuroplast.data.base import DEFAULT_HOLDOUT_FRACTION, val_size
from neuroplast.data.teacher import TeacherSpec

STARTS = {"small": 8, "large": 1024}
TOLERANCE_POINTS = 0.005  # 0.5 points of accuracy: the least tolerance
WIDTH_FACTOR, STARTS_FACTOR, TIME_FACTOR = 2.0, 1.5, 2.0  # the goals


@dataclass(frozen=True)
class Method:
    """A self-sizing method as the panel runs it: its arguments, starts and models."""

    arguments: tuple[str, ...]
    starts: tuple[str, ...] = ("small", "large")
    models: tuple[str, ...] = ("mlp", "lenet5")
    partner: str | None = None  # the method whose runs are this one's other start


METHODS: dict[str, Method] = {
    # NPN's two starts are its two modes on the same 1024 allocated units: expand starts with
    # three of them active (too small), prune with all (too large). From 8 allocated units
    # expand could never pass 8, so "from 8" is not NPN's small start.
    "npn-prune": Method(("--method", "npn", "--npn-mode", "prune"), starts=("large",),
                        partner="npn-expand"),
    "npn-expand": Method(("--method", "npn", "--npn-mode", "expand"), starts=("large",),
                         partner="npn-prune"),
    "metanet": Method(("--method", "metanet"), models=("mlp",)),  # resizes Linear layers only
    "l0hc": Method(("--method", "l0hc"), starts=("large",)),  # its gates only close
    "magnitude": Method(("--method", "magnitude"), starts=("large",)),  # prunes once
    "net2net": Method(("--method", "net2net"), starts=("small",)),  # only widens
}


@dataclass(frozen=True)
class PanelTask:
    """One task: its data, model, epoch budget, sweep range, and held-out set sizes."""

    name: str
    data: tuple[str, ...]  # --dataset D [--data-dir X]
    epochs: int
    batch_size: int
    val_size: int  # examples in the validation and test splits (for the tolerances)
    test_size: int
    model: str = "mlp"
    max_width: int = 1024  # the fixed sweep's widest width
    minutes: float = 0.0  # estimated minutes for the whole task on one core (3 seeds)
    sweep: tuple[int, ...] = ()  # explicit sweep widths (default 2, 4, .. max_width)

    def widths(self) -> list[int]:
        """The fixed sweep's widths."""
        if self.sweep:
            return list(self.sweep)
        return [2**k for k in range(1, int(math.log2(self.max_width)) + 1)]

    def arguments(self, width: int) -> list[str]:
        """Model, widths, data and budget arguments of a run whose hidden width is ``width``."""
        widths = f"20,50,{width}" if self.model == "lenet5" else str(width)
        return ["--model", self.model, "--widths", widths, *self.data,
                "--epochs", str(self.epochs), "--batch-size", str(self.batch_size)]


def teacher_task(spec: TeacherSpec, epochs: int, batch_size: int = 64, minutes: float = 0.0,
                 max_width: int = 1024, name: str | None = None) -> PanelTask:
    """A ``--dataset teacher`` task named after its spec, e.g. ``teacher-d10-h4-c2``."""
    test = round(DEFAULT_HOLDOUT_FRACTION * spec.n)
    name = name or f"teacher-d{spec.d}-h{spec.h}-c{spec.c}" + (
        f"-noise{spec.noise:g}" if spec.noise else "")
    return PanelTask(name, ("--dataset", "teacher", "--data-dir", spec.text()), epochs,
                     batch_size, val_size(spec.n - test, None), test, max_width=max_width,
                     minutes=minutes)


def _tasks() -> list[PanelTask]:
    mnist, fashion = str(SHARED / "mnist"), str(SHARED / "fashion-mnist")
    cifar = str(SHARED / "cifar10-jpeg.tar.gz")
    images = {"val_size": 5000, "test_size": 10000, "batch_size": 128}
    # Minutes: the whole task (sweep and methods, 3 seeds) on one core of an AMD EPYC, from
    # timed epochs (an MLP step costs about 0.55 ms plus 9.5e-11 s per multiply-add of its
    # examples' forward and backward pass; LeNet-5 30 s an epoch) and about 5 s to start each
    # run; NPN and L0-HC at 1.5 times a fixed run, growers from 8 as a fixed run at width 64.
    # About 6.5 hours in all; two processes with different --only use both cores. The teacher
    # tasks have about 15 to 30 training examples per teacher weight (d * h): with fewer, the
    # students' accuracy levels off below the teacher's width for lack of data.
    return [
        teacher_task(TeacherSpec(d=10, h=4, c=2, n=2000, seed=1), epochs=100, minutes=6),
        teacher_task(TeacherSpec(d=20, h=8, c=3, n=4000, noise=0.1, seed=2), epochs=60,
                     minutes=6),
        teacher_task(TeacherSpec(d=50, h=16, c=4, n=20000, seed=3), epochs=40,
                     batch_size=128, minutes=9),
        teacher_task(TeacherSpec(d=100, h=12, c=3, n=30000, seed=4), epochs=30,
                     batch_size=128, minutes=10),
        teacher_task(TeacherSpec(d=40, h=32, c=5, n=30000, noise=0.1, seed=5), epochs=30,
                     batch_size=128, minutes=9),
        teacher_task(TeacherSpec(d=10, h=64, c=6, n=30000, seed=6), epochs=30,
                     batch_size=128, minutes=8),
        teacher_task(TeacherSpec(d=10, h=128, c=2, n=50000, seed=7), epochs=30,
                     batch_size=128, minutes=10),
        teacher_task(TeacherSpec(d=200, h=8, c=10, n=50000, noise=0.1, seed=8), epochs=30,
                     batch_size=128, minutes=19),
        PanelTask("moons", ("--dataset", "moons"), epochs=100, batch_size=32, val_size=500,
                  test_size=500, minutes=6),
        PanelTask("digits", ("--dataset", "digits"), epochs=40, batch_size=32, val_size=288,
                  test_size=359, minutes=6),
        PanelTask("mnist-mlp", ("--dataset", "mnist", "--data-dir", mnist), epochs=15,
                  max_width=2048, minutes=47, **images),
        PanelTask("fashion-mlp", ("--dataset", "fashion-mnist", "--data-dir", fashion),
                  epochs=15, max_width=2048, minutes=47, **images),
        PanelTask("cifar10-mlp", ("--dataset", "cifar10", "--data-dir", cifar), epochs=15,
                  minutes=115, **images),  # with 10 s a run to load the cached images
        PanelTask("mnist-lenet5", ("--dataset", "mnist", "--data-dir", mnist), epochs=3,
                  model="lenet5", sweep=(4, 8, 16, 32, 64, 128, 256, 512, 1024), minutes=96,
                  **images),
    ]


def _smoke_tasks() -> list[PanelTask]:
    teacher = teacher_task(TeacherSpec(d=10, h=4, c=2, n=600, seed=1), epochs=2,
                           name="smoke-teacher")
    return [replace(teacher, sweep=(4, 32)),
            PanelTask("smoke-moons", ("--dataset", "moons"), epochs=2, batch_size=64,
                      val_size=500, test_size=500, sweep=(4, 32))]


# ----------------------------------------------------------------------------- running

Runner = Callable[[list[str], int], tuple[int, str, float]]


def train_process(arguments: list[str], threads: int) -> tuple[int, str, float]:
    """:func:`benchmarks.__main__.train` with its error output captured, not raised: the exit
    status, the error output and the wall seconds."""
    return train(arguments, threads, check=False)


def train_here(arguments: list[str], threads: int) -> tuple[int, str, float]:
    """:func:`benchmarks.__main__.train` in this process (``--threads`` in ``arguments`` sets
    the threads): the exit status, the error output and the wall seconds."""
    from neuroplast import cli

    error = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(error):
        try:
            status = cli.main(["train", *arguments])
        except (Exception, SystemExit):  # recorded as a failed run, like a failed process
            status = 1
            error.write(traceback.format_exc())
    return status, error.getvalue(), time.perf_counter() - started


@dataclass(frozen=True)
class Job:
    """One run of the panel: a fixed sweep width or a method's start, on one seed."""

    task: PanelTask
    method: str  # "fixed" or a key of METHODS
    width: int  # the (starting) hidden width
    seed: int

    @property
    def label(self) -> str:
        """``fixed-w<W>`` or ``<method>-from<W>``: the run's name within its task."""
        if self.method == "fixed":
            return f"fixed-w{self.width}"
        return f"{self.method}-from{self.width}"

    def arguments(self, out: Path, threads: int) -> list[str]:
        """The ``neuroplast train`` arguments of this run, writing to ``out``."""
        method = ("--method", "fixed") if self.method == "fixed" else METHODS[self.method].arguments
        return [*method, *self.task.arguments(self.width), "--seed", str(self.seed),
                "--threads", str(threads), "--out", str(out), "--overwrite", "--no-progress"]


def jobs(tasks: Iterable[PanelTask], methods: Iterable[str], seeds: list[int]) -> list[Job]:
    """Every run of ``tasks``: per task its fixed sweep first (the reference), then the methods
    from each start they apply to."""
    wanted = set(methods)
    planned: list[Job] = []
    for task in tasks:
        if "fixed" in wanted:
            planned += [Job(task, "fixed", width, seed) for seed in seeds
                        for width in task.widths()]
        for seed in seeds:
            for name, method in METHODS.items():
                if name in wanted and task.model in method.models:
                    planned += [Job(task, name, STARTS[start], seed) for start in method.starts]
    return planned


def select_epoch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics row with the highest validation accuracy (the first of ties)."""
    return max(rows, key=lambda row: row["val_accuracy"])


def hidden_width(summary: dict[str, Any]) -> int:
    """The last hidden layer's units from a summary.json.

    The last entry of ``final_widths`` counts them for every method: a plain layer's ``units
    it outputs``, or (NPN, L0-HC) the ``input features`` of the gated output layer.
    """
    count = summary["layer_counts"][-1]
    if count not in ("units it outputs", "input features") and not count.startswith("units of"):
        raise ValueError(f"the last width counts {count!r}, not the hidden units")
    return int(summary["final_widths"][-1])


def run_job(job: Job, runs: Path, threads: int, runner: Runner = train_process) -> dict[str, Any]:
    """Train one job with ``runner``; its record (``failed`` with the error when it failed)."""
    out = runs / job.task.name / f"{job.label}--s{job.seed}"
    arguments = job.arguments(out, threads)
    shutil.rmtree(out, ignore_errors=True)  # an earlier summary.json must not pass for this run's
    status, error, wall = runner(arguments, threads)
    record: dict[str, Any] = {
        "task": job.task.name, "run": job.label, "method": job.method, "width": job.width,
        "seed": job.seed, "command": "neuroplast train " + shlex.join(arguments),
        "status": status, "wall_seconds": wall}
    if not (out / "summary.json").exists():  # it failed before training
        return {**record, "failed": True, "error": error[-2000:]}
    summary = json.loads((out / "summary.json").read_text())
    # A run the method stopped (e.g. at chance level) is a result; an interrupted one is not.
    if (summary["stopped_early"] or "").startswith("interrupted"):
        raise KeyboardInterrupt(f"{out} was interrupted; rerun the panel to redo it")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if not rows:  # stopped (a collapse, say) before its first epoch was logged
        return {**record, "failed": True, "error": summary["stopped_early"] or error[-2000:]}
    chosen = select_epoch(rows)
    return {
        **record, "failed": False, "epochs": summary["epochs"],
        "stopped_early": summary["stopped_early"],
        "test_accuracy": rows[-1]["test_accuracy"], "val_accuracy": rows[-1]["val_accuracy"],
        "selected_epoch": chosen["epoch"], "selected_val_accuracy": chosen["val_accuracy"],
        "selected_test_accuracy": chosen["test_accuracy"],
        "hidden_width": hidden_width(summary),
        "final_widths": dict(zip(summary["layer_names"], summary["final_widths"], strict=True)),
        "layer_counts": summary["layer_counts"],
        "train_seconds": summary["train_seconds"],
        "width_curve": [list(row["widths"].values())[-1] for row in rows],
    }


def run_panel(tasks: list[PanelTask], methods: Iterable[str], seeds: list[int], folder: Path,
              runs: Path, threads: int, runner: Runner = train_process) -> None:
    """Run every job whose JSON is not in ``folder`` yet, writing it when the run ends."""
    folder.mkdir(parents=True, exist_ok=True)
    for job in jobs(tasks, methods, seeds):
        path = folder / f"{job.task.name}--{job.label}--s{job.seed}.json"
        if path.exists():
            continue
        record = run_job(job, runs, threads, runner)
        write_json_atomic(record, path)  # an interrupted write leaves no half a record
        if record["failed"]:
            last = (record["error"].strip().splitlines() or ["no error output"])[-1]
            print(f"{job.task.name} {job.label} s{job.seed}: FAILED: {last}", flush=True)
        else:
            print(f"{job.task.name} {job.label} s{job.seed}: test "
                  f"{100 * record['test_accuracy']:.2f} % (selected "
                  f"{100 * record['selected_test_accuracy']:.2f} %) width "
                  f"{record['hidden_width']} {record['wall_seconds']:.0f}s", flush=True)


# ----------------------------------------------------------------------------- the goals


def tolerance(accuracy: float, examples: int) -> float:
    """0.5 points, or one standard error of an accuracy measured on ``examples``: the larger."""
    return max(TOLERANCE_POINTS, math.sqrt(accuracy * (1.0 - accuracy) / examples))


@dataclass
class Reference:
    """A task's fixed-width sweep: means over seeds at the validation-selected epochs."""

    val: dict[int, float]  # width -> mean validation accuracy
    test: dict[int, float]  # width -> mean test accuracy
    seconds: dict[int, float]  # width -> mean train_seconds of one run
    best: int  # the width of the highest mean validation accuracy (the smallest of ties)
    sufficient: int  # the smallest width within val_tolerance of the best's
    val_tolerance: float
    test_tolerance: float  # of the best width's test accuracy: the accuracy goal's margin

    @property
    def best_test(self) -> float:
        """The best width's mean test accuracy: what the methods are compared with."""
        return self.test[self.best]


def reference(sweep: list[dict[str, Any]], val_examples: int,
              test_examples: int) -> Reference | None:
    """The reference of a task from its fixed runs' records (None without any)."""
    by_width: dict[int, list[dict[str, Any]]] = {}
    for record in sweep:
        if not record["failed"]:
            by_width.setdefault(record["width"], []).append(record)
    if not by_width:
        return None
    widths = sorted(by_width)

    def mean(key: str) -> dict[int, float]:
        return {w: statistics.mean(r[key] for r in by_width[w]) for w in widths}

    val, test = mean("selected_val_accuracy"), mean("selected_test_accuracy")
    best = max(widths, key=lambda w: val[w])  # max keeps the first, the smallest, of ties
    val_tolerance = tolerance(val[best], val_examples)
    sufficient = min(w for w in widths if val[w] >= val[best] - val_tolerance - 1e-12)
    return Reference(val, test, mean("train_seconds"), best, sufficient, val_tolerance,
                     tolerance(test[best], test_examples))


def nearest_width(width: float, widths: Iterable[int]) -> int:
    """The width of ``widths`` nearest ``width`` on a log scale (the smaller of ties)."""
    target = math.log2(max(width, 1.0))
    return min(widths, key=lambda w: (abs(math.log2(w) - target), w))


def spread_ratio(a: float, b: float) -> float:
    """The larger of two widths over the smaller (1 when both are 0, inf when one is)."""
    low, high = sorted((a, b))
    if high == 0:
        return 1.0
    return math.inf if low == 0 else high / low


def goals(width: float, other_start_width: float | None, accuracy: float, seconds: float,
          ref: Reference) -> dict[str, Any]:
    """A (task, method, start)'s numbers against the goals, from its means over seeds.

    ``width``: the final hidden width; ``other_start_width``: the same method's from the other
    start (None if it has one start); ``accuracy``: final test accuracy; ``seconds``: its
    training time. Each ``*_ok`` says whether that goal is met (None: not applicable).
    """
    ratio = width / ref.sufficient
    starts = None if other_start_width is None else spread_ratio(width, other_start_width)
    difference = accuracy - ref.best_test
    fixed_seconds = ref.seconds[nearest_width(width, ref.seconds)]
    time_ratio = seconds / fixed_seconds
    return {
        "ratio": ratio, "width_ok": 1 / WIDTH_FACTOR <= ratio <= WIDTH_FACTOR,
        "starts_ratio": starts, "starts_ok": None if starts is None else starts <= STARTS_FACTOR,
        "difference": difference, "accuracy_ok": difference >= -ref.test_tolerance - 1e-12,
        "time_ratio": time_ratio, "time_ok": time_ratio <= TIME_FACTOR,
    }


# ----------------------------------------------------------------------------- table and plot


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every run record in ``folder``."""
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*--*--s*.json"))]


def panel_rows(tasks: list[PanelTask], records: list[dict[str, Any]]
               ) -> tuple[dict[str, Reference | None], list[dict[str, Any]]]:
    """Each task's reference, and one row per (task, method, start) with its means and goals."""
    references: dict[str, Reference | None] = {}
    rows: list[dict[str, Any]] = []
    for task in tasks:
        mine = [r for r in records if r["task"] == task.name]
        ref = reference([r for r in mine if r["method"] == "fixed"], task.val_size,
                        task.test_size)
        references[task.name] = ref
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for record in mine:
            if record["method"] != "fixed":
                groups.setdefault((record["method"], record["width"]), []).append(record)
        widths = {key: statistics.mean(r["hidden_width"] for r in runs if not r["failed"])
                  for key, runs in groups.items() if any(not r["failed"] for r in runs)}
        for name in METHODS:
            for start in sorted(w for method, w in groups if method == name):
                runs = groups[(name, start)]
                ok = [r for r in runs if not r["failed"]]
                row: dict[str, Any] = {
                    "task": task.name, "method": name, "start": start, "seeds": len(ok),
                    "failed": len(runs) - len(ok),
                    "stopped": sum(bool(r.get("stopped_early")) for r in ok),
                    "command": min(runs, key=lambda r: r["seed"])["command"]}
                if ok and ref is not None:
                    partner = METHODS[name].partner
                    other = [w for (method, s), w in widths.items()
                             if (method == name and s != start) or method == partner]
                    row.update(width=widths[(name, start)],
                               accuracy=statistics.mean(r["test_accuracy"] for r in ok),
                               seconds=statistics.mean(r["train_seconds"] for r in ok))
                    row.update(goals(row["width"], other[0] if other else None,
                                     row["accuracy"], row["seconds"], ref))
                rows.append(row)
    return references, rows


GOALS = {"width_ok": f"width within x{WIDTH_FACTOR:g}",
         "starts_ok": f"starts within x{STARTS_FACTOR:g}",
         "accuracy_ok": "accuracy within tolerance", "time_ok": f"time <= {TIME_FACTOR:g}x"}


def goal_counts(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, tuple[int, int]]]:
    """Per (method, start), per goal: (tasks where it is met, tasks where it was measured)."""
    counts: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    for row in rows:
        entry = counts.setdefault((row["method"], row["start"]), {})
        for goal in GOALS:
            met, measured = entry.get(goal, (0, 0))
            if row.get(goal) is not None:
                met, measured = met + bool(row[goal]), measured + 1
            entry[goal] = (met, measured)
    return counts


def _yes(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def _number(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def write_table(tasks: list[PanelTask], folder: Path) -> str:
    """``table.md`` and ``widths.png`` in ``folder`` from its run records; returns the table."""
    records = load_records(folder)
    references, rows = panel_rows(tasks, records)
    lines = ["# Task panel", "",
             "Fixed-width reference: runs read at their validation-selected epoch, means over "
             "seeds. The best and the sufficient width are chosen on validation accuracy; "
             "tolerance: 0.5 points or one standard error of the accuracy on that split.", "",
             "| task | epochs, batch | best width | its test % | tolerance val / test (points) "
             "| sufficient width | its test % | val % by width |",
             "|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        ref = references[task.name]
        if ref is None:
            continue
        by_width = ", ".join(f"{w}: {100 * v:.1f}" for w, v in ref.val.items())
        lines.append(
            f"| {task.name} | {task.epochs}, {task.batch_size} | {ref.best} | "
            f"{100 * ref.best_test:.2f} | {100 * ref.val_tolerance:.2f} / "
            f"{100 * ref.test_tolerance:.2f} | {ref.sufficient} | "
            f"{100 * ref.test[ref.sufficient]:.2f} | {by_width} |")
    lines += ["", "Self-sizing methods with their defaults, final epoch, means over seeds "
              "(stopped: runs the method ended early, e.g. at chance level; their last epoch "
              "counts). Time: train_seconds over one fixed run's at the sweep width nearest the "
              "final width.", "",
              "| task | method | start | seeds | final width | sufficient | ratio | x2 | "
              "starts ratio | x1.5 | test % | vs best fixed (points) | within | time vs fixed (x) "
              "| <= 2x | command (first seed) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = references[row["task"]]
        notes = [f"{row[key]} {key}" for key in ("stopped", "failed") if row[key]]
        seeds = f"{row['seeds']}" + (f" ({', '.join(notes)})" if notes else "")
        accuracy = row.get("accuracy")
        lines.append(
            f"| {row['task']} | {row['method']} | {row['start']} | {seeds} | "
            f"{_number(row.get('width'), '.1f')} | {ref.sufficient if ref else '–'} | "
            f"{_number(row.get('ratio'), '.2f')} | {_yes(row.get('width_ok'))} | "
            f"{_number(row.get('starts_ratio'), '.2f')} | {_yes(row.get('starts_ok'))} | "
            f"{_number(None if accuracy is None else 100 * accuracy, '.2f')} | "
            f"{_number(None if accuracy is None else 100 * row['difference'], '+.2f')} | "
            f"{_yes(row.get('accuracy_ok'))} | {_number(row.get('time_ratio'), '.2f')} | "
            f"{_yes(row.get('time_ok'))} | `{row['command']}` |")
    lines += ["", "Goals met: tasks where the goal is met / tasks where it was measured.", "",
              f"| method | start | {' | '.join(GOALS.values())} |",
              "|---|---|" + "---|" * len(GOALS)]
    for (method, start), counts in goal_counts(rows).items():
        cells = " | ".join(f"{met}/{measured}" for met, measured in counts.values())
        lines.append(f"| {method} | {start} | {cells} |")
    failed = [r for r in records if r["failed"]]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['task']}--{r['run']}--s{r['seed']}: "
                  f"{(r['error'].strip().splitlines() or ['?'])[-1]}" for r in failed]
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    plot_widths(rows, references, folder / "widths.png")
    return table


def plot_widths(rows: list[dict[str, Any]], references: dict[str, Reference | None],
                path: Path) -> None:
    """Final against sufficient width, log-log: a point per (task, method, start), a colour per
    method, a marker per start, the diagonal and the x2 band. Nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return
    points = [row for row in rows if row.get("width") is not None]
    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    names = list(METHODS)
    colours = plt.get_cmap("tab10")
    markers = {STARTS["small"]: "^", STARTS["large"]: "v"}
    for row in points:
        index = names.index(row["method"])
        # A small horizontal offset per method keeps tasks sharing a sufficient width apart.
        x = references[row["task"]].sufficient * 2 ** (0.06 * (index - len(names) / 2))
        axis.scatter(x, max(row["width"], 0.5), color=colours(index),
                     marker=markers.get(row["start"], "o"), s=30)
    values = [max(row["width"], 0.5) for row in points] + [
        references[row["task"]].sufficient for row in points] or [1.0]
    low, high = min(values) / 2, max(values) * 2
    axis.plot([low, high], [low, high], color="grey", linewidth=1)
    axis.fill_between([low, high], [low / 2, high / 2], [low * 2, high * 2], color="grey",
                      alpha=0.15, label="within x2")
    for index, name in enumerate(names):
        axis.scatter([], [], color=colours(index), marker="s", label=name)
    for start, marker in markers.items():
        axis.scatter([], [], color="black", marker=marker, label=f"from {start}")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log", base=2)
    axis.set_xlabel("sufficient width (fixed sweep, chosen on validation)")
    axis.set_ylabel("final hidden width (mean over seeds)")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks panel [options]``: run what is missing, then write the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks panel",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="only tasks whose name starts with one of these")
    parser.add_argument("--methods", nargs="+", choices=("fixed", *METHODS),
                        default=["fixed", *METHODS], help="only these (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--smoke: 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="only rebuild the table and plot")
    parser.add_argument("--smoke", action="store_true",
                        help="two tiny tasks, two widths, two epochs, in this process")
    parser.add_argument("--results", type=Path, help="default benchmarks/results/panel "
                        "(--smoke: benchmarks/results/panel-smoke)")
    parser.add_argument("--runs", type=Path, help="run directories (default runs/bench/panel "
                        "or runs/bench/panel-smoke)")
    args = parser.parse_args(argv)
    name = "panel-smoke" if args.smoke else "panel"
    folder, runs = args.results or RESULTS / name, args.runs or RUNS / name
    tasks = _smoke_tasks() if args.smoke else _tasks()
    if args.only:
        tasks = [t for t in tasks if any(t.name.startswith(prefix) for prefix in args.only)]
    if not args.table:
        seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
        minutes = sum(t.minutes for t in tasks) * len(seeds) / 3
        if minutes:
            print(f"{len(tasks)} tasks, about {minutes / 60:.1f} h on one core if nothing is "
                  "done yet", flush=True)
        run_panel(tasks, args.methods, seeds, folder, runs, args.threads,
                  train_here if args.smoke else train_process)
    print(write_table(_smoke_tasks() if args.smoke else _tasks(), folder))
