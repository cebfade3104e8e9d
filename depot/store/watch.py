"""What open pages watch: a few indexed maxima and counts that change when anything a page
shows may have changed, and the timeline entries between two looks.

Read-only; every statement here is cheap on a depot of any size (a max over a primary key or
an index, a count over an index), because each open page asks about once a second.
"""

from __future__ import annotations

from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

_LOOKS = (
    "SELECT coalesce(max(id), 0) FROM timeline",
    "SELECT coalesce(max(id), 0) FROM alarms",
    "SELECT count(*) FROM alarms WHERE state = 'open'",
    "SELECT coalesce(max(updated_ns), 0) FROM device_status",
    "SELECT coalesce(max(id), 0) FROM quarantine",
    "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'",
    "SELECT count(*) FROM webhook_outbox WHERE state = 'dead'",
    "SELECT coalesce(max(published_ns), 0) FROM depot_commands",
    "SELECT coalesce(max(received_ns), 0) FROM van_positions",
)
TIMELINE = 0  # the fingerprint's first figure: the newest timeline entry's id
ALARMS_OPEN = 2


def fingerprint(conn: Conn) -> tuple[int, ...]:
    return tuple(int(conn.execute(sql).fetchone()[0]) for sql in _LOOKS)


def timeline_after(conn: Conn, after_id: int, limit: int) -> list[Row]:
    """(id, parcel, state, step, device, at_ns) of the newest entries after `after_id`,
    newest first, at most `limit`."""
    return conn.execute(
        "SELECT id, parcel, state, step, device, at_ns FROM timeline WHERE id > ? "
        "ORDER BY id DESC LIMIT ?",
        (after_id, limit),
    ).fetchall()


def parcel_fingerprint(conn: Conn, parcel: str) -> tuple[int, int]:
    """Changes when the parcel's timeline grows or its van sends a new position."""
    entry = conn.execute(
        "SELECT coalesce(max(id), 0) FROM timeline WHERE parcel = ?", (parcel,)
    ).fetchone()[0]
    moved = conn.execute(
        "SELECT coalesce(max(p.fix_ns), 0) FROM van_positions p "
        "JOIN parcels c ON c.van = p.van WHERE c.id = ?",
        (parcel,),
    ).fetchone()[0]
    return (int(entry), int(moved))
