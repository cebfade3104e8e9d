"""The customer's tracking link: its token, and everything the customer's page shows.

Every notice to a customer carries `tracking_url` = `{public_url}/t/{token}` (the path alone
without a public URL): the outbox row holds only the link's digest, and the URL is made at
each send attempt (`NoticeRenderer`, as the pickup code is), so the token is in no table. The page
behind it (`depot.web`) asks this module what to show (`customer_view`) and hands the
customer's requests to the depot service (`DepotService.customer_extend`,
`DepotService.customer_redeliver`, `DepotService.customer_preferences`), which decide them
with the depot's own rules.

Delivery preferences: the page shows the parcel's care (`depot.preferences.care_of`) and,
while a door delivery may still come (`depot.preferences.CHANGEABLE_STATES`), lets the
customer change their part of it: a safe place and where, a neighbour, a locker instead. The
merchant's signature and age check are shown, never offered for change.

After a missed delivery: the page offers delivery again (`customer_redeliver`), or
collection from a parcel locker or a staffed counter instead (`DepotService.customer_to_locker`,
`customer_to_counter`; `pickup_choice` applies the policy's rule 7,
`depot.policy.decide_on_pickup_choice`), each with the site it would be and only when the rule
allows it. Once the parcel is bound for a locker or counter (the customer's choice or the
policy's own), the page shows where to collect it instead of the choices.

Returns: the page of a delivered (or picked-up) parcel offers its return
(`DepotService.customer_return`: into the nearest locker with room, or to a courier at the
door); once booked it shows the return (`depot.returns.return_on_page`): the locker, the code
and its QR opened from their sealed copy while the return waits to be dropped, or the day a
courier calls and a QR of the return's id to print as its label.

The token is an HMAC of the parcel id under a key derived from the depot's newest sealing key
(as the extend-hold link's, `depot.pickup`, with its own context), 192 bits, base64url. It is
the same in every notice of a parcel (a notice re-made, another worker: no state to share),
and the database keeps only its SHA-256 -> parcel (`depot.store.links`), because the page must
find the parcel from the token alone: an HMAC cannot be inverted, and a parcel id in the URL
would tell a finder whose parcel it is. A reader of the database can therefore rebuild no
link, and the page shows the pickup code only by opening the locker's sealed credential with
the depot's keys at the moment it is asked (`depot.pickup.open_pickup`), as the pickup notice
does. After a rotation of the sealing key a parcel's next notice carries a new token; the
stored digests keep the earlier links working.

"Expiring with the parcel": a link works while the parcel's journey is open and for
`LINK_DAYS_AFTER_FINAL` days after it reached a final state (delivered, picked up, returned to
sender; the time of that timeline entry), so a customer can still see how it ended. After
that the page says it has expired and shows nothing else (`CustomerView.expired`), and no
request is taken.

Must never: store or log a token or a pickup code, show a code for a parcel that is not
waiting in its locker, or show what the merchant or the courier recorded beyond plain words
(no proof-of-delivery fixes, no photos, no recipient's name or address: whoever holds the
link sees the page; a neighbour's address is shown, as in the notice, since the parcel is
fetched there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depot.config import LockerSiteConfig
from depot.errors import DepotError
from depot.keys import DepotKeys
from depot.pickup import (
    PICKUP_NEEDLE,
    ExtendRefused,
    extend_refusal,
    open_pickup,
    open_pickup_section,
)
from depot.policy import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_LOCKER_KM,
    NextAction,
    PickupChoice,
    PolicyError,
    RequestDeclined,
    decide_on_pickup_choice,
    decide_on_redelivery_request,
    free_sites,
)
from depot.preferences import (
    PreferencesRefused,
    care_of,
    change_refusal,
    locker_instead_refusal,
)
from depot.returns import (
    RETURNABLE,
    ReturnOnPage,
    ReturnRefused,
    has_return_section,
    open_return_section,
    return_on_page,
)
from depot.store import Conn, book, links
from depot.tracking import (
    CUSTOMER_DEVICE,
    FINAL_STATES,
    REASON_TEXT,
    REQUEST_STEP,
    iso_utc,
    told_deposit,
)
from parcel.care import Care

__all__ = [
    "EXTEND",
    "LINK_DAYS_AFTER_FINAL",
    "PICKUP_REQUESTS",
    "PREFERENCES",
    "REDELIVER",
    "REFUSALS",
    "STATE_WORDS",
    "TO_COUNTER",
    "TO_LOCKER",
    "TRACKING_URL",
    "CustomerView",
    "LinkExpired",
    "NoticeRenderer",
    "PickupOffer",
    "RequestDeclined",
    "TimelineLine",
    "UnknownLink",
    "customer_view",
    "find_link",
    "last_card",
    "link_at_rest",
    "link_digest",
    "pickup_choice",
    "record_link",
    "redelivery_decision",
    "tracking_path",
    "tracking_token",
    "tracking_url",
]

log = logging.getLogger(__name__)

LINK_DAYS_AFTER_FINAL = 14  # a link works this long after the journey ended, then says expired
_DAY_NS = 86_400 * 10**9
_TOKEN_CONTEXT = b"lastmile tracking link\0"
_TOKEN_BYTES = 24  # 192 bits: unguessable, 32 characters in a URL
TRACKING_URL = "tracking_url"  # the key of the link in a customer's notice
EXTEND = "extend_hold"  # the customer's two requests, as recorded in the timeline
REDELIVER = "redeliver"
PREFERENCES = "preferences_changed"  # the customer changed their delivery preferences
TO_LOCKER = "to_locker"  # after a missed delivery: collect it from a locker instead
TO_COUNTER = "to_counter"  # ... or from a staffed counter
PICKUP_REQUESTS: Mapping[PickupChoice, str] = {"locker": TO_LOCKER, "counter": TO_COUNTER}

#: The parcel's state in the customer's words (the page's headline).
STATE_WORDS: Mapping[str, str] = {
    "received": "Expected at the depot",
    "loaded": "On the delivery van",
    "out_for_delivery": "On its way",
    "attempted": "We missed you",
    "redirected": "On its way to a parcel locker",
    "in_locker": "Waiting for you in a parcel locker",
    "hold_expired": "No longer collectable from the locker",
    "returning": "On its way back to the sender",
    "at_depot": "At the depot",
    "return_booked": "Return booked: drop it at the locker with your code",
    "return_dropped": "Your return is in the locker; a courier collects it",
    "delivered": "Delivered",
    "picked_up": "Picked up",
    "returned_to_sender": "Returned to the sender",
}

#: Timeline steps in the customer's words; steps not named here are the depot's business.
_STEP_WORDS: Mapping[str, str] = {
    "loaded": "Loaded onto the delivery van",
    "out_for_delivery": "Out for delivery",
    "redirected": "On its way to a parcel locker",
    "in_locker": "Put in a parcel locker for you",
    "hold_extended": "The locker keeps it for you longer",
    "hold_expired": "The time to collect it from the locker ran out",
    "picked_up": "Picked up from the locker",
    "delivered": "Delivered",
    "collected_for_return": "Taken out of the locker by a courier",
    "returned_to_depot": "Back at the depot",
    "returned_to_sender": "Returned to the sender",
    "deferred": "Waiting at the depot for a later round",
}
_NEXT_ACTION_WORDS: Mapping[str, str] = {
    "second_attempt": "We will try again on the next round",
    "locker": "We will take it to a parcel locker near you",
    "return_to_sender": "It will go back to the sender",
    # planning could not have the locker the customer asked for (depot.service.plan_day)
    "door": "No parcel locker near you could take it, so we bring it to your door",
}
_REQUEST_WORDS: Mapping[str, str] = {
    EXTEND: "You asked for more time to collect it",
    REDELIVER: "You asked for delivery on the next day",
    PREFERENCES: "You changed your delivery preferences",
    TO_LOCKER: "You chose to collect it from a parcel locker",
    TO_COUNTER: "You chose to collect it at a collection counter",
}


class UnknownLink(DepotError):
    """No parcel has this tracking link (a mistyped or made-up token): the page says 404."""

    def __init__(self) -> None:
        super().__init__("this tracking link is not one the depot made")


class LinkExpired(DepotError):
    """The parcel's journey ended more than `LINK_DAYS_AFTER_FINAL` days ago."""

    def __init__(self) -> None:
        super().__init__("this tracking link has expired")


#: What the page may be told when a request is not taken (each message is for the customer).
REFUSALS = (
    UnknownLink, LinkExpired, ExtendRefused, RequestDeclined, PreferencesRefused, ReturnRefused
)


@dataclass(frozen=True)
class TimelineLine:
    """One line of the parcel's history for the customer: `at` (ISO UTC) and `at_ns` for the
    template to show in local time, `words`, and `hold_until` (ISO) where a hold begins or
    is extended."""

    at: str
    at_ns: int
    step: str
    words: str
    hold_until: str | None = None


@dataclass(frozen=True)
class PickupOffer:
    """Where the customer's choice sends the parcel: the site (`kind` "locker" or "counter"),
    its name and address for the customer, and its distance from the address in km."""

    kind: str
    site: str
    title: str
    address: str
    km: float


@dataclass(frozen=True)
class CustomerView:
    """Everything the customer's page shows. When `expired`, only `parcel`, `state` and
    `state_words` are filled in."""

    parcel: str
    state: str
    state_words: str
    expired: bool = False
    final: bool = False
    expires_ns: int | None = None  # when the link stops working (None: the journey is open)
    timeline: list[TimelineLine] = field(default_factory=list)  # newest first
    window: tuple[str, str] | None = None  # the delivery window, times of the delivery day
    eta: Any = None  # `depot.eta.parcel_eta`'s answer, when that module is there and has one
    locker: str | None = None
    locker_name: str | None = None
    locker_address: str | None = None
    compartment_size: str | None = None
    hold_until: str | None = None  # ISO UTC
    pickup_code: str | None = None  # only while the parcel waits in its locker
    pickup_qr_svg: str | None = None
    can_extend: bool = False
    extend_refused: str | None = None  # why not, in the customer's words
    can_redeliver: bool = False
    redeliver_refused: str | None = None
    care: Care | None = None  # the delivery preferences now (`depot.preferences.care_of`)
    can_change_care: bool = False
    care_refused: str | None = None  # why the preferences cannot be changed now
    locker_instead_refused: str | None = None  # why a locker instead is not offered
    # After a missed delivery: where each choice would send it, or why it is not offered
    # (None and None: not offered and nothing to say, e.g. no counter at this depot).
    locker_offer: PickupOffer | None = None
    locker_refused: str | None = None
    counter_offer: PickupOffer | None = None
    counter_refused: str | None = None
    site_kind: str | None = None  # `locker`'s kind: "locker" or "counter"
    # A return of the parcel (`depot.returns`): the one booked, or whether one may be.
    returned: ReturnOnPage | None = None
    can_return: bool = False

    def __repr__(self) -> str:
        """Without the code and its QR: a view that reaches a log line must not carry them."""
        return f"CustomerView(parcel={self.parcel!r}, state={self.state!r})"


# --- the token ---------------------------------------------------------------------------


def _tokens(keys: DepotKeys, parcel: str) -> list[str]:
    """`parcel`'s token under each of the depot's sealing keys, newest key first."""
    from cryptography.hazmat.primitives import serialization

    found = []
    for key in keys.sealing:
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        mac_key = hashlib.sha256(_TOKEN_CONTEXT + raw).digest()
        mac = hmac.new(mac_key, parcel.encode("utf-8"), hashlib.sha256).digest()
        found.append(base64.urlsafe_b64encode(mac[:_TOKEN_BYTES]).decode("ascii").rstrip("="))
    return found


def tracking_token(keys: DepotKeys, parcel: str) -> str | None:
    """`parcel`'s tracking token under the depot's newest sealing key (None: no sealing key,
    so no code could be shown either, and no link is given)."""
    found = _tokens(keys, parcel)
    return found[0] if found else None


def link_digest(token: str) -> str:
    """What the database keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tracking_path(token: str) -> str:
    return f"/t/{token}"


def tracking_url(base_url: str | None, token: str) -> str:
    """The link in a notice: `{base_url}/t/{token}`, or the path alone without a public URL."""
    return f"{base_url.rstrip('/')}{tracking_path(token)}" if base_url else tracking_path(token)


def record_link(conn: Conn, keys: DepotKeys, parcel: str, now_ns: int) -> str | None:
    """`parcel`'s token, its digest recorded (in the caller's transaction) so the page can
    find the parcel; None without a sealing key."""
    token = tracking_token(keys, parcel)
    if token is not None:
        links.remember(conn, link_digest(token), parcel, now_ns)
    return token


def link_at_rest(
    conn: Conn, keys: DepotKeys, parcel: str, base_url: str | None, now_ns: int
) -> dict[str, str] | None:
    """What a customer's notice holds in the outbox for its `tracking_url`: the link's digest
    and the public URL, never the token (`NoticeRenderer` makes the URL at each attempt).
    The digest is recorded (the caller's transaction) so the page finds the parcel; None
    without a sealing key."""
    token = record_link(conn, keys, parcel, now_ns)
    if token is None:
        return None
    return {"digest": link_digest(token), "base": base_url or ""}


_LINK_NEEDLE = b'"tracking_url":{'


def _render_link(keys: DepotKeys, doc: dict[str, Any]) -> bool:
    """Replace `doc`'s link at rest with the URL; True when it did. The token is the one
    whose digest was recorded, under whichever sealing key made it, so every attempt sends
    the same bytes across a key rotation; with that key gone the notice goes without a link
    (the page could not be reached by it anyway)."""
    at_rest = doc.get(TRACKING_URL)
    if not isinstance(at_rest, dict):
        return False
    digest = str(at_rest.get("digest"))
    token = next(
        (t for t in _tokens(keys, str(doc.get("parcel"))) if link_digest(t) == digest), None
    )
    if token is None:
        log.warning(
            "notice %s: no sealing key makes its tracking link; sent without it",
            doc.get("event_id"),
        )
        del doc[TRACKING_URL]
    else:
        doc[TRACKING_URL] = tracking_url(str(at_rest.get("base") or "") or None, token)
    return True


class NoticeRenderer:
    """The webhook outbox's render hook for the depot's notices: at each send attempt, the
    customer's tracking link (`link_at_rest`) and the pickup credential
    (`depot.pickup.open_pickup_section`) are made from what the row holds at rest."""

    def __init__(self, keys: DepotKeys, encode: Callable[[Mapping[str, Any]], bytes]) -> None:
        """`encode(mapping) -> bytes` is the outbox's own body encoding (the same function that
        stored the row), so a rendered body is encoded exactly like every other."""
        self._keys = keys
        self._encode = encode

    def __call__(self, stored: bytes) -> bytes:
        returning = has_return_section(stored)  # a customer's return code (depot.returns)
        if _LINK_NEEDLE not in stored and PICKUP_NEEDLE not in stored and not returning:
            return stored  # most rows: sent as stored
        doc = json.loads(stored)
        if not isinstance(doc, dict):
            return stored
        linked = _render_link(self._keys, doc)
        opened = open_pickup_section(self._keys, doc)
        opened = open_return_section(self._keys, doc) or opened
        return self._encode(doc) if linked or opened else stored


@dataclass(frozen=True)
class Link:
    """A tracking link found: its parcel, and when it stops working (None: not yet known)."""

    parcel: str
    expires_ns: int | None

    def expired(self, now_ns: int) -> bool:
        return self.expires_ns is not None and now_ns >= self.expires_ns


def find_link(conn: Conn, token: str) -> Link:
    """The link `token` is, or UnknownLink."""
    if not token or len(token) > 100:
        raise UnknownLink()
    parcel = links.parcel_of(conn, link_digest(token))
    if parcel is None:
        raise UnknownLink()
    ended = next(
        (int(r[0]) for r in book.timeline_of(conn, parcel) if r[1] in FINAL_STATES), None
    )
    return Link(parcel, None if ended is None else ended + LINK_DAYS_AFTER_FINAL * _DAY_NS)


# --- the page ----------------------------------------------------------------------------


def _details(text: object) -> dict[str, Any]:
    try:
        doc = json.loads(str(text))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _words(step: str, details: Mapping[str, Any], sites: Mapping[str, LockerSiteConfig]) -> str:
    """One timeline entry in the customer's words, or "" for one they are not shown."""
    if "late" in details or step == "anomaly":
        return ""
    if step == "received":
        scanned = details.get("source") == "arrival_scan"
        return "Arrived at the depot" if scanned else "The sender told us it is coming"
    if step == "attempted":
        reason = str(details.get("reason") or "")
        words = f"We tried to deliver it: {REASON_TEXT.get(reason, reason.replace('_', ' '))}"
        return words + " (we left a card with a code)" if details.get("card") else words
    if step == "next_action":
        site = sites.get(str(details.get("locker")))
        if details.get("kind") == "locker" and site is not None and site.kind == "counter":
            return f"We will take it to {site.title or site.name}, a collection counter"
        return _NEXT_ACTION_WORDS.get(str(details.get("kind")), "")
    if step == REQUEST_STEP:
        return _REQUEST_WORDS.get(str(details.get("request")), "")
    if step == "in_locker":
        site = sites.get(str(details.get("locker")))
        where = (site.title or site.name) if site is not None else None
        words = f"Put in the locker at {where} for you" if where else _STEP_WORDS[step]
        if details.get("rerecorded"):
            words += " (a new pickup code: the earlier one no longer opens the door)"
        return words
    # Signed for: the signer's name is not shown (whoever holds the link sees the page).
    signed = isinstance(details.get("signature"), Mapping) and bool(details.get("signed_by"))
    if step == "delivered" and details.get("to") == "neighbour":
        # Where to fetch it: the customer's notice says the same.
        at = details.get("neighbour_address")
        words = f"Left with a neighbour at {at}" if isinstance(at, str) else "Left with a neighbour"
        return words + " (signed for)" if signed else words
    if step == "delivered" and details.get("to") == "safe_place":
        return "Delivered and left in a safe place"
    if step == "delivered" and signed:
        return "Delivered and signed for"
    return _STEP_WORDS.get(step, "")


def _timeline(
    conn: Conn, parcel: str, sites: Mapping[str, LockerSiteConfig]
) -> tuple[list[TimelineLine], str | None]:
    """The customer's timeline, newest first, and the hold's end as last said."""
    lines: list[TimelineLine] = []
    hold_until: str | None = None
    for at_ns, _state, step, _device, text in book.timeline_of(conn, parcel):
        details = _details(text)
        until = details.get("hold_until") if step in ("in_locker", "hold_extended") else None
        if isinstance(until, str) and "late" not in details:
            hold_until = until
        words = _words(str(step), details, sites)
        if words:
            held = until if isinstance(until, str) else None
            lines.append(TimelineLine(iso_utc(int(at_ns)), int(at_ns), str(step), words, held))
    lines.reverse()
    return lines, hold_until


def _eta(conn: Conn, parcel: str, now_ns: int) -> Any:
    """`depot.eta.parcel_eta`, when that module is there (it is built beside this one)."""
    try:
        module = importlib.import_module("depot.eta")
    except ModuleNotFoundError as exc:
        if exc.name != "depot.eta":
            raise
        return None
    return module.parcel_eta(conn, parcel, now_ns)


def _requests(conn: Conn, parcel: str) -> set[str]:
    """The requests the customer has made for `parcel` (from its timeline)."""
    return {
        str(_details(r[4]).get("request"))
        for r in book.timeline_of(conn, parcel)
        if r[2] == REQUEST_STEP and r[3] == CUSTOMER_DEVICE
    }


def redelivery_decision(
    conn: Conn, parcel: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> NextAction:
    """What the policy says to a request for delivery on the next day for `parcel` now
    (RequestDeclined, said to the customer, when it does not grant it)."""
    info = book.parcel_row(conn, parcel)
    if info is None:
        raise UnknownLink()
    return decide_on_redelivery_request(
        state=str(info["state"]),
        next_action=info.get("next_action"),
        last_reason=info.get("last_reason"),
        attempts=int(info.get("attempts") or 0),
        asked_before=REDELIVER in _requests(conn, parcel),
        max_attempts=max_attempts,
    )


def pickup_choice(
    conn: Conn,
    parcel: str,
    choice: PickupChoice,
    *,
    lockers: Sequence[LockerSiteConfig],
    max_locker_km: float,
) -> tuple[NextAction, PickupOffer]:
    """What the policy says to the customer's choice of a locker or a counter for `parcel`
    now (rule 7, `depot.policy.decide_on_pickup_choice`), with the site it would be;
    RequestDeclined, said to the customer, when it does not grant it. The page and the
    service both ask this, so the page offers exactly what the service then grants."""
    info = book.parcel_row(conn, parcel)
    if info is None:
        raise UnknownLink()
    record = _details(info.get("record"))
    care = care_of(conn, parcel)
    busy: dict[str, dict[str, int]] = {}
    for locker, size, n in book.locker_occupancy(conn):
        busy.setdefault(str(locker), {})[str(size)] = int(n)
    asked = _requests(conn, parcel) & set(PICKUP_REQUESTS.values())
    try:
        decision, km = decide_on_pickup_choice(
            choice=choice,
            state=str(info["state"]),
            next_action=info.get("next_action"),
            last_reason=info.get("last_reason"),
            attempts=int(info.get("attempts") or 0),
            asked_before=bool(asked),
            locker_ok=bool(record.get("locker_ok", True)),
            needs_signature=care is not None and care.needs_signature,
            size=str(record.get("size", "S")),
            stop_lat=float(record["lat"]),
            stop_lon=float(record["lon"]),
            sites=free_sites(lockers, busy),
            max_locker_km=max_locker_km,
        )
    except (PolicyError, KeyError, TypeError, ValueError):  # no size or position on record
        raise RequestDeclined(f"we cannot place this parcel in a {choice}") from None
    site = next(s for s in lockers if s.name == decision.locker)
    offer = PickupOffer(choice, site.name, site.title or site.name, site.address, km)
    return decision, offer


def last_card(conn: Conn, parcel: str) -> str | None:
    """The code of the card the parcel's last failed attempt left (its timeline's newest
    `attempted` entry's `card`), or None when that attempt left none."""
    for row in reversed(book.timeline_of(conn, parcel)):
        if row[2] == "attempted" and "late" not in (details := _details(row[4])):
            card = details.get("card")
            return card if isinstance(card, str) and card else None
    return None


def _offers(
    conn: Conn, parcel: str, lockers: Sequence[LockerSiteConfig], max_locker_km: float
) -> dict[str, Any]:
    """The page's fields for the locker and counter choices (`CustomerView.locker_offer` ...):
    a choice the depot has no site for at all is neither offered nor explained."""
    fields: dict[str, Any] = {}
    choices: tuple[PickupChoice, ...] = ("locker", "counter")
    for choice in choices:
        if not any((s.kind == "counter") == (choice == "counter") for s in lockers):
            continue
        try:
            fields[f"{choice}_offer"] = pickup_choice(
                conn, parcel, choice, lockers=lockers, max_locker_km=max_locker_km
            )[1]
        except RequestDeclined as exc:
            fields[f"{choice}_refused"] = str(exc)
    return fields


def extend_decision(conn: Conn, parcel: str) -> str | None:
    """Why the customer may not extend the hold now (`depot.pickup.extend_refusal`), or None."""
    info = book.parcel_row(conn, parcel) or {}
    asked = book.commands_noted(conn, parcel, "extend_hold") > 0
    return extend_refusal(info.get("state"), asked_before=asked, locker=info.get("locker"))


def customer_view(
    conn: Conn,
    token: str,
    *,
    keys: DepotKeys,
    lockers: Sequence[LockerSiteConfig],
    now_ns: int,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    can_command: bool = True,
    max_locker_km: float = DEFAULT_MAX_LOCKER_KM,
) -> CustomerView:
    """What the page of `token` shows now (UnknownLink for a token no parcel has).

    `conn` may be a reader's own connection (an HTTP request's). `can_command`: the depot can
    sign locker commands (without a signing key no extension can be sent). A credential no
    key of the depot's opens raises `depot.keys.CredentialError`: the page cannot show the
    code, and saying so is better than a page without it.
    """
    link = find_link(conn, token)
    info = book.parcel_row(conn, link.parcel)
    if info is None:  # a link is recorded only for a parcel in the book, which keeps it
        raise UnknownLink()
    state = str(info["state"])
    words = STATE_WORDS.get(state, state.replace("_", " "))
    if link.expired(now_ns):
        return CustomerView(link.parcel, state, words, expired=True, final=True)
    sites = {site.name: site for site in lockers}
    timeline, hold_until = _timeline(conn, link.parcel, sites)
    window = json.loads(info["window"]) if info.get("window") else None
    locker = info.get("locker") if state in ("redirected", "in_locker", "hold_expired") else None
    if state in ("attempted", "at_depot") and info.get("next_action") == "locker":
        locker = info.get("locker")  # bound for a locker or counter: where to collect it
    site = sites.get(str(locker)) if locker else None
    code = qr = size = None
    if state == "in_locker" and locker:
        deposit = told_deposit(conn, link.parcel, str(locker))
        sealed = deposit.get("credential_for_depot") if deposit else None
        if deposit is not None and isinstance(deposit.get("size"), str):
            size = str(deposit["size"])
        if isinstance(sealed, str):
            pickup = open_pickup(keys, sealed, locker=str(locker), parcel=link.parcel)
            code, qr = pickup.code, pickup.qr_svg()
        if site is not None:
            words = f"Waiting for you in the locker at {site.title or site.name}"
    extend_no = extend_decision(conn, link.parcel)
    if extend_no is None and not can_command:
        extend_no = "the depot cannot send commands to lockers just now"
    try:
        redelivery_decision(conn, link.parcel, max_attempts=max_attempts)
        redeliver_no = None
    except RequestDeclined as exc:
        redeliver_no = str(exc)
    final = state in FINAL_STATES
    care = care_of(conn, link.parcel)
    care_no = change_refusal(state)
    returned = return_on_page(conn, keys, link.parcel, sites)
    offers = _offers(conn, link.parcel, lockers, max_locker_km) if can_command else {}
    return CustomerView(
        parcel=link.parcel,
        state=state,
        state_words=words,
        final=final,
        expires_ns=link.expires_ns,
        timeline=timeline,
        window=(str(window[0]), str(window[1])) if window else None,
        eta=None if final else _eta(conn, link.parcel, now_ns),
        locker=str(locker) if locker else None,
        locker_name=(site.title or site.name) if site is not None else None,
        locker_address=(site.address or None) if site is not None else None,
        compartment_size=size,
        hold_until=hold_until if state in ("in_locker", "hold_expired") else None,
        pickup_code=code,
        pickup_qr_svg=qr,
        can_extend=extend_no is None,
        extend_refused=extend_no,
        can_redeliver=redeliver_no is None,
        redeliver_refused=redeliver_no,
        care=care,
        can_change_care=care is not None and care_no is None,
        care_refused=care_no,
        locker_instead_refused=locker_instead_refusal(info, care) if care is not None else None,
        returned=returned,
        can_return=returned is None and state in RETURNABLE,
        site_kind=site.kind if site is not None else None,
        **offers,
    )
