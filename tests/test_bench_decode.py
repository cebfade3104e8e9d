"""`bench decode`'s held-out discipline and its images, and `lastmile decode` on files.

The split rule must stay put (a photo that changed part would leak tuning into the measure),
the generated images must be the same for the same seed and hold what they claim, the bench
must run end to end on a photo set, and a file's decode must not depend on time: the same
answer from the CLI as from the bench's decoder, and on an infinitely slow machine.

Nothing here needs ../shared: every image is made by `bench.labels` in the test.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zxingcpp

from bench.decode import KINDS, PARTS, ours, part_of, seed_for
from bench.labels import (
    EMPTY_KINDS,
    FORMATS,
    MODULE_PX,
    VARIANTS,
    empty_scene,
    synthetic_label,
    variant,
)
from drivers.camera import Decoder

ROOT = Path(__file__).resolve().parent.parent


def zxing_texts(image: Any) -> list[str]:
    return [b.text for b in zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.Plain)]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# -- the split --------------------------------------------------------------------------------


def test_the_split_rule_is_pinned() -> None:
    # Computed once from the rule; a change of rule (or of its input) fails here.
    assert part_of("ean13/ean13-1__12.png") == "measure"
    assert part_of("qrcode/qrcode-2__16.png") == "tune"
    assert part_of("aztec/aztec-1__7.png") == "tune"
    assert part_of("none/none__1.png") == "measure"
    for rel in ("itf/itf-1__01.png", "pdf417/pdf417-2__15.png", "code39/code39-3__02.png"):
        odd = hashlib.sha256(rel.encode()).digest()[0] % 2 == 1
        assert part_of(rel) == ("measure" if odd else "tune")


def test_the_split_is_about_balanced_within_every_format() -> None:
    for fmt in (*FORMATS, "none"):
        names = [f"{fmt}/{fmt}-{i % 5}__{i:03d}.png" for i in range(400)]
        measured = sum(part_of(n) == "measure" for n in names)
        assert 160 <= measured <= 240, (fmt, measured)


def test_tune_and_measure_never_share_a_seed() -> None:
    keys = [("photo", f"ean13/{i}.png", kind) for i in range(50) for kind in VARIANTS]
    for seed in (1, 2, 99):
        tune = {seed_for("tune", seed, *k) for k in keys}
        measure = {seed_for("measure", seed, *k) for k in keys}
        assert len(tune) == len(measure) == len(keys)  # every image its own seed
        assert not tune & measure
    assert seed_for("measure", 1, "label", "qrcode", 3) == seed_for(
        "measure", 1, "label", "qrcode", 3
    )
    assert seed_for("measure", 1, "label", "qrcode", 3) != seed_for(
        "measure", 2, "label", "qrcode", 3
    )


# -- the generated images -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_synthetic_label_is_the_same_for_the_same_seed(fmt: str) -> None:
    a, b = (synthetic_label(fmt, random.Random(7)) for _ in range(2))
    assert a.text == b.text and a.module_px == b.module_px
    assert np.array_equal(a.image, b.image)
    assert MODULE_PX[0] <= a.module_px <= MODULE_PX[1]
    c = synthetic_label(fmt, random.Random(8))
    assert c.text != a.text or not np.array_equal(c.image, a.image)
    assert a.image.ndim == 3 and a.image.dtype == np.uint8


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_synthetic_label_reads_with_zxing_at_a_plain_module_width(fmt: str) -> None:
    # The generator's sanity: contents, encoding, quiet zone, printed text, background. At its
    # own drawn width (down to 1.5 px) a label may be hard for a reader: that is measured.
    for seed in range(8):
        label = synthetic_label(fmt, random.Random(seed), module_px=4.0)
        assert label.format == fmt
        assert label.text in zxing_texts(label.image), (seed, label.text)


def test_ean13_and_itf14_carry_a_valid_check_digit() -> None:
    from parcel.identify import gs1_mod10

    for seed in range(20):
        ean = synthetic_label("ean13", random.Random(seed)).text
        assert len(ean) == 13 and int(ean[-1]) == gs1_mod10(ean[:-1])
        itf = synthetic_label("itf", random.Random(seed)).text
        assert itf.isdigit() and len(itf) % 2 == 0
        if len(itf) == 14:
            assert int(itf[-1]) == gs1_mod10(itf[:-1])


@pytest.mark.parametrize("kind", VARIANTS)
def test_a_variant_is_the_same_for_the_same_seed_and_not_the_photo(kind: str) -> None:
    photo = synthetic_label("qrcode", random.Random(1)).image
    a, b = (variant(kind, photo, random.Random(5)) for _ in range(2))
    assert np.array_equal(a, b)
    assert a.shape != photo.shape or not np.array_equal(a, photo)


@pytest.mark.parametrize("kind", EMPTY_KINDS)
def test_an_empty_scene_holds_no_code(kind: str) -> None:
    for seed in range(3):
        scene = empty_scene(kind, random.Random(seed))
        assert np.array_equal(scene, empty_scene(kind, random.Random(seed)))
        assert zxing_texts(scene) == []


# -- the bench, end to end ------------------------------------------------------------------


def write_photo_set(root: Path) -> dict[str, int]:
    """A MANIFEST.tsv of a few synthetic labels and a blank photo in each part; returns how
    many labelled photos each part got."""
    import cv2

    rows = ["format\timage\texpected\tsource"]
    per_part: dict[str, int] = dict.fromkeys(PARTS, 0)
    for fmt in ("qrcode", "code128"):
        (root / fmt).mkdir()
        found = dict.fromkeys(PARTS, False)
        i = 0
        while not all(found.values()):
            rel = f"{fmt}/{fmt}-{i}.png"
            i += 1
            if found[part_of(rel)]:
                continue
            found[part_of(rel)] = True
            per_part[part_of(rel)] += 1
            label = synthetic_label(fmt, random.Random(i), module_px=4.0)
            cv2.imwrite(str(root / rel), label.image)
            # The manifest's expected files end in a newline, as ../shared's do.
            (root / rel).with_suffix(".txt").write_text(label.text + "\n")
            rows.append(f"{fmt}\t{rel}\t{rel[:-4]}.txt\tmade in the test")
    (root / "none").mkdir()
    blanks = {part_of(f"none/blank-{i}.png"): f"none/blank-{i}.png" for i in range(20)}
    for part in PARTS:  # one in each part
        cv2.imwrite(str(root / blanks[part]), np.full((480, 640, 3), 200, np.uint8))
        rows.append(f"none\t{blanks[part]}\t\tmade in the test")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    return per_part


@pytest.mark.slow
def test_bench_decode_reports_both_parts_and_the_targets(tmp_path: Path) -> None:
    per_part = write_photo_set(tmp_path)
    args = ["--json", "--images", str(tmp_path), "--synthetic", "1", "--empty", "1"]
    done = run("-m", "bench", "decode", *args, "--frames", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(done.stdout)
    assert set(r["parts"]) == {"tune", "measure"}
    for part, p in r["parts"].items():
        assert p["photos"] == {"labelled": per_part[part], "empty": 1}
        for reader, kinds in (
            ("ours", KINDS),
            ("zxing_alone", KINDS),
            ("pyzbar_alone", ("upright", "tilted_hard")),
        ):
            real = p["real"][reader]
            assert real["upright"]["labelled"] == per_part[part]
            assert set(real["rate_by_variant"]) == set(kinds) - {"upright"}
            assert set(p["synthetic"][reader]["rate_by_variant"]) == set(kinds)
            assert p["synthetic"][reader]["labelled"] == len(FORMATS) * len(kinds)
            assert set(p["synthetic"][reader]["per_format"]) == set(FORMATS)
            assert p["empty_scenes"][reader]["images"] == len(EMPTY_KINDS)
            assert "ms_median" in p["frames_1280x720"][reader]
        # Clean labels at 4 px a module: our decoder reads every one, and the tally says so.
        assert p["real"]["ours"]["upright"]["rate"] == 1.0
        assert p["real"]["ours"]["upright"]["per_format"] == {"code128": 1.0, "qrcode": 1.0}
        assert "ours_camera_budget" in p["real"]
        assert ("missed" in p) == (part == "measure")
    assert r["budget_ms"]["files"] is None and r["budget_ms"]["frames"] > 0
    assert set(r["targets_met"]) == {
        "upright_at_least_92pct",
        "tilted_at_least_85pct",
        "no_false_positives",
        "frame_1280x720_median_under_15ms",
    }
    assert all(isinstance(v, bool) for v in r["targets_met"].values())


def test_bench_decode_measures_one_part_when_asked(tmp_path: Path) -> None:
    per_part = write_photo_set(tmp_path)
    args = ["--images", str(tmp_path), "--synthetic", "0", "--empty", "0", "--frames", "0"]
    done = run("-m", "bench", "decode", "--json", "--part", "tune", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(done.stdout)
    assert list(r["parts"]) == ["tune"]
    assert r["parts"]["tune"]["photos"] == {"labelled": per_part["tune"], "empty": 1}
    # The targets are read on the measure part: not measured, not met either.
    assert r["targets_met"]["upright_at_least_92pct"] is None
    assert r["targets_met"]["tilted_at_least_85pct"] is None


# -- lastmile decode on files -------------------------------------------------------------------


def hard_files(tmp_path: Path) -> list[Path]:
    """A few labels as the bench makes them, some tilted, blurred or JPEG'd."""
    import cv2

    files = []
    for i, (fmt, kind) in enumerate(
        [
            ("code128", "tilted_hard"),
            ("datamatrix", "perspective"),
            ("ean13", "blur"),
            ("pdf417", "glare"),
            ("qrcode", "upright"),
            ("itf", "low_contrast"),
        ]
    ):
        image = synthetic_label(fmt, random.Random(100 + i)).image
        if kind != "upright":
            image = variant(kind, image, random.Random(200 + i))
        path = tmp_path / f"{i}-{fmt}-{kind}.png"
        cv2.imwrite(str(path), image)
        files.append(path)
    return files


def cli_symbols(*args: str) -> dict[str, list[tuple[str, str, str | None]]]:
    done = run("-m", "lastmile.cli", "decode", "--json", *args, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    return {d["path"]: [(s["text"], s["format"], s["aim"]) for s in d["symbols"]] for d in docs}


def test_lastmile_decode_gives_the_benchs_answer_on_the_same_files(tmp_path: Path) -> None:
    import cv2

    files = hard_files(tmp_path)
    from_cli = cli_symbols(*map(str, files))
    bench_read = ours(None)  # the bench's own reader for files
    decoder = Decoder(budget_ms=None)
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None
        assert [t for t, _, _ in from_cli[str(path)]] == bench_read(image), path.name
        assert from_cli[str(path)] == [(s.text, s.format, s.aim) for s in decoder.decode(image)]
    assert sum(bool(s) for s in from_cli.values()) >= 3  # not a comparison of empty answers


# A machine so loaded that every look at the clock finds another second gone.
SLOW_CLOCK = (
    "import itertools, sys, time\n"
    "ticks = itertools.count()\n"
    "time.perf_counter = lambda: float(next(ticks))\n"
    "from lastmile.cli import main\n"
    "sys.exit(main(['decode', '--json', *sys.argv[1:]]))\n"
)


def test_a_files_answer_does_not_depend_on_the_clock(tmp_path: Path) -> None:
    import cv2

    from bench.labels import shelf_scene  # a 1280 x 720 frame: the region search finds it

    # Labels the whole-frame pass misses (tilted 30 degrees): only the later steps, which a
    # budget can cut, read them.
    files = []
    for seed in range(3):
        label = synthetic_label("code128", random.Random(seed), module_px=3.0)
        tilted = variant("tilted", label.image, random.Random(seed))
        path = tmp_path / f"tilted-{seed}.png"
        cv2.imwrite(str(path), tilted)
        files.append(path)
    scene, _ = shelf_scene(random.Random(4))
    cv2.imwrite(str(tmp_path / "shelf.png"), scene)
    files.append(tmp_path / "shelf.png")
    names = list(map(str, files))

    normal = cli_symbols(*names)
    done = run("-c", SLOW_CLOCK, *names, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    slow = {
        d["path"]: [(s["text"], s["format"], s["aim"]) for s in d["symbols"]]
        for d in map(json.loads, done.stdout.splitlines())
    }
    assert slow == normal
    assert sum(len(s) for s in normal.values()) >= 3
    # The slow clock does bite a decoder with a budget: it stops after the first pass.
    budgeted = run("-c", SLOW_CLOCK, "--budget-ms", "15", *names, timeout=300)
    found = sum(len(json.loads(line)["symbols"]) for line in budgeted.stdout.splitlines())
    assert found < sum(len(s) for s in normal.values())
