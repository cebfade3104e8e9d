"""The parcel locker: compartments, drop-off, pickup, holds, returns, alarms, remote commands.

Owns what happens between a person and a door. One controller thread owns the lock-board bus
and all state; scanner reads, keypad entries and depot commands are queued to it, and the
boards are polled on a timer (they never report by themselves), one board per step with the
queue served in between, so a person waits for one board's answer, never for a whole round.
Every fact is an event in the journal, and the locker's state (which compartment holds which
parcel, which door was opened for what) lives in tables of the same SQLite file, written in
the same transaction as the event that changed it — so a power cut at any instant leaves state
and journal agreeing, and a restart resumes from them and a fresh board poll.

Must never: open a door for a wrong code or an unverified command, confirm a deposit before
the door closed on a parcel, issue a credential twice, hold a pickup code in plaintext
anywhere (journal, tables, logs), or take a failed board read for "door closed".
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.lockboard import BoardStatus, LockBoardError, LockBus
from edge.credentials import KeypadGuard, PresentedSecret, hash_presented
from edge.desk import BADGE_PREFIX as BADGE_PREFIX  # re-exported: the bench, tests use it
from edge.desk import (
    GUARD_TABLE,
    Controller,
    asked_by,
    badge_refusal,
    carry_out,
    command_verifier,
    extend_hold,
    find_credential,
    issue_unique,
    journal_attempt,
    journal_deposit,
    load_guard,
    lockout_wait,
    lookup_salt,
    parcel_label,
    raise_alarm,
)
from edge.desk import QR_PREFIX as QR_PREFIX  # re-exported: locker_device, tests use it
from edge.errors import EdgeError
from edge.locker_config import CompartmentSpec, LockerConfig
from parcel.identify import Rejection
from sync.journal import Journal, JournalTransaction
from sync.return_codes import (
    RETURN_QR_PREFIX,
    ReturnCodeError,
    check_hash_text,
    code_hash,
    is_return_code,
    qr_hash,
    salt_from_text,
    same_hash,
)
from sync.signing import ReplayStore

log = logging.getLogger("edge.locker")

SCHEMA_VERSION = 1
_SCHEMA = [
    """CREATE TABLE compartments (
        id TEXT PRIMARY KEY, board INTEGER NOT NULL, lock INTEGER NOT NULL,
        size TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'free',
        parcel TEXT, reserved_for TEXT, reserved_until_ns INTEGER, out_reason TEXT)""",
    """CREATE TABLE parcels (
        parcel TEXT PRIMARY KEY, compartment TEXT NOT NULL, state TEXT NOT NULL,
        deposited_ns INTEGER NOT NULL, hold_until_ns INTEGER NOT NULL,
        credential TEXT NOT NULL, code_tag TEXT NOT NULL, qr_tag TEXT NOT NULL)""",
    "CREATE INDEX parcels_code_tag ON parcels(code_tag)",
    "CREATE INDEX parcels_qr_tag ON parcels(qr_tag)",
    "CREATE TABLE locker_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE openings (
        compartment TEXT PRIMARY KEY, purpose TEXT NOT NULL, parcel TEXT,
        unlocked_ns INTEGER NOT NULL, door_seen_open INTEGER NOT NULL DEFAULT 0,
        bigger INTEGER NOT NULL DEFAULT 0)""",
    GUARD_TABLE,
]
# Customers' returns the depot told the locker to take in (`expect_return`): only the hashes
# of each code and QR (sync.return_codes), under the salt the depot keeps for this locker.
# `state`: expected, dropped (in a compartment: a `parcels` row in state 'return'), lapsed.
# `min_rank`: the size rank of the last compartment closed empty for it; the next opening
# is bigger. Its own owner, so a locker from before returns gains the table at start.
RETURNS_SCHEMA_VERSION = 1
_RETURNS_SCHEMA = [
    """CREATE TABLE expected_returns (
        parcel TEXT PRIMARY KEY, size TEXT NOT NULL, salt TEXT NOT NULL,
        code_hash TEXT NOT NULL, qr_hash TEXT NOT NULL, until_ns INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'expected', min_rank REAL NOT NULL DEFAULT 0)""",
    "CREATE INDEX expected_returns_code ON expected_returns(code_hash)",
    "CREATE INDEX expected_returns_qr ON expected_returns(qr_hash)",
]

# Keypad lines (a serial keypad sends its keys, then CR, like a scanner without AIM).
COURIER_PREFIX = "*"  # "*<badge>": a courier identifies on the keypad
KEY_DOESNT_FIT = "#1"
KEY_COLLECT_RETURNS = "#2"
KEY_LOGOUT = "#0"

# The opening of a door for a customer's return (their code or QR; `expect_return`).
RETURN_DROPOFF = "return_dropoff"
# The longest a healthy controller goes between two passes of its loop besides its wait for
# the next poll: one board's status with its retries (three 0.2 s attempts), a journal commit
# with its fsync on an SD card, a credential issued. A controller silent for three times that,
# or three poll intervals if longer, is stalled (`Locker.health`).
CONTROLLER_PASS_S = 2.0


class LockerError(EdgeError):
    """A locker action could not be carried out."""


class Display(Protocol):
    """What the person at the locker sees (a screen; a JSON line in the CLI)."""

    def show(self, message: str, **facts: Any) -> None: ...


class JsonLinesDisplay:
    """The CLI's display: one JSON object per line on stdout, flushed."""

    def __init__(self, stream: Any = None) -> None:
        import sys

        self._out = stream or sys.stdout
        self._lock = threading.Lock()

    def show(self, message: str, **facts: Any) -> None:
        with self._lock:
            self._out.write(json.dumps({"display": message, **facts}) + "\n")
            self._out.flush()


@dataclass
class _Door:
    open: bool
    item: bool
    open_since: float | None = None
    left_open_alarmed: bool = False
    mismatch_alarmed: bool = False


@dataclass
class _CourierSession:
    badge: str
    until: float
    dropoff_parcel: str | None = None
    returns: list[str] = field(default_factory=list)


class Locker:
    """A running locker. Inputs are queued (`scan`, `key`, `command`); `start()` runs it."""

    def __init__(
        self,
        config: LockerConfig,
        journal: Journal,
        bus: LockBus,
        display: Display,
        *,
        replay_store: ReplayStore | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.bus = bus
        self.display = display
        self._specs: dict[str, CompartmentSpec] = {c.id: c for c in config.compartments}
        self._by_lock = {(c.board, c.lock): c.id for c in config.compartments}
        self._controller = Controller("locker")
        self._doors: dict[str, _Door] = {}
        self._unlock_started: dict[str, float] = {}  # monotonic time of each pending unlock
        self._offline: set[int] = set()
        self._courier: _CourierSession | None = None
        self._last_expiry_check = 0.0
        self.polls = 0
        # Set once every board has answered a poll since start: the locker knows its doors.
        self.boards_seen = threading.Event()
        journal.ensure_tables("locker", SCHEMA_VERSION, _SCHEMA)
        journal.ensure_tables("locker_returns", RETURNS_SCHEMA_VERSION, _RETURNS_SCHEMA)
        self._sync_compartments()
        self._salt = lookup_salt(journal, "locker_meta")
        # Compartments with a recorded opening; only this thread writes openings, so the set
        # mirrors the table and a poll need not ask SQLite about every door.
        self._open_cids = {str(r[0]) for r in journal.query("SELECT compartment FROM openings")}
        self._verifier, self._controller.own_store = command_verifier(
            config.journal, config.command_keys, config.device_id, replay_store
        )
        self._guard = load_guard(journal, self._guard_damaged)
        # Guessing courier badges is throttled like guessing pickup codes.
        self._badge_guard = KeypadGuard()

    def _guard_damaged(self, tx: JournalTransaction, error: str) -> None:
        self._alarm(tx, "keypad_state_damaged", error=error)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._controller.start(self._run)

    def health(self) -> list[str]:
        """The controller thread, if it is dead or stalled (empty: healthy, or not started)."""
        return self._controller.health(max(CONTROLLER_PASS_S, self.config.poll_interval_s))

    def status_line(self) -> str:
        """`12/40 occupied`, then compartments out of service and boards not answering."""
        counts = dict(
            self.journal.query("SELECT state, count(*) FROM compartments GROUP BY state")
        )
        line = f"{counts.get('occupied', 0)}/{len(self._specs)} occupied"
        if counts.get("out_of_service"):
            line += f", {counts['out_of_service']} out of service"
        offline = sorted(self._offline)  # the controller's set, copied in one step
        if offline:
            boards = ", ".join(str(b) for b in offline)
            line += f", board{'s' if len(offline) > 1 else ''} {boards} offline"
        return line

    def stop(self, timeout: float = 5.0) -> None:
        self._controller.stop(timeout)

    # --- inputs (any thread) ---------------------------------------------------------------

    def scan(self, data: str, aim: str | None = None) -> None:
        """A read from the locker's scanner: a parcel label, a courier badge or a pickup QR."""
        self._controller.inbox.put(lambda: self._on_scan(data, aim))

    def key(self, line: str) -> None:
        """A line from the keypad: a pickup code, a courier code, or a function key.

        A pickup code is hashed here, on the caller's thread (the keypad's reader), before it
        is queued: its scrypt (~9 ms here, several times that on a Pi; it lets go of the GIL)
        then overlaps whatever the controller is doing, a board being asked most often,
        instead of following it. Hashing is not checking: the controller still refuses a code
        unchecked during a lockout, and only it compares the hash with anything.
        """
        line = line.strip()
        presented = hash_presented(line, self._salt, is_code=True) if line.isdigit() else None
        self._controller.inbox.put(lambda: self._on_key(line, presented))

    def command(self, name: str, payload: bytes) -> None:
        """A depot command as it came off the wire; verified before anything is done."""
        self._controller.inbox.put(lambda: self._on_command(name, payload))

    # --- the controller thread -------------------------------------------------------------

    def _run(self) -> None:
        """Serve the queue, and poll the boards every `poll_interval_s`, one board per step.

        A round of 13 boards takes ~150 ms (a status exchange and the bus's 10 ms turnaround
        each, more at 19,200 baud): a code typed at its start would wait all of it. So between
        two boards of a round the queue is looked at without waiting, and one waiting input
        goes first; the round still goes on one board per step however busy the queue is.
        """
        ctl = self._controller
        next_poll = time.monotonic()
        due: list[int] = []  # boards of the current round not yet asked
        while not ctl.stopping.is_set():
            ctl.beat_at = time.monotonic()
            try:
                if due:
                    job = ctl.inbox.get_nowait()
                else:
                    job = ctl.inbox.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                job = None
            try:
                if job is not None:
                    job()
                now = time.monotonic()
                if not due and now >= next_poll:
                    # Scheduled before polling: a poll that fails must not make the loop spin,
                    # and the rate stays the configured one however long a round takes.
                    next_poll = max(next_poll + self.config.poll_interval_s, now)
                    self.polls += 1
                    due = [b.board for b in self.bus.boards]
                if due:
                    # Taken off the round before asking: a board whose poll raises is not
                    # asked again at once.
                    self._poll_board(due.pop(0))
                    if not due:
                        self._round_done()
            except Exception:
                # One bad input or a transient board fault must not stop the locker.
                log.exception("locker controller step failed")

    # --- state helpers ---------------------------------------------------------------------

    def _sync_compartments(self) -> None:
        known = {r[0] for r in self.journal.query("SELECT id FROM compartments")}
        with self.journal.transaction("cannot record compartments") as tx:
            for c in self.config.compartments:
                if c.id not in known:
                    tx.execute(
                        "INSERT INTO compartments(id, board, lock, size) VALUES (?,?,?,?)",
                        (c.id, c.board, c.lock, c.size),
                    )
                    tx.append(
                        "compartment_installed",
                        {"compartment": c.id, "size": c.size, "board": c.board, "lock": c.lock},
                    )

    def _compartment(self, cid: str) -> dict[str, Any]:
        row = self.journal.query("SELECT state, parcel FROM compartments WHERE id=?", (cid,))
        state, parcel = row[0]
        return {"state": state, "parcel": parcel}

    def _opening(self, cid: str) -> dict[str, Any] | None:
        rows = self.journal.query(
            "SELECT purpose, parcel, unlocked_ns, door_seen_open, bigger "
            "FROM openings WHERE compartment=?",
            (cid,),
        )
        if not rows:
            return None
        p, parcel, at, seen, bigger = rows[0]
        return {
            "purpose": p,
            "parcel": parcel,
            "unlocked_ns": at,
            "seen": bool(seen),
            "bigger": bool(bigger),
        }

    def _now_ns(self) -> int:
        return self.journal.clock.wall_ns()

    def _alarm(self, tx: JournalTransaction, alarm: str, **facts: Any) -> None:
        raise_alarm(tx, log, alarm, **facts)

    def _choose(self, parcel: str, min_rank: float = 0.0) -> str | None:
        """The compartment reserved for the parcel, else the smallest free one big enough."""
        reserved = self.journal.query(
            "SELECT id FROM compartments WHERE state='reserved' AND reserved_for=?", (parcel,)
        )
        if (
            reserved
            and min_rank == 0.0
            and self._specs[str(reserved[0][0])].board not in self._offline
        ):
            return str(reserved[0][0])
        free = self._free_ids()
        fitting = [c for c in free if self.config.size_rank(self._specs[c].size) > min_rank]
        if not fitting:
            return None
        return min(fitting, key=lambda c: (self.config.size_rank(self._specs[c].size), c))

    def _open(self, cid: str, purpose: str, parcel: str | None, *, bigger: bool = False) -> None:
        """Record why a door is being opened, then pulse its lock; the record comes first so a
        power cut between the two leaves a known, resumable situation."""
        with self.journal.transaction("cannot record an unlock") as tx:
            self._record_opening(tx, cid, purpose, parcel, bigger=bigger)
        self._pulse(cid, purpose)

    def _record_opening(
        self,
        tx: JournalTransaction,
        cid: str,
        purpose: str,
        parcel: str | None,
        *,
        bigger: bool = False,
    ) -> None:
        tx.execute(
            "INSERT INTO openings(compartment, purpose, parcel, unlocked_ns, bigger) "
            "VALUES (?,?,?,?,?)",
            (cid, purpose, parcel, self._now_ns(), int(bigger)),
        )
        tx.append("door_unlocked", {"compartment": cid, "purpose": purpose, "parcel": parcel})

    def _pulse(self, cid: str, purpose: str) -> None:
        """After the opening is committed: the unlock frame, and the jam timer starts."""
        spec = self._specs[cid]
        self._open_cids.add(cid)
        try:
            self.bus.unlock(spec.board, spec.lock)
        except LockBoardError as exc:
            log.error("unlock of %s failed: %s", cid, exc)  # the jam timer decides what it was
        self._unlock_started[cid] = time.monotonic()
        self.display.show("door open", compartment=cid, purpose=purpose)

    # --- scanner and keypad ------------------------------------------------------------------

    def _courier_active(self) -> _CourierSession | None:
        if self._courier is not None and time.monotonic() > self._courier.until:
            self._courier = None
        return self._courier

    def _login(self, badge: str) -> None:
        refused = badge_refusal(
            self.journal, self._badge_guard, self.config.courier_badges, badge,
            time.monotonic(), log,
        )
        if refused is not None:
            self.display.show(refused)
            return
        self._courier = _CourierSession(badge, time.monotonic() + self.config.courier_session_s)
        with self.journal.transaction() as tx:
            tx.append("courier_identified", {"courier": badge})
        self.display.show("courier welcome: scan a parcel, #2 to collect returns", courier=badge)

    def _on_scan(self, data: str, aim: str | None) -> None:
        if data.startswith(BADGE_PREFIX):
            self._login(data[len(BADGE_PREFIX) :])
        elif data.startswith(QR_PREFIX):
            self._pickup("qr", data[len(QR_PREFIX) :])
        elif data.startswith(RETURN_QR_PREFIX):
            self._return_dropoff("qr", data[len(RETURN_QR_PREFIX) :])
        elif self._courier_active() is not None:
            self._dropoff(data, aim)
        else:
            self.display.show("scan your pickup QR code or enter your code")

    def _on_key(self, line: str, presented: PresentedSecret | None = None) -> None:
        courier = self._courier_active()
        if line.startswith(COURIER_PREFIX):
            self._login(line[len(COURIER_PREFIX) :])
        elif line == KEY_LOGOUT and courier is not None:
            self._courier = None
            self.display.show("goodbye")
        elif line == KEY_DOESNT_FIT and courier is not None:
            self._doesnt_fit()
        elif line == KEY_COLLECT_RETURNS and courier is not None:
            self._collect_returns(courier)
        elif is_return_code(line):
            self._return_dropoff("code", line)
        elif line.isdigit():
            self._pickup("code", line, presented)
        else:
            self.display.show("unknown key")

    # --- drop-off ----------------------------------------------------------------------------

    def _dropoff(self, data: str, aim: str | None) -> None:
        parcel = parcel_label(self.journal, data, aim)
        if isinstance(parcel, Rejection):
            self.display.show("parcel refused", reason=parcel.reason)
            return
        held = self.journal.query(
            "SELECT compartment, state FROM parcels WHERE parcel=? AND "
            "state IN ('stored', 'expired', 'return')",
            (parcel,),
        )
        busy = self.journal.query("SELECT compartment FROM openings WHERE parcel=?", (parcel,))
        if held or busy:
            reason = "parcel is already in this locker"
            with self.journal.transaction() as tx:
                tx.append("dropoff_refused", {"parcel": parcel, "reason": reason})
            self.display.show("parcel refused", reason=reason)
            return
        cid = self._choose(parcel)
        if cid is None:
            with self.journal.transaction() as tx:
                tx.append("dropoff_refused", {"parcel": parcel, "reason": "locker full"})
            self.display.show("locker full", parcel=parcel)
            return
        self._open(cid, "dropoff", parcel)

    def _doesnt_fit(self) -> None:
        rows = self.journal.query(
            "SELECT compartment, parcel FROM openings WHERE purpose='dropoff'"
        )
        if not rows:
            self.display.show("no drop-off in progress")
            return
        cid = str(rows[0][0])
        with self.journal.transaction() as tx:
            tx.execute("UPDATE openings SET bigger=1 WHERE compartment=?", (cid,))
            tx.append("parcel_does_not_fit", {"compartment": cid, "parcel": rows[0][1]})
        self.display.show("close the door empty; a bigger compartment will open", compartment=cid)

    def _deposit(self, tx: JournalTransaction, cid: str, parcel: str) -> None:
        issued, code_tag, qr_tag = issue_unique(self.journal, self._salt, "parcels")
        now = self._now_ns()
        hold_until = now + int(self.config.hold_s * 1e9)
        tx.execute(
            "INSERT OR REPLACE INTO parcels(parcel, compartment, state, deposited_ns, "
            "hold_until_ns, credential, code_tag, qr_tag) VALUES (?,?,?,?,?,?,?,?)",
            (
                parcel,
                cid,
                "stored",
                now,
                hold_until,
                json.dumps(issued.stored.to_record()),
                code_tag,
                qr_tag,
            ),
        )
        tx.execute(
            "UPDATE compartments SET state='occupied', parcel=?, reserved_for=NULL, "
            "reserved_until_ns=NULL WHERE id=?",
            (parcel, cid),
        )
        journal_deposit(
            tx,
            issued,
            parcel=parcel,
            place=cid,
            size=self._specs[cid].size,
            hold_until=hold_until,
            sealing_key=self.config.depot_sealing_key,
            device_id=self.config.device_id,
        )

    # --- pickup ------------------------------------------------------------------------------

    def _keypad_locked(self, kind: str, method: str, now: float) -> bool:
        """Whether the keypad is in a lockout after wrong codes; if so the attempt is journaled
        as refused (`kind`: a pickup's or a return's) and the screen says how long to wait."""
        wait = lockout_wait(self.journal, self._guard, kind, method, now)
        if wait is None:
            return False
        self.display.show("keypad locked", seconds=round(wait))
        return True

    def _pickup(self, method: str, secret: str, presented: PresentedSecret | None = None) -> None:
        """One pickup attempt: hashed once (a code already by `key`), found by its lookup tag
        and verified with that same hash, recorded (right or wrong) in the same commit as the
        opening it causes, so one scrypt and one commit stand between the last key and the
        unlock frame. The commit comes before the pulse, always: a door is never opened
        without its reason on record."""
        now = time.monotonic()
        is_code = method == "code"
        if is_code and self._keypad_locked("pickup_attempt", method, now):
            return
        match = self._find_credential(secret, is_code, presented)
        offline = match is not None and self._specs[match[1]].board in self._offline
        busy = match is not None and (match[1] in self._open_cids or offline)
        found = match[0] if match is not None else None
        with self.journal.transaction() as tx:
            guard = self._guard if is_code else None  # one guard: pickups, returns
            journal_attempt(tx, "pickup_attempt", method, found, guard, now)
            if match is not None and not busy:
                self._record_opening(tx, match[1], "pickup", match[0])
        if match is None:
            self.display.show("code not recognised")
        elif offline:
            self.display.show(
                "your compartment cannot be opened right now; try again soon", compartment=match[1]
            )
        elif busy:
            self.display.show("your door is already open", compartment=match[1])
        else:
            self._pulse(match[1], "pickup")

    def _find_credential(
        self, secret: str, is_code: bool, presented: PresentedSecret | None = None
    ) -> tuple[str, str] | None:
        """The stored parcel and compartment `secret` opens, if any. `presented` is its hash
        when the caller made it already (Locker.key); a malformed secret is never hashed."""
        return find_credential(
            self.journal, secret, self._salt, is_code, log, presented=presented,
            table="parcels", place="compartment", states=("stored",),
        )

    # --- customers' returns (the reverse leg) -------------------------------------------------

    def _return_dropoff(self, method: str, secret: str) -> None:
        """A customer's return code typed (or its QR shown): the smallest free compartment that
        fits the return opens, recorded (and the code counted, right or wrong, against the
        same keypad guard as pickup codes) in the commit before the pulse. The code opens
        once: the door closing on an item takes the return in (`return_dropped`); closed
        empty, the code opens a bigger compartment next time."""
        now = time.monotonic()
        is_code = method == "code"
        if is_code and self._keypad_locked("return_attempt", method, now):
            return
        match = self._find_return(secret, is_code)
        parcel = match[0] if match is not None else None
        busy = parcel is not None and bool(
            self.journal.query("SELECT 1 FROM openings WHERE parcel=?", (parcel,))
        )
        cid = None
        if match is not None and not busy:
            cid = self._choose_return(match[1], match[2])
        with self.journal.transaction() as tx:
            guard = self._guard if is_code else None  # one guard: pickups, returns
            journal_attempt(tx, "return_attempt", method, parcel, guard, now)
            if cid is not None:
                self._record_opening(tx, cid, RETURN_DROPOFF, parcel)
            elif parcel is not None and not busy:
                tx.append("return_refused", {"parcel": parcel, "reason": "locker full"})
        if parcel is None:
            self.display.show("code not recognised")
        elif busy:
            self.display.show("your door is already open", parcel=parcel)
        elif cid is None:
            self.display.show("no compartment free for your return; try again later")
        else:
            self._pulse(cid, RETURN_DROPOFF)

    def _find_return(self, secret: str, is_code: bool) -> tuple[str, str, float] | None:
        """(return id, size, min_rank) of the expected return `secret` opens, if any: hashed
        once per salt the depot used for this locker's returns (one, unless it changed)."""
        column = "code_hash" if is_code else "qr_hash"
        now = self._now_ns()
        salts = self.journal.query(
            "SELECT DISTINCT salt FROM expected_returns WHERE state='expected' AND until_ns > ?",
            (now,),
        )
        for (salt_text,) in salts:
            try:
                salt = salt_from_text(str(salt_text))
            except ReturnCodeError as exc:
                log.error("an expected return's salt is damaged: %s", exc)
                continue
            presented = code_hash(secret, salt) if is_code else qr_hash(secret, salt)
            if presented is None:
                return None
            rows = self.journal.query(
                f"SELECT parcel, size, min_rank, {column} FROM expected_returns "
                f"WHERE {column}=? AND salt=? AND state='expected' AND until_ns > ?",
                (presented, salt_text, now),
            )
            for parcel, size, min_rank, stored in rows:
                if same_hash(presented, str(stored)):
                    return str(parcel), str(size), float(min_rank)
        return None

    def _choose_return(self, size: str, min_rank: float) -> str | None:
        """The smallest free compartment of `size` or bigger, and bigger than one it was
        closed empty in before."""
        need = self.config.size_rank(size) if size in self.config.sizes else 0.0
        fitting = [
            c
            for c in self._free_ids()
            if self.config.size_rank(self._specs[c].size) >= need
            and self.config.size_rank(self._specs[c].size) > min_rank
        ]
        if not fitting:
            return None
        return min(fitting, key=lambda c: (self.config.size_rank(self._specs[c].size), c))

    def _take_return(self, tx: JournalTransaction, cid: str, parcel: str) -> None:
        """The door closed on the customer's return: it sits in `cid` until a courier's `#2`
        takes it out, as an expired parcel does (a `parcels` row in state 'return', with no
        pickup credential: nobody collects it with a code)."""
        now = self._now_ns()
        tx.execute("UPDATE expected_returns SET state='dropped' WHERE parcel=?", (parcel,))
        tx.execute(
            "INSERT OR REPLACE INTO parcels(parcel, compartment, state, deposited_ns, "
            "hold_until_ns, credential, code_tag, qr_tag) VALUES (?,?,'return',?,?,'','','')",
            (parcel, cid, now, now),
        )
        tx.execute(
            "UPDATE compartments SET state='occupied', parcel=?, reserved_for=NULL, "
            "reserved_until_ns=NULL WHERE id=?",
            (parcel, cid),
        )
        tx.append(
            "return_dropped",
            {"parcel": parcel, "compartment": cid, "size": self._specs[cid].size},
        )

    def _expect_return(self, tx: JournalTransaction, args: Mapping[str, Any]) -> dict[str, Any]:
        """The depot's `expect_return`: remember the return's hashes until `hours` from now.
        Sent again for a return still expected (a new code, a longer time), it replaces them;
        for a return already dropped it changes nothing."""
        parcel, size = str(args["parcel"]), str(args["size"])
        try:
            salt_from_text(str(args["salt"]))
            code = check_hash_text(str(args["code_hash"]), "code hash")
            qr = check_hash_text(str(args["qr_hash"]), "QR hash")
        except ReturnCodeError as exc:
            raise LockerError(str(exc)) from None
        if size not in self.config.sizes:
            raise LockerError(f"no compartment of size {size} in this locker")
        known = self.journal.query(
            "SELECT state FROM expected_returns WHERE parcel=?", (parcel,)
        )
        if known and known[0][0] == "dropped":
            return {"parcel": parcel, "again": True, "state": "dropped"}
        until = self._now_ns() + int(float(args["hours"]) * 3600e9)
        tx.execute(
            "INSERT OR REPLACE INTO expected_returns(parcel, size, salt, code_hash, qr_hash, "
            "until_ns, state, min_rank) VALUES (?,?,?,?,?,?,'expected',0)",
            (parcel, size, str(args["salt"]), code, qr, until),
        )
        return {"parcel": parcel, "size": size, "until_ns": until}

    # --- returns -----------------------------------------------------------------------------

    def _collect_returns(self, courier: _CourierSession) -> None:
        courier.returns = [
            str(r[0])
            for r in self.journal.query(
                "SELECT compartment FROM parcels WHERE state IN ('expired', 'return') "
                "ORDER BY compartment"
            )
        ]
        if not courier.returns:
            self.display.show("no parcels to return")
            return
        self._next_return(courier)

    def _next_return(self, courier: _CourierSession) -> None:
        while courier.returns:
            cid = courier.returns.pop(0)
            parcel = self._compartment(cid)["parcel"]
            if parcel is not None:
                self._open(cid, "return", parcel)
                return
        self.display.show("all returns collected")

    def _expire_holds(self) -> None:
        now = self._now_ns()
        lapsed = self.journal.query(
            "SELECT id, reserved_for FROM compartments WHERE "
            "state='reserved' AND reserved_until_ns <= ?",
            (now,),
        )
        if lapsed:
            with self.journal.transaction() as tx:
                for cid, parcel in lapsed:
                    tx.execute(
                        "UPDATE compartments SET state='free', reserved_for=NULL, "
                        "reserved_until_ns=NULL WHERE id=?",
                        (cid,),
                    )
                    tx.append("reservation_lapsed", {"compartment": cid, "parcel": parcel})
        gone = self.journal.query(
            "SELECT parcel FROM expected_returns WHERE state='expected' AND until_ns <= ?", (now,)
        )
        if gone:  # a return code that ran out opens nothing any more
            with self.journal.transaction() as tx:
                for (parcel,) in gone:
                    tx.execute(
                        "UPDATE expected_returns SET state='lapsed' WHERE parcel=?", (parcel,)
                    )
                    tx.append("return_lapsed", {"parcel": parcel})
        due = self.journal.query(
            "SELECT parcel, compartment FROM parcels WHERE state='stored' AND hold_until_ns <= ?",
            (now,),
        )
        if not due:
            return
        with self.journal.transaction() as tx:
            for parcel, cid in due:
                tx.execute("UPDATE parcels SET state='expired' WHERE parcel=?", (parcel,))
                tx.append("hold_expired", {"parcel": parcel, "compartment": cid})

    # --- commands ----------------------------------------------------------------------------

    def _on_command(self, name: str, payload: bytes) -> None:
        """Verified and carried out as a counter's are (edge.desk.carry_out); a `remote_open`
        pulses its door only once the opening and its `command_accepted` are committed."""
        pulse = carry_out(self.journal, self._verifier, name, payload, self._apply, LockerError)
        if pulse is not None:
            self._pulse(pulse, "remote_open")

    def _apply(
        self, tx: JournalTransaction, action: str, args: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        """Carry out a verified command inside `tx`; returns its facts and a door to pulse."""
        if action == "reserve":
            parcel = str(args["parcel"])
            already = self.journal.query(
                "SELECT id FROM compartments WHERE state='reserved' AND reserved_for=?", (parcel,)
            )
            if already:  # a depot retry with a new id must not hold a second compartment
                return {"parcel": parcel, "compartment": str(already[0][0]), "again": True}, None
            size = str(args.get("size", min(self.config.sizes, key=self.config.size_rank)))
            if size not in self.config.sizes:
                raise LockerError(f"unknown size {size!r}")
            rank = self.config.size_rank(size)
            free = [
                c for c in self._free_ids() if self.config.size_rank(self._specs[c].size) >= rank
            ]
            if not free:
                raise LockerError(f"no free compartment of size {size} or bigger")
            cid = min(free, key=lambda c: (self.config.size_rank(self._specs[c].size), c))
            until = self._now_ns() + int(float(args.get("hours", 24)) * 3600e9)
            tx.execute(
                "UPDATE compartments SET state='reserved', reserved_for=?, "
                "reserved_until_ns=? WHERE id=?",
                (parcel, until, cid),
            )
            return {"parcel": parcel, "compartment": cid}, None
        if action == "extend_hold":
            extended = extend_hold(self.journal, tx, "parcels", args)
            if extended is None:
                raise LockerError(f"parcel {args['parcel']} is not in this locker")
            return extended, None
        if action == "remote_open":
            cid = str(args["compartment"])
            if cid not in self._specs:
                raise LockerError(f"no compartment {cid}")
            if cid in self._open_cids:
                raise LockerError(f"compartment {cid} is already open")
            if self._specs[cid].board in self._offline:
                raise LockerError(f"the board of {cid} is off the bus")
            self._record_opening(tx, cid, "remote_open", self._compartment(cid)["parcel"])
            return {"compartment": cid, **asked_by(args)}, cid
        if action == "set_in_service":
            return self._set_in_service(tx, str(args["compartment"]), args), None
        if action == "expect_return":
            return self._expect_return(tx, args), None
        raise LockerError(f"unknown action {action!r}")

    def _set_in_service(
        self, tx: JournalTransaction, cid: str, args: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A person fixed a compartment the locker took out of service (a jammed lock): it is
        back to what its record says it holds: the parcel still inside (occupied), a
        reservation still running (reserved), else free. Journaled as
        `compartment_in_service` with who and why, beside the command's `command_accepted`."""
        if cid not in self._specs:
            raise LockerError(f"no compartment {cid}")
        rows = self.journal.query(
            "SELECT state, parcel, reserved_for, reserved_until_ns, out_reason "
            "FROM compartments WHERE id=?",
            (cid,),
        )
        state, parcel, reserved_for, reserved_until, out_reason = rows[0]
        if state != "out_of_service":
            raise LockerError(f"compartment {cid} is in service ({state})")
        if parcel is not None:
            now_state = "occupied"
        elif reserved_for is not None and (reserved_until or 0) > self._now_ns():
            now_state = "reserved"
        else:
            now_state = "free"
            reserved_for = reserved_until = None
        tx.execute(
            "UPDATE compartments SET state=?, out_reason=NULL, reserved_for=?, "
            "reserved_until_ns=? WHERE id=?",
            (now_state, reserved_for, reserved_until, cid),
        )
        facts = {"compartment": cid, "state": now_state, "was": out_reason, **asked_by(args)}
        tx.append("compartment_in_service", facts)
        # A door whose contents were not checked while it was out of service is looked at
        # afresh at the next change its sensors report.
        door = self._doors.get(cid)
        if door is not None:
            door.mismatch_alarmed = False
        return {"compartment": cid, "state": now_state}

    def _free_ids(self) -> list[str]:
        """Free compartments, without an opening, on boards that answer."""
        return [
            str(r[0])
            for r in self.journal.query(
                "SELECT id FROM compartments WHERE state='free' AND id NOT IN "
                "(SELECT compartment FROM openings)"
            )
            if self._specs[str(r[0])].board not in self._offline
        ]

    # --- polling the boards --------------------------------------------------------------------

    def _poll_board(self, board: int) -> None:
        try:
            status = self.bus.status(board)
        except LockBoardError as exc:
            if board not in self._offline:
                self._offline.add(board)
                with self.journal.transaction() as tx:
                    self._alarm(tx, "board_offline", board=board, error=str(exc))
            return
        if board in self._offline:
            self._offline.discard(board)
            with self.journal.transaction() as tx:
                tx.append("board_back_online", {"board": board})
        self._observe_board(status)

    def _round_done(self) -> None:
        """Every board was asked once: what needs a whole round (all seen, holds due)."""
        if not self.boards_seen.is_set() and not self._offline:
            self.boards_seen.set()
        now = time.monotonic()
        if now - self._last_expiry_check > 1.0:
            self._last_expiry_check = now
            self._expire_holds()

    def _observe_board(self, status: BoardStatus) -> None:
        now = time.monotonic()
        for lock in range(len(status.door_open)):
            cid = self._by_lock.get((status.board, lock))
            if cid is None:
                continue
            is_open, item = status.door_open[lock], status.item_present[lock]
            door = self._doors.get(cid)
            opening = self._opening(cid) if cid in self._open_cids else None
            if door is None:  # first sight since start: recovery
                door = self._doors[cid] = _Door(is_open, item, now if is_open else None)
                self._recover(cid, door, opening)
                continue
            if is_open and not door.open:
                door.open_since = now
                if opening is not None:
                    with self.journal.transaction() as tx:
                        tx.execute(
                            "UPDATE openings SET door_seen_open=1 WHERE compartment=?", (cid,)
                        )
                        tx.append("door_opened", {"compartment": cid})
                else:
                    with self.journal.transaction() as tx:
                        self._alarm(tx, "forced_open", compartment=cid)
            elif not is_open and door.open:
                door.open_since = None
                if opening is not None:
                    self._closed(cid, opening, item)
                else:
                    with self.journal.transaction() as tx:
                        tx.append("door_closed", {"compartment": cid, "item_present": item})
            item_changed = item != door.item
            just_closed = door.open and not is_open
            door.open, door.item = is_open, item
            if opening is not None and not is_open and not opening["seen"]:
                if item_changed:
                    # Opened, used and shut between two polls: the contents prove it opened.
                    self._closed(cid, opening, item)
                    continue
                started = self._unlock_started.get(cid, now)
                if now - started > self.config.jam_timeout_s:
                    self._jammed(cid, opening)
            if (
                is_open
                and door.open_since is not None
                and now - door.open_since > self.config.door_open_alarm_s
                and not door.left_open_alarmed
            ):
                door.left_open_alarmed = True
                with self.journal.transaction() as tx:
                    self._alarm(
                        tx, "door_left_open", compartment=cid, seconds=round(now - door.open_since)
                    )
            if not is_open and opening is None and (item_changed or just_closed):
                # Only when something changed: the record cannot change behind our back.
                self._check_contents(cid, door, item)
            if not is_open:
                door.left_open_alarmed = False

    def _check_contents(self, cid: str, door: _Door, item: bool) -> None:
        state = self._compartment(cid)
        expected = state["parcel"] is not None
        if item != expected and state["state"] != "out_of_service":
            if not door.mismatch_alarmed:
                door.mismatch_alarmed = True
                with self.journal.transaction() as tx:
                    self._alarm(
                        tx,
                        "item_mismatch",
                        compartment=cid,
                        sensor_item=item,
                        recorded_parcel=state["parcel"],
                    )
        else:
            door.mismatch_alarmed = False

    def _recover(self, cid: str, door: _Door, opening: dict[str, Any] | None) -> None:
        """After a restart: an opening recorded before the cut is finished from what the
        sensors say now; a door found open is handled as an open door."""
        if opening is None:
            if door.open:
                with self.journal.transaction() as tx:
                    self._alarm(tx, "forced_open", compartment=cid, at_start=True)
            else:
                self._check_contents(cid, door, door.item)
            return
        if door.open:
            with self.journal.transaction() as tx:
                tx.execute("UPDATE openings SET door_seen_open=1 WHERE compartment=?", (cid,))
                tx.append("opening_resumed", {"compartment": cid, "purpose": opening["purpose"]})
            self._unlock_started[cid] = time.monotonic()
        elif opening["seen"]:
            self._closed(cid, opening, door.item)
        else:
            # Unlocked before the cut but never seen open: the pulse may not have happened.
            # Close the opening as if the door had closed on whatever is inside now.
            self._closed(cid, opening, door.item)

    def _jammed(self, cid: str, opening: dict[str, Any]) -> None:
        with self.journal.transaction() as tx:
            tx.execute("DELETE FROM openings WHERE compartment=?", (cid,))
            tx.execute(
                "UPDATE compartments SET state='out_of_service', out_reason='jammed' WHERE id=?",
                (cid,),
            )
            self._alarm(tx, "lock_jammed", compartment=cid, purpose=opening["purpose"])
        self._open_cids.discard(cid)
        self._unlock_started.pop(cid, None)
        if opening["purpose"] == "dropoff" and opening["parcel"]:
            nxt = self._choose(opening["parcel"])
            if nxt is not None:
                self._open(nxt, "dropoff", opening["parcel"])
                return
            self.display.show("locker full", parcel=opening["parcel"])
        else:
            self.display.show("this door is stuck; support has been called", compartment=cid)

    def _closed(self, cid: str, opening: dict[str, Any], item: bool) -> None:
        purpose, parcel = opening["purpose"], opening["parcel"]
        self._unlock_started.pop(cid, None)
        reopen_bigger = False
        with self.journal.transaction("cannot record a closed door") as tx:
            tx.execute("DELETE FROM openings WHERE compartment=?", (cid,))
            if purpose == "dropoff":
                if item and not opening["bigger"]:
                    self._deposit(tx, cid, parcel)
                elif item:
                    self._alarm(
                        tx,
                        "item_mismatch",
                        compartment=cid,
                        sensor_item=True,
                        recorded_parcel=None,
                        note="closed with item after no-fit",
                    )
                else:
                    tx.append(
                        "dropoff_abandoned",
                        {"compartment": cid, "parcel": parcel, "does_not_fit": opening["bigger"]},
                    )
                    reopen_bigger = opening["bigger"]
            elif purpose == "pickup":
                if item:
                    tx.append("pickup_incomplete", {"compartment": cid, "parcel": parcel})
                else:
                    tx.execute("UPDATE parcels SET state='picked_up' WHERE parcel=?", (parcel,))
                    tx.execute(
                        "UPDATE compartments SET state='free', parcel=NULL WHERE id=?", (cid,)
                    )
                    tx.append("parcel_picked_up", {"compartment": cid, "parcel": parcel})
            elif purpose == RETURN_DROPOFF:
                if item:
                    self._take_return(tx, cid, parcel)
                else:
                    rank = self.config.size_rank(self._specs[cid].size)
                    tx.execute(
                        "UPDATE expected_returns SET min_rank=max(min_rank, ?) WHERE parcel=?",
                        (rank, parcel),
                    )
                    tx.append("return_dropoff_abandoned", {"compartment": cid, "parcel": parcel})
            elif purpose == "return":
                if item:
                    tx.append("return_incomplete", {"compartment": cid, "parcel": parcel})
                else:
                    tx.execute("UPDATE parcels SET state='returned' WHERE parcel=?", (parcel,))
                    tx.execute(
                        "UPDATE compartments SET state='free', parcel=NULL WHERE id=?", (cid,)
                    )
                    tx.append("parcel_returned", {"compartment": cid, "parcel": parcel})
            else:
                tx.append(
                    "door_closed", {"compartment": cid, "item_present": item, "purpose": purpose}
                )
        self._open_cids.discard(cid)
        if purpose == "dropoff" and item and not opening["bigger"]:
            self.display.show("parcel stored; thank you", compartment=cid, parcel=parcel)
        elif purpose == "pickup":
            self.display.show(
                "parcel still inside" if item else "enjoy your parcel", compartment=cid
            )
        elif purpose == "return":
            courier = self._courier_active()
            if courier is not None:
                self._next_return(courier)
        elif purpose == RETURN_DROPOFF:
            if item:
                self.display.show("return received; thank you", compartment=cid, parcel=parcel)
            else:
                self.display.show(
                    "nothing inside: enter your code again for a bigger compartment",
                    compartment=cid,
                )
        if reopen_bigger:
            rank = self.config.size_rank(self._specs[cid].size)
            nxt = self._choose(parcel, min_rank=rank)
            if nxt is None:
                self.display.show("no bigger compartment free", parcel=parcel)
            else:
                self._open(nxt, "dropoff", parcel)
