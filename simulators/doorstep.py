"""Doorstep pictures: what a courier photographs when a parcel is left in a safe place.

A rendered scene, not a photograph, but with what makes real photos hard to compress: a
textured brick wall, a door with a house number, a parcel box with its label, uneven light
and sensor noise. The simulated courier saves one as the handheld's camera app would (a full
resolution JPEG at high quality) and hands its path to the van, which makes it the small
proof-of-delivery photo; tests and `bench photo` use it the same way.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["DoorstepCamera", "doorstep_image", "write_doorstep_jpeg"]


def doorstep_image(seed: int, width: int = 1280, height: int = 720) -> Any:
    """A BGR doorstep scene, the same for the same seed."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    # Brick wall: rows of bricks with mortar, each brick its own shade.
    brick_h, brick_w = height // 18, width // 12
    base = np.array([rng.randint(40, 70), rng.randint(60, 90), rng.randint(120, 170)])
    for row in range(0, height, brick_h):
        shift = (row // brick_h % 2) * brick_w // 2
        for col in range(-brick_w, width, brick_w):
            shade = base + nprng.integers(-25, 25, 3)
            x0, y0 = col + shift, row
            cv2.rectangle(
                img, (x0 + 2, y0 + 2), (x0 + brick_w - 2, y0 + brick_h - 2), shade.tolist(), -1
            )
    img[:] = cv2.add(img, nprng.integers(0, 20, img.shape, dtype=np.uint8))
    # The door, with a house number.
    dx = rng.randint(width // 8, width // 3)
    dw, dh = width // 4, int(height * 0.85)
    door = (rng.randint(20, 90), rng.randint(40, 110), rng.randint(20, 90))
    cv2.rectangle(img, (dx, height - dh), (dx + dw, height), door, -1)
    cv2.rectangle(
        img, (dx + 20, height - dh + 30), (dx + dw - 20, height - dh // 2), (30, 30, 30), 3
    )
    number = str(rng.randint(1, 240))
    cv2.putText(
        img,
        number,
        (dx + dw // 3, height - dh - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        1.6,
        (240, 240, 240),
        4,
        cv2.LINE_AA,
    )
    # The parcel on the step, with its label.
    bw, bh = rng.randint(width // 7, width // 4), rng.randint(height // 6, height // 3)
    bx, by = dx + dw + rng.randint(10, 80), height - bh - rng.randint(5, 40)
    cv2.rectangle(img, (bx, by), (bx + bw, by + bh), (70, 130, 190), -1)
    cv2.rectangle(
        img, (bx + bw // 5, by + bh // 5), (bx + bw // 2, by + bh // 2), (235, 235, 235), -1
    )
    for line in range(4):
        y = by + bh // 5 + 10 + line * 12
        cv2.line(img, (bx + bw // 5 + 6, y), (bx + bw // 2 - 6, y), (40, 40, 40), 2)
    # Uneven light (a lamp, a shadow), then the sensor's noise.
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    light = 0.65 + 0.5 * np.exp(-(((xx - cx) / width) ** 2 + ((yy - cy) / height) ** 2) * 2.5)
    lit = img.astype(np.float32) * light[..., None]
    lit += nprng.normal(0.0, 4.0, img.shape)
    return np.clip(lit, 0, 255).astype(np.uint8)


def write_doorstep_jpeg(path: str | Path, seed: int, quality: int = 92) -> Path:
    """Save a doorstep scene as a phone's camera app would: full size, high quality."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), doorstep_image(seed), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cannot write {target}")
    return target


class DoorstepCamera:
    """A courier's camera app for a whole round: a few scenes rendered up front, each shot a
    copy with its own details stamped on, so a photo at the door costs milliseconds of the
    simulation's real time (at 6000x, 150 ms of rendering would be 15 minutes of the round)."""

    def __init__(self, folder: str | Path, seed: int, scenes: int = 3) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._scenes = [doorstep_image(seed * 100 + i) for i in range(scenes)]
        self._shots = 0

    def shoot(self, name: str, caption: str) -> Path:
        """Save one full-size, high-quality shot named `name`.jpg; `caption` makes it unique."""
        self._shots += 1
        image = self._scenes[self._shots % len(self._scenes)].copy()
        cv2.putText(
            image,
            caption,
            (24, 48),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.0,
            (250, 250, 250),
            2,
            cv2.LINE_AA,
        )
        target = self.folder / f"{name}.jpg"
        if not cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"cannot write {target}")
        return target
