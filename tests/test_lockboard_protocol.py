"""The Kerong CU16 wire without a port: golden frames on both sides, and the parsers' properties.

The driver (drivers/lockboard.py) and the simulator (simulators/lockboard.py) implement the
wire separately; every golden frame here is written out by hand, so neither side can pass by
agreeing with the other on a mistake.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers import lockboard as drv
from drivers.lockboard import (
    BadChecksum,
    BoardConfig,
    FrameError,
    GarbledReply,
    ReplyParser,
    StatusReply,
    encode_command,
)
from simulators import lockboard as sim
from simulators.errors import SimulatorError
from simulators.lockboard import HostFrame, HostFrameParser, encode_status_reply

# PROTOCOLS.md section 3, verbatim.
UNLOCK_B0_L0 = bytes.fromhex("02 00 31 03 36")
STATUS_B0 = bytes.fromhex("02 00 30 03 35")

# Worked by hand: 02+37+31+03 = 6D; 02+FF+31+03 = 135 -> 35 (the sum wraps).
UNLOCK_B3_L7 = bytes.fromhex("02 37 31 03 6d")
UNLOCK_B15_L15 = bytes.fromhex("02 ff 31 03 35")

# Status replies worked by hand, SUM = (sum of the 8 bytes before it) & 0xFF:
# board 1, lock bits 0 and 8 (manual locks 1 and 9), item bit 1 (manual lock 2):
# 02+10+35+01+01+02+00+03 = 4E
REPLY_B1 = bytes.fromhex("02 10 35 01 01 02 00 03 4e")
# board 2, every bit set: 02+20+35+4*FF+03 = 456 -> 56
REPLY_B2_ALL = bytes.fromhex("02 20 35 ff ff ff ff 03 56")


def is_valid_reply(frame: bytes) -> bool:
    """The test's own reading of a valid status reply, independent of both implementations."""
    return (
        len(frame) == 9
        and frame[0] == 0x02
        and frame[2] == 0x35
        and frame[7] == 0x03
        and sum(frame[:8]) % 256 == frame[8]
    )


def feed_in_pieces(
    parser: ReplyParser, stream: bytes, cuts: list[int]
) -> list[StatusReply | FrameError]:
    out: list[StatusReply | FrameError] = []
    edges = [0, *sorted(set(cuts)), len(stream)]
    for a, b in itertools.pairwise(edges):
        out += parser.feed(stream[a:b])
    return out


def replies(items: list[StatusReply | FrameError]) -> list[bytes]:
    return [i.raw for i in items if isinstance(i, StatusReply)]


# -- golden frames, both sides ----------------------------------------------------------------


def test_constants_match_the_manual_on_both_sides() -> None:
    assert (drv.STX, drv.ETX) == (sim.STX, sim.ETX) == (0x02, 0x03)
    assert (drv.CMD_STATUS_ONE, drv.CMD_UNLOCK, drv.CMD_STATUS_ALL, drv.CMD_UNLOCK_ALL) == (
        0x30,
        0x31,
        0x32,
        0x33,
    )
    assert (sim.STATUS_ONE, sim.UNLOCK, sim.STATUS_ALL, sim.UNLOCK_ALL) == (0x30, 0x31, 0x32, 0x33)
    assert drv.REPLY_STATUS == sim.STATUS_REPLY == 0x35
    assert drv.CMD_SET_PULSE == sim.SET_PULSE == 0x37


@pytest.mark.parametrize(
    ("board", "lock", "cmd", "frame"),
    [
        (0, 0, 0x31, UNLOCK_B0_L0),
        (0, 0, 0x30, STATUS_B0),
        (3, 7, 0x31, UNLOCK_B3_L7),
        (15, 15, 0x31, UNLOCK_B15_L15),
    ],
)
def test_golden_host_frames_driver_encodes_simulator_decodes(
    board: int, lock: int, cmd: int, frame: bytes
) -> None:
    assert encode_command(board, lock, cmd) == frame
    assert HostFrameParser().feed(frame) == [HostFrame(board, lock, cmd, frame, True)]


@pytest.mark.parametrize(
    ("frame", "board", "lock_bits", "item_bits"),
    [(REPLY_B1, 1, 0x0101, 0x0002), (REPLY_B2_ALL, 2, 0xFFFF, 0xFFFF)],
)
def test_golden_status_replies_simulator_encodes_driver_decodes(
    frame: bytes, board: int, lock_bits: int, item_bits: int
) -> None:
    assert encode_status_reply(board, lock_bits, item_bits) == frame
    assert ReplyParser().feed(frame) == [StatusReply(board, 0, lock_bits, item_bits, frame)]


def test_bit_n_is_lock_n_low_byte_first() -> None:
    (reply,) = ReplyParser().feed(REPLY_B1)
    assert isinstance(reply, StatusReply)
    status = reply.to_status(BoardConfig(1))
    assert [i for i, v in enumerate(status.door_open) if v] == [0, 8]  # manual locks 1 and 9
    assert [i for i, v in enumerate(status.item_present) if v] == [1]  # manual lock 2
    assert len(status.door_open) == len(status.item_present) == 16


def test_every_driver_command_frame_decodes_in_the_simulator() -> None:
    stream = b""
    expected: list[HostFrame] = []
    for board in range(16):
        for lock in range(16):
            for cmd in (0x30, 0x31, 0x32, 0x33):
                frame = encode_command(board, lock, cmd)
                stream += frame
                expected.append(HostFrame(board, lock, cmd, frame, True))
    assert HostFrameParser().feed(stream) == expected


@pytest.mark.parametrize(("board", "lock"), [(16, 0), (-1, 0), (0, 16), (0, -1)])
def test_out_of_range_addresses_are_refused(board: int, lock: int) -> None:
    with pytest.raises(ValueError):
        encode_command(board, lock, 0x31)
    with pytest.raises(SimulatorError):
        encode_status_reply(board, 0, 0, lock=lock)


def test_board_config_refuses_a_board_off_the_bus() -> None:
    with pytest.raises(ValueError):
        BoardConfig(16)


# -- polarity ----------------------------------------------------------------------------------


def test_polarity_of_one_bit() -> None:
    (reply,) = ReplyParser().feed(encode_status_reply(0, 0x0001, 0x0001))
    assert isinstance(reply, StatusReply)
    normal = reply.to_status(BoardConfig(0))
    inverted = reply.to_status(BoardConfig(0, lock_bit_open=False, item_bit_present=False))
    assert normal.door_open == (True,) + (False,) * 15
    assert normal.item_present == (True,) + (False,) * 15
    assert inverted.door_open == (False,) + (True,) * 15
    assert inverted.item_present == (False,) + (True,) * 15


def test_a_reply_is_not_read_with_another_boards_config() -> None:
    (reply,) = ReplyParser().feed(REPLY_B1)
    assert isinstance(reply, StatusReply)
    with pytest.raises(ValueError):
        reply.to_status(BoardConfig(0))


flags16 = st.tuples(*[st.booleans()] * 16)


@given(
    board=st.integers(0, 15),
    doors=flags16,
    items=flags16,
    lock_bit_open=st.booleans(),
    item_bit_present=st.booleans(),
)
def test_status_round_trip_through_polarity(
    board: int,
    doors: tuple[bool, ...],
    items: tuple[bool, ...],
    lock_bit_open: bool,
    item_bit_present: bool,
) -> None:
    # The wire bit is 1 exactly when the fact equals the polarity's meaning of 1.
    lock_bits = sum((d == lock_bit_open) << n for n, d in enumerate(doors))
    item_bits = sum((i == item_bit_present) << n for n, i in enumerate(items))
    (reply,) = ReplyParser().feed(encode_status_reply(board, lock_bits, item_bits))
    assert isinstance(reply, StatusReply)
    status = reply.to_status(BoardConfig(board, lock_bit_open, item_bit_present))
    assert (status.board, status.door_open, status.item_present) == (board, doors, items)


# -- the reply parser --------------------------------------------------------------------------


def test_bad_checksum_is_reported_and_the_next_reply_still_parses() -> None:
    bad = REPLY_B1[:8] + bytes([REPLY_B1[8] ^ 0x01])
    items = ReplyParser().feed(bad + REPLY_B2_ALL)
    assert isinstance(items[0], BadChecksum)
    assert items[0].raw == bad
    assert replies(items) == [REPLY_B2_ALL]


def test_missing_etx_and_wrong_command_are_garbled() -> None:
    no_etx = REPLY_B1[:7] + b"\x04" + REPLY_B1[8:]
    wrong_cmd = REPLY_B1[:2] + b"\x36" + REPLY_B1[3:]
    for broken in (no_etx, wrong_cmd):
        items = ReplyParser().feed(broken + REPLY_B1)
        assert any(isinstance(i, GarbledReply) for i in items)
        assert replies(items) == [REPLY_B1]


def test_a_real_reply_behind_a_stray_stx_is_found() -> None:
    # The stray STX opens a candidate that swallows the start of the real reply.
    items = ReplyParser().feed(b"\x02\x00" + REPLY_B1)
    assert replies(items) == [REPLY_B1]


def test_junk_is_reported_once_per_feed_and_partial_frames_are_held() -> None:
    parser = ReplyParser()
    items = parser.feed(b"\xff\xfe" + REPLY_B1[:4])
    assert len(items) == 1 and isinstance(items[0], GarbledReply)
    assert items[0].raw == b"\xff\xfe"
    assert parser.pending == REPLY_B1[:4]
    assert replies(parser.feed(REPLY_B1[4:])) == [REPLY_B1]
    assert parser.pending == b""


valid_reply = st.builds(
    encode_status_reply,
    st.integers(0, 15),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
junk_without_stx = st.binary(max_size=12).map(lambda b: b.replace(b"\x02", b""))


@given(
    frames=st.lists(valid_reply, max_size=6),
    junk=st.lists(junk_without_stx, min_size=7, max_size=7),
    cuts=st.lists(st.integers(0, 200)),
)
def test_replies_between_junk_split_anywhere_parse_to_exactly_those_replies(
    frames: list[bytes], junk: list[bytes], cuts: list[int]
) -> None:
    stream = junk[0] + b"".join(f + j for f, j in zip(frames, junk[1:], strict=False))
    cuts = [c for c in cuts if c <= len(stream)]
    assert replies(feed_in_pieces(ReplyParser(), stream, cuts)) == frames


@given(
    frames=st.lists(valid_reply, max_size=5),
    junk=st.lists(st.binary(max_size=12), min_size=6, max_size=6),
    cuts=st.lists(st.integers(0, 200)),
)
def test_junk_with_stx_bytes_cannot_hide_a_reply(
    frames: list[bytes], junk: list[bytes], cuts: list[int]
) -> None:
    stream = junk[0]
    starts = []
    for frame, after in zip(frames, junk[1:], strict=False):
        starts.append(len(stream))
        stream += frame + after
    # Junk that itself contains, or forms with a neighbour, a valid reply is ambiguous for
    # any parser; leave those streams out.
    assume([i for i in range(len(stream)) if is_valid_reply(stream[i : i + 9])] == starts)
    cuts = [c for c in cuts if c <= len(stream)]
    assert replies(feed_in_pieces(ReplyParser(), stream, cuts)) == frames


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300)))
def test_random_bytes_never_crash_and_never_yield_an_unchecked_reply(
    data: bytes, cuts: list[int]
) -> None:
    parser = ReplyParser()
    items = feed_in_pieces(parser, data, [c for c in cuts if c <= len(data)])
    for item in items:
        if isinstance(item, StatusReply):
            assert is_valid_reply(item.raw)
            assert item.raw in data
            assert (item.board, item.lock) == (item.raw[1] >> 4, item.raw[1] & 0x0F)
        else:
            assert isinstance(item, FrameError) and item.board is None
    assert len(parser.pending) < 9


# -- the simulator's host-frame parser --------------------------------------------------------


def test_simulator_marks_a_bad_checksum_frame_invalid_and_resyncs() -> None:
    bad = STATUS_B0[:4] + b"\x36"
    frames = HostFrameParser().feed(b"\x00\x02\x01" + bad + UNLOCK_B0_L0)
    assert frames == [
        HostFrame(0, 0, 0x30, bad, False),
        HostFrame(0, 0, 0x31, UNLOCK_B0_L0, True),
    ]


host_frame = st.builds(
    encode_command, st.integers(0, 15), st.integers(0, 15), st.sampled_from([0x30, 0x31])
)


@given(
    frames=st.lists(host_frame, max_size=6),
    junk=st.lists(junk_without_stx, min_size=7, max_size=7),
    cuts=st.lists(st.integers(0, 150)),
)
def test_simulator_parses_host_frames_between_junk_split_anywhere(
    frames: list[bytes], junk: list[bytes], cuts: list[int]
) -> None:
    stream = junk[0] + b"".join(f + j for f, j in zip(frames, junk[1:], strict=False))
    edges = [0, *sorted({c for c in cuts if c <= len(stream)}), len(stream)]
    parser = HostFrameParser()
    got: list[HostFrame] = []
    for a, b in itertools.pairwise(edges):
        got += parser.feed(stream[a:b])
    assert [f.raw for f in got if f.valid] == frames


@given(data=st.binary(max_size=300))
def test_simulator_parser_never_crashes_on_random_bytes(data: bytes) -> None:
    for frame in HostFrameParser().feed(data):
        assert frame.raw in data and frame.raw[0] == 0x02 and frame.raw[3] == 0x03
        assert frame.valid == (sum(frame.raw[:4]) % 256 == frame.raw[4])
