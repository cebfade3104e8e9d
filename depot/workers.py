"""Several depot processes on one database: `lastmile depot --workers N` starts and minds them.

Each worker is a whole depot service in a process of its own (`lastmile depot --worker K`), with
its own broker account and database connection; they share the devices' stream through an MQTT
v5 shared subscription and take turns through the database (depot.store). This module only
keeps them running: it starts N, restarts one that dies (with a growing pause, so a worker
that cannot start does not spin), and on SIGTERM stops them all, waiting for each.

Must never: leave a worker behind when it stops, or restart in a tight loop.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STOP_WAIT_S = 20.0  # a worker finishing its pass and its POSTs; then it is killed
HEALTHY_AFTER_S = 60.0  # a worker that ran this long starts the next restart pause afresh


class Workers:
    """N worker processes, each restarted when it dies, all stopped by `stop()`."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        count: int,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self._command = command
        self._env = dict(env) if env is not None else None
        self.count = count
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    def start(self) -> None:
        for worker in range(1, self.count + 1):
            t = threading.Thread(target=self._mind, args=(worker,), name=f"worker-{worker}")
            t.start()
            self._threads.append(t)

    def pids(self) -> dict[int, int]:
        with self._lock:
            return {k: p.pid for k, p in self._procs.items() if p.poll() is None}

    def health(self) -> list[str]:
        """The workers not running right now (dead, or waiting out a restart pause): while
        any is, the supervisor's watchdog stays silent, so a worker that cannot come back
        gets the whole depot restarted by systemd rather than a depot short of a worker."""
        running = self.pids()
        return [
            f"depot worker {k} is not running"
            for k in range(1, self.count + 1)
            if k not in running
        ]

    def status_line(self) -> str:
        running = len(self.pids())
        n = self.restarts
        restarts = f", {n} restart{'s' if n > 1 else ''}" if n else ""
        return f"{running}/{self.count} workers running{restarts}"

    def _mind(self, worker: int) -> None:
        pause = RESTART_MIN_S
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                proc = subprocess.Popen(
                    list(self._command(worker)), stdin=subprocess.DEVNULL, env=self._env
                )
                self._procs[worker] = proc
            log.info("depot worker %d running as pid %d", worker, proc.pid)
            began = time.monotonic()
            # A plain waitpid, no timeout: Popen.wait(timeout) polls every few ms, and a depot
            # idles for hours. stop() ends the child, which ends this wait.
            code = proc.wait()
            healthy = time.monotonic() - began >= HEALTHY_AFTER_S
            if self._stop.is_set():
                return
            pause = RESTART_MIN_S if healthy else min(pause * 2, RESTART_MAX_S)
            log.error("depot worker %d exited (%s); restarting in %.0f s", worker, code, pause)
            self.restarts += 1
            if self._stop.wait(pause):
                return

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.error("depot worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=STOP_WAIT_S)
        for t in self._threads:
            t.join(timeout=STOP_WAIT_S)


def worker_command(
    python: str, config: str, workers: int, extra: Sequence[str] = (), verbose: int = 0
) -> Callable[[int], list[str]]:
    """The command line of worker K: the same depot, told which worker it is."""

    def command(worker: int) -> list[str]:
        return [
            python,
            "-m",
            "lastmile",
            *["-v"] * verbose,
            "depot",
            "--config",
            config,
            "--workers",
            str(workers),
            "--worker",
            str(worker),
            *extra,
        ]

    return command
