"""The depot end of the sync: take every device's batches off the broker, store, acknowledge.

Owns the MQTT service that feeds the event store (`depot.store.events.DepotStore`: events
deduplicated on device, journal and sequence number; each journal's hash chain verified; gaps
recorded; malformed payloads quarantined with the reason). Must never acknowledge an event
before it is durably stored, and never stop because one device sent garbage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from depot.store.events import (
    STORE_SCHEMA_VERSION,
    DepotStore,
    DepotStoreError,
    IngestResult,
)
from sync.errors import WireError
from sync.mqtt import BrokerAddress, MqttSession
from sync.wire import (
    TOPIC_ROOT,
    Ack,
    Batch,
    PhotoAck,
    ack_topic,
    decode_photo_chunk,
    encode_ack,
    encode_photo_ack,
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
        topics = [(f"{share}{TOPIC_ROOT}/+/events", 1), (f"{share}{TOPIC_ROOT}/+/up/photo", 1)]
        if self.statuses:
            topics.append((f"{TOPIC_ROOT}/+/status", 1))
        client.subscribe(topics)

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
            head, doc = read_batch(payload)
            if head.device != device:
                raise WireError(f"batch names device {head.device!r} on {device!r}'s topic")
            held = self.store.holds(head)
            if held is not None:  # all of it stored before: say so, without re-verifying it
                self.duplicates += 1
                ack = Ack(head.journal_id, held)
                self.session.client.publish(ack_topic(device), encode_ack(ack), qos=1, retain=True)
                return
            batch = verify_batch(head, doc)
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
