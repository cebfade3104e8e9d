"""The one place a `lastmile` process sets up its log: one line per event, on stderr.

A device's stderr goes to journald (systemd starts it) or to whoever ran it. Either way a
person greps it, so every record is one line: `LEVEL device-id logger: message`. Under
systemd (JOURNAL_STREAM is set) there is no timestamp, since journald stamps every line
itself; otherwise the line starts with the local time. A message with a line break keeps it
as the two characters ``\\n``. An exception's traceback is printed only at debug level; at any
other level it is folded into its line as ``: ExcType: what it said``, so one bad event is one
line and not thirty.

`setup` runs once per process, first thing in `lastmile.cli.main`; `for_device` is then
called by the van, locker and depot commands once their configuration named the device and
its `[log] level` (`-v` on the command line is a floor no configuration goes below:
`parcel.runlog.apply_log_level`). A reload changes the level through the same function.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

from parcel.runlog import apply_log_level, pin_log_floor

__all__ = ["OneLineFormatter", "for_device", "setup"]

_VERBOSITY = {0: logging.WARNING, 1: logging.INFO}  # -v count; more: debug


class OneLineFormatter(logging.Formatter):
    """`[time ]LEVEL device-id logger: message`, one line per record (see the module)."""

    def __init__(self, device: str, *, timestamps: bool) -> None:
        super().__init__()
        self.device = device
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
                return self._line(record, message) + "\n" + self.formatException(record.exc_info)
            exc = record.exc_info[1]
            message += f": {type(exc).__name__}: {exc}" if str(exc) else f": {type(exc).__name__}"
        return self._line(record, message)

    def _line(self, record: logging.LogRecord, message: str) -> str:
        text = message.replace("\r", "\\r").replace("\n", "\\n")
        line = f"{record.levelname} {self.device} {record.name}: {text}"
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            line = f"{stamp}.{int(record.msecs):03d} {line}"
        return line


_formatter: OneLineFormatter | None = None
_handler: logging.Handler | None = None


def setup(verbose: int, name: str, *, stream: TextIO | None = None) -> None:
    """Log to stderr, one line per record, as `name` (the command) until a device is named.

    `verbose` is the count of -v: warnings only, -v info, -vv debug; with any -v that level
    is also the floor a device's configuration cannot go below. Called again, it replaces
    its own handler (a line is never doubled); when the root logger already has handlers of
    someone else's (a test harness, a program that embeds the CLI), it leaves logging to them,
    as `logging.basicConfig` does.
    """
    global _formatter, _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler = _formatter = None
    if root.handlers:
        return
    level = _VERBOSITY.get(verbose, logging.DEBUG)
    pin_log_floor(level if verbose else logging.CRITICAL)
    _formatter = OneLineFormatter(name, timestamps="JOURNAL_STREAM" not in os.environ)
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(_formatter)
    root.addHandler(_handler)
    root.setLevel(level)


def for_device(device: str, level: int) -> None:
    """From now on the lines name `device`, at the configured `level` (or the -v floor)."""
    if _formatter is None:
        return  # logging belongs to someone else (see `setup`)
    _formatter.device = device
    apply_log_level(level)
