"""A signature's strokes drawn for the console: inline SVG the depot writes from the numbers.

A van stores the signer's strokes as a small JSON document (docs/DELIVERY.md: `{"v": 1,
"width": W, "height": H, "strokes": [[[x, y], ...], ...]}`) that reaches the depot like a
photo, its SHA-256 verified on arrival. The console never serves those bytes as markup: it
reads the numbers, checks them against the contract's bounds, and writes its own `<svg>` with
one `<polyline>` per stroke, so nothing a device sent can become a tag or an attribute.

Must never: put anything but integers of its own checking into the markup, or draw a document
outside the bounds (it is refused whole, and the page says the signature cannot be shown).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_BYTES", "signature_svg", "strokes_of"]

MAX_BYTES = 64 * 1024
MAX_SIDE = 2000
MAX_STROKES = 200
MAX_STROKE_POINTS = 2000
MAX_POINTS = 20_000


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def strokes_of(data: bytes) -> tuple[int, int, list[list[tuple[int, int]]]] | None:
    """(width, height, strokes) of a signature document, or None when it is not one."""
    if len(data) > MAX_BYTES:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None
    width, height, strokes = doc.get("width"), doc.get("height"), doc.get("strokes")
    if not (
        isinstance(width, int)
        and isinstance(height, int)
        and _whole(width, 1, MAX_SIDE)
        and _whole(height, 1, MAX_SIDE)
    ):
        return None
    if not isinstance(strokes, list) or not 1 <= len(strokes) <= MAX_STROKES:
        return None
    drawn: list[list[tuple[int, int]]] = []
    total = 0
    for stroke in strokes:
        if not isinstance(stroke, list) or not 1 <= len(stroke) <= MAX_STROKE_POINTS:
            return None
        total += len(stroke)
        if total > MAX_POINTS:
            return None
        points = []
        for point in stroke:
            if not (isinstance(point, list) and len(point) == 2):
                return None
            x, y = point
            if not (_whole(x, 0, width) and _whole(y, 0, height)):
                return None
            points.append((x, y))
        drawn.append(points)
    return width, height, drawn


def signature_svg(data: bytes, *, shown_width: int = 360) -> str | None:
    """The signature in `data` as inline SVG markup, or None when it is not a signature."""
    found = strokes_of(data)
    if found is None:
        return None
    width, height, strokes = found
    lines = []
    for points in strokes:
        if len(points) == 1:  # a dot: a tiny stroke so it shows
            x, y = points[0]
            points = [(x, y), (x, y)]
        text = " ".join(f"{x},{y}" for x, y in points)
        lines.append(f'<polyline points="{text}"/>')
    shown_height = max(1, round(shown_width * height / width))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="signature" role="img" '
        f'aria-label="signature" viewBox="0 0 {width} {height}" width="{shown_width}" '
        f'height="{shown_height}" fill="none" stroke="currentColor" '
        f'stroke-width="{max(1, round(width / 150))}" stroke-linecap="round" '
        f'stroke-linejoin="round">' + "".join(lines) + "</svg>"
    )
