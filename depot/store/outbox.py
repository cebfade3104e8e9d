"""The webhook outbox's rows: every statement on the `webhook_outbox` table.

`depot.webhooks` decides what to send, when, and what an answer means (signing, validation,
backoff, dead-lettering); what it reads and writes in the table is here, one named function
per statement, so the depot's database is talked to by `depot.store` alone. The functions take
the caller's connection and open no transaction of their own: an enqueue commits with the state
change it reports, and the sender's claim (`due` then `lease`) is one transaction of its own
making. The SQL is the depot's shared dialect (`?`, `INSERT OR IGNORE`), run as it is by SQLite
and translated by `depot.store.postgres` for PostgreSQL.

Must never: delete a row (a row only changes state), or change the outcome of a row that is no
longer pending (an operator's dead letter, a row another worker already recorded).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from depot.store.base import Conn, DepotDatabase
from depot.store.migrations import migrate

__all__ = [
    "Due",
    "OutboxEntry",
    "State",
    "add",
    "counts",
    "dead_count",
    "dead_letters",
    "dead_recent",
    "due",
    "ensure_schema",
    "entry",
    "for_events",
    "lease",
    "mark_dead",
    "mark_sent",
    "next_due_ns",
    "oldest_pending_ns",
    "release",
    "retry_dead",
    "schedule_retry",
    "stored_content",
]

State = Literal["pending", "sent", "dead"]

_ENTRY_COLUMNS = (
    "id, event_id, url, body, key_id, state, attempts, next_attempt_ns, last_error, "
    "created_ns, sent_ns, dead_ns, status_code"
)


@dataclass(frozen=True)
class OutboxEntry:
    """One row of the outbox, as an operator or a test sees it."""

    id: int
    event_id: str
    url: str
    body: bytes
    key_id: str
    state: State
    attempts: int
    next_attempt_ns: int
    last_error: str | None
    created_ns: int
    sent_ns: int | None
    dead_ns: int | None
    status_code: int | None

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> OutboxEntry:
        return cls(
            id=int(row[0]),
            event_id=str(row[1]),
            url=str(row[2]),
            body=bytes(row[3]),
            key_id=str(row[4]),
            state=row[5],
            attempts=int(row[6]),
            next_attempt_ns=int(row[7]),
            last_error=row[8],
            created_ns=int(row[9]),
            sent_ns=row[10],
            dead_ns=row[11],
            status_code=row[12],
        )


@dataclass(frozen=True)
class Due:
    """A pending row the sender may POST now: what it needs to sign and send it."""

    id: int
    event_id: str
    url: str
    body: bytes
    key_id: str
    attempts: int  # attempts made before this one


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Bring `conn`'s database up to the depot's schema, the outbox tables with it.

    The outbox has no schema of its own: its tables are migration 4 of the depot's one list
    (`depot.store.migrations`). A tool that opens the outbox before the depot ever ran gets the
    whole depot's tables, which the depot then finds as its own.
    """
    migrate(conn)


# --- enqueue and the operator's views -----------------------------------------------------------


def add(
    conn: Conn, *, event_id: str, url: str, body: bytes, key_id: str, now_ns: int
) -> bool:
    """Insert a pending row, due at once, unless the event id is already there; True if new.

    The unique event id makes a second enqueue of the same notification (a projection
    replayed after a crash) a no-op instead of a second webhook.
    """
    cur = conn.execute(
        "INSERT OR IGNORE INTO webhook_outbox(event_id, url, body, key_id, state, attempts, "
        "next_attempt_ns, created_ns) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
        (event_id, url, body, key_id, now_ns, now_ns),
    )
    return cur.rowcount == 1


def stored_content(conn: Conn, event_id: str) -> tuple[str, bytes, str] | None:
    """The URL, body and key id stored for an event id, so a repeated enqueue can tell whether
    it said the same thing (the first version stands either way)."""
    row = conn.execute(
        "SELECT url, body, key_id FROM webhook_outbox WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else (str(row[0]), bytes(row[1]), str(row[2]))


def counts(conn: Conn) -> dict[str, int]:
    """Row counts by state and the attempts made over all rows (the outbox is the truth)."""
    found = {"pending": 0, "sent": 0, "dead": 0, "attempts": 0}
    for state, n, attempts in conn.execute(
        "SELECT state, count(*), coalesce(sum(attempts), 0) FROM webhook_outbox GROUP BY state"
    ):
        found[str(state)] = int(n)
        found["attempts"] += int(attempts)
    return found


def sent_bodies(conn: Conn, key_id: str) -> list[bytes]:
    """The stored bodies of the rows signed with `key_id` that were sent."""
    rows = conn.execute(
        "SELECT body FROM webhook_outbox WHERE key_id=? AND state='sent'", (key_id,)
    ).fetchall()
    return [bytes(r[0]) for r in rows]


def oldest_pending_ns(conn: Conn) -> int | None:
    """When the oldest row still waiting to be sent was enqueued (None: nothing waits)."""
    row = conn.execute(
        "SELECT min(created_ns) FROM webhook_outbox WHERE state = 'pending'"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def entry(conn: Conn, event_id: str) -> OutboxEntry | None:
    """The outbox row for one event id, whatever its state."""
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else OutboxEntry._from_row(row)


def for_events(conn: Conn, event_ids: Sequence[str]) -> list[OutboxEntry]:
    """The rows of these event ids, oldest first (the console's page of one parcel asks with
    the ids its timeline entries gave their notifications: `<entry uuid>:<audience>`).
    Looked up by the unique event id, a few hundred at a time."""
    found: list[OutboxEntry] = []
    ids = list(dict.fromkeys(event_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found += [
            OutboxEntry._from_row(r)
            for r in conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox "
                f"WHERE event_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
        ]
    return sorted(found, key=lambda e: e.id)


def dead_letters(conn: Conn, limit: int | None = None) -> list[OutboxEntry]:
    """Dead letters, oldest first: what a person must look at (kept forever, never deleted)."""
    sql = f"SELECT {_ENTRY_COLUMNS} FROM webhook_outbox WHERE state = 'dead' ORDER BY id"
    params: tuple[int, ...] = ()
    if limit is not None:
        sql += " LIMIT ?"
        params = (int(limit),)
    return [OutboxEntry._from_row(r) for r in conn.execute(sql, params)]


def dead_recent(conn: Conn, limit: int) -> list[tuple[Any, ...]]:
    """(event_id, url, key_id, attempts, last_error, status_code, dead_ns) of the newest dead
    letters, at most `limit`, bodies left out (the console lists them; a body is for a person
    who opens one)."""
    return conn.execute(
        "SELECT event_id, url, key_id, attempts, last_error, status_code, dead_ns "
        "FROM webhook_outbox WHERE state = 'dead' ORDER BY dead_ns DESC, id DESC LIMIT ?",
        (int(limit),),
    ).fetchall()


def dead_count(conn: Conn) -> int:
    """Dead letters (counted on the state index)."""
    return int(
        conn.execute("SELECT count(*) FROM webhook_outbox WHERE state = 'dead'").fetchone()[0]
    )


def retry_dead(conn: Conn, event_id: str) -> bool:
    """A dead letter pending again with a fresh budget of attempts, due at once on any clock
    (next_attempt_ns = 0); its last error stays until the next attempt replaces it. True if a
    dead row changed."""
    cur = conn.execute(
        "UPDATE webhook_outbox SET state = 'pending', attempts = 0, next_attempt_ns = 0, "
        "dead_ns = NULL WHERE event_id = ? AND state = 'dead'",
        (event_id,),
    )
    return cur.rowcount == 1


# --- the sender's claim ------------------------------------------------------------------------


def due(conn: Conn, database: DepotDatabase, *, now_ns: int, limit: int) -> list[Due]:
    """Inside the caller's claiming transaction: up to `limit` pending rows due by `now_ns`,
    oldest first, locked against the other workers (`skip_locked`: rows one of them is
    claiming are passed over, not waited for). The caller leases the ones it sends in the same
    transaction; the others stay free for any worker."""
    rows = conn.execute(
        "SELECT id, event_id, url, body, key_id, attempts FROM webhook_outbox "
        "WHERE state = 'pending' AND next_attempt_ns <= ? ORDER BY id LIMIT ?"
        + database.skip_locked,
        (now_ns, limit),
    ).fetchall()
    return [
        Due(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), str(r[4]), int(r[5])) for r in rows
    ]


def lease(conn: Conn, row_id: int, until_ns: int) -> None:
    """Claim a row by moving its next attempt past the POST: no worker finds it due meanwhile,
    and a worker killed half-way lets go when `until_ns` passes."""
    conn.execute(
        "UPDATE webhook_outbox SET next_attempt_ns = ? WHERE id = ?", (until_ns, row_id)
    )


def release(conn: Conn, row_ids: Iterable[int], now_ns: int) -> None:
    """Rows whose POST was cut off (a stop) are due again at `now_ns`, not when their lease
    ends; a row recorded meanwhile (no longer pending) is left as it is."""
    for row_id in row_ids:
        conn.execute(
            "UPDATE webhook_outbox SET next_attempt_ns = ? WHERE id = ? AND state = 'pending'",
            (now_ns, row_id),
        )


def next_due_ns(conn: Conn, now_ns: int) -> int | None:
    """When the next pending row falls due after `now_ns`, or None if none is waiting (the
    sender sleeps until then)."""
    row = conn.execute(
        "SELECT min(next_attempt_ns) FROM webhook_outbox "
        "WHERE state = 'pending' AND next_attempt_ns > ?",
        (now_ns,),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


# --- outcomes ----------------------------------------------------------------------------------
# Each touches only a row still pending: a row an operator or another worker settled meanwhile
# keeps what they wrote.


def mark_sent(conn: Conn, row_id: int, *, attempts: int, now_ns: int, status: int | None) -> None:
    """The receiver answered 2xx: the row is sent, for good."""
    conn.execute(
        "UPDATE webhook_outbox SET state = 'sent', attempts = ?, sent_ns = ?, "
        "status_code = ? WHERE id = ? AND state = 'pending'",
        (attempts, now_ns, status, row_id),
    )


def schedule_retry(
    conn: Conn,
    row_id: int,
    *,
    attempts: int,
    next_attempt_ns: int,
    error: str,
    status: int | None,
) -> None:
    """An attempt failed and another is due at `next_attempt_ns` (the sender chose when)."""
    conn.execute(
        "UPDATE webhook_outbox SET attempts = ?, next_attempt_ns = ?, last_error = ?, "
        "status_code = ? WHERE id = ? AND state = 'pending'",
        (attempts, next_attempt_ns, error, status, row_id),
    )


def mark_dead(
    conn: Conn, row_id: int, *, attempts: int, now_ns: int, error: str, status: int | None
) -> None:
    """The row is a dead letter: kept with its body and last error for a person to look at."""
    conn.execute(
        "UPDATE webhook_outbox SET state = 'dead', attempts = ?, dead_ns = ?, "
        "last_error = ?, status_code = ? WHERE id = ? AND state = 'pending'",
        (attempts, now_ns, error, status, row_id),
    )
