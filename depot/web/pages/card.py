"""The failure card's page: `/card`, where the code on a "sorry we missed you" card is typed.

`GET /card` is a form (`?code=` fills it in, for a QR printed on the card, and looks nothing
up: a GET changes nothing and counts nothing). `POST /card` with the code answers:

- 303 to the parcel's tracking page `/t/{token}` while its journey is open, with a one-line
  note for that page (the customer page's own note cookie): "choose below what happens next"
  when the parcel waits for a choice (attempted, at the depot), else what it is doing now;
- 410 with the plain words when its journey has ended (delivered, picked up, returned);
- 404 with the form again for a code no card has (a wrong try), 400 for text that is no code
  (not counted: nothing was looked up);
- 429 with `Retry-After` while the client address (or the card) cools down
  (`depot.cards.CardTries`: five wrong codes, then 15 minutes).

The client address is the connection's peer: a forwarded-for header is not believed (anyone
may write one), so a depot behind a proxy limits the proxy as one client. No CSRF token: the
form is public and a forged post can only send a browser to a page it could not read.

Must never: put the code in a URL the page makes, a log line or a cookie, or tell a wrong
code apart from a cool-down by anything but the cool-down's message.
"""

from __future__ import annotations

import logging
import math
import threading
import urllib.parse
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from depot.cards import CardTries, CardUnreadable, UnknownCard
from depot.store import DATABASE_ERRORS
from depot.tracking import FINAL_STATES
from depot.web.context import WebDepot
from depot.web.pages.customer import NOTE_COOKIE

log = logging.getLogger(__name__)

MAX_FORM = 1024
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_tries_lock = threading.Lock()


def tries_of(request: Request) -> CardTries:
    """The web port's one `CardTries` (made on first use, kept on the application)."""
    with _tries_lock:
        tries: CardTries | None = getattr(request.app.state, "card_tries", None)
        if tries is None:
            tries = request.app.state.card_tries = CardTries()
        return tries


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _answer(
    request: Request,
    status: int,
    *,
    message: str | None = None,
    code: str = "",
    form: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    depot: WebDepot = request.app.state.depot
    tries = tries_of(request)
    context: dict[str, Any] = {
        "message": message,
        "code": code,
        "show_form": form,
        "max_wrong": tries.max_wrong,
        "cooldown_min": math.ceil(tries.cooldown_s / 60),
    }
    return depot.templates.TemplateResponse(
        request, "card.html", context, status_code=status, headers={**_HEADERS, **(headers or {})}
    )


def _cooling(request: Request, wait_s: float) -> Response:
    minutes = max(1, math.ceil(wait_s / 60))
    return _answer(
        request,
        429,
        message=f"Too many codes from here that match no card. Try again in {minutes} "
        f"minute{'s' if minutes != 1 else ''}.",
        headers={"Retry-After": str(math.ceil(wait_s))},
    )


async def form(request: Request) -> Response:
    code = request.query_params.get("code", "")[:20]
    return _answer(request, 200, code=code)


async def look_up(request: Request) -> Response:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return _answer(request, 413, message="That is too long for a card's code.")
    try:
        fields = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        fields = {}
    return await run_in_threadpool(_look_up, request, fields.get("code", ""))


def _look_up(request: Request, code: str) -> Response:
    depot: WebDepot = request.app.state.depot
    tries, client = tries_of(request), _client(request)
    wait = tries.wait_s(client)
    if wait > 0:
        return _cooling(request, wait)
    if depot.actions is None:
        return _answer(request, 503, message="This page is not available just now.")
    try:
        found = depot.actions.card_link(code)
    except CardUnreadable as exc:
        return _answer(request, 400, message=f"That is not a card's code: {exc}.", code=code)
    except UnknownCard as exc:
        tries.wrong(client)
        log.info("card page: a code that matches no card, from %s", client)
        wait = tries.wait_s(client)
        if wait > 0:
            return _cooling(request, wait)
        return _answer(request, 404, message=f"Sorry, {exc}.", code=code)
    except DATABASE_ERRORS:
        log.exception("card page failed")
        return _answer(request, 503, message="We cannot look cards up just now; try again soon.")
    wait = tries.wait_s(client, found.digest)
    if wait > 0:
        return _cooling(request, wait)
    tries.used(found.digest)
    if found.path is None:
        if found.state in FINAL_STATES:
            return _answer(request, 410, message=found.words, form=False)
        return _answer(request, 503, message="We cannot show your parcel's page just now.")
    response = RedirectResponse(found.path, status_code=303, headers=_HEADERS)
    response.set_cookie(
        NOTE_COOKIE, urllib.parse.quote(found.words), max_age=120, path=found.path,
        httponly=True, samesite="strict",
    )
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/card", form, methods=["GET"]),
        Route("/card", look_up, methods=["POST"]),
    ]
