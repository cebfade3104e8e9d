"""What a parcel needs at the door: the customer's (or merchant's) delivery preferences.

Owns the one document and the one rule both ends use. The depot fills a :class:`Care` from
the import and the customer's page and writes it into the manifest (a stop's ``care``,
docs/DELIVERY.md); the van reads it back and asks :meth:`Care.refusal` before it records a
handover, so nothing the customer forbade is ever recorded as delivered. The depot asks the
same rule again of every delivery it stores (``preference_violations``), against its own copy.

A parcel with no ``care`` on its manifest (a depot older than this document) is
:data:`NO_PREFERENCES`: every handover allowed, as before it existed. A depot that knows
nothing of a customer's wishes writes :meth:`Care.default` instead: no safe place without the
customer's word, a neighbour allowed.

Must never: allow a safe-place drop of a parcel that needs a signature or an age check, or
keep an identity document's number (only its type and the year of birth).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from parcel.errors import ParcelError

__all__ = [
    "AGE_LIMITS",
    "HANDOVERS",
    "ID_TYPES",
    "NO_PREFERENCES",
    "REFUSALS",
    "Care",
    "CareError",
    "IdCheck",
]

#: Who (or where) a delivered parcel went to: `parcel_delivered`'s `to`.
HANDOVERS = ("recipient", "neighbour", "safe_place")
#: Identity documents a courier may record the type of (never the number).
ID_TYPES = ("id_card", "passport", "driving_licence", "residence_permit")
#: Minimum ages a parcel may ask for (alcohol and medicine are 16 or 18 in the anchors' markets).
AGE_LIMITS = (16, 18, 21)

#: Why a handover is refused, in the courier's words (the van's `outcome_refused.reason`).
REFUSALS: Mapping[str, str] = {
    "safe_place_not_allowed": "the customer allows no safe place for this parcel",
    "neighbour_not_allowed": "the customer does not allow a neighbour to take this parcel",
    "signature_required": "this parcel needs a signature and the signer's printed name",
    "id_check_required": "this parcel needs an ID check (type and year of birth)",
    "under_age": "the year of birth on the ID is under the parcel's age limit",
}

_MAX_NOTE = 200


class CareError(ParcelError):
    """A care document or an ID check that cannot be used as it is; the message says why."""


@dataclass(frozen=True)
class IdCheck:
    """The courier's record that an identity document was checked: its type and the holder's
    year of birth. The document's number is never asked for, so it can never be kept."""

    id_type: str
    birth_year: int

    def __post_init__(self) -> None:
        if self.id_type not in ID_TYPES:
            raise CareError(f"id_type must be one of {', '.join(ID_TYPES)}")
        if (
            not isinstance(self.birth_year, int)
            or isinstance(self.birth_year, bool)
            or not 1900 <= self.birth_year <= 2100
        ):
            raise CareError("birth_year must be a year such as 1990")

    def old_enough(self, age_min: int, year: int) -> bool:
        """Whether the holder is surely `age_min` in `year`.

        Only the year of birth is kept, so the rule is the safe one: someone born in
        ``year - age_min`` may not have had the birthday yet, and is refused.
        """
        return year - self.birth_year > age_min

    def to_doc(self) -> dict[str, Any]:
        return {"id_type": self.id_type, "birth_year": self.birth_year}

    @classmethod
    def from_doc(cls, doc: Any) -> IdCheck:
        if not isinstance(doc, Mapping):
            raise CareError("id_check must be an object with id_type and birth_year")
        extra = set(doc) - {"id_type", "birth_year"}
        if extra:
            raise CareError(
                f"id_check keeps only id_type and birth_year, not {', '.join(sorted(extra))}"
            )
        return cls(id_type=doc.get("id_type"), birth_year=doc.get("birth_year"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Care:
    """One parcel's delivery preferences and what its contents ask for.

    ``safe_place``: a safe-place drop is allowed, at ``safe_place_note`` (free text, e.g.
    "behind the blue gate"). ``neighbour``: a neighbour may take it. ``signature``: leave
    nothing without a signature. ``age_min``: an ID check is needed, for this age.
    ``locker_instead``: the customer asked for a locker rather than the door (the depot plans
    it to a locker; a van that still has it may redirect it).
    """

    safe_place: bool = False
    safe_place_note: str = ""
    neighbour: bool = True
    signature: bool = False
    age_min: int | None = None
    locker_instead: bool = False

    def __post_init__(self) -> None:
        for name in ("safe_place", "neighbour", "signature", "locker_instead"):
            if not isinstance(getattr(self, name), bool):
                raise CareError(f"{name} must be true or false")
        if not isinstance(self.safe_place_note, str) or len(self.safe_place_note) > _MAX_NOTE:
            raise CareError(f"safe_place_note must be text of at most {_MAX_NOTE} characters")
        if self.age_min is not None and self.age_min not in AGE_LIMITS:
            raise CareError(f"age_min must be one of {', '.join(map(str, AGE_LIMITS))} or null")

    @classmethod
    def default(cls) -> Care:
        """What the depot writes when the customer has said nothing."""
        return cls()

    @property
    def needs_signature(self) -> bool:
        """An age check is a handover in person, so it is signed for too."""
        return self.signature or self.age_min is not None

    def refusal(
        self,
        to: str,
        *,
        signed: bool,
        id_check: IdCheck | None,
        year: int,
    ) -> str | None:
        """Why handing this parcel over `to` (a :data:`HANDOVERS` value) is not allowed with
        this proof, or None when it is. The first rule broken is named, in this order: where
        it goes, then the signature, then the ID."""
        if to not in HANDOVERS:
            raise CareError(f"to must be one of {', '.join(HANDOVERS)}")
        if to == "safe_place" and (not self.safe_place or self.needs_signature):
            return "safe_place_not_allowed"
        if to == "neighbour" and not self.neighbour:
            return "neighbour_not_allowed"
        if self.needs_signature and not signed:
            return "signature_required"
        if self.age_min is not None:
            if id_check is None:
                return "id_check_required"
            if not id_check.old_enough(self.age_min, year):
                return "under_age"
        return None

    def to_doc(self) -> dict[str, Any]:
        return {
            "safe_place": self.safe_place,
            "safe_place_note": self.safe_place_note,
            "neighbour": self.neighbour,
            "signature": self.signature,
            "age_min": self.age_min,
            "locker_instead": self.locker_instead,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> Care:
        """Read a care document; a missing key takes :meth:`default`'s value, an unknown key
        is refused (a van must not ignore a preference it does not understand)."""
        if not isinstance(doc, Mapping):
            raise CareError("care must be an object")
        known = set(cls().to_doc())
        extra = set(doc) - known
        if extra:
            raise CareError(f"unknown care field {sorted(extra)[0]!r}")
        values = {**cls().to_doc(), **doc}
        if values["safe_place_note"] is None:
            values["safe_place_note"] = ""
        return cls(**values)


#: A parcel whose manifest says nothing of care (a depot older than this document).
NO_PREFERENCES = Care(safe_place=True)
