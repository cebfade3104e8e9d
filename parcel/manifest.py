"""A van's manifest: which parcels it carries, to which stops, in which order.

Owns the manifest document both ends agree on (docs/DELIVERY.md): the depot builds and
publishes it, the van parses and runs it. Parsing is strict: a van must refuse a manifest it
cannot fully understand rather than drive a round with half of it.

A `locker` stop may also list parcels to **collect** (`collect`): holds that ran out
uncollected, which the courier takes out of the locker (badge, `#2`) and brings back to the
depot. Those parcels are not delivered by this van, so they have no shelf and are not in
`Manifest.parcels`; a manifest without `collect` (every one before it existed) collects none.

Must never: guess a missing field, or accept a stop list whose numbering has holes (the
shelf positions and the courier's route are derived from it), or a parcel both delivered and
collected, or collected at two stops.

An `address` stop may also list **pickups** (`pickups`): customers' returns the courier takes
at that door (`depot.returns`, handed over in person), scanned into the van and brought back
to the depot. Like collections they are not delivered by this van (no shelf, not in
`Manifest.parcels`); a parcel is never both delivered and picked up, nor picked up at two
stops, nor both collected from a locker and picked up at a door; a manifest without `pickups`
picks up none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parcel.care import NO_PREFERENCES, Care, CareError
from parcel.errors import ParcelError

MANIFEST_VERSION = 1
STOP_KINDS = ("address", "locker")


@dataclass(frozen=True)
class LockerReturn:
    """A parcel to take out of a locker at a `locker` stop, and the compartment it is in (None
    when the depot does not know it; the locker's own returns list is the truth)."""

    parcel: str
    compartment: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"parcel": self.parcel, "compartment": self.compartment}


@dataclass(frozen=True)
class DoorPickup:
    """A customer's return to take at an `address` stop: the return's own parcel id, which is
    also its label's text (the courier scans it, or types it when there is no label)."""

    parcel: str

    def to_doc(self) -> dict[str, Any]:
        return {"parcel": self.parcel}


class ManifestError(ParcelError):
    """A manifest document that cannot be used as it is; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"unusable manifest: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Stop:
    """One place the van stops at, with the parcels due there."""

    stop: int
    lat: float
    lon: float
    parcels: tuple[str, ...]
    kind: str = "address"
    address: str = ""
    recipient: str = ""
    window: tuple[str, str] | None = None
    instructions: str = ""
    locker: str | None = None
    collect: tuple[LockerReturn, ...] = ()
    care: Mapping[str, Care] = field(default_factory=dict)
    access_code: str = ""
    pickups: tuple[DoorPickup, ...] = ()

    def care_of(self, parcel: str) -> Care:
        """The parcel's care (docs/DELIVERY.md): the depot's, or :data:`NO_PREFERENCES` when
        the manifest names none for it (a depot older than care)."""
        return self.care.get(parcel, NO_PREFERENCES)

    def to_doc(self) -> dict[str, Any]:
        return {
            "stop": self.stop,
            "kind": self.kind,
            "lat": self.lat,
            "lon": self.lon,
            "address": self.address,
            "recipient": self.recipient,
            "window": list(self.window) if self.window else None,
            "instructions": self.instructions,
            "locker": self.locker,
            "parcels": list(self.parcels),
            "collect": [c.to_doc() for c in self.collect],
            "care": {p: c.to_doc() for p, c in self.care.items()},
            "access_code": self.access_code,
            "pickups": [p.to_doc() for p in self.pickups],
        }


@dataclass(frozen=True)
class Manifest:
    """A van's round for one day, at one version."""

    van: str
    version: int
    day: str
    stops: tuple[Stop, ...]
    issued_at: float = 0.0
    depot: tuple[float, float] | None = None
    _due: dict[str, int] = field(default_factory=dict, init=False, compare=False, repr=False)
    _collect: dict[str, int] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _pickup: dict[str, int] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        due: dict[str, int] = {}
        collect: dict[str, int] = {}
        pickup: dict[str, int] = {}
        for s in self.stops:
            for p in s.parcels:
                if p in due:
                    raise ManifestError(f"parcel {p} is due at stops {due[p]} and {s.stop}")
                due[p] = s.stop
            for c in s.collect:
                if c.parcel in collect:
                    raise ManifestError(
                        f"parcel {c.parcel} is collected at stops {collect[c.parcel]} and {s.stop}"
                    )
                collect[c.parcel] = s.stop
            for d in s.pickups:
                if d.parcel in pickup:
                    raise ManifestError(
                        f"parcel {d.parcel} is picked up at stops {pickup[d.parcel]} and {s.stop}"
                    )
                pickup[d.parcel] = s.stop
        both = sorted(set(due) & set(collect))
        if both:
            raise ManifestError(f"parcel {both[0]} is both delivered and collected")
        both = sorted(set(due) & set(pickup))
        if both:
            raise ManifestError(f"parcel {both[0]} is both delivered and picked up")
        both = sorted(set(collect) & set(pickup))
        if both:
            raise ManifestError(f"parcel {both[0]} is both collected and picked up")
        self._due.update(due)
        self._collect.update(collect)
        self._pickup.update(pickup)

    @property
    def parcels(self) -> list[str]:
        return list(self._due)

    def stop_of(self, parcel: str) -> int | None:
        """The stop a parcel is due at, or None when it is not on this manifest."""
        return self._due.get(parcel)

    @property
    def collections(self) -> list[str]:
        """The parcels this round takes out of lockers, in stop order."""
        return list(self._collect)

    def collected_at(self, parcel: str) -> int | None:
        """The stop a parcel is to be collected at, or None when this round does not."""
        return self._collect.get(parcel)

    @property
    def pickups(self) -> list[str]:
        """The customers' returns this round takes at doors, in stop order."""
        return list(self._pickup)

    def picked_up_at(self, parcel: str) -> int | None:
        """The stop a return is to be picked up at, or None when this round does not."""
        return self._pickup.get(parcel)

    def stop(self, number: int) -> Stop:
        if not 1 <= number <= len(self.stops):
            raise ManifestError(f"no stop {number} (stops 1..{len(self.stops)})")
        return self.stops[number - 1]

    def shelf_of(self, parcel: str) -> int | None:
        """Loading position in reverse stop order: the last stop's parcels go in first.

        Shelf 1 is the deepest; parcels of one stop share consecutive shelves in manifest
        order, so the courier finds a stop's parcels side by side.
        """
        if parcel not in self._due:
            return None
        n = 0
        for s in reversed(self.stops):
            for p in s.parcels:
                n += 1
                if p == parcel:
                    return n
        return None  # pragma: no cover - _due and stops agree by construction

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": MANIFEST_VERSION,
            "van": self.van,
            "version": self.version,
            "day": self.day,
            "issued_at": self.issued_at,
            "depot": {"lat": self.depot[0], "lon": self.depot[1]} if self.depot else None,
            "stops": [s.to_doc() for s in self.stops],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_doc(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"not JSON: {exc}") from None
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: Any) -> Manifest:
        if not isinstance(doc, Mapping):
            raise ManifestError("not a JSON object")
        if doc.get("v") != MANIFEST_VERSION:
            raise ManifestError(f"document version {doc.get('v')!r}, expected {MANIFEST_VERSION}")
        van = _text(doc, "van", required=True)
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ManifestError("version must be a positive integer")
        raw_stops = doc.get("stops")
        if not isinstance(raw_stops, Sequence) or isinstance(raw_stops, str):
            raise ManifestError("stops must be a list")
        stops = tuple(_stop(s, i + 1) for i, s in enumerate(raw_stops))
        depot = doc.get("depot")
        where = None
        if depot is not None:
            if not isinstance(depot, Mapping):
                raise ManifestError("depot must be an object")
            where = (_coord(depot, "lat", 90), _coord(depot, "lon", 180))
        issued = doc.get("issued_at", 0.0)
        if (
            not isinstance(issued, int | float)
            or isinstance(issued, bool)
            or not math.isfinite(issued)
        ):
            raise ManifestError("issued_at must be a number")
        return cls(
            van=van,
            version=version,
            day=_text(doc, "day", required=True),
            stops=stops,
            issued_at=float(issued),
            depot=where,
        )


def _text(doc: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ManifestError(f"{key} must be {'a non-empty' if required else 'a'} string")
    return value


def _coord(doc: Mapping[str, Any], key: str, limit: float) -> float:
    value = doc.get(key)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or abs(value) > limit
    ):
        raise ManifestError(f"{key} must be a number within ±{limit}")
    return float(value)


def _stop(doc: Any, expected: int) -> Stop:
    if not isinstance(doc, Mapping):
        raise ManifestError(f"stop {expected} is not an object")
    if doc.get("stop") != expected:
        raise ManifestError(f"stop numbers must run 1..n in order; got {doc.get('stop')!r}")
    kind = doc.get("kind", "address")
    if kind not in STOP_KINDS:
        raise ManifestError(f"stop {expected}: kind must be one of {', '.join(STOP_KINDS)}")
    parcels = doc.get("parcels")
    if (
        not isinstance(parcels, Sequence)
        or isinstance(parcels, str)
        or not all(isinstance(p, str) and p for p in parcels)
    ):
        raise ManifestError(f"stop {expected}: parcels must be a list of parcel ids")
    window = doc.get("window")
    if window is not None and not (
        isinstance(window, Sequence)
        and not isinstance(window, str)
        and len(window) == 2
        and all(isinstance(w, str) for w in window)
    ):
        raise ManifestError(f"stop {expected}: window must be [from, to]")
    locker = doc.get("locker")
    if kind == "locker" and not (isinstance(locker, str) and locker):
        raise ManifestError(f"stop {expected}: a locker stop must name its locker")
    collect = _collect(doc.get("collect"), expected)
    care = _care(doc.get("care"), expected, parcels)
    if collect and kind != "locker":
        raise ManifestError(f"stop {expected}: only a locker stop collects parcels")
    pickups = _pickups(doc.get("pickups"), expected)
    if pickups and kind != "address":
        raise ManifestError(f"stop {expected}: only an address stop picks up returns")
    return Stop(
        stop=expected,
        kind=kind,
        lat=_coord(doc, "lat", 90),
        lon=_coord(doc, "lon", 180),
        address=_text(doc, "address"),
        recipient=_text(doc, "recipient"),
        window=(str(window[0]), str(window[1])) if window else None,
        instructions=_text(doc, "instructions"),
        locker=locker if isinstance(locker, str) and locker else None,
        parcels=tuple(parcels),
        collect=collect,
        care=care,
        access_code=_text(doc, "access_code"),
        pickups=pickups,
    )


def _care(raw: Any, stop: int, parcels: Sequence[str]) -> dict[str, Care]:
    """A stop's `care`: each of its parcels' preferences (absent or null: none known)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ManifestError(f"stop {stop}: care must be an object keyed by parcel id")
    out = {}
    for parcel, doc in raw.items():
        if parcel not in parcels:
            raise ManifestError(f"stop {stop}: care names {parcel}, which is not due there")
        try:
            out[parcel] = Care.from_doc(doc)
        except CareError as exc:
            raise ManifestError(f"stop {stop}: care of {parcel}: {exc}") from None
    return out


def _collect(raw: Any, stop: int) -> tuple[LockerReturn, ...]:
    """A stop's `collect` list: absent or null is none (manifests from before it existed)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ManifestError(f"stop {stop}: collect must be a list")
    out = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise ManifestError(f"stop {stop}: each collect entry is an object")
        parcel, compartment = item.get("parcel"), item.get("compartment")
        if not isinstance(parcel, str) or not parcel:
            raise ManifestError(f"stop {stop}: a collect entry must name its parcel")
        if compartment is not None and not (isinstance(compartment, str) and compartment):
            raise ManifestError(f"stop {stop}: compartment must be a non-empty string or null")
        out.append(LockerReturn(parcel, compartment))
    return tuple(out)


def _pickups(raw: Any, stop: int) -> tuple[DoorPickup, ...]:
    """A stop's `pickups` list: absent or null is none (manifests from before it existed)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ManifestError(f"stop {stop}: pickups must be a list")
    out: list[DoorPickup] = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise ManifestError(f"stop {stop}: each pickup is an object")
        unknown = sorted(set(item) - {"parcel"})
        if unknown:
            raise ManifestError(f"stop {stop}: a pickup has only a parcel, not {unknown}")
        parcel = item.get("parcel")
        if not isinstance(parcel, str) or not parcel.strip() or parcel != parcel.strip():
            raise ManifestError(f"stop {stop}: a pickup must name its parcel")
        if any(p.parcel == parcel for p in out):
            raise ManifestError(f"stop {stop}: parcel {parcel} is picked up twice")
        out.append(DoorPickup(parcel))
    return tuple(out)
