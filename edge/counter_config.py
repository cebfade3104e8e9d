"""A staffed collection point's configuration: its shelves, hold, scanner, couriers and keys.

Read from TOML, in the locker's shape where the two share a setting (``[scanner]``,
``[couriers]``, ``[depot]``, ``[broker]``, ``[sync]``, ``[log]``, ``hold_hours``), so a
technician who set up a locker reads this one at a glance. What a counter has instead of
lock boards and compartments is a number of shelf places (``shelves``): the depot's
``capacity`` for it should say the same. ``shelves`` is also what tells a counter's file
from a van's or a locker's (`lastmile check`).

The staff's screen is the process's stdin unless ``[staff] socket`` names a unix socket for
the desk's screen app (edge.counter_screen): under systemd stdin is /dev/null, so an
installed counter needs it (`lastmile install` says so).

Must never: accept a counter without shelves, nor open the scanner's port (that is the
device's job, at start).
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.locker_config import DEFAULT_HOLD_H, LockerConfigError, read_broker, read_key, read_log
from parcel.runlog import log_level
from sync.mqtt import BrokerAddress

#: A desk holds what its shelves hold; more than this is a warehouse, not a counter.
MAX_SHELVES = 10_000
#: The longest path a unix socket may have (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


class CounterConfigError(EdgeError):
    """The counter configuration is missing something or contradicts itself."""


@dataclass
class CounterConfig:
    device_id: str
    journal: Path
    shelves: int  # shelf places "shelf-1" .. "shelf-N"
    hold_s: float = DEFAULT_HOLD_H * 3600
    # A parcel the depot did not reserve here: refused (False), or taken in while there is
    # room (True: a courier's walk-in drop that the depot learns of from the deposit).
    walk_in: bool = False
    courier_badges: frozenset[str] = frozenset()
    courier_session_s: float = 300.0
    depot_sealing_key: bytes | None = None
    command_keys: list[bytes] = field(default_factory=list)
    scanner_port: str | None = None
    # How often holds and reservations are looked at for expiry (the counter has no other
    # timer; an hour's hold does not need a finer grain).
    expiry_check_s: float = 1.0
    broker: BrokerAddress | None = None
    sync: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.INFO
    source: Path | None = None
    # The desk's screen app connects here (edge.counter_screen); None: stdin is the screen.
    staff_socket: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.shelves <= MAX_SHELVES:
            raise CounterConfigError(f"shelves must be 1..{MAX_SHELVES}, not {self.shelves}")
        if self.hold_s <= 0:
            raise CounterConfigError("hold_hours must be above 0")
        if self.staff_socket is not None and len(os.fsencode(self.staff_socket)) > MAX_SOCKET_PATH:
            raise CounterConfigError(
                f"[staff] socket {self.staff_socket} is longer than the {MAX_SOCKET_PATH} bytes "
                "a unix socket's path may have"
            )

    def shelf_ids(self) -> list[str]:
        return [f"shelf-{i}" for i in range(1, self.shelves + 1)]


def load_counter_config(path: str | os.PathLike[str]) -> CounterConfig:
    """Read a counter's TOML file (README, "Staffed collection point", has an example)."""
    base = Path(path).parent
    where = f"counter config {path}"
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CounterConfigError(f"cannot read {where}: {exc}") from exc
    try:
        device_id = str(doc["device_id"])
        shelves = doc["shelves"]
        if not isinstance(shelves, int) or isinstance(shelves, bool):
            raise CounterConfigError(f"{where}: shelves must be a whole number")
        walk_in = doc.get("walk_in", False)
        if not isinstance(walk_in, bool):
            raise CounterConfigError(f"{where}: walk_in must be true or false")
        depot = doc.get("depot", {})
        log = read_log(doc, where)  # LockerConfigError: said as a CounterConfigError below
        staff = doc.get("staff", {})
        if not isinstance(staff, dict) or set(staff) - {"socket"}:
            raise CounterConfigError(f"{where}: [staff] takes only socket")
        socket_path = staff.get("socket")
        if socket_path is not None and not (isinstance(socket_path, str) and socket_path):
            raise CounterConfigError(f"{where}: [staff] socket must be a path")
        return CounterConfig(
            device_id=device_id,
            journal=base / doc.get("journal", f"{device_id}.journal.db"),
            shelves=shelves,
            hold_s=float(doc.get("hold_hours", DEFAULT_HOLD_H)) * 3600,
            walk_in=walk_in,
            courier_badges=frozenset(str(x) for x in doc.get("couriers", {}).get("badges", [])),
            courier_session_s=float(doc.get("courier_session_s", 300.0)),
            depot_sealing_key=read_key(depot["sealing_key"]) if "sealing_key" in depot else None,
            command_keys=[read_key(k) for k in depot.get("command_keys", [])],
            scanner_port=doc.get("scanner", {}).get("port"),
            broker=read_broker(doc, base, device_id, where),
            sync=dict(doc.get("sync", {})),
            log_level=log_level(log.get("level", "info")),
            source=Path(path),
            staff_socket=base / socket_path if socket_path else None,
        )
    except LockerConfigError as exc:
        raise CounterConfigError(str(exc)) from exc
    except KeyError as exc:
        raise CounterConfigError(f"{where} lacks {exc}") from exc
    except (TypeError, ValueError, OSError) as exc:
        raise CounterConfigError(f"{where}: {exc}") from exc
