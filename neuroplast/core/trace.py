"""Unit groups of any PyTorch model, found in one traced forward pass.

The model is traced once with ``torch.export`` on an example input. Every dimension of every
tensor in the graph gets a *dimension atom*; each operation says which dimensions must stay the
same size as which (a Linear ties its weight's columns to its input's last dimension, an add ties
its operands, a reshape splits or merges dimensions, attention ties queries' and keys' head
dimensions, a concatenation makes a dimension the sum of its inputs'). Atoms tied together form
one class; a class that splits into factors (``view(B, T, heads, head_dim)``) or parts
(``cat``) keeps that structure. After the walk:

- a *unit group* is a class that cannot be split further, is not tied to the model's inputs or
  outputs, and indexes at least one parameter: a Linear's or Conv's outputs, a residual stream
  (every layer that writes it, every norm and embedding of it, every layer that reads it),
  attention heads (blocks of q/k/v rows and out-projection columns), a depthwise conv's channels
  together with the layer before it;
- where a class appears inside a larger dimension (a head inside ``heads * head_dim``, a channel
  inside ``channels * height * width`` after a flatten, a part of a concatenation) the position
  of each of its units there is computed from that structure, so a resize index-selects exactly
  the right slices of every coupled tensor, and carries their optimizer state.

Operations the walk does not know tie every dimension they touch to "not resizable", with the
operation named as the reason: a group is only offered where its coupling is known. Every group
is then checked by a dry run (each group one unit smaller, on a copy, one forward pass); a group
whose dry run fails is reported with the error instead of offered.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .groups import NotResizableError, UnsupportedModelError
from .optim import OptimizerArg, as_optimizer_list, check_optimizer_state, move_optimizer_state

Role = Literal["produces", "consumes", "per_unit"]
GroupKind = Literal["units", "stream", "heads"]

# Integer attributes that record a head count or an attention width; kept in step with a resize
# of heads even where the forward pass infers them (``view(B, T, -1, head_dim)``).
_WIDTH_ATTRIBUTES = (
    "num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "all_head_size",
    "split_size", "inner_dim", "nf",
)


class _Atoms:
    """Union-find over dimension atoms; a class is a leaf, a product or a sum of other atoms."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.leaf_size: list[int] = []
        self.kind: list[str] = []  # "leaf", "prod" or "sum"
        self.parts: list[list[int]] = []
        self.fixed: dict[int, str] = {}  # atom -> why it cannot be resized

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.leaf_size.append(int(size))
        self.kind.append("leaf")
        self.parts.append([])
        return len(self.parent) - 1

    def compose(self, kind: str, parts: Sequence[int]) -> int:
        atom = self.new(0)
        self.kind[atom], self.parts[atom] = kind, list(parts)
        return atom

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def size(self, atom: int, override: Mapping[int, int] | None = None) -> int:
        atom = self.find(atom)
        kind = self.kind[atom]
        if kind == "leaf":
            return override.get(atom, self.leaf_size[atom]) if override else self.leaf_size[atom]
        sizes = [self.size(part, override) for part in self.parts[atom]]
        return math.prod(sizes) if kind == "prod" else sum(sizes)

    def fix(self, atom: int, reason: str) -> None:
        self.fixed.setdefault(self.find(atom), reason)

    def _link(self, keep: int, gone: int) -> None:
        self.parent[gone] = keep
        if gone in self.fixed:
            self.fixed.setdefault(keep, self.fixed.pop(gone))
        if keep in self.fixed:  # what a fixed dimension is made of is fixed too
            self.fix_tree(keep, self.fixed[keep])

    def refine(self, leaf: int, sizes: Sequence[int]) -> None:
        """Split a leaf class into a product of new leaves of the given sizes."""
        self.kind[leaf], self.parts[leaf] = "prod", [self.new(size) for size in sizes]
        if leaf in self.fixed:
            self.fix_tree(leaf, self.fixed[leaf])

    def factors(self, atom: int) -> list[int]:
        """The classes a dimension is the product of (sum classes stay whole), size 1 skipped."""
        atom = self.find(atom)
        if self.kind[atom] == "prod":
            return [leaf for part in self.parts[atom] for leaf in self.factors(part)]
        return [] if self.size(atom) == 1 else [atom]

    def unify(self, a: int, b: int, reason: str = "") -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size(a) != self.size(b):
            self.fix(a, reason or "sizes disagree")
            self.fix(b, reason or "sizes disagree")
            return
        kind_a, kind_b = self.kind[a], self.kind[b]
        if kind_b == "leaf":
            self._link(a, b)
        elif kind_a == "leaf":
            self._link(b, a)
        elif kind_a == kind_b == "sum" and [self.size(p) for p in self.parts[a]] == [
                self.size(p) for p in self.parts[b]]:
            parts_a, parts_b = self.parts[a], self.parts[b]
            self._link(a, b)
            for part_a, part_b in zip(parts_a, parts_b, strict=False):
                self.unify(part_a, part_b, reason)
        elif kind_a == kind_b == "prod":
            left, right = self.factors(a), self.factors(b)
            self._link(a, b)
            self.align(left, right, reason)
        else:
            self._link(a, b)
            self.fix_tree(a, reason or "a concatenation is reshaped")

    def align(self, left: Sequence[int], right: Sequence[int], reason: str) -> None:
        """Tie two factor sequences of the same total size, splitting factors where needed."""
        queue_l, queue_r = deque(left), deque(right)
        while queue_l and queue_r:
            x, y = self.find(queue_l[0]), self.find(queue_r[0])
            for queue, atom in ((queue_l, x), (queue_r, y)):
                if self.kind[atom] == "prod":  # refined since it was queued
                    queue.popleft()
                    queue.extendleft(reversed(self.factors(atom)))
            if self.kind[x] == "prod" or self.kind[y] == "prod":
                continue
            size_x, size_y = self.size(x), self.size(y)
            if size_x == size_y:
                self.unify(x, y, reason)
                queue_l.popleft()
                queue_r.popleft()
                continue
            small, big = (x, y) if size_x < size_y else (y, x)
            if self.kind[big] != "leaf" or self.size(big) % self.size(small):
                break
            self.refine(big, [self.size(small), self.size(big) // self.size(small)])
        if queue_l or queue_r:
            for atom in [*left, *right]:
                self.fix_tree(atom, reason or "a reshape regroups dimensions unevenly")

    def fix_tree(self, atom: int, reason: str) -> None:
        atom = self.find(atom)
        self.fixed.setdefault(atom, reason)
        for part in self.parts[atom]:
            if self.find(part) not in self.fixed:
                self.fix_tree(part, reason)

    def leaves(self, atom: int) -> list[int]:
        atom = self.find(atom)
        if self.kind[atom] == "leaf":
            return [atom]
        return [leaf for part in self.parts[atom] for leaf in self.leaves(part)]

    def positions(self, atom: int, leaf: int, size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For each position along a dimension: the unit of ``leaf`` there (-1 if none), and a
        key for the rest of its coordinates, with ``leaf`` taken to have ``size`` units."""
        atom = self.find(atom)
        kind = self.kind[atom]
        if kind == "leaf":
            if atom == leaf:
                return torch.arange(size), torch.zeros(size, dtype=torch.long), 1
            own = self.leaf_size[atom]
            return torch.full((own,), -1), torch.arange(own), own
        pieces = [self.positions(part, leaf, size) for part in self.parts[atom]]
        if kind == "sum":
            units, keys, offset = [], [], 0
            for unit, key, rest in pieces:
                units.append(unit)
                keys.append(key + offset)
                offset += rest
            return torch.cat(units), torch.cat(keys), offset
        unit, key, rest = pieces[0]
        for unit_b, key_b, rest_b in pieces[1:]:
            if (unit >= 0).any() and (unit_b >= 0).any():
                raise NotResizableError("a dimension holds the same units twice")
            unit = torch.maximum(unit[:, None], unit_b[None, :]).reshape(-1)
            key = (key[:, None] * rest_b + key_b[None, :]).reshape(-1)
            rest *= rest_b
        return unit, key, rest


@dataclass(frozen=True)
class TracedTensor:
    """One dimension of one parameter or buffer that follows a group's units."""

    name: str  # qualified name in the model, e.g. "blocks.0.attn.qkv.weight"
    dim: int
    atom: int  # the dimension's atom (its structure places the units)
    role: Role


@dataclass
class TracedGroup:
    """A set of units found in the traced graph, with every tensor dimension that follows them."""

    name: str
    kind: GroupKind
    atom: int
    tensors: list[TracedTensor]
    graph: UnitGraph = field(repr=False)

    @property
    def width(self) -> int:
        """Current number of units."""
        return self.graph.atoms.leaf_size[self.atom]

    @property
    def modules(self) -> list[str]:
        """The modules whose tensors follow these units, in graph order."""
        return list(dict.fromkeys(tensor.name.rpartition(".")[0] for tensor in self.tensors))


def _packet(target: Any) -> str:
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return "getitem" if target is operator.getitem else getattr(target, "__name__", str(target))


_SAME_SHAPE = {
    "relu", "relu_", "gelu", "silu", "silu_", "tanh", "sigmoid", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "elu", "mish", "relu6",
    "dropout", "native_dropout", "clone", "contiguous", "alias", "detach", "detach_",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "to", "_to_copy", "type_as", "neg",
    "exp", "abs", "sqrt", "rsqrt", "erf", "log", "square", "reciprocal", "lift_fresh_copy",
    "softplus", "sin", "cos", "logical_not", "bitwise_not", "copy", "float", "sign",
}
_BROADCAST = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "where", "maximum", "minimum",
    "pow", "eq", "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_", "logical_and",
    "logical_or", "bitwise_and", "bitwise_or", "clamp", "clamp_min", "clamp_max", "rsub",
    "floor_divide", "remainder", "fmod", "addcmul", "lerp",
}
_RESHAPE = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
            "view_as", "squeeze_", "unsqueeze_"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "max", "min", "logsumexp", "norm",
           "argmax", "argmin", "prod", "all", "any"}
_POOL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d",
         "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
         "max_pool2d_with_indices", "adaptive_max_pool2d", "upsample_nearest2d",
         "upsample_bilinear2d"}
_IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_numel", "_assert_async",
            "scalar_tensor", "arange", "full", "zeros", "ones", "empty", "zeros_like",
            "ones_like", "full_like", "empty_like", "rand", "randn", "tensor", "scalar"}
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                "cudnn_batch_norm", "instance_norm"}


class _Walker:
    """Assigns atoms to every tensor dimension of an exported graph, op by op."""

    def __init__(self, exported: torch.export.ExportedProgram, prefix: str,
                 model: nn.Module) -> None:
        self.model = model
        self.atoms = _Atoms()
        self.dims: dict[Any, Any] = {}  # node -> list[int] or tuple of lists
        self.params: dict[Any, str] = {}  # placeholder node -> qualified tensor name
        self.roles: dict[tuple[str, int], Role] = {}
        self.reshapes: list[tuple[str, list[int], list[int]]] = []  # owner, in dims, out dims
        self.conv_groups: dict[str, int] = {}  # conv module -> atom of its groups
        self.summed: list[int] = []  # channel atoms of residual sums
        self.literals: list[tuple[str, set[int], list[tuple[int, int]]]] = []  # see finish
        self.prefix = prefix
        signature = exported.graph_signature
        named = {spec.arg.name: spec for spec in signature.input_specs}
        for node in exported.graph.nodes:
            if node.op == "placeholder":
                spec = named.get(node.name)
                target = getattr(spec, "target", None)
                if spec is not None and target and spec.kind.name in ("PARAMETER", "BUFFER"):
                    self.params[node] = target.removeprefix(prefix)
        self.graph = exported.graph

    # -- helpers -------------------------------------------------------------------------
    def fresh(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return [self.atoms.new(size) for size in value.shape]
        if isinstance(value, (tuple, list)):
            return tuple(self.fresh(item) for item in value)
        return None

    def of(self, arg: Any) -> list[int] | None:
        dims = self.dims.get(arg) if isinstance(arg, torch.fx.Node) else None
        return dims if isinstance(dims, list) else None

    def role(self, arg: Any, dim: int, role: Role) -> None:
        # A tied weight (an embedding that is also the output layer) is read or written by a
        # layer in one of its uses: that use decides how new units start and who reads them.
        if isinstance(arg, torch.fx.Node) and arg in self.params:
            key = (self.params[arg], dim)
            if self.roles.get(key, "per_unit") == "per_unit":
                self.roles[key] = role

    def same(self, out: list[int], dims: list[int] | None, reason: str) -> None:
        if dims is not None and len(dims) == len(out):
            for a, b in zip(out, dims, strict=False):
                self.atoms.unify(a, b, reason)

    def broadcast(self, out: list[int], operands: Sequence[list[int] | None], reason: str) -> None:
        for dims in operands:
            if dims is None:
                continue
            for a, b in zip(reversed(out), reversed(dims), strict=False):
                if self.atoms.size(b) == self.atoms.size(a):
                    self.atoms.unify(a, b, reason)

    def note_sum(self, node: Any) -> None:
        """Remember the channels of a residual sum: two computed tensors of one shape added."""
        args = [arg for arg in node.args[:2]
                if isinstance(arg, torch.fx.Node) and arg not in self.params]
        dims = [self.of(arg) for arg in args]
        if len(dims) == 2 and dims[0] and dims[1] and len(dims[0]) == len(dims[1]):
            self.summed.append(dims[0][-1] if len(dims[0]) == 3 else dims[0][min(1, len(
                dims[0]) - 1)])

    def first(self, node: Any) -> list[int]:
        """The atoms of a node's (first) output."""
        out = self.dims[node]
        return out[0] if isinstance(out, tuple) else out

    def fix_all(self, node: Any, reason: str) -> None:
        def visit(dims: Any) -> None:
            if isinstance(dims, list):
                for atom in dims:
                    self.atoms.fix_tree(atom, reason)
            elif isinstance(dims, tuple):
                for item in dims:
                    visit(item)
        visit(self.dims.get(node))
        for arg in node.all_input_nodes:
            visit(self.dims.get(arg))

    def module_ints(self, owner: str) -> dict[str, int]:
        try:
            module = self.model.get_submodule(owner) if owner else self.model
        except AttributeError:
            return {}
        return _int_attributes(module)

    @staticmethod
    def owner(node: Any) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        return path.removeprefix("model").removeprefix(".")

    # -- the walk ------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.nodes:
            value = node.meta.get("val")
            if node.op == "placeholder":
                self.dims[node] = self.fresh(value)
                if node not in self.params:
                    self.fix_all(node, "it is tied to the model's input")
            elif node.op == "call_function":
                self.dims[node] = self.fresh(value)
                name = _packet(node.target)
                handler = getattr(self, f"op_{name.strip('_')}", None)
                where = f"{name} in {self.owner(node) or 'the model'}"
                if name in _IGNORED:
                    continue
                if handler is not None:
                    handler(node, where)
                elif name in _SAME_SHAPE:
                    self.same(self.first(node), self.of(node.args[0]), where)
                elif name in _BROADCAST:
                    operands = [self.of(arg) for arg in node.args]
                    self.broadcast(self.first(node), operands, where)
                    if name in ("add", "add_", "sub", "sub_"):
                        self.note_sum(node)
                elif name in _RESHAPE:
                    self.reshape(node, where)
                elif name in _POOL:
                    self.leading(node, 2)
                    for spatial in self.first(node)[2:]:
                        self.atoms.fix(spatial, "a spatial size, set by the input's")
                elif name in _REDUCE:
                    self.reduce(node)
                elif name in _BATCH_NORMS:
                    self.norm(node, 1, 1)
                else:
                    self.fix_all(node, f"neuroplast does not know how {where} couples units")
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.fix_arg(arg)

    def finish(self) -> None:
        """Sizes written in reshapes: a dimension split off at a written size keeps it, unless
        the module holds that size in an attribute neuroplast updates (``num_heads``). An
        attribute names one dimension: of those still resizable with its value, the outermost
        (``view(B, T, 3, heads, head_dim)`` with 3 heads: the 3 of q/k/v is fixed anyway; with
        heads == head_dim, the head size stays fixed)."""
        atoms = self.atoms
        for where, known, written in self.literals:
            claimed: set[int] = set()
            for size, atom in written:
                free = any(leaf not in atoms.fixed for leaf in atoms.leaves(atom))
                if free and size in known and size not in claimed:
                    claimed.add(size)
                    continue
                atoms.fix_tree(atom, f"{where} writes its size ({size}) as a constant")

    def fix_arg(self, arg: Any) -> None:
        dims = self.dims.get(arg)
        for atom in dims if isinstance(dims, list) else []:
            self.atoms.fix_tree(atom, "it is tied to the model's output")
        if isinstance(dims, tuple):
            for item in dims:
                for atom in item or []:
                    self.atoms.fix_tree(atom, "it is tied to the model's output")

    def leading(self, node: Any, count: int) -> None:
        out, dims = self.dims[node], self.of(node.args[0])
        out = out[0] if isinstance(out, tuple) else out
        if dims:
            for a, b in list(zip(out, dims, strict=False))[:count]:
                self.atoms.unify(a, b)

    def reduce(self, node: Any) -> None:
        dims = self.of(node.args[0])
        out = self.dims[node]
        out = out[0] if isinstance(out, tuple) else out
        if dims is None or out is None:
            return
        axes = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if axes is None or axes == []:
            return
        axes = [axes] if isinstance(axes, int) else list(axes)
        axes = {axis % len(dims) for axis in axes}
        kept = [atom for i, atom in enumerate(dims) if i not in axes or keep]
        for i, (a, b) in enumerate(zip(out, kept, strict=False)):
            if not (keep and i in axes):
                self.atoms.unify(a, b)

    def reshape(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        if dims is None or not isinstance(out, list):
            return
        atoms = self.atoms
        left = [leaf for atom in dims for leaf in atoms.factors(atom)]
        right = [leaf for atom in out for leaf in atoms.factors(atom)]
        atoms.align(left, right, f"{where} regroups dimensions unevenly")
        owner = self.owner(node)
        self.reshapes.append((owner, list(dims), list(out)))
        # A size written into the reshape (not -1) that splits a dimension holds the units of
        # that factor fixed, unless the module keeps it in an attribute neuroplast updates.
        target = node.args[1] if len(node.args) > 1 else None
        if _packet(node.target) not in ("view", "reshape", "_unsafe_view") or not isinstance(
                target, (list, tuple)) or len(target) != len(out):
            return
        whole = {tuple(atoms.factors(atom)) for atom in dims}
        known = {value for key, value in self.module_ints(owner).items()
                 if key in _WIDTH_ATTRIBUTES}
        written = [(size, atom) for size, atom in zip(target, out, strict=True)
                   if isinstance(size, int) and size != -1
                   and tuple(atoms.factors(atom)) not in whole]
        if written:  # decided once the whole graph is walked (see ``finish``)
            self.literals.append((where, known, written))

    def norm(self, node: Any, axis: int, count: int) -> None:
        out, dims = self.dims[node], self.of(node.args[0])
        out = out[0] if isinstance(out, tuple) else out
        self.same(out, dims, "")
        if dims is None:
            return
        for arg in node.args[1:5]:
            param_dims = self.of(arg)
            if param_dims and len(param_dims) == count:
                first = axis if axis >= 0 else len(dims) - count
                for i, atom in enumerate(param_dims):
                    self.atoms.unify(atom, dims[first + i])
                    self.role(arg, i, "per_unit")

    # -- operations with their own rule (op_<name>) -------------------------------------
    def op_getitem(self, node: Any, where: str) -> None:
        source = self.dims.get(node.args[0])
        if isinstance(source, tuple) and isinstance(node.args[1], int):
            self.dims[node] = source[node.args[1]]

    def op_linear(self, node: Any, where: str) -> None:
        x, weight = self.of(node.args[0]), self.of(node.args[1])
        bias = self.of(node.args[2]) if len(node.args) > 2 else None
        out = self.dims[node]
        self.atoms.unify(x[-1], weight[1], where)
        self.atoms.unify(out[-1], weight[0], where)
        self.role(node.args[1], 0, "produces")
        self.role(node.args[1], 1, "consumes")
        if bias:
            self.atoms.unify(bias[0], weight[0], where)
            self.role(node.args[2], 0, "produces")
        self.same(out[:-1], x[:-1], where)

    def op_addmm(self, node: Any, where: str) -> None:  # bias + x @ weight (HF's Conv1D)
        bias, x, weight = (self.of(arg) for arg in node.args[:3])
        out = self.dims[node]
        self.atoms.unify(x[1], weight[0], where)
        self.atoms.unify(out[1], weight[1], where)
        self.atoms.unify(out[0], x[0], where)
        self.role(node.args[2], 1, "produces")
        self.role(node.args[2], 0, "consumes")
        if bias:
            self.atoms.unify(bias[-1], out[1], where)
            self.role(node.args[0], len(bias) - 1, "produces")

    def matmul(self, a: list[int], b: list[int], out: list[int], where: str) -> None:
        if len(a) < 2 or len(b) < 2:
            for atom in [*a, *b, *out]:
                self.atoms.fix_tree(atom, f"{where} on a vector")
            return
        self.atoms.unify(a[-1], b[-2], where)
        self.atoms.unify(out[-2], a[-2], where)
        self.atoms.unify(out[-1], b[-1], where)
        self.broadcast(out[:-2], [a[:-2], b[:-2]], where)

    def op_matmul(self, node: Any, where: str) -> None:
        a, b = node.args[0], node.args[1]
        self.matmul(self.of(a), self.of(b), self.dims[node], where)
        # A weight used directly (x @ W, W @ x): its contracted dimension reads units, the
        # other writes them.
        a_dims, b_dims = self.of(a), self.of(b)
        if b_dims and len(b_dims) == 2:
            self.role(b, 0, "consumes")
            self.role(b, 1, "produces")
        if a_dims and len(a_dims) == 2:
            self.role(a, 1, "consumes")
            self.role(a, 0, "produces")

    op_mm = op_bmm = op_matmul

    def op_scaled_dot_product_attention(self, node: Any, where: str) -> None:
        q, k, v = (self.of(arg) for arg in node.args[:3])
        out = self.dims[node]
        if node.kwargs.get("enable_gqa") and self.atoms.size(q[-3]) != self.atoms.size(k[-3]):
            for atom in [q[-3], k[-3], v[-3]]:
                self.atoms.fix_tree(atom, f"{where} uses grouped-query attention, whose "
                                    "head grouping neuroplast does not resize")
        self.atoms.unify(q[-1], k[-1], where)
        self.atoms.unify(k[-2], v[-2], where)
        self.broadcast(q[:-2], [k[:-2], v[:-2]], where)
        self.same(out[:-1], q[:-1], where)
        self.atoms.unify(out[-1], v[-1], where)

    def op_convolution(self, node: Any, where: str) -> None:
        args = node.args
        name = _packet(node.target)
        x, weight = self.of(args[0]), self.of(args[1])
        bias = self.of(args[2]) if len(args) > 2 else None
        if name == "convolution":
            transposed, groups = args[6], args[8]
        else:
            transposed, groups = False, (args[6] if len(args) > 6 else 1)
        out = self.dims[node]
        if transposed:
            self.fix_all(node, f"{where} is a transposed convolution")
            return
        atoms = self.atoms
        atoms.unify(out[0], x[0], where)
        for kernel in weight[2:]:
            atoms.fix(kernel, f"{where}: kernel size")
        for spatial in out[2:]:
            atoms.fix(spatial, "a spatial size, set by the input's")
        if groups == 1:
            atoms.unify(x[1], weight[1], where)
        else:
            group_atom = atoms.new(groups)
            per_in = atoms.new(atoms.size(x[1]) // groups)
            per_out = atoms.new(atoms.size(out[1]) // groups)
            atoms.unify(x[1], atoms.compose("prod", [group_atom, per_in]), where)
            atoms.unify(out[1], atoms.compose("prod", [group_atom, per_out]), where)
            atoms.unify(weight[1], per_in, where)
            module = self.params.get(args[1], "").rpartition(".")[0]
            self.conv_groups[module] = group_atom
        atoms.unify(out[1], weight[0], where)
        self.role(args[1], 0, "produces")
        self.role(args[1], 1, "consumes")
        if bias:
            atoms.unify(bias[0], weight[0], where)
            self.role(args[2], 0, "produces")

    op_conv1d = op_conv2d = op_conv3d = op_convolution

    def op_layer_norm(self, node: Any, where: str) -> None:
        shape = node.args[1]
        self.norm(node, -1, len(shape))

    op_rms_norm = op_native_layer_norm = op_layer_norm

    def op_group_norm(self, node: Any, where: str) -> None:
        x, out = self.of(node.args[0]), self.dims[node]
        out = out[0] if isinstance(out, tuple) else out
        groups = node.args[1] if _packet(node.target) == "group_norm" else node.args[6]
        self.same(out, x, where)
        per_group = self.atoms.new(self.atoms.size(x[1]) // groups)
        group_atom = self.atoms.new(groups)
        self.atoms.fix(group_atom, f"{where} keeps its number of groups")
        self.atoms.unify(x[1], self.atoms.compose("prod", [group_atom, per_group]), where)
        params = node.args[2:4] if _packet(node.target) == "group_norm" else node.args[1:3]
        for arg in params:
            dims = self.of(arg)
            if dims:
                self.atoms.unify(dims[0], x[1], where)
                self.role(arg, 0, "per_unit")

    op_native_group_norm = op_group_norm

    def op_embedding(self, node: Any, where: str) -> None:
        weight, ids, out = self.of(node.args[0]), self.of(node.args[1]), self.dims[node]
        self.atoms.fix(weight[0], f"{where}: the vocabulary is indexed by token ids")
        self.atoms.unify(out[-1], weight[1], where)
        self.role(node.args[0], 1, "per_unit")
        self.same(out[:-1], ids, where)

    def op_expand(self, node: Any, where: str) -> None:
        self.broadcast(self.dims[node], [self.of(node.args[0])], where)

    op_expand_as = op_broadcast_to = op_expand

    def op_permute(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        order = node.args[1]
        for i, source in enumerate(order):
            self.atoms.unify(out[i], dims[source % len(dims)], where)

    def op_transpose(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        if len(dims) < 2:
            self.same(out, dims, where)
            return
        a, b = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
        order = list(range(len(dims)))
        order[a % len(dims)], order[b % len(dims)] = order[b % len(dims)], order[a % len(dims)]
        for i, source in enumerate(order):
            self.atoms.unify(out[i], dims[source], where)

    op_t = op_transpose

    def op_numpy_T(self, node: Any, where: str) -> None:  # x.T: every dimension reversed
        dims, out = self.of(node.args[0]), self.dims[node]
        for a, b in zip(out, reversed(dims), strict=True):
            self.atoms.unify(a, b, where)

    def op_select(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        axis = node.args[1] % len(dims)
        self.atoms.fix_tree(dims[axis], f"{where} picks one entry of it")
        self.same(out, dims[:axis] + dims[axis + 1:], where)

    def op_slice(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        axis = (node.args[1] if len(node.args) > 1 else 0) % len(dims)
        for i, (a, b) in enumerate(zip(out, dims, strict=False)):
            if i != axis or self.atoms.size(a) == self.atoms.size(b):
                self.atoms.unify(a, b, where)
            else:
                self.atoms.fix_tree(b, f"{where} takes part of it")
                self.atoms.fix_tree(a, f"{where} takes part of it")

    def split(self, node: Any, where: str, sizes: list[int], axis: int,
              written: bool = True) -> None:
        """``written``: the sizes are written in the code (``split(16)``), not derived from a
        part count (``chunk(2)``): then the parts keep those sizes unless the module holds
        them in an attribute neuroplast updates (GPT-2's ``split_size``)."""
        dims, outs = self.of(node.args[0]), self.dims[node]
        axis %= len(dims)
        atoms = self.atoms
        known = {value for key, value in self.module_ints(self.owner(node)).items()
                 if key in _WIDTH_ATTRIBUTES}
        if len(set(sizes)) == 1:
            count = atoms.new(len(sizes))
            atoms.fix(count, f"{where} splits it into a fixed number of parts")
            piece = atoms.new(sizes[0])
            atoms.unify(dims[axis], atoms.compose("prod", [count, piece]), where)
        else:
            parts = [atoms.new(size) for size in sizes]
            atoms.unify(dims[axis], atoms.compose("sum", parts), where)
        for i, out in enumerate(outs):
            for j, (a, b) in enumerate(zip(out, dims, strict=False)):
                if j == axis:
                    atoms.unify(a, piece if len(set(sizes)) == 1 else parts[i], where)
                else:
                    atoms.unify(a, b, where)
        pieces = [piece] if len(set(sizes)) == 1 else parts
        self.reshapes.append((self.owner(node), list(dims), pieces))
        if written:
            for part in pieces:
                if len(pieces) > 1 or atoms.size(part) not in known:
                    atoms.fix_tree(part, f"{where} writes its part sizes as constants")

    def op_split(self, node: Any, where: str) -> None:
        dims = self.of(node.args[0])
        axis = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        total = self.atoms.size(dims[axis % len(dims)])
        size = node.args[1]
        if isinstance(size, int):
            sizes = [size] * (total // size) + ([total % size] if total % size else [])
        else:
            sizes = list(size)
        self.split(node, where, sizes, axis)

    op_split_with_sizes = op_split

    def op_chunk(self, node: Any, where: str) -> None:
        sizes = [out.shape[node.args[2] if len(node.args) > 2 else 0]
                 for out in node.meta["val"]]
        self.split(node, where, sizes, node.args[2] if len(node.args) > 2 else 0, written=False)

    def op_unbind(self, node: Any, where: str) -> None:
        dims, outs = self.of(node.args[0]), self.dims[node]
        axis = (node.args[1] if len(node.args) > 1 else 0) % len(dims)
        self.atoms.fix(dims[axis], f"{where} unpacks it")
        for out in outs:
            self.same(out, dims[:axis] + dims[axis + 1:], where)

    def op_cat(self, node: Any, where: str) -> None:
        inputs = [self.of(arg) for arg in node.args[0]]
        axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = self.dims[node]
        axis %= len(out)
        inputs = [dims for dims in inputs if dims is not None and len(dims) == len(out)
                  and self.atoms.size(dims[axis]) > 0]
        for dims in inputs:
            for i, (a, b) in enumerate(zip(out, dims, strict=False)):
                if i != axis:
                    self.atoms.unify(a, b, where)
        if len(inputs) == 1:
            self.atoms.unify(out[axis], inputs[0][axis], where)
        else:
            self.atoms.unify(out[axis], self.atoms.compose("sum", [d[axis] for d in inputs]),
                             where)

    def op_stack(self, node: Any, where: str) -> None:
        out = self.dims[node]
        axis = (node.args[1] if len(node.args) > 1 else 0) % len(out)
        for arg in node.args[0]:
            dims = self.of(arg)
            self.same(out[:axis] + out[axis + 1:], dims, where)

    def op_flatten(self, node: Any, where: str) -> None:
        self.reshape(node, where)

    def op_constant_pad_nd(self, node: Any, where: str) -> None:
        """Padding a dimension makes it a sum: fixed zeros before, the input, fixed zeros after
        (a ResNet's option-A shortcut pads its channels)."""
        dims, out = self.of(node.args[0]), self.first(node)
        pad = list(node.args[1])
        atoms = self.atoms
        for i, (a, b) in enumerate(zip(out, dims, strict=True)):
            from_end = len(dims) - 1 - i
            before, after = (pad[2 * from_end], pad[2 * from_end + 1]) if (
                2 * from_end + 1 < len(pad)) else (0, 0)
            if before == after == 0:
                atoms.unify(a, b, where)
                continue
            parts = []
            for size in (before, after):
                part = atoms.new(size) if size > 0 else None
                if part is not None:
                    atoms.fix(part, f"{where} adds these entries")
                parts.append(part)
            if before < 0 or after < 0:
                atoms.fix_tree(a, f"{where} crops it")
                atoms.fix_tree(b, f"{where} crops it")
                continue
            summed = [p for p in (parts[0], b, parts[1]) if p is not None]
            atoms.unify(a, atoms.compose("sum", summed), where)

    op_pad = op_reflection_pad1d = op_reflection_pad2d = op_replication_pad2d = op_constant_pad_nd

    def op_index_select(self, node: Any, where: str) -> None:
        dims, out = self.of(node.args[0]), self.dims[node]
        axis = node.args[1] % len(dims)
        for i, (a, b) in enumerate(zip(out, dims, strict=False)):
            if i != axis:
                self.atoms.unify(a, b, where)
        self.atoms.fix_tree(dims[axis], f"{where} picks entries of it")


class _Outputs(nn.Module):
    """Wraps a model so that its output is a flat tuple of tensors (dicts, model outputs and
    caches of language models included: only their tensors are kept)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(output_tensors(self.model(*args, **kwargs)))


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: a tensor, or those inside tuples, lists and
    dicts (a Hugging Face output's fields); anything else (a key/value cache) is left out."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in output_tensors(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in output_tensors(item)]
    return []


def _as_args(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, tuple):
        return example, {}
    return (example,), {}


def _int_attributes(module: nn.Module) -> dict[str, int]:
    return {key: value for key, value in vars(module).items()
            if isinstance(value, int) and not isinstance(value, bool)}


def _tensor_at(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attr)


class UnitGraph:
    """The unit groups of one model, found by tracing it once; resizes them in place.

    Build it with :func:`trace_unit_groups`. ``groups`` holds what can be resized, by name
    (``"fc1"`` for a layer's units, ``"blocks.0.attn:heads"`` for attention heads,
    ``"stem.0:stream"`` for a residual stream); ``blocked`` says, for each parameter dimension
    that is not in a group, why.
    """

    def __init__(self, model: nn.Module, walker: _Walker, example: Any) -> None:
        self.model = model
        self.atoms = walker.atoms
        self.example = example
        self._reshapes = walker.reshapes
        self._conv_groups = walker.conv_groups
        self.groups: dict[str, TracedGroup] = {}
        self.blocked: dict[str, str] = {}
        # Called as f(graph, group) after every resize (gates keep their feature layout here).
        self.on_resize: list = []
        self._build(walker)

    def _build(self, walker: _Walker) -> None:
        atoms = self.atoms
        by_leaf: dict[int, list[TracedTensor]] = {}
        for node, name in walker.params.items():
            if not node.users:  # a tied parameter's second name: its uses are under the first
                continue
            dims = walker.dims.get(node) or []
            for dim, atom in enumerate(dims):
                if atoms.size(atom) <= 1:
                    continue
                role = walker.roles.get((name, dim), "per_unit")
                leaves = [leaf for leaf in dict.fromkeys(atoms.leaves(atom))
                          if atoms.leaf_size[leaf] > 1]
                free = [leaf for leaf in leaves if leaf not in atoms.fixed]
                kernel = all("kernel size" in atoms.fixed.get(leaf, "") for leaf in leaves)
                if not free and leaves and not kernel:
                    self.blocked.setdefault(f"{name}[{dim}]", atoms.fixed[leaves[0]])
                for leaf in free:
                    by_leaf.setdefault(leaf, []).append(TracedTensor(name, dim, atom, role))
        summed = {leaf for atom in walker.summed for leaf in atoms.leaves(atom)}
        for leaf, tensors in by_leaf.items():
            producers = [t for t in tensors if t.role == "produces"]
            writers = {t.name.rpartition(".")[0] for t in producers}
            try:
                inner = any(self._inner(t, leaf) > 1 for t in producers)
            except NotResizableError as error:
                for tensor in tensors:
                    self.blocked.setdefault(f"{tensor.name}[{tensor.dim}]", str(error))
                continue
            first = (producers or tensors)[0].name.rpartition(".")[0] or (
                producers or tensors)[0].name
            if inner:
                kind: GroupKind = "heads"
                name = (_common_prefix(sorted(writers)) or first) + ":heads"
            elif leaf in summed and len(writers | self._stream_writers(tensors)) > 1:
                # Named by the first tensor that writes it (an embedding, a stem conv).
                owners = [t.name.rpartition(".")[0] for t in tensors]
                kind, name = "stream", next((o for o in owners if o), first) + ":stream"
            else:
                kind, name = "units", first
            while name in self.groups:
                name += "'"
            self.groups[name] = TracedGroup(name, kind, leaf, tensors, self)

    def _stream_writers(self, tensors: list[TracedTensor]) -> set[str]:
        """Embeddings and a model's own parameters (a cls token, a position embedding) that
        write into a dimension: with a layer's outputs they make it a residual stream (an
        activation's own ``x + c * x**3`` does not)."""
        writers = set()
        for tensor in tensors:
            module_name, _, attr = tensor.name.rpartition(".")
            module = self.model.get_submodule(module_name)
            own = attr not in ("weight", "bias", "running_mean", "running_var")
            if isinstance(module, nn.Embedding) or own:
                writers.add(tensor.name)
        return writers

    def _inner(self, tensor: TracedTensor, leaf: int) -> int:
        """How many consecutive entries one unit owns along the tensor's dimension (a head's
        ``head_dim`` rows; 1 for a plain unit, and for a GroupNorm's channel in every group)."""
        units, _, _ = self.atoms.positions(tensor.atom, leaf, self.atoms.leaf_size[leaf])
        where = torch.nonzero(units == 0).reshape(-1)
        steps = torch.diff(where)
        return int(steps.ne(1).nonzero()[0]) + 1 if bool(steps.ne(1).any()) else where.numel()

    def widths(self) -> dict[str, int]:
        """Current number of units of every group."""
        return {name: group.width for name, group in self.groups.items()}

    def group(self, name: str) -> TracedGroup:
        """The group called ``name``, or an error listing the groups and why others are not."""
        if name in self.groups:
            return self.groups[name]
        raise NotResizableError(f"no unit group named '{name}'; groups: {', '.join(self.groups)}")

    # -- resizing -----------------------------------------------------------------------
    def prune(self, name: str, keep: Sequence[int] | torch.Tensor, *,
              optimizer: OptimizerArg = None) -> TracedGroup:
        """Keep only the units ``keep`` of group ``name`` (in their original order); remove the
        rest from every coupled tensor, its gradient and its optimizer state."""
        group = self.group(name)
        kept = torch.as_tensor(keep, dtype=torch.long).reshape(-1).sort().values
        width = group.width
        if kept.numel() < 1 or kept.unique().numel() != kept.numel() or (
                kept.numel() and (kept.min() < 0 or kept.max() >= width)):
            raise ValueError(f"keep for group '{name}' must list distinct unit indices in "
                             f"0..{width - 1}, at least one; got {kept.tolist()[:10]}")
        self._resize(group, kept, 0, optimizer, None)
        return group

    def grow(self, name: str, n: int, *, optimizer: OptimizerArg = None,
             generator: torch.Generator | None = None) -> TracedGroup:
        """Append ``n`` units to group ``name``: new rows of the layers that produce them drawn
        as PyTorch initialises them, zero columns where they are read (so outputs do not change
        where nothing else normalises over them), neutral per-unit state (norm weights 1)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"grow needs n >= 1 new units for group '{name}', got {n!r}")
        group = self.group(name)
        self._resize(group, torch.arange(group.width), n, optimizer, generator)
        return group

    def _resize(self, group: TracedGroup, kept: torch.Tensor, added: int,
                optimizer: OptimizerArg, generator: torch.Generator | None) -> None:
        """Keep units ``kept`` (sorted) and append ``added`` new ones, in every coupled tensor."""
        atoms, leaf, old_width = self.atoms, group.atom, group.width
        new_width = kept.numel() + added
        optimizers = as_optimizer_list(optimizer)
        present = {t.name: _tensor_at(self.model, t.name) for t in group.tensors}
        check_optimizer_state(optimizers, [t for t in present.values()
                                           if isinstance(t, nn.Parameter)])
        for tensor in group.tensors:
            current = _tensor_at(self.model, tensor.name)
            if current.shape[tensor.dim] != atoms.size(tensor.atom):
                raise UnsupportedModelError(
                    f"'{tensor.name}' has {current.shape[tensor.dim]} entries along dim "
                    f"{tensor.dim}, the traced graph expected {atoms.size(tensor.atom)}: the "
                    "model was resized outside this UnitGraph; trace it again")
        attribute_updates = self._attribute_updates(leaf, new_width)
        for tensor in group.tensors:
            source = _source_positions(atoms, tensor.atom, leaf, old_width, kept, added)
            self._replace(tensor, source, optimizers, generator)
        atoms.leaf_size[leaf] = new_width
        self._sync_attributes(group, attribute_updates)
        for callback in self.on_resize:
            callback(self, group)

    def _replace(self, tensor: TracedTensor, source: torch.Tensor,
                 optimizers: list[torch.optim.Optimizer],
                 generator: torch.Generator | None) -> None:
        old = _tensor_at(self.model, tensor.name)
        fresh = self._new_values(tensor, old, int((source < 0).sum()), generator)
        data = _gather(old.detach(), tensor.dim, source, fresh)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(data, requires_grad=old.requires_grad)
            if old.grad is not None:
                new.grad = _gather(old.grad, tensor.dim, source, None)
            move_optimizer_state(optimizers, old, new, tensor.dim, source)
        else:
            new = data
        # Every module that holds this tensor (tied embeddings and output layers) gets the new one.
        for module in self.model.modules():
            for store in (module._parameters, module._buffers):
                for key, value in store.items():
                    if value is old:
                        store[key] = new

    def _new_values(self, tensor: TracedTensor, old: torch.Tensor, count: int,
                    generator: torch.Generator | None) -> torch.Tensor | None:
        if count == 0:
            return None
        shape = list(old.shape)
        shape[tensor.dim] = count
        attr = tensor.name.rpartition(".")[2]
        if tensor.role == "produces" and old.dim() >= 2:
            fan_in = old.numel() // old.shape[tensor.dim]
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            where = generator.device if generator is not None else "cpu"
            values = (torch.rand(shape, generator=generator, dtype=old.dtype, device=where)
                      * 2 - 1) * bound
            return values.to(old.device)
        module = self.model.get_submodule(tensor.name.rpartition(".")[0])
        one = attr in ("running_var",) or (attr == "weight" and isinstance(module, _NORMS))
        fill = -1 if attr == "unit_id" else 1.0 if one else 0.0  # a gate's: not full-size
        return torch.full(shape, fill, dtype=old.dtype, device=old.device)

    def _attribute_updates(self, leaf: int, new_width: int) -> dict[tuple[str, str], int]:
        """Integer attributes of the modules that reshape these units, old value -> new."""
        atoms, updates = self.atoms, {}
        override = {leaf: new_width}
        for owner, dims_in, dims_out in self._reshapes:
            try:
                module = self.model.get_submodule(owner)
            except AttributeError:
                continue
            changed = {}
            for atom in [*dims_in, *dims_out]:
                if leaf in atoms.leaves(atom):
                    old, new = atoms.size(atom), atoms.size(atom, override)
                    if old != new:
                        changed[old] = new
            if not changed:
                continue
            values = _int_attributes(module)
            for old, new in changed.items():
                for key, value in values.items():
                    if value == old and key in _WIDTH_ATTRIBUTES:
                        updates[(owner, key)] = new
        return updates

    def _sync_attributes(self, group: TracedGroup, updates: dict[tuple[str, str], int]) -> None:
        for (owner, key), value in updates.items():
            setattr(self.model.get_submodule(owner), key, value)
        for module_name in group.modules:
            module = self.model.get_submodule(module_name)
            _sync_module(module, self.atoms.size(self._conv_groups[module_name])
                         if module_name in self._conv_groups else None)


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          getattr(nn, "RMSNorm", nn.LayerNorm))


def _sync_module(module: nn.Module, groups: int | None) -> None:
    """Keep a module's size attributes equal to its tensors' shapes."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        if groups is not None:
            module.groups = groups
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = weight if weight is not None else module.running_mean
        if reference is not None:
            module.num_features = reference.shape[0]
    elif isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        if weight is not None:
            module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.GroupNorm):
        if weight is not None:
            module.num_channels = weight.shape[0]
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]
    elif type(module).__name__ == "Conv1D" and weight is not None:  # Hugging Face's
        module.nf = weight.shape[1]
        if hasattr(module, "nx"):
            module.nx = weight.shape[0]


def _source_positions(atoms: _Atoms, atom: int, leaf: int, width: int, kept: torch.Tensor,
                      added: int) -> torch.Tensor:
    """For each entry of a dimension after the resize, the entry it comes from (-1: new)."""
    units, keys, _ = atoms.positions(atom, leaf, width)
    remap = torch.full((width,), -1, dtype=torch.long)
    remap[kept] = torch.arange(kept.numel())
    old_new_unit = torch.where(units >= 0, remap[units.clamp(min=0)], -1)
    survives = (units < 0) | (old_new_unit >= 0)
    old_positions = torch.nonzero(survives).reshape(-1)
    if not added:
        return old_positions
    # The layout with more units: match each entry to the old one with the same coordinates.
    new_width = kept.numel() + added
    new_units, new_keys, _ = atoms.positions(atom, leaf, new_width)
    old_codes = keys[old_positions] * (new_width + 1) + (old_new_unit[old_positions] + 1)
    new_codes = new_keys * (new_width + 1) + (new_units + 1)
    order = torch.argsort(old_codes)
    found = torch.searchsorted(old_codes[order], new_codes).clamp(max=order.numel() - 1)
    matches = old_codes[order][found] == new_codes
    return torch.where(matches, old_positions[order][found], -1)


def _gather(tensor: torch.Tensor, dim: int, source: torch.Tensor,
            fresh: torch.Tensor | None) -> torch.Tensor:
    """Entries ``source`` of ``tensor`` along ``dim``; where ``source`` is -1, the next slice
    of ``fresh`` (zeros when None)."""
    source = source.to(tensor.device)
    new = source < 0
    taken = tensor.index_select(dim, source.clamp(min=0))
    if not bool(new.any()):
        return taken.clone()
    if fresh is None:
        shape = [1] * tensor.dim()
        shape[dim] = -1
        return taken * (~new).reshape(shape).to(taken.dtype)
    index = torch.nonzero(new).reshape(-1)
    return taken.index_copy(dim, index, fresh.to(dtype=tensor.dtype, device=tensor.device))


def _common_prefix(modules: Sequence[str]) -> str:
    """The module that holds all of ``modules`` (the parent of a single one)."""
    if len(modules) == 1:
        return modules[0].rpartition(".")[0] or modules[0]
    common = []
    for pieces in zip(*(name.split(".") for name in modules), strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common)


def _probe(model: nn.Module, example: Any) -> list[tuple[int, ...]]:
    args, kwargs = _as_args(example)
    with torch.no_grad():
        return [tuple(t.shape) for t in output_tensors(model(*args, **kwargs))]


def trace_unit_groups(model: nn.Module, example_inputs: Any, *, check: bool = True) -> UnitGraph:
    """Find every resizable unit group of ``model`` by tracing one forward pass.

    Args:
        model: any ``nn.Module``; torchvision, timm and Hugging Face models included.
        example_inputs: what the model is called with: a tensor, a tuple of positional
            arguments, or a dict of keyword arguments (``{"input_ids": ids}``). Integer token
            ids for language models.
        check: resize each group by one unit on a copy and run the example through it; a group
            whose dry run fails moves to ``blocked`` with the error (default True).

    Example::

        graph = trace_unit_groups(model, torch.randn(1, 3, 32, 32))
        graph.widths()                     # {"conv1:stream": 64, "layer1.0.conv1": 64, ...}
        graph.prune("layer1.0.conv1", keep=range(48), optimizer=opt)
    """
    args, kwargs = _as_args(example_inputs)
    training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(_Outputs(model), args, kwargs, strict=False)
    except Exception as error:  # noqa: BLE001 - any tracing failure gets the same advice
        raise UnsupportedModelError(
            f"neuroplast could not trace {type(model).__name__} with the example input "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); check that the "
            "example runs through model(...) as given, or declare the model's chains with "
            "neuroplast.register_block") from error
    finally:
        model.train(training)
    walker = _Walker(exported, "model.", model)
    walker.run()
    walker.finish()
    graph = UnitGraph(model, walker, example_inputs)
    if check:
        _check_groups(graph)
    return graph


def _check_groups(graph: UnitGraph) -> None:
    """Dry-run every group one unit smaller on a copy; move the failing ones to ``blocked``."""
    model = graph.model
    training = model.training
    model.eval()
    try:
        expected = _probe(model, graph.example)
        candidates = [name for name, group in graph.groups.items() if group.width > 1]

        def works(names: Sequence[str]) -> str | None:
            trial = copy_graph(graph)
            try:
                for name in names:
                    trial.prune(name, range(trial.groups[name].width - 1))
                shapes = _probe(trial.model, graph.example)
            except Exception as error:  # noqa: BLE001 - reported per group below
                return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if shapes != expected:
                return f"the output shapes change from {expected} to {shapes}"
            return None

        if candidates and works(candidates) is not None:
            for name in candidates:
                error = works([name])
                if error:
                    group = graph.groups.pop(name)
                    graph.blocked[name] = (f"a dry-run resize failed ({error}); its tensors: "
                                           f"{', '.join(t.name for t in group.tensors[:6])}")
    finally:
        model.train(training)


def copy_graph(graph: UnitGraph) -> UnitGraph:
    """A graph over a deep copy of the model, resizable without touching the original (its
    ``on_resize`` callbacks are not copied)."""
    trial = copy.copy(graph)
    trial.model = copy.deepcopy(graph.model)
    trial.atoms = copy.deepcopy(graph.atoms)
    trial.groups = {name: TracedGroup(g.name, g.kind, g.atom, list(g.tensors), trial)
                    for name, g in graph.groups.items()}
    trial.on_resize = []
    return trial
