"""Helpers shared by the tests that compare whole runs (resume, reproducibility)."""

import json

import torch

from neuroplast.core.checkpoint import load_checkpoint
from neuroplast.train import Callback


class InterruptAt(Callback):
    """Raise ``error`` at a given epoch and batch (both from 1), as Ctrl-C or a crash would."""

    def __init__(self, epoch, batch, error=KeyboardInterrupt):
        self.epoch, self.batch, self.error, self.seen = epoch, batch, error, 0

    def on_epoch_begin(self, trainer, epoch):
        self.seen = 0

    def on_batch_begin(self, trainer, inputs, targets):
        self.seen += 1
        if trainer.epoch + 1 == self.epoch and self.seen == self.batch:
            raise self.error()


def epoch_metrics(run_dir):
    """metrics.jsonl rows without their wall-clock seconds (the only field allowed to differ)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def assert_same_states(state_a, state_b):
    """Two state dicts hold the same names and bit-identical tensors."""
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def assert_same_run(a, b):
    """Two run directories logged the same epochs and ended with identical weights."""
    assert epoch_metrics(a) == epoch_metrics(b)
    assert_same_states(load_checkpoint(a / "checkpoint").model.state_dict(),
                       load_checkpoint(b / "checkpoint").model.state_dict())
