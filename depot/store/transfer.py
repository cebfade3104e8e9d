"""Moving a depot from one database to another (`lastmile depot migrate --from … --to …`).

A carrier that outgrows the embedded SQLite file moves its depot to PostgreSQL (or takes a
SQLite copy of a PostgreSQL depot, for a test bench). Every table is copied row for row in
one transaction on the target, keeping every identifier (the events' `rowid` too: the parcel
book's queue and anomalies refer to it), then the target is checked on its own: the same
number of rows in every table, and every device journal's hash chain recomputed from its
genesis to its stored head. Only then does it say the copy is good.

Must never: copy into a database that already holds a depot (it refuses, and changes nothing),
or report success without the checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depot.store.base import Conn, DepotDatabase
from depot.store.errors import StoreError
from depot.store.sqlite import Database
from sync.wire import chain_hash, genesis_hash

__all__ = ["TABLES", "ChainReport", "CopyReport", "copy_depot", "verify_chains"]

# Every table of the schema, in an order that copies what others refer to first.
TABLES = (
    "streams",
    "events",
    "gaps",
    "quarantine",
    "device_status",
    "photo_chunks",
    "photos",
    "parcels",
    "timeline",
    "projection",
    "vans",
    "unmatched",
    "van_days",
    "locker_commands",
    "webhook_outbox",
    "manifests",
    "depot_commands",
    "unprojected",
    "reactions",
    "alarms",
    "losses",
    "collections",
    "locker_drops",
    "van_positions",
    "tracking_links",
    "console_users",
    "console_sessions",
    "api_tokens",
    "card_codes",
    "handovers",
    "customer_returns",
    "return_salts",
    "customer_care",
)
# Columns PostgreSQL numbers itself (identity): copied as they are, then its counters moved on.
_IDENTITY = {"events": "rowid", "gaps": "id", "quarantine": "id", "timeline": "id",
             "webhook_outbox": "id", "reactions": "id", "alarms": "id", "losses": "id",
             "collections": "id", "locker_drops": "id"}
_BATCH = 500


@dataclass
class ChainReport:
    """What recomputing every device journal's hash chain found."""

    chains: int = 0
    events: int = 0
    breaks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


@dataclass
class CopyReport:
    source: str
    target: str
    rows: dict[str, int]
    chains: ChainReport

    @property
    def ok(self) -> bool:
        return self.chains.ok

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "rows": self.rows,
            "chains": self.chains.chains,
            "events_verified": self.chains.events,
            "chain_breaks": self.chains.breaks,
            "ok": self.ok,
        }


def verify_chains(conn: Conn) -> ChainReport:
    """Recompute every stream's hash chain from its genesis: each event's hash, no seq missing,
    and the stream's head where the chain ends. One line per break, naming where."""
    report = ChainReport()
    streams = conn.execute(
        "SELECT device, journal, head_seq, head_hash FROM streams ORDER BY device, journal"
    ).fetchall()
    for device, journal, head_seq, head_hash in streams:
        report.chains += 1
        prev, expected = genesis_hash(str(journal)), 1
        rows = conn.execute(
            "SELECT seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind, payload, hash "
            "FROM events WHERE device=? AND journal=? ORDER BY seq",
            (device, journal),
        )
        where = f"{device}/{journal}"
        for seq, uuid, boot, mono, wall, synced, kind, payload, stored in rows:
            if int(seq) != expected:
                report.breaks.append(f"{where}: seq {expected} missing (next is {seq})")
                break
            prev = chain_hash(
                prev, int(seq), str(uuid), str(boot), int(mono), int(wall), bool(synced),
                str(kind), str(payload),
            )
            if prev != bytes(stored):
                report.breaks.append(f"{where}: event {seq} does not hash to its stored hash")
                break
            report.events += 1
            expected += 1
        else:
            if expected - 1 != int(head_seq) or prev != bytes(head_hash):
                report.breaks.append(f"{where}: the chain ends at {expected - 1}, head {head_seq}")
    return report


def _count(conn: Conn, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _columns(source: DepotDatabase, table: str) -> list[str]:
    with source.reading() as conn:
        cur = conn.execute(f"SELECT * FROM {table} LIMIT 0")
        names = [str(d[0]) for d in cur.description]
    if table == "events" and "rowid" not in names:
        names.insert(0, "rowid")  # SQLite's built-in column: not in SELECT *
    return names


def copy_depot(source: DepotDatabase, target: DepotDatabase) -> CopyReport:
    """Copy every row of `source` into the empty `target`, then check the target."""
    if source.schema_version != target.schema_version:
        raise StoreError(
            f"schema {source.schema_version} of {source.where} is not "
            f"{target.schema_version} of {target.where}"
        )
    with target.reading() as conn:
        held = {t: n for t in TABLES if t != "projection" and (n := _count(conn, t))}
    if held:
        what = ", ".join(f"{t}: {n}" for t, n in held.items())
        raise StoreError(
            f"{target.where} already holds a depot ({what}): copy only into an empty database"
        )
    rows: dict[str, int] = {}
    with target.transaction() as out:
        out.execute("DELETE FROM projection")  # the migrations' starting row; the source's wins
        for table in TABLES:
            columns = _columns(source, table)
            rows[table] = _copy_table(source, out, table, columns, target.dialect)
        if target.dialect == "postgresql":
            for table, column in _IDENTITY.items():
                out.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
                )
    with target.reading() as conn:
        counted = {t: _count(conn, t) for t in TABLES}
        if counted != rows:
            raise StoreError(f"row counts differ after the copy: copied {rows}, found {counted}")
        chains = verify_chains(conn)
    return CopyReport(source.where, target.where, rows, chains)


def _copy_table(
    source: DepotDatabase, out: Conn, table: str, columns: Sequence[str], dialect: str
) -> int:
    names = ", ".join(f'"{c}"' for c in columns)
    overriding = " OVERRIDING SYSTEM VALUE" if dialect == "postgresql" else ""
    insert = (
        f"INSERT INTO {table} ({names}){overriding} VALUES ({', '.join('?' * len(columns))})"
    )
    copied = 0
    with source.reading() as conn:
        cursor = conn.execute(f"SELECT {names} FROM {table}")
        batch: list[tuple[Any, ...]] = []
        for row in cursor:
            batch.append(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
            if len(batch) == _BATCH:
                out.executemany(insert, batch)
                copied += len(batch)
                batch.clear()
        if batch:
            out.executemany(insert, batch)
            copied += len(batch)
    return copied


def open_source(spec: str | Path) -> DepotDatabase:
    """The depot to copy from; a SQLite path must exist (a typo must not make an empty one)."""
    from depot.store import is_postgres_url, open_database

    if not is_postgres_url(spec) and not Path(spec).exists():
        raise StoreError(f"no depot database at {spec}")
    return open_database(spec) if is_postgres_url(spec) else Database(spec)
