"""Several depot workers behind the broker: every event stored once, every job done once.

The devices are the real journal and uplink, each with a window of batches in flight, so the
broker's shared subscription hands two batches of one device to two workers at once; the
workers are whole depot services on one database (both backends). The kill test runs them as
the processes `lastmile depot --workers` would, and kills one with SIGKILL half-way.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig
from depot.ingest import DepotStore
from depot.service import DepotService
from depot.webhooks import stats
from parcel.identify import s10_check_digit
from simulators.broker import Broker
from simulators.webhooks import WebhookReceiver
from sync.journal import Journal
from sync.mqtt import BrokerAddress
from sync.uplink import Uplink
from tests.conftest import blob, depot_sql

ROOT = Path(__file__).resolve().parent.parent
DEVICES = tuple(f"van-{i}" for i in range(1, 7))
WAIT_S = 60.0
FAST: dict[str, Any] = {
    "ack_timeout_s": 2.0,
    "keepalive_s": 2,
    "backoff_min_s": 0.1,
    "backoff_max_s": 0.5,
}
SECRETS = {"shop-a": b"shop-a-webhook-secret-0123"}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Iterator[Broker]:
    passwords = {d: f"pw-{d}-0123456789" for d in DEVICES}
    with Broker(tmp_path / "broker", devices=passwords, depot_workers=2) as broker:
        yield broker


def devices_with_backlog(
    broker: Broker, tmp_path: Path, events: int
) -> list[tuple[Journal, Uplink]]:
    """Each device comes back from an outage with `events` journalled and unsent."""
    out = []
    for name in DEVICES:
        journal = Journal(tmp_path / f"{name}.journal.db", name)
        journal.append_many([("heartbeat", {"n": i, "device": name}) for i in range(events)])
        user, password = broker.credentials(name)
        uplink = Uplink(
            journal,
            BrokerAddress(broker.host, broker.port, user, password),
            batch_events=25,
            window_events=200,  # eight batches in flight: the workers race on every device
            **FAST,
        )
        out.append((journal, uplink))
    return out


def stored_exactly_once(database: str, journals: list[Journal]) -> None:
    store = DepotStore(database)
    try:
        for journal in journals:
            _prev, events = journal.read(0, 10**6)
            rows = store.query(
                "SELECT seq, uuid, hash FROM events WHERE device=? AND journal=? ORDER BY seq",
                (journal.device_id, journal.journal_id),
            )
            assert [(r[0], str(r[1]), blob(r[2])) for r in rows] == [
                (e.seq, e.uuid, e.hash) for e in events
            ], journal.device_id
        assert store.missing_seqs() == 0
        assert store.query("SELECT count(*) FROM quarantine") == [(0,)]
    finally:
        store.close()


def test_two_workers_share_the_stream_and_store_every_event_once(
    fleet_broker: Broker, tmp_path: Path, depot_database: str
) -> None:
    passwords = {k: fleet_broker.depot_workers[f"depot-{k}"] for k in (1, 2)}
    config = DepotConfig(
        database=depot_database,
        lat=52.37,
        lon=4.90,
        vans=[],
        broker=BrokerAddress(fleet_broker.host, fleet_broker.port, "depot", passwords[1]),
        workers=2,
        worker_passwords=passwords,
    )
    workers = [DepotService(config, worker=k) for k in (1, 2)]
    devices = devices_with_backlog(fleet_broker, tmp_path, 400)
    try:
        for w in workers:
            w.start()
            assert w.depot is not None and w.depot.session.wait_connected(10)
            assert w.depot.shared == "depot"
        for _journal, uplink in devices:
            uplink.start()
        for journal, uplink in devices:
            assert uplink.wait_acked(journal.last_seq, WAIT_S), journal.device_id

        def projected() -> bool:
            for w in workers:
                w.wake()
            return all(w.settled() for w in workers)

        wait_until(projected, "both workers to project every event")
        batches = [w.depot.batches for w in workers if w.depot is not None]
        assert all(b > 0 for b in batches), f"one worker got every batch: {batches}"
    finally:
        for _journal, uplink in devices:
            uplink.stop()
        for w in workers:
            w.stop()
    journals = [j for j, _ in devices]
    stored_exactly_once(depot_database, journals)
    with depot_sql(depot_database) as conn:
        # The projection took each event once, whichever worker stored it.
        assert conn.execute("SELECT count(*) FROM unprojected").fetchone()[0] == 0
        total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert total == 400 * len(DEVICES)
    for journal in journals:
        journal.close()


def write_worker_config(
    tmp_path: Path, broker: Broker, database: str, receiver: WebhookReceiver
) -> Path:
    for k in (1, 2):
        (tmp_path / f"depot-{k}.password").write_text(broker.depot_workers[f"depot-{k}"])
    (tmp_path / "secrets.toml").write_text(
        "".join(f'{key} = "{value.decode()}"\n' for key, value in SECRETS.items())
    )
    config = tmp_path / "depot.toml"
    config.write_text(
        "[depot]\n"
        f"database = {json.dumps(database)}\n"
        "lat = 52.37\nlon = 4.90\nvans = []\nworkers = 2\n"
        "[broker]\n"
        f'host = "{broker.host}"\nport = {broker.port}\nusername = "depot"\n'
        'password_file = "depot-{worker}.password"\n'
        '[webhooks]\nsecrets_file = "secrets.toml"\nbackoff_base_s = 0.2\nbackoff_max_s = 1\n'
    )
    return config


def test_a_worker_killed_mid_drain_leaves_its_work_to_the_other(
    fleet_broker: Broker, tmp_path: Path, depot_database: str
) -> None:
    receiver = WebhookReceiver(SECRETS)
    config = write_worker_config(tmp_path, fleet_broker, depot_database, receiver)
    # Parcels received at the depot: each tells its merchant, once, whichever worker sends it.
    parcels = [f"RB{n:08d}{s10_check_digit(f'{n:08d}')}GB" for n in range(10_000_001, 10_000_021)]
    (tmp_path / "import.json").write_text(
        json.dumps(
            {
                "parcels": [
                    {
                        "parcel": p,
                        "merchant": "shop-a",
                        "recipient": "R. Cipient",
                        "address": "Damrak 1",
                        "lat": 52.37,
                        "lon": 4.90,
                        "webhook": receiver.url("/merchant/shop-a"),
                    }
                    for p in parcels
                ]
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lastmile = [sys.executable, "-m", "lastmile"]
    imported = subprocess.run(
        [*lastmile, "depot", "import", str(tmp_path / "import.json"), "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    devices = devices_with_backlog(fleet_broker, tmp_path, 600)
    workers = {
        k: subprocess.Popen(
            [*lastmile, "depot", "--config", str(config), "--worker", str(k)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        for k in (1, 2)
    }
    try:
        for proc in workers.values():
            assert proc.stdout is not None
            line = json.loads(proc.stdout.readline())  # the worker says it runs
            assert line["depot"] == "running" and line["workers"] == 2
        for _journal, uplink in devices:
            uplink.start()
        total = 600 * len(DEVICES)

        def stored() -> int:
            with depot_sql(depot_database) as conn:
                return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

        wait_until(lambda: stored() >= total // 3, "a third of the backlog to be stored")
        workers[2].send_signal(signal.SIGKILL)  # mid-drain, mid-batch, mid-anything
        at_kill = stored()
        assert workers[2].wait(10) == -signal.SIGKILL
        for journal, uplink in devices:
            assert uplink.wait_acked(journal.last_seq, WAIT_S), journal.device_id
        wait_until(lambda: receiver.unique_events >= len(parcels), "every notice to be sent")

        def settled() -> bool:
            with depot_sql(depot_database) as conn:
                waiting = conn.execute("SELECT count(*) FROM unprojected").fetchone()[0]
                return int(waiting) == 0 and stats(conn)["pending"] == 0

        wait_until(settled, "the surviving worker to project and send everything")
    finally:
        for _journal, uplink in devices:
            uplink.stop()
        for proc in workers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        receiver.close()
    assert at_kill < total, "the backlog was drained before the kill: the test proved nothing"
    assert workers[1].returncode == 0  # it stopped cleanly on SIGTERM
    stored_exactly_once(depot_database, [j for j, _ in devices])
    # Each notice once: one outbox row per parcel and audience, sent, and the receiver got
    # each event id once (nothing was resent by a worker that never learned of a success).
    with depot_sql(depot_database) as conn:
        assert stats(conn) == {"pending": 0, "sent": len(parcels), "dead": 0,
                               "attempts": len(parcels)}
    assert receiver.unique_events == len(parcels) and receiver.duplicates == 0
    for journal, _ in devices:
        journal.close()



def a_failed_attempt(tmp_path: Path, store: DepotStore, book: Any) -> Any:
    """S10_B received, put on van-1, and not delivered (nobody at home): the van's events are
    stored, not yet projected. Returns the van (a journal and its sync to the store)."""
    from tests.test_depot_tracking import S10_B, T0, Device, StepClock, pod, record

    book.receive(record(S10_B), now_ns=T0 - 7200 * 10**9, source="import")
    book.assign(S10_B, "van-1", 1, 1)
    clock = StepClock()
    van = Device("van-1", Journal(tmp_path / "van.db", "van-1", clock=clock), store, clock)
    van.emit("manifest_applied", version=1, day="2026-11-18", stops=1, parcels=1)
    van.emit("parcel_loaded", parcel=S10_B, stop=1, shelf=1, raw=S10_B)
    van.emit("departed", version=1, loaded=[S10_B], missing=[])
    van.emit(
        "delivery_failed", parcel=S10_B, stop=1, reason="not_at_home", upu="EMH", x12="AH",
        attempt=1, pod=pod(),
    )
    van.sync()
    return van


DIES_BEFORE_DECIDING = """
import os, sys
from depot.config import DepotConfig
from depot.service import DepotService
service = DepotService(DepotConfig(database=sys.argv[1], lat=52.37, lon=4.90, vans=["van-1"]))
def die(transition):
    os._exit(9)  # the power goes: the projection has committed, the decision is not taken
service._react = die
service.process()
"""


def test_a_decision_a_dead_worker_left_is_taken_by_the_next_once(
    tmp_path: Path, depot_database: str
) -> None:
    from depot.policy import NextAction
    from depot.tracking import ParcelBook
    from tests.test_depot_tracking import S10_B

    store, book = DepotStore(depot_database), ParcelBook(depot_database)
    van = a_failed_attempt(tmp_path, store, book)
    died = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_DECIDING, depot_database],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert died.returncode == 9
    # The failure was projected and committed; what follows from it waits in the queue.
    assert book.track(S10_B)["state"] == "attempted"
    failed = book.parcel(S10_B)
    assert failed is not None and failed["next_action"] is None
    assert book.reactions_waiting() == 1 and book.waiting_events() == 0

    config = DepotConfig(database=depot_database, lat=52.37, lon=4.90, vans=["van-1"])
    service = DepotService(config)
    try:
        service.process()
        assert service.decisions == [
            (S10_B, NextAction("second_attempt", None, service.decisions[0][1].reason))
        ]
        decided = book.parcel(S10_B)
        assert decided is not None and decided["next_action"] == "second_attempt"
        assert book.reactions_waiting() == 0
        service.process()  # nothing is decided twice
        assert len(service.decisions) == 1
        steps = [e["step"] for e in book.track(S10_B)["timeline"]]
        assert steps.count("next_action") == 1
    finally:
        service.stop()
        book.close()
        store.close()
        van.journal.close()


def test_a_refused_reservation_goes_to_the_next_locker_whichever_process_decides(
    tmp_path: Path, depot_database: str
) -> None:
    from depot.config import LockerSiteConfig
    from depot.tracking import ParcelBook
    from tests.test_depot_tracking import S10_B, Device

    near = [
        LockerSiteConfig("locker-near", 52.3705, 4.8955, {"S": 4}),
        LockerSiteConfig("locker-far", 52.3750, 4.9000, {"S": 4}),
    ]
    config = DepotConfig(
        database=depot_database, lat=52.37, lon=4.90, vans=["van-1"], lockers=near
    )
    store, book = DepotStore(depot_database), ParcelBook(depot_database)
    van = a_failed_attempt(tmp_path, store, book)
    locker = Device(
        "locker-near",
        Journal(tmp_path / "locker.db", "locker-near", clock=van.clock),
        store,
        van.clock,
    )
    first = DepotService(config)
    try:
        first.process()
        assert [d.locker for _p, d in first.decisions] == ["locker-near"]
    finally:
        first.stop()
    with depot_sql(depot_database) as conn:
        (command,) = conn.execute(
            "SELECT id FROM depot_commands WHERE target='locker-near'"
        ).fetchone()
    locker.emit("command_failed", id=command, action="reserve", reason="no free compartment")
    locker.sync()
    # A new process (another worker, or this one restarted) knows which locker refused.
    second = DepotService(config)
    try:
        second.process()
        assert [(d.kind, d.locker) for _p, d in second.decisions] == [("locker", "locker-far")]
        assert book.lockers_decided(S10_B) == ["locker-near", "locker-far"]
    finally:
        second.stop()
    with depot_sql(depot_database) as conn:
        (command,) = conn.execute(
            "SELECT id FROM depot_commands WHERE target='locker-far'"
        ).fetchone()
    far = Device(
        "locker-far", Journal(tmp_path / "far.db", "locker-far", clock=van.clock), store, van.clock
    )
    far.emit("command_failed", id=command, action="reserve", reason="no free compartment")
    far.sync()
    # After another restart both refusals are remembered: neither locker is tried again.
    third = DepotService(config)
    try:
        third.process()
        assert [d.kind for _p, d in third.decisions] == ["second_attempt"]
        assert book.lockers_decided(S10_B) == ["locker-near", "locker-far"]
    finally:
        third.stop()
        far.journal.close()
        book.close()
        store.close()
        van.journal.close()
        locker.journal.close()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(c) for c in text)
    return found


def test_the_supervisor_restarts_a_dead_worker_and_stops_them_all(
    fleet_broker: Broker, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(SECRETS)
    config = write_worker_config(tmp_path, fleet_broker, str(tmp_path / "depot.db"), receiver)
    receiver.close()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "lastmile", "depot", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    said: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert supervisor.stdout is not None
    out = supervisor.stdout
    def read_lines() -> None:
        for line in out:
            said.put(line)

    threading.Thread(target=read_lines, daemon=True).start()

    def next_line() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(said.get(timeout=WAIT_S))
        return doc

    try:
        lines = [next_line() for _ in range(3)]
        assert {"depot": "supervising", "workers": 2} in lines
        assert sorted(line.get("worker", 0) for line in lines) == [0, 1, 2]
        workers = _children(supervisor.pid)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        restarted = next_line()  # the new worker says it runs
        assert restarted["depot"] == "running" and restarted["worker"] in (1, 2)
        now = _children(supervisor.pid)
        assert len(now) == 2 and victim not in now
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
        for pid in now:  # every worker stopped with it
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                f"/proc/{pid}/status"
            ).read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)


def test_the_supervisor_alone_talks_to_systemd_and_pings_while_every_worker_runs(
    fleet_broker: Broker, tmp_path: Path
) -> None:
    """`lastmile depot --workers N` under `Type=notify`: READY, STATUS and the watchdog come
    from the supervisor (systemd hears only the main process), never from a worker; a worker
    that is down shows in the STATUS, and SIGTERM is STOPPING=1 then a clean exit."""
    import socket
    import struct

    receiver = WebhookReceiver(SECRETS)
    config = write_worker_config(tmp_path, fleet_broker, str(tmp_path / "depot.db"), receiver)
    receiver.close()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # each datagram's sender
    seen: list[tuple[int, dict[str, str]]] = []

    def next_message(wanted: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            notify.settimeout(left)
            try:
                data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                break
            pid = next(
                struct.unpack("3i", d)[0]
                for level, kind, d in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            seen.append((pid, message))
            if wanted(message):
                return message
        said = log_path.read_text(errors="replace")[-2000:]
        raise AssertionError(f"no {what}; seen {seen[-10:]}; the supervisor said:\n{said}")

    def restarts() -> int:
        """The restarts the last STATUS so far counted (a worker may have died before)."""
        for _pid, message in reversed(seen):
            if "STATUS" in message:
                found = re.search(r"(\d+) restarts?\b", message["STATUS"])
                return int(found.group(1)) if found else 0
        return 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    env["WATCHDOG_USEC"] = "500000"
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log_file:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "lastmile", "depot", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        first = next_message(lambda m: m.get("READY") == "1", "READY=1")
        if "2/2 workers running" not in first.get("STATUS", ""):  # a STATUS= when it changes
            next_message(lambda m: "2/2 workers running" in m.get("STATUS", ""), "both workers")
        for n in range(3):
            next_message(lambda m: m.get("WATCHDOG") == "1", f"ping {n + 1}")
        workers = _children(supervisor.pid)
        assert len(workers) == 2
        before = restarts()
        os.kill(min(workers), signal.SIGKILL)
        next_message(
            lambda m: "STATUS" in m and restarts() > before, "the restart in the STATUS"
        )
        supervisor.send_signal(signal.SIGTERM)
        next_message(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
        assert supervisor.wait(WAIT_S) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(WAIT_S)
        notify.close()
    assert {pid for pid, _ in seen} == {supervisor.pid}  # never a worker
