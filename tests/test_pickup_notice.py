"""The pickup notice: the depot opens the locker's sealed credential and tells the customer.

A locker journal (the real `Journal`, its credential sealed with the locker's own function)
syncs a `parcel_deposited` into the depot's store; the depot service projects it and sends
signed webhooks over real HTTP to a receiver standing in for the customer's and the merchant's
systems. The customer gets the code and the QR (a PNG that a real decoder reads back); the
merchant gets where and until when, never the code; nothing a thief could collect with is in
the depot's database or its log.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.pickup import ExtendRefused, extend_link, extend_token
from depot.service import DepotService
from depot.store import sends
from edge.credentials import sealed_for_depot
from simulators.webhooks import WebhookReceiver
from sync.journal import Journal
from sync.signing import generate_keypair, generate_sealing_keypair
from sync.wire import decode_batch, encode_batch

PARCEL = "RB123456785GB"
CODE = "428193"
QR = "LMQ1:Zm9vYmFyYmF6cXV4"
SECRETS = {"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-customer-0123456789"}
HOUR_NS = 3600 * 10**9


@dataclass
class Site:
    service: DepotService
    receiver: WebhookReceiver
    locker: Journal
    sealing_public: bytes
    acked: int = 0

    def emit(self, kind: str, **payload: Any) -> None:
        self.locker.append(kind, payload)
        prev, events = self.locker.read(self.acked, 1000)
        batch = decode_batch(encode_batch("locker-1", self.locker.journal_id, prev, events))
        result = self.service.store.ingest(batch)
        self.acked = result.ack.seq
        self.service.process()

    def deposit(self, sealed_with: bytes | None = None) -> None:
        sealed = sealed_for_depot(
            {"code": CODE, "qr": QR},
            sealed_with or self.sealing_public,
            locker_id="locker-1",
            parcel_id=PARCEL,
        )
        self.emit(
            "parcel_deposited",
            parcel=PARCEL,
            compartment="B1",
            size="M",
            hold_until_ns=time.time_ns() + 48 * HOUR_NS,
            credential_for_depot=sealed,
        )

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [
            r.body
            for r in self.receiver.received
            if r.path == path and r.status == 200 and r.body.get("state") == "in_locker"
        ]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    signing, _ = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    with WebhookReceiver(SECRETS) as receiver:
        config = DepotConfig(
            database=tmp_path / "depot.db",
            lat=52.37,
            lon=4.90,
            vans=["van-1"],
            public_url="https://depot.example.com",
            webhook_secrets=dict(SECRETS),
            webhook_backoff_base_s=0.05,
            webhook_backoff_max_s=0.1,
            lockers=[
                LockerSiteConfig(
                    "locker-1",
                    52.37,
                    4.90,
                    {"S": 2, "M": 2},
                    title="Central Station locker",
                    address="Stationsplein 1, Amsterdam",
                )
            ],
        )
        service = DepotService(
            config, signing_key_pem=signing, sealing_key_pems=[sealing_private]
        )
        service.start()
        service.book.receive(
            {
                "id": PARCEL,
                "raw": PARCEL,
                "kind": "s10",
                "recipient": "A. Jansen",
                "address": "Damrak 1, Amsterdam",
                "lat": 52.37,
                "lon": 4.9,
                "merchant": "shop-1",
                "webhook": receiver.url("/merchant"),
                "customer_webhook": receiver.url("/customer"),
                "size": "M",
                "locker_ok": True,
            },
            now_ns=time.time_ns(),
            source="import",
        )
        locker = Journal(tmp_path / "locker.journal.db", "locker-1")
        try:
            yield Site(service, receiver, locker, sealing_public)
        finally:
            service.stop()
            locker.close()


def _decode_qr(data_uri: str) -> str:
    import cv2
    import numpy as np
    import zxingcpp

    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    png = base64.b64decode(data_uri[len(prefix) :])
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1 and found[0].format == zxingcpp.BarcodeFormat.QRCode
    return str(found[0].text)


def test_the_customer_gets_the_code_and_qr_the_merchant_where_and_until_when(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    site.deposit()
    assert site.receiver.wait_for(
        lambda: site.bodies("/customer") != [] and site.bodies("/merchant") != [], 10
    )
    customer, merchant = site.bodies("/customer")[0], site.bodies("/merchant")[0]
    for body in (customer, merchant):
        details = body["details"]
        assert details["locker"] == "locker-1"
        assert details["locker_name"] == "Central Station locker"
        assert details["locker_address"] == "Stationsplein 1, Amsterdam"
        assert details["size"] == "M" and details["hold_until"]
        assert details["extend_hold_url"].startswith(
            f"https://depot.example.com/parcels/{PARCEL}/extend-hold?token="
        )
    assert customer["pickup"]["code"] == CODE
    assert customer["pickup"]["qr_token"] == QR
    assert _decode_qr(customer["pickup"]["qr_png"]) == QR
    assert "pickup" not in merchant
    # The customer's page is linked from their notice only: it shows the code.
    assert customer["tracking_url"].startswith("https://depot.example.com/t/")
    assert "tracking_url" not in merchant
    token = customer["tracking_url"].rpartition("/t/")[2]
    raw_merchant = next(r.raw for r in site.receiver.received if r.path == "/merchant")
    assert CODE.encode() not in raw_merchant and QR.encode() not in raw_merchant
    assert all(r.verified for r in site.receiver.received)

    # At rest: not in any table of the depot's database (the outbox keeps it sealed), nor in
    # its log.
    site.service.stop()
    dump = "\n".join(sqlite3.connect(tmp_path / "depot.db").iterdump())
    assert CODE not in dump and QR not in dump and "Zm9vYmFyYmF6cXV4" not in dump
    assert token not in dump  # only its digest is kept: the link cannot be rebuilt from it
    assert CODE not in caplog.text and QR not in caplog.text


def test_a_retried_notice_is_the_same_bytes(site: Site) -> None:
    assert site.receiver.wait_for(lambda: site.receiver.unique_events == 2, 10)  # "received"
    site.receiver.fail_next(2, 503)
    site.deposit()
    assert site.receiver.wait_for(lambda: site.bodies("/customer") != [], 10)
    tries = [
        r for r in site.receiver.received
        if r.path == "/customer" and r.body.get("state") == "in_locker"
    ]
    assert len(tries) >= 2 and len({r.raw for r in tries}) == 1
    assert site.receiver.duplicates == 0


def test_a_credential_no_key_opens_is_not_sent_and_not_lost(site: Site) -> None:
    _other_private, other_public = generate_sealing_keypair()
    site.deposit(sealed_with=other_public)
    assert site.receiver.wait_for(lambda: site.bodies("/merchant") != [], 10)

    def customer_failed() -> bool:
        with site.service.database.reading() as conn:
            rows = [
                (attempts, error)
                for body, attempts, error in conn.execute(
                    "SELECT body, attempts, last_error FROM webhook_outbox "
                    "WHERE url LIKE '%/customer'"
                ).fetchall()
                if b"in_locker" in bytes(body)
            ]
        return bool(rows) and rows[0][0] >= 1 and "none of the depot's" in str(rows[0][1])

    deadline = time.monotonic() + 10
    while not customer_failed():
        assert time.monotonic() < deadline, "the unopenable notice was never tried"
        time.sleep(0.05)
    assert site.bodies("/customer") == []


def test_the_extend_link_queues_one_extension_for_the_parcel_s_locker(site: Site) -> None:
    site.deposit()
    assert site.receiver.wait_for(lambda: site.bodies("/customer") != [], 10)
    url = site.bodies("/customer")[0]["details"]["extend_hold_url"]
    token = url.rpartition("token=")[2]
    with pytest.raises(ExtendRefused, match="not valid"):
        site.service.extend_hold(PARCEL, "0" * 32)
    with pytest.raises(ExtendRefused, match="not valid"):
        site.service.extend_hold("RB000000000GB", token)
    command, hours = site.service.extend_hold(PARCEL, token)
    assert hours == 24.0
    with site.service.database.reading() as conn:
        row = conn.execute(
            "SELECT target, action, args FROM depot_commands WHERE id=?", (command,)
        ).fetchone()
        assert not sends.command_published(conn, command)  # no broker in this test
    assert row[0] == "locker-1" and row[1] == "extend_hold"
    assert '"hours": 24.0' in row[2] and PARCEL in row[2]
    site.emit(
        "command_accepted",
        id=command,
        action="extend_hold",
        parcel=PARCEL,
        hold_until_ns=time.time_ns() + 72 * HOUR_NS,
    )
    with pytest.raises(ExtendRefused, match="once"):
        site.service.extend_hold(PARCEL, token)


def test_the_extend_link_works_from_a_browser_and_only_once(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    signing, _ = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    config = DepotConfig(
        database=tmp_path / "depot.db",
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        api=("127.0.0.1", 0),
        lockers=[LockerSiteConfig("locker-1", 52.37, 4.90, {"M": 2})],
    )
    service = DepotService(config, signing_key_pem=signing, sealing_key_pems=[sealing_private])
    service.start()
    locker = Journal(tmp_path / "locker.journal.db", "locker-1")
    try:
        service.book.receive(
            {"id": PARCEL, "raw": PARCEL, "kind": "s10", "merchant": "shop-1", "size": "M"},
            now_ns=time.time_ns(),
            source="import",
        )
        site = Site(service, WebhookReceiver(SECRETS), locker, sealing_public)
        site.receiver.close()  # nobody to tell: this test reads the link from the book's owner
        site.deposit()
        token = extend_token(service.keys, PARCEL)
        assert token is not None
        link = extend_link(service.public_url or "", PARCEL, token)
        assert link.startswith(service.api.url)

        def call(url: str, method: str = "GET", accept: str = "") -> tuple[int, str, str]:
            request = urllib.request.Request(url, method=method, data=b"" if method == "POST"
                                             else None, headers={"Accept": accept})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.headers["Content-Type"], answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers["Content-Type"], exc.read().decode()

        status, kind, page = call(link)  # a mail scanner following the link changes nothing
        assert status == 200 and kind.startswith("text/html")
        assert '<form method="post"' in page and "Give me more time" in page
        assert _extend_commands(service) == 0
        status, _kind, said = call(link.replace(token, "f" * 32), "POST")
        assert status == 403 and "not valid" in said
        status, _kind, said = call(link, "POST")
        assert status == 202 and '"hours":24.0' in said
        status, _kind, said = call(link, "POST", accept="text/html")
        assert status == 409 and "once" in said
        assert _extend_commands(service) == 1
    finally:
        service.stop()
        locker.close()


def _extend_commands(service: DepotService) -> int:
    with service.database.reading() as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM depot_commands WHERE action='extend_hold'"
        ).fetchone()
    return int(row[0])


@pytest.mark.parametrize(
    ("customer_webhook", "decided"), [(True, "locker"), (False, "second_attempt")]
)
def test_only_a_customer_the_depot_can_tell_is_sent_to_a_locker(
    tmp_path: Path, customer_webhook: bool, decided: str
) -> None:
    signing, _ = generate_keypair()
    sealing_private, _sealing_public = generate_sealing_keypair()
    config = DepotConfig(
        database=tmp_path / "depot.db",
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        lockers=[LockerSiteConfig("locker-1", 52.3701, 4.9001, {"M": 2})],
    )
    service = DepotService(config, signing_key_pem=signing, sealing_key_pems=[sealing_private])
    van = Journal(tmp_path / "van.journal.db", "van-1")
    try:
        record: dict[str, Any] = {
            "id": PARCEL, "raw": PARCEL, "kind": "s10", "merchant": "shop-1", "size": "M",
            "lat": 52.37, "lon": 4.90, "locker_ok": True,
        }
        if customer_webhook:
            record["customer_webhook"] = "https://notify.example/c/1"
        service.book.receive(record, now_ns=time.time_ns(), source="import")
        van.append("delivery_failed", {"parcel": PARCEL, "reason": "not_at_home", "attempt": 1})
        prev, events = van.read(0, 10)
        service.store.ingest(decode_batch(encode_batch("van-1", van.journal_id, prev, events)))
        service.process()
        assert [(p, d.kind) for p, d in service.decisions] == [(PARCEL, decided)]
    finally:
        service.stop()
        van.close()
