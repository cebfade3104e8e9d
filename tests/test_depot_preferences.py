"""The depot's side of delivery preferences: the import's fields, the manifest's care and
access code, the customer's page changing them (the van's manifest re-issued), and a parcel
whose customer wants a locker instead of the door planned to a locker.

The service tests use tests/test_customer_link.py's depot (a real service, real journals) on
SQLite; the store change runs on PostgreSQL too. The page is asked for over real HTTP.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from depot.imports import MAX_WEIGHT_KG, ParcelRecord, read_import
from depot.preferences import care_of
from depot.routing import build_manifest, plan_routes
from depot.web import DepotWeb
from parcel.care import Care
from parcel.manifest import Manifest
from tests.test_customer_link import PARCEL, Depot
from tests.test_customer_link import depot as depot
from tests.test_depot_planning import DEPOT, csv_bytes, json_row, record, row, s10

DAY = "2026-12-07"
SQLITE = pytest.mark.parametrize("depot_database", ["sqlite"], indirect=True)
PREFS = (
    "safe_place,safe_place_note,neighbour_ok,signature,age_min,locker_instead,access_code,"
    "weight_kg,volume_l,dims_cm,customer_webhook"
)
HEADER = "parcel,recipient,address,lat,lon,merchant,webhook," + PREFS


# --- the import ---------------------------------------------------------------------------


def _one(**cells: str) -> tuple[list[ParcelRecord], list[tuple[str, str]]]:
    result = read_import(csv_bytes(row(**cells), header=HEADER), format="csv")
    return result.records, [(e.field, e.reason) for e in result.errors]


def test_csv_preference_columns_become_the_parcels_care() -> None:
    records, errors = _one(
        safe_place="yes", safe_place_note="behind the blue gate", neighbour_ok="no",
        locker_instead="yes", customer_webhook="https://c.example/1", access_code="1234#",
        weight_kg="3.5", dims_cm="40 x 30 x 20",
    )
    assert errors == []
    (r,) = records
    assert r.care == Care(
        safe_place=True, safe_place_note="behind the blue gate", neighbour=False,
        locker_instead=True,
    )
    assert (r.access_code, r.weight_kg, r.volume_l, r.volume) == ("1234#", 3.5, 24.0, 24.0)
    assert ParcelRecord.from_doc(r.to_doc()) == r  # stored and read back as planning does

    records, errors = _one(signature="yes", age_min="18", volume_l="12.5")
    assert errors == [] and records[0].care == Care(signature=True, age_min=18)
    assert records[0].volume_l == 12.5

    records, errors = _one()  # no preference columns filled: what a customer who said nothing
    assert errors == [] and records[0].care == Care.default()
    assert (records[0].access_code, records[0].weight_kg, records[0].volume_l) == ("", 2.0, None)


@pytest.mark.parametrize(
    ("cells", "field", "says"),
    [
        ({"safe_place": "maybe"}, "safe_place", "not true/false"),
        ({"neighbour_ok": "perhaps"}, "neighbour_ok", "not true/false"),
        ({"signature": "2"}, "signature", "not true/false"),
        ({"locker_instead": "?"}, "locker_instead", "not true/false"),
        ({"safe_place_note": "by the door"}, "safe_place_note", "needs safe_place yes"),
        ({"safe_place": "yes", "safe_place_note": "x" * 201}, "safe_place_note", "200"),
        ({"age_min": "17"}, "age_min", "16, 18, 21"),
        ({"age_min": "adult"}, "age_min", "16, 18, 21"),
        ({"safe_place": "yes", "signature": "yes"}, "safe_place", "needs a signature"),
        ({"safe_place": "yes", "age_min": "18"}, "safe_place", "needs an ID check"),
        ({"locker_instead": "yes"}, "locker_instead", "no way to send you the locker's pickup"),
        (
            {"locker_instead": "yes", "age_min": "18", "customer_webhook": "https://c.example"},
            "locker_instead",
            "needs an ID check",
        ),
        (
            {"locker_instead": "yes", "signature": "yes", "customer_webhook": "https://c.example"},
            "locker_instead",
            "must be signed for",
        ),
        ({"access_code": "12\t34"}, "access_code", "one line"),
        ({"access_code": "9" * 41}, "access_code", "40"),
        ({"weight_kg": "0"}, "weight_kg", "more than 0"),
        ({"weight_kg": "-2"}, "weight_kg", "more than 0"),
        ({"weight_kg": "32"}, "weight_kg", f"over {MAX_WEIGHT_KG:g} kg"),
        ({"weight_kg": "2,5"}, "weight_kg", "decimal separator"),
        ({"weight_kg": "nan"}, "weight_kg", "more than 0"),
        ({"volume_l": "501"}, "volume_l", "over 500 l"),
        ({"dims_cm": "40x30"}, "dims_cm", "LxWxH"),
        ({"dims_cm": "40x0x20"}, "dims_cm", "more than 0"),
        ({"dims_cm": "250x10x10"}, "dims_cm", "over 200 cm"),
        ({"dims_cm": "200x200x20"}, "dims_cm", "over 500 l"),
        ({"dims_cm": "40x30x20", "volume_l": "24"}, "dims_cm", "not both"),
    ],
)
def test_a_bad_preference_or_measure_is_one_clear_row_problem(
    cells: dict[str, str], field: str, says: str
) -> None:
    records, errors = _one(**cells)
    assert records == []
    assert len(errors) == 1, errors
    assert errors[0][0] == field and says in errors[0][1], errors


def test_locker_instead_needs_a_recipient_who_accepts_lockers() -> None:
    header = HEADER + ",locker_ok"
    data = csv_bytes(
        row(locker_instead="yes", locker_ok="no", customer_webhook="https://c.example/1"),
        header=header,
    )
    result = read_import(data, format="csv")
    assert result.records == []
    assert [(e.field, e.line_or_index) for e in result.errors] == [("locker_instead", 2)]
    assert "does not allow a parcel locker" in result.errors[0].reason


def test_json_gives_care_as_an_object_or_as_fields_never_both() -> None:
    care = {"safe_place": True, "safe_place_note": "garage", "signature": False}
    items: list[dict[str, Any]] = [
        json_row(parcel=s10(1), care=care, access_code="77#", weight_kg=1.25,
                 dims_cm=[30, 20, 10]),
        json_row(parcel=s10(2), care={"safe_place": True, "colour": "red"}),
        json_row(parcel=s10(3), care={"safe_place": True}, neighbour_ok=False),
        json_row(parcel=s10(4), care="safe place ok"),
        json_row(parcel=s10(5), safe_place=True, age_min=21, neighbour_ok=False),
        json_row(parcel=s10(6), age_min=True),
        json_row(parcel=s10(7), access_code=1234),
        json_row(parcel=s10(8), care={"age_min": 18, "safe_place": True}),
        json_row(parcel=s10(9), weight_kg=True),
    ]
    result = read_import(json.dumps(items).encode(), format="json")
    assert [r.id for r in result.records] == [s10(1)]
    first = result.records[0]
    assert first.care == Care(safe_place=True, safe_place_note="garage")
    assert (first.access_code, first.weight_kg, first.volume_l) == ("77#", 1.25, 6.0)
    problems = {(e.line_or_index, e.field): e.reason for e in result.errors}
    assert "unknown care field 'colour'" in problems[(1, "care")]
    assert "not both" in problems[(2, "care")] and "neighbour_ok" in problems[(2, "care")]
    assert "JSON object" in problems[(3, "care")]
    assert "ID check" in problems[(4, "safe_place")]
    assert "age_min" in problems[(5, "age_min")]
    assert "leading zeros" in problems[(6, "access_code")]
    assert "ID check" in problems[(7, "safe_place")]
    assert "must be a number" in problems[(8, "weight_kg")]
    assert len(result.errors) == 8


# --- the manifest -------------------------------------------------------------------------


def test_the_manifest_carries_every_parcels_care_and_the_stops_access_codes() -> None:
    careful = Care(signature=True, neighbour=False)
    records = [
        record(1, 52.37, 4.90, address="Damrak 1", access_code="1234#", care=careful),
        record(2, 52.37, 4.90, address="Damrak 1", access_code="key safe 0815"),
        record(3, 52.37, 4.90, address="Damrak 1", access_code="1234#"),
        record(4, 52.38, 4.91, address="Dam 2"),
    ]
    plan = plan_routes(records, ["van-1"], DEPOT)
    manifest = build_manifest("van-1", 1, DAY, plan["van-1"], depot=DEPOT, issued_at=0.0)
    back = Manifest.from_json(manifest.to_json())  # as the van reads it
    shared = back.stop(back.stop_of(s10(1)) or 0)
    assert shared.access_code == "1234# / key safe 0815"
    assert shared.care_of(s10(1)) == careful
    assert shared.care_of(s10(2)) == Care.default() == shared.care_of(s10(3))
    alone = back.stop(back.stop_of(s10(4)) or 0)
    assert alone.access_code == "" and dict(alone.care) == {s10(4): Care.default()}
    assert sum(len(s.care) for s in back.stops) == 4  # every parcel, each on its own stop


# --- the customer's page and the van's manifest ---------------------------------------------


class Browser:
    """A customer's phone: cookies kept, redirects not followed, forms posted urlencoded."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _Stay()
        )

    def get(self, path: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: list[tuple[str, str]]) -> tuple[int, str]:
        body = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(
            self.base + path, data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return self._open(request)

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.fixture
def web(depot: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(depot.service.book, clock=depot.clock, actions=depot.service) as running:
        yield running


def _care_record(care: Care, **record: Any) -> dict[str, Any]:
    return {"care": care.to_doc(), "access_code": "4711#", **record}


def _requests(depot: Depot) -> list[dict[str, Any]]:
    return [
        e["details"] for e in depot.service.book.track(PARCEL)["timeline"]
        if e["step"] == "customer_request"
    ]


def _change(browser: Browser, token: str, **choices: str) -> str:
    fields = [("form", "preferences"), *choices.items()]
    status, _ = browser.post(f"/t/{token}/preferences", fields)
    assert status == 303
    return browser.get(f"/t/{token}")[1]


def test_the_customer_changes_a_preference_and_the_vans_manifest_follows(
    depot: Depot, web: DepotWeb
) -> None:
    """On both databases: the change is stored, timelined and re-issued to the van."""
    depot.receive(**_care_record(Care.default()))
    first = depot.service.plan_day(DAY).manifests["van-1"]
    stop = first.stop(first.stop_of(PARCEL) or 0)
    assert stop.care_of(PARCEL) == Care.default() and stop.access_code == "4711#"
    token = depot.token()
    browser = Browser(web.url)

    status, page = browser.get(f"/t/{token}")
    assert status == 200 and 'action="/t/' in page and "/preferences" in page
    assert 'name="safe_place">' in page  # offered, not ticked: the default allows none

    page = _change(browser, token, safe_place="on", safe_place_note=" behind the  blue gate ",
                   neighbour="on")
    assert "Done: we deliver your parcel as you asked." in page
    assert "You changed your delivery preferences" in page
    assert 'value="behind the blue gate"' in page and 'name="safe_place" checked' in page
    wanted = Care(safe_place=True, safe_place_note="behind the blue gate")
    with depot.service.database.reading() as conn:
        assert care_of(conn, PARCEL) == wanted
    now = depot.service.current_manifest("van-1", DAY)
    assert now is not None and now.version == first.version + 1
    assert now.stop(now.stop_of(PARCEL) or 0).care_of(PARCEL) == wanted
    assert now.stop(now.stop_of(PARCEL) or 0).access_code == "4711#"
    assert _requests(depot) == [{"request": "preferences_changed", "care": wanted.to_doc()}]

    _change(browser, token, safe_place="on", safe_place_note="behind the blue gate",
            neighbour="on")  # the same again (a reload's resend): nothing new
    assert depot.service.current_manifest("van-1", DAY).version == now.version  # type: ignore[union-attr]
    assert len(_requests(depot)) == 1

    # A merchant's re-import (a corrected address) keeps the customer's word.
    depot.receive(**_care_record(Care.default()), address="Damrak 1A, Amsterdam")
    with depot.service.database.reading() as conn:
        assert care_of(conn, PARCEL) == wanted


@SQLITE
def test_a_merchants_signature_and_age_check_cannot_be_lifted(
    depot: Depot, web: DepotWeb
) -> None:
    merchant = Care(signature=True, age_min=18)
    depot.receive(**_care_record(merchant))
    depot.service.plan_day(DAY)
    token = depot.token()
    browser = Browser(web.url)
    _, page = browser.get(f"/t/{token}")
    assert "be 18 or older, and sign for it" in page
    assert 'name="safe_place" disabled' in page
    assert "A parcel locker instead is not possible: this parcel needs an ID check" in page

    page = _change(browser, token, safe_place="on", signature="", age_min="", neighbour="on")
    assert "Sorry, not possible: this parcel must be signed for" in page
    page = _change(browser, token, locker_instead="on", neighbour="on")
    assert "Sorry, not possible: this parcel needs an ID check" in page
    page = _change(browser, token)  # the neighbour unticked: the customer's to say
    assert "Done" in page
    with depot.service.database.reading() as conn:
        assert care_of(conn, PARCEL) == Care(signature=True, age_min=18, neighbour=False)
    manifest = depot.service.current_manifest("van-1", DAY)
    assert manifest is not None
    assert manifest.stop(manifest.stop_of(PARCEL) or 0).care_of(PARCEL) == Care(
        signature=True, age_min=18, neighbour=False
    )


@SQLITE
def test_no_change_once_delivered_and_a_cut_off_form_changes_nothing(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(**_care_record(Care(safe_place=True, safe_place_note="porch")))
    token = depot.token()
    browser = Browser(web.url)
    status, _ = browser.post(f"/t/{token}/preferences", [("neighbour", "on")])  # no form field
    assert status == 303
    assert "nothing was changed" in browser.get(f"/t/{token}")[1]
    with depot.service.database.reading() as conn:
        assert care_of(conn, PARCEL) == Care(safe_place=True, safe_place_note="porch")

    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, to="safe_place")
    _, page = browser.get(f"/t/{token}")
    assert "Safe place: yes (porch)" in page and "can no longer be changed" in page
    page = _change(browser, token, neighbour="on")
    assert "Sorry, not possible: your parcel&#39;s journey has ended" in page
    assert _requests(depot) == []
    status, _ = browser.post("/t/" + "A" * 32 + "/preferences", [("form", "preferences")])
    assert status == 404


@SQLITE
def test_locker_instead_is_planned_to_the_nearest_locker_with_room(depot: Depot) -> None:
    depot.receive(**_care_record(Care(locker_instead=True)))
    far = s10(77)
    depot.receive(
        **_care_record(Care(locker_instead=True)), id=far, raw=far, lat=52.50,
        address="Far away 1, Purmerend",
    )
    manifest = depot.service.plan_day(DAY).manifests["van-1"]
    at = manifest.stop(manifest.stop_of(PARCEL) or 0)
    assert (at.kind, at.locker) == ("locker", "locker-1")
    assert PARCEL not in at.care  # the locker is the handover: no door's care there
    door = manifest.stop(manifest.stop_of(far) or 0)
    assert door.kind == "address" and door.care_of(far) == Care(locker_instead=True)

    info = depot.service.book.parcel(PARCEL)
    assert info is not None and (info["next_action"], info["locker"]) == ("locker", "locker-1")
    with depot.service.database.reading() as conn:
        commands = conn.execute("SELECT target, action, args FROM depot_commands").fetchall()
    assert [(t, a, json.loads(x)["parcel"]) for t, a, x in commands] == [
        ("locker-1", "reserve", PARCEL)
    ]
    said = [
        e["details"] for e in depot.service.book.track(far)["timeline"]
        if e["step"] == "next_action"
    ]
    assert [d["kind"] for d in said] == ["door"]
    assert "no locker within 3 km" in said[0]["reason"]

    depot.service.plan_day(DAY)  # planned again: nothing reserved or said twice
    with depot.service.database.reading() as conn:
        assert conn.execute("SELECT count(*) FROM depot_commands").fetchone()[0] == 1


@SQLITE
def test_a_customer_who_asks_for_a_locker_gets_one_at_the_next_plan(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(**_care_record(Care.default()))
    token = depot.token()
    browser = Browser(web.url)
    page = _change(browser, token, neighbour="on", locker_instead="on")
    assert "Done" in page and 'name="locker_instead" checked' in page
    manifest = depot.service.plan_day(DAY).manifests["van-1"]
    at = manifest.stop(manifest.stop_of(PARCEL) or 0)
    assert (at.kind, at.locker) == ("locker", "locker-1")
    assert "We will take it to a parcel locker near you" in browser.get(f"/t/{token}")[1]


@pytest.mark.parametrize(
    ("care", "kind"),
    [
        (Care.default(), "locker"),
        (Care(signature=True), "second_attempt"),
        (Care(age_min=18), "second_attempt"),
    ],
)
def test_a_parcel_that_must_be_signed_for_is_never_sent_to_a_locker(
    depot: Depot, care: Care, kind: str
) -> None:
    """A locker opens for a code alone: after a failed attempt, a parcel that needs a signature
    or an ID check goes to the door again (or a staffed counter), never into a locker."""
    depot.receive(**_care_record(care))
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, reason="not_at_home", attempt=1)
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == kind
