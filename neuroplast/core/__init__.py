"""The mechanism: resizable unit groups, grow/prune, optimizer surgery, checkpoints, counting.

Nothing here decides *when* or *where* a network changes size; policies do (``methods``).
"""

from .check import check_unit_groups
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .count import LayerCount, ModelCount, count_model, count_parameters
from .groups import (
    CoupledTensor,
    NotResizableError,
    UnitGroup,
    UnsupportedModelError,
    find_unit_groups,
    get_unit_group,
    layer_widths,
)
from .layers import (
    LayerCoupling,
    UnsupportedLayerError,
    register_block,
    register_layer,
)
from .optim import UnsupportedOptimizerStateError, carry_optimizer_state
from .resize import grow_units, prune_units, set_layer_widths, split_units
from .trace import TracedGroup, UnitGraph, trace_unit_groups

__all__ = [
    "check_unit_groups",
    "Checkpoint",
    "CheckpointError",
    "CoupledTensor",
    "LayerCount",
    "LayerCoupling",
    "ModelCount",
    "NotResizableError",
    "UnitGroup",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "UnsupportedOptimizerStateError",
    "carry_optimizer_state",
    "count_model",
    "count_parameters",
    "find_unit_groups",
    "get_unit_group",
    "grow_units",
    "layer_widths",
    "load_checkpoint",
    "prune_units",
    "register_block",
    "register_layer",
    "save_checkpoint",
    "set_layer_widths",
    "split_units",
    "trace_unit_groups",
    "TracedGroup",
    "UnitGraph",
]
