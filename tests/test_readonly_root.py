"""A van and a locker on a read-only root: every file a device writes lives under its state
directory (issue 14, "Read-only root and bad days").

Each device runs as a real `lastmile` process in a private mount namespace of its own where
`/` is bind-mounted read-only and only the state directory (a subdirectory of the test's
tmp_path) is writable again; the configuration, the password file, the working directory,
/tmp and /var/tmp are all read-only. The shell that sets the mounts up first checks that it
really cannot write outside the state directory, in the very namespace the device then runs
in. /dev/pts stays what it was, so the simulated scanner's pty (made by this process, outside
the namespace) is the device's scanner. Needs CAP_SYS_ADMIN (root in the test container):
skipped, with the reason, where `unshare -m` is not permitted.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from depot.ingest import Depot, DepotStore, IngestResult
from simulators.broker import Broker
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.signing import generate_sealing_keypair
from tests.conftest import address
from tests.lockers import locker_toml

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 20.0  # every wait for a process's line gives up after this
NOT_READ_ONLY = 97  # the set-up script's exit status when / is still writable

# $1: the state directory, $2: a file that must not be writable; then the command.
# `--rbind` keeps /dev, /dev/pts and /proc mounted under the new root; remounting the root
# bind read-only leaves them as they were. `cd` again: the old working directory is on the
# writable mount the namespace started with.
SETUP = r"""
set -e
state=$1; probe=$2; shift 2
mount --rbind / /
mount -o remount,bind,ro /
mount --bind "$state" "$state"
mount -o remount,bind,rw "$state"
cd "$(pwd -P)"
if touch "$probe" 2>/dev/null || touch /tmp/.lastmile-probe 2>/dev/null; then
    echo "the root is still writable" >&2
    exit 97
fi
touch "$state/.writable" && rm "$state/.writable"
exec "$@"
"""


def _unshare_or_skip() -> str:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) on this machine")
    tried = subprocess.run(
        [unshare, "-m", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    if tried.returncode != 0:
        pytest.skip(f"a private mount namespace is not permitted here: {tried.stderr.strip()}")
    return unshare


class ReadOnlyRoot:
    """A `lastmile` process in a namespace where only `state` is writable."""

    def __init__(self, tmp_path: Path, state: Path, *args: str) -> None:
        unshare = _unshare_or_skip()
        self.proc = subprocess.Popen(
            [
                unshare, "-m", "--propagation", "private",
                "sh", "-c", SETUP, "sh", str(state), str(tmp_path / "probe"),
                sys.executable, "-m", "lastmile.cli", *args,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, object]] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.ended = False
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._line), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._error), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, take: Callable[[str], None]) -> None:
        assert stream is not None
        for line in stream:
            with self.cond:
                take(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.ended = True  # the process closed its output: it is done
            self.cond.notify_all()

    def _line(self, line: str) -> None:
        self.lines.append(json.loads(line))

    def _error(self, line: str) -> None:
        self.errors.append(line)

    def wait(self, found: Callable[[list[dict[str, object]]], bool]) -> None:
        """Until a stdout line `found` it (and the process still runs)."""
        self._wait(lambda: found(self.lines))

    def wait_log(self, text: str) -> None:
        """Until a stderr line holds `text`."""
        self._wait(lambda: any(text in line for line in self.errors))

    def _wait(self, found: Callable[[], bool]) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: found() or self.ended, WAIT_S)
            assert ok and not self.ended, (self.proc.poll(), self.lines, self.errors)

    def stop(self) -> list[str]:
        """SIGTERM, a clean exit, and its stderr lines."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)
        assert code == 0, (code, self.errors)
        return self.errors

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)


def _no_write_trouble(errors: list[str]) -> None:
    bad = [
        line
        for line in errors
        if "Read-only" in line or "ERROR" in line or "Traceback" in line or "readonly" in line
    ]
    assert not bad, errors


class Stored:
    """Wakes the test when the depot stored a device's events (no polling)."""

    def __init__(self) -> None:
        self.head = 0
        self.cond = threading.Condition()

    def __call__(self, _device: str, result: IngestResult) -> None:
        with self.cond:
            self.head = max(self.head, result.ack.seq)
            self.cond.notify_all()

    def wait(self, seq: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.head >= seq, WAIT_S)


@pytest.fixture
def depot(broker: Broker, tmp_path: Path) -> Iterator[Stored]:
    stored = Stored()
    store = DepotStore(str(tmp_path / "depot.db"))
    service = Depot(store, address(broker, "depot"), on_stored=stored)
    service.start()
    assert service.session.wait_connected(10)
    yield stored
    service.stop()
    store.close()


def _confirmed(n: int) -> Callable[[list[dict[str, object]]], bool]:
    return lambda lines: sum("confirmed" in line for line in lines) >= n


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """etc/ (read-only inside: the configuration) and state/ (the one writable place)."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    return etc, state


def test_a_van_on_a_read_only_root_confirms_and_sends_its_scans(
    broker: Broker, depot: Stored, tmp_path: Path
) -> None:
    etc, state = _layout(tmp_path)
    (etc / "van.password").write_text(broker.credentials("van-1")[1])
    config = etc / "van.toml"
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config.write_text(
            f'device_id = "van-1"\n'
            f'journal = "{state / "van-1.journal.db"}"\n'
            f'[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nport = {broker.port}\npassword_file = "van.password"\n'
            f"[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"
        )
        van = ReadOnlyRoot(tmp_path, state, "van", "--config", str(config))
        try:
            van.wait_log("edge.van: scanner connected")  # a scan before it would be lost
            labels = ["RB123456785GB", "RB945807304GB", "RR573681935NL"]
            for n, label in enumerate(labels, start=1):
                scanner.scan(label)
                van.wait(_confirmed(n))
            assert depot.wait(len(labels)), "the depot did not store the van's scans"
            errors = van.stop()
        finally:
            van.kill()
    assert [line["parcel"] for line in van.lines if "confirmed" in line] == labels
    _no_write_trouble(errors)
    assert not (tmp_path / "probe").exists()
    assert sorted(p.name for p in etc.iterdir()) == ["van.password", "van.toml"]
    with Journal(state / "van-1.journal.db", "van-1") as journal:
        assert journal.acked_seq == journal.last_seq == len(labels)


def test_a_locker_on_a_read_only_root_stores_a_parcel(tmp_path: Path) -> None:
    etc, state = _layout(tmp_path)
    _private, sealing_public = generate_sealing_keypair()
    with (
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
    ):
        config = etc / "locker.toml"
        config.write_text(
            locker_toml(
                journal=str(state / "locker-1.journal.db"),
                lockboard=str(boards.path),
                scanner=str(scanner.path),
                keypad=str(keypad.path),
                sealing_public=sealing_public,
                settings="poll_interval_s = 0.05",
            )
        )
        locker = ReadOnlyRoot(tmp_path, state, "locker", "--config", str(config))

        def shown(text: str) -> Callable[[list[dict[str, object]]], bool]:
            return lambda lines: any(text in str(line.get("display")) for line in lines)

        try:
            locker.wait(shown("ready"))
            keypad.scan("*C42", aim=None)
            locker.wait(shown("courier welcome"))
            scanner.scan("RB123456785GB")
            locker.wait(shown("door open"))
            boards.put_parcel(0, 0)
            boards.close_door(0, 0)
            locker.wait(shown("parcel stored"))
            errors = locker.stop()
        finally:
            locker.kill()
    _no_write_trouble(errors)
    assert sorted(p.name for p in etc.iterdir()) == ["locker.toml"]
    with Journal(state / "locker-1.journal.db", "locker-1") as journal:
        kinds = [k for (k,) in journal.query("SELECT kind FROM events ORDER BY seq")]
    assert "parcel_deposited" in kinds
