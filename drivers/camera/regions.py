"""Where the barcodes in an image probably are, and how the decoder looks at each place.

This module owns the region search (`_find_regions`: image gradients pooled into cells, the
structure tensor's energy and coherence), a region's outline (`_Region`) and the geometry of
outlines (`_centre`, `_inside`, `_overlap`), the straightened crop of a region
(`_straighten`), the contrast treatments of a crop (`_Treatment`) and the order in which
regions and treatments are tried (`_attempts`).

What it must never do: decode (only `drivers.camera.decoder` calls the decoders: this only
straightens and cleans pixels for them), or import OpenCV or numpy at module level.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Image = NDArray[np.uint8]
    Points = tuple[tuple[float, float], ...]

log = logging.getLogger("drivers.camera")

# Region finding: gradients on the image shrunk by a whole factor to at most this many pixels
# (1280 x 720 by 2: thin bars must survive it), pooled into square cells of CELL_PX pixels.
ANALYSIS_PIXELS = 240_000
CELL_PX = 4


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


def _straighten(
    gray: Image, region: _Region, scale: int = 1, *, cubic: bool = False
) -> tuple[Image, Any]:
    """The region warped upright (perspective: its quadrilateral onto a rectangle), at
    ``scale`` crop pixels per image pixel; and the matrix that maps crop pixels back into
    the image. ``cubic`` interpolates bicubically: slower, but an enlarged crop of thin,
    blurred bars keeps the dips between them that linear interpolation flattens."""
    import cv2
    import numpy as np

    width, height = _crop_size(region, scale)
    src = np.array(region.corners, dtype=np.float32)
    dst = np.array([(0, 0), (width, 0), (width, height), (0, height)], dtype=np.float32)
    to_crop = cv2.getPerspectiveTransform(src, dst)
    crop = cv2.warpPerspective(
        gray,
        to_crop,
        (width, height),
        flags=cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
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


def _deblurred(crop: Image, radius: float, noise: float = 0.01) -> Image:
    """``crop`` with a defocus blur of ``radius`` pixels undone (`_wiener`).

    An out-of-focus lens spreads each point into a disc (the pillbox model of defocus); a
    phone held too close to a small code blurs it that way, merging its thin bars and
    modules.
    """
    import numpy as np

    def transfer(shape: tuple[int, int]) -> Any:
        size = math.ceil(radius) * 2 + 1
        yy, xx = np.mgrid[:size, :size] - size // 2
        disc = (xx * xx + yy * yy <= radius * radius + 0.5).astype(np.float32)
        kernel = np.zeros(shape, dtype=np.float32)
        kernel[:size, :size] = disc / disc.sum()
        kernel = np.roll(kernel, (-(size // 2), -(size // 2)), axis=(0, 1))
        return np.fft.rfft2(kernel)

    return _wiener(crop, transfer, math.ceil(radius) * 3 + 2, noise)


def _gaussian_deblurred(crop: Image, sigma: float, noise: float) -> Image:
    """``crop`` with a Gaussian blur of ``sigma`` pixels undone (`_wiener`).

    A lens a little out of focus, the sensor's own softness and the interpolation of a
    straightening warp add up to a blur whose spread is close to a Gaussian, with no disc's
    hard edge: a small code photographed from a step away has modules of one or two pixels
    that such a blur of about one pixel merges. Its transfer function is known in closed
    form, and never zero, so the Wiener filter only has to damp the noise it would lift.
    """
    import numpy as np

    def transfer(shape: tuple[int, int]) -> Any:
        fy = np.fft.fftfreq(shape[0])[:, None]
        fx = np.fft.rfftfreq(shape[1])[None, :]
        return np.exp(-2 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))

    return _wiener(crop, transfer, math.ceil(sigma * 4) + 2, noise)


def _wiener(
    crop: Image, transfer: Callable[[tuple[int, int]], Any], pad: int, noise: float
) -> Image:
    """``crop`` with the blur whose optical transfer function is ``transfer(shape)`` (the
    real FFT's half-plane, for an image of ``shape``) divided out in the frequency domain
    (Wiener deconvolution), damped by ``noise`` (the noise-to-signal ratio: where the blur
    passes almost nothing, the image is left alone rather than its noise amplified). The
    crop is padded by ``pad`` pixels of reflection first, so its edges do not ring."""
    import cv2
    import numpy as np

    padded = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_REFLECT).astype(np.float32)
    spectrum = transfer(padded.shape)
    restored = np.fft.irfft2(
        np.fft.rfft2(padded) * np.conj(spectrum) / (np.abs(spectrum) ** 2 + noise),
        s=padded.shape,
    )
    out = restored[pad:-pad, pad:-pad]
    return np.clip(out, 0, 255).astype(np.uint8)


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
