"""The depot's one store: one list of numbered migrations, and the upgrade of an older file.

`tests/data/depot-before-one-store.db.gz` is a real depot file made by the code before the
store existed (`lastmile sim --vans 1 --parcels 6 --days 1 --lockers 1` at commit 85cb824):
the event store at its `user_version` 2, the parcel book with its `book_meta` row, the webhook
outbox with its `webhook_schema` table, manifests and commands made by the service.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

import pytest

from depot.ingest import DepotStore
from depot.store import LATEST, MIGRATIONS, Database, StoreError, migrate
from depot.tracking import ParcelBook
from depot.webhooks import stats
from sync.wire import chain_hash, genesis_hash

OLD_FILE = Path(__file__).parent / "data" / "depot-before-one-store.db.gz"
TABLES = (
    "events",
    "streams",
    "photos",
    "parcels",
    "timeline",
    "webhook_outbox",
    "manifests",
    "depot_commands",
)


def old_depot(tmp_path: Path) -> Path:
    path = tmp_path / "depot.db"
    with gzip.open(OLD_FILE) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}


def chains_hold(conn: sqlite3.Connection) -> int:
    """Recompute every stream's hash chain from its genesis; return the events checked."""
    checked = 0
    for device, journal, head_seq, head_hash in conn.execute(
        "SELECT device, journal, head_seq, head_hash FROM streams"
    ).fetchall():
        prev = genesis_hash(journal)
        rows = conn.execute(
            "SELECT seq, uuid, boot_id, mono_ns, wall_ns, wall_synced, kind, payload, hash "
            "FROM events WHERE device=? AND journal=? ORDER BY seq",
            (device, journal),
        ).fetchall()
        assert [r[0] for r in rows] == list(range(1, head_seq + 1)), (device, journal)
        for seq, uuid, boot, mono, wall, synced, kind, payload, stored in rows:
            prev = chain_hash(prev, seq, uuid, boot, mono, wall, bool(synced), kind, payload)
            assert prev == bytes(stored), (device, journal, seq)
            checked += 1
        assert prev == bytes(head_hash)
    return checked


def test_the_migrations_are_numbered_without_holes_and_each_is_named() -> None:
    assert [m.number for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert all(m.name and m.statements for m in MIGRATIONS)


def test_a_new_database_gets_every_table_at_the_latest_version(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    assert (db.upgraded_from, db.schema_version) == (0, LATEST)
    with db.reading() as conn:
        assert counts(conn) == dict.fromkeys(TABLES, 0)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not names & {"book_meta", "webhook_schema"}
    db.close()
    again = Database(tmp_path / "new.db")  # opening it again changes nothing
    assert (again.upgraded_from, again.schema_version) == (LATEST, LATEST)
    again.close()


def test_a_depot_file_of_the_old_layout_is_upgraded_in_place(tmp_path: Path) -> None:
    path = old_depot(tmp_path)
    before_conn = sqlite3.connect(path)
    assert before_conn.execute("PRAGMA user_version").fetchone()[0] == 2
    before = counts(before_conn)
    pending_before = stats(before_conn)
    before_conn.close()
    assert before["events"] > 0 and before["parcels"] > 0 and before["webhook_outbox"] > 0

    db = Database(path)
    assert (db.upgraded_from, db.schema_version) == (2, LATEST)
    with db.reading() as conn:
        assert counts(conn) == before
        assert stats(conn) == pending_before
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert chains_hold(conn) == before["events"]
    assert not names & {"book_meta", "webhook_schema"}

    # The parts of the depot read what the old code wrote.
    book = ParcelBook(db)
    parcel = book.parcels()[0]["parcel"]
    assert book.track(parcel)["timeline"]
    assert book.projected_rowid() > 0
    store = DepotStore(db)
    assert store.missing_seqs() == 0
    db.close()


def test_a_file_newer_than_this_software_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema {LATEST + 1} is newer"):
        Database(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def test_an_unknown_old_book_version_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = old_depot(tmp_path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE book_meta SET value='7' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="parcel book schema 7"):
        migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # rolled back whole
    assert conn.execute("SELECT value FROM book_meta").fetchone()[0] == "7"
    conn.close()


def test_a_damaged_file_is_refused_with_the_reason_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot be used"):
        Database(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_the_service_parts_share_one_connection(tmp_path: Path) -> None:
    db = Database(tmp_path / "depot.db")
    store, book = DepotStore(db), ParcelBook(db)
    assert store.database is db and book.path == db.path
    # A write through one part inside another's transaction commits or rolls back with it.
    with pytest.raises(RuntimeError), db.transaction():
        book.receive({"id": "RB123456785GB", "merchant": "m"}, now_ns=1)
        raise RuntimeError("the caller's transaction fails")
    assert book.parcels() == []
    with db.transaction():
        book.receive({"id": "RB123456785GB", "merchant": "m"}, now_ns=1)
    assert [p["parcel"] for p in book.parcels()] == ["RB123456785GB"]
    store.close()  # not the owner: the database stays open
    book.close()
    assert not db.closed
    db.close()
