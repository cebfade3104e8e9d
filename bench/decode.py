"""`bench decode`: how many barcodes the camera decoder reads on images it was never tuned on.

Why it is built this way: on the public photo set (``../shared/benchmarks/barcodes``) the
decoder read 98 % while similar photos it had never seen gave 83-86 %: it fitted its photos.
So the figures that count come from images kept away from tuning, and every image comes with
harder copies of itself drawn from seeds, and with labels and empty scenes made from scratch.

The held-out discipline (one rule, `part_of`, that the decoder's tuning uses too):

- a photo is in the MEASURE part when the first byte of the SHA-256 of its manifest path
  (``ean13/ean13-1__12.png``) is odd, else in the TUNE part. Tune on the tune part; the
  measure part's figures are the ones the targets read.
- the decoder was tuned on the whole set before this split existed: the measure part's
  photos upright are not truly unseen, and their figure flatters it; their variants, the
  synthetic labels and the empty scenes are new to it.
- every generated image (a photo's variant, a synthetic label, an empty scene, a frame) has
  its own seed, `seed_for`: a hash of ``--seed`` and what the image is (the photo's path and
  the variant kind; the format and number of a label...), made even for the tune part and odd
  for the measure part. No measure image shares a seed with a tune image, whatever ``--seed``;
  and a photo's variants do not change with ``--limit`` or ``--part``.

What is measured, per part (``--part tune|measure|all``, default all: both, separately), for
our `drivers.camera.Decoder` and, on the same images in the same run, zxing-cpp alone
(``read_barcodes`` with its defaults, Plain text) and pyzbar alone (the gray image; to keep
the run within a few minutes, only upright and ``tilted_hard`` among the kinds below):

- photos (``--images``, its MANIFEST.tsv): the rate upright, per format; and on seeded
  variants of each photo (`bench.labels.variant`: ``tilted``, ``perspective``, ``blur``,
  ``low_contrast``, ``glare``, ``jpeg`` and ``tilted_hard``, the issue's mix of tilt 10-40
  degrees, perspective, blur and JPEG loss), the rate per variant kind. An image counts when
  one symbol's text equals the expected file's content exactly, after removing one trailing
  newline (LF or CR LF; as it is counts too); ``.bin`` expected files are latin-1 text.
- synthetic labels of every format (`bench.labels.synthetic_label`, ``--synthetic`` per
  format), upright and as the same variant kinds: the rate per format and per kind.
- empty scenes (`bench.labels.empty_scene`, ``--empty`` per kind): clutter, textures, print,
  blinds, grilles.
- 1280 x 720 frames of a van's shelf with a shipping label (``--frames``): milliseconds and
  whether both codes were read.
- false symbols, on every image whose content is known: any symbol on a ``none/`` photo, its
  variants, an empty scene; any other text than the label's on a synthetic label or a frame;
  on a variant of a labelled photo, a text that neither is expected nor was read upright by
  any reader. A labelled photo upright may hold a second real code (the manifest names one:
  ``code39-3`` shows two labels, ``qrcode-2__16`` a QR in a QR) beside a misread: its other
  texts are reported (``unexpected_on_upright``), not counted.
- milliseconds per image (median, 90th percentile), and each reader's seconds in all.

Files are not frames: photos, variants, labels and empty scenes are decoded as ``lastmile
decode`` decodes a file, with no time budget, so the figures are the same on a busy machine;
the frames get the camera's budget (`drivers.camera.DEFAULT_BUDGET_MS`), and the same
photos upright and ``tilted_hard`` are also reported under it (``ours_camera_budget``): what
the budget costs. ``--budget-ms`` sets one budget for files and frames alike.

OpenCV runs on one thread (``cv2.setNumThreads(1)``): a figure is what one core gives.
Targets (issue 13), on the measure part, reported in ``targets_met``, never asserted: >= 92 %
upright, >= 85 % ``tilted_hard``, no false symbol on anything measured (both parts, frames
included), a 1280 x 720 frame's median under 15 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.labels import (
    EMPTY_KINDS,
    FORMATS,
    VARIANTS,
    empty_scene,
    shelf_scene,
    synthetic_label,
    variant,
)
from bench.rig import BenchError, host_facts, percentile, rounded

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "benchmarks" / "barcodes"

Part = Literal["tune", "measure"]
PARTS: tuple[Part, ...] = ("tune", "measure")
KINDS = ("upright", *VARIANTS)

TARGET_UPRIGHT_RATE = 0.92
TARGET_TILTED_RATE = 0.85
TARGET_FRAME_MS = 15.0
MISSED_LISTED = 30  # names per missed list; the count is always whole
EXAMPLES_LISTED = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        help=f"the photo set with MANIFEST.tsv (default {DEFAULT_IMAGES})",
    )
    p.add_argument(
        "--part",
        choices=("tune", "measure", "all"),
        default="all",
        help="which part of the held-out split to measure (default all: both, separately)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="at most this many photos per format and part, none/ included (default: all)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of every generated image (default 1)")
    p.add_argument(
        "--synthetic", type=int, default=8, help="synthetic labels per format and part (8)"
    )
    p.add_argument("--empty", type=int, default=4, help="empty scenes per kind and part (4)")
    p.add_argument("--frames", type=int, default=30, help="1280x720 frames per part (30)")
    p.add_argument(
        "--budget-ms",
        type=float,
        default=None,
        help="one time budget for files and frames (default: none for files, the camera's "
        "for frames)",
    )
    p.add_argument("--dir", type=Path, default=None, help="accepted for symmetry; writes nothing")


# -- the held-out discipline ------------------------------------------------------------------


def part_of(rel: str) -> Part:
    """The part of the split a photo belongs to, from its manifest path (``ean13/x.png``):
    ``measure`` when the first byte of the path's SHA-256 is odd, else ``tune``.

    A hash, not a shuffle: a photo keeps its part whatever else the set holds, a new photo
    lands in either part at random, and the rule is written in one line that a decoder's
    tuning applies too (tune on ``tune``; never look at ``measure``).
    """
    return "measure" if hashlib.sha256(rel.encode()).digest()[0] % 2 == 1 else "tune"


def seed_for(part: Part, seed: int, *keys: str | int) -> int:
    """The seed of one generated image: a hash of ``seed`` and ``keys`` (what the image is),
    even for the tune part and odd for the measure part, so the two never share one."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:7], "big") * 2 + (part == "measure")


# -- the photos ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    rel: str  # the manifest's image path: the photo's name everywhere
    format: str  # the manifest's format column; "none" for photos without a barcode
    path: Path
    expected: frozenset[str] | None  # texts that count as a read; None for none/
    part: Part


def load_photos(images: Path, limit: int, parts: Iterable[Part]) -> list[Photo]:
    manifest = images / "MANIFEST.tsv"
    if not manifest.is_file():
        raise BenchError(
            f"no photo set at {images} (MANIFEST.tsv missing): the benchmark needs "
            "../shared/benchmarks/barcodes next to the repository, or --images"
        )
    wanted = set(parts)
    photos: list[Photo] = []
    taken: Counter[tuple[str, str]] = Counter()
    for line in manifest.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        fmt, rel, expected_path, *_ = line.split("\t")
        part = part_of(rel)
        if part not in wanted or (limit and taken[fmt, part] >= limit):
            continue
        taken[fmt, part] += 1
        photos.append(Photo(rel, fmt, images / rel, _expected(images, expected_path), part))
    if not photos:
        raise BenchError(f"{manifest} lists no photos in the part(s) {sorted(wanted)}")
    return photos


def _expected(images: Path, expected_path: str) -> frozenset[str] | None:
    if not expected_path:
        return None
    data = (images / expected_path).read_bytes()
    if expected_path.endswith(".bin"):
        return frozenset({data.decode("latin-1")})
    text = data.decode("utf-8")
    accepted = {text}
    for newline in ("\r\n", "\n"):
        if text.endswith(newline):
            accepted.add(text[: -len(newline)])
            break
    return frozenset(accepted)


# -- the readers ----------------------------------------------------------------------------

Reader = Callable[[Any], list[str]]


def ours(budget_ms: float | None) -> Reader:
    """Our decoder as ``lastmile decode`` runs it: ``budget_ms`` None is no budget at all."""
    from drivers.camera import Decoder

    decoder = Decoder(budget_ms=budget_ms)
    decoder.warm_up()
    return lambda image: [s.text for s in decoder.decode(image)]


def zxing_alone() -> Reader:
    import zxingcpp

    def read(image: Any) -> list[str]:
        return [b.text for b in zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.Plain)]

    return read


def pyzbar_alone() -> Reader:
    import cv2
    from pyzbar import pyzbar

    def read(image: Any) -> list[str]:
        out = []
        # pyzbar takes a BGR array's first channel as the gray image: give it the real gray.
        for d in pyzbar.decode(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)):
            try:
                out.append(d.data.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(d.data.decode("latin-1"))
        return out

    return read


# -- tallies --------------------------------------------------------------------------------


@dataclass
class Tally:
    """One reader's results on one group of images (a part's photos of one variant kind...)."""

    ok: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    ms: list[float] = field(default_factory=list)
    false: list[str] = field(default_factory=list)
    false_images: int = 0
    unexpected: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        fmt: str,
        expected: frozenset[str] | None,
        texts: list[str],
        ms: float,
        *,
        known: frozenset[str] | None,
    ) -> None:
        """``known``: texts that are not false here though not expected (None: any other
        text is reported as unexpected, not counted as false)."""
        self.ms.append(ms)
        others = [t for t in texts if expected is None or t not in expected]
        if expected is not None:
            self.total[fmt] += 1
            if len(others) < len(texts):
                self.ok[fmt] += 1
            else:
                self.missed.append(name)
        if known is None:
            self.unexpected += [f"{name}: {_shown(t)}" for t in others]
            return
        false = [t for t in others if t not in known]
        self.false += [f"{name}: {_shown(t)}" for t in false]
        self.false_images += bool(false)

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.total += other.total
        self.ms += other.ms
        self.false += other.false
        self.false_images += other.false_images
        self.unexpected += other.unexpected
        self.missed += other.missed

    @property
    def labelled(self) -> int:
        return sum(self.total.values())

    @property
    def rate(self) -> float | None:
        return rounded(sum(self.ok.values()) / self.labelled, 4) if self.labelled else None

    def figures(self, *, per_format: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rate": self.rate,
            "decoded": sum(self.ok.values()),
            "labelled": self.labelled,
        }
        if per_format:
            out["per_format"] = {
                f: rounded(self.ok[f] / n, 4) for f, n in sorted(self.total.items())
            }
        return out | _ms(self.ms)


def _ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"ms_median": None, "ms_p90": None}
    return {
        "ms_median": rounded(statistics.median(values), 2),
        "ms_p90": rounded(percentile(values, 90), 2),
    }


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


# -- one part -------------------------------------------------------------------------------

# pyzbar alone, the slowest reader and the weaker baseline, reads only the images the targets
# are about (and empty scenes, frames): the run stays within a few minutes.
ONLY_KINDS = {"pyzbar_alone": ("upright", "tilted_hard")}


@dataclass
class PartRun:
    """Everything measured on one part, by group, kind and reader."""

    tallies: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    frame_ms: dict[str, list[float]] = field(default_factory=dict)
    frames_read: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    photos: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # decoding time by reader

    def tally(self, group: str, kind: str, reader: str) -> Tally:
        return self.tallies.setdefault((group, kind, reader), Tally())

    def group(self, group: str, reader: str, kinds: Iterable[str] = KINDS) -> Tally:
        whole = Tally()
        for kind in kinds:
            if (group, kind, reader) in self.tallies:
                whole.merge(self.tallies[group, kind, reader])
        return whole

    def read(self, name: str, read: Reader, image: Any) -> tuple[list[str], float]:
        started = time.perf_counter()
        texts = read(image)
        ms = (time.perf_counter() - started) * 1000
        self.seconds[name] = self.seconds.get(name, 0.0) + ms / 1000
        return texts, ms


def _readers_of(readers: dict[str, Reader], kind: str) -> Iterable[tuple[str, Reader]]:
    return ((n, r) for n, r in readers.items() if kind in ONLY_KINDS.get(n, (kind,)))


def measure_part(
    part: Part,
    photos: list[Photo],
    args: argparse.Namespace,
    readers: dict[str, Reader],
    camera: dict[str, Reader],
) -> PartRun:
    """Decode the part's photos and variants, synthetic labels, empty scenes and frames with
    every reader, image by image (each image's readers one after the other, so a change of
    the machine's load falls on all of them alike)."""
    import cv2

    run = PartRun()
    for photo in photos:
        image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        if image is None:
            raise BenchError(f"cannot read {photo.path}")
        run.photos["labelled" if photo.expected is not None else "empty"] += 1
        # A photo upright: another text may be a second real code (reported, not counted);
        # none/ photos hold nothing, so anything there is false.
        known: frozenset[str] | None = frozenset() if photo.expected is None else None
        seen: set[str] = set()
        for name, read in readers.items():
            texts, ms = run.read(name, read, image)
            seen.update(texts)
            run.tally("real", "upright", name).add(
                photo.rel, photo.format, photo.expected, texts, ms, known=known
            )
        _camera_budget(run, camera, photo, image, "upright", known)
        # On a variant, what some reader read upright is no news; anything else is false.
        known_upright = frozenset(seen) if photo.expected is not None else frozenset()
        for kind in VARIANTS:
            rng = random.Random(seed_for(part, args.seed, "photo", photo.rel, kind))
            distorted = variant(kind, image, rng)
            name_of = f"{photo.rel}@{kind}"
            for name, read in _readers_of(readers, kind):
                texts, ms = run.read(name, read, distorted)
                run.tally("real", kind, name).add(
                    name_of, photo.format, photo.expected, texts, ms, known=known_upright
                )
            if kind == "tilted_hard":
                _camera_budget(run, camera, photo, distorted, kind, known_upright)

    for fmt in FORMATS:
        for i in range(args.synthetic):
            label = synthetic_label(fmt, random.Random(seed_for(part, args.seed, "label", fmt, i)))
            expected = frozenset({label.text})
            for kind in KINDS:
                image = label.image
                if kind != "upright":
                    seeded = random.Random(seed_for(part, args.seed, "label", fmt, i, kind))
                    image = variant(kind, label.image, seeded)
                for name, read in _readers_of(readers, kind):
                    texts, ms = run.read(name, read, image)
                    run.tally("synthetic", kind, name).add(
                        f"synthetic/{fmt}/{i}@{kind}", fmt, expected, texts, ms, known=frozenset()
                    )

    for kind in EMPTY_KINDS:
        for i in range(args.empty):
            image = empty_scene(kind, random.Random(seed_for(part, args.seed, "empty", kind, i)))
            for name, read in readers.items():
                texts, ms = run.read(name, read, image)
                run.tally("empty", kind, name).add(
                    f"empty/{kind}/{i}", "none", None, texts, ms, known=frozenset()
                )

    for i in range(args.frames):
        image, codes = shelf_scene(random.Random(seed_for(part, args.seed, "frame", i)))
        run.frames += 1
        for name, read in camera.items():
            if name == "ours_camera_budget":
                continue
            texts, ms = run.read(f"{name} (frames)", read, image)
            run.frame_ms.setdefault(name, []).append(ms)
            run.frames_read[name] += codes <= set(texts)
            foreign = [t for t in texts if t not in codes]
            run.tally("frames", "frame", name).add(
                f"frame/{i}", "frame", None, foreign, ms, known=frozenset()
            )
    return run


def _camera_budget(
    run: PartRun,
    camera: dict[str, Reader],
    photo: Photo,
    image: Any,
    kind: str,
    known: frozenset[str] | None,
) -> None:
    """What the camera's time budget costs: the upright and ``tilted_hard`` photos again."""
    read = camera.get("ours_camera_budget")
    if read is not None:
        texts, ms = run.read("ours_camera_budget", read, image)
        run.tally("real", kind, "ours_camera_budget").add(
            photo.rel, photo.format, photo.expected, texts, ms, known=known
        )


# -- the report -----------------------------------------------------------------------------

BASELINES = ("zxing_alone", "pyzbar_alone")
READERS = ("ours", *BASELINES)


def _rates(run: PartRun, group: str, reader: str, kinds: Iterable[str]) -> dict[str, Any]:
    return {
        k: run.tallies[group, k, reader].rate for k in kinds if (group, k, reader) in run.tallies
    }


def part_report(run: PartRun, *, listed: bool) -> dict[str, Any]:
    """One part's figures; ``listed``: with the names of our decoder's misses."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return rounded(a / b, 3) if a is not None and b else None

    real: dict[str, Any] = {}
    synthetic: dict[str, Any] = {}
    empty: dict[str, Any] = {}
    frames: dict[str, Any] = {"frames": run.frames}
    false_symbols: dict[str, int] = {}
    for name in READERS:
        photos = run.group("real", name)
        real[name] = {
            "upright": run.tally("real", "upright", name).figures(),
            "tilted_hard": run.tally("real", "tilted_hard", name).figures(),
            "rate_by_variant": _rates(run, "real", name, VARIANTS),
            "false_symbols": len(photos.false),
            "false_images": photos.false_images,
            "unexpected_on_upright": len(photos.unexpected),
        }
        labels = run.group("synthetic", name)
        synthetic[name] = {
            **labels.figures(),
            "rate_by_variant": _rates(run, "synthetic", name, KINDS),
            "false_symbols": len(labels.false),
            "false_images": labels.false_images,
        }
        scenes = run.group("empty", name, EMPTY_KINDS)
        empty[name] = {
            "images": len(scenes.ms),
            "false_images": scenes.false_images,
            "false_symbols": len(scenes.false),
            **_ms(scenes.ms),
        }
        seen = run.tally("frames", "frame", name)
        frames[name] = {
            **_ms(run.frame_ms.get(name, [])),
            "all_codes_read": rounded(run.frames_read[name] / run.frames, 3)
            if run.frames
            else None,
            "false_symbols": len(seen.false),
        }
        false_symbols[name] = sum(
            len(t.false) for (_, _, reader), t in run.tallies.items() if reader == name
        )
    if ("real", "upright", "ours_camera_budget") in run.tallies:
        real["ours_camera_budget"] = {
            k: run.tally("real", k, "ours_camera_budget").figures(per_format=False)
            for k in ("upright", "tilted_hard")
        }
    ratios: dict[str, float | None] = {}
    for base in BASELINES:
        for kind in ("upright", "tilted_hard"):
            ratios[f"{kind}_vs_{base}"] = ratio(
                real["ours"][kind]["rate"], real[base][kind]["rate"]
            )
        ours_hard = synthetic["ours"]["rate_by_variant"].get("tilted_hard")
        base_hard = synthetic[base]["rate_by_variant"].get("tilted_hard")
        ratios[f"synthetic_tilted_hard_vs_{base}"] = ratio(ours_hard, base_hard)
    # Over every kind: pyzbar alone reads only some (ONLY_KINDS), zxing-cpp alone all of them.
    ratios["synthetic_vs_zxing_alone"] = ratio(
        synthetic["ours"]["rate"], synthetic["zxing_alone"]["rate"]
    )
    ratios["frame_ms_vs_zxing_alone"] = ratio(
        frames["ours"]["ms_median"], frames["zxing_alone"]["ms_median"]
    )
    report: dict[str, Any] = {
        "photos": {"labelled": run.photos["labelled"], "empty": run.photos["empty"]},
        "real": real,
        "synthetic": synthetic,
        "empty_scenes": empty,
        "frames_1280x720": frames,
        "false_symbols": false_symbols,
        "ratios": ratios,
        "decode_seconds": {name: rounded(sec, 1) for name, sec in sorted(run.seconds.items())},
    }
    if listed:
        report["missed"] = {
            what: {"count": len(names), "first": names[:MISSED_LISTED]}
            for what, names in (
                ("upright", run.tally("real", "upright", "ours").missed),
                ("tilted_hard", run.tally("real", "tilted_hard", "ours").missed),
                ("synthetic", run.group("synthetic", "ours").missed),
            )
        }
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - the venv has it
        raise BenchError(f"OpenCV is not installed: {exc}") from exc
    from drivers.camera import DEFAULT_BUDGET_MS

    if args.budget_ms is not None and not 0 < args.budget_ms < float("inf"):
        raise BenchError("--budget-ms must be a positive number of milliseconds")
    for name in ("limit", "synthetic", "empty", "frames"):
        if getattr(args, name) < 0:
            raise BenchError(f"--{name} must not be negative")
    cv2.setNumThreads(1)
    started = time.perf_counter()
    parts: tuple[Part, ...] = PARTS if args.part == "all" else (args.part,)
    photos = load_photos(args.images, args.limit, parts)
    frame_budget = args.budget_ms if args.budget_ms is not None else DEFAULT_BUDGET_MS
    readers = {"ours": ours(args.budget_ms), "zxing_alone": zxing_alone()}
    readers["pyzbar_alone"] = pyzbar_alone()
    # The frames' decoder is a camera's: its own instance, learning the costs of frames.
    camera = {"ours": ours(frame_budget), "zxing_alone": readers["zxing_alone"]}
    camera["pyzbar_alone"] = readers["pyzbar_alone"]
    if args.budget_ms is None:
        camera["ours_camera_budget"] = ours(DEFAULT_BUDGET_MS)
    warm = cv2.imread(str(photos[0].path), cv2.IMREAD_COLOR)
    for read in (*readers.values(), *camera.values()):  # first calls load libraries, caches
        read(warm)

    runs = {
        part: measure_part(part, [p for p in photos if p.part == part], args, readers, camera)
        for part in parts
    }
    reports = {part: part_report(r, listed=part == "measure") for part, r in runs.items()}
    false_examples = [
        f"{part}/{group}/{kind}: {line}"
        for part, r in runs.items()
        for (group, kind, reader), t in r.tallies.items()
        if reader == "ours"
        for line in t.false
    ]
    unexpected = [
        f"{part}: {line}"
        for part, r in runs.items()
        for line in r.tally("real", "upright", "ours").unexpected
    ]
    measure = reports.get("measure")
    ours_false = sum(r["false_symbols"]["ours"] for r in reports.values())
    targets: dict[str, bool | None] = {
        "upright_at_least_92pct": None,
        "tilted_at_least_85pct": None,
        "no_false_positives": ours_false == 0,
        "frame_1280x720_median_under_15ms": None,
    }
    if measure is not None:
        upright = measure["real"]["ours"]["upright"]["rate"]
        tilted = measure["real"]["ours"]["tilted_hard"]["rate"]
        frame_ms = measure["frames_1280x720"]["ours"]["ms_median"]
        targets["upright_at_least_92pct"] = upright is not None and upright >= TARGET_UPRIGHT_RATE
        targets["tilted_at_least_85pct"] = tilted is not None and tilted >= TARGET_TILTED_RATE
        targets["frame_1280x720_median_under_15ms"] = (
            frame_ms < TARGET_FRAME_MS if frame_ms is not None else None
        )
    return {
        "benchmark": "decode",
        "images": str(args.images),
        "part": args.part,
        "seed": args.seed,
        "limit": args.limit,
        "synthetic_per_format": args.synthetic,
        "empty_per_kind": args.empty,
        "budget_ms": {"files": args.budget_ms, "frames": frame_budget},
        "parts": reports,
        "false_symbol_examples": {
            "count": len(false_examples),
            "first": false_examples[:EXAMPLES_LISTED],
        },
        "unexpected_on_upright": {"count": len(unexpected), "first": unexpected[:EXAMPLES_LISTED]},
        "targets_met": targets,
        "seconds": rounded(time.perf_counter() - started, 1),
        "opencv_threads": cv2.getNumThreads(),
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    lines = []
    for part, p in r["parts"].items():
        real, syn = p["real"], p["synthetic"]
        lines.append(
            f"{part} part ({p['photos']['labelled']} labelled photos, {p['photos']['empty']} "
            "empty): "
            + "; ".join(
                f"{name} upright {real[name]['upright']['rate']}, tilted_hard "
                f"{real[name]['tilted_hard']['rate']}, synthetic {syn[name]['rate']}"
                for name in READERS
            )
        )
        kinds = real["ours"]["rate_by_variant"]
        lines.append("  ours by variant: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        lines.append(
            "  ours synthetic by format: "
            + ", ".join(f"{k} {v}" for k, v in syn["ours"]["per_format"].items())
        )
        f = p["frames_1280x720"]
        lines.append(
            f"  false symbols {p['false_symbols']}; 1280x720: ours median "
            f"{f['ours']['ms_median']} ms (all codes read {f['ours']['all_codes_read']}), "
            f"zxing alone {f['zxing_alone']['ms_median']} ms"
        )
    lines.append(f"targets met: {r['targets_met']}")
    return "\n".join(lines)
