"""The console's Fleet page: every van and locker, how each van's round is going, and a map.

The operator's question is "is everything out there alive, and where are the vans?": each
device's link state, when it was last heard of, the software version it runs (a fleet's update
system installs versions; this page tells which device runs what) and what it still has to send
(`depot.web.api.devices`, the same facts as `GET /devices`); each van's round from the
depot's ETA model (`depot.eta.van_progress`: stops done of its manifest's stops, the stop the
van last said it reached, its last position); and a map drawn here, without any map service
(`depot.web.mapsvg`), of the depot, the locker sites, the stops of the rounds being run and
each van's last position.

Which devices are vans: the depot's settings' vans (`WebDepot.sites`), those that ran a
manifest (`vans` table) and those that sent a position; the lockers are the settings' locker
sites; any other device heard of is listed with the lockers. A van or locker of the settings
the depot never heard from is listed as such: a missing device is news too.

A stop's dot is done or pending by the rule that counts the van's stops done, which
`depot.eta.van_progress` owns (`VanProgress.pending_stops`, with the manifest it read). The
rounds drawn are each van's current manifest when it is of today (the depot's clock, UTC) or
still has stops pending.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from depot.eta import VanProgress, van_progress
from depot.store import book, dashboard, positions
from depot.web import mapsvg
from depot.web.api import devices, reader
from depot.web.auth import Session
from depot.web.console import page
from depot.web.context import WebDepot
from parcel.manifest import Manifest


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _when(iso: str | None) -> str | None:
    """An ISO time as people read it at a glance, to the second ("2026-11-18 09:40:05")."""
    return None if iso is None else iso[:19].replace("T", " ")


def _stops(
    manifest: Manifest, pending_stops: frozenset[int]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int | None]:
    """The round's stops as (done, pending) points, and its first pending stop."""
    done: list[tuple[float, float]] = []
    pending: list[tuple[float, float]] = []
    first_pending = None
    for s in manifest.stops:
        open_ = s.stop in pending_stops
        (pending if open_ else done).append((s.lat, s.lon))
        if open_ and first_pending is None:
            first_pending = s.stop
    return done, pending, first_pending


def _van_row(
    van: str,
    seen: Mapping[str, Any] | None,
    progress: VanProgress,
    manifest: Manifest | None,
    next_stop: int | None,
) -> dict[str, Any]:
    current = progress.current_stop
    at = current if current is not None else next_stop
    where = ""
    if manifest is not None and at is not None and 1 <= at <= len(manifest.stops):
        where = manifest.stop(at).address
    total = progress.stops_total
    return {
        "device": van,
        "state": seen["state"] if seen else "never heard from",
        "last_seen": _when(seen["last_seen"]) if seen else None,
        "software": seen["software"] if seen else None,
        "backlog": seen["backlog"] if seen else None,
        "alarms_open": seen["alarms_open"] if seen else 0,
        "day": progress.day,
        "stops_done": progress.stops_done,
        "stops_total": total,
        "pct": round(100.0 * progress.stops_done / total, 1) if total else 0.0,
        "current_stop": current,
        "next_stop": next_stop if current is None else None,
        "stop_address": where,
        "position_age": _age(progress.position_age_s) if progress.position else None,
    }


def _build(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    now = depot.clock.wall_ns()
    start, _ = dashboard.day_span(now)
    today = datetime.fromtimestamp(start / 1e9, UTC).date().isoformat()
    sites = depot.sites
    with reader(depot.book.database) as conn:
        heard = {d["device"]: d for d in devices(conn)}
        last_positions = positions.latest(conn)
        vans = sorted(
            set(sites.vans) | {str(r[0]) for r in book.van_manifests(conn)} | set(last_positions)
        )
        progress = {v: van_progress(conn, v, now) for v in vans}
    manifests = {v: progress[v].manifest for v in vans}

    van_rows, rounds = [], []
    for van in vans:
        manifest = manifests[van]
        next_stop = None
        if manifest is not None:
            done, pending, next_stop = _stops(manifest, progress[van].pending_stops)
            if manifest.day == today or pending:
                rounds.append(mapsvg.VanStops(van, done, pending))
        van_rows.append(_van_row(van, heard.get(van), progress[van], manifest, next_stop))

    lockers = {site.name: site for site in sites.lockers}
    locker_rows = []
    for name in sorted(set(lockers) | (set(heard) - set(vans))):
        seen, site = heard.get(name), lockers.get(name)
        locker_rows.append(
            {
                "device": name,
                "kind": "locker" if site is not None else "device",
                "title": (site.title or site.address) if site is not None else "",
                "state": seen["state"] if seen else "never heard from",
                "last_seen": _when(seen["last_seen"]) if seen else None,
                "software": seen["software"] if seen else None,
                "backlog": seen["backlog"] if seen else None,
                "alarms_open": seen["alarms_open"] if seen else 0,
            }
        )

    places: list[mapsvg.Place] = []
    depot_at = sites.depot or next(
        (m.depot for m in manifests.values() if m is not None and m.depot), None
    )
    if depot_at is not None:
        places.append(mapsvg.Place("depot", "depot", depot_at[0], depot_at[1], "the depot"))
    for site in sites.lockers:
        title = ", ".join(t for t in (site.title, site.address) if t)
        places.append(mapsvg.Place("locker", site.name, site.lat, site.lon, title))
    for van in vans:
        where = progress[van].position
        if where is not None:
            age = _age(progress[van].position_age_s)
            places.append(mapsvg.Place("van", van, where.lat, where.lon, f"{van}, {age}"))
    return {
        "today": today,
        "vans": van_rows,
        "lockers": locker_rows,
        "online": sum(1 for d in heard.values() if d["state"] == "online"),
        "devices": len(heard),
        "map": mapsvg.layout(places, rounds),
    }


def routes() -> list[BaseRoute]:
    return [Route("/console/fleet", page("fleet", "fleet.html", _build), methods=["GET"])]
