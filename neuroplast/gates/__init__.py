"""Per-unit gates: tensors attached to a unit group that scale or switch units."""

from .hard_concrete import HardConcreteGate
from .mask import UnitMask
from .npn import NPNGate, arm_loss, compact_npn
from .traced import attach_traced_gates, compact_traced

__all__ = [
    "HardConcreteGate", "NPNGate", "UnitMask", "arm_loss", "attach_traced_gates", "compact_npn",
    "compact_traced",
]
