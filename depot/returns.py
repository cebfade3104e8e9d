"""Customers' returns (the reverse leg): booking, the return code, each step told to the merchant.

A merchant (the API) or the customer (the tracking page of a delivered parcel) books a return
of a delivered parcel. The depot then:

- names the return with a parcel id of its own: an S10 `RT` + 8 random digits + check digit +
  the original's S10 country (`NL` when the original is not an S10), which every scanner and
  `parcel.identify` take like any label. It is a parcel in the book (state `return_booked`,
  next action `return_to_sender`), so the van's and the locker's events about it are applied
  like any other's, and it is never planned for delivery;
- chooses the locker: the one asked for, else the nearest locker to the original's address
  with a free compartment of the return's size (`depot.policy.nearest_locker`);
- draws the code (`sync.return_codes`: 8 digits and a QR) under that locker's return salt,
  never equal to another return's still open there, sends the locker only its hashes
  (`expect_return`, signed, valid `RETURN_DAYS`), and keeps the code sealed to the depot's own
  sealing key: the customer's notice carries it sealed at rest and opened when sent
  (`open_return_section`, in the outbox's render hook, as the pickup code is);
- tells the merchant `return_booked`, and the customer the code and its QR.

The locker's `return_dropped` makes the return `return_dropped` (in a compartment); the depot
plans its collection like an expired hold's (`depot.store.collections`), and tells the merchant
`return_dropped` and the customer a receipt. The courier's `#2` takes it out (the locker's
`parcel_returned`: `returning`, merchant told `return_collected`), and the van's return scan
at the depot ends it like every return to sender: `returned_to_sender` (final; the depot hands
it to the merchant's returns), merchant told `return_at_depot`.

A return may instead be handed to the courier at the door (`handover="door"`, the customer's
page's second choice, or the API's): no locker and no code. The return's id is its label
(the page shows it, with a QR of it, to print or write on the parcel). `DepotService` plans
its pickup on the next round that passes the original's address (`pickups` of an address
stop, `plan_pickup` records which round); the van's `return_collected_at_door` makes it
`returning` (merchant told `return_collected`, the customer a receipt), and the evening's
return scan ends it at the depot as above. A door return no courier took is planned again
on every next day's round until one does. When the courier called and could not take it
(the van's `return_pickup_missed`: nobody in, not packed), the merchant and the customer are
told `return_pickup_missed` (the reason, and that a next round picks it up), once per such
event, and only while it still waits at the door: a courier who took it after all (the
customer came running) makes that news stale.

Must never: store, log or send to a merchant a return code in plaintext (the booking's answer
is to whoever booked it: the customer, or the merchant's returns desk acting for them), book
two returns of one parcel, or book a return of a parcel not delivered.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import segno

from depot.config import DepotConfig, LockerSiteConfig
from depot.errors import DepotError
from depot.keys import DepotKeys
from depot.pickup import QR_ERROR, QR_SCALE
from depot.policy import LockerSite, PolicyError, nearest_locker
from depot.store import Conn, DepotDatabase, book
from depot.store import returns as rows
from depot.tracking import ParcelBook, iso_utc
from depot.webhooks import enqueue
from parcel.identify import Rejection, identify, s10_check_digit
from sync.clock import Clock
from sync.return_codes import (
    RETURN_CODE_PURPOSE,
    IssuedReturnCode,
    issue_return_code,
    new_salt,
    salt_from_text,
    salt_text,
)
from sync.signing import SealError, associated_data, public_raw, seal, unseal
from sync.wire import COMMAND_SIZES

__all__ = [
    "HANDOVERS",
    "RETURNABLE",
    "RETURN_CODE",
    "RETURN_DAYS",
    "BookedReturn",
    "ReturnDesk",
    "ReturnOnPage",
    "ReturnRefused",
    "has_return_section",
    "open_return_code",
    "open_return_section",
    "return_on_page",
]

log = logging.getLogger(__name__)

RETURN_DAYS = 14  # the code opens a door this long; a locker takes at most 14 days (wire)
RETURN_SERVICE = "RT"  # the S10 service indicator of the depot's own return ids
RETURNABLE = frozenset({"delivered", "picked_up"})  # a return is of a parcel the customer has
RETURN_CODE = "return_code"  # a customer's notice's key for the code: sealed at rest
HANDOVERS = ("locker", "door")  # into a locker with a code; to the courier at the door
_NEEDLE = b'"' + RETURN_CODE.encode() + b'":{'
_DAY_NS = 86_400 * 10**9


class ReturnRefused(DepotError):
    """The depot will not book this return (said to whoever asked); `status` is the HTTP
    answer: 404 unknown parcel, 409 not returnable or booked before, 400 a bad size or
    locker, 503 the depot cannot (no locker, no key)."""

    def __init__(self, message: str, *, status: int = 409, existing: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.existing = existing


@dataclass(frozen=True, repr=False)
class BookedReturn:
    """A booked return, with its code for whoever booked it (never stored in plaintext).

    A door return (`handover == "door"`) has no locker and no code: its id is its label."""

    return_id: str
    original: str
    locker: str | None
    size: str
    until_ns: int
    code: str | None
    qr_text: str | None
    handover: str = "locker"

    def __repr__(self) -> str:
        where = f"at {self.locker}" if self.locker else "at the door"
        return f"BookedReturn({self.return_id} of {self.original} {where})"

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "return": self.return_id,
            "parcel": self.original,
            "handover": self.handover,
            "size": self.size,
            "until": iso_utc(self.until_ns),
        }
        if self.handover == "locker":
            doc.update(locker=self.locker, return_code=self.code, qr_text=self.qr_text)
        return doc


class ReturnDesk:
    """The depot's returns: books them, and reacts to their steps (`DepotService` calls)."""

    def __init__(
        self,
        *,
        config: DepotConfig,
        database: DepotDatabase,
        book: ParcelBook,
        keys: DepotKeys,
        clock: Clock,
        send_command: Callable[[str, str, Mapping[str, Any]], str],
        locker_sites: Callable[[], list[LockerSite]],
    ) -> None:
        self._config = config
        self._database = database
        self._book = book
        self._keys = keys
        self._clock = clock
        self._send_command = send_command
        self._locker_sites = locker_sites

    # --- booking -------------------------------------------------------------------------------

    def book(
        self,
        original: str,
        *,
        by: str,
        size: str | None = None,
        locker: str | None = None,
        merchant: str | None = None,
        handover: str = "locker",
    ) -> BookedReturn:
        """Book the return of the delivered parcel `original` (ReturnRefused says why not).

        `merchant`, when given (an API caller naming itself), must be the parcel's merchant.
        `handover`: `locker` (a code for the locker chosen) or `door` (the courier takes it at
        the original's address; no locker, no code)."""
        if handover not in HANDOVERS:
            raise ReturnRefused(f"handover must be one of {', '.join(HANDOVERS)}", status=400)
        if handover == "door" and locker is not None:
            raise ReturnRefused("a return handed to the courier goes to no locker", status=400)
        info = self._book.parcel(original)
        if info is None:
            raise ReturnRefused(f"unknown parcel {original!r}", status=404)
        record = info.get("record") or {}
        if merchant is not None and merchant != info.get("merchant"):
            raise ReturnRefused(f"parcel {original} is not {merchant}'s", status=404)
        if info.get("state") not in RETURNABLE:
            state = str(info.get("state")).replace("_", " ")
            raise ReturnRefused(f"only a delivered parcel can be returned; {original} is {state}")
        size = size or str(record.get("size") or "S")
        if size not in COMMAND_SIZES:
            raise ReturnRefused(f"size must be one of {', '.join(COMMAND_SIZES)}", status=400)
        if handover == "door":
            if not isinstance(record.get("lat"), int | float) or not record.get("address"):
                raise ReturnRefused(
                    f"no address of {original} is known for a courier to call at", status=409
                )
            return self._book_door(original, info, size, by)
        if not self._keys.sealing:
            raise ReturnRefused("this depot has no credential-sealing key", status=503)
        site = self._choose_locker(locker, size, record)
        now = self._clock.wall_ns()
        until = now + RETURN_DAYS * _DAY_NS
        with self._database.transaction() as conn:
            return_id = self._new_return(conn, original)
            salt = salt_from_text(rows.locker_salt(conn, site.name, salt_text(new_salt())))
            taken = rows.open_code_hashes(conn, site.name, now)
            issued = issue_return_code(salt)
            while issued.code_hash in taken:  # two returns at one locker never share a code
                issued = issue_return_code(salt)
            ret = self._record(
                conn,
                return_id,
                original,
                info,
                size=size,
                by=by,
                now=now,
                until=until,
                locker=site.name,
                code_hash=issued.code_hash,
                sealed_code=self._seal(issued, site.name, return_id),
            )
            self._send_command(
                site.name,
                "expect_return",
                {
                    "parcel": return_id,
                    "size": size,
                    "salt": salt_text(salt),
                    "code_hash": issued.code_hash,
                    "qr_hash": issued.qr_hash,
                    "hours": float(RETURN_DAYS * 24),
                },
            )
            self._tell(conn, ret, "return_booked", now, site=site, with_code=True)
        log.info("return %s of %s booked by %s at %s", return_id, original, by, site.name)
        return BookedReturn(
            return_id, original, site.name, size, until, issued.code, issued.qr_text
        )

    def _book_door(
        self, original: str, info: Mapping[str, Any], size: str, by: str
    ) -> BookedReturn:
        """A return the customer hands to the courier at the original's address: the row
        (no locker, no code), the book's parcel, the merchant and the customer told, in one
        transaction. `DepotService` then plans its pickup."""
        now = self._clock.wall_ns()
        until = now + RETURN_DAYS * _DAY_NS
        with self._database.transaction() as conn:
            return_id = self._new_return(conn, original)
            ret = self._record(
                conn, return_id, original, info, size=size, by=by, now=now, until=until
            )
            self._tell(conn, ret, "return_booked", now, site=None)
        log.info("return %s of %s booked by %s, to be picked up at the door", return_id,
                 original, by)
        return BookedReturn(return_id, original, None, size, until, None, None, "door")

    def _new_return(self, conn: Conn, original: str) -> str:
        """A new return id for `original`, refused when a return of it was booked before
        (the parcel locked first: the page and the shop's desk may book it at once)."""
        self._database.lock_parcel(conn, original)
        found = rows.find_for(conn, original)
        if found is not None:
            raise ReturnRefused(
                f"a return of {original} was booked before ({found['return_id']})",
                existing=str(found["return_id"]),
            )
        return self._new_id(conn, original)

    def _record(
        self,
        conn: Conn,
        return_id: str,
        original: str,
        info: Mapping[str, Any],
        *,
        size: str,
        by: str,
        now: int,
        until: int,
        locker: str | None = None,
        code_hash: str = "",
        sealed_code: str | None = None,
    ) -> dict[str, Any]:
        """Store a booked return of `original` (`info`: its book entry): its row (into
        `locker` with a code, or for the door when `locker` is None) and its parcel in the
        book (`return_booked`); the stored row."""
        handover = "door" if locker is None else "locker"
        rows.insert(
            conn,
            return_id=return_id,
            original=original,
            merchant=info.get("merchant"),
            size=size,
            locker=locker or "",
            code_hash=code_hash,
            sealed_code=sealed_code,
            booked_by=by,
            booked_ns=now,
            until_ns=until,
            webhook=info.get("webhook"),
            customer_webhook=info.get("customer_webhook"),
            handover=handover,
        )
        where = {"handover": "door"} if locker is None else {"locker": locker}
        self._book.book_return(
            {
                "id": return_id,
                "raw": return_id,
                "kind": "s10",
                "merchant": info.get("merchant"),
                "size": size,
                "return_of": original,
            },
            now_ns=now,
            details={"return_of": original, **where, "by": by},
        )
        ret = rows.find(conn, return_id)
        assert ret is not None
        return ret

    def door_pickups(self) -> list[dict[str, Any]]:
        """Door returns no courier has taken yet, each with its original's record (`record`:
        where to call), oldest first: `DepotService` puts them on rounds."""
        with self._database.reading() as conn:
            open_ = rows.open_door_pickups(conn)
        out = []
        for ret in open_:
            info = self._book.parcel(str(ret["original"])) or {}
            out.append({**ret, "record": info.get("record") or {}})
        return out

    def pickup_planned(self, return_id: str, van: str, day: str) -> None:
        """A manifest of `van` for `day` lists the door return's pickup (the page says when)."""
        with self._database.transaction() as conn:
            rows.plan_pickup(conn, return_id, van, day)

    def _choose_locker(
        self, asked: str | None, size: str, record: Mapping[str, Any]
    ) -> LockerSiteConfig:
        sites = {s.name: s for s in self._config.lockers if s.kind == "locker"}
        if asked is not None:
            if asked not in sites:
                raise ReturnRefused(f"{asked!r} is not one of this depot's lockers", status=400)
            fits = [s for s, n in sites[asked].compartments.items() if n > 0]
            if not any(COMMAND_SIZES.index(s) >= COMMAND_SIZES.index(size) for s in fits):
                raise ReturnRefused(f"{asked} has no compartment of size {size}", status=400)
            return sites[asked]
        lat = record.get("lat", self._config.lat)
        lon = record.get("lon", self._config.lon)
        free = [s for s in self._locker_sites() if s.name in sites]
        try:
            found = nearest_locker(
                size, float(lat), float(lon), free, max_locker_km=self._config.max_locker_km
            )
        except (PolicyError, TypeError, ValueError):
            found = None
        if found is None:
            raise ReturnRefused(
                f"no locker near the parcel's address has a free compartment of size {size}",
                status=503,
            )
        return sites[found[0]]

    @staticmethod
    def _new_id(conn: Conn, original: str) -> str:
        country = "NL"
        try:
            parsed = identify(original)
            if parsed.kind == "s10":
                country = original[-2:]
        except Rejection:
            pass
        while True:
            serial = f"{secrets.randbelow(10**8):08d}"
            return_id = f"{RETURN_SERVICE}{serial}{s10_check_digit(serial)}{country}"
            if not rows.id_taken(conn, return_id):
                return return_id

    def _seal(self, issued: IssuedReturnCode, locker: str, return_id: str) -> str:
        body = json.dumps({"code": issued.code, "qr": issued.qr_text}, sort_keys=True)
        bound = associated_data(RETURN_CODE_PURPOSE, locker, return_id)
        return seal(public_raw(self._keys.sealing[0]), body.encode(), bound)

    # --- its steps -----------------------------------------------------------------------------

    def step(self, return_id: str, step: str) -> bool:
        """The return reached `step` (dropped, collected, at_depot): recorded and told, once;
        False for a parcel that is no return (an expired hold collected, say)."""
        now = self._clock.wall_ns()
        with self._database.transaction() as conn:
            ret = rows.find(conn, return_id)
            if ret is None:
                return False
            if not rows.mark_step(conn, return_id, step, now):
                return True
            sites = {s.name: s for s in self._config.lockers}
            self._tell(conn, ret, f"return_{step}", now, site=sites.get(str(ret["locker"])))
        return True

    def pickup_missed(self, return_id: str, event: str, details: Mapping[str, Any]) -> bool:
        """A courier could not take the door return `return_id` (the van's event `event`,
        its timeline `details`: reason, day): the merchant and the customer told once per
        event (the event's id is in the notices' ids, so a replay adds nothing and a miss on
        another day is news again). Nothing is told when the return is no longer waiting at
        the door (taken after all, or back at the depot). False for a parcel that is no
        return."""
        now = self._clock.wall_ns()
        with self._database.transaction() as conn:
            ret = rows.find(conn, return_id)
            if ret is None:
                return False
            waiting = ret.get("collected_ns") is None and ret.get("at_depot_ns") is None
            if not waiting or book.state_of(conn, return_id) != "return_booked":
                return True
            reason = str(details.get("reason") or "")
            said = {
                "reason": reason or None,
                "reason_text": details.get("reason_text"),
                "day": details.get("day"),
                "words": _missed_words(details.get("reason_text")),
            }
            self._tell(
                conn, ret, "return_pickup_missed", now, site=None, occurrence=event, said=said
            )
        return True

    def counts(self) -> dict[str, int]:
        """`customer_returns` of the simulated day: booked, dropped, collected, at_depot."""
        with self._database.reading() as conn:
            return rows.counts(conn)

    def _tell(
        self,
        conn: Conn,
        ret: Mapping[str, Any],
        event: str,
        now: int,
        *,
        site: LockerSiteConfig | None,
        with_code: bool = False,
        occurrence: str | None = None,
        said: Mapping[str, Any] | None = None,
    ) -> None:
        """The merchant's webhook for every step; the customer's notice at booking (with the
        code, sealed) and at the drop (the receipt): for a door return, at booking (its id,
        the label), when the courier called and could not take it, and when the courier took
        it (the receipt). A step that may happen more than once (a missed pickup) names its
        `occurrence` (the van's event id) in the notices' ids, so each is told once; `said`
        adds its facts to the body."""
        return_id = str(ret["return_id"])
        body: dict[str, Any] = {
            "event": event,
            "return": return_id,
            "parcel": str(ret["original"]),
            "merchant": ret["merchant"],
            "at": iso_utc(now),
            "handover": ret.get("handover") or "locker",
            "locker": ret["locker"] or None,
        }
        if site is not None:
            body["locker_name"] = site.title or site.name
            if site.address:
                body["locker_address"] = site.address
        if event == "return_booked":
            body["size"] = ret["size"]
            body["until"] = iso_utc(int(ret["until_ns"]))
        body.update(said or {})
        once = f"{event}:{occurrence}" if occurrence else event
        merchant_url = ret.get("webhook")
        if merchant_url:
            event_id = f"return:{return_id}:{once}:merchant"
            enqueue(
                conn,
                event_id=event_id,
                url=str(merchant_url),
                body={"event_id": event_id, **body},
                key_id=str(ret["merchant"] or ""),
                now_ns=now,
            )
        customer_url = ret.get("customer_webhook")
        # The customer's receipt: the locker's drop, or the courier's pickup at the door.
        receipt = "return_collected" if ret.get("handover") == "door" else "return_dropped"
        if customer_url and event in ("return_booked", receipt, "return_pickup_missed"):
            event_id = f"return:{return_id}:{once}:customer"
            doc = {"event_id": event_id, **body}
            if with_code and ret.get("sealed_code"):
                doc[RETURN_CODE] = {
                    "sealed": ret["sealed_code"],
                    "locker": ret["locker"],
                    "return": return_id,
                }
            enqueue(
                conn, event_id=event_id, url=str(customer_url), body=doc, key_id="customer",
                now_ns=now,
            )


def _missed_words(reason_text: object) -> str:
    """A missed door pickup in the customer's words (their notice and their page)."""
    why = f" ({reason_text})" if isinstance(reason_text, str) and reason_text else ""
    return (
        f"Our courier called for your return but could not take it{why}; "
        "it will be picked up on a next round"
    )


def open_return_section(keys: DepotKeys, doc: dict[str, Any]) -> bool:
    """At a send attempt: replace a customer notice's sealed return code with the code, the
    QR's text and the QR as a PNG (segno, as the pickup notice's); True when it did. Part of
    the outbox's render hook (`depot.customer.NoticeRenderer`); a code no key opens raises,
    so the row waits (its bytes must be the same at every attempt)."""
    section = doc.get(RETURN_CODE)
    if not isinstance(section, dict) or "sealed" not in section:
        return False
    code, qr_text = open_return_code(
        keys, str(section["sealed"]), locker=str(section.get("locker")),
        return_id=str(section.get("return")),
    )
    qr = segno.make(qr_text, error=QR_ERROR)
    doc[RETURN_CODE] = {
        "code": code,
        "qr_text": qr_text,
        "qr_png": qr.png_data_uri(scale=QR_SCALE),
    }
    return True


def open_return_code(
    keys: DepotKeys, sealed: str, *, locker: str, return_id: str
) -> tuple[str, str]:
    """The code and QR text sealed for `return_id` at `locker` (the notice and the customer's
    page both open it this way); ReturnRefused (503) when no sealing key of the depot does."""
    bound = associated_data(RETURN_CODE_PURPOSE, locker, return_id)
    for key in keys.sealing:
        try:
            opened = json.loads(unseal(key, sealed, bound))
        except SealError:
            continue
        return str(opened["code"]), str(opened["qr"])
    raise ReturnRefused("no sealing key of the depot opens this return code", status=503)


@dataclass(frozen=True, repr=False)
class ReturnOnPage:
    """A parcel's return as its customer's page shows it. `code` and `qr_svg` only while a
    locker return waits to be dropped; `label_svg` (a QR of the return's id) only while a door
    return waits for the courier; `pickup_day` the day of the round that lists its pickup
    (None: the next delivery day's plan takes it, as after a courier missed it there)."""

    return_id: str
    handover: str
    state: str
    words: str
    locker_name: str | None = None
    locker_address: str | None = None
    until: str | None = None  # ISO UTC: the code opens a door until then
    code: str | None = None
    qr_svg: str | None = None
    label_svg: str | None = None
    pickup_day: str | None = None

    def __repr__(self) -> str:
        return f"ReturnOnPage({self.return_id}, {self.handover}, {self.state})"


_RETURN_WORDS = {
    "return_booked": "Return booked",
    "return_dropped": "Your return is in the locker; a courier collects it",
    "returning": "Your return is with our courier, on its way to the sender",
    "returned_to_sender": "Your return is back at the depot and handed to the sender",
}


def return_on_page(
    conn: Conn,
    keys: DepotKeys,
    original: str,
    sites: Mapping[str, LockerSiteConfig],
) -> ReturnOnPage | None:
    """The return of `original` for its customer's page (None when none is booked). The code
    is opened from its sealed copy at each view, as the pickup code is (when no key of the
    depot's opens it, the page says the notice has it)."""
    ret = rows.find_for(conn, original)
    if ret is None:
        return None
    return_id = str(ret["return_id"])
    handover = str(ret.get("handover") or "locker")
    state = book.state_of(conn, return_id) or "return_booked"
    words = _RETURN_WORDS.get(state, state.replace("_", " "))
    if handover == "door":
        label = None
        pickup_day = str(ret["pickup_day"]) if ret.get("pickup_day") else None
        if state == "return_booked":
            words = "Return booked: a courier collects it at your door"
            missed = _missed_since_plan(conn, return_id, pickup_day)
            if missed is not None:
                # The round that listed it has called: the next day's plan takes it again.
                words = f"Return booked: our courier called but could not take it ({missed})"
                pickup_day = None
            label = segno.make(return_id, error=QR_ERROR).svg_inline(
                scale=QR_SCALE, omitsize=True
            )
        return ReturnOnPage(
            return_id, handover, state, words, label_svg=label, pickup_day=pickup_day
        )
    site = sites.get(str(ret["locker"]))
    code = qr_svg = None
    if state == "return_booked" and ret.get("sealed_code"):
        words = "Return booked: drop it at the locker with your code"
        try:
            code, qr_text = open_return_code(
                keys, str(ret["sealed_code"]), locker=str(ret["locker"]), return_id=return_id
            )
        except ReturnRefused:  # the depot lost the key: the customer's notice has the code
            log.warning("return %s: no sealing key opens its code for the page", return_id)
            words = "Return booked: drop it at the locker with the code in your notice"
        else:
            qr_svg = segno.make(qr_text, error=QR_ERROR).svg_inline(
                scale=QR_SCALE, omitsize=True
            )
    return ReturnOnPage(
        return_id,
        handover,
        state,
        words,
        locker_name=(site.title or site.name) if site is not None else str(ret["locker"]),
        locker_address=(site.address or None) if site is not None else None,
        until=iso_utc(int(ret["until_ns"])),
        code=code,
        qr_svg=qr_svg,
    )


def _missed_since_plan(conn: Conn, return_id: str, pickup_day: str | None) -> str | None:
    """The reason's words of the courier's last missed pickup of a door return when it was
    on the round of `pickup_day` (the latest plan) or later, else None (never missed, or
    planned again since). A miss whose round's day the depot did not know counts as since."""
    for _at, _state, step, _device, details in reversed(book.timeline_of(conn, return_id)):
        if step != "pickup_missed":
            continue
        try:
            said = json.loads(str(details))
        except ValueError:
            said = {}
        said = said if isinstance(said, dict) else {}
        day = said.get("day")
        if pickup_day is not None and isinstance(day, str) and day < pickup_day:
            return None
        return str(said.get("reason_text") or "nobody could hand it over")
    return None


def has_return_section(stored: bytes) -> bool:
    """Whether a stored notice may carry a sealed return code (the render hook's quick test)."""
    return _NEEDLE in stored
