"""The link simulator: bytes flow both ways and are counted; reset and blackhole cuts behave as a
radio would; restore lets clients reconnect. Against an echo server, then a real Mosquitto."""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from simulators.broker import Broker, find_mosquitto
from simulators.link import LinkProxy

WAIT_S = 3.0  # the most any single step may take; steps normally take milliseconds


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back, hangs up on b"bye"; counts bytes received and connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.lock = threading.Lock()
        self.received = 0
        self.accepted = 0

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.accepted += 1
        sock: socket.socket = self.request
        while data := _recv_or_eof(sock):
            with self.server.lock:
                self.server.received += len(data)
            if data == b"bye":
                return  # socketserver closes the connection
            sock.sendall(data)


def _recv_or_eof(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:  # a reset is an end of stream too
        return b""


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(WAIT_S)


@pytest.fixture
def link(echo: EchoServer) -> Iterator[LinkProxy]:
    with LinkProxy("127.0.0.1", echo.port, name="test-link") as proxy:
        yield proxy


def connect(link: LinkProxy) -> socket.socket:
    sock = socket.create_connection((link.host, link.port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The next read ends the stream (FIN or RST) within WAIT_S, without any data."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1024) == b""


def assert_refused(link: LinkProxy) -> None:
    """A new connection ends at once. The proxy accepts, then resets it — so fast that
    connect() itself may be the one to report it."""
    try:
        sock = connect(link)
    except ConnectionError:
        return
    with sock:
        assert_closed_by_peer(sock)


def test_bytes_flow_both_ways_and_are_counted(link: LinkProxy, echo: EchoServer) -> None:
    with connect(link) as sock:
        payload = bytes(range(256)) * 40  # 10 KiB, more than one segment
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        assert link.wait_for(lambda: link.bytes_down == len(payload), WAIT_S)
        assert link.bytes_up == len(payload)
        assert link.connections == 1 and link.open_connections == 1
        assert link.dropped_up == link.dropped_down == 0
    assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)
    assert echo.accepted == 1


def test_reset_closes_at_once_and_refuses_until_restore(link: LinkProxy) -> None:
    with connect(link) as before:
        before.sendall(b"ping")
        assert recv_exactly(before, 4) == b"ping"
        link.cut("reset")
        assert link.is_cut and link.cut_mode == "reset"
        assert_closed_by_peer(before)
    assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)

    assert_refused(link)
    assert link.connections == 2 and link.open_connections == 0

    link.restore()
    assert not link.is_cut
    with connect(link) as after:
        after.sendall(b"pong")
        assert recv_exactly(after, 4) == b"pong"


def test_blackhole_drops_everything_and_restore_closes_stale_streams(
    link: LinkProxy, echo: EchoServer
) -> None:
    with connect(link) as old:
        old.sendall(b"12345")
        assert recv_exactly(old, 5) == b"12345"
        link.cut("blackhole")

        old.sendall(b"lost in a dead zone")
        assert link.wait_for(lambda: link.dropped_up == 19, WAIT_S)
        assert link.bytes_up == 5 and echo.received == 5  # nothing reached the far end

        # A new connection is accepted but never reaches the upstream.
        with connect(link) as new:
            new.sendall(b"hello?")
            assert link.wait_for(lambda: link.dropped_up == 25, WAIT_S)
            assert link.connections == 2 and echo.accepted == 1

            # The connections stay open through the cut ...
            assert link.open_connections == 2
            link.restore()
            # ... and are shut on restore: their streams have holes.
            assert_closed_by_peer(old)
            assert_closed_by_peer(new)
    assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)

    with connect(link) as fresh:
        fresh.sendall(b"back")
        assert recv_exactly(fresh, 4) == b"back"
    assert link.bytes_up == 9 and link.dropped_down == 0


def test_a_close_at_either_end_reaches_the_other(link: LinkProxy, echo: EchoServer) -> None:
    with connect(link) as sock:
        sock.sendall(b"bye")  # the echo server hangs up
        assert_closed_by_peer(sock)
    assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)
    with connect(link) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    # The client hung up: the proxy ends the route, upstream included.
    assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)


def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]  # bound, not listening: connect is refused
        with LinkProxy("127.0.0.1", dead_port) as link:
            assert_refused(link)
            assert link.wait_for(lambda: link.open_connections == 0, WAIT_S)


def test_stop_ends_open_connections(echo: EchoServer) -> None:
    link = LinkProxy("127.0.0.1", echo.port)
    link.start()
    with connect(link) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        link.stop()
        assert_closed_by_peer(sock)
    assert link.open_connections == 0


# --- a real MQTT session through the link ------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed")
    with Broker(tmp_path, devices={"van-1": "van-1-secret"}) as b:
        yield b


class Van:
    """A paho MQTT v5 client with events for its connection's life; no automatic reconnect."""

    def __init__(self, broker: Broker, port: int) -> None:
        self.connected = threading.Event()
        self.gone = threading.Event()  # refused, reset or closed
        self.acks: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="van-1",
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(*broker.credentials("van-1"))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.gone.set()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        (self.gone if rc.is_failure else self.connected).set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.acked:
            self.acks[mid] = rc
            self.acked.notify_all()

    def publish(self, payload: bytes) -> int:
        return self.client.publish("lastmile/v1/van-1/events", payload, qos=1).mid

    def wait_puback(self, mid: int) -> ReasonCode:
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, WAIT_S), "no PUBACK"
            return self.acks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_session_survives_cuts_by_reconnecting(broker: Broker) -> None:
    received: list[bytes] = []
    got = threading.Condition()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with got:
            received.append(bytes(msg.payload))
            got.notify_all()

    depot = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="depot", protocol=MQTTProtocolVersion.MQTTv5
    )
    depot.username_pw_set(*broker.depot_credentials)
    subscribed = threading.Event()
    depot.on_connect = lambda c, *_: c.subscribe("lastmile/v1/+/events", qos=1)
    depot.on_subscribe = lambda *_: subscribed.set()
    depot.on_message = on_message
    depot.connect(broker.host, broker.port)
    depot.loop_start()
    assert subscribed.wait(WAIT_S)

    def wait_received(payload: bytes) -> None:
        with got:
            assert got.wait_for(lambda: payload in received, WAIT_S), received

    with LinkProxy(broker.host, broker.port, name="van-1-radio") as link:
        van = Van(broker, link.port)
        assert van.connected.wait(WAIT_S)
        assert not van.wait_puback(van.publish(b"before")).is_failure
        wait_received(b"before")

        # Reset: the van hears of it at once, and cannot get back in until restore.
        link.cut("reset")
        assert van.gone.wait(WAIT_S)
        van.close()
        try:
            refused = Van(broker, link.port)
        except ConnectionError:
            pass  # reset before paho finished connect(): refused too
        else:
            assert refused.gone.wait(WAIT_S) and not refused.connected.is_set()
            refused.close()
        link.restore()
        van = Van(broker, link.port)
        assert van.connected.wait(WAIT_S)

        # Blackhole: the publish leaves the van and vanishes; restore shuts the stream.
        link.cut("blackhole")
        dropped = link.dropped_up
        van.publish(b"during")
        assert link.wait_for(lambda: link.dropped_up > dropped, WAIT_S)
        assert not van.gone.is_set()  # no one has told the van anything
        link.restore()
        assert van.gone.wait(WAIT_S)
        van.close()

        van = Van(broker, link.port)
        assert van.connected.wait(WAIT_S)
        assert not van.wait_puback(van.publish(b"after")).is_failure
        wait_received(b"after")
        van.close()
        assert b"during" not in received  # it never reached the broker
        assert link.connections == 4 and link.bytes_up > 0 and link.bytes_down > 0

    depot.disconnect()
    depot.loop_stop()
