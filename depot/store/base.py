"""What every backend of the depot's database offers: the interface the depot's parts use.

The parts of the depot (ingest, parcel book, webhook outbox, service) write their SQL once, in
the dialect both SQLite and PostgreSQL understand, with `?` placeholders; a backend runs it.
What the two engines do differently, and what depends on several processes sharing one
database, is behind the named methods here: taking a transaction, ordering the writers of one
device journal (`lock_stream`), letting one projector at a time (`lock_projection`).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Conn", "Cursor", "DepotDatabase", "Dialect"]

Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    """The part of a DB-API cursor the depot uses (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Conn(Protocol):
    """A connection as the depot's parts see it: `execute` with `?` placeholders."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...


class DepotDatabase(abc.ABC):
    """The depot's database in this process: one writer connection behind one lock.

    `transaction()` and `reading()` hold the lock for their whole block; a transaction begun
    inside another on the same thread is a savepoint of it. `reader()` is a connection of its
    own for a reader on another thread (an HTTP request), closed by that reader.
    """

    dialect: Dialect
    lock: threading.RLock
    upgraded_from: int

    @property
    @abc.abstractmethod
    def path(self) -> Path | None:
        """The SQLite file, or None for a server database."""

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """Where the data is, for messages: a path, or a URL without its password."""

    @property
    @abc.abstractmethod
    def connection(self) -> Conn:
        """The writer connection itself, for a part that keeps it: use it holding `lock`."""

    @property
    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Conn]: ...

    @abc.abstractmethod
    def reading(self) -> AbstractContextManager[Conn]: ...

    @abc.abstractmethod
    def reader(self) -> Conn:
        """A read-only connection for another thread; close it with `close_reader`."""

    @abc.abstractmethod
    def close_reader(self, conn: Conn) -> None: ...

    @abc.abstractmethod
    def lock_parcel(self, conn: Conn, parcel: str) -> None:
        """Inside a transaction: be the only one deciding about this parcel until it ends.

        A customer's request (a double click served by two workers, a return booked on the
        page while the shop books it too) reads the parcel's state and then acts on it; a
        second request must read what the first wrote, not what both read before.
        """

    @abc.abstractmethod
    def lock_stream(self, conn: Conn, device: str, journal: str) -> None:
        """Inside a transaction: be the only writer of this device journal until it ends.

        Batches of one journal may reach two workers at once; the hash chain can only be
        checked, and the head moved, by one of them at a time.
        """

    @abc.abstractmethod
    def lock_projection(self, conn: Conn) -> bool:
        """Inside a transaction: be the only process projecting events until it ends, or
        return False at once if another is projecting now (it will take these events too:
        they wait in one queue), so a worker never stalls behind another's projection."""

    @property
    @abc.abstractmethod
    def skip_locked(self) -> str:
        """What ends a SELECT that claims rows for once-only work: rows another worker holds
        are passed over, the rest are locked until the claim commits (empty where the
        transaction already holds the whole database)."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DepotDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
