"""Serial barcode scanners: bytes from a USB-CDC or RS-232 scanner in, `Scan` facts out.

This module owns the scanner's wire: ``[AIM id][data][suffix]`` (PROTOCOLS.md section 1).
`ScanFramer` is the pure parser (bytes and a clock in, scans and rejections out, no I/O), so it
is tested byte by byte without a port. `ScannerReader` is the I/O: it opens a device path or a
pyserial URL, feeds the framer from a background thread, and survives the scanner being
unplugged and plugged back in.

What it must never do:

- turn a damaged or cut-off frame into a scan: a truncated barcode is a wrong parcel, while a
  rejected frame only costs the courier a second trigger pull. Noise glued to the front of a
  good frame therefore rejects the whole frame.
- strip, split or translate control bytes inside the data (GS, RS, EOT, FS, US carry the
  structure of GS1 and ISO/IEC 15434 data); only the configured suffix ends a scan.
- interpret the data: check digits, carriers and GS1 element strings belong to ``edge``.
- busy-poll the port, or need a process restart after an unplug.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.errors import DriverError
from drivers.reader import SerialReader

__all__ = ["Rejected", "Scan", "ScanFramer", "ScannerError", "ScannerReader"]

log = logging.getLogger("drivers.scanner")

# ASCII control bytes that real scanners send inside the data (PROTOCOLS.md section 1).
EOT = 0x04  # End of Transmission: closes an ISO/IEC 15434 envelope.
FS = 0x1C  # File Separator: ISO/IEC 15434 separator in some formats.
GS = 0x1D  # Group Separator: GS1 FNC1 after a variable-length element; 15434 field separator.
RS = 0x1E  # Record Separator: opens and closes an ISO/IEC 15434 format envelope.
US = 0x1F  # Unit Separator: ISO/IEC 15434 sub-element separator.

# Printable ASCII plus the separators above. Anything else (CR or LF that is not the suffix,
# NUL, DEL, bytes >= 0x80) is what line noise and misconfigured scanners produce.
_DATA_BYTES = frozenset(range(0x20, 0x7F)) | {EOT, FS, GS, RS, US}

# AIM symbology identifier (ISO/IEC 15424): "]" + code letter + modifier character.
_AIM_ID = re.compile(rb"\][A-Za-z][0-9A-Za-z]")

# Timeouts are module constants so that tests and configuration can shrink them.
DEFAULT_SILENCE_S = 0.05  # Zebra "Standard RS-232" sends no terminator: a gap ends the scan.
DEFAULT_STALE_S = 1.0  # With a suffix, a frame silent this long was cut off (unplug, noise).
DEFAULT_DEBOUNCE_S = 0.3  # A held trigger re-sends the same code every ~0.1-0.2 s.
DEFAULT_MAX_LEN = 512  # Longer than any parcel label's 2D code we read; bounds memory.
# Longest a read blocks with no frame open; also how long stop() can take on a transport
# without cancel_read() (socket://).
IDLE_READ_S = 1.0


class ScannerError(DriverError):
    """A scanner was configured in a way that cannot work; retrying will not help."""


@dataclass(frozen=True)
class Scan:
    """One barcode read, as the scanner sent it.

    ``data`` is decoded latin-1 so that every byte maps to exactly one character and control
    bytes (GS, RS, EOT...) survive untouched for the parsers that need them.
    """

    data: str
    aim: str | None  # AIM symbology identifier such as "]C1" (GS1-128); None when not sent.
    raw: bytes  # The frame without its suffix, AIM id included.
    at: float  # time.monotonic() when the frame ended.


@dataclass(frozen=True)
class Rejected:
    """Bytes that arrived on the scanner wire but could not be trusted as a scan."""

    reason: str
    raw: bytes
    at: float


class ScanFramer:
    """Cuts a scanner byte stream into `Scan` and `Rejected` frames.

    Pure and clock-driven: the caller passes ``now`` (``time.monotonic()``) with every call, so
    silence and timeouts are tested without sleeping. Not thread-safe; one reader owns it.

    ``suffix`` is the terminator configured in the scanner (``b"\\r\\n"``, ``b"\\r"``,
    ``b"\\n"``), or None for scanners that send none: a frame then ends after ``silence_s``
    without a byte. With a suffix, a partial frame silent for ``stale_s`` is rejected as
    "frame never ended" so that a cut-off frame cannot swallow the next good one.

    Debounce: a scan whose raw bytes equal the previous read's, within ``debounce_s`` of that
    previous read, is dropped. The window slides with every repeat, so a trigger held for
    seconds yields one scan, and the same parcel scanned again after a pause counts again.
    """

    def __init__(
        self,
        suffix: bytes | None = b"\r\n",
        *,
        silence_s: float = DEFAULT_SILENCE_S,
        max_len: int = DEFAULT_MAX_LEN,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        stale_s: float = DEFAULT_STALE_S,
    ) -> None:
        if suffix is not None:
            if not suffix:
                raise ScannerError("suffix must be None (end on silence) or non-empty bytes")
            if any(b in _DATA_BYTES for b in suffix):
                # A suffix made of data bytes would end scans in the middle of their data.
                raise ScannerError(f"suffix {suffix!r} contains bytes that are valid data")
        if silence_s <= 0 or stale_s <= 0:
            raise ScannerError("silence_s and stale_s must be positive")
        if max_len < 1:
            raise ScannerError("max_len must be at least 1")
        if debounce_s < 0:
            raise ScannerError("debounce_s must not be negative")
        self._suffix = suffix
        # With a suffix, the buffer may end in a partial suffix ("\r" of "\r\n") that is
        # not data yet; keep that many bytes when discarding an overlong frame.
        self._suffix_tail = len(suffix) - 1 if suffix else 0
        self._silence_s = silence_s
        self._stale_s = stale_s
        self._max_len = max_len
        self._debounce_s = debounce_s
        self._buf = bytearray()
        self._discarding = False  # Overlong frame already rejected; skip to the next suffix.
        self._last_byte_at: float | None = None  # None when no frame is open.
        self._last_read: bytes | None = None
        self._last_read_at = 0.0

    def feed(self, data: bytes, now: float) -> list[Scan | Rejected]:
        """Take bytes that arrived at ``now``; return the frames they completed, in order."""
        # A gap before these bytes may already have ended (or killed) the open frame.
        out = self.poll(now)
        for byte in data:
            self._take(byte, now, out)
        return out

    def poll(self, now: float) -> list[Scan | Rejected]:
        """Apply the passage of time: end a frame on silence, or reject a stale partial frame."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        assert self._last_byte_at is not None  # deadline() is None otherwise
        ended_at = self._last_byte_at
        frame = bytes(self._buf)
        discarding = self._discarding
        self._clear()
        if discarding:
            return []  # Reported when it overflowed.
        if self._suffix is None:
            # Silence is the terminator: the frame ended with its last byte.
            return self._finish(frame, ended_at)
        return [self._reject("frame never ended", frame, now)]

    def deadline(self) -> float | None:
        """When `poll` would next change something, or None while no frame is open."""
        if self._last_byte_at is None:
            return None
        wait = self._silence_s if self._suffix is None else self._stale_s
        return self._last_byte_at + wait

    def drop_partial(self) -> None:
        """Forget a half-received frame, e.g. when the port disconnected under it."""
        if self._buf and not self._discarding:
            log.info("dropping partial scanner frame %r", bytes(self._buf))
        self._clear()

    def _clear(self) -> None:
        self._buf.clear()
        self._discarding = False
        self._last_byte_at = None

    def _take(self, byte: int, now: float, out: list[Scan | Rejected]) -> None:
        buf = self._buf
        buf.append(byte)
        self._last_byte_at = now
        suffix = self._suffix
        if suffix is not None and buf.endswith(suffix):
            frame = bytes(buf[: -len(suffix)])
            discarding = self._discarding
            self._clear()
            if not discarding:
                out.extend(self._finish(frame, now))
            return
        if self._discarding:
            del buf[: len(buf) - self._suffix_tail]
            return
        excess = bytes(buf[self._max_len :])
        # Past max_len, unless the excess is only the start of the suffix.
        if excess and not (
            suffix is not None and len(excess) < len(suffix) and suffix.startswith(excess)
        ):
            out.append(self._reject(f"frame longer than {self._max_len} bytes", bytes(buf), now))
            self._discarding = True
            del buf[: len(buf) - self._suffix_tail]

    def _finish(self, frame: bytes, at: float) -> list[Scan | Rejected]:
        if not frame:
            return [self._reject("empty frame", frame, at)]
        for byte in frame:
            if byte not in _DATA_BYTES:
                return [self._reject(f"non-printable byte 0x{byte:02x} in frame", frame, at)]
        aim: str | None = None
        body = frame
        if _AIM_ID.match(frame):
            aim, body = frame[:3].decode("ascii"), frame[3:]
            if not body:
                return [self._reject(f"AIM id {aim} with no data", frame, at)]
        if (
            frame == self._last_read
            and self._debounce_s > 0
            and at - self._last_read_at < self._debounce_s
        ):
            self._last_read_at = at  # Slide the window: the trigger is still held.
            log.debug("debounced repeat of %r", frame)
            return []
        self._last_read, self._last_read_at = frame, at
        return [Scan(data=body.decode("latin-1"), aim=aim, raw=frame, at=at)]

    @staticmethod
    def _reject(reason: str, raw: bytes, at: float) -> Rejected:
        log.warning("rejected scanner frame: %s: %r", reason, raw[:64])
        return Rejected(reason=reason, raw=raw, at=at)


class ScannerReader(SerialReader):
    """Reads scans from a serial scanner on a background thread, across unplug and replug.

    ``port`` is a device path (``/dev/serial/by-id/...``, ``/dev/ttyACM0``) or any pyserial URL
    (``spy:///dev/ttyACM0?file=trace.txt`` taps the wire). Callbacks run on the reader thread;
    an exception in one is logged and the reader carries on.

    Reconnect (`drivers.reader.ReconnectingReader`): when the port errors or vanishes it is
    closed, any partial frame is dropped, and opening is retried after a delay drawn uniformly
    between ``reconnect_min_s`` and a ceiling that doubles per failed attempt up to
    ``reconnect_max_s`` (exponential backoff with jitter); the ceiling resets once a connection
    carried data or stayed up that long. Scans made while disconnected are lost at the
    scanner, and bytes sent before the port opens are flushed by the open: the courier sees no
    confirmation and scans again. Watch ``on_connection`` (called with True/False on the
    reader thread) to show it on screen. `stop` wakes a blocked read with ``cancel_read``.
    """

    error = ScannerError
    log = log

    def __init__(
        self,
        port: str,
        on_scan: Callable[[Scan], None],
        *,
        framer: ScanFramer | None = None,
        baudrate: int = 9600,
        on_reject: Callable[[Rejected], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        super().__init__(
            "scanner",
            port,
            baudrate=baudrate,
            idle_read_s=IDLE_READ_S,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            on_connection=on_connection,
        )
        self._on_scan = on_scan
        self._on_reject = on_reject
        self._framer = framer if framer is not None else ScanFramer()

    def _disconnected(self) -> None:
        # A frame cut by the disconnect must not be completed by bytes after the reconnect.
        self._framer.drop_partial()

    def _pump(self, link: serial.Serial) -> bool:
        """Pump bytes into the framer until stop or a port error; True if any byte arrived."""
        port = link
        framer = self._framer
        carried_data = False
        while not self._stopping.is_set():
            now = time.monotonic()
            deadline = framer.deadline()
            if deadline is not None and deadline <= now:
                self._dispatch(framer.poll(now))
                continue
            # Block in the read until a byte, the framer's next deadline, or cancel_read().
            # Setting the timeout only re-reads termios on posix (no tcsetattr when unchanged).
            wait = IDLE_READ_S if deadline is None else min(IDLE_READ_S, deadline - now)
            try:
                if port.timeout != wait:
                    port.timeout = wait
                chunk = port.read(1)
                if chunk:
                    waiting = port.in_waiting
                    if waiting:
                        chunk += port.read(waiting)
            except OSError as e:
                # The reader base warns if it stays away (`Reader`); a blip is no warning.
                log.info("scanner on %s disconnected: %s", self._port, e)
                return carried_data
            now = time.monotonic()
            if chunk:
                carried_data = True
                self._dispatch(framer.feed(chunk, now))
            else:
                self._dispatch(framer.poll(now))
        return carried_data

    def _dispatch(self, frames: list[Scan | Rejected]) -> None:
        for frame in frames:
            try:
                if isinstance(frame, Scan):
                    self._on_scan(frame)
                elif self._on_reject is not None:
                    self._on_reject(frame)
            except Exception:
                log.exception("scanner callback failed for %r", frame)
