"""Per-epoch metrics: a crash-safe JSON-lines log and its reader.

Each epoch is one line of ``run_dir/metrics.jsonl``. Lines are written whole, flushed and
fsync'd, so a crash can only ever leave the *last* line half-written; both the reader and
the logger treat such a trailing fragment as if it had never been written.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_TENSORBOARD_HINT = (
    "TensorBoard logging needs the tensorboard package: "
    'pip install tensorboard  (or pip install "neuroplast[tensorboard]")'
)


def _json_default(value: Any) -> Any:
    """Turn numpy / torch scalars and arrays into plain Python values for ``json.dumps``."""
    # Duck typing instead of isinstance checks keeps this module free of numpy/torch imports.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")


def _parse_line(line: str) -> dict | None:
    """Parse one JSON line into a dict, or return None if it is not a complete JSON object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _split_complete(text: str) -> tuple[list[str], str]:
    """Split file text into complete lines and a trailing unterminated fragment.

    A fragment that still parses as a JSON object (e.g. a hand-written file without a final
    newline) is counted as complete; anything else is the remains of an interrupted write.
    """
    lines = text.split("\n")
    tail = lines.pop()  # "" when the text ends with a newline
    if tail.strip() and _parse_line(tail) is not None:
        lines.append(tail)
        tail = ""
    return lines, tail


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Return the per-epoch records of ``run_dir/metrics.jsonl`` in file order.

    A missing file gives an empty list. A trailing partial line (left by a crash while it was
    being written) is ignored silently; an unreadable line elsewhere is skipped with a warning.
    NaN / Infinity values, as written by Python's ``json`` module, are read back as floats.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines, _partial = _split_complete(path.read_text(encoding="utf-8"))
    records: list[dict] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            warnings.warn(
                f"{path}:{number}: skipping a line that is not a JSON object", stacklevel=2
            )
            continue
        records.append(record)
    return records


class MetricsLogger:
    """Appends one JSON line per epoch to ``run_dir/metrics.jsonl``.

    Every line is flushed and fsync'd as soon as it is written, so a crash loses at most the
    line being written. An existing file is appended to (after dropping a half-written last
    line, if any); call ``truncate_to(0)`` to start from an empty file.

    With ``tensorboard=True`` the numeric fields are also mirrored to TensorBoard event files
    in ``run_dir/tensorboard``: every numeric top-level field under its own name,
    ``widths/<layer>`` and ``method/<key>``, all at step ``record["epoch"]``.

    Usable as a context manager; ``close()`` is idempotent.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        # Resolve the optional dependency first so a bad request fails before touching disk.
        self._writer_cls = _summary_writer_class() if tensorboard else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        self._file = open(self.path, "a", encoding="utf-8")  # stays open: one line per epoch
        self._writer = self._open_writer() if self._writer_cls is not None else None

    # -- public API ---------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        """Write ``record`` as one line (durably) and mirror its scalars to TensorBoard."""
        if self._file is None:
            raise ValueError("MetricsLogger is closed")
        if "epoch" not in record:
            raise ValueError("a metrics record needs an 'epoch' field")
        # json.dumps writes NaN/Infinity as bare tokens, which json.loads reads back: a diverged
        # epoch is logged faithfully instead of failing the run at the worst possible moment.
        line = json.dumps(record, default=_json_default)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._writer is not None:
            self._mirror_to_tensorboard(record)

    def truncate_to(self, epoch: int) -> None:
        """Drop every line whose epoch is greater than ``epoch``.

        Used when resuming from a checkpoint written after ``epoch``: the epochs that ran after
        that checkpoint will run again, and their old lines must not appear twice. Kept lines
        are preserved byte for byte, so a resumed run's file equals an uninterrupted run's.
        """
        if self._file is None:
            raise ValueError("MetricsLogger is closed")
        self._file.close()
        lines, _partial = _split_complete(self.path.read_text(encoding="utf-8"))
        kept = []
        for line in lines:
            record = _parse_line(line)
            if record is not None and _epoch_of(record) <= epoch:
                kept.append(line + "\n")
        # Write-then-rename so a crash during truncation leaves either the old or the new file.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if self._writer is not None:
            # TensorBoard cannot delete events, but a writer opened with purge_step hides every
            # event at or after that step from earlier sessions of the same log directory.
            self._writer.close()
            self._writer = self._open_writer(purge_step=epoch + 1)

    def close(self) -> None:
        """Close the metrics file and the TensorBoard writer (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------------

    def _drop_partial_tail(self) -> None:
        """Remove a half-written last line so the next line does not get glued onto it."""
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        lines, partial = _split_complete(text)
        complete = "".join(line + "\n" for line in lines if line.strip())
        if complete != text:
            if partial.strip():
                warnings.warn(f"{self.path}: dropping a partially written last line", stacklevel=3)
            self.path.write_text(complete, encoding="utf-8")

    def _open_writer(self, purge_step: int | None = None) -> Any:
        assert self._writer_cls is not None
        log_dir = str(self.run_dir / TENSORBOARD_DIR)
        if purge_step is None:
            return self._writer_cls(log_dir=log_dir)
        return self._writer_cls(log_dir=log_dir, purge_step=purge_step)

    def _mirror_to_tensorboard(self, record: dict) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and _is_number(value):
                self._writer.add_scalar(key, float(value), step)
        for prefix in ("widths", "method"):
            group = record.get(prefix)
            if isinstance(group, dict):
                for key, value in group.items():
                    if _is_number(value):
                        self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self._writer.flush()


def _summary_writer_class() -> type:
    """Import TensorBoard's SummaryWriter, turning a missing package into an actionable error."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError(_TENSORBOARD_HINT) from error
    return SummaryWriter


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a flag is not a curve worth plotting.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _epoch_of(record: dict) -> float:
    value = record.get("epoch")
    if _is_number(value) and not math.isnan(value):
        return value
    return math.inf  # a line without a usable epoch cannot be placed, so truncation drops it
