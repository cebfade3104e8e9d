"""The console's aggregates: how the depot's day is going, counted by the database.

Read-only queries behind the console's Today and Fleet pages (`depot.web.pages`). Each is one
SQL aggregate over the parcel book (`parcels`, `timeline`), so a page costs the same few
queries with ten parcels or ten thousand, and answers only numbers, never a row per parcel.
The tables' writers stay their owners (`depot.store.book`, `outbox`, `alarms`); what those
modules already count (`book.state_counts`, `outbox.counts`) is read through them, not here.

"Today" is a half-open span of the depot's clock, `[start_ns, end_ns)`, chosen by the caller
(`day_span`): a timeline entry belongs to it by its `at_ns` (the device's synchronised clock,
else the depot's receipt time, as the book records it).

Portable SQL: integer division of BIGINT by an integer literal truncates on both engines, and
the spans are never negative, so `(at_ns - start) / 60000000000` is the minute of the day on
SQLite and on PostgreSQL alike; grouping is by position (`GROUP BY 1, 2`) because PostgreSQL
will not match a grouped expression that holds a placeholder.

Must never: write anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from depot.store.base import Conn

__all__ = [
    "DAY_NS",
    "Outcomes",
    "day_span",
    "delivered_minutes",
    "failure_reasons",
    "open_alarm_kinds",
    "outcomes",
    "outcomes_by_hour",
]

DAY_NS = 86_400 * 10**9
MINUTE_NS = 60 * 10**9
HOUR_NS = 3600 * 10**9

# What happened at a door: the van's delivery, its failed attempt, its redirect to a locker.
_DOOR_STEPS = "('delivered', 'attempted', 'redirected')"

# One row per parcel with a door outcome in the span: when it was first delivered in it (the
# parcel's `delivered` entry), whether it failed and whether it was redirected in it.
_TODAY_OUTCOMES = (
    "SELECT parcel, min(CASE WHEN step = 'delivered' THEN at_ns END) AS delivered_ns, "
    "max(CASE WHEN step = 'attempted' THEN 1 ELSE 0 END) AS failed, "
    "max(CASE WHEN step = 'redirected' THEN 1 ELSE 0 END) AS redirected "
    f"FROM timeline WHERE step IN {_DOOR_STEPS} AND at_ns >= ? AND at_ns < ? GROUP BY parcel"
)


def day_span(now_ns: int, offset_s: int = 0) -> tuple[int, int]:
    """The day `now_ns` falls in, as `[start_ns, end_ns)`: midnight to midnight in a zone
    `offset_s` seconds east of UTC (0: UTC, the depot's clock)."""
    offset = offset_s * 10**9
    start = (now_ns + offset) // DAY_NS * DAY_NS - offset
    return start, start + DAY_NS


@dataclass(frozen=True)
class Outcomes:
    """The day's doorsteps, per parcel: `attempted` parcels had a door outcome in the day (a
    delivery, a failed attempt or a redirect to a locker); `delivered` of them are delivered
    now and were delivered in the day; `first_time` of those never failed an attempt
    (`parcels.attempts` counts failed attempts only); `failed` and `redirected` had a failed
    attempt or a redirect in the day."""

    attempted: int
    delivered: int
    first_time: int
    failed: int
    redirected: int


def outcomes(conn: Conn, start_ns: int, end_ns: int) -> Outcomes:
    row = conn.execute(
        "SELECT count(*), "
        "coalesce(sum(CASE WHEN o.delivered_ns IS NOT NULL AND p.state = 'delivered' "
        "THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(CASE WHEN o.delivered_ns IS NOT NULL AND p.state = 'delivered' "
        "AND p.attempts = 0 THEN 1 ELSE 0 END), 0), "
        "coalesce(sum(o.failed), 0), coalesce(sum(o.redirected), 0) "
        f"FROM ({_TODAY_OUTCOMES}) o JOIN parcels p ON p.id = o.parcel",
        (start_ns, end_ns),
    ).fetchone()
    return Outcomes(*(int(v) for v in row))


def delivered_minutes(conn: Conn, start_ns: int, end_ns: int) -> list[tuple[str | None, int, int]]:
    """(the parcel's window as stored, minute of the day it was delivered, parcels) for the
    parcels delivered in the day: few rows (windows x minutes), whatever the parcel count, for
    the caller to judge against each window."""
    rows = conn.execute(
        f'SELECT p."window", (o.delivered_ns - ?) / {MINUTE_NS}, count(*) '
        f"FROM ({_TODAY_OUTCOMES}) o JOIN parcels p ON p.id = o.parcel "
        "WHERE o.delivered_ns IS NOT NULL AND p.state = 'delivered' GROUP BY 1, 2",
        (start_ns, start_ns, end_ns),
    ).fetchall()
    return [(None if w is None else str(w), int(m), int(n)) for w, m, n in rows]


def failure_reasons(conn: Conn, start_ns: int, end_ns: int) -> list[tuple[str, int]]:
    """(reason, parcels) of the parcels with a failed attempt in the day, by the reason of
    their latest failure, most frequent first."""
    rows = conn.execute(
        "SELECT coalesce(p.last_reason, 'unknown'), count(*) FROM (SELECT DISTINCT parcel "
        "FROM timeline WHERE step = 'attempted' AND at_ns >= ? AND at_ns < ?) f "
        "JOIN parcels p ON p.id = f.parcel GROUP BY 1 ORDER BY 2 DESC, 1",
        (start_ns, end_ns),
    ).fetchall()
    return [(str(r), int(n)) for r, n in rows]


def outcomes_by_hour(conn: Conn, start_ns: int, end_ns: int) -> dict[int, dict[str, int]]:
    """hour of the day -> {step: timeline entries} for the door steps in the day (a parcel
    that failed twice counts twice: this is the vans' work by the hour, not parcels)."""
    found: dict[int, dict[str, int]] = {}
    for hour, step, n in conn.execute(
        f"SELECT (at_ns - ?) / {HOUR_NS}, step, count(*) FROM timeline "
        f"WHERE step IN {_DOOR_STEPS} AND at_ns >= ? AND at_ns < ? GROUP BY 1, 2",
        (start_ns, start_ns, end_ns),
    ):
        found.setdefault(int(hour), {})[str(step)] = int(n)
    return found


def open_alarm_kinds(conn: Conn) -> list[tuple[str, int]]:
    """(alarm, open alarms of that kind), most frequent first."""
    rows = conn.execute(
        "SELECT alarm, count(*) FROM alarms WHERE state = 'open' GROUP BY alarm ORDER BY 2 DESC, 1"
    ).fetchall()
    return [(str(a), int(n)) for a, n in rows]
