"""The simulated delivery days: a depot, a real broker, vans, lockers, couriers and customers.

The whole process of the seed documents, on real parts: the depot (depot.service)
imports the day's parcels from a merchant file, assigns them to vans, orders their stops and
publishes each van's manifest over MQTT (TLS, per-device accounts). Each van is the real van
software (its journal on a simulated clock, its scanner and GNSS receiver on pseudo-terminals,
its uplink through a link simulator that drops it into dead zones). Its courier
(simulators.delivery_day) loads the van, drives the route with the GNSS following, attempts
every door as its screen and the customer's wishes allow (a signature, an ID check; now and
then trying what they forbid, which the van refuses), records proof or a coded failure, and
scans back what returns; customers who find a card choose on the depot's card page
(simulators.card_customers). The depot applies
its exceptions policy to every failure: a locker with a fitting free compartment nearby (it
reserves one with a signed command and sends the van an updated manifest), a second attempt
the next day, or return to sender. Customers collect at the lockers with the code the depot
received sealed (simulators.locker_day); uncollected parcels expire and go back. A staffed
counter is a site of the policy's like a locker: its staff check parcels in and hand them out
against the code, QR or card and a name (simulators.counter_day). A few customers send a
delivered parcel back: booked on their page or through the shop, dropped at a locker with the
code of their notice or handed to the courier whose round the depot sends to their door,
collected by a van (simulators.returns_day). The depot
tells merchants and customers each outcome by signed webhook, to a receiver that is down for
an hour of the first day.

By default the run covers two days, so second attempts happen; the night between is skipped
on every simulated clock at once. Simulated time runs at most `--speed` times faster than real
time and stands still while anyone acts (_SimTime), so a seed's outcome does not depend on the
machine's speed. At the end every link is restored, the devices drain, and the report says
whether every event reached the depot exactly once, where every parcel ended, and how the
notifications fared. What it prints for a person (progress, a van standing still in its round
and why, the summary) is in words, within 100 columns, and names the broker that ran.

This module imports only the standard library at import time: `lastmile --help` must not pay
for paho, SQLite or pseudo-terminals.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import random
import re
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from simulators.errors import SimulatorError

DAY_START_H = 7.0
DAY_END_H = 18.0
NIGHT_H = 24.0 - DAY_END_H + DAY_START_H
DEPOT = (52.3676, 4.9041)  # a depot on the edge of a city centre
TOWN_RADIUS_M = 6000.0
SHARED_ADDRESS = 0.08  # parcels that go to an address that already has one
MERCHANTS = ("shop-a", "shop-b", "shop-c")
# Share of parcels whose customer gave the shop a way to be told (a webhook). The depot sends
# only those to a locker: a customer it cannot tell the pickup code cannot collect.
CUSTOMER_HOOK = 0.85
_LOCKER_STREETS = ("Stationsplein 12", "Museumplein 3", "Javaplein 21", "Mercatorplein 7")
_COUNTER_STREETS = ("Ceintuurbaan 154", "Bilderdijkstraat 88", "Van Baerlestraat 41")
STREETS = (
    "Keizersgracht",
    "Prinsengracht",
    "Herengracht",
    "Damrak",
    "Rokin",
    "Overtoom",
    "Ferdinand Bolstraat",
    "Javastraat",
    "Czaar Peterstraat",
    "Van Woustraat",
    "Kinkerstraat",
    "Linnaeusstraat",
)
NAMES = ("Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < value < 1000:
        raise argparse.ArgumentTypeError("must be more than 0 and less than 1000 hours")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 (any free one) to 65535")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vans", type=int, default=3, help="number of vans (default 3)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the run (default 1)")
    p.add_argument("--parcels", type=int, default=60, help="parcels per van (default 60)")
    p.add_argument("--days", type=int, default=2, help="days to run (default 2: second attempts)")
    p.add_argument(
        "--lockers",
        type=int,
        default=2,
        help="parcel lockers that take failed deliveries (default 2; 0: none)",
    )
    p.add_argument(
        "--counters",
        type=int,
        default=None,
        help="staffed collection counters (a shop's desk) that take failed deliveries "
        "(default: 1 when there are lockers, else 0)",
    )
    p.add_argument(
        "--locker-hold-h",
        type=_positive_hours,
        default=DayPlan.locker_hold_h,
        help="simulated hours a parcel waits in a locker before it expires and the depot "
        f"plans its collection (default {DayPlan.locker_hold_h:g})",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=2400.0,
        help="simulated seconds per real second (default 2400: a day in ~17 s)",
    )
    p.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    p.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="auto: Mosquitto when installed, else the embedded Python broker",
    )
    p.add_argument(
        "--database",
        metavar="PATH_OR_URL",
        help="the depot's database: a SQLite file (default: depot.db in the run's directory), "
        "a postgresql:// URL of an empty database, or 'postgresql' for a private server of the "
        "run's own (Debian's postgresql package)",
    )
    p.add_argument(
        "--workers",
        type=_at_least_one,
        default=1,
        help="depot workers sharing the devices' stream (MQTT v5 shared subscriptions; "
        "needs Mosquitto) and the database (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")
    p.add_argument(
        "--ui",
        type=_port,
        metavar="PORT",
        help="after the days, keep the depot (its database and web port, on 127.0.0.1:PORT; "
        "0: any free port) up until interrupted, with an operator account made for you: "
        "look around the console",
    )


def run_from_args(args: argparse.Namespace) -> int:
    def tell(report: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(report, indent=None))
            sys.stdout.flush()
        else:
            _print_summary(report)

    told: list[dict[str, Any]] = []

    def linger(report: dict[str, Any], service: Any) -> None:
        tell(report)
        told.append(report)
        _console_until_interrupted(service)

    report = run_day(
        DayPlan(
            vans=args.vans,
            seed=args.seed,
            parcels_per_van=args.parcels,
            days=args.days,
            lockers=args.lockers,
            counters=args.counters,
            locker_hold_h=args.locker_hold_h,
            speed=args.speed,
            broker=args.broker,
            database=args.database,
            workers=args.workers,
            ui_port=args.ui,
        ),
        workdir=args.workdir,
        progress=None if args.json else _print_progress,
        linger=linger if args.ui is not None else None,
    )
    if not told:
        tell(report)
    return 0 if report["ok"] else 1


CONSOLE_USER = "operator"


def _console_until_interrupted(service: Any) -> None:
    """Make an operator account on the depot, as a depot's operator would (the product's own
    `add_user`), say where the console is, and wait for SIGINT or SIGTERM.

    The simulator only opens the door: the depot it started serves its own console. The
    password is new each run and printed once, on the one line a person or a test reads.
    """
    import secrets
    import signal

    from depot.web.auth import add_user

    if service.api is None:
        raise SimulatorError("the depot has no web port to show")
    password = secrets.token_urlsafe(12)
    add_user(service.database, CONSOLE_USER, "operator", password)
    done = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        done.set()

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"console: {service.api.url}/ user {CONSOLE_USER} password {password}", flush=True)
        while not done.wait(3600.0):  # woken by the signal handler; the timeout only bounds it
            pass
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class DayPlan:
    vans: int = 3
    seed: int = 1
    parcels_per_van: int = 60
    days: int = 2
    speed: float = 2400.0
    smudged_share: float = 0.03
    noise_share: float = 0.02
    dead_zones_per_van: tuple[int, int] = (1, 3)
    lockers: int = 2
    counters: int | None = None  # staffed counters; None: one when there are lockers
    # Share of delivered parcels whose customer books a return (simulators.returns_day).
    return_share: float = 0.03
    # Simulated hours a parcel waits in a locker (nights count): short, so that a two-day run
    # sees holds run out, the depot plan their collection and a van collect them.
    locker_hold_h: float = 6.0
    webhook_outage_h: tuple[float, float] = (11.0, 12.0)  # day 1: the receiver is down
    broker: Literal["auto", "mosquitto", "embedded"] = "auto"
    database: str | None = None  # None: a SQLite file in the workdir; a URL; or "postgresql"
    workers: int = 1
    ui_port: int | None = None  # the depot's web port on 127.0.0.1 (None: any free one)


class _Workers:
    """The depot's workers of one run, answering as one depot: the first does what one worker
    does for all (imports, plans, reads the book), every one of them ingests and sends."""

    def __init__(self, services: Sequence[Any]) -> None:
        self.all = list(services)
        self.first = self.all[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.first, name)

    def start(self) -> None:
        for s in self.all:
            s.start()

    def stop(self) -> None:
        _all_at_once([s.stop for s in self.all])

    def wake(self) -> None:
        for s in self.all:
            s.wake()

    def wake_webhooks(self) -> None:
        for s in self.all:
            s.webhooks.wake()

    def settled(self, *, webhooks: bool = True) -> bool:
        return all(s.settled(webhooks=webhooks) for s in self.all)

    @property
    def decisions(self) -> list[Any]:
        return [d for s in self.all for d in s.decisions]

    @property
    def quarantined(self) -> int:
        return sum(s.depot.quarantined for s in self.all if s.depot is not None)


@dataclass(order=True)
class _Action:
    at_h: float
    order: int
    what: str = field(compare=False)
    device: str = field(compare=False)
    run: Callable[[], object] = field(compare=False)


# Real seconds a busy actor waits for the rest of the world to catch up before simulated time
# runs on anyway (the lag is then reported); and longest a sleeper waits between two looks.
CATCH_UP_S = 20.0
LOOK_AGAIN_S = 0.5
# What a van writes that the depot's decisions depend on (the rest may arrive later).
DEPOT_ACTS_ON = frozenset(
    {
        "delivery_failed",
        "parcel_redirected",
        "parcel_dropped_at_locker",
        "parcel_collected_from_locker",
        "round_ended",
        "parcel_returned_to_depot",
        "day_closed",
    }
)
STANDSTILL_H = 1.0  # a van with no event for this long while its round is open is reported


class _SimTime:
    """Simulated time of one run: it runs only while no actor is busy, and stops at the next
    moment an actor must act.

    Every ScaledClock of the run shares the master's time base, so holding it holds all. An
    actor (a courier's thread, the scheduler, the main thread between days) holds the clock
    while it acts, then lets the world catch up (`settle`: every device's events confirmed, the
    depot's decisions taken and sent, the people at the lockers done) and only then sleeps.
    A sleeper's wake-up time is a stop of the clock, so nobody wakes late: simulated time
    stands still while a slow machine does the work of a moment. The outcome of a seed thus
    does not depend on the machine's speed; the day just takes longer in real time.
    Every wait is bounded (LOOK_AGAIN_S, CATCH_UP_S); a device that does not catch up within
    CATCH_UP_S is named in `lags` and time runs on without it.
    """

    def __init__(self, master: Any, day_base: list[int], stopping: threading.Event) -> None:
        self.master = master
        self.speed = float(master.speed)
        self.day_base = day_base
        self.stopping = stopping
        self.lags: list[tuple[float, str]] = []  # (hour of the day's clock, what lagged)
        self.settle: Callable[[], list[str]] = list  # set once the world is built
        self._cond = threading.Condition()
        self._stops: dict[int, int] = {}  # sleeper -> wall ns it wakes at
        self._next_token = 0
        self._local = threading.local()

    def hour(self) -> float:
        return float((self.master.wall_ns() - self.day_base[0]) / 3600e9)

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    def hold(self) -> None:
        """The calling thread acts: simulated time stands still until its `release`."""
        depth = self._depth()
        if depth == 0:
            self.master.hold()
        self._local.depth = depth + 1

    def release(self) -> None:
        depth = self._depth()
        if depth == 1:
            self._catch_up()
            with self._cond:
                self.master.release()
                self._cond.notify_all()
        self._local.depth = depth - 1

    def holding(self, fn: Callable[[], object]) -> Callable[[], None]:
        """`fn` for a new thread, holding the clock from now (before the thread starts, so no
        time passes in between) until `fn` returns."""
        self.master.hold()

        def run() -> None:
            self._local.depth = 1
            try:
                fn()
            finally:
                self.release()

        return run

    def poke(self) -> None:
        """A sleeper's wake-up time may have changed (a new action on the timetable)."""
        with self._cond:
            self._cond.notify_all()

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds` of simulated time; False when the run is stopping."""
        end = int(self.master.wall_ns() + max(0.0, seconds) * 1e9)
        return self.sleep_until(lambda: end)

    def sleep_until(self, wake_ns: Callable[[], int]) -> bool:
        """Wait until the master clock reads `wake_ns()` (re-read on every poke)."""
        depth = self._depth()
        if depth:
            self._catch_up()
        with self._cond:
            token = self._next_token
            self._next_token += 1
            if depth:
                self.master.release()
                self._local.depth = 0
                self._cond.notify_all()  # time may run again: sleepers look at their stops
            try:
                while not self.stopping.is_set():
                    end = wake_ns()
                    self._stops[token] = end
                    self.master.stop_at(min(self._stops.values()))
                    now = self.master.wall_ns()
                    if now >= end:
                        break
                    if self.master.stopped():
                        wait = LOOK_AGAIN_S  # someone acts: woken when time runs again
                    else:
                        wait = min(LOOK_AGAIN_S, (end - now) / self.speed / 1e9)
                    self._cond.wait(wait)
            finally:
                if depth:
                    self.master.hold()  # before the stop goes: time must not pass the wake-up
                    self._local.depth = depth
                del self._stops[token]
                self.master.stop_at(min(self._stops.values()) if self._stops else None)
                self._cond.notify_all()
        return not self.stopping.is_set()

    def _catch_up(self) -> None:
        if self.stopping.is_set():
            return
        lagging = self.settle()
        if lagging:
            self.lags.append((self.hour(), "; ".join(lagging)))


class _Scheduler:
    """The day's timetable: actions at simulated hours of the current day, added any time.

    Runs on the main thread, which holds the simulated clock except while it sleeps until the
    next action or whole hour (see _SimTime): an action runs at its exact simulated time.
    """

    def __init__(self, sim: _SimTime) -> None:
        self.sim = sim
        self._heap: list[_Action] = []
        self._lock = threading.Lock()
        self._order = 0

    def at(self, at_h: float, device: str, what: str, run: Callable[[], object]) -> None:
        with self._lock:
            heapq.heappush(self._heap, _Action(at_h, self._order, what, device, run))
            self._order += 1
        self.sim.poke()

    def run_until(
        self, end_h: float, done: Callable[[], bool], on_hour: Callable[[int], None]
    ) -> None:
        """Run actions as their hour comes, until `end_h` has passed and `done()` holds."""
        next_report = math.floor(self.sim.hour()) + 1
        while True:
            now = self.sim.hour()
            while now >= next_report:
                on_hour(next_report)
                next_report += 1
            with self._lock:
                ready = bool(self._heap) and self._heap[0].at_h <= now
                due = heapq.heappop(self._heap) if ready else None
            if due is not None:
                try:
                    due.run()
                except Exception as exc:
                    print(f"sim: {due.device} {due.what} failed: {exc}", file=sys.stderr)
                continue
            if now >= end_h and done() and not self._heap_before(end_h + 1):
                return
            wake = partial(self._wake_ns, next_report, end_h if now < end_h else math.inf)
            if not self.sim.sleep_until(wake):
                return

    def _wake_ns(self, next_report: float, end_h: float) -> int:
        with self._lock:
            first = self._heap[0].at_h if self._heap else math.inf
        return self.sim.day_base[0] + int(min(first, next_report, end_h) * 3600e9)

    def next_day(self) -> None:
        """Hours past 24 were tomorrow's: they become hours of the new day."""
        with self._lock:
            for action in self._heap:
                action.at_h -= 24.0
            heapq.heapify(self._heap)

    def _heap_before(self, h: float) -> bool:
        with self._lock:
            return bool(self._heap) and self._heap[0].at_h < h


class _World:
    """What "the world has caught up" means: nothing of the run is in flight.

    Every device whose link is up has its events confirmed by the depot; the depot has
    projected them, decided what follows and sent its manifests and commands (webhooks
    waiting for a receiver aside); each van runs the depot's newest manifest, each locker has
    answered the depot's commands; the people at the lockers are done.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.vans: list[tuple[str, Any, Any]] = []  # (name, van, link)
        self.lockers: Any = None  # the lockers and counters (counter_day.CollectionPoints)
        self.others: list[Any] = []  # other people of the day acting now (`busy()`)
        self._changed = threading.Condition()
        self._answered: set[str] = set()  # depot command ids a locker answered
        self._gone: set[str] = set()  # ... or that one wait for them outlasted
        self._rejected: dict[str, set[int]] = {}  # manifest versions a van refused

    def watch(self, name: str, journal: Any) -> None:
        journal.add_listener(partial(self._on_events, name))

    def _on_events(self, name: str, events: list[Any]) -> None:
        with self._changed:
            for e in events:
                if e.kind == "manifest_rejected" and isinstance(e.payload.get("version"), int):
                    self._rejected.setdefault(name, set()).add(e.payload["version"])
            self._changed.notify_all()

    def wait(self, timeout: float) -> list[str]:
        """Wait until nothing is in flight; what still was after `timeout` real seconds."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self.in_flight()
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                if pending:
                    self._gone |= {p.split(" ")[1] for p in pending if p.startswith("command ")}
                return pending
            # Woken by every event a device commits; the depot's side is looked at again soon.
            with self._changed:
                self._changed.wait(min(left, 0.02))

    def in_flight(self) -> list[str]:
        out = []
        for name, van, link in self.vans:
            if link.is_cut:
                continue
            if van.journal.acked_seq < van.journal.last_seq:
                # Only facts the depot acts on are waited for: the van's uplink sends on its
                # next network tick (up to a second), too slow to wait for every scan.
                _prev, unsent = van.journal.read(van.journal.acked_seq, 10**6)
                if any(e.kind in DEPOT_ACTS_ON for e in unsent):
                    out.append(f"{name}: events not yet confirmed by the depot")
                    continue
            wanted = self.service.current_manifest(name)
            if wanted is None or van.round is None:
                continue
            status = van.round.status()
            running = (str(status.get("day") or ""), int(status.get("version") or 0))
            if running >= (wanted.day, wanted.version) or (
                status.get("pending_day") == wanted.day
                or wanted.version in self._rejected.get(name, ())
            ):
                continue
            out.append(f"{name}: manifest v{wanted.version} not yet applied")
        if self.lockers is not None:
            cut = {site.name for site in self.lockers.sites if site.link.is_cut}
            for name, journal in self.lockers.journals:
                if name not in cut and journal.acked_seq < journal.last_seq:
                    out.append(f"{name}: events not yet confirmed by the depot")
            for site in self.lockers.sites:
                if site.people.busy():
                    out.append(f"{site.name}: people still at the locker")
            waiting = {
                str(cid): str(target)
                for cid, target in self.service.store.query(
                    "SELECT id, target FROM depot_commands WHERE published_ns IS NOT NULL"
                )
                if str(target) not in cut and str(cid) not in self._answered | self._gone
            }
            if waiting:  # the locker's answer is an event; the depot has it once acked
                for (payload,) in self.service.store.query(
                    "SELECT payload FROM events WHERE kind IN "
                    "('command_accepted', 'command_failed', 'command_refused')"
                ):
                    self._answered.add(str(json.loads(str(payload)).get("id")))
            out += [
                f"command {cid} to {target} not yet answered"
                for cid, target in waiting.items()
                if cid not in self._answered
            ]
        out += [f"{other.name}: still acting" for other in self.others if other.busy()]
        if not out and not self.service.settled(webhooks=False):
            out.append("depot: decisions or sends still waiting")
        return out


class _TallyFeedback:
    """The courier's beeper of one simulated van: remembers what the courier was told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tones: Counter[str] = Counter()
        self.confirmed_seqs: list[int] = []
        self.refused_reasons: list[str] = []

    def tell(self, tone: str, say: str, facts: Any) -> None:
        with self.lock:
            self.tones[tone] += 1
            seq = facts.get("seq") if hasattr(facts, "get") else None
            if isinstance(seq, int) and tone in ("ok", "repeat", "warn"):
                self.confirmed_seqs.append(seq)

    # What a van without a round (a plain scan desk) says instead.
    def confirmed(self, event: Any) -> None:
        with self.lock:
            self.confirmed_seqs.append(event.seq)

    def refused(self, reason: str, raw: str) -> None:
        with self.lock:
            self.refused_reasons.append(reason)


def _line_noise(scanner: Any, rng: random.Random) -> None:
    """A burst of garbage on the serial line, ended by a line break (a glitch, then quiet)."""
    scanner.noise(24, rng)
    scanner.write_raw(b"\r\n")


def _print_progress(line: str) -> None:
    print(_fit(line), flush=True)


# Columns of every line printed for a person (progress and summary; --json is one line).
WIDTH = 100


def _fit(text: str) -> str:
    """Every line of `text` within WIDTH columns; a wrapped line goes on 4 columns further in."""
    out = []
    for line in text.splitlines():
        if len(line) <= WIDTH:
            out.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        out.append(
            textwrap.fill(line, WIDTH, subsequent_indent=lead + "    ", break_on_hyphens=False)
        )
    return "\n".join(out)


def _pack(head: str, parts: Sequence[str], sep: str = " | ") -> str:
    """`head`, then as many of `parts` on each line as fit in WIDTH columns; the next lines
    start under the first part."""
    lines: list[str] = []
    line, empty = head, True
    for part in parts:
        if not empty and len(line) + len(sep) + len(part) > WIDTH:
            lines.append(line)
            line, empty = " " * len(head), True
        line += part if empty else sep + part
        empty = False
    lines.append(line)
    return _fit("\n".join(lines))


def _n(count: int, thing: str, things: str | None = None) -> str:
    """`1 row`, `2 rows`."""
    return f"{count} {thing if count == 1 else (things or thing + 's')}"


def _counted(counts: Mapping[str, int], words: Mapping[str, str] | None = None) -> str:
    """`{"not_at_home": 2, "refused": 0}` -> "2 not at home" (zeros left out)."""
    said = [
        f"{n} {(words or {}).get(key, key.replace('_', ' '))}" for key, n in counts.items() if n
    ]
    return ", ".join(said) or "none"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _clock_text(h: float) -> str:
    return f"{int(h):02d}:{int(h * 60) % 60:02d}"


# Mosquitto 2.x logs "mosquitto version 2.0.11 running" once it listens.
_MOSQUITTO_VERSION = re.compile(rb"mosquitto version (\S+) running")


def _broker_name(broker: Any) -> str:
    """What runs the run's MQTT: "mosquitto 2.0.11" (as its log says) or "amqtt 0.12.1"."""
    from importlib.metadata import PackageNotFoundError, version

    from simulators.broker import EmbeddedBroker

    if isinstance(broker, EmbeddedBroker):
        try:
            return f"amqtt {version('amqtt')}"
        except PackageNotFoundError:
            return "amqtt"
    try:
        found = _MOSQUITTO_VERSION.findall(Path(broker.log_path).read_bytes())
    except (AttributeError, OSError):
        found = []
    return f"mosquitto {found[-1].decode(errors='replace')}" if found else "mosquitto"


def _town(rng: random.Random, n: int) -> list[tuple[float, float, str]]:
    """`n` delivery addresses in a disc around the depot, some of them shared."""
    out: list[tuple[float, float, str]] = []
    from simulators.delivery_day import offset

    for _ in range(n):
        if out and rng.random() < SHARED_ADDRESS:
            out.append(rng.choice(out))
            continue
        r = TOWN_RADIUS_M * math.sqrt(rng.random())
        lat, lon = offset(*DEPOT, r, rng.uniform(0, 360))
        out.append((round(lat, 6), round(lon, 6), f"{rng.choice(STREETS)} {rng.randint(1, 400)}"))
    return out


def run_day(
    plan: DayPlan,
    *,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    linger: Callable[[dict[str, Any], Any], None] | None = None,
) -> dict[str, Any]:
    """Run the simulated days and return the figures of the report.

    `linger(report, depot)`, if given, runs once the report is made and before anything is
    stopped, with the depot service (its first worker): `--ui` keeps the depot up there."""
    from dataclasses import replace

    from depot.config import DepotConfig, LockerSiteConfig
    from depot.service import DepotService
    from edge.van import Van, VanConfig
    from parcel.identify import identify
    from simulators.broker import start_broker
    from simulators.card_customers import CardCustomers
    from simulators.delivery_day import Courier, Household, draw_door, draw_fates, offset
    from simulators.doorstep import DoorstepCamera
    from simulators.gnss import SimulatedGnss
    from simulators.link import LinkProxy
    from simulators.parcels import random_label, smudged_s10
    from simulators.scanner import SimulatedScanner
    from simulators.webhooks import WebhookReceiver
    from sync.clock import ScaledClock
    from sync.mqtt import BrokerAddress

    say = progress or (lambda _line: None)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lastmile-day-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(plan.seed)
    names = [f"van-{i + 1}" for i in range(plan.vans)]
    passwords = {n: f"pw-{n}-{rng.getrandbits(64):x}" for n in names}
    started = time.monotonic()
    midnight_ns = int(1_795_046_400e9)  # 2026-11-19 00:00 UTC, a Thursday
    start_ns = midnight_ns + int(DAY_START_H * 3600e9)
    clocks: list[ScaledClock] = []

    def new_clock(name: str) -> ScaledClock:
        c = ScaledClock(start_ns, plan.speed, boot_id=f"boot-{name}-{plan.seed}")
        if clocks:
            c.catch_up(clocks[0])
        clocks.append(c)
        return c

    master = new_clock("sim")
    day_base = [midnight_ns]
    stopping = threading.Event()
    sim = _SimTime(master, day_base, stopping)
    sim.hold()  # the main thread acts until the first day's timetable runs
    hour = sim.hour

    # --- the world -------------------------------------------------------------------------
    total = plan.vans * plan.parcels_per_van
    places = _town(rng, total)
    world: dict[str, Household] = {}
    import_rows: list[dict[str, Any]] = []
    secrets = {m: f"whsec-{m}-{rng.getrandbits(96):x}".encode() for m in MERCHANTS}
    secrets["customer"] = f"whsec-customer-{rng.getrandbits(96):x}".encode()
    receiver = WebhookReceiver(secrets)
    while len(world) < total:
        label = random_label(rng)
        try:
            parcel = identify(label.data, label.aim).id
        except Exception:
            continue
        if parcel in world:
            continue
        lat, lon, address = places[len(world)]
        merchant = rng.choice(MERCHANTS)
        window = rng.choice([None, None, None, ("09:00", "12:00"), ("13:00", "17:00")])
        home = Household(
            parcel=parcel,
            label=label,
            lat=lat,
            lon=lon,
            address=f"{address}, Amsterdam",
            recipient=f"{rng.choice('ABCDEFGHJKLMNPRSTW')}. {rng.choice(NAMES)}",
            merchant=merchant,
            size=rng.choices(["S", "M", "L"], weights=[6, 3, 1])[0],
            locker_ok=rng.random() < 0.85,
            window=window,
            fates=draw_fates(rng),
        )
        world[parcel] = home
        row: dict[str, Any] = {
            "parcel": label.data.replace("\x1d", "<GS>"),
            "recipient": home.recipient,
            "address": home.address,
            "lat": lat,
            "lon": lon,
            "merchant": merchant,
            "webhook": receiver.url(f"/merchant/{merchant}"),
            "size": home.size,
            "locker_ok": home.locker_ok,
        }
        if window:
            row["window"] = f"{window[0]}-{window[1]}"
        if rng.random() < CUSTOMER_HOOK:
            row["customer_webhook"] = receiver.url("/customer")
        # What the customer told the shop of their door, and who opens it (a draw of its own
        # per parcel: the rest of the world is drawn as before).
        wishes, at_door, next_door = draw_door(
            parcel, plan.seed, home.recipient, locker_ok=home.locker_ok,
            hooked="customer_webhook" in row,
        )
        world[parcel] = home = replace(home, wishes=wishes, at_door=at_door, next_door=next_door)
        row.update(wishes.import_columns())
        import_rows.append(row)
    # A merchant file always has a few rows a depot must refuse, and says which.
    bad = smudged_s10(rng)
    import_rows.append({**import_rows[0], "parcel": bad.data})
    import_file = workdir / "import.json"
    import_file.write_text(json.dumps({"parcels": import_rows}, indent=1))

    lockers = None
    locker_sites: list[LockerSiteConfig] = []
    if plan.lockers > 0:
        from simulators.locker_day import BOARDS, LOCK_SIZES, LockerDay

        lockers = LockerDay(
            plan.lockers,
            seed=plan.seed,
            speed=plan.speed,
            hold_h=plan.locker_hold_h,
            redirect_share=0.0,
        )
        passwords.update(lockers.passwords)
        sizes = Counter(LOCK_SIZES * BOARDS)
        for j, name in enumerate(lockers.names):
            lat, lon = offset(*DEPOT, 2500.0, 360.0 * j / plan.lockers + 30.0)
            locker_sites.append(
                LockerSiteConfig(
                    name,
                    lat,
                    lon,
                    dict(sizes),
                    title=f"Parcel locker {j + 1}",
                    address=f"{_LOCKER_STREETS[j % len(_LOCKER_STREETS)]}, Amsterdam",
                )
            )
    # Staffed counters (a shop's parcel desk): sites of kind "counter" the policy sends
    # failed parcels to as it does to lockers (simulators.counter_day).
    counters = None
    n_counters = plan.counters if plan.counters is not None else min(1, plan.lockers)
    if n_counters > 0:
        from simulators.counter_day import SHELVES, CounterDay

        counters = CounterDay(
            n_counters, seed=plan.seed, speed=plan.speed, hold_h=plan.locker_hold_h
        )
        passwords.update(counters.passwords)
        for j, name in enumerate(counters.names):
            lat, lon = offset(*DEPOT, 1500.0, 360.0 * j / n_counters + 120.0)
            locker_sites.append(
                LockerSiteConfig(
                    name,
                    lat,
                    lon,
                    {},
                    title=f"Parcel desk {j + 1}",
                    address=f"{_COUNTER_STREETS[j % len(_COUNTER_STREETS)]}, Amsterdam",
                    kind="counter",
                    capacity=SHELVES,
                )
            )
    keys = points = None
    if lockers is not None or counters is not None:
        from simulators.counter_day import CollectionPoints
        from simulators.locker_day import SiteKeys

        keys = SiteKeys.of(lockers)
        # What the couriers and the run see of the lockers and counters alike.
        points = CollectionPoints(lockers, counters)
    broker = start_broker(
        workdir / "broker", passwords, kind=plan.broker, tls=True, depot_workers=plan.workers
    )
    tls_ca = str(broker.ca_file) if broker.ca_file is not None else None
    depot_user, depot_pw = broker.depot_credentials
    worker_pw = {int(n.rsplit("-", 1)[1]): pw for n, pw in broker.depot_workers.items()}
    database: str | Path = workdir / "depot.db"
    pg: Any = None
    if plan.database == "postgresql":
        from simulators.postgres import PostgresServer

        pg = PostgresServer(durable=True)
        try:
            pg.start()
        except BaseException:
            broker.stop()
            receiver.close()
            raise
        database = pg.new_database("lastmile_sim")
    elif plan.database is not None:
        database = plan.database
    depot_config = DepotConfig(
        database=database,
        lat=DEPOT[0],
        lon=DEPOT[1],
        vans=names,
        broker=BrokerAddress(
            broker.host, broker.port, depot_user, depot_pw, mqtt5=broker.mqtt5, tls_ca=tls_ca
        ),
        # Customers' links lead here, and with --ui a person's browser.
        api=("127.0.0.1", plan.ui_port or 0),
        webhook_secrets=dict(secrets),
        webhook_max_attempts=12,  # about 1.75 to 3.5 simulated hours of retries
        webhook_backoff_base_s=60.0,
        webhook_backoff_max_s=1800.0,
        # A van's claim crosses its dead zones (up to 40 min) and its reconnect backoff (2 real
        # seconds, 80 simulated minutes): a disagreement is an alarm only after three hours.
        locker_confirm_min=180.0,
        max_locker_km=4.0,
        locker_hold_h=plan.locker_hold_h,
        lockers=locker_sites,
        workers=plan.workers,
        worker_passwords=worker_pw,
    )
    depot_clock = new_clock("depot")
    service = _Workers(
        [
            DepotService(
                depot_config,
                clock=depot_clock,
                signing_key_pem=keys.command_signing_pem if keys is not None else None,
                sealing_key_pems=[keys.sealing_pem] if keys is not None else [],
                worker=k,
            )
            for k in range(1, plan.workers + 1)
        ]
    )
    service.start()
    broker_name = _broker_name(broker)
    say(
        f"broker: {broker_name} on {broker.host}:{broker.port} "
        f"({'TLS' if tls_ca else 'plain TCP'})\n"
        f"depot: {service.database.dialect}, {_n(plan.workers, 'worker')}; "
        f"{_n(plan.vans, 'van')}, {_n(plan.lockers, 'locker')}, {_n(n_counters, 'counter')}, "
        f"{_n(plan.days, 'day')}, "
        f"seed {plan.seed}"
    )
    imported = service.import_parcels(import_file)
    say(
        f"import: {_n(len(imported.records), 'parcel')} received, "
        f"{_n(len(imported.errors), 'row')} refused"
        + "".join(f"\n  refused row {p.line_or_index}: {p.reason}" for p in imported.errors[:3])
    )

    vans: list[Any] = []
    scanners: list[Any] = []
    gnss_sims: list[Any] = []
    links: list[Any] = []
    feedbacks: list[_TallyFeedback] = []
    couriers: list[Courier] = []
    sync_settings = {
        "ack_timeout_s": 3.0,
        "keepalive_s": 5,
        "backoff_min_s": 0.2,
        "backoff_max_s": 2.0,
    }
    scheduler = _Scheduler(sim)
    world_state = _World(service)
    dead_zones: list[tuple[str, float, float]] = []  # (van, from hour, to hour) on day 1
    read_up_to = dict.fromkeys(names, 0)  # each van's journal, read for standstills so far
    day_reports: list[dict[str, Any]] = []
    try:
        for i, name in enumerate(names):
            link = LinkProxy(broker.host, broker.port, name=name)
            link.start()
            links.append(link)
            scanner = SimulatedScanner(workdir / f"{name}.tty")
            scanners.append(scanner)
            clock = new_clock(name)
            gnss = SimulatedGnss(
                workdir / f"{name}.gnss",
                clock=clock,
                seed=plan.seed * 100 + i,
                corrupt_share=0.01,
                position=DEPOT,
            )
            gnss_sims.append(gnss)
            feedback = _TallyFeedback()
            feedbacks.append(feedback)
            config = VanConfig(
                device_id=name,
                journal=workdir / f"{name}.journal.db",
                scanner_port=str(scanner.path),
                broker=BrokerAddress(
                    "127.0.0.1", link.port, name, passwords[name], mqtt5=broker.mqtt5, tls_ca=tls_ca
                ),
                sync=dict(sync_settings),
                round_enabled=True,
                gnss_port=str(gnss.path),
            )
            van = Van(config, feedback, clock=clock)
            van.start()
            vans.append(van)
        for name, van in zip(names, vans, strict=True):
            if not van.scanner_ready.wait(10):
                raise SimulatorError(f"{name}'s scanner port never opened")
        if lockers is not None:
            lockers.on_visit = scheduler.at
            lockers.start(
                _locker_device,
                workdir=workdir,
                broker_host=broker.host,
                broker_port=broker.port,
                mqtt5=broker.mqtt5,
                tls_ca=tls_ca,
                receiver=receiver,
                wall_start_ns=start_ns,
                vans=names,
                sync=sync_settings,
                time_from=master,
            )
            for site in lockers.lockers:
                site.clock.catch_up(master)
                clocks.append(site.clock)  # the night passes for the lockers' holds too
        if counters is not None and keys is not None:
            counters.on_visit = scheduler.at
            counters.start(
                _counter_device,
                workdir=workdir,
                broker_host=broker.host,
                broker_port=broker.port,
                mqtt5=broker.mqtt5,
                tls_ca=tls_ca,
                keys=keys,
                receiver=receiver,
                customers=world.get,
                wall_start_ns=start_ns,
                vans=names,
                sync=sync_settings,
                time_from=master,
            )
            clocks += [site.clock for site in counters.counters]  # their holds see the night
        returns_desk = None
        if lockers is not None and plan.return_share > 0:
            returns_desk = _returns_desk(
                plan, service, receiver, lockers, world, import_rows, scheduler, hour
            )
            returns_desk.start()
            for van in vans:
                returns_desk.watch(van.journal)
        # The customers who find a card after a failed attempt (simulators.card_customers).
        card_customers = CardCustomers(
            seed=plan.seed,
            receiver=receiver,
            card_page=f"{service.public_url}/card",
            schedule=scheduler.at,
            hour=hour,
        )
        card_customers.start()
        for name, van, scanner, gnss in zip(names, vans, scanners, gnss_sims, strict=True):
            couriers.append(
                Courier(
                    name,
                    _VanHandle(van),
                    scanner=scanner,
                    gnss=gnss,
                    world=world,
                    depot=DEPOT,
                    sim_wait=sim.sleep,
                    hour=hour,
                    rng=random.Random(f"{name}/{plan.seed}"),
                    lockers=points,
                    strangers=[],
                    # Scenes rendered now, before the day: a shot at the door then takes ms.
                    camera_app=DoorstepCamera(workdir / "DCIM", seed=len(couriers) + 1),
                    on_card=card_customers.card_left,
                )
            )
        for name, van, link in zip(names, vans, links, strict=True):
            world_state.vans.append((name, van, link))
            world_state.watch(name, van.journal)
        if points is not None:
            world_state.lockers = points
            for name, journal in points.journals:
                world_state.watch(name, journal)
        if returns_desk is not None:
            world_state.others.append(returns_desk)
        world_state.others.append(card_customers)
        sim.settle = partial(world_state.wait, CATCH_UP_S)
        for day in range(1, plan.days + 1):
            if day > 1:
                # The night: every clock jumps to the next morning's start (time stood still
                # since the day ended, so every night is equally long).
                night_s = max(0.0, (24.0 + DAY_START_H - hour()) * 3600)
                for c in clocks:
                    c.skip(night_s)
                day_base[0] += int(24 * 3600e9)
                scheduler.next_day()
            date = time.strftime("%Y-%m-%d", time.gmtime(day_base[0] / 1e9))
            planned = service.plan_day(date)
            parcels_today = {v: len(m.parcels) for v, m in planned.manifests.items()}
            say(
                _pack(
                    f"day {day} ({date}): manifests issued: ",
                    [f"{v} {_n(n, 'parcel')}" for v, n in parcels_today.items()],
                    ", ",
                )
            )
            if not any(m.stops for m in planned.manifests.values()):
                break
            # Which parcel each van carries, so a courier can pick one of another van by mistake.
            for courier in couriers:
                others = [
                    world[p].label
                    for v, m in planned.manifests.items()
                    if v != courier.name
                    for p in m.parcels
                    if p in world
                ]
                courier.strangers = rng.sample(others, min(3, len(others)))
            if day == 1:
                dead_zones += _plan_disturbances(
                    plan, rng, scheduler, names, scanners, links, receiver
                )
            if lockers is not None:
                for at_h, device, what, run in lockers.script_faults(first_day=day == 1):
                    scheduler.at(at_h, device, what, run)
            threads = [
                threading.Thread(
                    target=sim.holding(partial(c.round, date)),
                    name=f"courier-{c.name}",
                    daemon=True,
                )
                for c in couriers
                if planned.manifests.get(c.name) and planned.manifests[c.name].stops
            ]
            lags_from = len(sim.lags)
            for t in threads:
                t.start()
            scheduler.run_until(
                DAY_END_H,
                partial(_all_done, threads),
                lambda h: say(_progress_line(h, names, vans, links, points)),
            )
            for t in threads:
                t.join(5)
            for name, van in zip(names, vans, strict=True):
                _prev, events = van.journal.read(read_up_to[name], 10**9)
                read_up_to[name] = events[-1].seq if events else read_up_to[name]
                for sentence in _standstills(
                    name,
                    day,
                    [((e.wall_ns - day_base[0]) / 3600e9, e.kind) for e in events],
                    until_h=hour(),
                    dead_zones=[(a, b) for v, a, b in dead_zones if v == name and day == 1],
                    lags=sim.lags[lags_from:],
                ):
                    say(sentence)
            # Night: the vans are back in the yard, on the depot's network; the depot plans
            # tomorrow only once it has heard what came back today.
            for link in links:
                link.restore()
            _quiesce(vans, None, service, deadline=time.monotonic() + 30, webhooks=False)
            day_reports.append({"day": day, "date": date, "parcels": parcels_today})
        if points is not None:
            points.end_of_day()
        if returns_desk is not None and not returns_desk.finish(20.0):
            say("customers' returns: some customers were still busy at the end of the day")
        if not card_customers.finish(20.0):
            say("customers with a card: some were still at the card page at the end of the day")
        receiver.up()
        for link in links + (points.links if points is not None else []):
            link.restore()
        say("days over; links restored, devices draining to the depot")
        _quiesce(vans, points, service, deadline=time.monotonic() + 60, webhooks=False)
        if not service.settled():
            # Webhooks still waiting for their retry time: let simulated time run for them
            # (every device has drained, so nothing else can change any more).
            sim.release()
            _quiesce(vans, points, service, deadline=time.monotonic() + 60)
            sim.hold()
        cuts = len(dead_zones)
        report = _report(
            plan, names, vans, feedbacks, couriers, links, service, receiver, cuts, lockers,
            sites=points,
        )
        report["customer_returns"] = service.customer_returns()
        report["returning_customers"] = returns_desk.report() if returns_desk else None
        report["counter"] = counters.report(service.store) if counters is not None else {}
        report.update(_door_figures(service, couriers, card_customers))
        report["ok"] = report["ok"] and report["preference_violations"] == 0
        report["import"] = {"received": len(imported.records), "refused": len(imported.errors)}
        report["days"] = day_reports
        report["broker"] = broker_name
        report["tls"] = tls_ca is not None
        report["real_seconds"] = round(time.monotonic() - started, 2)
        report["lags"] = [f"{_clock_text(h)} {what}" for h, what in sim.lags]
        if linger is not None:
            linger(report, service.first)
        return report
    finally:
        stopping.set()
        for courier in couriers:
            courier.watch.abort()
        _all_at_once([van.stop for van in vans] + ([points.close] if points else []))
        for s in scanners + gnss_sims:
            s.close()
        for link in links:
            link.stop()
        service.stop()
        receiver.close()
        broker.stop()
        if pg is not None:
            pg.stop()
        if tmp is not None:
            tmp.cleanup()


class _VanHandle:
    """The courier's view of a van (simulators.delivery_day.VanLike)."""

    def __init__(self, van: Any) -> None:
        self._van = van
        self.journal = van.journal

    def courier(self, doc: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._van.courier(doc)
        return result

    def manifest(self) -> Any:
        if self._van.round is None:
            return None
        # status() waits for a manifest the van is applying: its `manifest_applied` event is
        # committed (and seen by the courier) a moment before the round takes the manifest up.
        self._van.round.status()
        return self._van.round.manifest


def _plan_disturbances(
    plan: DayPlan,
    rng: random.Random,
    scheduler: _Scheduler,
    names: Sequence[str],
    scanners: Sequence[Any],
    links: Sequence[Any],
    receiver: Any,
) -> list[tuple[str, float, float]]:
    """Smudged labels, line noise and dead zones for each van; the webhook receiver's outage.

    Returns the dead zones: (van, hour the link is cut, hour it is restored).
    """
    from simulators.parcels import smudged_s10

    cuts: list[tuple[str, float, float]] = []
    for name, scanner, link in zip(names, scanners, links, strict=True):
        for _ in range(int(plan.parcels_per_van * plan.smudged_share) + 1):
            bad = smudged_s10(rng)
            scheduler.at(
                rng.uniform(8.5, DAY_END_H - 1),
                name,
                "smudged",
                partial(scanner.scan, bad.data, aim=bad.aim),
            )
        for _ in range(int(plan.parcels_per_van * plan.noise_share) + 1):
            noise_rng = random.Random(rng.getrandbits(32))
            scheduler.at(
                rng.uniform(8.5, DAY_END_H - 1),
                name,
                "noise",
                partial(_line_noise, scanner, noise_rng),
            )
        for _ in range(rng.randint(*plan.dead_zones_per_van)):
            start_h = rng.uniform(DAY_START_H + 1.0, DAY_END_H - 2.0)
            length_h = rng.uniform(10, 60) / 60
            mode = "reset" if rng.random() < 0.5 else "blackhole"
            scheduler.at(start_h, name, f"cut ({mode})", partial(link.cut, mode))
            scheduler.at(start_h + length_h, name, "restore", link.restore)
            cuts.append((name, start_h, start_h + length_h))
    down, up = plan.webhook_outage_h
    scheduler.at(down, "webhooks", "receiver down", partial(receiver.down, "refuse"))
    scheduler.at(up, "webhooks", "receiver up", receiver.up)
    return cuts


def _all_done(threads: Sequence[threading.Thread]) -> bool:
    return not any(t.is_alive() for t in threads)


def _quiesce(
    vans: Sequence[Any], lockers: Any, service: Any, *, deadline: float, webhooks: bool = True
) -> None:
    """Drain every device and let the depot act on it, until nothing moves any more.

    The depot's reaction to the last events can itself make a device write (a van applying
    an updated manifest), so one drain is not enough.
    """
    while time.monotonic() < deadline:
        for van in vans:
            van.uplink.wait_acked(van.journal.last_seq, max(0.1, deadline - time.monotonic()))
            van.uplink.wait_photos_sent(max(0.1, deadline - time.monotonic()))
        if lockers is not None:
            lockers.drain(deadline)
        _settle(service, deadline=deadline, webhooks=webhooks)
        time.sleep(0.2)  # a manifest or command the depot just sent, arriving at its device
        journals = [van.journal for van in vans]
        if lockers is not None:
            journals += [journal for _name, journal in lockers.journals]
        if all(j.acked_seq == j.last_seq for j in journals) and service.settled(
            webhooks=webhooks
        ):
            return


def _settle(service: Any, *, deadline: float, webhooks: bool = True) -> None:
    """Let the depot project the last events and send every notification it owes."""
    while time.monotonic() < deadline:
        service.wake()
        if service.settled(webhooks=webhooks):
            return
        service.wake_webhooks()
        time.sleep(0.1)


def _all_at_once(calls: Sequence[Callable[[], object]]) -> None:
    """Run `calls` on threads of their own; raise the first error once all have ended."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _locker_device(setup: Any) -> Any:
    """The real locker software for one simulated locker (a LockerSetup of locker_day)."""
    from drivers.lockboard import BoardConfig
    from edge.locker_config import CompartmentSpec, LockerConfig
    from edge.locker_device import LockerDevice

    config = LockerConfig(
        device_id=setup.name,
        journal=setup.journal,
        lockboard_port=setup.lockboard_port,
        boards=[BoardConfig(board) for board in range(setup.boards)],
        compartments=[CompartmentSpec(c.id, c.board, c.lock, c.size) for c in setup.compartments],
        hold_s=setup.hold_s,
        door_open_alarm_s=setup.door_open_alarm_s,
        jam_timeout_s=setup.jam_timeout_s,
        poll_interval_s=setup.poll_interval_s,
        courier_badges=setup.courier_badges,
        depot_sealing_key=setup.depot_sealing_key,
        command_keys=[setup.command_key],
        broker=setup.broker,
        sync=dict(setup.sync),
    )
    return LockerDevice(config, setup.display, clock=setup.clock)


def _counter_device(setup: Any) -> Any:
    """The real counter software for one simulated counter (a CounterSetup of counter_day):
    no staff socket, the simulated staff use its screen's lines (`counter.staff`)."""
    from edge.counter import CounterDevice
    from edge.counter_config import CounterConfig

    config = CounterConfig(
        device_id=setup.name,
        journal=setup.journal,
        shelves=setup.shelves,
        hold_s=setup.hold_s,
        # A parcel whose reservation lapsed (a short hold, the night) is still taken in while
        # there is room, as a locker takes it: the depot learns of it from the deposit.
        walk_in=True,
        courier_badges=setup.courier_badges,
        depot_sealing_key=setup.depot_sealing_key,
        command_keys=[setup.command_key],
        scanner_port=setup.scanner_port,
        broker=setup.broker,
        sync=dict(setup.sync),
    )
    return CounterDevice(config, setup.display, clock=setup.clock)


def _returns_desk(
    plan: DayPlan,
    service: Any,
    receiver: Any,
    lockers: Any,
    world: dict[str, Any],
    import_rows: Sequence[Mapping[str, Any]],
    scheduler: _Scheduler,
    hour: Callable[[], float],
) -> Any:
    """The customers who send a delivered parcel back (simulators.returns_day), with the API
    token the shops' returns desks use, made as an operator makes one (`depot token add`)."""
    from depot.web.auth import add_token
    from simulators.returns_day import ReturnsDesk

    if service.api is None:
        raise SimulatorError("the depot has no web port for the shops' returns desks")
    told = {str(r["parcel"]) for r in import_rows if r.get("customer_webhook")}
    return ReturnsDesk(
        seed=plan.seed,
        share=plan.return_share,
        api_url=service.api.url,
        api_token=add_token(service.database, "shops-returns-desk"),
        receiver=receiver,
        lockers=lockers,
        lockers_at={
            site.name: (site.lat, site.lon) for site in service.config.lockers
            if site.kind == "locker"
        },
        world=world,
        # Customers who gave the shop a way to be told (the import's column, label as printed).
        hooked={p for p, home in world.items() if home.label.data.replace("\x1d", "<GS>") in told},
        schedule=scheduler.at,
        hour=hour,
    )


def _progress_line(
    h: float, names: list[str], vans: list[Any], links: list[Any], lockers: Any = None
) -> str:
    parts = []
    for name, van, link in zip(names, vans, links, strict=True):
        state = "dead zone" if link.is_cut else ("online" if van.uplink.connected else "offline")
        status = van.round.status() if van.round is not None else {}
        counts = status.get("parcels", {})
        if status.get("current_stop"):
            where = f"stop {status['current_stop']}/{status.get('stops', 0)}"
        else:
            phase = str(status.get("phase") or "")
            where = _PHASE_WORDS.get(phase, phase.replace("_", " ") or "no round")
        unsent = van.journal.unacked
        parts.append(
            f"{name} {where}, {counts.get('delivered', 0)} delivered, "
            + (f"{unsent} unsent, " if unsent else "")
            + state
        )
    if lockers is not None:
        parts += lockers.progress()
    return _pack(f"{_clock_text(h)}  ", parts)


# A van's round phase (edge.delivery) as the progress lines say it, when it is at no stop.
_PHASE_WORDS = {
    "idle": "waiting for its manifest",
    "loading": "loading",
    "on_route": "on the road",
    "returning": "back at the depot",
    "closed": "day closed",
}


# A van's round is open from its first load or its departure until it ends or closes the day.
ROUND_OPENS = frozenset({"parcel_loaded", "departed"})
ROUND_CLOSES = frozenset({"round_ended", "day_closed"})


def _standstills(
    van: str,
    day: int,
    moments: Sequence[tuple[float, str]],
    *,
    until_h: float,
    dead_zones: Sequence[tuple[float, float]],
    lags: Sequence[tuple[float, str]],
) -> list[str]:
    """A sentence for each time `van` recorded nothing for more than STANDSTILL_H simulated
    hours while its round was open, saying why when the run knows.

    `moments`: (hour of the day, event kind) of the van's events of the day, in journal order;
    `until_h`: the hour the day ended; `dead_zones`: (from, to) hours the van's link was cut;
    `lags`: (hour, what lagged) of the day, as _SimTime noted them.
    """
    out = []
    is_open = False
    last_h: float | None = None
    for h, kind in [*moments, (until_h, "")]:
        if is_open and last_h is not None and h - last_h > STANDSTILL_H:
            why = [
                f"its link was in a dead zone from {_clock_text(a)} to {_clock_text(b)}"
                for a, b in dead_zones
                if a < h and b > last_h
            ]
            if kind == "manifest_applied":
                why.append("it was waiting for the depot's updated manifest")
            why += [
                f"at {_clock_text(at)} time ran on without it ({what.split(': ', 1)[-1]})"
                for at, lagged in lags
                if last_h <= at <= h
                for what in lagged.split("; ")
                if what.startswith(f"{van}: ")
            ]
            until = _clock_text(h) if kind else f"the end of the day ({_clock_text(h)})"
            out.append(
                f"{van} stood still from {_clock_text(last_h)} to {until} on day {day}, "
                "during its round: "
                + ("; ".join(why) if why else "the simulation does not know why")
                + "."
            )
        if kind in ROUND_OPENS:
            is_open = True
        elif kind in ROUND_CLOSES:
            is_open = False
        last_h = h
    return out


FINAL_STATES = ("delivered", "picked_up", "returned_to_sender")


def _pod_complete(pod: Mapping[str, Any]) -> bool:
    """A delivery's proof is complete with the scan at the door or the courier's reason for
    none (the van's own `not_scanned` is no reason), and a fix or the reason for none."""
    why_no_scan = pod.get("no_scan_reason")
    identified = bool(pod.get("scan")) or (
        isinstance(why_no_scan, str) and why_no_scan not in ("", "not_scanned")
    )
    why_no_fix = pod.get("no_fix_reason")
    located = isinstance(pod.get("fix"), dict) or (
        pod.get("no_fix") is True and isinstance(why_no_fix, str) and why_no_fix != ""
    )
    return identified and located


# A customer's return not yet dropped, or in its locker awaiting the van: where it should be.
ACCOUNTED = (
    *FINAL_STATES, "in_locker", "at_depot", "received", "return_booked", "return_dropped"
)


def _door_figures(service: Any, couriers: Sequence[Any], card_customers: Any) -> dict[str, Any]:
    """What happened at the doors, as the depot recorded it (`depot.outcomes`: handovers the
    vans refused for a parcel's care, deliveries that broke one, deliveries by method; the
    cards the vans left), and the couriers' and customers' own counts beside it to compare.

    `cards`: the depot's `card_figures` (left; used for a choice on the parcel's page)."""
    counters = [site.name for site in service.config.lockers if site.kind == "counter"]
    figures: dict[str, Any] = dict(service.book.outcome_counts(counters))
    refused: Counter[str] = Counter()
    for c in couriers:
        refused.update(c.tally.care_refused)
    figures["tried_forbidden"] = sum(c.tally.tried_forbidden for c in couriers)
    figures["cards"] = service.card_figures()
    figures["couriers_at_the_door"] = {
        "tried_forbidden": figures["tried_forbidden"],
        "refused_by_the_van": dict(sorted(refused.items())),
        "signed": sum(c.tally.signed for c in couriers),
        "id_checked": sum(c.tally.id_checked for c in couriers),
        "cards_written": sum(c.tally.cards for c in couriers),
        "returns_picked_up": sum(c.tally.picked_up for c in couriers),
        "returns_missed": sum(c.tally.pickups_missed for c in couriers),
    }
    figures["card_customers"] = card_customers.report()
    return figures


def _report(
    plan: DayPlan,
    names: list[str],
    vans: list[Any],
    feedbacks: list[_TallyFeedback],
    couriers: list[Any],
    links: list[Any],
    service: Any,
    receiver: Any,
    cuts: int,
    lockers: Any = None,
    *,
    sites: Any = None,
) -> dict[str, Any]:
    from depot.pickup import notices_sent
    from depot.webhooks import stats
    from simulators.locker_day import no_lockers

    store = service.store
    created: dict[str, tuple[str, int]] = {}
    per_van = {}
    confirmed_total = confirmed_at_depot = 0
    for name, van, fb, courier in zip(names, vans, feedbacks, couriers, strict=True):
        _prev, events = van.journal.read(0, 10**9)
        for e in events:
            created[e.uuid] = (name, e.seq)
        at_depot = {
            int(r[0])
            for r in store.query(
                "SELECT seq FROM events WHERE device=? AND journal=?",
                (name, van.journal.journal_id),
            )
        }
        confirmed_total += len(fb.confirmed_seqs)
        confirmed_at_depot += sum(1 for s in fb.confirmed_seqs if s in at_depot)
        t = courier.tally
        per_van[name] = {
            "events": van.journal.last_seq,
            "acked": van.journal.acked_seq,
            "loaded": t.loaded,
            "left_behind": len(t.left_behind),
            "wrong_van_scans_refused": f"{t.wrong_van_refused}/{t.wrong_van_scans}",
            "wrong_stop_scans_refused": f"{t.wrong_stop_refused}/{t.wrong_stop_scans}",
            "delivered": t.delivered,
            "failed": dict(sorted(t.failed.items())),
            "locker_drops": t.locker_drops,
            "collected_from_lockers": t.collected,
            "returned_to_depot": t.returned,
            "no_fix_stops": t.tunnel_stops,
            "far_stops": t.far_stops,
            "manifest_versions": t.manifest_versions,
            "tones": dict(sorted(fb.tones.items())),
            "refusals": dict(sorted(t.refusals.items())),
            "gave_up": dict(sorted(t.gave_up.items())),
            "reconnects": max(0, van.uplink.session.connects - 1),
            "resends": van.uplink.resends,
        }
    devices = [(name, van.journal) for name, van in zip(names, vans, strict=True)]
    if sites is not None:  # the lockers' and counters' journals
        devices += sites.journals
        for name, journal in sites.journals:
            _prev, events = journal.read(0, 10**9)
            for e in events:
                created[e.uuid] = (name, e.seq)
    depot_uuids = [str(r[0]) for r in store.query("SELECT uuid FROM events")]
    distinct = set(depot_uuids)
    lost = [u for u in created if u not in distinct]
    lost_detail = sorted({f"{created[u][0]}#{created[u][1]}" for u in lost})[:10]
    gaps_seen = int(str(store.query("SELECT count(*) FROM gaps")[0][0]))
    unfilled = store.missing_seqs() + sum(
        1 for name, journal in devices if store.head(name, journal.journal_id) < journal.last_seq
    )
    states = service.book.counts_by_state()
    parcels_total = sum(states.values())
    # First attempt: the first door outcome each parcel had (delivered or failed).
    outcomes = store.query(
        "SELECT kind, payload FROM events WHERE kind IN ('parcel_delivered','delivery_failed') "
        "ORDER BY wall_ns"
    )
    first: dict[str, str] = {}
    pods = []
    named_photos: set[str] = set()
    for kind, payload in outcomes:
        doc = json.loads(str(payload))
        first.setdefault(str(doc.get("parcel")), str(kind))
        pod = doc.get("pod") or {}
        if kind == "parcel_delivered":
            pods.append(pod)
        if isinstance(pod.get("photo"), dict):
            named_photos.add(str(pod["photo"]["sha256"]))
    # Every photo an event names is at the depot, and its bytes hash to that name.
    verified = 0
    for sha in named_photos:
        stored = store.photo(sha)
        if stored is not None and hashlib.sha256(stored[1]).hexdigest() == sha:
            verified += 1
    photo_bytes = store.query("SELECT coalesce(sum(size), 0), coalesce(max(size), 0) FROM photos")
    complete = sum(1 for p in pods if _pod_complete(p))
    scanned = sum(1 for p in pods if p.get("scan"))
    with service.database.reading() as conn:
        hooks = stats(conn)
        notices = notices_sent(conn)
    # A hold that ran out after its van's last chance to collect it that day waits in its
    # compartment for the next day's manifest: accounted for when the depot knows it expired
    # and has its collection planned.
    collections = service.collections_planned()
    awaiting_collection = sorted(
        p
        for p in (sites.expired_inside() if sites is not None else ())
        if (info := service.book.parcel(p)) is not None
        and info["state"] == "hold_expired"
        and info["next_action"] == "return_to_sender"
    )
    planned_awaiting = min(len(awaiting_collection), collections["open"])
    elsewhere = sum(n for state, n in states.items() if state not in ACCOUNTED)
    unaccounted = elsewhere - planned_awaiting
    report = {
        "vans": plan.vans,
        "seed": plan.seed,
        "parcels": dict(sorted(states.items())),
        "parcels_total": parcels_total,
        "first_attempt_success_rate": round(
            sum(1 for k in first.values() if k == "parcel_delivered") / len(first), 4
        )
        if first
        else None,
        "pod_complete_rate": round(complete / len(pods), 4) if pods else None,
        "pod_scanned_rate": round(scanned / len(pods), 4) if pods else None,
        "unaccounted_parcels": unaccounted,
        "pickup_notices_sent": notices,
        "alarms_open": service.alarms_open(),
        "collections_planned": collections["planned"],
        "collected_from_lockers": collections["collected"],
        "expired_awaiting_collection": planned_awaiting,
        "webhooks_sent": hooks["sent"],
        "webhooks_pending": hooks["pending"],
        "webhooks_duplicated": receiver.duplicates,
        "webhooks_dead_lettered": hooks["dead"],
        "webhook_bad_signatures": receiver.bad_signatures,
        "photos_named": len(named_photos),
        "photos_verified_at_depot": verified,
        "photos_missing": len(named_photos) - verified,
        # Samples of where the vans were on their rounds (`van_positions`, for the ETA).
        "positions_stored": int(str(store.query("SELECT count(*) FROM van_positions")[0][0])),
        "photo_bytes_at_depot": int(str(photo_bytes[0][0])),
        "photo_largest_bytes": int(str(photo_bytes[0][1])),
        "decisions": dict(Counter(d.kind for _p, d in service.decisions)),
        "events_created": len(created),
        "events_at_depot": len(depot_uuids),
        "events_lost": len(lost),
        "events_lost_detail": lost_detail,
        "duplicates": len(depot_uuids) - len(distinct),
        "gaps": unfilled,
        "gaps_detected_and_refilled": gaps_seen,
        "confirmed_to_courier": confirmed_total,
        "confirmed_at_depot": confirmed_at_depot,
        "dead_zones": cuts,
        "quarantined": service.quarantined,
        "database": service.database.dialect,
        "workers": len(service.all),
        "wire_bytes_up": sum(link.bytes_up for link in links),
        "per_van": per_van,
        "lockers": lockers.report(store) if lockers is not None else no_lockers(),
    }
    report["ok"] = (
        report["events_lost"] == 0
        and report["duplicates"] == 0
        and report["gaps"] == 0
        and unaccounted == 0
        and report["webhooks_duplicated"] == 0
        and hooks["pending"] == 0
        and report["photos_missing"] == 0
    )
    return report


# How the summary says a parcel's state (depot.tracking) and a decision (depot.policy).
_STATE_WORDS = {
    "picked_up": "picked up at a locker or counter",
    "returned_to_sender": "returned to sender",
    "in_locker": "in a locker or at a counter",
    "at_depot": "back at the depot",
    "received": "at the depot, never loaded",
    "hold_expired": "expired in a locker",
    "out_for_delivery": "out for delivery",
    "return_booked": "customers' returns booked, not yet dropped or handed over",
    "return_dropped": "customers' returns in a locker",
}
_METHOD_WORDS = {
    "recipient": "to the recipient",
    "neighbour": "to a neighbour",
    "safe_place": "at a safe place",
    "signature": "signed for",
    "locker": "from a locker",
    "counter": "at a counter",
}
_DECISION_WORDS = {
    "locker": "to a locker",
    "second_attempt": "to a second attempt",
    "return_to_sender": "back to the sender",
}


def _print_summary(r: dict[str, Any]) -> None:
    lines = [
        "",
        f"Simulated delivery, {_n(r['vans'], 'van')}, seed {r['seed']}, "
        f"{_n(len(r['days']), 'day')} ({r['broker']}, {r['real_seconds']} s real time)",
        f"  import: {_n(r['import']['received'], 'parcel')}, "
        f"{_n(r['import']['refused'], 'row')} refused",
    ]
    for name, v in r["per_van"].items():
        failed = sum(v["failed"].values())
        lines.append(
            f"  {name}: loaded {v['loaded']} ({v['left_behind']} left behind), delivered "
            f"{v['delivered']}, failed {failed}"
            + (f" ({_counted(v['failed'])})" if failed else "")
            + f", dropped at lockers {v['locker_drops']}, collected from lockers "
            f"{v['collected_from_lockers']}, returned to the depot {v['returned_to_depot']}; "
            f"manifest versions {', '.join(map(str, v['manifest_versions'])) or 'none'}; "
            f"refused scans: wrong van {v['wrong_van_scans_refused'].replace('/', ' of ')}, "
            f"wrong stop {v['wrong_stop_scans_refused'].replace('/', ' of ')}; "
            f"{_n(v['events'], 'event')}"
        )
    lk = r["lockers"]
    if lk["count"]:
        lines.append(
            f"  lockers: {_n(lk['dropoffs'], 'drop-off')}, {lk['reservations']} reserved by the "
            f"depot, {_n(lk['pickups'], 'pickup')}, {_n(lk['holds_extended'], 'hold')} "
            f"extended, {lk['expired']} expired, {lk['returned']} returned; "
            f"{_n(r['pickup_notices_sent'], 'pickup notice')} sent"
        )
    cr = r.get("customer_returns") or {}
    if cr.get("booked"):
        lines.append(
            f"  customers' returns: {cr['booked']} booked, {cr['dropped']} dropped at a locker, "
            f"{cr.get('at_door', 0)} handed to a courier at the door, "
            f"{cr['collected']} collected by a van, {cr['at_depot']} back at the depot"
        )
    for name, c in (r.get("counter") or {}).items():
        lines.append(
            f"  {name}: {_n(c['checked_in'], 'parcel')} checked in, {c['handed_out']} handed "
            f"out ({_counted(c['handed_out_by'])}), {c['expired']} expired, "
            f"{c['returned']} given back to a courier"
        )
    if "deliveries_by_method" in r:
        cards = r["cards"]
        lines.append(
            f"  at the door: delivered {_counted(r['deliveries_by_method'], _METHOD_WORDS)}; "
            f"{_n(r['preference_refusals'], 'handover')} refused for the customer's wishes "
            f"(couriers tried {r['tried_forbidden']} forbidden), "
            f"{_n(r['preference_violations'], 'violation')}; {_n(cards['left'], 'card')} "
            f"left, {cards['used_on_page']} used on the card page"
        )
    order = [*ACCOUNTED, *sorted(set(r["parcels"]) - set(ACCOUNTED))]
    lines += [
        "  parcels: "
        + _counted({s: r["parcels"].get(s, 0) for s in order}, _STATE_WORDS)
        + f"; {r['unaccounted_parcels']} unaccounted",
        f"  decisions after failures: {_counted(r['decisions'], _DECISION_WORDS)}",
        f"  first-attempt success {_rate(r['first_attempt_success_rate'])}, proof of delivery "
        f"complete {_rate(r['pod_complete_rate'])} (scanned {_rate(r['pod_scanned_rate'])}); "
        f"collections from lockers planned "
        f"{r['collections_planned']}, done {r['collected_from_lockers']}, "
        f"{r['expired_awaiting_collection']} expired awaiting the next day's; "
        f"{_n(r['alarms_open'], 'alarm')} open",
        f"  webhooks: {r['webhooks_sent']} sent, {r['webhooks_duplicated']} duplicated, "
        f"{r['webhooks_dead_lettered']} dead-lettered, {r['webhooks_pending']} pending",
        f"  photos: {r['photos_named']} named by events, {r['photos_verified_at_depot']} at the "
        f"depot with a matching SHA-256, largest {r['photo_largest_bytes']} bytes",
        f"  events created {r['events_created']}, at depot {r['events_at_depot']}, "
        f"lost {r['events_lost']}, duplicates {r['duplicates']}, gaps {r['gaps']}",
    ]
    if r["lags"]:
        lines.append("  time ran on without a device that lagged: " + "; ".join(r["lags"]))
    lines.append(
        "  OK: every event exactly once, every parcel accounted for" if r["ok"] else "  FAILED"
    )
    print(_fit("\n".join(lines)))
    sys.stdout.flush()
