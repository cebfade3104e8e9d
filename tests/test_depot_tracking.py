"""The parcel book against a real depot store: device journals, real batches, real SQLite.

Events are made the way devices make them (a `sync.journal.Journal` per device, payloads from
docs/DELIVERY.md), carried as the wire carries them (`encode_batch` -> `decode_batch`) and
stored by `depot.ingest.DepotStore.ingest`, so the book projects exactly what a depot holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from depot.epcis import STEP_MAPPING, epc_uri, export_epcis, is_sscc
from depot.ingest import DepotStore
from depot.store import Conn
from depot.tracking import (
    Notification,
    ParcelBook,
    ParcelStateError,
    TrackingError,
    UnknownParcelError,
)
from depot.web import DepotWeb
from sync.journal import Journal
from sync.wire import decode_batch, encode_batch
from tests.conftest import depot_sql
from tests.web import api_token

ROOT = Path(__file__).resolve().parent.parent

S10_A = "RR123456785NL"
S10_B = "RR876543216NL"
SSCC = "157035381410375177"
UPS = "1Z5R89390357567127"
UNKNOWN = "RR111111115NL"
T0 = 1_795_000_000 * 10**9  # 2026-11-18, a wall clock that NTP has set

CBV_BIZ_STEPS = {
    "accepting", "arriving", "assembling", "collecting", "commissioning", "consigning",
    "creating_class_instance", "cycle_counting", "decommissioning", "departing", "destroying",
    "disassembling", "dispensing", "encoding", "entering_exiting", "holding", "inspecting",
    "installing", "killing", "loading", "other", "packing", "picking", "receiving", "removing",
    "repackaging", "repairing", "replacing", "reserving", "retail_selling", "sampling",
    "sensor_reporting", "shipping", "staging_outbound", "stock_taking", "stocking", "storing",
    "transporting", "unloading", "unpacking", "void_shipping",
}  # fmt: skip
CBV_DISPOSITIONS = {
    "active", "available", "completeness_inferred", "completeness_verified", "conformant",
    "container_closed", "container_open", "damaged", "destroyed", "dispensed", "disposed",
    "encoded", "expired", "in_progress", "in_transit", "inactive", "mismatch_class",
    "mismatch_instance", "mismatch_quantity", "needs_replacement", "no_pedigree_match",
    "non_conformant", "non_sellable_other", "partially_dispensed", "recalled", "reserved",
    "retail_sold", "returned", "sellable_accessible", "sellable_not_accessible", "stolen",
    "unavailable", "unknown",
}  # fmt: skip


# --- devices that journal and sync like the real ones ----------------------------------------


@dataclass
class StepClock:
    """A synchronised wall clock that moves one minute per reading (ordered, readable times)."""

    wall: int = T0
    synced: bool = True
    boot_id: str = "test-boot"

    def monotonic_ns(self) -> int:
        return self.wall - T0

    def wall_ns(self) -> int:
        self.wall += 60 * 10**9
        return self.wall

    def wall_synced(self) -> bool:
        return self.synced


@dataclass
class Device:
    """A van or locker journal and the part of its uplink that matters here: batches to the
    depot store, in order, from the last acknowledged event."""

    name: str
    journal: Journal
    store: DepotStore
    clock: StepClock
    acked: int = 0

    def emit(self, kind: str, **payload: Any) -> None:
        self.journal.append(kind, payload)

    def sync(self) -> None:
        prev, events = self.journal.read(self.acked, 1000)
        if not events:
            return
        wire = encode_batch(self.name, self.journal.journal_id, prev, events)
        result = self.store.ingest(decode_batch(wire))
        assert not result.gap
        self.acked = result.ack.seq


@dataclass
class Depot:
    path: str  # the database: a SQLite file or a PostgreSQL URL (both backends run every test)
    tmp: Path
    store: DepotStore
    book: ParcelBook
    sent: list[Notification]
    devices: dict[str, Device] = field(default_factory=dict)

    def device(self, name: str, *, synced: bool = True) -> Device:
        if name not in self.devices:
            clock = StepClock(synced=synced)
            journal = Journal(self.tmp / f"{name}.journal.db", name, clock=clock)
            self.devices[name] = Device(name, journal, self.store, clock)
        return self.devices[name]

    def sync_all(self) -> None:
        for device in self.devices.values():
            device.sync()


def recording(sent: list[Notification]) -> Any:
    def notify(conn: Conn, n: Notification) -> None:
        assert conn.in_transaction, "a notification must commit with the state it reports"
        sent.append(n)

    return notify


@pytest.fixture
def depot(tmp_path: Path, depot_database: str) -> Iterator[Depot]:
    path = depot_database
    store = DepotStore(path)
    sent: list[Notification] = []
    book = ParcelBook(path, notify=recording(sent), clock=StepClock(wall=T0 - 3600 * 10**9))
    d = Depot(path, tmp_path, store, book, sent)
    yield d
    book.close()
    for device in d.devices.values():
        device.journal.close()
    store.close()


def record(parcel: str, **extra: Any) -> dict[str, Any]:
    doc = {
        "id": parcel,
        "raw": parcel,
        "kind": "sscc" if is_sscc(parcel) else "s10",
        "recipient": "A. Jansen",
        "address": "Damrak 1, 1012 LG Amsterdam",
        "lat": 52.3702,
        "lon": 4.8952,
        "window": ["09:00", "12:00"],
        "instructions": "ring twice",
        "merchant": "shop-1",
        "webhook": "https://shop.example/hooks/lastmile",
        "customer_webhook": "https://notify.example/c/42",
        "size": "S",
        "locker_ok": True,
    }
    doc.update(extra)
    return doc


def pod(**extra: Any) -> dict[str, Any]:
    return {
        "scan": None,
        "scanned_at_ns": None,
        "fix": {"lat": 52.3702, "lon": 4.8952, "accuracy_m": 4.0, "utc": "09:40:00"},
        "no_fix": False,
        "distance_m": 3.5,
        "far": False,
        "at_ns": T0,
        "photo": None,
        **extra,
    }


def receive_all(d: Depot, *parcels: str) -> None:
    for parcel in parcels:
        assert d.book.receive(record(parcel), now_ns=T0 - 7200 * 10**9, source="import")


def a_round(d: Depot) -> None:
    """van-1 loads three parcels: one delivered, one failed, one redirected to locker-1 and
    picked up there; the failed one comes back to the depot at the end of the day."""
    receive_all(d, S10_A, S10_B, SSCC)
    for stop, parcel in enumerate((S10_A, S10_B, SSCC), start=1):
        d.book.assign(parcel, "van-1", stop, 1)
    van, locker = d.device("van-1"), d.device("locker-1")
    parcels = [S10_A, S10_B, SSCC]
    van.emit("manifest_applied", version=1, day="2026-11-18", stops=3, parcels=3)
    for shelf, parcel in enumerate(reversed(parcels), start=1):
        van.emit(
            "parcel_loaded", parcel=parcel, stop=parcels.index(parcel) + 1, shelf=shelf, raw=parcel
        )
    van.emit("departed", version=1, loaded=parcels, missing=[])
    van.emit(
        "parcel_delivered",
        parcel=S10_A,
        stop=1,
        to="neighbour",
        name="B. de Vries",
        neighbour_address="Damrak 3",
        photo=None,
        pod=pod(),
        upu="EMI",
        x12="D",
    )
    van.emit(
        "delivery_failed",
        parcel=S10_B,
        stop=2,
        reason="not_at_home",
        upu="EMH",
        x12="AH",
        attempt=1,
        pod=pod(),
    )
    van.emit("parcel_redirected", parcel=SSCC, stop=3, locker="locker-1", pod=pod())
    van.sync()
    locker.emit("command_accepted", id="c1", action="reserve", parcel=SSCC, compartment="A1")
    locker.emit(
        "parcel_deposited",
        parcel=SSCC,
        compartment="A1",
        size="S",
        hold_until_ns=T0 + 72 * 3600 * 10**9,
        credential_for_depot="SEALED-SECRET-BLOB",
    )
    locker.sync()
    van.emit("parcel_dropped_at_locker", parcel=SSCC, stop=3, locker="locker-1", pod=pod())
    van.emit("parcel_returned_to_depot", parcel=S10_B, raw=S10_B)
    van.emit("day_closed", delivered=[S10_A], in_locker=[SSCC], returned=[S10_B], unaccounted=[])
    van.sync()
    locker.emit("parcel_picked_up", parcel=SSCC, compartment="A1")
    locker.sync()


def project_all(book: ParcelBook) -> list[Any]:
    transitions = []
    while batch := book.project_new_events(limit=4):
        transitions.extend(batch)
    return transitions


# --- the state machine -----------------------------------------------------------------------


def test_a_round_moves_each_parcel_to_its_outcome(depot: Depot) -> None:
    a_round(depot)
    transitions = project_all(depot.book)

    assert depot.book.track(S10_A)["state"] == "delivered"
    assert depot.book.track(S10_B)["state"] == "at_depot"
    assert depot.book.track(SSCC)["state"] == "picked_up"
    failed = depot.book.track(S10_B)
    assert failed["attempts"] == 1 and failed["last_reason"] == "not_at_home"
    assert depot.book.track(SSCC)["locker"] == "locker-1"

    steps = [e["step"] for e in depot.book.track(SSCC)["timeline"]]
    assert steps == [
        "received",
        "assigned",
        "loaded",
        "out_for_delivery",
        "redirected",
        "locker_reserved",
        "in_locker",
        "dropped_at_locker",
        "picked_up",
    ]
    for entry in depot.book.track(SSCC)["timeline"]:
        at = datetime.fromisoformat(entry["at"])
        assert at.utcoffset() == timedelta(0)

    states = [(t.parcel, t.state) for t in transitions]
    assert (S10_B, "attempted") in states and (S10_B, "at_depot") in states
    assert (SSCC, "in_locker") in states and (SSCC, "picked_up") in states
    assert not any(t.state == "in_locker" and t.step == "dropped_at_locker" for t in transitions)

    assert depot.book.counts_by_state()["delivered"] == 1
    assert [p["parcel"] for p in depot.book.parcels("at_depot")] == [S10_B]
    assert depot.book.van_versions()["van-1"]["manifest_version"] == 1
    (day,) = depot.book.reconciliations("van-1")
    assert day["day"] == "2026-11-18" and day["discrepancies"] == []


def test_people_hear_of_each_outcome_once_and_never_a_code(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    sent = depot.sent

    ids = [n.event_id for n in sent]
    assert len(ids) == len(set(ids))
    by = {(n.body["parcel"], n.body["state"], n.audience): n for n in sent}
    delivered = by[(S10_A, "delivered", "customer")]
    assert delivered.url == "https://notify.example/c/42"
    assert delivered.body["details"]["to"] == "neighbour"
    assert delivered.body["details"]["name"] == "B. de Vries"
    assert delivered.body["merchant"] == "shop-1"
    assert by[(S10_A, "delivered", "merchant")].url == "https://shop.example/hooks/lastmile"
    attempted = by[(S10_B, "attempted", "merchant")].body
    assert attempted["details"]["reason"] == "not_at_home"
    assert attempted["details"]["reason_text"] == "nobody was at home"
    assert by[(SSCC, "in_locker", "customer")].body["details"]["locker"] == "locker-1"
    assert (SSCC, "picked_up", "customer") in by
    assert (SSCC, "out_for_delivery", "merchant") in by
    assert (S10_A, "received", "merchant") in by
    # in_locker is told once per audience, though the van and the locker both reported it
    assert sum(1 for n in sent if n.body["parcel"] == SSCC and n.body["state"] == "in_locker") == 2
    for n in sent:
        assert set(n.body) == {"event_id", "parcel", "state", "at", "details", "merchant"}
        assert n.body["event_id"] == n.event_id and n.event_id.endswith(":" + n.audience)
        assert datetime.fromisoformat(n.body["at"]).utcoffset() == timedelta(0)
        assert "SEALED" not in json.dumps(n.body) and "pod" not in n.body["details"]
    with depot_sql(depot.path) as conn:
        stored = [str(r[0]) for r in conn.execute("SELECT details FROM timeline").fetchall()]
    assert stored and not any("SEALED" in details for details in stored)


def test_a_parcel_without_a_customer_webhook_tells_only_the_merchant(depot: Depot) -> None:
    depot.book.receive(record(UPS, customer_webhook=None), now_ns=T0, source="import")
    assert [n.audience for n in depot.sent] == ["merchant"]


def test_receiving_again_neither_duplicates_nor_resets(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    before = len(depot.sent)
    assert not depot.book.receive(record(S10_A, address="Damrak 2"), now_ns=T0, source="import")
    assert not depot.book.receive(record(S10_A), now_ns=T0, source="arrival_scan")
    track = depot.book.track(S10_A)
    assert track["state"] == "delivered"
    assert [e["step"] for e in track["timeline"]].count("received") == 1
    assert track["address"] == "Damrak 1, 1012 LG Amsterdam"  # the last record given wins
    assert len(depot.sent) == before

    assert depot.book.receive(record(UPS), now_ns=T0, source="import")
    assert not depot.book.receive(record(UPS), now_ns=T0, source="arrival_scan")
    sources = [e["details"]["source"] for e in depot.book.track(UPS)["timeline"]]
    assert sources == ["import", "arrival_scan"]
    with pytest.raises(TrackingError):
        depot.book.receive({"raw": "no id"}, now_ns=T0)


def test_a_final_state_is_never_moved_backwards(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    van = depot.device("van-1")
    van.emit("parcel_delivered", parcel=SSCC, stop=3, to="recipient", name="X", pod=pod())
    van.emit("delivery_failed", parcel=S10_A, stop=1, reason="refused", attempt=2, pod=pod())
    van.sync()
    transitions = project_all(depot.book)

    assert transitions == []
    picked = depot.book.track(SSCC)
    assert picked["state"] == "picked_up"
    anomaly = picked["timeline"][-1]
    assert anomaly["step"] == "anomaly" and anomaly["state"] == "picked_up"
    assert anomaly["details"]["would_be"] == "delivered"
    late = depot.book.track(S10_A)["timeline"][-1]
    # a failed attempt reported after the delivery is history, not a contradiction
    assert late["step"] == "attempted" and late["state"] == "delivered" and late["details"]["late"]
    assert depot.book.track(S10_A)["state"] == "delivered"
    with pytest.raises(ParcelStateError):
        depot.book.mark_returned_to_sender(SSCC)
    with pytest.raises(ParcelStateError):
        depot.book.assign(S10_A, "van-2", 1, 1)


def test_facts_from_devices_that_sync_out_of_order_do_not_pull_a_parcel_back(
    depot: Depot,
) -> None:
    receive_all(depot, SSCC)
    van, locker = depot.device("van-1"), depot.device("locker-1")
    van.emit("parcel_loaded", parcel=SSCC, stop=1, shelf=1, raw=SSCC)
    van.emit("departed", version=1, loaded=[SSCC], missing=[])
    van.emit("delivery_failed", parcel=SSCC, stop=1, reason="no_access", attempt=1, pod=pod())
    van.emit("parcel_redirected", parcel=SSCC, stop=1, locker="locker-1", pod=pod())
    locker.emit("parcel_deposited", parcel=SSCC, compartment="B2", size="M", hold_until_ns=T0)
    locker.sync()  # the van is in a dead zone: the locker's news arrives first
    project_all(depot.book)
    van.sync()
    transitions = project_all(depot.book)

    track = depot.book.track(SSCC)
    assert track["state"] == "in_locker"
    assert track["attempts"] == 1  # the attempt still counts, though it arrived late
    late = [e for e in track["timeline"] if e["details"].get("late")]
    assert [e["step"] for e in late] == ["loaded", "out_for_delivery", "attempted", "redirected"]
    assert transitions == []  # nothing for the policy to decide: the parcel is in a locker
    assert [n.body["state"] for n in depot.sent].count("attempted") == 0


def test_unknown_parcels_are_kept_and_applied_when_they_arrive(depot: Depot) -> None:
    van = depot.device("van-1")
    van.emit("parcel_loaded", parcel=UNKNOWN, stop=1, shelf=1, raw=UNKNOWN)
    van.emit("departed", version=1, loaded=[UNKNOWN], missing=[])
    van.emit("delivery_failed", stop=1, reason="refused")  # names no parcel at all
    van.sync()
    assert project_all(depot.book) == []
    unmatched = depot.book.unmatched()
    assert [(u["parcel"], u["kind"]) for u in unmatched] == [
        (UNKNOWN, "parcel_loaded"),
        (UNKNOWN, "departed"),
        ("", "delivery_failed"),
    ]

    depot.book.receive(record(UNKNOWN), now_ns=T0, source="arrival_scan")
    transitions = project_all(depot.book)
    assert [t.state for t in transitions] == ["loaded", "out_for_delivery"]
    assert depot.book.track(UNKNOWN)["state"] == "out_for_delivery"
    assert [u["parcel"] for u in depot.book.unmatched()] == [""]
    assert project_all(depot.book) == []


def test_returns_stay_returning_until_the_depot_books_them(depot: Depot) -> None:
    receive_all(depot, SSCC, S10_B)
    locker, van = depot.device("locker-1"), depot.device("van-1")
    locker.emit("parcel_deposited", parcel=SSCC, compartment="A1", size="S", hold_until_ns=T0)
    locker.emit("hold_expired", parcel=SSCC, compartment="A1")
    locker.sync()
    transitions = project_all(depot.book)
    assert [t.state for t in transitions] == ["in_locker", "hold_expired"]
    assert depot.book.locker_occupancy() == {"locker-1": {"S": 1}}

    assert depot.book.set_next_action(SSCC, "return_to_sender", reason="hold expired") == (
        "hold_expired"
    )
    locker.emit("parcel_returned", parcel=SSCC, compartment="A1")
    locker.sync()
    van.emit("parcel_returned_to_depot", parcel=SSCC, raw=SSCC)
    van.emit("parcel_returned_to_depot", parcel=S10_B, raw=S10_B)
    van.sync()
    project_all(depot.book)
    assert depot.book.track(SSCC)["state"] == "returning"
    assert depot.book.locker_occupancy() == {}
    assert depot.book.track(S10_B)["state"] == "at_depot"
    assert depot.book.set_next_action(S10_B, "return_to_sender", reason="refused") == "returning"

    depot.book.mark_returned_to_sender(SSCC)
    depot.book.mark_returned_to_sender(SSCC)  # booking twice is harmless
    track = depot.book.track(SSCC)
    assert track["state"] == "returned_to_sender" and track["final"]
    told = [n for n in depot.sent if n.body["state"] == "returned_to_sender"]
    assert len(told) == 2 and told[0].body["details"] == {"x12": "3"}
    assert depot.book.set_next_action(SSCC, "second_attempt", reason="late") == "returned_to_sender"


def test_a_refused_reservation_is_handed_to_the_policy(depot: Depot) -> None:
    receive_all(depot, S10_A, S10_B)
    depot.book.set_next_action(S10_A, "locker", locker="locker-1", reason="not at home")
    depot.book.note_command("cmd-1", locker="locker-1", action="reserve", parcel=S10_A)
    locker = depot.device("locker-1")
    locker.emit("command_failed", id="cmd-1", action="reserve", reason="no free compartment")
    locker.emit("command_failed", id="cmd-unknown", action="reserve", reason="full")
    locker.sync()
    (t,) = project_all(depot.book)
    assert (t.parcel, t.state, t.previous) == (S10_A, "reserve_failed", "received")
    assert depot.book.track(S10_A)["state"] == "received"
    assert [u["kind"] for u in depot.book.unmatched()] == ["command_failed"]
    info = depot.book.parcel(S10_A)
    assert info is not None and info["next_action"] == "locker" and info["locker"] == "locker-1"
    assert info["record"]["size"] == "S" and info["window"] == ["09:00", "12:00"]


def test_an_unsynchronised_device_clock_is_replaced_by_the_depot_s(depot: Depot) -> None:
    receive_all(depot, S10_A)
    van = depot.device("van-1", synced=False)
    van.clock.wall = 0  # a van without a real-time clock, booted in 1970
    van.emit("parcel_loaded", parcel=S10_A, stop=1, shelf=1, raw=S10_A)
    van.sync()
    project_all(depot.book)
    loaded = depot.book.track(S10_A)["timeline"][-1]
    assert loaded["at"].startswith("20") and "depot receipt" in loaded["details"]["time"]


def test_unknown_parcels_and_states_are_refused(depot: Depot) -> None:
    with pytest.raises(UnknownParcelError):
        depot.book.track(UNKNOWN)
    with pytest.raises(UnknownParcelError):
        depot.book.assign(UNKNOWN, "van-1", 1, 1)
    with pytest.raises(TrackingError):
        depot.book.parcels("lost")
    assert depot.book.parcel(UNKNOWN) is None


# --- exactly once, whatever happens to the process ------------------------------------------


def test_a_second_book_on_the_same_file_finds_nothing_left_to_do(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    timeline = depot.book.track(SSCC)["timeline"]
    other_sent: list[Notification] = []
    with ParcelBook(depot.path, notify=recording(other_sent)) as again:
        assert project_all(again) == []
        assert again.track(SSCC)["timeline"] == timeline
    assert other_sent == []


def test_a_failing_notification_rolls_the_whole_batch_back(depot: Depot) -> None:
    a_round(depot)
    calls = 0

    def flaky(conn: Conn, n: Notification) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("outbox unavailable")

    before = depot.book.track(SSCC)
    with ParcelBook(depot.path, notify=flaky) as book:
        with pytest.raises(RuntimeError):
            book.project_new_events(limit=1000)
        assert book.projected_rowid() == 0
        assert book.track(SSCC) == before
    project_all(depot.book)
    assert depot.book.track(SSCC)["state"] == "picked_up"


def test_events_queued_again_apply_nothing_twice(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    tracks = {p: depot.book.track(p) for p in (S10_A, S10_B, SSCC)}
    sent = len(depot.sent)
    with depot_sql(depot.path) as conn:  # as if every event's queue row came back
        conn.execute("INSERT INTO unprojected(rowid) SELECT rowid FROM events")
    assert project_all(depot.book) == []
    assert {p: depot.book.track(p) for p in tracks} == tracks
    assert len(depot.sent) == sent


KILLER = textwrap.dedent(
    """
    import os, sys
    from depot.tracking import ParcelBook
    seen = []
    def notify(conn, n):
        seen.append(n.event_id)
        if len(seen) == int(sys.argv[2]):
            os._exit(9)  # the power goes, in the middle of the batch's transaction
    ParcelBook(sys.argv[1], notify=notify).project_new_events(limit=1000)
    """
)


def test_a_process_killed_mid_batch_leaves_nothing_half_done(depot: Depot) -> None:
    a_round(depot)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, depot.path, "6"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert killed.returncode == 9
    sent: list[Notification] = []
    with ParcelBook(depot.path, notify=recording(sent)) as book:
        assert book.projected_rowid() == 0  # the batch it was in the middle of never happened
        project_all(book)
        assert book.track(SSCC)["state"] == "picked_up"
    ids = [n.event_id for n in sent]
    assert len(ids) == len(set(ids))
    told = [n.body["state"] for n in sent if n.body["parcel"] == SSCC and n.audience == "customer"]
    assert told == ["out_for_delivery", "in_locker", "picked_up"]


# --- EPCIS ------------------------------------------------------------------------------------


def _check_epcis_document(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    assert doc["@context"] == [
        "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
        {"lm": "https://lastmile-edge.example/epcis/"},
    ]
    assert doc["type"] == "EPCISDocument" and doc["schemaVersion"] == "2.0"
    assert datetime.fromisoformat(doc["creationDate"]).tzinfo is not None
    events = doc["epcisBody"]["eventList"]
    assert isinstance(events, list)
    for ev in events:
        assert ev["type"] == "ObjectEvent" and ev["action"] == "OBSERVE"
        assert ev["eventID"].startswith("urn:uuid:")
        at = datetime.fromisoformat(ev["eventTime"])
        assert at.utcoffset() == timedelta(0) and ev["eventTimeZoneOffset"] == "+00:00"
        assert isinstance(ev["epcList"], list) and len(ev["epcList"]) == 1
        assert all(isinstance(e, str) and ":" in e for e in ev["epcList"])
        assert ev["bizStep"] in CBV_BIZ_STEPS or ev["bizStep"].startswith("lm:")
        if "disposition" in ev:
            assert ev["disposition"] in CBV_DISPOSITIONS or ev["disposition"].startswith("lm:")
        assert ev["readPoint"]["id"].startswith("lm:device/")
        for key in ev:
            assert key in {
                "type", "eventID", "eventTime", "eventTimeZoneOffset", "epcList", "action",
                "bizStep", "disposition", "readPoint", "bizLocation",
            } or key.startswith("lm:"), key  # fmt: skip
    assert len({ev["eventID"] for ev in events}) == len(events)
    json.dumps(doc, allow_nan=False)
    return events


def test_the_epcis_export_speaks_cbv_where_it_can(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    doc = export_epcis(depot.book, [SSCC, S10_B], now_ns=T0)
    events = _check_epcis_document(doc)
    sscc_events = [e for e in events if e["epcList"] == [f"https://id.gs1.org/00/{SSCC}"]]
    assert [e["bizStep"] for e in sscc_events] == [
        "accepting",
        "lm:assigned",
        "loading",
        "departing",
        "lm:redirected",
        "lm:locker_reserved",
        "storing",
        "storing",
        "lm:picked_up",
    ]
    stored = sscc_events[6]
    assert stored["disposition"] == "lm:awaiting_pickup" and stored["lm:x12"] == "AU"
    assert stored["bizLocation"] == {"id": "lm:locker/locker-1"}
    assert stored["readPoint"] == {"id": "lm:device/locker-1"}
    (attempt,) = [e for e in events if e["bizStep"] == "lm:delivery_attempted"]
    assert attempt["epcList"] == [f"lm:parcel/{S10_B}"]
    assert (attempt["lm:reason"], attempt["lm:x12"], attempt["lm:upu"]) == (
        "not_at_home",
        "AH",
        "EMH",
    )
    assert attempt["disposition"] == "in_transit" and attempt["lm:inovert"] == "REN|DAF"
    assert not any("SEALED" in json.dumps(e) for e in events)

    everything = _check_epcis_document(export_epcis(depot.book))
    assert len(everything) > len(events)
    assert export_epcis(depot.book, SSCC)["epcisBody"]["eventList"] == sscc_events
    with pytest.raises(UnknownParcelError):
        export_epcis(depot.book, [UNKNOWN])


def test_delivery_and_return_map_to_documented_steps(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    depot.book.set_next_action(S10_B, "return_to_sender", reason="refused")
    depot.book.mark_returned_to_sender(S10_B)
    events = _check_epcis_document(export_epcis(depot.book, [S10_A, S10_B]))
    (delivered,) = [e for e in events if e["bizStep"] == "lm:delivered"]
    assert (delivered["lm:x12"], delivered["lm:upu"], delivered["lm:to"]) == (
        "D",
        "EMI",
        "neighbour",
    )
    assert delivered["disposition"] == "lm:delivered"
    returned = events[-1]
    assert (returned["bizStep"], returned["disposition"], returned["lm:x12"]) == (
        "shipping",
        "returned",
        "3",
    )
    assert set(STEP_MAPPING) >= {"loaded", "out_for_delivery", "attempted", "in_locker"}


def test_identifiers_are_gs1_digital_links_only_for_valid_ssccs() -> None:
    assert epc_uri(SSCC) == f"https://id.gs1.org/00/{SSCC}"
    assert epc_uri("157035381410375178") == "lm:parcel/157035381410375178"  # bad check digit
    assert epc_uri(S10_A, "s10") == f"lm:parcel/{S10_A}"
    assert epc_uri("a/b c") == "lm:parcel/a%2Fb%20c"


# --- the HTTP API -----------------------------------------------------------------------------


def _get(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str, Any]:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return response.status, response.headers["Content-Type"], json.loads(body)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, exc.headers["Content-Type"], json.loads(body)


def test_the_http_api_answers_in_json(depot: Depot) -> None:
    a_round(depot)
    project_all(depot.book)
    token = api_token(depot.book.database)
    with DepotWeb(depot.book) as api:
        assert api.url.startswith("http://127.0.0.1:")
        status, ctype, health = _get(api.url + "/health")
        assert (status, ctype, health["ok"], health["parcels"]) == (
            200,
            "application/json",
            True,
            3,
        )

        status, _, listing = _get(api.url + "/parcels", token=token)
        assert status == 200 and listing["count"] == 3
        status, _, delivered = _get(api.url + "/parcels?state=delivered", token=token)
        assert [p["parcel"] for p in delivered["parcels"]] == [S10_A]

        status, _, track = _get(f"{api.url}/parcels/{SSCC}", token=token)
        assert status == 200 and track == depot.book.track(SSCC)
        assert "webhook" not in json.dumps(track)

        status, _, doc = _get(f"{api.url}/parcels/{SSCC}/epcis", token=token)
        assert status == 200 and len(_check_epcis_document(doc)) == len(track["timeline"])
        status, _, doc = _get(api.url + "/epcis", token=token)
        assert status == 200 and _check_epcis_document(doc)

        status, _, vans = _get(api.url + "/vans", token=token)
        assert vans["vans"]["van-1"]["manifest_version"] == 1 and vans["vans"]["van-1"]["day"]

        for path, code in (
            (f"/parcels/{UNKNOWN}", 404),
            (f"/parcels/{UNKNOWN}/epcis", 404),
            ("/nowhere", 404),
            ("/parcels?state=lost", 400),
            ("/parcels?colour=red", 400),
            ("/parcels?state=delivered&state=received", 400),
            (f"/parcels/{SSCC}?x=1", 400),
        ):
            status, ctype, error = _get(api.url + path, token=token)
            assert (status, ctype) == (code, "application/json"), path
            assert isinstance(error["error"], str) and "Traceback" not in error["error"]

        for path in ("/parcels", f"/parcels/{SSCC}", "/epcis", "/vans", "/devices", "/alarms"):
            status, ctype, error = _get(api.url + path)  # no token: nothing personal
            assert (status, ctype) == (401, "application/json"), path
            assert SSCC not in json.dumps(error)

        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, ctype, error = _get(f"{api.url}/parcels/{SSCC}", method, token)
            assert (status, ctype) == (405, "application/json") and "error" in error


def test_the_http_api_hides_internal_errors(depot: Depot) -> None:
    receive_all(depot, S10_A)
    token = api_token(depot.book.database)
    with DepotWeb(depot.book) as api:
        with depot_sql(depot.path) as conn:
            conn.execute("DROP TABLE vans")  # a broken file: the client hears nothing of it
        status, ctype, error = _get(api.url + "/vans", token=token)
        assert (status, ctype, error) == (500, "application/json", {"error": "internal error"})
