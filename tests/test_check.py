"""Declared chains are checked against a real forward pass when a run starts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroplast import UnsupportedModelError, check_unit_groups, find_unit_groups, register_block


class LeakyBlock(nn.Module):
    """fc1's output also joins a residual sum, which a chain ['fc1', 'act', 'fc2'] hides."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(self.act(hidden)) + hidden


class HonestBlock(LeakyBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) + x


register_block(LeakyBlock, [["fc1", "act", "fc2"]])


def test_a_wrong_declaration_fails_at_once_naming_the_block_and_the_layer():
    model = nn.Sequential(nn.Linear(4, 6), LeakyBlock(), nn.Linear(6, 2))
    assert "1.fc1" in find_unit_groups(model)  # the walk alone trusts the declaration
    with pytest.raises(UnsupportedModelError,
                       match=r"block '1' \(LeakyBlock\) declares that the units of '1.fc1'"):
        check_unit_groups(model, torch.randn(2, 4))


def test_a_right_declaration_passes_and_the_model_is_untouched():
    model = nn.Sequential(nn.Linear(4, 6), HonestBlock(), nn.Linear(6, 2)).train()
    before = [p.detach().clone() for p in model.parameters()]
    check_unit_groups(model, torch.randn(2, 4))
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_undeclared_model_is_told_about_tracing_and_its_own_children():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.decoder = nn.Linear(8, 2)

        def forward(self, x):
            return self.decoder(self.encoder(x))

    with pytest.raises(UnsupportedModelError,
                       match=r"trace_unit_groups.*register_block\(Net, \[\['encoder', 'decoder'\]"):
        find_unit_groups(Net())
