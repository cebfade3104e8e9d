"""The parcel book's tables: every statement the parcel book (`depot.tracking`) runs, by name.

The one owner of `parcels`, `timeline`, `projection`, `vans`, `unmatched`, `van_days`,
`locker_commands` and `locker_drops`. The book decides what a device fact means for a
parcel; these functions only read and write the rows, on the connection the caller hands
them, inside the caller's transaction (a state change, its timeline entry and its
notifications commit together). The same text runs on SQLite and on PostgreSQL
(`depot.store.postgres` translates placeholders).

Must never: commit or begin a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

_TIMELINE_WITH_RECORD = (
    "SELECT t.uuid, t.parcel, p.record, t.at_ns, t.state, t.step, t.device, t.event_uuid, "
    "t.details FROM timeline t JOIN parcels p ON p.id = t.parcel"
)

# --- reading ----------------------------------------------------------------------------------


def parcel_row(conn: Conn, parcel: str) -> dict[str, Any] | None:
    """Every column of one parcel, by column name."""
    cur = conn.execute("SELECT * FROM parcels WHERE id=?", (parcel,))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def parcel_summary(conn: Conn, parcel: str) -> Row | None:
    row: Row | None = conn.execute(
        "SELECT id, state, attempts, last_reason, van, stop, locker, compartment, "
        "next_action, merchant, recipient, address, updated_ns FROM parcels WHERE id=?",
        (parcel,),
    ).fetchone()
    return row


def timeline_of(conn: Conn, parcel: str) -> list[Row]:
    return conn.execute(
        "SELECT at_ns, state, step, device, details FROM timeline WHERE parcel=? ORDER BY id",
        (parcel,),
    ).fetchall()


def parcel_lines(conn: Conn, state: str | None) -> list[Row]:
    sql = (
        "SELECT id, state, attempts, van, stop, locker, next_action, merchant, updated_ns "
        "FROM parcels"
    )
    if state is None:
        return conn.execute(sql + " ORDER BY id").fetchall()
    return conn.execute(sql + " WHERE state=? ORDER BY id", (state,)).fetchall()


def state_counts(conn: Conn) -> list[Row]:
    return conn.execute("SELECT state, count(*) FROM parcels GROUP BY state").fetchall()


def van_manifests(conn: Conn) -> list[Row]:
    return conn.execute(
        "SELECT van, manifest_version, day, updated_ns FROM vans ORDER BY van"
    ).fetchall()


def parcel_exists(conn: Conn, parcel: str) -> bool:
    return conn.execute("SELECT 1 FROM parcels WHERE id=?", (parcel,)).fetchone() is not None


def timeline_with_records(conn: Conn, parcel: str | None = None) -> list[Row]:
    """Timeline entries with their parcel's record, in projection order (one parcel or all)."""
    if parcel is None:
        return conn.execute(_TIMELINE_WITH_RECORD + " ORDER BY t.parcel, t.id").fetchall()
    return conn.execute(
        _TIMELINE_WITH_RECORD + " WHERE t.parcel=? ORDER BY t.id", (parcel,)
    ).fetchall()


def at_the_depot(conn: Conn) -> list[Row]:
    return conn.execute(
        "SELECT id, state, next_action, locker, attempts, record FROM parcels "
        "WHERE state IN ('received', 'at_depot') ORDER BY id"
    ).fetchall()


def deferrals_at_the_depot(conn: Conn, but: str) -> list[Row]:
    """(parcel, day plans that left it at the depot) of the parcels still there, leaving out
    the deferral entry `but` (today's: a plan made again does not count its own)."""
    return conn.execute(
        "SELECT t.parcel, count(*) FROM timeline t JOIN parcels p ON p.id = t.parcel "
        "WHERE p.state IN ('received', 'at_depot') AND t.step = 'deferred' "
        "AND t.event_uuid <> ? GROUP BY t.parcel ORDER BY t.parcel",
        (but,),
    ).fetchall()


def locker_occupancy(conn: Conn) -> list[Row]:
    """(locker, size, count) of compartments held or reserved for parcels not yet gone."""
    return conn.execute(
        "SELECT locker, coalesce(size, 'S'), count(*) FROM parcels "
        "WHERE locker IS NOT NULL AND compartment IS NOT NULL "
        "AND state NOT IN ('delivered', 'picked_up', 'returned_to_sender', 'returning') "
        "GROUP BY locker, coalesce(size, 'S')"
    ).fetchall()


def unmatched_rows(conn: Conn, *, include_resolved: bool) -> list[Row]:
    sql = (
        "SELECT event_rowid, event_uuid, parcel, device, kind, reason, recorded_ns, "
        "resolved_ns FROM unmatched"
    )
    if not include_resolved:
        sql += " WHERE resolved_ns IS NULL"
    return conn.execute(sql + " ORDER BY event_rowid, parcel").fetchall()


def van_day_reports(conn: Conn, van: str | None) -> list[Row]:
    return conn.execute(
        "SELECT van, day, at_ns, report, discrepancies FROM van_days "
        + ("WHERE van=? " if van is not None else "")
        + "ORDER BY at_ns, van",
        (van,) if van is not None else (),
    ).fetchall()


def projected_rowid(conn: Conn) -> int:
    row = conn.execute("SELECT last_rowid FROM projection WHERE id=1").fetchone()
    return int(row[0]) if row else 0


def state_of(conn: Conn, parcel: str) -> str | None:
    row = conn.execute("SELECT state FROM parcels WHERE id=?", (parcel,)).fetchone()
    return str(row[0]) if row is not None else None


def state_and_record(conn: Conn, parcel: str) -> Row | None:
    row: Row | None = conn.execute(
        "SELECT state, record FROM parcels WHERE id=?", (parcel,)
    ).fetchone()
    return row


def last_assignment(conn: Conn, parcel: str) -> str | None:
    """The details of the parcel's newest `assigned` timeline entry, as stored (JSON)."""
    row = conn.execute(
        "SELECT details FROM timeline WHERE parcel=? AND step='assigned' ORDER BY id DESC LIMIT 1",
        (parcel,),
    ).fetchone()
    return str(row[0]) if row is not None else None


def next_action_details(conn: Conn, parcel: str) -> list[str]:
    """The details (JSON) of every decision recorded for the parcel, oldest first."""
    rows = conn.execute(
        "SELECT details FROM timeline WHERE parcel=? AND step='next_action' ORDER BY id",
        (parcel,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def loaded_on(conn: Conn, van: str) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM parcels WHERE van=? AND state='loaded' ORDER BY id", (van,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def command_parcel(conn: Conn, command_id: str) -> str | None:
    row = conn.execute("SELECT parcel FROM locker_commands WHERE id=?", (command_id,)).fetchone()
    return str(row[0]) if row and row[0] else None


def van_manifest(conn: Conn, van: str) -> Row | None:
    """(manifest_version, day) the van last said it runs."""
    row: Row | None = conn.execute(
        "SELECT manifest_version, day FROM vans WHERE van=?", (van,)
    ).fetchone()
    return row


def fact_target(conn: Conn, parcel: str) -> Row | None:
    """What applying a device fact needs of the parcel: state, next action, attempts, locker,
    compartment."""
    row: Row | None = conn.execute(
        "SELECT state, next_action, attempts, locker, compartment FROM parcels WHERE id=?",
        (parcel,),
    ).fetchone()
    return row


def already_applied(conn: Conn, parcel: str, event_uuid: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM timeline WHERE parcel=? AND event_uuid=?", (parcel, event_uuid)
        ).fetchone()
        is not None
    )


def notify_targets(conn: Conn, parcel: str) -> Row:
    """(merchant, webhook, customer_webhook, locker, window) of a parcel that exists."""
    row: Row = conn.execute(
        'SELECT merchant, webhook, customer_webhook, locker, "window" FROM parcels WHERE id=?',
        (parcel,),
    ).fetchone()
    return row


def deposit_of_entry(conn: Conn, entry: str) -> Row | None:
    """(locker, payload) of the locker's `parcel_deposited` event behind timeline entry
    `entry`, or None when that entry came from another event."""
    row: Row | None = conn.execute(
        "SELECT e.device, e.payload FROM timeline t JOIN events e "
        "ON e.device = t.device AND e.uuid = t.event_uuid "
        "WHERE t.uuid = ? AND e.kind = 'parcel_deposited'",
        (entry,),
    ).fetchone()
    return row


def pending_unmatched(conn: Conn) -> list[Row]:
    """(event_rowid, event_uuid, parcel) of kept events whose parcel has since arrived."""
    return conn.execute(
        "SELECT u.event_rowid, u.event_uuid, u.parcel FROM unmatched u "
        "JOIN parcels p ON p.id = u.parcel WHERE u.resolved_ns IS NULL "
        "ORDER BY u.event_rowid"
    ).fetchall()


# --- writing (inside the caller's transaction) -------------------------------------------------


def insert_parcel(
    conn: Conn, parcel: str, now_ns: int, record: str, columns: Mapping[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO parcels (id, state, received_ns, updated_ns, record, "
        + ", ".join(f'"{c}"' for c in columns)
        + ") VALUES (?, 'received', ?, ?, ?"
        + ", ?" * len(columns)
        + ")",
        (parcel, now_ns, now_ns, record, *columns.values()),
    )


def update_parcel_record(
    conn: Conn, parcel: str, record: str, columns: Mapping[str, Any]
) -> None:
    conn.execute(
        "UPDATE parcels SET record=?" + "".join(f', "{c}"=?' for c in columns) + " WHERE id=?",
        (record, *columns.values(), parcel),
    )


def update_parcel(conn: Conn, parcel: str, sets: Mapping[str, Any]) -> None:
    """Set the named columns of one parcel (names come from the book, never from input)."""
    conn.execute(
        "UPDATE parcels SET " + ", ".join(f"{k}=?" for k in sets) + " WHERE id=?",
        (*sets.values(), parcel),
    )


def set_next_action(
    conn: Conn, parcel: str, kind: str, state: str, now_ns: int, locker: str | None
) -> None:
    conn.execute(
        "UPDATE parcels SET next_action=?, state=?, updated_ns=?, locker=coalesce(?, locker) "
        "WHERE id=?",
        (kind, state, now_ns, locker, parcel),
    )


def commands_noted(conn: Conn, parcel: str, action: str) -> int:
    """How many `action` commands the depot has sent about `parcel`."""
    row = conn.execute(
        "SELECT COUNT(*) FROM locker_commands WHERE parcel=? AND action=?", (parcel, action)
    ).fetchone()
    return int(row[0])


def note_command(
    conn: Conn, command_id: str, locker: str, action: str, parcel: str, now_ns: int
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO locker_commands(id, locker, action, parcel, noted_ns) "
        "VALUES (?,?,?,?,?)",
        (command_id, locker, action, parcel, now_ns),
    )


def insert_timeline(
    conn: Conn,
    entry: str,
    parcel: str,
    at_ns: int,
    state: str,
    step: str,
    device: str,
    event_uuid: str,
    details: str,
) -> bool:
    """Add one timeline entry; False if it was there (unique per parcel and device event)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO timeline(uuid, parcel, at_ns, state, step, device, "
        "event_uuid, details) VALUES (?,?,?,?,?,?,?,?)",
        (entry, parcel, at_ns, state, step, device, event_uuid, details),
    )
    return cur.rowcount == 1


def set_van_manifest(conn: Conn, van: str, version: int, day: str, at_ns: int) -> None:
    conn.execute(
        "INSERT INTO vans(van, manifest_version, day, updated_ns) VALUES (?,?,?,?) "
        "ON CONFLICT(van) DO UPDATE SET manifest_version=excluded.manifest_version, "
        "day=excluded.day, updated_ns=excluded.updated_ns",
        (van, version, day, at_ns),
    )


def insert_van_day(
    conn: Conn, event_uuid: str, van: str, day: str | None, at_ns: int, report: str,
    discrepancies: str,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO van_days(event_uuid, van, day, at_ns, report, discrepancies) "
        "VALUES (?,?,?,?,?,?)",
        (event_uuid, van, day, at_ns, report, discrepancies),
    )


def insert_unmatched(
    conn: Conn, rowid: int, event_uuid: str, parcel: str, device: str, kind: str, why: str,
    now_ns: int,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO unmatched(event_rowid, event_uuid, parcel, device, kind, "
        "reason, recorded_ns) VALUES (?,?,?,?,?,?,?)",
        (rowid, event_uuid, parcel, device, kind, why, now_ns),
    )


def resolve_unmatched(conn: Conn, event_uuid: str, parcel: str, now_ns: int) -> None:
    conn.execute(
        "UPDATE unmatched SET resolved_ns=? WHERE event_uuid=? AND parcel=?",
        (now_ns, event_uuid, parcel),
    )


def advance_projection(conn: Conn, rowids: Sequence[int], now_ns: int) -> None:
    """Remember the highest event the projection applied (the queue says what is left)."""
    top = max(rowids)
    conn.execute(
        "UPDATE projection SET last_rowid=?, updated_ns=? WHERE id=1 AND last_rowid<?",
        (top, now_ns, top),
    )


# --- transitions waiting for the exceptions policy -------------------------------------------


def queue_reaction(
    conn: Conn, parcel: str, state: str, previous: str, step: str, device: str,
    event_uuid: str, at_ns: int, details: str,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO reactions(parcel, state, previous, step, device, event_uuid, "
        "at_ns, details) VALUES (?,?,?,?,?,?,?,?)",
        (parcel, state, previous, step, device, event_uuid, at_ns, details),
    )


def next_reaction(conn: Conn, skip_locked: str) -> Row | None:
    """The oldest waiting transition no other worker holds: (id, parcel, state, previous,
    step, device, event_uuid, at_ns, details); held by this transaction until it ends."""
    row: Row | None = conn.execute(
        "SELECT id, parcel, state, previous, step, device, event_uuid, at_ns, details "
        "FROM reactions ORDER BY id LIMIT 1" + skip_locked
    ).fetchone()
    return row


def drop_reaction(conn: Conn, reaction_id: int) -> None:
    conn.execute("DELETE FROM reactions WHERE id=?", (reaction_id,))


def reactions_waiting(conn: Conn) -> int:
    return int(conn.execute("SELECT count(*) FROM reactions").fetchone()[0])


# --- locker drops the van and the locker do not agree on yet ----------------------------------


def open_locker_drop(
    conn: Conn, kind: str, parcel: str, locker: str, van: str | None,
    compartment: str | None, event_uuid: str, since_ns: int,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO locker_drops(kind, parcel, locker, van, compartment, event_uuid, "
        "since_ns) VALUES (?,?,?,?,?,?,?)",
        (kind, parcel, locker, van, compartment, event_uuid, since_ns),
    )


def close_locker_drops(conn: Conn, parcel: str, locker: str, kind: str) -> int:
    """Forget the open rows of `kind` for the parcel at that locker; how many there were."""
    cur = conn.execute(
        "DELETE FROM locker_drops WHERE parcel=? AND locker=? AND kind=?", (parcel, locker, kind)
    )
    return int(cur.rowcount)


def locker_drops_due(conn: Conn, kind: str, before_ns: int, limit: int) -> list[Row]:
    """(id, kind, parcel, locker, van, compartment, event_uuid, since_ns) of open rows of
    `kind` seen before `before_ns`, oldest first."""
    return conn.execute(
        "SELECT id, kind, parcel, locker, van, compartment, event_uuid, since_ns "
        "FROM locker_drops WHERE kind=? AND since_ns<? ORDER BY since_ns, id LIMIT ?",
        (kind, before_ns, limit),
    ).fetchall()


def forget_locker_drop(conn: Conn, drop_id: int) -> bool:
    """Delete one row; False if another worker did first."""
    return int(conn.execute("DELETE FROM locker_drops WHERE id=?", (drop_id,)).rowcount) > 0


def claims_of(conn: Conn, parcel: str) -> list[str]:
    """The details of the parcel's `dropped_at_locker` timeline entries (a van's claims)."""
    rows = conn.execute(
        "SELECT details FROM timeline WHERE parcel=? AND step='dropped_at_locker'", (parcel,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def parcel_van(conn: Conn, parcel: str) -> str | None:
    row = conn.execute("SELECT van FROM parcels WHERE id=?", (parcel,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


# --- the console's exceptions queue (depot.web.pages.exceptions) -------------------------------


def open_locker_drops(conn: Conn, kinds: Sequence[str], limit: int) -> list[Row]:
    """(id, kind, parcel, locker, van, compartment, since_ns, parcel state) of the open rows of
    `kinds`, newest first, at most `limit` (the state is None for a parcel the book lacks)."""
    marks = ",".join("?" * len(kinds))
    return conn.execute(
        "SELECT d.id, d.kind, d.parcel, d.locker, d.van, d.compartment, d.since_ns, p.state "
        f"FROM locker_drops d LEFT JOIN parcels p ON p.id = d.parcel WHERE d.kind IN ({marks}) "
        "ORDER BY d.since_ns DESC, d.id DESC LIMIT ?",
        (*kinds, limit),
    ).fetchall()


def locker_drop_count(conn: Conn, kinds: Sequence[str]) -> int:
    marks = ",".join("?" * len(kinds))
    return int(
        conn.execute(
            f"SELECT count(*) FROM locker_drops WHERE kind IN ({marks})", tuple(kinds)
        ).fetchone()[0]
    )


def parcels_in_states(conn: Conn, states: Sequence[str], limit: int) -> list[Row]:
    """(id, state, next_action, attempts, last_reason, van, locker, updated_ns) of parcels in
    `states`, the most recently changed first, at most `limit` (indexed by state)."""
    marks = ",".join("?" * len(states))
    return conn.execute(
        "SELECT id, state, next_action, attempts, last_reason, van, locker, updated_ns "
        f"FROM parcels WHERE state IN ({marks}) ORDER BY updated_ns DESC, id LIMIT ?",
        (*states, limit),
    ).fetchall()


def states_of(conn: Conn, parcels: Sequence[str]) -> dict[str, str]:
    """The states of the parcels named that the book holds, by id (one query)."""
    if not parcels:
        return {}
    marks = ",".join("?" * len(parcels))
    rows = conn.execute(
        f"SELECT id, state FROM parcels WHERE id IN ({marks})", tuple(parcels)
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}
