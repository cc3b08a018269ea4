"""Tests for neuroplast.data: tiny files in the real formats, plus the shared real copies."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import neuroplast.data as data
from neuroplast.data import DATASETS, DataError, DataSplits, load_dataset
from neuroplast.data import idx as idx_module
from neuroplast.data import images as images_module
from neuroplast.data.idx import read_idx
from neuroplast.data.moons import moons_basis

Image = pytest.importorskip("PIL.Image")

# ../shared/data beside the repository, as on CI and the development machines.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's real cache from the tests.
    monkeypatch.setenv("NEUROPLAST_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    """Write an IDX file (gzip when the name ends in .gz), independently of the package."""
    dtypes = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(dtypes[type_code]).tobytes()
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)


def make_mnist_dir(root: Path, n_train: int = 50, n_test: int = 10, gz: bool = True) -> dict:
    """A tiny MNIST-format folder with 6x7 images; returns the written arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 6, 7), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 6, 7), dtype=np.uint8),
        "test_y": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_NAMES.items():
        # Mix compressed and uncompressed files: both must be accepted.
        suffix = ".gz" if gz and key != "test_y" else ""
        write_idx(root / (stem + suffix), arrays[key])
    return arrays


def affine_fit(x: torch.Tensor, raw: np.ndarray) -> tuple[float, float]:
    """Fit x = a * raw + b (the normalisation) and check that it is exact."""
    a, b = np.polyfit(raw.ravel().astype(np.float64), x.numpy().ravel().astype(np.float64), 1)
    assert a > 0
    np.testing.assert_allclose(a * raw.astype(np.float64) + b, x.numpy(), atol=1e-4)
    return a, b


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_image_tree(root: Path, classes=("dog", "cat", "emu"), per_class=5, size=(4, 5)) -> None:
    """root/<class>/<i>.png with greyscale images of the given (height, width)."""
    rng = np.random.default_rng(2)
    for cls in classes:
        for i in range(per_class):
            save_png(root / cls / f"{i:02d}.png", rng.integers(0, 256, size, dtype=np.uint8))


def assert_splits_sane(s: DataSplits) -> None:
    for x, y in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == s.input_shape and len(x) == len(y)
        if len(y):
            assert 0 <= int(y.min()) and int(y.max()) < s.num_classes


# --------------------------------------------------------------------------- API


def test_public_api() -> None:
    assert sorted(data.__all__) == ["BatchStream", "DATASETS", "DataError", "DataSplits",
                                    "LazyInputs", "dataset_splits", "load_dataset",
                                    "streamed_splits"]
    assert DATASETS == (
        "moons", "digits", "mnist", "fashion-mnist", "cifar10", "npz", "csv", "folder", "teacher",
    )  # fmt: skip
    assert issubclass(DataError, ValueError)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


def test_bad_val_fraction_and_misplaced_label_column() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("moons", val_fraction=1.5)
    with pytest.raises(DataError, match=r"in \(0, 1\).*held-out"):  # methods decide on it
        load_dataset("digits", val_fraction=0)
    with pytest.raises(DataError, match="holds out no example"):
        load_dataset("digits", val_fraction=1e-6)
    with pytest.raises(DataError, match="without a validation or a training example"):
        load_dataset("moons", val_fraction=0.0001)
    with pytest.raises(DataError, match="label_column"):
        load_dataset("moons", label_column="y")


def test_path_datasets_need_data_dir() -> None:
    for name in ("cifar10", "npz", "csv", "folder"):
        with pytest.raises(DataError, match="data_dir"):
            load_dataset(name)


# --------------------------------------------------------------------------- IDX


def test_read_idx_round_trips_exact_values(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", magic=0x803), images)
    shorts = np.arange(-6, 6, dtype=np.int16).reshape(3, 4) * 1000  # big-endian int16
    write_idx(tmp_path / "b", shorts, type_code=0x0B)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), shorts)


def test_mnist_loader_round_trip(tmp_path: Path) -> None:
    raw = make_mnist_dir(tmp_path)
    s = load_dataset("mnist", tmp_path, download=False)
    assert_splits_sane(s)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (40, 10, 10)
    assert s.input_shape == (1, 6, 7) and s.num_classes == 10
    assert s.class_names == [str(d) for d in range(10)]
    # The test file keeps its order; pixels are an exact affine image of the bytes written.
    np.testing.assert_array_equal(s.y_test.numpy(), raw["test_y"])
    a, b = affine_fit(s.x_test[:, 0], raw["test_x"])
    # Train + val is exactly the training file after undoing the same transform.
    x = torch.cat([s.x_train, s.x_val])[:, 0].numpy()
    y = torch.cat([s.y_train, s.y_val]).numpy()
    recovered = np.rint((x - b) / a).reshape(len(x), -1)
    rows = np.concatenate([recovered, y[:, None]], axis=1)
    expected = np.concatenate([raw["train_x"].reshape(len(x), -1), raw["train_y"][:, None]], 1)
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    # Standardised with training statistics.
    assert abs(float(s.x_train.mean())) < 1e-5 and abs(float(s.x_train.std()) - 1) < 1e-2


def test_mnist_val_fraction_and_seed(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    half = load_dataset("mnist", tmp_path, download=False, val_fraction=0.5)
    assert (len(half.y_train), len(half.y_val)) == (25, 25)
    a = load_dataset("mnist", tmp_path, download=False, seed=3)
    b = load_dataset("mnist", tmp_path, download=False, seed=3)
    c = load_dataset("mnist", tmp_path, download=False, seed=4)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)


def _expect_corrupt(directory: Path, filename: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", directory, download=False)
    message = str(err.value)
    assert filename in message and "corrupt" in message and "download" in message


def test_idx_wrong_magic(tmp_path: Path) -> None:
    raw = make_mnist_dir(tmp_path)
    # A label file where the image file should be: valid IDX, wrong magic number.
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", raw["train_y"])
    _expect_corrupt(tmp_path, "train-images-idx3-ubyte.gz")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04junk"))
    _expect_corrupt(tmp_path, "train-images-idx3-ubyte.gz")


def test_idx_truncated(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[:-5]))  # fewer bytes than the header promises
    _expect_corrupt(tmp_path, path.name)
    path.write_bytes(gzip.compress(content)[:-20])  # a cut-off gzip stream
    _expect_corrupt(tmp_path, path.name)


def test_idx_count_mismatch_and_label_range(tmp_path: Path) -> None:
    raw = make_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", raw["test_y"][:-1])
    _expect_corrupt(tmp_path, "t10k-labels-idx1-ubyte")
    bad = raw["test_y"].copy()
    bad[0] = 12
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", bad)
    _expect_corrupt(tmp_path, "t10k-labels-idx1-ubyte")


def test_idx_missing_file_and_folder(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(tmp_path) in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert "download=True" in message
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("fashion-mnist", tmp_path / "nowhere", download=False)


def test_download_failure_raises_missing_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(idx_module.urllib.request, "urlopen", offline)
    target = tmp_path / "data" / "mnist"
    with pytest.raises(DataError) as err:
        load_dataset("mnist", target, download=True)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "no network" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no partial files, no folders made for them
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty or not
    with pytest.raises(DataError):
        load_dataset("mnist", tmp_path / "mine", download=True)
    assert (tmp_path / "mine").is_dir()


def test_download_verifies_md5_and_writes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_mnist_dir(tmp_path / "server", gz=False)
    blobs = {}
    for key, stem in IDX_NAMES.items():
        write_idx(tmp_path / "server" / f"{stem}.gz", served[key])
        blobs[f"{stem}.gz"] = (tmp_path / "server" / f"{stem}.gz").read_bytes()
    url = idx_module.SOURCES["mnist"].url
    corrupt = {"on": True}

    def fake_urlopen(requested: str, timeout: float) -> io.BytesIO:
        assert requested.startswith(url) and timeout > 0
        blob = blobs[requested[len(url) :]]
        return io.BytesIO(blob[:-1] if corrupt["on"] else blob)

    monkeypatch.setattr(idx_module.urllib.request, "urlopen", fake_urlopen)
    for name, blob in blobs.items():
        monkeypatch.setitem(idx_module.SOURCES["mnist"].md5, name, hashlib.md5(blob).hexdigest())
    target = tmp_path / "downloaded"
    with pytest.raises(DataError, match="checksum"):
        load_dataset("mnist", target, download=True)
    assert not target.exists()  # no partial file, and not the folder made for the files
    corrupt["on"] = False
    s = load_dataset("mnist", target, download=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(blobs)
    np.testing.assert_array_equal(s.y_test.numpy(), served["test_y"])


def test_default_data_dir_lives_in_cache(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path / "cache" / "datasets" / "mnist")
    assert len(load_dataset("mnist", download=False).y_test) == 10


# --------------------------------------------------------------------------- CIFAR-10


def make_cifar_batches(folder: Path, binary: bool = False) -> dict:
    """The original release layout with 4 images per training batch and 6 test images."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        n = 6 if name == "test_batch" else 4
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        written[name] = (pixels, labels)
        if binary:
            records = np.concatenate([np.array(labels, np.uint8)[:, None], pixels], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
        else:
            batch = {b"batch_label": b"x", b"labels": labels, b"data": pixels, b"filenames": []}
            (folder / name).write_bytes(pickle.dumps(batch))
    class_names = [f"class{i}" for i in range(10)]
    if binary:
        (folder / "batches.meta.txt").write_text("\n".join(class_names) + "\n")
    else:
        meta = {b"label_names": [c.encode() for c in class_names], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return written


def check_cifar_batches(s: DataSplits, written: dict) -> None:
    assert_splits_sane(s)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (16, 4, 6)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert s.class_names == [f"class{i}" for i in range(10)]
    pixels, labels = written["test_batch"]
    assert s.y_test.tolist() == labels
    # Rows are channel-major (1024 red, 1024 green, 1024 blue): check one channel exactly.
    affine_fit(s.x_test[:, 1], pixels.reshape(-1, 3, 32, 32)[:, 1])


def test_cifar_python_batches(tmp_path: Path) -> None:
    written = make_cifar_batches(tmp_path / "cifar-10-batches-py")
    check_cifar_batches(load_dataset("cifar10", tmp_path), written)
    check_cifar_batches(load_dataset("cifar10", tmp_path / "cifar-10-batches-py"), written)
    # The official download is a tar.gz of that folder: read it without extracting.
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    check_cifar_batches(load_dataset("cifar10", archive), written)


def test_cifar_binary_batches(tmp_path: Path) -> None:
    written = make_cifar_batches(tmp_path / "cifar-10-batches-bin", binary=True)
    check_cifar_batches(load_dataset("cifar10", tmp_path), written)


def test_cifar_corrupt_batch_names_file(tmp_path: Path) -> None:
    make_cifar_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3.*corrupt"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 data"):
        load_dataset("cifar10", tmp_path / "empty")


def make_rgb_split_tree(root: Path) -> None:
    """root/train/<class>/*.png and root/test/<class>/*.png, 3x4 RGB."""
    rng = np.random.default_rng(4)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("truck", "airplane", "cat"):
            for i in range(n):
                save_png(root / split / cls / f"{i}.png", rng.integers(0, 256, (3, 4, 3), np.uint8))


def test_cifar_image_tar_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_rgb_split_tree(tmp_path / "tree")
    archive = tmp_path / "store" / "imgs.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        # A wrapper folder, as archives often have, must be skipped.
        tar.add(tmp_path / "tree", arcname="cifar10")
    first = load_dataset("cifar10", archive)
    assert_splits_sane(first)
    assert first.class_names == ["airplane", "cat", "truck"]
    assert (len(first.y_train), len(first.y_val), len(first.y_test)) == (12, 3, 6)
    assert first.input_shape == (3, 3, 4)
    assert list((tmp_path / "cache" / "images").glob("imgs.tar.gz-*/meta.json"))

    calls = []

    def refuse(data: bytes, where: str) -> np.ndarray:
        calls.append(where)
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(images_module, "decode_image", refuse)
    second = load_dataset("cifar10", tmp_path / "store")  # the folder holding the archive
    for a, b in ((first.x_train, second.x_train), (first.x_test, second.x_test)):
        assert torch.equal(a, b)
    # Touching the archive invalidates the cache entry.
    os.utime(archive, ns=(1, 1))
    with pytest.raises(AssertionError):
        load_dataset("cifar10", archive)
    assert calls


def test_cifar_image_folder_on_disk(tmp_path: Path) -> None:
    make_rgb_split_tree(tmp_path)
    s = load_dataset("cifar10", tmp_path)
    assert (len(s.y_test), s.num_classes, s.input_shape) == (6, 3, (3, 3, 4))
    # Per-channel standardisation on the training split.
    np.testing.assert_allclose(s.x_train.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-4)


# --------------------------------------------------------------------------- image folders


def test_folder_greyscale_with_test_split(tmp_path: Path) -> None:
    make_image_tree(tmp_path)
    s = load_dataset("folder", tmp_path)
    assert_splits_sane(s)
    assert s.class_names == ["cat", "dog", "emu"] and s.num_classes == 3
    assert s.input_shape == (1, 4, 5)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (10, 2, 3)


def test_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    make_image_tree(tmp_path)
    save_png(tmp_path / "cat" / "colour.png", np.zeros((4, 5, 3), np.uint8))
    assert load_dataset("folder", tmp_path).input_shape == (3, 4, 5)


def test_folder_size_mismatch_names_file(tmp_path: Path) -> None:
    make_image_tree(tmp_path)
    save_png(tmp_path / "emu" / "big.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match=r"big\.png.*6x6.*one size"):
        load_dataset("folder", tmp_path)


def test_folder_corrupt_image_names_file(tmp_path: Path) -> None:
    make_image_tree(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset("folder", tmp_path)


def test_folder_from_tar(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "tree", arcname=".")
    s = load_dataset("folder", archive)
    assert s.class_names == ["cat", "dog", "emu"] and s.input_shape == (1, 4, 5)


def test_folder_needs_two_classes_and_images(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="two"):
        load_dataset("folder", tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", tmp_path / "empty")


# --------------------------------------------------------------------------- npz and csv


def test_npz_tabular_labels_remapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, (50, 4))
    x[:, 0] = np.arange(50)  # a unique id per row, to trace where every row went
    y = np.array([3, 7, 11, 7, 3] * 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_dataset("npz", tmp_path / "d.npz")
    assert_splits_sane(s)
    assert s.class_names == ["3", "7", "11"] and s.num_classes == 3 and s.input_shape == (4,)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (32, 8, 10)
    np.testing.assert_allclose(s.x_train.mean(0).numpy(), 0, atol=1e-5)
    # Every row lands in exactly one split: ids are unique across train, val and test.
    ids = [set(np.round(part[:, 0].numpy(), 4)) for part in (s.x_train, s.x_val, s.x_test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert sum(len(i) for i in ids) == 50


def test_npz_images_with_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    np.savez(
        tmp_path / "img.npz",
        x=rng.integers(0, 256, (20, 5, 6), dtype=np.uint8),
        y=np.repeat([-1, 1], 10),
        x_test=rng.integers(0, 256, (7, 5, 6), dtype=np.uint8),
        y_test=np.ones(7, dtype=int),
    )
    s = load_dataset("npz", tmp_path / "img.npz", val_fraction=0.25)
    assert s.input_shape == (1, 5, 6) and s.class_names == ["-1", "1"]
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (15, 5, 7)
    assert s.y_test.tolist() == [1] * 7
    # Channels-last colour images are moved to channels-first.
    np.savez(tmp_path / "hwc.npz", x=rng.random((10, 5, 6, 3)), y=np.arange(10) % 2)
    assert load_dataset("npz", tmp_path / "hwc.npz").input_shape == (3, 5, 6)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 2)))
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_dataset("npz", tmp_path / "bad.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", tmp_path / "missing.npz")
    (tmp_path / "noise.npz").write_bytes(bytes(range(7, 250)))
    with pytest.raises(DataError, match="is not an .npz archive"):  # not "pickled data"
        load_dataset("npz", tmp_path / "noise.npz")


def test_csv_loads_with_label_column(tmp_path: Path) -> None:
    species = ["setosa", "virginica", "versicolor"]
    lines = ["a,b,Target"] + [f"{i},{i * 0.5},{species[i % 3]}" for i in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    s = load_dataset("csv", tmp_path / "t.csv")
    assert_splits_sane(s)
    assert s.class_names == sorted(species) and s.input_shape == (2,)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (19, 5, 6)
    # An explicit label column; here the labels are numbers and sort numerically.
    lines = ["kind,f"] + [f"{[2, 10][i % 2]},{i}" for i in range(10)]
    (tmp_path / "k.csv").write_text("\n".join(lines))
    s = load_dataset("csv", tmp_path / "k.csv", label_column="kind")
    assert s.class_names == ["2", "10"] and s.input_shape == (1,)


def test_csv_errors_name_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("f1,f2,label\n1,2,a\n3,oops,b\n")
    with pytest.raises(DataError, match=r"line 3, column 'f2'.*'oops'"):
        load_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "nolabel.csv").write_text("f1,f2\n1,2\n")
    with pytest.raises(DataError, match="label_column"):
        load_dataset("csv", tmp_path / "nolabel.csv")


# --------------------------------------------------------------------------- moons, digits


def test_moons_deterministic_balanced_and_in_basis_span() -> None:
    a, b, c = load_dataset("moons", seed=1), load_dataset("moons", seed=1), load_dataset("moons")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.input_shape == (100,) and a.num_classes == 2
    for y in (a.y_train, a.y_val, a.y_test):
        assert y.bincount().tolist() == [250, 250]
    basis = moons_basis()
    assert basis.shape == (2, 100)
    torch.testing.assert_close(basis @ basis.T, torch.eye(2), atol=1e-6, rtol=0)
    assert torch.equal(basis, moons_basis())  # fixed, whatever the data seed
    x = torch.cat([a.x_train, a.x_val, a.x_test])
    torch.testing.assert_close(x @ basis.T @ basis, x, atol=1e-5, rtol=0)
    # The projected points are the two unit-radius arcs (plus noise std 0.1).
    points = (a.x_train @ basis.T).double()
    centres = torch.tensor([[0.5, -0.25], [-0.5, 0.25]], dtype=torch.float64)[a.y_train]
    radius = (points - centres).norm(dim=1)
    assert abs(float(radius.mean()) - 1) < 0.05
    upper = points[:, 1] > centres[:, 1]
    assert upper[a.y_train == 0].float().mean() > 0.8 and upper[a.y_train == 1].float().mean() < 0.2


def test_moons_val_never_overlaps_train() -> None:
    s = load_dataset("moons", seed=2, val_fraction=0.3)
    assert (len(s.y_train), len(s.y_val)) == (700, 300)
    assert s.y_val.bincount().tolist() == [150, 150]
    train_rows = {tuple(r) for r in s.x_train.numpy().round(5).tolist()}
    assert not any(tuple(r) in train_rows for r in s.x_val.numpy().round(5).tolist())


def test_digits() -> None:
    pytest.importorskip("sklearn")
    s = load_dataset("digits")
    assert_splits_sane(s)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (1150, 288, 359)
    # The test split does not depend on the seed; the validation split does.
    other = load_dataset("digits", seed=1)
    assert torch.equal(s.y_test, other.y_test) and not torch.equal(s.y_val, other.y_val)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST copy")
def test_real_mnist() -> None:
    s = load_dataset("mnist", SHARED / "mnist", download=False)
    assert s.x_train.shape == (55000, 1, 28, 28)
    assert s.x_val.shape == (5000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    for y in (s.y_train, s.y_val, s.y_test):
        assert sorted(y.unique().tolist()) == list(range(10))
    assert s.y_test.bincount().tolist()[:2] == [980, 1135]  # the official test class counts


def test_a_file_given_as_the_mnist_folder_is_named_as_such(tmp_path: Path) -> None:
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(b"")
    with pytest.raises(DataError, match="is a file; mnist is read from the folder"):
        load_dataset("mnist", file, download=False)


def test_a_split_too_small_to_measure_accuracy_is_said_at_the_start(tmp_path, capsys):
    import numpy as np

    from neuroplast import cli

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "tiny.npz", x=x[:40], y=y[:40], x_test=x[40:46], y_test=y[40:46])
    code = cli.main(["train", "--dataset", "npz", "--data-dir", str(tmp_path / "tiny.npz"),
                     "--model", "mlp", "--widths", "4", "--epochs", "1", "--no-progress",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 0
    assert "the test split holds only 6 examples" in err and "17 points" in err
    assert "the validation split holds only" in err  # 40 rows leave a few for validation
    np.savez(tmp_path / "big.npz", x=rng.normal(size=(1200, 4)).astype(np.float32),
             y=rng.integers(0, 2, 1200))
    cli.main(["train", "--dataset", "npz", "--data-dir", str(tmp_path / "big.npz"), "--model",
              "mlp", "--widths", "4", "--epochs", "1", "--no-progress",
              "--out", str(tmp_path / "run2")])
    assert "holds only" not in capsys.readouterr().err
