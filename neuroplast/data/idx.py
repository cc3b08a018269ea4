"""MNIST and Fashion-MNIST from their original IDX files, with an optional download.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Both data sets ship four of
them, usually gzip-compressed; uncompressed copies with the same names are accepted too.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from .base import DataError, DataSplits, finish, val_size
from .cache import cache_root

# IDX type codes (third magic byte) -> numpy dtype; multi-byte values are big-endian.
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions (count, rows, columns)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension (count)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Per network read; a dead network fails fast instead of hanging.
DOWNLOAD_TIMEOUT_S = 15.0
# Whole-file cap, against servers that trickle bytes slowly enough to dodge the read timeout.
DOWNLOAD_DEADLINE_S = 600.0


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX data set is published, the MD5 of each official .gz file, its classes."""

    url: str
    md5: dict[str, str]
    class_names: tuple[str, ...]


SOURCES = {
    "mnist": IdxSource(
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        class_names=tuple("0123456789"),
    ),
    "fashion-mnist": IdxSource(
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


class DownloadError(Exception):
    """A download failed (network, HTTP or checksum); the loader turns it into a DataError."""


def _corrupt(path: Path, problem: str, hint: str) -> DataError:
    return DataError(f"{path} is corrupt: {problem}. Delete it and download it again{hint}.")


def _read_bytes(path: Path, hint: str) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"not a complete gzip file ({exc})", hint) from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_idx(path: Path, magic: int | None = None, hint: str = "") -> np.ndarray:
    """Parse the IDX file at ``path`` (gzip-compressed if its name ends in ``.gz``).

    ``magic`` is the expected magic number, if any. Any mismatch between header and content
    raises :class:`DataError` naming the file; ``hint`` is appended to say where to re-download.
    The returned array is read-only (a view on the file's bytes).
    """
    data = _read_bytes(path, hint)
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is None or data[0] or data[1] or data[2] not in IDX_TYPES:
        raise _corrupt(path, f"bad magic number {data[:4].hex() or '(empty file)'}", hint)
    if magic is not None and found != magic:
        raise _corrupt(path, f"magic number 0x{found:08x}, expected 0x{magic:08x}", hint)
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, "truncated inside the header", hint)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[data[2]]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) < expected:
        raise _corrupt(
            path, f"truncated: its header {dims} needs {expected} bytes, it has {len(data)}", hint
        )
    if len(data) > expected:
        raise _corrupt(path, f"{len(data) - expected} unexpected bytes after the data", hint)
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def download_file(url: str, dest: Path, md5: str | None) -> None:
    """Download ``url`` to ``dest`` atomically, checking the MD5 when one is given.

    The file appears under its final name only once complete and verified, so an interrupted
    download never leaves a half file that later looks corrupt. Raises :class:`DownloadError`.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
        deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                if time.monotonic() > deadline:
                    raise DownloadError(f"gave up after {DOWNLOAD_DEADLINE_S:.0f} s")
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")
        os.replace(tmp, dest)
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        raise DownloadError(str(exc) or type(exc).__name__) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _download_missing(directory: Path, source: IdxSource, stems: list[str]) -> str | None:
    """Try to fetch the missing files; returns None on success, else why it failed (and then
    removes the folder again if it made it and it is still empty)."""
    created = [parent for parent in (directory, *directory.parents) if not parent.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {directory}: {exc}"
    for stem in stems:
        filename = f"{stem}.gz"
        try:
            download_file(source.url + filename, directory / filename, source.md5.get(filename))
        except DownloadError as exc:
            for folder in created:  # innermost first
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            return f"{source.url}{filename}: {exc}"
    return None


def _missing(name: str, directory: Path, stem: str, download: bool, failure: str | None) -> str:
    source = SOURCES[name]
    where = f"in {directory}" if directory.is_dir() else f"in {directory} (no such folder)"
    if not directory.is_absolute():  # a relative --data-dir is read from where you run
        where += f", a path relative to the current directory {Path.cwd()}"
    files = ", ".join(f"{s}.gz" for s in FILES)
    message = (
        f"{name}: expected the file {stem}.gz (or uncompressed {stem}) {where}. Download the "
        f"four files {files} from {source.url} into that folder (or give the folder that "
        f"holds them: --data-dir DIR on the command line), or call "
        f"load_dataset({name!r}, data_dir, download=True) where a network is available to "
        "fetch them automatically."
    )
    if failure is not None:
        message += f" The automatic download failed: {failure}."
    elif not download:
        message += " (download=False, so no download was tried.)"
    return message


def load_idx_dataset(
    name: str, data_dir: Path | None, *, seed: int, val_fraction: float | None, download: bool,
    standardise: bool = True,
) -> DataSplits:
    """Load ``mnist`` or ``fashion-mnist`` from ``data_dir``, downloading missing files if asked.

    Without ``data_dir`` the files live in ``<cache root>/datasets/<name>``.
    """
    source = SOURCES[name]
    directory = data_dir if data_dir is not None else cache_root() / "datasets" / name
    if directory.is_file():
        raise DataError(f"{name}: --data-dir {directory} is a file; {name} is read from the "
                        f"folder holding its four files ({', '.join(f'{s}.gz' for s in FILES)})")
    missing = [stem for stem in FILES if _find(directory, stem) is None]
    failure = _download_missing(directory, source, missing) if missing and download else None
    paths: dict[str, Path] = {}
    for stem in FILES:
        found = _find(directory, stem)
        if found is None:
            raise DataError(_missing(name, directory, stem, download, failure))
        paths[stem] = found

    hint = f" from {source.url}"
    arrays = {
        stem: read_idx(path, IMAGES_MAGIC if "images" in stem else LABELS_MAGIC, hint)
        for stem, path in paths.items()
    }
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        n_images, n_labels = len(arrays[images]), len(arrays[labels])
        if n_images != n_labels:
            raise _corrupt(
                paths[labels],
                f"{n_labels} labels but {paths[images].name} has {n_images} images",
                hint,
            )
        if n_labels and int(arrays[labels].max()) >= len(source.class_names):
            raise _corrupt(
                paths[labels], f"label {int(arrays[labels].max())} is outside 0..9", hint
            )
    if arrays[TRAIN_IMAGES].shape[1:] != arrays[TEST_IMAGES].shape[1:]:
        raise DataError(
            f"{paths[TRAIN_IMAGES]} holds {arrays[TRAIN_IMAGES].shape[1:]} images but "
            f"{paths[TEST_IMAGES]} holds {arrays[TEST_IMAGES].shape[1:]}; they come from "
            "different data sets. Replace them with a matching set."
        )
    n_train = len(arrays[TRAIN_LABELS])
    return finish(
        name,
        arrays[TRAIN_IMAGES][:, None],  # add the single grey channel: (N, 1, H, W)
        arrays[TRAIN_LABELS],
        arrays[TEST_IMAGES][:, None],
        arrays[TEST_LABELS],
        num_classes=len(source.class_names),
        class_names=list(source.class_names),
        seed=seed,
        n_val=val_size(n_train, val_fraction, default_count=5000),
        scale=255.0,
        standardise=standardise,
    )
