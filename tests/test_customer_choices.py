"""The customer's choices after a missed delivery, over real HTTP: delivery again, a parcel
locker, or collection at a staffed counter, each offered only where the policy grants it
(rule 7, `depot.policy.decide_on_pickup_choice`), each once; and the whole path from the
failure card's code (`/card`) to a counter reserved with the card's tag.

The depot is a real service on each database (SQLite, PostgreSQL) with a parcel locker and a
staffed counter, taking device events from real journals (tests/test_customer_link.py's
`Depot`); the phone is tests/test_depot_cards.py's browser. What the depot sent is read
from its own tables: the signed-command queue, the manifests, the timeline.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.policy import LockerSite, RequestDeclined, decide_on_pickup_choice
from depot.service import DepotService
from depot.web import DepotWeb
from parcel.cards import card_tag
from parcel.care import Care
from sync.signing import generate_keypair, generate_sealing_keypair
from tests.test_customer_link import PARCEL, PUBLIC, Depot, SettableClock
from tests.test_depot_cards import CARD, Browser

DAY = "2026-12-07"
LOCKER = LockerSiteConfig(
    "locker-1", 52.3701, 4.9001, {"S": 2, "M": 2},
    title="Central Station locker", address="Stationsplein 1, Amsterdam",
)
COUNTER = LockerSiteConfig(
    "counter-1", 52.3705, 4.8955, {}, title="Post office Damrak",
    address="Damrak 70, Amsterdam", kind="counter", capacity=2,
)


def _depot(tmp_path: Path, database: str, lockers: list[LockerSiteConfig]) -> Depot:
    signing, _ = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    config = DepotConfig(
        database=database, lat=52.37, lon=4.90, vans=["van-1"], public_url=PUBLIC,
        webhook_secrets={"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-c-0123456"},
        lockers=lockers,
    )
    clock = SettableClock()
    service = DepotService(
        config, clock=clock, signing_key_pem=signing, sealing_key_pems=[sealing_private]
    )
    return Depot(service, database, clock, tmp_path, sealing_public)


@pytest.fixture
def depot(tmp_path: Path, depot_database: str) -> Iterator[Depot]:
    site = _depot(tmp_path, depot_database, [LOCKER, COUNTER])
    try:
        yield site
    finally:
        site.service.stop()
        for journal in site.journals.values():
            journal.close()


@pytest.fixture
def web(depot: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(depot.service.book, clock=depot.clock, actions=depot.service) as running:
        yield running


def missed(depot: Depot, card: str | None = CARD, reason: str = "not_at_home") -> None:
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, stop=1, reason=reason, attempt=1,
               card=card)


def token_of(depot: Depot) -> str:
    """The page's token as a customer without a notification address reaches it (the card)."""
    link = depot.service.tracking_link(PARCEL)
    assert link is not None
    return link.rpartition("/t/")[2]


def choose(phone: Browser, token: str, what: str) -> tuple[str, str]:
    """POST a choice's button; the note the page then says, and the page."""
    status, headers, _ = phone.open(f"/t/{token}/{what}", {})
    assert status == 303 and headers["location"] == f"/t/{token}"
    note = urllib.parse.unquote(headers["set-cookie"].partition("=")[2].partition(";")[0])
    status, _, page = phone.open(headers["location"])
    assert status == 200
    return note, page


def commands(depot: Depot) -> list[tuple[str, str, dict[str, Any]]]:
    with depot.service.database.reading() as conn:
        rows = conn.execute("SELECT target, action, args FROM depot_commands").fetchall()
    return [(str(t), str(a), json.loads(x)) for t, a, x in rows]


def requests(depot: Depot) -> list[dict[str, Any]]:
    return [
        e["details"] for e in depot.service.book.track(PARCEL)["timeline"]
        if e["step"] == "customer_request"
    ]


def test_after_a_missed_delivery_the_van_takes_it_to_the_locker_the_customer_chose(
    depot: Depot, web: DepotWeb
) -> None:
    # No notification address: the policy sends it to no locker (it could not send the code),
    # but a customer who holds the card reads the code on the page, so the choice is theirs.
    depot.receive(customer_webhook=None)
    first = depot.service.plan_day(DAY).manifests["van-1"]
    depot.emit("van-1", "departed", version=first.version, loaded=[PARCEL], missing=[])
    missed(depot)
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == "second_attempt"
    token, phone = token_of(depot), Browser(web.url)

    status, _, page = phone.open(f"/t/{token}")
    assert status == 200
    assert "Deliver it again tomorrow" in page
    assert f'action="/t/{token}/locker"' in page and "Central Station locker" in page
    assert f'action="/t/{token}/counter"' in page and "Post office Damrak" in page
    assert "Stationsplein 1, Amsterdam, 0.0 km from your address" in page
    assert "Damrak 70, Amsterdam, 0.3 km from your address; a staffed counter" in page

    note, page = choose(phone, token, "locker")
    assert note.startswith("Done: we take your parcel to the locker at Central Station locker")
    assert "this page shows your pickup code" in note
    assert "Where to collect it" in page and "Stationsplein 1, Amsterdam" in page
    for gone in ("/locker\"", "/counter\"", "/redeliver\""):
        assert gone not in page  # the choice is made: no buttons left

    assert commands(depot) == [
        ("locker-1", "reserve", {"parcel": PARCEL, "size": "M", "hours": 48.0})
    ]
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and (info["next_action"], info["locker"]) == ("locker", "locker-1")
    moved = depot.service.current_manifest("van-1")
    assert moved is not None and moved.version > first.version
    stop = moved.stop(moved.stop_of(PARCEL) or 0)
    assert (stop.kind, stop.locker) == ("locker", "locker-1")
    assert requests(depot) == [{"request": "to_locker", "site": "locker-1"}]
    assert "You chose to collect it from a parcel locker" in page

    # Each choice once: the counter now is refused, and nothing more is recorded or sent.
    note, _ = choose(phone, token, "counter")
    assert note == "Sorry, not possible: you have chosen where to collect it already."
    note, _ = choose(phone, token, "redeliver")
    assert note.startswith("Sorry, not possible:") and "locker" in note
    assert len(commands(depot)) == 1 and len(requests(depot)) == 1


def test_from_the_card_to_the_counter_reserved_with_the_cards_tag(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(locker_ok=False)  # the sender allows no locker: the counter still may
    missed(depot)
    phone = Browser(web.url)
    status, headers, _ = phone.open("/card", {"code": "7kq4 m2xp"})
    assert status == 303
    token = headers["location"].removeprefix("/t/")
    status, _, page = phone.open(headers["location"])
    assert status == 200 and "choose below what happens to it next" in page
    assert f'action="/t/{token}/locker"' not in page
    assert "A parcel locker is not possible: the sender does not allow a parcel locker" in page
    assert f'action="/t/{token}/counter"' in page

    note, page = choose(phone, token, "counter")
    assert note.startswith("Done: your parcel will wait for you at Post office Damrak, Damrak 70")
    assert "Post office Damrak" in page and "A staffed counter: bring the card" in page
    assert "You chose to collect it at a collection counter" in page
    assert "We will take it to Post office Damrak, a collection counter" in page
    ((target, action, args),) = commands(depot)
    assert (target, action) == ("counter-1", "reserve")
    assert args["card_tag"] == card_tag("counter-1", CARD, "A. Jansen")
    assert CARD not in json.dumps(args) and "7KQ4M2XP" not in json.dumps(args)
    assert requests(depot) == [{"request": "to_counter", "site": "counter-1"}]
    # The merchant never hears the card's code.
    assert all("7KQ4" not in json.dumps(n) for n in depot.notices("merchant"))
    note, _ = choose(phone, token, "locker")
    assert note.startswith("Sorry, not possible:")
    assert len(commands(depot)) == 1


def test_at_the_depot_after_a_missed_delivery_the_counter_goes_on_the_next_plan(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(locker_ok=False)
    missed(depot, card=None)
    depot.emit("van-1", "parcel_returned_to_depot", parcel=PARCEL, raw=PARCEL)
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["state"] == "at_depot"
    phone = Browser(web.url)
    note, _ = choose(phone, depot.token(), "counter")
    assert note.startswith("Done: your parcel will wait for you at Post office Damrak")
    ((target, _, args),) = commands(depot)
    assert target == "counter-1" and "card_tag" not in args  # no card was left
    manifest = depot.service.plan_day(DAY).manifests["van-1"]
    stop = manifest.stop(manifest.stop_of(PARCEL) or 0)
    assert (stop.kind, stop.locker) == ("locker", "counter-1")


def test_a_parcel_that_must_be_signed_for_gets_no_locker_choice(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(care=Care(signature=True).to_doc(), customer_webhook=None)
    missed(depot)
    token, phone = token_of(depot), Browser(web.url)
    _, _, page = phone.open(f"/t/{token}")
    assert f'action="/t/{token}/locker"' not in page
    assert "A parcel locker is not possible: this parcel must be signed for" in page
    assert f'action="/t/{token}/counter"' in page
    note, _ = choose(phone, token, "locker")
    assert note == (
        "Sorry, not possible: this parcel must be signed for, and a locker hands it out for a "
        "code alone."
    )
    assert commands(depot) == [] and requests(depot) == []


def test_no_counter_at_the_depot_means_no_counter_choice(
    tmp_path: Path, depot_database: str
) -> None:
    depot = _depot(tmp_path, depot_database, [LOCKER])
    try:
        with DepotWeb(depot.service.book, clock=depot.clock, actions=depot.service) as web:
            depot.receive(customer_webhook=None)
            missed(depot)
            token, phone = token_of(depot), Browser(web.url)
            _, _, page = phone.open(f"/t/{token}")
            assert f'action="/t/{token}/locker"' in page
            assert "/counter" not in page and "counter is not possible" not in page
            note, _ = choose(phone, token, "counter")
            assert note == "Sorry, not possible: there is no collection counter to send it to."
            assert commands(depot) == []
    finally:
        depot.service.stop()
        for journal in depot.journals.values():
            journal.close()


def test_a_full_counter_and_a_locker_already_chosen_by_the_policy(
    depot: Depot, web: DepotWeb
) -> None:
    # The policy itself sends the parcel to the nearest locker or counter with room: the page
    # then shows where to collect it, and offers no choice.
    depot.receive()
    missed(depot)
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == "locker"
    token, phone = depot.token(), Browser(web.url)
    _, _, page = phone.open(f"/t/{token}")
    assert "Where to collect it" in page
    assert not any(f"/t/{token}/{b}\"" in page for b in ("locker", "counter", "redeliver"))
    view = depot.service.customer_view(token)
    assert view.locker == info["locker"] and view.locker_offer is None
    assert view.counter_refused == "the parcel is on its way to be collected elsewhere already"


@pytest.mark.parametrize(
    ("state", "reason", "says"),
    [
        ("received", "not_at_home", "first delivery"),
        ("attempted", "refused", "the recipient refused it"),
        ("attempted", "address_not_found", "the address could not be found"),
    ],
)
def test_no_choice_before_a_missed_delivery_or_after_a_return_at_once(
    depot: Depot, web: DepotWeb, state: str, reason: str, says: str
) -> None:
    depot.receive(customer_webhook=None)
    if state == "attempted":
        missed(depot, reason=reason)
    token, phone = token_of(depot), Browser(web.url)
    _, _, page = phone.open(f"/t/{token}")
    assert f"/t/{token}/locker" not in page and f"/t/{token}/counter" not in page
    for what in ("locker", "counter"):
        note, _ = choose(phone, token, what)
        assert note.startswith("Sorry, not possible:") and says in note, note
    assert commands(depot) == [] and requests(depot) == []
    with pytest.raises(RequestDeclined, match=says):
        depot.service.customer_to_counter(token)


def test_the_rule_counts_room_and_distance() -> None:
    """Rule 7 alone: a locker within reach with a fitting compartment; a counter with room
    at any distance; nothing after the customer chose once."""
    near = LockerSite("near", 52.3701, 4.9001, {"S": 1})
    far = LockerSite("far", 52.50, 4.90, {"L": 1})
    counter = LockerSite("counter", 52.60, 4.90, {}, room=1)
    full = LockerSite("full", 52.3701, 4.9001, {}, room=0)
    base: dict[str, Any] = {
        "state": "attempted", "next_action": "second_attempt", "last_reason": "not_at_home",
        "attempts": 2, "asked_before": False, "locker_ok": True, "needs_signature": False,
        "stop_lat": 52.37, "stop_lon": 4.90, "sites": [near, far, counter, full],
    }
    action, km = decide_on_pickup_choice(choice="locker", size="S", **base)
    assert (action.kind, action.locker) == ("locker", "near") and km < 0.1
    with pytest.raises(RequestDeclined, match="within 3 km"):
        decide_on_pickup_choice(choice="locker", size="M", **base)  # only "far" fits
    action, km = decide_on_pickup_choice(choice="counter", size="L", **base)
    assert action.locker == "counter" and km > 20  # all attempts used: still collectable
    with pytest.raises(RequestDeclined, match="chosen where"):
        decide_on_pickup_choice(choice="counter", size="S", **{**base, "asked_before": True})
    with pytest.raises(RequestDeclined, match="no collection counter has room"):
        decide_on_pickup_choice(choice="counter", size="S", **{**base, "sites": [full]})
