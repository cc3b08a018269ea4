"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def check_widths(
    widths: Sequence[int], what: str = "widths", count: int | None = None
) -> list[int]:
    """Validate a list of layer widths: every width an integer >= 1 (and ``count`` of them)."""
    widths = list(widths)
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{what} must be integers >= 1, got {widths}")
    if count is not None and len(widths) != count:
        raise ValueError(f"{what} must be {count} numbers, got {len(widths)}: {widths}")
    return widths


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    widths: Sequence[int] = (300, 100),
    activation: str = "relu",
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``Flatten -> [Linear -> (BatchNorm) -> act -> (Dropout)] * len(widths) -> Linear``.

    Hidden layers are named ``fc1``, ``fc2``, ...; the classifier is ``out``.
    """
    widths = check_widths(widths)
    if not widths:
        raise ValueError("an mlp needs at least one hidden layer (widths such as 300,100)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose one of {list(ACTIVATIONS)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    features = math.prod(input_shape)
    for index, width in enumerate(widths, start=1):
        layers[f"fc{index}"] = nn.Linear(features, width)
        if batchnorm:
            layers[f"bn{index}"] = nn.BatchNorm1d(width)
        layers[f"act{index}"] = ACTIVATIONS[activation]()
        if dropout > 0:
            layers[f"drop{index}"] = nn.Dropout(dropout)
        features = width
    layers["out"] = nn.Linear(features, num_classes)
    return nn.Sequential(layers)
