"""A van with a camera beside its serial scanner: one parcel whichever way it was read, and
doorstep photos taken from the camera's newest frame.

Real parts: the van's own wiring (edge.van.Van) with the serial scanner on a pseudo-terminal,
the camera driver reading a recorded video of a GS1 DataMatrix label passing through the view,
a real Mosquitto broker for the uplink and the journal on disk.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drivers.photo import PhotoError
from edge.van import Van, VanConfig
from simulators import camera
from simulators.broker import Broker
from simulators.camera import Scene, SimulatedCamera
from simulators.parcels import GS
from simulators.scanner import SimulatedScanner
from sync.wire import Event
from tests.conftest import address

SSCC = "123456789012345675"
GS1_DATA = f"42012345{GS}00{SSCC}"  # ship-to postcode (variable length, so a GS), then SSCC
WAIT_S = 30.0


class Heard:
    """The courier's beeps, as events the van confirmed or reasons it refused."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.refusals: list[str] = []

    def confirmed(self, event: Event) -> None:
        self.events.put(event)

    def refused(self, reason: str, raw: str) -> None:
        self.refusals.append(reason)

    def next(self) -> Event:
        try:
            return self.events.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("no scan was confirmed to the courier") from None


@pytest.fixture
def van_rig(broker: Broker, tmp_path: Path) -> Iterator[tuple[Van, Heard, SimulatedScanner]]:
    printed = camera.render_label(GS1_DATA, format="gs1-datamatrix")
    scene = Scene("cardboard", seed=3)
    frames = [scene.frame(None) for _ in range(4)]
    # The label held still for 1.2 s: a loaded CI machine decodes only some of the frames.
    frames += list(camera.label_pass(scene, printed, enter=4, stay=30, leave=4, width_px=360))
    frames += [scene.frame(None) for _ in range(100)]  # then a long empty view: 4 s at 25 fps
    video = SimulatedCamera(iter(frames), fps=25, path=tmp_path / "van-camera.avi")
    heard = Heard()
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = VanConfig(
            device_id="van-1",
            journal=tmp_path / "van-1.db",
            scanner_port=str(scanner.path),
            broker=address(broker, "van-1"),
            camera_source=str(video.source),
        )
        van = Van(config, heard)
        van.start()
        try:
            assert van.scanner_ready.wait(10), "the serial scanner never opened"
            yield van, heard, scanner
        finally:
            van.stop()
            video.close()


def test_gs1_data_from_the_camera_and_the_serial_scanner_is_one_parcel(
    van_rig: tuple[Van, Heard, SimulatedScanner],
) -> None:
    _van, heard, scanner = van_rig
    seen = heard.next()  # the camera saw the label go by
    assert seen.kind == "parcel_scanned"
    assert seen.payload["aim"] == "]d2" and GS in seen.payload["raw"]
    scanner.scan(seen.payload["raw"], aim="]d2")  # the same label under the laser
    serial = heard.next()
    assert serial.seq > seen.seq
    both = [(e.payload["parcel"], e.payload["kind"], e.payload["raw"]) for e in (seen, serial)]
    assert both == [(SSCC, "sscc", GS1_DATA)] * 2
    assert heard.refusals == []


def test_a_doorstep_photo_is_the_camera_s_newest_frame_made_small(
    van_rig: tuple[Van, Heard, SimulatedScanner],
) -> None:
    van, _heard, _scanner = van_rig
    assert van.camera_ready.wait(WAIT_S), "the camera never delivered a frame"
    photo = van.take_photo("camera")
    assert (photo.width, photo.height) == (960, 540)  # from the 1280x720 camera
    assert len(photo.data) <= 100_000 and photo.data[:3] == b"\xff\xd8\xff"
    import cv2

    decoded = cv2.imdecode(np.frombuffer(photo.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (540, 960, 3)


def test_without_a_current_frame_a_camera_photo_is_refused(broker: Broker, tmp_path: Path) -> None:
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = VanConfig(
            device_id="van-1",
            journal=tmp_path / "van-1.db",
            scanner_port=str(scanner.path),
            broker=address(broker, "van-1"),
            camera_source=str(tmp_path / "no-such-camera.avi"),
        )
        van = Van(config, Heard())
        van.start()
        try:
            with pytest.raises(PhotoError, match="no current picture"):
                van.take_photo("camera")
        finally:
            van.stop()


def test_a_van_without_a_camera_never_loads_opencv(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from edge.van import Van, VanConfig; "
        "from sync import BrokerAddress; "
        f"v = Van(VanConfig('van-1', Path({str(tmp_path / 'j.db')!r}), '/dev/null', "
        "BrokerAddress('127.0.0.1', 1, 'van-1', 'x')), None); "
        "print('cv2' in sys.modules, v.camera is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["False", "True"]


def test_the_van_reads_its_camera_source_by_the_driver_s_rule(tmp_path: Path) -> None:
    from edge.van import ConfigError, load_config

    base = (
        'device_id = "van-1"\n[scanner]\nport = "/dev/ttyACM0"\n'
        '[broker]\nport = 1883\npassword = "x"\n'
    )
    config = tmp_path / "van.toml"
    for section, expected in {
        "": None,
        '[camera]\nsource = "0"': 0,  # a device index, which OpenCV wants as an int
        "[camera]\nsource = 1": 1,
        '[camera]\nsource = "rtsp://10.0.0.9/van"': "rtsp://10.0.0.9/van",
    }.items():
        config.write_text(base + section)
        assert load_config(config).camera_source == expected, section
    for bad in ('[camera]\nsource = ""', "[camera]\nsource = -1", "[camera]\nsource = false"):
        config.write_text(base + bad)
        with pytest.raises(ConfigError, match=r"\[camera\]"):
            load_config(config)
