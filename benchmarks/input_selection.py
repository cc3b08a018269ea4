"""Dead input features cost nothing in the compact model: LeNet-300-100 pruned to 278-82-31.

NPN closes input features (pixels) as well as units; a Linear's dead inputs are all-zero weight
columns until compaction drops them and reads only the live ones. One run, variants
interleaved, batches 1, 64 and 256 on one thread:

- ``unpruned``: the dense 784-300-100;
- ``zero_columns``: the compact model as exported before compaction dropped dead inputs
  (784-82-31, the 506 dead pixels still multiplied by zero columns);
- ``compact``: ``neuroplast.compact_model`` now (the 278 live pixels selected, then 278-82-31);
- ``hand_built``: plain ``torch.nn`` 278-82-31 fed ``x.flatten(1).index_select(1, live)``, the
  honest limit.

The widths are those of the NPN run that ends at 278-82-31 (1.64 % test error; its pixels and
units are drawn at random here, which changes no timing). Writes
``benchmarks/results/input-selection.json``::

    python -m benchmarks.input_selection
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

import neuroplast as npl
from neuroplast.core.count import count_model
from neuroplast.models import build_model

from .core import (
    _median_ms,
    hand_built_lenet300,
    machine_info,
    time_interleaved,
    write_json_atomic,
)

SHAPE = (1, 28, 28)
WIDTHS = {"inputs": 278, "fc1": 82, "fc2": 31}
OUT = Path(__file__).parent / "results" / "input-selection.json"


def build_variants() -> tuple[dict[str, nn.Module], torch.Tensor]:
    """The dense model, its pruned copy as three plain networks, and the live pixels."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dense = build_model("lenet300", SHAPE, 10).eval()
    pruned = copy.deepcopy(dense)
    for layer in ("fc1", "fc2"):
        width = pruned.get_submodule(layer).out_features
        keep = torch.randperm(width, generator=generator)[: WIDTHS[layer]].sort().values
        npl.prune_units(pruned, layer, keep)
    live = torch.randperm(784, generator=generator)[: WIDTHS["inputs"]].sort().values
    dead = torch.ones(784, dtype=torch.bool)
    dead[live] = False
    with torch.no_grad():
        pruned.get_submodule("fc1").weight[:, dead] = 0
    zero_columns = hand_built_lenet300({"fc1": WIDTHS["fc1"], "fc2": WIDTHS["fc2"]}).eval()
    zero_columns.load_state_dict(pruned.state_dict())
    hand = nn.Sequential(
        nn.Linear(WIDTHS["inputs"], WIDTHS["fc1"]), nn.ReLU(),
        nn.Linear(WIDTHS["fc1"], WIDTHS["fc2"]), nn.ReLU(), nn.Linear(WIDTHS["fc2"], 10),
    ).eval()
    with torch.no_grad():
        hand[0].weight.copy_(pruned.get_submodule("fc1").weight[:, live])
        hand[0].bias.copy_(pruned.get_submodule("fc1").bias)
        hand[2].load_state_dict(pruned.get_submodule("fc2").state_dict())
        hand[4].load_state_dict(pruned.get_submodule("out").state_dict())
    variants = {"unpruned": dense, "zero_columns": zero_columns,
                "compact": npl.compact_model(pruned), "hand_built": hand}
    return variants, live


def run(batches: tuple[int, ...] = (1, 64, 256), reps: int = 15) -> dict[str, Any]:
    """Time every variant at every batch size; check they agree; MACs beside."""
    torch.set_num_threads(1)
    variants, live = build_variants()
    check = torch.randn(8, *SHAPE)
    with torch.inference_mode():
        reference = variants["zero_columns"](check)
        hand = variants["hand_built"](check.flatten(1).index_select(1, live))
        agree = all(torch.allclose(out, reference, atol=1e-5)
                    for out in (variants["compact"](check), hand))
    macs = {name: count_model(model, SHAPE).macs for name, model in variants.items()
            if name != "hand_built"}
    params = {name: npl.count_parameters(model) for name, model in variants.items()}
    rows = []
    for batch in batches:
        x = torch.randn(batch, *SHAPE)
        fns = {name: (lambda m=model, x=x: m(x)) for name, model in variants.items()}
        fns["hand_built"] = lambda m=variants["hand_built"], x=x: m(
            x.flatten(1).index_select(1, live))
        with torch.inference_mode():
            timings = time_interleaved(fns, reps, min_sample_s=0.05)
        ms = {name: _median_ms(samples) for name, samples in timings.wall.items()}
        rows.append({
            "batch": batch, "threads": 1, "ms": ms,
            "speedup_compact": ms["unpruned"] / ms["compact"],
            "speedup_zero_columns": ms["unpruned"] / ms["zero_columns"],
            "speedup_hand_built": ms["unpruned"] / ms["hand_built"],
            "compact_over_hand_built": ms["compact"] / ms["hand_built"],
        })
    return {
        "benchmark": "LeNet-300-100 pruned to 278-82-31: dead input pixels as zero columns "
                     "(the compact model before) vs selected away (compact_model now) vs a "
                     "hand-built 278-82-31, one run, interleaved, median of repetitions",
        "machine": machine_info(1),
        "outputs_agree": agree,
        "params": params,
        "macs": macs,
        "macs_ratio_compact": macs["unpruned"] / macs["compact"],
        "macs_ratio_zero_columns": macs["unpruned"] / macs["zero_columns"],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    results = run(reps=args.reps)
    write_json_atomic(results, args.out)
    for row in results["rows"]:
        print(f"batch {row['batch']:>3}: " + ", ".join(
            f"{name} {value:.4f} ms" for name, value in row["ms"].items()))
    print(f"MACs ratio {results['macs_ratio_compact']:.2f}x (zero columns: "
          f"{results['macs_ratio_zero_columns']:.2f}x); outputs agree: {results['outputs_agree']}")
    return results


if __name__ == "__main__":
    main()
