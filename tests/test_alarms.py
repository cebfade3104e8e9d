"""Alarms and device presence at the depot, end to end.

A real locker on simulated lock boards (a real pseudo-terminal), its real journal and uplink,
a real Mosquitto, the depot service on each database backend, its real HTTP API, a real
webhook receiver standing in for the operator, and the real `lastmile` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depot import alarms
from depot.config import DepotConfig
from depot.service import DepotService
from depot.store import open_database
from drivers.lockboard import BoardConfig
from edge.locker_config import CompartmentSpec, LockerConfig
from edge.locker_device import LockerDevice
from simulators.broker import Broker
from simulators.link import LinkProxy
from simulators.lockboard import SimulatedLockBoards
from simulators.webhooks import WebhookReceiver
from sync.journal import Journal
from sync.uplink import Uplink
from tests.conftest import FAST_SYNC, address, wait_until
from tests.web import client

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 20.0
OPERATOR_SECRET = b"operator-secret-0123456789"




def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET, or POST `body` as JSON; (status, parsed JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Silent:
    """The locker's screen, unread."""

    def show(self, message: str, **facts: Any) -> None:
        pass


@pytest.fixture
def depot(
    broker: Broker, depot_database: str, tmp_path: Path
) -> Iterator[tuple[DepotService, WebhookReceiver]]:
    receiver = WebhookReceiver({"operator": OPERATOR_SECRET})
    config = DepotConfig(
        database=depot_database,
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        broker=address(broker, "depot"),
        api=("127.0.0.1", 0),
        webhook_secrets={"operator": OPERATOR_SECRET},
        operator_webhook=receiver.url("/ops/alarms"),
    )
    service = DepotService(config)
    service.start()
    try:
        assert service.depot is not None and service.depot.session.wait_connected(10)
        yield service, receiver
    finally:
        service.stop()
        receiver.close()


def start_locker(broker: Broker, tmp_path: Path) -> tuple[LockerDevice, SimulatedLockBoards]:
    broker.add_device("locker-1", "locker-1-password-0123")
    boards = SimulatedLockBoards(1, link=tmp_path / "bus.tty")
    config = LockerConfig(
        device_id="locker-1",
        journal=tmp_path / "locker.db",
        lockboard_port=str(boards.path),
        boards=[BoardConfig(0)],
        compartments=[CompartmentSpec("A1", 0, 0, "S"), CompartmentSpec("B1", 0, 1, "M")],
        door_open_alarm_s=0.5,
        poll_interval_s=0.05,
        broker=address(broker, "locker-1"),
        sync=dict(FAST_SYNC),
    )
    device = LockerDevice(config, Silent())
    device.start()
    return device, boards


def lastmile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        cwd=ROOT, text=True, capture_output=True, timeout=60, check=False,
    )


def test_a_forced_locker_door_reaches_the_api_the_operator_and_a_person(
    depot: tuple[DepotService, WebhookReceiver], broker: Broker, tmp_path: Path
) -> None:
    service, operator = depot
    api = service.api.url
    http = client(service.database)

    def locker_1() -> dict[str, Any]:
        found = http(f"{api}/devices")[1]["devices"]
        return next((d for d in found if d["device"] == "locker-1"), {})

    locker, boards = start_locker(broker, tmp_path)
    try:
        boards.force_open(0, 1)  # someone pries B1 open, and leaves it open
        assert operator.wait_for(lambda: operator.unique_events >= 2, WAIT_S), operator.received
        wait_until(lambda: locker_1().get("state") == "online", "locker-1 online")
        row = locker_1()
        assert row["alarms_open"] == 2 and row["last_seq"] >= 2 and row["last_seen"]
    finally:
        locker.stop()
        boards.close()
    wait_until(lambda: locker_1().get("state") == "offline", "locker-1's goodbye")

    # The operator heard of each alarm once, signed with the operator's secret.
    told = [r for r in operator.received if r.status == 200]
    assert all(r.verified and r.key_id == "operator" for r in told)
    assert all(r.path == "/ops/alarms" and r.body["type"] == "alarm" for r in told)
    names = sorted(r.body["alarm"]["alarm"] for r in told)
    assert names == ["door_left_open", "forced_open"]
    assert len({r.event_id for r in told}) == len(told) == 2

    status, listing = http(f"{api}/alarms")
    assert status == 200 and listing["count"] == 2
    by_name = {a["alarm"]: a for a in listing["alarms"]}
    forced = by_name["forced_open"]
    assert forced["device"] == "locker-1" and forced["source"] == "device"
    assert forced["facts"]["compartment"] == "B1" and forced["state"] == "open"
    assert forced["raised_at"].endswith("Z") and forced["acknowledged_by"] is None

    # A person acknowledges one over HTTP; a second try is refused with who did it first.
    status, acked = http(f"{api}/alarms/{forced['id']}/ack", {"by": "Sam", "note": "glued shut"})
    assert status == 200 and acked["state"] == "acknowledged"
    assert (acked["acknowledged_by"], acked["note"]) == ("Sam", "glued shut")
    status, again = http(f"{api}/alarms/{forced['id']}/ack", {"by": "Kim"})
    assert status == 409 and "Sam" in again["error"] and again["alarm"]["note"] == "glued shut"
    assert http(f"{api}/alarms/999999/ack", {"by": "Kim"})[0] == 404
    assert http(f"{api}/alarms/{forced['id']}/ack", {"by": 7})[0] == 400
    assert http(f"{api}/alarms/{forced['id']}/ack")[0] == 405  # a GET
    assert http(f"{api}/alarms?state=lost")[0] == 400

    status, still_open = http(f"{api}/alarms")
    assert [a["alarm"] for a in still_open["alarms"]] == ["door_left_open"]
    status, done = http(f"{api}/alarms?state=acknowledged")
    assert [a["id"] for a in done["alarms"]] == [forced["id"]]
    assert http(f"{api}/alarms?state=all")[1]["count"] == 2
    assert service.alarms_open() == 1

    # The desk's command line lists and acknowledges them too.
    db = str(service.config.database)
    listed = lastmile("depot", "alarms", "--json", "--database", db)
    assert listed.returncode == 0, listed.stderr
    [left] = json.loads(listed.stdout)
    acked_cli = lastmile("depot", "alarms", "--ack", str(left["id"]), "--by", "Kim",
                         "--database", db)
    assert acked_cli.returncode == 0, acked_cli.stderr
    twice = lastmile("depot", "alarms", "--ack", str(left["id"]), "--by", "Kim", "--database", db)
    assert twice.returncode == 1 and "already acknowledged by Kim" in twice.stderr
    no_name = lastmile("depot", "alarms", "--ack", str(left["id"]), "--database", db)
    assert no_name.returncode == 2 and "--by" in no_name.stderr
    assert service.alarms_open() == 0
    assert http(f"{api}/alarms")[1]["count"] == 0


def test_a_device_whose_link_dies_goes_offline_by_its_will(
    depot: tuple[DepotService, WebhookReceiver], broker: Broker, tmp_path: Path
) -> None:
    service, _ = depot
    api = service.api.url
    http = client(service.database)

    def van_1() -> dict[str, Any] | None:
        found = http(f"{api}/devices")[1]["devices"]
        return next((d for d in found if d["device"] == "van-1"), None)

    link = LinkProxy(broker.host, broker.port, name="van-1")
    link.start()
    journal = Journal(tmp_path / "van-1.db", "van-1")
    uplink = Uplink(journal, address(broker, "van-1", link.port), **FAST_SYNC)
    try:
        seq = journal.append("parcel_scanned", {"parcel": "RB123456785GB"}).seq
        uplink.start()
        assert uplink.wait_acked(seq, WAIT_S)
        wait_until(lambda: (van_1() or {}).get("state") == "online", "van-1 online")
        online = van_1()
        assert online is not None and online["last_seq"] == seq and online["journal"]
        assert online["backlog"] == 0 and online["alarms_open"] == 0

        link.cut()  # the van drives into a tunnel: no goodbye, the broker sends its will
        wait_until(lambda: (van_1() or {}).get("state") == "offline", "van-1's will")
        offline = van_1()
        assert offline is not None and offline["last_seq"] == seq
        assert offline["last_seen"] >= online["last_seen"]
    finally:
        uplink.stop()
        journal.close()
        link.stop()


def test_raising_and_acknowledging_alarms_in_the_store(depot_database: str) -> None:
    """`raise_alarm` is idempotent on its key, device alarms on their event uuid; an alarm is
    acknowledged once; the operator is told of each once, whichever way it was raised."""
    database = open_database(depot_database)
    try:
        with database.transaction() as conn:
            assert alarms.raise_alarm(
                conn, device="locker-1", alarm="item_mismatch", facts={"parcel": "P1"},
                at_ns=1_700_000_000_000_000_000, key="mismatch:P1",
            )
            assert not alarms.raise_alarm(
                conn, device="locker-1", alarm="item_mismatch", facts={"parcel": "P1"},
                at_ns=1_700_000_000_000_000_001, key="mismatch:P1",
            )
            assert alarms.record_device_alarm(
                conn, event_uuid="e-1", device="van-1",
                payload={"alarm": "journal_corrupt", "moved_to": "x.db"}, at_ns=5,
            )
            assert not alarms.record_device_alarm(
                conn, event_uuid="e-1", device="van-1", payload={"alarm": "journal_corrupt"},
                at_ns=5,
            )
        with database.reading() as conn:
            listed = alarms.list_alarms(conn)
            assert alarms.open_count(conn) == 2
            assert alarms.open_by_device(conn) == {"locker-1": 1, "van-1": 1}
        assert [a["alarm"] for a in listed] == ["journal_corrupt", "item_mismatch"]
        assert listed[1]["source"] == "depot" and listed[1]["facts"] == {"parcel": "P1"}
        assert listed[0]["facts"] == {"moved_to": "x.db"}

        with database.transaction() as conn:
            doc = alarms.acknowledge(conn, listed[1]["id"], by="Sam", now_ns=10**18)
        assert doc["state"] == "acknowledged" and doc["acknowledged_at"].startswith("2001-09-09")
        with pytest.raises(alarms.AlarmStateError), database.transaction() as conn:
            alarms.acknowledge(conn, listed[1]["id"], by="Kim", now_ns=10**18)
        with pytest.raises(alarms.UnknownAlarmError), database.transaction() as conn:
            alarms.acknowledge(conn, 424242, by="Kim", now_ns=10**18)
        with pytest.raises(alarms.AlarmError), database.transaction() as conn:
            alarms.acknowledge(conn, listed[0]["id"], by="  ", now_ns=10**18)
        with pytest.raises(alarms.AlarmError), database.transaction() as conn:
            alarms.raise_alarm(conn, device="d", alarm="a", facts={"x": object()}, at_ns=1,
                               key="k")

        url = "http://127.0.0.1:9/ops"
        assert alarms.notify_operator(database, url=url, now_ns=1) == 2
        assert alarms.notify_operator(database, url=url, now_ns=2) == 0  # told once
        with database.reading() as conn:
            from depot.webhooks import stats

            assert stats(conn)["pending"] == 2
            assert alarms.open_count(conn) == 1  # told is not acknowledged
    finally:
        database.close()


def test_a_device_s_status_says_how_much_the_depot_has_not_confirmed(
    broker: Broker, tmp_path: Path
) -> None:
    """No depot listens: the van's three events stay unconfirmed, and its retained status
    (what `/devices` reads) says so."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from sync.wire import status_topic

    journal = Journal(tmp_path / "van-1.db", "van-1")
    for n in range(3):
        journal.append("parcel_scanned", {"parcel": f"RB12345678{n}GB"})
    uplink = Uplink(journal, address(broker, "van-1"), **FAST_SYNC)
    seen: list[dict[str, Any]] = []
    user, password = broker.depot_credentials
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
    client.connect(broker.host, broker.port)
    client.subscribe(status_topic("van-1"), qos=1)
    client.loop_start()
    try:
        uplink.start()
        wait_until(lambda: any(s.get("state") == "online" for s in seen), "van-1's status")
        online = next(s for s in seen if s.get("state") == "online")
        assert online["journal"] == journal.journal_id
        assert online["last_seq"] == 3 and online["backlog"] == 3
    finally:
        client.loop_stop()
        client.disconnect()
        uplink.stop()
        journal.close()
