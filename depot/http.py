"""The depot's read-only HTTP JSON API: parcel states, timelines, EPCIS, vans, health.

Owns the URL routes and their JSON answers::

    GET /health                 {"ok": true, "parcels": n, "by_state": {...}, ...}
    GET /parcels[?state=S]      {"count": n, "parcels": [summary, ...]}
    GET /parcels/{id}           the parcel's track (state, attempts, van, timeline, ...)
    GET /parcels/{id}/epcis     an EPCIS 2.0 document with that parcel's events
    GET /epcis                  an EPCIS 2.0 document with every parcel's events
    GET /vans                   {"vans": {van: {"manifest_version", "day", "updated"}}}
    GET /photos/{sha256}        a proof-of-delivery photo (image/jpeg), once stored and verified

Every answer but a photo is `application/json`, errors included: 404 for an unknown parcel,
photo or path, 400 for a query it does not understand, 405 (with `Allow: GET, HEAD`) for other
methods, 503 when the database is busy past its timeout, 500 with no detail otherwise; the
stack trace goes to the log, never to the client.

Must never: change the book (every request reads through its own read-only SQLite
connection, opened and closed within the request, since a connection belongs to one thread),
or listen beyond 127.0.0.1 unless configured to (the API has no authentication; put it
behind something that has).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast

from depot.epcis import export_epcis
from depot.errors import DepotError
from depot.store import DATABASE_ERRORS, is_busy
from depot.tracking import STATES, ParcelBook, ParcelView, UnknownParcelError

log = logging.getLogger(__name__)

ALLOWED = "GET, HEAD"
T = TypeVar("T")


class _ApiError(DepotError):
    """An answer other than 200, with the message the client may see."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Bytes:
    """An answer that is not JSON (a photo)."""

    content_type: str
    data: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    book: ParcelBook


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "lastmile-depot"
    sys_version = ""

    # --- methods -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _not_allowed(self) -> None:
        self._send(405, {"error": f"method {self.command} not allowed"}, extra={"Allow": ALLOWED})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # --- routing -------------------------------------------------------------------------

    def _answer(self, *, send_body: bool) -> None:
        try:
            status, doc = 200, self._route()
            if isinstance(doc, _Bytes):
                self._send_bytes(doc, send_body=send_body)
                return
        except _ApiError as exc:
            status, doc = exc.status, {"error": exc.message}
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
        self._send(status, doc, send_body=send_body)

    def _route(self) -> Any:
        url = urllib.parse.urlsplit(self.path)
        try:
            query = urllib.parse.parse_qs(
                url.query, keep_blank_values=True, strict_parsing=bool(url.query)
            )
        except ValueError:
            raise _ApiError(400, "malformed query string") from None
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        book = cast(_Server, self.server).book
        with book.view() as view:
            if parts == ["health"]:
                self._only(query)
                return _health(view)
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
        raise _ApiError(404, f"no such resource: {url.path}")

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
        self.send_header("Cache-Control", "private, max-age=31536000, immutable")
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


def _health(view: ParcelView) -> dict[str, Any]:
    counts = view.counts_by_state()
    return {
        "ok": True,
        "parcels": sum(counts.values()),
        "by_state": counts,
        "projected_rowid": view.projected_rowid(),
        "events_waiting": view.waiting_events(),
        "unmatched": len(view.unmatched()),
    }


class DepotApi:
    """The HTTP API on its own threads; `start()`, `stop()`, and `url` once started."""

    def __init__(self, book: ParcelBook, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.book = book
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
