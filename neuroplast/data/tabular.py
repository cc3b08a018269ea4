"""User data in plain files: ``.npz`` arrays and ``.csv`` tables, plus scikit-learn's digits."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from .base import DataError, DataSplits, encode_labels, finish, split_test, val_size

LABEL_COLUMNS = ("label", "y", "target", "class")  # tried in this order, case-insensitively


def _check_finite(x: np.ndarray, where: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{where} holds NaN or infinity at index {tuple(bad.tolist())}; clean it")


def _to_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]  # (N, H, W): one grey channel
    # (N, H, W, C) with C in 1/3/4 is the usual layout of images saved from numpy/PIL; move the
    # channels first. A true (N, C, H, W) array rarely ends in a dimension of 1, 3 or 4 while
    # its second dimension is not one of them, so this guess is safe in practice.
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _first_bytes(path: Path, count: int) -> bytes:
    with open(path, "rb") as file:
        return file.read(count)


def load_npz(
    path: Path, *, seed: int, val_fraction: float | None, standardise: bool = True,
    regression: bool = False,
) -> DataSplits:
    """Load arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``) from an ``.npz`` file.

    ``x`` is ``(N, F)`` tabular data (standardised per feature), or images ``(N, H, W)`` /
    ``(N, C, H, W)`` / ``(N, H, W, C)`` (standardised per channel; uint8 is scaled by 1/255
    first). Labels may be any integers or strings; they become ``0 .. C-1`` and the original
    values, as strings, are the class names. With ``regression`` the labels are numbers to
    predict, kept as float targets (one model output). Without test arrays 20 % is held out as
    test.
    """
    if Path(path).is_file() and _first_bytes(path, 2) != b"PK":
        # not a zip: numpy would call unknown bytes "pickled data"
        raise DataError(f"{path} is not an .npz archive (a zip of .npy arrays). Save it with "
                        "numpy.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError as exc:
        raise DataError(f"npz file {path} does not exist; pass the path of an .npz file") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"cannot read {path} as .npz ({exc}). Save it with numpy.savez(path, x=..., y=...); "
            "object arrays are not supported"
        ) from exc
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' and 'y'; it holds {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} holds only one of 'x_test' and 'y_test'; give both or neither")

    x, y = arrays["x"], arrays["y"]
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    for x_key, y_key in pairs:
        xs, ys = arrays[x_key], arrays[y_key]
        if ys.ndim != 1 or len(ys) != len(xs):
            raise DataError(f"{path}: '{y_key}' must be 1-D with one label per row of '{x_key}'")
        if xs.ndim not in (2, 3, 4) or not (np.issubdtype(xs.dtype, np.number) or xs.dtype == bool):
            raise DataError(
                f"{path}: '{x_key}' is {xs.dtype} {xs.shape}; expected numbers shaped (N, F), "
                "(N, H, W) or (N, C, H, W)"
            )
        _check_finite(xs, f"{path}: '{x_key}'")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != x.shape[1:]:
        raise DataError(
            f"{path}: 'x_test' rows are {arrays['x_test'].shape[1:]}, 'x' rows are "
            f"{x.shape[1:]}; they must match"
        )

    if regression:
        for key in ("y", "y_test"):
            if key in arrays and not np.issubdtype(arrays[key].dtype, np.number):
                raise DataError(f"{path}: '{key}' holds {arrays[key].dtype} values; a "
                                "regression (--loss mse) needs numbers")
            if key in arrays:
                _check_finite(arrays[key], f"{path}: '{key}'")
        class_names = None
        if "x_test" in arrays:
            y_test, x_test = arrays["y_test"], arrays["x_test"]
        else:
            x, y, x_test, y_test = split_test(x, y)
    elif "x_test" in arrays:
        (y, y_test), class_names = encode_labels(y, arrays["y_test"])
        x_test = arrays["x_test"]
    else:
        (y,), class_names = encode_labels(y)
        x, y, x_test, y_test = split_test(x, y)
    images = x.ndim > 2
    if images:
        x, x_test = _to_nchw(x), _to_nchw(x_test)
    scale = 255.0 if images and x.dtype == np.uint8 else 1.0
    return finish(
        "npz",
        x.astype(np.float32, copy=False),
        y,
        x_test.astype(np.float32, copy=False),
        y_test,
        num_classes=1 if class_names is None else len(class_names),
        class_names=class_names,
        seed=seed,
        n_val=val_size(len(y), val_fraction),
        scale=scale,
        standardise=standardise,
        regression=regression,
    )


def _label_column(header: list[str], wanted: str | None, path: Path) -> int:
    names = [h.strip() for h in header]
    if wanted is not None:
        if wanted in names:
            return names.index(wanted)
        raise DataError(f"{path} has no column {wanted!r}; its columns are {names}")
    lowered = [n.lower() for n in names]
    for candidate in LABEL_COLUMNS:
        if candidate in lowered:
            return lowered.index(candidate)
    raise DataError(
        f"{path} has no label column (tried {', '.join(LABEL_COLUMNS)}); its columns are "
        f"{names}. Name the label column one of those, or choose it with --label-column "
        "(a recipe: label_column = \"...\"; Python: load_dataset(..., label_column=...))"
    )


def load_csv(
    path: Path, *, seed: int, val_fraction: float | None, label_column: str | None = None,
    standardise: bool = True,
) -> DataSplits:
    """Load a CSV table with a header row: numeric feature columns plus one label column.

    The label column is ``label_column`` or the first of ``label``, ``y``, ``target``,
    ``class``. Labels may be any strings; features must be numbers. 20 % is held out as test.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
            rows = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise DataError(f"csv file {path} does not exist; pass the path of a .csv file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV text: {exc}") from exc
    if not rows:
        raise DataError(f"{path} is empty; expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    label_at = _label_column(header, label_column, path)
    features = [i for i in range(len(header)) if i != label_at]
    if not features:
        raise DataError(f"{path} has no feature columns besides the label column")

    values: list[list[float]] = []
    labels: list[str] = []
    for line, row in enumerate(rows[1:], start=2):  # line numbers as an editor shows them
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(row)} fields but the header has {len(header)}"
            )
        record = []
        for i in features:
            try:
                number = float(row[i])
            except ValueError:
                number = float("nan")
            if not np.isfinite(number):
                raise DataError(
                    f"{path}, line {line}, column {header[i]!r}: {row[i]!r} is not a finite "
                    "number; features must be numeric (encode categories as numbers first)"
                )
            record.append(number)
        values.append(record)
        labels.append(row[label_at].strip())
    if not values:
        raise DataError(f"{path} has a header but no data rows")

    (y,), class_names = encode_labels(labels)
    x = np.asarray(values, dtype=np.float32)
    x, y, x_test, y_test = split_test(x, y)
    return finish(
        "csv",
        x,
        y,
        x_test,
        y_test,
        num_classes=len(class_names),
        class_names=class_names,
        seed=seed,
        n_val=val_size(len(y), val_fraction),
        standardise=standardise,
    )


def load_digits(
    *, seed: int, val_fraction: float | None, standardise: bool = True
) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1797 images): 20 % test, then 20 % of the rest val."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DataError(
            'the digits data set comes with scikit-learn: pip install "neuroplast[digits]" '
            "(or pip install scikit-learn)"
        ) from exc
    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    x, y, x_test, y_test = split_test(x, bunch.target.astype(np.int64))
    return finish(
        "digits",
        x,
        y,
        x_test,
        y_test,
        num_classes=10,
        class_names=[str(d) for d in range(10)],
        seed=seed,
        n_val=val_size(len(y), val_fraction),
        scale=16.0,
        standardise=standardise,
    )
