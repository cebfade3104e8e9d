"""Every scan confirmed to the courier reaches the depot exactly once and in order.

Real Mosquitto, real pseudo-terminals with the real scanner driver, real SQLite files, real
processes killed with SIGKILL. Each scenario ends by comparing the van's journal with the
depot's store event by event.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.ingest import Depot, DepotStore, IngestResult
from edge.van import Van, VanConfig
from simulators.broker import Broker
from simulators.link import LinkProxy
from simulators.parcels import random_label
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.uplink import Uplink
from sync.wire import Event, events_topic
from tests.conftest import UplinkPatience, address, blob

FAST_SYNC: UplinkPatience = {
    "ack_timeout_s": 2.0,
    "keepalive_s": 2,
    "backoff_min_s": 0.1,
    "backoff_max_s": 1.0,
}


class DepotWatch:
    """Wakes the test when the depot has stored something (no polling of the database)."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.states: dict[str, str] = {}
        self.cond = threading.Condition()
        self.hook: Callable[[str, IngestResult], None] | None = None

    def __call__(self, device: str, result: IngestResult) -> None:
        if self.hook is not None:
            self.hook(device, result)
        with self.cond:
            self.heads[device] = max(self.heads.get(device, 0), result.ack.seq)
            self.cond.notify_all()

    def status(self, device: str, state: str) -> None:
        with self.cond:
            self.states[device] = state
            self.cond.notify_all()

    def wait_state(self, device: str, state: str, timeout: float = 15.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.states.get(device) == state, timeout)
        assert ok, f"{device} is {self.states.get(device)}, wanted {state}"

    def wait_head(self, device: str, seq: int, timeout: float = 60.0) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.heads.get(device, 0) >= seq, timeout)
        assert ok, f"depot head of {device} is {self.heads.get(device, 0)}, wanted {seq}"


@pytest.fixture
def depot(broker: Broker, depot_database: str) -> Iterator[tuple[Depot, DepotWatch]]:
    watch = DepotWatch()
    store = DepotStore(depot_database)
    service = Depot(store, address(broker, "depot"), on_stored=watch, on_status=watch.status)
    service.start()
    assert service.session.wait_connected(10)
    yield service, watch
    service.stop()
    store.close()


def assert_exactly_once_in_order(
    store: DepotStore, journal_path: Path, device: str, confirmed: list[dict[str, object]]
) -> None:
    """The depot holds the journal's events 1..N, each once, identical, and every confirmed one."""
    with Journal(journal_path, device) as journal:
        _prev, events = journal.read(0, 10**9)
        jid = journal.journal_id
    rows = store.query(
        "SELECT seq, uuid, hash FROM events WHERE device=? AND journal=? ORDER BY seq",
        (device, jid),
    )
    assert [r[0] for r in rows] == list(range(1, len(events) + 1))
    assert [(r[1], blob(r[2])) for r in rows] == [(e.uuid, e.hash) for e in events]
    at_depot = {str(r[1]): int(str(r[0])) for r in rows}
    seqs = [at_depot[str(c["uuid"])] for c in confirmed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "confirmed scans out of order"
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


def backlog(path: Path, total: int, rng: random.Random) -> Journal:
    """A van journal holding `total` scans that have not reached the depot yet."""
    journal = Journal(path, "van-1")
    for start in range(0, total, 1000):
        journal.append_many(
            [
                ("parcel_scanned", {"parcel": random_label(rng).data, "n": n})
                for n in range(start, min(total, start + 1000))
            ]
        )
    return journal


class Beeper:
    """The courier's feedback of an in-process van: what was confirmed, what refused."""

    def __init__(self) -> None:
        self.confirmed_scans: list[dict[str, object]] = []
        self.refusals: list[str] = []
        self.cond = threading.Condition()

    def confirmed(self, event: Event) -> None:
        with self.cond:
            self.confirmed_scans.append({"uuid": event.uuid, "seq": event.seq, **event.payload})
            self.cond.notify_all()

    def refused(self, reason: str, raw: str) -> None:
        with self.cond:
            self.refusals.append(reason)
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 20.0) -> None:
        with self.cond:
            done = self.cond.wait_for(
                lambda: len(self.confirmed_scans) + len(self.refusals) >= n, timeout
            )
        assert done, (len(self.confirmed_scans), len(self.refusals), n)


@pytest.mark.slow
def test_van_offline_for_a_long_stretch_then_reconnecting(
    broker: Broker, depot: tuple[Depot, DepotWatch], tmp_path: Path
) -> None:
    service, watch = depot
    rng = random.Random(11)
    with (
        LinkProxy(broker.host, broker.port, name="van-1") as link,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
    ):
        beeper = Beeper()
        config = VanConfig(
            device_id="van-1",
            journal=tmp_path / "van-1.db",
            scanner_port=str(scanner.path),
            broker=address(broker, "van-1", link.port),
            sync=dict(FAST_SYNC),
        )
        van = Van(config, beeper)
        van.start()
        try:
            assert van.uplink.session.wait_connected(10) and van.scanner_ready.wait(10)
            for i in range(5):
                label = random_label(rng)
                scanner.scan(label.data, aim=label.aim)
                beeper.wait_count(i + 1)
            watch.wait_head("van-1", 5)
            link.cut("blackhole")  # a dead zone: the radio goes silent, nothing is refused
            for i in range(150):
                label = random_label(rng)
                scanner.scan(label.data, aim=label.aim)
                beeper.wait_count(6 + i)
            assert len(beeper.confirmed_scans) == 155
            assert watch.heads["van-1"] < 155
            assert van.journal.unacked >= 150
            link.restore()
            assert van.uplink.wait_acked(155, 30)
        finally:
            van.stop()
    assert beeper.refusals == []
    assert_exactly_once_in_order(
        service.store, tmp_path / "van-1.db", "van-1", beeper.confirmed_scans
    )


@pytest.mark.slow
def test_broker_restarted_mid_drain_with_persistence_off(
    broker: Broker, depot: tuple[Depot, DepotWatch], tmp_path: Path
) -> None:
    service, watch = depot
    rng = random.Random(5)
    total = 6000
    journal = backlog(tmp_path / "van-1.db", total, rng)
    restarted = threading.Event()
    heads_at_restart: list[int] = []

    def restart_once(device: str, result: IngestResult) -> None:
        if not heads_at_restart and result.ack.seq >= 1500:
            heads_at_restart.append(result.ack.seq)
            broker.restart()  # in the depot's own thread: the depot cannot ack this batch
            restarted.set()

    watch.hook = restart_once
    uplink = Uplink(
        journal, address(broker, "van-1"), batch_events=100, window_events=600, **FAST_SYNC
    )
    uplink.start()
    try:
        assert restarted.wait(30)
        assert heads_at_restart[0] < total
        assert uplink.wait_acked(total, 60)
    finally:
        uplink.stop()
        journal.close()
    assert service.session.connects >= 2 and uplink.session.connects >= 2
    assert_exactly_once_in_order(service.store, tmp_path / "van-1.db", "van-1", [])


def _lastmile(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lastmile.cli", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


class DepotLog:
    """Reads a depot process's log lines and wakes the test on "acknowledged N"."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.acked = 0
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"van-1: stored .* acknowledged (\d+)", line)
            if m:
                with self.cond:
                    self.acked = max(self.acked, int(m.group(1)))
                    self.cond.notify_all()

    def wait_acked(self, seq: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.acked >= seq, timeout)


@pytest.mark.slow
def test_depot_restarted_mid_ingest(broker: Broker, tmp_path: Path, depot_database: str) -> None:
    rng = random.Random(7)
    total = 30000
    journal = backlog(tmp_path / "van-1.db", total, rng)
    pw_file = tmp_path / "depot.pw"
    pw_file.write_text(broker.depot_credentials[1])
    depot_args = (
        "-v",
        "depot",
        "--database",
        depot_database,
        "--port",
        str(broker.port),
        "--password-file",
        str(pw_file),
    )
    depot = _lastmile(*depot_args)
    assert depot.stdout is not None and "running" in depot.stdout.readline()
    depot_log = DepotLog(depot)
    uplink = Uplink(
        journal, address(broker, "van-1"), batch_events=100, window_events=400, **FAST_SYNC
    )
    try:
        uplink.start()
        assert depot_log.wait_acked(1000, 30)
        depot.send_signal(signal.SIGKILL)  # mid-ingest: batches are in flight
        depot.wait(10)
        assert depot_log.acked < total
        depot = _lastmile(*depot_args)
        assert depot.stdout is not None and "running" in depot.stdout.readline()
        assert uplink.wait_acked(total, 60)
    finally:
        uplink.stop()
        journal.close()
        depot.terminate()
        depot.wait(10)
    store = DepotStore(depot_database)
    assert_exactly_once_in_order(store, tmp_path / "van-1.db", "van-1", [])
    store.close()


@pytest.mark.slow
def test_van_killed_at_random_points_during_a_burst(
    broker: Broker, depot: tuple[Depot, DepotWatch], tmp_path: Path
) -> None:
    service, watch = depot
    rng = random.Random(1234)
    (tmp_path / "van.pw").write_text(broker.credentials("van-1")[1])
    config = tmp_path / "van.toml"
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config.write_text(
            f'device_id = "van-1"\njournal = "van-1.db"\n'
            f'[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nport = {broker.port}\npassword_file = "van.pw"\n'
            f"[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"
        )
        confirmed: list[dict[str, object]] = []
        kills = 0
        for round_ in range(6):
            van = _lastmile(
                "van", "--config", str(config), env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
            lines: list[str] = []
            reader = threading.Thread(
                target=lambda v=van, out=lines: out.extend(iter(v.stdout.readline, ""))
            )
            reader.start()
            deadline = time.monotonic() + rng.uniform(0.8, 2.0)
            while time.monotonic() < deadline:  # a burst: a scan every few milliseconds
                label = random_label(rng)
                scanner.scan(label.data, aim=label.aim)
                threading.Event().wait(rng.uniform(0.002, 0.02))
            if round_ < 5:
                van.send_signal(signal.SIGKILL)
                kills += 1
            else:
                with_last = [json.loads(line) for line in lines if '"confirmed"' in line]
                if with_last:
                    watch.wait_head("van-1", int(with_last[-1]["confirmed"]), 30)
                van.send_signal(signal.SIGTERM)
            van.wait(10)
            reader.join(10)
            confirmed += [json.loads(line) for line in lines if '"confirmed"' in line]
    assert kills == 5 and len(confirmed) > 50
    assert_exactly_once_in_order(service.store, tmp_path / "van-1.db", "van-1", confirmed)


def test_malformed_payload_is_quarantined_and_the_depot_keeps_going(
    broker: Broker, depot: tuple[Depot, DepotWatch], tmp_path: Path
) -> None:
    service, _watch = depot
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="van-1", protocol=mqtt.MQTTv5)
    client.username_pw_set(*broker.credentials("van-1"))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for junk in (b"\x00garbage", b"x\x9c\x03\x00\x00\x00\x00\x01"):
            client.publish(events_topic("van-1"), junk, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    journal = Journal(tmp_path / "van-1.db", "van-1")
    journal.append("parcel_scanned", {"parcel": "RB123456785GB"})
    uplink = Uplink(journal, address(broker, "van-1"), **FAST_SYNC)
    uplink.start()
    try:
        assert uplink.wait_acked(1, 20)
    finally:
        uplink.stop()
        journal.close()
    reasons = [str(r[0]) for r in service.store.query("SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 2
    assert "not zlib" in reasons[0] and "not JSON" in reasons[1]


def test_status_is_online_while_connected_and_the_will_marks_a_lost_van_offline(
    broker: Broker, depot: tuple[Depot, DepotWatch], tmp_path: Path
) -> None:
    _service, watch = depot
    journal = Journal(tmp_path / "van-1.db", "van-1")
    journal.append("parcel_scanned", {"parcel": "RB123456785GB"})

    with LinkProxy(broker.host, broker.port, name="van-1") as link:
        uplink = Uplink(journal, address(broker, "van-1", link.port), **FAST_SYNC)
        uplink.start()
        try:
            assert uplink.wait_acked(1, 20)
            watch.wait_head("van-1", 1)
            watch.wait_state("van-1", "online")
            link.cut("reset")  # the van vanishes without a DISCONNECT: the broker sends its will
            watch.wait_state("van-1", "offline")
            link.restore()
            watch.wait_state("van-1", "online")
        finally:
            uplink.stop()
            journal.close()
