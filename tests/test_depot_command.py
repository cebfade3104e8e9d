"""`lastmile depot command`: a locker command goes through the depot, never around it.

The operator's command is checked and queued in the depot's outbox from `depot.toml`; the
running depot (a real `lastmile depot` process) signs and publishes it over a real Mosquitto;
a real locker device on simulated lock boards (a pseudo-terminal) answers. Mistakes are one
line on stderr and exit 2, with nothing queued.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.store import open_database
from simulators.broker import Broker
from simulators.lockboard import SimulatedLockBoards
from sync.signing import generate_keypair, sign_command
from sync.wire import Event, command_topic

PARCEL = "RB123456785GB"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _keys(tmp_path: Path) -> dict[str, Any]:
    made = _cli("depot", "keygen", "--out", str(tmp_path / "keys"))
    assert made.returncode == 0, made.stderr
    depot: dict[str, Any] = json.loads(made.stdout)["locker_config"]["depot"]
    return depot


def _depot_toml(tmp_path: Path, broker: str = "") -> Path:
    config = tmp_path / "depot.toml"
    config.write_text(
        f"""
[depot]
database = "depot.db"
lat = 52.37
lon = 4.90
vans = ["van-1"]
api = ""
signing_key = "keys/command-signing.pem"
sealing_key = "keys/credential-sealing.pem"
{broker}
[[lockers]]
name = "locker-1"
lat = 52.37
lon = 4.90
compartments = {{ S = 1, M = 1 }}
"""
    )
    return config


def _queued(config: Path) -> int:
    db = open_database(config.parent / "depot.db")
    try:
        with db.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM depot_commands").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["locker-1", "open_everything"], "unknown command 'open_everything'"),
        (["locker-1", "reserve", "size=M"], "reserve needs parcel"),
        (["locker-1", "reserve", f"parcel={PARCEL}", "size=XL"], "size must be one of S, M, L"),
        (["locker-1", "extend_hold", f"parcel={PARCEL}", "hours=-3"], "hours must be a number"),
        (["locker-1", "reserve", f"parcel={PARCEL}", "colour=red"], "not colour"),
        (["locker-9", "remote_open", "compartment=A1"], "not one of this depot's lockers"),
        (["locker-1", "remote_open", "compartment"], "is not key=value"),
    ],
)
def test_a_bad_command_is_refused_before_anything_is_signed(
    tmp_path: Path, words: list[str], says: str
) -> None:
    _keys(tmp_path)
    config = _depot_toml(tmp_path)
    done = _cli("depot", "command", "--config", str(config), "--wait", "0", *words)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert _queued(config) == 0


def test_the_wrong_key_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _keys(tmp_path)
    config = _depot_toml(tmp_path)
    # The sealing key (X25519) where the signing key (Ed25519) belongs: a copy-paste slip.
    text = config.read_text().replace(
        'signing_key = "keys/command-signing.pem"', 'signing_key = "keys/credential-sealing.pem"'
    )
    config.write_text(text)
    done = _cli("depot", "command", "--config", str(config), "locker-1", "remote_open",
                "compartment=A1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not an Ed25519 private key" in done.stderr
    assert "Traceback" not in done.stderr
    missing = config.read_text().replace("keys/credential-sealing.pem", "keys/nope.pem", 1)
    config.write_text(missing)
    done = _cli("depot", "command", "--config", str(config), "locker-1", "remote_open",
                "compartment=A1")
    assert done.returncode == 2 and "nope.pem" in done.stderr and "Traceback" not in done.stderr


def test_a_depot_without_a_signing_key_says_so(tmp_path: Path) -> None:
    _keys(tmp_path)
    config = _depot_toml(tmp_path)
    config.write_text(config.read_text().replace('signing_key = "keys/command-signing.pem"', ""))
    done = _cli("depot", "command", "--config", str(config), "locker-1", "remote_open",
                "compartment=A1")
    assert done.returncode == 2 and "no command-signing key" in done.stderr
    assert done.stderr.count("\n") == 1 and _queued(config) == 0


def test_without_a_running_depot_the_command_waits_in_the_outbox(tmp_path: Path) -> None:
    _keys(tmp_path)
    config = _depot_toml(tmp_path)
    done = _cli("depot", "command", "--config", str(config), "--wait", "0.5", "locker-1",
                "remote_open", "compartment=A1")
    assert done.returncode == 1
    assert json.loads(done.stdout)["action"] == "remote_open"
    assert "no depot published it" in done.stderr
    assert _queued(config) == 1


def test_the_depot_signs_and_sends_it_and_the_locker_answers(tmp_path: Path) -> None:
    from edge.locker_config import load_locker_config
    from edge.locker_device import LockerDevice

    depot_keys = _keys(tmp_path)
    password = secrets.token_hex(8)
    (tmp_path / "locker.pw").write_text(password)
    with (
        Broker(tmp_path / "broker", devices={"locker-1": password}) as broker,
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
    ):
        depot_user, depot_password = broker.depot_credentials
        (tmp_path / "depot.pw").write_text(depot_password)
        config = _depot_toml(
            tmp_path,
            f"""
[broker]
host = "127.0.0.1"
port = {broker.port}
username = "{depot_user}"
password_file = "depot.pw"
""",
        )
        locker_toml = tmp_path / "locker.toml"
        locker_toml.write_text(f"""
device_id = "locker-1"
[lockboard]
port = "{boards.path}"
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
[[compartments]]
id = "B1"
board = 0
lock = 1
size = "M"
[broker]
port = {broker.port}
password_file = "locker.pw"
[depot]
command_keys = {json.dumps(depot_keys["command_keys"])}
sealing_key = "{depot_keys["sealing_key"]}"
""")

        class Screen:
            def show(self, message: str, **facts: object) -> None:
                pass

        device = LockerDevice(load_locker_config(locker_toml), Screen())
        heard = threading.Condition()
        kinds: list[tuple[str, dict[str, object]]] = []

        def listen(events: list[Event]) -> None:
            with heard:
                kinds.extend((e.kind, dict(e.payload)) for e in events)
                heard.notify_all()

        device.journal.add_listener(listen)
        depot = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "depot", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        device.start()
        try:
            assert depot.stdout is not None and "running" in depot.stdout.readline()
            assert device.uplink is not None and device.uplink.session.wait_connected(10)
            done = _cli("depot", "command", "--config", str(config), "locker-1", "reserve",
                        f"parcel={PARCEL}", "size=M")
            assert done.returncode == 0, done.stderr
            said = [json.loads(line) for line in done.stdout.splitlines()]
            assert said[0]["queued"] and said[1]["command_accepted"] == said[0]["queued"]
            assert said[1]["compartment"] == "B1" and said[1]["parcel"] == PARCEL
            accepted = next(p for k, p in kinds if k == "command_accepted")
            assert accepted["id"] == said[0]["queued"]

            # One the locker refuses on its own grounds comes back as such, exit 1.
            done = _cli("depot", "command", "--config", str(config), "locker-1", "extend_hold",
                        "parcel=RB000000000GB", "hours=2")
            assert done.returncode == 1
            assert "is not in this locker" in done.stdout.splitlines()[1]

            # A command signed with a key the locker does not trust is refused and recorded:
            # only the depot's outbox holds the key the locker believes.
            rogue, _public = generate_keypair()
            from sync.signing import load_signing_key

            payload = sign_command(
                load_signing_key(rogue),
                target="locker-1",
                action="remote_open",
                args={"compartment": "A1"},
                ttl_s=60,
                now=time.time(),
            )
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder",
                                 protocol=mqtt.MQTTv5)
            client.username_pw_set(depot_user, depot_password)
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            try:
                client.publish(command_topic("locker-1", "remote_open"), payload, qos=1)
                with heard:
                    assert heard.wait_for(
                        lambda: any(k == "command_refused" for k, _ in kinds), 15
                    )
            finally:
                client.loop_stop()
                client.disconnect()
            refused = next(p for k, p in kinds if k == "command_refused")
            assert refused["reason"] == "bad_signature"
            assert boards.unlock_count(0, 0) == 0
        finally:
            device.stop()
            depot.terminate()
            depot.communicate(timeout=15)
