"""The van's position samples: every 30 s of its clock while it is out on its round.

The depot computes each parcel's ETA, and draws the fleet's map, from where the vans are. The
van decides when a sample is due; it takes no timer of its own: the GNSS receiver's fixes
(one a second on a real receiver) are its tick, and the van's `Clock` says whether 30 s have
passed since the last sample, so a simulated day, whose clock runs fast, samples in its own
time. Nothing is sampled while the van is parked at the depot (before departure, after the
day is closed, or within `PARKED_M` of the depot's position as the manifest gives it): the
depot knows where its own yard is, and a courier's lunch in the yard is nobody's business.

Must never: block the GNSS reader thread for long (it reads the round's committed state
without the round's lock), or raise into it (a sample that cannot be stored is logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from edge.delivery import RoundProgress
from parcel.geo import distance_m
from sync.clock import Clock
from sync.errors import JournalError
from sync.positions import PositionOutbox
from sync.wire import PositionSample

log = logging.getLogger("edge.positions")

SAMPLE_EVERY_S = 30.0
#: Within this distance of the depot's position the van is parked at the depot.
PARKED_M = 150.0


class PositionSampler:
    """Turns GNSS fixes into one stored position sample per `every_s` of the van's clock."""

    def __init__(
        self,
        outbox: PositionOutbox,
        progress: Callable[[], RoundProgress | None],
        clock: Clock,
        *,
        every_s: float = SAMPLE_EVERY_S,
        parked_m: float = PARKED_M,
    ) -> None:
        self.outbox = outbox
        self._progress = progress
        self._clock = clock
        self._every_ns = int(every_s * 1e9)
        self._parked_m = parked_m
        self._last_mono: int | None = None
        self.samples = 0

    def on_fix(self, fix: object) -> None:
        """The GNSS reader's `on_fix` callback (its thread): store a sample when one is due."""
        lat, lon = getattr(fix, "lat", None), getattr(fix, "lon", None)
        if not (isinstance(lat, float) and isinstance(lon, float)):
            return
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return
        now = self._clock.monotonic_ns()
        if self._last_mono is not None and now - self._last_mono < self._every_ns:
            return
        try:
            progress = self._progress()
        except Exception:
            log.exception("round progress unreadable; no position sample")
            return
        if progress is None or not progress.on_the_road or self._parked(progress, lat, lon):
            return
        sample = PositionSample(
            at_ns=self._clock.wall_ns(),
            lat=lat,
            lon=lon,
            accuracy_m=_finite(getattr(fix, "accuracy_m", None)),
            speed_mps=_finite(getattr(fix, "speed_mps", None)),
            stop=progress.current_stop,
            stops_done=progress.stops_done,
            stops_total=progress.stops_total,
        )
        try:
            self.outbox.add(sample)
        except JournalError as exc:
            log.warning("position sample not stored: %s", exc)
            return
        self._last_mono = now
        self.samples += 1

    def _parked(self, progress: RoundProgress, lat: float, lon: float) -> bool:
        if progress.depot is None:
            return False
        return distance_m(lat, lon, *progress.depot) <= self._parked_m


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return None
