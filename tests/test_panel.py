"""The task panel: its smoke run end to end, and the sufficient-width and goal arithmetic."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `benchmarks` is not installed; plain `pytest` may not see the root
    sys.path.insert(0, ROOT)

from benchmarks import panel  # noqa: E402
from neuroplast.data.teacher import parse_spec  # noqa: E402


def _fixed(width, seed, val, test, seconds=1.0):
    return {"task": "t", "method": "fixed", "width": width, "seed": seed, "failed": False,
            "selected_val_accuracy": val, "selected_test_accuracy": test,
            "train_seconds": seconds}


def _sweep(val_at_4):
    # two seeds per width; means: 2 -> 0.80, 4 -> val_at_4, 8 -> 0.953, 16 -> 0.955
    means = {2: 0.80, 4: val_at_4, 8: 0.953, 16: 0.955}
    records = []
    for width, mean in means.items():
        records += [_fixed(width, 0, mean - 0.01, 0.90 + width / 1000, width),
                    _fixed(width, 1, mean + 0.01, 0.90 + width / 1000, 3 * width)]
    return records


def test_the_sufficient_width_is_the_smallest_within_tolerance_on_validation():
    ref = panel.reference(_sweep(val_at_4=0.945), val_examples=10_000, test_examples=10_000)
    assert ref.best == 16 and ref.best_test == pytest.approx(0.916)
    # on 10000 examples one standard error (0.21 points) is below 0.5 points: 0.955 - 0.005
    assert ref.val_tolerance == 0.005 and ref.sufficient == 8
    assert ref.seconds[8] == 16 and ref.test[4] == pytest.approx(0.904)
    # on 400 examples one standard error, sqrt(0.955 * 0.045 / 400) = 1.04 points, admits 4
    small = panel.reference(_sweep(val_at_4=0.945), val_examples=400, test_examples=400)
    assert small.val_tolerance == pytest.approx(math.sqrt(0.955 * 0.045 / 400))
    assert small.sufficient == 4
    assert small.test_tolerance == pytest.approx(math.sqrt(0.916 * 0.084 / 400))
    # ties for the best go to the smaller width; failed runs do not count
    tied = _sweep(val_at_4=0.955) + [{**_fixed(32, 0, 0.99, 0.99), "failed": True}]
    assert panel.reference(tied, 10_000, 10_000).best == 4
    assert panel.reference([], 10, 10) is None


def test_the_goals_of_a_row():
    ref = panel.reference(_sweep(val_at_4=0.945), val_examples=10_000, test_examples=10_000)
    # width 12: ratio 12 / 8 = 1.5; starts 16 / 12; nearest sweep width on a log scale is 16
    # (log2 12 = 3.58); accuracy 0.912 is 0.4 points below the best's 0.916; 60 s / 32 s
    met = panel.goals(12, 16, 0.912, 60.0, ref)
    assert met["ratio"] == 1.5 and met["width_ok"]
    assert met["starts_ratio"] == pytest.approx(4 / 3) and met["starts_ok"]
    assert met["difference"] == pytest.approx(-0.004) and met["accuracy_ok"]
    assert met["time_ratio"] == pytest.approx(60 / 32) and met["time_ok"]
    missed = panel.goals(3, 1024, 0.91, 20.0, ref)  # nearest sweep width of 3: 4 (8 s)
    assert missed["ratio"] == 3 / 8 and not missed["width_ok"]
    assert missed["starts_ratio"] == 1024 / 3 and not missed["starts_ok"]
    assert missed["difference"] == pytest.approx(-0.006) and not missed["accuracy_ok"]
    assert missed["time_ratio"] == 20 / 8 and not missed["time_ok"]
    assert panel.nearest_width(2**1.5, [2, 4, 8]) == 2  # a tie goes to the smaller
    assert panel.nearest_width(0, [2, 4]) == 2
    single = panel.goals(16, None, 0.93, 1.0, ref)
    assert single["starts_ratio"] is None and single["starts_ok"] is None
    assert single["width_ok"] and single["accuracy_ok"]  # 16 / 8 = 2 is within x2
    assert panel.spread_ratio(0, 0) == 1 and panel.spread_ratio(0, 5) == math.inf
    counts = panel.goal_counts([
        {"method": "m", "start": 8, **met}, {"method": "m", "start": 8, **missed},
        {"method": "m", "start": 8, **single}])
    assert counts[("m", 8)] == {"width_ok": (2, 3), "starts_ok": (1, 2),
                                "accuracy_ok": (2, 3), "time_ok": (2, 3)}


def test_the_hidden_width_is_the_last_entry_whatever_it_counts():
    gated = {"layer_counts": ["input features", "input features"], "final_widths": [64, 23]}
    plain = {"layer_counts": ["units it outputs"], "final_widths": [23]}
    assert panel.hidden_width(gated) == panel.hidden_width(plain) == 23
    with pytest.raises(ValueError):
        panel.hidden_width({"layer_counts": ["output channels"], "final_widths": [3]})


def test_the_panel_spans_the_tasks_it_should_and_methods_start_where_they_can_move():
    tasks = panel._tasks()
    assert len(tasks) >= 12 and len({t.name for t in tasks}) == len(tasks)
    specs = [parse_spec(t.data[t.data.index("--data-dir") + 1]) for t in tasks
             if "teacher" in t.data]
    assert len(specs) == 8
    assert {min(s.h for s in specs), max(s.h for s in specs)} == {4, 128}
    assert {min(s.d for s in specs), max(s.d for s in specs)} == {10, 200}
    assert {min(s.c for s in specs), max(s.c for s in specs)} == {2, 10}
    assert {min(s.n for s in specs), max(s.n for s in specs)} == {2000, 50000}
    assert {s.noise > 0 for s in specs} == {True, False}
    lenet = next(t for t in tasks if t.model == "lenet5")
    labels = {job.label for job in panel.jobs([lenet], ["fixed", *panel.METHODS], [0])}
    assert "metanet-from8" not in labels and "l0hc-from8" not in labels
    assert {"net2net-from8", "l0hc-from1024", "npn-expand-from1024", "fixed-w1024"} <= labels
    assert "npn-expand-from8" not in labels and "npn-prune-from8" not in labels
    assert lenet.arguments(64)[:4] == ["--model", "lenet5", "--widths", "20,50,64"]
    assert tasks[0].widths() == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_the_tolerances_use_the_sizes_the_loader_gives():
    from neuroplast.data import load_dataset

    for task in panel._tasks()[:2] + [t for t in panel._tasks() if t.name in ("moons", "digits")]:
        dataset = task.data[1]
        data = load_dataset(dataset, task.data[3] if len(task.data) > 2 else None)
        assert (len(data.y_val), len(data.y_test)) == (task.val_size, task.test_size), task.name


def test_the_smoke_panel_runs_resumes_and_writes_its_table(tmp_path, capsys):
    results, runs = tmp_path / "results", tmp_path / "runs"
    panel.main(["--smoke", "--results", str(results), "--runs", str(runs)])
    records = {path.name: json.loads(path.read_text()) for path in results.glob("*.json")}
    expected = {f"{task.name}--{job.label}--s0.json" for task in panel._smoke_tasks()
                for job in panel.jobs([task], ["fixed", *panel.METHODS], [0])}
    assert set(records) == expected and len(expected) == 2 * (2 + 7)
    for record in records.values():
        assert not record["failed"], record.get("error")
        assert record["command"].startswith(f"neuroplast train --method {record['method'][:3]}")
        assert 0 <= record["test_accuracy"] <= 1 and record["hidden_width"] >= 0
    fixed = records["smoke-moons--fixed-w32--s0.json"]
    assert fixed["selected_epoch"] in (1, 2) and "--widths 32 --dataset moons" in fixed["command"]
    npn = records["smoke-teacher--npn-prune-from1024--s0.json"]
    assert "--npn-mode prune --model mlp --widths 1024 --dataset teacher" in npn["command"]
    table = (results / "table.md").read_text()
    assert (results / "widths.png").stat().st_size > 0
    for text in ("| smoke-teacher | 2, 64 |", "| smoke-moons | metanet | 1024 |",
                 "| net2net | 8 |", "Goals met"):
        assert text in table
    stamps = {path: path.stat().st_mtime_ns for path in results.glob("*.json")}
    capsys.readouterr()
    panel.main(["--smoke", "--results", str(results), "--runs", str(runs)])  # all done
    assert {path: path.stat().st_mtime_ns for path in results.glob("*.json")} == stamps
    assert "s0: test" not in capsys.readouterr().out
