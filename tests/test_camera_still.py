"""A camera facing an unchanging scene does not decode every frame (drivers.camera.StillScene).

The gate must rest on noise and JPEG artefacts, wake on a label however it arrives (at once,
or a few pixels a frame), look again now and then, and never change what is read: a label in
view is still reported once, and a label that appears after a still stretch is reported.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.camera import Camera, CameraError, Decoder, FrameReader, StillScene
from drivers.scanner import Scan
from simulators.camera import SimulatedCamera, jpeg, sensor_noise
from simulators.doorstep import doorstep_image
from tests.test_camera_decode import FNC1, GS1_TEXT, SSCC, python_barcode

SCENE = doorstep_image(7, 640, 360)


def shot(image: Any, seed: int) -> Any:
    """What a small camera delivers of ``image``: fresh sensor noise, then its JPEG."""
    return jpeg(sensor_noise(image, seed, sigma=6.0), 70)


def with_label(image: Any, x: int, y: int) -> Any:
    """The scene with a GS1-128 label stuck on it, its top-left corner at (x, y)."""
    import cv2

    label = python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}", 1, 40)
    out = image.copy()
    h, w = label.shape
    out[y : y + h, x : x + w] = cv2.cvtColor(label, cv2.COLOR_GRAY2BGR)
    return out


def test_noise_and_jpeg_alone_do_not_wake_the_decoder() -> None:
    gate = StillScene(refresh_frames=25)
    verdicts = [gate.unchanged(shot(SCENE, seed)) for seed in range(50)]
    # The first frame is always decoded; then one in every 25 is let through to look again.
    assert verdicts.count(False) == 2
    assert [i for i, v in enumerate(verdicts) if not v] == [0, 25]


def test_a_label_arriving_wakes_the_decoder_at_once() -> None:
    gate = StillScene()
    assert gate.unchanged(shot(SCENE, 1)) is False
    assert gate.unchanged(shot(SCENE, 2)) is True
    labelled = with_label(SCENE, 400, 250)  # a label about a sixth of the frame wide
    assert gate.unchanged(shot(labelled, 3)) is False
    assert gate.unchanged(shot(labelled, 4)) is True  # now that scene is the still one
    assert gate.unchanged(shot(SCENE, 5)) is False  # and its going is a change too


def test_a_slow_change_adds_up_until_it_counts() -> None:
    """Dusk: each frame a grey level darker than the last, never a change from frame to
    frame, but against the last decoded frame it soon is."""
    gate = StillScene(refresh_frames=1000)
    verdicts = []
    for step in range(30):
        darker = np.clip(SCENE.astype(np.int16) - step, 0, 255).astype(np.uint8)
        verdicts.append(gate.unchanged(darker))
    woke = [i for i, v in enumerate(verdicts) if not v]
    assert woke[0] == 0 and len(woke) >= 2
    assert all(b - a <= gate.cell_levels + 2 for a, b in itertools.pairwise(woke))


def test_not_an_image_is_a_camera_error() -> None:
    gate = StillScene()
    with pytest.raises(CameraError):
        gate.unchanged(np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(CameraError):
        gate.unchanged("frame")  # type: ignore[arg-type]
    with pytest.raises(CameraError):
        StillScene(refresh_frames=0)


def read_video(frames: list[Any], skip_still: bool) -> tuple[list[Scan], FrameReader]:
    video = SimulatedCamera(frames, fps=25.0)
    try:
        scans: list[Scan] = []
        camera = Camera(video.source, reopen_min_s=30, reopen_max_s=30)  # play it once
        reader = FrameReader(
            camera, scans.append, decoder=Decoder(budget_ms=None), skip_still=skip_still
        )
        with reader:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and reader.frames_seen + camera.dropped < len(frames):
                time.sleep(0.05)
        return scans, reader
    finally:
        video.close()


def test_frame_reader_rests_on_a_still_scene_and_still_reads_what_arrives(
    tmp_path: Path,
) -> None:
    """Forty frames of an empty doorstep, then a label held up for twenty, then gone."""
    labelled = with_label(SCENE, 200, 150)
    frames = (
        [shot(SCENE, i) for i in range(40)]
        + [shot(labelled, 100 + i) for i in range(20)]
        + [shot(SCENE, 200 + i) for i in range(10)]
    )
    scans, reader = read_video(frames, skip_still=True)
    assert reader.frames_seen + reader.camera.dropped == len(frames)
    assert [(s.aim, s.data) for s in scans] == [("]C1", GS1_TEXT)]
    # Decoded: the first frame, the label's arrival and going, and a look every 25 frames.
    assert 3 <= reader.frames_decoded <= 8 < reader.frames_seen
    # Without the gate every frame taken is decoded (a slow decoder drops the oldest frames
    # in the camera's queue), and the read is the same.
    scans, reader = read_video(frames, skip_still=False)
    assert reader.frames_decoded == reader.frames_seen > 8
    assert [(s.aim, s.data) for s in scans] == [("]C1", GS1_TEXT)]
