"""The l0hc baseline: hard-concrete gates (Louizos et al. 2018) against independent computations."""

import math

import pytest
import torch

from neuroplast.data import load_dataset
from neuroplast.gates import HardConcreteGate
from neuroplast.gates.hard_concrete import BETA, GAMMA, ZETA
from neuroplast.methods import build_method
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig, Trainer


def _gate(log_alpha):
    gate = HardConcreteGate(len(log_alpha))
    gate.phi.data = torch.tensor(log_alpha, dtype=torch.float64)
    return gate


def test_expected_l0_matches_a_monte_carlo_estimate():
    log_alpha = [-3.0, -1.0, 0.0, 0.5, 2.0, 4.0]
    gate = _gate(log_alpha).train()
    torch.manual_seed(0)
    n = 200_000
    z = gate.sample(n).detach()
    nonzero = (z != 0).double().mean(0)
    closed = gate.probability().detach()
    bound = 5 * torch.sqrt(closed * (1 - closed) / n)  # 5 binomial standard errors
    assert torch.all((nonzero - closed).abs() < bound), (nonzero, closed)
    # and the closed form is the one of the paper, computed here from its definition
    expected = torch.sigmoid(torch.tensor(log_alpha, dtype=torch.float64)
                             - BETA * math.log(-GAMMA / ZETA))
    torch.testing.assert_close(closed, expected)


def test_samples_have_point_masses_at_zero_and_one_and_stay_in_range():
    gate = _gate([0.0] * 4).train()
    torch.manual_seed(1)
    z = gate.sample(50_000).detach()
    assert z.min() == 0 and z.max() == 1
    assert 0.05 < (z == 0).double().mean() < 0.3 and 0.05 < (z == 1).double().mean() < 0.3
    # P(z = 1) = P(s > (1 - gamma) / (zeta - gamma)) computed from the logistic distribution
    threshold = (1 - GAMMA) / (ZETA - GAMMA)
    p_one = 1 - torch.sigmoid(torch.tensor(BETA * math.log(threshold / (1 - threshold))))
    assert (z == 1).double().mean().item() == pytest.approx(p_one.item(), abs=0.01)


def test_the_test_time_gate_is_the_clipped_stretched_sigmoid():
    gate = _gate([-5.0, -2.0, 0.0, 3.0]).eval()
    stretched = torch.sigmoid(torch.tensor([-5.0, -2.0, 0.0, 3.0], dtype=torch.float64)) * 1.2 - 0.1
    torch.testing.assert_close(gate.test_gate(), stretched.clamp(0, 1))
    assert gate.active().tolist() == [False, True, True, True]
    x = torch.ones(2, 4, dtype=torch.float64)
    torch.testing.assert_close(gate(x), stretched.clamp(0, 1).expand(2, 4))


def test_log_alpha_learns_by_reparameterization():
    gate = _gate([0.0, 0.0]).train()
    torch.manual_seed(2)
    loss = gate(torch.ones(64, 2, dtype=torch.float64))[:, 0].sum()  # only unit 0 matters
    loss.backward()
    assert gate.phi.grad[0] > 0 and gate.phi.grad[1] == 0


def _digits_run(lambdas, epochs=15):
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[32])
    method = build_method("l0hc", {"lambdas": lambdas})
    trainer = Trainer(model, data, method, TrainConfig(epochs=epochs, lr=0.02, progress=False))
    trainer.fit()
    return trainer


def test_the_penalty_prunes_and_the_compact_model_predicts_like_the_gated_one():
    free = _digits_run((0.0,))
    pruned = _digits_run((1e-3,))
    free_widths = free.method.live_widths(free.model)
    widths = pruned.method.live_widths(pruned.model)
    assert sum(widths.values()) < sum(free_widths.values())
    assert widths["fc1"] < 48 and pruned.history[-1]["test_accuracy"] > 0.9
    compact = pruned.method.live_model(pruned.model).eval()
    gated = pruned.model.eval()
    x = pruned.data.x_test
    with torch.no_grad():
        torch.testing.assert_close(compact(x), gated(x), rtol=1e-4, atol=1e-5)
    # hidden units with a closed gate are gone; closed input features are not read at all
    assert compact.fc1.out_features == widths["out"] < 32
    assert compact.fc1.in_features == widths["fc1"]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="init_droprate"):
        build_method("l0hc", {"init_droprate": 1.0})
    with pytest.raises(ValueError, match="lambdas"):
        build_method("l0hc", {"lambdas": (-1.0,)})
