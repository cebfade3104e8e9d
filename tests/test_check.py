"""`lastmile check`, run as a technician runs it (the CLI in a subprocess), against real parts:
simulated scanner, keypad, GNSS receiver and lock boards on pseudo-terminals, the tests' own
Mosquitto (plain and TLS), real SQLite files and certificates made with cryptography.

Each finding the technician would act on is asserted by its words, and each way the set-up can
be wrong makes the check fail: the exit status is the contract (0 works, 1 will not, 2 bad
config).
"""

from __future__ import annotations

import datetime
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simulators.broker import Broker, free_port
from simulators.gnss import SimulatedGnss
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from simulators.tls import make_pki
from sync.clock import ScaledClock
from sync.journal import Journal
from tests.lockers import locker_toml

ROOT = Path(__file__).resolve().parent.parent


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "check", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def findings(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The checks of a `--json` run (which must have printed exactly one JSON object)."""
    doc = json.loads(result.stdout)
    assert doc["ok"] is (result.returncode == 0), doc
    checks: list[dict[str, Any]] = doc["checks"]
    return checks


def only(checks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [c for c in checks if c["check"] == name]
    return found


def failed(checks: list[dict[str, Any]]) -> list[str]:
    return [c["check"] for c in checks if c["status"] == "fail"]


def van_config(
    tmp_path: Path,
    broker: Broker,
    scanner: str,
    *,
    gnss: str | None = None,
    password: str | None = None,
    tls: str = "",
) -> Path:
    user, real = broker.credentials("van-1")
    (tmp_path / "van-1.password").write_text(password or real)
    gnss_section = f'[round]\nenabled = true\n[gnss]\nport = "{gnss}"\n' if gnss else ""
    config = tmp_path / "van.toml"
    config.write_text(
        f"""
device_id = "van-1"
journal = "state/van-1.journal.db"
[scanner]
port = "{scanner}"
[broker]
host = "{broker.host}"
port = {broker.port}
username = "{user}"
password_file = "van-1.password"
{tls}
{gnss_section}
"""
    )
    return config


# --- a van ----------------------------------------------------------------------------------


def test_a_van_that_will_work_says_so_line_by_line_and_exits_0(
    tmp_path: Path, broker: Broker
) -> None:
    with (
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedGnss(tmp_path / "gnss.tty", position=(52.37, 4.9)) as gnss,
    ):
        config = van_config(tmp_path, broker, scanner.path, gnss=gnss.path)
        result = check(config)
    assert result.returncode == 0, result.stdout + result.stderr
    *lines, summary = result.stdout.strip().splitlines()
    assert [line[:4].strip() for line in lines] == ["ok"] * len(lines), result.stdout
    assert [line[5:17].strip() for line in lines] == [
        "config", "scanner", "gnss", "broker", "clock", "disk",
    ]
    said = dict(zip([line[5:17].strip() for line in lines], lines, strict=True))
    assert f"{scanner.path} opens" in said["scanner"]
    assert "fix at 52.37000, 4.90000" in said["gnss"]
    assert f"{broker.host}:{broker.port} accepts van-1 (plain TCP)" in said["broker"]
    assert "no journal yet" in said["clock"]
    assert "days offline (needs 3)" in said["disk"]
    assert summary == "van van-1 will work: all 6 checks ok"
    # It looked without touching: no journal, not even its directory.
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("trouble", ["wrong password", "nothing listening"])
def test_a_broker_that_will_not_have_the_van_is_a_failure_that_says_why(
    tmp_path: Path, broker: Broker, trouble: str
) -> None:
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        if trouble == "wrong password":
            config = van_config(tmp_path, broker, scanner.path, password="not-" + "it")
        else:
            config = van_config(tmp_path, broker, scanner.path)
            text = config.read_text().replace(f"port = {broker.port}", f"port = {free_port()}")
            config.write_text(text)
        result = check(config, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["broker"]
    detail = only(checks, "broker")["detail"]
    if trouble == "wrong password":
        assert "refused the credentials of van-1" in detail and "password_file" in detail
    else:
        assert detail.startswith("cannot reach 127.0.0.1:") and "is the broker running?" in detail


def test_a_missing_port_fails_naming_the_setting_that_names_it(
    tmp_path: Path, broker: Broker
) -> None:
    port = tmp_path / "ttyACM9"
    result = check(van_config(tmp_path, broker, str(port)), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["scanner"]
    detail = only(checks, "scanner")["detail"]
    assert f"scanner port {port} does not exist" in detail and "[scanner] port" in detail


def test_a_gnss_port_that_never_speaks_nmea_fails(tmp_path: Path, broker: Broker) -> None:
    # A scanner's port, which is silent until someone scans: the wrong port for a receiver.
    with (
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedScanner(tmp_path / "not-gnss.tty") as silent,
    ):
        result = check(van_config(tmp_path, broker, scanner.path, gnss=silent.path), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["gnss"]
    assert f"{silent.path}: no NMEA sentence within 2.5 s" in only(checks, "gnss")["detail"]


def test_a_clock_behind_the_journals_newest_event_fails(tmp_path: Path, broker: Broker) -> None:
    ahead = time.time_ns() + 24 * 3600 * 10**9  # the clock has gone back a day since
    with Journal(
        tmp_path / "state" / "van-1.journal.db",
        "van-1",
        clock=ScaledClock(wall_start_ns=ahead, speed=1.0, boot_id="boot-1"),
    ) as journal:
        journal.append("parcel_scanned", {"parcel": "RB123456785GB"})
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        result = check(van_config(tmp_path, broker, scanner.path), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["clock"]
    assert "is before the journal's newest event" in only(checks, "clock")["detail"]


def test_too_little_disk_for_the_days_offline_fails(tmp_path: Path, broker: Broker) -> None:
    with SimulatedScanner(tmp_path / "scanner.tty") as scanner:
        config = van_config(tmp_path, broker, scanner.path)
        result = check(config, "--json", "--days", str(10**12))
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["disk"]
    assert f"days offline (needs {10**12})" in only(checks, "disk")["detail"]


@pytest.mark.parametrize(
    "content",
    [
        None,  # no file at all
        'device_id = "van-1\n[scanner\n',  # not TOML
        'device_id = "van-1"\n[scanner]\nport = "/dev/ttyACM0"\n',  # a van without [broker]
        'greeting = "hello"\n',  # nobody's configuration
    ],
    ids=["missing", "not-toml", "van-without-broker", "no-role"],
)
def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, content: str | None) -> None:
    config = tmp_path / "device.toml"
    if content is not None:
        config.write_text(content)
    result = check(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("lastmile check: ") and "Traceback" not in line
    if content is not None and "[scanner]" in content and "\nport" in content:
        assert "lacks 'broker'" in line  # the van's own loader's words
    if content is not None and "greeting" in content:
        assert "not a van, locker, counter or depot configuration" in line


# --- TLS ------------------------------------------------------------------------------------


def client_certificate(directory: Path, days: float) -> tuple[Path, Path]:
    """A client certificate and key valid for `days` from now (negative: expired), signed by
    a throwaway CA of its own: the test broker asks for no client certificate, so only its
    dates matter here."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test fleet CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "van-1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "van-1.crt", directory / "van-1.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.parametrize(
    ("days", "status", "words", "exit_status"),
    [
        (12.5, "warn", "client certificate van-1.crt expires in 12 days", 0),
        (-1.0, "fail", "client certificate van-1.crt expired on", 1),
    ],
)
def test_a_client_certificate_near_or_past_its_end_is_named_with_its_days(
    tmp_path: Path, days: float, status: str, words: str, exit_status: int
) -> None:
    password = secrets.token_hex(8)
    with (
        Broker(tmp_path / "broker", devices={"van-1": password}, tls=True) as broker,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
    ):
        client_certificate(tmp_path, days)
        assert broker.ca_file is not None
        tls = f'ca_file = "{broker.ca_file}"\ntls_cert = "van-1.crt"\ntls_key = "van-1.key"'
        result = check(van_config(tmp_path, broker, scanner.path, tls=tls), "--json")
    assert result.returncode == exit_status, result.stdout + result.stderr
    checks = findings(result)
    assert only(checks, "broker")["detail"].endswith("accepts van-1 (TLS)")
    client, ca = sorted(
        (c for c in checks if c["check"] == "certificate"),
        key=lambda c: "CA" in str(c["detail"]),
    )
    assert client["status"] == status and words in client["detail"], client
    assert ca["status"] == "ok" and "CA certificate ca.crt valid until" in ca["detail"], ca


def test_a_ca_the_broker_was_not_signed_by_is_a_tls_failure(tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    other = make_pki(tmp_path / "other")
    with (
        Broker(tmp_path / "broker", devices={"van-1": password}, tls=True) as broker,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
    ):
        tls = f'ca_file = "{other.ca_file}"'
        config = van_config(tmp_path, broker, scanner.path, tls=tls)
        result = check(config, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = findings(result)
    assert failed(checks) == ["broker"]
    detail = only(checks, "broker")["detail"]
    assert detail.startswith(f"TLS with 127.0.0.1:{broker.port} failed") and "ca_file" in detail
    assert "certificate verify failed" in detail


# --- a locker -------------------------------------------------------------------------------


def test_a_locker_asks_every_lock_board_and_fails_on_one_that_does_not_answer(
    tmp_path: Path,
) -> None:
    password = secrets.token_hex(8)
    (tmp_path / "locker-1.password").write_text(password)
    with (
        Broker(tmp_path / "broker", devices={"locker-1": password}) as broker,
        SimulatedLockBoards(2, link=tmp_path / "bus.tty") as boards,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedScanner(tmp_path / "keypad.tty", suffix=b"\r") as keypad,
    ):
        # [scanner] and [broker] would satisfy the van's loader too: the lock boards decide.
        config = tmp_path / "locker.toml"
        config.write_text(
            locker_toml(
                journal="locker.db",
                lockboard=str(boards.path),
                compartments=(("A1", 0, 0, "S"), ("B1", 1, 0, "M")),
                badges=(),
                scanner=str(scanner.path),
                keypad=str(keypad.path),
                broker=f'host = "{broker.host}"\nport = {broker.port}\n'
                'password_file = "locker-1.password"',
            )
        )
        good = check(config, "--json")
        boards.set_offline(1)
        bad = check(config, "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["role"] == "locker"
    checks = findings(good)
    assert [c["check"] for c in checks] == [
        "config", "lock-board", "lock-board", "scanner", "keypad", "broker", "clock", "disk",
    ]
    assert failed(checks) == []
    boards_said = [c["detail"] for c in checks if c["check"] == "lock-board"]
    assert "board 0 answers (1 compartment, all doors closed)" in boards_said[0]
    assert "board 1 answers" in boards_said[1]
    assert not (tmp_path / "locker.db").exists()

    assert bad.returncode == 1, bad.stdout + bad.stderr
    checks = findings(bad)
    assert failed(checks) == ["lock-board"]
    [offline] = [c["detail"] for c in checks if c["status"] == "fail"]
    assert f"{boards.path}: no status reply from board 1 within 1 s" in offline
    assert "RS-485 A/B swapped?" in offline


# --- a staffed counter ----------------------------------------------------------------------


def test_a_counter_is_told_from_a_van_by_its_shelves_and_checks_scanner_screen_and_broker(
    tmp_path: Path,
) -> None:
    password = secrets.token_hex(8)
    (tmp_path / "counter-1.password").write_text(password)
    with (
        Broker(tmp_path / "broker", devices={"counter-1": password}) as broker,
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
    ):
        # [scanner] and [broker] would satisfy the van's loader too: `shelves` decides.
        config = tmp_path / "counter.toml"
        text = (
            'device_id = "counter-1"\njournal = "counter.db"\nshelves = 40\n'
            f'[scanner]\nport = "{scanner.path}"\n'
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            'password_file = "counter-1.password"\n'
            '[staff]\nsocket = "/run/lastmile/counter-1.sock"\n'
        )
        config.write_text(text)
        good = check(config, "--json")
        config.write_text(text.replace(f'[scanner]\nport = "{scanner.path}"\n', "")
                          .replace('[staff]\nsocket = "/run/lastmile/counter-1.sock"\n', ""))
        bare = check(config)
        (tmp_path / "staff.sock").write_text("in the way")
        config.write_text(text.replace("/run/lastmile/counter-1.sock", "staff.sock"))
        blocked = check(config, "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    doc = json.loads(good.stdout)
    assert (doc["role"], doc["device"]) == ("counter", "counter-1")
    checks = findings(good)
    assert [c["check"] for c in checks] == [
        "config", "scanner", "staff screen", "broker", "clock", "disk",
    ]
    assert failed(checks) == [] and "40 shelves" in only(checks, "config")["detail"]
    assert "/run/lastmile/counter-1.sock: the counter listens there once started" in only(
        checks, "staff screen")["detail"]
    assert "accepts counter-1 (plain TCP)" in only(checks, "broker")["detail"]
    assert not (tmp_path / "counter.db").exists()  # the check makes nothing

    assert bare.returncode == 1, bare.stdout + bare.stderr
    said = {line[5:17].strip(): line for line in bare.stdout.splitlines()[:-1]}
    assert said["scanner"].startswith("FAIL") and "no [scanner] port" in said["scanner"]
    assert said["staff screen"].startswith("warn") and "/dev/null" in said["staff screen"]

    assert blocked.returncode == 1
    assert failed(findings(blocked)) == ["staff screen"]
    assert "is there and is not a socket" in only(findings(blocked), "staff screen")["detail"]


# --- the depot ------------------------------------------------------------------------------


def test_a_depot_checks_its_database_broker_and_disk_without_creating_anything(
    tmp_path: Path, broker: Broker, depot_database: str
) -> None:
    user, password = broker.depot_credentials
    (tmp_path / "depot.password").write_text(password)
    config = tmp_path / "depot.toml"
    config.write_text(
        f"""
[depot]
database = "{depot_database}"
lat = 52.37
lon = 4.90
vans = ["van-1", "van-2"]
[broker]
host = "{broker.host}"
port = {broker.port}
username = "{user}"
password_file = "depot.password"
"""
    )
    result = check(config, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["role"] == "depot"
    checks = findings(result)
    assert [c["check"] for c in checks] == ["config", "database", "broker", "disk"]
    assert only(checks, "broker")["detail"].endswith(f"accepts {user} (plain TCP)")
    database, disk = only(checks, "database")["detail"], only(checks, "disk")["detail"]
    if depot_database.startswith("postgresql://"):
        assert database.endswith(" connects") and "on its PostgreSQL server" in disk
    else:
        assert database == f"{depot_database} does not exist yet: the depot creates it"
        assert "(2 vans, 0 lockers)" in disk
        assert not Path(depot_database).exists()
