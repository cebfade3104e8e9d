"""Who may see and do what at the depot's web port: operators, their sessions, API tokens.

- **Operators** (`add_user`) sign in to the console with a name and password. The password is
  kept as an Argon2id hash (argon2-cffi, RFC 9106's default profile: 64 MiB, 3 passes), which
  costs a guesser with a copy of the database as much memory as it costs us. A `viewer` sees;
  an `operator` also acts (extend a hold, open a compartment, acknowledge an alarm, ...).
- **Lockout**: `MAX_FAILURES` wrong passwords in a row lock the account for `LOCKOUT_S`, told
  to the person signing in. An unknown name costs the same hash as a known one and gets the
  same answer, so the sign-in form does not tell which names exist.
- **Sessions** are server-side rows (the cookie holds 256 random bits; the database only its
  SHA-256), so signing out, a password change or a deleted account ends them at once, on every
  depot worker. Each carries its own CSRF token, which every state-changing request must send
  back (a form field or the `X-CSRF-Token` header).
- **API tokens** (`add_token`) are for machines: `Authorization: Bearer <token>` on the JSON
  API. Only the token's digest is stored; the token is shown once, when it is made.

Times here are the host's real wall clock, not the depot's `Clock`: a simulated day runs the
depot's clock fast, and a session must not expire because simulated hours went by.

Must never: store or log a password, a session id or a token; tell a stranger whether a name
exists; let a request without the session's CSRF token change anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import argon2

from depot.errors import DepotError
from depot.store import Conn, DepotDatabase
from depot.store import accounts as store

__all__ = [
    "IDLE_S",
    "LOCKOUT_S",
    "MAX_FAILURES",
    "ROLES",
    "SESSION_S",
    "AuthError",
    "LockedOut",
    "Session",
    "add_token",
    "add_user",
    "check_csrf",
    "check_token",
    "end_session",
    "find_session",
    "sign_in",
]

ROLES = ("viewer", "operator")
MAX_FAILURES = 5
LOCKOUT_S = 15 * 60
SESSION_S = 24 * 3600  # a shift and then some; signed out at the latest the next day
IDLE_S = 8 * 3600  # a console left alone for a working day signs out
TOKEN_PREFIX = "lmt_"  # a token says what it is when pasted somewhere it should not be
_hasher = argon2.PasswordHasher()
# What an unknown name is checked against: the same cost as a real account's hash.
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


class AuthError(DepotError):
    """A sign-in, session or token that does not let the request through (message: to the
    person or client, saying nothing a stranger should learn)."""


class LockedOut(AuthError):
    """Too many wrong passwords in a row: the account waits before it accepts one again."""


@dataclass(frozen=True)
class Session:
    """A signed-in operator, as a request sees them."""

    user: str
    role: str
    csrf: str
    digest: str

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def _now_ns() -> int:
    return time.time_ns()


def digest(secret: str) -> str:
    """The stored form of a session id or token (256 random bits: a plain SHA-256 suffices)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise AuthError("a name is 1 to 64 printable characters")
    return name


def add_user(database: DepotDatabase, name: str, role: str, password: str) -> bool:
    """Add an operator, or give an existing one this password and role (ending their
    sessions). True when the account is new."""
    name = valid_name(name)
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if len(password) < 8:
        raise AuthError("a password has at least 8 characters")
    hashed = _hasher.hash(password)
    with database.transaction() as conn:
        if store.add_user(conn, name, role, hashed, _now_ns()):
            return True
        store.set_user(conn, name, role, hashed)
        return False


def add_token(database: DepotDatabase, name: str) -> str:
    """A new API token named `name` (shown once; only its digest is kept)."""
    name = valid_name(name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with database.transaction() as conn:
        if not store.add_token(conn, name, digest(token), _now_ns()):
            raise AuthError(f"a token named {name!r} exists; remove it first or pick a new name")
    return token


def remove_token(database: DepotDatabase, name: str) -> bool:
    with database.transaction() as conn:
        return store.remove_token(conn, name)


def check_token(conn: Conn, token: str) -> str:
    """The name of the API token `token`; AuthError when the depot made none such."""
    name = store.token_name(conn, digest(token))
    if name is None:
        raise AuthError("unknown API token")
    return name


def sign_in(database: DepotDatabase, name: str, password: str) -> tuple[str, Session]:
    """Check a name and password; a new session (its cookie value and what it grants).

    AuthError for a wrong name or password, LockedOut while the account is locked.
    """
    now = _now_ns()
    refusal: AuthError | None = None
    # The failure is counted in the transaction and the refusal raised after it: an
    # exception inside would roll the count back.
    with database.transaction() as conn:
        row = store.user(conn, name)
        if row is None:
            _verify(_DUMMY, password)
            refusal = AuthError("wrong name or password")
        else:
            refusal = _check(conn, row, password, now)
        if refusal is None:
            store.end_stale_sessions(conn, now, now - IDLE_S * 10**9)
            cookie = secrets.token_urlsafe(32)
            csrf = secrets.token_urlsafe(32)
            store.add_session(conn, digest(cookie), name, csrf, now, now + SESSION_S * 10**9)
    if refusal is not None:
        raise refusal
    assert row is not None
    return cookie, Session(name, str(row[1]), csrf, digest(cookie))


def _check(conn: Conn, row: tuple[object, ...], password: str, now: int) -> AuthError | None:
    """None when `password` is the account's (its failures forgotten), else the refusal
    (the failure counted, the account locked at the `MAX_FAILURES`th)."""
    name, _, hashed, failures, locked_until_ns, _ = row
    if int(str(locked_until_ns)) > now:
        minutes = max(1, round((int(str(locked_until_ns)) - now) / 60e9))
        return LockedOut(
            f"too many wrong passwords: this account accepts one again in {minutes} min"
        )
    if not _verify(str(hashed), password):
        failures = int(str(failures)) + 1
        locked = now + LOCKOUT_S * 10**9 if failures >= MAX_FAILURES else 0
        store.record_failure(conn, str(name), 0 if locked else failures, locked)
        if locked:
            return LockedOut(
                f"{MAX_FAILURES} wrong passwords in a row: this account is locked for "
                f"{LOCKOUT_S // 60} min"
            )
        return AuthError("wrong name or password")
    rehashed = _hasher.hash(password) if _hasher.check_needs_rehash(str(hashed)) else None
    store.record_success(conn, str(name), rehashed)
    return None


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


def find_session(database: DepotDatabase, cookie: str) -> Session | None:
    """The live session behind a cookie value, its last use noted; None when there is none
    (never was, signed out, expired, idle too long)."""
    if not cookie:
        return None
    key = digest(cookie)
    now = _now_ns()
    # Looked up on a reader of its own: a page view does not queue behind the ingest for the
    # writer, except to note its use once a minute or to end a stale session.
    conn = database.reader()
    try:
        row = store.session(conn, key)
    finally:
        database.close_reader(conn)
    if row is None:
        return None
    name, role, csrf, seen_ns, expires_ns = row
    if int(expires_ns) <= now or int(seen_ns) <= now - IDLE_S * 10**9:
        with database.transaction() as conn:
            store.end_session(conn, key)
        return None
    if now - int(seen_ns) > 60 * 10**9:  # one write a minute is enough to stay awake
        with database.transaction() as conn:
            store.touch_session(conn, key, now)
    return Session(str(name), str(role), str(csrf), key)


def end_session(database: DepotDatabase, session: Session) -> None:
    with database.transaction() as conn:
        store.end_session(conn, session.digest)


def check_csrf(session: Session, sent: str | None) -> None:
    """AuthError unless `sent` is this session's CSRF token."""
    if not sent or not hmac.compare_digest(sent.encode("utf-8"), session.csrf.encode("utf-8")):
        raise AuthError("this form is out of date or did not come from the console; reload it")
