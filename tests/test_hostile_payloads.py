"""The depot never drops a payload: hostile input from a device's own account is quarantined
with the reason, nothing of it is stored, and the depot goes on with the next message.

Real Mosquitto, a real depot on each database backend, a device account publishing by hand
what a broken or hostile device could send. Each hostile payload is followed by a good batch:
the broker hands one publisher's messages to the depot in order, so the good batch's ack also
says the hostile payload before it has been handled.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from depot.ingest import Depot, DepotStore, IngestResult
from simulators.broker import Broker
from sync.mqtt import MqttSession
from sync.wire import (
    Event,
    PhotoAck,
    PhotoChunk,
    ack_topic,
    canonical_payload,
    chain_hash,
    decode_ack,
    decode_photo_ack,
    encode_batch,
    encode_photo_chunk,
    events_topic,
    genesis_hash,
    photo_ack_topic,
    photo_topic,
    status_topic,
)
from tests.conftest import address, blob, depot_sql

WAIT_S = 20.0
BOOT = "b" * 32


def chain(journal_id: str, payloads: list[dict[str, Any]]) -> list[Event]:
    """Events 1..n of a journal, hashed as a device's journal hashes them."""
    events: list[Event] = []
    h = genesis_hash(journal_id)
    for seq, payload in enumerate(payloads, 1):
        uid = secrets.token_hex(16)
        mono, wall = seq * 1_000_000, 1_700_000_000_000_000_000 + seq
        h = chain_hash(
            h, seq, uid, BOOT, mono, wall, True, "parcel_scanned", canonical_payload(payload)
        )
        events.append(Event(seq, uid, BOOT, mono, wall, True, "parcel_scanned", payload, h))
    return events


def good_batch(journal_id: str, events: list[Event], seq: int) -> bytes:
    prev = genesis_hash(journal_id) if seq == 1 else events[seq - 2].hash
    return encode_batch("van-1", journal_id, prev, [events[seq - 1]])


def hostile_batch(payload_json: str) -> tuple[str, bytes]:
    """A one-event batch of a journal of its own whose payload is `payload_json`, verbatim.

    Where Python can hash that payload at all, `last` is the true chain hash, so the batch
    would verify if the decoder let the value through: the refusal has to come from the
    decoder's rules, not from a broken chain.
    """
    jnl = secrets.token_hex(16)
    uid = secrets.token_hex(16)
    last = b"\0" * 32
    try:
        text = json.dumps(
            json.loads(payload_json), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        last = chain_hash(genesis_hash(jnl), 1, uid, BOOT, 5, 7, True, "parcel_scanned", text)
    except (RecursionError, UnicodeEncodeError):
        pass
    head = {
        "v": 1, "dev": "van-1", "jnl": jnl, "first": 1,
        "prev": genesis_hash(jnl).hex(), "last": last.hex(),
        "boots": [BOOT], "b": [0], "u": [uid], "m": [5], "w": [7], "s": "1",
        "kinds": ["parcel_scanned"], "k": [0], "p": ["PAYLOAD"],
    }  # fmt: skip
    text = json.dumps(head, separators=(",", ":")).replace('"PAYLOAD"', payload_json)
    return jnl, zlib.compress(text.encode())


# (name, the payload's JSON text as a hostile device sends it, what the reason must say)
HOSTILE = [
    ("integer 2**64", '{"n":18446744073709551616}', "integer outside 64 bits"),
    ("integer -2**70", '{"n":-1180591620717411303424}', "integer outside 64 bits"),
    ("1000 deep", '{"n":' + "[" * 1000 + "]" * 1000 + "}", "levels of nesting"),
    ("lone surrogate value", '{"n":"\\ud800"}', "lone surrogate"),
    ("lone surrogate key", '{"\\udfff":1}', "lone surrogate"),
    ("NaN", '{"n":NaN}', "NaN"),
    ("Infinity", '{"n":Infinity}', "Infinity"),
    ("-Infinity", '{"n":-Infinity}', "Infinity"),
    ("overflowing float", '{"n":1e400}', "too large"),
]


class Device:
    """van-1's own broker account, publishing by hand and collecting the depot's answers."""

    def __init__(self, broker: Broker) -> None:
        self.acks: list[tuple[str, int]] = []
        self.photo_acks: list[PhotoAck] = []
        self.cond = threading.Condition()
        self.session = MqttSession(
            address(broker, "van-1"),
            "van-1",
            subscriptions=[(ack_topic("van-1"), 1), (photo_ack_topic("van-1"), 1)],
            on_message=self._message,
            backoff_min_s=0.1,
            backoff_max_s=1.0,
        )

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            if msg.topic == ack_topic("van-1"):
                ack = decode_ack(bytes(msg.payload))
                self.acks.append((ack.journal_id, ack.seq))
            else:
                self.photo_acks.append(decode_photo_ack(bytes(msg.payload)))
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.session.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"the broker did not take a publish on {topic}"

    def wait_ack(self, journal_id: str, seq: int) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: (journal_id, seq) in self.acks, WAIT_S)
        assert ok, f"no ack of {journal_id}:{seq}; acks {self.acks[-3:]}"


@pytest.fixture
def device(broker: Broker) -> Iterator[Device]:
    d = Device(broker)
    d.session.start()
    assert d.session.wait_connected(10)
    yield d
    d.session.stop()


class RecordingDepot(Depot):
    """A depot that also keeps the device states its `on_status` was told."""

    def __init__(self, broker: Broker, database: str) -> None:
        self.states: list[str] = []
        super().__init__(
            DepotStore(database),
            address(broker, "depot"),
            on_status=lambda _device, state: self.states.append(state),
        )


@pytest.fixture
def depot(broker: Broker, depot_database: str) -> Iterator[RecordingDepot]:
    service = RecordingDepot(broker, depot_database)
    service.start()
    assert service.session.wait_connected(10)
    yield service
    service.stop()
    service.store.close()


def quarantined(store: DepotStore) -> list[tuple[str, str, bytes]]:
    rows = store.query("SELECT topic, reason, payload FROM quarantine ORDER BY id")
    return [(str(t), str(r), blob(p)) for t, r, p in rows]


def stored_events(store: DepotStore, journal_id: str) -> int:
    rows = store.query("SELECT count(*) FROM events WHERE journal=?", (journal_id,))
    return int(str(rows[0][0]))


def test_each_hostile_batch_is_quarantined_with_its_reason_and_the_depot_goes_on(
    depot: Depot, device: Device, depot_database: str
) -> None:
    good = secrets.token_hex(16)
    events = chain(good, [{"parcel": f"RB{n:08d}5GB", "n": n} for n in range(len(HOSTILE) + 2)])
    # A batch whose JSON is fine but that the store cannot take: a row of the same journal and
    # sequence number already sits in `events` (the stream itself unknown), so the insert
    # breaks the primary key, on either backend.
    poisoned = secrets.token_hex(16)
    with depot_sql(depot_database) as sql:
        sql.execute(
            "INSERT INTO events(device, journal, seq, uuid, boot_id, mono_ns, wall_ns, "
            "wall_synced, kind, payload, hash, received_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            ("van-1", poisoned, 1, "0" * 32, BOOT, 0, 0, 1, "x", "{}", b"\0" * 32, 0),
        )
    poisoned_batch = good_batch(poisoned, chain(poisoned, [{"n": 1}]), 1)

    sent: list[tuple[str, str, bytes]] = []  # (journal, what the reason says, payload)
    for _name, payload_json, reason in HOSTILE:
        jnl, payload = hostile_batch(payload_json)
        sent.append((jnl, reason, payload))
    sent.append((poisoned, "not stored: .*(IntegrityError|PgError)", poisoned_batch))

    for seq, (_jnl, _reason, payload) in enumerate(sent, 1):
        device.publish(events_topic("van-1"), payload)
        device.publish(events_topic("van-1"), good_batch(good, events, seq))
        device.wait_ack(good, seq)  # the depot went on, and handled the hostile one first

    rows = quarantined(depot.store)
    assert [(t, p) for t, _r, p in rows] == [(events_topic("van-1"), p) for _j, _r, p in sent]
    for (jnl, reason, _p), (_t, got, _b) in zip(sent, rows, strict=True):
        assert re.search(reason, got), (jnl, reason, got)
        assert "\n" not in got
    for jnl, _reason, _p in sent[:-1]:
        assert stored_events(depot.store, jnl) == 0
        assert depot.store.head("van-1", jnl) == 0
    assert stored_events(depot.store, poisoned) == 1  # only the row put there by hand
    assert depot.store.head("van-1", poisoned) == 0
    assert stored_events(depot.store, good) == len(sent)
    assert depot.quarantined == len(sent)


def test_a_hostile_photo_chunk_or_status_is_quarantined_or_kept_never_dropped(
    depot: RecordingDepot, device: Device
) -> None:
    good = secrets.token_hex(16)
    events = chain(good, [{"n": n} for n in range(3)])
    data = b"\xff\xd8jpeg"
    sha = "ab" * 32
    # A content type with a lone surrogate: it reached the photo_chunks table and made the
    # database driver raise (UnicodeEncodeError), inside the handler.
    header = f'{{"v":1,"sha":"{sha}","off":0,"total":{len(data)},"type":"image/\\ud800"}}'
    bad_chunk = header.encode() + b"\n" + data
    huge_offset = encode_photo_chunk(PhotoChunk(sha, 0, len(data), "image/jpeg", data)).replace(
        b'"off":0', b'"off":18446744073709551616'
    )
    device.publish(photo_topic("van-1"), bad_chunk)
    device.publish(photo_topic("van-1"), huge_offset)
    device.publish(events_topic("van-1"), good_batch(good, events, 1))
    device.wait_ack(good, 1)
    rows = quarantined(depot.store)
    assert [(t, p) for t, _r, p in rows] == [
        (photo_topic("van-1"), bad_chunk),
        (photo_topic("van-1"), huge_offset),
    ]
    assert "lone surrogate" in rows[0][1] and "outside 64 bits" in rows[1][1]
    assert depot.store.query("SELECT count(*) FROM photo_chunks") == [(0,)]

    # A status whose JSON nests a thousand deep is kept as text; one with a NUL is kept where
    # the database can hold it (SQLite) and quarantined where it cannot (PostgreSQL text).
    deep = b'{"v":1,"state":' + b"[" * 1000 + b"]" * 1000 + b"}"
    device.publish(status_topic("van-1"), deep)
    device.publish(events_topic("van-1"), good_batch(good, events, 2))
    device.wait_ack(good, 2)
    status = depot.store.query("SELECT status FROM device_status WHERE device='van-1'")
    assert status == [(deep.decode()[:500],)]  # statuses are kept to their first 500 characters
    assert depot.states == ["unknown"]
    nul = b'{"v":1,"state":"online","boot":"a\x00b"}'
    device.publish(status_topic("van-1"), nul)
    device.publish(events_topic("van-1"), good_batch(good, events, 3))
    device.wait_ack(good, 3)
    kept = depot.store.query("SELECT status FROM device_status WHERE device='van-1'")
    in_quarantine = [p for t, _r, p in quarantined(depot.store) if t == status_topic("van-1")]
    assert (kept == [(nul.decode(),)]) != (in_quarantine == [nul])


def test_a_failing_callback_after_the_batch_is_stored_does_not_cost_the_ack(
    broker: Broker, depot_database: str, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_device: str, _result: IngestResult) -> None:
        raise RuntimeError("projector exploded")

    service = Depot(DepotStore(depot_database), address(broker, "depot"), on_stored=broken)
    service.start()
    try:
        assert service.session.wait_connected(10)
        jnl = secrets.token_hex(16)
        events = chain(jnl, [{"n": 1}, {"n": 2}])
        with caplog.at_level(logging.ERROR, logger="depot.ingest"):
            device.publish(events_topic("van-1"), good_batch(jnl, events, 1))
            device.publish(events_topic("van-1"), good_batch(jnl, events, 2))
            device.wait_ack(jnl, 2)
        assert stored_events(service.store, jnl) == 2
        assert quarantined(service.store) == []
        assert "on_stored failed after the payload was stored" in caplog.text
        assert "projector exploded" in caplog.text
    finally:
        service.stop()
        service.store.close()


def test_when_even_the_quarantine_fails_the_handler_logs_topic_and_reason(
    broker: Broker, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = DepotStore(tmp_path / "depot.db")
    service = Depot(store, address(broker, "depot"))  # never started: the handler is called
    store.database.close()  # the database is gone: storing and quarantining both fail
    msg = mqtt.MQTTMessage(topic=events_topic("van-1").encode())
    msg.payload = b"not a batch"
    with caplog.at_level(logging.ERROR, logger="depot.ingest"):
        service._message(msg)  # must not raise
    lost = [r.getMessage() for r in caplog.records if "LOST" in r.getMessage()]
    assert len(lost) == 1
    assert events_topic("van-1") in lost[0] and "not zlib" in lost[0]
    assert service.quarantined == 1
