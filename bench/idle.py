"""`bench idle`: what a running van costs its device while nothing happens.

What is measured: a real van process (`lastmile van --config FILE`, the production entry
point) with its scanner on a pseudo-terminal that this bench keeps open and its uplink
connected to a real Mosquitto with the van's own account. Once the van has announced itself
(its retained `online` status, read by a subscriber on the depot account) and a settling pause
has passed, the bench reads `/proc` at the start and end of a window (default 20 s):

- CPU share: utime + stime from `/proc/PID/stat`, as % of one core over the window (the clock
  tick is 10 ms, so `cpu_percent_ns` adds the nanosecond on-CPU time summed over the threads'
  `/proc/PID/task/TID/schedstat`);
- memory: `VmRSS` at the end of the window and the peak `VmHWM` from `/proc/PID/status`;
- wakeups: context switches of all threads per second (every timer or poll wakes the CPU).

Why: the handheld runs on a battery all day, and idle is most of its day; the issue's targets
are under 1 % of a core and under 60 MB resident. The baseline, measured over the same window
in the same way, is a bare `python -c "import time; time.sleep(...)"`: the interpreter's own
floor. The van process is always stopped at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.rig import BenchError, PlainClient, host_facts, rounded, scratch_dir
from simulators.broker import Broker, find_mosquitto
from simulators.scanner import SimulatedScanner
from sync.wire import status_topic

DEVICE = "van-idle"
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 60.0
STOP_TIMEOUT_S = 5.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=float, default=20.0,
                   help="seconds of idle measured (default 20)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after the van is online before the window (default 3)")
    p.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the van's online status (default 30)")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the scratch directory here (default: the current directory)")


@dataclass(frozen=True)
class ProcessSample:
    """What /proc says about one process at one moment."""

    at: float  # time.monotonic()
    cpu_ticks: int  # utime + stime, in clock ticks
    cpu_ns: int  # on-CPU time of its live threads (schedstat), in ns
    rss_kb: int
    hwm_kb: int
    context_switches: int  # voluntary + involuntary, summed over its live threads
    switches_by_thread: dict[int, int]
    threads: int


def sample(pid: int) -> ProcessSample:
    proc = Path(f"/proc/{pid}")
    stat = (proc / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
    status = _status(proc / "status")
    cpu_ns = 0
    by_thread: dict[int, int] = {}
    for task in proc.glob("task/*"):
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            t = _status(task / "status")
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between listing and reading
        by_thread[int(task.name)] = (t["voluntary_ctxt_switches"]
                                     + t["nonvoluntary_ctxt_switches"])
    return ProcessSample(
        at=time.monotonic(),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        cpu_ns=cpu_ns,
        rss_kb=status["VmRSS"],
        hwm_kb=status["VmHWM"],
        context_switches=sum(by_thread.values()),
        switches_by_thread=by_thread,
        threads=status["Threads"],
    )


def _status(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def figures(start: ProcessSample, end: ProcessSample) -> dict[str, Any]:
    window = end.at - start.at
    return {
        "cpu_percent": rounded((end.cpu_ticks - start.cpu_ticks) / CLOCK_TICKS_PER_S
                               / window * 100),
        "cpu_percent_ns": rounded((end.cpu_ns - start.cpu_ns) / 1e9 / window * 100),
        "rss_mb": rounded(end.rss_kb / 1024, 1),
        "hwm_mb": rounded(end.hwm_kb / 1024, 1),
        "wakeups_per_s": rounded((end.context_switches - start.context_switches) / window, 1),
        # Per thread (threads alive at both ends), busiest first: which loop wakes the CPU.
        "wakeups_per_s_by_thread": sorted(
            (rounded((n - start.switches_by_thread[tid]) / window, 1)
             for tid, n in end.switches_by_thread.items() if tid in start.switches_by_thread),
            reverse=True,
        ),
        "threads": end.threads,
    }


def van_command() -> list[str]:
    """The installed `lastmile` entry point next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "lastmile"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "lastmile.cli"]


def write_config(workdir: Path, scanner_port: str, broker_port: int, password: str) -> Path:
    (workdir / f"{DEVICE}.password").write_text(password + "\n")
    (workdir / f"{DEVICE}.password").chmod(0o600)
    config = workdir / f"{DEVICE}.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n'
        f'journal = "{DEVICE}.journal.db"\n'
        "\n[scanner]\n"
        f"port = {json.dumps(scanner_port)}\n"
        'suffix = "crlf"\n'
        "\n[broker]\n"
        'host = "127.0.0.1"\n'
        f"port = {broker_port}\n"
        f'username = "{DEVICE}"\n'
        f'password_file = "{DEVICE}.password"\n'
    )
    return config


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def await_online(broker: Broker, van: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until the van's retained status says `online` (read with the depot account)."""
    started = time.monotonic()
    online = False

    def on_status(msg: mqtt.MQTTMessage) -> None:
        nonlocal online
        with contextlib.suppress(ValueError, AttributeError):  # not a JSON object: not ours
            online = online or json.loads(msg.payload).get("state") == "online"

    user, password = broker.depot_credentials
    watcher = PlainClient(broker.host, broker.port, user, password, on_message=on_status)
    watcher.start(subscribe=status_topic(DEVICE))
    try:
        while not online:
            if van.poll() is not None:
                raise BenchError(f"the van exited with status {van.returncode} before online")
            if time.monotonic() - started > timeout:
                raise BenchError(f"the van did not come online in {timeout} s")
            time.sleep(0.05)
    finally:
        watcher.stop()
    return time.monotonic() - started


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.window <= 0 or args.settle < 0:
        raise BenchError("--window must be positive and --settle not negative")
    if find_mosquitto() is None:
        raise BenchError("bench idle needs Mosquitto (apt-get install mosquitto)")
    password = secrets.token_urlsafe(18)
    with scratch_dir(args.dir, "idle") as workdir, \
            Broker(workdir / "broker", devices={DEVICE: password}) as broker, \
            SimulatedScanner() as scanner:
        config = write_config(workdir, scanner.path, broker.port, password)
        sleep_s = args.connect_timeout + args.settle + args.window + 60
        stderr_path = workdir / "van.stderr"
        with (workdir / "van.stdout").open("wb") as out, stderr_path.open("wb") as err:
            command = van_command()
            van = subprocess.Popen([*command, "van", "--config", str(config)],
                                   cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        baseline: subprocess.Popen[bytes] | None = None
        try:
            baseline = subprocess.Popen(
                [sys.executable, "-c", f"import time; time.sleep({sleep_s})"],
                stdin=subprocess.DEVNULL,
            )
            try:
                online_s = await_online(broker, van, args.connect_timeout)
            except BenchError as exc:
                raise BenchError(f"{exc}\n{_tail(stderr_path)}") from None
            time.sleep(args.settle)
            try:
                van0, base0 = sample(van.pid), sample(baseline.pid)
                time.sleep(args.window)
                van1, base1 = sample(van.pid), sample(baseline.pid)
            except OSError as exc:  # /proc/PID is gone: the process died under the bench
                raise BenchError(f"a measured process ended: {exc}\n{_tail(stderr_path)}"
                                 ) from None
            alive = van.poll() is None
        finally:
            van_status = stop_process(van)
            if baseline is not None:
                stop_process(baseline)
    ours, base = figures(van0, van1), figures(base0, base1)
    return {
        "benchmark": "idle",
        "window_s": rounded(van1.at - van0.at, 2),
        **ours,
        **{f"baseline_{key}": value for key, value in base.items()},
        "targets": {"cpu_percent_max": TARGET_CPU_PERCENT, "rss_mb_max": TARGET_RSS_MB},
        "targets_met": (ours["cpu_percent"] < TARGET_CPU_PERCENT
                        and ours["rss_mb"] < TARGET_RSS_MB),
        "online_after_s": rounded(online_s, 2),
        "van_alive_through_window": alive,
        "van_exit_status": van_status,
        "command": " ".join([Path(command[0]).name, *command[1:], "van", "--config",
                             config.name]),
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"idle: van {r['cpu_percent']} % CPU, {r['rss_mb']} MB RSS (peak {r['hwm_mb']}), "
        f"{r['wakeups_per_s']} wakeups/s; bare python {r['baseline_cpu_percent']} % CPU, "
        f"{r['baseline_rss_mb']} MB; targets {'met' if r['targets_met'] else 'NOT met'}"
    )
