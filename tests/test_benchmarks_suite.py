"""The side-by-side suite's table: means and spreads over seeds, epoch time against fixed."""

import json
import statistics
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `benchmarks` is not installed; plain `pytest` may not see the root
    sys.path.insert(0, ROOT)

import benchmarks.__main__ as suite  # noqa: E402


def _record(method, seed, error, epoch_seconds, widths):
    return {"suite": "quick", "task": "digits", "method": method, "seed": seed,
            "command": f"neuroplast train --method {method} --seed {seed}",
            "test_error_percent": error, "final_widths": widths, "params": 100 * seed + 10,
            "macs": 50, "train_seconds": 1.0, "epoch_seconds": epoch_seconds}


def test_the_table_gives_mean_spread_and_epoch_time_relative_to_fixed(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    folder = tmp_path / "quick"
    folder.mkdir()
    rows = [_record("fixed", 0, 1.0, 0.2, {"fc1": 64}), _record("fixed", 1, 2.0, 0.2, {"fc1": 64}),
            _record("npn", 0, 1.5, 0.5, {"fc1": 50, "out": 60}),
            _record("npn", 1, 2.5, 0.3, {"fc1": 40, "out": 61})]
    for row in rows:
        name = f"{row['task']}--{row['method']}--s{row['seed']}.json"
        (folder / name).write_text(json.dumps(row))
    table = suite.write_table("quick")
    lines = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    spread = statistics.stdev([1.5, 2.5])
    assert f"2.00 ± {spread:.2f}" in lines["npn"] and "50-60 / 40-61" in lines["npn"]
    assert "2.00x" in lines["npn"] and "1.00x" in lines["fixed"]  # (0.5+0.3)/2 over 0.2
    assert "`neuroplast train --method npn --seed 0`" in lines["npn"]
    assert (folder / "table.md").read_text() == table


def test_growth_methods_start_from_eight_units_per_hidden_layer():
    lenet = suite.Task("mnist-lenet300", ["--model", "lenet300", "--epochs", "20"])
    start = suite._small_start(lenet)
    assert start[-2:] == ["--widths", "8,8"] and "mlp" in start
    mlp = suite.Task("fashion-mlp", ["--model", "mlp", "--widths", "256"])
    assert suite._small_start(mlp) == ["--model", "mlp", "--widths", "8"]


def test_the_frontier_holds_exactly_the_points_nothing_beats_on_both():
    import random

    rng = random.Random(0)
    for _ in range(50):
        # small ranges, so that exact ties (which are all on the frontier) occur
        points = [(rng.randint(1, 6), rng.randint(1, 6), f"m{i}") for i in range(8)]
        # by the definition, pair by pair: kept unless another point has no more parameters
        # and no more error while being strictly better on one of the two
        undominated = {p[2] for p in points if not any(
            q[0] <= p[0] and q[1] <= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in points)}
        line = suite.frontier(points)
        assert {p[2] for p in line} == undominated and len(line) == len(undominated)
        assert [p[0] for p in line] == sorted(p[0] for p in line)


def test_the_committed_quick_suite_rows_reproduce(tmp_path, monkeypatch):
    # The suite's commands as they stand now, run again: the same final accuracy, widths and
    # width curve as the JSONs committed when the suite last ran (digits, seed 0; a few
    # seconds each). A change of defaults that the suite's commands do not pin fails here.
    monkeypatch.setattr(suite, "RUNS", tmp_path)
    digits = next(task for task in suite._tasks("quick") if task.name == "digits")
    for method in ("npn", "metanet", "magnitude"):
        committed = json.loads((Path(ROOT) / "benchmarks" / "results" / "quick" /
                                f"digits--{method}--s0.json").read_text())
        record = suite.run_one("quick", digits, method, 0, threads=1)
        assert record["test_accuracy"] == committed["test_accuracy"], method
        assert record["final_widths"] == committed["final_widths"], method
        assert record["width_curve"] == committed["width_curve"], method
