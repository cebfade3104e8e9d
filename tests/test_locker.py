"""The locker end to end against simulated lock boards on a real pseudo-terminal.

A simulated person puts parcels in and takes them out, pushes doors shut, forces them; the
locker only ever learns of it by polling the boards, as a real one does.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.lockboard import BoardConfig, BoardStatus, LockBus
from edge.credentials import StoredCredential, issue_credential, lookup_tag, verify_code, verify_qr
from edge.locker import BADGE_PREFIX, QR_PREFIX, Locker
from edge.locker_config import CompartmentSpec, LockerConfig
from simulators.lockboard import SimulatedLockBoards
from sync.journal import Journal
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    associated_data,
    generate_keypair,
    generate_sealing_keypair,
    load_sealing_key,
    load_signing_key,
    sign_command,
    unseal,
)
from sync.wire import Event

COMPARTMENTS = [
    CompartmentSpec("A1", 0, 0, "S"),
    CompartmentSpec("A2", 0, 1, "S"),
    CompartmentSpec("B1", 0, 2, "M"),
    CompartmentSpec("C1", 0, 3, "L"),
]
LOCK = {c.id: (c.board, c.lock) for c in COMPARTMENTS}
PARCEL = "RB123456785GB"


class Watch:
    """Collects what the locker journals and shows, and wakes the test when it happens."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.shown: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def on_events(self, events: list[Event]) -> None:
        with self.cond:
            self.events.extend(events)
            self.cond.notify_all()

    def show(self, message: str, **facts: Any) -> None:
        with self.cond:
            self.shown.append({"display": message, **facts})
            self.cond.notify_all()

    def kinds(self) -> list[str]:
        with self.cond:
            return [e.kind for e in self.events]

    def wait_event(self, kind: str, timeout: float = 10.0, **match: Any) -> Event:
        def found() -> Event | None:
            for e in self.events:
                if e.kind == kind and all(e.payload.get(k) == v for k, v in match.items()):
                    return e
            return None

        with self.cond:
            assert self.cond.wait_for(lambda: found() is not None, timeout), (
                f"no {kind} {match}; saw {[(e.kind, dict(e.payload)) for e in self.events]}"
            )
            event = found()
        assert event is not None
        return event

    def wait_door_open(self, cid: str, timeout: float = 10.0) -> None:
        self.wait_event("door_unlocked", timeout, compartment=cid)


@dataclass
class Rig:
    boards: SimulatedLockBoards
    locker: Locker
    journal: Journal
    watch: Watch
    sealing_private: Any
    command_private: Any
    config: LockerConfig

    def door_springs_open(self, cid: str) -> None:
        """The person waits until the locker has seen the door open since its last unlock
        (a human takes seconds; a test person must not be faster than the locker's poll)."""

        def opened_since_unlock() -> bool:
            unlocks = [
                e.seq
                for e in self.watch.events
                if e.kind == "door_unlocked" and e.payload["compartment"] == cid
            ]
            return bool(unlocks) and any(
                e.seq > unlocks[-1]
                for e in self.watch.events
                if e.kind == "door_opened" and e.payload["compartment"] == cid
            )

        with self.watch.cond:
            assert self.watch.cond.wait_for(opened_since_unlock, 10), f"{cid} never opened"

    def person_puts_parcel_and_closes(self, cid: str) -> None:
        board, lock = LOCK[cid]
        self.door_springs_open(cid)
        self.boards.put_parcel(board, lock)
        self.boards.close_door(board, lock)

    def person_takes_parcel_and_closes(self, cid: str) -> None:
        board, lock = LOCK[cid]
        self.door_springs_open(cid)
        self.boards.take_parcel(board, lock)
        self.boards.close_door(board, lock)

    def courier_drops(self, parcel: str = PARCEL) -> tuple[str, dict[str, str]]:
        """A courier deposits a parcel; returns its compartment and the customer's secrets."""
        self.locker.scan(BADGE_PREFIX + "C42")
        self.locker.scan(parcel, "]C0")
        unlocked = self.watch.wait_event("door_unlocked", parcel=parcel, purpose="dropoff")
        cid = str(unlocked.payload["compartment"])
        self.person_puts_parcel_and_closes(cid)
        deposited = self.watch.wait_event("parcel_deposited", parcel=parcel)
        sealed = str(deposited.payload["credential_for_depot"])
        secrets = json.loads(
            unseal(
                load_sealing_key(self.sealing_private),
                sealed,
                associated_data(PICKUP_CREDENTIAL_PURPOSE, "locker-1", parcel),
            )
        )
        return cid, secrets


def make_rig(
    tmp_path: Path, *, sim_boards: int = 1, bus_type: type[LockBus] = LockBus, **overrides: Any
) -> Rig:
    sealing_private, sealing_public = generate_sealing_keypair()
    command_private, command_public = generate_keypair()
    boards = SimulatedLockBoards(sim_boards, link=tmp_path / "bus.tty")
    settings: dict[str, Any] = {
        "device_id": "locker-1",
        "journal": tmp_path / "locker.db",
        "lockboard_port": str(boards.path),
        "boards": [BoardConfig(0)],
        "compartments": COMPARTMENTS,
        "hold_s": 3600.0,
        "door_open_alarm_s": 1.0,
        "jam_timeout_s": 0.6,
        "poll_interval_s": 0.05,
        "courier_badges": frozenset({"C42"}),
        "depot_sealing_key": sealing_public,
        "command_keys": [command_public],
    }
    settings.update(overrides)
    config = LockerConfig(**settings)
    journal = Journal(config.journal, config.device_id)
    watch = Watch()
    journal.add_listener(watch.on_events)
    bus = bus_type(config.lockboard_port, config.boards)
    bus.open()
    locker = Locker(config, journal, bus, watch)
    locker.start()
    return Rig(boards, locker, journal, watch, sealing_private, command_private, config)


def close_rig(rig: Rig) -> None:
    rig.locker.stop()
    rig.locker.bus.close()
    rig.journal.close()
    rig.boards.close()


def power_cut_and_restart(rig: Rig, in_the_dark: Callable[[], None] = lambda: None) -> Rig:
    """The controller stops dead (no goodbye), `in_the_dark` happens, and a new locker
    process starts on the same journal and the same boards."""
    rig.locker.stop()
    rig.locker.bus.close()
    rig.journal.close()
    in_the_dark()
    journal = Journal(rig.config.journal, rig.config.device_id)
    watch = Watch()
    journal.add_listener(watch.on_events)
    bus = LockBus(rig.config.lockboard_port, rig.config.boards)
    bus.open()
    locker = Locker(rig.config, journal, bus, watch)
    locker.start()
    return Rig(
        rig.boards, locker, journal, watch, rig.sealing_private, rig.command_private, rig.config
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    close_rig(r)


def test_dropoff_then_pickup_by_code(rig: Rig) -> None:
    cid, secrets = rig.courier_drops()
    assert cid == "A1"  # the smallest free compartment
    assert len(secrets["code"]) == 6 and secrets["qr"].startswith(QR_PREFIX)
    record = json.dumps([dict(e.payload) for e in rig.watch.events])
    assert secrets["code"] not in record and secrets["qr"] not in record  # sealed, not plain
    rig.locker.key(secrets["code"])
    rig.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
    rig.person_takes_parcel_and_closes(cid)
    rig.watch.wait_event("parcel_picked_up", parcel=PARCEL, compartment=cid)


def test_pickup_by_qr_and_closing_with_the_parcel_still_inside(rig: Rig) -> None:
    cid, secrets = rig.courier_drops()
    rig.locker.scan(secrets["qr"], "]Q1")
    rig.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
    rig.door_springs_open(cid)
    rig.boards.close_door(*LOCK[cid])  # changed their mind: parcel still inside
    rig.watch.wait_event("pickup_incomplete", parcel=PARCEL)
    rig.locker.key(secrets["code"])  # the credential is still valid
    rig.watch.wait_event("pickup_attempt", ok=True, method="code")


def test_five_wrong_codes_lock_the_keypad(rig: Rig) -> None:
    _cid, secrets = rig.courier_drops()
    wrong = "000000" if secrets["code"] != "000000" else "111111"
    for _ in range(5):
        rig.locker.key(wrong)
    rig.watch.wait_event("keypad_locked")
    rig.locker.key(secrets["code"])  # even the right code waits out the lockout
    refused = rig.watch.wait_event("pickup_attempt", reason="keypad locked")
    assert refused.payload["ok"] is False
    attempts = [e for e in rig.watch.events if e.kind == "pickup_attempt"]
    assert len(attempts) == 6 and sum(e.payload["ok"] for e in attempts) == 0
    assert "door_unlocked" not in [
        e.kind for e in rig.watch.events if e.payload.get("purpose") == "pickup"
    ]


def test_jammed_lock_during_dropoff_opens_another_compartment(rig: Rig) -> None:
    rig.boards.jam(*LOCK["A1"])
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan(PARCEL, "]C0")
    rig.watch.wait_event("alarm", alarm="lock_jammed", compartment="A1")
    rig.watch.wait_event("door_unlocked", compartment="A2", purpose="dropoff")
    rig.person_puts_parcel_and_closes("A2")
    rig.watch.wait_event("parcel_deposited", compartment="A2")
    rows = rig.journal.query("SELECT state, out_reason FROM compartments WHERE id='A1'")
    assert rows == [("out_of_service", "jammed")]


def test_doesnt_fit_opens_a_bigger_one(rig: Rig) -> None:
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan(PARCEL, "]C0")
    rig.watch.wait_event("door_unlocked", compartment="A1")
    rig.locker.key("#1")
    rig.watch.wait_event("parcel_does_not_fit", compartment="A1")
    rig.door_springs_open("A1")
    rig.boards.close_door(*LOCK["A1"])  # closed empty
    rig.watch.wait_event("door_unlocked", compartment="B1", purpose="dropoff")
    rig.person_puts_parcel_and_closes("B1")
    rig.watch.wait_event("parcel_deposited", compartment="B1")


def test_invalid_parcel_code_is_refused_without_opening(rig: Rig) -> None:
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan("RB123456786GB", "]C0")
    refused = rig.watch.wait_event("dropoff_refused")
    assert "check digit" in str(refused.payload["reason"])
    assert rig.boards.unlock_count(*LOCK["A1"]) == 0


def test_forced_door_and_door_left_open_raise_alarms(rig: Rig) -> None:
    rig.boards.force_open(*LOCK["C1"])
    rig.watch.wait_event("alarm", alarm="forced_open", compartment="C1")
    rig.watch.wait_event("alarm", alarm="door_left_open", compartment="C1")


def test_item_sensor_contradicting_the_record_raises_an_alarm(rig: Rig) -> None:
    board, lock = LOCK["B1"]
    rig.boards.force_open(board, lock)  # someone pries a free compartment open...
    rig.watch.wait_event("alarm", alarm="forced_open", compartment="B1")
    rig.boards.put_parcel(board, lock)  # ...leaves something inside and shuts it
    rig.boards.close_door(board, lock)
    rig.watch.wait_event("alarm", alarm="item_mismatch", compartment="B1")


def test_board_off_the_bus_is_an_alarm(rig: Rig) -> None:
    rig.boards.set_offline(0, True)
    rig.watch.wait_event("alarm", alarm="board_offline", board=0)
    rig.boards.set_offline(0, False)
    rig.watch.wait_event("board_back_online", board=0)


def test_hold_expiry_and_courier_collecting_returns(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, hold_s=0.5)
    try:
        cid, _ = rig.courier_drops()
        rig.watch.wait_event("hold_expired", parcel=PARCEL)
        rig.locker.scan(BADGE_PREFIX + "C42")
        rig.locker.key("#2")
        rig.watch.wait_event("door_unlocked", compartment=cid, purpose="return")
        rig.person_takes_parcel_and_closes(cid)
        rig.watch.wait_event("parcel_returned", parcel=PARCEL)
    finally:
        close_rig(rig)


def _command(
    rig: Rig,
    action: str,
    args: dict[str, Any],
    *,
    ttl_s: float = 60.0,
    now: float | None = None,
    target: str = "locker-1",
) -> bytes:
    return sign_command(
        load_signing_key(rig.command_private),
        target=target,
        action=action,
        args=args,
        ttl_s=ttl_s,
        now=time.time() if now is None else now,
    )


def test_signed_commands_are_obeyed_and_bad_ones_refused(rig: Rig) -> None:
    good = _command(rig, "reserve", {"parcel": PARCEL, "size": "M"})
    rig.locker.command("reserve", good)
    accepted = rig.watch.wait_event("command_accepted", action="reserve")
    assert accepted.payload["compartment"] == "B1"
    rig.locker.command("reserve", good)  # the same command again
    rig.watch.wait_event("command_refused", reason="replayed")
    rig.locker.command(
        "open", _command(rig, "remote_open", {"compartment": "C1"}, now=time.time() - 3600)
    )
    rig.watch.wait_event("command_refused", reason="expired")
    other = _command(rig, "remote_open", {"compartment": "C1"}, target="locker-2")
    rig.locker.command("open", other)
    rig.watch.wait_event("command_refused", reason="wrong_target")
    tampered = json.loads(_command(rig, "remote_open", {"compartment": "A1"}))
    tampered["args"]["compartment"] = "C1"
    rig.locker.command("open", json.dumps(tampered).encode())
    rig.watch.wait_event("command_refused", reason="bad_signature")
    rig.locker.command("open", b'{"action":"remote_open","args":{"compartment":"C1"}}')
    rig.watch.wait_event("command_refused")
    assert rig.boards.unlock_count(*LOCK["C1"]) == 0
    # The reserved compartment is the one a drop-off of that parcel opens.
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan(PARCEL, "]C0")
    rig.watch.wait_event("door_unlocked", compartment="B1", purpose="dropoff")


def test_power_cut_between_unlock_and_door_close(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.locker.scan(BADGE_PREFIX + "C42")
    rig.locker.scan(PARCEL, "]C0")
    rig.watch.wait_event("door_unlocked", compartment="A1")
    board, lock = LOCK["A1"]
    assert rig.boards.wait_until(lambda: rig.boards.door_open(board, lock), 10)

    def courier_finishes() -> None:
        rig.boards.put_parcel(board, lock)
        rig.boards.close_door(board, lock)

    after = power_cut_and_restart(rig, courier_finishes)
    try:
        deposited = after.watch.wait_event("parcel_deposited", parcel=PARCEL, compartment="A1")
        assert deposited.payload["credential_for_depot"]
        count = after.journal.query("SELECT count(*) FROM events WHERE kind='parcel_deposited'")
        assert count == [(1,)]  # one credential, issued once
    finally:
        close_rig(after)


def test_a_door_used_and_shut_between_two_polls_still_counts(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, poll_interval_s=0.4, jam_timeout_s=3.0)
    try:
        rig.locker.scan(BADGE_PREFIX + "C42")
        rig.locker.scan(PARCEL, "]C0")
        rig.watch.wait_event("door_unlocked", compartment="A1")
        board, lock = LOCK["A1"]
        assert rig.boards.wait_until(lambda: rig.boards.door_open(board, lock), 10)
        rig.boards.put_parcel(board, lock)  # quicker than the locker looks
        rig.boards.close_door(board, lock)
        rig.watch.wait_event("parcel_deposited", parcel=PARCEL, compartment="A1")
        assert "lock_jammed" not in [e.payload.get("alarm") for e in rig.watch.events]
    finally:
        close_rig(rig)


def test_a_keypad_lockout_survives_a_restart(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    _cid, secrets = rig.courier_drops()
    wrong = "000000" if secrets["code"] != "000000" else "111111"
    for _ in range(5):
        rig.locker.key(wrong)
    rig.watch.wait_event("keypad_locked")
    after = power_cut_and_restart(rig)
    try:
        after.locker.key(secrets["code"])
        refused = after.watch.wait_event("pickup_attempt")
        assert refused.payload == {"method": "code", "ok": False, "reason": "keypad locked"}
    finally:
        close_rig(after)


def test_a_damaged_credential_opens_nothing_and_the_attempt_still_counts(rig: Rig) -> None:
    _cid, secrets = rig.courier_drops()
    other = sqlite3.connect(rig.config.journal)
    with other:
        other.execute("UPDATE parcels SET credential='{\"broken\": true}'")
    other.close()
    rig.locker.key(secrets["code"])
    attempt = rig.watch.wait_event("pickup_attempt")
    assert attempt.payload["ok"] is False
    unlocks = [e for e in rig.watch.events if e.kind == "door_unlocked"]
    assert [e.payload["purpose"] for e in unlocks] == ["dropoff"]


def test_a_repeated_reservation_holds_one_compartment(rig: Rig) -> None:
    for _ in range(2):  # a depot retry: same parcel, new command id
        rig.locker.command("reserve", _command(rig, "reserve", {"parcel": PARCEL}))
    with rig.watch.cond:
        assert rig.watch.cond.wait_for(
            lambda: len([e for e in rig.watch.events if e.kind == "command_accepted"]) == 2, 10
        )
    reserved = rig.journal.query("SELECT id FROM compartments WHERE state='reserved'")
    assert reserved == [("A1",)]


def test_guessing_courier_badges_is_throttled(rig: Rig) -> None:
    for i in range(5):
        rig.locker.scan(f"{BADGE_PREFIX}X{i}")
    rig.watch.wait_event("alarm", alarm="badge_guessing")
    rig.locker.scan(BADGE_PREFIX + "C42")  # even the right badge waits out the lockout
    rig.watch.wait_event("courier_refused", reason="courier login locked")
    assert "courier_identified" not in rig.watch.kinds()


def test_a_board_off_the_bus_is_not_chosen_for_a_dropoff(tmp_path: Path) -> None:
    rig = make_rig(
        tmp_path,
        sim_boards=2,
        boards=[BoardConfig(0), BoardConfig(1)],
        compartments=[*COMPARTMENTS, CompartmentSpec("D1", 1, 0, "L")],
    )
    try:
        rig.boards.set_offline(0, True)
        rig.watch.wait_event("alarm", alarm="board_offline", board=0)
        rig.locker.scan(BADGE_PREFIX + "C42")
        rig.locker.scan(PARCEL, "]C0")
        rig.watch.wait_event("door_unlocked", compartment="D1", purpose="dropoff")
        assert "lock_jammed" not in [e.payload.get("alarm") for e in rig.watch.events]
    finally:
        close_rig(rig)


# --- a code's way to the door ---------------------------------------------------------------


class WatchedBus(LockBus):
    """The real driver on the real pty, noting in order every board asked and lock pulsed.

    It waits up to a second for a reply, so that a board made slow still answers in time."""

    def __init__(self, port: str, boards: Sequence[BoardConfig]) -> None:
        super().__init__(port, boards, reply_timeout_s=1.0)
        self.calls: list[tuple[str, int]] = []
        self.cond = threading.Condition()

    def _note(self, call: str, board: int) -> None:
        with self.cond:
            self.calls.append((call, board))
            self.cond.notify_all()

    def status(self, board: int) -> BoardStatus:
        self._note("status", board)
        return super().status(board)

    def unlock(self, board: int, lock: int) -> None:
        self._note("unlock", board)
        super().unlock(board, lock)


def test_a_code_is_served_between_two_boards_of_a_poll_round(tmp_path: Path) -> None:
    """A person at the keypad waits for the board being asked, not for the whole round (13
    boards take ~150 ms): the code's unlock goes out before the round's next board is asked."""
    rig = make_rig(
        tmp_path, sim_boards=3, boards=[BoardConfig(b) for b in range(3)], bus_type=WatchedBus
    )
    bus = rig.locker.bus
    assert isinstance(bus, WatchedBus)
    try:
        cid, secrets = rig.courier_drops()
        rig.boards.slow(1, 0.5)  # the middle board answers late: a round stays half done
        with bus.cond:
            start = len(bus.calls)
            assert bus.cond.wait_for(lambda: ("status", 1) in bus.calls[start:], 10)
            asked = start + bus.calls[start:].index(("status", 1))
            rig.locker.key(secrets["code"])  # while board 1 is being asked
        rig.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
        with bus.cond:
            assert bus.cond.wait_for(lambda: len(bus.calls) >= asked + 3, 10)
            assert bus.calls[asked : asked + 3] == [("status", 1), ("unlock", 0), ("status", 2)]
        rig.person_takes_parcel_and_closes(cid)
        rig.watch.wait_event("parcel_picked_up", parcel=PARCEL)
    finally:
        close_rig(rig)


def test_a_typed_code_costs_one_scrypt_made_before_it_is_queued(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One memory-hard hash per code whatever is stored, made on the keypad's thread, so it
    overlaps the board the controller is asking instead of following it."""
    cid, secrets = rig.courier_drops()
    hashed_on: list[str] = []
    real = hashlib.scrypt

    def noted(*args: Any, **kwargs: Any) -> bytes:
        hashed_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", noted)
    rig.locker.key(secrets["code"])
    rig.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
    assert hashed_on == [threading.current_thread().name]


def test_a_credential_is_stored_under_the_locker_salt_in_its_old_form(rig: Rig) -> None:
    """Its hashes are the locker's lookup tags (one scrypt per pickup), in the version-1
    record that the previous software checks too: a locker rolled back still opens it."""
    _cid, secrets = rig.courier_drops()
    ((salt_hex,),) = rig.journal.query("SELECT value FROM locker_meta WHERE key='lookup_salt'")
    ((record, code_tag, qr_tag),) = rig.journal.query(
        "SELECT credential, code_tag, qr_tag FROM parcels WHERE parcel=?", (PARCEL,)
    )
    assert secrets["code"] not in record and secrets["qr"] not in record
    stored = StoredCredential.from_record(json.loads(record))
    assert stored.salt == bytes.fromhex(salt_hex)
    assert (stored.code_hash.hex(), stored.qr_hash.hex()) == (code_tag, qr_tag)
    assert verify_code(stored, secrets["code"])
    assert verify_qr(stored, secrets["qr"].removeprefix(QR_PREFIX))


@pytest.mark.parametrize("method", ["code", "qr"])
def test_a_parcel_an_older_locker_stored_still_opens(tmp_path: Path, method: str) -> None:
    """Before, a credential had a salt of its own, found by its tag under the locker's salt
    and then checked against its own hash: a locker updated with such parcels inside still
    opens them, for the right code or token only."""
    rig = make_rig(tmp_path)
    cid, _ = rig.courier_drops()
    older = issue_credential()  # a salt of its own, as the previous version issued them

    def stored_by_the_previous_version() -> None:
        db = sqlite3.connect(rig.config.journal)
        try:
            with db:
                ((salt_hex,),) = db.execute(
                    "SELECT value FROM locker_meta WHERE key='lookup_salt'"
                ).fetchall()
                salt = bytes.fromhex(salt_hex)
                db.execute(
                    "UPDATE parcels SET credential=?, code_tag=?, qr_tag=? WHERE parcel=?",
                    (
                        json.dumps(older.stored.to_record()),
                        lookup_tag(older.code, salt, is_code=True),
                        lookup_tag(older.qr_token, salt, is_code=False),
                        PARCEL,
                    ),
                )
        finally:
            db.close()

    after = power_cut_and_restart(rig, stored_by_the_previous_version)
    try:
        if method == "code":
            after.locker.key(f"{(int(older.code) + 1) % 10**6:06d}")
            assert after.watch.wait_event("pickup_attempt").payload["ok"] is False
            after.locker.key(older.code)
        else:
            after.locker.scan(QR_PREFIX + older.qr_token + "A", "]Q1")
            assert after.watch.wait_event("pickup_attempt").payload["ok"] is False
            after.locker.scan(QR_PREFIX + older.qr_token, "]Q1")
        after.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
        after.person_takes_parcel_and_closes(cid)
        after.watch.wait_event("parcel_picked_up", parcel=PARCEL, compartment=cid)
    finally:
        close_rig(after)
