"""The console's Lockers page and its three actions, over real HTTP on each depot database.

A real depot service (no broker: its commands wait in `depot_commands`, where the tests read
them) takes a locker's journal as the wire carries it: the compartments it installed, a
reservation, deposits, an expired hold, a jammed lock. The page's grid is checked against
those facts, and each action against the command row it queues: who asked, and why.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, LockerSiteConfig
from depot.service import DepotService
from depot.web import DepotWeb
from depot.web.context import Sites
from sync.journal import Journal
from sync.signing import generate_keypair, generate_sealing_keypair
from sync.wire import decode_batch, encode_batch
from tests.conftest import depot_sql
from tests.test_customer_link import SettableClock
from tests.web import Console, signed_in

HELD = "RB123456785GB"  # in A1
RESERVED = "RR123456785NL"  # A2 reserved for it
EXPIRED = "RR876543216NL"  # in B1, its hold over
HOUR_NS = 3600 * 10**9
BACK = "/console/lockers#locker-locker-1"  # the forms' `next`
LOCKERS = [
    LockerSiteConfig(
        "locker-1", 52.3701, 4.9001, {"S": 2, "M": 1, "L": 1},
        title="Central Station locker", address="Stationsplein 1, Amsterdam",
    ),
    LockerSiteConfig("locker-2", 52.3650, 4.9100, {"S": 2}, title="Weesperplein"),
]


@dataclass
class Site:
    """A depot service, its web port, and devices whose journals sync to it."""

    service: DepotService
    database: str
    clock: SettableClock
    tmp: Path
    web: DepotWeb | None = None
    journals: dict[str, Journal] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)

    def emit(self, device: str, kind: str, **payload: Any) -> None:
        journal = self.journals.get(device)
        if journal is None:
            journal = self.journals[device] = Journal(self.tmp / f"{device}.db", device)
        journal.append(kind, payload)
        prev, events = journal.read(self.acked.get(device, 0), 1000)
        batch = decode_batch(encode_batch(device, journal.journal_id, prev, events))
        self.acked[device] = self.service.store.ingest(batch).ack.seq
        self.service.process()

    def receive(self, parcel: str, **record: Any) -> None:
        doc = {
            "id": parcel, "raw": parcel, "kind": "s10", "recipient": "A. Jansen",
            "address": "Damrak 1, 1012 LG Amsterdam", "lat": 52.3702, "lon": 4.8952,
            "merchant": "shop-1", "webhook": "https://shop.example/hooks", "size": "S",
            "locker_ok": True, "window": ["09:00", "12:00"],
            "customer_webhook": "https://notify.example/c/1",
            **record,
        }
        assert self.service.book.receive(doc, now_ns=self.clock.wall_ns(), source="import")

    def commands(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(target, action, args) of every queued command, oldest first."""
        with depot_sql(self.database) as conn:
            rows = conn.execute(
                "SELECT target, action, args FROM depot_commands ORDER BY created_ns, id"
            ).fetchall()
        return [(str(t), str(a), json.loads(str(args))) for t, a, args in rows]

    @property
    def url(self) -> str:
        assert self.web is not None
        return self.web.url


@pytest.fixture
def site(tmp_path: Path, depot_database: str) -> Iterator[Site]:
    signing, _ = generate_keypair()
    sealing_private, _ = generate_sealing_keypair()
    config = DepotConfig(
        database=depot_database,
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        webhook_secrets={"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-c-0123456"},
        lockers=list(LOCKERS),
    )
    clock = SettableClock()
    service = DepotService(
        config, clock=clock, signing_key_pem=signing, sealing_key_pems=[sealing_private]
    )
    s = Site(service, depot_database, clock, tmp_path)
    web = DepotWeb(
        service.book, clock=clock, actions=service,
        sites=Sites(depot=(52.37, 4.90), lockers=tuple(LOCKERS), vans=("van-1",)),
    )
    try:
        web.start()
        s.web = web
        yield s
    finally:
        web.stop()
        service.stop()
        for journal in s.journals.values():
            journal.close()


def a_locker_day(s: Site) -> None:
    """locker-1 installs A1, A2 (S), B1 (M), C1 (L); HELD waits in A1, A2 is reserved for
    RESERVED, EXPIRED's hold in B1 is over, C1's lock jammed."""
    for cid, size, lock in (("A1", "S", 0), ("A2", "S", 1), ("B1", "M", 2), ("C1", "L", 3)):
        s.emit("locker-1", "compartment_installed", compartment=cid, size=size, board=0, lock=lock)
    for parcel in (HELD, RESERVED, EXPIRED):
        s.receive(parcel)
    s.service.process()
    until = s.clock.wall_ns() + 48 * HOUR_NS
    s.emit("locker-1", "parcel_deposited", parcel=HELD, compartment="A1", size="S",
           hold_until_ns=until, credential_for_depot=None)
    s.emit("locker-1", "command_accepted", id="c-1", action="reserve", parcel=RESERVED,
           compartment="A2")
    s.emit("locker-1", "parcel_deposited", parcel=EXPIRED, compartment="B1", size="S",
           hold_until_ns=until - 96 * HOUR_NS, credential_for_depot=None)
    s.emit("locker-1", "hold_expired", parcel=EXPIRED, compartment="B1")
    s.emit("locker-1", "alarm", alarm="lock_jammed", compartment="C1", purpose="dropoff")


def cell(page: str, locker: str, cid: str) -> tuple[str, str]:
    """(class, text) of a compartment's cell."""
    found = re.search(
        rf'<div class="cell ([a-z_ ]+)"[^>]*id="cell-{locker}-{cid}"[^>]*>(.*?)</div>', page, re.S
    )
    assert found, f"no cell {locker}/{cid}"
    return found.group(1), _text(found.group(2))


def command_row(page: str, command: str = "[0-9a-f]+") -> str:
    """The text of a command's row (the first one, by default)."""
    row = re.search(rf'<tr id="command-{command}">(.*?)</tr>', page, re.S)
    assert row, f"no command row {command}"
    return _text(row.group(1))


def _text(fragment: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", " ", fragment))
    return re.sub(r"\s+", " ", text).strip()


def flash(console: Console) -> str:
    _, page = console.get("/console/lockers")
    found = re.search(r'<p class="flash"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(found.group(1)) if found else ""


def test_the_grid_shows_what_the_locker_reported(site: Site) -> None:
    a_locker_day(site)
    viewer = signed_in(site.url, site.service.database, "viewer")
    status, page = viewer.get("/console/lockers")
    assert status == 200
    assert cell(page, "locker-1", "A1")[0] == "occupied"
    assert HELD in cell(page, "locker-1", "A1")[1] and "until" in cell(page, "locker-1", "A1")[1]
    assert cell(page, "locker-1", "A2")[0] == "reserved"
    assert RESERVED in cell(page, "locker-1", "A2")[1]
    assert cell(page, "locker-1", "B1")[0] == "expired"
    klass, text = cell(page, "locker-1", "C1")
    assert klass == "out_of_service" and "lock jammed" in text and "1 alarm" in text
    assert 'id="hold-' + HELD + '"' in page and 'id="hold-' + EXPIRED + '"' in page
    assert "lock jammed" in _text(page[page.index('class="alarms"'):])
    # locker-2 never said which compartments it has: the settings' two, inferred free.
    section = page[page.index('id="locker-locker-2"'):]
    assert section.count("free (inferred)") == 2
    assert "Open remotely" not in page and "Extend" not in page  # a viewer only looks


def test_an_operator_opens_a_compartment_with_a_reason(site: Site) -> None:
    a_locker_day(site)
    kim = signed_in(site.url, site.service.database, "operator")
    _, page = kim.get("/console/lockers")
    assert "Open remotely" in page and "Put back in service" in page
    user = _user(page)

    status, headers, _ = kim.act(
        "/console/lockers/locker-1/open", compartment="C1", reason="", next=BACK
    )
    assert status == 303 and headers["location"] == "/console/lockers#locker-locker-1"
    assert "a reason is required" in flash(kim) and site.commands() == []

    kim.act("/console/lockers/locker-1/open", compartment="C1", reason="technician on site")
    assert "Asked locker-1 to open C1" in flash(kim)
    assert site.commands() == [
        ("locker-1", "remote_open",
         {"compartment": "C1", "by": user, "reason": "technician on site"}),
    ]
    _, page = kim.get("/console/lockers")
    row = command_row(page)
    assert "remote open C1" in row and user in row and "technician on site" in row
    assert "queued" in row


def test_an_operator_extends_a_hold_once(site: Site) -> None:
    a_locker_day(site)
    kim = signed_in(site.url, site.service.database, "operator")
    _, page = kim.get("/console/lockers")
    user = _user(page)
    kim.act("/console/lockers/locker-1/extend", parcel=HELD, reason="customer on holiday")
    assert "hold RB123456785GB 24 h longer" in flash(kim)
    assert site.commands() == [
        ("locker-1", "extend_hold",
         {"parcel": HELD, "hours": 24.0, "by": user, "reason": "customer on holiday"}),
    ]
    kim.act("/console/lockers/locker-1/extend", parcel=HELD, reason="again")
    message = flash(kim)
    assert "Not done" in message and "once" in message
    kim.act("/console/lockers/locker-1/extend", parcel=EXPIRED, reason="too late")
    assert len(site.commands()) == 1  # the customer's rule: not once the hold is over


def test_a_compartment_goes_back_in_service_when_the_locker_says_so(site: Site) -> None:
    a_locker_day(site)
    kim = signed_in(site.url, site.service.database, "operator")
    _, page = kim.get("/console/lockers")
    user = _user(page)
    kim.act("/console/lockers/locker-1/in-service", compartment="C1", reason="lock replaced")
    assert "put C1 back in service" in flash(kim)
    ((target, action, args),) = site.commands()
    assert (target, action) == ("locker-1", "set_in_service")
    assert args == {"compartment": "C1", "by": user, "reason": "lock replaced"}
    with depot_sql(site.database) as conn:
        command = str(conn.execute("SELECT id FROM depot_commands").fetchone()[0])
    # The locker carries it out (tests/test_locker_in_service.py) and says so in its journal.
    site.emit("locker-1", "compartment_in_service", compartment="C1", state="free",
              was="jammed", by=user, reason="lock replaced")
    site.emit("locker-1", "command_accepted", id=command, action="set_in_service",
              compartment="C1", state="free")
    _, page = kim.get("/console/lockers")
    assert cell(page, "locker-1", "C1")[0] == "free"
    assert "Put back in service" not in page
    assert "done" in command_row(page, command)


def test_a_viewer_or_a_forged_form_changes_nothing(site: Site) -> None:
    a_locker_day(site)
    sam = signed_in(site.url, site.service.database, "viewer")
    sam.act("/console/lockers/locker-1/open", compartment="C1", reason="curious")
    assert "may look but not act" in flash(sam)
    kim = signed_in(site.url, site.service.database, "operator")
    status, _, _ = kim.request(
        "/console/lockers/locker-1/open", {"compartment": "C1", "reason": "no csrf"}
    )
    assert status == 403
    status, _, _ = kim.request(
        "/console/lockers/locker-1/extend",
        {"csrf": "forged", "parcel": HELD, "reason": "forged"},
    )
    assert status == 403
    assert site.commands() == []
    anonymous = Console(site.url)
    status, headers, _ = anonymous.request("/console/lockers")
    assert status == 303 and headers["location"].startswith("/signin")


def _user(page: str) -> str:
    found = re.search(r'<span class="who">(\S+) ', page)
    assert found
    return found.group(1)
