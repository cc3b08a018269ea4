"""Unit groups found from the traced graph: what is found, and resizes checked independently."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.zoo import ZOO, Attention, ResidualCNN, VisionTransformer, real_library_model
from neuroplast import NotResizableError, trace_unit_groups

warnings.filterwarnings("ignore", message=".*bos_token_id.*")

# (groups, of which streams, heads) each model must show: the counts Torch-Pruning 1.6.1
# finds for resnet18 (12) and mobilenet_v3_small (27), and for the transformers every head
# set, every FFN and the residual stream.
EXPECTED = {
    "residual-cnn": (2, 1, 0),
    "resnet18": (12, 4, 0),
    "mobilenet_v3_small": (27, 4, 0),
    "vit-tiny": (5, 1, 2),
    "hf-bert": (6, 1, 2),
    "hf-gpt2": (5, 1, 2),
    "hf-vit": (5, 1, 2),
    "hf-llama": (5, 1, 2),
}
TRANSFORMERS = ("hf-bert", "hf-gpt2", "hf-vit", "hf-llama")


def build(name: str):
    if name in TRANSFORMERS:
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, example = ZOO[name][0]()
    return model.eval(), example


def outputs(model: nn.Module, example) -> list[torch.Tensor]:
    with torch.no_grad():
        result = model(**example) if isinstance(example, dict) else model(example)
    if isinstance(result, torch.Tensor):
        return [result]
    return [value for value in result.values() if isinstance(value, torch.Tensor)]


def loss_of(model: nn.Module, example) -> torch.Tensor:
    result = model(**example) if isinstance(example, dict) else model(example)
    logits = result if isinstance(result, torch.Tensor) else result["logits"]
    return logits.float().pow(2).mean()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_groups_found_in_real_topologies(name):
    model, example = build(name)
    graph = trace_unit_groups(model, example)
    kinds = [group.kind for group in graph.groups.values()]
    assert (len(kinds), kinds.count("stream"), kinds.count("heads")) == EXPECTED[name], (
        graph.widths(), graph.blocked)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prune_a_quarter_and_grow_back_with_a_stepped_adam(name):
    model, example = build(name)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_of(model, example).backward()
    optimizer.step()
    graph = trace_unit_groups(model, example)
    expected_shapes = [o.shape for o in outputs(model.eval(), example)]
    generator = torch.Generator().manual_seed(1)
    for group_name, group in graph.groups.items():
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
        width = group.width
        keep = torch.randperm(width, generator=generator)[: max(1, width - width // 4)]
        graph.prune(group_name, keep, optimizer=optimizer)
        assert graph.groups[group_name].width == keep.numel()
        # Survivors keep their values and Adam moments: for a layer's own units (one entry per
        # unit), the entries picked here by plain indexing.
        params = dict(model.named_parameters())
        for tensor in group.tensors:
            if group.kind != "units" or group.graph.atoms.size(tensor.atom) != keep.numel():
                continue
            if tensor.name not in params:
                continue
            index = keep.sort().values
            param = params[tensor.name]
            assert torch.equal(param.detach(), before[tensor.name].index_select(tensor.dim, index))
            assert torch.equal(optimizer.state[param]["exp_avg"],
                               moments[tensor.name].index_select(tensor.dim, index))
    # Every parameter is still in the optimizer, with state of its own shape.
    params = list(model.parameters())
    assert {id(p) for p in params} == {id(p) for g in optimizer.param_groups for p in g["params"]}
    for param in params:
        assert optimizer.state[param]["exp_avg"].shape == param.shape
    assert [o.shape for o in outputs(model, example)] == expected_shapes
    for group_name in graph.groups:
        graph.grow(group_name, 2, optimizer=optimizer, generator=generator)
    assert [o.shape for o in outputs(model, example)] == expected_shapes
    model.train()
    optimizer.zero_grad()
    loss_of(model, example).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def zero_fan_out(model: nn.Module, group, units: torch.Tensor) -> None:
    """Zero what the consumers read from ``units``: found by index arithmetic on the consumer's
    layout (units x features per unit, repeated), independent of the resize code."""
    atoms = group.graph.atoms
    for tensor in group.tensors:
        if tensor.role != "consumes":
            continue
        param = dict(model.named_parameters())[tensor.name]
        where, _, _ = atoms.positions(tensor.atom, group.atom, group.width)
        columns = torch.nonzero(torch.isin(where, units)).reshape(-1)
        with torch.no_grad():
            param.index_fill_(tensor.dim, columns, 0.0)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_zero_fan_out_prune_leaves_outputs_unchanged(name):
    model, example = build(name)
    graph = trace_unit_groups(model, example)
    generator = torch.Generator().manual_seed(2)
    checked = 0
    for group_name, group in list(graph.groups.items()):
        norms_over_it = any("Norm" in type(model.get_submodule(t.name.rpartition(".")[0])
                                            ).__name__ and "Batch" not in type(
            model.get_submodule(t.name.rpartition(".")[0])).__name__ for t in group.tensors)
        if norms_over_it:
            continue  # a LayerNorm's statistics read every unit of the stream
        drop = torch.randperm(group.width, generator=generator)[: max(1, group.width // 4)]
        zero_fan_out(model, group, drop)
        reference = outputs(model, example)
        keep = torch.tensor([u for u in range(group.width) if u not in set(drop.tolist())])
        graph.prune(group_name, keep)
        for got, want in zip(outputs(model, example), reference, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", ["vit-tiny", "hf-bert", "hf-gpt2", "resnet18"])
def test_grown_units_do_not_change_outputs(name):
    model, example = build(name)
    graph = trace_unit_groups(model, example)
    reference = outputs(model, example)
    for group_name, group in graph.groups.items():
        if group.kind != "stream":
            graph.grow(group_name, 3)
    for got, want in zip(outputs(model, example), reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_pruning_a_head_equals_masking_it_by_hand():
    """A ViT head removed equals the unpruned model with that head's output columns zeroed,
    written here from the layout qkv rows = (3, heads, head_dim), proj columns = (heads,
    head_dim)."""
    torch.manual_seed(0)
    model = VisionTransformer(16, 4, 32, 1, 4, 2.0, 10).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = trace_unit_groups(model, x)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.blocks[0].attn.proj.weight[:, 8:16] = 0  # head 1 of 4, head_dim 8
    graph.prune("blocks.0.attn:heads", [0, 2, 3])
    attn = model.blocks[0].attn
    assert attn.num_heads == 3 and attn.qkv.out_features == 72 and attn.proj.in_features == 24
    original = masked.blocks[0].attn.qkv.weight
    rows = [s * 32 + h * 8 + d for s in range(3) for h in (0, 2, 3) for d in range(8)]
    assert torch.equal(attn.qkv.weight, original[rows])
    torch.testing.assert_close(model(x), masked(x), atol=1e-6, rtol=1e-5)


def test_hugging_face_attributes_follow_heads_and_tied_embeddings_stay_tied():
    pytest.importorskip("transformers")
    model, example = build("hf-gpt2")
    graph = trace_unit_groups(model, example)
    graph.prune("transformer.h.0.attn:heads", [0, 1, 3])
    attention = model.transformer.h[0].attn
    assert attention.split_size == 24 and attention.c_attn.nf == 72
    stream = next(name for name, g in graph.groups.items() if g.kind == "stream")
    graph.prune(stream, range(30))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape == (100, 30)
    assert outputs(model, example)[0].shape == (2, 8, 100)
    bert, ids = build("hf-bert")
    graph = trace_unit_groups(bert, ids)
    graph.prune("bert.encoder.layer.1.attention.self:heads", [1, 2])
    self_attention = bert.bert.encoder.layer[1].attention.self
    assert (self_attention.num_attention_heads, self_attention.all_head_size) == (2, 16)


class GroupedQueryAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = 4, 2, 8
        self.q = nn.Linear(16, 32)
        self.kv = nn.Linear(16, 16)
        self.out = nn.Linear(32, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(x).view(B, T, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return self.head(x + self.out(y.transpose(1, 2).reshape(B, T, 32)))


def test_grouped_query_attention_heads_are_refused_with_the_reason():
    graph = trace_unit_groups(GroupedQueryAttention(), torch.randn(2, 5, 16))
    assert not any(group.kind == "heads" for group in graph.groups.values())
    assert any("grouped-query" in reason for reason in graph.blocked.values()), graph.blocked


class UnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.cumsum(self.fc1(x), dim=0))


def test_an_unknown_operation_blocks_its_units_and_is_named():
    graph = trace_unit_groups(UnknownOp(), torch.randn(3, 4))
    assert "fc1" not in graph.groups
    assert any("cumsum" in reason for reason in graph.blocked.values()), graph.blocked
    with pytest.raises(NotResizableError, match="no unit group named 'fc1'"):
        graph.prune("fc1", [0])


class Concatenated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 5)
        self.out = nn.Linear(11, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


def test_concatenated_units_map_to_their_slice():
    torch.manual_seed(0)
    model = Concatenated()
    x = torch.randn(5, 4)
    graph = trace_unit_groups(model, x)
    assert graph.widths() == {"a": 6, "b": 5}
    columns = model.out.weight.detach().clone()
    graph.prune("b", [0, 4])
    assert torch.equal(model.out.weight, columns[:, [0, 1, 2, 3, 4, 5, 6, 10]])
    graph.grow("a", 2)
    assert torch.equal(model.out.weight[:, 6:8], torch.zeros(3, 2))
    assert model(x).shape == (5, 3)


def test_a_traced_model_with_a_wrong_example_gets_a_clear_error():
    with pytest.raises(Exception, match="could not trace ResidualCNN with the example input"):
        trace_unit_groups(ResidualCNN(), torch.randn(2, 5))


def test_timm_style_attention_keeps_working_module_by_module():
    attention = Attention(32, 4)
    graph = trace_unit_groups(nn.Sequential(nn.Linear(8, 32), attention, nn.Linear(32, 2)),
                              torch.randn(2, 5, 8))
    assert graph.groups["1:heads"].width == 4


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit-tiny"])
def test_the_real_library_model_where_it_loads(name):
    """torchvision's and timm's own models (their registry wheels are CUDA builds that do not
    import with the CPU torch here: then this skips and the topology tests above stand in)."""
    try:
        model, example = real_library_model(name)
    except (ImportError, RuntimeError, OSError) as error:
        pytest.skip(f"{name}'s library does not load here: {error}")
    graph = trace_unit_groups(model.eval(), example)
    kinds = [group.kind for group in graph.groups.values()]
    assert (len(kinds), kinds.count("stream"), kinds.count("heads")) == EXPECTED[name]


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("lenet5", (1, 28, 28)),
                                         ("resnet20", (3, 16, 16))])
def test_traced_groups_agree_with_the_declared_chains(name, shape):
    """Two independent discoveries of the built-in models' groups: every chain group is a traced
    group with the same coupled tensors (the trace also finds the ResNet's residual streams,
    which the chains cannot resize)."""
    from neuroplast import build_model, find_unit_groups

    model = build_model(name, shape, 10)
    graph = trace_unit_groups(model, torch.randn(2, *shape))
    traced = {frozenset((t.name, t.dim) for t in g.tensors): g for g in graph.groups.values()}
    for layer, group in find_unit_groups(model).items():
        declared = frozenset(
            (f"{c.module_name}.{c.tensor_name}" if c.module_name else c.tensor_name, c.dim)
            for c in group.tensors if getattr(c.module, c.tensor_name, None) is not None)
        assert declared in traced, (layer, declared)
        assert traced[declared].width == group.width
    # ResNet-20's shortcuts pad channels with constant zeros (option A), so the first stage's
    # stream runs on through the later stages, beside their padded channels, which stay fixed.
    streams = [g for g in graph.groups.values() if g.kind == "stream"]
    assert [g.width for g in streams] == ([16] if name == "resnet20" else [])


class Norms(nn.Module):
    """GroupNorm over conv channels (4 groups), RMSNorm and LayerNorm over a Linear's units."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 12)
        self.rms = nn.RMSNorm(12)
        self.out = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.gn(self.conv(x)))).mean(dim=(2, 3))
        return self.out(torch.relu(self.rms(self.fc(x))))


def test_group_norm_keeps_its_groups_and_rms_norm_follows_its_units():
    torch.manual_seed(0)
    model = Norms().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace_unit_groups(model, x)
    # A GroupNorm's unit is a channel position within every group: 8 channels in 4 groups of 2.
    assert graph.widths() == {"conv": 2, "conv2": 4, "fc": 12}
    conv_rows = model.conv.weight.detach().clone()
    graph.prune("conv", [0])  # not exact: the group's statistics read both of its channels
    assert model.gn.num_groups == 4 and model.gn.num_channels == 4
    assert torch.equal(model.conv.weight, conv_rows[[0, 2, 4, 6]])
    assert model.conv2.weight.shape == (4, 4, 1, 1) and model(x).shape == (2, 2)
    graph.prune("fc", range(9))
    assert model.rms.normalized_shape == (9,) and model(x).shape == (2, 2)


class SplitWritten(nn.Module):
    """A Linear's output split at a size written in the code, its parts swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Linear(4, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.a(x).split(16, -1)
        return self.fc(torch.cat([q, p], -1).relu())


class SelectsAUnit(nn.Module):
    """One unit of a layer is read by index (h[:, 2]) as well as by the next layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h.relu()) * torch.sigmoid(h[:, 2]).unsqueeze(1)


class KeepsItsClassCount(nn.Module):
    """A conv net whose num_classes happens to equal its conv's width."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 10
        self.c, self.fc = nn.Conv2d(3, 10, 3), nn.Linear(10 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(x).relu().view(x.shape[0], -1))


def test_units_the_code_addresses_by_position_are_refused():
    """A split at a written size and an indexed unit would read other units after a resize:
    neither is offered (found by a reviewer: both were offered and pruned silently wrong)."""
    graph = trace_unit_groups(SplitWritten(), torch.randn(5, 4))
    assert "a" not in graph.groups
    assert any("constants" in reason for reason in graph.blocked.values())
    graph = trace_unit_groups(SelectsAUnit(), torch.randn(5, 4))
    assert "a" not in graph.groups
    assert any("picks one entry" in reason for reason in graph.blocked.values())


def test_only_width_attributes_follow_a_resize():
    model = KeepsItsClassCount()
    graph = trace_unit_groups(model, torch.randn(2, 3, 6, 6))
    graph.prune("c", range(9))
    assert model.num_classes == 10 and model(torch.randn(2, 3, 6, 6)).shape == (2, 10)


@pytest.mark.parametrize("dim, heads", [(24, 3), (16, 4)])
def test_heads_are_found_when_their_count_equals_another_written_size(dim, heads):
    """3 heads beside q/k/v's 3, and 4 heads of size 4: the head count is the resizable one."""
    torch.manual_seed(0)
    model = VisionTransformer(16, 4, dim, 1, heads, 2.0, 10).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = trace_unit_groups(model, x)
    assert graph.groups["blocks.0.attn:heads"].width == heads
    zero_fan_out(model, graph.groups["blocks.0.attn:heads"], torch.tensor([0]))
    reference = model(x)
    graph.prune("blocks.0.attn:heads", range(1, heads))
    assert model.blocks[0].attn.num_heads == heads - 1
    assert model.blocks[0].attn.head_dim == dim // heads
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-4)
