"""Property-based: random grows, prunes and splits keep every shape and optimizer state consistent.

Each unit carries an identity (stored in its bias and in its Adam ``exp_avg`` of the bias), and
an independent shadow list predicts where every identity must be after each operation.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import neuroplast as npl


def _model(kind: str, width: int, batchnorm: bool) -> nn.Sequential:
    if kind == "mlp":
        norm = [nn.BatchNorm1d(width)] if batchnorm else []
        return nn.Sequential(nn.Linear(5, width), *norm, nn.ReLU(), nn.Linear(width, 3))
    norm = [nn.BatchNorm2d(width)] if batchnorm else []
    return nn.Sequential(nn.Conv2d(2, width, 3), *norm, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(width * 9, 3))


operations = st.lists(
    st.tuples(st.sampled_from(["grow", "prune", "split"]), st.integers(1, 4),
              st.randoms(use_true_random=False)),
    min_size=1, max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["mlp", "conv"]), width=st.integers(1, 6),
       batchnorm=st.booleans(), ops=operations)
def test_random_resizes_stay_consistent(kind, width, batchnorm, ops):
    model = _model(kind, width, batchnorm)
    x = torch.randn(4, 5) if kind == "mlp" else torch.randn(4, 2, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: state fills, weights stay
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    producer = model[0]
    with torch.no_grad():
        producer.bias.copy_(torch.arange(1.0, width + 1))
    optimizer.state[producer.bias]["exp_avg"] = torch.arange(1.0, width + 1)
    shadow = list(range(1, width + 1))  # identities in the bias; 0 marks a new unit
    state_shadow = list(shadow)  # the same identities in the optimizer state; new units start at 0
    for op, count, rng in ops:
        current = len(shadow)
        if op == "grow":
            npl.grow_units(model, "0", count, bias=torch.zeros(count), optimizer=optimizer)
            shadow += [0] * count
            state_shadow += [0] * count
        elif op == "prune":
            keep = sorted(rng.sample(range(current), max(1, current - count)))
            npl.prune_units(model, "0", keep, optimizer=optimizer)
            shadow = [shadow[i] for i in keep]
            state_shadow = [state_shadow[i] for i in keep]
        else:
            units = sorted(rng.sample(range(current), min(count, current)))
            npl.split_units(model, "0", units, optimizer=optimizer)
            shadow += [shadow[i] for i in units]
            state_shadow += [0] * len(units)
        producer = model[0]
        assert producer.bias.tolist() == shadow
        assert optimizer.state[producer.bias]["exp_avg"].tolist() == state_shadow
        # Every parameter is in the optimizer exactly once, and no stale state survives.
        held = [p for g in optimizer.param_groups for p in g["params"]]
        assert {id(p) for p in held} == {id(p) for p in model.parameters()}
        assert len(held) == len(list(model.parameters()))
        assert all(any(s is p for p in held) for s in optimizer.state)
        for param in model.parameters():
            for value in optimizer.state[param].values():
                if value.dim() > 0:
                    assert value.shape == param.shape
        assert npl.layer_widths(model)["0"] == len(shadow)
        consumer = model[-1]
        assert consumer.in_features == consumer.weight.shape[1]
        if batchnorm:
            assert model[1].num_features == len(shadow) == model[1].running_mean.numel()
        out = model(x)
        assert out.shape == (4, 3)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
