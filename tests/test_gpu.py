"""Training on a GPU (issue 29): resizes, checkpoints, device-resident data and bf16 autocast.

Each check runs on CUDA where there is a device (``benchmarks/gpu_check.sh`` runs this file on
one; the CUDA cases skip elsewhere) and has a CPU case that runs everywhere against an
independent computation: float64 arithmetic, the state captured before a resize, a checkpoint
compared with the live run it was written from, the same step in float32.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from run_helpers import epoch_metrics
from torch.utils._python_dispatch import TorchDispatchMode

from neuroplast import build_model, find_unit_groups, grow_units, prune_units, split_units
from neuroplast.data import DataSplits, load_dataset
from neuroplast.methods import NPN, FixedWidth
from neuroplast.train import Callback, TrainConfig, Trainer
from neuroplast.train.run import RunConfig, resume_run, train_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu import use_autocast  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def full_float32():
    """CUDA in true float32 (no TF32 convolutions or matrix products), so it can match the
    CPU to float tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --------------------------------------------------------------- a resize with Adam state
def _adam_state(model, optimizer):
    return {name: {key: value.detach().clone() for key, value in optimizer.state[p].items()}
            for name, p in model.named_parameters()}


def _resize_and_train(device, dtype, draws=True):
    """LeNet-5 under Adam: three steps; conv1 pruned, conv2 grown, fc1 split (the optimizer
    state following each); three more steps. Returns the parameters, the Adam state, and the
    state of conv1's weight before and after the prune.

    With ``draws`` the new units' values come from seeded CPU generators (the same on every
    device, but not in every dtype); without, they are given as float32 numbers, and the split
    copies exactly."""
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 28, 28, generator=generator),
                torch.randint(0, 10, (16,), generator=generator)) for _ in range(6)]

    def train(part):
        for x, y in part:
            optimizer.zero_grad()
            F.cross_entropy(model(x.to(device, dtype)), y.to(device)).backward()
            optimizer.step()

    train(batches[:3])
    assert list(find_unit_groups(model)) == ["conv1", "conv2", "fc1"]
    before = _adam_state(model, optimizer)["conv1.weight"]
    prune_units(model, "conv1", [0, 3, 4, 9, 17], optimizer=optimizer)
    after = _adam_state(model, optimizer)["conv1.weight"]
    if draws:
        grow_units(model, "conv2", 3, optimizer=optimizer,
                   generator=torch.Generator().manual_seed(2))
    else:
        fan_in = torch.randn(3, 5, 5, 5, generator=generator) * 0.05
        grow_units(model, "conv2", 3, fan_in=fan_in.to(device, dtype), optimizer=optimizer,
                   bias=torch.zeros(3, device=device, dtype=dtype))
    split_units(model, "fc1", [0, 5, 7], noise_std=0.1 if draws else 0.0, optimizer=optimizer,
                generator=torch.Generator().manual_seed(3))
    train(batches[3:])
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    parameters = {name: p.detach().cpu().double() for name, p in model.named_parameters()}
    state = {name: {key: value.cpu().double() for key, value in values.items()}
             for name, values in _adam_state(model, optimizer).items()}
    return parameters, state, before, after


def _assert_same_training(ours, reference, rtol=1e-3, atol=1e-4):
    """Parameters within a tenth of Adam's learning rate (its normalized step turns rounding
    in a gradient near zero into up to a whole step), moments relative to their size."""
    parameters, state = ours[:2]
    assert parameters.keys() == reference[0].keys()
    assert parameters["conv1.weight"].shape[0] == 5 and parameters["fc1.weight"].shape[0] == 503
    for name in parameters:
        torch.testing.assert_close(parameters[name], reference[0][name], rtol=rtol, atol=atol)
        for key in ("exp_avg", "exp_avg_sq"):
            expected = reference[1][name][key]
            scale = expected.abs().max().item()  # Adam's moments: compared to their own size
            torch.testing.assert_close(state[name][key], expected, rtol=rtol,
                                       atol=atol * scale, msg=f"{name} {key}")
        assert state[name]["step"].item() == reference[1][name]["step"].item() == 6


def _assert_prune_kept_the_rows(run):
    before, after = run[2], run[3]
    keep = torch.tensor([0, 3, 4, 9, 17], device=before["exp_avg"].device)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(after[key], before[key].index_select(0, keep)), key


def test_a_resize_with_adam_state_in_float32_matches_float64():
    ours = _resize_and_train("cpu", torch.float32, draws=False)
    _assert_prune_kept_the_rows(ours)
    reference = _resize_and_train("cpu", torch.float64, draws=False)
    _assert_same_training(ours, reference)


@CUDA
def test_a_resize_with_adam_state_on_cuda_matches_the_cpu(full_float32):
    ours = _resize_and_train("cuda", torch.float32)
    _assert_prune_kept_the_rows(ours)
    _assert_same_training(ours, _resize_and_train("cpu", torch.float32))


# --------------------------------------------------------------- checkpoints across devices
def _state(trainer):
    """The model's and the optimizer's tensors, on the CPU."""
    tensors = {f"model/{k}": v.detach().cpu().clone() for k, v in
               trainer.model.state_dict().items()}
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    for p, values in trainer.optimizer.state.items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{names[id(p)]}/{key}"] = value.detach().cpu().clone()
    return tensors


class _PauseAndCompare(Callback):
    """Records the state a (resumed) run starts from, and stops it before batch ``batch`` of
    epoch ``epoch`` (as Ctrl-C would) keeping the state the checkpoint must then hold."""

    def __init__(self, epoch=None, batch=None):
        self.epoch, self.batch, self.seen = epoch, batch, 0
        self.start = self.pause = None

    def on_train_begin(self, trainer):
        self.start = (_state(trainer), trainer.step, trainer.device.type,
                      {p.device.type for p in trainer.model.parameters()})

    def on_epoch_begin(self, trainer, epoch):
        self.seen = 0

    def on_batch_begin(self, trainer, inputs, targets):
        self.seen += 1
        if (trainer.epoch + 1, self.seen) == (self.epoch, self.batch):
            self.pause = (_state(trainer), trainer.step)
            raise KeyboardInterrupt


def _assert_resumed_from(pause, start, device):
    saved, step = pause
    resumed, resumed_step, trainer_device, parameter_devices = start
    assert (trainer_device, parameter_devices) == (device, {device})
    assert resumed_step == step
    assert saved.keys() == resumed.keys()
    for name in saved:
        assert torch.equal(saved[name], resumed[name]), name


@pytest.mark.parametrize("devices", [
    pytest.param(("cpu", "cpu", "cpu"), id="cpu-cpu-cpu"),
    pytest.param(("cuda", "cpu", "cuda"), marks=CUDA, id="cuda-cpu-cuda"),
])
def test_a_checkpoint_resumes_on_another_device_and_back(tmp_path, devices):
    first, second, third = devices
    config = RunConfig(method="npn", model="mlp", dataset="digits", widths=[24],
                       out=str(tmp_path / "run"),
                       method_options={"k_schedule": "1:7", "lambdas": [1e-3], "gate_lr": 1e-3,
                                       "adaptive": False, "lambda_unit": "weight"},
                       train=TrainConfig(epochs=3, batch_size=64, device=first, progress=False))
    one = _PauseAndCompare(epoch=1, batch=6)
    assert train_run(config, callbacks=[one])["epochs"] == 0
    two = _PauseAndCompare(epoch=2, batch=4)
    resume_run(tmp_path / "run", callbacks=[two], device=second)
    _assert_resumed_from(one.pause, two.start, second)
    three = _PauseAndCompare()
    summary = resume_run(tmp_path / "run", callbacks=[three], device=third)
    _assert_resumed_from(two.pause, three.start, third)
    rows = epoch_metrics(tmp_path / "run")
    assert summary["epochs"] == len(rows) == 3 and summary["stopped_early"] is None
    assert all(0 < row["train_loss"] < 10 and row["test_accuracy"] > 0.5 for row in rows[1:])


# --------------------------------------------------------------- data kept on the device
def test_data_moved_with_to_keeps_every_split_and_the_original():
    data = load_dataset("digits")
    moved = data.to("meta")
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        tensor, original = getattr(moved, name), getattr(data, name)
        assert tensor.device.type == "meta" and original.device.type == "cpu", name
        assert tensor.shape == original.shape and tensor.dtype == original.dtype, name
    assert (moved.input_shape, moved.num_classes, moved.input_mean) == (
        data.input_shape, data.num_classes, data.input_mean)
    assert data.nbytes == sum(t.numel() * t.element_size() for t in (
        data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test))


class _HostCopies(TorchDispatchMode):
    """Counts copies from the CPU to another device of at least ``size`` elements."""

    def __init__(self, size):
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        copies = {torch.ops.aten._to_copy.default: 0, torch.ops.aten.copy_.default: 1}
        if func in copies:
            source = args[copies[func]]
            if (torch.is_tensor(source) and source.device.type == "cpu"
                    and out.device.type != "cpu" and source.numel() >= self.size):
                self.count += 1
        return out


def _fit(data: DataSplits, device: str, copies: _HostCopies):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[32])
    trainer = Trainer(model, data, FixedWidth(), TrainConfig(
        epochs=2, batch_size=64, device=device, progress=False))
    with copies:
        return trainer.fit()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_training_on_data_moved_to_the_device_matches_host_data_without_copies(device):
    data = load_dataset("digits")
    batch_elements = 64 * data.x_train[0].numel()
    host_copies, device_copies = _HostCopies(batch_elements), _HostCopies(batch_elements)
    host = _fit(data, device, host_copies)
    resident = _fit(data.to(device), device, device_copies)
    assert device_copies.count == 0
    if device != "cpu":  # host data: (at least) every full batch of every epoch is copied
        assert host_copies.count >= 2 * (len(data.y_train) // 64) > 0
    for ours, theirs in zip(resident, host, strict=True):
        for key in ("train_loss", "val_loss", "test_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key


# --------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_an_npn_lenet5_step_under_bf16_autocast_matches_float32(device):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (96,), generator=generator)
    data = DataSplits("noise", x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], 10,
                      (1, 28, 28))
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    method = NPN(k_schedule="1:7", lambdas=(1e-4,), lambda_unit="weight")
    trainer = Trainer(model, data, method, TrainConfig(epochs=1, batch_size=32, device=device,
                                                       progress=False))
    method.on_train_begin(trainer)
    method.on_epoch_begin(trainer, 1)
    inputs, targets = x[:32].to(device), y[:32].to(device)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same gate draws for both
        for p in model.parameters():
            p.grad = None
        step = method.training_loss if precision == "fp32" else use_autocast(
            method, torch.device(device).type).training_loss
        loss, logits = step(trainer, inputs, targets)
        loss.backward()
        weights = torch.cat([p.grad.flatten() for name, p in model.named_parameters()
                             if not name.endswith("phi")])
        phis = torch.cat([gate.phi.grad.flatten() for gate in (
            layer.gate for layer in method._layers)])  # ARM's estimate, and the L0 term
        results[precision] = (loss.detach(), logits.detach(), weights, phis)
    (loss32, logits32, *grads32), (loss16, logits16, *grads16) = results.values()
    assert logits16.dtype == loss16.dtype == torch.float32
    assert (logits16 - logits32).norm() / logits32.norm() < 3e-2
    assert (loss16 - loss32).abs() / loss32.abs() < 3e-2
    assert not torch.equal(logits16, logits32)  # autocast did run in bf16
    # bf16 rounding, through the backward too: about 5 % of an untrained net's gradients.
    for grad16, grad32 in zip(grads16, grads32, strict=True):
        assert torch.isfinite(grad16).all()
        assert (grad16 - grad32).norm() / grad32.norm() < 0.1
    history = trainer.fit()  # whole epochs under autocast: finite, and the gates learn
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))
    assert all(gate.phi.grad is not None for gate in (layer.gate for layer in method._layers))
