"""SelfSizing: a method in a hand-written loop makes the decisions `neuroplast train` makes."""

from __future__ import annotations

import json

import pytest
import torch

from neuroplast.cli import main as cli_main
from neuroplast.data import load_dataset
from neuroplast.models import build_model
from neuroplast.sizing import SelfSizing
from neuroplast.train.run import seed_everything


def own_loop(method: str, epochs: int, widths: list[int], **options):
    """The loop a user writes: the Trainer's batches (its seed, order and size) by hand."""
    seed_everything(0)
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=widths)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.pop("lr", 1e-3))
    sizing = SelfSizing(method, model, optimizer, epochs=epochs, val=(data.x_val, data.y_val),
                        train=(data.x_train, data.y_train), **options)
    order_source = torch.Generator().manual_seed(0)
    records = []
    for _ in range(epochs):
        order = torch.randperm(len(data.y_train), generator=order_source)
        for start in range(0, len(order), 64):
            rows = order[start:start + 64]
            optimizer.zero_grad()
            sizing.loss(data.x_train[rows], data.y_train[rows]).backward()
            sizing.step()
        records.append(sizing.epoch_end())
    return records, sizing


def cli_run(tmp_path, *arguments):
    run = tmp_path / "run"
    code = cli_main(["train", "--dataset", "digits", "--model", "mlp", "--seed", "0",
                     "--out", str(run), "--no-progress", *arguments])
    assert code in (0, None)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["prune", "expand"])
def test_npn_in_an_own_loop_decides_as_neuroplast_train(tmp_path, mode):
    records, _ = own_loop("npn", 4, [64], mode=mode)
    expected = cli_run(tmp_path, "--method", "npn", "--widths", "64", "--epochs", "4",
                       "--npn-mode", mode)
    assert [r["widths"] for r in records] == [r["widths"] for r in expected]
    assert [r["events"] for r in records] == [r["events"] for r in expected]
    for got, want in zip(records, expected, strict=True):
        assert got["val_accuracy"] == pytest.approx(want["val_accuracy"], abs=1e-9)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)
    assert any(r["widths"] != records[0]["widths"] for r in expected)  # it decided something


def test_metanet_search_in_an_own_loop_decides_as_neuroplast_train(tmp_path):
    records, sizing = own_loop("metanet", 20, [128], lr=0.01)
    expected = cli_run(tmp_path, "--method", "metanet", "--widths", "128", "--epochs", "20",
                       "--lr", "0.01", "--scheduler", "none")
    # The search grows, compresses twice and goes back to a rung: every kind of decision.
    assert len({r["widths"]["fc1"] for r in records}) >= 3
    assert [r["widths"] for r in records] == [r["widths"] for r in expected]
    assert [r["events"] for r in records] == [r["events"] for r in expected]
    assert records[-1]["val_accuracy"] == pytest.approx(expected[-1]["val_accuracy"], abs=1e-9)


def test_step_before_loss_is_a_clear_error():
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[8])
    sizing = SelfSizing("fixed", model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                        val=(data.x_val, data.y_val))
    with pytest.raises(RuntimeError, match=r"call sizing.loss\(x, y\)"):
        sizing.step()


def test_metanet_searches_the_groups_of_a_traced_model():
    """MetaNet's width search on a model neuroplast cannot walk (a residual CNN written by
    hand): it grows and shrinks the block's traced group, the optimizer follows, training
    goes on at the chosen width."""
    from benchmarks.zoo import ResidualCNN

    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    images = data.x_train.repeat(1, 3, 1, 1), data.x_val.repeat(1, 3, 1, 1)
    model = ResidualCNN(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sizing = SelfSizing("metanet", model, optimizer, epochs=12, val=(images[1], data.y_val),
                        train=(images[0], data.y_train), example=images[1][:2])
    assert sizing.graph.widths() == {"stem:stream": 8, "conv1": 8}
    widths = []
    for _ in range(12):
        for rows in torch.randperm(len(data.y_train)).split(64):
            optimizer.zero_grad()
            sizing.loss(images[0][rows], data.y_train[rows]).backward()
            sizing.step()
        record = sizing.epoch_end()
        widths.append(model.conv1.out_channels)
    assert len(set(widths)) >= 2, widths  # the search resized the block
    assert model.bn1.num_features == model.conv1.out_channels == model.conv2.in_channels
    for parameter in model.parameters():
        state = optimizer.state.get(parameter)
        assert state is None or state["exp_avg"].shape == parameter.shape
    assert record["val_accuracy"] > 0.5
