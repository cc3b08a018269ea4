"""Device placement: the mechanism creates every tensor where the model lives.

This machine has no GPU, so the resize mechanism is exercised on PyTorch's ``meta`` device:
meta tensors carry shapes and devices but no values, and mixing one with a CPU tensor is an
error, exactly as mixing a CUDA tensor with a CPU one is. A tensor created on the CPU by
mistake inside a resize therefore fails here as it would on a GPU.
"""

import pytest
import torch

from neuroplast import build_model, find_unit_groups, grow_units, prune_units, split_units
from neuroplast.cli import main
from neuroplast.gates.attach import attach_npn_gates
from neuroplast.methods.expression import remove_units
from neuroplast.methods.proliferation import random_birth
from neuroplast.train.loop import TrainConfig, check_device

META = torch.device("meta")


def _step(model, optimizer, shape):
    x = torch.randn(4, *shape, device=META)
    model(x).sum().backward()
    optimizer.step()  # creates Adam's state on the model's device
    optimizer.zero_grad()


@pytest.mark.parametrize("name, shape", [("lenet300", (1, 28, 28)), ("lenet5", (1, 28, 28)),
                                         ("resnet20", (3, 32, 32)), ("mlp", (1, 8, 8))])
def test_resizes_and_optimizer_surgery_stay_on_the_model_device(name, shape):
    model = build_model(name, shape, 10).to(META)
    optimizer = torch.optim.Adam(model.parameters())
    _step(model, optimizer, shape)
    for layer in find_unit_groups(model):
        prune_units(model, layer, [0, 1, 2], optimizer=optimizer)
        grow_units(model, layer, 2, optimizer=optimizer, generator=torch.Generator())
        split_units(model, layer, [0, 4], noise_std=0.1, optimizer=optimizer,
                    generator=torch.Generator())
    _step(model, optimizer, shape)
    assert all(p.device == META for p in model.parameters())
    assert all(v.device == META for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v) and v.dim() > 0)


def test_gated_layers_resize_on_the_model_device():
    model = build_model("lenet5", (1, 28, 28), 10)
    assert attach_npn_gates(model)
    model.to(META)
    optimizer = torch.optim.Adam(model.parameters())
    _step(model, optimizer, (1, 28, 28))
    for layer in find_unit_groups(model):
        # (Indices a policy computes on the GPU are moved to the CPU first, which a meta
        # tensor, having no values, cannot be: those are plain lists here.)
        prune_units(model, layer, [1, 3], optimizer=optimizer)
        grow_units(model, layer, 3, optimizer=optimizer, generator=torch.Generator())
    _step(model, optimizer, (1, 28, 28))
    assert all(p.device == META for p in model.parameters())


def test_metanet_events_on_the_model_device():
    model = build_model("mlp", (1, 8, 8), 10, widths=[12]).to(META)
    optimizer = torch.optim.Adam(model.parameters())
    _step(model, optimizer, (1, 8, 8))
    generator = torch.Generator().manual_seed(0)
    # (Events that read a weight statistic as a Python number, such as division's noise
    # scale, need values: the resizes they make are covered above.)
    random_birth(model, "fc1", 3, optimizer=optimizer, generator=generator)
    remove_units(model, "fc1", [0, 5], mean_activation=torch.rand(15), optimizer=optimizer)
    _step(model, optimizer, (1, 8, 8))
    assert model.fc1.weight.shape == (13, 64) and model.fc1.weight.device == META


def test_devices_this_machine_cannot_use_are_clear_errors():
    with pytest.raises(ValueError, match="is not a device"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="trains on cpu or cuda"):
        TrainConfig(device="meta").validate()
    with pytest.raises(ValueError, match="trains on cpu or cuda"):
        check_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            TrainConfig(device="cuda").validate()
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_command_line_rejects_a_missing_device_and_trains_on_an_explicit_cpu(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--threads", "1"]
    assert main([*base, "--device", "tpu", "--out", str(tmp_path / "bad")]) == 2
    assert "--device tpu" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--device", "cpu", "--out", str(tmp_path / "ok")]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_metanet_run_on_cuda_matches_the_cpu_run_in_widths_and_events(tmp_path):
    base = ["train", "--method", "metanet", "--dataset", "digits", "--widths", "8",
            "--epochs", "4", "--no-progress", "--metanet-strategy", "metabolism",
            "--metanet-trigger", "schedule"]
    assert main([*base, "--out", str(tmp_path / "cpu")]) == 0
    assert main([*base, "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 0
    import json

    rows = {d: [json.loads(line) for line in
                (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("cpu", "cuda")}
    assert [r["widths"] for r in rows["cpu"]] == [r["widths"] for r in rows["cuda"]]
