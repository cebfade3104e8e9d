"""The code's own checks run with the tests: ruff on everything, mypy --strict on the devices."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_drivers_edge_sync() -> None:
    result = _run("mypy", "drivers", "edge", "sync")
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["drivers", "sync"])
def test_drivers_and_sync_never_import_edge(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = {n for n in _imports(path) if n == "edge" or n.startswith("edge.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_drivers_never_import_sync_or_simulators() -> None:
    for path in sorted((ROOT / "drivers").rglob("*.py")):
        bad = {n for n in _imports(path) if n.split(".")[0] in {"sync", "simulators", "edge"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_a_simulator_never_imports_the_driver_it_stands_in_for() -> None:
    for path in sorted((ROOT / "simulators").glob("*.py")):
        if path.name == "day.py":  # the scenario runner runs the real van software
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in {"drivers", "edge"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_light_commands_do_not_load_heavy_modules() -> None:
    code = (
        "import sys; from edge.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('cv2', 'paho', 'serial', 'sqlite3', 'biip') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip() == "[]"
