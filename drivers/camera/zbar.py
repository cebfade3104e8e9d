"""The decoder's second opinion: zbar, read through the library pyzbar loads.

This module owns the binding to libzbar's image scanner (`_Zbar`), the zbar constants it
needs (symbol types, configuration keys, the gray image format) and the AIM identifiers
zbar's reads are given, since zbar reports none; and `_Read`, a decoder's answer (zbar's or
zxing-cpp's) before the decoder maps it back into the image.

What it must never do: import pyzbar or numpy at module level (both are loaded when a
`_Zbar` is made or reads), or decide which reads stand: `drivers.camera.decoder` weighs
zbar's reads against zxing-cpp's.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]

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
# Interleaved 2 of 5 has no check character of its own, and a short one is a few bars: a
# short read out of noise, or out of a longer code entered halfway, is its classic false
# positive. Both decoders read no ITF shorter than this (zbar by its configuration,
# `drivers.camera.decoder` by dropping zxing-cpp's); parcels carry ITF-14.
_ITF_MIN_DIGITS = 6
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


@dataclass(frozen=True)
class _Read:
    """A decoder's answer before it is mapped back into the image.

    ``lines``: for zbar, how many of its scan lines decoded the symbol (zbar's "quality");
    None where the decoder does not say (zxing-cpp, which already asks two lines to agree
    on a linear code before it reports one). ``spare``: for zxing-cpp, the part of the
    symbol's error correction that was left unused (1.0 none used); None where there is
    none or the decoder does not say.
    """

    text: str
    aim: str | None
    format: str
    corners: list[tuple[float, float]]
    lines: int | None = None
    spare: float | None = None


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
            w.zbar_image_scanner_set_config(scanner, 25, _ZBAR_CFG_MIN_LEN, _ITF_MIN_DIGITS)
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
                        lines=int(w.zbar_symbol_get_quality(symbol)),
                    )
                )
            symbol = w.zbar_symbol_next(symbol)
        return reads


def _box(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Four corners around zbar's scan points (its location is the points its scans crossed)."""
    if not points:
        return [(0.0, 0.0)] * 4
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
