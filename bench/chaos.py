"""`bench chaos`: a small fleet of real device processes under a seeded storm of faults.

What runs: 2-3 vans (`lastmile van`) and a parcel locker (`lastmile locker`) as processes of
their own on simulated hardware (scanner, keypad and lock-board simulators on pseudo-terminals),
each reaching a private Mosquitto (`simulators.broker.Broker`, plain TCP, no persistence)
through its own link proxy (`simulators.link.LinkProxy`), and the whole depot service as a
process (`lastmile depot --config … --workers 2`, SQLite). Simulated couriers scan a fresh,
unique barcode every scan, so every fact a device confirmed is recognisable at the depot: a van
confirms a scan by its JSON line (`{"confirmed": seq, "uuid": …}`, the beeper's stand-in), the
locker by showing "parcel stored" after the door closed on the parcel.

Meanwhile N faults drawn from `--seed` are injected, in lanes that overlap in time (one lane per
device, one for the depot and the broker): SIGKILL of a device (restarted after a pause), of the
whole depot or of one depot worker (its supervisor restarts it); a broker restart without
persistence; a link reset or black hole; a full disk; damage to a killed device's journal (WAL
cut short or scribbled on, one byte of an unacknowledged event changed, the journal emptied or
deleted); a step of one device's wall clock, forwards or backwards. The plan (kinds, targets,
order, clock steps) is fixed by the seed; the instants are not.

How each fault is made, and what was left out:

- `disk_full`: `prlimit(RLIMIT_FSIZE)` of the running device set to 0 for a while, then lifted.
  Every write to a regular file then fails (EFBIG), as on a full card, and no root trick is
  needed; SQLite reports EFBIG as an I/O error, not SQLITE_FULL, so the device refuses the scan
  through its "journal failed" path ("scan NOT recorded"), which the harness counts as refused.
  The device's log goes through a pipe so that the limit does not silence it.
- `event_byte`: the killed device's journal is checkpointed by the harness first (what SQLite
  does itself on the next open), so the live copy of the event's page is in the main file, where
  a changed byte goes unnoticed by SQLite; in the WAL it would break the frame checksum and be a
  rollback, which `wal_scribble` covers.
- `clock_jump`: NTP or chrony stepping a device's clock. A device's wall clock is the host's
  (`sync.clock.SystemClock`, `time.time_ns()`), so every device process (never the depot or the
  broker) runs with libfaketime preloaded (`LD_PRELOAD`; the library's path names the
  architecture, so it is asked of `dpkg -L libfaketime`), reading its offset from a file of its
  own (`FAKETIME_TIMESTAMP_FILE`, re-read within a second: `FAKETIME_CACHE_DURATION=1`). The fault
  rewrites that file: CLOCK_REALTIME of that one process steps by 10 min to 6 h, forwards or
  backwards, stays there for a while and is stepped back to true time about half the time. A
  backward step always lands behind true time and behind where the clock stood, so the device
  stamps new events earlier than ones it already stamped. The offset outlives a restart (a wrong
  clock survives a reboot) and is left as it is for the drain. The monotonic clocks are not
  faked (`FAKETIME_DONT_FAKE_MONOTONIC=1`), nor are file times (`NO_FAKE_STAT=1`). libfaketime
  0.9.10 (Debian 12) then breaks Python 3.11's `time.sleep`: it converts the absolute
  CLOCK_MONOTONIC deadline of `clock_nanosleep` as if it were wall time and the kernel says
  EINVAL (libfaketime issue #426). So a device under libfaketime is started through a prelude
  (`FAKED_CLOCK_PRELUDE`) that makes `time.sleep` wait in `select()` before `lastmile` runs; the
  product's code is the same. The report counts the events the depot stored with a wall time
  more than 5 min off the true one (`events_stamped_off_clock`, from their monotonic time).
  Without libfaketime the kind is not planned and `left_out` says why.

The harness is allowed to look: right before it damages a journal it copies the files and reads
which event sat at which (journal, seq), and at the end it reads every journal file a device
left (the live one and those moved aside) the same way. A confirmed fact is then `at_depot`
(its uuid or barcode in the depot's `events`), reported lost (its (journal, seq) inside a range
of the depot's `losses` table, the device's alarm), or `lost_silently`.

A baseline runs first in the same invocation: the same fleet for `--baseline-s` seconds with no
fault, then drained; its confirmed scans per second and drain time are the reference.

Bounded: every wait has a timeout; every process and thread started here is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import resource
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.fleet import (
    Setup,
    depot_accounts,
    depot_command,
    process_tree,
    stop_depot,
    terminate_as_error,
    write_depot_config,
)
from bench.rig import BenchError, describe_mount, host_facts, rounded, scratch_dir
from parcel.identify import s10_check_digit
from simulators.broker import Broker, find_mosquitto
from simulators.link import LinkProxy
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner

log = logging.getLogger("bench.chaos")

# --- what is injected ----------------------------------------------------------------------------

DEVICE_KINDS = ("kill_device", "link_cut", "blackhole", "disk_full", "journal_damage",
                "clock_jump")
CENTRAL_KINDS = ("kill_depot", "kill_worker", "broker_restart")
KINDS = DEVICE_KINDS + CENTRAL_KINDS
DAMAGES = ("wal_truncate", "wal_scribble", "event_byte", "journal_emptied", "journal_missing")
JUMP_DIRECTIONS = ("forward", "backward")
#: Share of each kind in a plan. Depot and broker faults are rarer: each costs the whole fleet a
#: reconnection, and their lane is one while the devices' are several.
WEIGHTS = {
    "kill_device": 0.17,
    "journal_damage": 0.18,
    "link_cut": 0.13,
    "blackhole": 0.14,
    "disk_full": 0.14,
    "clock_jump": 0.06,
    "kill_worker": 0.08,
    "broker_restart": 0.06,
    "kill_depot": 0.04,
}
#: (low, high) seconds of one clock step; as NTP or chrony step a clock that drifted or was wrong.
JUMP_S = (10 * 60, 6 * 3600)
SET_BACK_SHARE = 0.5  # of clock steps corrected back to true time once their pause is over
OFF_CLOCK_S = 5 * 60  # an event stamped further than this from true time shows a step reached it
NO_FAKETIME = ("libfaketime is not installed (apt-get install libfaketime, or bash .ci/setup): "
               "one device's wall clock cannot be stepped on its own")
#: (low, high) seconds a fault lasts: down time of a killed process, length of a cut or a full disk.
PAUSE_S = {
    "kill_device": (0.2, 2.0),
    "journal_damage": (0.2, 1.0),
    "link_cut": (0.5, 4.0),
    "blackhole": (1.0, 6.0),
    "disk_full": (1.0, 4.0),
    "kill_depot": (0.2, 2.0),
    "kill_worker": (0.0, 0.0),
    "broker_restart": (0.2, 2.0),
    # Longer than libfaketime's one-second cache, so the device scans on the stepped clock.
    "clock_jump": (3.0, 10.0),
}
DEVICE_GAP_S = (0.5, 2.5)  # between two faults of one device: scans go on in between
CENTRAL_GAP_S = (1.0, 4.0)
TARGET_FAULTS = 1000
TARGET_ELAPSED_S = 30 * 60.0

# --- the fleet -----------------------------------------------------------------------------------

HOST = "127.0.0.1"
DEPOT_USER = "depot"
DEPOT_WORKERS = 2
BADGE = "C42"
COMPARTMENTS = 16  # one CU16 board
LOCKER_HOLD_H = 0.003  # 11 s: holds run out during the run, so the courier collects returns
SCAN_INTERVAL_S = (0.2, 0.7)  # a van's courier, between two scans
DEPOSIT_INTERVAL_S = (0.2, 0.8)
RETURNS_EVERY = 6  # the locker's courier collects expired parcels every this many drop-offs
VAN_PREFIXES = ("RA", "RB", "RC")
LOCKER_PREFIX = "LA"
# The uplink's settings for a day compressed into minutes: resend after 3 s without an ack,
# reconnect within 4 s at most, and notice a dead connection within 10 s. All are [sync] options.
SYNC = {"ack_timeout_s": 3.0, "backoff_max_s": 4.0, "keepalive_s": 10}

READY_TIMEOUT_S = 20.0  # a device process, from spawn to its scanner (or keypad) connected
STOP_TIMEOUT_S = 15.0
LINE_TIMEOUT_S = 5.0  # the locker's answer to one action of its courier
DRAIN_TIMEOUT_S = 180.0
DRAIN_POLL_S = 0.5  # how often the journals are read while draining: nothing signals it
WORKER_WAIT_S = 30.0  # for a live depot worker to kill
FACT_KINDS = {"van": "parcel_scanned", "locker": "parcel_deposited"}
STORED = "parcel stored; thank you"
ASK_PICKUP = "scan your pickup QR code or enter your code"  # a scan with no courier logged in


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--faults", type=int, default=TARGET_FAULTS,
                   help=f"faults to inject (default {TARGET_FAULTS})")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault plan (default 1)")
    p.add_argument("--vans", type=int, default=3, choices=(2, 3), help="vans (default 3)")
    p.add_argument("--baseline-s", type=float, default=30.0,
                   help="seconds the fault-free baseline fleet scans (default 30)")
    p.add_argument("--drain-timeout-s", type=float, default=DRAIN_TIMEOUT_S,
                   help=f"how long the devices may take to drain at the end (default "
                        f"{DRAIN_TIMEOUT_S:g})")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the scratch directory here (default: the current directory)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory (logs, journals, the depot's database) "
                        "and print its path on stderr")


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, on whom (a device name, or "depot"/"broker"), which damage; for
    a clock step, the offset from true time (s) the device's clock is stepped to and whether it
    is stepped back to true time after the pause."""

    index: int
    kind: str
    target: str
    damage: str | None = None
    offset_s: int | None = None
    set_back: bool = False


_VARIANTS: dict[str, tuple[str, ...]] = {
    "journal_damage": DAMAGES, "clock_jump": JUMP_DIRECTIONS}


def plan_faults(n: int, seed: int, devices: Sequence[str],
                left_out: Collection[str] = ()) -> list[Fault]:
    """`n` faults from `seed`: every kind, every damage and both directions of a clock step once
    first (when n allows), then drawn by WEIGHTS; no kind in `left_out`. The same seed, fleet
    and `left_out` give the same plan.

    A clock step is 10 min to 6 h. Forwards it starts where the device's clock stood;
    backwards it starts from the earlier of that and true time, so a clock left ahead by the
    previous step goes back past true time and past every time it has shown since."""
    rng = random.Random(seed)
    kinds_here = [k for k in KINDS if k not in left_out]
    first: list[tuple[str, str | None]] = []
    for k in kinds_here:
        first += [(k, v) for v in _VARIANTS[k]] if k in _VARIANTS else [(k, None)]
    rng.shuffle(first)
    kinds, weights = zip(*((k, w) for k, w in WEIGHTS.items() if k in kinds_here), strict=True)
    picks: list[tuple[str, str | None]] = first[:n]
    while len(picks) < n:
        kind = rng.choices(kinds, weights)[0]
        picks.append((kind, rng.choice(_VARIANTS[kind]) if kind in _VARIANTS else None))
    offsets = dict.fromkeys(devices, 0)  # each device's clock, as the plan leaves it
    faults = []
    for i, (kind, variant) in enumerate(picks):
        if kind in CENTRAL_KINDS:
            target = "broker" if kind == "broker_restart" else "depot"
        else:
            target = rng.choice(devices)
        if kind == "clock_jump":
            step = rng.randint(*JUMP_S)
            was = offsets[target]
            offset = was + step if variant == "forward" else min(was, 0) - step
            set_back = rng.random() < SET_BACK_SHARE
            offsets[target] = 0 if set_back else offset
            faults.append(Fault(i, kind, target, offset_s=offset, set_back=set_back))
        else:
            faults.append(Fault(i, kind, target, variant))
    return faults


def barcode(prefix: str, serial: int) -> str:
    """A valid UPU S10 code, unique per (prefix, serial)."""
    digits = f"{serial:08d}"
    return f"{prefix}{digits}{s10_check_digit(digits)}NL"


# --- the devices' clocks -------------------------------------------------------------------------

FAKETIME_LIBRARY = "libfaketime.so.1"
SHM_DIR = Path("/dev/shm")  # where glibc keeps shm_open and sem_open names
#: Runs before `lastmile` in a device under libfaketime. Python 3.11's `time.sleep` waits with
#: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), whose deadline libfaketime 0.9.10 mistakes
#: for wall time when the monotonic clock is not faked (EINVAL); a select() timeout is the same
#: relative wait on the monotonic clock and libfaketime leaves it alone.
FAKED_CLOCK_PRELUDE = """\
import select
import time


def _sleep(secs):
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], secs)


time.sleep = _sleep
"""
_RUN_LASTMILE = """\
import runpy
import sys
sys.argv[0] = "lastmile"
runpy.run_module("lastmile", run_name="__main__", alter_sys=True)
"""


def find_libfaketime() -> Path | None:
    """Debian's libfaketime, where its package list puts it (the directory names the
    architecture), else a `make install` of it; None when there is none."""
    listed: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode == 0:
            listed = [Path(line) for line in done.stdout.splitlines()
                      if line.endswith(f"/{FAKETIME_LIBRARY}")]
    for path in [*listed, Path("/usr/local/lib/faketime") / FAKETIME_LIBRARY]:
        if path.is_file():
            return path
    return None


def faked_clock_env(library: Path, offset_file: Path) -> dict[str, str]:
    """The environment of a process whose wall clock (and nothing else) is true time plus the
    offset in `offset_file`, re-read within a second of a change."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME")}
    preload = env.get("LD_PRELOAD")
    env.update({
        "LD_PRELOAD": f"{library} {preload}" if preload else str(library),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "NO_FAKE_STAT": "1",  # a stepped clock does not change the times files already have
    })
    return env


def write_clock_offset(path: Path, offset_s: int) -> None:
    """Step the wall clock of the processes reading `path` to true time + `offset_s`. Replaced
    whole, so libfaketime never reads half a file."""
    part = path.with_name(f"{path.name}.part")
    part.write_text(f"{offset_s:+d}\n")
    os.replace(part, path)


def forget_faketime_shm(pid: int) -> None:
    """Remove the shared memory and semaphore libfaketime named after a reaped process. It
    removes them itself at a clean exit; after a SIGKILL they stay, and a later process given
    the same pid would refuse to start ("shm_open failed: File exists")."""
    for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
        with contextlib.suppress(OSError):
            (SHM_DIR / name).unlink()


def _host_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


# --- device processes ----------------------------------------------------------------------------


@dataclass
class Confirmed:
    """A fact its device said was stored: a van's beep line or the locker's "parcel stored"."""

    device: str
    key: str  # the parcel id, unique per scan
    uuid: str | None  # a van says it; the locker does not


class DeviceProcess:
    """One `lastmile van|locker` process at a time for one device, and what it said.

    stdout is read line by line (JSON) on a thread; stderr too, into the device's log file, so
    that a full-disk fault (a file-size limit on the process) cannot block or silence it. With a
    `faketime` library, its wall clock follows `clock_file` (see `faked_clock_env`).
    """

    def __init__(self, name: str, kind: str, workdir: Path, config: Path, journal: Path,
                 link: LinkProxy, on_confirmed: Callable[[Confirmed], None],
                 faketime: Path | None = None) -> None:
        self.name = name
        self.kind = kind
        self.workdir = workdir
        self.config = config
        self.journal = journal
        self.link = link
        self._on_confirmed = on_confirmed
        self.clock_file: Path | None = None
        self._env: dict[str, str] | None = None
        if faketime is not None:
            self.clock_file = workdir / "clock.offset"
            write_clock_offset(self.clock_file, 0)
            self._env = faked_clock_env(faketime, self.clock_file)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._expected_exit = False
        self._threads: list[threading.Thread] = []
        self.starts = 0
        self.crashes: list[str] = []  # exits nobody asked for, with the log's last line
        self.refused: Counter[str] = Counter()
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self._log_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive and self.proc is not None else None

    def start(self) -> None:
        if self.alive:
            return
        self.ready.clear()
        self._expected_exit = False
        self.starts += 1
        lastmile = ([sys.executable, "-c", FAKED_CLOCK_PRELUDE + _RUN_LASTMILE]
                    if self._env is not None else [sys.executable, "-m", "lastmile"])
        proc = subprocess.Popen(
            [*lastmile, "-v", self.kind, "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=self.workdir, env=self._env,
        )
        self.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._threads = [t for t in self._threads if t.is_alive()]
        for target, stream in ((self._read_stdout, proc.stdout), (self._read_stderr, proc.stderr)):
            t = threading.Thread(target=target, args=(proc, stream), daemon=True,
                                 name=f"{self.name}-{target.__name__}")
            t.start()
            self._threads.append(t)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        return self.ready.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the power cut."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; SIGKILL if it does not end in time."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        self._expected_exit = True
        self.ready.clear()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on signal %d; killing it", self.name, sig)
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        for t in self._threads:
            t.join(STOP_TIMEOUT_S)

    def close(self) -> None:
        self.stop()
        self._log.close()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_line(self, wanted: Callable[[dict[str, Any]], bool], since: int,
                  timeout: float = LINE_TIMEOUT_S) -> tuple[int, dict[str, Any]] | None:
        """The first line at or after index `since` that is `wanted`, with its index."""
        def find() -> tuple[int, dict[str, Any]] | None:
            for i in range(since, len(self.lines)):
                if wanted(self.lines[i]):
                    return i, self.lines[i]
            return None

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout)
            return find()

    def _write_log(self, data: bytes) -> None:
        with self._log_lock:
            self._log.write(data)
            self._log.flush()

    def _read_stdout(self, proc: subprocess.Popen[bytes], stream: IO[bytes]) -> None:
        for raw in stream:
            self._write_log(b"stdout: " + raw)
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if "confirmed" in doc and isinstance(doc.get("parcel"), str):
                self._on_confirmed(Confirmed(self.name, doc["parcel"], str(doc.get("uuid"))))
            elif "refused" in doc:
                self.refused[str(doc["refused"])] += 1
            elif doc.get("display") == STORED and isinstance(doc.get("parcel"), str):
                self._on_confirmed(Confirmed(self.name, doc["parcel"], None))
            elif doc.get("display") == "ready" or str(doc.get("display", "")).startswith("ready"):
                self.ready.set()
            with self._cond:
                self.lines.append(doc)
                self._cond.notify_all()
        proc.wait()
        if self._env is not None:
            forget_faketime_shm(proc.pid)
        if not self._expected_exit:
            self.ready.clear()
            tail = self.log_path.read_text(errors="replace").splitlines()[-1:] or [""]
            self.crashes.append(f"exit {proc.returncode}: {tail[0][:300]}")
            log.warning("%s exited by itself (%s)", self.name, self.crashes[-1])

    def _read_stderr(self, _proc: subprocess.Popen[bytes], stream: IO[bytes]) -> None:
        for raw in stream:
            self._write_log(raw)
            if self.kind == "van" and b"scanner connected" in raw:
                self.ready.set()


# --- the journals, as the harness reads them -----------------------------------------------------


@dataclass
class JournalView:
    """What one journal file held: its id, how far the depot had acknowledged, its facts."""

    journal_id: str
    acked: int
    last_seq: int
    facts: list[tuple[int, str, str]]  # (seq, uuid, parcel) of the device's fact events


def _sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}{s}") for s in ("", "-wal", "-shm")]


def read_journal(path: Path, scratch: Path, fact_kind: str) -> JournalView | None:
    """Read a copy of a journal (the file and its WAL; SQLite replays the WAL into the copy),
    so that the original is left exactly as it was. None when it cannot be read at all."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "copy.db"
    for p in _sidecars(copy):
        p.unlink(missing_ok=True)
    try:
        shutil.copyfile(path, copy)
        wal = Path(f"{path}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{copy}-wal")
        conn = sqlite3.connect(copy, isolation_level=None)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            rows = conn.execute(
                "SELECT seq, CAST(uuid AS BLOB), CAST(payload AS BLOB) FROM events WHERE kind=?",
                (fact_kind,)).fetchall()
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        log.info("journal %s unreadable: %s", path, exc)
        return None
    finally:
        for p in _sidecars(copy):
            p.unlink(missing_ok=True)
    facts = []
    for seq, uid, payload in rows:
        try:
            parcel = json.loads(bytes(payload).decode("utf-8", "replace")).get("parcel")
        except (ValueError, AttributeError):
            parcel = None
        facts.append((int(seq), bytes(uid).decode("ascii", "replace"), str(parcel)))
    try:
        return JournalView(str(meta["journal_id"]), int(meta.get("acked_seq", 0)),
                           int(meta.get("last_seq", 0)), facts)
    except (KeyError, ValueError):
        return None


def live_progress(path: Path) -> tuple[int, int] | None:
    """(acked, last) of a running device's journal, read-only; None if it cannot be read now."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            meta = dict(conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('acked_seq', 'last_seq')").fetchall())
        finally:
            conn.close()
        return int(meta["acked_seq"]), int(meta["last_seq"])
    except (sqlite3.Error, KeyError, ValueError):
        return None


def damage_journal(path: Path, damage: str, rng: random.Random, fact_kind: str) -> str:
    """Do `damage` to a killed device's journal files; returns what was done, in words."""
    wal = Path(f"{path}-wal")
    if damage == "wal_truncate":
        size = wal.stat().st_size if wal.exists() else 0
        if size == 0:
            return "no WAL to cut"
        keep = rng.randrange(0, size)
        os.truncate(wal, keep)
        return f"WAL cut from {size} to {keep} bytes"
    if damage == "wal_scribble":
        size = wal.stat().st_size if wal.exists() else 0
        if size == 0:
            return "no WAL to scribble on"
        spots = sorted(rng.randrange(size) for _ in range(rng.randint(1, 8)))
        with wal.open("r+b") as f:
            for at in spots:
                f.seek(at)
                f.write(bytes([rng.randrange(256)]))
            f.flush()
            os.fsync(f.fileno())
        return f"{len(spots)} WAL bytes overwritten at {spots}"
    if damage == "event_byte":
        return _change_event_byte(path, rng, fact_kind)
    if damage == "journal_emptied":
        if not path.exists():
            return "no journal file to empty"
        os.truncate(path, 0)
        for p in _sidecars(path)[1:]:
            p.unlink(missing_ok=True)
        return "journal truncated to 0 bytes, -wal and -shm deleted"
    if damage == "journal_missing":
        for p in _sidecars(path):
            p.unlink(missing_ok=True)
        return "journal, -wal and -shm deleted"
    raise ValueError(f"unknown damage {damage!r}")


def _change_event_byte(path: Path, rng: random.Random, fact_kind: str) -> str:
    """One digit of an unacknowledged fact's barcode, in its payload in the main file."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the page's live copy to the file
            acked = int(conn.execute(
                "SELECT value FROM meta WHERE key='acked_seq'").fetchone()[0])
            rows = conn.execute(
                "SELECT seq, payload FROM events WHERE kind=? AND seq > ? ORDER BY seq",
                (fact_kind, acked)).fetchall()
            which = "unacknowledged"
            if not rows:
                rows = conn.execute("SELECT seq, payload FROM events WHERE kind=? ORDER BY seq",
                                    (fact_kind,)).fetchall()
                which = "acknowledged (none unacknowledged)"
        finally:
            conn.close()
    except (sqlite3.Error, TypeError, ValueError) as exc:
        return f"journal unreadable, nothing changed: {exc}"
    if not rows:
        return "no fact event to change"
    seq, payload = rows[rng.randrange(len(rows))]
    parcel = json.loads(payload)["parcel"]
    tail = ',"size"' if fact_kind == "parcel_deposited" else ',"raw"'
    needle = f'"parcel":"{parcel}"{tail}'.encode()
    data = path.read_bytes()
    spots = []
    at = data.find(needle)
    while at >= 0:
        spots.append(at)
        at = data.find(needle, at + 1)
    if not spots:
        return f"event {seq}'s payload not found in the main file"
    digit_at = len('"parcel":"') + 2  # the first digit of the serial
    with path.open("r+b") as f:
        for at in spots:  # stale copies in free pages too: harmless
            pos = at + digit_at
            f.seek(pos)
            f.write(str((int(chr(data[pos])) + 1) % 10).encode())
        f.flush()
        os.fsync(f.fileno())
    return f"one digit of {which} event {seq} ({parcel}) changed"


# --- the depot process ---------------------------------------------------------------------------


class DepotProcess:
    """The depot service with its workers, as a session of its own (killable as a group)."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "depot.log"
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            return
        self.starts += 1
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(depot_command(self.config, DEPOT_WORKERS),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)

    def kill(self) -> None:
        """SIGKILL of the supervisor and every worker at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)

    def workers(self) -> list[int]:
        return process_tree(self.proc.pid)[1:] if self.alive and self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_depot(self.proc)


# --- couriers ------------------------------------------------------------------------------------


class Barcodes:
    """Fresh codes per device prefix, never repeated within a run."""

    def __init__(self) -> None:
        self._next: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, prefix: str) -> str:
        with self._lock:
            self._next[prefix] += 1
            return barcode(prefix, self._next[prefix])


def van_courier(dev: DeviceProcess, scanner: SimulatedScanner, prefix: str, codes: Barcodes,
                stop: threading.Event, rng: random.Random) -> None:
    """Scan a fresh label whenever the van is up; the van's answer is read from its stdout."""
    while not stop.is_set():
        if not dev.ready.wait(0.5):
            continue
        scanner.scan(codes.take(prefix))
        stop.wait(rng.uniform(*SCAN_INTERVAL_S))


def locker_courier(dev: DeviceProcess, boards: SimulatedLockBoards, scanner: SimulatedScanner,
                   keypad: SimulatedScanner, locks: dict[str, tuple[int, int]], codes: Barcodes,
                   stop: threading.Event, rng: random.Random) -> None:
    """Drop parcels off one after another: badge on the keypad when asked, scan, put it in the
    door that opens, close it; every few drop-offs (and when the locker is full) collect the
    parcels whose hold ran out. Anything unanswered (the locker was killed) starts over."""
    deposits = 0
    while not stop.is_set():
        if not dev.ready.wait(0.5):
            continue
        for cid, (b, lk) in locks.items():  # a door left open by an interrupted round
            if boards.door_open(b, lk):
                log.debug("closing %s left open", cid)
                boards.close_door(b, lk)
        full = False
        code = codes.take(LOCKER_PREFIX)
        found: tuple[int, dict[str, Any]] | None = None
        for _ in range(2):
            mark = dev.mark()
            scanner.scan(code)
            found = dev.wait_line(lambda d: d.get("display") in (
                "door open", "locker full", "parcel refused", ASK_PICKUP), mark)
            if found is None or found[1]["display"] != ASK_PICKUP:
                break
            mark = dev.mark()
            keypad.scan(f"*{BADGE}", aim=None)
            if dev.wait_line(lambda d: str(d.get("display", "")).startswith("courier welcome"),
                             mark) is None:
                found = None
                break
        if found is not None and found[1]["display"] == "door open":
            b, lk = locks[str(found[1].get("compartment"))]
            with contextlib.suppress(Exception):  # the locker died: the door may never open
                if _door_opens(boards, b, lk):
                    boards.put_parcel(b, lk)
                    boards.close_door(b, lk)
                    dev.wait_line(lambda d: d.get("display") == STORED, found[0])
                    deposits += 1
        elif found is not None and found[1]["display"] == "locker full":
            full = True
        if full or (deposits and deposits % RETURNS_EVERY == 0):
            collect_returns(dev, boards, keypad, locks)
        stop.wait(rng.uniform(*DEPOSIT_INTERVAL_S) * (4 if full else 1))


def _door_opens(boards: SimulatedLockBoards, board: int, lock: int) -> bool:
    return boards.wait_until(lambda: boards.door_open(board, lock), LINE_TIMEOUT_S)


def collect_returns(dev: DeviceProcess, boards: SimulatedLockBoards, keypad: SimulatedScanner,
                    locks: dict[str, tuple[int, int]]) -> None:
    mark = dev.mark()
    keypad.scan("#2", aim=None)
    for _ in range(COMPARTMENTS + 1):
        found = dev.wait_line(lambda d: d.get("display") in (
            "door open", "all returns collected", "no parcels to return"), mark)
        if found is None or found[1]["display"] != "door open":
            return
        mark = found[0] + 1
        b, lk = locks[str(found[1].get("compartment"))]
        with contextlib.suppress(Exception):
            if _door_opens(boards, b, lk):
                if boards.item_present(b, lk):
                    boards.take_parcel(b, lk)
                boards.close_door(b, lk)


# --- one fleet -----------------------------------------------------------------------------------


@dataclass
class DamageRecord:
    device: str
    journal_id: str | None
    damage: str
    what: str


@dataclass
class Tally:
    """What the faults did, as they were injected."""

    faults: Counter[str] = field(default_factory=Counter)
    damages: Counter[str] = field(default_factory=Counter)
    damage_log: list[DamageRecord] = field(default_factory=list)
    not_ready_after_restart: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    clock_steps: Counter[str] = field(default_factory=Counter)  # forward, backward, set_back
    clock_offsets_s: list[int] = field(default_factory=list)  # every offset a clock was set to


class ChaosFleet:
    """Broker, depot, links, devices and couriers of one run; `run_plan` injects the faults."""

    def __init__(self, workdir: Path, vans: int, seed: int, faketime: Path | None = None) -> None:
        self.workdir = workdir
        self.seed = seed
        self.faketime = faketime
        self.clock_offsets: dict[str, int] = {}  # each device's, as its lane last set it
        self.van_names = [f"van-{i}" for i in range(1, vans + 1)]
        self.names = [*self.van_names, "locker-1"]
        self.passwords = {n: secrets.token_urlsafe(12) for n in self.names}
        self.depot_password = secrets.token_urlsafe(18)
        self.confirmed: list[Confirmed] = []
        self._confirmed_lock = threading.Lock()
        self.codes = Barcodes()
        self.tally = Tally()
        self._tally_lock = threading.Lock()
        self.stop_couriers = threading.Event()
        self.stack = contextlib.ExitStack()
        self.devices: dict[str, DeviceProcess] = {}
        self.scanners: dict[str, SimulatedScanner] = {}
        self.broker: Broker
        self.depot: DepotProcess
        self.positions: dict[str, dict[str, set[tuple[str, int]]]] = {n: {} for n in self.names}
        self.uuids_of: dict[str, dict[str, set[str]]] = {n: {} for n in self.names}
        self._courier_threads: list[threading.Thread] = []
        self._views = 0

    def _record(self, c: Confirmed) -> None:
        with self._confirmed_lock:
            self.confirmed.append(c)

    # --- set-up and tear-down ---

    def __enter__(self) -> ChaosFleet:
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_couriers.set()
        self.stack.close()

    def _start(self) -> None:
        broker = Broker(self.workdir / "broker", devices=self.passwords,
                        depot=(DEPOT_USER, self.depot_password), depot_workers=DEPOT_WORKERS)
        self.broker = self.stack.enter_context(broker)
        depot_dir = self.workdir / "depot"
        depot_dir.mkdir()
        setup = Setup("sqlite", DEPOT_WORKERS)
        config = write_depot_config(
            depot_dir, setup, str(depot_dir / "depot.db"), broker.port,
            depot_accounts(setup, self.depot_password, broker.depot_workers))
        self.depot = DepotProcess(depot_dir, config)
        self.stack.callback(self.depot.stop)
        self.depot.start()
        for i, name in enumerate(self.names):
            self._add_device(name, i)
        for dev in self.devices.values():
            dev.start()
        for dev in self.devices.values():
            if not dev.wait_ready():
                raise BenchError(f"{dev.name} was not ready in {READY_TIMEOUT_S} s:\n"
                                 f"{_tail(dev.log_path)}")

    def _add_device(self, name: str, index: int) -> None:
        ddir = self.workdir / name
        ddir.mkdir()
        link = self.stack.enter_context(LinkProxy(self.broker.host, self.broker.port, name=name))
        (ddir / f"{name}.password").write_text(self.passwords[name] + "\n")
        journal = ddir / f"{name}.journal.db"
        scanner = self.stack.enter_context(SimulatedScanner(ddir / "scanner.tty"))
        self.scanners[name] = scanner
        broker_toml = "\n".join([
            "[broker]", f'host = "{HOST}"', f"port = {link.port}", f'username = "{name}"',
            f'password_file = "{name}.password"', "", "[sync]",
            *(f"{k} = {v}" for k, v in SYNC.items()), ""])
        rng = random.Random(f"{self.seed}-{name}")
        if name.startswith("van"):
            kind = "van"
            text = "\n".join([
                f'device_id = "{name}"', f'journal = "{journal.name}"', "",
                "[scanner]", f'port = "{scanner.path}"', 'suffix = "crlf"', "", broker_toml])
            target: Callable[[], None] = lambda: van_courier(  # noqa: E731
                self.devices[name], scanner, VAN_PREFIXES[index], self.codes,
                self.stop_couriers, rng)
        else:
            kind = "locker"
            boards = self.stack.enter_context(SimulatedLockBoards(1, link=ddir / "bus.tty"))
            keypad = self.stack.enter_context(SimulatedScanner(ddir / "keypad.tty", suffix=b"\r"))
            locks = {f"C{i:02d}": (0, i) for i in range(COMPARTMENTS)}
            compartments = "\n".join(
                f'[[compartments]]\nid = "{cid}"\nboard = {b}\nlock = {lk}\nsize = "M"\n'
                for cid, (b, lk) in locks.items())
            text = "\n".join([
                f'device_id = "{name}"', f'journal = "{journal.name}"',
                f"hold_hours = {LOCKER_HOLD_H}", "poll_interval_s = 0.05", "jam_timeout_s = 5.0",
                "", "[lockboard]", f'port = "{boards.path}"', "boards = [{ board = 0 }]", "",
                compartments, "[couriers]", f'badges = ["{BADGE}"]', "",
                "[scanner]", f'port = "{scanner.path}"', "", "[keypad]", f'port = "{keypad.path}"',
                "", broker_toml])
            target = lambda: locker_courier(  # noqa: E731
                self.devices[name], boards, scanner, keypad, locks, self.codes,
                self.stop_couriers, rng)
        config = ddir / f"{name}.toml"
        config.write_text(text)
        dev = DeviceProcess(name, kind, ddir, config, journal, link, self._record, self.faketime)
        self.devices[name] = dev
        self.clock_offsets[name] = 0
        self.stack.callback(dev.close)
        t = threading.Thread(target=target, name=f"courier-{name}", daemon=True)
        self._courier_threads.append(t)

    def start_couriers(self) -> None:
        for t in self._courier_threads:
            t.start()

    def end_couriers(self) -> None:
        self.stop_couriers.set()
        for t in self._courier_threads:
            t.join(LINE_TIMEOUT_S * 4)

    # --- faults ---

    def run_plan(self, plan: Sequence[Fault]) -> None:
        """Each device's faults in order on a thread of its own, the depot's and the broker's on
        another; returns when every lane is done."""
        lanes: dict[str, list[Fault]] = {}
        for f in plan:
            lanes.setdefault("central" if f.kind in CENTRAL_KINDS else f.target, []).append(f)
        errors: list[BaseException] = []

        def lane(name: str, faults: list[Fault]) -> None:
            rng = random.Random(f"{self.seed}-lane-{name}")
            gap = CENTRAL_GAP_S if name == "central" else DEVICE_GAP_S
            try:
                for f in faults:
                    if self.stop_couriers.wait(rng.uniform(*gap)):
                        return
                    self.inject(f, rng)
            except BaseException as exc:  # reported by run_plan, after every lane ended
                errors.append(exc)
                self.stop_couriers.set()

        threads = [threading.Thread(target=lane, args=(n, fs), name=f"lane-{n}", daemon=True)
                   for n, fs in lanes.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BenchError(f"a fault lane failed: {errors[0]!r}") from errors[0]

    def inject(self, f: Fault, rng: random.Random) -> None:
        pause = rng.uniform(*PAUSE_S[f.kind])
        step = "" if f.offset_s is None else f"to {f.offset_s:+d} s" + (
            ", then back" if f.set_back else "")
        log.info("fault %d: %s %s %s (%.1f s)", f.index, f.kind, f.target, f.damage or step,
                 pause)
        if f.kind == "kill_device":
            dev = self.devices[f.target]
            dev.kill()
            time.sleep(pause)
            self._restart(dev)
        elif f.kind == "journal_damage":
            assert f.damage is not None
            dev = self.devices[f.target]
            dev.kill()
            view = self.look(dev)
            what = damage_journal(dev.journal, f.damage, rng, FACT_KINDS[dev.kind])
            with self._tally_lock:
                self.tally.damages[f.damage] += 1
                self.tally.damage_log.append(DamageRecord(
                    dev.name, view.journal_id if view else None, f.damage, what))
            time.sleep(pause)
            self._restart(dev)
        elif f.kind in ("link_cut", "blackhole"):
            link = self.devices[f.target].link
            link.cut("reset" if f.kind == "link_cut" else "blackhole")
            time.sleep(pause)
            link.restore()
        elif f.kind == "disk_full":
            dev = self.devices[f.target]
            if not self._limit_files(dev, 0):
                self._note(f"disk_full on {dev.name}: not running, nothing limited")
            time.sleep(pause)
            self._limit_files(dev, resource.RLIM_INFINITY)
        elif f.kind == "kill_depot":
            self.depot.kill()
            time.sleep(pause)
            self.depot.start()
        elif f.kind == "kill_worker":
            deadline = time.monotonic() + WORKER_WAIT_S
            while not (workers := self.depot.workers()) and time.monotonic() < deadline:
                time.sleep(0.2)  # the supervisor is between two restarts
            if workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(workers), signal.SIGKILL)
            else:
                self._note("kill_worker: no live worker to kill")
        elif f.kind == "broker_restart":
            self.broker.stop()
            time.sleep(pause)
            self.broker.start()
        elif f.kind == "clock_jump":
            dev = self.devices[f.target]
            if f.offset_s is None or dev.clock_file is None:
                raise BenchError(f"fault {f.index}: no clock offset planned, or {dev.name}'s "
                                 "clock cannot be stepped (no libfaketime)")
            was = self.clock_offsets[dev.name]
            self._step_clock(dev, f.offset_s, "forward" if f.offset_s > was else "backward")
            time.sleep(pause)
            if f.set_back:
                self._step_clock(dev, 0, "set_back")
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")
        with self._tally_lock:
            self.tally.faults[f.kind] += 1

    def _note(self, text: str) -> None:
        with self._tally_lock:
            if len(self.tally.notes) < 50:
                self.tally.notes.append(text)

    def _step_clock(self, dev: DeviceProcess, offset_s: int, how: str) -> None:
        assert dev.clock_file is not None
        write_clock_offset(dev.clock_file, offset_s)
        self.clock_offsets[dev.name] = offset_s
        with self._tally_lock:
            self.tally.clock_steps[how] += 1
            self.tally.clock_offsets_s.append(offset_s)

    def _restart(self, dev: DeviceProcess) -> None:
        dev.start()
        if not dev.wait_ready():
            with self._tally_lock:
                self.tally.not_ready_after_restart[dev.name] += 1
            log.warning("%s not ready %s s after its restart", dev.name, READY_TIMEOUT_S)

    @staticmethod
    def _limit_files(dev: DeviceProcess, size: int) -> bool:
        pid = dev.pid
        if pid is None:
            return False
        try:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
        except (ProcessLookupError, OSError):
            return False
        return True

    def look(self, dev: DeviceProcess, path: Path | None = None) -> JournalView | None:
        """Read (a copy of) a journal and remember where each fact sat."""
        self._views += 1
        view = read_journal(path or dev.journal, self.workdir / "looks" / f"{self._views}",
                            FACT_KINDS[dev.kind])
        if view is not None:
            with self._tally_lock:
                for seq, uid, parcel in view.facts:
                    self.positions[dev.name].setdefault(uid, set()).add((view.journal_id, seq))
                    self.uuids_of[dev.name].setdefault(parcel, set()).add(uid)
        return view

    # --- the end ---

    def restore_all(self) -> None:
        for dev in self.devices.values():
            dev.link.restore()
            self._limit_files(dev, resource.RLIM_INFINITY)
        if not self.broker.is_running:
            self.broker.start()
        if not self.depot.alive:
            self.depot.start()
        for dev in self.devices.values():
            if not dev.alive:
                self._restart(dev)

    def drain(self, timeout: float) -> tuple[float | None, list[str]]:
        """Seconds until every device's journal was acknowledged up to its last event (None if
        not within `timeout`), and the devices still behind then."""
        started = time.monotonic()
        deadline = started + timeout
        behind = list(self.names)
        while True:
            behind = []
            for name, dev in self.devices.items():
                progress = live_progress(dev.journal)
                if progress is None or progress[0] < progress[1] or not dev.alive:
                    behind.append(name)
            if not behind:
                return time.monotonic() - started, []
            if time.monotonic() >= deadline:
                return None, behind
            if not self.depot.alive:
                self.depot.start()
            time.sleep(DRAIN_POLL_S)

    def stop_everything(self) -> None:
        for dev in self.devices.values():
            dev.stop()
        self.depot.stop()
        self.broker.stop()

    def read_final_journals(self) -> dict[str, int]:
        """Every journal file each device left, live or moved aside; how many per device."""
        counts: dict[str, int] = {}
        for dev in self.devices.values():
            ids = set()
            for path in sorted(dev.workdir.glob(f"{dev.journal.name}*")):
                if path.name.endswith(("-wal", "-shm", ".lock", ".hw")):
                    continue
                view = self.look(dev, path)
                if view is not None:
                    ids.add(view.journal_id)
            counts[dev.name] = len(ids)
        return counts


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- accounting ----------------------------------------------------------------------------------


@dataclass
class DepotRecord:
    """What the depot's database holds of this run's devices."""

    events: dict[str, list[tuple[str, int, str, str]]]  # device -> (journal, seq, uuid, parcel)
    # device -> (journal, first seq, last seq or None when unknown, reason)
    losses: dict[str, list[tuple[str, int, int | None, str]]]
    quarantined: int
    gaps: int
    alarms: Counter[str]
    # Events stamped more than OFF_CLOCK_S "ahead" of or "behind" true time.
    off_clock: Counter[str] = field(default_factory=Counter)
    # Deposits a locker recorded again after its journal went back, which the parcel book
    # recognised as such (a new pickup code, the customer told again): not a duplicate.
    rerecorded: set[str] = field(default_factory=set)


def read_depot(database: Path, devices: dict[str, str]) -> DepotRecord:
    """`devices` maps each device to the kind of its facts.

    An event's true time comes from its monotonic time, which no fault moves: on this boot,
    true wall time = monotonic time + (now's wall time - now's monotonic time)."""
    events: dict[str, list[tuple[str, int, str, str]]] = {d: [] for d in devices}
    losses: dict[str, list[tuple[str, int, int | None, str]]] = {d: [] for d in devices}
    alarms: Counter[str] = Counter()
    off_clock: Counter[str] = Counter()
    boot = _host_boot_id()
    wall_at_mono_0 = time.time_ns() - time.monotonic_ns()
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        for device, journal, seq, uid, kind, payload, boot_id, mono_ns, wall_ns in conn.execute(
                "SELECT device, journal, seq, uuid, kind, payload, boot_id, mono_ns, wall_ns "
                "FROM events"):
            if device not in devices:
                continue
            if boot_id == boot:
                off_s = (int(wall_ns) - int(mono_ns) - wall_at_mono_0) / 1e9
                if abs(off_s) > OFF_CLOCK_S:
                    off_clock["ahead" if off_s > 0 else "behind"] += 1
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {}
            if kind == devices[device]:
                events[device].append((journal, int(seq), uid, str(doc.get("parcel"))))
            elif kind == "alarm" and isinstance(doc, dict):
                alarms[str(doc.get("alarm"))] += 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "losses" in tables:
            for device, journal, first, last, reason in conn.execute(
                    "SELECT device, journal, first_seq, last_seq, reason FROM losses"):
                if device in losses:
                    losses[device].append(
                        (journal, int(first), None if last is None else int(last), str(reason)))
        rerecorded = {
            str(r[0]) for r in conn.execute(
                "SELECT event_uuid FROM timeline WHERE details LIKE '%\"rerecorded\"%'")
        } if "timeline" in tables else set()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        gaps = conn.execute("SELECT count(*) FROM gaps").fetchone()[0]
    finally:
        conn.close()
    return DepotRecord(events, losses, int(quarantined), int(gaps), alarms, off_clock, rerecorded)


def account(fleet: ChaosFleet, depot: DepotRecord) -> dict[str, Any]:
    """Every confirmed fact: at the depot, reported lost (inside a `losses` range of its
    device), or lost silently; and what the depot holds twice."""
    damaged_by: dict[tuple[str, str], set[str]] = {}
    for d in fleet.tally.damage_log:
        if d.journal_id is not None:
            damaged_by.setdefault((d.device, d.journal_id), set()).add(d.damage)
    at_depot = 0
    reported: Counter[str] = Counter()
    silent: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    per_device: dict[str, dict[str, int]] = {
        n: {"confirmed": 0, "at_depot": 0, "reported_lost": 0, "lost_silently": 0}
        for n in fleet.names}
    stored_uuids = {n: {e[2] for e in evs} for n, evs in depot.events.items()}
    stored_keys = {n: {e[3] for e in evs} for n, evs in depot.events.items()}
    seen: set[tuple[str, str]] = set()
    for c in fleet.confirmed:
        if (c.device, c.key) in seen:
            continue  # a line read twice cannot happen; a code is never scanned twice
        seen.add((c.device, c.key))
        mine = per_device[c.device]
        mine["confirmed"] += 1
        uuids = set(fleet.uuids_of[c.device].get(c.key, set()))
        if c.uuid:
            uuids.add(c.uuid)
        if uuids & stored_uuids[c.device] or c.key in stored_keys[c.device]:
            at_depot += 1
            mine["at_depot"] += 1
            continue
        places = set().union(*(fleet.positions[c.device].get(u, set()) for u in uuids))
        causes = sorted(set().union(*(damaged_by.get((c.device, j), set()) for j, _ in places)))
        cause = "+".join(causes) or "no damage to its journal"
        covered = any(
            j == lj and first <= s and (last is None or s <= last)
            for j, s in places for lj, first, last, _why in depot.losses[c.device])
        if covered:
            reported[cause] += 1
            mine["reported_lost"] += 1
        else:
            silent[cause] += 1
            mine["lost_silently"] += 1
            if sum(1 for x in examples if x["cause"] == cause) < 3:  # a few of each cause
                examples.append({"device": c.device, "parcel": c.key, "uuid": c.uuid,
                                 "positions": sorted(places), "cause": cause})
    same_stream = re_recorded = carried = rerecorded = 0
    for evs in depot.events.values():
        by_key: dict[str, list[tuple[str, int, str, str]]] = {}
        for e in evs:
            by_key.setdefault(e[3], []).append(e)
        for rows in by_key.values():
            uuids = {r[2] for r in rows}
            # One fact as two events (two uuids): the depot projects it twice, unless the
            # book knew the later one for a locker's re-recording after a rollback.
            known = len(uuids & depot.rerecorded)
            rerecorded += known
            re_recorded += max(0, len(uuids) - 1 - known)
            for u in uuids:
                journals = [r[0] for r in rows if r[2] == u]
                same_stream += len(journals) - len(set(journals))  # twice in one stream
                carried += len(set(journals)) - 1  # carried into a new journal after a rollback
    duplicates = same_stream + re_recorded
    return {
        "confirmed": len(seen),
        "at_depot": at_depot,
        "lost_silently": sum(silent.values()),
        "lost_silently_by_fault": dict(silent),
        "lost_silently_examples": examples,
        "duplicates": duplicates,
        "duplicates_detail": {"same_stream": same_stream, "one_fact_two_uuids": re_recorded},
        "carried_copies": carried,
        "deposits_rerecorded_after_rollback": rerecorded,
        "reported_lost": {"count": sum(reported.values()), "by_fault_kind": dict(reported)},
        "losses_recorded": sum(len(v) for v in depot.losses.values()),
        "depot_alarms": dict(depot.alarms),
        "quarantined": depot.quarantined,
        "gaps": depot.gaps,
        "devices": per_device,
    }


# --- one whole run -------------------------------------------------------------------------------


def run_fleet(workdir: Path, vans: int, seed: int, plan: Sequence[Fault], scan_s: float,
              drain_timeout: float, faketime: Path | None = None) -> dict[str, Any]:
    """Start a fleet (its devices under `faketime` when given), scan while `plan` is injected
    (or for `scan_s` with no plan), drain, stop, account."""
    started = time.monotonic()
    with ChaosFleet(workdir, vans, seed, faketime) as fleet:
        fleet.start_couriers()
        faults_started = time.monotonic()
        if plan:
            fleet.run_plan(plan)
        else:
            fleet.stop_couriers.wait(scan_s)
        faults_s = time.monotonic() - faults_started
        fleet.end_couriers()
        fleet.restore_all()
        drain_s, behind = fleet.drain(drain_timeout)
        fleet.stop_everything()
        journals = fleet.read_final_journals()
        kinds = {n: FACT_KINDS[d.kind] for n, d in fleet.devices.items()}
        depot = read_depot(fleet.depot.workdir / "depot.db", kinds)
        result = account(fleet, depot)
        offsets = fleet.tally.clock_offsets_s
        result.update({
            "clock_steps": {
                **{k: fleet.tally.clock_steps[k] for k in (*JUMP_DIRECTIONS, "set_back")},
                "furthest_ahead_s": max([0, *offsets]),
                "furthest_behind_s": min([0, *offsets]),
                "devices_faked": faketime is not None,
            },
            "events_stamped_off_clock": {k: depot.off_clock[k] for k in ("ahead", "behind")},
            "faults": dict(fleet.tally.faults),
            "damage": dict(fleet.tally.damages),
            "damage_effects": Counter(_effect(d.what) for d in fleet.tally.damage_log),
            "drain_s": rounded(drain_s, 2) if drain_s is not None else None,
            "not_drained": behind,
            "scanning_s": rounded(faults_s, 1),
            "confirmed_per_s": rounded(len(fleet.confirmed) / faults_s, 2) if faults_s else None,
            "refused": dict(sum((d.refused for d in fleet.devices.values()), Counter())),
            "device_starts": {n: d.starts for n, d in fleet.devices.items()},
            "device_crashes": {n: d.crashes[:5] for n, d in fleet.devices.items() if d.crashes},
            "not_ready_after_restart": dict(fleet.tally.not_ready_after_restart),
            "journals_per_device": journals,
            "depot_starts": fleet.depot.starts,
            "notes": fleet.tally.notes,
        })
    result["elapsed_s"] = rounded(time.monotonic() - started, 1)
    return result


def _effect(what: str) -> str:
    """A damage's outcome in a few words, for counting (no sizes or offsets)."""
    for words in ("no WAL", "not found", "unreadable", "no fact event", "(none unacknowledged)"):
        if words in what:
            return words
    return "done"


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.faults < 0 or args.baseline_s <= 0 or args.drain_timeout_s <= 0:
        raise BenchError("--faults must not be negative; --baseline-s and --drain-timeout-s "
                         "must be positive")
    if find_mosquitto() is None:
        raise BenchError("bench chaos needs Mosquitto (apt-get install mosquitto)")
    started = time.monotonic()
    faketime = find_libfaketime()
    left_out = {} if faketime is not None else {"clock_jump": NO_FAKETIME}
    if faketime is None:
        log.warning("clock_jump left out: %s", NO_FAKETIME)
    names = [*(f"van-{i}" for i in range(1, args.vans + 1)), "locker-1"]
    plan = plan_faults(args.faults, args.seed, names, left_out)
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminate_as_error())
        if args.keep:
            base = (args.dir or Path.cwd()).resolve()
            base.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=".bench-chaos-", dir=base))
            print(f"bench chaos: keeping {workdir}", file=sys.stderr)
        else:
            workdir = stack.enter_context(scratch_dir(args.dir, "chaos"))
        mount = describe_mount(workdir)
        log.info("baseline: %d vans and a locker, %.0f s without faults", args.vans,
                 args.baseline_s)
        # The baseline's devices run under libfaketime too (at true time), so that the ratios
        # measure the faults and not the preload.
        baseline = run_fleet(workdir / "baseline", args.vans, args.seed, [], args.baseline_s,
                             args.drain_timeout_s, faketime)
        log.info("chaos: %d faults, seed %d", args.faults, args.seed)
        chaos = run_fleet(workdir / "chaos", args.vans, args.seed, plan, 0.0,
                          args.drain_timeout_s, faketime)
    return report(args, plan, chaos, baseline, time.monotonic() - started, mount, left_out)


def report(args: argparse.Namespace, plan: Sequence[Fault], chaos: dict[str, Any],
           baseline: dict[str, Any], elapsed_s: float, mount: dict[str, Any],
           left_out: dict[str, str]) -> dict[str, Any]:
    injected = sum(chaos["faults"].values())
    targets: dict[str, bool] = {
        "lost_silently_0": chaos["lost_silently"] == 0,
        "duplicates_0": chaos["duplicates"] == 0,
        "elapsed_under_30_min": elapsed_s < TARGET_ELAPSED_S,
    }
    if args.faults >= TARGET_FAULTS:
        targets["faults_at_least_1000"] = injected >= TARGET_FAULTS
    if args.faults >= len(KINDS):
        # Not met when a kind was left out (no libfaketime) or never came round.
        targets["every_kind_injected"] = set(chaos["faults"]) == set(KINDS)
    planned = Counter(f.kind for f in plan)
    base_keys = ("confirmed", "at_depot", "lost_silently", "duplicates", "drain_s",
                 "confirmed_per_s", "scanning_s", "elapsed_s", "not_drained",
                 "events_stamped_off_clock")
    return {
        "benchmark": "chaos",
        "seed": args.seed,
        "fleet": {"vans": args.vans, "lockers": 1, "depot_workers": DEPOT_WORKERS,
                  "database": "sqlite", "broker": "mosquitto, no persistence"},
        "faults_planned": dict(planned),
        **chaos,
        "faults_injected": injected,
        "left_out": left_out,
        "disk_full_method": "prlimit RLIMIT_FSIZE=0 on the running device, then lifted "
                            "(EFBIG: SQLite's I/O error path, not SQLITE_FULL)",
        "baseline": {k: baseline.get(k) for k in base_keys},
        "ratio_confirmed_per_s": _ratio(chaos.get("confirmed_per_s"),
                                        baseline.get("confirmed_per_s")),
        "ratio_drain_s": _ratio(chaos.get("drain_s"), baseline.get("drain_s")),
        "elapsed_s": rounded(elapsed_s, 1),
        "mount": mount,
        "host": host_facts(),
        "targets_met": {**targets, "all": all(targets.values())},
    }


def _ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return None
    return rounded(value / base, 3)


def summary(r: dict[str, Any]) -> str:
    return (f"chaos: {r['faults_injected']} faults in {r['elapsed_s']} s; "
            f"{r['confirmed']} confirmed, {r['at_depot']} at the depot, "
            f"{r['reported_lost']['count']} reported lost, {r['lost_silently']} lost silently, "
            f"{r['duplicates']} duplicates ({r['carried_copies']} carried copies); drain "
            f"{r['drain_s']} s (baseline {r['baseline']['drain_s']} s); "
            + "".join(f"{kind} left out ({why}); " for kind, why in r["left_out"].items())
            + f"targets {'met' if r['targets_met']['all'] else 'NOT met'}")
