"""Customers' returns in the simulated day: booked, dropped at a locker or handed over at the
door, collected by a van.

Owns the customers who send a delivered parcel back (`lastmile sim`). A share of the customers
whose parcel was delivered (drawn per parcel from the seed, about 3 %) book a return a while
later: on their tracking page (the `tracking_url` of the depot's notices, its return form:
`POST /t/{token}/return`) or through the shop, whose returns desk books it on the depot's
merchant API (`POST /returns` with its API token). Most drop it at a locker (`how=locker`):
the depot tells the customer the return code and the locker by signed webhook (the receiver
gets it); the customer goes to that locker and types the code on its keypad
(simulators.locker_day: the door that opens takes the parcel). The depot plans the
collection, the courier of a van takes it out with the locker's returns (`#2`) and scans it
back at the depot, as any parcel. The others hand it to the courier at the door
(`how=door`, `handover=door`): the depot's notice names the return's id, which the customer
prints as its label; the depot puts the pickup on a round that calls at the address (today's
or the next day's), and the courier scans it there (simulators.delivery_day).

The return parcel carries a label the courier can scan: its return id, an S10 the depot
drew, printed as simulators.parcels prints an S10 label; it joins the day's world as a
household at the original's address, so the courier scans it like any parcel.

Must never: do the depot's work (draw a code, choose a locker), read a return code anywhere
but from the depot's notice to the customer, or wait without a bound.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from simulators.day import DAY_END_H, DAY_START_H
from simulators.delivery_day import metres
from simulators.locker_day import CREDENTIAL_WAIT_S, WAIT_S, LockerDay, PageVisitors
from simulators.parcels import Label
from simulators.webhooks import WebhookReceiver
from sync.journal import Journal
from sync.wire import Event

log = logging.getLogger("simulators.returns_day")

RETURN_SHARE = 0.03  # of the customers whose parcel was delivered
PAGE_SHARE = 0.5  # book on the tracking page; the rest through the shop (merchant API)
DOOR_SHARE = 0.35  # hand it to the courier at the door; the rest drop it at a locker
BOOK_AFTER_H = (0.3, 2.5)  # hours after the delivery
DROP_AFTER_H = (0.3, 1.5)  # hours after the booking
LAST_DROP_H = DAY_END_H - 0.5  # later than this, the customer goes the next morning


@dataclass
class ReturnsTally:
    """What the customers did (the depot's own figures are `customer_returns`)."""

    wanted: int = 0
    booked_on_page: int = 0
    booked_by_shop: int = 0
    told_code: int = 0
    dropped: int = 0
    for_the_door: int = 0  # told the return's id: the label for the courier who calls
    refused: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    step_errors: int = 0


def _notices(receiver: WebhookReceiver, parcel: str) -> list[dict[str, Any]]:
    """The depot's verified notices to the customer of `parcel`, oldest first."""
    out = []
    for request in receiver.received:
        body = request.body
        if (
            request.path.startswith("/customer")
            and request.verified
            and 200 <= request.status < 300
            and isinstance(body, dict)
            and body.get("parcel") == parcel
        ):
            out.append(body)
    return out


def return_notice(receiver: WebhookReceiver, parcel: str) -> dict[str, Any] | None:
    """The notice of a booked return of `parcel`, if it came: with its code (`return_code`)
    for a locker, with only its id (`return`, the label) for the courier at the door."""
    for body in _notices(receiver, parcel):
        if body.get("event") != "return_booked" or not isinstance(body.get("return"), str):
            continue
        code = body.get("return_code")
        if body.get("handover") == "door" or (isinstance(code, dict) and "code" in code):
            return body
    return None


class ReturnsDesk(PageVisitors):
    """The customers who send parcels back, and the shops' returns desks acting for them."""

    name = "customers sending returns"

    def __init__(
        self,
        *,
        seed: int,
        share: float,
        api_url: str,
        api_token: str,
        receiver: WebhookReceiver,
        lockers: LockerDay,
        lockers_at: Mapping[str, tuple[float, float]],
        world: MutableMapping[str, Any],
        hooked: Collection[str],
        schedule: Callable[[float, str, str, Callable[[], None]], None],
        hour: Callable[[], float],
    ) -> None:
        self.seed = seed
        self.share = share
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.receiver = receiver
        self.lockers = lockers
        self.lockers_at = lockers_at
        self.world = world
        self.hooked = hooked
        self.schedule = schedule
        self.hour = hour
        self.tally = ReturnsTally()
        super().__init__("returns", self.tally)

    def watch(self, journal: Journal) -> None:
        """Hear of the deliveries `journal` (a van's) records: the customers who then want to
        send theirs back are drawn as each arrives."""
        journal.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for e in events:
            if e.kind != "parcel_delivered":
                continue
            parcel = str(e.payload.get("parcel"))
            # Only a customer the depot can tell the code (a webhook), drawn per parcel.
            rng = random.Random(f"return/{parcel}/{self.seed}")
            if parcel not in self.hooked or rng.random() >= self.share:
                continue
            self.tally.wanted += 1
            book_h = self.hour() + rng.uniform(*BOOK_AFTER_H)
            if book_h > LAST_DROP_H:
                book_h = 24.0 + DAY_START_H + rng.uniform(0.2, 1.5)
            on_page = rng.random() < PAGE_SHARE
            how = "door" if rng.random() < DOOR_SHARE else "locker"
            step = partial(
                self.book, parcel, book_h, on_page, how, random.Random(rng.getrandbits(32))
            )
            self.schedule(
                book_h,
                "customers",
                "books a return",
                partial(self.people.put, f"return of {parcel}", step),
            )

    # --- the customer's steps -----------------------------------------------------------------

    def book(
        self, parcel: str, book_h: float, on_page: bool, how: str, rng: random.Random
    ) -> None:
        """Book the return (the page, or the shop's desk on the API), wait for the depot's
        notice; `how="locker"`: with the code, then plan the walk to the locker it names;
        `how="door"`: with the return's id, the label for the courier (simulators.
        delivery_day's courier takes it when a round calls at the door)."""
        home = self.world.get(parcel)
        if home is None:
            return
        link = next(
            (str(b["tracking_url"]) for b in _notices(self.receiver, parcel)
             if isinstance(b.get("tracking_url"), str)),
            None,
        )
        booked = on_page and link is not None and self._book_on_page(link, how)
        if booked:
            self.tally.booked_on_page += 1
        elif how == "door":
            if not self._book_by_shop(parcel, str(home.merchant), handover="door"):
                return
            self.tally.booked_by_shop += 1
        else:
            # Through the shop; when the depot finds no locker near home, the customer names
            # the one they pass anyway (the nearest, however far).
            nearest = min(
                self.lockers_at, key=lambda n: metres(self.lockers_at[n], (home.lat, home.lon))
            )
            merchant = str(home.merchant)
            booked = self._book_by_shop(parcel, merchant) or self._book_by_shop(
                parcel, merchant, nearest
            )
            if not booked:
                return
            self.tally.booked_by_shop += 1
        with self.people.awaiting_news():
            self.receiver.wait_for(
                lambda: return_notice(self.receiver, parcel) is not None, CREDENTIAL_WAIT_S
            )
        notice = return_notice(self.receiver, parcel)
        if notice is None:
            self.tally.gave_up["no return code from the depot"] += 1
            return
        return_id = str(notice["return"])
        label = dataclasses.replace(home, parcel=return_id, label=Label(return_id, "]C0", "post"))
        if notice.get("handover") == "door":
            # The customer prints the return's id (the page's QR of it) and waits for a van.
            self.world[return_id] = label
            self.tally.for_the_door += 1
            return
        self.tally.told_code += 1
        locker = str(notice.get("locker") or "")
        code = notice["return_code"]
        if locker not in self.lockers.names:
            self.tally.gave_up["a return to no locker of the day"] += 1
            return
        # The parcel, repacked, gets the return's label; it lives where the original went.
        self.world[return_id] = label
        # From the hour of the booking (the seed's), unless the notice came later than that.
        drop_h = max(book_h % 24.0 + rng.uniform(*DROP_AFTER_H), self.hour() + 0.1)
        if drop_h > LAST_DROP_H:
            drop_h = 24.0 + DAY_START_H + rng.uniform(0.2, 2.0)
        self.schedule(
            drop_h,
            locker,
            "return drop",
            partial(
                self.lockers.drop_return,
                locker,
                return_id,
                str(code["code"]),
                str(code.get("qr_text") or ""),
                self._dropped,
            ),
        )

    def _dropped(self, ok: bool) -> None:
        if ok:
            self.tally.dropped += 1
        else:
            self.tally.gave_up["return drop failed"] += 1

    def _book_on_page(self, link: str, how: str) -> bool:
        """The tracking page's return form; its answer is a redirect with a one-line note."""
        form = urllib.parse.urlencode({"how": how}).encode()
        request = urllib.request.Request(link.rstrip("/") + "/return", data=form, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(request, timeout=WAIT_S) as answer:
                status, cookie = answer.status, answer.headers.get("Set-Cookie", "")
        except urllib.error.HTTPError as exc:
            status, cookie = exc.code, exc.headers.get("Set-Cookie", "")
        except (urllib.error.URLError, OSError) as exc:
            self.tally.gave_up[f"tracking page unreachable: {exc}"] += 1
            return False
        note = urllib.parse.unquote(cookie.partition("=")[2].partition(";")[0]).strip('"')
        if status == 303 and note.startswith("Done"):
            return True
        self.tally.refused[note or f"page answered {status}"] += 1
        return False

    def _book_by_shop(
        self, parcel: str, merchant: str, locker: str | None = None, *, handover: str = "locker"
    ) -> bool:
        """The shop's returns desk books it on the depot's API (its token), at `locker` when
        the customer named one, or for the courier at the door (`handover="door"`)."""
        doc = {"parcel": parcel, "merchant": merchant, "handover": handover}
        if locker is not None:
            doc["locker"] = locker
        body = json.dumps(doc).encode()
        request = urllib.request.Request(f"{self.api_url}/returns", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Bearer {self.api_token}")
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
                if answer.status == 201:
                    return True
                said = f"API answered {answer.status}"
        except urllib.error.HTTPError as exc:
            try:
                said = str(json.loads(exc.read()).get("error") or exc.code)
            except (ValueError, AttributeError):
                said = f"API answered {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            said = f"API unreachable: {exc}"
        self.tally.refused[said] += 1
        return False

    def report(self) -> dict[str, Any]:
        t = self.tally
        return {
            "wanted": t.wanted,
            "booked_on_page": t.booked_on_page,
            "booked_by_shop": t.booked_by_shop,
            "told_code": t.told_code,
            "dropped": t.dropped,
            "for_the_door": t.for_the_door,
            "refused": dict(sorted(t.refused.items())),
            "gave_up": dict(sorted(t.gave_up.items())),
            "step_errors": t.step_errors,
        }
