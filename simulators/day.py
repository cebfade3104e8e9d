"""The simulated delivery day: a depot, a real broker, vans with scanners on pseudo-terminals.

Each van's scanner is a pseudo-terminal fed a day of parcel scans (loading in the morning, a
scan at every stop, now and then a smudged label or line noise); each van reaches the broker
through a link simulator that drops it into dead zones for stretches of the day. Simulated
time runs `--speed` times faster than real time. At the end every link is restored, the vans
drain, and the run reports whether every event the vans created reached the depot exactly once.

With `--lockers M` (default 1) about one stop in ten is a failed door attempt: the courier takes
the parcel to a parcel locker, the real locker software on simulated lock boards, where
customers collect it with the code the depot received sealed, and faults are injected
(simulators/locker_day.py). The lockers' events count in the exactly-once checks too.

This module imports only the standard library at import time: `lastmile --help` must not pay
for paho, SQLite or pseudo-terminals.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from simulators.errors import SimulatorError

if TYPE_CHECKING:
    from simulators.locker_day import LockerDeviceLike, LockerSetup

DAY_START_H = 7.0
DAY_END_H = 18.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vans", type=int, default=3, help="number of vans (default 3)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the day (default 1)")
    p.add_argument("--parcels", type=int, default=100, help="parcels per van (default 100)")
    p.add_argument(
        "--lockers",
        type=int,
        default=1,
        help="parcel lockers that take failed deliveries (default 1; 0: none)",
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
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress")


def run_from_args(args: argparse.Namespace) -> int:
    report = run_day(
        DayPlan(
            vans=args.vans,
            seed=args.seed,
            parcels_per_van=args.parcels,
            lockers=args.lockers,
            speed=args.speed,
            broker=args.broker,
        ),
        workdir=args.workdir,
        progress=None if args.json else _print_progress,
    )
    if args.json:
        print(json.dumps(report, indent=None))
    else:
        _print_summary(report)
    ok = report["events_lost"] == 0 and report["duplicates"] == 0 and report["gaps"] == 0
    return 0 if ok else 1


@dataclass(frozen=True)
class DayPlan:
    vans: int = 3
    seed: int = 1
    parcels_per_van: int = 100
    speed: float = 2400.0
    smudged_share: float = 0.03
    noise_share: float = 0.02
    dead_zones_per_van: tuple[int, int] = (2, 4)
    lockers: int = 1
    redirect_share: float = 0.10  # stop scans that are failed door attempts, taken to a locker
    locker_hold_h: float = 3.0  # simulated hours a parcel waits in a locker before it expires
    broker: Literal["auto", "mosquitto", "embedded"] = "auto"


@dataclass(order=True)
class _Action:
    at_h: float
    order: int
    what: str = field(compare=False)
    device: str = field(compare=False)
    run: Callable[[], object] = field(compare=False)


@dataclass
class _Tally:
    confirmed: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TallyFeedback:
    """The courier's beeper of one simulated van: remembers what the courier was told."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally

    def confirmed(self, event: Any) -> None:
        with self.tally.lock:
            self.tally.confirmed.append(event.seq)

    def refused(self, reason: str, raw: str) -> None:
        with self.tally.lock:
            self.tally.refused.append(reason)


def _line_noise(scanner: Any, rng: random.Random) -> None:
    """A burst of garbage on the serial line, ended by a line break (a glitch, then quiet).

    Without the break the next real scan would arrive glued to the garbage long before the
    framer's real-time stale timeout, because simulated minutes pass in milliseconds.
    """
    scanner.noise(24, rng)
    scanner.write_raw(b"\r\n")


def _print_progress(line: str) -> None:
    print(line, flush=True)


def _clock_text(h: float) -> str:
    return f"{int(h):02d}:{int(h * 60) % 60:02d}"


def run_day(
    plan: DayPlan, *, workdir: Path | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one simulated day and return the figures of the report."""
    from edge.van import Van, VanConfig
    from simulators.broker import start_broker
    from simulators.link import LinkProxy
    from simulators.parcels import random_label, smudged_s10
    from simulators.scanner import SimulatedScanner
    from sync.clock import ScaledClock
    from sync.depot import Depot, DepotStore
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
    day_start_wall_ns = int(1_795_000_000e9)  # a weekday morning; only order and spacing matter
    lockers = None
    if plan.lockers > 0:
        from simulators.locker_day import LockerDay

        lockers = LockerDay(
            plan.lockers,
            seed=plan.seed,
            speed=plan.speed,
            hold_h=plan.locker_hold_h,
            redirect_share=plan.redirect_share,
        )
        passwords.update(lockers.passwords)  # the broker needs an account per locker too
    broker = start_broker(workdir / "broker", passwords, kind=plan.broker, tls=True)
    # Devices pin the broker's CA, as in the field (the embedded demo broker has no TLS).
    tls_ca = str(broker.ca_file) if broker.ca_file is not None else None
    store = DepotStore(workdir / "depot.db")
    depot_user, depot_pw = broker.depot_credentials
    depot = Depot(
        store,
        BrokerAddress(
            broker.host, broker.port, depot_user, depot_pw, mqtt5=broker.mqtt5, tls_ca=tls_ca
        ),
    )
    depot.start()
    say(
        f"broker on {broker.host}:{broker.port} ({type(broker).__name__}"
        f"{', TLS' if tls_ca else ', plain TCP'}), depot started, "
        f"{plan.vans} vans, {plan.lockers} lockers, seed {plan.seed}"
    )

    vans: list[Van] = []
    scanners: list[SimulatedScanner] = []
    links: list[LinkProxy] = []
    tallies: list[_Tally] = []
    actions: list[_Action] = []
    stops: list[Any] = []  # (van, label, hour) of every stop scan, for the lockers' script
    sync_settings = {
        "ack_timeout_s": 3.0,
        "keepalive_s": 5,
        "backoff_min_s": 0.2,
        "backoff_max_s": 2.0,
    }
    order = 0
    cuts_planned = 0
    try:
        for name in names:
            link = LinkProxy(broker.host, broker.port, name=name)
            link.start()
            links.append(link)
            scanner = SimulatedScanner(workdir / f"{name}.tty")
            scanners.append(scanner)
            tally = _Tally()
            tallies.append(tally)
            clock = ScaledClock(
                day_start_wall_ns + int(DAY_START_H * 3600e9),
                plan.speed,
                boot_id=f"boot-{name}-{plan.seed}",
            )
            config = VanConfig(
                device_id=name,
                journal=workdir / f"{name}.journal.db",
                scanner_port=str(scanner.path),
                broker=BrokerAddress(
                    "127.0.0.1",
                    link.port,
                    name,
                    passwords[name],
                    mqtt5=broker.mqtt5,
                    tls_ca=tls_ca,
                ),
                sync=dict(sync_settings),
            )
            van = Van(config, _TallyFeedback(tally), clock=clock)
            van.start()
            vans.append(van)

            # Morning: every parcel is scanned onto the van, then once at its stop.
            labels = [random_label(rng) for _ in range(plan.parcels_per_van)]
            load_h = [DAY_START_H + rng.uniform(0.05, 1.0) for _ in labels]
            stop_h = sorted(rng.uniform(8.5, DAY_END_H - 0.5) for _ in labels)
            for label, h1, h2 in zip(labels, sorted(load_h), stop_h, strict=True):
                for h in (h1, h2):
                    actions.append(
                        _Action(
                            h, order, "scan", name, partial(scanner.scan, label.data, aim=label.aim)
                        )
                    )
                    order += 1
                stops.append((name, label, h2))
            for _ in range(int(plan.parcels_per_van * plan.smudged_share) + 1):
                bad = smudged_s10(rng)
                actions.append(
                    _Action(
                        rng.uniform(8.5, DAY_END_H - 0.5),
                        order,
                        "smudged",
                        name,
                        partial(scanner.scan, bad.data, aim=bad.aim),
                    )
                )
                order += 1
            for _ in range(int(plan.parcels_per_van * plan.noise_share) + 1):
                seed = rng.getrandbits(32)
                actions.append(
                    _Action(
                        rng.uniform(8.5, DAY_END_H - 0.5),
                        order,
                        "noise",
                        name,
                        partial(_line_noise, scanner, random.Random(seed)),
                    )
                )
                order += 1
            # Dead zones: stretches of 10 to 90 minutes without a link, some as a reset,
            # some as a black hole where the radio just stops answering.
            for _ in range(rng.randint(*plan.dead_zones_per_van)):
                start_h = rng.uniform(DAY_START_H + 0.5, DAY_END_H - 2.0)
                length_h = rng.uniform(10, 90) / 60
                mode: Literal["reset", "blackhole"] = "reset" if rng.random() < 0.5 else "blackhole"
                actions.append(
                    _Action(start_h, order, f"cut ({mode})", name, partial(link.cut, mode))
                )
                actions.append(
                    _Action(start_h + length_h, order + 1, "restore", name, link.restore)
                )
                order += 2
                cuts_planned += 1
        # Overlapping cuts of one van are fine: a restore ends whatever cut is on.
        heapq.heapify(actions)
        for name, van in zip(names, vans, strict=True):
            if not van.scanner_ready.wait(10):
                raise SimulatorError(f"{name}'s scanner port never opened")
        if lockers is not None:
            from simulators.locker_day import DoorStop

            # Started last, so their clocks start closest to the scheduler's.
            lockers.start(
                _locker_device,
                workdir=workdir,
                broker_host=broker.host,
                broker_port=broker.port,
                mqtt5=broker.mqtt5,
                tls_ca=tls_ca,
                depot=depot,
                store=store,
                wall_start_ns=day_start_wall_ns + int(DAY_START_H * 3600e9),
                vans=names,
                sync=sync_settings,
            )
            for at_h, device, what, run in lockers.schedule(
                [DoorStop(van, label, h) for van, label, h in stops]
            ):
                heapq.heappush(actions, _Action(at_h, order, what, device, run))
                order += 1
            say(
                f"{len(lockers.lockers)} lockers ready; "
                f"{sum(len(s.redirects) for s in lockers.scripts)} parcels will go to them"
            )
        real0 = time.monotonic()
        next_report_h = DAY_START_H + 1
        sleeper = threading.Event()
        while actions:
            action = heapq.heappop(actions)
            due = real0 + (action.at_h - DAY_START_H) * 3600 / plan.speed
            delay = due - time.monotonic()
            if delay > 0:
                sleeper.wait(delay)
            while action.at_h >= next_report_h:
                say(_progress_line(next_report_h, names, vans, links, lockers))
                next_report_h += 1
            action.run()
        if lockers is not None:
            lockers.end_of_day()  # the last customers leave; the lockers' controllers stop
        for link in links + (lockers.links if lockers is not None else []):
            link.restore()
        say(f"{_clock_text(DAY_END_H)} day over; links restored, devices draining to the depot")
        drain_deadline = time.monotonic() + 60
        for van in vans:
            van.uplink.wait_acked(van.journal.last_seq, max(0.1, drain_deadline - time.monotonic()))
        if lockers is not None:
            lockers.drain(drain_deadline)
        report = _report(plan, names, vans, tallies, links, store, depot, cuts_planned, lockers)
        report["broker"] = type(broker).__name__
        report["tls"] = tls_ca is not None
        report["real_seconds"] = round(time.monotonic() - started, 2)
        return report
    finally:
        # Each device's MQTT thread takes up to a second to notice it should stop: stop them
        # all at once rather than one after another.
        _all_at_once([van.stop for van in vans] + ([lockers.close] if lockers else []))
        for scanner in scanners:
            scanner.close()
        for link in links:
            link.stop()
        depot.stop()
        store.close()
        broker.stop()
        if tmp is not None:
            tmp.cleanup()


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


def _locker_device(setup: LockerSetup) -> LockerDeviceLike:
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


def _progress_line(
    h: float, names: list[str], vans: list[Any], links: list[Any], lockers: Any = None
) -> str:
    parts = []
    for name, van, link in zip(names, vans, links, strict=True):
        state = "dead zone" if link.is_cut else ("online" if van.uplink.connected else "offline")
        parts.append(f"{name} {van.journal.last_seq} events, {van.journal.unacked} unsent, {state}")
    if lockers is not None:
        parts += lockers.progress()
    return f"{_clock_text(h)}  " + " | ".join(parts)


def _report(
    plan: DayPlan,
    names: list[str],
    vans: list[Any],
    tallies: list[_Tally],
    links: list[Any],
    store: Any,
    depot: Any,
    cuts: int,
    lockers: Any = None,
) -> dict[str, Any]:
    from simulators.locker_day import no_lockers

    created: dict[str, tuple[str, int]] = {}
    per_van = {}
    confirmed_total = confirmed_at_depot = 0
    for name, van, tally in zip(names, vans, tallies, strict=True):
        _prev, events = van.journal.read(0, 10**9)
        for e in events:
            created[e.uuid] = (name, e.seq)
        at_depot = {
            str(r[0])
            for r in store.query(
                "SELECT seq FROM events WHERE device=? AND journal=?",
                (name, van.journal.journal_id),
            )
        }
        confirmed_total += len(tally.confirmed)
        confirmed_at_depot += sum(1 for s in tally.confirmed if str(s) in at_depot)
        per_van[name] = {
            "events": van.journal.last_seq,
            "acked": van.journal.acked_seq,
            "scans_confirmed": len(tally.confirmed),
            "scans_refused": len(tally.refused),
            "reconnects": max(0, van.uplink.session.connects - 1),
            "resends": van.uplink.resends,
            "noise_rejected": van.desk.noise_frames,
        }
    # The lockers' events are held to the same standard as the vans'.
    devices = [(name, van.journal) for name, van in zip(names, vans, strict=True)]
    if lockers is not None:
        devices += lockers.journals
        for name, journal in lockers.journals:
            _prev, events = journal.read(0, 10**9)
            for e in events:
                created[e.uuid] = (name, e.seq)
    depot_rows = store.query("SELECT uuid FROM events")
    depot_uuids = [str(r[0]) for r in depot_rows]
    distinct = set(depot_uuids)
    lost = [u for u in created if u not in distinct]
    gaps_seen = int(str(store.query("SELECT count(*) FROM gaps")[0][0]))
    unfilled = store.missing_seqs() + sum(
        1 for name, journal in devices if store.head(name, journal.journal_id) < journal.last_seq
    )
    return {
        "vans": plan.vans,
        "seed": plan.seed,
        "events_created": len(created),
        "events_at_depot": len(depot_uuids),
        "events_lost": len(lost),
        "duplicates": len(depot_uuids) - len(distinct),
        "gaps": unfilled,
        "gaps_detected_and_refilled": gaps_seen,
        "scans_confirmed": confirmed_total,
        "scans_confirmed_at_depot": confirmed_at_depot,
        "scans_refused": sum(len(t.refused) for t in tallies),
        "dead_zones": cuts,
        "quarantined": depot.quarantined,
        "wire_bytes_up": sum(link.bytes_up for link in links),
        "per_van": per_van,
        "lockers": lockers.report(store) if lockers is not None else no_lockers(),
    }


def _print_summary(r: dict[str, Any]) -> None:
    print()
    print(
        f"Simulated day, {r['vans']} vans, seed {r['seed']} ({r['broker']}, "
        f"{r['real_seconds']} s real time)"
    )
    for name, v in r["per_van"].items():
        print(
            f"  {name}: {v['scans_confirmed']} scans confirmed, {v['scans_refused']} refused, "
            f"{v['events']} events, {v['reconnects']} reconnects, {v['resends']} resends"
        )
    lk = r["lockers"]
    for name, v in lk["per_locker"].items():
        print(
            f"  {name}: {v['dropoffs']} drop-offs of {v['redirected']} redirected parcels, "
            f"{v['pickups']} pickups, {v['events']} events, {v['reconnects']} reconnects, "
            f"{v['resends']} resends"
        )
    if lk["count"]:
        alarms = ", ".join(f"{kind} {n}" for kind, n in lk["alarms"].items()) or "none"
        print(
            f"  lockers: {lk['dropoffs']} drop-offs ({lk['dropoffs_refused']} refused), "
            f"{lk['pickups']} pickups ({lk['pickups_by_code']} by code, {lk['pickups_by_qr']} "
            f"by QR), {lk['expired']} expired, {lk['returned']} returned; "
            f"{lk['wrong_code_attempts']} wrong codes, {lk['lockouts']} keypad lockouts; "
            f"forced doors {lk['forced_open_detected']} of {lk['forced_open_injected']} "
            f"detected; alarms: {alarms}"
        )
    print(
        f"  events created {r['events_created']}, at depot {r['events_at_depot']}, "
        f"lost {r['events_lost']}, duplicates {r['duplicates']}, gaps {r['gaps']}"
    )
    print(
        f"  confirmed scans at the depot: {r['scans_confirmed_at_depot']} of "
        f"{r['scans_confirmed']}; dead zones {r['dead_zones']}; "
        f"{r['wire_bytes_up']} bytes up the links"
    )
    verdict = (
        "OK" if r["events_lost"] == 0 and r["duplicates"] == 0 and r["gaps"] == 0 else "FAILED"
    )
    print(
        f"  {verdict}: every event exactly once at the depot" if verdict == "OK" else f"  {verdict}"
    )
    sys.stdout.flush()
