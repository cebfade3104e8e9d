"""A camera in front of parcel labels and customers' phones, for tests and bench runs.

It owns what a camera would see: a printed shipping label (white paper, printed text, one
symbol) lying on a parcel or on the van floor, a customer holding up a phone with a pickup QR
in front of a locker's camera; the faults of real capture, each a pure function of an image
and explicit parameters or a seeded generator (rotation, perspective, motion and focus blur,
glare, sensor noise, a finger or tape over part of the code, low light, JPEG artefacts); and
a video file of a scene sequence that a camera driver opens exactly as it would open a
device (`SimulatedCamera.source`), with a history of which code was in view in which frames.

It must never import the camera driver (``drivers.camera``) or anything from ``edge``: a
decoding bug shared by both sides would pass every test, so the symbols are drawn with
encoders that share no code with the readers (python-barcode, and zint inside the zxing-cpp
wheel). It must never import cv2 or the barcode
writers at module import: processes that simulate other devices import ``simulators`` and
should neither load OpenCV (some 15 MB resident) nor need it installed. They are imported
inside the functions that need them; numpy, the frames' own type, is imported here.

Frames are numpy arrays, BGR, uint8, ``height x width x 3`` (what ``cv2.VideoCapture.read``
returns). Angles are in degrees, positive counter-clockwise as seen on the screen (the
convention of ``cv2.getRotationMatrix2D``).

Which writer draws which symbol:

- Code 128 and GS1-128: python-barcode (``barcode.codex.Code128`` and ``Gs1_128``). It takes
  FNC1 as the character ``"\\xf1"`` anywhere in the data, so each GS of the label's data
  becomes an FNC1 exactly where the label has it, and a scanner's output is the input byte for
  byte. zxing-cpp's writer (zint inside) takes GS1 data only as bracketed AIs and places FNC1
  itself, after variable-length AIs only: it would drop a separator the label printer put
  after a fixed-length AI (SSCC ``00…<GS>420…``). Only the module pattern is taken from
  python-barcode (``build()``); the pixels are drawn here, so no PIL writer is involved.
- QR, Data Matrix, GS1 DataMatrix, PDF417, Aztec, EAN-13, ITF, Code 39: zxing-cpp's
  ``create_barcode`` (zint). python-barcode writes no 2D symbols. GS1 DataMatrix goes through
  zint's GS1 mode from bracketed AIs, so it carries the GS1 canonical element string: FNC1
  after variable-length AIs only. A redundant GS after a fixed-length AI in the input is not
  in the symbol; `PrintedLabel.text` says what is (what a scanner sends after its AIM id).
  Data Matrix is drawn square, as parcel labels print it (left alone, zxing-cpp lets zint
  pick rectangular sizes, DMRE ones included, which older imagers do not read).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np

from simulators.errors import SimulatorError
from simulators.parcels import GS, Label

if TYPE_CHECKING:
    from cv2.typing import MatLike
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]

_Scalar = TypeVar("_Scalar", bound=np.generic)

__all__ = [
    "AIM_IDS",
    "FORMATS",
    "FRAME_HEIGHT",
    "FRAME_WIDTH",
    "PICKUP_QR_PREFIX",
    "CameraFrame",
    "PrintedLabel",
    "Scene",
    "Shown",
    "SimulatedCamera",
    "SymbolFormat",
    "gaussian_blur",
    "glare",
    "jpeg",
    "label_pass",
    "low_light",
    "motion_blur",
    "occlude",
    "perspective",
    "phone_qr_scene",
    "render_label",
    "render_symbol",
    "rotate",
    "sensor_noise",
]

SymbolFormat = Literal[
    "code128",
    "gs1-128",
    "qr",
    "datamatrix",
    "gs1-datamatrix",
    "pdf417",
    "aztec",
    "ean13",
    "itf",
    "code39",
]
FORMATS: tuple[str, ...] = get_args(SymbolFormat)

# What a serial scanner prefixes to each symbol's data (ISO/IEC 15424 symbology identifiers).
# ITF is "]I1" when the last digit is a valid mod-10 check digit (a reader validates it and
# says so), else "]I0"; PrintedLabel.aim has the right one.
AIM_IDS: dict[str, str] = {
    "code128": "]C0",  # Code 128, no FNC1
    "gs1-128": "]C1",  # Code 128 with FNC1 in first position: GS1-128
    "qr": "]Q1",  # QR Code model 2
    "datamatrix": "]d1",  # Data Matrix ECC 200
    "gs1-datamatrix": "]d2",  # Data Matrix ECC 200 with FNC1 first: GS1 DataMatrix
    "pdf417": "]L2",  # PDF417
    "aztec": "]z0",  # Aztec Code
    "ean13": "]E0",  # EAN-13, no add-on
    "itf": "]I0",  # Interleaved 2 of 5 ("]I1" with a valid check digit)
    "code39": "]A0",  # Code 39, no check character
}

# From edge.locker.QR_PREFIX, copied rather than imported (a simulator never imports edge);
# tests/test_camera_sim.py checks the two agree.
PICKUP_QR_PREFIX = "LMQR:"

FRAME_WIDTH = 1280
FRAME_HEIGHT = 720

_FNC1 = "\xf1"  # python-barcode's FNC1 character
_LINEAR = frozenset({"code128", "gs1-128", "ean13", "itf", "code39"})
# Quiet zones in modules: 10 X for Code 128 / ITF / Code 39, 11 X for EAN-13 (its left side),
# 4 for QR; Data Matrix, Aztec and PDF417 need 1-2 and get 2.
_QUIET = {"ean13": 11, "qr": 4, "datamatrix": 2, "gs1-datamatrix": 2, "pdf417": 2, "aztec": 2}
_DEFAULT_MODULE_PX_LINEAR = 3
_DEFAULT_MODULE_PX_2D = 8
_BAR_HEIGHT_MODULES = 40  # 120 px at 3 px per module: about 15 mm on a 203 dpi printer

_PAPER = (244, 246, 247)  # BGR: thermal label stock, a little off-white
_INK = (24, 24, 26)

# Predefined-length GS1 AIs, by their first two digits: total length of AI plus data (the
# GS1 General Specifications' table of element strings with predefined length). No separator
# is needed after these, and zint writes none.
_GS1_FIXED_TOTAL = {
    **dict.fromkeys(["00"], 20),
    **dict.fromkeys(["01", "02", "03"], 16),
    "04": 18,
    **dict.fromkeys([f"{n}" for n in range(11, 20)], 8),
    "20": 4,
    **dict.fromkeys([f"{n}" for n in range(31, 37)], 10),
    "41": 16,
}
# How many digits the AI itself has, by its first two digits (2 unless listed).
_GS1_AI_DIGITS = {
    **dict.fromkeys(["23", "24", "25", "40", "41", "42"], 3),
    **dict.fromkeys(["31", "32", "33", "34", "35", "36", "39", "43", "70", "71", "72"], 4),
    **dict.fromkeys(["80", "81", "82"], 4),
}


# --- symbols -------------------------------------------------------------------------------


def _gs1_elements(data: str) -> list[tuple[str, str, bool]]:
    """Split a GS1 element string (GS separated) into (AI, value, fixed length) triples."""
    if not data or data[0] == GS:
        raise SimulatorError(f"GS1 data must start with an AI: {data!r}")
    elements: list[tuple[str, str, bool]] = []
    i = 0
    while i < len(data):
        if data[i] == GS:
            i += 1
            continue
        prefix = data[i : i + 2]
        ai_len = _GS1_AI_DIGITS.get(prefix, 2)
        ai = data[i : i + ai_len]
        if len(ai) < ai_len or not ai.isdigit():
            raise SimulatorError(f"GS1 data has no AI at offset {i}: {data!r}")
        start = i + ai_len
        total = _GS1_FIXED_TOTAL.get(prefix)
        if total is not None:
            end = i + total
            value = data[start:end]
            if len(value) != total - ai_len or GS in value:
                raise SimulatorError(f"GS1 AI ({ai}) needs {total - ai_len} characters: {data!r}")
        else:
            end = data.find(GS, start)
            end = len(data) if end < 0 else end
            value = data[start:end]
        if not value or "[" in value or "(" in value:
            raise SimulatorError(f"GS1 AI ({ai}) has no usable value: {data!r}")
        elements.append((ai, value, total is not None))
        i = end
    return elements


def _gs1_hri(elements: Sequence[tuple[str, str, bool]]) -> str:
    return " ".join(f"({ai}) {value}" for ai, value, _ in elements)


@dataclass(frozen=True)
class _Symbol:
    modules: NDArray[np.bool_]  # True = dark; one row for linear symbols
    text: str  # what a scanner transmits after the AIM id
    format: str
    linear: bool
    quiet: int  # modules


def _check_text(text: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise SimulatorError(f"unknown symbol format {fmt!r}; one of {', '.join(FORMATS)}")
    if not text:
        raise SimulatorError("a symbol needs data")
    # Parcel labels and pickup tokens are ASCII; beyond it each writer guesses an encoding
    # (and each reader guesses back), which would test the guessing, not the camera.
    if not text.isascii():
        raise SimulatorError(f"symbol data must be ASCII: {text!r}")


def _encode(text: str, fmt: str, *, ec_level: str | None = None) -> _Symbol:
    _check_text(text, fmt)
    if fmt in ("code128", "gs1-128"):
        from barcode.codex import Code128, Gs1_128
        from barcode.errors import BarcodeError

        if fmt == "gs1-128":
            _gs1_elements(text)  # refuse what is not a GS1 element string
        try:
            code = Gs1_128(text.replace(GS, _FNC1)) if fmt == "gs1-128" else Code128(text)
            pattern = code.build()[0]
        except (BarcodeError, KeyError, RuntimeError, ValueError) as e:
            raise SimulatorError(f"python-barcode cannot write {fmt} {text!r}: {e}") from e
        modules = np.array([[c == "1" for c in pattern]], dtype=bool)
        return _Symbol(modules, text, fmt, True, 10)

    import zxingcpp

    formats = {
        "qr": zxingcpp.BarcodeFormat.QRCode,
        "datamatrix": zxingcpp.BarcodeFormat.DataMatrix,
        "gs1-datamatrix": zxingcpp.BarcodeFormat.DataMatrix,
        "pdf417": zxingcpp.BarcodeFormat.PDF417,
        "aztec": zxingcpp.BarcodeFormat.Aztec,
        "ean13": zxingcpp.BarcodeFormat.EAN13,
        "itf": zxingcpp.BarcodeFormat.ITF,
        "code39": zxingcpp.BarcodeFormat.Code39,
    }
    options: dict[str, Any] = {}
    content = text
    if fmt == "gs1-datamatrix":
        content = "".join(f"[{ai}]{value}" for ai, value, _ in _gs1_elements(text))
        options["gs1"] = True
    if fmt in ("datamatrix", "gs1-datamatrix"):
        options["forceSquare"] = True
    if ec_level is not None:
        options["ec_level"] = ec_level
    try:
        created = zxingcpp.create_barcode(content, formats[fmt], **options)
    except (ValueError, RuntimeError) as e:
        raise SimulatorError(f"zxing-cpp cannot write {fmt} {text!r}: {e}") from e
    bitmap = np.array(created.to_image(scale=1, add_quiet_zones=False))
    linear = fmt in _LINEAR
    modules = bitmap[:1] < 128 if linear else bitmap < 128
    return _Symbol(modules, created.bytes.decode("latin-1"), fmt, linear, _QUIET.get(fmt, 10))


def _aim(fmt: str, text: str) -> str:
    if fmt == "itf" and text.isdigit() and len(text) > 1:
        body, check = text[:-1], int(text[-1])
        total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
        if (10 - total % 10) % 10 == check:
            return "]I1"
    return AIM_IDS[fmt]


def _raster(symbol: _Symbol, module_px: int, bar_height_px: int | None) -> tuple[Image, int, int]:
    """The symbol as grey pixels (0 dark, 255 light) with its quiet zone; and its offset."""
    if module_px < 1:
        raise SimulatorError("module_px must be at least 1")
    q = symbol.quiet * module_px
    if symbol.linear:
        height = bar_height_px or _BAR_HEIGHT_MODULES * module_px
        row = np.where(symbol.modules[0], 0, 255).astype(np.uint8).repeat(module_px)
        bars = np.tile(row, (height, 1))
        margin = 2 * module_px
        return np.pad(bars, ((margin, margin), (q, q)), constant_values=255), q, margin
    cells = np.where(symbol.modules, 0, 255).astype(np.uint8)
    cells = cells.repeat(module_px, axis=0).repeat(module_px, axis=1)
    return np.pad(cells, q, constant_values=255), q, q


def render_symbol(
    text: str,
    format: SymbolFormat,
    *,
    module_px: int | None = None,
    bar_height_px: int | None = None,
    ec_level: str | None = None,
) -> Image:
    """The bare symbol, grey uint8 (0 dark, 255 light), with its quiet zone and nothing else.

    ``module_px`` is the narrow bar or cell width in pixels (default 3 for linear symbols, 8
    for 2D); ``ec_level`` is passed to zxing-cpp (QR: "L", "M", "Q", "H").
    """
    symbol = _encode(text, format, ec_level=ec_level)
    module = module_px or (_DEFAULT_MODULE_PX_LINEAR if symbol.linear else _DEFAULT_MODULE_PX_2D)
    return _raster(symbol, module, bar_height_px)[0]


# --- printed labels ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PrintedLabel:
    """A shipping label as printed: the image and what its symbol says.

    ``text`` is what the symbol carries, byte for byte what a scanner sends after ``aim``
    (GS1 separators as GS, "\\x1d"). ``symbol_box`` is ``(x, y, w, h)`` of the bars or cells
    on the label, without the quiet zone.
    """

    image: Image
    text: str
    format: str
    aim: str
    symbol_box: tuple[int, int, int, int]
    module_px: int


_NAMES = ("A. JANSEN", "M. DE VRIES", "S. BAKKER", "L. MEIJER", "K. SMIT", "R. VISSER")
_STREETS = ("KERKSTRAAT 12", "DORPSWEG 4B", "STATIONSPLEIN 7", "MOLENLAAN 31", "HAVENKADE 2")
_CITIES = ("1012 AB AMSTERDAM", "3511 CD UTRECHT", "2511 EF DEN HAAG", "5611 JK EINDHOVEN")
_FORMAT_OF_AIM = {
    "]C0": "code128",
    "]C1": "gs1-128",
    "]Q1": "qr",
    "]d1": "datamatrix",
    "]d2": "gs1-datamatrix",
}


def render_label(
    label: Label | str,
    *,
    format: SymbolFormat | None = None,
    module_px: int | None = None,
    carrier: str | None = None,
    lines: Sequence[str] | None = None,
    ec_level: str | None = None,
) -> PrintedLabel:
    """A printed shipping label: carrier block, sender, addressee, the symbol, its HRI text.

    ``label`` is a `simulators.parcels.Label` (its AIM id picks the format unless ``format``
    is given) or plain text (then ``format`` is required). ``lines`` replaces the address
    block; by default one is chosen from the text, so the same label always looks the same.
    """
    import cv2

    if isinstance(label, Label):
        text = label.data
        carrier = carrier or label.carrier
        fmt = format or _FORMAT_OF_AIM.get(label.aim)
        if fmt is None:
            raise SimulatorError(f"no symbol format for AIM id {label.aim!r}; give format=")
    else:
        text = label
        if format is None:
            raise SimulatorError("render_label needs format= for plain text")
        fmt = format
    symbol = _encode(text, fmt, ec_level=ec_level)
    module = module_px or (_DEFAULT_MODULE_PX_LINEAR if symbol.linear else _DEFAULT_MODULE_PX_2D)
    bars, sx, sy = _raster(symbol, module, None)
    gs1 = fmt in ("gs1-128", "gs1-datamatrix")
    hri = _gs1_hri(_gs1_elements(symbol.text)) if gs1 else symbol.text

    font = cv2.FONT_HERSHEY_SIMPLEX
    pad = 28
    width = max(bars.shape[1] + 2 * pad, 640)
    pick = zlib.crc32(text.encode("ascii"))
    address = (
        list(lines)
        if lines is not None
        else [
            "TO: " + _NAMES[pick % len(_NAMES)],
            "    " + _STREETS[(pick >> 8) % len(_STREETS)],
            "    " + _CITIES[(pick >> 16) % len(_CITIES)],
        ]
    )
    header_h, line_h, hri_h = 64, 34, 40
    top_h = pad + header_h + 14 + line_h * (1 + len(address)) + 16
    height = top_h + bars.shape[0] + hri_h + pad
    img = np.full((height, width, 3), _PAPER, np.uint8)

    # Carrier block: white on black, like the big routing letters of a real label.
    name = (carrier or "PARCEL").upper()[:12]
    (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_DUPLEX, 1.4, 3)
    cv2.rectangle(img, (pad, pad), (pad + tw + 24, pad + header_h), _INK, -1)
    cv2.putText(
        img,
        name,
        (pad + 12, pad + (header_h + th) // 2),
        cv2.FONT_HERSHEY_DUPLEX,
        1.4,
        _PAPER,
        3,
        cv2.LINE_AA,
    )
    cv2.putText(img, "1/1", (width - pad - 60, pad + 44), font, 1.1, _INK, 2, cv2.LINE_AA)
    y = pad + header_h + 14
    cv2.putText(
        img, "FROM: WEBSHOP BV, DEPOTWEG 4, UTRECHT", (pad, y + 24), font, 0.6, _INK, 1, cv2.LINE_AA
    )
    y += line_h
    cv2.line(img, (pad, y), (width - pad, y), _INK, 2)
    for line in address:
        cv2.putText(img, line[:40], (pad, y + 26), font, 0.8, _INK, 2, cv2.LINE_AA)
        y += line_h
    cv2.line(img, (pad, top_h - 8), (width - pad, top_h - 8), _INK, 2)

    x0 = (width - bars.shape[1]) // 2
    img[top_h : top_h + bars.shape[0], x0 : x0 + bars.shape[1]] = np.where(
        bars[..., None] < 128, np.array(_INK, np.uint8), np.array(_PAPER, np.uint8)
    )
    hri_text = hri.replace(GS, "<GS>")[:60]
    scale = 0.7
    (tw, _), _ = cv2.getTextSize(hri_text, font, scale, 2)
    cv2.putText(
        img,
        hri_text,
        (max(pad, (width - tw) // 2), top_h + bars.shape[0] + 28),
        font,
        scale,
        _INK,
        2,
        cv2.LINE_AA,
    )
    cv2.rectangle(img, (3, 3), (width - 4, height - 4), _INK, 2)

    box_h = bars.shape[0] - 2 * sy
    box = (x0 + sx, top_h + sy, bars.shape[1] - 2 * sx, box_h)
    return PrintedLabel(img, symbol.text, fmt, _aim(fmt, symbol.text), box, module)


# --- frames and scenes ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CameraFrame:
    """One frame and the truth about it: which symbol is where (None: no symbol in it).

    ``symbol_corners`` are the symbol's corners (top-left, top-right, bottom-right,
    bottom-left as printed) in frame pixels; they may lie outside the frame.
    """

    image: Image
    text: str | None = None
    format: str | None = None
    aim: str | None = None
    symbol_corners: tuple[tuple[float, float], ...] | None = None

    @property
    def symbol_in_view(self) -> bool:
        """The whole symbol is inside the frame (it may still be blurred or covered)."""
        if self.symbol_corners is None:
            return False
        h, w = self.image.shape[:2]
        return all(0 <= x <= w - 1 and 0 <= y <= h - 1 for x, y in self.symbol_corners)

    @property
    def symbol_box(self) -> tuple[int, int, int, int] | None:
        """``(x, y, w, h)`` around the symbol, clipped to the frame; None if it is not in it."""
        if self.symbol_corners is None:
            return None
        h, w = self.image.shape[:2]
        xs = [x for x, _ in self.symbol_corners]
        ys = [y for _, y in self.symbol_corners]
        x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
        x1, y1 = min(w, math.ceil(max(xs)) + 1), min(h, math.ceil(max(ys)) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        return (x0, y0, x1 - x0, y1 - y0)

    def with_image(self, image: Image) -> CameraFrame:
        """The same truth over another image: for photometric distortions of this frame."""
        return dataclasses.replace(self, image=image)


def _typed(matrix: MatLike, dtype: type[_Scalar]) -> NDArray[_Scalar]:
    """A cv2 result with the element type it has: cv2's stubs give every result as a matrix of
    any number type, while ours have their input's (uint8 frames, float32 masks, a float64
    homography). Checked, never converted: another type here is a bug to hear about."""
    array = np.asarray(matrix)
    if array.dtype != dtype:
        raise SimulatorError(f"cv2 returned {array.dtype}, expected {np.dtype(dtype)}")
    return array.astype(dtype, copy=False)


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@functools.lru_cache(maxsize=8)
def _backdrop(kind: str, seed: int, width: int, height: int) -> Image:
    import cv2

    rng = np.random.default_rng(seed)

    def smooth_noise(cells_x: int, amplitude: float) -> NDArray[np.float32]:
        cells_y = max(2, round(cells_x * height / width))
        coarse = rng.normal(0.0, amplitude, (cells_y, cells_x)).astype(np.float32)
        return _typed(
            cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), np.float32
        )

    def fine(sigma: float) -> NDArray[np.float32]:
        return rng.standard_normal((height, width), dtype=np.float32) * np.float32(sigma)

    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if kind == "cardboard":
        base = np.array([110, 158, 196], np.float32)  # kraft brown
        shade = smooth_noise(12, 9.0) + smooth_noise(48, 3.0)
        shade += 3.0 * np.sin(yy * (2 * math.pi / 26.0))  # corrugation under the liner
        img = base + (shade + fine(4.0))[..., None]
    elif kind == "van_floor":
        base = np.array([60, 61, 63], np.float32)  # grey anti-slip plywood
        # Raised anti-slip pattern: a staggered grid of small lighter studs.
        row = np.floor(yy / 22.0)
        dx = (xx + 11.0 * (row % 2)) % 22.0 - 11.0
        dy = yy % 22.0 - 11.0
        studs = np.clip(1.0 - (dx * dx + dy * dy) / 16.0, 0.0, 1.0) * 16.0
        grime = smooth_noise(10, 7.0)
        img = base + (studs + grime + fine(3.0))[..., None]
    elif kind == "locker":
        # What a locker's camera sees behind a customer: out of focus, mostly dark.
        # Greys of a street or a hall, with a little colour (clothes, signs) in them.
        grey = rng.uniform(35.0, 120.0, (5, 9, 1))
        colours = (grey + rng.normal(0.0, 12.0, (5, 9, 3))).astype(np.float32)
        img = cv2.resize(colours, (width, height), interpolation=cv2.INTER_CUBIC)
        img = img * (0.75 + 0.35 * (1.0 - yy / height))[..., None]
        img += fine(2.0)[..., None]
    else:
        raise SimulatorError(f"unknown background {kind!r}: cardboard, van_floor or locker")
    out = np.clip(img, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def _project(
    size: tuple[float, float],
    center: tuple[float, float],
    *,
    angle_deg: float,
    pitch_deg: float,
    yaw_deg: float,
    pivot: tuple[float, float] | None = None,
    focal: float = 1500.0,
) -> NDArray[np.float32]:
    """Corners of a flat ``w x h`` rectangle turned in 3D about ``pivot`` (a point of the
    rectangle, default its middle) and seen by a pinhole camera, the pivot at ``center``."""
    w, h = size
    px, py = pivot if pivot is not None else (w / 2, h / 2)
    a, p, y = (math.radians(v) for v in (-angle_deg, pitch_deg, yaw_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    corners = np.array([[0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0]]) - np.array([px, py, 0])
    turned = corners @ (rz @ rx @ ry).T + np.array([0.0, 0.0, focal])
    uv: NDArray[np.float64] = focal * turned[:, :2] / turned[:, 2:3] + np.array(center)
    return uv.astype(np.float32)


def _composite(
    canvas: Image,
    src: Image,
    quad: NDArray[np.float32],
    *,
    alpha: Image | None = None,
    shadow: float = 0.35,
    smear_px: float = 0.0,
    smear_angle_deg: float = 0.0,
) -> NDArray[np.float64]:
    """Warp ``src`` onto ``quad`` of ``canvas`` in place; returns the homography used.

    ``smear_px``: the object moved that far during the exposure. Its colour (premultiplied by
    its coverage) and its coverage are both smeared, which is exact for a straight move over a
    background that stays still and sharp.
    """
    import cv2

    h, w = src.shape[:2]
    frame_h, frame_w = canvas.shape[:2]
    rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = _typed(cv2.getPerspectiveTransform(rect, quad), np.float64)
    # Work only on the part of the frame the object (its smear, its shadow) can reach.
    reach = (32 if shadow > 0 else 2) + math.ceil(smear_px)
    x0 = max(0, math.floor(float(quad[:, 0].min())) - reach)
    y0 = max(0, math.floor(float(quad[:, 1].min())) - reach)
    x1 = min(frame_w, math.ceil(float(quad[:, 0].max())) + reach)
    y1 = min(frame_h, math.ceil(float(quad[:, 1].max())) + reach)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return homography  # out of view, or only a sliver of its margin in it
    shifted = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ homography
    size = (x1 - x0, y1 - y0)
    cover = alpha if alpha is not None else np.full((h, w), 255, np.uint8)
    m = cv2.warpPerspective(cover, shifted, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    m /= 255.0
    colour = cv2.warpPerspective(src, shifted, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    colour *= m[..., None]
    if smear_px > 1:
        m = motion_blur(m, smear_px, smear_angle_deg)
        colour = motion_blur(colour, smear_px, smear_angle_deg)
    region = canvas[y0:y1, x0:x1]
    out = region.astype(np.float32)
    if shadow > 0:
        # A soft shadow below and right of the object: what sits on a surface has one.
        moved = np.zeros(m.shape, np.float32)
        moved[8:, 6:] = m[:-8, :-6]
        soft = cv2.GaussianBlur(moved, (0, 0), 6.0)
        out *= (1.0 - shadow * soft)[..., None]
    out = out * (1.0 - m[..., None]) + colour
    region[...] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return homography


def _transform(
    points: Sequence[tuple[float, float]], homography: NDArray[np.float64]
) -> tuple[tuple[float, float], ...]:
    pts = np.array([[x, y, 1.0] for x, y in points]) @ homography.T
    return tuple((float(px / pw), float(py / pw)) for px, py, pw in pts)


@dataclass(frozen=True)
class Scene:
    """Where the camera looks: a background, and a label placed on it.

    ``background`` is "cardboard" (a parcel's top), "van_floor" (grey anti-slip floor),
    "locker" (dark, out-of-focus surroundings) or a BGR colour; ``seed`` draws its texture.
    """

    background: str | tuple[int, int, int] = "cardboard"
    seed: int = 0
    width: int = FRAME_WIDTH
    height: int = FRAME_HEIGHT

    def backdrop(self) -> Image:
        """The empty view: a fresh array each time."""
        if isinstance(self.background, str):
            return _backdrop(self.background, self.seed, self.width, self.height).copy()
        return np.full((self.height, self.width, 3), self.background, np.uint8)

    def frame(
        self,
        label: PrintedLabel | None = None,
        *,
        center: tuple[float, float] | None = None,
        width_px: float | None = None,
        angle_deg: float = 0.0,
        pitch_deg: float = 0.0,
        yaw_deg: float = 0.0,
        smear_px: float = 0.0,
        smear_angle_deg: float = 0.0,
    ) -> CameraFrame:
        """The label lying in view: centred at ``center``, ``width_px`` wide (default: as
        printed, one label pixel per frame pixel), turned ``angle_deg`` in the image plane
        and tilted ``pitch_deg`` / ``yaw_deg`` away from the camera. ``smear_px``: the label
        moved that far (in direction ``smear_angle_deg``) while the shutter was open, so it is
        motion-blurred and the background is not."""
        import cv2

        canvas = self.backdrop()
        if label is None:
            return CameraFrame(canvas)
        src = label.image
        scale = 1.0 if width_px is None else width_px / src.shape[1]
        if scale <= 0:
            raise SimulatorError("width_px must be positive")
        if abs(scale - 1.0) > 1e-6:
            size = (max(1, round(src.shape[1] * scale)), max(1, round(src.shape[0] * scale)))
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            src = _typed(cv2.resize(src, size, interpolation=interpolation), np.uint8)
        sx = src.shape[1] / label.image.shape[1]
        sy = src.shape[0] / label.image.shape[0]
        where = center if center is not None else (self.width / 2, self.height / 2)
        quad = _project(
            (src.shape[1], src.shape[0]),
            where,
            angle_deg=angle_deg,
            pitch_deg=pitch_deg,
            yaw_deg=yaw_deg,
        )
        homography = _composite(
            canvas, src, quad, smear_px=smear_px, smear_angle_deg=smear_angle_deg
        )
        x, y, w, h = label.symbol_box
        corners = [
            (x * sx, y * sy),
            ((x + w) * sx, y * sy),
            ((x + w) * sx, (y + h) * sy),
            (x * sx, (y + h) * sy),
        ]
        return CameraFrame(
            canvas, label.text, label.format, label.aim, _transform(corners, homography)
        )


def label_pass(
    scene: Scene,
    label: PrintedLabel,
    *,
    enter: int = 8,
    stay: int = 12,
    leave: int = 8,
    width_px: float | None = None,
    angle_deg: float = 0.0,
    y: float | None = None,
    exposure: float = 0.0,
) -> Iterator[CameraFrame]:
    """A label carried through the view: in from the right edge over ``enter`` frames (the
    first with the label just out of view), ``stay`` frames at the centre, out to the left over
    ``leave`` frames (the last with it just gone). ``exposure`` is the share of the frame
    interval the shutter is open (0.25: 1/100 s at 25 fps): a moving label smears over that
    share of the distance it moves between frames."""
    if not 0 <= exposure <= 1:
        raise SimulatorError("exposure is a share of the frame interval: 0..1")
    label_w = label.image.shape[1] if width_px is None else width_px
    label_h = label.image.shape[0] * label_w / label.image.shape[1]
    reach = (
        abs(label_w * math.cos(math.radians(angle_deg)))
        + abs(label_h * math.sin(math.radians(angle_deg)))
    ) / 2 + 2
    cx = scene.width / 2
    cy = scene.height / 2 if y is None else y
    start, end = scene.width + reach, -reach
    xs = [start + (cx - start) * k / enter for k in range(enter)]
    xs += [cx] * stay
    xs += [cx + (end - cx) * (k + 1) / leave for k in range(leave)]
    previous = xs[0] if xs else cx
    for x in xs:
        yield scene.frame(
            label,
            center=(x, cy),
            width_px=width_px,
            angle_deg=angle_deg,
            smear_px=exposure * abs(x - previous),
        )
        previous = x


# --- distortions ---------------------------------------------------------------------------


def rotate(image: Image, angle_deg: float, *, center: tuple[float, float] | None = None) -> Image:
    """The whole image turned ``angle_deg`` counter-clockwise about ``center`` (default: the
    middle); corners uncovered by the turn repeat the edge pixels."""
    import cv2

    h, w = image.shape[:2]
    pivot = center if center is not None else ((w - 1) / 2, (h - 1) / 2)
    matrix = cv2.getRotationMatrix2D(pivot, angle_deg, 1.0)
    turned = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return _typed(turned, np.uint8)


def perspective(
    image: Image,
    rng: int | np.random.Generator | None = None,
    *,
    jitter: float = 0.05,
    offsets: Sequence[tuple[float, float]] | None = None,
) -> Image:
    """A camera not square to the surface: the image's corners moved and the image warped.

    Each corner moves by ``offsets`` (pixels; TL, TR, BR, BL) if given, else by up to
    ``jitter`` of the width and height, drawn from ``rng`` (a seed or a numpy Generator).
    """
    import cv2

    h, w = image.shape[:2]
    if offsets is None:
        if rng is None:
            raise SimulatorError("perspective needs rng (a seed) or explicit offsets")
        moves = _rng(rng).uniform(-jitter, jitter, (4, 2)) * np.array([w, h])
    else:
        moves = np.asarray(offsets, np.float64).reshape(4, 2)
    rect = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    matrix = cv2.getPerspectiveTransform(rect, (rect + moves).astype(np.float32))
    warped = cv2.warpPerspective(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return _typed(warped, np.uint8)


def gaussian_blur(image: Image, sigma: float) -> Image:
    """Out of focus: a Gaussian point-spread of ``sigma`` pixels."""
    import cv2

    if sigma <= 0:
        return image.copy()
    return _typed(cv2.GaussianBlur(image, (0, 0), sigma), np.uint8)


def motion_blur(image: NDArray[Any], length_px: float, angle_deg: float = 0.0) -> NDArray[Any]:
    """The label (or the hand) moving during the exposure: a line smear ``length_px`` long in
    direction ``angle_deg`` (0: horizontal)."""
    import cv2

    if length_px <= 1:
        return image.copy()
    half = (length_px - 1) / 2
    dx = math.cos(math.radians(angle_deg)) * half
    dy = -math.sin(math.radians(angle_deg)) * half
    # The kernel is only as big as the line: a horizontal smear is one row, which keeps long
    # smears cheap.
    kw, kh = 2 * math.ceil(abs(dx)) + 3, 2 * math.ceil(abs(dy)) + 3
    kernel = np.zeros((kh, kw), np.float32)
    cx, cy = (kw - 1) / 2, (kh - 1) / 2
    shift = 4  # sub-pixel end points
    p0 = (round((cx - dx) * 2**shift), round((cy - dy) * 2**shift))
    p1 = (round((cx + dx) * 2**shift), round((cy + dy) * 2**shift))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, shift)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def glare(
    image: Image,
    center: tuple[float, float],
    axes: tuple[float, float],
    *,
    angle_deg: float = 0.0,
    strength: float = 0.85,
) -> Image:
    """A light reflected off glossy label film or a phone's glass: an ellipse washed out
    towards white. ``axes`` are its half-lengths in pixels; ``strength`` 1 saturates the core.
    Full strength inside 60 % of the radius, falling to nothing at the ellipse's edge; pixels
    outside it are untouched."""
    if not 0 <= strength <= 1:
        raise SimulatorError("glare strength must be within 0..1")
    if min(axes) <= 0:
        raise SimulatorError("glare axes must be positive")
    h, w = image.shape[:2]
    out = image.copy()
    # Only the ellipse's bounding box can change.
    reach = max(axes)
    x0, x1 = max(0, math.floor(center[0] - reach)), min(w, math.ceil(center[0] + reach) + 1)
    y0, y1 = max(0, math.floor(center[1] - reach)), min(h, math.ceil(center[1] + reach) + 1)
    if x1 <= x0 or y1 <= y0 or strength == 0:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    a = math.radians(-angle_deg)
    u = (xx - center[0]) * math.cos(a) + (yy - center[1]) * math.sin(a)
    v = -(xx - center[0]) * math.sin(a) + (yy - center[1]) * math.cos(a)
    r2 = (u / axes[0]) ** 2 + (v / axes[1]) ** 2
    weight = strength * np.clip((1.0 - r2) / (1.0 - 0.36), 0.0, 1.0)
    if image.ndim == 3:
        weight = weight[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    region += (255.0 - region) * weight
    out[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return out


def sensor_noise(image: Image, rng: int | np.random.Generator, *, sigma: float = 6.0) -> Image:
    """Read noise of a small sensor: Gaussian, ``sigma`` grey levels, independent per pixel
    and channel."""
    out = _rng(rng).standard_normal(image.shape, dtype=np.float32)
    out *= sigma
    out += image
    out += 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def low_light(
    image: Image, *, gain: float = 0.35, contrast: float = 0.7, black_level: float = 6.0
) -> Image:
    """A dim van or a night-time locker: everything ``gain`` times as bright, contrast about
    the mean cut to ``contrast``, over the sensor's ``black_level``."""
    img = image.astype(np.float32)
    mean = float(img.mean())
    out: NDArray[np.float32] = black_level + gain * (mean + contrast * (img - mean))
    out += 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def jpeg(image: Image, quality: int = 50) -> Image:
    """Through a JPEG encoder at ``quality`` (0-100) and back: 8x8 blocks and ringing."""
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SimulatorError("cv2 could not JPEG-encode the image")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise SimulatorError("cv2 could not decode the JPEG it had just encoded")
    return _typed(decoded, np.uint8)


Side = Literal["left", "right", "top", "bottom"]
Occluder = Literal["finger", "tape"]


def occlude(
    image: Image,
    box: tuple[int, int, int, int],
    *,
    rng: int | np.random.Generator = 0,
    fraction: float = 0.3,
    kind: Occluder = "finger",
    side: Side | None = None,
) -> Image:
    """Part of a code covered, never all of it.

    ``box`` is ``(x, y, w, h)`` of the code (e.g. `CameraFrame.symbol_box`). A finger comes
    in from ``side`` (drawn from ``rng`` if None), reaching ``fraction`` of the code's depth
    from that side (its rounded tip at least its own half-width), opaque skin, about half as
    wide as the code's smaller side. Tape is a translucent strip across the whole code,
    parallel to ``side``'s edge, ``fraction`` of its depth wide, at a position drawn from
    ``rng``; it lowers the contrast under it.
    """
    import cv2

    if not 0 < fraction < 1:
        raise SimulatorError("occlusion fraction must be strictly between 0 and 1")
    r = _rng(rng)
    chosen: str = side if side is not None else str(r.choice(["left", "right", "top", "bottom"]))
    x, y, w, h = box
    horizontal = chosen in ("left", "right")  # the finger points along x
    depth, breadth = (w, h) if horizontal else (h, w)
    out = image.copy()
    if kind == "finger":
        reach = max(1, round(depth * fraction))
        # A finger is about as wide as a parcel code is tall, whatever the code's length.
        thick = max(2, min(round(min(w, h) * r.uniform(0.4, 0.5)), round(breadth * 0.6)))
        along = r.uniform(0.2, 0.8) * breadth
        radius = thick / 2

        def at(u: float) -> tuple[int, int]:
            """The point ``u`` pixels in from the side the finger enters by, on its axis."""
            px, py = {
                "left": (x + u, y + along),
                "right": (x + w - 1 - u, y + along),
                "top": (x + along, y + u),
                "bottom": (x + along, y + h - 1 - u),
            }[chosen]
            return (round(px), round(py))

        # From well outside the code to a rounded tip whose end reaches `reach` inside it.
        tip = max(0.0, reach - radius)
        cv2.line(
            out, at(-max(float(thick), depth * 0.3)), at(tip), (120, 150, 205), thick, cv2.LINE_AA
        )
        nail = (max(1, round(radius * 0.55)), max(1, round(radius * 0.45)))
        if not horizontal:
            nail = (nail[1], nail[0])
        cv2.ellipse(out, at(tip), nail, 0, 0, 360, (165, 182, 222), -1, cv2.LINE_AA)
        return out
    if kind != "tape":
        raise SimulatorError(f"unknown occlusion {kind!r}: finger or tape")
    band = max(1, round(depth * fraction))
    offset = round(r.uniform(0.0, depth - band))
    mask = np.zeros(image.shape[:2], np.float32)
    margin = max(10, breadth // 10)
    if horizontal:
        mask[max(0, y - margin) : y + h + margin, max(0, x + offset) : x + offset + band] = 1.0
    else:
        mask[max(0, y + offset) : y + offset + band, max(0, x - margin) : x + w + margin] = 1.0
    tint = np.array([205, 220, 225], np.float32)  # clear packing tape, slightly yellow
    m = 0.45 * mask[..., None] if image.ndim == 3 else 0.45 * mask
    blended = image.astype(np.float32) * (1 - m) + (tint if image.ndim == 3 else 215.0) * m
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


# --- a customer's phone at a locker --------------------------------------------------------


def _rounded_rect(
    img: Image,
    p0: tuple[int, int],
    p1: tuple[int, int],
    radius: int,
    colour: tuple[int, int, int] | int,
) -> None:
    import cv2

    (x0, y0), (x1, y1) = p0, p1
    cv2.rectangle(img, (x0 + radius, y0), (x1 - radius, y1), colour, -1)
    cv2.rectangle(img, (x0, y0 + radius), (x1, y1 - radius), colour, -1)
    for cx, cy in (
        (x0 + radius, y0 + radius),
        (x1 - radius, y0 + radius),
        (x0 + radius, y1 - radius),
        (x1 - radius, y1 - radius),
    ):
        cv2.circle(img, (cx, cy), radius, colour, -1, cv2.LINE_AA)


def phone_qr_scene(
    token: str,
    *,
    seed: int = 0,
    angle_deg: float = 12.0,
    pitch_deg: float = 10.0,
    yaw_deg: float = -18.0,
    phone_height_px: float = 470.0,
    center: tuple[float, float] | None = None,
    glare_strength: float = 0.55,
    ec_level: str = "M",
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
) -> CameraFrame:
    """A customer holding up a phone with a pickup QR in front of a locker's camera.

    The QR carries ``"LMQR:" + token`` (a token that already starts with "LMQR:" is used as
    it is): dark modules on a bright screen, a black bezel, a hand, the phone tilted
    (``angle_deg`` in the image plane, ``pitch_deg`` / ``yaw_deg`` out of it), a reflection on
    the glass (``glare_strength``, 0 for none), a slightly soft, noisy camera (``seed``).
    """
    import cv2

    text = token if token.startswith(PICKUP_QR_PREFIX) else PICKUP_QR_PREFIX + token
    symbol = _encode(text, "qr", ec_level=ec_level)

    # Phone-sized pixels: the phone, room around it for the hand, the arm running off below.
    pw, ph, margin, arm = 360, 740, 90, 700
    cw, ch = pw + 2 * margin, ph + margin + arm
    px0, py0 = margin, margin // 2
    art = np.zeros((ch, cw, 3), np.uint8)
    alpha = np.zeros((ch, cw), np.uint8)
    skin, skin_dark = (118, 148, 200), (98, 126, 176)

    # The hand behind the phone: a palm below it and the wrist running out of the picture.
    palm = ((px0 + pw // 2 + 30, py0 + ph + 10), (pw // 2 + 40, 150))
    wrist = np.array(
        [
            [px0 + 60, py0 + ph + 60],
            [px0 + pw + 20, py0 + ph + 60],
            [px0 + pw - 20, ch],
            [px0 + 100, ch],
        ],
        np.int32,
    )
    for layer, colour in ((art, skin_dark), (alpha, 255)):
        cv2.ellipse(layer, palm[0], palm[1], 0, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.fillConvexPoly(layer, wrist, colour, cv2.LINE_AA)

    # The phone: a dark body with a thin metal rim, a bright screen inset.
    _rounded_rect(art, (px0 - 3, py0 - 3), (px0 + pw + 3, py0 + ph + 3), 50, (92, 92, 98))
    _rounded_rect(alpha, (px0 - 3, py0 - 3), (px0 + pw + 3, py0 + ph + 3), 50, 255)
    _rounded_rect(art, (px0, py0), (px0 + pw, py0 + ph), 47, (18, 18, 20))
    bezel, chin = 16, 64
    sx0, sy0, sx1, sy1 = px0 + bezel, py0 + chin, px0 + pw - bezel, py0 + ph - chin
    screen = (252, 250, 247)
    art[sy0:sy1, sx0:sx1] = screen
    font = cv2.FONT_HERSHEY_SIMPLEX
    art[sy0 : sy0 + 56, sx0:sx1] = (150, 84, 24)  # the app's header bar
    cv2.putText(art, "lastmile", (sx0 + 16, sy0 + 38), font, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(
        art, "Your parcel is ready", (sx0 + 16, sy0 + 92), font, 0.7, (40, 40, 40), 2, cv2.LINE_AA
    )
    n = symbol.modules.shape[0]
    module = (sx1 - sx0 - 24) // (n + 2 * symbol.quiet)
    bars, q, _ = _raster(symbol, module, None)
    qx0 = sx0 + (sx1 - sx0 - bars.shape[1]) // 2
    qy0 = sy0 + 112
    art[qy0 : qy0 + bars.shape[0], qx0 : qx0 + bars.shape[1]] = np.where(
        bars[..., None] < 128, np.array((30, 30, 30), np.uint8), np.array(screen, np.uint8)
    )
    cv2.putText(
        art,
        "Scan at the locker",
        (sx0 + 16, qy0 + bars.shape[0] + 40),
        font,
        0.7,
        (90, 90, 90),
        2,
        cv2.LINE_AA,
    )
    qr_corners = [
        (qx0 + q, qy0 + q),
        (qx0 + q + n * module, qy0 + q),
        (qx0 + q + n * module, qy0 + q + n * module),
        (qx0 + q, qy0 + q + n * module),
    ]

    # Fingers over the right edge and a thumb over the left bezel, in front of the phone.
    for k in range(3):
        c = (px0 + pw + 6, py0 + ph - 250 + 72 * k)
        cv2.ellipse(art, c, (34, 24), 0, 0, 360, skin, -1, cv2.LINE_AA)
        cv2.ellipse(alpha, c, (34, 24), 0, 0, 360, 255, -1, cv2.LINE_AA)
    thumb = ((px0 - 4, py0 + ph - 150), (26, 70))
    cv2.ellipse(art, thumb[0], thumb[1], -15, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(alpha, thumb[0], thumb[1], -15, 0, 360, 255, -1, cv2.LINE_AA)

    # A window or ceiling light reflected in the glass, across the upper right of the screen.
    if glare_strength > 0:
        glass = np.zeros((ch, cw), np.uint8)
        _rounded_rect(glass, (px0, py0), (px0 + pw, py0 + ph), 47, 255)
        shone = glare(
            art,
            (px0 + pw * 0.78, py0 + ph * 0.28),
            (pw * 0.42, ph * 0.09),
            angle_deg=35.0,
            strength=glare_strength,
        )
        art = np.where(glass[..., None] > 0, shone, art)

    canvas = _backdrop("locker", seed, width, height).copy()
    scale = phone_height_px / ph
    small = _typed(
        cv2.resize(art, (round(cw * scale), round(ch * scale)), interpolation=cv2.INTER_AREA),
        np.uint8,
    )
    small_alpha = _typed(
        cv2.resize(alpha, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA),
        np.uint8,
    )
    where = center if center is not None else (width * 0.55, height * 0.5)
    quad = _project(
        (small.shape[1], small.shape[0]),
        where,
        angle_deg=angle_deg,
        pitch_deg=pitch_deg,
        yaw_deg=yaw_deg,
        pivot=((px0 + pw / 2) * scale, (py0 + ph / 2) * scale),  # the phone's middle
    )
    homography = _composite(canvas, small, quad, alpha=small_alpha, shadow=0.0)
    sx = small.shape[1] / cw
    sy = small.shape[0] / ch
    corners = _transform([(x * sx, y * sy) for x, y in qr_corners], homography)

    rng = np.random.default_rng(seed)
    image = sensor_noise(gaussian_blur(canvas, 0.7), rng, sigma=3.0)
    return CameraFrame(image, symbol.text, "qr", AIM_IDS["qr"], corners)


# --- the video source ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A symbol wholly in view for frames ``first_frame`` to ``last_frame`` (inclusive)."""

    text: str
    format: str
    aim: str
    first_frame: int
    last_frame: int

    @property
    def frames(self) -> range:
        return range(self.first_frame, self.last_frame + 1)


class SimulatedCamera:
    """A recorded camera a driver opens like a real one: `source` is a video file path.

    The frames (CameraFrame, or bare BGR arrays that show no symbol) are written at once, as
    Motion-JPEG in an AVI (OpenCV's own MJPEG writer, so no FFmpeg is needed), to ``path`` or
    to a fresh temporary directory that `close` removes. ``history`` lists each run of frames
    in which one symbol was wholly in view: the truth about what was in front of the lens, not
    a promise that any decoder reads it (a frame may be blurred or covered).
    """

    def __init__(
        self,
        frames: Iterable[CameraFrame | Image],
        *,
        fps: float = 25.0,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        import cv2

        if fps <= 0:
            raise SimulatorError("fps must be positive")
        self.fps = fps
        self._tmpdir: Path | None = None
        if path is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="lastmile-camera-"))
            target = self._tmpdir / "camera.avi"
        else:
            target = Path(path)
        self.source = str(target)
        self.history: list[Shown] = []
        self.frame_count = 0
        self.frame_size: tuple[int, int] | None = None  # (width, height)
        writer: Any = None
        try:
            for item in frames:
                shot = item if isinstance(item, CameraFrame) else CameraFrame(item)
                image = shot.image
                if image.ndim == 2:  # what it makes of a non-uint8 grey is refused below
                    image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                    raise SimulatorError("frames must be BGR uint8 arrays (or grey)")
                size = (image.shape[1], image.shape[0])
                if writer is None:
                    self.frame_size = size
                    writer = cv2.VideoWriter(
                        self.source,
                        cv2.CAP_OPENCV_MJPEG,
                        cv2.VideoWriter.fourcc(*"MJPG"),
                        fps,
                        size,
                    )
                    if not writer.isOpened():
                        raise SimulatorError(f"cannot write a video at {self.source}")
                elif size != self.frame_size:
                    raise SimulatorError(
                        f"frame {self.frame_count} is {size}, not {self.frame_size}"
                    )
                writer.write(np.ascontiguousarray(image))
                self._record(shot, self.frame_count)
                self.frame_count += 1
            if writer is None:
                raise SimulatorError("a camera needs at least one frame")
        except BaseException:
            if writer is not None:
                writer.release()
            self.close()
            raise
        writer.release()

    def _record(self, shot: CameraFrame, index: int) -> None:
        if not shot.symbol_in_view or shot.text is None:
            return
        last = self.history[-1] if self.history else None
        if (
            last is not None
            and last.last_frame == index - 1
            and last.text == shot.text
            and (last.format == shot.format)
        ):
            self.history[-1] = dataclasses.replace(last, last_frame=index)
            return
        self.history.append(
            Shown(shot.text, shot.format or "", shot.aim or "", first_frame=index, last_frame=index)
        )

    def shown_at(self, frame_index: int) -> Shown | None:
        """What was wholly in view in that frame, if anything."""
        for shown in self.history:
            if frame_index in shown.frames:
                return shown
        return None

    def close(self) -> None:
        """Remove the video if this camera made its directory; safe to call twice."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SimulatedCamera:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
