"""The desk's screen app, reached over a unix socket: the staff's lines in, what to show out.

A counter run by systemd has no terminal: its stdin is /dev/null. The staff's screen (an
app on the desk's PC or tablet) connects instead to a unix stream socket the counter listens
on (`[staff] socket` in its config), writes the same JSON lines it would type on stdin
(`{"do": ...}`, edge.counter) and reads one JSON object per line back: every answer and
every message the counter shows (a scan's "put it on shelf-12", an expired hold), so two
screens at one desk see the same thing. Who may connect is the file system's say: the
socket is made mode 0660, for the service's own group (`lastmile`), which the screen app's
account joins.

A socket, not a FIFO: a FIFO carries lines one way only, and the screen must see answers.

Must never: block the counter on a screen that stopped reading (a screen whose socket
buffer is full is disconnected, with a warning, and reconnects), take over a socket another
running counter listens on, or replace a file that is not a socket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.locker import Display

log = logging.getLogger("edge.counter.screen")

#: The longest line a screen may send: a signature's strokes are at most 64 KiB canonical,
#: and a screen's JSON may be spaced out.
MAX_STAFF_LINE = 256 * 1024
#: The socket's mode: the service's user and group read and write (connect), nobody else.
SOCKET_MODE = 0o660
#: Screens connected at once: a desk has one or two; more is something gone wrong.
MAX_SCREENS = 8
CONNECT_PROBE_S = 1.0  # a counter still listening answers a connect at once


class StaffScreenError(EdgeError):
    """The staff screen's socket cannot be served; the message says why and where."""


class _Screen:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.pending = b""
        self.skipping = False  # inside a line already refused as too long, up to its newline


class StaffSocket:
    """Serves the staff's screen on a unix socket at `path`: each line is given to
    `handle` (the counter's `staff`), whose answer is shown with `show`; `broadcast` sends a
    shown message to every connected screen. `start()` binds, `stop()` closes and removes
    the socket."""

    def __init__(
        self,
        path: Path,
        handle: Callable[[str], Mapping[str, Any]],
        show: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self.path = path
        self._handle = handle
        self._show = show
        self._lock = threading.Lock()
        self._screens: dict[int, _Screen] = {}
        self._numbers = 0
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="staff-screen", daemon=True)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen (a stale socket left by a crash is replaced), then serve."""
        self._clear_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, SOCKET_MODE)
            listener.listen(MAX_SCREENS)
        except OSError as exc:
            listener.close()
            raise StaffScreenError(
                f"cannot listen for the staff screen at {self.path}: {exc.strerror or exc}"
            ) from None
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()
        log.info("staff screen: listening at %s", self.path)

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for screen in list(self._screens.values()):
                self._drop(screen, None)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def problem(self) -> str | None:
        """The serving thread, if it died (None: serving, or not started)."""
        if self._listener is not None and not self._thread.is_alive():
            return f"staff screen {self._thread.name} is not running"
        return None

    @property
    def screens(self) -> int:
        with self._lock:
            return len(self._screens)

    def _clear_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StaffScreenError(f"cannot look at {self.path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise StaffScreenError(
                f"{self.path} is there and is not a socket: move it away or set another "
                "[staff] socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(CONNECT_PROBE_S)
        try:
            probe.connect(str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise StaffScreenError(
                    f"cannot tell whether {self.path} is in use: {exc.strerror or exc}"
                ) from None
        else:
            raise StaffScreenError(
                f"another process listens at {self.path}: is this counter running already?"
            )
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a counter that died: nobody listens

    # --- out -------------------------------------------------------------------------------

    def broadcast(self, doc: Mapping[str, Any]) -> None:
        """Send one JSON line to every screen; never waits on one (a screen that cannot
        take a whole line now is disconnected)."""
        line = (json.dumps(dict(doc)) + "\n").encode()
        with self._lock:
            for screen in list(self._screens.values()):
                try:
                    sent = screen.sock.send(line)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    self._drop(screen, f"gone ({exc.strerror or exc})")
                    continue
                if sent != len(line):
                    self._drop(screen, "stopped reading; disconnected (it may reconnect)")

    def _drop(self, screen: _Screen, why: str | None) -> None:
        """Forget a screen (the lock held)."""
        self._screens.pop(screen.number, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(screen.sock)
        screen.sock.close()
        if why is not None:
            log.warning("staff screen %d %s", screen.number, why)

    # --- in --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                events = self._selector.select()
            except (OSError, ValueError):
                return
            for key, _mask in events:
                if key.fileobj == self._wake_r:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                elif isinstance(key.data, _Screen):
                    self._read(key.data)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        with self._lock:
            if len(self._screens) >= MAX_SCREENS:
                log.warning("staff screen refused: %d screens are connected", MAX_SCREENS)
                sock.close()
                return
            self._numbers += 1
            screen = _Screen(sock, self._numbers)
            self._screens[screen.number] = screen
            self._selector.register(sock, selectors.EVENT_READ, screen)
        log.info("staff screen %d connected", screen.number)

    def _read(self, screen: _Screen) -> None:
        try:
            chunk = screen.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            log.info("staff screen %d: %s", screen.number, exc.strerror or exc)
        if not chunk:
            with self._lock:
                self._drop(screen, None)
            log.info("staff screen %d disconnected", screen.number)
            return
        screen.pending += chunk
        *lines, screen.pending = screen.pending.split(b"\n")
        for line in lines:
            if screen.skipping:
                screen.skipping = False
            elif line.strip():
                self._answer(line)
        if len(screen.pending) > MAX_STAFF_LINE:
            screen.pending, screen.skipping = b"", True
            self._show({"display": f"line longer than {MAX_STAFF_LINE} bytes", "refused": True})

    def _answer(self, line: bytes) -> None:
        try:
            answer = self._handle(line.decode("utf-8", errors="replace"))
        except Exception as exc:  # one bad line must not end the desk's screen
            log.exception("staff line failed")
            answer = {"display": f"internal error: {exc}", "refused": True}
        try:
            self._show(answer)
        except Exception:
            log.exception("staff answer not shown")


class ScreenDisplay:
    """A counter's display that is both the process's own (stdout, a log under systemd)
    and every screen connected to the staff socket."""

    def __init__(self, inner: Display) -> None:
        self.inner = inner
        self.socket: StaffSocket | None = None

    def show(self, message: str, **facts: Any) -> None:
        self.inner.show(message, **facts)
        if self.socket is not None:
            self.socket.broadcast({"display": message, **facts})
