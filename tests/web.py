"""Calling the depot's web port from tests: an API token, and JSON over real HTTP."""

from __future__ import annotations

import itertools
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from depot.store import DepotDatabase
from depot.web import auth

_names = itertools.count(1)
Call = Callable[..., tuple[int, Any]]


def api_token(database: DepotDatabase) -> str:
    """A fresh API token on this depot's database."""
    return auth.add_token(database, f"tests-{next(_names)}")


def call(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    method: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """GET, or POST `body` as JSON; (status, parsed JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method or ("GET" if body is None else "POST")
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), json.loads(exc.read())


def client(database: DepotDatabase) -> Call:
    """`call` with a new token of this depot's."""
    token = api_token(database)

    def authed(url: str, body: dict[str, Any] | None = None, **kw: Any) -> tuple[int, Any]:
        return call(url, body, token=token, **kw)

    return authed


class Console:
    """A browser-less operator: a cookie jar, signed in through the real sign-in form."""

    def __init__(self, base: str) -> None:
        import http.cookiejar

        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        self.csrf = ""

    def request(
        self, path: str, form: dict[str, str] | None = None, *, timeout: float = 10.0
    ) -> tuple[int, dict[str, str], str]:
        """(status, headers, body text); a redirect is answered, not followed."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(request, timeout=timeout) as response:
                status, headers, body = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, headers, body = exc.code, dict(exc.headers), exc.read()
        return int(status), headers, body.decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, str]:
        status, _, body = self.request(path)
        found = re.search(r'<meta name="csrf" content="([^"]+)"', body)
        if found:
            self.csrf = found.group(1)
        return status, body

    def sign_in(self, name: str, password: str) -> tuple[int, dict[str, str], str]:
        _, _, page = self.request("/signin")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page)
        assert nonce, page
        answer = self.request(
            "/signin", {"nonce": nonce.group(1), "name": name, "password": password,
                        "next": "/console"}
        )
        if answer[0] == 303:
            self.get("/console")
        return answer

    def act(self, path: str, **fields: str) -> tuple[int, dict[str, str], str]:
        """POST an action with this session's CSRF token (unless `csrf` is given)."""
        return self.request(path, {"csrf": self.csrf, **fields})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def signed_in(base: str, database: DepotDatabase, role: str = "operator") -> Console:
    """A console signed in as a new account of `role`."""
    name = f"{role}-{next(_names)}"
    auth.add_user(database, name, role, "correct horse battery")
    console = Console(base)
    status, _, body = console.sign_in(name, "correct horse battery")
    assert status == 303, body
    return console
