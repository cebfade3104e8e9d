"""The test broker enforces the v1 topic contract: each device its own subtree, the depot all.

Runs a real Mosquitto on a free port with real paho MQTT v5 clients. "Not delivered" is proved
without sleeping: the forbidden message is followed by an allowed one on the same path, and
MQTT keeps a client's messages in order, so when the allowed one arrives the other never will.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.broker import (
    Broker,
    EmbeddedBroker,
    acl_allows,
    find_mosquitto,
    mosquitto_acl_text,
    start_broker,
)
from simulators.errors import SimulatorError

WAIT_S = 3.0  # the most any single step may take; steps normally take milliseconds

# MQTT v5 reason codes (section 2.4) the broker answers with.
NOT_AUTHORIZED = 0x87
BAD_USERNAME_OR_PASSWORD = 0x86

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None or shutil.which("mosquitto_passwd") is None,
    reason="mosquitto is not installed",
)

DEVICES = {"van-1": "van-1-secret", "van-2": "van-2-secret"}


class Peer:
    """A paho client whose calls block on the broker's answer (CONNACK, SUBACK, PUBACK) and
    that keeps every message it receives; waits are on conditions, never on sleeps."""

    def __init__(
        self,
        broker: Any,
        username: str,
        password: str | None = None,
        *,
        client_id: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self._broker = broker
        self._v5 = protocol == MQTTProtocolVersion.MQTTv5
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.session_present = False
        self.acks: dict[int, Any] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected = threading.Event()
        if password is None:
            password = (
                broker.depot_credentials[1]
                if username == broker.depot_credentials[0]
                else broker.credentials(username)[1]
            )
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else username,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # callbacks, in paho's network thread

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self.session_present = bool(flags.session_present)
            self._cond.notify_all()

    def _on_disconnect(self, *_: Any) -> None:
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self.acks[mid] = rcs
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    # blocking calls

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT_S), f"timed out waiting for {what}"

    def connect(self, *, clean_start: bool = True, session_expiry: int = 0) -> ReasonCode:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
            self.client.connect(
                self._broker.host, self._broker.port, clean_start=clean_start, properties=props
            )
        else:
            self.client.connect(self._broker.host, self._broker.port)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """QoS 1; returns the PUBACK's reason code (v5) — paho completes a refused publish too."""
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        self._wait(lambda: mid in self.acks, f"PUBACK for {topic}")
        rc: ReasonCode = self.acks[mid]
        return rc

    def subscribe(self, topic_filter: str) -> ReasonCode:
        mid = self.client.subscribe(topic_filter, qos=1)[1]
        assert mid is not None
        self._wait(lambda: mid in self.acks, f"SUBACK for {topic_filter}")
        rc: ReasonCode = self.acks[mid][0]
        return rc

    def expect(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Wait for one message and return everything received so far, as (topic, payload)."""
        self._wait(
            lambda: any(m.topic == topic and m.payload == payload for m in self.messages),
            f"{payload!r} on {topic}",
        )
        with self._cond:
            return [(m.topic, bytes(m.payload)) for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed")
    with Broker(tmp_path, devices=DEVICES) as b:
        yield b


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """peers(broker, username, ...) -> a connected Peer, closed after the test."""
    made: list[Peer] = []

    def make(broker: Any, username: str, password: str | None = None, **kw: Any) -> Peer:
        peer = Peer(broker, username, password, **kw)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def connected(peers: Callable[..., Peer], broker: Any, username: str, **kw: Any) -> Peer:
    peer = peers(broker, username, **kw)
    rc = peer.connect()
    assert not rc.is_failure, f"{username}: CONNACK {rc}\n{getattr(broker, 'log_tail', str)()}"
    return peer


# --- the ACL as data ---------------------------------------------------------------------------


def test_acl_rules_bind_every_device_to_its_own_subtree() -> None:
    def may(user: str, access: Literal["read", "write"], topic: str) -> bool:
        return acl_allows(user, access, topic, depot_username="depot")

    assert may("van-1", "write", "lastmile/v1/van-1/events")
    assert may("van-1", "write", "lastmile/v1/van-1/status")
    assert may("van-1", "write", "lastmile/v1/van-1/up/gnss/fix")
    assert may("van-1", "read", "lastmile/v1/van-1/ack")
    assert may("van-1", "read", "lastmile/v1/van-1/cmd/#")
    assert not may("van-1", "write", "lastmile/v1/van-2/events")
    assert not may("van-1", "write", "lastmile/v1/van-1/ack")
    assert not may("van-1", "read", "lastmile/v1/van-1/events")
    assert not may("van-1", "read", "lastmile/v1/van-2/ack")
    # A wildcard is covered only by the same or a wider wildcard, never by a literal level.
    assert not may("van-1", "read", "lastmile/v1/+/ack")
    assert not may("van-1", "read", "lastmile/v1/van-1/#")
    assert not may("van-1", "read", "#")
    assert may("depot", "read", "lastmile/v1/#")
    assert may("depot", "write", "lastmile/v1/van-7/cmd/open")
    assert not may("depot", "write", "elsewhere/topic")

    text = mosquitto_acl_text("depot")
    assert "pattern write lastmile/v1/%u/events\n" in text
    assert "user depot\ntopic readwrite lastmile/v1/#\n" in text


def test_account_names_that_would_break_topics_are_refused(tmp_path: Path) -> None:
    for bad in ("van/1", "van+1", "van#1", "", "van:1", "van 1"):
        with pytest.raises(ValueError):
            Broker(tmp_path, devices={bad: "pw"})
    with pytest.raises(ValueError):
        Broker(tmp_path, devices={"depot": "pw"})


# --- Mosquitto ---------------------------------------------------------------------------------


@needs_mosquitto
def test_a_device_publishes_its_own_events_and_the_depot_receives_them(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    depot = connected(peers, broker, "depot")
    assert not depot.subscribe("lastmile/v1/#").is_failure
    van = connected(peers, broker, "van-1")
    assert not van.publish("lastmile/v1/van-1/events", b"batch-1").is_failure
    assert not van.publish("lastmile/v1/van-1/up/gnss", b"fix").is_failure
    assert not van.publish("lastmile/v1/van-1/status", b"online", retain=True).is_failure
    assert depot.expect("lastmile/v1/van-1/status", b"online") == [
        ("lastmile/v1/van-1/events", b"batch-1"),
        ("lastmile/v1/van-1/up/gnss", b"fix"),
        ("lastmile/v1/van-1/status", b"online"),
    ]


@needs_mosquitto
def test_a_device_cannot_publish_as_another_device(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    depot = connected(peers, broker, "depot")
    depot.subscribe("lastmile/v1/#")
    van = connected(peers, broker, "van-1")

    # Mosquitto 2 answers a refused QoS 1 publish with PUBACK 0x87 "Not authorized".
    assert van.publish("lastmile/v1/van-2/events", b"forged").value == NOT_AUTHORIZED
    assert van.publish("lastmile/v1/van-1/ack", b"self-acked").value == NOT_AUTHORIZED
    assert van.publish("lastmile/v1/van-2/cmd/open", b"x").value == NOT_AUTHORIZED
    assert van.publish("elsewhere", b"x").value == NOT_AUTHORIZED
    van.client.publish("lastmile/v1/van-2/events", b"forged-qos0", qos=0)  # dropped silently
    assert not van.publish("lastmile/v1/van-1/events", b"sentinel").is_failure

    assert depot.expect("lastmile/v1/van-1/events", b"sentinel") == [
        ("lastmile/v1/van-1/events", b"sentinel")
    ]


@needs_mosquitto
def test_a_device_cannot_read_another_devices_ack(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    depot = connected(peers, broker, "depot")
    assert not depot.publish("lastmile/v1/van-1/ack", b"ack-1", retain=True).is_failure
    assert not depot.publish("lastmile/v1/van-2/ack", b"ack-2", retain=True).is_failure

    van2 = connected(peers, broker, "van-2")
    # Mosquitto 2.0 grants these SUBSCRIBEs and checks read access per message instead; a
    # broker that refuses them outright is as good. Either way nothing of van-1's arrives.
    for snoop in ("lastmile/v1/van-1/ack", "lastmile/v1/+/ack", "lastmile/v1/#", "#"):
        van2.subscribe(snoop)
    assert not van2.subscribe("lastmile/v1/van-2/ack").is_failure
    assert not depot.publish("lastmile/v1/van-1/ack", b"ack-1b").is_failure
    assert not depot.publish("lastmile/v1/van-2/cmd/open", b"ack-2b").is_failure

    received = van2.expect("lastmile/v1/van-2/cmd/open", b"ack-2b")
    assert {t for t, _ in received} == {"lastmile/v1/van-2/ack", "lastmile/v1/van-2/cmd/open"}


@needs_mosquitto
def test_a_wrong_password_or_unknown_account_is_refused(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    wrong = peers(broker, "van-1", "not-the-password").connect()
    # Mosquitto 2.0 says "Not authorized" (0x87) rather than "Bad user name or password".
    assert wrong.is_failure and wrong.value in (NOT_AUTHORIZED, BAD_USERNAME_OR_PASSWORD)
    stranger = peers(broker, "van-9", "whatever").connect()
    assert stranger.is_failure and stranger.value in (NOT_AUTHORIZED, BAD_USERNAME_OR_PASSWORD)


@needs_mosquitto
def test_the_session_belongs_to_the_username_not_the_claimed_client_id(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    van2 = connected(peers, broker, "van-2")
    van2.subscribe("lastmile/v1/van-2/ack")

    # van-1 claims van-2's client id: it gets a session named "van-1", van-2 is not touched.
    impostor = peers(broker, "van-1", client_id="van-2")
    assert not impostor.connect(clean_start=False, session_expiry=300).is_failure
    assert not impostor.subscribe("lastmile/v1/van-1/cmd/#").is_failure
    depot = connected(peers, broker, "depot")
    depot.publish("lastmile/v1/van-2/ack", b"still-yours")
    van2.expect("lastmile/v1/van-2/ack", b"still-yours")
    assert not van2.disconnected.is_set()
    impostor.close()

    # A command queued while van-1 is away reaches van-1 under yet another client id: the
    # session is keyed by the username.
    depot.publish("lastmile/v1/van-1/cmd/reboot", b"queued")
    again = peers(broker, "van-1", client_id="scanner-42")
    assert not again.connect(clean_start=False, session_expiry=300).is_failure
    assert again.session_present
    again.expect("lastmile/v1/van-1/cmd/reboot", b"queued")

    # And a second connection of the same account takes the session over.
    third = connected(peers, broker, "van-1", client_id="whatever")
    assert again.disconnected.wait(WAIT_S)
    assert not third.disconnected.is_set()


@needs_mosquitto
def test_the_depot_reads_and_writes_all_of_v1(broker: Broker, peers: Callable[..., Peer]) -> None:
    depot = connected(peers, broker, "depot")
    assert not depot.subscribe("lastmile/v1/+/events").is_failure
    van = connected(peers, broker, "van-1")
    van.subscribe("lastmile/v1/van-1/ack")
    van.subscribe("lastmile/v1/van-1/cmd/#")
    van.publish("lastmile/v1/van-1/events", b"e1")
    depot.expect("lastmile/v1/van-1/events", b"e1")
    assert not depot.publish("lastmile/v1/van-1/ack", b"a1").is_failure
    assert not depot.publish("lastmile/v1/van-1/cmd/open/3", b"c1").is_failure
    assert not depot.publish("lastmile/v1/fleet/anything", b"x").is_failure
    van.expect("lastmile/v1/van-1/cmd/open/3", b"c1")
    assert ("lastmile/v1/van-1/ack", b"a1") in van.expect("lastmile/v1/van-1/ack", b"a1")


@needs_mosquitto
def test_restart_keeps_the_port_and_persisted_state(
    tmp_path: Path, peers: Callable[..., Peer]
) -> None:
    with Broker(tmp_path, devices=DEVICES, persistence=True) as broker:
        port = broker.port
        depot = connected(peers, broker, "depot")
        depot.publish("lastmile/v1/van-1/ack", b"upto-41", retain=True)
        van = connected(peers, broker, "van-1")

        broker.restart()
        assert broker.port == port and broker.is_running
        assert van.disconnected.wait(WAIT_S)

        again = connected(peers, broker, "van-1")
        again.subscribe("lastmile/v1/van-1/ack")
        again.expect("lastmile/v1/van-1/ack", b"upto-41")  # the retained ack was saved
    assert not broker.is_running


@needs_mosquitto
def test_kill_and_start_again(broker: Broker, peers: Callable[..., Peer]) -> None:
    van = connected(peers, broker, "van-1")
    broker.kill()
    assert not broker.is_running
    assert van.disconnected.wait(WAIT_S)
    broker.start()
    connected(peers, broker, "van-1")


@needs_mosquitto
def test_a_device_added_while_running_can_connect_at_once(
    broker: Broker, peers: Callable[..., Peer]
) -> None:
    with pytest.raises(KeyError):
        broker.credentials("van-3")
    broker.add_device("van-3", "van-3-secret")
    assert broker.credentials("van-3") == ("van-3", "van-3-secret")
    van3 = connected(peers, broker, "van-3")
    assert not van3.publish("lastmile/v1/van-3/events", b"hello").is_failure
    with pytest.raises(ValueError):
        broker.add_device("van-3", "another-password")


@needs_mosquitto
def test_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = Broker(tmp_path, devices=DEVICES, port=taken)
        with pytest.raises(SimulatorError, match="in use"):
            broker.start()
        assert not broker.is_running


@needs_mosquitto
def test_start_broker_prefers_mosquitto(tmp_path: Path) -> None:
    broker = start_broker(tmp_path, DEVICES, kind="auto")
    try:
        assert isinstance(broker, Broker) and broker.mqtt5 and broker.is_running
    finally:
        broker.stop()


# --- the embedded fallback (amqtt, MQTT 3.1.1) -------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    pytest.importorskip("amqtt")
    broker = start_broker(tmp_path, DEVICES, kind="embedded")
    assert isinstance(broker, EmbeddedBroker) and not broker.mqtt5
    try:
        yield broker
    finally:
        broker.stop()


def test_embedded_broker_carries_messages_with_password_auth(
    embedded: EmbeddedBroker, peers: Callable[..., Peer]
) -> None:
    v311 = {"protocol": MQTTProtocolVersion.MQTTv311}
    depot = connected(peers, embedded, "depot", **v311)
    assert not depot.subscribe("lastmile/v1/#").is_failure
    van = connected(peers, embedded, "van-1", **v311)
    van.publish("lastmile/v1/van-1/events", b"batch-1")
    depot.expect("lastmile/v1/van-1/events", b"batch-1")

    assert peers(embedded, "van-1", "wrong", client_id="x", **v311).connect().is_failure
    assert peers(embedded, "van-9", "wrong", client_id="y", **v311).connect().is_failure


def test_embedded_broker_enforces_the_same_topic_acl(
    embedded: EmbeddedBroker, peers: Callable[..., Peer]
) -> None:
    v311 = {"protocol": MQTTProtocolVersion.MQTTv311}
    depot = connected(peers, embedded, "depot", **v311)
    depot.subscribe("lastmile/v1/+/events")
    depot.publish("lastmile/v1/van-1/ack", b"ack-1", retain=True)

    van1 = connected(peers, embedded, "van-1", **v311)
    van1.publish("lastmile/v1/van-2/events", b"forged")  # 3.1.1: PUBACKed, then dropped
    van1.publish("lastmile/v1/van-1/events", b"sentinel")
    assert depot.expect("lastmile/v1/van-1/events", b"sentinel") == [
        ("lastmile/v1/van-1/events", b"sentinel")
    ]

    van2 = connected(peers, embedded, "van-2", **v311)
    assert van2.subscribe("lastmile/v1/van-1/ack").is_failure
    assert van2.subscribe("lastmile/v1/+/ack").is_failure
    assert not van2.subscribe("lastmile/v1/van-2/ack").is_failure
    depot.publish("lastmile/v1/van-1/ack", b"ack-1b")
    depot.publish("lastmile/v1/van-2/ack", b"ack-2")
    assert van2.expect("lastmile/v1/van-2/ack", b"ack-2") == [("lastmile/v1/van-2/ack", b"ack-2")]
