"""Model zoo: built from ``(name, input_shape, num_classes, options)``, so checkpoints rebuild them.

Every model here is made of chains neuroplast can see (``nn.Sequential`` and registered
blocks), and every layer has a readable name (``fc1``, ``conv2``, ``layer1.0.conv1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .lenet import lenet5, lenet300
from .mlp import mlp
from .resnet import BasicBlock, cifar_resnet

ModelBuilder = Callable[..., nn.Module]

ACTIVATION_MODELS = ("mlp", "lenet300")  # the models whose hidden activation can be chosen

MODELS: dict[str, ModelBuilder] = {}


class UnknownModelError(ValueError):
    """The model name is not in the registry."""


def register_model(name: str, builder: ModelBuilder) -> None:
    """Add a builder ``builder(input_shape, num_classes, **options) -> nn.Module``."""
    MODELS[name] = builder


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build a registered model and remember how it was built (``model.neuroplast_spec``).

    Example::

        model = build_model("mlp", (1, 28, 28), 10, widths=[300, 100])
    """
    if name not in MODELS:
        raise UnknownModelError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    model = MODELS[name](tuple(input_shape), int(num_classes), **options)
    model.neuroplast_spec = {
        "name": name,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "options": options,
    }
    return model


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``neuroplast_spec`` recorded by :func:`build_model`."""
    return build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"],
                       **spec.get("options", {}))


for _name, _builder in {
    "mlp": mlp,
    "lenet300": lenet300,
    "lenet5": lenet5,
    "resnet20": lambda shape, classes, **o: cifar_resnet(shape, classes, depth=20, **o),
    "resnet56": lambda shape, classes, **o: cifar_resnet(shape, classes, depth=56, **o),
}.items():
    register_model(_name, _builder)

__all__ = [
    "ACTIVATION_MODELS",
    "MODELS",
    "BasicBlock",
    "UnknownModelError",
    "build_model",
    "cifar_resnet",
    "lenet5",
    "lenet300",
    "mlp",
    "model_from_spec",
    "register_model",
]
