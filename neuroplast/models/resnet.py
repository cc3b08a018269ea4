"""CIFAR-style ResNets (ResNet-20/56) whose blocks' inner convolutions are resizable."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.layers import register_block
from .mlp import check_widths


class BasicBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus a parameter-free shortcut.

    The shortcut (He et al.'s option A) subsamples and zero-pads channels when the shape
    changes, so it holds no weights. ``conv1``'s channels are internal to the block and can be
    resized; the block's output channels belong to the residual stream and cannot.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, inner: int | None = None):
        super().__init__()
        inner = inner or planes
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


register_block(BasicBlock, [["conv1", "bn1", "act1", "conv2"]])


def cifar_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    depth: int = 56,
    widths: Sequence[int] = (16, 32, 64),
) -> nn.Sequential:
    """ResNet-(6n+2) for 32x32 images: a 3x3 stem, three stages of n blocks, pooling, a classifier.

    ``widths`` are the three stages' channel counts (the residual stream), 16-32-64 by default.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    widths = check_widths(widths)
    if len(widths) != 3:
        raise ValueError(f"cifar_resnet needs 3 stage widths, got {widths}")
    if len(input_shape) != 3:
        raise ValueError(f"cifar_resnet needs image inputs (C, H, W), got {input_shape}")
    blocks_per_stage = (depth - 2) // 6
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
        bn1=nn.BatchNorm2d(widths[0]),
        act1=nn.ReLU(),
    )
    in_planes = widths[0]
    for stage, planes in enumerate(widths, start=1):
        blocks = []
        for index in range(blocks_per_stage):
            stride = 2 if stage > 1 and index == 0 else 1
            blocks.append(BasicBlock(in_planes, planes, stride))
            in_planes = planes
        layers[f"layer{stage}"] = nn.Sequential(*blocks)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_planes, num_classes)
    model = nn.Sequential(layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model
