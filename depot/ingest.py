"""The depot end of the sync: take every device's batches off the broker, store, acknowledge.

Owns the MQTT service that feeds the event store (`depot.store.events.DepotStore`: events
deduplicated on device, journal and sequence number; each journal's hash chain verified; gaps
recorded; malformed payloads quarantined with the reason). Must never acknowledge an event
before it is durably stored, and never stop because one device sent garbage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from depot.store import positions
from depot.store.events import (
    STORE_SCHEMA_VERSION,
    DepotStore,
    DepotStoreError,
    IngestResult,
)
from sync.errors import ChainConflict, WireError
from sync.mqtt import BrokerAddress, MqttSession
from sync.wire import (
    TOPIC_ROOT,
    Ack,
    Batch,
    PhotoAck,
    Status,
    ack_topic,
    decode_photo_chunk,
    decode_positions,
    decode_status,
    encode_ack,
    encode_photo_ack,
    events_topic,
    photo_ack_topic,
    read_batch,
    split_topic,
    verify_batch,
)

log = logging.getLogger("depot.ingest")

# Depot workers sharing the devices' batches: how long one waits for another to store a batch's
# predecessor before it calls the hole a gap (and how often it looks again meanwhile).
GAP_GRACE_S = 2.0
SESSION_EXPIRY_S = 7 * 24 * 3600  # a depot alone: the broker keeps its batches while it restarts
GAP_RETRY_S = 0.02

__all__ = [
    "STORE_SCHEMA_VERSION",
    "Depot",
    "DepotStore",
    "DepotStoreError",
    "IngestResult",
]


def _read_status(text: str) -> Status:
    """The stored text read by the wire's rule; a status that is not JSON says nothing."""
    try:
        return decode_status(text.encode())
    except WireError:
        return Status(state="unknown", boot_id=None, software=None)


class Depot:
    """The depot's MQTT service: batches in, verified and stored, acknowledgements out."""

    def __init__(
        self,
        store: DepotStore,
        address: BrokerAddress,
        *,
        client_id: str = "depot",
        shared: str | None = None,
        statuses: bool = True,
        on_stored: Callable[[str, IngestResult], None] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        on_photo: Callable[[str, PhotoAck], None] | None = None,
    ) -> None:
        """`on_stored(device, result)` runs after each stored batch, before its ack is sent;
        `on_status(device, state)` after a device's online/offline status was stored;
        `on_photo(device, ack)` after each photo chunk was handled, before its ack is sent.

        `shared` names an MQTT v5 shared subscription group: every depot worker subscribed with
        the same name gets a share of the devices' batches and photo chunks (the broker picks
        the worker per message), instead of each getting every message. `statuses=False`
        leaves the devices' online/offline statuses to another worker (one is enough: they
        go to one table, and a retained status never reaches a shared subscription).
        """
        self.store = store
        self.shared = shared
        self.statuses = statuses
        self._on_stored = on_stored
        self._on_status = on_status
        self._on_photo = on_photo
        self.batches = 0
        self.duplicates = 0  # batches held already, acknowledged without a second look
        self.quarantined = 0
        self.photo_chunks = 0
        self.positions_stored = 0  # position samples new to the store
        self.session = MqttSession(
            address,
            client_id=client_id,
            subscriptions=self._topics(),
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

    def _topics(self) -> list[tuple[str, int]]:
        """What the session subscribes to; it reports connected once the broker acked these."""
        share = f"$share/{self.shared}/" if self.shared else ""
        topics = [
            (f"{share}{TOPIC_ROOT}/+/events", 1),
            (f"{share}{TOPIC_ROOT}/+/up/photo", 1),
            (f"{share}{TOPIC_ROOT}/+/up/positions", 1),
        ]
        if self.statuses:
            topics.append((f"{TOPIC_ROOT}/+/status", 1))
        return topics

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        """Handle one message from the broker; never raises, never drops a payload.

        Whatever goes wrong while a payload is decoded or stored (a WireError, or anything
        hostile input makes Python or the database raise: OverflowError, an integrity error,
        UnicodeEncodeError, RecursionError, DepotStoreError…) puts the raw payload and the
        reason in quarantine, and the depot goes on with the next message. Nothing of it was
        stored and no ack went out, so a device that holds a good copy sends it again.
        If even the quarantine cannot be written (the database is gone), the reason and the
        topic are logged as an error: that is the one place a payload can be lost, and it says so.
        What runs once a payload is stored (the `on_*` callbacks, the ack) is isolated from it:
        a failure there is logged and never turns a stored batch into a quarantined one.
        """
        payload = bytes(msg.payload)
        topic = _topic_of(msg)
        try:
            device, leaf = split_topic(topic)
            if leaf == "status":
                self._status(device, payload)
            elif leaf == "up/photo":
                self._photo(device, payload)
            elif leaf == "up/positions":
                self._positions(device, payload)
            else:
                self._batch(device, payload)
        except Exception as exc:
            self._quarantine(topic, _reason(exc), payload)

    def _status(self, device: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")[:500]
        status = _read_status(text)
        self.store.set_status(device, text, software=status.software)
        if self._on_status is not None:
            self._after_stored("on_status", device, self._on_status, device, status.state)

    def _batch(self, device: str, payload: bytes) -> None:
        """Decode, verify and store a batch (raising on any failure), then acknowledge it."""
        head, doc = read_batch(payload)
        if head.device != device:
            raise WireError(f"batch names device {head.device!r} on {device!r}'s topic")
        held = self.store.holds(head)
        if held is not None:  # all of it stored before: say so, without re-verifying it
            self.duplicates += 1
            self._publish(device, ack_topic(device), encode_ack(Ack(head.journal_id, held)), True)
            return
        batch = verify_batch(head, doc)
        try:
            result = self._ingest(batch)
        except ChainConflict as exc:
            # Kept for a person like any refusal; and the device hears why, with how far the
            # depot holds this journal: its resends would be refused forever otherwise.
            self._quarantine(events_topic(device), str(exc), payload)
            held = self.store.head(device, batch.journal_id)
            refusal = Ack(batch.journal_id, held, refused=str(exc))
            self._publish(device, ack_topic(device), encode_ack(refusal), True)
            return
        self.batches += 1
        if self._on_stored is not None:
            # The events are stored: a failing callback must not cost the ack. (The depot's
            # own callback only wakes its projector, which takes the events from the
            # `unprojected` queue whenever it next runs.)
            self._after_stored("on_stored", device, self._on_stored, device, result)
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
        self._publish(device, ack_topic(device), encode_ack(result.ack), True)

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

    def _photo(self, device: str, payload: bytes) -> None:
        """Decode and keep a photo chunk (raising on any failure), then answer it."""
        chunk = decode_photo_chunk(payload)
        ack = dataclasses.replace(self.store.photo_chunk(device, chunk), offset=chunk.offset)
        self.photo_chunks += 1
        if self._on_photo is not None:
            self._after_stored("on_photo", device, self._on_photo, device, ack)
        if ack.done:
            log.info("%s: photo %s stored and verified", device, ack.sha256)
        elif ack.error:
            log.error("%s: photo %s refused: %s", device, ack.sha256, ack.error)
        self._publish(device, photo_ack_topic(device), encode_photo_ack(ack), False)

    def _positions(self, device: str, payload: bytes) -> None:
        """Store a van's position samples (raising on any failure); nothing is answered:
        a sample is not a fact, and a lost one is replaced by the van's next."""
        named, samples = decode_positions(payload)
        if named != device:
            raise WireError(f"positions name device {named!r} on {device!r}'s topic")
        with self.store.database.transaction() as conn:
            stored = positions.record(conn, device, samples, received_ns=time.time_ns())
        self.positions_stored += stored

    def _after_stored(
        self, name: str, device: str, callback: Callable[..., None], *args: object
    ) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception(
                "%s: %s failed after the payload was stored (kept, still acked)", device, name
            )

    def _publish(self, device: str, topic: str, body: bytes, retain: bool) -> None:
        """Send an answer; a failure is logged (the device resends, and is answered then)."""
        try:
            self.session.client.publish(topic, body, qos=1, retain=retain)
        except Exception:
            log.exception("%s: could not publish the answer on %s", device, topic)

    def _quarantine(self, topic: str, reason: str, payload: bytes) -> None:
        """Keep a refused payload and the reason for a person; never raises (see `_message`)."""
        self.quarantined += 1
        log.error("quarantined payload on %s: %s", topic, reason)
        try:
            self.store.quarantine(topic, reason, payload)
        except Exception as exc:
            log.error(
                "LOST a payload of %d bytes on %s: refused (%s), and the quarantine could not "
                "store it: %s",
                len(payload),
                topic,
                reason,
                _reason(exc),
            )


#: A quarantine reason is one line of storable text: at most this many characters.
MAX_REASON_CHARS = 500


def _reason(exc: BaseException) -> str:
    """What a person reading the quarantine needs: the refusal, or what failed and how.

    A WireError's message is the reason itself; anything else is named by its type (an
    OverflowError from SQLite's INTEGER says more than its bare message). Made storable on
    every backend: one line, no NUL (PostgreSQL text refuses it), no lone surrogate.
    """
    text = str(exc) if isinstance(exc, WireError) else f"not stored: {type(exc).__name__}: {exc}"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = " ".join(text.replace("\x00", "\\x00").split())
    return text[:MAX_REASON_CHARS]


def _topic_of(msg: mqtt.MQTTMessage) -> str:
    """The message's topic; one that is not UTF-8 (a broker should refuse it) is escaped, so
    the payload still reaches the quarantine under a name a person can read."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return bytes(msg._topic).decode("utf-8", "backslashreplace")
