"""Parcel lockers in the simulated day: the real locker software, simulated people around it.

Owns the lockers' part of `lastmile sim`. Each locker is the real locker device (its journal on
a ScaledClock, its lock-board bus on a SimulatedLockBoards pseudo-terminal with two boards of
eight compartments, its uplink reaching the broker through its own LinkProxy), built by the
scenario runner (simulators/day.py) from a `LockerSetup`: like every simulator, this module
never imports the device software it stands in front of. Around it, scripted from the seed:

- couriers whose door attempts failed bring those parcels: badge scan, parcel label, and a
  person who puts the parcel in once the locker has seen the door open, then shuts it;
- customers collect them by code or QR, as the depot's pickup notice told them (the signed
  webhook the receiver got: the depot opened the locker's sealed credential, so it has
  travelled through the sync and the depot); some mistype first, some who cannot come in
  time use the notice's extend-hold link, one attacker guesses until the keypad locks; some
  parcels are never collected and expire, and the courier of the van the depot sends to
  collect them takes them out (badge, `#2`);
- faults: a jammed lock during a drop-off, a forced door, a door left open past the alarm,
  a board off the bus for a while, a dead zone on the locker's link.

People act only through the locker's inputs (scanner reads, keypad lines) and the boards'
test-side controls, and only after the locker has reported what a person would see (its
display and its journal's events). They know the keypad and scanner conventions as printed on
the locker, written down here on their own, so a change on the locker's side shows as a day
that goes wrong. Their steps run in order on one thread per locker, queued by the day's
scheduler at their simulated time, so a person waiting for a door never holds up the vans.

What a locker shares with a staffed counter (simulators.counter_day) has its one owner here: a
site's device, link, watch and people (`SimulatedSite`), the sites of one kind in the day
(`SiteDay`: links, journals, end of day, drain, progress, collections), the run's keys.

Must never: do the depot's work (open a credential, sign or publish a command), read a
pickup code anywhere but from the depot's notice, touch a door before the
locker has seen it open, wait without a bound, or count a fault as injected that was not.
Door, jam and keypad timers of the locker run on real (monotonic) time while holds run on the
simulated clock: the settings below are chosen for that, and every wait is on an event, not a
fixed sleep, so the script holds at any `--speed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from depot.ingest import DepotStore
from simulators.day import DAY_END_H, DAY_START_H
from simulators.link import LinkProxy
from simulators.lockboard import SimulatedLockBoards
from simulators.parcels import GS, Label
from simulators.webhooks import WebhookReceiver
from sync.clock import ScaledClock
from sync.journal import Journal
from sync.mqtt import BrokerAddress
from sync.signing import (
    generate_keypair,
    generate_sealing_keypair,
)
from sync.uplink import Uplink
from sync.wire import Event

log = logging.getLogger("simulators.locker_day")

T = TypeVar("T")

# The hardware of every simulated locker: two CU16 boards with eight doors each.
BOARDS = 2
LOCK_SIZES = ("S", "S", "S", "S", "M", "M", "M", "L")  # lock 0..7 of each board
LARGEST = "L"

# What the locker's front says: a courier shows a badge (scanned, or typed after "*"), "#1" says
# a parcel does not fit, "#2" collects returns, "#0" logs out; a pickup QR reads "LMQR:...".
BADGE_PREFIX = "LMC:"
COURIER_PREFIX = "*"
KEY_DOESNT_FIT = "#1"
KEY_COLLECT_RETURNS = "#2"
KEY_LOGOUT = "#0"

# The locker's real-time settings, kept short because every second of them is 40 simulated
# minutes at the default speed, and a person's steps wait them out. The door alarm must still be
# far above how long a scripted person keeps a door open (about one poll); a jam cannot be
# mistaken for a slow poll, since the poll that would time it out sees the door open.
POLL_INTERVAL_S = 0.05
JAM_TIMEOUT_S = 0.4
DOOR_OPEN_ALARM_S = 0.5

# How long a person waits (real seconds) for the locker to react before giving up.
WAIT_S = 8.0
# A customer waits this long for the depot's message with the code (a locker in a dead zone
# syncs its deposit late).
CREDENTIAL_WAIT_S = 15.0
# The depot's commands cross the locker's link, which may be reconnecting after a cut.
COMMAND_WAIT_S = 12.0
COMMAND_TTL_S = 600.0
# A board outage lasts until the locker noticed it (three unanswered polls), then its simulated
# length but at most this long in real time: the people at the locker wait meanwhile, since
# the locker would send them to doors it cannot open (see board_outage).
OUTAGE_AFTER_ALARM_S = 0.3
# The people at a locker (or a counter's desk) finish their queue within this after the day's
# last action; then the rest give up at once (a site that stopped answering must not hold the
# day for minutes).
FINISH_S = 20.0

# The scenario.
MIN_REDIRECTS_PER_LOCKER = 4  # enough parcels for every kind of visit in a small run
UNCOLLECTED_SHARE = 0.15
SAME_DAY_PICKUP = 0.6  # of those who come: the rest come the next morning
EXTEND_SHARE = 0.5  # of those who would come after the hold ends: ask for more time first
QR_SHARE = 0.4
WRONG_FIRST_SHARE = 0.3
RESERVE_SHARE = 0.3
ATTACKER_CODES = 6  # five wrong codes lock the keypad; the sixth meets the lockout
DOOR_STUCK = "this door is stuck; support has been called"  # the locker's display text

Fate = Literal["pickup", "extended", "uncollected", "overnight"]
Method = Literal["code", "qr"]


@dataclass(frozen=True)
class Compartment:
    """One door of a simulated locker: where its lock is on the bus, and its size."""

    id: str
    board: int
    lock: int
    size: str


def compartments() -> list[Compartment]:
    """A1-A8 on board 0, B1-B8 on board 1, sizes as LOCK_SIZES."""
    return [
        Compartment(f"{'AB'[board]}{lock + 1}", board, lock, size)
        for board in range(BOARDS)
        for lock, size in enumerate(LOCK_SIZES)
    ]


def parcel_id(label: Label) -> str:
    """The parcel id a label carries, as the label maker (simulators.parcels) printed it: the
    SSCC without its AI, the IMpb after the ZIP field, else the whole text."""
    if label.aim == "]C1" and label.data.startswith("00"):
        return label.data[2:20]
    if label.aim == "]C1" and label.data.startswith("420") and GS in label.data:
        return label.data.split(GS, 1)[1]
    return label.data


@dataclass(frozen=True)
class LockerSetup:
    """Everything the scenario runner needs to build one real locker device for the day."""

    name: str
    journal: Path
    lockboard_port: str
    boards: int
    compartments: list[Compartment]
    hold_s: float  # on the journal's clock: simulated seconds
    door_open_alarm_s: float
    jam_timeout_s: float
    poll_interval_s: float
    courier_badges: frozenset[str]
    depot_sealing_key: bytes
    command_key: bytes
    broker: BrokerAddress
    sync: Mapping[str, Any]
    clock: ScaledClock
    display: Display


class Display(Protocol):
    def show(self, message: str, **facts: Any) -> None: ...


class LockerInputs(Protocol):
    """What the people and the day use of a running locker controller."""

    @property
    def boards_seen(self) -> threading.Event: ...

    def scan(self, data: str, aim: str | None = None) -> None: ...

    def key(self, line: str) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


class SiteDevice(Protocol):
    """A site's device as the scenario runner built it: a locker's, or a counter's
    (simulators.counter_day), each with more of its own."""

    @property
    def journal(self) -> Journal: ...

    @property
    def uplink(self) -> Uplink | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LockerDeviceLike(SiteDevice, Protocol):
    """A locker device as the scenario runner built it."""

    @property
    def locker(self) -> LockerInputs: ...


BuildLocker = Callable[[LockerSetup], LockerDeviceLike]


def courier_badge(van: str) -> str:
    """The badge of the courier who drives `van`."""
    return f"C-{van}"


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoorStop:
    """A van's stop: its courier scanned `label` at the customer's door at `at_h`."""

    van: str
    label: Label
    at_h: float


@dataclass
class Redirect:
    """A parcel nobody took at the door, brought to a locker, and what happens to it there."""

    stop: DoorStop
    parcel: str
    locker: int
    drop_h: float
    fate: Fate = "pickup"
    pickup_h: float | None = None
    method: Method = "code"
    wrong_first: bool = False
    leave_open: bool = False
    reserve: str | None = None  # the size the depot reserves before the drop-off
    reserve_h: float | None = None
    jam: bool = False
    doesnt_fit: bool = False
    extend_h: float | None = None


@dataclass
class LockerScript:
    """One locker's day as planned: its parcels, the faults, the attacker."""

    redirects: list[Redirect] = field(default_factory=list)
    forced_h: float = 12.0
    outage_h: float = 12.0
    outage_len_h: float = 0.5
    outage_board: int = 0
    attack_h: float | None = None
    cut: tuple[float, float] | None = None


def _plan_faults(rng: random.Random, script: LockerScript, *, first: bool) -> None:
    script.forced_h = rng.uniform(9.0, 16.5)
    script.outage_h = rng.uniform(10.0, 16.0)
    script.outage_len_h = rng.uniform(0.3, 0.8)
    script.outage_board = rng.randrange(BOARDS)
    script.attack_h = rng.uniform(13.0, 16.5) if first else None
    # One dead zone on the locker's link, kept clear of the depot's commands so a command never
    # waits out a whole cut.
    commands = [t for r in script.redirects for t in (r.reserve_h, r.extend_h) if t is not None]
    for _ in range(50):
        start = rng.uniform(DAY_START_H + 1.0, 16.5)
        end = start + rng.uniform(10, 40) / 60
        if all(not start - 0.1 <= t <= end + 0.25 for t in commands):
            script.cut = (start, end)
            break


# --- what a person at the locker notices ----------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """Something the locker did: a committed journal event, or a text on its display."""

    kind: str  # the event's kind, or "display"
    facts: Mapping[str, Any]


@dataclass(frozen=True)
class OpenDoor:
    """A door the locker unlocked for someone and has since seen open."""

    compartment: str
    parcel: str | None
    at: int  # where its door_opened is in the watch


class LockerWatch:
    """The locker's display and its committed events as one ordered record people wait on.

    It is the locker's Display and a journal listener; both are called on the locker's own
    thread, so what a person reads is in the order the locker did it.
    """

    def __init__(self) -> None:
        self._seen: list[Seen] = []
        self._cond = threading.Condition()
        self._aborted = False

    def show(self, message: str, **facts: Any) -> None:
        with self._cond:
            self._seen.append(Seen("display", {"display": message, **facts}))
            self._cond.notify_all()

    def on_events(self, events: list[Event]) -> None:
        with self._cond:
            self._seen.extend(Seen(e.kind, e.payload) for e in events)
            self._cond.notify_all()

    def mark(self) -> int:
        """Where the record ends now: wait for what happens after this."""
        with self._cond:
            return len(self._seen)

    def snapshot(self) -> list[Seen]:
        with self._cond:
            return list(self._seen)

    def abort(self) -> None:
        """Every wait returns None from now on (the day is being torn down)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def wait(self, find: Callable[[Sequence[Seen]], T | None], timeout: float) -> T | None:
        """`find(record)` once it is not None, re-checked after every change; None on timeout."""
        found: list[T] = []

        def ready() -> bool:
            if self._aborted:
                return True
            result = find(self._seen)
            if result is None:
                return False
            found.append(result)
            return True

        with self._cond:
            self._cond.wait_for(ready, timeout)
        return found[0] if found else None


def find_seen(seen: Sequence[Seen], after: int, kind: str, **match: Any) -> int | None:
    """Where the first `kind` after `after` whose facts match `match` is in `seen`, if any."""
    for i in range(after, len(seen)):
        s = seen[i]
        if s.kind == kind and all(s.facts.get(k) == v for k, v in match.items()):
            return i
    return None


def _door_finder(
    after: int, purpose: str, parcel: str | None, ends: frozenset[str]
) -> Callable[[Sequence[Seen]], tuple[OpenDoor | str] | None]:
    """The latest door unlocked after `after` for `purpose` (and `parcel`) once seen open; or
    the text or event by which the locker said no door will open (an item of `ends`)."""

    def find(seen: Sequence[Seen]) -> tuple[OpenDoor | str] | None:
        unlock: int | None = None
        ended: str | None = None
        for i in range(after, len(seen)):
            s = seen[i]
            if (
                s.kind == "door_unlocked"
                and s.facts.get("purpose") == purpose
                and (parcel is None or s.facts.get("parcel") == parcel)
            ):
                unlock, ended = i, None
            elif s.kind in ends or (s.kind == "display" and s.facts.get("display") in ends):
                ended = s.kind if s.kind != "display" else str(s.facts["display"])
        if unlock is not None:
            cid = str(seen[unlock].facts["compartment"])
            opened = find_seen(seen, unlock + 1, "door_opened", compartment=cid)
            if opened is not None:
                return (OpenDoor(cid, seen[unlock].facts.get("parcel"), opened),)
        return None if ended is None else (ended,)

    return find


def _holds(seen: Sequence[Seen]) -> dict[str, tuple[int, bool]]:
    """Parcels in the locker: when their hold ends (ns on its clock), and whether it expired."""
    holds: dict[str, tuple[int, bool]] = {}
    for s in seen:
        parcel = str(s.facts.get("parcel"))
        extended = s.kind == "command_accepted" and s.facts.get("action") == "extend_hold"
        if s.kind == "parcel_deposited" or extended:
            holds[parcel] = (int(s.facts["hold_until_ns"]), False)
        elif s.kind == "hold_expired" and parcel in holds:
            holds[parcel] = (holds[parcel][0], True)
        elif s.kind in ("parcel_picked_up", "parcel_returned"):
            holds.pop(parcel, None)
    return holds


def _idle_compartments(seen: Sequence[Seen], all_ids: Sequence[str]) -> list[str]:
    """Compartments the locker has said hold no parcel, are reserved for none, and work."""
    holding: set[str] = set()
    reserved: dict[str, str] = {}  # compartment -> the parcel it is kept for
    broken: set[str] = set()
    for s in seen:
        cid, parcel = str(s.facts.get("compartment")), str(s.facts.get("parcel"))
        if s.kind in ("parcel_deposited", "return_dropped"):
            holding.add(cid)
            reserved = {c: p for c, p in reserved.items() if p != parcel}
        elif s.kind in ("parcel_picked_up", "parcel_returned"):
            holding.discard(cid)
        elif s.kind == "command_accepted" and s.facts.get("action") == "reserve":
            reserved[cid] = parcel
        elif s.kind == "reservation_lapsed":
            reserved.pop(cid, None)
        elif s.kind == "alarm" and s.facts.get("alarm") == "lock_jammed":
            broken.add(cid)
    return [c for c in all_ids if c not in holding and c not in reserved and c not in broken]


# --- the customers' side ---------------------------------------------------------------------


class CustomerInbox:
    """What the customers were told: the depot's pickup notices, as the webhook receiver got
    them (signed, verified). A customer collects with the code or QR in their notice, and
    with nothing else: the simulator never opens a credential itself."""

    def __init__(self, receiver: WebhookReceiver | None) -> None:
        self._receiver = receiver

    def _told(self) -> dict[str, dict[str, str]]:
        told: dict[str, dict[str, str]] = {}
        for request in self._receiver.received if self._receiver is not None else ():
            body = request.body
            if not (request.verified and 200 <= request.status < 300 and isinstance(body, dict)):
                continue
            pickup = body.get("pickup")
            if isinstance(pickup, dict) and "code" in pickup and "qr_token" in pickup:
                told[str(body.get("parcel"))] = {
                    "code": str(pickup["code"]),
                    "qr": str(pickup["qr_token"]),
                    "extend": str((body.get("details") or {}).get("extend_hold_url") or ""),
                }
        return told

    def notice(
        self, parcel: str, timeout: float, *, give_up: Callable[[], bool]
    ) -> dict[str, str] | None:
        """The code and QR token the depot sent `parcel`'s customer, once it has arrived."""
        if self._receiver is None:
            return None
        deadline = time.monotonic() + timeout
        while True:
            found = self._told().get(parcel)
            left = deadline - time.monotonic()
            if found is not None or left <= 0 or give_up():
                return found
            # Woken by every request the receiver answers; re-checks give_up now and then.
            self._receiver.wait_for(lambda: parcel in self._told(), min(0.5, left))

    def codes(self) -> set[str]:
        """Every pickup code any customer was told (an attacker's guess is none of them)."""
        return {t["code"] for t in self._told().values()}

    @property
    def received(self) -> int:
        return len(self._told())


# --- one locker and the people at it --------------------------------------------------------


@dataclass
class LockerTally:
    """What the script did to one locker (the injected side; the locker's side is its events)."""

    redirected: int = 0
    max_lag_min: float = 0.0  # simulated minutes the people ran behind their schedule
    jams_injected: int = 0
    forced_open_injected: int = 0
    doors_left_open_injected: int = 0
    board_outages_injected: int = 0
    lockout_attacks: int = 0
    keypad_fallbacks_to_qr: int = 0
    holds_extended_asked: int = 0  # customers who used their notice's extend link
    dead_zones: int = 0
    gave_up: Counter[str] = field(default_factory=Counter)
    step_errors: int = 0


class StepCounts(Protocol):
    step_errors: int


class People:
    """The people at one place (a locker; a counter's desk, simulators.counter_day), one after
    another: steps run in order on one thread."""

    def __init__(self, name: str, tally: StepCounts) -> None:
        self._jobs: queue.Queue[tuple[str, float, Callable[[], None]] | None] = queue.Queue()
        self._tally = tally
        self._thread = threading.Thread(target=self._run, name=f"people-{name}", daemon=True)
        self.max_lag_s = 0.0  # the longest a step waited for the one before it (real time)
        self._unfinished = 0  # steps queued or running (the day's clock waits for them)
        self._unfinished_lock = threading.Lock()
        self._awaiting_news = False  # the running step waits for the world, not the reverse

    def start(self) -> None:
        self._thread.start()

    def put(self, what: str, step: Callable[[], None]) -> None:
        with self._unfinished_lock:
            self._unfinished += 1
        self._jobs.put((what, time.monotonic(), step))

    def busy(self) -> bool:
        """Whether a step is queued or running, and not waiting for news from the world (a
        notice by webhook) that only comes once simulated time runs on."""
        with self._unfinished_lock:
            return self._unfinished > 0 and not self._awaiting_news

    @contextlib.contextmanager
    def awaiting_news(self) -> Iterator[None]:
        """Around a wait for something the rest of the run must do first: meanwhile the day's
        clock does not wait for these people."""
        with self._unfinished_lock:
            self._awaiting_news = True
        try:
            yield
        finally:
            with self._unfinished_lock:
                self._awaiting_news = False

    def finish(self, timeout: float) -> bool:
        """Let the queue run out; True when every step has run within `timeout`."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            what, queued, step = job
            self.max_lag_s = max(self.max_lag_s, time.monotonic() - queued)
            try:
                step()
            except Exception:
                self._tally.step_errors += 1
                log.exception("locker step %r failed", what)
            finally:
                with self._unfinished_lock:
                    self._unfinished -= 1


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the page's answer is the 303 itself, with its one-line note


class PageVisitors:
    """Customers who act on the depot's web pages, one step after another (`people`, run
    as `People`): the card's customers (simulators.card_customers), the ones who send a
    parcel back (simulators.returns_day). Their `opener` does not follow a page's redirect:
    the 303 and its one-line note are the page's answer, the customer follows it by hand."""

    def __init__(self, name: str, tally: StepCounts) -> None:
        self.people = People(name, tally)
        self.opener = urllib.request.build_opener(_NoRedirect)

    def start(self) -> None:
        self.people.start()

    def finish(self, timeout: float) -> bool:
        return self.people.finish(timeout)

    def busy(self) -> bool:
        return self.people.busy()


# --- what every site of the day has (a locker; a counter's desk, simulators.counter_day) ------


@dataclass(frozen=True)
class SiteKeys:
    """The depot's command-signing and credential-sealing keys of the run: the depot holds the
    private halves, every locker and counter the public ones."""

    command_signing_pem: bytes
    command_public: bytes
    sealing_pem: bytes
    sealing_public: bytes

    @classmethod
    def new(cls) -> SiteKeys:
        """New keys, one of each kind."""
        sealing_private, sealing_public = generate_sealing_keypair()
        command_private, command_public = generate_keypair()
        return cls(command_private, command_public, sealing_private, sealing_public)

    @classmethod
    def of(cls, lockers: LockerDay | None) -> SiteKeys:
        """The lockers' keys when the day has lockers (the depot has one key of each), else
        new ones."""
        return lockers.keys if lockers is not None else cls.new()


@dataclass(frozen=True)
class SiteContext:
    """What every site of one kind in the day is built with: the folder for its files, the
    broker (each site reaches it through a LinkProxy of its own), the couriers' badges it
    knows, its uplink's sync settings, the depot's keys, how long it holds a parcel, the
    customers' inbox, and the run's seed."""

    workdir: Path
    broker_host: str
    broker_port: int
    mqtt5: bool
    tls_ca: str | None
    badges: frozenset[str]
    sync: Mapping[str, Any]
    keys: SiteKeys
    hold_h: float
    inbox: CustomerInbox
    seed: int


class SiteTally(StepCounts, Protocol):
    """What the script counts at every site: the waits people gave up, by what for."""

    gave_up: Counter[str]


DeviceT = TypeVar("DeviceT", bound=SiteDevice)
TallyT = TypeVar("TallyT", bound=SiteTally)


def n_parcels(n: int) -> str:
    """How many parcels, in words: "1 parcel", "2 parcels"."""
    return f"{n} parcel{'' if n == 1 else 's'}"


class SimulatedSite(ABC, Generic[DeviceT, TallyT]):
    """One site of the day: the real device on its own clock, its link to the broker, and its
    people, who see the device only through its watch (what it showed and journaled)."""

    _log: ClassVar[logging.Logger] = log  # each kind of site logs under its module's name
    device: DeviceT
    link: LinkProxy
    people: People

    def __init__(
        self, name: str, clock: ScaledClock, context: SiteContext, *, tally: TallyT
    ) -> None:
        self.name = name
        self.clock = clock
        self.speed = clock.speed
        self.inbox = context.inbox
        self.rng = random.Random(f"{name}/{context.seed}")
        self.tally = tally
        self.watch = LockerWatch()
        self._closers: list[Callable[[], None]] = []

    def _bring_up(
        self,
        password: str,
        context: SiteContext,
        parts: Callable[[], None],
        build: Callable[[BrokerAddress], DeviceT],
    ) -> None:
        """Open the site's own parts (`parts`: they add their closers), its link, then the
        device `build` makes to reach the broker through that link; then its people. What
        was opened is closed again when a step fails."""
        try:
            parts()
            self.link = LinkProxy(context.broker_host, context.broker_port, name=self.name)
            self.link.start()
            self._closers.append(self.link.stop)
            self.device = build(
                BrokerAddress(
                    "127.0.0.1",
                    self.link.port,
                    self.name,
                    password,
                    mqtt5=context.mqtt5,
                    tls_ca=context.tls_ca,
                )
            )
            self._closers.insert(0, self.device.stop)
            self.device.journal.add_listener(self.watch.on_events)
        except BaseException:
            self.close()
            raise
        self.people = People(self.name, self.tally)

    @property
    def journal(self) -> Journal:
        return self.device.journal

    @abstractmethod
    def start(self) -> bool:
        """Start the device and its people; True once the device says it is ready."""

    def end_of_day(self, timeout: float) -> bool:
        """The last visitor leaves. False when people were still waiting for the site after
        `timeout`: they give up."""
        done = self.people.finish(timeout)
        self._people_left()
        if not done:
            self.watch.abort()
            self.people.finish(5.0)
        return done

    def _people_left(self) -> None:
        """Called once the people's queue ran out, or `end_of_day`'s timeout did."""

    def close(self) -> None:
        self.watch.abort()
        for close in self._closers:
            try:
                close()
            except Exception:
                self._log.exception("closing %s", self.name)
        self._closers.clear()

    def link_state(self) -> str:
        """Whether the device's uplink is online, offline, or cut off in a dead zone."""
        uplink = self.device.uplink
        return (
            "dead zone"
            if self.link.is_cut
            else ("online" if uplink is not None and uplink.connected else "offline")
        )

    @abstractmethod
    def progress_line(self) -> str:
        """One line on how the site stands, for the run's progress."""

    @abstractmethod
    def collect_returns(self, van: str) -> list[str]:
        """The courier of `van`, sent by the depot, takes what the site holds for a courier.
        The parcels taken."""

    def _gave_up(self, what: str) -> None:
        self.tally.gave_up[what] += 1
        self._log.warning("%s: %s", self.name, what)

    def _typo(self, code: str) -> str:
        at = self.rng.randrange(len(code))
        digit = self.rng.choice([d for d in "0123456789" if d != code[at]])
        return code[:at] + digit + code[at + 1 :]


class SimulatedLocker(SimulatedSite[LockerDeviceLike, LockerTally]):
    """One locker of the day: its boards, the real locker device, its link, its people."""

    boards: SimulatedLockBoards

    def __init__(
        self,
        name: str,
        password: str,
        clock: ScaledClock,
        context: SiteContext,
        *,
        build: BuildLocker,
    ) -> None:
        super().__init__(name, clock, context, tally=LockerTally())
        self.deposited: set[str] = set()
        self.reserved: dict[str, str] = {}
        specs = compartments()
        self.where = {c.id: (c.board, c.lock) for c in specs}
        self.size = {c.id: c.size for c in specs}

        def boards() -> None:
            self.boards = SimulatedLockBoards(
                BOARDS, link=context.workdir / f"{name}.lockbus", locks_per_board=len(LOCK_SIZES)
            )
            self._closers.append(self.boards.close)

        def device(broker: BrokerAddress) -> LockerDeviceLike:
            return build(
                LockerSetup(
                    name=name,
                    journal=context.workdir / f"{name}.journal.db",
                    lockboard_port=self.boards.path,
                    boards=BOARDS,
                    compartments=specs,
                    hold_s=context.hold_h * 3600,
                    door_open_alarm_s=DOOR_OPEN_ALARM_S,
                    jam_timeout_s=JAM_TIMEOUT_S,
                    poll_interval_s=POLL_INTERVAL_S,
                    courier_badges=context.badges,
                    depot_sealing_key=context.keys.sealing_public,
                    command_key=context.keys.command_public,
                    broker=broker,
                    sync=dict(context.sync),
                    clock=clock,
                    display=self.watch,
                )
            )

        self._bring_up(password, context, boards, device)

    def start(self) -> bool:
        """Start the locker and its people; True once it has looked at its boards."""
        self.device.start()
        self.people.start()
        return self.device.locker.boards_seen.wait(5.0)

    def end_of_day(self, timeout: float) -> bool:
        """The last visitor leaves; the controller stops so no hold expires after the day.

        False when people were still waiting for the locker after `timeout`: they give up.
        """
        done = super().end_of_day(timeout)
        self.device.locker.stop()
        return done

    def _people_left(self) -> None:
        self.tally.max_lag_min = round(self.people.max_lag_s * self.speed / 60, 1)

    def parcels_inside(self) -> int:
        return len(_holds(self.watch.snapshot()))

    def progress_line(self) -> str:
        state = self.link_state()
        unsent = self.journal.unacked
        inside = self.parcels_inside()
        return (
            f"{self.name} {self.journal.last_seq} events"
            + (f", {unsent} unsent" if unsent else "")
            + f", {state}, {n_parcels(inside)} inside"
        )

    # --- the schedule ---------------------------------------------------------------------

    def schedule(self, script: LockerScript) -> list[tuple[float, str, Callable[[], None]]]:
        """(simulated hour, what, action) for the day's scheduler; people's steps are queued."""
        self.tally.redirected = len(script.redirects)
        out: list[tuple[float, str, Callable[[], None]]] = []

        def person(at_h: float, what: str, step: Callable[[], None]) -> None:
            out.append((at_h, what, partial(self.people.put, what, step)))

        for r in script.redirects:
            person(r.drop_h, "drop-off", partial(self.dropoff, r))
            if r.pickup_h is not None:
                person(r.pickup_h, f"pickup ({r.method})", partial(self.pickup, r))
        person(script.forced_h, "forced door", self.force_door)
        person(
            script.outage_h,
            "board offline",
            partial(self.board_outage, script.outage_board, script.outage_len_h),
        )
        if script.attack_h is not None:
            person(script.attack_h, "keypad attacker", self.attack)
        if script.cut is not None:
            self.tally.dead_zones += 1
            out.append((script.cut[0], "cut (reset)", partial(self.link.cut, "reset")))
            out.append((script.cut[1], "restore", self.link.restore))
        return out

    # --- waiting like a person --------------------------------------------------------------

    def _wait_event(
        self, after: int, kind: str, timeout: float = WAIT_S, **match: Any
    ) -> int | None:
        at = self.watch.wait(lambda seen: find_seen(seen, after, kind, **match), timeout)
        if at is None:
            self._gave_up(f"no {kind}")
        return at

    def _wait_door(
        self, after: int, purpose: str, parcel: str | None, ends: frozenset[str]
    ) -> OpenDoor | str | None:
        """The door the locker opened for us, the reason it will not, or None on timeout."""
        found = self.watch.wait(_door_finder(after, purpose, parcel, ends), WAIT_S)
        if found is None:
            self._gave_up(f"no {purpose} door opened")
            return None
        return found[0]

    def _keyed(self, line: str) -> Seen | None:
        """Type a code and read what the locker made of it (its pickup_attempt)."""
        mark = self.watch.mark()
        self.device.locker.key(line)
        at = self._wait_event(mark, "pickup_attempt", method="code")
        return None if at is None else self.watch.snapshot()[at]

    def _scanned_qr(self, qr: str) -> Seen | None:
        mark = self.watch.mark()
        self.device.locker.scan(qr, "]Q1")
        at = self._wait_event(mark, "pickup_attempt", method="qr")
        return None if at is None else self.watch.snapshot()[at]

    # --- the people's steps -------------------------------------------------------------------

    def dropoff(self, r: Redirect) -> None:
        """A courier brings a parcel nobody took at the door."""
        locker = self.device.locker
        mark = self.watch.mark()
        lapsed = any(
            seen.kind == "reservation_lapsed" and seen.facts.get("parcel") == r.parcel
            for seen in self.watch.snapshot()
        )
        if r.jam and r.parcel in self.reserved and not lapsed:
            # The reserved compartment's lock has seized: the locker must notice and move on.
            # (Not once the reservation lapsed: the locker would pick another door, and the
            # seized lock would never be tried.)
            self.boards.jam(*self.where[self.reserved[r.parcel]])
            self.tally.jams_injected += 1
        locker.scan(BADGE_PREFIX + courier_badge(r.stop.van))
        locker.scan(r.stop.label.data, r.stop.label.aim)
        ends = frozenset({"dropoff_refused", "locker full", "no bigger compartment free"})
        door = self._wait_door(mark, "dropoff", r.parcel, ends)
        if isinstance(door, OpenDoor) and r.doesnt_fit and self.size[door.compartment] != LARGEST:
            locker.key(KEY_DOESNT_FIT)
            fit = self._wait_event(door.at, "parcel_does_not_fit", compartment=door.compartment)
            if fit is not None:
                self.boards.close_door(*self.where[door.compartment])  # shut it, still empty
                door = self._wait_door(door.at, "dropoff", r.parcel, ends)
        if isinstance(door, OpenDoor):
            board, lock = self.where[door.compartment]
            self.boards.put_parcel(board, lock)
            self.boards.close_door(board, lock)
            if self._wait_event(door.at, "parcel_deposited", parcel=r.parcel) is not None:
                self.deposited.add(r.parcel)
        elif isinstance(door, str):
            self.tally.gave_up[f"drop-off: {door}"] += 1
        locker.key(KEY_LOGOUT)

    def extend_hold(self, r: Redirect) -> None:
        """The customer uses the extend-hold link in the depot's notice (a POST, as the page's
        button does); the locker hears of it from the depot, not from the customer."""
        with self.people.awaiting_news():
            notice = self.inbox.notice(
                r.parcel, CREDENTIAL_WAIT_S, give_up=lambda: self.watch.aborted
            )
        if notice is None or not notice["extend"]:
            self._gave_up("no extend link in the notice")
            return
        request = urllib.request.Request(notice["extend"], data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
                if answer.status == 202:
                    self.tally.holds_extended_asked += 1
                    return
        except (urllib.error.URLError, OSError) as exc:
            log.warning("%s: the extend link failed: %s", self.name, exc)
        self._gave_up("extend link refused")

    def pickup(self, r: Redirect) -> None:
        """The customer comes with the code or QR the depot sent them."""
        if r.parcel not in self.deposited:
            return  # it never went in: the depot told nobody to come
        hold = _holds(self.watch.snapshot()).get(r.parcel)
        if hold is None or hold[1] or self.clock.wall_ns() >= hold[0]:
            self._gave_up("customer came after the hold")
            return
        with self.people.awaiting_news():
            secrets = self.inbox.notice(
                r.parcel, CREDENTIAL_WAIT_S, give_up=lambda: self.watch.aborted
            )
        if secrets is None:
            self._gave_up("no pickup notice from the depot")
            return
        mark = self.watch.mark()
        if r.method == "code":
            if r.wrong_first:
                self._keyed(self._typo(secrets["code"]))
            attempt = self._keyed(secrets["code"])
            if attempt is not None and attempt.facts.get("reason") == "keypad locked":
                self.tally.keypad_fallbacks_to_qr += 1  # the screen says so: scan the QR instead
                attempt = self._scanned_qr(secrets["qr"])
        else:
            attempt = self._scanned_qr(secrets["qr"])
        if attempt is None or not attempt.facts.get("ok"):
            self._gave_up("pickup refused")
            return
        door = self._wait_door(mark, "pickup", r.parcel, frozenset({DOOR_STUCK}))
        if not isinstance(door, OpenDoor):
            return
        board, lock = self.where[door.compartment]
        self.boards.take_parcel(board, lock)
        if r.leave_open:
            # Walks off with the parcel; someone shuts the door once the locker complained.
            self.tally.doors_left_open_injected += 1
            self._wait_event(
                door.at,
                "alarm",
                DOOR_OPEN_ALARM_S + WAIT_S,
                alarm="door_left_open",
                compartment=door.compartment,
            )
        self.boards.close_door(board, lock)
        self._wait_event(door.at, "parcel_picked_up", parcel=r.parcel)

    def attack(self) -> None:
        """Someone tries codes until the keypad locks."""
        known = self.inbox.codes()
        self.tally.lockout_attacks += 1
        for _ in range(ATTACKER_CODES):
            code = f"{self.rng.randrange(10**6):06d}"
            while code in known:
                code = f"{self.rng.randrange(10**6):06d}"
            self._keyed(code)

    def force_door(self) -> None:
        """A free compartment is pried open, found empty, pushed shut again."""
        free = _idle_compartments(self.watch.snapshot(), sorted(self.where))
        if not free:
            self._gave_up("no free compartment to force")
            return
        cid = self.rng.choice(free)
        board, lock = self.where[cid]
        mark = self.watch.mark()
        self.boards.force_open(board, lock)
        self.tally.forced_open_injected += 1
        self._wait_event(mark, "alarm", alarm="forced_open", compartment=cid)
        self.boards.close_door(board, lock)
        self._wait_event(mark, "door_closed", compartment=cid)

    def board_outage(self, board: int, length_h: float) -> None:
        """A board drops off the bus (a loose RS-485 wire) and comes back.

        Nobody uses the locker meanwhile: it would unlock doors on the missing board (it does
        not skip offline boards when it picks a compartment) and, when the board is back,
        take those doors for jammed ones.
        """
        mark = self.watch.mark()
        started = time.monotonic()
        self.boards.set_offline(board, True)
        self.tally.board_outages_injected += 1
        try:
            self._wait_event(mark, "alarm", alarm="board_offline", board=board)
            noticed = time.monotonic()
            rest = min(OUTAGE_AFTER_ALARM_S, length_h * 3600 / self.speed - (noticed - started))
            if rest > 0:
                self.watch.wait(lambda _seen: None, rest)
        finally:
            self.boards.set_offline(board, False)
        self._wait_event(mark, "board_back_online", board=board)

    def collect_returns(self, van: str) -> list[str]:
        """The courier of `van`, sent by the depot, takes out every parcel whose hold ran out:
        badge, `#2`, each door the locker opens emptied and shut. The parcels taken, in order.
        """
        taken: list[str] = []

        def all_due_expired(seen: Sequence[Seen]) -> bool | None:
            now = self.clock.wall_ns()
            due = [p for p, (until, done) in _holds(seen).items() if until <= now and not done]
            return True if not due else None

        # The locker checks holds about once a real second; a courier comes when the list is out.
        if self.watch.wait(all_due_expired, WAIT_S) is None:
            self._gave_up("holds not expired in time")
        locker = self.device.locker
        locker.key(COURIER_PREFIX + courier_badge(van))
        ends = frozenset({"all returns collected", "no parcels to return", DOOR_STUCK})
        for _round in range(3):  # again if more expired while the courier was at it
            cursor = self.watch.mark()
            locker.key(KEY_COLLECT_RETURNS)
            while isinstance(door := self._wait_door(cursor, "return", None, ends), OpenDoor):
                board, lock = self.where[door.compartment]
                self.boards.take_parcel(board, lock)
                self.boards.close_door(board, lock)
                done = self._wait_event(door.at, "parcel_returned", compartment=door.compartment)
                if done is None:
                    break
                if door.parcel is not None:
                    taken.append(str(door.parcel))
                cursor = done
            if not any(expired for _until, expired in _holds(self.watch.snapshot()).values()):
                break
        locker.key(KEY_LOGOUT)
        return taken

    def drop_return(self, return_id: str, code: str, qr: str) -> bool:
        """A customer drops their return: types the return code from the depot's notice on
        the keypad (shows its QR instead while the keypad is locked), puts the parcel into
        the door that opens once the locker has seen it open, and shuts it. True once the
        locker took it in (`return_dropped`)."""
        ends = frozenset(
            {
                "code not recognised",
                "keypad locked",
                "return_refused",
                DOOR_STUCK,
                "no compartment free for your return; try again later",
            }
        )
        mark = self.watch.mark()
        self.device.locker.key(code)
        door = self._wait_door(mark, "return_dropoff", return_id, ends)
        if door == "keypad locked":
            self.tally.keypad_fallbacks_to_qr += 1
            mark = self.watch.mark()
            self.device.locker.scan(qr, "]Q1")
            door = self._wait_door(mark, "return_dropoff", return_id, ends)
        if not isinstance(door, OpenDoor):
            if isinstance(door, str):
                self.tally.gave_up[f"return drop: {door}"] += 1
            return False
        board, lock = self.where[door.compartment]
        self.boards.put_parcel(board, lock)
        self.boards.close_door(board, lock)
        return self._wait_event(door.at, "return_dropped", parcel=return_id) is not None


# --- all sites of one kind in the day -------------------------------------------------------


SiteT = TypeVar("SiteT", bound="SimulatedSite[Any, Any]")


class SiteDay(Generic[SiteT]):
    """The sites of one kind in a simulated day (lockers; counters, simulators.counter_day):
    their accounts, and what the run asks of them all at once."""

    _log: ClassVar[logging.Logger] = log

    def __init__(self, kind: str, count: int, *, seed: int, speed: float, hold_h: float) -> None:
        self.names = [f"{kind}-{j + 1}" for j in range(count)]
        self.seed = seed
        self.speed = speed
        self.hold_h = hold_h
        # Its own random stream: the vans' day, and the other kind of sites', are the same with
        # and without these sites.
        self.rng = random.Random(f"{kind}s/{seed}")
        self.passwords = {n: f"pw-{n}-{self.rng.getrandbits(64):x}" for n in self.names}
        self.sites: list[SiteT] = []
        self.inbox = CustomerInbox(None)
        # Set by the scenario runner: queue a person's visit at a simulated hour.
        self.on_visit: Callable[[float, str, str, Callable[[], None]], None] | None = None

    def _start_sites(
        self,
        site: Callable[[str, str, ScaledClock, SiteContext], SiteT],
        context: SiteContext,
        *,
        wall_start_ns: int,
        time_from: ScaledClock | None,
        not_ready: str,
    ) -> None:
        """Build every site with `site(name, password, its clock, context)` and start them
        all; `not_ready` says what one that is not ready never did. With `time_from`, every
        site's clock shares that clock's time base from its first read."""
        for name in self.names:
            clock = ScaledClock(wall_start_ns, self.speed, boot_id=f"boot-{name}-{self.seed}")
            if time_from is not None:
                clock.catch_up(time_from)  # one time base with the rest of the simulation
            self.sites.append(site(name, self.passwords[name], clock, context))
        for s in self.sites:
            if not s.start():
                self._log.warning("%s never %s", s.name, not_ready)

    def _site(self, name: str) -> SiteT:
        return self.sites[self.names.index(name)]

    def _visit(self, site: SiteT, at_h: float, what: str, step: Callable[[], None]) -> None:
        """Have `on_visit` queue a person's `step` with the site's people at `at_h`."""
        if self.on_visit is not None:
            self.on_visit(at_h, site.name, what, partial(site.people.put, what, step))

    def collect(self, van: str, site: str, at_h: float) -> list[str]:
        """The courier of `van` collects what waits for a courier at `site` now (blocking,
        bounded); the parcels taken, which the courier now has in hand."""
        where = self._site(site)
        taken: list[str] = []
        done = threading.Event()

        def collect() -> None:
            try:
                taken.extend(where.collect_returns(van))
            finally:
                done.set()

        where.people.put(f"collection by {van}", collect)
        if not done.wait(WAIT_S * 4):
            where.tally.gave_up["collection took too long"] += 1
        return list(taken)

    @property
    def links(self) -> list[LinkProxy]:
        return [site.link for site in self.sites]

    @property
    def journals(self) -> list[tuple[str, Journal]]:
        return [(site.name, site.journal) for site in self.sites]

    def end_of_day(self) -> None:
        for site in self.sites:
            if not site.end_of_day(FINISH_S):
                self._log.error("%s: people still busy at the end of the day", site.name)

    def drain(self, deadline: float) -> None:
        for site in self.sites:
            uplink = site.device.uplink
            if uplink is not None:
                uplink.wait_acked(site.journal.last_seq, max(0.1, deadline - time.monotonic()))

    def progress(self) -> list[str]:
        return [site.progress_line() for site in self.sites]

    def close(self) -> None:
        """Stop every site, all at once (each uplink takes up to a second to stop)."""
        threads = [threading.Thread(target=site.close) for site in self.sites]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def expired_inside(self) -> set[str]:
        """Parcels whose hold ran out that are still at their site, as the sites' journals
        tell it (a courier has not taken them yet)."""
        waiting: set[str] = set()
        for site in self.sites:
            _prev, events = site.journal.read(0, 10**9)
            waiting |= expired_inside(events)
        return waiting


class LockerDay(SiteDay[SimulatedLocker]):
    """The lockers of one simulated day: accounts, keys, devices, script, and their figures."""

    def __init__(
        self, count: int, *, seed: int, speed: float, hold_h: float, redirect_share: float
    ) -> None:
        super().__init__("locker", count, seed=seed, speed=speed, hold_h=hold_h)
        self.redirect_share = redirect_share
        # The depot's keys of the run; a staffed counter of the same run holds the same
        # public halves (the depot has one key of each).
        self.keys = SiteKeys.new()
        self.scripts: list[LockerScript] = []

    @property
    def lockers(self) -> list[SimulatedLocker]:
        return self.sites

    def start(
        self,
        build: BuildLocker,
        *,
        workdir: Path,
        broker_host: str,
        broker_port: int,
        mqtt5: bool,
        tls_ca: str | None = None,
        receiver: WebhookReceiver | None,
        wall_start_ns: int,
        vans: Sequence[str],
        sync: Mapping[str, Any],
        time_from: ScaledClock | None = None,
    ) -> None:
        """Build (with `build`) and start every locker; the depot must be running. Customers
        read their pickup notices from `receiver` (the depot's webhooks to them). With
        `time_from`, every locker's clock shares that clock's time base from its first read."""
        self.inbox = CustomerInbox(receiver)
        badges = frozenset(courier_badge(v) for v in vans)
        context = SiteContext(
            workdir, broker_host, broker_port, mqtt5, tls_ca, badges, sync,
            self.keys, self.hold_h, self.inbox, self.seed,
        )  # fmt: skip
        self._start_sites(
            partial(SimulatedLocker, build=build),
            context,
            wall_start_ns=wall_start_ns,
            time_from=time_from,
            not_ready="polled its boards",
        )

    # --- the depot-driven day (simulators/day.py): redirects decided by the depot ----------

    def script_faults(
        self, *, first_day: bool = True
    ) -> list[tuple[float, str, str, Callable[[], None]]]:
        """(simulated hour, device, what, action) of each locker's faults (the first day only).

        The parcels are not scripted here: the depot decides which failed parcels go to which
        locker, and the couriers `bring` them; it also sends a van to collect what expired,
        whose courier does it with `collect`.
        """
        if not self.scripts:
            self.scripts = [LockerScript() for _ in self.lockers]
        out: list[tuple[float, str, str, Callable[[], None]]] = []
        if not first_day:
            return out
        for j, (site, script) in enumerate(zip(self.lockers, self.scripts, strict=True)):
            _plan_faults(self.rng, script, first=j == 0)
            out += [(at_h, site.name, what, run) for at_h, what, run in site.schedule(script)]
        return out

    def bring(self, van: str, label: Label, parcel: str, locker: str, at_h: float) -> bool:
        """A courier hands `parcel` over at `locker` now; True once it is in a compartment.

        The customer's visit is drawn here (from the lockers' own random stream) and handed to
        `on_visit` for the day's scheduler: most come within the hold, some never do.
        """
        index = self.names.index(locker)
        site = self.lockers[index]
        script = self.scripts[index]
        r = Redirect(DoorStop(van, label, at_h), parcel, index, at_h)
        same_day = min(DAY_END_H - 0.3 - at_h, self.hold_h - 1.0)
        # Drawn per parcel, so two couriers arriving at once cannot swap their customers' fates.
        rng = random.Random(f"{parcel}/{self.seed}")
        if rng.random() < UNCOLLECTED_SHARE:
            r.fate = "uncollected"
        elif same_day >= 0.3 and rng.random() < SAME_DAY_PICKUP:
            r.pickup_h = at_h + rng.uniform(0.3, same_day)
        else:
            # Next morning (an hour past 24 is the next day's; the night is part of the hold).
            morning = 24.0 + DAY_START_H + rng.uniform(0.2, 3.0)
            if morning <= at_h + self.hold_h - 0.5:
                r.pickup_h = morning
            elif rng.random() < EXTEND_SHARE:
                # Cannot come in time: asks for more time with the notice's link, then comes.
                r.fate = "extended"
                r.extend_h = at_h + rng.uniform(0.3, 1.5)
                r.pickup_h = morning
            else:
                r.fate = "overnight"
        if r.pickup_h is not None:
            r.method = "qr" if rng.random() < QR_SHARE else "code"
            r.wrong_first = r.method == "code" and rng.random() < WRONG_FIRST_SHARE
        if r.pickup_h is not None and not any(x.leave_open for x in script.redirects):
            r.leave_open = True  # one customer per locker walks off leaving the door open
        reserved = next(
            (
                str(seen.facts["compartment"])
                for seen in site.watch.snapshot()
                if seen.kind == "command_accepted"
                and seen.facts.get("action") == "reserve"
                and seen.facts.get("parcel") == parcel
            ),
            None,
        )
        if reserved is not None:
            site.reserved[parcel] = reserved
            if not any(x.jam for x in script.redirects):
                r.jam = True  # the compartment the depot reserved has a seized lock
        script.redirects.append(r)
        site.tally.redirected += 1
        done = threading.Event()

        def drop() -> None:
            try:
                site.dropoff(r)
            finally:
                done.set()

        site.people.put("drop-off", drop)
        if not done.wait(WAIT_S * 3) or parcel not in site.deposited:
            return False
        if r.extend_h is not None:
            self._visit(site, r.extend_h, "asks for more time", partial(site.extend_hold, r))
        if r.pickup_h is not None:
            self._visit(site, r.pickup_h, f"pickup ({r.method})", partial(site.pickup, r))
        return True

    def drop_return(
        self, locker: str, return_id: str, code: str, qr: str, done: Callable[[bool], None]
    ) -> None:
        """A customer comes to `locker` to drop the return `return_id` with the code and QR
        of their notice, queued with the other people there (SimulatedLocker.drop_return);
        `done(dropped)` is called once they leave."""
        site = self.lockers[self.names.index(locker)]

        def step() -> None:
            dropped = False
            try:
                dropped = site.drop_return(return_id, code, qr)
            finally:
                done(dropped)

        site.people.put("return drop", step)

    def report(self, store: DepotStore) -> dict[str, Any]:
        """The lockers' figures, counted from the events the depot stored."""
        return locker_figures(
            [(site, depot_events(store, site.name)) for site in self.lockers],
            self.inbox,
            redirects_traced=_redirects_traced(store, self.scripts, self.names),
        )


def expired_inside(events: Sequence[Event]) -> set[str]:
    """Parcels a locker's `events` leave expired and still in their compartments."""
    expired: set[str] = set()
    for e in events:
        parcel = str(e.payload.get("parcel"))
        if e.kind == "hold_expired":
            expired.add(parcel)
        elif e.kind in ("parcel_picked_up", "parcel_returned") or (
            e.kind == "command_accepted" and e.payload.get("action") == "extend_hold"
        ):
            expired.discard(parcel)
    return expired


def depot_events(store: DepotStore, device: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) of each event the depot stored from `device`, in the journal's order."""
    rows = store.query(
        "SELECT kind, payload FROM events WHERE device=? ORDER BY journal, seq", (device,)
    )
    return [(str(kind), json.loads(str(payload))) for kind, payload in rows]


def _redirects_traced(store: DepotStore, scripts: Sequence[LockerScript], names: list[str]) -> int:
    """Redirected parcels the depot saw both scanned by a van and deposited in their locker."""
    scanned = {
        json.loads(str(p)).get("parcel")
        for (p,) in store.query(
            "SELECT payload FROM events WHERE kind IN ('parcel_scanned', 'parcel_scanned_at_stop')"
        )
    }
    traced = 0
    for name, script in zip(names, scripts, strict=True):
        deposited = {
            p.get("parcel") for k, p in depot_events(store, name) if k == "parcel_deposited"
        }
        traced += sum(1 for r in script.redirects if r.parcel in scanned and r.parcel in deposited)
    return traced


FIGURES = (
    "redirected",
    "dropoffs",
    "dropoffs_refused",
    "does_not_fit",
    "pickups",
    "pickups_by_code",
    "pickups_by_qr",
    "expired",
    "returned",
    "wrong_code_attempts",
    "keypad_locked_refusals",
    "keypad_fallbacks_to_qr",
    "lockouts",
    "reservations",
    "holds_extended",
    "extend_links_used",
    "commands_refused",
    "forced_open_injected",
    "forced_open_detected",
    "jams_injected",
    "doors_left_open_injected",
    "board_outages_injected",
    "dead_zones",
    "events",
    "reconnects",
    "resends",
)


def locker_figures(
    sites: Sequence[tuple[SimulatedLocker, list[tuple[str, dict[str, Any]]]]],
    inbox: CustomerInbox | None,
    *,
    redirects_traced: int = 0,
) -> dict[str, Any]:
    """Totals over all lockers (`count`, FIGURES, `alarms` by kind) and `per_locker`."""
    per_locker: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    alarms: Counter[str] = Counter()
    gave_up: Counter[str] = Counter()
    for site, events in sites:
        kinds = Counter(kind for kind, _ in events)
        attempts = [p for kind, p in events if kind == "pickup_attempt"]
        accepted = Counter(str(p.get("action")) for kind, p in events if kind == "command_accepted")
        site_alarms = Counter(str(p.get("alarm")) for kind, p in events if kind == "alarm")
        t = site.tally
        uplink = site.device.uplink
        figures: dict[str, Any] = {
            "redirected": t.redirected,
            "dropoffs": kinds["parcel_deposited"],
            "dropoffs_refused": kinds["dropoff_refused"],
            "does_not_fit": kinds["parcel_does_not_fit"],
            "pickups": kinds["parcel_picked_up"],
            "pickups_by_code": sum(1 for p in attempts if p.get("ok") and p["method"] == "code"),
            "pickups_by_qr": sum(1 for p in attempts if p.get("ok") and p["method"] == "qr"),
            "expired": kinds["hold_expired"],
            "returned": kinds["parcel_returned"],
            # Codes the locker checked and found wrong (not those it refused unchecked).
            "wrong_code_attempts": sum(
                1
                for p in attempts
                if p["method"] == "code" and not p.get("ok") and "reason" not in p
            ),
            "keypad_locked_refusals": sum(
                1 for p in attempts if p.get("reason") == "keypad locked"
            ),
            "keypad_fallbacks_to_qr": t.keypad_fallbacks_to_qr,
            "extend_links_used": t.holds_extended_asked,
            "lockouts": kinds["keypad_locked"],
            "reservations": accepted["reserve"],
            "holds_extended": accepted["extend_hold"],
            "commands_refused": kinds["command_refused"] + kinds["command_failed"],
            "forced_open_injected": t.forced_open_injected,
            "forced_open_detected": site_alarms["forced_open"],
            "jams_injected": t.jams_injected,
            "doors_left_open_injected": t.doors_left_open_injected,
            "board_outages_injected": t.board_outages_injected,
            "dead_zones": t.dead_zones,
            "events": site.journal.last_seq,
            "reconnects": max(0, uplink.session.connects - 1) if uplink is not None else 0,
            "resends": uplink.resends if uplink is not None else 0,
        }
        totals.update({k: int(figures[k]) for k in FIGURES})
        alarms.update(site_alarms)
        gave_up.update(t.gave_up)
        per_locker[site.name] = {
            **figures,
            "alarms": dict(sorted(site_alarms.items())),
            "acked": site.journal.acked_seq,
            "gave_up": dict(sorted(t.gave_up.items())),
            "step_errors": t.step_errors,
            "people_max_lag_min": t.max_lag_min,
        }
    return {
        "count": len(sites),
        **{k: totals[k] for k in FIGURES},
        "alarms": dict(sorted(alarms.items())),
        "redirects_traced_at_depot": redirects_traced,
        "pickup_notices_received": inbox.received if inbox else 0,
        "gave_up": dict(sorted(gave_up.items())),
        "step_errors": sum(site.tally.step_errors for site, _ in sites),
        "people_max_lag_min": max((site.tally.max_lag_min for site, _ in sites), default=0.0),
        "per_locker": per_locker,
    }


def no_lockers() -> dict[str, Any]:
    """The `lockers` figures of a day without lockers."""
    return locker_figures([], None)
