"""grow_units / prune_units / split_units against independent computations."""

import copy

import pytest
import torch
from torch import nn

import neuroplast as npl
from neuroplast.models import build_model


def _zero_fan_out(model, layer, units):
    group = npl.get_unit_group(model, layer)
    block = group.features_per_unit
    consumer = group.per_role("consumes")[0]
    columns = torch.cat([torch.arange(u * block, (u + 1) * block) for u in units])
    with torch.no_grad():
        getattr(consumer.module, consumer.tensor_name).index_fill_(consumer.dim, columns, 0.0)


def _integer_valued(model):
    """Small-integer weights in float64: every sum is exact whatever order BLAS adds it in."""
    model.double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randint(-1, 2, param.shape))
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = 0.0
                module.running_mean.copy_(torch.randint(-1, 2, module.running_mean.shape))
    return model


@pytest.mark.parametrize(
    "name,shape,layer",
    [("mlp", (1, 8, 8), "fc1"), ("mlp", (1, 8, 8), "fc2"), ("lenet5", (1, 28, 28), "conv2"),
     ("lenet5", (1, 28, 28), "conv1"), ("lenet5", (1, 28, 28), "fc1")],
)
def test_pruning_units_with_zero_fan_out_is_exact(name, shape, layer):
    model = _integer_valued(build_model(name, shape, 10)).eval()
    x = torch.randint(-1, 2, (5, *shape)).double()
    width = npl.layer_widths(model)[layer]
    dead = list(range(1, width, 3))
    _zero_fan_out(model, layer, dead)
    expected = model(x)
    keep = [u for u in range(width) if u not in dead]
    npl.prune_units(model, layer, keep)
    assert npl.layer_widths(model)[layer] == len(keep)
    assert torch.equal(model(x), expected)


def test_pruning_inside_a_residual_block_preserves_outputs():
    model = build_model("resnet20", (3, 32, 32), 10).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    dead = [0, 5, 9, 31]
    _zero_fan_out(model, "layer2.1.conv1", dead)
    expected = model(x)
    npl.prune_units(model, "layer2.1.conv1", [u for u in range(32) if u not in dead])
    assert model.layer2[1].bn1.num_features == 28 and model.layer2[1].conv2.in_channels == 28
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_prune_selects_exactly_the_kept_slices():
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    model[1].running_mean.copy_(torch.arange(6.0))
    before = copy.deepcopy(model)
    npl.prune_units(model, "0", [4, 1])  # order given does not matter: kept in original order
    assert torch.equal(model[0].weight, before[0].weight[[1, 4]])
    assert torch.equal(model[0].bias, before[0].bias[[1, 4]])
    assert torch.equal(model[1].running_mean, torch.tensor([1.0, 4.0]))
    assert torch.equal(model[3].weight, before[3].weight[:, [1, 4]])
    assert (model[0].out_features, model[1].num_features, model[3].in_features) == (2, 2, 2)


def test_grow_with_zero_fan_out_preserves_outputs_and_uses_given_fan_in():
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    fan_in = torch.randn(3, 20, 5, 5)
    npl.grow_units(model, "conv2", 3, fan_in=fan_in, bias=torch.ones(3))
    assert model.conv2.weight.shape == (53, 20, 5, 5)
    assert torch.equal(model.conv2.weight[50:], fan_in)
    assert model.fc1.weight.shape == (500, 53 * 16) and model.fc1.in_features == 848
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_grow_with_given_fan_out_changes_outputs_as_computed_by_hand():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(7, 2)
    fan_in, bias, fan_out = torch.randn(2, 2), torch.randn(2), torch.randn(1, 2)
    expected = model(x) + torch.relu(x @ fan_in.T + bias) @ fan_out.T
    npl.grow_units(model, "0", 2, fan_in=fan_in, bias=bias, fan_out=fan_out)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_function_preserving_split_copies_and_halves():
    model = build_model("mlp", (10,), 3, widths=[6, 5], batchnorm=True)
    model.train()
    model(torch.randn(32, 10))  # give BatchNorm non-trivial running statistics
    model.eval()
    x = torch.randn(9, 10)
    expected = model(x)
    npl.split_units(model, "fc1", [0, 4])
    assert npl.layer_widths(model) == {"fc1": 8, "fc2": 5}
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert torch.equal(model.bn1.running_mean[6:], model.bn1.running_mean[[0, 4]])


def test_split_through_flatten_preserves_outputs():
    model = build_model("lenet5", (1, 28, 28), 10).eval()
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    npl.split_units(model, "conv2", [3, 7, 11])
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_gradient_held_at_resize_follows_the_units():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    model(torch.randn(4, 3)).sum().backward()
    grad_in, grad_out = model[0].weight.grad.clone(), model[2].weight.grad.clone()
    npl.prune_units(model, "0", [0, 3])
    assert torch.equal(model[0].weight.grad, grad_in[[0, 3]])
    assert torch.equal(model[2].weight.grad, grad_out[:, [0, 3]])
    npl.grow_units(model, "0", 1)
    assert torch.equal(model[0].weight.grad[2], torch.zeros(3))


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_grow_rejects_bad_counts(n):
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="n >= 1"):
        npl.grow_units(model, "0", n)


def test_prune_rejects_empty_duplicate_and_out_of_range():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="at least 1 unit"):
        npl.prune_units(model, "0", [])
    with pytest.raises(ValueError, match="more than once"):
        npl.prune_units(model, "0", [1, 1])
    with pytest.raises(IndexError, match=r"0\.\.4.*\[5\]"):
        npl.prune_units(model, "0", [0, 5])
    with pytest.raises(IndexError, match="out-of-range"):
        npl.split_units(model, "0", [-1])


def test_grow_rejects_wrong_value_shapes_and_unknown_keys():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        npl.grow_units(model, "0", 2, fan_in=torch.zeros(2, 4))
    with pytest.raises(KeyError, match="not coupled"):
        npl.grow_units(model, "0", 2, values={"9.weight": torch.zeros(2)})


def test_set_layer_widths_rejects_width_below_one():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=">= 1"):
        npl.set_layer_widths(model, {"0": 0})


def test_set_layer_widths_draws_no_random_numbers():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    state = torch.get_rng_state()
    npl.set_layer_widths(model, {"0": 9})
    assert torch.equal(torch.get_rng_state(), state)


def test_grow_with_every_value_given_draws_no_random_numbers():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    state = torch.get_rng_state()
    npl.grow_units(model, "0", 2, fan_in=torch.ones(2, 3), bias=torch.zeros(2))
    assert torch.equal(torch.get_rng_state(), state)
