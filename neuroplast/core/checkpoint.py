"""Width-aware checkpoints: tensors in safetensors, everything else in a JSON manifest.

A checkpoint is a directory holding ``checkpoint.json`` (the manifest: model spec and per-layer
widths, every tensor's shape, optimizer hyper-parameters and scalar state, scheduler state,
random generator states, epoch/step, method state) and one ``tensors-<hash>.safetensors`` file
it names together with its size and SHA-256. The tensors file is written first under a new
name, then the manifest replaces the old one by an atomic rename: a crash at any moment leaves
either the old checkpoint or the new one, never a mix. Loading reads JSON and safetensors only;
nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .groups import layer_widths
from .resize import set_layer_widths

FORMAT = "neuroplast-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, tampered with, or does not fit the model."""


# ----------------------------------------------------------------------------- JSON encoding
def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON-safe form of ``value``; tensors go to ``tensors`` and are referenced by key."""
    if torch.is_tensor(value):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        encoded = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"cannot save key {k!r} under '{key}': keys must be str/int")
            encoded[str(k) if isinstance(k, str) else f"__int__{k}"] = _encode(
                v, tensors, f"{key}.{k}"
            )
        return encoded
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise CheckpointError(
        f"cannot save '{key}' of type {type(value).__name__} in a checkpoint: only tensors, "
        "numbers, strings, lists, tuples and dicts are stored (no pickle)"
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {
            (int(k[7:]) if k.startswith("__int__") else k): _decode(v, tensors)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


# ----------------------------------------------------------------------------- file writing
def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode open() would (umask)
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


# ----------------------------------------------------------------------------- state capture
def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def _optimizer_manifest(
    optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    names = _parameter_names(model)
    groups, state = [], {}
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            if id(param) not in names:
                raise CheckpointError(
                    "the optimizer holds a parameter that is not in the model; save only "
                    "optimizers over the model's own parameters"
                )
            params.append(names[id(param)])
            if optimizer.state.get(param):
                name = names[id(param)]
                state[name] = _encode(dict(optimizer.state[param]), tensors, f"optim/{name}")
        options = {k: v for k, v in group.items() if k != "params"}
        groups.append({"params": params, **_encode(options, tensors, f"optim_group/{len(groups)}")})
    kind = type(optimizer)
    return {"class": f"{kind.__module__}.{kind.__qualname__}", "param_groups": groups,
            "state": state}


def _rng_manifest(
    tensors: dict[str, torch.Tensor], generators: Mapping[str, torch.Generator]
) -> dict[str, Any]:
    tensors["rng/torch"] = torch.get_rng_state()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    manifest = {
        "python": _encode(random.getstate(), tensors, "rng/python"),
        "numpy": [kind, int(position), int(has_gauss), float(cached)],
        "generators": sorted(generators),
    }
    for name, generator in generators.items():
        tensors[f"rng/generator/{name}"] = generator.get_state()
    if torch.cuda.is_available():
        states = torch.cuda.get_rng_state_all()
        manifest["cuda"] = len(states)
        for index, state in enumerate(states):
            tensors[f"rng/cuda/{index}"] = state
    return manifest


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    epoch: int = 0,
    step: int = 0,
    method_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> Path:
    """Save everything needed to continue training ``model`` exactly, atomically.

    Args:
        directory: the checkpoint directory (created if needed; an older checkpoint there is
            replaced only once the new one is complete).
        model: the model; its ``neuroplast_spec`` (set by :func:`neuroplast.build_model`) lets
            :func:`load_checkpoint` rebuild it without help.
        optimizer, scheduler: optional; restored with :meth:`Checkpoint.restore_optimizer` and
            :meth:`Checkpoint.restore_scheduler`.
        method_state: a policy's state: JSON values and tensors (tensors go to safetensors).
        extra: any other JSON-able values (config, history).
        generators: named ``torch.Generator`` objects whose states are saved too.

    Returns the manifest path.
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    state_dict = model.state_dict()
    for name, tensor in state_dict.items():
        tensors[f"model/{name}"] = tensor.detach().cpu().contiguous().clone()
    spec = getattr(model, "neuroplast_spec", None)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": torch.__version__,
        "epoch": int(epoch),
        "step": int(step),
        "model": {
            "spec": _encode(spec, tensors, "spec") if spec is not None else None,
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "widths": layer_widths(model),
            "shapes": {name: list(t.shape) for name, t in state_dict.items()},
        },
        "optimizer": _optimizer_manifest(optimizer, model, tensors) if optimizer else None,
        "scheduler": None,
        "rng": _rng_manifest(tensors, generators or {}),
        "method": _encode(dict(method_state or {}), tensors, "method"),
        "extra": _encode(dict(extra or {}), tensors, "extra"),
    }
    if scheduler is not None:
        manifest["scheduler"] = {
            "class": type(scheduler).__qualname__,
            "state": _encode(scheduler.state_dict(), tensors, "scheduler"),
        }
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    tensors_file = f"tensors-{digest[:16]}.safetensors"
    write_atomic(directory / tensors_file, data)
    manifest.update(tensors_file=tensors_file, tensors_sha256=digest, tensors_bytes=len(data))
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    manifest_path = directory / MANIFEST
    write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
    for old in directory.glob("tensors-*.safetensors"):
        if old.name != tensors_file:
            old.unlink(missing_ok=True)
    return manifest_path


# ----------------------------------------------------------------------------- loading
@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model plus the state to restore around it."""

    model: nn.Module
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def epoch(self) -> int:
        return self.manifest["epoch"]

    @property
    def step(self) -> int:
        return self.manifest["step"]

    @property
    def method_state(self) -> dict[str, Any]:
        """The policy state given to :func:`save_checkpoint` (tensors restored as tensors)."""
        return _decode(self.manifest["method"], self.tensors)

    @property
    def extra(self) -> dict[str, Any]:
        return _decode(self.manifest["extra"], self.tensors)

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Load the saved optimizer state into ``optimizer``, built over ``self.model``.

        Parameters are matched by name, so the optimizer's param groups must hold the same
        parameters as the saved one's (in any order within a group).
        """
        saved = self.manifest.get("optimizer")
        if saved is None:
            raise CheckpointError("this checkpoint holds no optimizer state")
        names = _parameter_names(self.model)
        current = [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]
        saved_groups = [group["params"] for group in saved["param_groups"]]
        if [sorted(map(str, g)) for g in current] != [sorted(g) for g in saved_groups]:
            raise CheckpointError(
                "the optimizer's param groups do not match the checkpoint's: build it over the "
                "loaded model's parameters with the same grouping"
            )
        # torch pairs saved and current parameters by position, so number them in the
        # optimizer's own order and take only the hyper-parameters from the saved groups.
        index = {name: i for i, name in enumerate(n for group in current for n in group)}
        param_groups = []
        for names_now, group in zip(current, saved["param_groups"], strict=True):
            options = _decode({k: v for k, v in group.items() if k != "params"}, self.tensors)
            param_groups.append({**options, "params": [index[n] for n in names_now]})
        state = {
            index[name]: _decode(value, self.tensors) for name, value in saved["state"].items()
        }
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        return optimizer

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Recreate the saved ``torch.optim`` optimizer over ``self.model`` with its state."""
        saved = self.manifest.get("optimizer")
        if saved is None:
            raise CheckpointError("this checkpoint holds no optimizer state")
        module, _, name = saved["class"].rpartition(".")
        if not module.startswith("torch.optim") or not hasattr(torch.optim, name):
            raise CheckpointError(
                f"optimizer {saved['class']} is not a torch.optim class; build it yourself and "
                "call restore_optimizer(optimizer)"
            )
        params = dict(self.model.named_parameters())
        groups = []
        for group in saved["param_groups"]:
            options = _decode({k: v for k, v in group.items() if k != "params"}, self.tensors)
            groups.append({**options, "params": [params[n] for n in group["params"]]})
        return self.restore_optimizer(getattr(torch.optim, name)(groups))

    def restore_scheduler(self, scheduler: Any) -> Any:
        """Load the saved learning-rate scheduler state into ``scheduler``."""
        saved = self.manifest.get("scheduler")
        if saved is None:
            raise CheckpointError("this checkpoint holds no scheduler state")
        scheduler.load_state_dict(_decode(saved["state"], self.tensors))
        milestones = getattr(scheduler, "milestones", None)
        if isinstance(milestones, dict) and not isinstance(milestones, Counter):
            scheduler.milestones = Counter(milestones)  # MultiStepLR counts them (JSON: a dict)
        return scheduler

    def restore_rng(self, generators: Mapping[str, torch.Generator] | None = None) -> None:
        """Put the global random generators (and the named ``generators``) back as saved."""
        rng = self.manifest["rng"]
        torch.set_rng_state(self.tensors["rng/torch"])
        kind, position, has_gauss, cached = rng["numpy"]
        keys = self.tensors["rng/numpy"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, position, has_gauss, cached))
        version, internal, gauss = _decode(rng["python"], self.tensors)
        random.setstate((version, tuple(internal), gauss))
        for name, generator in (generators or {}).items():
            key = f"rng/generator/{name}"
            if key not in self.tensors:
                raise CheckpointError(f"this checkpoint holds no state for generator '{name}'")
            generator.set_state(self.tensors[key])
        if torch.cuda.is_available() and "cuda" in rng:
            # A machine with fewer GPUs than the one that saved restores the ones it has.
            count = min(rng["cuda"], torch.cuda.device_count())
            torch.cuda.set_rng_state_all([self.tensors[f"rng/cuda/{i}"] for i in range(count)])


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's content (without this digest), independent of key order and
    layout, so that a manifest edited by hand is caught like a modified tensors file."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {directory}: expected the manifest {path} (a run directory keeps "
            "its checkpoint in <run>/checkpoint)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"checkpoint manifest {path} is corrupt or truncated ({error}); the checkpoint "
            "cannot be used"
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a neuroplast checkpoint manifest")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer neuroplast (format {manifest['version']}); "
            "upgrade neuroplast to read it"
        )
    # Every manifest this format version writes carries its digest: a missing one is an edit.
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise CheckpointError(
            f"checkpoint manifest {path} fails its SHA-256 check: it was edited or corrupted "
            "after it was written, so the checkpoint cannot be used"
        )
    return manifest


def _read_tensors(directory: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = directory / manifest["tensors_file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint tensors file {path} is missing")
    data = path.read_bytes()
    if len(data) != manifest["tensors_bytes"]:
        raise CheckpointError(
            f"checkpoint tensors file {path} is truncated or padded: expected "
            f"{manifest['tensors_bytes']} bytes, found {len(data)}"
        )
    if hashlib.sha256(data).hexdigest() != manifest["tensors_sha256"]:
        raise CheckpointError(
            f"checkpoint tensors file {path} fails its SHA-256 check: it was modified or "
            "corrupted after it was written"
        )
    try:
        return safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(
            f"checkpoint tensors file {path} cannot be parsed: {error}"
        ) from error


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None
) -> Checkpoint:
    """Load a checkpoint directory (or its ``checkpoint.json``), rebuilding the model's widths.

    Without ``model``, the model is rebuilt from the saved spec (models made with
    :func:`neuroplast.build_model`). With ``model``, that model (any widths) is resized to the
    saved widths and loaded in place.

    Example::

        ckpt = load_checkpoint("runs/mnist/checkpoint")
        optimizer = ckpt.build_optimizer()
    """
    directory = Path(path)
    if directory.name == MANIFEST:
        directory = directory.parent
    manifest = _read_manifest(directory)
    tensors = _read_tensors(directory, manifest)
    if model is None:
        spec = manifest["model"]["spec"]
        if spec is None:
            raise CheckpointError(
                f"checkpoint holds a {manifest['model']['class']} that was not built with "
                "neuroplast.build_model; pass model= (a fresh instance at any widths)"
            )
        from ..models import model_from_spec  # models build on core, not the other way

        model = model_from_spec(_decode(spec, tensors))
        model.neuroplast_spec = _decode(spec, tensors)
    try:
        set_layer_widths(model, manifest["model"]["widths"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"the model cannot take the checkpoint's widths: {error}") from error
    expected = manifest["model"]["shapes"]
    actual = {name: list(t.shape) for name, t in model.state_dict().items()}
    if expected != actual:
        diff = sorted(set(expected) ^ set(actual)) or [
            f"{n}: saved {expected[n]} vs model {actual[n]}"
            for n in expected if expected[n] != actual[n]
        ]
        hint = ""
        if set(expected) - set(actual):
            hint = (" (the saved model holds more tensors: a training method added modules to "
                    "it, such as NPN's or L0's gates; neuroplast.train.run.load_run_model(run_dir)"
                    " rebuilds such a run's model, compacted)")
        raise CheckpointError(f"checkpoint does not fit the model: {diff[:5]}{hint}")
    state = {name[len("model/"):]: t for name, t in tensors.items() if name.startswith("model/")}
    model.load_state_dict(state, strict=True)
    return Checkpoint(model=model, manifest=manifest, tensors=tensors)
