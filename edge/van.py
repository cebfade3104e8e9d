"""The courier's handheld in the van: a scan becomes a journaled fact, then a beep.

Owns the order of things at the moment of a scan: identify the code, store the event durably,
and only then tell the courier (the confirmation beep is a callback after the commit). A scan
that cannot be stored — disk full, journal broken — is refused out loud, never confirmed.
With `[round] enabled = true` the scans go to the delivery round (edge/delivery.py), which
also takes the depot's manifests and the courier's input; without it a scan is a plain
`parcel_scanned` fact. Must never talk to the broker itself: the uplink drains the journal on
its own schedule, and depot commands arrive through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import select
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from drivers.photo import Jpeg
from drivers.reader import Reader
from drivers.scanner import Rejected, Scan, ScanFramer, ScannerReader
from edge.delivery import (
    NO_RECEIVER,
    CourierFeedback,
    DeliveryRound,
    NoFix,
    Position,
    RoundError,
    Tone,
)
from edge.delivery import SCAN_REJECTED as SCAN_REJECTED  # one name for both desks
from edge.errors import EdgeError
from edge.ports import require_port
from edge.positions import PositionSampler
from parcel.errors import ParcelError
from parcel.identify import Rejection, identify
from parcel.runlog import (
    log_level,
    needs_restart,
    reload_failed,
    reload_log_level,
    report_reload,
)
from sync import BrokerAddress, Clock, Event, Journal, JournalError, JournalFull
from sync.mqtt import tls_client_files
from sync.positions import PositionOutbox
from sync.uplink import DRAIN_ON_STOP_S, Uplink

log = logging.getLogger("edge.van")

PARCEL_SCANNED = "parcel_scanned"
MANIFEST_COMMAND = "manifest"
#: A courier input line longer than this is refused whole (nobody types 256 KiB; a signature's
#: strokes, at most 64 KiB canonical, come in one line with whatever spacing the screen uses).
MAX_COURIER_LINE = 256 * 1024
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
#: How long `Van.start` waits for the scanner's port to open: started, the van is ready to scan
#: (a scan sent before the port opens is flushed by the open, and lost).
INPUT_WAIT_S = 5.0


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

    def tell(self, tone: Tone, say: str, facts: Mapping[str, Any]) -> None:
        """The delivery round's feedback: `{"tone": ..., "say": ..., <event and payload>}`."""
        self._emit({"tone": tone, "say": say, **facts})

    def reply(self, doc: Mapping[str, Any]) -> None:
        """The answer to one courier input line, on the same stream as the tones."""
        self._emit(doc)


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
    round_enabled: bool = False
    gnss_port: str | None = None
    gnss_baudrate: int = 9600
    camera_source: int | str | None = None  # device index, device path, video file or URL
    log_level: int = logging.INFO  # [log] level
    source: Path | None = None  # the file this was read from: a reload reads it again


# What `Van.reload` applies while running, and how the file names the rest.
_VAN_LIVE = {"log_level", "broker", "source"}
_VAN_SETTINGS = {
    "journal": "journal",
    "scanner_port": "[scanner] port",
    "scanner_suffix": "[scanner] suffix",
    "scanner_baudrate": "[scanner] baudrate",
    "retention_s": "retention_hours",
    "sync": "[sync]",
    "round_enabled": "[round] enabled",
    "gnss_port": "[gnss] port",
    "gnss_baudrate": "[gnss] baudrate",
    "camera_source": "[camera] source",
}


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
        try:
            tls_cert, tls_key = tls_client_files(Path(path).parent, broker)
        except ValueError as exc:
            raise ConfigError(f"config {path}: {exc}") from None
        if not password and tls_cert is None:  # a client certificate names the van by itself
            raise ConfigError(
                "broker password missing: password_file, LASTMILE_MQTT_PASSWORD or tls_cert"
            )
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
        round_ = _section(doc, "round", {"enabled"})
        enabled = round_.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError("[round] enabled must be true or false")
        gnss = _section(doc, "gnss", {"port", "baudrate"})
        camera = _section(doc, "camera", {"source"})
        try:
            level = log_level(_section(doc, "log", {"level"}).get("level", "info"))
        except ValueError as exc:
            raise ConfigError(f"config {path}: {exc}") from None
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
                password or "",
                tls_ca=str(Path(path).parent / broker["ca_file"]) if "ca_file" in broker else None,
                tls_cert=tls_cert,
                tls_key=tls_key,
            ),
            retention_s=float(doc.get("retention_hours", 168)) * 3600.0,
            sync=sync,
            round_enabled=enabled,
            gnss_port=str(gnss["port"]) if "port" in gnss else None,
            gnss_baudrate=int(gnss.get("baudrate", 9600)),
            camera_source=_camera_source(camera["source"]) if "source" in camera else None,
            log_level=level,
            source=Path(path),
        )
    except KeyError as exc:
        raise ConfigError(f"config {path} lacks {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def _section(doc: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"unknown [{name}] settings {sorted(unknown)}; known: {sorted(known)}")
    return dict(section)


class _GnssReader(Protocol):
    """What the van needs of drivers.gnss.GnssReader."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def current(self, max_age_s: float | None = None) -> Position | None: ...

    def fix_or_reason(self, max_age_s: float | None = None) -> Position | str: ...

    def problem(self, within_s: float | None = None) -> str | None: ...


def _open_gnss(config: VanConfig, on_fix: Callable[[Any], None]) -> _GnssReader:
    # Imported only when a receiver is configured: a van without one never loads the driver.
    from drivers.errors import DriverError
    from drivers.gnss import GnssReader

    assert config.gnss_port is not None
    try:
        return GnssReader(config.gnss_port, baudrate=config.gnss_baudrate, on_fix=on_fix)
    except DriverError as exc:
        raise ConfigError(f"[gnss] {exc}") from exc


class _CameraReader(Protocol):
    """What the van needs of drivers.camera.FrameReader."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def problem(self, within_s: float | None = None) -> str | None: ...

    @property
    def camera(self) -> Reader: ...  # the capture thread behind the decoding one


PHOTO_FRAME_MAX_AGE_S = 2.0  # a "camera" photo must show now, not where the van was


def _camera_source(value: object) -> int | str:
    from drivers.camera import CameraError, parse_source  # only when a camera is configured

    try:
        return parse_source(value)
    except CameraError as exc:
        raise ConfigError(f"[camera] {exc}") from exc


class CourierInput:
    """Courier commands as JSON lines on a file descriptor (stdin in the CLI), one reply each.

    Reads the raw descriptor with `select` on it and a wake-up pipe: `stop()` ends the thread
    at once without polling, and no thread is left holding a buffered stream's lock at exit.
    End of input only ends the reading; the van runs on until it is stopped.
    """

    def __init__(
        self,
        fd: int,
        handle: Callable[[str], Mapping[str, Any]],
        reply: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self._fd = fd
        self._handle = handle
        self._reply = reply
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="courier-input", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        pending = b""
        skipping = False  # inside a line already refused as too long, up to its newline
        while True:
            try:
                ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            try:
                chunk = os.read(self._fd, 65536)
            except OSError as exc:
                log.error("courier input unreadable: %s", exc)
                return
            if not chunk:
                if pending.strip():
                    self._answer(pending)
                log.info("courier input closed; the van keeps running")
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if skipping:
                    skipping = False
                elif line.strip():
                    self._answer(line)
            if len(pending) > MAX_COURIER_LINE:
                pending, skipping = b"", True
                self._reply({"error": f"input line longer than {MAX_COURIER_LINE} bytes"})

    def _answer(self, line: bytes) -> None:
        try:
            answer = self._handle(line.decode("utf-8", errors="replace"))
        except Exception as exc:  # one bad line must not end the courier's input
            log.exception("courier input failed")
            answer = {"error": f"internal error: {exc}"}
        try:
            self._reply(answer)
        except Exception:
            log.exception("courier reply failed")


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
        self.round: DeliveryRound | None = None
        self.gnss: _GnssReader | None = None
        self.positions: PositionSampler | None = None  # samples while out on the round
        self.camera: _CameraReader | None = None
        self._last_frame: tuple[Any, float] | None = None  # (drivers.camera.Frame, its .at)
        self.camera_ready = threading.Event()  # set by the first decoded frame, like the scanner
        self._frame_lock = threading.Lock()
        self._manifests: queue.Queue[bytes | None] = queue.Queue()
        self._round_worker: threading.Thread | None = None
        self._courier_input: CourierInput | None = None
        self._last_scan_ns: int | None = None  # the journal clock's time of the latest read
        try:
            if config.round_enabled:
                if not isinstance(feedback, CourierFeedback):
                    raise ConfigError("the delivery round needs feedback that can tell() tones")
                if config.gnss_port:
                    self.gnss = _open_gnss(config, self._on_fix)
                self.round = DeliveryRound(
                    self.journal,
                    feedback,
                    van_id=config.device_id,
                    position=self._position,
                    clock=clock,
                    photos=self.take_photo,
                )
                if self.gnss is not None:
                    self.positions = PositionSampler(
                        PositionOutbox(self.journal), self.round.progress, self.journal.clock
                    )
            elif config.gnss_port:
                log.warning("[gnss] is configured but [round] is not enabled: GNSS not used")
        except BaseException:
            self.journal.close()
            raise
        self.scanner_ready = threading.Event()
        self.scanner = ScannerReader(
            config.scanner_port,
            on_scan=self.scanner_on_scan,
            on_reject=self.desk.on_reject,
            on_connection=self._scanner_connection,
            framer=ScanFramer(SUFFIXES[config.scanner_suffix]),
            baudrate=config.scanner_baudrate,
        )
        if config.camera_source is not None:
            self.camera = self._open_camera(config.camera_source)
        self.uplink = Uplink(self.journal, config.broker, on_command=self._command, **config.sync)

    def _open_camera(self, source: int | str) -> _CameraReader:
        """The camera reads labels like the scanner does, and keeps its newest frame for
        `"photo": "camera"`. Imported only when configured: OpenCV stays out of other vans."""
        from drivers.camera import Camera, Frame, FrameReader, Symbol

        def keep(frame: Frame, _symbols: list[Symbol]) -> None:
            with self._frame_lock:
                # The frame, not its pixels: a camera's JPEG is decoded only if a photo is taken.
                self._last_frame = (frame, frame.at)
            self.camera_ready.set()

        return FrameReader(Camera(source), on_scan=self.scanner_on_scan, on_symbols=keep)

    @property
    def scanner_on_scan(self) -> Callable[[Scan], None]:
        """Where a read goes, from the serial scanner or the camera: one path for both."""
        return self._read

    def _read(self, scan: Scan) -> None:
        # On the reader's thread. The time is for `status_line`, what a person checking on the
        # van wants first: is anybody scanning with it?
        self._last_scan_ns = self.journal.clock.wall_ns()
        if self.round is not None:
            self.round.on_scan(scan)
        else:
            self.desk.on_scan(scan)

    def take_photo(self, spec: str) -> Jpeg:
        """`"camera"`: the camera's newest frame; anything else: an image file's path."""
        from drivers.photo import PhotoError, encode_photo, load_photo

        if spec != "camera":
            return load_photo(spec)
        with self._frame_lock:
            last = self._last_frame
        if last is None or time.monotonic() - last[1] > PHOTO_FRAME_MAX_AGE_S:
            raise PhotoError("the camera has no current picture")
        from drivers.camera import CameraError

        try:
            pixels = last[0].image
        except CameraError as exc:
            raise PhotoError(f"the camera's picture does not decode: {exc}") from exc
        return encode_photo(pixels)

    def _position(self) -> Position | NoFix:
        # The receiver says why it has no fix (unplugged, silent, no sky); a van without one
        # says so itself: a proof of delivery never lacks both a fix and its reason.
        if self.gnss is None:
            return NoFix(NO_RECEIVER)
        found = self.gnss.fix_or_reason()
        return NoFix(found) if isinstance(found, str) else found

    def _on_fix(self, fix: Any) -> None:
        # The GNSS reader's thread, once per receiver epoch: the sampler decides if one is due.
        if self.positions is not None:
            self.positions.on_fix(fix)

    def _command(self, name: str, payload: bytes) -> None:
        # In the MQTT network thread: hand the manifest to the round's worker and return.
        if name != MANIFEST_COMMAND:
            log.info(
                "%s: depot command %r ignored: a van takes only manifests",
                self.config.device_id,
                name,
            )
        elif self.round is None:
            log.info("%s: manifest ignored: [round] enabled is not set", self.config.device_id)
        else:
            self._manifests.put(payload)

    def _apply_manifests(self) -> None:
        assert self.round is not None
        while (payload := self._manifests.get()) is not None:
            try:
                self.round.apply_manifest(payload)
            except Exception:
                log.exception("%s: manifest could not be applied", self.config.device_id)

    def courier(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """One courier command (see DeliveryRound.courier); RoundError when it is refused."""
        if self.round is None:
            raise RoundError("round_disabled", "the delivery round is off: [round] enabled = true")
        return self.round.courier(doc)

    def courier_line(self, line: str) -> dict[str, Any]:
        """One JSON line of courier input -> its reply: `{"reply": do, ...}` or an error."""
        try:
            doc = json.loads(line)
        except ValueError as exc:
            return {"error": f"not JSON: {exc}"}
        do = doc.get("do") if isinstance(doc, dict) else None
        try:
            return {"reply": do, **self.courier(doc)}
        except RoundError as exc:
            return {"reply": do, "error": str(exc), "reason": exc.reason}
        except (EdgeError, ParcelError) as exc:
            return {"reply": do, "error": str(exc)}

    def take_courier_input(self, fd: int, reply: Callable[[Mapping[str, Any]], None]) -> None:
        """Read courier commands as JSON lines from `fd` once started (with the round on only)."""
        if self.round is not None:
            self._courier_input = CourierInput(fd, self.courier_line, reply)

    def _scanner_connection(self, up: bool) -> None:
        # The courier's screen shows this; a scanner that is unplugged cannot be scanned with.
        # Info either way: the scanner's reader warns once if it stays away (one owner).
        log.info("scanner %s", "connected" if up else "disconnected")
        if up:
            self.scanner_ready.set()
        else:
            self.scanner_ready.clear()

    def start(self) -> None:
        """Start everything; a scanner or GNSS port that does not exist raises PortError first.

        Once running, an unplugged scanner or receiver is waited for; at start, a port that
        is not there is a mistake in the config and is said at once.
        """
        require_port(self.config.scanner_port, "scanner", "[scanner] port")
        if self.gnss is not None and self.config.gnss_port:
            require_port(self.config.gnss_port, "GNSS receiver", "[gnss] port")
        if self.round is not None:
            self._round_worker = threading.Thread(
                target=self._apply_manifests, name="van-manifests", daemon=True
            )
            self._round_worker.start()
        if self.gnss is not None:
            self.gnss.start()
        self.uplink.start()
        self.scanner.start()
        if self.camera is not None:
            self.camera.start()
        if self._courier_input is not None:
            self._courier_input.start()
        # Ready means ready to scan (systemd hears READY=1 when this returns): wait, boundedly,
        # for the port to open; one that does not is said, and the van runs on waiting for it.
        if not self.scanner_ready.wait(INPUT_WAIT_S):
            log.warning(
                "scanner on %s did not open within %g s; waiting for it",
                self.config.scanner_port, INPUT_WAIT_S,
            )

    def stop(self) -> None:
        if self._courier_input is not None:
            self._courier_input.stop()
        self.scanner.stop()
        if self.camera is not None:
            self.camera.stop()
        self.uplink.stop(drain_s=DRAIN_ON_STOP_S)  # the inputs are stopped: nothing new comes
        if self._round_worker is not None:
            self._manifests.put(None)  # after the uplink: no manifest arrives any more
            self._round_worker.join(10)
        if self.gnss is not None:
            self.gnss.stop()
        self.journal.close()

    def health(self) -> list[str]:
        """The van's threads that are dead or stalled, by name (empty: all is well).

        Readers are judged by their own heartbeat (`drivers.reader.Reader.problem`), the uplink
        by its own; the manifest worker waits for work without a bound, so only its death is
        news. Courier input is not watched: it ends with its stdin, and the van runs on.
        """
        problems = [self.scanner.problem()]
        if self.camera is not None:
            problems += [self.camera.problem(), self.camera.camera.problem()]
        if self.gnss is not None:
            problems.append(self.gnss.problem())
        worker = self._round_worker
        if worker is not None and not worker.is_alive():
            problems.append(f"manifest worker {worker.name} is not running")
        return [p for p in problems if p is not None] + self.uplink.health()

    def status_line(self) -> str:
        """For `systemctl status`: `online, backlog 3, last scan 12:03:04`."""
        at = self._last_scan_ns
        when = (
            "no scan yet"
            if at is None
            else f"last scan {time.strftime('%H:%M:%S', time.localtime(at / 1e9))}"
        )
        return f"{self.uplink.status_line()}, {when}"

    def reload(self) -> list[str]:
        """SIGHUP: read the configuration file again and apply what can change while the van
        runs (the log level; the broker address, by reconnecting the uplink: the journal is the
        outbox, so nothing queued is lost). Every other changed setting is named in a line of
        its own, "[scanner] port changed: restart to apply": swapping a reader or the journal
        under a running round is a restart's job. A file that no longer loads changes nothing
        and is one error line. Returns the lines it logged."""
        if self.config.source is None:
            return reload_failed(log, "the van was not started from a configuration file")
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            return reload_failed(log, exc)
        applied = [
            said
            for said in (
                reload_log_level(self.config.log_level, new.log_level),
                self.uplink.reconnect(new.broker),  # None when the address is the same
            )
            if said
        ]
        restart = needs_restart(self.config, new, live=_VAN_LIVE, names=_VAN_SETTINGS)
        self.config = dataclasses.replace(self.config, log_level=new.log_level, broker=new.broker)
        return report_reload(log, applied, restart)

    def __enter__(self) -> Van:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
