"""The camera decoder reads rendered parcel labels under every distortion the simulator makes.

Harsher than the simulator's own checks (which use zxing-cpp bare): a Code 128 tilted 30
degrees, strong perspective, blur, glare, noise, low light, JPEG artefacts and a finger over
the code, each on a full 1280x720 frame, decoded by `drivers.camera.Decoder` without a time
budget (the budget is a speed trade measured in `bench decode`, not a correctness one).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from drivers.camera import Decoder
from parcel.identify import identify
from simulators import camera
from simulators.camera import CameraFrame, Scene
from simulators.parcels import GS

LABELS = {
    "code128": "RB123456785GB",
    "gs1-128": f"42012345{GS}00123456789012345675",
    "qr": "1Z999AA10123456784",
    "gs1-datamatrix": f"42012345{GS}00123456789012345675",
    "pdf417": "RB123456785GB",
    "aztec": "1Z999AA10123456784",
}


def in_view(shot: CameraFrame) -> tuple[int, int, int, int]:
    """Where the symbol is in the frame; fails the test if it is not in view."""
    assert shot.symbol_box is not None, "the symbol is not in the frame"
    return shot.symbol_box


DISTORTIONS: dict[str, Callable[[CameraFrame], NDArray[np.uint8]]] = {
    "tilted_30": lambda f: camera.rotate(f.image, 30),
    "perspective": lambda f: camera.perspective(f.image, 5, jitter=0.06),
    "gaussian_blur": lambda f: camera.gaussian_blur(f.image, 1.2),
    "motion_blur": lambda f: camera.motion_blur(f.image, 5, 15),
    "glare": lambda f: camera.glare(
        f.image, (in_view(f)[0] + 20, in_view(f)[1] + 10), (70, 40), strength=0.5
    ),
    "sensor_noise": lambda f: camera.sensor_noise(f.image, 3, sigma=10),
    "low_light": lambda f: camera.low_light(f.image, gain=0.35, contrast=0.7),
    "jpeg": lambda f: camera.jpeg(f.image, 35),
    "occluded": lambda f: camera.occlude(
        f.image, in_view(f), rng=2, fraction=0.12, kind="finger", side="right"
    ),
    "tilted_perspective_blur": lambda f: camera.gaussian_blur(
        camera.perspective(camera.rotate(f.image, -25), 9, jitter=0.04), 0.8
    ),
}

decoder = Decoder(budget_ms=None)


# A finger over bars, a PDF417 row indicator or a Data Matrix clock track leaves nothing to
# correct from, on any scanner; QR and Aztec have error correction and finders to spare.
CASES = [
    (fmt, distortion)
    for fmt in sorted(LABELS)
    for distortion in sorted(DISTORTIONS)
    if distortion != "occluded" or fmt in ("qr", "aztec")
]


@pytest.mark.parametrize(("fmt", "distortion"), CASES)
def test_every_distortion_of_a_rendered_label_is_read_exactly(
    fmt: camera.SymbolFormat, distortion: str
) -> None:
    printed = camera.render_label(LABELS[fmt], format=fmt)
    shot = Scene("cardboard", seed=7).frame(printed, angle_deg=3)
    assert shot.symbol_box is not None
    image = DISTORTIONS[distortion](shot)
    symbols = decoder.decode(image)
    assert [(s.text, s.aim) for s in symbols] == [(printed.text, printed.aim)]
    # What the camera read is a parcel the spine knows, as from the serial scanner.
    parcel = identify(symbols[0].text, symbols[0].aim)
    assert parcel.id in ("RB123456785GB", "1Z999AA10123456784", "123456789012345675")
