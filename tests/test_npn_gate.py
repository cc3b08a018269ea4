"""NPN gates and ARM, checked against independent computations (exact expectations by
enumerating every gate configuration, hand-written networks)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroplast.gates import NPNGate, arm_loss, compact_npn
from neuroplast.gates.npn import check_k


def _tiny_net(hidden=4, batchnorm=False, seed=0):
    """Linear -> ReLU -> gate -> (BatchNorm) -> Linear: with BatchNorm after the gate, its batch
    statistics depend on the gates, which couples the examples of a batch."""
    torch.manual_seed(seed)
    gate = NPNGate(hidden, k=2.0)
    with torch.no_grad():
        gate.phi.copy_(torch.linspace(-0.6, 0.5, hidden))  # pi from about 0.23 to 0.73
    layers = [nn.Linear(3, hidden), nn.ReLU(), gate]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers.append(nn.Linear(hidden, 2))
    model = nn.Sequential(*layers).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    return model, gate, x, y


def _loss_with_gates(model, z, x, y, batchnorm):
    """The network by hand, gates fixed to ``z`` (shape (units,) or (batch, units))."""
    linear1, out = model[0], model[-1]
    h = torch.relu(x @ linear1.weight.T + linear1.bias) * z
    if batchnorm:
        bn = model[3]
        mean, var = h.mean(0), h.var(0, unbiased=False)
        h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    return F.cross_entropy(h @ out.weight.T + out.bias, y)


def _exact_gradient(model, gate, x, y, batchnorm=False, per_example=False):
    """d/dphi of E_z[loss] by summing over every gate configuration."""
    phi = gate.phi.detach().clone().requires_grad_(True)
    pi = torch.sigmoid(gate.k * phi)
    shape = (x.shape[0], phi.numel()) if per_example else (phi.numel(),)
    expected = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        losses = {}
        for bits in itertools.product((0.0, 1.0), repeat=math.prod(shape)):
            z = torch.tensor(bits, dtype=torch.float64).reshape(shape)
            losses[bits] = _loss_with_gates(model, z, x, y, batchnorm)
    for bits, loss in losses.items():
        z = torch.tensor(bits, dtype=torch.float64).reshape(shape)
        probability = torch.prod(torch.where(z > 0, pi.expand(shape), 1 - pi.expand(shape)))
        expected = expected + probability * loss
    (gradient,) = torch.autograd.grad(expected, phi)
    return gradient


def _arm_estimates(model, gate, x, y, n):
    estimates = []
    for _ in range(n):
        loss, _ = arm_loss(model, [gate], x, y)
        (estimate,) = torch.autograd.grad(loss, gate.phi)  # ARM's term is the loss's phi part
        estimates.append(estimate)
    return torch.stack(estimates)


def _assert_unbiased(estimates, exact, tightness=0.1):
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert torch.all((mean - exact).abs() <= 4 * stderr + 1e-6), (mean, exact, stderr)
    # The bound must be tight enough to mean something: well below the gradient's size.
    assert float(stderr.max()) < tightness * float(exact.abs().max())


@pytest.mark.parametrize("per_example", [False, True])
def test_arm_is_unbiased_against_exact_enumeration(per_example):
    model, gate, x, y = _tiny_net()
    gate.per_example = per_example
    model.train()
    exact = _exact_gradient(model, gate, x, y)
    _assert_unbiased(_arm_estimates(model, gate, x, y, 3000), exact)


def test_arm_is_unbiased_with_batchnorm_and_updates_running_stats_once():
    model, gate, x, y = _tiny_net(hidden=3, batchnorm=True)
    model.train()
    exact = _exact_gradient(model, gate, x, y, batchnorm=True)
    bn = model[3]
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    seen = []
    bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(0)))
    _assert_unbiased(_arm_estimates(model, gate, x, y, 3000), exact)
    # Each step moved the running statistics exactly once, by the main pass's batch mean.
    assert len(seen) == 2 * 3000 and int(bn.num_batches_tracked) == before[1] + 3000
    expected_mean = before[0]
    for main_pass in seen[0::2]:
        expected_mean = 0.9 * expected_mean + 0.1 * main_pass
    torch.testing.assert_close(bn.running_mean, expected_mean)


def test_per_example_arm_with_batchnorm_is_unbiased():
    # BatchNorm couples the examples of a batch; the per-example estimate must stay unbiased.
    torch.manual_seed(1)
    model, gate, x, y = _tiny_net(hidden=2, batchnorm=True)
    x, y = x[:3], y[:3]
    gate.per_example = True
    model.train()
    exact = _exact_gradient(model, gate, x, y, batchnorm=True, per_example=True)
    # Summing over the batch costs variance: a looser (still informative) bound.
    _assert_unbiased(_arm_estimates(model, gate, x, y, 6000), exact, tightness=0.25)


def test_arm_accumulates_with_the_penalty_gradient():
    model, gate, x, y = _tiny_net()
    model.train()
    torch.manual_seed(5)
    gate.phi.grad = None
    loss, _ = arm_loss(model, [gate], x, y)
    (arm,) = torch.autograd.grad(loss, gate.phi, retain_graph=True)
    penalty = 0.3 * gate.probability().sum()
    (loss + penalty).backward()
    pi = torch.sigmoid(gate.k * gate.phi.detach())
    torch.testing.assert_close(gate.phi.grad, arm + 0.3 * gate.k * pi * (1 - pi))


def test_k_infinity_is_deterministic_and_freezes_phi():
    model, gate, x, y = _tiny_net()
    gate.k = math.inf
    model.train()
    assert torch.equal(gate.probability(), (gate.phi.detach() > 0).double())
    loss, _ = arm_loss(model, [gate], x, y)
    (loss + gate.probability().sum()).backward()
    assert gate.phi.grad is None
    z = (gate.phi.detach() > 0).double()
    torch.testing.assert_close(loss, _loss_with_gates(model, z, x, y, False))


def test_k_zero_is_dropout_with_rate_half_and_leaves_phi_alone():
    model, gate, x, y = _tiny_net(hidden=64)
    gate.k = 0.0
    assert torch.all(gate.probability() == 0.5)
    assert torch.all(gate.test_gate() == 0.5)  # dropout's test-time weight scaling
    model.train()
    loss, _ = arm_loss(model, [gate], x, y)
    (loss + gate.probability().sum()).backward()
    assert gate.phi.grad is None or torch.all(gate.phi.grad == 0)
    kept = torch.stack([gate(torch.ones(1, 64, dtype=torch.float64)) for _ in range(200)])
    assert abs(float(kept.mean()) - 0.5) < 0.02
    assert set(kept.unique().tolist()) == {0.0, 1.0}


def test_gates_are_exact_binary_draws_shared_by_the_batch_by_default():
    gate = NPNGate(6, k=1.0)
    gate.train()
    out = gate(torch.ones(8, 6))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(out == out[:1])  # one draw per mini-batch
    gate.per_example = True
    outs = torch.stack([gate(torch.ones(8, 6)) for _ in range(10)])
    assert not torch.all(outs == outs[:, :1])


def test_test_time_gate_and_architecture_count():
    gate = NPNGate(4, k=7.0)
    with torch.no_grad():
        gate.phi.copy_(torch.tensor([-0.2, 0.0, 0.05, 1.0]))
    gate.eval()
    pi = torch.sigmoid(7 * gate.phi.detach())
    torch.testing.assert_close(gate(torch.ones(1, 4))[0], torch.tensor([0.0, 0.5, pi[2], pi[3]]))
    assert int(gate.active().sum()) == 3


def test_positional_gate_follows_channels_and_compacts():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    gate = NPNGate(4, positions=4, k=7.0)
    with torch.no_grad():
        gate.phi.copy_(torch.randn(4, 4))
        gate.phi[1] = -1.0  # a whole channel dead
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), gate, nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    x = torch.randn(5, 1, 6, 6)
    compact = compact_npn(model)
    torch.testing.assert_close(compact(x), model(x))
    assert compact.get_submodule("0").out_channels == 3
    # The Linear reads only the live (channel, position) features, counted from the gate.
    assert compact.get_submodule("5").in_features == int((gate.test_gate() > 0).sum())
    assert not any(isinstance(m, NPNGate) for m in compact.modules())


def test_bad_k_is_a_clear_error():
    with pytest.raises(ValueError, match="k must be >= 0"):
        NPNGate(3, k=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        check_k("seven")
    assert check_k("inf") == math.inf
