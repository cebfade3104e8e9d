"""What the live streams watch (`depot.store.watch`): a fingerprint of the depot that changes
when anything a page shows may have changed, and the news between two fingerprints.

The stream watches the database, not this process: a depot worker other than the one serving
the page changes it too.
"""

from __future__ import annotations

from typing import Any

from depot.store import watch
from depot.tracking import iso_utc
from depot.web.api import reader
from depot.web.context import WebDepot

Fingerprint = tuple[int, ...]
NEWS_MAX = 20  # timeline entries sent with one piece of news; a page refetches for the rest


def fingerprint(depot: WebDepot) -> Fingerprint:
    with reader(depot.book.database) as conn:
        return watch.fingerprint(conn)


def news(depot: WebDepot, before: Fingerprint, now: Fingerprint) -> dict[str, Any]:
    """The timeline entries newer than `before` (at most `NEWS_MAX`, oldest first) and the
    open alarms now."""
    with reader(depot.book.database) as conn:
        rows = watch.timeline_after(conn, before[watch.TIMELINE], NEWS_MAX)
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
        "alarms_open": now[watch.ALARMS_OPEN],
    }


def parcel_of_link(depot: WebDepot, token: str) -> str | None:
    """The parcel a customer's link names (None: no such link); see `depot.customer`."""
    from depot.customer import UnknownLink, find_link

    with reader(depot.book.database) as conn:
        try:
            return find_link(conn, token).parcel
        except UnknownLink:
            return None


def parcel_fingerprint(depot: WebDepot, parcel: str) -> tuple[int, int]:
    with reader(depot.book.database) as conn:
        return watch.parcel_fingerprint(conn, parcel)
