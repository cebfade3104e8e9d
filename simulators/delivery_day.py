"""Couriers and the people at the doors in the simulated delivery day.

Owns the world outside the van: where each parcel's recipient lives and what happens at the
door (at home, a neighbour, a safe place, nobody, a refusal, a damaged box, an address that
cannot be found), what the customer told the shop (`DoorWishes`: a safe place and where, a
neighbour or not, a signature, an age check, a locker instead, the building's code) and who
opens the door (`Person`: a year of birth and the ID at hand, or none), all drawn from the
seed before the day; and the courier who works through the van's manifest: loading in the
morning (scanning one parcel of another van by mistake, now and then leaving one behind),
driving from stop to stop with the GNSS receiver following the road (tunnels lose the fix; a
parked van is sometimes a street away), scanning at the door (sometimes the wrong parcel
first, sometimes a label that will not read), recording the outcome, taking redirected
parcels to lockers, collecting at a locker what the depot lists as expired there (badge, `#2`,
each parcel taken out scanned into the van), and scanning back what returns in the evening.

At the door the courier reads the van's screen (`status`: each parcel's care notes) and mostly
does what it says: a handover it forbids becomes the failure that fits (`no_safe_place`,
`not_at_home`), a parcel to sign for is signed on the handheld (strokes drawn from the seed)
with the signer's printed name, an age-checked one gets the ID's type and year of birth, or
`age_check_failed` when nobody at the door can show one. Sometimes (TRY_FORBIDDEN, TRY_UNSIGNED)
the courier tries the fated handover as if there were no preference; the van refuses it
(`PreferenceRefused`, its reason) and the courier then does the right thing. A failure that
leaves a card: the courier writes the code the screen shows on it and puts it through the
door (`on_card`, simulators.card_customers).

The courier acts only through the van's inputs (its scanner's pseudo-terminal, its GNSS
pseudo-terminal, its courier commands) and reads only what the van shows (its status, its
journal's events, its manifest). Like every simulator here it never imports the device
software it stands in front of; the scenario runner (simulators/day.py) hands it the van.

Must never: decide a parcel's fate from what the van or the depot knows (fates are drawn from
the seed before the day starts), wait without a bound, or tell the van something the courier
could not know (a parcel it never scanned is never "delivered with a scan").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from simulators.parcels import Label
from sync.journal import Journal
from sync.wire import Event

log = logging.getLogger("simulators.delivery_day")

DRIVE_MPS = 8.0  # town driving with traffic lights, about 29 km/h
SERVICE_S = (90.0, 300.0)  # parking, walking to the door, waiting, walking back
LOAD_SCAN_S = 12.0  # one parcel from the cage to its shelf
EVENT_WAIT_S = 5.0  # real seconds a courier waits for the van to react before giving up
REREAD_GAP_S = 0.4  # real seconds between two reads of one label (the driver debounces 0.3 s)

FIRST_ATTEMPT_FAILURE = 0.10
SECOND_ATTEMPT_FAILURE = 0.30
FAILURES = {  # reason: weight, as the seed documents describe a town's failed doors
    "not_at_home": 55,
    "no_access": 10,
    "business_closed": 8,
    "address_not_found": 9,
    "refused": 12,
    "damaged": 6,
}
HANDOVER = {"recipient": 75, "neighbour": 15, "safe_place": 10}
WRONG_STOP_SCAN = 0.02
UNREADABLE_LABEL = 0.015
TUNNEL_STOP = 0.04
FAR_PARKING = 0.03
LEFT_BEHIND = 0.3  # chance that a van leaves one parcel at the depot in the morning

# What customers tell the shop about their door (shares of parcels, drawn per parcel).
SAFE_PLACE_OK = 0.40  # of parcels that need no signature: a safe place is allowed
NEIGHBOUR_OK = 0.90
SIGNATURE_NEEDED = 0.08  # "leave nothing without a signature"
AGE_18 = 0.04  # alcohol: an ID check at the door (and a signature)
LOCKER_INSTEAD = 0.04  # where lockers are allowed, the customer can be told, nothing to sign
ACCESS_CODE = 0.10  # a block of flats with a code at its street door
SAFE_PLACES = (
    "behind the blue gate",
    "in the garden shed",
    "with the bins at the side",
    "in the porch",
    "under the bench by the door",
    "in the box by the garage",
)
# Who opens the door of an age-checked parcel: a few cannot show an ID, a few are under age.
NO_ID_AT_HAND = 0.06
UNDER_AGE_AT_DOOR = 0.04
ID_DOCUMENTS = ("id_card", "id_card", "id_card", "driving_licence", "passport")
# How often the courier tries the fated handover as if there were no preference.
TRY_FORBIDDEN = 0.25  # a safe place or neighbour the screen says no to
TRY_UNSIGNED = 0.10  # a parcel the screen says to get signed (or an ID checked) for
NOBODY_FOR_PICKUP = 0.15  # a door return's customer is out when the courier calls


class Watchable(Protocol):
    def add_listener(self, fn: Callable[[list[Event]], None]) -> None: ...


class ReturnLike(Protocol):
    @property
    def parcel(self) -> str: ...


class StopLike(Protocol):
    @property
    def stop(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def parcels(self) -> tuple[str, ...]: ...
    @property
    def locker(self) -> str | None: ...
    @property
    def collect(self) -> Sequence[ReturnLike]: ...
    @property
    def pickups(self) -> Sequence[ReturnLike]: ...


class ManifestLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def day(self) -> str: ...
    @property
    def stops(self) -> Sequence[StopLike]: ...


class VanLike(Protocol):
    """What a courier uses of the van: its commands, its screen, its manifest, its journal."""

    @property
    def journal(self) -> Journal: ...

    def courier(self, doc: Mapping[str, Any]) -> dict[str, Any]: ...

    def manifest(self) -> ManifestLike | None: ...


class ScannerLike(Protocol):
    def scan(self, data: str, aim: str = "]C0") -> None: ...


class GnssLike(Protocol):
    def move_to(self, lat: float, lon: float) -> None: ...
    def follow(self, route: list[tuple[float, float]], speed_mps: float) -> None: ...
    def tunnel(self, on: bool = True) -> None: ...


class CameraApp(Protocol):
    """The handheld's camera app (simulators.doorstep.DoorstepCamera): saves a full-size shot
    of the doorstep, whose path the courier hands to the van as the photo."""

    def shoot(self, name: str, caption: str) -> Path: ...


class LockerDropper(Protocol):
    """The lockers' side: a courier hands a parcel over at a locker, or takes out the expired
    ones (blocking, bounded; `collect` returns the parcels taken out)."""

    def bring(self, van: str, label: Label, parcel: str, locker: str, at_h: float) -> bool: ...

    def collect(self, van: str, locker: str, at_h: float) -> list[str]: ...


@dataclass(frozen=True)
class DoorWishes:
    """What the customer (or the shop) said of the door, as the merchant's import carries it."""

    safe_place: bool = False
    safe_place_note: str = ""
    neighbour: bool = True
    signature: bool = False
    age_min: int | None = None
    locker_instead: bool = False
    access_code: str = ""

    def import_columns(self) -> dict[str, Any]:
        """The import's columns for these wishes (depot/imports.py), only those that say
        something: a merchant's file leaves a column blank where the customer said nothing."""
        cols: dict[str, Any] = {}
        if self.safe_place:
            cols["safe_place"] = True
            cols["safe_place_note"] = self.safe_place_note
        if not self.neighbour:
            cols["neighbour_ok"] = False
        if self.signature:
            cols["signature"] = True
        if self.age_min is not None:
            cols["age_min"] = self.age_min
        if self.locker_instead:
            cols["locker_instead"] = True
        if self.access_code:
            cols["access_code"] = self.access_code
        return cols


@dataclass(frozen=True)
class Person:
    """Someone who may take a parcel at the door: their name, year of birth and the identity
    document they can show (None: none at hand)."""

    name: str
    birth_year: int
    id_type: str | None


def draw_door(
    parcel: str, seed: int, recipient: str, *, locker_ok: bool, hooked: bool
) -> tuple[DoorWishes, Person, Person]:
    """The customer's wishes, who opens the recipient's door and the neighbour who would take
    it in, from the seed and the parcel alone (so the rest of the world's draws stay as they
    were). A locker instead only where the shop allows lockers, the customer can be sent the
    pickup code (`hooked`) and nothing is to be signed for; a safe place never for a parcel
    to sign for (the import refuses both, as the depot would)."""
    rng = random.Random(f"door/{parcel}/{seed}")
    age_min = 18 if rng.random() < AGE_18 else None
    signature = rng.random() < SIGNATURE_NEEDED
    signed_for = signature or age_min is not None
    safe_place = not signed_for and rng.random() < SAFE_PLACE_OK
    wishes = DoorWishes(
        safe_place=safe_place,
        safe_place_note=rng.choice(SAFE_PLACES) if safe_place else "",
        neighbour=rng.random() < NEIGHBOUR_OK,
        signature=signature,
        age_min=age_min,
        locker_instead=locker_ok and hooked and not signed_for and rng.random() < LOCKER_INSTEAD,
        access_code=f"{rng.randint(0, 9999):04d}#" if rng.random() < ACCESS_CODE else "",
    )
    surname = recipient.split(". ", 1)[-1]
    at_door = Person(recipient, rng.randint(1946, 2004), rng.choice(ID_DOCUMENTS))
    if rng.random() < UNDER_AGE_AT_DOOR:  # the household's teenager opens the door
        at_door = Person(f"{rng.choice('ABDEJKLMNST')}. {surname}", rng.randint(2008, 2011), None)
        if rng.random() < 0.7:
            at_door = dataclasses.replace(at_door, id_type="id_card")
    elif rng.random() < NO_ID_AT_HAND:
        at_door = dataclasses.replace(at_door, id_type=None)
    next_door = Person(
        f"{rng.choice('ABCDEFGHJKLMNPRSTW')}. {rng.choice(NEIGHBOURS)}",
        rng.randint(1940, 2000),
        rng.choice(ID_DOCUMENTS),
    )
    return wishes, at_door, next_door


NEIGHBOURS = ("Dekker", "Hendriks", "van Dijk", "Peters", "Vos", "Kok", "Jacobs", "de Graaf")


def draw_signature(rng: random.Random) -> dict[str, Any]:
    """A signature as a finger draws it on the handheld's pad: one to three strokes of a few
    dozen points, each a wavering line from left to right (edge.signature's document)."""
    width, height = 480, 160
    strokes = []
    x = rng.randint(20, 80)
    for _ in range(rng.randint(1, 3)):
        points = []
        y = rng.uniform(0.3, 0.7) * height
        phase, amp = rng.uniform(0, 2 * math.pi), rng.uniform(10, 40)
        for i in range(rng.randint(12, 40)):
            x = min(width, x + rng.randint(3, 9))
            wave = amp * math.sin(phase + i * rng.uniform(0.4, 0.9))
            points.append([x, max(0, min(height, round(y + wave)))])
        strokes.append(points)
        x = min(width - 40, x + rng.randint(5, 30))
    return {"width": width, "height": height, "strokes": strokes}


@dataclass(frozen=True)
class ScreenCare:
    """One parcel's care as the courier reads it off the stop's screen (edge.delivery's
    `care_notes`: "signature", "ID 18+", "no neighbour", "safe place: ...", "no safe place").
    A parcel the screen names no care for: everything allowed, as before care existed."""

    safe_place: bool = True
    neighbour: bool = True
    signature: bool = False
    id_check: bool = False

    @classmethod
    def read(cls, notes: object) -> ScreenCare:
        if not isinstance(notes, list):
            return cls()
        said = [str(n) for n in notes]
        return cls(
            safe_place=any(n.startswith("safe place") for n in said),
            neighbour="no neighbour" not in said,
            signature="signature" in said,
            id_check=any(n.startswith("ID ") for n in said),
        )

    def allows(self, to: str) -> bool:
        return {"safe_place": self.safe_place, "neighbour": self.neighbour}.get(to, True)


# What the courier does instead when the van refuses a handover for the parcel's care.
INSTEAD = {
    "safe_place_not_allowed": "no_safe_place",
    "neighbour_not_allowed": "not_at_home",
    "under_age": "age_check_failed",
}


@dataclass(frozen=True)
class Household:
    """The truth about one parcel's recipient, drawn from the seed."""

    parcel: str
    label: Label
    lat: float
    lon: float
    address: str
    recipient: str
    merchant: str
    size: str
    locker_ok: bool
    window: tuple[str, str] | None
    fates: tuple[tuple[str, str], ...]  # per attempt: ("deliver", to) or ("fail", reason)
    wishes: DoorWishes = DoorWishes()
    at_door: Person | None = None  # who opens the door for the recipient (None: themselves)
    next_door: Person | None = None  # the neighbour who takes it in

    def fate(self, attempt: int) -> tuple[str, str]:
        return self.fates[min(attempt, len(self.fates)) - 1]


def draw_fates(rng: random.Random) -> tuple[tuple[str, str], ...]:
    """What happens at the door on the first, second and third visit."""
    out = []
    for failure in (FIRST_ATTEMPT_FAILURE, SECOND_ATTEMPT_FAILURE, SECOND_ATTEMPT_FAILURE):
        if rng.random() < failure:
            reason = rng.choices(list(FAILURES), list(FAILURES.values()))[0]
            out.append(("fail", reason))
        else:
            out.append(("deliver", rng.choices(list(HANDOVER), list(HANDOVER.values()))[0]))
    return tuple(out)


def offset(lat: float, lon: float, metres: float, bearing_deg: float) -> tuple[float, float]:
    """The point `metres` away from (lat, lon) in direction `bearing_deg` (flat-earth; short)."""
    b = math.radians(bearing_deg)
    dlat = metres * math.cos(b) / 111_320.0
    dlon = metres * math.sin(b) / (111_320.0 * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance, written here apart from the van's own."""
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * 6_371_000.0 * math.asin(math.sqrt(h))


# The van's refusals for a parcel's care (parcel.care.REFUSALS), as its screen names them.
REFUSED_FOR_CARE = frozenset(
    {"safe_place_not_allowed", "neighbour_not_allowed", "signature_required",
     "id_check_required", "under_age"}
)


def _shown(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A courier command for the log, without a signature's hundreds of points."""
    return {k: ("<strokes>" if k == "signature" else v) for k, v in doc.items()}


class JournalWatch:
    """The courier's eyes on the van's screen: the events its journal committed, in order."""

    def __init__(self, journal: Watchable) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._abort = False
        journal.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        with self._cond:
            self._events.extend(events)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._events)

    def abort(self) -> None:
        with self._cond:
            self._abort = True
            self._cond.notify_all()

    def wait(self, after: int, kinds: Sequence[str], timeout: float, **match: Any) -> Event | None:
        """The first event after `after` of one of `kinds` whose payload has `match`."""

        def find() -> Event | None:
            for e in self._events[after:]:
                if e.kind in kinds and all(e.payload.get(k) == v for k, v in match.items()):
                    return e
            return None

        with self._cond:
            self._cond.wait_for(lambda: self._abort or find() is not None, timeout)
            return find()


@dataclass
class CourierTally:
    """What the courier did (the injected side); the van's side is its events."""

    loaded: int = 0
    left_behind: list[str] = field(default_factory=list)
    wrong_van_scans: int = 0
    wrong_van_refused: int = 0
    wrong_stop_scans: int = 0
    wrong_stop_refused: int = 0
    unreadable_labels: int = 0
    tunnel_stops: int = 0
    far_stops: int = 0
    delivered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    locker_drops: int = 0
    locker_drops_failed: int = 0
    collected: int = 0  # parcels taken out of lockers at the depot's collections
    returned: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    gave_up: Counter[str] = field(default_factory=Counter)
    manifest_versions: list[int] = field(default_factory=list)
    tried_forbidden: int = 0  # handovers tried as if the parcel had no preferences
    care_refused: Counter[str] = field(default_factory=Counter)  # the van's refusals, by reason
    signed: int = 0  # delivered with a signature on the handheld
    id_checked: int = 0  # ... and an ID's type and year of birth
    cards: int = 0  # cards written with the screen's code and left at the door
    picked_up: int = 0  # customers' returns taken at their door
    pickups_missed: int = 0  # ... listed, but nobody came to the door with it


class Courier:
    """One van's courier for the days of the run; `round()` works one day's manifest."""

    def __init__(
        self,
        name: str,
        van: VanLike,
        *,
        scanner: ScannerLike,
        gnss: GnssLike,
        world: Mapping[str, Household],
        depot: tuple[float, float],
        sim_wait: Callable[[float], bool],
        hour: Callable[[], float],
        rng: random.Random,
        lockers: LockerDropper | None,
        strangers: Sequence[Label],
        camera_app: CameraApp,
        on_card: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.van = van
        self.scanner = scanner
        self.gnss = gnss
        self.world = world
        self.depot = depot
        self.sim_wait = sim_wait  # wait simulated seconds; False when the run is stopping
        self.hour = hour
        self.rng = rng
        self.lockers = lockers
        self.strangers = list(strangers)  # labels of other vans' parcels, for a wrong pick
        self.camera_app = camera_app
        self.on_card = on_card  # the card through the door: (parcel, code as written)
        self.tally = CourierTally()
        self.watch = JournalWatch(van.journal)
        self.attempts: Counter[str] = Counter()
        self.on_van: set[str] = set()
        self.collect_seen: set[str] = set()  # parcels listed to collect, already asked for
        self.pickup_seen: set[str] = set()  # returns listed at a door, already called for
        self._last_read: dict[str, float] = {}
        self.tunnel = False  # the current stop has no sky (set on arrival)

    # --- helpers ---------------------------------------------------------------------------

    def _do(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._try(doc)[0]

    def _try(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The van's answer, or None and the reason the screen gave for refusing it."""
        try:
            return self.van.courier(doc), None
        except Exception as exc:  # the van refused: count it, the courier carries on
            reason = str(getattr(exc, "reason", type(exc).__name__))
            self.tally.refusals[f"{doc.get('do')}: {reason}"] += 1
            log.info("%s: van refused %s: %s", self.name, _shown(doc), exc)
            return None, reason

    def _scan(self, label: Label, kinds: Sequence[str], **match: Any) -> Event | None:
        # The scanner driver counts identical reads within its debounce window (real time) as
        # one; simulated minutes pass in milliseconds, so the courier waits that out.
        since = time.monotonic() - self._last_read.get(label.data, -1e9)
        if since < REREAD_GAP_S:
            time.sleep(REREAD_GAP_S - since)
        mark = self.watch.mark()
        self.scanner.scan(label.data, aim=label.aim)
        self._last_read[label.data] = time.monotonic()
        event = self.watch.wait(mark, kinds, EVENT_WAIT_S, **match)
        if event is None:
            self.tally.gave_up[f"no answer to a scan ({'/'.join(kinds)})"] += 1
        return event

    def _drive(self, frm: tuple[float, float], to: tuple[float, float]) -> bool:
        self.gnss.follow([frm, to], DRIVE_MPS)
        return self.sim_wait(metres(frm, to) / DRIVE_MPS + 30.0)

    # --- the day ----------------------------------------------------------------------------

    def wait_manifest(self, day: str, timeout: float) -> ManifestLike | None:
        """The van's manifest for `day`, once the van has applied it."""
        mark = 0
        while True:
            m = self.van.manifest()
            if m is not None and m.day == day:
                return m
            e = self.watch.wait(mark, ("manifest_applied",), timeout, day=day)
            if e is None:
                m = self.van.manifest()
                return m if m is not None and m.day == day else None
            mark = self.watch.mark()

    def round(self, day: str) -> None:
        """Load, drive the stops, drop redirected parcels at lockers, return, close the day."""
        manifest = self.wait_manifest(day, EVENT_WAIT_S * 2)
        if manifest is None:
            self.tally.gave_up["no manifest"] += 1
            return
        self.tally.manifest_versions.append(manifest.version)
        self.gnss.move_to(*self.depot)
        self._load(manifest)
        self._do({"do": "depart"})
        where = self.depot
        done: set[int] = set()
        while True:
            manifest = self.van.manifest() or manifest
            if manifest.version not in self.tally.manifest_versions:
                self.tally.manifest_versions.append(manifest.version)
            todo = [
                s
                for s in manifest.stops
                if (s.stop not in done and self._has_work(s))
                or self._to_collect(s)
                or self._to_pick_up(s)
            ]
            if not todo:
                break
            # Doors first, in the manifest's order; locker stops once the doors are done.
            doors = [s for s in todo if s.kind != "locker"]
            stop = doors[0] if doors else todo[0]
            again = stop.stop in done  # back for what a re-issued manifest added here
            done.add(stop.stop)
            if not self._drive(where, (stop.lat, stop.lon)):
                return
            where = (stop.lat, stop.lon)
            if stop.kind == "locker":
                self._locker_stop(stop)
            else:
                self._door_stop(stop, only_pickups=again)
        if not self._drive(where, self.depot):
            return
        self.gnss.move_to(*self.depot)
        self._do({"do": "end_round"})
        for parcel in sorted(self.on_van):
            e = self._scan(
                self.world[parcel].label,
                ("parcel_returned_to_depot", "return_refused"),
            )
            if e is not None and e.kind == "parcel_returned_to_depot":
                self.tally.returned += 1
                self.sim_wait(LOAD_SCAN_S)
        self.on_van.clear()
        self.collect_seen.clear()
        self.pickup_seen.clear()
        self._do({"do": "close_day"})

    def _has_work(self, stop: StopLike) -> bool:
        return (
            any(p in self.on_van for p in stop.parcels)
            or self._to_collect(stop)
            or self._to_pick_up(stop)
        )

    def _to_pick_up(self, stop: StopLike) -> bool:
        """The manifest lists customers' returns to take at this door the courier has not
        called for (a manifest re-issued mid-round may add one)."""
        return any(p.parcel not in self.pickup_seen for p in stop.pickups)

    def _to_collect(self, stop: StopLike) -> bool:
        """The manifest lists expired parcels here the courier has not asked the locker for
        (a manifest re-issued mid-round may add some at a locker already visited)."""
        return any(c.parcel not in self.collect_seen for c in stop.collect)

    def _load(self, manifest: ManifestLike) -> None:
        order = [p for s in reversed(manifest.stops) for p in s.parcels if p in self.world]
        left = None
        if order and self.rng.random() < LEFT_BEHIND:
            left = self.rng.choice(order)
            self.tally.left_behind.append(left)
        stranger_at = self.rng.randrange(len(order) + 1) if self.strangers else -1
        for i, parcel in enumerate(order):
            if i == stranger_at:
                label = self.rng.choice(self.strangers)
                self.tally.wrong_van_scans += 1
                e = self._scan(label, ("load_refused", "parcel_loaded", "scan_rejected"))
                if e is not None and e.kind == "load_refused":
                    self.tally.wrong_van_refused += 1
            if parcel == left:
                continue
            e = self._scan(self.world[parcel].label, ("parcel_loaded", "load_refused"))
            if e is not None and e.kind == "parcel_loaded":
                self.tally.loaded += 1
                self.on_van.add(parcel)
            if not self.sim_wait(LOAD_SCAN_S):
                return

    def _arrive(self, stop: StopLike) -> None:
        lat, lon = stop.lat, stop.lon
        if self.rng.random() < FAR_PARKING:
            lat, lon = offset(lat, lon, self.rng.uniform(140, 300), self.rng.uniform(0, 360))
            self.tally.far_stops += 1
        else:
            lat, lon = offset(lat, lon, self.rng.uniform(3, 40), self.rng.uniform(0, 360))
        self.gnss.move_to(lat, lon)
        self.tunnel = self.rng.random() < TUNNEL_STOP
        if self.tunnel:
            self.gnss.tunnel(True)  # an underground car park: no sky, no fix
            self.tally.tunnel_stops += 1
        self.sim_wait(5.0)  # a few epochs at the new place before the courier taps "arrived"
        self._do({"do": "arrive", "stop": stop.stop})

    def _door_stop(self, stop: StopLike, *, only_pickups: bool = False) -> None:
        self._arrive(stop)
        # Back at a door already called at: its parcels had their attempt today.
        here = [] if only_pickups else [p for p in stop.parcels if p in self.on_van]
        if here and self.rng.random() < WRONG_STOP_SCAN:
            # Sorted: a set's order changes from run to run, the seed's draws must not.
            later = sorted(p for p in self.on_van if p not in stop.parcels)
            if later:
                self.tally.wrong_stop_scans += 1
                e = self._scan(
                    self.world[self.rng.choice(later)].label,
                    ("stop_scan_refused", "parcel_scanned_at_stop"),
                )
                if e is not None and e.kind == "stop_scan_refused":
                    self.tally.wrong_stop_refused += 1
        # The stop's screen: each parcel's care notes, read before the first parcel comes out.
        screen = self._do({"do": "status"}) or {}
        care_shown = screen.get("care")
        notes: Mapping[str, Any] = care_shown if isinstance(care_shown, dict) else {}
        for parcel in here:
            home = self.world[parcel]
            # A torn label: the courier types the outcome, and says why there is no scan.
            torn = self.rng.random() < UNREADABLE_LABEL
            said = {"no_scan": "label_unreadable"} if torn else {}
            if torn:
                self.tally.unreadable_labels += 1
            else:
                self._scan(home.label, ("parcel_scanned_at_stop", "stop_scan_refused"))
            self.attempts[parcel] += 1
            what, how = home.fate(self.attempts[parcel])
            self.sim_wait(self.rng.uniform(*SERVICE_S))
            if what == "deliver":
                self._hand_over(home, how, ScreenCare.read(notes.get(parcel)), said)
            else:
                self._fail(parcel, how, said)
        self._pick_up(stop)
        if self.tunnel:
            self.gnss.tunnel(False)

    def _pick_up(self, stop: StopLike) -> None:
        """The customers' returns the screen lists here: when the customer is in, the courier
        scans the label they printed and the return rides back to the depot with the van. When
        nobody is in, the courier records the missed pickup; the depot tells the customer and
        plans it again on a next round."""
        for pickup in stop.pickups:
            if pickup.parcel in self.pickup_seen:
                continue
            self.pickup_seen.add(pickup.parcel)
            home = self.world.get(pickup.parcel)
            self.sim_wait(self.rng.uniform(*SERVICE_S) / 2)
            # No label yet (the depot's notice with its id had not reached the customer), or
            # nobody in: the courier says so on the handheld, and the depot tells the customer.
            missed = (
                "not_ready"
                if home is None
                else "not_at_home" if self.rng.random() < NOBODY_FOR_PICKUP else None
            )
            if home is None or missed is not None:
                said = {"do": "pickup_missed", "parcel": pickup.parcel, "reason": missed}
                if self._do(said) is not None:
                    self.tally.pickups_missed += 1
                continue
            e = self._scan(
                home.label,
                ("return_collected_at_door", "stop_scan_refused"),
                parcel=pickup.parcel,
            )
            if e is not None and e.kind == "return_collected_at_door":
                self.tally.picked_up += 1
                self.on_van.add(pickup.parcel)

    def _hand_over(
        self, home: Household, to: str, care: ScreenCare, said: Mapping[str, str]
    ) -> None:
        """The fated handover as the screen allows it. Mostly the courier does what the screen
        says; now and then they try the handover as if the parcel had no preferences, the van
        refuses it, and they do what its refusal says instead."""
        parcel = home.parcel
        proof = care.signature or care.id_check
        forbidden = not care.allows(to)
        tempted = (forbidden and self.rng.random() < TRY_FORBIDDEN) or (
            not forbidden and proof and self.rng.random() < TRY_UNSIGNED
        )
        if forbidden and not tempted:
            self._fail(parcel, INSTEAD[f"{to}_not_allowed"], said)
            return
        doc: dict[str, Any] = {"do": "deliver", "parcel": parcel, "to": to, **said}
        taker = self._taker(home, to)
        if to == "recipient":
            doc["name"] = taker.name
        elif to == "neighbour":
            doc["name"] = taker.name
            doc["neighbour_address"] = f"next door to {home.address}"
        else:
            shot = self.camera_app.shoot(f"{self.name}-{parcel}", f"{parcel} {self.name}")
            doc["photo"] = str(shot)
        if tempted:
            self.tally.tried_forbidden += 1
        elif proof and not self._prove(doc, taker, id_check=care.id_check):
            self._fail(parcel, "age_check_failed", said)
            return
        for _ in range(3):  # the screen names one missing proof at a time
            done, refused = self._try(doc)
            if done is not None:
                self.tally.delivered += 1
                self.tally.signed += doc.get("signature") is not None
                self.tally.id_checked += doc.get("id_check") is not None
                self.on_van.discard(parcel)
                return
            if refused is None or refused not in REFUSED_FOR_CARE:
                return  # some other refusal, counted; the parcel stays on the van
            self.tally.care_refused[refused] += 1
            if refused in INSTEAD:
                self._fail(parcel, INSTEAD[refused], said)
                return
            # signature_required / id_check_required: the person at the door signs, shows an ID.
            if not self._prove(doc, taker, id_check=care.id_check or "id_check" in refused):
                self._fail(parcel, "age_check_failed", said)
                return

    def _taker(self, home: Household, to: str) -> Person:
        """Who takes the parcel: the one who opens the recipient's door, or the neighbour."""
        person = home.next_door if to == "neighbour" else home.at_door
        if person is None:
            name = home.recipient if to != "neighbour" else f"neighbour of {home.recipient}"
            person = Person(name, 1980, "id_card")
        return person

    def _prove(self, doc: dict[str, Any], taker: Person, *, id_check: bool) -> bool:
        """The taker signs on the handheld and prints their name; with `id_check` they show
        their ID and the courier types its type and year of birth. False when they have none."""
        if id_check:
            if taker.id_type is None:
                return False
            doc["id_check"] = {"id_type": taker.id_type, "birth_year": taker.birth_year}
        if "signature" not in doc:
            doc["signature"] = draw_signature(self.rng)
            doc["signed_by"] = taker.name
        return True

    def _fail(self, parcel: str, reason: str, said: Mapping[str, str]) -> None:
        """A failed attempt; after one that leaves a card the courier writes the code the
        screen shows on it and puts it through the door."""
        done = self._do({"do": "fail", "parcel": parcel, "reason": reason, **said})
        if done is None:
            return
        self.tally.failed[reason] += 1
        card = done.get("card")
        if isinstance(card, str) and card:
            self.tally.cards += 1
            if self.on_card is not None:
                self.on_card(parcel, card)

    def _locker_stop(self, stop: StopLike) -> None:
        self._arrive(stop)
        for parcel in [p for p in stop.parcels if p in self.on_van]:
            home = self.world[parcel]
            self._scan(home.label, ("parcel_scanned_at_stop", "stop_scan_refused"))
            ok = (
                self.lockers.bring(self.name, home.label, parcel, str(stop.locker), self.hour())
                if self.lockers is not None
                else False
            )
            if not ok:
                self.tally.locker_drops_failed += 1
                continue  # still on the van: it comes back to the depot tonight
            if self._do({"do": "drop", "parcel": parcel}) is not None:
                self.tally.locker_drops += 1
                self.on_van.discard(parcel)
        if self._to_collect(stop):
            self._collect(stop)
        if self.tunnel:
            self.gnss.tunnel(False)

    def _collect(self, stop: StopLike) -> None:
        """Badge in, `#2`, take out what the locker opens; scan each parcel into the van."""
        self.collect_seen.update(c.parcel for c in stop.collect)
        if self.lockers is None:
            return
        for parcel in self.lockers.collect(self.name, str(stop.locker), self.hour()):
            home = self.world.get(parcel)
            if home is None:
                self.tally.gave_up["collected a parcel without a label"] += 1
                continue
            e = self._scan(
                home.label,
                ("parcel_collected_from_locker", "stop_scan_refused"),
                parcel=parcel,
            )
            if e is not None and e.kind == "parcel_collected_from_locker":
                self.tally.collected += 1
                self.on_van.add(parcel)
