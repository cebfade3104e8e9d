"""`bench sync`: how fast a van's backlog drains to the depot, and how many bytes it costs.

What is measured: a device journal holding 100,000 parcel scans made offline (a van that spent
days without a link) is drained by the real uplink through a real Mosquitto to the real depot,
which verifies each batch's hash chain and stores it with `synchronous=FULL` before it acks.
The clock runs from `Uplink.start()` until the device has the depot's acknowledgement of the
last event; the bytes are what crossed the van's link (a `LinkProxy` counting every byte of
MQTT, TCP payload only), upstream and downstream.

Why: a van coming out of a dead zone must catch up within a minute or two over a cellular link
that is paid per byte. The baseline is what "one JSON event per MQTT message" costs when the
depot stores each message before it confirms it (one INSERT + COMMIT per message, the same
WAL + `synchronous=FULL`) and acks each one: plain paho-mqtt, QoS 1, the same broker, the same
events (the journal's first ones), through a link of its own. It runs in the same process, on
the same disk, right after ours.

Both ends run in this one process — uplink, depot, and the link's pump threads share one
interpreter lock on however many cores there are — so the figure is a floor for either end on
its own machine; the baseline's ends share the process in the same way.

The journal is filled through `Journal.append_many`, 1000 events per durable commit, so the
file is a normal journal (it is closed and reopened, integrity check included, before the
run). Event times come from `ScanTimeline`, a clock that spaces scans as a working van does
(seconds while loading, minutes between stops): the clock deltas the batch carries are then as
incompressible as in the field. `--clock system` fills with the real clock instead (scans
microseconds apart), which flatters the wire figure.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.rig import (
    BenchError,
    PlainClient,
    describe_mount,
    host_facts,
    per_s,
    rounded,
    scratch_dir,
    wait_until,
)
from depot.ingest import Depot, DepotStore
from edge.van import PARCEL_SCANNED
from parcel.identify import identify
from simulators.broker import Broker, find_mosquitto
from simulators.link import LinkProxy
from simulators.parcels import random_label
from sync.clock import Clock
from sync.journal import Journal
from sync.mqtt import BrokerAddress
from sync.uplink import Uplink
from sync.wire import Event, ack_topic, encode_status, events_topic, status_topic

DEVICE = "van-bench"
BASELINE_DEVICE = "bench-baseline"  # a device account of its own: the ACL lets it publish events
FILL_CHUNK = 1000  # events per durable commit while filling the journal
TARGET_RATIO = 5.0  # ours events/s over the baseline's, at least (from the issue)
TARGET_WIRE_BYTES_PER_EVENT = 80.0  # upstream wire bytes per event, at most (from the issue)
DRAIN_TIMEOUT_S = 600.0
DEPOT_READY_TIMEOUT_S = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=100_000,
                   help="events in the device journal (default 100000)")
    p.add_argument("--baseline-events", type=int, default=10_000,
                   help="events the one-message-per-event baseline sends (default 10000)")
    p.add_argument("--clock", choices=("timeline", "system"), default="timeline",
                   help="event times: scans spaced as in a van's day (default), or the real "
                        "clock while filling (microseconds apart; flatters the wire figure)")
    p.add_argument("--seed", type=int, default=1, help="random seed of labels and times")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the scratch directory here (default: the current directory; "
                        "not tmpfs, where fsync is free)")


class ScanTimeline:
    """A van's clock as its journal sees it during a day of scanning; each event is a new scan.

    Every `monotonic_ns()` call moves on to the next scan (the journal reads it once per event):
    half the gaps are loading scans 1-8 s apart, half are stops, 20 s plus an exponential
    wait with a mean of 150 s. The wall clock follows the monotonic clock, read a few hundred
    nanoseconds later, as two clock reads on a device are.
    """

    def __init__(self, rng: random.Random, *, boot_id: str, wall_start_ns: int) -> None:
        self._rng = rng
        self._boot_id = boot_id
        self._wall_start_ns = wall_start_ns
        self._mono_ns = 3_600 * 10**9  # an hour after boot: the morning's checks are done

    @property
    def boot_id(self) -> str:
        return self._boot_id

    def monotonic_ns(self) -> int:
        rng = self._rng
        gap_s = rng.uniform(1.0, 8.0) if rng.random() < 0.5 else 20.0 + rng.expovariate(1 / 150)
        self._mono_ns += int(gap_s * 1e9)
        return self._mono_ns

    def wall_ns(self) -> int:
        return self._wall_start_ns + self._mono_ns + self._rng.randint(50, 400)

    def wall_synced(self) -> bool:
        return True


def scan_payloads(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """What `edge.van.ScanDesk` journals for `n` good scans of labels in a depot's carrier mix."""
    payloads = []
    for _ in range(n):
        label = random_label(rng)
        parcel = identify(label.data, label.aim)
        payloads.append(
            {"parcel": parcel.id, "kind": parcel.kind, "aim": label.aim, "raw": label.data}
        )
    return payloads


def fill_journal(path: Path, n: int, rng: random.Random, clock: Clock | None) -> float:
    """Journal `n` scans, FILL_CHUNK per durable commit; returns the seconds it took."""
    payloads = scan_payloads(n, rng)
    started = time.perf_counter()
    with Journal(path, DEVICE, clock=clock) as journal:
        for i in range(0, n, FILL_CHUNK):
            journal.append_many([(PARCEL_SCANNED, p) for p in payloads[i : i + FILL_CHUNK]])
    return time.perf_counter() - started


def password_of(broker: Broker, device: str) -> str:
    return broker.credentials(device)[1]


def await_depot_listening(broker: Broker, store: DepotStore, password: str) -> None:
    """Return once the depot has stored a status message published after it subscribed.

    Otherwise the first batches could reach the broker before the depot's subscription does,
    and the run would measure the uplink's 10 s ack timeout instead of its throughput.
    """
    probe = PlainClient(broker.host, broker.port, BASELINE_DEVICE, password)
    probe.start()
    try:
        def heard() -> bool:
            probe.client.publish(status_topic(BASELINE_DEVICE),
                                 encode_status("probe", "bench"), qos=1)
            rows = store.query("SELECT status FROM device_status WHERE device=?",
                               (BASELINE_DEVICE,))
            return bool(rows)

        if not wait_until(heard, DEPOT_READY_TIMEOUT_S, step=0.1):
            raise BenchError(f"the depot stored nothing in {DEPOT_READY_TIMEOUT_S} s")
    finally:
        probe.stop()


@dataclass
class Drain:
    """One drain of events to a depot: what it took in time and on the wire."""

    events: int
    seconds: float
    wire_bytes_up: int
    wire_bytes_down: int

    @property
    def events_per_s(self) -> float:
        return per_s(self.events, self.seconds)

    @property
    def wire_bytes_per_event(self) -> float:
        return self.wire_bytes_up / self.events


def drain_ours(broker: Broker, workdir: Path, journal: Journal, password: str
               ) -> tuple[Drain, dict[str, Any]]:
    """The uplink drains the whole journal through a counting link to the depot."""
    store = DepotStore(workdir / "depot.db")
    depot_user, depot_pw = broker.depot_credentials
    depot = Depot(store, BrokerAddress(broker.host, broker.port, depot_user, depot_pw))
    depot.start()
    try:
        if not depot.session.wait_connected(DEPOT_READY_TIMEOUT_S):
            raise BenchError("the depot did not connect to the broker")
        await_depot_listening(broker, store, password_of(broker, BASELINE_DEVICE))
        last = journal.last_seq
        with LinkProxy(broker.host, broker.port, name=DEVICE) as link:
            uplink = Uplink(journal, BrokerAddress(link.host, link.port, DEVICE, password))
            started = time.perf_counter()
            uplink.start()
            try:
                done = uplink.wait_acked(last, DRAIN_TIMEOUT_S)
                seconds = time.perf_counter() - started
                up, down = link.bytes_up, link.bytes_down
            finally:
                uplink.stop()
        if not done:
            raise BenchError(f"depot acknowledged {journal.acked_seq} of {last} events "
                             f"in {DRAIN_TIMEOUT_S} s")
        details = {
            "batches": uplink.batches_sent,
            "resends": uplink.resends,
            "payload_bytes_per_event": rounded(uplink.payload_bytes_sent / last, 2),
            "depot_verified": (store.head(DEVICE, journal.journal_id) == last
                               and store.missing_seqs() == 0 and depot.quarantined == 0),
        }
        return Drain(last, seconds, up, down), details
    finally:
        depot.stop()
        store.close()


def baseline_message(e: Event) -> bytes:
    """One journal event as one JSON message: every field but the hash (no chain to verify)."""
    return json.dumps(
        {"seq": e.seq, "uuid": e.uuid, "boot": e.boot_id, "mono_ns": e.mono_ns,
         "wall_ns": e.wall_ns, "synced": e.wall_synced, "kind": e.kind, "payload": e.payload},
        separators=(",", ":"), ensure_ascii=False,
    ).encode()


class MessagePerEventDepot:
    """The baseline's depot: each message is one INSERT + COMMIT (WAL, FULL), then one ack.

    paho sends the PUBACK after `on_message` returns, so a message is stored before the broker
    hears it was received, as in our depot.
    """

    def __init__(self, db_path: Path, broker: Broker, expected: int) -> None:
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE events (device TEXT NOT NULL, seq INTEGER NOT NULL, uuid TEXT NOT NULL,"
            " boot_id TEXT NOT NULL, mono_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL,"
            " wall_synced INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,"
            " PRIMARY KEY (device, seq))"
        )
        self.expected = expected
        self.stored = 0
        self.all_stored = threading.Event()
        self.all_stored_at = 0.0
        user, password = broker.depot_credentials
        self.mqtt = PlainClient(broker.host, broker.port, user, password, on_message=self._store)

    def start(self) -> None:
        self.mqtt.start(subscribe=events_topic(BASELINE_DEVICE))

    def _store(self, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        self._db.execute("BEGIN IMMEDIATE")
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?)",
            (BASELINE_DEVICE, doc["seq"], doc["uuid"], doc["boot"], doc["mono_ns"],
             doc["wall_ns"], int(doc["synced"]), doc["kind"],
             json.dumps(doc["payload"], sort_keys=True, separators=(",", ":"))),
        )
        self._db.execute("COMMIT")
        self.stored += cur.rowcount
        self.mqtt.client.publish(ack_topic(BASELINE_DEVICE),
                                 json.dumps({"seq": doc["seq"]}).encode(), qos=1)
        if self.stored >= self.expected and not self.all_stored.is_set():
            self.all_stored_at = time.perf_counter()
            self.all_stored.set()

    def stop(self) -> None:
        self.mqtt.stop()
        self._db.close()


def drain_baseline(broker: Broker, workdir: Path, events: list[Event]) -> tuple[Drain, float]:
    """Plain paho publishes one QoS 1 message per event; the clock stops when all are stored.

    Returns the drain and the seconds until the device had every per-message ack too.
    """
    n = len(events)
    messages = [baseline_message(e) for e in events]
    depot = MessagePerEventDepot(workdir / "baseline-depot.db", broker, n)
    depot.start()
    acks = 0
    all_acked = threading.Event()

    def on_ack(_msg: mqtt.MQTTMessage) -> None:
        nonlocal acks
        acks += 1
        if acks >= n:
            all_acked.set()

    timeout = max(120.0, n * 0.05)
    try:
        with LinkProxy(broker.host, broker.port, name=BASELINE_DEVICE) as link:
            device = PlainClient(link.host, link.port, BASELINE_DEVICE,
                                 password_of(broker, BASELINE_DEVICE), on_message=on_ack)
            started = time.perf_counter()
            device.start(subscribe=ack_topic(BASELINE_DEVICE))
            try:
                topic = events_topic(BASELINE_DEVICE)
                for payload in messages:
                    device.client.publish(topic, payload, qos=1)
                if not depot.all_stored.wait(timeout):
                    raise BenchError(f"baseline depot stored {depot.stored} of {n} in {timeout} s")
                seconds = depot.all_stored_at - started
                if not all_acked.wait(timeout):
                    raise BenchError(f"baseline device got {acks} of {n} acks in {timeout} s")
                to_last_ack = time.perf_counter() - started
                up, down = link.bytes_up, link.bytes_down
            finally:
                device.stop()
    finally:
        depot.stop()
    return Drain(n, seconds, up, down), to_last_ack


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.events < 1 or args.baseline_events < 1:
        raise BenchError("--events and --baseline-events must be at least 1")
    if find_mosquitto() is None:
        raise BenchError("bench sync needs Mosquitto (apt-get install mosquitto)")
    rng = random.Random(args.seed)
    with scratch_dir(args.dir, "sync") as workdir:
        journal_path = workdir / f"{DEVICE}.journal.db"
        clock = None if args.clock == "system" else ScanTimeline(
            rng, boot_id=f"bench-boot-{args.seed}", wall_start_ns=1_795_000_000 * 10**9)
        fill_s = fill_journal(journal_path, args.events, rng, clock)
        passwords = {DEVICE: secrets.token_urlsafe(18), BASELINE_DEVICE: secrets.token_urlsafe(18)}
        with Broker(workdir / "broker", devices=passwords) as broker, \
                Journal(journal_path, DEVICE) as journal:
            _prev, baseline_events = journal.read(0, min(args.baseline_events, args.events))
            ours, details = drain_ours(broker, workdir, journal, passwords[DEVICE])
            base, base_to_last_ack = drain_baseline(broker, workdir, baseline_events)
        mount = describe_mount(workdir)
    ratio = ours.events_per_s / base.events_per_s
    return {
        "benchmark": "sync",
        "events": ours.events,
        "seconds": rounded(ours.seconds),
        "events_per_s": round(ours.events_per_s),
        "wire_bytes_per_event": rounded(ours.wire_bytes_per_event, 2),
        "wire_bytes_up": ours.wire_bytes_up,
        "wire_bytes_down": ours.wire_bytes_down,
        **details,
        "baseline_events": base.events,
        "baseline_seconds": rounded(base.seconds),
        "baseline_seconds_to_last_ack": rounded(base_to_last_ack),
        "baseline_events_per_s": round(base.events_per_s),
        "baseline_wire_bytes_per_event": rounded(base.wire_bytes_per_event, 2),
        "baseline_wire_bytes_up": base.wire_bytes_up,
        "baseline_wire_bytes_down": base.wire_bytes_down,
        "ratio": rounded(ratio, 2),
        "bytes_ratio": rounded(base.wire_bytes_per_event / ours.wire_bytes_per_event, 2),
        "targets": {"ratio_min": TARGET_RATIO,
                    "wire_bytes_per_event_max": TARGET_WIRE_BYTES_PER_EVENT},
        "targets_met": (ratio >= TARGET_RATIO
                        and ours.wire_bytes_per_event <= TARGET_WIRE_BYTES_PER_EVENT),
        "clock": args.clock,
        "fill_seconds": rounded(fill_s, 2),
        "mount": mount,
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"sync: {r['events']} events in {r['seconds']} s = {r['events_per_s']} events/s, "
        f"{r['wire_bytes_per_event']} B/event up; baseline (one message per event) "
        f"{r['baseline_events_per_s']} events/s, {r['baseline_wire_bytes_per_event']} B/event; "
        f"ratio {r['ratio']}x, bytes {r['bytes_ratio']}x less; "
        f"targets {'met' if r['targets_met'] else 'NOT met'}"
    )
