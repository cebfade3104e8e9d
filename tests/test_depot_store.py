"""The depot's one store: one list of numbered migrations, and the upgrade of an older file.

`tests/data/depot-before-one-store.db.gz` is a real depot file made by the code before the
store existed (`lastmile sim --vans 1 --parcels 6 --days 1 --lockers 1` at commit 85cb824):
the event store at its `user_version` 2, the parcel book with its `book_meta` row, the webhook
outbox with its `webhook_schema` table, manifests and commands made by the service.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from depot.ingest import DepotStore
from depot.store import LATEST, MIGRATIONS, Conn, Database, StoreError, migrate, open_database
from depot.store.transfer import copy_depot, verify_chains
from depot.tracking import ParcelBook
from depot.webhooks import stats
from tests.conftest import depot_sql

ROOT = Path(__file__).resolve().parent.parent
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


def counts(conn: Conn) -> dict[str, int]:
    return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}


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
        chains = verify_chains(conn)
        assert chains.ok and chains.events == before["events"]
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


# --- lastmile depot migrate ----------------------------------------------------------------------


def lastmile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile", "depot", "migrate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_copies_a_depot_to_postgresql_and_verifies_it(
    tmp_path: Path, postgres_url: str
) -> None:
    path = old_depot(tmp_path)
    done = lastmile("--from", str(path), "--to", postgres_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    with depot_sql(str(path)) as conn:
        expected = counts(conn)
        parcels = [r[0] for r in conn.execute("SELECT id FROM parcels ORDER BY id")]
    assert report["ok"] is True and report["chain_breaks"] == []
    assert {t: report["rows"][t] for t in TABLES} == expected
    assert report["events_verified"] == expected["events"] > 0
    # The copy is a depot: the book tracks the same parcels with the same timelines, and new
    # events get rowids after the copied ones.
    old_book, new_book = ParcelBook(path), ParcelBook(postgres_url)
    for parcel in parcels:
        assert new_book.track(parcel) == old_book.track(parcel)
    old_book.close()
    new_book.close()
    with depot_sql(postgres_url) as conn:
        top = conn.execute("SELECT max(rowid) FROM events").fetchone()[0]
        conn.execute(
            "INSERT INTO events (device, journal, seq, uuid, boot_id, mono_ns, wall_ns, "
            "wall_synced, kind, payload, hash, received_ns) "
            "VALUES ('x', 'j', 1, 'u', 'b', 0, 0, 0, 'k', '{}', ?, 0)",
            (b"h",),
        )
        assert conn.execute("SELECT rowid FROM events WHERE device='x'").fetchone()[0] > top
    # Copied into a database that holds a depot now: refused, nothing changed.
    again = lastmile("--from", str(path), "--to", postgres_url)
    assert again.returncode == 2 and "already holds a depot" in again.stderr
    # And back to a SQLite file, as a test bench would take it.
    back = tmp_path / "back.db"
    home = lastmile("--from", postgres_url, "--to", str(back))
    assert home.returncode == 0, home.stdout + home.stderr
    assert "every hash chain intact" in home.stdout


def test_migrate_reports_a_broken_chain_and_fails(tmp_path: Path) -> None:
    path = old_depot(tmp_path)
    with depot_sql(str(path)) as conn:
        conn.execute(
            "UPDATE events SET payload='{\"forged\":true}' WHERE rowid=(SELECT max(rowid) "
            "FROM events)"
        )
    done = lastmile("--from", str(path), "--to", str(tmp_path / "copy.db"))
    assert done.returncode == 1
    assert "chain break:" in done.stdout and "does not hash to its stored hash" in done.stdout


def test_migrate_refuses_a_source_that_does_not_exist(tmp_path: Path) -> None:
    done = lastmile("--from", str(tmp_path / "typo.db"), "--to", str(tmp_path / "copy.db"))
    assert done.returncode == 2 and "no depot database at" in done.stderr
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "copy.db").exists()


def test_copy_depot_is_the_same_function_the_command_runs(tmp_path: Path) -> None:
    source = Database(old_depot(tmp_path))
    target = Database(tmp_path / "copy.db")
    report = copy_depot(source, target)
    assert report.ok and report.rows["events"] > 0
    source.close()
    target.close()


def test_a_copy_takes_every_table_the_migrations_make(tmp_path: Path) -> None:
    """`depot migrate` copies `transfer.TABLES`: a table a migration adds must be there too,
    or a move to PostgreSQL would leave it behind (accounts, links, positions, ...)."""
    from depot.store import open_database
    from depot.store.transfer import TABLES as COPIED

    database = open_database(tmp_path / "depot.db")
    try:
        with database.reading() as conn:
            made = {
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
    finally:
        database.close()
    assert made == set(COPIED)


def test_two_processes_deciding_about_one_parcel_take_turns(depot_database: str) -> None:
    # A customer's double click served by two workers: the second request to decide about a
    # parcel waits until the first has committed, so it reads what the first wrote. Another
    # parcel is not held up on PostgreSQL (SQLite has one writer at a time anyway).
    first, second = open_database(depot_database), open_database(depot_database)
    entered = threading.Event()

    def decide(parcel: str) -> None:
        with second.transaction() as conn:
            second.lock_parcel(conn, parcel)
            entered.set()

    try:
        with first.transaction() as conn:
            first.lock_parcel(conn, "RB123456785GB")
            waiting = threading.Thread(target=decide, args=("RB123456785GB",), daemon=True)
            waiting.start()
            assert not entered.wait(0.5), "the second decided while the first still held it"
        assert entered.wait(10.0)
        waiting.join(10.0)
        if depot_database.startswith("postgresql"):
            entered.clear()
            with first.transaction() as conn:
                first.lock_parcel(conn, "RB123456785GB")
                other = threading.Thread(target=decide, args=("RR123456785NL",), daemon=True)
                other.start()
                assert entered.wait(10.0), "another parcel waited for this one's lock"
            other.join(10.0)
    finally:
        first.close()
        second.close()
