"""The device's photo outbox: proof-of-delivery photos waiting for the depot, in the journal file.

A photo is stored in the same SQLite file and the same transaction as the event that names it
by its SHA-256, so a power cut can never leave an event pointing at a photo the device does
not have. The uplink sends photos in chunks only while no event waits (events are small and
urgent, photos big and patient) and remembers how much of each the depot has confirmed, so a
cut link or a reboot resumes where the depot stands instead of starting over. A photo leaves
the device only when the depot says it has stored it and its bytes hash to its name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sync.errors import JournalError
from sync.journal import Journal, JournalTransaction

OWNER = "photo_outbox"
VERSION = 1
_SCHEMA = (
    """CREATE TABLE photo_outbox (
        sha256       TEXT PRIMARY KEY,
        content_type TEXT NOT NULL,
        data         BLOB NOT NULL,
        size         INTEGER NOT NULL,
        confirmed    INTEGER NOT NULL DEFAULT 0,
        state        TEXT NOT NULL DEFAULT 'pending',
        created_ns   INTEGER NOT NULL
    )""",
    "CREATE INDEX photo_outbox_order ON photo_outbox(state, created_ns)",
)
PENDING = "pending"
CORRUPT = "corrupt"  # the device's own copy no longer hashes to its name: a person must look


@dataclass(frozen=True)
class PhotoRef:
    """How an event names a photo: its SHA-256 (hex), size in bytes and content type."""

    sha256: str
    size: int
    content_type: str

    def as_payload(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.size, "type": self.content_type}


@dataclass(frozen=True)
class PendingPhoto:
    sha256: str
    size: int
    confirmed: int
    content_type: str


class PhotoOutbox:
    """Photos in the journal file until the depot has confirmed them."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        journal.ensure_tables(OWNER, VERSION, _SCHEMA)

    @staticmethod
    def ref(data: bytes, content_type: str = "image/jpeg") -> PhotoRef:
        if not data:
            raise JournalError("an empty photo cannot be stored")
        return PhotoRef(hashlib.sha256(data).hexdigest(), len(data), content_type)

    def stage(
        self, tx: JournalTransaction, data: bytes, content_type: str = "image/jpeg"
    ) -> PhotoRef:
        """Store `data` inside the caller's transaction (with the event that names it).

        The same photo staged twice is kept once: its name is its content.
        """
        ref, statement = self.statement(data, content_type)
        tx.execute(*statement)
        return ref

    def statement(
        self, data: bytes, content_type: str = "image/jpeg"
    ) -> tuple[PhotoRef, tuple[str, tuple[Any, ...]]]:
        """`stage` as its reference and an SQL statement, for a device that runs its own list
        of statements in the transaction of the event naming the photo."""
        ref = self.ref(data, content_type)
        return ref, (
            "INSERT OR IGNORE INTO photo_outbox(sha256, content_type, data, size, created_ns) "
            "VALUES (?,?,?,?,?)",
            (ref.sha256, ref.content_type, data, ref.size, self.journal.clock.wall_ns()),
        )

    def add(self, data: bytes, content_type: str = "image/jpeg") -> PhotoRef:
        """Store a photo in a transaction of its own (tools and tests)."""
        with self.journal.transaction("photo not stored") as tx:
            return self.stage(tx, data, content_type)

    def next_pending(self) -> PendingPhoto | None:
        """The oldest photo still to send: photos go in the order they were taken."""
        rows = self.journal.query(
            "SELECT sha256, size, confirmed, content_type FROM photo_outbox WHERE state=? "
            "ORDER BY created_ns, sha256 LIMIT 1",
            (PENDING,),
        )
        if not rows:
            return None
        sha, size, confirmed, content_type = rows[0]
        return PendingPhoto(str(sha), int(size), int(confirmed), str(content_type))

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        rows = self.journal.query(
            "SELECT substr(data, ?, ?) FROM photo_outbox WHERE sha256=?",
            (offset + 1, length, sha256),
        )
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else b""

    def verify(self, sha256: str) -> bool:
        """Whether the stored copy still hashes to its name (checked before sending from 0)."""
        rows = self.journal.query("SELECT data FROM photo_outbox WHERE sha256=?", (sha256,))
        return bool(rows) and hashlib.sha256(bytes(rows[0][0])).hexdigest() == sha256

    def confirm(self, sha256: str, have: int) -> None:
        """Record how many bytes the depot holds; the next chunk starts there."""
        with self.journal.transaction("photo progress not recorded") as tx:
            tx.execute(
                "UPDATE photo_outbox SET confirmed=min(?, size) WHERE sha256=?", (have, sha256)
            )

    def advance(self, sha256: str, have: int) -> None:
        """Move the confirmed count forward only (an answer to an older chunk)."""
        with self.journal.transaction("photo progress not recorded") as tx:
            tx.execute(
                "UPDATE photo_outbox SET confirmed=min(?, size) WHERE sha256=? AND confirmed < ?",
                (have, sha256, have),
            )

    def done(self, sha256: str) -> bool:
        """The depot stored and verified the photo: only now may the device drop its copy."""
        with self.journal.transaction("photo confirmation not recorded") as tx:
            return tx.execute("DELETE FROM photo_outbox WHERE sha256=?", (sha256,)).rowcount > 0

    def mark_corrupt(self, sha256: str, why: str) -> None:
        """Stop sending a copy that no longer matches its hash; the alarm tells a person."""
        with self.journal.transaction("photo state not recorded") as tx:
            tx.execute("UPDATE photo_outbox SET state=? WHERE sha256=?", (CORRUPT, sha256))
            tx.append("alarm", {"alarm": "photo_corrupt", "sha256": sha256, "reason": why})

    def counts(self) -> dict[str, int]:
        """Photos and bytes still on the device, by state (for status and tests)."""
        rows = self.journal.query(
            "SELECT state, count(*), coalesce(sum(size - confirmed), 0) FROM photo_outbox "
            "GROUP BY state"
        )
        out = {"pending": 0, "pending_bytes": 0, "corrupt": 0}
        for state, n, left in rows:
            out[str(state)] = int(n)
            if state == PENDING:
                out["pending_bytes"] = int(left)
        return out
