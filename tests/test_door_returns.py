"""Customers' returns handed to the courier at the door, and the return form on the customer's
page.

Real parts: the manifest as the van parses it; the van's round on a real journal file; the
depot service on a real SQLite file (and PostgreSQL, tests/test_returns.py's desk) fed through
its real ingest from those journals, its API and the customer's page over real HTTP, and the
merchant's and customer's webhook receiver (simulators.webhooks).
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from depot.store import returns as rows
from depot.webhooks import stats
from edge.delivery import DeliveryRound, InvalidOutcome, RoundError
from parcel.identify import s10_check_digit
from parcel.manifest import DoorPickup, LockerReturn, Manifest, ManifestError, Stop
from sync.journal import Journal
from sync.return_codes import code_hash, salt_from_text
from sync.wire import decode_batch, encode_batch
from tests.conftest import wait_until
from tests.test_returns import DAY, NORTH, SOUTH, Desk, s10
from tests.test_returns import desk as desk

NEXT_DAY = "2026-11-22"
P1, P2 = s10(101), s10(102)
RET, OTHER_RET = "RT123456785NL", f"RT00000001{s10_check_digit('00000001')}NL"
NOT_READY_RET = f"RT00000002{s10_check_digit('00000002')}NL"


# --- the manifest: a stop's pickups ----------------------------------------------------------


def _doc(*stops: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "van": "van-1", "version": 1, "day": DAY, "stops": list(stops)}


def _stop(n: int, **extra: Any) -> dict[str, Any]:
    return {"stop": n, "lat": 52.37, "lon": 4.89, "parcels": [], **extra}


def test_an_address_stop_lists_its_pickups_and_round_trips() -> None:
    manifest = Manifest(
        van="van-1",
        version=1,
        day=DAY,
        stops=(
            Stop(1, 52.37, 4.89, parcels=(P1,), address="Damrak 1"),
            Stop(2, 52.36, 4.88, parcels=(), address="Rokin 2", pickups=(DoorPickup(RET),)),
        ),
    )
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.stop(2).pickups == (DoorPickup(RET),)
    assert again.pickups == [RET] and again.picked_up_at(RET) == 2
    assert again.picked_up_at(P1) is None and again.parcels == [P1]  # never delivered
    assert again.shelf_of(RET) is None
    # A manifest from before pickups (no key, or null) picks up none.
    old = manifest.to_doc()
    del old["stops"][1]["pickups"]
    old["stops"][0]["pickups"] = None
    assert Manifest.from_doc(old).pickups == []


@pytest.mark.parametrize(
    ("stops", "reason"),
    [
        ((_stop(1, kind="locker", locker="lk", pickups=[{"parcel": RET}]),), "only an address"),
        ((_stop(1, pickups={"parcel": RET}),), "pickups must be a list"),
        ((_stop(1, pickups=[RET]),), "each pickup is an object"),
        ((_stop(1, pickups=[{"parcel": ""}]),), "must name its parcel"),
        ((_stop(1, pickups=[{"parcel": 7}]),), "must name its parcel"),
        ((_stop(1, pickups=[{"parcel": RET, "compartment": "A1"}]),), "only a parcel"),
        ((_stop(1, pickups=[{"parcel": RET}, {"parcel": RET}]),), "picked up twice"),
        (
            (_stop(1, pickups=[{"parcel": RET}]), _stop(2, pickups=[{"parcel": RET}])),
            "picked up at stops 1 and 2",
        ),
        (
            (_stop(1, parcels=[RET]), _stop(2, pickups=[{"parcel": RET}])),
            "both delivered and picked up",
        ),
        (
            (
                _stop(1, pickups=[{"parcel": RET}]),
                _stop(2, kind="locker", locker="lk", collect=[{"parcel": RET}]),
            ),
            "both collected and picked up",
        ),
    ],
)
def test_pickups_the_van_cannot_use_are_refused(
    stops: tuple[dict[str, Any], ...], reason: str
) -> None:
    with pytest.raises(ManifestError, match=reason):
        Manifest.from_doc(_doc(*stops))


# --- the van: the return's scan at its stop ----------------------------------------------------


class Screen:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def tell(self, tone: str, say: str, facts: Mapping[str, Any]) -> None:
        self.lines.append((tone, say, dict(facts)))


def _events(journal: Journal, kind: str) -> list[dict[str, Any]]:
    _prev, found = journal.read(0, 10**6)
    return [dict(e.payload) for e in found if e.kind == kind]


@pytest.fixture
def van(tmp_path: Path) -> Iterator[tuple[DeliveryRound, Screen, Journal]]:
    journal = Journal(tmp_path / "van.db", "van-1")
    screen = Screen()
    yield DeliveryRound(journal, screen, van_id="van-1", position=lambda: None), screen, journal
    journal.close()


def _pickup_manifest() -> bytes:
    stops = (
        Stop(1, 52.37, 4.89, parcels=(P1,), address="Damrak 1"),
        Stop(2, 52.36, 4.88, parcels=(P2,), address="Rokin 2", pickups=(DoorPickup(RET),)),
        Stop(3, 52.35, 4.87, parcels=(), kind="locker", locker="lk",
             collect=(LockerReturn(OTHER_RET),)),
    )
    return Manifest(van="van-1", version=1, day=DAY, stops=stops).to_json()


def test_the_courier_takes_a_listed_return_at_its_door_and_brings_it_back(
    van: tuple[DeliveryRound, Screen, Journal],
) -> None:
    round_, screen, journal = van
    round_.apply_manifest(_pickup_manifest())
    for p in (P1, P2):
        round_.scan(p)
    round_.courier({"do": "depart"})

    # At the wrong door the return is refused like any wrong scan, and nothing is recorded.
    round_.courier({"do": "arrive", "stop": 1})
    wrong = round_.scan(RET)
    assert wrong is not None and wrong.kind == "stop_scan_refused"
    assert wrong.payload["reason"] == "not_this_stop" and wrong.payload["due_stop"] == 2
    assert screen.lines[-1][0] == "wrong_stop"
    with pytest.raises(RoundError, match="picked up at stop 2"):
        round_.courier({"do": "pickup", "parcel": RET})

    # At its door the screen lists it; a return listed nowhere is refused.
    round_.courier({"do": "arrive", "stop": 2})
    _tone, say, facts = screen.lines[-1]
    assert facts["pickups"] == [RET] and f"pick up 1 return(s): {RET}" in say
    assert round_.status()["pickups"] == [RET]
    unlisted = round_.scan(OTHER_RET)
    assert unlisted is not None and unlisted.kind == "stop_scan_refused"
    assert unlisted.payload["reason"] == "not_on_van" and screen.lines[-1][0] == "refuse"
    with pytest.raises(RoundError, match="not a pickup of stop 2"):
        round_.courier({"do": "pickup", "parcel": OTHER_RET})

    taken = round_.scan(RET)
    assert taken is not None and taken.kind == "return_collected_at_door"
    assert taken.payload == {"parcel": RET, "stop": 2, "raw": RET, "fix": None}
    assert screen.lines[-1][0] == "ok" and round_.status()["pickups"] == []
    again = round_.scan(RET)
    assert again is not None and again.payload["reason"] == "already_done"
    with pytest.raises(RoundError, match="already picked up"):
        round_.courier({"do": "pickup", "parcel": RET})
    assert len(_events(journal, "return_collected_at_door")) == 1
    assert round_.status()["parcels"]["picked_up"] == 1

    # At the locker stop the door's return is not taken for a locker collection.
    round_.scan(P2)
    round_.courier({"do": "deliver", "parcel": P2, "name": "B. Visser"})
    round_.courier({"do": "arrive", "stop": 3})
    at_locker = round_.scan(RET)
    assert at_locker is not None and at_locker.kind == "stop_scan_refused"
    assert _events(journal, "parcel_collected_from_locker") == []

    # Back at the depot with the evening's return scans.
    ended = round_.courier({"do": "end_round"})
    assert RET in ended["on_van"]
    back = round_.scan(RET)
    assert back is not None and back.kind == "parcel_returned_to_depot"
    closed = round_.courier({"do": "close_day"})
    assert RET in closed["returned"] and RET not in closed["unaccounted"]


def test_a_typed_pickup_is_recorded_without_a_scan(
    van: tuple[DeliveryRound, Screen, Journal],
) -> None:
    round_, _screen, journal = van
    round_.apply_manifest(_pickup_manifest())
    round_.scan(P2)
    round_.courier({"do": "depart"})
    with pytest.raises(RoundError, match="arrive at a stop first"):
        round_.courier({"do": "pickup", "parcel": RET})
    round_.courier({"do": "arrive", "stop": 2})
    typed = round_.courier({"do": "pickup", "parcel": RET.lower()})  # a label's text, typed
    assert typed["event"] == "return_collected_at_door" and typed["raw"] is None
    assert typed["parcel"] == RET
    assert round_.status()["parcels"]["on_van"] == 2  # P2 and the return
    # A newer manifest version keeps the return on the van, not "off the manifest".
    stops = Manifest.from_json(_pickup_manifest()).stops
    newer = Manifest(van="van-1", version=2, day=DAY, stops=stops).to_json()
    round_.apply_manifest(newer)
    assert _events(journal, "manifest_applied")[-1]["off_manifest"] == []


def _two_pickups_manifest() -> bytes:
    stops = (
        Stop(1, 52.37, 4.89, parcels=(P1,), address="Damrak 1"),
        Stop(2, 52.36, 4.88, parcels=(P2,), address="Rokin 2",
             pickups=(DoorPickup(RET), DoorPickup(NOT_READY_RET))),
    )
    return Manifest(van="van-1", version=1, day=DAY, stops=stops).to_json()


def test_a_missed_pickup_leaves_the_stop_and_the_van_and_a_later_pickup_still_wins(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "van.db", "van-1")
    screen = Screen()
    round_ = DeliveryRound(journal, screen, van_id="van-1", position=lambda: None)
    round_.apply_manifest(_two_pickups_manifest())
    for p in (P1, P2):
        round_.scan(p)
    round_.courier({"do": "depart"})
    missed = {"do": "pickup_missed", "parcel": RET, "reason": "not_at_home"}
    with pytest.raises(RoundError, match="arrive at a stop first"):
        round_.courier(missed)

    # At another stop, or for a return this stop does not list, it is refused; so is a
    # reason the courier cannot give, or none.
    round_.courier({"do": "arrive", "stop": 1})
    with pytest.raises(RoundError, match="picked up at stop 2") as refused:
        round_.courier(missed)
    assert refused.value.reason == "not_this_stop"
    round_.courier({"do": "arrive", "stop": 2})
    with pytest.raises(RoundError, match="no return of that id") as refused:
        round_.courier({**missed, "parcel": OTHER_RET})
    assert refused.value.reason == "not_this_stop"
    with pytest.raises(InvalidOutcome, match="not_at_home, not_ready") as bad:
        round_.courier({**missed, "reason": "raining"})
    assert bad.value.reason == "bad_reason"
    with pytest.raises(InvalidOutcome) as bad:
        round_.courier({"do": "pickup_missed", "parcel": RET})
    assert bad.value.reason == "reason_missing"
    assert _events(journal, "return_pickup_missed") == []
    assert round_.status()["pickups"] == [RET, NOT_READY_RET]

    # Nobody in: journaled at this stop, no longer waiting here, not on the van.
    said = round_.courier(missed)
    assert said["event"] == "return_pickup_missed"
    assert _events(journal, "return_pickup_missed") == [
        {"parcel": RET, "stop": 2, "reason": "not_at_home", "fix": None}
    ]
    assert screen.lines[-1][0] == "warn" and "nobody was in" in screen.lines[-1][1]
    not_ready = round_.courier(
        {"do": "pickup_missed", "parcel": NOT_READY_RET.lower(), "reason": "not_ready"}
    )
    assert not_ready["parcel"] == NOT_READY_RET and not_ready["stop"] == 2
    with pytest.raises(RoundError, match="already recorded missed") as refused:
        round_.courier(missed)
    assert refused.value.reason == "already_done"
    assert len(_events(journal, "return_pickup_missed")) == 2
    status = round_.status()
    assert status["pickups"] == []
    assert status["parcels"]["pickup_missed"] == 2 and status["parcels"]["on_van"] == 2
    assert status["parcels"]["loaded"] == 2 and status["parcels"]["on_manifest"] == 2

    # The van restarts: its journal tells the same round.
    journal.close()
    journal = Journal(tmp_path / "van.db", "van-1")
    screen = Screen()
    round_ = DeliveryRound(journal, screen, van_id="van-1", position=lambda: None)
    assert round_.current_stop == 2 and round_.status()["pickups"] == []
    assert round_.status()["parcels"]["pickup_missed"] == 2
    round_.courier({"do": "arrive", "stop": 2})  # the screen drawn afresh lists neither
    assert screen.lines[-1][2]["pickups"] == [] and "pick up" not in screen.lines[-1][1]

    # The customer comes running with it after all: its scan at the stop takes it.
    taken = round_.scan(RET)
    assert taken is not None and taken.kind == "return_collected_at_door"
    assert round_.status()["parcels"]["pickup_missed"] == 1
    assert round_.status()["parcels"]["picked_up"] == 1
    with pytest.raises(RoundError, match="already picked up") as refused:
        round_.courier(missed)
    assert refused.value.reason == "already_done"

    # The evening: the taken return is on the van, the missed one is not, and nothing is
    # unaccounted for it.
    round_.scan(P2)
    round_.courier({"do": "deliver", "parcel": P2, "name": "B. Visser"})
    ended = round_.courier({"do": "end_round"})
    assert RET in ended["on_van"] and NOT_READY_RET not in ended["on_van"]
    refused_back = round_.scan(NOT_READY_RET)
    assert refused_back is not None and refused_back.kind == "return_refused"
    assert refused_back.payload["reason"] == "not_on_van"
    round_.scan(RET)
    round_.scan(P1)
    closed = round_.courier({"do": "close_day"})
    assert closed["unaccounted"] == [] and NOT_READY_RET not in closed["returned"]
    assert RET in closed["returned"]
    journal.close()


# --- the depot: booking, planning onto a round, the steps, the merchant told ----------------


def _receive(desk: Desk, parcel: str, at: tuple[float, float], address: str) -> None:
    desk.service.book.receive(
        {
            "id": parcel,
            "raw": parcel,
            "kind": "s10",
            "recipient": "A. Jansen",
            "address": address,
            "lat": at[0],
            "lon": at[1],
            "merchant": "shop-1",
            "webhook": desk.receiver.url("/merchant"),
            "customer_webhook": desk.receiver.url("/customer"),
            "size": "S",
        },
        now_ns=time.time_ns(),
    )


SOLD, ELSEWHERE, AGAIN, LATER = s10(201), s10(202), s10(203), s10(204)
HOME = "Noordstraat 12"


def _sold_and_closed(desk: Desk) -> str:
    """SOLD is delivered at HOME on DAY; every van then closes its day. Its van's name."""
    _receive(desk, SOLD, NORTH, HOME)
    _receive(desk, ELSEWHERE, SOUTH, "Zuidlaan 3")
    planned = desk.service.plan_day(DAY).manifests
    van = next(v for v, m in planned.items() if m.stop_of(SOLD) is not None)
    desk.tell(van, "parcel_loaded", parcel=SOLD, stop=planned[van].stop_of(SOLD), shelf=1)
    desk.tell(van, "departed", version=1, loaded=[SOLD], missing=[])
    desk.tell(van, "parcel_delivered", parcel=SOLD, stop=1, to="recipient", name="A. Jansen")
    assert desk.state(SOLD) == "delivered"
    for v in planned:
        desk.tell(v, "day_closed", day=DAY, delivered=[], in_locker=[], returned=[],
                  unaccounted=[])
    return van


def _sync(desk: Desk, device: str) -> None:
    journal = desk.journals[device]
    prev, events = journal.read(desk.acked.get(device, 0), 1000)
    batch = decode_batch(encode_batch(device, journal.journal_id, prev, events))
    desk.acked[device] = desk.service.store.ingest(batch).ack.seq
    desk.service.process()


def test_a_door_return_joins_todays_stop_at_its_address(desk: Desk) -> None:
    _sold_and_closed(desk)
    _receive(desk, AGAIN, NORTH, "  noordstraat   12 ")  # the same door, written otherwise
    _receive(desk, LATER, SOUTH, "Zuidlaan 9")
    planned = desk.service.plan_day(NEXT_DAY).manifests
    van = next(v for v, m in planned.items() if m.stop_of(AGAIN) is not None)
    desk.tell(van, "parcel_loaded", parcel=AGAIN, stop=planned[van].stop_of(AGAIN), shelf=1)

    status, doc = desk.post("/returns", {"parcel": SOLD, "handover": "door"})
    assert status == 201, doc
    ret = doc["return"]
    assert doc["handover"] == "door" and "return_code" not in doc and "locker" not in doc
    assert desk.state(ret) == "return_booked"
    updated = desk.service.current_manifest(van)
    assert updated is not None and updated.version == planned[van].version + 1
    stop = updated.stop(updated.picked_up_at(ret) or 0)
    assert stop.parcels == (AGAIN,) and stop.pickups == (DoorPickup(ret),)
    assert len(updated.stops) == len(planned[van].stops)  # joined, not a new stop
    with desk.service.database.reading() as conn:
        row = conn.execute(
            "SELECT handover, locker, code_hash, sealed_code, pickup_van, pickup_day "
            "FROM customer_returns WHERE return_id=?",
            (ret,),
        ).fetchone()
        commands = conn.execute(
            "SELECT count(*) FROM depot_commands WHERE action='expect_return'"
        ).fetchone()
    assert tuple(row) == ("door", "", "", None, van, NEXT_DAY)
    assert commands[0] == 0  # no locker is told anything

    merchant = desk.wait_for("/merchant", "return_booked")
    assert merchant["return"] == ret and merchant["handover"] == "door"
    assert merchant["locker"] is None
    customer = desk.wait_for("/customer", "return_booked")
    assert customer["handover"] == "door" and "return_code" not in customer

    # One return per parcel, whichever way; a door return goes to no locker.
    assert desk.post("/returns", {"parcel": SOLD, "handover": "door"})[0] == 409
    assert desk.post("/returns", {"parcel": AGAIN, "handover": "door",
                                  "locker": "locker-1"})[0] == 400
    assert desk.post("/returns", {"parcel": AGAIN, "handover": "sideways"})[0] == 400


def test_a_door_return_is_planned_on_the_next_day_collected_and_ends_at_the_depot(
    desk: Desk,
) -> None:
    _sold_and_closed(desk)
    status, doc = desk.post("/returns", {"parcel": SOLD, "handover": "door"})
    assert status == 201
    ret = doc["return"]
    for van in desk.service.config.vans:  # no van out: nothing re-issued today
        current = desk.service.current_manifest(van)
        assert current is None or current.picked_up_at(ret) is None

    _receive(desk, LATER, (NORTH[0] + 0.01, NORTH[1]), "Noordweg 40")
    _receive(desk, AGAIN, SOUTH, "Zuidlaan 9")
    planned = desk.service.plan_day(NEXT_DAY).manifests
    van = next(v for v, m in planned.items() if m.picked_up_at(ret) is not None)
    manifest = planned[van]
    assert manifest.stop_of(LATER) is not None  # the northern round, passing nearest
    stop = manifest.stop(manifest.picked_up_at(ret) or 0)
    assert (stop.kind, stop.address, stop.parcels) == ("address", HOME, ())
    assert stop.pickups == (DoorPickup(ret),) and (stop.lat, stop.lon) == NORTH
    assert stop.stop == 1  # nearer the depot than LATER's door: called at first
    assert ret not in manifest.parcels

    # The van runs that manifest on its real journal; the depot reads what it journals.
    if van not in desk.journals:
        desk.journals[van] = Journal(desk.tmp / f"{van}.journal.db", van)
    journal = desk.journals[van]
    screen = Screen()
    round_ = DeliveryRound(journal, screen, van_id=van, position=lambda: None)
    round_.apply_manifest(desk.service.current_manifest(van).to_json())  # type: ignore[union-attr]
    round_.scan(LATER)
    round_.courier({"do": "depart"})
    round_.courier({"do": "arrive", "stop": stop.stop})
    assert screen.lines[-1][2]["pickups"] == [ret]
    taken = round_.scan(ret)
    assert taken is not None and taken.kind == "return_collected_at_door"
    _sync(desk, van)
    assert desk.state(ret) == "returning"
    assert desk.wait_for("/merchant", "return_collected")["return"] == ret
    receipt = desk.wait_for("/customer", "return_collected")
    assert receipt["parcel"] == SOLD and receipt["handover"] == "door"
    assert desk.service.customer_returns() == {
        "booked": 1, "dropped": 0, "at_door": 1, "collected": 1, "at_depot": 0
    }
    # Collected: the day after's plan lists it nowhere.
    with desk.service.database.reading() as conn:
        assert rows.open_door_pickups(conn) == []

    round_.courier({"do": "end_round"})
    round_.scan(ret)
    _sync(desk, van)
    assert desk.state(ret) == "returned_to_sender"
    desk.wait_for("/merchant", "return_at_depot")
    assert desk.service.customer_returns() == {
        "booked": 1, "dropped": 0, "at_door": 1, "collected": 1, "at_depot": 1
    }
    steps = [e["step"] for e in desk.service.book.track(ret)["timeline"]]
    assert steps[0] == "return_booked"
    assert steps[-3:] == ["collected_at_door", "returned_to_depot", "returned_to_sender"]
    # The customer's receipt came once; the merchant heard each step once.
    _all_sent(desk)
    assert len(desk.events("/customer", "return_collected")) == 1
    assert len(desk.events("/merchant", "return_collected")) == 1


DAY_AFTER = "2026-11-23"


def _at_the_door(desk: Desk) -> tuple[str, str, DeliveryRound]:
    """SOLD's door return booked and planned on NEXT_DAY's round, which has departed and
    arrived at its stop. (return id, van, the van's round on its real journal)."""
    _sold_and_closed(desk)
    status, doc = desk.post("/returns", {"parcel": SOLD, "handover": "door"})
    assert status == 201
    ret = str(doc["return"])
    _receive(desk, LATER, (NORTH[0] + 0.01, NORTH[1]), "Noordweg 40")
    _receive(desk, AGAIN, SOUTH, "Zuidlaan 9")
    planned = desk.service.plan_day(NEXT_DAY).manifests
    van = next(v for v, m in planned.items() if m.picked_up_at(ret) is not None)
    if van not in desk.journals:
        desk.journals[van] = Journal(desk.tmp / f"{van}.journal.db", van)
    round_ = DeliveryRound(desk.journals[van], Screen(), van_id=van, position=lambda: None)
    round_.apply_manifest(desk.service.current_manifest(van).to_json())  # type: ignore[union-attr]
    round_.scan(LATER)
    round_.courier({"do": "depart"})
    round_.courier({"do": "arrive", "stop": planned[van].picked_up_at(ret)})
    return ret, van, round_


def _all_sent(desk: Desk) -> None:
    """Wait until the outbox has nothing pending: the receiver has had all it will get."""

    def drained() -> bool:
        with desk.service.database.reading() as conn:
            return stats(conn)["pending"] == 0

    wait_until(drained, "the webhook outbox to drain")


def _notices(desk: Desk, ret: str, event: str) -> int:
    """Notices about `ret`'s `event` in the outbox, sent or not (each counts once)."""
    with desk.service.database.reading() as conn:
        row = conn.execute(
            "SELECT count(*) FROM webhook_outbox WHERE event_id LIKE ?",
            (f"return:{ret}:{event}%",),
        ).fetchone()
    return int(row[0])


def test_a_missed_door_pickup_is_told_once_and_planned_again(desk: Desk) -> None:
    ret, van, round_ = _at_the_door(desk)
    stop = round_.current_stop
    round_.courier({"do": "pickup_missed", "parcel": ret, "reason": "not_at_home"})
    _sync(desk, van)

    # Still booked, waiting at the door; a timeline step says what happened.
    assert desk.state(ret) == "return_booked"
    last = desk.service.book.track(ret)["timeline"][-1]
    assert last["step"] == "pickup_missed" and last["state"] == "return_booked"
    assert last["details"]["van"] == van and last["details"]["stop"] == stop
    assert last["details"]["reason"] == "not_at_home" and last["details"]["day"] == NEXT_DAY
    merchant = desk.wait_for("/merchant", "return_pickup_missed")
    assert merchant["return"] == ret and merchant["parcel"] == SOLD
    assert merchant["reason"] == "not_at_home" and merchant["day"] == NEXT_DAY
    customer = desk.wait_for("/customer", "return_pickup_missed")
    assert customer["handover"] == "door" and customer["reason_text"] == "nobody was in"
    assert "could not take it" in customer["words"] and "next round" in customer["words"]
    assert desk.service.customer_returns()["collected"] == 0

    # The same event again: the batch sent again, and the projection's cursor rewound.
    desk.acked[van] = 0
    _sync(desk, van)
    with desk.service.database.transaction() as conn:
        conn.execute(
            "INSERT INTO unprojected(rowid) SELECT rowid FROM events "
            "WHERE kind='return_pickup_missed'"
        )
    desk.service.process()
    steps = [e["step"] for e in desk.service.book.track(ret)["timeline"]]
    assert steps.count("pickup_missed") == 1
    assert _notices(desk, ret, "return_pickup_missed") == 2  # the merchant and the customer
    _all_sent(desk)
    assert len(desk.events("/merchant", "return_pickup_missed")) == 1
    assert len(desk.events("/customer", "return_pickup_missed")) == 1

    # The customer's page no longer promises today's round.
    phone = Phone(desk.web.url)
    page = phone.get(_page_of(desk, SOLD))[1]
    assert "our courier called but could not take it (nobody was in)" in page
    assert "on the next delivery day" in page

    # Not collected: the next day's plan puts it on a round again, and the page says when.
    round_.courier({"do": "end_round"})
    round_.scan(LATER)
    round_.courier({"do": "close_day"})
    _sync(desk, van)
    with desk.service.database.reading() as conn:
        assert [r["return_id"] for r in rows.open_door_pickups(conn)] == [ret]
    _receive(desk, s10(205), (NORTH[0] + 0.01, NORTH[1]), "Noordweg 41")
    planned = desk.service.plan_day(DAY_AFTER).manifests
    assert [v for v, m in planned.items() if m.picked_up_at(ret) is not None] != []
    page = phone.get(_page_of(desk, SOLD))[1]
    assert "Monday 23 November" in page and "could not take it" not in page


def test_a_missed_pickup_the_courier_then_took_tells_only_the_receipt(desk: Desk) -> None:
    ret, van, round_ = _at_the_door(desk)
    round_.courier({"do": "pickup_missed", "parcel": ret, "reason": "not_ready"})
    round_.courier({"do": "pickup", "parcel": ret})  # packed after all, before the van left
    _sync(desk, van)  # both in one batch: the miss is no news any more
    assert desk.state(ret) == "returning"
    steps = [e["step"] for e in desk.service.book.track(ret)["timeline"]]
    assert steps[-2:] == ["pickup_missed", "collected_at_door"]
    desk.wait_for("/customer", "return_collected")
    assert _notices(desk, ret, "return_pickup_missed") == 0
    assert _notices(desk, ret, "return_collected") == 2


# --- the customer's page: the return form ------------------------------------------------------


class Phone:
    """A customer's browser without a script: cookies kept, redirects not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _Stay()
        )

    def get(self, path: str) -> tuple[int, str]:
        status, _headers, body = self._open(urllib.request.Request(self.base + path))
        return status, body

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(
            self.base + path,
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        status, headers, _body = self._open(request)
        return status, headers

    def _open(self, request: urllib.request.Request) -> tuple[int, dict[str, str], str]:
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, _lower(answer.headers), answer.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _lower(exc.headers), exc.read().decode()


def _lower(headers: Message) -> dict[str, str]:
    return {k.lower(): str(v) for k, v in headers.items()}


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _page_of(desk: Desk, parcel: str) -> str:
    link = desk.service.tracking_link(parcel)
    assert link is not None
    return urllib.parse.urlparse(link).path


def test_the_customer_books_a_locker_return_on_the_page_and_sees_its_code_and_qr(
    desk: Desk,
) -> None:
    _sold_and_closed(desk)
    _receive(desk, AGAIN, NORTH, "Noordweg 1")  # not delivered: no return offered
    phone = Phone(desk.web.url)
    path = _page_of(desk, SOLD)
    status, page = phone.get(path)
    assert status == 200 and "Return this parcel" in page and 'value="door"' in page
    status, headers = phone.post(path + "/return", {"how": "locker"})
    assert status == 303 and headers["location"] == path
    status, page = phone.get(path)
    assert status == 200 and "your return is booked" in page
    match = re.search(r'aria-label="return code">(\d{8})<', page)
    assert match is not None, page
    code = match.group(1)
    assert "<svg" in page and "North Square locker" in page and "Noordplein 1" in page
    assert "Return this parcel" not in page  # one return per parcel
    # The code shown is the one whose hash the locker was sent; nowhere in a URL or cookie.
    with desk.service.database.reading() as conn:
        args = conn.execute(
            "SELECT args FROM depot_commands WHERE action='expect_return'"
        ).fetchone()[0]
    sent = json.loads(args)
    assert sent["code_hash"] == code_hash(code, salt_from_text(sent["salt"]))
    assert code not in headers.get("location", "") and code not in headers.get("set-cookie", "")

    # Asked again (a second tab): refused in plain words, nothing more booked.
    status, headers = phone.post(path + "/return", {"how": "door"})
    assert status == 303 and "was%20booked%20before" in headers["set-cookie"]
    assert desk.service.customer_returns()["booked"] == 1
    # A parcel not delivered offers no return, and a post is refused.
    other = _page_of(desk, AGAIN)
    assert "Return this parcel" not in phone.get(other)[1]
    status, headers = phone.post(other + "/return", {"how": "locker"})
    assert status == 303 and "only%20a%20delivered%20parcel" in headers["set-cookie"]
    # A form without a choice changes nothing.
    _receive(desk, LATER, NORTH, "Noordweg 2")
    assert phone.post(_page_of(desk, SOLD) + "/return", {})[0] == 303
    assert desk.service.customer_returns()["booked"] == 1


def test_the_customer_books_a_door_return_on_the_page_and_is_told_when(desk: Desk) -> None:
    _sold_and_closed(desk)
    phone = Phone(desk.web.url)
    path = _page_of(desk, SOLD)
    status, _ = phone.post(path + "/return", {"how": "door"})
    assert status == 303
    status, page = phone.get(path)
    assert status == 200 and "A courier will collect it at your door" in page
    assert "on the next delivery day" in page  # no van out today calls there
    ret = re.search(r'class="return-id">(RT\d{9}NL)<', page)
    assert ret is not None and desk.state(ret.group(1)) == "return_booked"
    assert "<svg" in page and "return code" not in page

    _receive(desk, LATER, NORTH, "Noordweg 40")
    desk.service.plan_day(NEXT_DAY)
    page = phone.get(path)[1]
    assert "Sunday 22 November" in page and "next delivery day" not in page
    assert phone.get("/t/" + "A" * 32 + "/return")[0] in (404, 405)
    assert phone.post("/t/" + "A" * 32 + "/return", {"how": "door"})[0] == 404
