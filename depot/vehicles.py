"""What a delivery vehicle can carry and how long its courier's day is, for the day plan.

Owns the vehicle types (``van``, ``cargo_bike``, ``on_foot``), their default limits, the one
check of a setting's value (`vehicle`), and the arithmetic planning uses: a load of parcels
(:class:`Load`) and a round's hours (:func:`round_hours`). It plans nothing and reads no file:
`depot.config` reads ``[[vehicles]]`` through it and `depot.routing` plans with it.

The defaults are assumptions, chosen to be believable for a European city depot and meant to
be overridden per vehicle (``[[vehicles]]`` in depot.toml):

============  =======  ======  =======  =======  ========  ========  ===========
type          parcels  kg      litres   shift h  km/h      min/stop  kg a parcel
============  =======  ======  =======  =======  ========  ========  ===========
van           150      800     8000     8        25        2.5       (its payload)
cargo_bike    40       150     1000     6        15        2         25
on_foot       20       25      80       4        4         2         10
============  =======  ======  =======  =======  ========  ========  ===========

- **Parcels.** The field reference (shared/reference/PROTOCOLS.md, 5) gives 80-120 stops a
  day per van (UPS up to 200); with some doors taking two parcels, 150 parcels a van. A cargo
  bike and a walker get what fits their box or trolley and a shorter day.
- **Weight and volume.** A 3.5 t panel van carries about 1 t and 10 m³; shelving and the
  aisle leave about 800 kg and 8 m³ usable. A box cargo bike's container is about 1 m³ with
  125-200 kg payload (DHL's Cubicycle: 1 m³, 125 kg; larger trailer bikes reach 1.5 m³):
  1000 l and 150 kg, set per bike for a bigger one. On foot: a trolley bag of 80 l, 25 kg.
- **A parcel's weight** ("kg a parcel", ``parcel_kg``): the heaviest single parcel the
  courier handles alone without a tail lift. 25 kg for a bike, the manual-handling guideline
  for a lift close to the body; 10 kg on foot, carried along the street with the rest. A van's
  is its payload: anything it can load it can deliver (two people or a trolley at the door).
- **Speed** is *straight-line* kilometres per hour of driving, because planning measures
  straight lines (`parcel.geo.distance_m`): a van at 30-35 km/h on roads that are 1.3-1.4
  times the straight line makes 25; a cargo bike 15 (it does not sit in traffic, but rides
  slower); a walker 4.
- **Stop time** is per stop, not per parcel: parking, walking to the door, the scan, the
  handover or the card. 2.5 minutes for a van (parking), 2 for a bike or a walker.

A round's hours are ``straight-line km / speed + stops x stop time``, the leg back to the depot
included. Time windows, breaks, loading at the depot and a second parcel at one door are not
in it.

Must never: accept a limit that is not a positive number, or guess a type it does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from depot.errors import DepotError
from parcel.geo import distance_m

if TYPE_CHECKING:
    from depot.imports import ParcelRecord

__all__ = [
    "LIMITS",
    "TYPES",
    "Load",
    "Vehicle",
    "VehicleError",
    "round_hours",
    "vehicle",
]

#: Loads and times within this of a limit count as within it (float sums of weights).
_SLACK = 1e-9
#: Settings a vehicle may override, and their upper bounds (what no real vehicle exceeds:
#: a typing mistake, not a big van).
LIMITS: Mapping[str, float] = MappingProxyType(
    {
        "parcels": 10_000,
        "weight_kg": 40_000,
        "volume_l": 100_000,
        "shift_h": 24,
        "speed_kmh": 130,
        "stop_min": 120,
        "parcel_kg": 40_000,
    }
)


class VehicleError(DepotError):
    """A vehicle setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class Load:
    """What a vehicle carries: parcels, kilograms, litres."""

    parcels: int = 0
    weight_kg: float = 0.0
    volume_l: float = 0.0

    @classmethod
    def of(cls, records: Iterable[ParcelRecord]) -> Load:
        load = cls()
        for r in records:
            load = load + cls(1, r.weight_kg, r.volume)
        return load

    def __add__(self, other: Load) -> Load:
        return Load(
            self.parcels + other.parcels,
            self.weight_kg + other.weight_kg,
            self.volume_l + other.volume_l,
        )


@dataclass(frozen=True)
class Vehicle:
    """One vehicle of the fleet, named as its handheld (the van device) is.

    ``None`` for a limit means none: a vehicle made from a bare van name for a plan without
    limits (`depot.routing.plan_routes` with names, as before vehicles had types).
    """

    name: str
    type: str = "van"
    parcels: int | None = None
    weight_kg: float | None = None
    volume_l: float | None = None
    shift_h: float | None = None
    speed_kmh: float = 25.0
    stop_min: float = 2.5
    parcel_kg: float | None = None

    @classmethod
    def of_type(cls, name: str, type: str = "van", **overrides: Any) -> Vehicle:
        """A vehicle with its type's defaults, then ``overrides`` (checked by `vehicle`)."""
        return vehicle({"name": name, "type": type, **overrides}, where=name)

    def over(self, load: Load) -> str | None:
        """The limit ``load`` breaks ("parcels", "weight_kg", "volume_l"), or None."""
        if self.parcels is not None and load.parcels > self.parcels:
            return "parcels"
        if self.weight_kg is not None and load.weight_kg > self.weight_kg + _SLACK:
            return "weight_kg"
        if self.volume_l is not None and load.volume_l > self.volume_l + _SLACK:
            return "volume_l"
        return None

    def holds(self, load: Load) -> bool:
        return self.over(load) is None

    def lifts(self, record: ParcelRecord) -> bool:
        """Whether one courier of this vehicle handles the parcel on its own (weight a parcel,
        and it fits the vehicle at all)."""
        if not self.lifts_weight(record.weight_kg):
            return False
        return not (self.volume_l is not None and record.volume > self.volume_l + _SLACK)

    def lifts_weight(self, kg: float) -> bool:
        """Whether one parcel of ``kg`` is within ``parcel_kg`` (else the payload)."""
        heaviest = self.parcel_kg if self.parcel_kg is not None else self.weight_kg
        return heaviest is None or kg <= heaviest + _SLACK

    def within_shift(self, hours: float) -> bool:
        return self.shift_h is None or hours <= self.shift_h + _SLACK

    def hours(self, metres: float, stops: int) -> float:
        """Hours of a round of ``metres`` (straight line) and ``stops`` stops."""
        return metres / 1000.0 / self.speed_kmh + stops * self.stop_min / 60.0


#: Each type's defaults (see the module docstring for why these numbers).
TYPES: Mapping[str, Vehicle] = MappingProxyType(
    {
        "van": Vehicle("", "van", 150, 800.0, 8000.0, 8.0, 25.0, 2.5, None),
        "cargo_bike": Vehicle("", "cargo_bike", 40, 150.0, 1000.0, 6.0, 15.0, 2.0, 25.0),
        "on_foot": Vehicle("", "on_foot", 20, 25.0, 80.0, 4.0, 4.0, 2.0, 10.0),
    }
)
_KEYS = frozenset({"name", "type", *LIMITS})


def vehicle(table: Mapping[str, Any], *, where: str = "vehicle") -> Vehicle:
    """A vehicle from one ``[[vehicles]]`` table: ``name``, ``type`` (default ``van``) and any
    of :data:`LIMITS` over the type's defaults. Raises :class:`VehicleError` naming the first
    bad key as ``{where}.{key}``."""
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise VehicleError(
            f"{where}.{unknown[0]} is not a vehicle setting (known: {', '.join(sorted(_KEYS))})"
        )
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise VehicleError(f"{where}.name must be the van device's name")
    kind = table.get("type", "van")
    if kind not in TYPES:
        raise VehicleError(f"{where}.type must be one of {', '.join(TYPES)}, got {kind!r}")
    values: dict[str, Any] = {}
    for key, most in LIMITS.items():
        if key not in table:
            continue
        value = table[key]
        whole = key == "parcels"
        ok_type = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not 0 < value <= most:
            what = "a whole number" if whole else "a number"
            raise VehicleError(f"{where}.{key} must be {what} above 0 and at most {most:g}")
        values[key] = value if whole else float(value)
    return replace(TYPES[kind], name=name, **values)


def round_hours(
    vehicle: Vehicle, depot: tuple[float, float], stops: Sequence[tuple[float, float]]
) -> float:
    """Hours of a closed round (depot, ``stops`` in order, back to the depot)."""
    if not stops:
        return 0.0
    points = [depot, *stops, depot]
    metres = sum(distance_m(*a, *b) for a, b in pairwise(points))
    return vehicle.hours(metres, len(stops))
