"""Failure cards on each database: the code a van leaves is kept by its digest, told to the
customer (the merchant hears only where it is typed), and the public page `/card` sends whoever
types it to the parcel's tracking page, over real HTTP, five wrong codes per address then a
cool-down.

The depot is tests/test_customer_link.py's (a real service, device events from real journals).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.parse
from collections.abc import Iterator

import pytest

from depot.cards import CardTries, formatted, normalise
from depot.web import DepotWeb
from tests.conftest import depot_sql
from tests.test_customer_link import PARCEL, PUBLIC, Depot
from tests.test_customer_link import depot as depot

CARD = "7KQ4-M2XP"


class Browser:
    """A phone's browser from one client address: forms posted, redirects not followed."""

    def __init__(self, url: str, source: str = "127.0.0.1") -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.source = str(parts.hostname), int(parts.port or 80), source
        self.cookies: dict[str, str] = {}

    def open(
        self, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=10, source_address=(self.source, 0)
        )
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request("POST" if form is not None else "GET", path, body, headers)
            answer = conn.getresponse()
            text = answer.read().decode()
            found = {k.lower(): v for k, v in answer.getheaders()}
            for cookie in answer.headers.get_all("set-cookie") or []:
                name, _, rest = cookie.partition("=")
                self.cookies[name] = rest.partition(";")[0]
            return answer.status, found, text
        finally:
            conn.close()


@pytest.fixture
def web(depot: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(depot.service.book, clock=depot.clock, actions=depot.service) as running:
        yield running


def missed(depot: Depot, card: str | None = CARD, reason: str = "not_at_home") -> None:
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, stop=1, reason=reason, attempt=1,
               card=card)


def test_codes_are_read_as_people_type_them() -> None:
    assert normalise("7kq4 m2xp") == "7KQ4M2XP"
    assert normalise(" 7KQ4-M2XP ") == "7KQ4M2XP"
    assert normalise("OIL4-M2XP") == "0114M2XP"  # O read as 0, I and L as 1
    for wrong in ("7KQ4-M2X", "7KQ4-M2XPP", "7KQ4-M2XU", "7KQ4_M2XP", "", "x" * 100):
        assert normalise(wrong) is None, wrong
    assert formatted("7KQ4M2XP") == CARD


def test_a_card_is_kept_by_its_digest_and_its_code_told_to_the_customer_only(
    depot: Depot,
) -> None:
    depot.receive(locker_ok=False)
    missed(depot)
    entry = depot.service.book.track(PARCEL)["timeline"]
    attempt = next(e for e in entry if e["step"] == "attempted")
    assert attempt["details"]["card"] == CARD  # the operators' console shows it
    with depot_sql(depot.database) as conn:
        rows = [tuple(r) for r in conn.execute("SELECT digest, parcel FROM card_codes")]
        merchant_rows = [
            bytes(r[0]) for r in conn.execute(
                "SELECT body FROM webhook_outbox WHERE url LIKE '%/hooks'"
            )
        ]
    assert rows == [(hashlib.sha256(b"7KQ4M2XP").hexdigest(), PARCEL)]
    assert all(b"7KQ4" not in body for body in merchant_rows)

    customer = depot.notices("customer")[-1]
    merchant = depot.notices("merchant")[-1]
    assert customer["state"] == merchant["state"] == "attempted"
    assert customer["details"]["card"] == CARD
    assert customer["details"]["card_url"] == f"{PUBLIC}/card"
    assert merchant["details"]["card_url"] == f"{PUBLIC}/card"
    assert merchant["details"]["card_left"] is True and "card" not in merchant["details"]
    assert customer["details"]["x12_reason"] == "AQ"
    view = depot.service.customer_view(depot.token())
    assert any("we left a card" in line.words for line in view.timeline)


def test_a_card_that_is_not_a_code_is_not_kept(depot: Depot) -> None:
    depot.receive(locker_ok=False)
    missed(depot, card="hello")
    with depot_sql(depot.database) as conn:
        assert conn.execute("SELECT count(*) FROM card_codes").fetchone()[0] == 0
    assert "card" not in depot.notices("customer")[-1]["details"]
    assert "card_url" not in depot.notices("merchant")[-1]["details"]


def test_the_card_page_sends_the_customer_to_the_tracking_page(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(locker_ok=False)
    missed(depot)
    token = depot.token()
    phone = Browser(web.url)
    status, _, page = phone.open("/card?code=7KQ4-M2XP")
    assert status == 200 and 'value="7KQ4-M2XP"' in page and 'action="/card"' in page
    status, headers, _ = phone.open("/card", {"code": "7kq4 m2xp"})
    assert status == 303 and headers["location"] == f"/t/{token}"
    assert "lm_note" in headers["set-cookie"] and "7KQ4" not in headers["set-cookie"]
    assert f"Path=/t/{token}" in headers["set-cookie"]
    status, _, page = phone.open(headers["location"])
    assert status == 200 and "choose below what happens to it next" in page
    assert "Deliver it again tomorrow" in page


def test_every_card_of_an_open_journey_leads_to_its_page(depot: Depot, web: DepotWeb) -> None:
    depot.receive(locker_ok=False)
    missed(depot, card="0114-ABCD")
    depot.emit("van-1", "departed", version=2, loaded=[PARCEL], missing=[])
    missed(depot, card=CARD)
    phone = Browser(web.url)
    for typed in ("OIL4 abcd", CARD):  # the first card too, typed as it was misread
        status, headers, _ = phone.open("/card", {"code": typed})
        assert status == 303 and headers["location"] == f"/t/{depot.token()}", typed
    depot.emit("van-1", "departed", version=3, loaded=[PARCEL], missing=[])
    status, headers, _ = phone.open("/card", {"code": CARD})
    assert status == 303
    _, _, page = phone.open(headers["location"])
    assert "no longer waiting for a choice: on its way" in page


def test_a_card_whose_journey_ended_says_so_and_leads_nowhere(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(locker_ok=False)
    missed(depot)
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, stop=1, to="recipient")
    status, headers, page = Browser(web.url).open("/card", {"code": CARD})
    assert status == 410 and "location" not in headers
    assert "reached its end: delivered" in page and "no longer in use" in page
    assert "/t/" not in page


def test_five_wrong_codes_from_one_address_then_a_cool_down(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive(locker_ok=False)
    missed(depot)
    guesser = Browser(web.url)
    status, _, page = guesser.open("/card", {"code": "hello"})
    assert status == 400 and "8 letters and digits" in page  # not a code: not counted
    for n in range(4):
        status, _, page = guesser.open("/card", {"code": f"AAAA-AAA{n}"})
        assert status == 404 and "no card we left has this code" in page
    status, headers, page = guesser.open("/card", {"code": "AAAA-AAA9"})
    assert status == 429 and int(headers["retry-after"]) > 800
    assert "Try again in 15 minutes" in page
    status, headers, _ = guesser.open("/card", {"code": CARD})  # even the right one now
    assert status == 429 and "location" not in headers
    # Another address is not held up by this one.
    status, headers, _ = Browser(web.url, "127.0.0.2").open("/card", {"code": CARD})
    assert status == 303 and headers["location"].startswith("/t/")


def test_the_cool_down_ends_and_a_card_used_too_often_waits_too() -> None:
    now = [1000.0]
    tries = CardTries(max_wrong=5, max_uses=3, window_s=900, cooldown_s=600, now=lambda: now[0])
    for _ in range(4):
        tries.wrong("10.0.0.1")
    assert tries.wait_s("10.0.0.1") == 0
    tries.wrong("10.0.0.1")
    assert tries.wait_s("10.0.0.1") == 600
    assert tries.wait_s("10.0.0.2") == 0
    now[0] += 599
    assert tries.wait_s("10.0.0.1") == pytest.approx(1)
    now[0] += 1
    assert tries.wait_s("10.0.0.1") == 0
    tries.wrong("10.0.0.1")  # a fresh count after the cool-down
    assert tries.wait_s("10.0.0.1") == 0
    for _ in range(3):
        tries.used("card-digest")
    assert tries.wait_s("10.0.0.9", "card-digest") == 600
    assert tries.wait_s("10.0.0.9", "another-card") == 0
    # Old wrong tries are forgotten after the window.
    now[0] += 901
    for _ in range(4):
        tries.wrong("10.0.0.3")
    now[0] += 901
    tries.wrong("10.0.0.3")
    assert tries.wait_s("10.0.0.3") == 0
