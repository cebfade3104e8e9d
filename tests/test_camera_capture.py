"""A camera that sends JPEG is read undecoded, and rests on a still scene (drivers.camera.capture).

Behaviour, not speed (`bench camera` measures that): a Motion-JPEG source hands out its JPEG
packets and a frame is decoded only when its pixels are asked for; a still scene is looked at
through small decodes and fully decoded only for the periodic second look; a label that
appears after a still stretch is read; a source that is not Motion-JPEG is read as before.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.camera import Camera, CameraError, Decoder, Frame, FrameReader, StillScene, Symbol
from drivers.scanner import Scan
from simulators.camera import SimulatedCamera, jpeg, render_label, sensor_noise
from simulators.doorstep import doorstep_image

SCENE = doorstep_image(5, 640, 360)
TEXT = "JJD0009876543210987"


def shot(image: Any, seed: int) -> Any:
    """What a small camera delivers of ``image``: fresh sensor noise, then its JPEG."""
    return jpeg(sensor_noise(image, seed, sigma=4.0), 80)


def held_up(image: Any) -> Any:
    """The scene with a Code 128 label held up in front of it."""
    import cv2

    printed = render_label(TEXT, format="code128").image
    label: Any = cv2.resize(printed, (printed.shape[1] * 3 // 5, printed.shape[0] * 3 // 5))
    out = image.copy()
    h, w = label.shape[:2]
    out[40 : 40 + h, 240 : 240 + w] = label
    return out


def play(
    path: Path, frames: list[Any], *, fourcc: str = "MJPG", fps: float = 25.0
) -> tuple[list[Scan], list[Frame], FrameReader]:
    """Play the frames once through a camera and a reader; what it read, saw, and counted."""
    if fourcc == "MJPG":
        SimulatedCamera(frames, fps=fps, path=path)
    else:
        import cv2

        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (640, 360))
        assert writer.isOpened()
        for frame in frames:
            writer.write(frame)
        writer.release()
    scans: list[Scan] = []
    seen: list[Frame] = []

    def keep(frame: Frame, _symbols: list[Symbol]) -> None:
        seen.append(frame)

    camera = Camera(str(path), reopen_min_s=30, reopen_max_s=30)  # play it once
    reader = FrameReader(camera, scans.append, decoder=Decoder(budget_ms=None), on_symbols=keep)
    with reader:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and reader.frames_seen + camera.dropped < len(frames):
            time.sleep(0.05)
    assert reader.frames_seen + camera.dropped == len(frames)
    return scans, seen, reader


def test_a_motion_jpeg_camera_hands_out_its_jpeg_and_decodes_only_when_asked(
    tmp_path: Path,
) -> None:
    SimulatedCamera([shot(SCENE, i) for i in range(5)], path=tmp_path / "d.avi")
    with Camera(str(tmp_path / "d.avi"), reopen_min_s=30, reopen_max_s=30) as camera:
        frame = camera.read(timeout=10)
        assert frame is not None and camera.packets
        assert frame.jpeg is not None and bytes(frame.jpeg[:2]) == b"\xff\xd8"
        assert not frame.decoded
        assert frame.image.shape == (360, 640, 3) and frame.decoded
        assert frame.image is frame.image  # decoded once, kept


def test_packets_off_reads_as_before(tmp_path: Path) -> None:
    SimulatedCamera([shot(SCENE, i) for i in range(5)], path=tmp_path / "d.avi")
    camera = Camera(str(tmp_path / "d.avi"), packets=False, reopen_min_s=30, reopen_max_s=30)
    with camera:
        frame = camera.read(timeout=10)
        assert frame is not None and not camera.packets
        assert frame.jpeg is None and frame.decoded and frame.image.shape == (360, 640, 3)


def test_a_still_video_is_fully_decoded_only_for_the_periodic_second_look(
    tmp_path: Path,
) -> None:
    frames = [shot(SCENE, i) for i in range(100)]
    SimulatedCamera(frames, fps=25.0, path=tmp_path / "still.avi")
    seen: list[Frame] = []
    camera = Camera(str(tmp_path / "still.avi"), reopen_min_s=30, reopen_max_s=30)
    reader = FrameReader(
        camera,
        lambda _scan: None,
        decoder=Decoder(budget_ms=None),
        on_symbols=lambda frame, _symbols: seen.append(frame),
    )
    reader.still = StillScene(refresh_frames=5)
    with reader:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and reader.frames_seen + camera.dropped < len(frames):
            time.sleep(0.05)
    assert reader.frames_seen + camera.dropped == len(frames)
    # Looked at a few times a second (every 4th frame at 25 fps), not every frame...
    assert 1 < reader.frames_looked < reader.frames_seen / 2
    # ...and decoded in full only on the first look and every 5th look after it.
    refreshes = (reader.frames_looked - 1) // 5
    assert reader.frames_decoded == 1 + refreshes
    # No other frame had its pixels decoded, by the reader or anyone.
    assert sum(frame.decoded for frame in seen) == reader.frames_decoded


def test_a_label_held_up_after_a_still_stretch_is_read_once(tmp_path: Path) -> None:
    labelled = held_up(SCENE)
    frames = [shot(SCENE, i) for i in range(50)] + [shot(labelled, 100 + i) for i in range(15)]
    scans, seen, reader = play(tmp_path / "label.avi", frames)
    assert [(s.aim, s.data) for s in scans] == [("]C0", TEXT)]
    assert reader.camera.packets and all(frame.jpeg is not None for frame in seen)
    assert reader.frames_looked < reader.frames_seen  # it was resting when the label came
    # Read from a frame that shows it: the label's frames come after the 50 still ones.
    first_label_seq = 51
    assert any(f.seq >= first_label_seq and f.at <= scans[0].at for f in seen)


def test_a_source_that_is_not_motion_jpeg_is_read_decoded_by_opencv(tmp_path: Path) -> None:
    labelled = held_up(SCENE)
    frames = [shot(SCENE, i) for i in range(20)] + [shot(labelled, 100 + i) for i in range(15)]
    scans, seen, reader = play(tmp_path / "label.mp4", frames, fourcc="mp4v")
    assert not reader.camera.packets
    assert seen and all(frame.jpeg is None for frame in seen)
    assert [(s.aim, s.data) for s in scans] == [("]C0", TEXT)]
    # Without packets every frame is checked against the still scene (the decode was paid).
    assert reader.frames_looked == reader.frames_seen


def test_a_frame_is_its_pixels_or_its_jpeg_and_a_bad_jpeg_is_a_camera_error() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(CameraError):
        Frame(pixels, 1, 0.0, jpeg=np.zeros(10, np.uint8))
    with pytest.raises(CameraError):
        Frame(None, 1, 0.0)
    broken = Frame(seq=3, at=0.0, jpeg=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8))
    with pytest.raises(CameraError, match="frame 3"):
        _ = broken.image
