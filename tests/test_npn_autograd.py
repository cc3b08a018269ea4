"""ARM's and the L0 term's gradients reach phi through autograd: exact for one batch, scaled
with the loss, additive over micro-batches, unscaled by AMP's GradScaler, the same under bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroplast.gates import NPNGate, arm_loss


def _net(per_example: bool = False, dtype=torch.float64):
    torch.manual_seed(0)
    gate = NPNGate(6, k=2.0, per_example=per_example)
    with torch.no_grad():
        gate.phi.copy_(torch.linspace(-0.5, 0.5, 6))
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), gate, nn.Linear(6, 2)).to(dtype).train()
    x = torch.randn(8, 3, dtype=dtype)
    y = torch.randint(0, 2, (8,))
    return model, gate, x, y


def _by_hand(model, z, x, y):
    """Per-example losses of the network written out, gates fixed to ``z``."""
    first, last = model[0], model[3]
    h = torch.relu(x @ first.weight.T + first.bias) * z
    return F.cross_entropy(h @ last.weight.T + last.bias, y, reduction="none")


def test_phi_gets_exactly_the_arm_estimate_for_one_batch():
    model, gate, x, y = _net()
    torch.manual_seed(3)
    loss, _ = arm_loss(model, [gate], x, y)
    loss.backward()
    torch.manual_seed(3)
    u = torch.rand(6, dtype=torch.float64)  # the draw arm_loss made: one per unit, shared
    pi = torch.sigmoid(gate.k * gate.phi.detach())
    with torch.no_grad():
        main = _by_hand(model, (u < pi).double(), x, y).mean()
        antithetic = _by_hand(model, (u > 1 - pi).double(), x, y).mean()
    expected = gate.k * (antithetic - main) * (u - 0.5)
    torch.testing.assert_close(gate.phi.grad, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss.detach(), main)  # the term adds nothing to the value


def test_the_estimate_scales_with_the_loss():
    grads = []
    for scale in (1.0, 0.25):
        model, gate, x, y = _net()
        torch.manual_seed(4)
        loss, _ = arm_loss(model, [gate], x, y)
        (scale * loss).backward()
        grads.append((gate.phi.grad.clone(), model[0].weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], 0.25 * grads[0][0])
    torch.testing.assert_close(grads[1][1], 0.25 * grads[0][1])


def test_four_micro_batches_accumulate_to_one_batch_of_four_times_the_size():
    model, gate, x, y = _net(per_example=True)
    x, y = x.repeat(4, 1) + 0.1 * torch.randn(32, 3, dtype=x.dtype), y.repeat(4)
    torch.manual_seed(5)
    loss, _ = arm_loss(model, [gate], x, y)
    loss.backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for part in range(4):
        rows = torch.arange(part * 8, part * 8 + 8)
        torch.manual_seed(5)  # the same draws: the whole batch's, these rows of them
        loss, _ = arm_loss(model, [gate], x[rows], y[rows], draw_rows=(32, rows))
        (loss / 4).backward()
    for accumulated, expected in zip((p.grad for p in model.parameters()), whole, strict=True):
        torch.testing.assert_close(accumulated, expected)


def test_grad_scaler_unscales_phi_like_every_weight():
    model, gate, x, y = _net(dtype=torch.float32)
    torch.manual_seed(6)
    loss, _ = arm_loss(model, [gate], x, y)
    loss.backward(retain_graph=True)
    plain = gate.phi.grad.clone()
    gate.phi.grad = None
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.testing.assert_close(gate.phi.grad, plain)


def test_a_bf16_autocast_step_on_cpu_makes_the_same_decisions():
    results = []
    for autocast in (False, True):
        model, gate, x, y = _net(dtype=torch.float32)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = arm_loss(model, [gate], x, y)
        loss.backward()
        torch.manual_seed(7)
        u = torch.rand(6)
        results.append((u, gate.phi.grad.clone()))
    (u32, g32), (u16, g16) = results
    assert torch.equal(u32, u16)  # the same gate draws, so the same sampled sub-networks
    # The same direction for every gate whose estimate is not lost in bf16's rounding.
    clear = g32.abs() > 0.05 * g32.abs().max()
    assert torch.equal(torch.sign(g32[clear]), torch.sign(g16[clear]))
    torch.testing.assert_close(g16, g32, rtol=0.1, atol=0.02 * float(g32.abs().max()))


@pytest.mark.parametrize("k", [float("inf"), 0.0])
def test_no_gradient_where_the_gates_do_not_learn(k):
    model, gate, x, y = _net()
    gate.k = k
    loss, _ = arm_loss(model, [gate], x, y)
    loss.backward()
    assert gate.phi.grad is None


def test_npn_keeps_phi_gradients_of_earlier_micro_batches():
    """With its own gate optimizer, NPN must not clear phi's gradient before each micro-batch
    (a reviewer found accumulation kept only the last one's); it clears after its step."""
    from neuroplast.methods.npn import NPN
    from neuroplast.models import build_model

    class Loop:
        pass

    grads = []
    for held in (None, 1.0):
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 10, widths=[12]).train()
        method = NPN(gate_optimizer="adam", k_schedule="1:3")
        method.prepare_model(model)
        method.set_k(3.0)
        loop = Loop()
        loop.model = model
        method._start_gate_optimizer(loop)
        gate = method._layers[0].gate
        gate.phi.grad = None if held is None else torch.full_like(gate.phi, held)
        torch.manual_seed(5)
        loss, _ = method.training_loss(loop, torch.randn(16, 1, 8, 8), torch.arange(16) % 10)
        loss.backward()
        grads.append(gate.phi.grad.clone())
    torch.testing.assert_close(grads[1] - 1.0, grads[0])
