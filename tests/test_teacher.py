"""The teacher-student data set: a task is its spec, and its labels are the teacher's."""

import numpy as np
import pytest
import torch

from neuroplast.data import DataError, load_dataset
from neuroplast.data.teacher import TeacherSpec, generate, parse_spec

SPEC = "d=12,h=5,c=7,n=3000,noise=0.1,seed=4"  # h < c: the output bias must balance the classes


def _rebuild_teacher(d, h, c, n, seed):
    """The inputs, their labels and the teacher, redrawn from the documented recipe with numpy
    alone (neuroplast.data.teacher's docstring)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((h, d))
    w1 = w1 * 2.0 / np.sqrt((w1**2).sum(axis=1))[:, None]
    b1 = rng.standard_normal(h)
    w2 = rng.standard_normal((c, h)) / np.sqrt(h)

    def logits(x):
        return np.tanh(x @ w1.T + b1) @ w2.T

    calibration = logits(rng.standard_normal((20_000, d)))
    b2, steps = np.zeros(c), 300
    for t in range(steps):
        share = np.bincount((calibration + b2).argmax(axis=1), minlength=c) / len(calibration)
        b2 -= 2.0 * calibration.std() * (1 - t / steps) * (share - 1 / c)

    def teacher(x):
        return (logits(x) + b2).argmax(axis=1)

    x = rng.standard_normal((n, d))
    return x, teacher(x), teacher


def _raw(data, x):
    """Undo the standardisation: the generated inputs, to float32 precision."""
    return (x * torch.tensor(data.input_std) + torch.tensor(data.input_mean)).double().numpy()


def test_the_test_labels_are_the_teachers_recomputed_independently():
    data = load_dataset("teacher", SPEC)
    x, labels, _ = _rebuild_teacher(d=12, h=5, c=7, n=3000, seed=4)
    test = 600  # the last 20 %, clean
    assert torch.equal(data.y_test, torch.from_numpy(labels[-test:]))
    assert np.allclose(_raw(data, data.x_test), x[-test:], atol=1e-5)
    assert len(data.y_train) + len(data.y_val) == 3000 - test
    assert data.input_shape == (12,) and data.num_classes == 7 and data.name == "teacher"


def test_noise_flips_the_stated_fraction_of_training_and_validation_labels():
    _, labels, teacher = _rebuild_teacher(d=12, h=5, c=7, n=3000, seed=4)
    _, noisy, clean = generate(parse_spec(SPEC))
    assert np.array_equal(clean, labels)
    assert (noisy != clean)[:2400].sum() == 240 and (noisy == clean)[2400:].all()
    for noise in (0.1, 0.0):
        data = load_dataset("teacher", SPEC.replace("noise=0.1", f"noise={noise}"))
        x, y = torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])
        # the teacher's labels of the inputs as stored (float32): exact but on a boundary
        flipped = (teacher(_raw(data, x)) != y.numpy()).mean()
        assert abs(flipped - noise) < 0.002, (noise, flipped)


def test_a_spec_is_deterministic_and_the_run_seed_only_draws_the_validation_split():
    a, b = load_dataset("teacher", SPEC, seed=0), load_dataset("teacher", SPEC, seed=0)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    other = load_dataset("teacher", SPEC, seed=1)
    assert torch.equal(other.y_test, a.y_test)
    assert not torch.equal(other.y_val, a.y_val)
    pools = [_raw(s, torch.cat([s.x_train, s.x_val])) for s in (a, other)]
    pools = [pool[np.argsort(pool[:, 0])] for pool in pools]  # the same rows, in any order
    assert np.allclose(pools[0], pools[1], atol=1e-4)


def test_different_task_seeds_give_different_tasks():
    a = load_dataset("teacher", SPEC)
    b = load_dataset("teacher", SPEC.replace("seed=4", "seed=5"))
    assert not torch.equal(a.x_test, b.x_test) and not torch.equal(a.y_test, b.y_test)


def test_every_class_is_present_and_roughly_balanced():
    for spec in (SPEC, "d=200,h=8,c=10,n=5000,seed=0", "d=10,h=4,c=2,n=2000,seed=1"):
        task = parse_spec(spec)
        _, _, clean = generate(task)
        share = np.bincount(clean, minlength=task.c) / len(clean)
        assert share.min() > 0.7 / task.c and share.max() < 1.3 / task.c, (spec, share)
        data = load_dataset("teacher", spec)
        assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(task.c))


def test_the_spec_reads_from_the_last_path_component_and_defaults():
    # config.json stores --data-dir resolved against the working directory; resume reads that
    assert parse_spec(f"/somewhere/runs/{SPEC}") == parse_spec(SPEC)
    assert parse_spec(None) == parse_spec("") == TeacherSpec()
    assert parse_spec("c=4, h=3") == TeacherSpec(c=4, h=3)
    assert parse_spec(parse_spec(SPEC).text()) == parse_spec(SPEC)
    assert load_dataset("teacher-student").num_classes == TeacherSpec().c


@pytest.mark.parametrize("spec, message", [
    ("d=10,width=4", "cannot read 'width=4'"),
    ("d=10,h", "cannot read 'h'"),
    ("h=4.5", "h must be a whole number"),
    ("noise=lots", "noise must be a number"),
    ("c=1", "at least 2"),
    ("noise=1", r"\[0, 1\)"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset("teacher", spec)


def test_a_spec_string_round_trips_every_digit_and_a_negative_seed_is_named():
    from neuroplast.data import DataError
    from neuroplast.data.teacher import TeacherSpec, parse_spec

    spec = TeacherSpec(d=13, h=7, c=4, n=1234567, noise=0.123456789, seed=2345678)
    assert parse_spec(spec.text()) == spec
    assert TeacherSpec().text() == "d=20,h=8,c=3,n=5000,noise=0,seed=0"
    with pytest.raises(DataError, match="seed must be 0 or more"):
        parse_spec("seed=-1")
