"""The reads the decoder refuses to report: parts of codes, one scan line's misreads, codes too
short to check, and reads that spent all their error correction.

A false read on the camera is a wrong parcel id, the worst answer a decoder can give, so each
rule here is checked on the behaviour it exists for: a generated image (python-barcode's
modules, OpenCV for the tilt) where a real decoder gives the wrong read, or reads scripted
where no small image reliably gives one. How much the rules cost in reads is measured by
``bench decode``, never asserted here. Nothing needs ../shared.
"""

from __future__ import annotations

import random
from typing import Any

import cv2
import numpy as np
import pytest
import zxingcpp
from barcode import EAN13, ITF

from drivers.camera import Decoder, Symbol
from drivers.camera.decoder import _Budget, _Costs, _doubtful, _Found, _image_of
from drivers.camera.regions import _Region
from drivers.camera.zbar import _Read


def bars(modules: str, module_px: int, height: int, *, surround: bool = True) -> Any:
    """A linear code's modules ("1" a bar) drawn ``module_px`` wide and ``height`` high,
    dark on light, with a quiet zone, on a darker surround (``surround``) or alone."""
    row = np.array([30 if m == "1" else 230 for m in modules], dtype=np.uint8)
    image: Any = np.repeat(np.repeat(row[None, :], height, axis=0), module_px, axis=1)
    image = cv2.copyMakeBorder(image, 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=230)
    if not surround:
        return image
    return cv2.copyMakeBorder(image, 200, 200, 200, 200, cv2.BORDER_CONSTANT, value=90)


def tilted_itf14() -> tuple[Any, str]:
    """An ITF-14 label with tall bars, turned about 25 degrees (the bench's generator, one of
    its seeds): a horizontal scan line that enters it through the top of its bars, past the
    label's margin (a quiet zone), reads a valid ITF of its first twelve digits."""
    from bench.labels import synthetic_label, variant

    label = synthetic_label("itf", random.Random(290))
    return variant("tilted", label.image, random.Random(9)), label.text


def texts(symbols: list[Symbol]) -> list[str]:
    return [s.text for s in symbols]


def line(text: str, fmt: str, source: str, x: float = 10.0, y: float = 10.0) -> Symbol:
    """A linear read as zxing-cpp outlines one: the scan line that read it."""
    return Symbol(text, None, fmt, ((x, y), (x + 100, y), (x + 100, y + 2), (x, y + 2)), source)


def test_a_part_of_a_tilted_itf_read_across_the_whole_frame_is_not_reported() -> None:
    image, text = tilted_itf14()
    # zxing-cpp alone on the whole frame reads a part: the image is a real test.
    whole_frame = [b.text for b in zxingcpp.read_barcodes(image, try_rotate=False)]
    assert len(whole_frame) == 1 and whole_frame[0] in text and whole_frame[0] != text
    # The part does not stand in for the code: its straightened crop is read, and shows it
    # to be a part. On a file and on a live frame alike.
    assert texts(Decoder(budget_ms=None).decode(image)) == [text]
    assert texts(Decoder(budget_ms=1000.0).decode(image)) == [text]


def test_an_itf_of_four_digits_is_not_a_read() -> None:
    image = bars(ITF("9004", narrow=1, wide=3).build()[0], 3, 90, surround=False)
    assert [b.text for b in zxingcpp.read_barcodes(image)] == ["9004"]  # zxing-cpp reads it
    assert Decoder(budget_ms=None).decode(image) == []
    # Six digits, the shortest ITF either decoder reports, still read.
    image = bars(ITF("900412", narrow=1, wide=3).build()[0], 3, 90, surround=False)
    assert texts(Decoder(budget_ms=None).decode(image)) == ["900412"]


def test_a_zbar_read_of_one_scan_line_is_not_reported() -> None:
    decoder = Decoder(budget_ms=None)
    ean = bars(EAN13("400638133393").build()[0], 2, 60, surround=False)
    clock = _Budget(None, _Costs())
    # Along every third row: a strip three rows high is one scan line, six rows are two.
    one_line = ean[ean.shape[0] // 2 - 1 : ean.shape[0] // 2 + 2]
    two_lines = ean[ean.shape[0] // 2 - 3 : ean.shape[0] // 2 + 3]
    assert decoder._zbar_read(two_lines, clock, rows_only=True)[0].text == "4006381333931"
    assert decoder._zbar_read(one_line, clock, rows_only=True) == []
    # In the thorough fallback a second image must read the text anyway: one line counts.
    assert len(decoder._zbar_read(one_line, clock, rows_only=True, one_line=True)) == 1


def test_two_texts_of_one_code_in_one_zbar_call_are_both_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = Decoder(budget_ms=None)
    box = [(10.0, 10.0), (110.0, 10.0), (110.0, 40.0), (10.0, 40.0)]
    reads = [
        _Read("6780186008574", "]E0", "ean13", box, lines=4),
        _Read("9780596008574", "]E0", "ean13", box, lines=2),
        _Read("LM-1", "]Q1", "qrcode", [(300.0, 10.0)] * 4, lines=1),
    ]
    assert decoder._zbar is not None
    monkeypatch.setattr(decoder._zbar, "read", lambda image, rows_only=False: reads)
    image = np.zeros((50, 50), np.uint8)
    assert [r.text for r in decoder._zbar_read(image, _Budget(None, _Costs()))] == ["LM-1"]


def test_a_weakly_checked_read_from_a_crop_waits_for_a_second_strategy() -> None:
    found = _Found()
    assert not found.add(line("0817605453", "itf", "zbar/region/clahe"), doubtful=True)
    assert found.symbols == []
    # The same strategy again is no second opinion.
    assert not found.add(line("0817605453", "itf", "zbar/region/clahe"), doubtful=True)
    assert found.symbols == []
    assert found.add(line("0817605453", "itf", "zxing/region/sharpen"), doubtful=True)
    assert texts(found.symbols) == ["0817605453"]


def test_a_read_that_spent_all_its_error_correction_is_doubtful() -> None:
    corners = [(0.0, 0.0)] * 4
    assert _doubtful(_Read("A lotger PDF", "]L2", "pdf417", corners, spare=0.0))
    assert not _doubtful(_Read("A larger PDF", "]L2", "pdf417", corners, spare=0.37))
    assert not _doubtful(_Read("4006381333931", "]E0", "ean13", corners))  # no such count


def test_another_text_at_the_same_place_drops_a_weakly_checked_read() -> None:
    found = _Found()
    # zxing-cpp's misread across the whole frame, then zbar's other text of the same code
    # in its crop: one of the two is a misread, and nothing tells which.
    found.add(line("4785551604971", "ean13", "zxing", 99, 230))
    found.add(line("9781558604971", "ean13", "zbar/region/plain", 94, 232), second_opinion=True)
    # A doubtful read still waiting for its second strategy disputes a read as well.
    found.add(line("9780735619937", "ean13", "zxing", 400, 100))
    found.add(line("1700731619937", "ean13", "zxing/region/plain", 402, 104), doubtful=True)
    # A code 128 with zbar's other text stays with the first reader's (character sets).
    found.add(line("LM1", "code128", "zxing", 600, 400))
    found.add(line("LM1?", "code128", "zbar/region/plain", 602, 401), second_opinion=True)
    found.settle()
    assert texts(found.symbols) == ["LM1"]


def test_an_unconfirmed_weakly_checked_read_does_not_stand_for_its_region() -> None:
    region = _Region(((0.0, 0.0), (200.0, 0.0), (200.0, 60.0), (0.0, 60.0)), True, 1.0)
    found = _Found()
    found.add(line("272070088560", "itf", "zxing", 40, 29))
    assert not found.covers(region)  # its crop still gets a look
    found.add(line("272070088560", "itf", "zxing/region/plain", 40, 31))
    assert found.covers(region)
    strong = _Found()
    strong.add(line("LM12345678", "code128", "zxing", 40, 29))
    assert strong.covers(region)


def test_two_readers_or_binarizers_on_one_image_are_one_vote_in_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _image_of("zxing/thorough/region0/deblur3.5/global") == "thorough/region0/deblur3.5"
    assert _image_of("zbar/thorough/region0/deblur3.5") == "thorough/region0/deblur3.5"

    def attempts(gray: Any) -> Any:
        # An EAN-13 out of the ringing of a deblurred crop of a Code 39, read by both
        # binarizers and by zbar: one image, one vote.
        read = [
            (line("0121417114422", "ean13", f"{reader}/thorough/region0/deblur3.5"), False)
            for reader in ("zxing", "zxing", "zbar")
        ]
        read[1] = (line("0121417114422", "ean13", read[1][0].source + "/global"), False)
        yield "region 0 deblurred r3.5", lambda: read
        # A QR code that spent all its error correction needs a second image too.
        yield "zxing x1", lambda: [(line("LM-1", "qrcode", "zxing/thorough/x1", 300), True)]

    decoder = Decoder(budget_ms=None)
    monkeypatch.setattr(decoder, "_thorough_attempts", attempts)
    assert decoder.decode(np.full((240, 320), 200, dtype=np.uint8)) == []


def test_zbar_reads_no_qr_text_beyond_ascii_and_zxing_reads_it_instead() -> None:
    """zbar guesses a QR's character set; where the text is not ASCII the guess decides it
    (a glared QR of Japanese text came out as other characters). Its such reads are left
    out; zxing-cpp, which follows the symbol's ECI, reads the text."""

    def qr(text: str) -> Any:
        image = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode).to_image(scale=4)
        return np.pad(np.asarray(image), 40, constant_values=255)

    decoder = Decoder(budget_ms=None)
    assert decoder._zbar is not None
    foreign = qr("Grüße, 荷物 LM-1")
    assert [r.text for r in decoder._zbar.read(foreign)] == ["Grüße, 荷物 LM-1"]  # zbar reads it
    clock = _Budget(None, _Costs())
    assert decoder._zbar_read(foreign, clock) == []  # but its read is not taken
    assert [r.text for r in decoder._zbar_read(qr("LM-ASCII-1"), clock)] == ["LM-ASCII-1"]
    assert [s.text for s in decoder.decode(foreign)] == ["Grüße, 荷物 LM-1"]
