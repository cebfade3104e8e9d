"""A customer collects a parcel by holding their phone's QR up to the locker's camera.

Everything between the phone and the lock is real: the camera simulator draws the phone scene
with an encoder that shares no code with the readers, writes it to a video file, and the
locker's own camera driver opens that file as it would open a webcam; the lock boards are
simulated behind a pseudo-terminal, the courier's scanner too; the journal is SQLite on disk.
The customer's QR is the one the locker sealed to the depot at the deposit, unsealed with the
depot's key as the depot does: the test never reads a secret the real system would not have.

The camera watches an empty locker front until the customer steps up. The customer's arrival is
the video file being replaced (atomically, by rename); the driver opens the new one when the
old one ends, as it reopens any source that ended.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge import locker_device
from edge.locker_config import LockerConfigError, load_locker_config
from edge.locker_device import LockerDevice
from simulators import camera
from simulators.camera import SimulatedCamera
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    associated_data,
    generate_sealing_keypair,
    load_sealing_key,
    unseal,
)
from sync.wire import Event

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"A1": (0, 0), "A2": (0, 1), "B1": (0, 2)}  # compartment -> (board, lock)
FIRST, SECOND = "RB123456785GB", "LX526018152GB"  # valid S10 check digits both
# Shaped like a real token (43 base64url characters), and issued by no locker.
UNKNOWN_TOKEN = "q0Vv7mJ3rXk9Zp2LwT8sYb4NcH6dFgA1eRuIoP5_-xE"
FPS = 25.0
WAIT_S = 30.0  # generous: the machine decodes video while other tests run


class Watch:
    """The locker's screen and a listener on its journal; wakes the test when either moves."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.shown: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def on_events(self, events: list[Event]) -> None:
        with self.cond:
            self.events.extend(events)
            self.cond.notify_all()

    def show(self, message: str, **facts: Any) -> None:
        with self.cond:
            self.shown.append({"display": message, **facts})
            self.cond.notify_all()

    def _find(self, kind: str, after: int, match: dict[str, Any]) -> Event | None:
        return next(
            (
                e
                for e in self.events
                if e.kind == kind
                and e.seq > after
                and all(e.payload.get(k) == v for k, v in match.items())
            ),
            None,
        )

    def wait_event(self, kind: str, *, after: int = 0, **match: Any) -> Event:
        """The first `kind` event (journal seq above ``after``) whose payload has ``match``."""
        with self.cond:
            assert self.cond.wait_for(lambda: self._find(kind, after, match), WAIT_S), (
                f"no {kind} {match}; saw {[(e.kind, dict(e.payload)) for e in self.events]}"
            )
            found = self._find(kind, after, match)
        assert found is not None
        return found

    def wait_display(self, text: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((d for d in self.shown if text in str(d["display"])), None)

        with self.cond:
            assert self.cond.wait_for(lambda: find() is not None, WAIT_S), self.shown
            found = find()
        assert found is not None
        return found

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        with self.cond:
            return [dict(e.payload) for e in self.events if e.kind == kind]


@dataclass
class Site:
    """A locker with a camera, its lock boards, the courier's scanner and the depot's key."""

    device: LockerDevice
    boards: SimulatedLockBoards
    scanner: SimulatedScanner
    watch: Watch
    sealing_private: bytes
    camera_source: Path
    tmp: Path

    def person_uses_door(self, cid: str, unlocked: Event, *, put: bool) -> None:
        """Once the locker has seen the door spring open after ``unlocked``, a person puts a
        parcel in (or takes it out) and shuts the door. Not before: a person is slower than
        the locker's poll, and a door shut before any poll saw it open never opened."""
        self.watch.wait_event("door_opened", after=unlocked.seq, compartment=cid)
        board, lock = LOCKS[cid]
        if put:
            self.boards.put_parcel(board, lock)
        else:
            self.boards.take_parcel(board, lock)
        self.boards.close_door(board, lock)

    def courier_deposits(self, parcel: str) -> tuple[str, dict[str, str]]:
        """The courier scans the parcel and puts it in: its compartment, and the customer's
        pickup code and QR as the depot opens them from the sealed credential in the deposit
        event."""
        self.scanner.scan(parcel, aim="]C0")
        unlocked = self.watch.wait_event("door_unlocked", parcel=parcel, purpose="dropoff")
        cid = str(unlocked.payload["compartment"])
        self.person_uses_door(cid, unlocked, put=True)
        deposited = self.watch.wait_event("parcel_deposited", parcel=parcel)
        plain = unseal(
            load_sealing_key(self.sealing_private),
            str(deposited.payload["credential_for_depot"]),
            associated_data(PICKUP_CREDENTIAL_PURPOSE, "locker-1", parcel),
        )
        return cid, {str(k): str(v) for k, v in json.loads(plain).items()}

    def customer_holds_up_phone(self, qr: str) -> SimulatedCamera:
        """A customer steps up and holds their phone in front of the camera, a little
        unsteadily, for the whole of the new video (which the camera then plays in a loop:
        the phone never leaves the view)."""
        poses = [
            camera.phone_qr_scene(
                qr, seed=i, angle_deg=10.0 + i, center=(690.0 + 6 * i, 370.0 - 3 * i)
            )
            for i in range(8)
        ]
        shots = [shot for shot in poses for _ in range(3)]  # each pose for three frames
        arriving = self.tmp / "customer.avi"
        video = SimulatedCamera(shots, fps=FPS, path=arriving)
        assert video.history[0].first_frame == 0 and video.history[0].last_frame == len(shots) - 1
        os.replace(arriving, self.camera_source)
        return video

    def frames_seen(self) -> int:
        reader = self.device.camera
        assert reader is not None
        return reader.frames_seen

    def watch_frames(self, count: int) -> None:
        """Wait until the camera has looked at ``count`` more frames. Polled: the frame reader
        announces scans, not frames, and a test must not widen a driver for itself."""
        target = self.frames_seen() + count
        deadline = time.monotonic() + WAIT_S
        while self.frames_seen() < target:
            assert time.monotonic() < deadline, f"camera saw {self.frames_seen()}/{target}"
            time.sleep(0.05)


def wait_serial_inputs(device: LockerDevice) -> None:
    """Wait until the scanner and keypad ports are open: bytes a simulator writes before that
    are flushed by the open, as a real scanner's are. "ready" does not promise it when the
    device gave up waiting (for a missing camera, say)."""
    deadline = time.monotonic() + WAIT_S
    while not all(reader.connected for reader in device.readers):
        assert time.monotonic() < deadline, "a serial input never opened"
        time.sleep(0.05)


@contextmanager
def locker_site(
    tmp_path: Path, *, camera_there: bool = True, keypad: SimulatedScanner | None = None
) -> Iterator[Site]:
    """A running locker from a TOML file whose ``[camera] source`` is a video file showing the
    empty front of the locker (or, ``camera_there=False``, a file that does not exist)."""
    sealing_private, sealing_public = generate_sealing_keypair()
    source = tmp_path / "camera.avi"
    if camera_there:
        nobody = camera.Scene("locker", seed=1).backdrop()
        SimulatedCamera([nobody] * 10, fps=FPS, path=source).close()
    with ExitStack() as stack:
        boards = stack.enter_context(SimulatedLockBoards(1, link=tmp_path / "bus.tty"))
        scanner = stack.enter_context(SimulatedScanner(tmp_path / "scanner.tty"))
        config = tmp_path / "locker.toml"
        keypad_section = f'[keypad]\nport = "{keypad.path}"' if keypad is not None else ""
        config.write_text(
            f"""
device_id = "locker-1"
journal = "locker.db"
jam_timeout_s = 5.0
poll_interval_s = 0.05
[lockboard]
port = "{boards.path}"
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
[[compartments]]
id = "A2"
board = 0
lock = 1
size = "S"
[[compartments]]
id = "B1"
board = 0
lock = 2
size = "M"
[couriers]
badges = ["C42"]
[scanner]
port = "{scanner.path}"
{keypad_section}
[camera]
source = "{source}"
[depot]
sealing_key = "{base64.b64encode(sealing_public).decode()}"
"""
        )
        watch = Watch()
        device = LockerDevice(load_locker_config(config), watch)
        device.journal.add_listener(watch.on_events)
        device.start()
        stack.callback(device.stop)
        wait_serial_inputs(device)
        yield Site(device, boards, scanner, watch, sealing_private, source, tmp_path)


def test_the_phone_qr_in_front_of_the_camera_opens_its_compartment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "ready" waits for every input, the camera included; loading OpenCV on a busy machine
    # may take longer than the locker's own patience.
    monkeypatch.setattr(locker_device, "INPUT_WAIT_S", WAIT_S)
    with locker_site(tmp_path) as site:
        assert site.watch.wait_display("ready")["display"] == "ready"  # all inputs up
        site.scanner.scan("LMC:C42", aim="]C0")  # the courier's badge
        site.watch.wait_event("courier_identified", courier="C42")
        assert site.courier_deposits(FIRST)[0] == "A1"
        cid, secrets = site.courier_deposits(SECOND)
        assert cid == "A2"  # so a door opening for the QR must be the right one of two

        with site.customer_holds_up_phone(secrets["qr"]) as video:
            attempt = site.watch.wait_event("pickup_attempt", method="qr")
            assert attempt.payload == {"method": "qr", "ok": True, "parcel": SECOND}
            unlocked = site.watch.wait_event("door_unlocked", purpose="pickup")
            assert unlocked.payload == {"compartment": "A2", "purpose": "pickup", "parcel": SECOND}
            board, lock = LOCKS["A2"]
            assert site.boards.wait_until(lambda: site.boards.door_open(board, lock), WAIT_S)
            assert not site.boards.door_open(*LOCKS["A1"])
            site.person_uses_door("A2", unlocked, put=False)
            site.watch.wait_event("parcel_picked_up", parcel=SECOND, compartment="A2")
            # The phone stays in view: more frames than the whole video, so the camera has
            # also reopened it and started over. Still the same QR in view: no second read.
            site.watch_frames(video.frame_count + 1)

        assert site.boards.unlock_count(*LOCKS["A2"]) == 2  # the courier's, the customer's
        assert site.boards.unlock_count(*LOCKS["A1"]) == 1  # the courier's only
        assert site.boards.unlock_count(*LOCKS["B1"]) == 0
    assert len(site.watch.payloads("pickup_attempt")) == 1
    with Journal(tmp_path / "locker.db", "locker-1") as journal:
        journalled = [
            (kind, json.loads(payload))
            for kind, payload in journal.query(
                "SELECT kind, payload FROM events WHERE kind IN "
                "('pickup_attempt', 'door_unlocked', 'parcel_picked_up') ORDER BY seq"
            )
        ]
        parcels = journal.query("SELECT parcel, state FROM parcels ORDER BY parcel")
    pickups = [(k, p) for k, p in journalled if p.get("purpose") != "dropoff"]
    assert pickups == [
        ("pickup_attempt", {"method": "qr", "ok": True, "parcel": SECOND}),
        ("door_unlocked", {"compartment": "A2", "purpose": "pickup", "parcel": SECOND}),
        ("parcel_picked_up", {"compartment": "A2", "parcel": SECOND}),
    ]
    assert parcels == [(SECOND, "picked_up"), (FIRST, "stored")]


def test_an_unknown_qr_in_front_of_the_camera_opens_nothing(tmp_path: Path) -> None:
    with locker_site(tmp_path) as site:
        site.watch.wait_display("ready")
        site.scanner.scan("LMC:C42", aim="]C0")
        cid, secrets = site.courier_deposits(FIRST)
        assert secrets["qr"] != "LMQR:" + UNKNOWN_TOKEN
        with site.customer_holds_up_phone(UNKNOWN_TOKEN) as video:
            attempt = site.watch.wait_event("pickup_attempt", method="qr")
            assert attempt.payload == {"method": "qr", "ok": False}
            site.watch.wait_display("code not recognised")
            site.watch_frames(video.frame_count + 1)  # held up through a whole replay
        unlocks = {c: site.boards.unlock_count(board, lock) for c, (board, lock) in LOCKS.items()}
        assert unlocks == {"A1": 1, "A2": 0, "B1": 0}  # the courier's only
        assert not site.boards.door_open(*LOCKS[cid])
    assert site.watch.payloads("pickup_attempt") == [{"method": "qr", "ok": False}]
    assert [p for p in site.watch.payloads("door_unlocked") if p["purpose"] != "dropoff"] == []
    with Journal(tmp_path / "locker.db", "locker-1") as journal:
        assert journal.query("SELECT state FROM parcels") == [("stored",)]


def test_a_missing_camera_leaves_the_keypad_and_scanner_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locker_device, "INPUT_WAIT_S", 0.5)  # how long "ready" waits for it
    with (
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
        locker_site(tmp_path, camera_there=False, keypad=keypad) as site,
    ):
        site.watch.wait_display("ready, but an input device is missing")
        reader = site.device.camera
        assert reader is not None and not reader.camera.connected
        keypad.scan("*C42", aim=None)  # the courier identifies on the keypad
        site.watch.wait_event("courier_identified", courier="C42")
        cid, secrets = site.courier_deposits(FIRST)
        keypad.scan(secrets["code"], aim=None)
        unlocked = site.watch.wait_event("door_unlocked", purpose="pickup", compartment=cid)
        site.person_uses_door(cid, unlocked, put=False)
        site.watch.wait_event("parcel_picked_up", parcel=FIRST)
        assert not reader.camera.connected  # still looking for it, and nobody waited


def test_camera_source_in_the_config_and_no_camera_driver_without_one(tmp_path: Path) -> None:
    base = """
device_id = "locker-1"
[lockboard]
port = "/dev/ttyUSB0"
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
"""
    sources = {
        "": None,
        '[camera]\nsource = "0"': 0,  # a device index, which OpenCV wants as an int
        "[camera]\nsource = 2": 2,
        '[camera]\nsource = "/dev/video0"': "/dev/video0",
        '[camera]\nsource = "rtsp://10.0.0.7/front"': "rtsp://10.0.0.7/front",
    }
    config = tmp_path / "locker.toml"
    for section, expected in sources.items():
        config.write_text(base + section)
        assert load_locker_config(config).camera_source == expected, section
    for bad in ('[camera]\nsource = ""', "[camera]\nsource = true", "[camera]\nport = 0"):
        config.write_text(base + bad)
        with pytest.raises(LockerConfigError):
            load_locker_config(config)

    # A locker without a camera builds its device without loading the driver or OpenCV.
    config.write_text(base)
    code = (
        "import sys; "
        "from edge.locker_device import LockerDevice; "
        f"d = LockerDevice.from_config_file({str(config)!r}); "
        "print(sorted(m for m in ('cv2', 'drivers.camera') if m in sys.modules)); "
        "d.journal.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip() == "[]"
