"""The sync over a TLS listener: verified against a pinned CA, and no plaintext fallback."""

from __future__ import annotations

import secrets
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from depot.ingest import Depot, DepotStore
from simulators.broker import Broker
from simulators.tls import make_pki
from sync.journal import Journal
from sync.mqtt import BrokerAddress
from sync.uplink import Uplink


def test_events_travel_over_tls_and_are_acknowledged(tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    with Broker(tmp_path / "broker", devices={"van-1": password}, tls=True) as broker:
        ca = str(broker.ca_file)
        depot_user, depot_pw = broker.depot_credentials
        store = DepotStore(tmp_path / "depot.db")
        depot = Depot(store, BrokerAddress(broker.host, broker.port, depot_user, depot_pw,
                                           tls_ca=ca))
        depot.start()
        journal = Journal(tmp_path / "van.db", "van-1")
        for i in range(50):
            journal.append("parcel_scanned", {"n": i})
        uplink = Uplink(journal, BrokerAddress(broker.host, broker.port, "van-1", password,
                                               tls_ca=ca), backoff_min_s=0.1, backoff_max_s=1.0)
        uplink.start()
        try:
            assert uplink.wait_acked(50, 20)
        finally:
            uplink.stop()
            depot.stop()
            journal.close()
        assert store.query("SELECT count(*) FROM events") == [(50,)]
        store.close()


def _connect(broker: Broker, password: str, ca: str | None) -> bool:
    """True when a CONNACK arrives; a TLS failure or a silent plaintext refusal is False."""
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="van-1", protocol=mqtt.MQTTv5)
    client.username_pw_set("van-1", password)
    client.on_connect = lambda *_: done.set()
    if ca is not None:
        client.tls_set(ca_certs=ca)
    try:
        client.connect(broker.host, broker.port, keepalive=5)
    except (ssl.SSLError, OSError):
        return False
    client.loop_start()
    try:
        return done.wait(3)
    finally:
        client.loop_stop()
        client.disconnect()


def test_plaintext_and_a_wrong_ca_are_refused(tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    with Broker(tmp_path / "broker", devices={"van-1": password}, tls=True) as broker:
        assert _connect(broker, password, str(broker.ca_file)) is True
        assert _connect(broker, password, None) is False
        other = make_pki(tmp_path / "other")
        assert _connect(broker, password, str(other.ca_file)) is False
