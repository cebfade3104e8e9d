"""SIGHUP reloads, one-line logs, and troubles told once (issue 14, "Read-only root and bad days").

Real parts throughout: two Mosquitto brokers (the `broker` fixture and a second one) so a
reloaded van, locker or depot can be seen moving from one to the other, real pseudo-terminals
for the scanner (one of them unplugged for good), real SQLite journals, real `lastmile`
processes. A `Trouble`'s five-minute reminder is tested on a clock the test moves, the one
thing here that does not run in real time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.config import DepotConfigError, load_depot_config
from depot.service import DepotService
from drivers.scanner import ScannerReader
from edge.locker import JsonLinesDisplay
from edge.locker_config import load_locker_config
from edge.locker_device import LockerDevice
from edge.van import Van, load_config
from lastmile.logs import OneLineFormatter
from parcel.runlog import REMIND_S, Trouble
from simulators.broker import Broker
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.wire import Event, decode_batch

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 20.0  # every wait gives up after this
LABELS = ["RB123456785GB", "RB945807304GB", "RR573681935NL", "LX642621293DE"]


class Lines(logging.Handler):
    """Records of one logger, and a wait for the next one that matches (no polling)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def said(self, level: int, text: str) -> list[str]:
        with self.cond:
            return [
                r.getMessage()
                for r in self.records
                if r.levelno == level and text in r.getMessage()
            ]

    def wait(self, level: int, text: str, count: int = 1) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.said(level, text)) >= count, WAIT_S)
        assert ok, [(r.levelname, r.getMessage()) for r in self.records]


@contextlib.contextmanager
def listening(name: str) -> Iterator[Lines]:
    logger = logging.getLogger(name)
    lines, level = Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def root_level() -> Iterator[None]:
    """A reload sets the process's log level; the next test gets it back as it was."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


# --- troubles, told once ------------------------------------------------------------------------


def test_a_lasting_trouble_is_one_warning_a_reminder_and_one_line_when_over() -> None:
    now = [1000.0]
    with listening("tests.trouble") as lines:
        trouble = Trouble(logging.getLogger("tests.trouble"), clock=lambda: now[0])
        for _ in range(50):  # a retry every second for 50 s
            trouble.failing("cannot open %s", "/dev/ttyACM0")
            now[0] += 1.0
        assert lines.said(logging.WARNING, "") == ["cannot open /dev/ttyACM0"]
        assert len(lines.said(logging.DEBUG, "cannot open")) == 49
        now[0] += REMIND_S
        trouble.failing("cannot open %s", "/dev/ttyACM0")
        trouble.failing("cannot open %s", "/dev/ttyACM0")
        assert lines.said(logging.WARNING, "still")[-1] == (
            "still: cannot open /dev/ttyACM0, for 5 min"
        )
        assert trouble.over("scanner open again")
        assert not trouble.over("scanner open again")  # said once
        assert lines.said(logging.INFO, "") == ["scanner open again after 5 min"]
        now[0] += 10.0
        trouble.failing("cannot open %s", "/dev/ttyACM0")  # back within minutes: not a warning
        assert len(lines.said(logging.WARNING, "")) == 2
        assert lines.said(logging.INFO, "")[-1] == "cannot open /dev/ttyACM0"
        trouble.over("scanner open again")
        now[0] += REMIND_S
        trouble.failing("cannot open %s", "/dev/ttyUSB0")  # a new trouble, long after
        assert lines.said(logging.WARNING, "")[-1] == "cannot open /dev/ttyUSB0"


def test_an_unplugged_scanner_is_a_warning_once_not_one_per_retry(tmp_path: Path) -> None:
    up = threading.Event()
    with (
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        listening("drivers.scanner") as lines,
    ):
        reader = ScannerReader(
            scanner.path,
            on_scan=lambda _scan: None,
            on_connection=lambda connected: up.set() if connected else up.clear(),
            reconnect_min_s=0.01,
            reconnect_max_s=0.05,
        )
        with reader:
            assert up.wait(WAIT_S)
            scanner.unplug()  # the pty disappears: every reopen fails with ENOENT
            lines.wait(logging.DEBUG, "cannot open scanner", count=10)
            assert len(lines.said(logging.WARNING, "cannot open scanner")) == 1
            assert len(lines.said(logging.WARNING, "")) == 1  # nothing else warns of it
            scanner.replug()
            lines.wait(logging.INFO, "open again after")
            assert up.wait(WAIT_S)
    assert len(lines.said(logging.WARNING, "cannot open scanner")) == 1
    assert len(lines.said(logging.INFO, "open again after")) == 1


# --- one line per record ------------------------------------------------------------------------


def _record(exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(
        "edge.van", logging.ERROR, __file__, 1, "manifest failed\nsecond line", (), exc_info
    )


def test_a_record_is_one_line_with_the_device_and_a_traceback_only_at_debug() -> None:
    try:
        raise ValueError("bad stop 3")
    except ValueError as caught:
        exc = caught
    journald = OneLineFormatter("van-1", timestamps=False)
    logging.getLogger().setLevel(logging.INFO)
    line = journald.format(_record(exc))
    assert line == "ERROR van-1 edge.van: manifest failed\\nsecond line: ValueError: bad stop 3"
    stamped = OneLineFormatter("van-1", timestamps=True).format(_record())
    assert stamped.endswith(" ERROR van-1 edge.van: manifest failed\\nsecond line")
    assert stamped[:4].isdigit() and "\n" not in stamped
    logging.getLogger().setLevel(logging.DEBUG)
    traced = journald.format(_record(exc))
    assert traced.startswith(line.split(": ValueError")[0] + "\nTraceback")


def lastmile(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("device", ["van", "locker"])
def test_a_bad_log_level_is_the_config_error_line(tmp_path: Path, device: str) -> None:
    config = tmp_path / f"{device}.toml"
    config.write_text(
        'device_id = "x"\n[broker]\nport = 1\npassword = "x"\n[scanner]\nport = "/dev/null"\n'
        '[lockboard]\nport = "/dev/null"\n[[compartments]]\nid = "A1"\nboard = 0\nlock = 0\n'
        'size = "S"\n[log]\nlevel = "loud"\n'
    )
    result = lastmile(device, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "[log] level must be one of debug, info, warning, error" in result.stderr
    depot = tmp_path / "depot.toml"
    depot.write_text('[depot]\nlat = 1.0\nlon = 2.0\n[log]\nlevel = "loud"\n')
    with pytest.raises(DepotConfigError, match=r"\[log\] level"):
        load_depot_config(depot)


# --- reload ---------------------------------------------------------------------------------------


class Subscriber:
    """The depot's account on a broker, listening to every device's events (real MQTT)."""

    def __init__(self, broker: Broker) -> None:
        self.parcels: list[str] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(*broker.depot_credentials)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe("lastmile/v1/+/events", 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(WAIT_S), "no SUBACK from the broker"

    def _message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        batch = decode_batch(bytes(msg.payload))
        with self.cond:
            self.parcels += [str(e.payload.get("parcel")) for e in batch.events]
            self.cond.notify_all()

    def wait(self, parcel: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: parcel in self.parcels, WAIT_S)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def second_broker(broker: Broker, tmp_path: Path) -> Iterator[Broker]:
    """Another Mosquitto, with the same accounts: where a reloaded device moves to."""
    devices = {name: broker.credentials(name)[1] for name in ("van-1", "van-2")}
    with Broker(
        tmp_path / "broker-2", devices=devices, depot=broker.depot_credentials
    ) as running:
        yield running


class Beeper:
    """The van's feedback: each confirmed scan, woken on (no polling)."""

    def __init__(self) -> None:
        self.confirmed_parcels: list[str] = []
        self.cond = threading.Condition()

    def confirmed(self, event: Event) -> None:
        with self.cond:
            self.confirmed_parcels.append(str(event.payload["parcel"]))
            self.cond.notify_all()

    def refused(self, reason: str, raw: str) -> None:
        raise AssertionError(f"{raw} refused: {reason}")

    def wait(self, parcel: str) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: parcel in self.confirmed_parcels, WAIT_S)


def _van_toml(path: Path, scanner: str, broker: Broker, *, level: str = "info") -> None:
    path.write_text(
        f'device_id = "van-1"\njournal = "van-1.db"\n'
        f'[scanner]\nport = "{scanner}"\n'
        f'[broker]\nport = {broker.port}\npassword_file = "van.password"\n'
        f"[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"
        f'[log]\nlevel = "{level}"\n'
    )


def test_a_reloaded_van_moves_to_the_new_broker_and_names_what_needs_a_restart(
    broker: Broker, second_broker: Broker, tmp_path: Path
) -> None:
    (tmp_path / "van.password").write_text(broker.credentials("van-1")[1])
    config = tmp_path / "van.toml"
    first, second = Subscriber(broker), Subscriber(second_broker)
    beeper = Beeper()
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        _van_toml(config, scanner.path, broker)
        van = Van(load_config(config), beeper)
        van.start()
        try:
            assert van.scanner_ready.wait(WAIT_S) and van.uplink.session.wait_connected(WAIT_S)
            scanner.scan(LABELS[0])
            assert beeper.wait(LABELS[0]) and first.wait(LABELS[0])

            _van_toml(config, str(tmp_path / "other.tty"), second_broker, level="debug")
            with listening("edge.van") as lines:
                said = van.reload()
            assert said[0] == (
                f"reloaded: log level info -> debug; "
                f"broker 127.0.0.1:{broker.port} -> 127.0.0.1:{second_broker.port}"
            )
            assert said[1:] == ["[scanner] port changed: restart to apply"]
            assert lines.said(logging.WARNING, "") == said[1:]
            assert logging.getLogger().level == logging.DEBUG
            assert van.uplink.session.wait_connected(WAIT_S)
            scanner.scan(LABELS[1])  # the old port still reads: it needs a restart to change
            assert beeper.wait(LABELS[1]) and second.wait(LABELS[1])
            assert LABELS[1] not in first.parcels

            config.write_text('device_id = "van-1"\n[broker\n')  # a file that no longer loads
            with listening("edge.van") as lines:
                said = van.reload()
            assert len(said) == 1 and said[0].startswith("reload failed, running on the")
            assert lines.said(logging.ERROR, "reload failed") == said
            scanner.scan(LABELS[2])
            assert beeper.wait(LABELS[2]) and second.wait(LABELS[2])
        finally:
            van.stop()
            first.close()
            second.close()


def test_a_reloaded_locker_applies_its_level_and_names_the_rest(tmp_path: Path) -> None:
    with SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards:
        config = tmp_path / "locker.toml"
        text = (
            f'device_id = "locker-1"\njournal = "locker.db"\n{{}}'
            f'[lockboard]\nport = "{boards.path}"\n'
            f'[[compartments]]\nid = "A1"\nboard = 0\nlock = 0\nsize = "S"\n'
        )
        config.write_text(text.format(""))
        locker = LockerDevice(load_locker_config(config), JsonLinesDisplay())
        try:
            config.write_text(
                text.format("hold_hours = 24\n")
                + '[keypad]\nport = "/dev/ttyACM1"\n[log]\nlevel = "warning"\n'
            )
            said = locker.reload()
            assert said == [
                "reloaded: log level info -> warning",
                "hold_hours changed: restart to apply",
                "[keypad] port changed: restart to apply",
            ]
            assert logging.getLogger().level == logging.WARNING
            assert locker.reload() == [
                "reloaded: nothing to apply",
                "hold_hours changed: restart to apply",
                "[keypad] port changed: restart to apply",
            ]
        finally:
            locker.stop()


def test_a_reloaded_depot_moves_its_ingest_to_the_new_broker(
    broker: Broker, second_broker: Broker, tmp_path: Path
) -> None:
    (tmp_path / "depot.password").write_text(broker.depot_credentials[1])
    config = tmp_path / "depot.toml"
    text = '[depot]\nlat = 52.37\nlon = 4.90\nvans = ["van-1"]\n[policy]\nmax_attempts = {}\n'
    broker_section = '[broker]\nport = {}\nusername = "depot"\npassword_file = "depot.password"\n'
    config.write_text(text.format(2) + broker_section.format(broker.port))
    service = DepotService(load_depot_config(config))
    service.start()
    try:
        assert service.depot is not None and service.depot.session.wait_connected(WAIT_S)
        config.write_text(text.format(3) + broker_section.format(second_broker.port))
        said = service.reload()
        assert said == [
            f"reloaded: broker 127.0.0.1:{broker.port} -> 127.0.0.1:{second_broker.port}",
            "policy.max_attempts changed: restart to apply",
        ]
        assert service.depot.session.address.port == second_broker.port
        assert service.depot.session.wait_connected(WAIT_S)
        assert service.config.max_attempts == 2  # kept until a restart
    finally:
        service.stop()


# --- SIGHUP to a running van ----------------------------------------------------------------------


class Running:
    """A `lastmile van` process: its stdout (JSON lines) and stderr (log lines), woken on."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "van", "--config", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "JOURNAL_STREAM": "8:1234"},  # as under systemd: no timestamps
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.cond = threading.Condition()
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait(self, into: list[str], found: Callable[[str], bool]) -> str:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(found(line) for line in into), WAIT_S)
            assert ok, (self.out, self.err)
            return next(line for line in into if found(line))


def test_sighup_reloads_a_running_van(
    broker: Broker, second_broker: Broker, tmp_path: Path
) -> None:
    pytest.importorskip("lastmile.service", reason="the service loop that turns SIGHUP into "
                        "reload() (helper R1's lastmile/service.py) is not there yet")
    (tmp_path / "van.password").write_text(broker.credentials("van-1")[1])
    config = tmp_path / "van.toml"
    second = Subscriber(second_broker)
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        _van_toml(config, scanner.path, broker)
        van = Running(config)
        try:
            line = van.wait(van.err, lambda x: x.endswith("edge.van: scanner connected"))
            assert line == "INFO van-1 edge.van: scanner connected"  # one line, no time
            scanner.scan(LABELS[0])
            van.wait(van.out, lambda x: LABELS[0] in x)
            _van_toml(config, str(tmp_path / "other.tty"), second_broker, level="debug")
            van.proc.send_signal(signal.SIGHUP)
            reloaded = van.wait(van.err, lambda x: "reloaded:" in x)
            assert reloaded == (
                f"INFO van-1 edge.van: reloaded: log level info -> debug; "
                f"broker 127.0.0.1:{broker.port} -> 127.0.0.1:{second_broker.port}"
            )
            van.wait(van.err, lambda x: x.endswith("[scanner] port changed: restart to apply"))
            scanner.scan(LABELS[1])
            van.wait(van.out, lambda x: LABELS[1] in x)
            assert second.wait(LABELS[1])
            van.proc.send_signal(signal.SIGTERM)
            assert van.proc.wait(WAIT_S) == 0
        finally:
            if van.proc.poll() is None:
                van.proc.kill()
                van.proc.wait(WAIT_S)
            second.close()
