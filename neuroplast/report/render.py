"""``write_report``: turn a run directory into ``report.md`` plus PNG plots.

The report is written at the end of training, often after something went wrong, so every
field is treated as optional and possibly NaN: a missing number shows as "n/a", a plot that
cannot be drawn is replaced by a note, and the Markdown is always written.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from neuroplast.report import plots
from neuroplast.report._format import (
    MISSING,
    as_float,
    fmt_change,
    fmt_count,
    fmt_duration,
    fmt_int,
    fmt_loss,
    fmt_percent,
    fmt_percent_bare,
    fmt_seconds,
    fmt_widths,
    md_cell,
)
from neuroplast.report.metrics import read_metrics

REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
DECISION_BOUNDARY_FILE = "decision_boundary.png"
MAX_EVENTS = 50
MAX_EPOCH_ROWS = 200  # longer runs show the first and last half of this many epochs


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report.md`` (and ``widths.png``, ``curves.png``, ``params.png``).

    Reads ``summary.json`` and ``metrics.jsonl`` from ``run_dir``; either may be missing or
    incomplete. An existing ``decision_boundary.png`` is kept and linked. Without matplotlib
    the plots are skipped and the report says how to install it. Returns the report's path.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    summary, summary_note = _load_summary(run_dir)
    records = read_metrics(run_dir)
    layers = _layer_names(summary, records)

    sections = [
        _title(summary),
        *([summary_note] if summary_note else []),
        _headline_section(summary, records),
        _layer_section(summary, records, layers),
        _events_section(records),
        _plots_section(run_dir, summary, records, layers),
        _epoch_section(records, layers),
        _options_section(summary),
    ]
    text = "\n\n".join(section.rstrip() for section in sections if section) + "\n"
    path = run_dir / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


# -- inputs ------------------------------------------------------------------------------------


def _load_summary(run_dir: Path) -> tuple[dict, str]:
    """Return the summary dict (empty if unusable) and a note for the reader when it is."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return {}, f"> `{SUMMARY_FILE}` was not found; figures below come from the epoch log only."
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        return {}, f"> `{SUMMARY_FILE}` could not be read ({error}); using the epoch log only."
    if not isinstance(summary, dict):
        return {}, f"> `{SUMMARY_FILE}` is not a JSON object; using the epoch log only."
    return summary, ""


def _layer_names(summary: dict, records: Sequence[dict]) -> list[str]:
    """Layer names from the summary, else in order of first appearance in the epoch log."""
    names = summary.get("layer_names")
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    seen: dict[str, None] = {}
    for record in records:
        widths = record.get("widths")
        if isinstance(widths, dict):
            seen.update(dict.fromkeys(str(name) for name in widths))
    return list(seen)


def _last(records: Sequence[dict], key: str) -> Any:
    return records[-1].get(key) if records else None


def _pick(summary: dict, records: Sequence[dict], key: str) -> Any:
    """The summary's value for ``key``, falling back to the last epoch's."""
    value = summary.get(key)
    return value if value is not None else _last(records, key)


def _final_widths(summary: dict, records: Sequence[dict], layers: Sequence[str]) -> list | None:
    widths = summary.get("final_widths")
    if isinstance(widths, list) and widths:
        return widths
    last = _last(records, "widths")
    if isinstance(last, dict) and layers:
        return [last.get(name) for name in layers]
    return None


def _initial_widths(summary: dict) -> list | None:
    widths = summary.get("initial_widths")
    return widths if isinstance(widths, list) and widths else None


# -- sections ----------------------------------------------------------------------------------


def _title(summary: dict) -> str:
    method = summary.get("method") or "unknown method"
    model = summary.get("model") or "unknown model"
    dataset = summary.get("dataset") or "unknown dataset"
    seed = summary.get("seed")
    seed_text = f", seed {seed}" if seed is not None else ""
    return f"# Run report: {method} / {model} on {dataset}{seed_text}"


def _headline_section(summary: dict, records: Sequence[dict]) -> str:
    layers_initial = _initial_widths(summary)
    layers_final = _final_widths(summary, records, _layer_names(summary, records))
    seconds = summary.get("train_seconds")
    if seconds is None and records:
        seconds = sum(as_float(r.get("seconds")) or 0.0 for r in records)
    epochs_done = _last(records, "epoch") if records else 0
    epochs_planned = summary.get("epochs")
    if epochs_planned is not None and epochs_done is not None:
        epochs_text = f"{fmt_int(epochs_done)} of {fmt_int(epochs_planned)}"
    else:
        epochs_text = fmt_int(epochs_done if epochs_done is not None else epochs_planned)
    stopped = summary.get("stopped_early")

    rows = [
        ("Final test accuracy", fmt_percent(_pick(summary, records, "test_accuracy"))),
        ("Final test loss", fmt_loss(_pick(summary, records, "test_loss"))),
        ("Final validation accuracy", fmt_percent(_last(records, "val_accuracy"))),
        ("Best validation accuracy", _best_val(records)),
        ("Widths, initial", fmt_widths(layers_initial)),
        ("Widths, final", fmt_widths(layers_final)),
        ("Parameters", fmt_count(_pick(summary, records, "params"))),
        ("MACs per example", fmt_count(_pick(summary, records, "macs"))),
        ("Training time", fmt_duration(seconds)),
        ("Epochs", epochs_text),
        ("Stopped early", str(stopped) if stopped else "no"),
    ]
    if records and not any(_finite(r.get("val_accuracy")) for r in records):
        # A regression has no accuracy: its validation loss stands where the accuracies stood.
        rows = [row for row in rows if "accuracy" not in row[0]]
        rows.insert(1, ("Final validation loss", fmt_loss(_last(records, "val_loss"))))
    lines = ["## Summary", ""]
    if not records:
        lines += ["**No completed epoch** was logged in `metrics.jsonl`.", ""]
    lines += ["| Quantity | Value |", "|---|---|"]
    lines += [f"| {name} | {md_cell(value)} |" for name, value in rows]
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    number = as_float(value)
    return number is not None and math.isfinite(number)


def _best_val(records: Sequence[dict]) -> str:
    best: tuple[float, Any] | None = None
    for record in records:
        value = as_float(record.get("val_accuracy"))
        if value is not None and math.isfinite(value) and (best is None or value > best[0]):
            best = (value, record.get("epoch"))
    if best is None:
        return MISSING
    return f"{fmt_percent(best[0])} (epoch {fmt_int(best[1])})"


def _layer_section(summary: dict, records: Sequence[dict], layers: Sequence[str]) -> str:
    if not layers:
        return "## Layers\n\nNo resizable layers were recorded."
    initial = _initial_widths(summary) or []
    final = _final_widths(summary, records, layers) or []
    counts = summary.get("layer_counts")
    counts = counts if isinstance(counts, list) and len(counts) == len(layers) else None
    # What a width counts differs by method (a layer's own units, or a gated Linear's inputs)
    lines = [
        "## Layers",
        "",
        "| Layer |" + (" Counts |" if counts else "") + " Initial width | Final width | Change |",
        "|---|" + ("---|" if counts else "") + "---:|---:|---:|",
    ]
    for index, name in enumerate(layers):
        start = initial[index] if index < len(initial) else None
        end = final[index] if index < len(final) else None
        meaning = f" {md_cell(str(counts[index]))} |" if counts else ""
        lines.append(f"| {md_cell(name)} |{meaning} {fmt_int(start)} | {fmt_int(end)} "
                     f"| {fmt_change(start, end)} |")
    return "\n".join(lines)


def _events_section(records: Sequence[dict]) -> str:
    events = []
    for record in records:
        for event in record.get("events") or []:
            events.append(f"- epoch {fmt_int(record.get('epoch'))}: {event}")
    lines = ["## Structural events", ""]
    if not events:
        lines.append("No structural events were logged.")
        return "\n".join(lines)
    lines += events[:MAX_EVENTS]
    if len(events) > MAX_EVENTS:
        lines.append(f"- ... and {len(events) - MAX_EVENTS} more")
    return "\n".join(lines)


def _plots_section(
    run_dir: Path, summary: dict, records: Sequence[dict], layers: Sequence[str]
) -> str:
    lines = ["## Plots", ""]
    images: list[tuple[str, str]] = []
    if not records:
        lines += ["No completed epoch, so there is nothing to plot yet.", ""]
    elif not plots.matplotlib_available():
        lines += [
            "> Plots were skipped because matplotlib is not installed. Install it with "
            f"`{plots.PLOT_HINT}` and call `neuroplast.report.write_report` on this "
            "directory again.",
            "",
        ]
    else:
        subtitle = _plot_subtitle(summary)
        initial = _initial_widths(summary)
        jobs: list[tuple[str, str, Callable[[Path], Path]]] = [
            (
                "Layer widths",
                "widths.png",
                lambda p: plots.plot_widths(records, layers, p, initial, f"Layer widths{subtitle}"),
            ),
            (
                "Loss and accuracy",
                "curves.png",
                lambda p: plots.plot_curves(records, p, f"Learning curves{subtitle}"),
            ),
            (
                "Parameters and MACs",
                "params.png",
                lambda p: plots.plot_params(records, p, f"Model size{subtitle}"),
            ),
        ]
        for caption, name, draw in jobs:
            try:
                draw(run_dir / name)
            except Exception as error:  # one bad plot must not cost the report
                warnings.warn(f"could not draw {name}: {error!r}", stacklevel=3)
                lines += [f"> {caption}: the plot could not be drawn ({error!r}).", ""]
                continue
            images.append((caption, name))
    if (run_dir / DECISION_BOUNDARY_FILE).exists():
        images.append(("Decision boundary", DECISION_BOUNDARY_FILE))
    for caption, name in images:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def _plot_subtitle(summary: dict) -> str:
    parts = [str(summary[key]) for key in ("method", "model", "dataset") if summary.get(key)]
    return f" ({', '.join(parts)})" if parts else ""


def _epoch_section(records: Sequence[dict], layers: Sequence[str]) -> str:
    lines = ["## Per-epoch metrics", ""]
    if not records:
        lines.append("No completed epoch.")
        return "\n".join(lines)
    # A regression has no accuracy: its three columns are left out.
    scored = any(_finite(record.get("val_accuracy")) for record in records)
    accuracy_header = "| Train acc % | Val acc % | Test acc % " if scored else ""
    header = (f"| Epoch | Train loss | Val loss | Test loss {accuracy_header}"
              "| Widths | Params | Time |")
    if any((record.get("method") or {}).get("penalty") for record in records):
        lines += ["The training loss includes the method's penalty (the logged `penalty`); the "
                  "validation and test losses are the data loss alone.", ""]
    lines += [header, "|---:|---:|---:|---:|" + ("---:|---:|---:|" if scored else "")
              + "---|---:|---:|"]
    shown: list[dict | None] = list(records)
    if len(records) > MAX_EPOCH_ROWS:
        half = MAX_EPOCH_ROWS // 2
        shown = [*records[:half], None, *records[-half:]]
        lines.insert(2, f"Showing the first and last {half} of {len(records)} epochs.\n")
    for record in shown:
        if record is None:
            skipped = len(records) - 2 * (MAX_EPOCH_ROWS // 2)
            lines.append(f"| ... | {skipped} epochs omitted |" + " |" * (8 if scored else 5))
            continue
        widths = record.get("widths")
        widths = [widths.get(name) for name in layers] if isinstance(widths, dict) else None
        cells = [
            fmt_int(record.get("epoch")),
            fmt_loss(record.get("train_loss")),
            fmt_loss(record.get("val_loss")),
            fmt_loss(record.get("test_loss")),
            *([fmt_percent_bare(record.get(f"{split}_accuracy"))
               for split in ("train", "val", "test")] if scored else []),
            fmt_widths(widths),
            fmt_int(record.get("params")),
            fmt_seconds(record.get("seconds")),
        ]
        lines.append("| " + " | ".join(md_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _options_section(summary: dict) -> str:
    """Method options and the command line, so the run can be understood and repeated."""
    lines: list[str] = []
    options = summary.get("method_options")
    if isinstance(options, dict) and options:
        lines += ["## Method options", "", "| Option | Value |", "|---|---|"]
        lines += [f"| {md_cell(key)} | {md_cell(value)} |" for key, value in options.items()]
    command = summary.get("command")
    if command:
        lines += ["", "## Command", "", "```", str(command), "```"]
    return "\n".join(lines).strip()
