"""Pickup credentials of a parcel locker: issued, stored as salted hashes, verified offline.

Owns: drawing a parcel's pickup code (6 digits) and QR token, the stored form the locker keeps
(salted hashes only), the lookup tag that finds a credential by its secret, constant-time
verification, the keypad's brute-force guard, and sealing the plaintext for the depot (which
tells the customer) with sync.signing.
Must never: write a code or token in plaintext anywhere (journal, tables, logs, repr, str),
compare a secret with ==, let a keypad guess through during a lockout, or let a power cut
shorten a lockout.

What the hashes are worth: a 6-digit code has only 10**6 possibilities, so no hash can keep a
determined attacker who stole the SD card from finding it (with the parameters below: about
2.5 core-hours per credential on a server core). The hash slows that down and keeps codes from
being read off the card at a glance; the real defence of the code is the keypad lockout, the
short hold window, and the depot seeing every lockout in the journal. QR tokens carry 256
random bits, so a fast salted SHA-256 protects them completely and scanning one is cheap.

One salt per locker, one scrypt per pickup. A locker finds the credential of a typed code by
its lookup tag (lookup_tag): the code's scrypt under one random salt of the locker's own,
indexed in its table. An index needs one salt for all: a hash under a salt per credential
cannot be looked up without hashing the typed code under every stored salt, which is what made
the keypad's wait grow with the parcels inside. Credentials used to carry a second scrypt hash
under a salt of their own, checked after the tag had found them; it bought nothing:
- an SD-card thief sweeps the tags: 10**6 scrypts under the one locker salt reveal every code
  stored, whatever the per-credential hashes say. A salt per credential costs him one sweep
  per parcel only where no shared tag exists, and an index is exactly such a tag;
- at the keypad the same codes open either way (a tag is a 256-bit hash of the code under the
  locker's salt, and a locker never stores two parcels with one code);
- what a salt is for still holds: the locker's salt is random (not a secret, and not needed to
  be), so no table computed in advance, nor a sweep of another locker's card, applies here.
So a credential is now issued under the locker's salt (issue_credential(lookup_salt=...)): its
stored code hash IS its tag, and a pickup costs one scrypt (PresentedSecret.opens compares the
stored hash with the tag already computed, in constant time). The record keeps its version-1
form, which older software verifies as before; records issued under a salt of their own still
open, with the second scrypt, until they are collected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from edge.errors import EdgeError
from sync.signing import PICKUP_CREDENTIAL_PURPOSE, associated_data, seal

CODE_DIGITS = 6
QR_TOKEN_BYTES = 32  # 256 bits; base64url text of 43 characters
SALT_BYTES = 16
HASH_BYTES = 32

# scrypt cost for codes. N=2**12, r=8, p=1 takes 4 MiB and about 9 ms per verification on
# the development server (AMD EPYC; 2**13: 20 ms, 2**14: 44 ms), several times that on a
# Raspberry Pi. One keypad entry costs one of these whatever the parcels stored (the lookup
# tag finds the credential; see the module docstring), and the customer waits for it. A higher
# cost would not change the attacker's arithmetic much: his work per locker stays 10**6 times
# the locker's per entry. Stored in each record, so a record still verifies after a change;
# but the lookup tags in a locker's index are made at this cost too, so changing it needs the
# stored parcels re-tagged (or their codes would no longer find them).
SCRYPT_N = 2**12
SCRYPT_R = 8
SCRYPT_P = 1
# A stored record may name other costs (issued by an older or newer version), within bounds
# a locker can afford: a tampered record must not make a keypad entry take minutes or OOM.
_SCRYPT_LOG2_N = range(10, 16)
_SCRYPT_R = range(1, 9)
_SCRYPT_P = range(1, 5)
_SCRYPT_MAXMEM = 128 * 8 * 2**15 + 2**20  # 128*N*r bytes at the largest allowed N and r

_QR_DOMAIN = b"lastmile-qr-v1\0"
_MAX_QR_TEXT = 256  # a token is 43 characters; anything far longer is not one of ours
_RECORD_VERSION = 1

# Keypad guard: five wrong codes in a row lock the keypad; each further lockout doubles.
WRONG_CODES_BEFORE_LOCKOUT = 5
FIRST_LOCKOUT_S = 30.0
MAX_LOCKOUT_S = 3600.0  # 30 s, 1, 2, 4, 8, 16, 32 min, then 1 h for every further lockout


class CredentialError(EdgeError):
    """A stored credential or keypad state cannot be read back (damaged or foreign record)."""


class KeypadLocked(EdgeError):
    """An attempt was recorded during a lockout: the code should never have been checked."""

    def __init__(self, remaining_s: float) -> None:
        super().__init__(f"keypad is locked for another {remaining_s:.0f} s")
        self.remaining_s = remaining_s


# --- credentials ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class StoredCredential:
    """What the locker keeps of a credential: a salt and two hashes, never the plaintext.

    The code hash is as sensitive as the code itself against anyone willing to try 10**6
    candidates, so it is kept out of repr and logs too; only to_record() reveals it, for the
    locker's own table.
    """

    salt: bytes
    code_hash: bytes
    qr_hash: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __repr__(self) -> str:
        return f"StoredCredential(scrypt n={self.n} r={self.r} p={self.p}, hashes hidden)"

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict for the locker's table; holds hashes and salt, no plaintext."""
        return {
            "v": _RECORD_VERSION,
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": _b64(self.salt),
            "code_hash": _b64(self.code_hash),
            "qr_hash": _b64(self.qr_hash),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StoredCredential:
        """Read back to_record(); raises CredentialError for anything it did not write."""
        if not isinstance(record, Mapping):
            raise CredentialError("credential record is not an object")
        if record.get("v") != _RECORD_VERSION or record.get("kdf") != "scrypt":
            raise CredentialError(
                f"credential record version {record.get('v')!r} / kdf {record.get('kdf')!r} "
                "is not one this software reads"
            )
        n, r, p = (record.get(k) for k in ("n", "r", "p"))
        if not (
            _is_int(n)
            and n.bit_count() == 1
            and n.bit_length() - 1 in _SCRYPT_LOG2_N
            and _is_int(r)
            and r in _SCRYPT_R
            and _is_int(p)
            and p in _SCRYPT_P
        ):
            raise CredentialError(f"credential record has unaffordable scrypt cost {n}/{r}/{p}")
        salt, code_hash, qr_hash = (
            _unb64(record.get(k), k) for k in ("salt", "code_hash", "qr_hash")
        )
        if len(salt) < SALT_BYTES or len(code_hash) != HASH_BYTES or len(qr_hash) != HASH_BYTES:
            raise CredentialError("credential record has a short salt or hash")
        return cls(salt=salt, code_hash=code_hash, qr_hash=qr_hash, n=n, r=r, p=p)


@dataclass(frozen=True, repr=False)
class IssuedCredential:
    """A fresh credential: the plaintext for the customer (via the depot) and its stored form.

    Lives only in memory between issue and sealing; repr and str never show the secrets.
    """

    code: str
    qr_token: str
    stored: StoredCredential

    def __repr__(self) -> str:
        return "IssuedCredential(code=<hidden>, qr_token=<hidden>)"

    def lookup_tags(self) -> tuple[str, str]:
        """(code tag, QR tag): lookup_tag() of this code and token under the salt the
        credential was issued with, without hashing again. Issued with a locker's
        `lookup_salt`, these are its entries in that locker's index."""
        return self.stored.code_hash.hex(), self.stored.qr_hash.hex()


def issue_credential(
    rng: random.Random | None = None, *, lookup_salt: bytes | None = None
) -> IssuedCredential:
    """Draw a 6-digit code (uniform, leading zeros kept) and a 256-bit QR token.

    `lookup_salt` is the locker's own salt (see lookup_tag): the credential is hashed under it,
    so its stored hashes are its lookup tags and a pickup costs one scrypt (module docstring).
    Without it the salt is fresh from `secrets`: a credential that stands alone.
    `rng` is for tests only (a seeded random.Random makes codes reproducible); production
    leaves it out and draws from `secrets`.
    """
    if lookup_salt is not None and len(lookup_salt) < SALT_BYTES:
        raise ValueError(f"a lookup salt has at least {SALT_BYTES} bytes")
    if rng is None:
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        qr_token = secrets.token_urlsafe(QR_TOKEN_BYTES)
    else:
        code = f"{rng.randrange(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        qr_token = _b64(rng.randbytes(QR_TOKEN_BYTES))
    salt = secrets.token_bytes(SALT_BYTES) if lookup_salt is None else lookup_salt
    stored = StoredCredential(
        salt=salt,
        code_hash=_code_hash(code, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P),
        qr_hash=_qr_hash(qr_token, salt),
    )
    return IssuedCredential(code=code, qr_token=qr_token, stored=stored)


def verify_code(stored: StoredCredential, code: str) -> bool:
    """True when `code` is this credential's code; compared in constant time.

    Anything but exactly six ASCII digits is refused before hashing: that reveals the input's
    shape, which the person typing knows anyway, and nothing about the code.
    """
    if not _is_code(code):
        return False
    candidate = _code_hash(code, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(candidate, stored.code_hash)


def verify_qr(stored: StoredCredential, token: str) -> bool:
    """True when `token` (without the scanner's prefix) is this credential's QR token."""
    if not isinstance(token, str) or not token or len(token) > _MAX_QR_TEXT:
        return False
    return hmac.compare_digest(_qr_hash(token, stored.salt), stored.qr_hash)


def sealed_for_depot(
    plaintext: Mapping[str, str],
    depot_public_key: bytes,
    *,
    locker_id: str,
    parcel_id: str,
) -> str:
    """The credential's plaintext sealed to the depot's X25519 key, for a journal event.

    The depot needs the code and QR to notify the customer, but the journal is on an SD card
    that may be stolen: only the depot's private key opens this. The locker and parcel ids are
    bound as associated data, so a sealed credential copied onto another parcel's event does
    not open. The depot opens it with sync.signing.unseal(key, sealed,
    associated_data(PICKUP_CREDENTIAL_PURPOSE, locker_id, parcel_id)).
    """
    body = json.dumps(dict(plaintext), sort_keys=True, separators=(",", ":")).encode()
    return seal(
        depot_public_key, body, associated_data(PICKUP_CREDENTIAL_PURPOSE, locker_id, parcel_id)
    )


def lookup_tag(secret: str, locker_salt: bytes, *, is_code: bool) -> str | None:
    """Which stored credential a typed code or scanned token belongs to, in one hash.

    Checking a typed code against every stored credential costs one scrypt per parcel (about
    10 ms each: 0.4 s with 40 parcels, and the locker stops watching its doors meanwhile). So
    the locker keeps this tag, under one salt of its own, and finds the credential by index.
    The tag costs an SD-card thief one brute force per locker instead of one per credential,
    which is no real change for a 10**6 code space (see the module docstring). None: not well
    formed.
    """
    if is_code:
        if not _is_code(secret):
            return None
        return _code_hash(secret, locker_salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()
    if not isinstance(secret, str) or not 0 < len(secret) <= _MAX_QR_TEXT:
        return None
    return _qr_hash(secret, locker_salt).hex()


class PresentedSecret:
    """A code typed or a QR token scanned at a locker, hashed once under its lookup salt.

    `tag` finds the credential in the locker's index; `opens()` then says whether this is that
    credential's secret. Holding the secret and its tag together is what lets `opens()` skip
    the second scrypt safely: the tag it compares is the one made from this very secret. Made
    by hash_presented(); repr never shows the secret or the tag.
    """

    __slots__ = ("_is_code", "_salt", "_secret", "tag")

    def __init__(self, secret: str, tag: str, lookup_salt: bytes, *, is_code: bool) -> None:
        self._secret = secret
        self._salt = lookup_salt
        self._is_code = is_code
        self.tag = tag

    def __repr__(self) -> str:
        return f"PresentedSecret({'code' if self._is_code else 'qr'}, hidden)"

    def opens(self, stored: StoredCredential) -> bool:
        """True when the secret is `stored`'s code (or QR token); compared in constant time.

        A credential issued under the same lookup salt at the current cost stores this very
        tag as its hash: one comparison, no hashing. One issued under a salt of its own (by
        older software) is verified the old way, with its own scrypt.
        """
        cost = (stored.n, stored.r, stored.p) == (SCRYPT_N, SCRYPT_R, SCRYPT_P)
        if stored.salt == self._salt and (cost or not self._is_code):
            expected = stored.code_hash if self._is_code else stored.qr_hash
            return hmac.compare_digest(expected, bytes.fromhex(self.tag))
        if self._is_code:
            return verify_code(stored, self._secret)
        return verify_qr(stored, self._secret)


def hash_presented(secret: str, lookup_salt: bytes, *, is_code: bool) -> PresentedSecret | None:
    """The secret presented at the locker with its lookup_tag(); None: not well formed."""
    tag = lookup_tag(secret, lookup_salt, is_code=is_code)
    if tag is None:
        return None
    return PresentedSecret(secret, tag, lookup_salt, is_code=is_code)


def _is_code(code: object) -> bool:
    return (
        isinstance(code, str)
        and len(code) == CODE_DIGITS
        and all(c in "0123456789" for c in code)  # str.isdigit() would take "١٢٣٤٥٦"
    )


def _code_hash(code: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        code.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=HASH_BYTES
    )


def _qr_hash(token: str, salt: bytes) -> bytes:
    return hashlib.sha256(_QR_DOMAIN + salt + token.encode("utf-8", "surrogatepass")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise CredentialError(f"credential record field {name} is missing or not text")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError(f"credential record field {name} is not base64") from None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# --- keypad guard --------------------------------------------------------------------------


def lockout_seconds(count: int) -> float:
    """How long the `count`-th lockout in a row lasts: 30 s doubling, at most one hour."""
    if count < 1:
        raise ValueError("lockouts are counted from 1")
    return min(FIRST_LOCKOUT_S * 2.0 ** min(count - 1, 32), MAX_LOCKOUT_S)


@dataclass(frozen=True)
class LockoutStarted:
    """The keypad just locked: for `seconds`, until monotonic time `until`; the `count`-th."""

    seconds: float
    count: int
    until: float


class KeypadGuard:
    """Brute-force protection for one locker keypad.

    Five wrong codes in a row lock the keypad for 30 s; every further lockout without a right
    code in between doubles that, up to one hour. A right code clears the streak and the
    escalation (each code opens its door once, so this cannot be farmed). QR pickups are not
    guarded: a 256-bit token cannot be guessed, and a vandal locking the keypad must not stop
    customers who scan.

    Time is passed in as the caller's monotonic clock (time.monotonic()), which on Linux
    restarts near zero at boot. State is journalled with to_record() after every attempt; if
    `now` is ever below the last time seen, the clock restarted (a power cut) and an unfinished
    lockout resumes with what was left of it then: the guard cannot know how long the power
    was off, so it never assumes the lockout was served. A clock that restarted and already
    passed the old value has measured at least the lockout's length since, so that is safe too.

    Checking the code against the credentials is the caller's job, between check() (None:
    you may) and record_attempt().
    """

    def __init__(self) -> None:
        self._streak = 0
        self._lockouts = 0
        self._locked_until: float | None = None
        self._last_now: float | None = None

    @property
    def wrong_streak(self) -> int:
        """Wrong codes since the last right code or lockout."""
        return self._streak

    @property
    def lockouts(self) -> int:
        """Lockouts since the last right code: decides how long the next one lasts."""
        return self._lockouts

    def check(self, now: float) -> float | None:
        """Seconds left of a lockout, or None when a code may be tried now."""
        self._observe(now)
        if self._locked_until is None:
            return None
        if now >= self._locked_until:
            self._locked_until = None
            return None
        return self._locked_until - now

    def record_attempt(self, ok: bool, now: float) -> LockoutStarted | None:
        """Count one checked code; returns the lockout it started, if it started one.

        Raises KeypadLocked if called during a lockout: the caller checked a code it should
        have refused unchecked, and that must be loud, not counted.
        """
        remaining = self.check(now)
        if remaining is not None:
            raise KeypadLocked(remaining)
        if ok:
            self._streak = 0
            self._lockouts = 0
            return None
        self._streak += 1
        if self._streak < WRONG_CODES_BEFORE_LOCKOUT:
            return None
        self._streak = 0
        self._lockouts += 1
        seconds = lockout_seconds(self._lockouts)
        self._locked_until = now + seconds
        return LockoutStarted(seconds=seconds, count=self._lockouts, until=self._locked_until)

    def _observe(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError("now must be a finite monotonic time")
        last = self._last_now
        if last is not None and now < last:
            if self._locked_until is not None and self._locked_until > last:
                self._locked_until = now + (self._locked_until - last)
            else:
                self._locked_until = None
        self._last_now = now

    def to_record(self) -> dict[str, Any]:
        """JSON-able state, to be journalled after every attempt."""
        return {
            "v": _RECORD_VERSION,
            "streak": self._streak,
            "lockouts": self._lockouts,
            "locked_until": self._locked_until,
            "last_now": self._last_now,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> KeypadGuard:
        """Read back to_record(); raises CredentialError for anything it did not write."""
        if not isinstance(record, Mapping) or record.get("v") != _RECORD_VERSION:
            raise CredentialError("keypad guard record is not version 1")
        streak, lockouts = record.get("streak"), record.get("lockouts")
        if not (_is_int(streak) and _is_int(lockouts) and streak >= 0 and lockouts >= 0):
            raise CredentialError("keypad guard record has bad counters")
        if streak >= WRONG_CODES_BEFORE_LOCKOUT:
            raise CredentialError(f"keypad guard record has a streak of {streak}")
        times: list[float | None] = []
        for name in ("locked_until", "last_now"):
            value = record.get(name)
            if value is None:
                times.append(None)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise CredentialError(f"keypad guard record {name} is not finite")
                times.append(float(value))
            else:
                raise CredentialError(f"keypad guard record {name} is not a number")
        guard = cls()
        guard._streak, guard._lockouts = streak, lockouts
        guard._locked_until, guard._last_now = times
        return guard


__all__ = [
    "CODE_DIGITS",
    "FIRST_LOCKOUT_S",
    "MAX_LOCKOUT_S",
    "QR_TOKEN_BYTES",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "WRONG_CODES_BEFORE_LOCKOUT",
    "CredentialError",
    "IssuedCredential",
    "KeypadGuard",
    "KeypadLocked",
    "LockoutStarted",
    "PresentedSecret",
    "StoredCredential",
    "hash_presented",
    "issue_credential",
    "lockout_seconds",
    "lookup_tag",
    "sealed_for_depot",
    "verify_code",
    "verify_qr",
]
