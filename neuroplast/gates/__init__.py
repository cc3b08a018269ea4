"""Per-unit gates: tensors attached to a unit group that scale or switch units."""

from .mask import UnitMask

__all__ = ["UnitMask"]
