"""Parcel timelines as GS1 EPCIS 2.0 JSON-LD, for partners who speak the supply chain's words.

Owns the mapping from the parcel book's timeline steps to EPCIS `ObjectEvent`s: which CBV 2.0
business step and disposition each step is, which identifier URI a parcel gets, and which
`lm:` extension fields carry what CBV has no words for (UPU and X12 214 codes, failure
reasons). It only reads the book; it must never change a parcel, and never invent a CBV value
(a step CBV does not define is an `lm:` URI, declared in the document's `@context`).

Identifiers (`epcList`):

- An SSCC (18 digits, GS1 check digit intact) is the GS1 Digital Link URI
  `https://id.gs1.org/00/<sscc>`, which EPCIS 2.0 accepts wherever an EPC URI may stand. The
  pure-identity URN `urn:epc:id:sscc:<company prefix>.<serial>` cannot be written honestly:
  where the company prefix ends is not in the 18 digits, it needs GS1's prefix-length table.
- Any other id (UPU S10, UPS, FedEx, DHL, USPS) has no GS1 key; it is `lm:parcel/<id>`
  (percent-encoded), i.e. `https://lastmile-edge.example/epcis/parcel/<id>` once expanded.
- A read point is the device that saw it: `lm:device/<device>`, the depot being `lm:device/depot`.

Steps (book step -> bizStep, disposition; no disposition = the previous one still holds,
as EPCIS reads it):

    received (import)       accepting                  in_progress   custody passes to us
    received (arrival_scan) receiving                  in_progress   physically at the depot
    assigned                lm:assigned                -             planning, nothing moved
    loaded                  loading                    in_progress
    not_loaded              lm:not_loaded              -             missing at departure
    out_for_delivery        departing                  in_transit
    attempted               lm:delivery_attempted      in_transit    (damaged if reason is)
    redirected              lm:redirected              in_transit
    delivered               lm:delivered               lm:delivered
    locker_reserved         lm:locker_reserved         -
    reserve_failed          lm:locker_reservation_failed -
    reservation_lapsed      lm:locker_reservation_lapsed -
    in_locker, dropped_at_locker  storing              lm:awaiting_pickup
    hold_extended           lm:hold_extended           lm:awaiting_pickup
    hold_expired            holding                    lm:awaiting_return
    picked_up               lm:picked_up               lm:delivered
    collected_for_return    departing                  returned      out of the locker
    returned_to_depot       arriving                   returned or in_progress
    next_action             lm:next_action             returned if it made the parcel returning
    returned_to_sender      shipping                   returned
    command_failed          lm:locker_command_failed   -
    unaccounted             lm:unaccounted             unknown
    anomaly                 lm:anomaly                 -             contradicted a final state
    any other step          lm:<step>                  -

A fact the book marked `late` (it reached the depot after a later one) keeps its disposition,
since its eventTime places it in the past, unless its time is only the depot's receipt time.
Every event carries `lm:state` and `lm:step`; `lm:x12` and `lm:upu` come from the device's
payload or, failing that, from docs/DELIVERY.md (delivered D/EMI, attempted AH/EMH, in a
locker AU, returned to sender 3); a delivery's and a failed attempt's `lm:x12_reason` (X12
214 AT7-02) is the entry's, else `parcel.codes`' for its `to` or reason; `lm:reason`,
`lm:inovert`, `lm:van`, `lm:stop`, `lm:locker`, `lm:attempts`, `lm:late`, `lm:anomaly`, ...
are copied from the entry's details.

Why the extension URIs: CBV 2.0 has no business step for a delivery attempt (PROTOCOLS.md §5)
nor for the hand-over at the door. `accepting` is the receiver's own step in its own system,
and we already use it for custody entering our network; `retail_selling` and `dispensing` are
other trades. CBV has no disposition for "with the recipient" or "waiting in a locker" either
(`available` means returned to service after repair, `expired` a product's expiry date), so
those are `lm:` too. `lm:state` on every event is the depot's parcel state after it, so a
consumer never has to infer our state from the CBV words.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from depot.tracking import TimelineEntry, iso_utc
from parcel.codes import DELIVERED_BY, FAILURE_REASONS
from parcel.identify import gs1_mod10

EPCIS_CONTEXT_URL = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
LM_NAMESPACE = "https://lastmile-edge.example/epcis/"
EPCIS_CONTEXT: list[Any] = [EPCIS_CONTEXT_URL, {"lm": LM_NAMESPACE}]
GS1_DIGITAL_LINK = "https://id.gs1.org/00/"

# step -> (bizStep, disposition or None)
STEP_MAPPING: dict[str, tuple[str, str | None]] = {
    "assigned": ("lm:assigned", None),
    "loaded": ("loading", "in_progress"),
    "not_loaded": ("lm:not_loaded", None),
    "out_for_delivery": ("departing", "in_transit"),
    "attempted": ("lm:delivery_attempted", "in_transit"),
    "redirected": ("lm:redirected", "in_transit"),
    "delivered": ("lm:delivered", "lm:delivered"),
    "locker_reserved": ("lm:locker_reserved", None),
    "reserve_failed": ("lm:locker_reservation_failed", None),
    "reservation_lapsed": ("lm:locker_reservation_lapsed", None),
    "command_failed": ("lm:locker_command_failed", None),
    "in_locker": ("storing", "lm:awaiting_pickup"),
    "dropped_at_locker": ("storing", "lm:awaiting_pickup"),
    "hold_extended": ("lm:hold_extended", "lm:awaiting_pickup"),
    "hold_expired": ("holding", "lm:awaiting_return"),
    "picked_up": ("lm:picked_up", "lm:delivered"),
    "collected_for_return": ("departing", "returned"),
    "returned_to_depot": ("arriving", "in_progress"),
    "next_action": ("lm:next_action", None),
    "returned_to_sender": ("shipping", "returned"),
    "unaccounted": ("lm:unaccounted", "unknown"),
    "anomaly": ("lm:anomaly", None),
}
# docs/DELIVERY.md: X12 214 and UPU codes per outcome, when the device did not send them.
X12_BY_STEP = {
    "delivered": "D",
    "attempted": "AH",
    "in_locker": "AU",
    "dropped_at_locker": "AU",
    "returned_to_sender": "3",
}
UPU_BY_STEP = {"delivered": "EMI", "attempted": "EMH"}
_LOCKER_STEPS = frozenset({"in_locker", "dropped_at_locker", "hold_extended", "hold_expired"})
# details copied as lm: fields (scalars only; proof-of-delivery fixes stay in the book)
_EXTENSION_KEYS = (
    "reason",
    "van",
    "stop",
    "locker",
    "compartment",
    "to",
    "attempts",
    "source",
    "kind",
    "late",
    "irregular",
    "anomaly",
    "would_be",
    "manifest_version",
    "inovert",
    "preference_violated",
)
_EVENT_ID_NS = uuid.UUID("0b8e4f3c-6a51-4b0e-8d7c-2f1e5a9c4d31")


class TimelineSource(Protocol):
    """Anything that lends the book's timeline: a `ParcelBook` or a `ParcelView`."""

    def timeline_entries(self, parcels: Sequence[str] | None = None) -> list[TimelineEntry]: ...


def is_sscc(parcel: str) -> bool:
    """18 ASCII digits whose last is the GS1 mod-10 check digit of the other 17."""
    return (
        len(parcel) == 18
        and parcel.isascii()
        and parcel.isdigit()
        and gs1_mod10(parcel[:17]) == int(parcel[17])
    )


def epc_uri(parcel: str, kind: str | None = None) -> str:
    """The parcel's identifier in `epcList` (see the module docstring for why)."""
    if kind in (None, "sscc") and is_sscc(parcel):
        return GS1_DIGITAL_LINK + parcel
    return "lm:parcel/" + urllib.parse.quote(parcel, safe="")


def _device_uri(device: str) -> str:
    return "lm:device/" + urllib.parse.quote(device, safe="")


def _step_mapping(entry: TimelineEntry) -> tuple[str, str | None]:
    step, details = entry.step, entry.details
    if step == "received":
        source = details.get("source")
        return (
            ("receiving", "in_progress")
            if source == "arrival_scan"
            else ("accepting", "in_progress")
        )
    biz_step, disposition = STEP_MAPPING.get(step, ("lm:" + step, None))
    if step == "attempted" and details.get("reason") == "damaged":
        disposition = "damaged"
    elif step in ("returned_to_depot", "next_action") and entry.state == "returning":
        disposition = "returned"
    if details.get("anomaly") or (details.get("late") and details.get("time")):
        # An anomaly never was the parcel's condition. A late fact keeps its disposition (its
        # eventTime puts it in the past where it belongs) unless its time is only the depot's
        # receipt time, which would make an old condition look current.
        disposition = None
    return biz_step, disposition


def _x12_reason(entry: TimelineEntry) -> str | None:
    """The X12 214 status reason (AT7-02) of a delivery or a failed attempt: the entry's, else
    parcel.codes' for its `to` or `reason` (entries stored before the depot kept one)."""
    given = entry.details.get("x12_reason")
    if isinstance(given, str) and given:
        return given
    if entry.step == "delivered":
        codes = DELIVERED_BY.get(str(entry.details.get("to") or "recipient"))
    elif entry.step == "attempted":
        codes = FAILURE_REASONS.get(str(entry.details.get("reason")))
    else:
        return None
    return codes.x12_reason if codes is not None else None


def object_event(entry: TimelineEntry) -> dict[str, Any]:
    """One timeline entry as an EPCIS 2.0 ObjectEvent (action OBSERVE)."""
    biz_step, disposition = _step_mapping(entry)
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": "urn:uuid:" + str(uuid.uuid5(_EVENT_ID_NS, entry.uuid)),
        "eventTime": iso_utc(entry.at_ns),
        "eventTimeZoneOffset": "+00:00",
        "epcList": [epc_uri(entry.parcel, entry.parcel_kind)],
        "action": "OBSERVE",
        "bizStep": biz_step,
    }
    if disposition is not None:
        event["disposition"] = disposition
    event["readPoint"] = {"id": _device_uri(entry.device)}
    locker = entry.details.get("locker")
    if entry.step in _LOCKER_STEPS and isinstance(locker, str) and locker:
        event["bizLocation"] = {"id": "lm:locker/" + urllib.parse.quote(locker, safe="")}
    event["lm:state"] = entry.state
    event["lm:step"] = entry.step
    x12 = entry.details.get("x12") or X12_BY_STEP.get(entry.step)
    upu = entry.details.get("upu") or UPU_BY_STEP.get(entry.step)
    if entry.step != "anomaly":
        if x12:
            event["lm:x12"] = str(x12)
        reason = _x12_reason(entry)
        if x12 and reason:
            event["lm:x12_reason"] = reason
        if upu:
            event["lm:upu"] = str(upu)
    for key in _EXTENSION_KEYS:
        value = entry.details.get(key)
        if isinstance(value, str | int | float | bool) and value != "":
            event["lm:" + key] = value
    return event


def export_epcis(
    book: TimelineSource,
    parcels: Sequence[str] | None = None,
    *,
    now_ns: int | None = None,
) -> dict[str, Any]:
    """An EPCISDocument with the timeline of `parcels` (all parcels when None).

    Raises `depot.tracking.UnknownParcelError` for a parcel the book never received.
    """
    if isinstance(parcels, str):  # a lone id is a Sequence[str] too; mean what was meant
        parcels = [parcels]
    entries = book.timeline_entries(None if parcels is None else list(parcels))
    return {
        "@context": EPCIS_CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": iso_utc(time.time_ns() if now_ns is None else now_ns),
        "epcisBody": {"eventList": [object_event(e) for e in entries]},
    }
