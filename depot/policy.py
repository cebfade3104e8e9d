"""The exceptions policy: what happens to a parcel after a delivery attempt fails.

Owns the decision after a failure and the reason table that names failures in the industry's
codes (docs/DELIVERY.md, "Failure reasons"). Both the van (which writes the codes into its
`delivery_failed` events) and the depot (which decides what follows) import it from here, so
the two can never disagree on what a reason means.

Everything here is a pure function of its arguments: no clock, no database, no network, no
logging. The depot service feeds in what it knows (the reason, how many attempts were made,
which lockers have which compartments free) and carries out the answer.

The rules, in order:

1. ``refused`` and ``damaged``: return to sender at once. A recipient who refused the parcel
   will not take it tomorrow, and a damaged parcel is the merchant's claim to settle.
2. ``address_not_found``: return to sender. A second drive to an address that cannot be found
   fails again; the merchant must correct the address and send it afresh.
3. ``not_at_home``, ``no_access``, ``business_closed`` (the address is right, nobody could take
   the parcel):

   a. if the recipient accepts lockers (``locker_ok``) and a locker within ``max_locker_km``
      (default 3 km, straight line from the stop, inclusive) has a free compartment that fits,
      redirect to the nearest such locker (ties by locker name). Sizes are ordered S < M < L
      and a bigger compartment fits a smaller parcel; sizes other than these in a locker's
      ``free`` table are ignored. A staffed counter (``LockerSite.room`` set) fits any size
      while it has room. Lockers in ``tried_lockers`` are skipped;
   b. else, if ``attempts < max_attempts`` (default 2), a second attempt on the next round;
   c. else, return to sender.

   The locker comes before the second attempt whatever the attempt count: a parcel in a
   locker near home is delivered sooner and costs no second drive.
4. A locker hold that expired: return to sender (:func:`decide_after_hold_expired`); the
   recipient had the whole hold to collect it.
5. A reservation the locker refused (no free compartment after all): rule 3 again with that
   locker added to the tried ones (:func:`decide_after_reservation_refused`), so the next
   nearest locker is tried, then a second attempt, then the return.

``attempts`` counts the delivery attempts made so far, the failed one included: after the
first failed door ``attempts`` is 1, so with the default ``max_attempts`` of 2 the parcel gets
one more drive. A redirect to a locker is not an attempt at the door.

6. A customer asks, from their tracking page, to have the parcel delivered again on the next
   day (:func:`decide_on_redelivery_request`). Granted, once, as a ``second_attempt`` (the next
   day's plan puts it on a van) when a home attempt is still due: the parcel failed at the door
   and is with the courier (``attempted``) or back at the depot (``at_depot``), or its locker
   hold ran out (``hold_expired``: the planned collection brings it back to the depot, and the
   return scan keeps it there for the round instead of returning it); and fewer than
   ``max_attempts`` attempts were made, and no failure reason sends it back at once. Declined
   (:class:`RequestDeclined`, in words for the customer) otherwise: a parcel still on its
   first round needs nothing, one the policy sent to a locker is on its way there, one waiting
   in a locker is collected there (or its hold extended), and a final one is done.
7. A customer chooses, from their tracking page (or the card's code), to collect the parcel
   from a locker or a staffed counter instead (:func:`decide_on_pickup_choice`). Offered after
   a failed attempt only (``attempted``, or ``at_depot`` with an attempt made), once, unless
   the failure sends it back at once or the policy already sent it to a locker or counter.
   A locker: the nearest with a fitting free compartment within ``max_locker_km`` of the
   address (rule 3a's choice), never for a parcel whose sender refuses lockers
   (``locker_ok``) or that must be signed for or needs an ID check (a locker opens for a code
   alone). A counter: the nearest one with room, at any distance (the customer chose to go
   there, and a counter's staff ask for a signature or an ID), also when lockers are
   refused. Granted even when all door attempts are used: collecting costs no drive to the
   door, and the parcel would otherwise go back to the sender.

Must never: decide on a reason it does not know (it raises :class:`PolicyError` rather than
guess), send a parcel to a locker the recipient refused or one that has no fitting
compartment, or read anything but its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol

from depot.errors import DepotError
from parcel.codes import DELIVERED_CODES, FAILURE_REASONS, X12_IN_LOCKER, X12_RETURNED, ReasonCodes
from parcel.geo import distance_m

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_LOCKER_KM",
    "DELIVERED_CODES",
    "FAILURE_REASONS",
    "LOCKER_SIZES",
    "RETURN_AT_ONCE",
    "X12_IN_LOCKER",
    "X12_RETURNED",
    "ActionKind",
    "LockerSite",
    "NextAction",
    "PickupChoice",
    "PolicyError",
    "ReasonCodes",
    "RequestDeclined",
    "SiteConfig",
    "decide_after_failure",
    "decide_after_hold_expired",
    "decide_after_reservation_refused",
    "decide_on_pickup_choice",
    "decide_on_redelivery_request",
    "fits",
    "free_sites",
    "nearest_locker",
]

#: Locker compartment sizes from smallest to largest (InPost A/B/C: 8, 19, 41 cm high).
LOCKER_SIZES: tuple[str, ...] = ("S", "M", "L")
DEFAULT_MAX_ATTEMPTS = 2
DEFAULT_MAX_LOCKER_KM = 3.0


ActionKind = Literal["second_attempt", "locker", "return_to_sender"]
#: Where a customer may choose to collect a parcel after a missed delivery (rule 7).
PickupChoice = Literal["locker", "counter"]


class PolicyError(DepotError):
    """The policy was asked about something it has no rule for; `reason` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestDeclined(DepotError):
    """A customer's request the policy does not grant; the message is said to the customer."""


#: Reasons after which the parcel goes back to the merchant without another try.
RETURN_AT_ONCE: Mapping[str, str] = MappingProxyType(
    {
        "refused": "the recipient refused it; it goes back to the merchant",
        "damaged": "it is damaged; the merchant settles the claim",
        "address_not_found": (
            "the address could not be found and another drive would fail again; "
            "the merchant must correct it"
        ),
    }
)


@dataclass(frozen=True)
class LockerSite:
    """A parcel locker as the policy sees it: where it is and how many compartments are free.

    ``free`` maps a size letter to the number of free compartments of that size. A staffed
    counter has shelves, not compartments: ``room`` is its free places for a parcel of any
    size (None: a locker, judged by ``free``).
    """

    name: str
    lat: float
    lon: float
    free: Mapping[str, int]
    room: int | None = None


@dataclass(frozen=True)
class NextAction:
    """What to do with a parcel next; ``reason`` says why, in words for a dispatcher."""

    kind: ActionKind
    locker: str | None
    reason: str


def fits(parcel_size: str, compartment_size: str) -> bool:
    """Whether a parcel of one size goes into a compartment of another (bigger fits smaller)."""
    _require_size(parcel_size)
    if compartment_size not in LOCKER_SIZES:
        return False
    return LOCKER_SIZES.index(compartment_size) >= LOCKER_SIZES.index(parcel_size)


def decide_after_failure(
    *,
    reason: str,
    attempts: int,
    locker_ok: bool,
    size: str,
    stop_lat: float,
    stop_lon: float,
    lockers: Sequence[LockerSite],
    tried_lockers: Iterable[str] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_locker_km: float = DEFAULT_MAX_LOCKER_KM,
) -> NextAction:
    """The next action after a failed attempt at the door (rules 1-3 of the module docstring)."""
    codes = FAILURE_REASONS.get(reason)
    if codes is None:
        known = ", ".join(FAILURE_REASONS)
        raise PolicyError(f"unknown failure reason {reason!r} (known: {known})")
    if attempts < 0:
        raise PolicyError(f"attempts must not be negative, got {attempts}")
    if max_attempts < 1:
        raise PolicyError(f"max_attempts must be at least 1, got {max_attempts}")
    _require_size(size)

    at_once = RETURN_AT_ONCE.get(reason)
    if at_once is not None:
        return NextAction("return_to_sender", None, f"{codes.text}: {at_once}")

    if locker_ok:
        found = _nearest_fitting_locker(
            size, stop_lat, stop_lon, lockers, frozenset(tried_lockers), max_locker_km
        )
        if found is not None:
            site, km = found
            return NextAction(
                "locker",
                site.name,
                f"{codes.text}: {site.name} is {km:.1f} km away with a free compartment "
                f"for a size {size} parcel",
            )
        why_not = f"no locker within {max_locker_km:g} km has a free compartment for size {size}"
    else:
        why_not = "the recipient does not accept a locker"

    if attempts < max_attempts:
        return NextAction(
            "second_attempt",
            None,
            f"{codes.text}: {why_not}; attempt {attempts} of {max_attempts}, "
            "so another attempt on the next round",
        )
    return NextAction(
        "return_to_sender",
        None,
        f"{codes.text}: {why_not}, and all {max_attempts} attempts are used",
    )


def decide_after_reservation_refused(
    *,
    refused_locker: str,
    reason: str,
    attempts: int,
    locker_ok: bool,
    size: str,
    stop_lat: float,
    stop_lon: float,
    lockers: Sequence[LockerSite],
    tried_lockers: Iterable[str] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_locker_km: float = DEFAULT_MAX_LOCKER_KM,
) -> NextAction:
    """A locker refused the reservation (rule 5): decide again, never that locker again.

    ``reason`` is the failure at the door that led to the redirect in the first place.
    """
    return decide_after_failure(
        reason=reason,
        attempts=attempts,
        locker_ok=locker_ok,
        size=size,
        stop_lat=stop_lat,
        stop_lon=stop_lon,
        lockers=lockers,
        tried_lockers=(*tried_lockers, refused_locker),
        max_attempts=max_attempts,
        max_locker_km=max_locker_km,
    )


def decide_after_hold_expired(locker: str) -> NextAction:
    """A locker hold ran out uncollected (rule 4): the parcel goes back to the merchant."""
    return NextAction(
        "return_to_sender",
        None,
        f"hold expired at {locker}: the recipient did not collect it in time",
    )


#: Why a redelivery is declined in a state where it never applies, in the customer's words.
_NOT_REDELIVERABLE: Mapping[str, str] = MappingProxyType(
    {
        "received": "the parcel is still to go out for its first delivery",
        "loaded": "the parcel is on the van for its first delivery",
        "out_for_delivery": "the parcel is out for delivery now",
        "redirected": "the parcel is on its way to a parcel locker",
        "in_locker": (
            "the parcel is waiting for you in the locker; collect it there, or ask for more time"
        ),
        "returning": "the parcel is on its way back to the sender",
        "delivered": "the parcel was delivered",
        "picked_up": "the parcel was picked up",
        "returned_to_sender": "the parcel went back to the sender",
    }
)
_REDELIVERABLE = frozenset({"attempted", "at_depot", "hold_expired"})


def decide_on_redelivery_request(
    *,
    state: str,
    next_action: str | None,
    last_reason: str | None,
    attempts: int,
    asked_before: bool,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> NextAction:
    """A customer asked for delivery on the next day (rule 6): a ``second_attempt``, or
    :class:`RequestDeclined` saying why not."""
    if state not in _REDELIVERABLE:
        said = _NOT_REDELIVERABLE.get(state, f"the parcel is {state.replace('_', ' ')}")
        raise RequestDeclined(f"{said}, so it cannot be delivered again")
    if asked_before:
        raise RequestDeclined("you have asked for another delivery already; it is planned")
    at_once = RETURN_AT_ONCE.get(last_reason or "")
    if at_once is not None:
        raise RequestDeclined(f"{at_once}, so it cannot be delivered again")
    if next_action == "locker" and state != "hold_expired":
        raise RequestDeclined("the parcel is on its way to a parcel locker, collect it there")
    if attempts >= max_attempts:
        raise RequestDeclined(
            f"all {max_attempts} delivery attempts were made; the parcel goes back to the sender"
        )
    return NextAction(
        "second_attempt",
        None,
        f"the customer asked for delivery on the next day (attempt {attempts + 1} "
        f"of {max_attempts})",
    )


class SiteConfig(Protocol):
    """A locker or counter as the depot's configuration names it (`depot.config`)."""

    @property
    def name(self) -> str: ...
    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def compartments(self) -> Mapping[str, int]: ...
    @property
    def kind(self) -> str: ...
    @property
    def capacity(self) -> int: ...


def free_sites(
    sites: Sequence[SiteConfig], busy: Mapping[str, Mapping[str, int]]
) -> list[LockerSite]:
    """Each configured site as the policy sees it, given `busy` (locker -> size -> parcels held
    or reserved there): a locker's free compartments per size, a counter's free places."""
    out = []
    for site in sites:
        held = busy.get(site.name, {})
        if site.kind == "counter":  # shelves: any size, while places are left
            room = site.capacity - sum(held.values())
            out.append(LockerSite(site.name, site.lat, site.lon, {}, room=max(0, room)))
            continue
        free = dict(site.compartments)
        for size, n in held.items():
            free[size] = max(0, free.get(size, 0) - n)
        out.append(LockerSite(site.name, site.lat, site.lon, free))
    return out


#: States after a failed attempt in which the customer may choose a locker or a counter.
_CHOOSABLE = frozenset({"attempted", "at_depot"})
_PLACE_WORDS: Mapping[str, str] = {"locker": "a parcel locker", "counter": "a collection counter"}


def decide_on_pickup_choice(
    *,
    choice: PickupChoice,
    state: str,
    next_action: str | None,
    last_reason: str | None,
    attempts: int,
    asked_before: bool,
    locker_ok: bool,
    needs_signature: bool,
    size: str,
    stop_lat: float,
    stop_lon: float,
    sites: Sequence[LockerSite],
    max_locker_km: float = DEFAULT_MAX_LOCKER_KM,
) -> tuple[NextAction, float]:
    """The customer chose to collect the parcel at a locker or a counter (rule 7): a
    ``locker`` action naming the site and its distance from the address in km, or
    :class:`RequestDeclined` saying why not, in the customer's words."""
    place = _PLACE_WORDS[choice]
    if state not in _CHOOSABLE or attempts < 1:
        said = _NOT_REDELIVERABLE.get(state, f"the parcel is {state.replace('_', ' ')}")
        if state == "at_depot":
            said = "the parcel is still to go out for its first delivery"
        elif state == "hold_expired":
            said = "the time to collect it from the locker ran out"
        raise RequestDeclined(f"{said}, so it cannot go to {place} now")
    if asked_before:
        raise RequestDeclined("you have chosen where to collect it already")
    at_once = RETURN_AT_ONCE.get(last_reason or "")
    if at_once is not None:
        raise RequestDeclined(f"{at_once}, so it cannot go to {place}")
    if next_action == "locker":
        raise RequestDeclined("the parcel is on its way to be collected elsewhere already")
    if choice == "locker":
        if not locker_ok:
            raise RequestDeclined("the sender does not allow a parcel locker for this parcel")
        if needs_signature:
            raise RequestDeclined(
                "this parcel must be signed for, and a locker hands it out for a code alone"
            )
        lockers = [s for s in sites if s.room is None]
        max_km = max_locker_km
        none_left = (
            f"no parcel locker within {max_locker_km:g} km of your address has room for it now"
        )
    else:
        lockers = [s for s in sites if s.room is not None]
        max_km = float("inf")  # the customer chose to go there
        none_left = "no collection counter has room for it now"
    if not lockers:
        raise RequestDeclined(f"there is no {place.removeprefix('a ')} to send it to")
    _require_size(size)
    found = _nearest_fitting_locker(size, stop_lat, stop_lon, lockers, frozenset(), max_km)
    if found is None:
        raise RequestDeclined(none_left)
    site, km = found
    action = NextAction(
        "locker",
        site.name,
        f"the customer chose to collect it at the {choice} {site.name}, {km:.1f} km from the "
        f"address (attempt {attempts} missed)",
    )
    return action, km


def nearest_locker(
    size: str,
    lat: float,
    lon: float,
    lockers: Sequence[LockerSite],
    *,
    max_locker_km: float = DEFAULT_MAX_LOCKER_KM,
) -> tuple[str, float] | None:
    """The locker rule 3a would choose for a parcel of `size` at (`lat`, `lon`), and its
    distance in km; None when no locker within `max_locker_km` has a fitting free
    compartment. The depot's planning asks it for a parcel whose customer wants a locker
    instead of the door, so both choose a locker the same way."""
    _require_size(size)
    found = _nearest_fitting_locker(size, lat, lon, lockers, frozenset(), max_locker_km)
    return None if found is None else (found[0].name, found[1])


def _require_size(size: str) -> None:
    if size not in LOCKER_SIZES:
        raise PolicyError(f"parcel size {size!r} is not one of {', '.join(LOCKER_SIZES)}")


def _nearest_fitting_locker(
    size: str,
    lat: float,
    lon: float,
    lockers: Sequence[LockerSite],
    tried: frozenset[str],
    max_km: float,
) -> tuple[LockerSite, float] | None:
    candidates: list[tuple[float, str, LockerSite]] = []
    for site in lockers:
        if site.name in tried:
            continue
        if site.room is not None:
            if site.room <= 0:  # a counter takes any size while it has room
                continue
        elif not any(n > 0 and fits(size, s) for s, n in site.free.items()):
            continue
        km = distance_m(lat, lon, site.lat, site.lon) / 1000.0
        if km <= max_km:
            candidates.append((km, site.name, site))
    if not candidates:
        return None
    km, _, site = min(candidates, key=lambda c: (c[0], c[1]))
    return site, km
