"""`bench chaos`: a fleet of real device processes under every kind of fault loses nothing
silently and stores nothing twice; and the harness's faults are what they say they are."""

from __future__ import annotations

import json
import select
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench.chaos import (
    CENTRAL_KINDS,
    DAMAGES,
    FAKED_CLOCK_PRELUDE,
    JUMP_S,
    KINDS,
    SHM_DIR,
    damage_journal,
    faked_clock_env,
    find_libfaketime,
    plan_faults,
    write_clock_offset,
)
from sync.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ["van-1", "van-2", "van-3", "locker-1"]


def test_a_short_chaos_run_accounts_for_every_confirmed_fact(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "chaos", "--faults", "50", "--seed", "11",
         "--baseline-s", "3", "--drain-timeout-s", "90", "--json", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert r["faults_injected"] == 50
    assert set(r["faults"]) == set(KINDS), (r["faults"], r["left_out"])
    assert set(r["damage"]) == set(DAMAGES), r["damage"]
    # Both directions of a clock step were made, and the depot holds facts stamped by them.
    assert r["clock_steps"]["forward"] >= 1 and r["clock_steps"]["backward"] >= 1
    assert sum(r["events_stamped_off_clock"].values()) > 0
    assert r["baseline"]["events_stamped_off_clock"] == {"ahead": 0, "behind": 0}
    assert r["confirmed"] > 0
    assert r["lost_silently"] == 0, (r["lost_silently_by_fault"], r["lost_silently_examples"])
    assert r["duplicates"] == 0
    # Every confirmed fact is either at the depot or inside a loss the device reported.
    assert r["at_depot"] + r["reported_lost"]["count"] == r["confirmed"]
    assert r["targets_met"]["lost_silently_0"] and r["targets_met"]["duplicates_0"]


def test_the_fault_plan_is_the_seeds_and_covers_every_kind() -> None:
    plan = plan_faults(50, 11, DEVICES)
    assert plan == plan_faults(50, 11, DEVICES)
    assert plan != plan_faults(50, 12, DEVICES)
    assert {f.kind for f in plan} == set(KINDS)
    assert {f.damage for f in plan if f.kind == "journal_damage"} == set(DAMAGES)
    for f in plan:
        assert (f.target in ("depot", "broker")) == (f.kind in CENTRAL_KINDS)
        assert (f.offset_s is not None) == (f.kind == "clock_jump")
    # The coverage-first part holds every kind, every damage and both clock directions.
    first = plan_faults(len(KINDS) - 2 + len(DAMAGES) + 2, 3, DEVICES)
    assert {f.kind for f in first} == set(KINDS)
    assert {f.damage for f in first if f.kind == "journal_damage"} == set(DAMAGES)
    assert {f.offset_s > 0 for f in first if f.offset_s is not None} == {True, False}


def test_clock_steps_are_within_bounds_and_a_backward_one_goes_past_true_time() -> None:
    low, high = JUMP_S
    for seed in range(20):
        clocks = dict.fromkeys(DEVICES, 0)
        for f in plan_faults(300, seed, DEVICES):
            if f.offset_s is None:
                continue
            was, now = clocks[f.target], f.offset_s
            if now > was:  # forwards, from where the clock stood
                assert low <= now - was <= high
            else:  # backwards, from true time or from further back
                assert low <= min(was, 0) - now <= high
                assert now <= -low
            clocks[f.target] = 0 if f.set_back else now


def test_a_plan_without_libfaketime_leaves_clock_jump_out_and_keeps_the_rest() -> None:
    plan = plan_faults(200, 11, DEVICES, left_out={"clock_jump": "no libfaketime"})
    assert {f.kind for f in plan} == set(KINDS) - {"clock_jump"}
    assert all(f.offset_s is None for f in plan)
    assert plan == plan_faults(200, 11, DEVICES, left_out={"clock_jump": "no libfaketime"})


def test_a_faked_clock_steps_the_wall_clock_of_one_process_only(tmp_path: Path) -> None:
    """The device's environment and prelude: a step moves time.time() of that process, not its
    monotonic clock, time.sleep still works, and nothing is left in /dev/shm when it ends."""
    library = find_libfaketime()
    assert library is not None, "libfaketime is not installed: run bash .ci/setup"
    offset = tmp_path / "clock.offset"
    write_clock_offset(offset, 0)
    # Prints wall minus monotonic time; once told the clock was stepped, waits (in time.sleep,
    # at most 20 s) for libfaketime to read the new offset and prints it again.
    probe = FAKED_CLOCK_PRELUDE + """
import sys
base = time.time() - time.monotonic()
print(base, flush=True)
sys.stdin.readline()
start = time.monotonic()
while time.monotonic() - start < 20 and abs(time.time() - time.monotonic() - base) < 3000:
    time.sleep(0.05)
print(time.time() - time.monotonic(), flush=True)
"""
    with subprocess.Popen([sys.executable, "-c", probe],
                          env=faked_clock_env(library, offset), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        before = float(child.stdout.readline())
        write_clock_offset(offset, -7200)
        child.stdin.write("go\n")
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child did not answer"
        after = float(child.stdout.readline())
        assert child.wait(30) == 0
    # Wall minus monotonic moved by the step (give or take a second of scheduling): the wall
    # clock went back two hours, the monotonic clock went on.
    assert abs((after - before) + 7200) < 5, (before, after)
    assert not list(SHM_DIR.glob(f"*faketime*_{child.pid}"))


def test_event_byte_changes_one_digit_of_an_unacknowledged_payload(tmp_path: Path) -> None:
    import random

    path = tmp_path / "van.journal.db"
    with Journal(path, "van-1") as journal:
        journal.append("parcel_scanned", {"parcel": "RA000000014NL", "raw": "RA000000014NL"})
        journal.append("parcel_scanned", {"parcel": "RA000000028NL", "raw": "RA000000028NL"})
        journal.mark_acked(1)
    what = damage_journal(path, "event_byte", random.Random(1), "parcel_scanned")
    assert "unacknowledged event 2" in what
    conn = sqlite3.connect(path)
    try:
        payloads = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM events")]
    finally:
        conn.close()
    assert payloads[0]["parcel"] == "RA000000014NL"  # the acknowledged one is untouched
    assert payloads[1]["parcel"] == "RA100000028NL"  # one digit, nothing else
    assert payloads[1]["raw"] == "RA000000028NL"


def test_journal_missing_and_emptied_leave_what_they_say(tmp_path: Path) -> None:
    import random

    for damage, exists in (("journal_missing", False), ("journal_emptied", True)):
        path = tmp_path / f"{damage}.db"
        with Journal(path, "van-1") as journal:
            journal.append("parcel_scanned", {"parcel": "RA000000014NL"})
        damage_journal(path, damage, random.Random(1), "parcel_scanned")
        assert path.exists() is exists
        assert not exists or path.stat().st_size == 0
        assert not Path(f"{path}-wal").exists()
