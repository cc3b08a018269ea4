"""Shared fixtures: deterministic, single-threaded torch so results are repeatable on CI."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
