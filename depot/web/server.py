"""The depot's web port: the JSON API, the operators' console and the customers' pages.

One Starlette application (`build_app`) served by uvicorn on a thread of its own inside the
depot process, so the API keeps the embedded depot's one-process shape. Starlette because it
is small, typed and ASGI (a live page is a long-lived response that costs no thread while it
waits); the store is synchronous, so each handler runs on Starlette's worker threads.

Must never: listen beyond 127.0.0.1 unless configured to, or hold the depot's shutdown up for
an open page (live streams end when `stop()` is called).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from depot.tracking import ParcelBook
from depot.web import api, console
from depot.web.context import DepotActions, Health, Sites, WebDepot
from sync.clock import Clock, SystemClock

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def templates() -> Jinja2Templates:
    """The console's and the customer pages' templates (Jinja2, autoescaped)."""
    return Jinja2Templates(directory=str(HERE / "templates"))


def build_app(depot: WebDepot) -> Starlette:
    routes = [
        *api.routes(),
        *console.routes(),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return api.json_answer(404, {"error": f"no such resource: {request.url.path}"})

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return api.json_answer(405, {"error": f"method {request.method} not allowed"})

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    app.state.depot = depot
    return app


class DepotWeb:
    """The web port on its own thread; `start()`, `stop()`, and `url` once started."""

    def __init__(
        self,
        book: ParcelBook,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health: Health | None = None,
        clock: Clock | None = None,
        actions: DepotActions | None = None,
        sites: Sites | None = None,
    ) -> None:
        """`health()` judges the depot (`depot.health.DepotHealth.check`); `clock` times what
        people do (the depot's, which a simulated day runs fast); `actions` is the depot
        service, which carries out what an operator or a customer asks; `sites` where the
        depot, its lockers and its vans are (the fleet page's map), from its settings."""
        self.depot = WebDepot(
            book=book,
            clock=clock or SystemClock(),
            templates=templates(),
            health=health,
            actions=actions,
            sites=sites or Sites(),
        )
        self.book = book
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only then (else every answer on a
        # kept-open connection waits ~40 ms for the client's delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            build_app(self.depot),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(STOP_TIMEOUT_S),
            server_header=False,
        )
        server = uvicorn.Server(config)
        self.depot.stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="depot-web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the depot's web port did not start in {START_TIMEOUT_S} s")
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("the depot's web port failed to start (see the log)")
        log.info("depot web port listening on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.depot.stopping.set()
        server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S + 2)
            self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the depot's web port is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __enter__(self) -> DepotWeb:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
