"""The webhook outbox against a real HTTP receiver: signed, retried, dead-lettered, never lost.

Real SQLite files and real HTTP on 127.0.0.1; the receiver checks signatures with its own code.
Backoff is tiny (or the clock runs 1000x), so retries take milliseconds; every wait is bounded
by a deadline and nothing asserts how long anything took.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from depot import webhooks
from depot.ingest import DepotStore
from depot.store import LATEST, Conn, is_postgres_url, open_database
from depot.webhooks import (
    EVENT_ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    OutboxEntry,
    SignatureError,
    WebhookError,
    WebhookSender,
    dead_letters,
    enqueue,
    ensure_schema,
    entry,
    retry_dead,
    sign,
    stats,
    verify,
)
from simulators.webhooks import WebhookReceiver
from sync.clock import ScaledClock
from tests.conftest import depot_sql

MERCHANT = b"merchant-7 shared secret, 32 bytes"
CUSTOMER = b"customer gateway secret, 32 bytes!"
KEYS = {"merchant-7": MERCHANT, "customer": CUSTOMER}
DEADLINE_S = 3.0


def eventually(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


_SPECS: dict[int, str] = {}  # a test's connection -> the database it reaches (for a sender)


@pytest.fixture
def db(depot_database: str) -> Iterator[Conn]:
    """The depot's database as another part of the depot sees it, on each backend: autocommit,
    outbox tables present (the depot's migrations ran)."""
    open_database(depot_database).close()
    with depot_sql(depot_database) as conn:
        _SPECS[id(conn)] = depot_database
        yield conn
        del _SPECS[id(conn)]


@pytest.fixture
def rx() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(KEYS) as receiver:
        yield receiver


def db_path(conn: Conn) -> str:
    return _SPECS[id(conn)]


def add(
    conn: Conn,
    event_id: str,
    url: str,
    *,
    body: dict[str, Any] | None = None,
    key_id: str = "merchant-7",
) -> bool:
    """Enqueue as the depot does: in one transaction with the state change it reports."""
    conn.execute("BEGIN IMMEDIATE")
    new = enqueue(
        conn,
        event_id=event_id,
        url=url,
        body=body if body is not None else {"event": event_id, "state": "delivered"},
        key_id=key_id,
        now_ns=time.time_ns(),
    )
    conn.execute("COMMIT")
    return new


def sender(conn: Conn, **overrides: Any) -> WebhookSender:
    options: dict[str, Any] = {
        "secret_for": KEYS.__getitem__,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 2.0,
        "rng": random.Random(7),
    }
    options.update(overrides)
    return WebhookSender(db_path(conn), **options)


def row(conn: Conn, event_id: str) -> OutboxEntry:
    found = entry(conn, event_id)
    assert found is not None, event_id
    return found


def state_is(conn: Conn, event_id: str, state: str) -> Callable[[], bool]:
    return lambda: row(conn, event_id).state == state


def requests_for(rx: WebhookReceiver, event_id: str) -> list[int]:
    return [r.status for r in rx.received if r.event_id == event_id]


# --- the signature --------------------------------------------------------------------------


def test_signature_round_trip_and_every_tamper_is_caught() -> None:
    body = b'{"event":"e1","state":"delivered"}'
    header = sign(MERCHANT, 1_700_000_000, body)
    want = hmac.new(MERCHANT, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={want}"
    assert verify(MERCHANT, header, body, now=1_700_000_100) == 1_700_000_000

    tampered = {
        "body": (header, body.replace(b"delivered", b"returned"), 1_700_000_000),
        "secret": (sign(CUSTOMER, 1_700_000_000, body), body, 1_700_000_000),
        "timestamp": (header.replace("t=1700000000", "t=1700000001"), body, 1_700_000_000),
        "stale": (header, body, 1_700_000_301),
        "future": (header, body, 1_699_999_699),
        "no mac": ("t=1700000000", body, 1_700_000_000),
        "no time": (header.split(",")[1], body, 1_700_000_000),
        "garbage": ("garbage", body, 1_700_000_000),
        "text time": (header.replace("1700000000", "soon"), body, 1_700_000_000),
    }
    for name, (bad_header, bad_body, now) in tampered.items():
        with pytest.raises(SignatureError):
            verify(MERCHANT, bad_header, bad_body, now=now)
            pytest.fail(f"{name} was accepted")

    # During a key rotation a sender may sign twice; one matching v1 is enough.
    old = sign(CUSTOMER, 1_700_000_000, body).rpartition("=")[2]
    assert verify(MERCHANT, f"t=1700000000,v1={old},v1={want}", body, now=1_700_000_000)


def test_the_receiver_checks_signatures_with_its_own_code(rx: WebhookReceiver) -> None:
    body = b'{"hello":"world"}'

    def post(signature: str, key_id: str = "merchant-7") -> int:
        request = urllib.request.Request(
            rx.url("/direct"),
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                EVENT_ID_HEADER: "direct-1",
                KEY_ID_HEADER: key_id,
                SIGNATURE_HEADER: signature,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    now = int(time.time())
    assert post(sign(MERCHANT, now, body)) == 200
    assert post(sign(MERCHANT, now - 3600, body)) == 401  # a replay an hour later
    assert post(sign(CUSTOMER, now, body)) == 401  # the wrong key for this key id
    assert post(sign(MERCHANT, now, body), key_id="nobody") == 401
    assert [r.verified for r in rx.received] == [True, False, False, False]
    assert rx.bad_signatures == 3
    assert (rx.unique_events, rx.duplicates) == (1, 0)
    assert rx.received[0].body == {"hello": "world"}


# --- the outbox table -----------------------------------------------------------------------


def test_enqueue_is_idempotent_on_the_event_id(db: Conn) -> None:
    url = "http://merchant.example/hooks"
    assert add(db, "p1:merchant", url, body={"b": 2, "a": "é"}) is True
    assert add(db, "p1:merchant", url, body={"b": 2, "a": "é"}) is False
    assert add(db, "p1:merchant", url, body={"other": True}) is False  # the first one stands
    stored = row(db, "p1:merchant")
    assert stored.body == '{"a":"é","b":2}'.encode()
    assert (stored.state, stored.attempts, stored.key_id) == ("pending", 0, "merchant-7")
    assert stats(db) == {"pending": 1, "sent": 0, "dead": 0, "attempts": 0}


def test_a_notification_commits_or_rolls_back_with_its_state_change(
    db: Conn,
) -> None:
    db.execute("CREATE TABLE states (id TEXT PRIMARY KEY, state TEXT)")
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO states VALUES ('p1', 'delivered')")
    enqueue(
        db, event_id="p1:customer", url="http://x.example/", body=b"{}", key_id="customer", now_ns=1
    )
    db.execute("ROLLBACK")
    assert entry(db, "p1:customer") is None
    assert db.execute("SELECT count(*) FROM states").fetchone()[0] == 0

    with pytest.raises(WebhookError, match="outside a transaction"):
        enqueue(
            db,
            event_id="p2:customer",
            url="http://x.example/",
            body=b"{}",
            key_id="customer",
            now_ns=1,
        )

    if is_postgres_url(db_path(db)):
        return  # the rest is about sqlite3's own transaction modes
    # Python's default (legacy) transaction mode opens the transaction itself.
    legacy = sqlite3.connect(db_path(db), timeout=10.0)
    with legacy:
        legacy.execute("INSERT INTO states VALUES ('p3', 'delivered')")
        enqueue(
            legacy,
            event_id="p3:customer",
            url="http://x.example/",
            body=b"{}",
            key_id="customer",
            now_ns=1,
        )
    legacy.close()
    assert row(db, "p3:customer").state == "pending"


@pytest.mark.parametrize(
    ("event_id", "url", "body"),
    [
        ("p1:merchant\r\nX-Injected: 1", "http://x.example/", b"{}"),
        ("", "http://x.example/", b"{}"),
        ("p1:merchant", "ftp://x.example/", b"{}"),
        ("p1:merchant", "http:///no-host", b"{}"),
        ("p1:merchant", "http://x.example/", b"not json"),
        ("p1:merchant", "http://x.example/", {"nan": float("nan")}),
    ],
)
def test_enqueue_refuses_what_could_never_be_sent(
    db: Conn, event_id: str, url: str, body: Any
) -> None:
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(WebhookError):
        enqueue(db, event_id=event_id, url=url, body=body, key_id="k", now_ns=1)
    db.execute("ROLLBACK")


def test_the_outbox_is_part_of_the_depot_s_one_schema(tmp_path: Path) -> None:
    path = tmp_path / "depot.db"
    store = DepotStore(path)
    conn = sqlite3.connect(path, isolation_level=None)
    ensure_schema(conn)
    ensure_schema(conn)  # idempotent
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST  # the one version
    store.close()
    DepotStore(path).close()  # the depot still opens its file

    fresh = tmp_path / "outbox-first.db"
    first = sqlite3.connect(fresh, isolation_level=None)
    ensure_schema(first)  # the sender may create its tables before the depot exists
    DepotStore(fresh).close()
    assert stats(first)["pending"] == 0
    first.close()
    conn.close()


# --- delivery -------------------------------------------------------------------------------


def test_delivered_once_signed_and_marked_sent(db: Conn, rx: WebhookReceiver) -> None:
    add(db, "p1:merchant", rx.url("/merchant"), body={"parcel": "p1", "state": "delivered"})
    add(db, "p1:customer", rx.url("/customer"), key_id="customer")
    add(db, "p2:merchant", rx.url("/merchant"))
    with sender(db) as s:
        s.wake()
        assert eventually(lambda: stats(db)["sent"] == 3)
    assert stats(db) == {"pending": 0, "sent": 3, "dead": 0, "attempts": 3}
    assert (rx.unique_events, rx.duplicates, rx.bad_signatures) == (3, 0, 0)
    first = next(r for r in rx.received if r.event_id == "p1:merchant")
    assert (first.path, first.key_id, first.attempt) == ("/merchant", "merchant-7", "1")
    assert first.verified and first.body == {"parcel": "p1", "state": "delivered"}
    stored = row(db, "p1:merchant")
    assert stored.body == first.raw  # the exact bytes stored are what was signed and sent
    assert (stored.status_code, stored.last_error) == (200, None)
    assert stored.sent_ns is not None


def test_a_refusing_receiver_gets_it_after_it_comes_back(
    db: Conn, rx: WebhookReceiver
) -> None:
    # Production backoff (30 s, doubling) on a clock running 1000x: retries in milliseconds.
    clock = ScaledClock(wall_start_ns=time.time_ns(), speed=1000.0, boot_id="test")
    rx.down("refuse")
    add(db, "p1:merchant", rx.url())
    with sender(db, clock=clock, backoff_base_s=30.0, backoff_max_s=3600.0) as s:
        assert eventually(lambda: row(db, "p1:merchant").attempts >= 2)
        failed = row(db, "p1:merchant")
        assert failed.state == "pending" and failed.status_code is None
        assert failed.last_error is not None and "refused" in failed.last_error.lower()
        rx.up()
        s.wake()
        assert eventually(state_is(db, "p1:merchant", "sent"))
    assert requests_for(rx, "p1:merchant") == [200]  # refused attempts never reached it
    assert rx.duplicates == 0
    assert row(db, "p1:merchant").attempts >= 3


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_server_errors_are_retried_with_backoff(
    db: Conn, rx: WebhookReceiver, status: int
) -> None:
    rx.fail_next(2, status)
    add(db, "p1:merchant", rx.url())
    with sender(db):
        assert eventually(state_is(db, "p1:merchant", "sent"))
    assert requests_for(rx, "p1:merchant") == [status, status, 200]
    assert [r.attempt for r in rx.received] == ["1", "2", "3"]
    assert all(r.verified for r in rx.received)  # re-signed with a fresh timestamp each time
    assert (rx.unique_events, rx.duplicates) == (1, 0)
    assert row(db, "p1:merchant").attempts == 3


def test_retry_after_is_honoured(db: Conn, rx: WebhookReceiver) -> None:
    clock = ScaledClock(wall_start_ns=time.time_ns(), speed=1000.0, boot_id="test")
    rx.fail_next(1, 429, retry_after=90)
    add(db, "p1:merchant", rx.url())
    with sender(db, clock=clock, backoff_base_s=1.0, backoff_max_s=3600.0):
        assert eventually(state_is(db, "p1:merchant", "sent"))
    assert requests_for(rx, "p1:merchant") == [429, 200]
    # The retry was scheduled (in clock time) no sooner than the receiver asked, although
    # the backoff alone would have said 0.5-1 s; marking it sent leaves the schedule alone.
    sent = row(db, "p1:merchant")
    assert sent.next_attempt_ns - sent.created_ns >= 90 * 10**9


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_a_permanent_refusal_is_dead_lettered_at_once(
    db: Conn, rx: WebhookReceiver, status: int
) -> None:
    rx.fail_next(1, status)
    add(db, "p1:merchant", rx.url())
    add(db, "p2:merchant", rx.url())  # a later event: once it is sent, p1 had its chance
    with sender(db):
        assert eventually(lambda: stats(db)["sent"] == 1 and stats(db)["dead"] == 1)
    dead = row(db, "p1:merchant")
    assert (dead.state, dead.attempts, dead.status_code) == ("dead", 1, status)
    assert dead.last_error is not None and "permanent" in dead.last_error
    assert requests_for(rx, "p1:merchant") == [status]


def test_max_attempts_leaves_a_dead_letter_with_its_last_error(
    db: Conn, rx: WebhookReceiver
) -> None:
    rx.down("503")
    add(db, "p1:merchant", rx.url(), body={"parcel": "p1"})
    with sender(db, max_attempts=3):
        assert eventually(state_is(db, "p1:merchant", "dead"))
    assert requests_for(rx, "p1:merchant") == [503, 503, 503]
    [dead] = dead_letters(db)
    assert (dead.event_id, dead.attempts, dead.status_code) == ("p1:merchant", 3, 503)
    assert dead.last_error is not None and "gave up after 3 attempts" in dead.last_error
    assert "503" in dead.last_error
    assert json.loads(dead.body) == {"parcel": "p1"}  # kept whole, for a person to resend
    assert stats(db) == {"pending": 0, "sent": 0, "dead": 1, "attempts": 3}


def test_retry_dead_requeues_a_dead_letter(db: Conn, rx: WebhookReceiver) -> None:
    rx.fail_next(1, 404)  # the merchant's endpoint was misconfigured
    add(db, "p1:merchant", rx.url())
    with sender(db) as s:
        assert eventually(state_is(db, "p1:merchant", "dead"))
        assert retry_dead(db, "p1:merchant") is True  # the operator fixed it and retries
        s.wake()
        assert eventually(state_is(db, "p1:merchant", "sent"))
    assert retry_dead(db, "p1:merchant") is False  # only a dead letter can be requeued
    assert retry_dead(db, "no-such-event") is False
    assert requests_for(rx, "p1:merchant") == [404, 200]
    assert row(db, "p1:merchant").attempts == 1  # a fresh budget after the requeue
    assert dead_letters(db) == []


def test_a_restarted_sender_continues_and_never_resends(
    db: Conn, rx: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "RECHECK_S", 0.05)
    add(db, "p1:merchant", rx.url())
    add(db, "p2:merchant", rx.url())
    with sender(db):
        assert eventually(lambda: stats(db)["sent"] == 2)
        rx.down("refuse")
        add(db, "p3:merchant", rx.url())
        add(db, "p4:customer", rx.url(), key_id="customer")
        # wake() is not called: the sender notices rows another connection committed.
        assert eventually(lambda: row(db, "p3:merchant").attempts >= 1)
    assert row(db, "p3:merchant").state == "pending"
    rx.up()
    with sender(db):  # a new instance on the same file, as after a depot restart
        assert eventually(lambda: stats(db)["sent"] == 4)
    for event_id in ("p1:merchant", "p2:merchant", "p3:merchant", "p4:customer"):
        assert rx.accepted(event_id) == 1, event_id
    assert (rx.unique_events, rx.duplicates) == (4, 0)


def test_a_receiver_that_is_down_does_not_hold_up_another(db: Conn) -> None:
    with WebhookReceiver(MERCHANT) as down, WebhookReceiver(CUSTOMER) as fine:
        down.down("refuse")
        add(db, "p1:merchant", down.url())
        add(db, "p1:customer", fine.url(), key_id="customer")
        with sender(db, backoff_base_s=0.2, backoff_max_s=1.0):
            assert eventually(state_is(db, "p1:customer", "sent"))
            assert row(db, "p1:merchant").state == "pending"
        assert fine.accepted("p1:customer") == 1


def test_a_wrong_secret_is_caught_by_the_receiver_and_dead_lettered(
    db: Conn, rx: WebhookReceiver
) -> None:
    add(db, "p1:merchant", rx.url())
    with sender(db, secret_for=lambda key_id: b"not the merchant's secret"):
        assert eventually(state_is(db, "p1:merchant", "dead"))
    assert rx.bad_signatures == 1 and rx.unique_events == 0
    [request] = rx.received
    assert (request.verified, request.status) == (False, 401)
    assert row(db, "p1:merchant").status_code == 401


def test_a_missing_secret_is_retried_then_dead_lettered(
    db: Conn, rx: WebhookReceiver
) -> None:
    add(db, "p1:merchant", rx.url(), key_id="merchant-unknown")
    with sender(db, max_attempts=2):
        assert eventually(state_is(db, "p1:merchant", "dead"))
    assert rx.received == []  # nothing unsigned ever leaves
    last_error = row(db, "p1:merchant").last_error
    assert last_error is not None and "no secret for key id" in last_error


def test_a_timed_out_post_is_resent_and_the_receiver_dedups(
    db: Conn, rx: WebhookReceiver
) -> None:
    # The honest case of at-least-once: the receiver handled it, but too late for the sender.
    rx.slow(0.6)
    add(db, "p1:merchant", rx.url())
    with sender(db, timeout_s=0.15):
        assert eventually(lambda: row(db, "p1:merchant").attempts >= 1)
        rx.slow(0)
        assert eventually(state_is(db, "p1:merchant", "sent"))
        assert rx.wait_for(lambda: rx.accepted("p1:merchant") == 2, DEADLINE_S)
    assert re.search(r"time", row(db, "p1:merchant").last_error or "", re.IGNORECASE)
    assert (rx.unique_events, rx.duplicates) == (1, 1)
