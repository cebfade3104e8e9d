"""Collections: every statement on the `collections` table, by name.

A parcel whose locker hold ran out waits in its compartment until a van's courier takes it
back to the depot. `depot.service` records each such expiry here when it reacts to it, puts
the collection on a van's manifest (today's, re-issued, or the next day's plan), and marks it
done once the locker reports the compartment emptied. These functions only read and write the
rows, on the connection the caller hands them, inside the caller's transaction (the record of
a collection commits with the reaction that decided it). The SQL is the depot's shared
dialect, run as it is by SQLite and translated by `depot.store.postgres` for PostgreSQL.

Must never: commit or begin a transaction of its own, or decide which van collects (that is
`depot.service` with `depot.routing`).
"""

from __future__ import annotations

from typing import Any

from depot.store.base import Conn

__all__ = ["mark_done", "note_on_manifest", "open_collections", "plan", "planned_count"]

Row = tuple[Any, ...]


def plan(
    conn: Conn, *, parcel: str, locker: str, compartment: str | None, event_uuid: str, now_ns: int
) -> None:
    """Record that `parcel` is to be taken out of `locker` (once per hold expiry event)."""
    conn.execute(
        "INSERT OR IGNORE INTO collections (parcel, locker, compartment, event_uuid, planned_ns) "
        "VALUES (?, ?, ?, ?, ?)",
        (parcel, locker, compartment, event_uuid, now_ns),
    )


def open_collections(conn: Conn, locker: str | None = None) -> list[Row]:
    """(parcel, locker, compartment) of collections still to do: not done, and the parcel is
    still expired in its compartment (an extended hold or a late pickup needs no courier), or
    is a customer's return dropped there (`depot.returns`).
    One row per parcel, by locker then compartment."""
    sql = (
        "SELECT c.parcel, c.locker, max(c.compartment) FROM collections c "
        "JOIN parcels p ON p.id = c.parcel "
        "WHERE c.done_ns IS NULL AND p.state IN ('hold_expired', 'return_dropped')"
    )
    params: tuple[Any, ...] = ()
    if locker is not None:
        sql += " AND c.locker = ?"
        params = (locker,)
    sql += " GROUP BY c.parcel, c.locker ORDER BY c.locker, max(c.compartment), c.parcel"
    return conn.execute(sql, params).fetchall()


def note_on_manifest(conn: Conn, parcel: str, *, van: str, day: str, version: int) -> None:
    """The open collection of `parcel` is on this manifest of `van` now."""
    conn.execute(
        "UPDATE collections SET van=?, day=?, version=? WHERE parcel=? AND done_ns IS NULL",
        (van, day, version, parcel),
    )


def mark_done(conn: Conn, parcel: str, now_ns: int) -> int:
    """The parcel left its compartment for the depot: its open collections are done."""
    cur = conn.execute(
        "UPDATE collections SET done_ns=? WHERE parcel=? AND done_ns IS NULL", (now_ns, parcel)
    )
    return int(cur.rowcount or 0)


def planned_count(conn: Conn) -> dict[str, int]:
    """Collections recorded (`planned`), done (`collected`), and still to do (`open`)."""
    row = conn.execute(
        "SELECT count(*), count(done_ns) FROM collections"
    ).fetchone()
    planned, collected = int(row[0] or 0), int(row[1] or 0)
    return {"planned": planned, "collected": collected, "open": len(open_collections(conn))}
