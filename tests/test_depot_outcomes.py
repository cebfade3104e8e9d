"""The depot's side of outcomes at the door, on each database: a van's refused handover, a
signed delivery with an ID check (its strokes arriving like a photo and drawn by the console),
a delivery that broke the parcel's care (applied, alarmed, counted), deliveries by method,
and X12 status reasons in the notices and the EPCIS export.

The depot is tests/test_customer_link.py's (a real service; device events from real journals
through the wire's own encoding), its web port real HTTP.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from depot.epcis import export_epcis
from depot.outcomes import METHODS
from depot.store import DepotDatabase
from depot.web import DepotWeb
from depot.web.signature import signature_svg
from sync.wire import SIGNATURE_CONTENT_TYPE, PhotoChunk, decode_photo_chunk, encode_photo_chunk
from tests.test_customer_link import PARCEL, Depot
from tests.test_customer_link import depot as depot
from tests.web import signed_in

OTHER = "RR123456785NL"
YEAR = dt.datetime.now(dt.UTC).year
STROKES = {"v": 1, "width": 300, "height": 100,
           "strokes": [[[10, 50], [40, 20], [80, 70]], [[120, 60]]]}
SIGNED_CARE = {"signature": True, "age_min": 18}
POD = {"scan": PARCEL, "scanned_at_ns": 1, "no_scan_reason": None, "fix": None, "no_fix": True,
       "no_fix_reason": "no_signal", "distance_m": None, "far": False, "at_ns": 1, "photo": None}


def strokes_bytes(doc: dict[str, Any] = STROKES) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(depot: Depot, data: bytes, device: str = "van-1") -> dict[str, Any]:
    """The strokes stored at the depot as the van's photo outbox sends them; their reference."""
    sha = hashlib.sha256(data).hexdigest()
    chunk = decode_photo_chunk(
        encode_photo_chunk(PhotoChunk(sha, 0, len(data), SIGNATURE_CONTENT_TYPE, data))
    )
    assert depot.service.store.photo_chunk(device, chunk).done
    return {"sha256": sha, "bytes": len(data), "type": SIGNATURE_CONTENT_TYPE}


def alarms_named(depot: Depot, name: str) -> list[dict[str, Any]]:
    from depot.alarms import list_alarms

    with depot.service.database.reading() as conn:
        return [a for a in list_alarms(conn, "all") if a["alarm"] == name]


def counts(depot: Depot, counters: tuple[str, ...] = ()) -> dict[str, Any]:
    return depot.service.book.outcome_counts(counters)


def last_entry(depot: Depot, parcel: str = PARCEL) -> dict[str, Any]:
    entry: dict[str, Any] = depot.service.book.track(parcel)["timeline"][-1]
    return entry


@pytest.fixture
def web(depot: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(depot.service.book, clock=depot.clock, actions=depot.service) as running:
        yield running


def test_a_refused_handover_is_a_timeline_entry_that_moves_nothing_and_tells_nobody(
    depot: Depot,
) -> None:
    depot.receive(care=SIGNED_CARE)
    told = len(depot.notices("customer")) + len(depot.notices("merchant"))
    depot.emit("van-1", "outcome_refused", parcel=PARCEL, stop=1, to="safe_place",
               reason="safe_place_not_allowed", care={**SIGNED_CARE, "safe_place": False})
    track = depot.service.book.track(PARCEL)
    assert track["state"] == "received"
    entry = last_entry(depot)
    assert (entry["step"], entry["state"], entry["device"]) == (
        "outcome_refused", "received", "van-1"
    )
    assert entry["details"]["to"] == "safe_place"
    assert entry["details"]["reason"] == "safe_place_not_allowed"
    assert entry["details"]["reason_text"] == "the customer allows no safe place for this parcel"
    assert len(depot.notices("customer")) + len(depot.notices("merchant")) == told
    assert counts(depot)["preference_refusals"] == 1
    assert counts(depot)["preference_violations"] == 0
    assert alarms_named(depot, "preference_violated") == []
    # The customer's page does not show the courier's refusal.
    view = depot.service.customer_view(depot.token())
    assert all("refus" not in line.words for line in view.timeline)


def test_a_signed_delivery_keeps_its_proof_and_the_console_draws_the_signature(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(care=SIGNED_CARE)
    signature = sign(depot, strokes_bytes())
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="recipient",
               name="A. Jansen", neighbour_address=None, x12_reason="NS",
               signature=signature, signed_by="  J.   Smith ",
               id_check={"id_type": "id_card", "birth_year": 1990}, pod=POD)
    entry = last_entry(depot)
    assert entry["step"] == "delivered" and depot.service.book.track(PARCEL)["state"] == "delivered"
    details = entry["details"]
    assert details["signature"] == signature and details["signed_by"] == "J. Smith"
    assert details["id_check"] == {"id_type": "id_card", "birth_year": 1990}
    assert details["x12_reason"] == "NS" and "preference_violated" not in details
    assert alarms_named(depot, "preference_violated") == []
    assert counts(depot)["deliveries_by_method"]["signature"] == 1

    merchant = depot.notices("merchant")[-1]["details"]
    customer = depot.notices("customer")[-1]["details"]
    for told in (merchant, customer):
        assert told["signed"] is True and told["signed_by"] == "J. Smith"
        assert told["x12_reason"] == "NS" and told["id_checked"] == "id_card"
        assert "1990" not in json.dumps(told) and "signature" not in told

    # The strokes are served as they are stored, never as markup.
    token = web_token(depot.service.database)
    answer = urllib.request.urlopen(urllib.request.Request(
        f"{web.url}/photos/{signature['sha256']}", headers={"Authorization": f"Bearer {token}"}
    ), timeout=10)
    with answer:
        assert answer.headers["Content-Type"] == SIGNATURE_CONTENT_TYPE
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.read() == strokes_bytes()

    kim = signed_in(web.url, depot.service.database, "viewer")
    status, page = kim.get(f"/console/parcels/{PARCEL}")
    assert status == 200
    drawn = re.search(r'<td class="pod-signature">(.*?)</td>', page, re.S)
    assert drawn is not None
    assert '<polyline points="10,50 40,20 80,70"/>' in drawn.group(1)
    assert '<polyline points="120,60 120,60"/>' in drawn.group(1)  # a dot is drawn too
    assert 'viewBox="0 0 300 100"' in drawn.group(1)
    assert '<strong class="pod-signer">J. Smith</strong>' in drawn.group(1)
    assert "ID checked: id card, born 1990" in page

    # The customer's page says it was signed for, but not by whom.
    view = depot.service.customer_view(depot.token())
    assert view.timeline[0].words == "Delivered and signed for"
    phone = urllib.request.urlopen(f"{web.url}/t/{depot.token()}", timeout=10)
    with phone:
        text = phone.read().decode()
    assert "Delivered and signed for" in text and "Smith" not in text


def test_strokes_that_are_not_a_signature_are_never_drawn(depot: Depot, web: DepotWeb) -> None:
    hostile = {"v": 1, "width": 300, "height": 100,
               "strokes": [[[10, 50], ['"/><script>alert(1)</script>', 3]]]}
    assert signature_svg(strokes_bytes(hostile)) is None
    for bad in (
        {**STROKES, "width": 0}, {**STROKES, "height": 2001}, {**STROKES, "strokes": []},
        {**STROKES, "strokes": [[[301, 5]]]}, {**STROKES, "strokes": [[[1.5, 5]]]},
        {**STROKES, "v": 2}, {**STROKES, "strokes": [[[1, 1]]] * 201},
    ):
        assert signature_svg(strokes_bytes(bad)) is None, bad
    assert signature_svg(b"\xff not json") is None

    depot.receive(care=SIGNED_CARE)
    signature = sign(depot, strokes_bytes(hostile))
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="recipient",
               signature=signature, signed_by="J. Smith",
               id_check={"id_type": "passport", "birth_year": 1980}, pod=POD)
    kim = signed_in(web.url, depot.service.database, "viewer")
    _, page = kim.get(f"/console/parcels/{PARCEL}")
    assert "<script>alert" not in page
    assert "the stored strokes are not a signature document" in page


def test_a_delivery_that_breaks_the_care_is_applied_alarmed_and_counted(
    depot: Depot,
) -> None:
    depot.receive()  # the customer said nothing: Care.default(), no safe place
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="safe_place",
               name=None, neighbour_address=None)
    assert depot.service.book.track(PARCEL)["state"] == "delivered"  # the van did leave it
    entry = last_entry(depot)
    assert entry["details"]["preference_violated"] == "safe_place_not_allowed"
    assert entry["details"]["x12_reason"] == "A3"
    (alarm,) = alarms_named(depot, "preference_violated")
    assert alarm["state"] == "open" and alarm["device"] == "van-1"
    assert alarm["facts"]["parcel"] == PARCEL
    assert alarm["facts"]["reason"] == "safe_place_not_allowed"
    assert alarm["facts"]["care"]["safe_place"] is False
    assert counts(depot)["preference_violations"] == 1

    # The same event again (a rewound cursor) is neither applied nor alarmed twice.
    with depot.service.database.transaction() as conn:
        conn.execute("INSERT INTO unprojected(rowid) SELECT max(rowid) FROM events")
    depot.service.process()
    assert len(alarms_named(depot, "preference_violated")) == 1
    assert counts(depot)["preference_violations"] == 1
    assert counts(depot)["deliveries_by_method"]["safe_place"] == 1


def test_the_customers_later_choice_is_the_care_a_delivery_is_judged_by(depot: Depot) -> None:
    from depot.preferences import store_choices
    from parcel.care import Care

    depot.receive()  # the import said nothing: no safe place
    with depot.service.database.transaction() as conn:  # the customer allowed one since
        store_choices(conn, PARCEL, Care(safe_place=True, safe_place_note="shed"), 1)
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="safe_place")
    assert "preference_violated" not in last_entry(depot)["details"]
    assert alarms_named(depot, "preference_violated") == []
    assert counts(depot)["deliveries_by_method"]["safe_place"] == 1


def test_an_age_check_is_judged_by_the_year_of_the_event(depot: Depot) -> None:
    depot.receive(care={"age_min": 18})
    signature = sign(depot, strokes_bytes())
    # Born 18 years before this year: maybe not 18 yet, so refused (only the year is kept).
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="recipient",
               signature=signature, signed_by="K. Young",
               id_check={"id_type": "driving_licence", "birth_year": YEAR - 18})
    assert last_entry(depot)["details"]["preference_violated"] == "under_age"
    depot.receive(id=OTHER, raw=OTHER, care={"age_min": 18})
    depot.emit("van-1", "parcel_delivered", parcel=OTHER, stop=2, to="recipient",
               signature=signature, signed_by="K. Older",
               id_check={"id_type": "driving_licence", "birth_year": YEAR - 19})
    assert "preference_violated" not in last_entry(depot, OTHER)["details"]
    # An ID check that carries a document number is not one: not kept, so no ID was checked.
    third = "CP123456785NL"
    depot.receive(id=third, raw=third, care={"age_min": 18})
    depot.emit("van-1", "parcel_delivered", parcel=third, stop=3, to="recipient",
               signature=signature, signed_by="N. Umber",
               id_check={"id_type": "passport", "birth_year": 1970, "number": "X1234567"})
    details = last_entry(depot, third)["details"]
    assert "id_check" not in details and "number" in details["id_check_refused"]
    assert "X1234567" not in json.dumps(depot.service.book.track(third))
    assert details["preference_violated"] == "id_check_required"
    assert counts(depot)["preference_violations"] == 2


def test_deliveries_are_counted_by_method(depot: Depot) -> None:
    ids = ["RA000000001NL", "RA000000002NL", "RA000000003NL", "RA000000004NL"]
    for parcel in ids:
        depot.receive(id=parcel, raw=parcel)
    depot.emit("van-1", "parcel_delivered", parcel=ids[0], stop=1, to="recipient")
    depot.emit("van-1", "parcel_delivered", parcel=ids[1], stop=2, to="neighbour",
               name="B. Buur", neighbour_address="Damrak 3")
    depot.emit("locker-1", "parcel_picked_up", parcel=ids[2], compartment="B1")
    depot.emit("counter-1", "parcel_picked_up", parcel=ids[3], compartment="shelf-3")
    # A delivery of a parcel already delivered moves nothing and is not counted again.
    depot.emit("van-2", "parcel_delivered", parcel=ids[0], stop=4, to="recipient")
    found = counts(depot, ("counter-1",))
    assert found["deliveries_by_method"] == {
        **dict.fromkeys(METHODS, 0), "recipient": 1, "neighbour": 1, "locker": 1, "counter": 1,
    }
    assert counts(depot)["deliveries_by_method"]["locker"] == 2  # no counters named
    assert found["preference_refusals"] == 0 and found["preference_violations"] == 0


def test_health_and_the_today_page_report_the_outcome_counts(depot: Depot, web: DepotWeb) -> None:
    depot.receive()
    depot.emit("van-1", "outcome_refused", parcel=PARCEL, stop=1, to="neighbour",
               reason="neighbour_not_allowed", care={"neighbour": False})
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="safe_place")
    with urllib.request.urlopen(f"{web.url}/health", timeout=10) as answer:
        doc = json.loads(answer.read())
    assert doc["preference_refusals"] == 1 and doc["preference_violations"] == 1
    assert doc["deliveries_by_method"]["safe_place"] == 1
    _, page = signed_in(web.url, depot.service.database, "viewer").get("/console")
    assert re.search(r'id="card-refusals"><div class="figure">1<', page)
    assert re.search(r'class="card bad" id="card-violations"><div class="figure">1<', page)


def test_failures_carry_their_x12_status_reason_to_notices_and_epcis(depot: Depot) -> None:
    depot.receive(locker_ok=False)
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, stop=1, reason="no_safe_place",
               attempt=1, x12_reason="AG")
    told = depot.notices("merchant")[-1]
    assert told["state"] == "attempted"
    assert told["details"]["x12_reason"] == "AG" and told["details"]["inovert"] == "REN|DAF"
    assert depot.notices("customer")[-1]["details"]["x12_reason"] == "AG"
    view = depot.service.customer_view(depot.token())
    assert any("no safe place we may use" in line.words for line in view.timeline)
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="neighbour",
               name="B. Buur", neighbour_address="Damrak 3")
    events = export_epcis(depot.service.book, [PARCEL])["epcisBody"]["eventList"]
    by_step = {e["lm:step"]: e for e in events}
    assert by_step["attempted"]["lm:x12_reason"] == "AG"
    assert by_step["delivered"]["lm:x12_reason"] == "A3"
    assert "lm:x12_reason" not in by_step["received"]


def web_token(database: DepotDatabase) -> str:
    from tests.web import api_token

    return api_token(database)


def test_a_hand_out_across_a_counter_is_judged_like_a_handover_at_the_door(depot: Depot) -> None:
    """A counter's `parcel_picked_up` carries the proof its staff took; a parcel that must be
    signed for, handed out without it, broke its care as a door delivery would."""
    depot.receive(care={"signature": True})
    depot.emit("counter-1", "parcel_picked_up", parcel=PARCEL, compartment="shelf-1",
               name="A. Jansen")
    assert last_entry(depot)["details"]["preference_violated"] == "signature_required"
    depot.receive(id=OTHER, raw=OTHER, care={"signature": True})
    signature = sign(depot, strokes_bytes(), device="counter-1")
    depot.emit("counter-1", "parcel_picked_up", parcel=OTHER, compartment="shelf-2",
               name="A. Jansen", signature=signature, signed_by="A. Jansen")
    details = last_entry(depot, OTHER)["details"]
    assert "preference_violated" not in details
    assert details["signed_by"] == "A. Jansen" and details["signature"] == signature
    assert counts(depot, ("counter-1",))["preference_violations"] == 1
