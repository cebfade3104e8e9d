"""The life cycle every device reader shares: a thread that starts once, stops on request, and
survives its device going away.

The scanner, the GNSS receiver and the camera each read a device that blocks, fails and comes
back. What differs is how a link is opened, pumped and closed, and how a blocking read is
made to return; what is the same is written here once:

- `Reader`: one background thread, started once (a second `start` is refused: a reader that
  ran is spent, make a new one), stopped by `stop`, which wakes the thread out of whatever it
  blocks in (`_interrupt`) and joins it with a timeout, raising when it does not end rather
  than leaving a thread nobody knows about. A context manager. Daemon threads, so a forgotten
  `stop` cannot keep a process alive; `stop` is still the way to end it, never ``__del__``.
- `ReconnectingReader`: a `Reader` whose thread opens a link, pumps it until it fails or the
  reader stops, closes it, and tries again after a delay drawn uniformly between
  ``reconnect_min_s`` and a ceiling that doubles per failed attempt up to ``reconnect_max_s``
  (exponential backoff with jitter: a fleet of devices whose receivers went away together does
  not retry in lockstep). The ceiling resets once a link carried data or stayed up for
  ``reconnect_max_s``; a link that dies at once (a device node that lingers after an unplug)
  keeps growing it instead of spinning. `connected` and ``on_connection`` say when a link is
  up. A device that stays away is one warning, a reminder every few minutes and one line when
  it is back, never a line per retry (`parcel.runlog.Trouble`).

Errors: each driver raises its own `drivers.errors.DriverError` subclass, so a reader's
"already started" and "did not stop" come out as the subclass's ``error`` type
(`ScannerError`, `GnssError`, `CameraError`), never as a type of this module.

Heartbeat: every reader's loop asks "am I stopping?" once per pass and sleeps only in a wait
on that same stop event, so the stop event is also the heartbeat (`_Heartbeat`): each question
the reader's own thread asks is a beat, and each timed wait promises a beat by its end. A
thread that hangs (in a callback, a read without its timeout) stops beating, and
`Reader.problem` says so; the readers themselves need not remember to beat.

What it must never do: know a device's bytes or frames, poll (the thread blocks in the
subclass's read, or waits on an event, with a timeout), or swallow a bug in the thread (it is
logged on the subclass's logger and re-raised).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Generic, Self, TypeVar

from drivers.errors import DriverError
from parcel.runlog import Trouble

if TYPE_CHECKING:
    import serial

__all__ = ["Reader", "ReconnectingReader", "SerialReader", "backoff_delay"]

Link = TypeVar("Link")

#: A reader is stalled once its thread has shown no sign of life for this many times its
#: `Reader.quiet_s`: a slow disk or a loaded machine may double a pass, hardly triple it.
STALL_FACTOR = 3.0
#: What one callback may take on a reader's thread besides the read: a journal commit, with its
#: fsync on an SD card.
CALLBACK_S = 1.0


def backoff_delay(failures: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before the next attempt after ``failures`` failed ones in a row.

    Uniform between ``min_s`` and a ceiling of ``min_s * 2 ** failures`` capped at ``max_s``:
    the first retry comes soon, a device that stays away is tried ever less often, and the
    jitter spreads retries of many devices over the whole window.
    """
    ceiling = min(max_s, min_s * 2 ** min(failures, 32))
    return rng.uniform(min_s, ceiling)


class _Heartbeat(threading.Event):
    """A reader's stop event that also keeps its heartbeat.

    Only the reader's own thread (``owner``) beats: `stop` and whoever reads a reader's
    output from another thread ask the same event, and their questions prove nothing about the
    reader. A timed wait by the owner is a promise to beat again by its end (a reader waiting
    to reconnect is alive while it waits); an untimed one promises nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.owner: threading.Thread | None = None
        self.beat_at = time.monotonic()  # the owner's last sign of life
        self.quiet_until = 0.0  # the end of the timed wait the owner is in, if any

    def is_set(self) -> bool:
        if threading.current_thread() is self.owner:
            self.beat_at = time.monotonic()
        return super().is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is not self.owner:
            return super().wait(timeout)
        now = time.monotonic()
        self.beat_at = now
        if timeout is not None:
            self.quiet_until = now + max(0.0, timeout)
        try:
            return super().wait(timeout)
        finally:
            self.beat_at = time.monotonic()
            self.quiet_until = 0.0

    def silent_for(self) -> float:
        """Seconds since the owner's last sign of life, not counting a promised wait."""
        return max(0.0, time.monotonic() - max(self.beat_at, self.quiet_until))


class Reader:
    """One background thread with a start-once, stop-and-join life cycle.

    Subclasses supply `_serve` (the thread's work, which must return soon after `_stopping`
    is set) and, when `_serve` can block, `_interrupt` (how `stop` wakes it). ``error`` is the
    subclass's own exception type; ``name`` names the thread and the messages.

    ``quiet_s`` is the longest the thread normally goes between two passes of its loop, not
    counting timed waits on its stop event: by default 5 s (a stream's read or open timeout);
    a serial reader sets its read timeout plus one callback. `problem` calls the thread
    stalled after `STALL_FACTOR` times that.
    """

    error: ClassVar[type[DriverError]] = DriverError
    log: ClassVar[logging.Logger] = logging.getLogger("drivers")

    def __init__(self, name: str) -> None:
        self._name = name
        self._stopping = _Heartbeat()
        self._thread: threading.Thread | None = None
        self.quiet_s = 5.0

    def start(self) -> None:
        """Start the thread. A reader runs once: make a new one after `stop`."""
        if self._thread is not None:
            raise self.error(f"{self._name} already started")
        self._starting()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._stopping.owner = self._thread
        self._stopping.beat_at = time.monotonic()
        self._thread.start()

    @property
    def name(self) -> str:
        """What the reader is, in words: its thread's name ("scanner reader on /dev/ttyACM0")."""
        return self._name

    def problem(self, within_s: float | None = None) -> str | None:
        """None while the thread runs and showed a sign of life within ``within_s`` seconds
        (default: `STALL_FACTOR` times ``quiet_s``); else what is wrong, naming the reader.

        The words do not change while the trouble lasts, so a status line built from them
        changes only when the trouble does.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return f"{self._name} is not running"
        limit = STALL_FACTOR * self.quiet_s if within_s is None else within_s
        if self._stopping.silent_for() > limit:
            return f"{self._name} stalled (no sign of life for over {limit:g} s)"
        return None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop, wake the thread out of a blocking read, and wait up to ``timeout`` s for it
        to end; raises the reader's ``error`` if it does not."""
        self._stopping.set()
        self._interrupt(timeout)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return  # Never started, or stop() called from a callback: the thread will exit.
        thread.join(timeout)
        if thread.is_alive():
            raise self.error(f"{self._name} did not stop within {timeout} s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            # Only a bug gets here; say so in the device log, not just on stderr.
            self.log.exception("%s died", self._name)
            self._died()
            raise

    def _serve(self) -> None:
        raise NotImplementedError

    def _starting(self) -> None:
        """Called by `start` before the thread starts (and only when it will)."""

    def _interrupt(self, timeout: float) -> None:
        """Called by `stop` once `_stopping` is set: make a blocking read return."""

    def _died(self) -> None:
        """Called on the thread when `_serve` raised, before the exception propagates."""


class ReconnectingReader(Reader, Generic[Link]):
    """A `Reader` that opens a link, pumps it, and reopens it with backoff when it fails.

    Subclasses supply:

    - `_connect(failures)`: open a link, or log why not with `_log_failure` and return None
      (the device going away at WARNING, a reminder every few minutes while it stays away,
      the retries in between at DEBUG, and one INFO line when a link opens again);
    - `_pump(link)`: read until `_stopping` is set or the link fails; True if it carried data;
    - `_close(link)`: release it. Called with the link lock held, as `_interrupt` is, so a
      stop never touches a handle whose file descriptors are being closed;
    - `_interrupt_link(link)` (optional): make a read blocked on ``link`` return;
    - `_disconnected()` (optional): forget what the cut link left half done.

    ``connected_on_open``: True (a serial port) when an open link counts as connected; False
    (a camera) when the subclass says so itself, e.g. on the first frame, via
    `_set_connected`. ``on_connection`` is called with each change, on the reader thread;
    an exception in it is logged and the reader carries on.
    """

    connected_on_open: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        reconnect_min_s: float,
        reconnect_max_s: float,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise self.error("need 0 < the shortest reconnect delay <= the longest")
        super().__init__(name)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._on_connection = on_connection
        self._jitter = random.Random()
        # Guards _link between the reader thread (open/close) and stop() (interrupt).
        self._link_lock = threading.Lock()
        self._link: Link | None = None
        self._connected = False
        # The device away (opens failing): said once, reminded, and said when it is back.
        self._unavailable = Trouble(self.log)

    @property
    def connected(self) -> bool:
        """True while a link is up."""
        return self._connected

    def _serve(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            link = self._connect(failures)
            if link is None:
                failures += 1
            else:
                with self._link_lock:
                    stopped = self._stopping.is_set()
                    if stopped:
                        self._close(link)
                    else:
                        self._link = link
                if stopped:
                    break
                self._unavailable.over("%s open again", self._name)
                if self.connected_on_open:
                    self._set_connected(True)
                opened_at = time.monotonic()
                carried_data = self._pump(link)
                lasted = time.monotonic() - opened_at >= self._reconnect_max_s
                with self._link_lock:
                    self._link = None
                    self._close(link)
                self._disconnected()
                self._set_connected(False)
                # A link that worked resets the backoff; one that dies at once keeps growing it.
                failures = 0 if carried_data or lasted else failures + 1
            if self._stopping.wait(self._backoff(failures)):
                break

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, self._reconnect_min_s, self._reconnect_max_s, self._jitter)

    def _interrupt(self, timeout: float) -> None:
        with self._link_lock:
            if self._link is not None:
                self._interrupt_link(self._link)

    def _died(self) -> None:
        self._connected = False

    def _connect(self, failures: int) -> Link | None:
        raise NotImplementedError

    def _pump(self, link: Link) -> bool:
        raise NotImplementedError

    def _close(self, link: Link) -> None:
        raise NotImplementedError

    def _interrupt_link(self, link: Link) -> None:
        """Make a read blocked on ``link`` return (called with the link lock held)."""

    def _disconnected(self) -> None:
        """Called on the reader thread after a link closed, before ``on_connection(False)``."""

    def _log_failure(self, failures: int, message: str, *args: object) -> None:
        """A failed open: a warning when the device went away, a reminder every few minutes
        while it stays away, the retries in between at debug (`parcel.runlog.Trouble`).
        ``failures`` is the backoff's count, kept in the signature for the subclasses."""
        self._unavailable.failing(message, *args)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if self._on_connection is not None:
            try:
                self._on_connection(connected)
            except Exception:
                self.log.exception("%s: on_connection callback failed", self._name)


class SerialReader(ReconnectingReader["serial.Serial"]):
    """A `ReconnectingReader` over a serial port: a device path or any pyserial URL.

    What the scanner and the GNSS receiver share: the port is checked when the reader is made
    (a bad URL scheme or baud rate is a configuration error, not an endless retry loop), opened
    with reads that block at most ``idle_read_s``, and a blocked read is woken by
    ``cancel_read`` (``socket://`` has none: its read then ends within ``idle_read_s``).
    ``what`` names the device in messages ("scanner", "GNSS receiver").
    """

    def __init__(
        self,
        what: str,
        port: str,
        *,
        baudrate: int,
        idle_read_s: float,
        reconnect_min_s: float,
        reconnect_max_s: float,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        import serial

        super().__init__(
            f"{what} reader on {port}",
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            on_connection=on_connection,
        )
        try:
            serial.serial_for_url(port, baudrate=baudrate, do_not_open=True)
        except ValueError as e:
            raise self.error(f"cannot use {what} port {port!r}: {e}") from e
        self._what = what
        self._port = port
        self._baudrate = baudrate
        self._idle_read_s = idle_read_s
        self.quiet_s = idle_read_s + CALLBACK_S  # one read's timeout, then what it delivered

    def _connect(self, failures: int) -> serial.Serial | None:
        import serial

        try:
            port = serial.serial_for_url(
                self._port, baudrate=self._baudrate, timeout=self._idle_read_s
            )
        except (OSError, ValueError) as e:  # SerialException is an OSError
            self._log_failure(failures, "cannot open %s on %s: %s", self._what, self._port, e)
            return None
        self.log.info("%s connected on %s", self._what, self._port)
        return port

    def _interrupt_link(self, link: serial.Serial) -> None:
        cancel = getattr(link, "cancel_read", None)
        if cancel is not None:
            cancel()

    def _close(self, link: serial.Serial) -> None:
        try:
            link.close()
        except OSError as e:
            self.log.debug("closing %s port %s: %s", self._what, self._port, e)
