"""Delivery outcomes in the industry's words: UPU tracking, ANSI X12 214 and INOVERT.

Owns the one table both ends use: the van writes these codes into its outcome events, the
depot reads them back for notifications and the EPCIS export. Kept apart from both so a van
never loads the depot's logistics to name a failure. The codes are docs/DELIVERY.md's table
(from the field reference's section 5); a reason missing here is one the van must refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CARD_LEFT_FOR",
    "DELIVERED_BY",
    "DELIVERED_CODES",
    "FAILURE_REASONS",
    "PICKUP_MISSED_REASONS",
    "X12_IN_LOCKER",
    "X12_RETURNED",
    "ReasonCodes",
]

#: X12 214 "available for pickup": a parcel waiting in a locker.
X12_IN_LOCKER = "AU"
#: X12 214 "returned to shipper".
X12_RETURNED = "3"


@dataclass(frozen=True)
class ReasonCodes:
    """How one delivery outcome is named in UPU tracking, X12 214 and INOVERT.

    ``x12`` is the X12 214 shipment status (AT7-01, element 157) and ``x12_reason`` the status
    reason that goes with it (AT7-02, element 1651; "NS" is X12's "normal status"). ``inovert``
    is None where INOVERT has no justification for it (docs/DELIVERY.md leaves it blank rather
    than pick a near miss). UPU's own non-delivery reason list is not in the field reference,
    so only its event code (``upu``) is named.
    """

    upu: str
    x12: str
    inovert: str | None
    text: str
    x12_reason: str = "NS"


#: Every failure reason a van may report, with its codes (docs/DELIVERY.md, "Failure reasons").
FAILURE_REASONS: Mapping[str, ReasonCodes] = MappingProxyType(
    {
        "not_at_home": ReasonCodes("EMH", "AH", "REN|DAF", "recipient not at home", "AQ"),
        "no_access": ReasonCodes("EMH", "AH", None, "no access to the address", "AG"),
        "address_not_found": ReasonCodes("EMH", "AH", "REN|CAD", "address not found", "A5"),
        "refused": ReasonCodes("EMH", "AH", "REN|SNC", "refused by the recipient", "BS"),
        "damaged": ReasonCodes("EMH", "AH", None, "parcel damaged", "BG"),
        "business_closed": ReasonCodes("EMH", "AH", None, "business closed", "B1"),
        "no_safe_place": ReasonCodes(
            "EMH", "AH", "REN|DAF", "recipient not at home and no safe place allowed", "AG"
        ),
        "age_check_failed": ReasonCodes("EMH", "AH", None, "no one of age could show an ID", "AG"),
        "reschedule_requested": ReasonCodes(
            "EMH", "AH", None, "the customer asked for another day", "AD"
        ),
        "card_left": ReasonCodes(
            "EMH", "AH", "REN|DAF", "no one in: a card was left with a code", "A1"
        ),
    }
)
#: Failures after which the courier leaves a card ("sorry we missed you") with a code the customer
#: can use to choose what happens next: the parcel could have been handed over had someone been
#: there. Not after a refusal, a damaged parcel, an address not found or a customer who asked
#: for another day face to face.
CARD_LEFT_FOR = frozenset(
    {
        "not_at_home",
        "no_access",
        "business_closed",
        "no_safe_place",
        "age_check_failed",
        "card_left",
    }
)
#: Why a courier at the door could not take a customer's return its stop lists (the van's
#: `return_pickup_missed`), with the words the customer and merchant are told. A return has no
#: delivery codes to report: nothing was delivered or tried, the return waits for a next round.
PICKUP_MISSED_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "not_at_home": "nobody was in",
        "not_ready": "the return was not packed or labelled yet",
    }
)
#: A delivered parcel's codes, by whom it was handed to (`parcel_delivered`'s `to`): X12's
#: "indirect delivery" (A3) where it did not go into the recipient's own hands.
DELIVERED_BY: Mapping[str, ReasonCodes] = MappingProxyType(
    {
        "recipient": ReasonCodes("EMI", "D", "LIV|CFM", "delivered"),
        "neighbour": ReasonCodes("EMI", "D", "LIV|CFM", "delivered to a neighbour", "A3"),
        "safe_place": ReasonCodes("EMI", "D", "LIV|CFM", "left at the safe place", "A3"),
    }
)
#: A delivered parcel's codes (into the recipient's hands).
DELIVERED_CODES = DELIVERED_BY["recipient"]
