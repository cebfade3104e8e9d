"""`lastmile sim`: one seed, one outcome, however busy the machine is.

Simulated time stands still while devices and people act (simulators.day._SimTime), so where
every parcel ends, what the depot's policy decided and the first-attempt rate follow from the
seed alone. The run is made twice, the second time with every core kept busy by processes that
only burn CPU, and the outcomes must match figure for figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Seed 2 with 2 vans of 25 parcels: several failures go to lockers, customers collect some
# and extend holds with the notice's link, others go to a second attempt or back to sender.
RUN = ("--vans", "2", "--parcels", "25", "--days", "2", "--seed", "2", "--speed", "6000")
LOCKER_FIGURES = ("redirected", "dropoffs", "pickups", "expired", "returned", "holds_extended")


def simulate() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "sim", "--json", *RUN],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def outcome(report: dict[str, Any]) -> dict[str, Any]:
    """What a seed decides: where parcels ended, the policy's decisions, the rates."""
    return {
        "parcels": report["parcels"],
        "decisions": report["decisions"],
        "first_attempt_success_rate": report["first_attempt_success_rate"],
        "lockers": {k: report["lockers"][k] for k in LOCKER_FIGURES},
        "pickup_notices_sent": report["pickup_notices_sent"],
    }


def burn_every_core() -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(os.cpu_count() or 2)
    ]


@pytest.mark.slow
def test_one_seed_gives_one_outcome_on_a_quiet_and_a_loaded_machine() -> None:
    quiet = simulate()
    burners = burn_every_core()
    try:
        loaded = simulate()
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait(10)
    # The run is one that can tell: the policy sent parcels to lockers and customers came.
    assert quiet["lockers"]["redirected"] > 0 and quiet["lockers"]["pickups"] > 0
    assert quiet["decisions"].get("second_attempt", 0) > 0
    assert quiet["ok"] is True and loaded["ok"] is True
    assert outcome(loaded) == outcome(quiet)
