"""Customers who find a "sorry we missed you" card in the simulated day.

Owns the people at home after a failed attempt that left a card. The courier writes the code
the van's screen shows on the card and puts it through the door (`card_left`, called by
simulators.delivery_day's courier). About half of those customers (drawn per parcel from the
seed, CARD_PAGE_SHARE) go to the depot's card page a while later: with the code and the page's
address from the depot's notice of the attempt when they have one (`card`, `card_url`: the
signed webhook the receiver got), else from the card itself (its code as the courier wrote
it, the page printed on it). They type the code on the page (`POST /card`), follow its
redirect to the parcel's tracking page (`/t/{token}`), and choose among the buttons that page
offers: delivery again (`/redeliver`), the locker (`/locker`) or the staffed counter
(`/counter`) it names, in the order of their own liking (drawn from the seed). A page that
offers nothing (the parcel is already on its way elsewhere) is left as it is. A customer whose
notices already told a pickup code for the parcel (it waits in a locker or at a counter) has
no use for the card and goes there instead (simulators.locker_day, counter_day).

The depot's own figures (cards left, cards followed by a choice) are the report's; this
module's tally is what the customers did and saw, to compare.

Must never: do the depot's work (make a code, decide what is offered), read a code anywhere
but from the card or the customer's notice, follow a link the depot did not give, or wait
without a bound (every request has a timeout).
"""

from __future__ import annotations

import logging
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from html.parser import HTMLParser
from typing import Any

from simulators.day import DAY_END_H, DAY_START_H
from simulators.locker_day import WAIT_S, PageVisitors
from simulators.webhooks import WebhookReceiver

log = logging.getLogger("simulators.card_customers")

__all__ = ["CARD_PAGE_SHARE", "CardCustomers", "CardTally"]

CARD_PAGE_SHARE = 0.5  # of the customers who find a card: they go to the card page
VISIT_AFTER_H = (0.5, 4.0)  # hours after the card was left (coming home, finding it)
# Home from work by then; later than this, the customer goes the next morning (the day's
# timetable runs actions up to an hour past its end).
LAST_VISIT_H = DAY_END_H + 0.5
# How much customers like each choice the page may offer (the first one offered is taken).
LIKING = {"redeliver": 5, "counter": 3, "locker": 3}
CHOICES = tuple(LIKING)


@dataclass
class CardTally:
    """What the customers with a card did (the depot's figures are the report's `cards`)."""

    found: int = 0  # cards put through a door
    went_to_page: int = 0  # ... whose customer typed the code on the card page
    told_where_to_collect: int = 0  # ... but a pickup code came since: no need for the page
    code_from_notice: int = 0  # ... read from the depot's notice (else from the card)
    notice_disagreed: int = 0  # a notice whose code was not the card's (must stay 0)
    reached_parcel: int = 0  # the card page led to the parcel's tracking page
    chose: Counter[str] = field(default_factory=Counter)  # redeliver / locker / counter taken
    nothing_offered: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # the page's words
    gave_up: Counter[str] = field(default_factory=Counter)
    step_errors: int = 0


class _Buttons(HTMLParser):
    """The POST forms of a page: their actions, in the page's order."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and (found.get("method") or "").lower() == "post" and found.get("action"):
            self.actions.append(str(found["action"]))


def _note(cookie: str) -> str:
    """The one-line note the page sets in its cookie for the page it redirects to."""
    return urllib.parse.unquote(cookie.partition("=")[2].partition(";")[0]).strip('"')


class CardCustomers(PageVisitors):
    """The customers who find a card, each acting once, in simulated time (`schedule`)."""

    name = "customers with a card"

    def __init__(
        self,
        *,
        seed: int,
        receiver: WebhookReceiver,
        card_page: str,
        schedule: Callable[[float, str, str, Callable[[], None]], None],
        hour: Callable[[], float],
        share: float = CARD_PAGE_SHARE,
    ) -> None:
        self.seed = seed
        self.receiver = receiver
        self.card_page = card_page  # the page printed on the card (the depot's `/card`)
        self.schedule = schedule
        self.hour = hour
        self.share = share
        self.tally = CardTally()
        super().__init__("card customers", self.tally)
        self._lock = threading.Lock()  # couriers of several vans leave cards at once
        self._cards: Counter[str] = Counter()  # cards left per parcel

    def card_left(self, parcel: str, code: str) -> None:
        """The courier put a card with `code` through `parcel`'s door (the courier's thread):
        whether and when its customer goes to the card page is drawn now, from the seed (and
        how many cards that door had before: a second attempt's card is a new chance)."""
        with self._lock:
            self.tally.found += 1
            self._cards[parcel] += 1
            rng = random.Random(f"card/{parcel}/{self._cards[parcel]}/{self.seed}")
        if rng.random() >= self.share:
            return
        at_h = self.hour() + rng.uniform(*VISIT_AFTER_H)
        if at_h > LAST_VISIT_H:
            at_h = 24.0 + DAY_START_H + rng.uniform(0.2, 1.5)
        liking = sorted(CHOICES, key=lambda c: -LIKING[c] * rng.random())
        step = partial(self.visit, parcel, code, liking)
        self.schedule(
            at_h,
            "customers",
            "goes to the card page",
            partial(self.people.put, f"card of {parcel}", step),
        )

    # --- the customer's steps -----------------------------------------------------------------

    def _from_notice(self, parcel: str) -> tuple[tuple[str, str] | None, bool]:
        """The code and card page of the newest notice of a failed attempt with a card, and
        whether a pickup code came after it (the parcel waits to be collected)."""
        found, collect = None, False
        for body in self.receiver.bodies("/customer"):
            if not isinstance(body, dict) or body.get("parcel") != parcel:
                continue
            details = body.get("details")
            if isinstance(details, dict) and details.get("card") and details.get("card_url"):
                found, collect = (str(details["card"]), str(details["card_url"])), False
            elif isinstance(body.get("pickup"), dict):
                collect = True
        return found, collect

    def visit(self, parcel: str, card_code: str, liking: list[str]) -> None:
        """Type the code on the card page, follow it to the parcel's page, choose there."""
        told, collect = self._from_notice(parcel)
        if collect:
            self.tally.told_where_to_collect += 1
            return
        code, page = card_code, self.card_page
        if told is not None:
            self.tally.code_from_notice += 1
            if told[0] != card_code:
                self.tally.notice_disagreed += 1
            code, page = told
        self.tally.went_to_page += 1
        status, where, note = self._post(page, {"code": code})
        if status != 303 or not where:
            self.tally.refused[note or f"card page answered {status}"] += 1
            return
        self.tally.reached_parcel += 1
        tracking = urllib.parse.urljoin(page, where)
        offered = self._offered(tracking)
        if offered is None:
            return
        choice = next((c for c in liking if c in offered), None)
        if choice is None:
            self.tally.nothing_offered += 1
            return
        status, _where, note = self._post(urllib.parse.urljoin(tracking, offered[choice]), {})
        if status == 303 and note.startswith("Done"):
            self.tally.chose[choice] += 1
        else:
            self.tally.refused[note or f"{choice} answered {status}"] += 1

    def _offered(self, tracking: str) -> dict[str, str] | None:
        """The choices the parcel's page offers now: choice -> its form's action."""
        try:
            with self.opener.open(tracking, timeout=WAIT_S) as answer:
                html = answer.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            self.tally.gave_up[f"tracking page unreachable: {exc}"] += 1
            return None
        buttons = _Buttons()
        buttons.feed(html)
        offered = {}
        for action in buttons.actions:
            last = action.rstrip("/").rpartition("/")[2]
            if last in LIKING:
                offered[last] = action
        return offered

    def _post(self, url: str, form: dict[str, str]) -> tuple[int, str, str]:
        """POST a form as a browser does: the status, the redirect's Location, the note."""
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, data=data, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(request, timeout=WAIT_S) as answer:
                status, headers = answer.status, answer.headers
        except urllib.error.HTTPError as exc:
            status, headers = exc.code, exc.headers
        except (urllib.error.URLError, OSError) as exc:
            self.tally.gave_up[f"page unreachable: {exc}"] += 1
            return 0, "", ""
        return status, headers.get("Location", ""), _note(headers.get("Set-Cookie", ""))

    def report(self) -> dict[str, Any]:
        t = self.tally
        return {
            "found": t.found,
            "told_where_to_collect": t.told_where_to_collect,
            "went_to_page": t.went_to_page,
            "code_from_notice": t.code_from_notice,
            "notice_disagreed": t.notice_disagreed,
            "reached_parcel": t.reached_parcel,
            "chose": dict(sorted(t.chose.items())),
            "nothing_offered": t.nothing_offered,
            "refused": dict(sorted(t.refused.items())),
            "gave_up": dict(sorted(t.gave_up.items())),
            "step_errors": t.step_errors,
        }
