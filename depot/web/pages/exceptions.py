"""The console's Exceptions page: one queue of what needs a person, each with its action.

The operator's question is "what is waiting for me?", so the page lists, most urgent first and
newest first within each kind: open alarms (acknowledge, with a note), drop-offs a locker did
not confirm (the depot's `locker_drop_unconfirmed` alarms and the disagreements still open in
`locker_drops`: re-plan or return to sender), dead-lettered webhooks (retry), parcels back at
the depot (`at_depot`: re-plan or return to sender; `returning`: book it handed back) and
quarantined payloads (listed for a person to look at with the depot's tools: no action here,
so no schema of the page's own). Each kind shows its count and at most `LIMIT` rows, every one
read by an indexed query, so the page costs the same with ten parcels or ten thousand.

What a decision is stays the depot service's (`DepotActions.operator_replan`,
`operator_return_to_sender`, `operator_retry_webhook`): the page asks, by the operator's name,
and the service checks the parcel's state, records the decision in its timeline and logs it.
An acknowledgement decides nothing, so it is written here as `POST /alarms/{id}/ack` writes it
(`depot.alarms.acknowledge`, under the operator's name).

Must never: act on a GET, show a quarantined payload's bytes (only its size; reasons and
topics are autoescaped text), or a webhook's URL beyond its host (a merchant's URL may carry
its token).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from depot import alarms
from depot.service import LOCKER_DROP_ALARM, REPLAN_FROM, RETURN_FROM
from depot.store import book, events, outbox
from depot.tracking import iso_utc
from depot.web.api import reader
from depot.web.auth import Session
from depot.web.console import ActionRefused, action, page
from depot.web.context import DepotActions, WebDepot

log = logging.getLogger(__name__)

LIMIT = 50  # rows shown per kind; the counts say how many there are
PATH = "/console/exceptions"
BACK_STATES = ("at_depot", "returning")
DROP_KINDS = ("claim", "deposit")  # an abandoned drop-off is the service's to act on
MAX_SHOWN = 200  # characters of a reason or an error shown


def _when(ns: int | None) -> str:
    return "—" if ns is None else iso_utc(int(ns))[:19].replace("T", " ")


def _ago(now_ns: int, ns: int | None) -> str:
    if ns is None:
        return ""
    s = max(0.0, (now_ns - int(ns)) / 1e9)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.0f} days ago"


def _short(text: object) -> str:
    words = "" if text is None else str(text)
    return words if len(words) <= MAX_SHOWN else words[: MAX_SHOWN - 1] + "…"


def _host(url: object) -> str:
    try:
        return urllib.parse.urlsplit(str(url)).hostname or "?"
    except ValueError:
        return "?"


def _can(state: str | None) -> dict[str, bool]:
    return {
        "replan": state in REPLAN_FROM,
        "return": state in RETURN_FROM,
    }


def _build(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    now = depot.clock.wall_ns()
    with reader(depot.book.database) as conn:
        open_total = alarms.open_count(conn)
        drop_alarm_count = alarms.open_count_of(conn, LOCKER_DROP_ALARM)
        other_alarms = alarms.open_alarms(conn, LIMIT, other_than=LOCKER_DROP_ALARM)
        drop_alarms = alarms.open_alarms(conn, LIMIT, alarm=LOCKER_DROP_ALARM)
        drop_rows = book.open_locker_drops(conn, DROP_KINDS, LIMIT)
        drops_open = book.locker_drop_count(conn, DROP_KINDS)
        alarm_parcels = [str(a["facts"].get("parcel", "")) for a in drop_alarms]
        states = book.states_of(conn, [p for p in alarm_parcels if p])
        back_rows = book.parcels_in_states(conn, BACK_STATES, LIMIT)
        by_state = {str(s): int(n) for s, n in book.state_counts(conn)}
        dead_rows = outbox.dead_recent(conn, LIMIT)
        dead_total = outbox.dead_count(conn)
        quarantined = events.quarantine_recent(conn, LIMIT)
        quarantine_total = events.quarantine_count(conn)

    alarm_items = [
        {
            **a,
            "facts_line": _facts_line(a["facts"]),
            "raised": a["raised_at"][:19].replace("T", " "),
        }
        for a in other_alarms
    ]
    drops: list[dict[str, Any]] = []
    for a in drop_alarms:
        facts = a["facts"]
        parcel = str(facts.get("parcel", ""))
        state = states.get(parcel)
        drops.append(
            {
                "alarm": a["id"],
                "parcel": parcel,
                "state": state,
                "locker": facts.get("locker"),
                "van": facts.get("van"),
                "say": _short(facts.get("say")),
                "since": str(facts.get("since") or "—")[:19].replace("T", " "),
                "status": f"unconfirmed after {facts.get('waited_min', '?')} min",
                **_can(state),
            }
        )
    for r in drop_rows:
        _, kind, parcel, locker, van, compartment, since_ns, state = r
        say = (
            f"{van} says it dropped it at {locker}; the locker has not said so yet"
            if kind == "claim"
            else f"{locker} holds it; {van} has not said it dropped it there"
        )
        drops.append(
            {
                "alarm": None,
                "parcel": str(parcel),
                "state": state,
                "locker": locker,
                "van": van,
                "say": say + (f" (compartment {compartment})" if compartment else ""),
                "since": _when(since_ns),
                "status": f"waiting for the locker, {_ago(now, since_ns)}",
                **_can(None if state is None else str(state)),
            }
        )

    back = [
        {
            "parcel": str(r[0]),
            "state": str(r[1]),
            "next_action": r[2],
            "attempts": int(r[3]),
            "last_reason": r[4],
            "van": r[5],
            "updated": _when(r[7]),
            "ago": _ago(now, r[7]),
            **_can(str(r[1])),
        }
        for r in back_rows
    ]
    dead = [
        {
            "event_id": str(r[0]),
            "receiver": _host(r[1]),
            "key_id": str(r[2]),
            "attempts": int(r[3]),
            "error": _short(r[4]),
            "status_code": r[5],
            "dead": _when(r[6]),
            "ago": _ago(now, r[6]),
        }
        for r in dead_rows
    ]
    quarantine = [
        {
            "id": int(r[0]),
            "topic": _short(r[1]),
            "reason": _short(r[2]),
            "size": int(r[3] or 0),
            "received": _when(r[4]),
            "ago": _ago(now, r[4]),
        }
        for r in quarantined
    ]
    back_total = sum(by_state.get(s, 0) for s in BACK_STATES)
    counts = {
        "alarms": open_total - drop_alarm_count,
        "drops": drop_alarm_count + drops_open,
        "webhooks": dead_total,
        "parcels": back_total,
        "quarantine": quarantine_total,
    }
    return {
        "limit": LIMIT,
        "counts": counts,
        "waiting": counts["alarms"] + counts["drops"] + counts["webhooks"] + counts["parcels"],
        "alarms": alarm_items,
        "drops": drops,
        "back": back,
        "back_by_state": {s: by_state.get(s, 0) for s in BACK_STATES},
        "dead": dead,
        "quarantine": quarantine,
        "can_decide": depot.actions is not None,
        "here": PATH,
    }


def _facts_line(facts: Mapping[str, Any]) -> str:
    """An alarm's facts in one line (`say` when the depot wrote one, else key=value pairs)."""
    if isinstance(facts.get("say"), str):
        return _short(facts["say"])
    return _short(", ".join(f"{k}={v}" for k, v in sorted(facts.items())))


# --- the actions --------------------------------------------------------------------------------


def _service(depot: WebDepot) -> DepotActions:
    if depot.actions is None:
        raise ActionRefused("this depot runs without its service here; nothing can be decided")
    return depot.actions


def _alarm_of(form: Mapping[str, str]) -> int | None:
    text = form.get("alarm", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ActionRefused(f"no alarm {text[:20]!r}")
    return int(text)


def _acknowledge(
    request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]
) -> str:
    alarm_id = int(request.path_params["alarm"])
    note = form.get("note", "").strip() or None
    with depot.book.database.transaction() as conn:
        doc = alarms.acknowledge(
            conn, alarm_id, by=session.user, note=note, now_ns=depot.clock.wall_ns()
        )
    log.info("operator %s acknowledged alarm %d (%s)", session.user, alarm_id, doc["alarm"])
    return f"Alarm {alarm_id} ({doc['alarm']}, {doc['device']}) acknowledged by {session.user}."


def _replan(request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]) -> str:
    parcel = request.path_params["parcel"]
    _service(depot).operator_replan(parcel, session.user, alarm=_alarm_of(form))
    return f"{parcel} goes out again: the next plan puts it on a van."


def _return(request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]) -> str:
    parcel = request.path_params["parcel"]
    state = _service(depot).operator_return_to_sender(parcel, session.user, alarm=_alarm_of(form))
    if state == "returned_to_sender":
        return f"{parcel} is booked handed back to its sender."
    return f"{parcel} goes back to its sender when its van brings it to the depot."


def _retry(request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]) -> str:
    event_id = form.get("event_id", "").strip()
    if not event_id:
        raise ActionRefused("say which webhook to retry")
    _service(depot).operator_retry_webhook(event_id, session.user)
    return f"Webhook {event_id} is pending again; the sender tries it now."


def routes() -> list[BaseRoute]:
    return [
        Route(PATH, page("exceptions", "exceptions.html", _build), methods=["GET"]),
        Route(PATH + "/alarms/{alarm:int}/ack", action(_acknowledge), methods=["POST"]),
        Route(PATH + "/parcels/{parcel}/replan", action(_replan), methods=["POST"]),
        Route(PATH + "/parcels/{parcel}/return", action(_return), methods=["POST"]),
        Route(PATH + "/webhooks/retry", action(_retry), methods=["POST"]),
    ]
