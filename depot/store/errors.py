"""The store's errors: the depot's database cannot be used as it is, or a statement failed."""

import sqlite3

from depot.errors import DepotError


class StoreError(DepotError):
    """The depot's own database cannot be used (a person must look at it)."""


class PgError(StoreError):
    """A PostgreSQL statement failed; the message is the server's, the cause psycopg's."""


# What a statement on either backend may raise: the depot's parts catch this one tuple.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, PgError)
