"""Kerong CU16 lock-control boards on an RS-485 bus: frames out, door and item facts in.

This module owns the lock-board wire (PROTOCOLS.md section 3). `encode_command` and
`ReplyParser` are pure (bytes in, frames out, no I/O), so the framing is tested byte by byte
without a port. `LockBus` is the I/O: one serial port (a device path or a pyserial URL) shared
by up to 16 boards, asked one question at a time.

Numbering: boards 0-15 and locks 0-15, as they go on the wire in ``ADDR = board << 4 | lock``.
Lock ``n`` here is the manual's "lock n+1": bit ``n`` of the 16-bit bitmaps
(``L1-8`` holds locks 0-7, ``L9-16`` locks 8-15), and index ``n`` of `BoardStatus.door_open`.

Checksums: every frame ends in ``SUM = (sum of every byte before it) & 0xFF``, STX and ETX
included. The manual spells this out for the 5-byte host frame; for the 9-byte status reply it
names the byte only, and we apply the same rule (sum of the 8 preceding bytes), as the public
CU16 implementations we know of do. Both reference frames (``02 00 31 03 36``,
``02 00 30 03 35``) follow it.

What it must never do:

- report a door closed or a parcel present that the board did not say: a timeout, a damaged
  frame or a reply from another board is an exception, never a default status.
- take a reply from one board as another board's status.
- block without a timeout: every read has a deadline, and writes have a write timeout.
- know about parcels, compartments or pickups: that belongs to ``edge``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar

import serial

from drivers.errors import DriverError
from parcel.runlog import Trouble

__all__ = [
    "BadChecksum",
    "BoardConfig",
    "BoardOffline",
    "BoardStatus",
    "BusError",
    "FrameError",
    "GarbledReply",
    "LockBoardError",
    "LockBus",
    "ReplyParser",
    "StatusReply",
    "WrongAddress",
    "encode_command",
]

log = logging.getLogger("drivers.lockboard")

# Frame bytes and commands, named as in the Kerong CU16 manual (PROTOCOLS.md section 3).
STX = 0x02  # Start of text: first byte of every frame, both directions.
ETX = 0x03  # End of text: the byte before the checksum.
CMD_STATUS_ONE = 0x30  # Host asks one board (lock nibble 0) for its status; it replies 0x35.
CMD_UNLOCK = 0x31  # Host pulses one lock; some firmware replies with a status, some stays silent.
CMD_STATUS_ALL = 0x32  # Host asks every board for its status (not used: replies would collide).
CMD_UNLOCK_ALL = 0x33  # Host pulses every lock of a board (not used: a locker opens one door).
REPLY_STATUS = 0x35  # Board's status reply: lock/door bitmaps then item-sensor bitmaps.
CMD_SET_PULSE = 0x37  # Host sets the unlock pulse time (500 ms magnet, 1000 ms motor locks).

COMMAND_LEN = 5  # 02 ADDR CMD 03 SUM
REPLY_LEN = 9  # 02 ADDR 35 L1-8 L9-16 S1-8 S9-16 03 SUM
BOARDS_PER_BUS = 16  # The board id is the high nibble of ADDR.
LOCKS_PER_BOARD = 16  # The lock number is the low nibble of ADDR; bitmaps are 16 bits.

# Bus timing. Module constants so tests and configuration can shrink them; LockBus takes each
# as a keyword argument whose default is the value here.
DEFAULT_BAUDRATE = 19200  # Factory setting of the CU16: 19200 8N1, no flow control.
REPLY_TIMEOUT_S = 0.2  # A status reply is 9 bytes (~5 ms at 19200); a board answers in ms.
RETRIES = 2  # Further attempts after the first before a board counts as offline.
UNLOCK_REPLY_WINDOW_S = 0.2  # How long to drain a possible reply to an unlock (see unlock()).
# Quiet time on the bus between a board's last byte and our next frame, so that a board's
# RS-485 transceiver has released the line (half duplex). Our choice, ~20 character times;
# the manual gives no number.
INTER_FRAME_GAP_S = 0.01
WRITE_TIMEOUT_S = 0.5  # A 5-byte frame leaves in ~3 ms; a write stuck longer is a dead port.

# What a failing port raises: SerialException (and its write timeout) is an OSError, but
# pyserial lets termios.error (not an OSError) out of reset_input_buffer on a vanished tty.
_PORT_ERRORS: tuple[type[Exception], ...] = (OSError,)
try:
    import termios

    _PORT_ERRORS = (OSError, termios.error)
except ImportError:  # not posix
    pass


class LockBoardError(DriverError):
    """What a lock board or its bus did that could not be turned into a status.

    ``board`` and ``lock`` say where, when known. ``retryable`` says whether asking again
    later may help (True) or a person has to look at the wiring or configuration (False).
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, board: int | None = None, lock: int | None = None) -> None:
        super().__init__(message)
        self.board = board
        self.lock = lock


class BusError(LockBoardError):
    """The serial port itself failed (cannot open, read or write).

    Retryable: the bus closes the port and reopens it on the next request, so an RS-485
    adapter that was unplugged and plugged back in recovers without a restart.
    """


class BoardOffline(LockBoardError):
    """A board gave no answer at all to ``attempts`` requests.

    Retryable: the board may be rebooting, unpowered or disconnected; ask again later, and
    call a person if it stays offline.
    """

    def __init__(self, board: int, attempts: int) -> None:
        super().__init__(
            f"lock board {board} did not answer {attempts} request(s); retryable: "
            "it may be rebooting, unpowered or off the bus",
            board=board,
        )
        self.attempts = attempts


class FrameError(LockBoardError):
    """Bytes on the bus that are not a valid status reply; ``raw`` holds them.

    Retryable: line noise and collisions pass. Produced by `ReplyParser` with ``board``
    unknown (None); `LockBus` raises it with the board it was asking.
    """

    def __init__(self, message: str, raw: bytes, *, board: int | None = None) -> None:
        super().__init__(message, board=board)
        self.raw = raw

    def for_board(self, board: int) -> FrameError:
        """The same error, as seen while talking to ``board``."""
        return type(self)(str(self), self.raw, board=board)


class BadChecksum(FrameError):
    """A frame-shaped reply (STX, 0x35, ETX in place) whose checksum byte does not match."""


class GarbledReply(FrameError):
    """Bytes outside any frame, a frame with the wrong command or ETX, or a reply cut off."""


class WrongAddress(LockBoardError):
    """A valid reply came from another board than the one asked.

    Never taken as the asked board's status. One such reply (a late answer from a board asked
    earlier) is survived by retrying; when every attempt gets one, two boards may share an
    address or a board is miswired, which needs a person: not retryable.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, board: int, replied_board: int, raw: bytes) -> None:
        super().__init__(
            f"asked lock board {board}, got a reply from board {replied_board}: "
            "check the board addresses on this bus",
            board=board,
        )
        self.replied_board = replied_board
        self.raw = raw


def _checksum(data: bytes | bytearray) -> int:
    return sum(data) & 0xFF


def encode_command(board: int, lock: int, cmd: int) -> bytes:
    """The host frame ``02 ADDR CMD 03 SUM`` for ``cmd`` to ``board`` (and ``lock``).

    >>> encode_command(0, 0, CMD_UNLOCK).hex(" ")
    '02 00 31 03 36'
    """
    if not 0 <= board < BOARDS_PER_BUS:
        raise ValueError(f"board must be 0-{BOARDS_PER_BUS - 1}, not {board}")
    if not 0 <= lock < LOCKS_PER_BOARD:
        raise ValueError(f"lock must be 0-{LOCKS_PER_BOARD - 1}, not {lock}")
    if not 0 <= cmd <= 0xFF:
        raise ValueError(f"cmd must be one byte, not {cmd}")
    head = bytes((STX, board << 4 | lock, cmd, ETX))
    return head + bytes((_checksum(head),))


@dataclass(frozen=True)
class BoardConfig:
    """How to read one board. Sources disagree on bit polarity, so it is set per board.

    ``lock_bit_open``: True when a 1 in the lock bitmap means the lock/door is open.
    ``item_bit_present``: True when a 1 in the sensor bitmap means an item is present.
    """

    board: int
    lock_bit_open: bool = True
    item_bit_present: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.board < BOARDS_PER_BUS:
            raise ValueError(f"board must be 0-{BOARDS_PER_BUS - 1}, not {self.board}")


@dataclass(frozen=True)
class BoardStatus:
    """What one board said, through its configured polarity; index n is lock n (manual n+1)."""

    board: int
    door_open: tuple[bool, ...]  # 16 entries
    item_present: tuple[bool, ...]  # 16 entries


@dataclass(frozen=True)
class StatusReply:
    """A checked 0x35 status frame, bits as sent (bit n = lock n), before any polarity."""

    board: int  # high nibble of ADDR
    lock: int  # low nibble of ADDR (0 in replies to 0x30; some firmware echoes the lock)
    lock_bits: int  # L1-8 | L9-16 << 8
    item_bits: int  # S1-8 | S9-16 << 8
    raw: bytes

    def to_status(self, config: BoardConfig) -> BoardStatus:
        """The door/item facts under ``config``'s polarity."""
        if config.board != self.board:
            raise ValueError(f"board {self.board}'s reply read with board {config.board}'s config")
        bits = range(LOCKS_PER_BOARD)
        return BoardStatus(
            board=self.board,
            door_open=tuple(bool(self.lock_bits >> i & 1) == config.lock_bit_open for i in bits),
            item_present=tuple(
                bool(self.item_bits >> i & 1) == config.item_bit_present for i in bits
            ),
        )


class ReplyParser:
    """Cuts the board-to-host byte stream into `StatusReply` frames and `FrameError` items.

    Pure and incremental: frames may be split anywhere between calls. Bytes before an STX are
    reported as one `GarbledReply` per call. A candidate frame that fails (wrong command byte,
    no ETX, bad checksum) is reported and only its STX is dropped, so a real frame hiding
    behind a stray STX is still found. At most ``REPLY_LEN - 1`` bytes are held between calls.
    Not thread-safe; one reader owns it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes held as the start of a frame that has not ended yet."""
        return bytes(self._buf)

    def reset(self) -> None:
        """Forget a partial frame (the bus was flushed under it)."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[StatusReply | FrameError]:
        buf = self._buf
        buf += data
        out: list[StatusReply | FrameError] = []
        while buf:
            start = buf.find(STX)
            if start != 0:
                junk = bytes(buf) if start < 0 else bytes(buf[:start])
                out.append(GarbledReply(f"{len(junk)} byte(s) outside a frame", junk))
                del buf[: len(junk)]
                continue
            problem = self._check(buf)
            if problem is not None:
                out.append(problem)
                del buf[:1]  # resynchronise on the next STX, which may be inside
                continue
            if len(buf) < REPLY_LEN:
                break  # a good start; wait for the rest
            raw = bytes(buf[:REPLY_LEN])
            del buf[:REPLY_LEN]
            out.append(
                StatusReply(
                    board=raw[1] >> 4,
                    lock=raw[1] & 0x0F,
                    lock_bits=raw[3] | raw[4] << 8,
                    item_bits=raw[5] | raw[6] << 8,
                    raw=raw,
                )
            )
        return out

    @staticmethod
    def _check(buf: bytearray) -> FrameError | None:
        """Why the frame starting at buf[0] cannot be a reply, as far as its bytes go."""
        have = len(buf)
        if have > 2 and buf[2] != REPLY_STATUS:
            return GarbledReply(f"command byte 0x{buf[2]:02x}, not 0x35", bytes(buf[:3]))
        if have > 7 and buf[7] != ETX:
            return GarbledReply(f"byte 0x{buf[7]:02x} where ETX belongs", bytes(buf[:8]))
        if have >= REPLY_LEN and _checksum(buf[:8]) != buf[8]:
            raw = bytes(buf[:REPLY_LEN])
            return BadChecksum(f"checksum 0x{raw[8]:02x}, expected 0x{_checksum(raw[:8]):02x}", raw)
        return None


class LockBus:
    """One RS-485 bus of CU16 boards behind one serial port, asked one request at a time.

    ``port`` is a device path (``/dev/serial/by-id/...``) or a pyserial URL
    (``spy:///dev/ttyUSB0?file=trace.txt`` hex-dumps the bus). ``boards`` lists the boards on
    this bus with their polarity; asking about any other board is a ValueError.

    Every method may be called from any thread: one lock covers each request and its reply,
    and each starts by flushing stale input. Nothing blocks without a timeout.

    `status` retries: each attempt waits ``reply_timeout_s``; after ``retries`` further
    attempts it raises `BoardOffline` if nothing came back, else the last `FrameError` or
    `WrongAddress` it saw. A late reply of the same board to an earlier attempt is taken
    (it answers the same question). When the port fails, `BusError` is raised, the port is
    closed, and the next request reopens it.
    """

    def __init__(
        self,
        port: str,
        boards: Sequence[BoardConfig],
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        retries: int = RETRIES,
        unlock_window_s: float = UNLOCK_REPLY_WINDOW_S,
        inter_frame_gap_s: float = INTER_FRAME_GAP_S,
    ) -> None:
        configs: dict[int, BoardConfig] = {}
        for config in boards:
            if config.board in configs:
                raise ValueError(f"board {config.board} is configured twice")
            configs[config.board] = config
        if reply_timeout_s <= 0 or unlock_window_s < 0 or inter_frame_gap_s < 0:
            raise ValueError("reply_timeout_s must be positive, the other times not negative")
        if retries < 0:
            raise ValueError("retries must not be negative")
        try:
            # A bad URL scheme or baud rate is a configuration error, not a bus failure.
            serial.serial_for_url(port, baudrate=baudrate, do_not_open=True)
        except ValueError as e:
            raise ValueError(f"cannot use lock-board port {port!r}: {e}") from e
        self._port = port
        self._configs = configs
        self._baudrate = baudrate
        self._reply_timeout_s = reply_timeout_s
        self._retries = retries
        self._unlock_window_s = unlock_window_s
        self._gap_s = inter_frame_gap_s
        self._lock = threading.Lock()
        self._serial: serial.Serial | None = None
        self._wanted_open = False
        self._quiet_until = 0.0  # time.monotonic() before which we must not send
        # Garbled replies from one board (noise on the RS-485 pair, a second master, a board
        # at the wrong baud rate) last while the cause lasts, at several polls a second: one
        # warning per board, a reminder every few minutes, one line when it answers cleanly.
        self._garbled = {board: Trouble(log) for board in configs}

    @property
    def boards(self) -> tuple[BoardConfig, ...]:
        return tuple(self._configs.values())

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port; raises `BusError` if it cannot be opened. Opening twice is harmless."""
        with self._lock:
            self._wanted_open = True
            self._port_or_open()

    def close(self) -> None:
        """Close the port; waits for a request in progress. Closing twice is harmless."""
        with self._lock:
            self._wanted_open = False
            self._drop_port()

    def __enter__(self) -> LockBus:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def status(self, board: int) -> BoardStatus:
        """Ask ``board`` for its doors and item sensors (command 0x30).

        Raises `BoardOffline`, `FrameError`, `WrongAddress` or `BusError`; never guesses.
        """
        config = self._config(board)
        frame = encode_command(board, 0, CMD_STATUS_ONE)
        attempts = self._retries + 1
        with self._lock:
            last_error: LockBoardError | None = None
            for attempt in range(1, attempts + 1):
                reply, errors = self._exchange(frame, board, self._reply_timeout_s)
                if reply is not None:
                    if attempt > 1:
                        log.debug("lock board %d answered on attempt %d", board, attempt)
                    self._garbled[board].over("lock board %d answers cleanly again", board)
                    return reply.to_status(config)
                if errors:
                    last_error = errors[-1]
                    self._garbled[board].failing(
                        "lock board %d: %s (attempt %d/%d)", board, last_error, attempt, attempts
                    )
                else:
                    log.debug("lock board %d attempt %d/%d: no answer", board, attempt, attempts)
        if last_error is not None:
            raise last_error
        raise BoardOffline(board, attempts)

    def unlock(self, board: int, lock: int) -> None:
        """Pulse ``lock`` on ``board`` (command 0x31). Confirm by polling `status`.

        Sent once, never retried: without a reply there is no telling whether the board acted,
        and the caller's status poll is the confirmation either way. Some firmware answers with
        a status and some stays silent; a reply is drained for up to ``unlock_window_s`` (less
        when this board's reply arrives) so that it cannot be mistaken for the answer to the
        next request. Its content is not used: it may predate the lock's movement.
        """
        self._config(board)
        frame = encode_command(board, lock, CMD_UNLOCK)
        with self._lock:
            reply, errors = self._exchange(frame, board, self._unlock_window_s)
        for error in errors:
            log.debug("lock board %d unlock %d: ignored %s", board, lock, error)
        log.info(
            "lock board %d lock %d unlocked (%s)",
            board,
            lock,
            "board replied" if reply is not None else "no reply",
        )

    def poll_all(self) -> dict[int, BoardStatus | LockBoardError]:
        """`status` of every configured board, in configuration order; errors as values."""
        results: dict[int, BoardStatus | LockBoardError] = {}
        for board in self._configs:
            try:
                results[board] = self.status(board)
            except LockBoardError as e:
                results[board] = e
        return results

    # -- one exchange on the wire; called with self._lock held --------------------------------

    def _config(self, board: int) -> BoardConfig:
        config = self._configs.get(board)
        if config is None:
            raise ValueError(f"lock board {board} is not configured on {self._port}")
        return config

    def _exchange(
        self, frame: bytes, board: int, window_s: float
    ) -> tuple[StatusReply | None, list[LockBoardError]]:
        """Send ``frame``; return the first valid reply of ``board`` within ``window_s``.

        Also returns what went wrong meanwhile. Listening stops early at that reply, or at a
        frame-shaped reply with a bad checksum (the board has spoken; asking again is faster
        than waiting). Junk and other boards' replies are recorded and listening goes on.
        """
        port = self._port_or_open()
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # bus turnaround: the line must be quiet before we drive it
        parser = ReplyParser()
        errors: list[LockBoardError] = []
        try:
            port.reset_input_buffer()  # whatever is there answers an earlier question
            # No flush(): tcdrain has no timeout, and the reply window covers the ~3 ms
            # the frame takes to leave.
            port.write(frame)
            deadline = time.monotonic() + window_s
            while (left := deadline - time.monotonic()) > 0:
                if port.timeout != left:
                    port.timeout = left
                chunk = port.read(1)
                if not chunk:
                    break
                waiting = port.in_waiting
                if waiting:
                    chunk += port.read(waiting)
                self._quiet_until = time.monotonic() + self._gap_s
                for item in parser.feed(chunk):
                    if isinstance(item, FrameError):
                        errors.append(item.for_board(board))
                        if isinstance(item, BadChecksum):
                            return None, errors
                    elif item.board != board:
                        errors.append(WrongAddress(board, item.board, item.raw))
                    else:
                        return item, errors
        except _PORT_ERRORS as e:
            self._drop_port()
            raise BusError(f"lock-board bus {self._port} failed: {e}", board=board) from e
        finally:
            self._quiet_until = max(self._quiet_until, time.monotonic() + self._gap_s)
        if parser.pending:
            errors.append(GarbledReply("reply cut off", parser.pending, board=board))
        return None, errors

    def _port_or_open(self) -> serial.Serial:
        if self._serial is not None:
            return self._serial
        if not self._wanted_open:
            raise BusError(f"lock-board bus {self._port} is not open")
        try:
            port = serial.serial_for_url(
                self._port,
                baudrate=self._baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self._reply_timeout_s,
                write_timeout=WRITE_TIMEOUT_S,
                # Two masters on one RS-485 bus would talk over each other.
                exclusive=True,
            )
        except (OSError, ValueError) as e:  # SerialException is an OSError
            raise BusError(f"cannot open lock-board bus {self._port}: {e}") from e
        log.info("lock-board bus open on %s", self._port)
        self._serial = port
        return port

    def _drop_port(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except OSError as e:
                log.debug("closing lock-board bus %s: %s", self._port, e)
