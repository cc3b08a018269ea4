"""Benchmark of neuroplast's core: resize cost vs a training step, compact-model CPU latency.

Run ``python -m benchmarks.core`` (about 6 minutes on 2 idle cores, longer on a busy machine) or
``--quick`` (small models, few repetitions, a smoke check). It writes one JSON file (default
``benchmarks/results/core.json``) and prints the results as Markdown tables;
``--tables FILE`` prints the tables of an earlier result.

1. **Resize cost.** For LeNet-300-100 (MNIST shapes, batch 128, Adam), LeNet-5-Caffe (batch 128,
   Adam) and ResNet-20 (32x32x3, batch 64, SGD with momentum): the median time of one
   ``prune_units`` to half the width and of one ``grow_units`` by 10% of the width, each on a
   fresh copy of a model and optimizer that have taken training steps (so the optimizer holds
   state and the parameters hold gradients), against the median time of one full training step
   (zero_grad, forward, cross-entropy, backward, step). Steps and resize events are interleaved.
2. **Inference latency.** With 25%, 50% and 90% of the units of every resizable layer removed:
   (a) the unpruned model, (b) neuroplast's compact model (``prune_units`` on a copy, then
   ``compact_model``) and (c) a plain PyTorch model of the same widths written here by hand and
   loaded with the compact model's weights, timed interleaved in eval mode under
   ``torch.inference_mode``. The goal: at batch 256 the speed-up of (b) over (a) is at least
   0.8 times the MACs ratio. Where it is not met, a profiler breakdown (conv/linear kernels vs
   everything else) says why, in numbers.

Medians are over interleaved repetitions (the variant order rotates every repetition, so
background load hits every variant alike); each sample repeats the call enough times to last
at least ``min_sample_s``. Every sample records wall-clock time (the reported latency) and the
process's CPU time. The thread count is fixed and recorded: ``--threads`` (default 1) for
everything, and the goal batch is also timed on every core. One thread is the default because
on a small shared machine a multi-threaded kernel waits for its slowest thread, so someone
else's process can stall it by whole scheduler slices; at one thread, CPU time stays a faithful
measure even then. Before each row the benchmark waits (within a budget) for other processes
to go quiet, and every row records how many cores they kept busy while it was measured
(``background_cpu_cores``; ``contended`` above 0.25).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuroplast import (
    build_model,
    compact_model,
    count_model,
    count_parameters,
    grow_units,
    layer_widths,
    prune_units,
)

DEFAULT_OUT = Path("benchmarks/results/core.json")
GOAL_BATCH = 256
GOAL_FACTOR = 0.8
CONTENDED = 0.25  # cores kept busy by other processes above which a row is marked contended
NUM_CLASSES = 10
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


@dataclass(frozen=True)
class Settings:
    """How much to measure: repetitions, sample length, which models, fractions and batches."""

    quick: bool
    threads: int
    extra_goal_threads: tuple[int, ...]
    step_reps: int
    latency_reps: int
    min_reps: int
    max_point_s: float
    min_sample_s: float
    fractions: tuple[float, ...]
    batches: tuple[int, ...]
    resize_models: tuple[str, ...]
    latency_models: tuple[str, ...]
    profile_rounds: int
    max_wait_s: float
    total_wait_s: float


def make_settings(quick: bool, threads: int = 1) -> Settings:
    """Full run (about 6 minutes on 2 idle cores) or the ``--quick`` smoke check (seconds).

    The full run also times the goal batch on every core (``os.cpu_count()``) when ``threads``
    is smaller.
    """
    cores = os.cpu_count() or 1
    if quick:
        return Settings(
            quick=True, threads=threads, extra_goal_threads=(), step_reps=3, latency_reps=3,
            min_reps=3, max_point_s=5.0, min_sample_s=0.003,
            fractions=(0.5, 0.9), batches=(1, GOAL_BATCH),
            resize_models=("lenet300", "lenet5"), latency_models=("lenet300", "lenet5"),
            profile_rounds=1, max_wait_s=0.0, total_wait_s=0.0,
        )
    return Settings(
        quick=False, threads=threads, extra_goal_threads=(cores,) if cores != threads else (),
        step_reps=25, latency_reps=15, min_reps=7, max_point_s=20.0, min_sample_s=0.05,
        fractions=(0.25, 0.5, 0.9), batches=(1, 32, GOAL_BATCH),
        resize_models=("lenet300", "lenet5", "resnet20"),
        latency_models=("lenet300", "lenet5", "resnet56"),
        profile_rounds=5, max_wait_s=20.0, total_wait_s=60.0,
    )


@dataclass(frozen=True)
class TrainCase:
    """One model of the resize-cost table and how it trains."""

    model: str
    input_shape: tuple[int, ...]
    batch: int
    optimizer: str
    layers: tuple[str, ...]


TRAIN_CASES = {
    "lenet300": TrainCase("lenet300", MNIST, 128, "adam", ("fc1", "fc2")),
    "lenet5": TrainCase("lenet5", MNIST, 128, "adam", ("conv1", "conv2", "fc1")),
    "resnet20": TrainCase(
        "resnet20", CIFAR, 64, "sgd", ("layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1")
    ),
}
INPUT_SHAPES = {"lenet300": MNIST, "lenet5": MNIST, "resnet20": CIFAR, "resnet56": CIFAR}


# ----------------------------------------------------------------------------- timing helpers


def _cpu_busy_s() -> float | None:
    """Seconds of CPU time all processes have used since boot (``/proc/stat``), if readable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class Background:
    """How many CPU cores other processes kept busy since this object was made."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = _cpu_busy_s()
        self.own = time.process_time()

    def cores(self) -> float | None:
        """Mean number of cores busy with other processes' work (None without /proc/stat)."""
        busy = _cpu_busy_s()
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        own = time.process_time() - self.own
        return round(max(0.0, (busy - self.busy - own) / wall), 3)


class QuietGate:
    """Waits, before each measurement, until other processes leave the CPU (within a budget).

    The benchmark may share its machine; this keeps short bursts of someone else's work out of
    the measurements. The background load measured during every row is recorded either way.
    """

    def __init__(self, per_point_s: float, total_s: float, threshold: float = 0.2) -> None:
        self.per_point_s = per_point_s
        self.left_s = total_s
        self.threshold = threshold

    def wait(self, probe_s: float = 1.0) -> float:
        """Sleep until other processes use under ``threshold`` cores; return seconds waited."""
        waited = 0.0
        while waited < self.per_point_s and self.left_s > 0:
            probe = Background()
            time.sleep(probe_s)
            cores = probe.cores()
            waited += probe_s
            self.left_s -= probe_s
            if cores is None or cores < self.threshold:
                break
        return waited


def _median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def _quartiles_ms(samples: Sequence[float]) -> list[float]:
    if len(samples) < 2:
        return [samples[0] * 1e3] * 2
    q = statistics.quantiles(samples, n=4)
    return [q[0] * 1e3, q[2] * 1e3]


def _measure(fn: Callable[[], object], count: int = 1) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per call of ``count`` calls of ``fn``.

    Python's garbage collector is paused meanwhile, so a collection of someone else's garbage
    is not charged to ``fn``.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            fn()
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count
    finally:
        if enabled:
            gc.enable()


@dataclass
class Timings:
    """Per-call seconds of each variant: wall-clock and process CPU time, one value a sample."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    calls: dict[str, int]


def time_interleaved(
    fns: dict[str, Callable[[], object]], reps: int, min_sample_s: float, min_reps: int = 3,
    max_total_s: float = math.inf,
) -> Timings:
    """Time each function, variants interleaved, the order rotating every repetition.

    Each function is warmed up, then called ``calls[name]`` times per sample so that a sample
    lasts at least ``min_sample_s``. ``reps`` samples are taken of each, fewer (not under
    ``min_reps``) when they would take more than ``max_total_s`` in all.
    """
    calls: dict[str, int] = {}
    round_s = 0.0
    for name, fn in fns.items():
        _measure(fn)  # warm-up
        one = min(_measure(fn)[0] for _ in range(2))
        calls[name] = max(1, math.ceil(min_sample_s / max(one, 1e-7)))
        round_s += calls[name] * one
    if math.isfinite(max_total_s):
        reps = max(min_reps, min(reps, int(max_total_s / max(round_s, 1e-9))))
    names = list(fns)
    timings = Timings({n: [] for n in names}, {n: [] for n in names}, calls)
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = _measure(fns[name], calls[name])
            timings.wall[name].append(wall)
            timings.cpu[name].append(cpu)
    return timings


# ----------------------------------------------------------------------------- 1. resize cost


def _make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def _optimizer_follows(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    stated = {id(p) for p in optimizer.state}
    params = {id(p) for p in model.parameters()}
    return held == params and stated <= params


def resize_cost_rows(
    case: TrainCase, settings: Settings, gate: QuietGate
) -> list[dict[str, Any]]:
    """Rows of median step time and median prune/grow time for each layer of ``case``."""
    torch.manual_seed(0)
    model = build_model(case.model, case.input_shape, NUM_CLASSES).train()
    optimizer = _make_optimizer(case.optimizer, model)
    inputs = torch.randn(case.batch, *case.input_shape)
    targets = torch.randint(0, NUM_CLASSES, (case.batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    for _ in range(3):  # warm-up; also gives the optimizer its state
        step()
    widths = layer_widths(model)
    generator = torch.Generator().manual_seed(0)
    keeps = {
        layer: torch.randperm(widths[layer], generator=generator)[: widths[layer] // 2].sort()[0]
        for layer in case.layers
    }
    grows = {layer: max(1, round(0.1 * widths[layer])) for layer in case.layers}
    waited = gate.wait()
    background = Background()
    # samples["step"], samples[(layer, "prune")], ...: (wall, cpu) seconds per repetition
    samples: dict[Any, list[tuple[float, float]]] = {"step": []}
    follows = True
    for rep in range(settings.step_reps + 1):  # repetition 0 is a warm-up
        step_time = _measure(step)
        if rep:
            samples["step"].append(step_time)
        for layer in case.layers:
            for kind in ("prune", "grow"):
                fresh, fresh_opt = copy.deepcopy((model, optimizer))
                if kind == "prune":
                    elapsed = _measure(
                        lambda m=fresh, o=fresh_opt, k=keeps[layer], name=layer: prune_units(
                            m, name, keep=k, optimizer=o
                        )
                    )
                else:
                    elapsed = _measure(
                        lambda m=fresh, o=fresh_opt, n=grows[layer], name=layer: grow_units(
                            m, name, n, optimizer=o
                        )
                    )
                follows = follows and _optimizer_follows(fresh, fresh_opt)
                if rep:
                    samples.setdefault((layer, kind), []).append(elapsed)
    if not follows:
        raise RuntimeError(f"{case.model}: the optimizer did not follow a resize; fix the core")
    background_cores = background.cores()

    def median_ms(key: Any, index: int) -> float:
        return _median_ms([sample[index] for sample in samples[key]])

    step_ms, step_cpu_ms = median_ms("step", 0), median_ms("step", 1)
    rows = []
    for layer in case.layers:
        prune_ms, grow_ms = median_ms((layer, "prune"), 0), median_ms((layer, "grow"), 0)
        prune_cpu_ms = median_ms((layer, "prune"), 1)
        grow_cpu_ms = median_ms((layer, "grow"), 1)
        rows.append(
            {
                "model": case.model,
                "input_shape": list(case.input_shape),
                "batch": case.batch,
                "optimizer": "Adam" if case.optimizer == "adam" else "SGD(momentum=0.9)",
                "layer": layer,
                "width": widths[layer],
                "prune_keep": len(keeps[layer]),
                "grow_n": grows[layer],
                "reps": settings.step_reps,
                "threads": torch.get_num_threads(),
                "background_cpu_cores": background_cores,
                "contended": background_cores is not None and background_cores > CONTENDED,
                "waited_for_quiet_s": waited,
                "step_ms": step_ms,
                "step_ms_quartiles": _quartiles_ms([sample[0] for sample in samples["step"]]),
                "prune_ms": prune_ms,
                "grow_ms": grow_ms,
                "prune_over_step": prune_ms / step_ms,
                "grow_over_step": grow_ms / step_ms,
                "cpu_ms": {"step": step_cpu_ms, "prune": prune_cpu_ms, "grow": grow_cpu_ms},
                "prune_over_step_cpu": prune_cpu_ms / step_cpu_ms,
                "grow_over_step_cpu": grow_cpu_ms / step_cpu_ms,
            }
        )
    return rows


# ----------------------------------------------------------------------------- hand-built models


def hand_built_lenet300(widths: dict[str, int]) -> nn.Module:
    """LeNet-300-100 of the given widths, straight ``torch.nn``."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(28 * 28, widths["fc1"]),
            act1=nn.ReLU(),
            fc2=nn.Linear(widths["fc1"], widths["fc2"]),
            act2=nn.ReLU(),
            out=nn.Linear(widths["fc2"], NUM_CLASSES),
        )
    )


def hand_built_lenet5(widths: dict[str, int]) -> nn.Module:
    """LeNet-5-Caffe of the given widths on 28x28 inputs, straight ``torch.nn``."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, widths["conv1"], 5),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(widths["conv1"], widths["conv2"], 5),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(widths["conv2"] * 4 * 4, widths["fc1"]),
            act3=nn.ReLU(),
            out=nn.Linear(widths["fc1"], NUM_CLASSES),
        )
    )


class PlainBlock(nn.Module):
    """A CIFAR ResNet basic block with ``inner`` middle channels and a zero-padding shortcut."""

    def __init__(self, in_planes: int, inner: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


def hand_built_resnet(
    widths: dict[str, int], stage_planes: Sequence[int] = (16, 32, 64)
) -> nn.Module:
    """CIFAR ResNet whose block ``layer{s}.{i}`` has ``widths['layer{s}.{i}.conv1']`` channels."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, stage_planes[0], 3, padding=1, bias=False),
        bn1=nn.BatchNorm2d(stage_planes[0]),
        act1=nn.ReLU(),
    )
    in_planes = stage_planes[0]
    for stage, planes in enumerate(stage_planes, start=1):
        blocks = []
        index = 0
        while f"layer{stage}.{index}.conv1" in widths:
            stride = 2 if stage > 1 and index == 0 else 1
            inner = widths[f"layer{stage}.{index}.conv1"]
            blocks.append(PlainBlock(in_planes, inner, planes, stride))
            in_planes = planes
            index += 1
        layers[f"layer{stage}"] = nn.Sequential(*blocks)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_planes, NUM_CLASSES)
    return nn.Sequential(layers)


HAND_BUILT: dict[str, Callable[[dict[str, int]], nn.Module]] = {
    "lenet300": hand_built_lenet300,
    "lenet5": hand_built_lenet5,
    "resnet20": hand_built_resnet,
    "resnet56": hand_built_resnet,
}


# ----------------------------------------------------------------------------- 2. latency


def _is_dense(op: str) -> bool:
    return "conv" in op or op in {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul"}


def op_breakdown(
    models: dict[str, nn.Module], inputs: torch.Tensor, rounds: int
) -> dict[str, dict[str, Any]]:
    """Per-forward milliseconds of each model in conv/linear kernels, in all other ops, and its
    three largest other ops.

    Each round profiles one forward of every model in turn; each op's time is its median over
    the rounds, so a round in which another process took the core does not skew the split.
    Times are the profiler's self CPU time per op (its overhead inflates tiny ops a little).
    """
    per_op: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.inference_mode():
        for model in models.values():
            model(inputs)
        for _ in range(rounds):
            for name, model in models.items():
                with torch.profiler.profile(activities=activities) as prof:
                    model(inputs)
                for event in prof.key_averages():
                    per_op[name].setdefault(event.key, []).append(event.self_cpu_time_total / 1e3)
    result = {}
    for name, ops in per_op.items():
        medians = {op: statistics.median(times + [0.0] * (rounds - len(times)))
                   for op, times in ops.items()}
        dense = sum(ms for op, ms in medians.items() if _is_dense(op))
        others = {op: ms for op, ms in medians.items() if not _is_dense(op)}
        top = sorted(others.items(), key=lambda item: -item[1])[:3]
        result[name] = {
            "dense_ms": dense,
            "other_ms": sum(others.values()),
            "top_other_ops_ms": dict(top),
        }
    return result


def explain_shortfall(
    unpruned: dict[str, Any], compact: dict[str, Any], macs_ratio: float, macs: int, batch: int,
    unpruned_macs: int,
) -> str:
    """A short, measured reason why the speed-up falls short of the MACs ratio."""
    dense_speedup = unpruned["dense_ms"] / max(compact["dense_ms"], 1e-9)
    other_speedup = unpruned["other_ms"] / max(compact["other_ms"], 1e-9)
    total = compact["dense_ms"] + compact["other_ms"]
    other_share = compact["other_ms"] / max(total, 1e-9)
    rate_before = unpruned_macs * batch / max(unpruned["dense_ms"], 1e-9) / 1e6
    rate_after = macs * batch / max(compact["dense_ms"], 1e-9) / 1e6
    reasons = []
    if dense_speedup < GOAL_FACTOR * macs_ratio:
        reasons.append(
            f"conv/linear kernels got only {dense_speedup:.1f}x faster for {macs_ratio:.1f}x fewer "
            f"MACs: their throughput fell from {rate_before:.0f} to {rate_after:.0f} GMAC/s on "
            "the narrower shapes (few output columns/channels: more memory- and "
            "overhead-bound)"
        )
    if other_share > 0.15:
        top_op, top_ms = next(iter(compact["top_other_ops_ms"].items()), ("-", 0.0))
        reasons.append(
            f"ops not counted in MACs (pooling, BatchNorm, ReLU, residual add, copies) are "
            f"{other_share:.0%} of the compact model's op time and got only "
            f"{other_speedup:.1f}x faster (largest: {top_op} {top_ms / total:.0%})"
        )
    if not reasons:
        reasons.append(
            f"conv/linear kernels {dense_speedup:.1f}x faster, other ops {other_speedup:.1f}x "
            "faster; the rest is per-call Python/dispatch overhead"
        )
    return "; ".join(reasons)


def _pruned_widths(widths: dict[str, int], fraction: float) -> dict[str, int]:
    return {layer: max(1, round(width * (1 - fraction))) for layer, width in widths.items()}


def latency_rows(model_name: str, settings: Settings, gate: QuietGate) -> list[dict[str, Any]]:
    """Latency rows for one model: every removed fraction times every batch size."""
    shape = INPUT_SHAPES[model_name]
    torch.manual_seed(0)
    base = build_model(model_name, shape, NUM_CLASSES).eval()
    widths = layer_widths(base)
    base_count = count_model(base, shape)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for fraction in settings.fractions:
        target = _pruned_widths(widths, fraction)
        pruned = copy.deepcopy(base)
        for layer, width in target.items():
            keep = torch.randperm(widths[layer], generator=generator)[:width]
            prune_units(pruned, layer, keep=keep)
        compact = compact_model(pruned)
        hand = HAND_BUILT[model_name](target).eval()
        hand.load_state_dict(compact.state_dict())
        compact_count = count_model(compact, shape)
        check = torch.randn(4, *shape)
        with torch.inference_mode():
            outputs_match = bool(torch.allclose(compact(check), hand(check), atol=1e-5))
            outputs_match = outputs_match and bool(
                torch.allclose(compact(check), pruned.eval()(check), atol=1e-5)
            )
        macs_ratio = base_count.macs / compact_count.macs
        variants = {"unpruned": base, "compact": compact, "hand_built": hand}
        for batch, threads in _latency_points(settings):
            torch.set_num_threads(threads)
            try:
                inputs = torch.randn(batch, *shape)
                fns = {name: (lambda m=model, x=inputs: m(x)) for name, model in variants.items()}
                waited = gate.wait()
                background = Background()
                with torch.inference_mode():
                    timings = time_interleaved(
                        fns, settings.latency_reps, settings.min_sample_s, settings.min_reps,
                        settings.max_point_s,
                    )
                background_cores = background.cores()
                profile = None
                if batch == GOAL_BATCH:
                    profile = op_breakdown(
                        {"unpruned": base, "compact": compact}, inputs, settings.profile_rounds
                    )
            finally:
                torch.set_num_threads(settings.threads)
            ms = {name: _median_ms(values) for name, values in timings.wall.items()}
            cpu_ms = {name: _median_ms(values) for name, values in timings.cpu.items()}
            speedup = ms["unpruned"] / ms["compact"]
            speedup_cpu = cpu_ms["unpruned"] / cpu_ms["compact"]
            row: dict[str, Any] = {
                "model": model_name,
                "input_shape": list(shape),
                "removed_fraction": fraction,
                "batch": batch,
                "threads": threads,
                "widths_unpruned": widths,
                "widths_compact": target,
                "reps": len(timings.wall["compact"]),
                "calls_per_sample": timings.calls,
                "ms": ms,
                "ms_quartiles": {
                    name: _quartiles_ms(values) for name, values in timings.wall.items()
                },
                "cpu_ms": cpu_ms,
                "speedup_compact": speedup,
                "speedup_compact_cpu_time": speedup_cpu,
                "speedup_hand_built": ms["unpruned"] / ms["hand_built"],
                "compact_over_hand_built_ms": ms["compact"] / ms["hand_built"],
                "macs": {"unpruned": base_count.macs, "compact": compact_count.macs},
                "macs_ratio": macs_ratio,
                "params": {
                    "unpruned": count_parameters(base),
                    "compact": count_parameters(compact),
                    "hand_built": count_parameters(hand),
                },
                "outputs_match": outputs_match,
                "background_cpu_cores": background_cores,
                "contended": background_cores is not None and background_cores > CONTENDED,
                "waited_for_quiet_s": waited,
                "goal": f"batch {GOAL_BATCH}: speedup_compact >= {GOAL_FACTOR} * macs_ratio",
                "goal_met": None,
                "why": None,
            }
            if profile is not None:
                met = speedup >= GOAL_FACTOR * macs_ratio
                row["goal_met"] = met
                row["goal_met_cpu_time"] = speedup_cpu >= GOAL_FACTOR * macs_ratio
                row["profile_ms_per_forward"] = profile
                if not met:
                    row["why"] = explain_shortfall(
                        profile["unpruned"], profile["compact"], macs_ratio, compact_count.macs,
                        batch, base_count.macs,
                    )
                    if row["contended"]:
                        row["why"] = (
                            f"measured while other processes kept {background_cores:.1f} cores "
                            f"busy (CPU-time speed-up {speedup_cpu:.2f}x); profiler: {row['why']}"
                        )
            rows.append(row)
    return rows


def _latency_points(settings: Settings) -> list[tuple[int, int]]:
    """(batch, threads) pairs: every batch at the main thread count, the goal batch also at the
    extra thread counts."""
    points = [(batch, settings.threads) for batch in settings.batches]
    if GOAL_BATCH in settings.batches:
        points += [(GOAL_BATCH, threads) for threads in settings.extra_goal_threads]
    return points


# ----------------------------------------------------------------------------- report


def machine_info(threads: int, extra_goal_threads: Sequence[int] = ()) -> dict[str, Any]:
    """CPU model, core count, torch version and the fixed thread counts."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "goal_batch_also_at_threads": list(extra_goal_threads),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def markdown_tables(results: dict[str, Any]) -> str:
    """The resize-cost and latency results as two Markdown tables."""
    lines = [
        "| model | layer (width) | optimizer, batch | train step ms | prune to half ms "
        "| prune / step | grow +10% ms | grow / step |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["resize_cost"]:
        lines.append(
            f"| {r['model']}{_mark(r)} | {r['layer']} ({r['width']}) "
            f"| {r['optimizer']}, {r['batch']} "
            f"| {r['step_ms']:.2f} | {r['prune_ms']:.3f} | {r['prune_over_step']:.3f} "
            f"| {r['grow_ms']:.3f} | {r['grow_over_step']:.3f} |"
        )
    lines += [
        "",
        "| model | removed | batch | threads | unpruned ms | compact ms | hand-built ms "
        "| speed-up compact (hand-built) | speed-up, CPU time | MACs ratio "
        "| params unpruned -> compact | goal met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["latency"]:
        goal = {True: "yes", False: "**no**", None: "n/a"}[r["goal_met"]]
        ms = r["ms"]
        lines.append(
            f"| {r['model']}{_mark(r)} | {r['removed_fraction']:.0%} | {r['batch']} "
            f"| {r['threads']} "
            f"| {ms['unpruned']:.3f} | {ms['compact']:.3f} | {ms['hand_built']:.3f} "
            f"| {r['speedup_compact']:.2f}x ({r['speedup_hand_built']:.2f}x) "
            f"| {r['speedup_compact_cpu_time']:.2f}x | {r['macs_ratio']:.2f}x "
            f"| {r['params']['unpruned']:,} -> {r['params']['compact']:,} "
            f"| {goal} |"
        )
    if any(r.get("contended") for r in results["resize_cost"] + results["latency"]):
        lines += ["", f"† other processes kept more than {CONTENDED} cores busy during this row."]
    return "\n".join(lines)


def _mark(row: dict[str, Any]) -> str:
    return " †" if row.get("contended") else ""


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both benchmarks under ``settings`` and return the results (no file written)."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    gate = QuietGate(settings.max_wait_s, settings.total_wait_s)
    resize_rows: list[dict[str, Any]] = []
    for name in settings.resize_models:
        log(f"resize cost: {name}")
        resize_rows += resize_cost_rows(TRAIN_CASES[name], settings, gate)
    latency: list[dict[str, Any]] = []
    for name in settings.latency_models:
        log(f"latency: {name}")
        latency += latency_rows(name, settings, gate)
    command = "python -m benchmarks.core" + (" --quick" if settings.quick else "")
    if settings.threads != 1:
        command += f" --threads {settings.threads}"
    return {
        "machine": machine_info(settings.threads, settings.extra_goal_threads),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "quick": settings.quick,
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "wall_s": time.perf_counter() - started,
        "resize_cost": resize_rows,
        "latency": latency,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run the benchmark, write the JSON, print the Markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small models, few repetitions")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON path")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1; the goal batch is also timed on every core)",
    )
    parser.add_argument(
        "--tables", type=Path, default=None, help="only print the tables of an existing JSON"
    )
    args = parser.parse_args(argv)
    if args.tables is not None:
        results = json.loads(args.tables.read_text())
        print(markdown_tables(results))
        return results
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run(make_settings(args.quick, args.threads))
    finally:
        torch.set_num_threads(previous)
    write_json_atomic(results, args.out)
    print(markdown_tables(results))
    print(f"wrote {args.out} in {results['wall_s']:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
