"""`bench camera`: what a camera costs its device while nothing is in front of it.

What is measured: a `drivers.camera.FrameReader` (the van's and the locker's camera path)
reading a 1280x720 Motion-JPEG video of an empty doorstep, played at the camera's frame rate
and looped, whose frames differ only by fresh sensor noise and their JPEG. Over each window
the process's CPU time (`time.process_time`, all threads: capture, JPEG decode, thumbnail,
barcode decode) is taken as a share of one core, for three set-ups run one after the other
in this process:

- ours: the reader with its `StillScene` gate (a frame that shows the last decoded scene keeps
  that frame's symbols);
- baseline: the same reader decoding every frame (``skip_still=False``), as before the gate;
- capture only: the camera alone, frames taken and dropped: the floor no decoder can go under.

Why: the locker's camera faces an empty street most of the day and night, and the standards
ask an idle device to use ~0 % CPU. The capture floor is what is left to win by lowering the
frame rate when idle, which this bench makes visible rather than hides.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from bench.rig import BenchError, host_facts, rounded, scratch_dir

# The gate can only cut the decoding: above the capture floor, ours at most a fifth of decoding
# every frame. (The total ratio is printed too; the capture floor dominates it.)
TARGET_RATIO_ABOVE_CAPTURE = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--window", type=float, default=10.0, help="seconds measured per set-up (default 10)"
    )
    p.add_argument("--fps", type=float, default=15.0, help="camera frame rate (default 15)")
    p.add_argument(
        "--frames",
        type=int,
        default=45,
        help="distinct noisy frames in the looped video (default 45)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="make the scratch directory here (default: the current directory)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.window <= 0 or args.fps <= 0 or args.frames < 2:
        raise BenchError("--window and --fps must be positive and --frames at least 2")
    from drivers.camera import Camera, Decoder, FrameReader
    from simulators.camera import SimulatedCamera, jpeg, sensor_noise
    from simulators.doorstep import doorstep_image

    scene = doorstep_image(11)
    frames = [jpeg(sensor_noise(scene, seed, sigma=4.0), 80) for seed in range(args.frames)]
    with scratch_dir(args.dir, "bench-camera") as tmp:
        video = SimulatedCamera(frames, fps=args.fps, path=tmp / "doorstep.avi")

        def camera() -> Camera:  # looped: the file reopens at once when it ends
            return Camera(video.source, reopen_min_s=0.001, reopen_max_s=0.01)

        def reader_window(skip_still: bool) -> dict[str, Any]:
            reader = FrameReader(
                camera(), lambda _scan: None, decoder=Decoder(), skip_still=skip_still
            )
            with reader:
                _wait_frames(lambda: reader.frames_seen, 3, args)  # decoder warm, video playing
                seen0, decoded0 = reader.frames_seen, reader.frames_decoded
                dropped0 = reader.camera.dropped
                cpu = _cpu_window(args.window)
                seen = reader.frames_seen - seen0
                decoded = reader.frames_decoded - decoded0
                dropped = reader.camera.dropped - dropped0
            return {
                "cpu_percent": cpu,
                "frames_seen": seen,
                "frames_decoded": decoded,
                "frames_dropped": dropped,
            }

        ours = reader_window(skip_still=True)
        baseline = reader_window(skip_still=False)
        capture = _capture_window(camera(), args)
    ratio = ours["cpu_percent"] / baseline["cpu_percent"] if baseline["cpu_percent"] else None
    # The part a decoder gate can win: what each set-up costs above the capture alone.
    above = baseline["cpu_percent"] - capture
    ratio_above = (ours["cpu_percent"] - capture) / above if above > 0 else None
    return {
        "benchmark": "camera",
        "frame": "1280x720 MJPEG",
        "fps": args.fps,
        "window_s": args.window,
        "ours_cpu_percent": rounded(ours["cpu_percent"], 2),
        "ours_frames_seen": ours["frames_seen"],
        "ours_frames_decoded": ours["frames_decoded"],
        "baseline_cpu_percent": rounded(baseline["cpu_percent"], 2),
        "baseline_frames_seen": baseline["frames_seen"],
        "baseline_frames_decoded": baseline["frames_decoded"],
        "baseline_frames_dropped": baseline["frames_dropped"],
        "capture_only_cpu_percent": rounded(capture, 2),
        "ratio_ours_vs_baseline": None if ratio is None else rounded(ratio, 3),
        "ratio_above_capture_ours_vs_baseline": None
        if ratio_above is None
        else rounded(ratio_above, 3),
        "targets": {"ratio_above_capture_ours_vs_baseline_max": TARGET_RATIO_ABOVE_CAPTURE},
        "targets_met": ratio_above is not None and ratio_above <= TARGET_RATIO_ABOVE_CAPTURE,
        "host": host_facts(),
    }


def _cpu_window(window: float) -> float:
    """Process CPU over ``window`` seconds of wall time, as % of one core."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(window)
    return 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)


def _wait_frames(count: Any, n: int, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + 30 + n / args.fps
    while count() < n:
        if time.monotonic() > deadline:
            raise BenchError("the simulated camera delivered no frames within 30 s")
        time.sleep(0.05)


def _capture_window(camera: Any, args: argparse.Namespace) -> float:
    """The camera alone: a thread takes each frame and drops it."""
    taken = [0]
    stop = threading.Event()

    def take() -> None:
        while not stop.is_set():
            if camera.read(timeout=0.5) is not None:
                taken[0] += 1

    camera.start()
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    try:
        _wait_frames(lambda: taken[0], 3, args)
        return _cpu_window(args.window)
    finally:
        stop.set()
        camera.stop()
        thread.join(5)


def summary(r: dict[str, Any]) -> str:
    return (
        f"idle camera ({r['frame']} at {r['fps']} fps, {r['window_s']} s each): "
        f"ours {r['ours_cpu_percent']} % of a core ({r['ours_frames_decoded']} of "
        f"{r['ours_frames_seen']} frames decoded), decoding every frame "
        f"{r['baseline_cpu_percent']} %, capture alone {r['capture_only_cpu_percent']} %; "
        f"ratio {r['ratio_ours_vs_baseline']} ({r['ratio_above_capture_ours_vs_baseline']} "
        f"above the capture), targets met: {r['targets_met']}"
    )
