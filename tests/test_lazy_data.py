"""A data set read item by item (map-style, not in memory) trains exactly as the same data in
tensors: same batches, same decisions, same exact resume."""

from __future__ import annotations

import torch
from run_helpers import InterruptAt

from neuroplast.data import load_dataset
from neuroplast.data.lazy import LazyInputs, dataset_splits
from neuroplast.methods import build_method
from neuroplast.models import build_model
from neuroplast.train import TrainConfig, Trainer
from neuroplast.train.run import seed_everything


class Files(torch.utils.data.Dataset):
    """Stands for a folder of files: each item is produced on request, and counted."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.x[index].clone(), int(self.y[index])


def lazy_copy(data):
    return dataset_splits(Files(data.x_train, data.y_train), Files(data.x_val, data.y_val),
                          Files(data.x_test, data.y_test), name=data.name)


def run(data, run_dir=None, callbacks=(), restore=None):
    seed_everything(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[32])
    config = TrainConfig(epochs=3, batch_size=64, progress=False, checkpoint_every=1)
    trainer = Trainer(model, data, build_method("npn"), config, run_dir=run_dir,
                      callbacks=callbacks)
    if restore is not None:
        trainer.restore(restore)
    trainer.fit()
    return [{k: v for k, v in r.items() if k != "seconds"} for r in trainer.history]


def test_a_dataset_read_item_by_item_trains_as_the_same_tensors():
    data = load_dataset("digits", seed=0)
    lazy = lazy_copy(data)
    assert isinstance(lazy.x_train, LazyInputs) and lazy.x_train.shape == data.x_train.shape
    assert torch.equal(lazy.y_val, data.y_val)
    in_memory = run(data)
    read = run(lazy)
    assert read == in_memory  # every epoch: losses, accuracies, widths, events
    assert lazy.x_train.dataset.reads >= 3 * len(data.y_train)  # batches were read, not held


def test_a_lazy_run_resumes_exactly_after_an_interrupt(tmp_path):
    data = load_dataset("digits", seed=0)
    whole = run(lazy_copy(data))
    cut = run(lazy_copy(data), tmp_path / "cut", [InterruptAt(epoch=2, batch=5)])
    assert len(cut) == 1  # stopped in epoch 2, its position saved
    resumed = run(lazy_copy(data), tmp_path / "cut", restore=tmp_path / "cut" / "checkpoint")
    assert resumed == whole


class RandomTransform(Files):
    """A transform that draws a random number (and discards it), as random crops do."""

    def __getitem__(self, index: int):
        torch.rand(3)
        return super().__getitem__(index)


def test_a_random_transform_does_not_shift_the_runs_random_draws():
    data = load_dataset("digits", seed=0)
    lazy = dataset_splits(RandomTransform(data.x_train, data.y_train),
                          RandomTransform(data.x_val, data.y_val), name=data.name)
    assert run(lazy) == run(dataset_splits(Files(data.x_train, data.y_train),
                                           Files(data.x_val, data.y_val), name=data.name))


def test_a_ranks_share_is_read_only_when_used():
    data = load_dataset("digits", seed=0)
    files = Files(data.x_val, data.y_val)
    inputs = LazyInputs(files)
    before = files.reads
    share = inputs[1::2]
    assert isinstance(share, LazyInputs) and files.reads == before
    assert torch.equal(share[0:3], data.x_val[1:7:2])
