"""The van at the door of a parcel with care: preferences refused, signatures, ID checks, cards.

Real SQLite journal files (as tests/test_delivery.py); the round's clock is a fixed simulated
one, so an ID's year of birth is judged in a known year. The last test sends a signature
through a real Mosquitto broker to the depot, which stores it like a photo.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from depot.ingest import Depot, DepotStore
from edge.delivery import (
    DeliveryRound,
    InvalidOutcome,
    PreferenceRefused,
    RoundError,
    care_notes,
)
from edge.signature import CONTENT_TYPE, MAX_BYTES, Signature, SignatureError
from edge.van import MAX_COURIER_LINE, CourierInput
from parcel.cards import CARD_CODE_CHARS, new_card_code
from parcel.care import REFUSALS, Care
from parcel.codes import CARD_LEFT_FOR, DELIVERED_BY, FAILURE_REASONS
from parcel.manifest import Manifest, Stop
from simulators.broker import Broker
from simulators.doorstep import write_doorstep_jpeg
from sync.clock import ScaledClock
from sync.errors import WireError
from sync.journal import Journal
from sync.uplink import Uplink
from sync.wire import PhotoChunk, decode_photo_chunk, encode_photo_chunk
from tests.conftest import address
from tests.test_delivery import DAY, STOP_1, STOP_2, Fix, Gps, Screen, s10

YEAR = 2026
NOW_NS = int(dt.datetime(YEAR, 11, 21, 10, 0, tzinfo=dt.UTC).timestamp() * 1e9)

# Stop 1: a signature parcel (no neighbour), an 18+ parcel, one with a safe place, one that
# said nothing (the depot's default: no safe place). Stop 2: a depot older than care (none).
SIGNED, AGED, SAFE, PLAIN, OLD = (s10(n) for n in (501, 502, 503, 504, 505))
CARE = {
    SIGNED: Care(signature=True, neighbour=False),
    AGED: Care(age_min=18),
    SAFE: Care(safe_place=True, safe_place_note="behind the blue gate", locker_instead=True),
    PLAIN: Care.default(),
}
STROKES: dict[str, Any] = {
    "width": 400,
    "height": 150,
    "strokes": [[[10, 100], [40, 20], [70, 110]], [[90, 60]], [[120, 90], [200, 40]]],
}


def care_manifest() -> bytes:
    stops = (
        Stop(
            1,
            *STOP_1,
            parcels=(SIGNED, AGED, SAFE, PLAIN),
            address="Damrak 1",
            recipient="A. Jansen",
            instructions="ring twice",
            access_code="1234#",
            care=CARE,
        ),
        Stop(2, *STOP_2, parcels=(OLD,), address="Dam 2"),
    )
    return Manifest(van="van-1", version=1, day=DAY, stops=stops).to_json()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "van-1.db", "van-1") as j:
        yield j


def at_stop_1(journal: Journal) -> tuple[DeliveryRound, Screen]:
    """The care manifest applied, everything loaded, departed, arrived at stop 1."""
    screen = Screen()
    clock = ScaledClock(wall_start_ns=NOW_NS, speed=1.0, boot_id="test-boot")
    rnd = DeliveryRound(
        journal, screen, van_id="van-1", position=Gps(Fix(*STOP_1)), clock=clock
    )
    rnd.apply_manifest(care_manifest())
    for p in (SIGNED, AGED, SAFE, PLAIN, OLD):
        rnd.scan(p)
    rnd.depart()
    rnd.arrive(1)
    return rnd, screen


def kinds(journal: Journal, after: int) -> list[str]:
    return [e.kind for e in journal.read(after, 10**6)[1]]


def outbox(journal: Journal) -> list[tuple[Any, ...]]:
    return journal.query("SELECT sha256, content_type, data FROM photo_outbox")


# --- the stop's screen ---------------------------------------------------------------------------


def test_arriving_shows_the_code_the_instructions_and_each_parcels_care(journal: Journal) -> None:
    rnd, screen = at_stop_1(journal)
    tone, say, facts = screen.last
    assert tone == "ok" and facts["event"] == "stop_arrived"
    assert facts["access_code"] == "1234#" and facts["instructions"] == "ring twice"
    assert facts["care"] == {
        SIGNED: ["signature", "no neighbour", "no safe place"],
        AGED: ["signature", "ID 18+", "no safe place"],
        SAFE: ["safe place: behind the blue gate", "customer prefers a locker"],
        PLAIN: ["no safe place"],
    }
    assert "access code 1234#" in say and "ring twice" in say
    status = rnd.status()  # a screen drawn afresh shows the same notes
    assert (status["access_code"], status["care"]) == ("1234#", facts["care"])
    assert f"{AGED}: signature, ID 18+" in say
    # A parcel whose manifest names no care (an older depot): nothing extra, as before.
    assert care_notes(Care(safe_place=True)) == ["safe place allowed"]


# --- refusals ------------------------------------------------------------------------------------

REFUSED_CASES: list[tuple[str, dict[str, Any], str]] = [
    (PLAIN, {"to": "safe_place", "photo": "x.jpg"}, "safe_place_not_allowed"),
    (SIGNED, {"to": "neighbour", "name": "B. de Vries", "neighbour_address": "Damrak 3"},
     "neighbour_not_allowed"),
    (SIGNED, {"to": "recipient", "name": "A. Jansen"}, "signature_required"),
    (AGED, {"signature": STROKES, "signed_by": "A. Jansen"}, "id_check_required"),
    (AGED, {"signature": STROKES, "signed_by": "A. Jansen",
            "id_check": {"id_type": "passport", "birth_year": YEAR - 18}}, "under_age"),
]


@pytest.mark.parametrize(("parcel", "kwargs", "reason"), REFUSED_CASES)
def test_each_forbidden_handover_is_refused_journaled_and_not_delivered(
    journal: Journal, parcel: str, kwargs: dict[str, Any], reason: str
) -> None:
    rnd, screen = at_stop_1(journal)
    rnd.scan(parcel)
    before = journal.last_seq
    with pytest.raises(PreferenceRefused) as refused:
        rnd.deliver(parcel, **kwargs)
    assert isinstance(refused.value, RoundError)
    assert refused.value.reason == reason and str(refused.value) == REFUSALS[reason]
    (event,) = journal.read(before, 10)[1]
    assert event.kind == "outcome_refused"
    assert event.payload == {
        "parcel": parcel,
        "stop": 1,
        "to": kwargs.get("to", "recipient"),
        "reason": reason,
        "care": CARE[parcel].to_doc(),
    }
    tone, say, facts = screen.last
    assert tone == "refuse" and REFUSALS[reason] in say and facts["seq"] == event.seq
    # Nothing recorded as delivered, no signature kept, and the parcel is still on the van.
    assert outbox(journal) == []
    assert rnd.status()["parcels"]["delivered"] == 0
    assert parcel in rnd.status()["due_here"]


def test_a_refused_safe_place_leaves_one_refusal_and_then_the_door_opens(
    journal: Journal, tmp_path: Path
) -> None:
    rnd, _screen = at_stop_1(journal)
    shot = write_doorstep_jpeg(tmp_path / "IMG_1.jpg", seed=1)
    before = journal.last_seq
    with pytest.raises(PreferenceRefused):
        rnd.deliver(PLAIN, to="safe_place", photo=str(shot))
    assert kinds(journal, before) == ["outcome_refused"]
    assert outbox(journal) == []  # the photo of a refused drop is not kept
    # As a document (the handheld): the same refusal, with its reason for the screen.
    with pytest.raises(RoundError) as again:
        rnd.courier({"do": "deliver", "parcel": PLAIN, "to": "safe_place", "photo": str(shot)})
    assert again.value.reason == "safe_place_not_allowed"
    assert kinds(journal, before) == ["outcome_refused", "outcome_refused"]
    # The safe place the customer named is allowed, with its photo.
    rnd.scan(SAFE)
    left = rnd.deliver(SAFE, to="safe_place", photo=str(shot))
    assert left.payload["to"] == "safe_place" and left.payload["x12_reason"] == "A3"
    assert (left.payload["signature"], left.payload["signed_by"]) == (None, None)
    assert left.payload["id_check"] is None
    assert "parcel_delivered" not in [
        e.kind for e in journal.read(0, 10**6)[1] if e.payload.get("parcel") == PLAIN
    ]


# --- signatures ----------------------------------------------------------------------------------


def test_a_signature_is_stored_in_the_outbox_with_its_event_and_named_by_its_hash(
    journal: Journal,
) -> None:
    rnd, screen = at_stop_1(journal)
    rnd.scan(SIGNED)
    spaced = {**STROKES, "strokes": STROKES["strokes"]}  # as the screen sent it
    event = rnd.courier(
        {"do": "deliver", "parcel": SIGNED, "signature": spaced, "signed_by": " J. Smith "}
    )
    assert event["event"] == "parcel_delivered"
    assert event["name"] == "J. Smith" and event["signed_by"] == "J. Smith"
    assert (event["upu"], event["x12"], event["x12_reason"]) == ("EMI", "D", "NS")
    ((sha, content_type, data),) = outbox(journal)
    canonical = json.dumps(
        {"v": 1, **STROKES}, sort_keys=True, separators=(",", ":")
    ).encode()
    assert bytes(data) == canonical
    assert event["signature"] == {
        "sha256": hashlib.sha256(canonical).hexdigest(),
        "bytes": len(canonical),
        "type": "application/vnd.lastmile.signature+json",
    }
    assert sha == event["signature"]["sha256"] and content_type == CONTENT_TYPE
    assert Signature.from_bytes(bytes(data)).points == 6
    assert "signed by J. Smith" in screen.last[1]


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        ({"width": 400, "height": 150, "strokes": []}, "1..200 strokes"),
        ({"width": 0, "height": 150, "strokes": [[[0, 0]]]}, "width"),
        ({"width": 400, "height": 150, "strokes": [[[10, 151]]]}, "off the 400x150 sheet"),
        ({"width": 400, "height": 150, "strokes": [[[10.5, 20]]]}, "whole numbers"),
        ({"width": 400, "height": 150, "strokes": [[[True, 20]]]}, "whole numbers"),
        ({"width": 400, "height": 150, "strokes": [[]]}, "stroke 1"),
        ({"width": 400, "height": 150, "strokes": [[[1, 2]]], "png": "x"}, "not png"),
        ({"v": 2, "width": 400, "height": 150, "strokes": [[[1, 2]]]}, "version"),
        ({"width": 2000, "height": 2000, "strokes": [[[1999, 1999]] * 2000] * 11},
         "points in all"),
        ({"width": 2000, "height": 2000, "strokes": [[[1999, 1999]] * 2000] * 6},
         f"more than {MAX_BYTES}"),
        ("a PNG, please", "an object"),
    ],
)
def test_bad_strokes_are_refused_in_one_line_with_nothing_stored(
    journal: Journal, signature: Any, why: str
) -> None:
    rnd, _screen = at_stop_1(journal)
    rnd.scan(SIGNED)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as refused:
        rnd.deliver(SIGNED, signature=signature, signed_by="J. Smith")
    assert refused.value.reason == "bad_signature"
    assert why in str(refused.value) and "\n" not in str(refused.value)
    assert journal.last_seq == before and outbox(journal) == []
    with pytest.raises(SignatureError):
        Signature.from_doc(signature)


def test_a_signature_and_the_signers_name_come_together(journal: Journal) -> None:
    rnd, _screen = at_stop_1(journal)
    rnd.scan(SIGNED)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as unnamed:
        rnd.deliver(SIGNED, name="A. Jansen", signature=STROKES)
    assert unnamed.value.reason == "signer_missing"
    with pytest.raises(InvalidOutcome) as unsigned:
        rnd.deliver(SIGNED, name="A. Jansen", signed_by="A. Jansen")
    assert unsigned.value.reason == "signature_missing"
    with pytest.raises(InvalidOutcome) as nobody:
        rnd.deliver(SAFE, to="safe_place", photo="x.jpg", signature=STROKES, signed_by="X")
    assert nobody.value.reason == "bad_input"
    assert journal.last_seq == before and outbox(journal) == []


# --- ID checks -----------------------------------------------------------------------------------


def test_an_id_check_of_age_delivers_and_keeps_only_type_and_year(journal: Journal) -> None:
    rnd, _screen = at_stop_1(journal)
    rnd.scan(AGED)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as number:
        rnd.deliver(
            AGED,
            signature=STROKES,
            signed_by="A. Jansen",
            id_check={"id_type": "id_card", "birth_year": 1990, "number": "NX1234567"},
        )
    assert number.value.reason == "bad_id_check" and "number" in str(number.value)
    with pytest.raises(InvalidOutcome) as kind:
        rnd.deliver(
            AGED,
            signature=STROKES,
            signed_by="A. Jansen",
            id_check={"id_type": "library_card", "birth_year": 1990},
        )
    assert kind.value.reason == "bad_id_check"
    assert journal.last_seq == before
    event = rnd.deliver(
        AGED,
        signature=STROKES,
        signed_by="A. Jansen",
        id_check={"id_type": "id_card", "birth_year": YEAR - 19},
    )
    assert event.kind == "parcel_delivered"
    assert event.payload["id_check"] == {"id_type": "id_card", "birth_year": YEAR - 19}
    assert "NX1234567" not in json.dumps(
        [e.payload for e in journal.read(0, 10**6)[1]]
    )


# --- failures and cards --------------------------------------------------------------------------


def test_age_check_failed_is_only_for_a_parcel_with_an_age_limit(journal: Journal) -> None:
    rnd, screen = at_stop_1(journal)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as no_limit:
        rnd.fail(PLAIN, "age_check_failed")
    assert no_limit.value.reason == "bad_reason" and journal.last_seq == before
    failed = rnd.fail(AGED, "age_check_failed")
    codes = FAILURE_REASONS["age_check_failed"]
    assert {k: failed.payload[k] for k in ("reason", "upu", "x12", "x12_reason")} == {
        "reason": "age_check_failed",
        "upu": codes.upu,
        "x12": codes.x12,
        "x12_reason": codes.x12_reason,
    }
    card = failed.payload["card"]
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", card)
    assert f"card: {card}" in screen.last[1] and screen.last[2]["card"] == card


def test_a_card_is_left_only_after_the_failures_that_take_one(journal: Journal) -> None:
    rnd, _screen = at_stop_1(journal)
    cards = []
    for reason, codes in FAILURE_REASONS.items():
        if reason == "age_check_failed":
            continue  # its own test: only for AGED
        event = rnd.fail(PLAIN, reason)
        assert event.payload["x12_reason"] == codes.x12_reason, reason
        if reason in CARD_LEFT_FOR:
            cards.append(event.payload["card"])
        else:
            assert event.payload["card"] is None, reason
    assert len(cards) == len(CARD_LEFT_FOR) - 1 == len(set(cards))
    assert set("".join(cards)) <= set(CARD_CODE_CHARS) | {"-"}
    assert not set("".join(cards)) & set("ILOU")
    # Unique-ish: 40 random bits each, so a few hundred never collide.
    many = {new_card_code() for _ in range(500)}
    assert len(many) == 500


# --- a manifest without care ---------------------------------------------------------------------


def test_a_parcel_without_care_is_delivered_as_before(journal: Journal, tmp_path: Path) -> None:
    rnd, screen = at_stop_1(journal)
    rnd.arrive(2)
    assert screen.last[2]["care"] == {} and screen.last[2]["access_code"] == ""
    shot = write_doorstep_jpeg(tmp_path / "IMG_2.jpg", seed=2)
    rnd.scan(OLD)
    event = rnd.deliver(OLD, to="safe_place", photo=str(shot))
    assert event.payload["to"] == "safe_place"
    assert (event.payload["upu"], event.payload["x12"]) == ("EMI", "D")
    assert event.payload["x12_reason"] == DELIVERED_BY["safe_place"].x12_reason == "A3"
    assert "outcome_refused" not in kinds(journal, 0)


def test_a_long_signature_fits_one_courier_input_line(journal: Journal) -> None:
    """The handheld's screen sends the strokes in one JSON line, spaced as it likes: a
    signature near the 64 KiB bound is more than 64 KiB as typed, and still one command."""
    rnd, _screen = at_stop_1(journal)
    rnd.scan(SIGNED)
    strokes = [[[1234, 100 + i % 100] for i in range(1100)] for _ in range(5)]
    doc = {
        "do": "deliver",
        "parcel": SIGNED,
        "signature": {"width": 1500, "height": 200, "strokes": strokes},
        "signed_by": "J. Smith",
    }
    line = json.dumps(doc).encode() + b"\n"
    assert 64 * 1024 < len(line) <= MAX_COURIER_LINE
    replies: list[Mapping[str, Any]] = []
    answered = threading.Event()

    def reply(answer: Mapping[str, Any]) -> None:
        replies.append(answer)
        answered.set()

    read_fd, write_fd = os.pipe()
    reader = CourierInput(read_fd, lambda text: rnd.courier(json.loads(text)), reply)
    reader.start()
    try:
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(line)
        assert answered.wait(10)
    finally:
        reader.stop()
        os.close(read_fd)
    assert replies[0]["event"] == "parcel_delivered", replies
    ((data,),) = journal.query("SELECT data FROM photo_outbox")
    assert len(data) <= MAX_BYTES and Signature.from_bytes(bytes(data)).points == 5500


# --- the wire and the depot ----------------------------------------------------------------------


def test_the_wire_carries_a_signature_and_still_refuses_other_types() -> None:
    data = Signature.from_doc(STROKES).to_bytes()
    sha = hashlib.sha256(data).hexdigest()
    chunk = PhotoChunk(sha, 0, len(data), CONTENT_TYPE, data)
    assert decode_photo_chunk(encode_photo_chunk(chunk)) == chunk
    with pytest.raises(WireError, match="not an image or a signature"):
        decode_photo_chunk(encode_photo_chunk(PhotoChunk(sha, 0, 4, "text/html", b"<b>x")))


def test_a_signature_reaches_the_depot_behind_its_event(broker: Broker, tmp_path: Path) -> None:
    store = DepotStore(tmp_path / "depot.db")
    service = Depot(store, address(broker, "depot"))
    service.start()
    try:
        assert service.session.wait_connected(10)
        with Journal(tmp_path / "van-1.db", "van-1") as journal:
            rnd, _screen = at_stop_1(journal)
            rnd.scan(SIGNED)
            event = rnd.deliver(SIGNED, signature=STROKES, signed_by="J. Smith")
            uplink = Uplink(
                journal,
                address(broker, "van-1"),
                ack_timeout_s=2.0,
                keepalive_s=2,
                backoff_min_s=0.1,
                backoff_max_s=0.5,
            )
            uplink.start()
            try:
                assert uplink.wait_acked(event.seq, 20)
                assert uplink.wait_photos_sent(20)
            finally:
                uplink.stop()
        sha = event.payload["signature"]["sha256"]
        assert store.photo(sha) == (CONTENT_TYPE, Signature.from_doc(STROKES).to_bytes())
        rows = store.query("SELECT payload FROM events WHERE kind='parcel_delivered'")
        assert json.loads(str(rows[0][0]))["signature"]["sha256"] == sha
    finally:
        service.stop()
        store.close()
