"""The operators' console: sign-in, the pages, their actions and the live stream.

Pages are rendered on the server (Jinja2) and work without JavaScript; `static/console.js`
adds only the live updates: it listens to `/console/live` (server-sent events) and, when the
depot has news, fetches the page again and swaps its `data-live` parts, so what reaches the
depot shows on every open page within a couple of seconds.

Every page needs a signed-in operator (else: the sign-in page, then back); every action is a
POST that carries the session's CSRF token, needs the `operator` role, and answers with a
redirect back to the page it came from and a one-line message (post/redirect/get, so a reload
never repeats an action).

Must never: act on a GET, show a page to someone not signed in, or say on the sign-in page
whether a name exists.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from depot.errors import DepotError
from depot.store import DATABASE_ERRORS
from depot.web import auth, live
from depot.web.context import SESSION_COOKIE, WebDepot, session_of

log = logging.getLogger(__name__)

SIGNIN_COOKIE = "lm_signin"  # the sign-in form's own CSRF nonce, before any session exists
FLASH_COOKIE = "lm_flash"
MAX_FORM = 16 * 1024
LIVE_EVERY_S = 1.0  # how often a live stream looks for news (one indexed query per look)
KEEPALIVE_S = 15.0
NAV = (
    ("today", "Today", "/console"),
    ("fleet", "Fleet", "/console/fleet"),
    ("parcels", "Parcels", "/console/parcels"),
    ("lockers", "Lockers", "/console/lockers"),
    ("exceptions", "Exceptions", "/console/exceptions"),
)

PageBuilder = Callable[[Request, WebDepot, auth.Session], Mapping[str, Any]]
ActionHandler = Callable[[Request, WebDepot, auth.Session, Mapping[str, str]], str]


class ActionRefused(DepotError):
    """An operator's action the depot will not carry out; the message is shown on the page."""


def _depot(request: Request) -> WebDepot:
    depot: WebDepot = request.app.state.depot
    return depot


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a sign-in link must not send anyone elsewhere."""
    # A browser reads "/\\host" as "//host": a backslash anywhere is refused too.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/console"
    return target


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    session: auth.Session | None = None,
) -> Response:
    """A page in the console's frame: the navigation, the signed-in user, the health light,
    the CSRF token for forms and for the live script, and a message from the last action."""
    depot = _depot(request)
    flash = request.cookies.get(FLASH_COOKIE)
    full = {
        "nav": NAV,
        "session": session,
        "csrf": session.csrf if session else "",
        "flash": urllib.parse.unquote(flash) if flash else None,
        **context,
    }
    response = depot.templates.TemplateResponse(
        request, template, full, status_code=status, headers={"Cache-Control": "no-store"}
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def page(name: str, template: str, build: PageBuilder) -> Callable[[Request], Awaitable[Response]]:
    """A console page: signed-in only; `build` gathers its facts on a worker thread."""

    def sync(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                "/signin?" + urllib.parse.urlencode({"next": target}), status_code=303
            )
        depot = _depot(request)
        try:
            context = build(request, depot, session)
        except LookupError as exc:
            return render(
                request, "notfound.html", {"page": name, "what": str(exc)}, status=404,
                session=session,
            )
        except DATABASE_ERRORS:
            log.exception("console: %s failed", request.url.path)
            return render(
                request, "error.html", {"page": name}, status=503, session=session
            )
        return render(request, template, {"page": name, **context}, session=session)

    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(sync, request)

    return endpoint


def action(handler: ActionHandler) -> Callable[[Request], Awaitable[Response]]:
    """A console action: POST, signed in, the `operator` role, the session's CSRF token.
    `handler` returns the message to show; `ActionRefused` is shown as the reason."""

    async def endpoint(request: Request) -> Response:
        form = await _form(request)
        back = _safe_next(form.get("next") or request.headers.get("referer-path"))
        return await run_in_threadpool(_act, request, form, back)

    def _act(request: Request, form: Mapping[str, str], back: str) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        try:
            auth.check_csrf(session, form.get("csrf"))
        except auth.AuthError as exc:
            return _back(back, str(exc), status=403)
        if not session.may_act:
            return _back(back, f"{session.user} may look but not act (role {session.role})")
        try:
            message = handler(request, _depot(request), session, form)
        except (ActionRefused, DepotError) as exc:
            message = f"Not done: {exc}"
        except DATABASE_ERRORS:
            log.exception("console action %s failed", request.url.path)
            message = "Not done: the depot's database did not answer; try again"
        return _back(back, message)

    return endpoint


def _back(target: str, message: str, *, status: int = 303) -> Response:
    response: Response = RedirectResponse(target, status_code=303)
    if status != 303:
        response = Response(message, status_code=status, media_type="text/plain")
        return response
    response.set_cookie(
        FLASH_COOKIE, urllib.parse.quote(message[:300]), max_age=60, path="/", httponly=True,
        samesite="strict",
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last of a repeated one), at most `MAX_FORM` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


# --- sign-in and sign-out ----------------------------------------------------------------------


async def _signin_page(request: Request) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        request,
        "signin.html",
        {"nonce": nonce, "next": _safe_next(request.query_params.get("next")), "error": None},
    )
    _nonce_cookie(request, response, nonce)
    return response


def _nonce_cookie(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE, nonce, max_age=3600, path="/signin", httponly=True, samesite="strict",
        secure=_secure(request),
    )


async def _signin(request: Request) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next"))
    sent, kept = form.get("nonce", ""), request.cookies.get(SIGNIN_COOKIE, "")
    if not sent or not secrets.compare_digest(sent, kept):
        return await _signin_again(request, target, "This form is out of date; try again.", 403)
    try:
        cookie, session = await run_in_threadpool(
            auth.sign_in, _depot(request).book.database, form.get("name", ""),
            form.get("password", ""),
        )
    except auth.AuthError as exc:
        log.warning("console: sign-in refused for %r: %s", form.get("name", "")[:64], exc)
        return await _signin_again(request, target, str(exc), 401)
    log.info("console: %s signed in (%s)", session.user, session.role)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=auth.SESSION_S, path="/", httponly=True,
        samesite="strict", secure=_secure(request),
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


async def _signin_again(request: Request, target: str, error: str, status: int) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        request, "signin.html", {"nonce": nonce, "next": target, "error": error}, status=status
    )
    _nonce_cookie(request, response, nonce)
    return response


async def _signout(request: Request) -> Response:
    form = await _form(request)

    def end() -> None:
        session = session_of(request)
        if session is not None:
            auth.check_csrf(session, form.get("csrf"))
            auth.end_session(_depot(request).book.database, session)
            log.info("console: %s signed out", session.user)

    try:
        await run_in_threadpool(end)
    except auth.AuthError as exc:
        return Response(str(exc), status_code=403, media_type="text/plain")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _root(request: Request) -> Response:
    return RedirectResponse("/console", status_code=303)


# --- the live stream ----------------------------------------------------------------------------


async def _live(request: Request) -> Response:
    """Server-sent events: `news` whenever the depot's fingerprint changes, with the newest
    timeline entries; a comment every `KEEPALIVE_S` so proxies keep the stream open."""
    session = await run_in_threadpool(session_of, request)
    if session is None:
        return Response("sign in first", status_code=401, media_type="text/plain")
    depot = _depot(request)

    async def stream() -> AsyncIterator[bytes]:
        seen = await run_in_threadpool(live.fingerprint, depot)
        yield b"retry: 2000\n\n"
        quiet = 0.0
        while not depot.stopping.is_set() and not await request.is_disconnected():
            await asyncio.sleep(LIVE_EVERY_S)
            quiet += LIVE_EVERY_S
            try:
                now = await run_in_threadpool(live.fingerprint, depot)
            except DATABASE_ERRORS as exc:
                log.warning("console live: %s", exc)
                continue
            if now != seen:
                news = await run_in_threadpool(live.news, depot, seen, now)
                seen, quiet = now, 0.0
                yield f"event: news\ndata: {json.dumps(news)}\n\n".encode()
            elif quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield b": still here\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def routes() -> list[BaseRoute]:
    from depot.web import pages  # the page modules use this module's helpers

    return [
        Route("/", _root, methods=["GET"]),
        Route("/signin", _signin_page, methods=["GET"]),
        Route("/signin", _signin, methods=["POST"]),
        Route("/signout", _signout, methods=["POST"]),
        Route("/console/live", _live, methods=["GET"]),
        *pages.routes(),
    ]
