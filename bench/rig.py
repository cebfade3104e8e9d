"""The bench rig: where a benchmark's files live, what disk that is, and the plain MQTT client.

Owns the scratch directory every benchmark writes in (a fresh hidden directory on the disk
under test, removed afterwards), the description of the mount it sits on (a latency figure is
read against the storage behind it), percentiles, and the plain paho client the baselines use.

Must never: put a benchmark's SQLite files on tmpfs by default (fsync costs nothing there, so
every durable-commit comparison would be meaningless), leave a directory behind, or talk to a
broker it did not start.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# File systems whose fsync never reaches a disk: a commit latency measured there says nothing.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
CONNECT_TIMEOUT_S = 10.0


class BenchError(Exception):
    """A benchmark could not measure what it set out to (the setup failed, or it timed out)."""


@contextlib.contextmanager
def scratch_dir(parent: Path | None, name: str) -> Iterator[Path]:
    """A fresh directory under `parent` (default: the current directory), removed afterwards.

    The default is the current directory, not /tmp: /tmp is often tmpfs, where fsync is free.
    """
    base = (parent or Path.cwd()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".bench-{name}-", dir=base) as tmp:
        yield Path(tmp)


def describe_mount(path: Path) -> dict[str, Any]:
    """What `df -P -T` says about the file system holding `path`, and whether fsync is real."""
    try:
        out = subprocess.run(
            ["df", "-P", "-T", "-k", str(path)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()
        source, fstype, size_k, _used, avail_k, _pct, mount_point = out[-1].split(None, 6)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"path": str(path), "error": f"df failed: {exc}"}
    return {
        "path": str(path),
        "source": source,
        "fstype": fstype,
        "mounted_on": mount_point,
        "size_gb": round(int(size_k) / 1024**2, 1),
        "avail_gb": round(int(avail_k) / 1024**2, 1),
        "fsync_reaches_storage": fstype not in MEMORY_FILESYSTEMS,
    }


def host_facts() -> dict[str, Any]:
    """The machine a figure was measured on."""
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def per_s(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """For the few conditions nothing signals (a row appearing in another thread's database)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


class PlainClient:
    """A plain paho-mqtt 2.x client (MQTT v5, callback API 2) with its network thread running.

    What an engineer writes without our uplink: connect, subscribe, publish, a callback per
    message. `connected` and `subscribed` are set from paho's callbacks.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._refused: str | None = None
        self._on_message = on_message
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        c.username_pw_set(username, password)
        c.on_connect = self._connect
        c.on_subscribe = self._subscribe
        c.on_message = self._message
        self.client = c
        self._address = (host, port)

    def start(self, subscribe: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect (clean start: no session is left behind) and optionally subscribe, QoS 1."""
        self.client.connect(*self._address, keepalive=30, clean_start=True)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise BenchError(f"plain MQTT client not connected in {timeout} s: {self._refused}")
        if subscribe is not None:
            self.client.subscribe(subscribe, qos=1)
            if not self.subscribed.wait(timeout):
                raise BenchError(f"no SUBACK for {subscribe} in {timeout} s")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _connect(self, _c: mqtt.Client, _u: object, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self.connected.set()

    def _subscribe(self, _c: mqtt.Client, _u: object, _m: int, codes: Any, _p: Any) -> None:
        if all(not code.is_failure for code in codes):
            self.subscribed.set()
        else:
            print(f"bench: subscription refused: {codes}", file=sys.stderr)

    def _message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(msg)
