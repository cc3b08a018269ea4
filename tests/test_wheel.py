"""The built wheel works on its own: recipes ship inside it and run by name from anywhere.

The wheel is built from a copy of the sources (the checkout stays clean) and installed without
dependencies into a new virtualenv; a ``.pth`` file lends it this interpreter's site-packages
for torch and numpy, after its own, so neuroplast itself comes from the wheel.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command, cwd: Path, timeout: float = 120) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, timeout=timeout,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.wheel
def test_the_wheel_ships_the_recipes_and_runs_one_by_name(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "neuroplast", source / "neuroplast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", tmp_path / "dist", source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("neuroplast-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).strip())
    (site / "lend-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the lent site-packages may hold a neuroplast of the same version (a
    # non-editable install, as in CI), which pip would otherwise take as already installed.
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--ignore-installed", "-q", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing found by relative path
    elsewhere.mkdir()
    where = _run(python, "-c", "import neuroplast; print(neuroplast.__file__)", cwd=elsewhere)
    assert Path(where.strip()).is_relative_to(site)
    neuroplast = venv / "bin" / "neuroplast"
    assert _run(neuroplast, "--version", cwd=elsewhere).strip() == (
        f"neuroplast {metadata.version('neuroplast')}")
    listed = _run(neuroplast, "recipes", cwd=elsewhere).splitlines()
    assert [line.split()[0] for line in listed] == sorted(
        path.stem for path in (ROOT / "neuroplast" / "recipes").glob("*.toml"))
    out = _run(neuroplast, "train", "--recipe", "npn-moons-sparse-cpu", "--epochs", "2",
               "--no-progress", "--threads", "1", "--out", "run", cwd=elsewhere)
    assert "npn mlp on moons" in out
    assert (elsewhere / "run" / "summary.json").is_file()
