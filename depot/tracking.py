"""The depot's parcel book: every parcel's state, its timeline, and who is told about it.

Owns the parcel tables (`parcels`, `timeline`, `vans`, `unmatched`, `van_days`,
`locker_commands`, `projection`; created by `depot.store.migrations`) in the depot's database
beside `depot.ingest`'s `events`, and the projection that turns those stored device events
into parcel states following docs/DELIVERY.md. A batch of events, the states and timeline
entries it causes, the notifications about them and the projection cursor commit in ONE
transaction: a crash at any instant leaves the book either before the batch or after it, never
half-way, and a timeline entry is unique per (parcel, device event uuid), so an event is never
applied twice even if the cursor were rewound. Alarm events move no parcel: the projection
records them (`depot.alarms`) in the same transaction.

Must never: write to a table of `depot.ingest` (it only reads `events`), move a parcel out of
a final state (`delivered`, `picked_up`, `returned_to_sender`), drop an event about a parcel
it does not know (it goes to `unmatched` and is applied when the parcel arrives), or let a
pickup code or sealed credential reach a table or a notification (they travel sealed,
elsewhere).

State decisions beyond the contract's diagram (docs/DELIVERY.md, "Parcel states"):

- Device facts are physical truth, but they reach the depot per device in order and across
  devices in any order (a van in a dead zone reports its redirect after the locker reported
  the deposit). A fact whose state the parcel has already passed (the parcel is reachable from
  it by the usual steps) is *late*: it is kept in the timeline with its own time and step,
  marked `late`, and changes nothing. A fact that contradicts a final state (delivered after
  picked up) is an `anomaly` entry and changes nothing. A fact about a non-final parcel that
  is not a usual step (delivered while `received`) is applied, because the device saw it, and
  marked `irregular`.
- `at_depot` and `in_locker` may follow any non-final state: a scan at the depot and a locker
  door closing on the parcel are decisive about where it is.
- A van's `parcel_dropped_at_locker` is a claim: a `dropped_at_locker` timeline entry that
  moves nothing and tells nobody. Only the locker's `parcel_deposited` makes a parcel
  `in_locker`. A `dropoff_abandoned` leaves the parcel as it was, on the van that brought it.
  The projection keeps each drop the van and the locker do not agree on yet in
  `locker_drops` (`locker_drops_due`); the depot service acts on those that stay open.
- Returns: `parcel_returned_to_depot` makes a parcel `returning` when its next action is
  `return_to_sender`, else `at_depot`; `set_next_action(..., "return_to_sender")` turns an
  `at_depot` parcel `returning`; a courier collecting an expired parcel from a locker
  (`parcel_returned`) makes it `returning`; the van that took it says so with
  `parcel_collected_from_locker` (a timeline step, no state); a customer's return handed to
  the courier at the door (`return_collected_at_door`) makes it `returning` itself; one the
  courier could not take there (`return_pickup_missed`) is a `pickup_missed` step that moves
  nothing (the return is still booked, waiting at the door for a next round) but is handed
  to the policy once, like a refused reservation, so the customer and merchant hear of it;
  and its return scan at the depot, though it changes no state, is handed to the policy like
  a move. A parcel stays
  `returning` until a person books it handed back (`mark_returned_to_sender`), because only
  then has it left the depot.
- `hold_expired` is a state (the parcel is still in the compartment, no longer collectable);
  it becomes `returning` when the courier takes it out, or `in_locker` again when the depot
  extends the hold.
- A locker whose journal went back (docs/WIRE.md, "Journal epochs") may record a deposit the
  depot already holds again, with a new event and a NEW pickup credential: the one the
  customer was told is gone with the lost part of its file. A `parcel_deposited` at the
  parcel's own locker, while it is `in_locker` or `hold_expired`, whose sealed credential is
  not the one of the last deposit told, is such a re-record: one `in_locker` timeline entry
  that says so, and a new pickup notice (new code, the new hold) that replaces the earlier
  one, through the usual notify path. The same credential again tells nobody.
- Outcomes at the door (`depot.outcomes`): a van's `outcome_refused` is a timeline entry
  that moves nothing and tells nobody; a delivery is judged again against the depot's own
  care of the parcel, and one that broke it is still applied (the van did hand it over) but
  marked `preference_violated` and alarmed; a failed attempt's card is kept by its digest.
- A device event's time is its wall clock when the device says that clock was synchronised,
  else the depot's receipt time (a van without a real-time clock may think it is 1970). The
  timeline is ordered by projection order, never by those times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from depot import outcomes
from depot.alarms import ALARM_KIND, record_device_alarm
from depot.errors import DepotError
from depot.store import Conn, DepotDatabase, StoreError, book, events, open_database
from depot.store.sqlite import close_reader, read_only
from parcel.codes import PICKUP_MISSED_REASONS
from sync.clock import Clock, SystemClock

log = logging.getLogger(__name__)

DEPOT_DEVICE = "depot"  # the `device` of timeline entries the depot itself makes
CUSTOMER_DEVICE = "customer"  # ... and of those a customer's request made (their page)
REQUEST_STEP = "customer_request"

STATES = (
    "received",
    "loaded",
    "out_for_delivery",
    "attempted",
    "redirected",
    "in_locker",
    "hold_expired",
    "returning",
    "at_depot",
    "return_booked",
    "return_dropped",
    "delivered",
    "picked_up",
    "returned_to_sender",
)
FINAL_STATES = frozenset({"delivered", "picked_up", "returned_to_sender"})
_NON_FINAL = tuple(s for s in STATES if s not in FINAL_STATES)

# The usual steps (docs/DELIVERY.md); anything else is late, irregular or an anomaly.
_CONTRACT_STEPS: dict[str, frozenset[str]] = {
    "received": frozenset({"loaded", "returned_to_sender"}),
    "at_depot": frozenset({"loaded", "returned_to_sender"}),
    "loaded": frozenset({"out_for_delivery"}),
    "out_for_delivery": frozenset({"attempted", "delivered", "redirected"}),
    "attempted": frozenset({"attempted", "out_for_delivery", "delivered", "redirected"}),
    "redirected": frozenset({"attempted", "delivered"}),
    "in_locker": frozenset({"picked_up", "hold_expired"}),
    "hold_expired": frozenset({"picked_up", "in_locker"}),
    "returning": frozenset({"returned_to_sender"}),
    # A customer's return (`depot.returns`): booked, into a locker; `returning` (a courier
    # took it out) is a place, so it may follow either.
    "return_booked": frozenset({"return_dropped", "loaded"}),
    "return_dropped": frozenset(),
}
# Where the parcel physically is, said by the place itself, may follow any non-final state.
_PLACES = frozenset({"at_depot", "in_locker", "returning"})
_USUAL = {state: _CONTRACT_STEPS[state] | (_PLACES - {state}) for state in _NON_FINAL}


def _reachable(start: str) -> frozenset[str]:
    seen: set[str] = set()
    todo = deque([start])
    while todo:
        for nxt in _USUAL.get(todo.popleft(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


_LATER = {state: _reachable(state) for state in STATES}

# Outcomes customers and merchants are told about.
NOTIFIED_STATES = frozenset(
    {
        "received",
        "out_for_delivery",
        "attempted",
        "delivered",
        "in_locker",
        "picked_up",
        "returned_to_sender",
    }
)
REASON_TEXT = {
    "not_at_home": "nobody was at home",
    "no_access": "the courier could not get to the door",
    "address_not_found": "the address could not be found",
    "refused": "the parcel was refused",
    "damaged": "the parcel is damaged",
    "business_closed": "the business was closed",
    "no_safe_place": "nobody was at home and there is no safe place we may use",
    "age_check_failed": "nobody of age could show an ID",
    "reschedule_requested": "you asked for another day",
    "card_left": "nobody was at home; we left a card",
}
# docs/DELIVERY.md "Failure reasons": the French INOVERT situation|justification, where defined.
# The timeline's and the notice's words for a deposit the locker recorded again (above).
RERECORDED_TEXT = "re-recorded by the locker after it lost its record; new pickup code issued"
REPLACED_REASON = (
    "the locker lost its record of the deposit and issued a new pickup code; "
    "the earlier code no longer opens the door"
)
INOVERT = {
    "not_at_home": "REN|DAF",
    "address_not_found": "REN|CAD",
    "refused": "REN|SNC",
    "delivered": "LIV|CFM",
}
Source = Literal["import", "arrival_scan"]
Audience = Literal["merchant", "customer"]

_TIMELINE_NS = uuid.UUID("6f1c6a55-29f4-4d0e-9a43-61e1a1a7c0de")
_RECORD_COLUMNS = (
    "raw",
    "merchant",
    "recipient",
    "address",
    "lat",
    "lon",
    "window",
    "instructions",
    "webhook",
    "customer_webhook",
    "size",
    "locker_ok",
)

class TrackingError(DepotError):
    """The parcel book cannot do what was asked."""


class ParcelBookError(TrackingError):
    """The book's tables cannot be used (a person must look at the file; nothing is deleted)."""


class UnknownParcelError(TrackingError):
    """No parcel with this id was ever received at the depot."""

    def __init__(self, parcel: str) -> None:
        super().__init__(f"unknown parcel {parcel!r}")
        self.parcel = parcel


class ParcelStateError(TrackingError):
    """The parcel's state does not allow this (a final state is never left)."""

    def __init__(self, parcel: str, state: str, wanted: str) -> None:
        super().__init__(f"parcel {parcel} is {state}; cannot {wanted}")
        self.parcel = parcel
        self.state = state


@dataclass(frozen=True)
class Notification:
    """One message to a merchant or a customer, committed with the state change it reports.

    `event_id` is stable (`<timeline entry uuid>:<audience>`), so a receiver can dedup.
    """

    event_id: str
    audience: Audience
    url: str
    body: Mapping[str, Any]


Notify = Callable[[Conn, Notification], None]


def _no_notify(conn: Conn, notification: Notification) -> None:
    """The default: tell nobody (tests and tools that only read the book)."""


@dataclass(frozen=True)
class Transition:
    """Something the projection did that the exceptions policy may have to act on.

    `state` is the state the parcel entered (`attempted` again for a second failed attempt),
    or `reserve_failed` when a locker refused a reservation: the parcel is where it was
    (`previous`), and the policy must choose again; or `pickup_missed` when a courier could
    not take a customer's return at its door (still `return_booked`: the return desk tells).
    """

    parcel: str
    state: str
    previous: str
    step: str
    device: str
    event_uuid: str
    at_ns: int
    details: Mapping[str, Any]


@dataclass(frozen=True)
class LockerDrop:
    """A drop-off the van and the locker do not agree on yet (docs/DELIVERY.md).

    `kind`: `claim` (the van says dropped, the locker has not said deposited), `deposit` (the
    locker has it, the van has not said it dropped it: it says it still holds it), `abandoned`
    (the locker's door closed empty: the parcel is still with the courier). `since_ns` is the
    depot's clock when the projection saw it.
    """

    id: int
    kind: str
    parcel: str
    locker: str
    van: str | None
    compartment: str | None
    event_uuid: str
    since_ns: int


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a parcel's history, as stored; `parcel_kind` is the id's kind if known."""

    uuid: str
    parcel: str
    parcel_kind: str | None
    at_ns: int
    state: str
    step: str
    device: str
    event_uuid: str
    details: Mapping[str, Any]


def iso_utc(ns: int) -> str:
    """ISO-8601 UTC with milliseconds and `Z`; out-of-range device clocks are clamped."""
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    except OverflowError:
        moment = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) if ns > 0 else datetime.min
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_http_url(url: object) -> bool:
    if not isinstance(url, str) or not url:
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def _ids(value: object) -> list[str]:
    return [p for p in value if isinstance(p, str) and p] if isinstance(value, list) else []


def _loads(text: object) -> dict[str, Any]:
    try:
        doc = json.loads(str(text))
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- reading the book --------------------------------------------------------------------


class _ParcelQueries:
    """The questions anyone may ask the book; answered from whatever connection `_reading`
    lends (the book's own under its lock, or a read-only view's)."""

    def _reading(self) -> contextlib.AbstractContextManager[Conn]:
        raise NotImplementedError

    def parcel(self, parcel: str) -> dict[str, Any] | None:
        """Everything the book holds about one parcel (the policy's input), or None."""
        with self._reading() as conn:
            info = book.parcel_row(conn, parcel)
        if info is None:
            return None
        info["record"] = _loads(info["record"])
        info["window"] = json.loads(info["window"]) if info["window"] else None
        info["locker_ok"] = None if info["locker_ok"] is None else bool(info["locker_ok"])
        return info

    def track(self, parcel: str) -> dict[str, Any]:
        """A parcel's state and history for people (`lastmile depot track`, the HTTP API).

        Webhook URLs and the raw record stay out: they may carry a merchant's tokens.
        """
        with self._reading() as conn:
            row = book.parcel_summary(conn, parcel)
            if row is None:
                raise UnknownParcelError(parcel)
            entries = book.timeline_of(conn, parcel)
        return {
            "parcel": row[0],
            "state": row[1],
            "final": row[1] in FINAL_STATES,
            "attempts": row[2],
            "last_reason": row[3],
            "van": row[4],
            "stop": row[5],
            "locker": row[6],
            "compartment": row[7],
            "next_action": row[8],
            "merchant": row[9],
            "recipient": row[10],
            "address": row[11],
            "updated": iso_utc(row[12]),
            "timeline": [
                {
                    "at": iso_utc(e[0]),
                    "state": e[1],
                    "step": e[2],
                    "device": e[3],
                    "details": _loads(e[4]),
                }
                for e in entries
            ],
        }

    def parcels(self, state: str | None = None) -> list[dict[str, Any]]:
        """One summary line per parcel, optionally only those in `state`."""
        if state is not None and state not in STATES:
            raise TrackingError(f"unknown state {state!r}; states are {', '.join(STATES)}")
        with self._reading() as conn:
            rows = book.parcel_lines(conn, state)
        keys = ("parcel", "state", "attempts", "van", "stop", "locker", "next_action", "merchant")
        return [{**dict(zip(keys, r[:8], strict=True)), "updated": iso_utc(r[8])} for r in rows]

    def counts_by_state(self) -> dict[str, int]:
        """Parcels per state, every state named (zeros included)."""
        with self._reading() as conn:
            rows = book.state_counts(conn)
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(s): int(n) for s, n in rows})
        return counts

    def outcome_counts(
        self,
        counters: Sequence[str] = (),
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> dict[str, Any]:
        """`preference_refusals`, `preference_violations`, `deliveries_by_method`
        (`depot.outcomes.outcome_counts`); `counters` names the staffed counters."""
        with self._reading() as conn:
            return outcomes.outcome_counts(
                conn, counters=frozenset(counters), start_ns=start_ns, end_ns=end_ns
            )

    def van_versions(self) -> dict[str, dict[str, Any]]:
        """The manifest each van said it runs (`manifest_applied`), by van."""
        with self._reading() as conn:
            rows = book.van_manifests(conn)
        return {
            str(v): {"manifest_version": int(n), "day": str(d), "updated": iso_utc(int(u))}
            for v, n, d, u in rows
        }

    def timeline_entries(self, parcels: Sequence[str] | None = None) -> list[TimelineEntry]:
        """Stored timeline entries in projection order; raises for a parcel never received."""
        with self._reading() as conn:
            if parcels is None:
                rows = book.timeline_with_records(conn)
            else:
                rows = []
                for pid in parcels:
                    if not book.parcel_exists(conn, pid):
                        raise UnknownParcelError(pid)
                    rows.extend(book.timeline_with_records(conn, pid))
        entries = []
        for r in rows:
            kind = _loads(r[2]).get("kind")
            entries.append(
                TimelineEntry(
                    uuid=str(r[0]),
                    parcel=str(r[1]),
                    parcel_kind=kind if isinstance(kind, str) else None,
                    at_ns=int(r[3]),
                    state=str(r[4]),
                    step=str(r[5]),
                    device=str(r[6]),
                    event_uuid=str(r[7]),
                    details=_loads(r[8]),
                )
            )
        return entries

    def awaiting_assignment(self) -> list[dict[str, Any]]:
        """Parcels at the depot (`received`, `at_depot`) that a day plan may put on a van."""
        with self._reading() as conn:
            rows = book.at_the_depot(conn)
        return [
            {
                "id": r[0],
                "state": r[1],
                "next_action": r[2],
                "locker": r[3],
                "attempts": r[4],
                "record": _loads(r[5]),
            }
            for r in rows
        ]

    def locker_occupancy(self) -> dict[str, dict[str, int]]:
        """Compartments held or reserved per locker and parcel size, as far as the book knows."""
        with self._reading() as conn:
            rows = book.locker_occupancy(conn)
        busy: dict[str, dict[str, int]] = {}
        for locker, size, n in rows:
            busy.setdefault(str(locker), {})[str(size)] = int(n)
        return busy

    def unmatched(self, *, include_resolved: bool = False) -> list[dict[str, Any]]:
        """Device events about parcels the book did not know when they were projected."""
        with self._reading() as conn:
            rows = book.unmatched_rows(conn, include_resolved=include_resolved)
        keys = ("event_rowid", "event_uuid", "parcel", "device", "kind", "reason")
        return [{**dict(zip(keys, r[:6], strict=True)), "resolved": r[7] is not None} for r in rows]

    def reconciliations(self, van: str | None = None) -> list[dict[str, Any]]:
        """Each van's `day_closed` report with the differences from the book at that moment."""
        with self._reading() as conn:
            rows = book.van_day_reports(conn, van)
        return [
            {
                "van": r[0],
                "day": r[1],
                "at": iso_utc(r[2]),
                "report": _loads(r[3]),
                "discrepancies": json.loads(r[4]),
            }
            for r in rows
        ]

    def projected_rowid(self) -> int:
        """The highest `events.rowid` the projection has applied (with several workers storing
        at once, a lower one may still wait: `waiting_events()` counts those)."""
        with self._reading() as conn:
            return book.projected_rowid(conn)

    def waiting_events(self) -> int:
        """Stored device events the projection has not applied yet."""
        with self._reading() as conn:
            return events.waiting_count(conn)


class ParcelView(_ParcelQueries):
    """A read-only connection to the book for one reader thread (an HTTP request).

    SQLite connections belong to one thread; a view per request keeps readers off the
    writer's lock, and WAL lets them read while the projection writes.
    """

    def __init__(self, database: str | Path | DepotDatabase) -> None:
        self._database: DepotDatabase | None = None
        if isinstance(database, DepotDatabase):
            try:
                self._db: Conn = database.reader()
            except StoreError as exc:
                raise ParcelBookError(str(exc)) from exc
            self._database = database
            return
        try:
            self._db = read_only(database)
        except StoreError as exc:
            raise ParcelBookError(f"cannot read the parcel book: {exc}") from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Conn]:
        yield self._db

    def photo(self, sha256: str) -> tuple[str, bytes] | None:
        """A stored, verified proof-of-delivery photo: (content type, bytes), or None."""
        return events.photo_in(self._db, sha256)

    def close(self) -> None:
        if self._database is not None:
            self._database.close_reader(self._db)
        else:
            close_reader(self._db)

    def __enter__(self) -> ParcelView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- what a device event says about parcels ---------------------------------------------


@dataclass(frozen=True)
class _StoredEvent:
    rowid: int
    device: str
    uuid: str
    at_ns: int
    depot_time: bool
    kind: str
    payload: Mapping[str, Any]


TargetRule = Callable[[str, str | None], str | None]  # (state, next_action) -> target


@dataclass(frozen=True)
class _Fact:
    """What one event says about one parcel: a timeline step, maybe a state to enter, and
    columns to set when the fact is current (not late, not an anomaly)."""

    parcel: str
    step: str
    target: str | TargetRule | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    sets: Mapping[str, Any] = field(default_factory=dict)
    sets_only_if: Mapping[str, Any] = field(default_factory=dict)
    failed_attempt: str | None = None  # the reason, when the fact is a failed attempt


def _returned_to_depot_target(state: str, next_action: str | None) -> str:
    return "returning" if next_action == "return_to_sender" else "at_depot"


def _hold_extended_target(state: str, next_action: str | None) -> str | None:
    return "in_locker" if state == "hold_expired" else None


def _pod(payload: Mapping[str, Any]) -> dict[str, Any]:
    pod = payload.get("pod")
    return {"pod": pod} if isinstance(pod, dict) else {}


def _reason(payload: Mapping[str, Any], words: Mapping[str, str]) -> tuple[str, str]:
    """A van event's `reason` and its words for people (`words`; a code the table does not
    know is shown as its own words): what a timeline entry and its notices say."""
    reason = _text(payload, "reason") or "unknown"
    return reason, words.get(reason, reason.replace("_", " "))


def _van_facts(
    ev: _StoredEvent,
    loaded_of_van: Callable[[str], list[str]],
    day_of_van: Callable[[str], str | None],
) -> list[_Fact]:
    p, kind, dev = ev.payload, ev.kind, ev.device
    parcel = _text(p, "parcel")
    stop = p.get("stop") if isinstance(p.get("stop"), int) else None
    if kind == "departed":
        loaded = _ids(p["loaded"]) if "loaded" in p else loaded_of_van(dev)
        details = {"van": dev, "manifest_version": p.get("version")}
        facts = [_Fact(x, "out_for_delivery", "out_for_delivery", details) for x in loaded]
        facts += [_Fact(x, "not_loaded", None, {"van": dev}) for x in _ids(p.get("missing"))]
        return facts
    if kind == "day_closed":
        return [_Fact(x, "unaccounted", None, {"van": dev}) for x in _ids(p.get("unaccounted"))]
    if parcel is None:
        return []
    if kind == "parcel_loaded":
        details = {"van": dev, "stop": stop, "shelf": p.get("shelf")}
        return [_Fact(parcel, "loaded", "loaded", details, {"van": dev, "stop": stop})]
    if kind == "parcel_delivered":
        details = {
            "van": dev,
            "stop": stop,
            "to": p.get("to"),
            "name": p.get("name"),
            "neighbour_address": p.get("neighbour_address"),
            "upu": p.get("upu", "EMI"),
            "x12": p.get("x12", "D"),
            "inovert": INOVERT["delivered"],
            **outcomes.delivered_details(p),
            **_pod(p),
        }
        return [_Fact(parcel, "delivered", "delivered", details)]
    if kind == "delivery_failed":
        reason, words = _reason(p, REASON_TEXT)
        details = {
            "van": dev,
            "stop": stop,
            "reason": reason,
            "reason_text": words,
            "van_attempt": p.get("attempt"),
            "upu": p.get("upu", "EMH"),
            "x12": p.get("x12", "AH"),
            **({"inovert": INOVERT[reason]} if reason in INOVERT else {}),
            **outcomes.failed_details(p, reason),
            **_pod(p),
        }
        return [_Fact(parcel, "attempted", "attempted", details, failed_attempt=reason)]
    if kind == "outcome_refused":
        # The van refused a handover the parcel's care forbids: recorded, nothing moves.
        details = {"van": dev, "stop": stop, **outcomes.refused_details(p)}
        return [_Fact(parcel, "outcome_refused", None, details)]
    if kind == "parcel_redirected":
        locker = _text(p, "locker")
        details = {"van": dev, "stop": stop, "locker": locker, **_pod(p)}
        sets = {"locker": locker} if locker else {}
        return [_Fact(parcel, "redirected", "redirected", details, sets)]
    if kind == "parcel_dropped_at_locker":
        locker = _text(p, "locker")
        details = {
            "van": dev,
            "stop": stop,
            "locker": locker,
            "compartment": p.get("compartment"),
            "x12": "AU",
            **_pod(p),
        }
        # The van's word only: the locker's `parcel_deposited` is what puts it in the locker.
        return [_Fact(parcel, "dropped_at_locker", None, details)]
    if kind == "parcel_returned_to_depot":
        details = {"van": dev}
        return [_Fact(parcel, "returned_to_depot", _returned_to_depot_target, details)]
    if kind == "parcel_collected_from_locker":
        # The locker's `parcel_returned` moves the parcel; this says which van has it.
        details = {"van": dev, "stop": stop, "locker": _text(p, "locker")}
        return [_Fact(parcel, "collected_by_van", None, details, {"van": dev})]
    if kind == "return_collected_at_door":
        # A customer's return handed to the courier at its door: in the van, for the depot.
        details = {"van": dev, "stop": stop}
        return [_Fact(parcel, "collected_at_door", "returning", details, {"van": dev})]
    if kind == "return_pickup_missed":
        # The courier called and could not take it: still booked, planned again; nothing
        # moves. `day` is the round's (the van's events come in order, so the manifest it
        # last said it runs is the one it ran then): the customer's page compares it with
        # the day of the round that lists the pickup now.
        reason, words = _reason(p, PICKUP_MISSED_REASONS)
        details = {
            "van": dev,
            "stop": stop,
            "reason": reason,
            "reason_text": words,
            "day": day_of_van(dev),
        }
        return [_Fact(parcel, "pickup_missed", None, details)]
    return []


def _locker_facts(ev: _StoredEvent, command_parcel: Callable[[str], str | None]) -> list[_Fact]:
    p, kind, dev = ev.payload, ev.kind, ev.device
    parcel = _text(p, "parcel")
    compartment = _text(p, "compartment")
    where = {"locker": dev, "compartment": compartment}
    if kind == "command_accepted" and parcel is not None:
        action = p.get("action")
        if action == "reserve":
            details = {**where, "command": p.get("id"), "again": bool(p.get("again", False))}
            sets = {"locker": dev, "compartment": compartment}
            return [_Fact(parcel, "locker_reserved", None, details, sets)]
        if action == "extend_hold":
            until = p.get("hold_until_ns")
            details = {
                "locker": dev,
                "hold_until": iso_utc(until) if isinstance(until, int) else None,
            }
            return [_Fact(parcel, "hold_extended", _hold_extended_target, details)]
        return []
    if kind == "command_failed":
        command = _text(p, "id")
        target = parcel or (command_parcel(command) if command else None)
        if target is None:
            return []
        details = {"locker": dev, "command": command, "reason": p.get("reason")}
        if p.get("action") == "reserve":
            return [_Fact(target, "reserve_failed", None, details)]
        return [_Fact(target, "command_failed", None, {**details, "action": p.get("action")})]
    if parcel is None:
        return []
    if kind == "parcel_deposited":
        until = p.get("hold_until_ns")
        details = {
            **where,
            "size": p.get("size"),
            "hold_until": iso_utc(until) if isinstance(until, int) else None,
            "x12": "AU",
        }  # credential_for_depot stays out: the depot's credential desk unseals it elsewhere
        return [_Fact(parcel, "in_locker", "in_locker", details, where)]
    if kind == "dropoff_abandoned":
        # The door closed empty: the parcel is still with the courier who brought it.
        details = {**where, "does_not_fit": bool(p.get("does_not_fit"))}
        return [_Fact(parcel, "dropoff_abandoned", None, details)]
    if kind == "parcel_picked_up":
        details = {**where, **outcomes.handout_proof(p)}  # a counter's staff take proof
        return [_Fact(parcel, "picked_up", "picked_up", details, {"compartment": None})]
    if kind == "hold_expired":
        return [_Fact(parcel, "hold_expired", "hold_expired", where)]
    if kind == "parcel_returned":
        sets = {"compartment": None}
        return [_Fact(parcel, "collected_for_return", "returning", where, sets)]
    if kind == "return_dropped":  # a customer's return, into a compartment with its code
        details = {**where, "size": p.get("size")}
        return [_Fact(parcel, "return_dropped", "return_dropped", details, where)]
    if kind == "reservation_lapsed":
        return [
            _Fact(
                parcel,
                "reservation_lapsed",
                None,
                where,
                {"compartment": None},
                sets_only_if={"locker": dev, "compartment": compartment},
            )
        ]
    return []


_VAN_KINDS = frozenset(
    {
        "manifest_applied",
        "parcel_loaded",
        "departed",
        "parcel_delivered",
        "delivery_failed",
        "parcel_redirected",
        "parcel_dropped_at_locker",
        "parcel_returned_to_depot",
        "parcel_collected_from_locker",
        "return_collected_at_door",
        "return_pickup_missed",
        "outcome_refused",
        "day_closed",
    }
)
_LOCKER_KINDS = frozenset(
    {
        "command_accepted",
        "command_failed",
        "parcel_deposited",
        "parcel_picked_up",
        "hold_expired",
        "parcel_returned",
        "reservation_lapsed",
        "dropoff_abandoned",
        "return_dropped",
    }
)
_NEEDS_PARCEL = (_VAN_KINDS | _LOCKER_KINDS) - {
    "manifest_applied",
    "departed",
    "day_closed",
    "command_accepted",
}


# --- the book ------------------------------------------------------------------------------


class ParcelBook(_ParcelQueries):
    """The depot's parcels. One writer connection behind a lock; readers may use `view()`.

    Example::

        book = ParcelBook("depot.db", notify=my_outbox)
        book.receive({"id": "RR123456785NL", "merchant": "shop", ...}, now_ns=t)
        for t in book.project_new_events():
            ...  # the exceptions policy reacts to t.state
        book.track("RR123456785NL")["state"]
    """

    def __init__(
        self,
        database: str | Path | DepotDatabase,
        *,
        notify: Notify | None = None,
        clock: Clock | None = None,
        queue_for: frozenset[str] = frozenset(),
    ) -> None:
        """`queue_for`: the states whose transitions the caller reacts to (the exceptions
        policy); the projection queues those in its own transaction (`next_reaction`), so
        a process that dies before it reacts leaves them to the next one."""
        # Handed the depot's Database, the book shares its one connection and lock (so a
        # webhook enqueued by `notify` commits with the state change); handed a path, it
        # opens and owns one.
        self._owns = not isinstance(database, DepotDatabase)
        try:
            self._database = open_database(database)
        except StoreError as exc:
            raise ParcelBookError(f"parcel book: {exc}") from exc
        self.path = self._database.path
        self._notify = notify or _no_notify
        self._queue_for = queue_for
        self._clock: Clock = clock or SystemClock()
        self._lock = self._database.lock

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Conn]:
        """One write transaction on the depot's connection (a savepoint inside another)."""
        with self._database.transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Conn]:
        with self._database.reading() as conn:
            yield conn

    def view(self) -> ParcelView:
        """A read-only connection of its own, for a reader on another thread."""
        return ParcelView(self._database)

    @property
    def database(self) -> DepotDatabase:
        """The depot's database the book keeps its tables in (the HTTP API reads alarms and
        devices from it too)."""
        return self._database

    def close(self) -> None:
        if self._owns:
            self._database.close()

    def __enter__(self) -> ParcelBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the depot's own facts -------------------------------------------------------------

    def receive(
        self, record_doc: Mapping[str, Any], *, now_ns: int, source: Source = "import"
    ) -> bool:
        """Add a parcel in state `received`; True if it is new to the book.

        Idempotent on the parcel id: a re-import adds no timeline entry and never resets the
        state; it updates the parcel's data (address, webhooks, ...) with the values it
        carries, because a merchant's correction must reach the next manifest. An arrival scan
        of a parcel still `received` adds its own timeline entry (the parcel is physically
        here now).
        """
        parcel = record_doc.get("id")
        if not isinstance(parcel, str) or not parcel:
            raise TrackingError("a parcel record needs a non-empty string id")
        if source not in ("import", "arrival_scan"):
            raise TrackingError(f"unknown source {source!r} (import or arrival_scan)")
        try:
            record_text = _dumps(record_doc)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"parcel record {parcel} is not JSON: {exc}") from None
        columns = self._record_columns(record_doc)
        with self._lock, self._transaction() as conn:
            row = book.state_and_record(conn, parcel)
            created = row is None
            if row is None:
                book.insert_parcel(conn, parcel, now_ns, record_text, columns)
                state = "received"
            else:
                state = str(row[0])
                given = {k: v for k, v in columns.items() if v is not None}
                merged = {
                    **_loads(row[1]),
                    **{k: v for k, v in record_doc.items() if v is not None},
                }
                book.update_parcel_record(conn, parcel, _dumps(merged), given)
            if state == "received":
                self._record_entry(
                    conn,
                    parcel=parcel,
                    event_uuid=f"receive:{source}",
                    at_ns=now_ns,
                    state="received",
                    step="received",
                    device=DEPOT_DEVICE,
                    details={"source": source},
                    notify=created,
                )
        return created

    @staticmethod
    def _record_columns(doc: Mapping[str, Any]) -> dict[str, Any]:
        columns: dict[str, Any] = {}
        for key in _RECORD_COLUMNS:
            value = doc.get(key)
            if key in ("lat", "lon"):
                number = isinstance(value, int | float) and not isinstance(value, bool)
                columns[key] = float(value) if number and value is not None else None
            elif key == "window":
                columns[key] = json.dumps(list(value)) if isinstance(value, list | tuple) else None
            elif key == "locker_ok":
                columns[key] = int(value) if isinstance(value, bool) else None
            else:
                columns[key] = str(value) if isinstance(value, str | int) and value != "" else None
        return columns

    def assign(self, parcel: str, van: str, stop: int, manifest_version: int) -> None:
        """Record that a manifest puts the parcel on `van` at `stop` (its state stays)."""
        with self._lock, self._transaction() as conn:
            state = self._state_of(conn, parcel)
            if state in FINAL_STATES:
                raise ParcelStateError(parcel, state, f"assign it to {van}")
            last = book.last_assignment(conn, parcel)
            details = {"van": van, "stop": stop, "manifest_version": manifest_version}
            if last is not None and _loads(last) == details:
                return  # the same assignment again (a retried plan): one entry is enough
            book.update_parcel(
                conn, parcel, {"van": van, "stop": stop, "updated_ns": self._clock.wall_ns()}
            )
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid=f"assign:{uuid.uuid4().hex}",
                at_ns=self._clock.wall_ns(),
                state=state,
                step="assigned",
                device=DEPOT_DEVICE,
                details=details,
                notify=False,
            )

    def set_next_action(
        self, parcel: str, kind: str, *, locker: str | None = None, reason: str
    ) -> str:
        """Record what the exceptions policy decided (`second_attempt`, `locker`,
        `return_to_sender`, ...) and return the parcel's state afterwards.

        The policy is decided elsewhere; the book only keeps the decision and its reason in
        the timeline. `return_to_sender` on a parcel at the depot makes it `returning`. A
        parcel already in a final state keeps it and the decision is not recorded (the
        policy may race a pickup).
        """
        if not kind:
            raise TrackingError("a next action needs a kind")
        with self._lock, self._transaction() as conn:
            state = self._state_of(conn, parcel)
            if state in FINAL_STATES:
                log.info("next action %s for %s ignored: parcel is %s", kind, parcel, state)
                return state
            new_state = state
            if kind == "return_to_sender" and state == "at_depot":
                new_state = "returning"
            now = self._clock.wall_ns()
            book.set_next_action(conn, parcel, kind, new_state, now, locker)
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid=f"next_action:{uuid.uuid4().hex}",
                at_ns=now,
                state=new_state,
                step="next_action",
                device=DEPOT_DEVICE,
                details={"kind": kind, "locker": locker, "reason": reason},
                notify=new_state != state,
            )
        return new_state

    def mark_returned_to_sender(self, parcel: str) -> None:
        """A person at the depot booked the parcel handed back to its sender (final).

        Only a parcel at the depot can be handed back: `received`, `at_depot`, `returning`.
        Booking it twice is harmless.
        """
        with self._lock, self._transaction() as conn:
            state = self._state_of(conn, parcel)
            if state == "returned_to_sender":
                return
            if state not in ("received", "at_depot", "returning"):
                raise ParcelStateError(parcel, state, "book it returned to sender")
            now = self._clock.wall_ns()
            book.update_parcel(conn, parcel, {"state": "returned_to_sender", "updated_ns": now})
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid="returned_to_sender",
                at_ns=now,
                state="returned_to_sender",
                step="returned_to_sender",
                device=DEPOT_DEVICE,
                details={"from": state, "x12": "3"},
                notify=True,
            )

    def book_return(
        self, record_doc: Mapping[str, Any], *, now_ns: int, details: Mapping[str, Any]
    ) -> None:
        """Add a customer's return (`depot.returns`) in state `return_booked`, its next action
        `return_to_sender`: it is never planned for delivery, and the van's return scan at the
        depot ends it like any return. In the caller's transaction, if any; tells nobody
        (the return desk tells the merchant and the customer itself)."""
        parcel = str(record_doc["id"])
        columns = self._record_columns(record_doc)
        with self._lock, self._transaction() as conn:
            if book.state_of(conn, parcel) is not None:
                raise TrackingError(f"parcel {parcel} is in the book already")
            book.insert_parcel(conn, parcel, now_ns, _dumps(record_doc), columns)
            book.set_next_action(
                conn, parcel, "return_to_sender", "return_booked", now_ns, None
            )
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid="return_booked",
                at_ns=now_ns,
                state="return_booked",
                step="return_booked",
                device=DEPOT_DEVICE,
                details=details,
                notify=False,
            )

    def record_request(self, parcel: str, request: str, details: Mapping[str, Any]) -> None:
        """A customer's request from their page (`depot.customer`): one timeline entry by
        `CUSTOMER_DEVICE` that moves nothing and tells nobody (the decision that follows, if
        any, is its own entry). In the caller's transaction, if any, so a request and what it
        caused commit together."""
        with self._lock, self._transaction() as conn:
            state = self._state_of(conn, parcel)
            now = self._clock.wall_ns()
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid=f"request:{uuid.uuid4().hex}",
                at_ns=now,
                state=state,
                step=REQUEST_STEP,
                device=CUSTOMER_DEVICE,
                details={"request": request, **details},
                notify=False,
            )

    def record_deferral(self, parcel: str, *, day: str, reason: str, text: str) -> None:
        """The day plan of `day` left the parcel at the depot for another day
        (`depot.routing`, step 6: `reason` and its words): one `deferred` entry by the depot
        that moves nothing and tells nobody, once per parcel and day however often that day
        is planned again."""
        with self._lock, self._transaction() as conn:
            self._record_entry(
                conn,
                parcel=parcel,
                event_uuid=_deferral(day),
                at_ns=self._clock.wall_ns(),
                state=self._state_of(conn, parcel),
                step="deferred",
                device=DEPOT_DEVICE,
                details={"day": day, "reason": reason, "reason_text": text},
                notify=False,
            )

    def times_deferred(self, before: str) -> dict[str, int]:
        """Per parcel still at the depot, how many days' plans before day `before` left it
        there."""
        with self._reading() as conn:
            rows = book.deferrals_at_the_depot(conn, _deferral(before))
        return {str(p): int(n) for p, n in rows}

    def note_command(self, command_id: str, *, locker: str, action: str, parcel: str) -> None:
        """Remember which parcel a signed locker command is about.

        A locker's `command_failed` names only the command id; without this note a refused
        reservation cannot be tied to its parcel and goes to `unmatched`.
        """
        with self._lock, self._transaction() as conn:
            book.note_command(conn, command_id, locker, action, parcel, self._clock.wall_ns())

    @staticmethod
    def _state_of(conn: Conn, parcel: str) -> str:
        state = book.state_of(conn, parcel)
        if state is None:
            raise UnknownParcelError(parcel)
        return state

    # --- the projection --------------------------------------------------------------------

    def project_new_events(self, limit: int = 1000) -> list[Transition]:
        """Apply stored device events not yet projected (and earlier unmatched events whose
        parcel has since been received); return what the policy may have to act on.

        One transaction per call: states, timeline, notifications and the removal of the
        events from the `unprojected` queue commit together. If `notify` raises, nothing of
        the batch remains and the next call retries.
        """
        if limit < 1:
            raise TrackingError("limit must be at least 1")
        with self._lock, self._transaction() as conn:
            if not self._database.lock_projection(conn):
                return []  # another worker is projecting; it takes these events too
            transitions = self._replay_unmatched(conn)
            rows = events.events_waiting(conn, limit)
            for row in rows:
                transitions.extend(self._project(conn, _event_of(row)))
            if rows:
                done = [int(r[0]) for r in rows]
                events.forget_waiting(conn, done)
                book.advance_projection(conn, done, self._clock.wall_ns())
            for t in transitions:
                if t.state in self._queue_for:
                    book.queue_reaction(
                        conn, t.parcel, t.state, t.previous, t.step, t.device, t.event_uuid,
                        t.at_ns, _dumps(t.details),
                    )
        return transitions

    @contextlib.contextmanager
    def next_reaction(self) -> Iterator[Transition | None]:
        """The oldest queued transition no other worker holds, inside a transaction: what the
        caller does in the block commits with its removal from the queue, or, if the block
        raises (or the process dies), neither happens and the transition waits for the next
        try. Yields None when nothing waits."""
        with self._lock, self._transaction() as conn:
            row = book.next_reaction(conn, self._database.skip_locked)
            if row is None:
                yield None
                return
            rid, parcel, state, previous, step, device, event_uuid, at_ns, details = row
            yield Transition(
                parcel=str(parcel),
                state=str(state),
                previous=str(previous),
                step=str(step),
                device=str(device),
                event_uuid=str(event_uuid),
                at_ns=int(at_ns),
                details=_loads(details),
            )
            book.drop_reaction(conn, int(rid))

    def lockers_decided(self, parcel: str) -> list[str]:
        """The lockers the policy has sent this parcel to so far, oldest first (a refused
        reservation sends it to the next one, never back to one of these)."""
        with self._reading() as conn:
            details = [_loads(d) for d in book.next_action_details(conn, parcel)]
        return [str(d["locker"]) for d in details if d.get("kind") == "locker" and d.get("locker")]

    def reactions_waiting(self) -> int:
        """Queued transitions the exceptions policy has not taken yet."""
        with self._reading() as conn:
            return book.reactions_waiting(conn)

    def _replay_unmatched(self, conn: Conn) -> list[Transition]:
        transitions: list[Transition] = []
        for rowid, event_uuid, parcel in book.pending_unmatched(conn):
            row = events.event_at(conn, int(rowid))
            if row is not None:
                transitions.extend(self._project(conn, _event_of(row), only_parcel=str(parcel)))
            book.resolve_unmatched(conn, str(event_uuid), str(parcel), self._clock.wall_ns())
        return transitions

    def _project(
        self, conn: Conn, ev: _StoredEvent, *, only_parcel: str | None = None
    ) -> list[Transition]:
        if ev.kind == ALARM_KIND and only_parcel is None:
            # Moves no parcel, but a person must hear of it: recorded with this batch.
            record_device_alarm(
                conn, event_uuid=ev.uuid, device=ev.device, payload=ev.payload, at_ns=ev.at_ns
            )
            return []
        if ev.kind == "door_unlocked" and only_parcel is None:
            self._dropoff_retried(conn, ev)
            return []
        if ev.kind not in _VAN_KINDS and ev.kind not in _LOCKER_KINDS:
            return []  # scans, keypad attempts: device facts that move no parcel
        if only_parcel is None:
            self._van_side_effects(conn, ev)
        if ev.kind in _VAN_KINDS:
            facts = _van_facts(
                ev, lambda van: self._loaded_of(conn, van), lambda van: self._day_of(conn, van)
            )
        else:
            facts = _locker_facts(ev, lambda cid: self._command_parcel(conn, cid))
        if not facts and only_parcel is None and ev.kind in _NEEDS_PARCEL:
            self._unmatched(conn, ev, "", "the event names no parcel the depot can tie it to")
        transitions = []
        for fact in facts:
            if only_parcel is not None and fact.parcel != only_parcel:
                continue
            t = self._apply(conn, ev, fact)
            if t is not None:
                transitions.append(t)
        return transitions

    @staticmethod
    def _loaded_of(conn: Conn, van: str) -> list[str]:
        return book.loaded_on(conn, van)

    @staticmethod
    def _day_of(conn: Conn, van: str) -> str | None:
        row = book.van_manifest(conn, van)
        return str(row[1]) if row is not None else None

    @staticmethod
    def _command_parcel(conn: Conn, command_id: str) -> str | None:
        return book.command_parcel(conn, command_id)

    def _van_side_effects(self, conn: Conn, ev: _StoredEvent) -> None:
        """Facts about a van rather than a parcel; idempotent, so a replay changes nothing."""
        p = ev.payload
        if ev.kind == "manifest_applied":
            version, day = p.get("version"), p.get("day")
            if not isinstance(version, int) or not isinstance(day, str):
                return
            row = book.van_manifest(conn, ev.device)
            if row is not None and (str(row[1]), int(row[0])) >= (day, version):
                return  # a van only moves forward (docs/DELIVERY.md)
            book.set_van_manifest(conn, ev.device, version, day, ev.at_ns)
        elif ev.kind == "day_closed":
            day = p.get("day")
            if not isinstance(day, str):
                row = book.van_manifest(conn, ev.device)
                day = str(row[1]) if row else None
            expected = {
                "delivered": {"delivered"},
                "in_locker": {"in_locker", "hold_expired", "picked_up", "returning"},
                "returned": {"at_depot", "returning", "returned_to_sender"},
            }
            report = {key: _ids(p.get(key)) for key in (*expected, "unaccounted")}
            discrepancies = []
            for key, states in expected.items():
                for parcel in report[key]:
                    says = book.state_of(conn, parcel)
                    if says not in states:
                        discrepancies.append({"parcel": parcel, "van_says": key, "book_says": says})
            book.insert_van_day(
                conn, ev.uuid, ev.device, day, ev.at_ns, _dumps(report), json.dumps(discrepancies)
            )

    def _unmatched(self, conn: Conn, ev: _StoredEvent, parcel: str, why: str) -> None:
        book.insert_unmatched(
            conn, ev.rowid, ev.uuid, parcel, ev.device, ev.kind, why, self._clock.wall_ns()
        )
        log.warning("%s from %s about %r kept unmatched: %s", ev.kind, ev.device, parcel, why)

    def _apply(self, conn: Conn, ev: _StoredEvent, fact: _Fact) -> Transition | None:
        row = book.fact_target(conn, fact.parcel)
        if row is None:
            self._unmatched(conn, ev, fact.parcel, "the depot has not received this parcel")
            return None
        if book.already_applied(conn, fact.parcel, ev.uuid):
            return None  # applied before (a rewound cursor, a replay): never twice
        current, next_action = str(row[0]), row[1]
        target = fact.target(current, next_action) if callable(fact.target) else fact.target
        verdict = _judge(current, target)
        step, details = fact.step, dict(fact.details)
        rerecorded = (
            ev.kind == "parcel_deposited"
            and verdict in ("move", "repeat")
            and self._rerecorded(conn, ev, fact.parcel, current, row[3])
        )
        if rerecorded:
            details["rerecorded"] = RERECORDED_TEXT
            details["replaces_earlier_notice"] = True
        if ev.depot_time:
            details["time"] = "depot receipt (device clock not synchronised)"
        new_state = target if verdict in ("move", "irregular") and target else current
        if verdict == "irregular":
            details["irregular"] = f"{current} -> {target} is not a usual step"
        elif verdict == "late":
            details["late"] = f"the parcel was already {current}"
        elif fact.step == "dropped_at_locker" and current in _IN_A_LOCKER:
            details["late"] = f"the locker had already said so: the parcel was {current}"
        elif verdict == "anomaly":
            details = {"event": ev.kind, "would_be": target, "state": current, **details}
            details["anomaly"] = f"{ev.kind} contradicts the final state {current}"
            step = "anomaly"
        sets: dict[str, Any] = {}
        columns = {"locker": row[3], "compartment": row[4]}
        if verdict in ("none", "move", "repeat", "irregular") and all(
            columns[k] == v for k, v in fact.sets_only_if.items()
        ):
            sets.update(fact.sets)
        if fact.failed_attempt is not None and verdict != "anomaly":
            sets["attempts"] = int(row[2]) + 1
            sets["last_reason"] = fact.failed_attempt
            details["attempts"] = sets["attempts"]
        sets["state"] = new_state
        sets["updated_ns"] = self._clock.wall_ns()
        book.update_parcel(conn, fact.parcel, sets)
        self._watch_locker_drop(conn, ev, fact, current, row[3])
        moved = verdict in ("move", "irregular")
        outcomes.on_outcome(
            conn,
            parcel=fact.parcel,
            step=fact.step,
            device=ev.device,
            event_uuid=ev.uuid,
            at_ns=ev.at_ns,
            details=details,
            moved=moved,
            now_ns=self._clock.wall_ns(),
        )
        self._record_entry(
            conn,
            parcel=fact.parcel,
            event_uuid=ev.uuid,
            at_ns=ev.at_ns,
            state=new_state,
            step=step,
            device=ev.device,
            details=details,
            notify=moved or rerecorded,
        )
        if verdict == "anomaly":
            log.warning("anomaly for %s: %s", fact.parcel, details["anomaly"])
        # A van's return scan of a parcel already `returning` (a courier took it out of a
        # locker) is when it is back at the depot: the policy books the return then.
        back = step == "returned_to_depot" and verdict == "repeat"
        # Steps that move nothing but ask for a decision or a word: a refused reservation (the
        # next locker), a door pickup the courier missed (the customer and merchant told).
        if moved or back or step in ("reserve_failed", "pickup_missed"):
            return Transition(
                parcel=fact.parcel,
                state=new_state if moved or back else step,
                previous=current,
                step=step,
                device=ev.device,
                event_uuid=ev.uuid,
                at_ns=ev.at_ns,
                details=details,
            )
        return None

    @staticmethod
    def _rerecorded(
        conn: Conn, ev: _StoredEvent, parcel: str, current: str, located: object
    ) -> bool:
        """Whether this deposit is the parcel's locker recording again a deposit it lost the
        record of (a new credential), so the customer's code no longer opens the door.

        Compared with the credential of the last deposit the book told about at that locker
        (`late` entries told nobody); a replay has the same one, and a deposit elsewhere or of
        a parcel not waiting in a locker is an ordinary move.
        """
        sealed = ev.payload.get("credential_for_depot")
        if not isinstance(sealed, str) or current not in ("in_locker", "hold_expired"):
            return False
        if located != ev.device:
            return False
        told = told_deposit(conn, parcel, ev.device)
        if told is None:
            return False  # no deposit told there: nothing to replace
        return told.get("credential_for_depot") != sealed

    def _watch_locker_drop(
        self, conn: Conn, ev: _StoredEvent, fact: _Fact, current: str, located: object
    ) -> None:
        """Open or close the disagreements between a van's word and a locker's about a drop
        (`locker_drops`; docs/DELIVERY.md, "A van's claim and the locker's word")."""
        parcel, now = fact.parcel, self._clock.wall_ns()
        compartment = fact.details.get("compartment")
        compartment = compartment if isinstance(compartment, str) else None
        if fact.step == "dropped_at_locker":
            locker = fact.details.get("locker")
            if not isinstance(locker, str) or not locker:
                return
            if book.close_locker_drops(conn, parcel, locker, "deposit"):
                return  # the locker said so first: the claim is a late timeline entry
            if current in _IN_A_LOCKER and located == locker:
                return  # deposited there before, and that disagreement already raised
            book.open_locker_drop(
                conn, "claim", parcel, locker, ev.device, compartment, ev.uuid, now
            )
        elif fact.step == "in_locker" and ev.kind == "parcel_deposited":
            book.close_locker_drops(conn, parcel, ev.device, "abandoned")
            if book.close_locker_drops(conn, parcel, ev.device, "claim"):
                return
            if current in _IN_A_LOCKER and located == ev.device:
                return  # recorded there again: the first deposit settled (or raised) this
            claims = [_loads(d).get("locker") for d in book.claims_of(conn, parcel)]
            van = book.parcel_van(conn, parcel)
            if ev.device in claims or van is None or current in FINAL_STATES:
                return
            book.open_locker_drop(
                conn, "deposit", parcel, ev.device, van, compartment, ev.uuid, now
            )
        elif fact.step == "dropoff_abandoned" and current not in _IN_A_LOCKER | FINAL_STATES:
            van = book.parcel_van(conn, parcel)
            book.open_locker_drop(
                conn, "abandoned", parcel, ev.device, van, compartment, ev.uuid, now
            )

    def _dropoff_retried(self, conn: Conn, ev: _StoredEvent) -> None:
        """A locker opening another drop-off door for a parcel whose drop-off it saw abandoned
        (a bigger compartment, or the courier tried again): not given up on yet."""
        parcel = _text(ev.payload, "parcel")
        if parcel is not None and ev.payload.get("purpose") == "dropoff":
            book.close_locker_drops(conn, parcel, ev.device, "abandoned")

    def locker_drops_due(
        self, *, unconfirmed_before_ns: int, abandoned_before_ns: int, limit: int = 100
    ) -> list[LockerDrop]:
        """Open disagreements old enough to act on: claims and deposits seen before
        `unconfirmed_before_ns`, abandoned drop-offs seen before `abandoned_before_ns` (the
        depot's clock), oldest first."""
        with self._reading() as conn:
            rows = [
                *book.locker_drops_due(conn, "claim", unconfirmed_before_ns, limit),
                *book.locker_drops_due(conn, "deposit", unconfirmed_before_ns, limit),
                *book.locker_drops_due(conn, "abandoned", abandoned_before_ns, limit),
            ]
        drops = [
            LockerDrop(
                id=int(r[0]),
                kind=str(r[1]),
                parcel=str(r[2]),
                locker=str(r[3]),
                van=None if r[4] is None else str(r[4]),
                compartment=None if r[5] is None else str(r[5]),
                event_uuid=str(r[6]),
                since_ns=int(r[7]),
            )
            for r in rows
        ]
        return sorted(drops, key=lambda d: (d.since_ns, d.id))

    def forget_locker_drop(self, drop: LockerDrop) -> bool:
        """Close an open disagreement once acted on (in the caller's transaction, if any);
        False if another worker closed it first, so only one of them acts."""
        with self._lock, self._transaction() as conn:
            return book.forget_locker_drop(conn, drop.id)

    def _record_entry(
        self,
        conn: Conn,
        *,
        parcel: str,
        event_uuid: str,
        at_ns: int,
        state: str,
        step: str,
        device: str,
        details: Mapping[str, Any],
        notify: bool,
    ) -> None:
        """One timeline entry, and the notifications about it in the same transaction."""
        entry = uuid.uuid5(_TIMELINE_NS, f"{parcel}\0{event_uuid}").hex
        added = book.insert_timeline(
            conn, entry, parcel, at_ns, state, step, device, event_uuid, _dumps(details)
        )
        if not added or not notify or state not in NOTIFIED_STATES:
            return
        merchant, webhook, customer_webhook, locker, window = book.notify_targets(conn, parcel)
        body_details = _public_details(state, details, locker, window)
        card = body_details.pop("card", None)  # the customer's copy only
        audiences: tuple[tuple[Audience, object], ...] = (
            ("merchant", webhook),
            ("customer", customer_webhook),
        )
        for audience, url in audiences:
            if url is None:
                continue
            if not _is_http_url(url):
                log.warning(
                    "%s webhook of %s is not an http(s) URL; not notified", audience, parcel
                )
                continue
            event_id = f"{entry}:{audience}"
            body = {
                "event_id": event_id,
                "parcel": parcel,
                "state": state,
                "at": iso_utc(at_ns),
                "details": (
                    {**body_details, "card": card}
                    if card and audience == "customer"
                    else body_details
                ),
                "merchant": merchant,
            }
            self._notify(conn, Notification(event_id, audience, str(url), body))


_IN_A_LOCKER = frozenset({"in_locker", "hold_expired", "picked_up"})


def _deferral(day: str) -> str:
    """The event uuid of a day plan's `deferred` entry: one per parcel and day."""
    return f"deferred:{day}"


def told_deposit(conn: Conn, parcel: str, locker: str) -> dict[str, Any] | None:
    """The `parcel_deposited` payload of the last deposit of `parcel` at `locker` the book
    told about (its newest `in_locker` entry there that is not `late`), or None.

    Its sealed credential is the one the customer holds: a re-recorded deposit is compared
    with it, and the customer's page opens it (`depot.customer`)."""
    for r in reversed(book.timeline_with_records(conn, parcel)):
        entry, step, device, details = str(r[0]), r[5], r[6], _loads(r[8])
        if step != "in_locker" or device != locker or "late" in details:
            continue
        found = book.deposit_of_entry(conn, entry)
        if found is not None:
            return _loads(found[1])
    return None

Verdict = Literal["none", "move", "repeat", "late", "anomaly", "irregular"]


def _judge(current: str, target: str | None) -> Verdict:
    """How a fact that says the parcel is now `target` relates to its `current` state."""
    if target is None:
        return "none"
    if current in FINAL_STATES:
        if target == current:
            return "repeat"
        return "late" if current in _LATER.get(target, frozenset()) else "anomaly"
    if target in _USUAL.get(current, frozenset()):
        return "move"
    if target == current:
        return "repeat"
    if current in _LATER.get(target, frozenset()):
        return "late"
    return "irregular"


def _public_details(
    state: str, details: Mapping[str, Any], locker: object, window: object
) -> dict[str, Any]:
    """What a merchant or customer is told: no proof-of-delivery fixes, no codes."""
    if state == "received":
        return {"source": details.get("source")}
    if state == "out_for_delivery":
        return {"window": json.loads(window)} if isinstance(window, str) else {}
    if state == "attempted":
        keep = ("reason", "reason_text", "attempts", "upu", "x12", "x12_reason", "inovert")
        told = {k: details[k] for k in keep if k in details}
        if details.get("card"):
            told.update(card=details["card"], card_left=True)
        return told
    if state == "delivered":
        said = ("to", "name", "neighbour_address", "upu", "x12", "x12_reason", "signed_by")
        told = {k: details[k] for k in said if details.get(k) is not None}
        if isinstance(details.get("signature"), dict):
            told["signed"] = True
        if isinstance(details.get("id_check"), dict):  # the type only, never the year
            told["id_checked"] = details["id_check"].get("id_type")
        return told
    if state == "in_locker":
        found = {"locker": details.get("locker") or locker, "x12": "AU"}
        if details.get("hold_until"):
            found["hold_until"] = details["hold_until"]
        if details.get("replaces_earlier_notice"):
            found["replaces_earlier_notice"] = True
            found["reason"] = REPLACED_REASON
        return found
    if state == "picked_up":
        return {"locker": details.get("locker") or locker}
    if state == "returned_to_sender":
        return {"x12": "3"}
    return {}


def _event_of(row: Sequence[Any]) -> _StoredEvent:
    rowid, device, event_uuid, wall_ns, wall_synced, received_ns, kind, payload = row
    synced = bool(wall_synced)
    return _StoredEvent(
        rowid=int(rowid),
        device=str(device),
        uuid=str(event_uuid),
        at_ns=int(wall_ns) if synced else int(received_ns),
        depot_time=not synced,
        kind=str(kind),
        payload=_loads(payload),
    )
