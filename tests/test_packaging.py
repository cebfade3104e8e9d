"""The package as a user gets it: a wheel, installed without the repository, extras kept apart.

The slow tests build the wheel from a copy of the sources, install it without any extra into a
new virtual environment (pip fetches the base dependencies from the package index) and run
the installed `lastmile` from there: `--version`, the one-line answers for a missing extra, and
a van on a simulated scanner (a real pty) that confirms a scan and syncs it, and its version,
to a depot in this process through the tests' own Mosquitto. The fast ones hold the extras'
list (`parcel.version.EXTRAS`) to pyproject.toml, and keep the device modules free of the
extras' modules in the full development install too.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from depot.ingest import Depot, DepotStore
from parcel.version import EXTRAS
from simulators.broker import Broker
from simulators.scanner import SimulatedScanner
from tests.conftest import address
from tests.test_end_to_end import DepotWatch

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = str(PYPROJECT["project"]["version"])
INSTALL_S = 600.0  # a safety net for pip on a slow index; a warm cache takes seconds
WAIT_S = 30.0
EXTRA_MODULES = sorted(m for names in EXTRAS.values() for m in names)
PARCEL = "RB123456785GB"


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found, requirement
    return re.sub(r"[-_.]+", "-", found.group(0)).lower()


# --- fast: the extras as declared ----------------------------------------------------------


def test_each_extras_modules_come_from_that_extras_requirements() -> None:
    declared = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    sources = packages_distributions()  # module -> the installed distributions providing it
    for extra, modules in EXTRAS.items():
        required = {_name(r) for r in declared[extra]}
        for module in modules:
            providers = {_name(d) for d in sources.get(module, [])}
            assert providers & required, f"{module} is not brought by [{extra}] ({providers})"
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for module in EXTRA_MODULES:
        assert not {_name(d) for d in sources.get(module, [])} & base, f"{module} is in the base"


def test_a_van_and_a_locker_without_a_camera_load_no_extra(tmp_path: Path) -> None:
    """With every extra installed (the development set-up), a van's and a locker's modules
    and configurations still load none of them: a base install would have them missing."""
    (tmp_path / "van.toml").write_text(
        'device_id = "van-1"\n[scanner]\nport = "/dev/null"\n[broker]\nport = 1\n'
        'password = "x"\n'
    )
    (tmp_path / "locker.toml").write_text(
        'device_id = "locker-1"\n[lockboard]\nport = "/dev/null"\n'
        '[[compartments]]\nid = "A1"\nboard = 0\nlock = 0\nsize = "S"\n'
    )
    code = (
        "import json, sys\n"
        "from lastmile.cli import build_parser\n"
        "from edge.van import Van, load_config\n"
        "from edge.locker_device import LockerDevice\n"
        "from edge.locker_config import load_locker_config\n"
        "import depot.errors\n"  # what `lastmile van` imports to name its errors
        "build_parser()\n"
        f"load_config({str(tmp_path / 'van.toml')!r})\n"
        f"load_locker_config({str(tmp_path / 'locker.toml')!r})\n"
        f"print(json.dumps([m for m in {EXTRA_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# --- slow: the wheel in a new virtual environment -----------------------------------------


def _run(*cmd: str | Path, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the new environment's bin directory, the wheel): base install, no extra."""
    work = tmp_path_factory.mktemp("packaging")
    # Built from a copy: pip builds in the source tree, and this one is shared.
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        shutil.copytree(
            ROOT / package.rstrip("*"), src / package.rstrip("*"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
        "-w", work / "dist", src, cwd=work, timeout=INSTALL_S,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (work / "dist").glob("lastmile_edge-*.whl")
    made = _run(sys.executable, "-m", "venv", work / "env", cwd=work, timeout=120)
    assert made.returncode == 0, made.stderr
    bin_dir = work / "env" / "bin"
    pip = _run(
        bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check", wheel,
        cwd=work, timeout=INSTALL_S,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    yield bin_dir, wheel


@pytest.mark.slow
def test_the_wheel_holds_the_depots_pages_and_installs_without_extras(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("templates", "static"):
        files = sorted((ROOT / "depot" / "web" / folder).iterdir())
        assert files
        for path in files:
            assert f"depot/web/{folder}/{path.name}" in names, path
    assert not any(n.startswith("tests/") for n in names)

    version = _run(bin_dir / "lastmile", "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"lastmile-edge {VERSION}\n")

    for module in EXTRA_MODULES:  # none of the extras came along
        missing = _run(bin_dir / "python", "-c", f"import {module}", cwd=tmp_path)
        assert "ModuleNotFoundError" in missing.stderr, (module, missing.stderr)
    devices = _run(
        bin_dir / "python", "-c",
        "import sys, lastmile.cli, edge.van, edge.locker_device, edge.locker_config; "
        "print(sys.modules['edge.van'].__file__)",
        cwd=tmp_path,
    )
    assert devices.returncode == 0, devices.stderr
    assert Path(devices.stdout.strip()).is_relative_to(bin_dir.parent)  # the wheel's, not ours

    # What needs an extra says which, in one line.
    depot = _run(bin_dir / "lastmile", "depot", "--config", tmp_path / "depot.toml", cwd=tmp_path)
    assert depot.returncode == 2 and "Traceback" not in depot.stderr, depot.stderr
    assert depot.stderr.strip() == "lastmile depot: needs `pip install 'lastmile-edge[depot]'`"
    config = tmp_path / "van.toml"
    config.write_text(
        'device_id = "van-1"\n[scanner]\nport = "/dev/null"\n[broker]\nport = 1\n'
        'password = "x"\n[camera]\nsource = "0"\n'
    )
    camera = _run(bin_dir / "lastmile", "van", "--config", config, cwd=tmp_path)
    assert camera.returncode == 2 and len(camera.stderr.strip().splitlines()) == 1, camera.stderr
    assert "the camera needs `pip install 'lastmile-edge[camera]'`" in camera.stderr


@pytest.mark.slow
def test_the_installed_van_confirms_a_scan_and_syncs_it_with_its_version(
    installed: tuple[Path, Path], broker: Broker, tmp_path: Path
) -> None:
    bin_dir, _ = installed
    watch = DepotWatch()
    store = DepotStore(str(tmp_path / "depot.db"))
    depot = Depot(store, address(broker, "depot"), on_stored=watch, on_status=watch.status)
    depot.start()
    scanner = SimulatedScanner(tmp_path / "scanner.tty")
    try:
        assert depot.session.wait_connected(10)
        (tmp_path / "van.pw").write_text(broker.credentials("van-1")[1])
        config = tmp_path / "van.toml"
        config.write_text(
            f'device_id = "van-1"\njournal = "van-1.db"\n'
            f'[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nport = {broker.port}\npassword_file = "van.pw"\n'
            f"[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        van = subprocess.Popen(
            [str(bin_dir / "lastmile"), "-v", "van", "--config", str(config)],
            cwd=tmp_path, env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        lines: queue.Queue[str] = queue.Queue()
        log: list[str] = []
        scanner_up = threading.Event()

        def read_log() -> None:
            assert van.stderr is not None
            for line in van.stderr:
                log.append(line)
                if "scanner connected" in line:
                    scanner_up.set()

        def read_beeps() -> None:
            for line in van.stdout or ():
                lines.put(line)

        readers = [threading.Thread(target=read_beeps), threading.Thread(target=read_log)]
        for reader in readers:
            reader.start()
        try:
            assert scanner_up.wait(WAIT_S), "".join(log)
            scanner.scan(PARCEL)
            beep = json.loads(lines.get(timeout=WAIT_S))
            assert beep["confirmed"] == 1 and PARCEL in beep.values(), beep
            watch.wait_head("van-1", 1, WAIT_S)  # stored at the depot and acknowledged
            watch.wait_state("van-1", "online", WAIT_S)
            assert store.query("SELECT software FROM device_status WHERE device='van-1'") == [
                (VERSION,)
            ]
        finally:
            van.send_signal(signal.SIGTERM)
            code = van.wait(WAIT_S)
            for reader in readers:
                reader.join(WAIT_S)
        assert code == 0, "".join(log)
        assert "Traceback" not in "".join(log)
        watch.wait_state("van-1", "offline", WAIT_S)  # its goodbye on a clean stop
        stored = store.query("SELECT payload FROM events WHERE device='van-1' AND seq=1")
        assert PARCEL in str(stored[0][0])
    finally:
        scanner.close()
        depot.stop()
        store.close()
