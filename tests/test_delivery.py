"""The van's delivery round: manifest, loading, stops, outcomes with proof, returns, restart.

Real SQLite journal files throughout; the GNSS position is a plain callable (a sensor input).
The last tests run the van against a real Mosquitto broker and depot, and as a process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.ingest import Depot, DepotStore, IngestResult
from edge.delivery import (
    IN_LOCKER,
    DeliveryRound,
    InvalidOutcome,
    Position,
    RoundError,
)
from edge.van import Van, VanConfig
from parcel.codes import FAILURE_REASONS
from parcel.geo import distance_m
from parcel.identify import s10_check_digit
from parcel.manifest import Manifest, Stop
from simulators.broker import Broker
from simulators.doorstep import write_doorstep_jpeg
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.wire import Event, command_topic
from tests.conftest import address

ROOT = Path(__file__).resolve().parent.parent
DAY = "2026-11-21"
STOP_1 = (52.3702, 4.8952)
STOP_2 = (52.3800, 4.9000)
LOCKER_STOP = (52.3600, 4.8800)


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


P1, P2, P3, P4, P5, STRANGER = (s10(n) for n in (11, 22, 33, 44, 55, 99))


def manifest(
    version: int = 1,
    *,
    van: str = "van-1",
    day: str = DAY,
    stop1: tuple[str, ...] = (P1, P2),
    stop2: tuple[str, ...] = (P3,),
    locker: tuple[str, ...] = (P4,),
    extra_locker_stop: tuple[str, ...] = (),
) -> bytes:
    stops = [
        Stop(1, *STOP_1, parcels=stop1, address="Damrak 1", recipient="A. Jansen"),
        Stop(2, *STOP_2, parcels=stop2, address="Dam 2"),
        Stop(3, *LOCKER_STOP, parcels=locker, kind="locker", locker="locker-1"),
    ]
    if extra_locker_stop:
        stops.append(
            Stop(4, 52.35, 4.87, parcels=extra_locker_stop, kind="locker", locker="locker-2")
        )
    return Manifest(van=van, version=version, day=day, stops=tuple(stops)).to_json()


@dataclass(frozen=True)
class Fix:
    lat: float
    lon: float
    accuracy_m: float | None = 4.0
    utc: str = "10:15:00"


class Gps:
    """The position source of a test: whatever fix the test sets, or none."""

    def __init__(self, fix: Fix | None = None) -> None:
        self.fix = fix

    def __call__(self) -> Position | None:
        return self.fix


class Screen:
    """The courier's screen and beeper: every tone with its text and facts, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def tell(self, tone: str, say: str, facts: Mapping[str, Any]) -> None:
        with self.cond:
            self.lines.append((tone, say, dict(facts)))
            self.cond.notify_all()

    def confirmed(self, event: Event) -> None:
        self.tell("ok", "confirmed", {"event": event.kind, **event.payload})

    def refused(self, reason: str, raw: str) -> None:
        self.tell("refuse", reason, {"raw": raw})

    @property
    def last(self) -> tuple[str, str, dict[str, Any]]:
        return self.lines[-1]

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            return next((f for _t, _s, f in self.lines if f.get("event") == event), None)

        with self.cond:
            assert self.cond.wait_for(lambda: seen() is not None, timeout), self.lines
            found = seen()
        assert found is not None
        return found


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "van-1.db", "van-1") as j:
        yield j


def make_round(journal: Journal, gps: Gps | None = None) -> tuple[DeliveryRound, Screen]:
    screen = Screen()
    return DeliveryRound(journal, screen, van_id="van-1", position=gps or Gps()), screen


def kinds(journal: Journal, after: int = 0) -> list[str]:
    return [e.kind for e in journal.read(after, 10**6)[1]]


def loaded_round(journal: Journal, gps: Gps | None = None) -> tuple[DeliveryRound, Screen]:
    """Manifest 1 applied, P1..P4 loaded, departed."""
    rnd, screen = make_round(journal, gps)
    rnd.apply_manifest(manifest())
    for p in (P1, P2, P3, P4):
        rnd.scan(p)
    rnd.depart()
    return rnd, screen


# --- loading ----------------------------------------------------------------------------------


def test_load_scans_accept_with_shelf_refuse_unknown_and_repeat(journal: Journal) -> None:
    rnd, screen = make_round(journal)
    event = rnd.scan(P1)
    assert event is not None and event.kind == "load_refused"
    assert event.payload == {"parcel": P1, "raw": P1, "reason": "no_manifest"}
    assert screen.last[0] == "refuse"

    applied = rnd.apply_manifest(manifest())
    assert applied is not None and applied.kind == "manifest_applied"
    assert applied.payload == {
        "version": 1,
        "day": DAY,
        "stops": 3,
        "parcels": 4,
        "off_manifest": [],
    }
    assert rnd.phase == "loading"

    event = rnd.scan(P1)
    assert event is not None and event.kind == "parcel_loaded"
    # Reverse stop order: P4 (stop 3) is shelf 1, P3 shelf 2, then P1, P2 of stop 1.
    assert event.payload == {"parcel": P1, "stop": 1, "shelf": 3, "raw": P1}
    tone, say, facts = screen.last
    assert tone == "ok" and "shelf 3" in say and facts["seq"] == event.seq

    event = rnd.scan(P1)
    assert event is not None and event.payload["reason"] == "already_loaded"
    tone, say, _ = screen.last
    assert tone == "repeat" and "already loaded, shelf 3" in say

    event = rnd.scan(STRANGER)
    assert event is not None and event.kind == "load_refused"
    assert event.payload["reason"] == "unknown" and event.payload["parcel"] == STRANGER
    assert screen.last[0] == "refuse"

    event = rnd.scan("RR000000110NL")  # wrong check digit: not a parcel label
    assert event is not None and event.kind == "scan_rejected"
    assert "check digit" in event.payload["reason"] and screen.last[0] == "refuse"


def test_depart_reports_the_parcels_never_loaded(journal: Journal) -> None:
    rnd, screen = make_round(journal)
    with pytest.raises(RoundError) as no_manifest:
        rnd.depart()
    assert no_manifest.value.reason == "no_manifest"
    rnd.apply_manifest(manifest())
    rnd.scan(P1)
    rnd.scan(P4)
    event = rnd.depart()
    assert event.kind == "departed"
    assert event.payload == {"version": 1, "loaded": [P1, P4], "missing": [P2, P3]}
    tone, say, _ = screen.last
    assert tone == "warn" and P2 in say and P3 in say
    assert rnd.phase == "on_route"
    with pytest.raises(RoundError) as again:
        rnd.depart()
    assert again.value.reason == "already_departed"


# --- at the stops -----------------------------------------------------------------------------


def test_stop_scans_refuse_wrong_stop_not_on_van_and_already_done(journal: Journal) -> None:
    rnd, screen = make_round(journal, Gps(Fix(*STOP_1)))
    rnd.apply_manifest(manifest())
    for p in (P1, P3):
        rnd.scan(p)
    rnd.depart()
    arrived = rnd.arrive(1)
    assert arrived.payload["stop"] == 1 and arrived.payload["fix"]["lat"] == STOP_1[0]
    assert screen.last[2]["due"] == [P1]

    event = rnd.scan(P3)
    assert event is not None and event.kind == "stop_scan_refused"
    assert event.payload == {
        "parcel": P3,
        "raw": P3,
        "stop": 1,
        "reason": "not_this_stop",
        "due_stop": 2,
    }
    assert screen.last[0] == "wrong_stop"

    event = rnd.scan(P2)  # on the manifest, never loaded
    assert event is not None and event.payload["reason"] == "not_on_van"
    assert event.payload["due_stop"] == 1 and screen.last[0] == "refuse"

    event = rnd.scan(P1)
    assert event is not None and event.kind == "parcel_scanned_at_stop"
    assert event.payload == {"parcel": P1, "stop": 1, "raw": P1}
    assert screen.last[0] == "ok"

    rnd.deliver(P1, to="recipient", name="A. Jansen")
    event = rnd.scan(P1)
    assert event is not None and event.payload["reason"] == "already_done"
    tones = {line[0] for line in screen.lines}
    assert {"ok", "refuse", "wrong_stop"} <= tones


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"to": "recipient"}, "name_missing"),
        ({"to": "recipient", "name": "   "}, "name_missing"),
        ({"to": "neighbour", "name": "B. de Vries"}, "neighbour_missing"),
        ({"to": "neighbour", "neighbour_address": "Damrak 3"}, "neighbour_missing"),
        ({"to": "safe_place"}, "photo_missing"),
        ({"to": "letterbox", "name": "A. Jansen"}, "bad_to"),
        ({"to": "recipient", "name": "A", "neighbour_address": "Damrak 3"}, "bad_input"),
    ],
)
def test_a_delivery_without_its_proof_is_refused_and_nothing_is_journaled(
    journal: Journal, kwargs: dict[str, Any], reason: str
) -> None:
    rnd, _screen = loaded_round(journal)
    rnd.arrive(1)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as refused:
        rnd.deliver(P1, **kwargs)
    assert refused.value.reason == reason and str(refused.value)
    assert journal.last_seq == before


def test_each_way_of_delivering_is_recorded_with_its_codes(
    journal: Journal, tmp_path: Path
) -> None:
    rnd, _screen = loaded_round(journal)
    rnd.arrive(1)
    rnd.scan(P1)
    rnd.scan(P2)
    neighbour = rnd.deliver(P1, to="neighbour", name="B. de Vries", neighbour_address="Damrak 3")
    assert neighbour.payload["to"] == "neighbour"
    assert neighbour.payload["neighbour_address"] == "Damrak 3"
    assert (neighbour.payload["upu"], neighbour.payload["x12"]) == ("EMI", "D")
    assert neighbour.payload["x12_reason"] == "A3"  # indirect: not into the recipient's hands
    assert {k: neighbour.payload[k] for k in ("signature", "signed_by", "id_check")} == {
        "signature": None,
        "signed_by": None,
        "id_check": None,
    }
    shot = write_doorstep_jpeg(tmp_path / "DCIM" / "IMG_7781.jpg", seed=7781)
    safe = rnd.deliver(P2, to="safe_place", photo=str(shot))
    photo = safe.payload["photo"]
    assert safe.payload["pod"]["photo"] == photo
    assert safe.payload["name"] is None
    # The event names the photo by its hash; the bytes wait in the outbox in the same file.
    (stored,) = journal.query("SELECT sha256, data, content_type FROM photo_outbox")
    assert stored[0] == photo["sha256"] == hashlib.sha256(stored[1]).hexdigest()
    assert stored[2] == photo["type"] == "image/jpeg" and photo["bytes"] == len(stored[1])
    # Downscaled from the app's 1280x720 original to 960 px, under 100 KB, still a JPEG.
    assert (photo["width"], photo["height"]) == (960, 540)
    assert len(stored[1]) <= 100_000 < shot.stat().st_size
    assert bytes(stored[1][:3]) == b"\xff\xd8\xff"


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_an_unusable_photo_refuses_the_outcome_and_stores_nothing(
    journal: Journal, tmp_path: Path, content: bytes | None
) -> None:
    rnd, _screen = loaded_round(journal)
    rnd.arrive(1)
    rnd.scan(P1)
    path = tmp_path / "IMG_1.jpg"
    if content is not None:
        path.write_bytes(content)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as refused:
        rnd.deliver(P1, to="safe_place", photo=str(path))
    assert refused.value.reason == "photo_unusable" and str(path) in str(refused.value)
    assert journal.last_seq == before
    assert journal.query("SELECT count(*) FROM photo_outbox") == [(0,)]


def test_unknown_failure_reason_and_wrong_stop_outcomes_are_refused(journal: Journal) -> None:
    rnd, _screen = loaded_round(journal)
    with pytest.raises(RoundError) as no_stop:
        rnd.fail(P1, "not_at_home")
    assert no_stop.value.reason == "no_stop"
    rnd.arrive(1)
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as bad:
        rnd.fail(P1, "dog_bites")
    assert bad.value.reason == "bad_reason"
    with pytest.raises(RoundError) as elsewhere:
        rnd.deliver(P3, name="C. Bakker")
    assert elsewhere.value.reason == "not_this_stop" and "stop 2" in str(elsewhere.value)
    with pytest.raises(RoundError) as locker_only:
        rnd.drop_at_locker(P1)
    assert locker_only.value.reason == "not_a_locker_stop"
    with pytest.raises(RoundError) as not_loaded:
        rnd.deliver(STRANGER, name="X")
    assert not_loaded.value.reason == "not_on_van"
    assert journal.last_seq == before


def test_pod_carries_the_scan_the_fix_the_distance_and_far(journal: Journal) -> None:
    gps = Gps(Fix(STOP_1[0] + 0.0002, STOP_1[1], accuracy_m=3.5))  # ~22 m north
    rnd, screen = loaded_round(journal, gps)
    rnd.arrive(1)
    scan = rnd.scan(P1)
    assert scan is not None
    near = rnd.deliver(P1, name="A. Jansen").payload["pod"]
    assert near["scan"] == P1 and isinstance(near["scanned_at_ns"], int)
    assert near["fix"] == {
        "lat": STOP_1[0] + 0.0002,
        "lon": STOP_1[1],
        "accuracy_m": 3.5,
        "utc": "10:15:00",
    }
    assert near["no_fix"] is False and near["far"] is False
    assert near["distance_m"] == pytest.approx(22.2, abs=0.5)
    assert isinstance(near["at_ns"], int) and near["photo"] is None
    assert screen.last[0] == "ok"

    gps.fix = None
    blind = rnd.fail(P2, "not_at_home").payload["pod"]
    assert blind["fix"] is None and blind["no_fix"] is True
    assert blind["distance_m"] is None and blind["far"] is False
    assert blind["scan"] is None and blind["scanned_at_ns"] is None  # a failed attempt: allowed
    assert blind["no_scan_reason"] == "not_scanned" and blind["no_fix_reason"] == "no_position"
    tone, say, _ = screen.last
    assert tone == "warn" and "no GNSS fix" in say and "not scanned" in say

    gps.fix = Fix(*STOP_1)  # still at stop 1 while claiming stop 2
    rnd.arrive(2)
    rnd.scan(P3)
    far = rnd.deliver(P3, name="C. Bakker").payload["pod"]
    assert far["far"] is True
    assert far["distance_m"] == pytest.approx(distance_m(*STOP_1, *STOP_2), abs=0.1)
    assert far["distance_m"] > 100


def test_failures_carry_codes_and_count_attempts(journal: Journal) -> None:
    rnd, _screen = loaded_round(journal)
    rnd.arrive(1)
    first = rnd.fail(P1, "not_at_home")
    assert first.kind == "delivery_failed"
    assert {
        k: first.payload[k]
        for k in ("parcel", "stop", "reason", "upu", "x12", "x12_reason", "attempt")
    } == {
        "parcel": P1,
        "stop": 1,
        "reason": "not_at_home",
        "upu": "EMH",
        "x12": "AH",
        "x12_reason": "AQ",
        "attempt": 1,
    }
    assert len(first.payload["card"]) == 9  # nobody home: a card with its code is left
    second = rnd.fail(P1, "refused")
    assert second.payload["attempt"] == 2
    assert (second.payload["x12_reason"], second.payload["card"]) == ("BS", None)
    for reason, codes in FAILURE_REASONS.items():
        assert (codes.upu, codes.x12) == ("EMH", "AH"), reason
    # The door opens after all: a failed parcel can still be delivered at its stop.
    rnd.scan(P1)
    assert rnd.deliver(P1, name="A. Jansen").kind == "parcel_delivered"


def test_redirect_then_drop_at_the_locker_stop(journal: Journal) -> None:
    rnd, screen = loaded_round(journal)
    rnd.arrive(1)
    redirected = rnd.redirect(P2, "locker-1")
    assert redirected.kind == "parcel_redirected"
    assert set(redirected.payload) == {"parcel", "stop", "locker", "pod"}
    with pytest.raises(RoundError):
        rnd.deliver(P2, name="A. Jansen")  # it goes to the locker now
    rnd.arrive(3)
    assert screen.last[2]["due"] == [P2, P4]
    with pytest.raises(RoundError) as not_here:
        rnd.deliver(P4, name="someone")
    assert not_here.value.reason == "locker_stop"
    rnd.scan(P4)
    dropped = rnd.drop_at_locker(P4)
    assert dropped.kind == "parcel_dropped_at_locker"
    assert dropped.payload["locker"] == "locker-1" and dropped.payload["pod"]["scan"] == P4
    assert rnd.drop_at_locker(P2).payload["stop"] == 3


# --- manifest versions ------------------------------------------------------------------------


def test_manifest_versions_only_move_forward_and_other_vans_are_rejected(
    journal: Journal,
) -> None:
    rnd, screen = make_round(journal)
    assert rnd.apply_manifest(manifest(2)) is not None
    seq = journal.last_seq
    assert rnd.apply_manifest(manifest(2)) is None  # retained copy after a reconnect
    assert rnd.apply_manifest(manifest(1)) is None  # stale
    assert journal.last_seq == seq

    wrong = rnd.apply_manifest(manifest(3, van="van-2"))
    assert wrong is not None and wrong.kind == "manifest_rejected"
    assert wrong.payload["reason"] == "wrong_van" and wrong.payload["version"] == 3
    assert wrong.payload["van"] == "van-2"
    assert screen.last[0] == "refuse"
    garbage = rnd.apply_manifest(b'{"v": 1, "version": 4, "van": "van-1"')
    assert garbage is not None and garbage.payload["reason"] == "unreadable"
    assert "version" not in garbage.payload  # the document could not be read at all
    holes = json.loads(manifest(4))
    holes["stops"][1]["stop"] = 7
    bad = rnd.apply_manifest(json.dumps(holes).encode())
    assert bad is not None and bad.payload == {
        "reason": "unreadable",
        "detail": bad.payload["detail"],
        "version": 4,
    }
    seq = journal.last_seq
    assert rnd.apply_manifest(json.dumps(holes).encode()) is None  # rejected once is enough
    assert journal.last_seq == seq
    assert rnd.manifest is not None and rnd.manifest.version == 2


def test_manifest_update_mid_route_keeps_facts_and_reports_parcels_off_it(
    journal: Journal,
) -> None:
    rnd, screen = loaded_round(journal)
    rnd.arrive(1)
    rnd.scan(P1)
    rnd.deliver(P1, name="A. Jansen")
    # Version 2: P3 is no longer this van's; P5 is new, at a new locker stop.
    update = rnd.apply_manifest(manifest(2, stop2=(), extra_locker_stop=(P5,)))
    assert update is not None and update.kind == "manifest_applied"
    assert update.payload == {
        "version": 2,
        "day": DAY,
        "stops": 4,
        "parcels": 4,
        "off_manifest": [P3],
    }
    tone, say, _ = screen.last
    assert tone == "warn" and P3 in say
    assert rnd.current_stop == 1  # stop 1 is still the same place
    status = rnd.status()
    assert status["version"] == 2 and status["stops"] == 4
    assert status["parcels"]["delivered"] == 1 and status["parcels"]["loaded"] == 4
    with pytest.raises(RoundError) as done:
        rnd.deliver(P1, name="A. Jansen")
    assert done.value.reason == "already_done"
    rnd.arrive(2)
    refused = rnd.scan(P3)
    assert refused is not None and refused.payload["reason"] == "not_this_stop"
    assert refused.payload["due_stop"] is None
    rnd.arrive(4)
    assert screen.last[2]["due"] == []  # P5 was never loaded: the depot still has it


def test_renumbered_stops_make_the_courier_arrive_again(journal: Journal) -> None:
    rnd, screen = loaded_round(journal)
    rnd.arrive(2)
    rnd.scan(P3)
    moved = Manifest(
        van="van-1",
        version=2,
        day=DAY,
        stops=(
            Stop(1, *STOP_1, parcels=(P1, P2), address="Damrak 1"),
            Stop(2, *LOCKER_STOP, parcels=(P4,), kind="locker", locker="locker-1"),
            Stop(3, *STOP_2, parcels=(P3,), address="Dam 2"),
        ),
    )
    rnd.apply_manifest(moved.to_json())
    assert rnd.current_stop is None and "arrive" in screen.last[1]
    rnd.arrive(3)
    # The scan was at the visit the renumbering ended: a handover now needs a new one.
    with pytest.raises(InvalidOutcome) as unscanned:
        rnd.deliver(P3, name="C. Bakker")
    assert unscanned.value.reason == "scan_missing"
    rnd.scan(P3)
    assert rnd.deliver(P3, name="C. Bakker").payload["pod"]["scan"] == P3


def test_a_later_days_manifest_waits_until_the_day_is_closed(journal: Journal) -> None:
    rnd, screen = loaded_round(journal)
    tomorrow = manifest(1, day="2026-11-22", stop1=(P5,), stop2=(P1,), locker=())
    assert rnd.apply_manifest(tomorrow) is None
    assert screen.last[0] == "warn" and rnd.manifest is not None and rnd.manifest.day == DAY
    rnd.arrive(1)
    rnd.fail(P1, "not_at_home")
    rnd.close_day()
    assert kinds(journal)[-2:] == ["day_closed", "manifest_applied"]
    assert rnd.manifest is not None and rnd.manifest.day == "2026-11-22"
    assert rnd.phase == "loading"
    rnd.scan(P1)
    rnd.depart()
    rnd.arrive(2)
    assert rnd.fail(P1, "not_at_home").payload["attempt"] == 2  # yesterday's counts


# --- the way back -----------------------------------------------------------------------------


def test_returns_and_the_days_reconciliation(journal: Journal) -> None:
    rnd, screen = make_round(journal)
    rnd.apply_manifest(manifest(stop2=(P3, P5)))
    for p in (P1, P2, P3, P4, P5):
        rnd.scan(p)
    rnd.depart()
    rnd.arrive(1)
    rnd.scan(P1)
    rnd.deliver(P1, name="A. Jansen")
    rnd.redirect(P2, "locker-9")  # a locker not on this round: it comes back
    rnd.arrive(2)
    rnd.fail(P3, "no_access")  # P5 is never attempted
    rnd.arrive(3)
    rnd.drop_at_locker(P4)
    ended = rnd.end_round()
    assert ended.payload == {"on_van": [P2, P3, P5]}
    assert rnd.scan(P2) is not None and screen.last[2]["event"] == "parcel_returned_to_depot"
    assert screen.last[2]["raw"] == P2
    assert rnd.scan(P3) is not None and screen.last[0] == "ok"
    again = rnd.scan(P3)
    assert again is not None and again.kind == "return_refused"
    assert again.payload["reason"] == "already_returned" and screen.last[0] == "repeat"
    gone = rnd.scan(P1)
    assert gone is not None and gone.payload["reason"] == "not_on_van"
    assert screen.last[0] == "refuse"
    closed = rnd.close_day()
    assert closed.payload == {
        "day": DAY,
        "version": 1,
        "delivered": [P1],
        "in_locker": [P4],
        "returned": [P2, P3],
        "unaccounted": [P5],
    }
    tone, say, _ = screen.last
    assert tone == "warn" and "UNACCOUNTED" in say and P5 in say
    assert rnd.phase == "closed"
    late = rnd.apply_manifest(manifest(2))
    assert late is not None and late.payload["reason"] == "day_closed"
    after = rnd.scan(P1)
    assert after is not None and after.payload["reason"] == "no_manifest"


def test_courier_commands_as_documents(journal: Journal) -> None:
    rnd, _screen = make_round(journal, Gps(Fix(*STOP_1)))
    rnd.apply_manifest(manifest())
    rnd.scan(P1)
    assert rnd.courier({"do": "depart"})["missing"] == [P2, P3, P4]
    assert rnd.courier({"do": "arrive", "stop": 1})["event"] == "stop_arrived"
    rnd.scan(P1)
    result = rnd.courier({"do": "deliver", "parcel": P1, "to": "recipient", "name": "A. J."})
    assert result["event"] == "parcel_delivered" and result["pod"]["far"] is False
    assert isinstance(result["seq"], int)
    assert rnd.courier({"do": "status"})["parcels"]["delivered"] == 1
    refusals: list[tuple[dict[str, object], str]] = [
        ({"do": "fly"}, "bad_input"),
        ({"do": "deliver", "parcel": P2, "nmae": "typo"}, "bad_input"),
        ({"do": "fail", "parcel": P2}, "reason_missing"),
        ({"do": "arrive"}, "bad_input"),
        ({"do": "arrive", "stop": 9}, "no_such_stop"),
        ({"do": "deliver", "parcel": P1, "name": "again"}, "already_done"),
        ({"do": "redirect", "parcel": P2, "locker": "locker-1"}, "not_on_van"),
    ]
    for doc, reason in refusals:
        with pytest.raises(RoundError) as refused:
            rnd.courier(doc)
        assert refused.value.reason == reason, doc


# --- restart ----------------------------------------------------------------------------------

_KILLED_MID_STOP = """
import sys, threading
from edge.delivery import DeliveryRound
from sync.journal import Journal

class Quiet:
    def tell(self, tone, say, facts): pass

journal = Journal(sys.argv[1], "van-1")
rnd = DeliveryRound(journal, Quiet(), van_id="van-1", position=lambda: None)
rnd.apply_manifest(open(sys.argv[2], "rb").read())
for p in sys.argv[3:]:
    rnd.scan(p)
rnd.depart()
rnd.arrive(1)
rnd.scan(sys.argv[3])
rnd.fail(sys.argv[4], "not_at_home")
print("mid-stop", flush=True)
threading.Event().wait()
"""


def test_a_van_killed_mid_stop_resumes_its_round(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_bytes(manifest())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_MID_STOP,
            str(tmp_path / "van-1.db"),
            str(tmp_path / "m.json"),
            P1,
            P2,
            P3,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mid-stop", (
            proc.stderr.read() if proc.stderr else ""
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with Journal(tmp_path / "van-1.db", "van-1") as journal:
        rnd, _screen = make_round(journal)
        assert rnd.phase == "on_route" and rnd.current_stop == 1
        assert rnd.manifest is not None and rnd.manifest.version == 1
        status = rnd.status()
        assert status["parcels"]["loaded"] == 3 and status["parcels"]["failed"] == 1
        assert status["due_here"] == [P1, P2]
        # The scan before the kill still proves P1 was in hand at this stop.
        assert rnd.deliver(P1, name="A. Jansen").payload["pod"]["scan"] == P1
        assert rnd.fail(P2, "not_at_home").payload["attempt"] == 2
        assert rnd.apply_manifest(manifest()) is None  # the same version after restart
        rnd.arrive(2)
        rnd.end_round()
        rnd.scan(P2)
        closed = rnd.close_day()
    assert closed.payload["unaccounted"] == [P3] and closed.payload["returned"] == [P2]
    assert IN_LOCKER not in closed.payload["delivered"]


# --- with the broker and the depot ------------------------------------------------------------


def publish_retained(broker: Broker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="depot-test", protocol=mqtt.MQTTv5)
    client.username_pw_set(*broker.depot_credentials)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


class StoredKinds:
    """Wakes the test when the depot has stored an event of a kind (no polling of files)."""

    def __init__(self) -> None:
        self.store: DepotStore | None = None
        self.cond = threading.Condition()

    def __call__(self, device: str, result: IngestResult) -> None:
        with self.cond:
            self.cond.notify_all()

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        assert self.store is not None
        rows = self.store.query("SELECT payload FROM events WHERE kind=? ORDER BY seq", (kind,))
        return [json.loads(str(r[0])) for r in rows]

    def wait_kind(self, kind: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: bool(self.payloads(kind)), timeout), kind
        return self.payloads(kind)


@pytest.fixture
def depot(broker: Broker, tmp_path: Path) -> Iterator[StoredKinds]:
    watch = StoredKinds()
    store = DepotStore(tmp_path / "depot.db")
    watch.store = store
    service = Depot(store, address(broker, "depot"), on_stored=watch)
    service.start()
    assert service.session.wait_connected(10)
    yield watch
    service.stop()
    store.close()


FAST_SYNC = {"ack_timeout_s": 2.0, "keepalive_s": 2, "backoff_min_s": 0.1, "backoff_max_s": 1.0}


def test_a_retained_manifest_reaches_a_van_that_starts_later_and_the_depot_hears_back(
    broker: Broker, depot: StoredKinds, tmp_path: Path
) -> None:
    publish_retained(broker, command_topic("van-1", "manifest"), manifest(3))
    screen = Screen()
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        van = Van(
            VanConfig(
                device_id="van-1",
                journal=tmp_path / "van-1.db",
                scanner_port=str(scanner.path),
                broker=address(broker, "van-1"),
                sync=dict(FAST_SYNC),
                round_enabled=True,
            ),
            screen,
        )
        van.start()
        try:
            applied = screen.wait_for("manifest_applied")
            assert applied["version"] == 3
            at_depot = depot.wait_kind("manifest_applied")
            assert at_depot == [
                {"version": 3, "day": DAY, "stops": 3, "parcels": 4, "off_manifest": []}
            ]
            assert van.scanner_ready.wait(10)
            scanner.scan(P4)
            loaded = screen.wait_for("parcel_loaded")
            assert loaded["shelf"] == 1
            assert van.courier({"do": "depart"})["missing"] == [P1, P2, P3]
            assert depot.wait_kind("departed")[0]["loaded"] == [P4]
        finally:
            van.stop()


def test_the_van_command_takes_courier_lines_on_stdin(broker: Broker, tmp_path: Path) -> None:
    publish_retained(broker, command_topic("van-1", "manifest"), manifest(1))
    (tmp_path / "van.pw").write_text(broker.credentials("van-1")[1])
    config = tmp_path / "van.toml"
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config.write_text(
            f'device_id = "van-1"\njournal = "van-1.db"\n'
            f'[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nport = {broker.port}\npassword_file = "van.pw"\n'
            "[round]\nenabled = true\n"
        )
        van = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "-v", "van", "--config", str(config)],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert van.stdin is not None and van.stdout is not None and van.stderr is not None
        lines = iter(van.stdout.readline, "")
        input_closed = threading.Event()

        def watch_log(stream: Any = van.stderr) -> None:
            for line in stream:
                if "courier input closed" in line:
                    input_closed.set()

        threading.Thread(target=watch_log, daemon=True).start()
        try:
            first = json.loads(next(lines))
            assert first["event"] == "manifest_applied" and first["tone"] == "ok"
            van.stdin.write('{"do": "status"}\nnot json\n{"do": "arrive", "stop": 1}\n')
            van.stdin.flush()
            status = json.loads(next(lines))
            assert status["reply"] == "status" and status["phase"] == "loading"
            assert "not JSON" in json.loads(next(lines))["error"]
            refused = json.loads(next(lines))
            assert refused["reply"] == "arrive" and refused["reason"] == "not_on_route"
            van.stdin.close()  # end of input: the van keeps running
            assert input_closed.wait(20)
            assert van.poll() is None
            van.send_signal(signal.SIGTERM)
            assert van.wait(20) == 0
        finally:
            if van.poll() is None:
                van.kill()
                van.wait(10)


def test_config_turns_the_round_on_and_names_the_gnss_receiver(tmp_path: Path) -> None:
    from edge.van import ConfigError, load_config

    base = (
        'device_id = "van-1"\n[scanner]\nport = "/dev/null"\n[broker]\nport = 1\npassword = "x"\n'
    )
    path = tmp_path / "van.toml"
    path.write_text(base)
    plain = load_config(path)
    assert (plain.round_enabled, plain.gnss_port) == (False, None)
    path.write_text(
        base + '[round]\nenabled = true\n[gnss]\nport = "/dev/ttyUSB1"\nbaudrate = 38400\n'
    )
    on = load_config(path)
    assert (on.round_enabled, on.gnss_port, on.gnss_baudrate) == (True, "/dev/ttyUSB1", 38400)
    for bad in ('[round]\nenabled = "yes"\n', "[round]\nenabeld = true\n", "[gnss]\nbaud = 1\n"):
        path.write_text(base + bad)
        with pytest.raises(ConfigError):
            load_config(path)


def test_a_drop_the_locker_did_not_take_puts_the_parcel_back_on_the_van(journal: Journal) -> None:
    """The courier pressed "dropped" but the locker saw the drop-off abandoned: the depot's next
    version no longer has the parcel at that locker, and the van believes the locker."""
    rnd, screen = loaded_round(journal)
    rnd.arrive(3)
    rnd.scan(P4)
    rnd.drop_at_locker(P4)
    assert rnd.status()["parcels"]["in_locker"] == 1
    # Version 2: P4 at another locker's stop (the depot chose again).
    update = rnd.apply_manifest(manifest(2, locker=(), extra_locker_stop=(P4,)))
    assert update is not None and update.payload["back_on_van"] == [P4]
    tone, say, _ = screen.last
    assert tone == "warn" and "did not take" in say and P4 in say
    status = rnd.status()
    assert status["parcels"]["in_locker"] == 0
    rnd.arrive(4)
    assert screen.last[2]["due"] == [P4]
    assert rnd.drop_at_locker(P4).payload["locker"] == "locker-2"
    # Version 3 keeps it at locker-2: nothing comes back a second time.
    again = rnd.apply_manifest(manifest(3, locker=(), extra_locker_stop=(P4,)))
    assert again is not None and "back_on_van" not in again.payload
    # Version 4 drops it from every stop: kept on the van for the depot.
    last = rnd.apply_manifest(manifest(4, locker=()))
    assert last is not None and last.payload["back_on_van"] == [P4]
    assert last.payload["off_manifest"] == [P4]
