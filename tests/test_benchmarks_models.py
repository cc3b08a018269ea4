"""benchmarks/models.py: the tiny zoo run end to end, and its MAC counter against a hand count."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from benchmarks.models import count_macs, count_params, main


def test_mac_counter_agrees_with_a_hand_count():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # Per example: 4 inputs x 8 outputs, then 8 x 2; the counter cuts the example to batch 1.
    assert count_macs(model, torch.randn(5, 4)) == 4 * 8 + 8 * 2
    assert count_params(model) == 4 * 8 + 8 + 8 * 2 + 2


@pytest.mark.parametrize("names", [["residual-cnn"], ["residual-cnn", "hf-bert"]])
def test_tiny_run_records_smaller_models(tmp_path, names):
    if "hf-bert" in names:
        pytest.importorskip("transformers")
    out = tmp_path / "models.json"
    main(["--tiny", "--only", ",".join(names), "--out", str(out)])
    results = json.loads(out.read_text())
    rows = {row["model"]: row for row in results["models"]}
    assert set(rows) == set(names)
    for row in rows.values():
        ours = row["neuroplast"]
        assert ours["groups"] == ours["units"] + ours["stream"] + ours["heads"] >= 1
        assert ours["params_after"] < row["params_before"]
        assert ours["macs_after"] < row["macs_before"]
        assert ours["trace_seconds"] > 0
        assert "error" in row["torch_pruning"] or row["torch_pruning"]["params_after"] > 0
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in names)
    # Resumable: a second run keeps the recorded entries instead of measuring them again.
    main(["--tiny", "--only", ",".join(names), "--out", str(out)])
    assert json.loads(out.read_text())["models"] == results["models"]
