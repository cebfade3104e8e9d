"""Who may see and do what at the depot's web port: accounts, sessions, CSRF, lockout, tokens.

Real HTTP against a real `DepotWeb` on each depot database; the forms are posted as a
browser posts them (the browser itself drives the console in tests/test_console_browser.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from depot.store import accounts, open_database
from depot.tracking import ParcelBook
from depot.web import DepotWeb, auth
from tests.web import Console, call, signed_in

PASSWORD = "correct horse battery"


@pytest.fixture
def web(depot_database: str) -> Iterator[DepotWeb]:
    book = ParcelBook(depot_database)
    try:
        with DepotWeb(book) as running:
            yield running
    finally:
        book.close()


def test_an_operator_signs_in_and_out_with_a_session_cookie_of_the_right_kind(
    web: DepotWeb,
) -> None:
    auth.add_user(web.book.database, "kim", "operator", PASSWORD)
    console = Console(web.url)
    status, headers, _ = console.request("/console")
    assert status == 303 and headers["location"].startswith("/signin?next=%2Fconsole")

    status, headers, _ = console.sign_in("kim", PASSWORD)
    assert status == 303 and headers["location"] == "/console"
    cookie = headers["set-cookie"]
    assert "lm_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, page = console.get("/console")
    assert status == 200 and "kim" in page and "Sign out" in page and console.csrf

    with web.book.database.reading() as conn:  # the database holds a digest, not the cookie
        stored = conn.execute("SELECT id, csrf FROM console_sessions").fetchall()
    sent = next(c.value for c in console.jar if c.name == "lm_session")
    assert sent is not None
    assert len(stored) == 1 and stored[0][0] == auth.digest(sent) != sent

    assert console.request("/signout", {"csrf": "forged"})[0] == 403  # CSRF on sign-out too
    status, headers, _ = console.act("/signout")
    assert status == 303 and headers["location"] == "/signin"
    assert console.request("/console")[0] == 303  # the session is gone on the server
    with web.book.database.reading() as conn:
        assert conn.execute("SELECT count(*) FROM console_sessions").fetchone()[0] == 0


def test_wrong_passwords_lock_the_account_and_strangers_learn_nothing(web: DepotWeb) -> None:
    auth.add_user(web.book.database, "sam", "viewer", PASSWORD)
    console = Console(web.url)
    status, _, stranger = console.sign_in("nobody", PASSWORD)
    status_known, _, known = console.sign_in("sam", "wrong password")
    assert status == status_known == 401
    assert "wrong name or password" in stranger and "wrong name or password" in known
    for _ in range(auth.MAX_FAILURES - 2):
        assert console.sign_in("sam", "wrong again")[0] == 401
    status, _, page = console.sign_in("sam", "wrong at last")
    assert status == 401 and "locked" in page
    status, _, page = console.sign_in("sam", PASSWORD)  # the right one, too late
    assert status == 401 and "accepts one again" in page
    with web.book.database.reading() as conn:
        row = accounts.user(conn, "sam")
    assert row is not None and row[4] > 0  # locked_until_ns


def test_the_sign_in_form_refuses_a_post_without_its_nonce(web: DepotWeb) -> None:
    auth.add_user(web.book.database, "kim", "operator", PASSWORD)
    console = Console(web.url)
    status, _, page = console.request(
        "/signin", {"nonce": "made-up", "name": "kim", "password": PASSWORD}
    )
    assert status == 403 and "out of date" in page
    assert "lm_session" not in {c.name for c in console.jar}


def test_the_sign_in_page_sends_nobody_elsewhere(web: DepotWeb) -> None:
    auth.add_user(web.book.database, "kim", "operator", PASSWORD)
    console = Console(web.url)
    for target in ("//evil.example/", "/%5Cevil.example/", "https://evil.example/"):
        _, _, page = console.request("/signin?next=" + target)
        assert "evil.example" not in page, target


def test_the_json_api_wants_a_token_or_a_session_and_health_stays_open(web: DepotWeb) -> None:
    status, health = call(web.url + "/health")
    assert status == 200 and health["ok"] is True
    assert call(web.url + "/parcels")[0] == 401
    assert call(web.url + "/parcels", token="lmt_guess")[0] == 401
    token = auth.add_token(web.book.database, "portal")
    status, listing = call(web.url + "/parcels", token=token)
    assert status == 200 and listing["count"] == 0
    with web.book.database.reading() as conn:
        assert token not in str(conn.execute("SELECT * FROM api_tokens").fetchall())
    assert auth.remove_token(web.book.database, "portal")
    assert call(web.url + "/parcels", token=token)[0] == 401

    viewer = signed_in(web.url, web.book.database, role="viewer")
    status, _, body = viewer.request("/parcels")  # the console's own session reads the API
    assert status == 200 and '"count":0' in body


def test_a_viewer_looks_but_cannot_act(web: DepotWeb) -> None:
    viewer = signed_in(web.url, web.book.database, role="viewer")
    status, _, body = viewer.request("/alarms/1/ack", {"csrf": viewer.csrf})
    assert status == 403 and "may look but not act" in body


def test_accounts_are_made_from_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "depot.db"
    open_database(db).close()
    made = subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "depot", "user", "add", "lee", "--role",
         "viewer", "--db", str(db)],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
    )
    assert made.returncode == 0 and "added lee (viewer)" in made.stdout, made.stderr
    short = subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "depot", "user", "add", "lee", "--db", str(db)],
        input="short\n", capture_output=True, text=True, timeout=60, check=False,
    )
    assert short.returncode == 2 and "at least 8" in short.stderr
    database = open_database(db)
    try:
        with database.reading() as conn:
            row = accounts.user(conn, "lee")
        assert row is not None and row[1] == "viewer" and str(row[2]).startswith("$argon2id$")
        assert PASSWORD not in str(row)
    finally:
        database.close()


def test_a_session_left_idle_for_a_working_day_signs_out(web: DepotWeb) -> None:
    console = signed_in(web.url, web.book.database)
    assert console.get("/console")[0] == 200
    with web.book.database.transaction() as conn:  # as if the last page was 8 h 1 min ago
        conn.execute(
            "UPDATE console_sessions SET seen_ns = seen_ns - ?", ((auth.IDLE_S + 60) * 10**9,)
        )
    status, headers, _ = console.request("/console")
    assert status == 303 and headers["location"].startswith("/signin")
    with web.book.database.reading() as conn:
        assert conn.execute("SELECT count(*) FROM console_sessions").fetchone()[0] == 0
