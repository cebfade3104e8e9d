"""A locker device as it runs: lock boards, keypad, scanner, camera, journal, uplink, wired up.

The keypad is a serial line like the scanner (keys, then CR); both are read with the scanner
driver. An optional camera faces the customer and reads pickup QRs from phone screens; they go
to the locker exactly as serial scans do. Its driver, and OpenCV behind it, is imported only when a
camera is configured, so a locker without one never loads them. Depot commands arrive through
the uplink and go to the locker unverified: the locker checks their signatures itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.lockboard import BusError, LockBus
from drivers.scanner import Scan, ScanFramer, ScannerReader
from edge.locker import QR_PREFIX, Display, JsonLinesDisplay, Locker
from edge.locker_config import LockerConfig, LockerConfigError, load_locker_config
from edge.ports import port_problem, require_port
from parcel.runlog import needs_restart, reload_failed, reload_log_level, report_reload
from sync.clock import Clock
from sync.journal import Journal
from sync.uplink import DRAIN_ON_STOP_S, Uplink

if TYPE_CHECKING:
    from drivers.camera import FrameReader

INPUT_WAIT_S = 5.0
log = logging.getLogger("edge.locker_device")
# What `LockerDevice.reload` applies while running, and how the file names the rest.
_LOCKER_LIVE = frozenset({"log_level", "broker", "source"})
_LOCKER_SETTINGS = {
    "lockboard_port": "[lockboard] port",
    "boards": "[lockboard] boards",
    "compartments": "[[compartments]]",
    "sizes": "[sizes]",
    "hold_s": "hold_hours",
    "courier_badges": "[couriers] badges",
    "depot_sealing_key": "[depot] sealing_key",
    "command_keys": "[depot] command_keys",
    "scanner_port": "[scanner] port",
    "keypad_port": "[keypad] port",
    "camera_source": "[camera] source",
    "broker": "[broker]",
    "sync": "[sync]",
}


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
                self.uplink.stop(drain_s=DRAIN_ON_STOP_S)  # nothing new comes: inputs stopped
            self.bus.close()
            self.journal.close()

    def health(self) -> list[str]:
        """The locker's threads that are dead or stalled, by name (empty: all is well): the
        readers by their heartbeat (`drivers.reader.Reader.problem`), the controller and the
        uplink by their own."""
        problems = [reader.problem() for reader in self.readers]
        if self.camera is not None:
            problems += [self.camera.problem(), self.camera.camera.problem()]
        found = [p for p in problems if p is not None] + self.locker.health()
        return found + (self.uplink.health() if self.uplink is not None else [])

    def status_line(self) -> str:
        """For `systemctl status`: `online, backlog 0, 12/40 occupied`."""
        link = self.uplink.status_line() if self.uplink is not None else "no broker configured"
        return f"{link}, {self.locker.status_line()}"

    def reload(self) -> list[str]:
        """SIGHUP: read the configuration file again and apply what can change while the
        locker runs: the log level, and the broker address (the uplink reconnects; the journal
        is the outbox, so nothing queued is lost). Every other changed setting is named in a
        line of its own ("[lockboard] port changed: restart to apply"): doors, keys and
        readers are not swapped under a running controller. A file that no longer loads
        changes nothing and is one error line. Returns the lines it logged."""
        if self.config.source is None:
            return reload_failed(log, "the locker was not started from a configuration file")
        try:
            new = load_locker_config(self.config.source)
        except LockerConfigError as exc:
            return reload_failed(log, exc)
        live = set(_LOCKER_LIVE)
        said = [reload_log_level(self.config.log_level, new.log_level)]
        if self.uplink is not None and new.broker is not None:
            said.append(self.uplink.reconnect(new.broker))  # None when it is the same
        else:
            live.discard("broker")  # a broker added or taken away: a restart's job
        applied = [line for line in said if line]
        restart = needs_restart(self.config, new, live=live, names=_LOCKER_SETTINGS)
        broker = new.broker if "broker" in live else self.config.broker
        self.config = dataclasses.replace(self.config, log_level=new.log_level, broker=broker)
        return report_reload(log, applied, restart)
