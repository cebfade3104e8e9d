"""The cellular link between a van and the depot's broker: a TCP proxy that tests can cut.

Owns: a listening socket on 127.0.0.1 (a port the OS picks), and for every client connection a
*route*: the client's socket, a socket to the upstream (the broker), and one thread per
direction copying bytes. A van connects to `proxy.port` instead of the broker's.

Cuts, as the radio sees them:

- ``cut("reset")`` — the network drops us hard (airplane mode, a tower handing over badly):
  every open connection is shut at once (FIN, then RST), and while cut a new connection is
  accepted and reset at once, so the client sees the cut on its next connect.
- ``cut("blackhole")`` — a dead zone: connections stay open but every byte in either direction
  is dropped, and so is a close; a new connection is accepted but never reaches the upstream.
  Each end only finds out through its own timeouts (MQTT keepalive). ``restore()`` then shuts
  every connection that lived through the cut — their byte streams have holes that would
  corrupt MQTT framing — so clients reconnect on clean streams.

``throttle(up_bytes_per_s)`` makes the uplink slow, as a weak cellular signal does: bytes from
the client are forwarded in slices of ``SLICE`` bytes, each followed by the time it takes at
that rate. ``throttle(None)`` lifts it.

Must never: parse or alter the bytes it forwards (it is a wire, not a broker), poll, or close
a socket another thread may still be blocked on (only the route's last pump closes it; others
wake pumps with ``shutdown()``).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal, Self

from simulators.errors import SimulatorError

log = logging.getLogger("simulators.link")

__all__ = ["CutMode", "LinkProxy"]

CutMode = Literal["reset", "blackhole"]

HOST: Final = "127.0.0.1"
CHUNK: Final = 64 * 1024  # one recv; MQTT packets of a van are far smaller
SLICE: Final = 1024  # granularity of a throttled uplink
CONNECT_TIMEOUT_S: Final = 5.0  # reaching the upstream; tests may shrink it
JOIN_TIMEOUT_S: Final = 5.0  # for the threads of a stopping proxy
_ABORTIVE_LINGER: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _shut(sock: socket.socket, *, abortive: bool) -> None:
    """Wake whoever is blocked on `sock` and send FIN; with `abortive`, its close sends RST."""
    with contextlib.suppress(OSError):
        if abortive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE_LINGER)
        sock.shutdown(socket.SHUT_RDWR)


class _Route:
    """One client connection and its upstream. `stale` once it has lived through a blackhole:
    from then on nothing crosses it, and it is only waiting to be shut."""

    def __init__(self, number: int, client: socket.socket, *, stale: bool) -> None:
        self.number = number
        self.client = client
        self.upstream: socket.socket | None = None
        self.stale = stale
        self._lock = threading.Lock()
        self._ended = False
        self._pumps = 0

    def attach_upstream(self, upstream: socket.socket) -> bool:
        """False if the route was shut while we were connecting (the caller closes upstream)."""
        with self._lock:
            if self._ended:
                return False
            self.upstream = upstream
            return True

    def shut(self, *, abortive: bool) -> None:
        with self._lock:
            self._ended = True
            socks = [s for s in (self.client, self.upstream) if s is not None]
        for sock in socks:
            _shut(sock, abortive=abortive)

    def pump_started(self) -> None:
        with self._lock:
            self._pumps += 1

    def pump_finished(self) -> bool:
        """True for the last pump out, which then owns closing the sockets."""
        with self._lock:
            self._pumps -= 1
            return self._pumps == 0

    def close(self) -> None:
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class LinkProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_host:upstream_port`, with cuts.

    >>> with LinkProxy(broker.host, broker.port, name="van-1") as link:
    ...     van = Van(broker_port=link.port)
    ...     link.cut("blackhole"); ...; link.restore()

    Counters (thread-safe): `bytes_up` (client to upstream) and `bytes_down` count bytes
    delivered; `dropped_up`/`dropped_down` count bytes lost in a blackhole; `connections`
    counts client connections accepted since start (refused ones during a reset included);
    `open_connections` those open now; `wait_for(predicate, timeout)` blocks until they say
    what a test waits for. A chunk a pump had already read when a cut began may still be
    delivered, like a packet already in the air.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, name: str = "") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.name = name or f"link-{upstream_port}"
        # Guards everything below; re-entrant so a wait_for() predicate may read the counters.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._cut: CutMode | None = None
        self._routes: set[_Route] = set()
        self._threads: set[threading.Thread] = set()
        self._bytes = {"up": 0, "down": 0}
        self._dropped = {"up": 0, "down": 0}
        self._connections = 0
        self._rate_up: float | None = None
        self._listener: socket.socket | None = None
        self._port = 0
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = False

    # --- lifecycle ---

    def start(self) -> None:
        """Listen on a free port of 127.0.0.1 and start accepting."""
        with self._lock:
            if self._listener is not None or self._stopped:
                raise SimulatorError(f"{self.name}: a proxy starts once")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, 0))
            listener.listen(64)
            self._port = listener.getsockname()[1]
            listener.setblocking(False)  # accept only when the selector says so
            self._listener = listener
            self._wake_r, self._wake_w = socket.socketpair()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name=f"{self.name}-accept", daemon=True
            )
            self._accept_thread.start()

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop accepting, shut every route and wait for all threads (at most `timeout` s)."""
        with self._lock:
            if self._listener is None or self._stopped:
                self._stopped = True
                return
            self._stopped = True
        assert self._wake_w is not None and self._accept_thread is not None
        self._wake_w.send(b"x")
        self._accept_thread.join(timeout)
        with self._lock:  # no route is added once the accept loop is over
            routes = list(self._routes)
        for route in routes:
            route.shut(abortive=False)
        deadline = time.monotonic() + timeout
        while True:  # again until none is left: a route may have started its second pump
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            if time.monotonic() >= deadline:
                log.warning("%s: %d threads still running after stop", self.name, len(threads))
                break
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"cut:{self._cut}" if self._cut else "up"
        port = self._port or None
        return f"<LinkProxy {self.name} :{port} -> {self.upstream[0]}:{self.upstream[1]} {state}>"

    # --- the controls ---

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The port clients connect to (after start())."""
        if not self._port:
            raise SimulatorError(f"{self.name}: not started")
        return self._port

    def cut(self, mode: CutMode = "reset") -> None:
        """Cut the link; see the module docstring for what each mode does. A second cut in
        another mode replaces the first (a reset also ends the blackholed connections)."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode {mode!r}: expected 'reset' or 'blackhole'")
        with self._lock:
            self._cut = mode
            routes = list(self._routes)
            if mode == "blackhole":
                for route in routes:
                    route.stale = True
        if mode == "reset":
            for route in routes:
                route.shut(abortive=True)
        log.info("%s: cut (%s), %d connections", self.name, mode, len(routes))

    def restore(self) -> None:
        """End the cut. After a blackhole, shut every connection that lived through it."""
        with self._lock:
            was, self._cut = self._cut, None
            stale = [r for r in self._routes if r.stale] if was == "blackhole" else []
        for route in stale:
            route.shut(abortive=True)
        if was is not None:
            log.info("%s: restored after %s, %d stale connections shut", self.name, was, len(stale))

    def throttle(self, up_bytes_per_s: float | None) -> None:
        """Limit client -> upstream to `up_bytes_per_s` (None: as fast as the host goes)."""
        if up_bytes_per_s is not None and up_bytes_per_s <= 0:
            raise ValueError("a throttle rate must be positive bytes per second")
        with self._lock:
            self._rate_up = up_bytes_per_s

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    @property
    def cut_mode(self) -> CutMode | None:
        return self._cut

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes["up"]

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._bytes["down"]

    @property
    def dropped_up(self) -> int:
        with self._lock:
            return self._dropped["up"]

    @property
    def dropped_down(self) -> int:
        with self._lock:
            return self._dropped["down"]

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._routes)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` (say, `lambda: link.dropped_up >= 5`) holds, re-checking it
        whenever a counter or the set of connections changes; False after `timeout` s."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # --- the machinery ---

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, _peer = self._listener.accept()
                    except OSError:  # the client gave up before we got to it
                        continue
                    self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._changed:
            self._connections += 1
            number = self._connections
            mode = self._cut
            route = None if mode == "reset" else _Route(number, client, stale=mode == "blackhole")
            if route is not None:
                self._routes.add(route)
            self._changed.notify_all()
        if route is None:  # cut by a reset: accept, then reset at once
            _shut(client, abortive=True)
            client.close()
            return
        self._spawn(self._run_route, route, name=f"{self.name}-{number}-up")

    def _run_route(self, route: _Route) -> None:
        """Reach the upstream (unless born in a blackhole), then pump client -> upstream here
        and upstream -> client in a second thread."""
        route.pump_started()
        if not route.stale:
            try:
                upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                # The broker is down: the client sees its connection reset, as it would.
                log.info("%s: upstream %s:%d unreachable: %s", self.name, *self.upstream, exc)
                route.shut(abortive=True)
                self._pump_done(route)
                return
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if route.attach_upstream(upstream):
                route.pump_started()
                name = f"{self.name}-{route.number}-down"
                self._spawn(self._pump, route, upstream, route.client, "down", name=name)
            else:
                upstream.close()
        self._pump(route, route.client, route.upstream, "up")

    def _pump(
        self,
        route: _Route,
        src: socket.socket,
        dst: socket.socket | None,
        direction: Literal["up", "down"],
    ) -> None:
        try:
            while True:
                try:
                    data = src.recv(CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                if route.stale or dst is None:
                    with self._changed:
                        self._dropped[direction] += len(data)
                        self._changed.notify_all()
                    continue
                rate = self._rate_up if direction == "up" else None
                try:
                    if rate is None:
                        dst.sendall(data)
                    else:
                        for at in range(0, len(data), SLICE):
                            piece = data[at : at + SLICE]
                            if route.stale:
                                break
                            dst.sendall(piece)
                            time.sleep(len(piece) / rate)  # the air time of a slow uplink
                except OSError:
                    break
                with self._changed:
                    self._bytes[direction] += len(data)
                    self._changed.notify_all()
            # A live link carries a close to the other end; a blackhole swallows it, and the
            # route lingers until restore() or stop() shuts it.
            if not route.stale:
                route.shut(abortive=False)
        finally:
            self._pump_done(route)

    def _pump_done(self, route: _Route) -> None:
        if route.pump_finished():
            route.close()
            with self._changed:
                self._routes.discard(route)
                self._changed.notify_all()
