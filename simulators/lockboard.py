"""Kerong CU16 lock boards on a pseudo-terminal, for tests, bench runs and `lastmile sim`.

It owns the boards' side of the RS-485 wire (PROTOCOLS.md section 3) and implements it on its
own: it never imports from ``drivers``, so a framing bug shared by both sides cannot pass a
test. A driver opens `path` exactly as it would open ``/dev/ttyUSB0``.

The wire, as this simulator reads the reference:

- host frames ``02 ADDR CMD 03 SUM``, ADDR = board << 4 | lock, SUM = sum of the 4 bytes
  before it & 0xFF. A frame with a bad checksum is ignored without a reply, as a real board
  does; bytes that are no frame are skipped until the next STX.
- status reply ``02 ADDR 35 L1-8 L9-16 S1-8 S9-16 03 SUM``, SUM = sum of the 8 bytes before
  it & 0xFF, ADDR = board << 4 (lock nibble 0). Bit n of the 16-bit bitmaps is lock n (the
  manual's lock n+1), written in each board's configured polarity.

Door physics: an unlock pulse releases the lock and the door springs ajar at once, so the
lock bit shows "open" on the next status; the door stays open until a simulated person
pushes it shut (`close_door`, `open_and`). Item sensors see a parcel whether the door is open
or not; a person can only put or take one through an open door.

Must never: block a test forever (every write has a bounded wait, the serving thread stops on
`close`), or guess at what the driver meant: a frame it cannot read gets no answer.

The pty and the serving thread's life are simulators/device_port.py's: a listening port (the
boards must hear the host before and between the driver's opens, so a slave fd stays open),
raw mode, bounded writes, and a read that `after` and `close` interrupt.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from simulators.device_port import DevicePort, ServingThread
from simulators.errors import SimulatorError

__all__ = [
    "Exchange",
    "HostFrame",
    "HostFrameParser",
    "SimulatedLockBoards",
    "add_arguments",
    "encode_status_reply",
    "main",
    "run_from_args",
]

log = logging.getLogger("simulators.lockboard")

STX = 0x02  # start of every frame
ETX = 0x03  # before the checksum
STATUS_ONE = 0x30  # host: status of the addressed board
UNLOCK = 0x31  # host: pulse the addressed lock
STATUS_ALL = 0x32  # host: every board reports (best effort: each online board replies in turn)
UNLOCK_ALL = 0x33  # host: pulse every lock of the addressed board
STATUS_REPLY = 0x35  # board: status reply
SET_PULSE = 0x37  # host: set the unlock pulse time (accepted and ignored: no timing modelled)

HOST_FRAME_LEN = 5
MAX_BOARDS = 16
MAX_LOCKS = 16

WRITE_TIMEOUT_S = 1.0  # how long a reply waits for the host to drain the pty before it is lost


def _sum8(data: bytes | bytearray) -> int:
    return sum(data) & 0xFF


def encode_status_reply(board: int, lock_bits: int, item_bits: int, *, lock: int = 0) -> bytes:
    """The 9-byte status reply; bits exactly as they go on the wire (polarity applied)."""
    if not (0 <= board < MAX_BOARDS and 0 <= lock < MAX_LOCKS):
        raise SimulatorError(f"no address for board {board} lock {lock}")
    if not (0 <= lock_bits <= 0xFFFF and 0 <= item_bits <= 0xFFFF):
        raise SimulatorError("bitmaps are 16 bits")
    body = bytes(
        (
            STX,
            board << 4 | lock,
            STATUS_REPLY,
            lock_bits & 0xFF,
            lock_bits >> 8,
            item_bits & 0xFF,
            item_bits >> 8,
            ETX,
        )
    )
    return body + bytes((_sum8(body),))


class HostFrame(NamedTuple):
    """A 5-byte frame from the host; ``valid`` is False when its checksum is wrong."""

    board: int
    lock: int
    cmd: int
    raw: bytes
    valid: bool


class HostFrameParser:
    """Cuts the host-to-board byte stream into frames, as a board's firmware would.

    A candidate is STX ADDR CMD ETX SUM. One whose ETX is missing is no frame: only its STX
    is dropped and the search goes on. One with ETX
    in place but a wrong SUM is returned with ``valid=False`` (a board ignores it) and also
    only its STX is dropped. Splits anywhere are fine; at most 4 bytes are held.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[HostFrame]:
        buf = self._buf
        buf += data
        out: list[HostFrame] = []
        while True:
            start = buf.find(STX)
            if start < 0:
                buf.clear()
                break
            del buf[:start]
            if len(buf) > 3 and buf[3] != ETX:
                del buf[:1]
                continue
            if len(buf) < HOST_FRAME_LEN:
                break
            raw = bytes(buf[:HOST_FRAME_LEN])
            valid = _sum8(raw[:4]) == raw[4]
            del buf[: HOST_FRAME_LEN if valid else 1]
            out.append(HostFrame(raw[1] >> 4, raw[1] & 0x0F, raw[2], raw, valid))
        return out


class Exchange(NamedTuple):
    """One frame the boards received and what they sent back (None: no reply).

    ``at`` is time.monotonic() when the reply started going out, or when the frame was read if no
    reply was sent. A slow board's entry appears when its reply goes out.
    """

    at: float
    received: bytes
    reply: bytes | None


@dataclass
class _Compartment:
    door_open: bool = False
    item: bool = False
    jammed: bool = False
    unlocks: int = 0


@dataclass
class _Board:
    address: int
    lock_bit_open: bool
    item_bit_present: bool
    compartments: list[_Compartment]
    online: bool = True
    delay_s: float = 0.0

    def bits(self) -> tuple[int, int]:
        locks = items = 0
        for n in range(MAX_LOCKS):
            c = self.compartments[n] if n < len(self.compartments) else _Compartment()
            locks |= (c.door_open == self.lock_bit_open) << n
            items |= (c.item == self.item_bit_present) << n
        return locks, items


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class SimulatedLockBoards:
    """``boards`` CU16 boards (addresses 0..boards-1) on one bus, behind a pseudo-terminal.

    ``link`` makes `path` a symlink to the pty slave (like ``/dev/serial/by-id/...``).
    ``lock_bit_open`` / ``item_bit_present`` set each board's bit polarity (one value for all,
    or one per board). ``locks_per_board`` locks are wired; unlocking another does nothing and
    its bits read "closed, empty". ``silent_unlock`` makes unlock (0x31, 0x33) unanswered, as
    on some firmware; otherwise the board replies with its status after the lock moved.
    ``byte_delay_s`` sends replies one byte at a time with that gap (a slow UART).

    ``on_unlock(board, lock)`` is called on the serving thread after an unlock opened a closed
    door; it must not block (the boards stop answering while it runs): script a person with
    `after`, e.g. ``sim.after(0.5, lambda: sim.open_and(b, l, put=True))``. Controls may be
    called from any thread.
    """

    def __init__(
        self,
        boards: int = 1,
        *,
        link: str | os.PathLike[str] | None = None,
        lock_bit_open: bool | Sequence[bool] = True,
        item_bit_present: bool | Sequence[bool] = True,
        locks_per_board: int = MAX_LOCKS,
        silent_unlock: bool = False,
        byte_delay_s: float = 0.0,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        on_unlock: Callable[[int, int], None] | None = None,
    ) -> None:
        if not 1 <= boards <= MAX_BOARDS:
            raise SimulatorError(f"a bus holds 1-{MAX_BOARDS} boards, not {boards}")
        if not 1 <= locks_per_board <= MAX_LOCKS:
            raise SimulatorError(f"a board has 1-{MAX_LOCKS} locks, not {locks_per_board}")
        lock_pol = _per_board(lock_bit_open, boards, "lock_bit_open")
        item_pol = _per_board(item_bit_present, boards, "item_bit_present")
        self._boards = [
            _Board(b, lock_pol[b], item_pol[b], [_Compartment() for _ in range(locks_per_board)])
            for b in range(boards)
        ]
        self.on_unlock = on_unlock
        # One re-entrant lock for the board state, the fault settings and the history, with a
        # condition that is notified whenever any of them changes (see wait_until).
        self._state = threading.RLock()
        self._changed = threading.Condition(self._state)
        self._silent_unlock = silent_unlock
        self._corrupt = 0
        self._corrupt_index = 3
        self._wrong_address = 0
        self._noise = b""
        self._history: list[Exchange] = []
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._closed = False
        # Only the serving thread writes, so replies never interleave on the wire.
        self._port = DevicePort(
            "lock boards",
            link,
            log=log,
            write_timeout_s=write_timeout_s,
            byte_delay_s=byte_delay_s,
            listen=True,
        )
        self._serving = ServingThread(
            f"lockboards {self._port.device}",
            self._serve,
            log=log,
            wake=self._port.interrupt,
        )
        self._serving.start()
        log.info("%d simulated lock board(s) at %s", boards, self.path)

    # -- where the driver connects -------------------------------------------------------------

    @property
    def path(self) -> str:
        """What a driver opens: the symlink if one was asked for, else the pty slave."""
        return self._port.path

    @property
    def device(self) -> str:
        return self._port.device

    @property
    def boards(self) -> int:
        return len(self._boards)

    # -- a person at the locker ----------------------------------------------------------------

    def door_open(self, board: int, lock: int) -> bool:
        with self._state:
            return self._compartment(board, lock).door_open

    def item_present(self, board: int, lock: int) -> bool:
        with self._state:
            return self._compartment(board, lock).item

    def put_parcel(self, board: int, lock: int) -> None:
        """A parcel goes in through the open door; SimulatorError if the door is shut."""
        with self._changed:
            self._open_compartment(board, lock, "put a parcel in").item = True
            self._changed.notify_all()

    def take_parcel(self, board: int, lock: int) -> None:
        """The parcel comes out through the open door; SimulatorError if the door is shut."""
        with self._changed:
            self._open_compartment(board, lock, "take a parcel out").item = False
            self._changed.notify_all()

    def close_door(self, board: int, lock: int) -> None:
        """A person pushes the door shut and the lock latches (nothing if already shut)."""
        with self._changed:
            self._compartment(board, lock).door_open = False
            self._changed.notify_all()

    def open_and(
        self, board: int, lock: int, *, put: bool = False, take: bool = False, close: bool = True
    ) -> None:
        """A person swings the released door open, puts and/or takes a parcel, shuts it.

        All at once: no status can see half of it. SimulatorError if the door is locked.
        """
        with self._changed:
            c = self._open_compartment(board, lock, "open it")
            if take:
                c.item = False
            if put:
                c.item = True
            if close:
                c.door_open = False
            self._changed.notify_all()

    # -- faults ---------------------------------------------------------------------------------

    def jam(self, board: int, lock: int) -> None:
        """Unlock pulses on this lock do nothing (the board still receives and answers)."""
        self._set(board, lock, jammed=True)

    def unjam(self, board: int, lock: int) -> None:
        self._set(board, lock, jammed=False)

    def force_open(self, board: int, lock: int) -> None:
        """The door opens without an unlock (pried open, or a lock that failed)."""
        self._set(board, lock, door_open=True)

    def set_offline(self, board: int, offline: bool = True) -> None:
        """Take the board off the bus: it neither answers nor acts on frames."""
        with self._changed:
            self._board(board).online = not offline
            self._changed.notify_all()

    def slow(self, board: int, delay_s: float) -> None:
        """The board's replies go out ``delay_s`` after the request (0 for normal)."""
        if delay_s < 0:
            raise SimulatorError("delay_s must not be negative")
        with self._changed:
            self._board(board).delay_s = delay_s

    def corrupt_next(self, n: int = 1, *, index: int = 3) -> None:
        """The next ``n`` replies have byte ``index`` inverted (XOR 0xFF).

        The default index (L1-8) keeps STX, command and ETX in place, so the host sees a
        frame with a bad checksum; inverting any one byte always changes the sum.
        """
        if n < 0 or not 0 <= index < 9:
            raise SimulatorError("need n >= 0 and a byte index 0-8")
        with self._changed:
            self._corrupt, self._corrupt_index = n, index

    def reply_from_wrong_address(self, n: int = 1) -> None:
        """The next ``n`` replies carry the address of board (asked + 1) % 16, checksum valid."""
        if n < 0:
            raise SimulatorError("n must not be negative")
        with self._changed:
            self._wrong_address = n

    def noise_before_next(self, noise: bytes) -> None:
        """Send ``noise`` on the wire right before the next reply (a glitch, a collision)."""
        with self._changed:
            self._noise = bytes(noise)

    @property
    def silent_unlock(self) -> bool:
        return self._silent_unlock

    @silent_unlock.setter
    def silent_unlock(self, silent: bool) -> None:
        with self._changed:
            self._silent_unlock = silent

    # -- what happened --------------------------------------------------------------------------

    @property
    def history(self) -> list[Exchange]:
        """A copy of every frame received so far and the reply it got."""
        with self._state:
            return list(self._history)

    def unlock_count(self, board: int, lock: int) -> int:
        """Unlock pulses this lock's board received while online (jammed ones included)."""
        with self._state:
            return self._compartment(board, lock).unlocks

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every change; False on timeout.

        The predicate runs with the state lock held; it may call the controls above.
        """
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the serving thread ``delay_s`` from now (a scripted person)."""
        self._schedule(time.monotonic() + delay_s, action)

    # -- life -----------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving and remove the pty and the link; safe to call twice."""
        if self._closed:
            return
        if self._serving.is_current():
            raise SimulatorError("close() from the serving thread (on_unlock or after) would hang")
        self._closed = True
        # The port stays open if the thread does not stop: it may still be using the fds.
        self._serving.stop(timeout)
        self._port.close()
        log.info("simulated lock boards at %s closed", self._port.device)

    def __enter__(self) -> SimulatedLockBoards:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _board(self, board: int) -> _Board:
        if not 0 <= board < len(self._boards):
            raise SimulatorError(f"no board {board}; boards are 0-{len(self._boards) - 1}")
        return self._boards[board]

    def _compartment(self, board: int, lock: int) -> _Compartment:
        compartments = self._board(board).compartments
        if not 0 <= lock < len(compartments):
            raise SimulatorError(f"board {board} has locks 0-{len(compartments) - 1}, not {lock}")
        return compartments[lock]

    def _open_compartment(self, board: int, lock: int, doing: str) -> _Compartment:
        c = self._compartment(board, lock)
        if not c.door_open:
            raise SimulatorError(f"board {board} lock {lock} is shut: cannot {doing}")
        return c

    def _set(self, board: int, lock: int, **values: bool) -> None:
        with self._changed:
            c = self._compartment(board, lock)
            for name, value in values.items():
                setattr(c, name, value)
            self._changed.notify_all()

    def _schedule(self, due: float, action: Callable[[], None]) -> None:
        with self._state:
            heapq.heappush(self._timers, _Timer(due, next(self._seq), action))
        self._port.interrupt()  # the serving thread's wait may end sooner now

    def _serve(self) -> None:
        parser = HostFrameParser()
        stopping = self._serving.stopping
        while not stopping.is_set():
            with self._state:
                due = self._timers[0].due if self._timers else None
            # No timer: wait for the host, or for `after`/`close` to interrupt.
            wait = None if due is None else max(0.0, due - time.monotonic())
            for frame in parser.feed(self._port.read(wait)):
                self._handle(frame)
            self._run_due_timers()

    def _run_due_timers(self) -> None:
        while not self._serving.stopping.is_set():
            with self._state:
                if not self._timers or self._timers[0].due > time.monotonic():
                    return
                timer = heapq.heappop(self._timers)
            try:
                timer.action()
            except Exception:
                log.exception("scheduled lock-board action failed")

    def _handle(self, frame: HostFrame) -> None:
        now = time.monotonic()
        opened: list[tuple[int, int]] = []
        replies: list[tuple[_Board, bytes]] = []
        with self._changed:
            if not frame.valid:
                log.info("ignoring host frame with bad checksum: %s", frame.raw.hex(" "))
            elif frame.cmd == STATUS_ALL:
                replies = [(b, self._reply(b)) for b in self._boards if b.online]
            elif frame.board < len(self._boards) and self._boards[frame.board].online:
                board = self._boards[frame.board]
                if frame.cmd == STATUS_ONE:
                    replies = [(board, self._reply(board))]
                elif frame.cmd in (UNLOCK, UNLOCK_ALL):
                    locks = [frame.lock] if frame.cmd == UNLOCK else range(MAX_LOCKS)
                    opened = [(board.address, n) for n in locks if self._pulse(board, n)]
                    if not self._silent_unlock:
                        replies = [(board, self._reply(board))]
                elif frame.cmd != SET_PULSE:
                    log.info("board %d ignores command 0x%02x", board.address, frame.cmd)
            if not replies:
                self._history.append(Exchange(now, frame.raw, None))
            self._changed.notify_all()
        for board, reply in replies:
            if board.delay_s > 0:
                self._schedule(now + board.delay_s, self._sender(frame.raw, reply))
            else:
                self._send(frame.raw, reply)
        hook = self.on_unlock
        for board_address, lock in opened:
            if hook is not None:
                try:
                    hook(board_address, lock)
                except Exception:
                    log.exception("on_unlock hook failed for board %d lock %d", board_address, lock)

    def _pulse(self, board: _Board, lock: int) -> bool:
        """Fire one lock; True when it opened a closed door."""
        if lock >= len(board.compartments):
            return False  # no lock wired to this output
        c = board.compartments[lock]
        c.unlocks += 1
        if c.jammed or c.door_open:
            return False
        c.door_open = True
        log.info("board %d lock %d: door sprang open", board.address, lock)
        return True

    def _reply(self, board: _Board) -> bytes:
        """The board's status reply as it goes out, with any injected fault applied."""
        locks, items = board.bits()
        address = board.address
        if self._wrong_address > 0:
            self._wrong_address -= 1
            address = (address + 1) % MAX_BOARDS
        reply = bytearray(encode_status_reply(address, locks, items))
        if self._corrupt > 0:
            self._corrupt -= 1
            reply[self._corrupt_index] ^= 0xFF
        noise, self._noise = self._noise, b""
        return noise + bytes(reply)

    def _sender(self, received: bytes, reply: bytes) -> Callable[[], None]:
        return lambda: self._send(received, reply)

    def _send(self, received: bytes, reply: bytes) -> None:
        # The exchange is recorded before the first byte goes out: the host may have read the
        # reply and asked about it before this thread runs again. A short write corrects it.
        with self._changed:
            index = len(self._history)
            self._history.append(Exchange(time.monotonic(), received, bytes(reply)))
            self._changed.notify_all()
        sent = self._port.write(reply, cancel=self._serving.stopping)
        if sent != reply:
            with self._changed:
                at = self._history[index].at
                self._history[index] = Exchange(at, received, bytes(sent))
                self._changed.notify_all()


def _per_board(value: bool | Sequence[bool], boards: int, name: str) -> list[bool]:
    if isinstance(value, bool):
        return [value] * boards
    values = [bool(v) for v in value]
    if len(values) != boards:
        raise SimulatorError(f"{name}: {len(values)} values for {boards} boards")
    return values


# -- command line: `lastmile sim lockboard` ---------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "Prints the pty's path, then takes commands on stdin:\n" + LOCKBOARD_COMMANDS
    p.add_argument("--boards", type=int, default=1, help="boards on the bus, 1-16 (default 1)")
    p.add_argument("--link", type=Path, help="make this path a symlink to the pty")
    p.add_argument(
        "--locks", type=int, default=MAX_LOCKS, help="locks wired per board (default 16)"
    )
    p.add_argument(
        "--silent-unlock", action="store_true", help="firmware that does not answer an unlock"
    )
    p.add_argument(
        "--lock-bit-closed", action="store_true", help="lock bitmap 1 means closed (default open)"
    )
    p.add_argument(
        "--item-bit-absent", action="store_true", help="sensor bitmap 1 means empty (default item)"
    )
    p.add_argument(
        "--close-after",
        type=float,
        metavar="S",
        help="a person pushes each unlocked door shut S seconds after it opened (default never)",
    )


#: What `lastmile sim lockboard` takes on stdin, one command a line (board and lock from 0).
LOCKBOARD_COMMANDS = """\
put B L     a person puts a parcel in through the open door
take B L    a person takes the parcel out through the open door
close B L   a person pushes the door shut
open B L    the door opens without an unlock (pried open, a failed lock)
jam B L     unlock pulses on this lock do nothing; unjam B L undoes it
offline B   the board leaves the bus; online B brings it back
status B L  say what the compartment is like"""


def _console(sim: SimulatedLockBoards) -> Callable[[str], str | None]:
    """The stdin commands (LOCKBOARD_COMMANDS); each is answered with the compartment's state."""
    from simulators.console import numbers

    def state(board: int, lock: int) -> str:
        with sim._state:
            c = sim._compartment(board, lock)
            door, item, jammed = c.door_open, c.item, c.jammed
        return (
            f"board {board} lock {lock}: door {'open' if door else 'shut'}, "
            f"{'parcel' if item else 'empty'}" + (", jammed" if jammed else "")
        )

    actions: dict[str, Callable[[int, int], None]] = {
        "put": sim.put_parcel,
        "take": sim.take_parcel,
        "close": sim.close_door,
        "open": sim.force_open,
        "jam": sim.jam,
        "unjam": sim.unjam,
        "status": lambda board, lock: None,
    }

    def command(line: str) -> str | None:
        word = line.split()[0].lower()
        if word in ("offline", "online"):
            (board,) = numbers(line, 1, f"{word} BOARD")
            sim.set_offline(board, word == "offline")
            return f"board {board}: {word}"
        action = actions.get(word)
        if action is None:
            known = ", ".join([*actions, "offline", "online"])
            raise SimulatorError(f"unknown command {word!r}: {known} (see --help)")
        board, lock = numbers(line, 2, f"{word} BOARD LOCK")
        action(board, lock)
        return state(board, lock)

    return command


def run_from_args(args: argparse.Namespace) -> int:
    from simulators.console import serve

    try:
        sim = SimulatedLockBoards(
            args.boards,
            link=args.link,
            lock_bit_open=not args.lock_bit_closed,
            item_bit_present=not args.item_bit_absent,
            locks_per_board=args.locks,
            silent_unlock=args.silent_unlock,
        )
    except (SimulatorError, OSError) as e:
        print(f"lastmile sim lockboard: {e}", file=sys.stderr)
        return 2
    with sim:
        if args.close_after is not None:
            delay = float(args.close_after)

            def person(board: int, lock: int) -> None:
                sim.after(delay, lambda: sim.close_door(board, lock))

            sim.on_unlock = person
        return serve("lockboard", sim.path, _console(sim))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lastmile sim lockboard", description="Serve simulated Kerong CU16 lock boards."
    )
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
