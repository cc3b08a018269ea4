"""PNG plots of a run: widths, learning curves, model size, and 2-D decision boundaries.

matplotlib is an optional dependency (extra ``plot``), so it is imported inside the functions.
Figures are built with ``matplotlib.figure.Figure`` on an explicit Agg canvas instead of pyplot:
that never touches the user's global backend (e.g. inside a notebook), needs no display, and
leaves no figure registered anywhere, so nothing leaks however many reports are written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuroplast.report._format import as_float, human_count

PLOT_HINT = 'pip install "neuroplast[plot]"'
DPI = 110
# Widths are drawn on a log axis once the largest is this many times the smallest, so that a
# 4-unit bottleneck next to a 1000-unit layer is still readable.
LOG_WIDTH_RATIO = 20.0
# Same idea for losses: a diverging epoch should not flatten every other point to zero.
LOG_LOSS_RATIO = 100.0
MARKER_MAX_EPOCHS = 30  # markers help with few epochs and clutter with many
GRID_RESOLUTION = 200


def matplotlib_available() -> bool:
    """True if matplotlib can be imported (the plots are skipped otherwise)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(**kwargs: Any) -> Any:
    """Create a Figure bound to an Agg canvas, raising ImportError with an install hint."""
    try:
        # Import the top-level package first: it is what is missing (or blocked) when
        # matplotlib is not installed, even if submodules are cached in sys.modules.
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"plotting needs matplotlib: {PLOT_HINT}") from error
    figure = Figure(dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    # Drop the artists now rather than waiting for the garbage collector.
    figure.clear()
    return path


def _series(records: Sequence[dict], key: str) -> np.ndarray:
    """One float per record; missing, None and infinite values become NaN (gaps in a line)."""
    values = []
    for record in records:
        number = as_float(record.get(key))
        values.append(number if number is not None and math.isfinite(number) else math.nan)
    return np.asarray(values, dtype=float)


def _epochs(records: Sequence[dict]) -> np.ndarray:
    # Fall back to the position when the epoch field is unusable, so a plot still appears.
    epochs = _series(records, "epoch")
    positions = np.arange(1, len(records) + 1, dtype=float)
    return np.where(np.isnan(epochs), positions, epochs)


def _has_data(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _spans(values: np.ndarray, ratio: float) -> bool:
    """True if the positive finite values span more than ``ratio`` (so a log axis helps)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or (finite <= 0).any():
        return False
    return float(finite.max()) > ratio * float(finite.min())


def _style_axis(axis: Any, title: str, xlabel: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, which="major", alpha=0.35)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")


def _width_of(record: dict, layer: str) -> float | None:
    widths = record.get("widths")
    return as_float(widths.get(layer)) if isinstance(widths, dict) else None


def _count_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: human_count(value).replace(" ", ""))


def plot_widths(
    records: Sequence[dict],
    layer_names: Sequence[str],
    path: str | os.PathLike,
    initial_widths: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """Units per resizable layer over epochs, one step line per layer.

    ``initial_widths`` (one per layer) is drawn at epoch 0 so the first change is visible.
    """
    figure = _new_figure(figsize=(8, 4.5), layout="constrained")
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    axis = figure.add_subplot()
    epochs = _epochs(records)
    start = (
        list(initial_widths) if initial_widths and len(initial_widths) == len(layer_names) else None
    )
    if start is not None:
        epochs = np.concatenate([[0.0], epochs])
    marker = "o" if len(epochs) <= MARKER_MAX_EPOCHS else None
    everything = []
    for index, name in enumerate(layer_names):
        widths = [_width_of(record, name) for record in records]
        if start is not None:
            widths.insert(0, as_float(start[index]))
        values = np.array([math.nan if w is None else w for w in widths], dtype=float)
        everything.append(values)
        # steps-pre: the width logged after epoch e is drawn over (e-1, e], the epoch that
        # produced it, so every logged value (including the last) gets a visible segment.
        axis.plot(
            epochs,
            values,
            drawstyle="steps-pre",
            marker=marker,
            markersize=3,
            linewidth=1.6,
            label=name,
        )
    if everything and _spans(np.concatenate(everything), LOG_WIDTH_RATIO):
        axis.set_yscale("log")
        # Label 1-2-5 steps: decades alone leave too few labels for a range of 20x-100x.
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_minor_formatter(NullFormatter())
    else:
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))  # units are whole numbers
    axis.yaxis.set_major_formatter(_count_formatter())
    _style_axis(axis, title or "Layer widths", "epoch", "units")
    if len(layer_names) > 8:
        # Many layers: a multi-column legend outside the axes stays readable.
        axis.legend(fontsize="x-small", ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(figure, path)


def plot_curves(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Two panels: loss and accuracy (train / val / test where present) over epochs; the
    loss alone for a regression (no accuracy logged)."""
    scored = any(_has_data(_series(records, f"{split}_accuracy"))
                 for split in ("train", "val", "test"))
    figure = _new_figure(figsize=(11, 4.2) if scored else (6, 4.2), layout="constrained")
    loss_axis, accuracy_axis = figure.subplots(1, 2) if scored else (figure.subplots(), None)
    epochs = _epochs(records)
    marker = "o" if len(epochs) <= MARKER_MAX_EPOCHS else None
    losses = []
    # A method's penalty (NPN's L0 term, say) is part of the training loss only: say so.
    penalised = any((record.get("method") or {}).get("penalty") for record in records)
    for split, colour in (("train", "C0"), ("val", "C1"), ("test", "C2")):
        loss = _series(records, f"{split}_loss")
        accuracy = _series(records, f"{split}_accuracy")
        if _has_data(loss):
            losses.append(loss)
            label = "train (data + penalty)" if split == "train" and penalised else split
            loss_axis.plot(epochs, loss, marker=marker, markersize=3, color=colour, label=label)
        if accuracy_axis is not None and _has_data(accuracy):
            accuracy_axis.plot(
                epochs, 100.0 * accuracy, marker=marker, markersize=3, color=colour, label=split
            )
    if losses and _spans(np.concatenate(losses), LOG_LOSS_RATIO):
        loss_axis.set_yscale("log")
    _style_axis(loss_axis, "Loss", "epoch", "loss")
    if accuracy_axis is not None:
        _style_axis(accuracy_axis, "Accuracy", "epoch", "accuracy (%)")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_params(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Two panels: parameter count and multiply-accumulates per example over epochs."""
    figure = _new_figure(figsize=(11, 4.2), layout="constrained")
    params_axis, macs_axis = figure.subplots(1, 2)
    epochs = _epochs(records)
    marker = "o" if len(epochs) <= MARKER_MAX_EPOCHS else None
    for axis, key, colour, label in (
        (params_axis, "params", "C0", "parameters"),
        (macs_axis, "macs", "C3", "MACs"),
    ):
        values = _series(records, key)
        if _has_data(values):
            axis.plot(
                epochs,
                values,
                drawstyle="steps-pre",
                marker=marker,
                markersize=3,
                color=colour,
                label=label,
            )
        axis.yaxis.set_major_formatter(_count_formatter())
    _style_axis(params_axis, "Parameters", "epoch", "parameters")
    _style_axis(macs_axis, "Compute", "epoch", "MACs per example")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_decision_boundary(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    points: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Draw a classifier's decision regions over 2-D data and save them as a PNG.

    Args:
        predict_proba: maps an (M, 2) float array of grid points to (M, C) class probabilities.
        points: (N, 2) coordinates of the data points.
        labels: (N,) integer class labels, used to colour the points.
        path: where to write the PNG (parent folders are created).
        title: figure title.

    For two classes the background is a filled contour of P(class 1) with the 0.5 level drawn
    as a line; for more classes it shows the most probable class. Raises ImportError with an
    install hint when matplotlib is missing.
    """
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (N, 2) array, got shape {points.shape}")
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    figure = _new_figure(figsize=(6, 5.2), layout="constrained")
    axis = figure.add_subplot()

    # Cover the data with a 10% margin (at least 0.5 when the data are degenerate on one axis).
    low, high = points.min(axis=0), points.max(axis=0)
    margin = np.maximum(0.1 * (high - low), 0.5)
    xs = np.linspace(low[0] - margin[0], high[0] + margin[0], GRID_RESOLUTION)
    ys = np.linspace(low[1] - margin[1], high[1] + margin[1], GRID_RESOLUTION)
    grid_x, grid_y = np.meshgrid(xs, ys)
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()]).astype(np.float32)
    probabilities = np.asarray(predict_proba(grid), dtype=float)
    if probabilities.ndim == 1:
        probabilities = probabilities[:, None]
    if probabilities.shape[0] != len(grid):
        raise ValueError(
            f"predict_proba returned {probabilities.shape[0]} rows for {len(grid)} grid points"
        )
    n_classes = max(probabilities.shape[1], int(labels.max()) + 1, 2)

    if n_classes == 2:
        # A single column is read as P(class 1) already.
        p_one = probabilities[:, -1].reshape(grid_x.shape)
        filled = axis.contourf(
            grid_x, grid_y, p_one, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6
        )
        axis.contour(grid_x, grid_y, p_one, levels=[0.5], colors="black", linewidths=1.2)
        figure.colorbar(filled, ax=axis, label="P(class 1)")
        # The ends of the background's colour map, with a white rim so points stay visible
        # on the saturated regions far from the boundary.
        palette, edge = ["#2166ac", "#b2182b"], "white"
    else:
        from matplotlib.colors import ListedColormap

        palette, edge = [f"C{index % 10}" for index in range(n_classes)], "black"
        predicted = probabilities.argmax(axis=1).reshape(grid_x.shape)
        axis.contourf(
            grid_x,
            grid_y,
            predicted,
            levels=np.arange(n_classes + 1) - 0.5,
            cmap=ListedColormap(palette),
            alpha=0.35,
        )
    for label in np.unique(labels):
        chosen = labels == label
        axis.scatter(
            points[chosen, 0],
            points[chosen, 1],
            color=palette[label % len(palette)],
            s=18,
            edgecolors=edge,
            linewidths=0.6,
            label=f"class {label}",
        )
    axis.set_xlim(xs[0], xs[-1])
    axis.set_ylim(ys[0], ys[-1])
    axis.set_title(title or "Decision boundary")
    axis.set_xlabel("x1")
    axis.set_ylabel("x2")
    axis.grid(True, alpha=0.25)
    axis.legend(fontsize="small", loc="best")
    return _save(figure, path)
