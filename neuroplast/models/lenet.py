"""LeNet-300-100 and LeNet-5-Caffe, the classic MNIST pruning benchmarks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .mlp import check_widths, mlp


def lenet300(
    input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (300, 100), **options
) -> nn.Sequential:
    """LeNet-300-100: a 784-300-100-10 MLP (other widths allowed as a starting point)."""
    check_widths(widths, "lenet300 widths (fc1, fc2 units; e.g. 300,100)", count=2)
    return mlp(input_shape, num_classes, widths=widths, **options)


def lenet5(
    input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (20, 50, 500)
) -> nn.Sequential:
    """LeNet-5-Caffe, 20-50-800-500: two 5x5 convs with max-pooling, then a 500-unit layer.

    ``widths`` are (conv1 channels, conv2 channels, fc1 units); the 800 is conv2's 50 channels
    times the 4x4 map they leave on a 28x28 input.
    """
    conv1, conv2, hidden = check_widths(
        widths, "lenet5 widths (conv1, conv2 channels, fc1 units; e.g. 20,50,500)", count=3)
    if len(input_shape) != 3:
        raise ValueError(f"lenet5 needs image inputs (C, H, W), got input shape {input_shape}")
    channels, height, width = input_shape
    side = [height, width]
    for _ in range(2):
        side = [(s - 4) // 2 for s in side]
    if min(side) < 1:
        raise ValueError(
            f"lenet5 needs images of at least 16x16 pixels (two 5x5 convs and 2x2 pools), "
            f"got {height}x{width}; use the mlp model for small images"
        )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, conv1, 5),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(conv1, conv2, 5),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(conv2 * side[0] * side[1], hidden),
            act3=nn.ReLU(),
            out=nn.Linear(hidden, num_classes),
        )
    )
