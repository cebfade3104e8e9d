"""`lastmile install`: the files that make a van, a locker, a counter or the depot a systemd
service.

A device in the field has no one at a terminal: it must start at boot, restart after a crash,
be stopped by a watchdog when it hangs, and run with no more rights than its job needs, so a
bug cannot write outside its own state. This module writes what the OS needs for that (a
unit, a sysusers and a tmpfiles entry, udev rules for the serial ports) and checks the one
thing those restrictions would otherwise turn into a failure at the first delivery: every
file the service writes must lie in its StateDirectory, the only place ProtectSystem=strict
leaves writable (and, for a counter's staff screen socket, its RuntimeDirectory: a service's
stdin is /dev/null, so the desk's screen app must reach it there). It starts and enables
nothing: that stays the operator's (or the image builder's) decision, and a directory given
as --root gets the same files as `/`.

The unit, sysusers and tmpfiles syntaxes are a few fixed lines each; they are written here
rather than through a templating or INI library, which would not know systemd's quoting.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

ROLES = ("van", "locker", "counter", "depot")
USER = "lastmile"  # the unprivileged account every role runs as (its group has the same name)
STATE_DIR = PurePosixPath("/var/lib/lastmile")  # StateDirectory=lastmile: journals, photos, db
CONFIG_DIR = PurePosixPath("/etc/lastmile")  # ConfigurationDirectory=lastmile
# RuntimeDirectory=lastmile: a counter's staff screen socket. Mode 0750, so the desk's screen
# app reaches the socket (itself 0660) when its account is in the service's group.
RUNTIME_DIR = PurePosixPath("/run/lastmile")
# The process tells systemd WATCHDOG=1 at half this interval (or more often); a process that
# hangs (a wedged serial read, a deadlock) stays silent and systemd kills and restarts it. 30 s
# is long enough that a slow SD card's fsync never trips it, short enough that a locker's
# customers wait less than a minute for a restarted screen.
WATCHDOG_S = 30
RESTART_S = 5  # a pause between restarts, so a crash loop does not hog a small CPU
# At most START_LIMIT_BURST starts within START_LIMIT_INTERVAL_S: a config that can never
# work fails visibly (`systemctl status`) instead of restarting forever.
START_LIMIT_INTERVAL_S = 600
START_LIMIT_BURST = 5
STOP_TIMEOUT_S = 15  # the journal is closed cleanly within this after SIGTERM, else SIGKILL
# ProtectHome=yes and PrivateTmp=yes hide these from the service: a program or a config there
# would be missing when the service starts.
HIDDEN = (
    PurePosixPath("/home"),
    PurePosixPath("/root"),
    PurePosixPath("/run/user"),
    PurePosixPath("/tmp"),
    PurePosixPath("/var/tmp"),
)
BY_ID = PurePosixPath("/dev/serial/by-id")
# The name udev's 60-serial.rules gives a USB serial port under /dev/serial/by-id: usb-
# ID_SERIAL -if ID_USB_INTERFACE_NUM, and -port N when one interface carries several ports.
# ID_SERIAL holds only the characters udev keeps (none of them a glob character in a rule).
_BY_ID_NAME = re.compile(
    r"usb-(?P<serial>[A-Za-z0-9#+.:=@_-]+)-if(?P<iface>[0-9A-Fa-f]{2})(?:-port(?P<port>[0-9]+))?"
)
_DESCRIPTION = {
    "van": "lastmile-edge van: scanner, GNSS, journal and uplink to the depot",
    "locker": "lastmile-edge parcel locker: lock boards, keypad, scanner, journal and uplink",
    "counter": "lastmile-edge staffed counter: scanner, staff screen socket, journal and uplink",
    "depot": "lastmile-edge depot: event ingest, parcel states, policy, manifests, webhooks",
}


class InstallError(Exception):
    """The service cannot be installed as asked; the message is one line saying why."""


@dataclass(frozen=True)
class _Port:
    what: str  # the name under /dev/lastmile/: scanner, keypad, gnss, lockboard
    setting: str  # where the config names it, for messages
    port: str


@dataclass(frozen=True)
class _StatePath:
    setting: str  # where the config names it, for messages
    path: Path  # as the loader resolved it
    fix: str  # the TOML line that would put it in STATE_DIR ({} is the file's name)


@dataclass(frozen=True)
class _Needs:
    """What the role's configuration asks of the system."""

    ports: list[_Port]
    state: list[_StatePath]
    camera: bool  # a video device: the account also needs the `video` group
    runtime: bool = False  # it listens on a socket in RUNTIME_DIR (RuntimeDirectory=)


@dataclass
class Installed:
    """What `install` did: each file with whether it changed, and warnings for the operator."""

    files: list[tuple[Path, bool]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _is_video_device(source: int | str | None) -> bool:
    return isinstance(source, int) or (isinstance(source, str) and source.startswith("/dev/"))


def _read_needs(role: str, config: Path) -> _Needs:
    """Read the config with the role's own loader: the same checks the service makes at start."""
    from depot.errors import DepotError
    from edge.errors import EdgeError

    journal_fix = 'journal = "' + str(STATE_DIR) + '/{}"'
    try:
        if role == "van":
            from edge.van import load_config

            van = load_config(config)
            ports = [_Port("scanner", "[scanner] port", van.scanner_port)]
            if van.gnss_port is not None:
                ports.append(_Port("gnss", "[gnss] port", van.gnss_port))
            journal = _StatePath("journal", van.journal, journal_fix)
            return _Needs(ports, [journal], _is_video_device(van.camera_source))
        if role == "locker":
            from edge.locker_config import load_locker_config

            locker = load_locker_config(config)
            ports = [_Port("lockboard", "[lockboard] port", locker.lockboard_port)]
            if locker.scanner_port is not None:
                ports.append(_Port("scanner", "[scanner] port", str(locker.scanner_port)))
            if locker.keypad_port is not None:
                ports.append(_Port("keypad", "[keypad] port", str(locker.keypad_port)))
            journal = _StatePath("journal", locker.journal, journal_fix)
            return _Needs(ports, [journal], _is_video_device(locker.camera_source))
        if role == "counter":
            return _counter_needs(config, journal_fix)
        from depot.config import load_depot_config

        depot = load_depot_config(config)
        state = []
        if isinstance(depot.database, Path):  # else a postgresql:// URL: another server's state
            fix = 'database = "' + str(STATE_DIR) + '/{}" in [depot]'
            state.append(_StatePath("[depot] database", depot.database, fix))
        return _Needs([], state, camera=False)
    except (EdgeError, DepotError, ValueError, TypeError) as exc:
        raise InstallError(str(exc)) from None


def _counter_needs(config: Path, journal_fix: str) -> _Needs:
    """A counter: its scanner, its journal, and the staff screen's socket, which it must
    have (under systemd stdin is /dev/null: without the socket no hand-out could be made)."""
    from edge.counter_config import load_counter_config

    counter = load_counter_config(config)
    ports = []
    if counter.scanner_port is not None:
        ports.append(_Port("scanner", "[scanner] port", counter.scanner_port))
    journal = _StatePath("journal", counter.journal, journal_fix)
    sock = counter.staff_socket
    if sock is None:
        raise InstallError(
            "a counter under systemd has /dev/null for stdin, so its staff screen needs "
            f'[staff] socket = "{RUNTIME_DIR}/{counter.device_id}.sock" (the desk\'s screen '
            "app connects there)"
        )
    if PurePosixPath(os.path.normpath(sock.absolute())).is_relative_to(RUNTIME_DIR):
        return _Needs(ports, [journal], camera=False, runtime=True)
    fix = 'socket = "' + str(RUNTIME_DIR) + '/{}" in [staff]'
    return _Needs(ports, [journal, _StatePath("[staff] socket", sock, fix)], camera=False)


def _on_target(path: Path, root: Path) -> PurePosixPath:
    """Where `path` is on the system being installed: inside --root, relative to it."""
    absolute = PurePosixPath(os.path.normpath(path.absolute()))
    target_root = PurePosixPath(root)
    if target_root != PurePosixPath("/") and absolute.is_relative_to(target_root):
        return PurePosixPath("/") / absolute.relative_to(target_root)
    return absolute


def _hidden_by(path: PurePosixPath) -> PurePosixPath | None:
    return next((h for h in HIDDEN if path.is_relative_to(h)), None)


def _hiding_setting(place: PurePosixPath) -> str:
    return "PrivateTmp=yes" if place.name.endswith("tmp") else "ProtectHome=yes"


def _program() -> PurePosixPath:
    """The installed `lastmile` entry point: the one beside this Python (a venv's), else PATH's."""
    beside = Path(sys.executable).parent / "lastmile"
    if beside.is_file() and os.access(beside, os.X_OK):
        return PurePosixPath(os.path.normpath(beside.absolute()))
    found = shutil.which("lastmile")
    if found is None:
        raise InstallError(
            f"cannot find the lastmile program beside {sys.executable} or on PATH: "
            "install the package (pip install .) first"
        )
    return PurePosixPath(os.path.normpath(Path(found).absolute()))


def _word(text: str) -> str:
    """One argument of a unit's command line, quoted for systemd (specifiers and variables
    included: a % or $ in a path stays a % or $)."""
    text = text.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _groups(role: str, needs: _Needs) -> list[str]:
    if role == "depot":
        return []
    return ["dialout", "video"] if needs.camera else ["dialout"]


def render_unit(
    role: str,
    program: PurePosixPath,
    config: PurePosixPath,
    groups: list[str],
    runtime: bool = False,
) -> str:
    """The service unit: notify and watchdog, restarts with a limit, and the sandbox;
    `runtime`: a RuntimeDirectory for a socket the service listens on."""
    command = " ".join(_word(w) for w in (str(program), role, "--config", str(config)))
    lines = [
        f"# Written by `lastmile install --role {role}`; running it again rewrites this file.",
        "[Unit]",
        f"Description={_DESCRIPTION[role]}",
        "Wants=network-online.target",
        "After=network-online.target",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"WatchdogSec={WATCHDOG_S}",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "Restart=always",
        f"RestartSec={RESTART_S}",
        f"User={USER}",
        f"Group={USER}",
        *([f"SupplementaryGroups={' '.join(groups)}"] if groups else []),
        "UMask=0027",
        "StateDirectory=lastmile",
        "StateDirectoryMode=0750",
        *(["RuntimeDirectory=lastmile", "RuntimeDirectoryMode=0750"] if runtime else []),
        *(
            ["ConfigurationDirectory=lastmile", "ConfigurationDirectoryMode=0750"]
            if config.is_relative_to(CONFIG_DIR)
            else []
        ),
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "Environment=PYTHONUNBUFFERED=1",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_sysusers(role: str, groups: list[str]) -> str:
    lines = [
        f"# Written by `lastmile install --role {role}`: the account lastmile services run as.",
        f'u {USER} - "lastmile-edge service" {STATE_DIR} /usr/sbin/nologin',
        *(f"m {USER} {group}" for group in groups),
    ]
    return "\n".join(lines) + "\n"


def render_tmpfiles(role: str) -> str:
    # The configs hold broker passwords and keys: readable by the service's group, not by all.
    lines = [
        f"# Written by `lastmile install --role {role}`.",
        f"d {CONFIG_DIR} 0750 root {USER} -",
    ]
    return "\n".join(lines) + "\n"


def render_udev(role: str, ports: list[_Port]) -> tuple[str, list[str]]:
    """Rules giving each by-id port a /dev/lastmile/<what> name the service's group may open;
    and a warning for each port the config does not name by its USB id."""
    lines = [
        f"# Written by `lastmile install --role {role}`: the serial ports the config names by",
        "# their USB id, as /dev/lastmile/<what>, readable and writable by the dialout group.",
    ]
    warnings = []
    for p in ports:
        if "://" in p.port:  # a pyserial URL (socket://...): no device file to name
            continue
        path = PurePosixPath(p.port)
        match = _BY_ID_NAME.fullmatch(path.name) if path.parent == BY_ID else None
        if match is None:
            warnings.append(
                f"{p.setting} {p.port} is not a {BY_ID}/usb-... name: no udev rule for it, "
                "and it may move between boots"
            )
            continue
        rule = [
            'SUBSYSTEM=="tty"',
            'ENV{ID_BUS}=="usb"',
            f'ENV{{ID_SERIAL}}=="{match["serial"]}"',
            f'ENV{{ID_USB_INTERFACE_NUM}}=="{match["iface"]}"',
        ]
        if match["port"] is not None:  # 60-serial.rules takes -portN from this attribute
            rule.append(f'ATTRS{{port_number}}=="{match["port"]}"')
        rule += [f'SYMLINK+="lastmile/{p.what}"', 'GROUP="dialout"', 'MODE="0660"']
        lines.append(", ".join(rule))
    return "\n".join(lines) + "\n", warnings


def _write(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds it; True when the file changed. A new
    file replaces the old in one rename, so a crash never leaves half a unit."""
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        partial.chmod(0o644)
        os.replace(partial, path)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None
    return True


def install(role: str, config: Path, root: Path = Path("/")) -> Installed:
    """Check `config` for running under the unit's sandbox, then write the role's files under
    `root`. Raises InstallError (one line) and writes nothing when the config cannot work."""
    if role not in ROLES:
        raise InstallError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    if not root.is_dir():
        raise InstallError(f"--root {root} is not a directory")
    root = Path(os.path.normpath(root.absolute()))
    config = Path(os.path.normpath(config.absolute()))
    needs = _read_needs(role, config)
    done = Installed()
    target_config = _on_target(config, root)
    place = _hidden_by(target_config)
    if place is not None:
        raise InstallError(
            f"the config {target_config} lies under {place}, which {_hiding_setting(place)} "
            f"hides from the service: put it in {CONFIG_DIR}"
        )
    for state in needs.state:
        where = _on_target(state.path, root)
        if not where.is_relative_to(STATE_DIR):
            raise InstallError(
                f"{state.setting} {where} lies outside {STATE_DIR}, the only place the service "
                f"may write (ProtectSystem=strict): set {state.fix.format(where.name)}"
            )
    program = _program()
    place = _hidden_by(program)
    if place is not None:
        problem = (
            f"the lastmile program {program} lies under {place}, which "
            f"{_hiding_setting(place)} hides from the service: install the package outside it "
            "(e.g. a venv in /opt/lastmile)"
        )
        if root == Path("/"):
            raise InstallError(problem)
        done.warnings.append(problem)  # the image may hold it elsewhere; this machine cannot tell
    groups = _groups(role, needs)
    files = {
        f"etc/systemd/system/lastmile-{role}.service": render_unit(
            role, program, target_config, groups, needs.runtime
        ),
        "usr/lib/sysusers.d/lastmile.conf": render_sysusers(role, groups),
        "usr/lib/tmpfiles.d/lastmile.conf": render_tmpfiles(role),
    }
    if role != "depot":  # the depot has no serial ports
        rules, warnings = render_udev(role, needs.ports)
        files[f"etc/udev/rules.d/70-lastmile-{role}.rules"] = rules
        done.warnings += warnings
    for relative, text in files.items():
        path = root / relative
        done.files.append((path, _write(path, text)))
    return done


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=ROLES, help="which service to install")
    p.add_argument("--config", required=True, type=Path, help="the role's TOML configuration")
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="write the files under this directory (an image being built; default /); "
        "a config inside it is named in the unit by its path there",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Install, print what was written and (for this machine) what to run next; exit 2 when
    the config cannot work under the unit."""
    try:
        done = install(args.role, args.config, args.root)
    except InstallError as exc:
        print(f"lastmile install: {exc}", file=sys.stderr)
        return 2
    for warning in done.warnings:
        print(f"lastmile install: warning: {warning}", file=sys.stderr)
    for path, changed in done.files:
        print(f"{path}{'' if changed else '  (unchanged)'}")
    if Path(os.path.normpath(args.root.absolute())) == Path("/"):
        print(
            "\nNext (nothing was started or enabled):\n"
            f"  make {args.config} and the files it names readable by group {USER}\n"
            "  systemd-sysusers\n"
            "  systemd-tmpfiles --create\n"
            "  udevadm control --reload && udevadm trigger --subsystem-match=tty\n"
            "  systemctl daemon-reload\n"
            f"  systemctl enable --now lastmile-{args.role}"
        )
    return 0
