"""`lastmile sim --ui PORT`: after the simulated day the depot stays up for a person to look at.

The simulator only opens the door: it makes an operator account through the depot's own
`add_user` and prints one line; the console is the depot's own. Checked as a person would use
it: sign in with the printed password (over HTTP, and in Chromium), see Today, then Ctrl-C.
"""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest

from tests.browser import sign_in
from tests.web import Console

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
SHORT_DAY = ("--vans", "1", "--lockers", "0", "--parcels", "5", "--days", "1", "--speed", "8000")
CONSOLE_LINE = re.compile(r"^console: (http://127\.0\.0\.1:(\d+)/) user (\S+) password (\S+)$")
RUN_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 30.0


@dataclass
class Running:
    process: subprocess.Popen[str]
    url: str
    port: int
    user: str
    password: str
    lines: list[str]


def _read_lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


@contextlib.contextmanager
def sim_ui(tmp_path: Path, *extra: str) -> Iterator[Running]:
    """`lastmile sim --ui 0` (any free port: the line says which) on the shortest day, up
    until the block ends; killed if it is still up after the test."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lastmile.cli", "sim", *SHORT_DAY, "--workdir",
         str(tmp_path / "run"), "--ui", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=RUN_TIMEOUT_S)
            except queue.Empty:
                raise AssertionError("no console line in time:\n" + "\n".join(seen)) from None
            if line is None:
                raise AssertionError("the sim ended without a console:\n" + "\n".join(seen))
            seen.append(line)
            found = CONSOLE_LINE.match(line)
            if found:
                break
        url, port, user, password = found.groups()
        yield Running(process, url.rstrip("/"), int(port), user, password, seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(EXIT_TIMEOUT_S)
        reader.join(EXIT_TIMEOUT_S)
        process.stdout.close()


@pytest.mark.slow
def test_sim_ui_serves_the_console_until_interrupted(tmp_path: Path) -> None:
    with sim_ui(tmp_path) as run:
        # The day ran and was reported before the door opened.
        assert any("OK: every event exactly once" in line for line in run.lines), run.lines
        assert run.user == "operator" and len(run.password) >= 12
        console = Console(run.url)
        assert console.sign_in(run.user, "not the password")[0] == 401
        status, _, body = console.sign_in(run.user, run.password)
        assert status == 303, body
        status, page = console.get("/console")
        assert status == 200 and "Today" in page
        # Still serving: nothing ends the depot but the operator's Ctrl-C.
        assert run.process.poll() is None
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(EXIT_TIMEOUT_S) == 0


@pytest.mark.slow
def test_sim_ui_in_a_browser(tmp_path: Path, page: Page) -> None:
    """The printed line is all a person needs: Chromium signs in and shows the day; SIGTERM
    (a service manager's stop) ends it as cleanly as Ctrl-C."""
    with sim_ui(tmp_path, "--json") as run:
        sign_in(page, run.url, run.user, run.password)
        assert page.url == f"{run.url}/console"
        assert "Today" in page.inner_text("body")
        assert page.locator("input[name=password]").count() == 0
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(EXIT_TIMEOUT_S) == 0
