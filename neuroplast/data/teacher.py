"""Teacher-student tasks: Gaussian inputs labelled by a random one-hidden-layer tanh network.

A task is a small spec, passed as the data directory (``--dataset teacher --data-dir
"d=50,h=16,c=4,n=10000,noise=0.1,seed=3"``):

``d`` input dimension, ``h`` the teacher's hidden width, ``c`` classes, ``n`` examples in all
(train + validation + test), ``noise`` the fraction of training and validation labels
replaced by another class, ``seed`` the task's own seed. Keys left out take their defaults
(:class:`TeacherSpec`). The task depends only on its spec, never on the run's ``--seed`` (which
draws only the validation split, as for every data set). Only the last path component is read,
so the absolute form a run's config.json stores (``<cwd>/d=50,...``) resumes the same task.

The teacher, drawn from ``numpy.random.default_rng(seed)`` in this order:

1. ``W1`` ``(h, d)``: Gaussian rows rescaled to norm :data:`PREACTIVATION_GAIN` (2), so every
   unit's pre-activation ``W1 x`` is ``N(0, 4)`` on ``x ~ N(0, I)``: a tanh of standard
   deviation 2 is neither nearly linear (the task would need no width) nor a hard step;
2. ``b1`` ``(h,)``: standard normal, so the units' hyperplanes pass at varied distances (about
   half a standard deviation) from the centre of the data;
3. ``W2`` ``(c, h)``: standard normal over ``sqrt(h)``;
4. ``b2`` ``(c,)``: balances the classes. On :data:`CALIBRATION_SIZE` inputs drawn next,
   with ``L`` their logits ``W2 tanh(W1 x + b1)``, it starts at 0 and takes ``T =``
   :data:`BALANCE_STEPS` steps ``b2 -= 2 * std(L) * (1 - t / T) * (f - 1 / c)``, ``f`` each
   class's share of the argmax of ``L + b2``, ``t = 0 .. T-1``. A random output layer alone
   can leave a class almost empty (when ``h < c`` above all); after this every class holds
   ``1/c`` of the calibration inputs, so about as much of any other sample;
5. the ``n`` inputs ``x ~ N(0, I_d)``, labelled ``argmax(W2 tanh(W1 x + b1) + b2)``;
6. label noise: exactly ``round(noise * m)`` of the first ``m = n - round(0.2 n)`` examples
   (the training + validation pool), chosen by ``rng.permutation(m)``, get
   ``(y + rng.integers(1, c)) % c``: another class, uniformly.

The last ``round(0.2 n)`` examples are the test split, with the teacher's clean labels, so test
accuracy measures how well the student learned the teacher. The validation split (20 % of the
pool, drawn with the run's seed) keeps the noise: it is held-out training data. Inputs are
standardised with training statistics like every tabular data set (they are already close to
standard).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import numpy as np

from .base import DEFAULT_HOLDOUT_FRACTION, DataError, DataSplits, finish, val_size

PREACTIVATION_GAIN = 2.0  # norm of every row of W1: pre-activations are N(0, gain^2)
CALIBRATION_SIZE = 20_000  # inputs the output bias is balanced on
BALANCE_STEPS = 300


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher-student task. See the module's docstring for how it is drawn."""

    d: int = 20  # input dimension
    h: int = 8  # teacher hidden width
    c: int = 3  # classes
    n: int = 5000  # examples: train + validation + test
    noise: float = 0.0  # fraction of training and validation labels flipped to another class
    seed: int = 0  # the task's seed (not the run's)

    def __post_init__(self) -> None:
        problems = []
        if self.d < 1 or self.h < 1:
            problems.append("d and h must be at least 1")
        if self.c < 2:
            problems.append("c (classes) must be at least 2")
        if self.n < 50:
            problems.append("n (examples) must be at least 50")
        if self.seed < 0:
            problems.append("seed must be 0 or more")
        if not 0.0 <= self.noise < 1.0:
            problems.append("noise must be a fraction in [0, 1)")
        if problems:
            raise DataError(f"teacher spec {self.text()!r}: {'; '.join(problems)}")

    def text(self) -> str:
        """The canonical spec string, e.g. ``d=20,h=8,c=3,n=5000,noise=0,seed=0``."""
        # repr keeps every digit of a float (0.1 stays 0.1), str every digit of an int.
        return ",".join(f"{f.name}={_number_text(getattr(self, f.name))}" for f in fields(self))


def _number_text(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def parse_spec(text: str | os.PathLike | None) -> TeacherSpec:
    """A :class:`TeacherSpec` from ``"d=50,h=16,c=4,n=10000,noise=0.1,seed=3"``.

    Keys may come in any order, missing keys take their defaults; ``None`` or an empty string
    is the default task. Only the last path component is read (see the module's docstring).
    """
    if text is None:
        return TeacherSpec()
    body = os.path.basename(os.fspath(text).rstrip("/\\")).strip()
    values: dict[str, int | float] = {}
    kinds = {f.name: f.type for f in fields(TeacherSpec)}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip().lower()
        if not equals or key not in kinds:
            raise DataError(
                f"teacher spec {body!r}: cannot read {item!r}; write key=value pairs with keys "
                f"{', '.join(kinds)}, e.g. --data-dir \"d=50,h=16,c=4,n=10000,noise=0.1,seed=3\"")
        try:
            number = float(value)
            if kinds[key] == "int":
                if not number.is_integer():
                    raise ValueError
                values[key] = int(number)
            else:
                values[key] = number
        except ValueError:
            raise DataError(f"teacher spec {body!r}: {key} must be a "
                            f"{'whole number' if kinds[key] == 'int' else 'number'}, "
                            f"not {value!r}") from None
    return TeacherSpec(**values)  # type: ignore[arg-type]


def _hidden(x: np.ndarray, w1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    return np.tanh(x @ w1.T + b1)


def make_teacher(spec: TeacherSpec) -> tuple[dict[str, np.ndarray], np.random.Generator]:
    """The teacher's weights ``w1, b1, w2, b2`` (float64) and the generator, ready for step 5."""
    rng = np.random.default_rng(spec.seed)
    w1 = rng.standard_normal((spec.h, spec.d))
    w1 *= PREACTIVATION_GAIN / np.linalg.norm(w1, axis=1, keepdims=True)
    b1 = rng.standard_normal(spec.h)
    w2 = rng.standard_normal((spec.c, spec.h)) / math.sqrt(spec.h)
    logits = _hidden(rng.standard_normal((CALIBRATION_SIZE, spec.d)), w1, b1) @ w2.T
    b2, scale = np.zeros(spec.c), 2.0 * logits.std()
    for step in range(BALANCE_STEPS):  # a decaying step: a constant one can oscillate
        share = np.bincount(np.argmax(logits + b2, axis=1), minlength=spec.c) / len(logits)
        b2 -= scale * (1.0 - step / BALANCE_STEPS) * (share - 1.0 / spec.c)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}, rng


def teacher_labels(x: np.ndarray, teacher: dict[str, np.ndarray]) -> np.ndarray:
    """The teacher's class for each row of ``x``: ``argmax(W2 tanh(W1 x + b1) + b2)``."""
    logits = _hidden(x, teacher["w1"], teacher["b1"]) @ teacher["w2"].T + teacher["b2"]
    return np.argmax(logits, axis=1).astype(np.int64)


def generate(spec: TeacherSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ``n`` inputs (float64), noisy labels and clean labels, in split order (test last)."""
    teacher, rng = make_teacher(spec)
    x = rng.standard_normal((spec.n, spec.d))
    clean = teacher_labels(x, teacher)
    noisy = clean.copy()
    pool = spec.n - round(DEFAULT_HOLDOUT_FRACTION * spec.n)
    flipped = rng.permutation(pool)[: round(spec.noise * pool)]
    noisy[flipped] = (clean[flipped] + rng.integers(1, spec.c, size=len(flipped))) % spec.c
    return x, noisy, clean


def load_teacher(
    spec: str | os.PathLike | None, *, seed: int, val_fraction: float | None,
    standardise: bool = True,
) -> DataSplits:
    """The teacher-student task ``spec`` as train / validation / test splits (20 % test)."""
    task = parse_spec(spec)
    x, noisy, clean = generate(task)
    pool = task.n - round(DEFAULT_HOLDOUT_FRACTION * task.n)
    return finish(
        "teacher",
        x[:pool].astype(np.float32),
        noisy[:pool],
        x[pool:].astype(np.float32),
        clean[pool:],
        num_classes=task.c,
        class_names=[str(k) for k in range(task.c)],
        seed=seed,
        n_val=val_size(pool, val_fraction),
        standardise=standardise,
    )
