"""`bench fuzz`: every parser of bytes from outside, under hypothesis, a million inputs in all.

What runs: each target below is a parser that reads bytes a device, a board, a receiver or a
merchant sends us, called exactly as the product calls it. A *crash* is any exception other
than the error type its API documents for bad input (or an output that breaks the parser's own
promise, e.g. a scan longer than `max_len`); a *hang* is one input taking longer than
`--hang-s` (1 s), measured with `time.monotonic()` around each call (no signals).

- `scanner`: `drivers.scanner.ScanFramer` as a van configures it (CR LF suffix) and as a
  scanner that ends frames by silence, the bytes arriving in two reads. Never raises.
- `keypad`: `ScanFramer(b"\\r", debounce_s=0.0)`, exactly as `edge.locker_device` builds it for
  the keypad. (What a typed line means is `Locker._on_key`'s: a lookup in the journal and one
  scrypt per six-digit code, ~10 ms; it reads no bytes, so it is not fuzzed here.)
- `nmea`: `drivers.gnss.NmeaFramer` into `FixAssembler` (never raises; every fix in range), and
  `parse_sentence` on the whole input (`BadSentence`).
- `cu16`: `drivers.lockboard.ReplyParser` in two reads, each reply through `to_status`.
  Never raises: bad frames come back as `FrameError` items.
- `wire_batch`, `wire_photo_chunk`, `wire_ack`: `sync.wire` `read_batch` + `verify_batch`,
  `decode_photo_chunk`, `decode_ack` and `decode_photo_ack` (`WireError`).
- `wire_positions`: `sync.wire.decode_positions`, as the depot reads a van's position samples
  (`WireError`); every sample it returns is in range (coordinates, stop within the round).
- `import_csv`, `import_json`: `depot.imports.read_import` (`ParcelImportError`; bad rows are
  results, not exceptions).
- `locker_command`: `sync.signing.CommandVerifier.verify` of a locker (`CommandRejected`).

Inputs: hypothesis (no example database, derandomised from `--seed`, no deadline, generation
only) draws one byte string per example, cut into `BATCH` recipes of 3-46 bytes. About one
recipe in five is used as it is (pure random bytes; for a batch, zlib-wrapped when its low bit
says so); the rest name a seed and a sequence of mutations (flip a bit, set, insert, delete,
duplicate or cut bytes, insert or overwrite a token of the target's dictionary, repeat a token
up to 2048 times for deep nesting, splice another seed) and, when a bit says so, repair what a
checksum would catch (NMEA and CU16). The seeds are valid inputs made by the project's own
encoders (`encode_batch` of real events, `encode_status_reply`, `sign_command`, a merchant file
like the simulated day's), so mutants get past framing and checksums to the fields. Batching is
what makes a million inputs affordable: hypothesis makes about 8,000 recipes a second this way,
and about 3,000 examples a second however small each is.

Baseline, in the same run on the same inputs: `bytes.decode("latin-1")`, the least any parser
does with its input; `ratio_vs_baseline` is how many times slower the parser is than that.

Figures per target: `inputs`, `crashes`, `hangs`, `slowest_ms`, `inputs_per_s` (the whole loop,
generation included), `parser_inputs_per_s` (time inside the parser only), the baseline's rate
and the first crashes (input in hex, exception). `targets_met`: at least a million inputs in
all, no crash, no hang.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.rig import BenchError, host_facts, rounded

if TYPE_CHECKING:
    from depot.imports import ImportFormat

DEFAULT_INPUTS = 1_000_000
BATCH = 100  # inputs per hypothesis example
RECIPE_BYTES = 48  # longest recipe (its length byte included)
HANG_S = 1.0
CRASHES_KEPT = 3  # per target, in the report
RANDOM_SHARE = 51  # recipes whose first byte is below this (of 256) are used as random bytes
MAX_REPEAT = 2048  # a token repeated by one mutation at most this often (1000-deep nesting)
MAX_INPUT = 64 * 1024  # a mutant is cut to this; a photo chunk is at most 64 KiB anyway


class BrokenPromise(Exception):
    """A parser returned something its own documentation says it never returns."""


@dataclass(frozen=True)
class Target:
    """One parser of outside bytes, its documented error, seed corpus and dictionary."""

    name: str
    parse: Callable[[bytes], object]
    expected: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...]
    tokens: tuple[bytes, ...]
    # Applied to every mutant (`repair` True when the recipe asks for checksums to be fixed).
    finish: Callable[[bytes, bool], bytes] = lambda data, _repair: data


@dataclass
class Tally:
    """What one target's run saw."""

    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    parser_s: float = 0.0
    baseline_s: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)


# --- turning a recipe into an input ------------------------------------------------------------


def build_input(target: Target, recipe: bytes) -> bytes:
    """The input a recipe (bytes hypothesis drew) stands for: random bytes, or a mutant."""
    if len(recipe) < 2 or recipe[0] < RANDOM_SHARE:
        body = recipe[1:]
        return target.finish(body, False) if recipe[:1] and recipe[0] & 1 else body
    seeds = target.seeds
    data = bytearray(seeds[recipe[1] % len(seeds)])
    tokens = target.tokens
    ops = recipe[2:]
    for i in range(0, len(ops) - 3, 4):
        op, arg = ops[i] % 10, ops[i + 3]
        pos = ((ops[i + 1] << 8 | ops[i + 2]) * (len(data) + 1)) >> 16
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << (arg & 7)
        elif op == 1 and pos < len(data):
            data[pos] = arg
        elif op == 2:
            del data[pos : pos + 1 + arg % 32]
        elif op == 3:
            data[pos:pos] = bytes((arg,))
        elif op == 4:
            data[pos:pos] = tokens[arg % len(tokens)]
        elif op == 5:
            token = tokens[arg % len(tokens)]
            data[pos : pos + len(token)] = token
        elif op == 6:  # a token many times over: deep nesting, long digit runs
            token = tokens[(ops[i] // 10 * 16 + (arg >> 4)) % len(tokens)]
            data[pos:pos] = token * min(1 << (arg & 0x0F), MAX_REPEAT)
        elif op == 7:
            data[pos:pos] = data[pos : pos + 1 + arg % 64]
        elif op == 8:
            del data[pos:]
        else:
            other = seeds[arg % len(seeds)]
            data[pos:] = other[(arg * len(other)) >> 8 :]
        if len(data) > MAX_INPUT:
            del data[MAX_INPUT:]
    return target.finish(bytes(data), bool(recipe[0] & 1))


# --- the targets -------------------------------------------------------------------------------


def _check_framed(items: Sequence[object], suffix: bytes | None, max_len: int) -> None:
    from drivers.scanner import Rejected, Scan

    for item in items:
        if isinstance(item, Scan):
            body = item.raw[3:] if item.aim else item.raw
            if not item.raw or len(item.raw) > max_len or item.data.encode("latin-1") != body:
                raise BrokenPromise(f"scan {item.raw[:40]!r} is empty, too long or altered")
            if b"\r" in item.raw or b"\n" in item.raw or (suffix and suffix in item.raw):
                raise BrokenPromise(f"scan {item.raw[:40]!r} holds a line end or its suffix")
        elif not isinstance(item, Rejected):
            raise BrokenPromise(f"framer returned {type(item).__name__}")


def _frame_in_two_reads(data: bytes, suffix: bytes | None, debounce_s: float | None = None) -> None:
    """Two reads 10 ms apart (the cut point from the data), then a late poll ends any frame."""
    from drivers.scanner import DEFAULT_DEBOUNCE_S, DEFAULT_MAX_LEN, ScanFramer

    framer = ScanFramer(suffix, debounce_s=DEFAULT_DEBOUNCE_S if debounce_s is None else debounce_s)
    cut = data[0] * len(data) // 256 if data else 0
    items = framer.feed(data[:cut], 100.0) + framer.feed(data[cut:], 100.01)
    items += framer.poll(200.0)
    _check_framed(items, suffix, DEFAULT_MAX_LEN)


def _scanner(data: bytes) -> None:
    _frame_in_two_reads(data, b"\r\n")
    _frame_in_two_reads(data, None)


def _keypad(data: bytes) -> None:
    _frame_in_two_reads(data, b"\r", debounce_s=0.0)


def _nmea(data: bytes) -> None:
    from drivers.gnss import FixAssembler, Gga, NmeaFramer, RejectedLine, Rmc, parse_sentence

    framer, assembler = NmeaFramer(), FixAssembler()
    cut = len(data) // 2
    for n, part in enumerate((data[:cut], data[cut:])):
        for item in framer.feed(part):
            if isinstance(item, Rmc | Gga):
                for fix in assembler.add(item, float(n)):
                    if not (abs(fix.lat) <= 90 and abs(fix.lon) <= 180):
                        raise BrokenPromise(f"fix out of range: {fix.lat}, {fix.lon}")
            elif not isinstance(item, RejectedLine) and type(item).__name__ != "IgnoredSentence":
                raise BrokenPromise(f"framer returned {type(item).__name__}")
    parse_sentence(data)  # BadSentence is the documented refusal


def _nmea_repair(data: bytes, repair: bool) -> bytes:
    """Give every `$…*hh` line the checksum it should have, so mutants reach the fields."""
    if not repair:
        return data
    from drivers.gnss import nmea_checksum

    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        star = line.rfind(b"*")
        if line.startswith(b"$") and star > 0:
            lines[i] = line[: star + 1] + b"%02X" % nmea_checksum(line[1:star]) + line[star + 3 :]
    return b"\n".join(lines)


def _cu16(data: bytes) -> None:
    from drivers.lockboard import BoardConfig, FrameError, ReplyParser, StatusReply

    parser = ReplyParser()
    cut = data[-1] * len(data) // 256 if data else 0
    for part in (data[:cut], data[cut:]):
        for item in parser.feed(part):
            if isinstance(item, StatusReply):
                raw = item.raw
                if len(raw) != 9 or raw[0] != 0x02 or sum(raw[:8]) & 0xFF != raw[8]:
                    raise BrokenPromise(f"status reply {raw.hex()} is not a checked frame")
                status = item.to_status(BoardConfig(item.board))
                if len(status.door_open) != 16 or len(status.item_present) != 16:
                    raise BrokenPromise("a status without 16 doors and 16 sensors")
            elif not isinstance(item, FrameError):
                raise BrokenPromise(f"parser returned {type(item).__name__}")
    if len(parser.pending) >= 9:
        raise BrokenPromise(f"parser holds {len(parser.pending)} bytes")


def _cu16_repair(data: bytes, repair: bool) -> bytes:
    """Give every frame-shaped run after an STX the checksum it should have."""
    if not repair:
        return data
    out = bytearray(data)
    for i, byte in enumerate(data):
        if byte == 0x02 and i + 8 < len(out):
            out[i + 8] = sum(out[i : i + 8]) & 0xFF
    return bytes(out)


def _wire_batch(data: bytes) -> None:
    from sync.wire import read_batch, verify_batch

    verify_batch(*read_batch(data))


def _wire_photo_chunk(data: bytes) -> None:
    from sync.wire import decode_photo_chunk

    decode_photo_chunk(data)


def _wire_ack(data: bytes) -> None:
    from sync.errors import WireError
    from sync.wire import decode_ack, decode_photo_ack

    for decode in (decode_ack, decode_photo_ack):
        with contextlib.suppress(WireError):
            decode(data)


def _wire_positions(data: bytes) -> None:
    from sync.wire import MAX_POSITION_SAMPLES, decode_positions

    _device, samples = decode_positions(data)
    if not 1 <= len(samples) <= MAX_POSITION_SAMPLES:
        raise BrokenPromise(f"{len(samples)} samples in one message")
    for s in samples:
        if not (-90 <= s.lat <= 90 and -180 <= s.lon <= 180):  # also false for NaN
            raise BrokenPromise(f"sample at {s.lat}, {s.lon} is off the map")
        stop_fits = s.stop is None or 1 <= s.stop <= s.stops_total
        if s.stops_done > s.stops_total or not stop_fits:
            raise BrokenPromise(f"stop {s.stop}, {s.stops_done} done of {s.stops_total}")
        for value in (s.accuracy_m, s.speed_mps):
            if value is not None and not 0 <= value < math.inf:
                raise BrokenPromise(f"accuracy or speed {value} out of range")


def _import(fmt: ImportFormat) -> Callable[[bytes], None]:
    def parse(data: bytes) -> None:
        from depot.imports import read_import

        result = read_import(data, format=fmt)
        for record in result.records:
            if not (math.isfinite(record.lat) and math.isfinite(record.lon)):
                raise BrokenPromise(f"record {record.id} has a coordinate that is not finite")

    return parse


def _zlib(data: bytes, _repair: bool) -> bytes:
    return zlib.compress(data, 1)


# Dictionaries: the tokens that matter to each grammar, and the values that broke parsers before.
_JSON_TOKENS = (
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"18446744073709551616",
    b"-9223372036854775809", b"9223372036854775807", b"\"\\ud800\"", b"\\udfff", b"\\u0000",
    b"[", b"]", b"{", b"}", b"\"", b",", b":", b"null", b"true", b"false", b"0", b"-1", b"1.5",
    b"\"\"", b"[]", b"{}", b"\"v\":1", b"\"first\":", b"\"p\":[", b"\xff", b"\xc3\x28",
    b"9" * 5000,
)  # fmt: skip
_NMEA_TOKENS = (
    b"$", b"*", b",", b"\r\n", b"\n", b"GPRMC", b"GNGGA", b"GLRMC", b"PUBX", b"A", b"V", b"N",
    b"S", b"E", b"W", b".", b"-", b"9999.9999", b"18000.0000", b"nan", b"inf", b"1e999",
    b"235960", b"310299", b"0", b"\x00", b"\xff",
)  # fmt: skip
_CU16_TOKENS = (b"\x02", b"\x03", b"\x35", b"\x02\x00\x35", b"\xff\xff", b"\x00")
_SCANNER_TOKENS = (
    b"\r\n", b"\r", b"\n", b"]C1", b"]d2", b"]Q3", b"\x1d", b"\x1e", b"\x04", b"\x00", b"\x7f",
    b"\xff", b"RR123456785NL", b"00", b"*", b"#1", b"123456",
)  # fmt: skip
_CSV_TOKENS = (
    b",", b";", b"\t", b"\"", b"\n", b"\r\n", b"\r", b"\xff", b"\xef\xbb\xbf", b"\xff\xfe",
    b"<GS>", b"\\x1d", b"\x1d", b"1e20", b"1,5", b"nan", b"inf", b"-inf", b"0", b"90.0001",
    b"24:00", b"9:00", b"-", b"http://", b"https://x", b"javascript:", b"\x00", b"\x07",
    b"parcel", b"lat", b"window", b"size", b"XL", b"yes", b"\xed\xa0\x80",
)  # fmt: skip
_COMMAND_TOKENS = (*_JSON_TOKENS, b'"sig":', b'"args":{', b'"issued_at":', b"==")


def _batch_seeds() -> tuple[bytes, ...]:
    """Batches `encode_batch` made of real events: one event; several with two boots and
    kinds, a GS1 label, non-ASCII text and a nested payload."""
    from sync.wire import Event, canonical_payload, chain_hash, encode_batch, genesis_hash

    def batch(journal: str, payloads: list[tuple[str, str, dict[str, Any]]]) -> bytes:
        h = prev = genesis_hash(journal)
        events: list[Event] = []
        for seq, (boot, kind, payload) in enumerate(payloads, 1):
            uid = f"{seq:032x}"
            mono, wall = seq * 1_000_003, 1_700_000_000_000_000_000 + seq * 999
            h = chain_hash(h, seq, uid, boot, mono, wall, True, kind, canonical_payload(payload))
            events.append(Event(seq, uid, boot, mono, wall, True, kind, payload, h))
        return zlib.decompress(encode_batch("van-1", journal, prev, events))

    scan = {"parcel": "RR123456785NL", "aim": "]C0", "n": 1}
    return (
        batch("j" * 32, [("b" * 32, "parcel_scanned", scan)]),
        batch(
            "k" * 32,
            [
                ("b" * 32, "parcel_scanned", {"parcel": "0012345678\x1d901", "gs": True}),
                ("c" * 32, "parcel_delivered", {"to": "Jörg Ünal", "pod": {"fix": None}}),
                ("c" * 32, "alarm", {"alarm": "x", "facts": {"a": [1, [2, {"b": -3.25}]]}}),
            ],
        ),
    )


def _chunk_seeds() -> tuple[bytes, ...]:
    from sync.wire import PhotoChunk, encode_photo_chunk

    data = b"\xff\xd8\xff\xe0" + bytes(range(60))
    return (
        encode_photo_chunk(PhotoChunk("ab" * 32, 0, 200, "image/jpeg", data)),
        encode_photo_chunk(PhotoChunk("0f" * 32, 136, 200, "image/png", data)),
    )


def _ack_seeds() -> tuple[bytes, ...]:
    from sync.wire import Ack, PhotoAck, encode_ack, encode_photo_ack

    return (
        encode_ack(Ack("j" * 32, 42)),
        encode_ack(Ack("j" * 32, 40, 41)),
        encode_photo_ack(PhotoAck("ab" * 32, 16384, offset=0)),
        encode_photo_ack(PhotoAck("ab" * 32, 0, error="hash mismatch", offset=65536)),
        encode_photo_ack(PhotoAck("ab" * 32, 200, done=True)),
    )


def _positions_seeds() -> tuple[bytes, ...]:
    """Messages `encode_positions` made: one sample before the first stop; several on the
    round, some without accuracy or speed; one back at the depot with every stop done."""
    from sync.wire import PositionSample, encode_positions

    t0 = 1_700_000_000_000_000_000
    return (
        encode_positions("van-1", [PositionSample(t0, 52.37, 4.89, 5.0, 0.0, None, 0, 12)]),
        encode_positions(
            "van-2",
            [
                PositionSample(t0 + n * 15_000_000_000, 52.3 + n / 1e4, 4.9 - n / 1e4,
                               None if n % 2 else 3.5, None if n % 3 else 8.25, n or None, n, 12)
                for n in range(6)
            ],
        ),
        encode_positions("van-1", [PositionSample(t0, -33.9, 151.2, 1e6, 1e3, 12, 12, 12)]),
    )  # fmt: skip


def _scanner_seeds() -> tuple[bytes, ...]:
    import random

    from simulators.parcels import random_label

    rng = random.Random(7)
    labels = [random_label(rng) for _ in range(6)]
    frames = [(label.aim or "").encode() + label.data.encode("latin-1") for label in labels]
    return (*tuple(f + b"\r\n" for f in frames), b"".join(f + b"\r\n" for f in frames[:3]))


def _nmea_seeds() -> tuple[bytes, ...]:
    from drivers.gnss import nmea_checksum

    bodies = [
        b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
        b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        b"GNRMC,101500.00,A,5222.1234,N,00454.5678,E,0.5,271.3,150524,,,A",
        b"GNGGA,101500.00,5222.1234,N,00454.5678,E,1,12,0.8,2.1,M,46.0,M,,",
        b"GPRMC,101501.00,V,,,,,,,150524,,,N",
        b"GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00",
    ]
    lines = [b"$" + body + b"*%02X\r\n" % nmea_checksum(body) for body in bodies]
    return (*lines, lines[2] + lines[3] + lines[4])


def _cu16_seeds() -> tuple[bytes, ...]:
    from simulators.lockboard import encode_status_reply

    replies = [
        encode_status_reply(0, 0x0000, 0xFFFF),
        encode_status_reply(3, 0x8001, 0x00F0),
        encode_status_reply(15, 0xFFFF, 0x0000, lock=7),
    ]
    return (*replies, b"".join(replies), b"\x55" + replies[1])


def _import_rows() -> list[dict[str, Any]]:
    import random

    from simulators.parcels import random_label

    rng = random.Random(11)
    rows: list[dict[str, Any]] = []
    for n in range(3):
        label = random_label(rng)
        rows.append(
            {
                "parcel": label.data.replace("\x1d", "<GS>"),
                "recipient": f"R. Müller {n}",
                "address": f"Keizersgracht {100 + n}, Amsterdam",
                "lat": 52.37 + n / 1000,
                "lon": 4.89,
                "merchant": "shop",
                "webhook": "https://shop.example/hook",
                "window": "09:00-12:00" if n else "",
                "size": "SML"[n],
                "locker_ok": bool(n % 2),
            }
        )
    return rows


def _csv_seeds() -> tuple[bytes, ...]:
    import csv
    import io

    rows = _import_rows()
    out = []
    for delimiter in (",", ";"):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
        out.append(text.getvalue().encode())
    return tuple(out)


def _json_seeds() -> tuple[bytes, ...]:
    import json

    rows = _import_rows()
    return (json.dumps({"parcels": rows}).encode(), json.dumps(rows[:1], indent=1).encode())


def _command_target() -> Target:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sync.signing import (
        CommandRejected,
        CommandVerifier,
        MemoryReplayStore,
        public_raw,
        sign_command,
    )

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed: the same seeds each run
    now = 1_700_000_000.0
    seeds = (
        sign_command(
            key,
            target="locker-1",
            action="reserve",
            args={"parcel": "RR123456785NL", "size": "M", "hours": 24},
            ttl_s=600,
            now=now,
            command_id="cmd-00000001",
        ),
        sign_command(
            key,
            target="locker-1",
            action="remote_open",
            args={"compartment": "A3"},
            ttl_s=60,
            now=now,
            command_id="cmd-00000002",
        ),
    )
    trusted = [public_raw(key)]

    def parse(data: bytes) -> None:
        # A fresh verifier and replay store each time: the same seed is accepted every time.
        CommandVerifier(trusted, "locker-1", seen=MemoryReplayStore()).verify(data, now)

    return Target("locker_command", parse, (CommandRejected,), seeds, _COMMAND_TOKENS)


def build_targets() -> list[Target]:
    """Every target, its seeds made now by the project's own encoders."""
    from depot.imports import ParcelImportError
    from drivers.gnss import BadSentence
    from sync.errors import WireError

    scanner = _scanner_seeds()
    return [
        Target("scanner", _scanner, (), scanner, _SCANNER_TOKENS),
        Target(
            "keypad", _keypad, (), (b"123456\r", b"*4711\r", b"#1\r", b"#0\r12\r"), _SCANNER_TOKENS
        ),
        Target("nmea", _nmea, (BadSentence,), _nmea_seeds(), _NMEA_TOKENS, _nmea_repair),
        Target("cu16", _cu16, (), _cu16_seeds(), _CU16_TOKENS, _cu16_repair),
        Target("wire_batch", _wire_batch, (WireError,), _batch_seeds(), _JSON_TOKENS, _zlib),
        Target(
            "wire_photo_chunk",
            _wire_photo_chunk,
            (WireError,),
            _chunk_seeds(),
            (*_JSON_TOKENS, b"\n"),
        ),
        Target("wire_ack", _wire_ack, (WireError,), _ack_seeds(), _JSON_TOKENS),
        Target(
            "wire_positions",
            _wire_positions,
            (WireError,),
            _positions_seeds(),
            (*_JSON_TOKENS, b'"dev":', b'"p":[[', b"90.000001", b"-180", b"1e6", b"13"),
        ),
        Target("import_csv", _import("csv"), (ParcelImportError,), _csv_seeds(), _CSV_TOKENS),
        Target(
            "import_json",
            _import("json"),
            (ParcelImportError,),
            _json_seeds(),
            _JSON_TOKENS + _CSV_TOKENS,
        ),
        _command_target(),
    ]


# --- running -----------------------------------------------------------------------------------


def run_one(target: Target, tally: Tally, data: bytes, hang_s: float) -> None:
    """Call the parser once, timed; count a crash (anything undocumented) or a hang."""
    started = time.monotonic()
    try:
        target.parse(data)
    except target.expected:
        pass
    except Exception as exc:  # the point: anything else is a finding
        tally.crashes += 1
        if len(tally.examples) < CRASHES_KEPT:
            tally.examples.append({"input_hex": data[:2048].hex(), "error": f"{exc!r}"[:300]})
    took = time.monotonic() - started
    tally.parser_s += took
    tally.inputs += 1
    if took > tally.slowest_s:
        tally.slowest_s = took
    if took > hang_s:
        tally.hangs += 1
        if len(tally.examples) < CRASHES_KEPT:
            tally.examples.append({"input_hex": data[:2048].hex(), "error": f"hang {took:.2f} s"})


def recipes_of(drawn: bytes) -> list[bytes]:
    """Cut what hypothesis drew into BATCH recipes of 3 to RECIPE_BYTES - 1 bytes, each
    led by its length byte. (One long draw, not a list of short ones: hypothesis fills a list
    with repeats, and a run of 20,000 inputs then held only about 1,000 different ones.)"""
    out: list[bytes] = []
    at = 0
    while len(out) < BATCH and at < len(drawn):
        size = 3 + drawn[at] % (RECIPE_BYTES - 4)
        out.append(drawn[at + 1 : at + 1 + size])
        at += 1 + size
    return out


def fuzz_target(target: Target, inputs: int, seed: int, *, hang_s: float = HANG_S) -> Tally:
    """Run `target` on `inputs` inputs (rounded up to a whole batch) that hypothesis draws.

    Each seed is parsed once first, untimed, so the parser's lazy imports are done before the
    first timed call (they would be its slowest input).
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    tally = Tally()
    examples = max(1, -(-inputs // BATCH))
    # BATCH * RECIPE_BYTES bytes always make BATCH recipes.
    drawn_bytes = st.binary(min_size=BATCH * RECIPE_BYTES, max_size=BATCH * RECIPE_BYTES * 5 // 4)

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn_bytes)
    def batch(drawn: bytes) -> None:
        made = [build_input(target, recipe) for recipe in recipes_of(drawn)]
        started = time.perf_counter()
        for data in made:
            data.decode("latin-1")
        tally.baseline_s += time.perf_counter() - started
        for data in made:
            run_one(target, tally, data, hang_s)

    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # every rejected frame is logged; not a million times
    try:
        for n, data in enumerate(target.seeds):
            try:
                target.parse(data)
            except target.expected:
                pass
            except Exception as exc:
                raise BenchError(f"seed {n} of {target.name} crashes it: {exc!r}") from exc
        batch()
    finally:
        logging.disable(quiet)
    if tally.inputs == 0:
        raise BenchError(f"hypothesis drew no input for {target.name}")
    return tally


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inputs",
        type=int,
        default=DEFAULT_INPUTS,
        help=f"inputs in all, shared among the targets (default {DEFAULT_INPUTS:,})",
    )
    p.add_argument("--seed", type=int, default=1, help="hypothesis seed (default 1)")
    p.add_argument(
        "--hang-s",
        type=float,
        default=HANG_S,
        help=f"one input slower than this is a hang (default {HANG_S} s)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="TARGET",
        help="run only this target (repeatable)",
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="processes running targets side by side (default 2)"
    )
    p.add_argument("--dir", default=None, help="accepted for symmetry; writes nothing")


def _fuzz_named(name: str, inputs: int, seed: int, hang_s: float) -> tuple[Tally, float]:
    """One target by name, in whichever process runs it; its tally and wall time."""
    target = next(t for t in build_targets() if t.name == name)
    started = time.monotonic()
    tally = fuzz_target(target, inputs, seed, hang_s=hang_s)
    return tally, time.monotonic() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    targets = build_targets()
    names = [t.name for t in targets]
    chosen = args.only or names
    unknown = set(chosen) - set(names)
    if unknown:
        raise BenchError(f"no fuzz target {', '.join(sorted(unknown))} (known: {', '.join(names)})")
    if args.inputs < len(chosen) or args.jobs < 1:
        raise BenchError(f"--inputs must be at least {len(chosen)} and --jobs at least 1")
    per_target = -(-args.inputs // len(chosen))
    # A target's hypothesis seed depends on its place in the full list, so --only reruns the
    # same inputs.
    jobs = [
        (name, per_target, args.seed * 1000 + names.index(name), args.hang_s) for name in chosen
    ]
    started = time.monotonic()
    if args.jobs == 1:
        results = [_fuzz_named(*job) for job in jobs]
    else:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_fuzz_named, *zip(*jobs, strict=True)))
    wall_s = time.monotonic() - started
    report: dict[str, Any] = {"parsers": {}}
    by_name = {t.name: t for t in targets}
    for name, (tally, wall) in zip(chosen, results, strict=True):
        target = by_name[name]
        report["parsers"][name] = {
            "inputs": tally.inputs,
            "crashes": tally.crashes,
            "hangs": tally.hangs,
            "slowest_ms": rounded(tally.slowest_s * 1000, 2),
            "inputs_per_s": round(tally.inputs / wall),
            "parser_inputs_per_s": round(tally.inputs / tally.parser_s) if tally.parser_s else None,
            "baseline_inputs_per_s": (
                round(tally.inputs / tally.baseline_s) if tally.baseline_s else None
            ),
            "ratio_vs_baseline": (
                rounded(tally.parser_s / tally.baseline_s) if tally.baseline_s else None
            ),
            "seeds": len(target.seeds),
            "documented_errors": [e.__name__ for e in target.expected],
            "crash_examples": tally.examples,
        }
    parsers = report["parsers"].values()
    total = sum(p["inputs"] for p in parsers)
    report["totals"] = {
        "inputs": total,
        "crashes": sum(p["crashes"] for p in parsers),
        "hangs": sum(p["hangs"] for p in parsers),
        "slowest_ms": max(p["slowest_ms"] for p in parsers),
        "wall_s": rounded(wall_s, 1),
        "inputs_per_s": round(total / wall_s),
    }
    report["settings"] = {
        "seed": args.seed,
        "batch": BATCH,
        "jobs": args.jobs,
        "hang_s": args.hang_s,
        "hypothesis": _hypothesis_version(),
    }
    report["targets_met"] = {
        "inputs_at_least_1e6": total >= 1_000_000,
        "no_crashes": report["totals"]["crashes"] == 0,
        "no_hangs": report["totals"]["hangs"] == 0,
    }
    report["host"] = host_facts()
    return report


def _hypothesis_version() -> str:
    import hypothesis

    return str(hypothesis.__version__)


def summary(r: dict[str, Any]) -> str:
    t = r["totals"]
    worst = max(r["parsers"].items(), key=lambda kv: kv[1]["slowest_ms"])
    bad = [
        f"{n}: {p['crashes']} crashes, {p['hangs']} hangs"
        for n, p in r["parsers"].items()
        if p["crashes"] or p["hangs"]
    ]
    return (
        f"fuzz: {t['inputs']:,} inputs over {len(r['parsers'])} parsers in {t['wall_s']} s "
        f"({t['inputs_per_s']:,}/s), {t['crashes']} crashes, {t['hangs']} hangs; slowest input "
        f"{t['slowest_ms']} ms ({worst[0]})" + (f"; {'; '.join(bad)}" if bad else "")
    )


__all__ = ["BATCH", "Tally", "Target", "build_input", "build_targets", "fuzz_target"]
