"""The console's Parcels pages: find a parcel, then everything the depot knows about it.

`/console/parcels` is one search box (`depot.store.search.find_parcels`: the parcel id, the
recipient, the merchant or the address, where the postcode is) and a state filter, a page of
at most `search.MAX_PAGE` rows at a time: the operator on the phone with a customer types what
the customer says and picks the line.

`/console/parcels/{id}` answers the questions that call raises: where is it (state, van and
stop, locker and compartment, attempts, the delivery window), what happened (the timeline,
as `ParcelView.track` gives it), can we prove it (each proof of delivery a van recorded: the
fix, its distance from the stop as the handheld measured it and from the parcel's address,
the name given, the photo; a signature drawn from its strokes, the signer's printed name, the
ID check, a failure card's code, a broken preference), who was told (the webhook outbox
rows of its timeline entries: a notification's event id is `<timeline entry uuid>:<audience>`),
and the EPCIS export for whoever asks next. Webhook URLs and the raw record stay off the page
(they may carry a merchant's tokens), as in the JSON API.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from depot.store import outbox, search
from depot.tracking import STATES, ParcelView, UnknownParcelError, iso_utc
from depot.web.api import reader
from depot.web.auth import Session
from depot.web.console import page
from depot.web.context import WebDepot
from depot.web.signature import signature_svg
from parcel.care import REFUSALS
from parcel.geo import distance_m

AUDIENCES = ("merchant", "customer")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Timeline details shown as they are; the proof of delivery (with a delivery's signature and
# ID check) has its own section.
_HIDDEN_DETAILS = frozenset({"pod", "signature", "id_check"})


def _when(iso: str | None) -> str:
    """An ISO time as people read it at a glance ("2026-11-18 09:40:05")."""
    return "—" if not iso else iso[:19].replace("T", " ")


def _when_ns(ns: int | None) -> str:
    return "—" if ns is None else _when(iso_utc(int(ns)))


def _page_number(text: str | None) -> int:
    try:
        return max(1, min(int(text or "1"), 10_000))
    except ValueError:
        return 1


def _list(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    query = request.query_params.get("q", "").strip()[: search.MAX_QUERY]
    state = request.query_params.get("state") or None
    problem = None
    if state is not None and state not in STATES:
        problem = f"no state {state!r}; showing every state"
        state = None
    number = _page_number(request.query_params.get("page"))
    with reader(depot.book.database) as conn:
        total, rows = search.find_parcels(
            conn, query, state=state, limit=search.MAX_PAGE, offset=(number - 1) * search.MAX_PAGE
        )
    with depot.book.view() as view:
        by_state = view.counts_by_state()
    pages = max(1, -(-total // search.MAX_PAGE))
    keys = (
        "parcel", "state", "attempts", "van", "stop", "locker", "compartment", "next_action",
        "merchant", "recipient", "address",
    )
    parcels = [
        {**dict(zip(keys, r[:11], strict=True)), "updated": _when_ns(r[11])} for r in rows
    ]

    def link(n: int) -> str:
        params = {k: v for k, v in (("q", query), ("state", state or "")) if v}
        return "/console/parcels?" + urllib.parse.urlencode({**params, "page": str(n)})

    return {
        "query": query,
        "state": state,
        "states": STATES,
        "by_state": by_state,
        "problem": problem,
        "parcels": parcels,
        "total": total,
        "number": number,
        "pages": pages,
        "previous": link(number - 1) if number > 1 else None,
        "next_page": link(number + 1) if number < pages else None,
    }


def _reason_text(value: object) -> str | None:
    """A proof's reason code as words (`no_signal` -> "no signal"); a van too old to send
    one leaves it None, and the page says no reason was given."""
    return value.replace("_", " ") if isinstance(value, str) and value else None


def _proofs(track: Mapping[str, Any], info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each proof of delivery the van recorded (a delivery, a failed attempt, a redirect, a
    drop at a locker), with the fix's distance from the parcel's address added."""
    found = []
    lat, lon = info.get("lat"), info.get("lon")
    for entry in track["timeline"]:
        details = entry["details"]
        pod = details.get("pod")
        if not isinstance(pod, dict):
            continue
        fix = pod.get("fix") if isinstance(pod.get("fix"), dict) else None
        from_address = None
        if fix is not None and isinstance(lat, float | int) and isinstance(lon, float | int):
            try:
                from_address = distance_m(float(fix["lat"]), float(fix["lon"]), lat, lon)
            except (KeyError, TypeError, ValueError):
                from_address = None
        photo = pod.get("photo") if isinstance(pod.get("photo"), dict) else None
        sha = str(photo.get("sha256", "")) if photo else ""
        found.append(
            {
                "at": _when(entry["at"]),
                "step": entry["step"],
                "fix": fix,
                "no_fix": bool(pod.get("no_fix")),
                "no_fix_reason": _reason_text(pod.get("no_fix_reason")),
                "from_stop": pod.get("distance_m"),
                "from_address": None if from_address is None else round(from_address, 1),
                "far": bool(pod.get("far")),
                "scanned": pod.get("scan") is not None,
                "no_scan_reason": _reason_text(pod.get("no_scan_reason")),
                "to": details.get("to"),
                "name": details.get("name"),
                "neighbour_address": details.get("neighbour_address"),
                "reason": details.get("reason_text") or details.get("reason"),
                "photo": sha if _SHA256.fullmatch(sha) else None,
                **_outcome_proof(details),
            }
        )
    return found


def _outcome_proof(details: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery's signature (its hash: `_one` draws it), printed name and ID check, the
    card a failed attempt left, and the preference a delivery broke, for the proof section."""
    signature = details.get("signature")
    sha = str(signature.get("sha256", "")) if isinstance(signature, dict) else ""
    id_check = details.get("id_check")
    checked = None
    if isinstance(id_check, dict):
        kind = str(id_check.get("id_type") or "ID").replace("_", " ")
        checked = f"{kind}, born {id_check.get('birth_year')}"
    violated = details.get("preference_violated")
    return {
        "signature": sha if _SHA256.fullmatch(sha) else None,
        "signature_svg": None,
        "signed_by": details.get("signed_by"),
        "id_checked": checked,
        "card": details.get("card"),
        "violated": REFUSALS.get(violated, violated) if isinstance(violated, str) else None,
    }


def _draw_signatures(view: ParcelView, proofs: list[dict[str, Any]]) -> None:
    """Each proof's signature as SVG the depot draws from the stored strokes (never the
    stored bytes as markup); left None while its bytes have not reached the depot."""
    for proof in proofs:
        if proof["signature"] is None:
            continue
        stored = view.photo(proof["signature"])
        if stored is not None:
            proof["signature_svg"] = signature_svg(stored[1])
            proof["signature_unreadable"] = proof["signature_svg"] is None


def _detail_text(details: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (str(k), v if isinstance(v, str) else str(v))
        for k, v in sorted(details.items())
        if k not in _HIDDEN_DETAILS and v not in (None, "", [], {})
    ]


def _one(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    parcel = request.path_params["parcel"]
    try:
        with depot.book.view() as view:
            track = view.track(parcel)
            info = view.parcel(parcel) or {}
            entries = view.timeline_entries([parcel])
            proofs = _proofs(track, info)
            _draw_signatures(view, proofs)
    except UnknownParcelError:
        raise LookupError(f"no parcel {parcel}") from None
    about = {e.uuid: e for e in entries}
    with reader(depot.book.database) as conn:
        rows = outbox.for_events(conn, [f"{u}:{a}" for u in about for a in AUDIENCES])
    webhooks = []
    for row in rows:
        entry_uuid, _, audience = row.event_id.rpartition(":")
        entry = about.get(entry_uuid)
        webhooks.append(
            {
                "id": row.id,
                "audience": audience,
                "about": f"{entry.state} ({entry.step})" if entry else "—",
                "state": row.state,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "status_code": row.status_code,
                "created": _when_ns(row.created_ns),
                "done": _when_ns(row.sent_ns or row.dead_ns),
            }
        )
    window = info.get("window")
    timeline = [
        {**e, "at": _when(e["at"]), "details": _detail_text(e["details"])}
        for e in track["timeline"]
    ]
    return {
        "parcel": parcel,
        "quoted": urllib.parse.quote(parcel, safe=""),
        "track": track,
        "updated": _when(track["updated"]),
        "window": "–".join(window) if isinstance(window, list) and len(window) == 2 else None,
        "size": info.get("size"),
        "instructions": info.get("instructions"),
        "timeline": timeline,
        "proofs": proofs,
        "webhooks": webhooks,
    }


def routes() -> list[BaseRoute]:
    return [
        Route("/console/parcels", page("parcels", "parcels.html", _list), methods=["GET"]),
        Route(
            "/console/parcels/{parcel}", page("parcels", "parcel.html", _one), methods=["GET"]
        ),
    ]
