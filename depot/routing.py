"""Route planning: which van takes which parcels, and in which order it drives to them.

Owns a simple, documented, deterministic heuristic and the manifest it produces. It is *not* a
vehicle-routing solver: it knows straight-line distances only (no roads, traffic, service times
or arrival times) and it gives no guarantee that a time window is met.

The heuristic, step by step:

1. **Stops.** Parcels whose coordinates agree to 5 decimal places (about a metre) and whose
   addresses agree (ignoring case and runs of spaces) are one stop. A stop's position and
   address are those of its first parcel in parcel-id order; its recipients and instructions
   are the distinct ones joined (``"; "`` and ``" / "``); its window is the one of its parcels
   that ends first (then starts first), the strictest promise made at that door. Its parcels
   are listed in parcel-id order.
2. **Vans: a polar sweep.** Stops are sorted by their bearing from the depot (then distance,
   then position and address). The sweep starts just after the widest empty angle around the
   depot, so no van's sector straddles a natural gap (a river, an empty quarter), and is cut
   into contiguous sectors, one per van in the order given, with stop counts differing by at
   most one (the first vans get the extra). With ``capacity`` (parcels per van) a van takes
   fewer stops when the next one would overfill it, and more when the vans after it could
   not hold the rest otherwise; if the parcels cannot fit at all, :class:`RoutingError` says
   so rather than leave parcels behind. Balance is by stops, not parcels or distance.
3. **Order: nearest neighbour, then 2-opt.** From the depot, the van goes to the nearest
   unvisited stop each time. The round is then improved by 2-opt (reverse a stretch of the
   round when that makes the whole round shorter by more than :data:`MIN_GAIN_M`), first
   improvement, at most :data:`MAX_2OPT_PASSES` passes. Rounds are closed: the van comes back
   to the depot (returns are handed in there), and that leg counts in the length.
4. **Time windows, as a tie-break only.** When nearest neighbour finds stops within
   :data:`TIE_M` of the nearest one, it takes the one whose window ends first (no window counts
   as the end of the day), so a morning-window stop goes before its equally near neighbour.
   Nothing else looks at windows: a far-away 09:00-12:00 stop is not pulled forward, and 2-opt
   may move a window stop later when that saves more than a metre.

5. **Collections.** A locker's expired holds are collected by the van whose round passes
   nearest the locker (:func:`nearest_round`: the straight-line distance from the locker to the
   nearest point of the round, the depot included; ties by van name). A van that already stops
   at that locker drives no extra metre for it; the van that once dropped the parcel there
   may be a sector away today, so it is not preferred. The collection joins the round's locker
   stop of that locker, after the doors.

Determinism: the same records, vans and depot give the same plan, whatever the order of the
records; every tie is broken on values, never on set or dict iteration order.

Must never: drop or duplicate a parcel (every record is on exactly one stop of exactly one van,
or planning fails), talk to the database or the network, or read a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from typing import TYPE_CHECKING, Protocol

from depot.errors import DepotError
from parcel.geo import bearing_deg, distance_m
from parcel.manifest import Manifest, Stop

if TYPE_CHECKING:
    from depot.imports import ParcelRecord

__all__ = [
    "MAX_2OPT_PASSES",
    "MIN_GAIN_M",
    "TIE_M",
    "Located",
    "PlannedStop",
    "RoutingError",
    "build_manifest",
    "group_stops",
    "nearest_round",
    "order_stops",
    "plan_routes",
    "route_length_m",
]

#: Mean Earth radius (IUGG), metres.
#: Decimal places of latitude/longitude that make two parcels one stop (1e-5° ≈ 1.1 m).
STOP_DECIMALS = 5
#: Nearest-neighbour candidates this close to the nearest one are a tie, settled by window.
TIE_M = 1.0
#: A 2-opt move must shorten the round by more than this; less is coordinate noise.
MIN_GAIN_M = 1.0
#: Upper bound on 2-opt passes over all pairs, so planning time is bounded.
MAX_2OPT_PASSES = 50
#: How a stop without a window sorts among windows ending at "HH:MM".
_NO_WINDOW_END = "24:00"


class RoutingError(DepotError):
    """The parcels cannot be planned as asked; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Located(Protocol):
    """Anything with a position: a :class:`PlannedStop` or a manifest stop."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...


@dataclass(frozen=True)
class PlannedStop:
    """One door the van stops at, with the parcel records due there."""

    lat: float
    lon: float
    address: str
    recipient: str
    window: tuple[str, str] | None
    instructions: str
    records: tuple[ParcelRecord, ...]

    @property
    def parcels(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.records)

    @property
    def key(self) -> tuple[float, float, str]:
        """What makes two parcels one stop; also the last tie-break everywhere."""
        return _stop_key(self.lat, self.lon, self.address)


# --- geometry ---------------------------------------------------------------------------------


def route_length_m(
    depot: tuple[float, float], stops: Sequence[Located], *, return_to_depot: bool = True
) -> float:
    """Straight-line length of a round: depot, each stop in order, and back to the depot."""
    points = [depot, *((s.lat, s.lon) for s in stops)]
    if return_to_depot and stops:
        points.append(depot)
    return sum(distance_m(*a, *b) for a, b in pairwise(points))


# --- planning ---------------------------------------------------------------------------------


def plan_routes(
    records: Sequence[ParcelRecord],
    vans: Sequence[str],
    depot: tuple[float, float],
    *,
    capacity: int | None = None,
) -> dict[str, list[PlannedStop]]:
    """Every record on one stop of one van, each van's stops in driving order.

    Every van in ``vans`` has an entry, empty when there are fewer stops than vans.
    """
    if not vans:
        raise RoutingError("no vans to plan for")
    if len(set(vans)) != len(vans):
        raise RoutingError(f"a van is listed twice: {', '.join(vans)}")
    if capacity is not None and capacity < 1:
        raise RoutingError(f"capacity must be at least 1 parcel, got {capacity}")
    stops = group_stops(records)
    swept = _sweep(depot, stops)
    sectors = _cut_sectors(swept, len(vans), capacity)
    return {van: order_stops(depot, sector) for van, sector in zip(vans, sectors, strict=True)}


def group_stops(records: Sequence[ParcelRecord]) -> list[PlannedStop]:
    """Parcels at the same place (about a metre) and address become one stop (step 1)."""
    groups: dict[tuple[float, float, str], list[ParcelRecord]] = {}
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: r.id):
        if record.id in seen:
            raise RoutingError(f"parcel {record.id} is in the records twice")
        seen.add(record.id)
        groups.setdefault(_stop_key(record.lat, record.lon, record.address), []).append(record)
    return [_stop_of(group) for _, group in sorted(groups.items(), key=lambda kv: kv[0])]


def _stop_key(lat: float, lon: float, address: str) -> tuple[float, float, str]:
    return (
        round(lat, STOP_DECIMALS),
        round(lon, STOP_DECIMALS),
        " ".join(address.casefold().split()),
    )


def _distinct(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _stop_of(group: Sequence[ParcelRecord]) -> PlannedStop:
    first = group[0]
    windows = [r.window for r in group if r.window is not None]
    return PlannedStop(
        lat=first.lat,
        lon=first.lon,
        address=first.address,
        recipient="; ".join(_distinct([r.recipient for r in group])),
        window=min(windows, key=lambda w: (w[1], w[0])) if windows else None,
        instructions=" / ".join(_distinct([r.instructions for r in group])),
        records=tuple(group),
    )


def _sweep(depot: tuple[float, float], stops: Sequence[PlannedStop]) -> list[PlannedStop]:
    """Stops by bearing from the depot, starting after the widest empty angle (step 2)."""
    if len(stops) < 2:
        return list(stops)
    placed = sorted(
        (
            (bearing_deg(*depot, s.lat, s.lon), distance_m(*depot, s.lat, s.lon), s.key, s)
            for s in stops
        ),
        key=lambda t: t[:3],
    )
    bearings = [t[0] for t in placed]
    # gaps[i] is the empty angle after placed[i]; the last one wraps round through north.
    gaps = [b - a for a, b in pairwise(bearings)]
    gaps.append(bearings[0] + 360.0 - bearings[-1])
    widest = max(range(len(gaps)), key=lambda i: (gaps[i], -i))
    start = (widest + 1) % len(placed)
    return [t[3] for t in placed[start:] + placed[:start]]


def _vans_needed(counts: Sequence[int], capacity: int) -> int:
    """Contiguous vans a run of stops needs when each van is filled up (the fewest possible)."""
    vans, load = 0, capacity
    for n in counts:
        if load + n > capacity:
            vans, load = vans + 1, 0
        load += n
    return vans


def _cut_sectors(
    stops: Sequence[PlannedStop], vans: int, capacity: int | None
) -> list[list[PlannedStop]]:
    counts = [len(s.records) for s in stops]
    if capacity is not None:
        too_big = [s for s in stops if len(s.records) > capacity]
        if too_big:
            s = too_big[0]
            raise RoutingError(
                f"the stop at {s.address!r} has {len(s.records)} parcels, more than a van's "
                f"capacity of {capacity}"
            )
        needed = _vans_needed(counts, capacity)
        if needed > vans:
            raise RoutingError(
                f"{sum(counts)} parcels need {needed} vans of {capacity} parcels in sweep "
                f"order; {vans} given"
            )
    sectors: list[list[PlannedStop]] = []
    i = 0
    for j in range(vans):
        left_vans = vans - j
        target = math.ceil((len(stops) - i) / left_vans)
        room = math.inf if capacity is None else capacity
        take, load = 0, 0
        while i + take < len(stops) and take < target and load + counts[i + take] <= room:
            load += counts[i + take]
            take += 1
        if capacity is not None:
            # Take more when the vans after this one could not carry the rest otherwise.
            while (
                i + take < len(stops)
                and _vans_needed(counts[i + take :], capacity) > left_vans - 1
                and load + counts[i + take] <= room
            ):
                load += counts[i + take]
                take += 1
        sectors.append(list(stops[i : i + take]))
        i += take
    if i != len(stops):  # pragma: no cover - the feasibility check above rules this out
        raise RoutingError(f"{len(stops) - i} stops left without a van")
    return sectors


def order_stops(
    depot: tuple[float, float], stops: Sequence[PlannedStop], *, improve: bool = True
) -> list[PlannedStop]:
    """A van's stops in driving order: nearest neighbour, then 2-opt unless ``improve`` is off."""
    if not stops:
        return []
    ordered = sorted(stops, key=lambda s: s.key)
    points = [depot, *((s.lat, s.lon) for s in ordered)]
    dist = [[distance_m(*a, *b) for b in points] for a in points]
    round_ = _nearest_neighbour(dist, ordered)
    if improve:
        round_ = _two_opt(dist, round_)
    return [ordered[k - 1] for k in round_]


def _nearest_neighbour(dist: Sequence[Sequence[float]], stops: Sequence[PlannedStop]) -> list[int]:
    """Indices into ``dist`` (1-based stops; 0 is the depot) in nearest-neighbour order."""
    left = set(range(1, len(stops) + 1))
    here, round_ = 0, []
    while left:
        nearest = min(dist[here][k] for k in left)
        tied = [k for k in left if dist[here][k] <= nearest + TIE_M]
        here = min(tied, key=lambda k: (_window_end(stops[k - 1]), dist[here][k], k))
        round_.append(here)
        left.remove(here)
    return round_


def _window_end(stop: PlannedStop) -> str:
    return stop.window[1] if stop.window else _NO_WINDOW_END


def _two_opt(dist: Sequence[Sequence[float]], round_: list[int]) -> list[int]:
    """First-improvement 2-opt on the closed round depot → stops → depot (step 3)."""
    tour = [0, *round_, 0]
    n = len(tour)
    for _ in range(MAX_2OPT_PASSES):
        improved = False
        for i in range(1, n - 2):
            for j in range(i + 1, n - 1):
                a, b, c, d = tour[i - 1], tour[i], tour[j], tour[j + 1]
                gain = dist[a][b] + dist[c][d] - dist[a][c] - dist[b][d]
                if gain > MIN_GAIN_M:
                    tour[i : j + 1] = reversed(tour[i : j + 1])
                    improved = True
        if not improved:
            break
    return tour[1:-1]


def nearest_round(
    place: tuple[float, float],
    rounds: Mapping[str, Sequence[Located]],
    depot: tuple[float, float],
) -> str | None:
    """The van whose round passes nearest `place` (step 5); None when there are no rounds."""

    def reach(van: str) -> tuple[float, str]:
        points = [depot, *((s.lat, s.lon) for s in rounds[van])]
        return min(distance_m(*place, *p) for p in points), van

    return min(rounds, key=reach) if rounds else None


# --- the manifest -----------------------------------------------------------------------------


def build_manifest(
    van: str,
    version: int,
    day: str,
    stops: Sequence[PlannedStop],
    *,
    depot: tuple[float, float],
    issued_at: float,
) -> Manifest:
    """The manifest a van runs: ``stops`` numbered 1..n in the order given.

    The result is checked by reading it back as the van will (``Manifest.from_doc``), so a
    manifest the van would refuse fails here, at the depot, instead.
    """
    if version < 1:
        raise RoutingError(f"manifest version must be at least 1, got {version}")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise RoutingError(f"day must be YYYY-MM-DD, got {day!r}") from None
    manifest = Manifest(
        van=van,
        version=version,
        day=day,
        stops=tuple(
            Stop(
                stop=number,
                kind="address",
                lat=s.lat,
                lon=s.lon,
                parcels=s.parcels,
                address=s.address,
                recipient=s.recipient,
                window=s.window,
                instructions=s.instructions,
            )
            for number, s in enumerate(stops, start=1)
        ),
        issued_at=issued_at,
        depot=depot,
    )
    return Manifest.from_doc(manifest.to_doc())
