"""Tests for neuroplast.report: the metrics log, report.md and the PNG plots."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from neuroplast.report import MetricsLogger, plot_decision_boundary, read_metrics, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYERS = ["fc1", "fc2"]


def _record(epoch: int, fc1: int, fc2: int, **overrides: object) -> dict:
    record = {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5 + 0.05 * epoch,
        "val_loss": 1.1 / epoch,
        "val_accuracy": 0.45 + 0.05 * epoch,
        "test_loss": 1.2 / epoch,
        "test_accuracy": 0.44 + 0.05 * epoch,
        "widths": {"fc1": fc1, "fc2": fc2},
        "params": 1000 * fc1 + 10 * fc2,
        "macs": 1000 * fc1 + 10 * fc2,
        "seconds": 0.25,
        "lr": 0.01,
        "events": [],
        "method": {"k": float(epoch)},
    }
    record.update(overrides)
    return record


def _write_run(run_dir: Path, records: list[dict], **summary_overrides: object) -> None:
    summary = {
        "method": "npn",
        "model": "mlp",
        "dataset": "moons",
        "seed": 3,
        "epochs": len(records),
        "test_accuracy": 0.9123,
        "test_loss": 0.25,
        "initial_widths": [16, 8],
        "final_widths": [records[-1]["widths"][n] for n in LAYERS] if records else [16, 8],
        "layer_names": LAYERS,
        "params": 1234567,
        "macs": 2345678,
        "train_seconds": 12.5,
        "stopped_early": None,
        "method_options": {"lambda": 0.001},
    }
    summary.update(summary_overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _synthetic_records() -> list[dict]:
    return [
        _record(1, 16, 8),
        _record(2, 20, 8, events=["grew fc1 by 4"]),
        _record(3, 20, 6, events=["pruned fc2 by 2"], val_loss=math.nan),
        _record(4, 24, 6),
        _record(5, 24, 5, test_accuracy=None, test_loss=None),
    ]


def _assert_png_not_blank(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert float(np.var(pixels)) > 0, f"{path.name} is blank"


# -- write_report --------------------------------------------------------------------------------


def test_write_report_full_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path, _synthetic_records())

    report_path = write_report(tmp_path)

    assert report_path == tmp_path / "report.md"
    text = report_path.read_text()
    assert text.startswith("# Run report: npn / mlp on moons, seed 3")
    assert "91.23 %" in text  # final test accuracy from summary.json
    for layer in LAYERS:
        assert f"| {layer} |" in text
    assert "| fc1 | 16 | 24 | +50.0 % |" in text
    assert "| fc2 | 8 | 5 | -37.5 % |" in text
    assert "16-8" in text and "24-5" in text
    assert "1,234,567" in text and "2,345,678" in text
    assert "12.500 s" in text
    assert "- epoch 2: grew fc1 by 4" in text
    assert "- epoch 3: pruned fc2 by 2" in text
    assert "NaN" in text  # the diverged val loss is shown, not hidden or crashed on
    assert "| lambda | 0.001 |" in text
    for name in ("widths.png", "curves.png", "params.png"):
        assert f"]({name})" in text
        _assert_png_not_blank(tmp_path / name)
    # One row per epoch in the per-epoch table.
    assert len(re.findall(r"^\| [1-5] \|", text, flags=re.MULTILINE)) == 5


def test_write_report_says_what_each_width_counts(tmp_path: Path) -> None:
    _write_run(tmp_path, _synthetic_records(),
               layer_counts=["input features", "units it outputs"])
    text = write_report(tmp_path).read_text()
    assert "| Layer | Counts | Initial width |" in text
    assert "| fc1 | input features | 16 | 24 | +50.0 % |" in text
    assert "| fc2 | units it outputs | 8 | 5 | -37.5 % |" in text


def test_write_report_keeps_and_links_decision_boundary(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path, _synthetic_records()[:1])
    boundary = tmp_path / "decision_boundary.png"
    boundary.write_bytes(PNG_SIGNATURE + b"placeholder")

    text = write_report(tmp_path).read_text()

    assert "](decision_boundary.png)" in text
    assert boundary.read_bytes() == PNG_SIGNATURE + b"placeholder"


def test_write_report_single_epoch_and_missing_fields(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    record = {"epoch": 1, "train_loss": 0.7, "widths": {"a": 3}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")  # no summary.json

    text = write_report(tmp_path).read_text()

    assert "summary.json` was not found" in text
    assert "| a | n/a | 3 | n/a |" in text
    assert "No structural events" in text
    _assert_png_not_blank(tmp_path / "widths.png")


def test_write_report_all_nan_epoch(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    nan_record = _record(1, 4, 2, train_loss=math.nan, val_loss=math.nan, train_accuracy=math.nan)
    _write_run(tmp_path, [nan_record], test_accuracy=math.nan)

    text = write_report(tmp_path).read_text()

    assert "| Final test accuracy | NaN |" in text
    assert (tmp_path / "curves.png").exists()


def test_write_report_empty_metrics(tmp_path: Path) -> None:
    _write_run(tmp_path, [])

    text = write_report(tmp_path).read_text()

    assert "no completed epoch" in text.lower()
    assert not (tmp_path / "widths.png").exists()


def test_write_report_long_run_is_capped(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    records = [_record(e, 10 + e, 8, events=[f"grew fc1 by {e}"]) for e in range(1, 261)]
    _write_run(tmp_path, records)

    text = write_report(tmp_path).read_text()

    assert "60 epochs omitted" in text
    assert "| 100 |" in text and "| 161 |" in text and "| 101 |" not in text
    assert "- ... and 210 more" in text


def test_write_report_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _write_run(tmp_path, _synthetic_records())

    text = write_report(tmp_path).read_text()

    assert 'pip install "neuroplast[plot]"' in text
    assert "91.23 %" in text
    assert not (tmp_path / "widths.png").exists()
    with pytest.raises(ImportError, match="neuroplast\\[plot\\]"):
        plot_decision_boundary(
            lambda g: np.ones((len(g), 2)) / 2, np.zeros((3, 2)), np.zeros(3), tmp_path / "db.png"
        )


def test_write_report_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


# -- MetricsLogger / read_metrics ------------------------------------------------------------------


def test_logger_roundtrip_and_truncate(tmp_path: Path) -> None:
    records = _synthetic_records()[:3]
    with MetricsLogger(tmp_path) as logger:
        for record in records:
            logger.log(record)
    read = read_metrics(tmp_path)
    assert read[:2] == records[:2]
    # NaN != NaN, so compare the diverged record field by field.
    assert math.isnan(read[2]["val_loss"])
    assert {k: v for k, v in read[2].items() if k != "val_loss"} == {
        k: v for k, v in records[2].items() if k != "val_loss"
    }

    logger = MetricsLogger(tmp_path)
    logger.truncate_to(1)
    assert read_metrics(tmp_path) == records[:1]
    logger.log(records[1])  # the logger keeps appending after truncation
    logger.close()
    logger.close()  # idempotent
    assert read_metrics(tmp_path) == records[:2]


def test_resumed_file_equals_uninterrupted(tmp_path: Path) -> None:
    records = [_record(e, 8 + e, 4) for e in range(1, 5)]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with MetricsLogger(straight) as logger:
        for record in records:
            logger.log(record)
    with MetricsLogger(resumed) as logger:
        for record in records[:3]:  # ran to epoch 3, last checkpoint at epoch 2
            logger.log(record)
    with MetricsLogger(resumed) as logger:
        logger.truncate_to(2)
        for record in records[2:]:
            logger.log(record)
    assert (resumed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()


def test_partial_trailing_line(tmp_path: Path) -> None:
    records = [_record(1, 4, 2), _record(2, 5, 2)]
    with MetricsLogger(tmp_path) as logger:
        for record in records:
            logger.log(record)
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "train_lo')  # a crash in the middle of a write

    assert read_metrics(tmp_path) == records

    # A new logger drops the fragment instead of gluing the next line onto it.
    with pytest.warns(UserWarning, match="partially written"):
        logger = MetricsLogger(tmp_path)
    logger.log(_record(3, 6, 2))
    logger.close()
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_read_metrics_missing_file(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == []


def test_logger_numpy_values(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as logger:
        logger.log({"epoch": np.int64(1), "train_loss": np.float32(0.5), "v": np.arange(2)})
    assert read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 0.5, "v": [0, 1]}]


def test_tensorboard_missing_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, tensorboard=True)


def test_tensorboard_mirroring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float, int]] = []
    opened: list[dict] = []

    class FakeWriter:
        def __init__(self, **kwargs: object) -> None:
            opened.append(kwargs)

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)

    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(_record(2, 7, 3))
        logger.truncate_to(1)

    tags = {tag for tag, _, step in calls if step == 2}
    assert {"train_loss", "val_accuracy", "params", "lr", "seconds"} <= tags
    assert {"widths/fc1", "widths/fc2", "method/k"} <= tags
    assert "epoch" not in tags and "events" not in tags
    assert ("widths/fc1", 7.0, 2) in calls
    assert opened[-1]["purge_step"] == 2


# -- plot_decision_boundary ----------------------------------------------------------------------


def test_plot_decision_boundary_two_blobs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-2, 0.7, (50, 2)), rng.normal(2, 0.7, (50, 2))])
    labels = np.repeat([0, 1], 50)

    def predict_proba(grid: np.ndarray) -> np.ndarray:
        p_one = 1.0 / (1.0 + np.exp(-(grid[:, 0] + grid[:, 1])))
        return np.column_stack([1.0 - p_one, p_one])

    path = plot_decision_boundary(
        predict_proba, points, labels, tmp_path / "sub" / "db.png", "2 blobs"
    )

    assert path == tmp_path / "sub" / "db.png"
    _assert_png_not_blank(path)


def test_plot_decision_boundary_three_classes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    centres = np.array([[0.0, 3.0], [-3.0, -2.0], [3.0, -2.0]])
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.6, (30, 2)) for c in centres])
    labels = np.repeat([0, 1, 2], 30)

    def predict_proba(grid: np.ndarray) -> np.ndarray:
        scores = -((grid[:, None, :] - centres[None]) ** 2).sum(-1)
        exp = np.exp(scores - scores.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    _assert_png_not_blank(
        plot_decision_boundary(predict_proba, points, labels, tmp_path / "db3.png")
    )


def test_a_penalised_training_loss_is_labelled_as_such(tmp_path, monkeypatch):
    import matplotlib.axes

    from neuroplast.report.plots import plot_curves
    from neuroplast.report.render import _epoch_section

    labels = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    records = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.9 / e, "train_accuracy": 0.5,
                "val_accuracy": 0.5, "method": {"penalty": 0.1}} for e in (1, 2)]
    plot_curves(records, tmp_path / "curves.png")
    assert "train (data + penalty)" in labels
    assert "includes the method's penalty" in _epoch_section(records, [])
    labels.clear()
    plain = [{**record, "method": {}} for record in records]
    plot_curves(plain, tmp_path / "plain.png")
    assert "train" in labels and "train (data + penalty)" not in labels
    assert "penalty" not in _epoch_section(plain, [])
