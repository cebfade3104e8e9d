"""What a new user tripped over (issue 10 §4), each as the user met it: the real command.

Config and port mistakes end in one line on stderr and exit 2; `identify` and `depot import`
write strict UTF-8 JSON whatever bytes they are given; an S10 id needs a real country; and
`lastmile sim scanner|keypad|gnss|lockboard` drive a device by hand over a real pty.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import serial

from depot.imports import ParcelImportError, read_import
from drivers.gnss import Rmc, parse_sentence
from drivers.lockboard import BoardConfig, LockBus
from parcel.identify import S10_COUNTRIES, Rejection, escape_undecodable, identify, to_json
from simulators.lockboard import SimulatedLockBoards

ROOT = Path(__file__).resolve().parent.parent
READ_S = 10.0  # every read of a pty or a pipe gives up after this


def lastmile(*args: str | bytes, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- config and port errors ------------------------------------------------------------------

LOCKER = """
device_id = "locker-1"
journal = "locker.db"
[lockboard]
port = "{port}"
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
"""

VAN = """
device_id = "van-1"
journal = "van.db"
[broker]
port = 1
password = "x"
[scanner]
port = "{port}"
"""


@pytest.mark.parametrize("device", ["van", "locker"])
def test_a_missing_or_unreadable_config_is_one_line_and_exit_2(
    tmp_path: Path, device: str
) -> None:
    missing = lastmile(device, "--config", str(tmp_path / "nope.toml"))
    assert_one_line_error(missing, f"lastmile {device}", "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "x\n[lockboard\n')
    assert_one_line_error(lastmile(device, "--config", str(bad)), "bad.toml")


@pytest.mark.parametrize(("device", "template", "what"), [
    ("van", VAN, "scanner"),
    ("locker", LOCKER, "lock-board"),
])
def test_a_missing_serial_port_says_which_and_exits_2(
    tmp_path: Path, device: str, template: str, what: str
) -> None:
    config = tmp_path / f"{device}.toml"
    port = tmp_path / "ttyUSB9"
    config.write_text(template.format(port=port))
    line = assert_one_line_error(
        lastmile(device, "--config", str(config), timeout=60), f"{what} port {port}"
    )
    assert "does not exist" in line and "config" in line


def test_a_lock_board_port_held_by_another_program_is_named_busy(tmp_path: Path) -> None:
    with SimulatedLockBoards(1) as boards:
        config = tmp_path / "locker.toml"
        config.write_text(LOCKER.format(port=boards.path))
        # Another locker (or a terminal program) holds the bus the way ours would.
        with serial.Serial(boards.path, exclusive=True):
            result = lastmile("locker", "--config", str(config), timeout=60)
    line = assert_one_line_error(result, f"lock-board port {boards.path}")
    assert "in use by another program (is another locker running?)" in line


@pytest.mark.parametrize("budget", ["-5", "nan"])
def test_decode_refuses_a_budget_that_is_not_a_time(tmp_path: Path, budget: str) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"not looked at")
    assert_one_line_error(lastmile("decode", "--budget-ms", budget, str(image)), "--budget-ms")


# --- valid UTF-8 JSON for any input ------------------------------------------------------------


def strict_json(data: bytes) -> object:
    """Parse as strict UTF-8 JSON, and refuse lone surrogates in any string."""
    doc = json.loads(data.decode("utf-8"))

    def walk(value: object) -> None:
        if isinstance(value, str):
            value.encode("utf-8")  # raises on a lone surrogate
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(doc)
    return doc


@pytest.mark.parametrize("arg", [
    b"RB\xff\xfe123456785GB",  # bytes that are no UTF-8 (argv holds them as lone surrogates)
    b"\xed\xa0\x80",  # an encoded lone surrogate: not UTF-8 either
    b"RB12\x01\x07\x1b[2J",  # control characters and a terminal escape
    b"]C1\xc3\xa9\x80\x00"[:-1],  # an AIM, then UTF-8 and a stray continuation byte
    "RB123456785GB \u202e".encode(),  # valid text, shown as it is
])
def test_identify_json_is_strict_utf8_for_any_argument(arg: bytes) -> None:
    result = lastmile("identify", "--json", arg)
    assert result.returncode == 1, result.stderr
    doc = strict_json(result.stdout)
    assert isinstance(doc, dict) and doc["valid"] is False and doc["error"]
    plain = lastmile("identify", arg)
    assert plain.returncode == 1
    plain.stdout.decode("utf-8")  # the one-line answer is text too


def test_bytes_that_were_not_text_are_escaped_not_lost() -> None:
    raw = os.fsdecode(b"RB\xff1")
    try:
        identify(raw)
    except Rejection as rejection:
        doc = to_json(rejection)
    assert doc["raw"] == "RB\\xff1"
    assert "<0xff>" in str(doc["error"])
    assert escape_undecodable("a\ud800b") == "a\\ud800b"
    assert escape_undecodable("plain ü") == "plain ü"


def depot_config(tmp_path: Path) -> Path:
    config = tmp_path / "depot.toml"
    config.write_text(
        f'[depot]\ndatabase = "{tmp_path / "depot.db"}"\nlat = 52.3676\nlon = 4.9041\n'
        'vans = ["van-1"]\n'
    )
    return config


PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99"
    b"=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.mark.parametrize(("name", "data"), [
    ("label.png", PNG),
    ("parcels.csv", random.Random(10).randbytes(4096)),
    ("parcels.json", bytes(range(256)) * 4),
])
def test_depot_import_of_a_binary_file_is_one_line_and_exit_2(
    tmp_path: Path, name: str, data: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    result = lastmile("depot", "import", str(path), "--config", str(depot_config(tmp_path)))
    assert_one_line_error(result, f"{path} is not a CSV or JSON file")
    with pytest.raises(ParcelImportError, match="not a CSV or JSON file"):
        read_import(data)


def test_depot_import_reports_undecodable_names_as_text(tmp_path: Path) -> None:
    header = b"parcel,recipient,address,lat,lon,merchant,webhook,col\xff\xfeumn\n"
    row = (
        b"RB123456785GB,Ann,Dam 1,52.37,4.89,shop,https://shop.example/h,x\n"
        b"RB000000005GB,B\xe9a,Dam 2,52.37,4.89,shop,https://shop.example/h,x\n"
    )
    (tmp_path / "parcels.csv").write_bytes(header + row)
    keys = tmp_path / "parcels.json"
    keys.write_text('[{"parcel": "RB123456785GB", "\\udcff\\ud800": 1, "recipient": "\\ud800"}]')
    config = depot_config(tmp_path)
    for path in (tmp_path / "parcels.csv", keys):
        result = lastmile("depot", "import", str(path), "--config", str(config))
        assert result.returncode == 1, result.stderr
        doc = strict_json(result.stdout)
        assert isinstance(doc, dict)
        shown = json.dumps(doc, ensure_ascii=False)
        assert "\\\\xff" in shown or "\\\\udcff" in shown or "\\\\ud800" in shown, shown
    csv_doc = strict_json(lastmile("depot", "import", str(tmp_path / "parcels.csv"),
                                   "--config", str(config)).stdout)
    assert isinstance(csv_doc, dict)
    assert any(w["field"] == "col\\xff\\xfeumn" for w in csv_doc["warnings"]), csv_doc


# --- S10 countries -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["RB123456785ZZ", "RB123456785UK", "RB123456785AA"])
def test_an_s10_id_with_no_country_is_refused(code: str) -> None:
    with pytest.raises(Rejection, match=f"S10 country {code[-2:]} is not an ISO 3166"):
        identify(code)


@pytest.mark.parametrize("code", ["RB123456785GB", "RB123456785NL", "RB123456785XK"])
def test_an_s10_id_from_a_country_is_accepted(code: str) -> None:
    assert identify(code).details["country"] == code[-2:]


def test_the_country_list_is_iso_3166_alpha_2_plus_kosovo() -> None:
    assert len(S10_COUNTRIES) == 249 + 1
    assert all(len(c) == 2 and c.isascii() and c.isupper() for c in S10_COUNTRIES)
    assert {"GB", "US", "DE", "FR", "NL", "CN", "SS", "XK"} <= S10_COUNTRIES
    assert not {"UK", "EU", "ZZ", "AN", "YU"} & S10_COUNTRIES  # not, or no longer, countries


def test_the_simulators_make_s10_ids_the_rules_accept() -> None:
    from simulators.parcels import s10

    rng = random.Random(3)
    for _ in range(200):
        label = s10(rng)
        assert identify(label.data).kind == "s10"


# --- simulated devices by hand ------------------------------------------------------------------


class Sim:
    """A `lastmile sim DEVICE` process: its pty path, its stdin, its answer lines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "sim", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()
        self.path = self.wait_line(lambda line: line.startswith("/"))

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, match: Callable[[str], bool], errors: bool = False) -> str:
        into = self.errors if errors else self.lines
        with self.cond:
            found = self.cond.wait_for(lambda: any(match(x) for x in into), READ_S)
            assert found, (self.lines, self.errors)
            return next(x for x in into if match(x))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(READ_S) == 0


@pytest.fixture
def sims() -> Iterator[list[Sim]]:
    running: list[Sim] = []
    yield running
    for sim in running:
        if sim.proc.poll() is None:
            sim.proc.kill()
            sim.proc.wait(READ_S)


def read_exactly(port: serial.Serial, n: int) -> bytes:
    data = port.read(n)  # the port's timeout bounds the wait
    assert len(data) == n, data
    return data


def test_sim_scanner_sends_typed_lines_as_scans(tmp_path: Path, sims: list[Sim]) -> None:
    link = tmp_path / "scanner.tty"
    sim = Sim("scanner", "--link", str(link))
    sims.append(sim)
    assert sim.path == str(link) and link.is_symlink()
    with serial.Serial(sim.path, timeout=READ_S) as port:
        sim.send("RB123456785GB")
        assert read_exactly(port, 18) == b"]C0RB123456785GB\r\n"
        sim.send("]C100157035381410375177<GS>42012345")  # the typed AIM goes after ]C0 ...
        expected = b"]C0]C100157035381410375177\x1d42012345\r\n"
        assert read_exactly(port, len(expected)) == expected
        sim.send("snow\u2603man")  # not one byte a character: refused, nothing sent
        assert "bytes 0-255" in sim.wait_line(lambda x: "snow" in x, errors=True)
    sim.stop()
    assert not link.exists()


def test_sim_scanner_without_aim_and_with_cr(sims: list[Sim]) -> None:
    sim = Sim("scanner", "--aim", "none", "--suffix", "cr")
    sims.append(sim)
    with serial.Serial(sim.path, timeout=READ_S) as port:
        sim.send("1Z5R89390357567127")
        assert read_exactly(port, 19) == b"1Z5R89390357567127\r"
    sim.stop()


def test_sim_keypad_sends_keys_then_cr(sims: list[Sim]) -> None:
    sim = Sim("keypad")
    sims.append(sim)
    with serial.Serial(sim.path, timeout=READ_S) as port:
        sim.send("*C42")
        sim.send("123456")
        assert read_exactly(port, 12) == b"*C42\r123456\r"
    sim.stop()


def next_fix(port: serial.Serial) -> Rmc:
    for _ in range(20):
        line = port.readline()
        assert line.endswith(b"\r\n"), line
        sentence = parse_sentence(line)
        if isinstance(sentence, Rmc):
            return sentence
    raise AssertionError("no RMC in 20 lines")


def test_sim_gnss_writes_nmea_where_it_is_told(sims: list[Sim]) -> None:
    sim = Sim("gnss", "--lat", "51.5", "--lon", "-0.125", "--rate", "5")
    sims.append(sim)
    with serial.Serial(sim.path, timeout=READ_S) as port:
        port.readline()  # the first line may be cut by the open
        fix = next_fix(port)
        assert fix.has_fix and fix.lat == pytest.approx(51.5) and fix.lon == pytest.approx(-0.125)
        sim.send("48.8584, 2.2945")
        sim.wait_line(lambda x: x.startswith("at 48.858400"))
        fix = next_fix(port)
        if fix.lat != pytest.approx(48.8584):  # one epoch may have been made before the move
            fix = next_fix(port)
        assert fix.lat == pytest.approx(48.8584) and fix.lon == pytest.approx(2.2945)
        sim.send("tunnel")
        sim.wait_line(lambda x: x == "fix lost")
        fix = next_fix(port)
        if fix.has_fix:
            fix = next_fix(port)
        assert not fix.has_fix
        sim.send("95 0")
        assert "not a position" in sim.wait_line(lambda x: "95" in x, errors=True)
    sim.stop()


def test_sim_lockboard_puts_a_parcel_in_by_hand(tmp_path: Path, sims: list[Sim]) -> None:
    sim = Sim("lockboard", "--link", str(tmp_path / "bus.tty"))
    sims.append(sim)
    with LockBus(sim.path, [BoardConfig(0)]) as bus:
        assert not bus.status(0).door_open[3] and not bus.status(0).item_present[3]
        sim.send("put 0 3")  # the door is shut: a person cannot
        assert "shut" in sim.wait_line(lambda x: "put" in x or "shut" in x, errors=True)
        sim.send("open 0 3")
        assert sim.wait_line(lambda x: "lock 3" in x) == "board 0 lock 3: door open, empty"
        sim.send("put 0 3")
        sim.wait_line(lambda x: x == "board 0 lock 3: door open, parcel")
        sim.send("close 0 3")
        sim.wait_line(lambda x: x == "board 0 lock 3: door shut, parcel")
        status = bus.status(0)
        assert not status.door_open[3] and status.item_present[3]
        sim.send("jam 0 3")
        sim.wait_line(lambda x: x.endswith("parcel, jammed"))
        bus.unlock(0, 3)
        assert not bus.status(0).door_open[3]  # jammed: the pulse did nothing
        sim.send("wiggle 0 3")
        assert "unknown command 'wiggle'" in sim.wait_line(lambda x: "wiggle" in x, errors=True)
    sim.stop()
