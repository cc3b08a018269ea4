"""ARM's antithetic pass reuses the first gated layer's main output where the gates agree."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from neuroplast.gates import npn as npn_module
from neuroplast.gates.attach import attach_npn_gates
from neuroplast.gates.npn import arm_loss


def _mlp(inplace=False):
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(36, 20), act1=nn.ReLU(inplace=inplace),
        fc2=nn.Linear(20, 10), act2=nn.ReLU(), out=nn.Linear(10, 3)))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), act1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(8, 6, 3, padding=1), act2=nn.ReLU(), flatten=nn.Flatten(),
        out=nn.Linear(6 * 3 * 3, 3)))


def _gated(build, confident):
    model = build()
    gates = [layer.gate for layer in attach_npn_gates(model)]
    generator = torch.Generator().manual_seed(1)
    for gate in gates:
        gate.k = 2.0
        if confident:  # most gates made up their minds (pi ~ 0 or 1), a quarter undecided
            phi = 3.0 * torch.randn(gate.phi.shape, generator=generator).sign()
            phi[torch.rand(gate.phi.shape, generator=generator) < 0.25] = 0.0
        else:
            phi = 0.2 * torch.randn(gate.phi.shape, generator=generator)
        gate.phi.data.copy_(phi)
    return model.train(), gates


def _step(model, gates, x, y, antithetic_delta):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    loss, logits = arm_loss(model, gates, x, y, antithetic_delta=antithetic_delta)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _mlp_inplace():  # the ReLU overwrites fc1's output, which the antithetic pass reuses
    return _mlp(inplace=True)


@pytest.mark.parametrize("build", [_mlp, _cnn, _mlp_inplace])
@pytest.mark.parametrize("confident", [True, False])
def test_the_delta_pass_gives_the_same_estimate_as_a_full_antithetic_pass(
        build, confident, monkeypatch):
    model, gates = _gated(build, confident)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    calls = []
    original = npn_module._antithetic_output

    def spy(gate, layer, x, main_output):
        main_gate, antithetic_gate = gate._staged
        calls.append(int((main_gate != antithetic_gate).sum()) / main_gate.numel())
        return original(gate, layer, x, main_output)

    monkeypatch.setattr(npn_module, "_antithetic_output", spy)
    delta = _step(model, gates, x, y, antithetic_delta=True)
    assert calls, "the delta path was not taken"
    if confident:  # few pairs disagree: only their units are recomputed
        assert 0 < calls[0] <= 0.5
    full = _step(model, gates, x, y, antithetic_delta=False)
    torch.testing.assert_close(delta[0], full[0], rtol=0, atol=0)  # the main pass is untouched
    torch.testing.assert_close(delta[1], full[1], rtol=0, atol=0)
    for name in full[2]:  # phi's ARM term differs only by float rounding
        torch.testing.assert_close(delta[2][name], full[2][name], rtol=1e-4, atol=1e-6,
                                   msg=name)
    assert any(name.endswith("phi") and full[2][name].abs().sum() > 0 for name in full[2])


def test_few_disagreeing_gates_recompute_only_their_units():
    model, gates = _gated(_mlp, confident=True)
    first = gates[0]  # the gate on fc1's 36 inputs
    first.phi.data.fill_(5.0)  # pi ~ 1: both gates of a pair are on ...
    first.phi.data[:3] = 0.0  # ... except three undecided units
    x = torch.randn(4, 1, 6, 6)
    seen = []
    linear = torch.nn.functional.linear

    def counting_linear(inputs, weight, bias=None):
        seen.append(inputs.shape[1])
        return linear(inputs, weight, bias)

    first.stage_draws(first.draw(4))
    try:
        with torch.no_grad():
            shared = model.flatten(x)
            main = model.fc1(first(shared))
            first._antithetic = True
            try:
                reference = model.fc1(first(shared))
                seen.clear()
                torch.nn.functional.linear = counting_linear
                try:
                    fast = npn_module._antithetic_output(first, model.fc1, shared, main)
                finally:
                    torch.nn.functional.linear = linear
            finally:
                first._antithetic = False
    finally:
        first.stage_draws(None)
    assert all(width <= 3 for width in seen)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


class _StandardizedConv(nn.Conv2d):
    """A conv whose forward transforms its weight: not linear in the raw ``weight``."""

    def forward(self, x):
        weight = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return self._conv_forward(x, weight, self.bias)


def test_only_plain_linear_and_conv_layers_take_the_delta_path(monkeypatch):
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), act1=nn.ReLU(),
        conv2=_StandardizedConv(8, 4, 3, padding=1), act2=nn.ReLU(), flatten=nn.Flatten(),
        out=nn.Linear(4 * 36, 3)))
    gates = [layer.gate for layer in attach_npn_gates(model)]
    for gate in gates:
        gate.k = 2.0
        gate.phi.data.fill_(3.0)
    calls, original = [], npn_module._antithetic_output
    monkeypatch.setattr(npn_module, "_antithetic_output",
                        lambda *args: calls.append(args) or original(*args))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    arm_loss(model.train(), gates, x, y)
    assert not calls
