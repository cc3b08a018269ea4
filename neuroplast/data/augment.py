"""Training-time image augmentation: random shifts (a crop of a padded image) and mirror flips.

The standard CIFAR recipe (pad 4, random 32x32 crop, random horizontal flip), which NPN's
ResNet-56 reference trains with, done on whole batches of tensors. Padding is filled with
the value a black raw pixel has after standardisation, as when the raw image is padded before
it is normalised. Every draw comes from the generator passed in, so the trainer can make each
batch's augmentation a function of (seed, epoch, batch): repeatable, and identical after a
resume or across data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AUGMENTATIONS = ("none", "crop", "crop-flip")


def check_augmentation(name: str, padding: int, input_shape: Sequence[int] | None = None) -> None:
    """Raise ValueError naming the problem when ``name``/``padding`` cannot be used.

    ``input_shape`` (without the batch dimension), when given, must be an image's
    ``(C, H, W)``: shifting or mirroring a feature vector has no meaning.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 1:
        raise ValueError(f"augment padding must be an integer >= 1 (pixels), got {padding!r}")
    if name != "none" and input_shape is not None and len(input_shape) != 3:
        raise ValueError(
            f"--augment {name} shifts and mirrors images, but this data set's inputs have shape "
            f"{tuple(input_shape)}, not (channels, height, width): leave --augment at none")


def augment_images(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
    fill: Sequence[float] | None = None,
    rows: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Shift each image of ``images`` ``(N, C, H, W)`` by up to ``padding`` pixels in each
    direction and, with ``flip``, mirror it left-right with probability 1/2.

    Pixels shifted in take ``fill`` (one value per channel; 0 when None). The draws are made
    for a batch of ``batch_size`` images (default N) and ``rows`` picks which of them
    ``images`` holds, so a process holding part of a global batch augments its part exactly
    as one process holding all of it would.
    """
    count, channels, height, width = images.shape
    total = count if batch_size is None else batch_size
    shifts = torch.randint(0, 2 * padding + 1, (total, 2), generator=generator)
    mirror = torch.rand(total, generator=generator) < 0.5
    if rows is not None:
        shifts, mirror = shifts[rows], mirror[rows]
    shifts, mirror = shifts.to(images.device), mirror.to(images.device)
    values = torch.zeros(channels, dtype=images.dtype, device=images.device) if fill is None \
        else torch.tensor(list(fill), dtype=images.dtype, device=images.device)
    padded = values.view(1, channels, 1, 1).expand(
        count, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = images
    top = shifts[:, 0, None] + torch.arange(height, device=images.device)  # (N, H)
    left = shifts[:, 1, None] + torch.arange(width, device=images.device)  # (N, W)
    if flip:
        left = torch.where(mirror[:, None], left.flip(1), left)
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channel = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch, channel, top[:, None, :, None], left[:, None, None, :]]


def black_fill(input_mean: Sequence[float] | None, input_std: Sequence[float] | None,
               channels: int) -> list[float]:
    """Per channel, the value a raw 0 (black) pixel takes after the data set's standardisation."""
    if input_mean is None or input_std is None:
        return [0.0] * channels
    if len(input_mean) != channels:  # standardised per feature, not per channel
        return [0.0] * channels
    return [-mean / std for mean, std in zip(input_mean, input_std, strict=True)]


class BatchAugmentation:
    """The training batches' transform: random shifts (and mirrors), each batch's draws a
    function of (seed, epoch, batch) only, so a resumed run and every data-parallel rank
    augment as one process does.

    Example::

        augment = BatchAugmentation("crop-flip", padding=4, seed=0, fill=[0.0, 0.0, 0.0])
        x = augment(x, epoch=1, index=0)   # the first batch of the first epoch
    """

    def __init__(self, kind: str, padding: int, seed: int, fill: Sequence[float]) -> None:
        check_augmentation(kind, padding)
        self.kind, self.padding, self.seed, self.fill = kind, padding, seed, list(fill)

    def __call__(self, x: torch.Tensor, epoch: int, index: int,
                 rows: torch.Tensor | None = None, batch_size: int | None = None
                 ) -> torch.Tensor:
        """Batch ``index`` of ``epoch``, augmented; ``rows`` are this process's rows of a
        global batch of ``batch_size`` (data parallelism), None for the whole batch."""
        if self.kind == "none":
            return x
        # Distinct for every (epoch, batch) below a million, and the same in any Python.
        key = (self.seed * 1_000_003 + epoch) * 1_000_003 + index
        generator = torch.Generator().manual_seed(key % 2**63)
        return augment_images(x, generator, padding=self.padding, flip=self.kind == "crop-flip",
                              fill=self.fill, rows=rows,
                              batch_size=batch_size if batch_size is not None else len(x))

