"""Checking a journal's stored events against their own hash chain, row by row.

SQLite checks its pages, not what they say: a byte changed on the SD card inside an event's
payload leaves `integrity_check` ok and the event still readable, but its hash no longer
matches. Sent like that, the depot refuses the batch on every resend and every later event
with it. So the journal checks what it is about to send (`sync.journal.Journal.read`), and when
a row fails, this module says which rows are damaged and which are only unprovable.

Every column is read as bytes (a changed byte may leave invalid UTF-8 that the sqlite3 module
would refuse to decode), and a row that cannot be decoded, parsed or recomputed counts as
damaged. The rules, for row k with the verified hash of k-1 as `prev`:

- it recomputes to its stored hash: intact;
- it recomputes to a different hash, and row k+1 (or the journal's head, for the last row)
  continues from the recomputed one: only its hash column was damaged; the event is intact and
  the hash is repaired;
- otherwise its content was damaged (or cannot be proven, because its predecessor could not):
  it is quarantined, and its stored hash is what row k+1 is checked against.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from sync.wire import Event, canonical_payload, chain_hash

_RAW_COLUMNS = (
    "seq, CAST(uuid AS BLOB), CAST(boot_id AS BLOB), mono_ns, wall_ns, wall_synced, "
    "CAST(kind AS BLOB), CAST(payload AS BLOB), hash"
)

INTACT = "intact"
REHASHED = "rehashed"  # content intact, only the stored hash was wrong: repaired, nothing lost
DAMAGED = "damaged"
MISSING = "missing"  # no row at all where the sequence needs one


@dataclass(frozen=True)
class RawRow:
    """One stored event exactly as the file holds it, decoded where it can be."""

    seq: int
    columns: tuple[Any, ...]  # the raw values, kept for the quarantine table
    event: Event | None  # None when the row cannot be decoded into an event
    payload_json: str | None
    stored_hash: bytes

    def link(self, prev: bytes) -> bytes | None:
        """The hash this row has if it follows `prev`, or None if it cannot be computed."""
        e = self.event
        if e is None or self.payload_json is None:
            return None
        return chain_hash(
            prev, e.seq, e.uuid, e.boot_id, e.mono_ns, e.wall_ns, e.wall_synced, e.kind,
            self.payload_json,
        )

    def describe(self) -> dict[str, Any]:
        """What can still be said of the original event (for the break record)."""
        uid, kind = _text(self.columns[1]), _text(self.columns[6])
        return {
            "uuid": uid if uid is not None and _is_uuid(uid) else None,
            "kind": kind if kind is not None and kind.isprintable() and len(kind) <= 64 else None,
        }


@dataclass(frozen=True)
class Verdict:
    seq: int
    state: str  # INTACT, REHASHED, DAMAGED or MISSING
    row: RawRow | None
    hash: bytes | None  # the hash the chain continues from after this row, if known


def read_raw(conn: sqlite3.Connection, after_seq: int, limit: int | None = None) -> list[RawRow]:
    """Rows after `after_seq` in order, each decoded as far as it goes."""
    sql = f"SELECT {_RAW_COLUMNS} FROM events WHERE seq > ? ORDER BY seq"
    params: tuple[Any, ...] = (after_seq,)
    if limit is not None:
        sql += " LIMIT ?"
        params = (after_seq, limit)
    return [_decode(tuple(r)) for r in conn.execute(sql, params).fetchall()]


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _is_uuid(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _decode(r: tuple[Any, ...]) -> RawRow:
    seq = int(r[0])
    stored = bytes(r[8]) if isinstance(r[8], bytes | bytearray | memoryview) else b""
    uid, boot, kind, text = _text(r[1]), _text(r[2]), _text(r[6]), _text(r[7])
    event: Event | None = None
    ok = (
        uid is not None
        and _is_uuid(uid)
        and boot is not None
        and kind is not None
        and text is not None
        and isinstance(r[3], int)
        and isinstance(r[4], int)
        and r[5] in (0, 1)
    )
    if ok:
        assert uid is not None and boot is not None and kind is not None and text is not None
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            payload = None
        # The hash covers the canonical text; text that parses but is no longer canonical
        # (a changed byte in a key) was not written by the journal.
        if isinstance(payload, dict) and _canonical(payload) == text:
            event = Event(seq, uid, boot, int(r[3]), int(r[4]), bool(r[5]), kind, payload, stored)
    return RawRow(seq, r, event, text if event is not None else None, stored)


def _canonical(payload: dict[str, Any]) -> str | None:
    try:
        return canonical_payload(payload)
    except (ValueError, TypeError):
        return None


def classify(prev: bytes, first_seq: int, rows: list[RawRow], head_hash: bytes) -> list[Verdict]:
    """Judge rows `first_seq`… (consecutive sequence numbers expected) that follow `prev`.

    `head_hash` is the hash the journal's meta says its last event has: the successor of the
    last row.
    """
    by_seq = {r.seq: r for r in rows}
    last = max(by_seq) if by_seq else first_seq - 1
    verdicts: list[Verdict] = []
    known: bytes | None = prev

    def continues(seq: int, h: bytes | None) -> bool:
        if h is None:
            return False
        nxt = by_seq.get(seq + 1)
        if nxt is not None:
            return nxt.link(h) == nxt.stored_hash
        return seq == last and h == head_hash

    for seq in range(first_seq, last + 1):
        row = by_seq.get(seq)
        if row is None:
            verdicts.append(Verdict(seq, MISSING, None, None))
            known = None
            continue
        calc = row.link(known) if known is not None else None
        if calc is not None and calc == row.stored_hash:
            verdicts.append(Verdict(seq, INTACT, row, calc))
            known = calc
        elif calc is not None and continues(seq, calc):
            verdicts.append(Verdict(seq, REHASHED, row, calc))
            known = calc
        else:
            after = row.stored_hash if continues(seq, row.stored_hash) else None
            verdicts.append(Verdict(seq, DAMAGED, row, after))
            known = after
    return verdicts
