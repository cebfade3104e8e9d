"""The depot's webhook outbox: customer and merchant notifications, signed, retried, never lost.

Owns: the `webhook_outbox` table (in the depot's database, created by `depot.store.migrations`,
so a parcel's state change and the notification about it commit in ONE transaction; its
statements are `depot.store.outbox`'s), the signature scheme below, and the sender thread that
POSTs due rows, retries with backoff and dead-letters what cannot be sent.
Must never: delete a row (the sender only changes a row's state), store a secret (a row names
the key id; the secret is looked up when signing), mark a row sent without a 2xx answer,
follow a redirect with a signed body, or commit the caller's transaction for it.

Signature scheme (version 1; receivers implement it from this text)::

    POST <url>
    Content-Type: application/json
    X-Lastmile-Event-Id: <event id>          idempotency key: receivers dedup on it
    X-Lastmile-Key-Id: <key id>              which shared secret signed it (rotation)
    X-Lastmile-Attempt: <n>                  1 on the first try; informational, not signed
    X-Lastmile-Signature: t=<unix seconds>,v1=<hex>

    <hex> = lowercase hex of HMAC-SHA256(secret, ASCII(str(t)) + b"." + body)

The body is the exact bytes stored at enqueue, signed and sent unchanged, unless the sender was
given a `render` hook: then it is what `render` makes of the stored bytes at each attempt, which
must be the same bytes every time (the depot's pickup notice opens its sealed credential there,
so the code is never stored in plaintext; see depot/pickup.py). The timestamp is inside
the MAC, so a receiver that rejects `|now - t| > 300 s` also rejects a replayed capture; the
event id is outside it but a receiver keys its dedup on it only after the MAC has verified the
body, which names the event too. A receiver may find several `v1=` entries during a key rotation
and must accept the request if any one verifies. `t` is the sending host's real wall clock
(`time.time()`), never the injected clock: a replay window is a fact about the real network, and
a simulated clock running 2400x would age every request past any tolerance in a fraction of a
real second.

Delivery promise: at-least-once on the wire, exactly-once per event id at a receiver that dedups.
A row is marked sent only after a 2xx; a crash (kill -9, power cut) between the receiver's 2xx
and the commit of that mark makes the row go out once more after restart, with the same event id.
A row for the same event id is never enqueued twice (INSERT OR IGNORE on the unique event id).

Outcomes per attempt:
- 2xx: sent.
- 4xx other than 408 and 429 (410 Gone included): the receiver refused the request itself, and
  sending the same bytes again cannot change its mind. Dead-lettered at once.
- Anything else (network error, timeout, 3xx, 408, 429, 5xx, a missing secret): retried after
  equal-jitter exponential backoff (`sync.mqtt.backoff_delay`: uniform in [w/2, w],
  w = min(backoff_max_s, backoff_base_s * 2^(attempts-1))), or later if the receiver's
  `Retry-After` asks for it (capped at backoff_max_s); after `max_attempts` tries it is dead.
A dead letter keeps its body, its attempts and its last error; `retry_dead()` requeues it.

The sender is one scheduler thread that makes all the outbox's writes (on the depot's one
connection, under its lock), plus a small thread pool for the POSTs. At most one request per
URL is in flight, so a receiver is never hammered in parallel; different URLs proceed in
parallel. Order is not promised: a row in backoff
does not hold back later rows, so one receiver being down never blocks another.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import queue
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from depot.errors import DepotError
from depot.store import DATABASE_ERRORS, Conn, DepotDatabase, open_database, outbox
from depot.store.outbox import Due
from depot.store.outbox import OutboxEntry as OutboxEntry  # the row type: re-exported
from depot.store.outbox import State as State
from depot.store.outbox import ensure_schema as ensure_schema
from sync.clock import Clock, SystemClock
from sync.mqtt import backoff_delay

log = logging.getLogger("depot.webhooks")

CONTENT_TYPE = "application/json"
SIGNATURE_HEADER = "X-Lastmile-Signature"
EVENT_ID_HEADER = "X-Lastmile-Event-Id"
KEY_ID_HEADER = "X-Lastmile-Key-Id"
ATTEMPT_HEADER = "X-Lastmile-Attempt"
USER_AGENT = "lastmile-depot-webhooks/1"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300.0

# Upper bound of one idle wait in the scheduler thread, in real seconds. Rows committed by
# another process (an operator's retry_dead, a second depot tool) cannot call wake(); this is
# how soon they are noticed. One indexed SELECT per period, not a poll of the network.
RECHECK_S = 2.0
DISPATCH_BATCH = 64  # due rows looked at per pass; the rest wait for the next one
CLAIM_MARGIN_S = 10.0  # a claim outlives three POST timeouts and this much more
ERROR_TEXT_MAX = 500  # characters of last_error kept per row
RESPONSE_READ_MAX = 2048  # bytes of a response body read (for the error text); the rest is unread

_EVENT_ID = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII: safe in a header, no CR/LF
_KEY_ID = re.compile(r"[\x21-\x7e]{0,200}")


class WebhookError(DepotError):
    """The outbox refused a row (bad event id, URL or body) or its schema cannot be used."""


class SignatureError(WebhookError):
    """A webhook's signature does not verify; `reason` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- signing -------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Lastmile-Signature` value for `body` signed at `timestamp` (unix seconds)."""
    mac = hmac.new(secret, f"{int(timestamp)}.".encode("ascii") + body, hashlib.sha256)
    return f"t={int(timestamp)},{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: bytes,
    header: str,
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> int:
    """Check a signature header against `body`; return its timestamp or raise SignatureError.

    It raises rather than returning False so that a receiver cannot forget to look at the
    answer. `now` is the receiver's unix time in seconds; a timestamp further than
    `tolerance_s` from it, in either direction, is refused (a replay, or a badly set clock).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed signature header element {part.strip()!r}")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError("missing, repeated or non-numeric timestamp")
            timestamp = int(value)
        elif name == SIGNATURE_VERSION:
            candidates.append(value)
        # Other schemes (v0, a future v2) are ignored, so a receiver survives an upgrade.
    if timestamp is None:
        raise SignatureError("no timestamp in the signature header")
    if not candidates:
        raise SignatureError(f"no {SIGNATURE_VERSION} signature in the header")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"timestamp {timestamp} is {now - timestamp:+.0f} s from now "
            f"(tolerance {tolerance_s:.0f} s)"
        )
    expected = sign(secret, timestamp, body).rpartition("=")[2]
    # compare_digest on every candidate: no early exit that leaks which one nearly matched.
    matches = [hmac.compare_digest(expected, c) for c in candidates]
    if not any(matches):
        raise SignatureError("signature does not match the body")
    return timestamp


# --- the outbox table ----------------------------------------------------------------------


def _autocommits(conn: Conn) -> bool:
    """True when a statement on `conn` now would commit by itself (no transaction around it).

    In Python's legacy mode (isolation_level "" and friends) the module opens a transaction
    before an INSERT, and the caller commits later; only an autocommit connection that has not
    run BEGIN would commit the row alone, apart from the state change it reports.
    """
    if conn.in_transaction:
        return False
    level = getattr(conn, "isolation_level", None)  # sqlite3's legacy mode; None: autocommit
    return level is None or getattr(conn, "autocommit", None) is True


def encode_body(body: bytes | Mapping[str, Any]) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
        try:
            json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WebhookError(f"webhook body is not UTF-8 JSON: {exc}") from None
        return raw
    try:
        text = json.dumps(
            dict(body), ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise WebhookError(f"webhook body cannot be JSON: {exc}") from None
    return text.encode("utf-8")


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook URL {url!r} is not an http(s) URL with a host")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise WebhookError(f"webhook URL {url!r} contains whitespace or control characters")


def enqueue(
    conn: Conn,
    *,
    event_id: str,
    url: str,
    body: bytes | Mapping[str, Any],
    key_id: str,
    now_ns: int,
) -> bool:
    """Add a notification to the outbox inside the caller's transaction; True if it is new.

    Nothing is committed here: the row commits (or rolls back) with the state change it
    reports, which is why the outbox lives in the depot's own file. The event id is the
    idempotency key: the first enqueue of an id wins and later ones are ignored, so replaying
    a projection after a crash cannot notify anyone twice. A mapping body is stored as compact
    JSON with sorted keys; those exact bytes are what gets signed and sent.

    Raises WebhookError, before anything is written, for an event id that is not visible ASCII
    (it travels in a header), a URL that is not http(s), a body that is not JSON, or a call
    on an autocommit connection outside a transaction.
    """
    if not _EVENT_ID.fullmatch(event_id):
        raise WebhookError(f"event id {event_id!r} must be 1-200 visible ASCII characters")
    if not _KEY_ID.fullmatch(key_id):
        raise WebhookError(f"key id {key_id!r} must be at most 200 visible ASCII characters")
    _check_url(url)
    raw = encode_body(body)
    if _autocommits(conn):
        raise WebhookError(
            "enqueue outside a transaction: BEGIN first, so the notification commits with "
            "the state change it reports"
        )
    if outbox.add(conn, event_id=event_id, url=url, body=raw, key_id=key_id, now_ns=now_ns):
        return True
    stored = outbox.stored_content(conn, event_id)
    if stored is not None and stored != (url, raw, key_id):
        log.warning(
            "webhook %s enqueued again with different content; the first version stands",
            event_id,
        )
    return False


def stats(conn: Conn) -> dict[str, int]:
    """Row counts by state and the attempts made over all rows (the outbox is the truth)."""
    return outbox.counts(conn)


def entry(conn: Conn, event_id: str) -> OutboxEntry | None:
    """The outbox row for one event id, whatever its state."""
    return outbox.entry(conn, event_id)


def dead_letters(conn: Conn, limit: int | None = None) -> list[OutboxEntry]:
    """Dead letters, oldest first: what a person must look at (kept forever, never deleted)."""
    return outbox.dead_letters(conn, limit)


def retry_dead(conn: Conn, event_id: str) -> bool:
    """Requeue a dead letter by hand (an operator action, after fixing the receiver or a key).

    The row gets a fresh budget of attempts and is due at once (next_attempt_ns = 0 is due on
    any clock); its last error stays until the next attempt replaces it. Commit is the caller's
    (an autocommit connection commits at once); a sender in another process notices the row
    within RECHECK_S, one in this process at once after `wake()`. True if a dead row changed.
    """
    return outbox.retry_dead(conn, event_id)


# --- delivery ------------------------------------------------------------------------------


def _permanent(status: int) -> bool:
    """A 4xx other than 408 (timeout) and 429 (slow down): the receiver refused the request."""
    return 400 <= status < 500 and status not in (408, 429)


def _retry_after_s(headers: Message | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None


def _clean(text: str) -> str:
    return " ".join(text.split())[:ERROR_TEXT_MAX]


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: a signed body goes only to the URL it was enqueued for.

    urllib would turn a POST answered 302 into a GET without the body, whose 200 would look
    like a delivery. Returning None makes urllib raise the 3xx as an HTTPError, which the
    sender counts as a failed attempt.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


@dataclass(frozen=True)
class _Outcome:
    due: Due
    status: int | None  # the HTTP status, if a response came back
    error: str | None  # None exactly when the status was 2xx
    retry_after_s: float | None = None


class WebhookSender:
    """The thread that delivers due outbox rows from the depot's database file.

    It has its own SQLite connection (WAL, synchronous=FULL) and is the only writer of
    delivery state; the depot only inserts rows and calls `wake()` after committing them.
    Backoff is scheduled on `clock` (simulated time in the simulated day); a wait is turned
    into real seconds through the clock's `speed` (1 for SystemClock) and never exceeds
    RECHECK_S. `delivered`, `retried` and `dead_lettered` count this instance's recorded
    outcomes since it was made; the table is the truth.
    """

    def __init__(
        self,
        database: str | Path | DepotDatabase,
        *,
        secret_for: Callable[[str], bytes],
        clock: Clock | None = None,
        max_attempts: int = 8,
        backoff_base_s: float = 30.0,
        backoff_max_s: float = 3600.0,
        timeout_s: float = 5.0,
        concurrency: int = 4,
        rng: random.Random | None = None,
        render: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """`render(stored body) -> body to send`: see the module docstring; an exception from
        it fails the attempt like a network error (retried, then dead-lettered), so a key put
        back by the operator still lets a notice go."""
        if max_attempts < 1 or concurrency < 1:
            raise ValueError("max_attempts and concurrency must be at least 1")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_base_s <= backoff_max_s")
        # The depot's Database (shared connection and lock), or a path: then the sender opens
        # its own at start() and closes it at stop().
        self._given = database
        self._database: DepotDatabase | None = (
            database if isinstance(database, DepotDatabase) else None
        )
        self.clock: Clock = clock or SystemClock()
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._secret_for = secret_for
        self._render = render
        self._rng = rng or random.Random()
        speed = float(getattr(self.clock, "speed", 1.0))
        self._speed = speed if speed > 0 else 1.0
        self._opener = urllib.request.build_opener(_RefuseRedirects())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._done: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        self._unapplied: list[_Outcome] = []
        # Rows whose POST is running or whose outcome is not yet written; only the scheduler
        # thread touches these (pool threads hand results over through `_done`).
        self._in_flight: dict[int, Due] = {}
        self._futures: dict[int, concurrent.futures.Future[None]] = {}
        self.delivered = 0
        self.retried = 0
        self.dead_lettered = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database (creating the outbox tables if needed) and start delivering.

        The connection is opened here, in the caller's thread, so an unusable database
        raises now instead of dying quietly inside the thread.
        """
        if self._thread is not None:
            return
        if self._database is None:  # opened here, so an unusable database raises now
            self._database = open_database(self._given)
        self._stop.clear()
        # POSTs cut off by an earlier stop() were never recorded: their rows are pending
        # again, and a late answer from one of them goes to the old queue, not this one.
        self._done = queue.SimpleQueue()
        self._unapplied.clear()
        self._in_flight.clear()
        self._futures.clear()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="webhook-post"
        )
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop promptly: POSTs already on the wire get up to timeout_s to finish and be
        recorded; one cut off is recorded as nothing and goes out again after a restart."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(self.timeout_s + 10.0)
        self._thread = None

    def wake(self) -> None:
        """Look at the outbox now (call after committing new rows or a retry_dead)."""
        self._wake.set()

    def __enter__(self) -> WebhookSender:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the scheduler thread --------------------------------------------------------------

    def _run(self) -> None:
        db = self._database
        assert db is not None and self._pool is not None
        try:
            while not self._stop.is_set():
                # Cleared before looking, so a wake() during this pass is not lost.
                self._wake.clear()
                try:
                    self._apply(db)
                    now = self.clock.wall_ns()
                    with db.transaction() as conn:
                        self._dispatch(db, conn, now)
                    with db.reading() as conn:
                        wait = self._wait_s(conn, now)
                except DATABASE_ERRORS:
                    # A locked or failing database must not kill the thread: outcomes stay
                    # in memory (their rows stay in flight) until they can be written.
                    log.exception("webhook outbox: database error; trying again shortly")
                    wait = RECHECK_S
                self._wake.wait(wait)
            concurrent.futures.wait(list(self._futures.values()), timeout=self.timeout_s)
            try:
                self._apply(db)
                self._release(db)
            except DATABASE_ERRORS:
                log.exception("webhook outbox: outcomes lost at stop; those rows will resend")
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            if not isinstance(self._given, DepotDatabase):  # ours: opened at start()
                db.close()
                self._database = None

    def _dispatch(self, db: DepotDatabase, conn: Conn, now: int) -> None:
        """Claim due rows and hand them to the pool.

        A claimed row's `next_attempt_ns` moves a lease ahead, in the same transaction that
        chose it (rows another depot worker holds are skipped), so no other worker sends it
        meanwhile; the outcome sets the real next attempt. A worker killed half-way lets go
        when the lease runs out.
        """
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return
        busy_urls = {d.url for d in self._in_flight.values()}
        rows = outbox.due(conn, db, now_ns=now, limit=DISPATCH_BATCH)
        lease = now + int((self.timeout_s * 3 + CLAIM_MARGIN_S) * self._speed * 1e9)
        for due in rows:
            if due.id in self._in_flight or due.url in busy_urls:
                continue
            outbox.lease(conn, due.id, lease)
            busy_urls.add(due.url)
            self._in_flight[due.id] = due
            self._futures[due.id] = self._submit(due)
            free -= 1
            if free == 0:
                break

    def _release(self, db: DepotDatabase) -> None:
        """At stop: rows whose POST was cut off are due again at once, not when the lease ends."""
        if not self._in_flight:
            return
        now = self.clock.wall_ns()
        with db.transaction() as conn:
            outbox.release(conn, self._in_flight, now)

    def _submit(self, due: Due) -> concurrent.futures.Future[None]:
        assert self._pool is not None
        done = self._done

        def post() -> None:
            try:
                outcome = self._post(due)
            except BaseException as exc:  # never leave a row in flight forever
                outcome = _Outcome(due, None, _clean(f"sender bug: {exc!r}"))
            done.put(outcome)
            self._wake.set()

        return self._pool.submit(post)

    def _wait_s(self, conn: Conn, now: int) -> float:
        """Real seconds until the next row falls due (rows due now but not sent wait for an
        in-flight POST to finish, which wakes this thread)."""
        next_due = outbox.next_due_ns(conn, now)
        if next_due is None:
            return RECHECK_S
        real = (next_due - self.clock.wall_ns()) / 1e9 / self._speed
        return min(RECHECK_S, max(0.0, real))

    # --- one POST (in a pool thread) -------------------------------------------------------

    def _post(self, due: Due) -> _Outcome:
        try:
            secret = self._secret_for(due.key_id)
        except Exception as exc:
            return _Outcome(due, None, _clean(f"no secret for key id {due.key_id!r}: {exc}"))
        body = due.body
        if self._render is not None:
            try:
                body = self._render(due.body)
            except Exception as exc:  # a row that cannot be rendered now may be later
                return _Outcome(due, None, _clean(f"cannot make the body: {exc}"))
        request = urllib.request.Request(
            due.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": CONTENT_TYPE,
                "User-Agent": USER_AGENT,
                EVENT_ID_HEADER: due.event_id,
                KEY_ID_HEADER: due.key_id,
                ATTEMPT_HEADER: str(due.attempts + 1),
                SIGNATURE_HEADER: sign(secret, int(time.time()), body),
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(RESPONSE_READ_MAX)
                return _Outcome(due, int(response.status), None)
        except urllib.error.HTTPError as exc:  # every non-2xx answer, 3xx included
            try:
                detail = exc.read(RESPONSE_READ_MAX).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            error = _clean(f"HTTP {exc.code} {exc.reason}: {detail}")
            return _Outcome(due, exc.code, error, _retry_after_s(exc.headers))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return _Outcome(due, None, _clean(f"{type(exc).__name__}: {reason}"))

    # --- recording outcomes (scheduler thread) ---------------------------------------------

    def _apply(self, db: DepotDatabase) -> None:
        while True:
            try:
                self._unapplied.append(self._done.get_nowait())
            except queue.Empty:
                break
        if not self._unapplied:
            return
        now = self.clock.wall_ns()
        with db.transaction() as conn:
            verdicts = [self._record(conn, o, now) for o in self._unapplied]
        for outcome, verdict in zip(self._unapplied, verdicts, strict=True):
            self._in_flight.pop(outcome.due.id, None)
            self._futures.pop(outcome.due.id, None)
            if verdict == "sent":
                self.delivered += 1
            elif verdict == "dead":
                self.dead_lettered += 1
            else:
                self.retried += 1
        self._unapplied.clear()

    def _record(self, conn: Conn, o: _Outcome, now: int) -> str:
        due = o.due
        attempts = due.attempts + 1
        if o.error is None:
            outbox.mark_sent(conn, due.id, attempts=attempts, now_ns=now, status=o.status)
            log.debug("webhook %s sent (HTTP %s, attempt %d)", due.event_id, o.status, attempts)
            return "sent"
        if o.status is not None and _permanent(o.status):
            error = _clean(f"permanent refusal, not retried: {o.error}")
        elif attempts >= self.max_attempts:
            error = _clean(f"gave up after {attempts} attempts: {o.error}")
        else:
            delay = backoff_delay(attempts - 1, self.backoff_base_s, self.backoff_max_s, self._rng)
            if o.retry_after_s is not None:
                # Not before the receiver asked, but never parked beyond our own ceiling.
                delay = max(delay, min(o.retry_after_s, self.backoff_max_s))
            outbox.schedule_retry(
                conn,
                due.id,
                attempts=attempts,
                next_attempt_ns=now + int(delay * 1e9),
                error=o.error,
                status=o.status,
            )
            log.info(
                "webhook %s attempt %d failed (%s); retrying in %.1f s",
                due.event_id,
                attempts,
                o.error,
                delay,
            )
            return "retry"
        outbox.mark_dead(
            conn, due.id, attempts=attempts, now_ns=now, error=error, status=o.status
        )
        log.warning("webhook %s dead-lettered: %s", due.event_id, error)
        return "dead"
