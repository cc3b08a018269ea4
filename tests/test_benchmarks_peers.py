"""The peer comparison's own promise: NPN's fine-tuning keeps the input features NPN closed.

(The peers themselves are optional packages, `pip install ".[bench]"`; this needs neither.)
"""

import torch
from torch import nn

from benchmarks.peers import keep_closed_inputs_closed


def test_fine_tuning_keeps_closed_input_columns_at_exactly_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight[:, [1, 4]] = 0.0  # two input features NPN closed
        model[2].weight[:, 2] = 0.0  # and one hidden unit's outgoing weights
    before = [p.detach().clone() for p in model.parameters()]
    keep_closed_inputs_closed(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert torch.equal(model[0].weight[:, [1, 4]], torch.zeros(5, 2))
    assert torch.equal(model[2].weight[:, 2], torch.zeros(3))
    # everything else trained (an unhooked model would also have moved the closed columns)
    assert not torch.equal(model[0].weight[:, [0, 2, 3, 5]], before[0][:, [0, 2, 3, 5]])
    assert not torch.equal(model[2].weight[:, [0, 1, 3, 4]], before[2][:, [0, 1, 3, 4]])


def test_an_open_model_is_left_alone():
    model = nn.Linear(4, 2)
    keep_closed_inputs_closed(model)
    assert not model.weight._backward_hooks
