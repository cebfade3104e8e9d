"""What a parcel locker and a staffed counter both keep beside their journal: the lookup salt
of their credentials, the wrong-code guard, and the record of depot commands carried out.

Both are places where a person shows a code to take a parcel (edge.locker, edge.counter), so
both hash codes with a salt of their own, throttle guessing with one KeypadGuard whose state
survives a restart, and carry out each signed depot command once. One owner for each, so the
two can never drift apart on how a code is guessed at or a command replayed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.credentials import CredentialError, KeypadGuard
from sync.journal import Journal, JournalTransaction
from sync.signing import CommandVerifier, ReplayStore, SqliteReplayStore

__all__ = ["command_verifier", "count_code", "load_guard", "lookup_salt"]

#: The table both keep their guard in (one row); part of each device's own schema.
GUARD_TABLE = "CREATE TABLE keypad (id INTEGER PRIMARY KEY CHECK (id = 1), guard TEXT NOT NULL)"


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


def count_code(tx: JournalTransaction, guard: KeypadGuard, ok: bool, now: float) -> None:
    """One checked code counted against `guard`, its state stored in the same transaction,
    and the lockout it started, if any, journaled (`keypad_locked`)."""
    lockout = guard.record_attempt(ok, now)
    tx.execute(
        "INSERT OR REPLACE INTO keypad(id, guard) VALUES (1, ?)", (json.dumps(guard.to_record()),)
    )
    if lockout is not None:
        tx.append("keypad_locked", {"seconds": lockout.seconds, "lockouts": lockout.count})


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
