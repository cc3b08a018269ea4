"""Data sets as ready-to-train tensors: ``load_dataset(name, data_dir)`` -> :class:`DataSplits`.

Built in: the NPN paper's 100-D two moons, scikit-learn's digits, MNIST, Fashion-MNIST and
CIFAR-10 (original files, image folders or tar archives), generated teacher-student tasks
(``teacher``, the task's spec in ``data_dir``), plus user data as ``.npz``, ``.csv`` or an image
folder. Every problem with the data raises :class:`DataError`, whose message says
what is wrong and how to fix it.
"""

from .base import DataError, DataSplits
from .lazy import LazyInputs, dataset_splits
from .registry import DATASETS, load_dataset
from .stream import BatchStream, streamed_splits

__all__ = ["DATASETS", "BatchStream", "DataError", "DataSplits", "LazyInputs", "dataset_splits",
           "load_dataset", "streamed_splits"]
