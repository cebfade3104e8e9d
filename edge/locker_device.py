"""A locker device as it runs: lock boards, keypad, scanner, camera, journal, uplink, wired up.

The keypad is a serial line like the scanner (keys, then CR); both are read with the scanner
driver. An optional camera faces the customer and reads pickup QRs from phone screens; they go
to the locker exactly as serial scans do. Its driver, and OpenCV behind it, is imported only when a
camera is configured, so a locker without one never loads them. Depot commands arrive through
the uplink and go to the locker unverified: the locker checks their signatures itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.lockboard import BusError, LockBus
from drivers.scanner import Scan, ScanFramer, ScannerReader
from edge.locker import QR_PREFIX, Display, JsonLinesDisplay, Locker
from edge.locker_config import LockerConfig, load_locker_config
from edge.ports import port_problem, require_port
from sync.clock import Clock
from sync.journal import Journal
from sync.uplink import Uplink

if TYPE_CHECKING:
    from drivers.camera import FrameReader

INPUT_WAIT_S = 5.0


class LockerDevice:
    """Everything a locker process runs; `start()` and `stop()` it as one."""

    def __init__(
        self, config: LockerConfig, display: Display, *, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.journal = Journal(config.journal, config.device_id, clock=clock)
        self.bus = LockBus(config.lockboard_port, config.boards)
        self.display = display
        self.locker = Locker(config, self.journal, self.bus, display)
        self.readers: list[ScannerReader] = []
        self._inputs_up: list[threading.Event] = []
        if config.scanner_port:
            self.readers.append(
                ScannerReader(
                    config.scanner_port, on_scan=self._scanned, on_connection=self._watch_input()
                )
            )
        if config.keypad_port:
            # A person may type the same wrong code twice in a row: no debounce on keys.
            self.readers.append(
                ScannerReader(
                    config.keypad_port,
                    on_scan=self._keyed,
                    framer=ScanFramer(b"\r", debounce_s=0.0),
                    on_connection=self._watch_input(),
                )
            )
        self.camera: FrameReader | None = None
        if config.camera_source is not None:
            from drivers.camera import Camera, FrameReader

            # The camera reconnects by itself with backoff: one that is not there yet (or is
            # unplugged) leaves the keypad and the scanner working, and only delays "ready".
            self.camera = FrameReader(
                Camera(config.camera_source, on_connection=self._watch_input()),
                on_scan=self._shown,
            )
        self.uplink = (
            Uplink(self.journal, config.broker, on_command=self.locker.command, **config.sync)
            if config.broker
            else None
        )

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str]) -> LockerDevice:
        return cls(load_locker_config(path), JsonLinesDisplay())

    def _watch_input(self) -> Callable[[bool], None]:
        up = threading.Event()
        self._inputs_up.append(up)
        return lambda connected: up.set() if connected else up.clear()

    def _scanned(self, scan: Scan) -> None:
        self.locker.scan(scan.data, scan.aim)

    def _shown(self, scan: Scan) -> None:
        # The camera faces the customer: it takes pickup QRs only. Labels and badges come from
        # the courier's scanner; a label the camera also caught would be a second drop-off.
        if scan.data.startswith(QR_PREFIX):
            self.locker.scan(scan.data, scan.aim)

    def _keyed(self, scan: Scan) -> None:
        self.locker.key(scan.data)

    def start(self) -> None:
        """Start everything; a missing or busy port raises PortError before anything runs."""
        # The scanner and keypad readers would wait for a port that is not there; at start a
        # missing one is a mistake in the config, said now rather than as "input missing".
        if self.config.scanner_port:
            require_port(self.config.scanner_port, "scanner", "[scanner] port")
        if self.config.keypad_port:
            require_port(self.config.keypad_port, "keypad", "[keypad] port")
        try:
            self.bus.open()
        except BusError as exc:
            port, setting = self.config.lockboard_port, "[lockboard] port"
            raise port_problem(port, "lock-board", setting, exc, device="locker") from exc
        self.locker.start()
        for reader in self.readers:
            reader.start()
        if self.camera is not None:
            self.camera.start()
        if self.uplink is not None:
            self.uplink.start()
        # Tell the person the locker is ready only when its keypad, scanner and camera deliver.
        ready = all(up.wait(INPUT_WAIT_S) for up in self._inputs_up)
        self.display.show(
            "ready" if ready else "ready, but an input device is missing",
            locker=self.config.device_id,
        )

    def stop(self) -> None:
        try:
            if self.camera is not None:
                # First, so no read arrives for a stopped locker. A stream stuck in a read can
                # outlast the stop timeout; the journal must still be closed cleanly.
                self.camera.stop()
        finally:
            for reader in self.readers:
                reader.stop()
            self.locker.stop()
            if self.uplink is not None:
                self.uplink.stop()
            self.bus.close()
            self.journal.close()
