"""The customer's page behind every notice's link: `/t/{token}`.

It shows the parcel's state and history in plain words, the delivery window and the ETA,
and, while the parcel waits in a locker, where, the pickup code and its QR and until when
(`depot.customer.customer_view` decides all of it; this module only draws it). Buttons
send the customer's requests to the depot service, which decides them by its own rules:
more time in the locker (once); after a missed delivery, delivery on the next day, or
collection from the locker (`POST /t/{token}/locker`) or the staffed counter
(`POST /t/{token}/counter`) the page names, each offered only where the policy grants it.
A form changes the customer's delivery preferences (safe place and where, neighbour, locker instead;
`DepotService.customer_preferences`); it sits outside the page's live part, so news from the
depot never wipes a choice being made, and a form that does not say it is this form (cut
off, too big) changes nothing: unticked boxes would otherwise read as "no" to everything.
A delivered (or picked-up) parcel's page offers its return (`POST /t/{token}/return`,
`how=locker|door`, `DepotService.customer_return`); the page then shows the booked return:
its locker, code and QR (opened at each view, never put in the redirect or the note), or the
day a courier calls for it with its label to print.

The token in the URL is the page's only authority, and it is also what keeps a forged form
out: a page elsewhere cannot post to a link it does not know. A GET changes nothing (mail
scanners follow links); the buttons POST, and the answer is a redirect back to the page with
a one-line message (a reload never repeats a request). The page follows the parcel live:
`/t/{token}/live` is a server-sent event stream that speaks when its timeline or its van's
position changes, and the page then swaps its `data-live` parts.

Must never: show anything to a token the depot did not give out (404, nothing else), or
anything but the state words to an expired one; put the pickup code anywhere but the page's
own body (never in a URL, a log line or a cookie).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from depot.customer import REFUSALS, CustomerView, LinkExpired, PickupOffer, UnknownLink
from depot.keys import CredentialError
from depot.store import DATABASE_ERRORS
from depot.web import live
from depot.web.console import _form
from depot.web.context import WebDepot

log = logging.getLogger(__name__)

NOTE_COOKIE = "lm_note"
LIVE_EVERY_S = 2.0


def _depot(request: Request) -> WebDepot:
    depot: WebDepot = request.app.state.depot
    return depot


def _when(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%a %d %b, %H:%M UTC")


def _iso_when(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        moment = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.astimezone(dt.UTC).strftime("%a %d %b, %H:%M UTC")


def _page(request: Request) -> Response:
    depot = _depot(request)
    token = request.path_params["token"]
    if depot.actions is None:
        return _plain(503, "Tracking is not available just now.")
    try:
        view: CustomerView = depot.actions.customer_view(token)
    except UnknownLink:
        return _plain(404, "This tracking link is not one we know. Check the link in your "
                           "notice.")
    except CredentialError:
        log.warning("customer page: a pickup credential the depot cannot open")
        return _plain(503, "We cannot show the pickup code just now; your notice has it.")
    except DATABASE_ERRORS:
        log.exception("customer page failed")
        return _plain(503, "Tracking is not available just now; try again in a minute.")
    eta = view.eta
    context: dict[str, Any] = {
        "view": view,
        "token": token,
        "note": _note(request),
        "eta_at": _when(getattr(eta, "eta_ns", None)) if eta is not None else None,
        "eta_stops": getattr(eta, "stops_before", None) if eta is not None else None,
        "hold_until_at": _iso_when(view.hold_until),
        "expires_at": _when(view.expires_ns),
        "return_until_at": _iso_when(view.returned.until) if view.returned else None,
        "pickup_day": _day(view.returned.pickup_day) if view.returned else None,
        "lines": [
            {"at": _when(line.at_ns), "words": line.words,
             "hold_until": _iso_when(line.hold_until)}
            for line in view.timeline
        ],
    }
    status = 410 if view.expired else 200
    response = depot.templates.TemplateResponse(
        request, "customer.html", context, status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                 "X-Robots-Tag": "noindex"},
    )
    if request.cookies.get(NOTE_COOKIE):
        response.delete_cookie(NOTE_COOKIE, path=request.url.path)
    return response


def _day(day: str | None) -> str | None:
    """A round's day (YYYY-MM-DD) in the customer's words."""
    if not day:
        return None
    try:
        return dt.date.fromisoformat(day).strftime("%A %d %B")
    except ValueError:
        return day


def _note(request: Request) -> str | None:
    note = request.cookies.get(NOTE_COOKIE)
    return urllib.parse.unquote(note) if note else None


def _plain(status: int, message: str) -> Response:
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Your parcel</title></head><body><main><p>"
        + message.replace("<", "&lt;")
        + "</p></main></body></html>"
    )
    return Response(page, status_code=status, media_type="text/html",
                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


async def page(request: Request) -> Response:
    return await run_in_threadpool(_page, request)


def _request(request: Request, kind: str, form: Mapping[str, str] | None = None) -> Response:
    depot = _depot(request)
    token = request.path_params["token"]
    back = f"/t/{urllib.parse.quote(token)}"
    if depot.actions is None:
        return _plain(503, "Tracking is not available just now.")
    try:
        if kind == "extend":
            _, hours = depot.actions.customer_extend(token)
            note = f"Done: the locker keeps your parcel {hours:g} hours longer."
        elif kind == "return":
            how = (form or {}).get("how", "")
            booked = depot.actions.customer_return(token, how)
            note = (
                "Done: your return is booked. Take it to the locker with the code below."
                if booked.handover == "locker"
                else "Done: your return is booked. A courier will collect it at your door."
            )
        elif kind == "preferences":
            if form is None or form.get("form") != "preferences":
                note = "We could not read your choices; nothing was changed. Please try again."
            else:
                depot.actions.customer_preferences(token, form)
                note = "Done: we deliver your parcel as you asked."
        elif kind == "locker":
            offer = depot.actions.customer_to_locker(token)
            note = (
                f"Done: we take your parcel to the locker at {_place(offer)}. When it is in, "
                "this page shows your pickup code."
            )
        elif kind == "counter":
            offer = depot.actions.customer_to_counter(token)
            note = (
                f"Done: your parcel will wait for you at {_place(offer)}. Bring the card we "
                "left or the pickup code this page will show, and an ID with your name."
            )
        else:
            depot.actions.customer_redeliver(token)
            note = "Done: we will bring your parcel again on the next delivery day."
    except UnknownLink:
        return _plain(404, "This tracking link is not one we know.")
    except LinkExpired:
        note = "This tracking link has expired."
    except REFUSALS as exc:
        note = f"Sorry, not possible: {exc}."
    except DATABASE_ERRORS:
        log.exception("customer request failed")
        note = "We could not take your request just now; try again in a minute."
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(NOTE_COOKIE, urllib.parse.quote(note), max_age=120, path=back,
                        httponly=True, samesite="strict")
    return response


def _place(offer: PickupOffer) -> str:
    return f"{offer.title}, {offer.address}" if offer.address else offer.title


async def _drain(request: Request) -> None:
    async for _ in request.stream():  # a form's body says nothing more than the button
        pass


async def extend(request: Request) -> Response:
    await _drain(request)
    return await run_in_threadpool(_request, request, "extend")


async def redeliver(request: Request) -> Response:
    await _drain(request)
    return await run_in_threadpool(_request, request, "redeliver")


async def to_locker(request: Request) -> Response:
    await _drain(request)
    return await run_in_threadpool(_request, request, "locker")


async def to_counter(request: Request) -> Response:
    await _drain(request)
    return await run_in_threadpool(_request, request, "counter")


async def preferences(request: Request) -> Response:
    form = await _form(request)
    return await run_in_threadpool(_request, request, "preferences", form)


async def book_return(request: Request) -> Response:
    form = await _form(request)
    return await run_in_threadpool(_request, request, "return", form)


async def follow(request: Request) -> Response:
    """Server-sent events for one parcel: `news` when its timeline or its van moves."""
    depot = _depot(request)
    token = request.path_params["token"]
    parcel = await run_in_threadpool(live.parcel_of_link, depot, token)
    if parcel is None:
        return Response("unknown link", status_code=404, media_type="text/plain")

    async def stream() -> AsyncIterator[bytes]:
        seen = await run_in_threadpool(live.parcel_fingerprint, depot, parcel)
        yield b"retry: 5000\n\n"
        quiet = 0.0
        while not depot.stopping.is_set() and not await request.is_disconnected():
            await asyncio.sleep(LIVE_EVERY_S)
            quiet += LIVE_EVERY_S
            try:
                now = await run_in_threadpool(live.parcel_fingerprint, depot, parcel)
            except DATABASE_ERRORS as exc:
                log.warning("customer live: %s", exc)
                continue
            if now != seen:
                seen, quiet = now, 0.0
                yield b"event: news\ndata: {}\n\n"
            elif quiet >= 15.0:
                quiet = 0.0
                yield b": still here\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/t/{token}", page, methods=["GET"]),
        Route("/t/{token}/extend", extend, methods=["POST"]),
        Route("/t/{token}/redeliver", redeliver, methods=["POST"]),
        Route("/t/{token}/locker", to_locker, methods=["POST"]),
        Route("/t/{token}/counter", to_counter, methods=["POST"]),
        Route("/t/{token}/preferences", preferences, methods=["POST"]),
        Route("/t/{token}/return", book_return, methods=["POST"]),
        Route("/t/{token}/live", follow, methods=["GET"]),
    ]
