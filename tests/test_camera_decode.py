"""The camera as a barcode reader: what it decodes, how it reports it, and its frame source.

Every image here is made in the test (zxing-cpp's writer, python-barcode for Code 128 and
GS1-128, OpenCV for tilt, perspective and blur); nothing needs ../shared (`bench decode` and
its photo set are tested in test_bench_decode.py). OpenCV is imported where it is used, as
everywhere in the repository: no module loads it at import.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import barcode
import numpy as np
import pytest
import zxingcpp

from drivers.camera import Camera, CameraError, Decoder, Deduper, Frame, FrameReader, Symbol
from drivers.scanner import Scan, ScanFramer
from parcel.identify import identify

ROOT = Path(__file__).resolve().parent.parent

GS = "\x1d"
FNC1 = "\xf1"  # python-barcode's FNC1 character in Code 128
SSCC = "157035381410375177"  # PROTOCOLS.md section 2: a valid SSCC
GS1_TEXT = f"42012345{GS}00{SSCC}"  # (420) ZIP 12345, then (00) SSCC: FNC1 -> GS between them


# -- making images ------------------------------------------------------------------------


def white_border(image: Any, px: int) -> Any:
    import cv2

    return cv2.copyMakeBorder(image, px, px, px, px, cv2.BORDER_CONSTANT, value=255)


def python_barcode(kind: str, data: str, module_px: int = 3, height: int = 90) -> Any:
    """A linear code drawn from python-barcode's modules (no Pillow needed): 1 = a bar."""
    modules = barcode.get_barcode_class(kind)(data).build()[0]
    row = np.array([0 if m == "1" else 255 for m in modules], dtype=np.uint8)
    image = np.repeat(np.repeat(row[None, :], height, axis=0), module_px, axis=1)
    return white_border(image, 12 * module_px)


def zxing_symbol(fmt: zxingcpp.BarcodeFormat, content: str, scale: int = 4, **kw: Any) -> Any:
    image = np.asarray(zxingcpp.create_barcode(content, fmt, **kw).to_image(scale=scale))
    return white_border(image.astype(np.uint8), 8 * scale)


def on_canvas(label: Any, size: tuple[int, int] = (640, 480)) -> Any:
    """The label in the middle of a light-gray page (at least ``size``), as BGR."""
    import cv2

    lh, lw = label.shape
    w, h = max(size[0], lw + 40), max(size[1], lh + 40)
    canvas = np.full((h, w), 200, dtype=np.uint8)
    y, x = (h - lh) // 2, (w - lw) // 2
    canvas[y : y + lh, x : x + lw] = label
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


def tilt(image: Any, degrees: float, perspective: float, blur: float) -> Any:
    """Rotated about the centre, corners pulled for perspective, then Gaussian blur."""
    import cv2

    h, w = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    moved = cv2.transform(corners[None], rotation)[0]
    pull = perspective * min(w, h)
    moved += np.array([[pull, 0], [-pull, pull / 2], [0, 0], [0, -pull / 2]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(corners, moved)
    out = cv2.warpPerspective(
        image, warp, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(200, 200, 200)
    )
    return cv2.GaussianBlur(out, (0, 0), blur)


def decode(image: Any) -> list[Symbol]:
    return Decoder(budget_ms=None).decode(image)


# -- what comes out ------------------------------------------------------------------------

F = zxingcpp.BarcodeFormat


@pytest.mark.parametrize(
    ("fmt", "make", "aim", "text"),
    [
        ("code128", lambda: python_barcode("code128", "RB123456785GB"), "]C0", "RB123456785GB"),
        ("code128", lambda: python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}"), "]C1", GS1_TEXT),
        ("datamatrix", lambda: zxing_symbol(F.DataMatrix, "LMC:C42"), "]d1", "LMC:C42"),
        (
            "datamatrix",
            lambda: zxing_symbol(F.DataMatrix, f"(420)12345(00){SSCC}", gs1=True),
            "]d2",
            GS1_TEXT,
        ),
        ("qrcode", lambda: zxing_symbol(F.QRCode, "LMQR:3q2+7w=="), "]Q1", "LMQR:3q2+7w=="),
        (
            "qrcode",
            lambda: zxing_symbol(F.QRCode, f"(420)12345(00){SSCC}", gs1=True),
            "]Q3",
            GS1_TEXT,
        ),
        (
            "pdf417",
            lambda: zxing_symbol(F.PDF417, "1Z5R89390357567127", scale=3),
            "]L2",
            "1Z5R89390357567127",
        ),
        ("aztec", lambda: zxing_symbol(F.Aztec, "RB123456785GB"), "]z0", "RB123456785GB"),
        ("ean13", lambda: zxing_symbol(F.EAN13, "4006381333931", scale=3), "]E0", "4006381333931"),
        # ITF: ]I1 when the mod-10 check character is there and verified (ITF-14), ]I0 not.
        ("itf", lambda: zxing_symbol(F.ITF, "12345678901231", scale=3), "]I1", "12345678901231"),
        ("itf", lambda: zxing_symbol(F.ITF, "123456", scale=3), "]I0", "123456"),
        (
            "code39",
            lambda: zxing_symbol(F.Code39, "RB123456785GB", scale=3),
            "]A0",
            "RB123456785GB",
        ),
    ],
)
def test_each_format_decodes_with_its_aim_id_and_exact_text(
    fmt: str, make: Any, aim: str, text: str
) -> None:
    symbols = decode(on_canvas(make()))
    assert [(s.format, s.aim, s.text) for s in symbols] == [(fmt, aim, text)]
    assert len(symbols[0].corners) == 4


def test_gs1_128_comes_out_as_the_serial_scanner_sends_it() -> None:
    [symbol] = decode(on_canvas(python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}")))
    wire = b"]C1" + GS1_TEXT.encode("ascii") + b"\r\n"  # what a Honeywell sends for this label
    [serial] = ScanFramer().feed(wire, now=1.0)
    assert isinstance(serial, Scan)
    camera = symbol.to_scan(at=1.0)
    assert (camera.data, camera.aim, camera.raw) == (serial.data, serial.aim, serial.raw)
    assert GS in symbol.text and symbol.aim == "]C1"
    from_camera, from_serial = identify(symbol.text, symbol.aim), identify(serial.data, serial.aim)
    assert (from_camera.kind, from_camera.id) == (from_serial.kind, from_serial.id)
    assert (from_camera.kind, from_camera.id) == ("sscc", SSCC)
    assert from_camera.details == from_serial.details


def test_a_tilted_label_in_perspective_is_straightened_and_read() -> None:
    label = python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}", module_px=2, height=70)
    image = tilt(on_canvas(label, (800, 600)), degrees=30, perspective=0.05, blur=0.8)
    symbols = decode(image)
    assert [(s.text, s.aim) for s in symbols] == [(GS1_TEXT, "]C1")]
    # Tilted 30 degrees, a wide linear code is beyond the whole-frame pass: the region crop
    # straightened it (zxing-cpp or zbar on the crop).
    assert "/region/" in symbols[0].source
    # Its corners are mapped back into the tilted image, around the barcode's centre.
    cx = sum(x for x, _ in symbols[0].corners) / 4
    cy = sum(y for _, y in symbols[0].corners) / 4
    assert math.hypot(cx - 400, cy - 300) < 60


def test_a_tilted_qr_on_a_dark_mode_phone_is_read() -> None:
    light_on_dark = 255 - zxing_symbol(F.QRCode, "LMQR:3q2+7w==", scale=5)
    image = tilt(on_canvas(white_border(light_on_dark, 0)), degrees=20, perspective=0.04, blur=0.6)
    assert [(s.text, s.aim) for s in decode(image)] == [("LMQR:3q2+7w==", "]Q1")]


def test_nothing_is_read_from_a_page_without_a_code() -> None:
    import cv2

    rng = np.random.default_rng(3)
    page = np.full((480, 640), 210, dtype=np.uint8)
    for i in range(12):  # print, boxes and stripes of shadow, nothing a decoder should take
        cv2.putText(
            page, f"PARCEL {i} FRAGILE", (20, 30 + 36 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 30, 2
        )
    page[::7, :] //= 2
    page = (page + rng.normal(0, 6, page.shape)).clip(0, 255).astype(np.uint8)
    assert decode(page) == []


def test_a_decoder_that_raises_is_a_logged_miss(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("zxing-cpp fell over")

    monkeypatch.setattr(zxingcpp, "read_barcodes", broken)
    image = on_canvas(python_barcode("code128", "RB123456785GB"))
    decoder = Decoder(budget_ms=None)
    with caplog.at_level(logging.WARNING, logger="drivers.camera"):
        symbols = decoder.decode(image)  # never raises
    assert decoder.misses >= 1
    assert any("zxing-cpp failed" in r.getMessage() for r in caplog.records)
    # The second opinion still reads it, with the same text and AIM id.
    assert [(s.text, s.aim, s.source.split("/")[0]) for s in symbols] == [
        ("RB123456785GB", "]C0", "zbar")
    ]
    # With both decoders broken: an empty answer, still no exception.
    from drivers.camera.zbar import _Zbar

    monkeypatch.setattr(_Zbar, "read", broken)
    assert Decoder(budget_ms=None).decode(image) == []


def test_an_argument_that_is_not_an_image_is_refused() -> None:
    with pytest.raises(CameraError):
        Decoder().decode(np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(CameraError):
        Decoder(formats=["code128", "telex"])


def test_the_budget_bounds_the_decode() -> None:
    image = tilt(on_canvas(python_barcode("code128", "RB123456785GB"), (1280, 720)), 25, 0.03, 1)
    decoder = Decoder(budget_ms=5.0)
    decoder.warm_up()
    started = time.perf_counter()
    decoder.decode(image)
    # The first pass always runs; later steps only start when predicted to fit. Generous
    # bound: a loaded test machine.
    assert (time.perf_counter() - started) * 1000 < 150


# -- deduplication across frames -------------------------------------------------------------


def test_a_code_in_consecutive_frames_is_reported_once_and_again_after_leaving_view() -> None:
    parcel = Symbol("RB123456785GB", "]C0", "code128", ((0, 0), (1, 0), (1, 1), (0, 1)), "zxing")
    other = Symbol("LMQR:abc", "]Q1", "qrcode", ((0, 0), (1, 0), (1, 1), (0, 1)), "zxing")
    dedup = Deduper(window_frames=3)
    assert dedup.feed([parcel]) == [parcel]
    assert dedup.feed([parcel, other]) == [other]
    assert dedup.feed([parcel]) == []
    assert dedup.feed([]) == []  # a missed frame or two (motion blur) is not leaving view
    assert dedup.feed([]) == []
    assert dedup.feed([parcel]) == []
    for _ in range(3):  # out of view for window_frames frames: it left
        assert dedup.feed([]) == []
    assert dedup.feed([parcel]) == [parcel]  # shown again: a deliberate second read


# -- the camera ------------------------------------------------------------------------------


def write_video(path: Path, frames: int, fps: float = 25.0) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((48, 64, 3), (i * 8) % 256, dtype=np.uint8)
        writer.write(image)
    writer.release()


def test_camera_on_a_video_file_yields_frames_and_drops_the_old_ones(tmp_path: Path) -> None:
    video = tmp_path / "van.avi"
    write_video(video, frames=40, fps=25)
    with Camera(str(video), queue_frames=2, reopen_min_s=5, reopen_max_s=5) as camera:
        first = camera.read(timeout=5)
        assert isinstance(first, Frame) and first.image.shape == (48, 64, 3)
        deadline = time.monotonic() + 5  # not reading: frames go by and old ones are dropped
        while camera.dropped < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = [camera.read(timeout=0.5) for _ in range(2)]
        assert all(isinstance(f, Frame) for f in queued)
        seqs = [f.seq for f in queued if f is not None]
        assert seqs == sorted(seqs) and seqs[0] > first.seq + 5  # the newest, not a backlog
        assert camera.dropped >= 5
        assert camera.connected


def test_camera_reopens_a_source_that_ended(tmp_path: Path) -> None:
    video = tmp_path / "short.avi"
    write_video(video, frames=5)
    seen: list[int] = []
    events: list[bool] = []
    with Camera(
        str(video), realtime=False, reopen_min_s=0.05, reopen_max_s=0.1, on_connection=events.append
    ) as camera:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not seen or seen[-1] <= 5):
            frame = camera.read(timeout=1)
            if frame is not None:
                seen.append(frame.seq)
    assert seen and seen[-1] > 5  # played again after the end
    assert events[:3] == [True, False, True]


def test_camera_on_a_missing_source_waits_and_stops_cleanly(tmp_path: Path) -> None:
    camera = Camera(str(tmp_path / "nothing.avi"), reopen_min_s=0.05, reopen_max_s=0.1)
    camera.start()
    assert camera.read(timeout=0.3) is None
    assert not camera.connected
    camera.stop()
    with pytest.raises(CameraError):
        Camera(str(tmp_path / "x.avi"), queue_frames=0)


def test_frame_reader_hands_out_serial_scans_once(tmp_path: Path) -> None:
    import cv2

    video = tmp_path / "label.avi"
    label = on_canvas(python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}", 2, 60), (320, 240))
    size = (label.shape[1], label.shape[0])
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, size)
    for _ in range(10):
        writer.write(label)
    writer.release()
    scans: list[Scan] = []
    camera = Camera(str(video), reopen_min_s=30, reopen_max_s=30)  # play the file once
    with FrameReader(camera, scans.append, decoder=Decoder(budget_ms=None)) as reader:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and reader.frames_seen < 10:
            time.sleep(0.05)
    assert [(s.aim, s.data) for s in scans] == [("]C1", GS1_TEXT)]


# -- import and command line -----------------------------------------------------------------


def test_importing_the_camera_driver_does_not_load_opencv() -> None:
    # Nor numpy or the decoder libraries, from any module of the package.
    code = (
        "import sys, drivers.camera; "
        "print(sorted(m for m in ('cv2', 'numpy', 'zxingcpp', 'pyzbar') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip() == "[]"


def lastmile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_lastmile_decode_json_on_a_png(tmp_path: Path) -> None:
    import cv2

    png = tmp_path / "label.png"
    cv2.imwrite(str(png), on_canvas(python_barcode("gs1_128", f"42012345{FNC1}00{SSCC}")))
    done = lastmile("decode", "--json", str(png))
    assert done.returncode == 0, done.stderr
    assert "\\u001d" in done.stdout  # GS as a JSON escape
    doc = json.loads(done.stdout)
    assert doc["path"] == str(png) and isinstance(doc["ms"], float)
    [symbol] = doc["symbols"]
    assert (symbol["text"], symbol["format"], symbol["aim"]) == (GS1_TEXT, "code128", "]C1")
    assert len(symbol["corners"]) == 4 and all(len(p) == 2 for p in symbol["corners"])

    plain = lastmile("decode", str(png))
    assert plain.returncode == 0 and f"]C1 42012345<GS>00{SSCC}" in plain.stdout


def test_lastmile_decode_exit_status(tmp_path: Path) -> None:
    import cv2

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100), 255, dtype=np.uint8))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    done = lastmile("decode", "--json", str(blank))
    assert done.returncode == 1 and json.loads(done.stdout)["symbols"] == []
    done = lastmile("decode", "--json", str(notes), str(blank))
    assert done.returncode == 2
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["path"] == str(notes) and "not an image" in lines[0]["error"]
    assert lines[1]["symbols"] == []
    done = lastmile("decode", str(tmp_path / "missing.png"))
    assert done.returncode == 2 and "missing.png: error:" in done.stderr
