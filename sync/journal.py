"""The device's event journal: one SQLite file that is also its outbox.

Owns: gapless sequence numbers per journal, the hash chain, durable commit before anyone is
told, the depot's acknowledgements, retention and pruning, the high-water mark kept beside the
file (`sync.highwater`), and recovery from a file that is corrupt, rolled back, emptied or gone.
Must never: confirm an event it has not fsync'd, delete an event the depot has not
acknowledged, delete a database it cannot read (it is moved aside for a person), reuse a
sequence number within a journal, or lose a confirmed event without saying so in an `alarm`.

Journal epochs: when the file no longer holds what the high-water mark says was committed
(a damaged write-ahead log replayed short, a file emptied or deleted) or the depot acknowledges
more than the file holds, the journal does not carry on under the same id (the depot would
see the reused numbers as a fork and refuse everything after). It moves the old files aside,
starts a new journal id at sequence 1, and writes, in the new journal's first transaction:
the device's own tables as the old file held them, an `alarm` event saying what happened and
which sequence numbers of the old journal were lost, and the old journal's surviving
unacknowledged events (same uuid and clocks, new sequence numbers). docs/WIRE.md describes it.

One process writes a journal at a time (an advisory lock file enforces it); inside the process
appends and acknowledgements share one writer connection, readers use their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.clock import Clock, SystemClock
from sync.durable import fsync_dir, write_atomically
from sync.errors import JournalError, JournalFull
from sync.highwater import HighWater, Mark
from sync.journal_check import DAMAGED, INTACT, MISSING, RawRow, Verdict, classify, read_raw
from sync.wire import Event, canonical_payload, chain_hash, genesis_hash

log = logging.getLogger("sync.journal")

SCHEMA_VERSION = 2
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
ALARM_KIND = "alarm"
# The alarms a journal raises about itself (payload "alarm"); the depot records a loss for each.
JOURNAL_CORRUPT = "journal_corrupt"  # the file could not be read: moved aside
JOURNAL_ROLLED_BACK = "journal_rolled_back"  # it holds less than was committed
JOURNAL_LOST = "journal_lost"  # emptied or gone
JOURNAL_REFUSED = "journal_refused"  # the depot holds another chain: what follows goes anew
EVENT_DAMAGED = "event_damaged"  # the break record that stands in for a damaged event
HIGH_WATER_UNREADABLE = "high_water_unreadable"  # the check above could not be made this time

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    uuid        TEXT NOT NULL UNIQUE,
    boot_id     TEXT NOT NULL,
    mono_ns     INTEGER NOT NULL,
    wall_ns     INTEGER NOT NULL,
    wall_synced INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    hash        BLOB NOT NULL
);
CREATE TABLE ack_log (seq INTEGER PRIMARY KEY, wall_ns INTEGER NOT NULL);
"""
# Version 2: the events a chain check took out of the chain, kept as they were for a person.
_DAMAGED_TABLE = """
CREATE TABLE IF NOT EXISTS damaged_events (
    seq INTEGER NOT NULL, uuid BLOB, boot_id BLOB, mono_ns, wall_ns, wall_synced, kind BLOB,
    payload BLOB, hash BLOB, reason TEXT NOT NULL, found_ns INTEGER NOT NULL
)
"""
_SYNC_TABLES = {"meta", "events", "ack_log", "damaged_events"}

_EVENT_COLUMNS = "seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind, payload, hash"


def _pragmas(conn: sqlite3.Connection) -> None:
    # WAL + synchronous=FULL: every COMMIT fsyncs the WAL before returning, so a commit that
    # returned survives a power cut. busy_timeout bounds waits on the reader/writer handoff.
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"journal cannot use WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")




def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


@dataclass(frozen=True)
class _Epoch:
    """Why a new journal starts, and where the old one's surviving content is."""

    alarm: str
    reason: str
    lost_journal: str | None  # the journal whose events may be lost
    had_seq: int | None  # how far it got, as far as anything outside it knows
    source: Path | None  # the moved-aside file to carry tables and events from
    moved_to: Path | None
    depot_head: int | None = None  # the depot's acknowledgement that revealed it, if that did


class Journal:
    """Append-only events with a durable commit, read by the uplink, pruned after the depot acks.

    Trouble with the journal itself is recorded as an event too: the first event of a fresh
    journal after a recovery is an `alarm` saying what happened, where the old file went and
    which events, if any, were lost.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device_id: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_pages: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.clock: Clock = clock or SystemClock()
        self.retention_s = retention_s
        self._max_pages = max_pages
        # Re-entrant: a new epoch started while running holds it across its first transaction.
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self.moved_aside: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = self._take_process_lock()
        self._hw: HighWater | None = None
        self._reports_path = Path(f"{self.path}.reports")
        self._reports_pending = False
        try:
            self._hw = HighWater(f"{self.path}.hw")
            epoch = self._open()
            self._reader = self._connect()
            self._load_meta()
            if epoch is not None:
                self._begin_epoch(epoch)
            elif self._hw.unreadable:
                log.error("%s: the high-water mark is unreadable; rollback not checked", self.path)
                self.append(ALARM_KIND, {
                    "alarm": HIGH_WATER_UNREADABLE,
                    "journal": self.journal_id,
                    "reason": "neither copy of the high-water mark verifies: a rollback of "
                    "the journal before this start could not be detected",
                })
            else:
                self._record_high_water()
            self._reports_pending = self._reports_path.exists()
            if self._reports_pending and self._acked >= 1:
                self._clear_reports()
        except BaseException:
            if self._hw is not None:
                self._hw.close()
            os.close(self._lockfile)
            raise

    # --- opening, checking, recovering -----------------------------------------------------

    def _take_process_lock(self) -> int:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(f"journal {self.path} is in use by another process") from None
        return fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            _pragmas(conn)
            if self._max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> _Epoch | None:
        """Open the writer connection on a file fit to continue; say why a new epoch starts.

        The file is compared with the high-water mark: a file that holds less than was
        committed (or another journal, or nothing) is moved aside and a fresh one created.
        """
        assert self._hw is not None
        mark = self._hw.mark
        self._set_aside_orphans()
        existed = self.path.exists() and self.path.stat().st_size > 0
        corrupt = self._open_checked()
        if corrupt is not None:
            moved = self._move_aside("corrupt")
            log.error("journal %s moved aside to %s: %s", self.path, moved, corrupt)
            self._open_fresh()
            lost = mark.journal_id if mark is not None else None
            return _Epoch(JOURNAL_CORRUPT, corrupt, lost, _had(mark), moved, moved)
        if mark is None:
            return None
        meta = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
        jid, last = meta["journal_id"], int(meta["last_seq"])
        if jid == mark.journal_id:
            problem = self._behind(meta, mark)
            if problem is None:
                return None
            moved = self._move_aside("rolled-back")
            log.error("journal %s %s; moved aside to %s", self.path, problem, moved)
            self._open_fresh()
            return _Epoch(JOURNAL_ROLLED_BACK, problem, jid, mark.last_seq, moved, moved)
        if meta.get("previous_journal") == mark.journal_id:
            return None  # a new epoch committed; its high-water mark was not written yet
        if mark.last_seq == 0:
            return None  # the old journal had nothing in it to lose
        holds_events = last > 0 or int(meta["pruned_seq"]) > 0
        if existed and holds_events:
            problem = f"holds journal {jid}, not {mark.journal_id} that had reached {mark.last_seq}"
            moved = self._move_aside("replaced")
            log.error("journal %s %s; moved aside to %s", self.path, problem, moved)
            self._open_fresh()
            lost = mark.journal_id
            return _Epoch(JOURNAL_ROLLED_BACK, problem, lost, mark.last_seq, moved, moved)
        # Emptied, deleted, or a rollover that stopped before its first commit: any copy of the
        # old journal moved aside before is where its surviving events are.
        problem = "was emptied or is gone" if not existed else "holds no events"
        log.error(
            "journal %s %s (journal %s had reached %d)", self.path, problem, mark.journal_id,
            mark.last_seq,
        )
        if existed:
            self._move_aside("empty")
            self._open_fresh()
        source = self._find_aside(mark.journal_id)
        return _Epoch(JOURNAL_LOST, problem, mark.journal_id, mark.last_seq, source, None)

    def _behind(self, meta: Mapping[str, str], mark: Mark) -> str | None:
        """Why the file is behind the high-water mark of the same journal, or None."""
        last = int(meta["last_seq"])
        if last < mark.last_seq:
            return f"went back from event {mark.last_seq} to {last}"
        if last == mark.last_seq:
            stored: bytes | None = bytes.fromhex(meta["last_hash"])
        else:
            row = self._w.execute(
                "SELECT hash FROM events WHERE seq=?", (mark.last_seq,)
            ).fetchone()
            stored = bytes(row[0]) if row is not None else None
            if row is None and int(meta["pruned_seq"]) == mark.last_seq:
                stored = bytes.fromhex(meta["pruned_hash"])
        if stored is not None and stored != mark.last_hash:
            return f"holds another event {mark.last_seq} than was committed (a fork)"
        return None

    def _open_checked(self) -> str | None:
        """Open the writer connection; return why the file must be moved aside, or None."""
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._w = self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not existed:
                raise JournalError(f"cannot create journal {self.path}: {exc}") from exc
            if _is_full(exc):
                raise JournalFull(f"disk full while opening journal {self.path}") from exc
            return f"cannot open: {exc}"
        try:
            version = self._w.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = self._w.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    return "tables present but no schema version"
                self._create()
                return None
            if version > SCHEMA_VERSION:
                # Written by newer software: not corrupt, and not ours to move.
                self._w.close()
                raise JournalError(
                    f"journal schema {version} is newer than this software ({SCHEMA_VERSION})"
                )
            problems = [r[0] for r in self._w.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                return "integrity check failed: " + "; ".join(problems[:5])
            meta = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("device_id") != self.device_id:
                self._w.close()
                raise JournalError(
                    f"journal {self.path} belongs to device {meta.get('device_id')!r}, "
                    f"not {self.device_id!r}"
                )
            self._check_head(meta)
            if version < SCHEMA_VERSION:
                self._w.execute(_DAMAGED_TABLE)
                self._w.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except JournalError:
            raise
        except (sqlite3.DatabaseError, KeyError, ValueError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_full(exc):
                raise JournalFull(f"disk full while checking journal {self.path}") from exc
            return f"check failed: {exc!r}"
        return None

    def _open_fresh(self) -> None:
        if self._open_checked() is not None:  # a fresh file cannot be corrupt
            raise JournalError(f"cannot create a fresh journal at {self.path}")

    def _check_head(self, meta: Mapping[str, str]) -> None:
        row = self._w.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        last_seq = int(meta["last_seq"])
        if row is not None and (row[0] != last_seq or bytes(row[1]).hex() != meta["last_hash"]):
            raise ValueError(f"head says {last_seq} but the last event is {row[0]}")
        if int(meta["acked_seq"]) > last_seq:
            raise ValueError("acknowledged beyond the last event")

    def _create(self) -> None:
        journal_id = uuid.uuid4().hex
        self._w.execute("BEGIN IMMEDIATE")
        try:
            for statement in (_SCHEMA + ";" + _DAMAGED_TABLE).split(";"):
                if statement.strip():
                    self._w.execute(statement)
            genesis = genesis_hash(journal_id).hex()
            self._w.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("journal_id", journal_id),
                    ("device_id", self.device_id),
                    ("created_wall_ns", str(self.clock.wall_ns())),
                    ("last_seq", "0"),
                    ("last_hash", genesis),
                    ("acked_seq", "0"),
                    ("pruned_seq", "0"),
                    ("pruned_hash", genesis),
                ],
            )
            self._w.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._w.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            raise
        fsync_dir(self.path.parent)

    def _load_meta(self) -> None:
        meta = dict(self._w.execute("SELECT key, value FROM meta").fetchall())
        self.journal_id: str = meta["journal_id"]
        self._last_seq = int(meta["last_seq"])
        self._last_hash = bytes.fromhex(meta["last_hash"])
        self._acked = int(meta["acked_seq"])
        self._pruned_seq = int(meta["pruned_seq"])
        self._pruned_hash = bytes.fromhex(meta["pruned_hash"])
        # Events up to here were checked against their chain (or acknowledged: the depot holds
        # them as they were sent); `read` checks the rest before anything is sent.
        self._verified_seq = self._acked

    def _move_aside(self, why: str) -> Path:
        with contextlib.suppress(Exception):
            self._w.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.{why}-{stamp}-{os.getpid()}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{why}-{stamp}-{os.getpid()}-{n}")
        # The database first: a crash between the renames leaves its log without a database,
        # which the next start sets aside too (`_set_aside_orphans`) rather than replaying it.
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{target}{suffix}")
        fsync_dir(self.path.parent)
        self.moved_aside = target
        return target

    def _set_aside_orphans(self) -> None:
        """A write-ahead log with no database is not replayed into a new one: set aside."""
        if self.path.exists() and self.path.stat().st_size > 0:
            return
        for suffix in ("-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                os.replace(src, f"{self.path}.orphan-{stamp}-{os.getpid()}{suffix}")
                log.error("journal %s: its %s had no database; set aside", self.path, suffix)

    def _find_aside(self, journal_id: str) -> Path | None:
        """The newest moved-aside copy of `journal_id` beside the journal, if any survives."""
        best: tuple[int, float, Path] | None = None
        for candidate in self.path.parent.glob(f"{self.path.name}.*"):
            name = candidate.name
            if name.endswith(("-wal", "-shm", ".hw", ".lock")) or not candidate.is_file():
                continue
            info = _peek(candidate)
            if info is None or info[0] != journal_id:
                continue
            key = (info[1], candidate.stat().st_mtime, candidate)
            if best is None or key[:2] > best[:2]:
                best = key
        return best[2] if best is not None else None

    # --- epochs: a new journal that accounts for the old one -------------------------------

    def _begin_epoch(self, epoch: _Epoch) -> None:
        """Write the new journal's first transaction: the old file's device tables, the alarm
        that says what happened, and the old journal's surviving unacknowledged events."""
        carry = _Carry.read(epoch.source, epoch.lost_journal, epoch.depot_head)
        found = carry.found_seq
        first = None if found is None else found + 1
        if epoch.depot_head is not None:
            first = max(first or 0, epoch.depot_head + 1)
        lost: dict[str, int | None] | None = {"from": first, "to": epoch.had_seq}
        if epoch.had_seq is not None and first is not None and epoch.had_seq < first:
            lost = None  # the file held everything that was committed: nothing beyond it lost
        payload: dict[str, Any] = {
            "alarm": epoch.alarm,
            "reason": epoch.reason,
            "journal": epoch.lost_journal,
            "had_seq": epoch.had_seq,
            "found_seq": found,
            "lost": lost,
            "damaged": (
                {"journal": carry.journal_id, "seqs": carry.damaged} if carry.damaged else None
            ),
            "carried": None,
            "moved_to": str(epoch.moved_to) if epoch.moved_to is not None else None,
        }
        if epoch.depot_head is not None:
            payload["depot_head"] = epoch.depot_head
        if carry.events:
            payload["carried"] = {
                "journal": carry.journal_id,
                "from_seq": carry.events[0].seq,
                "to_seq": carry.events[-1].seq,
                "as_seq": 2,  # the alarm is event 1 of the new journal
            }
        if carry.problem:
            payload["carry_problem"] = carry.problem
        if carry.tables_lost:
            payload["tables_lost"] = carry.tables_lost
        # Loss reports of earlier epochs the depot has not acknowledged yet are repeated: a
        # journal lost while its own alarm waited to be sent must not take that alarm along.
        earlier = self._load_reports()
        if earlier:
            payload["earlier"] = earlier
        report = {k: payload[k] for k in ("alarm", "journal", "lost", "damaged")}
        if report["journal"] is not None or report["damaged"] is not None:
            earlier = [*earlier, report]
        self._save_reports(earlier)  # before the commit: a crash in between repeats, never drops
        with self.transaction("the new journal could not be started") as tx:
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('previous_journal', ?)",
                (epoch.lost_journal or "",),
            )
            for key, value in carry.meta:
                tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
            for statement in carry.schema:
                tx.execute(statement)
            for table, rows in carry.rows:
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    self._w.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
            tx.append(ALARM_KIND, payload)
            for row in carry.events:
                tx.carry(row)
        log.error(
            "%s: new journal %s after %s: %s (lost %s, carried %d events)",
            self.path, self.journal_id, epoch.alarm, epoch.reason, lost, len(carry.events),
        )

    def restart_epoch(self, depot_head: int, refused: str | None = None) -> None:
        """Carry on under a new journal id from what the depot holds of this one.

        Without `refused`: the depot acknowledged `depot_head`, beyond the journal's last event,
        so the file went back (and so did whatever would have shown it); how far it had got
        is unknown. With `refused`: the depot holds events up to `depot_head` whose hashes this
        file no longer has (an event damaged after it was stored, then taken out of the chain
        here), so every resend would be refused; the file itself is whole. Either way the
        numbers the depot holds are never used again, and the alarm says what happened.
        """
        with self._write_lock:
            with self._read_lock:
                last, old = self._last_seq, self.journal_id
                with contextlib.suppress(sqlite3.Error):
                    self._reader.close()
                moved = self._move_aside("refused" if refused else "rolled-back")
                self._open_fresh()
                self._reader = self._connect()
                self._load_meta()
            if refused is not None:
                alarm, had = JOURNAL_REFUSED, last
                reason = f"the depot refused the chain after event {depot_head}: {refused}"
            else:
                alarm, had = JOURNAL_ROLLED_BACK, None
                reason = (
                    f"the depot acknowledged event {depot_head}, but the journal ends at {last}"
                )
            log.error("journal %s: %s; moved aside to %s", self.path, reason, moved)
            self._begin_epoch(_Epoch(alarm, reason, old, had, moved, moved, depot_head))

    def _record_high_water(self) -> None:
        if self._hw is None:
            return
        try:
            self._hw.record(Mark(self.journal_id, self._last_seq, self._last_hash))
        except JournalError as exc:
            # The event is committed; only the check for a later rollback is weaker. Say so.
            log.error("%s", exc)

    def _load_reports(self) -> list[dict[str, Any]]:
        """Loss reports not yet acknowledged by the depot (kept in `<journal>.reports`)."""
        try:
            doc = json.loads(self._reports_path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("%s unreadable, earlier loss reports not repeated: %s",
                      self._reports_path, exc)
            return [{"alarm": "loss_reports_unreadable", "journal": None, "lost": None,
                     "damaged": None, "reason": str(exc)[:200]}]
        reports = doc.get("reports") if isinstance(doc, dict) else None
        return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []

    def _save_reports(self, reports: list[dict[str, Any]]) -> None:
        if not reports:
            self._clear_reports()
            return
        data = json.dumps({"journal": self.journal_id, "reports": reports}).encode()
        try:
            write_atomically(self._reports_path, data)
        except OSError as exc:
            # The alarm itself still goes out; only its repetition after another loss is weaker.
            log.error("loss reports not kept in %s: %s", self._reports_path, exc)
            return
        self._reports_pending = True

    def _clear_reports(self) -> None:
        try:
            self._reports_path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)
        except OSError as exc:
            log.error("cannot remove %s: %s", self._reports_path, exc)
            return
        self._reports_pending = False

    # --- checking the chain before sending -------------------------------------------------

    def recheck(self) -> None:
        """Check the unacknowledged events against their chain again before the next read.

        The uplink calls it before resending: bytes can change on the card while they wait.
        """
        with self._read_lock:
            self._verified_seq = min(self._verified_seq, self._acked)

    def _check(self, through: int) -> int | None:
        """Verify events after the verified ones up to `through`; the first bad one, or None.

        Holding the read lock. Cheap: each event is hashed once, when it is first sent.
        """
        start = self._verified_seq
        if through <= start:
            return None
        prev = self._hash_on(self._reader, start)
        if prev is None:
            return start + 1
        expected = start + 1
        # The fast path hashes the stored text as it is: if it gives the stored hash, the text
        # is exactly what was written. Anything odd goes to `_repair`, which reads every
        # column as bytes and judges row by row.
        try:
            rows = self._reader.execute(
                "SELECT seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind, "
                "CAST(payload AS BLOB), hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, through - start),
            ).fetchall()
        except sqlite3.Error:
            return expected
        for seq, uid, boot, mono, wall, synced, kind, text, stored in rows:
            try:
                h = chain_hash(
                    prev, seq, uid, boot, mono, wall, bool(synced), kind, bytes(text).decode()
                )
            except (TypeError, ValueError):
                return expected
            if seq != expected or h != stored:
                return expected
            prev = bytes(stored)
            expected += 1
        if expected <= through:
            return expected
        self._verified_seq = through
        return None

    def _hash_on(self, conn: sqlite3.Connection, seq: int) -> bytes | None:
        if seq == self._pruned_seq:
            return self._pruned_hash
        row = conn.execute("SELECT hash FROM events WHERE seq=?", (seq,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def _repair(self, first_bad: int) -> None:
        """Take damaged events out of the chain: each is kept in `damaged_events` and replaced,
        at its sequence number, by an `alarm` break record; the events after it are chained
        on from the break record (they were never accepted by the depot: it refused the chain
        at the damaged one). An event whose only fault is its stored hash is re-hashed."""
        with self._write_lock:
            anchor = self._hash_on(self._w, first_bad - 1)
            if anchor is None:
                raise JournalError(f"event {first_bad - 1} is no longer in the journal")
            rows = read_raw(self._w, first_bad - 1)
            verdicts = classify(anchor, first_bad, rows, self._last_hash)
            have = verdicts[-1].seq if verdicts else first_bad - 1
            tail = range(have + 1, self._last_seq + 1)
            verdicts += [Verdict(s, MISSING, None, None) for s in tail]
            broken = [v for v in verdicts if v.state in (DAMAGED, MISSING)]
            now = self.clock.wall_ns()
            prev = anchor
            with self._transaction("damaged events not quarantined"):
                for v in verdicts:
                    if v.state in (DAMAGED, MISSING):
                        prev = self._replace_with_break(v, prev, now)
                        continue
                    assert v.row is not None
                    h = v.row.link(prev)
                    assert h is not None
                    if h != v.row.stored_hash:
                        self._w.execute("UPDATE events SET hash=? WHERE seq=?", (h, v.seq))
                    prev = h
                self._w.execute("UPDATE meta SET value=? WHERE key='last_hash'", (prev.hex(),))
            self._last_hash = prev
            self._verified_seq = self._last_seq
            self._record_high_water()
        repaired = [v.seq for v in verdicts if v.state not in (INTACT, DAMAGED, MISSING)]
        if broken:
            log.error(
                "%s: events %s no longer match their hash: quarantined, break records in their "
                "place", self.path, [v.seq for v in broken],
            )
        if repaired:
            log.warning("%s: stored hashes of events %s were damaged and repaired", self.path,
                        repaired)

    def _replace_with_break(self, v: Verdict, prev: bytes, now: int) -> bytes:
        what = v.row.describe() if v.row is not None else {"uuid": None, "kind": None}
        reason = (
            "the stored event no longer matches its hash" if v.state == DAMAGED
            else "the event is missing from the journal file"
        )
        if v.row is not None:
            self._w.execute(
                "INSERT INTO damaged_events(seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, "
                "kind, payload, hash, reason, found_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*v.row.columns, reason, now),
            )
            self._w.execute("DELETE FROM events WHERE seq=?", (v.seq,))
        payload = {
            "alarm": EVENT_DAMAGED,
            "journal": self.journal_id,
            "seq": v.seq,
            "uuid": what["uuid"],
            "kind": what["kind"],
            "reason": reason,
        }
        text = canonical_payload(payload)
        clock = self.clock
        uid, boot, mono = uuid.uuid4().hex, clock.boot_id, clock.monotonic_ns()
        synced = clock.wall_synced()
        h = chain_hash(prev, v.seq, uid, boot, mono, now, synced, ALARM_KIND, text)
        self._w.execute(
            f"INSERT INTO events({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (v.seq, uid, boot, mono, now, int(synced), ALARM_KIND, text, h),
        )
        return h

    # --- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """One write transaction: all of it commits (fsync'd), or nothing does.

        SQLITE_FULL becomes JournalFull so the courier hears "storage full", not a crash.
        """
        try:
            self._w.execute("BEGIN IMMEDIATE")
            yield
            self._w.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            if _is_full(exc):
                raise JournalFull(f"storage full: {what} ({exc})") from exc
            raise JournalError(f"{what}: {exc}") from exc
        except BaseException:
            # The caller's own logic refused mid-transaction: nothing of it may remain.
            with contextlib.suppress(sqlite3.Error):
                self._w.execute("ROLLBACK")
            raise

    def append(self, kind: str, payload: Mapping[str, Any]) -> Event:
        """Store one event durably and return it; only then may anyone be told.

        Raises JournalFull when the disk is full (nothing stored) and JournalError on any
        other storage failure (nothing stored either: the transaction is rolled back).
        """
        return self.append_many([(kind, payload)])[0]

    def append_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Event]:
        """Store several events in one durable commit: all of them, or none.

        For facts that happen together (a door closed with a parcel inside) and for bulk
        imports; the events get consecutive sequence numbers.
        """
        with self.transaction("event not stored") as tx:
            return [tx.append(kind, payload) for kind, payload in items]

    @contextlib.contextmanager
    def transaction(self, what: str = "write failed") -> Iterator[JournalTransaction]:
        """Events and the device's own state tables, committed together or not at all.

        A device that keeps derived state (which compartment holds which parcel) writes it in
        the same transaction as the event that changed it, so a power cut can never leave the
        state and the journal telling different stories. Nothing is visible to readers, and
        no one may be told, before the block exits without an exception.
        """
        with self._write_lock:
            tx = JournalTransaction(self, self._last_seq, self._last_hash)
            with self._transaction(what):
                yield tx
                events = tx.flush()
            self._last_seq, self._last_hash = tx.seq, tx.hash
            if events:
                self._record_high_water()
        for listener in self._listeners:
            if events:
                try:
                    listener(events)
                except Exception:
                    log.exception("journal listener failed")

    def add_listener(self, listener: Callable[[list[Event]], None]) -> None:
        """Call `listener(events)` after every commit that stored events (outside all locks).

        The uplink uses it to send at once instead of on its next tick; tests use it to await
        facts instead of polling the file.
        """
        self._listeners.append(listener)

    def ensure_tables(self, owner: str, version: int, statements: Sequence[str]) -> None:
        """Create a device's own tables in this file once, versioned under `schema:<owner>`.

        Sync never interprets these tables; it only keeps them in the same durable file.
        """
        key = f"schema:{owner}"
        with self._write_lock:
            row = self._w.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is not None and int(row[0]) == version:
                return
            if row is not None:
                raise JournalError(f"{owner} tables are at version {row[0]}, not {version}")
            with self._transaction(f"cannot create {owner} tables"):
                for statement in statements:
                    self._w.execute(statement)
                self._w.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (key, str(version)))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read committed data (events or a device's own tables) on the reader connection."""
        with self._read_lock:
            return list(self._reader.execute(sql, params).fetchall())

    def mark_acked(self, seq: int) -> bool:
        """Record the depot's acknowledgement; returns True when it moved forward.

        An acknowledgement beyond what this journal holds is refused: it belongs to something
        else (another journal of this device) and must not make us drop anything.
        """
        with self._write_lock:
            if seq <= self._acked:
                return False
            if seq > self._last_seq:
                raise JournalError(f"ack {seq} is beyond the last event {self._last_seq}")
            with self._transaction(f"ack {seq} not recorded"):
                self._w.execute("UPDATE meta SET value=? WHERE key='acked_seq'", (str(seq),))
                self._w.execute(
                    "INSERT OR REPLACE INTO ack_log(seq, wall_ns) VALUES (?, ?)",
                    (seq, self.clock.wall_ns()),
                )
            self._acked = seq
            if self._reports_pending:
                # Event 1 of this journal, the alarm that repeats every loss report not yet
                # acknowledged, is at the depot now: the reports can go.
                self._clear_reports()
            return True

    def prune(self) -> int:
        """Delete events acknowledged longer ago than the retention; returns how many.

        Retention runs on the wall clock; a wall clock that jumps can only make an acknowledged
        event go early or late, never an unacknowledged one.
        """
        cutoff = self.clock.wall_ns() - int(self.retention_s * 1e9)
        with self._write_lock:
            row = self._w.execute(
                "SELECT max(seq) FROM ack_log WHERE wall_ns <= ?", (cutoff,)
            ).fetchone()
            through = row[0] if row and row[0] is not None else 0
            through = min(through, self._acked)
            if through <= self._pruned_seq:
                return 0
            with self._transaction("prune failed"):
                hrow = self._w.execute("SELECT hash FROM events WHERE seq=?", (through,)).fetchone()
                new_hash = bytes(hrow[0]) if hrow is not None else self._pruned_hash
                n = self._w.execute("DELETE FROM events WHERE seq <= ?", (through,)).rowcount
                self._w.execute("DELETE FROM ack_log WHERE seq < ?", (through,))
                self._w.execute("UPDATE meta SET value=? WHERE key='pruned_seq'", (str(through),))
                self._w.execute(
                    "UPDATE meta SET value=? WHERE key='pruned_hash'", (new_hash.hex(),)
                )
            self._pruned_seq, self._pruned_hash = through, new_hash
            return int(n)

    # --- reading ---------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def unacked(self) -> int:
        return self._last_seq - self._acked

    def read(self, after_seq: int, limit: int) -> tuple[bytes, list[Event]]:
        """Up to `limit` events after `after_seq`, with the hash of event `after_seq`.

        The hash lets the depot check that the batch continues the chain it already holds.
        """
        for _attempt in range(3):
            with self._read_lock:
                bad = self._check(min(after_seq + limit, self._last_seq))
            if bad is None:
                break
            self._repair(bad)
        with self._read_lock:
            if after_seq == self._pruned_seq:
                prev = self._pruned_hash
            else:
                row = self._reader.execute(
                    "SELECT hash FROM events WHERE seq=?", (after_seq,)
                ).fetchone()
                if row is None:
                    raise JournalError(f"event {after_seq} is no longer in the journal")
                prev = bytes(row[0])
            rows = self._reader.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return prev, [_row_event(r) for r in rows]

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for conn in (self._reader, self._w):
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if self._hw is not None:
                self._hw.close()
            with contextlib.suppress(OSError):
                os.close(self._lockfile)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JournalTransaction:
    """The write side of `Journal.transaction()`: append events, update the device's tables."""

    def __init__(self, journal: Journal, seq: int, prev_hash: bytes) -> None:
        self._journal = journal
        self.seq = seq
        self.hash = prev_hash
        self._rows: list[tuple[Any, ...]] = []
        self._events: list[Event] = []

    def append(self, kind: str, payload: Mapping[str, Any]) -> Event:
        """Add an event; it is stored when the transaction commits, and only then real."""
        clock = self._journal.clock
        return self._add(
            uuid.uuid4().hex, clock.boot_id, clock.monotonic_ns(), clock.wall_ns(),
            clock.wall_synced(), kind, dict(payload), canonical_payload(payload),
        )

    def carry(self, row: RawRow) -> Event:
        """Add an event of an old journal as it was (uuid, clocks, payload), numbered anew."""
        e = row.event
        if e is None or row.payload_json is None:
            raise JournalError(f"event {row.seq} of the old journal cannot be carried")
        return self._add(
            e.uuid, e.boot_id, e.mono_ns, e.wall_ns, e.wall_synced, e.kind, dict(e.payload),
            row.payload_json,
        )

    def _add(
        self, uid: str, boot: str, mono: int, wall: int, synced: bool, kind: str,
        payload: dict[str, Any], payload_json: str,
    ) -> Event:
        self.seq += 1
        self.hash = chain_hash(
            self.hash, self.seq, uid, boot, mono, wall, synced, kind, payload_json
        )
        self._rows.append(
            (self.seq, uid, boot, mono, wall, int(synced), kind, payload_json, self.hash)
        )
        event = Event(self.seq, uid, boot, mono, wall, synced, kind, payload, self.hash)
        self._events.append(event)
        return event

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run a statement on the device's own tables inside this transaction."""
        return self._journal._w.execute(sql, params)

    def flush(self) -> list[Event]:
        """Write the appended events (inside the transaction); returns them."""
        if not self._rows:
            return []
        w = self._journal._w
        w.executemany(
            f"INSERT INTO events({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", self._rows
        )
        w.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(self.seq),))
        w.execute("UPDATE meta SET value=? WHERE key='last_hash'", (self.hash.hex(),))
        self._rows = []
        events, self._events = self._events, []
        return events


@dataclass
class _Carry:
    """What a new journal takes over from the old file: its device tables and its surviving
    unacknowledged events (checked against their chain first)."""

    journal_id: str | None = None
    found_seq: int | None = None  # the old journal's last event in the file (None: unknown)
    schema: list[str] = field(default_factory=list)
    meta: list[tuple[str, str]] = field(default_factory=list)
    rows: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)
    events: list[RawRow] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    tables_lost: list[str] = field(default_factory=list)
    problem: str | None = None

    @classmethod
    def read(cls, source: Path | None, lost_journal: str | None, depot_head: int | None) -> _Carry:
        out = cls()
        if source is None:
            return out
        try:
            conn = sqlite3.connect(source, timeout=5.0)
        except sqlite3.Error as exc:
            out.problem = f"cannot open {source}: {exc}"
            return out
        try:
            out._read(conn, lost_journal, depot_head)
        except (sqlite3.Error, KeyError, ValueError) as exc:
            out.problem = f"cannot read {source}: {exc}"
        finally:
            conn.close()
        return out

    def _read(self, conn: sqlite3.Connection, lost_journal: str | None, head: int | None) -> None:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "ORDER BY type='table' DESC, rowid"
        ).fetchall()
        for kind, name, table, sql in objects:  # tables first, then their indexes
            if table in _SYNC_TABLES or str(name).startswith("sqlite_"):
                continue
            if table in self.tables_lost:
                continue
            if kind == "table":
                try:
                    rows = [tuple(r) for r in conn.execute(f'SELECT * FROM "{name}"').fetchall()]
                except sqlite3.Error:
                    self.tables_lost.append(str(name))
                    continue
                self.rows.append((str(name), rows))
            self.schema.append(str(sql))
        self.meta = [
            (str(k), str(v))
            for k, v in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'schema:%'")
        ]
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.journal_id = meta["journal_id"]
        last = int(meta["last_seq"])
        if self.journal_id == lost_journal:
            self.found_seq = last
        after = int(meta["acked_seq"])
        if head is not None and self.journal_id == lost_journal:
            after = max(after, head)  # the depot holds these: nothing to carry
        if after >= last:
            return
        if after == int(meta["pruned_seq"]):
            prev = bytes.fromhex(meta["pruned_hash"])
        else:
            row = conn.execute("SELECT hash FROM events WHERE seq=?", (after,)).fetchone()
            prev = bytes(row[0]) if row is not None else b""
        head_hash = bytes.fromhex(meta["last_hash"])
        verdicts = classify(prev, after + 1, read_raw(conn, after), head_hash)
        have = verdicts[-1].seq if verdicts else after
        for v in verdicts:
            if v.state in (DAMAGED, MISSING) or v.row is None or v.row.event is None:
                self.damaged.append(v.seq)
            else:
                self.events.append(v.row)
        self.damaged.extend(range(have + 1, last + 1))


def _had(mark: Mark | None) -> int | None:
    return mark.last_seq if mark is not None else None


def _peek(path: Path) -> tuple[str, int] | None:
    """(journal id, last sequence number) of a journal file, or None if it is not one."""
    try:
        with path.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return None
        conn = sqlite3.connect(path, timeout=1.0)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            return str(meta["journal_id"]), int(meta["last_seq"])
        finally:
            conn.close()
    except (OSError, sqlite3.Error, KeyError, ValueError):
        return None


def _row_event(r: tuple[Any, ...]) -> Event:
    return Event(
        seq=r[0],
        uuid=r[1],
        boot_id=r[2],
        mono_ns=r[3],
        wall_ns=r[4],
        wall_synced=bool(r[5]),
        kind=r[6],
        payload=json.loads(r[7]),
        hash=bytes(r[8]),
    )
