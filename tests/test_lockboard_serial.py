"""LockBus against SimulatedLockBoards over real pseudo-terminals; nothing is mocked.

LockBus calls are synchronous, and the boards handle frames in the order they arrive, so a
status request is itself the barrier after an unlock: its reply reflects every frame before
it. Where a test waits for the simulated person, it waits on `wait_until`, never a sleep.
Timeouts are shrunk so that a board that never answers costs 3 x 50 ms.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from drivers.lockboard import (
    BadChecksum,
    BoardConfig,
    BoardOffline,
    BoardStatus,
    BusError,
    LockBoardError,
    LockBus,
    WrongAddress,
    encode_command,
)
from simulators.errors import SimulatorError
from simulators.lockboard import SimulatedLockBoards

WAIT_S = 3.0  # upper bound for anything awaited; a passing run takes milliseconds
TIMEOUT_S = 0.05
RETRIES = 2
STATUS_0 = encode_command(0, 0, 0x30)


def make_bus(path: str, boards: list[BoardConfig] | int = 1, **kwargs: float) -> LockBus:
    configs = [BoardConfig(b) for b in range(boards)] if isinstance(boards, int) else boards
    return LockBus(
        path,
        configs,
        reply_timeout_s=kwargs.pop("reply_timeout_s", TIMEOUT_S),
        retries=int(kwargs.pop("retries", RETRIES)),
        unlock_window_s=kwargs.pop("unlock_window_s", TIMEOUT_S),
        inter_frame_gap_s=kwargs.pop("inter_frame_gap_s", 0.001),
    )


def opened(status: BoardStatus) -> list[int]:
    return [n for n, is_open in enumerate(status.door_open) if is_open]


def filled(status: BoardStatus) -> list[int]:
    return [n for n, present in enumerate(status.item_present) if present]


def requests_to(sim: SimulatedLockBoards, frame: bytes) -> int:
    return sum(1 for e in sim.history if e.received == frame)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatedLockBoards]:
    with SimulatedLockBoards(3, link=tmp_path / "usb-FTDI_RS485-if00-port0") as boards:
        yield boards


@pytest.fixture
def bus(sim: SimulatedLockBoards) -> Iterator[LockBus]:
    with make_bus(sim.path, 3) as running:
        yield running


def test_status_of_several_boards_on_one_bus(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.force_open(1, 2)
    sim.put_parcel(1, 2)
    sim.force_open(2, 15)
    sim.close_door(1, 2)
    results = bus.poll_all()
    assert list(results) == [0, 1, 2]
    statuses = [results[b] for b in range(3)]
    assert all(isinstance(s, BoardStatus) for s in statuses)
    s0, s1, s2 = (s for s in statuses if isinstance(s, BoardStatus))
    assert [s.board for s in (s0, s1, s2)] == [0, 1, 2]
    assert (opened(s0), filled(s0)) == ([], [])
    assert (opened(s1), filled(s1)) == ([], [2])
    assert (opened(s2), filled(s2)) == ([15], [])


def test_unlock_shows_the_door_open_on_the_next_poll(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    assert opened(bus.status(1)) == []
    bus.unlock(1, 4)
    assert opened(bus.status(1)) == [4]
    assert opened(bus.status(0)) == []  # the same lock number on another board is untouched
    assert sim.unlock_count(1, 4) == 1
    assert sim.door_open(1, 4)


def test_parcel_in_and_door_shut_reads_item_present_and_door_closed(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    bus.unlock(0, 9)
    assert opened(bus.status(0)) == [9]
    sim.put_parcel(0, 9)
    sim.close_door(0, 9)
    status = bus.status(0)
    assert (opened(status), filled(status)) == ([], [9])
    bus.unlock(0, 9)
    sim.open_and(0, 9, take=True)
    status = bus.status(0)
    assert (opened(status), filled(status)) == ([], [])


def test_a_person_cannot_reach_through_a_locked_door(sim: SimulatedLockBoards) -> None:
    with pytest.raises(SimulatorError):
        sim.put_parcel(0, 1)
    with pytest.raises(SimulatorError):
        sim.open_and(0, 1, put=True)


def test_jammed_lock_stays_closed_after_unlock(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.jam(2, 0)
    bus.unlock(2, 0)
    assert opened(bus.status(2)) == []
    assert sim.unlock_count(2, 0) == 1  # the board got the pulse; the lock did not move
    sim.unjam(2, 0)
    bus.unlock(2, 0)
    assert opened(bus.status(2)) == [0]


def test_forced_door_reads_open_without_an_unlock(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.force_open(0, 3)
    assert opened(bus.status(0)) == [3]
    assert sim.unlock_count(0, 3) == 0


def test_board_off_the_bus_is_offline_after_retries_while_others_answer(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.set_offline(1)
    with pytest.raises(BoardOffline) as caught:
        bus.status(1)
    error = caught.value
    assert (error.board, error.attempts, error.retryable) == (1, RETRIES + 1, True)
    assert "retryable" in str(error)
    assert requests_to(sim, encode_command(1, 0, 0x30)) == RETRIES + 1
    results = bus.poll_all()
    assert isinstance(results[0], BoardStatus) and isinstance(results[2], BoardStatus)
    assert isinstance(results[1], BoardOffline)
    sim.set_offline(1, False)
    assert bus.status(1).board == 1


def test_an_offline_board_does_not_act_on_an_unlock(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.set_offline(0)
    bus.unlock(0, 5)  # no reply either way: unlock is confirmed by polling
    sim.set_offline(0, False)
    assert opened(bus.status(0)) == []
    assert sim.unlock_count(0, 5) == 0


def test_one_corrupted_reply_is_retried_and_then_correct(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.force_open(0, 6)
    sim.corrupt_next(1)
    assert opened(bus.status(0)) == [6]
    assert requests_to(sim, STATUS_0) == 2


def test_every_reply_corrupted_is_a_bad_checksum_never_a_status(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.corrupt_next(RETRIES + 1)
    with pytest.raises(BadChecksum) as caught:
        bus.status(0)
    assert caught.value.board == 0
    assert requests_to(sim, STATUS_0) == RETRIES + 1
    assert bus.status(0).board == 0  # the fault passed; the bus is fine


def test_garbled_replies_that_last_are_one_warning_and_one_line_when_they_stop(
    sim: SimulatedLockBoards, bus: LockBus, caplog: pytest.LogCaptureFixture
) -> None:
    """Noise on the pair at every poll must not write a warning per attempt (several a
    second): one when it starts, one line when the board answers cleanly again."""
    caplog.set_level("DEBUG", logger="drivers.lockboard")
    sim.corrupt_next(3 * (RETRIES + 1))
    for _ in range(3):
        with pytest.raises(BadChecksum):
            bus.status(0)
    bus.status(0)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 20]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert "lock board 0" in said[0][1] and "answers cleanly again" in said[1][1]


def test_a_reply_from_the_wrong_address_is_never_taken_as_this_boards_status(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.force_open(1, 0)  # what board 1 says, in board 0's answer slot
    sim.reply_from_wrong_address(RETRIES + 1)
    with pytest.raises(WrongAddress) as caught:
        bus.status(0)
    assert (caught.value.board, caught.value.replied_board) == (0, 1)
    assert caught.value.retryable is False
    assert opened(bus.status(0)) == []


def test_one_wrong_address_reply_is_survived_by_retrying(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.reply_from_wrong_address(1)
    assert bus.status(0).board == 0
    assert requests_to(sim, STATUS_0) == 2


def test_a_reply_slower_than_the_timeout_is_offline(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.slow(0, 1.0)
    started = time.monotonic()
    with pytest.raises(BoardOffline):
        bus.status(0)
    assert time.monotonic() - started < 0.5  # three bounded waits, not the board's delay
    assert bus.status(1).board == 1


def test_a_slow_reply_within_the_timeout_is_fine(sim: SimulatedLockBoards) -> None:
    sim.slow(2, 0.02)
    with make_bus(sim.path, 3, reply_timeout_s=0.2) as bus:
        assert bus.status(2).board == 2
    assert requests_to(sim, encode_command(2, 0, 0x30)) == 1


def test_noise_before_a_reply_is_skipped(sim: SimulatedLockBoards, bus: LockBus) -> None:
    sim.force_open(0, 1)
    sim.noise_before_next(b"\xff\x02\x00\x35\x02")  # stray STXs, one with a plausible start
    assert opened(bus.status(0)) == [1]
    assert requests_to(sim, STATUS_0) == 1


def test_replies_arriving_byte_by_byte(tmp_path: Path) -> None:
    with (
        SimulatedLockBoards(1, byte_delay_s=0.002) as sim,
        make_bus(sim.path, 1, reply_timeout_s=0.2) as bus,
    ):
        sim.force_open(0, 12)
        assert opened(bus.status(0)) == [12]


def test_inverted_polarity_board_reads_correctly(tmp_path: Path) -> None:
    configs = [BoardConfig(0), BoardConfig(1, lock_bit_open=False, item_bit_present=False)]
    with (
        SimulatedLockBoards(2, lock_bit_open=[True, False], item_bit_present=[True, False]) as sim,
        make_bus(sim.path, configs) as bus,
    ):
        for board in (0, 1):
            sim.force_open(board, 7)
            sim.put_parcel(board, 7)
            sim.force_open(board, 8)
        for board in (0, 1):
            status = bus.status(board)
            assert (opened(status), filled(status)) == ([7, 8], [7])
        # The wire bits of the two boards are opposite; only the configuration reconciles them.
        replies = [e.reply for e in sim.history if e.reply]
        assert replies[-2] is not None and replies[-1] is not None
        assert replies[-2][3:7] == bytes(b ^ 0xFF for b in replies[-1][3:7])


@pytest.mark.parametrize("silent", [True, False], ids=["silent-firmware", "replying-firmware"])
def test_unlock_works_with_silent_and_replying_firmware(tmp_path: Path, silent: bool) -> None:
    with (
        SimulatedLockBoards(2, silent_unlock=silent) as sim,
        # A long window: the replying board's answer must end it early.
        make_bus(sim.path, 2, unlock_window_s=0.1 if silent else 2.0) as bus,
    ):
        started = time.monotonic()
        bus.unlock(1, 2)
        took = time.monotonic() - started
        assert opened(bus.status(1)) == [2]
        unlock_frame = encode_command(1, 2, 0x31)
        (exchange,) = [e for e in sim.history if e.received == unlock_frame]
        if silent:
            assert exchange.reply is None
            assert took >= 0.1  # drained for the whole window in case a reply was coming
        else:
            assert exchange.reply is not None and exchange.reply[1] == 0x10
            assert took < 1.0
        # The unlock's reply was not taken for the status that followed it.
        assert requests_to(sim, encode_command(1, 0, 0x30)) == 1


def test_a_person_scripted_on_unlock_puts_a_parcel_in_and_shuts_the_door(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    def courier(board: int, lock: int) -> None:
        sim.after(0.02, lambda: sim.open_and(board, lock, put=True))

    sim.on_unlock = courier
    bus.unlock(2, 11)
    assert sim.wait_until(lambda: sim.item_present(2, 11) and not sim.door_open(2, 11), WAIT_S)
    status = bus.status(2)
    assert (opened(status), filled(status)) == ([], [11])


def test_a_host_frame_with_a_bad_checksum_gets_no_reply(sim: SimulatedLockBoards) -> None:
    bad = STATUS_0[:4] + b"\x00"
    with serial.serial_for_url(sim.path, baudrate=19200, timeout=WAIT_S) as port:
        port.write(b"\xaa" + bad + STATUS_0)  # the good frame is the barrier
        reply = port.read(9)
    assert reply[:3] == b"\x02\x00\x35"
    assert [(e.received, e.reply is None) for e in sim.history] == [(bad, True), (STATUS_0, False)]


def test_concurrent_callers_each_get_their_own_boards_answer(
    sim: SimulatedLockBoards, bus: LockBus
) -> None:
    sim.force_open(1, 1)
    sim.force_open(2, 2)
    failures: list[str] = []

    def caller(board: int) -> None:
        for _ in range(15):
            status = bus.status(board)
            if status.board != board or opened(status) != ([board] if board else []):
                failures.append(f"board {board}: {status}")

    threads = [threading.Thread(target=caller, args=(b % 3,)) for b in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 3)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_errors_are_lock_board_errors_and_misuse_is_a_value_error(
    sim: SimulatedLockBoards,
) -> None:
    bus = make_bus(sim.path, 3)
    with pytest.raises(BusError):
        bus.status(0)  # never opened
    assert issubclass(BusError, LockBoardError) and issubclass(WrongAddress, LockBoardError)
    with bus:
        with pytest.raises(ValueError):
            bus.status(5)  # not configured on this bus
        with pytest.raises(ValueError):
            bus.unlock(0, 16)
    with pytest.raises(ValueError):
        LockBus(sim.path, [BoardConfig(0), BoardConfig(0)])


def test_the_bus_survives_the_adapter_being_unplugged_and_replugged(tmp_path: Path) -> None:
    link = tmp_path / "usb-FTDI_RS485-if00-port0"
    first = SimulatedLockBoards(1, link=link)
    with make_bus(str(link), 1) as bus:
        assert bus.status(0).board == 0
        first.close()
        with pytest.raises(BusError):
            bus.status(0)
        assert not bus.is_open
        with SimulatedLockBoards(1, link=link) as second:
            second.force_open(0, 0)
            assert opened(bus.status(0)) == [0]


def test_cli_serves_boards_on_a_link_until_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "lockboards"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.lockboard", "--boards", "2", "--link", str(link)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)  # printed once the pty is served
        with make_bus(str(link), 2) as bus:
            assert bus.status(1).board == 1
            bus.unlock(0, 3)
            assert opened(bus.status(0)) == [3]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT_S) == 0
        assert not os.path.lexists(link)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
