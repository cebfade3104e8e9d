"""The images `bench decode` makes: seeded variants of a photo, synthetic labels of every parcel
symbology, and scenes with no code in them.

Why it exists: the photo set in ``../shared`` is small, and a decoder tuned on it learns its
photos rather than photos in general. Variants (tilt, strong perspective, blur, low contrast,
glare, JPEG loss, and the hard mix of several) and labels drawn from random contents and sizes
give the bench many images nobody tuned on, drawn again from any seed; scenes without a code
(clutter, textures, print, blinds and grilles: regular stripes that are not barcodes) are where
a decoder that guesses shows it.

What it owns: the choice of each variant kind's strengths, the bench's own warp (it grows the
canvas, so no corner of a photo's code is cut off, where `simulators.camera.rotate` keeps the
size), the synthetic labels' contents, sizes and layout, and the empty scenes. The distortions
themselves (Gaussian and motion blur, glare, JPEG, low light, sensor noise) and the textured
backgrounds belong to `simulators.camera` and are called, not copied; parcel identifiers come
from `simulators.parcels`, GS1 check digits from `parcel.identify.gs1_mod10`.

The symbols are drawn by writers that share no code with the readers under test: python-barcode
for every linear code (its module pattern; the pixels are drawn here, at any module width, so no
Pillow writer is involved), segno for QR, and zxing-cpp's writer (zint inside, not its reader)
for Data Matrix, Aztec and PDF417, which python-barcode does not write.

Every function is a pure function of its arguments and a `random.Random`: the same seed gives
the same pixels (on the same OpenCV and numpy). Which seeds belong to which part of the held-out
split is `bench.decode`'s business, not this module's.

It must never import OpenCV, numpy or an encoder at module import (``python -m bench`` imports
every benchmark), nor know anything about a decoder.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from typing import Any

# The photo set's format names (MANIFEST.tsv's first column), which are also the decoder's.
FORMATS = ("aztec", "code128", "code39", "datamatrix", "ean13", "itf", "pdf417", "qrcode")
VARIANTS = ("tilted", "perspective", "blur", "low_contrast", "glare", "jpeg", "tilted_hard")
EMPTY_KINDS = ("clutter", "texture", "text", "blinds", "grille")

MODULE_PX = (1.5, 6.0)  # narrow bar or cell width of a synthetic label, drawn uniformly
_MAX_SYMBOL_PX = 1000  # a label wider than this at its drawn module width is drawn smaller
_GS = "\x1d"
_FNC1 = "\xf1"  # python-barcode's FNC1 character
# Quiet zones in modules, the symbology's minimum: 10 X for Code 128, Code 39 and ITF, 11 X for
# EAN-13, 4 for QR, 1 for Data Matrix, 2 for PDF417, none for Aztec. A label gets 1 to 1.6
# times that (at least 1): a label printer leaves the minimum or a little more.
_QUIET = {
    "aztec": 1,
    "code128": 10,
    "code39": 10,
    "datamatrix": 1,
    "ean13": 11,
    "itf": 10,
    "pdf417": 2,
    "qrcode": 4,
}
# Bar height as a share of the symbol's width: EAN-13 is nearly square-ish by its spec, the
# shipping codes are long and low.
_BAR_HEIGHT = {"ean13": (0.55, 0.75), "itf": (0.2, 0.45), "code128": (0.12, 0.35)}
_ALNUM = string.ascii_uppercase + string.digits
_TOKEN = string.ascii_letters + string.digits


# -- variants of any image --------------------------------------------------------------------


def variant(kind: str, image: Any, rng: random.Random) -> Any:
    """``image`` (BGR or gray uint8) distorted as ``kind`` says, with strengths drawn from ``rng``.

    - ``tilted``: turned 15-40 degrees either way, corners moved up to 6 %, Gaussian blur of
      sigma 0.4-1.0 (the tilted set `bench decode` has always had).
    - ``perspective``: a camera well off square to the surface: one side foreshortened by
      20-40 %, corners moved up to 5 %, turned at most 10 degrees.
    - ``blur``: out of focus (Gaussian sigma 1.0-1.8) or moved (a 3-7 px smear at any angle).
    - ``low_contrast``: faded print in dim light: 0.6-1.0 of the brightness, contrast about
      the mean cut to 0.25-0.45, a black level of 5-40, sensor noise of sigma 2.
    - ``glare``: a bright soft ellipse (half-axes 10-35 % of the smaller side, strength
      0.6-0.95) centred in the middle half of the image, where a code usually is.
    - ``jpeg``: through JPEG at quality 30-60.
    - ``tilted_hard``: the issue's hard set: turned 10-40 degrees, corners moved up to 8 %,
      Gaussian blur 0.5-1.2, then JPEG at quality 30-60.
    """
    from simulators import camera as sim

    if kind == "tilted":
        out = _warp(image, rng, degrees=(15, 40), jitter=0.06)
        return sim.gaussian_blur(out, rng.uniform(0.4, 1.0))
    if kind == "perspective":
        return _warp(image, rng, degrees=(0, 10), jitter=0.05, keystone=rng.uniform(0.2, 0.4))
    if kind == "blur":
        if rng.random() < 0.5:
            return sim.gaussian_blur(image, rng.uniform(1.0, 1.8))
        return sim.motion_blur(image, rng.uniform(3, 7), rng.uniform(0, 180))
    if kind == "low_contrast":
        dim = sim.low_light(
            image,
            gain=rng.uniform(0.6, 1.0),
            contrast=rng.uniform(0.25, 0.45),
            black_level=rng.uniform(5, 40),
        )
        return sim.sensor_noise(dim, rng.randrange(2**32), sigma=2.0)
    if kind == "glare":
        h, w = image.shape[:2]
        side = min(h, w)
        return sim.glare(
            image,
            (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h),
            (rng.uniform(0.15, 0.35) * side, rng.uniform(0.1, 0.25) * side),
            angle_deg=rng.uniform(0, 180),
            strength=rng.uniform(0.6, 0.95),
        )
    if kind == "jpeg":
        return sim.jpeg(image, rng.randint(30, 60))
    if kind == "tilted_hard":
        out = _warp(image, rng, degrees=(10, 40), jitter=0.08)
        out = sim.gaussian_blur(out, rng.uniform(0.5, 1.2))
        return sim.jpeg(out, rng.randint(30, 60))
    raise ValueError(f"unknown variant {kind!r}; one of {', '.join(VARIANTS)}")


def _warp(
    image: Any,
    rng: random.Random,
    *,
    degrees: tuple[float, float],
    jitter: float,
    keystone: float = 0.0,
) -> Any:
    """Turned by ``degrees`` (low, high) either way about the middle, one side shortened by
    ``keystone`` (the far side of a surface seen at an angle), corners moved up to ``jitter``
    of the smaller side; on a canvas grown to hold it all, the new corners filled with the
    median colour of the image's border (its background, mostly)."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    angle = rng.uniform(*degrees) * rng.choice((-1, 1))
    edge = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    fill = tuple(float(v) for v in np.atleast_1d(np.median(edge, axis=0)))
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    moved = corners.copy()
    if keystone:
        side = rng.randrange(4)  # 0 top, 1 right, 2 bottom, 3 left
        a, b = side, (side + 1) % 4
        middle = (moved[a] + moved[b]) / 2
        moved[a] += (middle - moved[a]) * keystone
        moved[b] += (middle - moved[b]) * keystone
    rotation = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    moved = cv2.transform(moved[None], rotation)[0]
    reach = jitter * min(w, h)
    moved += np.array(
        [[rng.uniform(-reach, reach), rng.uniform(-reach, reach)] for _ in range(4)],
        dtype=np.float32,
    )
    moved -= moved.min(axis=0)
    size = (int(moved[:, 0].max()) + 1, int(moved[:, 1].max()) + 1)
    matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    return cv2.warpPerspective(
        image,
        matrix,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )


# -- synthetic labels -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SyntheticLabel:
    """A label drawn from random contents, upright on a textured background.

    ``text`` is what a read must equal exactly (GS1 separators as GS, as a scanner sends
    them); ``module_px`` the narrow bar or cell width it was drawn at; ``image`` BGR uint8.
    """

    format: str
    text: str
    module_px: float
    image: Any


def synthetic_label(
    fmt: str, rng: random.Random, *, module_px: float | None = None
) -> SyntheticLabel:
    """A label of ``fmt`` (one of `FORMATS`): realistic random contents (EAN-13 and ITF-14 with
    their check digit, parcel identifiers and GS1 SSCCs for Code 128 and Data Matrix,
    alphanumerics for Code 39, even-length digits for ITF), a module width of 1.5-6 px (drawn
    with area sampling, so a fraction of a pixel greys the edge as a camera would), at least
    the symbology's quiet zone, sometimes printed text around it, on paper of random shade,
    pasted upright on a parcel's, a van floor's or a locker's surroundings. No blur, noise or
    tilt: that is what `variant` adds. ``module_px`` replaces the drawn module width (the
    rest is drawn as it would be): a check of the contents at a width every reader reads."""
    import numpy as np

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    dark, text, linear, unit = _symbol(fmt, rng)
    cols = dark.shape[1]
    drawn = rng.uniform(*MODULE_PX)
    module = drawn if module_px is None else module_px
    quiet = max(1, round(_QUIET[fmt] * rng.uniform(1.0, 1.6)))
    # Long contents at a wide module would not fit a label, nor a photo of one.
    if module_px is None:
        module = max(MODULE_PX[0], min(module, _MAX_SYMBOL_PX / ((cols / unit) + 2 * quiet)))
    ink, paper = rng.randint(10, 60), rng.randint(205, 250)
    unit_px = module / unit
    if linear:
        width = round(cols * unit_px)
        low, high = _BAR_HEIGHT.get(fmt, _BAR_HEIGHT["code128"])
        height = max(24, round(width * rng.uniform(low, high)))
        symbol = _bars(dark[0], unit_px, height, ink, paper)
        pad_x, pad_y = round(quiet * module), max(3, round(2 * module))
    else:
        symbol = _cells(dark, unit_px, ink, paper)
        pad_x = pad_y = round(quiet * module)
    label = np.pad(symbol, ((pad_y, pad_y), (pad_x, pad_x)), constant_values=paper)
    label = _printed_around(label, fmt, text, module, linear, ink, paper, rng)
    return SyntheticLabel(fmt, text, module, _on_background(label, rng))


def _symbol(fmt: str, rng: random.Random) -> tuple[Any, str, bool, int]:
    """The symbol's modules (True dark; one row for a linear code), the text a read gives,
    whether it is linear, and how many pattern units make one narrow module."""
    import numpy as np

    if fmt in ("code128", "code39", "ean13", "itf"):
        pattern, text, unit = _linear_pattern(fmt, rng)
        return np.array([[c == "1" for c in pattern]], dtype=bool), text, True, unit
    if fmt == "qrcode":
        import segno

        content = _any_content(rng)
        qr = segno.make_qr(content, error=rng.choice("lmqh"), boost_error=False)
        return np.array(qr.matrix, dtype=bool), content, False, 1

    import zxingcpp

    options: dict[str, Any] = {}
    if fmt == "datamatrix":
        # Parcel labels print Data Matrix square (zint would pick rectangular sizes, DMRE ones
        # included, which older imagers do not read); half of them GS1.
        options["forceSquare"] = True
        if rng.random() < 0.5:
            sscc = _sscc(rng)
            if rng.random() < 0.5:
                content, text = f"[00]{sscc}", f"00{sscc}"
            else:
                zip_code = f"{rng.randrange(10**5):05d}"
                # (420) has a variable length: a separator follows it, as zint writes it.
                content, text = f"[420]{zip_code}[00]{sscc}", f"420{zip_code}{_GS}00{sscc}"
            options["gs1"] = True
        else:
            content = text = _any_content(rng)
        kind = zxingcpp.BarcodeFormat.DataMatrix
    elif fmt == "aztec":
        content = text = _any_content(rng)
        kind = zxingcpp.BarcodeFormat.Aztec
    else:  # pdf417
        from simulators.parcels import random_label

        ident = random_label(rng).data.replace(_GS, "")
        lines = [
            ident,
            f"TO {rng.choice(('A. JANSEN', 'M. DE VRIES', 'S. BAKKER', 'K. SMIT'))}",
            f"{rng.randrange(1000, 9999)} {rng.choice(string.ascii_uppercase)}"
            f"{rng.choice(string.ascii_uppercase)} {rng.randrange(1, 200)}",
        ]
        content = text = "|".join(lines[: rng.randint(1, 3)])
        kind = zxingcpp.BarcodeFormat.PDF417
    created = zxingcpp.create_barcode(content, kind, **options)
    bitmap = np.asarray(created.to_image(scale=1, add_quiet_zones=False))
    # PDF417's bitmap already draws each row three modules high, its usual row height.
    return bitmap < 128, text, False, 1


def _linear_pattern(fmt: str, rng: random.Random) -> tuple[str, str, int]:
    """python-barcode's module pattern ("1" a bar), the text a read gives, and how many
    pattern units one narrow bar is (ITF's pattern draws narrow bars 1 or 2 units wide)."""
    from barcode import EAN13, ITF, Code39
    from barcode.codex import Code128, Gs1_128

    if fmt == "ean13":
        code = EAN13("".join(rng.choice(string.digits) for _ in range(12)))
        return code.build()[0], code.get_fullcode(), 1
    if fmt == "itf":
        length = rng.choice((6, 8, 10, 12, 14))
        digits = "".join(rng.choice(string.digits) for _ in range(length - 1))
        # ITF-14 (a GTIN-14 on a carton) ends in its check digit; shorter ones end anywhere.
        digits = _checked(digits) if length == 14 else digits + rng.choice(string.digits)
        narrow, wide = rng.choice(((1, 3), (2, 5)))  # wide:narrow 3 or 2.5
        return ITF(digits, narrow=narrow, wide=wide).build()[0], digits, narrow
    if fmt == "code39":
        if rng.random() < 0.5:
            from simulators.parcels import s10

            text = s10(rng).data
        else:
            # Never 6 characters: a 6-character Code 39 whose last one checks the others is
            # Italy's pharmacy code (Code 32), and readers report it converted, as that.
            middle = "".join(rng.choice(_ALNUM + "-.") for _ in range(rng.randint(5, 10)))
            text = rng.choice(_ALNUM) + middle + rng.choice(_ALNUM)
        return Code39(text, add_checksum=False).build()[0], text, 1
    # Code 128: what carriers print, the GS1 ones (SSCC, USPS) with FNC1 as python-barcode
    # takes it; a read gives GS where the label has a separator.
    from simulators.parcels import random_label

    label = random_label(rng)
    if label.aim == "]C1":
        return Gs1_128(label.data.replace(_GS, _FNC1)).build()[0], label.data, 1
    return Code128(label.data).build()[0], label.data, 1


def _sscc(rng: random.Random) -> str:
    """An SSCC: extension digit, company prefix and serial (17 digits), check digit."""
    return _checked("".join(rng.choice(string.digits) for _ in range(17)))


def _checked(digits: str) -> str:
    from parcel.identify import gs1_mod10

    return digits + str(gs1_mod10(digits))


def _any_content(rng: random.Random) -> str:
    """What a 2D code on a parcel or a phone says: a parcel identifier, a tracking link, a
    pickup token, or a short line of text."""
    from simulators.parcels import random_label

    pick = rng.random()
    if pick < 0.3:
        return random_label(rng).data.replace(_GS, "")
    if pick < 0.55:
        token = "".join(rng.choice(_TOKEN) for _ in range(rng.randint(6, 24)))
        return f"https://track.example.nl/p/{token}"
    if pick < 0.8:
        return "LMQR:" + "".join(rng.choice(_TOKEN + "+/") for _ in range(rng.randint(8, 24)))
    words = ("PARCEL", "ROOM", "DOCK", "RETURN", "SHELF", "BAY", "VAN", "LOCKER", "ZONE")
    return " ".join(
        f"{rng.choice(words)} {rng.randrange(1, 999)}" for _ in range(rng.randint(1, 4))
    )


def _bars(row: Any, unit_px: float, height: int, ink: int, paper: int) -> Any:
    """One row of modules drawn ``unit_px`` wide each (area sampled), ``height`` rows high."""
    import cv2
    import numpy as np

    fine = 8  # sub-pixel steps per module: enough for an 8-bit edge
    line = np.where(row, ink, paper).astype(np.uint8).repeat(fine)[None, :]
    width = max(1, round(row.size * unit_px))
    drawn = cv2.resize(line, (width, 1), interpolation=cv2.INTER_AREA)
    return np.repeat(drawn, height, axis=0)


def _cells(dark: Any, unit_px: float, ink: int, paper: int) -> Any:
    """A 2D symbol's cells drawn ``unit_px`` wide and high (area sampled)."""
    import cv2
    import numpy as np

    fine = 8
    cells = np.where(dark, ink, paper).astype(np.uint8).repeat(fine, axis=0).repeat(fine, axis=1)
    size = (max(1, round(dark.shape[1] * unit_px)), max(1, round(dark.shape[0] * unit_px)))
    return cv2.resize(cells, size, interpolation=cv2.INTER_AREA)


def _printed_around(
    label: Any,
    fmt: str,
    text: str,
    module: float,
    linear: bool,
    ink: int,
    paper: int,
    rng: random.Random,
) -> Any:
    """The symbol (with its quiet zone) on a paper label: a margin, the human-readable digits
    under a linear code now and then (always, nearly, under EAN-13), an address line or two."""
    import cv2
    import numpy as np

    font = cv2.FONT_HERSHEY_SIMPLEX
    w = label.shape[1]
    lines: list[str] = []
    if linear and rng.random() < (0.9 if fmt == "ean13" else 0.5):
        lines.append(text.replace(_GS, " "))
    if rng.random() < 0.5:
        lines.append(rng.choice(("DELIVER TO", "SHIP TO", "RETURN TO", "HANDLE WITH CARE")))
        lines.append(f"{rng.randrange(1000, 9999)} {rng.choice(('AMSTERDAM', 'UTRECHT', 'GENT'))}")
    scale = max(0.35, min(1.0, module * 0.25 if linear else 0.5))
    line_h = round(34 * scale) + 6
    margin = rng.randint(4, 30)
    below = np.full((line_h * len(lines), w), paper, np.uint8)
    for i, words in enumerate(lines):
        cv2.putText(below, words[:48], (4, line_h * (i + 1) - 6), font, scale, ink, 1, cv2.LINE_AA)
    stacked = np.vstack([label, below]) if lines else label
    return np.pad(stacked, margin, constant_values=paper)


def _on_background(label: Any, rng: random.Random) -> Any:
    """The gray label pasted upright on a textured background of at least 640 x 480, BGR."""
    import cv2
    import numpy as np

    from simulators.camera import Scene

    lh, lw = label.shape
    width = max(rng.choice((640, 800)), lw + rng.randint(20, 120))
    height = max(480 if width == 640 else 600, lh + rng.randint(20, 120))
    background = rng.choice(("cardboard", "van_floor", "locker"))
    canvas = Scene(background, rng.randrange(2**31), width, height).backdrop()
    x, y = rng.randint(0, width - lw), rng.randint(0, height - lh)
    tint = np.array([rng.uniform(0.93, 1.0) for _ in range(3)], np.float32)
    paper = (cv2.cvtColor(label, cv2.COLOR_GRAY2BGR).astype(np.float32) * tint).astype(np.uint8)
    canvas[y : y + lh, x : x + lw] = paper
    return canvas


# -- scenes with no code ----------------------------------------------------------------------


def empty_scene(kind: str, rng: random.Random) -> Any:
    """A BGR image holding no barcode, of ``kind`` (one of `EMPTY_KINDS`): any symbol a decoder
    reports on it is false.

    - ``clutter``: `shelf_scene` without its label (1280 x 720): boxes, tape, printed words.
    - ``texture``: a parcel's cardboard, a van's floor, a locker's surroundings, or wood grain.
    - ``text``: a printed page: lines of words and numbers in several fonts, a ruled table.
    - ``blinds``: window blinds: regular slats with soft shading, horizontal or vertical.
    - ``grille``: a radiator grille or a fence: regular bars, sometimes crossed by others.
    """
    import cv2
    import numpy as np

    from simulators.camera import Scene

    if kind == "clutter":
        return shelf_scene(rng, label=False)[0]
    width, height = 640, 480
    if kind == "texture":
        choice = rng.choice(("cardboard", "van_floor", "locker", "wood"))
        if choice != "wood":
            return Scene(choice, rng.randrange(2**31), width, height).backdrop()
        np_rng = np.random.default_rng(rng.randrange(2**32))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        knots = cv2.resize(
            np_rng.normal(0, 1, (6, 8)).astype(np.float32),
            (width, height),
            interpolation=cv2.INTER_CUBIC,
        )
        period = rng.uniform(8, 30)
        grain = np.sin((yy + 25 * knots + 0.05 * xx) * (2 * math.pi / period))
        gray = 120 + 25 * grain + np_rng.normal(0, 3, (height, width))
        wood = np.clip(gray, 0, 255).astype(np.uint8)
        tint = np.array([0.6, 0.8, 1.0], np.float32)
        return (cv2.cvtColor(wood, cv2.COLOR_GRAY2BGR) * tint).astype(np.uint8)
    if kind == "text":
        page = np.full((height, width), rng.randint(215, 250), np.uint8)
        fonts = (
            cv2.FONT_HERSHEY_SIMPLEX,
            cv2.FONT_HERSHEY_DUPLEX,
            cv2.FONT_HERSHEY_COMPLEX,
            cv2.FONT_HERSHEY_PLAIN,
            cv2.FONT_HERSHEY_TRIPLEX,
        )
        words = ("ORDER", "INVOICE", "Qty", "Total", "Parcel", "EUR", "Street", "Tel.", "Ref")
        y = rng.randint(20, 40)
        while y < height - 10:
            scale = rng.uniform(0.4, 1.0)
            line = " ".join(
                rng.choice(words)
                if rng.random() < 0.6
                else str(rng.randrange(10 ** rng.randint(1, 9)))
                for _ in range(rng.randint(2, 8))
            )
            cv2.putText(page, line, (rng.randint(5, 40), y), rng.choice(fonts), scale, 30, 1)
            if rng.random() < 0.2:  # a table's ruling
                cv2.line(page, (10, y + 6), (width - 10, y + 6), 60, 1)
            y += round(32 * scale) + rng.randint(4, 14)
        scene = cv2.cvtColor(page, cv2.COLOR_GRAY2BGR)
        return _warp(scene, rng, degrees=(0, 8), jitter=0.03)
    if kind == "blinds":
        period = rng.uniform(10, 40)
        t = (np.arange(max(width, height), dtype=np.float32) % period) / period
        slat = 140 + 80 * np.sin(math.pi * t)  # bright in the middle of a slat
        slat[t > 0.9] = 60  # the dark gap between two slats
        gray = np.tile(slat[:height, None], (1, width))
        if rng.random() < 0.5:
            gray = np.tile(slat[None, :width], (height, 1))
        light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), width)[None, :]
        out = np.clip(gray * light, 0, 255).astype(np.uint8)
        return _warp(cv2.cvtColor(out, cv2.COLOR_GRAY2BGR), rng, degrees=(0, 10), jitter=0.03)
    if kind == "grille":
        behind = Scene(rng.choice(("cardboard", "locker")), rng.randrange(2**31), width, height)
        out = behind.backdrop()
        period = rng.randint(6, 30)
        bar = max(2, round(period * rng.uniform(0.3, 0.7)))
        shade = (rng.randint(20, 80),) * 3
        for x in range(rng.randint(0, period), width, period):
            cv2.rectangle(out, (x, 0), (x + bar - 1, height - 1), shade, -1)
        if rng.random() < 0.4:  # a mesh: bars the other way too
            for y in range(rng.randint(0, period), height, period):
                cv2.rectangle(out, (0, y), (width - 1, y + bar - 1), shade, -1)
        return _warp(out, rng, degrees=(0, 20), jitter=0.04)
    raise ValueError(f"unknown empty scene {kind!r}; one of {', '.join(EMPTY_KINDS)}")


def shelf_scene(rng: random.Random, *, label: bool = True) -> tuple[Any, set[str]]:
    """A 1280 x 720 frame of a van's shelf: cardboard light, box edges, tape, printed words;
    with ``label``, a shipping label (GS1-128 with a ZIP and an SSCC, a Data Matrix, an
    address) turned up to 20 degrees somewhere in it. Returns the BGR frame and the texts of
    its codes (none without a label)."""
    import cv2
    import numpy as np
    import zxingcpp

    np_rng = np.random.default_rng(rng.randrange(2**32))
    # Cardboard and shadows: smooth light variation, a little sensor grain.
    light = np_rng.random((720 // 90, 1280 // 90)).astype(np.float32)
    scene = cv2.resize(light, (1280, 720), interpolation=cv2.INTER_CUBIC)
    scene = cv2.normalize(scene, None, 90, 170, cv2.NORM_MINMAX)
    scene = (scene + np_rng.normal(0, 3, scene.shape)).clip(0, 255).astype(np.uint8)
    for _ in range(10):  # box edges, tape, printed words: the clutter of a van's shelf
        x, y = rng.randrange(0, 1200), rng.randrange(0, 680)
        cv2.rectangle(
            scene,
            (x, y),
            (x + rng.randrange(40, 300), y + rng.randrange(20, 200)),
            rng.randrange(40, 230),
            rng.choice((-1, 2, 4)),
        )
        cv2.putText(
            scene,
            f"FRAGILE {rng.randrange(100)}",
            (rng.randrange(0, 1100), rng.randrange(20, 700)),
            cv2.FONT_HERSHEY_SIMPLEX,
            rng.uniform(0.5, 1.2),
            rng.randrange(0, 255),
            2,
        )
    if not label:
        scene = cv2.GaussianBlur(scene, (0, 0), 0.6)
        return cv2.cvtColor(scene, cv2.COLOR_GRAY2BGR), set()
    serial = f"{rng.randrange(10**16):016d}"
    sscc = _checked("3" + serial)
    zip_code = f"{rng.randrange(10**5):05d}"
    gs1 = zxingcpp.create_barcode(
        f"(420){zip_code}(00){sscc}", zxingcpp.BarcodeFormat.Code128, gs1=True
    )
    dm = zxingcpp.create_barcode(f"LM:{serial}", zxingcpp.BarcodeFormat.DataMatrix)
    bars = np.asarray(gs1.to_image(scale=2))
    bars = cv2.resize(bars, (bars.shape[1], 90), interpolation=cv2.INTER_NEAREST)
    matrix = np.asarray(dm.to_image(scale=4))
    sheet = np.full((bars.shape[0] + matrix.shape[0] + 100, bars.shape[1] + 40), 240, np.uint8)
    sheet[20 : 20 + bars.shape[0], 20 : 20 + bars.shape[1]] = bars
    top = 40 + bars.shape[0]
    sheet[top : top + matrix.shape[0], 20 : 20 + matrix.shape[1]] = matrix
    for i, words in enumerate(("DELIVER TO", "A. JANSEN", f"{zip_code} AMSTERDAM")):
        cv2.putText(
            sheet,
            words,
            (matrix.shape[1] + 40, top + 25 + 30 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.7,
            20,
            2,
        )
    lh, lw = sheet.shape
    angle = rng.uniform(-20, 20)
    cx, cy = (
        rng.uniform(lw / 2 + 20, 1280 - lw / 2 - 20),
        rng.uniform(lh / 2 + 20, 720 - lh / 2 - 20),
    )
    m = cv2.getRotationMatrix2D((lw / 2, lh / 2), angle, 1.0)
    m[0, 2] += cx - lw / 2
    m[1, 2] += cy - lh / 2
    mask = cv2.warpAffine(np.full_like(sheet, 255), m, (1280, 720))
    placed = cv2.warpAffine(sheet, m, (1280, 720))
    scene = np.where(mask > 127, placed, scene).astype(np.uint8)
    scene = cv2.GaussianBlur(scene, (0, 0), 0.6)
    bgr = cv2.cvtColor(scene, cv2.COLOR_GRAY2BGR)
    return bgr, {f"420{zip_code}{_GS}00{sscc}", f"LM:{serial}"}
