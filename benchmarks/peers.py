"""neuroplast against two peer libraries, each run from its published package.

    pip install ".[bench]"     # torch-pruning and gromo: never runtime dependencies
    python -m benchmarks.peers torch-pruning --npn-run runs/bench-npn/lenet300-mnist-prune-s0
    python -m benchmarks.peers gromo --epochs 20 --seeds 0 1 2

**Torch-Pruning** (pruning at the same widths). For an NPN run of LeNet-300-100 or LeNet-5-Caffe
on MNIST (its ``summary.json`` gives the widths NPN reached, its epochs and its final test
accuracy), every seed does, in one process:

1. train the dense model with the same optimizer, learning rate and batch for as many
   epochs as the NPN run took (neuroplast's ``fixed`` trainer);
2. **Torch-Pruning**: ``tp.DependencyGraph`` on a copy of that model, one L2-magnitude
   pruning group per hidden layer (``tp.prune_conv_out_channels`` /
   ``tp.prune_linear_out_channels`` with the indices of the smallest-norm units, as
   ``tp.importance.MagnitudeImportance(p=2)`` ranks them), down to NPN's hidden widths, then
   fine-tuning for the same number of epochs again;
3. **neuroplast magnitude**: the same one-shot L2 pruning with ``neuroplast.prune_units`` on
   another copy, then the same fine-tuning (a check that the two mechanisms agree);

4. **NPN + fine-tuning**: NPN's own compact model (its last checkpoint, live units only) gets
   the same fine-tuning, so that NPN and the peer train for the same number of epochs in all;
   input features NPN closed (all-zero weight columns) stay closed;

and reports each one's final-epoch test error, widths, parameters and wall time next to NPN's.
The pruned models' fine-tuning gets the whole budget again, so Torch-Pruning trains twice as
many epochs as NPN did: row 4 is NPN with the same budget.  ``--npn-run`` may hold ``{seed}``
(``runs/bench/full/mnist-lenet300--npn--s{seed}``): each seed then compares with its own NPN run.
Torch-Pruning prunes hidden units only (a model's input features are not its to remove), so
its models keep all 784 inputs, while NPN also closes input features: ``nonzero_weights`` shows
the difference.

**GroMo** (growth at the same width and budget). MetaNet grows a one-hidden-layer MLP on MNIST
from 8 neurons for ``--epochs`` epochs (``neuroplast train --method metanet``); GroMo's
``GrowingMLP`` grows the same 784-8-10 ReLU MLP with its TINY step (statistics on 5,000 training
examples, ``compute_optimal_updates``, the amplitude chosen on the validation split,
``apply_change``; at most 10 neurons per step, so several steps where more are due) after each
of the first half of the epochs, reaching MetaNet's final width, then trains on for the rest; a
fixed-width MLP of that final width trained for the same epochs is the third row. MetaNet stops
by itself once its width is stable; the epochs it used are the budget of the other two. Training
uses the same Adam, learning rate and batch for all three; GroMo's optimizer is rebuilt after
each growth, since its growth replaces the layers (and with them any optimizer state).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuroplast.core.count import count_model
from neuroplast.core.groups import layer_widths
from neuroplast.core.resize import prune_units
from neuroplast.data import load_dataset
from neuroplast.methods import FixedWidth
from neuroplast.models import build_model
from neuroplast.train.loop import TrainConfig, Trainer
from neuroplast.train.run import load_run_model

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
DEFAULT_OUT = {"torch-pruning": Path("benchmarks/results/peers-torch-pruning-lenet300.json"),
               "gromo": Path("benchmarks/results/peers-gromo-mnist-mlp.json")}


def _train(model: nn.Module, data, epochs: int, config: dict[str, Any], seed: int):
    """neuroplast's plain trainer: the same loop for the dense model and every pruned one."""
    torch.manual_seed(seed)
    trainer = Trainer(model, data, FixedWidth(),
                      TrainConfig(epochs=epochs, seed=seed, progress=False, **config))
    started = time.perf_counter()
    trainer.fit()
    return trainer.history[-1], time.perf_counter() - started


# NPN's gates count units where they sit: a conv gate its conv's channels, a Linear's input gate
# the units of the layer feeding it. Which gate gives each prunable layer's width:
HIDDEN_FROM_GATES = {"lenet300": {"fc1": "fc2", "fc2": "out"},
                     "lenet5": {"conv1": "conv1", "conv2": "conv2", "fc1": "out"}}


def _smallest_norm_units(layer: nn.Module, keep: int) -> list[int]:
    """Indices of the units to remove: all but the ``keep`` largest L2 norms of fan-in + bias."""
    weight = layer.weight.detach()
    norms = weight.reshape(weight.shape[0], -1).pow(2).sum(1) + layer.bias.detach().pow(2)
    order = torch.argsort(norms, descending=True)
    return sorted(order[keep:].tolist())


def prune_with_torch_pruning(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Torch-Pruning's dependency graph removes each hidden layer's smallest-norm units."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, 1, 28, 28), verbose=False)
    for name, width in widths.items():
        layer = model.get_submodule(name)
        drop = _smallest_norm_units(layer, width)
        if drop:
            prune = (tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d)
                     else tp.prune_linear_out_channels)
            graph.get_pruning_group(layer, prune, idxs=drop).prune()
    return model


def prune_with_neuroplast(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """The same decision with neuroplast's mechanism."""
    for name, width in widths.items():
        layer = model.get_submodule(name)
        drop = set(_smallest_norm_units(layer, width))
        prune_units(model, name, [i for i in range(layer.weight.shape[0]) if i not in drop])
    return model


def keep_closed_inputs_closed(model: nn.Module) -> None:
    """Fine-tuning must not reopen what NPN closed: zero the gradient of all-zero columns.

    The NPN model is loaded with ``select_inputs=False``, so its closed inputs are zero columns
    (it stays a Sequential whose widths can be read and compared); this keeps them shut.

    (With zero gradients Adam's moments stay zero, so the weights stay exactly zero.)
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            open_columns = (module.weight.detach() != 0).any(dim=0).to(module.weight.dtype)
            if not bool(open_columns.all()):
                module.weight.register_hook(
                    lambda grad, mask=open_columns: grad * mask.to(grad.device))


def _row(label: str, model: nn.Module, last: dict[str, Any], seconds: float) -> dict[str, Any]:
    count = count_model(model, (1, 28, 28))
    nonzero = sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters()
                  if n.endswith("weight"))
    return {"method": label, "test_error_percent": round(100 * (1 - last["test_accuracy"]), 2),
            "test_accuracy": last["test_accuracy"], "widths": layer_widths(model),
            "params": count.params, "nonzero_weights": nonzero, "macs": count.macs,
            "train_seconds": round(seconds, 1)}


def compare(npn_run: Path, seed: int, data_dir: Path) -> dict[str, Any]:
    """Dense training, then Torch-Pruning and neuroplast pruning to NPN's widths, one seed."""
    npn_run = Path(str(npn_run).format(seed=seed))
    summary = json.loads((npn_run / "summary.json").read_text())
    config_values = json.loads((npn_run / "config.json").read_text())["train"]
    config = {k: config_values[k] for k in ("batch_size", "optimizer", "lr", "momentum",
                                            "weight_decay", "scheduler", "lr_milestones",
                                            "lr_gamma", "threads") if k in config_values}
    epochs = summary["epochs"]
    final = dict(zip(summary["layer_names"], summary["final_widths"], strict=True))
    model_name = summary["model"]
    if model_name not in HIDDEN_FROM_GATES:
        raise SystemExit(f"torch-pruning comparison: no layer map for model '{model_name}'")
    hidden = {layer: final[gate] for layer, gate in HIDDEN_FROM_GATES[model_name].items()}
    data = load_dataset("mnist", data_dir, seed=seed)
    torch.manual_seed(seed)
    dense = build_model(model_name, data.input_shape, data.num_classes)
    last, seconds = _train(dense, data, epochs, config, seed)
    rows = [_row("dense (fixed)", dense, last, seconds)]
    for label, prune in (("Torch-Pruning L2 + fine-tune", prune_with_torch_pruning),
                         ("neuroplast L2 + fine-tune", prune_with_neuroplast)):
        model = prune(copy.deepcopy(dense), hidden)
        pruned_last, pruned_seconds = _train(model, data, epochs, config, seed)
        rows.append(_row(label, model, pruned_last, seconds + pruned_seconds))
    npn_metrics = [json.loads(line) for line in
                   (npn_run / "metrics.jsonl").read_text().splitlines()][-1]
    rows.append({"method": "NPN (this run)", "seed": summary["seed"],
                 "test_error_percent": round(100 * (1 - summary["test_accuracy"]), 2),
                 "test_accuracy": summary["test_accuracy"], "widths": final,
                 "params": summary["params"],
                 "nonzero_weights": npn_metrics["method"].get("nonzero_weights"),
                 "macs": summary["macs"], "train_seconds": round(summary["train_seconds"], 1),
                 "command": summary.get("command")})
    # Zero columns, not selected inputs: the model stays a Sequential whose widths _row reads.
    compact, _ = load_run_model(npn_run, select_inputs=False)
    keep_closed_inputs_closed(compact)
    tuned_last, tuned_seconds = _train(compact, data, epochs, config, seed)
    rows.append(_row("NPN + fine-tune (same epochs as the peer)", compact, tuned_last,
                     summary["train_seconds"] + tuned_seconds))
    return {"seed": seed, "epochs": epochs, "model": model_name, "npn_run": str(npn_run),
            "hidden_widths": hidden, "rows": rows}


# --------------------------------------------------------------------------- GroMo
def _plain_epoch(model, optimizer, data, batch: int, generator) -> None:
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(data.y_train), generator=generator)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[rows]), data.y_train[rows]).backward()
        optimizer.step()


@torch.no_grad()
def _loss_accuracy(model, x, y, extended: bool = False) -> tuple[float, float]:
    import torch.nn.functional as F

    model.eval()
    logits = model.extended_forward(x) if extended else model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).double().mean().item()


def _gromo_growth_step(model, data, neurons: int, generator) -> int:
    """One TINY step of GroMo's public API; returns the neurons it added."""
    loss_sum = nn.CrossEntropyLoss(reduction="sum")  # GroMo averages its statistics itself
    rows = torch.randperm(len(data.y_train), generator=generator)[:5000]
    model.eval()
    model.init_computation()
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        model.zero_grad()
        loss_sum(model(data.x_train[chunk]), data.y_train[chunk]).backward()
        model.update_computation()
    model.compute_optimal_updates(maximum_added_neurons=neurons, statistical_threshold=0.0)
    model.reset_computation()
    model.select_best_update()
    added = int(model.currently_updated_layer.eigenvalues_extension.shape[0])
    # The amplitude of the new neurons by line search on held-out data (never the test set);
    # 0 is left out: it would add neurons with zero fan-in and fan-out that never train.
    best = min((_loss_accuracy(model, data.x_val, data.y_val, extended=True)[0], gamma)
               for gamma in (2.0 ** e for e in range(-4, 5))
               if model.set_scaling_factor(gamma) is None)
    model.set_scaling_factor(best[1])
    model.apply_change()
    model.zero_grad()
    return added


def grow_with_gromo(data, width: int, epochs: int, config: dict[str, Any], seed: int):
    """GroMo's GrowingMLP from 8 hidden neurons to ``width`` within ``epochs`` epochs."""
    import math

    from gromo.containers.growing_mlp import GrowingMLP

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = GrowingMLP(in_features=784, out_features=10, hidden_size=8, number_hidden_layers=1,
                       activation=nn.ReLU(), flatten=True)
    started = time.perf_counter()
    # Spread the growth over the first half of the budget, as MetaNet's cycles grow early.
    growth_epochs = max(1, epochs // 2)
    per_epoch = max(1, math.ceil((width - 8) / growth_epochs))
    curve = []
    for _ in range(epochs):
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        _plain_epoch(model, optimizer, data, config["batch_size"], generator)
        target = min(width, model.layers[0].out_features + per_epoch)
        while model.layers[0].out_features < target:
            # One step adds at most 10 neurons here (the rank of a 10-class output's
            # statistics), so a large growth takes several steps.
            missing = target - model.layers[0].out_features
            if _gromo_growth_step(model, data, min(missing, 10), generator) == 0:
                break
        curve.append(model.layers[0].out_features)
    seconds = time.perf_counter() - started
    _, accuracy = _loss_accuracy(model, data.x_test, data.y_test)
    params = sum(p.numel() for p in model.parameters())
    return {"method": "GroMo (TINY) growth", "test_accuracy": accuracy,
            "test_error_percent": round(100 * (1 - accuracy), 2),
            "widths": {"fc1": model.layers[0].out_features}, "params": params,
            "train_seconds": round(seconds, 1), "width_curve": curve}


def compare_growth(seed: int, epochs: int, data_dir: Path, threads: int) -> dict[str, Any]:
    """MetaNet from 8, GroMo to MetaNet's final width, and a fixed MLP of that width."""
    import subprocess
    import sys
    import tempfile

    config = {"batch_size": 128, "lr": 1e-3}
    with tempfile.TemporaryDirectory() as folder:
        arguments = ["train", "--method", "metanet", "--model", "mlp", "--widths", "8",
                     "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", str(epochs),
                     "--batch-size", "128", "--lr", "1e-3", "--seed", str(seed), "--threads",
                     str(threads), "--no-progress"]
        subprocess.run([str(Path(sys.executable).with_name("neuroplast")), *arguments,
                        "--out", folder], check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(folder) / "summary.json").read_text())
        metrics = [json.loads(line) for line in
                   (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    width = summary["final_widths"][0]
    epochs = summary["epochs"]  # MetaNet may stop early: the others get the same budget
    metanet = {"method": "MetaNet (neuroplast)", "test_accuracy": summary["test_accuracy"],
               "test_error_percent": round(100 * (1 - summary["test_accuracy"]), 2),
               "widths": {"fc1": width}, "params": summary["params"],
               "train_seconds": round(summary["train_seconds"], 1),
               "width_curve": [row["widths"]["fc1"] for row in metrics],
               "command": "neuroplast " + " ".join(arguments)}
    data = load_dataset("mnist", data_dir, seed=seed)
    gromo = grow_with_gromo(data, width, epochs, config, seed)
    torch.manual_seed(seed)
    fixed_model = build_model("mlp", data.input_shape, data.num_classes, widths=[width])
    last, seconds = _train(fixed_model, data, epochs,
                           {"batch_size": 128, "optimizer": "adam", "lr": 1e-3,
                            "threads": threads}, seed)
    fixed = _row(f"fixed width {width}", fixed_model, last, seconds)
    return {"seed": seed, "epochs": epochs, "width": width, "rows": [metanet, gromo, fixed]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=("torch-pruning", "gromo"))
    parser.add_argument("--npn-run", type=Path,
                        help="torch-pruning: an NPN LeNet-300-100 or LeNet-5 run directory "
                             "('{seed}' in it: one NPN run per seed)")
    parser.add_argument("--epochs", type=int, default=20, help="gromo: the epoch budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=SHARED_MNIST)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = {"torch-pruning": "torch_pruning", "gromo": "gromo"}[args.peer]
    try:
        package = __import__(module)
    except ModuleNotFoundError:
        raise SystemExit(f"{args.peer} is not installed: pip install '.[bench]'") from None
    if args.peer == "torch-pruning":
        if args.npn_run is None:
            parser.error("torch-pruning needs --npn-run (an NPN LeNet-300-100 run directory)")
        for seed in args.seeds:
            run = Path(str(args.npn_run).format(seed=seed))
            if not (run / "summary.json").is_file():
                raise SystemExit(f"--npn-run {run} is not a finished NPN run (no summary.json): "
                                 "train one first, e.g. `python -m benchmarks full --only "
                                 "mnist-lenet300 --methods npn`")
        results = [compare(args.npn_run, seed, args.data_dir) for seed in args.seeds]
        title = ("MNIST: NPN against Torch-Pruning + fine-tuning at NPN's hidden widths, "
                 f"{results[0]['model']}")
        command = f"--npn-run {args.npn_run}"
    else:
        results = [compare_growth(seed, args.epochs, args.data_dir, args.threads)
                   for seed in args.seeds]
        title = "MNIST MLP grown from 8 neurons: MetaNet against GroMo at the same width"
        command = f"--epochs {args.epochs}"
    report = {
        "benchmark": title,
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.peer} "
                   f"{getattr(package, '__version__', '?')}, Python {platform.python_version()},"
                   f" {args.threads} thread(s)",
        "command": f"python -m benchmarks.peers {args.peer} {command} --seeds "
                   + " ".join(map(str, args.seeds)),
        "results": results,
    }
    out = args.out or DEFAULT_OUT[args.peer]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("| seed | method | test error % | widths | params | train s |")
    print("|---|---|---|---|---|---|")
    for result in results:
        for row in result["rows"]:
            widths = "-".join(str(w) for w in row["widths"].values())
            print(f"| {result['seed']} | {row['method']} | {row['test_error_percent']} | "
                  f"{widths} | {row['params']:,} | {row['train_seconds']} |")


if __name__ == "__main__":
    main()
