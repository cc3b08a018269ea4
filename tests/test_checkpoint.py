"""Width-aware checkpoints: fresh-process round trips, atomic writes, clear errors, no pickle."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
from torch import nn

import neuroplast as npl
from neuroplast.core.checkpoint import load_checkpoint, write_atomic
from neuroplast.models import build_model
from neuroplast.train import Trainer
from neuroplast.train.callbacks import Checkpointing
from neuroplast.train.loop import TrainConfig


def _batches(seed, steps=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(steps)]


def _train(model, optimizer, scheduler, batches):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _trained_and_resized():
    model = build_model("mlp", (1, 8, 8), 10, widths=[12, 6], batchnorm=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    _train(model, optimizer, scheduler, _batches(1))
    npl.grow_units(model, "fc1", 5, optimizer=optimizer)
    npl.prune_units(model, "fc2", [0, 2, 3], optimizer=optimizer)
    _train(model, optimizer, scheduler, _batches(2))
    return model, optimizer, scheduler


CONTINUE_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch, safetensors.torch
    from torch import nn
    import neuroplast as npl
    torch.set_num_threads(1)  # as the parent test runs: same float reduction order
    ckpt = npl.load_checkpoint(sys.argv[1])
    model = ckpt.model
    optimizer = ckpt.build_optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    ckpt.restore_scheduler(scheduler)
    ckpt.restore_rng()
    x_probe = torch.load  # unused: the checkpoint path must never need torch.load
    g = torch.Generator().manual_seed(3)
    model.eval()
    outputs = model(torch.ones(2, 1, 8, 8))
    model.train()
    for _ in range(4):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    tensors = {f"p/{k}": v.detach() for k, v in model.state_dict().items()}
    tensors["outputs"] = outputs.detach()
    tensors["random"] = torch.rand(3)
    safetensors.torch.save_file(tensors, sys.argv[2])
    """
)


def test_round_trip_in_a_fresh_process_continues_identically(tmp_path):
    model, optimizer, scheduler = _trained_and_resized()
    npl.save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, epoch=3, step=8)
    model.eval()
    outputs = model(torch.ones(2, 1, 8, 8))
    model.train()
    _train(model, optimizer, scheduler, _batches(3))
    random_after = torch.rand(3)
    subprocess.run(
        [sys.executable, "-c", CONTINUE_IN_FRESH_PROCESS, str(tmp_path / "ckpt"),
         str(tmp_path / "out.safetensors")], check=True,
    )
    theirs = safetensors.torch.load_file(tmp_path / "out.safetensors")
    assert torch.equal(theirs["outputs"], outputs.detach())
    for name, value in model.state_dict().items():
        assert torch.equal(theirs[f"p/{name}"], value), name
    assert torch.equal(theirs["random"], random_after)  # RNG restored to the saved point


def test_load_into_a_user_model_of_other_widths(tmp_path):
    model, optimizer, _ = _trained_and_resized()
    npl.save_checkpoint(tmp_path, model, optimizer, epoch=1)
    fresh = build_model("mlp", (1, 8, 8), 10, widths=[3, 30], batchnorm=True)
    del fresh.neuroplast_spec
    ckpt = npl.load_checkpoint(tmp_path, model=fresh)
    assert npl.layer_widths(fresh) == {"fc1": 17, "fc2": 3}
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    restored = ckpt.restore_optimizer(torch.optim.AdamW(fresh.parameters(), lr=1.0))
    assert restored.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert restored.param_groups[0]["betas"] == (0.8, 0.95)
    assert torch.equal(restored.state[fresh.fc1.weight]["exp_avg"],
                       optimizer.state[model.fc1.weight]["exp_avg"])


def test_method_state_and_extra_round_trip(tmp_path):
    model = build_model("mlp", (4,), 2, widths=[3])
    method = {"k": float("inf"), "history": [1, 2], "phi": torch.arange(3.0), "pair": (1, "a")}
    npl.save_checkpoint(tmp_path, model, method_state=method, extra={"config": {"lr": 0.1}})
    ckpt = npl.load_checkpoint(tmp_path)
    state = ckpt.method_state
    assert state["k"] == float("inf") and state["history"] == [1, 2] and state["pair"] == (1, "a")
    assert torch.equal(state["phi"], torch.arange(3.0))
    assert ckpt.extra == {"config": {"lr": 0.1}}


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, optimizer, scheduler = _trained_and_resized()
    npl.save_checkpoint(tmp_path, model, optimizer, scheduler)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = npl.load_checkpoint(tmp_path)
    ckpt.build_optimizer()


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_model("mlp", (4,), 2, widths=[3])
    npl.save_checkpoint(tmp_path, model, epoch=1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    npl.grow_units(model, "fc1", 4)
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith("checkpoint.json"):
            raise OSError("simulated power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="power cut"):
        npl.save_checkpoint(tmp_path, model, epoch=2)
    monkeypatch.setattr(os, "replace", real_replace)
    ckpt = npl.load_checkpoint(tmp_path)
    assert ckpt.epoch == 1 and npl.layer_widths(ckpt.model) == {"fc1": 3}
    for name, value in ckpt.model.state_dict().items():
        assert torch.equal(value, first[name])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _saved(tmp_path):
    model = build_model("mlp", (4,), 2, widths=[3])
    npl.save_checkpoint(tmp_path, model)
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    return tmp_path / manifest["tensors_file"]


def test_truncated_tensors_file_is_a_clear_error(tmp_path):
    tensors = _saved(tmp_path)
    tensors.write_bytes(tensors.read_bytes()[:-10])
    with pytest.raises(npl.CheckpointError, match="truncated"):
        npl.load_checkpoint(tmp_path)


def test_tampered_tensors_file_is_a_clear_error(tmp_path):
    tensors = _saved(tmp_path)
    data = bytearray(tensors.read_bytes())
    data[-3] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(npl.CheckpointError, match="SHA-256"):
        npl.load_checkpoint(tmp_path)


def test_truncated_manifest_is_a_clear_error(tmp_path):
    _saved(tmp_path)
    manifest = tmp_path / "checkpoint.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(npl.CheckpointError, match="corrupt or truncated"):
        npl.load_checkpoint(tmp_path)


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("model"),
    lambda m: m["model"].update(widths=[3]),
    lambda m: m.update(method="garbage"),
    lambda m: m.update(epoch=m["epoch"] + 1),
    lambda m: (m.update(epoch=m["epoch"] + 1), m.pop("manifest_sha256")),  # and its digest
])
def test_a_manifest_edited_by_hand_is_a_clear_error(tmp_path, edit):
    _saved(tmp_path)
    path = tmp_path / "checkpoint.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(npl.CheckpointError, match="manifest .* fails its SHA-256 check"):
        npl.load_checkpoint(tmp_path)


def test_a_manifest_rewritten_with_another_layout_still_loads(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(dict(reversed(json.loads(path.read_text()).items())), indent=4))
    assert npl.layer_widths(npl.load_checkpoint(tmp_path).model) == {"fc1": 3}


def test_missing_checkpoint_names_the_expected_file(tmp_path):
    with pytest.raises(npl.CheckpointError, match="checkpoint.json"):
        npl.load_checkpoint(tmp_path / "nowhere")


def test_model_that_does_not_fit_is_a_clear_error(tmp_path):
    model = build_model("mlp", (4,), 2, widths=[3])
    npl.save_checkpoint(tmp_path, model)
    other = build_model("mlp", (5,), 2, widths=[3])
    with pytest.raises(npl.CheckpointError, match="does not fit"):
        npl.load_checkpoint(tmp_path, model=other)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_written_files_get_the_mode_a_plain_open_would_give(tmp_path):
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.json", b"{}")
        with open(tmp_path / "b.json", "wb"):  # the mode an ordinary write gets
            pass
    finally:
        os.umask(previous)
    mode = (tmp_path / "a.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_checkpoint_every_n_epochs_resumes_exactly_from_the_last_one_written(tmp_path):
    from run_helpers import assert_same_run

    from neuroplast.train import Callback
    from neuroplast.train.run import RunConfig, resume_run, train_run

    class StopAfterEpoch(Callback):
        def on_epoch_end(self, trainer, epoch):
            if epoch == 3:
                raise KeyboardInterrupt  # between epochs: no mid-epoch position to save

    def config(out):
        train = TrainConfig(epochs=5, batch_size=32, seed=3, progress=False, threads=1,
                            checkpoint_every=2)
        return RunConfig(method="fixed", model="mlp", dataset="digits", widths=[16],
                         out=str(out), train=train)

    train_run(config(tmp_path / "straight"))
    summary = train_run(config(tmp_path / "cut"), callbacks=[StopAfterEpoch()])
    assert summary["stopped_early"] == "interrupted"
    # Epoch 3 was not due (every 2): the checkpoint on disk is epoch 2's, and resuming it
    # redoes epoch 3 exactly, ending where the uninterrupted run ended.
    assert load_checkpoint(tmp_path / "cut" / "checkpoint").epoch == 2
    assert resume_run(tmp_path / "cut")["epochs"] == 5
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_the_automatic_rule_keeps_checkpoint_time_a_small_share():
    trainer = Trainer.__new__(Trainer)
    trainer.config = TrainConfig(checkpoint_every=0, epochs=100)
    trainer.save_seconds, trainer.epoch, trainer.stop_training = None, 1, False
    rule = Checkpointing()
    assert rule.due(trainer, 0.01)  # nothing saved yet: save to learn the cost
    trainer.save_seconds, rule.unsaved_seconds = 0.1, 0.0
    due = [rule.due(trainer, 0.5) for _ in range(8)]
    # 0.1 s to save against 0.5 s epochs: due once 1.9 s of training is unsaved (4th epoch).
    assert due == [False, False, False, True, True, True, True, True]
    rule.unsaved_seconds, trainer.epoch = 0.0, 100
    assert rule.due(trainer, 0.01)  # the last epoch, always


def test_checkpoint_every_must_be_a_count():
    with pytest.raises(ValueError, match="checkpoint every"):
        TrainConfig(checkpoint_every=-1).validate()
