"""The console's Today and Fleet pages over real HTTP, on a real depot database.

The data is a small known day made the way a depot gets it: device journals synced as the
wire carries them and projected by the parcel book (`tests.test_depot_tracking`'s `a_round`),
plus a second van's round, a delivery of yesterday, manifests, a position, webhooks and an
alarm put where the depot's own parts put them. Each figure the pages show is then known.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from depot.alarms import raise_alarm
from depot.config import LockerSiteConfig
from depot.ingest import DepotStore
from depot.store import outbox, positions, sends
from depot.tracking import Notification, ParcelBook
from depot.web import DepotWeb
from depot.web.context import Sites
from depot.web.mapsvg import projection
from parcel.identify import s10_check_digit
from parcel.manifest import Manifest, Stop
from sync.wire import PositionSample
from tests.conftest import depot_sql
from tests.test_depot_tracking import (
    T0,
    UPS,
    Depot,
    StepClock,
    a_round,
    pod,
    project_all,
    receive_all,
    record,
    recording,
)
from tests.web import Console, signed_in

DAY_NS = 86_400 * 10**9
DAY = "2026-11-18"  # T0's day (11:06 UTC): the devices' clocks run from there


def s10(serial: str) -> str:
    return f"RR{serial}{s10_check_digit(serial)}NL"


LATE = s10("22222222")  # delivered today, outside its window
STILL_OUT = s10("33333333")  # out on van-2 when the page is looked at


@dataclass
class FixedClock:
    """The depot's clock, standing still at one moment of T0's day."""

    wall: int = T0 + 3600 * 10**9
    boot_id: str = "console-test"

    def monotonic_ns(self) -> int:
        return self.wall - T0

    def wall_ns(self) -> int:
        return self.wall

    def wall_synced(self) -> bool:
        return True


@pytest.fixture
def day(tmp_path: Path, depot_database: str) -> Iterator[Depot]:
    store = DepotStore(depot_database)
    sent: list[Notification] = []
    book = ParcelBook(
        depot_database, notify=recording(sent), clock=StepClock(wall=T0 - 3600 * 10**9)
    )
    d = Depot(depot_database, tmp_path, store, book, sent)
    a_round(d)
    known_day(d)
    project_all(book)
    yield d
    book.close()
    for device in d.devices.values():
        device.journal.close()
    store.close()


def known_day(d: Depot) -> None:
    """Besides `a_round` (van-1: S10_A delivered in its window, S10_B failed, SSCC redirected
    to locker-1): van-2 delivers LATE outside its window and has STILL_OUT left to deliver;
    van-3 delivered UPS yesterday."""
    receive_all(d, UPS)
    d.book.receive(record(LATE, window=["08:00", "09:00"]), now_ns=T0 - DAY_NS, source="import")
    receive_all(d, STILL_OUT)
    d.book.assign(LATE, "van-2", 1, 1)
    d.book.assign(STILL_OUT, "van-2", 2, 1)
    d.book.assign(UPS, "van-3", 1, 1)
    van2 = d.device("van-2")
    van2.emit("manifest_applied", version=1, day=DAY, stops=2, parcels=2)
    van2.emit("parcel_loaded", parcel=LATE, stop=1, shelf=2, raw=LATE)
    van2.emit("parcel_loaded", parcel=STILL_OUT, stop=2, shelf=1, raw=STILL_OUT)
    van2.emit("departed", version=1, loaded=[LATE, STILL_OUT], missing=[])
    van2.emit("parcel_delivered", parcel=LATE, stop=1, to="recipient", name="C", pod=pod())
    van2.sync()
    van3 = d.device("van-3")
    van3.clock.wall = T0 - DAY_NS  # yesterday
    van3.emit("manifest_applied", version=1, day="2026-11-17", stops=1, parcels=1)
    van3.emit("parcel_loaded", parcel=UPS, stop=1, shelf=1, raw=UPS)
    van3.emit("departed", version=1, loaded=[UPS], missing=[])
    van3.emit("parcel_delivered", parcel=UPS, stop=1, to="recipient", name="D", pod=pod())
    van3.sync()
    d.store.set_status("van-1", '{"state": "online", "boot_id": "b"}')
    d.store.set_status("van-2", '{"state": "offline", "boot_id": "b"}')
    now = FixedClock().wall
    van2_round = Manifest(
        van="van-2",
        version=1,
        day=DAY,
        depot=(52.3600, 4.9000),
        stops=(
            Stop(1, 52.3702, 4.8952, (LATE,), address="Damrak 1", recipient="A. Jansen"),
            Stop(2, 52.3750, 4.8800, (STILL_OUT,), address="Spui 2"),
        ),
    )
    with d.book.database.transaction() as conn:
        sends.issue_manifest(
            conn, van="van-2", day=DAY, version=1, body=van2_round.to_json(), issued_ns=now
        )
        positions.record(
            conn,
            "van-2",
            [PositionSample(now - 60 * 10**9, 52.3720, 4.8900, 5.0, 7.0, 1, 1, 2)],
            received_ns=now,
        )
        for n in range(3):
            outbox.add(
                conn,
                event_id=f"e{n}",
                url="https://shop.example/h",
                body=b"{}",
                key_id="shop-1",
                now_ns=now - 600 * 10**9,
            )
        raise_alarm(conn, device="locker-1", alarm="door_forced", facts={}, at_ns=now, key="k1")
    with depot_sql(d.path) as sql:
        sql.execute("UPDATE webhook_outbox SET state = 'dead' WHERE event_id = 'e2'")


SITES = Sites(
    depot=(52.3600, 4.9000),
    lockers=(
        LockerSiteConfig(
            "locker-1", 52.3790, 4.9000, {"S": 4}, "Central locker", "Stationsplein 1"
        ),
        LockerSiteConfig("locker-9", 52.3650, 4.9100, {"S": 4}, "", "Weesperplein 9"),
    ),
    vans=("van-1", "van-2", "van-9"),
)


@pytest.fixture
def web(day: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(day.book, clock=FixedClock(), sites=SITES) as running:
        yield running


def card(page: str, name: str) -> str:
    """The figure and label of the card with id `card-{name}`, as plain text."""
    found = re.search(rf'id="card-{name}">(.*?)</div>\s*</div>', page, re.S)
    assert found, f"no card {name}"
    return _text(found.group(1))


def row(page: str, row_id: str) -> str:
    found = re.search(rf'<tr id="{row_id}">(.*?)</tr>', page, re.S)
    assert found, f"no row {row_id}"
    return _text(found.group(1))


def _text(fragment: str) -> str:
    """An HTML fragment's words, spaces (the narrow ones included) as one space."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", fragment)).replace("\u202f", " ")
    return re.sub(r"\s+", " ", text).strip()


def test_today_counts_the_known_day(web: DepotWeb, day: Depot) -> None:
    console = signed_in(web.url, day.book.database, "viewer")
    status, page = console.get("/console")
    assert status == 200
    assert card(page, "parcels").startswith("6 parcels in the book")
    # Door outcomes today: S10_A and LATE delivered, S10_B failed, SSCC redirected; UPS's
    # delivery was yesterday.
    assert card(page, "delivered").startswith("2 delivered today, of 4 attempted")
    assert card(page, "first-time").startswith("50.0 % first-attempt success (2 of 4)")
    assert card(page, "in-window").startswith("50.0 % inside their window (1 of 2")
    assert card(page, "failed").startswith("1 failed an attempt today; 1 redirected")
    assert card(page, "webhooks-pending").startswith("2 webhooks pending, oldest 10 min")
    assert card(page, "webhooks-dead").startswith("1 webhooks dead-lettered")
    assert card(page, "alarms").startswith("1 open alarms")
    assert "not at home" in page and "door forced" in page
    by_state = dict(
        re.findall(r'<span class="state (\w+)">[^<]*</span></td><td class="num">(\d+)', page)
    )
    assert by_state["delivered"] == "3" and by_state["at_depot"] == "1"
    assert by_state["picked_up"] == "1" and by_state["out_for_delivery"] == "1"
    for live in ("today-cards", "today-states", "today-reasons", "today-hours", "today-alarms"):
        assert page.count(f'data-live="{live}"') == 1


def test_fleet_lists_each_device_and_each_round(web: DepotWeb, day: Depot) -> None:
    console = signed_in(web.url, day.book.database, "viewer")
    status, page = console.get("/console/fleet")
    assert status == 200
    assert row(page, "van-van-1").startswith("van-1 online")
    van2 = row(page, "van-van-2")
    assert van2.startswith("van-2 offline")
    assert "1 / 2 stops" in van2 and "stop 1" in van2 and "Damrak 1" in van2
    assert "60 s ago" in van2
    assert row(page, "van-van-9").startswith("van-9 never heard from")
    assert row(page, "device-locker-1").startswith("locker-1 Central locker unknown")
    assert row(page, "device-locker-9").startswith("locker-9 Weesperplein 9 never heard from")
    assert 'id="van-van-3"' in page  # a van by its manifest, though not in the settings
    for live in ("fleet-vans", "fleet-lockers", "fleet-map"):
        assert page.count(f'data-live="{live}"') == 1


def test_the_map_draws_the_depot_lockers_stops_and_vans(web: DepotWeb, day: Depot) -> None:
    console = signed_in(web.url, day.book.database)
    _, page = console.get("/console/fleet")
    svg = re.search(r'<svg class="map".*?</svg>', page, re.S)
    assert svg, page
    drawn = svg.group(0)
    assert re.search(r'<g class="marker depot" data-name="depot">', drawn)
    assert re.search(r'<g class="marker locker" data-name="locker-1">', drawn)
    van = re.search(
        r'<g class="marker van" data-name="van-2">.*?<circle cx="([\d.]+)" '
        r'cy="([\d.]+)".*?<text[^>]*>van-2</text>',
        drawn,
        re.S,
    )
    assert van, drawn
    # van-2's round: stop 1 done (delivered), stop 2 pending (STILL_OUT is out).
    assert re.search(r'<path class="stops done" d="M[\d.]+ [\d.]+h0"/>', drawn)
    assert re.search(r'<path class="stops pending" d="M[\d.]+ [\d.]+h0"/>', drawn)
    assert "http" not in drawn.replace("http://www.w3.org", "")  # nothing from the internet


def test_pages_need_a_signed_in_operator(web: DepotWeb) -> None:
    for path in ("/console", "/console/fleet"):
        status, headers, _ = Console(web.url).request(path)
        assert status == 303
        location = {k.lower(): v for k, v in headers.items()}["location"]
        assert location.startswith("/signin?next=")


def test_the_projection_keeps_north_up_and_the_scale_true() -> None:
    # A box 0.02 deg of latitude by 0.02 deg of longitude at 60 deg N: half as wide as tall.
    project, height = projection([(60.0, 10.0), (60.02, 10.02)], width=1000, max_height=1000, pad=0)
    (x0, y0), (x1, y1) = project(60.0, 10.0), project(60.02, 10.02)
    assert y1 < y0 and x1 > x0  # north is up, east is right
    ratio = (x1 - x0) / (y0 - y1)
    assert ratio == pytest.approx(0.5, abs=0.01)
    assert height == pytest.approx(1000, abs=0.5)
