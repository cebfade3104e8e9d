"""The decoder on files (no time budget): its thorough fallback, its answers that do not depend
on the machine, and the reads it refuses to report.

Every image is made here (zxing-cpp's writer, python-barcode's modules, OpenCV for blur);
nothing needs ../shared. How much the fallback reads on real photos is measured by
``bench decode``, never asserted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import barcode
import numpy as np
import pytest
import zxingcpp

import drivers.camera.decoder as decoder_module
from drivers.camera import Decoder, Symbol
from drivers.camera.decoder import _Found
from drivers.camera.regions import _gaussian_deblurred


def small_qr_in_a_big_photo() -> Any:
    """A 5-megapixel photo of a plain surface with a QR code of 2-pixel modules in it: the
    first pass, shrunk to a third of a megapixel, sees modules of under half a pixel."""
    rng = np.random.default_rng(5)
    photo = rng.normal(170, 6, (1944, 2592)).clip(0, 255).astype(np.uint8)
    qr = np.asarray(
        zxingcpp.create_barcode("LM-SMALL-1234", zxingcpp.BarcodeFormat.QRCode).to_image(scale=2)
    )
    photo[900 : 900 + qr.shape[0], 1300 : 1300 + qr.shape[1]] = qr
    return photo


def defocused_code128(radius: float = 3.5) -> Any:
    """A Code 128 of 2-pixel modules seen through a lens out of focus: each point spread into
    a disc of ``radius`` pixels, which merges the narrow bars."""
    import cv2

    modules = barcode.get_barcode_class("code128")("LM12345678").build()[0]
    row = np.array([0 if m == "1" else 255 for m in modules], dtype=np.uint8)
    image: Any = np.repeat(np.repeat(row[None, :], 80, axis=0), 2, axis=1)
    image = cv2.copyMakeBorder(image, 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=255)
    image = cv2.copyMakeBorder(image, 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=200)
    size = int(np.ceil(radius)) * 2 + 1
    yy, xx = np.mgrid[:size, :size] - size // 2
    disc = (xx * xx + yy * yy <= radius * radius).astype(np.float32)
    return cv2.filter2D(image, -1, disc / disc.sum())


def small_blurred_ean13(sigma: float, angle: float) -> Any:
    """An EAN-13 of 1.5-pixel modules on a white label, turned by ``angle`` degrees and
    softly out of focus (a Gaussian blur of ``sigma`` pixels): about what a phone gives of a
    book's barcode a step away. A blur of about one pixel merges its thinnest bars."""
    import cv2

    modules = barcode.get_barcode_class("ean13")("400638133393").build()[0]
    row = np.array([0 if m == "1" else 255 for m in modules], dtype=np.uint8)
    image: Any = cv2.resize(
        np.repeat(row[None, :], 60, axis=0),
        (round(len(modules) * 1.5), 60),
        interpolation=cv2.INTER_AREA,
    )
    image = cv2.copyMakeBorder(image, 30, 30, 30, 30, cv2.BORDER_CONSTANT, value=255)
    image = cv2.copyMakeBorder(image, 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=190)
    h, w = image.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    image = cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR, borderValue=190)
    return cv2.GaussianBlur(image, (0, 0), sigma)


def texts(symbols: list[Symbol]) -> list[str]:
    return [s.text for s in symbols]


def test_a_small_code_in_a_big_photo_is_read_at_full_resolution_with_no_budget() -> None:
    photo = small_qr_in_a_big_photo()
    # Without the fallback (and without the region crops, which work at full resolution
    # too), the shrunk first pass alone misses it: the image is a real test of the fallback.
    assert Decoder(budget_ms=None, regions=False, thorough=False).decode(photo) == []
    symbols = Decoder(budget_ms=None, regions=False).decode(photo)
    assert texts(symbols) == ["LM-SMALL-1234"]
    (x0, y0), _, (x1, y1), _ = symbols[0].corners
    assert 1290 < x0 < x1 < 1370 and 890 < y0 < y1 < 970  # mapped back into the photo
    # A live frame has a budget: no fallback there, whatever it would find.
    assert Decoder(regions=False).decode(photo) == []


def test_a_defocused_code_is_read_by_the_thorough_fallback() -> None:
    image = defocused_code128()
    assert Decoder(budget_ms=None, thorough=False).decode(image) == []
    assert texts(Decoder(budget_ms=None).decode(image)) == ["LM12345678"]


@pytest.mark.parametrize(("sigma", "angle"), [(1.1, 0), (1.1, 20), (1.1, 35)])
def test_a_small_softly_blurred_code_is_read_once_the_blur_is_undone(
    monkeypatch: pytest.MonkeyPatch, sigma: float, angle: float
) -> None:
    image = small_blurred_ean13(sigma, angle)
    assert texts(Decoder(budget_ms=None).decode(image)) == ["4006381333931"]
    # Every other attempt of the fallback fails on it: the Gaussian deblurring reads it.
    monkeypatch.setattr(decoder_module, "_GAUSSIAN_DEBLUR_SIGMAS", ())
    assert Decoder(budget_ms=None).decode(image) == []


def test_a_misread_outlined_on_a_part_of_the_code_is_outvoted() -> None:
    """Less blur: zbar reads the code's right half as another EAN-13 at two treatments of
    one crop, and outlines only that half; the code's own text, read from many images,
    outlined on the whole code, shows the misread to lie on the same bars."""
    assert texts(Decoder(budget_ms=None).decode(small_blurred_ean13(0.9, 20))) == [
        "4006381333931"
    ]


def test_gaussian_deblurring_parts_thin_bars_that_a_blur_merged() -> None:
    import cv2

    bars = np.repeat(np.tile(np.array([0, 0, 255, 255], dtype=np.uint8), 40)[None, :], 40, 0)
    blurred: Any = cv2.GaussianBlur(bars, (0, 0), 1.2)
    restored = _gaussian_deblurred(blurred, 1.2, 0.003)
    middle = (slice(10, 30), slice(20, -20))
    assert np.ptp(blurred[middle]) < 100  # two-pixel bars, nearly merged into gray
    assert np.ptp(restored[middle]) > 180  # apart again
    assert np.abs(restored[middle].astype(int) - bars[middle]).mean() < 30


def test_with_no_budget_the_answer_does_not_depend_on_learned_costs() -> None:
    """``lastmile decode`` gives the same answer under any load: with no budget nothing may
    depend on the clock or on what the steps were measured to cost."""
    images = [small_qr_in_a_big_photo(), defocused_code128(), defocused_code128(5.0)]
    answers = []
    for ms_per_mp in (1e-6, 1e6):
        decoder = Decoder(budget_ms=None)
        for step in decoder._costs._ms_per_mp:
            decoder._costs._ms_per_mp[step] = ms_per_mp
        answers.append([decoder.decode(image) for image in images])
    assert answers[0] == answers[1]
    assert texts(answers[0][0]) == ["LM-SMALL-1234"]  # the answers are reads, not misses


Attempt = Callable[[], list[tuple[Symbol, bool]]]


def scripted(attempts: list[list[Symbol]]) -> Callable[[Any], Iterator[tuple[str, Attempt]]]:
    """Attempts of the thorough fallback that return the given symbols, one list each (none
    of them doubtful)."""

    def returning(symbols: list[Symbol]) -> Attempt:
        return lambda: [(s, False) for s in symbols]

    def run(gray: Any) -> Iterator[tuple[str, Attempt]]:
        for n, symbols in enumerate(attempts):
            yield f"attempt {n}", returning(symbols)

    return run


def sym(
    text: str, fmt: str, source: str, x: float = 10.0, y: float = 10.0, length: float = 100.0
) -> Symbol:
    """A linear read as zxing-cpp outlines one: the scan line that read it."""
    corners = ((x, y), (x + length, y), (x + length, y + 2), (x, y + 2))
    return Symbol(text, None, fmt, corners, source)


@pytest.mark.parametrize(
    ("attempts", "reported"),
    [
        # A Code 39 read once, out of hundreds of attempts, is what noise gives: not reported.
        ([[sym("4A1", "code39", "zxing/a")], [], []], []),
        # Read again by another attempt (another scale, treatment or reader): reported.
        ([[sym("4A1", "code39", "zxing/a")], [], [sym("4A1", "code39", "zbar/b")]], ["4A1"]),
        # The same image twice is one vote, whichever reader or binarizer read it.
        ([[sym("606060", "itf", "zxing/a")], [sym("606060", "itf", "zbar/a/global")]], []),
        # A QR code's Reed-Solomon check vouches for it: one read is enough.
        ([[], [sym("LM-1", "qrcode", "zxing/a")]], ["LM-1"]),
        # A confirmed UPC-E does not end the fallback: a later attempt reads the EAN-13
        # whose bars it was found among, and the part goes.
        (
            [
                [sym("01673000", "upce", "zxing/a")],
                [sym("01673000", "upce", "zxing/b")],
                [sym("3673953676973", "ean13", "zxing/c")],
                [sym("3673953676973", "ean13", "zbar/d")],
            ],
            ["3673953676973"],
        ),
        # Two texts of one EAN-13: the one read from three times as many images stands...
        (
            [[sym("6775051730575", "ean13", f"zbar/{n}")] for n in "ab"]
            + [[sym("9781585730575", "ean13", f"zxing/{n}")] for n in "cdefgh"],
            ["9781585730575"],
        ),
        # ...and where neither outvotes the other, neither does.
        (
            [[sym("6775051730575", "ean13", f"zbar/{n}")] for n in "ab"]
            + [[sym("9781585730575", "ean13", f"zxing/{n}")] for n in "cde"],
            [],
        ),
    ],
)
def test_a_weakly_checked_read_of_the_fallback_needs_a_second_attempt_to_agree(
    monkeypatch: pytest.MonkeyPatch, attempts: list[list[Symbol]], reported: list[str]
) -> None:
    decoder = Decoder(budget_ms=None)
    monkeypatch.setattr(decoder, "_thorough_attempts", scripted(attempts))
    blank = np.full((240, 320), 200, dtype=np.uint8)
    assert texts(decoder.decode(blank)) == reported


def test_textures_and_stripes_give_no_read_with_no_budget() -> None:
    """The fallback's many attempts on images with no code at all: regular and random
    stripes (blinds, a grille, bar-like print), noise, a checkerboard."""
    import cv2

    rng = np.random.default_rng(11)
    images = []
    for seed in range(3):
        r = np.random.default_rng(seed)
        widths = r.integers(1, 7, size=400) * r.integers(1, 4, size=400)
        edges = np.cumsum(widths)
        row = np.where(np.searchsorted(edges, np.arange(640), side="right") % 2 == 0, 30, 230)
        stripes = np.repeat(row[None, :].astype(np.uint8), 480, axis=0)
        images.append(cv2.GaussianBlur(stripes, (0, 0), 0.8 + seed))
    blinds = np.repeat((np.arange(640) // 6 % 2 * 200 + 30)[None, :], 480, axis=0)
    images.append(blinds.astype(np.uint8))
    images.append(cv2.GaussianBlur((rng.random((480, 640)) * 255).astype(np.uint8), (0, 0), 1))
    y, x = np.mgrid[0:480, 0:640]
    images.append(np.where((x // 4 + y // 4) % 2 == 0, 30, 220).astype(np.uint8))
    decoder = Decoder(budget_ms=None)
    assert [decoder.decode(image) for image in images] == [[]] * len(images)


def test_two_linear_reads_of_one_code_that_disagree_are_dropped() -> None:
    found = _Found()
    # A partial ITF from a false stop pattern, and another one a scan line further down
    # the same bars: neither text holds the other, so neither can be trusted.
    found.add(sym("06467507", "itf", "zxing", 192, 300, length=234))
    found.add(sym("4675073758", "itf", "zxing", 218, 348, length=296))
    # A UPC-E found inside an EAN-13's bars: the EAN-13 stands, the partial read goes.
    found.add(sym("4006381333931", "ean13", "zxing", 600, 100))
    found.add(sym("0063813", "upce", "zxing/region/plain", 620, 110))
    # Two Code 128s one above the other on a label are two codes: both stand.
    found.add(sym("LM1", "code128", "zxing", 600, 400, length=300))
    found.add(sym("LM2", "code128", "zxing", 600, 480, length=300))
    found.settle()
    assert texts(found.symbols) == ["4006381333931", "LM1", "LM2"]


def test_two_texts_lie_at_one_place_when_any_of_their_outlines_do() -> None:
    found = _Found()
    found.add(sym("4006381333931", "ean13", "zbar/a", 0, 100, length=60))  # the left half
    # Another outline of the same text, over the whole code (another attempt's read).
    found.note(sym("4006381333931", "ean13", "zxing/b", 0, 100, length=140))
    found.add(sym("0014800000436", "ean13", "zbar/c", 110, 100, length=30))  # the right end
    found.settle()
    assert texts(found.symbols) == []  # one code, two texts: neither stands


def test_two_texts_of_one_strongly_checked_code_that_overlap_are_dropped() -> None:
    """A smear read along a few scan lines of a Code 128 passed its check with another text:
    inside the outline of the code's own read, it shows one of the two to be a misread."""
    whole = ((151.0, 194.0), (467.0, 194.0), (467.0, 252.0), (151.0, 252.0))
    few_lines = ((150.0, 219.0), (465.0, 219.0), (465.0, 228.0), (150.0, 228.0))
    votes = {("FW727", "code128"): 9, ("F48z*", "code128"): 2}
    for images, kept in ((None, []), (votes, ["FW727"])):
        found = _Found()
        found.add(Symbol("FW727", None, "code128", whole, "zxing"))
        found.add(Symbol("F48z*", None, "code128", few_lines, "zxing"))
        # Alone, neither stands; with the thorough fallback's images, the text most read.
        found.settle(images)
        assert texts(found.symbols) == kept
