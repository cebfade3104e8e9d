"""The batch codec and the depot store: what verifies, what is refused, and why."""

from __future__ import annotations

import contextlib
import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depot.ingest import DepotStore
from sync.errors import WireError
from sync.journal import Journal
from sync.wire import Ack, decode_ack, decode_batch, encode_ack, encode_batch, split_topic


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j.db", "van-1")
    for i in range(30):
        j.append(
            "parcel_scanned",
            {"parcel": f"RB{i:08d}5GB", "aim": "]C0", "n": i, "gs": "a\x1db", "ü": 1.5},
        )
    return j


def test_roundtrip_recomputes_the_chain(journal: Journal) -> None:
    prev, events = journal.read(10, 5)
    batch = decode_batch(encode_batch("van-1", journal.journal_id, prev, events))
    assert [e.seq for e in batch.events] == [11, 12, 13, 14, 15]
    assert batch.events == events


def test_tampered_event_breaks_the_chain(journal: Journal) -> None:
    prev, events = journal.read(0, 30)
    doc = json.loads(zlib.decompress(encode_batch("van-1", journal.journal_id, prev, events)))
    doc["p"][7]["parcel"] = "RB000000000GB"
    with pytest.raises(WireError, match="hash chain"):
        decode_batch(zlib.compress(json.dumps(doc).encode()))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\x01garbage", "not zlib"),
        (zlib.compress(b"{not json"), "not JSON"),
        (zlib.compress(b"[1,2]"), "not a JSON object"),
        (zlib.compress(b'{"v":2}'), "version"),
        (zlib.compress(b'{"v":1,"dev":"van-1"}'), "missing"),
        (zlib.compress(b"0" * (5 * 1024 * 1024)), "larger than"),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_batch(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_batch_or_a_wire_error(data: bytes) -> None:
    for payload in (data, zlib.compress(data)):
        with contextlib.suppress(WireError):
            decode_batch(payload)


def test_ack_and_topic_contract() -> None:
    assert decode_ack(encode_ack(Ack("j1", 42))) == Ack("j1", 42)
    assert decode_ack(encode_ack(Ack("j1", 42, 40))).resend_from == 40
    with pytest.raises(WireError):
        decode_ack(b'{"v":1,"jnl":"j","seq":-1}')
    assert split_topic("lastmile/v1/van-7/events") == ("van-7", "events")
    with pytest.raises(WireError):
        split_topic("other/v1/van-7/events")


def test_depot_store_is_idempotent_detects_gaps_and_forks(journal: Journal, tmp_path: Path) -> None:
    store = DepotStore(tmp_path / "depot.db")

    def batch(after: int, n: int) -> bytes:
        prev, events = journal.read(after, n)
        return encode_batch("van-1", journal.journal_id, prev, events)

    r = store.ingest(decode_batch(batch(0, 10)))
    assert (r.ack.seq, r.stored, r.gap) == (10, 10, False)
    r = store.ingest(decode_batch(batch(0, 10)))  # the same batch again: nothing new
    assert (r.ack.seq, r.stored, r.duplicates) == (10, 0, 10)
    r = store.ingest(decode_batch(batch(20, 5)))  # 11..20 lost on the way
    assert r.gap and r.ack.seq == 10 and r.ack.resend_from == 11
    r = store.ingest(decode_batch(batch(25, 5)))  # a second gap batch asks for no second resend
    assert r.gap and r.ack.resend_from is None
    r = store.ingest(decode_batch(batch(5, 20)))  # overlap 6..10, new 11..25
    assert (r.ack.seq, r.stored, r.duplicates) == (25, 15, 5)
    assert store.missing_seqs() == 0
    rows = store.query("SELECT count(*), count(DISTINCT uuid) FROM events")
    assert rows == [(25, 25)]
    assert store.query("SELECT expected_seq, got_seq FROM gaps") == [(11, 21), (11, 26)]

    # A different chain claiming the same journal (a fork) is refused and stores nothing.
    other = Journal(tmp_path / "other.db", "van-1")
    for i in range(30):
        other.append("parcel_scanned", {"n": i})
    prev, events = other.read(0, 30)
    forged = decode_batch(encode_batch("van-1", journal.journal_id, prev, events))
    with pytest.raises(WireError):
        store.ingest(forged)
    assert store.head("van-1", journal.journal_id) == 25
