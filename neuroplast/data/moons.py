"""The two-moons benchmark of the Neural Plasticity Networks paper, embedded in 100 dimensions.

Two interleaved half circles of radius 1: class 0 is the upper arc centred at (0.5, -0.25),
class 1 the lower arc centred at (-0.5, 0.25), so the pair is centred at the origin. Gaussian
noise (std 0.1) is added in 2-D, then every point is mapped to 100-D by ``x2 @ B`` with a fixed
2x100 basis ``B`` of orthonormal rows. The basis does not depend on the data seed, so
``x100 @ moons_basis().T`` recovers the 2-D points of any run (for plots).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import DataError, DataSplits

EMBED_DIM = 100
NOISE_STD = 0.1
N_PER_SPLIT = 500  # train, validation and test each get this many points, half per class
# Fixed, independent of the data seed, so every run and every plot shares one embedding.
BASIS_SEED = 1_000_003
_CENTRES = np.array([[0.5, -0.25], [-0.5, 0.25]])
_ARC_SIGN = np.array([1.0, -1.0])  # class 0 takes the upper arc, class 1 the lower


def moons_basis() -> torch.Tensor:
    """The fixed ``(2, 100)`` float32 embedding matrix; its rows are orthonormal."""
    gaussian = np.random.default_rng(BASIS_SEED).standard_normal((EMBED_DIM, 2))
    q, r = np.linalg.qr(gaussian)
    # QR is unique only up to column signs; pin them so the basis is the same everywhere.
    q = q * np.sign(np.diag(r))
    return torch.from_numpy(np.ascontiguousarray(q.T)).to(torch.float32)


def make_moons_2d(
    labels: np.ndarray, rng: np.random.Generator, noise: float = NOISE_STD
) -> np.ndarray:
    """Noisy 2-D moon points, one per entry of ``labels`` (0 or 1), as float64 ``(N, 2)``."""
    angle = rng.uniform(0.0, np.pi, size=len(labels))
    arc = np.stack([np.cos(angle), _ARC_SIGN[labels] * np.sin(angle)], axis=1)
    return _CENTRES[labels] + arc + rng.normal(0.0, noise, size=(len(labels), 2))


def _balanced_labels(n_per_class: int, rng: np.random.Generator) -> np.ndarray:
    # Shuffled, so that consumers reading the data in order do not see one class, then the other.
    return rng.permutation(np.repeat(np.arange(2), n_per_class))


def load_moons(seed: int = 0, val_fraction: float | None = None) -> DataSplits:
    """500 training, 500 validation and 500 test points with balanced classes.

    Training and validation points come from one pool of 1000, split per class with a
    ``torch.Generator`` seeded with ``seed`` so both stay balanced; ``val_fraction`` (default
    0.5 of that pool) changes the split. Inputs are left raw (not standardised): the geometry
    is the point of this data set.
    """
    rng = np.random.default_rng(seed)
    pool_labels = _balanced_labels(N_PER_SPLIT, rng)  # train + val: 2 * 500 points
    pool = make_moons_2d(pool_labels, rng)
    test_labels = _balanced_labels(N_PER_SPLIT // 2, rng)
    test = make_moons_2d(test_labels, rng)

    fraction = 0.5 if val_fraction is None else val_fraction
    generator = torch.Generator().manual_seed(seed)
    is_val = np.zeros(len(pool_labels), dtype=bool)
    for cls in (0, 1):
        members = np.flatnonzero(pool_labels == cls)
        chosen = torch.randperm(len(members), generator=generator).numpy()
        is_val[members[chosen[: round(fraction * len(members))]]] = True
    if not 0 < is_val.sum() < len(is_val):
        raise DataError(f"a validation fraction of {fraction} leaves the moons pool of "
                        f"{len(is_val)} points without a validation or a training example; "
                        "use a fraction between 0.01 and 0.99")

    basis = moons_basis().double().numpy()

    def embed(points: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(points @ basis).to(torch.float32)

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.int64))

    return DataSplits(
        name="moons",
        x_train=embed(pool[~is_val]),
        y_train=labels(pool_labels[~is_val]),
        x_val=embed(pool[is_val]),
        y_val=labels(pool_labels[is_val]),
        x_test=embed(test),
        y_test=labels(test_labels),
        num_classes=2,
        input_shape=(EMBED_DIM,),
        class_names=["0", "1"],
    )
