"""The depot's HTTP JSON API: parcel states, timelines, EPCIS, vans, devices, alarms, health.

Owns the JSON routes and their answers::

    GET /health                 {"ok": true, "problems": [], "parcels": n, "by_state": {...},
                                 "preference_refusals": n, "preference_violations": n,
                                 "deliveries_by_method": {"recipient": n, ...},
                                 "broker": {...}, "database": {...}, "webhooks": {...}, ...};
                                 503 with "ok": false and the problems, one sentence each
    GET /parcels[?state=S]      {"count": n, "parcels": [summary, ...]}
    GET /parcels/{id}           the parcel's track (state, attempts, van, timeline, ...)
    GET /parcels/{id}/epcis     an EPCIS 2.0 document with that parcel's events
    GET /epcis                  an EPCIS 2.0 document with every parcel's events
    GET /vans                   {"vans": {van: {"manifest_version", "day", "updated"}}}
    GET /devices                {"count": n, "devices": [{"device", "state", "last_seen",
                                 "software", "journal", "last_seq", "backlog", "alarms_open",
                                 ...}]}
    GET /alarms[?state=S]       {"count": n, "alarms": [...]}, newest first; S is open (the
                                 default), acknowledged or all
    POST /alarms/{id}/ack       body {"by": "name", "note": "..."} (both optional): the
                                 acknowledged alarm; 404 unknown, 409 acknowledged before
    GET /photos/{sha256}        a proof-of-delivery photo (image/jpeg) or a signature's strokes
                                (application/vnd.lastmile.signature+json), once stored and
                                verified
    POST /returns               body {"parcel": id, "size": "S"|"M"|"L", "locker": name,
                                 "merchant": name, "handover": "locker"|"door"} (all but
                                 parcel optional): 201 with the booked return
                                 (`depot.returns`: its id, handover, until; for a locker
                                 return its locker, the return code and its QR text, for
                                 whoever books it; a door return is picked up by a courier
                                 at the parcel's address and has no code); 404 an
                                 unknown parcel (or another merchant's), 409 one not
                                 delivered or returned before, 400 a bad size or locker
    GET /returns/{id}           the return's track, as GET /parcels/{id} (no code)
    GET /parcels/{id}/extend-hold?token=T
                                the page behind the pickup notice's link: one button
                                (text/html); it POSTs to the same URL
    POST /parcels/{id}/extend-hold?token=T
                                202 {"requested": command id, "hours": h}: the depot asks the
                                locker for more time; 403 for a token the depot did not make,
                                409 when the hold cannot be extended

**Who may ask.** `/health` is open and says nothing personal (counts and judgements). The
extend-hold link is its own authority (the token in it). Everything else needs either an API
token (`Authorization: Bearer …`, made with `lastmile depot token add NAME`) or a signed-in
console session; a POST on a session must carry the session's CSRF token (`X-CSRF-Token`), and
an acknowledgement on a session is recorded under the operator's name, which must have the
`operator` role.

Every answer but a photo or a page is `application/json`, errors included: 401 without
credentials, 403 for a role that may not act, 404 for an unknown parcel, alarm, photo or path,
400 for a query or body it does not understand, 405 (with `Allow`) for a method the path does
not take, 413 for a body too long, 503 when the database is busy past its timeout, 500 with no
detail otherwise; the stack trace goes to the log, never to the client.

Must never: change the book other than by an alarm's acknowledgement (every GET reads through
its own read-only connection, opened and closed within the request, since a connection belongs
to one thread) or serve anything personal without authentication.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from depot import alarms
from depot.epcis import export_epcis
from depot.errors import DepotError
from depot.pickup import ExtendRefused
from depot.returns import ReturnRefused
from depot.store import DATABASE_ERRORS, Conn, DepotDatabase, events, is_busy
from depot.tracking import STATES, UnknownParcelError, iso_utc
from depot.web import auth
from depot.web.context import WebDepot, session_of

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # an acknowledgement is a name and a note
T = TypeVar("T")
_BOOK_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, DepotError)


class ApiError(DepotError):
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


def json_answer(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def guarded(
    handler: Callable[[Request], Any],
) -> Callable[[Request], Awaitable[Response]]:
    """A route's answer, its errors as JSON: an `ApiError` as itself, a busy database as 503,
    anything else as 500 with the trace in the log only.

    The handler runs on a worker thread (the store is synchronous); a POST's body is read
    first, here on the event loop, and never beyond `MAX_BODY`."""

    def answer(request: Request) -> Response:
        try:
            doc = handler(request)
        except ApiError as exc:
            headers = {"Allow": exc.allow} if exc.allow else None
            return json_answer(exc.status, {"error": exc.message, **exc.extra}, headers)
        except DATABASE_ERRORS as exc:
            if is_busy(exc):
                log.warning("depot API: %s %s: %s", request.method, request.url.path, exc)
                return json_answer(503, {"error": "the depot database is busy; try again"})
            log.exception("depot API: %s %s failed", request.method, request.url.path)
            return json_answer(500, {"error": "internal error"})
        except Exception:
            log.exception("depot API: %s %s failed", request.method, request.url.path)
            return json_answer(500, {"error": "internal error"})
        if isinstance(doc, Response):
            return doc
        return json_answer(200, doc)

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            request.state.body = await read_body(request)
        except ApiError as exc:
            return json_answer(exc.status, {"error": exc.message})
        return await run_in_threadpool(answer, request)

    return endpoint


async def read_body(request: Request) -> bytes:
    """A POST's body, at most `MAX_BODY` bytes (ApiError 413 past that); b"" for a GET."""
    if request.method != "POST":
        return b""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the body is {declared} bytes; at most {MAX_BODY}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the body is longer than {MAX_BODY} bytes")
    return bytes(body)


def depot_of(request: Request) -> WebDepot:
    depot: WebDepot = request.app.state.depot
    return depot


def caller(request: Request, *, acting: bool = False) -> str:
    """Who is asking (a token's or an operator's name); ApiError 401/403 when nobody may."""
    depot = depot_of(request)
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "send Authorization: Bearer <token>")
        with reader(depot.book.database) as conn:
            try:
                return f"token:{auth.check_token(conn, token.strip())}"
            except auth.AuthError as exc:
                raise ApiError(401, str(exc)) from None
    session = session_of(request)
    if session is None:
        raise ApiError(
            401,
            "sign in to the console or send an API token (lastmile depot token add NAME)",
            extra={},
        )
    if acting:
        if not session.may_act:
            raise ApiError(403, f"{session.user} may look but not act (role {session.role})")
        try:
            auth.check_csrf(session, request.headers.get("x-csrf-token"))
        except auth.AuthError as exc:
            raise ApiError(403, str(exc)) from None
    return session.user


@contextlib.contextmanager
def reader(database: DepotDatabase) -> Iterator[Conn]:
    """A read-only connection of this request's own, closed when it is done."""
    conn = database.reader()
    try:
        yield conn
    finally:
        database.close_reader(conn)


def only(request: Request, *names: str) -> dict[str, str]:
    """The query's parameters, each at most once and all of them known."""
    query = request.query_params
    unknown = sorted(set(query.keys()) - set(names))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")
    repeated = sorted(n for n in names if len(query.getlist(n)) > 1)
    if repeated:
        raise ApiError(400, f"query parameter given more than once: {', '.join(repeated)}")
    return {n: query[n] for n in names if n in query}


def known(answer: Callable[[], T]) -> T:
    try:
        return answer()
    except UnknownParcelError as exc:
        raise ApiError(404, f"unknown parcel {exc.parcel!r}") from None


# --- the routes -------------------------------------------------------------------------------


@guarded
def _health(request: Request) -> Any:
    only(request)
    doc = health_doc(depot_of(request))
    return doc if doc["ok"] else json_answer(503, doc)


def counters(depot: WebDepot) -> list[str]:
    """The collection sites that are staffed counters (their pickups count as `counter`)."""
    return [s.name for s in depot.sites.lockers if getattr(s, "kind", "locker") == "counter"]


def health_doc(depot: WebDepot) -> dict[str, Any]:
    """The depot's health as /health answers it (also the console's header light)."""
    doc: dict[str, Any] = {"ok": True, "problems": []}
    try:
        with depot.book.view() as view:
            counts = view.counts_by_state()
            doc.update(
                parcels=sum(counts.values()),
                by_state=counts,
                projected_rowid=view.projected_rowid(),
                events_waiting=view.waiting_events(),
                unmatched=len(view.unmatched()),
            )
            # preference_refusals, preference_violations, deliveries_by_method (counts only)
            doc.update(view.outcome_counts(counters(depot)))
    except _BOOK_ERRORS as exc:
        log.warning("depot API: health: the book cannot be read: %s", exc)
        doc["problems"].append(f"database error: {exc}")
    if depot.health is not None:
        judged = depot.health()
        problems = list(doc["problems"])
        problems += [p for p in judged.get("problems", ()) if p not in problems]
        doc.update(judged, problems=problems)
    doc["ok"] = not doc["problems"]
    return doc


@guarded
def _alarms(request: Request) -> Any:
    caller(request)
    wanted = only(request, "state").get("state", "open")
    if wanted not in (*alarms.STATES, "all"):
        raise ApiError(400, f"unknown state {wanted!r}; states: open, acknowledged, all")
    with reader(depot_of(request).book.database) as conn:
        found = alarms.list_alarms(conn, wanted)
    return {"count": len(found), "alarms": found}


@guarded
def _devices(request: Request) -> Any:
    caller(request)
    only(request)
    with reader(depot_of(request).book.database) as conn:
        found = devices(conn)
    return {"count": len(found), "devices": found}


@guarded
def _parcels(request: Request) -> Any:
    caller(request)
    state = only(request, "state").get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, f"unknown state {state!r}; states: {', '.join(STATES)}")
    with depot_of(request).book.view() as view:
        rows = view.parcels(state)
    return {"count": len(rows), "parcels": rows}


@guarded
def _parcel(request: Request) -> Any:
    caller(request)
    only(request)
    parcel = request.path_params["parcel"]
    with depot_of(request).book.view() as view:
        return known(lambda: view.track(parcel))


@guarded
def _parcel_epcis(request: Request) -> Any:
    caller(request)
    only(request)
    parcel = request.path_params["parcel"]
    with depot_of(request).book.view() as view:
        return known(lambda: export_epcis(view, [parcel]))


@guarded
def _epcis(request: Request) -> Any:
    caller(request)
    only(request)
    with depot_of(request).book.view() as view:
        return export_epcis(view)


@guarded
def _vans(request: Request) -> Any:
    caller(request)
    only(request)
    with depot_of(request).book.view() as view:
        return {"vans": view.van_versions()}


@guarded
def _photo(request: Request) -> Any:
    caller(request)
    only(request)
    sha = request.path_params["sha256"].lower()
    with depot_of(request).book.view() as view:
        photo = view.photo(sha)
    if photo is None:
        raise ApiError(404, f"no photo {sha!r} at the depot (yet)")
    content_type, data = photo
    # A photo's URL is its hash: the same URL can never show another picture.
    return Response(
        data,
        media_type=content_type,
        # nosniff: a signature's strokes (JSON) are never read by a browser as markup.
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


@guarded
def _ack(request: Request) -> Any:
    who = caller(request, acting=True)
    only(request)
    body = _json_body(request)
    by = who if not who.startswith("token:") else body.get("by", "anonymous")
    note = body.get("note")
    if not isinstance(by, str) or (note is not None and not isinstance(note, str)):
        raise ApiError(400, '"by" and "note" must be strings')
    try:
        alarm_id = int(request.path_params["alarm"])
    except ValueError:
        raise ApiError(404, f"no alarm {request.path_params['alarm']!r}") from None
    depot = depot_of(request)
    try:
        with depot.book.database.transaction() as conn:
            return alarms.acknowledge(
                conn, alarm_id, by=by, note=note, now_ns=depot.clock.wall_ns()
            )
    except alarms.UnknownAlarmError as exc:
        raise ApiError(404, str(exc)) from None
    except alarms.AlarmStateError as exc:
        raise ApiError(409, str(exc), extra={"alarm": exc.doc}) from None
    except alarms.AlarmError as exc:
        raise ApiError(400, str(exc)) from None


def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty), read in the handler's thread."""
    raw: bytes = request.state.body
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the body must be a JSON object")
    return doc


def _token(request: Request) -> str:
    token = only(request, "token").get("token", "")
    if not token:
        raise ApiError(403, "this link has no token: use the link from your pickup notice")
    return token


@guarded
def _extend_page(request: Request) -> Any:
    """The page behind the notice's link: a GET changes nothing (mail scanners follow
    links); the button POSTs to the same URL."""
    token = _token(request)
    parcel = request.path_params["parcel"]
    templates = depot_of(request).templates
    return templates.TemplateResponse(
        request, "extend.html", {"parcel": parcel, "token": token}, headers=_NO_STORE
    )


@guarded
def _extend(request: Request) -> Any:
    token = _token(request)
    parcel = request.path_params["parcel"]
    depot = depot_of(request)
    if depot.actions is None:
        raise ApiError(503, "this depot cannot extend holds (it has no command-signing key)")
    try:
        command, hours = depot.actions.extend_hold(parcel, token)
    except ExtendRefused as exc:
        raise ApiError(403 if exc.forbidden else 409, str(exc)) from None
    if "text/html" in request.headers.get("accept", ""):  # the page's button, in a browser
        return depot.templates.TemplateResponse(
            request, "extended.html", {"parcel": parcel, "hours": hours}, headers=_NO_STORE
        )
    return json_answer(202, {"requested": command, "parcel": parcel, "hours": hours})


_NO_STORE = {"Cache-Control": "no-store"}


@guarded
def _book_return(request: Request) -> Any:
    """A merchant's system (an API token) or an operator books a customer's return."""
    who = caller(request, acting=True)
    only(request)
    body = _json_body(request)
    names = ("parcel", "size", "locker", "merchant", "handover")
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    fields = {k: body.get(k) for k in names}
    if not isinstance(fields["parcel"], str) or not fields["parcel"]:
        raise ApiError(400, '"parcel" must name the delivered parcel')
    if any(v is not None and not isinstance(v, str) for v in fields.values()):
        raise ApiError(400, '"size", "locker", "merchant" and "handover" must be strings')
    depot = depot_of(request)
    if depot.actions is None:
        raise ApiError(503, "this depot cannot book returns (no depot service)")
    try:
        booked = depot.actions.book_return(
            fields["parcel"],
            by=who,
            size=fields["size"],
            locker=fields["locker"],
            merchant=fields["merchant"],
            handover=fields["handover"] or "locker",
        )
    except ReturnRefused as exc:
        extra = {"return": exc.existing} if exc.existing else None
        raise ApiError(exc.status, str(exc), extra=extra) from None
    return json_answer(201, booked.to_doc())


def devices(conn: Conn) -> list[dict[str, Any]]:
    """Each device the depot has heard of: its link state from its last status message
    (`online`, or `offline` from its will or its goodbye), when it was last heard of (status or
    batch), the software version its statuses last named (null when none did), its newest
    journal's highest stored sequence number, its backlog (events its last status said it had
    that the depot has not stored; null when its status carries none) and its open alarms."""
    open_alarms = alarms.open_by_device(conn)
    found = []
    for device, facts in sorted(events.device_presence(conn).items()):
        status = status_doc(facts["status"])
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
                "last_seen_ns": max(seen) if seen else None,
                "software": facts.get("software"),
                "journal": facts.get("journal"),
                "last_seq": facts.get("last_seq"),
                "backlog": backlog if isinstance(backlog, int) and backlog >= 0 else None,
                "alarms_open": open_alarms.get(device, 0),
            }
        )
    return found


def status_doc(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def routes() -> list[Route]:
    return [
        Route("/health", _health, methods=["GET"]),
        Route("/alarms", _alarms, methods=["GET"]),
        Route("/alarms/{alarm}/ack", _ack, methods=["POST"]),
        Route("/devices", _devices, methods=["GET"]),
        Route("/parcels", _parcels, methods=["GET"]),
        Route("/parcels/{parcel}", _parcel, methods=["GET"]),
        Route("/parcels/{parcel}/epcis", _parcel_epcis, methods=["GET"]),
        Route("/parcels/{parcel}/extend-hold", _extend_page, methods=["GET"]),
        Route("/parcels/{parcel}/extend-hold", _extend, methods=["POST"]),
        Route("/epcis", _epcis, methods=["GET"]),
        Route("/vans", _vans, methods=["GET"]),
        Route("/photos/{sha256}", _photo, methods=["GET"]),
        Route("/returns", _book_return, methods=["POST"]),
        Route("/returns/{parcel}", _parcel, methods=["GET"]),
    ]


__all__ = [
    "ApiError",
    "caller",
    "devices",
    "guarded",
    "health_doc",
    "json_answer",
    "only",
    "reader",
    "routes",
    "status_doc",
]
