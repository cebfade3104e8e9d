"""Customers' delivery preferences: every statement on the `customer_care` table, by name.

The one owner of `customer_care` (created by `depot.store.migrations`, number 20). A row holds
what a customer chose on their tracking page for one parcel (safe place and where, neighbour,
locker instead), as JSON text of those fields only; `depot.preferences` lays it over the
merchant's care from the import. A row is kept apart from the parcel's record so that a
merchant's re-import (which rewrites the record) does not undo the customer's word.

These functions only read and write rows, on the connection the caller hands them, inside the
caller's transaction (a change is stored with its timeline entry and the manifest it causes).
The same text runs on SQLite and on PostgreSQL.

Must never: commit or begin a transaction of its own, or hold a merchant's fields (signature,
age check): those are not the customer's to set.
"""

from __future__ import annotations

from depot.store.base import Conn

__all__ = ["choices_of", "set_choices"]


def set_choices(conn: Conn, parcel: str, care_json: str, now_ns: int) -> None:
    """Store the customer's choices for `parcel` (JSON text), replacing earlier ones."""
    conn.execute(
        "INSERT INTO customer_care (parcel, care, changed_ns) VALUES (?, ?, ?) "
        "ON CONFLICT(parcel) DO UPDATE SET care=excluded.care, changed_ns=excluded.changed_ns",
        (parcel, care_json, now_ns),
    )


def choices_of(conn: Conn, parcel: str) -> str | None:
    """The customer's choices for `parcel` (JSON text), or None when they made none."""
    row = conn.execute("SELECT care FROM customer_care WHERE parcel = ?", (parcel,)).fetchone()
    return None if row is None else str(row[0])
