"""The PostgreSQL harness (simulators/postgres.py; the postgres_server and postgres_url fixtures):
the server is our own and not the machine's, each test's database is its own, psycopg and
psycopg_pool work against it, and stop() leaves nothing listening or on disk."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from simulators import postgres as pg
from simulators.broker import free_port
from simulators.postgres import HOST, PostgresError, PostgresServer, find_postgres

MACHINE_POSTGRES_PORT = 5432


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_the_server_is_ours(postgres_server: PostgresServer, postgres_url: str) -> None:
    assert postgres_server.port != MACHINE_POSTGRES_PORT
    assert f"@{HOST}:{postgres_server.port}/" in postgres_url
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert row is not None and listen is not None
    data_directory = Path(row[0]).resolve()
    assert data_directory.is_relative_to(postgres_server.workdir.resolve())
    assert listen[0] == HOST


def test_the_session_database_exists_and_is_named_in_the_url(
    postgres_server: PostgresServer,
) -> None:
    assert postgres_server.url.endswith(f"/{postgres_server.database}")
    with psycopg.connect(postgres_server.url) as conn:
        row = conn.execute("SELECT current_database(), current_user").fetchone()
    assert row == (postgres_server.database, postgres_server.user)


def test_two_test_databases_are_independent(postgres_server: PostgresServer) -> None:
    first = postgres_server.new_database("harness_first")
    second = postgres_server.new_database("harness_second")
    try:
        assert first != second
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE parcels (id text PRIMARY KEY)")
            conn.execute("INSERT INTO parcels VALUES ('00340434161234567890')")
        assert _tables(first) == {"parcels"}
        assert _tables(second) == set()
    finally:
        postgres_server.drop_database("harness_first")
        postgres_server.drop_database("harness_second")


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_fresh_empty_database(postgres_url: str, turn: int) -> None:
    # Both turns make the same table: the second would fail if it saw the first one's database.
    assert _tables(postgres_url) == set()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE events (seq bigint PRIMARY KEY)")
    assert _tables(postgres_url) == {"events"}


def test_a_dropped_database_is_gone_even_with_a_session_open(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database("harness_dropped")
    leaked = psycopg.connect(url)  # as a test that forgot to close its pool would leave it
    try:
        postgres_server.drop_database("harness_dropped")
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(url, connect_timeout=5).close()
    finally:
        leaked.close()


def test_a_database_name_must_be_plain(postgres_server: PostgresServer) -> None:
    for bad in ("", "Upper", "1st", "a-b", "x" * 64, 'q"; DROP DATABASE lastmile; --'):
        with pytest.raises(ValueError):
            postgres_server.new_database(bad)


def test_a_connection_pool_works_against_it(postgres_url: str) -> None:
    with ConnectionPool(postgres_url, min_size=1, max_size=3, open=True, timeout=10) as pool:
        pool.wait(timeout=10)
        with pool.connection() as conn:
            conn.execute("CREATE TABLE scans (n int)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO scans VALUES (%s)", [(n,) for n in range(10)])
        # Three connections at once: each is a separate session that sees the committed rows.
        with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            pids = set()
            for conn in (a, b, c):
                row = conn.execute("SELECT pg_backend_pid(), sum(n) FROM scans").fetchone()
                assert row is not None
                assert row[1] == 45
                pids.add(row[0])
            assert len(pids) == 3
        assert pool.get_stats()["pool_max"] == 3


@pytest.mark.skipif(find_postgres() is None, reason="PostgreSQL is not installed")
def test_stop_leaves_nothing_listening_or_on_disk() -> None:
    # Its own server: stopping the session's would break the tests after this one.
    with PostgresServer(database="harness_stop") as server:
        port, workdir, pid = server.port, server.workdir, server.pid
        assert pid is not None
        assert _accepts(port)
        url = server.new_database("harness_extra")
        with psycopg.connect(url) as conn:
            conn.execute("SELECT 1")
        open_session = psycopg.connect(server.url)  # a fast shutdown must end it, not wait
        server.stop()
        assert not server.is_running
        assert not _accepts(port)
        assert not workdir.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
        open_session.close()
        server.stop()  # twice is harmless
    assert not _is_our_postgres(pid)


def _is_our_postgres(pid: int) -> bool:
    """Whether `pid` is (still) a postgres of this harness; the number may since have been
    reused by an unrelated process, which does not count."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"lastmile-pg-" in cmdline


@pytest.mark.skipif(find_postgres() is None, reason="PostgreSQL is not installed")
def test_a_port_taken_before_postgres_binds_it_is_given_up_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered = iter([taken])
        monkeypatch.setattr(pg, "free_port", lambda: next(offered, None) or free_port())
        with PostgresServer() as server:
            assert server.port != taken
            with psycopg.connect(server.url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_second_start_is_refused(postgres_server: PostgresServer) -> None:
    with pytest.raises(PostgresError, match="already started"):
        postgres_server.start()
