"""Pieces every loader shares: the error type, the split container, and the helpers that cut
held-out splits and standardise inputs.

Loaders produce raw numpy arrays (uint8 pixels, or floats for tabular data) and hand them to
:func:`finish`, so the split and normalisation rules live in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

# The fraction held out when a data set has no official test or validation split.
DEFAULT_HOLDOUT_FRACTION = 0.2

# Test splits cut from a single pool (digits, npz, csv, folder) use this fixed seed rather than
# the caller's ``seed``: like MNIST's official test set, the test set then stays the same
# across runs with different seeds, so their test accuracies are comparable.
TEST_SPLIT_SEED = 20_240_601


class DataError(ValueError):
    """Bad or missing data: the message names the problem and the fix."""


# Below this many examples, a split's accuracy moves in steps of more than a point.
MEASURABLE_SPLIT = 100


@dataclass(repr=False)
class DataSplits:
    """A data set cut into train / validation / test tensors, ready for training.

    ``x_*`` are float32 tensors of shape ``(N, *input_shape)``; ``y_*`` are int64 class
    indices in ``0 .. num_classes - 1``. The validation split is held out from the training
    data; the test split is only for final evaluation.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None
    # How raw inputs (images scaled to [0, 1], or table values) became ``x_*``:
    # ``x = (raw - input_mean) / input_std`` per channel or feature; None when left raw.
    input_mean: list[float] | None = None
    input_std: list[float] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the six split tensors."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def _tensors(self) -> dict[str, torch.Tensor]:
        names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        return {name: getattr(self, name) for name in names}

    def to(self, device: str | torch.device) -> DataSplits:
        """A copy whose six split tensors live on ``device`` (the rest is shared).

        A :class:`~neuroplast.train.loop.Trainer` indexes its batches out of whatever device
        the data is on: data moved to the training device once (when it fits there) spares
        every batch its host-to-device copy.
        """
        moved = {name: t.to(device) for name, t in self._tensors().items()}
        return replace(self, **moved)

    def small_split_warnings(self, least: int = MEASURABLE_SPLIT) -> list[str]:
        """Why an accuracy measured on the validation or test split would say little.

        With ``n`` examples an accuracy moves in steps of ``100 / n`` points: under ``least``
        examples a step is over a point, and "100 %" may be a handful of lucky guesses.
        """
        messages = []
        for split, targets in (("validation", self.y_val), ("test", self.y_test)):
            if 0 < len(targets) < least and targets.is_floating_point():  # a regression's
                messages.append(
                    f"the {split} split holds only {len(targets)} examples: a loss measured "
                    "on it is noisy; more data (or, for validation, a larger --val-fraction) "
                    "makes it a measurement")
            elif 0 < len(targets) < least:
                messages.append(
                    f"the {split} split holds only {len(targets)} examples: an accuracy on it "
                    f"moves in steps of {100 / len(targets):.2g} points; more data (or, for "
                    "validation, a larger --val-fraction) makes it a measurement")
        return messages

    def __repr__(self) -> str:
        # The default dataclass repr would print every tensor; a summary is what one wants to see.
        return (
            f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


@dataclass
class RawImages:
    """Decoded images before splitting: uint8 arrays in ``(N, C, H, W)`` layout.

    ``x_test``/``y_test`` are ``None`` when the source has no test split of its own.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]


def permutation(n: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(n)`` from a ``torch.Generator`` seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator).numpy()


def split_off(
    x: np.ndarray, y: np.ndarray, n_holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into a kept part and a random held-out part of ``n_holdout`` examples.

    Returns ``(x_keep, y_keep, x_holdout, y_holdout)``. Both parts come out in permuted order,
    which also un-sorts sources stored class by class (image folders).
    """
    order = permutation(len(y), seed)
    holdout, keep = order[:n_holdout], order[n_holdout:]
    return x[keep], y[keep], x[holdout], y[holdout]


def split_test(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the fixed 20 % test split from a source that has none: ``(x_tr, y_tr, x_te, y_te)``."""
    n_test = round(DEFAULT_HOLDOUT_FRACTION * len(y))
    if n_test < 1 or n_test >= len(y):
        raise DataError(
            f"only {len(y)} examples: too few to hold out a 20% test split; "
            "supply more data or a separate test set"
        )
    return split_off(x, y, n_test, TEST_SPLIT_SEED)


def val_size(n_train: int, val_fraction: float | None, default_count: int | None = None) -> int:
    """How many training examples to hold out for validation.

    ``val_fraction`` wins when given. Otherwise 20 %, capped at ``default_count`` (5000 for
    MNIST and CIFAR-10, which gives the customary 55000/5000 and 45000/5000 splits, while tiny
    copies of those formats still get a proportionate split).
    """
    if val_fraction is not None:
        n_val = round(val_fraction * n_train)
    else:
        n_val = round(DEFAULT_HOLDOUT_FRACTION * n_train)
        if default_count is not None:
            n_val = min(default_count, n_val)
    if n_val < 1:
        raise DataError(
            f"a validation fraction of {val_fraction} holds out no example of {n_train}; "
            "use a larger val_fraction"
        )
    if n_val >= n_train:
        raise DataError(
            f"a validation split of {n_val} leaves no training data out of {n_train} examples; "
            "use a smaller val_fraction or more data"
        )
    return n_val


def encode_labels(*label_arrays: Sequence | np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Map arbitrary labels (integers or strings) to class indices ``0 .. C-1``.

    Classes are ordered numerically when every label is a number, else as strings, and the
    class names are the original labels as strings. All arrays share one mapping.
    """
    as_str = [np.asarray([str(v) for v in np.asarray(a).tolist()]) for a in label_arrays]
    names = sorted(set(np.concatenate(as_str).tolist()))
    try:
        names.sort(key=float)
    except ValueError:
        pass  # not all numeric: keep the string order
    index = {name: i for i, name in enumerate(names)}
    encoded = [np.fromiter((index[v] for v in a), dtype=np.int64, count=len(a)) for a in as_str]
    return encoded, names


def _to_tensor(x: np.ndarray, scale: float) -> torch.Tensor:
    # Always a fresh copy: the in-place normalisation below must never write into the caller's
    # arrays, and read-only buffers (np.frombuffer) cannot be shared with torch anyway.
    tensor = torch.from_numpy(np.array(x, dtype=np.float32))
    if scale != 1.0:
        tensor.div_(scale)
    return tensor


def finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    class_names: list[str] | None,
    seed: int,
    n_val: int,
    scale: float = 1.0,
    standardise: bool = True,
    regression: bool = False,
) -> DataSplits:
    """Hold out the validation split, convert to tensors and standardise (``regression``:
    the targets are float values, not class indices).

    ``x`` arrays are ``(N, C, H, W)`` images or ``(N, F)`` tables; dimension 1 (channel or
    feature) gets its own mean and standard deviation, computed on the final training split
    only and applied unchanged to validation and test. ``scale`` divides raw values first
    (255 for uint8 pixels), so images pass through [0, 1] as documented.
    """
    x_tr, y_tr, x_val, y_val = split_off(x_train, y_train, n_val, seed)
    tensors = [_to_tensor(x, scale) for x in (x_tr, x_val, x_test)]
    mean = std = None
    if standardise:
        reduce_dims = tuple(d for d in range(tensors[0].ndim) if d != 1)
        std, mean = torch.std_mean(tensors[0], dim=reduce_dims, correction=0, keepdim=True)
        # A constant channel/feature carries no information; dividing by ~0 would blow it up.
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        for tensor in tensors:
            tensor.sub_(mean).div_(std)
    kind = np.float32 if regression else np.int64
    labels = [torch.from_numpy(np.asarray(y, dtype=kind).copy()) for y in (y_tr, y_val, y_test)]
    for y in labels if not regression else ():
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{name}: labels outside 0..{num_classes - 1}; the data is corrupt")
    return DataSplits(
        name=name,
        x_train=tensors[0],
        y_train=labels[0],
        x_val=tensors[1],
        y_val=labels[1],
        x_test=tensors[2],
        y_test=labels[2],
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        class_names=class_names,
        input_mean=None if mean is None else mean.reshape(-1).tolist(),
        input_std=None if std is None else std.reshape(-1).tolist(),
    )
