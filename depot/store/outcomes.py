"""Outcomes at the door: every statement on `card_codes` and `handovers`, by name.

The one owner of `card_codes` (a failure card's code, as the SHA-256 of its normalised form,
-> its parcel) and `handovers` (one row per parcel handover that moved a parcel to a final
state: by whom and how), both created by `depot.store.migrations`. `depot.outcomes` decides
what a van's outcome means (a violation, a method, a card); these functions only read and
write rows, on the connection the caller hands them, inside the caller's transaction (the
projection's, so a replayed event adds nothing). The counts read the timeline and the alarms
too, but never write them. The same text runs on SQLite and on PostgreSQL.

Must never: commit or begin a transaction of its own, or store a card code as given.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from depot.store.base import Conn

__all__ = [
    "card_parcel",
    "card_uses",
    "handover_counts",
    "record_handover",
    "refusal_count",
    "remember_card",
    "violation_count",
]


def remember_card(conn: Conn, digest: str, parcel: str, event_uuid: str, now_ns: int) -> bool:
    """Record that the card whose normalised code has SHA-256 `digest` was left for `parcel`;
    False when that digest was already there (the same card again, or, once in 2^40, another
    parcel's: the first one keeps it)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO card_codes (digest, parcel, event_uuid, created_ns) "
        "VALUES (?, ?, ?, ?)",
        (digest, parcel, event_uuid, now_ns),
    )
    return cur.rowcount == 1


def card_parcel(conn: Conn, digest: str) -> str | None:
    """The parcel of the card whose normalised code has SHA-256 `digest`, or None."""
    row = conn.execute("SELECT parcel FROM card_codes WHERE digest = ?", (digest,)).fetchone()
    return None if row is None else str(row[0])


def record_handover(
    conn: Conn, parcel: str, event_uuid: str, method: str, device: str, at_ns: int
) -> None:
    """One handover (idempotent on the device event)."""
    conn.execute(
        "INSERT OR IGNORE INTO handovers (parcel, event_uuid, method, device, at_ns) "
        "VALUES (?, ?, ?, ?, ?)",
        (parcel, event_uuid, method, device, at_ns),
    )


def _span(start_ns: int | None, end_ns: int | None, column: str) -> tuple[str, tuple[int, ...]]:
    if start_ns is None or end_ns is None:
        return "", ()
    return f" AND {column} >= ? AND {column} < ?", (start_ns, end_ns)


def handover_counts(
    conn: Conn, start_ns: int | None = None, end_ns: int | None = None
) -> list[tuple[str, str, int]]:
    """(method, device, handovers) in `[start_ns, end_ns)` (every one when no span): few rows
    (methods x vans and lockers), for the caller to name counters among the lockers."""
    where, params = _span(start_ns, end_ns, "at_ns")
    rows = conn.execute(
        f"SELECT method, device, count(*) FROM handovers WHERE 1 = 1{where} GROUP BY 1, 2",
        params,
    ).fetchall()
    return [(str(m), str(d), int(n)) for m, d, n in rows]


def refusal_count(conn: Conn, start_ns: int | None = None, end_ns: int | None = None) -> int:
    """Handovers a van refused because the parcel's care forbade them (`outcome_refused`)."""
    where, params = _span(start_ns, end_ns, "at_ns")
    row = conn.execute(
        f"SELECT count(*) FROM timeline WHERE step = 'outcome_refused'{where}", params
    ).fetchone()
    return int(row[0])


def violation_count(conn: Conn, start_ns: int | None = None, end_ns: int | None = None) -> int:
    """Deliveries that broke the parcel's care: the `preference_violated` alarms raised, open
    or acknowledged (one per delivery event; acknowledging one does not undo it)."""
    where, params = _span(start_ns, end_ns, "raised_ns")
    row = conn.execute(
        f"SELECT count(*) FROM alarms WHERE alarm = 'preference_violated'{where}", params
    ).fetchone()
    return int(row[0])


def card_uses(conn: Conn, request_step: str, choices: Collection[str]) -> tuple[int, int]:
    """(cards left, parcels whose customer then made one of `choices` on the parcel's page):
    a timeline entry `request_step` whose request is one of them, at or after the parcel's
    first card. The card page itself counts nothing (it keeps no record of who looked)."""
    first = {
        str(p): int(ns)
        for p, ns in conn.execute(
            "SELECT parcel, min(created_ns) FROM card_codes GROUP BY parcel"
        ).fetchall()
    }
    used = set()
    for parcel, at_ns, details in conn.execute(
        "SELECT parcel, at_ns, details FROM timeline WHERE step = ?", (request_step,)
    ).fetchall():
        since = first.get(str(parcel))
        if since is None or int(at_ns) < since:
            continue
        try:
            asked = json.loads(str(details)).get("request")
        except (ValueError, AttributeError):
            continue
        if asked in choices:
            used.add(str(parcel))
    left = int(conn.execute("SELECT count(*) FROM card_codes").fetchone()[0])
    return left, len(used)
