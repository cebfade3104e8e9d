"""The depot's command line: import, plan, track, EPCIS, and the running service with its API.

Real processes, a real SQLite file, a real Mosquitto broker and real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from simulators.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
GOOD = ("RB123456785GB", "RR123456785NL", "LX226218500NL")


def lastmile(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def depot_files(
    tmp_path: Path, database: str, broker: Broker | None = None, api_port: int = 0
) -> Path:
    config = tmp_path / "depot.toml"
    text = (
        f"database = {json.dumps(database)}\n"
        'lat = 52.3676\nlon = 4.9041\nvans = ["van-1", "van-2"]\n'
    )
    if api_port:
        text += f'api = "127.0.0.1:{api_port}"\n'
    text = "[depot]\n" + text
    if broker is not None:
        user, password = broker.depot_credentials
        (tmp_path / "depot.pw").write_text(password)
        text += (
            f'\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "{user}"\n'
            'password_file = "depot.pw"\n'
        )
    config.write_text(text)
    rows: list[dict[str, Any]] = [
        {
            "parcel": code,
            "recipient": f"R. {i}",
            "address": f"Damrak {i + 1}, Amsterdam",
            "lat": 52.37 + i / 1000,
            "lon": 4.89 + i / 1000,
            "merchant": "shop-a",
            "webhook": "http://127.0.0.1:9/hook",
        }
        for i, code in enumerate(GOOD)
    ]
    rows.append({**rows[0], "parcel": "RB123456786GB"})  # a wrong check digit
    (tmp_path / "parcels.json").write_text(json.dumps(rows))
    return config


def test_import_plan_track_and_export(tmp_path: Path, depot_database: str) -> None:
    config = depot_files(tmp_path, depot_database)
    imported = lastmile("depot", "import", str(tmp_path / "parcels.json"), "--config", str(config))
    assert imported.returncode == 1, imported.stderr  # one row refused
    doc = json.loads(imported.stdout)
    assert doc["received"] == 3
    assert len(doc["refused"]) == 1 and "check digit" in doc["refused"][0]["reason"]

    # The dock scans one of them and one that came without data, and refuses a smudged label.
    arrived = lastmile(
        "depot", "arrive", GOOD[0], "RC123456785GB", "RB123456786GB", "--config", str(config)
    )
    assert arrived.returncode == 1
    lines = [json.loads(line) for line in arrived.stdout.splitlines()]
    assert lines[0] == {"received": GOOD[0]} and lines[1]["unknown"] == "RC123456785GB"
    assert "not imported" in lines[1]["reason"]
    assert lines[2]["rejected"] == "RB123456786GB" and "check digit" in lines[2]["reason"]

    planned = lastmile("depot", "plan", "--config", str(config), "--day", "2026-11-23")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["waiting_for_address"] == ["RC123456785GB"]
    manifests = json.loads(planned.stdout)["manifests"]
    assert sum(m["parcels"] for m in manifests.values()) == 3
    assert all(m["version"] == 1 for m in manifests.values())

    tracked = lastmile("depot", "track", GOOD[0], "--json", "--config", str(config))
    assert tracked.returncode == 0, tracked.stderr
    parcel = json.loads(tracked.stdout)
    assert parcel["parcel"] == GOOD[0] and parcel["state"] == "received"
    assert [e["step"] for e in parcel["timeline"]] == ["received", "received", "assigned"]
    assert parcel["timeline"][1]["details"]["source"] == "arrival_scan"
    plain = lastmile("depot", "track", GOOD[0], "--database", depot_database)
    assert plain.returncode == 0 and plain.stdout.startswith(f"{GOOD[0]}: received")
    missing = lastmile("depot", "track", "RR000000000NL", "--config", str(config))
    assert missing.returncode == 1 and "no parcel" in missing.stderr

    exported = lastmile("depot", "epcis", GOOD[1], "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    epcis = json.loads(exported.stdout)
    assert epcis["type"] == "EPCISDocument" and epcis["schemaVersion"] == "2.0"
    events = epcis["epcisBody"]["eventList"]
    assert events and all(e["type"] == "ObjectEvent" for e in events)


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_running_depot_serves_its_api_and_stops_on_sigterm(
    tmp_path: Path, broker: Broker, depot_database: str
) -> None:
    port = free_port()
    config = depot_files(tmp_path, depot_database, broker, api_port=port)
    assert (
        lastmile(
            "depot", "import", str(tmp_path / "parcels.json"), "--config", str(config)
        ).returncode
        == 1
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lastmile.cli", "depot", "--config", str(config)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        banner = json.loads(line)
        assert banner["depot"] == "running" and banner["api"] == f"http://127.0.0.1:{port}"
        base = banner["api"]
        deadline = time.monotonic() + 10
        while True:  # until the API answers, and the depot has reached the broker
            try:
                status, health = get(f"{base}/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the API never answered 200"
            time.sleep(0.05)
        assert status == 200 and health["ok"] is True and health["parcels"] == 3
        shown = json.dumps(health)  # counts only: no recipient's name or address
        assert not any(f"R. {i}" in shown or f"Damrak {i + 1}" in shown for i in range(3))
        status, refused = get(f"{base}/parcels/{GOOD[2]}")  # nothing personal without a token
        assert status == 401 and "token" in refused["error"]
        assert get(f"{base}/parcels", "lmt_not-a-token")[0] == 401
        made = lastmile("depot", "token", "add", "desk", "--config", str(config))
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        assert token.startswith("lmt_") and "not shown again" in made.stderr
        again = lastmile("depot", "token", "add", "desk", "--config", str(config))
        assert again.returncode == 1 and "exists" in again.stderr
        status, parcel = get(f"{base}/parcels/{GOOD[2]}", token)
        assert status == 200 and parcel["state"] == "received"
        status, listing = get(f"{base}/parcels?state=received", token)
        assert status == 200 and listing["count"] == len(listing["parcels"]) == 3
        gone = lastmile("depot", "token", "remove", "desk", "--config", str(config))
        assert gone.returncode == 0, gone.stderr
        assert get(f"{base}/parcels?state=received", token)[0] == 401
        token = lastmile("depot", "token", "add", "desk-2", "--config", str(config)).stdout.strip()
        status, error = get(f"{base}/parcels/RR000000000NL", token)
        assert status == 404 and "error" in error
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_arriving_a_parcel_whose_journey_ended_is_refused(
    tmp_path: Path, depot_database: str
) -> None:
    from depot.config import load_depot_config
    from depot.service import DepotService

    config = depot_files(tmp_path, depot_database)
    assert lastmile("depot", "import", str(tmp_path / "parcels.json"),
                    "--config", str(config)).returncode == 1  # the one bad row
    service = DepotService(load_depot_config(config))
    try:
        service.book.mark_returned_to_sender(GOOD[2])  # handed back to the merchant
        before = service.book.track(GOOD[2])["timeline"]
    finally:
        service.stop()

    arrived = lastmile("depot", "arrive", GOOD[1], GOOD[2], "--config", str(config))
    assert arrived.returncode == 1, arrived.stderr
    lines = [json.loads(line) for line in arrived.stdout.splitlines()]
    assert lines == [
        {"received": GOOD[1]},
        {"refused": GOOD[2], "reason": "already returned to sender"},
    ]
    tracked = lastmile("depot", "track", GOOD[2], "--json", "--config", str(config))
    parcel = json.loads(tracked.stdout)
    assert parcel["state"] == "returned_to_sender" and parcel["timeline"] == before
    assert lastmile("depot", "arrive", GOOD[1], "--config", str(config)).returncode == 0
