"""The console's accounts: operators, their sessions and the API's bearer tokens, by name.

The one owner of `console_users`, `console_sessions` and `api_tokens` (created by
`depot.store.migrations`). `depot.web.auth` decides who may do what; these functions only read
and write the rows, on the connection the caller hands them, inside the caller's transaction.
The same text runs on SQLite and on PostgreSQL.

Nothing here holds a secret a reader of the database could use: a password is kept as its
Argon2id hash, a session and a token as the SHA-256 of their random value (both have 256 bits
of entropy, so a plain digest cannot be reversed by guessing).

Must never: commit or begin a transaction of its own, or store a password, a session id or a
token as given.
"""

from __future__ import annotations

from typing import Any

from depot.store.base import Conn

Row = tuple[Any, ...]

USER_COLUMNS = "name, role, password, failures, locked_until_ns, created_ns"


def add_user(conn: Conn, name: str, role: str, password: str, now_ns: int) -> bool:
    """Add an account; False when the name is taken (the caller decides whether to replace)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO console_users(name, role, password, failures, locked_until_ns, "
        "created_ns) VALUES (?, ?, ?, 0, 0, ?)",
        (name, role, password, now_ns),
    )
    return cur.rowcount == 1


def set_user(conn: Conn, name: str, role: str, password: str) -> None:
    """A new password and role for an existing account; its lockout and sessions end."""
    conn.execute(
        "UPDATE console_users SET role = ?, password = ?, failures = 0, locked_until_ns = 0 "
        "WHERE name = ?",
        (role, password, name),
    )
    conn.execute("DELETE FROM console_sessions WHERE user_name = ?", (name,))


def user(conn: Conn, name: str) -> Row | None:
    row: Row | None = conn.execute(
        f"SELECT {USER_COLUMNS} FROM console_users WHERE name = ?", (name,)
    ).fetchone()
    return row


def users(conn: Conn) -> list[Row]:
    return conn.execute(f"SELECT {USER_COLUMNS} FROM console_users ORDER BY name").fetchall()


def record_failure(conn: Conn, name: str, failures: int, locked_until_ns: int) -> None:
    conn.execute(
        "UPDATE console_users SET failures = ?, locked_until_ns = ? WHERE name = ?",
        (failures, locked_until_ns, name),
    )


def record_success(conn: Conn, name: str, password: str | None) -> None:
    """Failures forgotten; `password` replaces the stored hash when the hasher's costs rose."""
    if password is None:
        conn.execute(
            "UPDATE console_users SET failures = 0, locked_until_ns = 0 WHERE name = ?", (name,)
        )
    else:
        conn.execute(
            "UPDATE console_users SET failures = 0, locked_until_ns = 0, password = ? "
            "WHERE name = ?",
            (password, name),
        )


def add_session(
    conn: Conn, digest: str, name: str, csrf: str, now_ns: int, expires_ns: int
) -> None:
    conn.execute(
        "INSERT INTO console_sessions(id, user_name, csrf, created_ns, seen_ns, expires_ns) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (digest, name, csrf, now_ns, now_ns, expires_ns),
    )


def session(conn: Conn, digest: str) -> Row | None:
    """(user, role, csrf, seen_ns, expires_ns) of a session, None when there is none."""
    row: Row | None = conn.execute(
        "SELECT s.user_name, u.role, s.csrf, s.seen_ns, s.expires_ns FROM console_sessions s "
        "JOIN console_users u ON u.name = s.user_name WHERE s.id = ?",
        (digest,),
    ).fetchone()
    return row


def touch_session(conn: Conn, digest: str, now_ns: int) -> None:
    conn.execute("UPDATE console_sessions SET seen_ns = ? WHERE id = ?", (now_ns, digest))


def end_session(conn: Conn, digest: str) -> None:
    conn.execute("DELETE FROM console_sessions WHERE id = ?", (digest,))


def end_stale_sessions(conn: Conn, now_ns: int, idle_before_ns: int) -> int:
    cur = conn.execute(
        "DELETE FROM console_sessions WHERE expires_ns <= ? OR seen_ns <= ?",
        (now_ns, idle_before_ns),
    )
    return cur.rowcount


def add_token(conn: Conn, name: str, digest: str, now_ns: int) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO api_tokens(name, digest, created_ns) VALUES (?, ?, ?)",
        (name, digest, now_ns),
    )
    return cur.rowcount == 1


def remove_token(conn: Conn, name: str) -> bool:
    return conn.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 1


def token_name(conn: Conn, digest: str) -> str | None:
    row = conn.execute("SELECT name FROM api_tokens WHERE digest = ?", (digest,)).fetchone()
    return None if row is None else str(row[0])


def tokens(conn: Conn) -> list[Row]:
    return conn.execute("SELECT name, created_ns FROM api_tokens ORDER BY name").fetchall()
