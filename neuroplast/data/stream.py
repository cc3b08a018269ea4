"""Training data streamed from any iterable of batches (a ``DataLoader``, an ``IterableDataset``).

:func:`streamed_splits` makes the :class:`~neuroplast.data.DataSplits` a
:class:`~neuroplast.train.Trainer` takes from an iterable of ``(inputs, targets)`` batches that
need not fit in memory nor be indexable: a ``DataLoader`` over an image folder, a web-dataset
shard reader, a generator function's iterable. The loop iterates it once per epoch. Validation
and test splits are indexable (tensors, or map-style datasets read per batch): every decision
is taken on the whole validation split.

Resume: each epoch's pass starts from random numbers neuroplast seeds from the run's seed and
the epoch (a ``DataLoader``'s shuffling, its workers' seeds and its own ``generator``; a
``set_epoch`` of its sampler or dataset is called), and the stream draws torch's random numbers
from a stream of its own, so the run's gate draws and dropout are not shifted by it. A run
interrupted mid-epoch resumes by drawing and discarding the batches already trained on: exact
when the stream's batches depend only on those seeds (a ``DataLoader`` over a map-style dataset,
shuffled or not, with or without workers, but not ``persistent_workers``, whose workers keep
their random state across epochs). A stream that draws from Python's ``random`` or NumPy
resumes after the same number of batches, but not necessarily with the same ones. The stream
must start a new pass each time it is iterated (a ``DataLoader`` or a list does; a generator
does not, and is refused).

Example::

    loader = DataLoader(ImageFolder("train", transform), batch_size=128, shuffle=True)
    data = streamed_splits(loader, val=(x_val, y_val), num_classes=10)
    Trainer(model, data, method, config).fit()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .base import DataSplits
from .lazy import LazyInputs, labels_of

Split = tuple[torch.Tensor, torch.Tensor]


class BatchStream:
    """An iterable of ``(inputs, targets)`` batches standing where a split's input tensor
    stands (``data.x_train``); see the module's text for its seeding and resume."""

    streamed = True

    def __init__(self, batches: Iterable[Any], input_shape: tuple[int, ...]) -> None:
        if iter(batches) is batches:  # a generator or an iterator: one pass, then nothing
            raise TypeError("the training stream is an iterator, which yields its batches "
                            "once: pass something iterated afresh every epoch (a DataLoader, "
                            "a list, an object whose __iter__ starts a new pass)")
        self.batches = batches
        self.shape = (0, *input_shape)

    def __len__(self) -> int:
        """Batches per pass (what ``len()`` of the iterable says); 0 when it cannot say."""
        try:
            return len(self.batches)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def epoch(self, seed: int, epoch: int, skip: int = 0) -> Iterator[Split]:
        """The batches of ``epoch`` (from 1) of a run seeded ``seed``, the first ``skip``
        drawn and discarded."""
        for holder in (self.batches, getattr(self.batches, "sampler", None),
                       getattr(self.batches, "batch_sampler", None),
                       getattr(self.batches, "dataset", None)):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        empty = True
        for batch in self._pass(seed * 1_000_003 + epoch, skip):
            empty = False
            yield batch
        if empty and skip == 0:
            raise ValueError(f"the training stream yielded no batch in epoch {epoch}: it is "
                             "empty, or it does not start a new pass each time it is iterated")

    def examples(self, count: int, generator: torch.Generator) -> Split:
        """The first ``count`` examples of a pass seeded from ``generator``."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        inputs, targets, held = [], [], 0
        for x, y in self._pass(seed):
            inputs.append(x)
            targets.append(y)
            held += len(y)
            if held >= count:
                break
        if not inputs:
            raise ValueError("the training stream yielded no batch")
        return torch.cat(inputs)[:count], torch.cat(targets)[:count]

    def _pass(self, seed: int, skip: int = 0) -> Iterator[Split]:
        """One pass whose torch random numbers come from a generator seeded ``seed``."""
        generator = getattr(self.batches, "generator", None)
        if isinstance(generator, torch.Generator):  # a DataLoader's own: its shuffling
            generator.manual_seed(seed)
        state = torch.Generator().manual_seed(seed).get_state()
        iterator: Iterator[Any] | None = None
        index = 0
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                if iterator is None:  # a DataLoader draws its order and workers' seeds here
                    iterator = iter(self.batches)
                item = next(iterator, None)
                state = torch.get_rng_state()
            if item is None:
                return
            if index >= skip:
                yield _pair(item, index)
            index += 1

    def to(self, device: str | torch.device) -> BatchStream:
        """Itself: each batch is moved to the device when it is used."""
        return self

    def numel(self) -> int:
        return 0

    def element_size(self) -> int:
        return 0  # none of it is held in memory


def _pair(item: Any, index: int) -> Split:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"batch {index + 1} of the training stream is a "
                        f"{type(item).__name__}, not an (inputs, targets) pair: make the "
                        "iterable yield (x, y) batches")
    x, y = (value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            for value in item)
    # NumPy's float64 inputs and int32 labels, as PyTorch's layers and losses expect them
    if x.is_floating_point() and x.dtype != torch.get_default_dtype():
        x = x.to(torch.get_default_dtype())
    if not y.is_floating_point() and y.dtype != torch.long:
        y = y.long()
    return x, y


def streamed_splits(train: Iterable[Any], val: Split | Any, test: Split | Any = None, *,
                    num_classes: int | None = None, name: str = "stream") -> DataSplits:
    """Splits whose training batches are streamed from ``train`` (see the module's text).

    ``val`` and ``test`` are ``(inputs, targets)`` tensors or map-style datasets of ``(input,
    label)`` pairs (read a batch at a time). ``num_classes`` defaults to the largest validation
    label + 1 for class labels; regression targets (float) leave it at the targets' width.
    """
    splits: dict[str, tuple[Any, torch.Tensor]] = {}
    for split, given in (("val", val), ("test", test)):
        if given is None:
            splits[split] = (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        elif isinstance(given, (tuple, list)) and len(given) == 2:
            splits[split] = (torch.as_tensor(given[0]), torch.as_tensor(given[1]))
        else:
            splits[split] = (LazyInputs(given), labels_of(given))
    x_val, y_val = splits["val"]
    if len(y_val) == 0:
        raise ValueError("a streamed run needs a validation split: every sizing decision is "
                         "taken on it")
    input_shape = tuple(x_val.shape[1:])
    if num_classes is None:
        num_classes = (int(y_val.max()) + 1 if not y_val.is_floating_point()
                       else (1 if y_val.dim() == 1 else y_val.shape[1]))
    return DataSplits(name=name, x_train=BatchStream(train, input_shape),
                      y_train=y_val[:0], x_val=x_val, y_val=y_val, x_test=splits["test"][0],
                      y_test=splits["test"][1], num_classes=num_classes,
                      input_shape=input_shape)
