"""The van's scan desk over a real pseudo-terminal: store first, beep after, refuse out loud."""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path

from drivers.scanner import ScanFramer, ScannerReader
from edge.van import PARCEL_SCANNED, SCAN_REJECTED, ScanDesk
from simulators.scanner import SimulatedScanner
from sync.errors import JournalFull
from sync.journal import Journal
from sync.wire import Event


class CheckingBeeper:
    """Feedback that checks, at the moment of the beep, that the event is already on disk."""

    def __init__(self, db: Path) -> None:
        self.db = db
        # (what, the event confirmed, its row at the beep) or ("refused", None, the reason)
        self.heard: queue.Queue[tuple[str, Event | None, object]] = queue.Queue()

    def confirmed(self, event: Event) -> None:
        other = sqlite3.connect(self.db)  # as another process would see it after a power cut
        row = other.execute("SELECT uuid FROM events WHERE seq=?", (event.seq,)).fetchone()
        other.close()
        self.heard.put(("confirmed", event, row))

    def refused(self, reason: str, raw: str) -> None:
        self.heard.put(("refused", None, reason))


def _desk_on_pty(tmp_path: Path, journal: Journal) -> tuple[CheckingBeeper, ScannerReader,
                                                             SimulatedScanner]:
    beeper = CheckingBeeper(journal.path)
    desk = ScanDesk(journal, beeper)
    scanner = SimulatedScanner(tmp_path / "scanner.tty")
    opened = threading.Event()

    def on_connection(up: bool) -> None:
        if up:
            opened.set()

    reader = ScannerReader(str(scanner.path), on_scan=desk.on_scan, framer=ScanFramer(b"\r\n"),
                           on_connection=on_connection)
    reader.start()
    assert opened.wait(10), "the reader never opened the scanner's port"
    return beeper, reader, scanner


def test_a_scan_is_on_disk_before_the_courier_hears_the_beep(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "van-1")
    beeper, reader, scanner = _desk_on_pty(tmp_path, journal)
    try:
        scanner.scan("00157035381410375177\x1d42012345", aim="]C1")
        what, event, row = beeper.heard.get(timeout=10)
    finally:
        reader.stop()
        scanner.close()
        journal.close()
    assert what == "confirmed" and event is not None
    assert row == (event.uuid,)
    assert event.kind == PARCEL_SCANNED
    assert event.payload["parcel"] == "157035381410375177"
    assert event.payload["raw"] == "00157035381410375177\x1d42012345"  # GS kept
    assert event.payload["aim"] == "]C1"


def test_an_invalid_label_is_refused_and_recorded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "van-1")
    beeper, reader, scanner = _desk_on_pty(tmp_path, journal)
    try:
        scanner.scan("RB123456786GB")
        what, _, reason = beeper.heard.get(timeout=10)
        _prev, events = journal.read(0, 10)
    finally:
        reader.stop()
        scanner.close()
        journal.close()
    assert what == "refused" and "check digit" in str(reason)
    assert [e.kind for e in events] == [SCAN_REJECTED]


def test_a_full_disk_refuses_the_scan_and_confirms_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "van-1", max_pages=12)
    for size in (400, 100, 20, 0):  # fill the journal's storage to the brim
        while True:
            try:
                journal.append("filler", {"pad": "z" * size})
            except JournalFull:
                break
    before = journal.last_seq
    beeper, reader, scanner = _desk_on_pty(tmp_path, journal)
    try:
        scanner.scan("RB123456785GB")
        what, _, reason = beeper.heard.get(timeout=10)
    finally:
        reader.stop()
        scanner.close()
        journal.close()
    assert what == "refused" and "NOT recorded" in str(reason)
    assert Journal(tmp_path / "j.db", "van-1").last_seq == before
