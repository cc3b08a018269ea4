"""Unit-group discovery: which tensors follow which units, and clear errors where none can."""

import warnings

import pytest
import torch
from torch import nn

import neuroplast as npl
from neuroplast import LayerCoupling, register_layer
from neuroplast.models import build_model


def test_mlp_groups_couple_producer_batchnorm_and_consumer():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    group = npl.get_unit_group(model, "0")
    keys = {(c.key, c.dim, c.role) for c in group.tensors}
    assert keys == {
        ("0.weight", 0, "produces"), ("0.bias", 0, "produces"),
        ("1.weight", 0, "per_unit"), ("1.bias", 0, "per_unit"),
        ("1.running_mean", 0, "per_unit"), ("1.running_var", 0, "per_unit"),
        ("3.weight", 1, "consumes"),
    }
    assert group.width == 8 and group.features_per_unit == 1


def test_conv_flatten_linear_owns_a_block_of_columns():
    model = build_model("lenet5", (1, 28, 28), 10)
    assert npl.layer_widths(model) == {"conv1": 20, "conv2": 50, "fc1": 500}
    assert npl.get_unit_group(model, "conv2").features_per_unit == 16


def test_resnet_inner_convs_are_resizable_and_residual_stream_is_not():
    model = build_model("resnet20", (3, 32, 32), 10)
    widths = npl.layer_widths(model)
    assert list(widths) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    with pytest.raises(npl.NotResizableError, match="residual"):
        npl.get_unit_group(model, "conv1")
    with pytest.raises(npl.NotResizableError, match="outputs leave"):
        npl.get_unit_group(model, "fc")


class Mystery(nn.Module):
    def forward(self, x):
        return x


def test_unsupported_layer_in_the_way_is_named():
    model = nn.Sequential(nn.Linear(4, 8), Mystery(), nn.Linear(8, 2))
    with pytest.raises(npl.NotResizableError, match=r"'1' \(Mystery\).*register_layer"):
        npl.prune_units(model, "0", [0, 1])


def test_unsupported_layer_itself_is_named():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Mystery(), nn.Linear(8, 2))
    with pytest.raises(npl.UnsupportedLayerError, match="Mystery"):
        npl.get_unit_group(model, "2")


def test_model_that_is_not_a_chain_gets_a_clear_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(npl.UnsupportedModelError, match="register_block"):
        npl.find_unit_groups(Net())


def test_unknown_layer_name_lists_choices():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(npl.NotResizableError, match="resizable layers: 0"):
        npl.grow_units(model, "fc9", 2)


def test_grouped_conv_is_refused_with_reason():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 3))
    with pytest.raises(npl.NotResizableError, match="groups=2"):
        npl.grow_units(model, "0", 2)


@pytest.mark.parametrize("where", ["producer", "consumer", "hook"])
def test_reparametrized_weights_are_refused_before_anything_changes(where):
    """weight_norm keeps the real tensors hidden: resizing the visible weight used to 'succeed'
    and the next forward pass failed with a shape error."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    if where == "hook":
        with warnings.catch_warnings():  # deprecated in recent torch, with varying warnings
            warnings.simplefilter("ignore")
            nn.utils.weight_norm(model[0])
    else:
        nn.utils.parametrizations.weight_norm(model[0 if where == "producer" else 2])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(npl.NotResizableError, match="weight_norm|remove_parametrizations"):
        npl.grow_units(model, "0", 2)
    assert [p.shape for p in model.parameters()] == [p.shape for p in before]
    assert model(torch.randn(3, 4)).shape == (3, 2)


class Scale(nn.Module):
    """A user layer with one learned factor per unit."""

    def __init__(self, n):
        super().__init__()
        self.factor = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.factor


def test_registered_custom_layer_follows_its_units():
    register_layer(Scale, LayerCoupling(per_unit=(("factor", 0),), new_unit_fill={"factor": 1.0}))
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[1].factor.copy_(torch.arange(6.0))
    npl.prune_units(model, "0", [1, 4])
    assert model[1].factor.tolist() == [1.0, 4.0]
    npl.grow_units(model, "0", 2)
    assert model[1].factor.tolist() == [1.0, 4.0, 1.0, 1.0]
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_registered_block_exposes_its_inner_chain():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 7)
            self.b = nn.Linear(7, 5)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))

    npl.register_block(Block, [["a", "b"]])
    model = nn.Sequential(nn.Linear(3, 5), Block(), nn.Linear(5, 2))
    assert npl.layer_widths(model) == {"1.a": 7}
    npl.grow_units(model, "1.a", 3)
    assert model(torch.randn(2, 3)).shape == (2, 2)
