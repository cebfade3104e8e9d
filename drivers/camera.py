"""Cameras: frames from a camera, a video file or a stream in; barcode reads out, as a scanner.

This module owns the camera as a barcode reader. A read made by the camera comes out exactly as
the serial scanner sends it (PROTOCOLS.md section 1): the same data text, with GS (0x1D) where
the symbol carries a GS1 FNC1 after the first position, and the same AIM symbology identifier
(``]C1`` GS1-128, ``]d2`` GS1 DataMatrix, ``]Q1`` QR...), kept apart from the text as the
serial `Scan` keeps it. `FrameReader` even hands out `drivers.scanner.Scan` objects, so
whatever takes a serial scanner's reads takes a camera's.

The layers:

- `Decoder`: one image in, the `Symbol` list out; pure apart from the clock of its time budget
  and its logging. zxing-cpp reads the whole frame first; then candidate regions found in the
  image's gradients are straightened (rotated to their angle, perspective-corrected) and
  retried, with contrast treatments, by zxing-cpp and by zbar (through pyzbar's library) as
  a second opinion.
- `Deduper`: a code in view for many frames is reported once, and again only after it has
  been out of view for a while.
- `Camera`: the I/O; an OpenCV capture on a thread with a small queue that drops the oldest
  frame, so a slow reader gets recent frames, never a backlog; reopens a dead stream.
- `FrameReader`: camera, decoder and deduper on a thread, reads handed to a callback.

What it must never do:

- report a code no decoder vouched for: every symbol comes from zxing-cpp or zbar with their
  checks passed; the image processing here only straightens and cleans pixels for them.
- alter the data: no trimming, no translation of control characters, no AIM id in the text.
- raise out of a decode because a decoder library failed: that is logged and counted as a miss.
- import OpenCV at module level: ``import drivers.camera`` stays cheap, and devices without a
  camera never load it. (numpy, zxing-cpp and pyzbar are imported lazily too.)
- know what a code means: parcel identifiers belong to ``edge``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError
from drivers.scanner import Scan

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]
    AnyImage = NDArray[Any]  # what callers hand in; checked to be uint8 gray/BGR/BGRA
    Points = tuple[tuple[float, float], ...]

__all__ = [
    "DEFAULT_BUDGET_MS",
    "PARCEL_FORMATS",
    "Camera",
    "CameraError",
    "Decoder",
    "Deduper",
    "Frame",
    "FrameReader",
    "Symbol",
]

log = logging.getLogger("drivers.camera")

#: Formats read by default: what parcel labels, retail barcodes on parcels and phone screens
#: carry. Names are zxing-cpp's formats, lower-cased.
PARCEL_FORMATS = (
    "aztec",
    "code128",
    "code39",
    "datamatrix",
    "ean13",
    "ean8",
    "itf",
    "pdf417",
    "qrcode",
    "upca",
    "upce",
)

# Our format name -> zxing-cpp BarcodeFormat member used to request it.
_ZXING_REQUEST = {
    "aztec": "Aztec",
    "codabar": "Codabar",
    "code128": "Code128",
    "code39": "Code39",
    "code93": "Code93",
    "databar": "DataBar",
    "datamatrix": "DataMatrix",
    "ean13": "EAN13",
    "ean8": "EAN8",
    "itf": "ITF",
    "maxicode": "MaxiCode",
    "microqr": "MicroQRCode",
    "pdf417": "PDF417",
    "qrcode": "QRCode",
    "upca": "UPCA",
    "upce": "UPCE",
}
# Formats looked for in a straightened linear crop: the linear codes, and PDF417 (stacked
# bars). Other crops and the whole frame are searched for every format.
_LINEAR_CROP_FORMATS = frozenset(
    {
        "codabar",
        "code128",
        "code39",
        "code93",
        "databar",
        "ean13",
        "ean8",
        "itf",
        "pdf417",
        "upca",
        "upce",
    }
)
# zxing-cpp's reported format (BarcodeFormat name) -> our name; variants fold to their family.
_ZXING_NAME = {
    "Aztec": "aztec",
    "AztecCode": "aztec",
    "AztecRune": "aztec",
    "Codabar": "codabar",
    "Code128": "code128",
    "Code39": "code39",
    "Code39Std": "code39",
    "Code39Ext": "code39",
    "Code93": "code93",
    "DataBar": "databar",
    "DataBarOmni": "databar",
    "DataBarStk": "databar",
    "DataBarStkOmni": "databar",
    "DataBarLtd": "databar",
    "DataBarExp": "databar",
    "DataBarExpStk": "databar",
    "DataMatrix": "datamatrix",
    "EAN13": "ean13",
    "EAN8": "ean8",
    "ITF": "itf",
    "ITF14": "itf",
    "MaxiCode": "maxicode",
    "MicroQRCode": "microqr",
    "PDF417": "pdf417",
    "CompactPDF417": "pdf417",
    "QRCode": "qrcode",
    "QRCodeModel1": "qrcode",
    "QRCodeModel2": "qrcode",
    "UPCA": "upca",
    "UPCE": "upce",
}

# zbar symbol types (zbar.h `zbar_symbol_type_t`) for the formats zbar reads well: linear codes
# and QR. (Its PDF417 decoder never returns data; it has no DataMatrix or Aztec.) UPC-A comes
# out of zbar as a 13-digit EAN-13 with a leading 0, as it does out of zxing-cpp; zbar's UPC-E
# (8 digits, where zxing-cpp expands to 13) stays off so the two never disagree on a text.
_ZBAR_TYPES = {
    8: "ean8",
    13: "ean13",
    25: "itf",
    39: "code39",
    64: "qrcode",
    93: "code93",
    128: "code128",
}
_ZBAR_MOD_GS1 = 1 << 0  # zbar.h ZBAR_MOD_GS1: the symbol began with FNC1 (GS1 data).
_ZBAR_CFG_ENABLE = 0  # zbar.h ZBAR_CFG_ENABLE
_ZBAR_CFG_MIN_LEN = 0x20  # zbar.h ZBAR_CFG_MIN_LEN
_ZBAR_CFG_X_DENSITY = 0x100  # zbar.h ZBAR_CFG_X_DENSITY: scan every n-th column
_ZBAR_CFG_Y_DENSITY = 0x101  # zbar.h ZBAR_CFG_Y_DENSITY: scan every n-th row
_ZBAR_FOURCC_Y800 = 0x30303859  # "Y800": 8-bit gray

# AIM symbology identifiers (ISO/IEC 15424, PROTOCOLS.md section 1) for zbar's reads, which
# carry none. ITF: zbar verifies no check digit, hence modifier 0.
_ZBAR_AIM = {
    "code128": "]C0",
    "code39": "]A0",
    "code93": "]G0",
    "ean13": "]E0",
    "ean8": "]E4",
    "itf": "]I0",
    "qrcode": "]Q1",
}
_ZBAR_AIM_GS1 = {"code128": "]C1", "qrcode": "]Q3"}

DEFAULT_BUDGET_MS = 15.0
# The full-frame pass runs on at most this many pixels (a tilted 640 x 480 photo fits); a larger
# frame is shrunk for it, and its full resolution is used in the straightened region crops.
FULL_PASS_PIXELS = 320_000
# Region finding: gradients on the image shrunk by a whole factor to at most this many pixels
# (1280 x 720 by 2: thin bars must survive it), pooled into square cells of CELL_PX pixels.
ANALYSIS_PIXELS = 240_000
CELL_PX = 4
MAX_REGIONS = 6
# What one decoder call is predicted to cost before it has been measured on this machine,
# in milliseconds per megapixel, and a floor for tiny images (call overhead).
_PRIOR_MS_PER_MP = {
    "full": 10.0,
    "regions": 15.0,
    "crop": 6.0,
    "zxing": 20.0,
    "zxing/linear": 10.0,
    "zxing/bars": 4.0,
    "zbar": 30.0,
    "zbar/rows": 6.0,
}
_MIN_STEP_MS = 0.1


class CameraError(DriverError):
    """A camera or an image that cannot be used as given; retrying will not help."""


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


@dataclass(frozen=True)
class Symbol:
    """One barcode in an image, with its data exactly as a serial scanner would send it.

    ``text`` is the data without the AIM identifier: GS1 data without its leading FNC1 and
    with GS (0x1D) for every later one, control characters untouched. For ASCII data (every
    parcel identifier) ``aim + text`` is byte for byte what the scanner sends; other text is
    decoded by the symbol's character set (ECI, or the symbology's default).
    ``aim`` is the AIM symbology identifier (``]C1``...), None if the decoder gave none.
    ``format`` is the symbology in lower case (``code128``, ``qrcode``, see `PARCEL_FORMATS`);
    ``corners`` the symbol's outline in image pixels, clockwise from its top-left as read;
    ``source`` which strategy read it, e.g. ``zxing``, ``zbar``, ``zxing/region/clahe``.
    """

    text: str
    aim: str | None
    format: str
    corners: Points
    source: str

    @property
    def key(self) -> tuple[str, str]:
        """What makes two reads the same code: ``(text, format)``."""
        return (self.text, self.format)

    def to_scan(self, at: float) -> Scan:
        """The serial scanner's `Scan` for this read (``raw`` is UTF-8, i.e. ASCII for codes)."""
        return Scan(
            data=self.text, aim=self.aim, raw=((self.aim or "") + self.text).encode(), at=at
        )


# ----------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class _Region:
    """Where a barcode probably is: a quadrilateral in full-image pixels.

    ``corners`` run clockwise from the top-left as the code reads: for a linear region the
    first edge runs along the reading direction (across the bars).
    """

    corners: tuple[tuple[float, float], ...]
    linear: bool  # one dominant gradient direction: a 1D code or a PDF417
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return _centre(self.corners)

    def size(self) -> tuple[float, float]:
        """Its length (first edge) and thickness (second edge), averaged over both sides."""
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = self.corners
        length = (math.hypot(bx - ax, by - ay) + math.hypot(cx - dx, cy - dy)) / 2
        thickness = (math.hypot(dx - ax, dy - ay) + math.hypot(cx - bx, cy - by)) / 2
        return length, thickness


@dataclass(frozen=True)
class _Read:
    """A decoder's answer before it is mapped back into the image."""

    text: str
    aim: str | None
    format: str
    corners: list[tuple[float, float]]


class _Costs:
    """What each step costs on this machine, in ms per megapixel, learnt as it runs.

    Steps: ``full`` (zxing-cpp on the whole frame), ``regions`` (the region search),
    ``crop`` (straightening and treating a crop), ``zxing``, ``zxing/linear`` and
    ``zxing/bars`` (zxing-cpp on a crop: every reader; the linear ones and PDF417's; the
    linear ones alone, kept apart because PDF417's reader costs ten times theirs), ``zbar``
    (the whole frame) and ``zbar/rows`` (a linear crop, along its rows).
    """

    def __init__(self) -> None:
        self._ms_per_mp = dict(_PRIOR_MS_PER_MP)

    def predict(self, step: str, pixels: int) -> float:
        return max(_MIN_STEP_MS, self._ms_per_mp[step] * pixels / 1e6)

    def learn(self, step: str, pixels: int, ms: float) -> None:
        if pixels >= 10_000:  # below, call overhead dominates and says nothing per pixel
            self._ms_per_mp[step] = 0.8 * self._ms_per_mp[step] + 0.2 * ms * 1e6 / pixels


class _Found:
    """Symbols found so far in one image, deduplicated by ``(text, format)``, in order."""

    def __init__(self) -> None:
        self.symbols: list[Symbol] = []
        self._keys: set[tuple[str, str]] = set()

    def add(self, symbol: Symbol, *, second_opinion: bool = False) -> bool:
        if symbol.key in self._keys:
            return False
        if second_opinion and self._contradicts(symbol):
            log.debug("second opinion %r disagrees with a read at the same place", symbol)
            return False
        self._keys.add(symbol.key)
        self.symbols.append(symbol)
        return True

    def _contradicts(self, symbol: Symbol) -> bool:
        # zbar reading a code zxing-cpp already read, with a different text (zbar guesses
        # character sets differently): the first reader's text stands.
        cx, cy = _centre(symbol.corners)
        return any(
            s.format == symbol.format and _inside(cx, cy, s.corners, grow=0.2) for s in self.symbols
        )

    def covers(self, region: _Region) -> bool:
        x, y = region.centre
        return any(_inside(x, y, s.corners, grow=0.3) for s in self.symbols)


class Decoder:
    """Finds the barcodes in one image: ``decode(image) -> list[Symbol]``.

    Strategy, most likely reads first:

    1. zxing-cpp on the whole frame, shrunk by a whole factor to at most `FULL_PASS_PIXELS`
       pixels if larger, at all scales (``try_downscale``); upright and upside down only
       (``try_rotate`` off: the region crops below cover every other angle, for less).
    2. Candidate regions (`_find_regions`): image gradients pooled into cells give texture
       energy and orientation coherence (the structure tensor); textured blobs of alternating
       edges are code candidates, the coherent ones linear codes (or PDF417) with their
       reading angle. Each region not already covered by a read is cut out straightened (a
       perspective warp of its outline onto an upright rectangle) and tried with zxing-cpp
       (a linear crop with the linear readers along its rows; any other crop with every
       reader, both ways round and inverted, for a phone screen in dark mode), then for a
       linear crop with zbar along its rows (the second opinion); as it is, and after CLAHE,
       a sharpening and Otsu binarisation, then as last resorts for the best region
       straightened at twice the resolution or thresholded globally (`_LAST_RESORTS`), in
       the order of `_attempts`: the attempts most likely to read come first, so that a
       slower machine, whose budget ends sooner, loses only the unlikely ones. PDF417's
       reader, ten times the cost of the linear ones, looks only at untreated linear crops.
       Once a code has been read, only regions not much weaker than the best get one more
       untreated look.
    3. zbar's second opinion on the whole frame (linear codes and QR), if nothing was read.

    zbar runs after zxing-cpp's region crops, not before: on the bench's photos, tilted
    copies and 1280 x 720 frames it read almost nothing zxing-cpp missed on a whole frame,
    while the crops did, and the time budget is better spent there. A zbar read at the place
    of an earlier read of the same format with another text is dropped as a disagreement
    (zbar guesses character sets where zxing-cpp follows ECI).

    Reads are deduplicated by ``(text, format)``, in the order found.

    Time budget: ``budget_ms`` counts from the call. The first pass always runs. Every later
    step (the region search, each crop and each decoder call on it, the whole-frame zbar
    pass) starts only if the time already spent plus the step's predicted cost (a running
    mean of its cost per megapixel on this machine) fits in the budget; otherwise decode
    stops there and returns what it has. A step is never interrupted, so a decode overruns
    the budget only by a step that took longer than predicted. On a camera the next frame is
    the next chance. ``budget_ms=None`` tries everything whatever it costs.

    Failures: an exception from a decoder library or from the image processing is logged
    (``drivers.camera``, warning) and that attempt counts as a miss; ``decode`` still returns
    whatever the other attempts found. ``misses`` counts such failures. Only an argument that
    is not an image raises (`CameraError`).

    Not thread-safe (the cost estimates and counters are per instance): one per thread.
    """

    def __init__(
        self,
        *,
        budget_ms: float | None = DEFAULT_BUDGET_MS,
        second_opinion: bool = True,
        formats: Iterable[str] = PARCEL_FORMATS,
        full_pass_pixels: int = FULL_PASS_PIXELS,
        try_rotate: bool = False,
        try_downscale: bool = True,
        regions: bool = True,
        max_regions: int = MAX_REGIONS,
    ) -> None:
        if budget_ms is not None and budget_ms <= 0:
            raise CameraError("budget_ms must be positive, or None for no budget")
        names = tuple(formats)
        unknown = [f for f in names if f not in _ZXING_REQUEST]
        if unknown or not names:
            raise CameraError(
                f"unknown barcode formats {unknown}; known: {sorted(_ZXING_REQUEST)}"
                if unknown
                else "formats must not be empty"
            )
        if full_pass_pixels < 10_000:
            raise CameraError("full_pass_pixels must be at least 10000")
        self.budget_ms = budget_ms
        self.formats = names
        self._full_pass_pixels = full_pass_pixels
        self._try_rotate = try_rotate
        self._try_downscale = try_downscale
        self._regions = regions
        self._max_regions = max_regions
        self._costs = _Costs()
        # zxingcpp.BarcodeFormats per kind of image (see `_zxing`), built on first use:
        # zxingcpp is imported lazily.
        self._zxing_formats: dict[str, Any] = {}
        self._zbar: _Zbar | None = None
        self._zbar_types = [t for t, name in _ZBAR_TYPES.items() if name in names]
        self.second_opinion = second_opinion and bool(self._zbar_types)
        if self.second_opinion:
            try:
                self._zbar = _Zbar(self._zbar_types)
            except (ImportError, OSError, AttributeError) as exc:
                log.warning("no second opinion: zbar cannot be loaded (%s)", exc)
                self.second_opinion = False
        self.misses = 0  # decoder calls that raised

    def warm_up(self) -> None:
        """Decode a small made-up picture with no budget: loads the libraries and sets up
        everything a decode uses, so the first real frame's budget is not spent on that."""
        import numpy as np

        stripes = np.zeros((120, 200), dtype=np.uint8)
        stripes[:, 20:180] = np.where((np.arange(160) // 3) % 2 == 0, 0, 255)
        budget, self.budget_ms = self.budget_ms, None
        try:
            self.decode(stripes)
        finally:
            self.budget_ms = budget

    # -- the strategy ---------------------------------------------------------------------

    def decode(self, image: AnyImage) -> list[Symbol]:
        """The barcodes in ``image`` (a gray or BGR uint8 numpy array), best effort in budget."""
        clock = _Budget(self.budget_ms, self._costs)
        gray = _gray(image)
        found = _Found()

        # 1. zxing-cpp on the whole frame.
        work, scale = _shrink(gray, self._full_pass_pixels)
        back = _scaling(1 / scale)
        for read in self._zxing(work, "full", clock, rotate=self._try_rotate):
            found.add(_symbol(read, back, "zxing"))

        # 2. straightened candidate regions.
        if self._regions and clock.fits("regions", _analysis_pixels(gray)):
            self._regions_pass(gray, found, clock)

        # 3. zbar's second opinion on the whole frame, when nothing was found yet.
        if not found.symbols and self._zbar is not None and clock.fits("zbar", work.size):
            for read in self._zbar_read(work, clock):
                found.add(_symbol(read, back, "zbar"), second_opinion=True)
        return found.symbols

    def _regions_pass(self, gray: Image, found: _Found, clock: _Budget) -> None:
        """Try the regions' straightened crops, in the order of `_attempts`."""
        regions = _Regions(_find_regions(gray, self._max_regions), self._count_miss)
        with clock.timing("regions", _analysis_pixels(gray)):
            next(iter(regions), None)  # the search itself, and the first region
        crops: dict[
            tuple[int, int], tuple[Image, Callable[[list[tuple[float, float]]], Points]]
        ] = {}
        best_score = 0.0
        for index, region, treatment in _attempts(regions):
            best_score = max(best_score, region.score)
            if found.covers(region):
                continue
            if found.symbols and (
                treatment is not _PLAIN or region.score < best_score * _AFTER_A_READ
            ):
                # Once a code was read, what is left is most often print and clutter: only
                # regions not much weaker than the best get one more (untreated) look.
                continue
            linear = region.linear
            use_zbar = treatment.zbar and linear and self._zbar is not None
            if not treatment.zxing and not use_zbar:
                continue
            # A straightened linear crop reads along its rows: only the linear readers (and
            # PDF417's) look at it, along the rows. PDF417's reader only on the untreated
            # crop: it costs ten times the others' on a crop that holds one, and where the
            # untreated crop failed the treated ones almost never read it (the same code's
            # 2D region, tried early by `_attempts`, is its better chance). Any other crop
            # may also hold a linear code that the region's outline did not line up: every
            # reader, both ways.
            kind = "any" if not linear else "linear" if treatment is _PLAIN else "bars"
            step = {"any": "zxing", "linear": "zxing/linear", "bars": "zxing/bars"}[kind]
            pixels = _crop_pixels(region, treatment.scale)
            first_step = step if treatment.zxing else "zbar/rows"
            if not clock.fits("crop", pixels) or not clock.fits(first_step, pixels):
                return
            try:
                with clock.timing("crop", pixels):
                    key = (index, treatment.scale)
                    if key not in crops:
                        crop, to_image = _straighten(gray, region, treatment.scale)
                        crops[key] = (crop, _perspective(to_image))
                    crop, back = crops[key]
                    treated = treatment.apply(crop)
            except Exception:
                self.misses += 1
                log.warning("%s crop of a region failed", treatment.name, exc_info=True)
                continue
            if treatment.zxing:
                for read in self._zxing(
                    treated,
                    step,
                    clock,
                    rotate=not linear,
                    kind=kind,
                    global_threshold=treatment.global_threshold,
                ):
                    found.add(_symbol(read, back, f"zxing/region/{treatment.name}"))
            # zbar on 2D crops costs more than it finds (and it reads only QR there).
            if found.covers(region) or not use_zbar:
                continue
            if clock.fits("zbar/rows", treated.size):
                for read in self._zbar_read(treated, clock, rows_only=True):
                    source = f"zbar/region/{treatment.name}"
                    found.add(_symbol(read, back, source), second_opinion=True)

    def _count_miss(self) -> None:
        self.misses += 1

    # -- the decoders, each call guarded ----------------------------------------------------

    def _zxing(
        self,
        image: Image,
        step: str,
        clock: _Budget,
        *,
        rotate: bool,
        kind: str = "any",
        global_threshold: bool = False,
    ) -> list[_Read]:
        """zxing-cpp's reads of ``image``; ``kind`` says which readers look: ``any`` (every
        format), ``linear`` (a straightened linear crop: the linear readers and PDF417's),
        ``bars`` (a treated linear crop: the linear readers only, see `_regions_pass`)."""
        try:
            import zxingcpp

            formats = self._zxing_formats.get(kind)
            if formats is None:
                wanted = [
                    f
                    for f in self.formats
                    if kind == "any"
                    or (f in _LINEAR_CROP_FORMATS and (kind == "linear" or f != "pdf417"))
                ]
                formats = zxingcpp.BarcodeFormats(
                    [
                        getattr(zxingcpp.BarcodeFormat, _ZXING_REQUEST[f])
                        for f in wanted or self.formats
                    ]
                )
                self._zxing_formats[kind] = formats
            binarizer = (
                zxingcpp.Binarizer.GlobalHistogram
                if global_threshold
                else zxingcpp.Binarizer.LocalAverage
            )
            with clock.timing(step, image.size):
                barcodes = zxingcpp.read_barcodes(
                    image,
                    formats=formats,
                    try_rotate=rotate,
                    try_downscale=step == "full" and self._try_downscale,
                    # Light-on-dark (a phone in dark mode) is tried on 2D crops only, where
                    # it is cheap; on every whole frame it would double the first pass.
                    try_invert=step == "zxing",
                    text_mode=zxingcpp.TextMode.Plain,
                    binarizer=binarizer,
                )
            reads = []
            for b in barcodes:
                p = b.position
                corners = [
                    (float(q.x), float(q.y))
                    for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
                ]
                name = _ZXING_NAME.get(b.format.name, b.format.name.lower())
                reads.append(_Read(b.text, b.symbology_identifier or None, name, corners))
            return reads
        except Exception:
            self.misses += 1
            log.warning("zxing-cpp failed on a %s image", _shape(image), exc_info=True)
            return []

    def _zbar_read(self, image: Image, clock: _Budget, *, rows_only: bool = False) -> list[_Read]:
        assert self._zbar is not None
        try:
            with clock.timing("zbar/rows" if rows_only else "zbar", image.size):
                return self._zbar.read(image, rows_only=rows_only)
        except Exception:
            self.misses += 1
            log.warning("zbar failed on a %s image", _shape(image), exc_info=True)
            return []


class _Budget:
    """The time left for one decode, and what the steps cost."""

    def __init__(self, budget_ms: float | None, costs: _Costs) -> None:
        self._started = time.perf_counter()
        self._budget_ms = budget_ms
        self._costs = costs

    def fits(self, step: str, pixels: int) -> bool:
        """Whether ``step`` on ``pixels`` is predicted to end within the budget."""
        if self._budget_ms is None:
            return True
        spent_ms = (time.perf_counter() - self._started) * 1000
        return spent_ms + self._costs.predict(step, pixels) <= self._budget_ms

    @contextlib.contextmanager
    def timing(self, step: str, pixels: int) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self._costs.learn(step, pixels, (time.perf_counter() - started) * 1000)


class _Zbar:
    """A typed binding to libzbar's image scanner, on the library pyzbar loads.

    pyzbar's own ``decode`` drops the symbol modifiers, and with them the GS1 flag (FNC1 in
    first position) that tells ``]C1`` from ``]C0``; this asks ``zbar_symbol_get_modifiers``.
    """

    def __init__(self, types: Sequence[int]) -> None:
        w: Any = importlib.import_module("pyzbar.wrapper")
        self._w = w
        self._types = tuple(types)
        self._modifiers = w.zbar_function(
            "zbar_symbol_get_modifiers", ctypes.c_uint, ctypes.POINTER(w.zbar_symbol)
        )

    def read(self, image: Image, *, rows_only: bool = False) -> list[_Read]:
        """Symbols in a gray image; ``rows_only`` scans every third row and no column (a
        straightened linear code: its bars cross every row)."""
        import numpy as np

        w = self._w
        pixels = np.ascontiguousarray(image)
        height, width = pixels.shape
        scanner = w.zbar_image_scanner_create()
        if not scanner:
            raise MemoryError("zbar_image_scanner_create failed")
        try:
            w.zbar_image_scanner_set_config(scanner, 0, _ZBAR_CFG_ENABLE, 0)  # all off...
            for t in self._types:  # ...then only ours
                w.zbar_image_scanner_set_config(scanner, t, _ZBAR_CFG_ENABLE, 1)
            # Interleaved 2 of 5 has no check character: short reads out of noise are its
            # classic false positive.
            w.zbar_image_scanner_set_config(scanner, 25, _ZBAR_CFG_MIN_LEN, 6)
            if rows_only:
                w.zbar_image_scanner_set_config(scanner, 0, _ZBAR_CFG_X_DENSITY, 0)
                w.zbar_image_scanner_set_config(scanner, 0, _ZBAR_CFG_Y_DENSITY, 3)
            zimage = w.zbar_image_create()
            if not zimage:
                raise MemoryError("zbar_image_create failed")
            try:
                w.zbar_image_set_format(zimage, _ZBAR_FOURCC_Y800)
                w.zbar_image_set_size(zimage, width, height)
                w.zbar_image_set_data(
                    zimage, ctypes.c_void_p(pixels.ctypes.data), pixels.size, None
                )
                if w.zbar_scan_image(scanner, zimage) < 0:
                    raise RuntimeError("zbar_scan_image failed")
                return self._symbols(zimage)
            finally:
                w.zbar_image_destroy(zimage)
        finally:
            w.zbar_image_scanner_destroy(scanner)

    def _symbols(self, zimage: Any) -> list[_Read]:
        w = self._w
        reads = []
        symbol = w.zbar_image_first_symbol(zimage)
        while symbol:
            name = _ZBAR_TYPES.get(symbol.contents.type)
            if name is not None:
                data = ctypes.string_at(
                    w.zbar_symbol_get_data(symbol), w.zbar_symbol_get_data_length(symbol)
                )
                gs1 = bool(self._modifiers(symbol) & _ZBAR_MOD_GS1)
                try:
                    text = data.decode("utf-8")  # zbar hands out QR text as UTF-8
                except UnicodeDecodeError:
                    text = data.decode("latin-1")
                points = [
                    (
                        float(w.zbar_symbol_get_loc_x(symbol, i)),
                        float(w.zbar_symbol_get_loc_y(symbol, i)),
                    )
                    for i in range(w.zbar_symbol_get_loc_size(symbol))
                ]
                reads.append(
                    _Read(
                        text=text,
                        aim=(_ZBAR_AIM_GS1 if gs1 else _ZBAR_AIM).get(name, _ZBAR_AIM.get(name)),
                        format=name,
                        corners=_box(points),
                    )
                )
            symbol = w.zbar_symbol_next(symbol)
        return reads


# -- image helpers -------------------------------------------------------------------------


def _gray(image: AnyImage) -> Image:
    import cv2
    import numpy as np

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise CameraError("an image is a numpy uint8 array (gray, BGR or BGRA)")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # type: ignore[return-value]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)  # type: ignore[return-value]
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise CameraError(f"an image of shape {image.shape} is neither gray nor BGR")


def _shrink(gray: Image, max_pixels: int) -> tuple[Image, float]:
    """The image shrunk by the smallest whole factor that brings it to ``max_pixels``.

    Whole factors because OpenCV averages whole blocks many times faster than it resamples
    by an arbitrary ratio (and averaging is what keeps thin bars from aliasing away). The
    last rows and columns that do not fill a block are left out.
    """
    import cv2

    h, w = gray.shape
    factor = 1
    while (h // factor) * (w // factor) > max_pixels:
        factor += 1
    if factor == 1:
        return gray, 1.0
    trimmed = gray[: h - h % factor, : w - w % factor]
    size = (w // factor, h // factor)
    return cv2.resize(trimmed, size, interpolation=cv2.INTER_AREA), 1 / factor  # type: ignore[return-value]


def _shape(image: Image) -> str:
    return "x".join(map(str, image.shape))


def _scaling(factor: float) -> Callable[[list[tuple[float, float]]], Points]:
    def back(points: list[tuple[float, float]]) -> Points:
        return tuple((round(x * factor, 1), round(y * factor, 1)) for x, y in points)

    return back


def _perspective(matrix: Any) -> Callable[[list[tuple[float, float]]], Points]:
    def back(points: list[tuple[float, float]]) -> Points:
        import cv2
        import numpy as np

        src = np.array([points], dtype=np.float32)
        out = cv2.perspectiveTransform(src, matrix)[0]
        return tuple((round(float(x), 1), round(float(y), 1)) for x, y in out)

    return back


def _symbol(
    read: _Read, back: Callable[[list[tuple[float, float]]], Points], source: str
) -> Symbol:
    return Symbol(read.text, read.aim, read.format, back(read.corners), source)


def _box(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Four corners around zbar's scan points (its location is the points its scans crossed)."""
    if not points:
        return [(0.0, 0.0)] * 4
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _centre(corners: Points) -> tuple[float, float]:
    return (
        sum(p[0] for p in corners) / len(corners),
        sum(p[1] for p in corners) / len(corners),
    )


def _inside(x: float, y: float, corners: Points, *, grow: float) -> bool:
    """Whether (x, y) lies in the symbol's outline, grown by ``grow`` of its size.

    A linear code's outline from zxing-cpp can be a thin band (the rows it read), so the
    outline is first widened across to at least a sixth of its length (bars are rarely
    shorter), not more: a DataMatrix printed under a barcode is another code.
    """
    cx, cy = _centre(corners)
    (ax, ay), (bx, by) = corners[0], corners[1]
    along = math.hypot(bx - ax, by - ay)
    ux, uy = ((bx - ax) / along, (by - ay) / along) if along > 0 else (1.0, 0.0)
    across = max(abs((px - cx) * -uy + (py - cy) * ux) for px, py in corners) * 2
    half_along = max(abs((px - cx) * ux + (py - cy) * uy) for px, py in corners)
    half_across = max(across, along / 6) / 2
    du = abs((x - cx) * ux + (y - cy) * uy)
    dv = abs((x - cx) * -uy + (y - cy) * ux)
    return du <= half_along * (1 + grow) + 4 and dv <= half_across * (1 + grow) + 4


# -- candidate regions ----------------------------------------------------------------------


# Region search thresholds, in the units of `_find_regions` (3 x 3 Sobel on 8-bit gray).
_MIN_RMS_GRADIENT = 40.0  # texture floor: paper grain and sensor noise stay below
_MAX_DRIFT = 0.2  # (mean gradient)² / mean squared gradient: above, a lone edge or a ramp
_MIN_COHERENCE = 0.6  # above: one gradient direction dominates, a linear code
_MIN_REGION_CELLS = 6
_ANGLE_TOLERANCE = math.radians(15)  # a linear region's cells agree on its angle this well


def _quantile(values: Any, q: float) -> float:
    import numpy as np

    flat = values.ravel()
    k = min(flat.size - 1, int(q * flat.size))
    return float(np.partition(flat, k)[k])


def _analysis_factor(gray: Image) -> int:
    """The whole factor the region search shrinks by: to at most `ANALYSIS_PIXELS`."""
    h, w = gray.shape
    factor = 1
    while (h // factor) * (w // factor) > ANALYSIS_PIXELS:
        factor += 1
    return factor


def _analysis_pixels(gray: Image) -> int:
    return int(gray.size) // _analysis_factor(gray) ** 2


def _find_regions(gray: Image, max_regions: int) -> Iterator[_Region]:
    """Textured blobs of the image, best first, with their angle and extent.

    A generator: the blobs are found at the first step, each one's outline when it is asked
    for (the first region is often the only one needed).

    Per cell of `CELL_PX` pixels: the structure tensor of the image gradients (the mean of
    gx², gy², gx·gy over a 3 x 3-cell window). Its trace is the texture energy; its coherence
    (how much of that energy lies in one direction) is near 1 across the bars of a linear
    code and low in 2D codes and text; its main direction is the reading direction.
    """
    import cv2
    import numpy as np

    h, w = gray.shape
    # Shrunk by a whole factor (fast, see `_shrink`), to whole cells.
    factor = _analysis_factor(gray)
    block = factor * CELL_PX
    small = gray[: h - h % block, : w - w % block]
    if factor > 1:
        size = (small.shape[1] // factor, small.shape[0] // factor)
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
    sh, sw = small.shape
    gw, gh = sw // CELL_PX, sh // CELL_PX
    if gw < 4 or gh < 4:
        return
    dx, dy = cv2.spatialGradient(small)  # 3 x 3 Sobel, both directions in one pass
    gx, gy = dx.astype(np.float32), dy.astype(np.float32)

    def pooled(values: Any) -> Any:  # mean per cell, then over a 3 x 3-cell window
        return cv2.blur(cv2.resize(values, (gw, gh), interpolation=cv2.INTER_AREA), (3, 3))

    jxx, jyy, jxy = pooled(gx * gx), pooled(gy * gy), pooled(gx * gy)
    mx, my = pooled(gx), pooled(gy)
    energy = np.maximum(jxx + jyy, 0)
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (energy + 1e-6)
    rms = np.sqrt(energy)
    # Textured: well above the image's typical gradient, and above paper noise; and made of
    # edges that alternate (dark-light-dark), as bars and modules do, which a lone edge
    # (a box, a label's border) or a shadow's ramp does not: there the gradients do not
    # cancel out, and their mean is a large part of their root mean square.
    floor = max(_MIN_RMS_GRADIENT, float(_quantile(rms, 0.99)) * 0.25)
    textured = (rms > floor) & (mx * mx + my * my < _MAX_DRIFT * energy)
    linear = textured & (coherence > _MIN_COHERENCE)
    kernel = np.ones((3, 3), np.uint8)
    blobs = []  # (area, is_linear, labels, k)
    for mask, is_linear in ((linear, True), (textured & ~linear, False)):
        m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        for k in range(1, count):
            area = int(stats[k, cv2.CC_STAT_AREA])
            if area >= _MIN_REGION_CELLS:
                blobs.append((area * (2 if is_linear else 1), is_linear, labels, k))
    blobs.sort(key=lambda b: b[0], reverse=True)
    cell = CELL_PX * factor  # full-image pixels per cell
    for score, is_linear, labels, k in blobs[:max_regions]:
        ys, xs = np.nonzero(labels == k)
        if is_linear:
            region = _linear_region(xs, ys, jxx, jyy, jxy, cell, score)
        else:
            region = _matrix_region(xs, ys, cell, score)
        if region is not None:
            yield region


class _Regions:
    """The regions of `_find_regions`, worked out as they are first asked for, then kept.

    A failure while working one out ends the regions there; ``on_error`` is told.
    """

    def __init__(self, regions: Iterator[_Region], on_error: Callable[[], None]) -> None:
        self._source: Iterator[_Region] | None = regions
        self._seen: list[_Region] = []
        self._on_error = on_error

    def __iter__(self) -> Iterator[tuple[int, _Region]]:
        index = 0
        while (region := self.at(index)) is not None:
            yield index, region
            index += 1

    def at(self, index: int) -> _Region | None:
        """The ``index``-th region (from 0, best first), None if there are not that many."""
        while len(self._seen) <= index and self._source is not None:
            try:
                self._seen.append(next(self._source))
            except StopIteration:
                self._source = None
            except Exception:
                self._source = None
                self._on_error()
                log.warning("region search failed", exc_info=True)
        return self._seen[index] if index < len(self._seen) else None


def _linear_region(
    xs: Any, ys: Any, jxx: Any, jyy: Any, jxy: Any, cell: float, score: float
) -> _Region | None:
    """The rectangle of a linear code: its cells that share the blob's reading direction.

    A blob of coherent cells also collects straight edges nearby (a label's border, a line
    of large print); only cells whose own direction agrees within `_ANGLE_TOLERANCE` count,
    and the extent across the bars is where most of their energy lies.
    """
    import numpy as np

    cxx, cyy, cxy = jxx[ys, xs], jyy[ys, xs], jxy[ys, xs]
    # Each cell's direction as a doubled-angle vector (cos 2θ, sin 2θ) of length energy x
    # coherence², so that the bars' dense, coherent cells outvote clutter caught in the blob.
    # Twice: the second time only with the cells that agree with the first estimate.
    dx, dy = cxx - cyy, 2 * cxy
    energy = cxx + cyy + 1e-6
    coherence = np.hypot(dx, dy) / energy
    cell_angle = 0.5 * np.arctan2(dy, dx)
    keep = np.ones(len(xs), dtype=bool)
    angle = 0.0
    for _ in range(2):
        vy, vx = float((dy * coherence)[keep].sum()), float((dx * coherence)[keep].sum())
        angle = 0.5 * math.atan2(vy, vx)
        off = np.abs((cell_angle - angle + math.pi / 2) % math.pi - math.pi / 2)
        keep = off < _ANGLE_TOLERANCE
        if int(keep.sum()) < _MIN_REGION_CELLS:
            return None
    px, py = (xs[keep] + 0.5) * cell, (ys[keep] + 0.5) * cell
    weight = energy[keep]
    ux, uy = math.cos(angle), math.sin(angle)
    along = px * ux + py * uy
    across = -px * uy + py * ux
    a0, a1 = _weighted_range(along, weight, 0.01)
    c0, c1 = _weighted_range(across, weight, 0.05)
    # Margins: the quiet zone along the code (and the pooling's blur); across, the bars are
    # only needed where they are, plus a little.
    a0, a1 = a0 - cell - 0.15 * (a1 - a0), a1 + cell + 0.15 * (a1 - a0)
    c0, c1 = c0 - cell, c1 + cell
    corners = tuple(
        (a * ux - c * uy, a * uy + c * ux) for a, c in ((a0, c0), (a1, c0), (a1, c1), (a0, c1))
    )
    return _Region(corners=corners, linear=True, score=score)


def _matrix_region(xs: Any, ys: Any, cell: float, score: float) -> _Region | None:
    """The outline of a 2D code candidate: a quadrilateral if its blob has four corners
    (a perspective view of a square), else its smallest rotated rectangle; plus a margin."""
    import cv2
    import numpy as np

    pts = np.column_stack([(xs + 0.5) * cell, (ys + 0.5) * cell]).astype(np.float32)
    hull = cv2.convexHull(pts)
    quad = cv2.approxPolyDP(hull, 0.08 * cv2.arcLength(hull, True), True)
    corners = quad.reshape(-1, 2) if len(quad) == 4 else cv2.boxPoints(cv2.minAreaRect(pts))
    centre = corners.mean(axis=0)
    grown = centre + (corners - centre) * 1.25
    # Clockwise from the top-left (the detectors find the symbol's own orientation).
    order = np.argsort(np.arctan2(grown[:, 1] - centre[1], grown[:, 0] - centre[0]))
    grown = grown[order]
    start = int(np.argmin(grown.sum(axis=1)))
    grown = np.roll(grown, -start, axis=0)
    return _Region(corners=tuple((float(x), float(y)) for x, y in grown), linear=False, score=score)


def _weighted_range(values: Any, weights: Any, tail: float) -> tuple[float, float]:
    """The range of ``values`` without ``tail`` of the total weight at each end."""
    import numpy as np

    order = np.argsort(values)
    v, cum = values[order], np.cumsum(weights[order])
    total = float(cum[-1])
    if total <= 0:
        return float(v[0]), float(v[-1])
    lo = int(np.searchsorted(cum, tail * total))
    hi = int(np.searchsorted(cum, (1 - tail) * total))
    return float(v[min(lo, len(v) - 1)]), float(v[min(hi, len(v) - 1)])


def _crop_size(region: _Region, scale: int = 1) -> tuple[int, int]:
    """The straightened crop's width and height: the region's own size times ``scale``, in
    whole pixels.

    Enlarged crops (``scale`` 2) are a last resort only (`_LAST_RESORTS`): as a first look
    they cost more time than they find codes.
    """
    length, thickness = region.size()
    return max(8, round(length * scale)), max(8, round(thickness * scale))


def _crop_pixels(region: _Region, scale: int = 1) -> int:
    width, height = _crop_size(region, scale)
    return width * height


def _straighten(gray: Image, region: _Region, scale: int = 1) -> tuple[Image, Any]:
    """The region warped upright (perspective: its quadrilateral onto a rectangle), at
    ``scale`` crop pixels per image pixel; and the matrix that maps crop pixels back into
    the image."""
    import cv2
    import numpy as np

    width, height = _crop_size(region, scale)
    src = np.array(region.corners, dtype=np.float32)
    dst = np.array([(0, 0), (width, 0), (width, height), (0, height)], dtype=np.float32)
    to_crop = cv2.getPerspectiveTransform(src, dst)
    crop = cv2.warpPerspective(
        gray, to_crop, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, cv2.getPerspectiveTransform(dst, src)  # type: ignore[return-value]


def _plain(crop: Image) -> Image:
    return crop


def _clahe(crop: Image) -> Image:
    import cv2

    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(crop)  # type: ignore[return-value]


def _sharpen(crop: Image) -> Image:
    import cv2

    blurred = cv2.GaussianBlur(crop, (0, 0), 1.5)
    return cv2.addWeighted(crop, 1.8, blurred, -0.8, 0)  # type: ignore[return-value]


def _otsu(crop: Image) -> Image:
    import cv2

    return cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1]  # type: ignore[return-value]


@dataclass(frozen=True)
class _Treatment:
    """One way of showing a region's crop to the decoders.

    ``name`` goes into the read's ``source``; ``apply`` treats the straightened crop;
    ``scale`` is the crop's pixels per image pixel; ``global_threshold`` has zxing-cpp
    binarise with one threshold for the crop (GlobalHistogram) instead of local averages;
    ``zxing`` and ``zbar`` say which decoders look (zbar only ever at linear crops).
    """

    name: str
    apply: Callable[[Image], Image]
    scale: int = 1
    global_threshold: bool = False
    zxing: bool = True
    zbar: bool = True


_PLAIN = _Treatment("plain", _plain)
_TREATMENTS: tuple[_Treatment, ...] = (
    _PLAIN,
    _Treatment("clahe", _clahe),
    _Treatment("sharpen", _sharpen),
    _Treatment("otsu", _otsu),
)
_FIRST_REGION_TREATMENTS = 3  # plain, CLAHE and sharpen before any other region is tried
# Last resorts for the best region, after every treatment of every region: a crop straightened
# at twice the image's resolution, which gives modules of about one and a half pixels (a
# dense Aztec or Data Matrix in a small picture, the thin bars of a blurred EAN-13) enough
# pixels for the detectors after the warp's interpolation; and one threshold for the whole
# 2D crop, which holds where an uneven print fools the local one. They cost more than the
# treatments above and read less often, hence last.
_LAST_RESORTS: tuple[_Treatment, ...] = (
    _Treatment("x2", _plain, scale=2),
    _Treatment("x2/sharpen", _sharpen, scale=2),
    _Treatment("global", _plain, global_threshold=True, zbar=False),
    _Treatment("x2/clahe", _clahe, scale=2),
)
# Enlarged crops only for a region whose crop is at most this long: a larger one has pixels
# enough, and would cost four times as much.
_ENLARGE_UP_TO = 400
# Once a code was read, a region is still tried if its score is at least this part of the
# best region's (a DataMatrix beside a barcode: about a quarter; a line of print: less).
_AFTER_A_READ = 0.125


def _attempts(regions: _Regions) -> Iterator[tuple[int, _Region, _Treatment]]:
    """(region index, region, treatment) in the order to try them.

    The best region first as it is (it is the code in almost every frame where the first
    pass missed it). Then the second region as it is if it overlaps the first and is of the
    other kind (linear or not): the same code seen twice, as a PDF417's bars and its
    texture, or a linear code and its digits; there the crop of the other kind is the one
    that reads (a 2D region's outline follows a PDF417's perspective and takes in all its
    rows, which a linear region's rectangle cuts). Then the best region under CLAHE and
    sharpening; then every other region as it is; then each remaining treatment over the
    remaining regions; then the best region's last resorts (`_LAST_RESORTS`).
    """
    first = regions.at(0)
    if first is None:
        return
    yield 0, first, _PLAIN
    second = regions.at(1)
    partner = second is not None and second.linear != first.linear and _overlap(first, second)
    if second is not None and partner:
        yield 1, second, _PLAIN
    depth = _TREATMENTS[:_FIRST_REGION_TREATMENTS]
    for treatment in depth[1:]:
        yield 0, first, treatment
    for index, region in regions:
        if index > 1 or (index == 1 and not partner):
            yield index, region, _PLAIN
    for treatment in _TREATMENTS[1:]:
        for index, region in regions:
            if index > 0 or treatment not in depth:
                yield index, region, treatment
    small = max(_crop_size(first)) <= _ENLARGE_UP_TO
    for treatment in _LAST_RESORTS:
        if small or treatment.scale == 1:
            yield 0, first, treatment


def _overlap(a: _Region, b: _Region) -> bool:
    """Whether either region's centre lies inside the other's outline."""
    return _inside(*a.centre, b.corners, grow=0.0) or _inside(*b.centre, a.corners, grow=0.0)


# ----------------------------------------------------------------------------------------------
# Deduplication across frames


class Deduper:
    """Reports a code once while it stays in view, and again after it left view.

    Feed it each decoded frame's symbols in order, whether any were found or not. A code (its
    ``(text, format)``) is new when it was not seen in the last ``window_frames`` frames fed:
    a label held under the camera for seconds is one read; a frame or two where the decoder
    missed it (motion blur) does not make it new; the same parcel shown again after
    ``window_frames`` frames without it is a deliberate second read, as with the serial
    scanner's debounce. Pure: no clock, no I/O.
    """

    def __init__(self, window_frames: int = 10) -> None:
        if window_frames < 1:
            raise CameraError("window_frames must be at least 1")
        self.window_frames = window_frames
        self._frame = 0
        self._last_seen: dict[tuple[str, str], int] = {}

    def feed(self, symbols: Iterable[Symbol]) -> list[Symbol]:
        """Take one frame's symbols; return those that are new, in order."""
        self._frame += 1
        new = []
        for symbol in symbols:
            last = self._last_seen.get(symbol.key)
            if last is None or self._frame - last - 1 >= self.window_frames:
                new.append(symbol)
            self._last_seen[symbol.key] = self._frame
        if len(self._last_seen) > 64:  # forget codes long out of view
            horizon = self._frame - self.window_frames
            self._last_seen = {k: f for k, f in self._last_seen.items() if f >= horizon}
        return new


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
