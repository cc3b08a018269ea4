"""Splitting steepest descent: the splitting matrices, the loss change a split promises, and
its place in MetaNet.

The splitting matrices are rebuilt here by brute force (tanh's second derivative written out,
one d x d matrix per unit), and a split's effect is measured by running the network.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from neuroplast import build_model, layer_widths
from neuroplast.core.resize import split_units
from neuroplast.methods.metanet import MetaNet
from neuroplast.methods.proliferation import splitting_eigen, steepest_split


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


def test_a_lower_rank_never_finds_a_lower_eigenvalue_than_the_full_one():
    model, x, y = _trained(inputs=12)
    full, _ = splitting_eigen(model, "fc1", x, y)
    low, directions = splitting_eigen(model, "fc1", x, y, rank=4)
    assert (low >= full - 1e-12).all() and (low > full + 1e-9).any()
    assert torch.allclose(directions.norm(dim=1), torch.ones(len(directions), dtype=torch.float64))


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
