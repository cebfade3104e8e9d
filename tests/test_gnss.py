"""GNSS: the NMEA parser, framer and epoch assembly without a port, then GnssReader against
SimulatedGnss over real pseudo-terminals.

Checksums in this file are computed by the test's own `nmea()` (or are the published golden
values), never by the driver, so a wrong checksum routine cannot agree with itself. Waits
are bounded: on the reader's or simulator's conditions, or `eventually()` with a deadline.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DriverError
from drivers.gnss import (
    IDLE_READ_S,
    UERE_M,
    BadNmeaChecksum,
    BadSentence,
    Fix,
    FixAssembler,
    Gga,
    GnssError,
    GnssReader,
    IgnoredSentence,
    NmeaFramer,
    RejectedLine,
    Rmc,
    Sentence,
    parse_sentence,
)
from parcel.geo import distance_m
from simulators.errors import SimulatorError
from simulators.gnss import SimulatedGnss, WrittenSentence
from sync.clock import ScaledClock

WAIT_S = 3.0  # upper bound for anything to happen; a passing run takes milliseconds
KNOT = 1852 / 3600

# The classic examples, with their published checksums.
GOLDEN_RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GOLDEN_GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
MUNICH = (48 + 7.038 / 60, 11 + 31.0 / 60)


def nmea(body: str) -> bytes:
    """A sentence with a checksum computed here, independently of the driver."""
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def rmc(t: str = "123519.00", status: str = "A", pos: str = "4807.038,N,01131.000,E") -> bytes:
    return nmea(f"GNRMC,{t},{status},{pos},0.5,45.0,230394,,,{'A' if status == 'A' else 'N'}")


def gga(t: str = "123519.00", quality: int = 1, pos: str = "4807.038,N,01131.000,E") -> bytes:
    return nmea(f"GNGGA,{t},{pos},{quality},08,0.9,545.4,M,46.9,M,,")


def eventually(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` with short sleeps until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# ---- one sentence ------------------------------------------------------------------------------


def test_golden_sentences_have_the_published_checksums() -> None:
    assert nmea(GOLDEN_RMC[1:-3]).decode().strip() == GOLDEN_RMC
    assert nmea(GOLDEN_GGA[1:-3]).decode().strip() == GOLDEN_GGA


def test_golden_rmc() -> None:
    s = parse_sentence(GOLDEN_RMC)
    assert isinstance(s, Rmc)
    assert (s.talker, s.utc_time, s.date) == ("GP", dt.time(12, 35, 19), dt.date(1994, 3, 23))
    assert s.valid and s.has_fix
    assert s.lat == pytest.approx(MUNICH[0]) and s.lon == pytest.approx(MUNICH[1])
    assert (s.speed_knots, s.course_deg, s.mode) == (22.4, 84.4, None)


def test_golden_gga_as_bytes_with_crlf() -> None:
    s = parse_sentence(GOLDEN_GGA.encode() + b"\r\n")
    assert isinstance(s, Gga)
    assert (s.talker, s.utc_time, s.quality, s.satellites) == ("GP", dt.time(12, 35, 19), 1, 8)
    assert (s.hdop, s.altitude_m) == (0.9, 545.4)
    assert s.lat == pytest.approx(MUNICH[0]) and s.lon == pytest.approx(MUNICH[1])
    assert s.has_fix


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA"])
def test_position_talkers(talker: str) -> None:
    s = parse_sentence(
        nmea(f"{talker}RMC,092725.25,A,4717.11399,N,00833.91590,E,0.004,,080125,,,D")
    )
    assert isinstance(s, Rmc) and s.talker == talker
    assert s.utc_time == dt.time(9, 27, 25, 250_000)
    assert s.lat == pytest.approx(47 + 17.11399 / 60)
    assert s.lon == pytest.approx(8 + 33.91590 / 60)
    assert s.course_deg is None and s.date == dt.date(2025, 1, 8) and s.has_fix


def test_lowercase_checksum_digits_are_accepted() -> None:
    line = GOLDEN_RMC[:-2] + "6a"
    assert isinstance(parse_sentence(line), Rmc)


def test_southern_and_western_hemispheres() -> None:
    s = parse_sentence(gga(pos="3351.1234,S,15112.4560,W"))
    assert isinstance(s, Gga)
    assert s.lat == pytest.approx(-(33 + 51.1234 / 60))
    assert s.lon == pytest.approx(-(151 + 12.456 / 60))


def test_bad_checksum_is_a_typed_driver_error() -> None:
    bad = GOLDEN_RMC.replace("4807.038", "4807.039")
    with pytest.raises(BadNmeaChecksum) as caught:
        parse_sentence(bad)
    assert isinstance(caught.value, BadSentence) and isinstance(caught.value, DriverError)
    assert "computed" in caught.value.reason
    assert caught.value.raw == bad.encode()


@pytest.mark.parametrize(
    "line",
    [GOLDEN_RMC[:-3], GOLDEN_RMC[:-1], GOLDEN_RMC[:-2] + "G1", GOLDEN_RMC + "0"],
    ids=["missing", "one-digit", "not-hex", "three-digits"],
)
def test_missing_or_misshapen_checksum(line: str) -> None:
    with pytest.raises(BadNmeaChecksum):
        parse_sentence(line)


def test_status_v_is_no_fix_even_with_coordinates() -> None:
    s = parse_sentence(rmc(status="V"))
    assert isinstance(s, Rmc)
    assert not s.valid and not s.has_fix


def test_rmc_mode_n_is_no_fix_even_with_status_a() -> None:
    s = parse_sentence(nmea("GNRMC,123519.00,A,4807.038,N,01131.000,E,0.5,45.0,230394,,,N"))
    assert isinstance(s, Rmc) and not s.has_fix


@pytest.mark.parametrize("quality", [0, 6, 7, 8])
def test_gga_quality_that_is_not_a_measurement_is_no_fix(quality: int) -> None:
    s = parse_sentence(gga(quality=quality))
    assert isinstance(s, Gga) and s.quality == quality and not s.has_fix


def test_empty_fields_as_receivers_send_them_without_a_fix() -> None:
    r = parse_sentence(nmea("GNRMC,,V,,,,,,,,,,N"))
    g = parse_sentence(nmea("GNGGA,092725.00,,,,,0,00,99.99,,,,,,"))
    assert isinstance(r, Rmc) and isinstance(g, Gga)
    assert (r.utc_time, r.lat, r.lon, r.speed_knots, r.date) == (None, None, None, None, None)
    assert (g.lat, g.lon, g.quality, g.satellites, g.altitude_m) == (None, None, 0, 0, None)
    assert not r.has_fix and not g.has_fix


def test_status_a_without_coordinates_is_no_fix() -> None:
    s = parse_sentence(rmc(pos=",,,"))
    assert isinstance(s, Rmc) and s.valid and not s.has_fix


@pytest.mark.parametrize(
    "line",
    [
        "$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74",
        "$PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52,0.007,,"
        "0.92,1.19,0.77,9,0,0*5F",
        "$BDRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*7C",
    ],
    ids=["gsv", "proprietary", "other-talker"],
)
def test_other_sentences_are_valid_but_ignored(line: str) -> None:
    body = line[1 : line.rindex("*")]
    s = parse_sentence(nmea(body))  # re-checksummed here: only the kind matters
    assert isinstance(s, IgnoredSentence)
    assert (s.talker, s.kind) == {
        "GPGSV": ("GP", "GSV"),
        "PUBX,": ("P", "UBX"),
        "BDRMC": ("BD", "RMC"),
    }[body[:5]]


@pytest.mark.parametrize(
    "body",
    [
        "GNRMC,123519,X,4807.038,N,01131.000,E,0.5,45.0,230394,,",  # status neither A nor V
        "GNRMC,123519,A,4807.038,,01131.000,E,0.5,45.0,230394,,",  # hemisphere missing
        "GNRMC,123519,A,4867.038,N,01131.000,E,0.5,45.0,230394,,",  # 67 minutes
        "GNRMC,123519,A,48.07038,N,01131.000,E,0.5,45.0,230394,,",  # not ddmm.mmmm
        "GNRMC,123519,A,4807.038,N,01131.000,E,fast,45.0,230394,,",  # speed not a number
        "GNRMC,126019,A,4807.038,N,01131.000,E,0.5,45.0,230394,,",  # 60 minutes past
        "GNRMC,123519,A,4807.038,N,01131.000,E,0.5,45.0,310294,,",  # 31 February
        "GNRMC,123519,A,4807.038,N",  # too few fields
        "GNGGA,123519,4807.038,N,01131.000,E,,08,0.9,545.4,M,46.9,M,,",  # no fix quality
        "GNGGA,123519,4807.038,N,18131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # 181 degrees
        "gnrmc,123519,A,4807.038,N,01131.000,E,0.5,45.0,230394,,",  # bad address
    ],
)
def test_malformed_fields_are_bad_sentences_not_checksum_errors(body: str) -> None:
    with pytest.raises(BadSentence) as caught:
        parse_sentence(nmea(body))
    assert not isinstance(caught.value, BadNmeaChecksum)


def test_not_starting_with_dollar() -> None:
    with pytest.raises(BadSentence):
        parse_sentence(GOLDEN_RMC[1:])


# ---- the byte stream ---------------------------------------------------------------------------

Items = list[Sentence | RejectedLine]


def sentences(items: Items) -> list[Sentence]:
    return [i for i in items if not isinstance(i, RejectedLine)]


def rejects(items: Items) -> list[tuple[str, bytes]]:
    return [(i.kind, i.raw) for i in items if isinstance(i, RejectedLine)]


def feed_in(framer: NmeaFramer, stream: bytes, split: str, seed: int = 0) -> Items:
    if split == "whole":
        chunks = [stream]
    elif split == "bytewise":
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, 15)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out: Items = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


SPLITS = ["whole", "bytewise", "random"]


@pytest.mark.parametrize("split", SPLITS)
def test_framer_yields_each_sentence_however_the_bytes_arrive(split: str) -> None:
    stream = GOLDEN_RMC.encode() + b"\r\n" + GOLDEN_GGA.encode() + b"\r\n" + rmc() + gga()
    items = feed_in(NmeaFramer(), stream, split, seed=3)
    assert rejects(items) == []
    assert [type(s) for s in items] == [Rmc, Gga, Rmc, Gga]
    assert items[0] == parse_sentence(GOLDEN_RMC)


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n", b"\n\r", b"\r\n\r\n"])
def test_any_line_ending_ends_a_sentence_and_blank_lines_are_nothing(ending: bytes) -> None:
    stream = GOLDEN_RMC.encode() + ending + GOLDEN_GGA.encode() + ending
    items = NmeaFramer().feed(stream)
    assert [type(i) for i in items] == [Rmc, Gga]


@pytest.mark.parametrize("split", SPLITS)
def test_garbage_before_a_sentence_is_rejected_and_the_sentence_survives(split: str) -> None:
    noise = b"\x00\xff\x13garbage\xfe"
    items = feed_in(NmeaFramer(), noise + rmc() + b"junk\r\n" + gga(), split, seed=5)
    assert rejects(items) == [("garbage", noise), ("garbage", b"junk")]
    assert [type(s) for s in sentences(items)] == [Rmc, Gga]


@pytest.mark.parametrize("split", SPLITS)
def test_a_sentence_cut_by_the_next_dollar_is_rejected_and_the_next_resyncs(split: str) -> None:
    cut = rmc()[:30]
    items = feed_in(NmeaFramer(), cut + gga(), split, seed=7)
    assert rejects(items) == [("garbage", cut)]
    assert [type(s) for s in sentences(items)] == [Gga]


@pytest.mark.parametrize("split", SPLITS)
def test_overlong_line_is_rejected_once_then_skipped_to_its_end(split: str) -> None:
    long_line = nmea("GPXXX," + "9" * 200)
    items = feed_in(NmeaFramer(max_line=100), long_line + rmc(), split, seed=11)
    kinds = [kind for kind, _ in rejects(items)]
    assert kinds == ["overlong"]
    assert [type(s) for s in sentences(items)] == [Rmc]


def test_endless_noise_is_reported_in_bounded_pieces() -> None:
    framer = NmeaFramer(max_line=100)
    items = framer.feed(b"\x01" * 1000)
    assert [kind for kind, _ in rejects(items)] == ["garbage"] * 9
    assert all(len(raw) == 101 for _, raw in rejects(items))
    assert sentences(framer.feed(b"\r\n" + rmc()))


def test_checksum_and_field_failures_are_told_apart() -> None:
    bad_sum = GOLDEN_RMC[:-2].encode() + b"00\r\n"
    bad_field = nmea("GNRMC,123519,X,4807.038,N,01131.000,E,0.5,45.0,230394,,")
    items = NmeaFramer().feed(bad_sum + bad_field + rmc())
    assert [kind for kind, _ in rejects(items)] == ["checksum", "malformed"]
    assert len(sentences(items)) == 1


def test_drop_partial_forgets_a_half_line() -> None:
    framer = NmeaFramer()
    assert framer.feed(rmc()[:40]) == []
    framer.drop_partial()
    assert framer.feed(rmc()[40:]) == [
        RejectedLine("garbage", "bytes outside a sentence", rmc()[40:-2])
    ]


@settings(max_examples=150, deadline=None)
@given(noise=st.binary(max_size=400), split_seed=st.integers(0, 1000))
def test_framer_never_raises_and_recovers_after_any_noise(noise: bytes, split_seed: int) -> None:
    framer = NmeaFramer()
    feed_in(framer, noise + b"\r\n" if noise else b"\r\n", "random", seed=split_seed)
    assert sentences(framer.feed(rmc() + gga())) == [parse_sentence(rmc()), parse_sentence(gga())]


# ---- one epoch ---------------------------------------------------------------------------------


def parsed_rmc(**kwargs: str) -> Rmc:
    s = parse_sentence(rmc(**kwargs))
    assert isinstance(s, Rmc)
    return s


def parsed_gga(t: str = "123519.00", quality: int = 1, pos: str = "4807.038,N,01131.000,E") -> Gga:
    s = parse_sentence(gga(t, quality, pos))
    assert isinstance(s, Gga)
    return s


def test_rmc_and_gga_of_one_epoch_make_one_fix() -> None:
    a = FixAssembler()
    assert a.add(parsed_rmc(), 10.0) == []
    assert a.latest is not None and a.latest.satellites is None  # RMC alone so far
    (fix,) = a.add(parsed_gga(), 10.01)
    assert fix == a.latest
    assert fix.lat == pytest.approx(MUNICH[0]) and fix.lon == pytest.approx(MUNICH[1])
    assert fix.accuracy_m == pytest.approx(0.9 * UERE_M)
    assert (fix.satellites, fix.quality, fix.hdop, fix.altitude_m) == (8, 1, 0.9, 545.4)
    assert fix.utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC)
    assert fix.speed_mps == pytest.approx(0.5 * KNOT)
    assert (fix.course_deg, fix.received_at) == (45.0, 10.01)
    assert (a.fix_epochs, a.no_fix_epochs) == (1, 0)


def test_a_new_epoch_never_inherits_the_previous_epochs_fields() -> None:
    a = FixAssembler()
    a.add(parsed_gga("120000.00"), 1.0)
    a.add(parsed_rmc(t="120000.00"), 1.0)
    a.add(parsed_rmc(t="120001.00", pos="4807.100,N,01131.000,E"), 2.0)
    assert a.latest is not None
    assert a.latest.lat == pytest.approx(48 + 7.1 / 60)
    assert (a.latest.satellites, a.latest.hdop, a.latest.accuracy_m) == (None, None, None)


@pytest.mark.parametrize("order", ["rmc-first", "gga-first"])
@pytest.mark.parametrize("which", ["rmc-V", "gga-0"])
def test_any_no_fix_sentence_in_the_epoch_withdraws_the_position(order: str, which: str) -> None:
    a = FixAssembler()
    a.add(parsed_rmc(t="120000.00"), 1.0)
    a.add(parsed_gga("120000.00"), 1.0)
    assert a.latest is not None
    r = parsed_rmc(t="120001.00", status="V" if which == "rmc-V" else "A")
    g = parsed_gga("120001.00", quality=0 if which == "gga-0" else 1)
    first, second = (r, g) if order == "rmc-first" else (g, r)
    a.add(first, 2.0)
    a.add(second, 2.0)
    assert a.latest is None
    assert (a.fix_epochs, a.no_fix_epochs) == (1, 1)


def test_sentences_with_different_times_are_different_epochs() -> None:
    a = FixAssembler()
    a.add(parsed_rmc(t="120000.00"), 1.0)
    settled = a.add(parsed_gga("120001.00", pos="4807.100,N,01131.000,E"), 2.0)
    assert len(settled) == 1 and settled[0].satellites is None  # the RMC-only epoch
    assert a.latest is not None and a.latest.utc is None  # GGA-only: no date
    assert a.latest.lat == pytest.approx(48 + 7.1 / 60)


def test_rmc_only_receiver_announces_each_epoch_when_the_next_begins() -> None:
    a = FixAssembler()
    assert a.add(parsed_rmc(t="120000.00"), 1.0) == []
    assert len(a.add(parsed_rmc(t="120001.00"), 2.0)) == 1
    assert len(a.close()) == 1
    assert a.close() == []
    assert a.fix_epochs == 2


def test_time_less_no_fix_sentences_are_one_epoch_each() -> None:
    a = FixAssembler()
    for _ in range(3):
        a.add(parsed_rmc(t="", status="V", pos=",,,"), 1.0)
    a.close()
    assert a.no_fix_epochs == 3 and a.latest is None


def test_distance_m() -> None:
    assert distance_m(*MUNICH, *MUNICH) == 0.0
    one_degree = distance_m(0.0, 0.0, 1.0, 0.0)
    assert one_degree == pytest.approx(math.pi / 180 * 6_371_008.8)
    assert distance_m(0.0, 179.9, 0.0, -179.9) == pytest.approx(0.2 * one_degree)
    # Nashville BNA to Los Angeles LAX: 2887.260 km with R = 6372.8 km (Rosetta Code).
    d = distance_m(36.12, -86.67, 33.94, -118.40)
    assert d == pytest.approx(2_887_259.95 * 6_371_008.8 / 6_372_800, rel=1e-6)
    assert d == pytest.approx(distance_m(33.94, -118.40, 36.12, -86.67))


# ---- over a pseudo-terminal --------------------------------------------------------------------

START_NS = 1_750_000_000 * 10**9  # a whole second, 2025-06-15


class ManualClock:
    """A Clock the test moves by hand, so positions along a route are exact."""

    boot_id = "manual"

    def __init__(self) -> None:
        self._ns = 0

    def advance(self, seconds: float) -> None:
        self._ns += round(seconds * 1e9)

    def monotonic_ns(self) -> int:
        return self._ns

    def wall_ns(self) -> int:
        return START_NS + self._ns

    def wall_synced(self) -> bool:
        return True


class Inbox:
    def __init__(self) -> None:
        self.fixes: queue.Queue[Fix] = queue.Queue()
        self.links: queue.Queue[bool] = queue.Queue()

    def link(self) -> bool:
        return self.links.get(timeout=WAIT_S)


def make_reader(path: str, inbox: Inbox, **kwargs: float) -> GnssReader:
    return GnssReader(
        path,
        on_fix=inbox.fixes.put,
        on_connection=inbox.links.put,
        stale_after_s=kwargs.pop("stale_after_s", 30.0),
        reconnect_min_s=kwargs.pop("reconnect_min_s", 0.02),
        reconnect_max_s=kwargs.pop("reconnect_max_s", 0.1),
    )


def fast_clock() -> ScaledClock:
    return ScaledClock(wall_start_ns=START_NS, speed=100.0, boot_id="test")


@pytest.fixture
def by_id(tmp_path: Path) -> Path:
    return tmp_path / "usb-u-blox_GNSS_receiver-if00"


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def sim(by_id: Path) -> Iterator[SimulatedGnss]:
    with SimulatedGnss(by_id, clock=fast_clock(), max_real_rate_hz=50.0) as gnss:
        yield gnss


@pytest.fixture
def reader(sim: SimulatedGnss, inbox: Inbox) -> Iterator[GnssReader]:
    with make_reader(sim.path, inbox) as running:
        assert inbox.link() is True
        assert running.wait_for_fix(WAIT_S) is not None
        yield running


def fix_near(
    reader: GnssReader, lat: float, lon: float, within_m: float = 0.05
) -> Callable[[], bool]:
    def check() -> bool:
        fix = reader.current()
        return fix is not None and distance_m(fix.lat, fix.lon, lat, lon) <= within_m

    return check


def test_reader_gets_fixes_matching_what_the_simulator_wrote(
    sim: SimulatedGnss, reader: GnssReader, inbox: Inbox
) -> None:
    fix = inbox.fixes.get(timeout=WAIT_S)
    if fix.speed_mps is None:
        # The port opened between an epoch's RMC and its GGA: that epoch arrives GGA-only.
        # The next one is whole.
        fix = inbox.fixes.get(timeout=WAIT_S)
    lat, lon = sim.position()
    assert distance_m(fix.lat, fix.lon, lat, lon) < 0.05  # 1e-5 minutes is 1.9 cm
    assert fix.accuracy_m == pytest.approx(0.9 * UERE_M)
    assert (fix.quality, fix.satellites, fix.speed_mps, fix.course_deg) == (1, 10, 0.0, None)
    written = [w for w in sim.history if w.kind == "RMC" and w.utc == fix.utc]
    assert len(written) == 1 and written[0].fix
    assert fix.utc is not None and fix.utc.microsecond == 0  # epochs sit on whole seconds
    assert reader.connected
    counters = reader.counters
    assert counters.fix_epochs >= 1 and counters.bad_checksums == 0 and counters.malformed == 0


def test_tunnel_withdraws_the_fix_and_old_coordinates_never_come_back(
    sim: SimulatedGnss, reader: GnssReader
) -> None:
    # stale_after_s is 30 s here: only the receiver's "no fix" can make current() None.
    before = reader.counters.no_fix_epochs
    sim.tunnel(True)
    eventually(lambda: reader.current() is None, "the tunnel to withdraw the fix")
    eventually(lambda: reader.counters.no_fix_epochs > before, "a no-fix epoch to be counted")
    sim.move_to(48.1, 11.5)  # driven through the tunnel
    assert sim.wait_until(lambda: any(not w.fix and w.lat == 48.1 for w in sim.history), WAIT_S)
    assert reader.current() is None
    sim.tunnel(False)
    fix = reader.wait_for_fix(WAIT_S)
    assert fix is not None
    assert distance_m(fix.lat, fix.lon, 48.1, 11.5) < 0.05
    no_fix = [w for w in sim.history if not w.fix]
    assert no_fix and all(b",V," in w.data or b",0,00," in w.data for w in no_fix)


def test_lose_and_regain_fix_are_the_tunnel(sim: SimulatedGnss, reader: GnssReader) -> None:
    sim.lose_fix()
    eventually(lambda: reader.current() is None, "lose_fix to withdraw the fix")
    sim.regain_fix()
    assert reader.wait_for_fix(WAIT_S) is not None


def test_corrupted_sentences_are_counted_and_skipped(
    sim: SimulatedGnss, reader: GnssReader
) -> None:
    before = reader.counters
    sim.corrupt_next(3)
    eventually(lambda: reader.counters.bad_checksums == before.bad_checksums + 3, "3 bad sums")
    # Barrier: two more whole epochs after the corrupted ones, then nothing else went wrong.
    corrupted = [w for w in sim.history if w.corrupted]
    assert len(corrupted) == 3
    last_bad = corrupted[-1].utc
    assert last_bad is not None
    assert sim.wait_until(
        lambda: sum(1 for w in sim.history if w.utc and w.utc > last_bad and w.fix) >= 4, WAIT_S
    )
    eventually(lambda: reader.counters.fix_epochs >= before.fix_epochs + 2, "fixes after")
    after = reader.counters
    assert after.bad_checksums == before.bad_checksums + 3
    assert (after.garbage, after.malformed) == (before.garbage, before.malformed)
    assert reader.current() is not None


def test_line_noise_is_counted_as_garbage(sim: SimulatedGnss, reader: GnssReader) -> None:
    before = reader.counters.garbage
    sim.write_raw(b"\x00\xff\x13noise\r\n")
    eventually(lambda: reader.counters.garbage == before + 1, "the noise to be counted")
    assert reader.wait_for_fix(WAIT_S) is not None


def test_random_corruption_is_seeded_and_every_corrupted_sentence_fails_its_checksum(
    by_id: Path,
) -> None:
    def flags(seed: int) -> list[bool]:
        with SimulatedGnss(
            by_id, clock=fast_clock(), corrupt_share=0.3, seed=seed, max_real_rate_hz=100.0
        ) as g:
            assert g.wait_until(lambda: len(g.history) >= 20, WAIT_S)
            history = g.history[:20]
        for w in history:
            if w.corrupted:
                with pytest.raises(BadNmeaChecksum):
                    parse_sentence(w.data)
            else:
                parse_sentence(w.data)
            assert w.data.count(b"$") == 1 and w.data.endswith(b"\r\n")
        return [w.corrupted for w in history]

    first = flags(7)
    assert first == flags(7)
    assert 0 < sum(first) < 20


def test_unplug_and_replug_recovers_without_restarting_the_reader(
    sim: SimulatedGnss, inbox: Inbox, by_id: Path
) -> None:
    with make_reader(sim.path, inbox, stale_after_s=0.2) as reader:
        assert inbox.link() is True
        assert reader.wait_for_fix(WAIT_S) is not None
        threads = threading.active_count()
        old_device = sim.device
        sim.unplug()
        assert inbox.link() is False
        assert not by_id.exists() and not os.path.exists(old_device)
        eventually(lambda: reader.current() is None, "the fix to go stale while unplugged")
        assert reader.current(max_age_s=60.0) is not None  # still known, just old
        sim.move_to(51.5, -0.1)
        sim.replug()
        assert inbox.link() is True
        eventually(fix_near(reader, 51.5, -0.1), "a fix at the new place after the replug")
        assert threading.active_count() == threads


def test_reader_waits_for_a_receiver_that_is_not_plugged_in_yet(by_id: Path, inbox: Inbox) -> None:
    with make_reader(str(by_id), inbox) as reader:
        assert reader.current() is None and not reader.connected
        with SimulatedGnss(by_id, clock=fast_clock(), max_real_rate_hz=50.0):
            assert inbox.link() is True
            assert reader.wait_for_fix(WAIT_S) is not None


def test_follow_interpolates_along_the_route_in_simulated_time(by_id: Path, inbox: Inbox) -> None:
    clock = ManualClock()
    a, b, c = (52.0, 4.0), (52.001, 4.0), (52.001, 4.002)  # 111 m north, then ~137 m east
    ab, bc = distance_m(*a, *b), distance_m(*b, *c)
    with (
        SimulatedGnss(by_id, clock=clock, max_real_rate_hz=200.0, position=a) as sim,
        make_reader(sim.path, inbox) as reader,
    ):
        assert inbox.link() is True
        sim.follow([a, b, c], speed_mps=10.0)

        def written_at(second: int) -> WrittenSentence:
            utc = dt.datetime.fromtimestamp(START_NS // 10**9 + second, dt.UTC)
            assert sim.wait_until(
                lambda: any(w.utc == utc and w.kind == "GGA" for w in sim.history), WAIT_S
            )
            return next(w for w in sim.history if w.utc == utc and w.kind == "GGA")

        clock.advance(5.0)  # 50 m up the first leg
        w = written_at(5)
        assert w.lat is not None and w.lon is not None
        assert distance_m(*a, w.lat, w.lon) == pytest.approx(50.0, abs=0.01)
        eventually(fix_near(reader, w.lat, w.lon), "the reader to see the 5 s position")
        fix = reader.current()
        assert fix is not None and fix.speed_mps == pytest.approx(10.0, abs=0.001)
        assert fix.course_deg == pytest.approx(0.0, abs=0.01)  # due north

        clock.advance(15.0)  # 200 m: 111 m north, then 89 m east on the second leg
        w = written_at(20)
        assert w.lat is not None and w.lon is not None
        assert distance_m(*b, w.lat, w.lon) == pytest.approx(200.0 - ab, abs=0.05)
        eventually(
            lambda: (
                (f := reader.current()) is not None
                and f.course_deg is not None
                and 89.0 < f.course_deg < 91.0
            ),
            "the course to turn east",
        )

        clock.advance(60.0)  # long past the end
        w = written_at(80)
        assert (w.lat, w.lon) == c and sim.arrived
        assert ab + bc < 800.0
        eventually(fix_near(reader, *c), "the reader to see the end of the route")
        fix = reader.current()
        assert fix is not None and fix.speed_mps == 0.0


def test_fast_clock_skips_epochs_instead_of_flooding_the_wire(by_id: Path) -> None:
    clock = ScaledClock(wall_start_ns=START_NS, speed=2400.0, boot_id="test")
    started = time.monotonic()
    with SimulatedGnss(by_id, clock=clock, max_real_rate_hz=20.0) as sim:
        assert sim.wait_until(lambda: len(sim.history) >= 10, WAIT_S)
        history = sim.history
    elapsed = time.monotonic() - started
    epochs = [w.utc for w in history if w.kind == "RMC"]
    assert all(u is not None and u.microsecond == 0 for u in epochs)  # on whole seconds
    assert all(x is not None and y is not None and x < y for x, y in itertools.pairwise(epochs))
    assert len(epochs) <= elapsed * 20.0 + 2  # the real-rate cap, an upper bound only


def test_stop_is_prompt_while_blocked_in_read(sim: SimulatedGnss, inbox: Inbox) -> None:
    reader = make_reader(sim.path, inbox)
    reader.start()
    assert inbox.link() is True
    started = time.monotonic()
    reader.stop()
    # Well under the idle read timeout: cancel_read() woke it, not the timeout.
    assert time.monotonic() - started < IDLE_READ_S * 0.8
    assert inbox.link() is False and not reader.connected


def test_stop_is_prompt_while_backing_off(by_id: Path, inbox: Inbox) -> None:
    reader = make_reader(str(by_id), inbox, reconnect_min_s=5.0, reconnect_max_s=10.0)
    reader.start()
    started = time.monotonic()
    reader.stop()
    assert time.monotonic() - started < 1.0


def test_reader_configuration_errors() -> None:
    with pytest.raises(GnssError):
        GnssReader("nosuchscheme://gnss")
    with pytest.raises(GnssError):
        GnssReader("loop://", stale_after_s=0)
    reader = GnssReader("loop://")
    with reader, pytest.raises(GnssError):
        reader.start()


def test_simulator_configuration_errors(by_id: Path) -> None:
    with pytest.raises(SimulatorError):
        SimulatedGnss(by_id, rate_hz=0)
    with pytest.raises(SimulatorError):
        SimulatedGnss(by_id, corrupt_share=1.5)
    regular = by_id.with_name("not-a-link")
    regular.write_text("keep me")
    with pytest.raises(SimulatorError, match="not a symlink"):
        SimulatedGnss(regular)
    assert regular.read_text() == "keep me"


def test_simulator_wire_is_crlf_nmea_a_plain_port_can_read(sim: SimulatedGnss) -> None:
    with serial.Serial(sim.path, timeout=WAIT_S) as port:
        lines = [port.readline() for _ in range(4)]
    assert all(line.endswith(b"\r\n") for line in lines)
    parsed = [parse_sentence(line) for line in lines]
    assert {type(p) for p in parsed} == {Rmc, Gga}
    assert all(isinstance(p, Rmc | Gga) and p.talker == "GN" and p.has_fix for p in parsed)
