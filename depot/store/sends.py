"""The depot service's once-only sends: every statement on `manifests` and `depot_commands`.

`depot.service` decides what a van or a locker is sent and publishes it; the rows it keeps
for that are written here first (a manifest issued, a command queued), claimed by one worker
before it publishes them, and marked published only after the broker's PUBACK. One named
function per statement, so the depot's database is talked to by `depot.store` alone. The SQL
is the depot's shared dialect (`?`), run as it is by SQLite and translated by
`depot.store.postgres` for PostgreSQL.

Must never: let two workers publish the same row at once (a claim is a lease, taken in the
transaction that chose the row, and rows another worker holds are skipped), or mark a row
published that the broker did not acknowledge (the caller marks it after the PUBACK).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from depot.store.base import Conn, DepotDatabase

__all__ = [
    "COMMANDS",
    "MANIFESTS",
    "Claimable",
    "add_command",
    "claim_commands",
    "claim_manifests",
    "current_manifest_body",
    "issue_manifest",
    "mark_command_published",
    "mark_manifest_published",
    "next_manifest_version",
    "release",
    "unsent_count",
]


@dataclass(frozen=True)
class Claimable:
    """A table of once-only sends: its key is the first `key_columns` columns selected."""

    table: str
    key: str
    key_columns: int


MANIFESTS = Claimable("manifests", "van=? AND day=? AND version=?", 3)
COMMANDS = Claimable("depot_commands", "id=?", 1)


# --- manifests ---------------------------------------------------------------------------------


def issue_manifest(
    conn: Conn, *, van: str, day: str, version: int, body: bytes, issued_ns: int
) -> None:
    """Keep a new manifest version of a van's day, unpublished: the newest issued is the one
    that gets published (a van ignores a version it already runs)."""
    conn.execute(
        "INSERT INTO manifests (van, day, version, body, issued_ns) VALUES (?,?,?,?,?)",
        (van, day, version, body, issued_ns),
    )


def current_manifest_body(conn: Conn, van: str, day: str | None = None) -> bytes | None:
    """The body of a van's newest manifest: the last issued (of any day), or the highest
    version of `day`; None if it has none."""
    if day is None:
        row = conn.execute(
            "SELECT body FROM manifests WHERE van=? ORDER BY issued_ns DESC, version DESC "
            "LIMIT 1",
            (van,),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT body FROM manifests WHERE van=? AND day=? ORDER BY version DESC "
            "LIMIT 1",
            (van, day),
        ).fetchone()
    return bytes(row[0]) if row else None


def next_manifest_version(conn: Conn, van: str, day: str) -> int:
    """The version a new manifest of this van's day takes: one past the highest kept, 1 for
    the first."""
    row = conn.execute(
        "SELECT max(version) FROM manifests WHERE van=? AND day=?", (van, day)
    ).fetchone()
    return int(row[0] or 0) + 1


def claim_manifests(
    database: DepotDatabase, *, now_ns: int, until_ns: int
) -> list[tuple[Any, ...]]:
    """The newest unpublished manifest of each van not claimed by a live lease, as
    `(van, day, version, body)`, each leased to this worker until `until_ns`."""
    return _claim(
        database,
        MANIFESTS,
        "SELECT m.van, m.day, m.version, m.body FROM manifests m WHERE m.published_ns "
        "IS NULL AND (m.claimed_until IS NULL OR m.claimed_until < ?) AND m.issued_ns = "
        "(SELECT max(issued_ns) FROM manifests WHERE van=m.van)",
        now_ns,
        until_ns,
    )


def mark_manifest_published(
    conn: Conn, *, van: str, day: str, version: int, now_ns: int
) -> None:
    """The broker has this version: it and every older unpublished version of the van's day
    (which it replaces, retained) are published."""
    conn.execute(
        "UPDATE manifests SET published_ns=? WHERE van=? AND day=? AND version<=? "
        "AND published_ns IS NULL",
        (now_ns, van, day, version),
    )


# --- signed commands ---------------------------------------------------------------------------


def add_command(
    conn: Conn, *, command_id: str, target: str, action: str, args: str, created_ns: int
) -> None:
    """Queue a command (its arguments as JSON) to be signed and published; it is signed
    afresh, with this id, each time it goes out."""
    conn.execute(
        "INSERT INTO depot_commands (id, target, action, args, created_ns) "
        "VALUES (?,?,?,?,?)",
        (command_id, target, action, args, created_ns),
    )


def claim_commands(
    database: DepotDatabase, *, now_ns: int, until_ns: int
) -> list[tuple[Any, ...]]:
    """Unpublished commands not claimed by a live lease, oldest first, as
    `(id, target, action, args)`, each leased to this worker until `until_ns`."""
    return _claim(
        database,
        COMMANDS,
        "SELECT id, target, action, args FROM depot_commands WHERE published_ns IS NULL "
        "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY created_ns",
        now_ns,
        until_ns,
    )


def mark_command_published(conn: Conn, command_id: str, now_ns: int) -> None:
    """The broker has the command: published, and one more attempt counted."""
    conn.execute(
        "UPDATE depot_commands SET published_ns=?, attempts=attempts+1 WHERE id=?",
        (now_ns, command_id),
    )


# --- both -------------------------------------------------------------------------------------


def command_published(conn: Conn, command_id: str) -> bool:
    """Whether the broker has taken the command (at least once)."""
    row = conn.execute(
        "SELECT published_ns FROM depot_commands WHERE id=?", (command_id,)
    ).fetchone()
    return row is not None and row[0] is not None


def unsent_count(conn: Conn) -> int:
    """Commands not yet published, plus vans whose newest manifest is not: what the service
    still owes the broker (an older unpublished version is replaced, not owed)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM depot_commands WHERE published_ns IS NULL) + "
        "(SELECT count(*) FROM manifests m WHERE published_ns IS NULL AND issued_ns = "
        "(SELECT max(issued_ns) FROM manifests WHERE van=m.van))"
    ).fetchone()
    return int(row[0])


def _claim(
    database: DepotDatabase, what: Claimable, select: str, now_ns: int, until_ns: int
) -> list[tuple[Any, ...]]:
    """The rows `select` finds (its one parameter: now), each leased until `until_ns`.

    Chosen and leased in one transaction: rows another worker holds are skipped (`FOR UPDATE
    SKIP LOCKED`, or the whole-file lock of SQLite); a lease that ran out, its worker killed
    half-way, is claimed again.
    """
    with database.transaction() as conn:
        rows = [tuple(r) for r in conn.execute(select + database.skip_locked, (now_ns,))]
        for row in rows:
            conn.execute(
                f"UPDATE {what.table} SET claimed_until=? WHERE {what.key}",
                (until_ns, *row[: what.key_columns]),
            )
    return rows


def release(database: DepotDatabase, what: Claimable, rows: Sequence[tuple[Any, ...]]) -> None:
    """Give back claimed rows not sent (the broker went away), so the next pass of any worker
    takes them at once instead of when their lease ends."""
    with database.transaction() as conn:
        for row in rows:
            conn.execute(
                f"UPDATE {what.table} SET claimed_until=NULL WHERE {what.key}",
                row[: what.key_columns],
            )
