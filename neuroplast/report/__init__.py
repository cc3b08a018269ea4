"""Metrics logging and human-friendly reports for a training run directory.

- ``MetricsLogger`` / ``read_metrics``: the crash-safe per-epoch log ``metrics.jsonl``.
- ``write_report``: ``report.md`` with headline numbers, per-layer table, events and plots.
- ``plot_decision_boundary``: decision regions of a 2-D classifier as a PNG.

matplotlib is optional (``pip install "neuroplast[plot]"``); without it the report is written
without plots.
"""

from neuroplast.report.metrics import MetricsLogger, read_metrics
from neuroplast.report.plots import plot_decision_boundary
from neuroplast.report.render import write_report

__all__ = ["MetricsLogger", "plot_decision_boundary", "read_metrics", "write_report"]
