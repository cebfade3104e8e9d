"""The fleet's map without any map service: places projected onto an SVG's plane.

A depot's area is a town, a few kilometres across, so the earth is flat enough there: the
equirectangular projection (x from longitude, y from latitude) with longitude scaled by the
cosine of the middle latitude keeps distances and angles true to a fraction of a percent,
and needs no tile server, no library and no internet, so the console works in a depot whose
link is down. `projection` is that one formula, fitted to the box of everything drawn;
`layout` places the depot, the lockers, today's stops and the vans for the template
(`templates/fleet.html`) to draw.

Stops are many (a van's round is a hundred doors or more), so each van's stops are drawn as
one SVG path of zero-length strokes with round caps (a dot each, a few bytes per stop), in
two paths per van: done and pending. Coordinates are rounded to a tenth of a unit of a
1000-wide drawing: finer than a screen's pixel, and short.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["WIDTH", "MapLayout", "Marker", "StopDots", "layout", "projection"]

WIDTH = 1000.0
MAX_HEIGHT = 700.0
PAD = 40.0
MIN_SPAN_DEG = 0.002  # about 200 m: a map of one point still has a scale

LatLon = tuple[float, float]
Project = Callable[[float, float], tuple[float, float]]


def projection(
    points: Iterable[LatLon],
    width: float = WIDTH,
    max_height: float = MAX_HEIGHT,
    pad: float = PAD,
) -> tuple[Project, float]:
    """The projection fitted to `points`' bounding box, and the drawing's height.

    x = (lon - west) * cos(mid latitude) * scale, y = (north - lat) * scale (north up), with
    one scale for both axes (so a street keeps its angle) chosen so the box fills `width`, or
    `max_height` when it is taller than wide; `pad` units of margin on each side."""
    pts = list(points) or [(0.0, 0.0)]
    south, north = min(p[0] for p in pts), max(p[0] for p in pts)
    west, east = min(p[1] for p in pts), max(p[1] for p in pts)
    if north - south < MIN_SPAN_DEG:
        mid = (north + south) / 2
        south, north = mid - MIN_SPAN_DEG / 2, mid + MIN_SPAN_DEG / 2
    k = math.cos(math.radians((north + south) / 2))
    if (east - west) * k < MIN_SPAN_DEG:
        mid = (east + west) / 2
        west, east = mid - MIN_SPAN_DEG / 2 / k, mid + MIN_SPAN_DEG / 2 / k
    span_x, span_y = (east - west) * k, north - south
    scale = min((width - 2 * pad) / span_x, (max_height - 2 * pad) / span_y)
    left = (width - span_x * scale) / 2  # centred across
    height = span_y * scale + 2 * pad

    def project(lat: float, lon: float) -> tuple[float, float]:
        return (
            round(left + (lon - west) * k * scale, 1),
            round(pad + (north - lat) * scale, 1),
        )

    return project, round(height, 1)


@dataclass(frozen=True)
class Marker:
    """A named place on the map: the depot, a locker, a van."""

    kind: str  # depot | locker | van
    name: str
    x: float
    y: float
    title: str = ""  # the tooltip: an address, a position's age


@dataclass(frozen=True)
class StopDots:
    """One van's stops of today, as two paths of dots."""

    van: str
    done: str
    pending: str
    count_done: int
    count_pending: int


@dataclass
class MapLayout:
    width: float
    height: float
    markers: list[Marker] = field(default_factory=list)
    stops: list[StopDots] = field(default_factory=list)
    scale_m: float = 0.0  # the scale bar's length in metres
    scale_px: float = 0.0  # ... and in drawing units

    @property
    def empty(self) -> bool:
        return not self.markers and not self.stops


@dataclass(frozen=True)
class Place:
    kind: str
    name: str
    lat: float
    lon: float
    title: str = ""


@dataclass(frozen=True)
class VanStops:
    van: str
    done: Sequence[LatLon]
    pending: Sequence[LatLon]


def _dots(project: Project, points: Sequence[LatLon]) -> str:
    return "".join(f"M{x:g} {y:g}h0" for x, y in (project(lat, lon) for lat, lon in points))


def _scale_bar(project: Project, lat: float, lon: float) -> tuple[float, float]:
    """A round length (m) whose bar is about a fifth of the drawing, and its length there."""
    x0, _ = project(lat, lon)
    x1, _ = project(lat, lon + 0.01)
    per_m = abs(x1 - x0) / (0.01 * 111_320 * math.cos(math.radians(lat)))
    if per_m <= 0:
        return 0.0, 0.0
    target = WIDTH / 5 / per_m
    metres = 10 ** math.floor(math.log10(target))
    for step in (5, 2, 1):
        if step * metres <= target:
            metres *= step
            break
    return float(metres), round(metres * per_m, 1)


def layout(places: Sequence[Place], stops: Sequence[VanStops]) -> MapLayout:
    """Everything fitted into one drawing: the places as markers, each van's stops as dots."""
    points = [(p.lat, p.lon) for p in places]
    for v in stops:
        points += [*v.done, *v.pending]
    if not points:
        return MapLayout(WIDTH, 0.0)
    project, height = projection(points)
    drawn = MapLayout(WIDTH, height)
    for p in places:
        x, y = project(p.lat, p.lon)
        drawn.markers.append(Marker(p.kind, p.name, x, y, p.title))
    for v in stops:
        drawn.stops.append(
            StopDots(
                v.van,
                _dots(project, v.done),
                _dots(project, v.pending),
                len(v.done),
                len(v.pending),
            )
        )
    lat = sum(p[0] for p in points) / len(points)
    lon = sum(p[1] for p in points) / len(points)
    drawn.scale_m, drawn.scale_px = _scale_bar(project, lat, lon)
    return drawn
