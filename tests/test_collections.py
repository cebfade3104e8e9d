"""Collections: a locker hold that runs out puts a collection on a van's round, the courier
takes the parcel out and brings it back, and the depot hands it to the return.

Real parts: the manifest document both ends parse, a depot service on a real SQLite file fed
through its real ingest from real device journals, and the van's round on a real journal.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import DepotService
from edge.delivery import DeliveryRound, RoundError
from parcel.identify import s10_check_digit
from parcel.manifest import LockerReturn, Manifest, ManifestError, Stop
from sync.journal import Journal
from sync.wire import decode_batch, encode_batch

DAY = "2026-11-21"
NEXT_DAY = "2026-11-22"
DEPOT = (52.3676, 4.9041)
T0 = 1_795_046_400 * 10**9 + 9 * 3600 * 10**9


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


P1, P2, P3, P4, EXPIRED, LATER = (s10(n) for n in (11, 22, 33, 44, 77, 88))


class StepClock:
    """A synchronised wall clock that moves one second per reading."""

    def __init__(self, wall: int = T0) -> None:
        self.wall = wall
        self.boot_id = "test-boot"

    def monotonic_ns(self) -> int:
        return self.wall - T0

    def wall_ns(self) -> int:
        self.wall += 10**9
        return self.wall

    def wall_synced(self) -> bool:
        return True


# --- the manifest document ----------------------------------------------------------------


def locker_stop(**extra: Any) -> dict[str, Any]:
    doc = Stop(1, 52.36, 4.88, parcels=(), kind="locker", locker="locker-1").to_doc()
    doc.update(extra)
    return doc


def document(*stops: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "van": "van-1", "version": 1, "day": DAY, "stops": list(stops)}


def test_a_locker_stop_lists_what_to_collect_and_round_trips() -> None:
    doc = document(
        locker_stop(
            parcels=[P1],
            collect=[{"parcel": EXPIRED, "compartment": "A3"}, {"parcel": P2, "compartment": None}],
        )
    )
    m = Manifest.from_doc(doc)
    assert m.stops[0].collect == (LockerReturn(EXPIRED, "A3"), LockerReturn(P2, None))
    # Collected parcels are not this van's deliveries: no shelf, not among its parcels.
    assert m.parcels == [P1] and m.shelf_of(EXPIRED) is None and m.stop_of(EXPIRED) is None
    assert m.collections == [EXPIRED, P2] and m.collected_at(EXPIRED) == 1
    assert Manifest.from_json(m.to_json()) == m


def test_a_manifest_from_before_collections_still_parses() -> None:
    old = locker_stop(parcels=[P1])
    del old["collect"]
    m = Manifest.from_doc(document(old))
    assert m.stops[0].collect == () and m.collections == []
    assert Manifest.from_doc(document(locker_stop(parcels=[P1], collect=None))) == m


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        (locker_stop(collect="A3"), "collect must be a list"),
        (locker_stop(collect=[EXPIRED]), "each collect entry is an object"),
        (locker_stop(collect=[{"compartment": "A3"}]), "must name its parcel"),
        (locker_stop(collect=[{"parcel": EXPIRED, "compartment": 3}]), "compartment must be"),
        (
            {**Stop(1, 52.36, 4.88, parcels=(P1,)).to_doc(), "collect": [{"parcel": EXPIRED}]},
            "only a locker stop collects",
        ),
        (locker_stop(parcels=[P1], collect=[{"parcel": P1}]), "both delivered and collected"),
        (
            locker_stop(collect=[{"parcel": EXPIRED}, {"parcel": EXPIRED}]),
            "collected at stops 1 and 1",
        ),
    ],
)
def test_a_collect_list_the_van_cannot_use_is_refused(stop: dict[str, Any], reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        Manifest.from_doc(document(stop))


# --- the depot: expiry, the collection on a round, the parcel back -------------------------


@dataclass
class Device:
    """A device journal and the part of its uplink that matters here."""

    name: str
    journal: Journal
    acked: int = 0

    def emit(self, kind: str, **payload: Any) -> None:
        self.journal.append(kind, payload)


@dataclass
class Depot:
    service: DepotService
    tmp: Path
    devices: dict[str, Device]

    def device(self, name: str) -> Device:
        if name not in self.devices:
            journal = Journal(self.tmp / f"{name}.journal.db", name, clock=StepClock())
            self.devices[name] = Device(name, journal)
        return self.devices[name]

    def tell(self, device: str, kind: str, **payload: Any) -> None:
        """`device` journals a fact, syncs it, and the depot acts on it."""
        d = self.device(device)
        d.emit(kind, **payload)
        prev, events = d.journal.read(d.acked, 1000)
        result = self.service.store.ingest(
            decode_batch(encode_batch(d.name, d.journal.journal_id, prev, events))
        )
        d.acked = result.ack.seq
        self.service.process()

    def receive(self, parcel: str, lat: float, lon: float) -> None:
        self.service.book.receive(
            {
                "id": parcel,
                "raw": parcel,
                "kind": "s10",
                "recipient": "A. Jansen",
                "address": f"Straat {parcel[-6:-2]}",
                "lat": lat,
                "lon": lon,
                "merchant": "shop-1",
                "webhook": "https://shop.example/hooks",
                "size": "S",
            },
            now_ns=T0,
        )

    def state(self, parcel: str) -> str:
        info = self.service.book.parcel(parcel)
        assert info is not None
        return str(info["state"])


NORTH = (DEPOT[0] + 0.03, DEPOT[1])  # about 3.3 km north of the depot
SOUTH = (DEPOT[0] - 0.03, DEPOT[1])
LOCKER = (NORTH[0] + 0.002, NORTH[1])  # beside the northern van's stop


@pytest.fixture
def depot(tmp_path: Path) -> Iterator[Depot]:
    config = DepotConfig(
        database=tmp_path / "depot.db",
        lat=DEPOT[0],
        lon=DEPOT[1],
        vans=["van-1", "van-2"],
        lockers=[LockerSiteConfig("locker-1", *LOCKER, {"S": 4})],
    )
    service = DepotService(config, clock=StepClock(T0 - 3600 * 10**9))
    d = Depot(service, tmp_path, {})
    yield d
    for device in d.devices.values():
        device.journal.close()
    service.stop()


def _plan_north_and_south(d: Depot) -> dict[str, Manifest]:
    d.receive(P1, *NORTH)
    d.receive(P2, *SOUTH)
    planned = d.service.plan_day(DAY).manifests
    return planned


def _expire_in_locker(d: Depot, parcel: str, compartment: str) -> None:
    d.tell("locker-1", "parcel_deposited", parcel=parcel, compartment=compartment, size="S")
    d.tell("locker-1", "hold_expired", parcel=parcel, compartment=compartment)


def test_an_expired_hold_goes_on_the_round_of_the_van_out_nearest_the_locker(
    depot: Depot,
) -> None:
    planned = _plan_north_and_south(depot)
    north = next(v for v, m in planned.items() if m.stop_of(P1) is not None)
    south = next(v for v in planned if v != north)
    depot.receive(EXPIRED, *NORTH)
    _expire_in_locker(depot, EXPIRED, "A3")

    # The policy decided, and the collection is recorded and on a new version of the round
    # that passes the locker; the other van's round is untouched.
    assert depot.state(EXPIRED) == "hold_expired"
    info = depot.service.book.parcel(EXPIRED)
    assert info is not None and info["next_action"] == "return_to_sender"
    assert [(p, d.kind) for p, d in depot.service.decisions] == [(EXPIRED, "return_to_sender")]
    assert depot.service.collections_planned() == {"planned": 1, "collected": 0, "open": 1}
    updated = depot.service.current_manifest(north)
    assert updated is not None and updated.version == 2
    stop = updated.stop(updated.collected_at(EXPIRED) or 0)
    assert (stop.kind, stop.locker, stop.collect) == (
        "locker",
        "locker-1",
        (LockerReturn(EXPIRED, "A3"),),
    )
    assert updated.stop_of(P1) == planned[north].stop_of(P1)  # the doors stay as they were
    other = depot.service.current_manifest(south)
    assert other is not None and other.version == 1 and other.collections == []

    # The same expiry reported again plans nothing more.
    depot.tell("locker-1", "hold_expired", parcel=EXPIRED, compartment="A3")
    assert depot.service.collections_planned()["planned"] == 1
    current = depot.service.current_manifest(north)
    assert current is not None and current.version == 2

    # The courier takes it out: in the van, not yet back; then scanned back at the depot.
    depot.tell("locker-1", "parcel_returned", parcel=EXPIRED, compartment="A3")
    assert depot.state(EXPIRED) == "returning"
    assert depot.service.collections_planned() == {"planned": 1, "collected": 1, "open": 0}
    depot.tell(north, "parcel_collected_from_locker", parcel=EXPIRED, stop=stop.stop,
               locker="locker-1")
    assert depot.state(EXPIRED) == "returning"
    depot.tell(north, "parcel_returned_to_depot", parcel=EXPIRED, raw=EXPIRED)
    assert depot.state(EXPIRED) == "returned_to_sender"
    steps = [e["step"] for e in depot.service.book.track(EXPIRED)["timeline"]]
    assert steps[-4:] == [
        "collected_for_return",
        "collected_by_van",
        "returned_to_depot",
        "returned_to_sender",
    ]


def test_with_no_van_out_the_next_days_plan_collects(depot: Depot) -> None:
    planned = _plan_north_and_south(depot)
    for van in planned:
        depot.tell(van, "day_closed", day=DAY, delivered=[], in_locker=[], returned=[],
                   unaccounted=[])
    depot.receive(EXPIRED, *NORTH)
    _expire_in_locker(depot, EXPIRED, "B1")
    # Every van has closed its day: no manifest is re-issued.
    manifests = {v: depot.service.current_manifest(v) for v in planned}
    assert {v: m.version if m else None for v, m in manifests.items()} == {v: 1 for v in planned}
    assert depot.service.collections_planned()["open"] == 1

    # The next day: a parcel to the south only; the locker's collection goes to the van whose
    # round passes nearest it, even with nothing to deliver there.
    depot.receive(LATER, *SOUTH)
    nxt = depot.service.plan_day(NEXT_DAY).manifests
    collecting = [v for v, m in nxt.items() if m.collections]
    assert len(collecting) == 1
    m = nxt[collecting[0]]
    assert m.collections == [EXPIRED] and LATER not in m.parcels
    assert m.stops[-1].kind == "locker" and m.stops[-1].parcels == ()
    assert m.stops[-1].collect == (LockerReturn(EXPIRED, "B1"),)
    # The manifest as issued is the one the van reads.
    assert depot.service.current_manifest(collecting[0], NEXT_DAY) == m

    # A hold extended after all: the collection is no longer open, the next plan has none.
    depot.tell("locker-1", "command_accepted", action="extend_hold", parcel=EXPIRED,
               hold_until_ns=T0 + 10**13)
    assert depot.state(EXPIRED) == "in_locker"
    assert depot.service.collections_planned()["open"] == 0
    later = depot.service.plan_day("2026-11-23").manifests
    assert all(not m.collections for m in later.values())


# --- the van's round ----------------------------------------------------------------------


class Screen:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def tell(self, tone: str, say: str, facts: Mapping[str, Any]) -> None:
        self.lines.append((tone, say, dict(facts)))


@pytest.fixture
def van(tmp_path: Path) -> Iterator[tuple[DeliveryRound, Screen, Journal]]:
    journal = Journal(tmp_path / "van.db", "van-1", clock=StepClock())
    screen = Screen()
    round_ = DeliveryRound(journal, screen, van_id="van-1", position=lambda: None)
    yield round_, screen, journal
    journal.close()


def _collecting_manifest(version: int, collect: tuple[LockerReturn, ...]) -> bytes:
    stops = (
        Stop(1, 52.37, 4.89, parcels=(P1,), address="Damrak 1"),
        Stop(2, 52.36, 4.88, parcels=(P3,), kind="locker", locker="locker-1", collect=collect),
    )
    return Manifest(van="van-1", version=version, day=DAY, stops=stops).to_json()


def events(journal: Journal, kind: str) -> list[dict[str, Any]]:
    _prev, found = journal.read(0, 10**6)
    return [dict(e.payload) for e in found if e.kind == kind]


def test_the_courier_collects_at_a_locker_stop_and_brings_it_back(
    van: tuple[DeliveryRound, Screen, Journal],
) -> None:
    round_, screen, journal = van
    round_.apply_manifest(_collecting_manifest(1, ()))
    for p in (P1, P3):
        round_.scan(p)
    round_.courier({"do": "depart"})
    # A new version adds the collection mid-route; the door stays the current stop.
    round_.courier({"do": "arrive", "stop": 1})
    round_.apply_manifest(_collecting_manifest(2, (LockerReturn(EXPIRED, "A3"),)))
    assert round_.current_stop == 1
    assert events(journal, "manifest_applied")[-1]["off_manifest"] == []
    # A parcel in hand at a door is not a collection.
    refused = round_.scan(EXPIRED)
    assert refused is not None and refused.kind == "stop_scan_refused"
    round_.scan(P1)
    round_.courier({"do": "deliver", "parcel": P1, "name": "A. Jansen"})

    round_.courier({"do": "arrive", "stop": 2})
    assert screen.lines[-1][2]["collect"] == [EXPIRED]
    round_.courier({"do": "drop", "parcel": P3})
    collected = round_.scan(EXPIRED)
    assert collected is not None and collected.kind == "parcel_collected_from_locker"
    assert collected.payload["locker"] == "locker-1"
    assert collected.payload["compartment"] == "A3" and collected.payload["listed"] is True
    assert collected.payload["raw"] == EXPIRED and collected.payload["stop"] == 2
    # Scanned again: nothing new. Typed, one the depot did not list: recorded, unlisted.
    again = round_.scan(EXPIRED)
    assert again is not None and again.kind == "stop_scan_refused"
    assert again.payload["reason"] == "already_done"
    typed = round_.courier({"do": "collect", "parcel": LATER})
    assert (typed["listed"], typed["raw"]) == (False, None)
    with pytest.raises(RoundError, match="already collected"):
        round_.courier({"do": "collect", "parcel": LATER})
    with pytest.raises(RoundError, match="on the van"):
        round_.courier({"do": "collect", "parcel": P1})
    status = round_.status()["parcels"]
    assert status["collected"] == 2 and status["on_van"] == 2

    # Back at the depot: both scanned back, reconciled as returned.
    ended = round_.courier({"do": "end_round"})
    assert sorted(ended["on_van"]) == sorted([EXPIRED, LATER])
    for p in (EXPIRED, LATER):
        back = round_.scan(p)
        assert back is not None and back.kind == "parcel_returned_to_depot"
    closed = round_.courier({"do": "close_day"})
    assert sorted(closed["returned"]) == sorted([EXPIRED, LATER])
    assert closed["unaccounted"] == [] and closed["in_locker"] == [P3]


def test_collecting_needs_a_locker_stop(van: tuple[DeliveryRound, Screen, Journal]) -> None:
    round_, _screen, journal = van
    round_.apply_manifest(_collecting_manifest(1, (LockerReturn(EXPIRED),)))
    round_.scan(P1)
    round_.courier({"do": "depart"})
    round_.courier({"do": "arrive", "stop": 1})
    with pytest.raises(RoundError, match="not a locker stop"):
        round_.courier({"do": "collect", "parcel": EXPIRED})
    assert events(journal, "parcel_collected_from_locker") == []
    assert round_.status()["parcels"]["collected"] == 0
