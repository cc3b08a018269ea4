"""The NPN benchmark's job lists and the plots it keeps (the runs themselves are benchmarks)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import npn  # noqa: E402


def _config(arguments):
    return arguments[arguments.index("--config") + 1]


def test_full_moons_jobs_are_the_full_recipes_on_three_seeds_each():
    jobs = npn._full_moons_jobs()
    names = [name for name, _ in jobs]
    assert len(names) == len(set(names)) == 12
    for name, arguments in jobs:
        assert (ROOT / _config(arguments)).exists()
        assert not _config(arguments).endswith("-cpu.toml")  # the full 2000-epoch recipes
        assert name.endswith(f"-s{arguments[arguments.index('--seed') + 1]}")
    physical = [args for name, args in jobs if "physical" in name]
    assert len(physical) == 3 and all("physical" in args for args in physical)


def test_quick_jobs_use_the_cpu_recipes_and_only_filters_them():
    assert all(_config(args).endswith("-cpu.toml") for _, args in npn._jobs(None))
    assert {name for name, _ in npn._jobs("moons-expand")} == {
        f"moons-expand{kind}-s{seed}" for kind in ("", "-physical") for seed in (0, 1, 2)}


def test_a_seed_0_boundary_plot_is_kept_beside_the_result_file(tmp_path, monkeypatch):
    monkeypatch.setattr(npn, "RUNS_DIR", tmp_path / "runs")
    run = tmp_path / "runs" / "moons-full-expand-s0"
    run.mkdir(parents=True)
    (run / "decision_boundary.png").write_bytes(b"\x89PNG fake")
    out = tmp_path / "results" / "npn-moons-full.json"
    out.parent.mkdir()
    npn._keep_boundary_plot("moons-full-expand-s0", out)
    assert (out.parent / "npn-moons-full-expand-s0-boundary.png").read_bytes() == b"\x89PNG fake"
    npn._keep_boundary_plot("moons-full-sparse-s0", out)  # no plot (no matplotlib): nothing
    assert len(list(out.parent.iterdir())) == 1
