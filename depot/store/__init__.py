"""The depot's store: the one owner of the depot's database in a process.

`open_database(spec)` opens a SQLite file (a path: the embedded default, nothing to install)
or a PostgreSQL database (a `postgresql://` URL, for several depot processes), checks it,
applies the one list of numbered migrations (`depot.store.migrations`) and hands the one
writer connection, behind one lock, to the parts of the depot that keep data in it: the event
ingest, the parcel book, the webhook outbox and the service's manifests and commands. Readers
on other threads (an HTTP request) get a read-only connection of their own.
"""

from __future__ import annotations

from pathlib import Path

from depot.store.base import Conn, Cursor, DepotDatabase, Dialect
from depot.store.errors import DATABASE_ERRORS, PgError, StoreError, is_busy
from depot.store.migrations import LATEST, MIGRATIONS, Migration, migrate, schema_version
from depot.store.sqlite import Database

__all__ = [
    "DATABASE_ERRORS",
    "LATEST",
    "MIGRATIONS",
    "Conn",
    "Cursor",
    "Database",
    "DepotDatabase",
    "Dialect",
    "Migration",
    "PgError",
    "StoreError",
    "is_busy",
    "is_postgres_url",
    "migrate",
    "open_database",
    "schema_version",
]


def is_postgres_url(spec: str | Path) -> bool:
    """True for a `postgresql://` (or `postgres://`) URL; anything else is a SQLite path."""
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def open_database(spec: str | Path | DepotDatabase) -> DepotDatabase:
    """The depot's database named by `spec`: a SQLite path or a PostgreSQL URL (psycopg is
    imported only then, so an embedded depot never loads it)."""
    if isinstance(spec, DepotDatabase):
        return spec
    if is_postgres_url(spec):
        from depot.store.postgres import PgDatabase

        return PgDatabase(str(spec))
    return Database(spec)
