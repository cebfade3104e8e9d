"""A signature as the courier's screen captured it: pen strokes, checked and made canonical.

Owns the signature document of docs/DELIVERY.md: the screen sends the strokes of a signature
(`{"width", "height", "strokes"}`), the van checks every bound here before anything is stored,
and keeps the canonical bytes (UTF-8 JSON, sorted keys, no spaces) in its photo outbox beside
the `parcel_delivered` event that names them by SHA-256. Canonical, so the same strokes always
hash to the same name on the van and at the depot, whatever spacing the screen sent.

Vectors, not a picture: a few kilobytes of numbers instead of a PNG, and nothing in them a
browser could run (the depot draws them itself). Must never: store a document a bound refuses
(a sheet without size, no strokes, a point off the sheet, more points than a hand makes), or
round, clip or otherwise change what the signer drew.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from edge.errors import EdgeError
from sync.wire import SIGNATURE_CONTENT_TYPE

__all__ = [
    "CONTENT_TYPE",
    "MAX_BYTES",
    "MAX_POINTS",
    "MAX_SIDE",
    "MAX_STROKES",
    "MAX_STROKE_POINTS",
    "Signature",
    "SignatureError",
]

#: The outbox's (and the depot's) content type of a signature document (the wire's).
CONTENT_TYPE = SIGNATURE_CONTENT_TYPE
#: The document's version (`v`).
VERSION = 1
#: The sheet's width and height are 1..MAX_SIDE (screen pixels; a handheld's is far smaller).
MAX_SIDE = 2000
#: Pen-down..pen-up paths in one signature.
MAX_STROKES = 200
#: Points in one stroke.
MAX_STROKE_POINTS = 2000
#: Points in all: a long name written slowly is a few thousand.
MAX_POINTS = 20_000
#: The canonical document's size in bytes.
MAX_BYTES = 64 * 1024

_FIELDS = frozenset({"v", "width", "height", "strokes"})


class SignatureError(EdgeError):
    """Strokes that cannot be kept as a signature; the message says which bound, in one line."""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _side(doc: Mapping[str, Any], name: str) -> int:
    side = doc.get(name)
    if not _is_int(side) or not 1 <= side <= MAX_SIDE:
        raise SignatureError(f"signature {name} must be a whole number 1..{MAX_SIDE}")
    return side


@dataclass(frozen=True)
class Signature:
    """The strokes of one signature on a `width` x `height` sheet, in integer sheet points."""

    width: int
    height: int
    strokes: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def from_doc(cls, doc: Any) -> Signature:
        """Read the screen's strokes (`v`, when given, must be 1); SignatureError if any bound
        is broken. Coordinates are integers from 0 to the sheet's width and height."""
        if not isinstance(doc, Mapping):
            raise SignatureError("signature must be an object with width, height and strokes")
        extra = set(doc) - _FIELDS
        if extra:
            raise SignatureError(
                f"signature takes width, height and strokes, not {', '.join(sorted(extra))}"
            )
        if "v" in doc and doc["v"] != VERSION:
            raise SignatureError(f"signature document version {doc['v']!r}, expected {VERSION}")
        width, height = _side(doc, "width"), _side(doc, "height")
        raw = doc.get("strokes")
        if not _is_list(raw) or not 1 <= len(raw) <= MAX_STROKES:
            raise SignatureError(f"signature strokes must be a list of 1..{MAX_STROKES} strokes")
        strokes: list[tuple[tuple[int, int], ...]] = []
        total = 0
        for n, stroke in enumerate(raw, 1):
            if not _is_list(stroke) or not 1 <= len(stroke) <= MAX_STROKE_POINTS:
                raise SignatureError(
                    f"signature stroke {n} must be a list of 1..{MAX_STROKE_POINTS} points"
                )
            total += len(stroke)
            if total > MAX_POINTS:
                raise SignatureError(f"signature has more than {MAX_POINTS} points in all")
            points = []
            for point in stroke:
                if not (_is_list(point) and len(point) == 2 and all(map(_is_int, point))):
                    raise SignatureError(
                        f"signature stroke {n}: a point is [x, y] in whole numbers"
                    )
                x, y = point
                if not (0 <= x <= width and 0 <= y <= height):
                    raise SignatureError(
                        f"signature stroke {n}: point [{x}, {y}] is off the {width}x{height} sheet"
                    )
                points.append((x, y))
            strokes.append(tuple(points))
        signature = cls(width, height, tuple(strokes))
        size = len(signature.to_bytes())
        if size > MAX_BYTES:
            raise SignatureError(f"signature is {size} bytes, more than {MAX_BYTES}")
        return signature

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.strokes)

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "width": self.width,
            "height": self.height,
            "strokes": [[[x, y] for x, y in stroke] for stroke in self.strokes],
        }

    def to_bytes(self) -> bytes:
        """The canonical document: what is stored, sent and hashed."""
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """Read a stored document back (the same bounds as the screen's)."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureError(f"signature document is not JSON: {exc}") from None
        if not isinstance(doc, Mapping) or doc.get("v") != VERSION:
            raise SignatureError(f"signature document is not version {VERSION}")
        return cls.from_doc(doc)
