"""When the van will be at a parcel's door, and how far each van's round has got.

Owns the depot's one travel-time model and the two questions asked of it: a parcel's ETA
(the customer's page) and a van's progress (the operator's fleet page). Both read what the
depot already holds: the van's newest position sample (`depot.store.positions`), the
manifest it runs (`depot.store.sends`) and which parcels are still out for delivery (the
parcel book, `depot.store.book`).

The model: the van drives from where it last was, through every stop before the parcel's that
still has a parcel out for delivery, to the parcel's stop, in manifest order (the planner's
driving order); the distance is the planner's own straight-line round length
(`depot.routing.route_length_m`), driven at `DRIVE_MPS`, plus `STOP_S` at each stop on the
way. The planner itself has no clock (it orders stops by distance only), so these two
figures live here, once; they are a town's averages, not a promise, and the ETA moves as
each new sample comes in. The ETA counts from the sample's own time, so a sample that is late
to arrive does not push the van forward; an ETA already past is "now".

Must never: write anything, or invent an ETA for a parcel that is not out on a van.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from depot.routing import route_length_m
from depot.store import Conn, book, positions, sends
from depot.store.positions import VanPosition
from parcel.errors import ParcelError
from parcel.manifest import Manifest

__all__ = ["DRIVE_MPS", "STOP_S", "Eta", "VanProgress", "parcel_eta", "travel_s", "van_progress"]

#: Average speed between stops in town, traffic lights included (about 29 km/h).
DRIVE_MPS = 8.0
#: Time at a stop: parking, walking to the door, waiting for it to open, walking back.
STOP_S = 180.0
#: A parcel in this state is on a van that has left the depot.
OUT = "out_for_delivery"


@dataclass(frozen=True)
class Eta:
    """When the van is expected at the parcel's stop (depot clock, ns since the epoch).

    `window`/`window_start_ns`/`window_end_ns` are the stop's delivery window (the times of
    the manifest's day, read as UTC like the depot's clock), None without one.
    `based_on_position_ns` is the time of the sample the ETA starts from; None when the van
    has sent none yet on this round (the ETA then starts at the depot, now).
    """

    parcel: str
    van: str
    stop: int
    eta_ns: int
    stops_before: int
    distance_m: float
    based_on_position_ns: int | None
    window: tuple[str, str] | None
    window_start_ns: int | None
    window_end_ns: int | None


@dataclass(frozen=True)
class VanProgress:
    """A van's round as the fleet page shows it.

    `manifest` is the round it runs (None when the depot holds none it can read) and
    `pending_stops` the numbers of that round's stops not done yet (see `van_progress`), so
    the page draws each stop by the rule that counts `stops_done`, not by a copy of it.
    """

    van: str
    day: str | None
    stops_done: int
    stops_total: int
    current_stop: int | None
    position: VanPosition | None
    position_age_s: float | None
    manifest: Manifest | None
    pending_stops: frozenset[int]


def travel_s(distance_m: float, stops: int) -> float:
    """Seconds to drive `distance_m` and serve `stops` stops on the way."""
    return distance_m / DRIVE_MPS + stops * STOP_S


def _manifest(conn: Conn, van: str) -> Manifest | None:
    body = sends.current_manifest_body(conn, van)
    if body is None:
        return None
    try:
        return Manifest.from_json(body)
    except ParcelError:
        return None


def _open_stops(conn: Conn, van: str, manifest: Manifest) -> set[int]:
    """The manifest's stops at which a parcel of this van is still out for delivery."""
    found: set[int] = set()
    for row in book.parcel_lines(conn, OUT):
        if row[3] == van:
            stop = manifest.stop_of(str(row[0]))
            if stop is not None:
                found.add(stop)
    return found


def _window_ns(day: str, hhmm: str) -> int | None:
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) * 10**9


def parcel_eta(conn: Conn, parcel: str, now_ns: int) -> Eta | None:
    """The parcel's ETA at its stop; None when it is not out on a van (not departed yet,
    delivered, in a locker, failed today, unknown) or its van's manifest no longer has it."""
    row = book.parcel_summary(conn, parcel)
    if row is None or row[1] != OUT or row[4] is None:
        return None
    van = str(row[4])
    manifest = _manifest(conn, van)
    stop = manifest.stop_of(parcel) if manifest is not None else None
    if manifest is None or stop is None:
        return None
    where = positions.latest_of(conn, van)
    current = where.stop if where is not None else None
    open_stops = _open_stops(conn, van, manifest)
    first = current if current is not None and current <= stop else 1
    before = [manifest.stop(s) for s in range(first, stop) if s in open_stops]
    start = (where.lat, where.lon) if where is not None else manifest.depot
    if start is None:
        return None  # no sample and no depot position: nowhere to start from
    target = manifest.stop(stop)
    distance = route_length_m(start, [*before, target], return_to_depot=False)
    base_ns = where.fix_ns if where is not None else now_ns
    eta_ns = max(now_ns, base_ns + int(travel_s(distance, len(before)) * 1e9))
    window = target.window
    return Eta(
        parcel=parcel,
        van=van,
        stop=stop,
        eta_ns=eta_ns,
        stops_before=len(before),
        distance_m=distance,
        based_on_position_ns=where.fix_ns if where is not None else None,
        window=window,
        window_start_ns=_window_ns(manifest.day, window[0]) if window else None,
        window_end_ns=_window_ns(manifest.day, window[1]) if window else None,
    )


def van_progress(conn: Conn, van: str, now_ns: int) -> VanProgress:
    """Stops done of all on the van's current manifest, its current stop and last position.

    The stops done are the depot's own count when it has the manifest (a stop is done when
    none of its parcels is still loaded or out for delivery), else the van's word in its
    newest sample; the current stop is the van's word.
    """
    where = positions.latest_of(conn, van)
    manifest = _manifest(conn, van)
    age = None if where is None else max(0.0, (now_ns - where.fix_ns) / 1e9)
    current = where.stop if where is not None else None
    if manifest is None:
        done = where.stops_done if where is not None else 0
        total = where.stops_total if where is not None else 0
        return VanProgress(van, None, done, total, current, where, age, None, frozenset())
    waiting = _open_stops(conn, van, manifest)
    loaded = {r for r in book.loaded_on(conn, van)}
    waiting |= {s for p in loaded if (s := manifest.stop_of(p)) is not None}
    pending = frozenset(
        s.stop
        for s in manifest.stops
        if s.stop in waiting or not (s.parcels or (current is not None and s.stop <= current))
    )
    total = len(manifest.stops)
    return VanProgress(
        van, manifest.day, total - len(pending), total, current, where, age, manifest, pending
    )
