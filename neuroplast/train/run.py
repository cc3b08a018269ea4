"""A run: data + model + method + trainer, and the directory it leaves behind.

Everything the command line does is a call here, so a Python user gets the same behaviour::

    from neuroplast.train.run import RunConfig, train_run
    summary = train_run(RunConfig(dataset="digits", model="mlp", widths=[32], epochs=5,
                                  out="runs/demo"))
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.check import check_unit_groups
from ..core.checkpoint import write_atomic
from ..data import DataSplits, load_dataset
from ..distributed import DistributedContext
from ..methods import build_method
from ..models import ACTIVATION_MODELS, build_model
from ..objective import objective
from .callbacks import Callback
from .loop import TrainConfig, Trainer

CONFIG_FILE = "config.json"
COMPLETE_OPTIONS = "method_options_complete"  # config.json holds every method option
SUMMARY_FILE = "summary.json"
RUN_FILES = (CONFIG_FILE, SUMMARY_FILE, "metrics.jsonl", "report.md", "widths.png", "curves.png",
             "params.png", "decision_boundary.png", "model.torchscript.pt", "model.onnx",
             "model.pt2", "model.safetensors", "model.json")
RUN_DIRS = ("checkpoint", "tensorboard")


class RunDirectoryError(ValueError):
    """The output directory holds another run, or is not a run directory."""


@dataclass
class RunConfig:
    """One experiment: what to train, on what, how, and where to write it."""

    method: str = "fixed"
    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    label_column: str | None = None  # csv only
    widths: list[int] | None = None
    activation: str | None = None  # the hidden layers' activation (mlp and lenet300 only)
    val_fraction: float | None = None
    standardise: bool = True  # False: inputs as scaled (images in [0, 1]), not standardised
    out: str | None = None
    overwrite: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    method_options: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    def run_dir(self) -> Path:
        """``out``, or ``runs/<dataset>-<model>-<method>-s<seed>``."""
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.dataset}-{self.model}-{self.method}-s{self.train.seed}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunConfig:
        values = dict(values)
        # An option config.json lacks (it held only the options typed, or the option is newer
        # than the run) keeps the value it had then: a default changed since must not change
        # what the run rebuilds.
        from ..methods import METHODS

        legacy = getattr(METHODS.get(values.get("method", "fixed")), "legacy_defaults", {})
        values["method_options"] = {**legacy, **(values.get("method_options") or {})}
        train_names = {f.name for f in fields(TrainConfig)}
        saved = values.get("train", {})
        train = TrainConfig(**{k: v for k, v in saved.items() if k in train_names})
        names = {f.name for f in fields(cls)} - {"train"}
        return cls(train=train, **{k: v for k, v in values.items() if k in names})


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a path that is not a directory, or that holds a run not to be replaced."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"output path {run_dir} exists and is not a directory")
    markers = (CONFIG_FILE, SUMMARY_FILE, "checkpoint")
    taken = [name for name in markers if (run_dir / name).exists()]
    if taken and not overwrite:
        raise RunDirectoryError(
            f"output directory {run_dir} already holds a run ({', '.join(taken)}): pass "
            f"--overwrite to replace it, `neuroplast resume {run_dir}` to continue it, or "
            "choose another --out"
        )


def _remove_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _clear_run_dir(run_dir: Path) -> None:
    _remove_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _discard_unstarted_run(run_dir: Path, created: bool) -> None:
    """Undo a run that failed before its first checkpoint: nothing in it could be resumed."""
    _remove_run_files(run_dir)
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _load_data(config: RunConfig) -> DataSplits:
    return load_dataset(config.dataset, config.data_dir, seed=config.train.seed,
                        val_fraction=config.val_fraction, standardise=config.standardise,
                        label_column=config.label_column,
                        regression=not objective(config.train.loss).classifies)


def _build(
    config: RunConfig,
    callbacks: Sequence[Callback] = (),
    distributed: DistributedContext | None = None,
    data: DataSplits | None = None,
) -> tuple[DataSplits, Trainer]:
    config.train.validate()
    if config.train.threads is not None:
        # Small models on a busy machine run far faster on fewer threads (no spin-waiting).
        torch.set_num_threads(config.train.threads)
    options: dict[str, Any] = {}
    if config.widths is not None:
        options["widths"] = list(config.widths)
    if config.activation is not None:  # checked before the data set loads
        if config.model not in ACTIVATION_MODELS:
            raise ValueError(f"--activation applies to the models {', '.join(ACTIVATION_MODELS)}"
                             f" (their hidden layers); {config.model} has fixed activations")
        options["activation"] = config.activation
    seed_everything(config.train.seed)
    if data is None:
        data = _load_data(config)
    model = build_model(config.model, data.input_shape, data.num_classes, **options)
    check_unit_groups(model, data.x_train[:2])  # a wrong register_block fails here, not later
    method = build_method(config.method, config.method_options)
    trainer = Trainer(model, data, method, config.train, run_dir=config.run_dir(),
                      callbacks=callbacks, distributed=distributed)
    return data, trainer


def train_run(
    config: RunConfig,
    callbacks: Sequence[Callback] = (),
    distributed: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train a new run into ``config.run_dir()``; returns the summary.

    ``callbacks`` are extra :class:`Callback` objects (logging, custom stopping) run after the
    method's own hooks. With ``distributed`` (see :func:`neuroplast.distributed.init_distributed`)
    this process is one rank of a data-parallel run; rank 0 writes the files.
    """
    run_dir = config.run_dir()
    # Validate everything cheap before touching the directory, so a typo loses nothing.
    config.train.validate()
    build_method(config.method, config.method_options)
    _check_run_dir(run_dir, config.overwrite)
    if distributed is not None:
        distributed.barrier()  # every rank has checked before rank 0 clears the directory
    is_main = distributed is None or distributed.is_main
    created = not run_dir.exists()
    cleared = False
    try:
        # Data and model first: a wrong --data-dir must not cost an --overwrite'd old run.
        data, trainer = _build(config, callbacks, distributed)
        if is_main:
            for message in data.small_split_warnings():
                print(f"neuroplast: warning: {message}", file=sys.stderr)
            _clear_run_dir(run_dir)
            cleared = True
            record = json.dumps(_config_record(config, data, trainer.method.options()),
                                indent=1).encode()
            write_atomic(run_dir / CONFIG_FILE, record)
        trainer.fit()
    except BaseException:
        # A run that failed before its first checkpoint (an option only the model can check,
        # a missing package, an interrupt) has nothing to resume: leave the directory reusable.
        if is_main and cleared and not (run_dir / "checkpoint").exists():
            _discard_unstarted_run(run_dir, created)
        raise
    summary = finish_run(config, trainer)
    if is_main and not (run_dir / "checkpoint").exists():  # stopped before anything was saved
        _discard_unstarted_run(run_dir, created)
    return summary


def _config_record(config: RunConfig, data: DataSplits, method_options: dict[str, Any]
                   ) -> dict[str, Any]:
    """What config.json holds: the configuration, plus what reloading the model needs.

    The data directory is stored absolute, so ``resume`` works from any directory; ``data``
    (shapes, classes, input standardisation) lets ``export`` and :func:`load_run_model`
    rebuild the model without the data set, on another machine.
    """
    record = config.to_json()
    # Every option the method ran with, typed or default, so a later default cannot change it.
    record["method_options"] = method_options
    record[COMPLETE_OPTIONS] = True
    if config.data_dir is not None:
        record["data_dir"] = str(Path(config.data_dir).expanduser().resolve())
    record["data"] = {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "input_mean": data.input_mean,
        "input_std": data.input_std,
    }
    return record


def read_data_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``data`` block of a run's config.json (None for runs made before it existed)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        record = json.loads(path.read_text()).get("data")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return record if isinstance(record, dict) and "input_shape" in record else None


def _shape_only_data(name: str, record: dict[str, Any]) -> DataSplits:
    """Empty splits with a run's input shape and classes: enough to rebuild its model."""
    shape = tuple(int(d) for d in record["input_shape"])
    x, y = torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64)
    return DataSplits(name, x, y, x, y, x, y, int(record["num_classes"]), shape,
                      class_names=record.get("class_names"),
                      input_mean=record.get("input_mean"), input_std=record.get("input_std"))


def read_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run directory was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a neuroplast run directory: no {CONFIG_FILE}")
    try:
        return RunConfig.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise RunDirectoryError(f"{path} is corrupt: {error}") from error


def resume_run(
    run_dir: str | Path,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
    distributed: DistributedContext | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Continue an interrupted run from its checkpoint to the planned number of epochs.

    The run may have been trained in one process or data-parallel; it continues with any
    number of ranks (``distributed``), since every rank's state is the same, on any
    ``device`` (default: the one it trained on; checkpoints hold CPU tensors) and with any
    number of CPU ``threads`` (default: the run's own setting).
    """
    config = read_config(run_dir)
    config.out = str(run_dir)
    if progress is not None:
        config.train.progress = progress
    if device is not None:
        config.train.device = device
    if threads is not None:  # how fast, not what: the run's config.json keeps its own setting
        config.train.threads = threads
    _, trainer = _build(config, callbacks, distributed)
    trainer.restore(Path(run_dir) / "checkpoint")
    if trainer.epoch >= config.train.epochs and not trainer.mid_epoch:
        raise RunDirectoryError(
            f"the run in {run_dir} already finished its {trainer.epoch} epochs; nothing to resume "
            f"(`neuroplast report {run_dir}` rewrites its report)"
        )
    trainer.fit()
    return finish_run(config, trainer)


def _finite(value: float | None) -> float | None:
    """A metric for summary.json: None where there is none (a regression's accuracy)."""
    return value if value is not None and math.isfinite(value) else None


def finish_run(config: RunConfig, trainer: Trainer) -> dict[str, Any]:
    """Write summary.json, the decision-boundary plot (2-D data) and the report (rank 0)."""
    run_dir = config.run_dir()
    last = trainer.history[-1] if trainer.history else {}
    summary = {
        "method": config.method,
        "model": config.model,
        "dataset": config.dataset,
        "seed": config.train.seed,
        "epochs": trainer.epoch,
        "planned_epochs": config.train.epochs,
        "test_accuracy": _finite(last.get("test_accuracy")),
        "test_loss": _finite(last.get("test_loss")),
        "val_accuracy": _finite(last.get("val_accuracy")),
        "layer_names": list(trainer.initial_widths),
        "layer_counts": list(trainer.method.width_meanings(trainer.model).values()),
        "initial_widths": list(trainer.initial_widths.values()),
        "final_widths": list(trainer.method.live_widths(trainer.model).values()),
        "params": last.get("params"),
        "macs": last.get("macs"),
        "train_seconds": trainer.train_seconds,
        "stopped_early": trainer.stopped_early,
        "ranks": 1 if trainer.distributed is None else trainer.distributed.world_size,
        "method_options": trainer.method.options(),
        "command": config.command,
    }
    if not trainer.is_main:
        return summary
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=1).encode())
    if config.dataset == "moons":
        _plot_moons(trainer, run_dir)
    from ..report import write_report

    write_report(run_dir)
    return summary


def _plot_moons(trainer: Trainer, run_dir: Path) -> None:
    from ..data.moons import moons_basis
    from ..report.plots import matplotlib_available, plot_decision_boundary

    if not matplotlib_available():
        return
    basis = moons_basis()
    model = trainer.model.eval()

    def predict(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inputs = torch.as_tensor(points, dtype=torch.float32) @ basis
            return torch.softmax(model(inputs.to(trainer.device)), dim=1).cpu().numpy()

    points = (trainer.data.x_test @ basis.T).numpy()
    plot_decision_boundary(predict, points, trainer.data.y_test.numpy(),
                           run_dir / "decision_boundary.png",
                           title=f"{trainer.method.name}: test points and decision boundary")


def export_run(
    run_dir: str | Path, fmt: str = "pt2", output: str | Path | None = None,
    standardise: bool = True,
) -> Path:
    """Export a run's final model, compacted; the file written (see
    :func:`neuroplast.export.export_run_model`, which also lists safetensors' JSON)."""
    from ..export import export_run_model

    return export_run_model(run_dir, fmt, output, standardise)[0]


def run_standardisation(run_dir: str | Path) -> tuple[list[float], list[float]] | None:
    """A run's input standardisation ``(mean, std)`` per channel or feature, None if raw.

    Runs made before config.json recorded it reload their data set to find it.
    """
    record = read_data_record(run_dir)
    if record is None:
        config = read_config(run_dir)
        data = _load_data(config)
        record = {"input_mean": data.input_mean, "input_std": data.input_std}
    if record.get("input_mean") is None:
        return None
    return list(record["input_mean"]), list(record["input_std"])


def load_run_model(
    run_dir: str | Path, select_inputs: bool = True
) -> tuple[nn.Module, tuple[int, ...]]:
    """A run's model as its last checkpoint holds it, on the CPU, and its input shape.

    The model is the one the method evaluates (``live_model``): for gated methods the compact
    plain network, live units only, in eval mode (call ``.train()`` to train it on). With
    ``select_inputs=False`` dead input features stay zero columns and the network keeps its
    structure, so ``neuroplast.prune_units`` / ``grow_units`` still work on it. It takes
    standardised inputs, as in training (:func:`run_standardisation` gives the statistics);
    the data set itself is not needed. Rebuilding
    the run seeds the global random generators with the run's seed and sets torch's thread
    count as the run did. Example::

        model, shape = load_run_model("runs/mnist-lenet300-npn-s0")
    """
    config = read_config(run_dir)
    config.out = str(run_dir)
    config.train.progress = False
    config.train.device = "cpu"  # what it returns loads anywhere, GPU-trained or not
    record = read_data_record(run_dir)  # runs made before it was recorded load their data
    known = None if record is None else _shape_only_data(config.dataset, record)
    data, trainer = _build(config, data=known)
    trainer.restore(Path(run_dir) / "checkpoint")
    return trainer.method.live_model(trainer.model, select_inputs=select_inputs), data.input_shape
