"""Package-level checks: every command answers --help, no import cycles, the wheel ships
its configs and an installed wheel finds them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

COMMANDS = [
    [],
    ["data"],
    ["train"],
    ["train", "user"],
    ["train", "lookalike"],
    ["export"],
    ["evaluate"],
    ["experiment"],
    ["serve"],
    ["demo"],
    ["data", "synth"],
    ["config"],
    ["config", "show"],
]
SHIPPED = ["dataset.example.toml", "experiment-ml100k-full.toml", "experiment-ml100k-quick.toml"]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ralm", *cmd, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def _import_graph() -> dict[str, set[str]]:
    """ralm module -> ralm modules it imports (module level and inside functions)."""
    mods: dict[str, Path] = {}
    for p in (SRC / "ralm").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module} & mods.keys()
                deps |= {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & mods.keys()
        # a module importing its own package's __init__ is not a cycle of modules
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert "ralm.evaluation.runner" in graph["ralm.evaluation.ablations"]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    cycles = {frozenset({a, b}) for a, deps in graph.items() for b in deps if reaches(b, a)}
    assert frozenset({"ralm.evaluation.ablations", "ralm.evaluation.experiment"}) not in cycles
    assert not cycles, sorted(map(sorted, cycles))


@pytest.mark.parametrize("cmd", [[], ["train"], ["data"], ["data", "describe"]])
def test_help_does_not_load_torch(cmd: list[str]) -> None:
    """Training, serving and evaluation are imported when used, so this help stays fast."""
    code = (
        "import sys, ralm.cli\n"
        "try:\n"
        f"    ralm.cli.app({[*cmd, '--help']!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    assert out.stdout.split()[-1] == "False"


@pytest.mark.slow
def test_wheel_ships_configs_and_installed_copy_finds_them(tmp_path: Path) -> None:
    # build from a copy, so the worktree gets no build/ or egg-info
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    shutil.copy(ROOT / "README.md", tree)
    shutil.copytree(
        SRC / "ralm", tree / "src" / "ralm", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(tree),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("ralm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"ralm/configs/{name}" in names

    # "install" the wheel into its own folder; dependencies come from this interpreter
    site = tmp_path / "site"
    inst = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert inst.returncode == 0, inst.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run_dir = tmp_path / "elsewhere"  # no src/ or configs/ around
    run_dir.mkdir()

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, cwd=run_dir
        )

    out = installed("-m", "ralm", "demo", "--help")
    assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    code = (
        "import ralm, ralm.cli.demo as d; from ralm.config_files import resolve_config; "
        "from ralm.evaluation.config import load_experiment_config; "
        "p = resolve_config(d.DEFAULT_CONFIG); load_experiment_config(p); "
        "print(ralm.__file__); print(p); "
        "print(resolve_config('configs/experiment-ml100k-full.toml'))"
    )
    out = installed("-c", code)
    assert out.returncode == 0, out.stderr
    module, quick, full = (Path(line) for line in out.stdout.split())
    for path in (module, quick, full):
        assert path.is_relative_to(site), path  # the installed copy, not the source tree
    assert quick.name == "experiment-ml100k-quick.toml"
    assert quick.read_text() == (SRC / "ralm" / "configs" / quick.name).read_text()
    # the console script of the wheel
    script = installed(str(site / "bin" / "ralm"), "experiment", "--help")
    assert script.returncode == 0 and "shipped" in script.stdout, script.stderr
    # the scorer kernel's C source ships, and the installed copy builds it
    for name in ("chain.c", "chain_body.h"):
        assert f"ralm/lookalike/kernels/{name}" in names
    env["RALM_KERNEL_DIR"] = str(tmp_path / "kernels")
    env["RALM_SCORER_KERNEL"] = "on"
    out = installed(
        "-c", "from ralm.lookalike import scorer_kernel; print(scorer_kernel.load().path)"
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(tmp_path / "kernels")
