"""The GPU check script (benchmarks/gpu.py, issue 29) run end to end on the CPU at toy sizes.

``--dry-run`` writes tiny synthetic MNIST and CIFAR-10 files in the real formats and runs every
step; the JSON files it leaves are checked against what the runs must have done.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--dry-run",
                    "--threads", "1", "--out", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}


def test_every_step_writes_its_file(results):
    assert set(results) == {"env", "tests", "lenet5", "bf16", "resnet56"}
    env = results["env"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["cuda_available"] == torch.cuda.is_available()


def test_the_cuda_tests_are_collected_and_skip_without_a_gpu(results):
    tests = results["tests"]
    assert tests["returncode"] == 0 and tests["failed"] == tests["errors"] == 0
    names = [case["name"] for case in tests["cases"]]
    assert any("test_device" in name and "cuda" in name for name in names)
    assert sum("test_gpu::" in name for name in names) >= 4
    if not torch.cuda.is_available():
        assert tests["skipped"] == len(names) and tests["cuda_tests_ran"] == 0


def _sane_run(run, epochs, device="cpu"):
    assert run["device"] == run["data_device"] == device
    assert run["epochs"] == epochs == len(run["epoch_seconds"]) == len(run["train_seconds"])
    assert all(0 < train < total for train, total in zip(run["train_seconds"],
                                                         run["epoch_seconds"], strict=True))
    assert 0 <= run["test_accuracy"] <= 1 and run["params"] > 0 and run["macs"] > 0
    assert all(0 < width <= run["initial_widths"][name] for name, width in run["widths"].items())


def test_lenet5_reports_the_three_placements_side_by_side(results):
    lenet = results["lenet5"]
    runs = lenet["runs"]
    _sane_run(runs["resident"], gpu.DRY.lenet_epochs)
    _sane_run(runs["host"], gpu.DRY.compare_epochs)
    _sane_run(runs["cpu"], gpu.DRY.compare_epochs)
    assert runs["resident"]["widths"].keys() == {"conv1", "conv2", "fc1", "out"}
    assert runs["resident"]["initial_widths"] == {"conv1": 20, "conv2": 50, "fc1": 800,
                                                  "out": 500}
    side = lenet["epoch_seconds_side_by_side"]
    assert {k: len(v) for k, v in side.items()} == dict.fromkeys(runs, gpu.DRY.compare_epochs)
    assert side["cpu"] == runs["cpu"]["epoch_seconds"]
    assert lenet["speedup_vs_cpu"] == pytest.approx(side["cpu"][0] / side["resident"][0])
    # 256 + 64 synthetic images of 28x28 as float32, and int64 labels.
    assert lenet["data_bytes"] == 320 * (28 * 28 * 4 + 8)
    assert lenet["per_batch_host_copies"] == {"resident": False, "host": False, "cpu": False}


def test_bf16_compares_against_the_fp32_run(results):
    bf16 = results["bf16"]
    lenet = bf16["lenet5"]
    _sane_run(lenet["runs"]["bf16"], gpu.DRY.lenet_epochs)
    assert lenet["runs"]["bf16"]["precision"] == "bf16"
    assert lenet["runs"]["fp32"] == results["lenet5"]["runs"]["resident"]  # reused, not rerun
    assert lenet["accuracy_difference"] == pytest.approx(
        lenet["test_accuracy"]["bf16"] - lenet["test_accuracy"]["fp32"])
    steps = bf16["resnet_steps"]
    for precision in ("fp32", "bf16"):
        probe = steps[precision]
        assert probe["precision"] == precision and probe["steps"] == gpu.DRY.probe_steps
        assert probe["images_per_second"] == pytest.approx(
            probe["batch_size"] / probe["seconds_per_step"])
    assert steps["speedup_bf16"] == pytest.approx(
        steps["fp32"]["seconds_per_step"] / steps["bf16"]["seconds_per_step"])


def test_resnet_reports_accuracy_widths_and_epoch_time(results):
    resnet = results["resnet56"]
    assert resnet["overrides"]["model"] == gpu.DRY.resnet_model
    assert resnet["augment"] == "crop-flip" and resnet["augmented_on"] == "cpu"
    epochs = resnet["epochs"]
    assert 1 <= epochs <= resnet["planned_epochs"] <= gpu.DRY.resnet_max_epochs
    assert len(resnet["widths_curve"]) == len(resnet["test_accuracy_curve"]) == epochs
    assert resnet["widths"] == resnet["widths_curve"][-1]
    assert len(resnet["widths"]) == 11  # resnet20: the stem, 9 blocks, the classifier input
    assert 0 < resnet["typical_epoch_seconds"] < resnet["seconds"] < resnet["budget_seconds"]
    assert resnet["planned_from_seconds_per_step"] == results["bf16"]["resnet_steps"]["fp32"][
        "seconds_per_step"]


def test_epochs_are_planned_to_fit_the_budget():
    data = gpu.subset(gpu.DataSplits("x", *[torch.zeros(1000)] * 6, 10, (1,)), 1000, 300)
    # 8 training batches and 5 evaluation batches of 128: 0.1 * (8 + 5 / 3) + 1 s an epoch.
    assert gpu.plan_resnet_epochs(0.1, data, 128, budget=60, most=100) == int(60 // (
        0.1 * (8 + 5 / 3) + 1))
    assert gpu.plan_resnet_epochs(0.1, data, 128, budget=60, most=3) == 3
    assert gpu.plan_resnet_epochs(10.0, data, 128, budget=60, most=3) == 1


def test_prepare_data_copies_what_the_device_machine_reads(tmp_path):
    source = gpu.write_tiny_data(tmp_path / "source")
    sizes = gpu.prepare_data(source, tmp_path / "gpu-data")
    assert len(sizes) == 5 and sum(sizes.values()) < gpu.CARRY_LIMIT
    for name, size in sizes.items():
        assert (tmp_path / "gpu-data" / name).read_bytes() == (source / name).read_bytes()
        assert size == (source / name).stat().st_size
