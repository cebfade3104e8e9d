"""Customers' returns: every statement on the `customer_returns` and `return_salts` tables.

`depot.returns` books a return, and marks its steps as the parcel book's projection reports
them; these functions only read and write the rows, on the connection the caller hands them,
inside the caller's transaction (a booking commits with its parcel, its command and its
notices). The SQL is the depot's shared dialect, run as it is by SQLite and translated by
`depot.store.postgres` for PostgreSQL.

Must never: commit or begin a transaction of its own, or hold a return code in plaintext
(the rows keep its hash under the locker's salt and the code sealed to the depot's key).
"""

from __future__ import annotations

from typing import Any

from depot.store.base import Conn

__all__ = [
    "STEPS",
    "counts",
    "find",
    "find_for",
    "id_taken",
    "insert",
    "locker_salt",
    "mark_step",
    "open_code_hashes",
    "open_door_pickups",
    "plan_pickup",
]

Row = tuple[Any, ...]
#: The steps of a return after its booking, each the column of its time.
STEPS = {"dropped": "dropped_ns", "collected": "collected_ns", "at_depot": "at_depot_ns"}
_STEP_COLUMNS = frozenset(STEPS.values())
_LATER = _STEP_COLUMNS | {"pickup_van", "pickup_day"}  # not known at booking
_COLUMNS = (
    "return_id, original, merchant, size, locker, code_hash, sealed_code, booked_by, "
    "booked_ns, until_ns, dropped_ns, collected_ns, at_depot_ns, webhook, customer_webhook, "
    "handover, pickup_van, pickup_day"
)


def locker_salt(conn: Conn, locker: str, new_salt: str) -> str:
    """The return salt of `locker`: the one recorded, else `new_salt`, recorded now."""
    conn.execute(
        "INSERT OR IGNORE INTO return_salts (locker, salt) VALUES (?, ?)", (locker, new_salt)
    )
    row = conn.execute("SELECT salt FROM return_salts WHERE locker=?", (locker,)).fetchone()
    return str(row[0])


def open_code_hashes(conn: Conn, locker: str, now_ns: int) -> set[str]:
    """Code hashes of the returns `locker` may still be handed: not dropped, not run out."""
    rows = conn.execute(
        "SELECT code_hash FROM customer_returns WHERE locker=? AND dropped_ns IS NULL "
        "AND until_ns > ?",
        (locker, now_ns),
    ).fetchall()
    return {str(r[0]) for r in rows}


def insert(conn: Conn, **row: Any) -> None:
    """A booked return (every column of `_COLUMNS` but the steps' times and its pickup's
    round; `handover` is `locker` or `door`)."""
    names = [c.strip() for c in _COLUMNS.split(",") if c.strip() not in _LATER]
    conn.execute(
        f"INSERT INTO customer_returns ({', '.join(names)}) "
        f"VALUES ({', '.join('?' for _ in names)})",
        tuple(row[n] for n in names),
    )


def _as_dict(row: Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    names = [c.strip() for c in _COLUMNS.split(",")]
    return dict(zip(names, row, strict=True))


def find(conn: Conn, return_id: str) -> dict[str, Any] | None:
    """The return booked under this id, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM customer_returns WHERE return_id=?", (return_id,)
    ).fetchone()
    return _as_dict(row)


def find_for(conn: Conn, original: str) -> dict[str, Any] | None:
    """The return booked for the delivered parcel `original`, or None."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM customer_returns WHERE original=?", (original,)
    ).fetchone()
    return _as_dict(row)


def id_taken(conn: Conn, parcel: str) -> bool:
    """Whether a return or any parcel of the book already has this id."""
    row = conn.execute(
        "SELECT 1 FROM customer_returns WHERE return_id=? UNION SELECT 1 FROM parcels WHERE id=?",
        (parcel, parcel),
    ).fetchone()
    return row is not None


def open_door_pickups(conn: Conn) -> list[dict[str, Any]]:
    """Door returns no courier has taken yet, oldest booking first (each is planned onto a
    round until one does)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM customer_returns WHERE handover='door' "
        "AND collected_ns IS NULL AND at_depot_ns IS NULL ORDER BY booked_ns, return_id"
    ).fetchall()
    return [d for d in (_as_dict(r) for r in rows) if d is not None]


def plan_pickup(conn: Conn, return_id: str, van: str, day: str) -> None:
    """Record the round whose manifest lists the door return's pickup (the latest plan)."""
    conn.execute(
        "UPDATE customer_returns SET pickup_van=?, pickup_day=? WHERE return_id=?",
        (van, day, return_id),
    )


def mark_step(conn: Conn, return_id: str, step: str, now_ns: int) -> bool:
    """Record when the return reached `step` (a key of STEPS); False when it had already,
    so a step reported twice tells nobody twice."""
    column = STEPS[step]
    cur = conn.execute(
        f"UPDATE customer_returns SET {column}=? WHERE return_id=? AND {column} IS NULL",
        (now_ns, return_id),
    )
    return bool(cur.rowcount)


def counts(conn: Conn) -> dict[str, int]:
    """Returns booked, and how many reached each step: `dropped` into a locker, `at_door`
    handed to a courier at the door, `collected` by a van (either way), `at_depot`."""
    row = conn.execute(
        "SELECT count(*), count(dropped_ns), "
        "count(CASE WHEN handover = 'door' THEN collected_ns END), "
        "count(collected_ns), count(at_depot_ns) FROM customer_returns"
    ).fetchone()
    booked, dropped, at_door, collected, at_depot = (int(v or 0) for v in row)
    return {
        "booked": booked,
        "dropped": dropped,
        "at_door": at_door,
        "collected": collected,
        "at_depot": at_depot,
    }
