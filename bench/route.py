"""`bench route`: how good and how fast the depot's day plan is, within each vehicle's limits.

What is measured: a seeded town of parcels (default 400, the reference's 80-120 stops a van,
some addresses shared; each parcel with a weight and a size, a few too heavy for a cargo
bike's courier) is planned by `depot.routing.plan_routes` for a mixed fleet (default 3 vans
and 1 cargo bike with `depot.vehicles`' defaults): sweep into sectors sized by capacity,
nearest neighbour, 2-opt, then each round kept within its load and shift, what fits nowhere
deferred with its reason. For the same rounds the bench also orders each vehicle's stops by
nearest neighbour alone and in the order the import listed them, the baselines a dispatcher
would otherwise get. Figures: per vehicle the load (parcels, kg, litres against its capacity)
and the planned hours against its shift; the deferred parcels by reason; the total
straight-line kilometres of the rounds (depot → stops → depot) for ours and each baseline,
their ratios, the baselines' rounds that would overrun a shift; and the planning time (median
of `--repeat`).

Targets (`targets_met`, judged on this run, never asserted): ours no longer than nearest
neighbour alone and shorter than the import's order, planned in under 10 s, and every round
within its limits (`capacity_respected`, `shift_respected`) and every parcel on one stop or
deferred (`nothing_dropped`). The limits are checked here, from the records on each round
and the bench's own arithmetic of the hours, not taken from the planner's word.

Why: a round that is 15 % shorter is an hour of a courier's day; a round over its van's load
or its courier's shift is a plan the depot cannot run; and planning runs at the depot before
the vehicles leave, so it must take seconds, not minutes, for a realistic day.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.rig import BenchError, host_facts, rounded
from depot.imports import ParcelRecord
from depot.routing import PlannedStop, RoutePlan, order_stops, plan_routes, route_length_m
from depot.vehicles import Vehicle

DEPOT = (52.3676, 4.9041)
RADIUS_M = 8000.0
PLAN_TARGET_S = 10.0
#: Share of parcels by locker size, and the litres a parcel of each size takes when its
#: merchant gives a volume (else the import's default for the size).
SIZES = (("S", 0.6, (2.0, 19.0)), ("M", 0.3, (19.0, 46.0)), ("L", 0.1, (46.0, 100.0)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parcels", type=int, default=400, help="parcels in the day (default 400)")
    p.add_argument("--vans", type=int, default=3, help="vans (default 3)")
    p.add_argument("--bikes", type=int, default=1, help="cargo bikes (default 1)")
    p.add_argument("--walkers", type=int, default=0, help="couriers on foot (default 0)")
    p.add_argument("--seed", type=int, default=1, help="seed of the town (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="plans timed (default 5)")
    p.add_argument("--dir", type=Path, default=None, help="accepted for symmetry; writes nothing")


def _s10(serial: int) -> str:
    digits = f"{serial:08d}"
    c = 11 - sum(int(d) * w for d, w in zip(digits, (8, 6, 4, 2, 3, 5, 9, 7), strict=True)) % 11
    return f"RR{digits}{ {10: 0, 11: 5}.get(c, c)}NL"


def _weight(rng: random.Random) -> float:
    """Most parcels are light; about 1 in 8 weighs 5-20 kg and 1 in 30 is 20-35 kg (over a
    cargo bike courier's 25 kg for some)."""
    roll = rng.random()
    if roll < 0.033:
        return round(rng.uniform(20.0, 35.0), 1)
    if roll < 0.16:
        return round(rng.uniform(5.0, 20.0), 1)
    return round(min(5.0, rng.lognormvariate(0.2, 0.7)), 2)


def town(parcels: int, seed: int) -> list[ParcelRecord]:
    rng = random.Random(seed)
    out: list[ParcelRecord] = []
    places: list[tuple[float, float, str]] = []
    for i in range(parcels):
        if places and rng.random() < 0.08:
            lat, lon, address = rng.choice(places)
        else:
            r, b = RADIUS_M * math.sqrt(rng.random()), math.radians(rng.uniform(0, 360))
            lat = DEPOT[0] + r * math.cos(b) / 111_320.0
            lon = DEPOT[1] + r * math.sin(b) / (111_320.0 * math.cos(math.radians(DEPOT[0])))
            address = f"Street {i}"
            places.append((lat, lon, address))
        size, litres = _size(rng)
        pid = _s10(10_000_000 + i)
        out.append(
            ParcelRecord(
                id=pid,
                raw=pid,
                kind="s10",
                recipient=f"R {i}",
                address=address,
                lat=lat,
                lon=lon,
                merchant="shop",
                webhook="https://merchant.example/hook",
                size=size,
                weight_kg=_weight(rng),
                volume_l=litres,
            )
        )
    return out


def _size(rng: random.Random) -> tuple[str, float | None]:
    """A locker size by its share, and its litres for 7 parcels in 10 (the rest: the
    import's default for the size)."""
    roll = rng.random()
    shares = [share for _, share, _ in SIZES]
    pick = next((i for i in range(len(SIZES)) if roll < sum(shares[: i + 1])), len(SIZES) - 1)
    size, _, (low, high) = SIZES[pick]
    return size, (round(rng.uniform(low, high), 1) if rng.random() < 0.7 else None)


def fleet(vans: int, bikes: int, walkers: int) -> list[Vehicle]:
    out = [Vehicle.of_type(f"van-{i + 1}", "van") for i in range(vans)]
    out += [Vehicle.of_type(f"bike-{i + 1}", "cargo_bike") for i in range(bikes)]
    out += [Vehicle.of_type(f"walker-{i + 1}", "on_foot") for i in range(walkers)]
    return out


def _hours(v: Vehicle, stops: Sequence[PlannedStop]) -> float:
    """The round's hours by the bench's own arithmetic (the docs' formula)."""
    km = route_length_m(DEPOT, stops) / 1000.0
    return km / v.speed_kmh + len(stops) * v.stop_min / 60.0


def _round_figures(v: Vehicle, stops: Sequence[PlannedStop]) -> dict[str, Any]:
    records = [r for s in stops for r in s.records]
    kg = sum(r.weight_kg for r in records)
    litres = sum(r.volume for r in records)
    hours = _hours(v, stops)
    heaviest = max((r.weight_kg for r in records), default=0.0)
    lift = v.parcel_kg if v.parcel_kg is not None else v.weight_kg
    within = (
        (v.parcels is None or len(records) <= v.parcels)
        and (v.weight_kg is None or kg <= v.weight_kg + 1e-6)
        and (v.volume_l is None or litres <= v.volume_l + 1e-6)
        and (lift is None or heaviest <= lift + 1e-6)
    )
    return {
        "type": v.type,
        "stops": len(stops),
        "parcels": len(records),
        "parcels_max": v.parcels,
        "kg": rounded(kg, 1),
        "kg_max": v.weight_kg,
        "litres": rounded(litres, 1),
        "litres_max": v.volume_l,
        "heaviest_parcel_kg": rounded(heaviest, 1),
        "parcel_kg_max": lift,
        "km": rounded(route_length_m(DEPOT, stops) / 1000.0, 2),
        "hours": rounded(hours, 2),
        "shift_h": v.shift_h,
        "within_load": within,
        "within_shift": v.shift_h is None or hours <= v.shift_h + 1e-9,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.parcels < 1 or min(args.vans, args.bikes, args.walkers) < 0:
        raise BenchError("--parcels must be 1 or more, and the fleet counts 0 or more")
    vehicles = fleet(args.vans, args.bikes, args.walkers)
    if not vehicles:
        raise BenchError("no vehicles: give --vans, --bikes or --walkers")
    records = town(args.parcels, args.seed)
    timings = []
    plan: RoutePlan | None = None
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        plan = plan_routes(records, vehicles, DEPOT)
        timings.append(time.perf_counter() - started)
    assert plan is not None
    improved = listed = nearest = 0.0
    over_shift = {"nearest_neighbour_only": 0, "import_order": 0}
    order_of = {r.id: i for i, r in enumerate(records)}
    rounds = {}
    for v in vehicles:
        stops = plan[v.name]
        rounds[v.name] = _round_figures(v, stops)
        greedy = order_stops(DEPOT, stops, improve=False)
        as_listed = sorted(stops, key=lambda s: min(order_of[p] for p in s.parcels))
        improved += route_length_m(DEPOT, stops)
        nearest += route_length_m(DEPOT, greedy)
        listed += route_length_m(DEPOT, as_listed)
        for name, order in (("nearest_neighbour_only", greedy), ("import_order", as_listed)):
            over_shift[name] += v.shift_h is not None and _hours(v, order) > v.shift_h
    placed = Counter([p for v in vehicles for s in plan[v.name] for p in s.parcels])
    placed.update(d.parcel for d in plan.deferred)
    median_s = statistics.median(timings)
    targets = {
        "not_longer_than_nearest_neighbour": improved <= nearest + 1e-6,
        "shorter_than_import_order": improved < listed,
        f"plan_under_{PLAN_TARGET_S:g}s": median_s < PLAN_TARGET_S,
        "capacity_respected": all(r["within_load"] for r in rounds.values()),
        "shift_respected": all(r["within_shift"] for r in rounds.values()),
        "nothing_dropped": set(placed) == set(order_of) and set(placed.values()) <= {1},
    }
    return {
        "benchmark": "route",
        "parcels": args.parcels,
        "vans": args.vans,
        "fleet": {"van": args.vans, "cargo_bike": args.bikes, "on_foot": args.walkers},
        "stops_per_van": [len(plan[v.name]) for v in vehicles],
        "rounds": rounds,
        "parcels_planned": sum(r["parcels"] for r in rounds.values()),
        "parcels_deferred": len(plan.deferred),
        "deferred_by_reason": plan.deferred_by_reason(),
        "plan_ms_median": rounded(median_s * 1000, 1),
        "km_planned": rounded(improved / 1000, 2),
        "km_nearest_neighbour_only": rounded(nearest / 1000, 2),
        "km_import_order": rounded(listed / 1000, 2),
        "ratio_planned_vs_nearest_neighbour": rounded(improved / nearest, 3) if nearest else None,
        "ratio_planned_vs_import_order": rounded(improved / listed, 3) if listed else None,
        "baseline_rounds_over_shift": over_shift,
        "targets_met": {**targets, "all": all(targets.values())},
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    loads = "; ".join(
        f"{name} {f['parcels']}/{f['parcels_max']} parcels {f['kg']}/{f['kg_max']} kg "
        f"{f['litres']}/{f['litres_max']} l {f['hours']}/{f['shift_h']} h"
        for name, f in r["rounds"].items()
    )
    deferred = ", ".join(f"{n} {why}" for why, n in r["deferred_by_reason"].items()) or "none"
    met = r["targets_met"]
    return (
        f"route: {r['parcels']} parcels, {r['fleet']}: planned {r['km_planned']} km in "
        f"{r['plan_ms_median']} ms; nearest neighbour alone {r['km_nearest_neighbour_only']} km "
        f"(x{r['ratio_planned_vs_nearest_neighbour']}), import order {r['km_import_order']} km "
        f"(x{r['ratio_planned_vs_import_order']}); rounds: {loads}; deferred: {deferred}; "
        f"targets {'met' if met['all'] else 'NOT met: ' + str(met)}"
    )
