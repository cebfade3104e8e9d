"""A device run as a systemd service: readiness, status, watchdog, reload and stop.

`lastmile van`, `lastmile locker` and `lastmile depot` run under systemd with ``Type=notify``
and ``WatchdogSec=``. systemd then wants to hear, over the datagram socket it names in
``NOTIFY_SOCKET`` (sd_notify(3)): ``READY=1`` once the device is started, a ``STATUS=`` line a
person reads in ``systemctl status``, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` while the
process is well, ``RELOADING=1`` around a reload and ``STOPPING=1`` when it leaves. Without
``NOTIFY_SOCKET`` (a terminal, a test, another supervisor) all of that is a no-op.

The protocol is written here rather than taken from a library: it is one datagram of
``KEY=VALUE`` lines to a socket path (``@`` for the abstract namespace), which sd_notify(3)
documents as stable and meant to be reimplemented. The pure-Python `sdnotify` package has had
no release since 2017, and `systemd-python` or `cysystemd` bind libsystemd for these ~15 lines.

The watchdog is tied to the device's health, not only to this loop: a ping is sent only while
the loop runs (a wedged loop sends none) and the device's `health()` finds no dead or stalled
thread (a reader hung in a callback sends none), so systemd restarts a process that is alive
but no longer does its work. Pings resume by themselves if the trouble passes before systemd
acts: the watchdog judges the present, and systemd's own timeout decides when it has waited
long enough.

Signals: SIGTERM and SIGINT stop the device; SIGHUP calls its ``reload()`` if it has one. A
signal handler only sets a flag and writes a byte to a pipe that the loop waits on with
`select`; it never touches a lock (`threading.Event.set` takes one, and a handler runs between
two bytecodes of the main thread, which may hold that very lock at the time), and the reload
itself runs on the loop, never in the handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger("lastmile.service")

__all__ = ["Control", "Device", "Notifier", "run", "serve", "watchdog_interval"]

#: How often at most a changed `STATUS=` is sent (a change in health is sent at once).
STATUS_EVERY_S = 5.0
#: How long the loop waits when nothing is due: there is no watchdog and no one to tell.
IDLE_WAIT_S = 3600.0
#: A send to a notify socket that does not drain gives up after this (systemd always reads).
SEND_TIMEOUT_S = 1.0


class Device(Protocol):
    """What the service loop runs: `lastmile.cli` builds it, `start()`s it, and hands it over.

    ``health()`` lists what is wrong with the device's threads (empty: all is well);
    ``status_line()`` says in one line how it is doing. A device may also have ``reload()``,
    which SIGHUP calls.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> list[str]: ...

    def status_line(self) -> str: ...


class Notifier:
    """Messages to systemd's notify socket; a no-op without one.

    ``address`` is ``NOTIFY_SOCKET``: a socket path, or ``@name`` in the abstract namespace.
    A send never raises into the device: a failure is logged once (until a send succeeds
    again) and the message is dropped, as systemd would rather miss a status than have the
    device stop for it.
    """

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        if address and address[0] == "@":
            self._address = "\0" + address[1:]
        elif address and address[0] == "/":
            self._address = address
        elif address:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @name: not notifying", address)
        self._sock: socket.socket | None = None
        self._failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram, e.g. ``send(READY=1, STATUS="online")``;
        True if it went. A value's own line breaks become spaces (one field, one line)."""
        if self._address is None:
            return False
        text = "\n".join(
            f"{key}={' '.join(str(value).splitlines())}" for key, value in fields.items()
        )
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(text.encode(), self._address)
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("cannot notify systemd (NOTIFY_SOCKET): %s", exc)
                return False
            self._failing = False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises; None when systemd set no watchdog, or set it for another process
    (``WATCHDOG_PID``, as a depot worker started by the supervisor inherits it)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        log.warning("WATCHDOG_USEC/WATCHDOG_PID are not numbers: no watchdog pings")
        return None
    return usec / 2e6 if usec > 0 else None


class Control:
    """Requests to the service loop, from signal handlers or any thread: stop, reload.

    Each request is a flag and a byte on a pipe; `wait` blocks in `select` on the pipe until
    a request or its timeout. Both are safe in a signal handler (see the module docstring).
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
        self._stop = False
        self._reload = False
        self._previous: dict[signal.Signals, Any] = {}  # the handlers `close` puts back

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask to stop, SIGHUP to reload, until `close` (main thread only,
        as Python has it)."""
        for sig, request in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            self._previous[sig] = signal.signal(sig, lambda *_, ask=request: ask())

    def request_stop(self) -> None:
        self._stop = True
        self._poke()

    def request_reload(self) -> None:
        self._reload = True
        self._poke()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def take_reload(self) -> bool:
        """True once per reload request (requests made before it was taken count as one)."""
        asked, self._reload = self._reload, False
        return asked

    def wait(self, timeout: float) -> None:
        """Block until a request or ``timeout`` seconds; consume the wake-ups."""
        if not (self._stop or self._reload):
            select.select([self._r], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass

    def _poke(self) -> None:
        # A full pipe already holds a wake-up; a closed one means the loop is gone.
        with contextlib.suppress(OSError):
            os.write(self._w, b"!")

    def close(self) -> None:
        """Put the signal handlers back, then close the pipe: a late signal must not write
        into a descriptor number the process has since reused."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def serve(device: Device, control: Control) -> int:
    """`run` with systemd's environment: its notify socket and watchdog, if any."""
    notifier = Notifier.from_environ()
    try:
        return run(device, control, notifier, watchdog_s=watchdog_interval())
    finally:
        notifier.close()
        control.close()


def run(
    device: Device,
    control: Control,
    notifier: Notifier,
    *,
    watchdog_s: float | None,
) -> int:
    """Serve a started device until ``control`` asks to stop, then stop it; returns 0.

    Sends ``READY=1`` with a ``STATUS=`` at once; then every ``watchdog_s`` (None: never)
    ``WATCHDOG=1`` if the device's health is good; a changed ``STATUS=`` at most every
    `STATUS_EVERY_S`, or at once when the device's health changes; ``RELOADING=1`` ...
    ``READY=1`` around a reload; ``STOPPING=1`` before `stop`.
    """
    loop = _Loop(device, notifier)
    loop.ready()
    now = time.monotonic()
    next_ping = now + watchdog_s if watchdog_s else None
    next_status = now + STATUS_EVERY_S if notifier.enabled else None
    while not control.stop_requested:
        due = [t for t in (next_ping, next_status) if t is not None]
        control.wait(min(due) - time.monotonic() if due else IDLE_WAIT_S)
        if control.stop_requested:
            break
        if control.take_reload():
            loop.reload()
        now = time.monotonic()
        ping = next_ping is not None and now >= next_ping
        status = next_status is not None and now >= next_status
        healthy = loop.check_health() if ping or status else True
        if ping and watchdog_s and next_ping is not None:
            if healthy:
                notifier.send(WATCHDOG=1)
            next_ping += watchdog_s
            if next_ping <= now:  # fell behind (a slow turn): no burst of pings to catch up
                next_ping = now + watchdog_s
        if status or loop.health_changed:
            loop.tell_status()
            next_status = time.monotonic() + STATUS_EVERY_S if notifier.enabled else None
    notifier.send(STOPPING=1, STATUS="stopping")
    log.info("stopping")
    device.stop()
    return 0


class _Loop:
    """What the service loop remembers between two turns: the health last seen, the status
    last sent."""

    def __init__(self, device: Device, notifier: Notifier) -> None:
        self.device = device
        self.notifier = notifier
        self.problems: list[str] = []
        self.health_changed = False
        self._status_sent = ""
        self._status_broken = False

    def check_health(self) -> bool:
        """Ask the device; True if it is healthy. A change is logged once."""
        try:
            problems = list(self.device.health())
        except Exception as exc:  # a bug in a health check is a reason to withhold the ping
            log.exception("the health check failed")
            problems = [f"the health check failed: {exc}"]
        if problems != self.problems:
            if problems:
                log.error("unhealthy, watchdog pings withheld: %s", "; ".join(problems))
            else:
                log.warning("healthy again: watchdog pings resume")
            self.problems = problems
            self.health_changed = True
        return not problems

    def status(self) -> str:
        try:
            line = self.device.status_line()
            self._status_broken = False
        except Exception:  # a status is for a person; its failure must not stop the device
            if not self._status_broken:
                log.exception("the status line failed")
            self._status_broken = True
            line = "status unknown"
        if self.problems:
            line += "; unhealthy: " + "; ".join(self.problems)
        return line

    def tell_status(self) -> None:
        """Send the status if it changed since the last one sent."""
        line = self.status()
        if line != self._status_sent:
            self.notifier.send(STATUS=line)
            self._status_sent = line
        self.health_changed = False

    def ready(self) -> None:
        line = self.status()
        self.notifier.send(READY=1, STATUS=line)
        self._status_sent = line

    def reload(self) -> None:
        """SIGHUP's hook: the device's own ``reload()``, between ``RELOADING=1`` and
        ``READY=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` requires)."""
        reload: Callable[[], object] | None = getattr(self.device, "reload", None)
        if reload is None:
            log.warning("SIGHUP: this device has nothing to reload")
            return
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
        try:
            reload()
        except Exception:  # a reload that fails leaves the device as it ran before
            log.exception("reload failed; running on as before")
        self.ready()
