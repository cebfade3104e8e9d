"""Customer returns: booked at the depot, dropped into a locker with a code, collected by a van,
brought back to the depot, and the merchant told at each step.

Real parts: the locker on simulated lock boards over a real pseudo-terminal with its real
journal (tests/test_locker.py's rig), the depot service on a real SQLite file fed through its
real ingest from real device journals (tests/test_collections.py's), its HTTP API over real
HTTP, and the merchant's and customer's webhook receiver (simulators.webhooks).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import DepotService
from depot.web import DepotWeb, auth
from edge.locker import BADGE_PREFIX
from parcel.identify import identify, s10_check_digit
from parcel.manifest import LockerReturn, Manifest
from simulators.webhooks import WebhookReceiver
from sync.journal import Journal
from sync.return_codes import (
    RETURN_QR_PREFIX,
    code_hash,
    issue_return_code,
    new_salt,
    salt_from_text,
    salt_text,
)
from sync.signing import generate_keypair, generate_sealing_keypair
from sync.wire import decode_batch, encode_batch
from tests.conftest import wait_until
from tests.test_locker import LOCK, Rig, _command, close_rig, make_rig

RETURN_ID = "RR900000015NL"


def _expect(rig: Rig, parcel: str = RETURN_ID, size: str = "S", hours: float = 24.0) -> Any:
    """The depot's `expect_return` for a fresh code; returns the code as the customer has it."""
    issued = issue_return_code(new_salt())
    args = {
        "parcel": parcel,
        "size": size,
        "salt": salt_text(issued.salt),
        "code_hash": issued.code_hash,
        "qr_hash": issued.qr_hash,
        "hours": hours,
    }
    rig.locker.command("expect_return", _command(rig, "expect_return", args))
    rig.watch.wait_event("command_accepted", action="expect_return", parcel=parcel)
    return issued


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    close_rig(r)


def test_the_right_return_code_opens_a_fitting_compartment_once(rig: Rig) -> None:
    issued = _expect(rig, size="M")
    journal_text = json.dumps([dict(e.payload) for e in rig.watch.events])
    assert issued.code not in journal_text and issued.qr_token not in journal_text
    rig.locker.key(issued.code)
    unlocked = rig.watch.wait_event("door_unlocked", purpose="return_dropoff", parcel=RETURN_ID)
    assert unlocked.payload["compartment"] == "B1"  # the smallest M or bigger
    rig.person_puts_parcel_and_closes("B1")
    dropped = rig.watch.wait_event("return_dropped", parcel=RETURN_ID)
    assert dropped.payload == {"parcel": RETURN_ID, "compartment": "B1", "size": "M"}
    assert rig.journal.query("SELECT state, parcel FROM compartments WHERE id='B1'") == [
        ("occupied", RETURN_ID)
    ]
    # The code opens once: typed again, it is a wrong code.
    rig.locker.key(issued.code)
    rig.watch.wait_event("return_attempt", ok=False)
    assert all(rig.boards.unlock_count(*lock) == (c == "B1") for c, lock in LOCK.items())


def test_a_wrong_return_code_opens_nothing_and_five_lock_the_keypad(rig: Rig) -> None:
    issued = _expect(rig)
    wrong = "00000000" if issued.code != "00000000" else "11111111"
    for _ in range(5):
        rig.locker.key(wrong)
    rig.watch.wait_event("keypad_locked")
    rig.locker.key(issued.code)  # even the right code waits out the lockout
    refused = rig.watch.wait_event("return_attempt", reason="keypad locked")
    assert refused.payload["ok"] is False
    attempts = [e for e in rig.watch.events if e.kind == "return_attempt"]
    assert len(attempts) == 6 and not any(e.payload["ok"] for e in attempts)
    assert not [e for e in rig.watch.events if e.kind == "door_unlocked"]
    assert all(rig.boards.unlock_count(*lock) == 0 for lock in LOCK.values())


def test_the_return_qr_opens_and_an_empty_close_opens_bigger_next_time(rig: Rig) -> None:
    issued = _expect(rig)
    rig.locker.scan(issued.qr_text, "]Q1")
    rig.watch.wait_event("door_unlocked", purpose="return_dropoff", compartment="A1")
    rig.door_springs_open("A1")
    rig.boards.close_door(*LOCK["A1"])  # it did not fit: closed empty
    rig.watch.wait_event("return_dropoff_abandoned", parcel=RETURN_ID, compartment="A1")
    rig.locker.scan(RETURN_QR_PREFIX + issued.qr_token, "]Q1")
    rig.watch.wait_event("door_unlocked", purpose="return_dropoff", compartment="B1")
    rig.person_puts_parcel_and_closes("B1")
    rig.watch.wait_event("return_dropped", parcel=RETURN_ID, compartment="B1")


def test_a_courier_collects_a_dropped_return_with_the_expired_holds(rig: Rig) -> None:
    issued = _expect(rig)
    rig.locker.key(issued.code)
    rig.watch.wait_event("door_unlocked", purpose="return_dropoff")
    rig.person_puts_parcel_and_closes("A1")
    rig.watch.wait_event("return_dropped", parcel=RETURN_ID)
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.key("#2")
    rig.watch.wait_event("door_unlocked", compartment="A1", purpose="return")
    rig.person_takes_parcel_and_closes("A1")
    rig.watch.wait_event("parcel_returned", parcel=RETURN_ID, compartment="A1")
    assert rig.journal.query("SELECT state FROM compartments WHERE id='A1'") == [("free",)]


def test_a_return_code_that_ran_out_opens_nothing(rig: Rig) -> None:
    issued = _expect(rig, hours=0.0003)  # about a second
    rig.watch.wait_event("return_lapsed", parcel=RETURN_ID)
    rig.locker.key(issued.code)
    rig.watch.wait_event("return_attempt", ok=False)
    assert all(rig.boards.unlock_count(*lock) == 0 for lock in LOCK.values())


def test_an_expect_return_with_a_bad_hash_fails_and_remembers_nothing(rig: Rig) -> None:
    issued = issue_return_code(new_salt())
    args = {
        "parcel": RETURN_ID,
        "size": "S",
        "salt": salt_text(issued.salt),
        "code_hash": "not-a-hash",
        "qr_hash": issued.qr_hash,
        "hours": 24.0,
    }
    rig.locker.command("expect_return", _command(rig, "expect_return", args))
    failed = rig.watch.wait_event("command_failed", action="expect_return")
    assert "code hash" in str(failed.payload["reason"])
    assert rig.journal.query("SELECT count(*) FROM expected_returns") == [(0,)]


# --- the depot: booking over HTTP, the locker's drop, the collection, the merchant told --------

SECRETS = {"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-customer-0123456789"}
DAY = "2026-11-21"
DEPOT = (52.3676, 4.9041)
NORTH = (DEPOT[0] + 0.03, DEPOT[1])  # about 3.3 km north of the depot
SOUTH = (DEPOT[0] - 0.03, DEPOT[1])
LOCKER_AT = (NORTH[0] + 0.002, NORTH[1])


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


SOLD, SOUTHERN, UNDELIVERED = s10(11), s10(22), s10(33)


@dataclass
class Desk:
    service: DepotService
    receiver: WebhookReceiver
    web: DepotWeb
    token: str
    tmp: Path
    journals: dict[str, Journal] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)

    def tell(self, device: str, kind: str, **payload: Any) -> None:
        """`device` journals a fact, syncs it through the depot's ingest, the depot acts."""
        if device not in self.journals:
            self.journals[device] = Journal(self.tmp / f"{device}.journal.db", device)
        journal = self.journals[device]
        journal.append(kind, payload)
        prev, events = journal.read(self.acked.get(device, 0), 1000)
        batch = decode_batch(encode_batch(device, journal.journal_id, prev, events))
        self.acked[device] = self.service.store.ingest(batch).ack.seq
        self.service.process()

    def receive(self, parcel: str, at: tuple[float, float]) -> None:
        self.service.book.receive(
            {
                "id": parcel,
                "raw": parcel,
                "kind": "s10",
                "recipient": "A. Jansen",
                "address": f"Straat {parcel[-6:-2]}",
                "lat": at[0],
                "lon": at[1],
                "merchant": "shop-1",
                "webhook": self.receiver.url("/merchant"),
                "customer_webhook": self.receiver.url("/customer"),
                "size": "S",
            },
            now_ns=time.time_ns(),
        )

    def post(self, path: str, doc: object, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.web.url + path,
            data=json.dumps(doc).encode(),
            headers={"Authorization": f"Bearer {token or self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def state(self, parcel: str) -> str:
        info = self.service.book.parcel(parcel)
        assert info is not None
        return str(info["state"])

    def events(self, path: str, event: str) -> list[dict[str, Any]]:
        return [
            r.body
            for r in self.receiver.received
            if r.path == path and r.status == 200 and r.body.get("event") == event
        ]

    def wait_for(self, path: str, event: str) -> dict[str, Any]:
        wait_until(lambda: self.events(path, event), f"{event} at {path}")
        return self.events(path, event)[0]


@pytest.fixture
def desk(tmp_path: Path, depot_database: str) -> Iterator[Desk]:
    """A depot service on SQLite and on PostgreSQL, its HTTP API, a webhook receiver."""
    signing, _ = generate_keypair()
    sealing_private, _ = generate_sealing_keypair()
    with WebhookReceiver(SECRETS) as receiver:
        config = DepotConfig(
            database=depot_database,
            lat=DEPOT[0],
            lon=DEPOT[1],
            vans=["van-1", "van-2"],
            public_url="https://depot.example.com",
            webhook_secrets=dict(SECRETS),
            webhook_backoff_base_s=0.05,
            webhook_backoff_max_s=0.1,
            lockers=[
                LockerSiteConfig(
                    "locker-1", *LOCKER_AT, {"S": 2, "M": 1}, title="North Square locker",
                    address="Noordplein 1",
                )
            ],
        )
        service = DepotService(config, signing_key_pem=signing, sealing_key_pems=[sealing_private])
        service.start()
        token = auth.add_token(service.database, "shop-1")
        with DepotWeb(service.book, clock=service.clock, actions=service) as web:
            d = Desk(service, receiver, web, token, tmp_path)
            try:
                yield d
            finally:
                for journal in d.journals.values():
                    journal.close()
        service.stop()


def _delivered_today(desk: Desk) -> dict[str, Manifest]:
    """SOLD (north) and SOUTHERN are planned; SOLD is delivered, UNDELIVERED only received."""
    desk.receive(SOLD, NORTH)
    desk.receive(SOUTHERN, SOUTH)
    desk.receive(UNDELIVERED, NORTH)
    planned = desk.service.plan_day(DAY).manifests
    van = next(v for v, m in planned.items() if m.stop_of(SOLD) is not None)
    desk.tell(van, "parcel_loaded", parcel=SOLD, stop=planned[van].stop_of(SOLD), shelf=1)
    desk.tell(van, "departed", version=1, loaded=[SOLD], missing=[])
    desk.tell(van, "parcel_delivered", parcel=SOLD, stop=1, to="recipient", name="A. Jansen")
    assert desk.state(SOLD) == "delivered"
    return planned


def test_a_merchant_books_a_return_over_http_and_the_locker_gets_only_hashes(
    desk: Desk,
) -> None:
    _delivered_today(desk)
    status, doc = desk.post("/returns", {"parcel": SOLD})
    assert status == 201, doc
    ret = doc["return"]
    assert identify(ret).id == ret and ret.startswith("RT") and ret.endswith("NL")
    assert doc["parcel"] == SOLD and doc["locker"] == "locker-1" and doc["size"] == "S"
    code = doc["return_code"]
    assert len(code) == 8 and code.isdigit() and doc["qr_text"].startswith(RETURN_QR_PREFIX)
    assert desk.state(ret) == "return_booked"

    # The locker is sent the hashes of the code under its salt, never the code.
    with desk.service.database.reading() as conn:
        rows = conn.execute(
            "SELECT target, args FROM depot_commands WHERE action='expect_return'"
        ).fetchall()
        stored = json.dumps(conn.execute("SELECT * FROM customer_returns").fetchall())
    assert len(rows) == 1 and rows[0][0] == "locker-1"
    args = json.loads(rows[0][1])
    assert args["parcel"] == ret and args["size"] == "S"
    assert args["code_hash"] == code_hash(code, salt_from_text(args["salt"]))
    assert code not in rows[0][1] and code not in stored

    # The merchant is told without the code; the customer gets the code and its QR.
    merchant = desk.wait_for("/merchant", "return_booked")
    assert merchant["return"] == ret and merchant["parcel"] == SOLD
    assert code not in json.dumps(merchant)
    customer = desk.wait_for("/customer", "return_booked")
    assert customer["return_code"]["code"] == code
    assert customer["return_code"]["qr_text"] == doc["qr_text"]
    assert customer["return_code"]["qr_png"].startswith("data:image/png;base64,")
    assert customer["locker_name"] == "North Square locker"

    # Once per parcel, only a delivered one, only with a token.
    again_status, again = desk.post("/returns", {"parcel": SOLD})
    assert again_status == 409 and again["return"] == ret
    assert desk.post("/returns", {"parcel": UNDELIVERED})[0] == 409
    assert desk.post("/returns", {"parcel": s10(99)})[0] == 404
    assert desk.post("/returns", {"parcel": SOLD, "size": "XL"})[0] in (400, 409)
    assert desk.post("/returns", {"parcel": SOLD}, token="lm_wrong")[0] == 401
    assert desk.service.customer_returns() == {
        "booked": 1, "dropped": 0, "at_door": 0, "collected": 0, "at_depot": 0
    }


def test_a_dropped_return_is_collected_by_the_van_passing_nearest_and_ends_at_the_depot(
    desk: Desk,
) -> None:
    planned = _delivered_today(desk)
    north = next(v for v, m in planned.items() if m.stop_of(SOLD) is not None)
    south = next(v for v in planned if v != north)
    status, doc = desk.post("/returns", {"parcel": SOLD})
    assert status == 201
    ret = doc["return"]

    desk.tell("locker-1", "return_dropped", parcel=ret, compartment="A1", size="S")
    assert desk.state(ret) == "return_dropped"
    updated = desk.service.current_manifest(north)
    assert updated is not None and updated.version == 2
    stop = updated.stop(updated.collected_at(ret) or 0)
    assert (stop.kind, stop.locker) == ("locker", "locker-1")
    assert stop.collect == (LockerReturn(ret, "A1"),)
    other = desk.service.current_manifest(south)
    assert other is not None and other.collections == []
    assert desk.wait_for("/merchant", "return_dropped")["return"] == ret
    receipt = desk.wait_for("/customer", "return_dropped")
    assert receipt["parcel"] == SOLD and "return_code" not in receipt

    desk.tell("locker-1", "parcel_returned", parcel=ret, compartment="A1")
    assert desk.state(ret) == "returning"
    desk.wait_for("/merchant", "return_collected")
    desk.tell(north, "parcel_collected_from_locker", parcel=ret, stop=stop.stop, locker="locker-1")
    desk.tell(north, "parcel_returned_to_depot", parcel=ret, raw=ret)
    assert desk.state(ret) == "returned_to_sender"
    desk.wait_for("/merchant", "return_at_depot")
    assert desk.service.customer_returns() == {
        "booked": 1, "dropped": 1, "at_door": 0, "collected": 1, "at_depot": 1
    }
    steps = [e["step"] for e in desk.service.book.track(ret)["timeline"]]
    assert steps[:2] == ["return_booked", "return_dropped"]
    assert steps[-3:] == ["collected_by_van", "returned_to_depot", "returned_to_sender"]
    # A drop reported again (a locker's later journal) is a late entry and tells nobody.
    desk.tell("locker-1", "return_dropped", parcel=ret, compartment="A1", size="S")
    time.sleep(0.3)
    assert len(desk.events("/merchant", "return_dropped")) == 1
    last = desk.service.book.track(ret)["timeline"][-1]
    assert last["step"] == "return_dropped" and "late" in last["details"]
    assert desk.state(ret) == "returned_to_sender"


def test_with_no_van_out_the_next_days_plan_collects_the_return(desk: Desk) -> None:
    planned = _delivered_today(desk)
    for van in planned:
        desk.tell(van, "day_closed", day=DAY, delivered=[], in_locker=[], returned=[],
                  unaccounted=[])
    status, doc = desk.post("/returns", {"parcel": SOLD, "size": "M"})
    assert status == 201 and doc["size"] == "M"
    ret = doc["return"]
    desk.tell("locker-1", "return_dropped", parcel=ret, compartment="B1", size="M")
    nxt = desk.service.plan_day("2026-11-22").manifests
    collecting = [m for m in nxt.values() if m.collections]
    assert len(collecting) == 1 and collecting[0].collections == [ret]
    assert ret not in collecting[0].parcels  # collected, never delivered
