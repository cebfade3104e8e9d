"""A locker's configuration for the tests that run one: the TOML a technician writes, made
from what each test varies (ports, boards, compartments), so that the tests share one shape."""

from __future__ import annotations

import base64
from collections.abc import Sequence

# (id, board, lock, size) of each compartment.
Compartment = tuple[str, int, int, str]

ONE_SMALL: tuple[Compartment, ...] = (("A1", 0, 0, "S"),)
SMALL_AND_MEDIUM: tuple[Compartment, ...] = (("A1", 0, 0, "S"), ("B1", 0, 1, "M"))


def locker_toml(
    *,
    journal: str,
    lockboard: str,
    compartments: Sequence[Compartment] = ONE_SMALL,
    scanner: str | None = None,
    keypad: str | None = None,
    badges: Sequence[str] = ("C42",),
    sealing_public: bytes | None = None,
    broker: str = "",
    settings: str = "",
) -> str:
    """``locker-1``'s TOML: its journal, the lock-board port with every board the
    compartments name, the compartments, the couriers' badges, the scanner and keypad ports
    if given, the depot's sealing key if given, and ``broker`` (the lines of a ``[broker]``
    section, without its header) and ``settings`` (top-level lines) as written."""
    boards = ", ".join(f"{{ board = {b} }}" for b in sorted({c[1] for c in compartments}))
    lines = ['device_id = "locker-1"', f'journal = "{journal}"', settings]
    lines += [f'[lockboard]\nport = "{lockboard}"\nboards = [{boards}]']
    for cid, board, lock, size in compartments:
        lines.append(f'[[compartments]]\nid = "{cid}"\nboard = {board}\nlock = {lock}')
        lines.append(f'size = "{size}"')
    if badges:
        lines.append("[couriers]\nbadges = [" + ", ".join(f'"{b}"' for b in badges) + "]")
    if scanner is not None:
        lines.append(f'[scanner]\nport = "{scanner}"')
    if keypad is not None:
        lines.append(f'[keypad]\nport = "{keypad}"')
    if sealing_public is not None:
        lines.append(f'[depot]\nsealing_key = "{base64.b64encode(sealing_public).decode()}"')
    if broker:
        lines.append(f"[broker]\n{broker}")
    return "\n".join(lines) + "\n"
