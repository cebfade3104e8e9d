"""A GNSS receiver on a pseudo-terminal, for tests, bench runs, the simulated day and by hand
(`lastmile sim gnss`: NMEA at a position given on the command line, moved by stdin lines).

It owns the receiver's side of the wire (PROTOCOLS.md section 4): one ``$GNRMC`` and one
``$GNGGA`` sentence per epoch, CR LF terminated, written to a pty master from a background
thread, so a driver opens the slave path exactly as it would open ``/dev/ttyACM0``. Epochs
follow a `sync.clock.Clock`, so under a `ScaledClock` the antenna moves along its route in
simulated time. Test-side controls move the antenna, take the sky away (`tunnel`), degrade
HDOP, corrupt sentences and pull the cable; `history` records what was written.

It writes NMEA on its own, checksum included, and must never import from ``drivers``: a
formatting bug shared by both sides would pass every test.

It must never block a test forever or spin: the master is non-blocking, bytes nobody reads
are dropped after a short bounded wait (a receiver's UART does not wait for its host), and the
epoch thread sleeps on an Event between epochs. At high clock speeds it skips epochs rather
than write more than ``max_real_rate_hz`` per real second.

The pty and the epoch thread's life are simulators/device_port.py's, which also describes the
pty behaviour relied on (pinned by tests/test_scanner_serial.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from parcel.geo import distance_m
from simulators.device_port import DevicePort, ServingThread
from simulators.errors import SimulatorError

if TYPE_CHECKING:  # `lastmile --help` builds `sim gnss`'s options: sync (paho, SQLite) stays out
    from sync.clock import Clock

__all__ = ["SimulatedGnss", "WrittenSentence", "add_arguments", "run_from_args"]

log = logging.getLogger("simulators.gnss")

# A receiver's UART does not wait for its host: bytes the pty will not take within this are
# dropped. Short, so that close() is never held up by a host that stopped reading.
WRITE_TIMEOUT_S = 0.05
# Longest the epoch thread sleeps without looking at the clock again: bounds the damage of a
# clock whose speed changed, or a wall clock that jumped.
MAX_SLEEP_S = 0.25
# Times are written with two decimals (hhmmss.ss); faster epochs would share a time field.
MAX_RATE_HZ = 100.0

MPS_PER_KNOT = 1852.0 / 3600.0
DEFAULT_POSITION = (52.37403, 4.88969)  # Amsterdam Centraal, a depot-ish place to stand.
_EPOCH0 = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class WrittenSentence:
    """One thing the pty accepted, and what the simulated world was when it was made.

    ``lat``/``lon`` are where the antenna was at the epoch; they were written only when
    ``fix`` is True. ``sim_ns`` is the clock's ``monotonic_ns()`` of the epoch, ``utc`` its
    time in the sentence; both are None for `write_raw` bytes. ``at`` is the real
    ``time.monotonic()`` when the write finished.
    """

    at: float
    kind: str  # "RMC", "GGA" or "raw"
    sim_ns: int | None
    utc: dt.datetime | None
    lat: float | None
    lon: float | None
    fix: bool
    corrupted: bool
    data: bytes


@dataclass(frozen=True)
class _Route:
    points: tuple[tuple[float, float], ...]
    legs_m: tuple[float, ...]  # Length of each leg, points[i] -> points[i + 1].
    speed_mps: float
    started_ns: int  # Clock monotonic_ns() when the vehicle set off.


class SimulatedGnss:
    """A GNSS receiver plugged into a pseudo-terminal; `path` is what the driver opens.

    ``link`` makes `path` a stable symlink to the pty slave, like ``/dev/serial/by-id/...``,
    which survives `unplug`/`replug` while the ``/dev/pts/N`` behind it changes.

    Epochs sit on whole multiples of ``1 / rate_hz`` simulated seconds of ``clock.wall_ns()``
    (real receivers align them to the second), at most ``max_real_rate_hz`` per real second:
    at 2400x a 1 Hz receiver would owe 2400 epochs a second, so most are skipped, and the ones
    written still carry their true simulated time and position. ``corrupt_share`` is the
    chance that a sentence gets one character flipped, drawn from ``random.Random(seed)``.
    """

    def __init__(
        self,
        link: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        rate_hz: float = 1.0,
        seed: int = 0,
        corrupt_share: float = 0.0,
        max_real_rate_hz: float = 20.0,
        position: tuple[float, float] = DEFAULT_POSITION,
        hdop: float = 0.9,
        satellites: int = 10,
        altitude_m: float = 2.0,
        talker: str = "GN",
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        if not 0 < rate_hz <= MAX_RATE_HZ:
            raise SimulatorError(f"rate_hz must be in (0, {MAX_RATE_HZ}]")
        if not max_real_rate_hz > 0:
            raise SimulatorError("max_real_rate_hz must be positive")
        if not 0.0 <= corrupt_share <= 1.0:
            raise SimulatorError("corrupt_share must be between 0 and 1")
        if len(talker) != 2 or not talker.isalpha() or not talker.isupper():
            raise SimulatorError(f"talker {talker!r} is not two capital letters")
        _check_position(*position)
        if clock is None:
            from sync.clock import SystemClock

            clock = SystemClock()
        self._clock: Clock = clock
        self._period_ns = round(1e9 / rate_hz)
        self._min_gap_s = 1.0 / max_real_rate_hz
        self._corrupt_share = corrupt_share
        self._rng = random.Random(seed)
        self._talker = talker

        # The simulated world and the history, under one lock with a condition notified
        # whenever the history grows (see wait_until).
        self._state = threading.RLock()
        self._changed = threading.Condition(self._state)
        self._position = position
        self._route: _Route | None = None
        self._fix_lost = False
        self._hdop = hdop
        self._satellites = satellites
        self._altitude_m = altitude_m
        self._corrupt_next = 0
        self._history: list[WrittenSentence] = []

        self._port = DevicePort("GNSS receiver", link, log=log, write_timeout_s=write_timeout_s)
        self._epochs = ServingThread(
            f"gnss-sim {self._port.device}", self._epochs_until_stopped, log=log
        )
        self._epochs.start()

    # -- where the driver connects -------------------------------------------------------------

    @property
    def path(self) -> str:
        """What a driver opens: the symlink if one was asked for, else the pty slave."""
        return self._port.path

    @property
    def device(self) -> str:
        """The current pty slave (``/dev/pts/N``); it changes on every replug."""
        return self._port.device

    @property
    def plugged(self) -> bool:
        return self._port.plugged

    # -- the antenna and the sky ---------------------------------------------------------------

    def move_to(self, lat: float, lon: float) -> None:
        """Stand still at this position from the next epoch on (ends any `follow`)."""
        _check_position(lat, lon)
        with self._state:
            self._position, self._route = (lat, lon), None

    def follow(self, route: Sequence[tuple[float, float]], speed_mps: float) -> None:
        """Drive along the waypoints at ``speed_mps`` of simulated time, starting now.

        The position is interpolated along the polyline by the simulated time elapsed, and
        stays at the last waypoint once it is reached.
        """
        if not route:
            raise SimulatorError("a route needs at least one waypoint")
        if not speed_mps > 0:
            raise SimulatorError("speed_mps must be positive")
        for lat, lon in route:
            _check_position(lat, lon)
        points = tuple((float(lat), float(lon)) for lat, lon in route)
        legs = tuple(distance_m(*a, *b) for a, b in itertools.pairwise(points))
        with self._state:
            self._route = _Route(points, legs, speed_mps, self._clock.monotonic_ns())

    def position(self) -> tuple[float, float]:
        """Where the antenna is now in simulated time, fix or not."""
        with self._state:
            lat, lon, _, _ = self._kinematics(self._clock.monotonic_ns())
            return lat, lon

    @property
    def arrived(self) -> bool:
        """True when standing still: no route, or at the end of it."""
        with self._state:
            return self._kinematics(self._clock.monotonic_ns())[2] == 0.0

    def tunnel(self, on: bool = True) -> None:
        """No sky: RMC status V, GGA quality 0, empty position fields, as receivers send."""
        with self._state:
            self._fix_lost = on

    def lose_fix(self) -> None:
        self.tunnel(True)

    def regain_fix(self) -> None:
        self.tunnel(False)

    def set_hdop(self, hdop: float) -> None:
        """Horizontal dilution of precision in the GGA (0.5 open sky ... 20 an urban canyon)."""
        if not hdop > 0:
            raise SimulatorError("hdop must be positive")
        with self._state:
            self._hdop = hdop

    def set_satellites(self, satellites: int) -> None:
        if not 0 <= satellites <= 99:
            raise SimulatorError("satellites must be 0-99 (two digits in the GGA)")
        with self._state:
            self._satellites = satellites

    def corrupt_next(self, n: int = 1) -> None:
        """The next ``n`` sentences get one character flipped, so their checksum fails."""
        if n < 0:
            raise SimulatorError("n must not be negative")
        with self._state:
            self._corrupt_next = n

    def write_raw(self, data: bytes) -> None:
        """Send bytes as they are: noise, a half sentence, a sentence of another kind."""
        accepted = self._port.write(data)
        if accepted:
            raw = WrittenSentence(
                at=time.monotonic(),
                kind="raw",
                sim_ns=None,
                utc=None,
                lat=None,
                lon=None,
                fix=False,
                corrupted=False,
                data=accepted,
            )
            self._record(raw)

    # -- the cable ------------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the cable: the pty disappears, and so does the symlink to it."""
        self._port.unplug()

    def replug(self) -> None:
        """Plug back in: a fresh pty, and the symlink points at it."""
        self._port.plug()

    def close(self) -> None:
        """Stop the epochs and unplug for good; safe to call twice."""
        try:
            self._epochs.stop(2.0)
        finally:
            self._port.close()

    def __enter__(self) -> SimulatedGnss:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what happened --------------------------------------------------------------------------

    @property
    def history(self) -> list[WrittenSentence]:
        """A copy of everything the pty accepted, in order."""
        with self._state:
            return list(self._history)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every write; False on timeout.

        The predicate runs with the state lock held; it may read `history` and the controls.
        """
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    # -- the epoch thread -----------------------------------------------------------------------

    def _epochs_until_stopped(self) -> None:
        stopping = self._epochs.stopping
        clock, period = self._clock, self._period_ns
        real0, sim0 = time.monotonic_ns(), clock.monotonic_ns()
        last_epoch: int | None = None
        last_written = -math.inf
        while not stopping.is_set():
            wall = clock.wall_ns()
            epoch = wall // period
            if last_epoch is None or epoch > last_epoch:
                # The epoch's own simulated instant, not "now": the thread may wake late.
                sim_ns = clock.monotonic_ns() - (wall - epoch * period)
                self._emit(epoch * period, sim_ns)
                last_epoch, last_written = epoch, time.monotonic()
            # Sleep until the next epoch boundary in simulated time, but no sooner than the
            # real-rate cap allows. The speed is measured, since the Clock protocol does not
            # say it; until it can be measured, wake at the cap's pace.
            real_elapsed = time.monotonic_ns() - real0
            speed = (clock.monotonic_ns() - sim0) / real_elapsed if real_elapsed > 1e6 else 0.0
            if speed > 0:
                sim_left = (last_epoch + 1) * period - clock.wall_ns()
                wait = min(MAX_SLEEP_S, sim_left / speed / 1e9)
            else:
                wait = self._min_gap_s
            wait = max(wait, last_written + self._min_gap_s - time.monotonic(), 0.0)
            stopping.wait(wait)

    def _emit(self, wall_ns: int, sim_ns: int) -> None:
        utc = _EPOCH0 + dt.timedelta(microseconds=wall_ns // 1000)
        with self._state:
            lat, lon, speed, course = self._kinematics(sim_ns)
            fix = not self._fix_lost
            sentences = [
                ("RMC", self._rmc(utc, fix, lat, lon, speed, course)),
                ("GGA", self._gga(utc, fix, lat, lon)),
            ]
            out: list[tuple[str, bytes, bool]] = []
            for kind, body in sentences:
                corrupt = False
                if self._corrupt_next > 0:
                    self._corrupt_next -= 1
                    corrupt = True
                elif self._corrupt_share > 0 and self._rng.random() < self._corrupt_share:
                    corrupt = True
                data = _frame(body)
                out.append((kind, self._flip(data) if corrupt else data, corrupt))
        for kind, data, corrupt in out:
            # Recorded before the first byte goes out: the receiver may have read and counted
            # the sentence before this thread runs again. One the pty did not take is removed.
            entry = WrittenSentence(
                time.monotonic(), kind, sim_ns, utc, lat, lon, fix, corrupt, data
            )
            self._record(entry)
            if self._port.write(data) != data:
                self._unrecord(entry)

    def _record(self, entry: WrittenSentence) -> None:
        with self._changed:
            self._history.append(entry)
            self._changed.notify_all()

    def _unrecord(self, entry: WrittenSentence) -> None:
        with self._changed:
            for i in range(len(self._history) - 1, -1, -1):
                if self._history[i] is entry:
                    del self._history[i]
                    break
            self._changed.notify_all()

    def _kinematics(self, sim_ns: int) -> tuple[float, float, float, float | None]:
        """(lat, lon, speed m/s, course degrees or None) at ``sim_ns``; lock held."""
        route = self._route
        if route is None:
            return self._position[0], self._position[1], 0.0, None
        travelled = route.speed_mps * max(0, sim_ns - route.started_ns) / 1e9
        for i, leg in enumerate(route.legs_m):
            a, b = route.points[i], route.points[i + 1]
            if travelled < leg:
                f = travelled / leg
                lat = a[0] + (b[0] - a[0]) * f
                lon = a[1] + (b[1] - a[1]) * f
                return lat, lon, route.speed_mps, _bearing_deg(a, b)
            travelled -= leg
        end = route.points[-1]
        return end[0], end[1], 0.0, None

    def _rmc(
        self,
        utc: dt.datetime,
        fix: bool,
        lat: float,
        lon: float,
        speed_mps: float,
        course: float | None,
    ) -> str:
        hms, date = _nmea_time(utc), utc.strftime("%d%m%y")
        if not fix:
            return f"{self._talker}RMC,{hms},V,,,,,,,{date},,,N"
        knots = speed_mps / MPS_PER_KNOT
        course_field = f"{course:.2f}" if course is not None else ""
        return (
            f"{self._talker}RMC,{hms},A,{_lat_fields(lat)},{_lon_fields(lon)},"
            f"{knots:.3f},{course_field},{date},,,A"
        )

    def _gga(self, utc: dt.datetime, fix: bool, lat: float, lon: float) -> str:
        hms = _nmea_time(utc)
        if not fix:
            return f"{self._talker}GGA,{hms},,,,,0,00,99.99,,,,,,"
        return (
            f"{self._talker}GGA,{hms},{_lat_fields(lat)},{_lon_fields(lon)},1,"
            f"{self._satellites:02d},{self._hdop:.2f},{self._altitude_m:.1f},M,46.9,M,,"
        )

    def _flip(self, sentence: bytes) -> bytes:
        """Flip one low bit of one character between ``$`` and ``*``: line noise.

        Changing a single byte always changes the XOR checksum; the flip is kept away from
        the framing characters so the host still sees one line, just a bad one.
        """
        star = sentence.rindex(b"*")
        i = self._rng.randrange(1, star)
        flipped = sentence[i] ^ 0x01
        if flipped in b"$*\r\n":
            flipped = sentence[i] ^ 0x02
        return sentence[:i] + bytes([flipped]) + sentence[i + 1 :]


# ---- NMEA, written independently of drivers.gnss -------------------------------------------------


def _frame(body: str) -> bytes:
    """``$`` + body + ``*`` + checksum (XOR of the body's bytes, two hex digits) + CR LF."""
    raw = body.encode("ascii")
    checksum = 0
    for byte in raw:
        checksum ^= byte
    return b"$" + raw + b"*" + f"{checksum:02X}".encode("ascii") + b"\r\n"


def _nmea_time(utc: dt.datetime) -> str:
    return f"{utc:%H%M%S}.{utc.microsecond // 10_000:02d}"


def _angle_fields(value: float, degree_digits: int, hemispheres: str) -> str:
    # In whole 1e-5 minutes, so rounding can never print "60.00000" minutes.
    units = round(abs(value) * 60 * 100_000)
    degrees, rest = divmod(units, 60 * 100_000)
    minutes, fraction = divmod(rest, 100_000)
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    return f"{degrees:0{degree_digits}d}{minutes:02d}.{fraction:05d},{hemisphere}"


def _lat_fields(lat: float) -> str:
    return _angle_fields(lat, 2, "NS")


def _lon_fields(lon: float) -> str:
    return _angle_fields(lon, 3, "EW")


def _check_position(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise SimulatorError(f"({lat}, {lon}) is not a position on Earth")


def _bearing_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Initial great-circle bearing from a to b, 0-360 degrees clockwise from true north."""
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


# ---- command line: `lastmile sim gnss` ----------------------------------------------------------

GNSS_COMMANDS = """\
LAT LON     stand at this position from the next epoch on (decimal degrees, e.g. 52.37 4.89)
tunnel      lose the fix (no sky); sky brings it back
hdop X      horizontal dilution of precision in the GGA"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "A GNSS receiver on a pty: prints the pty's path, then writes $GNRMC and $GNGGA at "
        "--rate Hz at the position given, which stdin lines move."
    )
    p.epilog = "Commands on stdin, one a line:\n" + GNSS_COMMANDS
    p.add_argument("--link", type=Path, help="make this path a symlink to the pty")
    p.add_argument(
        "--lat", type=float, default=DEFAULT_POSITION[0], help="latitude, decimal degrees"
    )
    p.add_argument(
        "--lon", type=float, default=DEFAULT_POSITION[1], help="longitude, decimal degrees"
    )
    p.add_argument("--rate", type=float, default=1.0, help="epochs per second (default 1)")


def _console(sim: SimulatedGnss) -> Callable[[str], str | None]:
    def command(line: str) -> str | None:
        words = line.replace(",", " ").split()  # "52.37, 4.89" as copied from a map
        word = words[0].lower()
        if word == "tunnel":
            sim.tunnel(True)
            return "fix lost"
        if word == "sky":
            sim.tunnel(False)
            return "fix back"
        if word == "hdop" and len(words) == 2:
            sim.set_hdop(float(words[1]))
            return f"hdop {float(words[1]):.2f}"
        if len(words) == 2:
            try:
                lat, lon = float(words[0]), float(words[1])
            except ValueError:
                pass
            else:
                sim.move_to(lat, lon)
                return f"at {lat:.6f} {lon:.6f}"
        raise SimulatorError(f"{line!r}: expected LAT LON, tunnel, sky or hdop X (see --help)")

    return command


def run_from_args(args: argparse.Namespace) -> int:
    from simulators.console import serve

    try:
        sim = SimulatedGnss(args.link, rate_hz=args.rate, position=(args.lat, args.lon))
    except (SimulatorError, OSError) as e:
        print(f"lastmile sim gnss: {e}", file=sys.stderr)
        return 2
    with sim:
        return serve("gnss", sim.path, _console(sim))
