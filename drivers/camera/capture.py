"""The camera: frames in (`Camera`), and the camera used as a scanner (`FrameReader`).

This module owns the I/O: an OpenCV capture on a thread with a small queue that drops the
oldest frame, so a slow reader gets recent frames, never a backlog; reopening a dead stream
with backoff and jitter (`drivers.reader.ReconnectingReader`); the configured source as
OpenCV takes it (`parse_source`); and the reader thread that runs camera, decoder and deduper
and hands out `drivers.scanner.Scan` objects, resting while the scene is still
(`StillScene`).

Resting is most of a camera's day, and on a 1280x720 Motion-JPEG camera most of its cost is
not the barcode decoder but decompressing every JPEG it sends. So a camera that sends JPEG
(every USB webcam's MJPEG mode, MJPEG files and streams) is read undecoded: `Frame` carries
the camera's JPEG and decodes it only when its pixels are asked for. `FrameReader` then looks
at a still scene through a DCT-scaled, grey, eighth-size decode of the JPEG (about half the
cost of a full decode: the entropy decoding remains), a few times a second rather than every
frame (most of the saving), and decodes a full frame only when the scene moved and for the
periodic second look. Measured by ``python -m bench camera``.

What it must never do: import OpenCV at module level (it is imported when a thread starts or
a frame is looked at), or decode barcodes itself: `drivers.camera.decoder` does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.camera.decoder import CameraError, Decoder, Deduper, Symbol, _gray
from drivers.reader import Reader, ReconnectingReader
from drivers.scanner import Scan
from parcel.version import install_command, missing_modules

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]
    AnyImage = NDArray[Any]  # what callers hand in; checked to be uint8 gray/BGR/BGRA

log = logging.getLogger("drivers.camera")

# A JPEG starts with its SOI marker; a raw packet that does not is some other codec's.
_JPEG_SOI = b"\xff\xd8"
# The still check wants a picture at least this wide (StillScene's 64-cell thumbnail, each
# cell the mean of a few pixels); a camera's JPEG is decoded at the smallest DCT scale
# (1/8, 1/4, 1/2) that still gives it.
_GLANCE_MIN_WIDTH = 160


def require_camera_libraries() -> None:
    """CameraError, in one line saying what to install, if the `camera` extra is missing (a
    device without a camera installs none of OpenCV, numpy, zxing-cpp and pyzbar).

    Asked when a configuration names a camera (`parse_source`) and when one is made
    (`Camera`), so a device that has a camera but not its libraries refuses to start with that
    sentence, instead of failing later on its camera thread with an ImportError. Looks the
    modules up without importing them: OpenCV still loads only when the thread starts.
    """
    missing = missing_modules("camera")
    if missing:
        raise CameraError(
            f"the camera needs `{install_command('camera')}` (missing: {', '.join(missing)})"
        )


def parse_source(value: object) -> int | str:
    """A configured camera source as `Camera` takes it: digits are a device index.

    "0" must become the integer 0: OpenCV opens an int as a device index and a string as a
    path or URL, so "0" would be looked for as a file. Anything else is kept as written, not
    joined to a directory: a source may be a URL. A source is refused while the camera's
    libraries are not installed (`require_camera_libraries`).
    """
    require_camera_libraries()
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CameraError(f"a camera source is a string or a device index, not {value!r}")
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        index = int(value)
        if index < 0:
            raise CameraError(f"camera device index {index} is negative")
        return index
    if not value.strip():
        raise CameraError("the camera source is empty")
    return value


class Frame:
    """One picture from the camera: its pixels, or the camera's JPEG of them.

    ``jpeg`` is the undecoded Motion-JPEG frame as the camera sent it (a flat uint8 array),
    or None when the capture decoded the frame itself (`Camera` says when). `image` is the
    BGR (or grey) pixels, decoded from ``jpeg`` the first time they are asked for and kept:
    a frame nobody looks at costs no decode. A JPEG that does not decode raises CameraError
    there. Safe to share between threads (two first calls may both decode; same result).
    """

    __slots__ = ("_image", "at", "jpeg", "seq")

    def __init__(
        self,
        image: Image | None = None,
        seq: int = 0,
        at: float = 0.0,
        *,
        jpeg: Image | None = None,
    ) -> None:
        if (image is None) == (jpeg is None):
            raise CameraError("a frame is either its pixels or its JPEG")
        self._image = image
        self.jpeg = jpeg
        self.seq = seq  # 1, 2, 3... over the camera's life; a gap is frames dropped unread
        self.at = at  # time.monotonic() when the frame was grabbed

    @property
    def image(self) -> Image:
        """The frame's pixels, BGR as OpenCV delivers them (or grey)."""
        image = self._image
        if image is None:
            import cv2

            assert self.jpeg is not None  # a frame is one or the other
            decoded: Any = cv2.imdecode(self.jpeg, cv2.IMREAD_COLOR)
            if decoded is None:
                raise CameraError(f"frame {self.seq}: the camera's JPEG does not decode")
            self._image = image = decoded
        return image

    @property
    def decoded(self) -> bool:
        """True once the pixels exist (always for a frame the capture decoded)."""
        return self._image is not None

    def __repr__(self) -> str:
        kind = "jpeg" if self.jpeg is not None else "image"
        return f"Frame(seq={self.seq}, at={self.at:.3f}, {kind})"


class StillScene:
    """Says whether a frame shows what the last decoded frame showed, so the decoder can rest.

    A camera with nothing in front of it (a locker's front at night, a van's cradle) sees the
    same scene many times a second, and decoding each frame costs milliseconds of a core: a
    device that should idle at ~0 % CPU would stay busy reading an empty wall. `unchanged`
    shrinks the frame to a ``64 x 36`` grey thumbnail (each cell the mean of 25 sampled pixels,
    so sensor noise mostly cancels out) and compares it with the thumbnail of
    the last frame it let through. The scene counts as changed when at least ``min_cells``
    cells moved by more than ``cell_levels`` grey levels: a label a sixth of the frame wide
    moves dozens of cells, a phone held up moves hundreds, noise and JPEG artefacts none.

    Comparing with the last frame let through, not the previous frame, means a slow change
    (a parcel slid in by a few pixels a frame) adds up until it counts. Every
    ``refresh_frames`` frames one is let through anyway, so a code that a frame's blur or
    glare hid gets another look even when nothing moved. Pure apart from OpenCV's resize: no
    clock, no I/O.
    """

    THUMBNAIL = (64, 36)

    def __init__(self, *, cell_levels: int = 10, min_cells: int = 4, refresh_frames: int = 25):
        if refresh_frames < 1 or min_cells < 1 or cell_levels < 1:
            raise CameraError("cell_levels, min_cells and refresh_frames must be at least 1")
        self.cell_levels = cell_levels
        self.min_cells = min_cells
        self.refresh_frames = refresh_frames
        self._reference: Any = None
        self._since = 0

    def unchanged(self, image: AnyImage) -> bool:
        """True when ``image`` shows the scene last let through (so its symbols stand)."""
        import cv2
        import numpy as np

        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise CameraError("an image is a numpy uint8 array (gray, BGR or BGRA)")
        # Every 4th pixel of every 4th row first (cheap), then area-averaged: each cell is the
        # mean of some 25 samples, a fifth of the sensor noise, for a tenth of a millisecond.
        w, h = self.THUMBNAIL
        sampled = cv2.resize(image, (w * 5, h * 5), interpolation=cv2.INTER_NEAREST)
        thumb = _gray(cv2.resize(sampled, self.THUMBNAIL, interpolation=cv2.INTER_AREA))
        reference = self._reference
        if reference is not None and self._since + 1 < self.refresh_frames:
            moved = np.count_nonzero(cv2.absdiff(thumb, reference) > self.cell_levels)
            if moved < self.min_cells:
                self._since += 1
                return True
        self._reference = thumb
        self._since = 0
        return False


# ----------------------------------------------------------------------------------------------
# The camera


@dataclass
class _Capture:
    """An open capture, whether it hands out JPEG packets, and the packet read to find out."""

    capture: Any  # cv2.VideoCapture
    packets: bool
    first: Any = None


class Camera(ReconnectingReader[_Capture]):
    """Frames from a camera device, a video file or a stream, on a background thread.

    ``source``: a device index (``0``), a device path (``/dev/video0``), a video file, or a
    stream URL (``rtsp://...``, ``http://.../stream.mjpg``); whatever ``cv2.VideoCapture``
    opens. ``width``, ``height`` and ``fps`` are asked of devices that take them. For a stream
    URL, opening and each read wait at most ``stream_timeout_s``.

    The queue holds at most ``queue_frames`` frames. When it is full a new frame pushes the
    oldest out (counted in ``dropped``): a reader slower than the camera gets the latest
    frames, never a backlog that makes it lag further and further behind. ``read`` waits up to
    ``timeout`` seconds for a frame and returns None if none came (or the camera stopped).

    A video file is played at its own frame rate (``realtime``, default: on for files, off
    for devices and streams, which pace themselves), so it stands in for a camera.

    JPEG packets (``packets``, default on): OpenCV's raw mode (``CAP_PROP_FORMAT`` -1, which
    the FFmpeg backend takes for files and streams, and ``CAP_PROP_CONVERT_RGB`` off for a
    V4L2 device) hands out each frame as the camera encoded it, so the capture thread copies
    bytes instead of decompressing 1280x720 pixels 15 times a second; the `Frame` decodes
    itself when its pixels are asked for. That only works for Motion-JPEG: the first packet of
    every capture must start with a JPEG's SOI marker. A source that refuses raw mode, or
    whose packets are another codec's (H.264, a camera sending YUYV, a backend that ignores
    the setting), is reopened and read as before, decoded by OpenCV (``Frame.jpeg`` is then
    None) - the fallback costs what every frame cost before, nothing breaks. ``packets``
    says which way the current capture reads.

    Reopen: when the source ends or fails (a stream drops, a USB camera is unplugged, a file
    reaches its end) the capture is released and reopened after a delay drawn uniformly
    between ``reopen_min_s`` and a ceiling that doubles per failed attempt up to
    ``reopen_max_s`` (exponential backoff with jitter); a capture that delivered frames resets
    the ceiling. A file therefore plays again from its start. Frames are lost while the
    source is away; ``connected`` and ``on_connection`` (called on the camera's thread) say so.

    OpenCV is imported when the thread starts, never at import of this module.
    """

    error = CameraError
    log = log
    connected_on_open = False  # connected once a frame came, not when the source opened

    def __init__(
        self,
        source: int | str,
        *,
        queue_frames: int = 2,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        realtime: bool | None = None,
        packets: bool = True,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 10.0,
        stream_timeout_s: float = 5.0,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        require_camera_libraries()
        if isinstance(source, bool) or not isinstance(source, int | str):
            raise CameraError(f"a camera source is a device index or a path/URL, not {source!r}")
        if queue_frames < 1:
            raise CameraError("queue_frames must be at least 1")
        super().__init__(
            f"camera {source}",
            reconnect_min_s=reopen_min_s,
            reconnect_max_s=reopen_max_s,
            on_connection=on_connection,
        )
        self.source = source
        self._width, self._height, self._fps = width, height, fps
        self._is_file = isinstance(source, str) and Path(source).is_file()
        self._realtime = self._is_file if realtime is None else realtime
        self._try_packets = packets
        self._stream_timeout_ms = int(stream_timeout_s * 1000)
        self._frames: deque[Frame] = deque(maxlen=queue_frames)
        self._cond = threading.Condition()
        self._seq = 0
        self.packets = False  # whether the current capture hands out JPEG packets
        self.dropped = 0  # frames pushed out of the queue unread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing and wait for the thread; CameraError if it does not end in time.

        The thread ends after the frame read in progress: at once for a device or a file,
        within ``stream_timeout_s`` for a stream that went silent.
        """
        super().stop(timeout)

    def read(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame, waiting up to ``timeout`` s; None if none came or stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._frames or self._stopping.is_set(), timeout)
            return self._frames.popleft() if self._frames else None

    def _interrupt(self, timeout: float) -> None:
        # A read of the capture cannot be cancelled (it ends with the frame in progress);
        # what stop() can do at once is wake whoever waits in read().
        with self._cond:
            self._cond.notify_all()

    def _connect(self, failures: int) -> _Capture | None:
        capture = self._open_capture(failures)
        if capture is None or not self._try_packets:
            return None if capture is None else _Capture(capture, packets=False)
        opened = self._packet_capture(capture)
        if opened is not None:
            return opened
        # Not Motion-JPEG after all: read this source decoded from now on.
        self._try_packets = False
        capture.release()
        capture = self._open_capture(failures)
        return None if capture is None else _Capture(capture, packets=False)

    def _packet_capture(self, capture: Any) -> _Capture | None:
        """The capture switched to JPEG packets, with its first packet; None if it will not."""
        import cv2

        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC) or 0)
        name = fourcc.to_bytes(4, "little").decode("latin-1").upper() if fourcc > 0 else ""
        if name and name not in ("MJPG", "JPEG"):
            log.info("camera %s sends %r, not Motion-JPEG: OpenCV decodes it", self.source, name)
            return None
        raw = bool(capture.set(cv2.CAP_PROP_FORMAT, -1))
        if not raw and capture.getBackendName() == "V4L2":
            raw = bool(capture.set(cv2.CAP_PROP_CONVERT_RGB, 0))
        if not raw:
            log.info("camera %s has no raw mode: OpenCV decodes its frames", self.source)
            return None
        ok, packet = capture.read()
        if not ok or packet is None:
            return _Capture(capture, packets=True)  # nothing to judge yet: _pump ends it
        if packet.dtype.name != "uint8" or bytes(packet.ravel()[:2]) != _JPEG_SOI:
            log.info("camera %s gives no JPEG packets: OpenCV decodes its frames", self.source)
            return None
        return _Capture(capture, packets=True, first=packet.ravel())

    def _open_capture(self, failures: int) -> Any:
        import cv2

        try:
            if isinstance(self.source, str) and "://" in self.source:
                # A stream: bounded waits (FFmpeg's own default is 30 s), so a dead link is
                # noticed and stop() is not held up. Devices and files are given no such
                # parameters: a backend that does not know one refuses to open.
                capture = cv2.VideoCapture(
                    self.source,
                    cv2.CAP_ANY,
                    [
                        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                        self._stream_timeout_ms,
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        self._stream_timeout_ms,
                    ],
                )
            else:
                capture = cv2.VideoCapture(self.source)
        except cv2.error as exc:
            self._log_failure(failures, "camera %s: %s", self.source, exc)
            return None
        if not capture.isOpened():
            capture.release()
            self._log_failure(failures, "cannot open camera %s", self.source)
            return None
        if not self._is_file:
            # Keep the driver's own queue short: our queue decides what is dropped.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self._width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self._height),
            (cv2.CAP_PROP_FPS, self._fps),
        ):
            if value is not None:
                capture.set(prop, float(value))
        log.info("camera %s open", self.source)
        return capture

    def _close(self, link: _Capture) -> None:
        link.capture.release()

    def _pump(self, link: _Capture) -> bool:
        """Move frames from the capture into the queue until it fails or stop; True if any."""
        import cv2

        capture = link.capture
        self.packets = link.packets
        period = 0.0
        if self._realtime:
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            period = 1.0 / fps if 0 < fps <= 240 else 1.0 / 30
        delivered = False
        due = time.monotonic()
        pending, link.first = link.first, None
        while not self._stopping.is_set():
            if pending is not None:
                ok, data, pending = True, pending, None
            else:
                ok, data = capture.read()
            if not ok or data is None:
                if delivered or not self._is_file:
                    log.info("camera %s: no more frames", self.source)
                return delivered
            if not delivered:
                delivered = True
                self._set_connected(True)
            now = time.monotonic()
            with self._cond:
                self._seq += 1
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += 1
                if link.packets:
                    frame = Frame(seq=self._seq, at=now, jpeg=data.ravel())
                else:
                    frame = Frame(data, seq=self._seq, at=now)
                self._frames.append(frame)
                self._cond.notify()
            if period:
                due = max(due + period, now - period)
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
        return delivered


class FrameReader(Reader):
    """A camera used as a barcode scanner: frames decoded, deduplicated, handed out as `Scan`.

    Runs on its own thread: takes the camera's newest frames, decodes each with ``decoder``,
    passes the symbols through ``deduper`` and calls ``on_scan`` with a `drivers.scanner.Scan`
    per new code, timed at the frame's capture. ``on_scan`` is the same callback a
    `ScannerReader` takes; ``on_symbols`` (optional) sees every frame taken with the symbols
    that stand for it, for a viewfinder (asking a frame for its ``image`` decodes it: keep the
    `Frame`, not its pixels, when only some are wanted). An exception in a callback is logged
    and the reader carries on. The reader starts and stops the camera it was given, and warms
    the decoder up before the first frame. Frames that arrive while one is being decoded wait
    in the camera's queue, where the oldest are dropped: the reader never lags behind.

    ``skip_still`` (default on) lets a frame that shows the same scene as the last decoded one
    keep that frame's symbols instead of being decoded again (`StillScene`); off, every frame
    is decoded. When the camera sends JPEG (`Camera` ``packets``), resting costs even less:

    - the still check looks at a grey, DCT-scaled decode of the JPEG (an eighth of each side
      for 1280x720: the entropy decoding remains, the inverse DCT and colour conversion of a
      full frame do not), and a full frame is decoded only when the scene moved, and for
      `StillScene`'s periodic second look (every ``refresh_frames`` looks);
    - while the last look found the scene unchanged, the next look waits until a frame
      ``still_look_s`` (default 0.15 s) younger than the last one looked at: every third frame
      at 15 fps. A label held up is therefore seen at most ``still_look_s`` after the first
      frame that shows it; the first change puts the reader back on every frame until a look
      finds the scene still again.

    A camera whose frames OpenCV decodes (no JPEG) is checked on every frame, as the decode
    was paid for already.

    ``frames_seen`` counts frames taken from the camera, ``frames_looked`` those compared
    with the still scene, ``frames_decoded`` those the decoder looked at (with JPEG packets,
    the only frames decoded at full size by the reader).
    """

    error = CameraError
    log = log

    def __init__(
        self,
        camera: Camera,
        on_scan: Callable[[Scan], None],
        *,
        decoder: Decoder | None = None,
        deduper: Deduper | None = None,
        on_symbols: Callable[[Frame, list[Symbol]], None] | None = None,
        skip_still: bool = True,
        still_look_s: float = 0.15,
    ) -> None:
        if still_look_s < 0:
            raise CameraError("still_look_s must not be negative")
        super().__init__("frame reader")
        self.camera = camera
        self.decoder = decoder if decoder is not None else Decoder()
        self.deduper = deduper if deduper is not None else Deduper()
        self.still = StillScene() if skip_still else None
        self.still_look_s = still_look_s
        self._on_scan = on_scan
        self._on_symbols = on_symbols
        self._glance_flag: int | None = None  # cv2.IMREAD_REDUCED_GRAYSCALE_{8,4,2}
        self.frames_seen = 0
        self.frames_looked = 0
        self.frames_decoded = 0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the camera and the reader; CameraError if either does not end in time."""
        super().stop(timeout)

    def _starting(self) -> None:
        self.camera.start()

    def _interrupt(self, timeout: float) -> None:
        self.camera.stop(timeout)  # wakes our read of its queue

    def _serve(self) -> None:
        self.decoder.warm_up()
        symbols: list[Symbol] = []
        resting = False  # the last look found the scene unchanged
        looked_at = 0.0  # Frame.at of the last frame looked at
        while not self._stopping.is_set():
            frame = self.camera.read(timeout=0.5)
            if frame is None:
                continue
            try:
                if self.still is None:
                    symbols = self._decode(frame)
                elif not (
                    resting and frame.jpeg is not None and frame.at - looked_at < self.still_look_s
                ):
                    looked_at = frame.at
                    self.frames_looked += 1
                    resting = self.still.unchanged(self._glance(frame))
                    if not resting:
                        symbols = self._decode(frame)
                # else: resting, and this frame is not due a look: the same symbols stand
            except CameraError:
                log.exception("camera frame %d is not an image", frame.seq)
                continue
            self.frames_seen += 1
            if self._on_symbols is not None:
                try:
                    self._on_symbols(frame, symbols)
                except Exception:
                    log.exception("on_symbols callback failed")
            for symbol in self.deduper.feed(symbols):
                try:
                    self._on_scan(symbol.to_scan(frame.at))
                except Exception:
                    log.exception("scan callback failed for %r", symbol)

    def _decode(self, frame: Frame) -> list[Symbol]:
        symbols = self.decoder.decode(frame.image)
        self.frames_decoded += 1
        return symbols

    def _glance(self, frame: Frame) -> AnyImage:
        """What the still check compares: a small grey decode of the JPEG, or the pixels."""
        if frame.jpeg is None:
            return frame.image
        import cv2

        flags = (
            cv2.IMREAD_REDUCED_GRAYSCALE_8,
            cv2.IMREAD_REDUCED_GRAYSCALE_4,
            cv2.IMREAD_REDUCED_GRAYSCALE_2,
        )
        # The smallest scale that leaves the thumbnail enough pixels, found on the first frame
        # (a 1280x720 camera: an eighth; a 640x360 one: a quarter).
        for flag in flags if self._glance_flag is None else (self._glance_flag,):
            small: Any = cv2.imdecode(frame.jpeg, flag)
            if small is None:
                raise CameraError(f"frame {frame.seq}: the camera's JPEG does not decode")
            if small.shape[1] >= _GLANCE_MIN_WIDTH or flag == flags[-1]:
                self._glance_flag = flag
                break
        glance: AnyImage = small
        return glance
