"""Where an event's times come from: the boot id, the monotonic clock and the wall clock.

A device without a real-time clock boots with a wrong wall clock until NTP or GNSS sets it, so
every event carries both clocks and a flag saying whether the wall clock was synchronised. Order
is never taken from the wall clock: the journal's sequence number orders events, the monotonic
clock measures intervals within one boot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"


class Clock(Protocol):
    """The three facts about time that every journal event records."""

    @property
    def boot_id(self) -> str: ...

    def monotonic_ns(self) -> int: ...

    def wall_ns(self) -> int: ...

    def wall_synced(self) -> bool: ...


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> on 64-bit Linux: 20 longs and ints, padded. Only the
    # return value of adjtimex() is used, so the layout just has to be large enough.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 204)]


def _load_libc() -> ctypes.CDLL | None:
    # find_library runs `ldconfig -p` in a subprocess: do it once, never on a scan's path.
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _kernel_clock_synced(libc: ctypes.CDLL | None) -> bool:
    """Ask the kernel whether NTP (or chrony, or a GNSS PPS daemon) has disciplined the clock."""
    if libc is None:
        return False
    try:
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR)


class SystemClock:
    """The device's real clocks; the kernel's sync state is re-read at most once a minute."""

    def __init__(self) -> None:
        try:
            self._boot_id = _BOOT_ID_PATH.read_text().strip()
        except OSError:
            # Not Linux: a per-process id still separates monotonic time bases correctly.
            self._boot_id = str(uuid.uuid4())
        self._libc = _load_libc()
        self._synced = _kernel_clock_synced(self._libc)
        self._synced_checked = time.monotonic()

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def wall_synced(self) -> bool:
        now = time.monotonic()
        if now - self._synced_checked > 60.0:
            self._synced = _kernel_clock_synced(self._libc)
            self._synced_checked = now
        return self._synced


class _Timebase:
    """Real time as one simulation counts it: monotonic time minus the time spent paused.

    Shared by every ScaledClock of one simulation (see `ScaledClock.catch_up`), so they all
    pause and resume at the same instant. It pauses while anyone holds it, and by itself once
    it reaches its limit (a time some actor of the simulation must act at).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused_total = 0  # real ns spent paused
        self._paused_at: int | None = None  # real ns when the current pause began
        self._holds = 0
        self._limit: int | None = None  # counted ns at which the base stops by itself

    def now(self) -> int:
        """Counted real ns (never goes back)."""
        with self._lock:
            return self._now()

    def _now(self) -> int:
        if self._paused_at is not None:
            return self._paused_at - self._paused_total
        real = time.monotonic_ns()
        counted = real - self._paused_total
        if self._limit is not None and counted >= self._limit:
            # The limit passed since the last read: the base stopped exactly there.
            self._paused_at = real - (counted - self._limit)
            return self._limit
        return counted

    def hold(self) -> None:
        with self._lock:
            self._now()  # a limit passed before this hold still stops the base there
            self._holds += 1
            if self._paused_at is None:
                self._paused_at = time.monotonic_ns()

    def release(self) -> None:
        with self._lock:
            if self._holds <= 0:
                raise ValueError("released more often than held")
            self._holds -= 1
            self._resume_if_free()

    def set_limit(self, counted_ns: int | None) -> None:
        with self._lock:
            now = self._now()
            self._limit = counted_ns
            if self._paused_at is None and counted_ns is not None and now >= counted_ns:
                self._paused_at = time.monotonic_ns()  # a stop already passed: stop here
            self._resume_if_free()

    def paused(self) -> bool:
        with self._lock:
            self._now()
            return self._paused_at is not None

    def _resume_if_free(self) -> None:
        if self._holds or self._paused_at is None:
            return
        if self._limit is not None and self._paused_at - self._paused_total >= self._limit:
            return  # still at (or past) the limit: stays stopped until the limit moves on
        self._paused_total += time.monotonic_ns() - self._paused_at
        self._paused_at = None


@dataclass
class ScaledClock:
    """Simulated time that runs `speed` times faster than real time from a chosen wall start.

    The simulated day uses it so a ten-hour round fits in seconds while every event still
    carries plausible, ordered times. Clocks of one simulation share one time base (after
    `catch_up`), which the simulation can hold still (`hold`/`release`) while an actor is
    busy, and stop at the next time an actor must act (`stop_at`): then how fast the machine
    is changes how long the day takes, not what happens in it. A clock nobody holds and with
    no stop runs freely, as before.
    """

    wall_start_ns: int
    speed: float
    boot_id: str
    synced: bool = True

    def __post_init__(self) -> None:
        self._base = _Timebase()
        self._real0 = self._base.now()

    def monotonic_ns(self) -> int:
        return int((self._base.now() - self._real0) * self.speed)

    def wall_ns(self) -> int:
        return self.wall_start_ns + self.monotonic_ns()

    def wall_synced(self) -> bool:
        return self.synced

    def catch_up(self, other: ScaledClock) -> None:
        """Read the same simulated time as `other`, when that is ahead (never go back), and
        share its time base from now on: holding or stopping one holds or stops both.

        Clocks of one simulation are made one after another; without this, a device built a
        second of real time later would live 40 simulated minutes in the past.
        """
        if other.speed != self.speed or other.wall_start_ns != self.wall_start_ns:
            raise ValueError("only clocks of one simulation (same start, same speed) agree")
        behind = other.monotonic_ns() - self.monotonic_ns()
        self._base = other._base
        self._real0 = other._real0 - (int(-behind / self.speed) if behind < 0 else 0)

    def skip(self, seconds: float) -> None:
        """Jump simulated time forward by `seconds` (a night between two simulated days).

        Both clocks move: a device that sleeps through the night sees its monotonic clock
        advance as well, never go back.
        """
        if seconds < 0:
            raise ValueError("simulated time only moves forward")
        self._real0 -= int(seconds * 1e9 / self.speed)

    def hold(self) -> None:
        """Stop simulated time (every clock sharing this one's base) until `release`; holds
        count, so several actors can each hold while they are busy."""
        self._base.hold()

    def release(self) -> None:
        """End one `hold`; time runs again once nobody holds it and no stop is reached."""
        self._base.release()

    def stop_at(self, wall_ns: int | None) -> None:
        """Let time run at most until this clock reads `wall_ns` (None: no stop); it then
        stands still there until the stop is moved or removed."""
        if wall_ns is None:
            self._base.set_limit(None)
            return
        # Rounded up, plus one ns: reading the clock at the stop gives at least `wall_ns`.
        counted = self._real0 + math.ceil((wall_ns - self.wall_start_ns) / self.speed) + 1
        self._base.set_limit(counted)

    def stopped(self) -> bool:
        """Whether simulated time stands still now (held, or at its stop)."""
        return self._base.paused()
