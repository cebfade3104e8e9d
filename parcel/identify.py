"""What a scanned code means: which carrier's parcel identifier it is, and whether it is intact.

This module owns the *meaning* of the text a scanner delivers: the AIM symbology identifier in
front of it, the GS1 element strings inside it, and the check digits of every parcel identifier
a courier van or a parcel locker meets. It is pure: it never reads a port, a file, a clock or the
network, and it never logs. Drivers hand it the text of one scan; it answers with a
:class:`ParcelId` or raises :class:`Rejection`, whose reason is written to be read by a courier.

Kinds of identifier (``ParcelId.kind``) and the ``id`` each one yields:

- ``s10``   UPU S10 postal item, e.g. ``RB123456785GB`` (upper-cased, 13 characters); the last
  two letters must be a country in :data:`S10_COUNTRIES` (``RB123456785ZZ`` is refused).
- ``sscc``  GS1 Serial Shipping Container Code: the 18 digits, whether scanned bare, behind
  AI (00), or inside a GS1 element string (the other AIs go to ``details``).
- ``gs1``   a GS1 element string without an SSCC: the value of AI (401) GINC, else (402) GSIN.
- ``ups``   UPS ``1Z`` number, 18 characters, upper-cased.
- ``fedex`` FedEx Express (12 digits) or FedEx Ground (15 digits; the 22-digit ``96`` barcode
  yields its last 15); ``details["service"]`` says which.
- ``dhl``   DHL Express waybill, 10 or 11 digits.
- ``usps``  USPS IMpb tracking number, ``9x`` + 18 or 20 digits, without the ``420`` ZIP routing
  part (which goes to ``details["ship_to_postal_code"]``).

Order of precedence, and the ambiguity decisions behind it:

1. Surrounding whitespace is stripped, but never GS, RS or EOT: they carry meaning.
2. An AIM identifier (``]`` + letter + modifier) is taken from the front of the code unless the
   caller passed ``aim`` separately, in which case the code is taken to be data only.
   ``]E*`` (EAN/UPC) is a product barcode and is rejected as such: this settles the case of a
   12-digit UPC-A that happens to pass the FedEx Express check.
3. An ISO/IEC 15434 envelope (``[)>`` RS ...): format 05 carries GS1 element strings and is read
   as such; any other format (e.g. 01, the UPS MaxiCode transport format) is rejected with a
   reason telling the courier to scan the 1D tracking barcode.
4. Letter shapes are unambiguous: two letters + 9 digits + two letters is S10, ``1Z`` + 16
   alphanumerics is UPS. A failed check digit there is rejected naming that check.
5. Data containing GS, or behind a GS1 AIM (``]C1``, ``]e0``, ``]d2``, ``]Q3``, ``]J1``), is GS1:
   ``420`` + ZIP5/ZIP9 + GS + ``9…`` is USPS IMpb; all-digit ``9…``/``420…`` data is read with the
   digit rules below (USPS and FedEx ``96`` labels are GS1-128 symbols too); anything else is an
   element string read by ``biip``. A leading GS (a scanner sending the first FNC1) and a trailing
   GS are ignored. A bare 18-digit SSCC behind a GS1 AIM is *not* accepted: GS1 data must start
   with an AI, and such a scan means the label or the scanner is misconfigured.
6. All-digit data is matched by length, in this order: DHL Express (10-11), FedEx Express (12),
   FedEx Ground (15), SSCC (18), AI (00) + SSCC (20, starting ``00``), FedEx Ground ``96``
   barcode (22, starting ``96``), USPS (20 or 22, starting ``9``), and ``420`` + ZIP glued to a
   USPS number (28, 30, 32 or 34 digits starting ``420``), which is rejected: ``420`` is a
   variable-length AI, so without the GS the ZIP cannot be told from the tracking number.
   Only the ``96…`` 22-digit numbers fit two carriers (FedEx Ground and USPS): a number that fails
   one check falls through to the next, and only when every carrier that fits the shape has
   failed is it rejected, naming each failed check (or just the one, when only one fitted).
7. Anything else is "not a parcel identifier we know". Every supported identifier is ASCII, so
   other characters are rejected before any parser sees them (Python's ``\\d`` and ``int()``
   would otherwise accept Arabic-Indic or full-width digits).

Not recognised on purpose (each would be a new, documented rule): USPS 26/30/34-digit IMpb
variants, pre-IMpb 20-digit USPS numbers not starting with ``9``, the 34-digit FedEx Express
barcode (it collides with ``420`` + ZIP9 + 22 digits), DHL eCommerce and piece identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import biip
from biip.gs1_messages import GS1Message
from biip.symbology import GS1Symbology

from parcel.errors import ParcelError

__all__ = [
    "KINDS",
    "S10_COUNTRIES",
    "Kind",
    "ParcelId",
    "Rejection",
    "dhl_check_digit",
    "escape_undecodable",
    "fedex_express_check_digit",
    "gs1_mod10",
    "identify",
    "parse_cli_code",
    "s10_check_digit",
    "to_json",
    "ups_check_digit",
]

Kind = Literal["s10", "sscc", "gs1", "ups", "fedex", "dhl", "usps"]
KINDS: tuple[Kind, ...] = get_args(Kind)

GS = "\x1d"  # ASCII group separator: how a scanner transmits a GS1 FNC1 after the first
RS = "\x1e"  # ASCII record separator: ISO/IEC 15434 format header/trailer
EOT = "\x04"  # ASCII end of transmission: ISO/IEC 15434 message trailer

#: UPU S10 weights over the 8 serial digits.
S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
#: The countries an S10 identifier may end with: every officially assigned ISO 3166-1 alpha-2
#: code (the ISO 3166 Maintenance Agency's list, 249 codes, checked against the iso-codes
#: package's iso_3166-1.json), plus XK, the user-assigned code that Kosovo's post and the
#: European Union use and that S10 labels carry. Not "UK": the United Kingdom is GB, and UK is
#: only exceptionally reserved, never a country on a label. The UPU's own S31 issuer codes of
#: three characters cannot appear in the two letters of an S10 identifier.
_S10_COUNTRY_TEXT = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    XK
"""
S10_COUNTRIES = frozenset(_S10_COUNTRY_TEXT.split())
#: FedEx Express weights over the first 11 digits of a 12-digit number.
FEDEX_EXPRESS_WEIGHTS = (3, 1, 7, 3, 1, 7, 3, 1, 7, 3, 1)

#: GS1 AIs found on parcel labels, with the GS1 data title of each.
PARCEL_AIS = {
    "00": "SSCC",
    "401": "GINC",
    "402": "GSIN",
    "403": "routing code",
    "410": "ship-to GLN",
    "413": "ship-for GLN",
    "420": "ship-to postal code",
    "421": "ship-to postal code with ISO country",
}

_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")
# Whitespace except FS/GS/RS/US, which Python counts as whitespace but which carry meaning.
_SURROUNDING_SPACE = re.compile(r"^[^\S\x1c-\x1f]+|[^\S\x1c-\x1f]+$")
_S10 = re.compile(r"([A-Z]{2})([0-9]{8})([0-9])([A-Z]{2})")
_UPS = re.compile(r"1Z([0-9A-Z]{15})([0-9A-Z])")
_USPS_WITH_ZIP = re.compile(r"420([0-9]{5}|[0-9]{9})\x1d([0-9]+)")
_ENVELOPE = re.compile(r"\[\)>\x1e([0-9]{2})\x1d?([^\x1e\x04]*)(?:[\x1e\x04].*)?", re.DOTALL)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # never text: bytes a decoder could not read
_CLI_TOKENS = re.compile(r"\\x1d|\\x1e|\\x04|<GS>|<RS>|<EOT>", re.IGNORECASE)
_CLI_BYTES = {
    "\\x1d": GS,
    "\\x1e": RS,
    "\\x04": EOT,
    "<gs>": GS,
    "<rs>": RS,
    "<eot>": EOT,
}


@dataclass(frozen=True)
class ParcelId:
    """A scanned code that is a parcel identifier we know, with an intact check digit.

    ``raw`` is the code exactly as it was handed to :func:`identify` (before stripping), so a
    journal can keep what the scanner really sent. ``details`` is not part of the hash.
    """

    kind: Kind
    id: str
    aim: str | None
    raw: str
    details: dict[str, str] = field(default_factory=dict, hash=False)


class Rejection(ParcelError):
    """A scan that is not a parcel identifier we can accept; ``reason`` is for the courier.

    ``raw`` is the code as handed to :func:`identify`; ``aim`` the AIM identifier, if one was
    seen before the scan was rejected.
    """

    def __init__(self, reason: str, raw: str, aim: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.aim = aim

    def __reduce__(self) -> tuple[type[Rejection], tuple[str, str, str | None]]:
        # Exception pickling replays self.args, which holds only the reason.
        return (type(self), (self.reason, self.raw, self.aim))


# --- check digits ----------------------------------------------------------------------------
# Each helper takes the data *without* its check digit and raises ValueError on malformed input.


def _require_digits(value: str, what: str, length: int | None = None) -> None:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{what} must be ASCII digits, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must be {length} digits, got {len(value)}")


def s10_check_digit(serial8: str) -> int:
    """UPU S10 check digit of the 8-digit serial: C = 11 - (S mod 11); 10 -> 0, 11 -> 5."""
    _require_digits(serial8, "S10 serial", 8)
    total = sum(int(d) * w for d, w in zip(serial8, S10_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: 0, 11: 5}.get(check, check)


def gs1_mod10(digits: str) -> int:
    """GS1 mod-10 check digit (GTIN, SSCC, GSIN, GLN, USPS IMpb, FedEx Ground).

    Weights 3, 1, 3, 1 ... from the rightmost data digit; check = (10 - S mod 10) mod 10.
    """
    if not digits:
        raise ValueError("GS1 data must have at least one digit")
    _require_digits(digits, "GS1 data")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def ups_check_digit(body15: str) -> int:
    """UPS check digit of the 15 characters after ``1Z`` (case-insensitive).

    Letters count as (ord(c) - 63) mod 10; odd positions (1-based) x1, even x2;
    check = (10 - S mod 10) mod 10.
    """
    body = body15.upper()
    if not (len(body) == 15 and body.isascii() and body.isalnum()):
        raise ValueError(f"UPS body must be 15 letters or digits, got {body15!r}")
    values = [int(c) if c.isdigit() else (ord(c) - 63) % 10 for c in body]
    total = sum(v * (1 if i % 2 == 0 else 2) for i, v in enumerate(values))
    return (10 - total % 10) % 10


def fedex_express_check_digit(body11: str) -> int:
    """FedEx Express check digit of the first 11 digits: weights 3 1 7 ..., (S mod 11) mod 10."""
    _require_digits(body11, "FedEx Express body", 11)
    total = sum(int(d) * w for d, w in zip(body11, FEDEX_EXPRESS_WEIGHTS, strict=True))
    return total % 11 % 10


def dhl_check_digit(serial: str) -> int:
    """DHL Express check digit: the serial (all but the check digit) as a number, mod 7."""
    if not serial:
        raise ValueError("DHL serial must have at least one digit")
    _require_digits(serial, "DHL serial")
    return int(serial) % 7


# --- identify --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    kind: Kind
    id: str
    details: dict[str, str]


# A digit reader returns None when the shape does not fit, a reason when it fits but a check
# fails, or a reading.
_DigitReader = Callable[[str], _Reading | str | None]


def _check_failure(what: str, got: str, expected: int) -> str | None:
    return None if got == str(expected) else f"{what} check digit is {got}, expected {expected}"


def _read_dhl(digits: str) -> _Reading | str | None:
    if len(digits) not in (10, 11):
        return None
    failure = _check_failure("DHL Express", digits[-1], dhl_check_digit(digits[:-1]))
    return failure or _Reading("dhl", digits, {"service": "express"})


def _read_fedex_express(digits: str) -> _Reading | str | None:
    if len(digits) != 12:
        return None
    failure = _check_failure("FedEx Express", digits[-1], fedex_express_check_digit(digits[:-1]))
    return failure or _Reading("fedex", digits, {"service": "express"})


def _read_fedex_ground(digits: str) -> _Reading | str | None:
    if len(digits) != 15:
        return None
    failure = _check_failure("FedEx Ground", digits[-1], gs1_mod10(digits[:-1]))
    return failure or _Reading("fedex", digits, {"service": "ground"})


def _read_fedex_ground_96(digits: str) -> _Reading | str | None:
    # 96 + 2-digit SCNC + 3-digit service + 15-digit tracking number whose last digit checks it.
    if len(digits) != 22 or not digits.startswith("96"):
        return None
    tracking = digits[7:]
    failure = _check_failure("FedEx Ground (96 barcode)", tracking[-1], gs1_mod10(tracking[:-1]))
    return failure or _Reading("fedex", tracking, {"service": "ground", "barcode": digits})


def _read_sscc(digits: str) -> _Reading | str | None:
    if len(digits) != 18:
        return None
    failure = _check_failure("SSCC", digits[-1], gs1_mod10(digits[:-1]))
    return failure or _Reading("sscc", digits, {})


def _read_usps(digits: str) -> _Reading | str | None:
    if len(digits) not in (20, 22) or not digits.startswith("9"):
        return None
    failure = _check_failure("USPS", digits[-1], gs1_mod10(digits[:-1]))
    return failure or _Reading("usps", digits, {})


def _read_usps_without_gs(digits: str) -> _Reading | str | None:
    if len(digits) not in (28, 30, 32, 34) or not digits.startswith("420"):
        return None
    return (
        "USPS IMpb needs a GS after the ZIP code: without it the ZIP cannot be told from the "
        "tracking number; set the scanner to send FNC1 as GS (0x1D)"
    )


def _read_sscc_with_ai_00(digits: str) -> _Reading | str | None:
    if len(digits) != 20 or not digits.startswith("00"):
        return None
    return _read_gs1(digits)


#: Readers for numbers that GS1-128 symbols carry as they are (USPS, FedEx 96), in precedence order.
_GS1_128_DIGIT_READERS: tuple[_DigitReader, ...] = (
    _read_fedex_ground_96,
    _read_usps,
    _read_usps_without_gs,
)
#: All readers for all-digit data, in precedence order (see the module docstring).
_DIGIT_READERS: tuple[_DigitReader, ...] = (
    _read_dhl,
    _read_fedex_express,
    _read_fedex_ground,
    _read_sscc,
    _read_sscc_with_ai_00,
    *_GS1_128_DIGIT_READERS,
)


def _read_digits(digits: str, readers: tuple[_DigitReader, ...]) -> _Reading | str | None:
    """The first reading that passes its check; else the failed checks; None if none fit."""
    failures: list[str] = []
    for reader in readers:
        outcome = reader(digits)
        if isinstance(outcome, _Reading):
            return outcome
        if outcome is not None:
            failures.append(outcome)
    if not failures:
        return None
    if len(failures) == 1:
        return failures[0]
    return f"no carrier's check digit fits this {len(digits)}-digit number: " + "; ".join(failures)


def _read_gs1(data: str) -> _Reading | str:
    """A GS1 element string (data without AIM); USPS IMpb and FedEx 96 numbers included."""
    data = data.strip(GS)
    usps = _USPS_WITH_ZIP.fullmatch(data)
    if usps is not None and usps.group(2).startswith("9"):
        zip_code, tracking = usps.groups()
        outcome = _read_usps(tracking)
        if outcome is None:
            return f"not a USPS tracking number we know: {len(tracking)} digits after the ZIP"
        if isinstance(outcome, _Reading):
            return _Reading("usps", outcome.id, {"ship_to_postal_code": zip_code})
        return outcome
    if _is_digits(data):
        outcome = _read_digits(data, _GS1_128_DIGIT_READERS)
        if outcome is not None:
            return outcome
    return _read_element_strings(data)


def _read_element_strings(data: str) -> _Reading | str:
    # GS1Message.parse rather than biip.parse(aim + data): biip.parse rejects the GS1 DotCode
    # AIM ]J1 that its own GS1Symbology lists ('J' is not in its ISOSymbology), and without a
    # GS1 AIM it also tries the whole value as a bare SSCC, which GS1 data never is.
    try:
        message = GS1Message.parse(data)
    except (biip.ParseError, ValueError, IndexError) as exc:
        return f"GS1 label data could not be read: {exc}"

    details: dict[str, str] = {}
    for element in message.element_strings:
        key = f"ai_{element.ai.ai}"
        if details.setdefault(key, element.value) != element.value:
            return f"GS1 label has two different values for AI ({element.ai.ai})"

    failure = _gs1_check_digits(details)
    if failure is not None:
        return failure
    sscc = message.element_strings.get(ai="00")
    if sscc is not None:
        # biip still returns the message when the SSCC's check digit is wrong: validity is on
        # the element's sscc / sscc_error (result.sscc / result.sscc_error from biip.parse).
        if sscc.sscc is None:
            return f"SSCC is not valid: {sscc.sscc_error}"
        return _Reading("sscc", sscc.value, details)
    for ai in ("401", "402"):
        if f"ai_{ai}" in details:
            return _Reading("gs1", details[f"ai_{ai}"], details)
    found = ", ".join(_describe_ai(key.removeprefix("ai_")) for key in details) or "none"
    return (
        "GS1 label carries no parcel identifier (AI 00 SSCC, 401 GINC or 402 GSIN); "
        f"AIs found: {found}"
    )


def _describe_ai(ai: str) -> str:
    title = PARCEL_AIS.get(ai)
    return f"({ai}) {title}" if title else f"({ai})"


def _gs1_check_digits(details: dict[str, str]) -> str | None:
    """Check the digits biip leaves unchecked, with reasons in the same words as the others."""
    checks = (("ai_00", "SSCC"), ("ai_402", "GSIN"), ("ai_410", "GLN"), ("ai_413", "GLN"))
    for key, what in checks:
        value = details.get(key)
        if value is None or not _is_digits(value):
            continue
        ai = key.removeprefix("ai_")
        failure = _check_failure(f"{what} in AI ({ai})", value[-1], gs1_mod10(value[:-1]))
        if failure is not None:
            return failure
    return None


def _read_envelope(data: str) -> _Reading | str:
    envelope = _ENVELOPE.fullmatch(data)
    if envelope is None:
        return "ISO/IEC 15434 envelope is malformed: it should start with [)> RS and a format"
    format_, payload = envelope.groups()
    if format_ != "05":
        return (
            f"ISO/IEC 15434 envelope format {format_} is not read here: "
            "scan the parcel's 1D tracking barcode instead"
        )
    return _read_gs1(payload)


def _is_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _is_gs1_aim(aim: str | None) -> bool:
    if aim is None:
        return False
    try:
        symbology = GS1Symbology(aim[1:])
    except ValueError:
        return False
    return symbology in GS1Symbology.with_gs1_messages()


def _show_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"<0x{code - 0xDC00:02x}>" if 0xDC80 <= code <= 0xDCFF else f"<U+{code:04X}>"


def _show(data: str, limit: int = 40) -> str:
    shown = data.replace(GS, "<GS>").replace(RS, "<RS>").replace(EOT, "<EOT>")
    # A byte that was not text as <0xff>, as `lastmile identify` shows control characters.
    shown = _SURROGATE.sub(_show_surrogate, shown)
    shown = shown if len(shown) <= limit else shown[: limit - 3] + "..."
    return repr(shown)


def _read(data: str, aim: str | None) -> _Reading | str:
    if not data:
        return "empty scan: no data after the scanner's prefix" if aim else "empty scan"
    if not data.isascii():
        return f"not a parcel identifier we know: {_show(data)} has characters no label uses"
    if aim is not None and aim[1] == "E":
        return "a product barcode (EAN/UPC), not a parcel label"
    if data.startswith("[)>"):
        return _read_envelope(data)

    upper = data.upper()
    s10 = _S10.fullmatch(upper)
    if s10 is not None:
        service, serial, check, country = s10.groups()
        failure = _check_failure("S10", check, s10_check_digit(serial))
        if failure is None and country not in S10_COUNTRIES:
            failure = f"S10 country {country} is not an ISO 3166 country code"
        return failure or _Reading("s10", upper, {"service": service, "country": country})
    ups = _UPS.fullmatch(upper)
    if ups is not None:
        body, check = ups.groups()
        failure = _check_failure("UPS", check, ups_check_digit(body))
        return failure or _Reading("ups", upper, {"shipper_number": body[:6], "service": body[6:8]})

    if GS in data or _is_gs1_aim(aim):
        return _read_gs1(data)
    if _is_digits(data):
        outcome = _read_digits(data, _DIGIT_READERS)
        if outcome is not None:
            return outcome
        return f"not a parcel identifier we know: {len(data)} digits ({data[:40]})"
    return f"not a parcel identifier we know: {_show(data)}"


def identify(code: str, aim: str | None = None) -> ParcelId:
    """Say which parcel identifier ``code`` is, or raise :class:`Rejection` saying why not.

    ``aim`` is the AIM symbology identifier (e.g. ``"]C1"``) when the driver has already split
    it off; otherwise an AIM identifier at the start of ``code`` is split off here. GS1 data
    must use GS (0x1D) between fields. See the module docstring for the order of precedence.
    """
    data = _SURROUNDING_SPACE.sub("", code)
    if aim is None and data.startswith("]"):
        if _AIM.match(data) is None:
            raise Rejection(f"malformed AIM symbology identifier at the start: {_show(data)}", code)
        aim, data = data[:3], data[3:]
    elif aim is not None and _AIM.fullmatch(aim) is None:
        raise Rejection(f"malformed AIM symbology identifier: {_show(aim)}", code)

    outcome = _read(data, aim)
    if isinstance(outcome, str):
        raise Rejection(outcome, code, aim)
    return ParcelId(kind=outcome.kind, id=outcome.id, aim=aim, raw=code, details=outcome.details)


def parse_cli_code(text: str) -> str:
    """Turn what a person types on a command line into the text a scanner would send.

    ``\\x1d`` (the four characters) and ``<GS>`` become GS; ``\\x1e``/``<RS>`` become RS and
    ``\\x04``/``<EOT>`` become EOT, for ISO/IEC 15434 envelopes. Case-insensitive; nothing else
    is unescaped.
    """
    return _CLI_TOKENS.sub(lambda m: _CLI_BYTES[m.group(0).lower()], text)


def _escape_surrogate(char: str) -> str:
    """``\\xff`` for a byte that was not UTF-8, ``\\ud800`` for another lone surrogate."""
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_undecodable(text: str) -> str:
    """``text`` with what is not text escaped, so it encodes as strict UTF-8.

    Bytes that were not UTF-8 (``os.fsdecode``'s and ``surrogateescape``'s lone surrogates
    U+DC80-U+DCFF) become ``\\xff``; any other lone surrogate becomes ``\\ud800``. Text
    without them is returned as it is.
    """
    return _SURROGATE.sub(lambda m: _escape_surrogate(m.group()), text)


def _text(value: str | None) -> str | None:
    return None if value is None else escape_undecodable(value)


def to_json(result: ParcelId | Rejection) -> dict[str, object]:
    """One JSON-ready object for a scan's outcome, accepted or rejected.

    Every string in it is valid Unicode text: what a command line or a file handed in that
    was not text appears escaped in ``raw`` (see :func:`escape_undecodable`).
    """
    if isinstance(result, Rejection):
        return {
            "valid": False,
            "kind": None,
            "id": None,
            "aim": _text(result.aim),
            "raw": _text(result.raw),
            "error": _text(result.reason),
            "details": {},
        }
    return {
        "valid": True,
        "kind": result.kind,
        "id": result.id,
        "aim": _text(result.aim),
        "raw": _text(result.raw),
        "error": None,
        "details": {k: escape_undecodable(v) for k, v in result.details.items()},
    }
