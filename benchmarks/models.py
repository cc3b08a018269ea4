"""Unit groups of real models, and a 25 % cut of every one, next to Torch-Pruning.

    python -m benchmarks.models                     # every zoo model at its real size: minutes
    python -m benchmarks.models --only resnet18,hf-bert --force
    python -m benchmarks.models --tiny --out /tmp/models.json   # the zoo's tiny configurations

For each model of ``benchmarks/zoo.py`` (at the size :func:`benchmarks.zoo.full_size` builds,
or the tiny test configuration with ``--tiny``):

1. ``trace_unit_groups`` on its example input (timed): the groups found, by kind (units,
   residual stream, attention heads), and the parameter dimensions reported as blocked;
2. **neuroplast**: every group cut by 25 % with ``graph.prune``, keeping its first
   ``ceil(0.75 * width)`` units; parameters and MACs before and after;
3. **Torch-Pruning** on a copy of the same model: ``MetaPruner`` with ``MagnitudeImportance``,
   ``pruning_ratio=0.25``, the final classifier ignored, ``num_heads`` for attention, one step;
   its group count (``DG.get_all_groups`` over Conv2d and Linear roots), parameters and MACs
   after, or the first line of its error where it fails.

MACs are those of the dense layers (``nn.Linear``, ``nn.Conv2d``, Hugging Face ``Conv1D``) in
one forward pass at batch 1, counted by :func:`count_macs` for both libraries alike; attention's
own matrix products are not counted. Results go to ``benchmarks/results/models.json`` (one
entry per model; models already there are skipped unless ``--force``) and a Markdown table,
``models.md`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import importlib.metadata
import json
import math
import signal
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.core import write_json_atomic
from benchmarks.zoo import FULL_SIZE, ZOO, full_size
from neuroplast import trace_unit_groups
from neuroplast.core.count import _macs

OUT = Path("benchmarks/results/models.json")
PEER_SECONDS = 180  # Torch-Pruning's dependency graph of the 58M Llama ran for over 10 minutes
KEEP = 0.75


def _call(model: nn.Module, example: Any) -> Any:
    if isinstance(example, dict):
        return model(**example)
    return model(*example) if isinstance(example, tuple) else model(example)


def _first(example: Any) -> Any:
    """The example cut to its first item along the batch dimension."""
    if isinstance(example, dict):
        return {key: value[:1] for key, value in example.items()}
    if isinstance(example, tuple):
        return tuple(value[:1] for value in example)
    return example[:1]


def count_params(model: nn.Module) -> int:
    """Parameters, a tied one counted once."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of every ``nn.Linear``, ``nn.Conv*`` and Hugging Face ``Conv1D``
    (weight ``[in, out]``) in one forward pass of ``example`` cut to batch 1."""
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if type(module).__name__ == "Conv1D":
            total += output[0].numel() * module.weight.shape[0]
        else:
            total += _macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
               or type(m).__name__ == "Conv1D"]
    try:
        with torch.no_grad():
            _call(model.eval(), _first(example))
    finally:
        for handle in handles:
            handle.remove()
    return total


def neuroplast_cut(model: nn.Module, example: Any) -> dict[str, Any]:
    """Trace ``model`` and cut every group to ``ceil(0.75 * width)`` units, in place."""
    started = time.perf_counter()
    graph = trace_unit_groups(model, example)
    trace_seconds = time.perf_counter() - started
    kinds = [group.kind for group in graph.groups.values()]
    before = graph.widths()
    started = time.perf_counter()
    for name, width in before.items():
        graph.prune(name, range(math.ceil(KEEP * width)))
    prune_seconds = time.perf_counter() - started
    return {"groups": len(kinds), **{kind: kinds.count(kind) for kind in
                                     ("units", "stream", "heads")},
            "blocked": len(graph.blocked), "blocked_reasons": graph.blocked,
            "widths": {name: [width, graph.groups[name].width] for name, width in before.items()},
            "trace_seconds": round(trace_seconds, 3), "prune_seconds": round(prune_seconds, 3),
            "params_after": count_params(model), "macs_after": count_macs(model, example)}


def _logits(output: Any) -> Any:
    return output if torch.is_tensor(output) else output["logits"]


def torch_pruning_cut(model: nn.Module, example: Any) -> dict[str, Any]:
    """Torch-Pruning's one-step 25 % magnitude pruning of ``model``, in place."""
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    num_heads: dict[nn.Module, int] = {}
    for module in model.modules():
        if isinstance(getattr(module, "query", None), nn.Linear):  # HF BERT / ViT attention
            for part in (module.query, module.key, module.value):
                num_heads[part] = module.num_attention_heads
        elif isinstance(getattr(module, "qkv", None), nn.Linear):  # timm-style packed qkv
            num_heads[module.qkv] = module.num_heads
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.25,
        global_pruning=False, ignored_layers=[classifier], num_heads=num_heads,
        output_transform=_logits)
    groups = len(list(pruner.DG.get_all_groups(ignored_layers=[classifier],
                                               root_module_types=[nn.Conv2d, nn.Linear])))
    pruner.step()
    for module in model.modules():  # the head sizes the forward pass reads, as TP's examples do
        layer, packed = getattr(module, "query", None), False
        if not isinstance(layer, nn.Linear):
            layer, packed = getattr(module, "qkv", None), True
        if layer not in num_heads:
            continue
        heads = pruner.num_heads.get(layer, num_heads[layer])
        size = layer.out_features // heads // (3 if packed else 1)
        for attribute, value in (("num_attention_heads", heads), ("num_heads", heads),
                                 ("attention_head_size", size), ("head_dim", size),
                                 ("all_head_size", heads * size), ("scaling", size ** -0.5)):
            if hasattr(module, attribute):
                setattr(module, attribute, value)
    return {"groups": groups, "params_after": count_params(model),
            "macs_after": count_macs(model, example)}


def measure(name: str, tiny: bool) -> dict[str, Any]:
    """Groups, parameters and MACs of one zoo model before and after both 25 % cuts."""
    torch.manual_seed(0)
    model, example = ZOO[name][0]() if tiny else full_size(name)
    model.eval()
    record: dict[str, Any] = {
        "model": name, "config": ZOO[name][1] if tiny else FULL_SIZE[name],
        "params_before": count_params(model), "macs_before": count_macs(model, example)}
    peer = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record["neuroplast"] = neuroplast_cut(model, example)
        try:
            with _time_limit(PEER_SECONDS):
                record["torch_pruning"] = torch_pruning_cut(peer, example)
        except TimeoutError:
            record["torch_pruning"] = {
                "error": f"did not finish within {PEER_SECONDS} s on this CPU"}
        except ImportError as error:
            record["torch_pruning"] = {"error": f"not installed ({error})"}
        except Exception as error:  # noqa: BLE001 - a peer's failure is a result
            first = (str(error).strip().splitlines() or [""])[0][:300]
            where = traceback.extract_tb(error.__traceback__)[-1]
            record["torch_pruning"] = {
                "error": f"{type(error).__name__}: {first}",
                "where": f"{Path(where.filename).name}:{where.lineno} in {where.name}"}
    return record


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Raise TimeoutError in this (main) thread after ``seconds`` (POSIX alarm)."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_table(results: dict[str, Any], path: Path) -> str:
    """The Markdown table of ``results``, written to ``path``."""
    lines = ["| model | groups (units/stream/heads) | params before | params after 25 % cut "
             "(neuroplast) | MACs after (neuroplast) | TP groups | TP params after | "
             "TP MACs after |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["models"]:
        ours, peer = row["neuroplast"], row["torch_pruning"]
        theirs = (f"{peer['groups']} | {peer['params_after']:,} | {peer['macs_after']:,}"
                  if "error" not in peer else f"failed: {peer['error']} | - | -")
        lines.append(
            f"| {row['model']} | {ours['groups']} ({ours['units']}/{ours['stream']}/"
            f"{ours['heads']}) | {row['params_before']:,} | {ours['params_after']:,} | "
            f"{ours['macs_after']:,} (from {row['macs_before']:,}) | {theirs} |")
    table = "\n".join(lines) + "\n"
    path.write_text(table)
    return table


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m benchmarks.models [options]``: measure what is missing, write the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated zoo names (default: all)")
    parser.add_argument("--force", action="store_true", help="measure models already recorded")
    parser.add_argument("--tiny", action="store_true", help="the zoo's tiny test configurations")
    parser.add_argument("--out", type=Path, help=f"the JSON (default {OUT}; the table goes "
                        "beside it, .md)")
    args = parser.parse_args(argv)
    out = args.out or OUT
    names = args.only.split(",") if args.only else list(ZOO)
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join(ZOO)}")
    results: dict[str, Any] = {"models": []}
    if out.exists():
        results = json.loads(out.read_text())
    results.update(torch=torch.__version__, torch_pruning=_version("torch-pruning"),
                   date=dt.date.today().isoformat(), tiny=args.tiny)
    for name in names:
        done = [row for row in results["models"] if row["model"] == name]
        if done and not args.force:
            continue
        started = time.perf_counter()
        record = {**measure(name, args.tiny)}
        record["seconds"] = round(time.perf_counter() - started, 1)
        results["models"] = [row for row in results["models"] if row["model"] != name]
        results["models"].append(record)
        results["models"].sort(key=lambda row: list(ZOO).index(row["model"]))
        write_json_atomic(results, out)
        print(f"{name}: {record['neuroplast']['groups']} groups, traced in "
              f"{record['neuroplast']['trace_seconds']:.1f} s, {record['seconds']:.0f} s in all",
              flush=True)
    write_json_atomic(results, out)
    print(write_table(results, out.with_suffix(".md")))
    return results


if __name__ == "__main__":
    main()
