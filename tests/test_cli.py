"""The `lastmile` command as a user runs it: subcommands, identify, and the simulated day."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lastmile(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lastmile.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    """Every command and subcommand the parser knows, e.g. "depot keygen"."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}"
                yield from _commands(sub, f"{prefix}{name} ")


def test_help_lists_every_subcommand_and_the_readme_documents_them() -> None:
    from lastmile.cli import build_parser

    out = lastmile("--help").stdout
    readme = (ROOT / "README.md").read_text()
    commands = list(_commands(build_parser()))
    assert {"depot keygen", "depot command", "sim gnss"} <= set(commands)  # it found them
    for command in commands:
        assert command.split()[0] in out
        assert f"lastmile {command}" in readme, f"README does not document {command}"


@pytest.mark.parametrize(
    ("code", "kind", "ident"),
    [
        ("RB123456785GB", "s10", "RB123456785GB"),
        ("]C100157035381410375177<GS>42012345", "sscc", "157035381410375177"),
        ("]C100157035381410375177\\x1d42012345", "sscc", "157035381410375177"),
        ("1Z5R89390357567127", "ups", "1Z5R89390357567127"),
    ],
)
def test_identify_json_for_valid_codes(code: str, kind: str, ident: str) -> None:
    result = lastmile("identify", "--json", code)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["valid"] is True and doc["kind"] == kind and doc["id"] == ident
    assert doc["error"] is None


def test_identify_rejects_with_a_reason_and_exit_1() -> None:
    result = lastmile("identify", "--json", "RB123456786GB")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False and doc["id"] is None and "check digit" in doc["error"]
    plain = lastmile("identify", "hello")
    assert plain.returncode == 1 and plain.stdout.startswith("rejected:")


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_simulated_day_delivers_every_event_exactly_once(broker: str) -> None:
    result = lastmile("sim", "--json", "--vans", "2", "--parcels", "20", "--seed", "4",
                      "--speed", "6000", "--broker", broker)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    for key in ("events_created", "events_at_depot", "events_lost", "duplicates", "gaps",
                "parcels", "first_attempt_success_rate", "pod_complete_rate",
                "unaccounted_parcels", "webhooks_sent", "webhooks_duplicated",
                "webhooks_dead_lettered"):
        assert key in report
    assert report["events_created"] >= 2 * 40
    assert report["events_at_depot"] == report["events_created"]
    assert (report["events_lost"], report["duplicates"], report["gaps"]) == (0, 0, 0)
    assert report["confirmed_to_courier"] == report["confirmed_at_depot"] > 0
    assert report["unaccounted_parcels"] == 0 and sum(report["parcels"].values()) == 40
    assert report["dead_zones"] >= 2
    named = r"mosquitto \d+\.\d+\.\d+" if broker == "mosquitto" else r"amqtt \d+\.\d+\.\d+"
    assert re.fullmatch(named, report["broker"]), report["broker"]


def test_simulated_day_prints_progress_and_a_summary() -> None:
    result = lastmile("sim", "--vans", "1", "--parcels", "10", "--days", "1", "--speed", "8000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "manifests issued" in result.stdout and "days over" in result.stdout
    assert "OK: every event exactly once, every parcel accounted for" in result.stdout
    lines = result.stdout.splitlines()
    # The first line names the broker that ran, with its version.
    assert re.match(r"broker: (mosquitto|amqtt) \d+\.\d+[.\d]* on ", lines[0]), lines[0]
    assert re.search(r"\((mosquitto|amqtt) [\d.]+, [\d.]+ s real time\)", result.stdout)
    # Readable by a person: no line wider than 100 columns, words rather than Python reprs.
    assert max(len(line) for line in lines) <= 100
    assert not re.search(r"[{\[]'|[{\[]\d", result.stdout), result.stdout
    assert re.search(r"  parcels: \d+ delivered", result.stdout)
    assert "decisions after failures: " in result.stdout


def test_a_van_standing_still_in_its_round_is_told_with_the_reason() -> None:
    from simulators.day import _standstills

    moments = [(7.0, "parcel_loaded"), (7.5, "departed"), (8.25, "parcel_delivered"),
               (9.0, "delivery_failed"), (11.25, "manifest_applied"), (11.5, "parcel_delivered"),
               (12.0, "round_ended"), (12.1, "day_closed")]
    said = _standstills("van-2", 1, moments, until_h=18.0, dead_zones=[(8.5, 10.0)],
                        lags=[(10.5, "van-2: events not yet confirmed by the depot")])
    # One gap of more than an hour inside the round; the hours after it closed are no standstill.
    assert said == [
        "van-2 stood still from 09:00 to 11:15 on day 1, during its round: its link was in a "
        "dead zone from 08:30 to 10:00; it was waiting for the depot's updated manifest; at "
        "10:30 time ran on without it (events not yet confirmed by the depot)."
    ]
    # A round still open when the day ends, for no reason the run knows.
    said = _standstills("van-1", 2, moments[:4], until_h=18.0, dead_zones=[], lags=[])
    assert said == ["van-1 stood still from 09:00 to the end of the day (18:00) on day 2, during "
                    "its round: the simulation does not know why."]
