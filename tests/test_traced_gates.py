"""NPN and hard-concrete gates on traced groups (FFN units, attention heads, conv channels):
attach, train a step, compact, export; each checked against an independent computation."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.zoo import ZOO
from neuroplast import export_pt2, trace_unit_groups
from neuroplast.gates import arm_loss
from neuroplast.gates.hard_concrete import HardConcreteGate
from neuroplast.gates.traced import attach_traced_gates, compact_traced

warnings.filterwarnings("ignore", message=".*bos_token_id.*")


class Logits(nn.Module):
    """A Hugging Face model as a function of one input tensor to class logits (a language
    model's: at the last position), what a loss reads."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(**{self.key: x}).logits
        return logits[:, -1] if logits.dim() == 3 else logits


def build(name: str):
    if name.startswith("hf-"):
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, example = ZOO[name][0]()
    if isinstance(example, dict):
        (key, x), = example.items()
        model, example = Logits(model, key), x
    return model.eval(), example


def close_some(gates, generator) -> None:
    for gate in gates.values():
        with torch.no_grad():
            gate.phi.copy_(torch.randn(gate.phi.shape, generator=generator).abs() + 0.5)
            closed = torch.randperm(gate.phi.numel(), generator=generator)[: gate.phi.numel() // 3]
            gate.phi[closed] = -1.0


@pytest.mark.parametrize("name", [
    "vit-tiny", "hf-bert", "hf-gpt2", "hf-vit", "resnet18", "mobilenet_v3_small"])
def test_gates_attach_train_and_compact_to_the_same_function(name, tmp_path):
    model, x = build(name)
    graph = trace_unit_groups(model, x)
    gates = attach_traced_gates(graph, k=7.0)
    kinds = {graph.groups[group].kind for group in gates}
    assert "units" in kinds and ("heads" in kinds) == (name not in ("resnet18",
                                                                    "mobilenet_v3_small"))
    # A training step at pi = 1/2 (where ARM's two gates of a unit always differ): every gate
    # gets a gradient, the weights theirs.
    model.train()
    targets = torch.zeros(x.shape[0], dtype=torch.long)
    loss, _ = arm_loss(model, list(gates.values()), x, targets, F.cross_entropy)
    loss.backward()
    assert all(gate.phi.grad is not None and gate.phi.grad.abs().sum() > 0
               for gate in gates.values())
    assert all(p.grad is not None for n, p in model.named_parameters()
               if "unit_gate" not in n and p.requires_grad and "pooler" not in n)
    model.eval()
    close_some(gates, torch.Generator().manual_seed(0))

    reference = copy.deepcopy(model)
    for module in reference.modules():  # the same weights, without gates
        module._forward_pre_hooks.clear()
        module._modules.pop("unit_gate", None)
    # Eval: the gated model equals the ungated one with each consumer's columns scaled by the
    # test gate, written here by hand from the units' feature positions.
    with torch.no_grad():
        for group_name, gate in gates.items():
            group = graph.groups[group_name]
            consumed = next(t for t in group.tensors if t.role == "consumes")
            weight = reference.get_submodule(consumed.name.rpartition(".")[0]).weight
            units, _, _ = graph.atoms.positions(consumed.atom, group.atom, group.width)
            shape = [1] * weight.dim()
            shape[consumed.dim] = -1
            weight.mul_(gate.test_gate()[units].reshape(shape))
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)


    compact = compact_traced(graph)
    assert not any(hasattr(m, "unit_gate") or m._forward_pre_hooks for m in compact.modules())
    assert sum(p.numel() for p in compact.parameters()) < sum(
        p.numel() for n, p in model.named_parameters() if "unit_gate" not in n)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-4)
    exported = torch.export.load(export_pt2(compact, tmp_path / "model.pt2", x)).module()
    torch.testing.assert_close(exported(x), compact(x), atol=1e-4, rtol=1e-4)


def test_hard_concrete_gates_on_heads_compact_too():
    model, x = build("vit-tiny")
    graph = trace_unit_groups(model, x)
    gates = attach_traced_gates(graph, ["blocks.0.attn:heads"], gate_type=HardConcreteGate)
    with torch.no_grad():
        gates["blocks.0.attn:heads"].phi.copy_(torch.tensor([3.0, -9.0, 3.0, 3.0]))
    compact = compact_traced(graph)
    assert compact.blocks[0].attn.num_heads == 3
    torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-4)


def test_gates_follow_a_prune_of_their_group():
    model, x = build("vit-tiny")
    graph = trace_unit_groups(model, x)
    gates = attach_traced_gates(graph, ["blocks.1.mlp.fc1"], k=7.0)
    gate = gates["blocks.1.mlp.fc1"]
    with torch.no_grad():
        gate.phi.copy_(torch.linspace(-1, 1, 64))
    graph.prune("blocks.1.mlp.fc1", range(0, 64, 2))
    assert torch.equal(gate.phi.detach(), torch.linspace(-1, 1, 64)[::2])
    assert model(x).shape == (2, 10)


def test_a_stream_gets_no_gate_with_a_clear_reason():
    model, x = build("vit-tiny")
    graph = trace_unit_groups(model, x)
    with pytest.raises(ValueError, match="not on residual streams"):
        attach_traced_gates(graph, ["patch_embed:stream"])


def test_a_language_model_exports_with_its_token_ids(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, example = ZOO["hf-gpt2"][0]()
    model.eval()
    graph = trace_unit_groups(model, example)
    graph.prune("transformer.h.0.attn:heads", [0, 2, 3])
    path = export_pt2(model, tmp_path / "gpt2.pt2", example)
    program = torch.export.load(path).module()
    ids = example["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(program(ids)[0], model(input_ids=ids).logits)


class ConcatReader(nn.Module):
    """Two conv branches concatenated and read by one conv: its input holds both groups."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.c3 = nn.Conv2d(10, 5, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.c1(x).relu(), self.c2(x).relu()], dim=1)
        return self.head(self.c3(y).relu().mean(dim=(2, 3)))


def test_gates_on_groups_sharing_a_reader_follow_each_other_and_compact():
    torch.manual_seed(0)
    model = ConcatReader().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace_unit_groups(model, x)
    gates = attach_traced_gates(graph, ["c1", "c2"], k=7.0)
    with torch.no_grad():
        gates["c1"].phi.copy_(torch.tensor([1.0, -1.0, 1.0, 1.0]))
        gates["c2"].phi.copy_(torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0]))
    gated = model(x)
    graph.prune("c2", [0, 1, 2, 3, 5])  # c3 reads 9 channels now: c1's gate must follow
    assert model(x).shape == gated.shape
    compact = compact_traced(graph)
    assert compact.c1.out_channels == 3 and compact.c2.out_channels == 4  # one closed each
    assert not any(m._forward_pre_hooks for m in compact.modules())
    torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-4)


def test_a_reader_that_is_not_a_layer_gets_no_gate():
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.w = nn.Parameter(torch.randn(8, 3))

        def forward(self, x):
            return self.a(x).relu() @ self.w

    graph = trace_unit_groups(Custom(), torch.randn(5, 4))
    roles = {t.name: t.role for t in graph.groups["a"].tensors}
    assert roles["w"] == "consumes"  # x @ W reads the units
    assert attach_traced_gates(graph) == {}
    with pytest.raises(ValueError, match="not by a Linear or convolution"):
        attach_traced_gates(graph, ["a"])
