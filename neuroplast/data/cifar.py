"""CIFAR-10 in the forms people actually have it.

``data_dir`` may be any of:

* the original python release: a folder ``cifar-10-batches-py/`` (or that folder itself) with
  ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``;
* the original binary release: ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` .. and
  ``test_batch.bin``;
* an image folder ``train/<class>/*.png|jpg`` + ``test/<class>/*``;
* a tar archive (``.tar``, ``.tar.gz`` ...) holding any of the above, given directly or as the
  only archive inside the folder ``data_dir``.

The python release is a set of pickles. Unpickling can run arbitrary code, so only load batch
files you obtained from a source you trust (the official site, your own copy).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import DataError, DataSplits, RawImages
from .images import (
    ARCHIVE_SUFFIXES,
    LAYOUT_HELP,
    decode_layout,
    finish_images,
    is_archive,
    load_image_source,
    read_archive,
)

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCH = "test_batch"
_PIXELS = 3 * 32 * 32
_BATCH_FILES = frozenset(
    [*_TRAIN_BATCHES, _TEST_BATCH, "batches.meta"]
    + [f"{n}.bin" for n in (*_TRAIN_BATCHES, _TEST_BATCH)]
    + ["batches.meta.txt"]
)
HELP = (
    "CIFAR-10 is available from https://www.cs.toronto.edu/~kriz/cifar.html: pass the "
    "downloaded cifar-10-python.tar.gz (or the folder it extracts to) as data_dir; an image "
    "folder train/<class>/*, test/<class>/* or a tar archive of one works too"
)

# A getter returns a batch file's bytes by base name, or None when the file is absent.
Getter = Callable[[str], bytes | None]


def _corrupt(where: str, problem: str) -> DataError:
    return DataError(
        f"{where} is corrupt: {problem}. Delete it and download CIFAR-10 again. {HELP}"
    )


def parse_python_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels from one pickled batch of the python release."""
    try:
        batch = pickle.loads(data, encoding="bytes")  # the official format is a pickle
    except Exception as exc:  # unpickling bad bytes can raise almost anything
        raise _corrupt(where, f"cannot unpickle it ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise _corrupt(where, "it is not a dict with b'data' and b'labels'")
    pixels = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
        raise _corrupt(where, f"b'data' is {pixels.dtype} {pixels.shape}, expected uint8 N x 3072")
    return _checked(pixels, labels, where)


def parse_binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from one batch of the binary release: records of 1 label + 3072 bytes."""
    if len(data) == 0 or len(data) % (_PIXELS + 1):
        raise _corrupt(where, f"its size {len(data)} is not a multiple of {_PIXELS + 1} bytes")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _PIXELS + 1)
    return _checked(records[:, 1:], records[:, 0], where)


def _checked(pixels: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if labels.ndim != 1 or len(labels) != len(pixels):
        raise _corrupt(where, f"{len(pixels)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise _corrupt(where, f"labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    return pixels.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(get: Getter, binary: bool) -> list[str]:
    # The meta file only restates the well-known class names, so a missing one is not an error.
    meta = get("batches.meta.txt" if binary else "batches.meta")
    try:
        if binary and meta is not None:
            names = [line.strip() for line in meta.decode("utf-8").splitlines() if line.strip()]
        elif meta is not None:
            names = [
                n.decode("utf-8") for n in pickle.loads(meta, encoding="bytes")[b"label_names"]
            ]
        else:
            names = []
    except Exception:  # a damaged meta file: fall back to the standard names
        names = []
    return names if len(names) == len(CIFAR10_CLASSES) else list(CIFAR10_CLASSES)


def read_batches(get: Getter, source: str, binary: bool) -> RawImages:
    """Assemble the five training batches and the test batch of either original release."""
    suffix = ".bin" if binary else ""
    parse = parse_binary_batch if binary else parse_python_batch
    parts = []
    for name in [*_TRAIN_BATCHES, _TEST_BATCH]:
        data = get(name + suffix)
        if data is None:
            raise DataError(f"{source}: CIFAR-10 batch file {name + suffix} is missing. {HELP}")
        parts.append(parse(data, f"{name + suffix} in {source}"))
    return RawImages(
        x_train=np.concatenate([x for x, _ in parts[:-1]]),
        y_train=np.concatenate([y for _, y in parts[:-1]]),
        x_test=parts[-1][0],
        y_test=parts[-1][1],
        class_names=_class_names(get, binary),
    )


def _dir_getter(folder: Path) -> Getter:
    def get(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.is_file() else None

    return get


def _from_archive(path: Path) -> RawImages:
    members = read_archive(path, also=lambda name: name in _BATCH_FILES)
    batches = {parts[-1]: data for parts, data in members.items() if parts[-1] in _BATCH_FILES}
    for binary, marker in ((False, "data_batch_1"), (True, "data_batch_1.bin")):
        if marker in batches:
            return read_batches(batches.get, str(path), binary)
    images = {parts: data for parts, data in members.items() if parts[-1] not in _BATCH_FILES}
    return decode_layout(images, str(path))


def _locate(path: Path) -> tuple[str, Path]:
    """Which form of CIFAR-10 ``path`` holds: ("python" | "binary" | "images", where)."""
    if path.is_file():
        if is_archive(path):
            return "images", path
        raise DataError(f"{path} is a file but not a tar archive. {HELP}")
    if not path.is_dir():
        raise DataError(f"CIFAR-10 data_dir {path} does not exist. {HELP}")
    for kind, folder, marker in (
        ("python", "cifar-10-batches-py", "data_batch_1"),
        ("binary", "cifar-10-batches-bin", "data_batch_1.bin"),
    ):
        if (path / folder / marker).is_file():
            return kind, path / folder
        if (path / marker).is_file():
            return kind, path
    if (path / "train").is_dir():
        return "images", path
    archives = sorted(p for p in path.iterdir() if p.name.lower().endswith(ARCHIVE_SUFFIXES))
    if len(archives) == 1:
        return "images", archives[0]
    if archives:
        names = ", ".join(p.name for p in archives)
        raise DataError(f"{path} holds several archives ({names}); pass the one to use as data_dir")
    raise DataError(
        f"no CIFAR-10 data found in {path}: expected cifar-10-batches-py/, cifar-10-batches-bin/, "
        f"an image folder ({LAYOUT_HELP}) or a tar archive. {HELP}"
    )


def load_cifar10(
    data_dir: Path, *, seed: int, val_fraction: float | None, standardise: bool = True
) -> DataSplits:
    """Load CIFAR-10 from ``data_dir`` (see the module docstring for the accepted forms)."""
    kind, where = _locate(data_dir)
    if kind == "images":
        raw = load_image_source(where, from_archive=_from_archive)
    else:
        raw = read_batches(_dir_getter(where), str(where), binary=kind == "binary")
    return finish_images("cifar10", raw, seed=seed, val_fraction=val_fraction, default_val=5000,
                         standardise=standardise)
