"""The reconnect policy: exponential growth, bounded, and jittered so a fleet does not stampede."""

from __future__ import annotations

import queue
import random
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import Broker
from sync.mqtt import MqttSession, backoff_delay
from sync.wire import events_topic
from tests.conftest import address


def test_backoff_grows_exponentially_within_bounds() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        window = min(60.0, 0.5 * 2**attempt)
        for _ in range(50):
            d = backoff_delay(attempt, 0.5, 60.0, rng)
            assert window / 2 <= d <= window


def test_backoff_is_jittered_so_a_fleet_spreads_out() -> None:
    delays = [backoff_delay(6, 0.5, 60.0, random.Random(seed)) for seed in range(200)]
    assert len({round(d, 3) for d in delays}) > 150
    assert max(delays) - min(delays) > 10  # spread over the upper half of a 32 s window


def test_only_the_network_thread_writes_to_the_socket(broker: Broker) -> None:
    """A publish from another thread is sent by the session's own network thread.

    Two threads in one TLS connection corrupt OpenSSL's state (the simulated day once died in
    `SSL_free`). Here the network thread is held inside its tick: a message published meanwhile
    from this thread must not reach the broker until the tick lets go.
    """
    held, release = threading.Event(), threading.Event()
    arm = threading.Event()

    def tick() -> None:
        if arm.is_set():
            held.set()
            release.wait(10.0)

    got: queue.Queue[bytes] = queue.Queue()
    user, password = broker.depot_credentials
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener")
    listener.username_pw_set(user, password)
    listener.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload))
    subscribed = threading.Event()
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.connect(broker.host, broker.port)
    listener.subscribe(events_topic("van-1"), qos=1)
    listener.loop_start()
    session = MqttSession(
        address(broker, "van-1"), "van-1", on_message=lambda _m: None, on_tick=tick
    )
    try:
        assert subscribed.wait(10.0)
        session.start()
        assert session.wait_connected(10.0)
        arm.set()
        session.wake()
        assert held.wait(10.0), "the network thread never ran its tick"
        info = session.client.publish(events_topic("van-1"), b"from another thread", qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        with pytest.raises(queue.Empty):
            got.get(timeout=1.0)  # written on this thread, it would be at the broker by now
        arm.clear()
        release.set()
        assert got.get(timeout=10.0) == b"from another thread"
    finally:
        release.set()
        session.stop()
        listener.loop_stop()
        listener.disconnect()
