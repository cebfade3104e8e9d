"""The devices under systemd (issue 14): `Type=notify`, `WatchdogSec=`, SIGTERM, SIGHUP.

The test is systemd's end of the notify protocol: it binds the datagram socket a device is
told about in NOTIFY_SOCKET and reads what arrives. Real `lastmile van` and `lastmile locker`
processes on real pseudo-terminals and a real broker send READY=1 once started, STATUS= lines,
WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 on SIGTERM before a clean exit that keeps
every confirmed event. A van and a locker in this process show that a reader thread or the
controller loop hung in a callback stops the pings (and that they resume once it runs again),
and a device of the test's own shows SIGHUP's reload hook with real signals.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edge.locker_config import load_locker_config
from edge.locker_device import LockerDevice
from edge.van import Van, VanConfig
from lastmile.service import Control, Device, Notifier, run, watchdog_interval
from simulators.broker import Broker
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.signing import generate_sealing_keypair
from sync.wire import Event
from tests.conftest import address
from tests.lockers import SMALL_AND_MEDIUM, locker_toml

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 20.0  # every wait for a message, a line or a thread gives up after this
PARCELS = ("RB123456785GB", "RB123456799GB", "RB222222225GB")
SYNC = "[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"

Message = dict[str, str]


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: every datagram, parsed into its KEY=VALUE fields.

    ``address`` as a device is given it: a path, or ``@name`` in the abstract namespace.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[Message] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def close(self) -> None:
        self._sock.close()

    def _next(self, deadline: float) -> Message | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.seen.append(message)
        return message

    def wait_for(self, wanted: Callable[[Message], bool], what: str) -> Message:
        """The first message from now on that is ``wanted``; fails after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while (message := self._next(deadline)) is not None:
            if wanted(message):
                return message
        raise AssertionError(f"no {what} within {WAIT_S} s; seen: {self.seen[-20:]}")

    def during(self, seconds: float) -> list[Message]:
        """Every message that arrives in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        got: list[Message] = []
        while (message := self._next(deadline)) is not None:
            got.append(message)
        return got


def ready(m: Message) -> bool:
    return m.get("READY") == "1"


def ping(m: Message) -> bool:
    return m.get("WATCHDOG") == "1"


def stopping(m: Message) -> bool:
    return m.get("STOPPING") == "1"


def status_with(text: str) -> Callable[[Message], bool]:
    return lambda m: text in m.get("STATUS", "")


def wait_pings(sock: NotifySocket, count: int) -> None:
    for n in range(count):
        sock.wait_for(ping, f"WATCHDOG=1 number {n + 1}")


class Child:
    """A `lastmile` process under a NOTIFY_SOCKET and a watchdog; its stdout's JSON lines."""

    def __init__(self, tmp_path: Path, notify: str, *args: str) -> None:
        env = {
            **os.environ,
            "NOTIFY_SOCKET": notify,
            "WATCHDOG_USEC": "500000",  # a ping every 0.25 s
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("WATCHDOG_PID", None)
        self.stderr_path = tmp_path / "stderr.txt"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lastmile.cli", *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: list[dict[str, object]] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()

    def wait_lines(self, wanted: Callable[[dict[str, object]], bool], count: int) -> list[
        dict[str, object]
    ]:
        def found() -> list[dict[str, object]]:
            return [line for line in self.lines if wanted(line)]

        with self._cond:
            assert self._cond.wait_for(lambda: len(found()) >= count, WAIT_S), self.lines
            return found()

    def terminate(self, sock: NotifySocket) -> float:
        """SIGTERM; STOPPING=1 must come, then exit 0. Returns the seconds the exit took."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        sock.wait_for(stopping, "STOPPING=1")
        assert self.proc.wait(WAIT_S) == 0, self.stderr()
        took = time.monotonic() - sent
        self._reader.join(WAIT_S)
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def test_a_van_under_systemd_is_ready_pings_and_stops_cleanly(
    broker: Broker, tmp_path: Path
) -> None:
    (tmp_path / "van.pw").write_text(broker.credentials("van-1")[1])
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = tmp_path / "van.toml"
        config.write_text(
            f'device_id = "van-1"\njournal = "van-1.db"\n[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nport = {broker.port}\npassword_file = "van.pw"\n{SYNC}'
        )
        van = Child(tmp_path, sock.address, "van", "--config", str(config))
        try:
            first = sock.wait_for(ready, "READY=1")
            assert sock.seen[0] is first  # nothing before it: READY=1 is the start's end
            assert "backlog" in first["STATUS"] and "no scan yet" in first["STATUS"]
            wait_pings(sock, 3)
            # Started means ready to scan: the port is open, and no scan sent now is lost.
            for parcel in PARCELS:
                scanner.scan(parcel)
            confirmed = van.wait_lines(lambda line: "confirmed" in line, len(PARCELS))
            sock.wait_for(status_with("last scan"), "a STATUS= naming the last scan")
            took = van.terminate(sock)
        finally:
            van.kill()
            sock.close()
    assert took < 5.0, f"the van took {took:.1f} s to stop"
    assert "Traceback" not in van.stderr()
    with Journal(tmp_path / "van-1.db", "van-1") as journal:
        _prev, events = journal.read(0, 1000)
    stored = {(e.seq, e.uuid) for e in events}
    assert {(line["confirmed"], line["uuid"]) for line in confirmed} <= stored
    assert sorted(str(line["parcel"]) for line in confirmed) == sorted(PARCELS)


def test_a_locker_under_systemd_tells_its_occupancy_and_stops_cleanly(
    broker: Broker, tmp_path: Path
) -> None:
    password = secrets.token_hex(8)
    broker.add_device("locker-1", password)
    (tmp_path / "locker.pw").write_text(password)
    _private, sealing_public = generate_sealing_keypair()
    # The abstract namespace, as systemd may give it: `@` and a name, no file.
    sock = NotifySocket(f"@lastmile-test-{secrets.token_hex(6)}")
    with (
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
    ):
        config = tmp_path / "locker.toml"
        config.write_text(
            locker_toml(
                journal="locker.db",
                lockboard=str(boards.path),
                compartments=SMALL_AND_MEDIUM,
                scanner=str(scanner.path),
                keypad=str(keypad.path),
                sealing_public=sealing_public,
                broker=f'port = {broker.port}\npassword_file = "locker.pw"\n{SYNC}',
                settings="poll_interval_s = 0.05",
            )
        )
        locker = Child(tmp_path, sock.address, "locker", "--config", str(config))
        try:
            first = sock.wait_for(ready, "READY=1")
            assert sock.seen[0] is first
            assert "0/2 occupied" in first["STATUS"]
            locker.wait_lines(lambda line: "ready" in str(line.get("display")), 1)
            wait_pings(sock, 3)
            keypad.scan("*C42", aim=None)  # a courier deposits a parcel
            locker.wait_lines(lambda line: "courier welcome" in str(line.get("display")), 1)
            scanner.scan(PARCELS[0])
            locker.wait_lines(lambda line: "door open" in str(line.get("display")), 1)
            assert boards.wait_until(lambda: boards.door_open(0, 0), WAIT_S)
            boards.put_parcel(0, 0)
            boards.close_door(0, 0)
            locker.wait_lines(lambda line: "parcel stored" in str(line.get("display")), 1)
            sock.wait_for(status_with("1/2 occupied"), "a STATUS= with the parcel in")
            wait_pings(sock, 1)
            took = locker.terminate(sock)
        finally:
            locker.kill()
            sock.close()
    assert took < 5.0, f"the locker took {took:.1f} s to stop"
    assert "Traceback" not in locker.stderr()
    with Journal(tmp_path / "locker.db", "locker-1") as journal:
        kinds = [k for (k,) in journal.query("SELECT kind FROM events ORDER BY seq")]
    assert kinds.count("parcel_deposited") == 1


def test_the_depot_under_systemd_is_ready_pings_and_stops_cleanly(
    broker: Broker, tmp_path: Path
) -> None:
    user, password = broker.depot_credentials
    (tmp_path / "depot.pw").write_text(password)
    config = tmp_path / "depot.toml"
    config.write_text(
        f'[depot]\ndatabase = "depot.db"\nlat = 52.37\nlon = 4.9\nvans = ["van-1"]\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "{user}"\n'
        'password_file = "depot.pw"\n'
    )
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    depot = Child(tmp_path, sock.address, "depot", "--config", str(config))
    try:
        first = sock.wait_for(ready, "READY=1")
        assert sock.seen[0] is first
        assert "worker 1/1" in first["STATUS"]
        wait_pings(sock, 3)
        if not first["STATUS"].startswith("online"):  # a new STATUS= comes when it changes
            sock.wait_for(status_with("online"), "a STATUS= saying the depot is online")
        depot.terminate(sock)
    finally:
        depot.kill()
        sock.close()
    assert "Traceback" not in depot.stderr()


class ServiceLoop:
    """The service loop (`lastmile.service.run`) on a started device, in a thread of this
    process, telling ``sock`` and pinging every 0.1 s; `stop` ends it as SIGTERM would and
    checks it returned 0."""

    def __init__(self, device: Device, sock: NotifySocket) -> None:
        self.control = Control()
        self.result: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(
                run(device, self.control, Notifier(sock.address), watchdog_s=0.1)
            ),
            name="service loop",
        )
        self.thread.start()

    def stop(self) -> None:
        self.control.request_stop()
        self.thread.join(WAIT_S)
        assert self.result == [0]


class HangingBeeper:
    """The van's feedback, which hangs on the reader's thread once told to: a beeper driver
    stuck in a write, say. The scan is journaled by then; the reader thread is what hangs."""

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.confirmed_events: list[Event] = []

    def confirmed(self, event: Event) -> None:
        self.confirmed_events.append(event)
        if self.hang.is_set():
            self.hanging.set()
            self.release.wait(120)  # the test releases it; this is only a bound

    def refused(self, reason: str, raw: str) -> None:
        raise AssertionError(f"refused {raw}: {reason}")


def test_a_hung_scanner_thread_stops_the_watchdog_pings_until_it_runs_again(
    broker: Broker, tmp_path: Path
) -> None:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    beeper = HangingBeeper()
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        van = Van(
            VanConfig(
                device_id="van-1",
                journal=tmp_path / "van-1.db",
                scanner_port=scanner.path,
                broker=address(broker, "van-1"),
                sync={"ack_timeout_s": 2.0, "backoff_min_s": 0.1, "backoff_max_s": 1.0},
            ),
            beeper,
        )
        van.start()
        loop = ServiceLoop(van, sock)
        try:
            sock.wait_for(ready, "READY=1")
            wait_pings(sock, 3)
            assert van.uplink.session.wait_connected(WAIT_S)
            beeper.hang.set()
            scanner.scan(PARCELS[0])
            assert beeper.hanging.wait(WAIT_S), "the scan never reached the beeper"
            # The reader has hung: once it is silent past its stall limit, the loop says so...
            said = sock.wait_for(status_with("stalled"), "a STATUS= naming the stall")
            assert "scanner reader on" in said["STATUS"]
            # ...and pings no more, while the loop itself and the uplink are well.
            during = sock.during(1.0)  # ten ping intervals
            assert not [m for m in during if ping(m)], during
            assert loop.thread.is_alive() and van.uplink.connected and van.uplink.health() == []
            assert van.health() and all("scanner reader" in p for p in van.health())
            beeper.release.set()  # the reader runs again: the pings resume
            sock.wait_for(ping, "WATCHDOG=1 after the reader ran again")
            assert van.health() == []
        finally:
            beeper.release.set()
            loop.stop()
            sock.close()
    assert [e.payload["parcel"] for e in beeper.confirmed_events] == [PARCELS[0]]
    with Journal(tmp_path / "van-1.db", "van-1") as journal:
        _prev, events = journal.read(0, 10)
    assert [e.uuid for e in events] == [e.uuid for e in beeper.confirmed_events]


class HangingScreen:
    """The locker's screen, whose driver hangs on one message once told to (a display stuck
    in a write): the thread that shows it is what hangs."""

    def __init__(self, on: str) -> None:
        self.on = on
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.shown: list[str] = []

    def show(self, message: str, **_facts: object) -> None:
        self.shown.append(message)
        if self.on in message:
            self.hanging.set()
            self.release.wait(120)  # the test releases it; this is only a bound


def test_a_hung_locker_thread_stops_the_watchdog_pings_until_it_runs_again(
    broker: Broker, tmp_path: Path
) -> None:
    password = secrets.token_hex(8)
    broker.add_device("locker-1", password)
    (tmp_path / "locker.pw").write_text(password)
    _private, sealing_public = generate_sealing_keypair()
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    screen = HangingScreen("courier welcome")
    with (
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
    ):
        config = tmp_path / "locker.toml"
        config.write_text(
            locker_toml(
                journal="locker.db",
                lockboard=str(boards.path),
                keypad=str(keypad.path),
                sealing_public=sealing_public,
                broker=f'port = {broker.port}\npassword_file = "locker.pw"\n{SYNC}',
                settings="poll_interval_s = 0.05",
            )
        )
        locker = LockerDevice(load_locker_config(config), screen)
        locker.start()
        loop = ServiceLoop(locker, sock)
        try:
            sock.wait_for(ready, "READY=1")
            wait_pings(sock, 3)
            keypad.scan("*C42", aim=None)  # a courier's badge: the screen hangs greeting him
            assert screen.hanging.wait(WAIT_S), f"no courier welcome; shown {screen.shown}"
            said = sock.wait_for(status_with("stalled"), "a STATUS= naming the stall")
            during = sock.during(1.0)  # ten ping intervals
            assert not [m for m in during if ping(m)], (said, during)
            # The badge is served on the controller's loop (between board polls): that is
            # what hangs, and what the STATUS names.
            assert "locker controller" in said["STATUS"]
            assert loop.thread.is_alive() and locker.health()
            screen.release.set()  # it runs again: the pings resume
            sock.wait_for(ping, "WATCHDOG=1 after the locker ran again")
            assert locker.health() == []
        finally:
            screen.release.set()
            loop.stop()
            sock.close()


class Reloadable:
    """A device of the test's own with a `reload()`: where and how often it ran."""

    def __init__(self) -> None:
        self.reloaded_on: list[threading.Thread] = []
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def health(self) -> list[str]:
        return []

    def status_line(self) -> str:
        return f"reloaded {len(self.reloaded_on)} times"

    def reload(self) -> None:
        self.reloaded_on.append(threading.current_thread())


def test_sighup_reloads_on_the_loop_between_reloading_and_ready(tmp_path: Path) -> None:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    device = Reloadable()
    control = Control()
    control.install_signal_handlers()  # this test runs the loop on the main thread
    failures: list[BaseException] = []

    def systemd() -> None:
        try:
            sock.wait_for(ready, "READY=1")
            os.kill(os.getpid(), signal.SIGHUP)
            sock.wait_for(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
            sock.wait_for(ready, "READY=1 after the reload")
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # always: the main thread waits for it

    helper = threading.Thread(target=systemd)
    helper.start()
    try:
        assert run(device, control, Notifier(sock.address), watchdog_s=None) == 0
    finally:
        control.close()
        helper.join(WAIT_S)
    try:
        sock.wait_for(stopping, "STOPPING=1")
    finally:
        sock.close()
    assert not failures, failures
    assert device.reloaded_on == [threading.main_thread()]  # the loop, not the handler
    assert device.stopped
    kinds = [next(iter(m)) for m in sock.seen]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"]
    reloading = sock.seen[1]
    assert int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    assert sock.seen[2]["STATUS"] == "reloaded 1 times"


def test_the_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "500000"}) == 0.25
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": mine}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert not Notifier(None).send(READY=1)  # no socket: nothing to tell, nothing raised
