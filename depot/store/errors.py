"""The store's errors: the depot's database cannot be used as it is, or a statement failed."""

import sqlite3

from depot.errors import DepotError


class StoreError(DepotError):
    """The depot's own database cannot be used (a person must look at it)."""


class PgError(StoreError):
    """A PostgreSQL statement failed; the message is the server's, the cause psycopg's."""


# What a statement on either backend may raise: the depot's parts catch this one tuple.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, PgError)


_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (sqlite3.h)
# PostgreSQL: lock_not_available, serialization_failure, deadlock_detected, query_canceled
# (a statement timeout), too_many_connections, cannot_connect_now (starting up)
_PG_BUSY = frozenset({"55P03", "40001", "40P01", "57014", "53300", "57P03"})


def is_busy(exc: BaseException) -> bool:
    """Whether a statement failed because the database was busy (worth trying again soon), not
    because something is wrong with the request or the data."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    if isinstance(exc, PgError):
        return getattr(exc.__cause__, "sqlstate", None) in _PG_BUSY
    return False
