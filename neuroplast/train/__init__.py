"""The application around the mechanism: training loop and policy callbacks.

Runs (data + model + method + run directory) live in :mod:`neuroplast.train.run`.
"""

from .callbacks import Callback, CollapseGuard, Method, TrainingCollapsed
from .loop import TrainConfig, Trainer, TrainingDiverged

__all__ = ["Callback", "CollapseGuard", "Method", "TrainConfig", "Trainer", "TrainingCollapsed",
           "TrainingDiverged"]
