"""`lastmile install` as an operator or an image builder runs it: into a directory given as
--root, checked by systemd's own tools (`systemd-analyze verify` for the unit,
`systemd-sysusers` and `systemd-tmpfiles` applied to that directory), never touching the
machine running the tests."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNER_BY_ID = "/dev/serial/by-id/usb-Honeywell_Imaging___Mobility_1900GSR-2_19326B4A4D-if00"
FTDI_BY_ID = "/dev/serial/by-id/usb-FTDI_FT4232H_Quad_FT7C3B1A-if02-port0"

CONFIGS = {
    "van": f"""
device_id = "van-1"
journal = "/var/lib/lastmile/van-1.journal.db"
[broker]
port = 8883
password_file = "van.password"
[scanner]
port = "{SCANNER_BY_ID}"
[gnss]
port = "/dev/ttyUSB0"
""",
    "locker": f"""
device_id = "locker-1"
journal = "/var/lib/lastmile/journal/locker-1.db"
[broker]
port = 8883
password_file = "locker.password"
[lockboard]
port = "{FTDI_BY_ID}"
boards = [{{ board = 0 }}]
[[compartments]]
id = "A1"
board = 0
lock = 0
size = "S"
[keypad]
port = "{SCANNER_BY_ID.replace("-if00", "-if01")}"
""",
    "counter": f"""
device_id = "counter-1"
journal = "/var/lib/lastmile/counter-1.journal.db"
shelves = 40
[broker]
port = 8883
password_file = "counter.password"
[scanner]
port = "{SCANNER_BY_ID}"
[staff]
socket = "/run/lastmile/counter-1.sock"
""",
    "depot": """
[depot]
database = "/var/lib/lastmile/depot.db"
lat = 52.3676
lon = 4.9041
vans = ["van-1"]
[broker]
port = 8883
password_file = "depot.password"
""",
}


def lastmile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lastmile.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False)


def write_config(root: Path, role: str, text: str | None = None) -> Path:
    """The role's config where it belongs on the device: /etc/lastmile, inside `root`."""
    etc = root / "etc" / "lastmile"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / f"{role}.password").write_text("not-a-real-secret\n")
    config = etc / f"{role}.toml"
    config.write_text(CONFIGS[role] if text is None else text)
    return config


def install(root: Path, role: str, config: Path) -> subprocess.CompletedProcess[str]:
    return lastmile("install", "--role", role, "--config", str(config), "--root", str(root))


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Each `Key=value` of a unit file, every value of a key in order."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def require(tool: str) -> str:
    found = shutil.which(tool)
    assert found is not None, f"{tool} is missing: run .ci/setup (Debian's systemd package)"
    return found


@pytest.mark.parametrize("role", ["van", "locker", "counter", "depot"])
def test_the_unit_passes_systemd_analyze_verify_with_the_sandbox_asked_for(
    tmp_path: Path, role: str
) -> None:
    root = tmp_path / "root"
    result = install(root, role, write_config(root, role))
    assert result.returncode == 0, result.stderr
    unit = root / "etc" / "systemd" / "system" / f"lastmile-{role}.service"
    assert str(unit) in result.stdout
    assert "systemctl enable" not in result.stdout  # --root: only the list of files

    verify = subprocess.run([require("systemd-analyze"), "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    said = verify.stdout + verify.stderr
    assert verify.returncode == 0, said
    assert unit.name not in said, said  # no warning about any line of the unit

    s = unit_settings(unit)
    program, *words = s["ExecStart"][0].split(" ")
    assert os.access(program, os.X_OK) and Path(program).name == "lastmile"
    assert words == [role, "--config", f"/etc/lastmile/{role}.toml"]  # as the device sees it
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "always",
        "User": "lastmile", "Group": "lastmile", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "StateDirectory": "lastmile", "ConfigurationDirectory": "lastmile",
        "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM",
        "TimeoutStopSec": "15", "Environment": "PYTHONUNBUFFERED=1",
        "After": "network-online.target", "Wants": "network-online.target",
        "WantedBy": "multi-user.target",
    }
    assert {k: s.get(k, ["<missing>"])[0] for k in expected} == expected
    assert "StartLimitIntervalSec" in s and "StartLimitBurst" in s and "RestartSec" in s
    assert "PrivateDevices" not in s and "DeviceAllow" not in s  # they would hide the ports
    assert s.get("SupplementaryGroups") == (None if role == "depot" else ["dialout"])
    # Nothing was enabled: no wants link, and no rules for a depot without serial ports.
    assert not (root / "etc" / "systemd" / "system" / "multi-user.target.wants").exists()
    rules = root / "etc" / "udev" / "rules.d" / f"70-lastmile-{role}.rules"
    assert rules.exists() == (role != "depot")
    # Only a counter listens on a socket (its staff screen's): its runtime directory.
    runtime = ["lastmile"] if role == "counter" else None
    assert s.get("RuntimeDirectory") == runtime
    assert s.get("RuntimeDirectoryMode") == (["0750"] if runtime else None)


def test_a_counter_gets_its_scanner_s_rule_and_must_have_a_staff_socket(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install(root, "counter", write_config(root, "counter"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rules = (root / "etc" / "udev" / "rules.d" / "70-lastmile-counter.rules").read_text()
    [scanner] = [line for line in rules.splitlines() if not line.startswith("#")]
    assert 'SYMLINK+="lastmile/scanner"' in scanner and "lockboard" not in rules
    assert "systemctl enable --now lastmile-counter" not in done.stdout  # --root

    # Without the socket an installed counter would have no staff screen (stdin: /dev/null).
    bare = CONFIGS["counter"].replace('[staff]\nsocket = "/run/lastmile/counter-1.sock"\n', "")
    refused = install(tmp_path / "bare", "counter", write_config(tmp_path / "bare", "counter",
                                                                  bare))
    assert refused.returncode == 2
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert '[staff] socket = "/run/lastmile/counter-1.sock"' in refused.stderr
    assert "/dev/null" in refused.stderr
    # A socket where the sandbox cannot write is refused like a journal there.
    elsewhere = CONFIGS["counter"].replace("/run/lastmile/counter-1.sock", "/srv/staff.sock")
    refused = install(tmp_path / "srv", "counter", write_config(tmp_path / "srv", "counter",
                                                                 elsewhere))
    assert refused.returncode == 2
    assert "[staff] socket /srv/staff.sock lies outside /var/lib/lastmile" in refused.stderr
    assert 'socket = "/run/lastmile/staff.sock" in [staff]' in refused.stderr


@pytest.mark.parametrize(("role", "dialout"), [("van", True), ("depot", False)])
def test_systemd_sysusers_makes_an_unprivileged_account(
    tmp_path: Path, role: str, dialout: bool
) -> None:
    root = tmp_path / "root"
    assert install(root, role, write_config(root, role)).returncode == 0
    applied = subprocess.run([require("systemd-sysusers"), f"--root={root}"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert applied.returncode == 0, applied.stderr
    users = {line.split(":")[0]: line.split(":") for line in
             (root / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (root / "etc" / "group").read_text().splitlines()}
    user = users["lastmile"]
    assert 0 < int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"  # system, no login
    assert ("lastmile" in groups.get("dialout", [])) == dialout


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles must be root to chown")
def test_systemd_tmpfiles_makes_the_config_directory_the_service_group_may_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    assert install(root, "van", write_config(root, "van")).returncode == 0
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        args = [require(tool), f"--root={root}"] + (["--create"] if "tmpfiles" in tool else [])
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    group = next(line.split(":") for line in (root / "etc" / "group").read_text().splitlines()
                 if line.startswith("lastmile:"))
    etc = (root / "etc" / "lastmile").stat()
    assert stat.S_IMODE(etc.st_mode) == 0o750
    assert (etc.st_uid, etc.st_gid) == (0, int(group[2]))


def test_udev_rules_name_the_ports_given_by_id_and_warn_about_the_others(tmp_path: Path) -> None:
    root = tmp_path / "root"
    van = install(root, "van", write_config(root, "van"))
    assert van.returncode == 0, van.stderr
    rules = (root / "etc" / "udev" / "rules.d" / "70-lastmile-van.rules").read_text()
    rule_lines = [line for line in rules.splitlines() if not line.startswith("#")]
    assert rule_lines == [
        'SUBSYSTEM=="tty", ENV{ID_BUS}=="usb", '
        'ENV{ID_SERIAL}=="Honeywell_Imaging___Mobility_1900GSR-2_19326B4A4D", '
        'ENV{ID_USB_INTERFACE_NUM}=="00", SYMLINK+="lastmile/scanner", GROUP="dialout", '
        'MODE="0660"'
    ]
    warning = [line for line in van.stderr.splitlines() if line]
    assert len(warning) == 1 and "[gnss] port /dev/ttyUSB0" in warning[0], van.stderr
    assert "may move between boots" in warning[0]

    locker = install(root, "locker", write_config(root, "locker"))
    assert locker.returncode == 0 and locker.stderr == "", locker.stderr
    rules = (root / "etc" / "udev" / "rules.d" / "70-lastmile-locker.rules").read_text()
    board, keypad = [line for line in rules.splitlines() if not line.startswith("#")]
    assert 'ENV{ID_SERIAL}=="FTDI_FT4232H_Quad_FT7C3B1A"' in board
    assert 'ENV{ID_USB_INTERFACE_NUM}=="02"' in board
    assert 'ATTRS{port_number}=="0"' in board and 'SYMLINK+="lastmile/lockboard"' in board
    assert 'ENV{ID_USB_INTERFACE_NUM}=="01"' in keypad and "lastmile/keypad" in keypad
    assert "port_number" not in keypad


def test_running_it_again_gives_the_same_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = write_config(root, "locker")
    assert install(root, "locker", config).returncode == 0
    before = snapshot(root)
    again = install(root, "locker", config)
    assert again.returncode == 0, again.stderr
    assert snapshot(root) == before  # same bytes, not even rewritten
    assert again.stdout.count("(unchanged)") == 4


@pytest.mark.parametrize(
    ("role", "text", "says"),
    [
        ("van", 'device_id = "van-1"\n[broker]\nport = 1883\npassword_file = "van.password"\n',
         "scanner"),
        ("locker", "device_id = [", "cannot read"),
        ("depot", "[depot]\nlat = 'north'\nlon = 4.9\n", "depot.lat"),
    ],
)
def test_an_invalid_config_is_one_line_and_exit_2(
    tmp_path: Path, role: str, text: str, says: str
) -> None:
    root = tmp_path / "root"
    result = install(root, role, write_config(root, role, text))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr, result.stderr
    assert not (root / "etc" / "systemd").exists() and not (root / "usr").exists()


@pytest.mark.parametrize(
    ("role", "before", "after", "says"),
    [
        ("van", 'journal = "/var/lib/lastmile/van-1.journal.db"', 'journal = "van.db"',
         'journal /etc/lastmile/van.db lies outside /var/lib/lastmile'),
        ("locker", 'journal = "/var/lib/lastmile/journal/locker-1.db"',
         'journal = "/srv/locker.db"', 'set journal = "/var/lib/lastmile/locker.db"'),
        ("depot", 'database = "/var/lib/lastmile/depot.db"',
         'database = "/var/lib/lastmile/../depot.db"', "[depot] database /var/lib/depot.db"),
    ],
)
def test_state_outside_the_state_directory_is_refused(
    tmp_path: Path, role: str, before: str, after: str, says: str
) -> None:
    root = tmp_path / "root"
    assert before in CONFIGS[role]
    result = install(root, role, write_config(root, role, CONFIGS[role].replace(before, after)))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr, result.stderr
    assert "ProtectSystem=strict" in result.stderr
    assert not (root / "etc" / "systemd").exists()


def test_a_postgresql_depot_has_no_state_of_its_own_to_check(tmp_path: Path) -> None:
    root = tmp_path / "root"
    text = CONFIGS["depot"].replace('"/var/lib/lastmile/depot.db"',
                                    '"postgresql://depot@db-host/depot"')
    result = install(root, "depot", write_config(root, "depot", text))
    assert result.returncode == 0, result.stderr


def test_a_config_the_sandbox_hides_is_refused(tmp_path: Path) -> None:
    """Outside --root the config is named by its own path: under /tmp (where pytest keeps
    tmp_path) PrivateTmp=yes would hide it from the service."""
    if not tmp_path.resolve().is_relative_to("/tmp"):
        pytest.skip(f"tmp_path {tmp_path} is not under /tmp")
    root = tmp_path / "root"
    root.mkdir()
    result = install(root, "van", write_config(tmp_path / "elsewhere", "van"))
    assert result.returncode == 2
    assert "PrivateTmp=yes" in result.stderr and "/etc/lastmile" in result.stderr, result.stderr
    assert list(root.iterdir()) == []
