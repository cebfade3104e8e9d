"""A person's commands at the locker: a remote opening that says who and why, and a jammed
compartment put back in service (`set_in_service`), on simulated lock boards on a real
pseudo-terminal (tests/test_locker.py's rig)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_locker import LOCK, PARCEL, Rig, _command, close_rig, make_rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    close_rig(r)


def test_a_remote_opening_journals_who_asked_and_why(rig: Rig) -> None:
    args = {"compartment": "C1", "by": "kim", "reason": "customer locked out, ticket 42"}
    rig.locker.command("remote_open", _command(rig, "remote_open", args))
    accepted = rig.watch.wait_event("command_accepted", action="remote_open")
    assert accepted.payload["compartment"] == "C1"
    assert (accepted.payload["by"], accepted.payload["reason"]) == (
        "kim", "customer locked out, ticket 42"
    )
    rig.watch.wait_event("door_unlocked", compartment="C1", purpose="remote_open")
    rig.door_springs_open("C1")  # the board was told to unlock it
    assert rig.boards.unlock_count(*LOCK["C1"]) == 1


def test_a_jammed_compartment_is_put_back_in_service_and_used_again(rig: Rig) -> None:
    rig.boards.jam(*LOCK["A1"])
    opened = {"compartment": "A1", "by": "kim", "reason": "check the lock"}
    rig.locker.command("remote_open", _command(rig, "remote_open", opened))
    rig.watch.wait_event("alarm", alarm="lock_jammed", compartment="A1")
    rows = rig.journal.query("SELECT state, out_reason FROM compartments WHERE id='A1'")
    assert rows == [("out_of_service", "jammed")]

    # Not for a compartment in service, and never without a reason.
    fine = {"compartment": "A2", "reason": "just checking", "by": "kim"}
    rig.locker.command("set_in_service", _command(rig, "set_in_service", fine))
    failed = rig.watch.wait_event("command_failed", action="set_in_service")
    assert "in service" in str(failed.payload["reason"])
    bare = _command(rig, "set_in_service", {"compartment": "A1"})
    rig.locker.command("set_in_service", bare)
    rig.watch.wait_event("command_failed", action="set_in_service", id=_id(bare))
    assert rig.journal.query("SELECT state FROM compartments WHERE id='A1'") == [
        ("out_of_service",)
    ]

    rig.boards.unjam(*LOCK["A1"])
    fixed = {"compartment": "A1", "reason": "lock replaced", "by": "sam"}
    rig.locker.command("set_in_service", _command(rig, "set_in_service", fixed))
    back = rig.watch.wait_event("compartment_in_service", compartment="A1")
    assert dict(back.payload) == {
        "compartment": "A1", "state": "free", "was": "jammed", "by": "sam",
        "reason": "lock replaced",
    }
    rig.watch.wait_event("command_accepted", action="set_in_service", compartment="A1")
    assert rig.journal.query("SELECT state, out_reason FROM compartments WHERE id='A1'") == [
        ("free", None)
    ]
    cid, _ = rig.courier_drops(PARCEL)  # the smallest free compartment is A1 again
    assert cid == "A1"


def _id(payload: bytes) -> str:
    return str(json.loads(payload)["id"])
