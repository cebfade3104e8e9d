"""`lastmile check --config FILE`: will this device work where it is being installed?

A technician installing a van handheld, a parcel locker, a staffed counter or a depot has a
config file, cables and a network, and wants to hear in a few lines whether it will work
before leaving: every serial port there and answering, the broker taking these credentials
and certificates, a clock that is not in 1970, room on the disk for the days it may spend
offline. Each of these is asked of the real part with the code that will use it (the
drivers, `sync.mqtt`, the config loaders), so a check passes only where the device would;
and each has a timeout, so the check itself never hangs on a dead cable.

It changes nothing: no journal or database is created or migrated, and the broker session it
opens acknowledges nothing, so whatever waits at the broker for the device still waits. It does
connect as the device (or depot) itself: a running one is disconnected for that moment, and
a running locker holds its lock-board port, which the check then reports as busy.

Exit status: 0 all ok (warnings allowed), 1 something will not work, 2 the config is unusable.
Imports are made inside the functions: building the CLI's parser must not load paho, pyserial
or sqlite3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from depot.config import DepotConfig
    from edge.counter_config import CounterConfig
    from edge.locker_config import LockerConfig
    from edge.van import VanConfig
    from sync.journal_check import RawRow
    from sync.mqtt import BrokerAddress

__all__ = ["Finding", "add_arguments", "run_from_args"]

Status = Literal["ok", "warn", "FAIL"]
ROLES = ("van", "locker", "counter", "depot")

# A clock before this date was never set: this software did not exist then (a Raspberry Pi
# without a real-time clock boots in 1970, or at the date its image was made). The release
# this check first shipped in; move it on with a release when convenient, never past one.
RELEASED = dt.date(2026, 12, 1)
# The newest journal event may be a little ahead of a clock NTP has just stepped back.
CLOCK_SLACK_S = 120.0

CERT_WARN_DAYS = 30  # a certificate expiring sooner needs renewing on this visit
DEFAULT_DAYS = 3  # days offline the disk must hold: a long weekend without a link

GNSS_WAIT_S = 2.5  # a receiver at 1 Hz sends a whole epoch of sentences within this
LOCKBOARD_WAIT_S = 1.0  # per board, its retries included; a board answers in milliseconds
LOCKBOARD_ATTEMPTS = 3
BROKER_WAIT_S = 5.0  # TCP connect, TLS handshake and CONNACK together (the first two: half)
JOURNAL_WAIT_S = 2.0  # a running device may hold the journal's write lock this long

# What a device writes a day, for the disk check. Bytes per event are the payload (measured on
# the device's own journal when it has events, else the typical size below) plus what each row
# costs SQLite besides: uuid, boot id, clocks, hash, the uuid index and page slack, measured
# at 216-279 bytes for payloads of 50-600 bytes.
EVENT_OVERHEAD_B = 250
MEASURED_ROWS = 20  # fewer rows than this say little about the device's typical event
# A van: about 150 parcels a day at about 4 events each (loaded, scanned at the stop,
# delivered or failed, the stop's arrival); the simulated day's van wrote 243 events of 187
# bytes of payload on average for 59 parcels. About one parcel in six is left with a
# neighbour or at a safe place and photographed (8 of 56 on the simulated day); a photo is a
# median 61 KB (`python -m bench photo`) and stays in the journal until the depot has it.
VAN_EVENTS_PER_DAY = 600
VAN_PAYLOAD_B = 190
VAN_PHOTOS_PER_DAY = 25
PHOTO_B = 61 * 1024
# A locker: about 60 parcels in and out a day at about 6 events each (deposit, door closed,
# pickup attempt, pickup, door closed, the odd alarm); a deposit carries the sealed credential.
LOCKER_EVENTS_PER_DAY = 400
LOCKER_PAYLOAD_B = 150
# What the depot keeps per device event besides photos: the event, the parcel's state and
# timeline, its webhooks (the simulated day's depot: 0.77 MB without photos for 270 events).
DEPOT_B_PER_EVENT = 3000


@dataclass(frozen=True)
class Finding:
    """One line of the answer: how one part of the set-up stands, in words a technician acts on."""

    status: Status
    check: str  # "scanner", "broker", "clock"...
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.check:<12} {self.detail}"

    def doc(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.lower(), "detail": self.detail}


# --- the command --------------------------------------------------------------------------------


def _days(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        type=Path,
        help="the van's, locker's, counter's or depot's TOML file",
    )
    p.add_argument(
        "--role",
        choices=ROLES,
        help="what the config is for, when it cannot be told from the file (default: detected)",
    )
    p.add_argument(
        "--days",
        type=_days,
        default=DEFAULT_DAYS,
        help=f"days offline the disk must hold at the usual rate (default {DEFAULT_DAYS})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_from_args(args: argparse.Namespace) -> int:
    """Load the config, run every check for its role, print them; the exit status."""
    if not getattr(args, "verbose", 0):
        # Each finding says what went wrong; the drivers' and paho's own log lines would say
        # it a second time, less clearly.
        logging.getLogger().setLevel(logging.CRITICAL)
    loaded = _load(args.config, args.role)
    if isinstance(loaded, str):
        print(f"lastmile check: {loaded}", file=sys.stderr)
        return 2
    role, config = loaded
    device = "depot" if role == "depot" else str(config.device_id)
    findings: list[Finding] = []
    for finding in _checks(role, config, args.config, args.days):
        findings.append(finding)
        if not args.json:
            print(finding.line(), flush=True)
    summary = _summary(f"{role} {device}" if role != "depot" else "the depot", findings)
    failed = any(f.status == "FAIL" for f in findings)
    if args.json:
        doc = {
            "config": str(args.config),
            "role": role,
            "device": device,
            "ok": not failed,
            "checks": [f.doc() for f in findings],
            "summary": summary,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(summary)
    return 1 if failed else 0


def _summary(who: str, findings: list[Finding]) -> str:
    count = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "FAIL")}
    warnings = f"{count['warn']} warning{'' if count['warn'] == 1 else 's'}"
    if count["FAIL"]:
        return f"{who} will NOT work: {count['FAIL']} failed, {warnings}, {count['ok']} ok"
    if count["warn"]:
        return f"{who} will work: {count['ok']} ok, {warnings}"
    return f"{who} will work: all {count['ok']} checks ok"


# --- which device, and its config ---------------------------------------------------------------


def _load_van(path: Path) -> VanConfig:
    from edge.van import load_config

    return load_config(path)


def _load_locker(path: Path) -> LockerConfig:
    from edge.locker_config import load_locker_config

    return load_locker_config(path)


def _load_counter(path: Path) -> CounterConfig:
    from edge.counter_config import load_counter_config

    return load_counter_config(path)


def _load_depot(path: Path) -> DepotConfig:
    from depot.config import load_depot_config

    return load_depot_config(path)


_LOADERS: dict[str, Callable[[Path], Any]] = {
    "van": _load_van,
    "locker": _load_locker,
    "counter": _load_counter,
    "depot": _load_depot,
}


def _load(path: Path, role: str | None) -> tuple[str, Any] | str:
    """(role, config) as the device's own loader reads it, or why the file cannot be used.

    Without `role`, every loader is tried. A locker's or a counter's file may well satisfy
    the van's loader too (a scanner, a broker), but a van's never has the lock boards and
    compartments a locker's loader insists on, nor the `shelves` a counter's does: a file
    the van's loader and one of those take is theirs.
    """
    accepted: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name in [role] if role else ROLES:
        try:
            accepted[name] = _LOADERS[name](path)
        except Exception as exc:  # whatever a loader raises, the device would not start
            refused[name] = " ".join(str(exc).split()) or type(exc).__name__
    for device in ("locker", "counter"):
        if device in accepted and accepted.keys() <= {device, "van"}:
            return device, accepted[device]
    if len(accepted) == 1:
        [(name, config)] = accepted.items()
        return name, config
    if accepted:
        both = " and a ".join(sorted(accepted))
        return f"{path} reads as both a {both} configuration: say which with --role"
    if role:
        return refused[role]
    hint = _likely_role(path)
    if hint is None:
        return refused["van"]  # not TOML, or no file: every loader said the same
    if hint == "":
        return (
            f"{path} is not a van, locker, counter or depot configuration (it has no "
            "[scanner], [lockboard], shelves or [depot])"
        )
    return refused[hint]


def _likely_role(path: Path) -> str | None:
    """Whose loader's complaint to show for a file every loader refused: the role its sections
    suggest, "" if none, None if it is not TOML at all."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if "lockboard" in doc or "compartments" in doc:
        return "locker"
    if "shelves" in doc:
        return "counter"
    if "scanner" in doc:
        return "van"
    if "depot" in doc:
        return "depot"
    return ""


# --- the checks of each role --------------------------------------------------------------------


def _checks(role: str, config: Any, path: Path, days: int) -> Iterator[Finding]:
    if role == "van":
        yield from _van_checks(config, path, days)
    elif role == "locker":
        yield from _locker_checks(config, path, days)
    elif role == "counter":
        yield from _counter_checks(config, path, days)
    else:
        yield from _depot_checks(config, path, days)


def _van_checks(config: VanConfig, path: Path, days: int) -> Iterator[Finding]:
    yield Finding("ok", "config", f"{path}: van {config.device_id}")
    yield _port_opens(
        config.scanner_port, "scanner", "[scanner] port", config.scanner_baudrate, "van"
    )
    if config.gnss_port and config.round_enabled:
        yield _gnss(config.gnss_port, config.gnss_baudrate)
    elif config.gnss_port:
        yield Finding(
            "warn",
            "gnss",
            f"[gnss] port {config.gnss_port} is set but [round] is not enabled: "
            "the van will not read it",
        )
    yield _broker(config.broker, config.device_id)
    yield from _certificates(config.broker)
    rows, trouble = _journal_rows(config.journal)
    yield _clock(rows, trouble)
    photos = VAN_PHOTOS_PER_DAY if config.round_enabled else 0
    yield _device_disk(config.journal, rows, VAN_EVENTS_PER_DAY, VAN_PAYLOAD_B, photos, days)


def _locker_checks(config: LockerConfig, path: Path, days: int) -> Iterator[Finding]:
    yield Finding("ok", "config", f"{path}: locker {config.device_id}")
    yield from _lock_boards(config)
    if config.scanner_port:
        yield _port_opens(config.scanner_port, "scanner", "[scanner] port", 9600, "locker")
    if config.keypad_port:
        yield _port_opens(config.keypad_port, "keypad", "[keypad] port", 9600, "locker")
    yield from _site_sync(
        config.broker,
        config.device_id,
        "the locker keeps its events to itself and takes no depot commands",
        config.journal,
        days,
    )


def _counter_checks(config: CounterConfig, path: Path, days: int) -> Iterator[Finding]:
    shelves = f"{config.shelves} shel{'f' if config.shelves == 1 else 'ves'}"
    yield Finding("ok", "config", f"{path}: counter {config.device_id}, {shelves}")
    if config.scanner_port:
        yield _port_opens(config.scanner_port, "scanner", "[scanner] port", 9600, "counter")
    else:
        yield Finding(
            "FAIL",
            "scanner",
            "no [scanner] port: the staff could check no parcel in and confirm no hand-out",
        )
    yield _staff_screen(config.staff_socket)
    yield from _site_sync(
        config.broker,
        config.device_id,
        "the counter keeps its events to itself and takes no reservations",
        config.journal,
        days,
    )


def _site_sync(
    broker: BrokerAddress | None, device_id: str, without: str, journal: Path, days: int
) -> Iterator[Finding]:
    """A locker's or a counter's broker, certificates, clock and disk. A site works without
    a broker (it keeps its events), so a missing `[broker]` warns, saying what is lost
    (`without`). A counter's day is a locker's: deposits, pickup attempts, pickups; its
    signatures are a few kilobytes, far below a photo."""
    if broker is None:
        yield Finding("warn", "broker", f"no [broker]: {without}")
    else:
        yield _broker(broker, device_id)
        yield from _certificates(broker)
    rows, trouble = _journal_rows(journal)
    yield _clock(rows, trouble)
    yield _device_disk(journal, rows, LOCKER_EVENTS_PER_DAY, LOCKER_PAYLOAD_B, 0, days)


def _staff_screen(path: Path | None) -> Finding:
    """Where the desk's screen app reaches the counter (edge.counter_screen); without a
    socket it is stdin, which a service does not have."""
    import stat

    if path is None:
        return Finding(
            "warn",
            "staff screen",
            "no [staff] socket: the staff's screen is stdin, which under systemd is "
            "/dev/null (fine run by hand)",
        )
    from lastmile.install import RUNTIME_DIR

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        # systemd makes its RuntimeDirectory when the service starts; any other place must be.
        if not path.parent.is_dir() and not path.is_relative_to(str(RUNTIME_DIR)):
            return Finding(
                "FAIL", "staff screen", f"{path.parent} does not exist: no socket can be made there"
            )
        return Finding("ok", "staff screen", f"{path}: the counter listens there once started")
    except OSError as exc:
        return Finding("FAIL", "staff screen", f"cannot look at {path}: {exc.strerror}")
    if not stat.S_ISSOCK(mode):
        return Finding(
            "FAIL", "staff screen", f"{path} is there and is not a socket: the counter would "
            "not start"
        )
    return Finding("ok", "staff screen", f"{path}: a socket (a running counter's, or a stale "
                   "one it replaces)")


def _depot_checks(config: DepotConfig, path: Path, days: int) -> Iterator[Finding]:
    yield Finding("ok", "config", f"{path}: depot, {config.workers} worker(s)")
    yield _database(config.database)
    if config.broker is None:
        yield Finding("FAIL", "broker", "no [broker]: the depot could not hear any device")
    else:
        files: list[BrokerAddress] = []
        for worker in range(1, config.workers + 1):
            address = config.broker_for(worker)
            assert address is not None
            # A worker of a group keeps no session at the broker (depot.ingest): neither does
            # its check. A depot alone keeps the session's default, as the check does.
            expiry = 0 if config.workers > 1 else None
            yield _broker(address, address.username, session_expiry_s=expiry)
            if (address.tls_ca, address.tls_cert) not in {(a.tls_ca, a.tls_cert) for a in files}:
                files.append(address)
        for address in files:
            yield from _certificates(address)
    yield _depot_disk(config, days)


# --- serial ports -------------------------------------------------------------------------------


def _port_opens(port: str, what: str, setting: str, baudrate: int, device: str) -> Finding:
    """A port the device only has to open (a scanner, a keypad: they speak when a person acts)."""
    import serial

    from edge.ports import PortError, port_problem, require_port

    try:
        require_port(port, what, setting)
        serial.serial_for_url(port, baudrate=baudrate, timeout=0).close()
    except PortError as exc:
        return Finding("FAIL", what, str(exc))
    except (OSError, ValueError) as exc:  # SerialException is an OSError
        return Finding("FAIL", what, str(port_problem(port, what, setting, exc, device=device)))
    return Finding("ok", what, f"{port} opens")


def _gnss(port: str, baudrate: int) -> Finding:
    """The receiver is there and talking: any sentence with a good checksum within GNSS_WAIT_S.

    A fix is not required: a van is often set up indoors, where the receiver says "no fix" in
    perfectly good sentences.
    """
    import serial

    from drivers.gnss import Gga, NmeaFramer, RejectedLine, Rmc
    from edge.ports import PortError, port_problem, require_port

    kinds = {Rmc: "RMC", Gga: "GGA"}
    what, setting = "GNSS receiver", "[gnss] port"
    try:
        require_port(port, what, setting)
        link = serial.serial_for_url(port, baudrate=baudrate, timeout=GNSS_WAIT_S)
    except PortError as exc:
        return Finding("FAIL", "gnss", str(exc))
    except (OSError, ValueError) as exc:
        return Finding("FAIL", "gnss", str(port_problem(port, what, setting, exc, device="van")))
    framer = NmeaFramer()
    garbled = 0
    started = time.monotonic()
    try:
        with link:
            while (left := started + GNSS_WAIT_S - time.monotonic()) > 0:
                link.timeout = left
                chunk = link.read(max(1, link.in_waiting))
                if not chunk:
                    break
                for item in framer.feed(chunk):
                    if isinstance(item, RejectedLine):
                        garbled += 1
                        continue
                    waited = time.monotonic() - started
                    if not isinstance(item, Rmc | Gga):  # GSV, VTG...: talking, all the same
                        said = f"{item.talker}{item.kind}"
                    elif item.has_fix and item.lat is not None and item.lon is not None:
                        said = f"{item.talker}{kinds[type(item)]}, fix at {item.lat:.5f}, "
                        said += f"{item.lon:.5f}"
                    else:
                        said = f"{item.talker}{kinds[type(item)]}, no fix yet (the antenna "
                        said += "needs open sky)"
                    return Finding("ok", "gnss", f"{port}: {said}; NMEA within {waited:.1f} s")
    except OSError as exc:
        return Finding("FAIL", "gnss", f"{port} failed while reading: {exc}")
    if garbled:
        return Finding(
            "FAIL",
            "gnss",
            f"{port}: {garbled} garbled line(s), no valid NMEA sentence within "
            f"{GNSS_WAIT_S:g} s (the receiver's baud rate is not [gnss] baudrate = {baudrate}?)",
        )
    return Finding(
        "FAIL",
        "gnss",
        f"{port}: no NMEA sentence within {GNSS_WAIT_S:g} s (is the receiver powered, "
        f"and on this port? [gnss] baudrate = {baudrate})",
    )


def _lock_boards(config: LockerConfig) -> Iterator[Finding]:
    """Every configured board asked for its status once, as the locker will ask it."""
    from drivers.lockboard import BoardOffline, BusError, LockBoardError, LockBus, WrongAddress
    from edge.ports import PortError, port_problem, require_port

    port, setting, what = config.lockboard_port, "[lockboard] port", "lock-board"
    try:
        require_port(port, what, setting)
        bus = LockBus(
            port,
            config.boards,
            reply_timeout_s=LOCKBOARD_WAIT_S / LOCKBOARD_ATTEMPTS,
            retries=LOCKBOARD_ATTEMPTS - 1,
        )
        bus.open()
    except PortError as exc:
        yield Finding("FAIL", what, str(exc))
        return
    except BusError as exc:
        yield Finding("FAIL", what, str(port_problem(port, what, setting, exc, device="locker")))
        return
    except ValueError as exc:
        yield Finding("FAIL", what, f"{setting}: {exc}")
        return
    try:
        for board in config.boards:
            b = board.board
            locks = [c.lock for c in config.compartments if c.board == b]
            try:
                status = bus.status(b)
            except BoardOffline:
                yield Finding(
                    "FAIL",
                    what,
                    f"{port}: no status reply from board {b} within {LOCKBOARD_WAIT_S:g} s "
                    "(is it powered? RS-485 A/B swapped? its address set to "
                    f"{b}?)",
                )
            except (WrongAddress, BusError) as exc:
                yield Finding("FAIL", what, f"{port}: {exc}")
            except LockBoardError as exc:
                yield Finding(
                    "FAIL",
                    what,
                    f"{port}: board {b} answers garbled ({exc}): a wrong baud rate, noise, "
                    "or the bus not terminated?",
                )
            else:
                open_ = sum(status.door_open[lock] for lock in locks)
                doors = f"{len(locks)} compartment{'' if len(locks) == 1 else 's'}"
                state = "all doors closed" if not open_ else f"{open_} door(s) open"
                yield Finding("ok", what, f"{port}: board {b} answers ({doors}, {state})")
    finally:
        bus.close()


# --- the broker ---------------------------------------------------------------------------------


def _broker(
    address: BrokerAddress, client_id: str, *, session_expiry_s: int | None = None
) -> Finding:
    """Connect as the device does (`sync.mqtt.MqttSession`, its TLS and credentials) and wait
    for the broker's CONNACK; say why not: not reachable, TLS, or the credentials.

    The session resumes the device's own (clean start off, the same expiry) and acknowledges
    no message, so what waits for the device at the broker still waits when the check ends.
    """
    from sync.mqtt import MqttSession

    where = f"{address.host}:{address.port}"
    try:  # first plain TCP: "not reachable" is then told apart from a TLS failure
        socket.create_connection((address.host, address.port), timeout=BROKER_WAIT_S).close()
    except OSError as exc:
        return Finding(
            "FAIL",
            "broker",
            f"cannot reach {where}: {exc.strerror or exc} (is the broker running? "
            "[broker] host and port, a firewall?)",
        )
    try:
        if session_expiry_s is None:
            session = MqttSession(
                address,
                client_id,
                on_message=lambda _msg: None,
                backoff_min_s=BROKER_WAIT_S,
                backoff_max_s=BROKER_WAIT_S,
            )
        else:
            session = MqttSession(
                address,
                client_id,
                on_message=lambda _msg: None,
                backoff_min_s=BROKER_WAIT_S,
                backoff_max_s=BROKER_WAIT_S,
                session_expiry_s=session_expiry_s,
            )
    except (OSError, ValueError) as exc:  # tls_set: an unreadable file, a key not the cert's
        return Finding(
            "FAIL",
            "broker",
            f"cannot use the TLS files for {where}: {exc} "
            "([broker] ca_file, tls_cert and tls_key)",
        )
    client = session.client
    client.manual_ack_set(True)  # nothing queued for the device is taken from it
    client.connect_timeout = BROKER_WAIT_S / 2  # so a stuck TLS handshake is told as one
    answered = threading.Event()
    said: list[str | None] = []
    handle = client.on_connect

    def connack(*args: Any) -> None:
        if handle is not None:
            handle(*args)
        said.append(session.problem)  # on the network thread, before it can redial
        answered.set()

    client.on_connect = connack
    session.start()
    try:
        answered.wait(BROKER_WAIT_S)
        problem = said[0] if said else session.problem
    finally:
        session.stop()
    link = "TLS" if address.tls_ca else "plain TCP"
    if said and problem is None:
        return Finding("ok", "broker", f"{where} accepts {address.username} ({link})")
    if problem is None or problem.startswith("connecting"):  # the session's word for waiting
        problem = f"no CONNACK within {BROKER_WAIT_S:g} s"
    if said and "credentials" in problem:
        return Finding(
            "FAIL",
            "broker",
            f"{problem} at {where}: check [broker] username and password_file (or tls_cert)",
        )
    if said:
        return Finding("FAIL", "broker", f"{problem} at {where}")
    problem = problem.removeprefix(f"cannot reach the broker at {where}: ")
    if address.tls_ca is not None:
        return Finding(
            "FAIL",
            "broker",
            f"TLS with {where} failed: {problem} ([broker] ca_file, tls_cert, tls_key; "
            "does this port speak TLS?)",
        )
    return Finding(
        "FAIL",
        "broker",
        f"{where} takes the connection but no MQTT session came of it within "
        f"{BROKER_WAIT_S:g} s: {problem} (a TLS-only port? then [broker] needs ca_file)",
    )


def _certificates(address: BrokerAddress) -> Iterator[Finding]:
    """The CA's and the client's certificates: warn CERT_WARN_DAYS before they expire."""
    from cryptography import x509

    now = dt.datetime.now(dt.UTC)
    files = (("CA certificate", address.tls_ca), ("client certificate", address.tls_cert))
    for what, file in files:
        if file is None:
            continue
        name = f"{what} {Path(file).name}"
        try:
            certs = x509.load_pem_x509_certificates(Path(file).read_bytes())
        except (OSError, ValueError) as exc:
            yield Finding("FAIL", "certificate", f"cannot read the {what} {file}: {exc}")
            continue
        cert = min(certs, key=lambda c: c.not_valid_after_utc)  # the chain ends with the first
        ends = cert.not_valid_after_utc
        days = (ends - now) // dt.timedelta(days=1)
        if ends <= now:
            yield Finding(
                "FAIL", "certificate", f"{name} expired on {ends.date()}: renew it ({file})"
            )
        elif max(c.not_valid_before_utc for c in certs) > now:
            begins = max(c.not_valid_before_utc for c in certs)
            yield Finding(
                "FAIL",
                "certificate",
                f"{name} is valid only from {begins:%Y-%m-%d %H:%M} UTC: is the clock right?",
            )
        elif days < CERT_WARN_DAYS:
            yield Finding("warn", "certificate", f"{name} expires in {days} days ({ends.date()})")
        else:
            yield Finding("ok", "certificate", f"{name} valid until {ends.date()} ({days} days)")


# --- the clock ----------------------------------------------------------------------------------


def _journal_rows(path: Path) -> tuple[list[RawRow], str | None]:
    """The journal's events as stored (`sync.journal_check.read_raw`, the journal's own row
    reader), read-only; no rows and no trouble when there is no journal yet: it is not made."""
    import sqlite3
    import urllib.parse

    from sync.journal_check import read_raw

    if not path.is_file():
        return [], None
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=JOURNAL_WAIT_S)
        try:
            return read_raw(conn, 0), None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [], f"cannot read the journal {path} ({exc})"


def _when(ns: int) -> str:
    return f"{dt.datetime.fromtimestamp(ns / 1e9, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _clock(rows: list[RawRow], trouble: str | None) -> Finding:
    """The wall clock is not before this software's release, nor before the newest event the
    device has already journaled (a clock that went back would stamp new facts as old)."""
    from sync.clock import SystemClock

    clock = SystemClock()
    now_ns = clock.wall_ns()
    now = f"{_when(now_ns)} ({'synchronised' if clock.wall_synced() else 'not synchronised'})"
    floor = dt.datetime.combine(RELEASED, dt.time(), dt.UTC).timestamp()
    if now_ns / 1e9 < floor:
        return Finding(
            "FAIL",
            "clock",
            f"{now} is before this software was released ({RELEASED}): set the clock "
            "(NTP, or the real-time clock)",
        )
    stamps = [r.event.wall_ns for r in rows if r.event is not None]
    if stamps and now_ns / 1e9 + CLOCK_SLACK_S < max(stamps) / 1e9:
        return Finding(
            "FAIL",
            "clock",
            f"{now} is before the journal's newest event ({_when(max(stamps))}): the clock "
            "went back; set it before the device starts",
        )
    if trouble is not None:
        return Finding("warn", "clock", f"{now}, after {RELEASED}; {trouble}")
    newest = f"the journal's newest event ({_when(max(stamps))})" if stamps else "no journal yet"
    return Finding("ok", "clock", f"{now}: after this software's release ({RELEASED}); {newest}")


# --- disk and database --------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    """The nearest directory that exists at or above `path` (the device makes the rest)."""
    here = path.resolve()
    while not here.is_dir():
        here = here.parent
    return here


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _room(where: Path, per_day: float, days: int, rate: str, offline: str) -> Finding:
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Finding("FAIL", "disk", f"cannot ask {where} for its free space: {exc}")
    room = int(free // per_day)
    many = "over 1000" if room > max(days, 1000) else str(room)
    said = f"{_size(free)} free in {where}: room for {many} days{offline} (needs {days}) at {rate}"
    return Finding("ok" if room >= days else "FAIL", "disk", said)


def _device_disk(
    journal: Path, rows: list[RawRow], events: int, payload_b: int, photos: int, days: int
) -> Finding:
    if len(rows) >= MEASURED_ROWS:
        sizes = [len(r.columns[7]) for r in rows if isinstance(r.columns[7], bytes)]
        payload_b = round(sum(sizes) / len(sizes)) if sizes else payload_b
    per_event = payload_b + EVENT_OVERHEAD_B
    per_day = events * per_event + photos * PHOTO_B
    rate = f"{events} events of ~{per_event} B"
    rate += f" and {photos} photos of ~{_size(PHOTO_B)} a day" if photos else " a day"
    return _room(_existing(journal.parent), per_day, days, rate, " offline")


def _depot_disk(config: DepotConfig, days: int) -> Finding:
    from depot.store import is_postgres_url

    if is_postgres_url(config.database):
        return Finding("ok", "disk", "the database is on its PostgreSQL server: not checked here")
    vans, lockers = len(config.vans), len(config.lockers)
    events = vans * VAN_EVENTS_PER_DAY + lockers * LOCKER_EVENTS_PER_DAY
    per_day = max(1, events * DEPOT_B_PER_EVENT + vans * VAN_PHOTOS_PER_DAY * PHOTO_B)
    rate = f"the fleet's ~{_size(per_day)} a day ({vans} vans, {lockers} lockers)"
    return _room(_existing(Path(config.database).parent), per_day, days, rate, "")


def _database(spec: str | Path) -> Finding:
    """The depot's database answers and could be written, without creating or migrating it."""
    from depot.store import LATEST, StoreError, is_postgres_url, schema_version

    if is_postgres_url(spec):
        import psycopg

        from depot.store.postgres import CONNECT_TIMEOUT_S, redacted

        url = str(spec)
        try:
            psycopg.connect(url, connect_timeout=min(CONNECT_TIMEOUT_S, 5)).close()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Finding("FAIL", "database", f"{redacted(url)} cannot be reached: {first}")
        return Finding("ok", "database", f"{redacted(url)} connects")
    import sqlite3

    from depot.store.sqlite import read_only

    path = Path(spec)
    if not path.exists():
        home = _existing(path.parent)
        if not os.access(home, os.W_OK):
            return Finding("FAIL", "database", f"{path} does not exist and {home} is not writable")
        return Finding("ok", "database", f"{path} does not exist yet: the depot creates it")
    for place in (path, path.parent):  # SQLite writes -wal and -shm files beside the file
        if not os.access(place, os.W_OK):
            return Finding("FAIL", "database", f"{place} is not writable: the depot must write")
    try:
        conn = read_only(path)
        try:
            version = schema_version(conn)
        finally:
            conn.close()
    except (StoreError, sqlite3.Error) as exc:
        return Finding("FAIL", "database", f"{path} cannot be read as a database: {exc}")
    if version > LATEST:
        return Finding(
            "FAIL", "database", f"{path} has schema {version}, newer than this software's {LATEST}"
        )
    after = "" if version == LATEST else f"; the depot migrates it to {LATEST} when it starts"
    return Finding("ok", "database", f"{path}: schema {version}{after}")
