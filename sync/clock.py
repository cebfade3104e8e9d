"""Where an event's times come from: the boot id, the monotonic clock and the wall clock.

A device without a real-time clock boots with a wrong wall clock until NTP or GNSS sets it, so
every event carries both clocks and a flag saying whether the wall clock was synchronised. Order
is never taken from the wall clock: the journal's sequence number orders events, the monotonic
clock measures intervals within one boot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


@dataclass
class ScaledClock:
    """Simulated time that runs `speed` times faster than real time from a chosen wall start.

    The simulated day uses it so a ten-hour round fits in seconds while every event still
    carries plausible, ordered times.
    """

    wall_start_ns: int
    speed: float
    boot_id: str
    synced: bool = True

    def __post_init__(self) -> None:
        self._real0 = time.monotonic_ns()

    def monotonic_ns(self) -> int:
        return int((time.monotonic_ns() - self._real0) * self.speed)

    def wall_ns(self) -> int:
        return self.wall_start_ns + self.monotonic_ns()

    def wall_synced(self) -> bool:
        return self.synced

    def catch_up(self, other: ScaledClock) -> None:
        """Read the same simulated time as `other`, when that is ahead (never go back).

        Clocks of one simulation are made one after another; without this, a device built a
        second of real time later would live 40 simulated minutes in the past.
        """
        if other.speed != self.speed or other.wall_start_ns != self.wall_start_ns:
            raise ValueError("only clocks of one simulation (same start, same speed) agree")
        self._real0 = min(self._real0, other._real0)

    def skip(self, seconds: float) -> None:
        """Jump simulated time forward by `seconds` (a night between two simulated days).

        Both clocks move: a device that sleeps through the night sees its monotonic clock
        advance as well, never go back.
        """
        if seconds < 0:
            raise ValueError("simulated time only moves forward")
        self._real0 -= int(seconds * 1e9 / self.speed)
