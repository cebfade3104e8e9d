"""The batch codec and the depot store: what verifies, what is refused, and why."""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depot.ingest import DepotStore
from sync.errors import WireError
from sync.journal import Journal
from sync.wire import (
    Ack,
    canonical_payload,
    decode_ack,
    decode_batch,
    decode_photo_ack,
    decode_photo_chunk,
    encode_ack,
    encode_batch,
    split_topic,
)


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


# --- the strict reader: what no decoder of outside bytes lets through ------------------------


def _batch_with(fragment: str) -> bytes:
    """A batch text whose first payload is `fragment`, verbatim (refused before its chain)."""
    text = (
        '{"v":1,"dev":"van-1","jnl":"j","first":1,"prev":"00","last":"00","boots":["b"],'
        '"b":[0],"u":["' + "a" * 32 + '"],"m":[1],"w":[1],"s":"1","kinds":["k"],"k":[0],'
        '"p":[' + fragment + "]}"
    )
    return zlib.compress(text.encode())


@pytest.mark.parametrize(
    ("fragment", "reason"),
    [
        ('{"n":NaN}', "NaN, which is not a JSON number"),
        ('{"n":Infinity}', "Infinity"),
        ('{"n":-Infinity}', "-Infinity"),
        ('{"n":1e999}', "too large for a 64-bit float"),
        ('{"n":9223372036854775808}', "integer outside 64 bits"),
        ('{"n":-9223372036854775809}', "integer outside 64 bits"),
        ('{"n":' + "7" * 5000 + "}", "integer outside 64 bits"),  # beyond Python's parse limit
        ('{"n":' + "[" * 30 + "]" * 30 + "}", "more than 32 levels of nesting"),
        ("[" * 1000 + "]" * 1000, "more than 32 levels of nesting"),  # RecursionError inside
        ('{"n":"\\ud800"}', "lone surrogate"),
        ('{"\\udc00x":1}', "lone surrogate"),
        ('{"n":["ok","\\udbff"]}', "lone surrogate"),
    ],
)
def test_the_strict_reader_refuses_with_the_reason(fragment: str, reason: str) -> None:
    with pytest.raises(WireError, match=re.escape(reason)):
        decode_batch(_batch_with(fragment))


def test_the_strict_reader_takes_the_edges_of_what_is_allowed() -> None:
    ok = [
        '{"n":9223372036854775807,"m":-9223372036854775808}',
        '{"n":"\\ud83d\\ude00","e":"\\\\ud800","f":1.5e300}',  # a pair; an escaped backslash
        '{"n":' + "[" * 29 + "]" * 29 + "}",  # the payload is level 3, its deepest list 32
    ]
    for fragment in ok:
        with pytest.raises(WireError, match="hash chain"):  # got past the reader
            decode_batch(_batch_with(fragment))


def test_every_decoder_of_outside_bytes_uses_the_strict_reader() -> None:
    with pytest.raises(WireError, match="ack holds an integer outside 64 bits"):
        decode_ack(b'{"v":1,"jnl":"j","seq":18446744073709551616}')
    with pytest.raises(WireError, match="photo ack holds NaN"):
        decode_photo_ack(b'{"v":1,"sha":"' + b"a" * 64 + b'","have":NaN}')
    with pytest.raises(WireError, match="photo chunk header holds a string with a lone surrogate"):
        decode_photo_chunk(b'{"v":1,"sha":"x","type":"image/\\ud800"}\nbytes')
    with pytest.raises(WireError, match="is not UTF-8"):
        decode_ack(b'{"v":1,"jnl":"\xff","seq":1}')


def test_clock_deltas_and_sequence_numbers_must_stay_within_64_bits(journal: Journal) -> None:
    prev, events = journal.read(0, 2)
    doc = json.loads(zlib.decompress(encode_batch("van-1", journal.journal_id, prev, events)))
    doc["w"] = [2**63 - 1, 1]  # each fits; their sum, the second event's clock, does not
    with pytest.raises(WireError, match="clock deltas add up beyond 64 bits"):
        decode_batch(zlib.compress(json.dumps(doc).encode()))
    doc["first"] = 2**63 - 1  # the second event's sequence number would be 2**63
    with pytest.raises(WireError, match="sequence numbers from"):
        decode_batch(zlib.compress(json.dumps(doc).encode()))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"fix": float("nan")}, "Out of range float"),
        ({"fix": float("inf")}, "Out of range float"),
        ({"n": 2**64}, "integer outside 64 bits"),
        ({"n": "\ud800"}, "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),
        ({"n": json.loads("[" * 30 + "]" * 30)}, "more than 30 levels of nesting"),
    ],
)
def test_a_device_cannot_journal_what_the_depot_would_refuse(
    journal: Journal, payload: dict[str, object], reason: str
) -> None:
    before = journal.last_seq
    with pytest.raises(ValueError, match=reason):
        journal.append("parcel_scanned", payload)
    assert journal.last_seq == before
    # The edges are fine, and hash as before.
    event = journal.append("parcel_scanned", {"n": 2**63 - 1, "d": [[[[1]]]], "t": "ü😀"})
    assert canonical_payload(event.payload) == '{"d":[[[[1]]]],"n":9223372036854775807,"t":"ü😀"}'
