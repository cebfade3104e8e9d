"""Staffed counters in the simulated day: the real counter software, the people at its desk.

Owns the counters' part of `lastmile sim`. A counter (a shop's parcel desk) is the real
counter device (its journal on a ScaledClock, its desk scanner on a SimulatedScanner
pseudo-terminal, its uplink reaching the broker through its own LinkProxy), built by the
scenario runner (simulators/day.py) from a `CounterSetup`: like every simulator, this module
never imports the device software it stands in front of. The depot lists it as a site of kind
"counter" with a capacity, so its policy sends some failed parcels there as it sends others to
lockers, and the run treats it as it treats a locker: what the two kinds of site share (the
device, its link, watch and people; what the run asks of all sites) is written once, in
locker_day's SimulatedSite and SiteDay. Around it, one after another at the desk
(locker_day.People):

- a courier whose van's manifest has a stop at the counter hands the parcel over: the staff
  scan it in (the counter's check-in: `parcel_deposited`, "put it on shelf-N");
- customers come to collect: with the pickup code or QR of the depot's notice (the signed
  webhook the receiver got, as at a locker), or with the card the courier left (its code, read
  from the depot's notice of the missed delivery) and their name. The staff type the code (or
  scan the QR), fetch the parcel from the shelf the screen names, scan it, and type the
  customer's name, with the ID check and the signature strokes when the screen asks for them.
  Some mistype first; some never come, the hold expires and a courier the depot sends takes
  the parcel back (badge, then each parcel on the returns pile scanned);
- `CollectionPoints` lets a courier treat lockers and counters alike: the depot names the site
  in the manifest's `locker` stop, the courier brings and collects there.

People act only through the counter's inputs (scanner reads, the staff's screen lines) and only
after the counter showed what a person would see (its screen and its journal's events). The
counter's screen conventions are written down here on their own (`{"do": ...}` lines, badge and
QR prefixes), so a change on the counter's side shows as a day that goes wrong.

Must never: do the depot's work, read a pickup code or card code anywhere but from the
depot's notices, hand a parcel over the counter refused, or wait without a bound.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from depot.ingest import DepotStore
from simulators.day import DAY_END_H, DAY_START_H
from simulators.link import LinkProxy
from simulators.locker_day import (
    CREDENTIAL_WAIT_S,
    WAIT_S,
    CustomerInbox,
    LockerDay,
    LockerWatch,
    Seen,
    SimulatedSite,
    SiteContext,
    SiteDay,
    SiteDevice,
    SiteKeys,
    courier_badge,
    depot_events,
    find_seen,
    n_parcels,
)
from simulators.parcels import Label
from simulators.scanner import SimulatedScanner
from simulators.webhooks import WebhookReceiver
from sync.clock import ScaledClock
from sync.journal import Journal
from sync.mqtt import BrokerAddress

log = logging.getLogger("simulators.counter_day")

# What the counter's desk reads and its screen takes, as printed on the desk's card.
QR_AIM = "]Q1"
# What the screen says when a code, QR or card finds no parcel.
NOT_FOUND = frozenset({"code not recognised", "too many wrong codes; wait"})

SHELVES = 30  # shelf places of every simulated counter (the depot's `capacity` for it)

# The scenario (per parcel checked in, drawn from the counters' own random stream).
UNCOLLECTED_SHARE = 0.15
SAME_DAY_PICKUP = 0.6  # of those who come: the rest come the next morning
CARD_SHARE = 0.4  # of those who have a card: come with the card and their name
QR_SHARE = 0.3  # of the rest: show the QR of the notice, else say the code
WRONG_FIRST_SHARE = 0.2  # say a wrong code first

Method = Literal["code", "qr", "card"]


class Recipient(Protocol):
    """What the people at the desk know of a parcel's customer (simulators.delivery_day's
    Household): the label on the parcel and the name on the ID."""

    @property
    def label(self) -> Label: ...

    @property
    def recipient(self) -> str: ...


@dataclass(frozen=True)
class CounterSetup:
    """Everything the scenario runner needs to build one real counter device for the day."""

    name: str
    journal: Path
    scanner_port: str
    shelves: int
    hold_s: float  # on the journal's clock: simulated seconds
    courier_badges: frozenset[str]
    depot_sealing_key: bytes
    command_key: bytes
    broker: BrokerAddress
    sync: Mapping[str, Any]
    clock: ScaledClock
    display: LockerWatch


class StaffScreen(Protocol):
    """The counter's screen as its staff use it: one `{"do": ...}` line, its answer."""

    def staff(self, line: str) -> Mapping[str, Any]: ...


class CounterDeviceLike(SiteDevice, Protocol):
    """A counter device as the scenario runner built it."""

    @property
    def counter(self) -> StaffScreen: ...


BuildCounter = Callable[[CounterSetup], CounterDeviceLike]


@dataclass
class Visit:
    """A customer's visit to collect a parcel, as drawn when it was checked in."""

    parcel: str
    pickup_h: float | None  # None: never comes
    method: Method = "code"
    wrong_first: bool = False


@dataclass
class CounterTally:
    """What the script did at one counter (the counter's own side is its events)."""

    brought: int = 0  # parcels couriers handed over for check-in
    visits: int = 0  # customers who came to collect
    by_card_asked: int = 0
    wrong_codes_said: int = 0
    proof_given: int = 0  # hand-outs where the staff took an ID check or a signature
    collections: int = 0  # couriers who came for the returns pile
    gave_up: Counter[str] = field(default_factory=Counter)
    step_errors: int = 0


def cards_told(receiver: WebhookReceiver | None) -> dict[str, str]:
    """The card code of each parcel whose customer the depot told of a missed delivery with
    a card (its notice's `details.card`, the customer's copy of what is on the card)."""
    told: dict[str, str] = {}
    for request in receiver.received if receiver is not None else ():
        body = request.body
        if not (request.verified and 200 <= request.status < 300 and isinstance(body, dict)):
            continue
        card = (body.get("details") or {}).get("card")
        if isinstance(card, str) and card:
            told[str(body.get("parcel"))] = card
    return told


def signature_strokes(rng: random.Random) -> dict[str, Any]:
    """What a customer's hand leaves on the desk's signature pad: a few wavy strokes."""
    width, height = 480, 160
    strokes = []
    x = rng.randint(20, 60)
    for _ in range(rng.randint(2, 4)):
        points = []
        y = rng.randint(50, 110)
        for _ in range(rng.randint(8, 30)):
            x = min(width, x + rng.randint(2, 12))
            y = max(0, min(height, y + rng.randint(-14, 14)))
            points.append([x, y])
        strokes.append(points)
        x = min(width - 40, x + rng.randint(5, 25))
    return {"width": width, "height": height, "strokes": strokes}


def _line(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


class SimulatedCounter(SimulatedSite[CounterDeviceLike, CounterTally]):
    """One counter of the day: its desk scanner, the real counter device, its link, its
    people (the staff and whoever is at the desk)."""

    _log = log
    scanner: SimulatedScanner

    def __init__(
        self,
        name: str,
        password: str,
        clock: ScaledClock,
        context: SiteContext,
        *,
        build: BuildCounter,
        receiver: WebhookReceiver | None,
        customers: Callable[[str], Recipient | None],
    ) -> None:
        super().__init__(name, clock, context, tally=CounterTally())
        self.receiver = receiver
        self.customers = customers
        self.checked_in: set[str] = set()

        def scanner() -> None:
            self.scanner = SimulatedScanner(context.workdir / f"{name}.tty")
            self._closers.append(self.scanner.close)

        def device(broker: BrokerAddress) -> CounterDeviceLike:
            return build(
                CounterSetup(
                    name=name,
                    journal=context.workdir / f"{name}.journal.db",
                    scanner_port=str(self.scanner.path),
                    shelves=SHELVES,
                    hold_s=context.hold_h * 3600,
                    courier_badges=context.badges,
                    depot_sealing_key=context.keys.sealing_public,
                    command_key=context.keys.command_public,
                    broker=broker,
                    sync=dict(context.sync),
                    clock=clock,
                    display=self.watch,
                )
            )

        self._bring_up(password, context, scanner, device)

    def start(self) -> bool:
        """Start the counter and its people; True once it says it is ready."""
        mark = self.watch.mark()
        self.device.start()
        self.people.start()
        ready = self.watch.wait(
            lambda seen: True if find_seen(seen, mark, "display", counter=self.name) else None,
            5.0,
        )
        return ready is not None

    def parcels_held(self) -> int:
        held: set[str] = set()
        for s in self.watch.snapshot():
            parcel = str(s.facts.get("parcel"))
            if s.kind == "parcel_deposited":
                held.add(parcel)
            elif s.kind in ("parcel_picked_up", "parcel_returned"):
                held.discard(parcel)
        return len(held)

    def progress_line(self) -> str:
        state = self.link_state()
        return f"{self.name} {state}, {n_parcels(self.parcels_held())} held"

    # --- waiting like a person ----------------------------------------------------------------

    def _wait(self, find: Callable[[Sequence[Seen]], int | None], what: str) -> Seen | None:
        at = self.watch.wait(find, WAIT_S)
        if at is None:
            self._gave_up(f"no {what}")
            return None
        return self.watch.snapshot()[at]

    def _screen_after(self, mark: int, parcel: str) -> Callable[[Sequence[Seen]], int | None]:
        """The first thing the screen showed about `parcel` after `mark`, or that it said no
        parcel was found."""

        def find(seen: Sequence[Seen]) -> int | None:
            for i in range(mark, len(seen)):
                s = seen[i]
                if s.kind == "display" and (
                    s.facts.get("parcel") == parcel or s.facts.get("display") in NOT_FOUND
                ):
                    return i
            return None

        return find

    def _say(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A line on the staff's screen; its answer."""
        return dict(self.device.counter.staff(_line(doc)))

    # --- the people's steps -------------------------------------------------------------------

    def check_in(self, parcel: str, label: Label) -> bool:
        """A courier hands a parcel over: the staff scan it; True once it is on a shelf."""
        self.tally.brought += 1
        mark = self.watch.mark()
        self.scanner.scan(label.data, label.aim)

        def done(seen: Sequence[Seen]) -> int | None:
            for i in range(mark, len(seen)):
                s = seen[i]
                if s.facts.get("parcel") != parcel:
                    continue
                if s.kind in ("parcel_deposited", "dropoff_refused"):
                    return i
                if s.kind == "display" and s.facts.get("display") == "already here":
                    return i
            return None

        seen = self._wait(done, "check-in")
        if seen is None:
            return False
        if seen.kind != "parcel_deposited":
            self._gave_up(f"check-in: {seen.facts.get('reason') or seen.facts.get('display')}")
            return False
        self.checked_in.add(parcel)
        return True

    def hand_out(self, visit: Visit) -> None:
        """A customer comes to collect: the staff find the parcel by the code, QR or card,
        fetch it, scan it and hand it over with the name (and the proof the screen asks)."""
        customer = self.customers(visit.parcel)
        if visit.parcel not in self.checked_in or customer is None:
            return
        self.tally.visits += 1
        method = visit.method
        card = cards_told(self.receiver).get(visit.parcel) if method == "card" else None
        if method == "card" and card is None:
            method = "code"  # the card is lost: the notice's code will do
        notice = None
        if method != "card":
            with self.people.awaiting_news():
                notice = self.inbox.notice(
                    visit.parcel, CREDENTIAL_WAIT_S, give_up=lambda: self.watch.aborted
                )
            if notice is None:
                self._gave_up("no pickup notice from the depot")
                return
        if visit.wrong_first and notice is not None and method == "code":
            self.tally.wrong_codes_said += 1
            self._say({"do": "code", "code": self._typo(notice["code"])})
        mark = self.watch.mark()
        if method == "card":
            self.tally.by_card_asked += 1
            answer = self._say({"do": "card", "card": card, "name": customer.recipient})
        elif method == "qr" and notice is not None:
            self.scanner.scan(notice["qr"], QR_AIM)
            shown = self._wait(self._screen_after(mark, visit.parcel), "QR answer")
            answer = {} if shown is None else {**shown.facts}
        else:
            assert notice is not None
            answer = self._say({"do": "code", "code": notice["code"]})
        if answer.get("parcel") != visit.parcel:
            self._gave_up(f"hand-out refused: {answer.get('display')}")
            return
        # Fetched from the shelf the screen named: the staff scan it to prove it is that one.
        mark = self.watch.mark()
        self.scanner.scan(customer.label.data, customer.label.aim)
        shown = self._wait(self._screen_after(mark, visit.parcel), "answer to the parcel scan")
        if shown is None:
            self._say({"do": "cancel"})
            return
        if str(shown.facts.get("display")) == "hand it over":
            return  # a card gave the name, and nothing more was needed
        line: dict[str, Any] = {"do": "name", "name": customer.recipient}
        needs = shown.facts.get("needs") or ()
        if "id_check" in needs:
            line["id_check"] = {"id_type": "id_card", "birth_year": self._birth_year(customer)}
        if "signature" in needs:
            line["signature"] = signature_strokes(self.rng)
        if needs:
            self.tally.proof_given += 1
        answer = self._say(line)
        if answer.get("display") != "hand it over":
            self._gave_up(f"not handed out: {answer.get('reason') or answer.get('display')}")
            self._say({"do": "cancel"})

    def collect_returns(self, van: str) -> list[str]:
        """The courier of `van`, sent by the depot, takes what is on the returns pile: the
        staff type the badge, then scan each parcel the screen lists. The parcels taken."""
        self.tally.collections += 1
        answer = self._say({"do": "badge", "badge": courier_badge(van)})
        taken: list[str] = []
        for item in answer.get("returns") or ():
            parcel = str(item.get("parcel"))
            customer = self.customers(parcel)
            if customer is None:
                self._gave_up("a parcel on the returns pile without a label")
                continue
            mark = self.watch.mark()
            self.scanner.scan(customer.label.data, customer.label.aim)
            returned = partial(find_seen, after=mark, kind="parcel_returned", parcel=parcel)
            if self._wait(returned, "parcel_returned") is not None:
                taken.append(parcel)
        self._say({"do": "logout"})
        return taken

    def _birth_year(self, customer: Recipient) -> int:
        """The year on the ID the recipient brings (the notice says to): the one the world
        drew for them when they open their own door (delivery_day's `at_door`), else an
        adult's drawn from their name."""
        person = getattr(customer, "at_door", None)
        drawn = getattr(person, "birth_year", None)
        if getattr(person, "name", None) == customer.recipient and isinstance(drawn, int):
            return drawn
        year = time.gmtime(self.clock.wall_ns() / 1e9).tm_year
        return year - random.Random(customer.recipient).randint(20, 75)


class CounterDay(SiteDay[SimulatedCounter]):
    """The staffed counters of one simulated day: accounts, devices, customers, figures."""

    _log = log

    def __init__(self, count: int, *, seed: int, speed: float, hold_h: float) -> None:
        super().__init__("counter", count, seed=seed, speed=speed, hold_h=hold_h)
        self.visits: list[Visit] = []

    @property
    def counters(self) -> list[SimulatedCounter]:
        return self.sites

    def start(
        self,
        build: BuildCounter,
        *,
        workdir: Path,
        broker_host: str,
        broker_port: int,
        mqtt5: bool,
        tls_ca: str | None,
        keys: SiteKeys,
        receiver: WebhookReceiver | None,
        customers: Callable[[str], Recipient | None],
        wall_start_ns: int,
        vans: Sequence[str],
        sync: Mapping[str, Any],
        time_from: ScaledClock | None = None,
    ) -> None:
        """Build (with `build`) and start every counter; the depot must be running."""
        self.inbox = CustomerInbox(receiver)
        badges = frozenset(courier_badge(v) for v in vans)
        context = SiteContext(
            workdir, broker_host, broker_port, mqtt5, tls_ca, badges, sync,
            keys, self.hold_h, self.inbox, self.seed,
        )  # fmt: skip
        self._start_sites(
            partial(SimulatedCounter, build=build, receiver=receiver, customers=customers),
            context,
            wall_start_ns=wall_start_ns,
            time_from=time_from,
            not_ready="said it was ready",
        )

    def bring(self, van: str, label: Label, parcel: str, counter: str, at_h: float) -> bool:
        """A courier hands `parcel` over at `counter` now; True once it is on a shelf. The
        customer's visit is drawn here and handed to `on_visit` for the day's scheduler."""
        site = self._site(counter)
        checked = threading.Event()
        ok: list[bool] = []

        def step() -> None:
            try:
                ok.append(site.check_in(parcel, label))
            finally:
                checked.set()

        site.people.put("check-in", step)
        if not checked.wait(WAIT_S * 3) or not ok or not ok[0]:
            return False
        visit = self._draw_visit(parcel, at_h)
        self.visits.append(visit)
        if visit.pickup_h is not None:
            what = f"pickup ({visit.method})"
            self._visit(site, visit.pickup_h, what, partial(site.hand_out, visit))
        return True

    def _draw_visit(self, parcel: str, at_h: float) -> Visit:
        # Drawn per parcel, so two couriers arriving at once cannot swap their customers' fates.
        rng = random.Random(f"{parcel}/{self.seed}/counter")
        visit = Visit(parcel, None)
        if rng.random() < UNCOLLECTED_SHARE:
            return visit
        same_day = min(DAY_END_H - 0.3 - at_h, self.hold_h - 1.0)
        if same_day >= 0.3 and rng.random() < SAME_DAY_PICKUP:
            visit.pickup_h = at_h + rng.uniform(0.3, same_day)
        else:
            # The next morning (an hour past 24 is the next day's), if the hold lasts till then.
            morning = 24.0 + DAY_START_H + rng.uniform(0.2, 2.0)
            if morning <= at_h + self.hold_h - 0.5:
                visit.pickup_h = morning
        if rng.random() < CARD_SHARE:
            visit.method = "card"
        elif rng.random() < QR_SHARE:
            visit.method = "qr"
        visit.wrong_first = visit.method == "code" and rng.random() < WRONG_FIRST_SHARE
        return visit

    def report(self, store: DepotStore) -> dict[str, Any]:
        """Per counter, from the events the depot stored: parcels `checked_in`, `handed_out`
        (and by what: code, QR, card), `expired`, `returned` (to a courier), hand-outs
        `refused` for want of proof, and the script's side to compare."""
        out: dict[str, Any] = {}
        for site in self.counters:
            events = depot_events(store, site.name)
            kinds = Counter(kind for kind, _ in events)
            methods = Counter(
                str(p.get("method")) for kind, p in events if kind == "parcel_picked_up"
            )
            t = site.tally
            out[site.name] = {
                "checked_in": kinds["parcel_deposited"],
                "handed_out": kinds["parcel_picked_up"],
                "expired": kinds["hold_expired"],
                "returned": kinds["parcel_returned"],
                "handed_out_by": dict(sorted(methods.items())),
                "handouts_refused": kinds["handout_refused"],
                "checkins_refused": kinds["dropoff_refused"],
                "brought": t.brought,
                "visits": t.visits,
                "proof_given": t.proof_given,
                "collections": t.collections,
                "gave_up": dict(sorted(t.gave_up.items())),
                "step_errors": t.step_errors,
                "events": site.journal.last_seq,
            }
        return out


class CollectionPoints:
    """The lockers and staffed counters of the day as the couriers and the run see them: a
    courier brings a parcel to, and collects from, the site the manifest's stop names,
    whichever kind it is (simulators.delivery_day.LockerDropper)."""

    def __init__(self, lockers: LockerDay | None, counters: CounterDay | None) -> None:
        self.lockers = lockers
        self.counters = counters

    def _counter(self, site: str) -> bool:
        return self.counters is not None and site in self.counters.names

    def bring(self, van: str, label: Label, parcel: str, site: str, at_h: float) -> bool:
        if self._counter(site):
            assert self.counters is not None
            return self.counters.bring(van, label, parcel, site, at_h)
        if self.lockers is None:
            return False
        return self.lockers.bring(van, label, parcel, site, at_h)

    def collect(self, van: str, site: str, at_h: float) -> list[str]:
        if self._counter(site):
            assert self.counters is not None
            return self.counters.collect(van, site, at_h)
        if self.lockers is None:
            return []
        return self.lockers.collect(van, site, at_h)

    def _each(self) -> list[Any]:
        return [g for g in (self.lockers, self.counters) if g is not None]

    @property
    def sites(self) -> list[Any]:
        """Every site (name, link, people, journal) the day's world waits for."""
        lockers = self.lockers.lockers if self.lockers is not None else []
        counters = self.counters.counters if self.counters is not None else []
        return [*lockers, *counters]

    @property
    def links(self) -> list[LinkProxy]:
        return [link for g in self._each() for link in g.links]

    @property
    def journals(self) -> list[tuple[str, Journal]]:
        return [j for g in self._each() for j in g.journals]

    def drain(self, deadline: float) -> None:
        for g in self._each():
            g.drain(deadline)

    def end_of_day(self) -> None:
        for g in self._each():
            g.end_of_day()

    def close(self) -> None:
        for g in self._each():
            g.close()

    def expired_inside(self) -> set[str]:
        return {p for g in self._each() for p in g.expired_inside()}

    def progress(self) -> list[str]:
        return [part for g in self._each() for part in g.progress()]
