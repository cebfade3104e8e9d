"""The alarms table: every statement `depot.alarms` runs, by name.

The one owner of `alarms` (created by `depot.store.migrations`). `depot.alarms` decides what
an alarm is and who hears of it; these functions only read and write the rows, on the
connection the caller hands them, inside the caller's transaction. The same text runs on
SQLite and on PostgreSQL (`depot.store.postgres` translates placeholders and `OR IGNORE`).

Must never: commit or begin a transaction of its own, or delete a row (an acknowledged alarm
is history a person may need).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

# The columns of a listed alarm, in this order.
COLUMNS = (
    "id, source, device, alarm, facts, raised_ns, state, acknowledged_ns, acknowledged_by, note"
)


def add(
    conn: Conn,
    *,
    key: str,
    source: str,
    device: str,
    alarm: str,
    facts: str,
    raised_ns: int,
    recorded_ns: int,
) -> bool:
    """Insert an open alarm unless one with this key is there; True if it is new."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO alarms(key, source, device, alarm, facts, raised_ns, "
        "recorded_ns, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
        (key, source, device, alarm, facts, raised_ns, recorded_ns),
    )
    return cur.rowcount == 1


def listing(conn: Conn, state: str | None, limit: int) -> list[Row]:
    """Alarms in `state` (None: all), newest first, at most `limit`."""
    where, params = ("WHERE state = ? ", (state, limit)) if state else ("", (limit,))
    return conn.execute(
        f"SELECT {COLUMNS} FROM alarms {where}ORDER BY id DESC LIMIT ?", params
    ).fetchall()


def open_listing(
    conn: Conn, limit: int, *, alarm: str | None = None, other_than: str | None = None
) -> list[Row]:
    """Open alarms, newest first, at most `limit`: only those named `alarm`, or all but those
    named `other_than` (the console lists some kinds beside what they are about)."""
    where = ""
    params: tuple[str, ...] = ()
    if alarm is not None:
        where, params = " AND alarm = ?", (alarm,)
    elif other_than is not None:
        where, params = " AND alarm <> ?", (other_than,)
    return conn.execute(
        f"SELECT {COLUMNS} FROM alarms WHERE state = 'open'{where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()


def open_count_of(conn: Conn, alarm: str) -> int:
    """Open alarms named `alarm`."""
    return int(
        conn.execute(
            "SELECT count(*) FROM alarms WHERE state = 'open' AND alarm = ?", (alarm,)
        ).fetchone()[0]
    )


def one(conn: Conn, alarm_id: int) -> Row | None:
    row: Row | None = conn.execute(
        f"SELECT {COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)
    ).fetchone()
    return row


def acknowledge(conn: Conn, alarm_id: int, *, by: str, note: str | None, now_ns: int) -> bool:
    """Mark an open alarm acknowledged; False when it is not open (acknowledged, or none)."""
    cur = conn.execute(
        "UPDATE alarms SET state = 'acknowledged', acknowledged_ns = ?, acknowledged_by = ?, "
        "note = ? WHERE id = ? AND state = 'open'",
        (now_ns, by, note, alarm_id),
    )
    return cur.rowcount == 1


def open_count(conn: Conn) -> int:
    return int(conn.execute("SELECT count(*) FROM alarms WHERE state = 'open'").fetchone()[0])


def open_by_device(conn: Conn) -> dict[str, int]:
    return {
        str(device): int(n)
        for device, n in conn.execute(
            "SELECT device, count(*) FROM alarms WHERE state = 'open' GROUP BY device"
        )
    }


def unnotified(conn: Conn, limit: int, skip_locked: str) -> list[Row]:
    """Inside the caller's transaction: up to `limit` alarms the operator has not been sent,
    oldest first, held against the other workers until the transaction ends."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM alarms WHERE notified_ns IS NULL ORDER BY id LIMIT ?"
        + skip_locked,
        (limit,),
    ).fetchall()


def mark_notified(conn: Conn, alarm_ids: Sequence[int], now_ns: int) -> None:
    conn.execute(
        "UPDATE alarms SET notified_ns = ? WHERE id IN (" + ",".join("?" * len(alarm_ids)) + ")",
        [now_ns, *alarm_ids],
    )
