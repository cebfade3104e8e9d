"""Route planning: which vehicle takes which parcels, in which order it drives to them, and
which parcels wait for another day because no vehicle has the room or the time.

Owns a simple, documented, deterministic heuristic and the manifest it produces. It is *not* a
vehicle-routing solver: it knows straight-line distances only (no roads or traffic), estimates
a round's hours from them, a speed and a time per stop (`depot.vehicles`), and gives no
guarantee that a time window is met.

The heuristic, step by step:

1. **Stops.** Parcels whose coordinates agree to 5 decimal places (about a metre) and whose
   addresses agree (ignoring case and runs of spaces) are one stop. A stop's position and
   address are those of its first parcel in parcel-id order; its recipients and instructions
   are the distinct ones joined (``"; "`` and ``" / "``); its window is the one of its parcels
   that ends first (then starts first), the strictest promise made at that door. Its parcels
   are listed in parcel-id order.
2. **Vehicles: a polar sweep.** Stops are sorted by their bearing from the depot (then
   distance, then position and address). The sweep starts just after the widest empty angle
   around the depot, so no vehicle's sector straddles a natural gap (a river, an empty
   quarter), and is cut into contiguous sectors, one per vehicle in the order given, sized in
   stops by each vehicle's capacity in parcels (a cargo bike of 40 gets about a quarter of a
   150-parcel van's share; equal shares, stop counts differing by at most one, the first
   vehicles getting the extra, when any vehicle has no limit). Balance is by stops, not
   parcels or distance. Limits are then kept by step 6.
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

6. **Limits: what waits for another day** (`depot.vehicles`: parcels, kilograms, litres,
   the heaviest parcel one courier lifts, and the shift: straight-line km / speed + stops x
   stop time, the leg back included). Only whole stops move or wait, and nothing is dropped:
   every parcel is on one stop or in :attr:`RoutePlan.deferred` with its reason
   (:data:`DEFERRAL_REASONS`).

   a. Before the sweep, what no vehicle can do waits: a parcel heavier than every vehicle's
      courier may lift (``too_heavy_for_any_vehicle``) or bulkier than every vehicle
      (``too_big_for_any_vehicle``), a door no shift reaches and comes back from
      (``too_far_for_any_shift``). A door with more than any vehicle holds is the one stop
      split across days: what fits the roomiest vehicle goes, the rest waits
      (``stop_too_big``).
   b. In its sector, a vehicle gives up the stops it cannot serve alone (a heavy parcel in a
      cargo bike's sector), then, while its ordered round is over its load or its shift, the
      stop that waited least and lies farthest from the depot: the farthest stops cost the
      most time, and a far door gets the same promise tomorrow.
   c. Every given-up stop (those that waited longest first, then the nearest) goes to the
      round where it adds the fewest hours (cheapest insertion, then 2-opt) among the
      vehicles that carry it within load and shift, any sector. A stop no round takes waits:
      ``vehicle_full`` when every vehicle that could carry it is full, else ``shift_full``.
   d. ``waited`` (times a parcel already waited or failed) ranks before distance in b and c,
      so a parcel left behind today is among the first planned tomorrow.

   Not modelled: time windows against the shift, breaks, loading time, collections (step
   5 adds them after the limits) and road distances (the speed is set for straight lines).

Determinism: the same records, vans and depot give the same plan, whatever the order of the
records; every tie is broken on values, never on set or dict iteration order.

Must never: drop or duplicate a parcel (every record is on exactly one stop of exactly one
vehicle, or deferred with its reason), put a parcel on a vehicle over its limits, talk to the
database or the network, or read a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from depot.errors import DepotError
from depot.vehicles import Load, Vehicle, round_hours
from parcel.geo import bearing_deg, distance_m
from parcel.manifest import Manifest, Stop

if TYPE_CHECKING:
    from depot.imports import ParcelRecord

__all__ = [
    "DEFERRAL_REASONS",
    "MAX_2OPT_PASSES",
    "MIN_GAIN_M",
    "TIE_M",
    "Deferred",
    "Located",
    "PlannedStop",
    "RoutePlan",
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
    def load(self) -> Load:
        return Load.of(self.records)

    @property
    def key(self) -> tuple[float, float, str]:
        """What makes two parcels one stop; also the last tie-break everywhere."""
        return _stop_key(self.lat, self.lon, self.address)


# --- planning ---------------------------------------------------------------------------------

#: Why a parcel waits for another day (`RoutePlan.deferred`), in the operator's words.
DEFERRAL_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "too_heavy_for_any_vehicle": "heavier than any vehicle's courier may carry alone",
        "too_big_for_any_vehicle": "bulkier than any vehicle holds",
        "too_far_for_any_shift": "too far to reach and come back within any courier's shift",
        "stop_too_big": "more for this door than any vehicle holds: the rest on the next round",
        "vehicle_full": "the vehicles that could take it are full today",
        "shift_full": "no round that could take it has the time left today",
    }
)


@dataclass(frozen=True)
class Deferred:
    """A parcel left at the depot for another day, and why (a key of DEFERRAL_REASONS)."""

    parcel: str
    reason: str
    address: str


class RoutePlan(Mapping[str, list[PlannedStop]]):
    """Each vehicle's round (a mapping of vehicle name to its stops in driving order, every
    vehicle present) and the parcels that wait for another day.

    Every record given to :func:`plan_routes` is on exactly one stop of one round or in
    :attr:`deferred`, once."""

    def __init__(
        self,
        rounds: Mapping[str, list[PlannedStop]],
        deferred: Sequence[Deferred],
        vehicles: Sequence[Vehicle],
        depot: tuple[float, float],
    ) -> None:
        self._rounds = dict(rounds)
        self.deferred = tuple(deferred)
        self.vehicles = {v.name: v for v in vehicles}
        self.depot = depot

    def __getitem__(self, van: str) -> list[PlannedStop]:
        return self._rounds[van]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rounds)

    def __len__(self) -> int:
        return len(self._rounds)

    def __repr__(self) -> str:
        return f"RoutePlan({self._rounds!r}, deferred={self.deferred!r})"

    def load(self, van: str) -> Load:
        return Load.of(r for s in self._rounds[van] for r in s.records)

    def hours(self, van: str) -> float:
        return round_hours(self.vehicles[van], self.depot, [(s.lat, s.lon) for s in self[van]])

    def deferred_by_reason(self) -> dict[str, int]:
        """How many parcels wait, per reason (only reasons that occur)."""
        counts: dict[str, int] = {}
        for d in self.deferred:
            counts[d.reason] = counts.get(d.reason, 0) + 1
        return dict(sorted(counts.items()))


def route_length_m(
    depot: tuple[float, float], stops: Sequence[Located], *, return_to_depot: bool = True
) -> float:
    """Straight-line length of a round: depot, each stop in order, and back to the depot."""
    points = [depot, *((s.lat, s.lon) for s in stops)]
    if return_to_depot and stops:
        points.append(depot)
    return sum(distance_m(*a, *b) for a, b in pairwise(points))


def plan_routes(
    records: Sequence[ParcelRecord],
    vans: Sequence[str | Vehicle],
    depot: tuple[float, float],
    *,
    capacity: int | None = None,
    waited: Mapping[str, int] | None = None,
) -> RoutePlan:
    """Every record on one stop of one vehicle or deferred with its reason; each vehicle's
    stops in driving order.

    ``vans`` are :class:`Vehicle` s (limits, shift, speed, stop time) or bare names: a vehicle
    with no limits but ``capacity`` parcels, if given. ``waited`` says how many times a
    parcel has already waited or failed (step 6): such parcels are the last to be left behind.
    Every vehicle has an entry, empty when there are fewer stops than vehicles.
    """
    if not vans:
        raise RoutingError("no vans to plan for")
    names = [v.name if isinstance(v, Vehicle) else v for v in vans]
    if len(set(names)) != len(names):
        raise RoutingError(f"a van is listed twice: {', '.join(names)}")
    if capacity is not None and capacity < 1:
        raise RoutingError(f"capacity must be at least 1 parcel, got {capacity}")
    fleet = [
        v if isinstance(v, Vehicle) else Vehicle(v, parcels=capacity, speed_kmh=25.0)
        for v in vans
    ]
    deferred: list[Deferred] = []
    stops = _doable(depot, group_stops(records), fleet, deferred, waited or {})
    priority = _priorities(stops, waited or {})
    sectors = _cut_sectors(_sweep(depot, stops), fleet)
    rounds: dict[str, list[PlannedStop]] = {}
    given_up: list[PlannedStop] = []
    for vehicle, sector in zip(fleet, sectors, strict=True):
        mine = [s for s in sector if _carries(vehicle, s, depot)]
        given_up += [s for s in sector if not _carries(vehicle, s, depot)]
        round_, dropped = _trim(depot, vehicle, order_stops(depot, mine), priority)
        rounds[vehicle.name] = round_
        given_up += dropped
    _place(depot, given_up, rounds, fleet, priority, deferred)
    return RoutePlan(
        {v.name: rounds[v.name] for v in fleet},
        sorted(deferred, key=lambda d: d.parcel),
        fleet,
        depot,
    )


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


def _carries(vehicle: Vehicle, stop: PlannedStop, depot: tuple[float, float]) -> bool:
    """Whether ``vehicle`` could serve ``stop`` alone: it lifts every parcel, holds them all,
    and drives there and back within its shift."""
    if not all(vehicle.lifts(r) for r in stop.records) or not vehicle.holds(stop.load):
        return False
    return vehicle.within_shift(vehicle.hours(2 * _from(depot, stop), 1))


def _from(depot: tuple[float, float], stop: Located) -> float:
    return distance_m(*depot, stop.lat, stop.lon)


def _doable(
    depot: tuple[float, float],
    stops: Sequence[PlannedStop],
    fleet: Sequence[Vehicle],
    deferred: list[Deferred],
    waited: Mapping[str, int],
) -> list[PlannedStop]:
    """The stops some vehicle can serve on its own (step 6); what none can is deferred: a
    parcel no courier may lift or no vehicle holds, a door too far for every shift. A door
    with more than the roomiest vehicle holds is split: what fits goes (parcels that waited
    longest first, then by id), the rest waits."""
    doable = []
    for stop in stops:
        keep = []
        for r in stop.records:
            if any(v.lifts(r) for v in fleet):
                keep.append(r)
                continue
            heavy = all(not v.lifts_weight(r.weight_kg) for v in fleet)
            reason = "too_heavy_for_any_vehicle" if heavy else "too_big_for_any_vehicle"
            deferred.append(Deferred(r.id, reason, stop.address))
        if not keep:
            continue
        reach = [v for v in fleet if v.within_shift(v.hours(2 * _from(depot, stop), 1))]
        if not reach:
            deferred += [Deferred(r.id, "too_far_for_any_shift", stop.address) for r in keep]
            continue
        part = _stop_of(keep) if len(keep) < len(stop.records) else stop
        if any(_carries(v, part, depot) for v in reach):
            doable.append(part)
            continue
        first = sorted(keep, key=lambda r: (-waited.get(r.id, 0), r.id))
        fits = max((_first_fit(v, first) for v in reach), key=len)
        doable.append(_stop_of(sorted(fits, key=lambda r: r.id)))
        taken = {r.id for r in fits}
        deferred += [
            Deferred(r.id, "stop_too_big", stop.address) for r in keep if r.id not in taken
        ]
    return doable


def _first_fit(vehicle: Vehicle, records: Sequence[ParcelRecord]) -> list[ParcelRecord]:
    load, taken = Load(), []
    for r in records:
        if vehicle.lifts(r) and vehicle.holds(load + Load.of([r])):
            load = load + Load.of([r])
            taken.append(r)
    return taken


def _priorities(
    stops: Sequence[PlannedStop], waited: Mapping[str, int]
) -> dict[tuple[float, float, str], int]:
    """Per stop, the most times one of its parcels already waited or failed."""
    return {s.key: max(waited.get(p, 0) for p in s.parcels) for s in stops}


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


def _cut_sectors(
    stops: Sequence[PlannedStop], fleet: Sequence[Vehicle]
) -> list[list[PlannedStop]]:
    """Contiguous runs of the sweep, one per vehicle in fleet order, sized in stops by the
    vehicle's capacity in parcels (equal when any vehicle has none); the first get the extra."""
    limits = [v.parcels for v in fleet]
    weights = [float(n) for n in limits if n is not None]
    if len(weights) != len(fleet):
        weights = [1.0] * len(fleet)
    sectors: list[list[PlannedStop]] = []
    i = 0
    for j in range(len(fleet)):
        share = weights[j] / sum(weights[j:])
        take = len(stops) - i if j == len(fleet) - 1 else math.ceil((len(stops) - i) * share)
        sectors.append(list(stops[i : i + take]))
        i += take
    return sectors


def _trim(
    depot: tuple[float, float],
    vehicle: Vehicle,
    round_: Sequence[PlannedStop],
    priority: Mapping[tuple[float, float, str], int],
) -> tuple[list[PlannedStop], list[PlannedStop]]:
    """A round within the vehicle's load and shift (step 6): while it is over either, it gives
    up the stop that waited least, farthest from the depot first. Returns the round (2-opt
    again when it lost stops) and the stops given up."""
    kept, dropped = list(round_), []

    def over() -> bool:
        load = Load.of(r for s in kept for r in s.records)
        hours = vehicle.hours(route_length_m(depot, kept), len(kept))
        return not (vehicle.holds(load) and vehicle.within_shift(hours))

    while kept and over():
        worst = min(kept, key=lambda s: (priority[s.key], -_from(depot, s), s.key))
        kept.remove(worst)
        dropped.append(worst)
    return (_improve(depot, kept) if dropped else kept), dropped


def _place(
    depot: tuple[float, float],
    stops: Sequence[PlannedStop],
    rounds: dict[str, list[PlannedStop]],
    fleet: Sequence[Vehicle],
    priority: Mapping[tuple[float, float, str], int],
    deferred: list[Deferred],
) -> None:
    """Stops a sector gave up go to the round they lengthen least in hours, among the vehicles
    that carry them with the load and the shift still within limits (step 6); the ones that
    waited longest, then the nearest the depot, are placed first. A stop no round takes
    waits: `vehicle_full` when every vehicle that could carry it is full, else `shift_full`."""
    touched: set[str] = set()
    for stop in sorted(stops, key=lambda s: (-priority[s.key], _from(depot, s), s.key)):
        best: tuple[float, int, int] | None = None
        room = False
        for index, vehicle in enumerate(fleet):
            round_ = rounds[vehicle.name]
            if not _carries(vehicle, stop, depot):
                continue
            if not vehicle.holds(Load.of(r for s in round_ for r in s.records) + stop.load):
                continue
            room = True
            at, added_m = _cheapest_insertion(depot, round_, stop)
            hours = vehicle.hours(route_length_m(depot, round_) + added_m, len(round_) + 1)
            if vehicle.within_shift(hours):
                cost = vehicle.hours(added_m, 1)
                if best is None or (cost, index) < best[:2]:
                    best = (cost, index, at)
        if best is None:
            reason = "shift_full" if room else "vehicle_full"
            deferred += [Deferred(p, reason, stop.address) for p in stop.parcels]
            continue
        name = fleet[best[1]].name
        rounds[name].insert(best[2], stop)
        touched.add(name)
    for name in touched:
        rounds[name] = _improve(depot, rounds[name])


def _cheapest_insertion(
    depot: tuple[float, float], round_: Sequence[PlannedStop], stop: PlannedStop
) -> tuple[int, float]:
    """Where in ``round_`` the stop adds the fewest metres, and how many (ties: earliest)."""
    points = [depot, *((s.lat, s.lon) for s in round_), depot]
    here = (stop.lat, stop.lon)
    best = (0, math.inf)
    for i, (a, b) in enumerate(pairwise(points)):
        added = distance_m(*a, *here) + distance_m(*here, *b) - distance_m(*a, *b)
        if added < best[1]:
            best = (i, added)
    return best


def _improve(depot: tuple[float, float], stops: Sequence[PlannedStop]) -> list[PlannedStop]:
    """2-opt on a round as it stands (it never lengthens it)."""
    points = [depot, *((s.lat, s.lon) for s in stops)]
    dist = [[distance_m(*a, *b) for b in points] for a in points]
    return [stops[k - 1] for k in _two_opt(dist, list(range(1, len(stops) + 1)))]


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

    Each stop carries its parcels' care (every parcel: its record's, docs/DELIVERY.md
    "Delivery preferences") and its access code (the parcels' distinct codes joined
    ``" / "``, as the instructions are). The result is checked by reading it back as the
    van will (``Manifest.from_doc``), so a manifest the van would refuse fails here, at the
    depot, instead.
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
                care={r.id: r.care for r in s.records},
                access_code=" / ".join(_distinct([r.access_code for r in s.records])),
            )
            for number, s in enumerate(stops, start=1)
        ),
        issued_at=issued_at,
        depot=depot,
    )
    return Manifest.from_doc(manifest.to_doc())
