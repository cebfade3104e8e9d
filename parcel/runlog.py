"""What the log of every long-running process shares, whichever layer writes the line.

A device runs for months; its log is read by a person who was not there. Three rules need
one owner that drivers, sync, edge and the depot may all import (hence here, in the package
every side may use):

- Level names: `[log] level` in a van's, a locker's and the depot's configuration is read by
  `log_level`, so the three accept the same words and refuse a typo with the same sentence.
  `apply_log_level` sets it on the process's root logger, but never quieter than the command
  line asked for (`lastmile -v` / `-vv`, pinned by `pin_log_floor`): a person who started the
  process to watch it closely keeps seeing what they asked for after a reload.
- A lasting trouble (`Trouble`): a scanner unplugged, a broker out of reach. Retried every
  few seconds, it would be a warning per retry, and the one line that matters (it started; it
  is over) drowns. So: one warning when it starts, a reminder at most every `REMIND_S` while
  it lasts ("still: ..., for 12 min"), one info line when it is over, and each retry only at
  debug level.
- What a reload did (`reload_log_level`, `report_reload`, `reload_failed`): one line saying
  what was applied, then one line per changed setting it could not apply, named as the
  configuration file names it (`needs_restart`), so van, locker and depot say it alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

__all__ = [
    "LOG_LEVELS",
    "REMIND_S",
    "Trouble",
    "apply_log_level",
    "for_how_long",
    "log_level",
    "log_level_name",
    "needs_restart",
    "pin_log_floor",
    "reload_failed",
    "reload_log_level",
    "report_reload",
]

#: The words `[log] level` takes, from the most to the least said.
LOG_LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: While a trouble lasts, it is said again at most this often (seconds).
REMIND_S = 300.0

_floor = logging.CRITICAL  # the command line's -v: the log is never quieter than this


def log_level(value: object) -> int:
    """The logging level a configuration's `level` names; ValueError with a sentence if none."""
    if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
        return LOG_LEVELS[value.strip().lower()]
    raise ValueError(f"[log] level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")


def log_level_name(level: int) -> str:
    """The word for `level` as `[log] level` writes it (`logging`'s own name otherwise)."""
    for name, number in LOG_LEVELS.items():
        if number == level:
            return name
    return logging.getLevelName(level).lower()


def pin_log_floor(level: int) -> None:
    """The command line asked for at least `level` (e.g. -v: info): no configuration or
    reload makes the log quieter than that for the rest of the process."""
    global _floor
    _floor = level


def apply_log_level(level: int) -> int:
    """Set the process's log level (the root logger's), no quieter than the pinned floor;
    returns the level now in force."""
    effective = min(level, _floor)
    logging.getLogger().setLevel(effective)
    return effective


def for_how_long(seconds: float) -> str:
    """A duration as a person reads it in a log line: "40 s", "12 min", "3 h 5 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class Trouble:
    """One condition that lasts and is retried (a port that will not open, a broker out of
    reach), told once, reminded every `remind_s`, and said once when it is over.

    Call `failing(message, *args)` on every failed attempt and `over(message, *args)` when an
    attempt works. `failing` logs the first at WARNING, a reminder at WARNING when `remind_s`
    passed since the last warning ("still: <message>, for 12 min"), and every other one at
    DEBUG. `over` logs `message` at INFO with how long the trouble lasted, once; while no
    trouble is on it logs nothing. A trouble that comes back within `remind_s` of its last
    warning (a link that flaps) goes on as the same trouble: said at INFO, not warned again.

    `clock` is the monotonic clock (tests pass their own to cross five minutes at once).
    Thread-safe: a reader thread and a network thread may report the same trouble.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        remind_s: float = REMIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._remind_s = remind_s
        self._clock = clock
        self._lock = threading.Lock()
        self._on = False
        self._began = 0.0
        self._warned_at: float | None = None

    @property
    def on(self) -> bool:
        """True while the trouble lasts (since a `failing` not yet followed by `over`)."""
        return self._on

    def failing(self, message: str, *args: object) -> None:
        """One more failed attempt; says so only when it is news or a reminder is due."""
        with self._lock:
            now = self._clock()
            recent = self._warned_at is not None and now - self._warned_at < self._remind_s
            if not self._on:
                self._on = True
                if recent:  # the same trouble flapping back: news, but not a new warning
                    self._log.info(message, *args)
                    return
                self._began = now
                self._warned_at = now
                self._log.warning(message, *args)
                return
            if not recent:
                self._warned_at = now
                lasted = for_how_long(now - self._began)
                self._log.warning("still: " + message + ", for %s", *args, lasted)
                return
        self._log.debug(message, *args)

    def over(self, message: str, *args: object) -> bool:
        """An attempt worked: log `message` at INFO with how long the trouble lasted, if one
        was on (True), else nothing (False)."""
        with self._lock:
            if not self._on:
                return False
            self._on = False
            lasted = for_how_long(self._clock() - self._began)
        self._log.info(message + " after %s", *args, lasted)
        return True


def needs_restart(old: Any, new: Any, *, live: set[str], names: Mapping[str, str]) -> list[str]:
    """One line per setting that differs between two configurations (dataclasses of one
    type) and is not in `live` (applied without a restart): "<name> changed: restart to apply",
    each named as the file names it (`names`, else the field's name)."""
    assert is_dataclass(old) and is_dataclass(new) and type(old) is type(new)
    return [
        f"{names.get(f.name, f.name)} changed: restart to apply"
        for f in fields(old)
        if f.name not in live and getattr(old, f.name) != getattr(new, f.name)
    ]


def reload_log_level(old: int, new: int) -> str | None:
    """Apply a reloaded `[log] level`; what changed in words (None: it did not change)."""
    if new == old:
        return None
    in_force = apply_log_level(new)
    said = f"log level {log_level_name(old)} -> {log_level_name(new)}"
    if in_force != new:
        said += f" (-v on the command line keeps it at {log_level_name(in_force)})"
    return said


def report_reload(log: logging.Logger, applied: list[str], restart: list[str]) -> list[str]:
    """Log what a reload applied (one INFO line) and each setting it could not (a WARNING
    line each); returns the lines, the first being the INFO one."""
    lines = ["reloaded: " + ("; ".join(applied) if applied else "nothing to apply"), *restart]
    log.info("%s", lines[0])
    for line in restart:
        log.warning("%s", line)
    return lines


def reload_failed(log: logging.Logger, why: object) -> list[str]:
    """A configuration that no longer loads: one ERROR line; the process runs on as it was."""
    line = f"reload failed, running on the configuration it had: {why}"
    log.error("%s", line)
    return [line]
