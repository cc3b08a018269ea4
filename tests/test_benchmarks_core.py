"""Smoke test of ``python -m benchmarks.core --quick``: the JSON has every key, numbers > 0.

No timing assertions: the numbers depend on the machine and its load.
"""

import json
import math
import sys
from pathlib import Path

import torch

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `benchmarks` is not installed; plain `pytest` may not see the root
    sys.path.insert(0, ROOT)

from benchmarks.core import main  # noqa: E402


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_complete_json(tmp_path):
    out = tmp_path / "results" / "core.json"
    threads = torch.get_num_threads()
    returned = main(["--quick", "--out", str(out), "--threads", "1"])
    assert torch.get_num_threads() == threads  # the benchmark restores the thread count
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert not list(out.parent.glob(".*.tmp"))
    assert {"machine", "date", "command", "resize_cost", "latency"} <= set(data)
    assert data["command"].startswith("python -m benchmarks.core")
    machine = data["machine"]
    assert {"cpu", "cores", "torch", "threads"} <= set(machine)
    assert machine["threads"] == 1 and machine["cores"] >= 1

    assert {row["model"] for row in data["resize_cost"]} == {"lenet300", "lenet5"}
    for row in data["resize_cost"]:
        for key in ("step_ms", "prune_ms", "grow_ms", "prune_over_step", "grow_over_step"):
            assert _positive(row[key]), (key, row)
        assert 0 < row["prune_keep"] < row["width"] and row["grow_n"] >= 1

    assert data["latency"]
    goal_rows = 0
    for row in data["latency"]:
        for variant in ("unpruned", "compact", "hand_built"):
            assert _positive(row["ms"][variant]) and _positive(row["params"][variant])
        for key in ("speedup_compact", "speedup_hand_built", "compact_over_hand_built_ms",
                    "macs_ratio"):
            assert _positive(row[key]), (key, row)
        assert row["macs"]["compact"] < row["macs"]["unpruned"]
        assert row["params"]["compact"] == row["params"]["hand_built"]
        assert row["params"]["compact"] < row["params"]["unpruned"]
        assert row["outputs_match"] is True
        if row["batch"] == 256:
            goal_rows += 1
            assert isinstance(row["goal_met"], bool)
            assert row["goal_met"] or isinstance(row["why"], str) and row["why"]
            profile = row["profile_ms_per_forward"]["compact"]
            assert profile["dense_ms"] >= 0 and profile["other_ms"] >= 0
        else:
            assert row["goal_met"] is None
    assert goal_rows > 0
