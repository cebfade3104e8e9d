"""A delivery day end to end: depot service, van, broker, ptys, journals, webhooks, HTTP.

Everything is real: Mosquitto (tests/conftest.py) with an account per device, the depot
service (depot.service) with its SQLite file, outboxes and HTTP API, the van software
(edge.van) with its journal, its scanner and GNSS receiver on pseudo-terminals and its uplink
through a link proxy the tests cut, and a webhook receiver over HTTP that checks signatures.
The courier's input goes in as the JSON lines the handheld's screen (the CLI's stdin) sends.
Waits are bounded waits on conditions, never sleeps that assume how long something takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import DepotService, PlanResult
from depot.webhooks import dead_letters, entry, stats
from drivers.scanner import DEFAULT_DEBOUNCE_S
from edge.delivery import FAR_M
from edge.van import Van, VanConfig
from parcel.identify import identify, s10_check_digit
from parcel.manifest import Manifest, Stop
from simulators.broker import Broker
from simulators.doorstep import write_doorstep_jpeg
from simulators.gnss import SimulatedGnss
from simulators.link import LinkProxy
from simulators.scanner import SimulatedScanner
from simulators.webhooks import WebhookReceiver
from sync.clock import Clock, ScaledClock
from sync.journal import Journal
from sync.signing import generate_keypair
from sync.wire import command_topic
from tests.conftest import address, depot_sql
from tests.web import client

ROOT = Path(__file__).resolve().parent.parent
DAY = "2026-11-21"
DEPOT = (52.3676, 4.9041)
M_PER_DEG_LAT = 111_195.0
FAST_SYNC = {"ack_timeout_s": 2.0, "keepalive_s": 2, "backoff_min_s": 0.1, "backoff_max_s": 0.5}
SECRETS = {
    "shop-a": b"whsec-shop-a-0123456789abcdef",
    "customer": b"whsec-customer-0123456789abcdef",
}
WAIT_S = 30.0  # the longest any single wait in these tests may take before it fails


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point `north_m` north and `east_m` east of (lat, lon); metres at city scale."""
    dlat = north_m / M_PER_DEG_LAT
    dlon = east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return round(lat + dlat, 6), round(lon + dlon, 6)


def scan_label(scanner: SimulatedScanner, raw: str) -> None:
    """Scan `raw` as a courier does: the same label again only after a pause, since the
    scanner driver drops a repeat of the previous read within DEFAULT_DEBOUNCE_S as the
    trigger being held (drivers/scanner.py)."""
    if scanner.history:
        last_at, last = scanner.history[-1]
        if last.endswith(raw.encode("latin-1") + b"\r\n"):
            time.sleep(max(0.0, last_at + 2 * DEFAULT_DEBOUNCE_S - time.monotonic()))
    scanner.scan(raw)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll `predicate` until it holds; fail with `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass(frozen=True)
class Parcel:
    """A parcel of the merchant's import file."""

    id: str
    lat: float
    lon: float
    address: str
    customer: bool = False  # the customer asked for notifications too
    # Where the customer allows a safe-place drop; None: they gave no word, so none is allowed
    # (the depot's default care, docs/DELIVERY.md).
    safe_place: str | None = None

    def row(self, receiver: WebhookReceiver) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "parcel": self.id,
            "recipient": f"R. {self.address.split()[0]}",
            "address": self.address,
            "lat": self.lat,
            "lon": self.lon,
            "merchant": "shop-a",
            "webhook": receiver.url("/merchant/shop-a"),
            "size": "S",
        }
        if self.customer:
            doc["customer_webhook"] = receiver.url("/customer")
        if self.safe_place is not None:
            doc["safe_place"] = True
            doc["safe_place_note"] = self.safe_place
        return doc


def at(
    n: int,
    north_m: float,
    east_m: float,
    address_: str,
    *,
    customer: bool = False,
    safe_place: str | None = None,
) -> Parcel:
    lat, lon = offset(*DEPOT, north_m, east_m)
    parcel_id = identify(s10(n)).id  # the canonical id, as the import will store it
    return Parcel(parcel_id, lat, lon, address_, customer, safe_place)


class Screen:
    """The courier's screen and beeper: every tone, text and fact the van told, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def tell(self, tone: str, say: str, facts: Mapping[str, Any]) -> None:
        with self.cond:
            self.lines.append((tone, say, dict(facts)))
            self.cond.notify_all()

    # What a van without the round would call; these tests never want it.
    def confirmed(self, event: Any) -> None:
        self.tell("ok", "confirmed (plain scan desk)", {"event": event.kind})

    def refused(self, reason: str, raw: str) -> None:
        self.tell("refuse", reason, {"raw": raw})

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait_for(
        self, event: str, *, after: int = 0, timeout: float = WAIT_S, **match: Any
    ) -> tuple[str, str, dict[str, Any]]:
        def find() -> tuple[str, str, dict[str, Any]] | None:
            for line in self.lines[after:]:
                facts = line[2]
                if facts.get("event") == event and all(facts.get(k) == v for k, v in match.items()):
                    return line
            return None

        with self.cond:
            found = self.cond.wait_for(find, timeout)
            assert found is not None, f"no {event} {match} on the screen: {self.lines[after:]}"
        return found


@dataclass
class VanRig:
    """One running van and the test's hands on its scanner, antenna and radio link."""

    name: str
    van: Van
    screen: Screen
    scanner: SimulatedScanner
    gnss: SimulatedGnss
    link: LinkProxy

    @property
    def journal(self) -> Journal:
        return self.van.journal

    @property
    def manifest(self) -> Manifest:
        assert self.van.round is not None and self.van.round.manifest is not None
        return self.van.round.manifest

    def do(self, do: str, **args: Any) -> dict[str, Any]:
        """One courier command as the screen sends it (a JSON line); it must be accepted."""
        reply = self.van.courier_line(json.dumps({"do": do, **args}))
        assert "error" not in reply, reply
        return reply

    def refused(self, do: str, **args: Any) -> dict[str, Any]:
        reply = self.van.courier_line(json.dumps({"do": do, **args}))
        assert "error" in reply, reply
        return reply

    def scan(self, raw: str, event: str, **match: Any) -> tuple[str, str, dict[str, Any]]:
        """Scan a label on the real scanner pty; wait for what the van made of it."""
        mark = self.screen.mark()
        scan_label(self.scanner, raw)
        return self.screen.wait_for(event, after=mark, raw=raw, **match)

    def events(self, kind: str | None = None) -> list[Any]:
        _prev, events = self.journal.read(0, 10**6)
        return [e for e in events if kind is None or e.kind == kind]

    def fix_becomes(self, where: tuple[float, float] | None) -> None:
        """Wait until the van's own GNSS reader reports `where` (None: no fix), with the
        epoch's GGA read too, so an outcome recorded now carries that fix and its accuracy."""

        def matches() -> bool:
            fix = self.van.gnss.current() if self.van.gnss is not None else None
            if where is None:
                return fix is None
            return (
                fix is not None
                and fix.accuracy_m is not None
                and abs(fix.lat - where[0]) < 1e-5
                and abs(fix.lon - where[1]) < 1e-5
            )

        wait_until(matches, f"the van's GNSS fix to become {where}")


class DeliveryDay:
    """The depot of one test, its webhook receiver, and the vans started against it."""

    def __init__(
        self,
        broker: Broker,
        tmp_path: Path,
        database: str,
        stack: contextlib.ExitStack,
        *,
        vans: Sequence[str],
        lockers: Sequence[LockerSiteConfig],
        clock: Clock | None,
        signing: bool,
        api: bool,
        backoff_s: tuple[float, float],
        max_attempts: int,
    ) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.stack = stack
        self.receiver = WebhookReceiver(SECRETS)
        stack.callback(self.receiver.close)
        self.db = database  # a SQLite file or a PostgreSQL URL: every test runs on both
        config = DepotConfig(
            database=self.db,
            lat=DEPOT[0],
            lon=DEPOT[1],
            vans=list(vans),
            broker=address(broker, "depot"),
            api=("127.0.0.1", 0) if api else None,
            webhook_secrets=dict(SECRETS),
            webhook_max_attempts=max_attempts,
            webhook_backoff_base_s=backoff_s[0],
            webhook_backoff_max_s=backoff_s[1],
            lockers=list(lockers),
        )
        key = generate_keypair()[0] if signing else None
        self.service = DepotService(config, clock=clock, signing_key_pem=key)
        self.service.start()
        stack.callback(self.service.stop)
        assert self.service.depot is not None and self.service.depot.session.wait_connected(10)
        self.rigs: list[VanRig] = []
        self._imports = 0

    @property
    def store(self) -> Any:
        return self.service.store

    def import_parcels(self, parcels: Sequence[Parcel]) -> None:
        self._imports += 1
        path = self.tmp_path / f"import-{self._imports}.json"
        path.write_text(json.dumps({"parcels": [p.row(self.receiver) for p in parcels]}))
        result = self.service.import_parcels(path)
        assert result.errors == [] and len(result.records) == len(parcels)

    def plan(self) -> PlanResult:
        return self.service.plan_day(DAY)

    def start_van(self, name: str) -> VanRig:
        link = LinkProxy(self.broker.host, self.broker.port, name=name)
        link.start()
        self.stack.callback(link.stop)
        scanner = SimulatedScanner(self.tmp_path / f"{name}.tty")
        self.stack.callback(scanner.close)
        gnss = SimulatedGnss(self.tmp_path / f"{name}.gnss", rate_hz=2.0, position=DEPOT)
        self.stack.callback(gnss.close)
        screen = Screen()
        van = Van(
            VanConfig(
                device_id=name,
                journal=self.tmp_path / f"{name}.journal.db",
                scanner_port=scanner.path,
                broker=address(self.broker, name, link.port),
                sync=dict(FAST_SYNC),
                round_enabled=True,
                gnss_port=gnss.path,
            ),
            screen,
        )
        van.start()
        self.stack.callback(van.stop)
        assert van.scanner_ready.wait(10), "the van never opened its scanner port"
        rig = VanRig(name, van, screen, scanner, gnss, link)
        self.rigs.append(rig)
        return rig

    def settle(self, timeout: float = WAIT_S) -> None:
        """Every van event acknowledged, projected and reacted to; every notice sent."""

        def quiet() -> bool:
            self.service.wake()
            return (
                all(r.journal.acked_seq == r.journal.last_seq for r in self.rigs)
                and self.service.settled()
            )

        wait_until(quiet, "the vans to drain and the depot to settle", timeout)

    def stored(self, kind: str, device: str = "van-1") -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT payload FROM events WHERE device=? AND kind=? ORDER BY seq", (device, kind)
        )
        return [json.loads(str(r[0])) for r in rows]

    def state(self, parcel: str) -> str:
        info = self.service.book.parcel(parcel)
        assert info is not None, parcel
        return str(info["state"])

    def outbox(self) -> dict[str, int]:
        with depot_sql(self.db) as conn:
            return stats(conn)

    def notified(self) -> dict[tuple[str, str], list[str]]:
        """(parcel, audience path) -> the states the receiver accepted, in arrival order."""
        out: dict[tuple[str, str], list[str]] = {}
        for r in self.receiver.received:
            if 200 <= r.status < 300 and isinstance(r.body, dict):
                out.setdefault((r.body["parcel"], r.path), []).append(r.body["state"])
        return out


@pytest.fixture
def open_day(
    broker: Broker, tmp_path: Path, depot_database: str
) -> Iterator[Callable[..., DeliveryDay]]:
    """Builds a depot with parcels imported and planned; stops everything at the end."""
    with contextlib.ExitStack() as stack:

        def make(
            parcels: Sequence[Parcel] = (),
            *,
            vans: Sequence[str] = ("van-1",),
            lockers: Sequence[LockerSiteConfig] = (),
            clock: Clock | None = None,
            signing: bool = False,
            api: bool = False,
            backoff_s: tuple[float, float] = (0.2, 1.0),
            max_attempts: int = 8,
            plan: bool = True,
        ) -> DeliveryDay:
            day = DeliveryDay(
                broker,
                tmp_path,
                depot_database,
                stack,
                vans=vans,
                lockers=lockers,
                clock=clock,
                signing=signing,
                api=api,
                backoff_s=backoff_s,
                max_attempts=max_attempts,
            )
            if plan:
                day.import_parcels(parcels)
                day.plan()
            return day

        yield make


def assert_exactly_once(store: Any, journal: Journal) -> None:
    """The depot holds this journal's events 1..N, each once, with the van's own uuids."""
    _prev, events = journal.read(0, 10**6)
    rows = store.query(
        "SELECT seq, uuid FROM events WHERE device=? AND journal=? ORDER BY seq",
        (journal.device_id, journal.journal_id),
    )
    assert [(int(r[0]), str(r[1])) for r in rows] == [(e.seq, e.uuid) for e in events]
    assert store.query("SELECT uuid FROM events GROUP BY uuid HAVING count(*) > 1") == []
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


def load_all(rig: VanRig) -> None:
    """The courier scans every manifest parcel into the van, deepest shelf first."""
    manifest = rig.manifest
    for parcel in sorted(manifest.parcels, key=lambda p: manifest.shelf_of(p) or 0):
        tone, _say, facts = rig.scan(parcel, "parcel_loaded")
        assert tone == "ok" and facts["shelf"] == manifest.shelf_of(parcel)


# --- 1. offline for the whole route -----------------------------------------------------------


def test_a_van_offline_for_its_whole_route_reports_every_fact_once_when_back(
    open_day: Callable[..., DeliveryDay],
) -> None:
    parcels = [
        at(11, 400, 0, "Damrak 1", customer=True),
        at(12, 400, 0, "Damrak 1"),
        at(13, 0, 700, "Dam 2", customer=True),
        at(14, -500, -300, "Rokin 3"),
    ]
    day = open_day(parcels)
    rig = day.start_van("van-1")
    tone, _say, applied = rig.screen.wait_for("manifest_applied")
    assert tone == "ok" and applied["version"] == 1 and applied["parcels"] == 4
    manifest = rig.manifest
    assert len(manifest.stops) == 3

    # The manifest is on the van: now the van drives out of coverage for the whole day.
    rig.link.cut("reset")
    wait_until(lambda: not rig.van.uplink.connected, "the van to lose its connection")
    acked_offline = rig.journal.acked_seq
    load_all(rig)
    departed = rig.do("depart")
    assert departed["event"] == "departed" and departed["missing"] == []
    delivered: list[str] = []
    failed: list[str] = []
    for stop in manifest.stops:
        arrived = rig.do("arrive", stop=stop.stop)
        assert arrived["event"] == "stop_arrived"
        for parcel in stop.parcels:
            tone, _say, _facts = rig.scan(parcel, "parcel_scanned_at_stop", stop=stop.stop)
            assert tone == "ok"
            if parcel == parcels[2].id:  # nobody at home at Dam 2
                reply = rig.do("fail", parcel=parcel, reason="not_at_home")
                assert reply["event"] == "delivery_failed" and reply["attempt"] == 1
                failed.append(parcel)
            else:
                reply = rig.do("deliver", parcel=parcel, to="recipient", name="A. Jansen")
                assert reply["event"] == "parcel_delivered"
                delivered.append(parcel)
            assert reply["pod"]["scan"] == parcel
    assert len(delivered) == 3 and len(failed) == 1
    # All of it is journaled on the van and none of it has reached the depot.
    assert rig.link.is_cut and rig.journal.acked_seq == acked_offline
    assert rig.journal.last_seq > acked_offline + 10
    assert day.stored("parcel_delivered") == [] and day.stored("departed") == []
    assert all(day.state(p.id) == "received" for p in parcels)

    rig.link.restore()
    assert rig.van.uplink.wait_acked(rig.journal.last_seq, WAIT_S)
    day.settle()

    assert_exactly_once(day.store, rig.journal)
    for parcel in delivered:
        assert day.state(parcel) == "delivered"
    (lost,) = failed
    info = day.service.book.parcel(lost)
    assert info is not None
    assert (info["state"], info["attempts"], info["last_reason"]) == (
        "attempted",
        1,
        "not_at_home",
    )
    # No locker near: the policy gives it a second attempt, decided exactly once.
    assert info["next_action"] == "second_attempt"
    assert [(p, d.kind) for p, d in day.service.decisions] == [(lost, "second_attempt")]

    hooks = day.outbox()
    assert hooks["pending"] == 0 and hooks["dead"] == 0
    assert day.receiver.unique_events == hooks["sent"] > 0
    assert day.receiver.duplicates == 0 and day.receiver.bad_signatures == 0
    notified = day.notified()
    for p in parcels:
        final = "delivered" if p.id in delivered else "attempted"
        want = ["received", "out_for_delivery", final]
        assert notified[(p.id, "/merchant/shop-a")] == want, p.id
        assert notified.get((p.id, "/customer"), []) == (want if p.customer else [])


# --- 2. a manifest updated mid-route ----------------------------------------------------------


def test_a_failed_parcel_is_moved_to_a_locker_by_a_new_manifest_version_mid_route(
    open_day: Callable[..., DeliveryDay],
) -> None:
    first = at(21, 600, 0, "Damrak 1")
    # A locker only for a customer the depot can send the pickup code to.
    second = at(22, 600, 600, "Dam 2", customer=True)
    locker_at = offset(second.lat, second.lon, 250, 0)
    locker = LockerSiteConfig("locker-1", *locker_at, {"S": 2})
    day = open_day([first, second], lockers=[locker], signing=True)
    rig = day.start_van("van-1")
    rig.screen.wait_for("manifest_applied", version=1)
    v1 = rig.manifest
    assert [s.kind for s in v1.stops] == ["address", "address"]
    old_stop = v1.stop_of(second.id)
    assert old_stop is not None
    load_all(rig)
    rig.do("depart")
    rig.do("arrive", stop=old_stop)
    rig.scan(second.id, "parcel_scanned_at_stop")
    mark = rig.screen.mark()
    assert rig.do("fail", parcel=second.id, reason="not_at_home")["attempt"] == 1

    # The depot's policy picks the locker near the stop and sends version 2.
    _tone, _say, applied = rig.screen.wait_for("manifest_applied", after=mark, version=2)
    assert applied["off_manifest"] == [] and applied["stops"] == 3
    v2 = rig.manifest
    assert v2.version == 2
    locker_stop = v2.stop_of(second.id)
    assert locker_stop == 3 and v2.stop(3).kind == "locker" and v2.stop(3).locker == "locker-1"
    assert (v2.stop(3).lat, v2.stop(3).lon) == locker_at
    assert second.id not in v2.stop(old_stop).parcels
    assert v2.stop_of(first.id) == v1.stop_of(first.id)
    assert [(p, d.kind, d.locker) for p, d in day.service.decisions] == [
        (second.id, "locker", "locker-1")
    ]
    status = rig.do("status")
    assert status["version"] == 2 and status["current_stop"] == old_stop  # same place still
    wait_until(
        lambda: day.service.book.van_versions().get("van-1", {}).get("manifest_version") == 2,
        "the depot to hear that van-1 runs version 2",
    )
    assert [a["version"] for a in day.stored("manifest_applied")] == [1, 2]
    info = day.service.book.parcel(second.id)
    assert info is not None
    assert (info["state"], info["next_action"], info["locker"], info["stop"]) == (
        "attempted",
        "locker",
        "locker-1",
        locker_stop,
    )

    # An older and an equal version delivered again are ignored; a document for another van,
    # sent after them on the same topic, shows the van has read both.
    assert day.service.depot is not None
    client = day.service.depot.session.client
    stranger = Manifest(van="van-2", version=7, day=DAY, stops=(Stop(1, *DEPOT, parcels=()),))
    for body in (v1.to_json(), v2.to_json(), stranger.to_json()):
        info_ = client.publish(command_topic("van-1", "manifest"), body, qos=1)
        info_.wait_for_publish(10)
        assert info_.is_published()
    rig.screen.wait_for("manifest_rejected", reason="wrong_van")
    assert [e.payload["version"] for e in rig.events("manifest_applied")] == [1, 2]
    assert rig.manifest.version == 2 and rig.manifest.stop_of(second.id) == locker_stop
    assert rig.van.round is not None and rig.van.round.apply_manifest(v2.to_json()) is None

    # The courier finishes the first stop, then drops the parcel at the locker stop.
    rig.do("arrive", stop=v2.stop_of(first.id))
    rig.scan(first.id, "parcel_scanned_at_stop")
    rig.do("deliver", parcel=first.id, name="B. Bakker")
    rig.do("arrive", stop=locker_stop)
    rig.scan(second.id, "parcel_scanned_at_stop", stop=locker_stop)
    dropped = rig.do("drop", parcel=second.id)
    assert dropped["event"] == "parcel_dropped_at_locker" and dropped["locker"] == "locker-1"
    day.settle()
    assert_exactly_once(day.store, rig.journal)
    # The van's drop is a claim: the parcel is `in_locker` only once the locker says so.
    assert day.state(first.id) == "delivered" and day.state(second.id) == "attempted"
    claim = day.service.book.track(second.id)["timeline"][-1]
    assert (claim["step"], claim["details"]["locker"]) == ("dropped_at_locker", "locker-1")
    assert day.service.book.van_versions()["van-1"]["manifest_version"] == 2
    assert len(day.service.decisions) == 1


# --- 3. refused scans -------------------------------------------------------------------------


def test_scans_of_another_van_s_parcel_and_at_the_wrong_stop_are_refused_and_change_nothing(
    open_day: Callable[..., DeliveryDay],
) -> None:
    parcels = [
        at(31, 800, 0, "Noord 1"),
        at(32, 0, 800, "Oost 2"),
        at(33, -800, 0, "Zuid 3"),
        at(34, 0, -800, "West 4"),
    ]
    day = open_day(parcels, vans=("van-1", "van-2"))
    plan = day.service.current_manifest("van-2", DAY)
    assert plan is not None and plan.parcels
    strangers = plan.parcels
    rig = day.start_van("van-1")
    rig.screen.wait_for("manifest_applied")
    manifest = rig.manifest
    assert len(manifest.stops) == 2 and not set(manifest.parcels) & set(strangers)

    load_all(rig)
    before = rig.do("status")
    tone, say, facts = rig.scan(strangers[0], "load_refused")
    assert tone == "refuse" and "not on this van" in say
    assert (facts["reason"], facts["parcel"]) == ("unknown", strangers[0])
    assert rig.do("status") == before

    rig.do("depart")
    rig.do("arrive", stop=1)
    later = manifest.stop(2).parcels[0]
    tone, say, facts = rig.scan(later, "stop_scan_refused")
    assert tone == "wrong_stop" and "stop 2" in say
    assert (facts["reason"], facts["stop"], facts["due_stop"]) == ("not_this_stop", 1, 2)
    # Outcomes for it are refused here too; the parcel stays due at stop 2, unscanned.
    assert rig.refused("deliver", parcel=later, name="X")["reason"] == "not_this_stop"
    status = rig.do("status")
    assert status["due_here"] == list(manifest.stop(1).parcels)
    assert status["parcels"] == before["parcels"]
    assert rig.events("parcel_scanned_at_stop") == [] and rig.events("parcel_delivered") == []

    day.settle()
    assert_exactly_once(day.store, rig.journal)
    assert day.stored("load_refused") == [
        {"parcel": strangers[0], "raw": strangers[0], "reason": "unknown"}
    ]
    assert day.stored("stop_scan_refused") == [
        {"parcel": later, "raw": later, "stop": 1, "reason": "not_this_stop", "due_stop": 2}
    ]
    # At the depot the refusals moved nothing: van-2's parcel still waits for van-2.
    assert day.state(strangers[0]) == "received"
    steps = [e["step"] for e in day.service.book.track(strangers[0])["timeline"]]
    assert steps == ["received", "assigned"]
    assert day.state(later) == "out_for_delivery"


# --- 4. proof of delivery and the GNSS ------------------------------------------------------


def test_the_proof_of_delivery_says_no_fix_far_or_near_as_the_receiver_reports(
    open_day: Callable[..., DeliveryDay],
) -> None:
    # Their customers allow a safe place: the last stop's parcel is left there, photographed
    # (the route decides which parcel is last).
    parcels = [
        at(41, 500, 0, "Damrak 1", safe_place="in the porch"),
        at(42, 500, 900, "Dam 2", safe_place="in the porch"),
        at(43, 1200, 900, "Rokin 3", safe_place="behind the blue gate"),
    ]
    day = open_day(parcels)
    rig = day.start_van("van-1")
    rig.screen.wait_for("manifest_applied")
    manifest = rig.manifest
    assert len(manifest.stops) == 3
    load_all(rig)
    rig.do("depart")
    (p1,), (p2,), (p3,) = (s.parcels for s in manifest.stops)

    # Stop 1 in a tunnel: no fix at all.
    s1 = manifest.stop(1)
    rig.gnss.move_to(s1.lat, s1.lon)
    rig.gnss.tunnel(True)
    rig.fix_becomes(None)
    assert rig.do("arrive", stop=1)["fix"] is None
    rig.scan(p1, "parcel_scanned_at_stop")
    pod = rig.do("deliver", parcel=p1, name="A. Jansen")["pod"]
    assert (pod["fix"], pod["no_fix"], pod["distance_m"], pod["far"]) == (None, True, None, False)
    assert pod["scan"] == p1
    assert "no GNSS fix" in rig.screen.lines[-1][1] and rig.screen.lines[-1][0] == "warn"

    # Stop 2 with a fix 300 m away: far.
    s2 = manifest.stop(2)
    away = offset(s2.lat, s2.lon, 300, 0)
    rig.gnss.tunnel(False)
    rig.gnss.move_to(*away)
    rig.fix_becomes(away)
    rig.do("arrive", stop=2)
    rig.scan(p2, "parcel_scanned_at_stop")
    pod = rig.do("fail", parcel=p2, reason="not_at_home")["pod"]
    assert pod["no_fix"] is False and pod["far"] is True
    assert pod["distance_m"] > FAR_M and abs(pod["distance_m"] - 300) < 10
    assert pod["fix"]["lat"] == pytest.approx(away[0], abs=1e-5)

    # Stop 3 with a fix at the door: near, with the receiver's accuracy estimate.
    s3 = manifest.stop(3)
    rig.gnss.move_to(s3.lat, s3.lon)
    rig.fix_becomes((s3.lat, s3.lon))
    arrived = rig.do("arrive", stop=3)
    assert arrived["fix"]["lat"] == pytest.approx(s3.lat, abs=1e-5)
    rig.scan(p3, "parcel_scanned_at_stop")
    shot = write_doorstep_jpeg(rig.journal.path.parent / "IMG_43.jpg", seed=43)
    pod = rig.do("deliver", parcel=p3, to="safe_place", photo=str(shot))["pod"]
    assert pod["no_fix"] is False and pod["far"] is False and pod["distance_m"] < 5
    assert pod["fix"]["accuracy_m"] is not None and pod["fix"]["accuracy_m"] > 0
    assert pod["scan"] == p3 and pod["photo"]["bytes"] <= 100_000
    # The photo follows its event to the depot, which checks it against the event's hash.
    assert rig.van.uplink.wait_photos_sent(WAIT_S)
    stored = day.store.photo(pod["photo"]["sha256"])
    assert stored is not None and hashlib.sha256(stored[1]).hexdigest() == pod["photo"]["sha256"]

    # The depot keeps the same proof in the parcels' timelines.
    day.settle()
    assert_exactly_once(day.store, rig.journal)

    def depot_pod(parcel: str, step: str) -> dict[str, Any]:
        entries = day.service.book.track(parcel)["timeline"]
        (found,) = [e["details"]["pod"] for e in entries if e["step"] == step]
        return dict(found)

    assert depot_pod(p1, "delivered")["no_fix"] is True
    assert depot_pod(p2, "attempted")["far"] is True
    assert depot_pod(p3, "delivered")["far"] is False


# --- 5. the webhook receiver down for an hour -----------------------------------------------


def test_notifications_survive_a_receiver_down_for_an_hour_of_simulated_time(
    open_day: Callable[..., DeliveryDay],
) -> None:
    clock = ScaledClock(time.time_ns(), 3600.0, boot_id="depot-sim")  # an hour a second
    parcels = [at(51, 400, 0, "Damrak 1", customer=True), at(52, 0, 700, "Dam 2")]
    day = open_day(clock=clock, backoff_s=(60.0, 1800.0), max_attempts=40, plan=False)
    day.receiver.down("refuse")  # before the import: even "received" has to wait for it
    down_at = clock.wall_ns()
    day.import_parcels(parcels)
    day.plan()
    rig = day.start_van("van-1")
    rig.screen.wait_for("manifest_applied")
    load_all(rig)
    rig.do("depart")
    outcome: dict[str, str] = {}
    for stop in rig.manifest.stops:
        rig.do("arrive", stop=stop.stop)
        for parcel in stop.parcels:
            if stop.stop == 1:
                rig.scan(parcel, "parcel_scanned_at_stop")
                rig.do("deliver", parcel=parcel, name="C. Visser")
                outcome[parcel] = "delivered"
            else:
                rig.do("fail", parcel=parcel, reason="no_access")
                outcome[parcel] = "attempted"
    assert rig.van.uplink.wait_acked(rig.journal.last_seq, WAIT_S)
    wait_until(
        lambda: all(day.state(p) == s for p, s in outcome.items()),
        "the depot to record both outcomes",
    )

    def retried_for_an_hour() -> bool:
        day.service.wake()
        with depot_sql(day.db) as conn:
            tries = conn.execute("SELECT min(attempts) FROM webhook_outbox").fetchone()[0]
        return clock.wall_ns() - down_at >= 3600e9 and int(tries or 0) >= 2

    wait_until(retried_for_an_hour, "an hour of simulated retries")
    hooks = day.outbox()
    assert hooks["sent"] == 0 and hooks["dead"] == 0 and hooks["pending"] > 0
    assert day.receiver.received == []  # refused connections never reached it
    day.receiver.up()
    day.settle()

    hooks = day.outbox()
    assert hooks["pending"] == 0 and hooks["dead"] == 0
    assert day.receiver.unique_events == hooks["sent"]
    assert day.receiver.duplicates == 0 and day.receiver.bad_signatures == 0
    assert hooks["attempts"] > hooks["sent"]  # it took retries, not luck
    notified = day.notified()
    for p in parcels:
        want = ["received", "out_for_delivery", outcome[p.id]]
        assert sorted(notified[(p.id, "/merchant/shop-a")]) == sorted(want)
        assert sorted(notified.get((p.id, "/customer"), [])) == (sorted(want) if p.customer else [])
    with depot_sql(day.db) as conn:
        event_ids = [str(r[0]) for r in conn.execute("SELECT event_id FROM webhook_outbox")]
        rows = [entry(conn, e) for e in event_ids]
    assert all(r is not None and r.state == "sent" and r.attempts > 1 for r in rows)
    assert all(day.receiver.accepted(e) == 1 for e in event_ids)

    # A receiver that answers 410 Gone does not want it: dead-lettered, never retried.
    late = at(59, -400, 0, "Rokin 9")
    day.receiver.fail_next(1, 410)
    day.import_parcels([late])
    wait_until(lambda: day.outbox()["dead"] == 1, "the 410 to be dead-lettered")
    with depot_sql(day.db) as conn:
        (dead,) = dead_letters(conn)
    assert dead.status_code == 410 and dead.attempts == 1 and dead.url.endswith("/shop-a")
    assert json.loads(dead.body)["parcel"] == late.id
    assert day.receiver.accepted(dead.event_id) == 0
    assert [r.status for r in day.receiver.received if r.event_id == dead.event_id] == [410]
    assert day.receiver.duplicates == 0


# --- 6. the van process killed mid-stop -------------------------------------------------------


class ProcessOutput:
    """The lines a `lastmile van` process writes: JSON on stdout, its log on stderr."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.docs: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.cond = threading.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        for stream, sink in ((proc.stdout, self._doc), (proc.stderr, self._log)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream: Any, sink: Callable[[str], None]) -> None:
        for line in stream:
            with self.cond:
                sink(line)
                self.cond.notify_all()

    def _doc(self, line: str) -> None:
        with contextlib.suppress(ValueError):
            self.docs.append(json.loads(line))

    def _log(self, line: str) -> None:
        self.log.append(line)

    def mark(self) -> int:
        with self.cond:
            return len(self.docs)

    def wait_doc(self, after: int = 0, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next(
                (d for d in self.docs[after:] if all(d.get(k) == v for k, v in match.items())),
                None,
            )

        with self.cond:
            found = self.cond.wait_for(find, WAIT_S)
            assert found is not None, f"no {match} from the van: {self.docs[after:]} {self.log}"
        return found

    def wait_log(self, text: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(text in line for line in self.log), WAIT_S)
        assert ok, f"no {text!r} in the van's log: {self.log}"


def test_a_van_process_killed_mid_stop_resumes_there_and_nothing_is_lost_or_doubled(
    open_day: Callable[..., DeliveryDay], broker: Broker, tmp_path: Path
) -> None:
    parcels = [at(61, 500, 0, "Damrak 1"), at(62, 500, 0, "Damrak 1"), at(63, 0, 900, "Dam 2")]
    day = open_day(parcels)
    manifest = day.service.current_manifest("van-1", DAY)
    assert manifest is not None and [len(s.parcels) for s in manifest.stops] == [2, 1]
    here, there = manifest.stop(1).parcels, manifest.stop(2).parcels
    scanner = SimulatedScanner(tmp_path / "van.tty")
    (tmp_path / "van.pw").write_text(broker.credentials("van-1")[1])
    config = tmp_path / "van.toml"
    config.write_text(
        'device_id = "van-1"\njournal = "van-1.db"\n'
        f'[scanner]\nport = "{scanner.path}"\n'
        f'[broker]\nport = {broker.port}\npassword_file = "van.pw"\n'
        "[round]\nenabled = true\n"
        "[sync]\n" + "".join(f"{k} = {v}\n" for k, v in FAST_SYNC.items())
    )
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], ProcessOutput]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "-v", "van", "--config", str(config)],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        out = ProcessOutput(proc)
        out.wait_log("scanner connected")
        return proc, out

    def say(proc: subprocess.Popen[str], doc: Mapping[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(doc) + "\n")
        proc.stdin.flush()

    confirmed: list[dict[str, Any]] = []  # every event the courier was told is stored
    try:
        proc, out = start()
        confirmed.append(out.wait_doc(event="manifest_applied", version=1))
        for parcel in sorted(manifest.parcels, key=lambda p: manifest.shelf_of(p) or 0):
            mark = out.mark()
            scan_label(scanner, parcel)
            confirmed.append(out.wait_doc(mark, event="parcel_loaded", parcel=parcel))
        for doc in ({"do": "depart"}, {"do": "arrive", "stop": 1}):
            mark = out.mark()
            say(proc, doc)
            reply = out.wait_doc(mark, reply=doc["do"])
            assert "error" not in reply, reply
            confirmed.append(reply)
        mark = out.mark()
        scan_label(scanner, here[0])
        in_hand = out.wait_doc(mark, event="parcel_scanned_at_stop", parcel=here[0])
        assert in_hand["tone"] == "ok"
        confirmed.append(in_hand)
        proc.send_signal(signal.SIGKILL)  # before the courier records what happened
        assert proc.wait(10) == -signal.SIGKILL

        proc, out = start()
        mark = out.mark()
        say(proc, {"do": "status"})
        status = out.wait_doc(mark, reply="status")
        assert (status["phase"], status["version"], status["current_stop"]) == ("on_route", 1, 1)
        assert status["due_here"] == list(here) and status["parcels"]["loaded"] == 3
        mark = out.mark()
        say(proc, {"do": "deliver", "parcel": here[0], "name": "A. Jansen"})
        delivered = out.wait_doc(mark, reply="deliver")
        assert delivered.get("event") == "parcel_delivered", delivered
        assert delivered["pod"]["scan"] == here[0]  # the scan before the kill still counts
        mark = out.mark()
        say(proc, {"do": "fail", "parcel": here[1], "reason": "not_at_home"})
        failed = out.wait_doc(mark, reply="fail")
        assert failed.get("event") == "delivery_failed" and failed["pod"]["scan"] is None
        confirmed += [delivered, failed]

        last = max(int(c["seq"]) for c in confirmed)
        wait_until(
            lambda: int(str(day.store.query("SELECT max(seq) FROM events")[0][0] or 0)) >= last,
            "the depot to store the van's last event",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        scanner.close()

    with Journal(tmp_path / "van-1.db", "van-1") as journal:
        assert_exactly_once(day.store, journal)
        kinds = [e.kind for e in journal.read(0, 10**6)[1]]
        uuids = {e.seq: e.uuid for e in journal.read(0, 10**6)[1]}
    assert kinds.count("manifest_applied") == 1  # the retained copy after restart: ignored
    assert kinds.count("parcel_scanned_at_stop") == 1 and kinds.count("stop_arrived") == 1
    assert all(uuids[int(c["seq"])] == c["uuid"] for c in confirmed)
    day.service.wake()
    wait_until(day.service.settled, "the depot to settle")
    assert day.state(here[0]) == "delivered" and day.state(here[1]) == "attempted"
    assert day.state(there[0]) == "out_for_delivery"


# --- the depot's desk: `lastmile depot track` and the HTTP API --------------------------------


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), json.loads(exc.read())


def test_the_desk_tracks_the_day_by_cli_and_http_as_the_book_has_it(
    open_day: Callable[..., DeliveryDay],
) -> None:
    parcels = [at(71, 400, 0, "Damrak 1"), at(72, 0, 700, "Dam 2")]
    day = open_day(parcels, api=True)
    rig = day.start_van("van-1")
    rig.screen.wait_for("manifest_applied")
    load_all(rig)
    rig.do("depart")
    (first,), (second,) = (s.parcels for s in rig.manifest.stops)
    rig.do("arrive", stop=1)
    rig.scan(first, "parcel_scanned_at_stop")
    rig.do("deliver", parcel=first, to="neighbour", name="D. Smit", neighbour_address="Damrak 3")
    rig.do("arrive", stop=2)
    rig.do("fail", parcel=second, reason="not_at_home")
    day.settle()

    def track(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lastmile.cli", "depot", "track", *args, "--db", day.db],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = track(first, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["parcel"], doc["state"], doc["final"], doc["van"]) == (
        first,
        "delivered",
        True,
        "van-1",
    )
    steps = [e["step"] for e in doc["timeline"]]
    assert steps == ["received", "assigned", "loaded", "out_for_delivery", "delivered"]
    assert doc["timeline"][-1]["details"]["to"] == "neighbour"
    assert "webhook" not in json.dumps(doc)  # merchants' URLs stay out of the desk's view

    api = day.service.api
    get_json = client(day.service.database)
    assert api is not None
    status, over_http = get_json(f"{api.url}/parcels/{first}")
    assert status == 200 and over_http == doc

    text = track(second)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith(f"{second}: attempted (van van-1, stop 2")
    assert "next_action second_attempt" in text.stdout.splitlines()[0]
    status, attempted = get_json(f"{api.url}/parcels/{second}")
    assert status == 200
    assert (attempted["state"], attempted["attempts"], attempted["last_reason"]) == (
        "attempted",
        1,
        "not_at_home",
    )
    assert attempted["timeline"][-1]["step"] == "next_action"

    status, vans = get_json(f"{api.url}/vans")
    assert status == 200 and vans["vans"]["van-1"]["manifest_version"] == 1
    assert vans["vans"]["van-1"]["day"] == DAY
    stranger = s10(79)
    assert track(stranger).returncode == 1
    assert get_json(f"{api.url}/parcels/{stranger}")[0] == 404
