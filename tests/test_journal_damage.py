"""Damage to the journal on the card never loses a confirmed event without saying so.

Each scenario reproduces one failure found by an independent harness: a write-ahead log cut
short after a power cut (the journal goes back, integrity_check still says ok), one changed byte
in an event not yet acknowledged, a journal emptied or deleted, and a depot acknowledging more
than the journal holds. A power cut is a copy of the journal's files taken while it is open (WAL
with synchronous=FULL: what a commit returned is in those files), then damaged as a card damages
them. The end-to-end ones run a real Mosquitto and the real depot on both backends, and check
that every confirmed event is at the depot or inside a loss the depot recorded from the device's
alarm, and that the events after the damage arrive.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depot.health import DepotHealth
from depot.ingest import Depot, DepotStore
from simulators.broker import Broker
from sync.highwater import HighWater, Mark
from sync.journal import ALARM_KIND, Journal
from sync.photos import PhotoOutbox
from sync.uplink import Uplink
from sync.wire import Event, canonical_payload, chain_hash
from tests.conftest import UplinkPatience, address

FAST: UplinkPatience = {
    "ack_timeout_s": 2.0,
    "keepalive_s": 2,
    "backoff_min_s": 0.1,
    "backoff_max_s": 1.0,
}
DEVICE = "van-1"


def power_cut(src: Path, dst_dir: Path) -> Path:
    """The journal's files as a power cut at this instant leaves them (taken while open)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", ".hw"):
        f = Path(f"{src}{suffix}")
        if f.exists():
            shutil.copyfile(f, dst_dir / f"{src.name}{suffix}")
    return dst_dir / src.name


def scans(journal: Journal, n: int, start: int = 0) -> list[Event]:
    return [journal.append("scan", {"code": f"PARCEL-{i:05d}"}) for i in range(start, start + n)]


def cut_wal(path: Path, keep_fraction: float) -> None:
    wal = Path(f"{path}-wal")
    size = wal.stat().st_size
    with wal.open("r+b") as f:
        f.truncate(int(size * keep_fraction))


def flip_byte(path: Path, needle: bytes) -> None:
    """Change one character of `needle` wherever the file holds it (one event's payload)."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, f"{needle!r} not in {path}"
    while at >= 0:
        data[at + len(needle) - 1] ^= 0x01
        at = data.find(needle, at + 1)
    path.write_bytes(bytes(data))


def first_alarm(journal: Journal) -> dict[str, Any]:
    _, events = journal.read(0, 1)
    assert events and events[0].kind == ALARM_KIND
    return dict(events[0].payload)


# --- the journal alone ------------------------------------------------------------------------


def test_a_wal_cut_short_is_a_rollback_reported_with_what_was_lost(tmp_path: Path) -> None:
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        old_id = j.journal_id
        made = scans(j, 5)
        j.mark_acked(5)
        made += scans(j, 35, start=5)
        image = power_cut(live, tmp_path / "cut")
    cut_wal(image, 0.5)
    with Journal(image, DEVICE) as j2:
        alarm = first_alarm(j2)
        assert j2.journal_id != old_id
        assert alarm["alarm"] == "journal_rolled_back" and alarm["journal"] == old_id
        found = alarm["found_seq"]
        assert 5 <= found < 40 and alarm["had_seq"] == 40
        assert alarm["lost"] == {"from": found + 1, "to": 40}
        assert j2.moved_aside is not None and j2.moved_aside.exists()
        # The survivors the depot had not acknowledged come along, as they were.
        _, events = j2.read(0, 1000)
        carried = events[1:]
        assert [e.uuid for e in carried] == [e.uuid for e in made[5:found]]
        assert [e.payload for e in carried] == [e.payload for e in made[5:found]]
        assert alarm["carried"] == {
            "journal": old_id, "from_seq": 6, "to_seq": found, "as_seq": 2,
        }
    # Started again, the new journal is what the high-water mark knows: no second alarm.
    with Journal(image, DEVICE) as j3:
        assert j3.journal_id == j2.journal_id and j3.last_seq == len(events)


def test_an_emptied_or_missing_journal_is_reported_lost(tmp_path: Path) -> None:
    for how in ("emptied", "missing"):
        path = tmp_path / how / "journal.db"
        with Journal(path, DEVICE) as j:
            old_id = j.journal_id
            scans(j, 12)
            j.mark_acked(4)
        if how == "emptied":
            path.write_bytes(b"")
        else:
            path.unlink()
        with Journal(path, DEVICE) as j2:
            alarm = first_alarm(j2)
            assert alarm["alarm"] == "journal_lost" and alarm["journal"] == old_id
            assert alarm["had_seq"] == 12 and alarm["lost"] == {"from": None, "to": 12}
            assert j2.last_seq == 1


def test_a_rollover_cut_short_finds_the_copy_it_moved_aside(tmp_path: Path) -> None:
    """A crash after the old file was moved aside, before the new journal's first commit:
    the next start carries from the copy instead of calling everything lost."""
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        old_id = j.journal_id
        made = scans(j, 10)
        image = power_cut(live, tmp_path / "cut")
    aside = image.with_name("journal.db.rolled-back-20260101T000000Z-1")
    image.rename(aside)
    Path(f"{image}-wal").rename(f"{aside}-wal")
    with Journal(image, DEVICE) as j2:
        alarm = first_alarm(j2)
        assert alarm["alarm"] == "journal_lost" and alarm["lost"] is None
        _, events = j2.read(0, 100)
        assert [e.uuid for e in events[1:]] == [e.uuid for e in made]
        assert alarm["carried"]["journal"] == old_id


def test_device_tables_and_photos_survive_a_rollback(tmp_path: Path) -> None:
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        j.ensure_tables("locker", 3, ["CREATE TABLE slots (id TEXT PRIMARY KEY, parcel TEXT)",
                                      "CREATE INDEX slots_parcel ON slots(parcel)"])
        with j.transaction() as tx:
            tx.execute("INSERT INTO slots VALUES ('A1', 'P-1')")
            tx.append("parcel_deposited", {"compartment": "A1"})
        photo = PhotoOutbox(j).add(b"\xff\xd8 a doorstep \xff\xd9")
        scans(j, 30)
        image = power_cut(live, tmp_path / "cut")
    cut_wal(image, 0.3)
    with Journal(image, DEVICE) as j2:
        assert first_alarm(j2)["alarm"] == "journal_rolled_back"
        # The device's tables are as the surviving file held them, and still versioned.
        j2.ensure_tables("locker", 3, [])
        assert j2.query("SELECT id, parcel FROM slots") == [("A1", "P-1")]
        pending = PhotoOutbox(j2).next_pending()  # the photo outbox is the same rule's
        assert pending is not None and pending.sha256 == photo.sha256


def test_one_changed_byte_is_a_break_record_and_the_rest_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        jid = j.journal_id
        made = scans(j, 10)
        j.mark_acked(2)
    flip_byte(path, b"PARCEL-00004")  # event 5
    with Journal(path, DEVICE) as j2:
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        prev, events = j2.read(2, 100)
        assert [e.seq for e in events] == list(range(3, 11))
        brk = events[2]
        assert brk.kind == ALARM_KIND and brk.seq == 5
        assert brk.payload == {
            "alarm": "event_damaged", "journal": jid, "seq": 5, "uuid": made[4].uuid,
            "kind": "scan", "reason": "the stored event no longer matches its hash",
        }
        assert [e.uuid for e in events[3:]] == [e.uuid for e in made[5:]]
        kept = j2.query("SELECT seq, reason FROM damaged_events")
        assert kept == [(5, "the stored event no longer matches its hash")]
        # The chain holds from the acknowledged event through the break to the head.
        h = prev
        for e in events:
            h = chain_hash(h, e.seq, e.uuid, e.boot_id, e.mono_ns, e.wall_ns, e.wall_synced,
                           e.kind, canonical_payload(e.payload))
            assert h == e.hash
    with Journal(path, DEVICE) as j3:  # the repaired head is what the high-water mark has
        assert j3.journal_id == jid


def test_a_damaged_stored_hash_is_repaired_without_losing_the_event(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        made = scans(j, 6)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET hash=? WHERE seq=3", (b"\x00" * 32,))
    conn.commit()
    conn.close()
    with Journal(path, DEVICE) as j2:
        _, events = j2.read(0, 100)
        assert [e.uuid for e in events] == [e.uuid for e in made]
        assert j2.query("SELECT count(*) FROM damaged_events") == [(0,)]


def test_high_water_survives_a_torn_write(tmp_path: Path) -> None:
    hw = HighWater(tmp_path / "j.hw")
    hw.record(Mark("a" * 32, 7, b"\x01" * 32))
    hw.record(Mark("a" * 32, 8, b"\x02" * 32))
    hw.close()
    data = bytearray((tmp_path / "j.hw").read_bytes())
    data[0:10] = b"\xff" * 10  # the slot being written when the power went (counter 2: slot 0)
    (tmp_path / "j.hw").write_bytes(bytes(data))
    again = HighWater(tmp_path / "j.hw")
    assert again.mark == Mark("a" * 32, 7, b"\x01" * 32) and not again.unreadable
    again.close()
    (tmp_path / "j.hw").write_bytes(b"\xee" * 256)
    gone = HighWater(tmp_path / "j.hw")
    assert gone.mark is None and gone.unreadable
    gone.close()


def test_an_unreadable_high_water_mark_is_an_alarm(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        scans(j, 3)
    Path(f"{path}.hw").write_bytes(b"\xee" * 256)
    with Journal(path, DEVICE) as j2:
        assert j2.last_seq == 4
        _, events = j2.read(3, 1)
        assert events[0].payload["alarm"] == "high_water_unreadable"


def test_a_log_without_its_database_is_set_aside_not_replayed(tmp_path: Path) -> None:
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        scans(j, 5)
        image = power_cut(live, tmp_path / "cut")
    image.unlink()
    with Journal(image, DEVICE) as j2:
        assert first_alarm(j2)["alarm"] == "journal_lost"
    assert list(image.parent.glob("journal.db.orphan-*-wal"))


# --- through the broker to the depot ------------------------------------------------------------


class Stored:
    """Wakes the test when the depot stored a batch."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.batches = 0

    def __call__(self, device: str, result: object) -> None:
        with self.cond:
            self.batches += 1
            self.cond.notify_all()


@pytest.fixture
def depot(broker: Broker, depot_database: str) -> Iterator[Depot]:
    store = DepotStore(depot_database)
    service = Depot(store, address(broker, "depot"), on_stored=Stored())
    service.start()
    assert service.session.wait_connected(10)
    yield service
    service.stop()
    store.close()


def drain(journal: Journal, broker: Broker) -> None:
    up = Uplink(journal, address(broker, DEVICE), **FAST)
    up.start()
    try:
        assert up.wait_acked(journal.last_seq, 60), "the depot did not acknowledge everything"
    finally:
        up.stop()


def accounted(store: DepotStore, confirmed: list[tuple[str, Event]]) -> list[tuple[str, int]]:
    """The confirmed events neither at the depot nor inside a loss it recorded."""
    at_depot = {str(r[0]) for r in store.query("SELECT uuid FROM events WHERE device=?",
                                               (DEVICE,))}
    losses = store.query("SELECT journal, first_seq, last_seq FROM losses WHERE device=?",
                         (DEVICE,))
    silent = []
    for jid, e in confirmed:
        if e.uuid in at_depot:
            continue
        if any(j == jid and int(str(a)) <= e.seq and (b is None or e.seq <= int(str(b)))
               for j, a, b in losses):
            continue
        silent.append((jid, e.seq))
    return silent


def test_a_rolled_back_journal_loses_nothing_silently_at_the_depot(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        old = j.journal_id
        confirmed = [(old, e) for e in scans(j, 20)]
        drain(j, broker)  # the depot holds 1..20
        confirmed += [(old, e) for e in scans(j, 30, start=20)]  # confirmed while offline
        image = power_cut(live, tmp_path / "cut")
    cut_wal(image, 0.4)
    with Journal(image, DEVICE) as j2:
        alarm = first_alarm(j2)
        assert alarm["alarm"] == "journal_rolled_back"
        confirmed += [(j2.journal_id, e) for e in scans(j2, 5, start=100)]  # after the restart
        drain(j2, broker)
        new = j2.journal_id
    store = depot.store
    assert accounted(store, confirmed) == []
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]
    # The events after the restart are all there, and the loss names the old journal's tail.
    assert store.head(DEVICE, new) == j2.last_seq
    losses = store.query("SELECT journal, first_seq, last_seq, alarm FROM losses")
    found = alarm["found_seq"]
    assert found < 50
    assert losses == [(old, max(20, found) + 1, 50, "journal_rolled_back")]


def test_a_changed_byte_no_longer_stalls_the_stream(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        jid = j.journal_id
        made = scans(j, 10)
        drain(j, broker)
        made += scans(j, 10, start=10)  # 11..20, not yet sent
    flip_byte(path, b"PARCEL-00013")  # event 14
    with Journal(path, DEVICE) as j2:
        drain(j2, broker)
    store = depot.store
    assert store.head(DEVICE, jid) == 20
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]
    assert store.query("SELECT first_seq, last_seq, alarm FROM losses") == [
        (14, 14, "event_damaged")
    ]
    stored = {str(r[0]) for r in store.query("SELECT uuid FROM events")}
    assert {e.uuid for e in made} - stored == {made[13].uuid}
    assert accounted(store, [(jid, e) for e in made]) == []


def test_an_emptied_journal_is_a_loss_the_depot_records(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        old = j.journal_id
        confirmed = [(old, e) for e in scans(j, 8)]
        drain(j, broker)
        confirmed += [(old, e) for e in scans(j, 7, start=8)]
    path.write_bytes(b"")
    Path(f"{path}-wal").unlink(missing_ok=True)
    with Journal(path, DEVICE) as j2:
        drain(j2, broker)
    store = depot.store
    assert store.query("SELECT journal, first_seq, last_seq FROM losses") == [(old, 9, 15)]
    assert accounted(store, confirmed) == []
    shown = DepotHealth(store.database, session=None).check()["losses"]
    assert shown == {"reports": 1, "events": 7, "open_ended": 0}


def test_an_ack_beyond_the_journal_starts_a_new_one(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    """The card went back with its high-water mark (restored from an image): only the depot
    knows. Its acknowledgement beyond the journal's last event starts a new journal."""
    live = tmp_path / "live" / "journal.db"
    with Journal(live, DEVICE) as j:
        old = j.journal_id
        scans(j, 5)
        image = power_cut(live, tmp_path / "old")
        scans(j, 10, start=5)
        drain(j, broker)  # the depot holds 1..15
    with Journal(image, DEVICE) as j2:  # the card as it was at 5: nothing outside disagrees
        assert j2.journal_id == old and j2.last_seq == 5
        woke = threading.Event()
        j2.add_listener(lambda events: woke.set())
        up = Uplink(j2, address(broker, DEVICE), **FAST)
        up.start()
        try:
            assert woke.wait(30), "no new journal started"
            assert j2.journal_id != old
            scans(j2, 3, start=50)
            assert up.wait_acked(j2.last_seq, 60)
        finally:
            up.stop()
        alarm = first_alarm(j2)
    assert alarm["alarm"] == "journal_rolled_back" and alarm["depot_head"] == 15
    store = depot.store
    assert store.head(DEVICE, j2.journal_id) == j2.last_seq
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


def test_a_locker_whose_journal_went_back_still_hands_out_its_parcel(tmp_path: Path) -> None:
    """The locker's compartments live in its journal file: after a rollback they are what the
    surviving file held, in a new journal, and the customer's code still opens the door."""
    from tests.test_locker import close_rig, make_rig, power_cut_and_restart
    from tests.test_redeposit import card_goes_back

    rig = make_rig(tmp_path)
    cid, secrets = rig.courier_drops()
    old = rig.journal.journal_id
    image = power_cut(rig.config.journal, tmp_path / "image")
    rig.locker.key("000000" if secrets["code"] != "000000" else "111111")
    rig.watch.wait_event("pickup_attempt")

    after = power_cut_and_restart(rig, lambda: card_goes_back(Path(rig.config.journal), image))
    try:
        assert after.journal.journal_id != old
        alarm = first_alarm(after.journal)
        assert alarm["alarm"] == "journal_rolled_back" and alarm["journal"] == old
        after.locker.key(secrets["code"])
        after.watch.wait_event("door_unlocked", compartment=cid, purpose="pickup")
    finally:
        close_rig(after)


def test_a_loss_report_lost_before_it_was_sent_is_repeated(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    """A journal lost while the alarm about an earlier loss waited to be sent: the next
    journal repeats that report, so neither loss goes unrecorded."""
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j1:
        first = j1.journal_id
        confirmed = [(first, e) for e in scans(j1, 8)]
        drain(j1, broker)
        confirmed += [(first, e) for e in scans(j1, 7, start=8)]
    path.write_bytes(b"")
    Path(f"{path}-wal").unlink(missing_ok=True)
    with Journal(path, DEVICE) as j2:  # its alarm about the first journal is never sent
        second = j2.journal_id
        confirmed += [(second, e) for e in scans(j2, 3, start=20)]
    assert Path(f"{path}.reports").exists()
    path.unlink()
    Path(f"{path}-wal").unlink(missing_ok=True)
    with Journal(path, DEVICE) as j3:
        alarm = first_alarm(j3)
        assert alarm["journal"] == second and alarm["lost"] == {"from": None, "to": 4}
        assert [r["journal"] for r in alarm["earlier"]] == [first]
        drain(j3, broker)
    assert not Path(f"{path}.reports").exists()  # acknowledged: not repeated again
    store = depot.store
    assert sorted(store.query("SELECT journal, first_seq, last_seq FROM losses")) == sorted(
        [(first, 9, 15), (second, 1, 4)]
    )
    assert accounted(store, confirmed) == []


def test_an_event_damaged_after_the_depot_stored_it_moves_to_a_new_journal(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    """The depot stored events 1..10, the device recorded only the ack of 2 (a power cut took
    the rest), then a byte of event 5 changed on the card: the device takes 5 out of its chain,
    the depot holds the undamaged original and refuses the changed chain; told so, the device
    carries on in a new journal instead of resending what is refused forever."""
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        old = j.journal_id
        confirmed = [(old, e) for e in scans(j, 10)]
        drain(j, broker)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='2' WHERE key='acked_seq'")
    conn.close()
    flip_byte(path, b"PARCEL-00004")  # event 5
    with Journal(path, DEVICE) as j2:
        refused = threading.Event()
        j2.add_listener(
            lambda events: refused.set()
            if any(e.payload.get("alarm") == "journal_refused" for e in events) else None
        )
        up = Uplink(j2, address(broker, DEVICE), **FAST)
        up.start()
        try:
            confirmed += [(old, e) for e in scans(j2, 3, start=10)]  # sent as 11..13
            assert refused.wait(30), "the refusal did not start a new journal"
            assert j2.journal_id != old
            assert up.wait_acked(j2.last_seq, 60)
        finally:
            up.stop()
        alarm = first_alarm(j2)
    assert alarm["alarm"] == "journal_refused" and alarm["depot_head"] == 10
    assert alarm["lost"] is None
    store = depot.store
    # Carried events keep their uuid: the scans after 10 are at the depot, 5 in its original.
    assert accounted(store, confirmed) == []
    assert store.query("SELECT count(*) FROM losses") == [(0,)]
    assert store.head(DEVICE, j2.journal_id) == j2.last_seq


def test_a_carried_break_record_still_names_its_own_journal(
    tmp_path: Path, broker: Broker, depot: Depot
) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, DEVICE) as j:
        old = j.journal_id
        made = scans(j, 10)
    flip_byte(path, b"PARCEL-00004")  # event 5
    with Journal(path, DEVICE) as j2:
        j2.read(0, 100)  # the check before sending puts a break record at 5
        j2.restart_epoch(0, refused="the depot holds another chain")  # carried, unsent
        assert j2.journal_id != old
        drain(j2, broker)
    store = depot.store
    assert store.query("SELECT journal, first_seq, last_seq FROM losses") == [(old, 5, 5)]
    assert accounted(store, [(old, e) for e in made]) == []
