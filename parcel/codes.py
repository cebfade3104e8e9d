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

__all__ = ["DELIVERED_CODES", "FAILURE_REASONS", "X12_IN_LOCKER", "X12_RETURNED", "ReasonCodes"]

#: X12 214 "available for pickup": a parcel waiting in a locker.
X12_IN_LOCKER = "AU"
#: X12 214 "returned to shipper".
X12_RETURNED = "3"


@dataclass(frozen=True)
class ReasonCodes:
    """How one delivery outcome is named in UPU tracking, X12 214 and INOVERT.

    ``inovert`` is None where INOVERT has no justification for it (docs/DELIVERY.md leaves it
    blank rather than pick a near miss).
    """

    upu: str
    x12: str
    inovert: str | None
    text: str


#: Every failure reason a van may report, with its codes (docs/DELIVERY.md, "Failure reasons").
FAILURE_REASONS: Mapping[str, ReasonCodes] = MappingProxyType(
    {
        "not_at_home": ReasonCodes("EMH", "AH", "REN|DAF", "recipient not at home"),
        "no_access": ReasonCodes("EMH", "AH", None, "no access to the address"),
        "address_not_found": ReasonCodes("EMH", "AH", "REN|CAD", "address not found"),
        "refused": ReasonCodes("EMH", "AH", "REN|SNC", "refused by the recipient"),
        "damaged": ReasonCodes("EMH", "AH", None, "parcel damaged"),
        "business_closed": ReasonCodes("EMH", "AH", None, "business closed"),
    }
)
#: A delivered parcel's codes.
DELIVERED_CODES = ReasonCodes("EMI", "D", "LIV|CFM", "delivered")
