"""Data sets that do not fit in memory: inputs read from a map-style dataset when indexed.

:class:`LazyInputs` stands where a split's input tensor stands (``data.x_train``): the
training loop indexes it with a batch's rows, evaluation with slices, and it reads only those
items (an ``ImageFolder``, a dataset of files, anything with ``__getitem__`` and ``__len__``).
The loop's batches, their order and its exact resume are the same as with tensors in memory;
only the reading is slower (one item at a time, in the training process). Labels are small and
are held as a tensor.

Example::

    from torchvision.datasets import ImageFolder   # or any map-style dataset
    data = dataset_splits(ImageFolder("train", transform), ImageFolder("val", transform))
    Trainer(model, data, method, config).fit()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import DataSplits


class LazyInputs:
    """The inputs of a map-style dataset, read on indexing (an int, a slice, a tensor of rows).

    ``dataset[i]`` may return the input alone or ``(input, label)``; inputs are tensors (or
    NumPy arrays) of one shape, floating ones read as the default float dtype (what a
    transform such as ``ToTensor`` gives). A transform that draws random numbers draws them
    from a stream of its own (seeded by ``seed``), so the run's gate draws and dropout are not
    shifted by it; those draws are not part of a checkpoint, so after a resume such a
    transform draws afresh.
    """

    def __init__(self, dataset: Any, rows: Sequence[int] | None = None, *, seed: int = 0,
                 _like: LazyInputs | None = None) -> None:
        self.dataset = dataset
        self.rows = list(range(len(dataset))) if rows is None else list(rows)
        if _like is not None:  # a view of another: same items, same stream
            self.shape = (len(self.rows), *_like.shape[1:])
            self.dtype, self._stream = _like.dtype, _like._stream
            return
        self._stream = torch.Generator().manual_seed(seed)
        first = self._read(self.rows[0]) if self.rows else torch.zeros(0)
        self.shape = (len(self.rows), *first.shape)
        self.dtype = first.dtype

    def _read(self, row: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._stream.get_state())
            item = self.dataset[row]
            self._stream.set_state(torch.get_rng_state())
        value = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(value, torch.Tensor) and not hasattr(value, "__array__"):
            raise TypeError(f"item {row} of the dataset holds a {type(value).__name__}, not a "
                            "tensor: give the dataset a transform that makes one (e.g. "
                            "torchvision's ToTensor())")
        value = torch.as_tensor(value)
        return value.to(torch.get_default_dtype()) if value.is_floating_point() else value

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            rows = self.rows[index]
            if index.step not in (None, 1):  # a rank's share: still read only when used
                return LazyInputs(self.dataset, rows, _like=self)
            return self._stack(rows)
        if isinstance(index, int) or (hasattr(index, "__index__") and not isinstance(
                index, torch.Tensor)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            return self._read(self.rows[int(index)])
        positions = torch.as_tensor(index).reshape(-1).tolist()
        return self._stack([self.rows[p] for p in positions])

    def _stack(self, rows: Sequence[int]) -> torch.Tensor:
        if not rows:
            return torch.zeros((0, *self.shape[1:]), dtype=self.dtype)
        return torch.stack([self._read(row) for row in rows])

    def load(self) -> torch.Tensor:
        """Every input, read into one tensor."""
        return self._stack(self.rows)

    def to(self, device: str | torch.device) -> LazyInputs:
        """Itself: a batch is read and moved to the device when it is used."""
        return self

    def numel(self) -> int:
        return len(self.rows) * int(torch.Size(self.shape[1:]).numel())

    def element_size(self) -> int:
        return 0  # none of it is held in memory


def labels_of(dataset: Any) -> torch.Tensor:
    """A dataset's labels as an int64 tensor (a regression's float targets stay float): its
    ``targets`` attribute (torchvision's datasets; a ``Subset``'s picked from its dataset's)
    when it has one, else read from ``dataset[i][1]`` once (every item, transforms
    included)."""
    targets = getattr(dataset, "targets", None)
    inner = getattr(dataset, "dataset", None)
    if targets is None and getattr(inner, "targets", None) is not None and hasattr(
            dataset, "indices"):
        targets = torch.as_tensor(inner.targets)[torch.as_tensor(list(dataset.indices))]
    if targets is None:
        targets = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    targets = torch.as_tensor(targets)
    if targets.is_floating_point():  # regression targets, one value or a row per example
        return targets.to(torch.get_default_dtype())
    return targets.to(torch.long).reshape(-1)


def dataset_splits(train: Any, val: Any, test: Any = None, *, num_classes: int | None = None,
                   name: str = "datasets") -> DataSplits:
    """Splits whose inputs are read from map-style datasets when a batch needs them.

    ``train``, ``val`` and ``test`` (optional) return ``(input, label)`` pairs; the test split
    is read once, at the end of training, as with any data.
    """
    splits = {"train": train, "val": val, "test": test}
    inputs, labels = {}, {}
    for split, dataset in splits.items():
        if dataset is None:
            inputs[split], labels[split] = LazyInputs([]), torch.zeros(0, dtype=torch.long)
            continue
        if len(dataset) == 0 and split != "test":
            raise ValueError(f"the {split} dataset is empty")
        inputs[split], labels[split] = LazyInputs(dataset), labels_of(dataset)
    if num_classes is not None:
        classes = num_classes
    elif labels["train"].is_floating_point():  # a regression: one output per target value
        classes = 1 if labels["train"].dim() == 1 else labels["train"].shape[1]
    else:
        classes = int(max(int(t.max()) for t in labels.values() if len(t))) + 1
    return DataSplits(name=name, x_train=inputs["train"], y_train=labels["train"],
                      x_val=inputs["val"], y_val=labels["val"], x_test=inputs["test"],
                      y_test=labels["test"], num_classes=classes,
                      input_shape=tuple(inputs["train"].shape[1:]))
