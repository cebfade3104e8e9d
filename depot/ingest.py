"""The depot end of the sync: store every device's events once, verify, acknowledge.

Owns the depot's SQLite store (events deduplicated on device, journal and sequence number; each
device journal's hash chain verified; gaps recorded; malformed payloads quarantined with the
reason) and the MQTT service that feeds it. Must never acknowledge an event before it is
durably stored, and never stop because one device sent garbage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from depot.store import LATEST, DepotDatabase, StoreError, open_database
from sync.errors import WireError
from sync.mqtt import BrokerAddress, MqttSession
from sync.wire import (
    TOPIC_ROOT,
    Ack,
    Batch,
    PhotoAck,
    PhotoChunk,
    ack_topic,
    canonical_payload,
    decode_batch,
    decode_photo_chunk,
    encode_ack,
    encode_photo_ack,
    genesis_hash,
    photo_ack_topic,
    photo_topic,
    split_topic,
)

log = logging.getLogger("depot.ingest")

# Depot workers sharing the devices' batches: how long one waits for another to store a batch's
# predecessor before it calls the hole a gap (and how often it looks again meanwhile).
GAP_GRACE_S = 2.0
SESSION_EXPIRY_S = 7 * 24 * 3600  # a depot alone: the broker keeps its batches while it restarts
GAP_RETRY_S = 0.02
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
            raise WireError(f"batch for {dev}/{jnl} at {first} does not continue the stored chain")
        fresh = [e for e in batch.events if e.seq > head]
        duplicates = len(batch.events) - len(fresh)
        if duplicates:
            overlap_end = batch.events[duplicates - 1]
            if overlap_end.hash != self._hash_at(dev, jnl, overlap_end.seq):
                raise WireError(f"batch for {dev}/{jnl} contradicts stored events (fork)")
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
        rows = self.query("SELECT content_type, data FROM photos WHERE sha256=?", (sha256,))
        if not rows:
            return None
        content_type, data = rows[0]
        assert isinstance(data, bytes)
        return str(content_type), data

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

    def set_status(self, device: str, status: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO device_status(device, status, updated_ns) VALUES (?,?,?) "
                "ON CONFLICT(device) DO UPDATE SET status=excluded.status, "
                "updated_ns=excluded.updated_ns",
                (device, status, time.time_ns()),
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


def _status_state(text: str) -> str:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return "unknown"
    return str(doc.get("state", "unknown")) if isinstance(doc, dict) else "unknown"


class Depot:
    """The depot's MQTT service: batches in, verified and stored, acknowledgements out."""

    def __init__(
        self,
        store: DepotStore,
        address: BrokerAddress,
        *,
        client_id: str = "depot",
        shared: str | None = None,
        on_stored: Callable[[str, IngestResult], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        on_photo: Callable[[str, PhotoAck], None] | None = None,
    ) -> None:
        """`on_stored(device, result)` runs after each stored batch, before its ack is sent;
        `on_status(device, state)` after a device's online/offline status was stored;
        `on_photo(device, ack)` after each photo chunk was handled, before its ack is sent.

        `shared` names an MQTT v5 shared subscription group: every depot worker subscribed with
        the same name gets a share of the devices' batches and photo chunks (the broker picks
        the worker per message), instead of each getting every message.
        """
        self.store = store
        self.shared = shared
        self._on_stored = on_stored
        self._on_status = on_status
        self._on_photo = on_photo
        self.batches = 0
        self.quarantined = 0
        self.photo_chunks = 0
        self.session = MqttSession(
            address,
            client_id=client_id,
            on_connected=self._connected,
            on_message=self._message,
            backoff_min_s=0.2,
            backoff_max_s=10.0,
            # A worker of a group keeps no session: the broker would keep handing a dead
            # worker its share of the batches, queued where no one reads them. The devices
            # resend what is not acknowledged, to the workers still there.
            session_expiry_s=0 if shared else SESSION_EXPIRY_S,
        )

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.session.stop()

    def _connected(self, client: mqtt.Client) -> None:
        share = f"$share/{self.shared}/" if self.shared else ""
        client.subscribe(
            [
                (f"{share}{TOPIC_ROOT}/+/events", 1),
                (f"{share}{TOPIC_ROOT}/+/up/photo", 1),
                # Every worker keeps the status table (an idempotent upsert); retained statuses
                # are not sent to shared subscriptions, and a new worker needs them.
                (f"{TOPIC_ROOT}/+/status", 1),
            ]
        )

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            device, leaf = split_topic(msg.topic)
        except WireError as exc:
            self._quarantine(msg.topic, str(exc), payload)
            return
        if leaf == "status":
            text = payload.decode("utf-8", "replace")[:500]
            self.store.set_status(device, text)
            if self._on_status is not None:
                self._on_status(device, _status_state(text))
            return
        if leaf == "up/photo":
            self._photo(msg.topic, device, payload)
            return
        try:
            batch = decode_batch(payload)
            if batch.device != device:
                raise WireError(f"batch names device {batch.device!r} on {device!r}'s topic")
            result = self._ingest(batch)
        except WireError as exc:
            self._quarantine(msg.topic, str(exc), payload)
            return
        self.batches += 1
        if self._on_stored is not None:
            self._on_stored(device, result)
        log.info(
            "%s: stored %d new events, %d duplicates; acknowledged %d",
            device,
            result.stored,
            result.duplicates,
            result.ack.seq,
        )
        if result.gap:
            log.warning("%s: gap before %d (have %d)", device, batch.first_seq, result.ack.seq)
        if result.gap and result.ack.resend_from is None:
            return
        self.session.client.publish(ack_topic(device), encode_ack(result.ack), qos=1, retain=True)

    def _ingest(self, batch: Batch) -> IngestResult:
        """Store a batch; shared among workers, first wait a moment for a missing predecessor.

        A device keeps several batches in flight and the broker may hand two of them to two
        workers at once: the later one can reach the store first. That is no gap: its
        predecessor is being stored by another worker right now. So a worker in a group looks
        again for up to GAP_GRACE_S before it records a gap and asks the device to resend.
        """
        if not self.shared:
            return self.store.ingest(batch)
        deadline = time.monotonic() + GAP_GRACE_S
        while True:
            result = self.store.ingest(batch, record_gap=False)
            if not result.gap or result.gap_recorded_before or time.monotonic() >= deadline:
                break
            time.sleep(GAP_RETRY_S)
        return self.store.ingest(batch) if result.gap else result

    def _photo(self, topic: str, device: str, payload: bytes) -> None:
        try:
            chunk = decode_photo_chunk(payload)
        except WireError as exc:
            self._quarantine(topic, str(exc), payload)
            return
        ack = dataclasses.replace(self.store.photo_chunk(device, chunk), offset=chunk.offset)
        self.photo_chunks += 1
        if self._on_photo is not None:
            self._on_photo(device, ack)
        if ack.done:
            log.info("%s: photo %s stored and verified", device, ack.sha256)
        elif ack.error:
            log.error("%s: photo %s refused: %s", device, ack.sha256, ack.error)
        self.session.client.publish(photo_ack_topic(device), encode_photo_ack(ack), qos=1)

    def _quarantine(self, topic: str, reason: str, payload: bytes) -> None:
        self.quarantined += 1
        log.error("quarantined payload on %s: %s", topic, reason)
        self.store.quarantine(topic, reason, payload)
