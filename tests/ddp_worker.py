"""One rank of the data-parallel tests (started by tests/test_distributed.py, not by pytest).

    python tests/ddp_worker.py OUT_DIR [--stop-after E] [--die-at E] [--disagree]

Trains the tiny MetaNet run of ``RUN`` below as one rank of the process group described by the
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK), and saves, after every
epoch, this rank's widths, events and exact weights to ``OUT_DIR/rank<R>-epoch<E>.safetensors``
(+ ``rank<R>.json``), for the test to compare across ranks and with a one-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from neuroplast.distributed import DistributedError, exit_process, init_distributed
from neuroplast.train import Callback, Method
from neuroplast.train.loop import TrainConfig
from neuroplast.train.run import RunConfig, resume_run, train_run

# Division every cycle for three cycles and an eager autophagy: both kinds of events happen.
METANET = {"strategy": "metabolism", "cycle_epochs": 1, "trigger": "schedule",
           "schedule_cycles": 3, "growth_min": 4,
           "autophagy_threshold": 0.9, "autophagy_patience": 1, "protect_cycles": 0,
           "max_removal": 0.3, "min_width": 4, "finetune_epochs": 1}


def run_config(out: str | Path, epochs: int = 6) -> RunConfig:
    """The run every test trains, in one process or several."""
    return RunConfig(method="metanet", model="mlp", dataset="digits", widths=[12], out=str(out),
                     train=TrainConfig(epochs=epochs, batch_size=32, lr=0.01, seed=3,
                                       progress=False, threads=1),
                     method_options=dict(METANET), overwrite=True)


class Recorder(Callback):
    """After each epoch's policy decisions: widths, events and the weights, saved per rank."""

    def __init__(self, out: Path, rank: int, stop_after: int | None = None,
                 die_at: int | None = None) -> None:
        self.out, self.rank, self.stop_after, self.die_at = out, rank, stop_after, die_at
        self.rows: list[dict] = []

    def on_epoch_begin(self, trainer, epoch):
        if self.die_at == epoch and self.rank == 1:
            os._exit(17)  # a rank crashing hard, without a word to its peers

    def on_epoch_end(self, trainer, epoch):
        state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(self.out / f"rank{self.rank}-epoch{epoch}.safetensors"))
        self.rows.append({"epoch": epoch, "widths": trainer.method.live_widths(trainer.model),
                          "events": list(trainer.events)})
        (self.out / f"rank{self.rank}.json").write_text(json.dumps(self.rows))
        if self.stop_after == epoch:
            trainer.stop_training = True


class Disagree(Method):
    """A wrong policy: each rank grows by a different amount (a rank-local decision)."""

    name = "disagree"

    def on_epoch_end(self, trainer, epoch):
        trainer.grow("fc1", 1 + trainer.distributed.rank)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--disagree", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    context = init_distributed("gloo", timeout_s=60)
    recorder = Recorder(out, context.rank, args.stop_after, args.die_at)
    try:
        if args.disagree:
            from neuroplast.methods import register_method

            register_method(Disagree)
            config = run_config(out / "run")
            config.method, config.method_options = "disagree", {}
            train_run(config, [recorder], distributed=context)
        elif args.resume:
            resume_run(out / "run", callbacks=[recorder], distributed=context)
        else:
            train_run(run_config(out / "run"), [recorder], distributed=context)
    except DistributedError as error:
        print(f"neuroplast: error: {error}", file=sys.stderr)
        exit_process(3)  # as the command line does
    context.barrier()
    exit_process(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
