"""`python -m bench BENCHMARK [--json]`: measured figures, each against a baseline.

Every benchmark measures its own figure and its baseline in the same run, on the same machine
and disk, and prints one JSON object (`--json`) or one readable line. The exit status says
whether the measurement ran (0) or could not (2), never whether a target was met: that is the
`targets_met` field, for a person or a CI job to judge.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from bench import (
    camera,
    chaos,
    console,
    decode,
    fleet,
    fuzz,
    idle,
    locker,
    photo,
    route,
    scan,
    sync,
)
from bench.rig import BenchError

BENCHMARKS: dict[str, tuple[ModuleType, str]] = {
    "sync": (sync, "drain a 100,000-event journal through Mosquitto, "
                   "vs one JSON message per event"),
    "scan": (scan, "last scanner byte on the pty to committed event, vs a bare SQLite commit"),
    "idle": (idle, "CPU share and resident memory of an idle van process, "
                   "vs a sleeping python"),
    "locker": (locker, "pickup code's last key to the unlock frame, vs a bare LockBus.unlock; "
                       "CPU of a locker polling 3 boards, vs a sleeping python"),
    "route": (route, "length of the depot's planned rounds and planning time, vs nearest "
                     "neighbour alone and the import's order"),
    "decode": (decode, "camera decoder on a tune and a held-out measure part of real "
                       "barcode photos, their seeded variants, synthetic labels, empty scenes "
                       "and 1280x720 frames, vs zxing-cpp alone and pyzbar alone"),
    "camera": (camera, "CPU of a camera reader facing an empty doorstep and ms to read a label "
                       "held up, vs decoding every frame and vs the capture alone"),
    "photo": (photo, "proof-of-delivery photo size and encode time, vs the full-size JPEG a "
                     "camera app saves"),
    "fleet": (fleet, "a fleet's morning (2,000 backlogs, then steady scans) through Mosquitto "
                     "into the real depot process, each set-up vs the SQLite baseline"),
    "chaos": (chaos, "vans and a locker as real processes under N seeded faults (kills, broker "
                     "restarts, cuts, full disk, journal damage, clock steps); every confirmed "
                     "fact accounted for, vs a fault-free baseline"),
    "console": (console, "the operators' console pages on a depot of 10,000 parcels: p50/p95 "
                         "ms and bytes per page, vs /health"),
    "fuzz": (fuzz, "every parser of outside bytes under hypothesis (a million inputs): crashes, "
                   "hangs, slowest input, vs bytes.decode on the same inputs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug) to stderr")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        add: Callable[[argparse.ArgumentParser], None] = module.add_arguments
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = BENCHMARKS[args.benchmark][0]
    try:
        report: dict[str, Any] = module.run(args)
    except BenchError as exc:
        print(f"bench {args.benchmark}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(module.summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
