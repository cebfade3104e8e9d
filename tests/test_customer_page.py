"""The customer's page over real HTTP: `/t/{token}` from the notice, and its two buttons.

The depot and its data are tests/test_customer_link.py's (a real service on each database);
here the page is asked for as a phone asks for it.
"""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message

import pytest

from depot.web import DepotWeb
from tests.test_customer_link import CODE, Depot
from tests.test_customer_link import depot as depot


class Phone:
    """A customer's browser without a script: cookies kept, redirects not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _Stay()
        )

    def open(self, path: str, post: bool = False) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.base + path, data=b"" if post else None)
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


@pytest.fixture
def web(depot: Depot) -> Iterator[DepotWeb]:
    with DepotWeb(
        depot.service.book, clock=depot.clock, actions=depot.service
    ) as running:
        yield running


def test_the_page_shows_the_locker_the_code_its_qr_and_the_hold(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive()
    depot.deposit()
    phone = Phone(web.url)
    status, headers, page = phone.open(f"/t/{depot.token()}")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert "Waiting for you in the locker at Central Station locker" in page
    assert "Stationsplein 1, Amsterdam" in page
    assert f'aria-label="pickup code">{CODE}<' in page and "<svg" in page
    assert "Collect it by" in page and "Delivery window: <strong>09:00–12:00" in page
    assert "A. Jansen" not in page and "Damrak 1" not in page  # the link is not the recipient
    assert "Give me more time" in page and "Deliver it again tomorrow" not in page


def test_the_customer_extends_the_hold_once_from_the_page(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive()
    depot.deposit()
    token = depot.token()
    phone = Phone(web.url)
    status, headers, _ = phone.open(f"/t/{token}/extend", post=True)
    assert status == 303 and headers["location"] == f"/t/{token}"
    assert "lm_note" in headers["set-cookie"] and CODE not in headers["set-cookie"]
    _, _, page = phone.open(f"/t/{token}")
    assert "Done: the locker keeps your parcel" in page
    assert "You asked for more time to collect it" in page
    assert "Give me more time" not in page  # once
    phone.open(f"/t/{token}/extend", post=True)  # a stale tab's button
    _, _, page = phone.open(f"/t/{token}")
    assert "Sorry, not possible" in page and "once" in page
    assert depot.timeline_steps().count("customer_request") == 1


def test_a_link_the_depot_did_not_give_shows_nothing(
    depot: Depot, web: DepotWeb
) -> None:
    depot.receive()
    depot.deposit()
    phone = Phone(web.url)
    for path in ("/t/" + "A" * 32, "/t/" + "A" * 32 + "/live"):
        status, _, page = phone.open(path)
        assert status == 404 and depot_parcel_absent(page)
    status, _, page = phone.open("/t/" + "A" * 32 + "/extend", post=True)
    assert status == 404 and depot_parcel_absent(page)


def depot_parcel_absent(page: str) -> bool:
    from tests.test_customer_link import PARCEL

    return PARCEL not in page and CODE not in page
