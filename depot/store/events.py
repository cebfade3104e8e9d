"""The depot's device events and photos in its database: stored once, chains verified.

The one owner of the tables `streams`, `events`, `gaps`, `quarantine`, `device_status`,
`photo_chunks`, `photos` and `unprojected` (the events the parcel book has yet to apply). Every
other part of the depot reaches them through the named methods here: the MQTT ingest
(`depot.ingest`) stores batches and photo chunks, the parcel book (`depot.tracking`) takes the
events waiting for it, the HTTP API serves photos and each device's presence.

Must never: store a batch that does not continue its journal's stored hash chain, or keep a
photo that does not hash to its name.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depot.store.base import Conn, DepotDatabase
from depot.store.errors import StoreError
from depot.store.migrations import LATEST
from sync.errors import ChainConflict
from sync.journal import (
    ALARM_KIND,
    EVENT_DAMAGED,
    JOURNAL_CORRUPT,
    JOURNAL_LOST,
    JOURNAL_REFUSED,
    JOURNAL_ROLLED_BACK,
)
from sync.wire import (
    Ack,
    Batch,
    BatchHead,
    Event,
    PhotoAck,
    PhotoChunk,
    canonical_payload,
    genesis_hash,
    photo_topic,
)

__all__ = [
    "STORE_SCHEMA_VERSION",
    "DepotStore",
    "DepotStoreError",
    "IngestResult",
    "device_presence",
    "event_at",
    "events_waiting",
    "forget_waiting",
    "loss_counts",
    "photo_in",
    "waiting_count",
]

STORE_SCHEMA_VERSION = LATEST  # the one depot schema version (depot.store.migrations)
DepotStoreError = StoreError  # the name callers of the event store have always caught


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: the ack to send, how many events were new, and any gap seen."""

    ack: Ack
    stored: int
    duplicates: int
    gap: bool
    gap_recorded_before: bool = False  # this hole was already recorded (and a resend asked)


class DepotStore:
    """The depot's device events and photos, kept in the depot's `Database`.

    Callers hold no lock: every method takes the database's own.
    """

    def __init__(self, database: str | Path | DepotDatabase) -> None:
        # Handed the depot's database, it shares its one connection and lock; handed a path or
        # URL (a tool or a test that needs only the events), it opens and owns one.
        self._owns = not isinstance(database, DepotDatabase)
        from depot.store import open_database

        self.database = open_database(database)
        self.path = self.database.path
        self._lock = self.database.lock
        self._db = self.database.connection  # used holding _lock

    def close(self) -> None:
        if self._owns:
            self.database.close()

    # --- ingest --------------------------------------------------------------------------

    def ingest(self, batch: Batch, *, record_gap: bool = True) -> IngestResult:
        """Store the new events of a verified batch in one transaction and say what to ack.

        A batch that starts beyond the stored head is a gap: nothing is stored (the chain
        cannot be checked across it) and the ack asks the device to resend. A batch that
        overlaps what is stored must agree with it hash for hash, or it is a fork.
        `record_gap=False` only looks: a worker that expects the missing batch to be stored
        by another worker any moment tries again before it calls the gap a gap.
        """
        now = time.time_ns()
        with self.database.transaction():
            result = self._ingest(batch, now, record_gap)
        return result

    def _ingest(self, batch: Batch, now: int, record_gap: bool) -> IngestResult:
        dev, jnl = batch.device, batch.journal_id
        self.database.lock_stream(self._db, dev, jnl)
        row = self._db.execute(
            "SELECT head_seq, head_hash, nacked_at FROM streams WHERE device=? AND journal=?",
            (dev, jnl),
        ).fetchone()
        if row is None:
            head, head_hash, nacked_at = 0, genesis_hash(jnl), None
            self._db.execute(
                "INSERT INTO streams(device, journal, head_seq, head_hash, first_seen_ns, "
                "last_seen_ns) VALUES (?,?,?,?,?,?)",
                (dev, jnl, 0, head_hash, now, now),
            )
        else:
            head, head_hash, nacked_at = row[0], bytes(row[1]), row[2]
        first = batch.first_seq
        if first > head + 1:
            if not record_gap:
                known = nacked_at == head
                return IngestResult(Ack(jnl, head, None), 0, 0, gap=True, gap_recorded_before=known)
            self._db.execute(
                "INSERT INTO gaps(device, journal, expected_seq, got_seq, received_ns) "
                "VALUES (?,?,?,?,?)",
                (dev, jnl, head + 1, first, now),
            )
            # Ask for a resend once per head position: the batches behind the lost one
            # would otherwise each trigger another rewind on the device.
            resend = head + 1 if nacked_at != head else None
            self._db.execute(
                "UPDATE streams SET nacked_at=?, last_seen_ns=? WHERE device=? AND journal=?",
                (head, now, dev, jnl),
            )
            return IngestResult(Ack(jnl, head, resend), 0, 0, gap=True)
        expected_prev = head_hash if first == head + 1 else self._hash_at(dev, jnl, first - 1)
        if batch.prev_hash != expected_prev:
            raise ChainConflict(
                f"batch for {dev}/{jnl} at {first} does not continue the stored chain"
            )
        fresh = [e for e in batch.events if e.seq > head]
        duplicates = len(batch.events) - len(fresh)
        if duplicates:
            overlap_end = batch.events[duplicates - 1]
            if overlap_end.hash != self._hash_at(dev, jnl, overlap_end.seq):
                raise ChainConflict(f"batch for {dev}/{jnl} contradicts stored events (fork)")
        self._db.executemany(
            "INSERT INTO events(device, journal, seq, uuid, boot_id, mono_ns, wall_ns, "
            "wall_synced, kind, payload, hash, received_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    dev,
                    jnl,
                    e.seq,
                    e.uuid,
                    e.boot_id,
                    e.mono_ns,
                    e.wall_ns,
                    int(e.wall_synced),
                    e.kind,
                    canonical_payload(e.payload),
                    e.hash,
                    now,
                )
                for e in fresh
            ],
        )
        for e in fresh:
            if e.kind == ALARM_KIND and e.payload.get("alarm") in _LOSS_ALARMS:
                self._record_losses(dev, jnl, e, now)
        if fresh:
            # Queued for the parcel book's projection in the same transaction (one row each).
            self._db.execute(
                "INSERT INTO unprojected(rowid) SELECT rowid FROM events "
                "WHERE device=? AND journal=? AND seq BETWEEN ? AND ?",
                (dev, jnl, fresh[0].seq, fresh[-1].seq),
            )
            head, head_hash = fresh[-1].seq, fresh[-1].hash
        self._db.execute(
            "UPDATE streams SET head_seq=?, head_hash=?, last_seen_ns=? "
            "WHERE device=? AND journal=?",
            (head, head_hash, now, dev, jnl),
        )
        return IngestResult(Ack(jnl, head), len(fresh), duplicates, gap=False)

    def _record_losses(self, dev: str, jnl: str, alarm: Event, now: int) -> None:
        """A device's alarm says confirmed events of a journal are gone: record which.

        A break record stands for one event of its own journal. A journal that went back or
        vanished lost its events from the first one this depot does not hold up to how far it
        had got (open-ended when the device could not know). A malformed report is kept as
        its alarm says it, and records what can be read of it; it never stops the batch.
        """
        doc = alarm.payload
        name = str(doc.get("alarm"))
        reason = str(doc.get("reason", ""))[:500]
        rows: list[tuple[str, int, int | None]] = []
        if name == EVENT_DAMAGED:
            # The break record names its journal: carried into a new journal after a rollback,
            # it still speaks of the one it stood in.
            seq, named = _seq(doc.get("seq")), doc.get("journal")
            if seq is not None:
                rows.append((named if isinstance(named, str) and named else jnl, seq, seq))
        else:
            earlier = doc.get("earlier")
            reports = [doc, *(earlier if isinstance(earlier, list) else [])]
            for report in reports[:100]:
                if isinstance(report, dict):
                    rows.extend(self._losses_in(dev, report))
        for journal, first, last in rows[:10_000]:
            self._db.execute(
                "INSERT INTO losses(device, journal, first_seq, last_seq, reason, alarm, "
                "alarm_uuid, recorded_ns) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT (device, journal, first_seq) DO NOTHING",
                (dev, journal, first, last, reason, name, alarm.uuid, now),
            )

    def _losses_in(self, dev: str, report: dict[str, Any]) -> list[tuple[str, int, int | None]]:
        """The (journal, first, last) ranges one loss report names, less what is stored."""
        rows: list[tuple[str, int, int | None]] = []
        lost_journal, lost = report.get("journal"), report.get("lost")
        if isinstance(lost_journal, str) and lost_journal and isinstance(lost, dict):
            held = self._head(dev, lost_journal)
            first = max(held + 1, _seq(lost.get("from")) or 1)
            last = _seq(lost.get("to"))
            if last is None or first <= last:
                rows.append((lost_journal, first, last))
        damaged = report.get("damaged")
        if isinstance(damaged, dict) and isinstance(damaged.get("journal"), str):
            source = str(damaged["journal"])
            held = self._head(dev, source)
            seqs = damaged.get("seqs")
            for s in seqs if isinstance(seqs, list) else []:
                seq = _seq(s)
                if seq is not None and seq > held:
                    rows.append((source, seq, seq))
        return rows

    def _head(self, dev: str, jnl: str) -> int:
        row = self._db.execute(
            "SELECT head_seq FROM streams WHERE device=? AND journal=?", (dev, jnl)
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def holds(self, head: BatchHead) -> int | None:
        """The journal's stored head if every event of the batch is stored already, as the
        batch itself claims (its last hash is the stored one), else None.

        Such a batch (a resend after a lost ack, a reconnect) stores nothing, so its chain need
        not be recomputed: the stored chain was verified when it was stored.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT head_seq FROM streams WHERE device=? AND journal=?",
                (head.device, head.journal_id),
            ).fetchone()
            if row is None or int(row[0]) < head.last_seq:
                return None
            stored = self._hash_at(head.device, head.journal_id, head.last_seq)
        return int(row[0]) if stored == head.last_hash else None

    def _hash_at(self, dev: str, jnl: str, seq: int) -> bytes:
        if seq == 0:
            return genesis_hash(jnl)
        row = self._db.execute(
            "SELECT hash FROM events WHERE device=? AND journal=? AND seq=?", (dev, jnl, seq)
        ).fetchone()
        return bytes(row[0]) if row else b""

    # --- photos ----------------------------------------------------------------------------

    def photo_chunk(self, device: str, chunk: PhotoChunk) -> PhotoAck:
        """Keep a chunk that continues what the depot holds; say how much it holds now.

        Chunks are taken only in order: one that starts beyond the held bytes is answered with
        the held count (the device goes back), one already held is answered without storing.
        When the last byte is in, the whole photo must hash to its name, or it is thrown away
        (recorded in quarantine) and the device is asked for it again.
        """
        now = time.time_ns()
        with self.database.transaction():
            ack = self._photo_chunk(device, chunk, now)
        return ack

    def _photo_chunk(self, device: str, chunk: PhotoChunk, now: int) -> PhotoAck:
        sha = chunk.sha256
        if self._db.execute("SELECT 1 FROM photos WHERE sha256=?", (sha,)).fetchone():
            return PhotoAck(sha, chunk.total, done=True)
        key = (device, sha)
        held = self._db.execute(
            "SELECT coalesce(sum(length(data)), 0), min(total), max(total) FROM photo_chunks "
            "WHERE device=? AND sha256=?",
            key,
        ).fetchone()
        have = int(held[0])
        if have and (held[1] != chunk.total or held[2] != chunk.total):
            # The same name with another size: start over with what the device sends now.
            self._db.execute("DELETE FROM photo_chunks WHERE device=? AND sha256=?", key)
            have = 0
        if chunk.offset > have:
            return PhotoAck(sha, have)
        fresh = chunk.data[have - chunk.offset :]
        if fresh:
            self._db.execute(
                "INSERT INTO photo_chunks(device, sha256, \"offset\", total, content_type, data, "
                "received_ns) VALUES (?,?,?,?,?,?,?)",
                (device, sha, have, chunk.total, chunk.content_type, fresh, now),
            )
            have += len(fresh)
        if have < chunk.total:
            return PhotoAck(sha, have)
        parts = self._db.execute(
            "SELECT data FROM photo_chunks WHERE device=? AND sha256=? ORDER BY \"offset\"", key
        ).fetchall()
        data = b"".join(bytes(p[0]) for p in parts)
        self._db.execute("DELETE FROM photo_chunks WHERE device=? AND sha256=?", key)
        if len(data) != chunk.total or hashlib.sha256(data).hexdigest() != sha:
            self._db.execute(
                "INSERT INTO quarantine(topic, reason, payload, received_ns) VALUES (?,?,?,?)",
                (photo_topic(device), f"photo {sha} does not hash to its name", data, now),
            )
            return PhotoAck(sha, 0, error="hash mismatch")
        self._db.execute(
            "INSERT INTO photos(sha256, device, content_type, size, data, received_ns) "
            "VALUES (?,?,?,?,?,?)",
            (sha, device, chunk.content_type, len(data), data, now),
        )
        return PhotoAck(sha, len(data), done=True)

    def photo(self, sha256: str) -> tuple[str, bytes] | None:
        """A stored, verified photo: (content type, bytes), or None."""
        with self._lock:
            return photo_in(self._db, sha256)

    def photo_progress(self, device: str, sha256: str) -> int:
        """Bytes of an incomplete photo held (0 when none, or when it is complete)."""
        rows = self.query(
            "SELECT coalesce(sum(length(data)), 0) FROM photo_chunks WHERE device=? AND sha256=?",
            (device, sha256),
        )
        return int(str(rows[0][0]))

    def quarantine(self, topic: str, reason: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO quarantine(topic, reason, payload, received_ns) VALUES (?,?,?,?)",
                (topic, reason, payload, time.time_ns()),
            )

    def set_status(self, device: str, status: str, *, software: str | None = None) -> None:
        """Keep a device's newest status text, and the software version it names.

        A status that names no version (one from a device older than version reports) leaves
        the one recorded before: "unknown" would be no truer, and an operator looking for the
        devices still on an old version finds them by the version they last reported.
        """
        with self._lock:
            self._db.execute(
                "INSERT INTO device_status(device, status, updated_ns, software) "
                "VALUES (?,?,?,?) "
                "ON CONFLICT(device) DO UPDATE SET status=excluded.status, "
                "updated_ns=excluded.updated_ns, "
                "software=coalesce(excluded.software, device_status.software)",
                (device, status, time.time_ns(), software),
            )

    # --- questions ------------------------------------------------------------------------

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Read-only questions for tools, tests and the simulated day's report."""
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def head(self, device: str, journal: str) -> int:
        rows = self.query(
            "SELECT head_seq FROM streams WHERE device=? AND journal=?", (device, journal)
        )
        return int(str(rows[0][0])) if rows else 0

    def missing_seqs(self) -> int:
        """Sequence numbers below each stream's head that are not stored (should be 0)."""
        rows = self.query(
            "SELECT coalesce(sum(s.head_seq - (SELECT count(*) FROM events e "
            "WHERE e.device=s.device AND e.journal=s.journal)), 0) FROM streams s"
        )
        return int(str(rows[0][0]))


_LOSS_ALARMS = frozenset(
    {JOURNAL_CORRUPT, JOURNAL_ROLLED_BACK, JOURNAL_LOST, JOURNAL_REFUSED, EVENT_DAMAGED}
)
_MAX_SEQ = 2**63 - 1


def _seq(value: object) -> int | None:
    """A sequence number from a device's report, or None if it is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_SEQ:
        return value
    return None


# --- the events waiting for the parcel book (inside the book's transaction) -------------------

_EVENT_COLUMNS = (
    "e.rowid, e.device, e.uuid, e.wall_ns, e.wall_synced, e.received_ns, e.kind, e.payload"
)


def events_waiting(conn: Conn, limit: int) -> list[tuple[Any, ...]]:
    """Up to `limit` stored events the projection has not applied, in the order stored:
    (rowid, device, uuid, wall_ns, wall_synced, received_ns, kind, payload)."""
    return conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM unprojected u JOIN events e ON e.rowid = u.rowid "
        "ORDER BY u.rowid LIMIT ?",
        (limit,),
    ).fetchall()


def event_at(conn: Conn, rowid: int) -> tuple[Any, ...] | None:
    """One stored event by its rowid, in the columns of `events_waiting`."""
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.rowid=?", (rowid,)
    ).fetchone()
    return row


def forget_waiting(conn: Conn, rowids: Sequence[int]) -> None:
    """The projection applied these: they wait no more (commits with what it wrote)."""
    conn.execute(
        "DELETE FROM unprojected WHERE rowid IN (" + ",".join("?" * len(rowids)) + ")",
        list(rowids),
    )


def photo_in(conn: Conn, sha256: str) -> tuple[str, bytes] | None:
    """A stored, verified photo on any connection (an HTTP reader's too): (type, bytes)."""
    row = conn.execute("SELECT content_type, data FROM photos WHERE sha256=?", (sha256,)).fetchone()
    return (str(row[0]), bytes(row[1])) if row is not None else None


def command_answer(conn: Conn, device: str, command_id: str) -> tuple[str, dict[str, Any]] | None:
    """(kind, payload) of `device`'s answer to a command: `command_accepted`, `command_failed`
    or `command_refused` (a refusal names the id in its detail), or None before it answers."""
    rows = conn.execute(
        "SELECT kind, payload FROM events WHERE device=? AND kind IN "
        "('command_accepted', 'command_failed', 'command_refused') AND payload LIKE ? "
        "ORDER BY seq DESC",
        (device, f"%{command_id}%"),
    ).fetchall()
    for kind, payload in rows:
        doc = json.loads(str(payload))
        if doc.get("id") == command_id or command_id in str(doc.get("detail", "")):
            return str(kind), doc
    return None


def loss_counts(conn: Conn) -> dict[str, int]:
    """Confirmed events devices reported lost: `reports` (rows of `losses`), `events` (in the
    ranges with a known end) and `open_ended` (ranges whose end no one could know)."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(last_seq - first_seq + 1), 0), "
        "coalesce(sum(CASE WHEN last_seq IS NULL THEN 1 ELSE 0 END), 0) FROM losses"
    ).fetchone()
    return {"reports": int(row[0]), "events": int(row[1]), "open_ended": int(row[2])}


def quarantine_recent(conn: Conn, limit: int) -> list[tuple[Any, ...]]:
    """(id, topic, reason, payload size in bytes, received_ns) of the newest quarantined
    payloads, at most `limit`: what a person looks at; the payload itself stays in the table."""
    return conn.execute(
        "SELECT id, topic, reason, length(payload), received_ns FROM quarantine "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()


def quarantine_count(conn: Conn) -> int:
    return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])


def waiting_count(conn: Conn) -> int:
    return int(conn.execute("SELECT count(*) FROM unprojected").fetchone()[0])


def device_presence(conn: Conn) -> dict[str, dict[str, Any]]:
    """What the depot knows of each device's link, on any connection: its last status
    message (`status`, raw text, and `status_ns`, when stored), the software version its
    statuses last named (`software`, None if none did) and its newest journal (`journal`,
    `last_seq` stored, `last_batch_ns` when a batch of it was last stored)."""
    found: dict[str, dict[str, Any]] = {}
    for device, status, updated_ns, software in conn.execute(
        "SELECT device, status, updated_ns, software FROM device_status"
    ):
        found[str(device)] = {
            "status": str(status),
            "status_ns": int(updated_ns),
            "software": None if software is None else str(software),
        }
    for device, journal, head_seq, last_seen_ns in conn.execute(
        "SELECT device, journal, head_seq, last_seen_ns FROM streams ORDER BY last_seen_ns"
    ):  # a device's newest journal last: it wins
        found.setdefault(
            str(device), {"status": None, "status_ns": None, "software": None}
        ).update(
            journal=str(journal), last_seq=int(head_seq), last_batch_ns=int(last_seen_ns)
        )
    return found
