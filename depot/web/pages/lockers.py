"""The console's Lockers page: each locker's compartments as a grid, its holds and alarms, and
the operator's three actions (extend a hold, open a compartment, put one back in service).

**What the depot knows, and what it infers.** The depot never asks a locker for its state; it
has the locker's journal (every event it synced) and the parcel book's reading of it:

- *Which compartments exist, and their sizes*: known from the locker's `compartment_installed`
  events (journaled once, at its first start). A compartment the book places a parcel in that
  no such event named is shown too (flagged "seen in the book"). When the depot has none of
  those events (a locker whose first events it lost), the grid is completed from the depot's
  settings (`LockerSiteConfig.compartments`, a count per size) with unnamed cells, inferred
  free: the settings say how many there are, not which.
- *Occupied, expired, reserved*: the book's parcel rows (`in_locker` → occupied,
  `hold_expired` → expired, any other parcel with a compartment → reserved: the locker's
  `command_accepted` for a `reserve` set it). This lags the locker by its sync: a parcel
  picked up while the locker is offline still shows until its events arrive.
- *Hold until*: the newest `in_locker` or `hold_extended` timeline entry of the parcel (the
  locker's own `hold_until_ns`, as it reported it).
- *Out of service*: inferred from the locker's events, in its journal order: a `lock_jammed`
  alarm takes a compartment out (the locker does so on the same event), a
  `compartment_in_service` event (the `set_in_service` command's) puts it back.
- *Alarms*: the open alarms of the locker (`depot.alarms`); those naming a compartment are
  marked on its cell too.

*A staffed counter* (a site of kind ``counter``: shelves, no doors) is no grid: its
``capacity`` (the settings') against its occupancy, the parcels the book has held there
(`in_locker` and `hold_expired`, the latter on its returns pile), and those reserved, with
its holds (which may be extended) and alarms; it has no compartment to open or put back.

Each action is a POST through `console.action` (operator role, CSRF) to the depot service,
which signs the command into its outbox with the operator's name and reason (`by`, `reason`
in the command's arguments: recorded in `depot_commands`, journaled by the locker with its
answer). The page lists the locker's recent commands with their answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from depot.alarms import list_alarms
from depot.config import LockerSiteConfig
from depot.store import Conn
from depot.store import lockers as facts
from depot.tracking import iso_utc
from depot.web.api import reader
from depot.web.auth import Session
from depot.web.console import ActionRefused, action, page
from depot.web.context import DepotActions, WebDepot

CELL_STATES = ("free", "reserved", "occupied", "expired", "out_of_service")
RECENT_COMMANDS = 8
ANSWERS_LOOKED_AT = 200
MAX_ALARMS = 500


def _when(ns: int | None) -> str:
    return "—" if ns is None else iso_utc(int(ns))[:19].replace("T", " ")


def _short(iso: object) -> str | None:
    return iso[:16].replace("T", " ") if isinstance(iso, str) and iso else None


def _loads(text: object) -> dict[str, Any]:
    try:
        doc = json.loads(str(text))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _service(rows: Sequence[tuple[Any, ...]]) -> tuple[dict[str, str | None], dict[str, str]]:
    """From a locker's compartment events: {compartment: size} in installation order, and
    {compartment: why it is out of service} for those out now."""
    sizes: dict[str, str | None] = {}
    out: dict[str, str] = {}
    for kind, payload in rows:
        doc = _loads(payload)
        cid = doc.get("compartment")
        if not isinstance(cid, str):
            continue
        if kind == "compartment_installed":
            size = doc.get("size")
            sizes.setdefault(cid, size if isinstance(size, str) else None)
        elif kind == "compartment_in_service":
            out.pop(cid, None)
        elif doc.get("alarm") == facts.JAMMED:
            out[cid] = "lock jammed"
    return sizes, out


def _grid(
    name: str,
    site: LockerSiteConfig | None,
    service_rows: Sequence[tuple[Any, ...]],
    held: Sequence[tuple[Any, ...]],
    holds: Mapping[str, str | None],
    alarms: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    sizes, out = _service(service_rows)
    cells: dict[str, dict[str, Any]] = {
        cid: {"id": cid, "size": size, "known": True, "state": "free", "parcel": None}
        for cid, size in sizes.items()
    }
    for _locker, cid, parcel, state, size in held:
        cell = cells.setdefault(
            str(cid), {"id": str(cid), "size": None, "known": False, "state": "free",
                       "parcel": None},
        )
        if cell["parcel"] is not None and cell["state"] != "reserved":
            continue  # a parcel held there wins over a reservation the book still shows
        cell["parcel"] = str(parcel)
        cell["parcel_size"] = size
        cell["state"] = {"in_locker": "occupied", "hold_expired": "expired"}.get(
            str(state), "reserved"
        )
        cell["hold_until"] = _short(holds.get(str(parcel)))
    for cid, why in out.items():
        cell = cells.setdefault(
            cid, {"id": cid, "size": None, "known": False, "state": "free", "parcel": None}
        )
        cell["state"], cell["out_reason"] = "out_of_service", why
    by_compartment: dict[str, int] = {}
    for alarm in alarms:
        cid = alarm["facts"].get("compartment")
        if isinstance(cid, str):
            by_compartment[cid] = by_compartment.get(cid, 0) + 1
    for cid, cell in cells.items():
        cell["alarms"] = by_compartment.get(cid, 0)
    inferred = []
    if not sizes and site is not None:
        # No installation events: the settings' counts complete the grid, unnamed.
        left = dict(site.compartments)
        for cell in cells.values():
            size = cell.get("parcel_size")
            if isinstance(size, str) and left.get(size, 0) > 0:
                left[size] -= 1
        for size, n in sorted(left.items()):
            inferred += [{"size": size, "state": "free"} for _ in range(max(0, n))]
    ordered = sorted(cells.values(), key=lambda c: (not c["known"], c["id"]))
    counts = dict.fromkeys(CELL_STATES, 0)
    for cell in ordered:
        counts[cell["state"]] += 1
    counts["free"] += len(inferred)
    return {
        "name": name,
        "title": site.title if site is not None else "",
        "address": site.address if site is not None else "",
        "cells": ordered,
        "inferred": inferred,
        "counts": counts,
        "held": [c for c in ordered if c["state"] in ("occupied", "expired")],
        "out": [c for c in ordered if c["state"] == "out_of_service"],
        "alarms": list(alarms),
    }


def _counter(grid: dict[str, Any], site: LockerSiteConfig) -> dict[str, Any]:
    """A counter's occupancy from its grid's counts: held (on its shelves or its returns
    pile) and reserved, against the capacity the depot plans with."""
    counts = grid["counts"]
    held = counts["occupied"] + counts["expired"]
    taken = held + counts["reserved"]
    return {
        **grid,
        "kind": "counter",
        "capacity": site.capacity,
        "occupancy": {
            "held": held,
            "to_return": counts["expired"],
            "reserved": counts["reserved"],
            "free": max(0, site.capacity - taken),
            "percent": round(100 * taken / site.capacity) if site.capacity else 0,
        },
        "cells": [],
        "inferred": [],
    }


def _commands(conn: Conn, locker: str) -> list[dict[str, Any]]:
    answers: dict[str, tuple[str, dict[str, Any]]] = {}
    for kind, payload in facts.command_answers(conn, locker, ANSWERS_LOOKED_AT):
        doc = _loads(payload)
        if isinstance(doc.get("id"), str):
            answers.setdefault(doc["id"], (str(kind), doc))
    found = []
    for cid, act, args, created_ns, published_ns in facts.recent_commands(
        conn, locker, RECENT_COMMANDS
    ):
        doc = _loads(args)
        kind, answer = answers.get(str(cid), ("", {}))
        if kind == "command_accepted":
            outcome = "done"
        elif kind == "command_failed":
            outcome = f"failed: {answer.get('reason', '')}"
        else:
            outcome = "sent, no answer yet" if published_ns is not None else "queued"
        found.append(
            {
                "id": str(cid),
                "action": str(act),
                "what": doc.get("compartment") or doc.get("parcel") or "",
                "by": doc.get("by") or "depot",
                "reason": doc.get("reason") or "",
                "queued": _when(created_ns),
                "outcome": outcome,
            }
        )
    return found


def _build(request: Request, depot: WebDepot, session: Session) -> Mapping[str, Any]:
    sites = {s.name: s for s in depot.sites.lockers}
    with reader(depot.book.database) as conn:
        held = facts.parcels_in_lockers(conn)
        names = sorted(set(sites) | {str(r[0]) for r in held})
        holds: dict[str, str | None] = {}
        for parcel, details in facts.hold_entries(
            conn, [str(r[2]) for r in held if r[3] in facts.HELD]
        ):
            holds[str(parcel)] = _loads(details).get("hold_until")
        alarms = [a for a in list_alarms(conn, "open", MAX_ALARMS) if a["device"] in names]
        lockers = []
        for name in names:
            grid = _grid(
                name,
                sites.get(name),
                facts.compartment_events(conn, name),
                [r for r in held if r[0] == name],
                holds,
                [a for a in alarms if a["device"] == name],
            )
            grid["commands"] = _commands(conn, name)
            site = sites.get(name)
            if site is not None and site.kind == "counter":
                grid = _counter(grid, site)
            lockers.append(grid)
    return {
        "lockers": lockers,
        "can_act": session.may_act and depot.actions is not None,
        "no_service": depot.actions is None,
    }


# --- the actions ---------------------------------------------------------------------------------


def _actions(depot: WebDepot) -> DepotActions:
    if depot.actions is None:
        raise ActionRefused("this depot runs without its service; nothing can be sent")
    return depot.actions


def _reason(form: Mapping[str, str]) -> str:
    reason = form.get("reason", "").strip()
    if not reason:
        raise ActionRefused("say why (a reason is required)")
    return reason


def _extend(request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]) -> str:
    locker = request.path_params["locker"]
    parcel = form.get("parcel", "").strip()
    if not parcel:
        raise ActionRefused("which parcel?")
    command, hours = _actions(depot).operator_extend_hold(parcel, session.user, _reason(form))
    return f"Asked {locker} to hold {parcel} {hours:g} h longer (command {command[:8]})."


def _open(request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]) -> str:
    locker = request.path_params["locker"]
    compartment = form.get("compartment", "").strip()
    if not compartment:
        raise ActionRefused("which compartment?")
    command = _actions(depot).operator_remote_open(
        locker, compartment, session.user, _reason(form)
    )
    return f"Asked {locker} to open {compartment} (command {command[:8]})."


def _in_service(
    request: Request, depot: WebDepot, session: Session, form: Mapping[str, str]
) -> str:
    locker = request.path_params["locker"]
    compartment = form.get("compartment", "").strip()
    if not compartment:
        raise ActionRefused("which compartment?")
    command = _actions(depot).operator_set_in_service(
        locker, compartment, session.user, _reason(form)
    )
    return f"Asked {locker} to put {compartment} back in service (command {command[:8]})."


def routes() -> list[BaseRoute]:
    return [
        Route("/console/lockers", page("lockers", "lockers.html", _build), methods=["GET"]),
        Route("/console/lockers/{locker}/extend", action(_extend), methods=["POST"]),
        Route("/console/lockers/{locker}/open", action(_open), methods=["POST"]),
        Route("/console/lockers/{locker}/in-service", action(_in_service), methods=["POST"]),
    ]
