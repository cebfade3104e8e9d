"""What a parcel locker and a staffed counter both keep and do beside their journal: the
controller thread that owns their state, the lookup salt of their credentials, the wrong-code
guard, the credentials they issue and find, and the depot commands they carry out.

Both are places where a person shows a code to take a parcel (edge.locker, edge.counter), so
both hash codes with a salt of their own, throttle guessing with one KeypadGuard whose state
survives a restart, issue each parcel a credential no other parcel held there shares, seal it
for the depot the same way, and carry out each signed depot command once. One owner for each,
so the two can never drift apart on how a code is guessed at, a credential sealed or a command
replayed. Each device keeps its own tables (`parcels` and `compartments`, `held`): the
functions here are told which to read, and never change a schema.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edge.credentials import (
    CredentialError,
    IssuedCredential,
    KeypadGuard,
    PresentedSecret,
    StoredCredential,
    hash_presented,
    issue_credential,
    sealed_for_depot,
)
from parcel.identify import Rejection, identify
from sync.errors import WireError
from sync.journal import Journal, JournalTransaction
from sync.signing import CommandRejected, CommandVerifier, ReplayStore, SqliteReplayStore
from sync.wire import check_command

__all__ = [
    "ALARM",
    "BADGE_PREFIX",
    "GUARD_TABLE",
    "QR_PREFIX",
    "Controller",
    "asked_by",
    "badge_refusal",
    "carry_out",
    "command_verifier",
    "count_code",
    "extend_hold",
    "find_credential",
    "issue_unique",
    "journal_attempt",
    "journal_deposit",
    "load_guard",
    "lockout_wait",
    "lookup_salt",
    "parcel_label",
    "raise_alarm",
]

#: The table both keep their guard in (one row); part of each device's own schema.
GUARD_TABLE = "CREATE TABLE keypad (id INTEGER PRIMARY KEY CHECK (id = 1), guard TEXT NOT NULL)"

# Scanner data with these prefixes is not a parcel label: a courier's badge, a customer's
# pickup QR (the depot sends the customer the QR with its prefix, sealed in the deposit).
BADGE_PREFIX = "LMC:"
QR_PREFIX = "LMQR:"

#: The event kind of every alarm either device raises; its `alarm` fact says which one.
ALARM = "alarm"

_Kept = TypeVar("_Kept")


class Controller:
    """The one thread that owns a device's state. Inputs from other threads (scans, keys, the
    staff's lines, depot commands) are queued on `inbox` and run on it, so two never
    interleave and a depot command never waits in the network thread. The thread's loop is
    the device's own; it sets `beat_at` on each pass and ends when `stopping` is set, and
    `health` tells a stalled thread from a busy one by it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "locker", "counter": the thread's name, and how health says it
        self.inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self.stopping = threading.Event()
        self.beat_at = time.monotonic()  # the controller's last pass
        # The replay store the device opened for itself (command_verifier), if it did: closed
        # by `stop`, after the thread that checks depot commands against it is done.
        self.own_store: SqliteReplayStore | None = None
        self._thread: threading.Thread | None = None

    def start(self, run: Callable[[], None]) -> None:
        """Run the device's loop `run` on the thread; a daemon, so a loop that hangs never
        keeps the process from exiting."""
        self.beat_at = time.monotonic()
        self._thread = threading.Thread(target=run, name=self.kind, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ask the loop to end, wake it if it waits for input, wait `timeout` for it, and
        close the device's own replay store."""
        self.stopping.set()
        self.inbox.put(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.own_store is not None:
            self.own_store.close()
            self.own_store = None

    def health(self, pass_s: float) -> list[str]:
        """The thread, if it is dead or stalled (empty: healthy, or not started). `pass_s` is
        the longest a healthy loop goes between two passes; three times that is a stall."""
        thread = self._thread
        if thread is None:
            return []
        if not thread.is_alive():
            return [f"{self.kind} controller {thread.name} is not running"]
        limit = 3 * pass_s
        if time.monotonic() - self.beat_at > limit:
            return [f"{self.kind} controller {thread.name} stalled (no pass for over {limit:g} s)"]
        return []


def raise_alarm(tx: JournalTransaction, log: logging.Logger, alarm: str, /, **facts: Any) -> None:
    """Journal an alarm for the depot's staff in `tx`, and log it (on the device's `log`) for
    whoever reads the device's own log."""
    tx.append(ALARM, {"alarm": alarm, **facts})
    log.warning("alarm %s %s", alarm, facts)


def lookup_salt(journal: Journal, meta_table: str) -> bytes:
    """The device's salt for credential lookup tags, made once and kept in `meta_table`
    (a `key, value` table of the device's schema)."""
    rows = journal.query(f"SELECT value FROM {meta_table} WHERE key='lookup_salt'")
    if rows:
        return bytes.fromhex(str(rows[0][0]))
    salt = secrets.token_bytes(16)
    with journal.transaction("cannot store the lookup salt") as tx:
        tx.execute(
            f"INSERT INTO {meta_table}(key, value) VALUES ('lookup_salt', ?)", (salt.hex(),)
        )
    return salt


def load_guard(
    journal: Journal, damaged: Callable[[JournalTransaction, str], None]
) -> KeypadGuard:
    """The wrong-code guard as last stored. A damaged record must neither keep the device from
    starting nor reset silently: `damaged(tx, error)` records it (an alarm), and a fresh
    guard takes over."""
    rows = journal.query("SELECT guard FROM keypad WHERE id=1")
    if not rows:
        return KeypadGuard()
    try:
        return KeypadGuard.from_record(json.loads(rows[0][0]))
    except (CredentialError, ValueError) as exc:
        with journal.transaction() as tx:
            damaged(tx, str(exc))
        return KeypadGuard()


def lockout_wait(
    journal: Journal, guard: KeypadGuard, kind: str, method: str, now: float
) -> float | None:
    """Seconds left of a lockout after wrong codes (None: a code may be tried now). During a
    lockout the attempt is refused unchecked and journaled so (`kind`: a pickup's or a
    return's): a code checked then would let a guesser go on at full speed."""
    wait = guard.check(now)
    if wait is not None:
        with journal.transaction() as tx:
            tx.append(kind, {"method": method, "ok": False, "reason": "keypad locked"})
    return wait


def count_code(tx: JournalTransaction, guard: KeypadGuard, ok: bool, now: float) -> None:
    """One checked code counted against `guard`, its state stored in the same transaction,
    and the lockout it started, if any, journaled (`keypad_locked`)."""
    lockout = guard.record_attempt(ok, now)
    tx.execute(
        "INSERT OR REPLACE INTO keypad(id, guard) VALUES (1, ?)", (json.dumps(guard.to_record()),)
    )
    if lockout is not None:
        tx.append("keypad_locked", {"seconds": lockout.seconds, "lockouts": lockout.count})


def journal_attempt(
    tx: JournalTransaction,
    kind: str,
    method: str,
    parcel: str | None,
    guard: KeypadGuard | None,
    now: float,
) -> None:
    """One secret tried (`kind`: `pickup_attempt`, `return_attempt`), right when it found
    `parcel`: journaled, and counted against `guard` in the same transaction when it was a
    code that can be guessed (None: a QR token, which cannot), so the guard's stored state
    and the journal never disagree on how many wrong codes were tried."""
    if guard is not None:
        count_code(tx, guard, parcel is not None, now)
    found = {"parcel": parcel} if parcel is not None else {}
    tx.append(kind, {"method": method, "ok": parcel is not None, **found})


def parcel_label(journal: Journal, data: str, aim: str | None) -> str | Rejection:
    """The parcel a scanned label names, or why it names none: then the scan is journaled as
    `dropoff_refused` with what was read, so the depot sees the labels that fail on site."""
    try:
        return identify(data, aim).id
    except Rejection as rejection:
        with journal.transaction() as tx:
            tx.append("dropoff_refused", {"raw": data, "reason": rejection.reason})
        return rejection


def find_credential(
    journal: Journal,
    secret: str,
    salt: bytes,
    is_code: bool,
    log: logging.Logger,
    *,
    presented: PresentedSecret | None = None,
    table: str,
    place: str,
    states: Sequence[str],
) -> tuple[str, str] | None:
    """The parcel in `table` (in one of `states`) whose stored credential `secret` opens, and
    its `place` column (a compartment, a shelf). Hashed once under the device's lookup
    `salt` (`presented`: the caller did that already), found by that lookup tag and verified
    with the same hash: one scrypt per attempt; a malformed secret is never hashed. A damaged
    record opens nothing and is logged; the attempt still counts."""
    if presented is None:
        presented = hash_presented(secret, salt, is_code=is_code)
    if presented is None:
        return None
    column = "code_tag" if is_code else "qr_tag"
    marks = ", ".join("?" * len(states))
    rows = journal.query(
        f"SELECT parcel, {place}, credential FROM {table} "
        f"WHERE {column}=? AND state IN ({marks})",
        (presented.tag, *states),
    )
    for parcel, where, record in rows:
        try:
            stored = StoredCredential.from_record(json.loads(record))
        except (CredentialError, ValueError) as exc:
            log.error("credential of %s is damaged: %s", parcel, exc)
            continue
        if presented.opens(stored):
            return str(parcel), str(where)
    return None


def issue_unique(
    journal: Journal, salt: bytes, table: str
) -> tuple[IssuedCredential, str, str]:
    """A fresh credential issued under the device's lookup salt (its stored hashes are its
    index entries: a pickup costs one scrypt, edge.credentials "One salt per locker"), with
    its code and QR lookup tags. Drawn again while a parcel still collectable from `table`
    has the same code: two parcels held in one place must never share a code."""
    while True:
        issued = issue_credential(lookup_salt=salt)
        code_tag, qr_tag = issued.lookup_tags()
        clash = journal.query(
            f"SELECT 1 FROM {table} WHERE code_tag=? AND state IN ('stored', 'expired')",
            (code_tag,),
        )
        if not clash:
            return issued, code_tag, qr_tag


def journal_deposit(
    tx: JournalTransaction,
    issued: IssuedCredential,
    *,
    parcel: str,
    place: str,
    size: Any,
    hold_until: int,
    sealing_key: bytes | None,
    device_id: str,
) -> None:
    """`parcel_deposited`: the parcel is held in `place` until `hold_until`, and the depot gets
    its code and QR to tell the customer, sealed to its key and bound to this device and
    parcel (edge.credentials.sealed_for_depot); without a key, none (a device run alone)."""
    secret = {"code": issued.code, "qr": QR_PREFIX + issued.qr_token}
    sealed = (
        sealed_for_depot(secret, sealing_key, locker_id=device_id, parcel_id=parcel)
        if sealing_key
        else None
    )
    tx.append(
        "parcel_deposited",
        {
            "parcel": parcel,
            "compartment": place,
            "size": size,
            "hold_until_ns": hold_until,
            "credential_for_depot": sealed,
        },
    )


def badge_refusal(
    journal: Journal,
    guard: KeypadGuard,
    badges: Container[str],
    badge: str,
    now: float,
    log: logging.Logger,
) -> str | None:
    """What to show a courier whose badge does not log them in (None: it does; the caller
    starts the session). Guessing badges is throttled like guessing codes, by a guard of its
    own that only lives in memory; a lockout it starts is an alarm (`badge_guessing`), and
    every refusal is journaled (`courier_refused`)."""
    if guard.check(now) is not None:
        with journal.transaction() as tx:
            tx.append("courier_refused", {"reason": "courier login locked"})
        return "courier login locked"
    known = badge in badges
    lockout = guard.record_attempt(known, now)
    if lockout is not None:
        with journal.transaction() as tx:
            raise_alarm(tx, log, "badge_guessing", seconds=lockout.seconds)
    if not known:
        with journal.transaction() as tx:
            tx.append("courier_refused", {"badge_known": False})
        return "unknown courier"
    return None


def command_verifier(
    journal_path: Path,
    keys: Sequence[bytes],
    device_id: str,
    replay_store: ReplayStore | None,
) -> tuple[CommandVerifier, SqliteReplayStore | None]:
    """The checker of signed depot commands, and the replay store it opened for itself (the
    caller closes it), when none was given: its own small file beside the journal, with the
    ids of the commands already carried out."""
    own = None
    if replay_store is None:
        beside = journal_path.with_name(journal_path.name + ".commands")
        replay_store = own = SqliteReplayStore(beside)
    return CommandVerifier(keys, target=device_id, seen=replay_store), own


def carry_out(
    journal: Journal,
    verifier: CommandVerifier,
    topic: str,
    payload: bytes,
    apply: Callable[[JournalTransaction, str, Mapping[str, Any]], tuple[dict[str, Any], _Kept]],
    refused: type[Exception],
) -> _Kept | None:
    """A depot command as it came off the wire (on `topic`), carried out at most once.

    Unverified, it is journaled as `command_refused` and nothing else happens. Verified, its
    arguments are checked and `apply(tx, action, args)` carries it out in the transaction of
    its `command_accepted`, so the depot hears of every change that took effect and of no
    other. `apply` returns the command's facts and whatever the device does after the commit
    (a locker's door to pulse). A `refused` error (the device's own: it cannot do that), a
    WireError or a bad argument rolls the change back and is journaled as `command_failed`.
    Returns what `apply` gave besides its facts; None when the command was not carried out.
    """
    try:
        cmd = verifier.verify(payload, now=time.time())
    except CommandRejected as rejected:
        with journal.transaction() as tx:
            tx.append(
                "command_refused",
                {"topic": topic, "reason": rejected.reason, "detail": str(rejected)},
            )
        return None
    try:
        args = check_command(cmd.action, cmd.args)
        with journal.transaction() as tx:
            facts, kept = apply(tx, cmd.action, args)
            tx.append("command_accepted", {"id": cmd.id, "action": cmd.action, **facts})
    except (refused, WireError, KeyError, TypeError, ValueError) as exc:
        known = isinstance(exc, (refused, WireError))
        reason = str(exc) if known else f"bad arguments: {exc!r}"
        with journal.transaction() as tx:
            tx.append("command_failed", {"id": cmd.id, "action": cmd.action, "reason": reason})
        return None
    return kept


def asked_by(args: Mapping[str, Any]) -> dict[str, Any]:
    """Who asked for a command and why, when a person did (the console sends both): journaled
    with its answer, so the device's own record says who opened a door or extended a hold."""
    return {k: args[k] for k in ("by", "reason") if k in args}


def extend_hold(
    journal: Journal, tx: JournalTransaction, table: str, args: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The depot's `extend_hold` for a parcel held in `table`, on hold or already expired (it
    goes back on hold): its hold ends `hours` later than it did. Returns the command's facts;
    None when the parcel is not held there (the caller says so in its own words)."""
    parcel = str(args["parcel"])
    hours = float(args["hours"])
    rows = journal.query(
        f"SELECT hold_until_ns FROM {table} WHERE parcel=? AND state IN ('stored','expired')",
        (parcel,),
    )
    if not rows:
        return None
    until = int(rows[0][0]) + int(hours * 3600e9)
    tx.execute(
        f"UPDATE {table} SET hold_until_ns=?, state='stored' WHERE parcel=?", (until, parcel)
    )
    return {"parcel": parcel, "hold_until_ns": until, **asked_by(args)}
