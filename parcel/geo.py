"""Distances and bearings on the Earth: the one formula every part of the chain measures with.

A van checks how far its fix is from the stop, the depot orders stops and picks the nearest
locker, a simulator lays out a route: all of them call these, so a change of model (a sphere
today) reaches every caller at once. Pure: no I/O.
"""

from __future__ import annotations

import math

__all__ = ["EARTH_RADIUS_M", "bearing_deg", "distance_m"]

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean Earth radius; haversine error stays under 0.5 %.


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS 84 points in decimal degrees (haversine).

    A sphere is plenty for "was the courier at the stop" and for ordering stops: the error is
    under 0.5 %, far below a consumer receiver's accuracy.
    """
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from the first point to the second, degrees clockwise from north, 0-360."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0
