"""A locker that records a deposit again after losing its record gives the customer the new code.

A power cut damages the locker's write-ahead log: its journal goes back to a moment when the
courier's drop-off door was open (docs/WIRE.md, "Journal epochs"). On restart the locker finds
the door shut on a parcel and records `parcel_deposited` again, with a new pickup credential;
the one the depot already sent the customer went with the lost part of the file. The depot
must send a pickup notice with the new code that says it replaces the earlier one, show the
re-record once in the parcel's timeline, and tell nobody again when a copy of the same event
arrives (carried by a second rollback).

The real locker on simulated lock boards, the real depot service on both database backends,
signed webhooks over real HTTP to a receiver standing in for the customer's and the merchant's
systems; the customer's new code opens the door, the old one does not.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import DepotService
from depot.tracking import REPLACED_REASON, RERECORDED_TEXT, iso_utc
from edge.locker import BADGE_PREFIX
from simulators.webhooks import WebhookReceiver
from sync.signing import generate_keypair
from tests.conftest import depot_sql
from tests.test_depot_tracking import S10_A, T0, Device, StepClock
from tests.test_journal_damage import first_alarm, power_cut
from tests.test_locker import PARCEL, Rig, close_rig, make_rig, power_cut_and_restart
from tests.test_locker_truth import LOCKER_1, open_site, redirected_to_locker
from tests.test_pickup_notice import SECRETS, _decode_qr

HOUR_NS = 3600 * 10**9
WAIT_S = 20.0  # how long a webhook may take to arrive before the test gives up (not a timing)


def card_goes_back(live: Path, image: Path) -> None:
    """The journal's file and log become the power-cut `image`; the high-water mark beside
    them stays the newer one, as on a card whose log was cut short."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{live}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal"):
        src = Path(f"{image}{suffix}")
        if src.exists():
            shutil.copyfile(src, f"{live}{suffix}")


@dataclass
class Scene:
    database: str
    service: DepotService
    receiver: WebhookReceiver
    rig: Rig

    def sync(self) -> None:
        """The locker's current journal reaches the depot, which projects it."""
        Device("locker-1", self.rig.journal, self.service.store, StepClock()).sync()
        self.service.process()

    def notices(self, path: str) -> list[dict[str, Any]]:
        """`in_locker` bodies the receiver took at `path`, in order."""
        return [
            r.body
            for r in self.receiver.received
            if r.path == path and r.status == 200 and r.body.get("state") == "in_locker"
        ]

    def wait_notices(self, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        arrived = self.receiver.wait_for(
            lambda: len(self.notices("/customer")) >= n and len(self.notices("/merchant")) >= n,
            WAIT_S,
        )
        seen = [(r.path, r.status, r.event_id) for r in self.receiver.received]
        assert arrived, f"fewer than {n} pickup notices per audience; the receiver saw {seen}"
        return self.notices("/customer"), self.notices("/merchant")

    def queued_in_locker(self) -> int:
        """`in_locker` messages the depot has put in its outbox (sent or not)."""
        with depot_sql(self.database) as conn:
            bodies = [bytes(r[0]) for r in conn.execute("SELECT body FROM webhook_outbox")]
        return sum(1 for b in bodies if json.loads(b).get("state") == "in_locker")


@pytest.fixture
def scene(tmp_path: Path, depot_database: str) -> Iterator[Scene]:
    rig = make_rig(tmp_path)
    signing, _ = generate_keypair()
    with WebhookReceiver(SECRETS) as receiver:
        config = DepotConfig(
            database=depot_database,
            lat=52.37,
            lon=4.90,
            vans=["van-1"],
            public_url="https://depot.example.com",
            webhook_secrets=dict(SECRETS),
            webhook_backoff_base_s=0.05,
            webhook_backoff_max_s=0.1,
            lockers=[LockerSiteConfig("locker-1", 52.37, 4.90, {"S": 2, "M": 1, "L": 1})],
        )
        service = DepotService(
            config, signing_key_pem=signing, sealing_key_pems=[rig.sealing_private]
        )
        service.start()
        service.book.receive(
            {
                "id": PARCEL,
                "raw": PARCEL,
                "kind": "s10",
                "merchant": "shop-1",
                "webhook": receiver.url("/merchant"),
                "customer_webhook": receiver.url("/customer"),
                "size": "S",
                "locker_ok": True,
            },
            now_ns=time.time_ns(),
            source="import",
        )
        s = Scene(depot_database, service, receiver, rig)
        try:
            yield s
        finally:
            service.stop()
            close_rig(s.rig)


def test_a_re_recorded_deposit_sends_the_new_code_once(scene: Scene, tmp_path: Path) -> None:
    rig = scene.rig
    journal = Path(rig.config.journal)
    # The courier's drop-off: the door opens, and the card's image is taken then.
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan(PARCEL, "]C0")
    unlocked = rig.watch.wait_event("door_unlocked", parcel=PARCEL, purpose="dropoff")
    cid = str(unlocked.payload["compartment"])
    rig.door_springs_open(cid)
    image = power_cut(rig.config.journal, tmp_path / "image-1")
    rig.person_puts_parcel_and_closes(cid)
    first = rig.watch.wait_event("parcel_deposited", parcel=PARCEL)
    scene.sync()
    customer, merchant = scene.wait_notices(1)
    code_1 = customer[0]["pickup"]["code"]
    assert "replaces_earlier_notice" not in customer[0]["details"]

    # The power cut: the journal goes back to the open door; the locker records it again.
    scene.rig = rig = power_cut_and_restart(rig, lambda: card_goes_back(journal, image))
    assert first_alarm(rig.journal)["alarm"] == "journal_rolled_back"
    again = rig.watch.wait_event("parcel_deposited", parcel=PARCEL)
    assert again.uuid != first.uuid
    assert again.payload["credential_for_depot"] != first.payload["credential_for_depot"]
    scene.sync()
    customer, merchant = scene.wait_notices(2)
    assert len(customer) == len(merchant) == 2
    new, told_merchant = customer[1], merchant[1]
    assert new["event_id"] != customer[0]["event_id"]
    code_2 = new["pickup"]["code"]
    assert code_2 != code_1 and len(code_2) == 6
    assert _decode_qr(new["pickup"]["qr_png"]) == new["pickup"]["qr_token"]
    assert new["pickup"]["qr_token"] != customer[0]["pickup"]["qr_token"]
    for body in (new, told_merchant):
        details = body["details"]
        assert details["replaces_earlier_notice"] is True
        assert details["reason"] == REPLACED_REASON
        assert details["locker"] == "locker-1"
        # The hold the locker now enforces is the second deposit's.
        assert details["hold_until"] == iso_utc(int(again.payload["hold_until_ns"]))
        assert details["hold_until"] != customer[0]["details"]["hold_until"]
    assert "pickup" not in told_merchant
    assert code_2.encode() not in b"".join(
        r.raw for r in scene.receiver.received if r.path == "/merchant"
    )

    # The timeline: the re-record once, as what it is, the parcel still in the locker.
    track = scene.service.book.track(PARCEL)
    assert track["state"] == "in_locker"
    deposits = [e for e in track["timeline"] if e["step"] == "in_locker"]
    assert len(deposits) == 2
    assert "rerecorded" not in deposits[0]["details"]
    assert deposits[1]["details"]["rerecorded"] == RERECORDED_TEXT
    assert deposits[1]["state"] == "in_locker"
    assert "anomaly" not in [e["step"] for e in track["timeline"]]

    # A second rollback carries the re-recorded deposit (same uuid) into a third journal.
    image = power_cut(rig.config.journal, tmp_path / "image-2")
    rig.locker.key("000000" if code_2 != "000000" else "111111")  # the file moves on
    rig.watch.wait_event("pickup_attempt")
    scene.rig = rig = power_cut_and_restart(rig, lambda: card_goes_back(journal, image))
    assert first_alarm(rig.journal)["alarm"] == "journal_rolled_back"
    scene.sync()
    with depot_sql(scene.database) as conn:
        copies = conn.execute(
            "SELECT count(DISTINCT journal) FROM events WHERE uuid=?", (again.uuid,)
        ).fetchone()[0]
    assert copies == 2  # the depot holds the same event under two journals
    assert scene.queued_in_locker() == 4  # still one notice per audience per credential
    timeline = scene.service.book.track(PARCEL)["timeline"]
    assert [e["step"] for e in timeline].count("in_locker") == 2

    # The customer holds the new code: it opens the door; the old one does not.
    rig.locker.key(code_1)
    refused = rig.watch.wait_event("pickup_attempt")
    assert refused.payload["ok"] is False
    rig.locker.key(code_2)
    rig.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
    assert scene.receiver.duplicates == 0 and scene.receiver.bad_signatures == 0


# --- the parcel book alone: which deposits replace a notice ------------------------------------


def test_only_a_new_credential_at_the_parcel_s_locker_replaces_the_notice(
    tmp_path: Path, depot_database: str
) -> None:
    site = open_site(tmp_path, depot_database, [LOCKER_1])
    try:
        redirected_to_locker(site)

        def deposit(sealed: str | None, hours: int) -> None:
            site.say(
                "locker-1", "parcel_deposited", parcel=S10_A, compartment="A1", size="S",
                hold_until_ns=T0 + hours * HOUR_NS, credential_for_depot=sealed,
            )

        def replaced() -> list[dict[str, Any]]:
            with depot_sql(depot_database) as conn:
                rows = conn.execute("SELECT body FROM webhook_outbox ORDER BY id").fetchall()
            bodies = [json.loads(bytes(r[0])) for r in rows]
            return [
                b for b in bodies
                if b.get("state") == "in_locker" and b["details"].get("replaces_earlier_notice")
            ]

        deposit("sealed-first", 48)
        assert site.told("in_locker") == ["merchant", "customer"]
        deposit("sealed-first", 49)  # another event, the same credential: nothing to tell
        assert site.told("in_locker") == ["merchant", "customer"] and replaced() == []
        deposit("sealed-second", 50)
        assert site.told("in_locker") == ["merchant", "customer"] * 2
        (to_merchant, to_customer) = replaced()
        assert to_customer["pickup"]["sealed"] == "sealed-second"
        assert "pickup" not in to_merchant
        assert to_customer["details"]["hold_until"] == iso_utc(T0 + 50 * HOUR_NS)
        deposit("sealed-second", 51)  # compared with the last one told, not the first
        assert len(replaced()) == 2
        timeline = site.service.book.track(S10_A)["timeline"]
        steps = [e for e in timeline if e["step"] == "in_locker"]
        assert ["rerecorded" in e["details"] for e in steps] == [False, False, True, False]
        # A hold that ran out, then the locker's record went back to before it: the parcel is
        # collectable again, under the re-recorded deposit's code and hold.
        site.say("locker-1", "hold_expired", parcel=S10_A, compartment="A1")
        assert site.state() == "hold_expired"
        deposit("sealed-third", 52)
        assert site.state() == "in_locker" and len(replaced()) == 4
        assert replaced()[-1]["pickup"]["sealed"] == "sealed-third"
        # The van never claimed the drop: one disagreement for the operator, not one per record.
        site.clock.advance(31)
        site.service.process()
        assert len(site.alarms()) == 1
    finally:
        site.service.stop()
        for device in site.devices.values():
            device.journal.close()

