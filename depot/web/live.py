"""What the live stream watches: a fingerprint of the depot that changes when anything a
page shows may have changed, and the news between two fingerprints.

The fingerprint is a handful of indexed maxima and counts (the newest timeline entry, alarm,
device status, quarantined payload and webhook change), read on every look: a depot worker
other than the one serving the page changes them too, so the stream watches the database,
not this process.
"""

from __future__ import annotations

from typing import Any

from depot.tracking import iso_utc
from depot.web.api import reader
from depot.web.context import WebDepot

Fingerprint = tuple[int, ...]
NEWS_MAX = 20  # timeline entries sent with one piece of news; a page refetches for the rest

_LOOKS = (
    "SELECT coalesce(max(id), 0) FROM timeline",
    "SELECT coalesce(max(id), 0) FROM alarms",
    "SELECT count(*) FROM alarms WHERE state = 'open'",
    "SELECT coalesce(max(updated_ns), 0) FROM device_status",
    "SELECT coalesce(max(id), 0) FROM quarantine",
    "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'",
    "SELECT count(*) FROM webhook_outbox WHERE state = 'dead'",
    "SELECT coalesce(max(published_ns), 0) FROM depot_commands",
)


def fingerprint(depot: WebDepot) -> Fingerprint:
    with reader(depot.book.database) as conn:
        return tuple(int(conn.execute(sql).fetchone()[0]) for sql in _LOOKS)


def news(depot: WebDepot, before: Fingerprint, now: Fingerprint) -> dict[str, Any]:
    """The timeline entries newer than `before` (at most `NEWS_MAX`, newest last) and the
    open alarms now."""
    with reader(depot.book.database) as conn:
        rows = conn.execute(
            "SELECT id, parcel, state, step, device, at_ns FROM timeline WHERE id > ? "
            "ORDER BY id DESC LIMIT ?",
            (before[0], NEWS_MAX),
        ).fetchall()
    return {
        "timeline": [
            {
                "id": int(r[0]),
                "parcel": str(r[1]),
                "state": str(r[2]),
                "step": str(r[3]),
                "device": str(r[4]),
                "at": iso_utc(int(r[5])),
            }
            for r in reversed(rows)
        ],
        "alarms_open": now[2],
    }
