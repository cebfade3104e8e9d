"""The depot's SQLite database: one writer connection per process, one lock, one migration list.

SQLite allows one writer at a time anyway; giving every part of the depot the same connection
and the same lock makes that single writer explicit instead of four connections waiting on
each other's file locks (`database is locked` after the busy timeout). A transaction started
while one is open on the same thread becomes a savepoint, so a part that writes on behalf of
another (the parcel book enqueueing a webhook inside its own transaction) commits with it.

Must never: acknowledge or report anything before COMMIT returns (WAL with `synchronous=FULL`:
an ack promises durability to a device that will then delete its copy), or delete a database
that fails its check (it is refused, with the reason, for a person to look at).
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from depot.store.base import Conn, DepotDatabase
from depot.store.errors import StoreError
from depot.store.migrations import migrate, schema_version

__all__ = ["BUSY_TIMEOUT_S", "Database", "close_reader", "read_only"]

BUSY_TIMEOUT_S = 10.0  # another process (a CLI tool) holding the write lock briefly

_savepoints = itertools.count(1)


class Database(DepotDatabase):
    """The depot's database file, opened once, checked and migrated.

    Example::

        db = Database("depot.db")
        with db.transaction() as conn:
            conn.execute("INSERT INTO ...")
        with db.reading() as conn:
            conn.execute("SELECT ...").fetchall()
        db.close()
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._closed = False
        try:
            self._conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
        except sqlite3.Error as exc:
            raise StoreError(f"depot database {self._path} cannot be opened: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            if self._conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise StoreError(f"depot database {self._path} fails its integrity check")
            self.upgraded_from = migrate(self._conn)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"depot database {self._path} cannot be used: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    @property
    def where(self) -> str:
        return str(self._path)

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection itself, for a part that keeps it: use it holding `lock`."""
        return self._conn

    @property
    def schema_version(self) -> int:
        with self.lock:
            return schema_version(self._conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the lock; nested on the same thread, a savepoint.

        `BEGIN IMMEDIATE` takes SQLite's write lock before the first read, so what a caller
        reads inside is still true when it writes.
        """
        with self.lock:
            conn = self._conn
            if conn.in_transaction:
                name = f"sp{next(_savepoints)}"
                conn.execute(f"SAVEPOINT {name}")
                try:
                    yield conn
                    conn.execute(f"RELEASE {name}")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"ROLLBACK TO {name}")
                        conn.execute(f"RELEASE {name}")
                    raise
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The writer connection for a read, holding the lock (reads see their own writes)."""
        with self.lock:
            yield self._conn

    def reader(self) -> sqlite3.Connection:
        """A read-only connection of its own, for a reader on another thread.

        WAL lets it read while the writer writes; the caller closes it.
        """
        return read_only(self._path)

    def close_reader(self, conn: Conn) -> None:
        close_reader(conn)

    def lock_parcel(self, conn: Conn, parcel: str) -> None:
        """Nothing to do: `BEGIN IMMEDIATE` already made this the only writer of the file."""

    def lock_stream(self, conn: Conn, device: str, journal: str) -> None:
        """Nothing to do: `BEGIN IMMEDIATE` already made this the only writer of the file."""

    def lock_projection(self, conn: Conn) -> bool:
        """Nothing to do: `BEGIN IMMEDIATE` already made this the only writer of the file."""
        return True

    @property
    def skip_locked(self) -> str:
        return ""  # BEGIN IMMEDIATE: no other writer exists until COMMIT

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __repr__(self) -> str:
        return f"Database({str(self._path)!r})"


def read_only(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to a depot file that exists, without migrating or creating it
    (`lastmile depot track` on a copy, a reader thread); the caller closes it."""
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the depot database {path}: {exc}") from exc


def close_reader(conn: Conn) -> None:
    assert isinstance(conn, sqlite3.Connection)
    conn.close()
