"""GNSS receivers: NMEA 0183 bytes from a serial receiver in, position `Fix` facts out.

This module owns the receiver's wire (PROTOCOLS.md section 4): ``$`` + address + fields +
``*`` + two hex digits of checksum + CR LF, of which it reads RMC and GGA from the GPS (GP),
multi-constellation (GN), GLONASS (GL) and Galileo (GA) talkers. The layers are:

- `parse_sentence`: one line in, one typed sentence out, or `BadSentence` saying why not.
- `NmeaFramer`: the pure byte-stream cutter (bytes in, sentences and rejected lines out, no
  I/O, no clock), tested byte by byte without a port.
- `FixAssembler`: pure, combines the RMC and GGA of one receiver epoch into one `Fix`.
- `GnssReader`: the I/O; opens a device path or a pyserial URL on a background thread,
  survives the receiver being unplugged and plugged back in, and answers `current()`.

What it must never do:

- report a position the receiver did not vouch for in its latest epoch. RMC status ``V``, a
  GGA fix quality of 0, or empty coordinates mean "no fix", and the answer is then None, never
  the last good coordinates: a proof of delivery stamped with where the van was before the
  tunnel is a false record, while "no position" is an honest one.
- mix sentences of different epochs into one fix (GGA satellites of the previous second with
  this second's RMC).
- trust a line whose checksum is missing or wrong, or raise on line noise: garbage is counted
  and logged and the reader carries on.
- busy-poll the port, block without a timeout, or need a restart after an unplug.
- know about parcels, stops or couriers: ``edge`` decides what a distance means.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import serial

from drivers.errors import DriverError
from drivers.reader import SerialReader

__all__ = [
    "BadNmeaChecksum",
    "BadSentence",
    "Fix",
    "FixAssembler",
    "Gga",
    "GnssCounters",
    "GnssError",
    "GnssReader",
    "IgnoredSentence",
    "NmeaFramer",
    "NoFixReason",
    "RejectedLine",
    "Rmc",
    "Sentence",
    "parse_sentence",
]

log = logging.getLogger("drivers.gnss")

# NMEA 0183: a sentence is at most 82 characters, "$" and CR LF included.
NMEA_MAX_SENTENCE = 82
# What the framer accepts from "$" to the last checksum digit. Receivers in high-precision
# modes add decimals and overshoot the standard; this still bounds memory on endless noise.
DEFAULT_MAX_LINE = 120

# Talkers whose RMC and GGA we use: GPS, any combination of systems, GLONASS, Galileo.
POSITION_TALKERS = frozenset({"GP", "GN", "GL", "GA"})

# GGA fix quality values that are a measured position. 0 is "invalid"; 6 (dead reckoning),
# 7 (manual input) and 8 (simulator) are not a measurement and are treated as no fix.
GGA_FIX_QUALITIES = {1: "GPS", 2: "DGPS", 3: "PPS", 4: "RTK fixed", 5: "RTK float"}
# RMC mode indicator (NMEA 2.3+): A autonomous, D differential, P precise, R RTK, F float RTK.
# N (not valid), E (dead reckoning), M (manual) and S (simulator) are treated as no fix.
RMC_FIX_MODES = frozenset("ADPRF")

# User equivalent range error: the typical 1-sigma pseudorange error of a consumer receiver.
# Estimated horizontal accuracy = HDOP x UERE, roughly a 1-sigma radius (not a 95 % bound).
UERE_M = 5.0

KNOT_MPS = 1852.0 / 3600.0  # One knot, the unit of RMC speed, in metres per second.

# Longest a read blocks; also how long stop() can take on a transport without cancel_read().
IDLE_READ_S = 1.0
DEFAULT_STALE_S = 3.0  # Three missed epochs at 1 Hz: the receiver or its cable is gone.

NoFixReason: TypeAlias = Literal["receiver_disconnected", "receiver_silent", "no_signal"]
"""Why `GnssReader.fix_or_reason` has no current fix: the port is not open (unplugged, or the
reader is between reconnects); the port is open but no position sentence arrived within the
freshness window (a receiver still starting, or one that stopped talking); or the receiver's
latest epoch says it has no fix (no sky: a tunnel, a car park)."""


class GnssError(DriverError):
    """A GNSS reader was configured in a way that cannot work; retrying will not help."""


class BadSentence(DriverError):
    """A line that is not a trustworthy NMEA sentence; ``reason`` says why, ``raw`` is it."""

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(f"{reason}: {raw[:NMEA_MAX_SENTENCE]!r}")
        self.reason = reason
        self.raw = raw


class BadNmeaChecksum(BadSentence):
    """The checksum is missing, not two hex digits, or does not match: line noise, usually."""


@dataclass(frozen=True)
class Rmc:
    """Recommended Minimum data: time, status, position, speed, course, date."""

    talker: str
    utc_time: dt.time | None
    valid: bool  # Status A (and a mode indicator, if sent, that is a measurement).
    lat: float | None
    lon: float | None
    speed_knots: float | None
    course_deg: float | None
    date: dt.date | None
    mode: str | None  # NMEA 2.3+ mode indicator; None from older receivers.

    @property
    def has_fix(self) -> bool:
        return self.valid and self.lat is not None and self.lon is not None


@dataclass(frozen=True)
class Gga:
    """Fix data: time, position, fix quality, satellites in use, HDOP, altitude."""

    talker: str
    utc_time: dt.time | None
    lat: float | None
    lon: float | None
    quality: int
    satellites: int | None
    hdop: float | None
    altitude_m: float | None  # Above mean sea level.

    @property
    def has_fix(self) -> bool:
        return self.quality in GGA_FIX_QUALITIES and self.lat is not None and self.lon is not None


@dataclass(frozen=True)
class IgnoredSentence:
    """A well-formed sentence we do not use (GSV, VTG, proprietary $P..., BeiDou RMC...)."""

    talker: str  # "P" for proprietary sentences.
    kind: str  # "GSV", or the manufacturer and type of a proprietary sentence ("UBX").


Sentence: TypeAlias = Rmc | Gga | IgnoredSentence

RejectKind = Literal["checksum", "malformed", "garbage", "overlong"]


@dataclass(frozen=True)
class RejectedLine:
    """Bytes on the GNSS wire that were not a usable sentence."""

    kind: RejectKind
    reason: str
    raw: bytes


@dataclass(frozen=True)
class Fix:
    """Where the receiver was, in one epoch in which it said its fix was valid.

    ``accuracy_m`` is HDOP x `UERE_M` (None without a GGA): an estimate for deciding whether a
    position is good enough, not a guarantee. ``utc`` needs the RMC's date, so it is None for
    an epoch that had only a GGA. ``received_at`` is ``time.monotonic()`` when the epoch's
    latest sentence arrived; freshness is judged by it, never by the receiver's clock.
    """

    lat: float  # Decimal degrees, north positive.
    lon: float  # Decimal degrees, east positive.
    accuracy_m: float | None
    satellites: int | None
    quality: int | None  # GGA fix quality; None without a GGA.
    hdop: float | None
    altitude_m: float | None
    utc: dt.datetime | None
    speed_mps: float | None
    course_deg: float | None
    received_at: float


# ---- one sentence ------------------------------------------------------------------------------


def nmea_checksum(body: bytes) -> int:
    """XOR of every byte between ``$`` and ``*``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def parse_sentence(line: bytes | str) -> Sentence:
    """Parse one sentence (a trailing CR/LF is allowed); raise `BadSentence` if untrustworthy.

    The checksum is checked before anything is read from the fields, so noise that happens
    to look like a field never becomes a coordinate.
    """
    raw = line.encode("latin-1", "replace") if isinstance(line, str) else bytes(line)
    text = raw.rstrip(b"\r\n")
    if not text.startswith(b"$"):
        raise BadSentence("does not start with '$'", raw)
    star = text.rfind(b"*")
    if star < 0:
        raise BadNmeaChecksum("missing checksum", raw)
    given = text[star + 1 :]
    if len(given) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in given):
        raise BadNmeaChecksum(f"checksum field {given[:8]!r} is not two hex digits", raw)
    body = text[1:star]
    computed = nmea_checksum(body)
    if int(given, 16) != computed:
        raise BadNmeaChecksum(f"checksum {given.decode()} but computed {computed:02X}", raw)
    if any(not 0x20 <= b < 0x7F for b in body) or b"$" in body or b"*" in body:
        raise BadSentence("non-printable or reserved byte inside the sentence", raw)
    fields = body.decode("ascii").split(",")
    address = fields[0]
    if address.startswith("P") and len(address) >= 2:
        return IgnoredSentence(talker="P", kind=address[1:])
    if len(address) != 5 or not address.isalnum() or not address.isupper():
        raise BadSentence(f"bad address field {address!r}", raw)
    talker, kind = address[:2], address[2:]
    if talker not in POSITION_TALKERS or kind not in ("RMC", "GGA"):
        return IgnoredSentence(talker=talker, kind=kind)
    try:
        if kind == "RMC":
            return _parse_rmc(talker, fields[1:])
        return _parse_gga(talker, fields[1:])
    except ValueError as e:
        raise BadSentence(f"{address}: {e}", raw) from e


def _parse_rmc(talker: str, f: list[str]) -> Rmc:
    # hhmmss, status, lat, N/S, lon, E/W, knots, course, ddmmyy, [magvar, E/W, [mode, [nav]]]
    if len(f) < 9:
        raise ValueError(f"{len(f)} fields, need at least 9")
    status = f[1]
    if status not in ("A", "V"):
        raise ValueError(f"status {status!r} is neither A nor V")
    mode = f[11] if len(f) > 11 and f[11] else None
    valid = status == "A" and (mode is None or mode in RMC_FIX_MODES)
    return Rmc(
        talker=talker,
        utc_time=_parse_time(f[0]),
        valid=valid,
        lat=_parse_coordinate(f[2], f[3], "NS", 2, 90.0),
        lon=_parse_coordinate(f[4], f[5], "EW", 3, 180.0),
        speed_knots=_parse_float(f[6], "speed"),
        course_deg=_parse_float(f[7], "course"),
        date=_parse_date(f[8]),
        mode=mode,
    )


def _parse_gga(talker: str, f: list[str]) -> Gga:
    # hhmmss, lat, N/S, lon, E/W, quality, satellites, HDOP, altitude, M, geoid, M, age, station
    if len(f) < 9:
        raise ValueError(f"{len(f)} fields, need at least 9")
    if not f[5].isdigit():
        raise ValueError(f"fix quality {f[5]!r} is not a number")
    satellites = f[6]
    if satellites and not satellites.isdigit():
        raise ValueError(f"satellites {satellites!r} is not a number")
    return Gga(
        talker=talker,
        utc_time=_parse_time(f[0]),
        lat=_parse_coordinate(f[1], f[2], "NS", 2, 90.0),
        lon=_parse_coordinate(f[3], f[4], "EW", 3, 180.0),
        quality=int(f[5]),
        satellites=int(satellites) if satellites else None,
        hdop=_parse_float(f[7], "HDOP"),
        altitude_m=_parse_float(f[8], "altitude"),
    )


def _parse_float(text: str, what: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not a finite number")
    return value


def _parse_time(text: str) -> dt.time | None:
    """``hhmmss`` or ``hhmmss.sss``; empty before the receiver knows the time."""
    if not text:
        return None
    whole, _, frac = text.partition(".")
    if len(whole) != 6 or not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"time {text!r} is not hhmmss.ss")
    micro = int((frac + "000000")[:6]) if frac else 0
    try:
        return dt.time(int(whole[:2]), int(whole[2:4]), int(whole[4:]), micro)
    except ValueError:
        # Includes a leap second (ss = 60): one lost epoch every few years is acceptable.
        raise ValueError(f"time {text!r} is out of range") from None


def _parse_date(text: str) -> dt.date | None:
    """``ddmmyy``; two-digit years 80-99 are 1980-1999 (GPS began in 1980), the rest 20xx."""
    if not text:
        return None
    if len(text) != 6 or not text.isdigit():
        raise ValueError(f"date {text!r} is not ddmmyy")
    yy = int(text[4:])
    try:
        return dt.date(1900 + yy if yy >= 80 else 2000 + yy, int(text[2:4]), int(text[:2]))
    except ValueError:
        raise ValueError(f"date {text!r} is out of range") from None


def _parse_coordinate(
    value: str, hemisphere: str, allowed: str, degree_digits: int, limit: float
) -> float | None:
    """``ddmm.mmmm`` (lat) or ``dddmm.mmmm`` (lon) and its hemisphere to signed degrees."""
    if not value and not hemisphere:
        return None  # What receivers send without a fix.
    if not value or hemisphere not in allowed or len(hemisphere) != 1:
        raise ValueError(f"coordinate {value!r} {hemisphere!r} is incomplete")
    whole, _, frac = value.partition(".")
    if len(whole) != degree_digits + 2 or not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"coordinate {value!r} is not {'d' * degree_digits}mm.mmmm")
    degrees = int(whole[:degree_digits])
    minutes = float(f"{whole[degree_digits:]}.{frac or '0'}")
    if minutes >= 60.0:
        raise ValueError(f"coordinate {value!r} has {minutes} minutes")
    decimal = degrees + minutes / 60.0
    if decimal > limit:
        raise ValueError(f"coordinate {value!r} is beyond {limit} degrees")
    return -decimal if hemisphere in "SW" else decimal


# ---- the byte stream ---------------------------------------------------------------------------


class NmeaFramer:
    """Cuts a receiver's byte stream into sentences and rejected lines; never raises.

    A sentence runs from ``$`` to CR or LF. A ``$`` always starts a new sentence, so a line cut
    short by noise or a dropped byte costs only itself (it is rejected), and the next sentence
    resyncs. Bytes outside a sentence are reported as garbage when a ``$`` or line end closes
    them, or when they reach ``max_line`` bytes. A sentence longer than ``max_line`` is rejected
    and the rest of it is skipped up to the next line end or ``$``.

    Not thread-safe; one reader owns it.
    """

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < NMEA_MAX_SENTENCE - 2:  # A standard sentence without CR LF must fit.
            raise GnssError(f"max_line must be at least {NMEA_MAX_SENTENCE - 2}")
        self._max_line = max_line
        self._buf = bytearray()
        self._in_sentence = False
        self._skipping = False  # An overlong sentence was rejected; skip to its end.

    def feed(self, data: bytes) -> list[Sentence | RejectedLine]:
        """Take bytes as they came off the wire; return what they completed, in order."""
        out: list[Sentence | RejectedLine] = []
        for byte in data:
            if byte == 0x24:  # "$"
                self._end_line(out, cut_by_dollar=True)
                self._in_sentence = True
                self._buf.append(byte)
            elif byte in (0x0D, 0x0A):  # CR, LF
                self._end_line(out, cut_by_dollar=False)
            elif self._skipping:
                continue
            else:
                self._buf.append(byte)
                if len(self._buf) > self._max_line:
                    if self._in_sentence:
                        out.append(
                            _reject("overlong", f"longer than {self._max_line} bytes", self._buf)
                        )
                        self._skipping = True
                    else:
                        out.append(_reject("garbage", "bytes outside a sentence", self._buf))
                    self._buf.clear()
        return out

    def drop_partial(self) -> None:
        """Forget a half-received line, e.g. when the port disconnected under it."""
        if self._buf:
            log.info("dropping partial NMEA line %r", bytes(self._buf[:NMEA_MAX_SENTENCE]))
        self._reset()

    def _reset(self) -> None:
        self._buf.clear()
        self._in_sentence = False
        self._skipping = False

    def _end_line(self, out: list[Sentence | RejectedLine], *, cut_by_dollar: bool) -> None:
        buf = self._buf
        if self._skipping:
            self._reset()
            return
        if not buf:
            self._reset()
            return
        if not self._in_sentence:
            out.append(_reject("garbage", "bytes outside a sentence", buf))
        elif cut_by_dollar:
            out.append(_reject("garbage", "sentence cut off by the next '$'", buf))
        else:
            try:
                out.append(parse_sentence(bytes(buf)))
            except BadNmeaChecksum as e:
                out.append(_reject("checksum", e.reason, buf))
            except BadSentence as e:
                out.append(_reject("malformed", e.reason, buf))
        self._reset()


def _reject(kind: RejectKind, reason: str, raw: bytes | bytearray) -> RejectedLine:
    # INFO, not WARNING: a receiver powering up or a loose connector produces these at
    # line rate, and the counters already tell the story.
    log.info("rejected NMEA line (%s): %s: %r", kind, reason, bytes(raw[:NMEA_MAX_SENTENCE]))
    return RejectedLine(kind=kind, reason=reason, raw=bytes(raw))


# ---- one epoch ---------------------------------------------------------------------------------


class FixAssembler:
    """Combines the RMC and GGA of one receiver epoch into one `Fix`; pure, no clock.

    Sentences belong to the same epoch while their UTC time is equal and their type has not
    been seen in it yet (so two time-less RMCs are two epochs). ``latest`` follows every
    sentence: the epoch's fix so far, or None as soon as any sentence of the epoch says there
    is no fix, so a position is never carried over from an earlier epoch. An epoch is
    *settled* (counted, and its fix announced by `add`) once it has both an RMC and a GGA, or
    when the next epoch begins (receivers configured to send only one of them).
    """

    def __init__(self) -> None:
        self.latest: Fix | None = None
        self.fix_epochs = 0
        self.no_fix_epochs = 0
        self._open = False
        self._settled = False
        self._time: dt.time | None = None
        self._rmc: Rmc | None = None
        self._gga: Gga | None = None

    def add(self, sentence: Rmc | Gga, now: float) -> list[Fix]:
        """Take one sentence received at ``now``; return the fixes of epochs it settled."""
        out: list[Fix] = []
        slot = self._rmc if isinstance(sentence, Rmc) else self._gga
        if not self._open or slot is not None or sentence.utc_time != self._time:
            out += self.close()
            self._open, self._time = True, sentence.utc_time
        if isinstance(sentence, Rmc):
            self._rmc = sentence
        else:
            self._gga = sentence
        self.latest = self._combine(now)
        if self._rmc is not None and self._gga is not None:
            out += self._settle()
        return out

    def close(self) -> list[Fix]:
        """End the open epoch (next epoch, or a disconnect); return its fix if unannounced."""
        out = self._settle() if self._open else []
        self._open, self._settled, self._time = False, False, None
        self._rmc = self._gga = None
        return out

    def _settle(self) -> list[Fix]:
        if self._settled:
            return []
        self._settled = True
        if self.latest is None:
            self.no_fix_epochs += 1
            return []
        self.fix_epochs += 1
        return [self.latest]

    def _combine(self, now: float) -> Fix | None:
        rmc, gga = self._rmc, self._gga
        if (rmc is not None and not rmc.has_fix) or (gga is not None and not gga.has_fix):
            return None
        source = gga if gga is not None else rmc
        assert source is not None and source.lat is not None and source.lon is not None
        hdop = gga.hdop if gga is not None else None
        utc = None
        if rmc is not None and rmc.date is not None and rmc.utc_time is not None:
            utc = dt.datetime.combine(rmc.date, rmc.utc_time, tzinfo=dt.UTC)
        return Fix(
            lat=source.lat,
            lon=source.lon,
            accuracy_m=hdop * UERE_M if hdop is not None else None,
            satellites=gga.satellites if gga is not None else None,
            quality=gga.quality if gga is not None else None,
            hdop=hdop,
            altitude_m=gga.altitude_m if gga is not None else None,
            utc=utc,
            speed_mps=(
                rmc.speed_knots * KNOT_MPS
                if rmc is not None and rmc.speed_knots is not None
                else None
            ),
            course_deg=rmc.course_deg if rmc is not None else None,
            received_at=now,
        )


# ---- the port ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GnssCounters:
    """What a reader has seen since it started; a snapshot."""

    sentences: int  # Checksum-valid sentences, used or ignored.
    ignored: int  # Of those, types and talkers we do not use.
    bad_checksums: int  # Missing or wrong checksum.
    malformed: int  # Checksum fine, fields nonsense (a receiver bug, or noise that matched).
    garbage: int  # Noise outside sentences, cut-off and overlong lines.
    fix_epochs: int
    no_fix_epochs: int


class GnssReader(SerialReader):
    """Reads a GNSS receiver on a background thread, across unplug and replug.

    ``port`` is a device path (``/dev/serial/by-id/...``, ``/dev/ttyACM0``) or any pyserial
    URL (``spy:///dev/ttyACM0?file=trace.txt`` taps the wire). `current` answers "where are
    we now" from any thread; ``on_fix`` (on the reader thread) gets each epoch's fix once it
    is settled (see `FixAssembler`). An exception in a callback is logged and the reader
    carries on.

    Freshness: a fix is current only while the receiver's latest epoch vouched for it and it
    arrived at most ``stale_after_s`` (or `current`'s ``max_age_s``) monotonic seconds ago.
    So an unplugged receiver, or one that stopped talking, stops answering after that age
    without anyone having to notice the silence.

    Reconnect: like the scanner reader, when the port errors or vanishes it is closed, any
    partial line and the open epoch are dropped, and opening is retried after a delay drawn
    uniformly between ``reconnect_min_s`` and a ceiling that doubles per failed attempt up to
    ``reconnect_max_s`` (exponential backoff with jitter); the ceiling resets once a
    connection carried data or stayed up that long (`drivers.reader.ReconnectingReader`).
    `stop` wakes a blocked read with ``cancel_read``.
    """

    error = GnssError
    log = log

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        on_fix: Callable[[Fix], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        stale_after_s: float = DEFAULT_STALE_S,
        max_line: int = DEFAULT_MAX_LINE,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        super().__init__(
            "GNSS receiver",
            port,
            baudrate=baudrate,
            idle_read_s=IDLE_READ_S,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            on_connection=on_connection,
        )
        if not stale_after_s > 0:
            raise GnssError("stale_after_s must be positive")
        self._on_fix = on_fix
        self._stale_after_s = stale_after_s
        self._framer = NmeaFramer(max_line=max_line)  # Reader thread only.
        # Guards the assembler and the counters; notified after every sentence.
        self._state = threading.Condition(threading.Lock())
        self._assembler = FixAssembler()
        self._counts = {"sentences": 0, "ignored": 0}
        self._rejects: dict[RejectKind, int] = {
            "checksum": 0,
            "malformed": 0,
            "garbage": 0,
            "overlong": 0,
        }
        self._heard_at: float | None = None  # monotonic time of the latest RMC or GGA

    def current(self, max_age_s: float | None = None) -> Fix | None:
        """The latest fix if the latest epoch had one and it is fresh; otherwise None."""
        with self._state:
            return self._fresh(max_age_s)

    def fix_or_reason(self, max_age_s: float | None = None) -> Fix | NoFixReason:
        """`current`'s fix, or why there is none, decided under one lock so the two agree.

        A proof of delivery without a position must say why (see `NoFixReason`): a receiver
        in a tunnel and a receiver that fell off its cable are different facts for whoever
        reads the proof.
        """
        with self._state:
            fix = self._fresh(max_age_s)
            if fix is not None:
                return fix
            if not self._connected:
                return "receiver_disconnected"
            limit = self._stale_after_s if max_age_s is None else max_age_s
            if self._heard_at is None or time.monotonic() - self._heard_at > limit:
                return "receiver_silent"
            return "no_signal"

    def wait_for_fix(self, timeout_s: float, max_age_s: float | None = None) -> Fix | None:
        """Wait up to ``timeout_s`` for `current` to have a fix; None if none came."""
        with self._state:
            self._state.wait_for(lambda: self._fresh(max_age_s) is not None, timeout_s)
            return self._fresh(max_age_s)

    @property
    def counters(self) -> GnssCounters:
        with self._state:
            return GnssCounters(
                sentences=self._counts["sentences"],
                ignored=self._counts["ignored"],
                bad_checksums=self._rejects["checksum"],
                malformed=self._rejects["malformed"],
                garbage=self._rejects["garbage"] + self._rejects["overlong"],
                fix_epochs=self._assembler.fix_epochs,
                no_fix_epochs=self._assembler.no_fix_epochs,
            )

    def _fresh(self, max_age_s: float | None) -> Fix | None:
        fix = self._assembler.latest
        if fix is None:
            return None
        limit = self._stale_after_s if max_age_s is None else max_age_s
        return fix if time.monotonic() - fix.received_at <= limit else None

    def _disconnected(self) -> None:
        # Bytes and sentences after the reconnect must not complete what the cut began.
        self._framer.drop_partial()
        with self._state:
            settled = self._assembler.close()
            self._state.notify_all()
        self._announce(settled)

    def _pump(self, port: serial.Serial) -> bool:
        """Pump bytes into the framer until stop or a port error; True if any byte arrived."""
        carried_data = False
        while not self._stopping.is_set():
            try:
                # Blocks until a byte, IDLE_READ_S, or cancel_read() from stop().
                chunk = port.read(1)
                if chunk:
                    waiting = port.in_waiting
                    if waiting:
                        chunk += port.read(waiting)
            except OSError as e:
                # The reader base warns if it stays away (`Reader`); a blip is no warning.
                log.info("GNSS receiver on %s disconnected: %s", self._port, e)
                return carried_data
            if chunk:
                carried_data = True
                self._take(self._framer.feed(chunk), time.monotonic())
        return carried_data

    def _take(self, items: list[Sentence | RejectedLine], now: float) -> None:
        settled: list[Fix] = []
        with self._state:
            for item in items:
                if isinstance(item, RejectedLine):
                    self._rejects[item.kind] += 1
                    continue
                self._counts["sentences"] += 1
                if isinstance(item, IgnoredSentence):
                    self._counts["ignored"] += 1
                else:
                    settled += self._assembler.add(item, now)
                    self._heard_at = now
            self._state.notify_all()
        self._announce(settled)

    def _announce(self, fixes: list[Fix]) -> None:
        if self._on_fix is None:
            return
        for fix in fixes:
            try:
                self._on_fix(fix)
            except Exception:
                log.exception("GNSS on_fix callback failed for %r", fix)
