"""Data-parallel training of self-sizing networks with PyTorch's DistributedDataParallel.

A network that changes shape breaks two assumptions of plain DDP: its gradient buckets are
fixed when the model is wrapped, and nothing checks that every rank took the same structural
decision. The trainer keeps both true with this module:

* every rank draws the same global batch order (one shared seed) and trains on its own
  interleaved share of each global batch, which is what ``DistributedSampler`` gives with a
  per-rank batch of ``batch_size / world_size``; each rank's loss is weighted by its share, so
  DDP's average is the global batch's mean gradient, as in one process;
* every number a policy decides from (training loss, evaluation, activation statistics) is
  all-reduced, and the global random generator is kept in step, so each rank computes the
  same decision from the same inputs;
* at every point where a policy may resize the model, a fingerprint of the architecture is
  compared across ranks (one small all-reduce per step); after a resize, and at every epoch
  end, every parameter and buffer is compared too. A mismatch stops training with
  :class:`RanksDisagree` naming the first difference; then the model is re-wrapped.

Launch with ``torchrun --nproc_per_node N -m neuroplast train ... --distributed`` or, on one
machine, ``neuroplast train ... --nproc-per-node N`` (which starts torchrun itself).
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """Distributed training cannot go on; the message says why and what to do."""


class RanksDisagree(DistributedError):
    """Ranks hold different architectures or parameters after a structural decision."""


class RankFailed(DistributedError):
    """Another rank stopped (crashed, was killed, timed out) while this one waited for it."""


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (its rendezvous variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def _crc(data: bytes, value: int = 0) -> int:
    return zlib.crc32(data, value)


def structure_fingerprint(model: nn.Module) -> int:
    """A 32-bit checksum of every parameter's and buffer's name, shape and trainability."""
    text = ";".join(
        f"{name}:{tuple(tensor.shape)}:{int(tensor.requires_grad)}"
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    )
    return _crc(text.encode())


def state_fingerprints(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Names and a CRC-32 of the exact bytes of every parameter and buffer."""
    names, sums = [], []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        data = tensor.detach().cpu().contiguous()
        names.append(name)
        sums.append(_crc(data.reshape(-1).view(torch.uint8).numpy().tobytes()
                         if data.numel() else b""))
    return names, torch.tensor(sums, dtype=torch.int64)


def identity_key(model: nn.Module) -> tuple:
    """Which parameter objects the model holds, and their shapes: changes with every resize."""
    return tuple((id(p), tuple(p.shape), p.requires_grad) for p in model.parameters())


class SingleProcess:
    """The strategy of a run in one process: every collective is the identity, no wrapper, no
    agreement to check. It has :class:`DistributedContext`'s interface, so the training loop
    calls the same methods whatever the strategy and holds no branch on it."""

    rank, world_size, is_main = 0, 1, True
    #: A diverged loss stops before the optimizer steps, and Ctrl-C is held to the end of the
    #: running batch, whose position is saved (ranks instead stop together at agreed points).
    stops_alone = True

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_rng_(self) -> None:
        pass

    def broadcast_buffers_(self, model: nn.Module) -> None:
        pass

    def check_device(self, device: torch.device) -> None:
        pass

    def training_model(self, model: nn.Module) -> nn.Module:
        return model

    def agree(self, model: nn.Module, where: str, full: bool = False,
              diverged: bool = False) -> bool:
        return diverged

    def failure(self, error: RuntimeError, epoch: int) -> DistributedError | None:
        return None


@dataclass
class DistributedContext:
    """This process's place in a process group, and the collectives the trainer needs."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    stops_alone = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and reports."""
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's interleaved share of a global batch (``rows[rank::world_size]``)."""
        return rows[self.rank :: self.world_size]

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place (moved to the backend's device and back)."""
        work = tensor.to(self.device)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` on every rank with rank ``source``'s, in place."""
        work = tensor.to(self.device)
        dist.broadcast(work, src=source)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def sync_rng_(self) -> None:
        """Give every rank rank 0's global random state, so policy draws stay identical."""
        state = torch.get_rng_state()
        torch.set_rng_state(self.broadcast_(state.clone()))

    def broadcast_buffers_(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics, each rank's own so far) everywhere."""
        for buffer in model.buffers():
            self.broadcast_(buffer.data)

    # ------------------------------------------------------------------ agreement
    def check_structure(
        self, model: nn.Module, where: str, changed: bool = False, diverged: bool = False
    ) -> tuple[bool, bool]:
        """Compare architectures across ranks; returns (any rank changed, any rank diverged).

        One all-reduce of four integers: the architecture fingerprint and its negation under
        MAX differ exactly when some rank's fingerprint differs; the flags are OR-ed.
        """
        fingerprint = structure_fingerprint(model)
        flags = torch.tensor([fingerprint, -fingerprint, int(changed), int(diverged)],
                             dtype=torch.int64)
        work = flags.to(self.device)
        dist.all_reduce(work, op=dist.ReduceOp.MAX)
        high, negated_low, any_changed, any_diverged = (int(v) for v in work.cpu())
        if high != -negated_low:
            self._raise_structure_mismatch(model, where)
        return bool(any_changed), bool(any_diverged)

    def _raise_structure_mismatch(self, model: nn.Module, where: str) -> None:
        shapes = torch.tensor([structure_fingerprint(model)], dtype=torch.int64)
        gathered = [torch.zeros_like(shapes) for _ in range(self.world_size)]
        dist.all_gather(gathered, shapes.to(self.device))
        from .core.groups import layer_widths

        widths = layer_widths(model) if _has_groups(model) else {}
        raise RanksDisagree(
            f"rank {self.rank}: the ranks hold different architectures {where} (architecture "
            f"checksums by rank: {[int(t) for t in gathered]}; this rank's widths: {widths}). "
            "A structural decision was computed from rank-local numbers; take it from "
            "all-reduced statistics (trainer.all_reduce_sum_) or from rank 0. The last "
            "checkpoint is kept."
        )

    def check_state(self, model: nn.Module, where: str) -> None:
        """Compare every parameter and buffer bit for bit across ranks."""
        names, sums = state_fingerprints(model)
        gathered = [torch.zeros_like(sums) for _ in range(self.world_size)]
        dist.all_gather(gathered, sums.to(self.device))
        for rank, other in enumerate(gathered):
            differing = (other.cpu() != sums).nonzero().flatten().tolist()
            if differing:
                listed = ", ".join(names[i] for i in differing[:5])
                raise RanksDisagree(
                    f"rank {self.rank}: rank {rank} holds different values {where} in "
                    f"{len(differing)} tensors ({listed}). Every rank must apply the same "
                    "update: decisions and random draws must come from all-reduced "
                    "statistics or rank 0. The last checkpoint is kept."
                )

    def agree(self, model: nn.Module, where: str, full: bool = False,
              diverged: bool = False) -> bool:
        """Check that the ranks hold the same model after a point a policy may act.

        Cheap (one small all-reduce) unless some rank's parameters changed or ``full``; then
        every parameter and buffer is compared too. Returns whether any rank's loss
        ``diverged``, so all ranks stop together.
        """
        key = identity_key(model)
        changed, diverged = self.check_structure(
            model, where, changed=key != getattr(self, "_checked_key", None), diverged=diverged)
        if diverged:
            return True  # NaN parameters compare unequal; the run stops anyway
        if changed or full:
            self.check_state(model, where)
        self._checked_key = key
        return False

    def check_device(self, device: torch.device) -> None:
        """Refuse a device the process group cannot train on."""
        if device.type != "cpu":
            raise ValueError("distributed training runs on the CPU for now (gloo); "
                             f"--device {device} with --distributed is not supported")

    def failure(self, error: RuntimeError, epoch: int) -> DistributedError | None:
        """The error to raise for a collective that failed because a peer stopped, or None
        for any other error (raised as it is)."""
        if isinstance(error, DistributedError) or not communication_failed(error):
            return None
        return RankFailed(
            f"rank {self.rank}: another rank stopped answering during epoch {epoch} "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). The last checkpoint "
            "rank 0 wrote is kept: `neuroplast resume` continues it, with any number of ranks")

    # ------------------------------------------------------------------ wrapping
    def training_model(self, model: nn.Module) -> nn.Module:
        """The DDP wrapper of ``model``, rebuilt whenever a resize replaced parameters or one
        started or stopped learning (NPN's phi), so gradient buckets always match."""
        key = identity_key(model)
        if getattr(self, "_wrapped_key", None) != key:
            self._wrapper = None  # release the old reducer's hooks before the new one is built
            self._wrapper = self.wrap(model)
            self._wrapped_key = key
        return self._wrapper

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """A fresh DDP wrapper over the model's current parameters (every gradient, NPN's
        gates' included, reaches them through autograd, so DDP averages them all)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the process group, once every rank is done with it."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def communication_failed(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective that failed because a peer went away or timed out."""
    distributed_error = getattr(torch.distributed, "DistError", ())
    if distributed_error and isinstance(error, distributed_error):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "peer"))


def exit_process(code: int) -> NoReturn:
    """End this rank's process now with exit status ``code``, skipping the group's teardown.

    gloo's teardown (``destroy_process_group``, or the interpreter's exit) can abort with a C++
    ``terminate`` when the ranks reach it at different moments or a peer is gone, which would
    turn a finished run into a failed one. The command line calls this once its work is on
    disk: after a barrier when the run succeeded, after reporting the error when it failed.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _has_groups(model: nn.Module) -> bool:
    try:
        from .core.groups import layer_widths

        layer_widths(model)
        return True
    except Exception:  # noqa: BLE001 - only for the error message
        return False


def check_backend(backend: str | None) -> str:
    """The backend to use (``gloo`` by default), or a clear error for one that cannot work."""
    backend = backend or "gloo"
    if backend not in ("gloo", "nccl"):
        raise DistributedError(f"unknown distributed backend '{backend}'; choose gloo or nccl")
    if backend == "nccl":
        # NCCL reduces CUDA tensors only; data-parallel training keeps the model on the CPU
        # (the collectives for statistics and checks have not been verified on a GPU).
        raise DistributedError(
            "the nccl backend needs the model and data on GPUs, and neuroplast's data-parallel "
            "training runs on the CPU (GPU training is not supported yet with --distributed; "
            "--device cuda trains on one GPU): use --dist-backend gloo")
    return backend


def init_distributed(backend: str | None = None, timeout_s: float = 300.0) -> DistributedContext:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ... in the environment).

    ``backend``: ``gloo`` (the default; CPU tensors). ``nccl`` is refused with an explanation
    until the trainer can place models on GPUs. ``timeout_s`` bounds how long a rank waits for
    a silent peer.
    """
    if not launched_by_torchrun():
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        raise DistributedError(
            f"--distributed needs the process group variables torchrun sets (missing: "
            f"{', '.join(missing)}): launch with `torchrun --nproc_per_node N -m neuroplast "
            "train ...`, or add --nproc-per-node N to let neuroplast start torchrun itself"
        )
    backend = check_backend(backend)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")  # gloo: data-parallel training keeps the model on the CPU
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=local_rank, backend=backend, device=device)


def launch_local(nproc: int, arguments: Sequence[str]) -> int:
    """Run ``python -m neuroplast <arguments>`` in ``nproc`` processes through torchrun.

    torchrun's agent watches the workers: when one fails it stops the others and reports
    which rank failed first. Returns the exit status (0 when every rank succeeded).
    """
    if nproc < 1:
        raise DistributedError(f"--nproc-per-node must be >= 1, got {nproc}")
    from torch.distributed import run as torchrun

    # torchrun gives each worker one thread unless told; say it, so it need not warn.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "-m", "neuroplast", *arguments]
    try:
        torchrun.main(argv)
    except SystemExit as stop:  # torchrun exits on its own errors (bad arguments)
        return int(stop.code or 0)
    except Exception as error:  # noqa: BLE001 - torchrun's ChildFailedError carries the report
        if hasattr(error, "get_first_failure"):  # torchrun's ChildFailedError
            first_rank, failure = error.get_first_failure()  # the earliest, not a victim
            raise DistributedError(
                f"rank {first_rank} failed (exit code {failure.exitcode}); its error is "
                "printed above. The last checkpoint is kept: `neuroplast resume RUN_DIR "
                "--distributed` continues with any number of ranks"
            ) from None
        raise
    return 0
