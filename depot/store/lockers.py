"""What the depot's tables say about lockers' compartments: the console's Lockers page asks.

Read-only questions over tables other modules write: the lockers' own journal events
(`events`, stored by `depot.store.events`), the parcel book's `parcels` and `timeline`
(`depot.store.book`). `depot.web.pages.lockers` turns the answers into a grid; what is known
and what is inferred is said there.

Must never: write, or read a locker's whole history when a kind of event will do (each query
here is bounded by a device and a few kinds, or by a list of parcels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

# Events about a compartment's existence and service, in the order the locker journaled them:
# `compartment_installed` (first start), an `alarm` whose name is `lock_jammed` (the locker
# took the compartment out of service), `compartment_in_service` (a `set_in_service` command).
SERVICE_KINDS = ("compartment_installed", "compartment_in_service")
JAMMED = "lock_jammed"
# Parcel states in which the book says a parcel has a compartment of a locker.
HELD = ("in_locker", "hold_expired")
_GONE = ("delivered", "picked_up", "returned_to_sender", "returning")


def compartment_events(conn: Conn, locker: str) -> list[Row]:
    """(kind, payload) of `locker`'s compartment_installed, compartment_in_service and
    lock_jammed alarm events, in the order they were stored (a device's batches are stored in
    journal order, so this is the locker's order)."""
    return conn.execute(
        "SELECT kind, payload FROM events WHERE device = ? AND (kind IN (?, ?) "
        "OR (kind = 'alarm' AND payload LIKE ?)) ORDER BY rowid",
        (locker, *SERVICE_KINDS, f"%{JAMMED}%"),
    ).fetchall()


def parcels_in_lockers(conn: Conn) -> list[Row]:
    """(locker, compartment, parcel, state, size) of every parcel the book places in, or has
    reserved, a compartment (its journey not over)."""
    gone = ",".join("?" * len(_GONE))
    return conn.execute(
        "SELECT locker, compartment, id, state, size FROM parcels "
        f"WHERE locker IS NOT NULL AND compartment IS NOT NULL AND state NOT IN ({gone}) "
        "ORDER BY locker, compartment, id",
        _GONE,
    ).fetchall()


def hold_entries(conn: Conn, parcels: Sequence[str]) -> list[Row]:
    """(parcel, details) of the `in_locker` and `hold_extended` timeline entries of these
    parcels, oldest first: the last one of a parcel says until when the locker holds it."""
    found: list[Row] = []
    ids = list(dict.fromkeys(parcels))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found += conn.execute(
            "SELECT parcel, details FROM timeline WHERE parcel IN "
            f"({','.join('?' * len(chunk))}) AND step IN ('in_locker', 'hold_extended') "
            "ORDER BY id",
            chunk,
        ).fetchall()
    return found


def recent_commands(conn: Conn, locker: str, limit: int) -> list[Row]:
    """(id, action, args, created_ns, published_ns) of the newest commands queued for
    `locker` (`depot_commands`, written by `depot.store.sends`), newest first."""
    return conn.execute(
        "SELECT id, action, args, created_ns, published_ns FROM depot_commands "
        "WHERE target = ? ORDER BY created_ns DESC, id LIMIT ?",
        (locker, limit),
    ).fetchall()


def command_answers(conn: Conn, locker: str, limit: int) -> list[Row]:
    """(kind, payload) of `locker`'s newest answers to commands (`command_accepted`,
    `command_failed`), newest first: the console matches them to `recent_commands` by id."""
    return conn.execute(
        "SELECT kind, payload FROM events WHERE device = ? "
        "AND kind IN ('command_accepted', 'command_failed') ORDER BY rowid DESC LIMIT ?",
        (locker, limit),
    ).fetchall()
