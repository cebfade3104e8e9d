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
from depot.store import Conn, DepotDatabase
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
    "RETURNABLE",
    "RETURN_CODE",
    "RETURN_DAYS",
    "BookedReturn",
    "ReturnDesk",
    "ReturnRefused",
    "has_return_section",
    "open_return_section",
]

log = logging.getLogger(__name__)

RETURN_DAYS = 14  # the code opens a door this long; a locker takes at most 14 days (wire)
RETURN_SERVICE = "RT"  # the S10 service indicator of the depot's own return ids
RETURNABLE = frozenset({"delivered", "picked_up"})  # a return is of a parcel the customer has
RETURN_CODE = "return_code"  # a customer's notice's key for the code: sealed at rest
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
    """A booked return, with its code for whoever booked it (never stored in plaintext)."""

    return_id: str
    original: str
    locker: str
    size: str
    until_ns: int
    code: str
    qr_text: str

    def __repr__(self) -> str:
        return f"BookedReturn({self.return_id} of {self.original} at {self.locker})"

    def to_doc(self) -> dict[str, Any]:
        return {
            "return": self.return_id,
            "parcel": self.original,
            "locker": self.locker,
            "size": self.size,
            "until": iso_utc(self.until_ns),
            "return_code": self.code,
            "qr_text": self.qr_text,
        }


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
    ) -> BookedReturn:
        """Book the return of the delivered parcel `original` (ReturnRefused says why not).

        `merchant`, when given (an API caller naming itself), must be the parcel's merchant.
        """
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
        if not self._keys.sealing:
            raise ReturnRefused("this depot has no credential-sealing key", status=503)
        site = self._choose_locker(locker, size, record)
        now = self._clock.wall_ns()
        until = now + RETURN_DAYS * _DAY_NS
        with self._database.transaction() as conn:
            found = rows.find_for(conn, original)
            if found is not None:
                raise ReturnRefused(
                    f"a return of {original} was booked before ({found['return_id']})",
                    existing=str(found["return_id"]),
                )
            salt = salt_from_text(rows.locker_salt(conn, site.name, salt_text(new_salt())))
            taken = rows.open_code_hashes(conn, site.name, now)
            issued = issue_return_code(salt)
            while issued.code_hash in taken:  # two returns at one locker never share a code
                issued = issue_return_code(salt)
            return_id = self._new_id(conn, original)
            sealed = self._seal(issued, site.name, return_id)
            rows.insert(
                conn,
                return_id=return_id,
                original=original,
                merchant=info.get("merchant"),
                size=size,
                locker=site.name,
                code_hash=issued.code_hash,
                sealed_code=sealed,
                booked_by=by,
                booked_ns=now,
                until_ns=until,
                webhook=info.get("webhook"),
                customer_webhook=info.get("customer_webhook"),
            )
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
                details={"return_of": original, "locker": site.name, "by": by},
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
            ret = rows.find(conn, return_id)
            assert ret is not None
            self._tell(conn, ret, "return_booked", now, site=site, with_code=True)
        log.info("return %s of %s booked by %s at %s", return_id, original, by, site.name)
        return BookedReturn(
            return_id, original, site.name, size, until, issued.code, issued.qr_text
        )

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
    ) -> None:
        """The merchant's webhook for every step; the customer's notice at booking (with the
        code, sealed) and at the drop (the receipt)."""
        return_id = str(ret["return_id"])
        body: dict[str, Any] = {
            "event": event,
            "return": return_id,
            "parcel": str(ret["original"]),
            "merchant": ret["merchant"],
            "at": iso_utc(now),
            "locker": ret["locker"],
        }
        if site is not None:
            body["locker_name"] = site.title or site.name
            if site.address:
                body["locker_address"] = site.address
        if event == "return_booked":
            body["size"] = ret["size"]
            body["until"] = iso_utc(int(ret["until_ns"]))
        merchant_url = ret.get("webhook")
        if merchant_url:
            event_id = f"return:{return_id}:{event}:merchant"
            enqueue(
                conn,
                event_id=event_id,
                url=str(merchant_url),
                body={"event_id": event_id, **body},
                key_id=str(ret["merchant"] or ""),
                now_ns=now,
            )
        customer_url = ret.get("customer_webhook")
        if customer_url and event in ("return_booked", "return_dropped"):
            event_id = f"return:{return_id}:{event}:customer"
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


def open_return_section(keys: DepotKeys, doc: dict[str, Any]) -> bool:
    """At a send attempt: replace a customer notice's sealed return code with the code, the
    QR's text and the QR as a PNG (segno, as the pickup notice's); True when it did. Part of
    the outbox's render hook (`depot.customer.NoticeRenderer`); a code no key opens raises,
    so the row waits (its bytes must be the same at every attempt)."""
    section = doc.get(RETURN_CODE)
    if not isinstance(section, dict) or "sealed" not in section:
        return False
    bound = associated_data(
        RETURN_CODE_PURPOSE, str(section.get("locker")), str(section.get("return"))
    )
    for key in keys.sealing:
        try:
            opened = json.loads(unseal(key, str(section["sealed"]), bound))
        except SealError:
            continue
        qr = segno.make(str(opened["qr"]), error=QR_ERROR)
        doc[RETURN_CODE] = {
            "code": str(opened["code"]),
            "qr_text": str(opened["qr"]),
            "qr_png": qr.png_data_uri(scale=QR_SCALE),
        }
        return True
    raise ReturnRefused("no sealing key of the depot opens this return code", status=503)


def has_return_section(stored: bytes) -> bool:
    """Whether a stored notice may carry a sealed return code (the render hook's quick test)."""
    return _NEEDLE in stored
