"""`bench route`: how good and how fast the depot's day plan is.

What is measured: a seeded town of parcels (default 400 for 4 vans, the reference's 80-120
stops a van, some addresses shared) is planned by `depot.routing.plan_routes` (sweep into
sectors, nearest neighbour, 2-opt). For the same sectors the bench also orders each van's
stops by nearest neighbour alone and in the order the import listed them, the baselines a
dispatcher would otherwise get. Figures: total straight-line kilometres of the vans' rounds
(depot → stops → depot) for each, their ratios, and the planning time (median of `--repeat`).

Why: a round that is 15 % shorter is an hour of a courier's day; and planning runs at the
depot before the vans leave, so it must take seconds, not minutes, for a realistic day.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench.rig import host_facts, rounded
from depot.imports import ParcelRecord
from depot.routing import order_stops, plan_routes, route_length_m

DEPOT = (52.3676, 4.9041)
RADIUS_M = 8000.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parcels", type=int, default=400, help="parcels in the day (default 400)")
    p.add_argument("--vans", type=int, default=4, help="vans (default 4)")
    p.add_argument("--seed", type=int, default=1, help="seed of the town (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="plans timed (default 5)")
    p.add_argument("--dir", type=Path, default=None, help="accepted for symmetry; writes nothing")


def _s10(serial: int) -> str:
    digits = f"{serial:08d}"
    c = 11 - sum(int(d) * w for d, w in zip(digits, (8, 6, 4, 2, 3, 5, 9, 7), strict=True)) % 11
    return f"RR{digits}{ {10: 0, 11: 5}.get(c, c)}NL"


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
            )
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    records = town(args.parcels, args.seed)
    vans = [f"van-{i + 1}" for i in range(args.vans)]
    timings = []
    plan: dict[str, Any] = {}
    for _ in range(max(1, args.repeat)):
        started = time.perf_counter()
        plan = plan_routes(records, vans, DEPOT)
        timings.append(time.perf_counter() - started)
    improved = listed = nearest = 0.0
    order_of = {r.id: i for i, r in enumerate(records)}
    for stops in plan.values():
        improved += route_length_m(DEPOT, stops)
        nearest += route_length_m(DEPOT, order_stops(DEPOT, stops, improve=False))
        as_listed = sorted(stops, key=lambda s: min(order_of[p] for p in s.parcels))
        listed += route_length_m(DEPOT, as_listed)
    stops_per_van = [len(s) for s in plan.values()]
    return {
        "benchmark": "route",
        "parcels": args.parcels,
        "vans": args.vans,
        "stops_per_van": stops_per_van,
        "plan_ms_median": rounded(statistics.median(timings) * 1000, 1),
        "km_planned": rounded(improved / 1000, 2),
        "km_nearest_neighbour_only": rounded(nearest / 1000, 2),
        "km_import_order": rounded(listed / 1000, 2),
        "ratio_planned_vs_nearest_neighbour": rounded(improved / nearest, 3),
        "ratio_planned_vs_import_order": rounded(improved / listed, 3),
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"route: {r['parcels']} parcels, {r['vans']} vans ({r['stops_per_van']} stops): planned "
        f"{r['km_planned']} km in {r['plan_ms_median']} ms; nearest neighbour alone "
        f"{r['km_nearest_neighbour_only']} km (x{r['ratio_planned_vs_nearest_neighbour']}), "
        f"import order {r['km_import_order']} km (x{r['ratio_planned_vs_import_order']})"
    )
