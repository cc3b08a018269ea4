"""Optimizer continuity: training across a resize equals training a model built at the new width.

The reference is built by hand in this file: sliced/padded weights and optimizer state loaded
through torch's own ``load_state_dict`` into a fresh optimizer over a fresh model.
"""

import copy

import pytest
import torch
from torch import nn

import neuroplast as npl

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, amsgrad=True),
}


def _data(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(steps)]


def _train(model, optimizer, batches, scheduler=None):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _net(width):
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3))


def _sliced(tensor, dim, keep, pad):
    kept = tensor.index_select(dim, torch.tensor(keep))
    shape = list(tensor.shape)
    shape[dim] = pad
    return torch.cat([kept, tensor.new_zeros(shape)], dim)


def _reference(snapshot, opt_state, kind, keep, grow=None):
    """Model + optimizer at the new width, built by hand from the pre-resize snapshot."""
    pad = 0 if grow is None else grow[0].shape[0]
    new = _net(len(keep) + pad)
    w1, b1, w2, b2 = (p.detach() for p in snapshot.parameters())
    with torch.no_grad():
        new[0].weight.copy_(_sliced(w1, 0, keep, pad))
        new[0].bias.copy_(_sliced(b1, 0, keep, pad))
        new[2].weight.copy_(_sliced(w2, 1, keep, pad))
        new[2].bias.copy_(b2)
        if grow is not None:
            new[0].weight[len(keep):] = grow[0]
            new[0].bias[len(keep):] = grow[1]
    dims = [0, 0, 1, None]
    state = {}
    for index, dim in enumerate(dims):
        state[index] = {
            key: (_sliced(value, dim, keep, pad) if dim is not None and value.dim() > 0
                  else value.clone())
            for key, value in opt_state["state"][index].items()
        }
    optimizer = OPTIMIZERS[kind](new.parameters())
    optimizer.load_state_dict({"state": state, "param_groups": opt_state["param_groups"]})
    return new, optimizer


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("event", ["prune", "grow"])
def test_training_continues_as_if_built_at_the_new_width(kind, event):
    model = _net(8)
    optimizer = OPTIMIZERS[kind](model.parameters())
    _train(model, optimizer, _data(5, seed=1))
    snapshot, opt_state = copy.deepcopy(model), copy.deepcopy(optimizer.state_dict())
    if event == "prune":
        keep, grow = [0, 2, 3, 6], None
        npl.prune_units(model, "0", keep, optimizer=optimizer)
    else:
        keep, grow = list(range(8)), (torch.randn(3, 6), torch.randn(3))
        npl.grow_units(model, "0", 3, fan_in=grow[0], bias=grow[1], optimizer=optimizer)
    reference, ref_optimizer = _reference(snapshot, opt_state, kind, keep, grow)
    later = _data(6, seed=2)
    _train(model, optimizer, later)
    _train(reference, ref_optimizer, later)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert optimizer.state_dict()["state"][0]["step"] == ref_optimizer.state_dict()["state"][0][
        "step"] if kind != "sgd" else True


def test_param_groups_keep_hyper_parameters_and_scheduler_keeps_working():
    model = _net(8)
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1, "momentum": 0.9},
         {"params": model[2].parameters(), "lr": 0.01, "momentum": 0.5, "nesterov": True}],
        lr=0.5,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    _train(model, optimizer, _data(3), scheduler)
    npl.prune_units(model, "0", [1, 2, 5], optimizer=optimizer)
    params = [list(g["params"]) for g in optimizer.param_groups]
    assert params[0] == [model[0].weight, model[0].bias]
    assert params[1] == [model[2].weight, model[2].bias]
    assert optimizer.param_groups[1]["nesterov"] and optimizer.param_groups[1]["momentum"] == 0.5
    assert set(optimizer.state) == set(model.parameters())  # stale keys dropped
    _train(model, optimizer, _data(3, seed=5), scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_parameters_outside_the_optimizer_are_left_alone():
    model = _net(6)
    optimizer = torch.optim.Adam(model[2].parameters())
    _train(model, optimizer, _data(2))
    npl.grow_units(model, "0", 2, optimizer=optimizer)
    assert optimizer.param_groups[0]["params"] == [model[2].weight, model[2].bias]
    assert optimizer.state[model[2].weight]["exp_avg"].shape == (3, 8)


def test_state_not_shaped_like_the_parameter_is_refused():
    model = _net(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.state[model[0].weight]["odd"] = torch.zeros(3)
    optimizer.state[model[2].weight]["odd"] = torch.zeros(3)  # a tensor resized after the first
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(npl.core.UnsupportedOptimizerStateError, match="odd"):
        npl.prune_units(model, "0", [0, 1], optimizer=optimizer)
    # nothing was changed: not the model, not the optimizer's hold on its parameters
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in before.items()}
    assert model[0].out_features == 6 and model(torch.randn(2, 6)).shape == (2, 3)
    assert optimizer.param_groups[0]["params"][0] is model[0].weight


def test_new_units_start_where_the_optimizer_starts_a_fresh_parameter():
    model = _net(6)
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=0.3)
    _train(model, adagrad, _data(2))
    npl.grow_units(model, "0", 2, optimizer=adagrad)
    fresh = torch.optim.Adagrad([nn.Parameter(torch.zeros(2, 6))], initial_accumulator_value=0.3)
    fresh_sum = next(iter(fresh.state.values()))["sum"]
    torch.testing.assert_close(adagrad.state[model[0].weight]["sum"][6:], fresh_sum)

    model = _net(6)
    rprop = torch.optim.Rprop(model.parameters(), lr=0.01)
    _train(model, rprop, _data(2))
    npl.grow_units(model, "0", 2, optimizer=rprop)
    columns = rprop.state[model[2].weight]["step_size"][:, 6:]  # the consumer's new inputs
    assert torch.all(columns == 0.01)  # Rprop's own start, not 0
    before = model[2].weight.detach().clone()
    x, y = _data(1, seed=5)[0]
    rprop.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    rprop.step()
    moved = (model[2].weight - before).abs()
    assert moved[:, 6:].max() > 1e-3 and moved[:, :6].max() > 1e-4  # a zero step size would be 1e-6
