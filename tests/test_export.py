"""Compact export: same predictions with only live units, in plain PyTorch, TorchScript, ONNX."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import neuroplast as npl
from neuroplast.data import load_dataset
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, load_run_model, train_run


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


def test_torchscript_file_runs_without_neuroplast(tmp_path):
    model = _gated_mlp()
    path = npl.export_torchscript(model, tmp_path / "model.pt", (1, 4, 4))
    x = torch.randn(5, 1, 4, 4)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["neuroplast"] = None  # importing neuroplast now fails
        m = torch.jit.load(r"{path}")
        torch.save(m(torch.load(r"{tmp_path / 'x.pt'}")), r"{tmp_path / 'y.pt'}")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=1e-5, atol=1e-6)


def test_onnx_file_agrees(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = build_model("lenet5", (1, 28, 28), 10, widths=[6, 8, 20]).eval()
    npl.prune_units(model, "conv2", [0, 3, 5])
    path = npl.export_onnx(model, tmp_path / "model.onnx", (1, 28, 28))
    x = torch.randn(7, 1, 28, 28)
    session = ort.InferenceSession(str(path))
    (ours,) = session.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(ours), model(x), rtol=1e-4, atol=1e-5)


def test_a_gate_that_cannot_be_folded_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), npl.UnitMask(5), nn.Tanh(), nn.Linear(5, 2))
    model[2].mask.fill_(0.5)
    with pytest.raises(npl.ExportError, match="cannot fold"):
        npl.compact_model(model)


def test_load_run_model_gives_the_compact_model_the_run_evaluated(tmp_path):
    config = RunConfig(method="npn", model="mlp", dataset="digits", widths=[24],
                       out=str(tmp_path / "run"),
                       method_options={"lambdas": [2e-3], "stages": [0.2, 0.6]},
                       train=TrainConfig(epochs=5, batch_size=32, seed=1, progress=False,
                                         threads=1, lr=0.01))
    summary = train_run(config)
    model, shape = load_run_model(tmp_path / "run")
    assert npl.export._is_plain(model) and shape == (1, 8, 8)
    assert list(npl.layer_widths(model).values()) == summary["final_widths"][1:]  # hidden
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
