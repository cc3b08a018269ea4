"""Sizing policies, one small module each, selectable by name (``--method``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..policy import Method
from .fixed import FixedWidth
from .l0hc import L0HardConcrete
from .metanet import MetaNet
from .net2net import Net2Net
from .npn import NPN
from .structured import APoZPruning, MagnitudePruning

METHODS: dict[str, type[Method]] = {}


class UnknownMethodError(ValueError):
    """The method name is not registered."""


def register_method(method: type[Method]) -> type[Method]:
    """Register a policy class under its ``name`` (usable as a decorator)."""
    METHODS[method.name] = method
    return method


def method_fields(name: str) -> list[dataclasses.Field]:
    """The hyper-parameters of method ``name`` (its dataclass fields)."""
    method = METHODS[name]
    return list(dataclasses.fields(method)) if dataclasses.is_dataclass(method) else []


def build_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """Instantiate method ``name`` with ``options`` (field name -> value)."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    options = dict(options or {})
    known = {field.name for field in method_fields(name)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"method '{name}' has no option {unknown}; its options are: {sorted(known) or 'none'}"
        )
    return METHODS[name](**options)


register_method(FixedWidth)
register_method(NPN)
register_method(MetaNet)
register_method(MagnitudePruning)
register_method(APoZPruning)
register_method(Net2Net)
register_method(L0HardConcrete)

__all__ = ["METHODS", "FixedWidth", "UnknownMethodError", "build_method", "method_fields",
           "register_method"]
