"""Cameras: frames from a camera, a video file or a stream in; barcode reads out, as a scanner.

This package owns the camera as a barcode reader. A read made by the camera comes out exactly as
the serial scanner sends it (PROTOCOLS.md section 1): the same data text, with GS (0x1D) where
the symbol carries a GS1 FNC1 after the first position, and the same AIM symbology identifier
(``]C1`` GS1-128, ``]d2`` GS1 DataMatrix, ``]Q1`` QR...), kept apart from the text as the
serial `Scan` keeps it. `FrameReader` even hands out `drivers.scanner.Scan` objects, so
whatever takes a serial scanner's reads takes a camera's.

The layers, one module each, imports flowing one way (capture -> decoder -> regions, zbar):

- `decoder`: `Decoder`, one image in, the `Symbol` list out; pure apart from the clock of its
  time budget and its logging. zxing-cpp reads the whole frame first; then candidate regions
  found in the image's gradients are straightened (rotated to their angle,
  perspective-corrected) and retried, with contrast treatments, by zxing-cpp and by zbar
  (through pyzbar's library) as a second opinion. And `Deduper`: a code in view for many
  frames is reported once, and again only after it has been out of view for a while.
- `regions`: where the codes probably are (the region search), their straightened crops, the
  contrast treatments and the order in which the decoder tries them.
- `zbar`: the second opinion, a typed binding to libzbar's image scanner.
- `capture`: `Camera`, the I/O; an OpenCV capture on a thread with a small queue that drops
  the oldest frame, so a slow reader gets recent frames, never a backlog; reopens a dead
  stream; takes a Motion-JPEG camera's frames as JPEG, decoded only when looked at.
  `FrameReader`: camera, decoder and deduper on a thread, reads handed to a callback, resting
  on a still scene.

This module is the public surface only: import from ``drivers.camera``, not from its modules.
Everything logs to the ``drivers.camera`` logger.

What it must never do:

- report a code no decoder vouched for: every symbol comes from zxing-cpp or zbar with their
  checks passed; the image processing here only straightens and cleans pixels for them.
- alter the data: no trimming, no translation of control characters, no AIM id in the text.
- raise out of a decode because a decoder library failed: that is logged and counted as a miss.
- import OpenCV at module level: ``import drivers.camera`` stays cheap, and devices without a
  camera never load it. (numpy, zxing-cpp and pyzbar are imported lazily too, in every module
  of the package.)
- know what a code means: parcel identifiers belong to ``edge``.
"""

from drivers.camera.capture import Camera, Frame, FrameReader, StillScene, parse_source
from drivers.camera.decoder import (
    DEFAULT_BUDGET_MS,
    PARCEL_FORMATS,
    CameraError,
    Decoder,
    Deduper,
    Symbol,
)

__all__ = [
    "DEFAULT_BUDGET_MS",
    "PARCEL_FORMATS",
    "Camera",
    "CameraError",
    "Decoder",
    "Deduper",
    "Frame",
    "FrameReader",
    "StillScene",
    "Symbol",
    "parse_source",
]
