"""The console's Today page: how the depot's day is going, in numbers and small charts.

An operator keeps this page open all day, so it answers at a glance, and every figure on it
has one definition, stated here and counted by the database (`depot.store.dashboard`):

- **Today** is the depot's current day by its own clock (`WebDepot.clock`, which a simulated
  day runs fast), midnight to midnight UTC: the depot's settings name no time zone, and the
  manifests' delivery windows are read as UTC too (`depot.eta`). A timeline entry is today's
  by its time (the device's synchronised clock, else the depot's receipt).
- **Parcels by state**: every parcel in the book now, whatever day it arrived.
- **Attempted today**: parcels with a door outcome today: delivered, a failed attempt, or a
  redirect to a locker.
- **Delivered today**: parcels delivered now whose delivery is timed today.
- **First-attempt success**: delivered today without any failed attempt before (the book's
  `attempts` counts failed attempts), out of attempted today. A redirect to a locker is not a
  delivery at the door: it counts as attempted, not as a success.
- **Inside their window**: delivered today at a minute of the day within the parcel's window
  (start <= minute < end, to the minute), out of delivered today with a window; parcels
  without a window are counted apart.
- **Failure reasons**: parcels with a failed attempt today, by the reason of their latest
  failed attempt (a parcel that failed twice today counts once).
- **By the hour**: the vans' door steps today (deliveries, failed attempts, redirects), by the
  hour they happened; a parcel that failed twice counts twice.
- **Refused at the door / broke a preference**: a van's `outcome_refused` entries timed
  today, and the `preference_violated` alarms raised today (`depot.outcomes`).
- **Webhooks**: rows of the outbox waiting to be sent (and how long the oldest has waited),
  and dead letters, whatever day they died: both need a look until dealt with.
- **Open alarms**: alarms nobody has acknowledged, by kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from depot.outcomes import outcome_counts
from depot.store import alarms, book, dashboard, outbox
from depot.tracking import STATES
from depot.web.api import counters, health_doc, reader
from depot.web.auth import Session
from depot.web.console import page
from depot.web.context import WebDepot

HOUR_STEPS = (("delivered", "delivered"), ("attempted", "failed"), ("redirected", "redirected"))


def window_minutes(stored: str | None) -> tuple[int, int] | None:
    """A parcel's window as stored (JSON `["09:00", "12:00"]`) in minutes of the day; None
    without one or when it cannot be read."""
    if not stored:
        return None
    try:
        start, end = json.loads(stored)
        bounds = []
        for text in (start, end):
            hours, minutes = str(text).split(":")[:2]
            bounds.append(int(hours) * 60 + int(minutes))
    except (ValueError, TypeError):
        return None
    return bounds[0], bounds[1]


def in_window(rows: Sequence[tuple[str | None, int, int]]) -> dict[str, int]:
    """{"inside", "outside", "no_window"}: parcels delivered today, judged against their
    windows, from `dashboard.delivered_minutes`."""
    found = {"inside": 0, "outside": 0, "no_window": 0}
    for stored, minute, n in rows:
        window = window_minutes(stored)
        if window is None:
            found["no_window"] += n
        elif window[0] <= minute < window[1]:
            found["inside"] += n
        else:
            found["outside"] += n
    return found


def share(part: int, whole: int) -> float | None:
    """`part` of `whole` in percent, None (shown as a dash) when there is no whole."""
    return None if whole <= 0 else round(100.0 * part / whole, 1)


def _hours(by_hour: Mapping[int, Mapping[str, int]]) -> list[dict[str, Any]]:
    """Twenty-four columns for the chart, each with its steps stacked."""
    top = max((sum(h.values()) for h in by_hour.values()), default=0) or 1
    columns = []
    for hour in range(24):
        steps = by_hour.get(hour, {})
        bottom = 0.0
        parts = []
        for step, label in HOUR_STEPS:
            n = steps.get(step, 0)
            height = 100.0 * n / top
            parts.append(
                {
                    "label": label,
                    "n": n,
                    "y": round(100.0 - bottom - height, 2),
                    "h": round(height, 2),
                }
            )
            bottom += height
        columns.append({"hour": hour, "total": sum(steps.values()), "parts": parts})
    return columns


def _build(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    now = depot.clock.wall_ns()
    start, end = dashboard.day_span(now)
    with reader(depot.book.database) as conn:
        counted = {str(s): int(n) for s, n in book.state_counts(conn)}
        done = dashboard.outcomes(conn, start, end)
        window = in_window(dashboard.delivered_minutes(conn, start, end))
        reasons = dashboard.failure_reasons(conn, start, end)
        by_hour = dashboard.outcomes_by_hour(conn, start, end)
        hooks = outbox.counts(conn)
        oldest = outbox.oldest_pending_ns(conn)
        alarm_kinds = dashboard.open_alarm_kinds(conn)
        alarms_open = alarms.open_count(conn)
        door = outcome_counts(conn, counters=counters(depot), start_ns=start, end_ns=end)
    by_state = [(s, counted.get(s, 0)) for s in STATES]
    by_state += sorted((s, n) for s, n in counted.items() if s not in STATES)
    with_window = window["inside"] + window["outside"]
    return {
        "day": datetime.fromtimestamp(start / 1e9, UTC).strftime("%A %d %B %Y"),
        "now": datetime.fromtimestamp(now / 1e9, UTC).strftime("%H:%M UTC"),
        "parcels": sum(counted.values()),
        "by_state": by_state,
        "state_top": max(counted.values(), default=0) or 1,
        "outcomes": done,
        "first_time_pct": share(done.first_time, done.attempted),
        "window": window,
        "with_window": with_window,
        "in_window_pct": share(window["inside"], with_window),
        "reasons": reasons,
        "reason_top": max((n for _, n in reasons), default=0) or 1,
        "hours": _hours(by_hour),
        "webhooks": hooks,
        "oldest_pending_min": None if oldest is None else max(0, (now - oldest) // 60 // 10**9),
        "alarm_kinds": alarm_kinds,
        "alarm_top": max((n for _, n in alarm_kinds), default=0) or 1,
        "alarms_open": alarms_open,
        "door": door,
        "health": health_doc(depot),
    }


def routes() -> list[BaseRoute]:
    return [Route("/console", page("today", "today.html", _build), methods=["GET"])]
