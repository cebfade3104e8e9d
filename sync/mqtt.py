"""One MQTT v5 connection that stays up: connect, back off with jitter, reconnect, repeat.

Both ends of the sync (a device's uplink and the depot) keep a session through this class so
they share one reconnect policy. paho's own reconnect doubles a delay without jitter, which
makes a fleet reconnect in lock-step after a depot outage; here every wait is drawn at random
from the upper half of an exponentially growing window ("equal jitter").

It runs paho's network loop in one thread of its own; every callback (connected, message,
tick) runs in that thread, so the owner's state needs no locks against the network. That thread
is also the only one that touches the socket: a `client.publish()` from any other thread (the
depot's logistics publishing manifests) only queues the packet and wakes the loop. paho, run
without its own `loop_start()` thread, would otherwise write on the caller's thread, and two
threads in one TLS connection at once corrupt OpenSSL's state: the simulated day died now and
then with "free(): corrupted unsorted chunks" in `SSL_free` until this was so.

"Connected" means "will receive": the session subscribes to its owner's topics itself and says
it is connected only once the broker has acknowledged them (SUBACK). A broker drops a message
published before a subscription to it is in place, so an owner (or a test) that took the
CONNACK as "ready" lost whatever came in that gap.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from parcel.runlog import Trouble

log = logging.getLogger("sync.mqtt")

LOOP_WAKE_S = 1.0  # upper bound of an idle wait in the network thread; not a poll of work
CONNACK_TIMEOUT_S = 10.0
SUBACK_TIMEOUT_S = 10.0  # a broker that takes the connection but not the subscriptions is down
_CONNECTING = "connecting to the broker"
_SUBSCRIBING = "subscribing at the broker"
# CONNACK reason codes that say who we are, or how we proved it, was refused (MQTT v5 3.2.2.2:
# bad user name or password, not authorized, bad authentication method; paho reports a v3.1.1
# broker's return codes 4 and 5 as the first two).
_CREDENTIALS_REFUSED = frozenset({0x86, 0x87, 0x8C})


def _loop_writes(_client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
    """paho's write hook: nothing to do, the network thread's loop writes what is queued."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a session connects and as whom.

    `tls_ca` names the CA file the broker's certificate must chain to (TLS 1.2+); without it
    the session is plain TCP, for a broker on the same host or a trusted network.
    `tls_cert`/`tls_key` are the client's certificate and private key, for a broker that asks
    for one (`lastmile depot provision` makes them); they are used only over TLS.
    `mqtt5=False` is only for the embedded demo broker (amqtt speaks MQTT 3.1.1): the session
    then keeps a persistent 3.1.1 session and sends no v5 properties; the wire is unchanged.
    """

    host: str
    port: int
    username: str
    password: str
    mqtt5: bool = True
    tls_ca: str | None = None  # CA file to verify the broker with; None: plain TCP
    tls_cert: str | None = None  # client certificate (PEM) shown to the broker; None: none
    tls_key: str | None = None  # its private key (PEM); None: in the tls_cert file


def tls_client_files(base: Path, section: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`tls_cert` and `tls_key` of a configuration's `[broker]` section, relative to `base`.

    Raises ValueError, naming the key, when one is given without the other's prerequisites (a
    certificate needs `ca_file`: it is only ever shown over TLS) or names no readable file, so a
    device says so when it reads its configuration, not when it first connects.
    """
    found: list[str | None] = []
    for name in ("tls_cert", "tls_key"):
        value = section.get(name)
        if value is None:
            found.append(None)
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"broker.{name} must be a file name")
        path = base / value
        if not path.is_file():
            raise ValueError(f"broker.{name}: no file {path}")
        found.append(str(path))
    cert, key = found
    if key is not None and cert is None:
        raise ValueError("broker.tls_key needs broker.tls_cert")
    if cert is not None and "ca_file" not in section:
        raise ValueError("broker.tls_cert needs broker.ca_file (a certificate goes only over TLS)")
    return cert, key


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes


def new_properties(packet_type: int) -> Properties:
    """MQTT v5 properties for one packet type (paho's constructor is not annotated)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: uniform in [w/2, w] with w = min(high, low·2^attempt)."""
    window = min(high, low * (2 ** min(attempt, 30)))
    return rng.uniform(window / 2, window)


class MqttSession:
    """A persistent MQTT v5 session (clean_start=False, session expiry) with our reconnect policy.

    `subscriptions` (topic filter, QoS) are subscribed after every successful CONNACK; the
    session counts as connected (`connected`, `wait_connected`, ticks) only once the broker
    has acknowledged them, and drops and redials a connection whose SUBACK does not come
    within SUBACK_TIMEOUT_S. `on_connected(client)` runs after every successful CONNACK,
    right after the SUBSCRIBE went out; `on_message(msg)` for each message; `on_tick()` after
    every pass of the network loop while connected, at least once a second and right after
    any network activity.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        on_message: Callable[[mqtt.MQTTMessage], None],
        subscriptions: Sequence[tuple[str, int]] = (),
        on_connected: Callable[[mqtt.Client], None] = lambda _client: None,
        on_tick: Callable[[], None] = lambda: None,
        will: Will | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 24 * 3600,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self._subscriptions = list(subscriptions)
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_tick = on_tick
        self._keepalive = keepalive_s
        self._expiry = session_expiry_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._connected = threading.Event()  # CONNACK and SUBACK received: will receive
        self._link_up = False  # CONNACK received (network thread; read by stop() after join)
        self._suback_mid: int | None = None  # the SUBSCRIBE whose SUBACK is awaited
        self._ready_by = 0.0  # monotonic deadline of the CONNACK, then of the SUBACK
        self._thread: threading.Thread | None = None
        self.connects = 0
        self._problem: str | None = "not connected to the broker yet"
        # A broker out of reach is one warning, a reminder every few minutes and one line when
        # it is back; each attempt's own lines are details (debug).
        self._unreachable = Trouble(log)
        self._ever_opened = False
        self._name = client_id
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if address.mqtt5 else mqtt.MQTTv311,
            clean_session=None if address.mqtt5 else False,
            reconnect_on_failure=False,
        )
        c.username_pw_set(address.username, address.password)
        if address.tls_ca is not None:
            # Verify the broker's certificate and host name against the pinned CA; never fall
            # back to plaintext if TLS fails.
            c.tls_set(
                ca_certs=address.tls_ca, certfile=address.tls_cert, keyfile=address.tls_key
            )
        c.connect_timeout = 5.0
        if will is not None:
            c.will_set(will.topic, will.payload, qos=1, retain=True)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_subscribe = self._handle_subscribe
        # Any registered "socket wants writing" hook makes paho queue every outgoing packet for
        # the loop instead of writing it on the publishing thread (module docstring); the loop
        # itself already selects for writing whenever packets wait, so the hook does nothing.
        c.on_socket_register_write = _loop_writes
        self.client = c

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self._name}", daemon=True)
        self._thread.start()

    def thread_problem(self) -> str | None:
        """What is wrong with the network thread, for a service's watchdog (None: not started,
        running, or stopped on purpose): a thread that died took every send and receive with
        it, while the session still looks merely disconnected."""
        thread = self._thread
        if thread is None or thread.is_alive() or self._stop.is_set():
            return None
        return f"network thread {thread.name} is not running"

    def stop(
        self, before_disconnect: Callable[[mqtt.Client], None] | None = None, timeout: float = 5.0
    ) -> None:
        """Leave cleanly: optionally publish a last word, then DISCONNECT (no will is sent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        # The link, not `_connected`: the network thread clears that on its way out, and a
        # session stopped before its SUBACK still owes the broker a DISCONNECT.
        if self._link_up:
            if before_disconnect is not None:
                before_disconnect(self.client)
                self._drain_outgoing(timeout=2.0)
            self.client.disconnect()
            self.client.loop(timeout=0.2)
            self._link_up = False
        self._thread = None

    def wake(self) -> None:
        """Run the network loop's tick now instead of after up to LOOP_WAKE_S of idle wait
        (new work for `on_tick`, e.g. events just journaled). Safe from any thread.

        paho has no public call for this; its threaded publish wakes `select()` by writing a
        byte to the client's internal socket pair, and this does the same. With a paho that
        lacks the pair it does nothing: the tick then comes at most LOOP_WAKE_S later, as
        without this call.
        """
        wakeup = getattr(self.client, "_sockpairW", None)
        if wakeup is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            wakeup.send(b"0")

    def _drain_outgoing(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.client.want_write():
            self.client.loop(timeout=0.1)
        self.client.loop(timeout=0.1)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and subscribed: a message published from now on reaches us."""
        return self._connected.wait(timeout)

    @property
    def problem(self) -> str | None:
        """Why the session is not connected, in words for a person (None while it is): the
        broker refused the credentials, cannot be reached, did not answer, or dropped us."""
        return None if self._connected.is_set() else self._problem

    # --- the network thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stop.is_set():
            if not first:
                delay = backoff_delay(attempt, *self._backoff, self._rng)
                log.debug("%s: reconnecting in %.2f s", self.address.username, delay)
                if self._stop.wait(delay):
                    break
            first = False
            attempt += 1
            if self._open() and self._serve():
                attempt = 0
            elif not self._stop.is_set():
                self._unreachable.failing(
                    "%s: no connection to the broker: %s",
                    self.address.username,
                    self._problem or "the broker did not answer",
                )
        self._connected.clear()

    def _open(self) -> bool:
        try:
            if not self._ever_opened:
                self._ever_opened = True
                if self.address.mqtt5:
                    props = new_properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = self._expiry
                    self.client.connect(
                        self.address.host,
                        self.address.port,
                        self._keepalive,
                        clean_start=False,
                        properties=props,
                    )
                else:
                    self.client.connect(self.address.host, self.address.port, self._keepalive)
            else:
                self.client.reconnect()
        except (OSError, mqtt.WebsocketConnectionError, ValueError) as exc:
            self._problem = f"cannot reach the broker at {self._where()}: {exc}"
            log.debug(
                "%s: cannot reach broker %s:%d: %s",
                self.address.username,
                self.address.host,
                self.address.port,
                exc,
            )
            return False
        self._problem = _CONNECTING
        return True

    def _where(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    def _serve(self) -> bool:
        """Run the loop until the connection drops; True when the session got connected."""
        self._ready_by = time.monotonic() + CONNACK_TIMEOUT_S  # moved on at the CONNACK
        got_connected = False
        while not self._stop.is_set():
            rc = self.client.loop(timeout=LOOP_WAKE_S)
            if self._connected.is_set():
                got_connected = True
                try:
                    self._on_tick()
                except Exception:
                    log.exception("%s: tick failed", self.address.username)
            elif got_connected or time.monotonic() > self._ready_by:
                if self._problem == _CONNECTING:
                    self._problem = (
                        f"the broker at {self._where()} did not answer within "
                        f"{CONNACK_TIMEOUT_S:g} s"
                    )
                elif self._problem == _SUBSCRIBING:
                    self._problem = (
                        f"the broker at {self._where()} did not acknowledge the subscriptions "
                        f"within {SUBACK_TIMEOUT_S:g} s"
                    )
                    log.warning("%s: %s", self.address.username, self._problem)
                break
            if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                log.info("%s: connection lost (%s)", self.address.username, rc.name)
                if self._problem in (_CONNECTING, _SUBSCRIBING):
                    self._problem = f"the broker at {self._where()} hung up ({rc.name})"
                break
        if not self._stop.is_set():
            self._connected.clear()
            self._link_up = False
            self._suback_mid = None
            try:
                self.client.disconnect()
            except Exception:  # the socket may already be gone
                log.debug("disconnect after loss failed", exc_info=True)
        return got_connected

    # --- paho callbacks (in the network thread) ---------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        _u: object,
        _f: mqtt.ConnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("%s: broker refused the connection: %s", self.address.username, reason)
            if reason.value in _CREDENTIALS_REFUSED:
                self._problem = (
                    f"the broker refused the credentials of {self.address.username} ({reason})"
                )
            else:
                self._problem = f"the broker refused the connection ({reason})"
            return
        self._link_up = True
        if self._subscriptions:
            self._problem = _SUBSCRIBING
            self._ready_by = time.monotonic() + SUBACK_TIMEOUT_S
            rc, mid = client.subscribe(self._subscriptions)
            # Not sent (the socket went already): no SUBACK comes, and the loop redials.
            self._suback_mid = mid if rc == mqtt.MQTT_ERR_SUCCESS else None
        try:
            self._on_connected(client)
        except Exception:
            log.exception("%s: on_connected failed", self.address.username)
        if not self._subscriptions:
            self._ready()

    def _handle_subscribe(
        self,
        _c: mqtt.Client,
        _u: object,
        mid: int,
        reasons: list[ReasonCode],
        _p: Properties | None,
    ) -> None:
        if mid != self._suback_mid:
            return  # an owner's own SUBSCRIBE, or one of a connection gone since
        self._suback_mid = None
        for (topic, _qos), reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:
                # Redialling would not change the broker's mind: say so, and serve the rest.
                log.error(
                    "%s: the broker refused the subscription to %s (%s); nothing on it "
                    "will arrive",
                    self.address.username,
                    topic,
                    reason,
                )
        self._ready()

    def _ready(self) -> None:
        """Connected and subscribed: from now on a message published to us reaches us."""
        self.connects += 1
        self._problem = None
        self._connected.set()
        self._unreachable.over(
            "%s: connected to the broker at %s again", self.address.username, self._where()
        )

    def _handle_disconnect(
        self,
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if self._connected.is_set():  # not after a refused CONNACK: that reason stands
            self._problem = f"disconnected from the broker ({reason})"
        self._connected.clear()
        self._link_up = False
        self._suback_mid = None
        log.info("%s: disconnected: %s", self.address.username, reason)

    def _handle_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg)
        except Exception:
            # A bug on one message must not take the session down; the payload is logged by
            # the owner (the depot quarantines malformed payloads before this can happen).
            log.exception("%s: message handler failed on %s", self.address.username, msg.topic)
