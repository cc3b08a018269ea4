"""Declared unit groups checked against a real forward pass.

A chain declared with :func:`~neuroplast.core.layers.register_block` is trusted by the walk in
``groups.py``; if the block's ``forward`` uses its layers otherwise (a layer's output also joins
a residual sum, or is read by a layer the chain leaves out), a resize would only fail at a later
forward pass, far from the cause. :func:`check_unit_groups` finds that at once: every resizable
layer one unit smaller, on a copy, and the example run through it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .groups import UnsupportedModelError, find_unit_groups
from .layers import block_coupling
from .resize import prune_units


def _run(model: nn.Module, example: Any) -> list[tuple[int, ...]]:
    with torch.no_grad():
        if isinstance(example, dict):
            output = model(**example)
        elif isinstance(example, tuple):
            output = model(*example)
        else:
            output = model(example)
    outputs = output if isinstance(output, (tuple, list)) else [output]
    return [tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor)]


def _dry_run(model: nn.Module, layers: Sequence[str], example: Any,
             expected: list[tuple[int, ...]]) -> str | None:
    trial = copy.deepcopy(model).eval()
    try:
        for layer in layers:
            width = find_unit_groups(trial)[layer].width
            prune_units(trial, layer, list(range(width - 1)))
        shapes = _run(trial, example)
    except Exception as error:  # noqa: BLE001 - any failure is the finding, reported below
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if shapes != expected:
        return f"the output shapes change from {expected} to {shapes}"
    return None


def _declaring_block(model: nn.Module, layer: str) -> str:
    """The innermost registered block that holds ``layer`` (as ``'name' (Type)``)."""
    parts = layer.split(".")
    for end in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:end])
        module = model.get_submodule(name) if name else model
        if block_coupling(module) is not None:
            return f"block '{name or type(module).__name__}' ({type(module).__name__})"
    return f"the chain of {type(model).__name__}"


def check_unit_groups(model: nn.Module, example_inputs: Any) -> None:
    """Raise :class:`UnsupportedModelError` if resizing some declared layer breaks ``model``.

    Every resizable layer is made one unit smaller on a copy of ``model`` (in eval mode, so no
    random number is drawn and batch statistics are untouched) and ``example_inputs`` (a tensor,
    a tuple of arguments or a dict of keyword arguments) is run through it; if that fails, each
    layer is tried alone, and the error names the first that breaks, the block that declared it
    and what went wrong. A model with no registered block is checked the same way.

    Example::

        register_block(MyBlock, [["fc1", "act", "fc2"]])
        check_unit_groups(model, torch.randn(2, 16))   # raises if fc1 also feeds a residual sum
    """
    training = model.training
    model.eval()
    try:
        expected = _run(model, example_inputs)
        layers = [name for name, group in find_unit_groups(model).items() if group.width > 1]
        if not layers or _dry_run(model, layers, example_inputs, expected) is None:
            return
        for layer in layers:
            error = _dry_run(model, [layer], example_inputs, expected)
            if error:
                group = find_unit_groups(model)[layer]
                raise UnsupportedModelError(
                    f"{_declaring_block(model, layer)} declares that the units of '{layer}' flow "
                    f"to '{group.consumer_name}' and nowhere else, but with one unit fewer the "
                    f"forward pass fails ({error}): its output is used elsewhere too (a residual "
                    "sum, another layer). Fix the chain given to register_block, or find the "
                    "groups from the graph: neuroplast.trace_unit_groups(model, example)")
    finally:
        model.train(training)
