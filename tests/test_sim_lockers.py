"""`lastmile sim` with a parcel locker: failed door attempts end in a locker, customers collect
them with the code the depot opened, faults raise their alarms, nothing is lost on the way.

The locker is the real locker software on simulated lock boards; the figures are counted from
the events the depot stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def simulated_day(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "sim", "--json", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("seed", ["3", "8"])
def test_a_day_with_a_locker(seed: str) -> None:
    report = simulated_day("--vans", "1", "--lockers", "1", "--parcels", "30", "--seed", seed)
    assert (report["events_lost"], report["duplicates"], report["gaps"]) == (0, 0, 0)
    assert report["events_at_depot"] == report["events_created"]
    lockers = report["lockers"]
    locker = lockers["per_locker"]["locker-1"]
    assert lockers["count"] == 1 and locker["events"] > 0
    assert locker["acked"] == locker["events"]  # the locker's own journal: all acknowledged
    # Every redirected parcel went in, was scanned by the van before, and is traced at the depot.
    assert lockers["dropoffs"] == lockers["redirected"] == lockers["redirects_traced_at_depot"] > 0
    assert lockers["pickups"] > 0
    assert lockers["pickups"] <= lockers["credentials_opened_at_depot"]
    assert lockers["expired"] > 0 and lockers["expired"] == lockers["returned"]
    assert lockers["wrong_code_attempts"] >= 5 and lockers["lockouts"] >= 1
    assert lockers["forced_open_injected"] >= 1
    assert lockers["forced_open_detected"] == lockers["forced_open_injected"]
    assert lockers["jams_injected"] >= 1 and lockers["board_outages_injected"] >= 1
    assert lockers["doors_left_open_injected"] >= 1
    alarms = lockers["alarms"]
    for kind in ("lock_jammed", "forced_open", "door_left_open", "board_offline"):
        assert alarms.get(kind, 0) >= 1, alarms
    # Nothing else went wrong: no false alarms, nobody gave up, no step failed.
    assert alarms["lock_jammed"] == lockers["jams_injected"]
    assert alarms["door_left_open"] == lockers["doors_left_open_injected"]
    assert alarms["board_offline"] == lockers["board_outages_injected"]
    assert "item_mismatch" not in alarms
    assert lockers["gave_up"] == {} and lockers["step_errors"] == 0
    assert lockers["commands_refused"] == 0 and lockers["reservations"] >= 1


@pytest.mark.slow
def test_two_lockers_and_none() -> None:
    report = simulated_day("--vans", "2", "--lockers", "2", "--parcels", "20", "--seed", "5",
                           "--speed", "6000")
    assert (report["events_lost"], report["duplicates"], report["gaps"]) == (0, 0, 0)
    per_locker = report["lockers"]["per_locker"]
    assert sorted(per_locker) == ["locker-1", "locker-2"]
    for figures in per_locker.values():
        assert figures["dropoffs"] > 0 and figures["acked"] == figures["events"]
    assert report["lockers"]["lockouts"] >= 1  # one attacker, at the first locker
    none = simulated_day("--vans", "1", "--lockers", "0", "--parcels", "10", "--speed", "20000")
    assert none["lockers"]["count"] == 0 and none["lockers"]["dropoffs"] == 0
    assert none["events_created"] == none["events_at_depot"]
