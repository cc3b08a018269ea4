"""Shared fixtures: seeded, single-threaded torch so results repeat and tiny steps stay fast."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    # Tests take thousands of tiny steps: intra-op threads only add spin-waiting, and on a
    # shared machine they make such steps up to 100x slower. Restore what the test changed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
