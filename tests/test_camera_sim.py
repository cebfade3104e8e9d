"""The camera simulator draws what it says it draws: checked with zxing-cpp, never the driver.

Each rendered symbol must decode, undistorted, to exactly the text put in (GS1 separators as
GS, read in zxing-cpp's Plain text mode, which is what a serial scanner sends); each
distortion must do what it claims and no more; mild ones must leave the code readable on the
full frame; the video file must hold the frames its history describes. Everything is seeded.
"""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp
from numpy.typing import NDArray

from simulators import camera, parcels
from simulators.camera import CameraFrame, Scene, SimulatedCamera
from simulators.errors import SimulatorError
from simulators.parcels import GS, Label

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "q0Vv7mJ3rXk9Zp2LwT8sYb4NcH6dFgA1eRuIoP5_-xE"  # 43 base64url characters, like a real one

ZX_FORMAT = {
    "code128": zxingcpp.BarcodeFormat.Code128,
    "gs1-128": zxingcpp.BarcodeFormat.Code128,
    "qr": zxingcpp.BarcodeFormat.QRCode,
    "datamatrix": zxingcpp.BarcodeFormat.DataMatrix,
    "gs1-datamatrix": zxingcpp.BarcodeFormat.DataMatrix,
    "pdf417": zxingcpp.BarcodeFormat.PDF417,
    "aztec": zxingcpp.BarcodeFormat.Aztec,
    "ean13": zxingcpp.BarcodeFormat.EAN13,
    "itf": zxingcpp.BarcodeFormat.ITF,
    "code39": zxingcpp.BarcodeFormat.Code39,
}


def in_view(shot: CameraFrame) -> tuple[int, int, int, int]:
    """Where the symbol is in the frame; fails the test if it is not in view."""
    assert shot.symbol_box is not None, "the symbol is not in the frame"
    return shot.symbol_box


def read(image: np.ndarray, *fmts: str) -> list[tuple[str, str]]:
    """What a scanner would send for each symbol zxing-cpp finds (of ``fmts``, default any):
    (data, AIM id)."""
    formats = zxingcpp.BarcodeFormats([ZX_FORMAT[f] for f in fmts] or [zxingcpp.BarcodeFormat.All])
    found = zxingcpp.read_barcodes(image, formats=formats, text_mode=zxingcpp.TextMode.Plain)
    return [(r.text, r.symbology_identifier) for r in found]


def sample_texts() -> list[tuple[str, str]]:
    """(format, text) pairs: carriers' identifiers from the parcel generator, and a few fixed."""
    rng = random.Random(20240611)
    pairs: list[tuple[str, str]] = []
    for _ in range(2):
        for maker in (parcels.s10, parcels.ups, parcels.fedex, parcels.dhl):
            pairs.append(("code128", maker(rng).data))
        pairs.append(("gs1-128", parcels.sscc(rng).data))
        pairs.append(("gs1-128", parcels.usps(rng).data))
        pairs.append(("datamatrix", parcels.ups(rng).data))
        pairs.append(("qr", parcels.s10(rng).data))
    pairs += [
        ("gs1-128", f"00123456789012345675{GS}42012345"),  # redundant GS after AI 00: kept
        ("gs1-128", f"4201234{GS}92001234567890123456789"),  # odd digit run before the FNC1
        ("gs1-datamatrix", f"42012345{GS}9212345678901234567890"),
        ("gs1-datamatrix", "00123456789012345675"),
        ("qr", "LMQR:" + TOKEN),
        ("datamatrix", "RB123456785GB"),
        ("pdf417", "RB123456785GB"),
        ("aztec", "1Z999AA10123456784"),
        ("ean13", "5901234123457"),
        ("itf", "00012345678905"),
        ("code39", "RB123456785GB"),
        ("code128", "A1b2-C3 d4/E5"),
    ]
    return pairs


# --- import weight and shared constants ----------------------------------------------------


def test_importing_the_camera_simulator_loads_no_cv2_and_no_writers() -> None:
    code = (
        "import sys, simulators.camera; "
        "print(sorted(m for m in ('cv2', 'zxingcpp', 'barcode') if m in sys.modules))"
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


def test_pickup_qr_prefix_is_the_lockers() -> None:
    from edge.locker import QR_PREFIX

    assert camera.PICKUP_QR_PREFIX == QR_PREFIX


# --- undistorted labels --------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "text"), sample_texts())
def test_undistorted_label_decodes_to_exactly_its_text(fmt: camera.SymbolFormat, text: str) -> None:
    printed = camera.render_label(text, format=fmt)
    assert (printed.text, printed.format) == (text, fmt)
    # ITF-14 ends in a valid check digit, which a reader validates and says so with "]I1".
    assert printed.aim == ("]I1" if fmt == "itf" else camera.AIM_IDS[fmt])
    assert read(printed.image) == [(text, printed.aim)]


@pytest.mark.parametrize("fmt", ["code128", "gs1-128", "qr", "datamatrix", "gs1-datamatrix"])
def test_bare_symbol_decodes_and_has_its_quiet_zone(fmt: camera.SymbolFormat) -> None:
    text = f"42012345{GS}9212345678901234567890" if fmt.startswith("gs1") else "RR123456785NL"
    symbol = camera.render_symbol(text, fmt, module_px=2)
    assert symbol.ndim == 2 and symbol.dtype == np.uint8
    assert set(np.unique(symbol)) == {0, 255}
    # The quiet zone is light all round.
    assert symbol[:, :4].min() == 255 and symbol[:, -4:].min() == 255
    assert symbol[:2].min() == 255 and symbol[-2:].min() == 255
    assert read(symbol) == [(text, camera.AIM_IDS[fmt])]


def test_a_parcel_label_picks_its_symbol_from_its_aim_id() -> None:
    rng = random.Random(5)
    s10, sscc = parcels.s10(rng), parcels.sscc(rng)
    assert camera.render_label(s10).format == "code128"
    printed = camera.render_label(sscc)
    assert (printed.format, printed.aim, printed.text) == ("gs1-128", "]C1", sscc.data)
    as_dm = camera.render_label(
        Label(f"42012345{GS}92123456", "]C1", "usps"), format="gs1-datamatrix"
    )
    assert read(as_dm.image) == [(f"42012345{GS}92123456", "]d2")]


def test_gs1_datamatrix_carries_the_canonical_element_string() -> None:
    # zint places FNC1 itself: none after the fixed-length SSCC, so the symbol (and what a
    # scanner sends) lacks the label data's redundant GS. PrintedLabel.text says so.
    data = f"00123456789012345675{GS}42012345"
    printed = camera.render_label(data, format="gs1-datamatrix")
    assert printed.text == "0012345678901234567542012345"
    assert read(printed.image) == [(printed.text, "]d2")]


def test_symbol_box_is_where_the_symbol_is_printed() -> None:
    printed = camera.render_label("RB123456785GB", format="code128")
    x, y, w, h = printed.symbol_box
    grey = cv2.cvtColor(printed.image, cv2.COLOR_BGR2GRAY)
    inside = grey[y : y + h, x : x + w]
    assert inside[:, 0].max() < 128 and inside[:, -1].max() < 128  # start and stop bars
    assert grey[y : y + h, x - 20 : x - 1].min() > 200  # quiet zone to the left
    assert grey[y : y + h, x + w + 1 : x + w + 20].min() > 200  # and to the right


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        ("RB123456785GB", "gs1-128"),  # not a GS1 element string
        ("0012345", "gs1-datamatrix"),  # SSCC cut short
        ("café", "qr"),  # not ASCII
        ("RB123456785GB", "upc-z"),
    ],
)
def test_what_cannot_be_printed_is_refused(text: str, fmt: str) -> None:
    with pytest.raises(SimulatorError):
        camera.render_label(text, format=fmt)  # type: ignore[arg-type]


def test_plain_text_needs_a_format() -> None:
    with pytest.raises(SimulatorError):
        camera.render_label("RB123456785GB")


# --- scenes --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["code128", "gs1-128", "qr", "datamatrix", "gs1-datamatrix"])
def test_label_in_a_scene_decodes_on_the_full_frame(fmt: camera.SymbolFormat) -> None:
    text = f"00123456789012345675{GS}42012345" if fmt == "gs1-128" else "RR123456785NL"
    if fmt == "gs1-datamatrix":
        text = f"42012345{GS}9212345678901234567890"
    printed = camera.render_label(text, format=fmt)
    shot = Scene("cardboard", seed=1).frame(printed)
    assert shot.image.shape == (720, 1280, 3) and shot.image.dtype == np.uint8
    assert shot.symbol_in_view
    assert read(shot.image) == [(printed.text, printed.aim)]


def test_scene_reports_where_the_symbol_landed() -> None:
    printed = camera.render_label("RB123456785GB", format="qr")
    shot = Scene("van_floor", seed=3).frame(
        printed, center=(500, 380), width_px=420, angle_deg=30, pitch_deg=8, yaw_deg=-12
    )
    qr_only = zxingcpp.BarcodeFormats([zxingcpp.BarcodeFormat.QRCode])
    (found,) = zxingcpp.read_barcodes(shot.image, formats=qr_only)
    p = found.position
    seen = [
        (p.top_left.x, p.top_left.y),
        (p.top_right.x, p.top_right.y),
        (p.bottom_right.x, p.bottom_right.y),
        (p.bottom_left.x, p.bottom_left.y),
    ]
    assert shot.symbol_corners is not None
    for (x, y), (u, v) in zip(shot.symbol_corners, seen, strict=True):
        assert math.hypot(x - u, y - v) < 4


def test_empty_scene_and_backgrounds_are_seeded() -> None:
    a = Scene("cardboard", seed=1).frame()
    assert a.text is None and a.symbol_corners is None and not a.symbol_in_view
    assert np.array_equal(a.image, Scene("cardboard", seed=1).backdrop())
    assert not np.array_equal(a.image, Scene("cardboard", seed=2).backdrop())
    floor = Scene("van_floor", seed=1).backdrop()
    assert floor.mean() < a.image.mean()  # the floor is dark grey, the cardboard light brown
    with pytest.raises(SimulatorError):
        Scene("moon").backdrop()


# --- distortions ---------------------------------------------------------------------------


def _label_on_dark(width_px: float = 300) -> CameraFrame:
    printed = camera.render_label("RB123456785GB", format="qr")
    return Scene((40, 40, 40)).frame(printed, width_px=width_px)


def _label_outline(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    _, white = cv2.threshold(grey, 128, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(white, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea)


@pytest.mark.parametrize("angle", [0.0, 23.0, 67.0, 135.0, -60.0])
def test_rotation_angle_is_recovered_from_the_label_outline(angle: float) -> None:
    shot = _label_on_dark()
    turned = camera.rotate(shot.image, angle)
    box = cv2.boxPoints(cv2.minAreaRect(_label_outline(turned)))
    # The label is wider than tall: its long side's direction is the rotation (mod 180),
    # counter-clockwise on screen, so with y flipped.
    edges = [box[1] - box[0], box[2] - box[1]]
    dx, dy = max(edges, key=lambda e: float(np.hypot(*e)))
    measured = math.degrees(math.atan2(-dy, dx)) % 180
    error = (measured - angle) % 180
    assert min(error, 180 - error) < 1.0


def test_perspective_moves_the_corners_deterministically() -> None:
    shot = _label_on_dark(400)
    same = camera.perspective(shot.image, offsets=[(0, 0)] * 4)
    assert cv2.absdiff(same, shot.image).max() <= 1
    a = camera.perspective(shot.image, 7, jitter=0.08)
    assert np.array_equal(a, camera.perspective(shot.image, 7, jitter=0.08))
    assert not np.array_equal(a, camera.perspective(shot.image, 8, jitter=0.08))

    def side_angles(image: np.ndarray) -> list[float]:
        outline = _label_outline(image)
        quad = cv2.approxPolyDP(outline, 0.02 * cv2.arcLength(outline, True), True)
        assert len(quad) == 4
        q = quad.reshape(4, 2).astype(float)
        sides = [q[(i + 1) % 4] - q[i] for i in range(4)]
        return [math.degrees(math.atan2(s[1], s[0])) for s in sides]

    def not_parallel(angles: list[float]) -> float:
        # How far opposite sides are from parallel, the worse pair.
        return max(abs(((angles[i] - angles[i + 2]) % 360) - 180) for i in (0, 1))

    # A camera looking up at the label's far edge: the top comes closer together.
    keystone = camera.perspective(shot.image, offsets=[(120, 0), (-120, 0), (0, 0), (0, 0)])
    assert not_parallel(side_angles(shot.image)) < 0.5
    assert not_parallel(side_angles(keystone)) > 3.0
    assert not_parallel(side_angles(a)) > 0.5


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_gaussian_blur_softens_and_keeps_brightness() -> None:
    shot = _label_on_dark(400)
    soft = camera.gaussian_blur(shot.image, 2.0)
    assert _sharpness(soft) < 0.3 * _sharpness(shot.image)
    assert abs(float(soft.mean()) - float(shot.image.mean())) < 1.0
    assert np.array_equal(camera.gaussian_blur(shot.image, 0), shot.image)


def test_motion_blur_smears_along_its_direction_only() -> None:
    stripes = np.zeros((120, 120, 3), np.uint8)
    stripes[::8] = 255  # horizontal lines: nothing changes along x
    stripes[1::8] = 255
    along = camera.motion_blur(stripes, 9, angle_deg=0)
    across = camera.motion_blur(stripes, 9, angle_deg=90)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(along[inner].astype(int) - stripes[inner]).max() <= 1
    assert across[inner].std() < 0.6 * stripes[inner].std()
    assert _sharpness(camera.motion_blur(_label_on_dark().image, 12, 30)) < _sharpness(
        _label_on_dark().image
    )


def test_glare_is_a_bright_ellipse_and_nothing_else() -> None:
    image = np.full((200, 300, 3), 60, np.uint8)
    lit = camera.glare(image, (150, 100), (80, 30), strength=1.0)
    assert lit[100, 150].min() == 255  # the core saturates
    assert lit[100, 150 + 40].min() == 255  # within 60 % of the long half-axis: full strength
    assert lit[100 + 20, 150].max() < 255  # 2/3 of the short half-axis: fading
    assert lit[100 + 20, 150].min() > 60
    assert np.array_equal(lit[100, 150 + 85], image[100, 150 + 85])  # past the long axis
    assert np.array_equal(lit[100 + 35, 150], image[100 + 35, 150])  # past the short axis
    outside = np.ones(image.shape[:2], bool)
    cv2.ellipse(outside.view(np.uint8), (150, 100), (81, 31), 0, 0, 360, 0, -1)
    assert np.array_equal(lit[outside], image[outside])
    turned = camera.glare(image, (150, 100), (80, 30), angle_deg=90, strength=1.0)
    assert turned[100 + 40, 150].min() == 255 and np.array_equal(turned[100, 150 + 40], image[0, 0])


def test_sensor_noise_has_its_sigma_and_its_seed() -> None:
    image = np.full((200, 200, 3), 128, np.uint8)
    noisy = camera.sensor_noise(image, 3, sigma=6.0)
    diff = noisy.astype(float) - image
    assert abs(diff.mean()) < 0.3
    assert 5.4 < diff.std() < 6.6
    assert np.array_equal(noisy, camera.sensor_noise(image, 3, sigma=6.0))
    assert not np.array_equal(noisy, camera.sensor_noise(image, 4, sigma=6.0))


@pytest.fixture(scope="module")
def qr_shot() -> CameraFrame:
    return Scene("cardboard", seed=1).frame(camera.render_label("RB123456785GB", format="qr"))


@pytest.mark.parametrize("kind", ["finger", "tape"])
@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_occlusion_covers_part_of_the_code_not_all(
    qr_shot: CameraFrame, kind: camera.Occluder, side: camera.Side
) -> None:
    shot = qr_shot
    assert shot.symbol_box is not None
    x, y, w, h = shot.symbol_box
    covered = camera.occlude(
        shot.image, shot.symbol_box, rng=5, fraction=0.35, kind=kind, side=side
    )
    changed = np.any(covered != shot.image, axis=2)
    share = changed[y : y + h, x : x + w].mean()
    assert 0.05 < share < 0.6
    # Nothing far from the code changes.
    far = np.ones(changed.shape, bool)
    far[max(0, y - h) : y + 2 * h, max(0, x - w) : x + 2 * w] = False
    assert not changed[far].any()
    assert np.array_equal(
        covered,
        camera.occlude(shot.image, shot.symbol_box, rng=5, fraction=0.35, kind=kind, side=side),
    )
    with pytest.raises(SimulatorError):
        camera.occlude(shot.image, shot.symbol_box, fraction=1.0, kind=kind)


def test_low_light_darkens_and_flattens() -> None:
    image = _label_on_dark(400).image
    dim = camera.low_light(image, gain=0.35, contrast=0.7)
    assert dim.mean() < 0.45 * image.mean()
    assert dim.std() < 0.3 * image.std()


def test_jpeg_adds_artefacts_that_grow_as_quality_falls() -> None:
    image = camera.sensor_noise(_label_on_dark(400).image, 1, sigma=4)
    errors = [cv2.absdiff(camera.jpeg(image, q), image).mean() for q in (95, 60, 15)]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert camera.jpeg(image, 60).shape == image.shape


# --- mild distortions stay readable --------------------------------------------------------

MILD: dict[str, Callable[[CameraFrame], NDArray[np.uint8]]] = {
    # Linear codes: zxing-cpp scans rows and columns only, so a Code 128 tilted further than
    # about atan(bar height / symbol width) (some 10 degrees here) is not read on one frame.
    "rotate": lambda f: camera.rotate(f.image, 5),
    "perspective": lambda f: camera.perspective(f.image, 11, jitter=0.03),
    "gaussian": lambda f: camera.gaussian_blur(f.image, 1.0),
    "motion": lambda f: camera.motion_blur(f.image, 4, 20),
    "glare": lambda f: camera.glare(
        f.image, (in_view(f)[0], in_view(f)[1]), (90, 50), strength=0.6
    ),
    "noise": lambda f: camera.sensor_noise(f.image, 2, sigma=8),
    "low_light": lambda f: camera.low_light(f.image, gain=0.45, contrast=0.8),
    "jpeg": lambda f: camera.jpeg(f.image, 55),
    "all_at_once": lambda f: camera.jpeg(
        camera.sensor_noise(
            camera.gaussian_blur(
                camera.perspective(camera.rotate(f.image, -8), 4, jitter=0.02), 0.8
            ),
            6,
            sigma=5,
        ),
        70,
    ),
}


@pytest.mark.parametrize("fmt", ["code128", "gs1-128", "qr", "gs1-datamatrix"])
def test_mild_distortions_remain_readable_on_the_full_frame(fmt: camera.SymbolFormat) -> None:
    text = {
        "gs1-128": f"00123456789012345675{GS}42012345",
        "gs1-datamatrix": f"42012345{GS}9212345678901234567890",
    }.get(fmt, "1Z999AA10123456784")
    printed = camera.render_label(text, format=fmt)
    shot = Scene("cardboard", seed=4).frame(printed, angle_deg=2)
    unreadable = [
        name
        for name, distort in MILD.items()
        if read(distort(shot), fmt) != [(printed.text, printed.aim)]
    ]
    assert unreadable == []


@pytest.mark.parametrize("fmt", ["qr", "datamatrix", "gs1-datamatrix"])
@pytest.mark.parametrize("angle", [45.0, 160.0, -75.0])
def test_2d_codes_read_at_any_angle(fmt: camera.SymbolFormat, angle: float) -> None:
    text = f"42012345{GS}9212345678901234567890" if fmt.startswith("gs1") else "RB123456785GB"
    printed = camera.render_label(text, format=fmt)
    shot = Scene("van_floor", seed=2).frame(printed, width_px=400)
    assert read(camera.rotate(shot.image, angle), fmt) == [(printed.text, printed.aim)]


def test_qr_with_a_finger_over_a_corner_still_reads() -> None:
    printed = camera.render_label("LMQR:" + TOKEN, format="qr", ec_level="H")
    shot = Scene("cardboard", seed=2).frame(printed)
    assert shot.symbol_box is not None
    covered = camera.occlude(shot.image, shot.symbol_box, rng=1, fraction=0.2, side="right")
    assert read(covered, "qr") == [(printed.text, "]Q1")]


# --- the phone at the locker ---------------------------------------------------------------


def test_phone_qr_scene_reads_as_the_pickup_token() -> None:
    shot = camera.phone_qr_scene(TOKEN, seed=3)
    assert shot.image.shape == (720, 1280, 3)
    assert (shot.text, shot.format, shot.aim) == ("LMQR:" + TOKEN, "qr", "]Q1")
    assert shot.symbol_in_view
    assert read(shot.image) == [("LMQR:" + TOKEN, "]Q1")]
    # The QR really is tilted: its top edge is not horizontal.
    assert shot.symbol_corners is not None
    (x0, y0), (x1, y1) = shot.symbol_corners[:2]
    assert abs(math.degrees(math.atan2(y0 - y1, x1 - x0))) > 5
    # A token with its prefix already on is not prefixed twice; other poses read too.
    other = camera.phone_qr_scene("LMQR:" + TOKEN, seed=8, angle_deg=-20, yaw_deg=15)
    assert other.text == "LMQR:" + TOKEN
    assert read(other.image, "qr") == [("LMQR:" + TOKEN, "]Q1")]


# --- the video source ----------------------------------------------------------------------


def _pass_frames() -> list[CameraFrame]:
    # A small frame keeps the test fast; 1280 x 720 works the same (and is the default).
    scene = Scene("van_floor", seed=6, width=640, height=360)
    first = camera.render_label("RB123456785GB", format="code128", module_px=2)
    second = camera.render_label("LMQR:" + TOKEN, format="qr", module_px=5)
    frames = [scene.frame()]
    frames += camera.label_pass(scene, first, enter=3, stay=4, leave=3)
    frames += camera.label_pass(scene, second, enter=2, stay=3, leave=2, width_px=280)
    return frames


def test_simulated_camera_writes_the_frames_its_history_describes(tmp_path: Path) -> None:
    frames = _pass_frames()
    with SimulatedCamera(iter(frames), fps=10) as cam:
        assert cam.frame_count == len(frames) == 18
        assert cam.frame_size == (640, 360)
        assert [(s.text, s.format, s.aim, s.first_frame, s.last_frame) for s in cam.history] == [
            ("RB123456785GB", "code128", "]C0", 4, 7),
            ("LMQR:" + TOKEN, "qr", "]Q1", 12, 16),
        ]
        assert cam.shown_at(5) is cam.history[0] and cam.shown_at(0) is None

        video = cv2.VideoCapture(cam.source)
        assert video.isOpened()
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == cam.frame_count
        assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
        got = []
        while True:
            ok, image = video.read()
            if not ok:
                break
            got.append(image)
        video.release()
        assert len(got) == cam.frame_count
        for i, (image, sent) in enumerate(zip(got, frames, strict=True)):
            assert image.shape == sent.image.shape
            assert cv2.absdiff(image, sent.image).mean() < 3.0, i  # MJPEG is lossy
            shown = cam.shown_at(i)
            expected = [(shown.text, shown.aim)] if shown is not None else []
            assert read(image, "code128", "qr") == expected, i
        source = Path(cam.source)
        assert source.exists()
    assert not source.exists()  # the temporary directory went with close()

    kept = tmp_path / "kept.avi"
    with SimulatedCamera([f.image for f in frames[:3]], path=kept) as cam:
        assert cam.source == str(kept) and cam.history == []
    assert kept.exists()  # a path the caller gave is the caller's


def test_simulated_camera_refuses_what_no_camera_records(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError):
        SimulatedCamera([])
    small = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(SimulatorError):
        SimulatedCamera([small, np.zeros((50, 50, 3), np.uint8)], path=tmp_path / "x.avi")


def test_label_pass_moves_the_label_through_the_view() -> None:
    scene = Scene("cardboard", seed=1)
    printed = camera.render_label("RB123456785GB", format="qr")
    shots = list(
        camera.label_pass(scene, printed, enter=4, stay=2, leave=4, width_px=300, exposure=0.1)
    )
    assert len(shots) == 10
    xs = [np.mean([x for x, _ in s.symbol_corners or ()]) for s in shots]
    assert all(a >= b for a, b in itertools.pairwise(xs))  # right to left
    assert not shots[0].symbol_in_view and not shots[-1].symbol_in_view
    assert shots[4].symbol_in_view and shots[5].symbol_in_view
    assert read(shots[0].image) == [] and read(shots[-1].image) == []
    # Frame 4 arrived at the centre during its exposure (smeared); frame 5 stood still.
    assert _sharpness(shots[4].image) < 0.8 * _sharpness(shots[5].image)
    assert read(shots[5].image) == [(printed.text, "]Q1")]
