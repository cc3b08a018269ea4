"""How tests/test_docs.py runs the docs' shell commands: fast, on tiny data, with stated skips.

Every page's blocks run in a process forked from one server that imported neuroplast, torch,
scikit-learn and matplotlib once for the whole session, and so does every ``neuroplast``
command of a shell block: its shell function (see :data:`PRELUDE`) hands the arguments, the
working directory, the environment and its stdin/stdout/stderr to the server over a Unix
socket, and the forked child runs ``neuroplast.cli.main`` on them. A command then costs what it
computes instead of ten seconds of imports.

Before it runs, a command is rewritten for speed (:func:`rewrite`): ``neuroplast train`` gets
``--epochs 1``, a ``--data-dir`` becomes a tiny stand-in of the same kind (tests/tiny_data.py),
a placeholder recipe becomes a quick one; or it is skipped for a reason in :data:`SKIPS`. Each
rewrite and skip is printed with the page and line of the command.

    python tests/docs_shell.py serve SOCKET DATA_DIR       # prints "ready" once listening
    python -S tests/docs_shell.py client LINE PROGRAM ARGS  # what the shell functions call

This module imports only the standard library at the top: the client starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

# The shell that runs a block: `set -e`, and functions that send these programs to the server.
# ${BASH_LINENO[1]} is the line of the block's script that called the function.
PRELUDE = """set -e
_docs_test() { "$DOCS_TEST_PYTHON" -S "$DOCS_TEST_CLIENT" client "${BASH_LINENO[1]}" "$@"; }
neuroplast() { _docs_test neuroplast "$@"; }
pip() { _docs_test pip "$@"; }
pip3() { _docs_test pip "$@"; }
torchrun() { _docs_test torchrun "$@"; }
python() { if [ "$1" = -m ]; then _docs_test python "$@"; else "$DOCS_TEST_PYTHON" "$@"; fi; }
python3() { if [ "$1" = -m ]; then _docs_test python "$@"; else "$DOCS_TEST_PYTHON" "$@"; fi; }
"""
PRELUDE_LINES = PRELUDE.count("\n")

# A `--recipe <recipe>` placeholder runs this quick recipe.
PLACEHOLDER_RECIPE = "npn-moons-sparse-cpu"
# Data sets read from files -> the stand-in in the tiny-data folder (tests/tiny_data.py).
STAND_INS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10.tar.gz",
             "csv": "my.csv", "npz": "my.npz"}
_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def _option(argv: list[str], name: str) -> list[str]:
    """The values of ``--name V`` / ``--name=V`` in ``argv``."""
    found = []
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif word.startswith(name + "="):
            found.append(word.split("=", 1)[1])
    return found


def _flag(argv: list[str], *names: str) -> bool:
    return any(word in names or word.split("=", 1)[0] in names for word in argv)


def _onnx_missing(argv: list[str]) -> bool:
    if "onnx" not in _option(argv, "--format"):
        return False
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript"))


# Commands that do not run, each with why: (program, test on its arguments, reason). The first
# that matches wins; a skip prints the command, its page and line, and the reason.
SKIPS = [
    ("pip", lambda a: True, "the test runs in the installed environment"),
    ("torchrun", lambda a: True, "starts data-parallel workers (tests/test_distributed.py "
                                 "runs two ranks)"),
    ("neuroplast", lambda a: _flag(a, "--nproc-per-node", "--distributed"),
     "starts data-parallel workers (tests/test_distributed.py runs two ranks)"),
    ("neuroplast", lambda a: any(v.startswith("cuda") for v in _option(a, "--device")),
     "needs a GPU"),
    ("neuroplast", _onnx_missing, "needs the onnx extra (pip install '.[onnx]')"),
    ("python", lambda a: a[1:2] == ["pip"], "the test runs in the installed environment"),
    ("python", lambda a: a[1:2] == ["pytest"], "the test suite itself"),
    ("python", lambda a: len(a) > 1 and a[1].split(".")[0] == "benchmarks" and "--smoke" not in a,
     "a long benchmark (only a --smoke run runs here)"),
]


def skip_reason(program: str, argv: list[str]) -> str | None:
    return next((why for name, test, why in SKIPS if name == program and test(argv)), None)


def _set(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with every value of option ``name`` replaced by ``value`` (appended if absent)."""
    out, replaced, i = [], False, 0
    while i < len(argv):
        word = argv[i]
        if word == name and i + 1 < len(argv):
            out += [name, value]
            replaced, i = True, i + 2
            continue
        if word.startswith(name + "="):
            out.append(f"{name}={value}")
            replaced = True
        else:
            out.append(word)
        i += 1
    return out if replaced else [*out, name, value]


def rewrite(argv: list[str], data: Path) -> list[str]:
    """``neuroplast train`` arguments made quick: one epoch, tiny data, a quick placeholder.

    A ``--recipe`` placeholder (``<recipe>``) becomes :data:`PLACEHOLDER_RECIPE`, a ``--config``
    file that does not exist (yet) the stand-in ``my-recipe.toml``; the data set that the
    command resolves to (typed, or from its recipe) decides the ``--data-dir``: MNIST,
    Fashion-MNIST and CIFAR-10 always read their tiny stand-ins (a real copy would take minutes
    per epoch), a CSV or npz file is kept when an earlier block wrote it. A run directory that
    an earlier block filled is overwritten (``--overwrite``): the blocks of a page are separate
    examples, often of the same job. Other commands, and ``--help``, are left as they are.
    """
    argv = list(argv)
    if argv[:1] != ["train"] or _flag(argv, "-h", "--help"):
        return argv
    from neuroplast.cli import build_parser, config_from_options

    for recipe in _option(argv, "--recipe"):
        if "<" in recipe:
            argv = _set(argv, "--recipe", PLACEHOLDER_RECIPE)
    for config in _option(argv, "--config"):
        if not Path(config).is_file():
            argv = _set(argv, "--config", str(data / "my-recipe.toml"))
    with contextlib.redirect_stderr(io.StringIO()):  # an error: main() tells it in a moment
        args = build_parser(argv).parse_args(argv)
    config = config_from_options({k: v for k, v in vars(args).items() if k != "command"})
    dataset = str(config.dataset).strip().lower().replace("_", "-")
    dataset = _ALIASES.get(dataset, dataset)
    if dataset in STAND_INS:
        stand_in = data / STAND_INS[dataset]
        if dataset in ("csv", "npz") and config.data_dir and Path(config.data_dir).is_file():
            stand_in = Path(config.data_dir)  # the page wrote it
        elif dataset == "csv" and config.label_column not in (None, "label"):
            stand_in = _csv_labelled(data, config.label_column)
        argv = _set(argv, "--data-dir", str(stand_in))
    run_dir = Path(config.run_dir())
    if run_dir.is_dir() and any(run_dir.iterdir()) and "--overwrite" not in argv:
        argv.append("--overwrite")  # an earlier block of the page trained the same job there
    return _set(argv, "--epochs", "1")


def _csv_labelled(data: Path, column: str) -> Path:
    import numpy as np
    from tiny_data import write_csv

    path = data / f"my-{column}.csv"
    if not path.exists():
        with np.load(data / "my.npz") as arrays:
            write_csv(path, arrays["x"], arrays["y"], column)
    return path


# ---- the server ------------------------------------------------------------------------------


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    chunks = [message]
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
    return json.loads(b"".join(chunks)), fds


def _send_request(path: str, request: dict, fds: list[int]) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    payload = json.dumps(request).encode()
    sent = socket.send_fds(conn, [payload], fds)
    conn.sendall(payload[sent:])
    conn.shutdown(socket.SHUT_WR)
    return conn


def request(path: str, message: dict, fds: list[int], timeout: float | None = None) -> int:
    """Send ``message`` with the descriptors ``fds``; the exit status of what it ran."""
    conn = _send_request(path, message, fds)
    conn.settimeout(timeout)
    with conn:
        reply = b"".join(iter(lambda: conn.recv(64), b""))
    return int(reply) if reply.strip() else 70  # 70: the child died without a word


def _warm_up() -> None:
    """Import (and initialise) in the server what every command would otherwise load itself."""
    import matplotlib.figure
    import sklearn.datasets  # noqa: F401
    import torch._dynamo  # noqa: F401  (the optimizers import it)

    import neuroplast.cli  # noqa: F401
    import neuroplast.export  # noqa: F401
    import neuroplast.report  # noqa: F401
    import neuroplast.train.run  # noqa: F401

    figure = matplotlib.figure.Figure()  # builds the font cache, once
    figure.add_subplot().plot([0, 1], [0, 1], label="x")
    figure.savefig(io.BytesIO(), format="png")


def serve(path: str, data: Path) -> None:
    _warm_up()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            message, fds = _recv_request(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            server.close()
            status = 70
            try:
                status = _child(message, fds, data)
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                try:
                    conn.sendall(str(status).encode())
                finally:
                    os._exit(status if 0 <= status < 256 else 1)
        conn.close()
        for fd in fds:
            os.close(fd)


def _child(message: dict, fds: list[int], data: Path) -> int:
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.chdir(message["cwd"])
    os.environ.clear()
    os.environ.update(message["env"])
    if message["kind"] == "page":
        return _run_page(json.loads(Path(message["blocks"]).read_text()))
    return _run_command(message, data)


def _where(message: dict) -> str:
    block = message["env"].get("DOCS_TEST_BLOCK")
    if not block:
        return "?"
    page, fence = block.rsplit(":", 1)
    return f"{page}:{int(fence) + int(message['line']) - PRELUDE_LINES}"


def _run_command(message: dict, data: Path) -> int:
    program, argv, where = message["program"], message["argv"], _where(message)
    typed = shlex.join([program, *argv])
    if program == "python" and argv[:2] == ["-m", "neuroplast"]:
        program, argv = "neuroplast", argv[2:]
    reason = skip_reason(program, argv)
    if reason is not None:
        print(f"docs test, {where}: skipped `{typed}`: {reason}", file=sys.stderr)
        return 0
    if program != "neuroplast":  # python -m X: a --smoke benchmark, say
        return subprocess.run([os.environ["DOCS_TEST_PYTHON"], *argv]).returncode
    try:
        ran = rewrite(argv, data)
    except (Exception, SystemExit):  # a bad command: neuroplast itself says what is wrong
        ran = argv
    print(f"docs test, {where}: neuroplast {shlex.join(ran)}", file=sys.stderr)
    _quick_runs(ran[0] if ran else "")
    from neuroplast.cli import main

    started = time.perf_counter()
    try:
        status = main(ran)
    except SystemExit as exit:  # argparse (2, or 0 for --help)
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    print(f"docs test, {where}: exit {status} after {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    if status:
        failures = os.environ.get("DOCS_TEST_FAILURES")
        if failures:
            with open(failures, "a", encoding="utf-8") as file:
                file.write(f"{where}: `{typed}` (run as `neuroplast {shlex.join(ran)}`) "
                           f"exited {status}\n")
    return status


def _quick_runs(command: str) -> None:
    """What a run does differently in this test, besides its arguments (this process only).

    * One epoch on 200 images often ends at chance, which the check at the end of a resizing
      run calls a failure: it is off (tests/test_collapse.py tests it). A collapse after an
      epoch still stops the run.
    * The one epoch a run gets leaves ``neuroplast resume`` nothing to do: a run that finished
      is resumed with one more epoch in its budget, so the command really continues it.
    """
    import neuroplast.train.run as run
    from neuroplast.train.callbacks import CollapseGuard

    CollapseGuard.on_train_end = lambda self, trainer: None
    if command != "resume":
        return
    read_config = run.read_config

    def one_more_epoch(run_dir):
        config = read_config(run_dir)
        path = Path(run_dir) / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if summary.get("stopped_early") is None and "epochs" in summary:
            config.train.epochs = summary["epochs"] + 1
            print(f"docs test: {run_dir} finished its {summary['epochs']} epochs; resumed with "
                  "one more", file=sys.stderr)
        return config

    run.read_config = one_more_epoch


def _run_page(blocks: list[dict]) -> int:
    """The blocks of one page in order, here: python blocks in this process, shell blocks in
    bash with :data:`PRELUDE`; stops at the first failure."""
    sys.path[0] = ""  # as `python -c`: the working directory, not tests/
    start = time.perf_counter()
    for block in blocks:
        print(f"--- {time.perf_counter() - start:.1f} s: {block['where']} ({block['language']})",
              flush=True)
        if block["language"] == "python":
            try:
                exec(compile(block["code"], block["where"], "exec"), {"__name__": "__main__"})
            except BaseException:
                traceback.print_exc()
                print(f"FAILED: the python block at {block['where']}", flush=True)
                return 1
            sys.stdout.flush()
            continue
        env = dict(os.environ, DOCS_TEST_BLOCK=block["where"])
        result = subprocess.run(["bash", "-c", PRELUDE + quote_placeholders(block["code"])],
                                env=env)
        if result.returncode:
            print(f"FAILED (exit {result.returncode}): the shell block at {block['where']}",
                  flush=True)
            return 1
    return 0


def quote_placeholders(code: str) -> str:
    """``--recipe <recipe>`` as the docs write it, with the placeholder quoted: bash would read
    the file ``recipe`` instead (rewrite() then puts a real recipe in its place)."""
    return re.sub(r"(?<=\s)<([A-Za-z][\w.-]*)>(?=\s|$)", r"'<\1>'", code, flags=re.M)


def _client(argv: list[str]) -> int:
    line, program, *args = argv
    message = {"kind": "command", "line": int(line), "program": program, "argv": args,
               "cwd": os.getcwd(), "env": dict(os.environ)}
    return request(os.environ["DOCS_TEST_SOCKET"], message, [0, 1, 2])


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(_client(sys.argv[2:]))
