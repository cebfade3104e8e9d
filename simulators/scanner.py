"""A serial barcode scanner on a pseudo-terminal, for tests, bench runs and by hand.

By hand: `lastmile sim scanner` sends each line typed on stdin as a scan, and `lastmile sim
keypad` each line as keys + CR (a locker's keypad is a serial line of the same kind).

It owns the scanner's side of the wire: ``[AIM id][data][suffix]`` written to a pty master,
so a driver opens the slave path exactly as it would open ``/dev/ttyACM0``. It implements the
wire from PROTOCOLS.md section 1 on its own and must never import from ``drivers``: a framing
bug shared by both sides would pass every test.

It must never block a test forever: the pty (simulators/device_port.py, where the pty
behaviour we rely on is written down) is non-blocking, and bytes nobody reads are dropped after a
bounded wait, as a real scanner's are.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from simulators.device_port import DevicePort
from simulators.errors import SimulatorError

__all__ = [
    "SimulatedScanner",
    "add_arguments",
    "add_keypad_arguments",
    "run_from_args",
    "run_keypad_from_args",
]

log = logging.getLogger("simulators.scanner")

# How long a write waits for the host to drain the pty before the bytes are dropped.
WRITE_TIMEOUT_S = 1.0

# Bytes that line noise produces and that no scanner sends as data: control bytes other than
# the terminators CR/LF and the ISO/IEC 15434 separators (EOT 0x04, FS/GS/RS/US 0x1C-0x1F),
# plus DEL and everything above 0x7F. Noise without CR/LF cannot fake a terminator; write a
# terminator with write_raw() when a test wants one.
_NOISE_BYTES = bytes(
    b for b in [*range(0x00, 0x20), *range(0x7F, 0x100)] if b not in b"\r\n\x04\x1c\x1d\x1e\x1f"
)


class SimulatedScanner:
    """A scanner plugged into a pseudo-terminal; `path` is what the driver opens.

    ``link`` makes `path` a stable symlink to the pty slave, like ``/dev/serial/by-id/...``,
    which survives `unplug`/`replug` while the ``/dev/pts/N`` behind it changes. ``suffix`` is
    the configured terminator (None: none, the host ends scans on silence, so leave a gap
    between scans). ``byte_delay_s`` writes one byte at a time with that delay (a slow UART).

    ``history`` lists ``(time.monotonic() when the write finished, bytes)`` for every write
    the pty accepted; bytes lost while unplugged or undrained are not in it.
    """

    def __init__(
        self,
        link: str | os.PathLike[str] | None = None,
        *,
        suffix: bytes | None = b"\r\n",
        byte_delay_s: float = 0.0,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._suffix = suffix or b""
        self.history: list[tuple[float, bytes]] = []
        self._port = DevicePort(
            "scanner",
            link,
            log=log,
            write_timeout_s=write_timeout_s,
            byte_delay_s=byte_delay_s,
        )

    @property
    def path(self) -> str:
        """What a driver opens: the symlink if one was asked for, else the pty slave."""
        return self._port.path

    @property
    def device(self) -> str:
        """The current pty slave (``/dev/pts/N``); it changes on every replug."""
        return self._port.device

    @property
    def plugged(self) -> bool:
        return self._port.plugged

    def scan(self, text: str | bytes, aim: str | None = "]C0") -> None:
        """Send one read: ``[aim][text][suffix]``; text is encoded latin-1, byte for byte."""
        data = text.encode("latin-1") if isinstance(text, str) else bytes(text)
        prefix = aim.encode("ascii") if aim is not None else b""
        self._send(prefix + data + self._suffix)

    def write_raw(self, data: bytes) -> None:
        """Send bytes as they are: noise, partial frames, a stray terminator."""
        self._send(bytes(data))

    def noise(self, n: int, rng: random.Random) -> bytes:
        """Send ``n`` bytes of line noise drawn with ``rng``; returns them."""
        garbage = bytes(rng.choice(_NOISE_BYTES) for _ in range(n))
        self._send(garbage)
        return garbage

    def unplug(self) -> None:
        """Pull the cable: the pty disappears, and so does the symlink to it."""
        self._port.unplug()

    def replug(self) -> None:
        """Plug back in: a fresh pty, and the symlink points at it."""
        self._port.plug()

    def close(self) -> None:
        """Unplug for good; safe to call twice."""
        self._port.close()

    def __enter__(self) -> SimulatedScanner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        accepted = self._port.write(data)
        if accepted:
            self.history.append((time.monotonic(), accepted))


# -- command line: `lastmile sim scanner` and `lastmile sim keypad` -------------------------------

#: The terminators a scanner can be set to send, by the names the van's config uses.
SUFFIXES = {"crlf": b"\r\n", "cr": b"\r", "lf": b"\n", "none": None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "A serial barcode scanner on a pty: prints the pty's path, then sends each line typed "
        "on stdin as one scan, [AIM id][text][suffix]. Write the GS separator of GS1 codes "
        "as <GS> (also <RS>, <EOT>), as for `lastmile identify`."
    )
    p.add_argument("--link", type=Path, help="make this path a symlink to the pty")
    p.add_argument(
        "--suffix", choices=sorted(SUFFIXES), default="crlf", help="the terminator (default crlf)"
    )
    p.add_argument(
        "--aim",
        default="]C0",
        help="AIM symbology identifier before each scan (default ]C0, Code 128; 'none': none)",
    )


def add_keypad_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "A locker's keypad on a pty (a serial line like the scanner: the keys, then CR): "
        "prints the pty's path, then sends each line typed on stdin as keys + CR."
    )
    p.add_argument("--link", type=Path, help="make this path a symlink to the pty")


def run_from_args(args: argparse.Namespace) -> int:
    from parcel.identify import parse_cli_code

    aim = None if args.aim.lower() == "none" else args.aim
    return _run("scanner", args.link, SUFFIXES[args.suffix], aim, parse_cli_code)


def run_keypad_from_args(args: argparse.Namespace) -> int:
    return _run("keypad", args.link, b"\r", None, lambda keys: keys)


def _run(
    name: str,
    link: Path | None,
    suffix: bytes | None,
    aim: str | None,
    text: Callable[[str], str],
) -> int:
    from simulators.console import serve

    try:
        sim = SimulatedScanner(link, suffix=suffix)
    except (SimulatorError, OSError) as e:
        print(f"lastmile sim {name}: {e}", file=sys.stderr)
        return 2

    def send(line: str) -> str:
        data = text(line)
        try:
            sim.scan(data, aim=aim)
        except UnicodeEncodeError:
            raise SimulatorError(f"{line!r}: a serial line carries bytes 0-255 only") from None
        return f"{'keyed' if name == 'keypad' else 'scanned'} {line}"

    with sim:
        return serve(name, sim.path, send)
