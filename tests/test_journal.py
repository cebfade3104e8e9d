"""The journal on real SQLite files: gapless, chained, durable, refused when full, recovered."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.errors import JournalError, JournalFull
from sync.journal import ALARM_KIND, Journal
from sync.wire import canonical_payload, chain_hash, genesis_hash


def _verify_chain(journal: Journal) -> None:
    prev, events = journal.read(0, 10**6)
    assert prev == genesis_hash(journal.journal_id)
    h = prev
    for e in events:
        h = chain_hash(
            h,
            e.seq,
            e.uuid,
            e.boot_id,
            e.mono_ns,
            e.wall_ns,
            e.wall_synced,
            e.kind,
            canonical_payload(e.payload),
        )
        assert h == e.hash


def test_sequence_is_gapless_and_chained_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1") as j:
        seqs = [j.append("scan", {"n": i}).seq for i in range(5)]
        journal_id = j.journal_id
    with Journal(path, "van-1") as j:
        assert j.journal_id == journal_id
        seqs += [j.append("scan", {"n": i}).seq for i in range(5, 8)]
        _verify_chain(j)
        _prev, events = j.read(0, 100)
    assert seqs == list(range(1, 9))
    assert [e.payload["n"] for e in events] == list(range(8))
    assert all(len(e.uuid) == 32 for e in events)
    assert len({e.uuid for e in events}) == 8


def test_event_is_committed_before_append_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1") as j:
        event = j.append("scan", {"parcel": "RB123456785GB"})
        # A separate connection (another process, after a power cut) sees the row already.
        other = sqlite3.connect(path)
        row = other.execute("SELECT kind, payload FROM events WHERE seq=?", (event.seq,)).fetchone()
        other.close()
    assert row == ("scan", '{"parcel":"RB123456785GB"}')


def test_full_storage_refuses_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1", max_pages=12) as j:
        stored = 0
        with pytest.raises(JournalFull):
            for i in range(10_000):
                j.append("scan", {"blob": "x" * 500, "n": i})
                stored += 1
        assert j.last_seq == stored
        _prev, events = j.read(0, 10**6)
        assert len(events) == stored
    with Journal(path, "van-1") as j:  # the file is still sound after the refusal
        assert j.last_seq == stored
        _verify_chain(j)


def test_corrupt_journal_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1") as j:
        for i in range(50):
            j.append("scan", {"n": i, "pad": "y" * 100})
        old_id = j.journal_id
    data = bytearray(path.read_bytes())
    data[1024:6000] = b"\xa5" * (6000 - 1024)
    path.write_bytes(bytes(data))
    with Journal(path, "van-1") as j:
        assert j.moved_aside is not None and j.moved_aside.exists()
        assert j.moved_aside.read_bytes() == bytes(data)
        assert j.journal_id != old_id
        _prev, events = j.read(0, 10)
    assert [e.kind for e in events] == [ALARM_KIND]
    assert events[0].payload["alarm"] == "journal_corrupt"
    assert events[0].payload["moved_to"] == str(j.moved_aside)


def test_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with Journal(path, "van-1") as j:
        assert j.moved_aside is not None
        assert j.moved_aside.read_bytes() == b"this is not sqlite" * 100
        assert j.last_seq == 1


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1") as j:
        j.append("scan", {})
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(path, "van-1")
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_journal_of_another_device_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path, "van-1").close()
    with pytest.raises(JournalError, match="belongs to device"):
        Journal(path, "van-2")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path, "van-1"), pytest.raises(JournalError, match="in use"):
        Journal(path, "van-1")


class _FakeWall:
    """A clock whose wall time the test moves; the rest is real."""

    boot_id = "boot-test"

    def __init__(self) -> None:
        self.now = 1_000_000_000_000

    def monotonic_ns(self) -> int:
        return self.now

    def wall_ns(self) -> int:
        return self.now

    def wall_synced(self) -> bool:
        return True


def test_nothing_is_pruned_before_ack_and_retention(tmp_path: Path) -> None:
    clock = _FakeWall()
    with Journal(tmp_path / "j.db", "van-1", clock=clock, retention_s=3600) as j:
        for i in range(10):
            j.append("scan", {"n": i})
        clock.now += 10 * 3600 * 10**9
        assert j.prune() == 0  # nothing acknowledged yet, however old
        assert j.mark_acked(6)
        assert not j.mark_acked(4)  # acks never go backwards
        assert j.prune() == 0  # acknowledged, but not yet kept for the retention
        hash_of_6 = j.read(5, 1)[1][0].hash
        clock.now += 3601 * 10**9
        assert j.prune() == 6
        prev, events = j.read(6, 100)  # resend from the ack still works after pruning
        assert [e.seq for e in events] == [7, 8, 9, 10]
        assert prev == hash_of_6
        with pytest.raises(JournalError):
            j.mark_acked(11)
    with Journal(tmp_path / "j.db", "van-1", clock=clock) as j:
        assert (j.acked_seq, j.last_seq) == (6, 10)
        assert j.append("scan", {}).seq == 11


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 192 KiB tmpfs, so the disk itself fills up (needs root; skipped otherwise)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_really_full_disk_refuses_events_and_keeps_the_journal_sound(
    tiny_filesystem: Path,
) -> None:
    path = tiny_filesystem / "j.db"
    stored: list[int] = []
    with Journal(path, "van-1") as j:
        with pytest.raises(JournalFull):
            for i in range(100_000):
                stored.append(j.append("parcel_scanned", {"n": i, "pad": "p" * 300}).seq)
        assert j.last_seq == stored[-1]
        with pytest.raises(JournalFull):  # still full: refused again, not half-stored
            j.append("parcel_scanned", {"n": -1, "pad": "p" * 300})
    with Journal(path, "van-1") as j:
        _prev, events = j.read(0, 10**6)
        assert [e.seq for e in events] == stored
        _verify_chain(j)


def test_events_and_device_tables_commit_together_or_not_at_all(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db", "locker-1") as j:
        j.ensure_tables("locker", 1, ["CREATE TABLE slots (id TEXT PRIMARY KEY, parcel TEXT)"])
        j.ensure_tables("locker", 1, ["CREATE TABLE slots (id TEXT PRIMARY KEY, parcel TEXT)"])
        with j.transaction() as tx:
            tx.append("dropoff", {"slot": "A1"})
            tx.execute("INSERT INTO slots VALUES ('A1', 'RB123456785GB')")
        with pytest.raises(RuntimeError), j.transaction() as tx:
            tx.append("dropoff", {"slot": "A2"})
            tx.execute("INSERT INTO slots VALUES ('A2', 'X')")
            raise RuntimeError("the door never closed")
        assert j.last_seq == 1
        assert j.query("SELECT id FROM slots") == [("A1",)]
        assert j.append("next", {}).seq == 2  # the journal is usable after a refused write
        _verify_chain(j)
        with pytest.raises(JournalError, match="version"):
            j.ensure_tables("locker", 2, [])


def test_listeners_hear_each_commit_once_and_never_a_rolled_back_one(tmp_path: Path) -> None:
    heard: list[list[int]] = []
    with Journal(tmp_path / "j.db", "van-1") as j:
        j.add_listener(lambda events: heard.append([e.seq for e in events]))
        j.append("a", {})
        j.append_many([("b", {}), ("c", {})])
        with pytest.raises(RuntimeError), j.transaction() as tx:
            tx.append("d", {})
            raise RuntimeError("refused")
    assert heard == [[1], [2, 3]]
