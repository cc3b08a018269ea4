"""ARM's two passes share the layers before the first random gate: exactly, not approximately."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroplast.gates.attach import attach_npn_gates
from neuroplast.gates.npn import NPNGate, arm_loss


def _net():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 6, 3), act1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        drop=nn.Dropout(0.2),
        conv2=nn.Conv2d(6, 8, 3), act2=nn.ReLU(), flatten=nn.Flatten(),
        fc1=nn.Linear(8 * 3 * 3, 12), act3=nn.ReLU(), out=nn.Linear(12, 4)))


def _gated(per_example):
    model = _net()
    gates = [layer.gate for layer in attach_npn_gates(model)]
    for gate in gates:
        gate.per_example = per_example
        gate.k = 2.0
        gate.phi.data.normal_(0.2, 0.5)
    return model.train(), gates


def _step(model, gates, x, y, share_prefix, antithetic_delta=False):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    loss, logits = arm_loss(model, gates, x, y, share_prefix=share_prefix,
                            antithetic_delta=antithetic_delta)
    loss.backward()
    return loss.detach(), logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("per_example", [False, True])
def test_sharing_the_prefix_gives_identical_losses_and_gradients(per_example):
    model, gates = _gated(per_example)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 4, (16,))
    shared = _step(model, gates, x, y, share_prefix=True)
    separate = _step(model, gates, x, y, share_prefix=False)
    torch.testing.assert_close(shared[0], separate[0], rtol=0, atol=0)
    torch.testing.assert_close(shared[1], separate[1], rtol=0, atol=0)
    assert shared[2].keys() == separate[2].keys()
    for name in shared[2]:
        torch.testing.assert_close(shared[2][name], separate[2][name], rtol=0, atol=0,
                                   msg=name)
    assert any(name.endswith("phi") and shared[2][name].abs().sum() > 0 for name in shared[2])


def test_channel_gates_past_relu_and_pooling_compute_the_same_function():
    model, gates = _gated(per_example=True)
    names = [name for name, _ in model.named_children()]
    # placed past the ReLU, the pooling and the dropout that follow conv1
    assert names.index("conv1_gate") == names.index("drop") + 1
    # The same network with the gate right after its conv, as the reference places it.
    reference = nn.Sequential(OrderedDict(
        (name, module) for name, module in model.named_children() if name != "conv1_gate"))
    children = list(reference.named_children())
    children.insert(1, ("conv1_gate", model.conv1_gate))
    reference = nn.Sequential(OrderedDict(children))
    x = torch.randn(16, 1, 12, 12)
    for training in (False, True):
        model.train(training)
        reference.train(training)
        for gate in gates:  # the same gate draws for both, whatever order layers draw in
            gate.stage_draws(gate.draw(16) if training else None)
        torch.manual_seed(3)
        a = model(x)
        torch.manual_seed(3)
        b = reference(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for gate in gates:
        gate.stage_draws(None)


def test_a_model_that_is_not_a_plain_sequential_runs_whole():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _gated(False)[0]

        def forward(self, x):
            return self.body(x)

    model = Wrapped().train()
    gates = [m for m in model.modules() if isinstance(m, NPNGate)]
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 4, (8,))
    torch.manual_seed(1)
    loss, logits = arm_loss(model, gates, x, y)
    assert torch.isfinite(loss) and logits.shape == (8, 4)
    assert F.cross_entropy(logits, y).item() == pytest.approx(loss.item())
