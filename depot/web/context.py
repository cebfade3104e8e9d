"""What the web layer is handed by the depot: its book, its judgement, its clock and actions.

`WebDepot` is the one object every route reaches through `request.app.state.depot`. The
actions are the depot service's own methods (`DepotActions`): the web layer asks, the service
decides and records, as for every other decision; a depot run without a service (a tool, a
test of the book alone) has none, and the pages that would act say so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.templating import Jinja2Templates

from depot.cards import CardAnswer
from depot.config import LockerSiteConfig
from depot.customer import CustomerView, PickupOffer
from depot.policy import NextAction
from depot.returns import BookedReturn
from depot.tracking import ParcelBook
from depot.web import auth
from parcel.care import Care
from sync.clock import Clock

SESSION_COOKIE = "lm_session"
Health = Callable[[], dict[str, Any]]


class DepotActions(Protocol):
    """What a person at a web page may ask the depot service to do."""

    def extend_hold(self, parcel: str, token: str) -> tuple[str, float]: ...

    def send_command(self, target: str, action: str, args: Mapping[str, Any]) -> str: ...

    # The Lockers page (`depot.web.pages.lockers`): an operator's signed commands, who and why.
    def operator_extend_hold(self, parcel: str, by: str, reason: str) -> tuple[str, float]: ...

    def operator_remote_open(self, locker: str, compartment: str, by: str, reason: str) -> str: ...

    def operator_set_in_service(
        self, locker: str, compartment: str, by: str, reason: str
    ) -> str: ...

    # The customer's page (`depot.customer`): what it shows, and the customer's two requests.
    def customer_view(self, token: str) -> CustomerView: ...

    def customer_extend(self, token: str) -> tuple[str, float]: ...

    def customer_redeliver(self, token: str) -> NextAction: ...

    # After a missed delivery: collect it from a locker or a staffed counter instead.
    def customer_to_locker(self, token: str) -> PickupOffer: ...

    def customer_to_counter(self, token: str) -> PickupOffer: ...

    def customer_preferences(self, token: str, form: Mapping[str, str]) -> Care: ...

    # The failure card's page (`depot.web.pages.card`): where a card's code leads.
    def card_link(self, code: str) -> CardAnswer: ...

    # The Exceptions queue (`depot.web.pages.exceptions`): an operator's decisions, by name.
    def operator_replan(self, parcel: str, by: str, *, alarm: int | None = None) -> str: ...

    def operator_return_to_sender(
        self, parcel: str, by: str, *, alarm: int | None = None
    ) -> str: ...

    def operator_retry_webhook(self, event_id: str, by: str) -> None: ...
    # A customer's return (`depot.returns`), booked by a merchant's system or the customer.
    def book_return(
        self,
        parcel: str,
        *,
        by: str,
        size: str | None = None,
        locker: str | None = None,
        merchant: str | None = None,
        handover: str = "locker",
    ) -> BookedReturn: ...

    # The customer's own return, from their page: `how` is "locker" or "door".
    def customer_return(self, token: str, how: str) -> BookedReturn: ...


@dataclass(frozen=True)
class Sites:
    """Where the depot's places are, from its settings (the fleet page's map): the depot, its
    locker sites and the vans it plans for (a van never heard from is still listed)."""

    depot: tuple[float, float] | None = None
    lockers: tuple[LockerSiteConfig, ...] = ()
    vans: tuple[str, ...] = ()


@dataclass
class WebDepot:
    """The depot as the web layer sees it."""

    book: ParcelBook
    clock: Clock
    templates: Jinja2Templates
    health: Health | None = None
    actions: DepotActions | None = None
    sites: Sites = field(default_factory=Sites)
    # Set when the server stops: live streams end instead of holding the shutdown up.
    stopping: threading.Event = field(default_factory=threading.Event)


def session_of(request: Request) -> auth.Session | None:
    """The signed-in operator behind this request's cookie (looked up once per request)."""
    if "session" not in request.state._state:
        depot: WebDepot = request.app.state.depot
        cookie = request.cookies.get(SESSION_COOKIE, "")
        request.state.session = auth.find_session(depot.book.database, cookie)
    found: auth.Session | None = request.state.session
    return found
