"""The serial simulators' shared pty end (simulators/device_port.py), over real pseudo-terminals.

What the scanner, GNSS and lock-board simulators rely on beyond their own tests: a listening
port hears the host and can be interrupted, a write nobody drains gives up with the part the
pty took, an unplug removes only the port's own link, and a serving thread stops or says so.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.device_port import DevicePort, ServingThread
from simulators.errors import SimulatorError

WAIT_S = 5.0  # bound on anything that should happen at once
log = logging.getLogger("tests.device_port")


@pytest.fixture
def listening() -> Iterator[DevicePort]:
    port = DevicePort("test device", log=log, write_timeout_s=0.05, listen=True)
    yield port
    port.close()


def test_a_listening_port_hears_the_host_byte_for_byte(listening: DevicePort) -> None:
    host = os.open(listening.device, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(host, b"\x02\x00\x30\x03\x35\r\n")  # raw mode: CR LF arrive as they were sent
        got = b""
        while len(got) < 7:
            chunk = listening.read(WAIT_S)
            assert chunk, "the host's bytes never arrived"
            got += chunk
        assert got == b"\x02\x00\x30\x03\x35\r\n"
        assert listening.write(b"\x02ok\r\n") == b"\x02ok\r\n"
        readable, _, _ = select.select([host], [], [], WAIT_S)
        assert readable, "the device's reply never reached the host"
        assert os.read(host, 16) == b"\x02ok\r\n"  # and no echo of what the host sent
    finally:
        os.close(host)


def test_interrupt_ends_a_read_that_waits_for_ever(listening: DevicePort) -> None:
    results: list[bytes] = []
    reader = threading.Thread(target=lambda: results.append(listening.read(None)))
    reader.start()
    listening.interrupt()
    reader.join(WAIT_S)
    assert not reader.is_alive() and results == [b""]


def test_bytes_nobody_drains_are_dropped_and_the_rest_reported() -> None:
    with_nobody = DevicePort("test device", log=log, write_timeout_s=0.0)
    try:
        big = bytes(range(256)) * 1024  # 256 KiB: far more than the pty's queue holds
        accepted = with_nobody.write(big)
        assert 0 < len(accepted) < len(big) and big.startswith(accepted)
    finally:
        with_nobody.close()


def test_unplug_removes_the_link_it_made_and_replug_points_it_again(tmp_path: Path) -> None:
    link = tmp_path / "by-id"
    port = DevicePort("test device", link, log=log, write_timeout_s=0.05)
    try:
        first = port.device
        assert port.path == str(link) and os.readlink(link) == first
        port.unplug()
        assert not link.is_symlink() and not port.plugged
        assert port.write(b"lost") == b""  # unplugged: the bytes go nowhere
        with pytest.raises(SimulatorError, match="already unplugged"):
            port.unplug()
        port.plug()
        assert os.readlink(link) == port.device
    finally:
        port.close()
    assert not link.is_symlink()
    with pytest.raises(SimulatorError, match="closed"):
        port.plug()


def test_unplug_leaves_a_link_someone_else_repointed(tmp_path: Path) -> None:
    link = tmp_path / "by-id"
    port = DevicePort("test device", link, log=log, write_timeout_s=0.05)
    link.unlink()
    link.symlink_to("/dev/null")
    port.close()
    assert os.readlink(link) == "/dev/null"


def test_a_serving_thread_stops_when_asked() -> None:
    started = threading.Event()

    def body() -> None:
        started.set()
        serving.stopping.wait(WAIT_S * 10)

    serving = ServingThread("test serving", body, log=log)
    serving.start()
    assert started.wait(WAIT_S)
    serving.stop(WAIT_S)
    assert serving.stopping.is_set()


def test_a_serving_thread_that_will_not_stop_is_reported() -> None:
    release = threading.Event()

    def body() -> None:
        release.wait(WAIT_S * 10)  # deaf to `stopping`

    serving = ServingThread("stubborn", body, log=log)
    serving.start()
    try:
        with pytest.raises(SimulatorError, match="stubborn did not stop"):
            serving.stop(0.01)
    finally:
        release.set()
        serving.stop(WAIT_S)
