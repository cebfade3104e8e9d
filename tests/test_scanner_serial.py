"""ScannerReader against SimulatedScanner over real pseudo-terminals; nothing is mocked.

Outcomes are awaited on queues with timeouts. To show that nothing *else* arrived, a test
sends a known "barrier" scan and checks that it is the very next thing the reader delivers.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from drivers.scanner import Rejected, Scan, ScanFramer, ScannerError, ScannerReader
from simulators.errors import SimulatorError
from simulators.scanner import SimulatedScanner

WAIT_S = 3.0  # upper bound for anything to arrive; a passing run takes milliseconds
GS = "\x1d"


class Inbox:
    """What the reader delivered, in order, from its own thread."""

    def __init__(self) -> None:
        self.scans: queue.Queue[Scan] = queue.Queue()
        self.rejects: queue.Queue[Rejected] = queue.Queue()
        self.links: queue.Queue[bool] = queue.Queue()

    def scan(self) -> Scan:
        return self.scans.get(timeout=WAIT_S)

    def reject(self) -> Rejected:
        return self.rejects.get(timeout=WAIT_S)

    def link(self) -> bool:
        return self.links.get(timeout=WAIT_S)


class ObservedFramer(ScanFramer):
    """A real framer that also reports what the reader did with it (fed bytes, idle polls)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fed: queue.Queue[bytes] = queue.Queue()
        self.polls = 0

    def feed(self, data: bytes, now: float) -> list[Scan | Rejected]:
        self.fed.put(data)
        return super().feed(data, now)

    def poll(self, now: float) -> list[Scan | Rejected]:
        self.polls += 1
        return super().poll(now)

    def wait_fed(self, expected: bytes) -> None:
        got = b""
        while got != expected:
            got += self.fed.get(timeout=WAIT_S)
            assert expected.startswith(got), got


def make_reader(
    path: str, inbox: Inbox, framer: ScanFramer | None = None, **kwargs: float
) -> ScannerReader:
    return ScannerReader(
        path,
        inbox.scans.put,
        framer=framer,
        on_reject=inbox.rejects.put,
        on_connection=inbox.links.put,
        reconnect_min_s=kwargs.pop("reconnect_min_s", 0.02),
        reconnect_max_s=kwargs.pop("reconnect_max_s", 0.1),
    )


@pytest.fixture
def by_id(tmp_path: Path) -> Path:
    return tmp_path / "usb-Honeywell_Xenon_1950g-if00"


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def sim(by_id: Path) -> Iterator[SimulatedScanner]:
    with SimulatedScanner(by_id) as scanner:
        yield scanner


@pytest.fixture
def reader(sim: SimulatedScanner, inbox: Inbox) -> Iterator[ScannerReader]:
    with make_reader(sim.path, inbox) as running:
        assert inbox.link() is True  # bytes sent before the port is open are lost
        yield running


def test_crlf_scan_arrives_with_aim_and_control_bytes_intact(
    sim: SimulatedScanner, reader: ScannerReader, inbox: Inbox
) -> None:
    gs1 = "00157035381410375177" + GS + "42012345"
    sim.scan("RR123456785NL")
    sim.scan(gs1, aim="]C1")
    sim.scan("RB123456785GB", aim=None)
    first, second, third = inbox.scan(), inbox.scan(), inbox.scan()
    assert (first.aim, first.data, first.raw) == ("]C0", "RR123456785NL", b"]C0RR123456785NL")
    assert (second.aim, second.data) == ("]C1", gs1)
    assert (third.aim, third.data) == (None, "RB123456785GB")
    assert reader.connected
    assert sim.history[0][1] == b"]C0RR123456785NL\r\n"


@pytest.mark.parametrize("suffix", [b"\r", b"\n"], ids=["cr", "lf"])
def test_single_byte_suffix(by_id: Path, inbox: Inbox, suffix: bytes) -> None:
    with (
        SimulatedScanner(by_id, suffix=suffix) as sim,
        make_reader(sim.path, inbox, ScanFramer(suffix)),
    ):
        assert inbox.link() is True
        sim.scan("1Z5R89390357567127")
        sim.scan("RR123456785NL")
        assert [inbox.scan().data, inbox.scan().data] == ["1Z5R89390357567127", "RR123456785NL"]


def test_no_suffix_scans_end_on_silence(by_id: Path, inbox: Inbox) -> None:
    with (
        SimulatedScanner(by_id, suffix=None) as sim,
        make_reader(sim.path, inbox, ScanFramer(None, silence_s=0.05)),
    ):
        assert inbox.link() is True
        sim.scan("RR123456785NL")
        first = inbox.scan()
        delivered_at = time.monotonic()
        assert first.data == "RR123456785NL"
        assert abs(first.at - sim.history[-1][0]) < 0.05  # stamped with the last byte's arrival
        assert 0.05 <= delivered_at - first.at < 0.5  # after the silence, not the idle timeout
        sim.scan("1Z5R89390357567127")  # a second scan, after the first was seen to end
        assert inbox.scan().data == "1Z5R89390357567127"


def test_byte_by_byte_crlf(by_id: Path, inbox: Inbox) -> None:
    with (
        SimulatedScanner(by_id, byte_delay_s=0.002) as sim,
        make_reader(sim.path, inbox),
    ):
        assert inbox.link() is True
        sim.scan("00157035381410375177" + GS + "420", aim="]C1")
        scan = inbox.scan()
        assert scan.data == "00157035381410375177" + GS + "420"
        assert inbox.rejects.empty()


def test_slow_uart_without_suffix_is_one_scan_not_fragments(by_id: Path, inbox: Inbox) -> None:
    # 10 ms between bytes, silence 50 ms: the reader must wait out each gap, not cut on it.
    with (
        SimulatedScanner(by_id, suffix=None, byte_delay_s=0.01) as sim,
        make_reader(sim.path, inbox, ScanFramer(None, silence_s=0.05)),
    ):
        assert inbox.link() is True
        sim.scan("RR123456785NL")
        assert inbox.scan().data == "RR123456785NL"
        sim.scan("RB123456785GB")  # barrier: no fragment of the first may come before it
        assert inbox.scan().data == "RB123456785GB"
        assert inbox.rejects.empty()


def test_garbage_closed_by_terminator_is_rejected_then_a_good_scan_arrives(
    sim: SimulatedScanner, reader: ScannerReader, inbox: Inbox
) -> None:
    garbage = sim.noise(64, random.Random(7))
    sim.write_raw(b"\r\n")
    rejected = inbox.reject()
    assert rejected.raw == garbage
    assert rejected.reason.startswith("non-printable byte 0x")
    sim.scan("RR123456785NL")
    assert inbox.scan().data == "RR123456785NL"
    assert inbox.scans.empty()


def test_garbage_left_open_is_rejected_when_stale_then_a_good_scan_arrives(
    sim: SimulatedScanner, inbox: Inbox
) -> None:
    with make_reader(sim.path, inbox, ScanFramer(b"\r\n", stale_s=0.1)):
        assert inbox.link() is True
        garbage = sim.noise(20, random.Random(3))
        sent_at = time.monotonic()
        rejected = inbox.reject()
        # Woken by the framer's deadline (0.1 s), not by the 1 s idle read timeout.
        assert time.monotonic() - sent_at < 0.6
        assert (rejected.reason, rejected.raw) == ("frame never ended", garbage)
        sim.scan("RR123456785NL")
        assert inbox.scan().data == "RR123456785NL"


def test_unplug_and_replug_without_restarting_the_reader(
    sim: SimulatedScanner, inbox: Inbox, by_id: Path
) -> None:
    framer = ObservedFramer()
    reader = make_reader(sim.path, inbox, framer)
    reader.start()
    assert inbox.link() is True
    sim.scan("RR123456785NL")
    assert inbox.scan().data == "RR123456785NL"
    thread_count = threading.active_count()
    old_device = sim.device

    sim.write_raw(b"]C0CUT-OFF-BY-UN")  # a frame half sent when the cable came out...
    framer.wait_fed(b"]C0RR123456785NL\r\n]C0CUT-OFF-BY-UN")  # ...and half received
    sim.unplug()
    assert inbox.link() is False
    assert not reader.connected
    assert not by_id.exists() and not os.path.exists(old_device)
    sim.scan("LOST-WHILE-UNPLUGGED")  # a real scanner's bytes go nowhere
    assert [raw for _, raw in sim.history][-1] == b"]C0CUT-OFF-BY-UN"

    sim.replug()
    assert inbox.link() is True
    assert reader.connected
    sim.scan("1Z5R89390357567127")
    # Next thing delivered is the new scan, whole: the partial frame did not prefix it.
    assert inbox.scan().raw == b"]C01Z5R89390357567127"
    assert inbox.rejects.empty()
    assert threading.active_count() == thread_count
    reader.stop()


def test_reader_waits_for_a_scanner_that_is_not_plugged_in_yet(by_id: Path, inbox: Inbox) -> None:
    with make_reader(str(by_id), inbox) as reader:
        assert not reader.connected
        with SimulatedScanner(by_id) as sim:
            assert inbox.link() is True
            sim.scan("RR123456785NL")
            assert inbox.scan().data == "RR123456785NL"


def test_callback_exception_does_not_kill_the_reader(
    sim: SimulatedScanner, inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    def on_scan(scan: Scan) -> None:
        if scan.data == "BOOM":
            raise RuntimeError("app bug")
        inbox.scans.put(scan)

    with ScannerReader(sim.path, on_scan, on_connection=inbox.links.put):
        assert inbox.link() is True
        sim.scan("BOOM")
        sim.scan("RR123456785NL")
        assert inbox.scan().data == "RR123456785NL"
    assert any("scanner callback failed" in r.getMessage() for r in caplog.records)


def test_stop_is_prompt_while_blocked_in_read(sim: SimulatedScanner, inbox: Inbox) -> None:
    reader = make_reader(sim.path, inbox)
    reader.start()
    assert inbox.link() is True
    started = time.monotonic()
    reader.stop()
    assert time.monotonic() - started < 0.3  # the idle read blocks for 1 s without cancel_read
    assert inbox.link() is False
    assert not reader.connected


def test_stop_is_prompt_while_backing_off(by_id: Path, inbox: Inbox) -> None:
    reader = make_reader(str(by_id), inbox, reconnect_min_s=5.0, reconnect_max_s=10.0)
    reader.start()
    started = time.monotonic()
    reader.stop()
    assert time.monotonic() - started < 0.3


@pytest.mark.parametrize("open_frame", [False, True], ids=["idle", "frame-open"])
def test_reader_does_not_busy_poll(sim: SimulatedScanner, inbox: Inbox, open_frame: bool) -> None:
    framer = ObservedFramer(b"\r\n", stale_s=1.0)
    with make_reader(sim.path, inbox, framer):
        assert inbox.link() is True
        if open_frame:  # the reader must sleep until the frame's deadline, not tick towards it
            sim.write_raw(b"]C0RR12")
            framer.wait_fed(b"]C0RR12")
        polls_before, cpu_before = framer.polls, time.process_time()
        threading.Event().wait(0.5)  # measuring over an interval, not awaiting an outcome
        assert framer.polls - polls_before <= 1  # one wake-up per second at most
        assert time.process_time() - cpu_before < 0.1


def test_unusable_port_url_is_a_configuration_error() -> None:
    with pytest.raises(ScannerError):
        ScannerReader("nosuchscheme://scanner", lambda scan: None)


def test_reader_runs_once() -> None:
    reader = ScannerReader("loop://", lambda scan: None)
    with reader, pytest.raises(ScannerError):
        reader.start()


# ---- the simulator's own wire: what the driver tests rely on --------------------------------


def test_pty_is_raw_bytes_pass_unchanged(sim: SimulatedScanner) -> None:
    with serial.Serial(sim.path, timeout=WAIT_S) as port:
        payload = b"]C1\x1d\x1e\x04\r\nCR-only\rLF-only\n\xff"
        sim.write_raw(payload)
        assert port.read(len(payload)) == payload  # no echo, no CR/LF translation


def test_bytes_sent_before_the_port_opens_are_lost(sim: SimulatedScanner) -> None:
    sim.scan("EARLY")
    assert sim.history  # the pty accepted them...
    with serial.Serial(sim.path, timeout=0.05) as port:
        sim.scan("LATE")
        assert port.read(100) == b"]C0LATE\r\n"  # ...and pyserial's open flushed them


def test_write_nobody_drains_is_dropped_after_a_bounded_wait(by_id: Path) -> None:
    with SimulatedScanner(by_id, write_timeout_s=0.1) as sim:
        started = time.monotonic()
        sim.write_raw(b"X" * 100_000)  # far more than the pty's ~16 KiB queue
        assert time.monotonic() - started < 1.0
        accepted = sum(len(raw) for _, raw in sim.history)
        assert 0 < accepted < 100_000


def test_replug_replaces_the_link_and_refuses_to_clobber_a_real_file(tmp_path: Path) -> None:
    link = tmp_path / "scanner"
    link.symlink_to("/dev/pts/does-not-exist")  # stale, left by a crashed run
    with SimulatedScanner(link) as sim:
        assert os.readlink(link) == sim.device
        sim.unplug()
        assert not link.is_symlink()
        sim.replug()
        assert os.readlink(link) == sim.device
    assert not link.is_symlink()
    regular = tmp_path / "not-a-link"
    regular.write_text("keep me")
    with pytest.raises(SimulatorError, match="not a symlink"):
        SimulatedScanner(regular)
    assert regular.read_text() == "keep me"
