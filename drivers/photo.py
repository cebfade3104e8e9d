"""Proof-of-delivery photos: a camera frame or an image file made into a small JPEG.

Why these numbers. A doorstep photo must show that the parcel is there and where (the door,
the house number, the safe place); that needs a few hundred pixels across a door, not the
camera's full resolution. `LONG_SIDE` = 960 px (960x540 from a 16:9 frame, 960x720 from 4:3)
keeps a house number 10 cm tall legible from 3 m with a common phone-camera field of view.
`python -m bench photo` measured: a 1280x720 doorstep scene comes to a median 61 KB at quality
75 (35 KB at 640 px, where the number blurs; 133 KB at 1280 px, over the ceiling), a fifth of
the camera app's full-size JPEG. The hard ceiling `MAX_BYTES` = 100 KB keeps a day's photos
of a 150-stop round around 10 MB of SD card and cellular data, and one photo within 7 chunks
of the uplink. A busy close-up that will not fit at 75 (3 of the 5 real camera frames in the
benchmark set) steps down the quality ladder, then the size, rather than be refused: a worse
photo beats no proof.

No metadata is written (OpenCV's encoder writes none): where the photo was taken is in the
event, signed into the journal's hash chain, not in EXIF that a customer's copy would leak.
OpenCV is imported on first use, never at import of this module: it comes with the `camera`
extra, and a van installed without it refuses a photo with the sentence that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.errors import DriverError
from parcel.version import install_command, missing_modules

LONG_SIDE = 960
MAX_BYTES = 100_000
QUALITIES = (75, 65, 55, 45, 35)
MIN_LONG_SIDE = 320  # below this a photo proves nothing; refuse rather than shrink further


class PhotoError(DriverError):
    """An image that cannot be made into a proof-of-delivery photo (unreadable, empty)."""


@dataclass(frozen=True)
class Jpeg:
    """An encoded photo: its bytes, pixel size and the JPEG quality that made it fit."""

    data: bytes
    width: int
    height: int
    quality: int


def _require_opencv() -> None:
    """PhotoError, in one line saying what to install, when the `camera` extra (OpenCV) is
    missing: the courier's outcome is refused with it instead of the van's input thread
    dying of an ImportError."""
    if missing_modules("camera"):
        raise PhotoError(f"photos need `{install_command('camera')}` (OpenCV)")


def encode_photo(image: Any, *, long_side: int = LONG_SIDE, max_bytes: int = MAX_BYTES) -> Jpeg:
    """Downscale (never upscale) to `long_side` and encode at the best quality that fits."""
    _require_opencv()
    import cv2
    import numpy as np

    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise PhotoError("a photo needs a non-empty 2-D (gray) or 3-D (colour) pixel array")
    if image.dtype != np.uint8:
        raise PhotoError(f"a photo needs 8-bit pixels, not {image.dtype}")
    side = long_side
    while side >= MIN_LONG_SIDE:
        scaled = _scaled(cv2, image, side)
        for quality in QUALITIES:
            ok, buf = cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise PhotoError("the JPEG encoder refused the image")
            if len(buf) <= max_bytes:
                height, width = scaled.shape[:2]
                return Jpeg(buf.tobytes(), int(width), int(height), quality)
        side = int(side * 0.75)
    raise PhotoError(f"the image does not fit in {max_bytes} bytes even at {MIN_LONG_SIDE} px")


def load_photo(path: str | Path, **limits: int) -> Jpeg:
    """Read an image file (JPEG, PNG, ...) from another app and make it our photo."""
    _require_opencv()
    import cv2

    target = Path(path)
    if not target.is_file():
        raise PhotoError(f"no photo file at {target}")
    image = cv2.imread(str(target), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoError(f"{target} is not an image OpenCV can read")
    return encode_photo(image, **limits)


def _scaled(cv2: Any, image: Any, long_side: int) -> Any:
    height, width = image.shape[:2]
    factor = long_side / max(height, width)
    if factor >= 1.0:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
