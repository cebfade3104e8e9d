"""`bench chaos`: a fleet of real device processes under every kind of fault loses nothing
silently and stores nothing twice; and the harness's faults are what they say they are."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench.chaos import CENTRAL_KINDS, DAMAGES, KINDS, damage_journal, plan_faults
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
    assert set(r["faults"]) == set(KINDS), r["faults"]
    assert set(r["damage"]) == set(DAMAGES), r["damage"]
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
