"""The depot's store: the one owner of the depot's database in a process.

`Database` opens the file once, checks it, applies the one list of numbered migrations
(`depot.store.migrations`) and hands the one writer connection, behind one lock, to the parts
of the depot that keep data in it: the event ingest, the parcel book, the webhook outbox and
the service's manifests and commands. Readers on other threads (an HTTP request) get a
read-only connection of their own.
"""

from depot.store.errors import StoreError
from depot.store.migrations import LATEST, MIGRATIONS, Migration, migrate, schema_version
from depot.store.sqlite import Database

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "Database",
    "Migration",
    "StoreError",
    "migrate",
    "schema_version",
]
