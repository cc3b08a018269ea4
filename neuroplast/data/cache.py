"""On-disk cache of decoded images, so that slow sources (tens of thousands of JPEGs) are decoded
once.

Each source gets a directory ``<cache root>/images/<name>-<hash>/`` holding one ``.npy`` file
per array and a ``meta.json`` written last: a directory without ``meta.json`` is an interrupted
write and is simply rebuilt. The hash covers the source's absolute path, size and modification
time, so editing or replacing the source starts a fresh entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .base import RawImages

# Bump when the cached layout or decoding changes, so old entries are not reused.
CACHE_VERSION = 1

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_root() -> Path:
    """The cache directory: ``$NEUROPLAST_CACHE``, else ``~/.cache/neuroplast``."""
    configured = os.environ.get("NEUROPLAST_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "neuroplast"


def entry_dir(source: Path, fingerprint: str) -> Path:
    """Where the cache entry for ``source`` with the given content fingerprint lives."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{fingerprint}".encode()).hexdigest()[:20]
    # Keep a readable prefix so people can tell entries apart when cleaning the cache by hand.
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[:40] or "source"
    return cache_root() / "images" / f"{label}-{digest}"


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    # Write next to the target and rename: readers never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(directory: Path) -> RawImages | None:
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        arrays = {
            name: np.load(directory / f"{name}.npy", allow_pickle=False)
            for name in _ARRAYS
            if name in meta["arrays"]
        }
        return RawImages(
            x_train=arrays["x_train"],
            y_train=arrays["y_train"],
            x_test=arrays.get("x_test"),
            y_test=arrays.get("y_test"),
            class_names=list(meta["class_names"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged entry: rebuild it


def _write(directory: Path, raw: RawImages, source: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    present = [name for name in _ARRAYS if getattr(raw, name) is not None]
    for name in present:
        array = getattr(raw, name)
        _write_atomic(directory / f"{name}.npy", lambda h, a=array: np.save(h, a))
    meta = {"source": str(source), "arrays": present, "class_names": raw.class_names}
    text = json.dumps(meta, indent=1).encode("utf-8")
    _write_atomic(directory / "meta.json", lambda h: h.write(text))


def load_or_build(source: Path, fingerprint: str, build: Callable[[], RawImages]) -> RawImages:
    """Return the cached arrays for ``source``, or ``build()`` them and cache the result.

    A cache that cannot be written (read-only home, full disk) only costs speed: it warns and
    returns the freshly built arrays.
    """
    directory = entry_dir(source, fingerprint)
    cached = _read(directory)
    if cached is not None:
        return cached
    raw = build()
    try:
        _write(directory, raw, source)
    except OSError as exc:
        warnings.warn(
            f"could not cache decoded images in {directory} ({exc}); they will be decoded again "
            "next time. Set NEUROPLAST_CACHE to a writable directory to fix this.",
            stacklevel=2,
        )
    return raw
