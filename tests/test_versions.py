"""Which device runs what: the software version from `lastmile --version` to the depot's lists.

The version has one owner (`parcel.version`); a device's real uplink carries it in its retained
status (online, goodbye and will), through a real Mosquitto, into the depot service on each
database backend, which lists it in `GET /devices` and on the console's Fleet page.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from depot.config import DepotConfig
from depot.service import DepotService
from parcel.version import DISTRIBUTION, UNKNOWN, software_version
from simulators.broker import Broker
from sync.errors import WireError
from sync.journal import Journal
from sync.uplink import Uplink
from sync.wire import decode_status, encode_status, status_topic
from tests.conftest import FAST_SYNC, address, wait_until
from tests.web import client, signed_in

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 20.0




def test_the_version_is_the_installed_distributions() -> None:
    assert software_version() == version(DISTRIBUTION) != UNKNOWN
    shown = subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "--version"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert (shown.returncode, shown.stdout) == (0, f"lastmile-edge {version(DISTRIBUTION)}\n")


def test_a_status_names_its_software_and_a_reader_ignores_what_it_does_not_know() -> None:
    online = encode_status("online", "boot-1", software="1.2.3", journal="j", last_seq=4)
    status = decode_status(online)
    assert (status.state, status.boot_id, status.software) == ("online", "boot-1", "1.2.3")
    # A newer device's extra fields are ignored; an older one's missing version is None.
    newer = decode_status(b'{"v":1,"state":"offline","boot":"b","software":"2.0","mood":"ok"}')
    assert (newer.state, newer.software) == ("offline", "2.0")
    assert decode_status(b'{"v":1,"state":"online","boot":"b"}').software is None
    # A version that is not a short printable label is dropped, the status still read.
    for odd in ('"a b"', '""', "7", '"' + "x" * 65 + '"', '"caf\\u00e9"'):
        odd_status = decode_status(f'{{"state":"online","software":{odd}}}'.encode())
        assert (odd_status.state, odd_status.software) == ("online", None), odd
    with pytest.raises(WireError, match="not a JSON object"):
        decode_status(b'["online"]')


@pytest.fixture
def depot(broker: Broker, depot_database: str) -> Iterator[DepotService]:
    service = DepotService(
        DepotConfig(
            database=depot_database,
            lat=52.37,
            lon=4.90,
            vans=["van-1"],
            broker=address(broker, "depot"),
            api=("127.0.0.1", 0),
        )
    )
    service.start()
    try:
        assert service.depot is not None and service.depot.session.wait_connected(10)
        yield service
    finally:
        service.stop()


def publish_status(broker: Broker, device: str, payload: bytes) -> None:
    """What a device of another version would publish: its retained status, as it is."""
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    sender.username_pw_set(*broker.credentials(device))
    sender.connect(broker.host, broker.port)
    sender.loop_start()
    try:
        sender.publish(status_topic(device), payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        sender.disconnect()
        sender.loop_stop()


def test_the_depot_lists_the_version_each_device_runs(
    depot: DepotService, broker: Broker, tmp_path: Path
) -> None:
    api = depot.api.url
    http = client(depot.database)

    def van_1() -> dict[str, Any]:
        found = http(f"{api}/devices")[1]["devices"]
        return next((d for d in found if d["device"] == "van-1"), {})

    journal = Journal(tmp_path / "van-1.db", "van-1")
    uplink = Uplink(journal, address(broker, "van-1"), **FAST_SYNC)
    try:
        uplink.start()
        wait_until(lambda: van_1().get("state") == "online", "van-1 online")
        assert van_1()["software"] == software_version()
    finally:
        uplink.stop()  # its goodbye: offline, still naming its version
        journal.close()
    wait_until(lambda: van_1().get("state") == "offline", "van-1's goodbye")
    assert van_1()["software"] == software_version()

    # A device updated by the fleet's update system reports its new version...
    publish_status(broker, "van-1", encode_status("online", "boot-2", software="9.1.0"))
    wait_until(lambda: van_1().get("software") == "9.1.0", "van-1's new version")
    # ...and a status naming none (a device older than version reports) keeps the last one.
    publish_status(broker, "van-1", b'{"v":1,"state":"offline","boot":"boot-2"}')
    wait_until(lambda: van_1().get("state") == "offline", "van-1 offline again")
    assert van_1()["software"] == "9.1.0"
    # Never heard naming one: null.
    publish_status(broker, "van-2", b'{"v":1,"state":"online","boot":"b"}')
    wait_until(lambda: any(d["device"] == "van-2" for d in http(f"{api}/devices")[1]["devices"]),
               "van-2 heard of")
    [van_2] = [d for d in http(f"{api}/devices")[1]["devices"] if d["device"] == "van-2"]
    assert van_2["software"] is None

    console = signed_in(api, depot.database, "viewer")
    status, page = console.get("/console/fleet")
    assert status == 200
    header = re.search(r"<table class=\"vans\">\s*<tr>(.*?)</tr>", page, re.S)
    assert header and "<th>Software</th>" in header.group(1)
    software = {
        name: html.unescape(cell)
        for name, cell in re.findall(
            r'<tr id="(?:van|device)-([\w-]+)">.*?<td class="software">(.*?)</td>', page, re.S
        )
    }
    # van-1 among the vans; van-2, not a van of the settings, among the other devices.
    assert software == {"van-1": "9.1.0", "van-2": "—"}
