"""A customer's return code: drawn by the depot, checked by a locker that never sees it.

A customer who sends a parcel back drops it into a parcel locker with a code (typed on the
keypad) or its QR (shown to the scanner). This is the reverse of a pickup credential
(`edge.credentials`): there the locker draws the secret and seals it to the depot; here the
depot draws it, tells the customer, and sends the locker only its hashes (the locker command
`expect_return`). Both the depot and the locker import this module (`sync` is below both),
so the hashing is written once for the two ends.

Owns: the code's shape (8 digits: a keypad entry that can never be mistaken for a 6-digit
pickup code, so a typed return code is never checked against the pickup codes, nor a pickup
code against the returns), the QR text (`LMRT:` and a 256-bit token, beside the pickup QR's
`LMQR:`), and the hashes: scrypt for the code (the same cost as a pickup code), a salted
SHA-256 for the token. The salt is one per locker, kept by the depot (`depot.returns`): a
locker hashes a typed code once for all the returns it expects, however many.

What the hashes are worth: 10**8 codes at ~9 ms a scrypt is ~250 core-hours to sweep one
locker's salt, so the keypad lockout (the pickup codes' `KeypadGuard`, which a wrong return
code counts against too) and the code's expiry are the real defence, as for pickup codes.

Must never: write a code or token in plaintext anywhere (the depot keeps it only sealed to its
own key, to show it to the customer again), or compare a secret with `==`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sync.errors import SyncError

RETURN_CODE_DIGITS = 8
RETURN_QR_PREFIX = "LMRT:"  # scanner data with this prefix is a return QR, not a label
SALT_BYTES = 16
TOKEN_BYTES = 32  # 256 bits
HASH_BYTES = 32
# scrypt at a pickup code's cost (edge.credentials.SCRYPT_N/R/P): one keypad entry, one of these.
SCRYPT_N = 2**12
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 128 * SCRYPT_N * SCRYPT_R + 2**20
_QR_DOMAIN = b"lastmile-return-qr-v1\0"
_MAX_QR_TEXT = 256
#: The associated data a sealed return code is bound to (sync.signing.associated_data).
RETURN_CODE_PURPOSE = "return-code"


class ReturnCodeError(SyncError):
    """A salt or hash sent for a return is not one this module made."""


@dataclass(frozen=True, repr=False)
class IssuedReturnCode:
    """A fresh return code and QR token, and the hashes a locker is sent (under `salt`).

    Lives in memory between the depot drawing it and sealing it; repr never shows a secret."""

    code: str
    qr_token: str
    salt: bytes
    code_hash: str  # base64url, no padding
    qr_hash: str

    def __repr__(self) -> str:
        return "IssuedReturnCode(code=<hidden>, qr_token=<hidden>)"

    @property
    def qr_text(self) -> str:
        """What the QR encodes: the prefix and the token, as the locker's scanner reads it."""
        return RETURN_QR_PREFIX + self.qr_token


def new_salt() -> bytes:
    """A locker's return salt (random, not secret): kept by the depot, sent with each return."""
    return secrets.token_bytes(SALT_BYTES)


def issue_return_code(salt: bytes) -> IssuedReturnCode:
    """Draw an 8-digit code (uniform, leading zeros kept) and a QR token from `secrets`."""
    _check_salt(salt)
    code = f"{secrets.randbelow(10**RETURN_CODE_DIGITS):0{RETURN_CODE_DIGITS}d}"
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return IssuedReturnCode(
        code=code,
        qr_token=token,
        salt=salt,
        code_hash=_b64(_code_hash(code, salt)),
        qr_hash=_b64(_qr_hash(token, salt)),
    )


def is_return_code(text: str) -> bool:
    """Exactly eight ASCII digits (str.isdigit() would take other scripts' digits)."""
    return len(text) == RETURN_CODE_DIGITS and all(c in "0123456789" for c in text)


def code_hash(code: str, salt: bytes) -> str | None:
    """The hash a locker compares a typed code with (None: not a return code's shape)."""
    if not is_return_code(code):
        return None
    _check_salt(salt)
    return _b64(_code_hash(code, salt))


def qr_hash(token: str, salt: bytes) -> str | None:
    """The hash of a scanned return QR's token (without its prefix); None: not one."""
    if not token or len(token) > _MAX_QR_TEXT:
        return None
    _check_salt(salt)
    return _b64(_qr_hash(token, salt))


def same_hash(presented: str, stored: str) -> bool:
    """Constant-time comparison of two hashes as this module writes them."""
    return hmac.compare_digest(presented.encode("ascii"), stored.encode("ascii"))


def salt_from_text(text: str) -> bytes:
    """A salt as the `expect_return` command carries it (base64url); ReturnCodeError if not."""
    try:
        salt = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ReturnCodeError("the return's salt is not base64url") from None
    _check_salt(salt)
    return salt


def salt_text(salt: bytes) -> str:
    return _b64(salt)


def check_hash_text(text: str, name: str) -> str:
    """`text` if it is a hash as this module writes it; ReturnCodeError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ReturnCodeError(f"the return's {name} is not base64url") from None
    if len(raw) != HASH_BYTES or _b64(raw) != text:
        raise ReturnCodeError(f"the return's {name} is not a {HASH_BYTES}-byte hash")
    return text


def _check_salt(salt: bytes) -> None:
    if len(salt) < SALT_BYTES:
        raise ReturnCodeError(f"a return salt has at least {SALT_BYTES} bytes")


def _code_hash(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        code.encode("ascii"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM,
        dklen=HASH_BYTES,
    )


def _qr_hash(token: str, salt: bytes) -> bytes:
    return hashlib.sha256(_QR_DOMAIN + salt + token.encode("utf-8", "surrogatepass")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


__all__ = [
    "RETURN_CODE_DIGITS",
    "RETURN_CODE_PURPOSE",
    "RETURN_QR_PREFIX",
    "IssuedReturnCode",
    "ReturnCodeError",
    "check_hash_text",
    "code_hash",
    "is_return_code",
    "issue_return_code",
    "new_salt",
    "qr_hash",
    "salt_from_text",
    "salt_text",
    "same_hash",
]
