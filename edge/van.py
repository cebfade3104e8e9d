"""The courier's handheld in the van: a scan becomes a journaled fact, then a beep.

Owns the order of things at the moment of a scan: identify the code, store the event durably,
and only then tell the courier (the confirmation beep is a callback after the commit). A scan
that cannot be stored — disk full, journal broken — is refused out loud, never confirmed.
Must never talk to the broker itself: the uplink drains the journal on its own schedule.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drivers.scanner import Rejected, Scan, ScanFramer, ScannerReader
from edge.errors import EdgeError
from edge.identify import Rejection, identify
from sync import BrokerAddress, Clock, Event, Journal, JournalError, JournalFull
from sync.uplink import Uplink

log = logging.getLogger("edge.van")

PARCEL_SCANNED = "parcel_scanned"
SCAN_REJECTED = "scan_rejected"
SYNC_SETTINGS = frozenset(
    {
        "batch_events",
        "window_events",
        "ack_timeout_s",
        "keepalive_s",
        "backoff_min_s",
        "backoff_max_s",
        "prune_every_s",
    }
)
SUFFIXES: Mapping[str, bytes | None] = {"crlf": b"\r\n", "cr": b"\r", "lf": b"\n", "none": None}


class Feedback(Protocol):
    """What the courier hears and sees: a good beep after a stored scan, an error tone else."""

    def confirmed(self, event: Event) -> None: ...

    def refused(self, reason: str, raw: str) -> None: ...


class JsonLinesFeedback:
    """Feedback as one JSON object per line on a stream (the CLI's stand-in for a beeper).

    Tests and the simulated day read it to know exactly which scans the courier was told
    about; each line is flushed before the next scan is handled.
    """

    def __init__(self, stream: Any = None) -> None:
        self._out = stream or sys.stdout
        self._lock = threading.Lock()

    def _emit(self, doc: Mapping[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(doc) + "\n")
            self._out.flush()

    def confirmed(self, event: Event) -> None:
        self._emit({"confirmed": event.seq, "uuid": event.uuid, **event.payload})

    def refused(self, reason: str, raw: str) -> None:
        self._emit({"refused": reason, "raw": raw})


class ScanDesk:
    """Turns scanner reads into journal events and courier feedback, in that order."""

    def __init__(self, journal: Journal, feedback: Feedback) -> None:
        self.journal = journal
        self.feedback = feedback
        self.noise_frames = 0

    def on_scan(self, scan: Scan) -> None:
        """The scanner driver's callback."""
        self.handle(scan)

    def handle(self, scan: Scan) -> Event | None:
        """Identify, store, then tell the courier; returns the stored parcel event, if any."""
        try:
            parcel = identify(scan.data, scan.aim)
        except Rejection as rejection:
            self._record(
                SCAN_REJECTED, {"raw": scan.data, "aim": scan.aim, "reason": rejection.reason}
            )
            self.feedback.refused(rejection.reason, scan.data)
            return None
        event = self._record(
            PARCEL_SCANNED,
            {
                "parcel": parcel.id,
                "kind": parcel.kind,
                "aim": scan.aim,
                "raw": scan.data,
            },
        )
        if event is None:
            self.feedback.refused("scan NOT recorded: the device cannot store it", scan.data)
            return None
        self.feedback.confirmed(event)
        return event

    def on_reject(self, rejected: Rejected) -> None:
        # The driver has logged the bytes already; this only counts what the courier never saw.
        self.noise_frames += 1

    def _record(self, kind: str, payload: Mapping[str, Any]) -> Event | None:
        try:
            return self.journal.append(kind, payload)
        except JournalFull as exc:
            log.error("storage full, %s refused: %s", kind, exc)
        except JournalError as exc:
            log.error("journal failed, %s refused: %s", kind, exc)
        return None


@dataclass
class VanConfig:
    """A van device's settings, normally read from a TOML file (see `load_config`)."""

    device_id: str
    journal: Path
    scanner_port: str
    broker: BrokerAddress
    scanner_suffix: str = "crlf"
    scanner_baudrate: int = 9600
    retention_s: float = 7 * 24 * 3600.0
    sync: dict[str, Any] = field(default_factory=dict)


class ConfigError(EdgeError):
    """The device configuration is missing something or says something impossible."""


def load_config(path: str | os.PathLike[str]) -> VanConfig:
    """Read a van's TOML configuration; the broker password comes from a file or the env.

    Passwords are not taken from the command line, where any user sees them in `ps`.
    """
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        broker = doc["broker"]
        password = broker.get("password")
        if "password_file" in broker:
            pw_path = Path(path).parent / broker["password_file"]
            password = pw_path.read_text().strip()
        password = password or os.environ.get("LASTMILE_MQTT_PASSWORD")
        if not password:
            raise ConfigError("broker password missing: password_file or LASTMILE_MQTT_PASSWORD")
        scanner = doc["scanner"]
        suffix = scanner.get("suffix", "crlf")
        if suffix not in SUFFIXES:
            raise ConfigError(f"scanner suffix {suffix!r} is not one of {sorted(SUFFIXES)}")
        sync = dict(doc.get("sync", {}))
        unknown = set(sync) - SYNC_SETTINGS
        if unknown:
            raise ConfigError(
                f"unknown [sync] settings {sorted(unknown)}; known: {sorted(SYNC_SETTINGS)}"
            )
        device_id = str(doc["device_id"])
        return VanConfig(
            device_id=device_id,
            journal=Path(path).parent / doc.get("journal", f"{device_id}.journal.db"),
            scanner_port=str(scanner["port"]),
            scanner_suffix=suffix,
            scanner_baudrate=int(scanner.get("baudrate", 9600)),
            broker=BrokerAddress(
                str(broker.get("host", "127.0.0.1")),
                int(broker["port"]),
                str(broker.get("username", device_id)),
                password,
                tls_ca=str(Path(path).parent / broker["ca_file"]) if "ca_file" in broker else None,
            ),
            retention_s=float(doc.get("retention_hours", 168)) * 3600.0,
            sync=sync,
        )
    except KeyError as exc:
        raise ConfigError(f"config {path} lacks {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


class Van:
    """A running van device: scanner → desk → journal, and journal → uplink → depot."""

    def __init__(
        self, config: VanConfig, feedback: Feedback, *, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.journal = Journal(
            config.journal, config.device_id, clock=clock, retention_s=config.retention_s
        )
        self.desk = ScanDesk(self.journal, feedback)
        self.scanner_ready = threading.Event()
        self.scanner = ScannerReader(
            config.scanner_port,
            on_scan=self.desk.on_scan,
            on_reject=self.desk.on_reject,
            on_connection=self._scanner_connection,
            framer=ScanFramer(SUFFIXES[config.scanner_suffix]),
            baudrate=config.scanner_baudrate,
        )
        self.uplink = Uplink(self.journal, config.broker, **config.sync)

    def _scanner_connection(self, up: bool) -> None:
        # The courier's screen shows this; a scanner that is unplugged cannot be scanned with.
        log.log(
            logging.INFO if up else logging.WARNING,
            "scanner %s",
            "connected" if up else "disconnected",
        )
        if up:
            self.scanner_ready.set()
        else:
            self.scanner_ready.clear()

    def start(self) -> None:
        self.uplink.start()
        self.scanner.start()

    def stop(self) -> None:
        self.scanner.stop()
        self.uplink.stop()
        self.journal.close()

    def __enter__(self) -> Van:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
