"""The code's own checks run with the tests: ruff and mypy --strict on everything (the product,
its simulators, its benches and these tests), and the layering of the packages."""

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


# Every package of ours, tests included: an annotation nobody checks is a comment that can lie.
TYPED = ("parcel", "drivers", "edge", "sync", "depot", "lastmile", "simulators", "bench", "tests")


def test_mypy_is_clean_on_everything() -> None:
    result = _run("mypy", *TYPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_checks_every_package() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(TYPED)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# Which of our packages each package may import (besides itself). Imports flow one way:
# edge -> drivers, sync; depot -> sync; both -> parcel (what both sides speak); only the CLI
# and bench reach simulators, and a simulator never the driver it stands in for.
ALLOWED = {
    "parcel": set(),
    "drivers": {"parcel"},
    "sync": {"parcel"},
    "edge": {"parcel", "drivers", "sync"},
    "depot": {"parcel", "sync"},
    "simulators": {"parcel", "sync", "drivers", "edge", "depot"},  # day.py only; see below
    "lastmile": {"parcel", "drivers", "sync", "edge", "depot", "simulators"},
    "bench": {"parcel", "drivers", "sync", "edge", "depot", "simulators"},
}
OURS = set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    found = False
    for path in sorted((ROOT / package).rglob("*.py")):
        found = True
        tops = {n.split(".")[0] for n in _imports(path)}
        bad = (tops & OURS) - allowed
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    assert found, f"no package {package}"


def test_the_rules_forbid_what_the_house_forbids() -> None:
    # The table above is the rule; this pins the lines the house must never cross.
    assert "depot" not in ALLOWED["edge"] and "edge" not in ALLOWED["depot"]
    assert "drivers" not in ALLOWED["depot"]
    assert "depot" not in ALLOWED["sync"] | ALLOWED["drivers"]
    assert "edge" not in ALLOWED["sync"] | ALLOWED["drivers"]
    assert {p for p, deps in ALLOWED.items() if "simulators" in deps} == {"lastmile", "bench"}


def test_no_device_package_imports_simulators_or_the_depot() -> None:
    """Also the lazy imports inside functions: the CLI moved out of edge for this."""
    for package in ("drivers", "edge", "sync", "parcel"):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = {n for n in _imports(path) if n.split(".")[0] in {"simulators", "depot"}}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_the_store_talks_to_the_depot_database() -> None:
    """depot/store/ owns the connection, the migrations and every statement; the rest of the
    depot calls its named functions (so both backends run the same SQL, and one place says
    which tables a part touches)."""
    store = ROOT / "depot" / "store"
    for path in sorted((ROOT / "depot").rglob("*.py")):
        if store in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        statements = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"execute", "executemany", "executescript"}
        ]
        assert not statements, f"{path.relative_to(ROOT)} runs SQL at lines {statements}"
        drivers = {n for n in _imports(path) if n.split(".")[0] in {"sqlite3", "psycopg"}}
        assert not drivers, f"{path.relative_to(ROOT)} imports {drivers}"


def test_a_simulator_never_imports_the_driver_it_stands_in_for() -> None:
    for path in sorted((ROOT / "simulators").glob("*.py")):
        if path.name == "day.py":  # the scenario runner runs the real device and depot software
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in {"drivers", "edge"}}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_light_commands_do_not_load_heavy_modules() -> None:
    code = (
        "import sys; from lastmile.cli import build_parser; build_parser(); "
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
