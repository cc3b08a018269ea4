"""The loop's gradient accumulation, gradient clipping and bf16 mixed precision, each against an
independent computation (a run without it, the clipping bound, the dtype a layer sees)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroplast.data import load_dataset
from neuroplast.methods import build_method
from neuroplast.models import build_model
from neuroplast.train import TrainConfig, Trainer
from neuroplast.train.run import seed_everything


def trained(method: str = "fixed", **config):
    seed_everything(0)
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[32])
    settings = dict(epochs=1, progress=False, optimizer="sgd", momentum=0.0, lr=0.1)
    settings.update(config)
    trainer = Trainer(model, data, build_method(method), TrainConfig(**settings))
    trainer.fit()
    return trainer


def test_four_micro_batches_train_as_one_batch():
    whole = trained(batch_size=64)
    accumulated = trained(batch_size=64, accumulate=4)
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert whole.history[0]["train_loss"] == pytest.approx(accumulated.history[0]["train_loss"])


def test_gradient_clipping_bounds_each_step():
    seed_everything(0)
    data = load_dataset("digits", seed=0)
    start = build_model("mlp", data.input_shape, data.num_classes, widths=[32]).state_dict()
    clipped = trained(batch_size=len(data.y_train), lr=1.0, grad_clip=0.01)  # a single step
    moved = torch.sqrt(sum((clipped.model.state_dict()[name] - start[name]).pow(2).sum()
                           for name in start))
    assert 0 < float(moved) <= 0.01 + 1e-6
    unclipped = trained(batch_size=len(data.y_train), lr=1.0)
    moved = torch.sqrt(sum((unclipped.model.state_dict()[name] - start[name]).pow(2).sum()
                           for name in start))
    assert float(moved) > 0.1


def test_bf16_mixed_runs_layers_in_bfloat16_and_learns_as_float32():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.dtype)
            return x

    fp32 = trained(epochs=4, optimizer="adam", lr=0.01)
    bf16 = trained(epochs=4, optimizer="adam", lr=0.01, precision="bf16-mixed")
    bf16.model.add_module("probe", Probe())
    bf16.evaluate(bf16.data.x_val[:8], bf16.data.y_val[:8])
    assert seen == [torch.bfloat16]  # the Linear's output, under autocast
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.history[-1]["val_accuracy"] == pytest.approx(
        fp32.history[-1]["val_accuracy"], abs=0.03)


def test_npn_trains_under_bf16_and_accumulation():
    trainer = trained("npn", epochs=2, optimizer="adam", lr=1e-3, precision="bf16-mixed",
                      accumulate=2)
    assert trainer.history[-1]["val_accuracy"] > 0.5


@pytest.mark.parametrize("options, message", [
    ({"accumulate": 0}, "accumulate must be between 1 and the batch size"),
    ({"accumulate": 128, "batch_size": 64}, "accumulate must be between 1"),
    ({"grad_clip": -1.0}, "grad clip must be"),
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
])
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options).validate()
