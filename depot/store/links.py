"""Customers' tracking links: every statement on the `tracking_links` table, by name.

The one owner of `tracking_links` (created by `depot.store.migrations`, number 14). A row maps
the SHA-256 of a link's token to its parcel, so the customer's page can find the parcel a
link names; the token itself is never stored (it is an HMAC under a key derived from the
depot's sealing keys, `depot.customer`), so a reader of the database cannot rebuild a link,
and through it reach a pickup code. A parcel may have several rows: a rotation of the sealing
key gives it a new token, and the links sent before keep working.

These functions only read and write rows, on the connection the caller hands them, inside the
caller's transaction (a link is recorded with the notice that carries it). The same text runs
on SQLite and on PostgreSQL.

Must never: commit or begin a transaction of its own, or store a token as given.
"""

from __future__ import annotations

from depot.store.base import Conn

__all__ = ["parcel_of", "remember"]


def remember(conn: Conn, digest: str, parcel: str, now_ns: int) -> None:
    """Record that the token whose SHA-256 (hex) is `digest` is `parcel`'s link (idempotent:
    every notice of the parcel carries the same token)."""
    conn.execute(
        "INSERT OR IGNORE INTO tracking_links (digest, parcel, created_ns) VALUES (?, ?, ?)",
        (digest, parcel, now_ns),
    )


def parcel_of(conn: Conn, digest: str) -> str | None:
    """The parcel of the link whose token has SHA-256 `digest`, or None for no such link."""
    row = conn.execute("SELECT parcel FROM tracking_links WHERE digest = ?", (digest,)).fetchone()
    return None if row is None else str(row[0])
