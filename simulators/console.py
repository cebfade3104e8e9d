"""A simulated device driven by hand: `lastmile sim scanner|keypad|gnss|lockboard`.

Owns the terminal side of those commands, the same for each device: print the pty path the
integrator points the real device's config at, read commands from stdin one line at a time,
answer each on stdout (or say on stderr, in one line, why it was refused), and run until
SIGINT or SIGTERM. End of stdin only ends the input: the device stays plugged in.

Must never busy-poll (stdin is read by a blocking thread; the main thread waits on an Event)
or die on a bad line: a typo gets one line on stderr and the next line is read.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from simulators.errors import SimulatorError

__all__ = ["Command", "numbers", "serve"]

#: Handles one stdin line (stripped, not empty): returns the reply line, or None for none.
#: Raises SimulatorError or ValueError for a line it cannot act on.
Command = Callable[[str], str | None]

# The main thread wakes this often to let nothing but a signal end the wait (no polling:
# nothing is looked at when it wakes).
_WAIT_S = 3600.0


def serve(name: str, path: str, command: Command) -> int:
    """Print ``path``, feed stdin lines to ``command`` until SIGINT/SIGTERM; exit status 0."""
    stop = threading.Event()
    out = threading.Lock()

    def say(line: str, stream: TextIO) -> None:
        with out:
            print(line, file=stream, flush=True)

    def read_stdin() -> None:
        if sys.stdin is None:
            return
        for raw in sys.stdin:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                reply = command(line)
            except (SimulatorError, ValueError) as exc:
                say(f"lastmile sim {name}: {exc}", sys.stderr)
                continue
            if reply is not None:
                say(reply, sys.stdout)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(path, sys.stdout)
        threading.Thread(target=read_stdin, name=f"sim {name} stdin", daemon=True).start()
        while not stop.wait(_WAIT_S):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def numbers(line: str, count: int, usage: str) -> list[int]:
    """The ``count`` integers after the command word of ``line``; ValueError with ``usage``."""
    words = line.split()[1:]
    try:
        if len(words) != count:
            raise ValueError
        return [int(w) for w in words]
    except ValueError:
        raise ValueError(f"{line!r}: expected {usage}") from None
