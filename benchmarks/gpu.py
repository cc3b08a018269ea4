"""The GPU check (issue 29): CUDA tests, GPU-resident data, bf16 autocast, ResNet-56 NPN.

One command on a CUDA machine, under 8 minutes on one H100 (``benchmarks/gpu_check.sh`` wraps
it for the device machine, which starts bare and offline)::

    python -m benchmarks.gpu --prepare-data      # here: copy MNIST + CIFAR-10 into gpu-data/
    python -m benchmarks.gpu                     # there: every step on cuda, JSON under $OUT
    python -m benchmarks.gpu --device cpu --dry-run --out /tmp/g   # tiny synthetic data

Each step writes one JSON file under ``--out`` (default ``$OUT``, else ``runs/gpu-check``) as
soon as it finishes, so a run cut short keeps what it did:

* ``env.json``: torch, CUDA, the GPU, the float32 precision flags.
* ``tests.json``: pytest over tests/test_device.py and tests/test_gpu.py (their CUDA tests run).
* ``lenet5.json``: LeNet-5 NPN on MNIST (recipe npn-lenet5-mnist-sparse-cpu, 6 epochs) on
  the device with the data moved there once, then its first epochs again with the data copied
  to the device a batch at a time, and on the CPU: epoch times side by side.
* ``bf16.json``: that LeNet-5 run again under bf16 autocast against the fp32 one; ResNet-56 NPN
  training steps (stage 2, two passes a step) timed in fp32 and in bf16.
* ``resnet56.json``: ResNet-56 NPN (recipe npn-resnet56-cifar10-sparse, its schedule
  scaled to the epochs that fit in ``--resnet-seconds``) on CIFAR-10 with crop-flip
  augmentation on the device: accuracy, widths, epoch times.

``--dry-run`` writes tiny synthetic MNIST and CIFAR-10 files (same formats) and runs every step
at toy sizes: the tests check the whole script on the CPU in seconds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuroplast.cli import config_from_options, read_recipe
from neuroplast.data import DataSplits, load_dataset
from neuroplast.methods import build_method
from neuroplast.models import build_model
from neuroplast.train import Callback, Method, Trainer
from neuroplast.train.run import seed_everything

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GPU_DATA = ROOT / "gpu-data"  # ignored by git; carried to the device machine
LENET_RECIPE = "npn-lenet5-mnist-sparse-cpu"
RESNET_RECIPE = "npn-resnet56-cifar10-sparse"
RESNET_REFERENCE_EPOCHS = 220  # the recipe's schedule, scaled to the epochs that fit
TEST_FILES = ("tests/test_device.py", "tests/test_gpu.py")
STEPS = ("tests", "lenet5", "bf16", "resnet56")
CARRY_LIMIT = 64 * 2**20  # what the device tool carries: working tree plus ignored paths


@dataclass(frozen=True)
class Sizes:
    """How much each step trains; ``FULL`` on a GPU, ``DRY`` for the CPU dry run."""

    lenet_epochs: int = 6  # the -cpu recipe's schedule (k = inf, 7, 7, 7, inf, inf)
    compare_epochs: int = 3  # the host-copy and CPU runs stop after these epochs
    lenet_batch: int | None = None  # None: the recipe's
    resnet_model: str = "resnet56"
    resnet_batch: int | None = None
    resnet_seconds: float = 270.0  # the ResNet run's budget (epochs are planned to fit)
    resnet_max_epochs: int = RESNET_REFERENCE_EPOCHS
    probe_steps: int = 40  # ResNet steps timed per precision (after one warm-up pass)


FULL = Sizes()
DRY = Sizes(lenet_epochs=2, compare_epochs=1, lenet_batch=32, resnet_model="resnet20",
            resnet_batch=16, resnet_seconds=120.0, resnet_max_epochs=2, probe_steps=2)


# ------------------------------------------------------------------------------- pieces
def recipe_file(name: str) -> Path:
    """The installed recipe ``name`` (``neuroplast/recipes/``, else the older ``recipes/``)."""
    try:
        from neuroplast.recipes import recipe_path
    except ImportError:
        return ROOT / "recipes" / f"{name}.toml"
    return recipe_path(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochClock(Callback):
    """Per epoch, the seconds its training batches took (device work finished); optional stops
    after ``stop_after`` epochs, or when another epoch would overrun ``budget_seconds``."""

    def __init__(self, stop_after: int | None = None, budget_seconds: float | None = None):
        self.stop_after, self.budget_seconds = stop_after, budget_seconds
        self.train_seconds: list[float] = []
        self.stopped_by_budget = False
        self._started = self._epoch_started = 0.0
        self._batches = self._seen = 0

    def on_train_begin(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        synchronize(trainer.device)
        self._batches = math.ceil(len(trainer.data.y_train) / trainer.config.batch_size)
        self._seen = 0
        self._epoch_started = time.perf_counter()

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self._seen += 1
        if self._seen == self._batches:
            synchronize(trainer.device)
            self.train_seconds.append(time.perf_counter() - self._epoch_started)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if self.stop_after is not None and epoch >= self.stop_after:
            trainer.stop_training = True
        if self.budget_seconds is not None:
            now = time.perf_counter()
            over = now - self._started + (now - self._epoch_started) > self.budget_seconds
            if over and epoch < trainer.config.epochs:
                trainer.stop_training = self.stopped_by_budget = True


def use_autocast(method: Method, device_type: str, dtype: torch.dtype = torch.bfloat16) -> Method:
    """Make ``method``'s training passes run under ``torch.autocast`` (its backward, the
    optimizer step and evaluation stay outside, as autocast's documentation asks); the loss
    and logits come back as float32."""
    original = method.training_loss

    def training_loss(trainer: Any, inputs: torch.Tensor, targets: torch.Tensor):
        with torch.autocast(device_type, dtype=dtype):
            loss, logits = original(trainer, inputs, targets)
        return loss.float(), logits.float()

    method.training_loss = training_loss  # type: ignore[method-assign]
    return method


def on_device(data: DataSplits, device: torch.device, share: float = 0.25) -> DataSplits:
    """``data`` moved to ``device`` when it takes under ``share`` of the free memory there."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if data.nbytes > share * free:
            return data
    return data.to(device)


def subset(data: DataSplits, train: int, evaluate: int) -> DataSplits:
    """The first ``train`` training and ``evaluate`` validation and test examples."""
    return replace(data, x_train=data.x_train[:train], y_train=data.y_train[:train],
                   x_val=data.x_val[:evaluate], y_val=data.y_val[:evaluate],
                   x_test=data.x_test[:evaluate], y_test=data.y_test[:evaluate])


def train_recipe(
    recipe: str,
    data: DataSplits,
    device: torch.device,
    run_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    precision: str = "fp32",
    clock: EpochClock | None = None,
) -> tuple[Trainer, EpochClock]:
    """Train the recipe named ``recipe`` (with ``overrides``, keys as in a recipe) on ``data``
    on ``device``."""
    options = {**read_recipe(recipe_file(recipe)), **(overrides or {})}
    config = config_from_options(options)
    config.train.device, config.train.progress = str(device), False
    seed_everything(config.train.seed)
    model = build_model(config.model, data.input_shape, data.num_classes)
    method = build_method(config.method, config.method_options)
    if precision == "bf16":
        use_autocast(method, device.type)
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}: fp32 or bf16")
    clock = clock or EpochClock()
    trainer = Trainer(model, data, method, config.train, run_dir=run_dir, callbacks=[clock])
    trainer.fit()
    # A run at chance accuracy ("collapsed": a toy run, a short probe) still timed its epochs.
    if trainer.stopped_early and not trainer.stopped_early.startswith("collapsed"):
        raise RuntimeError(f"{recipe} on {device} stopped: {trainer.stopped_early}")
    return trainer, clock


def run_record(trainer: Trainer, clock: EpochClock, precision: str = "fp32") -> dict[str, Any]:
    """What a step reports of one training run."""
    history = trainer.history
    last = history[-1]
    return {
        "device": str(trainer.device),
        "data_device": str(trainer.data.x_train.device),
        "precision": precision,
        "epochs": trainer.epoch,
        "planned_epochs": trainer.config.epochs,
        "batch_size": trainer.config.batch_size,
        "epoch_seconds": [row["seconds"] for row in history],
        "train_seconds": clock.train_seconds,
        "test_accuracy": last["test_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "test_accuracy_curve": [row["test_accuracy"] for row in history],
        "initial_widths": dict(trainer.initial_widths),
        "widths": last["widths"],
        "params": last["params"],
        "macs": last["macs"],
        "stopped_by_budget": clock.stopped_by_budget,
        "stopped_early": trainer.stopped_early,
    }


def typical(values: Sequence[float]) -> float:
    """The median of ``values`` without the first (warm-up) one, when there is more than one."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def write_json(out: Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``out/name`` atomically."""
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------- data
def prepare_data(source: Path = SHARED, target: Path = GPU_DATA) -> dict[str, int]:
    """Copy the MNIST IDX files and the CIFAR-10 tarball into ``target`` (ignored by git) for
    the device tool to carry; returns each file's size and refuses more than it carries."""
    files = [Path("mnist") / name for name in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")] + [Path("cifar10-jpeg.tar.gz")]
    sizes = {str(name): (source / name).stat().st_size for name in files}
    if sum(sizes.values()) > CARRY_LIMIT // 2:
        raise SystemExit(f"the data ({sum(sizes.values()):,} bytes) would leave too little of "
                         f"the device tool's {CARRY_LIMIT:,} bytes for the working tree")
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    return sizes


def write_tiny_data(root: Path, seed: int = 0) -> Path:
    """Synthetic stand-ins in the real formats: ``root/mnist/`` (gzip IDX, 256 + 64 images of
    28x28) and ``root/cifar10-jpeg.tar.gz`` (JPEG class folders, 8 + 2 images per class)."""
    from PIL import Image

    rng = np.random.default_rng(seed)

    def idx(path: Path, array: np.ndarray) -> None:
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))

    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", 256), ("t10k", 64)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 60, (count, 28, 28))
        for image, label in zip(images, labels, strict=True):
            image[2 * label + 4 : 2 * label + 7, 4:24] = 250  # a learnable class mark
        idx(root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    archive = root / "cifar10-jpeg.tar.gz"
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
    with tarfile.open(archive, "w:gz") as tar:
        for split, per_class in (("train", 8), ("test", 2)):
            for label, name in enumerate(classes):
                for index in range(per_class):
                    pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                    pixels[:, :, label % 3] += np.uint8(40 + 15 * label)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="JPEG")
                    member = tarfile.TarInfo(f"{split}/{name}/{index:04d}.jpg")
                    member.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(member, buffer)
    return root


# ------------------------------------------------------------------------------- steps
def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the precision flags every timing depends on."""
    record: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "device": str(device), "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record.update(gpu=properties.name, gpu_memory_bytes=properties.total_memory,
                      capability=f"{properties.major}.{properties.minor}",
                      multiprocessors=properties.multi_processor_count,
                      cudnn=torch.backends.cudnn.version())
    return record


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """One ``{name, outcome, seconds, message}`` per test case of a pytest JUnit XML file."""
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome, message = kind, (element.get("message") or "")[:300]
                break
        cases.append({"name": f"{case.get('classname')}::{case.get('name')}",
                      "outcome": outcome, "seconds": float(case.get("time") or 0.0),
                      "message": message})
    return cases


def step_tests(only_cuda: bool, timeout: float = 300.0) -> dict[str, Any]:
    """pytest over :data:`TEST_FILES` (``only_cuda``: just the tests named for CUDA)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *TEST_FILES, *(["-k", "cuda"] if only_cuda else [])]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  check=False, timeout=timeout)
        except subprocess.TimeoutExpired as error:  # the other steps still run
            done = subprocess.CompletedProcess(command, -1, str(error.stdout or ""),
                                               f"timed out after {timeout:g} s")
        cases = parse_junit(junit) if junit.exists() else []
    counts = {kind: sum(case["outcome"] == kind for case in cases)
              for kind in ("passed", "failure", "error", "skipped")}
    return {
        "command": " ".join(command[2:]).replace(f"--junitxml={junit} ", ""),
        "returncode": done.returncode, "seconds": time.perf_counter() - started,
        "passed": counts["passed"], "failed": counts["failure"], "errors": counts["error"],
        "skipped": counts["skipped"], "cuda_tests_ran": sum(
            "cuda" in case["name"].lower() and case["outcome"] != "skipped" for case in cases),
        "cases": cases, "output_tail": (done.stdout + done.stderr)[-4000:],
    }


def step_lenet5(mnist: DataSplits, device: torch.device, sizes: Sizes, work: Path,
                ) -> tuple[dict[str, Any], tuple[Trainer, EpochClock]]:
    """LeNet-5 NPN with the data on the device, with per-batch host copies, and on the CPU."""
    overrides: dict[str, Any] = {"epochs": sizes.lenet_epochs}
    if sizes.lenet_batch is not None:
        overrides["batch_size"] = sizes.lenet_batch
    resident = on_device(mnist, device)
    runs, trainers = {}, {}
    plan = [("resident", device, resident, None), ("host", device, mnist, sizes.compare_epochs),
            ("cpu", torch.device("cpu"), mnist, sizes.compare_epochs)]
    for label, where, data, stop in plan:
        trainer, clock = train_recipe(LENET_RECIPE, data, where, work / f"lenet5-{label}",
                                      overrides=overrides, clock=EpochClock(stop_after=stop))
        runs[label] = run_record(trainer, clock)
        trainers[label] = (trainer, clock)
    compared = sizes.compare_epochs
    side = {label: run["epoch_seconds"][:compared] for label, run in runs.items()}
    record = {
        "recipe": LENET_RECIPE, "overrides": overrides,
        "data_bytes": mnist.nbytes, "data_on_device": str(resident.x_train.device),
        "per_batch_host_copies": {"resident": resident.x_train.device.type == "cpu"
                                  and device.type != "cpu", "host": device.type != "cpu",
                                  "cpu": False},
        "cpu_threads": torch.get_num_threads(),
        "epoch_seconds_side_by_side": side,
        "train_seconds_side_by_side": {label: run["train_seconds"][:compared]
                                       for label, run in runs.items()},
        "typical_epoch_seconds": {label: typical(values) for label, values in side.items()},
        "speedup_vs_cpu": typical(side["cpu"]) / typical(side["resident"]),
        "speedup_resident_vs_host": typical(side["host"]) / typical(side["resident"]),
        "note": "epoch seconds include evaluation (validation and test), the parameter count "
                "and the checkpoint; train seconds are the batches alone; 'typical' is the "
                "median without epoch 1 (warm-up) when there are several",
        "runs": runs,
    }
    return record, trainers["resident"]


def step_probe(cifar: DataSplits, device: torch.device, sizes: Sizes, work: Path,
               precision: str) -> dict[str, Any]:
    """Seconds per ResNet NPN training step in stage 2 (k = 7: main and antithetic pass)."""
    batch = sizes.resnet_batch or int(read_recipe(recipe_file(RESNET_RECIPE))["batch_size"])
    steps = min(sizes.probe_steps, len(cifar.y_train) // batch)
    data = on_device(subset(cifar, steps * batch, batch), device)
    overrides = {"model": sizes.resnet_model, "epochs": 2, "batch_size": batch,
                 "npn_k_schedule": "1:7"}
    trainer, clock = train_recipe(RESNET_RECIPE, data, device, work / f"probe-{precision}",
                                  overrides=overrides, precision=precision)
    seconds = clock.train_seconds[-1] / steps  # epoch 1 warms up (cuDNN autotuning)
    return {"precision": precision, "model": sizes.resnet_model, "batch_size": batch,
            "steps": steps, "seconds_per_step": seconds, "images_per_second": batch / seconds,
            "warmup_epoch_seconds": clock.train_seconds[0],
            "final_train_loss": trainer.history[-1]["train_loss"]}


def step_bf16(mnist: DataSplits, cifar: DataSplits | None, device: torch.device, sizes: Sizes,
              work: Path, fp32: tuple[Trainer, EpochClock] | None) -> dict[str, Any]:
    """LeNet-5 NPN under bf16 autocast against fp32; ResNet steps per second in each."""
    overrides: dict[str, Any] = {"epochs": sizes.lenet_epochs}
    if sizes.lenet_batch is not None:
        overrides["batch_size"] = sizes.lenet_batch
    resident = fp32[0].data if fp32 is not None else on_device(mnist, device)
    if fp32 is None:
        fp32 = train_recipe(LENET_RECIPE, resident, device, work / "lenet5-fp32",
                            overrides=overrides)
    bf16 = train_recipe(LENET_RECIPE, resident, device, work / "lenet5-bf16",
                        overrides=overrides, precision="bf16")
    runs = {"fp32": run_record(*fp32), "bf16": run_record(*bf16, precision="bf16")}
    record: dict[str, Any] = {
        "autocast": {"device_type": device.type, "dtype": "bfloat16",
                     "scope": "the method's training passes (forward, loss, ARM's antithetic "
                              "pass); backward, optimizer and evaluation outside"},
        "lenet5": {
            "recipe": LENET_RECIPE, "overrides": overrides,
            "test_accuracy": {k: run["test_accuracy"] for k, run in runs.items()},
            "accuracy_difference": runs["bf16"]["test_accuracy"] - runs["fp32"]["test_accuracy"],
            "widths": {k: run["widths"] for k, run in runs.items()},
            "typical_epoch_seconds": {k: typical(run["epoch_seconds"]) for k, run in runs.items()},
            "typical_train_seconds": {k: typical(run["train_seconds"]) for k, run in runs.items()},
            "runs": runs,
        },
    }
    if cifar is not None:
        probes = {p: step_probe(cifar, device, sizes, work, p) for p in ("fp32", "bf16")}
        record["resnet_steps"] = {
            **probes, "speedup_bf16": probes["fp32"]["seconds_per_step"]
            / probes["bf16"]["seconds_per_step"]}
    return record


def plan_resnet_epochs(seconds_per_step: float, data: DataSplits, batch: int,
                       budget: float, most: int) -> int:
    """Epochs of the ResNet run that fit ``budget`` seconds, from a stage-2 step time (an
    upper bound: stages 1 and 3 take one pass a step); evaluation counted at a third of a
    step per batch, and a second per epoch for the rest (counts, checkpoint)."""
    batches = math.ceil(len(data.y_train) / batch)
    evaluated = math.ceil((len(data.y_val) + len(data.y_test)) / batch)
    epoch = seconds_per_step * (batches + evaluated / 3) + 1.0
    return max(1, min(most, int(budget // epoch)))


def step_resnet56(cifar: DataSplits, device: torch.device, sizes: Sizes, work: Path,
                  probe: dict[str, Any] | None) -> dict[str, Any]:
    """ResNet-56 NPN on CIFAR-10 for the epochs that fit the budget, data on the device."""
    resident = on_device(cifar, device)
    batch = sizes.resnet_batch or int(read_recipe(recipe_file(RESNET_RECIPE))["batch_size"])
    if probe is None:
        probe = step_probe(resident, device, sizes, work, "fp32")
    epochs = plan_resnet_epochs(probe["seconds_per_step"], resident, batch,
                                sizes.resnet_seconds, sizes.resnet_max_epochs)
    scale = epochs / RESNET_REFERENCE_EPOCHS
    milestones = sorted({max(1, round(scale * m)) for m in (60, 120, 180)})
    gate_lr = min(2e-2, 1e-3 / scale)  # as the -cpu recipe: phi's rate x (220 / epochs)
    overrides = {"model": sizes.resnet_model, "epochs": epochs, "batch_size": batch,
                 "lr_milestones": milestones, "npn_gate_lr": gate_lr}
    clock = EpochClock(budget_seconds=sizes.resnet_seconds)
    started = time.perf_counter()
    trainer, clock = train_recipe(RESNET_RECIPE, resident, device, work / "resnet56",
                                  overrides=overrides, clock=clock)
    run = run_record(trainer, clock)
    method = trainer.method
    return {
        "recipe": RESNET_RECIPE, "overrides": overrides,
        "budget_seconds": sizes.resnet_seconds, "seconds": time.perf_counter() - started,
        "planned_from_seconds_per_step": probe["seconds_per_step"],
        "k_schedule": [[start, k if math.isfinite(k) else "inf"]
                       for start, k in method.schedule(epochs)],
        "augment": trainer.config.augment, "augmented_on": str(resident.x_train.device),
        "data_on_device": str(resident.x_train.device), "data_bytes": cifar.nbytes,
        "typical_epoch_seconds": typical(run["epoch_seconds"]),
        "typical_train_seconds": typical(run["train_seconds"]),
        **{key: run[key] for key in ("epochs", "planned_epochs", "test_accuracy",
                                     "val_accuracy", "initial_widths", "widths", "params",
                                     "macs", "epoch_seconds", "train_seconds",
                                     "stopped_by_budget", "stopped_early")},
        "widths_curve": [row["widths"] for row in trainer.history],
        "test_accuracy_curve": run["test_accuracy_curve"],
    }


# ------------------------------------------------------------------------------- driver
def run(device: torch.device, sizes: Sizes, data_root: Path, out: Path, steps: Sequence[str],
        only_cuda_tests: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``steps`` and write their JSON files under ``out``; returns every record."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records: dict[str, Any] = {"env": environment(device)}
    write_json(out, "env.json", records["env"])
    say(json.dumps(records["env"]))
    if "tests" in steps:
        records["tests"] = step_tests(only_cuda_tests)
        write_json(out, "tests.json", records["tests"])
        tests = records["tests"]
        say(f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} "
            f"errors, {tests['skipped']} skipped ({tests['cuda_tests_ran']} CUDA tests ran) "
            f"in {tests['seconds']:.0f} s")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (NPN's mask mode keeps them)
        records["env"] = environment(device)
        write_json(out, "env.json", records["env"])
    mnist = cifar = None
    if {"lenet5", "bf16"} & set(steps):
        mnist = load_dataset("mnist", data_root / "mnist", download=False)
    if {"bf16", "resnet56"} & set(steps):
        cifar = load_dataset("cifar10", data_root / "cifar10-jpeg.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = None
        if "lenet5" in steps and mnist is not None:
            records["lenet5"], fp32 = step_lenet5(mnist, device, sizes, work)
            write_json(out, "lenet5.json", records["lenet5"])
            say("lenet5 epoch seconds " + json.dumps(
                records["lenet5"]["epoch_seconds_side_by_side"]) + " test accuracy "
                + json.dumps({k: r["test_accuracy"] for k, r in records["lenet5"]["runs"].items()}))
        if "bf16" in steps and mnist is not None:
            records["bf16"] = step_bf16(mnist, cifar, device, sizes, work, fp32)
            write_json(out, "bf16.json", records["bf16"])
            probes = records["bf16"].get("resnet_steps", {})
            rates = {p: probes[p]["images_per_second"] for p in ("fp32", "bf16") if p in probes}
            say("bf16 lenet5 test accuracy " + json.dumps(records["bf16"]["lenet5"][
                "test_accuracy"]) + " resnet images/s " + json.dumps(rates))
        if "resnet56" in steps and cifar is not None:
            probe = records.get("bf16", {}).get("resnet_steps", {}).get("fp32")
            records["resnet56"] = step_resnet56(cifar, device, sizes, work, probe)
            write_json(out, "resnet56.json", records["resnet56"])
            resnet = records["resnet56"]
            say(f"resnet56: {resnet['epochs']} epochs, test accuracy "
                f"{resnet['test_accuracy']:.4f}, widths {resnet['widths']}, "
                f"{resnet['typical_epoch_seconds']:.1f} s an epoch")
    say(f"done in {time.perf_counter() - started:.0f} s: {', '.join(sorted(records))} in {out}")
    return records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check",
                        help="folder for the JSON files (default $OUT, else runs/gpu-check)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding mnist/ and cifar10-jpeg.tar.gz (default gpu-data/ "
                             "when present, else ../shared/data)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--resnet-seconds", type=float, default=None,
                        help=f"the ResNet run's budget (default {FULL.resnet_seconds:g})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny synthetic data and toy sizes (seconds, on the CPU too)")
    parser.add_argument("--prepare-data", action="store_true",
                        help="copy the data from ../shared/data into gpu-data/ and stop")
    args = parser.parse_args(argv)
    if args.prepare_data:
        sizes_written = prepare_data()
        print(json.dumps({"copied_to": str(GPU_DATA), "bytes": sizes_written,
                          "total": sum(sizes_written.values())}, indent=1))
        return {}
    steps = [step for step in args.steps.split(",") if step]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {STEPS}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --dry-run)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = DRY if args.dry_run else FULL
    if args.resnet_seconds is not None:
        sizes = replace(sizes, resnet_seconds=args.resnet_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        if args.dry_run:
            data_root = write_tiny_data(Path(tmp) / "data")
            os.environ["NEUROPLAST_CACHE"] = str(Path(tmp) / "cache")  # not the user's cache
        else:
            data_root = args.data or (GPU_DATA if GPU_DATA.is_dir() else SHARED)
            needed = [data_root / "mnist", data_root / "cifar10-jpeg.tar.gz"]
            if set(steps) - {"tests"} and not all(path.exists() for path in needed):
                parser.error(f"no MNIST or CIFAR-10 in {data_root}: run `python -m "
                             "benchmarks.gpu --prepare-data` where ../shared/data exists and "
                             "carry gpu-data/, or pass --data")
        return run(device, sizes, data_root, Path(args.out), steps, only_cuda_tests=args.dry_run)


if __name__ == "__main__":
    main()
