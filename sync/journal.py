"""The device's event journal: one SQLite file that is also its outbox.

Owns: gapless per-device sequence numbers, the hash chain, durable commit before anyone is
told, the depot's acknowledgements, retention and pruning, and recovery from a corrupt file.
Must never: confirm an event it has not fsync'd, delete an event the depot has not
acknowledged, or delete a database it cannot read (it is moved aside for a person).

One process writes a journal at a time (an advisory lock file enforces it); inside the process
appends and acknowledgements share one writer connection, readers use their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sync.clock import Clock, SystemClock
from sync.errors import JournalError, JournalFull
from sync.wire import Event, canonical_payload, chain_hash, genesis_hash

log = logging.getLogger("sync.journal")

SCHEMA_VERSION = 1
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
ALARM_KIND = "alarm"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    uuid        TEXT NOT NULL UNIQUE,
    boot_id     TEXT NOT NULL,
    mono_ns     INTEGER NOT NULL,
    wall_ns     INTEGER NOT NULL,
    wall_synced INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    hash        BLOB NOT NULL
);
CREATE TABLE ack_log (seq INTEGER PRIMARY KEY, wall_ns INTEGER NOT NULL);
"""

_EVENT_COLUMNS = "seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind, payload, hash"


def _pragmas(conn: sqlite3.Connection) -> None:
    # WAL + synchronous=FULL: every COMMIT fsyncs the WAL before returning, so a commit that
    # returned survives a power cut. busy_timeout bounds waits on the reader/writer handoff.
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"journal cannot use WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Journal:
    """Append-only events with a durable commit, read by the uplink, pruned after the depot acks.

    Trouble with the journal itself is recorded as an event too: the first event of a fresh
    journal after a recovery is an `alarm` saying where the old file went and why.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device_id: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_pages: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.clock: Clock = clock or SystemClock()
        self.retention_s = retention_s
        self._max_pages = max_pages
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self.moved_aside: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = self._take_process_lock()
        try:
            recovery_reason = self._open_checked()
            if recovery_reason is not None:
                self.moved_aside = self._move_aside()
                log.error(
                    "journal %s moved aside to %s: %s", self.path, self.moved_aside, recovery_reason
                )
                if self._open_checked() is not None:  # a fresh file cannot be corrupt
                    raise JournalError(f"cannot create a fresh journal at {self.path}")
        except BaseException:
            os.close(self._lockfile)
            raise
        self._reader = self._connect()
        meta = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
        self.journal_id: str = meta["journal_id"]
        self._last_seq = int(meta["last_seq"])
        self._last_hash = bytes.fromhex(meta["last_hash"])
        self._acked = int(meta["acked_seq"])
        self._pruned_seq = int(meta["pruned_seq"])
        self._pruned_hash = bytes.fromhex(meta["pruned_hash"])
        if self.moved_aside is not None:
            self.append(
                ALARM_KIND,
                {
                    "alarm": "journal_corrupt",
                    "reason": recovery_reason,
                    "moved_to": str(self.moved_aside),
                },
            )

    # --- opening, checking, recovering -----------------------------------------------------

    def _take_process_lock(self) -> int:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(f"journal {self.path} is in use by another process") from None
        return fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            _pragmas(conn)
            if self._max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_checked(self) -> str | None:
        """Open the writer connection; return why the file must be moved aside, or None."""
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._w = self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not existed:
                raise JournalError(f"cannot create journal {self.path}: {exc}") from exc
            if _is_full(exc):
                raise JournalFull(f"disk full while opening journal {self.path}") from exc
            return f"cannot open: {exc}"
        try:
            version = self._w.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = self._w.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    return "tables present but no schema version"
                self._create()
                return None
            if version > SCHEMA_VERSION:
                # Written by newer software: not corrupt, and not ours to move.
                self._w.close()
                raise JournalError(
                    f"journal schema {version} is newer than this software ({SCHEMA_VERSION})"
                )
            problems = [r[0] for r in self._w.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                return "integrity check failed: " + "; ".join(problems[:5])
            meta = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("device_id") != self.device_id:
                self._w.close()
                raise JournalError(
                    f"journal {self.path} belongs to device {meta.get('device_id')!r}, "
                    f"not {self.device_id!r}"
                )
            self._check_head(meta)
        except JournalError:
            raise
        except (sqlite3.DatabaseError, KeyError, ValueError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_full(exc):
                raise JournalFull(f"disk full while checking journal {self.path}") from exc
            return f"check failed: {exc!r}"
        return None

    def _check_head(self, meta: Mapping[str, str]) -> None:
        row = self._w.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        last_seq = int(meta["last_seq"])
        if row is not None and (row[0] != last_seq or bytes(row[1]).hex() != meta["last_hash"]):
            raise ValueError(f"head says {last_seq} but the last event is {row[0]}")
        if int(meta["acked_seq"]) > last_seq:
            raise ValueError("acknowledged beyond the last event")

    def _create(self) -> None:
        journal_id = uuid.uuid4().hex
        self._w.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._w.execute(statement)
            genesis = genesis_hash(journal_id).hex()
            self._w.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("journal_id", journal_id),
                    ("device_id", self.device_id),
                    ("created_wall_ns", str(self.clock.wall_ns())),
                    ("last_seq", "0"),
                    ("last_hash", genesis),
                    ("acked_seq", "0"),
                    ("pruned_seq", "0"),
                    ("pruned_hash", genesis),
                ],
            )
            self._w.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._w.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            raise
        _fsync_dir(self.path.parent)

    def _move_aside(self) -> Path:
        with contextlib.suppress(Exception):
            self._w.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{target}{suffix}")
        _fsync_dir(self.path.parent)
        return target

    # --- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction: all of it commits (fsync'd), or nothing does.

        SQLITE_FULL becomes JournalFull so the courier hears "storage full", not a crash.
        """
        try:
            self._w.execute("BEGIN IMMEDIATE")
            yield
            self._w.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            if _is_full(exc):
                raise JournalFull(f"storage full: {what} ({exc})") from exc
            raise JournalError(f"{what}: {exc}") from exc
        except BaseException:
            # The caller's own logic refused mid-transaction: nothing of it may remain.
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            raise

    def append(self, kind: str, payload: Mapping[str, Any]) -> Event:
        """Store one event durably and return it; only then may anyone be told.

        Raises JournalFull when the disk is full (nothing stored) and JournalError on any
        other storage failure (nothing stored either: the transaction is rolled back).
        """
        return self.append_many([(kind, payload)])[0]

    def append_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Event]:
        """Store several events in one durable commit: all of them, or none.

        For facts that happen together (a door closed with a parcel inside) and for bulk
        imports; the events get consecutive sequence numbers.
        """
        with self.transaction("event not stored") as tx:
            return [tx.append(kind, payload) for kind, payload in items]

    @contextlib.contextmanager
    def transaction(self, what: str = "write failed") -> Iterator[JournalTransaction]:
        """Events and the device's own state tables, committed together or not at all.

        A device that keeps derived state (which compartment holds which parcel) writes it in
        the same transaction as the event that changed it, so a power cut can never leave the
        state and the journal telling different stories. Nothing is visible to readers, and
        no one may be told, before the block exits without an exception.
        """
        with self._write_lock:
            tx = JournalTransaction(self, self._last_seq, self._last_hash)
            with self._transaction(what):
                yield tx
                events = tx.flush()
            self._last_seq, self._last_hash = tx.seq, tx.hash
        for listener in self._listeners:
            if events:
                try:
                    listener(events)
                except Exception:
                    log.exception("journal listener failed")

    def add_listener(self, listener: Callable[[list[Event]], None]) -> None:
        """Call `listener(events)` after every commit that stored events (outside all locks).

        The uplink uses it to send at once instead of on its next tick; tests use it to await
        facts instead of polling the file.
        """
        self._listeners.append(listener)

    def ensure_tables(self, owner: str, version: int, statements: Sequence[str]) -> None:
        """Create a device's own tables in this file once, versioned under `schema:<owner>`.

        Sync never interprets these tables; it only keeps them in the same durable file.
        """
        key = f"schema:{owner}"
        with self._write_lock:
            row = self._w.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is not None and int(row[0]) == version:
                return
            if row is not None:
                raise JournalError(f"{owner} tables are at version {row[0]}, not {version}")
            with self._transaction(f"cannot create {owner} tables"):
                for statement in statements:
                    self._w.execute(statement)
                self._w.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, str(version)))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read committed data (events or a device's own tables) on the reader connection."""
        with self._read_lock:
            return list(self._reader.execute(sql, params).fetchall())

    def mark_acked(self, seq: int) -> bool:
        """Record the depot's acknowledgement; returns True when it moved forward.

        An acknowledgement beyond what this journal holds is refused: it belongs to something
        else (another journal of this device) and must not make us drop anything.
        """
        with self._write_lock:
            if seq <= self._acked:
                return False
            if seq > self._last_seq:
                raise JournalError(f"ack {seq} is beyond the last event {self._last_seq}")
            with self._transaction(f"ack {seq} not recorded"):
                self._w.execute("UPDATE meta SET value=? WHERE key='acked_seq'", (str(seq),))
                self._w.execute(
                    "INSERT OR REPLACE INTO ack_log(seq, wall_ns) VALUES (?, ?)",
                    (seq, self.clock.wall_ns()),
                )
            self._acked = seq
            return True

    def prune(self) -> int:
        """Delete events acknowledged longer ago than the retention; returns how many.

        Retention runs on the wall clock; a wall clock that jumps can only make an acknowledged
        event go early or late, never an unacknowledged one.
        """
        cutoff = self.clock.wall_ns() - int(self.retention_s * 1e9)
        with self._write_lock:
            row = self._w.execute(
                "SELECT max(seq) FROM ack_log WHERE wall_ns <= ?", (cutoff,)
            ).fetchone()
            through = row[0] if row and row[0] is not None else 0
            through = min(through, self._acked)
            if through <= self._pruned_seq:
                return 0
            with self._transaction("prune failed"):
                hrow = self._w.execute("SELECT hash FROM events WHERE seq=?", (through,)).fetchone()
                new_hash = bytes(hrow[0]) if hrow is not None else self._pruned_hash
                n = self._w.execute("DELETE FROM events WHERE seq <= ?", (through,)).rowcount
                self._w.execute("DELETE FROM ack_log WHERE seq < ?", (through,))
                self._w.execute("UPDATE meta SET value=? WHERE key='pruned_seq'", (str(through),))
                self._w.execute(
                    "UPDATE meta SET value=? WHERE key='pruned_hash'", (new_hash.hex(),)
                )
            self._pruned_seq, self._pruned_hash = through, new_hash
            return int(n)

    # --- reading ---------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def unacked(self) -> int:
        return self._last_seq - self._acked

    def read(self, after_seq: int, limit: int) -> tuple[bytes, list[Event]]:
        """Up to `limit` events after `after_seq`, with the hash of event `after_seq`.

        The hash lets the depot check that the batch continues the chain it already holds.
        """
        with self._read_lock:
            if after_seq == self._pruned_seq:
                prev = self._pruned_hash
            else:
                row = self._reader.execute(
                    "SELECT hash FROM events WHERE seq=?", (after_seq,)
                ).fetchone()
                if row is None:
                    raise JournalError(f"event {after_seq} is no longer in the journal")
                prev = bytes(row[0])
            rows = self._reader.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return prev, [_row_event(r) for r in rows]

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for conn in (self._reader, self._w):
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            with contextlib.suppress(OSError):
                os.close(self._lockfile)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JournalTransaction:
    """The write side of `Journal.transaction()`: append events, update the device's tables."""

    def __init__(self, journal: Journal, seq: int, prev_hash: bytes) -> None:
        self._journal = journal
        self.seq = seq
        self.hash = prev_hash
        self._rows: list[tuple[Any, ...]] = []
        self._events: list[Event] = []

    def append(self, kind: str, payload: Mapping[str, Any]) -> Event:
        """Add an event; it is stored when the transaction commits, and only then real."""
        clock = self._journal.clock
        payload_json = canonical_payload(payload)
        self.seq += 1
        uid = uuid.uuid4().hex
        boot, mono, wall = clock.boot_id, clock.monotonic_ns(), clock.wall_ns()
        synced = clock.wall_synced()
        self.hash = chain_hash(
            self.hash, self.seq, uid, boot, mono, wall, synced, kind, payload_json
        )
        self._rows.append(
            (self.seq, uid, boot, mono, wall, int(synced), kind, payload_json, self.hash)
        )
        event = Event(self.seq, uid, boot, mono, wall, synced, kind, dict(payload), self.hash)
        self._events.append(event)
        return event

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run a statement on the device's own tables inside this transaction."""
        return self._journal._w.execute(sql, params)

    def flush(self) -> list[Event]:
        """Write the appended events (inside the transaction); returns them."""
        if not self._rows:
            return []
        w = self._journal._w
        w.executemany(
            f"INSERT INTO events({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", self._rows
        )
        w.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(self.seq),))
        w.execute("UPDATE meta SET value=? WHERE key='last_hash'", (self.hash.hex(),))
        self._rows = []
        events, self._events = self._events, []
        return events


def _row_event(r: tuple[Any, ...]) -> Event:
    return Event(
        seq=r[0],
        uuid=r[1],
        boot_id=r[2],
        mono_ns=r[3],
        wall_ns=r[4],
        wall_synced=bool(r[5]),
        kind=r[6],
        payload=json.loads(r[7]),
        hash=bytes(r[8]),
    )
