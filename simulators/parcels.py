"""Parcel labels as carriers print them: identifiers with their check digits, and their AIM ids.

The simulated day scans these. The check digits are computed here independently of the
identifier rules in `edge`, so the two implementations check each other in every run.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

GS = "\x1d"


@dataclass(frozen=True)
class Label:
    """What a scanner reads off a label: the data and the symbology's AIM identifier."""

    data: str
    aim: str
    carrier: str


def _mod10(digits: str) -> int:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def _s10_check(serial: str) -> int:
    c = 11 - sum(int(d) * w for d, w in zip(serial, (8, 6, 4, 2, 3, 5, 9, 7), strict=True)) % 11
    return {10: 0, 11: 5}.get(c, c)


def s10(rng: random.Random) -> Label:
    serial = "".join(rng.choice(string.digits) for _ in range(8))
    check = _s10_check(serial)
    service = rng.choice(["RR", "RB", "CP", "EE", "LX"])
    return Label(f"{service}{serial}{check}{rng.choice(['GB', 'NL', 'FR', 'DE'])}", "]C0", "post")


def sscc(rng: random.Random) -> Label:
    body = "".join(rng.choice(string.digits) for _ in range(17))
    data = f"00{body}{_mod10(body)}"
    if rng.random() < 0.5:
        data += f"{GS}420{rng.randint(10000, 99999)}"
    return Label(data, "]C1", "gs1")


def ups(rng: random.Random) -> Label:
    body = "".join(rng.choice(string.digits + "ABCDEFGHJKLMNPRTVWXY") for _ in range(15))
    values = [int(c) if c.isdigit() else (ord(c) - 63) % 10 for c in body]
    total = sum(v * (2 if i % 2 else 1) for i, v in enumerate(values))
    return Label(f"1Z{body}{(10 - total % 10) % 10}", "]C0", "ups")


def fedex(rng: random.Random) -> Label:
    body = "".join(rng.choice(string.digits) for _ in range(11))
    total = sum(int(d) * w for d, w in zip(body, (3, 1, 7) * 4, strict=False))
    return Label(f"{body}{total % 11 % 10}", "]C0", "fedex")


def dhl(rng: random.Random) -> Label:
    serial = str(rng.randint(10**8, 10**9 - 1))
    return Label(f"{serial}{int(serial) % 7}", "]C0", "dhl")


def usps(rng: random.Random) -> Label:
    body = "92" + "".join(rng.choice(string.digits) for _ in range(19))
    return Label(f"420{rng.randint(10000, 99999)}{GS}{body}{_mod10(body)}", "]C1", "usps")


_MAKERS: list[Callable[[random.Random], Label]] = [s10, sscc, ups, fedex, dhl, usps]
_WEIGHTS = [0.3, 0.25, 0.15, 0.1, 0.1, 0.1]


def random_label(rng: random.Random) -> Label:
    """A label from the carrier mix of a European depot."""
    maker = rng.choices(_MAKERS, _WEIGHTS)[0]
    return maker(rng)


def smudged_s10(rng: random.Random) -> Label:
    """An S10 label with one serial digit misread (a smudged print) that its check digit catches.

    S10's mod-11 check misses some single-digit substitutions: remainders 0 and 6 both print
    check digit 5 (11 and 5), so a misread is drawn again until the printed check digit no
    longer matches the serial. The mod-10 and mod-7 schemes of other carriers miss more.
    """
    label = s10(rng)
    while True:
        i = rng.randrange(2, 10)
        wrong = str((int(label.data[i]) + rng.randint(1, 9)) % 10)
        data = label.data[:i] + wrong + label.data[i + 1 :]
        if _s10_check(data[2:10]) != int(data[10]):
            return Label(data, label.aim, label.carrier)
