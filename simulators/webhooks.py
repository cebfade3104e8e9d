"""A merchant's (or the customer gateway's) webhook endpoint: a real HTTP server tests can break.

Owns: an HTTP server on 127.0.0.1 (a port the OS picks, kept across `down()`/`up()`), a record
of every request it answered, and its own check of the depot's signatures, written from the
scheme documented in `depot.webhooks` without importing it, so a framing bug cannot hide on
both sides:

    X-Lastmile-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>
    X-Lastmile-Key-Id:    which secret signed it
    X-Lastmile-Event-Id:  the idempotency key this receiver dedups on

It answers like a well-behaved receiver: 200 for a verified request (a duplicate event id
included: it was already handled, so it is acknowledged again and counted as a duplicate),
401 for a signature that does not verify. Controls, as a receiver's operator sees them:

- ``down("refuse")``: the service is gone. The listening socket is closed, so a connection
  is refused. ``down("503")``: a load balancer answers 503 for a dead backend.
- ``up()``: back on the same port.
- ``fail_next(n, status=500)``: the next n requests get `status` (a crash, a 404, a 429).
- ``slow(seconds)``: answer every request that late (the sender's timeout fires first).

Must never: import the sender, answer 2xx to a request whose signature did not verify, or
count an event as received when it answered anything but 2xx.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal, Self

from simulators.errors import SimulatorError

log = logging.getLogger("simulators.webhooks")

__all__ = ["DownMode", "ReceivedRequest", "WebhookReceiver"]

DownMode = Literal["refuse", "503"]

TOLERANCE_S: Final = 300.0  # how far a signature's timestamp may be from this host's clock
POLL_S: Final = 0.05  # serve_forever's shutdown poll: how fast down()/close() return
MAX_BODY: Final = 1 << 20  # a notification is small; a larger request is refused unread


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it and what it answered."""

    path: str
    event_id: str | None
    key_id: str | None
    attempt: str | None  # the sender's X-Lastmile-Attempt header, as sent
    body: Any  # the parsed JSON, or None when the body was not JSON
    raw: bytes
    verified: bool
    why_not: str | None  # why the signature did not verify
    status: int  # what the receiver answered
    at: float  # time.monotonic() when the answer was decided
    wall: float  # time.time() at the same moment


def _check_signature(
    secret: bytes, header: str | None, body: bytes, now: float, tolerance_s: float
) -> str | None:
    """Why the signature header does not verify `body`, or None when it does."""
    if not header:
        return "no signature header"
    stamp: str | None = None
    macs: list[str] = []
    for element in header.split(","):
        key, _, value = element.strip().partition("=")
        if key == "t":
            stamp = value
        elif key == "v1":
            macs.append(value.lower())
    if stamp is None or not (stamp.isascii() and stamp.isdigit()):
        return "no numeric timestamp"
    if abs(now - int(stamp)) > tolerance_s:
        return f"timestamp {stamp} outside {tolerance_s:.0f} s of now"
    want = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(want, mac) for mac in macs):
        return "signature mismatch"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # up() binds the port again while old connections linger

    def __init__(self, address: tuple[str, int], receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def do_GET(self) -> None:
        self.send_error(405, "webhooks are POSTed")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1, listening from construction until `close()`.

    >>> with WebhookReceiver({"merchant-7": b"s3cret..."}) as rx:
    ...     enqueue(..., url=rx.url("/hooks/parcels"), key_id="merchant-7")
    ...     rx.wait_for(lambda: rx.unique_events >= 1, timeout=2)

    `secrets` maps key ids to secrets; a single bytes secret is used whatever the key id.
    `now` is the clock signatures are checked against (real time unless a test says so).
    Figures (thread-safe): `received` (every request answered, in order), `unique_events`
    (distinct event ids answered 2xx), `duplicates` (2xx answers to an event id already
    answered 2xx), `bad_signatures` (requests whose signature did not verify, whatever was
    answered). `wait_for(predicate, timeout)` blocks until they say what a test waits for.
    """

    def __init__(
        self,
        secrets: Mapping[str, bytes] | bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance_s: float = TOLERANCE_S,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._secrets: Mapping[str, bytes] | bytes = (
            bytes(secrets) if isinstance(secrets, bytes | bytearray) else dict(secrets)
        )
        self._tolerance_s = tolerance_s
        self._now = now
        # Guards everything below; re-entrant so a wait_for() predicate may read the figures.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._received: list[ReceivedRequest] = []
        self._accepted: dict[str, int] = {}  # event id -> 2xx answers
        self._bad_signatures = 0
        self._fail: list[tuple[int, float | None]] = []  # statuses for the next requests
        self._delay_s = 0.0
        self._mode: DownMode | None = None
        self._closed = False
        self._host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._listen(port)
        assert self._server is not None
        self._port: int = self._server.server_address[1]

    # --- lifecycle ---

    def _listen(self, port: int) -> None:
        try:
            server = _Server((self._host, port), self)
        except OSError as exc:
            raise SimulatorError(f"webhook receiver cannot listen on port {port}: {exc}") from exc
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name=f"webhook-receiver-{server.server_address[1]}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _unlisten(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()  # stops accepting; requests in progress finish on their own
            server.server_close()
        if thread is not None:
            thread.join(5.0)

    def close(self) -> None:
        """Stop listening for good (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unlisten()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WebhookReceiver :{self._port} {self._mode or 'up'}>"

    # --- the controls ---

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/webhooks") -> str:
        """The URL a sender POSTs to for `path` on this receiver."""
        return f"http://{self._host}:{self._port}/{path.lstrip('/')}"

    def down(self, mode: DownMode = "refuse") -> None:
        """Go down: "refuse" closes the listening socket, "503" answers every request 503."""
        if mode not in ("refuse", "503"):
            raise ValueError(f"down mode {mode!r}: expected 'refuse' or '503'")
        with self._lock:
            if self._closed:
                raise SimulatorError("the webhook receiver is closed")
            self._mode = mode
        if mode == "refuse":
            self._unlisten()
        elif self._server is None:  # from "refuse" to "503": listen again to answer 503
            self._listen(self._port)

    def up(self) -> None:
        """Serve normally again, on the same port."""
        with self._lock:
            if self._closed:
                raise SimulatorError("the webhook receiver is closed")
            self._mode = None
        if self._server is None:
            self._listen(self._port)

    def fail_next(self, n: int, status: int = 500, *, retry_after: float | None = None) -> None:
        """Answer the next `n` requests with `status` (and a Retry-After header if given)."""
        with self._lock:
            self._fail.extend([(status, retry_after)] * n)

    def slow(self, seconds: float) -> None:
        """Wait this long before answering each request from now on (0 to stop)."""
        with self._lock:
            self._delay_s = max(0.0, seconds)

    # --- the figures ---

    @property
    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._received)

    @property
    def unique_events(self) -> int:
        with self._lock:
            return len(self._accepted)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self._accepted.values())

    @property
    def bad_signatures(self) -> int:
        with self._lock:
            return self._bad_signatures

    def accepted(self, event_id: str) -> int:
        """How many times this event id was answered 2xx."""
        with self._lock:
            return self._accepted.get(event_id, 0)

    def bodies(self, path_prefix: str = "/") -> list[Any]:
        """What the endpoint's owner has read: the JSON bodies of the verified requests it
        answered 2xx whose path starts with `path_prefix` (a customer's inbox is
        `"/customer"`), oldest first. A retried notice is there once per 2xx answer."""
        with self._lock:
            return [
                r.body
                for r in self._received
                if r.verified and 200 <= r.status < 300 and r.path.startswith(path_prefix)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds, re-checked after every answered request; False
        after `timeout` s."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # --- one request (in a server thread) ---

    def _secret(self, key_id: str | None) -> bytes | None:
        if isinstance(self._secrets, bytes):
            return self._secrets
        return self._secrets.get(key_id) if key_id is not None else None

    def _handle(self, h: _Handler) -> None:
        try:
            length = int(h.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            h.send_error(413 if length > MAX_BODY else 400, "bad Content-Length")
            return
        raw = h.rfile.read(length)
        event_id = h.headers.get("X-Lastmile-Event-Id")
        key_id = h.headers.get("X-Lastmile-Key-Id")
        secret = self._secret(key_id)
        why_not = (
            f"unknown key id {key_id!r}"
            if secret is None
            else _check_signature(
                secret, h.headers.get("X-Lastmile-Signature"), raw, self._now(), self._tolerance_s
            )
        )
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        with self._lock:
            delay = self._delay_s
        if delay:
            time.sleep(delay)
        retry_after: float | None = None
        with self._changed:
            if self._mode == "503":
                status = 503
            elif self._fail:
                status, retry_after = self._fail.pop(0)
            elif why_not is not None:
                status = 401
            else:
                status = 200
            if why_not is not None:
                self._bad_signatures += 1
            elif 200 <= status < 300 and event_id is not None:
                self._accepted[event_id] = self._accepted.get(event_id, 0) + 1
            self._received.append(
                ReceivedRequest(
                    path=h.path,
                    event_id=event_id,
                    key_id=key_id,
                    attempt=h.headers.get("X-Lastmile-Attempt"),
                    body=body,
                    raw=raw,
                    verified=why_not is None,
                    why_not=why_not,
                    status=status,
                    at=time.monotonic(),
                    wall=time.time(),
                )
            )
            self._changed.notify_all()
        reply = json.dumps({"ok": 200 <= status < 300, "error": why_not}).encode()
        # The sender may have given up (a timeout under slow()); its leaving is not our error.
        with contextlib.suppress(OSError):
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(reply)))
            if retry_after is not None:
                h.send_header("Retry-After", str(int(retry_after)))
            h.end_headers()
            h.wfile.write(reply)
