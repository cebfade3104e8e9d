"""`bench scan`: from the scanner's last byte to the courier's beep, against a bare commit.

What is measured: the van's real scan path in this process — a `SimulatedScanner` writes
`]C0RB123456785GB\\r\\n` to a pseudo-terminal, `drivers.scanner.ScannerReader` reads and frames
it, `edge.van.ScanDesk` identifies the parcel and appends the event to a `Journal` (WAL,
`synchronous=FULL`), and the desk's `Feedback.confirmed()` — called right after the commit —
records `time.perf_counter()`. The latency of a scan runs from the moment the write of its last
byte to the pty returned to that confirmation. Scans are distinct valid labels, one at a time:
the next is written only after the previous one is confirmed (and a short gap), so none queues.

Why: the courier hears the beep only after the scan is durable; the durable commit (an fsync)
is the floor of that latency and everything else the van does should be small beside it. The
baseline is that floor: a single-row INSERT + COMMIT into a bare SQLite file with the same
settings, in the same directory. Baseline commits and scans alternate, so both see the disk in
the same state; the mount of the directory is reported because the figure is the disk's.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from bench.rig import BenchError, describe_mount, host_facts, percentile, rounded, scratch_dir
from drivers.scanner import ScanFramer, ScannerReader
from edge.van import SUFFIXES, ScanDesk
from parcel.identify import identify
from simulators.parcels import random_label
from simulators.scanner import SimulatedScanner
from sync.clock import SystemClock
from sync.journal import Journal
from sync.wire import Event, canonical_payload

DEVICE = "van-bench"
TARGET_P99_RATIO = 2.0  # our p99 at most twice the bare commit's (from the issue)
CONFIRM_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scans", type=int, default=300, help="scans measured (default 300)")
    p.add_argument("--warmup", type=int, default=10,
                   help="scans made first and not counted (default 10)")
    p.add_argument("--gap-ms", type=float, default=20.0,
                   help="pause after each confirmation before the next scan (default 20)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the labels")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the scratch directory here (default: the current directory; "
                        "not tmpfs, where fsync is free)")


class StopwatchFeedback:
    """The beeper: notes when each confirmation (or refusal) came, and wakes the bench."""

    def __init__(self) -> None:
        self.heard = threading.Event()
        self.at = 0.0
        self.event: Event | None = None
        self.refusal: str | None = None

    def arm(self) -> None:
        self.heard.clear()
        self.event = None
        self.refusal = None

    def confirmed(self, event: Event) -> None:
        self.at = time.perf_counter()
        self.event = event
        self.heard.set()

    def refused(self, reason: str, raw: str) -> None:
        self.at = time.perf_counter()
        self.refusal = f"{reason} ({raw!r})"
        self.heard.set()


class BareCommit:
    """The floor: one row, one transaction, WAL and synchronous=FULL, like the journal's."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL)")

    def commit_ms(self, payload: str) -> float:
        started = time.perf_counter()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO events(payload) VALUES (?)", (payload,))
        self._db.execute("COMMIT")
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._db.close()


def clock_check_ms(times: int = 5) -> float:
    """Median cost of the wall clock's "is it synchronised?" check, which `SystemClock` redoes
    at most once a minute inside an append. Scans here come milliseconds apart, so only the
    first pays it; a van's scans, minutes apart, would pay it nearly every time."""
    costs = []
    for _ in range(times):
        clock = SystemClock()
        started = time.perf_counter()
        clock.wall_synced()
        costs.append((time.perf_counter() - started) * 1000)
    return percentile(costs, 50)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scans < 1 or args.warmup < 0 or args.gap_ms < 0:
        raise BenchError("--scans must be at least 1, --warmup and --gap-ms not negative")
    rng = random.Random(args.seed)
    labels = [random_label(rng) for _ in range(args.warmup + args.scans)]
    ours: list[float] = []
    floor: list[float] = []
    warmup_ms: list[float] = []
    with scratch_dir(args.dir, "scan") as workdir:
        mount = describe_mount(workdir)
        feedback = StopwatchFeedback()
        bare = BareCommit(workdir / "bare.db")
        with Journal(workdir / f"{DEVICE}.journal.db", DEVICE) as journal, \
                SimulatedScanner(suffix=SUFFIXES["crlf"]) as scanner:
            desk = ScanDesk(journal, feedback)
            connected = threading.Event()
            reader = ScannerReader(scanner.path, on_scan=desk.on_scan, on_reject=desk.on_reject,
                                   framer=ScanFramer(SUFFIXES["crlf"]),
                                   on_connection=lambda up: connected.set() if up else None)
            with reader:
                if not connected.wait(CONNECT_TIMEOUT_S):
                    raise BenchError(f"the scanner reader did not open {scanner.path}")
                for i, label in enumerate(labels):
                    parcel = identify(label.data, label.aim)  # the row the desk will write
                    baseline_ms = bare.commit_ms(canonical_payload(
                        {"parcel": parcel.id, "kind": parcel.kind, "aim": label.aim,
                         "raw": label.data}))
                    feedback.arm()
                    scanner.scan(label.data, aim=label.aim)
                    written = time.perf_counter()
                    if not feedback.heard.wait(CONFIRM_TIMEOUT_S):
                        raise BenchError(f"scan {i} ({label.data!r}) not confirmed in "
                                         f"{CONFIRM_TIMEOUT_S} s")
                    if feedback.refusal is not None:
                        raise BenchError(f"scan {i} refused: {feedback.refusal}")
                    latency_ms = (feedback.at - written) * 1000
                    if i < args.warmup:
                        warmup_ms.append(latency_ms)
                    else:
                        ours.append(latency_ms)
                        floor.append(baseline_ms)
                    time.sleep(args.gap_ms / 1000)
        bare.close()
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    b50, b99 = percentile(floor, 50), percentile(floor, 99)
    return {
        "benchmark": "scan",
        "n": len(ours),
        "p50_ms": rounded(p50),
        "p99_ms": rounded(p99),
        "max_ms": rounded(max(ours)),
        "baseline_p50_ms": rounded(b50),
        "baseline_p99_ms": rounded(b99),
        "baseline_max_ms": rounded(max(floor)),
        "ratio_p50": rounded(p50 / b50, 2),
        "ratio_p99": rounded(p99 / b99, 2),
        "targets": {"ratio_p99_max": TARGET_P99_RATIO},
        "targets_met": p99 / b99 <= TARGET_P99_RATIO,
        "first_scan_ms": rounded(warmup_ms[0]) if warmup_ms else None,
        "clock_sync_check_ms": rounded(clock_check_ms()),
        "warmup": len(warmup_ms),
        "gap_ms": args.gap_ms,
        "mount": mount,
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"scan: {r['n']} scans, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; bare commit p50 "
        f"{r['baseline_p50_ms']} ms, p99 {r['baseline_p99_ms']} ms; p99 ratio {r['ratio_p99']}x "
        f"on {r['mount'].get('fstype', '?')} {r['mount'].get('mounted_on', '?')}; "
        f"targets {'met' if r['targets_met'] else 'NOT met'}"
    )
