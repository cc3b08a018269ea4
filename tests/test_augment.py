"""Image augmentation: shifts and mirrors checked against an enumeration of every candidate,
the padding value, DDP-consistent draws, and exact resume of an augmented run."""

import pytest
import torch
from run_helpers import InterruptAt, assert_same_run

from neuroplast.data import load_dataset
from neuroplast.data.augment import augment_images, black_fill, check_augmentation
from neuroplast.train import Callback
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run


def _candidates(image, padding, fill, flip):
    """Every shift (and mirror) of one (C, H, W) image, built pixel by pixel."""
    channels, height, width = image.shape
    padded = torch.empty(channels, height + 2 * padding, width + 2 * padding)
    for c in range(channels):
        padded[c].fill_(fill[c])
    padded[:, padding:padding + height, padding:padding + width] = image
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + height, left:left + width]
            out.append(((top, left, False), crop))
            if flip:
                out.append(((top, left, True), crop.flip(-1)))
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_each_image_is_one_shift_or_mirror_of_itself(flip):
    images = torch.randn(12, 2, 5, 6)
    fill = [-0.5, 2.0]
    out = augment_images(images, torch.Generator().manual_seed(1), padding=2, flip=flip,
                         fill=fill)
    assert out.shape == images.shape
    for image, result in zip(images, out, strict=True):
        matches = [key for key, crop in _candidates(image, 2, fill, flip)
                   if torch.equal(crop, result)]
        assert matches, "not a shift (or mirror) of its own image"


def test_every_shift_and_both_mirrors_are_drawn():
    images = torch.randn(1, 1, 4, 4).expand(4000, 1, 4, 4).contiguous()
    out = augment_images(images, torch.Generator().manual_seed(0), padding=1, flip=True)
    seen = set()
    candidates = _candidates(images[0], 1, [0.0], True)
    for result in out[:400]:
        seen.update(key for key, crop in candidates if torch.equal(crop, result))
    assert {key[:2] for key in seen} == {(top, left) for top in range(3) for left in range(3)}
    assert {key[2] for key in seen} == {False, True}
    unmoved = (out == images).flatten(1).all(1).float().mean().item()
    assert 0.02 < unmoved < 0.12  # the identity: centre shift, no mirror, p = 1/18


def test_a_part_of_a_batch_is_augmented_as_in_the_whole_batch():
    images = torch.randn(10, 3, 6, 6)
    whole = augment_images(images, torch.Generator().manual_seed(5), padding=3)
    rows = torch.tensor([1, 4, 7])
    part = augment_images(images[rows], torch.Generator().manual_seed(5), padding=3, rows=rows,
                          batch_size=10)
    assert torch.equal(part, whole[rows])


def test_padding_is_a_black_pixel_after_standardisation():
    data = load_dataset("digits")
    fill = black_fill(data.input_mean, data.input_std, 1)
    raw_black = (torch.zeros(1) - data.input_mean[0]) / data.input_std[0]
    assert fill == pytest.approx(raw_black.tolist())
    assert black_fill(None, None, 3) == [0.0, 0.0, 0.0]


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        check_augmentation("rotate", 4)
    with pytest.raises(ValueError, match="integer >= 1"):
        check_augmentation("crop", 0)
    with pytest.raises(ValueError, match="leave --augment at none"):
        check_augmentation("crop", 4, (100,))
    with pytest.raises(ValueError, match="leave --augment at none"):
        train_run(RunConfig(method="fixed", model="mlp", dataset="moons", widths=[8],
                            train=TrainConfig(epochs=1, augment="crop", progress=False)))


class RecordInputs(Callback):
    def __init__(self):
        self.batches = []

    def on_batch_begin(self, trainer, inputs, targets):
        self.batches.append(inputs.clone())


def _config(out, **train):
    options = dict(epochs=3, batch_size=32, seed=2, progress=False, threads=1,
                   augment="crop-flip", augment_padding=2)
    options.update(train)
    return RunConfig(method="fixed", model="mlp", dataset="digits", widths=[16], out=str(out),
                     train=TrainConfig(**options))


def test_the_model_trains_on_augmented_images_only_when_asked(tmp_path):
    data = load_dataset("digits", seed=2)
    training_rows = {tuple(row.flatten().tolist()) for row in data.x_train}
    plain, augmented = RecordInputs(), RecordInputs()
    train_run(_config(tmp_path / "plain", epochs=1, augment="none"), callbacks=[plain])
    train_run(_config(tmp_path / "augmented", epochs=1), callbacks=[augmented])
    plain_rows = torch.cat(plain.batches).flatten(1)
    augmented_rows = torch.cat(augmented.batches).flatten(1)
    assert all(tuple(row.tolist()) in training_rows for row in plain_rows)
    unchanged = sum(tuple(row.tolist()) in training_rows for row in augmented_rows)
    assert unchanged < 0.15 * len(augmented_rows)  # about 1 in 50 keeps shift 0, no mirror


def test_an_interrupted_augmented_run_resumes_exactly(tmp_path):
    train_run(_config(tmp_path / "straight"))
    train_run(_config(tmp_path / "cut"), callbacks=[InterruptAt(epoch=2, batch=9)])
    resumed = resume_run(tmp_path / "cut")
    assert resumed["epochs"] == 3
    assert_same_run(tmp_path / "straight", tmp_path / "cut")
