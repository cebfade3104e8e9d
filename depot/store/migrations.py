"""The depot database's one list of numbered migrations, and the code that applies them.

Every table the depot keeps is created here and nowhere else: device events and their hash
chains, photos, the parcel book, the webhook outbox, manifests and signed commands. The number
of the last migration applied is the database's one schema version (`PRAGMA user_version`).

Until this list existed, four parts of the depot each made their own tables in the same file
with three versioning schemes (`user_version` for the event store, a `book_meta` row for the
parcel book, a `webhook_schema` table for the outbox, none for manifests). A file of that
layout is upgraded in place: migrations 1 and 2 are the event store's own versions 1 and 2,
every later statement is `IF NOT EXISTS` (the tables may already be there, made by the old
code), and migration 6 checks and retires the two old version markers. All of it runs in one
transaction: a crash half-way leaves the file as it was.

Must never: change a migration that has shipped (add a new one), or open a file whose
version is newer than this software knows (an older depot would misread it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from depot.store.errors import StoreError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "migrate", "schema_version"]


@dataclass(frozen=True)
class Migration:
    """One numbered step: its statements, and an optional check of the file as found (all
    pending checks run before any pending statement)."""

    number: int
    name: str
    statements: tuple[str, ...]
    check: Callable[[sqlite3.Connection], None] | None = None


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _old_version_markers_are_known(conn: sqlite3.Connection) -> None:
    """Refuse an old-layout file whose book or outbox is of a version no code ever wrote."""
    tables = _tables(conn)
    if "book_meta" in tables:
        row = conn.execute("SELECT value FROM book_meta WHERE key='schema_version'").fetchone()
        if row is not None and str(row[0]) != "1":
            raise StoreError(f"parcel book schema {row[0]} is not one this software knows (1)")
    if "webhook_schema" in tables:
        row = conn.execute("SELECT max(version) FROM webhook_schema").fetchone()
        if row is not None and row[0] is not None and int(row[0]) != 1:
            raise StoreError(f"webhook outbox schema {row[0]} is not one this software knows (1)")
    elif "webhook_outbox" in tables:
        raise StoreError("a webhook_outbox table exists without a webhook_schema version")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "device events, hash-chain heads, gaps, quarantine, device status",
        (
            """CREATE TABLE IF NOT EXISTS streams (
                device      TEXT NOT NULL,
                journal     TEXT NOT NULL,
                head_seq    INTEGER NOT NULL,
                head_hash   BLOB NOT NULL,
                first_seen_ns INTEGER NOT NULL,
                last_seen_ns  INTEGER NOT NULL,
                nacked_at   INTEGER,
                PRIMARY KEY (device, journal))""",
            """CREATE TABLE IF NOT EXISTS events (
                device      TEXT NOT NULL,
                journal     TEXT NOT NULL,
                seq         INTEGER NOT NULL,
                uuid        TEXT NOT NULL,
                boot_id     TEXT NOT NULL,
                mono_ns     INTEGER NOT NULL,
                wall_ns     INTEGER NOT NULL,
                wall_synced INTEGER NOT NULL,
                kind        TEXT NOT NULL,
                payload     TEXT NOT NULL,
                hash        BLOB NOT NULL,
                received_ns INTEGER NOT NULL,
                PRIMARY KEY (device, journal, seq))""",
            """CREATE TABLE IF NOT EXISTS gaps (
                id          INTEGER PRIMARY KEY,
                device      TEXT NOT NULL,
                journal     TEXT NOT NULL,
                expected_seq INTEGER NOT NULL,
                got_seq     INTEGER NOT NULL,
                received_ns INTEGER NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS quarantine (
                id          INTEGER PRIMARY KEY,
                topic       TEXT NOT NULL,
                reason      TEXT NOT NULL,
                payload     BLOB NOT NULL,
                received_ns INTEGER NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS device_status (
                device      TEXT PRIMARY KEY,
                status      TEXT NOT NULL,
                updated_ns  INTEGER NOT NULL)""",
        ),
    ),
    Migration(
        2,
        "proof-of-delivery photos: chunks per device until complete, then verified whole",
        (
            """CREATE TABLE IF NOT EXISTS photo_chunks (
                device      TEXT NOT NULL,
                sha256      TEXT NOT NULL,
                "offset"    INTEGER NOT NULL,
                total       INTEGER NOT NULL,
                content_type TEXT NOT NULL,
                data        BLOB NOT NULL,
                received_ns INTEGER NOT NULL,
                PRIMARY KEY (device, sha256, "offset"))""",
            """CREATE TABLE IF NOT EXISTS photos (
                sha256      TEXT PRIMARY KEY,
                device      TEXT NOT NULL,
                content_type TEXT NOT NULL,
                size        INTEGER NOT NULL,
                data        BLOB NOT NULL,
                received_ns INTEGER NOT NULL)""",
        ),
    ),
    Migration(
        3,
        "the parcel book: parcels, timelines, the projection's cursor, vans, anomalies",
        (
            """CREATE TABLE IF NOT EXISTS parcels (
                id TEXT PRIMARY KEY, raw TEXT, state TEXT NOT NULL, van TEXT, stop INTEGER,
                attempts INTEGER NOT NULL DEFAULT 0, last_reason TEXT, locker TEXT,
                compartment TEXT, next_action TEXT, merchant TEXT, recipient TEXT,
                address TEXT, lat REAL, lon REAL, "window" TEXT, instructions TEXT,
                webhook TEXT, customer_webhook TEXT, size TEXT, locker_ok INTEGER,
                received_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
                record TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS parcels_state ON parcels(state)",
            """CREATE TABLE IF NOT EXISTS timeline (
                id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, parcel TEXT NOT NULL,
                at_ns INTEGER NOT NULL, state TEXT NOT NULL, step TEXT NOT NULL,
                device TEXT NOT NULL, event_uuid TEXT NOT NULL, details TEXT NOT NULL,
                UNIQUE (parcel, event_uuid))""",
            """CREATE TABLE IF NOT EXISTS projection (
                id INTEGER PRIMARY KEY CHECK (id = 1), last_rowid INTEGER NOT NULL,
                updated_ns INTEGER NOT NULL)""",
            "INSERT OR IGNORE INTO projection(id, last_rowid, updated_ns) VALUES (1, 0, 0)",
            """CREATE TABLE IF NOT EXISTS vans (
                van TEXT PRIMARY KEY, manifest_version INTEGER NOT NULL, day TEXT NOT NULL,
                updated_ns INTEGER NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS unmatched (
                event_rowid INTEGER NOT NULL, event_uuid TEXT NOT NULL, parcel TEXT NOT NULL,
                device TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
                recorded_ns INTEGER NOT NULL, resolved_ns INTEGER,
                PRIMARY KEY (event_uuid, parcel))""",
            "CREATE INDEX IF NOT EXISTS unmatched_open ON unmatched(parcel) "
            "WHERE resolved_ns IS NULL",
            """CREATE TABLE IF NOT EXISTS van_days (
                event_uuid TEXT PRIMARY KEY, van TEXT NOT NULL, day TEXT, at_ns INTEGER NOT NULL,
                report TEXT NOT NULL, discrepancies TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS locker_commands (
                id TEXT PRIMARY KEY, locker TEXT NOT NULL, action TEXT NOT NULL, parcel TEXT,
                noted_ns INTEGER NOT NULL)""",
        ),
    ),
    Migration(
        4,
        "the webhook outbox",
        (
            """CREATE TABLE IF NOT EXISTS webhook_outbox (
                id              INTEGER PRIMARY KEY,
                event_id        TEXT NOT NULL UNIQUE,
                url             TEXT NOT NULL,
                body            BLOB NOT NULL,
                key_id          TEXT NOT NULL,
                state           TEXT NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'sent', 'dead')),
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_ns INTEGER NOT NULL,
                last_error      TEXT,
                created_ns      INTEGER NOT NULL,
                sent_ns         INTEGER,
                dead_ns         INTEGER,
                status_code     INTEGER)""",
            # The scheduler's two questions: what is due now, and when is the next one due.
            "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(next_attempt_ns, id) "
            "WHERE state = 'pending'",
            "CREATE INDEX IF NOT EXISTS webhook_outbox_state ON webhook_outbox(state)",
        ),
    ),
    Migration(
        5,
        "manifests and signed commands waiting to be published",
        (
            """CREATE TABLE IF NOT EXISTS manifests (
                van TEXT NOT NULL, day TEXT NOT NULL, version INTEGER NOT NULL,
                body BLOB NOT NULL, issued_ns INTEGER NOT NULL, published_ns INTEGER,
                PRIMARY KEY (van, day, version))""",
            """CREATE TABLE IF NOT EXISTS depot_commands (
                id TEXT PRIMARY KEY, target TEXT NOT NULL, action TEXT NOT NULL,
                args TEXT NOT NULL, created_ns INTEGER NOT NULL, published_ns INTEGER,
                attempts INTEGER NOT NULL DEFAULT 0)""",
        ),
    ),
    Migration(
        6,
        "one schema version: retire the parcel book's and the outbox's own markers",
        ("DROP TABLE IF EXISTS book_meta", "DROP TABLE IF EXISTS webhook_schema"),
        check=_old_version_markers_are_known,
    ),
    Migration(
        7,
        "several workers: events waiting to be projected, leases on once-only sends",
        (
            # The projection used to follow a rowid cursor. With several processes storing at
            # once, a lower rowid can commit after a higher one and a cursor would step over
            # it; a queue row, written in the same transaction as its event, cannot be missed.
            "CREATE TABLE IF NOT EXISTS unprojected (rowid INTEGER NOT NULL PRIMARY KEY)",
            "INSERT INTO unprojected(rowid) SELECT rowid FROM events "
            "WHERE rowid > (SELECT last_rowid FROM projection WHERE id = 1)",
            # A worker publishing a manifest or a command holds it for a while; one killed
            # half-way lets go when the lease runs out, and another worker sends it.
            "ALTER TABLE manifests ADD COLUMN claimed_until INTEGER",
            "ALTER TABLE depot_commands ADD COLUMN claimed_until INTEGER",
        ),
    ),
    Migration(
        8,
        "transitions waiting for the exceptions policy, written with the projection",
        (
            # A worker killed between projecting a failed attempt and deciding what follows
            # must leave the decision to another: the projection queues it in its own
            # transaction, and the decision is taken, and dequeued, in one transaction.
            """CREATE TABLE IF NOT EXISTS reactions (
                id INTEGER PRIMARY KEY, parcel TEXT NOT NULL, state TEXT NOT NULL,
                previous TEXT NOT NULL, step TEXT NOT NULL, device TEXT NOT NULL,
                event_uuid TEXT NOT NULL, at_ns INTEGER NOT NULL, details TEXT NOT NULL,
                UNIQUE (parcel, event_uuid, state))""",
        ),
    ),
    Migration(
        9,
        "alarms from devices and from the depot, open until a person acknowledges them",
        (
            # `key` makes recording idempotent: a device alarm's event uuid, or the key the
            # depot part that raised it chose. `notified_ns` is NULL until the operator's
            # webhook for it is in the outbox.
            """CREATE TABLE IF NOT EXISTS alarms (
                id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
                device TEXT NOT NULL, alarm TEXT NOT NULL, facts TEXT NOT NULL,
                raised_ns INTEGER NOT NULL, recorded_ns INTEGER NOT NULL,
                state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged')),
                acknowledged_ns INTEGER, acknowledged_by TEXT, note TEXT, notified_ns INTEGER)""",
            "CREATE INDEX IF NOT EXISTS alarms_open ON alarms(device) WHERE state = 'open'",
            "CREATE INDEX IF NOT EXISTS alarms_unnotified ON alarms(id) WHERE notified_ns IS NULL",
        ),
    ),
    Migration(
        10,
        "collections: expired locker holds a van's courier is to take back to the depot",
        (
            # One row per expiry the depot reacted to (a hold extended and expired again is a
            # second row). `van`/`day`/`version` name the manifest it was last put on; a row
            # is done once the locker reported the compartment emptied.
            """CREATE TABLE IF NOT EXISTS collections (
                id INTEGER PRIMARY KEY, parcel TEXT NOT NULL, locker TEXT NOT NULL,
                compartment TEXT, event_uuid TEXT NOT NULL, planned_ns INTEGER NOT NULL,
                van TEXT, day TEXT, version INTEGER, done_ns INTEGER,
                UNIQUE (parcel, event_uuid))""",
            "CREATE INDEX IF NOT EXISTS collections_open ON collections(locker) "
            "WHERE done_ns IS NULL",
        ),
    ),
    Migration(
        11,
        "locker drops the van and the locker do not agree on yet",
        (
            # A row lives only while the disagreement is open: a van's claim the locker has
            # not confirmed (`claim`), a deposit the van has not claimed (`deposit`), a
            # drop-off the locker saw abandoned (`abandoned`). `since_ns` is the depot's clock
            # when the projection saw it; the logistics pass acts on rows older than their
            # time and deletes them, so its query only ever reads what is still open.
            """CREATE TABLE IF NOT EXISTS locker_drops (
                id INTEGER PRIMARY KEY, parcel TEXT NOT NULL, locker TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('claim', 'deposit', 'abandoned')),
                van TEXT, compartment TEXT, event_uuid TEXT NOT NULL,
                since_ns INTEGER NOT NULL,
                UNIQUE (parcel, event_uuid))""",
            "CREATE INDEX IF NOT EXISTS locker_drops_due ON locker_drops(kind, since_ns)",
        ),
    ),
    Migration(
        12,
        "confirmed events a device reported lost, per journal",
        (
            # One row per loss a device's alarm reports: a damaged event taken out of its
            # chain (`first_seq` = `last_seq`), or the tail of a journal that went back or
            # vanished, from the first event the depot does not hold (`last_seq` NULL when
            # nothing outside the journal knew how far it got).
            # `alarm_uuid` is the first reporting event's: a report repeated (a device repeats
            # the ones not acknowledged when it loses a journal again) adds nothing.
            """CREATE TABLE IF NOT EXISTS losses (
                id INTEGER PRIMARY KEY, device TEXT NOT NULL, journal TEXT NOT NULL,
                first_seq INTEGER NOT NULL, last_seq INTEGER, reason TEXT NOT NULL,
                alarm TEXT NOT NULL, alarm_uuid TEXT NOT NULL, recorded_ns INTEGER NOT NULL,
                UNIQUE (device, journal, first_seq))""",
        ),
    ),
    Migration(
        13,
        "van positions: where each van was on its round, for the ETA and the fleet's map",
        (
            # One row per sample (a van's wall clock at the fix); a sample sent twice (QoS 1)
            # is kept once. `depot.store.positions` keeps about a day of them per van.
            """CREATE TABLE IF NOT EXISTS van_positions (
                van TEXT NOT NULL, fix_ns INTEGER NOT NULL, lat REAL NOT NULL,
                lon REAL NOT NULL, accuracy_m REAL, speed_mps REAL, stop INTEGER,
                stops_done INTEGER NOT NULL, stops_total INTEGER NOT NULL,
                received_ns INTEGER NOT NULL,
                PRIMARY KEY (van, fix_ns))""",
        ),
    ),
    Migration(
        14,
        "customers' tracking links: the SHA-256 of each link's token and its parcel",
        (
            # The token itself is never stored (`depot.customer`): a reader of the database
            # cannot rebuild a link. A parcel has a row per token it was given (a rotation of
            # the sealing key gives a new one); `created_ns` is when it was first given.
            """CREATE TABLE IF NOT EXISTS tracking_links (
                digest TEXT PRIMARY KEY, parcel TEXT NOT NULL, created_ns INTEGER NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS tracking_links_parcel ON tracking_links(parcel)",
        ),
    ),
    Migration(
        15,
        "the console's accounts: operators, their sessions, the API's bearer tokens",
        (
            # `password` is an Argon2id hash; a session's `id` and a token's `digest` are the
            # SHA-256 of their random value (`depot.web.auth`): nothing here signs anyone in.
            """CREATE TABLE IF NOT EXISTS console_users (
                name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('viewer', 'operator')),
                password TEXT NOT NULL, failures INTEGER NOT NULL,
                locked_until_ns INTEGER NOT NULL, created_ns INTEGER NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS console_sessions (
                id TEXT PRIMARY KEY,
                user_name TEXT NOT NULL REFERENCES console_users(name) ON DELETE CASCADE,
                csrf TEXT NOT NULL, created_ns INTEGER NOT NULL, seen_ns INTEGER NOT NULL,
                expires_ns INTEGER NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions(user_name)",
            """CREATE TABLE IF NOT EXISTS api_tokens (
                name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,
                created_ns INTEGER NOT NULL)""",
        ),
    ),
    Migration(
        16,
        "indexes for the console: the timeline by time, van positions by arrival",
        (
            # The Today page counts the day's door steps; each open live page asks for the
            # newest position about once a second. Without these both read whole tables
            # that grow with every day the depot keeps.
            "CREATE INDEX IF NOT EXISTS timeline_at ON timeline(at_ns)",
            "CREATE INDEX IF NOT EXISTS van_positions_received ON van_positions(received_ns)",
        ),
    ),
    Migration(
        17,
        "the software version each device last reported in its status",
        (
            # Its own column, not only inside the newest status text: a status that names no
            # version leaves the one recorded before it (`DepotStore.set_status`), which the
            # text alone would lose; and the fleet's versions are one query away.
            "ALTER TABLE device_status ADD COLUMN software TEXT",
        ),
    ),
    Migration(
        18,
        "outcomes at the door: failure cards' codes, and each handover's method",
        (
            # `digest` is the SHA-256 of the card's normalised code (`depot.cards`), never
            # the code: the card page finds the parcel from it. A parcel keeps every card
            # it was left (each attempt's); `depot.store.outcomes` owns both tables.
            """CREATE TABLE IF NOT EXISTS card_codes (
                digest TEXT PRIMARY KEY, parcel TEXT NOT NULL, event_uuid TEXT NOT NULL,
                created_ns INTEGER NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS card_codes_parcel ON card_codes(parcel)",
            # One row per handover that moved a parcel to delivered or picked up: `method`
            # is signature / recipient / neighbour / safe_place (a van's) or locker (a
            # collection site's; a counter is told apart by its `device`, from settings).
            """CREATE TABLE IF NOT EXISTS handovers (
                parcel TEXT NOT NULL, event_uuid TEXT NOT NULL, method TEXT NOT NULL,
                device TEXT NOT NULL, at_ns INTEGER NOT NULL,
                PRIMARY KEY (parcel, event_uuid))""",
            "CREATE INDEX IF NOT EXISTS handovers_at ON handovers(at_ns)",
        ),
    ),
    Migration(
        19,
        "customers' returns: each booked return, and each locker's return salt",
        (
            # One row per return (`depot.returns`; statements in `depot.store.returns`): the
            # return's own parcel id, the delivered parcel it sends back (one return each),
            # where it is to be dropped, the code's hash under the locker's salt (two open
            # returns at a locker never share a code) and the code sealed to the depot's own
            # key (to show it to the customer again), never the code; the time of each step.
            """CREATE TABLE IF NOT EXISTS customer_returns (
                return_id TEXT PRIMARY KEY, original TEXT NOT NULL UNIQUE, merchant TEXT,
                size TEXT NOT NULL, locker TEXT NOT NULL, code_hash TEXT NOT NULL,
                sealed_code TEXT, booked_by TEXT NOT NULL, booked_ns INTEGER NOT NULL,
                until_ns INTEGER NOT NULL, dropped_ns INTEGER, collected_ns INTEGER,
                at_depot_ns INTEGER, webhook TEXT, customer_webhook TEXT)""",
            "CREATE INDEX IF NOT EXISTS customer_returns_locker ON customer_returns(locker)",
            # The salt (random, not secret) a locker hashes every return code under: one per
            # locker, so a typed code costs the locker one scrypt however many it expects.
            """CREATE TABLE IF NOT EXISTS return_salts (
                locker TEXT PRIMARY KEY, salt TEXT NOT NULL)""",
        ),
    ),
    Migration(
        20,
        "customers' delivery preferences, as they set them on their tracking page",
        (
            # The customer's own choices (safe place and where, neighbour, locker instead) as
            # a care document of those fields only, over the merchant's care in the parcel's
            # record (`depot.preferences`): a merchant's re-import keeps them, and the
            # merchant's signature and age check stay the merchant's. `depot.store.preferences`
            # owns it.
            """CREATE TABLE IF NOT EXISTS customer_care (
                parcel TEXT PRIMARY KEY, care TEXT NOT NULL, changed_ns INTEGER NOT NULL)""",
        ),
    ),
    Migration(
        21,
        "customers' returns handed to the courier at the door",
        (
            # How the customer hands the return over: `locker` (with a code, as before) or
            # `door` (to a courier at the original's address: no locker, `locker` and
            # `code_hash` are '' and no code is sealed); and for a door return the van and
            # day whose manifest lists its pickup (`depot.returns`, `DepotService`).
            "ALTER TABLE customer_returns ADD COLUMN handover TEXT NOT NULL DEFAULT 'locker'",
            "ALTER TABLE customer_returns ADD COLUMN pickup_van TEXT",
            "ALTER TABLE customer_returns ADD COLUMN pickup_day TEXT",
        ),
    ),
)
LATEST = MIGRATIONS[-1].number
assert [m.number for m in MIGRATIONS] == list(range(1, LATEST + 1)), "numbered without holes"


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of the last migration applied to the database behind `conn`."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database behind `conn` up to `LATEST` in one transaction; return the version
    it had before.

    Works on an autocommit connection (its own BEGIN IMMEDIATE, which takes the write lock
    before reading the version, so two processes starting at once do not both migrate) and
    inside a caller's transaction (a savepoint).
    """
    own = not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE" if own else "SAVEPOINT depot_migrate")
    try:
        found = schema_version(conn)
        if found > LATEST:
            raise StoreError(
                f"depot database schema {found} is newer than this software ({LATEST})"
            )
        pending = MIGRATIONS[found:]
        for m in pending:  # every check first: they look at the file as it was found
            if m.check is not None:
                m.check(conn)
        for m in pending:
            for statement in m.statements:
                conn.execute(statement)
        if found != LATEST:
            conn.execute(f"PRAGMA user_version={LATEST}")
        conn.execute("COMMIT" if own else "RELEASE depot_migrate")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            if own:
                conn.execute("ROLLBACK")
            else:
                conn.execute("ROLLBACK TO depot_migrate")
                conn.execute("RELEASE depot_migrate")
        raise
    return found
