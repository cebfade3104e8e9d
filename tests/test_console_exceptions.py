"""The console's Exceptions queue over real HTTP, on a real depot service and database.

A depot service on each database (SQLite, PostgreSQL), not connected to a broker, takes device
events from real journals (tests/test_customer_link.py's `Depot`), so each kind of exception is
where the depot's own parts put it: an alarm a locker raised, a van's drop-off its locker never
confirmed (the depot's alarm after `locker_confirm_min`) and one still waiting, parcels back at
the depot, a dead-lettered webhook, a quarantined payload. The operator signs in through the
real form and acts through the page's forms (CSRF token included, or not).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from depot.alarms import list_alarms, raise_alarm
from depot.config import DepotConfig, LockerSiteConfig
from depot.service import LOCKER_DROP_ALARM, DepotService
from depot.store import outbox
from depot.web import DepotWeb
from parcel.identify import s10_check_digit
from sync.signing import generate_keypair, generate_sealing_keypair
from tests.test_customer_link import Depot, SettableClock
from tests.web import Console, signed_in

PAGE = "/console/exceptions"
MIN_NS = 60 * 10**9
DEAD = "ev-dead-1:merchant"
SECRET_IN_URL = "tok_0123456789secret"


def s10(serial: str) -> str:
    return f"RR{serial}{s10_check_digit(serial)}NL"


DROPPED = s10("10000001")  # dropped at locker-1 by van-1; the locker never said so
DROPPING = s10("10000002")  # dropped a minute ago: the locker may still confirm
BACK = s10("10000003")  # brought back to the depot by van-1
RETURNING = s10("10000004")  # back at the depot, booked to go back to its sender
IN_LOCKER = s10("10000005")  # in its locker: neither re-planned nor returned from there


@dataclass
class Queue:
    depot: Depot
    web: DepotWeb
    door_alarm: int

    @property
    def service(self) -> DepotService:
        return self.depot.service

    def operator(self, role: str = "operator") -> Console:
        return signed_in(self.web.url, self.service.database, role)

    def alarm(self, alarm_id: int) -> dict[str, object]:
        with self.service.database.reading() as conn:
            found = [a for a in list_alarms(conn, "all") if a["id"] == alarm_id]
        assert found, alarm_id
        return found[0]

    def state(self, parcel: str) -> str:
        return str(self.service.book.track(parcel)["state"])


@pytest.fixture
def queue(tmp_path: Path, depot_database: str) -> Iterator[Queue]:
    signing, _ = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    config = DepotConfig(
        database=depot_database,
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        webhook_secrets={"shop-1": b"whsec-shop-1-0123456789"},
        lockers=[LockerSiteConfig("locker-1", 52.3701, 4.9001, {"S": 2, "M": 2})],
    )
    clock = SettableClock()
    service = DepotService(
        config, clock=clock, signing_key_pem=signing, sealing_key_pems=[sealing_private]
    )
    depot = Depot(service, depot_database, clock, tmp_path, sealing_public)
    try:
        door = a_day_with_exceptions(depot)
        with DepotWeb(service.book, clock=clock, actions=service) as web:
            yield Queue(depot, web, door)
    finally:
        service.stop()
        for journal in depot.journals.values():
            journal.close()


def a_day_with_exceptions(d: Depot) -> int:
    """Every kind of exception, each made by the part of the depot that makes it; returns the
    id of the locker's own alarm."""
    service = d.service
    for parcel in (DROPPED, DROPPING, BACK, RETURNING, IN_LOCKER):
        service.book.receive(
            {"id": parcel, "raw": parcel, "kind": "s10", "recipient": "A. Jansen",
             "address": "Damrak 1, Amsterdam", "lat": 52.37, "lon": 4.90, "size": "S",
             "merchant": "shop-1"},
            now_ns=d.clock.wall_ns(),
        )
    loaded = [DROPPED, DROPPING, BACK]
    for stop, parcel in enumerate(loaded, 1):
        d.emit("van-1", "parcel_loaded", parcel=parcel, stop=stop, shelf=stop, raw=parcel)
    d.emit("van-1", "departed", version=1, loaded=loaded, missing=[])
    d.emit("van-1", "parcel_dropped_at_locker", parcel=DROPPED, stop=1, locker="locker-1",
           compartment="A1")
    d.clock.offset_ns += 31 * MIN_NS  # past [policy] locker_confirm_min: the depot's alarm
    service.process()
    d.emit("van-1", "parcel_dropped_at_locker", parcel=DROPPING, stop=2, locker="locker-1",
           compartment="A2")
    d.emit("van-1", "parcel_returned_to_depot", parcel=BACK)
    d.emit("van-1", "parcel_returned_to_depot", parcel=RETURNING)
    service.book.set_next_action(RETURNING, "return_to_sender", reason="the merchant asked")
    d.emit("locker-1", "parcel_deposited", parcel=IN_LOCKER, compartment="B1", size="S",
           hold_until_ns=d.clock.wall_ns() + 48 * 60 * MIN_NS)
    now = d.clock.wall_ns()
    with service.database.transaction() as conn:
        raise_alarm(conn, device="locker-1", alarm="door_left_open",
                    facts={"compartment": "C3", "open_s": 190}, at_ns=now, key="door-C3")
        outbox.add(conn, event_id=DEAD, url=f"https://hooks.shop.example/in?key={SECRET_IN_URL}",
                   body=b'{"parcel": "x"}', key_id="shop-1", now_ns=now)
        row = outbox.entry(conn, DEAD)
        assert row is not None
        outbox.mark_dead(conn, row.id, attempts=12, now_ns=now, error="HTTP 500: try later",
                         status=500)
    service.store.quarantine(
        "lastmile/v1/van-9/events", "not a batch: <b>bad</b> header", b"<script>alert(1)</script>"
    )
    with service.database.reading() as conn:
        door = [a["id"] for a in list_alarms(conn) if a["alarm"] == "door_left_open"]
    return int(door[0])


def section(page: str, name: str) -> str:
    found = re.search(rf'<section id="{name}" data-live="exc-{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name}"
    return found.group(1)


def drop_alarm(q: Queue) -> int:
    with q.service.database.reading() as conn:
        [alarm] = [a for a in list_alarms(conn) if a["alarm"] == LOCKER_DROP_ALARM]
    return int(alarm["id"])


# --- the queue ---------------------------------------------------------------------------------


def test_every_kind_of_exception_is_in_the_queue(queue: Queue) -> None:
    status, page = queue.operator().get(PAGE)
    assert status == 200
    alarms = section(page, "alarms")
    assert f'id="alarm-{queue.door_alarm}"' in alarms and "door left open" in alarms
    assert "compartment=C3" in alarms
    assert LOCKER_DROP_ALARM.replace("_", " ") not in alarms  # listed with its parcel instead

    drops = section(page, "drops")
    assert DROPPED in drops and f"alarm {drop_alarm(queue)}" in drops
    assert "van-1 says it dropped" in html.unescape(drops)
    assert DROPPING in drops and "waiting for the locker" in drops
    assert drops.count("/replan") == 2 and drops.count("/return") == 2

    back = section(page, "parcels")
    assert BACK in back and RETURNING in back and DROPPED not in back
    assert "Book handed back" in back  # the returning parcel: handed back, not re-planned
    assert back.count("/replan") == 1

    hooks = section(page, "webhooks")
    assert DEAD in hooks and "hooks.shop.example" in hooks and "HTTP 500" in hooks
    assert SECRET_IN_URL not in page  # a merchant's URL may carry its key: the host only

    quarantined = section(page, "quarantine")
    assert "lastmile/v1/van-9/events" in quarantined and "25 B" in quarantined
    assert "not a batch: &lt;b&gt;bad&lt;/b&gt; header" in quarantined
    assert "<script>alert" not in page and "alert(1)" not in page  # never the payload

    counts = re.findall(r'<div class="figure">(\d+)</div>', page)
    assert counts == ["1", "2", "1", "2", "1"]


def test_acknowledging_an_alarm_takes_it_off_the_queue_under_the_operators_name(
    queue: Queue,
) -> None:
    console = queue.operator()
    console.get(PAGE)
    status, headers, _ = console.act(
        f"{PAGE}/alarms/{queue.door_alarm}/ack", note="closed it on site", next=PAGE + "#alarms"
    )
    assert status == 303 and headers["location"] == PAGE + "#alarms"
    _, page = console.get(PAGE)
    assert "acknowledged by operator-" in page  # the flash message
    assert f'id="alarm-{queue.door_alarm}"' not in page
    assert "No open alarms." in section(page, "alarms")
    alarm = queue.alarm(queue.door_alarm)
    assert alarm["state"] == "acknowledged" and alarm["note"] == "closed it on site"
    assert str(alarm["acknowledged_by"]).startswith("operator-")

    console.act(f"{PAGE}/alarms/{queue.door_alarm}/ack", next=PAGE)  # a stale tab's button
    _, page = console.get(PAGE)
    assert "Not done: alarm" in html.unescape(page) and "already acknowledged" in page


def test_retrying_a_dead_webhook_makes_it_pending_again(queue: Queue) -> None:
    console = queue.operator()
    console.get(PAGE)
    status, _, _ = console.act(f"{PAGE}/webhooks/retry", event_id=DEAD, next=PAGE)
    assert status == 303
    with queue.service.database.reading() as conn:
        row = outbox.entry(conn, DEAD)
    assert row is not None and row.state == "pending" and row.attempts == 0
    _, page = console.get(PAGE)
    assert "is pending again" in page and DEAD not in section(page, "webhooks")
    console.act(f"{PAGE}/webhooks/retry", event_id=DEAD, next=PAGE)
    _, page = console.get(PAGE)
    assert "is not a dead letter" in page


def test_re_plan_and_return_to_sender_are_the_services_decisions_by_name(queue: Queue) -> None:
    console = queue.operator()
    console.get(PAGE)
    alarm = drop_alarm(queue)
    console.act(f"{PAGE}/parcels/{DROPPED}/replan", alarm=str(alarm), next=PAGE)
    track = queue.service.book.track(DROPPED)
    decision = track["timeline"][-1]
    assert track["next_action"] == "second_attempt" and decision["step"] == "next_action"
    assert "re-planned by operator-" in decision["details"]["reason"]
    assert queue.alarm(alarm)["state"] == "acknowledged"  # the re-plan answered it

    console.act(f"{PAGE}/parcels/{BACK}/replan", next=PAGE)
    planned = {p["id"]: p for p in queue.service.book.awaiting_assignment()}
    assert planned[BACK]["next_action"] == "second_attempt"  # the next plan_day takes it

    console.act(f"{PAGE}/parcels/{RETURNING}/return", next=PAGE)
    assert queue.state(RETURNING) == "returned_to_sender"
    _, page = console.get(PAGE)
    assert "booked handed back to its sender" in page
    back = section(page, "parcels")
    assert RETURNING not in back and BACK in back

    console.act(f"{PAGE}/parcels/{IN_LOCKER}/return", next=PAGE)  # in its locker: refused
    _, page = console.get(PAGE)
    assert "Not done:" in page and "in locker" in page
    assert queue.state(IN_LOCKER) == "in_locker"


def test_a_viewer_sees_the_queue_but_cannot_act(queue: Queue) -> None:
    viewer = queue.operator("viewer")
    status, page = viewer.get(PAGE)
    assert status == 200 and DEAD in page and BACK in page
    assert "Acknowledge</button>" not in page and "Retry</button>" not in page
    status, _, _ = viewer.act(f"{PAGE}/alarms/{queue.door_alarm}/ack", next=PAGE)
    assert status == 303
    viewer.act(f"{PAGE}/webhooks/retry", event_id=DEAD, next=PAGE)
    viewer.act(f"{PAGE}/parcels/{BACK}/return", next=PAGE)
    _, page = viewer.get(PAGE)
    assert "may look but not act" in page
    assert queue.alarm(queue.door_alarm)["state"] == "open"
    assert queue.state(BACK) == "at_depot"
    with queue.service.database.reading() as conn:
        row = outbox.entry(conn, DEAD)
    assert row is not None and row.state == "dead"


def test_an_action_without_the_sessions_csrf_token_is_refused(queue: Queue) -> None:
    console = queue.operator()
    for path, form in (
        (f"{PAGE}/alarms/{queue.door_alarm}/ack", {"next": PAGE}),
        (f"{PAGE}/webhooks/retry", {"event_id": DEAD, "next": PAGE}),
        (f"{PAGE}/parcels/{BACK}/return", {"next": PAGE}),
    ):
        status, _, _ = console.request(path, form)  # no csrf field
        assert status == 403
        status, _, _ = console.request(path, {**form, "csrf": "not-the-token"})
        assert status == 403
    assert queue.alarm(queue.door_alarm)["state"] == "open"
    assert queue.state(BACK) == "at_depot"
    with queue.service.database.reading() as conn:
        row = outbox.entry(conn, DEAD)
    assert row is not None and row.state == "dead"


def test_nobody_signed_in_is_sent_to_the_sign_in_page(queue: Queue) -> None:
    stranger = Console(queue.web.url)
    status, headers, _ = stranger.request(PAGE)
    assert status == 303 and headers["location"].startswith("/signin?next=")
    status, headers, _ = stranger.request(f"{PAGE}/alarms/{queue.door_alarm}/ack", {"next": PAGE})
    assert status == 303 and headers["location"] == "/signin"
    assert queue.alarm(queue.door_alarm)["state"] == "open"
