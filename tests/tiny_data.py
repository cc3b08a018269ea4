"""Tiny stand-ins, in the real file formats, for the data sets the docs' commands name.

``write_tiny_data(root)`` writes, in well under a second:

- ``root/mnist/`` and ``root/fashion-mnist/``: the four gzip IDX files, 200 train + 50 test
  images of 28x28 with a learnable mark per class;
- ``root/cifar10.tar.gz``: CIFAR-10's binary release (``cifar-10-batches-bin/``, five train
  batches of 40 images and a test batch of 50);
- ``root/my.csv`` (20 numeric features and a ``label`` column) and ``root/my.npz`` (``x``,
  ``y``), 300 rows, the shape of the README's own-data example;
- ``root/my-recipe.toml``: a recipe file that trains in a second (fixed MLP on the moons).
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_TRAIN, IDX_TEST = 200, 50
CIFAR_PER_BATCH, CIFAR_TEST = 40, 50
ROWS = 300
RECIPE = 'method = "fixed"\nmodel = "mlp"\nwidths = [8]\ndataset = "moons"\nepochs = 2\n'


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzip IDX file of uint8 values (magic 0x0000080N, big-endian sizes, the bytes)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def _marked(rng: np.random.Generator, count: int, shape: tuple[int, ...]):
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 60, (count, *shape))
    for image, label in zip(images, labels, strict=True):
        image[..., 2 * label + 4: 2 * label + 7, 4:24] = 250  # a learnable class mark
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_data(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("mnist", "fashion-mnist"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for prefix, count in (("train", IDX_TRAIN), ("t10k", IDX_TEST)):
            images, labels = _marked(rng, count, (28, 28))
            write_idx(root / name / f"{prefix}-images-idx3-ubyte.gz", images)
            write_idx(root / name / f"{prefix}-labels-idx1-ubyte.gz", labels)

    # The binary release: records of one label byte and 3 x 32 x 32 pixel bytes.
    with tarfile.open(root / "cifar10.tar.gz", "w:gz", compresslevel=1) as tar:
        batches = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in batches:
            count = CIFAR_TEST if name.startswith("test") else CIFAR_PER_BATCH
            images, labels = _marked(rng, count, (3, 32, 32))
            data = np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1).tobytes()
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))

    x = rng.normal(size=(ROWS, 20)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    np.savez(root / "my.npz", x=x, y=y)
    write_csv(root / "my.csv", x, y, "label")
    (root / "my-recipe.toml").write_text(RECIPE)
    return root


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, label_column: str) -> Path:
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + [label_column])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%g")
    return path
