"""The decoder: one image in, the barcodes in it out (`Decoder`), and `Deduper` across frames.

This module owns the decoding strategy and its time budget (see `Decoder`), the barcode
formats and their names in zxing-cpp, the `Symbol` a read becomes, the checks on an image
handed in, and `CameraError`, the package's exception (here because this is the lowest module
that raises it). It calls zxing-cpp itself, `drivers.camera.regions` for where else to look
and `drivers.camera.zbar` for the second opinion.

What it must never do: report a code no decoder vouched for, alter a read's data, raise out of
a decode because a decoder library failed (that is logged and counted as a miss), or import
OpenCV, numpy or zxing-cpp at module level.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.camera.regions import (
    _AFTER_A_READ,
    _PLAIN,
    _analysis_pixels,
    _attempts,
    _centre,
    _clahe,
    _crop_pixels,
    _deblurred,
    _find_regions,
    _gaussian_deblurred,
    _inside,
    _Region,
    _Regions,
    _straighten,
)
from drivers.camera.zbar import _ITF_MIN_DIGITS, _ZBAR_TYPES, _Read, _Zbar
from drivers.errors import DriverError
from drivers.scanner import Scan

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]
    AnyImage = NDArray[Any]  # what callers hand in; checked to be uint8 gray/BGR/BGRA
    Points = tuple[tuple[float, float], ...]
    _Reads = list[tuple["Symbol", bool]]  # a thorough attempt's symbols, each `_doubtful` or not

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
# Linear symbologies whose check lets misreads through: none or an optional one (ITF, Code 39,
# Codabar), or a single mod-10 digit over few modules (UPC-E, EAN-8, EAN-13, UPC-A). Two of
# their reads at one place that disagree are both dropped (`_Found.settle`).
_WEAK_CHECK = frozenset({"codabar", "code39", "ean13", "ean8", "itf", "upca", "upce"})
# A weakly checked read from zbar stands only if at least this many of its scan lines decoded
# it (zbar's "quality"). A printed code's bars cross many lines and read on most of them; a
# misread is one line's unlucky path through blur, glare or a treatment's artefacts, which
# the next line, a few pixels away, does not repeat.
_ZBAR_MIN_LINES = 2
# The UPC/EAN family's sizes in modules: a shorter one read within a longer one's bars is a
# partial read (`_Found.settle`).
_UPC_EAN_MODULES = {"ean13": 95, "upca": 95, "ean8": 67, "upce": 51}
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

DEFAULT_BUDGET_MS = 15.0
# The full-frame pass runs on at most this many pixels (a tilted 640 x 480 photo fits); a larger
# frame is shrunk for it, and its full resolution is used in the straightened region crops.
FULL_PASS_PIXELS = 320_000
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

# The thorough fallback (`Decoder._thorough_attempts`; files only, no budget): the scales of
# the whole image tried by zxing-cpp (1: full resolution, which the first pass may have
# shrunk), with a global threshold, and by zbar (whose cost grows fastest with size); the
# most pixels an enlarged copy may have (enlarging a large photo costs seconds and adds no
# detail); how many regions, at which enlargements of
# their straightened crops, and the largest such crop.
_THOROUGH_SCALES = (1.0, 0.5, 0.75, 1.5, 2.0)
_THOROUGH_GLOBAL_SCALES = (1.0, 0.5, 2.0)
_THOROUGH_ZBAR_SCALES = (1.0, 0.5)
_THOROUGH_MAX_PIXELS = 4_000_000
_THOROUGH_SLOW_PIXELS = 1_500_000
_THOROUGH_REGIONS = 12
_THOROUGH_CROP_SCALES = (2, 3)
_THOROUGH_MAX_CROP_PIXELS = 600_000
# A crop longer than this (at the image's resolution) has pixels enough: not enlarged.
_THOROUGH_ENLARGE_UP_TO = 800
# Defocus blur undone (`drivers.camera.regions._deblurred`) in the best linear regions'
# crops (thin bars are what blur merges first; on 2D crops it has read nothing the other
# attempts missed, at three times the cost), for these blur radii in image pixels (a code a
# little, well and badly out of focus).
_DEBLUR_REGIONS = 4
_DEBLUR_RADII = (1.5, 2.5, 3.5)
# A softer blur of about a pixel undone (`drivers.camera.regions._gaussian_deblurred`) in the
# best regions' enlarged crops (`_THOROUGH_CROP_SCALES`), linear or not: a small code's bars
# or modules of one or two pixels, merged by a little defocus, the sensor and the warp, come
# apart only once the crop has pixels enough to hold them. The blur's sigma in image pixels;
# the noise-to-signal ratios (more damping, less). zxing-cpp alone reads them: zbar's linear
# decoders take the ringing the filter leaves beside each edge for bars, and misread where
# zxing-cpp's, which ask two scan lines to agree, read nothing.
_GAUSSIAN_DEBLUR_SIGMAS = (1.2, 1.5)
_GAUSSIAN_DEBLUR_NOISE = (0.01, 0.003)
# In the thorough fallback, a text of a weakly checked code read from at least this many
# times as many images as another text at the same place outvotes it (`_Found.settle`).
_OUTVOTED = 3
# Symbologies whose symbols carry Reed-Solomon error correction: a read of noise fails its
# checks. Any other read from the thorough fallback must be confirmed (see `_thorough`).
# PDF417 is not among them: its error correction can be as low as two codewords, and its
# reads of badly blurred or deblurred crops came out garbled but accepted.
_SELF_CHECKING = frozenset({"aztec", "datamatrix", "maxicode", "microqr", "qrcode"})


class CameraError(DriverError):
    """A camera or an image that cannot be used as given; retrying will not help."""


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
    """Symbols found so far in one image, deduplicated by ``(text, format)``, in order, with
    the strategies (``source``) that read each; and the doubtful reads that wait for a
    second strategy to read them too before they count."""

    def __init__(self) -> None:
        self.symbols: list[Symbol] = []
        self._keys: set[tuple[str, str]] = set()
        self._sources: dict[tuple[str, str], set[str]] = {}
        self._doubtful: dict[tuple[str, str], Symbol] = {}
        self._outlines: dict[tuple[str, str], list[Points]] = {}

    def note(self, symbol: Symbol) -> None:
        """Remember where a read lay, without counting it (`settle` weighs every outline of
        a text: zbar outlines only the scan lines that decoded, often a part of the code)."""
        self._outlines.setdefault(symbol.key, []).append(symbol.corners)

    def add(self, symbol: Symbol, *, second_opinion: bool = False, doubtful: bool = False) -> bool:
        """Count a read; True if it is a new symbol.

        ``doubtful``: the read stands only once another strategy (another ``source``) has
        read the same text too; until then it is held back (see `_doubtful`).
        ``second_opinion``: zbar's read, which does not stand against an earlier read of
        the same format at the same place with another text (zbar guesses character sets
        differently), unless the code is weakly checked: there one of the two texts is a
        misread, and `settle` decides.
        """
        key = symbol.key
        self.note(symbol)
        if key in self._keys:
            self._sources[key].add(symbol.source)
            return False
        if key in self._doubtful:
            self._sources[key].add(symbol.source)
            if len(self._sources[key]) < 2:
                return False
            symbol = self._doubtful.pop(key)
        elif doubtful:
            log.debug("doubtful read %r waits for a second strategy", symbol)
            self._doubtful[key] = symbol
            self._sources[key] = {symbol.source}
            return False
        else:
            self._sources[key] = {symbol.source}
        if second_opinion and symbol.format not in _WEAK_CHECK and self._contradicts(symbol):
            log.debug("second opinion %r disagrees with a read at the same place", symbol)
            return False
        self._keys.add(key)
        self.symbols.append(symbol)
        return True

    def _contradicts(self, symbol: Symbol) -> bool:
        cx, cy = _centre(symbol.corners)
        return any(
            s.format == symbol.format and _inside(cx, cy, s.corners, grow=0.2) for s in self.symbols
        )

    def settle(self, images: Mapping[tuple[str, str], int] | None = None) -> None:
        """Drop the reads that two linear reads at the same place show to be misreads.

        One printed code gives one text. Where two linear reads overlap and one's text lies
        inside the other's (a UPC-E or EAN-8 found inside an EAN-13's bars, an ITF read from
        a false stop pattern halfway), the shorter is a partial read: it goes. Where they
        overlap as two sizes of the UPC/EAN family, the smaller (a UPC-E's 51 modules, an
        EAN-8's 67) was found among the larger's 95 bars: it goes. Where they overlap with
        unrelated texts of the same weakly checked symbology (`_WEAK_CHECK`), neither can be
        trusted, however many strategies read either (a small blurred code misreads the
        same way at several scales): both go, and the next frame (or the thorough fallback,
        for a file) has another look. Unless ``images`` says how many images (the thorough
        fallback's scales, crops and treatments) read each text, and one text was read from
        at least `_OUTVOTED` times as many as the other: a misread repeats itself on a few
        of the fallback's dozens of images, the code's own text on most of those that read
        anything there. Doubtful reads still waiting for a second strategy (`add`) count as
        reads here, though they never stand. A code with a stronger check (Code 128's modulo
        103) gets the same treatment where the two reads overlap: along the bars of one code,
        not merely near it (two codes stacked on a label are two codes), where a smear read
        along a few scan lines gave a second text that passed the check. zxing-cpp's outline of a
        linear read is the scan line that read it; two scan lines across one code's bars may
        be as far apart as the bars are long, hence `_same_code`; zbar's outline is its scan
        lines that decoded, sometimes a part of the code only: two texts lie at the same place
        when any outline of one (`note`) lies on any outline of the other.
        """
        # The doubtful reads never stand on their own, but they are reads of what is there:
        # they show a standing read to be a part or a misread as well as any.
        reads = self.symbols + list(self._doubtful.values())
        drop: set[int] = set()
        linear = [
            (i, s)
            for i, s in enumerate(reads)
            if s.format in _LINEAR_CROP_FORMATS and s.format != "pdf417"
        ]
        for n, (i, a) in enumerate(linear):
            for j, b in linear[n + 1 :]:
                outlines = [
                    (p, q)
                    for p in self._outlines.get(a.key, [a.corners])
                    for q in self._outlines.get(b.key, [b.corners])
                ]
                if not any(_same_code(p, q) or _same_code(q, p) for p, q in outlines):
                    continue
                if a.text in b.text or b.text in a.text:
                    drop.add(i if len(a.text) < len(b.text) else j)
                elif a.format == b.format and (
                    a.format in _WEAK_CHECK
                    or any(
                        _inside(*_centre(q), p, grow=0.2) or _inside(*_centre(p), q, grow=0.2)
                        for p, q in outlines
                    )
                ):
                    na, nb = (images.get(s.key, 1) if images else 1 for s in (a, b))
                    if na >= _OUTVOTED * nb:
                        drop.add(j)
                    elif nb >= _OUTVOTED * na:
                        drop.add(i)
                    else:
                        drop.update((i, j))
                elif _UPC_EAN_MODULES.get(a.format, 0) > _UPC_EAN_MODULES.get(b.format, 99):
                    drop.add(j)
                elif _UPC_EAN_MODULES.get(b.format, 0) > _UPC_EAN_MODULES.get(a.format, 99):
                    drop.add(i)
        drop = {i for i in drop if i < len(self.symbols)}
        if drop:
            log.debug("dropped misreads %r", [self.symbols[i] for i in sorted(drop)])
            self.symbols = [s for i, s in enumerate(self.symbols) if i not in drop]
            self._keys = {s.key for s in self.symbols}

    def covers(self, region: _Region) -> bool:
        """Whether a read already accounts for the region, so that its crop need not be tried.

        A weakly checked linear read (`_WEAK_CHECK`) accounts for it only once a second
        strategy has read it too. Until then the crop gets its look: a scan line across the
        whole frame that entered a tilted code through the ends of its bars read a part of
        it (an ITF's last twelve digits of fourteen, a UPC-E among an EAN-13's bars), with a
        quiet zone on either side and a valid check, and only the straightened crop reads the
        whole code that shows it to be a part (`settle`).
        """
        x, y = region.centre
        return any(
            _inside(x, y, s.corners, grow=0.3)
            and (s.format not in _WEAK_CHECK or len(self._sources[s.key]) >= 2)
            for s in self.symbols
        )


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
    4. Only with no budget (a file, ``lastmile decode``) and still nothing read: the thorough
       fallback (`_thorough_attempts`): the whole image at full resolution and other scales
       with every rotation, more regions enlarged and sharpened, defocus blur undone, global
       thresholds, zbar at several scales; where a linear read must be confirmed by a second
       attempt before it stands (`_thorough`). ``thorough=False`` leaves it out.

    Misreads: two linear reads at one place that contradict each other (a partial read
    inside a whole one, or two texts of one weakly checked code) are settled before the
    answer is returned (`_Found.settle`), on every path. A weakly checked read from a
    region crop, and any read that spent all its error correction (`_doubtful`), stands
    only once a second strategy reads the same text (`_Found.add`); a weakly checked read
    from zbar only if two of its scan lines decoded it (`_ZBAR_MIN_LINES`); an ITF of under
    six digits never (`_ITF_MIN_DIGITS`).

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
    the next chance. ``budget_ms=None`` tries everything whatever it costs, in a fixed order:
    then nothing depends on the clock or on the learnt costs, and a file gets the same answer
    on any machine under any load.

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
        thorough: bool = True,
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
        self._thorough_enabled = thorough
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
        thorough, self._thorough_enabled = self._thorough_enabled, False
        try:
            self.decode(stripes)
        finally:
            self.budget_ms = budget
            self._thorough_enabled = thorough

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
            found.add(_symbol(read, back, "zxing"), doubtful=_doubtful(read))

        # 2. straightened candidate regions.
        if self._regions and clock.fits("regions", _analysis_pixels(gray)):
            self._regions_pass(gray, found, clock)

        # 3. zbar's second opinion on the whole frame, when nothing was found yet.
        if not found.symbols and self._zbar is not None and clock.fits("zbar", work.size):
            for read in self._zbar_read(work, clock):
                found.add(_symbol(read, back, "zbar"), second_opinion=True)

        found.settle()
        # 4. A file, with no budget, where nothing was read: the thorough fallback.
        if not found.symbols and self.budget_ms is None and self._thorough_enabled:
            # A fresh look: the cascade's doubtful and disputed reads neither vote nor
            # dispute there; its own rule (two images agree) weighs what it reads.
            found = _Found()
            self._thorough(gray, found)
        return found.symbols

    # -- the thorough fallback (no budget only) ---------------------------------------------

    def _thorough(self, gray: Image, found: _Found) -> None:
        """Try `_thorough_attempts` in order until one of them leaves a read of a
        self-checking code standing, or all of them (a linear code's read may yet be shown a
        part or a misread by a later attempt's: `_Found.settle`, which has the last word).

        A read of a self-checking symbology (`_SELF_CHECKING`: Reed-Solomon codewords) stands
        on its own. A linear code's read stands only once a second attempt has read the same
        text: its check digit (mod 10 for EAN/UPC, none at all in some ITF and Code 39) lets
        about one noise read in ten through, and the fallback makes hundreds of attempts on
        images where the normal cascade found nothing, so one lucky read of clutter would
        otherwise become a false positive. A real code that blur or tilt hides from the
        cascade is usually read by several of the scales and treatments below; a misread
        almost never repeats itself exactly.

        The second read must come from another attempt (another image: scale, crop or
        treatment), not from another reader or binarizer on the same pixels: the ringing
        that undoing a blur leaves, or a stripe of print, is the same pattern to each of
        them, and two readers of one such image agree on its misread as often as not.
        """
        votes: dict[tuple[str, str], set[str]] = {}
        for name, attempt in self._thorough_attempts(gray):
            try:
                symbols = attempt()
            except Exception:
                self.misses += 1
                log.warning("thorough attempt %s failed", name, exc_info=True)
                continue
            for symbol, doubtful in symbols:
                images = votes.setdefault(symbol.key, set())
                images.add(_image_of(symbol.source))
                alone = symbol.format in _SELF_CHECKING and not doubtful
                if alone or len(images) >= 2:
                    found.add(symbol, second_opinion=symbol.source.startswith("zbar"))
                else:
                    found.note(symbol)
            if found.symbols and all(s.format in _SELF_CHECKING for s in found.symbols):
                break
        found.settle({key: len(images) for key, images in votes.items()})

    def _thorough_attempts(self, gray: Image) -> Iterator[tuple[str, Callable[[], _Reads]]]:
        """(name, attempt) for the thorough fallback, in order; each attempt returns the
        symbols it read, mapped back into the image, each with whether it is `_doubtful`.

        Only for files (``budget_ms=None``): none of this is ever weighed against a clock,
        and the order is fixed, so a file gives the same answer on any machine under any
        load. In order, as each mechanism matters on phone photos in general:

        - zxing-cpp on the whole image at full resolution and at other scales, with every
          rotation and inversion: the first pass shrinks a large photo, and a small code in
          it loses its modules; a blurred one reads better smaller (the blur per pixel
          shrinks with the image) or larger (more pixels per module for the detectors).
        - more regions (`_THOROUGH_REGIONS`), each straightened bicubically at two and
          three times the resolution, as it is, sharpened (an unsharp mask scaled to the
          enlargement) and under CLAHE (glare, low contrast); zxing-cpp with local and with
          global thresholds, and zbar along the rows of a linear crop.
        - zxing-cpp with one global threshold on the whole image at a few scales, and on a
          sharpened copy.
        - zbar on the whole image at several scales, as it is and sharpened: its linear
          decoders hold up better on blur than zxing-cpp's.
        """
        clock = _Budget(None, _Costs())  # never timed against anything; learns nothing
        h, w = gray.shape

        def scales(candidates: Iterable[float]) -> Iterator[float]:
            for s in candidates:
                if (s <= 1 or s * s * h * w <= _THOROUGH_MAX_PIXELS) and min(h, w) * s >= 32:
                    yield s

        def whole(
            scale: float, *, global_threshold: bool = False, sharpen: bool = False
        ) -> Callable[[], _Reads]:
            def attempt() -> _Reads:
                image = _sharpened(_resized(gray, scale), 1.0) if sharpen else _resized(gray, scale)
                source = _thorough_source("zxing", scale, global_threshold, sharpen)
                back = _scaling(1 / scale)
                return [
                    (_symbol(read, back, source), _doubtful(read))
                    for read in self._zxing(
                        image,
                        "zxing",
                        clock,
                        rotate=True,
                        global_threshold=global_threshold,
                        downscale=True,
                        invert=True,
                    )
                ]

            return attempt

        def zbar_whole(scale: float, *, sharpen: bool = False) -> Callable[[], _Reads]:
            def attempt() -> _Reads:
                image = _sharpened(_resized(gray, scale), 1.0) if sharpen else _resized(gray, scale)
                source = _thorough_source("zbar", scale, False, sharpen)
                back = _scaling(1 / scale)
                reads = self._zbar_read(image, clock, one_line=True)
                return [(_symbol(read, back, source), _doubtful(read)) for read in reads]

            return attempt

        for s in scales(_THOROUGH_SCALES):
            yield f"zxing x{s:g}", whole(s)
        if self._regions:
            regions = _Regions(_find_regions(gray, _THOROUGH_REGIONS), self._count_miss)
            for index, region in regions:
                if max(region.size()) > _THOROUGH_ENLARGE_UP_TO:
                    continue
                for scale in _THOROUGH_CROP_SCALES:
                    if _crop_pixels(region, scale) > _THOROUGH_MAX_CROP_PIXELS:
                        continue
                    attempt = self._thorough_region(gray, index, region, scale)
                    yield f"region {index} x{scale}", attempt
            linear = [(i, r) for i, r in regions if r.linear][:_DEBLUR_REGIONS]
            for index, region in linear:
                if _crop_pixels(region) > _THOROUGH_MAX_CROP_PIXELS:
                    continue
                for radius in _DEBLUR_RADII:
                    name = f"region {index} deblurred r{radius:g}"
                    yield name, self._thorough_deblurred(gray, index, region, radius)
            for index, region in regions:
                if index >= _DEBLUR_REGIONS or max(region.size()) > _THOROUGH_ENLARGE_UP_TO:
                    continue
                for scale in _THOROUGH_CROP_SCALES:
                    if _crop_pixels(region, scale) > _THOROUGH_MAX_CROP_PIXELS:
                        continue
                    for sigma in _GAUSSIAN_DEBLUR_SIGMAS:
                        for noise in _GAUSSIAN_DEBLUR_NOISE:
                            name = f"region {index} x{scale} gaussian {sigma:g}/{noise:g}"
                            attempt = self._thorough_gaussian(
                                gray, index, region, scale, sigma, noise
                            )
                            yield name, attempt
        for s in scales(_THOROUGH_GLOBAL_SCALES):
            yield f"zxing x{s:g} global", whole(s, global_threshold=True)
        # The sharpened and zbar passes on at most `_THOROUGH_SLOW_PIXELS`: they cost the
        # most per pixel, and a photo that large has detail to spare.
        fit = min(1.0, math.sqrt(_THOROUGH_SLOW_PIXELS / (h * w)))
        yield f"zxing x{fit:.3g} sharpened", whole(fit, sharpen=True)
        if self._zbar is not None:
            for s in (fit * z for z in _THOROUGH_ZBAR_SCALES):
                yield f"zbar x{s:.3g}", zbar_whole(s)
            yield f"zbar x{fit:.3g} sharpened", zbar_whole(fit, sharpen=True)

    def _thorough_deblurred(
        self, gray: Image, index: int, region: _Region, radius: float
    ) -> Callable[[], _Reads]:
        """One region straightened, its defocus blur of ``radius`` pixels undone
        (`_deblurred`), read with both binarizers (and by zbar along the rows if linear)."""

        def attempt() -> _Reads:
            clock = _Budget(None, _Costs())
            crop, to_image = _straighten(gray, region, 1, cubic=True)
            back = _perspective(to_image)
            treated = _deblurred(crop, radius)
            source = f"region{index}/deblur{radius:g}"
            return self._thorough_reads(treated, back, source, region.linear, clock)

        return attempt

    def _thorough_gaussian(
        self, gray: Image, index: int, region: _Region, scale: int, sigma: float, noise: float
    ) -> Callable[[], _Reads]:
        """One region straightened bicubically at ``scale``, a Gaussian blur of ``sigma``
        image pixels undone (`_gaussian_deblurred`), read by zxing-cpp with both binarizers
        (see `_GAUSSIAN_DEBLUR_SIGMAS` for why not zbar)."""

        def attempt() -> _Reads:
            clock = _Budget(None, _Costs())
            crop, to_image = _straighten(gray, region, scale, cubic=True)
            treated = _gaussian_deblurred(crop, sigma * scale, noise)
            source = f"region{index}/x{scale}/gaussian{sigma:g}/{noise:g}"
            back = _perspective(to_image)
            return self._thorough_reads(treated, back, source, region.linear, clock, zbar=False)

        return attempt

    def _thorough_reads(
        self,
        image: Image,
        back: Callable[[list[tuple[float, float]]], Points],
        source: str,
        linear: bool,
        clock: _Budget,
        *,
        zbar: bool = True,
    ) -> _Reads:
        """A straightened crop read by zxing-cpp with local then global thresholds, and by
        zbar along its rows if it is linear (and ``zbar``); sources
        ``zxing/thorough/<source>[/global]`` and ``zbar/thorough/<source>``."""
        out: _Reads = []
        for global_threshold in (False, True):
            name = f"zxing/thorough/{source}" + ("/global" if global_threshold else "")
            for read in self._zxing(
                image,
                "zxing",
                clock,
                rotate=not linear,
                kind="linear" if linear else "any",
                global_threshold=global_threshold,
                downscale=False,
                invert=not linear,
            ):
                out.append((_symbol(read, back, name), _doubtful(read)))
        if zbar and linear and self._zbar is not None:
            for read in self._zbar_read(image, clock, rows_only=True, one_line=True):
                out.append((_symbol(read, back, f"zbar/thorough/{source}"), _doubtful(read)))
        return out

    def _thorough_region(
        self, gray: Image, index: int, region: _Region, scale: int
    ) -> Callable[[], _Reads]:
        """One region straightened bicubically at ``scale``, as it is, sharpened and under
        CLAHE, read with both binarizers (and by zbar along the rows if linear)."""

        def attempt() -> _Reads:
            clock = _Budget(None, _Costs())
            crop, to_image = _straighten(gray, region, scale, cubic=True)
            back = _perspective(to_image)
            out: _Reads = []
            for name, treated in (
                ("plain", crop),
                ("sharpen", _sharpened(crop, scale / 2)),
                ("clahe", _clahe(crop)),
            ):
                source = f"region{index}/x{scale}/{name}"
                out += self._thorough_reads(treated, back, source, region.linear, clock)
            return out

        return attempt

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
                    source = f"zxing/region/{treatment.name}"
                    # A crop is cut, warped and treated to make bars readable: a weakly
                    # checked code read there stands once another strategy agrees.
                    doubt = _doubtful(read) or read.format in _WEAK_CHECK
                    found.add(_symbol(read, back, source), doubtful=doubt)
            # zbar on 2D crops costs more than it finds (and it reads only QR there).
            if found.covers(region) or not use_zbar:
                continue
            if clock.fits("zbar/rows", treated.size):
                for read in self._zbar_read(treated, clock, rows_only=True):
                    source = f"zbar/region/{treatment.name}"
                    doubt = read.format in _WEAK_CHECK
                    found.add(_symbol(read, back, source), second_opinion=True, doubtful=doubt)

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
        downscale: bool | None = None,
        invert: bool | None = None,
    ) -> list[_Read]:
        """zxing-cpp's reads of ``image``; ``kind`` says which readers look: ``any`` (every
        format), ``linear`` (a straightened linear crop: the linear readers and PDF417's),
        ``bars`` (a treated linear crop: the linear readers only, see `_regions_pass`).
        ``downscale`` and ``invert`` default to what the step calls for (see below)."""
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
                    try_downscale=(step == "full" and self._try_downscale)
                    if downscale is None
                    else downscale,
                    # Light-on-dark (a phone in dark mode) is tried on 2D crops only, where
                    # it is cheap; on every whole frame it would double the first pass.
                    try_invert=step == "zxing" if invert is None else invert,
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
                if name == "itf" and len(b.text) < _ITF_MIN_DIGITS:
                    log.debug("ITF %r too short to trust", b.text)
                    continue
                spare = b.extra.get("UEC") if isinstance(b.extra, dict) else None
                reads.append(
                    _Read(
                        b.text,
                        b.symbology_identifier or None,
                        name,
                        corners,
                        spare=float(spare) if isinstance(spare, (int, float)) else None,
                    )
                )
            return reads
        except Exception:
            self.misses += 1
            log.warning("zxing-cpp failed on a %s image", _shape(image), exc_info=True)
            return []

    def _zbar_read(
        self, image: Image, clock: _Budget, *, rows_only: bool = False, one_line: bool = False
    ) -> list[_Read]:
        """zbar's reads of ``image``, without the weakly checked linear ones it read with
        another text at the same place (`_disputed`) or, unless ``one_line``, that only one
        of its scan lines decoded (`_ZBAR_MIN_LINES`); and without its QR reads whose text is
        not ASCII: zbar turns a QR's bytes into text by guessing their character set (Shift_JIS
        and others, where the symbol declares none), zxing-cpp by the standard's default and
        the symbol's ECI, and where the guess decides the text, zbar's read of a glared QR
        came out as another text of the same symbol (zxing-cpp's reads of it stand). The
        thorough fallback takes one-line reads: there a second image must read the same text
        anyway (`_thorough`), which tells a misread from a code that blur left readable along
        one line only."""
        assert self._zbar is not None
        try:
            with clock.timing("zbar/rows" if rows_only else "zbar", image.size):
                reads = self._zbar.read(image, rows_only=rows_only)
        except Exception:
            self.misses += 1
            log.warning("zbar failed on a %s image", _shape(image), exc_info=True)
            return []
        kept = [
            r
            for r in reads
            if not (r.format == "qrcode" and not r.text.isascii())
            and (
                r.format not in _WEAK_CHECK
                or ((one_line or (r.lines or 0) >= _ZBAR_MIN_LINES) and not _disputed(r, reads))
            )
        ]
        if len(kept) < len(reads):
            log.debug("zbar reads dropped %r", [r for r in reads if r not in kept])
        return kept


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


def _same_code(a: Points, b: Points) -> bool:
    """Whether the centre of linear read ``b`` lies on the code of linear read ``a``: along
    it within its length, across it within a quarter of its length beyond its outline (bars
    are rarely taller than half their code's length)."""
    bx, by = _centre(b)
    ax, ay = _centre(a)
    (x0, y0), (x1, y1) = a[0], a[1]
    length = math.hypot(x1 - x0, y1 - y0)
    if length <= 0:
        return False
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    along = abs((bx - ax) * ux + (by - ay) * uy)
    across = abs((bx - ax) * -uy + (by - ay) * ux)
    thickness = max(abs((px - ax) * -uy + (py - ay) * ux) for px, py in a)
    return along <= length * 0.55 + 4 and across <= thickness + length / 4 + 4


def _resized(gray: Image, scale: float) -> Image:
    """``gray`` scaled by ``scale``: averaged areas down, bicubic up."""
    import cv2

    if scale == 1.0:
        return gray
    h, w = gray.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, size, interpolation=interpolation)  # type: ignore[return-value]


def _sharpened(gray: Image, sigma: float) -> Image:
    """An unsharp mask of radius ``sigma``: restores the edges a little blur softened."""
    import cv2

    blurred = cv2.GaussianBlur(gray, (0, 0), sigma)
    return cv2.addWeighted(gray, 1.8, blurred, -0.8, 0)  # type: ignore[return-value]


def _thorough_source(reader: str, scale: float, global_threshold: bool, sharpen: bool) -> str:
    return (
        f"{reader}/thorough/x{scale:.3g}"
        + ("/global" if global_threshold else "")
        + ("/sharpen" if sharpen else "")
    )


def _doubtful(read: _Read) -> bool:
    """Whether a read must wait for a second strategy to agree (`_Found.add`): one that
    spent all its error correction. Reed-Solomon corrects up to a limit and, past it, now and
    then "corrects" a garbled symbol into another valid one, which is then within the limit
    of what it read: a read with none of its correction left is where such miscorrections
    lie (a PDF417 under glare, with its correction as low as 2 codewords, came out so with
    one word in three wrong). A clean read of the same code elsewhere, or the same text
    from another crop or treatment, vouches for it."""
    return read.spare is not None and read.spare <= 0.0


def _disputed(read: _Read, reads: list[_Read]) -> bool:
    """Whether another of one decoder call's reads gives the same format another text at the
    same place: one of the two is a misread, and one call cannot tell which (its other scan
    lines read the other text)."""
    return any(
        r.format == read.format
        and r.text != read.text
        and _inside(*_centre(tuple(read.corners)), tuple(r.corners), grow=0.2)
        for r in reads
    )


def _image_of(source: str) -> str:
    """Which pixels a read of the thorough fallback came from: its source without the reader
    (``zxing``, ``zbar``) and the binarizer (``global``), e.g. ``thorough/region2/x3/clahe``."""
    return "/".join(part for part in source.split("/")[1:] if part != "global")


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
