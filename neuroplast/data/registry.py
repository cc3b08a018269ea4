"""The single entry point, :func:`load_dataset`, and the list of data sets it knows."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from .base import DataError, DataSplits
from .cifar import load_cifar10
from .idx import SOURCES, load_idx_dataset
from .images import load_folder
from .moons import load_moons
from .tabular import load_csv, load_digits, load_npz
from .teacher import load_teacher

DATASETS: tuple[str, ...] = (
    "moons",
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "npz",
    "csv",
    "folder",
    "teacher",
)

# Spellings people commonly use for the same data sets.
_ALIASES = {
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "two-moons": "moons",
    "teacher-student": "teacher",
}

_NEEDS_PATH = {
    "cifar10": "a CIFAR-10 folder or archive",
    "npz": "an .npz file",
    "csv": "a .csv file",
    "folder": "an image folder or a tar archive of one",
}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float | None = None,
    download: bool = True,
    label_column: str | None = None,
    standardise: bool = True,
    regression: bool = False,
) -> DataSplits:
    """Load a data set as train / validation / test tensors.

    Args:
        name: one of :data:`DATASETS` (case and ``_``/``-`` do not matter).
        data_dir: where the data is. Unused by ``moons`` and ``digits``; for ``teacher`` the
            task's spec, e.g. ``"d=50,h=16,c=4,n=10000,noise=0.1,seed=3"`` (see
            :mod:`neuroplast.data.teacher`; default ``d=20,h=8,c=3,n=5000,noise=0,seed=0``);
            a folder for ``mnist``/``fashion-mnist`` (default ``<cache>/datasets/<name>``,
            the cache being ``$NEUROPLAST_CACHE`` or ``~/.cache/neuroplast``); a folder or
            archive for ``cifar10`` and ``folder``; the file itself for ``npz`` and ``csv``.
        seed: seeds the random validation split (and the moons points). Test splits cut from
            a single pool (digits, npz, csv, folder) use a fixed seed, so the test set is the
            same whatever ``seed`` is.
        val_fraction: fraction of the training data held out for validation. Default: 5000
            examples for MNIST, Fashion-MNIST and CIFAR-10; 20 % otherwise; half of the
            1000-point pool for moons.
        download: fetch missing MNIST / Fashion-MNIST files (only those data sets download).
        label_column: ``csv`` only: the column holding the labels.
        standardise: ``False`` keeps the inputs as scaled (images in [0, 1]), as some
            reference implementations train (NPN's MNIST scripts, for one).
        regression: ``npz`` only: ``y`` holds numbers to predict (float targets, one model
            output; train with ``loss="mse"``), not class labels.

    Images come out float32 ``(N, C, H, W)``, scaled to [0, 1] and (by default) standardised
    per channel with training-split statistics; tabular data is standardised per feature (moons
    stays raw). Raises :class:`DataError` with the problem and its fix when data is bad or missing.
    """
    key = _canonical(name)
    if val_fraction is not None and not (
        isinstance(val_fraction, numbers.Real)
        and 0.0 < val_fraction < 1.0
        and math.isfinite(val_fraction)
    ):
        raise DataError(
            f"val_fraction must be a number in (0, 1), got {val_fraction!r}: every method "
            "measures (and NPN expand, MetaNet and APoZ decide) on the held-out split")
    if label_column is not None and key != "csv":
        raise DataError(f"label_column is only used by the csv data set, not {key!r}")
    if regression and key != "npz":
        raise DataError(f"regression targets are read from an npz file's 'y' (--dataset npz); "
                        f"{key!r} holds class labels: train it with the cross-entropy loss")
    path = Path(data_dir).expanduser() if data_dir is not None else None

    if key == "moons":
        return load_moons(seed=seed, val_fraction=val_fraction)
    split = {"seed": seed, "val_fraction": val_fraction, "standardise": standardise}
    if key == "digits":
        return load_digits(**split)
    if key == "teacher":
        return load_teacher(data_dir, **split)
    if key in SOURCES:
        return load_idx_dataset(key, path, download=download, **split)
    if path is None:
        raise DataError(
            f"the {key} data set needs data_dir: the path of {_NEEDS_PATH[key]}, e.g. "
            f"load_dataset({key!r}, 'path/to/data')"
        )
    if key == "cifar10":
        return load_cifar10(path, **split)
    if key == "npz":
        return load_npz(path, regression=regression, **split)
    if key == "csv":
        return load_csv(path, label_column=label_column, **split)
    return load_folder(path, **split)
