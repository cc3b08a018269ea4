"""A run directory stands on its own: export without the data, inputs as the data set holds
them, resume from another directory, and an --overwrite that fails keeps the old run."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from run_helpers import InterruptAt, assert_same_run

import neuroplast as npl
from neuroplast.data import load_dataset
from neuroplast.data.base import DataError
from neuroplast.export import ExportError
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import (
    RunConfig,
    export_run,
    load_run_model,
    resume_run,
    run_standardisation,
    train_run,
)


def _write_blobs(path, seed=0):
    """A small 3-class table whose features have very different scales and offsets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=600)
    centres = rng.normal(size=(3, 6)) * 2
    x = centres[y] + rng.normal(size=(600, 6))
    x = x * np.array([1, 10, 100, 0.1, 5, 50]) + np.array([0, 3, -200, 1, 40, 7])
    np.savez(path, x=x.astype(np.float32), y=y)


def _config(data_path, out, epochs=3, method="fixed", **options):
    return RunConfig(method=method, model="mlp", dataset="npz", data_dir=str(data_path),
                     widths=[16], out=str(out), method_options=options,
                     train=TrainConfig(epochs=epochs, batch_size=32, seed=0, progress=False,
                                       threads=1, lr=0.01))


def test_export_needs_no_data_and_takes_inputs_as_the_data_set_holds_them(tmp_path):
    data_path = tmp_path / "blobs.npz"
    _write_blobs(data_path)
    summary = train_run(_config(data_path, tmp_path / "run"))
    raw = load_dataset("npz", data_path, seed=0, standardise=False)  # test split, unscaled
    mean, std = run_standardisation(tmp_path / "run")
    assert np.allclose(mean, raw.x_train.mean(0).numpy(), rtol=1e-4, atol=1e-3)

    data_path.unlink()  # from here on the data set is gone, as on another machine
    path = export_run(tmp_path / "run", "torchscript")
    exported = torch.jit.load(str(path))
    with torch.no_grad():
        predicted = exported(raw.x_test).argmax(dim=1)
    accuracy = (predicted == raw.y_test).float().mean().item()
    # the accuracy the run logged on its own standardised test split, from raw inputs
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)  # one example: 8e-3

    network, shape = load_run_model(tmp_path / "run")  # the network alone: standardised inputs
    bare = export_run(tmp_path / "run", "torchscript", tmp_path / "bare.pt", standardise=False)
    standardised = (raw.x_test - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(bare))(standardised), network(standardised))
        torch.testing.assert_close(exported(raw.x_test), network(standardised),
                                   rtol=1e-4, atol=1e-4)
    assert shape == (6,)


def test_resume_works_from_another_directory(tmp_path, monkeypatch):
    data_path = tmp_path / "data" / "blobs.npz"
    data_path.parent.mkdir()
    _write_blobs(data_path)
    monkeypatch.chdir(tmp_path)  # the data directory is typed relative to here
    train_run(_config("data/blobs.npz", "straight", epochs=3))
    train_run(_config("data/blobs.npz", "cut", epochs=3), callbacks=[InterruptAt(2, 5)])
    saved = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert os.path.isabs(saved["data_dir"]) and saved["data"]["input_shape"] == [6]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = resume_run(tmp_path / "cut")
    assert resumed["epochs"] == 3
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_a_failed_overwrite_keeps_the_old_run(tmp_path):
    data_path = tmp_path / "blobs.npz"
    _write_blobs(data_path)
    train_run(_config(data_path, tmp_path / "run", epochs=1))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    config = _config(tmp_path / "missing.npz", tmp_path / "run", epochs=1)
    config.overwrite = True
    with pytest.raises(DataError):
        train_run(config)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    export_run(tmp_path / "run", "torchscript")  # and still loads


def test_missing_onnx_is_a_clear_error(tmp_path, monkeypatch):
    model = npl.build_model("mlp", (4,), 2, widths=[3])
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a base install without the extra
    with pytest.raises(ExportError, match=r"pip install 'neuroplast\[onnx\]'"):
        npl.export_onnx(model, tmp_path / "m.onnx", (4,))
    assert not (tmp_path / "m.onnx").exists()


def test_load_checkpoint_of_a_gated_run_points_to_load_run_model(tmp_path):
    data_path = tmp_path / "blobs.npz"
    _write_blobs(data_path)
    train_run(_config(data_path, tmp_path / "run", epochs=1, method="npn", stages=[0.0, 1.0]))
    with pytest.raises(npl.CheckpointError, match="load_run_model"):
        npl.load_checkpoint(tmp_path / "run" / "checkpoint")


def test_config_json_holds_every_method_option_and_old_runs_keep_their_defaults(tmp_path):
    import json

    from neuroplast.methods.npn import NPN
    from neuroplast.train.loop import TrainConfig
    from neuroplast.train.run import RunConfig, load_run_model, train_run

    def run(out, options):
        config = RunConfig(method="npn", model="mlp", dataset="digits", widths=[12],
                           out=str(out), method_options=options,
                           train=TrainConfig(epochs=2, batch_size=64, progress=False))
        train_run(config)
        return json.loads((out / "config.json").read_text())

    record = run(tmp_path / "new", {"lambdas": [1e-4]})
    assert set(record["method_options"]) == set(NPN().options())  # typed or not
    assert record["method_options"]["input_gates"] is False
    # A run made before config.json recorded every option, with the defaults of its time
    # (input gates on): its config.json held only what was typed.
    legacy = NPN.legacy_defaults
    record = run(tmp_path / "old", dict(legacy))
    record["method_options"] = {}
    del record["method_options_complete"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(record))
    model, shape = load_run_model(tmp_path / "old")  # fails if today's defaults rebuild it
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
