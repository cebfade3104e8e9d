"""A staffed collection point (`edge.counter`): check-in, hand-out, holds, returns, and the
depot that runs it like a locker.

The counter runs as it does on a desk: its scanner is a real pseudo-terminal
(simulators/scanner.py) read by the real driver, its journal a real SQLite file, its depot
commands signed by a real key; the staff's lines go through `Counter.staff` (and, in the CLI
test, through the real process's stdin). The end-to-end test carries a van's and the
counter's events through their real uplinks and a real Mosquitto to a depot on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, DepotConfigError, LockerSiteConfig, load_depot_config
from depot.policy import LockerSite, decide_after_failure
from depot.service import DepotService
from depot.web import DepotWeb
from depot.web.context import Sites
from edge.counter import CounterDevice
from edge.counter_config import CounterConfig, CounterConfigError, load_counter_config
from edge.counter_screen import StaffScreenError, StaffSocket
from edge.locker import BADGE_PREFIX
from parcel.cards import card_tag, normal_card_code, surname_key
from simulators.broker import Broker
from simulators.scanner import SimulatedScanner
from sync.journal import Journal
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    associated_data,
    generate_keypair,
    generate_sealing_keypair,
    load_sealing_key,
    load_signing_key,
    sign_command,
    unseal,
)
from sync.uplink import Uplink
from tests.conftest import FAST_SYNC, address, wait_until
from tests.test_console_lockers import Site
from tests.test_customer_link import SettableClock
from tests.test_depot_tracking import pod, record
from tests.test_locker import Watch
from tests.web import signed_in

ROOT = Path(__file__).resolve().parent.parent
PARCEL = "RB123456785GB"
OTHER = "RR123456785NL"
CARD = "K7P0-2QX9"  # has a zero a customer may write as O


@dataclass
class Desk:
    scanner: SimulatedScanner
    device: CounterDevice
    watch: Watch
    sealing_private: bytes
    command_private: bytes

    @property
    def config(self) -> CounterConfig:
        return self.device.config

    def command(self, action: str, **args: Any) -> None:
        payload = sign_command(
            load_signing_key(self.command_private),
            target="counter-1",
            action=action,
            args=args,
            ttl_s=60.0,
            now=time.time(),
        )
        self.device.counter.command(action, payload)

    def reserve(self, parcel: str = PARCEL, **args: Any) -> str:
        self.command("reserve", parcel=parcel, size="L", hours=24, **args)
        done = self.watch.wait_event("command_accepted", action="reserve", parcel=parcel)
        return str(done.payload["compartment"])

    def staff(self, **doc: Any) -> dict[str, Any]:
        return self.device.counter.staff(json.dumps(doc))

    def shown(self, message: str, timeout: float = 10.0) -> dict[str, Any]:
        with self.watch.cond:
            assert self.watch.cond.wait_for(
                lambda: any(s["display"] == message for s in self.watch.shown), timeout
            ), f"never shown {message!r}; shown {self.watch.shown}"
            return next(s for s in self.watch.shown if s["display"] == message)

    def check_in(self, parcel: str = PARCEL) -> dict[str, str]:
        """The staff scans the parcel in; returns the customer's code and QR (the depot's
        copy, unsealed as the depot does)."""
        self.scanner.scan(parcel)
        deposited = self.watch.wait_event("parcel_deposited", parcel=parcel)
        sealed = str(deposited.payload["credential_for_depot"])
        secret = unseal(
            load_sealing_key(self.sealing_private),
            sealed,
            associated_data(PICKUP_CREDENTIAL_PURPOSE, "counter-1", parcel),
        )
        doc: dict[str, str] = json.loads(secret)
        return doc

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self.watch.cond:
            return [dict(e.payload) for e in self.watch.events if e.kind == kind]


def open_desk(tmp_path: Path, **overrides: Any) -> Desk:
    sealing_private, sealing_public = generate_sealing_keypair()
    command_private, command_public = generate_keypair()
    tmp_path.mkdir(parents=True, exist_ok=True)
    scanner = SimulatedScanner(tmp_path / "scanner.tty")
    settings: dict[str, Any] = {
        "device_id": "counter-1",
        "journal": tmp_path / "counter.db",
        "shelves": 3,
        "hold_s": 3600.0,
        "courier_badges": frozenset({"C42"}),
        "depot_sealing_key": sealing_public,
        "command_keys": [command_public],
        "scanner_port": scanner.path,
        "expiry_check_s": 0.05,
    }
    settings.update(overrides)
    watch = Watch()
    device = CounterDevice(CounterConfig(**settings), watch)
    device.journal.add_listener(watch.on_events)
    device.start()
    return Desk(scanner, device, watch, sealing_private, command_private)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = open_desk(tmp_path)
    yield d
    d.device.stop()
    d.scanner.close()


# --- check-in -----------------------------------------------------------------------------------


def test_a_reserved_parcel_is_checked_in_onto_its_shelf_with_a_sealed_credential(
    desk: Desk,
) -> None:
    shelf = desk.reserve()
    assert shelf == "shelf-1"
    secret = desk.check_in()
    assert secret["code"].isdigit() and len(secret["code"]) == 6
    assert secret["qr"].startswith("LMQR:")
    [deposit] = desk.events("parcel_deposited")
    assert deposit["compartment"] == "shelf-1" and deposit["size"] == "L"
    assert deposit["hold_until_ns"] > time.time_ns()
    assert desk.shown("put it on shelf-1")["parcel"] == PARCEL
    # Scanned again (without the AIM prefix: the scanner drops a repeat of the same bytes
    # within 0.3 s), it is not taken in twice; the journal file never holds the code.
    desk.scanner.scan(PARCEL, aim=None)
    assert desk.shown("already here")["shelf"] == "shelf-1"
    raw = Path(desk.config.journal).read_bytes()
    assert secret["code"].encode() not in raw and secret["qr"][5:].encode() not in raw
    assert desk.device.status_line() == "no broker configured, 1/3 shelves in use"


def test_a_parcel_not_reserved_is_refused_unless_walk_ins_are_allowed(tmp_path: Path) -> None:
    strict = open_desk(tmp_path / "strict")
    try:
        strict.scanner.scan(PARCEL)
        refused = strict.watch.wait_event("dropoff_refused", parcel=PARCEL)
        assert refused.payload["reason"] == "not reserved for this counter"
        assert not strict.events("parcel_deposited")
    finally:
        strict.device.stop()
        strict.scanner.close()
    walk_in = open_desk(tmp_path / "walk-in", walk_in=True, shelves=1)
    try:
        walk_in.check_in(PARCEL)
        walk_in.scanner.scan(OTHER)  # the one shelf is taken
        refused = walk_in.watch.wait_event("dropoff_refused", parcel=OTHER)
        assert refused.payload["reason"] == "counter full"
    finally:
        walk_in.device.stop()
        walk_in.scanner.close()


def test_a_full_counter_refuses_a_reservation_of_any_size(tmp_path: Path) -> None:
    d = open_desk(tmp_path, shelves=1)
    try:
        assert d.reserve(PARCEL) == "shelf-1"
        d.command("reserve", parcel=PARCEL, size="S")  # the depot retries: the same shelf
        again = d.watch.wait_event("command_accepted", parcel=PARCEL, again=True)
        assert again.payload["compartment"] == "shelf-1"
        d.command("reserve", parcel=OTHER, size="S")
        failed = d.watch.wait_event("command_failed", action="reserve")
        assert failed.payload["reason"] == "no free shelf place"
        d.command("remote_open", compartment="shelf-1")
        no_door = d.watch.wait_event("command_failed", action="remote_open")
        assert "no doors" in no_door.payload["reason"]
    finally:
        d.device.stop()
        d.scanner.close()


# --- hand-out -----------------------------------------------------------------------------------


def test_hand_out_by_code_needs_the_right_parcel_scanned_and_a_name(desk: Desk) -> None:
    desk.reserve(PARCEL)
    desk.reserve(OTHER)
    secret = desk.check_in(PARCEL)
    desk.check_in(OTHER)
    fetch = desk.staff(do="code", code=secret["code"])
    assert fetch == {
        "display": "fetch the parcel from shelf-1 and scan it", "parcel": PARCEL,
        "shelf": "shelf-1",
    }
    assert desk.staff(do="name", name="A. Jansen")["display"] == "scan the parcel first"
    desk.scanner.scan(OTHER, aim=None)  # the staff took the neighbouring parcel
    assert desk.shown("wrong parcel: fetch the one on shelf-1")["scanned"] == OTHER
    assert desk.events("handout_wrong_parcel") == [{"expected": PARCEL, "scanned": OTHER}]
    desk.scanner.scan(PARCEL, aim=None)
    desk.shown("right parcel: type the customer's name")
    assert not desk.events("parcel_picked_up")
    done = desk.staff(do="name", name="  A.   Jansen ")
    assert done == {"display": "hand it over", "parcel": PARCEL, "name": "A. Jansen"}
    [picked] = desk.events("parcel_picked_up")
    assert picked == {
        "parcel": PARCEL, "compartment": "shelf-1", "name": "A. Jansen", "method": "code",
        "signature": None, "signed_by": None, "id_check": None,
    }
    # The code was used: it finds nothing now, and the shelf is free again.
    assert desk.staff(do="code", code=secret["code"])["display"] == "code not recognised"
    assert desk.device.counter.status_line() == "1/3 shelves in use"


def test_hand_out_by_the_qr_scanned_and_a_cancelled_one_keeps_the_parcel(desk: Desk) -> None:
    desk.reserve()
    secret = desk.check_in()
    desk.scanner.scan(secret["qr"], aim="]Q1")
    desk.shown("fetch the parcel from shelf-1 and scan it")
    cancelled = desk.staff(do="cancel")
    assert cancelled["display"] == "hand-out cancelled: the parcel stays on shelf-1"
    assert desk.events("handout_cancelled") == [{"parcel": PARCEL, "compartment": "shelf-1"}]
    assert desk.staff(do="code", code=secret["code"])["shelf"] == "shelf-1"
    desk.scanner.scan(PARCEL, aim=None)
    desk.shown("right parcel: type the customer's name")
    assert desk.staff(do="name", name="B. de Vries")["display"] == "hand it over"
    attempts = desk.events("pickup_attempt")
    assert [(a["method"], a["ok"]) for a in attempts] == [("qr", True), ("code", True)]


def test_five_wrong_codes_lock_the_desk_then_even_the_right_one_waits(desk: Desk) -> None:
    desk.reserve()
    secret = desk.check_in()
    wrong = "000000" if secret["code"] != "000000" else "111111"
    for _ in range(5):
        assert desk.staff(do="code", code=wrong)["display"] == "code not recognised"
    locked = desk.events("keypad_locked")
    assert locked == [{"seconds": 30.0, "lockouts": 1}]
    answer = desk.staff(do="code", code=secret["code"])
    assert answer["display"] == "too many wrong codes; wait" and answer["seconds"] == 30
    assert desk.events("pickup_attempt")[-1] == {
        "method": "code", "ok": False, "reason": "keypad locked",
    }
    # A QR cannot be guessed: it still works during the lockout.
    desk.scanner.scan(secret["qr"], aim="]Q1")
    desk.shown("fetch the parcel from shelf-1 and scan it")


def test_hand_out_with_the_failure_card_s_code_and_the_surname(desk: Desk) -> None:
    tag = card_tag("counter-1", CARD, "A. Jansen")
    assert tag is not None
    desk.reserve(card_tag=tag)
    desk.check_in()
    # A wrong surname, or the code of another card, finds nothing (and counts as a guess).
    assert desk.staff(do="card", card=CARD, name="P. Smit")["display"] == "code not recognised"
    assert desk.staff(do="card", card="K7P0-2QX8", name="Jansen")["display"] == (
        "code not recognised"
    )
    # Written as people write it: lower case, a space, O for zero; the full name on the ID.
    fetch = desk.staff(do="card", card="k7po 2qx9", name="Anna Jänsen")
    assert fetch["shelf"] == "shelf-1"
    desk.scanner.scan(PARCEL, aim=None)
    desk.shown("hand it over")
    [picked] = desk.events("parcel_picked_up")
    assert picked["method"] == "card" and picked["name"] == "Anna Jänsen"
    raw = Path(desk.config.journal).read_bytes()
    assert b"K7P0" not in raw and b"k7po" not in raw


def test_card_codes_are_read_as_people_write_them() -> None:
    assert normal_card_code("k7po-2qx9") == "K7P02QX9"
    assert normal_card_code("K7P0 2QXI") == "K7P02QX1"
    assert normal_card_code("K7P0-2QX") is None  # seven characters
    assert normal_card_code("K7P0-2QXU") is None  # U is not Crockford
    assert surname_key("A. van der Berg") == "berg" and surname_key("...") == ""
    assert card_tag("counter-1", CARD, "Jansen") != card_tag("counter-2", CARD, "Jansen")
    assert card_tag("counter-1", CARD, "  ") is None


# --- proof at hand-out: signature and ID check ---------------------------------------------------

SIGNED = {"width": 300, "height": 100, "strokes": [[[10, 50], [40, 20], [80, 60]], [[90, 40]]]}


def this_year() -> int:
    return time.gmtime().tm_year


def test_an_age_limited_parcel_is_handed_out_only_with_an_id_check_and_a_signature(
    desk: Desk,
) -> None:
    desk.reserve(age_min=18, signature=True)
    accepted = desk.events("command_accepted")[-1]
    assert (accepted["age_min"], accepted["signature"]) == (18, True)
    secret = desk.check_in()
    fetch = desk.staff(do="code", code=secret["code"])
    assert fetch["needs"] == ["id_check", "signature"] and fetch["age_min"] == 18
    assert fetch["display"] == (
        "fetch the parcel from shelf-1 and scan it; check the ID (18+) and take the "
        "signature before it is handed out"
    )
    desk.scanner.scan(PARCEL, aim=None)
    desk.shown("right parcel: check the ID (18+) and take the signature, type the "
               "customer's name")
    # Each missing or failing proof: the reason on the screen, journaled, nothing handed out.
    no_proof = desk.staff(do="name", name="A. Jansen")
    assert no_proof["refused"] is True and no_proof["reason"] == "signature_required"
    assert no_proof["display"] == (
        "NOT handed out: this parcel needs a signature and the signer's printed name"
    )
    no_id = desk.staff(do="name", name="A. Jansen", signature=SIGNED)
    assert no_id["reason"] == "id_check_required"
    young = {"id_type": "id_card", "birth_year": this_year() - 18}  # perhaps not 18 yet
    assert desk.staff(do="name", name="A. Jansen", signature=SIGNED, id_check=young)[
        "reason"
    ] == "under_age"
    numbered = {"id_type": "passport", "birth_year": 1990, "number": "NX1234567"}
    assert desk.staff(do="name", name="A. Jansen", signature=SIGNED, id_check=numbered)[
        "display"
    ] == "id_check keeps only id_type and birth_year, not number"
    off_sheet = {**SIGNED, "strokes": [[[10, 50], [301, 20]]]}
    assert "off the 300x100 sheet" in desk.staff(
        do="name", name="A. Jansen", signature=off_sheet
    )["display"]
    assert [e["reason"] for e in desk.events("handout_refused")] == [
        "signature_required", "id_check_required", "under_age",
    ]
    assert not desk.events("parcel_picked_up")
    assert desk.device.counter.status_line() == "1/3 shelves in use"

    adult = {"id_type": "driving_licence", "birth_year": 1990}
    done = desk.staff(do="name", name="A. Jansen", signature=SIGNED, id_check=adult)
    assert done["display"] == "hand it over" and done["signed_by"] == "A. Jansen"
    [picked] = desk.events("parcel_picked_up")
    assert picked["id_check"] == adult and picked["signed_by"] == "A. Jansen"
    ref = picked["signature"]
    assert ref["type"] == "application/vnd.lastmile.signature+json"
    # The strokes wait in the photo outbox, canonical, named by their hash, for the uplink.
    [(data, content_type)] = desk.device.journal.query(
        "SELECT data, content_type FROM photo_outbox WHERE sha256=?", (ref["sha256"],)
    )
    assert content_type == ref["type"] and len(data) == ref["bytes"]
    assert hashlib.sha256(data).hexdigest() == ref["sha256"]
    assert json.loads(data) == {"v": 1, **SIGNED}
    assert b" " not in data


def test_a_card_hand_out_of_a_signed_for_parcel_waits_for_the_signature(desk: Desk) -> None:
    tag = card_tag("counter-1", CARD, "A. Jansen")
    assert tag is not None
    desk.reserve(card_tag=tag, signature=True)
    desk.check_in()
    assert desk.staff(do="card", card=CARD, name="A. Jansen")["needs"] == ["signature"]
    desk.scanner.scan(PARCEL, aim=None)
    # The card gave the name, but the scan alone hands nothing out.
    desk.shown("right parcel: take the signature")
    assert not desk.events("parcel_picked_up")
    # Signed by someone else for the customer: the printed name is the signer's.
    done = desk.staff(do="name", signature=SIGNED, signed_by="P. Jansen")
    assert done["display"] == "hand it over" and done["name"] == "A. Jansen"
    [picked] = desk.events("parcel_picked_up")
    assert (picked["name"], picked["signed_by"], picked["id_check"]) == (
        "A. Jansen", "P. Jansen", None,
    )
    assert picked["method"] == "card" and picked["signature"]["bytes"] > 0


def test_a_reservation_s_proof_is_checked_on_the_wire_and_forgotten_when_it_lapses(
    tmp_path: Path,
) -> None:
    d = open_desk(tmp_path, shelves=1)
    try:
        d.command("reserve", parcel=PARCEL, age_min=17)
        failed = d.watch.wait_event("command_failed", action="reserve")
        assert failed.payload["reason"] == "reserve: age_min must be one of 16, 18, 21"
        d.command("reserve", parcel=PARCEL, signature="yes")
        d.watch.wait_event("command_failed", action="reserve",
                           reason="reserve: signature must be true or false")
        d.command("reserve", parcel=PARCEL, hours=0.0001, age_min=16)
        d.watch.wait_event("reservation_lapsed", parcel=PARCEL)
        assert d.device.journal.query("SELECT count(*) FROM proof_needed") == [(0,)]
        # Reserved again without proof (the customer changed nothing that needs it): none asked.
        d.reserve(PARCEL)
        secret = d.check_in()
        assert "needs" not in d.staff(do="code", code=secret["code"])
        d.scanner.scan(PARCEL, aim=None)
        d.shown("right parcel: type the customer's name")
        assert d.staff(do="name", name="A. Jansen")["display"] == "hand it over"
    finally:
        d.device.stop()
        d.scanner.close()


# --- holds and returns --------------------------------------------------------------------------


def test_an_expired_hold_goes_to_the_returns_pile_and_a_courier_takes_it(tmp_path: Path) -> None:
    d = open_desk(tmp_path, hold_s=0.3)
    try:
        d.reserve(PARCEL)
        d.reserve(OTHER)
        d.check_in(PARCEL)
        d.watch.wait_event("hold_expired", parcel=PARCEL)
        d.shown("hold expired: put it on the returns pile")
        assert d.staff(do="returns")["returns"] == [{"parcel": PARCEL, "shelf": "shelf-1"}]
        assert d.device.counter.status_line().endswith(", 1 to return")
        # Without a courier's badge a scan of it is not a return.
        d.scanner.scan(PARCEL, aim=None)
        d.shown("already here")
        d.scanner.scan(BADGE_PREFIX + "C99")
        d.shown("unknown courier")
        d.scanner.scan(BADGE_PREFIX + "C42", aim="]Q1")
        welcome = d.shown("courier welcome: scan each parcel to return, and each to check in")
        assert welcome["returns"] == [{"parcel": PARCEL, "shelf": "shelf-1"}]
        d.scanner.scan(PARCEL)
        returned = d.watch.wait_event("parcel_returned", parcel=PARCEL)
        assert returned.payload["compartment"] == "shelf-1"
        assert d.shown("give it to the courier; returns done")["returns"] == []
        # The same courier brings a parcel: it is checked in like any other.
        d.scanner.scan(OTHER)
        d.watch.wait_event("parcel_deposited", parcel=OTHER)
    finally:
        d.device.stop()
        d.scanner.close()


def test_a_reservation_never_used_lapses_and_frees_its_shelf(tmp_path: Path) -> None:
    d = open_desk(tmp_path, shelves=1)
    try:
        d.command("reserve", parcel=PARCEL, hours=0.0001)  # 0.36 s
        d.watch.wait_event("reservation_lapsed", parcel=PARCEL, compartment="shelf-1")
        assert d.reserve(OTHER) == "shelf-1"
    finally:
        d.device.stop()
        d.scanner.close()


# --- configuration and the command line ---------------------------------------------------------


def counter_toml(tmp_path: Path, scanner: str, extra: str = "") -> Path:
    path = tmp_path / "counter.toml"
    path.write_text(
        f'device_id = "counter-1"\nshelves = 2\nhold_hours = 24\n{extra}\n'
        f'[scanner]\nport = "{scanner}"\n[couriers]\nbadges = ["C42"]\n'
    )
    return path


def test_the_config_file_reads_like_a_locker_s(tmp_path: Path) -> None:
    config = load_counter_config(counter_toml(tmp_path, "/dev/ttyACM0", "walk_in = true"))
    assert (config.device_id, config.shelves, config.walk_in) == ("counter-1", 2, True)
    assert config.hold_s == 24 * 3600 and config.courier_badges == {"C42"}
    assert config.journal == tmp_path / "counter-1.journal.db"
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "c"\nshelves = 0\n')
    with pytest.raises(CounterConfigError, match=r"shelves must be 1\.\.10000, not 0"):
        load_counter_config(bad)
    bad.write_text('device_id = "c"\n')
    with pytest.raises(CounterConfigError, match="lacks 'shelves'"):
        load_counter_config(bad)


def test_lastmile_counter_takes_the_staff_s_lines_on_stdin(tmp_path: Path) -> None:
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = counter_toml(tmp_path, scanner.path, "walk_in = true")
        proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "counter", "--config", str(config)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert json.loads(proc.stdout.readline()) == {
                "display": "ready", "counter": "counter-1",
            }
            scanner.scan(PARCEL)
            assert json.loads(proc.stdout.readline())["display"] == "put it on shelf-1"
            proc.stdin.write('{"do": "status"}\nnot json\n')
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline())["display"] == "1/2 shelves in use"
            assert json.loads(proc.stdout.readline())["refused"] is True
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


# --- the staff screen over a unix socket (a service has no stdin) -------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path is at most 107 bytes, and
    pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="lm-") as d:
        yield Path(d)


class ScreenApp:
    """The desk's screen app: a unix socket client writing lines, reading JSON lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("r", encoding="utf-8")

    def send(self, **doc: Any) -> None:
        self.sock.sendall((json.dumps(doc) + "\n").encode())

    def read(self) -> dict[str, Any]:
        line = self.lines.readline()
        assert line, "the counter closed the screen's connection"
        doc: dict[str, Any] = json.loads(line)
        return doc

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def test_the_staff_screen_app_works_the_desk_over_the_unix_socket(
    tmp_path: Path, short_dir: Path
) -> None:
    path = short_dir / "staff.sock"
    d = open_desk(tmp_path, staff_socket=path)
    first = second = None
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660  # the service's group connects
        first, second = ScreenApp(path), ScreenApp(path)
        wait_until(lambda: d.device.staff_socket is not None
                   and d.device.staff_socket.screens == 2, "two screens connected")
        d.reserve()
        secret = d.check_in()
        # What the scan led to is on both screens (and on the process's own display).
        assert first.read()["display"] == "put it on shelf-1"
        assert second.read()["display"] == "put it on shelf-1"
        first.send(do="code", code=secret["code"])
        answer = first.read()
        assert answer["display"] == "fetch the parcel from shelf-1 and scan it"
        assert second.read() == answer
        d.scanner.scan(PARCEL, aim=None)
        assert first.read()["display"] == "right parcel: type the customer's name"
        first.sock.sendall(b"not json\n")
        assert first.read()["refused"] is True
        first.send(do="name", name="A. Jansen")
        while (shown := first.read())["display"] != "hand it over":
            assert shown.get("refused") is True  # the second screen's view of "not json"
        d.watch.wait_event("parcel_picked_up", parcel=PARCEL)
        # A screen that goes away is forgotten; the other goes on.
        first.close()
        first = None
        wait_until(lambda: d.device.staff_socket is not None
                   and d.device.staff_socket.screens == 1, "the first screen gone")
        second.send(do="status")
        while (shown := second.read())["display"] != "0/3 shelves in use":
            pass
    finally:
        for app in (first, second):
            if app is not None:
                app.close()
        d.device.stop()
        d.scanner.close()
    assert not path.exists()  # removed at stop


def test_a_screen_that_stops_reading_is_dropped_and_never_holds_the_counter_up(
    short_dir: Path,
) -> None:
    shown: list[Mapping[str, Any]] = []
    server = StaffSocket(short_dir / "staff.sock", lambda line: {"display": line}, shown.append)
    server.start()
    stuck = ScreenApp(server.path)
    try:
        wait_until(lambda: server.screens == 1, "the screen connected")
        started = time.monotonic()
        big = {"display": "x" * 60_000}
        for _ in range(200):  # 12 MB: far more than a socket buffers for a screen asleep
            server.broadcast(big)
        assert time.monotonic() - started < 5
        assert server.screens == 0
    finally:
        stuck.close()
        server.stop()


def test_the_staff_socket_replaces_a_stale_one_but_not_a_live_one_or_a_file(
    short_dir: Path,
) -> None:
    path = short_dir / "staff.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a counter that died left it; nobody listens
    stale.close()
    server = StaffSocket(path, lambda line: {"display": "ok"}, lambda answer: None)
    server.start()
    try:
        again = StaffSocket(path, lambda line: {"display": "ok"}, lambda answer: None)
        with pytest.raises(StaffScreenError, match="another process listens at"):
            again.start()
        assert server.problem() is None
    finally:
        server.stop()
    path.write_text("not a socket")
    with pytest.raises(StaffScreenError, match="is there and is not a socket"):
        StaffSocket(path, lambda line: {"display": "ok"}, lambda answer: None).start()
    assert path.read_text() == "not a socket"


def test_lastmile_counter_serves_the_staff_socket_with_stdin_at_dev_null(
    tmp_path: Path, short_dir: Path
) -> None:
    path = short_dir / "staff.sock"
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = counter_toml(tmp_path, scanner.path, "walk_in = true")
        config.write_text(config.read_text() + f'[staff]\nsocket = "{path}"\n')
        proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "counter", "--config", str(config)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        app = None
        try:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["display"] == "ready"
            app = ScreenApp(path)
            app.send(do="status")  # answered: the counter has the screen
            assert app.read()["display"] == "0/2 shelves in use"
            scanner.scan(PARCEL)
            assert app.read()["display"] == "put it on shelf-1"
            app.send(do="status")
            assert app.read()["display"] == "1/2 shelves in use"
        finally:
            if app is not None:
                app.close()
            proc.terminate()
            proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not path.exists()


# --- the depot ----------------------------------------------------------------------------------


def test_the_depot_reads_a_counter_and_its_policy_fits_any_size_while_there_is_room(
    tmp_path: Path,
) -> None:
    path = tmp_path / "depot.toml"
    path.write_text(
        'database = "depot.db"\n[depot]\nlat = 52.37\nlon = 4.90\nvans = ["van-1"]\n'
        '[[lockers]]\nname = "counter-1"\nkind = "counter"\ncapacity = 2\nlat = 52.37\n'
        "lon = 4.9\n"
    )
    try:
        [site] = load_depot_config(path).lockers
    except DepotConfigError as exc:  # the file's shape: as the depot's own tests write it
        pytest.fail(str(exc))
    assert (site.kind, site.capacity) == ("counter", 2)
    path.write_text(path.read_text().replace("capacity = 2\n", ""))
    with pytest.raises(DepotConfigError, match="capacity"):
        load_depot_config(path)

    def decide(room: int) -> str | None:
        return decide_after_failure(
            reason="not_at_home", attempts=1, locker_ok=True, size="L", stop_lat=52.37,
            stop_lon=4.9, lockers=[LockerSite("counter-1", 52.37, 4.9, {}, room=room)],
        ).locker

    assert decide(1) == "counter-1"  # a size L parcel on a shelf
    assert decide(0) is None


@dataclass
class Chain:
    """A van's journal and a counter, each on its real uplink, a real Mosquitto, and a depot
    on SQLite whose policy has the counter as its one collection site."""

    service: DepotService
    van: Journal
    device: CounterDevice
    watch: Watch
    scanner: SimulatedScanner
    sealing_private: bytes

    def state(self) -> str:
        return str(self.service.book.track(PARCEL)["state"])

    def fail_at_the_door(self, **care: Any) -> None:
        """The parcel imported (with `care`, if any), planned, loaded and not delivered: the
        courier leaves card CARD."""
        extra = {"care": care} if care else {}
        self.service.book.receive(
            record(PARCEL, size="L", **extra), now_ns=time.time_ns(), source="import"
        )
        plan = self.service.plan_day(time.strftime("%Y-%m-%d"), ["van-1"])
        stop = plan.manifests["van-1"].stop_of(PARCEL)
        self.van.append("parcel_loaded", {"parcel": PARCEL, "stop": stop, "shelf": 1,
                                          "raw": PARCEL})
        self.van.append("departed", {"version": 1, "loaded": [PARCEL], "missing": []})
        self.van.append(
            "delivery_failed",
            {
                "parcel": PARCEL, "stop": stop, "reason": "not_at_home", "attempt": 1,
                "pod": pod(), "card": CARD,
            },
        )

    def code(self) -> str:
        """The customer's pickup code, as the depot unseals it to tell them."""
        [deposit] = [e for e in self.watch.events if e.kind == "parcel_deposited"]
        secret = json.loads(
            unseal(
                load_sealing_key(self.sealing_private),
                str(deposit.payload["credential_for_depot"]),
                associated_data(PICKUP_CREDENTIAL_PURPOSE, "counter-1", PARCEL),
            )
        )
        return str(secret["code"])


@pytest.fixture
def chain(broker: Broker, tmp_path: Path) -> Iterator[Chain]:
    signing_private, signing_public = generate_keypair()
    sealing_private, sealing_public = generate_sealing_keypair()
    broker.add_device("counter-1", "counter-1-password-0123")
    config = DepotConfig(
        database=tmp_path / "depot.db",
        lat=52.37,
        lon=4.90,
        vans=["van-1"],
        broker=address(broker, "depot"),
        lockers=[LockerSiteConfig("counter-1", 52.3705, 4.8955, {}, kind="counter", capacity=2)],
    )
    service = DepotService(
        config, signing_key_pem=signing_private, sealing_key_pems=[sealing_private]
    )
    service.start()
    van = Journal(tmp_path / "van.db", "van-1")
    van_link = Uplink(van, address(broker, "van-1"), **FAST_SYNC)
    scanner = SimulatedScanner(tmp_path / "scanner.tty")
    watch = Watch()
    device = CounterDevice(
        CounterConfig(
            device_id="counter-1",
            journal=tmp_path / "counter.db",
            shelves=2,
            depot_sealing_key=sealing_public,
            command_keys=[signing_public],
            scanner_port=scanner.path,
            broker=address(broker, "counter-1"),
            sync=dict(FAST_SYNC),
        ),
        watch,
    )
    device.journal.add_listener(watch.on_events)
    try:
        assert service.depot is not None and service.depot.session.wait_connected(10)
        device.start()
        van_link.start()
        yield Chain(service, van, device, watch, scanner, sealing_private)
    finally:
        device.stop()
        van_link.stop()
        van.close()
        scanner.close()
        service.stop()


def test_a_counter_s_events_reach_the_depot_and_move_the_parcel_like_a_locker_s(
    chain: Chain,
) -> None:
    service, device, watch, scanner = chain.service, chain.device, chain.watch, chain.scanner
    chain.fail_at_the_door()
    # The policy sends the size-L parcel to the counter; its signed reservation comes
    # over the broker, with the tag of the card the courier left, and the counter gives
    # it a shelf. The parcel asks for no proof: the reservation says so.
    accepted = watch.wait_event("command_accepted", timeout=30, action="reserve")
    assert accepted.payload["compartment"] == "shelf-1"
    assert "signature" not in accepted.payload and "age_min" not in accepted.payload
    assert device.counter.journal.query("SELECT card_tag FROM held WHERE parcel=?", (PARCEL,))[
        0
    ][0] == card_tag("counter-1", CARD, "A. Jansen")
    scanner.scan(PARCEL)
    watch.wait_event("parcel_deposited", parcel=PARCEL)
    wait_until(lambda: chain.state() == "in_locker", "the deposit at the depot")
    track = service.book.track(PARCEL)
    assert track["locker"] == "counter-1"
    # The depot unseals the credential to tell the customer; the staff hands it out.
    assert device.counter.staff(json.dumps({"do": "code", "code": chain.code()}))[
        "shelf"
    ] == "shelf-1"
    scanner.scan(PARCEL, aim=None)
    wait_until(
        lambda: any(s["display"].startswith("right parcel") for s in watch.shown),
        "the parcel confirmed",
    )
    device.counter.staff(json.dumps({"do": "name", "name": "A. Jansen"}))
    wait_until(lambda: chain.state() == "picked_up", "the hand-out at the depot")
    steps = [e["step"] for e in service.book.track(PARCEL)["timeline"]]
    assert "locker_reserved" in steps and steps[-1] == "picked_up"


def test_the_depot_s_reservation_carries_the_proof_and_the_signature_reaches_it(
    chain: Chain,
) -> None:
    """An 18+ parcel that failed at the door goes to the counter (never a locker); the
    depot's `reserve` says what the staff must ask; the signature's strokes follow the
    hand-out to the depot like a van's photo."""
    device, watch, scanner = chain.device, chain.watch, chain.scanner
    chain.fail_at_the_door(age_min=18)
    accepted = watch.wait_event("command_accepted", timeout=30, action="reserve")
    assert (accepted.payload["age_min"], accepted.payload["signature"]) == (18, True)
    scanner.scan(PARCEL)
    watch.wait_event("parcel_deposited", parcel=PARCEL)
    assert device.counter.staff(json.dumps({"do": "code", "code": chain.code()}))[
        "needs"
    ] == ["id_check", "signature"]
    scanner.scan(PARCEL, aim=None)
    wait_until(
        lambda: any(s["display"].startswith("right parcel") for s in watch.shown),
        "the parcel confirmed",
    )
    refused = device.counter.staff(json.dumps({"do": "name", "name": "A. Jansen"}))
    assert refused["reason"] == "signature_required"
    done = device.counter.staff(json.dumps({
        "do": "name", "name": "A. Jansen", "signature": SIGNED,
        "id_check": {"id_type": "id_card", "birth_year": 1980},
    }))
    assert done["display"] == "hand it over"
    wait_until(lambda: chain.state() == "picked_up", "the hand-out at the depot")
    [picked] = [e for e in watch.events if e.kind == "parcel_picked_up"]
    sha = picked.payload["signature"]["sha256"]
    wait_until(lambda: chain.service.store.photo(sha) is not None, "the signature at the depot")
    content_type, data = chain.service.store.photo(sha) or ("", b"")
    assert content_type == "application/vnd.lastmile.signature+json"
    assert json.loads(data) == {"v": 1, **SIGNED}
    # The depot keeps the counter's proof with the hand-out, and judges it by the parcel's care.
    [entry] = [
        e for e in chain.service.book.track(PARCEL)["timeline"] if e["step"] == "picked_up"
    ]
    assert entry["details"]["signature"]["sha256"] == sha
    assert entry["details"]["signed_by"] == "A. Jansen"
    assert entry["details"]["id_check"] == {"id_type": "id_card", "birth_year": 1980}
    assert "preference_violated" not in entry["details"]


# --- the console's Lockers page -----------------------------------------------------------------


@pytest.fixture
def counter_site(tmp_path: Path, depot_database: str) -> Iterator[Site]:
    """A depot service with a counter of capacity 4 beside a locker, and its web port."""
    sites = [
        LockerSiteConfig("counter-1", 52.3705, 4.8955, {}, kind="counter", capacity=4,
                         title="Kiosk Damrak"),
        LockerSiteConfig("locker-1", 52.3701, 4.9001, {"S": 2}),
    ]
    signing, _ = generate_keypair()
    sealing_private, _ = generate_sealing_keypair()
    config = DepotConfig(
        database=depot_database, lat=52.37, lon=4.90, vans=["van-1"], lockers=list(sites),
        webhook_secrets={"shop-1": b"whsec-shop-1-0123456789", "customer": b"whsec-c-0123456"},
    )
    clock = SettableClock()
    service = DepotService(
        config, clock=clock, signing_key_pem=signing, sealing_key_pems=[sealing_private]
    )
    s = Site(service, depot_database, clock, tmp_path)
    web = DepotWeb(
        service.book, clock=clock, actions=service,
        sites=Sites(depot=(52.37, 4.90), lockers=tuple(sites), vans=("van-1",)),
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


def test_the_lockers_page_shows_a_counter_s_occupancy_against_its_capacity_not_a_grid(
    counter_site: Site,
) -> None:
    s = counter_site
    held, reserved, expired = PARCEL, OTHER, "RR876543216NL"
    for parcel in (held, reserved, expired):
        s.receive(parcel)
    hour = 3600 * 10**9
    until = s.clock.wall_ns() + 48 * hour
    s.emit("counter-1", "parcel_deposited", parcel=held, compartment="shelf-1", size="S",
           hold_until_ns=until, credential_for_depot=None)
    s.emit("counter-1", "command_accepted", id="c-1", action="reserve", parcel=reserved,
           compartment="shelf-2", signature=True, age_min=18)
    s.emit("counter-1", "parcel_deposited", parcel=expired, compartment="shelf-3", size="S",
           hold_until_ns=until - 96 * hour, credential_for_depot=None)
    s.emit("counter-1", "hold_expired", parcel=expired, compartment="shelf-3")
    operator = signed_in(s.url, s.service.database, "operator")
    status, page = operator.get("/console/lockers")
    assert status == 200
    section = page[page.index('id="locker-counter-1"'):page.index('id="locker-locker-1"')]
    occupancy = re.search(r'<p class="counter-occupancy"[^>]*>(.*?)</p>', section, re.S)
    assert occupancy is not None
    said = " ".join(re.sub(r"<[^>]+>", " ", occupancy.group(1)).split())
    assert said == (
        "Staffed counter: 2 / 4 parcels held (1 on the returns pile), 1 reserved, 1 free"
    )
    assert 'class="grid"' not in section and 'id="cell-counter-1' not in section
    assert "Open remotely" not in section  # a counter has no doors
    # Its holds, by shelf, can be extended like a locker's.
    assert "<th>Shelf</th>" in section
    assert f'id="hold-{held}"' in section and f'id="hold-{expired}"' in section
    assert 'action="/console/lockers/counter-1/extend"' in section
    # The locker beside it keeps its grid.
    rest = page[page.index('id="locker-locker-1"'):]
    assert 'class="grid"' in rest and "counter-occupancy" not in rest
