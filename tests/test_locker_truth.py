"""The depot believes the locker: a van's "dropped at locker" is a claim, the locker's word is
the truth (docs/DELIVERY.md, "A van's claim and the locker's word").

A real depot service (no broker: its logistics pass is driven by hand) on a real database,
both backends; device events made by real `sync.journal.Journal`s and carried as the wire
carries them into the depot's store. The depot's clock is driven by the test, so "30 minutes
later" is a clock step, never a wait.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import ABANDONED_GRACE_S, LOCKER_DROP_ALARM, DepotService
from parcel.manifest import Manifest
from sync.journal import Journal
from sync.signing import generate_keypair
from tests.conftest import depot_sql
from tests.test_depot_tracking import S10_A, T0, Device, StepClock, pod, record

alarms = pytest.importorskip("depot.alarms")
if not hasattr(alarms, "raise_alarm"):  # pragma: no cover - helper D's module not there yet
    pytest.skip("depot.alarms has no raise_alarm yet", allow_module_level=True)

DAY = "2026-11-18"
MIN_NS = 60 * 10**9
LOCKER_1 = LockerSiteConfig("locker-1", 52.3705, 4.8955, {"S": 4})
LOCKER_2 = LockerSiteConfig("locker-2", 52.3710, 4.8960, {"S": 4})


@dataclass
class DepotClock:
    """The depot's wall clock, moved only by the test."""

    wall: int = T0
    boot_id: str = "depot-test"

    def monotonic_ns(self) -> int:
        return self.wall - T0

    def wall_ns(self) -> int:
        return self.wall

    def wall_synced(self) -> bool:
        return True

    def advance(self, minutes: float) -> None:
        self.wall += int(minutes * MIN_NS)


@dataclass
class Site:
    database: str
    tmp: Path
    clock: DepotClock
    service: DepotService
    devices: dict[str, Device] = field(default_factory=dict)

    def device(self, name: str) -> Device:
        if name not in self.devices:
            clock = StepClock()
            journal = Journal(self.tmp / f"{name}.journal.db", name, clock=clock)
            self.devices[name] = Device(name, journal, self.service.store, clock)
        return self.devices[name]

    def say(self, name: str, kind: str, **payload: Any) -> None:
        """`name` journals one event, syncs it, and the depot runs a logistics pass."""
        device = self.device(name)
        device.emit(kind, **payload)
        device.sync()
        self.service.process()

    def state(self) -> str:
        return str(self.service.book.track(S10_A)["state"])

    def steps(self) -> list[str]:
        return [e["step"] for e in self.service.book.track(S10_A)["timeline"]]

    def told(self, state: str) -> list[str]:
        """The audiences whose webhook outbox holds a message that the parcel is `state`."""
        with depot_sql(self.database) as conn:
            rows = conn.execute("SELECT key_id, body FROM webhook_outbox ORDER BY id").fetchall()
        found = []
        for key_id, body in rows:
            doc = json.loads(bytes(body))
            if doc.get("parcel") == S10_A and doc.get("state") == state:
                found.append("customer" if key_id == "customer" else "merchant")
        return found

    def alarms(self) -> list[dict[str, Any]]:
        with self.service.database.reading() as conn:
            found = alarms.list_alarms(conn, "all")
        return [a for a in found if a["alarm"] == LOCKER_DROP_ALARM]

    def manifest(self) -> Manifest:
        current = self.service.current_manifest("van-1", DAY)
        assert current is not None
        return current


def open_site(tmp_path: Path, database: str, lockers: list[LockerSiteConfig]) -> Site:
    config = DepotConfig(
        database=database, lat=52.37, lon=4.90, vans=["van-1"], lockers=lockers
    )
    clock = DepotClock()
    signing, _public = generate_keypair()
    service = DepotService(config, clock=clock, signing_key_pem=signing)
    return Site(database, tmp_path, clock, service)


@pytest.fixture
def site(tmp_path: Path, depot_database: str) -> Iterator[Site]:
    s = open_site(tmp_path, depot_database, [LOCKER_1])
    yield s
    s.service.stop()
    for device in s.devices.values():
        device.journal.close()


def redirected_to_locker(s: Site) -> int:
    """S10_A planned on van-1, nobody at home, the policy sends it to locker-1: the van runs
    the re-issued manifest with a locker stop. Returns that stop's number."""
    s.service.book.receive(record(S10_A), now_ns=T0 - 3600 * 10**9, source="import")
    plan = s.service.plan_day(DAY, ["van-1"])
    stop = plan.manifests["van-1"].stop_of(S10_A)
    assert stop is not None
    s.say("van-1", "parcel_loaded", parcel=S10_A, stop=stop, shelf=1, raw=S10_A)
    s.say("van-1", "departed", version=1, loaded=[S10_A], missing=[])
    s.say(
        "van-1", "delivery_failed", parcel=S10_A, stop=stop, reason="not_at_home", attempt=1,
        pod=pod(),
    )
    manifest = s.manifest()
    locker_stop = manifest.stop_of(S10_A)
    assert locker_stop is not None and manifest.stop(locker_stop).locker == "locker-1"
    assert s.state() == "attempted" and s.told("attempted") == ["merchant", "customer"]
    return locker_stop


def claim(s: Site, stop: int) -> None:
    s.say(
        "van-1", "parcel_dropped_at_locker", parcel=S10_A, stop=stop, locker="locker-1",
        compartment="A1", pod=pod(),
    )


def deposit(s: Site) -> None:
    s.say(
        "locker-1", "parcel_deposited", parcel=S10_A, compartment="A1", size="S",
        hold_until_ns=T0 + 48 * 3600 * 10**9,
    )


# --- 1. the claim moves nothing; the deposit does ---------------------------------------------


def test_a_van_s_claim_tells_nobody_until_the_locker_confirms_it(site: Site) -> None:
    stop = redirected_to_locker(site)
    claim(site, stop)
    assert site.state() == "attempted"  # as it was: only the locker puts it in the locker
    entry = site.service.book.track(S10_A)["timeline"][-1]
    assert entry["step"] == "dropped_at_locker" and entry["state"] == "attempted"
    assert (entry["device"], entry["details"]["van"]) == ("van-1", "van-1")
    assert (entry["details"]["locker"], entry["details"]["compartment"]) == ("locker-1", "A1")
    assert site.told("in_locker") == []

    site.clock.advance(10)
    deposit(site)
    assert site.state() == "in_locker"
    assert site.told("in_locker") == ["merchant", "customer"]
    site.clock.advance(60)  # long past the confirmation time: the claim was confirmed
    site.service.process()
    assert site.alarms() == []
    assert site.told("in_locker") == ["merchant", "customer"]  # once, on the deposit


def test_a_deposit_before_the_van_s_claim_makes_the_claim_a_late_entry(site: Site) -> None:
    stop = redirected_to_locker(site)
    deposit(site)  # the van is in a dead zone: the locker's news comes first
    assert site.state() == "in_locker"
    site.clock.advance(12)
    claim(site, stop)
    track = site.service.book.track(S10_A)
    assert track["state"] == "in_locker"
    late = track["timeline"][-1]
    assert late["step"] == "dropped_at_locker" and "late" in late["details"]
    assert site.steps().count("in_locker") == 1
    assert site.told("in_locker") == ["merchant", "customer"]
    site.clock.advance(60)
    site.service.process()
    assert site.alarms() == []


# --- 2. an abandoned drop-off: the parcel is still on the van ----------------------------------


def test_an_abandoned_drop_off_puts_the_parcel_back_on_the_van_s_round(site: Site) -> None:
    redirected_to_locker(site)
    before = site.manifest()
    site.say(
        "locker-1", "dropoff_abandoned", parcel=S10_A, compartment="A1", does_not_fit=True
    )
    info = site.service.book.parcel(S10_A)
    assert info is not None and (info["state"], info["van"]) == ("attempted", "van-1")
    assert site.steps()[-1] == "dropoff_abandoned"
    assert site.manifest().version == before.version  # the locker may still try a bigger door

    site.clock.advance(ABANDONED_GRACE_S / 60 + 1)
    site.service.process()
    # Nowhere else to take it (one locker): a second attempt, so the courier brings it back.
    after = site.manifest()
    assert after.version == before.version + 1
    assert after.stop_of(S10_A) is None and S10_A in before.parcels
    assert [s.stop for s in after.stops] == [s.stop for s in before.stops]  # courier stays put
    assert [(p, d.kind) for p, d in site.service.decisions] == [
        (S10_A, "locker"),
        (S10_A, "second_attempt"),
    ]
    info = site.service.book.parcel(S10_A)
    assert info is not None
    assert (info["state"], info["van"], info["next_action"]) == (
        "attempted",
        "van-1",
        "second_attempt",
    )
    site.clock.advance(60)
    site.service.process()
    assert site.manifest().version == after.version  # acted on once
    assert site.told("in_locker") == []
    # The van never claimed the drop, so there is nothing the locker failed to confirm.
    assert site.alarms() == []


def test_a_claimed_drop_the_locker_saw_abandoned_goes_back_and_is_raised(site: Site) -> None:
    stop = redirected_to_locker(site)
    before = site.manifest()
    claim(site, stop)  # the courier tapped "dropped"; the door closed empty
    site.say(
        "locker-1", "dropoff_abandoned", parcel=S10_A, compartment="A1", does_not_fit=False
    )
    site.clock.advance(ABANDONED_GRACE_S / 60 + 1)
    site.service.process()
    assert site.manifest().version == before.version + 1
    assert site.manifest().stop_of(S10_A) is None
    assert site.state() == "attempted" and site.alarms() == []
    site.clock.advance(30)
    site.service.process()
    (alarm,) = site.alarms()  # the van still says it is in the locker: a person looks
    assert alarm["facts"]["unconfirmed"] == "van_claim"
    assert site.told("in_locker") == []


def test_a_bigger_compartment_after_does_not_fit_is_not_an_abandonment(site: Site) -> None:
    stop = redirected_to_locker(site)
    version = site.manifest().version
    site.say(
        "locker-1", "dropoff_abandoned", parcel=S10_A, compartment="A1", does_not_fit=True
    )
    site.say("locker-1", "door_unlocked", compartment="C1", purpose="dropoff", parcel=S10_A)
    site.clock.advance(ABANDONED_GRACE_S / 60 + 1)
    site.service.process()
    assert site.manifest().version == version
    site.say(
        "locker-1", "parcel_deposited", parcel=S10_A, compartment="C1", size="L",
        hold_until_ns=T0 + 48 * 3600 * 10**9,
    )
    claim(site, stop)
    assert site.state() == "in_locker" and site.manifest().version == version
    assert [d.kind for _p, d in site.service.decisions] == ["locker"]


def test_with_another_locker_near_the_parcel_goes_there_instead(
    tmp_path: Path, depot_database: str
) -> None:
    s = open_site(tmp_path, depot_database, [LOCKER_1, LOCKER_2])
    try:
        redirected_to_locker(s)
        before = s.manifest()
        s.say("locker-1", "dropoff_abandoned", parcel=S10_A, compartment="A1", does_not_fit=True)
        s.clock.advance(ABANDONED_GRACE_S / 60 + 1)
        s.service.process()
        after = s.manifest()
        due = after.stop_of(S10_A)
        assert after.version == before.version + 1 and due is not None
        assert after.stop(due).locker == "locker-2"
        assert [d.locker for _p, d in s.service.decisions] == ["locker-1", "locker-2"]
        with depot_sql(depot_database) as conn:
            rows = conn.execute("SELECT target FROM depot_commands ORDER BY created_ns")
            targets = [r[0] for r in rows.fetchall()]
        assert targets == ["locker-1", "locker-2"]  # a reservation at the new locker
    finally:
        s.service.stop()
        for device in s.devices.values():
            device.journal.close()


# --- 3. disagreements that do not resolve: an operator alarm ------------------------------------


def test_a_claim_the_locker_never_confirms_raises_an_alarm_after_the_set_time(
    site: Site,
) -> None:
    stop = redirected_to_locker(site)
    claim(site, stop)
    site.clock.advance(29)
    site.service.process()
    assert site.alarms() == []
    site.clock.advance(2)
    site.service.process()
    (alarm,) = site.alarms()
    assert alarm["device"] == "van-1" and alarm["state"] == "open"
    facts = alarm["facts"]
    assert (facts["parcel"], facts["locker"], facts["van"]) == (S10_A, "locker-1", "van-1")
    assert facts["unconfirmed"] == "van_claim" and facts["waited_min"] >= 30
    assert site.state() == "attempted"
    site.clock.advance(60)
    site.service.process()
    assert len(site.alarms()) == 1  # raised once
    deposit(site)  # the locker's word arrives at last: the parcel is in the locker
    assert site.state() == "in_locker" and len(site.alarms()) == 1


def test_a_deposit_the_van_never_claims_raises_an_alarm_too(site: Site) -> None:
    redirected_to_locker(site)
    deposit(site)
    site.clock.advance(31)
    site.service.process()
    (alarm,) = site.alarms()
    assert alarm["facts"]["unconfirmed"] == "locker_deposit"
    assert (alarm["device"], alarm["facts"]["locker"]) == ("van-1", "locker-1")
    assert site.state() == "in_locker"


def test_the_confirmation_time_comes_from_the_policy_config(tmp_path: Path) -> None:
    from depot.config import DepotConfigError, load_depot_config

    base = '[depot]\nlat = 52.37\nlon = 4.90\nvans = ["van-1"]\n'
    path = tmp_path / "depot.toml"
    path.write_text(base, encoding="utf-8")
    assert load_depot_config(path).locker_confirm_min == 30.0
    path.write_text(base + "[policy]\nlocker_confirm_min = 5\n", encoding="utf-8")
    assert load_depot_config(path).locker_confirm_min == 5.0
    for bad in ("0", "-3", '"soon"', "99999"):
        path.write_text(base + f"[policy]\nlocker_confirm_min = {bad}\n", encoding="utf-8")
        with pytest.raises(DepotConfigError, match="locker_confirm_min"):
            load_depot_config(path)
