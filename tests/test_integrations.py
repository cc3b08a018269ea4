"""The Lightning callback and the Hugging Face Trainer: a self-sizing network in their loops.

Each runs a tiny MLP on digits for a few epochs on the CPU and is checked against what can be
computed independently: gates that moved and units that were physically removed, optimizer
state that followed every resize (its shapes, and a step count equal to the steps taken, so it
was carried rather than restarted), ARM's gradient for one batch against a hand computation of
``k * (F1 - F2) * (u - 1/2)``, clear refusals (DDP, an LR scheduler under a new group), the
planned epochs under ``max_steps``, and a run resumed from the framework's own checkpoint,
taken after a physical resize, into a freshly built model: it ends as the uninterrupted run
does (widths, method state, history, weights and optimizer state).
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroplast.data import load_dataset

# Gates that decide within three epochs: plastic (k = 7) for two, then k = inf, when the
# physical implementation removes every unit whose gate is off; a price that closes some.
NPN_OPTIONS = {"k_schedule": "1:7,3:inf", "implementation": "physical", "lambdas": (0.003,),
               "lambda_unit": "weight"}
# For a resume after epoch 2 (units removed at its end): plastic again in epoch 4, where the
# adapted price (the method's state) and the gate draws shape the weights.
RESUME_OPTIONS = {**NPN_OPTIONS, "k_schedule": "1:7,3:inf,4:7"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def mlp(width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def assert_state_follows(optimizer: torch.optim.Optimizer, model: nn.Module, steps: int):
    """Every parameter is in the optimizer once, its state shaped like it, with every step
    (``phi`` only with those of the plastic epochs: at k = inf it gets no gradient)."""
    phi = next(module.phi for module in model.modules() if hasattr(module, "phi"))
    in_groups = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())
    assert len(optimizer.state) == len(in_groups)
    for parameter, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim():
                assert value.shape == parameter.shape
        # Carried through the resize, not restarted (three epochs of equal steps).
        assert int(state["step"]) == (steps * 2 // 3 if parameter is phi else steps)


def assert_same_state(first, second):
    """Two (nested) states are equal, tensors within float tolerance."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.shape == second.shape
        assert torch.allclose(first.float(), second.float(), atol=1e-6), (first, second)
    elif isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys(), (first, second)
        for key in first:
            assert_same_state(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert isinstance(second, (list, tuple)) and len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert_same_state(a, b)
    elif isinstance(first, float) and math.isnan(first):
        assert isinstance(second, float) and math.isnan(second)
    else:
        assert first == second


def assert_resumed_like_uninterrupted(whole, resumed):
    """``(model, method, history, optimizer)`` of two runs: the same end."""
    (model, method, history, optimizer), (model2, method2, history2, optimizer2) = whole, resumed
    assert [r["widths"] for r in history2] == [r["widths"] for r in history]
    assert_same_state(history2, history)  # the first epochs' records came with the checkpoint
    assert method.state_dict()["price_scale"] > 1  # the price moved: its state matters
    assert_same_state(method2.state_dict(), method.state_dict())
    assert_same_state(model2.state_dict(), model.state_dict())
    assert_same_state(optimizer2.state_dict(), optimizer.state_dict())


def hand_arm_gradient(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                      k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ARM's estimate for the gate before the last Linear, from the weights alone, and F2."""
    first, gate, last = net.get_submodule("1"), net.get_submodule("3_gate"), net.get_submodule("3")
    with torch.no_grad():
        pi = torch.sigmoid(k * gate.phi)
        hidden = torch.relu(F.linear(x.flatten(1), first.weight, first.bias))
        f2 = F.cross_entropy(F.linear(hidden * (u < pi), last.weight, last.bias), y)
        f1 = F.cross_entropy(F.linear(hidden * (u > 1 - pi), last.weight, last.bias), y)
    assert f1 != f2  # the pair of gates disagrees somewhere: a real test of the estimate
    return k * (f1 - f2) * (u - 0.5), f2


def fixed_draws(net: nn.Sequential) -> torch.Tensor:
    """Spread the gates' probabilities and make the gate draw ``u`` (returned) every time."""
    gate = net.get_submodule("3_gate")
    with torch.no_grad():
        gate.phi.copy_(torch.linspace(-0.3, 0.3, gate.phi.numel()))
    u = torch.rand(gate.phi.shape, generator=torch.Generator().manual_seed(1))
    gate.draw = lambda batch_size: u.clone()
    return u


# ------------------------------------------------------------------------------ Lightning
@pytest.fixture(scope="module")
def pl():
    return pytest.importorskip("lightning.pytorch")


def lightning_parts(pl, width=32, lr=1e-2, scheduler=False):
    class Digits(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = mlp(width)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train_ce", loss)  # muted in NPN's antithetic pass
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=lr)
            if not scheduler:
                return optimizer
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 10)]

    return Digits


def lightning_fit(pl, digits, callback, epochs, **parts):
    pl.seed_everything(0, verbose=False)
    module = lightning_parts(pl, **parts)()
    data = torch.utils.data.TensorDataset(digits.x_train, digits.y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    probe = PhiProbe(pl)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, probe])
    trainer.fit(module, loader)
    return module, trainer, probe


def PhiProbe(pl):
    class Probe(pl.Callback):
        """The gates' phi when training starts (the callback attached them in setup)."""

        phi = None

        def on_train_start(self, trainer, pl_module):
            gates = [m for m in pl_module.modules() if hasattr(m, "phi")]
            self.phi = gates[0].phi.detach().clone() if gates else None

    return Probe()


def test_lightning_npn_closes_and_removes_units_carrying_optimizer_state(pl, digits):
    from neuroplast.integrations.lightning import NeuroplastCallback

    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val), **NPN_OPTIONS)
    module, trainer, probe = lightning_fit(pl, digits, callback, epochs=3)
    net, gate = module.model, module.model.get_submodule("3_gate")
    # The gates moved (ARM's and the L0 term's gradients reached phi) ...
    assert not torch.allclose(gate.phi.detach(), probe.phi[gate.unit_id])
    # ... and the units they closed were removed from both Linear layers.
    width = gate.phi.numel()
    assert width < 32 and net.get_submodule("1").out_features == width
    assert net.get_submodule("3").in_features == width
    assert any(e.startswith("pruned 1") for e in callback.history[1]["events"])
    # Epoch 3 trained the smaller network with the optimizer's carried state.
    assert math.isfinite(callback.history[-1]["train_loss"])
    assert callback.history[-1]["val_accuracy"] > 0.8
    assert_state_follows(trainer.optimizers[0], net, trainer.global_step)
    phi_group = [g for g in trainer.optimizers[0].param_groups if g["params"] == [gate.phi]]
    assert phi_group and phi_group[0]["lr"] == 0.05  # NPN's gate_lr, as SelfSizing gives it
    assert "training_step" not in vars(module)  # the wrapper is gone after fit


def test_lightning_arm_term_equals_a_hand_computation(pl, digits):
    from neuroplast.integrations.lightning import NeuroplastCallback

    torch.manual_seed(0)
    module = lightning_parts(pl)()
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val), lambdas=(0.0,))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    callback.setup(trainer, module, "fit")  # gates attached, training_step wrapped
    callback.method.set_k(7.0)
    u = fixed_draws(module.model)
    x, y = digits.x_train[:64], digits.y_train[:64]
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer loop around this call
        loss = module.training_step((x, y), 0)
    loss.backward()
    expected, f2 = hand_arm_gradient(module.model, x, y, u, 7.0)
    assert torch.allclose(module.model.get_submodule("3_gate").phi.grad, expected, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(f2), rel=1e-6)  # main pass's, no price
    callback.teardown(trainer, module, "fit")
    assert "training_step" not in vars(module)


def test_lightning_metanet_search_resizes(pl, digits):
    from neuroplast.integrations.lightning import NeuroplastCallback

    callback = NeuroplastCallback("metanet", val=(digits.x_val, digits.y_val),
                                  train=(digits.x_train, digits.y_train))
    module, trainer, _ = lightning_fit(pl, digits, callback, epochs=20, width=8)
    widths = [record["widths"]["1"] for record in callback.history]
    assert len(set(widths)) >= 2, callback.history  # the search grew or compressed the layer
    assert module.model.get_submodule("1").out_features == widths[-1]
    for parameter in module.model.parameters():  # every tensor of state shaped like its param
        for value in trainer.optimizers[0].state.get(parameter, {}).values():
            assert not (isinstance(value, torch.Tensor) and value.dim()) or \
                value.shape == parameter.shape
    assert callback.history[-1]["val_accuracy"] > 0.85


def lightning_resumable_fit(pl, digits, directory, ckpt_path=None, every_n_train_steps=None):
    """Four epochs of RESUME_OPTIONS, a checkpoint after each. Lightning restores neither the
    loader's shuffling nor torch's generator (the gates' draws): no shuffling, and the
    generator seeded at every epoch's start, so a resumed run can draw what the whole one drew.
    """
    from neuroplast.integrations.lightning import NeuroplastCallback

    class Reseed(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            torch.manual_seed(trainer.current_epoch)

    pl.seed_everything(0, verbose=False)
    module = lightning_parts(pl)()  # a fresh module, 32 units wide
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val), **RESUME_OPTIONS)
    data = torch.utils.data.TensorDataset(digits.x_train, digits.y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=directory, save_top_k=-1,
                                               filename="{epoch}-{step}",
                                               every_n_train_steps=every_n_train_steps)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback, Reseed(), checkpoints])
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, callback, trainer


def test_lightning_resumes_a_resized_network_from_its_checkpoint(pl, digits, tmp_path):
    module, callback, trainer = lightning_resumable_fit(pl, digits, tmp_path / "whole")
    after_two = tmp_path / "whole" / "epoch=1-step=36.ckpt"
    saved = torch.load(after_two, weights_only=True)  # plain values and tensors: no pickle
    assert saved["state_dict"]["model.1.weight"].shape[0] < 32  # units were removed
    assert saved["callbacks"]["NeuroplastCallback"]["epoch"] == 2
    module2, callback2, trainer2 = lightning_resumable_fit(pl, digits, tmp_path / "resumed",
                                                           ckpt_path=after_two)
    assert callback2.sizing.epoch == 4 and trainer2.global_step == trainer.global_step
    assert_resumed_like_uninterrupted(
        (module.model, callback.method, callback.history, trainer.optimizers[0]),
        (module2.model, callback2.method, callback2.history, trainer2.optimizers[0]))
    assert callback2._resize_on_load is None  # the load hook is gone once training started


def test_lightning_resumes_from_a_step_checkpoint_written_before_the_epoch_end(
        pl, digits, tmp_path):
    # every 18 steps = an epoch's last step: the checkpoint is written before the epoch's end
    # (validation, decisions) runs, and the resumed run owes that end.
    module, callback, _ = lightning_resumable_fit(pl, digits, tmp_path / "whole",
                                                  every_n_train_steps=18)
    after_two = tmp_path / "whole" / "epoch=1-step=36.ckpt"
    assert torch.load(after_two, weights_only=True)["callbacks"]["NeuroplastCallback"][
        "epoch"] == 1
    module2, callback2, _ = lightning_resumable_fit(pl, digits, tmp_path / "resumed",
                                                    ckpt_path=after_two, every_n_train_steps=18)
    assert [r["epoch"] for r in callback2.history] == [1, 2, 3, 4]
    assert [r["widths"] for r in callback2.history] == [r["widths"] for r in callback.history]
    assert_same_state(callback2.method.state_dict(), callback.method.state_dict())
    assert_same_state(module2.model.state_dict(), module.model.state_dict())


def test_lightning_plans_epochs_from_max_steps(pl, digits):
    from neuroplast.integrations.lightning import NeuroplastCallback

    # 18 batches of 64 a epoch, an optimizer step every 2 (and at the epoch's end): 9 steps a
    # epoch, so 20 steps take 3 epochs, the last one partly.
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val), lambdas=(0.003,),
                                  lambda_unit="weight")
    data = torch.utils.data.TensorDataset(digits.x_train, digits.y_train)
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    trainer = pl.Trainer(max_steps=20, accumulate_grad_batches=2, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    assert trainer.max_epochs in (None, -1)  # unset
    trainer.fit(lightning_parts(pl)(), loader)
    assert trainer.global_step == 20 and callback.sizing.config.epochs == 3
    # NPN's default stages (20% and 70% of the planned epochs) over those 3 epochs.
    assert callback.method.schedule(3) == [(1, math.inf), (2, 7.0), (3, math.inf)]
    assert callback.method._schedule == callback.method.schedule(3)
    assert [record["epoch"] for record in callback.history] == [1, 2, 3]
    # Neither max_epochs nor max_steps: no planned epochs to follow.
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val))
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    with pytest.raises(ValueError, match="set max_epochs, or max_steps"):
        trainer.fit(lightning_parts(pl)(), loader)


def test_resize_on_load_grows_and_prunes_to_the_saved_widths():
    from neuroplast.core.resize import grow_units, prune_units
    from neuroplast.integrations import resize_to_state_dict

    saved = nn.Sequential(mlp(8))  # the network as a submodule: keys under a prefix
    grow_units(saved, "0.1", 5)  # as MetaNet's search grows a layer
    fresh = nn.Sequential(mlp(8))
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(saved.state_dict())
    handle = resize_to_state_dict(fresh[0])
    fresh.load_state_dict(saved.state_dict())
    assert fresh[0][1].out_features == 13 and fresh[0][3].in_features == 13
    assert_same_state(fresh.state_dict(), saved.state_dict())
    prune_units(saved, "0.1", [0, 4])
    fresh.load_state_dict(saved.state_dict())
    assert fresh[0][1].out_features == 2
    handle.remove()  # the hook gone, a load does not resize
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(nn.Sequential(mlp(8)).state_dict())


def test_lightning_refuses_ddp_and_a_scheduler_under_a_new_group(pl, digits):
    from neuroplast.integrations.lightning import NeuroplastCallback

    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val))
    ddp = types.SimpleNamespace(world_size=2)
    with pytest.raises(RuntimeError, match="runs on one device.*neuroplast train --distributed"):
        callback.setup(ddp, lightning_parts(pl)(), "fit")
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val))
    with pytest.raises(ValueError, match="LR scheduler.*gate_optimizer='adam'"):
        lightning_fit(pl, digits, callback, epochs=1, scheduler=True)
    # With its own Adam the gates leave the optimizer and its scheduler as they were.
    callback = NeuroplastCallback("npn", val=(digits.x_val, digits.y_val),
                                  gate_optimizer="adam", **NPN_OPTIONS)
    module, trainer, _ = lightning_fit(pl, digits, callback, epochs=3, scheduler=True)
    gate = module.model.get_submodule("3_gate")
    assert all(id(p) != id(gate.phi) for g in trainer.optimizers[0].param_groups
               for p in g["params"])
    assert gate.phi.numel() < 32


# ------------------------------------------------------------------------------ Hugging Face
@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers


class Classifier(nn.Module):
    """What transformers.Trainer needs of a model: keyword inputs, a dict with the loss."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = mlp(width)

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        output = {"logits": logits}
        if labels is not None:
            output["loss"] = F.cross_entropy(logits, labels)
        return output


class Examples(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return {"pixel_values": self.x[index], "labels": self.y[index]}


def hf_trainer(hf, digits, tmp_path, epochs=3, save_strategy="no", **options):
    from neuroplast.integrations.huggingface import SelfSizingTrainer

    torch.manual_seed(0)
    args = hf.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=64,
        learning_rate=1e-2, report_to=[], save_strategy=save_strategy, logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0)
    return SelfSizingTrainer(model=Classifier(), args=args,
                             train_dataset=Examples(digits.x_train, digits.y_train),
                             method="npn", val=(digits.x_val, digits.y_val),
                             model_attribute="net", method_options=options)


def test_huggingface_npn_removes_units_and_keeps_training(hf, digits, tmp_path):
    trainer = hf_trainer(hf, digits, tmp_path, **NPN_OPTIONS)
    net, gate = trainer.model.net, trainer.model.net.get_submodule("3_gate")
    start = gate.phi.detach().clone()
    output = trainer.train()
    assert not torch.allclose(gate.phi.detach(), start[gate.unit_id])
    width = gate.phi.numel()
    assert width < 32 and net.get_submodule("1").out_features == width
    assert any(e.startswith("pruned 1") for e in trainer.history[1]["events"])
    assert math.isfinite(output.training_loss) and math.isfinite(trainer.history[-1]["train_loss"])
    assert trainer.history[-1]["val_accuracy"] > 0.8
    inner = trainer.optimizer.optimizer  # accelerate's wrapper around the torch optimizer
    assert_state_follows(inner, trainer.model, trainer.state.global_step)
    assert [g["weight_decay"] for g in inner.param_groups if g["params"] == [gate.phi]] == [0.0]


def test_huggingface_arm_term_equals_a_hand_computation(hf, digits, tmp_path):
    trainer = hf_trainer(hf, digits, tmp_path, lambdas=(0.0,))
    trainer.method.set_k(7.0)
    model = trainer.model.train()
    u = fixed_draws(model.net)
    x, y = digits.x_train[:64], digits.y_train[:64]
    loss = trainer.compute_loss(model, {"pixel_values": x, "labels": y})
    loss.backward()
    expected, f2 = hand_arm_gradient(model.net, x, y, u, 7.0)
    assert torch.allclose(model.net.get_submodule("3_gate").phi.grad, expected, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(f2), rel=1e-6)


def test_huggingface_refuses_ddp(hf, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(hf.TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(RuntimeError, match="runs on one device"):
        hf_trainer(hf, digits, tmp_path)


def test_huggingface_resumes_a_resized_network_from_its_checkpoint(hf, digits, tmp_path):
    trainer = hf_trainer(hf, digits, tmp_path / "whole", epochs=4, save_strategy="epoch",
                         **RESUME_OPTIONS)
    trainer.train()
    after_two = tmp_path / "whole" / f"checkpoint-{trainer.state.global_step // 2}"
    state = json.loads((after_two / "neuroplast_sizing.json").read_text())
    assert state["state"]["epoch"] == 2 and len(state["state"]["history"]) == 2
    from safetensors.torch import load_file

    weights = load_file(after_two / "model.safetensors")
    assert weights["net.1.weight"].shape[0] < 32  # units were removed by then
    resumed = hf_trainer(hf, digits, tmp_path / "resumed", epochs=4, save_strategy="epoch",
                         **RESUME_OPTIONS)  # a fresh model, 32 units wide
    resumed.train(resume_from_checkpoint=str(after_two))
    assert resumed.sizing.epoch == 4 and resumed.state.global_step == trainer.state.global_step
    assert_resumed_like_uninterrupted(
        (trainer.model, trainer.method, trainer.history, trainer.optimizer.optimizer),
        (resumed.model, resumed.method, resumed.history, resumed.optimizer.optimizer))
    assert resumed._resize_on_load is None


def test_huggingface_resumes_from_a_step_checkpoint_written_before_the_epoch_end(
        hf, digits, tmp_path):
    # save_steps = the steps of an epoch: each checkpoint is written on an epoch's last step,
    # before that epoch's end (validation, decisions) runs; the resumed run owes it.
    def make(folder):
        trainer = hf_trainer(hf, digits, folder, epochs=4, save_strategy="steps",
                             **RESUME_OPTIONS)
        trainer.args.save_steps = 18  # 1,150 examples in batches of 64
        return trainer

    whole = make(tmp_path / "whole")
    whole.train()
    after_two = tmp_path / "whole" / "checkpoint-36"
    assert json.loads((after_two / "neuroplast_sizing.json").read_text())["state"]["epoch"] == 1
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(after_two))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["widths"] for r in resumed.history] == [r["widths"] for r in whole.history]
    validation = ("val_loss", "val_accuracy")
    assert [r[key] for r in resumed.history for key in validation] == pytest.approx(
        [r[key] for r in whole.history for key in validation])
    assert_same_state(resumed.method.state_dict(), whole.method.state_dict())
    assert_same_state(resumed.model.state_dict(), whole.model.state_dict())


def test_huggingface_plans_epochs_from_max_steps(hf, digits, tmp_path):
    trainer = hf_trainer(hf, digits, tmp_path, lambdas=(0.003,), lambda_unit="weight")
    trainer.args.max_steps = 20  # 18 steps a epoch: 2 epochs, whatever num_train_epochs says
    trainer.train()
    assert trainer.state.global_step == 20 and trainer.sizing.config.epochs == 2
    assert [record["epoch"] for record in trainer.history] == [1, 2]
