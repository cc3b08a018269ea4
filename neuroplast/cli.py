"""The ``neuroplast`` command: argument parsing only; every action is a Python API call.

    neuroplast train [--method M --model A --dataset D ...] [--recipe NAME | --config FILE]
                     [--distributed [--nproc-per-node N]]
    neuroplast resume DIR [--distributed [--nproc-per-node N]]
    neuroplast report DIR
    neuroplast export DIR [--format pt2|onnx|safetensors|torchscript]
    neuroplast list
    neuroplast recipes
    neuroplast --version
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from dataclasses import MISSING, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from .core.checkpoint import CheckpointError
from .data import DATASETS, DataError
from .data.augment import AUGMENTATIONS
from .distributed import DistributedError
from .export import FORMATS, ExportError
from .methods import METHODS, method_fields
from .models import MODELS
from .models.mlp import ACTIVATIONS
from .objective import LOSSES
from .recipes import list_recipes, recipe_path
from .train.loop import OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainConfig
from .train.run import RunConfig, RunDirectoryError

# What `neuroplast train` with no arguments runs: a complete small self-sizing job on bundled
# data (no download): MetaNet's width search sizes an MLP started at 1024 neurons on the digits.
# Its epochs, learning rate and schedule are MetaNet's own defaults (``MetaNet.train_defaults``).
DEFAULT_JOB = {"method": "metanet", "model": "mlp", "dataset": "digits", "widths": [1024],
               "out": "runs/default"}

# Options that choose the job itself: without any of them (and without a recipe) the default
# job runs, and every other option (--epochs, --seed, --lr, ...) changes only that setting of it.
JOB_OPTIONS = {"method", "model", "dataset", "data_dir", "widths", "activation", "label_column"}

TRAIN_OPTIONS = {f.name for f in fields(TrainConfig)}


def _list_of(cast, what: str):
    """An argparse converter for comma-separated values such as ``300,100``."""

    def convert(text: str) -> list:
        try:
            return [cast(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} separated by commas, got '{text}'") from None

    return convert


_int_list = _list_of(int, "integers")
_float_list = _list_of(float, "numbers")


def _option_type(annotation: str):
    """An argparse converter for a method field's (string) annotation."""
    text = str(annotation).replace(" ", "")
    if "list[int]" in text or "tuple[int" in text:
        return _int_list
    if "list[float]" in text or "tuple[float" in text:
        return _float_list
    for name, converter in (("bool", None), ("int", int), ("float", float)):
        if text.split("|")[0] == name:
            return converter
    return str


def _method_flag(method: str, option: str) -> str:
    return f"--{method}-{option.replace('_', '-')}"


# Errors that mean "the input is wrong" or "a peer failed": one line, no traceback.
USER_ERRORS = (DataError, CheckpointError, RunDirectoryError, ExportError, ValueError,
               FileNotFoundError, DistributedError)

DISTRIBUTED_OPTIONS = ("distributed", "nproc_per_node", "dist_backend", "dist_timeout")


def _add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data-parallel training (PyTorch DDP)")
    group.add_argument("--distributed", action="store_true",
                       help="train data-parallel: join the process group torchrun started "
                            "(`torchrun --nproc_per_node N -m neuroplast train ...`)")
    group.add_argument("--nproc-per-node", type=int, default=None,
                       help="start N processes on this machine through torchrun (implies "
                            "--distributed)")
    group.add_argument("--dist-backend", choices=("gloo", "nccl"), default=None,
                       help="gloo (default, CPU); nccl needs GPU training, not supported yet")
    group.add_argument("--dist-timeout", type=float, default=300.0,
                       help="seconds a rank waits for a silent peer before stopping "
                            "(default 300)")


def _add_train_arguments(parser: argparse.ArgumentParser, shown_method: str | None = None
                         ) -> None:
    # Defaults are SUPPRESSed so we can tell what was typed from what a --config file says.
    add = parser.add_argument
    s = argparse.SUPPRESS
    add("--config", default=s, help="a recipe file (TOML or JSON) holding the same options")
    add("--recipe", default=s,
        help="an installed recipe, by name (`neuroplast recipes` lists them)")
    add("--method", default=s, help=f"sizing method: {', '.join(METHODS)} (default fixed)")
    add("--model", default=s, help=f"model: {', '.join(MODELS)} (default mlp)")
    add("--dataset", default=s, help=f"data set: {', '.join(DATASETS)} (default digits)")
    add("--data-dir", default=s, help="directory (or file) holding the data set's files")
    add("--label-column", default=s, help="csv data: the column holding the labels (default: "
        "the first of label, y, target, class)")
    add("--widths", type=_int_list, default=s, help="starting hidden widths, e.g. 300,100")
    add("--activation", default=s,
        help=f"hidden activation of the mlp and lenet300 models: {', '.join(ACTIVATIONS)} "
             "(default relu; MetaNet's splitting needs a smooth one)")
    add("--val-fraction", type=float, default=s,
        help="share of the training data held out for validation, in (0, 1) (default: 5000 "
             "examples for MNIST, Fashion-MNIST and CIFAR-10, half for moons, 20 %% otherwise)")
    add("--no-standardise", dest="standardise", action="store_false", default=s,
        help="keep inputs as scaled (images in [0, 1]) instead of standardising them per "
             "channel, as NPN's reference MNIST scripts train")
    add("--augment", choices=AUGMENTATIONS, default=s,
        help="training images only: crop (shift each image by up to --augment-padding pixels, "
             "filling with black) or crop-flip (also mirror half of them, the CIFAR recipe); "
             "default none")
    add("--augment-padding", type=int, default=s,
        help="the largest shift of --augment, in pixels (default 4)")
    add("--epochs", type=int, default=s, help="training epochs (default 10)")
    add("--checkpoint-every", type=int, default=s, metavar="N",
        help="write the checkpoint every N epochs (default 0: whenever that costs under 5 %% "
             "of the training time); the last epoch and an interrupt between batches are "
             "always saved, and a resume is exact from any checkpoint")
    add("--batch-size", type=int, default=s, help="mini-batch size (default 64)")
    add("--accumulate", type=int, default=s, metavar="N",
        help="split each batch into N micro-batches (gradient accumulation; default 1)")
    add("--loss", choices=tuple(LOSSES), default=s,
        help="cross-entropy (default: classification) or mse (regression: an npz file whose "
             "'y' holds the numbers to predict)")
    add("--precision", choices=PRECISIONS, default=s,
        help="32, or bf16-mixed: forward passes under bfloat16 autocast (default 32)")
    add("--grad-clip", type=float, default=s, metavar="NORM",
        help="clip the gradients' total norm before each step (default 0: off)")
    add("--optimizer", choices=OPTIMIZERS, default=s, help="optimizer (default adam)")
    add("--lr", type=float, default=s, help="learning rate (default 0.001)")
    add("--momentum", type=float, default=s, help="SGD momentum (default 0.9)")
    add("--weight-decay", type=float, default=s, help="weight decay (default 0)")
    add("--scheduler", choices=SCHEDULERS, default=s,
        help="learning-rate schedule: none (default), cosine, or step (x gamma at each "
             "milestone; without milestones every third of the epochs)")
    add("--lr-milestones", type=_int_list, default=s,
        help="step scheduler: epochs after which the learning rate is multiplied by gamma, "
             "e.g. 400 or 60,120")
    add("--lr-gamma", type=float, default=s, help="step scheduler: the decay factor (default 0.1)")
    add("--seed", type=int, default=s, help="random seed (default 0)")
    add("--out", default=s, help="run directory (default runs/<dataset>-<model>-<method>-s<seed>)")
    add("--overwrite", action="store_true", default=s, help="replace a run already in --out")
    add("--tensorboard", action="store_true", default=s, help="also log to TensorBoard")
    add("--threads", type=int, default=s,
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models "
             "on a busy machine)")
    add("--device", default=s,
        help="where to train: cpu (default), cuda or cuda:N; the data stays in CPU memory "
             "and each batch is moved (single process; --distributed runs on the CPU)")
    add("--no-progress", dest="progress", action="store_false", default=s,
        help="no progress bar or per-epoch lines")
    for method in METHODS:
        # Every method's flags parse (a flag of another method gets a clear error later), but
        # --help lists only the chosen method's: all of them would be hundreds of lines; and of
        # those, the top-level ones first, then each strategy's own, never internal constants.
        shown = method == shown_method
        groups = _option_groups(parser, method) if shown else {}
        for option in method_fields(method):
            converter = _option_type(option.type)
            default = option.default if option.default is not MISSING else None
            group = groups.get(option.name, parser)
            helptext = (option.metadata.get("help", "") + _default_text(default)
                        if option.name in groups else argparse.SUPPRESS)
            flag, dest = _method_flag(method, option.name), f"{method}.{option.name}"
            if converter is None:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=s, help=helptext)
            else:
                group.add_argument(flag, dest=dest, type=converter, default=s, help=helptext)


def _option_groups(parser: argparse.ArgumentParser, method: str) -> dict[str, Any]:
    """The ``--help`` group of each of ``method``'s listed options (internal ones have none)."""
    kind = METHODS[method]
    internal = set(kind.internal_options)
    owned = {name: title for title, names in kind.option_groups.items() for name in names}
    hidden = f"; {len(internal)} internal constants are set in a recipe or from Python" \
        if internal else ""
    top = parser.add_argument_group(f"options of --method {method}",
                                    f"what most runs set{hidden} (docs/{method}.md lists them)"
                                    if hidden else None)
    sections = {title: parser.add_argument_group(f"{method}, {title}")
                for title in kind.option_groups}
    return {option.name: sections[owned[option.name]] if option.name in owned else top
            for option in method_fields(method) if option.name not in internal}


def _default_text(default: Any) -> str:
    """A method option's default as it would be typed: ``0.2,0.7``, not ``(0.2, 0.7)``."""
    if default is None or default == "":
        return " (default: not set)"
    if isinstance(default, tuple | list):
        default = ",".join(map(str, default))
    return f" (default {default})".replace("%", "%%")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Options from a TOML or JSON recipe, keys as on the command line (dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            values = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
    except (ValueError, ModuleNotFoundError) as error:
        raise ValueError(f"cannot read recipe {path}: {error}") from error
    return {key.replace("-", "_"): value for key, value in values.items()}


def config_from_options(options: dict[str, Any], command: str | None = None) -> RunConfig:
    """Merge defaults < recipe file < typed options into a :class:`RunConfig`.

    The launch options (``--distributed``, ``--nproc-per-node``, ...) say how to run, not what
    to train, and are ignored here.
    """
    options = {k: v for k, v in options.items() if k not in DISTRIBUTED_OPTIONS}
    merged: dict[str, Any] = {}
    if "config" in options and "recipe" in options:
        raise ValueError("give either --recipe NAME (an installed recipe) or --config FILE, "
                         "not both")
    recipe = "recipe" in options or "config" in options  # even an empty one: it is chosen
    if "recipe" in options:
        merged.update(read_recipe(recipe_path(options.pop("recipe"))))
    if "config" in options:
        merged.update(read_recipe(options.pop("config")))
    if not recipe and not set(options) & JOB_OPTIONS:
        merged.update(DEFAULT_JOB)
    merged.update(options)
    method = merged.pop("method", "fixed")
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    if not recipe:  # a recipe states its schedule in full; without one the method's own holds
        for key, value in METHODS[method].train_defaults.items():
            merged.setdefault(key, value)
    method_options: dict[str, Any] = {}
    for key in list(merged):
        if "." in key:  # from the command line: "<method>.<option>"
            owner, option = key.split(".", 1)
            value = merged.pop(key)
            if owner != method:
                raise ValueError(f"{_method_flag(owner, option)} is an option of --method "
                                 f"{owner}, but this run uses --method {method}")
            method_options[option] = value
        elif key.startswith(f"{method}_"):  # from a recipe: "<method>_<option>"
            method_options[key[len(method) + 1:]] = merged.pop(key)
    train = {key: merged.pop(key) for key in list(merged) if key in TRAIN_OPTIONS}
    run_names = {f.name for f in fields(RunConfig)} - {"train", "method_options", "command"}
    unknown = sorted(set(merged) - run_names)
    for key in unknown:
        owner = next((m for m in METHODS if key.startswith(f"{m}_")), None)
        if owner is not None:
            raise ValueError(f"{key} is an option of method {owner}, but this run uses method "
                             f"{method} (set method = \"{owner}\" or --method {owner})")
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} (see `neuroplast train --help`)")
    config = RunConfig(method=method, train=TrainConfig(**train),
                       method_options=method_options, command=command, **merged)
    if not isinstance(config.standardise, bool):
        raise ValueError(f"standardise must be true or false, got {config.standardise!r}")
    if config.widths is not None:
        config.widths = _widths_list(config.widths)
    return config


def _widths_list(value: Any) -> list[int]:
    """Hidden widths from a recipe or the command line: a list, one integer, or "300,100"."""
    given = value
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            value = None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)):
        raise ValueError(f"widths must be integers >= 1, one per hidden layer (a recipe: "
                         f"widths = [300, 100]; the command line: --widths 300,100); got {given!r}")
    return value


def _default_job_text() -> str:
    """``neuroplast train --help``'s account of when the default job runs, and what it is."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    job = " ".join(f"{flag(k)} {','.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in DEFAULT_JOB.items())
    chosen = ", ".join(flag(n) for n in sorted(JOB_OPTIONS))
    return (f"Without {chosen}, --recipe or --config, this runs the default job: {job}; any "
            "other option (--epochs, --seed, --lr, ...) changes only that setting of it. "
            "Without a recipe, a method's own epochs, learning rate and schedule (where it has "
            "them) replace the general defaults below; a recipe states its own.")


def _chosen_method(argv: list[str]) -> str | None:
    """The ``--method`` typed in ``argv`` (for --help to list that method's options)."""
    for index, word in enumerate(argv):
        if word == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith("--method="):
            return word.partition("=")[2]
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; ``argv`` only decides which method's options ``train --help`` lists."""
    shown = _chosen_method(argv or [])
    method_help = (f" The options of --method {shown} are listed last." if shown in METHODS else
                   " A method's own options: neuroplast train --method M --help, M one of "
                   f"{', '.join(METHODS)}.")
    parser = argparse.ArgumentParser(
        prog="neuroplast", description="Train neural networks that decide their own size.")
    parser.add_argument("--version", action="version", version=f"neuroplast {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a run (no options: the default job)",
        description=_default_job_text() + method_help)
    _add_train_arguments(train, shown)
    _add_distributed_arguments(train)
    resume = commands.add_parser("resume", help="continue an interrupted run")
    resume.add_argument("run_dir")
    resume.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    resume.add_argument("--device", default=None,
                        help="continue on this device (default: the one the run trained on)")
    resume.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads from here on (default: the run's own setting)")
    _add_distributed_arguments(resume)
    report = commands.add_parser("report", help="(re)write a run's report.md and plots")
    report.add_argument("run_dir")
    export = commands.add_parser("export", help="export a run's compact model")
    export.add_argument("run_dir")
    export.add_argument(
        "--format", choices=FORMATS, default=FORMATS[0],
        help="pt2 (default): a torch.export program, for torch.export.load; onnx: through the "
             "torch.export-based exporter (needs neuroplast[onnx]); safetensors: the weights, "
             "with the architecture as JSON beside them; torchscript: legacy, deprecated by "
             "PyTorch. pt2 and onnx take a batch of any size")
    export.add_argument("--output", default=None, help="file to write (default in the run dir)")
    export.add_argument(
        "--without-standardisation", dest="standardise", action="store_false",
        help="leave out the input standardisation that the file otherwise starts with: it then "
             "takes standardised inputs, as the network saw in training, instead of inputs as "
             "the data set holds them (images scaled to [0, 1])")
    commands.add_parser("list", help="list methods, models and data sets, one per line")
    commands.add_parser("recipes", help="list the installed recipes (run one with "
                                        "`neuroplast train --recipe NAME`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuroplast`` command."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        if args.command in ("train", "resume"):
            return _train_or_resume(args, argv)
        if args.command == "report":
            from .report import write_report

            if not (Path(args.run_dir) / "metrics.jsonl").exists():
                raise RunDirectoryError(f"{args.run_dir} holds no run (no metrics.jsonl)")
            print(write_report(args.run_dir))
            return 0
        if args.command == "export":
            from .export import export_run_model

            for path in export_run_model(args.run_dir, args.format, args.output,
                                         args.standardise):
                print(path)
            return 0
        if args.command == "recipes":
            _print_table([(recipe.name, recipe.description) for recipe in list_recipes()])
            return 0
        print("methods:")
        _print_table([(name, method.description) for name, method in METHODS.items()], "  ")
        print("models:")
        _print_table([(name, "") for name in MODELS], "  ")
        print("datasets:")
        _print_table([(name, "") for name in DATASETS], "  ")
        return 0
    except USER_ERRORS as error:
        print(f"neuroplast: error: {error}", file=sys.stderr)
        return 2


def package_version() -> str:
    """neuroplast's version as installed (its distribution metadata), else ``__version__``."""
    try:
        return metadata.version("neuroplast")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


def _print_table(rows: list[tuple[str, str]], indent: str = "") -> None:
    """One row a line: the name, then its description (if any) in an aligned column."""
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{indent}{name:<{width}}  {description}".rstrip())


def _train_or_resume(args: argparse.Namespace, argv: list[str]) -> int:
    from .distributed import (
        check_backend,
        exit_process,
        init_distributed,
        launch_local,
        launched_by_torchrun,
    )

    wanted = args.distributed or args.nproc_per_node is not None
    if wanted:
        check_backend(args.dist_backend)  # before torchrun starts workers that would all fail
    if wanted and not launched_by_torchrun():
        if args.nproc_per_node is None:
            init_distributed()  # raises the error that explains how to launch
        return launch_local(args.nproc_per_node, argv)
    distributed = (init_distributed(args.dist_backend, args.dist_timeout) if wanted else None)
    try:
        summary, run_dir = _run_command(args, argv, distributed)
    except USER_ERRORS as error:
        if distributed is None:
            raise  # main() reports it
        print(f"neuroplast: error: {error}", file=sys.stderr)
        exit_process(2)  # a normal teardown could wait on a peer that is gone
    status = _exit_status(summary["stopped_early"])
    if distributed is None or distributed.is_main:
        _print_summary(run_dir, summary)
    if distributed is not None:
        distributed.barrier()  # rank 0 has written everything
        exit_process(status)
    return status


def _run_command(args: argparse.Namespace, argv: list[str], distributed):
    from .train import run

    if args.command == "train":
        options = {k: v for k, v in vars(args).items() if k != "command"}
        config = config_from_options(options, "neuroplast " + shlex.join(argv))
        if distributed is None or distributed.is_main:
            print(f"neuroplast: {_describe(config)}", file=sys.stderr)
        return run.train_run(config, distributed=distributed), config.run_dir()
    summary = run.resume_run(args.run_dir, progress=args.progress, distributed=distributed,
                             device=args.device, threads=args.threads)
    return summary, Path(args.run_dir)


def _describe(config: RunConfig) -> str:
    """One line saying which job runs, so an added option never changes it unnoticed."""
    widths = "" if config.widths is None else " " + "-".join(map(str, config.widths))
    return (f"training {config.method} on {config.model}{widths}, {config.dataset}, "
            f"{config.train.epochs} epochs, seed {config.train.seed} -> {config.run_dir()}")


def _exit_status(stopped_early: str | None) -> int:
    """0 for a finished run; for an interrupted one the shell's 128 + signal (130 Ctrl-C, 143
    SIGTERM), so a scheduler or a `&&` chain sees the run did not finish; 1 otherwise."""
    if stopped_early is None:
        return 0
    if stopped_early == "interrupted by SIGTERM":
        return 128 + signal.SIGTERM
    if stopped_early == "interrupted":
        return 128 + signal.SIGINT
    return 1


def _print_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    accuracy, loss = summary["test_accuracy"], summary.get("test_loss")
    if accuracy is None and loss is not None:  # a regression: its loss is the measure
        text = f"loss {loss:.4g}"
    else:
        text = "accuracy " + ("n/a" if accuracy is None else f"{accuracy:.2%}")
    widths = "-".join(map(str, summary["initial_widths"])), "-".join(
        map(str, summary["final_widths"]))
    counts = summary.get("layer_counts") or []
    # Say what the widths count when it is not each layer's own units (gated inputs, say).
    meaning = "" if all(c == "units it outputs" for c in counts) else f" ({', '.join(counts)})"
    print(f"{summary['method']} {summary['model']} on {summary['dataset']}: test {text} "
          f"after {summary['epochs']} epochs, widths {widths[0]} -> {widths[1]}{meaning}, "
          f"{'n/a' if summary['params'] is None else format(summary['params'], ',')} "
          f"parameters, {summary['train_seconds']:.1f}s")
    if (run_dir / "report.md").exists():  # a run stopped before its first checkpoint has none
        print(f"report: {run_dir / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
