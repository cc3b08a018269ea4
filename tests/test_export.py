"""Compact export: same predictions with only live units, in plain PyTorch and in .pt2, ONNX,
safetensors and (legacy) TorchScript files that run without neuroplast."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import neuroplast as npl
from neuroplast import cli
from neuroplast.data import load_dataset
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, load_run_model, run_standardisation, train_run


def _gated_mlp():
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 10), npl.UnitMask(10), nn.ReLU(),
        nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(), npl.UnitMask(8),
        nn.Linear(8, 6), nn.Tanh(), npl.UnitMask(6), nn.Linear(6, 3),
    )
    model[2].mask.copy_(torch.tensor([1, 0, 0.5, 1, 0, 0, 2, 1, 1, 0.25]))
    model[7].mask.copy_(torch.tensor([0, 1, 1, 0.5, 0, 1, 1, 1]))
    model[10].mask.copy_(torch.tensor([1, 0.5, 0, 1, 1, 3.0]))
    model.train()
    model(torch.randn(32, 1, 4, 4))  # BatchNorm statistics
    return model.eval()


def _all_plain(model):
    return all(type(m).__module__.startswith("torch.") for m in model.modules())


def test_compact_removes_dead_units_and_keeps_predictions():
    model = _gated_mlp()
    x = torch.randn(20, 1, 4, 4)
    compact = npl.compact_model(model)
    assert _all_plain(compact)
    linears = [m for m in compact.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [7, 6, 5, 3]
    torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-6)
    assert model[1].out_features == 10  # the source model is untouched


def test_compact_resnet_traces_custom_blocks_into_plain_pytorch():
    model = build_model("resnet20", (3, 32, 32), 10).eval()
    npl.prune_units(model, "layer1.0.conv1", [0, 1, 2])
    compact = npl.compact_model(model)
    assert _all_plain(compact)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compact(x), model(x))


def test_compact_linear_reads_only_its_live_input_features(tmp_path):
    # Zero columns are what NPN leaves for dead raw inputs: they must cost nothing.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    dead = [0, 3, 4, 9, 15]
    live = [i for i in range(16) if i not in dead]
    with torch.no_grad():
        model[1].weight[:, dead] = 0
    compact = npl.compact_model(model)
    assert _all_plain(compact)
    assert compact.get_submodule("1").in_features == len(live)
    # Independent: a plain network of the narrow width, fed only the live pixels.
    narrow = nn.Sequential(nn.Linear(len(live), 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        narrow[0].weight.copy_(model[1].weight[:, live])
        narrow[0].bias.copy_(model[1].bias)
        narrow[2].load_state_dict(model[3].state_dict())
    x = torch.randn(7, 1, 4, 4)
    torch.testing.assert_close(compact(x), narrow(x.flatten(1)[:, live]))
    torch.testing.assert_close(compact(x), model(x))
    # The whole pickled module loads and runs where neuroplast cannot be imported.
    torch.save(compact, tmp_path / "compact.pt")
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["neuroplast"] = None
        m = torch.load(r"{tmp_path / 'compact.pt'}", weights_only=False)
        torch.save(m(torch.load(r"{tmp_path / 'x.pt'}")), r"{tmp_path / 'y.pt'}")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x))


def test_feature_selection_acts_on_the_last_dimension_and_spares_all_zero_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[:, 1] = 0
        model[2].weight.zero_()  # all columns zero: the output is the bias, left as it is
    x = torch.randn(3, 7, 5)  # a Linear reads the last dimension, not dimension 1
    compact = npl.compact_model(model)
    assert compact.get_submodule("0").in_features == 4
    assert compact.get_submodule("2").in_features == 4
    torch.testing.assert_close(compact(x), model(x))


class _OwnForward(nn.Sequential):
    def forward(self, x):
        return self[0](x) + 1  # indexes its children: a selector inserted first would break it


def _reused_linear():
    shared = nn.Linear(6, 6)
    return nn.Sequential(shared, nn.ReLU(), shared)


def _tied_weights():
    first, second = nn.Linear(6, 6), nn.Linear(6, 6)
    second.weight = first.weight
    return nn.Sequential(first, nn.ReLU(), second)


def _parametrized():
    return nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(6, 3)))


@pytest.mark.parametrize("build", [_reused_linear, _tied_weights, _parametrized,
                                   lambda: _OwnForward(nn.Linear(6, 3))])
def test_linears_that_cannot_be_narrowed_alone_keep_their_zero_columns(build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not hasattr(module, "parametrizations"):
                module.weight[:, 2] = 0
        if hasattr(model[0], "parametrizations"):
            model[0].parametrizations.weight.original1[:, 2] = 0
    x = torch.randn(4, 6)
    compact = npl.compact_model(model)
    torch.testing.assert_close(compact(x), model(x))


def test_narrowing_keeps_a_frozen_weight_frozen_and_can_be_declined():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[:, [1, 3]] = 0
    model[0].weight.requires_grad_(False)
    assert not npl.compact_model(model).get_submodule("0").weight.requires_grad
    # select_inputs=False: zero columns stay, and neuroplast can still resize the result
    kept = npl.compact_model(model, select_inputs=False)
    assert isinstance(kept, nn.Sequential) and kept[0].in_features == 6
    npl.prune_units(kept, "0", [0, 1])
    assert kept[2].in_features == 2


def test_compacting_a_compact_traced_model_changes_nothing():
    # `neuroplast export` compacts the run's live model, which is already compact (and traced).
    model = build_model("resnet20", (3, 32, 32), 10).eval()
    npl.prune_units(model, "layer1.0.conv1", [0, 1, 2])
    compact = npl.compact_model(model)
    again = npl.compact_model(compact)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), model(x))
    assert npl.count_parameters(again) == npl.count_parameters(compact)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_deprecation_warnings_raised_from_neuroplast_fail_the_tests(category):
    # pyproject's filterwarnings: what neuroplast's own modules trigger is an error ...
    with pytest.raises(category):
        warnings.warn_explicit("old API", category, "export.py", 1, module="neuroplast.export")
    # ... and only theirs
    with pytest.warns(category):
        warnings.warn_explicit("old API", category, "x.py", 1, module="neuroplastic")


def _run_without_neuroplast(script: str) -> None:
    """Run ``script`` in a fresh Python in which importing neuroplast fails."""
    code = "import sys\nsys.modules['neuroplast'] = None  # importing neuroplast now fails\n"
    subprocess.run([sys.executable, "-c", code + textwrap.dedent(script)], check=True,
                   timeout=120)


def _mlp_on_digits():
    """A pruned MLP and real digits inputs; dead pixels make compaction select features."""
    data = load_dataset("digits", seed=0, standardise=False)
    model = build_model("mlp", (1, 8, 8), 10, widths=[12]).eval()
    npl.prune_units(model, "fc1", [0, 2, 3, 5, 6, 7, 8, 9, 11])
    with torch.no_grad():
        model.fc1.weight[:, data.x_train.flatten(1).std(0) == 0] = 0  # pixels that never vary
    return model, data.x_test[:5], data.x_test[5:9]


def _lenet5_on_images():
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10, widths=[6, 8, 20]).eval()
    npl.prune_units(model, "conv2", [0, 3, 5])
    return model, torch.rand(3, 1, 28, 28), torch.rand(4, 1, 28, 28)


def _resnet20_on_images():
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 32, 32), 10)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # BatchNorm statistics: what a short run leaves
    model.eval()
    npl.prune_units(model, "layer1.0.conv1", [0, 1, 2])
    return model, torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)


@pytest.mark.parametrize("build", [_mlp_on_digits, _lenet5_on_images, _resnet20_on_images],
                         ids=["mlp", "lenet5", "resnet20"])
def test_pt2_and_onnx_files_reproduce_the_compact_model_without_neuroplast(tmp_path, build):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, example, x = build()
    compact = npl.compact_model(model)
    with warnings.catch_warnings():  # no deprecated API, of neuroplast's or torch's
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        pt2 = npl.export_pt2(model, tmp_path / "model.pt2", example)
        onnx_path = npl.export_onnx(model, tmp_path / "model.onnx", example)
    torch.save(x, tmp_path / "x.pt")
    _run_without_neuroplast(f"""
        import onnxruntime, torch
        x = torch.load(r"{tmp_path / 'x.pt'}")
        program = torch.export.load(r"{pt2}").module()
        session = onnxruntime.InferenceSession(r"{onnx_path}")
        outputs = {{}}
        for rows in (len(x), 1):  # the batch dimension is dynamic
            outputs[f"pt2-{{rows}}"] = program(x[:rows])
            (logits,) = session.run(None, {{"input": x[:rows].numpy()}})
            outputs[f"onnx-{{rows}}"] = torch.from_numpy(logits)
        torch.save(outputs, r"{tmp_path / 'y.pt'}")
        """)
    outputs = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        expected = {len(x): compact(x), 1: compact(x[:1])}
        torch.testing.assert_close(expected[len(x)], model(x), rtol=1e-4, atol=1e-5)
    for rows, want in expected.items():
        torch.testing.assert_close(outputs[f"pt2-{rows}"], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(outputs[f"onnx-{rows}"], want, rtol=1e-4, atol=1e-5)


class _TokenBag(nn.Module):
    """A token model: integer ids in, the mean of their embeddings classified."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def test_exports_trace_with_the_example_inputs_dtype(tmp_path):
    # integer ids, as a token model reads: a float example could not be traced at all
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    model = _TokenBag().eval()
    ids = torch.randint(0, 20, (1, 7))  # one example: the batch stays dynamic all the same
    pt2 = npl.export_pt2(model, tmp_path / "bag.pt2", ids)
    onnx_path = npl.export_onnx(model, tmp_path / "bag.onnx", ids)
    batch = torch.randint(0, 20, (4, 7))
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(torch.export.load(pt2).module()(batch), expected)
    (logits,) = ort.InferenceSession(str(onnx_path)).run(None, {"input": batch.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-5, atol=1e-6)


def test_an_example_shape_alone_traces_float_inputs():
    model = _gated_mlp()
    x = npl.export.example_batch(model, (1, 4, 4))
    assert x.shape == (2, 1, 4, 4) and x.dtype == torch.float32
    ids = npl.export.example_batch(model, torch.tensor([[3, 1]]))
    assert ids.tolist() == [[3, 1], [3, 1]]  # a batch of one is repeated, dtype kept


def test_safetensors_holds_the_compact_weights_and_a_json_architecture(tmp_path):
    from safetensors.torch import load_file

    model = _gated_mlp()
    mean_std = ([0.5], [2.0])
    path = npl.export_safetensors(model, tmp_path / "model.safetensors", (1, 4, 4), mean_std,
                                  metadata={"model": "gated-mlp"})
    compact = npl.compact_model(model)
    weights = load_file(path)
    assert weights.keys() == compact.state_dict().keys()
    for name, tensor in compact.state_dict().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)
    record = json.loads(npl.export.architecture_path(path).read_text())
    linears = [layer for layer in record["layers"] if layer["type"] == "torch.nn.Linear"]
    assert [layer["out_features"] for layer in linears] == [7, 6, 5, 3]
    assert [layer["in_features"] for layer in linears] == [16, 7, 6, 5]
    assert record["input_shape"] == [1, 4, 4] and record["input_dtype"] == "float32"
    assert record["parameters"] == npl.count_parameters(compact)
    assert (record["input_mean"], record["input_std"]) == mean_std
    assert record["weights"] == "model.safetensors" and record["model"] == "gated-mlp"


def test_legacy_torchscript_file_runs_without_neuroplast_and_warns_nothing(tmp_path):
    model = _gated_mlp()
    with warnings.catch_warnings():  # torch deprecates torch.jit: silenced for this legacy path
        warnings.simplefilter("error")
        path = npl.export_torchscript(model, tmp_path / "model.pt", (1, 4, 4))
    x = torch.randn(5, 1, 4, 4)
    torch.save(x, tmp_path / "x.pt")
    _run_without_neuroplast(f"""
        import torch
        m = torch.jit.load(r"{path}")
        torch.save(m(torch.load(r"{tmp_path / 'x.pt'}")), r"{tmp_path / 'y.pt'}")
        """)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=1e-5, atol=1e-6)


def _blobs_run(tmp_path):
    """A tiny run on an .npz table whose features sit far from 0 (standardisation matters)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    x = rng.normal(size=(300, 5)) + y[:, None] * 2
    x = (x * np.array([1, 10, 100, 0.1, 5]) + np.array([0, 3, -200, 1, 40])).astype(np.float32)
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    config = RunConfig(method="fixed", model="mlp", dataset="npz",
                       data_dir=str(tmp_path / "blobs.npz"), widths=[8],
                       out=str(tmp_path / "run"),
                       train=TrainConfig(epochs=1, batch_size=32, seed=0, progress=False,
                                         threads=1, lr=0.01))
    train_run(config)
    return tmp_path / "run"


def test_a_run_exports_traced_with_its_own_data_or_without_it(tmp_path, monkeypatch):
    run_dir = _blobs_run(tmp_path)
    raw = load_dataset("npz", tmp_path / "blobs.npz", seed=0, standardise=False)
    examples = []
    export_model = npl.export.export_model

    def spy(model, path, fmt, example, mean_std=None):
        examples.append(example)
        return export_model(model, path, fmt, example, mean_std)

    monkeypatch.setattr(npl.export, "export_model", spy)
    (pt2,) = npl.export.export_run_model(run_dir)
    assert pt2 == run_dir / "model.pt2"
    # traced with the run's real test inputs, as the exported file takes them
    torch.testing.assert_close(examples[0], raw.x_test[:2])
    network, _ = load_run_model(run_dir)
    mean, std = (torch.tensor(v) for v in run_standardisation(run_dir))
    with torch.no_grad():  # inputs as the data set holds them, standardised inside the file
        expected = network((raw.x_test - mean) / std)
    torch.testing.assert_close(torch.export.load(pt2).module()(raw.x_test), expected,
                               rtol=1e-4, atol=1e-5)
    (tmp_path / "blobs.npz").unlink()  # the data is gone: the recorded shape is enough
    (other,) = npl.export.export_run_model(run_dir, output=tmp_path / "again.pt2")
    assert examples[1] == (5,)
    torch.testing.assert_close(torch.export.load(other).module()(raw.x_test), expected,
                               rtol=1e-4, atol=1e-5)


def test_cli_export_writes_every_format_pt2_by_default(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run_dir = _blobs_run(tmp_path)
    written = {}
    for fmt in (None, "onnx", "safetensors", "torchscript"):
        capsys.readouterr()
        assert cli.main(["export", str(run_dir), *(["--format", fmt] if fmt else [])]) == 0
        written[fmt] = capsys.readouterr().out.split()
    assert written == {
        None: [str(run_dir / "model.pt2")], "onnx": [str(run_dir / "model.onnx")],
        "safetensors": [str(run_dir / "model.safetensors"), str(run_dir / "model.json")],
        "torchscript": [str(run_dir / "model.torchscript.pt")]}
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    assert "torchscript: legacy" in " ".join(capsys.readouterr().out.split())


def test_a_gate_that_cannot_be_folded_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), npl.UnitMask(5), nn.Tanh(), nn.Linear(5, 2))
    model[2].mask.fill_(0.5)
    with pytest.raises(npl.ExportError, match="cannot fold"):
        npl.compact_model(model)


def test_load_run_model_gives_the_compact_model_the_run_evaluated(tmp_path):
    config = RunConfig(method="npn", model="mlp", dataset="digits", widths=[24],
                       out=str(tmp_path / "run"),
                       method_options={"lambdas": [2e-3], "lambda_unit": "weight",
                                       "stages": [0.2, 0.6]},
                       train=TrainConfig(epochs=5, batch_size=32, seed=1, progress=False,
                                         threads=1, lr=0.01))
    summary = train_run(config)
    model, shape = load_run_model(tmp_path / "run")
    assert npl.export._is_plain(model) and shape == (1, 8, 8)
    assert list(npl.layer_widths(model).values()) == summary["final_widths"][-1:]  # hidden
    # the test accuracy the run logged for its gated model, recomputed from the compact one
    data = load_dataset("digits", seed=1)
    with torch.no_grad():
        predicted = model(data.x_test).argmax(dim=1)
    accuracy = (predicted == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)  # one example: 3e-3


def _shifting_models():
    """Dead units whose consumer still reads a constant: a BatchNorm's shift, a sigmoid."""
    linear_bn = nn.Sequential(nn.Linear(3, 4), npl.UnitMask(4), nn.BatchNorm1d(4), nn.ReLU(),
                              nn.Linear(4, 2, bias=False))
    conv_bn = nn.Sequential(nn.Conv2d(1, 4, 3), npl.UnitMask(4), nn.ReLU(), nn.BatchNorm2d(4),
                            nn.MaxPool2d(2), nn.Conv2d(4, 3, 2), nn.Flatten(), nn.Linear(12, 2))
    conv_sigmoid = nn.Sequential(nn.Conv2d(1, 4, 3), npl.UnitMask(4), nn.Sigmoid(),
                                 nn.Flatten(), nn.Linear(4 * 36, 2))
    padded = nn.Sequential(nn.Conv2d(1, 4, 3), npl.UnitMask(4), nn.BatchNorm2d(4),
                           nn.Conv2d(4, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 36, 2))
    # (model, input shape, units left in the gated layer: 2 of 4 removed, or all 4 kept)
    return [(linear_bn, (3,), 2), (conv_bn, (1, 8, 8), 2), (conv_sigmoid, (1, 8, 8), 2),
            (padded, (1, 8, 8), 4)]


@pytest.mark.parametrize("all_dead", [False, True])
@pytest.mark.parametrize("index", range(4))
def test_dead_units_that_still_feed_a_constant_keep_the_predictions(index, all_dead):
    torch.manual_seed(index)
    model, shape, left = _shifting_models()[index]
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1.0, -0.2)  # BN(0) > 0: it passes the ReLU
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(0.2, 1.0)
    model[1].mask.copy_(torch.zeros(4) if all_dead else torch.tensor([1.0, 0.0, 0.5, 0.0]))
    model.eval()
    x = torch.randn(6, *shape)
    compact = npl.compact_model(model)
    if all_dead:  # one unit stays, delivering its constant once
        left = 4 if left == 4 else 1
    assert compact[0].weight.shape[0] == left  # removed where the constant moves into a bias
    torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)
