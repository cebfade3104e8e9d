"""`GET /health` tells the truth: 200 only while the depot is connected, its database
answers, ingest keeps up and the webhook outbox is clean; else 503 and what is wrong.

A real Mosquitto with accounts (one test gives the depot a wrong password), the depot service
with its real HTTP API, real SQLite files and PostgreSQL databases, a real webhook receiver.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig
from depot.health import DepotHealth
from depot.service import DepotService
from depot.store import open_database
from depot.webhooks import enqueue, retry_dead
from simulators.broker import Broker
from simulators.webhooks import WebhookReceiver
from sync.mqtt import BrokerAddress
from tests.conftest import address, depot_sql, wait_until

WAIT_S = 20.0
SECRET = b"merchant-secret-0123456789"




def health(service: DepotService) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(service.api.url + "/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_depot(
    stack: ExitStack, database: str, broker: BrokerAddress | None, **settings: Any
) -> DepotService:
    config = DepotConfig(
        database=database, lat=52.37, lon=4.90, vans=["van-1"], broker=broker,
        api=("127.0.0.1", 0), **settings,
    )
    service = DepotService(config)
    service.start()
    stack.callback(service.stop)
    return service


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def test_a_refused_password_is_never_ok(broker: Broker, tmp_path: Path, stack: ExitStack) -> None:
    user, _ = broker.depot_credentials
    wrong = BrokerAddress(broker.host, broker.port, user, "not-the-password")
    service = start_depot(stack, str(tmp_path / "depot.db"), wrong)

    def refused() -> bool:
        return any("refused the credentials" in p for p in health(service)[1]["problems"])

    wait_until(refused, "the broker's refusal")
    status, doc = health(service)
    assert status == 503 and doc["ok"] is False
    [problem] = doc["problems"]
    assert f"refused the credentials of {user}" in problem
    assert "not authori" in problem.lower() or "bad user name or password" in problem.lower()
    assert doc["broker"]["connected"] is False and doc["broker"]["problem"] == problem
    assert doc["database"]["ok"] is True and doc["parcels"] == 0  # the old fields stay
    assert service.depot is not None and not service.depot.session.wait_connected(1.0)
    assert health(service)[0] == 503  # it keeps retrying, and keeps saying so


def test_an_unreachable_broker_and_no_broker_are_problems(
    tmp_path: Path, stack: ExitStack
) -> None:
    nowhere = BrokerAddress("127.0.0.1", 9, "depot", "pw")  # the discard port: nobody listens
    service = start_depot(stack, str(tmp_path / "a.db"), nowhere)
    wait_until(lambda: "cannot reach" in " ".join(health(service)[1]["problems"]),
               "the broker to be found unreachable")
    assert health(service)[0] == 503

    alone = start_depot(stack, str(tmp_path / "b.db"), None)
    status, doc = health(alone)
    assert status == 503
    assert doc["problems"] == ["no broker configured: no device events can arrive"]


def test_ok_until_a_webhook_is_dead_lettered_and_again_once_it_is_sent(
    broker: Broker, depot_database: str, stack: ExitStack
) -> None:
    receiver = WebhookReceiver({"shop-a": SECRET})
    stack.callback(receiver.close)
    service = start_depot(
        stack, depot_database, address(broker, "depot"),
        webhook_secrets={"shop-a": SECRET}, webhook_max_attempts=1,
    )
    assert service.depot is not None and service.depot.session.wait_connected(10)
    status, doc = health(service)
    assert (status, doc["ok"], doc["problems"]) == (200, True, [])
    assert doc["broker"]["connected"] is True and doc["webhooks"]["dead"] == 0

    receiver.fail_next(1, status=410)  # the merchant's endpoint says: gone, do not retry
    with service.database.transaction() as conn:
        enqueue(conn, event_id="e-1", url=receiver.url(), body={"n": 1}, key_id="shop-a",
                now_ns=service.clock.wall_ns())
    service.webhooks.wake()
    wait_until(lambda: health(service)[0] == 503, "the dead letter to show")
    status, doc = health(service)
    assert doc["ok"] is False and doc["webhooks"]["dead"] == 1
    assert doc["problems"] == [
        "1 webhook(s) dead-lettered: their receivers refused them or never answered; "
        "a person must look (and retry them)"
    ]

    with service.database.transaction() as conn:  # the merchant fixed it; a person retries
        assert retry_dead(conn, "e-1")
    service.webhooks.wake()
    assert receiver.wait_for(lambda: receiver.unique_events == 1, WAIT_S)
    wait_until(lambda: health(service)[0] == 200, "health to recover")


def test_a_stalled_ingest_or_outbox_and_a_broken_database_are_problems(
    depot_database: str,
) -> None:
    database = open_database(depot_database)
    try:
        checked = DepotHealth(database, session=None, max_events_waiting=0,
                              max_webhook_age_s=0.0)
        with depot_sql(depot_database) as sql:
            sql.execute("INSERT INTO unprojected(rowid) VALUES (4242)")  # a stored event waits
        with database.transaction() as conn:
            enqueue(conn, event_id="e-1", url="http://127.0.0.1:9/", body={}, key_id="k",
                    now_ns=time.time_ns() - 10**9)
        doc = checked.check()
        assert doc["ok"] is False and doc["webhooks"]["pending"] == 1
        problems = " | ".join(doc["problems"])
        assert "no broker configured" in problems
        assert "ingest is behind: 1 stored events wait" in problems
        assert "webhook outbox backlog: 1 pending, the oldest for" in problems
        assert len(doc["problems"]) == 3
    finally:
        database.close()
    if database.path is not None:  # SQLite: the file is gone; the check says so, not ok
        os.remove(database.path)
        doc = DepotHealth(database, session=None).check()
        assert doc["ok"] is False and doc["database"] == {"ok": False}
        assert any(p.startswith("database error: ") for p in doc["problems"])


def test_the_api_alone_vouches_for_its_database_and_no_more(tmp_path: Path) -> None:
    from depot.tracking import ParcelBook
    from depot.web import DepotWeb

    book = ParcelBook(tmp_path / "depot.db")
    try:
        with DepotWeb(book) as api:
            with urllib.request.urlopen(api.url + "/health", timeout=10) as response:
                assert response.status == 200 and json.loads(response.read())["ok"] is True
            for leftover in tmp_path.glob("depot.db*"):
                leftover.unlink()  # someone deletes the depot's file from under it
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(api.url + "/health", timeout=10)
            doc = json.loads(refused.value.read())
            assert refused.value.code == 503 and doc["ok"] is False
            assert [p.split(":")[0] for p in doc["problems"]] == ["database error"]
    finally:
        book.close()
