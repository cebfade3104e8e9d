"""Proof-of-delivery photos travel from the device's outbox to the depot, verified and resumable.

Real Mosquitto (per-device account and ACL), real SQLite files, a real TCP link that the tests
slow down and cut. The photo bytes are random: the sync moves bytes, whatever they show.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from depot.ingest import Depot, DepotStore
from depot.store import LATEST
from simulators.broker import Broker
from simulators.link import LinkProxy
from sync.errors import JournalError, WireError
from sync.journal import Journal
from sync.photos import PhotoOutbox
from sync.uplink import Uplink
from sync.wire import (
    MAX_CHUNK_BYTES,
    PhotoAck,
    PhotoChunk,
    decode_photo_ack,
    decode_photo_chunk,
    encode_photo_ack,
    encode_photo_chunk,
)
from tests.conftest import UplinkPatience, address

FAST: UplinkPatience = {
    "ack_timeout_s": 2.0,
    "keepalive_s": 2,
    "backoff_min_s": 0.1,
    "backoff_max_s": 0.5,
}
CHUNK = 4096


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the wire ----------------------------------------------------------------------------------


def test_chunk_and_ack_round_trip() -> None:
    data = os.urandom(300)
    chunk = PhotoChunk(_sha(data), 100, 300, "image/jpeg", data[100:200])
    assert decode_photo_chunk(encode_photo_chunk(chunk)) == chunk
    ack = PhotoAck(chunk.sha256, 200)
    assert decode_photo_ack(encode_photo_ack(ack)) == ack
    done = PhotoAck(chunk.sha256, 300, done=True)
    assert decode_photo_ack(encode_photo_ack(done)) == done


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"no header at all", "no header"),
        (b"{oops\n1234", "not JSON"),
        (b'{"v":1,"sha":"abc","off":0,"total":4,"type":"image/jpeg"}\n1234', "64"),
        (
            b'{"v":1,"sha":"' + b"a" * 64 + b'","off":2,"total":4,"type":"image/jpeg"}\n1234',
            "outside",
        ),
        (b'{"v":1,"sha":"' + b"a" * 64 + b'","off":0,"total":4,"type":"text/html"}\n1234', "image"),
        (
            b'{"v":1,"sha":"' + b"a" * 64 + b'","off":0,"total":99999999,"type":"image/jpeg"}\nx',
            "size",
        ),
        (b'{"v":1,"sha":"' + b"a" * 64 + b'","off":0,"total":4,"type":"image/jpeg"}\n', "chunk"),
    ],
)
def test_malformed_chunks_are_refused_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        decode_photo_chunk(payload)


def test_a_chunk_larger_than_the_limit_is_refused() -> None:
    big = b"x" * (MAX_CHUNK_BYTES + 1)
    chunk = PhotoChunk("a" * 64, 0, len(big), "image/jpeg", big)
    with pytest.raises(WireError, match="chunk of"):
        decode_photo_chunk(encode_photo_chunk(chunk))


# --- the depot's store -------------------------------------------------------------------------


def _chunks(data: bytes, size: int) -> list[PhotoChunk]:
    sha = _sha(data)
    return [
        PhotoChunk(sha, at, len(data), "image/jpeg", data[at : at + size])
        for at in range(0, len(data), size)
    ]


def test_depot_takes_chunks_in_order_and_verifies_the_whole(depot_database: str) -> None:
    store = DepotStore(depot_database)
    data = os.urandom(10_000)
    a, b, c = _chunks(data, 4000)
    assert store.photo_chunk("van-1", a) == PhotoAck(a.sha256, 4000)
    # A chunk from beyond what is held is not kept: the device is told where to go back to.
    assert store.photo_chunk("van-1", c) == PhotoAck(a.sha256, 4000)
    # A chunk already held (a resend after a lost ack) changes nothing.
    assert store.photo_chunk("van-1", a) == PhotoAck(a.sha256, 4000)
    assert store.photo_progress("van-1", a.sha256) == 4000
    assert store.photo_chunk("van-1", b) == PhotoAck(a.sha256, 8000)
    assert store.photo_chunk("van-1", c) == PhotoAck(a.sha256, 10_000, done=True)
    assert store.photo(a.sha256) == ("image/jpeg", data)
    assert store.photo_progress("van-1", a.sha256) == 0
    # Once stored, any chunk of it is answered "done" (the device lost that answer).
    assert store.photo_chunk("van-1", b).done
    store.close()
    # Durable: another process opening the file sees the photo.
    again = DepotStore(depot_database)
    assert again.photo(a.sha256) == ("image/jpeg", data)
    again.close()


def test_depot_throws_away_bytes_that_do_not_hash_to_their_name(depot_database: str) -> None:
    store = DepotStore(depot_database)
    data = os.urandom(5000)
    bad = bytearray(data)
    bad[4500] ^= 0xFF
    first, last = _chunks(data, 4000)
    forged = PhotoChunk(first.sha256, 4000, 5000, "image/jpeg", bytes(bad[4000:]))
    store.photo_chunk("van-1", first)
    ack = store.photo_chunk("van-1", forged)
    assert ack == PhotoAck(first.sha256, 0, error="hash mismatch")
    assert store.photo(first.sha256) is None
    reasons = [r[0] for r in store.query("SELECT reason FROM quarantine")]
    assert reasons == [f"photo {first.sha256} does not hash to its name"]
    # Sent again, correctly, from the start: stored.
    store.photo_chunk("van-1", first)
    assert store.photo_chunk("van-1", last).done
    store.close()


def test_a_version_1_depot_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE streams (device TEXT, journal TEXT, head_seq INTEGER, head_hash BLOB, "
        "first_seen_ns INTEGER, last_seen_ns INTEGER, nacked_at INTEGER, "
        "PRIMARY KEY (device, journal));"
        "CREATE TABLE events (device TEXT, journal TEXT, seq INTEGER);"
        "CREATE TABLE gaps (id INTEGER PRIMARY KEY);"
        "CREATE TABLE quarantine (id INTEGER PRIMARY KEY, topic TEXT, reason TEXT, "
        "payload BLOB, received_ns INTEGER);"
        "CREATE TABLE device_status (device TEXT PRIMARY KEY, status TEXT, updated_ns INTEGER);"
        "INSERT INTO events VALUES ('van-1', 'j', 1);"
        "PRAGMA user_version=1;"
    )
    old.close()
    store = DepotStore(path)
    assert store.query("SELECT device, seq FROM events") == [("van-1", 1)]
    assert store.query("PRAGMA user_version") == [(LATEST,)]
    data = os.urandom(100)
    assert store.photo_chunk("van-1", _chunks(data, 100)[0]).done
    store.close()


# --- the device's outbox -----------------------------------------------------------------------


def test_a_photo_is_stored_with_its_event_or_not_at_all(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "van.db", "van-1")
    outbox = PhotoOutbox(journal)
    data = os.urandom(2000)
    with pytest.raises(RuntimeError), journal.transaction() as tx:
        ref = outbox.stage(tx, data)
        tx.append("parcel_delivered", {"photo": ref.as_payload()})
        raise RuntimeError("the courier app crashed before the commit")
    assert outbox.next_pending() is None and journal.last_seq == 0
    with journal.transaction() as tx:
        ref = outbox.stage(tx, data)
        tx.append("parcel_delivered", {"photo": ref.as_payload()})
    assert ref.sha256 == _sha(data) and ref.size == 2000
    pending = outbox.next_pending()
    assert pending is not None and pending.sha256 == ref.sha256 and pending.confirmed == 0
    assert outbox.read(ref.sha256, 1000, 10) == data[1000:1010]
    # The same photo twice is one photo.
    outbox.add(data)
    assert outbox.counts() == {"pending": 1, "pending_bytes": 2000, "corrupt": 0}
    with pytest.raises(JournalError):
        outbox.add(b"")
    journal.close()


# --- through the broker ------------------------------------------------------------------------


class PhotoWatch:
    """What the depot said about photos, for tests to wait on (no polling of the database)."""

    def __init__(self) -> None:
        self.acks: list[tuple[str, PhotoAck]] = []
        self.cond = threading.Condition()
        self.hook: Callable[[PhotoAck], None] | None = None

    def __call__(self, device: str, ack: PhotoAck) -> None:
        if self.hook is not None:
            self.hook(ack)
        with self.cond:
            self.acks.append((device, ack))
            self.cond.notify_all()

    def done(self) -> set[str]:
        return {a.sha256 for _, a in self.acks if a.done}


@pytest.fixture
def depot(broker: Broker, depot_database: str) -> Iterator[tuple[Depot, PhotoWatch]]:
    watch = PhotoWatch()
    service = Depot(DepotStore(depot_database), address(broker, "depot"), on_photo=watch)
    service.start()
    assert service.session.wait_connected(10)
    yield service, watch
    service.stop()
    service.store.close()


def _uplink(journal: Journal, broker: Broker, port: int | None = None) -> Uplink:
    return Uplink(journal, address(broker, "van-1", port), photo_chunk_bytes=CHUNK, **FAST)


def test_a_photo_and_its_event_reach_the_depot(
    broker: Broker, depot: tuple[Depot, PhotoWatch], tmp_path: Path
) -> None:
    service, _ = depot
    journal = Journal(tmp_path / "van.db", "van-1")
    uplink = _uplink(journal, broker)
    data = os.urandom(30_000)
    with journal.transaction() as tx:
        ref = uplink.photos.stage(tx, data)
        event = tx.append("parcel_delivered", {"parcel": "P1", "photo": ref.as_payload()})
    uplink.start()
    try:
        assert uplink.wait_acked(event.seq, 20)
        assert uplink.wait_photos_sent(20)
    finally:
        uplink.stop()
    assert service.store.photo(ref.sha256) == ("image/jpeg", data)
    assert uplink.photos.counts()["pending"] == 0
    assert uplink.photo_chunks_sent == -(-len(data) // CHUNK)  # each chunk once
    journal.close()


def test_a_photo_crosses_a_link_cut_halfway_and_resumes(
    broker: Broker, depot: tuple[Depot, PhotoWatch], tmp_path: Path
) -> None:
    service, watch = depot
    data = os.urandom(60_000)
    half = threading.Event()
    with LinkProxy(broker.host, broker.port, name="van-1") as link:
        link.throttle(100_000)  # a weak uplink, so the cut lands mid-photo

        def cut_at_half(ack: PhotoAck) -> None:
            if not half.is_set() and ack.have >= len(data) // 2:
                link.cut("reset")  # before the depot's answer goes out: it is lost too
                half.set()

        watch.hook = cut_at_half
        journal = Journal(tmp_path / "van.db", "van-1")
        uplink = _uplink(journal, broker, link.port)
        ref = uplink.photos.add(data)
        uplink.start()
        try:
            assert half.wait(20), "the photo never got halfway"
            held = service.store.photo_progress("van-1", ref.sha256)
            assert len(data) // 2 <= held < len(data)
            assert service.store.photo(ref.sha256) is None
            link.restore()
            assert uplink.wait_photos_sent(30)
        finally:
            uplink.stop()
    assert service.store.photo(ref.sha256) == ("image/jpeg", data)
    assert service.store.photo_progress("van-1", ref.sha256) == 0
    # Resumed, not restarted: at most the chunk lost in the cut and the one whose answer was
    # lost were sent twice.
    assert uplink.photo_bytes_sent <= len(data) + 2 * CHUNK
    assert uplink.session.connects >= 2
    journal.close()


def test_a_photo_resumes_after_the_device_restarts(
    broker: Broker, depot: tuple[Depot, PhotoWatch], tmp_path: Path
) -> None:
    service, watch = depot
    data = os.urandom(40_000)
    half = threading.Event()
    watch.hook = lambda ack: half.set() if ack.have >= len(data) // 2 else None
    with LinkProxy(broker.host, broker.port, name="van-1") as link:
        link.throttle(50_000)
        journal = Journal(tmp_path / "van.db", "van-1")
        first = _uplink(journal, broker, link.port)
        ref = first.photos.add(data)
        first.start()
        assert half.wait(20)
        first.stop()
        journal.close()
        confirmed = Journal(tmp_path / "van.db", "van-1")
        pending = PhotoOutbox(confirmed).next_pending()
        assert pending is not None and pending.confirmed >= len(data) // 2 - CHUNK
        second = _uplink(confirmed, broker, link.port)
        second.start()
        try:
            assert second.wait_photos_sent(30)
        finally:
            second.stop()
    assert service.store.photo(ref.sha256) == ("image/jpeg", data)
    assert second.photo_bytes_sent <= len(data) - pending.confirmed + CHUNK
    confirmed.close()


def test_a_slow_photo_never_holds_up_an_event(
    broker: Broker, depot: tuple[Depot, PhotoWatch], tmp_path: Path
) -> None:
    service, watch = depot
    photos = [os.urandom(50_000) for _ in range(3)]
    started = threading.Event()
    watch.hook = lambda ack: started.set()
    with LinkProxy(broker.host, broker.port, name="van-1") as link:
        link.throttle(40_000)  # 150 KB of photos: about 4 s on this link
        journal = Journal(tmp_path / "van.db", "van-1")
        uplink = _uplink(journal, broker, link.port)
        refs = [uplink.photos.add(p) for p in photos]
        uplink.start()
        try:
            assert started.wait(20), "no photo chunk reached the depot"
            event = journal.append("parcel_delivered", {"parcel": "P9"})
            assert uplink.wait_acked(event.seq, 20)
            # The event went by while the photos were still on their way.
            still_on_device = uplink.photos.counts()["pending"]
            assert still_on_device >= 2, f"{still_on_device} photos left when the event got in"
            assert uplink.wait_photos_sent(30)
        finally:
            uplink.stop()
    for ref, data in zip(refs, photos, strict=True):
        assert service.store.photo(ref.sha256) == ("image/jpeg", data)
    journal.close()


def test_a_corrupt_copy_on_the_device_raises_an_alarm_and_is_not_sent(
    broker: Broker, depot: tuple[Depot, PhotoWatch], tmp_path: Path
) -> None:
    service, _ = depot
    journal = Journal(tmp_path / "van.db", "van-1")
    uplink = _uplink(journal, broker)
    ref = uplink.photos.add(os.urandom(5000))
    with journal.transaction() as tx:  # the SD card flipped a byte
        tx.execute("UPDATE photo_outbox SET data = zeroblob(5000) WHERE sha256=?", (ref.sha256,))
    uplink.start()
    try:
        assert uplink.wait_photos_sent(10)  # nothing left to send: it was set aside
        alarm = journal.last_seq
        assert uplink.wait_acked(alarm, 10)
    finally:
        uplink.stop()
    assert uplink.photos.counts()["corrupt"] == 1
    kinds = journal.query("SELECT kind, payload FROM events")
    assert kinds[-1][0] == "alarm" and "photo_corrupt" in kinds[-1][1]
    assert service.store.photo(ref.sha256) is None
    assert uplink.photo_chunks_sent == 0
    journal.close()
