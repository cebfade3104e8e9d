"""A device's end of a serial cable, on a pseudo-terminal: what every serial simulator shares.

The scanner, the GNSS receiver and the lock-board bus each speak their own protocol, but the
cable is the same: a pty pair in raw mode, a slave path the driver opens as it would open
``/dev/ttyACM0``, an optional stable symlink like ``/dev/serial/by-id/...``, writes the host may
never drain, an unplug, and for a device that listens, reads. `DevicePort` owns that;
`ServingThread` owns the life of a simulator's background thread. Neither knows a frame.

It must never block a caller forever: the master is non-blocking, a write gives up after its
timeout and drops what the pty would not take (a device's UART does not wait for its host), a
read waits at most its timeout or until `DevicePort.interrupt`, and `ServingThread.stop` joins
with a bound. Like every simulator it never imports from ``drivers``.

How Linux ptys behave (checked on Linux 6.18; tests/test_scanner_serial.py pins what we rely on):

- Writes to the master succeed while no process has the slave open, even if the slave was
  never opened: the bytes wait in the slave's input queue. pyserial flushes that queue when it
  opens the port (``reset_input_buffer`` in ``Serial.open``), so bytes written before the host
  opens the port are lost, as PROTOCOLS.md says. A plain ``os.open`` of the slave would see them.
- The queue holds about 16 KiB; past that, writes to the non-blocking master raise
  ``BlockingIOError`` (EAGAIN) and ``select`` reports the master not writable until the host
  reads.
- Reading the master while no slave fd is open fails with EIO. A port that listens
  (``listen=True``) therefore keeps a slave fd open for as long as it is plugged, so it can
  hear the host before and between the host's opens; nobody reads that fd, and the host's
  flush on open still drops bytes written before it opened.
- Closing the master removes ``/dev/pts/N`` at once; a host blocked reading the slave wakes up
  with "readable" and a zero-byte read, which pyserial raises as ``SerialException``. Bytes
  still queued for the host are discarded with it. Opening the vanished path fails with ENOENT.
  This is the unplug.
- termios settings (raw mode) live with the pty, not with an fd: they persist after the last
  slave fd closes, so raw mode is set once per plug. Without raw mode the line discipline
  echoes input back to the master and turns CR into LF.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from simulators.errors import SimulatorError

__all__ = ["DevicePort", "ServingThread"]

# Bytes taken from the master (or the wake pipe) per read; larger than any frame we simulate.
READ_SIZE = 4096


class DevicePort:
    """The device's end of one serial cable; `path` is what the driver opens.

    ``name`` says which device it is in log lines ("scanner", "lock boards"); ``log`` is the
    simulator's logger, so its lines keep the simulator's name. ``link`` makes `path` a symlink
    to the pty slave that survives `unplug`/`plug` while the ``/dev/pts/N`` behind it changes.
    A write waits at most ``write_timeout_s`` for the host to drain the pty; ``byte_delay_s``
    writes one byte at a time with that gap (a slow UART). ``listen=True`` is for a device
    that reads what the host sends (see the module docstring on EIO): it keeps a slave fd open
    and gives `read` and `interrupt`.

    The port is plugged in when made. Writes, `unplug` and `close` may come from any thread: a
    lock around every use of the master keeps one thread from closing it (and letting the
    kernel reuse its number) under another's write. A listening port is the exception: its
    reads and writes belong to one serving thread, which must be done before `unplug` or
    `close` (`read` takes no lock, and a write waiting for the host consumes an `interrupt`,
    which only means the serving loop looks again once the write returns).
    """

    def __init__(
        self,
        name: str,
        link: str | os.PathLike[str] | None = None,
        *,
        log: logging.Logger,
        write_timeout_s: float,
        byte_delay_s: float = 0.0,
        listen: bool = False,
    ) -> None:
        if byte_delay_s < 0 or write_timeout_s < 0:
            raise SimulatorError("byte_delay_s and write_timeout_s must not be negative")
        self._name = name
        self._link = Path(link) if link is not None else None
        self._log = log
        self._write_timeout_s = write_timeout_s
        self._byte_delay_s = byte_delay_s
        self._listen = listen
        self._io = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._device = ""
        self._dropping = False  # a loss is logged once per stretch of losses, not per write
        self._closed = False
        # The wake pipe has its own lock: interrupt() must not wait behind a write that is
        # waiting for the host.
        self._wake_lock = threading.Lock()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        if listen:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
        try:
            self.plug()
        except BaseException:
            self._close_wake_pipe()
            raise

    @property
    def path(self) -> str:
        """What a driver opens: the symlink if one was asked for, else the pty slave."""
        return str(self._link) if self._link is not None else self._device

    @property
    def device(self) -> str:
        """The current pty slave (``/dev/pts/N``); it changes on every plug."""
        return self._device

    @property
    def plugged(self) -> bool:
        return self._master is not None

    # -- the cable ------------------------------------------------------------------------------

    def plug(self) -> None:
        """Plug in: a fresh pty in raw mode, and the symlink (if any) points at it."""
        self._check_open()
        if self._master is not None:
            raise SimulatorError(f"{self._name} is already plugged in")
        master, slave = os.openpty()
        try:
            # No echo, no CR/LF translation: the host must see exactly the device's bytes.
            tty.setraw(slave)
            device = os.ttyname(slave)
            os.set_blocking(master, False)
            if self._link is not None:
                _point_link(self._link, device)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        if not self._listen:
            os.close(slave)  # the raw settings stay with the pty (see the module docstring)
        with self._io:
            self._master = master
            self._slave = slave if self._listen else None
            self._device = device
            self._dropping = False
        self._log.info("%s plugged in at %s (%s)", self._name, self.path, device)

    def unplug(self) -> None:
        """Pull the cable: the pty disappears, and so does the symlink to it."""
        self._check_open()
        with self._io:
            if self._master is None:
                raise SimulatorError(f"{self._name} is already unplugged")
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
        link = self._link
        # Only our own link: another process may have pointed the path elsewhere since.
        with contextlib.suppress(OSError):
            if link is not None and link.is_symlink() and os.readlink(link) == self._device:
                link.unlink()
        self._log.info("%s unplugged from %s", self._name, self._device)

    def close(self) -> None:
        """Unplug for good; safe to call twice."""
        if self._closed:
            return
        if self._master is not None:
            self.unplug()
        self._closed = True
        self._close_wake_pipe()

    # -- bytes ----------------------------------------------------------------------------------

    def write(self, data: bytes, *, cancel: threading.Event | None = None) -> bytes:
        """Send ``data`` towards the host; return the part the pty accepted.

        Bytes are dropped, never queued in the simulator: while unplugged, and when the host
        has not drained the pty within the write timeout. Setting ``cancel`` (then calling
        `interrupt` on a listening port) makes a waiting write give up at once, so a serving
        thread can be stopped while the host is not reading.
        """
        self._check_open()
        data = bytes(data)
        if self._byte_delay_s <= 0:
            return self._write_now(data, cancel)
        sent = bytearray()
        for i in range(len(data)):
            if cancel is not None and cancel.is_set():
                break
            if i:
                time.sleep(self._byte_delay_s)  # UART pacing, not waiting for an outcome
            sent += self._write_now(data[i : i + 1], cancel)
        return bytes(sent)

    def read(self, timeout_s: float | None) -> bytes:
        """What the host sent, after waiting at most ``timeout_s`` (None: until `interrupt`).

        Returns b"" on timeout or interrupt. Only for a port made with ``listen=True``.
        """
        master, wake = self._master, self._wake_r
        if master is None or wake is None:
            raise SimulatorError(f"{self._name}: read() needs a plugged, listening port")
        readable, _, _ = select.select([master, wake], [], [], timeout_s)
        if wake in readable:
            os.read(wake, READ_SIZE)
        if master not in readable:
            return b""
        try:
            return os.read(master, READ_SIZE)
        except BlockingIOError:
            return b""

    def interrupt(self) -> None:
        """Wake a `read` (or a write waiting for the host) early; nothing if none waits."""
        with self._wake_lock:  # never write to the fd number after close() released it
            if self._wake_w is None:
                return
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self._wake_w, b"\0")

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SimulatorError(f"simulated {self._name} is closed")

    def _write_now(self, data: bytes, cancel: threading.Event | None) -> bytes:
        with self._io:
            master = self._master
            if master is None:
                self._lost(len(data), "unplugged")
                return b""
            view = memoryview(data)
            give_up_at = time.monotonic() + self._write_timeout_s
            waits_on = [self._wake_r] if self._wake_r is not None else []
            while view and not (cancel is not None and cancel.is_set()):
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    left = give_up_at - time.monotonic()
                    if left <= 0:
                        break
                    # Until the host drains the queue, an interrupt, or the bound.
                    woken, _, _ = select.select(waits_on, [master], [], left)
                    if woken:
                        os.read(woken[0], READ_SIZE)
                except OSError as e:
                    self._log.warning("%s write failed on %s: %s", self._name, self._device, e)
                    break
            if view:
                self._lost(len(view), f"nobody drained {self._device}")
            else:
                self._dropping = False
            return data[: len(data) - len(view)]

    def _lost(self, n: int, why: str) -> None:
        """Log a loss: a warning for the first of a stretch, then quietly until bytes flow."""
        level = logging.DEBUG if self._dropping else logging.WARNING
        self._log.log(level, "%s: %s: %d bytes lost", self._name, why, n)
        self._dropping = True

    def _close_wake_pipe(self) -> None:
        with self._wake_lock:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = None
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


class ServingThread:
    """A simulator's background thread: started once, stopped within a bound, its death logged.

    ``body`` runs until it returns; it should return soon after `stopping` is set, and wait on
    `stopping` (or on a port `read` that ``wake`` interrupts) rather than sleep. An exception
    that ends it is logged with the thread's ``name`` and re-raised, so a simulator that died
    is visible instead of silently mute.
    """

    def __init__(
        self,
        name: str,
        body: Callable[[], None],
        *,
        log: logging.Logger,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.stopping = threading.Event()
        self._name = name
        self._body = body
        self._log = log
        self._wake = wake
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_current(self) -> bool:
        """True when called from the serving thread itself (where `stop` would hang)."""
        return self._thread is threading.current_thread()

    def stop(self, timeout_s: float) -> None:
        """Ask the body to return and wait for it; SimulatorError if it is still running."""
        if self.is_current():
            raise SimulatorError(f"stopping {self._name} from its own thread would hang")
        self.stopping.set()
        if self._wake is not None:
            self._wake()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise SimulatorError(f"{self._name} did not stop within {timeout_s} s")

    def _run(self) -> None:
        try:
            self._body()
        except Exception:
            self._log.exception("%s died", self._name)
            raise


def _point_link(link: Path, target: str) -> None:
    if link.exists() and not link.is_symlink():
        raise SimulatorError(f"{link} exists and is not a symlink; not replacing it")
    # Build the new link beside the old and rename over it, so a driver retrying its open never
    # sees a half-made link.
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
