"""NPN's mask runs shed their closed units once the gates harden: the time it saves, side by side.

Once k = inf for the rest of a run no gate can open, so a mask run removes its closed hidden
units and fine-tunes only the open ones (``NPN._hardened``). This runs panel tasks' default
NPN prune and expand commands (seed 0) twice in one process, with the shedding and with it
switched off, and compares training time, widths and accuracy::

    python -m benchmarks.npn_harden            # -> benchmarks/results/npn-harden.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from neuroplast.cli import main as cli_main
from neuroplast.methods.npn import NPN

from .panel import Job, _tasks, jobs

RESULTS = Path(__file__).parent / "results" / "npn-harden.json"
TASKS = ("teacher-d50-h16-c4", "teacher-d10-h128-c2", "mnist-mlp")


def run_once(job: Job, out: Path, shed: bool) -> dict[str, Any]:
    """One panel run into ``out`` (one thread), with or without the shedding."""
    with mock.patch.object(NPN, "_hardened", NPN._hardened if shed else lambda *_: False):
        cli_main(["train", *job.arguments(out, threads=1)])
    summary = json.loads((out / "summary.json").read_text())
    return {key: summary[key] for key in ("train_seconds", "final_widths", "test_accuracy")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=list(TASKS))
    args = parser.parse_args(argv)
    tasks = [t for t in _tasks() if t.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for job in jobs(tasks, ["npn-prune", "npn-expand"], [0]):
            shed = run_once(job, Path(scratch) / "shed", True)
            kept = run_once(job, Path(scratch) / "kept", False)
            rows.append({"task": job.task.name, "run": job.label, "seed": job.seed,
                         "shed": shed, "kept": kept,
                         "speedup": kept["train_seconds"] / shed["train_seconds"]})
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    print("| task | run | widths (same) | test % shed / kept | seconds shed / kept | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        shed, kept = row["shed"], row["kept"]
        print(f"| {row['task']} | {row['run']} | {shed['final_widths']} "
              f"({shed['final_widths'] == kept['final_widths']}) | "
              f"{100 * shed['test_accuracy']:.2f} / {100 * kept['test_accuracy']:.2f} | "
              f"{shed['train_seconds']:.1f} / {kept['train_seconds']:.1f} | "
              f"{row['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
