"""Van positions on the round: sampled every 30 s of the van's clock, none while parked at the
depot, sent behind the events, stored by the depot (both databases), and the ETA they feed.

Real parts: SQLite journal files, a Mosquitto broker, the depot's ingest on SQLite and on
PostgreSQL, and in the end-to-end test a van process object reading a simulated GNSS receiver
on a pseudo-terminal under a fast simulated clock.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.eta import DRIVE_MPS, STOP_S, parcel_eta, van_progress
from depot.ingest import Depot, DepotStore
from depot.store import DepotDatabase, book, open_database, positions, sends
from edge.delivery import DeliveryRound
from edge.positions import PositionSampler
from edge.van import Van, VanConfig
from parcel.geo import distance_m
from parcel.identify import s10_check_digit
from parcel.manifest import Manifest, Stop
from simulators.broker import Broker
from simulators.gnss import SimulatedGnss
from simulators.scanner import SimulatedScanner
from sync.clock import ScaledClock
from sync.errors import WireError
from sync.journal import Journal
from sync.positions import PositionOutbox
from sync.wire import (
    PositionSample,
    command_topic,
    decode_positions,
    encode_positions,
    positions_topic,
)
from tests.conftest import address, depot_sql

DAY = "2026-11-19"
MIDNIGHT_NS = 1_795_046_400 * 10**9  # 2026-11-19 00:00 UTC
DEPOT = (52.3600, 4.9000)
STOP_1 = (52.3700, 4.9000)  # about 1.1 km north of the depot
STOP_2 = (52.3800, 4.9000)
STOP_3 = (52.3900, 4.9000)


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


P1, P2, P3 = s10(101), s10(202), s10(303)


def manifest(van: str = "van-1") -> Manifest:
    return Manifest(
        van=van,
        version=1,
        day=DAY,
        stops=(
            Stop(1, *STOP_1, parcels=(P1,), address="Noord 1"),
            Stop(2, *STOP_2, parcels=(P2,), address="Noord 2"),
            Stop(3, *STOP_3, parcels=(P3,), address="Noord 3", window=("14:00", "16:00")),
        ),
        depot=DEPOT,
    )


# --- the wire ---------------------------------------------------------------------------------


def sample(
    at_s: float, lat: float = 52.37, lon: float = 4.9, stop: int | None = 1
) -> PositionSample:
    return PositionSample(MIDNIGHT_NS + int(at_s * 1e9), lat, lon, 4.5, 7.9, stop, 0, 3)


def test_positions_round_trip_and_bad_ones_are_refused_with_a_reason() -> None:
    samples = [sample(36000.0), sample(36030.0, stop=None)]
    assert decode_positions(encode_positions("van-1", samples)) == ("van-1", samples)
    good = json.loads(encode_positions("van-1", samples))
    bad = {
        "not JSON": b"{",
        "version": json.dumps({**good, "v": 2}).encode(),
        "samples": json.dumps({**good, "p": []}).encode(),
        "not a list of 8": json.dumps({**good, "p": [[1, 2, 3]]}).encode(),
        "lat": json.dumps({**good, "p": [[1, 91.0, 4.9, None, None, None, 0, 3]]}).encode(),
        "stop": json.dumps({**good, "p": [[1, 52.0, 4.9, None, None, 4, 0, 3]]}).encode(),
        "time": json.dumps({**good, "p": [[-5, 52.0, 4.9, None, None, None, 0, 3]]}).encode(),
        "speed": json.dumps({**good, "p": [[1, 52.0, 4.9, None, -1, None, 0, 3]]}).encode(),
    }
    for why, payload in bad.items():
        with pytest.raises(WireError) as refused:
            decode_positions(payload)
        assert "\n" not in str(refused.value), why


# --- the van: when a sample is taken -----------------------------------------------------------


class HandClock:
    """A van clock the test moves by hand."""

    boot_id = "boot-test"

    def __init__(self) -> None:
        self.mono = 0

    def monotonic_ns(self) -> int:
        return self.mono

    def wall_ns(self) -> int:
        return MIDNIGHT_NS + 8 * 3600 * 10**9 + self.mono

    def wall_synced(self) -> bool:
        return True

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * 1e9)


@dataclass(frozen=True)
class Fix:
    lat: float
    lon: float
    accuracy_m: float | None = 3.0
    speed_mps: float | None = 8.0
    utc: object = None


class Screen:
    def tell(self, tone: str, say: str, facts: object) -> None:
        pass


def test_samples_every_30_s_on_the_round_and_none_while_parked_at_the_depot(
    tmp_path: Path,
) -> None:
    clock = HandClock()
    with Journal(tmp_path / "van-1.db", "van-1", clock=clock) as journal:
        where: list[Fix] = [Fix(*DEPOT)]
        rnd = DeliveryRound(journal, Screen(), van_id="van-1", position=lambda: where[-1])
        outbox = PositionOutbox(journal)
        sampler = PositionSampler(outbox, rnd.progress, clock)

        def drive(seconds: float, at: tuple[float, float], every_s: float = 1.0) -> None:
            for _ in range(int(seconds / every_s)):
                clock.advance(every_s)
                sampler.on_fix(Fix(*at))

        drive(120, STOP_1)  # no manifest yet: nobody is on a round
        rnd.apply_manifest(manifest().to_json())
        for p in (P1, P2, P3):
            rnd.scan(p)
        drive(120, STOP_1)  # loading: still at the depot's dock
        assert outbox.count() == 0
        rnd.depart()
        drive(300, (DEPOT[0] + 0.001, DEPOT[1]))  # departed, but 110 m from the depot: parked
        assert outbox.count() == 0
        drive(300, STOP_1)  # out on the round: one sample per 30 s of the van's clock
        taken = outbox.pending(1000)
        assert len(taken) == 10
        gaps = {(b.at_ns - a.at_ns) / 1e9 for a, b in itertools.pairwise(taken)}
        assert gaps == {30.0}
        assert (taken[0].stop, taken[0].stops_done, taken[0].stops_total) == (None, 0, 3)
        rnd.arrive(1)
        rnd.scan(P1)
        rnd.deliver(P1, to="recipient", name="A. Jansen")
        drive(30, STOP_1)
        last = outbox.pending(1000)[-1]
        assert (last.stop, last.stops_done, last.lat, last.lon) == (1, 1, *STOP_1)
        rnd.end_round()
        drive(60, STOP_2)  # heading back is still the round
        assert outbox.count() == 13
        drive(300, DEPOT)  # back in the yard
        rnd.close_day()
        drive(300, STOP_3)  # the day is closed: the van is nobody's business
        assert outbox.count() == 13


def test_the_outbox_keeps_only_the_newest_samples(tmp_path: Path) -> None:
    with Journal(tmp_path / "van-1.db", "van-1") as journal:
        outbox = PositionOutbox(journal, max_kept=5)
        for i in range(12):
            outbox.add(sample(36000.0 + 30 * i))
        kept = outbox.pending(100)
        assert [s.at_ns for s in kept] == [sample(36000.0 + 30 * i).at_ns for i in range(7, 12)]


# --- the depot: stored, refused, and the ETA ---------------------------------------------------


@pytest.fixture
def depot_ingest(broker: Broker, depot_database: str) -> Iterator[Depot]:
    store = DepotStore(depot_database)
    service = Depot(store, address(broker, "depot"))
    service.start()
    assert service.session.wait_connected(10)
    yield service
    service.stop()
    store.close()


def publish(broker: Broker, who: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish as a device (or as "depot", before the depot's own session connects: the broker
    takes the user name as the client id, so a second "depot" would push the first off)."""
    user, password = broker.depot_credentials if who == "depot" else broker.credentials(who)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def stored_count(spec: str, van: str = "van-1") -> int:
    with depot_sql(spec) as conn:
        return positions.count(conn, van)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Look again every 50 ms until `predicate` holds (the depot's tables have no listener)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)
    return True


def subscribed(broker: Broker, spec: str) -> None:
    """Return once the depot's subscription is in place (a connected session subscribes a
    moment later): van-2 sends samples until one is stored."""
    for i in range(40):
        probe = encode_positions("van-2", [sample(30000.0 + i)])
        publish(broker, "van-2", positions_topic("van-2"), probe)
        if wait_for(lambda: stored_count(spec, "van-2") > 0, 0.5):
            return
    raise AssertionError("the depot never took a positions message")


def test_a_malformed_positions_message_is_quarantined_in_one_line(
    broker: Broker,
    depot_ingest: Depot,
    depot_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="depot.ingest")
    subscribed(broker, depot_database)
    good = encode_positions("van-1", [sample(36000.0)])
    publish(broker, "van-1", positions_topic("van-1"), good.replace(b"52.37", b"99.5"))
    publish(broker, "van-2", positions_topic("van-2"), good)  # van-1's samples on van-2's topic
    publish(broker, "van-1", positions_topic("van-1"), good)
    assert wait_for(lambda: depot_ingest.quarantined == 2 and stored_count(depot_database) == 1)
    lines = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "lat 99.5" in lines[0] and "name device 'van-1'" in lines[1]
    with depot_sql(depot_database) as conn:
        reasons = [str(r[0]) for r in conn.execute("SELECT reason FROM quarantine")]
    assert len(reasons) == 2


def _out_for_delivery(spec: str) -> DepotDatabase:
    database = open_database(spec)
    with database.transaction() as conn:
        m = manifest()
        sends.issue_manifest(
            conn, van="van-1", day=DAY, version=1, body=m.to_json(), issued_ns=MIDNIGHT_NS
        )
        for p in (P1, P2, P3):
            book.insert_parcel(conn, p, MIDNIGHT_NS, "{}", {"merchant": "shop"})
            stop = m.stop_of(p)
            out = {"state": "out_for_delivery", "van": "van-1", "stop": stop}
            book.update_parcel(conn, p, out)
        # At the depot, not out:
        book.insert_parcel(conn, s10(404), MIDNIGHT_NS, "{}", {"merchant": "shop"})
    return database


def test_the_eta_follows_the_van_and_is_none_for_a_parcel_not_out(depot_database: str) -> None:
    database = _out_for_delivery(depot_database)
    t0 = MIDNIGHT_NS + 9 * 3600 * 10**9
    try:
        with database.reading() as conn:
            assert parcel_eta(conn, s10(404), t0) is None
            assert parcel_eta(conn, s10(999), t0) is None
            before = parcel_eta(conn, P3, t0)  # no sample yet: from the depot, now
        assert before is not None and before.based_on_position_ns is None
        assert before.stops_before == 2
        expected = distance_m(*DEPOT, *STOP_3) / DRIVE_MPS + 2 * STOP_S
        assert before.eta_ns == t0 + int(expected * 1e9)
        assert before.window == ("14:00", "16:00")
        assert before.window_start_ns == MIDNIGHT_NS + 14 * 3600 * 10**9

        # Half-way to stop 1, ten minutes later.
        halfway = ((DEPOT[0] + STOP_1[0]) / 2, DEPOT[1])
        t1 = t0 + 600 * 10**9
        s1 = PositionSample(t1, *halfway, 4.0, 8.0, None, 0, 3)
        with database.transaction() as conn:
            assert positions.record(conn, "van-1", [s1, s1], received_ns=t1) == 1
        with database.reading() as conn:
            moving = parcel_eta(conn, P3, t1)
        assert moving is not None and moving.based_on_position_ns == t1
        expected = distance_m(*halfway, *STOP_3) / DRIVE_MPS + 2 * STOP_S
        assert moving.eta_ns == t1 + int(expected * 1e9)
        assert moving.eta_ns > before.eta_ns  # it took the van ten minutes to drive 550 m

        # At stop 2 with stop 1 done: one stop fewer on the way, and the ETA moves again.
        t2 = t1 + 900 * 10**9
        with database.transaction() as conn:
            book.update_parcel(conn, P1, {"state": "delivered"})
            positions.record(
                conn, "van-1", [PositionSample(t2, *STOP_2, 4.0, 0.0, 2, 1, 3)], received_ns=t2
            )
        with database.reading() as conn:
            there = parcel_eta(conn, P3, t2)
            assert parcel_eta(conn, P1, t2) is None  # delivered: not out any more
            progress = van_progress(conn, "van-1", t2 + 45 * 10**9)
        assert there is not None and there.stops_before == 1
        expected = distance_m(*STOP_2, *STOP_3) / DRIVE_MPS + STOP_S
        assert there.eta_ns == t2 + int(expected * 1e9)
        assert (progress.stops_done, progress.stops_total, progress.current_stop) == (1, 3, 2)
        assert progress.position is not None and progress.position.fix_ns == t2
        assert progress.position_age_s == 45.0
        with database.reading() as conn:
            assert [p.fix_ns for p in positions.track_today(conn, "van-1", t2)] == [t1, t2]
            assert set(positions.latest(conn)) == {"van-1"}
    finally:
        database.close()


# --- end to end: a van with a receiver, on a fast clock, through the broker --------------------


def test_a_van_on_its_round_sends_its_position_every_30_s_and_the_depot_stores_it(
    broker: Broker, depot_database: str, tmp_path: Path
) -> None:
    clock = ScaledClock(MIDNIGHT_NS + 8 * 3600 * 10**9, 20.0, boot_id="boot-e2e")
    publish(broker, "depot", command_topic("van-1", "manifest"), manifest().to_json(), retain=True)
    store = DepotStore(depot_database)
    depot = Depot(store, address(broker, "depot"))
    depot.start()
    assert depot.session.wait_connected(10)
    subscribed(broker, depot_database)
    gnss = SimulatedGnss(tmp_path / "gnss.tty", clock=clock, position=DEPOT)
    with gnss, SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        van = Van(
            VanConfig(
                device_id="van-1",
                journal=tmp_path / "van-1.db",
                scanner_port=str(scanner.path),
                broker=address(broker, "van-1"),
                sync={"ack_timeout_s": 2.0, "keepalive_s": 2, "backoff_min_s": 0.1},
                round_enabled=True,
                gnss_port=str(gnss.path),
            ),
            Screen(),  # type: ignore[arg-type]
            clock=clock,
        )
        van.start()
        try:
            assert van.round is not None and van.positions is not None
            assert wait_for(lambda: van.round is not None and van.round.manifest is not None)
            for p in (P1, P2, P3):
                van.round.scan(p)
            at_dock = len(gnss.history)
            assert gnss.wait_until(lambda: len(gnss.history) > at_dock + 40, 20)
            van.courier({"do": "depart"})
            departed = len(gnss.history)
            assert gnss.wait_until(lambda: len(gnss.history) > departed + 40, 20)
            assert van.positions.samples == 0  # parked at the depot: nothing
            gnss.follow([DEPOT, STOP_1, STOP_2, STOP_3], 8.0)
            assert wait_for(lambda: stored_count(depot_database) >= 6, 30)
        finally:
            van.stop()
            depot.stop()
            store.close()
    with depot_sql(depot_database) as conn:
        track = positions.track(conn, "van-1", 0)
    gaps = [(b.fix_ns - a.fix_ns) / 1e9 for a, b in itertools.pairwise(track)]
    assert gaps and all(30.0 <= g < 36.0 for g in gaps), gaps  # 1 Hz epochs, some skipped
    assert all(distance_m(p.lat, p.lon, *DEPOT) > 150.0 for p in track)
    assert all((p.stops_total, p.stop) == (3, None) for p in track)
