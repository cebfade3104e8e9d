"""The "sorry we missed you" card's code: made by the van, matched by the depot and a counter.

One owner for the code's facts: its alphabet and length (`new_card_code`, on the van), how a
person writes it back (`normal_card_code`, at the depot's card page and at a counter's desk),
and the tag a staffed counter keeps instead of the code (`card_tag`).

The card-code tag:

A customer who found a "sorry we missed you" card and chose to collect at a counter may come
with only the card: its code (8 Crockford base32 characters, "XXXX-XXXX") and their name. The
counter must recognise the pair without holding the code in plaintext (its journal is on a card
that may be stolen). So the depot, when it reserves a shelf at a counter for such a parcel,
sends `card_tag` (this module) in the reserve command, and the counter keeps only that. At the
desk the staff types the code and the name; the counter computes the same tag and looks it up.

Why scrypt and not a plain hash: a card code carries 40 bits; with the recipient's surname
known to a thief, a fast hash would give the code away in hours. Under scrypt at this cost one
guess costs ~45 ms of a core, 2**40 of them about 1.5 million core-years. The salt is the
counter's device id, so the depot can make the tag without asking the counter anything and a
tag copied to another counter matches nothing there. Wrong guesses at the desk are throttled
by the counter's keypad guard like pickup codes.

Must never: keep or log a card code, or accept a code that is not 8 Crockford characters.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata

__all__ = [
    "CARD_CODE_CHARS",
    "CARD_CODE_LEN",
    "card_tag",
    "formatted",
    "new_card_code",
    "normal_card_code",
    "surname_key",
]

#: Crockford base32: 0-9 and A-Z without I, L, O, U.
CARD_CODE_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CARD_CODE_LEN = 8
_READ_AS = {"O": "0", "I": "1", "L": "1"}
_DOMAIN = b"lastmile-card-v1\0"
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_MAXMEM = 128 * _SCRYPT_N * _SCRYPT_R + 2**20


def new_card_code() -> str:
    """A fresh code for a card: 8 Crockford base32 characters from `secrets` (guessing one is
    a 1 in 2**40 shot), written "XXXX-XXXX" for the courier's pen."""
    return formatted("".join(secrets.choice(CARD_CODE_CHARS) for _ in range(CARD_CODE_LEN)))


def formatted(code: str) -> str:
    """A normalised code as the card shows it: "XXXX-XXXX"."""
    return f"{code[:4]}-{code[4:]}"


def normal_card_code(text: str) -> str | None:
    """The code as printed ("ABCD2345"), read the way a person writes it: any case, spaces
    and hyphens ignored, O read as 0 and I/L as 1; None when it is not a card code."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    kept = "".join(_READ_AS.get(c, c) for c in text.upper() if c not in " -")
    if len(kept) != CARD_CODE_LEN or any(c not in CARD_CODE_CHARS for c in kept):
        return None
    return kept


def surname_key(name: str) -> str:
    """The last word of a name, without case, accents or punctuation: "A. Jansen", "anna
    JANSEN" and "Jänsen" all give "jansen". Empty when the name has no letters."""
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    words = ["".join(c for c in w if c.isalnum()) for w in plain.casefold().split()]
    words = [w for w in words if w]
    return words[-1] if words else ""


def card_tag(counter: str, code: str, name: str) -> str | None:
    """The tag a counter holds for a parcel collectable with this card code and name (hex);
    None when the code is not a card code or the name has no letters."""
    normal, surname = normal_card_code(code), surname_key(name)
    if normal is None or not surname:
        return None
    secret = f"{normal}\n{surname}".encode()
    digest = hashlib.scrypt(
        secret,
        salt=_DOMAIN + counter.encode(),
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        maxmem=_MAXMEM,
        dklen=32,
    )
    return digest.hex()
