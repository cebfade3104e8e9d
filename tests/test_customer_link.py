"""The customer's tracking link: the token in every notice, the page's contents, the requests.

A real depot service on each database (SQLite, PostgreSQL) takes device events from real
journals (a van's and a locker's, the locker's credential sealed with the locker's own
function); its customer notices are read from the webhook outbox and rendered by the outbox's
own render hook, as a send attempt would. The page's backend (`DepotService.customer_view`,
`customer_extend`, `customer_redeliver`) is asked with the token the notice carried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.customer import (
    LINK_DAYS_AFTER_FINAL,
    LinkExpired,
    NoticeRenderer,
    RequestDeclined,
    UnknownLink,
    tracking_token,
    tracking_url,
)
from depot.pickup import ExtendRefused
from depot.service import DepotService
from depot.webhooks import encode_body
from edge.credentials import sealed_for_depot
from sync.journal import Journal
from sync.signing import generate_keypair, generate_sealing_keypair
from sync.wire import decode_batch, encode_batch
from tests.conftest import depot_sql

PARCEL = "RB123456785GB"
CODE = "428193"
QR = "LMQ1:Zm9vYmFyYmF6cXV4"
PUBLIC = "https://depot.example.com"
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


class SettableClock:
    """The depot's wall clock: real time plus an offset a test moves forwards."""

    boot_id = "test-boot"

    def __init__(self) -> None:
        self.offset_ns = 0

    def monotonic_ns(self) -> int:
        return time.monotonic_ns() + self.offset_ns

    def wall_ns(self) -> int:
        return time.time_ns() + self.offset_ns

    def wall_synced(self) -> bool:
        return True


@dataclass
class Depot:
    service: DepotService
    database: str
    clock: SettableClock
    tmp: Path
    sealing_public: bytes
    journals: dict[str, Journal] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)

    def emit(self, device: str, kind: str, **payload: Any) -> None:
        journal = self.journals.get(device)
        if journal is None:
            journal = self.journals[device] = Journal(self.tmp / f"{device}.db", device)
        journal.append(kind, payload)
        prev, events = journal.read(self.acked.get(device, 0), 1000)
        batch = decode_batch(encode_batch(device, journal.journal_id, prev, events))
        self.acked[device] = self.service.store.ingest(batch).ack.seq
        self.service.process()

    def receive(self, **record: Any) -> None:
        doc = {
            "id": PARCEL, "raw": PARCEL, "kind": "s10", "recipient": "A. Jansen",
            "address": "Damrak 1, Amsterdam", "lat": 52.37, "lon": 4.90, "merchant": "shop-1",
            "webhook": "https://shop.example/hooks", "size": "M", "locker_ok": True,
            "window": ["09:00", "12:00"],
            "customer_webhook": "https://notify.example/c/1",
            **record,
        }
        self.service.book.receive(doc, now_ns=self.clock.wall_ns(), source="import")
        self.service.process()

    def deposit(self) -> None:
        sealed = sealed_for_depot(
            {"code": CODE, "qr": QR}, self.sealing_public, locker_id="locker-1", parcel_id=PARCEL
        )
        self.emit(
            "locker-1", "parcel_deposited", parcel=PARCEL, compartment="B1", size="M",
            hold_until_ns=time.time_ns() + 48 * HOUR_NS, credential_for_depot=sealed,
        )

    def notices(self, audience: str) -> list[dict[str, Any]]:
        """The bodies of the outbox's notices to `audience` as a send attempt renders them."""
        render = NoticeRenderer(self.service.keys, encode_body)
        suffix = "/c/1" if audience == "customer" else "/hooks"
        with depot_sql(self.database) as conn:
            rows = conn.execute(
                "SELECT body FROM webhook_outbox WHERE url LIKE ? ORDER BY id", (f"%{suffix}",)
            ).fetchall()
        return [json.loads(render(bytes(r[0]))) for r in rows]

    def token(self) -> str:
        url = str(self.notices("customer")[0]["tracking_url"])
        return url.rpartition("/t/")[2]

    def timeline_steps(self) -> list[str]:
        return [str(e["step"]) for e in self.service.book.track(PARCEL)["timeline"]]


@pytest.fixture
def depot(tmp_path: Path, depot_database: str) -> Iterator[Depot]:
    signing, _ = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    config = DepotConfig(
        database=depot_database,
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        public_url=PUBLIC,
        webhook_secrets={"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-c-0123456"},
        lockers=[
            LockerSiteConfig(
                "locker-1", 52.3701, 4.9001, {"S": 2, "M": 2},
                title="Central Station locker", address="Stationsplein 1, Amsterdam",
            )
        ],
    )
    clock = SettableClock()
    service = DepotService(
        config, clock=clock, signing_key_pem=signing, sealing_key_pems=[sealing_private]
    )
    site = Depot(service, depot_database, clock, tmp_path, sealing_public)
    try:
        yield site
    finally:
        service.stop()
        for journal in site.journals.values():
            journal.close()


def test_every_customer_notice_carries_the_link_and_only_its_digest_is_kept(
    depot: Depot,
) -> None:
    depot.receive()
    token = tracking_token(depot.service.keys, PARCEL)
    assert token is not None and len(token) >= 22  # >= 128 bits, base64url
    told = depot.notices("customer")
    assert [n["tracking_url"] for n in told] == [f"{PUBLIC}/t/{token}"]
    assert all("tracking_url" not in n for n in depot.notices("merchant"))
    with depot_sql(depot.database) as conn:
        stored = [bytes(r[0]) for r in conn.execute("SELECT body FROM webhook_outbox")]
        links = conn.execute("SELECT digest, parcel FROM tracking_links").fetchall()
    assert all(token.encode() not in body for body in stored)
    assert [tuple(r) for r in links] == [(hashlib.sha256(token.encode()).hexdigest(), PARCEL)]
    assert depot.service.tracking_link(PARCEL) == f"{PUBLIC}/t/{token}"
    assert tracking_url(None, token) == f"/t/{token}"  # no public URL: the path alone

    view = depot.service.customer_view(token)
    assert (view.parcel, view.state, view.expired) == (PARCEL, "received", False)
    assert view.window == ("09:00", "12:00") and view.pickup_code is None
    assert [line.words for line in view.timeline] == ["The sender told us it is coming"]


def test_a_token_the_depot_did_not_give_finds_nothing(depot: Depot) -> None:
    depot.receive(customer_webhook=None)  # nobody told: no link given out yet
    token = tracking_token(depot.service.keys, PARCEL)
    assert token is not None
    for wrong in (token, "A" * 32, "", "x" * 500):
        with pytest.raises(UnknownLink):
            depot.service.customer_view(wrong)
    with pytest.raises(UnknownLink):
        depot.service.customer_redeliver("A" * 32)


def test_the_page_of_a_parcel_in_its_locker_shows_the_code_and_qr(
    depot: Depot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    depot.receive()
    depot.deposit()
    view = depot.service.customer_view(depot.token())
    assert view.state == "in_locker"
    assert view.state_words == "Waiting for you in the locker at Central Station locker"
    assert (view.locker, view.locker_name, view.locker_address) == (
        "locker-1", "Central Station locker", "Stationsplein 1, Amsterdam"
    )
    assert view.pickup_code == CODE and view.compartment_size == "M"
    assert view.pickup_qr_svg is not None and view.pickup_qr_svg.startswith("<svg")
    assert view.hold_until is not None and view.hold_until.endswith("Z")
    assert view.timeline[0].words == "Put in the locker at Central Station locker for you"
    assert view.timeline[0].hold_until == view.hold_until
    assert view.can_extend and not view.can_redeliver
    assert view.redeliver_refused is not None and "locker" in view.redeliver_refused
    assert CODE not in repr(view) and CODE not in caplog.text


def test_the_hold_is_extended_once_from_the_page(depot: Depot) -> None:
    depot.receive()
    depot.deposit()
    token = depot.token()
    command, hours = depot.service.customer_extend(token)
    assert hours == depot.service.config.extend_hold_h
    with depot_sql(depot.database) as conn:
        row = conn.execute(
            "SELECT target, action FROM depot_commands WHERE id = ?", (command,)
        ).fetchone()
    assert tuple(row) == ("locker-1", "extend_hold")
    assert depot.timeline_steps()[-1] == "customer_request"
    view = depot.service.customer_view(token)
    assert not view.can_extend and view.extend_refused is not None
    assert view.timeline[0].words == "You asked for more time to collect it"
    with pytest.raises(ExtendRefused, match="once"):
        depot.service.customer_extend(token)
    depot.emit(
        "locker-1", "command_accepted", id=command, action="extend_hold", parcel=PARCEL,
        hold_until_ns=time.time_ns() + 72 * HOUR_NS,
    )
    with pytest.raises(ExtendRefused, match="once"):
        depot.service.customer_extend(token)
    assert depot.timeline_steps().count("customer_request") == 1


def test_after_a_missed_delivery_the_customer_has_it_brought_again_the_next_day(
    depot: Depot,
) -> None:
    depot.receive(locker_ok=False)  # the policy keeps it for the door
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, reason="not_at_home", attempt=1)
    token = depot.token()
    view = depot.service.customer_view(token)
    assert view.state == "attempted" and view.can_redeliver
    assert view.timeline[0].words == "We will try again on the next round"
    assert view.timeline[1].words == "We tried to deliver it: nobody was at home"
    decision = depot.service.customer_redeliver(token)
    assert decision.kind == "second_attempt" and "customer asked" in decision.reason
    assert depot.timeline_steps()[-2:] == ["customer_request", "next_action"]
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == "second_attempt"
    with pytest.raises(RequestDeclined, match="asked"):
        depot.service.customer_redeliver(token)
    assert not depot.service.customer_view(token).can_redeliver


def test_after_the_hold_ran_out_the_customer_has_it_brought_home(depot: Depot) -> None:
    depot.receive()
    depot.deposit()
    depot.emit("locker-1", "hold_expired", parcel=PARCEL, compartment="B1")
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == "return_to_sender"
    token = depot.token()
    view = depot.service.customer_view(token)
    assert view.pickup_code is None and not view.can_extend and view.can_redeliver
    assert depot.service.customer_redeliver(token).kind == "second_attempt"
    info = depot.service.book.parcel(PARCEL)
    assert info is not None and info["next_action"] == "second_attempt"


@pytest.mark.parametrize(
    ("locker_ok", "reason", "refusal"),
    [
        (True, "not_at_home", "on its way to a parcel locker"),  # the policy chose a locker
        (False, "refused", "refused"),
    ],
)
def test_a_redelivery_the_policy_does_not_grant_is_refused_with_its_reason(
    depot: Depot, locker_ok: bool, reason: str, refusal: str
) -> None:
    depot.receive(locker_ok=locker_ok)
    token = depot.token()
    with pytest.raises(RequestDeclined, match="first delivery"):
        depot.service.customer_redeliver(token)
    depot.emit("van-1", "delivery_failed", parcel=PARCEL, reason=reason, attempt=1)
    with pytest.raises(RequestDeclined, match=refusal):
        depot.service.customer_redeliver(token)
    assert "customer_request" not in depot.timeline_steps()


def test_the_link_expires_some_days_after_the_journey_ends(depot: Depot) -> None:
    depot.receive()
    token = depot.token()
    depot.emit("van-1", "parcel_delivered", parcel=PARCEL, to="recipient", name="A. Jansen")
    view = depot.service.customer_view(token)
    assert view.final and not view.expired and view.state_words == "Delivered"
    assert view.expires_ns is not None and view.eta is None
    depot.clock.offset_ns = (LINK_DAYS_AFTER_FINAL - 1) * DAY_NS
    assert not depot.service.customer_view(token).expired
    depot.clock.offset_ns = (LINK_DAYS_AFTER_FINAL + 1) * DAY_NS
    view = depot.service.customer_view(token)
    assert view.expired and view.timeline == [] and view.window is None
    with pytest.raises(LinkExpired):
        depot.service.customer_redeliver(token)
    with pytest.raises(LinkExpired):
        depot.service.customer_extend(token)
