"""NPN's default price unit: lambda per parameter a unit holds, in units of the null loss.

What the unit promises, each checked against a computation that does not use the method's own
accounting: a gate costs exactly the parameters closing it removes from the exported network;
the price does not depend on how many training examples there are (a data set and a copy of it
twice as large, batch for batch the same function, give the same run); it follows the loss's
own scale (a regression whose targets are ten times larger moves the gates exactly alike).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neuroplast.data import DataSplits, load_dataset, streamed_splits
from neuroplast.methods.npn import NPN
from neuroplast.models import build_model
from neuroplast.train import TrainConfig, Trainer


def _parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _close(method: NPN, layer_index: int, unit: int) -> None:
    with torch.no_grad():
        method._layers[layer_index].gate.phi.view(-1)[unit] = -1.0


def test_a_gate_costs_the_parameters_closing_it_removes_from_the_export():
    for name, shape, options in (("mlp", (20,), {"widths": [16, 12]}),
                                 ("lenet5", (1, 28, 28), {}), ("resnet20", (3, 32, 32), {})):
        model = build_model(name, shape, 10, **options)
        method = NPN(k_schedule="1:inf")
        method.prepare_model(model)
        method.set_k(math.inf)
        full = _parameters(method.live_model(model))
        for index, layer in enumerate(method._layers):
            if layer.source is None and layer.dim == 1:
                continue  # a per-position gate of LeNet-5's fc1 inputs: no unit of its own
            probe = build_model(name, shape, 10, **options)
            probe_method = NPN(k_schedule="1:inf")
            probe_method.prepare_model(probe)
            probe_method.set_k(math.inf)
            _close(probe_method, index, 0)
            removed = full - _parameters(probe_method.live_model(probe))
            assert removed == layer.params_per_gate, (name, layer.name)
            # a hidden unit costs more than the weights its own gate switches (its row too),
            # and a ResNet stem channel, which feeds the residual stream, nothing
            stem = name == "resnet20" and layer.name == "conv1"
            assert (removed == 0) if stem else (removed > layer.weights_per_gate)


def test_the_penalty_is_lambda_times_the_null_loss_times_the_open_units_parameters():
    data = load_dataset("teacher", "d=12,h=4,c=3,n=600,noise=0,seed=0")
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[10])
    method = NPN(k_schedule="1:inf", lambdas=(1e-3,))
    Trainer(model, data, method, TrainConfig(epochs=1, progress=False, seed=0)).fit()
    counts = torch.bincount(data.y_val, minlength=3).double() / len(data.y_val)
    entropy = -sum(float(p * p.log()) for p in counts if p > 0)
    for unit in (0, 3, 4):
        _close(method, 0, unit)
    open_units = 10 - 3
    compact = method.live_model(model)
    # Every parameter of the compact network but the output layer's bias belongs to a unit.
    unit_parameters = _parameters(compact) - data.num_classes
    assert unit_parameters == open_units * (12 + 1 + 3)
    expected = 1e-3 * entropy * unit_parameters
    assert math.isclose(float(method.penalty()), expected, rel_tol=1e-6)


def _batches(data: DataSplits, repeat: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(1))
    batches = []
    for start in range(0, len(order), 50):
        index = order[start:start + 50]
        batches.append((data.x_train[index].repeat(repeat, 1), data.y_train[index].repeat(repeat)))
    return batches


def _run(data: DataSplits, repeat: int) -> tuple[NPN, list[dict]]:
    stream = streamed_splits(_batches(data, repeat), val=(data.x_val, data.y_val))
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[64])
    method = NPN(stages=(0.2, 0.8))
    history = Trainer(model, stream, method, TrainConfig(epochs=10, progress=False, seed=0)).fit()
    return method, history


def test_a_data_set_twice_as_large_with_the_same_function_gets_the_same_decisions():
    data = load_dataset("teacher", "d=10,h=4,c=3,n=1000,noise=0,seed=3")
    small, small_history = _run(data, 1)
    large, large_history = _run(data, 2)  # every batch holds each of its examples twice
    closed = [h["widths"]["out"] for h in small_history]
    assert closed[-1] < 64  # the run did prune: the comparison below means something
    assert [h["widths"] for h in large_history] == [h["widths"] for h in small_history]
    assert large._price_scale == small._price_scale
    # the price's unit, the null loss, read from the validation targets (a stream's first
    # batches need not be a fair sample): their class frequencies' entropy, by hand
    shares = torch.bincount(data.y_val).double() / len(data.y_val)
    assert math.isclose(small._null_loss, float(-(shares * shares.log()).sum()), rel_tol=1e-9)
    torch.testing.assert_close(large._layers[0].gate.phi, small._layers[0].gate.phi,
                               rtol=0, atol=1e-4)


def test_the_gates_move_alike_whatever_the_scale_of_a_regression_target():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    y = torch.tanh(x @ torch.randn(8, 3)) @ torch.randn(3)
    phis = []
    for scale in (1.0, 10.0):
        torch.manual_seed(1)
        model = build_model("mlp", (8,), 1, widths=[32])
        with torch.no_grad():  # the same function, its output in the targets' unit
            model.out.weight.mul_(scale)
            model.out.bias.mul_(scale)
        data = DataSplits("reg", x[:300], y[:300] * scale, x[300:], y[300:] * scale,
                          x[:0], y[:0], 1, (8,))
        method = NPN(k_schedule="1:7", lambdas=(3e-3,), adaptive=False)
        config = TrainConfig(epochs=2, batch_size=30, loss="mse", progress=False, seed=0)
        trainer = Trainer(model, data, method, config)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.endswith("phi"))  # the weights stay: only phi moves
        start = method._layers[0].gate.phi.detach().clone()
        trainer.fit()
        phis.append(method._layers[0].gate.phi.detach().clone())
        # the null loss of a regression: the validation targets' variance
        variance = float(((y[300:] * scale) - (y[300:] * scale).mean()).pow(2).mean())
        assert math.isclose(method._null_loss, variance, rel_tol=1e-5)
    assert (phis[0] - start).abs().max() > 1e-2  # the price and the data did move the gates
    torch.testing.assert_close(phis[1], phis[0], rtol=0, atol=1e-5)
