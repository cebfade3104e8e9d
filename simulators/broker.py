"""A private MQTT broker for tests, demos and bench runs, with per-device accounts and the v1 ACL.

Owns: one Mosquitto process (or, where Mosquitto is not installed, an embedded amqtt broker) on
127.0.0.1 and a free port, and the files it runs from in the workdir it is handed: the config,
the hashed password file, the topic ACL, the log and the persistence file.

The topic ACL is written once, as data (`DEVICE_RULES`, `DEPOT_RULES`), and both brokers enforce
it from there, so the two cannot drift apart:

- a device (username = device name) may write `lastmile/v1/{me}/events`, `.../status` and
  `.../up/#`, and read `.../ack` and `.../cmd/#` — its own subtree and nobody else's;
- the depot account reads and writes all of `lastmile/v1/#`.

Must never: touch the system Mosquitto service or port 1883, listen on anything but 127.0.0.1,
or start without passwords. A process it starts is a child of this one and is ended by `stop()`
(SIGTERM, then SIGKILL) — use the context manager so a failed test cannot leak a broker.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

from depot.provision import MAX_QUEUED_MESSAGES, MOSQUITTO_LOGGING
from simulators.errors import SimulatorError

log = logging.getLogger("simulators.broker")

__all__ = [
    "DEPOT_RULES",
    "DEVICE_RULES",
    "TOPIC_ROOT",
    "AclRule",
    "Broker",
    "BrokerLike",
    "EmbeddedBroker",
    "acl_allows",
    "find_mosquitto",
    "free_port",
    "mosquitto_acl_text",
    "start_broker",
]

HOST: Final = "127.0.0.1"
TOPIC_ROOT: Final = "lastmile/v1"

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
_START_WAIT_STEP_S: Final = 0.02  # how long one pass of the start-up wait blocks on the child
_LOG_TAIL_LINES: Final = 40
# Mosquitto 2.x logs "mosquitto version X running" once every listener is open.
_MOSQUITTO_RUNNING: Final = re.compile(rb"mosquitto version \S+ running")
_ADDRESS_IN_USE: Final = b"Address already in use"
_PORT_RETRIES: Final = 3  # fresh ports tried when a free port was taken before Mosquitto bound it

CONNACK_ACCEPTED: Final = 0x00  # MQTT 3.1.1 CONNACK return code 0, "Connection Accepted"

# Device names become MQTT usernames, ACL `%u` substitutions and topic levels: no wildcards, no
# separators, no ':' (the password file's separator), nothing a shell or a log would mangle.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

BROKER_ENV: Final = "LASTMILE_BROKER"  # "mosquitto", "embedded" or "auto" (the default)


# --- the topic ACL, as data ---------------------------------------------------------------------


@dataclass(frozen=True)
class AclRule:
    """One ACL line: `access` to every topic matching `pattern`; `%u` stands for the username."""

    access: Literal["read", "write", "readwrite"]
    pattern: str

    def grants(self, access: Literal["read", "write"]) -> bool:
        return self.access in (access, "readwrite")


DEVICE_RULES: Final = (
    AclRule("write", f"{TOPIC_ROOT}/%u/events"),
    AclRule("write", f"{TOPIC_ROOT}/%u/status"),
    AclRule("write", f"{TOPIC_ROOT}/%u/up/#"),
    AclRule("read", f"{TOPIC_ROOT}/%u/ack"),
    AclRule("read", f"{TOPIC_ROOT}/%u/ack/photo"),
    AclRule("read", f"{TOPIC_ROOT}/%u/cmd/#"),
)
DEPOT_RULES: Final = (AclRule("readwrite", f"{TOPIC_ROOT}/#"),)


def mosquitto_acl_text(depot_username: str | Sequence[str]) -> str:
    """The Mosquitto `acl_file` for the v1 contract.

    Mosquitto applies `pattern` lines to every authenticated user wherever they stand in the
    file, and `topic` lines to the `user` above them. Grants add up, so the depot holds its
    `topic readwrite lastmile/v1/#` plus the (harmless) device patterns for `lastmile/v1/depot/`.
    Several depot accounts (one per depot worker) each get the same `user` block; a shared
    subscription (`$share/depot/lastmile/v1/+/events`) is checked against the filter after the
    group name, which that block grants.
    """
    depots = [depot_username] if isinstance(depot_username, str) else list(depot_username)
    lines = [
        "# Written by simulators.broker; regenerated on every start.",
        "# Every account, the depot included: its own subtree, %u = its username.",
        *(f"pattern {r.access} {r.pattern}" for r in DEVICE_RULES),
    ]
    for name in depots:
        lines += [
            "",
            "# The depot: the whole v1 tree.",
            f"user {name}",
            *(f"topic {r.access} {r.pattern}" for r in DEPOT_RULES),
        ]
    return "\n".join([*lines, ""])


def _covers(pattern: str, candidate: str) -> bool:
    """Whether the filter `pattern` matches every topic the topic or filter `candidate` can.

    For a plain topic name this is MQTT topic matching. A wildcard in `candidate` is covered only
    by the same or a wider wildcard in `pattern`, never by a literal level, so a device cannot
    subscribe to `lastmile/v1/+/ack` on the strength of `lastmile/v1/van-1/ack`.
    """
    want = candidate.split("/")
    have = pattern.split("/")
    for i, level in enumerate(have):
        if level == "#":
            return True
        if i >= len(want) or want[i] == "#":
            return False
        if level != "+" and level != want[i]:
            return False
    return len(want) == len(have)


def acl_allows(
    username: str,
    access: Literal["read", "write"],
    topic: str,
    *,
    depot_username: str | Collection[str],
) -> bool:
    """Whether `username` may `access` a topic (or, for "read", subscribe to a filter)."""
    depots = {depot_username} if isinstance(depot_username, str) else set(depot_username)
    rules = DEVICE_RULES + (DEPOT_RULES if username in depots else ())
    return any(
        rule.grants(access) and _covers(rule.pattern.replace("%u", username), topic)
        for rule in rules
    )


# --- helpers ------------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it; another process may still take
    it before we bind, which `Broker.start` notices and works around for ports it chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_mosquitto() -> Path | None:
    """The Mosquitto broker binary: on PATH, or in the sbin directories PATH often lacks."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _find_mosquitto_passwd(mosquitto: Path) -> Path | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return Path(found)
    for directory in (mosquitto.parent, mosquitto.parent.parent / "bin"):
        candidate = directory / "mosquitto_passwd"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _check_account(username: str, password: str) -> None:
    if not _NAME.fullmatch(username):
        raise ValueError(
            f"account name {username!r}: 1-64 of A-Z a-z 0-9 . _ - (it becomes a topic level)"
        )
    if not password or any(c in password for c in "\r\n\0"):
        raise ValueError(f"password for {username!r} must be non-empty and on one line")


def _accounts(
    devices: Mapping[str, str], depot: tuple[str, str] | None
) -> tuple[dict[str, str], tuple[str, str]]:
    depot = depot or ("depot", secrets.token_urlsafe(18))
    _check_account(*depot)
    accounts = dict(devices)
    for name, password in accounts.items():
        _check_account(name, password)
    if depot[0] in accounts:
        raise ValueError(f"device {depot[0]!r} would share the depot's account")
    return accounts, depot


def _worker_accounts(depot: str, workers: int, devices: Mapping[str, str]) -> dict[str, str]:
    """`{depot}-1..N`, one account each for N depot workers (none for a depot alone)."""
    if workers < 1:
        raise ValueError("depot_workers must be at least 1")
    names = [f"{depot}-{k}" for k in range(1, workers + 1)] if workers > 1 else []
    clash = [n for n in names if n in devices]
    if clash:
        raise ValueError(f"device {clash[0]!r} would share a depot worker's account")
    return {n: secrets.token_urlsafe(18) for n in names}


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")


def encode_str(value: str) -> bytes:
    """An MQTT UTF-8 string: two length bytes, then the bytes (the probe and bench speak it)."""
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def remaining_length(n: int) -> bytes:
    """MQTT's variable byte integer, as a packet's remaining length is written."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _probe_connack(
    host: str,
    port: int,
    username: str,
    password: str,
    timeout: float = 2.0,
    ca_file: Path | None = None,
) -> int:
    """Send one MQTT 3.1.1 CONNECT (clean session) and return the CONNACK return code.

    Used to learn when a broker has taken up new credentials. It connects *as* `username`, so
    never probe an account whose session matters: with a clean session the broker drops it.
    """
    body = (
        encode_str("MQTT")
        + bytes([0x04, 0xC2])  # protocol level 4; flags: username, password, clean session
        + struct.pack("!H", 10)  # keepalive, seconds
        + encode_str("")  # client id: let the broker assign one
        + encode_str(username)
        + encode_str(password)
    )
    raw = socket.create_connection((host, port), timeout=timeout)
    if ca_file is not None:
        raw = ssl.create_default_context(cafile=str(ca_file)).wrap_socket(raw, server_hostname=host)
    with raw as s:
        s.sendall(b"\x10" + remaining_length(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = s.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError("broker closed the connection before CONNACK")
            connack += chunk
        if connack[0] != 0x20:
            raise ConnectionError(f"expected CONNACK, got packet type {connack[0] >> 4}")
        if connack[3] == CONNACK_ACCEPTED:
            s.sendall(b"\xe0\x00")  # DISCONNECT, so no will and no error in the broker's log
        return connack[3]


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the broker interface ---------------------------------------------------------------------


class BrokerLike(Protocol):
    """What tests and demos use of a broker, whichever one runs."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def mqtt5(self) -> bool:
        """Whether the broker speaks MQTT v5 (Mosquitto) or only 3.1.1 (amqtt)."""
        ...

    @property
    def depot_credentials(self) -> tuple[str, str]: ...
    @property
    def depot_workers(self) -> dict[str, str]: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def devices(self) -> tuple[str, ...]: ...
    @property
    def is_running(self) -> bool: ...
    def credentials(self, device: str) -> tuple[str, str]: ...
    def add_device(self, name: str, password: str) -> None: ...
    def start(self, timeout: float = START_TIMEOUT_S) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# --- Mosquitto ----------------------------------------------------------------------------------


class _AccountsAndAddress:
    """What both brokers answer the same way: where they listen and who may log in."""

    _accounts: dict[str, str]
    _depot: tuple[str, str]
    _port: int
    _workers: dict[str, str] = {}  # noqa: RUF012  # read-only default: the embedded broker's

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def depot_credentials(self) -> tuple[str, str]:
        return self._depot

    @property
    def depot_workers(self) -> dict[str, str]:
        """The depot workers' accounts (`{depot}-1..N`), username to password; empty alone."""
        return dict(self._workers)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self._accounts)

    def credentials(self, device: str) -> tuple[str, str]:
        """(username, password) of a device; KeyError if it has no account."""
        try:
            return device, self._accounts[device]
        except KeyError:
            raise KeyError(f"no broker account for device {device!r}") from None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Broker(_AccountsAndAddress):
    """A Mosquitto 2.x child process on 127.0.0.1 with per-device passwords and the v1 ACL.

    >>> with Broker(tmp_path, devices={"van-1": "s3cret"}) as broker:
    ...     client.username_pw_set(*broker.credentials("van-1"))
    ...     client.connect(broker.host, broker.port)

    `use_username_as_clientid` is on: whatever client id a device sends, its session is the one
    named after its username, so no device can take over another device's session (and a second
    connection with the same username takes over the first, as a rebooted scanner should).

    With `persistence=True`, sessions, queued messages and retained messages survive `restart()`
    (Mosquitto writes them on SIGTERM); `kill()` loses whatever changed since the last autosave.
    """

    mqtt5: Final = True

    def __init__(
        self,
        workdir: Path,
        *,
        devices: Mapping[str, str],
        depot: tuple[str, str] | None = None,
        persistence: bool = False,
        port: int | None = None,
        log_to: Path | None = None,
        executable: Path | None = None,
        tls: bool = False,
        depot_workers: int = 1,
    ) -> None:
        """`devices` maps username to password; `depot` defaults to ("depot", a random password).

        `depot_workers=N` (N > 1) adds N accounts `{depot}-1..N` with the depot's rights, one
        per depot worker sharing the devices' stream (MQTT v5 shared subscriptions).

        Nothing runs until `start()`. `port=None` picks a free port, kept for the broker's life.
        `tls=True`: the listener speaks only TLS, with a certificate from a throwaway CA whose
        file is `ca_file` (clients pin it and check the host name, as in the field).
        """
        self._accounts, self._depot = _accounts(devices, depot)
        self._workers = _worker_accounts(self._depot[0], depot_workers, self._accounts)
        self._workdir = Path(workdir).resolve()
        self._tls = tls
        self._ca_file: Path | None = None
        self._persistence = persistence
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._log_path = Path(log_to) if log_to is not None else self._workdir / "mosquitto.log"
        self._executable = executable or find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self._lock = threading.Lock()  # start/stop/add_device from different threads

    # --- addresses and accounts ---

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def config_path(self) -> Path:
        return self._workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients must trust, when the listener is TLS; else None."""
        if self._tls and self._ca_file is None:
            from simulators.tls import make_pki

            self._ca_file = make_pki(self._workdir / "tls").ca_file
        return self._ca_file

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the broker's log, for a failing test's message."""
        return _log_tail(self._log_path, lines)

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # --- lifecycle ---

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start Mosquitto and return once it logs "running" and its port accepts connections.

        Raises SimulatorError, with the tail of the broker's log, if it exits or is not up in
        `timeout` seconds.
        """
        with self._lock:
            if self.is_running:
                raise SimulatorError(f"mosquitto on port {self._port} is already running")
            if self._executable is None:
                raise SimulatorError("mosquitto is not installed (see start_broker for a fallback)")
            self._workdir.mkdir(parents=True, exist_ok=True)
            _ = self.ca_file  # makes the certificates on the first TLS start
            self._write_acl()
            self._write_passwords()
            for attempt in range(_PORT_RETRIES + 1):
                try:
                    self._spawn_and_wait(timeout)
                    break
                except _PortTaken:
                    # A free port picked at construction was taken before Mosquitto bound it.
                    # Pick another, but only before the first start: restart() keeps its port.
                    if not self._auto_port or self._ever_started or attempt == _PORT_RETRIES:
                        raise SimulatorError(
                            f"port {self._port} is in use\n{self.log_tail()}"
                        ) from None
                    self._port = free_port()
            self._ever_started = True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Mosquitto saves its persistence file), then SIGKILL after `timeout`."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "mosquitto pid %d ignored SIGTERM for %.1f s; killing", proc.pid, timeout
                )
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing is saved since the last autosave; clients see resets."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """stop() then start() on the same port, so clients reconnect to the address they know."""
        self.stop()
        self.start(timeout)

    def add_device(self, name: str, password: str, timeout: float = START_TIMEOUT_S) -> None:
        """Give a new device an account; a running broker takes it up before this returns.

        The password file is rewritten and Mosquitto reloads it on SIGHUP; we then probe with
        the new credentials until they are accepted (safe: the device has no session yet).
        Changing an existing device's password is refused (ValueError).
        """
        _check_account(name, password)
        if name == self._depot[0]:
            raise ValueError(f"device {name!r} would share the depot's account")
        with self._lock:
            if name in self._accounts:
                if self._accounts[name] != password:
                    raise ValueError(f"device {name!r} already has a different password")
                return
            self._accounts[name] = password
            if self._proc is None or self._proc.poll() is not None:
                return  # written on the next start
            self._write_passwords()
            self._proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    code = _probe_connack(HOST, self._port, name, password, ca_file=self.ca_file)
                    if code == CONNACK_ACCEPTED:
                        return
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SimulatorError(
                        f"mosquitto did not accept the new account {name!r} in {timeout} s\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(_START_WAIT_STEP_S)  # the reload is asynchronous; nothing to wait on

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.is_running and self._proc else "stopped"
        return f"<Broker mosquitto {HOST}:{self._port} {state}>"

    # --- files and process ---

    def _config_text(self) -> str:
        lines = [
            "# Written by simulators.broker; regenerated on every start.",
            "per_listener_settings false",
            f"listener {self._port} {HOST}",
            "allow_anonymous false",
            # Relative paths: Mosquitto runs in the workdir, and its config parser splits a path
            # with a space in it.
            "password_file passwd",
            "acl_file acl",
            # The session is named by the account, not by what the client claims.
            "use_username_as_clientid true",
            *(
                [
                    "cafile tls/ca.crt",
                    "certfile tls/server.crt",
                    "keyfile tls/server.key",
                    "tls_version tlsv1.2",
                ]
                if self._tls
                else []
            ),
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "max_queued_bytes 0",
            f"persistence {'true' if self._persistence else 'false'}",
            "persistence_location ./",
            "persistence_file mosquitto.db",
            # Small messages, loopback: don't let Nagle add 40 ms to every round trip of a test.
            "set_tcp_nodelay true",
            *MOSQUITTO_LOGGING,
        ]
        if hasattr(os, "geteuid"):
            # Started as root, Mosquitto 2 would switch to the "mosquitto" user, which cannot
            # read a private workdir. Stay whoever started us.
            import pwd

            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    def _write_acl(self) -> None:
        (self._workdir / "acl").write_text(mosquitto_acl_text([self._depot[0], *self._workers]))

    def _write_passwords(self) -> None:
        """Hash all accounts with `mosquitto_passwd -U` into a temp file, then swap it in, so a
        reloading broker never sees a plaintext or half-written file."""
        assert self._executable is not None
        tool = _find_mosquitto_passwd(self._executable)
        if tool is None:
            raise SimulatorError("mosquitto_passwd is not installed next to mosquitto")
        staging = self._workdir / "passwd.new"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            every = {**self._accounts, self._depot[0]: self._depot[1], **self._workers}
            for name, password in every.items():
                f.write(f"{name}:{password}\n")
        done = subprocess.run(
            [str(tool), "-U", str(staging)], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            staging.unlink(missing_ok=True)
            raise SimulatorError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout}")
        os.replace(staging, self._workdir / "passwd")

    def _spawn_and_wait(self, timeout: float) -> None:
        assert self._executable is not None
        self.config_path.write_text(self._config_text())
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log_file:
            log_start = log_file.tell()
            proc = subprocess.Popen(
                [str(self._executable), "-c", str(self.config_path)],
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        deadline = time.monotonic() + timeout
        while True:
            returncode = proc.poll()
            if returncode is not None:
                self._proc = None
                new_log = self._log_since(log_start)
                if _ADDRESS_IN_USE in new_log:
                    raise _PortTaken
                raise SimulatorError(
                    f"mosquitto exited with status {returncode} at start\n{self.log_tail()}"
                )
            if _MOSQUITTO_RUNNING.search(self._log_since(log_start)) and _port_accepts(
                HOST, self._port
            ):
                return
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                self._proc = None
                raise SimulatorError(
                    f"mosquitto was not accepting connections on port {self._port} after "
                    f"{timeout} s\n{self.log_tail()}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_START_WAIT_STEP_S)  # returns early if the child exits

    def _log_since(self, offset: int) -> bytes:
        try:
            with self._log_path.open("rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""


class _PortTaken(Exception):
    """Mosquitto could not bind its port."""


# --- the embedded fallback (amqtt) --------------------------------------------------------------


class _AccountBook:
    """Accounts and ACL for the embedded broker's plugins; read from the broker's thread."""

    def __init__(self, accounts: dict[str, str], depot: tuple[str, str]) -> None:
        self._lock = threading.Lock()
        self._passwords = {**accounts, depot[0]: depot[1]}
        self.depot_username = depot[0]

    def add(self, name: str, password: str) -> None:
        with self._lock:
            self._passwords[name] = password

    def password_ok(self, username: str | None, password: str | None) -> bool:
        if username is None or password is None:
            return False
        with self._lock:
            expected = self._passwords.get(username)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def allows(self, username: str | None, access: Literal["read", "write"], topic: str) -> bool:
        if username is None:
            return False
        return acl_allows(username, access, topic, depot_username=self.depot_username)


def _amqtt_plugin_paths() -> tuple[str, str]:
    """Define the embedded broker's amqtt plugins and return their dotted paths.

    amqtt loads plugins by dotted path and they must subclass its base classes, so the classes
    are built here, on first use, and published as module attributes: amqtt is imported only
    when an embedded broker starts.
    """
    if "_AmqttAccountAuth" not in globals():
        from amqtt.contexts import Action
        from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

        class _AmqttAccountAuth(BaseAuthPlugin):  # type: ignore[misc]
            """Username and password against the account book, nothing anonymous."""

            @dataclass
            class Config:
                book: Any = None

            async def authenticate(self, *, session: Any) -> bool:
                book: _AccountBook = self.config.book
                return book.password_ok(session.username, session.password)

        class _AmqttTopicAcl(BaseTopicPlugin):  # type: ignore[misc]
            """The v1 ACL: publish needs "write", subscribe and delivery need "read"."""

            @dataclass
            class Config:
                book: Any = None

            async def topic_filtering(
                self, *, session: Any = None, topic: str | None = None, action: Any = None
            ) -> bool:
                book: _AccountBook = self.config.book
                if session is None or topic is None:
                    return False
                access: Literal["read", "write"] = "write" if action == Action.PUBLISH else "read"
                return book.allows(session.username, access, topic)

        globals()["_AmqttAccountAuth"] = _AmqttAccountAuth
        globals()["_AmqttTopicAcl"] = _AmqttTopicAcl
    return f"{__name__}._AmqttAccountAuth", f"{__name__}._AmqttTopicAcl"


class EmbeddedBroker(_AccountsAndAddress):
    """amqtt in a background thread with its own asyncio loop: for demos where Mosquitto is absent.

    Enforces: passwords (no anonymous clients) and the same v1 topic ACL as Mosquitto — publish
    is checked against "write" rules, subscribe and every delivery against "read" rules.

    Does not:
    - speak MQTT v5: amqtt 0.12 is MQTT 3.1.1 only, and a v5 CONNECT gets no answer at all
      (amqtt misreads it and waits) — check `mqtt5` and connect with MQTTv311;
    - bind the client id to the username: a device may claim any client id, and a CONNECT
      with another's client id and a clean session makes amqtt drop that session (its
      subscriptions) *before* checking the password — the victim stays connected and silently
      stops receiving;
    - persist anything: sessions and retained messages are lost on stop (`persistence` is
      not accepted);
    - tell a publisher that its message was refused: 3.1.1 has no negative PUBACK, so a
      forbidden publish is acknowledged and dropped;
    - keep a log file of its own: amqtt logs to the "amqtt" logger; `log_to` adds a file
      handler for as long as the broker is open.
    Use it for a demo, never to test security or durability.
    """

    mqtt5: Final = False
    ca_file: Final = None  # no TLS listener: the embedded broker is for local demos only

    def __init__(
        self,
        workdir: Path,
        *,
        devices: Mapping[str, str],
        depot: tuple[str, str] | None = None,
        port: int | None = None,
        log_to: Path | None = None,
    ) -> None:
        self._accounts, self._depot = _accounts(devices, depot)
        self._book = _AccountBook(self._accounts, self._depot)
        self._workdir = Path(workdir)
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._log_to = log_to
        self._log_handler: logging.Handler | None = None
        self._thread: threading.Thread | None = None
        self._loop: Any = None  # asyncio.AbstractEventLoop of the broker thread
        self._stop_event: Any = None  # asyncio.Event in that loop
        self._startup_error: BaseException | None = None
        self._lock = threading.Lock()

    def add_device(self, name: str, password: str) -> None:
        """Takes effect at once for new connections."""
        _check_account(name, password)
        if name == self._depot[0]:
            raise ValueError(f"device {name!r} would share the depot's account")
        if self._accounts.get(name, password) != password:
            raise ValueError(f"device {name!r} already has a different password")
        self._accounts[name] = password
        self._book.add(name, password)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start amqtt in its own thread; return once it listens. SimulatorError on failure."""
        with self._lock:
            if self.is_running:
                raise SimulatorError(f"embedded broker on port {self._port} is already running")
            auth_path, acl_path = _amqtt_plugin_paths()
            if self._log_to is not None and self._log_handler is None:
                self._log_handler = logging.FileHandler(self._log_to)
                logging.getLogger("amqtt").addHandler(self._log_handler)
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self._port}"}},
                "plugins": {auth_path: {"book": self._book}, acl_path: {"book": self._book}},
            }
            ready = threading.Event()
            self._startup_error = None
            self._thread = threading.Thread(
                target=self._run, args=(config, ready), name=f"amqtt-{self._port}", daemon=True
            )
            self._thread.start()
            if not ready.wait(timeout):
                raise SimulatorError(f"embedded broker not up on port {self._port} in {timeout} s")
            if self._startup_error is not None:
                self._thread.join(timeout)
                self._thread = None
                raise SimulatorError(
                    f"embedded broker failed to start on port {self._port}: {self._startup_error}"
                ) from self._startup_error

    def _run(self, config: dict[str, Any], ready: threading.Event) -> None:
        import asyncio

        from amqtt.broker import Broker as AmqttBroker
        from amqtt.contexts import Action

        class AclCheckedBroker(AmqttBroker):  # type: ignore[misc]
            """amqtt 0.12 sends retained messages without asking the topic plugins: on SUBSCRIBE,
            and on every CONNECT for *every client's* filters (so a van would get the acks the
            depot subscribed to). Only let them through for filters this client may read."""

            async def _publish_retained_messages_for_subscription(
                self, subscription: tuple[str, int], session: Any
            ) -> None:
                if await self._topic_filtering(session, subscription[0], Action.SUBSCRIBE):
                    await super()._publish_retained_messages_for_subscription(subscription, session)

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            try:
                broker = AclCheckedBroker(config)
                await broker.start()
            except Exception as exc:
                self._startup_error = exc
                ready.set()
                return
            ready.set()
            try:
                await self._stop_event.wait()
            finally:
                await broker.shutdown()

        asyncio.run(serve())

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut amqtt down (clients are disconnected) and join its thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            if thread.is_alive() and self._loop is not None and self._stop_event is not None:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            thread.join(timeout)
            if thread.is_alive():
                raise SimulatorError(
                    f"embedded broker on port {self._port} did not stop in {timeout} s"
                )
            self._loop = self._stop_event = None
            if self._log_handler is not None:
                logging.getLogger("amqtt").removeHandler(self._log_handler)
                self._log_handler.close()
                self._log_handler = None

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """stop() then start() on the same port; amqtt keeps nothing across it."""
        self.stop()
        self.start(timeout)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EmbeddedBroker amqtt {HOST}:{self._port} {state}>"


def start_broker(
    workdir: Path,
    devices: Mapping[str, str],
    *,
    depot: tuple[str, str] | None = None,
    persistence: bool = False,
    port: int | None = None,
    log_to: Path | None = None,
    kind: Literal["auto", "mosquitto", "embedded"] | None = None,
    timeout: float = START_TIMEOUT_S,
    tls: bool = False,
    depot_workers: int = 1,
) -> BrokerLike:
    """Start a broker and return it running (stop it, or use it as a context manager).

    `kind` (default: the LASTMILE_BROKER environment variable, else "auto") picks Mosquitto or
    the embedded amqtt broker; "auto" takes Mosquitto when it is installed and says so in the
    log when it falls back. The embedded broker is MQTT 3.1.1 only and ignores `persistence`.
    """
    chosen = kind or os.environ.get(BROKER_ENV, "auto")
    if chosen not in ("auto", "mosquitto", "embedded"):
        raise ValueError(f"{BROKER_ENV}={chosen!r}: expected auto, mosquitto or embedded")
    broker: Broker | EmbeddedBroker
    if chosen == "mosquitto" or (chosen == "auto" and find_mosquitto() is not None):
        broker = Broker(
            workdir,
            devices=devices,
            depot=depot,
            persistence=persistence,
            port=port,
            log_to=log_to,
            tls=tls,
            depot_workers=depot_workers,
        )
    elif depot_workers > 1:
        raise SimulatorError(
            "several depot workers need MQTT v5 shared subscriptions: install mosquitto "
            "(the embedded amqtt broker speaks MQTT 3.1.1)"
        )
    else:
        if chosen == "auto":
            log.warning(
                "mosquitto not found: starting the embedded amqtt broker (MQTT 3.1.1, demo only)"
            )
        if persistence:
            log.warning("the embedded broker does not persist sessions; persistence ignored")
        broker = EmbeddedBroker(workdir, devices=devices, depot=depot, port=port, log_to=log_to)
    broker.start(timeout)
    return broker
