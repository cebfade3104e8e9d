"""The `lastmile locker` process: killed with SIGKILL between unlock and door close, restarted.

Real process, real pseudo-terminals for the lock boards, the scanner and the keypad, real
SQLite. The parcel must keep its place and get exactly one credential.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.signing import generate_sealing_keypair

PARCEL = "RB123456785GB"


class Process:
    """A `lastmile locker` child whose display lines the test can wait for."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "locker", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, object]] = []
        self.cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def wait_display(self, text: str, timeout: float = 15.0) -> dict[str, object]:
        def find() -> dict[str, object] | None:
            return next((d for d in self.lines if text in str(d.get("display"))), None)

        with self.cond:
            assert self.cond.wait_for(lambda: find() is not None, timeout), self.lines
            found = find()
        assert found is not None
        return found

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(10) == 0


def test_sigkill_between_unlock_and_door_close(tmp_path: Path) -> None:
    _sealing_private, sealing_public = generate_sealing_keypair()
    with (
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
    ):
        config = tmp_path / "locker.toml"
        config.write_text(f"""
device_id = "locker-1"
journal = "locker.db"
jam_timeout_s = 5.0
poll_interval_s = 0.05
[lockboard]
port = "{boards.path}"
boards = [{{ board = 0 }}]
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
[[compartments]]
id = "B1"
board = 0
lock = 1
size = "M"
[couriers]
badges = ["C42"]
[scanner]
port = "{scanner.path}"
[keypad]
port = "{keypad.path}"
[depot]
sealing_key = "{base64.b64encode(sealing_public).decode()}"
""")
        locker = Process(config)
        try:
            locker.wait_display("ready")
            keypad.scan("*C42", aim=None)  # the courier identifies on the keypad
            locker.wait_display("courier welcome")
            scanner.scan(PARCEL)
            opened = locker.wait_display("door open")
            assert opened["compartment"] == "A1"
            assert boards.wait_until(lambda: boards.door_open(0, 0), 10)
        finally:
            locker.kill()  # the power cut: between unlock and door close
        boards.put_parcel(0, 0)  # the courier finishes in the dark
        boards.close_door(0, 0)
        locker = Process(config)
        try:
            stored = locker.wait_display("parcel stored")
            assert stored["compartment"] == "A1"
        finally:
            locker.stop()
    with Journal(tmp_path / "locker.db", "locker-1") as journal:
        kinds = [k for (k,) in journal.query("SELECT kind FROM events ORDER BY seq")]
        rows = journal.query("SELECT compartment, state FROM parcels WHERE parcel=?", (PARCEL,))
    assert kinds.count("parcel_deposited") == 1
    assert kinds.count("door_unlocked") == 1  # the restart opened nothing again
    assert rows == [("A1", "stored")]


def test_lockboard_simulator_serves_other_software_on_its_own(tmp_path: Path) -> None:
    from drivers.lockboard import BoardConfig, LockBus

    link = tmp_path / "cu16"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lastmile.cli",
            "sim",
            "lockboard",
            "--boards",
            "2",
            "--link",
            str(link),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        assert str(link) in sim.stdout.readline()  # printed once the pty serves
        with LockBus(str(link), [BoardConfig(0), BoardConfig(1)]) as bus:
            bus.unlock(1, 5)
            assert bus.status(1).door_open[5] is True
            assert bus.status(0).door_open == (False,) * 16
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(10) == 0
    assert not link.exists()
