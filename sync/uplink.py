"""The device end of the sync: the journal's unacknowledged events go to the depot.

Owns the send cursor, the window of batches in flight, and what to do when the depot's
acknowledgement says something. Must never drop an event the depot has not acknowledged:
it keeps nothing of its own — the journal is the outbox, and after any reconnect, lost batch or
silence it simply resends from the depot's last acknowledgement (the depot deduplicates).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from parcel.version import software_version
from sync.errors import JournalError, WireError
from sync.journal import Journal
from sync.mqtt import BrokerAddress, MqttSession, Will, backoff_delay, new_properties
from sync.photos import PhotoOutbox
from sync.positions import PositionOutbox
from sync.wire import (
    BATCH_CONTENT_TYPE,
    BATCH_ENCODING,
    MAX_POSITION_SAMPLES,
    PHOTO_CONTENT_TYPE,
    POSITIONS_CONTENT_TYPE,
    PhotoChunk,
    ack_topic,
    command_topic,
    decode_ack,
    decode_photo_ack,
    encode_batch,
    encode_photo_chunk,
    encode_positions,
    encode_status,
    events_topic,
    photo_ack_topic,
    photo_topic,
    positions_topic,
    status_topic,
)

log = logging.getLogger("sync.uplink")

# After silences in a row, the wait for an ack grows (equal jitter, sync.mqtt.backoff_delay) up
# to this many times ack_timeout_s; the first ack that moves resets it.
ACK_PATIENCE_MAX = 8
# While connected, the retained status is published again at most this often, when the
# journal's figures (last sequence, backlog) changed since the last one.
STATUS_EVERY_S = 60.0
# Position samples go out in batches: when this many wait, or when the oldest waiting one is
# this old on the device's clock (a van that stopped sampling still sends its last one).
POSITION_BATCH = 2
POSITION_BATCH_S = 60.0
# While connected, the network thread ticks after every pass of its loop (at least once a
# second, `sync.mqtt.LOOP_WAKE_S`); a tick that publishes a window of events or prunes a week
# of acknowledged ones from an SD card may take a few seconds. 5 s is the longest a healthy pass
# takes; a connected thread silent three times that long is stalled (`Uplink.health`).
STALL_S = 3 * 5.0
# What a device being stopped (SIGTERM) gives the depot to acknowledge its backlog: a few
# seconds at most, so that the whole stop stays within systemd's patience and 5 s.
DRAIN_ON_STOP_S = 1.5


class Uplink:
    """Drains a journal to the depot over MQTT and records the depot's acknowledgements.

    A batch is at most `batch_events` events; at most `window_events` events are sent beyond
    the last acknowledgement, so a backlog of days drains without filling paho's RAM queue.
    If the acknowledgement does not move for `ack_timeout_s` while events are in flight, the
    batches are presumed lost (a broker restarted without persistence) and are sent again.

    Photos (`sync.photos`) go in chunks of `photo_chunk_bytes`, one chunk at a time and only
    when every event is on the wire: a new event waits behind at most one chunk, whatever the
    photo backlog. Each chunk waits for the depot's word on how much it holds; that word is
    kept in the journal file, so a cut or a reboot resumes from it.

    Position samples (`sync.positions`) go behind the events too, before the next photo
    chunk (a photo backlog must not starve the ETA), `position_batch` at a time or once the
    oldest waited `position_batch_s` of the device's clock. They are published at QoS 1 and
    forgotten once paho has them: the depot does not answer them, as a sample is not a fact
    and a lost one is replaced 30 s later (see docs/WIRE.md).
    """

    def __init__(
        self,
        journal: Journal,
        address: BrokerAddress,
        *,
        batch_events: int = 1000,
        window_events: int = 5000,
        ack_timeout_s: float = 10.0,
        keepalive_s: int = 30,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 60.0,
        prune_every_s: float = 60.0,
        photo_chunk_bytes: int = 16 * 1024,
        position_batch: int = POSITION_BATCH,
        position_batch_s: float = POSITION_BATCH_S,
        on_command: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """`on_command(name, payload)` receives depot commands (`…/cmd/<name>`), unverified:
        the device checks signatures itself. It runs in the network thread: hand off, return."""
        self.journal = journal
        self.device = journal.device_id
        self._on_command = on_command
        self._batch = batch_events
        self._window = window_events
        self._ack_timeout = ack_timeout_s
        # Patience for an ack grows with each silence in a row (and resets on an ack): a depot
        # working through a fleet's morning backlog is slow, not gone, and a whole window
        # resent every ack_timeout by every device would bury it deeper.
        self.patience: tuple[int, float] = (0, ack_timeout_s)  # (silences in a row, seconds)
        self._rng = random.Random()
        self._prune_every = prune_every_s
        self._next = journal.acked_seq + 1
        self._last_progress = time.monotonic()
        self._last_prune = 0.0
        self._ticked_at = time.monotonic()  # the network thread's last sign of life
        self._acked_changed = threading.Condition()
        self.batches_sent = 0
        self.payload_bytes_sent = 0
        self.resends = 0
        self.photos = PhotoOutbox(journal)
        self._photo_chunk = photo_chunk_bytes
        self._photo_inflight: tuple[str, int, float] | None = None  # (sha256, offset, sent at)
        self._photo_verified: set[str] = set()
        self.photo_chunks_sent = 0
        self.photo_bytes_sent = 0
        self.photos_done = 0
        self._status_sent: tuple[float, int, int] = (0.0, -1, -1)  # (when, last_seq, acked)
        self.positions = PositionOutbox(journal)
        self._position_batch = max(1, min(position_batch, MAX_POSITION_SAMPLES))
        self._position_batch_ns = int(position_batch_s * 1e9)
        self.position_messages_sent = 0
        self.positions_sent = 0
        self._positions_props = new_properties(PacketTypes.PUBLISH)
        self._positions_props.ContentType = POSITIONS_CONTENT_TYPE
        self._photo_props = new_properties(PacketTypes.PUBLISH)
        self._photo_props.ContentType = PHOTO_CONTENT_TYPE
        self._props = new_properties(PacketTypes.PUBLISH)
        self._props.ContentType = BATCH_CONTENT_TYPE
        self._props.UserProperty = ("enc", BATCH_ENCODING)
        self._keepalive_s = keepalive_s
        self._backoff_s = (backoff_min_s, backoff_max_s)
        self._started = False
        self.session = self._new_session(address)
        # A committed event goes out at once, not on the network loop's next idle tick.
        journal.add_listener(self._journaled)

    def _new_session(self, address: BrokerAddress) -> MqttSession:
        return MqttSession(
            address,
            client_id=self.device,
            # Subscribed by the session, which reports connected once the broker acked them.
            subscriptions=[
                (ack_topic(self.device), 1),
                (photo_ack_topic(self.device), 1),
                (command_topic(self.device), 1),
            ],
            on_connected=self._connected,
            on_message=self._message,
            on_tick=self._pump,
            will=Will(
                status_topic(self.device),
                encode_status("offline", self.journal.clock.boot_id, software=software_version()),
            ),
            keepalive_s=self._keepalive_s,
            backoff_min_s=self._backoff_s[0],
            backoff_max_s=self._backoff_s[1],
        )

    def start(self) -> None:
        self._started = True
        self.session.start()

    def reconnect(self, address: BrokerAddress) -> str | None:
        """Move to another broker address (host, port, credentials, TLS files): leave the
        old broker as `stop` does, and connect to the new one if the uplink was running.

        Nothing is lost: the uplink keeps nothing of its own, and on the new connection it
        resends from the depot's last acknowledgement, as after any reconnect. A new session
        rather than a changed one, because paho sets TLS up once per client. Returns what
        changed in words (None: the address is the same, nothing was done). Call it from the
        thread that starts and stops the uplink (the service loop's SIGHUP), never from the
        network thread.
        """
        said = broker_change(self.session.address, address)
        if said is None:
            return None
        running = self._started
        if running:
            self.stop()
        self.session = self._new_session(address)
        if running:
            self.start()
        return said

    def _journaled(self, _events: object) -> None:
        self.session.wake()

    def stop(self, drain_s: float = 0.0) -> None:
        """Leave the broker (a retained `offline` status, then DISCONNECT).

        ``drain_s``: first give the depot up to that long to acknowledge what the journal holds,
        while connected (a device shut down cleanly leaves nothing for the depot to wait for).
        Not connected, nothing is waited for: the journal keeps it all for the next start.
        """
        if drain_s > 0 and self.connected and self.journal.unacked:
            self.session.wake()
            if not self.wait_acked(self.journal.last_seq, drain_s):
                log.info(
                    "%s: stopping with %d events not yet acknowledged (kept in the journal)",
                    self.device, self.journal.unacked,
                )
        self._started = False

        def goodbye(client: mqtt.Client) -> None:
            client.publish(
                status_topic(self.device),
                encode_status(
                    "offline", self.journal.clock.boot_id, software=software_version()
                ),
                qos=1,
                retain=True,
            )

        self.session.stop(before_disconnect=goodbye)

    @property
    def connected(self) -> bool:
        return self.session.connected

    def health(self) -> list[str]:
        """The network thread, if it is dead or stalled (empty: healthy, or not started).

        Stalled means connected and silent for `STALL_S`; while not connected the thread
        waits to redial or for an answer, each wait bounded by the session, and only its
        death is news.
        """
        dead = self.session.thread_problem()
        if dead is not None:
            return [f"uplink {dead}"]
        if self.connected and time.monotonic() - self._ticked_at > STALL_S:
            return [f"uplink network thread stalled (silent for over {STALL_S:g} s)"]
        return []

    def status_line(self) -> str:
        """`online, backlog 3` (events the depot has not acknowledged), or `offline (why)`."""
        problem = self.session.problem
        if problem is None:
            return f"online, backlog {self.journal.unacked}"
        return f"offline ({problem}), backlog {self.journal.unacked}"

    def wait_acked(self, seq: int, timeout: float) -> bool:
        """Block until the depot has acknowledged `seq` (for tests, tools and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._acked_changed:
            while self.journal.acked_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked_changed.wait(left)
        return True

    def wait_photos_sent(self, timeout: float) -> bool:
        """Block until the depot has confirmed every pending photo (tests, tools, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._acked_changed:
            while self.photos.next_pending() is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked_changed.wait(min(left, 1.0))
        return True

    # --- in the network thread ---------------------------------------------------------------

    def _connected(self, client: mqtt.Client) -> None:
        self._ticked_at = time.monotonic()
        self._publish_status(client, time.monotonic())
        # Whatever was in flight on the old connection may be gone: resend from the ack.
        self._rewind("reconnected")
        self._photo_inflight = None

    def _publish_status(self, client: mqtt.Client, now: float) -> None:
        """The retained `online` status, with how far the journal is and how much of it the
        depot has not confirmed yet (its presence page shows both), and the software version
        this device runs (the depot lists it per device)."""
        last, acked = self.journal.last_seq, self.journal.acked_seq
        client.publish(
            status_topic(self.device),
            encode_status(
                "online",
                self.journal.clock.boot_id,
                software=software_version(),
                journal=self.journal.journal_id,
                last_seq=last,
                backlog=max(0, last - acked),
            ),
            qos=1,
            retain=True,
        )
        self._status_sent = (now, last, acked)

    def _rewind(self, why: str) -> None:
        if self._next != self.journal.acked_seq + 1:
            log.info("%s: resending from %d (%s)", self.device, self.journal.acked_seq + 1, why)
            self.resends += 1
            # What is sent again is checked against its chain again: the depot refusing a
            # resend because a byte changed on the card would stall everything behind it.
            self.journal.recheck()
        self._next = self.journal.acked_seq + 1
        self._last_progress = time.monotonic()

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == photo_ack_topic(self.device):
            self._photo_ack(bytes(msg.payload))
            return
        if msg.topic != ack_topic(self.device):
            prefix = command_topic(self.device, "")
            if msg.topic.startswith(prefix) and self._on_command is not None:
                self._on_command(msg.topic[len(prefix) :], bytes(msg.payload))
            else:
                log.info("%s: message on %s ignored (no handler)", self.device, msg.topic)
            return
        try:
            ack = decode_ack(bytes(msg.payload))
        except WireError as exc:
            log.error("%s: malformed ack ignored: %s", self.device, exc)
            return
        if ack.journal_id != self.journal.journal_id:
            log.info("%s: ack for another journal %s ignored", self.device, ack.journal_id)
            return
        if ack.seq > self.journal.last_seq or ack.refused is not None:
            # The depot holds events this journal no longer has (the file went back), or
            # other versions of them (refused): going on would hand out those numbers again,
            # or resend what is refused forever. The journal starts anew and says so.
            log.error(
                "%s: the depot holds %d (%s), the journal ends at %d: new journal",
                self.device, ack.seq, ack.refused or "beyond the journal", self.journal.last_seq,
            )
            try:
                self.journal.restart_epoch(ack.seq, ack.refused)
            except JournalError as exc:
                log.error("%s: %s", self.device, exc)
                return
            self._next = self.journal.acked_seq + 1
            self._last_progress = time.monotonic()
            self._publish_status(self.session.client, self._last_progress)
            self._pump()
            return
        try:
            moved = self.journal.mark_acked(ack.seq)
        except JournalError as exc:
            log.error("%s: %s", self.device, exc)
            return
        if moved:
            self._last_progress = time.monotonic()
            self.patience = (0, self._ack_timeout)
            with self._acked_changed:
                self._acked_changed.notify_all()
        if ack.resend_from is not None:
            self._rewind(f"depot asked for {ack.resend_from}")
        elif self._next <= ack.seq:
            self._next = ack.seq + 1
        self._pump()

    def _pump(self) -> None:
        self._ticked_at = now = time.monotonic()
        if not self.session.connected:
            return
        acked = self.journal.acked_seq
        silences, patience_s = self.patience
        if self._next > acked + 1 and now - self._last_progress > patience_s:
            self._rewind(f"no ack for {patience_s:.1f} s")
            high = self._ack_timeout * ACK_PATIENCE_MAX
            jittered = backoff_delay(silences + 1, self._ack_timeout, high, self._rng)
            self.patience = (silences + 1, max(self._ack_timeout, jittered))
        while self._next <= self.journal.last_seq:
            room = self._window - (self._next - 1 - acked)
            if room <= 0:
                break
            try:
                prev, events = self.journal.read(self._next - 1, min(self._batch, room))
            except JournalError as exc:
                log.error("%s: cannot read the journal to send: %s", self.device, exc)
                return
            if not events:
                break
            payload = encode_batch(self.device, self.journal.journal_id, prev, events)
            props = self._props if self.session.address.mqtt5 else None
            info = self.session.client.publish(
                events_topic(self.device), payload, qos=1, properties=props
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.info("%s: publish refused (%s); will resend", self.device, info.rc)
                return
            if self._next == acked + 1:
                self._last_progress = now
            self._next = events[-1].seq + 1
            self.batches_sent += 1
            self.payload_bytes_sent += len(payload)
        if self._next > self.journal.last_seq:
            self._pump_positions()
            self._pump_photo(now)
        sent_at, last, acked_then = self._status_sent
        if now - sent_at >= STATUS_EVERY_S and (last, acked_then) != (
            self.journal.last_seq,
            self.journal.acked_seq,
        ):
            self._publish_status(self.session.client, now)
        if now - self._last_prune > self._prune_every:
            self._last_prune = now
            try:
                pruned = self.journal.prune()
            except JournalError as exc:
                log.error("%s: %s", self.device, exc)
            else:
                if pruned:
                    log.info("%s: pruned %d acknowledged events", self.device, pruned)

    # --- positions, behind the events ------------------------------------------------------------

    def _pump_positions(self) -> None:
        """Publish the waiting position samples when a batch is full or its oldest is due."""
        try:
            waiting = self.positions.pending(MAX_POSITION_SAMPLES)
        except JournalError as exc:
            log.error("%s: cannot read the position outbox: %s", self.device, exc)
            return
        if not waiting:
            return
        age = abs(self.journal.clock.wall_ns() - waiting[0].at_ns)  # a clock set back: send
        if len(waiting) < self._position_batch and age < self._position_batch_ns:
            return
        payload = encode_positions(self.device, waiting)
        props = self._positions_props if self.session.address.mqtt5 else None
        info = self.session.client.publish(
            positions_topic(self.device), payload, qos=1, properties=props
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.info("%s: positions refused (%s); will send again", self.device, info.rc)
            return
        try:
            self.positions.sent(waiting)
        except JournalError as exc:  # sent twice at worst: the depot keeps one per time
            log.error("%s: %s", self.device, exc)
        self.position_messages_sent += 1
        self.positions_sent += len(waiting)

    # --- photos, behind the events --------------------------------------------------------------

    def _pump_photo(self, now: float) -> None:
        if self._photo_inflight is not None:
            if now - self._photo_inflight[2] <= self._ack_timeout:
                return
            log.info("%s: no word on photo %s; sending again", self.device, self._photo_inflight[0])
            self._photo_inflight = None
        try:
            photo = self.photos.next_pending()
            if photo is None:
                return
            if photo.confirmed == 0 and photo.sha256 not in self._photo_verified:
                if not self.photos.verify(photo.sha256):
                    log.error("%s: photo %s is corrupt on this device", self.device, photo.sha256)
                    self.photos.mark_corrupt(photo.sha256, "stored copy does not hash to its name")
                    return
                self._photo_verified.add(photo.sha256)
            data = self.photos.read(photo.sha256, photo.confirmed, self._photo_chunk)
        except JournalError as exc:
            log.error("%s: cannot read the photo outbox: %s", self.device, exc)
            return
        if not data:
            return
        payload = encode_photo_chunk(
            PhotoChunk(photo.sha256, photo.confirmed, photo.size, photo.content_type, data)
        )
        props = self._photo_props if self.session.address.mqtt5 else None
        info = self.session.client.publish(
            photo_topic(self.device), payload, qos=1, properties=props
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.info("%s: photo chunk refused (%s); will resend", self.device, info.rc)
            return
        self._photo_inflight = (photo.sha256, photo.confirmed, now)
        self.photo_chunks_sent += 1
        self.photo_bytes_sent += len(data)

    def _photo_ack(self, payload: bytes) -> None:
        try:
            ack = decode_photo_ack(payload)
        except WireError as exc:
            log.error("%s: malformed photo ack ignored: %s", self.device, exc)
            return
        waiting = self._photo_inflight
        current = waiting is not None and waiting[:2] == (ack.sha256, ack.offset)
        try:
            if ack.done:
                if self.photos.done(ack.sha256):
                    self.photos_done += 1
                    log.info("%s: photo %s stored at the depot", self.device, ack.sha256)
                self._photo_verified.discard(ack.sha256)
                current = current or (waiting is not None and waiting[0] == ack.sha256)
            elif ack.error is not None:
                if not current:
                    return  # an old answer; the one for the chunk in flight will say it again
                log.warning("%s: depot refused photo %s: %s", self.device, ack.sha256, ack.error)
                self._photo_verified.discard(ack.sha256)  # check our copy before resending
                self.photos.confirm(ack.sha256, 0)
            elif current:
                # The answer to the chunk in flight is the depot's word: it may send us back.
                self.photos.confirm(ack.sha256, ack.have)
            else:
                # An answer to a chunk sent before (a resend, a retransmission after a
                # reconnect): the depot's count only grows, so it may move us forward only.
                self.photos.advance(ack.sha256, ack.have)
                return
        except JournalError as exc:
            log.error("%s: %s", self.device, exc)
            return
        if current:
            self._photo_inflight = None
        with self._acked_changed:
            self._acked_changed.notify_all()
        self._pump()


def broker_change(old: BrokerAddress, new: BrokerAddress) -> str | None:
    """What differs between two broker addresses, in words that never show a secret:
    "broker 10.0.0.5:8883 -> 10.0.0.6:8883, credentials"; None when nothing does."""
    parts = []
    if (old.host, old.port) != (new.host, new.port):
        parts.append(f"{old.host}:{old.port} -> {new.host}:{new.port}")
    if (old.username, old.password) != (new.username, new.password):
        parts.append("credentials")
    if (old.tls_ca, old.tls_cert, old.tls_key) != (new.tls_ca, new.tls_cert, new.tls_key):
        parts.append("TLS files")
    if old.mqtt5 != new.mqtt5:
        parts.append("MQTT version")
    return f"broker {', '.join(parts)}" if parts else None
