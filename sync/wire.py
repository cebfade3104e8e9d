"""The MQTT wire contract between a device and the depot, version 1.

Owns the topic tree, the canonical form of an event that its hash chain is computed over, and
the compressed batch that carries events to the depot. It never touches a socket or a database:
the uplink and the depot do, and both speak through this module so they cannot disagree.
The contract is written down for people in docs/WIRE.md; a change here is a change there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from parcel.care import AGE_LIMITS
from sync.errors import WireError

WIRE_VERSION = 1
TOPIC_ROOT = f"lastmile/v{WIRE_VERSION}"
BATCH_CONTENT_TYPE = "application/vnd.lastmile.events.v1+json"
BATCH_ENCODING = "zlib"  # sent as MQTT v5 user property "enc"
MAX_BATCH_BYTES = 4 * 1024 * 1024  # a batch larger than this, decompressed, is refused
_ZLIB_LEVEL = 9
# What a JSON document from outside may hold (`read_json`): the depot's columns are 64-bit
# integers, and a payload nested without end only costs the depot's stack. A batch is level 1,
# its payload column level 2, so an event's payload may nest MAX_PAYLOAD_DEPTH levels.
MAX_JSON_DEPTH = 32
MAX_PAYLOAD_DEPTH = MAX_JSON_DEPTH - 2
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def events_topic(device: str) -> str:
    """Device → depot: batches of journal events (QoS 1)."""
    return f"{TOPIC_ROOT}/{device}/events"


def status_topic(device: str) -> str:
    """Device → everyone: retained online/offline status; also the device's last will."""
    return f"{TOPIC_ROOT}/{device}/status"


def ack_topic(device: str) -> str:
    """Depot → device: retained highest contiguous sequence number the depot has stored."""
    return f"{TOPIC_ROOT}/{device}/ack"


def command_topic(device: str, name: str = "#") -> str:
    """Depot → device: commands (later issues: manifests, locker reservations)."""
    return f"{TOPIC_ROOT}/{device}/cmd/{name}"


def split_topic(topic: str) -> tuple[str, str]:
    """`lastmile/v1/van-7/events` → (`van-7`, `events`); raises WireError for foreign topics."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != TOPIC_ROOT or not parts[2]:
        raise WireError(f"topic {topic!r} is not under {TOPIC_ROOT}/<device>/")
    return parts[2], "/".join(parts[3:])


# --- JSON from outside -------------------------------------------------------------------------

# A lone surrogate can only come from a `\uD800`-`\uDFFF` escape (strict UTF-8 refuses the raw
# bytes), so text without one of these needs no per-string check. It also matches an escaped
# backslash followed by "ud8…" and paired surrogates: only a filter, the walk decides.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(r"\d{19}")  # every integer beyond 64 bits has at least 19 digits


def _refuse_constant(name: str) -> Any:
    raise WireError(f"{name}, which is not a JSON number")


def read_json(data: bytes, what: str) -> Any:
    """Parse JSON that came from outside, refusing what the depot cannot store faithfully.

    Refused, each with a WireError naming the reason: bytes that are not strict UTF-8, NaN and
    ±Infinity (and numbers that overflow to them), integers outside 64 bits, nesting deeper than
    MAX_JSON_DEPTH, strings (keys too) holding a lone surrogate. Python's json takes all of
    these, and each later fails somewhere else (SQLite's INTEGER, the UTF-8 of a hash, the
    stack), where the reason is lost. `what` names the document in the message.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not UTF-8: {exc}") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except WireError as exc:
        raise WireError(f"{what} holds {exc}") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"{what} is not JSON: {exc}") from None
    except ValueError:  # the only other: an integer beyond Python's 4300-digit parse limit
        raise WireError(f"{what} holds an integer outside 64 bits") from None
    except RecursionError:
        raise WireError(f"{what} holds more than {MAX_JSON_DEPTH} levels of nesting") from None
    try:
        _check_tree(doc, MAX_JSON_DEPTH, _SURROGATE_ESCAPE.search(text) is not None)
    except WireError as exc:
        raise WireError(f"{what} holds {exc}") from None
    return doc


def _check_tree(doc: Any, max_depth: int, strings: bool) -> None:
    """One iterative walk over a parsed document: depth, integer range, finite floats, and
    (when `strings`) encodable strings. Raises WireError saying which rule was broken."""
    pending: list[tuple[Any, int]] = [([doc], 0)]
    while pending:
        node, depth = pending.pop()
        if type(node) is dict:
            if strings:
                for key in node:
                    _check_text(key)
            items = node.values()
        else:
            items = node
        for value in items:
            kind = type(value)
            if kind is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    raise WireError("an integer outside 64 bits")
            elif kind is str:
                if strings and not value.isascii():
                    _check_text(value)
            elif kind is float:
                if not math.isfinite(value):
                    raise WireError("a number too large for a 64-bit float")
            elif kind is dict or kind is list:
                if depth >= max_depth:
                    raise WireError(f"more than {max_depth} levels of nesting")
                pending.append((value, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("a string with a lone surrogate (not Unicode text)") from None


# --- events and their hash chain -------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One fact a device recorded, exactly as its journal holds it."""

    seq: int
    uuid: str  # 32 lower-case hex digits
    boot_id: str
    mono_ns: int
    wall_ns: int
    wall_synced: bool
    kind: str
    payload: Mapping[str, Any]
    hash: bytes


def canonical_payload(payload: Mapping[str, Any]) -> str:
    """The one JSON text of a payload that the journal stores and the hash covers.

    Raises ValueError (as `json.dumps` does for what JSON cannot say) for a payload the depot
    would refuse (`read_json`): NaN or an infinity, an integer outside 64 bits, nesting deeper
    than MAX_PAYLOAD_DEPTH, a lone surrogate. A device must not journal such an event: every
    resend of it would be quarantined and the events behind it would never arrive.
    """
    text = _canonical_text(payload)
    # Cheap filters on the text first: a payload can break a rule only if it has this many
    # brackets, a run of 19 digits, or non-ASCII text.
    suspect = (
        text.count("{") + text.count("[") > MAX_PAYLOAD_DEPTH
        or _LONG_DIGITS.search(text) is not None
        or not text.isascii()
    )
    if suspect:
        try:
            _check_tree(payload, MAX_PAYLOAD_DEPTH, True)
        except WireError as exc:
            raise ValueError(f"payload refused: it holds {exc}") from None
    return text


def _canonical_text(payload: Mapping[str, Any]) -> str:
    try:
        return json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except RecursionError:
        raise ValueError(
            f"payload refused: it holds more than {MAX_PAYLOAD_DEPTH} levels of nesting"
        ) from None
    except ValueError as exc:  # NaN or ±Infinity (allow_nan=False), or a circular reference
        raise ValueError(f"payload refused: {exc}") from None


def genesis_hash(journal_id: str) -> bytes:
    """The `previous hash` of a journal's first event: ties the chain to that journal."""
    return hashlib.sha256(b"lastmile-journal-v1\0" + journal_id.encode()).digest()


def chain_hash(
    prev: bytes,
    seq: int,
    uuid: str,
    boot_id: str,
    mono_ns: int,
    wall_ns: int,
    wall_synced: bool,
    kind: str,
    payload_json: str,
) -> bytes:
    """SHA-256 over the previous hash and the event's canonical fields.

    Any change to a stored event, a missing event or a reordering changes every later hash, so
    the depot detects tampering, corruption and forks by recomputing the chain of a batch.
    """
    fields = [seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind]
    head = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev + head.encode() + b"\n" + payload_json.encode()).digest()


# --- batches -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Consecutive events of one journal, as the depot receives them."""

    device: str
    journal_id: str
    prev_hash: bytes
    events: list[Event]

    @property
    def first_seq(self) -> int:
        return self.events[0].seq

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq


def encode_batch(device: str, journal_id: str, prev_hash: bytes, events: Sequence[Event]) -> bytes:
    """Columnar JSON, deltas for clocks, dictionaries for repeated strings, then zlib.

    Per-event hashes are not sent: the depot recomputes the chain from `prev` and must arrive
    at `last`. That keeps 64 incompressible hex digits per event off a cellular link.
    """
    if not events:
        raise WireError("a batch needs at least one event")
    for a, b in itertools.pairwise(events):
        if b.seq != a.seq + 1:
            raise WireError(f"batch events must be consecutive: {a.seq} then {b.seq}")
    boots: list[str] = []
    kinds: list[str] = []
    mono: list[int] = []
    wall: list[int] = []
    prev_mono = prev_wall = 0
    for e in events:
        if e.boot_id not in boots:
            boots.append(e.boot_id)
        if e.kind not in kinds:
            kinds.append(e.kind)
        mono.append(e.mono_ns - prev_mono)
        wall.append(e.wall_ns - prev_wall)
        prev_mono, prev_wall = e.mono_ns, e.wall_ns
    doc = {
        "v": WIRE_VERSION,
        "dev": device,
        "jnl": journal_id,
        "first": events[0].seq,
        "prev": prev_hash.hex(),
        "last": events[-1].hash.hex(),
        "boots": boots,
        "b": [boots.index(e.boot_id) for e in events],
        "u": [e.uuid for e in events],
        "m": mono,
        "w": wall,
        "s": "".join("1" if e.wall_synced else "0" for e in events),
        "kinds": kinds,
        "k": [kinds.index(e.kind) for e in events],
        "p": [e.payload for e in events],
    }
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return zlib.compress(text.encode(), _ZLIB_LEVEL)


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise WireError(f"field {name!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True)
class BatchHead:
    """What a batch says of itself before its chain is checked: whose, which events, and
    the hash it claims the last one has."""

    device: str
    journal_id: str
    first_seq: int
    last_seq: int
    last_hash: bytes


def decode_batch(payload: bytes) -> Batch:
    """Decompress, validate every field, and recompute the hash chain.

    Raises WireError with a reason a person can act on; the depot quarantines the payload
    with that reason and keeps running.
    """
    return verify_batch(*read_batch(payload))


def read_batch(payload: bytes) -> tuple[BatchHead, dict[str, Any]]:
    """Decompress and parse a batch and read its head, without recomputing its chain (the
    costly part): a depot that already holds every event of it need go no further."""
    try:
        d = zlib.decompressobj()
        text = d.decompress(payload, MAX_BATCH_BYTES)
    except zlib.error as exc:
        raise WireError(f"payload is not zlib data: {exc}") from None
    if d.unconsumed_tail:
        raise WireError(f"batch larger than {MAX_BATCH_BYTES} bytes decompressed")
    doc = read_json(text, "payload")
    if not isinstance(doc, dict):
        raise WireError("batch is not a JSON object")
    if doc.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported batch version {doc.get('v')!r}")
    device = _field(doc, "dev", str)
    journal_id = _field(doc, "jnl", str)
    first = _field(doc, "first", int)
    if first < 1:
        raise WireError(f"first sequence number {first} is below 1")
    try:
        last = bytes.fromhex(_field(doc, "last", str))
    except ValueError:
        raise WireError("prev/last are not hex") from None
    count = len(_field(doc, "u", list))
    if first + count - 1 > INT64_MAX:
        raise WireError(f"sequence numbers from {first} run beyond 64 bits")
    return BatchHead(device, journal_id, first, first + count - 1, last), doc


def verify_batch(head: BatchHead, doc: dict[str, Any]) -> Batch:
    """Validate every field of a batch `read_batch` parsed and recompute its hash chain."""
    device, journal_id, first, last = head.device, head.journal_id, head.first_seq, head.last_hash
    try:
        prev = bytes.fromhex(_field(doc, "prev", str))
    except ValueError:
        raise WireError("prev/last are not hex") from None
    boots = _field(doc, "boots", list)
    kinds = _field(doc, "kinds", list)
    b, u, m, w, k, p = (_field(doc, n, list) for n in ("b", "u", "m", "w", "k", "p"))
    s = _field(doc, "s", str)
    n = len(u)
    if n == 0 or any(len(col) != n for col in (b, m, w, k, p, s)):
        raise WireError("batch columns are empty or of different lengths")
    if not all(isinstance(x, str) for x in boots + kinds):
        raise WireError("boots/kinds must be strings")
    events: list[Event] = []
    h = prev
    mono = wall = 0
    for i in range(n):
        bi, ki, uid, dm, dw, pl = b[i], k[i], u[i], m[i], w[i], p[i]
        if not (isinstance(bi, int) and 0 <= bi < len(boots)):
            raise WireError(f"event {first + i}: bad boot index")
        if not (isinstance(ki, int) and 0 <= ki < len(kinds)):
            raise WireError(f"event {first + i}: bad kind index")
        if not (isinstance(uid, str) and len(uid) == 32 and _is_hex(uid)):
            raise WireError(f"event {first + i}: uuid is not 32 hex digits")
        if not (isinstance(dm, int) and isinstance(dw, int)):
            raise WireError(f"event {first + i}: clock deltas are not integers")
        if not isinstance(pl, dict):
            raise WireError(f"event {first + i}: payload is not an object")
        if s[i] not in "01":
            raise WireError(f"event {first + i}: sync flag is not 0/1")
        mono += dm
        wall += dw
        if not (INT64_MIN <= mono <= INT64_MAX and INT64_MIN <= wall <= INT64_MAX):
            raise WireError(f"event {first + i}: clock deltas add up beyond 64 bits")
        seq = first + i
        # The whole document passed read_json, so the payload needs no second check.
        h = chain_hash(
            h, seq, uid, boots[bi], mono, wall, s[i] == "1", kinds[ki], _canonical_text(pl)
        )
        events.append(Event(seq, uid, boots[bi], mono, wall, s[i] == "1", kinds[ki], pl, h))
    if h != last:
        raise WireError("hash chain does not verify: the recomputed last hash differs")
    return Batch(device=device, journal_id=journal_id, prev_hash=prev, events=events)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# --- acknowledgements and status -----------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """The depot's promise: every event of `journal_id` up to `seq` is durably stored.

    `resend_from` is set when the depot saw a gap (a batch got lost on the way): the device
    should resend from there at once instead of waiting for its ack timeout.
    `refused` is set when a batch contradicts the stored chain after `seq` (the device's own
    events changed after the depot stored them): resending cannot help, so the device carries
    what follows `seq` into a new journal.
    """

    journal_id: str
    seq: int
    resend_from: int | None = None
    refused: str | None = None


def encode_ack(ack: Ack) -> bytes:
    doc: dict[str, Any] = {"v": WIRE_VERSION, "jnl": ack.journal_id, "seq": ack.seq}
    if ack.resend_from is not None:
        doc["resend"] = ack.resend_from
    if ack.refused is not None:
        doc["refused"] = ack.refused
    return json.dumps(doc).encode()


def decode_ack(payload: bytes) -> Ack:
    doc = read_json(payload, "ack")
    if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
        raise WireError("ack is not a version-1 object")
    seq = _field(doc, "seq", int)
    if seq < 0:
        raise WireError("ack sequence number is negative")
    resend = doc.get("resend")
    if resend is not None and (not isinstance(resend, int) or isinstance(resend, bool)):
        raise WireError("ack resend is not an integer")
    refused = doc.get("refused")
    if refused is not None and not isinstance(refused, str):
        raise WireError("ack refused is not text")
    return Ack(_field(doc, "jnl", str), seq, resend_from=resend, refused=refused)


# A software version is a label for people ("0.1.0", "1.4.0rc2+deb12"), not a document: the
# depot keeps one this long at most and drops a longer one rather than store a stranger's text.
MAX_SOFTWARE_CHARS = 64
_SOFTWARE = re.compile(rf"[!-~]{{1,{MAX_SOFTWARE_CHARS}}}")  # printable ASCII, no spaces


@dataclass(frozen=True)
class Status:
    """What a device's retained status says of it, as far as the depot acts on it.

    `software` is the version of lastmile-edge it runs, or None when the status does not name
    one (a device from before versions were reported, or a malformed value).
    """

    state: str
    boot_id: str | None
    software: str | None


def encode_status(
    state: str, boot_id: str, *, software: str | None = None, **extra: Any
) -> bytes:
    """`online` (retained, sent on connect) or `offline` (the last will, and on clean stop).

    `software` rides in both, so that the depot knows what a device runs even when all it
    has heard of it since it started is its will.
    """
    doc: dict[str, Any] = {"v": WIRE_VERSION, "state": state, "boot": boot_id}
    if software is not None:
        doc["software"] = software
    return json.dumps({**doc, **extra}).encode()


def decode_status(payload: bytes) -> Status:
    """A device's status as the depot reads it; WireError only if it is not a JSON object.

    Lenient on purpose, unlike a batch: a status is the device's word about itself, shown to
    people and never acted on, so an unknown field is ignored (newer devices may add some), a
    missing state reads "unknown" and a `software` that is not short printable text reads as
    None, rather than one odd field hiding that the device is online.
    """
    doc = read_json(payload, "status")
    if not isinstance(doc, dict):
        raise WireError("status is not a JSON object")
    state, boot, software = doc.get("state"), doc.get("boot"), doc.get("software")
    return Status(
        state=state if isinstance(state, str) else "unknown",
        boot_id=boot if isinstance(boot, str) else None,
        software=software
        if isinstance(software, str) and _SOFTWARE.fullmatch(software)
        else None,
    )


# --- proof-of-delivery photos ------------------------------------------------------------------

PHOTO_CONTENT_TYPE = "application/vnd.lastmile.photo-chunk.v1"
MAX_PHOTO_BYTES = 1024 * 1024  # the depot refuses a photo larger than this (ours are ≤ 100 KB)
MAX_CHUNK_BYTES = 64 * 1024
_MAX_CHUNK_HEADER = 1024
#: A signature's strokes (docs/DELIVERY.md) travel like a photo, as this content type; any
#: other non-image type is refused.
SIGNATURE_CONTENT_TYPE = "application/vnd.lastmile.signature+json"


def photo_topic(device: str) -> str:
    """Device → depot: one chunk of a photo (QoS 1), sent only while no event waits."""
    return f"{TOPIC_ROOT}/{device}/up/photo"


def photo_ack_topic(device: str) -> str:
    """Depot → device: how much of a photo the depot holds, or that it is stored and verified."""
    return f"{TOPIC_ROOT}/{device}/ack/photo"


@dataclass(frozen=True)
class PhotoChunk:
    """Bytes `offset`..`offset+len(data)` of the photo whose SHA-256 is `sha256` (hex)."""

    sha256: str
    offset: int
    total: int
    content_type: str
    data: bytes


def _check_sha(text: object) -> str:
    if not (isinstance(text, str) and len(text) == 64 and _is_hex(text)):
        raise WireError("sha256 is not 64 lower-case hex digits")
    return text


def encode_photo_chunk(chunk: PhotoChunk) -> bytes:
    """A one-line JSON header, a newline, then the raw bytes: no base64 on a cellular link."""
    header = {
        "v": WIRE_VERSION,
        "sha": chunk.sha256,
        "off": chunk.offset,
        "total": chunk.total,
        "type": chunk.content_type,
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + chunk.data


def decode_photo_chunk(payload: bytes) -> PhotoChunk:
    """Parse and bound-check a chunk; WireError says what is wrong (the depot quarantines it)."""
    end = payload.find(b"\n", 0, _MAX_CHUNK_HEADER)
    if end < 0:
        raise WireError("photo chunk has no header line")
    doc = read_json(payload[:end], "photo chunk header")
    if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
        raise WireError("photo chunk header is not a version-1 object")
    sha = _check_sha(doc.get("sha"))
    offset = _field(doc, "off", int)
    total = _field(doc, "total", int)
    content_type = _field(doc, "type", str)
    data = payload[end + 1 :]
    if not 0 < total <= MAX_PHOTO_BYTES:
        raise WireError(f"photo size {total} is not between 1 and {MAX_PHOTO_BYTES} bytes")
    if not data or len(data) > MAX_CHUNK_BYTES:
        raise WireError(f"photo chunk of {len(data)} bytes (1 to {MAX_CHUNK_BYTES} allowed)")
    if offset < 0 or offset + len(data) > total:
        raise WireError(f"photo chunk {offset}+{len(data)} lies outside the photo's {total} bytes")
    if (
        not content_type.startswith("image/") or len(content_type) > 64
    ) and content_type != SIGNATURE_CONTENT_TYPE:
        raise WireError(f"photo content type {content_type!r} is not an image or a signature")
    return PhotoChunk(sha, offset, total, content_type, bytes(data))


@dataclass(frozen=True)
class PhotoAck:
    """The depot holds the first `have` bytes of the photo; `done`: stored and hash verified.

    `offset` is the offset of the chunk this answers: a device that resent a chunk (after a
    reconnect, or a timeout) gets several answers and acts only on the one for the chunk it
    is waiting on, so stale answers cannot multiply the chunks in flight.
    `error` is set when the depot threw its copy away (the bytes did not hash to the name):
    the device checks its own copy and sends it again from the start.
    """

    sha256: str
    have: int
    done: bool = False
    error: str | None = None
    offset: int | None = None


def encode_photo_ack(ack: PhotoAck) -> bytes:
    doc: dict[str, Any] = {"v": WIRE_VERSION, "sha": ack.sha256, "have": ack.have}
    if ack.offset is not None:
        doc["off"] = ack.offset
    if ack.done:
        doc["done"] = True
    if ack.error is not None:
        doc["error"] = ack.error
    return json.dumps(doc).encode()


def decode_photo_ack(payload: bytes) -> PhotoAck:
    doc = read_json(payload, "photo ack")
    if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
        raise WireError("photo ack is not a version-1 object")
    have = _field(doc, "have", int)
    if have < 0:
        raise WireError("photo ack 'have' is negative")
    done = doc.get("done", False)
    error = doc.get("error")
    offset = doc.get("off")
    if not isinstance(done, bool) or not (error is None or isinstance(error, str)):
        raise WireError("photo ack 'done'/'error' have the wrong types")
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
        raise WireError("photo ack 'off' is not an integer")
    return PhotoAck(_check_sha(doc.get("sha")), have, done, error, offset)


# --- commands to lockers -----------------------------------------------------------------------

#: What a locker does when the depot asks, and the arguments each action takes:
#: (name, kind, required). A command is checked against this before the depot signs it and again
#: by the locker before it acts, so both read the vocabulary from one place.
COMMAND_SIZES = ("S", "M", "L")
MAX_COMMAND_HOURS = 14 * 24.0  # a hold or reservation longer than two weeks is a typing error
#: A person's command (from the console) names who asked (`by`) and why (`reason`): both travel
#: signed and the locker journals them with the command's answer.
LOCKER_COMMANDS: Mapping[str, tuple[tuple[str, str, bool], ...]] = {
    # `card_tag`: for a staffed counter, the parcel's card code and surname as a tag
    # (parcel.cards.card_tag), so the customer may collect with the card; a locker ignores it.
    # `age_min` and `signature`: for a counter, the proof its staff must take at hand-out (an
    # ID check for that age, the customer's signature), as the door would (parcel.care).
    "reserve": (
        ("parcel", "text", True), ("size", "size", False), ("hours", "hours", False),
        ("card_tag", "tag", False), ("age_min", "age", False), ("signature", "bool", False),
    ),
    "extend_hold": (
        ("parcel", "text", True), ("hours", "hours", True), ("by", "text", False),
        ("reason", "text", False),
    ),
    "remote_open": (
        ("compartment", "text", True), ("by", "text", False), ("reason", "text", False),
    ),
    # A compartment the locker took out of service (a jammed lock) is usable again.
    "set_in_service": (
        ("compartment", "text", True), ("reason", "text", True), ("by", "text", False),
    ),
    # A customer's return the locker is to take in (docs/DELIVERY.md, "Customer returns"):
    # the return's id and size, and only the hashes of its code and QR (sync.return_codes)
    # under the locker's return salt; `hours` is how long the code opens a door.
    "expect_return": (
        ("parcel", "text", True), ("size", "size", True), ("salt", "text", True),
        ("code_hash", "text", True), ("qr_hash", "text", True), ("hours", "hours", True),
    ),
}


_HEX = frozenset("0123456789abcdef")


def check_command(action: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """`args` of a locker command if they are what `action` takes; WireError saying what is
    wrong otherwise (an unknown action or argument, a missing or ill-typed one)."""
    spec = LOCKER_COMMANDS.get(action)
    if spec is None:
        known = ", ".join(sorted(LOCKER_COMMANDS))
        raise WireError(f"unknown command {action!r} (a locker knows {known})")
    names = {name for name, _kind, _required in spec}
    extra = sorted(set(args) - names)
    if extra:
        raise WireError(f"{action} takes {', '.join(sorted(names))}, not {', '.join(extra)}")
    out: dict[str, Any] = {}
    for name, kind, required in spec:
        if name not in args:
            if required:
                raise WireError(f"{action} needs {name}")
            continue
        value = args[name]
        if kind == "text" and not (isinstance(value, str) and value and value.isprintable()):
            raise WireError(f"{action}: {name} must be non-empty text")
        if kind == "tag" and not (
            isinstance(value, str) and len(value) == 64 and all(c in _HEX for c in value)
        ):
            raise WireError(f"{action}: {name} must be 64 lowercase hex digits")
        if kind == "age" and (isinstance(value, bool) or value not in AGE_LIMITS):
            ages = ", ".join(map(str, AGE_LIMITS))
            raise WireError(f"{action}: {name} must be one of {ages}")
        if kind == "bool" and not isinstance(value, bool):
            raise WireError(f"{action}: {name} must be true or false")
        if kind == "size" and value not in COMMAND_SIZES:
            raise WireError(f"{action}: size must be one of {', '.join(COMMAND_SIZES)}")
        if kind == "hours" and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value <= MAX_COMMAND_HOURS
        ):
            limit = f"{MAX_COMMAND_HOURS:g}"
            raise WireError(f"{action}: hours must be a number above 0 and at most {limit}")
        out[name] = value
    return out


# --- van positions on the round ----------------------------------------------------------------

POSITIONS_CONTENT_TYPE = "application/vnd.lastmile.positions.v1+json"
#: Samples one message may carry: a van offline for four hours at one sample per 30 s.
MAX_POSITION_SAMPLES = 480
_POSITION_COLUMNS = 8


def positions_topic(device: str) -> str:
    """Device → depot: position samples of a van on its round (QoS 1, no answer)."""
    return f"{TOPIC_ROOT}/{device}/up/positions"


@dataclass(frozen=True)
class PositionSample:
    """Where a van was at `at_ns` (its wall clock) and how far its round had got.

    A sample is not a fact of the journal: it feeds the ETA and the operator's map, and a
    lost one is replaced by the next. `stop` is the stop the courier last arrived at (None
    between leaving the depot and the first stop, or heading back); `stops_done` counts the
    round's stops with nothing left to hand over, out of `stops_total`.
    """

    at_ns: int
    lat: float
    lon: float
    accuracy_m: float | None
    speed_mps: float | None
    stop: int | None
    stops_done: int
    stops_total: int

    def as_row(self) -> list[Any]:
        return [
            self.at_ns,
            round(self.lat, 6),
            round(self.lon, 6),
            None if self.accuracy_m is None else round(self.accuracy_m, 1),
            None if self.speed_mps is None else round(self.speed_mps, 2),
            self.stop,
            self.stops_done,
            self.stops_total,
        ]


def encode_positions(device: str, samples: Sequence[PositionSample]) -> bytes:
    """`{"v": 1, "dev": device, "p": [[at_ns, lat, lon, acc_m, speed_mps, stop, done,
    total], ...]}`, oldest first: rows, not objects, so a batch stays small on a cellular link."""
    if not 1 <= len(samples) <= MAX_POSITION_SAMPLES:
        raise WireError(f"a positions message carries 1 to {MAX_POSITION_SAMPLES} samples")
    doc = {"v": WIRE_VERSION, "dev": device, "p": [s.as_row() for s in samples]}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _number(value: object, what: str, low: float, high: float, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{what} is not a number")
    if not low <= value <= high:
        raise WireError(f"{what} {value} is outside {low:g}..{high:g}")
    return float(value)


def _count(value: object, what: str, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireError(f"{what} is not a whole number of at least 0")
    return value


def decode_positions(payload: bytes) -> tuple[str, list[PositionSample]]:
    """The device a positions message names and its samples; WireError says what is wrong
    (the depot quarantines the message whole: a sample cannot be half believed)."""
    doc = read_json(payload, "positions")
    if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
        raise WireError("positions message is not a version-1 object")
    device = _field(doc, "dev", str)
    rows = _field(doc, "p", list)
    if not 1 <= len(rows) <= MAX_POSITION_SAMPLES:
        raise WireError(f"positions message has {len(rows)} samples (1 to {MAX_POSITION_SAMPLES})")
    samples: list[PositionSample] = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != _POSITION_COLUMNS:
            raise WireError(f"position sample {i} is not a list of {_POSITION_COLUMNS} values")
        at, lat, lon, acc, speed, stop, done, total = row
        at_ns = _count(at, f"sample {i}: time", optional=False)
        stop_n = _count(stop, f"sample {i}: stop", optional=True)
        done_n = _count(done, f"sample {i}: stops done", optional=False)
        total_n = _count(total, f"sample {i}: stops total", optional=False)
        assert at_ns is not None and done_n is not None and total_n is not None
        if done_n > total_n or (stop_n is not None and not 1 <= stop_n <= total_n):
            raise WireError(f"sample {i}: stop {stop_n}, {done_n} done of {total_n} do not fit")
        la = _number(lat, f"sample {i}: lat", -90.0, 90.0, optional=False)
        lo = _number(lon, f"sample {i}: lon", -180.0, 180.0, optional=False)
        assert la is not None and lo is not None
        samples.append(
            PositionSample(
                at_ns,
                la,
                lo,
                _number(acc, f"sample {i}: accuracy", 0.0, 1e6, optional=True),
                _number(speed, f"sample {i}: speed", 0.0, 1e3, optional=True),
                stop_n,
                done_n,
                total_n,
            )
        )
    return device, samples
