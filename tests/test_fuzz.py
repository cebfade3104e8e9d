"""Every parser of outside bytes survives its fuzz target on a small seed corpus, and what
`bench fuzz` found stays fixed.

Speed and hangs are `bench fuzz`'s business (python -m bench fuzz); here each target runs a few
hundred inputs hypothesis draws, and a crash (any exception but the parser's documented one,
or a broken promise about its output) fails the test with the input that caused it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fuzz import Target, build_input, build_targets, fuzz_target
from depot.imports import read_import
from drivers.gnss import Gga, Rmc, parse_sentence
from sync.errors import WireError
from sync.wire import decode_ack, decode_batch, decode_photo_chunk

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {t.name: t for t in build_targets()}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_parser_survives_a_few_hundred_fuzzed_inputs(name: str) -> None:
    tally = fuzz_target(TARGETS[name], 300, seed=11, hang_s=float("inf"))
    assert tally.inputs >= 300
    assert tally.crashes == 0, tally.examples


def test_the_recipes_make_mutants_that_get_past_the_nmea_checksum() -> None:
    """Random bytes never pass a checksum; the repaired mutants must, with changed fields."""
    target: Target = TARGETS["nmea"]
    parsed: set[bytes] = set()
    for n in range(2000):
        recipe = bytes([0xFF, n % 7, 0, n % 251, (n * 7) % 256, n % 256])  # mutate, repair
        data = build_input(target, recipe)
        try:
            sentence = parse_sentence(data.split(b"\n")[0])
        except Exception:
            continue
        if isinstance(sentence, Rmc | Gga) and data not in target.seeds:
            parsed.add(data)
    assert len(parsed) >= 20


def test_build_input_is_deterministic_and_bounded() -> None:
    target = TARGETS["wire_batch"]
    recipe = bytes(range(60, 100))
    assert build_input(target, recipe) == build_input(target, recipe)
    deep = bytes([0xFF, 0, 6, 0, 0, 0x1B, 6, 0, 0, 0x1B, 6, 0, 0, 0x1B])  # "[" * 2048, thrice
    assert len(build_input(TARGETS["import_json"], deep)) <= 64 * 1024


# --- what the fuzzer found, kept as regression tests --------------------------------------------


def test_a_merchant_json_nested_a_thousand_deep_is_an_error_not_a_crash() -> None:
    # bench fuzz, import_json: RecursionError escaped read_import.
    data = b'[\n {\n  "parcel": ' + b"[" * 5000
    result = read_import(data, format="json")
    assert result.records == []
    assert [(e.field, e.reason) for e in result.errors] == [
        ("file", "not JSON a depot reads: nested too deep")
    ]


@pytest.mark.parametrize("data", [b"\xff\xfep", b"\xff\xfe" + b"\x00\xd8p\x00"])
def test_a_csv_with_a_utf16_mark_but_not_utf16_is_an_error_not_a_crash(data: bytes) -> None:
    # bench fuzz, import_csv: a cut-off byte (or a lone surrogate) after a UTF-16 BOM raised
    # UnicodeDecodeError out of read_import.
    result = read_import(data, format="csv")
    assert result.records == []
    assert [e.field for e in result.errors] == ["file"]
    assert "UTF-16" in result.errors[0].reason


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"jnl":"j","seq":' + b"9" * 5000 + b"}",  # beyond Python's int parse limit
        b'{"v":1,"jnl":"j","seq":1,"resend":' + b"[" * 3000 + b"}",  # RecursionError
    ],
)
def test_an_ack_python_cannot_parse_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_ack(payload)


def test_a_photo_chunk_header_or_batch_deep_enough_for_recursion_is_a_wire_error() -> None:
    import zlib

    with pytest.raises(WireError, match="levels of nesting"):
        decode_photo_chunk(b"[" * 1000 + b"\n" + b"x")
    with pytest.raises(WireError, match="levels of nesting"):
        decode_batch(zlib.compress(b'{"v":1,"p":' + b"[" * 100_000))


def test_bench_fuzz_reports_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "fuzz", "--inputs", "400", "--jobs", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    r = json.loads(out.stdout)
    assert set(r["parsers"]) == set(TARGETS)
    for figures in r["parsers"].values():
        assert {"inputs", "crashes", "hangs", "slowest_ms", "inputs_per_s",
                "parser_inputs_per_s", "baseline_inputs_per_s", "ratio_vs_baseline"} <= set(
            figures
        )  # fmt: skip
        assert figures["crashes"] == 0, figures["crash_examples"]
    assert r["totals"]["inputs"] >= 400
    assert r["targets_met"] == {
        "inputs_at_least_1e6": False,
        "no_crashes": True,
        "no_hangs": r["totals"]["hangs"] == 0,
    }
