"""The documentation: the site builds with ``mkdocs build --strict``, and its examples work.

Rules for the Markdown of README.md and docs/*.md:

- every ```python block and every shell block (```bash, ```sh, ..., or a bare ``` block that
  starts with ``neuroplast``) runs, unless the line before it is an HTML comment
  ``<!-- skip: <reason> -->``; ``<!-- test: run -->`` says it runs;
- every ``neuroplast ...`` command in a shell (or ```console) block must parse with the real
  argument parser, and a ``--recipe NAME`` must name an installed recipe.

The blocks of one file run in order, in one temporary directory, so a block can use the files
and runs an earlier one wrote; a ``../shared`` beside that directory points at the ``../shared``
beside the repository. Shell blocks run in bash with ``set -e``, quickly and on tiny data (see
tests/docs_shell.py, which prints what it changes): ``neuroplast train`` gets ``--epochs 1``, a
``--data-dir`` (MNIST, Fashion-MNIST, CIFAR-10, or a CSV/npz file no earlier block wrote)
becomes a tiny stand-in of the same format (tests/tiny_data.py), a ``<recipe>`` placeholder a
quick recipe; ``neuroplast resume`` of a finished run continues it for one more epoch. What
does not run here is skipped, with its reason printed (``docs_shell.SKIPS``): ``pip``,
data-parallel runs (``--nproc-per-node``, ``--distributed``, ``torchrun``), ``--device cuda``,
``python -m pytest`` and ``python -m benchmarks`` without ``--smoke``.

``pytest -m "not examples"`` leaves the examples out (about a minute).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = Path(__file__).resolve().parent / "docs_shell.py"
SHELL_LANGUAGES = ("bash", "sh", "shell")
PARSED_LANGUAGES = (*SHELL_LANGUAGES, "console")  # console (prompts, output): parsed, not run

# Blocks of pages that other people are editing, which cannot run as written: (page, a line of
# the block) -> why. Remove an entry once its page fixes the block or marks it with a skip.
PENDING: dict[tuple[str, str], str] = {}  # (page, a line of the block) -> why it cannot run

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_MARK = re.compile(r"<!--\s*(skip|test)\s*:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    code: str
    mark: tuple[str, str] | None  # ("skip", reason) or ("test", "run")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        language, code = match.group(1).lower(), match.group(2)
        if not language and code.startswith("neuroplast "):  # a bare fence around a command
            language = "bash"
        found.append(Block(str(path.relative_to(REPO)), line, language, code,
                           (mark.group(1), mark.group(2)) if mark else None))
    return found


def pending(block: Block) -> str | None:
    for (page, line), why in PENDING.items():
        if block.page == page and line in block.code:
            return why
    return None


def runnable(block: Block) -> bool:
    if block.language not in ("python", *SHELL_LANGUAGES):
        return False
    return not (block.mark and block.mark[0] == "skip") and pending(block) is None


def test_rules_are_used_as_meant():
    """A mark sits before a block it can apply to, and the README keeps CI's two commands."""
    for path in PAGES:
        for block in blocks(path):
            if block.mark == ("test", "run"):
                assert block.language in ("python", *SHELL_LANGUAGES), block.where
            elif block.mark:
                assert block.mark[0] == "skip" and block.mark[1], (
                    f"{block.where}: write <!-- skip: <reason> --> or <!-- test: run -->")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert 'pip install ".[full]" && neuroplast train\n' in readme
    assert 'pip install ".[test]" && python -m pytest tests\n' in readme  # what .ci/run runs


def _commands(code: str) -> list[list[str]]:
    """The argument lists of the ``neuroplast`` commands in a shell block (heredocs skipped)."""
    lines, heredoc = [], None
    for line in code.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        start = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if start:
            heredoc = start.group(1)
        lines.append(line)
    commands = []
    for line in lines:
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token not in ("&&", "||", ";", "|"):
                command.append(token)
                continue
            if command and command[0] == "neuroplast":
                commands.append(command[1:])
            elif "-m" in command and command[command.index("-m") + 1:][:1] == ["neuroplast"]:
                commands.append(command[command.index("-m") + 2:])
            command = []
    return commands


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_commands_parse(path):
    from neuroplast.cli import build_parser
    from neuroplast.recipes import recipe_names

    parser, recipes = build_parser(), set(recipe_names())
    for block in blocks(path):
        if block.language not in PARSED_LANGUAGES:
            continue
        for argv in _commands(block.code):
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
                    args = parser.parse_args(argv)
            except SystemExit as exit:  # argparse's way out: --help (0) or an error (2)
                assert exit.code == 0, (
                    f"{block.where}: `neuroplast {shlex.join(argv)}`: {stderr.getvalue()}")
                continue
            recipe = getattr(args, "recipe", None)
            if recipe and "<" not in recipe:
                assert recipe.removesuffix(".toml") in recipes, (
                    f"{block.where}: no installed recipe {recipe!r}")


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


RUNNABLE = [path for path in PAGES if any(runnable(b) for b in blocks(path))]


@pytest.fixture(scope="session")
def docs_server(tmp_path_factory):
    """tests/docs_shell.py's server, warm, with the tiny data sets: (socket, environment)."""
    if not hasattr(os, "fork") or not hasattr(socket, "AF_UNIX"):
        pytest.skip("the docs' examples run through a forking server (POSIX only)")
    from tiny_data import write_tiny_data

    root = tmp_path_factory.mktemp("docs")
    write_tiny_data(root / "data")
    # A socket's path has a short limit (104-108 bytes): keep it out of deep temporary paths.
    sockets = Path(tempfile.mkdtemp(prefix="neuroplast-docs-"))
    address = str(sockets / "server")
    env = dict(os.environ, DOCS_TEST_PYTHON=sys.executable, DOCS_TEST_CLIENT=str(SHELL),
               DOCS_TEST_SOCKET=address, MPLBACKEND="Agg", NEUROPLAST_CACHE=str(root / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(SHELL), "serve", address, str(root / "data")], env=env,
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        assert server.stdout.readline().strip() == "ready", log_path.read_text()[-4000:]
        yield address, env, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and what it still runs
        server.wait(timeout=30)
        server.stdout.close()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.examples
@pytest.mark.parametrize("path", RUNNABLE, ids=_page_id)
def test_examples_run(path, tmp_path, docs_server):
    from docs_shell import request

    address, env, log = docs_server
    work = tmp_path / "work"
    work.mkdir()
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    chosen = [{"where": b.where, "language": b.language, "code": b.code}
              for b in blocks(path) if runnable(b)]
    (tmp_path / "blocks.json").write_text(json.dumps(chosen))
    failures, output = tmp_path / "failures.txt", tmp_path / "output.txt"
    message = {"kind": "page", "blocks": str(tmp_path / "blocks.json"), "cwd": str(work),
               "env": dict(env, DOCS_TEST_FAILURES=str(failures))}
    with open(os.devnull) as stdin, open(output, "w") as out:
        status = request(address, message, [stdin.fileno(), out.fileno(), out.fileno()],
                         timeout=600)
    if status:
        failed = failures.read_text() if failures.exists() else ""
        server = log.read_text(errors="replace")[-3000:]
        tail = output.read_text(errors="replace")[-8000:]
        pytest.fail(f"{failed}--- output (the end) ---\n{tail}"
                    + (f"\n--- server log ---\n{server}" if server else ""), pytrace=False)


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: every page, link, anchor and API entry resolves."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if not _importable(module):
            pytest.skip(f"{module} is not installed (pip install '.[docs]', or '.[test]')")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
         "--config-file", str(REPO / "mkdocs.yml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-2000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
