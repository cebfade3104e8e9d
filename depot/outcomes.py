"""What the depot makes of a van's outcome at the door: its proof, the care it broke, how it
was handed over, the card left.

The parcel book's projection (`depot.tracking`) asks this module, in the transaction of the
batch, about every outcome it applies:

- A `parcel_delivered`'s proof beyond the photo: `signature` (a reference to the strokes
  document, whose bytes arrive and are verified like a photo's), `signed_by` (the printed
  name) and `id_check` (`parcel.care.IdCheck`: the document's type and a year of birth,
  nothing more is kept even if a van sent more) go into the delivery's timeline details
  (`delivered_details`).
- Every delivery is judged again against the depot's own stored care of the parcel
  (`depot.preferences.care_of`: the import's, `Care.default()` when the record has none, with
  the customer's later choices over it, as planning reads it) with the one rule
  (`Care.refusal`; the year is the event's time's). A delivery that breaks it is a fact (the
  van recorded it; the parcel is delivered), marked `preference_violated` in its
  timeline entry and raised as an operator alarm `preference_violated` (one per delivery
  event), which is what `preference_violations` counts.
- A handover that moved a parcel to `delivered` or `picked_up` is counted by method
  (`deliveries_by_method`): `signature` (signed for, whoever took it), else the van's `to`
  (`recipient`, `neighbour`, `safe_place`); `locker` for a pickup from a collection site,
  `counter` when that site is a staffed counter (named by the caller from its settings).
- A van's `outcome_refused` is a timeline entry that moves nothing and tells nobody;
  `preference_refusals` counts them.
- A failed attempt's `card` is recorded by its digest (`depot.cards`).

Must never: change a parcel's state (the book does), let a delivery that broke a preference
pass unalarmed, or keep an ID's number or anything of a signature but its reference.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from depot.alarms import raise_alarm
from depot.cards import remember_card
from depot.preferences import care_of
from depot.store import Conn
from depot.store import outcomes as table
from parcel.care import HANDOVERS, REFUSALS, Care, CareError, IdCheck
from parcel.codes import DELIVERED_BY, FAILURE_REASONS
from sync.wire import SIGNATURE_CONTENT_TYPE

__all__ = [
    "METHODS",
    "SIGNATURE_TYPE",
    "VIOLATION_ALARM",
    "delivered_details",
    "failed_details",
    "on_outcome",
    "outcome_counts",
    "refused_details",
    "stored_care",
]

log = logging.getLogger(__name__)

#: `deliveries_by_method`'s keys, every one always present.
METHODS = ("recipient", "neighbour", "safe_place", "signature", "locker", "counter")
#: The alarm a delivery that broke the parcel's care raises.
VIOLATION_ALARM = "preference_violated"
#: The content type of a signature's strokes document (docs/DELIVERY.md).
SIGNATURE_TYPE = SIGNATURE_CONTENT_TYPE
MAX_SIGNER = 100
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _signature_ref(value: object) -> dict[str, Any] | None:
    """A `signature` reference as kept: sha256, bytes and type, or None for none or junk."""
    if not isinstance(value, Mapping):
        return None
    sha, size, kind = value.get("sha256"), value.get("bytes"), value.get("type")
    if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return None
    return {"sha256": sha, "bytes": size, "type": kind if kind == SIGNATURE_TYPE else None}


def _signer(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    name = " ".join(value.split())[:MAX_SIGNER]
    return name if name and name.isprintable() else None


def delivered_details(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a `parcel_delivered` adds to its timeline entry: the X12 status reason (the
    depot's table by `to`, else the van's), and the signature, signer and ID check when
    given. An ID check that is not one (a number field, a year out of range) is not kept:
    `id_check_refused` says why."""
    to = payload.get("to")
    codes = DELIVERED_BY.get(to) if isinstance(to, str) else None
    given = payload.get("x12_reason")
    found: dict[str, Any] = {
        "x12_reason": codes.x12_reason if codes else given if isinstance(given, str) else None
    }
    found.update(handout_proof(payload))
    return found


def handout_proof(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The proof a handover carries beyond a photo, as kept: the signature's reference, the
    printed name and the ID check (the van's `parcel_delivered`, a staffed counter's
    `parcel_picked_up`). An ID check that is not one is not kept: `id_check_refused` says
    why."""
    found: dict[str, Any] = {}
    signature = _signature_ref(payload.get("signature"))
    if signature is not None:
        found["signature"] = signature
    signer = _signer(payload.get("signed_by"))
    if signer is not None:
        found["signed_by"] = signer
    raw = payload.get("id_check")
    if raw is not None:
        try:
            found["id_check"] = IdCheck.from_doc(raw).to_doc()
        except CareError as exc:
            found["id_check_refused"] = str(exc)
    return found


def failed_details(payload: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """What a `delivery_failed` adds: the X12 status reason and INOVERT of the depot's table
    (the van's where the depot does not know the reason), and the card's code as sent (the
    projection keeps it only if it is one: `on_outcome`)."""
    codes = FAILURE_REASONS.get(reason)
    given = payload.get("x12_reason")
    found: dict[str, Any] = {
        "x12_reason": codes.x12_reason if codes else given if isinstance(given, str) else None
    }
    if codes is not None and codes.inovert:
        found["inovert"] = codes.inovert
    if payload.get("card") is not None:
        found["card"] = payload.get("card")
    return found


def refused_details(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An `outcome_refused`'s timeline details: what was tried, why the van refused it (its
    words), and the care the van held."""
    reason = payload.get("reason")
    care = payload.get("care")
    return {
        "to": payload.get("to"),
        "reason": reason,
        "reason_text": REFUSALS.get(reason) if isinstance(reason, str) else None,
        "care": dict(care) if isinstance(care, Mapping) else None,
    }


def stored_care(conn: Conn, parcel: str) -> Care | None:
    """The depot's own care of `parcel` now (`depot.preferences.care_of`: the merchant's from
    the record, `Care.default()` without one, as planning writes it into the manifest, with
    the customer's choices over it), or None for a parcel the book does not know."""
    return care_of(conn, parcel)


def _year(at_ns: int) -> int:
    try:
        return datetime.fromtimestamp(at_ns / 1e9, UTC).year
    except (OverflowError, OSError, ValueError):
        return datetime.now(UTC).year


def on_outcome(
    conn: Conn,
    *,
    parcel: str,
    step: str,
    device: str,
    event_uuid: str,
    at_ns: int,
    details: MutableMapping[str, Any],
    moved: bool,
    now_ns: int,
) -> None:
    """Judge, count and record one applied fact's outcome, in the projection's transaction;
    `details` (the timeline entry's, not yet written) is completed in place. `moved`: the
    fact moved the parcel (not late, not a repeat, not an anomaly)."""
    if step == "delivered":
        violated = _judge(conn, parcel, device, event_uuid, at_ns, details)
        if violated is not None:
            details[VIOLATION_ALARM] = violated
        if moved and details.get("to") in HANDOVERS:
            signed = "signature" in details and "signed_by" in details
            method = "signature" if signed else str(details["to"])
            table.record_handover(conn, parcel, event_uuid, method, device, at_ns)
    elif step == "picked_up":
        # Out of a locker or across a counter: into the customer's own hands.
        violated = _judge(conn, parcel, device, event_uuid, at_ns, {**details, "to": "recipient"})
        if violated is not None:
            details[VIOLATION_ALARM] = violated
        if moved:
            table.record_handover(conn, parcel, event_uuid, "locker", device, at_ns)
    elif step == "attempted" and "card" in details:
        code = remember_card(conn, details["card"], parcel, event_uuid, now_ns)
        if code is None:
            log.warning("%s's card for %s is not a card code; not kept", device, parcel)
            details.pop("card")
        else:
            details["card"] = code


def _judge(
    conn: Conn,
    parcel: str,
    device: str,
    event_uuid: str,
    at_ns: int,
    details: Mapping[str, Any],
) -> str | None:
    """The rule the delivery broke (a `parcel.care.REFUSALS` key), alarmed; or None."""
    to = details.get("to")
    care = stored_care(conn, parcel)
    if care is None or to not in HANDOVERS:
        return None
    id_doc = details.get("id_check")
    id_check = IdCheck.from_doc(id_doc) if isinstance(id_doc, Mapping) else None
    signed = "signature" in details and "signed_by" in details
    reason = care.refusal(str(to), signed=signed, id_check=id_check, year=_year(at_ns))
    if reason is None:
        return None
    raise_alarm(
        conn,
        device=device,
        alarm=VIOLATION_ALARM,
        facts={
            "parcel": parcel,
            "van": device,
            "to": to,
            "reason": reason,
            "say": f"{device} delivered {parcel} ({str(to).replace('_', ' ')}) though "
            f"{REFUSALS[reason]}",
            "care": care.to_doc(),
            "event": event_uuid,
        },
        at_ns=at_ns,
        key=f"{VIOLATION_ALARM}:{parcel}:{event_uuid}",
    )
    log.warning("%s delivered %s breaking its care: %s", device, parcel, reason)
    return reason


def outcome_counts(
    conn: Conn,
    *,
    counters: Collection[str] = (),
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> dict[str, Any]:
    """`preference_refusals`, `preference_violations` and `deliveries_by_method` (every
    method named, zeros included) in `[start_ns, end_ns)`, or ever without a span.
    `counters`: the collection sites that are staffed counters (a pickup there is `counter`)."""
    by_method = dict.fromkeys(METHODS, 0)
    for method, device, n in table.handover_counts(conn, start_ns, end_ns):
        if method == "locker" and device in counters:
            method = "counter"
        by_method[method] = by_method.get(method, 0) + n
    return {
        "preference_refusals": table.refusal_count(conn, start_ns, end_ns),
        "preference_violations": table.violation_count(conn, start_ns, end_ns),
        "deliveries_by_method": by_method,
    }
