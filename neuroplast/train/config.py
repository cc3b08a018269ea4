"""The training loop's settings (:class:`TrainConfig`) and the optimizer, schedule and device
they name."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.augment import check_augmentation
from ..objective import LOSSES

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("32", "bf16-mixed")
SCHEDULERS = ("none", "cosine", "step")

@dataclass
class TrainConfig:
    """Hyper-parameters of the loop itself (the method's live on the method)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"
    lr_milestones: list[int] = field(default_factory=list)  # "step": decay at these epochs
    lr_gamma: float = 0.1  # "step": the factor applied at each decay
    seed: int = 0
    eval_batch_size: int = 1000
    progress: bool = True
    tensorboard: bool = False
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    device: str = "cpu"  # where the model trains: cpu, cuda, cuda:N
    augment: str = "none"  # training images: none, crop (random shifts) or crop-flip
    augment_padding: int = 4  # the largest shift, in pixels
    # Write the checkpoint every N epochs; 0: whenever the training time since the last one is
    # at least 19 times what writing it cost (checkpoints then take at most 5 % of the time).
    # The last epoch and an interrupt between batches are always saved; a resume is exact
    # from any checkpoint (an interrupt elsewhere resumes from the last one written).
    checkpoint_every: int = 0
    # "bf16-mixed": forward passes under torch.autocast in bfloat16 (CPU and CUDA); weights,
    # gradients and optimizer state stay float32.
    precision: str = "32"
    grad_clip: float = 0.0  # clip the gradients' total norm to this before each step; 0: off
    accumulate: int = 1  # split each batch into this many micro-batches, one step per batch
    loss: str = "cross-entropy"  # or "mse" (a regression: float targets, no accuracy)

    def __post_init__(self) -> None:
        if isinstance(self.lr_milestones, int) and not isinstance(self.lr_milestones, bool):
            self.lr_milestones = [self.lr_milestones]  # `lr_milestones = 400` in a recipe

    def _check_types(self) -> None:
        """A recipe can hold any TOML value: name the option whose value has the wrong type."""
        def integer(value: Any) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def number(value: Any) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        checks = {"an integer": (integer, ("epochs", "batch_size", "seed", "eval_batch_size",
                                           "augment_padding", "accumulate")),
                  "a number": (number, ("lr", "momentum", "weight_decay", "lr_gamma",
                                        "grad_clip")),
                  "a string": (lambda v: isinstance(v, str),
                               ("optimizer", "scheduler", "device", "augment", "precision",
                                "loss"))}
        for kind, (check, names) in checks.items():
            for name in names:
                if not check(getattr(self, name)):
                    raise ValueError(f"{name} must be {kind}, got {getattr(self, name)!r}")
        if self.threads is not None and not integer(self.threads):
            raise ValueError(f"threads must be an integer, got {self.threads!r}")
        milestones = self.lr_milestones
        if not isinstance(milestones, (list, tuple)) or not all(map(integer, milestones)):
            raise ValueError(f"lr milestones must be a list of epoch numbers, e.g. [400] or "
                             f"--lr-milestones 60,120; got {milestones!r}")

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent option."""
        self._check_types()
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0 or math.isinf(self.lr):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight decay must be >= 0 and momentum in [0, 1)")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError("checkpoint every must be an epoch count >= 1, or 0 for a "
                             f"checkpoint whenever it costs under 5 % of the time, got "
                             f"{self.checkpoint_every!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.precision}'; choose one of {PRECISIONS}")
        if not self.grad_clip >= 0 or math.isinf(self.grad_clip):
            raise ValueError(f"grad clip must be a gradient norm > 0, or 0 for none, got "
                             f"{self.grad_clip}")
        if not 1 <= self.accumulate <= self.batch_size:
            raise ValueError(f"accumulate must be between 1 and the batch size "
                             f"({self.batch_size}): micro-batches per step, got {self.accumulate}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss '{self.loss}'; choose one of {tuple(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; choose one of {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler '{self.scheduler}'; choose one of {SCHEDULERS}")
        if self.lr_milestones and self.scheduler != "step":
            raise ValueError(f"lr milestones {self.lr_milestones} need the step scheduler: add "
                             "--scheduler step (scheduler = \"step\" in a recipe); to train "
                             "a recipe that has milestones at a constant rate, pass --lr-gamma 1")
        if any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(
                set(self.lr_milestones)):
            raise ValueError(f"lr milestones must be increasing epoch numbers >= 1, got "
                             f"{self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr gamma must be in (0, 1], got {self.lr_gamma}")
        check_device(self.device)
        check_augmentation(self.augment, self.augment_padding)


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, or a ValueError saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {name} is not a device: use cpu, cuda or cuda:N "
                         f"({error})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no usable CUDA device "
                             "(torch.cuda.is_available() is False); use --device cpu, or "
                             "install a CUDA build of PyTorch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        # (MPS has no float64, which evaluation and MetaNet's statistics accumulate in.)
        raise ValueError(f"--device {name}: neuroplast trains on cpu or cuda")
    return device


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer named in ``config`` over ``params`` (parameters or param groups)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """An epoch-stepped learning-rate schedule, or None."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step" and config.lr_milestones:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, config.lr_milestones,
                                                    config.lr_gamma)
    if config.scheduler == "step":  # without milestones: decay every third of the epochs
        return torch.optim.lr_scheduler.StepLR(optimizer, max(1, config.epochs // 3),
                                               config.lr_gamma)
    return None
