"""The pickup notice: what a customer needs to collect a parcel from a locker.

When a locker's `parcel_deposited` reaches the depot, the parcel book makes the parcel
`in_locker` and notifies its merchant and its customer through the webhook outbox (in the same
transaction as the state change). The locker sealed the pickup code and QR token to the depot's
sealing key (`credential_for_depot`); this module owns what the notice adds to that message:

- at enqueue (`notice_body`): the locker's name and address, the compartment size, the hold's
  end, a signed link to extend the hold, and for the customer only the credential *still
  sealed*. The outbox row therefore holds nothing a reader of the database could collect with;
- at each send attempt (`open_pickup_section`, in the outbox's render hook
  `depot.customer.NoticeRenderer`): the credential is opened
  with the depot's keys and replaced by the 6-digit code, the QR token and the token's QR code
  as a PNG (made with segno). The bytes are the same on every attempt, so the signature a
  receiver checks and its dedup by event id behave as for every other notification.

The merchant is told where and until when, never the code: a merchant's system is not the
person who may open the door.

The extend link carries a token, an HMAC of the parcel under a key derived from the depot's
newest sealing key; any of the depot's sealing keys verifies one (a rotation keeps links sent
before it working while the old key is kept). It proves only that the depot made the link for
that parcel, which is all a "give me more time" button needs.

Must never: log or store the code or the QR token, put them in the merchant's body, or render
a body differently twice.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import segno

from depot.config import LockerSiteConfig
from depot.errors import DepotError
from depot.keys import DepotKeys
from depot.store import Conn, outbox

__all__ = [
    "PICKUP_NEEDLE",
    "ExtendRefused",
    "Pickup",
    "check_extend_token",
    "extend_link",
    "extend_refusal",
    "extend_token",
    "notice_body",
    "notices_sent",
    "open_pickup",
    "open_pickup_section",
]

PICKUP = "pickup"  # the body's key for the credential: sealed at rest, opened when sent
QR_SCALE = 4  # pixels per module: a 25-module QR (plus border) is a ~132 px PNG
QR_ERROR = "m"  # 15 % recovery: a phone screen held to a locker's scanner, scratched glass
_TOKEN_CONTEXT = b"lastmile extend-hold link\0"


class ExtendRefused(DepotError):
    """The depot will not extend this hold (said to the customer); `forbidden` when the link
    is not one the depot made."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def _token_keys(keys: DepotKeys) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    raw = [
        k.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        for k in keys.sealing
    ]
    return [hashlib.sha256(_TOKEN_CONTEXT + r).digest() for r in raw]


def _mac(key: bytes, parcel: str) -> str:
    return hmac.new(key, parcel.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def extend_token(keys: DepotKeys, parcel: str) -> str | None:
    """The token of `parcel`'s extend-hold link (None: the depot has no sealing key)."""
    found = _token_keys(keys)
    return _mac(found[0], parcel) if found else None


def check_extend_token(keys: DepotKeys, parcel: str, token: str) -> bool:
    """Whether `token` is one the depot made for `parcel` under any key it still holds."""
    return any(hmac.compare_digest(_mac(k, parcel), token) for k in _token_keys(keys))


def extend_refusal(state: object, *, asked_before: bool, locker: object) -> str | None:
    """Why the customer may not extend this hold now (said to them), or None when they may:
    once, while the parcel waits in a locker the depot knows and before the hold ends. The one
    rule behind the extend-hold link and the customer's page (`depot.customer`)."""
    if state not in ("in_locker", "hold_expired"):
        return "the parcel is not waiting in a locker"
    if state == "hold_expired" or asked_before:
        return "the hold can be extended once, before it ends"
    if not locker:
        return "the depot does not know which locker holds the parcel"
    return None


def notice_body(
    body: Mapping[str, Any],
    *,
    audience: str,
    deposit: Mapping[str, Any],
    site: LockerSiteConfig | None,
    locker: str,
    extend_url: str | None,
) -> dict[str, Any]:
    """`body` (an `in_locker` notification) with the pickup notice's facts added.

    `deposit` is the locker's `parcel_deposited` payload. The customer's copy gets the
    credential as the locker sealed it; the merchant's does not.
    """
    out = dict(body)
    details = dict(out.get("details") or {})
    details["locker"] = locker
    if site is not None:
        details["locker_name"] = site.title or site.name
        if site.address:
            details["locker_address"] = site.address
    if isinstance(deposit.get("size"), str):
        details["size"] = deposit["size"]
    if extend_url is not None:
        details["extend_hold_url"] = extend_url
    out["details"] = details
    sealed = deposit.get("credential_for_depot")
    if audience == "customer" and isinstance(sealed, str):
        out[PICKUP] = {"sealed": sealed, "locker": locker, "parcel": str(out.get("parcel"))}
    return out


def notices_sent(conn: Conn) -> int:
    """Pickup notices the customers' receivers have taken (2xx), one per deposit told."""
    needle = b'"' + PICKUP.encode() + b'":{'
    return sum(1 for body in outbox.sent_bodies(conn, "customer") if needle in body)


def extend_link(base_url: str, parcel: str, token: str) -> str:
    """The customer's extend-hold link (a page with one button; see depot/http.py)."""
    quoted = urllib.parse.quote(parcel, safe="")
    return f"{base_url.rstrip('/')}/parcels/{quoted}/extend-hold?token={token}"


@dataclass(frozen=True)
class Pickup:
    """What opens a parcel's compartment: the 6-digit code and the QR token (never stored)."""

    code: str
    qr_token: str

    def qr(self) -> segno.QRCode:
        """The token's QR code, as the customer shows it to the locker's scanner."""
        return segno.make(self.qr_token, error=QR_ERROR)

    def qr_svg(self) -> str:
        """The QR code as an inline SVG document (the customer's page draws it at any size)."""
        svg: str = self.qr().svg_inline(scale=QR_SCALE, omitsize=True)
        return svg


def open_pickup(keys: DepotKeys, sealed: str, *, locker: str, parcel: str) -> Pickup:
    """Open the credential `locker` sealed for `parcel` (`DepotKeys.open_credential`; raises
    its CredentialError when no key of the depot's opens it). The one way the depot turns a
    sealed credential into a code: the pickup notice and the customer's page both call it."""
    credential = keys.open_credential(sealed, locker=locker, parcel=parcel)
    return Pickup(code=credential["code"], qr_token=credential["qr"])


PICKUP_NEEDLE = b'"' + PICKUP.encode() + b'"'  # in a stored body: maybe a sealed credential


def open_pickup_section(keys: DepotKeys, doc: dict[str, Any]) -> bool:
    """At a send attempt: replace `doc`'s sealed credential (if it has one) with the code, the
    QR token and the token's QR as a PNG; True when it did. Part of the outbox's render hook
    (`depot.customer.NoticeRenderer`); a credential no key opens raises, so the row waits."""
    section = doc.get(PICKUP)
    if not isinstance(section, dict) or "sealed" not in section:
        return False
    pickup = open_pickup(
        keys, str(section["sealed"]), locker=str(section["locker"]), parcel=str(section["parcel"])
    )
    doc[PICKUP] = {
        "code": pickup.code,
        "qr_token": pickup.qr_token,
        "qr_png": pickup.qr().png_data_uri(scale=QR_SCALE),
    }
    return True
