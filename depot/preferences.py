"""A parcel's delivery preferences as the depot holds them: the merchant's, and the customer's.

Owns the one answer to "what care does this parcel have now" (:func:`care_of`), which the
manifest, the customer's page and the check of every delivery (`preference_violations`) all
ask: the care the merchant's import gave (the parcel's record, `depot.imports`), with the
customer's own choices from their tracking page laid over it (`depot.store.preferences`).
The customer sets only :data:`CUSTOMER_FIELDS` (a safe place and where, a neighbour, a locker
instead); a merchant's signature and age check are the merchant's and stay as imported. A
record without care (an arrival scan before its import, a record from before care existed)
has :meth:`Care.default`.

Also the rules of a change (:func:`change_refusal`, :func:`customer_care`) and of the locker
instead of the door (:func:`locker_instead_refusal`), in words for the customer, so the page,
the service and the planning say the same.

Must never: let a customer's change lift a merchant's signature or age check, allow a
safe place for a parcel that needs either, or send to a locker a parcel whose recipient
refuses lockers, that has an age check (a locker checks no ID), or whose customer could not
be sent the pickup code.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from depot.errors import DepotError
from depot.policy import LOCKER_SIZES, LockerSite, fits
from depot.store import Conn, book
from depot.store import preferences as stored
from parcel.care import Care, CareError

__all__ = [
    "CHANGEABLE_STATES",
    "CUSTOMER_FIELDS",
    "PreferencesRefused",
    "care_of",
    "change_refusal",
    "customer_care",
    "locker_instead_refusal",
    "merchant_care",
    "store_choices",
    "take_compartment",
]

#: The fields of a parcel's care its customer may set (the rest are the merchant's).
CUSTOMER_FIELDS = ("safe_place", "safe_place_note", "neighbour", "locker_instead")
#: States in which a door delivery may still come, so a change can still matter: waiting at
#: the depot, on a van, after a failed attempt, or on its way to a locker (which may refuse
#: it). In a locker, on its way back, or final, the door is behind it.
CHANGEABLE_STATES = frozenset(
    {"received", "at_depot", "loaded", "out_for_delivery", "attempted", "redirected"}
)
_MAX_NOTE = 200
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class PreferencesRefused(DepotError):
    """A change of preferences the depot does not take; the message is for the customer."""


def merchant_care(record: Mapping[str, Any]) -> Care:
    """The care the merchant's import gave (a stored record's `care`), or the default."""
    doc = record.get("care")
    if not doc:
        return Care.default()
    try:
        return Care.from_doc(doc)
    except CareError:  # a record is checked when imported; a hand-edited one says nothing
        return Care.default()


def _with_choices(merchant: Care, choices: str | None) -> Care:
    if choices is None:
        return merchant
    try:
        doc = json.loads(choices)
    except ValueError:
        return merchant
    if not isinstance(doc, dict):
        return merchant
    mine = {k: v for k, v in doc.items() if k in CUSTOMER_FIELDS}
    try:
        return Care.from_doc({**merchant.to_doc(), **mine})
    except CareError:
        return merchant


def care_of(conn: Conn, parcel: str) -> Care | None:
    """`parcel`'s care now: the merchant's with the customer's choices over it; None for a
    parcel the book does not know."""
    info = book.parcel_row(conn, parcel)
    if info is None:
        return None
    try:
        record = json.loads(str(info.get("record") or "{}"))
    except ValueError:
        record = {}
    merchant = merchant_care(record if isinstance(record, dict) else {})
    return _with_choices(merchant, stored.choices_of(conn, parcel))


def change_refusal(state: str) -> str | None:
    """Why the customer may not change the preferences of a parcel in `state`, or None."""
    if state in CHANGEABLE_STATES:
        return None
    if state == "in_locker" or state == "hold_expired":
        return "your parcel is in a parcel locker; preferences are for deliveries to your door"
    if state == "returning":
        return "your parcel is on its way back to the sender"
    return "your parcel's journey has ended"


def locker_instead_refusal(info: Mapping[str, Any], care: Care) -> str | None:
    """Why `locker_instead` cannot be had for this parcel (`info`: the book's row, or a record
    with `locker_ok` and `customer_webhook`), in the customer's words; None when it can."""
    if info.get("locker_ok") is not None and not info.get("locker_ok"):
        return "the sender does not allow a parcel locker for this parcel"
    if care.age_min is not None:
        return "this parcel needs an ID check at the door; a locker cannot do that"
    if care.signature:
        return "this parcel must be signed for; a locker cannot take a signature"
    if not info.get("customer_webhook"):
        return "we have no way to send you the locker's pickup code"
    return None


def customer_care(
    current: Care, form: Mapping[str, str], info: Mapping[str, Any]
) -> Care:
    """The care after the customer's form (`safe_place`, `safe_place_note`, `neighbour`,
    `locker_instead`; a ticked box is present, an unticked one absent, as browsers send
    them); PreferencesRefused says why it cannot be had. The merchant's fields are kept."""
    note = " ".join(str(form.get("safe_place_note", "")).split())
    if len(note) > _MAX_NOTE:
        raise PreferencesRefused(f"please describe the safe place in at most {_MAX_NOTE} "
                                 "characters")
    if _NOT_TEXT.search(note):
        raise PreferencesRefused("the safe place's description must be plain text")
    safe_place = "safe_place" in form
    locker_instead = "locker_instead" in form
    if safe_place and current.needs_signature:
        raise PreferencesRefused("this parcel must be signed for, so it cannot be left in a "
                                 "safe place")
    if locker_instead and not current.locker_instead:
        why = locker_instead_refusal(info, current)
        if why is not None:
            raise PreferencesRefused(why)
    return Care.from_doc(
        {
            **current.to_doc(),
            "safe_place": safe_place,
            "safe_place_note": note,
            "neighbour": "neighbour" in form,
            "locker_instead": locker_instead,
        }
    )


def store_choices(conn: Conn, parcel: str, care: Care, now_ns: int) -> None:
    """Keep the customer's part of `care` for `parcel` (the caller's transaction)."""
    doc = care.to_doc()
    stored.set_choices(
        conn, parcel, json.dumps({k: doc[k] for k in CUSTOMER_FIELDS}, sort_keys=True), now_ns
    )


def take_compartment(sites: Sequence[LockerSite], locker: str, size: str) -> list[LockerSite]:
    """`sites` with one compartment fewer free at `locker`: the smallest free one that fits a
    parcel of `size` (the one the locker will open), so one planning pass does not promise a
    locker's last compartment twice."""
    out = []
    for site in sites:
        if site.name == locker and site.room is not None:  # a staffed counter's shelves
            site = dataclasses.replace(site, room=max(0, site.room - 1))
        elif site.name == locker:
            free = dict(site.free)
            for s in LOCKER_SIZES:
                if fits(size, s) and free.get(s, 0) > 0:
                    free[s] -= 1
                    break
            site = dataclasses.replace(site, free=free)
        out.append(site)
    return out
