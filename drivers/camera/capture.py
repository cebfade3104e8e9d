"""The camera: frames in (`Camera`), and the camera used as a scanner (`FrameReader`).

This module owns the I/O: an OpenCV capture on a thread with a small queue that drops the
oldest frame, so a slow reader gets recent frames, never a backlog; reopening a dead stream
with backoff and jitter; the configured source as OpenCV takes it (`parse_source`); and the
reader thread that runs camera, decoder and deduper and hands out `drivers.scanner.Scan`
objects, resting the decoder while the scene is still (`StillScene`).

What it must never do: import OpenCV at module level (it is imported when a thread starts or
a frame is looked at), or decode itself: `drivers.camera.decoder` does.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from drivers.camera.decoder import CameraError, Decoder, Deduper, Symbol, _gray
from drivers.scanner import Scan

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]
    AnyImage = NDArray[Any]  # what callers hand in; checked to be uint8 gray/BGR/BGRA

log = logging.getLogger("drivers.camera")


def parse_source(value: object) -> int | str:
    """A configured camera source as `Camera` takes it: digits are a device index.

    "0" must become the integer 0: OpenCV opens an int as a device index and a string as a
    path or URL, so "0" would be looked for as a file. Anything else is kept as written, not
    joined to a directory: a source may be a URL.
    """
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


@dataclass(frozen=True)
class Frame:
    """One picture from the camera."""

    image: Image  # BGR (or gray) pixels as OpenCV delivers them
    seq: int  # 1, 2, 3... over the camera's life; a gap is frames dropped unread
    at: float  # time.monotonic() when the frame was grabbed


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


class Camera:
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

    Reopen: when the source ends or fails (a stream drops, a USB camera is unplugged, a file
    reaches its end) the capture is released and reopened after a delay drawn uniformly
    between ``reopen_min_s`` and a ceiling that doubles per failed attempt up to
    ``reopen_max_s`` (exponential backoff with jitter); a capture that delivered frames resets
    the ceiling. A file therefore plays again from its start. Frames are lost while the
    source is away; ``connected`` and ``on_connection`` (called on the camera's thread) say so.

    OpenCV is imported when the thread starts, never at import of this module.
    """

    def __init__(
        self,
        source: int | str,
        *,
        queue_frames: int = 2,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        realtime: bool | None = None,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 10.0,
        stream_timeout_s: float = 5.0,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        if isinstance(source, bool) or not isinstance(source, int | str):
            raise CameraError(f"a camera source is a device index or a path/URL, not {source!r}")
        if queue_frames < 1:
            raise CameraError("queue_frames must be at least 1")
        if not 0 < reopen_min_s <= reopen_max_s:
            raise CameraError("need 0 < reopen_min_s <= reopen_max_s")
        self.source = source
        self._width, self._height, self._fps = width, height, fps
        self._is_file = isinstance(source, str) and Path(source).is_file()
        self._realtime = self._is_file if realtime is None else realtime
        self._reopen_min_s, self._reopen_max_s = reopen_min_s, reopen_max_s
        self._stream_timeout_ms = int(stream_timeout_s * 1000)
        self._on_connection = on_connection
        self._frames: deque[Frame] = deque(maxlen=queue_frames)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._jitter = random.Random()
        self._seq = 0
        self._connected = False
        self.dropped = 0  # frames pushed out of the queue unread

    @property
    def connected(self) -> bool:
        """True while the source is open and delivering."""
        return self._connected

    def start(self) -> None:
        """Start the capture thread. A camera runs once: make a new one after `stop`."""
        if self._thread is not None:
            raise CameraError("camera already started")
        self._thread = threading.Thread(target=self._run, name=f"camera {self.source}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing and wait for the thread; CameraError if it does not end in time.

        The thread ends after the frame read in progress: at once for a device or a file,
        within ``stream_timeout_s`` for a stream that went silent.
        """
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise CameraError(f"camera {self.source} did not stop within {timeout} s")

    def read(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame, waiting up to ``timeout`` s; None if none came or stopped."""
        with self._cond:
            self._cond.wait_for(lambda: self._frames or self._stopping.is_set(), timeout)
            return self._frames.popleft() if self._frames else None

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            failures = 0
            while not self._stopping.is_set():
                capture = self._open(failures)
                if capture is None:
                    failures += 1
                else:
                    delivered = self._pump(capture)
                    capture.release()
                    self._set_connected(False)
                    failures = 0 if delivered else failures + 1
                if self._stopping.wait(self._backoff(failures)):
                    break
        except Exception:
            log.exception("camera thread for %s died", self.source)
            self._set_connected(False)
            raise

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._reopen_max_s, self._reopen_min_s * 2 ** min(failures, 32))
        return self._jitter.uniform(self._reopen_min_s, ceiling)

    def _open(self, failures: int) -> Any:
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
            log.log(
                logging.WARNING if failures == 0 else logging.DEBUG,
                "camera %s: %s",
                self.source,
                exc,
            )
            return None
        if not capture.isOpened():
            capture.release()
            log.log(
                logging.WARNING if failures == 0 else logging.DEBUG,
                "cannot open camera %s",
                self.source,
            )
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

    def _pump(self, capture: Any) -> bool:
        """Move frames from the capture into the queue until it fails or stop; True if any."""
        import cv2

        period = 0.0
        if self._realtime:
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            period = 1.0 / fps if 0 < fps <= 240 else 1.0 / 30
        delivered = False
        due = time.monotonic()
        while not self._stopping.is_set():
            ok, image = capture.read()
            if not ok or image is None:
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
                self._frames.append(Frame(image=image, seq=self._seq, at=now))
                self._cond.notify()
            if period:
                due = max(due + period, now - period)
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
        return delivered

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if self._on_connection is not None:
            try:
                self._on_connection(connected)
            except Exception:
                log.exception("camera on_connection callback failed")


class FrameReader:
    """A camera used as a barcode scanner: frames decoded, deduplicated, handed out as `Scan`.

    Runs on its own thread: takes the camera's newest frames, decodes each with ``decoder``,
    passes the symbols through ``deduper`` and calls ``on_scan`` with a `drivers.scanner.Scan`
    per new code, timed at the frame's capture. ``on_scan`` is the same callback a
    `ScannerReader` takes; ``on_symbols`` (optional) sees every decoded frame's symbols, for
    a viewfinder. An exception in a callback is logged and the reader carries on. The reader
    starts and stops the camera it was given, and warms the decoder up before the first
    frame. Frames that arrive while one is being decoded wait in the camera's queue, where
    the oldest are dropped: the reader never lags behind the camera.

    ``skip_still`` (default on) lets a frame that shows the same scene as the last decoded one
    keep that frame's symbols instead of being decoded again (`StillScene`), so a camera
    facing an unchanging scene costs the capture and a thumbnail per frame, not a decode; off,
    every frame is decoded. ``frames_seen`` counts frames taken from the camera,
    ``frames_decoded`` those the decoder looked at.
    """

    def __init__(
        self,
        camera: Camera,
        on_scan: Callable[[Scan], None],
        *,
        decoder: Decoder | None = None,
        deduper: Deduper | None = None,
        on_symbols: Callable[[Frame, list[Symbol]], None] | None = None,
        skip_still: bool = True,
    ) -> None:
        self.camera = camera
        self.decoder = decoder if decoder is not None else Decoder()
        self.deduper = deduper if deduper is not None else Deduper()
        self.still = StillScene() if skip_still else None
        self._on_scan = on_scan
        self._on_symbols = on_symbols
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_seen = 0
        self.frames_decoded = 0

    def start(self) -> None:
        if self._thread is not None:
            raise CameraError("frame reader already started")
        self.camera.start()
        self._thread = threading.Thread(target=self._run, name="camera-decoder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.camera.stop(timeout)
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise CameraError(f"frame reader did not stop within {timeout} s")

    def __enter__(self) -> FrameReader:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        self.decoder.warm_up()
        symbols: list[Symbol] = []
        while not self._stopping.is_set():
            frame = self.camera.read(timeout=0.5)
            if frame is None:
                continue
            try:
                if self.still is None or not self.still.unchanged(frame.image):
                    symbols = self.decoder.decode(frame.image)
                    self.frames_decoded += 1
                # else: the same scene as the last decoded frame, so the same symbols
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
