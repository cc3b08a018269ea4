"""Image-folder data sets, on disk or inside a tar archive.

Accepted layouts (class names are the folder names, sorted alphabetically)::

    root/<class>/<image>                          # a 20 % test split is held out
    root/train/<class>/<image> + root/test/<class>/<image>

Archives are read member by member with :mod:`tarfile`, never extracted to disk. Single wrapper
folders that archives often add (``cifar10/train/...``) are skipped. Decoded pixels are cached
(see :mod:`neuroplast.data.cache`), because decoding tens of thousands of JPEGs takes a while.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import ModuleType

import numpy as np

from .base import DataError, DataSplits, RawImages, finish, split_test, val_size
from .cache import load_or_build

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Pillow modes that hold a single grey channel; everything else is converted to RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

Parts = tuple[str, ...]
LAYOUT_HELP = "expected <class>/<image> or train/<class>/<image> and test/<class>/<image>"


def pillow() -> ModuleType:
    """Import ``PIL.Image`` on first use, so Pillow is only needed for image data."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading image files needs Pillow: pip install pillow") from exc
    return Image


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one image to uint8: ``(H, W)`` for greyscale, ``(H, W, 3)`` for anything else."""
    image_module = pillow()
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.load()  # decode now, so a truncated file fails here with its name attached
            mode = "L" if image.mode in _GREY_MODES else "RGB"
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, bomb errors...)
        raise DataError(
            f"cannot read image {where}: {exc}. The file is corrupt or not an image; "
            "replace or delete it."
        ) from exc


def _skipped(parts: Parts) -> bool:
    # Hidden files and macOS resource forks ("._x.jpg", "__MACOSX/") are not images.
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _is_image(parts: Parts) -> bool:
    return not _skipped(parts) and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive (plain or compressed)."""
    if not path.is_file():
        return False
    return path.name.lower().endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path)


def list_image_dir(root: Path) -> dict[Parts, Path]:
    """All image files under ``root``, keyed by their path parts relative to ``root``."""
    files: dict[Parts, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skipped((d,))]
        relative = Path(dirpath).relative_to(root).parts
        for filename in filenames:
            parts = (*relative, filename)
            if _is_image(parts):
                files[parts] = Path(dirpath, filename)
    return files


def read_archive(path: Path, also: Callable[[str], bool] | None = None) -> dict[Parts, bytes]:
    """Read every image in a tar archive into memory in one sequential pass.

    Members whose base name ``also`` accepts are read too (CIFAR batch files). One pass matters:
    seeking backwards in a compressed tar means decompressing it again from the start.
    """
    members: dict[Parts, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("/", ".."))
                if not parts or _skipped(parts):
                    continue
                if _is_image(parts) or (also is not None and also(parts[-1])):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        members[parts] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"cannot read archive {path}: {exc}. It is truncated or corrupt; download it again."
        ) from exc
    return members


def group_by_split(paths: Iterable[Parts], source: str) -> tuple[dict[str, list[Parts]], list[str]]:
    """Sort image paths into ``{"train": [...], "test": [...]}`` and list the class names.

    Without a ``train/`` folder everything lands in ``"train"`` (no ``"test"`` key). Files are
    sorted, so the order inside a class follows the file names whatever the listing order.
    """
    ordered = sorted(paths)
    if not ordered:
        raise DataError(f"no images (png, jpg, ...) found in {source}; {LAYOUT_HELP}")
    # Skip single wrapper folders ("cifar10/train/cat/1.png"): strip leading parts while every
    # path shares them and they are not the layout's own train/test folders.
    skip = 0
    while (
        all(len(p) > skip + 2 for p in ordered)
        and len({p[skip] for p in ordered}) == 1
        and ordered[0][skip] not in ("train", "test")
    ):
        skip += 1
    has_splits = any(len(p) == skip + 3 and p[skip] == "train" for p in ordered)
    groups: dict[str, list[Parts]] = {"train": [], "test": []} if has_splits else {"train": []}
    for parts in ordered:
        relative = parts[skip:]
        if has_splits and relative[0] not in groups:
            continue  # another top-level folder (say val/): not part of the layout
        if len(relative) != (3 if has_splits else 2):
            raise DataError(
                f"{source}: image {'/'.join(parts)} is not directly inside a class folder; "
                f"{LAYOUT_HELP}"
            )
        groups[relative[0] if has_splits else "train"].append(parts)
    if not groups.get("test"):
        groups.pop("test", None)
    if not groups["train"]:
        raise DataError(f"{source}: the train/ folder holds no images; {LAYOUT_HELP}")
    class_names = sorted({p[-2] for group in groups.values() for p in group})
    return groups, class_names


def decode_layout(files: Mapping[Parts, bytes | Path], source: str) -> RawImages:
    """Decode an image layout (file parts -> bytes or path) into uint8 ``(N, C, H, W)`` arrays.

    All images must share one size. If every image is greyscale the result has one channel;
    otherwise greyscale images are repeated into three channels so all match.
    """
    groups, class_names = group_by_split(files, source)
    class_index = {name: i for i, name in enumerate(class_names)}
    decoded: dict[str, list[np.ndarray]] = {}
    first: tuple[tuple[int, ...], str] | None = None
    for split, paths in groups.items():
        decoded[split] = []
        for parts in paths:
            item = files[parts]
            where = f"{'/'.join(parts)} in {source}" if isinstance(item, bytes) else str(item)
            data = item if isinstance(item, bytes) else _read_bytes(item)
            image = decode_image(data, where)
            if first is None:
                first = (image.shape[:2], where)
            elif image.shape[:2] != first[0]:
                raise DataError(
                    f"image {where} is {_size(image.shape)} but {first[1]} is {_size(first[0])}; "
                    "all images must share one size: resize them first"
                )
            decoded[split].append(image)
    colour = any(image.ndim == 3 for images in decoded.values() for image in images)
    arrays = {split: _stack(images, colour) for split, images in decoded.items()}
    labels = {
        split: np.array([class_index[p[-2]] for p in paths], dtype=np.int64)
        for split, paths in groups.items()
    }
    return RawImages(
        x_train=arrays["train"],
        y_train=labels["train"],
        x_test=arrays.get("test"),
        y_test=labels.get("test"),
        class_names=class_names,
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} (width x height)"


def _stack(images: list[np.ndarray], colour: bool) -> np.ndarray:
    if colour:
        images = [img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2) for img in images]
        return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return np.stack(images)[:, None]


def images_from_archive(path: Path) -> RawImages:
    """Decode the image layout stored in a tar archive."""
    return decode_layout(read_archive(path), str(path))


def fingerprint(source: Path) -> str:
    """A string that changes whenever the source's content may have changed (for the cache)."""
    source = source.resolve()
    if source.is_file():
        stat = source.stat()
        return f"file\n{source}\n{stat.st_size}\n{stat.st_mtime_ns}"
    # A directory's own mtime misses edits inside class folders, so hash every image's stat.
    digest = hashlib.sha256()
    for parts, path in sorted(list_image_dir(source).items()):
        stat = path.stat()
        digest.update(f"{'/'.join(parts)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return f"dir\n{source}\n{digest.hexdigest()}"


def load_image_source(
    path: Path, from_archive: Callable[[Path], RawImages] = images_from_archive
) -> RawImages:
    """Decoded arrays for an image folder or archive at ``path``, through the cache."""
    if is_archive(path):
        return load_or_build(path, fingerprint(path), lambda: from_archive(path))
    if not path.is_dir():
        raise DataError(
            f"{path} does not exist or is neither a folder nor a tar archive; {LAYOUT_HELP}"
        )
    return load_or_build(
        path, fingerprint(path), lambda: decode_layout(list_image_dir(path), str(path))
    )


def finish_images(
    name: str,
    raw: RawImages,
    *,
    seed: int,
    val_fraction: float | None,
    default_val: int | None = None,
    standardise: bool = True,
) -> DataSplits:
    """Turn decoded uint8 images into :class:`DataSplits` (test split, val split, scaling)."""
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if x_test is None or y_test is None:
        x_train, y_train, x_test, y_test = split_test(x_train, y_train)
    return finish(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        seed=seed,
        n_val=val_size(len(y_train), val_fraction, default_val),
        scale=255.0,
        standardise=standardise,
    )


def load_folder(
    path: Path, *, seed: int, val_fraction: float | None, standardise: bool = True
) -> DataSplits:
    """Load any image folder (or tar archive of one) as a classification data set."""
    raw = load_image_source(path)
    if len(raw.class_names) < 2:
        raise DataError(
            f"{path}: found only the class folder(s) {raw.class_names}; a classification data "
            f"set needs at least two; {LAYOUT_HELP}"
        )
    return finish_images("folder", raw, seed=seed, val_fraction=val_fraction,
                         standardise=standardise)
