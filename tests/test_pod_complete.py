"""Proof of delivery without holes: every proof has the scan or the courier's reason for none,
and a fix or the reason for none.

The short simulated days run the whole product (van processes' code on pseudo-terminals, a
real broker, the depot) and read the proofs back from what the depot stored. The unit tests
pin the paths that used to leave a hole: a handover typed without a scan (a torn label), and
a position source that answers "no fix" without saying why.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.gnss import Fix as GnssFix
from drivers.gnss import GnssReader
from edge.delivery import (
    NO_SCAN_REASONS,
    DeliveryRound,
    InvalidOutcome,
    NoFix,
    Position,
    RoundError,
)
from edge.van import JsonLinesFeedback, Van, VanConfig
from parcel.identify import s10_check_digit
from parcel.manifest import Manifest, Stop
from simulators.day import DayPlan, run_day
from sync.journal import Journal
from sync.mqtt import BrokerAddress

DAY = "2026-11-21"
STOP_1 = (52.3702, 4.8952)
WAIT_S = 10.0  # bound on anything a reader thread does; a passing run takes milliseconds


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


P1, P2, P3 = (s10(n) for n in (101, 202, 303))


# --- the invariant, as the depot stores it ---------------------------------------------------


def assert_complete(pod: Mapping[str, Any], where: str) -> None:
    """One delivered parcel's proof: the scan xor the courier's reason, a fix xor its reason."""
    scan, why_no_scan = pod.get("scan"), pod.get("no_scan_reason")
    if scan is not None:
        assert isinstance(scan, str) and scan, where
        assert isinstance(pod.get("scanned_at_ns"), int) and why_no_scan is None, where
    else:
        assert why_no_scan in NO_SCAN_REASONS, where  # the courier's reason, not the van's
    fix, why_no_fix = pod.get("fix"), pod.get("no_fix_reason")
    if fix is not None:
        assert math.isfinite(fix["lat"]) and math.isfinite(fix["lon"]), where
        assert pod.get("no_fix") is False and why_no_fix is None, where
    else:
        assert pod.get("no_fix") is True, where
        assert isinstance(why_no_fix, str) and why_no_fix, where


@pytest.mark.slow
def test_every_delivered_parcel_has_a_complete_proof_in_several_simulated_days() -> None:
    # Seeds whose days have both holes to fill: a torn label at a door, and a stop in a
    # tunnel (the receiver says it has no sky). About 11 s each.
    seen_no_scan: list[str] = []
    seen_no_fix: list[str] = []
    for seed in (1, 7, 8):
        pods: list[dict[str, Any]] = []

        def keep(_report: dict[str, Any], depot: Any, into: list[dict[str, Any]] = pods) -> None:
            rows = depot.store.query("SELECT payload FROM events WHERE kind='parcel_delivered'")
            into.extend(json.loads(str(payload))["pod"] for (payload,) in rows)

        plan = DayPlan(
            vans=1, lockers=1, parcels_per_van=30, days=1, speed=8000, seed=seed, locker_hold_h=72
        )
        report = run_day(plan, linger=keep)
        assert report["ok"] is True, f"seed {seed}"
        assert len(pods) >= 15, f"seed {seed}: {len(pods)} deliveries"
        for i, pod in enumerate(pods):
            assert_complete(pod, f"seed {seed}, delivery {i}: {pod}")
        assert report["pod_complete_rate"] == 1.0, f"seed {seed}"
        seen_no_scan += [p["no_scan_reason"] for p in pods if p["scan"] is None]
        seen_no_fix += [p["no_fix_reason"] for p in pods if p["fix"] is None]
    # The days did go through both paths, each with the reason the world gave.
    assert seen_no_scan and set(seen_no_scan) == {"label_unreadable"}
    assert seen_no_fix and set(seen_no_fix) == {"no_signal"}


# --- the round: a handover typed without a scan ------------------------------------------------


@dataclass(frozen=True)
class At:
    lat: float
    lon: float
    accuracy_m: float | None = 4.0
    utc: str = "10:15:00"


class Screen:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def tell(self, tone: str, say: str, facts: Mapping[str, Any]) -> None:
        self.lines.append((tone, say, dict(facts)))


def manifest() -> bytes:
    stops = (
        Stop(1, *STOP_1, parcels=(P1, P2, P3), address="Damrak 1", recipient="A. Jansen"),
        Stop(2, 52.36, 4.88, parcels=(), kind="locker", locker="locker-1"),
    )
    return Manifest(van="van-1", version=1, day=DAY, stops=stops).to_json()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "van-1.db", "van-1") as j:
        yield j


def at_the_door(
    journal: Journal, position: Callable[[], Position | NoFix | None]
) -> tuple[DeliveryRound, Screen]:
    screen = Screen()
    rnd = DeliveryRound(journal, screen, van_id="van-1", position=position)
    rnd.apply_manifest(manifest())
    for p in (P1, P2, P3):
        rnd.scan(p)
    rnd.depart()
    rnd.arrive(1)
    return rnd, screen


def test_a_handover_without_a_scan_needs_the_couriers_reason(journal: Journal) -> None:
    rnd, screen = at_the_door(journal, lambda: At(*STOP_1))
    before = journal.last_seq
    with pytest.raises(InvalidOutcome) as unscanned:
        rnd.deliver(P1, name="A. Jansen")  # typed, never scanned at this visit
    assert unscanned.value.reason == "scan_missing" and "no_scan" in str(unscanned.value)
    with pytest.raises(InvalidOutcome) as made_up:
        rnd.deliver(P1, name="A. Jansen", no_scan="in a hurry")
    assert made_up.value.reason == "bad_no_scan"
    assert journal.last_seq == before  # nothing recorded either time

    torn = rnd.deliver(P1, name="A. Jansen", no_scan="label_unreadable").payload["pod"]
    assert (torn["scan"], torn["scanned_at_ns"]) == (None, None)
    assert torn["no_scan_reason"] == "label_unreadable"
    assert torn["fix"]["lat"] == STOP_1[0] and torn["no_fix_reason"] is None
    tone, say, _ = screen.lines[-1]
    assert tone == "warn" and "not scanned here (label unreadable)" in say

    # A scan at this visit is the proof; a reason given as well is not kept beside it.
    rnd.scan(P2)
    scanned = rnd.deliver(P2, name="A. Jansen", no_scan="label_missing").payload["pod"]
    assert scanned["scan"] == P2 and scanned["no_scan_reason"] is None


def test_the_couriers_reason_comes_as_a_document_field_and_other_outcomes_need_none(
    journal: Journal,
) -> None:
    rnd, _screen = at_the_door(journal, lambda: At(*STOP_1))
    reply = rnd.courier(
        {"do": "deliver", "parcel": P1, "name": "A. Jansen", "no_scan": "scanner_fault"}
    )
    assert reply["event"] == "parcel_delivered"
    assert reply["pod"]["no_scan_reason"] == "scanner_fault"
    with pytest.raises(RoundError) as typo:
        rnd.courier({"do": "deliver", "parcel": P2, "name": "A. Jansen", "noscan": "x"})
    assert typo.value.reason == "bad_input"
    # Nobody home: nothing is handed over, so no scan is asked for, and the van says so.
    failed = rnd.courier({"do": "fail", "parcel": P2, "reason": "not_at_home"})
    assert failed["pod"]["scan"] is None and failed["pod"]["no_scan_reason"] == "not_scanned"
    redirected = rnd.courier(
        {"do": "redirect", "parcel": P3, "locker": "locker-1", "no_scan": "label_missing"}
    )
    assert redirected["pod"]["no_scan_reason"] == "label_missing"


# --- the round: a position source that has no fix ----------------------------------------------


def _raises() -> Position | NoFix | None:
    raise OSError("receiver gone")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (lambda: At(*STOP_1), None),
        (lambda: NoFix("no_signal"), "no_signal"),
        (lambda: None, "no_position"),
        (lambda: At(math.nan, STOP_1[1]), "bad_position"),
        (_raises, "position_error"),
    ],
    ids=["fix", "receiver_reason", "none", "nan", "raises"],
)
def test_every_proof_has_the_fix_or_the_reason_whatever_the_source_answers(
    journal: Journal, source: Callable[[], Position | NoFix | None], reason: str | None
) -> None:
    rnd, screen = at_the_door(journal, source)
    rnd.scan(P1)
    pod = rnd.deliver(P1, name="A. Jansen").payload["pod"]
    assert pod["no_fix_reason"] == reason
    assert pod["no_fix"] is (reason is not None)
    assert (pod["fix"] is None) is (reason is not None)
    if reason is not None:
        assert f"no GNSS fix ({reason.replace('_', ' ')})" in screen.lines[-1][1]


def test_a_van_without_a_receiver_says_so_in_its_proofs(tmp_path: Path) -> None:
    config = VanConfig(
        device_id="van-1",
        journal=tmp_path / "van-1.db",
        scanner_port=str(tmp_path / "no-scanner"),  # never started: nothing is opened
        broker=BrokerAddress("127.0.0.1", 1, "van-1", "unused"),
        round_enabled=True,
    )
    van = Van(config, JsonLinesFeedback(io.StringIO()))
    try:
        assert van.round is not None
        van.round.apply_manifest(manifest())
        van.round.scan(P1)
        van.courier({"do": "depart"})
        van.courier({"do": "arrive", "stop": 1})
        van.round.scan(P1)
        reply = van.courier({"do": "deliver", "parcel": P1, "name": "A. Jansen"})
        assert reply["pod"]["fix"] is None and reply["pod"]["no_fix_reason"] == "no_receiver"
    finally:
        van.journal.close()


# --- the receiver: why it has no fix ----------------------------------------------------------


def nmea(body: str) -> bytes:
    """A sentence with its checksum computed here, independently of the driver."""
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def epoch(t: str, fix: bool) -> bytes:
    pos = "5222.212,N,00453.712,E" if fix else ",,,"
    rmc = f"GNRMC,{t},{'A' if fix else 'V'},{pos},0.0,0.0,211126,,,{'A' if fix else 'N'}"
    gga = f"GNGGA,{t},{pos},{1 if fix else 0},08,0.9,2.0,M,46.9,M,,"
    return nmea(rmc) + nmea(gga)


def until(what: str, answer: Callable[[], object], expected: object) -> None:
    """Wait (bounded, with short sleeps) until the reader's answer is `expected`."""
    deadline = time.monotonic() + WAIT_S
    while (got := answer()) != expected:
        assert time.monotonic() < deadline, f"waiting for {what}: still {got!r}"
        time.sleep(0.01)


def test_the_receiver_says_why_it_has_no_fix() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    connected = threading.Event()
    reader = GnssReader(
        path, on_connection=lambda up: connected.set() if up else None, stale_after_s=60.0
    )
    try:
        assert reader.fix_or_reason() == "receiver_disconnected"  # not started: no port open
        reader.start()
        assert connected.wait(WAIT_S)
        assert reader.fix_or_reason() == "receiver_silent"  # open, but not a sentence yet
        os.write(master, epoch("101500.00", fix=False))
        until("the no-fix epoch", reader.fix_or_reason, "no_signal")
        os.write(master, epoch("101501.00", fix=True))
        fix = reader.wait_for_fix(WAIT_S)
        assert isinstance(fix, GnssFix) and reader.fix_or_reason() == fix
        assert reader.current() == fix  # the old question gets the same answer
        os.write(master, epoch("101502.00", fix=False))  # into the tunnel: never the old fix
        until("the fix to be withdrawn", reader.fix_or_reason, "no_signal")
        os.close(master)  # the cable is pulled
        master = -1
        until("the unplug", reader.fix_or_reason, "receiver_disconnected")
    finally:
        reader.stop()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
