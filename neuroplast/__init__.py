"""neuroplast: neural networks that decide their own size while they train.

Layers whose units are added and removed physically, with optimizer state carried across every
resize, width-aware checkpoints and export of the final compact model; NPN and MetaNet (and
baselines) as small policies over that mechanism.
"""

from .core import (
    Checkpoint,
    CheckpointError,
    LayerCoupling,
    NotResizableError,
    TracedGroup,
    UnitGraph,
    UnitGroup,
    UnsupportedLayerError,
    UnsupportedModelError,
    check_unit_groups,
    count_model,
    count_parameters,
    find_unit_groups,
    get_unit_group,
    grow_units,
    layer_widths,
    load_checkpoint,
    prune_units,
    register_block,
    register_layer,
    save_checkpoint,
    set_layer_widths,
    split_units,
    trace_unit_groups,
)
from .export import (
    ExportError,
    compact_model,
    export_onnx,
    export_pt2,
    export_safetensors,
    export_torchscript,
)
from .gates import UnitMask
from .models import build_model, register_model

__version__ = "0.1.0"


def __getattr__(name: str):
    # The training loop (and with it tqdm, the data loaders) loads only when it is used.
    if name == "SelfSizing":
        from .sizing import SelfSizing

        return SelfSizing
    raise AttributeError(f"module 'neuroplast' has no attribute '{name}'")

__all__ = [
    "SelfSizing",
    "check_unit_groups",
    "Checkpoint",
    "CheckpointError",
    "ExportError",
    "LayerCoupling",
    "NotResizableError",
    "UnitGroup",
    "UnitMask",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "build_model",
    "compact_model",
    "count_model",
    "count_parameters",
    "export_onnx",
    "export_pt2",
    "export_safetensors",
    "export_torchscript",
    "find_unit_groups",
    "get_unit_group",
    "grow_units",
    "layer_widths",
    "load_checkpoint",
    "prune_units",
    "register_block",
    "register_layer",
    "register_model",
    "save_checkpoint",
    "set_layer_widths",
    "split_units",
    "trace_unit_groups",
    "TracedGroup",
    "UnitGraph",
]
