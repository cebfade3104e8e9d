"""The console and the customer's page in a real browser (Debian's Chromium, Playwright),
against a real depot holding a short simulated day, on each depot database.

One person's afternoon: an operator signs in, finds a parcel that waits in a locker, keeps its
page open; the parcel's customer opens the link from their notice on their phone and asks for
more time; the locker (the real locker software, still running after the day) takes the
depot's signed command and journals it, and the operator's page shows it arrive without a
reload; the operator then acknowledges an alarm from the exceptions queue.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from depot.web.auth import add_user
from tests.browser import sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from simulators.day import DayPlan

pytestmark = pytest.mark.slow

LIVE_WITHIN_MS = 2_000 + 8_000  # the 2 s, plus the locker's own round trip
DAY_TIMEOUT_S = 240.0


def short_day(database: str) -> DayPlan:
    """One van, one locker, a 72-hour hold: seed 4 ends its day with a parcel in the locker
    and alarms open (the day is the same for a seed on either database)."""
    from simulators.day import DayPlan

    return DayPlan(
        vans=1,
        lockers=1,
        parcels_per_van=30,
        days=1,
        speed=8000.0,
        seed=4,
        locker_hold_h=72.0,
        database=database,
    )


@dataclass
class SimDepot:
    url: str
    service: Any
    password: str
    report: dict[str, Any]


@pytest.fixture
def sim_depot(tmp_path: Path, depot_database: str) -> Iterator[SimDepot]:
    """The short simulated day's depot, kept up (devices and all) while the test runs."""
    from simulators.day import run_day

    ready = threading.Event()
    done = threading.Event()
    held: dict[str, Any] = {}
    failed: list[BaseException] = []

    def linger(report: dict[str, Any], service: Any) -> None:
        password = secrets.token_urlsafe(12)
        add_user(service.database, "kim", "operator", password)
        held.update(report=report, service=service, password=password)
        ready.set()
        done.wait(DAY_TIMEOUT_S)

    def run() -> None:
        try:
            run_day(short_day(depot_database), workdir=tmp_path / "day",
                    linger=linger)
        except BaseException as exc:  # handed to the test
            failed.append(exc)
            ready.set()

    runner = threading.Thread(target=run, name="sim-day", daemon=True)
    runner.start()
    try:
        assert ready.wait(DAY_TIMEOUT_S), "the simulated day did not finish in time"
        if failed:
            raise failed[0]
        service = held["service"]
        yield SimDepot(service.api.url, service, held["password"], held["report"])
    finally:
        done.set()
        runner.join(60)


def _waiting_in_a_locker(service: Any) -> str:
    found = service.book.parcels("in_locker")
    assert found, "the day left no parcel in a locker"
    return str(found[0]["parcel"])


def test_an_operator_and_a_customer_use_the_depot_in_a_browser(
    browser: Browser, sim_depot: SimDepot
) -> None:
    service = sim_depot.service
    parcel = _waiting_in_a_locker(service)
    operator = browser.new_context()
    customer = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    try:
        desk = operator.new_page()
        sign_in(desk, sim_depot.url, "kim", sim_depot.password)
        assert desk.locator("h1").first.inner_text().startswith("Today")

        # Find the parcel by a part of its id, as read off a label.
        desk.goto(f"{sim_depot.url}/console/parcels")
        desk.fill("input[name=q]", parcel[-6:])
        desk.press("input[name=q]", "Enter")
        desk.wait_for_load_state()
        desk.click(f"a[href='/console/parcels/{parcel}']")
        desk.wait_for_url(re.compile(f"/console/parcels/{parcel}$"))
        assert "in locker" in desk.locator("body").inner_text().replace("_", " ")
        desk.wait_for_selector("#live-state.on")  # the live stream is open

        # The customer opens the link from their notice and asks for more time.
        link = service.tracking_link(parcel)
        assert link is not None and "/t/" in link
        phone = customer.new_page()
        phone.goto(sim_depot.url + link[link.index("/t/"):])
        assert "Waiting for you in the locker" in phone.locator("h1").inner_text()
        code = phone.locator("[aria-label='pickup code']").inner_text()
        assert re.fullmatch(r"\d{6}", code)
        assert phone.locator(".qr svg").count() == 1
        phone.click("text=Give me more time to collect it")
        phone.wait_for_selector(".note")
        assert "keeps your parcel" in phone.locator(".note").inner_text()

        # The locker takes the command and journals the longer hold; the operator's open
        # page shows it without a reload.
        desk.wait_for_selector(
            f"#live-feed li:has-text('{parcel}')", timeout=LIVE_WITHIN_MS
        )
        assert desk.evaluate("performance.getEntriesByType('navigation').length") == 1

        # An alarm, acknowledged from the exceptions queue.
        open_before = service.alarms_open()
        assert open_before > 0
        desk.goto(f"{sim_depot.url}/console/exceptions")
        first = desk.locator("form[action*='/ack']").first
        first.locator("input[name=note]").fill("checked on site")
        with desk.expect_navigation():
            first.locator("button").click()
        assert "acknowledged by kim" in desk.locator(".flash").inner_text()
        assert service.alarms_open() == open_before - 1

        # Signing out ends the session: the console is closed again.
        with desk.expect_navigation():
            desk.click("text=Sign out")
        desk.goto(f"{sim_depot.url}/console")
        assert desk.url.startswith(f"{sim_depot.url}/signin")
    finally:
        operator.close()
        customer.close()
