"""The loop beyond in-memory classification: regression losses and streamed training data."""

import copy
import signal

import pytest
import torch
from run_helpers import InterruptAt
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from neuroplast.data import DataSplits
from neuroplast.data.stream import streamed_splits
from neuroplast.methods import FixedWidth, build_method
from neuroplast.models import build_model
from neuroplast.objective import MeanSquaredError
from neuroplast.train import Callback, Trainer
from neuroplast.train.callbacks import CollapseGuard
from neuroplast.train.loop import TrainConfig


def _regression(n=600, features=6, hidden=3, seed=0, offset=0.0):
    """y = a small tanh teacher of ``hidden`` units + noise (float targets, one per row)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    w1 = torch.randn(features, hidden, generator=generator)
    w2 = torch.randn(hidden, generator=generator)
    y = 2 * torch.tanh(x @ w1) @ w2 + offset + 0.05 * torch.randn(n, generator=generator)
    cut = (n * 3 // 5, n * 4 // 5)
    return DataSplits(name="regression", x_train=x[: cut[0]], y_train=y[: cut[0]],
                      x_val=x[cut[0] : cut[1]], y_val=y[cut[0] : cut[1]], x_test=x[cut[1] :],
                      y_test=y[cut[1] :], num_classes=1, input_shape=(features,))


def _mlp(data, width, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", data.input_shape, data.num_classes, widths=[width])


def test_a_regression_trains_on_the_squared_error_as_a_hand_written_loop_does():
    data = _regression()
    model = _mlp(data, 16)
    reference = copy.deepcopy(model)
    config = TrainConfig(epochs=3, batch_size=50, lr=1e-2, loss="mse", seed=4, progress=False)
    trainer = Trainer(model, data, FixedWidth(), config)
    history = trainer.fit()
    # The same batches by hand: the data generator's permutation per epoch, mean squared error.
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), 50):
            rows = order[start : start + 50]
            optimizer.zero_grad()
            prediction = reference(data.x_train[rows])[:, 0]
            ((prediction - data.y_train[rows]) ** 2).mean().backward()
            optimizer.step()
    for mine, theirs in zip(trainer.model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        val_mse = float(((reference(data.x_val)[:, 0] - data.y_val) ** 2).mean())
    assert history[-1]["val_loss"] == pytest.approx(val_mse, rel=1e-5)
    assert history[-1]["val_accuracy"] != history[-1]["val_accuracy"]  # NaN: no accuracy


@pytest.mark.parametrize("method", ["npn", "metanet"])
def test_methods_size_a_regression_on_its_validation_loss(method):
    data = _regression(n=1500, hidden=2, seed=1)
    width = 64 if method == "npn" else 4
    config = TrainConfig(epochs=20, batch_size=50, lr=1e-2, loss="mse", seed=0, progress=False)
    trainer = Trainer(_mlp(data, width), data, build_method(method, {}), config)
    history = trainer.fit()
    assert trainer.stopped_early is None
    final = history[-1]
    variance = float(data.y_val.var())
    assert final["val_loss"] < 0.5 * variance  # it learned (predicting the mean scores 1.0x)
    assert list(final["widths"].values())[0] != width  # and it resized


def test_the_collapse_guard_fires_on_a_regression_that_learned_nothing():
    data = _regression(offset=50.0)  # targets far from where an untrained network starts

    class Frozen(FixedWidth):
        resizes = True  # a method that claims to size the network but never lets it learn

        def param_groups(self, model, lr):
            return [{"params": list(model.parameters()), "lr": 0.0}]

    config = TrainConfig(epochs=1, batch_size=100, loss="mse", progress=False)
    trainer = Trainer(_mlp(data, 8), data, Frozen(), config)
    trainer.fit()
    assert trainer.stopped_early is not None and "mean target" in trainer.stopped_early
    # a network that did learn passes the same check
    data = _regression(n=1500, hidden=2, seed=1)
    learned = Trainer(_mlp(data, 8), data, FixedWidth(),
                      TrainConfig(epochs=10, batch_size=50, lr=1e-2, loss="mse", progress=False))
    learned.fit()
    learned.method = Frozen()
    CollapseGuard().on_train_end(learned)


def test_the_regression_loss_names_a_shape_mismatch():
    with pytest.raises(ValueError, match="one output per target"):
        MeanSquaredError().loss(torch.zeros(4, 3), torch.zeros(4))


def _classes(n=400, features=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


def _stream_run(run_dir, callbacks=(), epochs=3, loader_seed=None, method="fixed"):
    x, y = _classes()
    generator = None if loader_seed is None else torch.Generator().manual_seed(loader_seed)
    loader = DataLoader(TensorDataset(x[:300], y[:300]), batch_size=32, shuffle=True,
                        generator=generator)
    data = streamed_splits(loader, val=(x[300:350], y[300:350]), test=(x[350:], y[350:]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    config = TrainConfig(epochs=epochs, seed=5, progress=False, checkpoint_every=1)
    method_object = FixedWidth() if method == "fixed" else build_method(method, {})
    return Trainer(model, data, method_object, config, run_dir=run_dir, callbacks=callbacks)


@pytest.mark.parametrize("loader_seed", [None, 11])
def test_a_streamed_run_interrupted_mid_epoch_resumes_exactly(tmp_path, loader_seed):
    straight = _stream_run(tmp_path / "straight", loader_seed=loader_seed)
    straight.fit()
    cut = _stream_run(tmp_path / "cut", [InterruptAt(epoch=2, batch=4)], loader_seed=loader_seed)
    cut.fit()
    assert cut.stopped_early == "interrupted"
    resumed = _stream_run(tmp_path / "cut", loader_seed=loader_seed)
    resumed.restore(tmp_path / "cut" / "checkpoint")
    assert resumed.mid_epoch
    resumed.fit()
    for mine, theirs in zip(resumed.model.state_dict().values(),
                            straight.model.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in straight.history], rel=1e-12)


def test_a_stream_sees_every_example_once_per_epoch_in_a_new_order():
    x, y = _classes()
    rows = torch.arange(300)
    loader = DataLoader(TensorDataset(rows.float()[:, None], rows), batch_size=64, shuffle=True)
    stream = streamed_splits(loader, val=(x[:10], y[:10])).x_train
    first = torch.cat([b for _, b in stream.epoch(seed=1, epoch=1)])
    second = torch.cat([b for _, b in stream.epoch(seed=1, epoch=2)])
    again = torch.cat([b for _, b in stream.epoch(seed=1, epoch=1)])
    assert sorted(first.tolist()) == list(range(300)) == sorted(second.tolist())
    assert not torch.equal(first, second) and torch.equal(first, again)
    skipped = torch.cat([b for _, b in stream.epoch(seed=1, epoch=1, skip=2)])
    assert torch.equal(skipped, first[128:])
    # the stream's shuffling draws from a generator of its own: the run's stream is untouched
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    list(stream.epoch(seed=1, epoch=3))
    assert torch.equal(torch.rand(3), expected)


class _Batches(IterableDataset):
    """Batches made on the fly, of unknown number: what no index can reach."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        order = torch.randperm(len(self.y))
        for start in range(0, len(order), 40):
            rows = order[start : start + 40]
            yield self.x[rows], self.y[rows]


def test_an_unindexable_stream_trains_and_metanet_reads_examples_from_it(tmp_path):
    x, y = _classes(n=600)
    data = streamed_splits(_Batches(x[:400], y[:400]), val=(x[400:500], y[400:500]),
                           test=(x[500:], y[500:]))
    assert data.num_classes == 3
    config = TrainConfig(epochs=6, seed=0, progress=False, lr=1e-2)
    trainer = Trainer(_mlp(data, 4), data, build_method("metanet", {}), config)
    history = trainer.fit()
    assert trainer.stopped_early is None and history[-1]["val_accuracy"] > 0.7
    assert any("search" in event for record in history for event in record["events"])


def test_a_stream_must_yield_pairs():
    data = streamed_splits([torch.zeros(4, 8)], val=_classes(20))
    trainer = Trainer(_mlp(data, 4), data, FixedWidth(), TrainConfig(epochs=1, progress=False))
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair"):
        trainer.fit()



class _SignalAt(Callback):
    """What the Interruption callback's handler does when a signal lands after batch 2."""

    def on_batch_end(self, trainer, loss):
        if trainer.step == 2 and trainer.epoch == 0:
            trainer.interrupt_signal = signal.SIGINT


def test_a_trainer_interrupted_once_trains_on_when_fit_again(tmp_path):
    trainer = _stream_run(tmp_path / "run", [_SignalAt()])
    trainer.fit()
    assert trainer.stopped_early == "interrupted" and trainer.step == 2
    trainer.stopped_early = None
    trainer.fit()  # continues from the saved position, to the end
    assert trainer.stopped_early is None and trainer.epoch == 3


def test_a_stream_that_cannot_start_a_new_pass_is_refused_with_the_reason():
    x, y = _classes(40)
    with pytest.raises(TypeError, match="iterator"):
        streamed_splits(iter([(x, y)]), val=(x, y))
    data = streamed_splits([], val=(x, y))
    trainer = Trainer(_mlp(data, 4), data, FixedWidth(), TrainConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="no batch in epoch 1"):
        trainer.fit()


def test_numpy_batches_and_a_map_style_regression_split_keep_their_meaning():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    y = x.sum(1)  # float targets: a regression
    val = TensorDataset(x[:16].float(), y[:16].float())  # map-style, read item by item
    data = streamed_splits([(x[16:].numpy(), y[16:].numpy())], val=val)
    assert data.y_val.is_floating_point() and torch.allclose(data.y_val, y[:16].float())
    assert data.num_classes == 1
    config = TrainConfig(epochs=2, loss="mse", lr=1e-2, progress=False)
    history = Trainer(_mlp(data, 8), data, FixedWidth(), config).fit()
    assert history[-1]["val_loss"] < float(y[:16].var())


def test_selfsizing_sizes_a_regression_in_an_own_loop_as_the_trainer_does():
    from neuroplast import SelfSizing

    data = _regression(n=1500, hidden=2, seed=1)
    config = TrainConfig(epochs=6, batch_size=50, lr=1e-2, loss="mse", seed=0, progress=False)
    trainer = Trainer(_mlp(data, 32), data, build_method("npn", {}), config)
    expected = trainer.fit()
    # the same batches by hand (the Trainer's permutation rule), the same method and seed
    model = _mlp(data, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sizing = SelfSizing("npn", model, optimizer, epochs=6, val=(data.x_val, data.y_val),
                        loss="mse")
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), 50):
            rows = order[start : start + 50]
            optimizer.zero_grad()
            sizing.loss(data.x_train[rows], data.y_train[rows]).backward()
            sizing.step()
        record = sizing.epoch_end()
    assert record["widths"] == expected[-1]["widths"]
    assert record["val_loss"] == pytest.approx(expected[-1]["val_loss"], rel=1e-5)
