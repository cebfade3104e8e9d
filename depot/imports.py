"""Parcel imports: the merchants' CSV and JSON files that tell the depot what is arriving.

Owns reading one import file into :class:`ParcelRecord` s and saying, row by row, what is wrong
with the rest. A bad row is reported with its line (CSV) or index (JSON), the field and a reason
a merchant can act on, and never stops the other rows: a depot must not refuse 400 parcels
because of one. Problems with the file as a whole (not JSON, no header, a required column
missing) are reported once, with ``line_or_index`` None or the header's line, and no records.

Must never: accept a parcel id that :func:`parcel.identify.identify` rejects (the van and the
locker would refuse to scan it), keep the second row of a parcel id already seen in the file,
guess a value that is missing or malformed, or touch the depot's database (the caller decides
what to do with the records; a parcel already known from an earlier import is its business).

Fields (CSV column names and JSON keys; case, spaces and hyphens in names do not matter)::

    field             required  accepted names
    parcel            yes       parcel, parcel_id, barcode, tracking, tracking_number, id
    recipient         yes       recipient, recipient_name, name, consignee
    address           yes       address, delivery_address, street_address
    lat, lon          yes       lat/latitude, lon/lng/long/longitude (WGS 84 degrees)
    window_from       no        window_from, time_from, window_start   ("HH:MM")
    window_to         no        window_to, time_to, window_end         ("HH:MM")
    window            no        window: "HH:MM-HH:MM" (JSON also ["HH:MM", "HH:MM"])
    instructions      no        instructions, delivery_instructions, notes, note
    merchant          yes       merchant, shipper, sender
    webhook           yes       webhook, webhook_url, merchant_webhook, notify_url,
                                notification_url   (http or https: the merchant's endpoint)
    customer_webhook  no        customer_webhook, customer_webhook_url   (http or https)
    size              no        size, locker_size   ("S", "M" or "L"; default "S")
    locker_ok         no        locker_ok, accepts_locker   (default true: the recipient
                                accepts a redirect to a parcel locker; true/false, yes/no, 1/0)

    delivery preferences (``parcel.care.Care``; docs/DELIVERY.md, "Delivery preferences"):
    safe_place        no        safe_place, safe_place_ok   (default no: a safe-place drop is
                                allowed only with the customer's word)
    safe_place_note   no        safe_place_note, safe_place_where   (where, at most 200
                                characters; only with safe_place yes)
    neighbour_ok      no        neighbour_ok, neighbor_ok   (default yes)
    signature         no        signature, signature_required   (default no: leave nothing
                                without a signature and the signer's printed name)
    age_min           no        age_min, min_age   (16, 18 or 21, or blank: an ID check)
    locker_instead    no        locker_instead, prefer_locker   (default no: a locker rather
                                than the door; needs locker_ok, a customer_webhook for the
                                pickup code, and no age_min: a locker checks no ID)
    care              no        care   (JSON only: the whole preferences object,
                                ``Care.from_doc``; instead of the six fields above)
    access_code       no        access_code, door_code, entry_code   (the building's code, at
                                most 40 characters, no control characters or line breaks)

    the parcel itself (vehicle planning):
    weight_kg         no        weight_kg   (kg, more than 0 and at most 31.5: a parcel
                                one person carries, the parcel networks' limit; default 2)
    volume_l          no        volume_l, volume_litres   (litres, more than 0 and at most 500)
    dims_cm           no        dims_cm, dimensions_cm   ("LxWxH" in cm, each side at most
                                200; gives volume_l; not with volume_l)

Decisions, each of which a merchant may meet:

- The parcel id is the barcode text. ``<GS>`` and ``\\x1d`` (the four characters) stand for the
  GS separator of GS1 codes, as on the ``lastmile identify`` command line; a real GS byte is
  fine too. The record keeps the canonical id and ``raw``, the text a scanner would send.
- A parcel id seen on an earlier row of the same file is an error on the later row, even when
  the earlier row was rejected for something else: the file disagrees with itself and only
  the merchant knows which row is right.
- A time window is both ends or neither; the start must be before the end; ``9:00`` is read
  as ``09:00``. The window ends are times of the delivery day, no dates or time zones.
- ``lat``/``lon`` must be finite numbers in range, with a point as the decimal separator;
  exactly 0, 0 is refused as a failed geocode.
- A number in scientific notation where a parcel id should be is reported as a spreadsheet's
  mangling of a long number (format the column as text).
- Text may not contain control characters other than tab and line breaks (they would reach
  the courier's screen); a multi-line address stays multi-line.
- Columns and keys with no meaning here are ignored and listed in ``warnings`` (once each), so
  a typo such as ``instrucitons`` does not vanish silently. Two columns that mean the same
  field make the file unusable (which one is right?).
- CSV: UTF-8 with or without a BOM (UTF-16 with a BOM is read too); a row that is not valid
  UTF-8 is rejected alone. The delimiter is the one of ``,`` ``;`` tab that occurs most in the
  header line (spreadsheets in much of Europe write ``;``). Blank rows are skipped. Line
  numbers count physical lines, the header being line 1.
- JSON: a list of objects, or ``{"parcels": [...]}``; ``line_or_index`` is the 0-based index
  in that list. A parcel id must be a JSON string (a number would lose leading zeros).
- Preferences that cannot hold together are the row's problem, not settled by a guess: a
  safe place for a parcel that needs a signature or an ID check, a safe place's note without
  the safe place, a locker instead where lockers are refused, for an age-checked parcel, or
  without a customer_webhook to send the pickup code to. An access code is text (a JSON
  number would lose its leading zeros).
- Weights and sizes are read only from names that carry their unit (``weight_kg``, not
  ``weight``: grams and pounds exist); a blank weight is :data:`DEFAULT_WEIGHT_KG`, a blank
  volume is the locker size's (``ParcelRecord.volume``). A point is the decimal separator.

``source`` is the file's content when it is ``bytes`` and a path when it is a ``str`` or a
``Path``. The format is the ``format`` argument, else the path's suffix, else the content's
first character (``[`` or ``{`` is JSON).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from depot.errors import DepotError
from depot.policy import LOCKER_SIZES
from depot.preferences import locker_instead_refusal
from parcel.care import AGE_LIMITS, Care, CareError
from parcel.identify import (
    KINDS,
    Kind,
    Rejection,
    escape_undecodable,
    identify,
    parse_cli_code,
)

__all__ = [
    "CARE_FIELDS",
    "DEFAULT_VOLUME_L",
    "DEFAULT_WEIGHT_KG",
    "FIELD_NAMES",
    "MAX_ACCESS_CODE",
    "MAX_SIDE_CM",
    "MAX_VOLUME_L",
    "MAX_WEIGHT_KG",
    "REQUIRED_FIELDS",
    "ImportFormat",
    "ImportProblem",
    "ImportResult",
    "ParcelImportError",
    "ParcelRecord",
    "read_import",
]

ImportFormat = Literal["csv", "json"]

#: Each field and the names a column or key may have for it (already normalised).
FIELD_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "parcel": ("parcel", "parcel_id", "barcode", "tracking", "tracking_number", "id"),
        "recipient": ("recipient", "recipient_name", "name", "consignee"),
        "address": ("address", "delivery_address", "street_address"),
        "lat": ("lat", "latitude"),
        "lon": ("lon", "lng", "long", "longitude"),
        "window_from": ("window_from", "time_from", "window_start"),
        "window_to": ("window_to", "time_to", "window_end"),
        "window": ("window",),
        "instructions": ("instructions", "delivery_instructions", "notes", "note"),
        "merchant": ("merchant", "shipper", "sender"),
        "webhook": ("webhook", "webhook_url", "merchant_webhook", "notify_url", "notification_url"),
        "customer_webhook": ("customer_webhook", "customer_webhook_url"),
        "size": ("size", "locker_size"),
        "locker_ok": ("locker_ok", "accepts_locker"),
        "safe_place": ("safe_place", "safe_place_ok"),
        "safe_place_note": ("safe_place_note", "safe_place_where"),
        "neighbour_ok": ("neighbour_ok", "neighbor_ok"),
        "signature": ("signature", "signature_required"),
        "age_min": ("age_min", "min_age"),
        "locker_instead": ("locker_instead", "prefer_locker"),
        "care": ("care",),
        "access_code": ("access_code", "door_code", "entry_code"),
        # Names with their unit only: a bare "weight" may be grams or pounds (never guessed).
        "weight_kg": ("weight_kg",),
        "volume_l": ("volume_l", "volume_litres"),
        "dims_cm": ("dims_cm", "dimensions_cm"),
    }
)
#: The fields that make a parcel's care, each of which ``care`` (JSON) gives instead.
CARE_FIELDS = (
    "safe_place", "safe_place_note", "neighbour_ok", "signature", "age_min", "locker_instead"
)
#: The heaviest parcel taken (kg): what one person may carry, the parcel networks' limit
#: (DHL Paket and PostNL both stop at 31.5 kg; heavier goods go as freight).
MAX_WEIGHT_KG = 31.5
#: The largest parcel taken (litres; DHL's largest, 120x60x60 cm, is 432 l) and its longest
#: side (cm).
MAX_VOLUME_L = 500.0
MAX_SIDE_CM = 200.0
#: The longest access code taken: a door code, a key safe's, "1234# then 2nd floor bell".
MAX_ACCESS_CODE = 40
REQUIRED_FIELDS = ("parcel", "recipient", "address", "lat", "lon", "merchant", "webhook")

_ALIASES = {alias: name for name, aliases in FIELD_NAMES.items() for alias in aliases}
_DEFAULT_SIZE = "S"
#: A parcel's weight when the import gives none (kg): a typical e-commerce parcel.
DEFAULT_WEIGHT_KG = 2.0
#: A parcel's volume when the import gives none (litres), by locker size: about half of the
#: compartment it fits (InPost A 8x38x64 cm is 19.5 l, B 46 l, C 100 l; field reference 5).
DEFAULT_VOLUME_L: Mapping[str, float] = MappingProxyType({"S": 10.0, "M": 23.0, "L": 50.0})
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_WINDOW_TEXT = re.compile(r"\s*([0-9:]+)\s*[-–]\s*([0-9:]+)\s*")
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab and line breaks are text
_DIMS = re.compile(r"\s*([0-9.]+)\s*[xX×*]\s*([0-9.]+)\s*[xX×*]\s*([0-9.]+)\s*(?:cm)?\s*")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BINARY_SAMPLE = 8192  # bytes looked at to tell a text file from a binary one
_BINARY_SHARE = 0.1  # more than this share of odd bytes in the sample: not a text file
_BINARY_MIN = 4  # ...and at least this many: one bad byte in a tiny file is a bad row


class ParcelImportError(DepotError):
    """An import that could not be read at all, or a stored record that is not one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParcelRecord:
    """One parcel the depot expects: who gets it, where, and whom to tell about it.

    ``id`` is the canonical parcel id (the same string on the manifest, the van's and the
    locker's events); ``raw`` the barcode text as a scanner would send it; ``kind`` which
    identifier it is (``parcel.identify.KINDS``).
    """

    id: str
    raw: str
    kind: Kind
    recipient: str
    address: str
    lat: float
    lon: float
    merchant: str
    webhook: str
    window: tuple[str, str] | None = None
    instructions: str = ""
    customer_webhook: str | None = None
    size: str = _DEFAULT_SIZE
    locker_ok: bool = True
    care: Care = field(default_factory=Care.default)
    access_code: str = ""
    weight_kg: float = DEFAULT_WEIGHT_KG
    volume_l: float | None = None

    @property
    def volume(self) -> float:
        """Litres the parcel takes in a vehicle: its own, else :data:`DEFAULT_VOLUME_L` of its
        locker size."""
        return self.volume_l if self.volume_l is not None else DEFAULT_VOLUME_L[self.size]

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready dict for storage; :meth:`from_doc` reads it back."""
        return {
            "id": self.id,
            "raw": self.raw,
            "kind": self.kind,
            "recipient": self.recipient,
            "address": self.address,
            "lat": self.lat,
            "lon": self.lon,
            "window": list(self.window) if self.window else None,
            "instructions": self.instructions,
            "merchant": self.merchant,
            "webhook": self.webhook,
            "customer_webhook": self.customer_webhook,
            "size": self.size,
            "locker_ok": self.locker_ok,
            "care": self.care.to_doc(),
            "access_code": self.access_code,
            "weight_kg": self.weight_kg,
            "volume_l": self.volume_l,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ParcelRecord:
        """Read back a stored :meth:`to_doc`; raises :class:`ParcelImportError` on a bad one.

        The id is not re-identified: a record stored under today's rules stays loadable.
        """

        def text(key: str, *, optional: bool = False) -> Any:
            value = doc.get(key)
            if optional and value is None:
                return None
            if not isinstance(value, str):
                raise ParcelImportError(f"stored parcel record: {key} must be a string")
            return value

        def number(key: str) -> float:
            value = doc.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ParcelImportError(f"stored parcel record: {key} must be a number")
            return float(value)

        kind = text("kind")
        if kind not in KINDS:
            raise ParcelImportError(f"stored parcel record: unknown kind {kind!r}")
        window = doc.get("window")
        if window is not None and not (
            isinstance(window, list | tuple)
            and len(window) == 2
            and all(isinstance(w, str) for w in window)
        ):
            raise ParcelImportError("stored parcel record: window must be [from, to] or null")
        locker_ok = doc.get("locker_ok", True)
        if not isinstance(locker_ok, bool):
            raise ParcelImportError("stored parcel record: locker_ok must be true or false")
        size = doc.get("size", _DEFAULT_SIZE)
        if size not in LOCKER_SIZES:
            raise ParcelImportError(f"stored parcel record: size {size!r} is not S, M or L")
        try:
            care = Care.from_doc(doc.get("care") or {})  # records from before care: the default
        except CareError as exc:
            raise ParcelImportError(f"stored parcel record: {exc}") from None
        weight = doc.get("weight_kg", DEFAULT_WEIGHT_KG)
        volume = doc.get("volume_l")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not weight > 0:
            raise ParcelImportError("stored parcel record: weight_kg must be a positive number")
        if volume is not None and (
            not isinstance(volume, int | float) or isinstance(volume, bool) or not volume > 0
        ):
            raise ParcelImportError("stored parcel record: volume_l must be a positive number")
        return cls(
            id=text("id"),
            raw=text("raw"),
            kind=kind,
            recipient=text("recipient"),
            address=text("address"),
            lat=number("lat"),
            lon=number("lon"),
            merchant=text("merchant"),
            webhook=text("webhook"),
            window=(window[0], window[1]) if window else None,
            instructions=text("instructions", optional=True) or "",
            customer_webhook=text("customer_webhook", optional=True),
            size=size,
            locker_ok=locker_ok,
            care=care,
            access_code=text("access_code", optional=True) or "",
            weight_kg=float(weight),
            volume_l=None if volume is None else float(volume),
        )


@dataclass(frozen=True)
class ImportProblem:
    """What is wrong where: a CSV line (header = 1) or a JSON index, or None for the file.

    ``parcel`` is the row's parcel id text when it could be read, to help find the row.
    """

    line_or_index: int | None
    field: str
    reason: str
    parcel: str | None = None

    def __post_init__(self) -> None:
        # Column names, keys and parcel text come from the file: bytes that were not UTF-8
        # (and lone surrogates from JSON escapes) are shown escaped, so a report is text.
        for name in ("field", "reason", "parcel"):
            value = getattr(self, name)
            if isinstance(value, str) and _SURROGATE.search(value):
                object.__setattr__(self, name, escape_undecodable(value))


@dataclass
class ImportResult:
    """The records read, the rows refused (``errors``) and what was ignored (``warnings``)."""

    format: ImportFormat
    records: list[ParcelRecord] = field(default_factory=list)
    errors: list[ImportProblem] = field(default_factory=list)
    warnings: list[ImportProblem] = field(default_factory=list)


def read_import(source: str | Path | bytes, *, format: ImportFormat | None = None) -> ImportResult:
    """Read one import file: every good row becomes a record, every bad one an error.

    Raises :class:`ParcelImportError` only when the file cannot be read at all (no such file,
    an unknown ``format``, a ``str`` that holds content rather than a path).
    """
    if isinstance(source, bytes):
        data, suffix = source, ""
    else:
        if isinstance(source, str) and ("\n" in source or source.lstrip()[:1] in ("[", "{")):
            raise ParcelImportError(
                "a str source is a file path; pass the file's contents as bytes"
            )
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ParcelImportError(f"cannot read {path}: {exc.strerror or exc}") from None
        suffix = path.suffix.lower()

    if _is_binary(data):
        shown = "the file" if isinstance(source, bytes) else str(source)
        raise ParcelImportError(f"{shown} is not a CSV or JSON file")
    if format is None:
        if suffix in (".csv", ".json"):
            format = "csv" if suffix == ".csv" else "json"
        else:
            format = "json" if _first_character(data) in ("[", "{") else "csv"
    if format == "csv":
        return _read_csv(data)
    if format == "json":
        return _read_json(data)
    raise ParcelImportError(f"unknown import format {format!r} (csv or json)")


# --- files ------------------------------------------------------------------------------------


def _decode(data: bytes, errors: str) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors)
    return data.decode("utf-8-sig", errors)


def _is_binary(data: bytes) -> bool:
    """Whether the data is no text file at all (an image, an archive, a spreadsheet's .xlsx).

    Text holds few bytes that are neither UTF-8 nor text characters (NUL, other control
    bytes); UTF-16, full of NULs, is read only with its BOM. A CSV from a Latin-1 spreadsheet,
    or with a stray control byte in a cell, still counts as text, and the rows concerned are
    refused one by one.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    sample = data[:_BINARY_SAMPLE].decode("utf-8", "surrogateescape")
    odd = sum(1 for c in sample if _SURROGATE.match(c) or _CONTROL.match(c))
    return odd >= _BINARY_MIN and odd > len(sample) * _BINARY_SHARE


def _first_character(data: bytes) -> str:
    return _decode(data[:64], "ignore").lstrip()[:1]


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").casefold())


class _Rows:
    """Turns one row's fields into a record or problems, and remembers the ids seen."""

    def __init__(self, result: ImportResult, unit: str) -> None:
        self.result = result
        self.unit = unit  # "line" or "index", for the duplicate's message
        self.seen: dict[str, int] = {}

    def add(self, where: int, values: Mapping[str, Any]) -> None:
        problems: list[tuple[str, str]] = []
        record = _record(values, problems.append, self._duplicate_of(where), self.unit)
        shown = _shown_parcel(values.get("parcel"))
        for field_name, reason in problems:
            self.result.errors.append(ImportProblem(where, field_name, reason, shown))
        if record is not None:
            self.result.records.append(record)

    def _duplicate_of(self, where: int) -> Callable[[str], int | None]:
        def check(parcel_id: str) -> int | None:
            first = self.seen.setdefault(parcel_id, where)
            return None if first == where else first

        return check


def _read_csv(data: bytes) -> ImportResult:
    result = ImportResult("csv")
    try:
        text = _decode(data, "surrogateescape")
    except UnicodeDecodeError as exc:  # only UTF-16 (bench fuzz): a byte cut off, say
        result.errors.append(
            ImportProblem(None, "file", f"a UTF-16 byte-order mark, but not UTF-16: {exc.reason}")
        )
        return result
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    if not header_line:
        result.errors.append(ImportProblem(None, "file", "the file is empty"))
        return result
    delimiter = max((",", ";", "\t"), key=header_line.count)
    rows = _csv_rows(text, delimiter, result)
    try:
        header_at, header = next(rows)
    except StopIteration:  # pragma: no cover - header_line above is not blank
        result.errors.append(ImportProblem(None, "file", "the file is empty"))
        return result

    columns: list[str | None] = []
    taken: dict[str, str] = {}
    for raw_name in header:
        name = _normalise_name(raw_name)
        canonical = _ALIASES.get(name)
        if canonical is None:
            columns.append(None)
            if name:
                result.warnings.append(
                    ImportProblem(header_at, raw_name, "unknown column, ignored")
                )
            continue
        if canonical in taken:
            result.errors.append(
                ImportProblem(
                    header_at,
                    canonical,
                    f"columns {taken[canonical]!r} and {raw_name!r} both mean {canonical}",
                )
            )
            return result
        taken[canonical] = raw_name
        columns.append(canonical)
    missing = [f for f in REQUIRED_FIELDS if f not in taken]
    if missing and any(_is_parcel_id(cell) for cell in header):
        result.errors.append(
            ImportProblem(
                header_at,
                "file",
                "the first line is a parcel, not a header: the file needs a header row naming "
                "its columns",
            )
        )
        return result
    if missing:
        for f in missing:
            names = ", ".join(FIELD_NAMES[f])
            result.errors.append(
                ImportProblem(header_at, f, f"no column for {f} (accepted names: {names})")
            )
        return result

    parser = _Rows(result, "line")
    for where, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        extra = [cell for cell in row[len(columns) :] if cell.strip()]
        if extra:
            result.errors.append(
                ImportProblem(
                    where,
                    "row",
                    f"the row has {len(row)} fields, the header has {len(columns)}",
                    _shown_parcel(_cell(row, columns, "parcel")),
                )
            )
            continue
        undecodable = next((c for c in row if _SURROGATE.search(c)), None)
        if undecodable is not None:
            result.errors.append(
                ImportProblem(
                    where,
                    "row",
                    "the row is not UTF-8 text (save the file as UTF-8)",
                    None,
                )
            )
            continue
        values = {
            name: row[i] for i, name in enumerate(columns) if name is not None and i < len(row)
        }
        parser.add(where, values)
    return result


def _csv_rows(text: str, delimiter: str, result: ImportResult) -> Iterator[tuple[int, list[str]]]:
    """Rows with the physical line each starts on; a row the csv module refuses is reported."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    done = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            result.errors.append(ImportProblem(done + 1, "row", f"unreadable CSV: {exc}"))
            if reader.line_num == done:
                return  # the reader cannot get past it
            done = reader.line_num
            continue
        start, done = done + 1, reader.line_num
        if row:
            yield start, row


def _is_parcel_id(text: str) -> bool:
    try:
        identify(parse_cli_code(text.strip()))
    except Rejection:
        return False
    return True


def _cell(row: Sequence[str], columns: Sequence[str | None], name: str) -> str | None:
    try:
        return row[columns.index(name)]
    except (ValueError, IndexError):
        return None


def _read_json(data: bytes) -> ImportResult:
    result = ImportResult("json")
    try:
        doc = json.loads(_decode(data, "strict"))
    except UnicodeDecodeError as exc:
        result.errors.append(ImportProblem(None, "file", f"not UTF-8 text: {exc.reason}"))
        return result
    except ValueError as exc:
        result.errors.append(ImportProblem(None, "file", f"not JSON: {exc}"))
        return result
    except RecursionError:  # found by `bench fuzz`: a file of a thousand nested brackets
        result.errors.append(ImportProblem(None, "file", "not JSON a depot reads: nested too deep"))
        return result
    if isinstance(doc, dict) and isinstance(doc.get("parcels"), list):
        items = doc["parcels"]
    elif isinstance(doc, list):
        items = doc
    else:
        result.errors.append(
            ImportProblem(None, "file", 'expected a list of parcels or {"parcels": [...]}')
        )
        return result

    parser = _Rows(result, "index")
    warned: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            result.errors.append(ImportProblem(index, "row", "a parcel must be a JSON object"))
            continue
        values: dict[str, Any] = {}
        clash = None
        for key, value in item.items():
            canonical = _ALIASES.get(_normalise_name(str(key)))
            if canonical is None:
                if key not in warned:
                    warned.add(key)
                    result.warnings.append(ImportProblem(index, key, "unknown key, ignored"))
                continue
            if canonical in values:
                clash = canonical
            values[canonical] = value
        if clash is not None:
            result.errors.append(
                ImportProblem(index, clash, f"two keys of this object mean {clash}")
            )
            continue
        parser.add(index, values)
    return result


# --- fields -----------------------------------------------------------------------------------

_Report = Callable[[tuple[str, str]], None]


def _record(
    values: Mapping[str, Any],
    report: _Report,
    duplicate_of: Callable[[str], int | None],
    unit: str,
) -> ParcelRecord | None:
    """The record for one row, or None; every problem found is reported, not just the first."""
    count = 0

    def problem(field_name: str, reason: str) -> None:
        nonlocal count
        count += 1
        report((field_name, reason))

    parcel = _parcel(values.get("parcel"), problem)
    if parcel is not None:
        first = duplicate_of(parcel[0])
        if first is not None:
            problem("parcel", f"parcel {parcel[0]} is already on {unit} {first}")
    recipient = _text(values.get("recipient"), "recipient", problem, required=True)
    address = _text(values.get("address"), "address", problem, required=True)
    lat = _coordinate(values.get("lat"), "lat", 90.0, problem)
    lon = _coordinate(values.get("lon"), "lon", 180.0, problem)
    if lat == 0.0 and lon == 0.0:
        problem("lat", "0, 0 is not a geocoded address (the geocoder found nothing)")
    window = _window(values, problem)
    instructions = _text(values.get("instructions"), "instructions", problem)
    merchant = _text(values.get("merchant"), "merchant", problem, required=True)
    webhook = _url(values.get("webhook"), "webhook", problem, required=True)
    customer_webhook = _url(values.get("customer_webhook"), "customer_webhook", problem)
    size = _size(values.get("size"), problem)
    locker_ok = _flag(values.get("locker_ok"), "locker_ok", problem)
    care = _care(
        values,
        locker_ok=locker_ok,
        customer_webhook=not _blank(values.get("customer_webhook")),
        problem=problem,
    )
    access_code = _access_code(values.get("access_code"), problem)
    weight = _amount(values.get("weight_kg"), "weight_kg", "kg", MAX_WEIGHT_KG, problem)
    volume = _volume(values, problem)

    if count or parcel is None or lat is None or lon is None or webhook is None:
        return None
    return ParcelRecord(
        id=parcel[0],
        raw=parcel[1],
        kind=parcel[2],
        recipient=recipient or "",
        address=address or "",
        lat=lat,
        lon=lon,
        merchant=merchant or "",
        webhook=webhook,
        window=window,
        instructions=instructions or "",
        customer_webhook=customer_webhook,
        size=size,
        locker_ok=locker_ok,
        care=care,
        access_code=access_code,
        weight_kg=DEFAULT_WEIGHT_KG if weight is None else weight,
        volume_l=volume,
    )


def _shown_parcel(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parcel(value: Any, problem: Callable[[str, str], None]) -> tuple[str, str, Kind] | None:
    if _blank(value):
        problem("parcel", "missing parcel id")
        return None
    if not isinstance(value, str):
        problem("parcel", "parcel id must be text (a number loses its leading zeros)")
        return None
    code = parse_cli_code(value.strip())
    try:
        parcel = identify(code)
    except Rejection as exc:
        if _SCIENTIFIC.fullmatch(code):
            problem(
                "parcel",
                f"{code!r} is a number a spreadsheet rewrote in scientific notation; "
                "format the column as text and export again",
            )
        else:
            problem("parcel", exc.reason)
        return None
    return parcel.id, code, parcel.kind


def _text(
    value: Any, name: str, problem: Callable[[str, str], None], *, required: bool = False
) -> str | None:
    if _blank(value):
        if required:
            problem(name, f"missing {name}")
        return None
    if not isinstance(value, str):
        problem(name, f"{name} must be text")
        return None
    text = value.strip()
    if _CONTROL.search(text):
        problem(name, f"{name} contains control characters")
        return None
    if _SURROGATE.search(text):  # a JSON escape such as "\ud800" that is no character
        problem(name, f"{name} is not valid Unicode text")
        return None
    return text


def _coordinate(
    value: Any, name: str, limit: float, problem: Callable[[str, str], None]
) -> float | None:
    if _blank(value):
        problem(name, f"missing {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problem(name, f"{name} must be a number")
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            hint = " (use a point as the decimal separator)" if "," in text else ""
            problem(name, f"{name} {text!r} is not a number{hint}")
            return None
    else:
        number = float(value)
    if not math.isfinite(number) or abs(number) > limit:
        problem(name, f"{name} {value!r} is not a number within ±{limit:g} degrees")
        return None
    return number


def _time(value: str, name: str, problem: Callable[[str, str], None]) -> str | None:
    m = _TIME.fullmatch(value.strip())
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        problem(name, f"{name} {value!r} is not a time of day HH:MM (00:00 to 23:59)")
        return None
    return f"{int(m.group(1)):02d}:{m.group(2)}"


def _window(
    values: Mapping[str, Any], problem: Callable[[str, str], None]
) -> tuple[str, str] | None:
    whole, start, end = values.get("window"), values.get("window_from"), values.get("window_to")
    if not _blank(whole):
        if not (_blank(start) and _blank(end)):
            problem("window", "give window, or window_from and window_to, not both")
            return None
        if isinstance(whole, list) and len(whole) == 2:
            start, end = whole
        elif isinstance(whole, str) and (m := _WINDOW_TEXT.fullmatch(whole)):
            start, end = m.groups()
        else:
            problem("window", f"window {whole!r} is not HH:MM-HH:MM")
            return None
    if _blank(start) and _blank(end):
        return None
    if _blank(start) or _blank(end):
        missing = "window_from" if _blank(start) else "window_to"
        problem(missing, "a time window needs both window_from and window_to")
        return None
    if not (isinstance(start, str) and isinstance(end, str)):
        problem("window", "window times must be text HH:MM")
        return None
    first = _time(start, "window_from", problem)
    last = _time(end, "window_to", problem)
    if first is None or last is None:
        return None
    if first >= last:
        problem("window_to", f"the window ends ({last}) before it starts ({first})")
        return None
    return first, last


def _url(
    value: Any, name: str, problem: Callable[[str, str], None], *, required: bool = False
) -> str | None:
    text = _text(value, name, problem, required=required)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        problem(name, f"{name} is not a valid URL: {exc}")
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        problem(name, f"{name} {text!r} must be an http:// or https:// URL with a host")
        return None
    if any(c.isspace() for c in text):
        problem(name, f"{name} must not contain spaces")
        return None
    return text


def _size(value: Any, problem: Callable[[str, str], None]) -> str:
    if _blank(value):
        return _DEFAULT_SIZE
    size = value.strip().upper() if isinstance(value, str) else value
    if size not in LOCKER_SIZES:
        problem("size", f"size {value!r} is not one of {', '.join(LOCKER_SIZES)}")
        return _DEFAULT_SIZE
    return str(size)


def _flag(
    value: Any, name: str, problem: Callable[[str, str], None], *, default: bool = True
) -> bool:
    if _blank(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().casefold()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    problem(name, f"{name} {value!r} is not true/false (also yes/no, 1/0)")
    return default


def _care(
    values: Mapping[str, Any],
    *,
    locker_ok: bool,
    customer_webhook: bool,
    problem: Callable[[str, str], None],
) -> Care:
    """The row's delivery preferences: the JSON ``care`` object, or the separate fields (each
    blank one takes :meth:`Care.default`'s value); then the rules no care may break here."""
    given = [f for f in CARE_FIELDS if not _blank(values.get(f))]
    whole = values.get("care")
    if not _blank(whole):
        if given:
            problem("care", f"give care or the separate fields ({', '.join(given)}), not both")
            return Care.default()
        if not isinstance(whole, Mapping):
            problem("care", "care must be a JSON object (in a CSV file, use the separate columns)")
            return Care.default()
        try:
            care = Care.from_doc(whole)
        except CareError as exc:
            problem("care", str(exc))
            return Care.default()
    else:
        safe_place = _flag(values.get("safe_place"), "safe_place", problem, default=False)
        note = _text(values.get("safe_place_note"), "safe_place_note", problem) or ""
        if note and not safe_place:
            problem("safe_place_note", "a safe place's note needs safe_place yes")
        try:
            care = Care(
                safe_place=safe_place,
                safe_place_note=note,
                neighbour=_flag(values.get("neighbour_ok"), "neighbour_ok", problem),
                signature=_flag(values.get("signature"), "signature", problem, default=False),
                age_min=_age(values.get("age_min"), problem),
                locker_instead=_flag(
                    values.get("locker_instead"), "locker_instead", problem, default=False
                ),
            )
        except CareError as exc:  # the note's length: the only rule the fields leave to Care
            problem("safe_place_note", str(exc))
            return Care.default()
    if care.safe_place and care.needs_signature:
        what = "an ID check" if care.age_min is not None else "a signature"
        problem("safe_place", f"a parcel that needs {what} cannot be left in a safe place")
    if care.locker_instead:
        # The one rule planning and the customer's page apply too (depot.preferences).
        why = locker_instead_refusal(
            {"locker_ok": locker_ok, "customer_webhook": customer_webhook}, care
        )
        if why is not None:
            problem("locker_instead", f"locker_instead is not possible: {why}")
    return care


def _age(value: Any, problem: Callable[[str, str], None]) -> int | None:
    if _blank(value):
        return None
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, int) and not isinstance(text, bool) and text in AGE_LIMITS:
        return text
    limits = ", ".join(map(str, AGE_LIMITS))
    problem("age_min", f"age_min {value!r} is not one of {limits} (or blank: no age check)")
    return None


def _access_code(value: Any, problem: Callable[[str, str], None]) -> str:
    if _blank(value):
        return ""
    if not isinstance(value, str):
        problem("access_code", "access_code must be text (a number loses its leading zeros)")
        return ""
    text = value.strip()
    if _CONTROL.search(text) or any(c in text for c in "\t\r\n"):
        problem("access_code", "access_code must be one line without control characters")
        return ""
    if _SURROGATE.search(text):
        problem("access_code", "access_code is not valid Unicode text")
        return ""
    if len(text) > MAX_ACCESS_CODE:
        problem("access_code", f"access_code is longer than {MAX_ACCESS_CODE} characters")
        return ""
    return text


def _amount(
    value: Any, name: str, unit: str, limit: float, problem: Callable[[str, str], None]
) -> float | None:
    """A positive number up to `limit` (None when blank); a bad one is reported."""
    if _blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problem(name, f"{name} must be a number")
        return None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            hint = " (use a point as the decimal separator)" if "," in value else ""
            problem(name, f"{name} {value.strip()!r} is not a number{hint}")
            return None
    else:
        number = float(value)
    if not math.isfinite(number) or number <= 0:
        problem(name, f"{name} {value!r} must be more than 0 {unit}")
        return None
    if number > limit:
        why = ", the most one person may carry (send it as freight)" if unit == "kg" else ""
        problem(name, f"{name} {value!r} is over {limit:g} {unit}{why}")
        return None
    return number


def _volume(values: Mapping[str, Any], problem: Callable[[str, str], None]) -> float | None:
    """Litres from ``volume_l``, or from ``dims_cm`` ("LxWxH", JSON also [L, W, H])."""
    litres, dims = values.get("volume_l"), values.get("dims_cm")
    if not _blank(litres) and not _blank(dims):
        problem("dims_cm", "give volume_l or dims_cm, not both")
        return None
    if _blank(dims):
        return _amount(litres, "volume_l", "l", MAX_VOLUME_L, problem)
    if isinstance(dims, list) and len(dims) == 3:
        sides: list[Any] = list(dims)
    elif isinstance(dims, str) and (m := _DIMS.fullmatch(dims)):
        sides = list(m.groups())
    else:
        problem("dims_cm", f"dims_cm {dims!r} is not LxWxH in centimetres, such as 40x30x20")
        return None
    found = [_amount(side, "dims_cm", "cm", MAX_SIDE_CM, problem) for side in sides]
    if any(side is None for side in found):
        return None
    volume = math.prod(side for side in found if side is not None) / 1000.0
    if volume > MAX_VOLUME_L:
        problem("dims_cm", f"dims_cm {dims!r} is {volume:g} l, over {MAX_VOLUME_L:g} l")
        return None
    return volume
