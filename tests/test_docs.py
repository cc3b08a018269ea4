"""The documentation: the site builds with ``mkdocs build --strict``, and its examples work.

Rules for the Markdown of README.md and docs/*.md:

- every ```python block runs, unless the line before it is an HTML comment
  ``<!-- skip: <reason> -->`` (for the few that need hours of CPU);
- a ```bash block runs when the line before it is ``<!-- test: run -->``: as one bash script
  with ``set -e``, where ``pip`` does nothing (the test runs in the installed environment) and
  every ``neuroplast train`` gets ``--epochs 1`` appended (the last value of an option wins);
- every ``neuroplast ...`` command in any bash block, run or not, must parse with the real
  argument parser, and a ``--recipe NAME`` must name an installed recipe.

The runnable blocks of one file run in order, in one temporary directory, so a block can use
the files an earlier one wrote. A ``../shared`` beside that directory points at the
``../shared`` beside the repository (the MNIST data of ``../shared/data/mnist``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Blocks of pages that other people are editing, which cannot run as written: (page, a line of
# the block) -> why. Remove an entry once its page fixes the block or marks it with a skip.
PENDING = {
    ("docs/metanet.md", 'data = load_dataset("mnist", "/work/shared/data/mnist")'):
        "trains 20 MNIST epochs, from an absolute data path",
}

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
        found.append(Block(str(path.relative_to(REPO)), line, match.group(1).lower(),
                           match.group(2), (mark.group(1), mark.group(2)) if mark else None))
    return found


def pending(block: Block) -> str | None:
    for (page, line), why in PENDING.items():
        if block.page == page and line in block.code:
            return why
    return None


def runnable(block: Block) -> bool:
    if block.language == "python":
        return not (block.mark and block.mark[0] == "skip") and pending(block) is None
    return block.language in ("bash", "sh") and block.mark == ("test", "run")


def test_rules_are_used_as_meant():
    """A mark sits before a block it can apply to, and the README keeps CI's two commands."""
    for path in PAGES:
        for block in blocks(path):
            if block.mark == ("test", "run"):
                assert block.language in ("bash", "sh", "python"), block.where
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
        if block.language not in ("bash", "sh", "shell", "console"):
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


# Runs the blocks of one page, in order, in the current directory; stops at the first failure.
_RUNNER = r'''
import json, os, subprocess, sys, time, traceback

SHELL = """set -e
pip() { echo "(pip skipped: the docs test runs in the installed environment)"; }
neuroplast() {
    if [ "$1" = train ]; then set -- "$@" --epochs 1; fi
    "$DOCS_TEST_PYTHON" -m neuroplast "$@"
}
"""
start = time.perf_counter()
for block in json.load(open(sys.argv[1])):
    print(f"--- {time.perf_counter() - start:.1f} s: {block['where']} ({block['language']})",
          flush=True)
    if block["language"] == "python":
        try:
            code = compile(block["code"], block["where"], "exec")
            exec(code, {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            sys.exit(f"FAILED: the python block at {block['where']}")
        sys.stdout.flush()
    else:
        result = subprocess.run(["bash", "-c", SHELL + block["code"]])
        if result.returncode:
            sys.exit(f"FAILED (exit {result.returncode}): the bash block at {block['where']}")
'''


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


RUNNABLE = [path for path in PAGES if any(runnable(b) for b in blocks(path))]


@pytest.mark.parametrize("path", RUNNABLE, ids=_page_id)
def test_examples_run(path, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared, target_is_directory=True)
    chosen = [{"where": b.where, "language": b.language, "code": b.code}
              for b in blocks(path) if runnable(b)]
    (tmp_path / "blocks.json").write_text(json.dumps(chosen))
    env = dict(os.environ, DOCS_TEST_PYTHON=sys.executable, MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(tmp_path / "blocks.json")], cwd=work, env=env,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{result.stderr[-6000:]}\n--- output ---\n{result.stdout[-6000:]}")


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
