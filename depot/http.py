"""The depot's HTTP JSON API: parcel states, timelines, EPCIS, vans, devices, alarms, health.

Owns the URL routes and their JSON answers::

    GET /health                 {"ok": true, "problems": [], "parcels": n, "by_state": {...},
                                 "broker": {...}, "database": {...}, "webhooks": {...}, ...};
                                 503 with "ok": false and the problems, one sentence each
    GET /parcels[?state=S]      {"count": n, "parcels": [summary, ...]}
    GET /parcels/{id}           the parcel's track (state, attempts, van, timeline, ...)
    GET /parcels/{id}/epcis     an EPCIS 2.0 document with that parcel's events
    GET /epcis                  an EPCIS 2.0 document with every parcel's events
    GET /vans                   {"vans": {van: {"manifest_version", "day", "updated"}}}
    GET /devices                {"count": n, "devices": [{"device", "state", "last_seen",
                                 "journal", "last_seq", "backlog", "alarms_open", ...}]}
    GET /alarms[?state=S]       {"count": n, "alarms": [...]}, newest first; S is open (the
                                 default), acknowledged or all
    POST /alarms/{id}/ack       body {"by": "name", "note": "..."} (both optional): the
                                 acknowledged alarm; 404 unknown, 409 acknowledged before
    GET /photos/{sha256}        a proof-of-delivery photo (image/jpeg), once stored and verified
    GET /parcels/{id}/extend-hold?token=T
                                the customer's page behind the pickup notice's link: one button
                                (text/html); it POSTs to the same URL
    POST /parcels/{id}/extend-hold?token=T
                                202 {"requested": command id, "hours": h}: the depot asks the
                                locker for more time (`DepotService.extend_hold`); 403 for a
                                token the depot did not make, 409 when the hold cannot be
                                extended (not in a locker, extended before, already over)

`/health` is the depot's own judgement (`depot.health`, handed in as `health`): 200 only when
the broker has the depot connected, the database answers, ingest keeps up and the webhook
outbox is neither backlogged nor holding dead letters. An API started without one (a tool, a
test of the book alone) can vouch only for its database.

Every answer but a photo is `application/json`, errors included: 404 for an unknown parcel,
alarm, photo or path, 400 for a query or body it does not understand, 405 (with `Allow`) for a
method the path does not take, 411/413 for a POST without a length or too long, 503 when the
database is busy past its timeout, 500 with no detail otherwise; the stack trace goes to the
log, never to the client.

Must never: change the book (every GET reads through its own read-only connection, opened and
closed within the request, since a connection belongs to one thread; the one write is an
alarm's acknowledgement, one transaction on the depot's writer), or listen beyond 127.0.0.1
unless configured to (the API has no authentication; put it behind something that has).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast

from depot import alarms
from depot.epcis import export_epcis
from depot.errors import DepotError
from depot.pickup import ExtendRefused
from depot.store import DATABASE_ERRORS, Conn, DepotDatabase, events, is_busy
from depot.tracking import STATES, ParcelBook, UnknownParcelError, iso_utc
from sync.clock import Clock, SystemClock

log = logging.getLogger(__name__)

ALLOWED = "GET, HEAD"
MAX_BODY = 64 * 1024  # an acknowledgement is a name and a note
T = TypeVar("T")
Health = Callable[[], dict[str, Any]]
# extend_hold(parcel, token) -> (command id, hours); ExtendRefused says why not to the customer.
ExtendHold = Callable[[str, str], tuple[str, float]]
_BOOK_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, DepotError)


class _ApiError(DepotError):
    """An answer other than 200, with the message the client may see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        allow: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow
        self.extra = extra or {}


@dataclass(frozen=True)
class _Json:
    """A JSON answer with a status other than 200 that is not an error (/health's 503)."""

    status: int
    doc: dict[str, Any]


@dataclass(frozen=True)
class _Bytes:
    """An answer that is not JSON (a photo, the extend-hold page)."""

    content_type: str
    data: bytes
    immutable: bool = True  # a photo's URL is its hash; a page is made afresh each time


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    book: ParcelBook
    health: Health | None
    clock: Clock
    extend_hold: ExtendHold | None


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "lastmile-depot"
    sys_version = ""

    # --- methods -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._answer(self._route, send_body=True)

    def do_HEAD(self) -> None:
        self._answer(self._route, send_body=False)

    def do_POST(self) -> None:
        self._answer(self._route_post, send_body=True)

    def _not_allowed(self) -> None:
        self._send(405, {"error": f"method {self.command} not allowed"}, extra={"Allow": ALLOWED})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # --- routing -------------------------------------------------------------------------

    def _answer(self, route: Callable[[], Any], *, send_body: bool) -> None:
        headers: dict[str, str] = {}
        try:
            status, doc = 200, route()
            if isinstance(doc, _Bytes):
                self._send_bytes(doc, send_body=send_body)
                return
            if isinstance(doc, _Json):
                status, doc = doc.status, doc.doc
        except _ApiError as exc:
            status, doc = exc.status, {"error": exc.message, **exc.extra}
            if exc.allow is not None:
                headers["Allow"] = exc.allow
        except DATABASE_ERRORS as exc:
            if not is_busy(exc):
                log.exception("depot API: %s %s failed", self.command, self.path)
                status, doc = 500, {"error": "internal error"}
            else:
                log.warning("depot API: %s %s: %s", self.command, self.path, exc)
                status, doc = 503, {"error": "the depot database is busy; try again"}
        except Exception:
            log.exception("depot API: %s %s failed", self.command, self.path)
            status, doc = 500, {"error": "internal error"}
        if status >= 400 and self.command == "POST":
            self.close_connection = True  # a body we did not read must not pass for a request
        self._send(status, doc, send_body=send_body, extra=headers)

    def _target(self) -> tuple[list[str], dict[str, list[str]]]:
        url = urllib.parse.urlsplit(self.path)
        try:
            query = urllib.parse.parse_qs(
                url.query, keep_blank_values=True, strict_parsing=bool(url.query)
            )
        except ValueError:
            raise _ApiError(400, "malformed query string") from None
        return [urllib.parse.unquote(p) for p in url.path.split("/") if p], query

    def _route(self) -> Any:
        parts, query = self._target()
        server = cast(_Server, self.server)
        book = server.book
        if len(parts) == 3 and parts[0] == "alarms" and parts[2] == "ack":
            raise _ApiError(405, f"method {self.command} not allowed", allow="POST")
        if parts == ["alarms"]:
            self._only(query, "state")
            wanted = query.get("state", ["open"])[0]
            if wanted not in (*alarms.STATES, "all"):
                raise _ApiError(400, f"unknown state {wanted!r}; states: open, acknowledged, all")
            with _reader(book.database) as conn:
                found = alarms.list_alarms(conn, wanted)
            return {"count": len(found), "alarms": found}
        if parts == ["devices"]:
            self._only(query)
            with _reader(book.database) as conn:
                found = _devices(conn)
            return {"count": len(found), "devices": found}
        if parts == ["health"]:
            self._only(query)
            return _health(book, server.health)
        with book.view() as view:
            if parts == ["parcels"]:
                self._only(query, "state")
                state = query.get("state", [None])[0]
                if state is not None and state not in STATES:
                    raise _ApiError(400, f"unknown state {state!r}; states: {', '.join(STATES)}")
                rows = view.parcels(state)
                return {"count": len(rows), "parcels": rows}
            if len(parts) == 2 and parts[0] == "parcels":
                self._only(query)
                return _known(lambda: view.track(parts[1]))
            if len(parts) == 3 and parts[0] == "parcels" and parts[2] == EXTEND:
                self._only(query, "token")
                return _extend_page(parts[1], self._token(query))
            if len(parts) == 3 and parts[0] == "parcels" and parts[2] == "epcis":
                self._only(query)
                return _known(lambda: export_epcis(view, [parts[1]]))
            if parts == ["epcis"]:
                self._only(query)
                return export_epcis(view)
            if parts == ["vans"]:
                self._only(query)
                return {"vans": view.van_versions()}
            if len(parts) == 2 and parts[0] == "photos":
                self._only(query)
                photo = view.photo(parts[1].lower())
                if photo is None:
                    raise _ApiError(404, f"no photo {parts[1]!r} at the depot (yet)")
                return _Bytes(*photo)
        raise _ApiError(404, f"no such resource: /{'/'.join(parts)}")

    def _token(self, query: dict[str, list[str]]) -> str:
        token = query.get("token", [""])[0]
        if not token:
            raise _ApiError(403, "this link has no token: use the link from your pickup notice")
        return token

    def _extend(self, parcel: str, query: dict[str, list[str]]) -> Any:
        self._only(query, "token")
        token = self._token(query)
        self._json_body()  # a form's or a client's body says nothing more; read it off
        server = cast(_Server, self.server)
        if server.extend_hold is None:
            raise _ApiError(503, "this depot cannot extend holds (it has no command-signing key)")
        try:
            command, hours = server.extend_hold(parcel, token)
        except ExtendRefused as exc:
            raise _ApiError(403 if exc.forbidden else 409, str(exc)) from None
        if "text/html" in self.headers.get("Accept", ""):  # the page's button, in a browser
            page = _EXTENDED_PAGE.format(parcel=html.escape(parcel), hours=hours)
            return _Bytes("text/html; charset=utf-8", page.encode("utf-8"), immutable=False)
        return _Json(202, {"requested": command, "parcel": parcel, "hours": hours})

    def _route_post(self) -> Any:
        parts, query = self._target()
        if len(parts) == 3 and parts[0] == "parcels" and parts[2] == EXTEND:
            return self._extend(parts[1], query)
        if not (len(parts) == 3 and parts[0] == "alarms" and parts[2] == "ack"):
            known = parts and parts[0] in ("health", "parcels", "epcis", "vans", "photos",
                                           "alarms", "devices")
            if known:
                raise _ApiError(405, "method POST not allowed", allow=ALLOWED)
            raise _ApiError(404, f"no such resource: /{'/'.join(parts)}")
        self._only(query)
        body = self._json_body()
        by, note = body.get("by", "anonymous"), body.get("note")
        if not isinstance(by, str) or (note is not None and not isinstance(note, str)):
            raise _ApiError(400, '"by" and "note" must be strings')
        try:
            alarm_id = int(parts[1])
        except ValueError:
            raise _ApiError(404, f"no alarm {parts[1]!r}") from None
        server = cast(_Server, self.server)
        try:
            with server.book.database.transaction() as conn:
                return alarms.acknowledge(
                    conn, alarm_id, by=by, note=note, now_ns=server.clock.wall_ns()
                )
        except alarms.UnknownAlarmError as exc:
            raise _ApiError(404, str(exc)) from None
        except alarms.AlarmStateError as exc:
            raise _ApiError(409, str(exc), extra={"alarm": exc.doc}) from None
        except alarms.AlarmError as exc:
            raise _ApiError(400, str(exc)) from None

    def _json_body(self) -> dict[str, Any]:
        """The request's JSON object body ({} when empty); read only up to MAX_BODY."""
        if self.headers.get("Transfer-Encoding"):
            raise _ApiError(411, "send the body with a Content-Length, not chunked")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _ApiError(411, "a POST needs a Content-Length (0 for no body)")
        try:
            length = int(length_text)
        except ValueError:
            raise _ApiError(400, "Content-Length is not a number") from None
        if length < 0:
            raise _ApiError(400, "Content-Length is negative")
        if length > MAX_BODY:
            raise _ApiError(413, f"the body is {length} bytes; at most {MAX_BODY}")
        raw = self.rfile.read(length) if length else b""
        if len(raw) != length:
            raise _ApiError(400, "the body ended before its Content-Length")
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise _ApiError(400, "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise _ApiError(400, "the body must be a JSON object")
        return doc

    @staticmethod
    def _only(query: dict[str, list[str]], *names: str) -> None:
        unknown = sorted(set(query) - set(names))
        if unknown:
            raise _ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")
        repeated = sorted(n for n in names if len(query.get(n, ())) > 1)
        if repeated:
            raise _ApiError(400, f"query parameter given more than once: {', '.join(repeated)}")

    # --- answering -----------------------------------------------------------------------

    def _send(
        self,
        status: int,
        doc: Any,
        *,
        send_body: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_bytes(self, answer: _Bytes, *, send_body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.data)))
        # A photo's URL is its hash: the same URL can never show another picture.
        cache = "private, max-age=31536000, immutable" if answer.immutable else "no-store"
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if send_body and self.command != "HEAD":
            self.wfile.write(answer.data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (malformed request line, unknown method) in JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client went away; nothing to tell it
            self._send(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("depot API %s: " + format, self.address_string(), *args)


def _known(answer: Callable[[], T]) -> T:
    try:
        return answer()
    except UnknownParcelError as exc:
        raise _ApiError(404, f"unknown parcel {exc.parcel!r}") from None


def _health(book: ParcelBook, health: Health | None) -> dict[str, Any] | _Json:
    doc: dict[str, Any] = {"ok": True, "problems": []}
    try:
        with book.view() as view:
            counts = view.counts_by_state()
            doc.update(
                parcels=sum(counts.values()),
                by_state=counts,
                projected_rowid=view.projected_rowid(),
                events_waiting=view.waiting_events(),
                unmatched=len(view.unmatched()),
            )
    except _BOOK_ERRORS as exc:
        log.warning("depot API: health: the book cannot be read: %s", exc)
        doc["problems"].append(f"database error: {exc}")
    if health is not None:
        judged = health()
        problems = list(doc["problems"])
        problems += [p for p in judged.get("problems", ()) if p not in problems]
        doc.update(judged, problems=problems)
    doc["ok"] = not doc["problems"]
    return doc if doc["ok"] else _Json(503, doc)


@contextlib.contextmanager
def _reader(database: DepotDatabase) -> Iterator[Conn]:
    conn = database.reader()
    try:
        yield conn
    finally:
        database.close_reader(conn)


def _devices(conn: Conn) -> list[dict[str, Any]]:
    """Each device the depot has heard of: its link state from its last status message
    (`online`, or `offline` from its will or its goodbye), when it was last heard of (status or
    batch), its newest journal's highest stored sequence number, its backlog (events its last
    status said it had that the depot has not stored; null when its status carries none) and
    its open alarms."""
    open_alarms = alarms.open_by_device(conn)
    found = []
    for device, facts in sorted(events.device_presence(conn).items()):
        status = _status_doc(facts["status"])
        seen = [ns for ns in (facts["status_ns"], facts.get("last_batch_ns")) if ns is not None]
        backlog = status.get("backlog")
        reported, stored = status.get("last_seq"), facts.get("last_seq")
        if (
            isinstance(reported, int)
            and isinstance(stored, int)
            and status.get("journal") == facts.get("journal")
        ):
            # What the device had then, minus what the depot holds now: fresher than the
            # device's own figure, which is as old as its status.
            backlog = max(0, reported - stored)
        found.append(
            {
                "device": device,
                "state": str(status.get("state", "unknown")),
                "status_at": iso_utc(facts["status_ns"]) if facts["status_ns"] else None,
                "last_seen": iso_utc(max(seen)) if seen else None,
                "journal": facts.get("journal"),
                "last_seq": facts.get("last_seq"),
                "backlog": backlog if isinstance(backlog, int) and backlog >= 0 else None,
                "alarms_open": open_alarms.get(device, 0),
            }
        )
    return found


def _status_doc(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


EXTEND = "extend-hold"
_EXTEND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>More time to collect {parcel}</title></head>
<body><main>
<h1>More time to collect your parcel</h1>
<p>Parcel <strong>{parcel}</strong> is waiting for you in a parcel locker.
You can ask once for more time to collect it.</p>
<form method="post" action="{action}"><button type="submit">Give me more time</button></form>
<p>You will get a new notice with the new date once the locker has it.</p>
</main></body></html>
"""


_EXTENDED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Asked for more time</title></head>
<body><main><h1>Asked for more time</h1>
<p>The locker holds parcel <strong>{parcel}</strong> {hours:g} hours longer; a new notice
with the new date follows.</p></main></body></html>
"""


def _extend_page(parcel: str, token: str) -> _Bytes:
    """The page behind the notice's link: a GET changes nothing (mail scanners follow links);
    the button POSTs to the same URL (a relative action, so a proxy's prefix is kept)."""
    action = "?" + urllib.parse.urlencode({"token": token})
    page = _EXTEND_PAGE.format(parcel=html.escape(parcel), action=html.escape(action))
    return _Bytes("text/html; charset=utf-8", page.encode("utf-8"), immutable=False)


class DepotApi:
    """The HTTP API on its own threads; `start()`, `stop()`, and `url` once started."""

    def __init__(
        self,
        book: ParcelBook,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health: Health | None = None,
        clock: Clock | None = None,
        extend_hold: ExtendHold | None = None,
    ) -> None:
        """`health()` judges the depot (`depot.health.DepotHealth.check`); `clock` times an
        alarm's acknowledgement (the depot's, which a simulated day runs fast)."""
        self.book = book
        self.health = health
        self.extend_hold = extend_hold
        self.clock: Clock = clock or SystemClock()
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler)
        server.book = self.book
        server.health = self.health
        server.clock = self.clock
        server.extend_hold = self.extend_hold
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="depot-api"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("depot API listening on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the depot API is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> DepotApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
