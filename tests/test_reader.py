"""The reader base every driver's reader stands on (drivers.reader), tested on its own.

A tiny in-memory transport stands in for a device here: the base is ours, and what is tested
is its life cycle (start once, stop wakes a blocking read, join with a timeout), its backoff
(bounds, growth, reset after a link that worked) and its connection reports. The scanner,
GNSS and camera tests run the same base against real pseudo-terminals and video files.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from drivers.errors import DriverError
from drivers.reader import ReconnectingReader, backoff_delay

WAIT_S = 10.0  # generous: only a broken reader ever waits this long


class FakeError(DriverError):
    """The fake device's own error type, as each driver has one."""


class FakeLink:
    """One connection to the fake device: a read blocks until data, a cut, or cancel()."""

    def __init__(self, chunks: list[bytes], cut: bool, hold_s: float = 0.0) -> None:
        self._chunks = list(chunks)
        self._cut = cut
        self._hold_s = hold_s
        self._wake = threading.Event()
        self.closed = False

    def read(self) -> bytes | None:
        """The next chunk; None when the link was cut (or cancelled) and nothing is left."""
        if self._chunks:
            return self._chunks.pop(0)
        if self._cut:
            if self._hold_s:  # up and silent for a while, then cut
                self._wake.wait(self._hold_s)
            return None
        self._wake.wait(WAIT_S)  # a device with nothing to say: blocks, as a port read does
        return None

    @property
    def silent(self) -> bool:
        """True when the next read blocks until cancelled: nothing queued, never cut."""
        return not self._chunks and not self._cut

    def cancel(self) -> None:
        self._wake.set()


class FakeReader(ReconnectingReader[FakeLink]):
    """Opens links from a script: each entry is None (the open fails), what the link carries
    before it is cut, or how many seconds it stays up and silent before it is cut; after the
    script, links stay open and silent."""

    error = FakeError

    def __init__(
        self,
        script: list[list[bytes] | float | None],
        *,
        cancellable: bool = True,
        reconnect_min_s: float = 0.001,
        reconnect_max_s: float = 0.004,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(
            "fake reader",
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            on_connection=on_connection,
        )
        self._script = list(script)
        self._cancellable = cancellable
        self.attempts: list[int] = []  # the failure count each open was tried with
        self.received: list[bytes] = []
        self.links: list[FakeLink] = []
        self.blocked = threading.Event()  # set when a read blocks on a silent link
        self.done = threading.Event()  # set when the script is used up

    def _connect(self, failures: int) -> FakeLink | None:
        self.attempts.append(failures)
        if not self._script:
            self.done.set()
            link = FakeLink([], cut=False)
        else:
            entry = self._script.pop(0)
            if entry is None:
                return None
            if isinstance(entry, float):
                link = FakeLink([], cut=True, hold_s=entry)
            else:
                link = FakeLink(entry, cut=True)
        self.links.append(link)
        return link

    def _pump(self, link: FakeLink) -> bool:
        carried = False
        while not self._stopping.is_set():
            if link.silent:
                self.blocked.set()
            chunk = link.read()
            if chunk is None:
                return carried
            carried = True
            self.received.append(chunk)
        return carried

    def _close(self, link: FakeLink) -> None:
        link.closed = True

    def _interrupt_link(self, link: FakeLink) -> None:
        if self._cancellable:
            link.cancel()


def run_script(reader: FakeReader) -> None:
    with reader:
        assert reader.done.wait(WAIT_S)
        assert reader.blocked.wait(WAIT_S)


def test_backoff_stays_between_the_floor_and_a_doubling_ceiling() -> None:
    rng = random.Random(7)
    for failures in range(12):
        ceiling = min(5.0, 0.2 * 2**failures)
        delays = [backoff_delay(failures, 0.2, 5.0, rng) for _ in range(200)]
        assert all(0.2 <= d <= ceiling for d in delays)
        # Jittered, not fixed: the draws spread over the window (it has width from 1 failure).
        if failures:
            assert max(delays) - min(delays) > (ceiling - 0.2) / 2
    assert backoff_delay(10**6, 0.2, 5.0, rng) <= 5.0  # no overflow, however long it is away


def test_failed_opens_grow_the_backoff_and_a_link_that_carried_data_resets_it() -> None:
    reader = FakeReader([None, None, None, [b"data"], None, [], None])
    run_script(reader)
    # The failure count each attempt saw: three failed opens, a link that carried data (reset),
    # a failed open, a link that carried nothing (counts as a failure), a failed open.
    assert reader.attempts == [0, 1, 2, 3, 0, 1, 2, 3]
    assert reader.received == [b"data"]
    assert all(link.closed for link in reader.links)


def test_a_link_that_stayed_up_resets_the_backoff_even_without_data() -> None:
    # The third link stays up (silent) for longer than reconnect_max_s, the fifth does not.
    reader = FakeReader([None, None, 0.05, None, []], reconnect_max_s=0.004)
    run_script(reader)
    assert reader.attempts == [0, 1, 2, 0, 1, 2]


def test_on_connection_reports_each_link_up_and_down_once() -> None:
    events: list[bool] = []
    reader = FakeReader([None, [b"a"], None, [b"b", b"c"]], on_connection=events.append)
    with reader:
        assert reader.done.wait(WAIT_S) and reader.blocked.wait(WAIT_S)
        assert reader.connected  # the silent link is up
        assert events == [True, False, True, False, True]  # two links came and were cut
    assert events == [True, False, True, False, True, False]  # and stop() ended the third
    assert not reader.connected


def test_stop_wakes_a_blocking_read_and_ends_the_thread() -> None:
    reader = FakeReader([])
    reader.start()
    assert reader.blocked.wait(WAIT_S)
    reader.stop(timeout=WAIT_S)  # raises if the thread is still reading
    assert reader.links[0].closed and not reader.connected


def test_a_read_that_stop_cannot_wake_is_an_error_of_the_driver_s_own_type() -> None:
    reader = FakeReader([], cancellable=False)
    reader.start()
    assert reader.blocked.wait(WAIT_S)
    with pytest.raises(FakeError, match="did not stop"):
        reader.stop(timeout=0.05)
    reader.links[0].cancel()  # let it go
    reader.stop(timeout=WAIT_S)


def test_a_reader_starts_once() -> None:
    reader = FakeReader([])
    with reader, pytest.raises(FakeError, match="already started"):
        reader.start()
    with pytest.raises(FakeError, match="already started"):
        reader.start()  # a stopped reader is spent: make a new one


def test_nonsense_delays_are_refused_with_the_driver_s_error() -> None:
    with pytest.raises(FakeError):
        FakeReader([], reconnect_min_s=0.0)
    with pytest.raises(FakeError):
        FakeReader([], reconnect_min_s=2.0, reconnect_max_s=1.0)


def test_stop_before_start_and_twice_is_harmless() -> None:
    reader = FakeReader([])
    reader.stop()
    reader.stop()
    assert not reader.connected
