"""Splitting steepest descent: the splitting matrices, the loss change a split promises, and
its place in MetaNet.

The splitting matrices are rebuilt here by brute force (tanh's second derivative written out,
one d x d matrix per unit), and a split's effect is measured by running the network.
"""

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_metanet import _fake_trainer, _script
from torch import nn

from neuroplast import build_model, layer_widths
from neuroplast.core.resize import split_units
from neuroplast.methods.metanet import MetaNet as _MetaNet
from neuroplast.methods.proliferation import splitting_eigen, steepest_split


def MetaNet(**options) -> _MetaNet:
    """MetaNet's metabolism cycle, the behaviour these tests pin down (the default strategy is
    the width search: tests/test_metanet_search.py)."""
    return _MetaNet(**{"strategy": "metabolism", **options})


def _trained(activation="tanh", inputs=6, width=5, classes=3, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", (inputs,), classes, widths=[width], activation=activation)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(200, inputs, generator=generator)
    y = torch.randint(0, classes, (200,), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def _loss(model, x, y):
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(x).double(), y).item()


def _brute_force_matrices(model, x, y):
    """S_j = sum_n dL/dh_nj * tanh''(z_nj) * [x_n, 1][x_n, 1]^T, one (d+1) x (d+1) per unit."""
    with torch.no_grad():
        z = model.fc1(x).double()
    h = torch.tanh(z).requires_grad_(True)
    loss = F.cross_entropy(model.out(h.float()).double(), y)
    (dh,) = torch.autograd.grad(loss, h)
    second = -2 * torch.tanh(z) * (1 - torch.tanh(z) ** 2)
    xt = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    return [(xt.T * (dh[:, j] * second[:, j])) @ xt for j in range(z.shape[1])]


def _theta_norms(model):
    theta = torch.cat([model.fc1.weight.detach(), model.fc1.bias.detach()[:, None]], dim=1)
    return theta.double().norm(dim=1)


def test_splitting_eigen_matches_brute_force_splitting_matrices():
    model, x, y = _trained()
    values, directions = splitting_eigen(model, "fc1", x, y)
    for j, matrix in enumerate(_brute_force_matrices(model, x, y)):
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        assert values[j].item() == pytest.approx(eigenvalues[0].item(), rel=1e-5, abs=1e-9)
        alignment = torch.dot(directions[j], eigenvectors[:, 0]).abs().item()
        assert alignment == pytest.approx(1, abs=1e-4)
        # A Rayleigh quotient of the brute-force matrix: the direction is its minimiser.
        assert (directions[j] @ matrix @ directions[j]).item() == pytest.approx(
            eigenvalues[0].item(), rel=1e-5, abs=1e-9)


def test_a_lower_rank_solves_the_problem_in_the_inputs_principal_directions():
    model, x, y = _trained(inputs=12)
    full, _ = splitting_eigen(model, "fc1", x, y)
    low, directions = splitting_eigen(model, "fc1", x, y, rank=4)
    assert (low >= full - 1e-12).all() and (low > full + 1e-9).any()
    assert torch.allclose(directions.norm(dim=1), torch.ones(len(directions), dtype=torch.float64))
    # Independently: the top 4 principal directions of [x, 1] from NumPy's SVD, S projected.
    xt = np.concatenate([x.numpy(), np.ones((len(x), 1))], axis=1).astype(np.float64)
    basis = np.linalg.svd(xt, full_matrices=False)[2][:4].T
    for j, matrix in enumerate(_brute_force_matrices(model, x, y)):
        projected = basis.T @ matrix.numpy() @ basis
        assert low[j].item() == pytest.approx(np.linalg.eigvalsh(projected)[0], rel=1e-4)


def test_wide_layers_are_solved_in_chunks_with_the_same_answer():
    model, x, y = _trained(width=300)  # more units than one chunk of 256
    values, directions = splitting_eigen(model, "fc1", x, y)
    matrices = _brute_force_matrices(model, x, y)
    for j in (0, 255, 256, 299):
        eigenvalues, eigenvectors = torch.linalg.eigh(matrices[j])
        assert values[j].item() == pytest.approx(eigenvalues[0].item(), rel=1e-5, abs=1e-12)
        alignment = torch.dot(directions[j], eigenvectors[:, 0]).abs().item()
        assert alignment == pytest.approx(1, abs=1e-4)


def test_a_layer_without_bias_splits_its_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5, bias=False), act1=nn.Tanh(),
                                      out=nn.Linear(5, 3)))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=generator)
    y = torch.randint(0, 3, (200,), generator=generator)
    values, directions = splitting_eigen(model, "fc1", x, y)
    with torch.no_grad():
        z = model.fc1(x).double()
    h = torch.tanh(z).requires_grad_(True)
    (dh,) = torch.autograd.grad(F.cross_entropy(model.out(h.float()).double(), y), h)
    second = -2 * torch.tanh(z) * (1 - torch.tanh(z) ** 2)
    for j in range(5):
        matrix = (x.double().T * (dh[:, j] * second[:, j])) @ x.double()
        assert values[j].item() == pytest.approx(torch.linalg.eigvalsh(matrix)[0].item(),
                                                 rel=1e-5, abs=1e-12)
    assert (directions[:, -1] == 0).all()
    before = _loss(model, x, y)
    _, parents = steepest_split(model, "fc1", 5, inputs=x, targets=y, step=0.01)
    norms = model.fc1.weight.detach()[parents].double().norm(dim=1)  # parents' rows moved
    assert parents.numel() == 5
    predicted = (0.01**2 * norms**2 * values[parents] / 2).sum().item()
    assert _loss(model, x, y) - before == pytest.approx(predicted, rel=0.05)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_a_split_changes_the_loss_by_its_second_order_prediction(activation):
    model, x, y = _trained(activation)
    values, _ = splitting_eigen(model, "fc1", x, y)
    norms = _theta_norms(model)
    before = _loss(model, x, y)
    step = 0.01
    split = copy.deepcopy(model)
    _, parents = steepest_split(split, "fc1", 5, inputs=x, targets=y, step=step)
    assert layer_widths(split)["fc1"] == 5 + parents.numel() and parents.numel() > 0
    predicted = sum(step**2 * norms[p] ** 2 * values[p] / 2 for p in parents).item()
    assert predicted < 0
    assert _loss(split, x, y) - before == pytest.approx(predicted, rel=0.05)


def test_steepest_split_lowers_the_loss_more_than_splits_along_random_directions():
    model, x, y = _trained()
    step = 0.05
    steepest = copy.deepcopy(model)
    _, parents = steepest_split(steepest, "fc1", 2, inputs=x, targets=y, step=step)
    best = _loss(steepest, x, y)
    norms = _theta_norms(model)
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):  # the same split, each copy pushed along a random unit direction
        other = copy.deepcopy(model)
        split_units(other, "fc1", parents)
        with torch.no_grad():
            for copy_index, parent in zip((5, 6), parents.tolist(), strict=True):
                direction = torch.randn(7, generator=generator, dtype=torch.float64)
                shift = (step * norms[parent] * direction / direction.norm()).float()
                for row, sign in ((parent, 1), (copy_index, -1)):
                    other.fc1.weight[row] += sign * shift[:-1]
                    other.fc1.bias[row] += sign * shift[-1]
        assert best < _loss(other, x, y)


def test_only_the_most_negative_units_split_and_copies_keep_half_the_fan_out():
    model, x, y = _trained()
    values, _ = splitting_eigen(model, "fc1", x, y)
    before = copy.deepcopy(model)
    _, parents = steepest_split(model, "fc1", 2, inputs=x, targets=y, step=0.05)
    expected = torch.argsort(values)[:2].sort().values
    assert torch.equal(parents, expected)
    for copy_index, parent in zip((5, 6), parents.tolist(), strict=True):
        half = before.out.weight[:, parent] / 2
        assert torch.allclose(model.out.weight[:, parent], half)
        assert torch.allclose(model.out.weight[:, copy_index], half)
        # Parent and copy sit symmetrically around the parent's old fan-in.
        middle = (model.fc1.weight[parent] + model.fc1.weight[copy_index]) / 2
        assert torch.allclose(middle, before.fc1.weight[parent], atol=1e-6)
        assert not torch.allclose(model.fc1.weight[parent], before.fc1.weight[parent])


def test_units_whose_split_cannot_lower_the_loss_are_never_split():
    model, x, y = _trained()
    with torch.no_grad():  # a unit nobody reads: dL/dh = 0, so its splitting matrix is zero
        model.out.weight[:, 1] = 0
    values, _ = splitting_eigen(model, "fc1", x, y)
    assert values[1] == 0 and (values[[0, 2, 3, 4]] < 0).all()
    _, parents = steepest_split(model, "fc1", 5, inputs=x, targets=y)
    assert parents.tolist() == [0, 2, 3, 4]
    assert layer_widths(model)["fc1"] == 9


def test_relu_and_batchnorm_layers_are_clear_errors_before_training():
    model, x, y = _trained("relu")
    with pytest.raises(ValueError, match="second derivative.*use division"):
        steepest_split(model, "fc1", 2, inputs=x, targets=y)
    with pytest.raises(ValueError, match="second derivative.*--activation tanh"):
        MetaNet(proliferation="splitting").prepare_model(model)
    batchnorm = build_model("mlp", (6,), 3, widths=[5], activation="tanh", batchnorm=True)
    with pytest.raises(ValueError, match="BatchNorm1d"):
        MetaNet(proliferation="splitting").prepare_model(batchnorm)


def test_copies_start_with_a_zero_optimizer_state_and_parents_keep_theirs():
    # Measured: copies that inherit the parent's Adam moments separate worse (docs/metanet.md).
    model, x, y = _trained()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    before = optimizer.state[model.fc1.weight]["exp_avg"].clone()
    _, parents = steepest_split(model, "fc1", 2, inputs=x, targets=y, optimizer=optimizer)
    state = optimizer.state[model.fc1.weight]["exp_avg"]
    assert torch.equal(state[parents], before[parents])
    assert not state[5:].any()


def _splitting_trainer(dead_units):
    model = build_model("mlp", (20,), 5, widths=[8], activation="tanh")
    with torch.no_grad():  # units nobody reads have a zero splitting matrix: they cannot split
        model.out.weight[:, dead_units] = 0
    trainer = _fake_trainer(model)
    events = []
    trainer.log_event = events.append
    return trainer, events


def test_metanet_grows_only_the_units_that_can_split_and_keeps_its_books():
    method = MetaNet(proliferation="splitting", autophagy=False, trigger="schedule",
                     schedule_cycles=1)
    trainer, events = _splitting_trainer([1, 2])
    widths = _script(method, trainer, [(1.0, 1.0), (0.9, 0.9)])
    assert widths == [14, 14]  # 8 requested, 6 split
    assert "proliferation (splitting): 6 of the 8 requested units of fc1 have a split that " \
           "lowers the loss" in events
    assert all(units.numel() == 14 for units in method._units["fc1"].values())
    assert method.metrics(trainer)["total_births"] == 6


def test_metanet_ends_proliferation_when_no_split_lowers_the_loss():
    method = MetaNet(proliferation="splitting", autophagy=False, plateau_threshold=0.1)
    trainer, events = _splitting_trainer(list(range(8)))
    stalls = [(1.0, 1.0), (0.99, 0.99), (0.985, 0.985), (0.98, 0.98)]
    assert _script(method, trainer, stalls) == [8, 8, 8, 8]
    assert events.count("metanet: no split lowers the loss; proliferation ends") == 1
