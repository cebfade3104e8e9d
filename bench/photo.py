"""`bench photo`: how big a proof-of-delivery photo is, and what it costs to make.

What is measured: every image is encoded by `drivers.photo.encode_photo` (downscale to 960 px
on the long side, JPEG quality 75, stepping down until it fits 100 KB). The baseline, in the
same run, is what a phone's camera app would hand over: the full-size image at JPEG quality
92. Two sets: rendered doorstep scenes (`simulators.doorstep`, 1280x720, always there) and the
real camera photos in ``../shared/benchmarks/barcodes`` that are at least 960 px on their long
side (``--images``; skipped without it; the smaller ones are crops, not camera frames).
Figures per set: median / 95th percentile / largest bytes of ours and of the baseline, their
ratio, how many needed a lower quality than 75, the median encode time; and the median size at
other long sides (640, 1280 px at quality 75), which is the evidence for choosing 960.

Why: every photo crosses a cellular link behind the events and sits on an SD card until the
depot has it; a day's photos must stay a few MB, and each must still show the door.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.rig import BenchError, host_facts, rounded

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "benchmarks" / "barcodes"
SIDES = (640, 960, 1280)
BASELINE_QUALITY = 92
MIN_SIDE = 960  # real photos smaller than this are crops, not camera frames
UPLINK_BITS_S = 1_000_000  # a modest cellular uplink


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=20, help="rendered doorstep scenes (default 20)")
    p.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES, help="real photos (default: ../shared/...)"
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many real photos")
    p.add_argument("--dir", type=Path, default=None, help="accepted for symmetry; writes nothing")


def _measure(images: list[Any]) -> dict[str, Any]:
    import cv2

    from drivers.photo import QUALITIES, encode_photo

    ours: list[int] = []
    base: list[int] = []
    ms: list[float] = []
    lowered = 0
    at_side: dict[int, list[int]] = {side: [] for side in SIDES}
    for image in images:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, BASELINE_QUALITY])
        if not ok:
            raise BenchError("the JPEG encoder refused an image")
        base.append(len(buf))
        started = time.perf_counter()
        photo = encode_photo(image)
        ms.append((time.perf_counter() - started) * 1000)
        ours.append(len(photo.data))
        lowered += photo.quality < QUALITIES[0]
        for side in SIDES:
            h, w = image.shape[:2]
            f = min(1.0, side / max(h, w))
            scaled = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, QUALITIES[0]])
            at_side[side].append(len(buf))

    def q95(values: list[int]) -> int:
        return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))]

    return {
        "images": len(images),
        "ours_bytes_median": int(statistics.median(ours)),
        "ours_bytes_p95": q95(ours),
        "ours_bytes_max": max(ours),
        "baseline_bytes_median": int(statistics.median(base)),
        "baseline_bytes_max": max(base),
        "ratio_ours_vs_baseline_median": rounded(statistics.median(ours) / statistics.median(base)),
        "over_100kb": sum(1 for n in ours if n > 100_000),
        "needed_lower_quality": lowered,
        "encode_ms_median": rounded(statistics.median(ms), 2),
        "upload_s_median_at_1mbit": rounded(statistics.median(ours) * 8 / UPLINK_BITS_S, 2),
        "baseline_upload_s_median_at_1mbit": rounded(
            statistics.median(base) * 8 / UPLINK_BITS_S, 2
        ),
        "q75_bytes_median_by_long_side": {
            str(side): int(statistics.median(v)) if v else None for side, v in at_side.items()
        },
    }


def _real_photos(folder: Path, limit: int | None) -> list[Any]:
    import cv2

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    loaded = (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths)
    # Only frames at least as large as a photo we keep: the set also holds small crops.
    big = [image for image in loaded if image is not None and max(image.shape[:2]) >= MIN_SIDE]
    return big[:limit]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from simulators.doorstep import doorstep_image

    scenes = [doorstep_image(seed) for seed in range(args.scenes)]
    if not scenes:
        raise BenchError("--scenes must be at least 1")
    report: dict[str, Any] = {"doorstep_scenes": _measure(scenes)}
    if args.images.is_dir():
        real = _real_photos(args.images, args.limit)
        if real:
            sizes = sorted({f"{img.shape[1]}x{img.shape[0]}" for img in real})
            report["real_photos"] = {**_measure(real), "sizes_seen": sizes[:10]}
    else:
        report["real_photos"] = None
    report["targets_met"] = all(
        part is None or part["over_100kb"] == 0
        for part in (report["doorstep_scenes"], report.get("real_photos"))
    )
    report["host"] = host_facts()
    return report


def summary(r: dict[str, Any]) -> str:
    parts = []
    for name in ("doorstep_scenes", "real_photos"):
        m = r.get(name)
        if not m:
            continue
        parts.append(
            f"{name}: {m['images']} images, ours median {m['ours_bytes_median']} B "
            f"(max {m['ours_bytes_max']}) vs camera-app {m['baseline_bytes_median']} B "
            f"(x{m['ratio_ours_vs_baseline_median']}), {m['encode_ms_median']} ms to encode"
        )
    return "photo: " + "; ".join(parts)
