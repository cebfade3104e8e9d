"""Real parts for the tests: a Mosquitto broker on a free port, with an account per device, and
a PostgreSQL server of the tests' own with a fresh database per test."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

import pytest

from depot.store import Conn
from simulators.broker import Broker
from simulators.postgres import PostgresServer, find_postgres
from sync.mqtt import BrokerAddress

# The console's browser tests: `browser` and `page` (Debian's Chromium through Playwright).
pytest_plugins = ("tests.browser",)

DEVICES = ("van-1", "van-2")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with persistence off, so a restart loses everything it held in memory."""
    devices = {name: secrets.token_hex(8) for name in DEVICES}
    with Broker(tmp_path / "broker", devices=devices, persistence=False) as running:
        yield running


def address(broker: Broker, who: str, port: int | None = None) -> BrokerAddress:
    """Connection details for a device (or "depot"), optionally through a link proxy's port."""
    user, password = broker.depot_credentials if who == "depot" else broker.credentials(who)
    return BrokerAddress(broker.host, port or broker.port, user, password)


def blob(value: object) -> bytes:
    """A BLOB column's value from a store query as bytes (SQLite gives bytes, PostgreSQL's
    bytea a memoryview); fails the test if it is neither."""
    assert isinstance(value, bytes | memoryview), value
    return bytes(value)


class UplinkPatience(TypedDict):
    """An `Uplink`'s waits, shrunk by tests so that a lost ack or a restart costs seconds."""

    ack_timeout_s: float
    keepalive_s: int
    backoff_min_s: float
    backoff_max_s: float


#: An uplink that notices a lost ack in 2 s and redials within a second.
FAST_SYNC: UplinkPatience = {
    "ack_timeout_s": 2.0,
    "keepalive_s": 2,
    "backoff_min_s": 0.1,
    "backoff_max_s": 1.0,
}


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Until ``predicate()`` holds, looking every 50 ms; fails naming ``what`` after
    ``timeout`` seconds (for state another process or thread changes without telling)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- PostgreSQL -------------------------------------------------------------------------------

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server of our own for the whole session (start-up takes about a second);
    never the machine's. Skipped only where PostgreSQL is not installed — but not in CI, where
    .ci/setup installs it, so a missing install fails instead of passing by skipping."""
    if find_postgres() is None:
        reason = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; run .ci/setup)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new, empty database for this test alone; dropped (connections and all)
    after it. The name says which test made it, for the server's log."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = f"t{next(_database_numbers)}_{slug}"[:63]
    url = postgres_server.new_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def depot_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The depot's database for one test, on each backend in turn: a SQLite file in the test's
    directory, or a fresh database on the tests' own PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "depot.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@contextlib.contextmanager
def depot_sql(spec: str) -> Iterator[Conn]:
    """A connection of a test's own to a depot's database (as another process, or a person at
    a SQL prompt, would have): autocommit, `?` placeholders on both backends."""
    from depot.store import is_postgres_url

    if is_postgres_url(spec):
        import psycopg

        from depot.store.postgres import PgConnection

        pg = PgConnection(psycopg.connect(spec, autocommit=True))
        try:
            yield pg
        finally:
            pg.close()
        return
    conn = sqlite3.connect(spec, isolation_level=None, timeout=10.0)
    try:
        yield conn
    finally:
        conn.close()
