"""ScanFramer, byte by byte and through fault-injecting feeds; no port, no sleeping.

The clock is driven explicitly: every feed says when its bytes arrived.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.scanner import Rejected, Scan, ScanFramer, ScannerError

Frames = list[Scan | Rejected]

# Written out here rather than imported, so a wrong table in the driver cannot agree with itself.
ALLOWED = bytes(range(0x20, 0x7F)) + b"\x04\x1c\x1d\x1e\x1f"
SUFFIXES = [b"\r\n", b"\r", b"\n"]
GS, RS, EOT = "\x1d", "\x1e", "\x04"

# Real-looking payloads (PROTOCOLS.md sections 1 and 2): (AIM id, data).
S10 = ("]C0", "RR123456785NL")
UPS = ("]C0", "1Z5R89390357567127")
GS1_IMPB = ("]C1", "00157035381410375177" + GS + "42012345" + GS + "9205590164917312751089")
ISO15434 = ("]U1", "[)>" + RS + "01" + GS + "961Z12345678" + GS + "UPSN" + RS + EOT)
GS1_DM = ("]d2", "0105901234123457" + GS + "21ABC")
GS1_QR = ("]Q3", "00157035381410375177")
NO_AIM = (None, "RB123456785GB")
PAYLOADS = [S10, UPS, GS1_IMPB, ISO15434, GS1_DM, GS1_QR, NO_AIM]


def wire(aim: str | None, data: str, suffix: bytes | None = b"\r\n") -> bytes:
    return ((aim or "") + data).encode("latin-1") + (suffix or b"")


def scans(frames: Frames) -> list[tuple[str | None, str]]:
    return [(f.aim, f.data) for f in frames if isinstance(f, Scan)]


def rejections(frames: Frames) -> list[str]:
    return [f.reason for f in frames if isinstance(f, Rejected)]


# Fault-injecting feeds: each turns a byte stream into the chunks a port might deliver.
def whole(stream: bytes) -> list[bytes]:
    return [stream]


def one_byte_at_a_time(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def random_splits(seed: int) -> Callable[[bytes], list[bytes]]:
    def split(stream: bytes) -> list[bytes]:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, 12)))
        return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    return split


SPLITTERS = {
    "whole": whole,
    "bytewise": one_byte_at_a_time,
    "random-1": random_splits(1),
    "random-2": random_splits(2),
    "random-3": random_splits(3),
}


def feed_chunks(framer: ScanFramer, chunks: list[bytes], t0: float = 100.0) -> Frames:
    """Feed chunks 1 ms apart: well inside any silence or stale timeout."""
    out: Frames = []
    for i, chunk in enumerate(chunks):
        out += framer.feed(chunk, t0 + i * 0.001)
    return out


@pytest.mark.parametrize("split", SPLITTERS.values(), ids=SPLITTERS.keys())
@pytest.mark.parametrize("suffix", SUFFIXES, ids=["crlf", "cr", "lf"])
def test_every_suffix_and_split_yields_the_scans_in_order(
    suffix: bytes, split: Callable[[bytes], list[bytes]]
) -> None:
    framer = ScanFramer(suffix)
    stream = b"".join(wire(aim, data, suffix) for aim, data in PAYLOADS)
    out = feed_chunks(framer, split(stream))
    assert out == [f for f in out if isinstance(f, Scan)], rejections(out)
    assert scans(out) == PAYLOADS
    assert framer.deadline() is None  # nothing left open


def test_scan_fields() -> None:
    framer = ScanFramer()
    [scan] = framer.feed(wire(*GS1_IMPB), now=12.5)
    assert scan == Scan(data=GS1_IMPB[1], aim="]C1", raw=wire(*GS1_IMPB, suffix=None), at=12.5)


def test_control_bytes_inside_data_are_preserved_untouched() -> None:
    out = ScanFramer().feed(wire(*ISO15434) + wire(*GS1_IMPB), now=1.0)
    [envelope, gs1] = out
    assert isinstance(envelope, Scan) and isinstance(gs1, Scan)
    assert envelope.data.startswith("[)>\x1e01\x1d") and envelope.data.endswith("\x1e\x04")
    assert gs1.data.split(GS) == ["00157035381410375177", "42012345", "9205590164917312751089"]


@pytest.mark.parametrize(
    ("payload", "aim", "data"),
    [
        (b"]C0RR123456785NL", "]C0", "RR123456785NL"),
        (b"]C1" + b"00157035381410375177", "]C1", "00157035381410375177"),
        (b"]d2" + b"0105901234123457", "]d2", "0105901234123457"),
        (b"]Q3ABC", "]Q3", "ABC"),
        (b"]E05901234123457", "]E0", "5901234123457"),
        (b"RR123456785NL", None, "RR123456785NL"),
        (b"]C", None, "]C"),  # too short to be an AIM id
        (b"]5AB", None, "]5AB"),  # code letter must be a letter
        (b"]C\x1dAB", None, "]C\x1dAB"),  # modifier must be a character, not a separator
        (b"A]C0B", None, "A]C0B"),  # only at the front
    ],
)
def test_aim_identifier_is_parsed_off_the_front_only(
    payload: bytes, aim: str | None, data: str
) -> None:
    [scan] = ScanFramer().feed(payload + b"\r\n", now=1.0)
    assert isinstance(scan, Scan)
    assert (scan.aim, scan.data, scan.raw) == (aim, data, payload)


def test_aim_id_alone_is_rejected() -> None:
    assert rejections(ScanFramer().feed(b"]C0\r\n", now=1.0)) == ["AIM id ]C0 with no data"]


def test_suffix_split_mid_crlf_across_feeds() -> None:
    framer = ScanFramer(b"\r\n")
    assert framer.feed(b"]C0RR123456785NL\r", now=1.0) == []
    out = framer.feed(b"\n]C0AB", now=1.001)
    assert scans(out) == [S10]
    assert scans(framer.feed(b"C\r\n", now=1.002)) == [("]C0", "ABC")]


def test_lone_cr_does_not_end_a_crlf_frame_and_spoils_it() -> None:
    framer = ScanFramer(b"\r\n")
    out = framer.feed(b"]C0AB\rCD\r\n" + wire(*S10), now=1.0)
    # Neither "AB" nor "CD" may come out as a scan: both would be truncated barcodes.
    assert rejections(out) == ["non-printable byte 0x0d in frame"]
    assert out[0].raw == b"]C0AB\rCD"
    assert scans(out) == [S10]


@pytest.mark.parametrize("bad", [0x00, 0x07, 0x0A, 0x1B, 0x7F, 0x81, 0xFF])
def test_non_allowed_byte_rejects_the_frame_and_is_logged(
    bad: int, caplog: pytest.LogCaptureFixture
) -> None:
    framer = ScanFramer(b"\r\n")
    with caplog.at_level(logging.WARNING, logger="drivers.scanner"):
        out = framer.feed(b"]C0RR1234" + bytes([bad]) + b"56785NL\r\n", now=1.0)
    reason = f"non-printable byte 0x{bad:02x} in frame"
    assert rejections(out) == [reason]
    assert any(reason in r.getMessage() and r.name == "drivers.scanner" for r in caplog.records)


def test_empty_frame_is_rejected() -> None:
    out = ScanFramer(b"\r\n").feed(b"\r\n" + wire(*S10), now=1.0)
    assert rejections(out) == ["empty frame"]
    assert scans(out) == [S10]


@pytest.mark.parametrize("suffix", SUFFIXES, ids=["crlf", "cr", "lf"])
def test_noise_then_terminator_is_rejected_and_the_next_frame_survives(suffix: bytes) -> None:
    rng = random.Random(42)
    noise = bytes(rng.choice(range(0x80, 0x100)) for _ in range(40))
    framer = ScanFramer(suffix)
    out = feed_chunks(framer, one_byte_at_a_time(noise + suffix + wire(*UPS, suffix=suffix)))
    assert rejections(out) == [f"non-printable byte 0x{noise[0]:02x} in frame"]
    assert scans(out) == [UPS]


def test_noise_then_pause_is_rejected_as_never_ended_and_the_next_frame_survives() -> None:
    framer = ScanFramer(b"\r\n", stale_s=1.0)
    assert framer.feed(b"\x81\x00\xfe", now=10.0) == []
    # No poll in between: the next bytes' arrival time alone must close the stale frame.
    out = framer.feed(wire(*S10), now=11.5)
    assert rejections(out) == ["frame never ended"]
    assert out[0].raw == b"\x81\x00\xfe"
    assert scans(out) == [S10]


def test_noise_glued_to_a_frame_rejects_the_whole_frame() -> None:
    """Without a gap or terminator there is no telling noise from data: never guess."""
    out = ScanFramer(b"\r\n").feed(b"\x81\x82" + wire(*S10) + wire(*UPS), now=1.0)
    assert rejections(out) == ["non-printable byte 0x81 in frame"]
    assert scans(out) == [UPS]


def test_partial_frame_that_never_ends_is_rejected_after_the_stale_timeout() -> None:
    framer = ScanFramer(b"\r\n", stale_s=1.0)
    assert framer.deadline() is None
    assert framer.feed(b"]C0RR1234", now=5.0) == []
    assert framer.deadline() == pytest.approx(6.0)
    assert framer.poll(5.999) == []
    [rejected] = framer.poll(6.0)
    assert rejected == Rejected(reason="frame never ended", raw=b"]C0RR1234", at=6.0)
    assert framer.deadline() is None
    assert framer.poll(100.0) == []
    assert scans(framer.feed(wire(*S10), now=100.0)) == [S10]


def test_deadline_moves_with_each_byte() -> None:
    framer = ScanFramer(None, silence_s=0.05)
    framer.feed(b"]C0", now=1.0)
    assert framer.deadline() == pytest.approx(1.05)
    framer.feed(b"A", now=1.03)
    assert framer.deadline() == pytest.approx(1.08)


class TestOverlong:
    def test_rejected_as_soon_as_it_passes_max_len_then_discarded_to_the_suffix(self) -> None:
        framer = ScanFramer(b"\r\n", max_len=16)
        out = feed_chunks(framer, one_byte_at_a_time(b"]C0" + b"9" * 14))
        assert rejections(out) == ["frame longer than 16 bytes"]
        assert out[0].raw == b"]C0" + b"9" * 14
        # The tail of the overlong frame, then a good one.
        out = feed_chunks(framer, one_byte_at_a_time(b"9" * 600 + b"\r\n" + wire(*S10)))
        assert out == [f for f in out if isinstance(f, Scan)]
        assert scans(out) == [S10]

    @pytest.mark.parametrize("suffix", SUFFIXES, ids=["crlf", "cr", "lf"])
    @pytest.mark.parametrize("split", SPLITTERS.values(), ids=SPLITTERS.keys())
    def test_exactly_max_len_is_accepted(
        self, suffix: bytes, split: Callable[[bytes], list[bytes]]
    ) -> None:
        framer = ScanFramer(suffix, max_len=16)
        out = feed_chunks(framer, split(b"]C0" + b"1234567890123" + suffix))
        assert scans(out) == [("]C0", "1234567890123")]

    def test_cr_right_after_max_len_is_not_taken_for_the_suffix_when_lf_does_not_follow(
        self,
    ) -> None:
        framer = ScanFramer(b"\r\n", max_len=4)
        out = framer.feed(b"ABCD\rX", now=1.0)
        assert rejections(out) == ["frame longer than 4 bytes"]
        assert scans(framer.feed(b"\r\n" + wire("]C0", "A"), now=1.001)) == [("]C0", "A")]

    def test_in_silence_mode_discards_until_silence(self) -> None:
        framer = ScanFramer(None, silence_s=0.05, max_len=8)
        out = feed_chunks(framer, one_byte_at_a_time(b"X" * 30))
        assert rejections(out) == ["frame longer than 8 bytes"]
        assert framer.poll(200.0) == []  # already reported: silence only resets
        assert scans(framer.feed(b"]C0ABC", now=200.0) + framer.poll(200.05)) == [("]C0", "ABC")]

    def test_stale_overlong_frame_resets_without_a_second_report(self) -> None:
        framer = ScanFramer(b"\r\n", max_len=8, stale_s=1.0)
        assert rejections(framer.feed(b"X" * 30, now=1.0)) == ["frame longer than 8 bytes"]
        out = framer.feed(wire("]C0", "AB12"), now=3.0)
        assert out == [f for f in out if isinstance(f, Scan)]
        assert scans(out) == [("]C0", "AB12")]


class TestSilenceTermination:
    def test_frame_ends_after_silence_not_before(self) -> None:
        framer = ScanFramer(None, silence_s=0.05)
        out = []
        for i, byte in enumerate(wire(*S10, suffix=None)):
            out += framer.feed(bytes([byte]), now=1.0 + i * 0.01)  # 10 ms per byte: one frame
        last = 1.0 + (len(wire(*S10, suffix=None)) - 1) * 0.01
        assert out == []
        assert framer.poll(last + 0.049) == []
        [scan] = framer.poll(last + 0.05)
        assert isinstance(scan, Scan)
        assert (scan.aim, scan.data) == S10
        assert scan.at == pytest.approx(last)  # when the last byte came, not when we noticed

    def test_next_bytes_after_a_gap_end_the_previous_frame_without_poll(self) -> None:
        framer = ScanFramer(None, silence_s=0.05)
        assert framer.feed(wire(*S10, suffix=None), now=1.0) == []
        out = framer.feed(wire(*UPS, suffix=None), now=1.2)
        assert scans(out) == [S10]
        assert scans(framer.poll(1.25)) == [UPS]

    @pytest.mark.parametrize("split", SPLITTERS.values(), ids=SPLITTERS.keys())
    def test_splits_inside_a_frame_do_not_cut_it(
        self, split: Callable[[bytes], list[bytes]]
    ) -> None:
        framer = ScanFramer(None, silence_s=0.05)
        out: Frames = []
        now = 1.0
        for aim, data in PAYLOADS:
            out += feed_chunks(framer, split(wire(aim, data, suffix=None)), t0=now)
            now += 1.0  # the courier's hand: far apart
        out += framer.poll(now)
        assert scans(out) == PAYLOADS

    def test_non_printable_byte_rejects_in_silence_mode(self) -> None:
        framer = ScanFramer(None, silence_s=0.05)
        framer.feed(b"]C0AB\r\nCD", now=1.0)
        assert rejections(framer.poll(1.1)) == ["non-printable byte 0x0d in frame"]


class TestDebounce:
    def test_held_trigger_repeats_are_dropped_while_they_keep_coming(self) -> None:
        framer = ScanFramer(debounce_s=0.3)
        out: Frames = []
        for t in [0.0, 0.15, 0.3, 0.45, 0.6, 0.75]:  # 750 ms held, a repeat every 150 ms
            out += framer.feed(wire(*S10), now=10.0 + t)
        assert scans(out) == [S10]

    def test_deliberate_second_scan_after_the_window_counts(self) -> None:
        framer = ScanFramer(debounce_s=0.3)
        first = framer.feed(wire(*S10), now=10.0)
        assert scans(framer.feed(wire(*S10), now=10.29)) == []
        assert scans(framer.feed(wire(*S10), now=10.6)) == [S10]
        assert [s.at for s in first] == [10.0]

    def test_a_different_code_in_between_is_not_a_repeat(self) -> None:
        framer = ScanFramer(debounce_s=0.3)
        out = framer.feed(wire(*S10) + wire(*UPS) + wire(*S10), now=10.0)
        assert scans(out) == [S10, UPS, S10]

    def test_same_data_with_another_aim_is_not_a_repeat(self) -> None:
        framer = ScanFramer(debounce_s=0.3)
        out = framer.feed(wire("]C0", "123") + wire("]Q1", "123"), now=10.0)
        assert scans(out) == [("]C0", "123"), ("]Q1", "123")]

    def test_zero_disables_debounce(self) -> None:
        framer = ScanFramer(debounce_s=0.0)
        assert len(scans(framer.feed(wire(*S10) * 3, now=10.0))) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"suffix": b""},
        {"suffix": b"#"},  # a data byte would end scans inside their data
        {"suffix": b"\r\x1d"},
        {"max_len": 0},
        {"silence_s": 0.0},
        {"stale_s": -1.0},
        {"debounce_s": -0.1},
    ],
)
def test_unworkable_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ScannerError):
        ScanFramer(**kwargs)  # type: ignore[arg-type]


# ---- property-based -------------------------------------------------------------------------

AIMS = [None, "]C0", "]C1", "]E0", "]d2", "]Q3", "]U1", "]z0"]
data_text = st.text(alphabet=ALLOWED.decode("ascii"), min_size=1, max_size=40)


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[str | None, str]:
    aim = draw(st.sampled_from(AIMS))
    data = draw(data_text)
    if aim is None and data.startswith("]"):
        data = "X" + data  # keep data that merely looks like an AIM id out of the no-AIM case
    return aim, data


def cut(stream: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        yield stream[a:b]


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(valid_frames(), max_size=12),
    suffix=st.sampled_from(SUFFIXES),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=40),
)
def test_any_valid_frames_any_split_yield_exactly_those_scans(
    frames: list[tuple[str | None, str]], suffix: bytes, cuts: list[int]
) -> None:
    framer = ScanFramer(suffix, debounce_s=0.0)
    stream = b"".join(wire(aim, data, suffix) for aim, data in frames)
    out = feed_chunks(framer, list(cut(stream, cuts)))
    assert out == [f for f in out if isinstance(f, Scan)]
    assert scans(out) == frames
    assert [s.raw for s in out if isinstance(s, Scan)] == [wire(a, d, None) for a, d in frames]


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(valid_frames(), min_size=1, max_size=8),
    data=st.data(),
)
def test_any_valid_frames_any_split_in_silence_mode(
    frames: list[tuple[str | None, str]], data: st.DataObject
) -> None:
    framer = ScanFramer(None, silence_s=0.05, debounce_s=0.0)
    out: Frames = []
    now = 0.0
    for aim, text in frames:
        stream = wire(aim, text, None)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
        for chunk in cut(stream, cuts):
            out += framer.feed(chunk, now)
            now += data.draw(st.floats(0.0, 0.049))  # any gap shorter than the silence
        now += 0.05 + data.draw(st.floats(0.0, 2.0))
    out += framer.poll(now)
    assert scans(out) == frames


noise_byte = st.integers(0, 255).filter(lambda b: b not in ALLOWED and b not in b"\r\n")


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            valid_frames().map(lambda f: ("frame", f)),
            st.lists(noise_byte, min_size=1, max_size=30).map(lambda b: ("noise", bytes(b))),
        ),
        max_size=12,
    ),
    suffix=st.sampled_from(SUFFIXES),
    cuts=st.lists(st.integers(min_value=0, max_value=900), max_size=40),
)
def test_noise_closed_by_a_terminator_never_costs_a_good_frame(
    items: list[tuple[str, object]], suffix: bytes, cuts: list[int]
) -> None:
    framer = ScanFramer(suffix, debounce_s=0.0)
    stream = b""
    expected = []
    for kind, item in items:
        if kind == "frame":
            assert isinstance(item, tuple)
            aim, data = item
            stream += wire(aim, data, suffix)
            expected.append((aim, data))
        else:
            assert isinstance(item, bytes)
            stream += item + suffix
    out = feed_chunks(framer, list(cut(stream, cuts)))
    assert scans(out) == expected
    assert len(rejections(out)) == sum(kind == "noise" for kind, _ in items)


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.binary(max_size=600),
    suffix=st.sampled_from([*SUFFIXES, None]),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=30),
    gaps=st.lists(st.floats(0.0, 1.5), min_size=31, max_size=31),
)
def test_garbage_never_yields_a_scan_with_bytes_outside_the_alphabet(
    garbage: bytes, suffix: bytes | None, cuts: list[int], gaps: list[float]
) -> None:
    framer = ScanFramer(suffix, max_len=64, silence_s=0.05, stale_s=1.0)
    out: Frames = []
    now = 0.0
    for chunk, gap in zip(cut(garbage, cuts), gaps, strict=False):
        now += gap
        out += framer.feed(chunk, now)
    out += framer.poll(now + 10.0)
    assert framer.deadline() is None
    for frame in out:
        if isinstance(frame, Scan):
            assert frame.raw and all(b in ALLOWED for b in frame.raw)
            assert len(frame.raw) <= 64
            assert (frame.aim or "") + frame.data == frame.raw.decode("latin-1")
