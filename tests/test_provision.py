"""`lastmile depot provision`: a real Mosquitto runs from exactly the files it writes.

The broker is started with `mosquitto -c DIR/mosquitto/mosquitto.conf` and nothing else; a van
and a locker (the real device software, configured from the fragments written for them) and
the depot's ingest (configured from its fragment) sync through it over TLS with client
certificates. Then the refusals: no certificate, a certificate from another fleet's CA, and a
device showing another device's certificate or password. "Not delivered" is proved without
sleeping: a forbidden message is followed by an allowed one on the same connection, and MQTT
keeps a client's messages in order, so once the allowed one arrives the other never will.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from depot.config import load_depot_config
from depot.ingest import Depot, DepotStore, IngestResult
from edge.locker_config import load_locker_config
from edge.locker_device import LockerDevice
from edge.van import Van, load_config
from lastmile.cli import main
from simulators.broker import find_mosquitto, free_port
from simulators.lockboard import SimulatedLockBoards
from simulators.scanner import SimulatedScanner
from sync.wire import Event, command_topic, events_topic

WAIT_S = 15.0  # the most any one step may take; steps normally take milliseconds
NOT_AUTHORIZED = 0x87  # MQTT v5 reason code 0x87, "Not authorized"
HOST = "localhost"  # the server certificate's name; the test connects by it

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def _run_as() -> str:
    """Mosquitto started as root drops to the "mosquitto" user, who cannot read tmp_path."""
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def write_fleet(path: Path, port: int, *, workers: int = 2) -> Path:
    path.write_text(
        f'[broker]\nhost = "{HOST}"\nport = {port}\nuser = "{_run_as()}"\n'
        f"[depot]\nworkers = {workers}\n"
        '[[van]]\nid = "van-1"\n[[van]]\nid = "van-2"\n[[locker]]\nid = "locker-1"\n'
    )
    return path


def provision(tmp_path: Path, name: str = "fleet", port: int | None = None) -> tuple[Path, int]:
    port = port or free_port()
    devices = write_fleet(tmp_path / f"{name}.toml", port)
    assert main(["depot", "provision", str(devices), "--out", str(tmp_path / name)]) == 0
    return tmp_path / name, port


class Mosquitto:
    """`mosquitto -c CONF`, up once it logs "running"; its log is kept for failure messages."""

    def __init__(self, conf: Path) -> None:
        binary = find_mosquitto()
        assert binary is not None
        self.lines: list[str] = []
        self.running = threading.Event()
        self.changed = threading.Condition()  # notified on every line of the log
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.running.wait(WAIT_S):
            self.stop()
            raise AssertionError("mosquitto did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
            if " running" in line:
                self.running.set()
        self.running.set()  # exited: the caller sees the log

    @property
    def log(self) -> str:
        return "".join(self.lines[-40:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, int, Mosquitto]]:
    out, port = provision(tmp_path)
    broker = Mosquitto(out / "mosquitto" / "mosquitto.conf")
    assert broker.proc.poll() is None, broker.log
    yield out, port, broker
    broker.stop()


# --- a plain MQTT client with given files -------------------------------------------------------


class Peer:
    """A paho MQTT v5 client over TLS whose calls block on the broker's answer."""

    def __init__(
        self, port: int, ca: Path, cert: Path | None, key: Path | None, user: str, password: str
    ) -> None:
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.closed = False
        self.acks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.port = port
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=user,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        c.username_pw_set(user, password)
        c.tls_set(
            ca_certs=str(ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = lambda _c, _u, mid, rc, _p: self._note(mid, rc)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self._note(mid, rcs)
        c.on_message = self._on_message
        self.client = c

    def _note(self, mid: int, answer: Any) -> None:
        with self._cond:
            self.acks[mid] = answer
            self._cond.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, *_: Any) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT_S), f"timed out waiting for {what}"

    def connect(self) -> bool:
        """True once the broker accepted us; False if it closed the connection instead."""
        try:
            self.client.connect(HOST, self.port)
        except OSError:  # the TLS handshake was refused outright
            return False
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.closed, "CONNACK or close")
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes) -> int:
        mid = self.client.publish(topic, payload, qos=1).mid
        self._wait(lambda: mid in self.acks, f"PUBACK for {topic}")
        rc: ReasonCode = self.acks[mid]
        return int(rc.value)

    def subscribe(self, topic_filter: str) -> None:
        mid = self.client.subscribe(topic_filter, qos=1)[1]
        self._wait(lambda: mid in self.acks, f"SUBACK for {topic_filter}")

    def expect(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        self._wait(lambda: (topic, payload) in self.messages, f"{payload!r} on {topic}")
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(*args: Any) -> Peer:
        made.append(Peer(*args))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def device_peer(
    peers: Callable[..., Peer], out: Path, port: int, cert_of: str, user: str, password: str = ""
) -> Peer:
    """A client showing `cert_of`'s certificate while it claims to be `user`."""
    home = out / "devices" / cert_of
    return peers(port, home / "ca.crt", home / "client.crt", home / "client.key", user, password)


def depot_peer(peers: Callable[..., Peer], out: Path, port: int, account: str) -> Peer:
    home = out / "depot"
    return peers(
        port, home / "ca.crt", home / f"{account}.crt", home / f"{account}.key", account, ""
    )


# --- what is written ----------------------------------------------------------------------------


def test_private_keys_are_for_their_owner_alone_and_fragments_load(tmp_path: Path) -> None:
    out, port = provision(tmp_path)
    keys = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.key"))
    assert keys == [
        "ca/ca.key",
        "depot/depot-1.key",
        "depot/depot-2.key",
        "devices/locker-1/client.key",
        "devices/van-1/client.key",
        "devices/van-2/client.key",
        "mosquitto/server.key",
    ]
    for key in keys:
        assert (out / key).stat().st_mode & 0o777 == 0o600, key
    assert (out / "ca").stat().st_mode & 0o777 == 0o700
    assert "ca.key" not in {p.name for p in (out / "mosquitto").iterdir()}
    assert not any(out.rglob("passwd*"))  # the broker checks certificates, not passwords

    # A van's configuration with its fragment pasted in is what the van's loader accepts.
    van_home = tmp_path / "van-host"
    shutil.copytree(out / "devices" / "van-1", van_home)
    van_toml = van_home / "van.toml"
    van_toml.write_text(
        'device_id = "van-1"\n[scanner]\nport = "/dev/null"\n'
        + (van_home / "broker.toml").read_text()
    )
    address = load_config(van_toml).broker
    assert (address.host, address.port, address.username) == (HOST, port, "van-1")
    assert address.tls_cert == str(van_home / "client.crt")
    assert address.tls_key == str(van_home / "client.key")
    assert address.tls_ca == str(van_home / "ca.crt")

    # The depot's, with two workers: each its own account and certificate.
    depot_toml = write_depot_config(out, tmp_path / "depot-host")
    config = load_depot_config(depot_toml)
    for worker in (1, 2):
        worker_address = config.broker_for(worker)
        assert worker_address is not None
        assert worker_address.username == f"depot-{worker}"
        assert worker_address.tls_cert == str(tmp_path / "depot-host" / f"depot-{worker}.crt")


def test_a_missing_certificate_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    out, _port = provision(tmp_path)
    home = tmp_path / "van-host"
    shutil.copytree(out / "devices" / "van-1", home)
    (home / "client.key").unlink()
    (home / "van.toml").write_text(
        'device_id = "van-1"\n[scanner]\nport = "/dev/null"\n' + (home / "broker.toml").read_text()
    )
    from edge.van import ConfigError

    with pytest.raises(ConfigError, match=r"broker\.tls_key: no file"):
        load_config(home / "van.toml")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fleet_toml", "said"),
    [
        ('[broker]\nhost = "b.example"\n[[van]]\nid = "van 1"\n', "van[0].id = 'van 1'"),
        ('[broker]\nhost = "b.example"\n[[van]]\nid = "van/+"\n', "van[0].id = 'van/+'"),
        (
            '[broker]\nhost = "b.example"\n[[van]]\nid = "x-1"\n[[locker]]\nid = "x-1"\n',
            "'x-1' is named twice",
        ),
        (
            '[broker]\nhost = "b.example"\n[depot]\nworkers = 2\n[[van]]\nid = "depot-2"\n',
            "'depot-2' is named twice",
        ),
        ('[broker]\nhost = "b.example"\n', "names no devices"),
        ('[[van]]\nid = "van-1"\n', "broker.host is missing"),
        ('[broker]\nhost = "b.example"\nprot = 1\n[[van]]\nid = "v"\n', "unknown keys ['prot']"),
        ('[broker]\nhost = "b.example"\nport = 0\n[[van]]\nid = "v"\n', "broker.port = 0"),
        ('[broker]\nhost = "b.example"\n[[van]]\nid = "v"\n[depot]\nworkers = 0\n', "workers"),
        ("[broker\n", "cannot read"),
    ],
)
def test_a_bad_fleet_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_toml: str, said: str
) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(fleet_toml)
    with pytest.raises(SystemExit) as stopped:
        main(["depot", "provision", str(devices), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lastmile depot provision: ") and said in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["devices.toml"]  # no staging left behind


def test_an_existing_provisioning_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _port = provision(tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as stopped:
        main(["depot", "provision", str(tmp_path / "fleet.toml"), "--out", str(out)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # An empty directory is fine (made by hand beforehand, say).
    (tmp_path / "empty").mkdir()
    assert (
        main(["depot", "provision", str(tmp_path / "fleet.toml"), "--out", str(tmp_path / "empty")])
        == 0
    )
    assert (tmp_path / "empty" / "mosquitto" / "mosquitto.conf").is_file()


# --- the broker, running from exactly these files ------------------------------------------------


def write_depot_config(out: Path, home: Path) -> Path:
    shutil.copytree(out / "depot", home)
    config = home / "depot.toml"
    config.write_text(
        '[depot]\ndatabase = "depot.db"\nlat = 52.37\nlon = 4.90\nvans = ["van-1"]\nworkers = 2\n'
        + (home / "broker.toml").read_text()
    )
    return config


class DepotWatch:
    """Wakes the test when the depot has stored a device's events (no polling)."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.cond = threading.Condition()

    def __call__(self, device: str, result: IngestResult) -> None:
        with self.cond:
            self.heads[device] = max(self.heads.get(device, 0), result.ack.seq)
            self.cond.notify_all()

    def wait_head(self, device: str, seq: int) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.heads.get(device, 0) >= seq, WAIT_S)
        assert ok, f"depot head of {device} is {self.heads.get(device, 0)}, wanted {seq}"


class Beeper:
    def __init__(self) -> None:
        self.confirmed_scans: list[Event] = []
        self.refusals: list[str] = []

    def confirmed(self, event: Event) -> None:
        self.confirmed_scans.append(event)

    def refused(self, reason: str, raw: str) -> None:
        self.refusals.append(reason)


class Screen:
    def show(self, message: str, **facts: object) -> None:
        pass


@needs_mosquitto
def test_a_van_and_a_locker_sync_through_the_provisioned_broker(
    fleet: tuple[Path, int, Mosquitto], tmp_path: Path
) -> None:
    out, _port, broker = fleet
    config = load_depot_config(write_depot_config(out, tmp_path / "depot-host"))
    address = config.broker_for(1)
    assert address is not None
    watch = DepotWatch()
    store = DepotStore(tmp_path / "depot-host" / "depot.db")
    depot = Depot(store, address, client_id="depot-1", on_stored=watch)
    depot.start()

    van_home = tmp_path / "van-host"
    shutil.copytree(out / "devices" / "van-1", van_home)
    locker_home = tmp_path / "locker-host"
    shutil.copytree(out / "devices" / "locker-1", locker_home)
    fast = "[sync]\nack_timeout_s = 2.0\nbackoff_min_s = 0.1\nbackoff_max_s = 1.0\n"
    with (
        SimulatedScanner(tmp_path / "scanner.tty") as scanner,
        SimulatedLockBoards(1, link=tmp_path / "bus.tty") as boards,
    ):
        (van_home / "van.toml").write_text(
            f'device_id = "van-1"\njournal = "van-1.db"\n[scanner]\nport = "{scanner.path}"\n'
            + fast
            + (van_home / "broker.toml").read_text()
        )
        (locker_home / "locker.toml").write_text(
            f'device_id = "locker-1"\njournal = "locker-1.db"\n[lockboard]\n'
            f'port = "{boards.path}"\nboards = [{{ board = 0 }}]\n'
            '[[compartments]]\nid = "A1"\nboard = 0\nlock = 0\nsize = "S"\n'
            '[couriers]\nbadges = ["C42"]\n' + fast + (locker_home / "broker.toml").read_text()
        )
        beeper = Beeper()
        van = Van(load_config(van_home / "van.toml"), beeper)
        locker = LockerDevice(load_locker_config(locker_home / "locker.toml"), Screen())
        van.start()
        locker.start()
        try:
            assert depot.session.wait_connected(WAIT_S), broker.log
            assert van.uplink.session.wait_connected(WAIT_S), broker.log
            assert locker.uplink is not None
            assert locker.uplink.session.wait_connected(WAIT_S), broker.log
            assert van.scanner_ready.wait(WAIT_S)
            scanner.scan("RB123456785GB")
            locker.locker.key("*C42")  # a courier identifies at the locker's keypad
            watch.wait_head("van-1", 1)
            watch.wait_head("locker-1", 1)
            assert van.uplink.wait_acked(1, WAIT_S)
        finally:
            locker.stop()
            van.stop()
            depot.stop()
    assert beeper.refusals == [] and len(beeper.confirmed_scans) == 1
    rows = store.query("SELECT device, kind FROM events ORDER BY device, seq")
    store.close()
    assert ("van-1", "parcel_scanned") in rows
    assert ("locker-1", "courier_identified") in rows
    # The broker knew each client by its certificate: van-1, locker-1, depot-1.
    for who in ("van-1", "locker-1", "depot-1"):
        assert f"u'{who}'" in "".join(broker.lines), broker.log


@needs_mosquitto
def test_another_devices_certificate_or_password_gets_none_of_its_rights(
    fleet: tuple[Path, int, Mosquitto], peers: Callable[..., Peer]
) -> None:
    out, port, broker = fleet
    depot = depot_peer(peers, out, port, "depot-2")
    assert depot.connect(), broker.log
    depot.subscribe("lastmile/v1/#")

    # van-2's certificate, with van-1's name (and whatever password): the broker knows it as
    # van-2. van-1's events are refused, van-2's own go through, and nothing else arrives.
    forger = device_peer(peers, out, port, "van-2", "van-1", "van-1's password")
    assert forger.connect(), broker.log
    forger.subscribe(command_topic("van-1"))  # granted by Mosquitto 2.0, then checked per message
    forger.subscribe(command_topic("van-2"))
    assert forger.publish(events_topic("van-1"), b"forged") == NOT_AUTHORIZED
    assert forger.publish(events_topic("van-2"), b"sentinel") != NOT_AUTHORIZED
    sentinel = (events_topic("van-2"), b"sentinel")
    assert depot.expect(*sentinel) == [sentinel]

    # van-1's certificate with locker-1's name and password: it is van-1, not locker-1.
    borrower = device_peer(peers, out, port, "van-1", "locker-1", "locker-1's password")
    assert borrower.connect(), broker.log
    assert borrower.publish(events_topic("locker-1"), b"borrowed") == NOT_AUTHORIZED
    assert borrower.publish(events_topic("van-1"), b"own") != NOT_AUTHORIZED
    depot.expect(events_topic("van-1"), b"own")
    assert (events_topic("locker-1"), b"borrowed") not in depot.messages

    # A command for van-1 reaches van-1's certificate, not the forger who claimed the name.
    assert depot.publish(command_topic("van-1", "ping"), b"for van-1") != NOT_AUTHORIZED
    assert depot.publish(command_topic("van-2", "ping"), b"for van-2") != NOT_AUTHORIZED
    received = forger.expect(command_topic("van-2", "ping"), b"for van-2")
    assert (command_topic("van-1", "ping"), b"for van-1") not in received


@needs_mosquitto
def test_no_certificate_or_another_fleets_certificate_is_refused(
    fleet: tuple[Path, int, Mosquitto], peers: Callable[..., Peer], tmp_path: Path
) -> None:
    out, port, broker = fleet
    home = out / "devices" / "van-1"
    bare = peers(port, home / "ca.crt", None, None, "van-1", "a password alone")
    assert not bare.connect()

    # A second provisioning, of the same names, makes a CA of its own: its certificates are
    # worth nothing at the first fleet's broker.
    other, _ = provision(tmp_path, "other-fleet", port)
    stranger = peers(
        port,
        home / "ca.crt",
        other / "devices" / "van-1" / "client.crt",
        other / "devices" / "van-1" / "client.key",
        "van-1",
        "",
    )
    assert not stranger.connect()
    assert "certificate" in broker.log  # refused in the TLS handshake, before any MQTT
    # And the real van-1 still gets in.
    assert device_peer(peers, out, port, "van-1", "van-1").connect(), broker.log


@needs_mosquitto
def test_a_device_taken_out_of_the_acl_gets_no_topic_after_a_reload(
    fleet: tuple[Path, int, Mosquitto], peers: Callable[..., Peer]
) -> None:
    """The README's answer to a stolen van: its certificate stays valid, but grants nothing."""
    out, port, broker = fleet
    acl = out / "mosquitto" / "acl"
    blocks = acl.read_text().split("\n\n")
    kept = [b for b in blocks if not b.startswith("user van-1\n")]
    assert len(kept) == len(blocks) - 1
    acl.write_text("\n\n".join(kept))
    reloads = sum("Reloading config" in line for line in broker.lines)
    broker.proc.send_signal(signal.SIGHUP)
    # Mosquitto logs the reload and does it in the same pass of its (single) event loop, so a
    # connection opened after the line is served under the new ACL.
    with broker.changed:
        assert broker.changed.wait_for(
            lambda: sum("Reloading config" in line for line in broker.lines) > reloads, WAIT_S
        ), broker.log
    depot = depot_peer(peers, out, port, "depot-1")
    assert depot.connect(), broker.log
    depot.subscribe("lastmile/v1/#")
    stolen = device_peer(peers, out, port, "van-1", "van-1")
    assert stolen.connect(), broker.log  # the certificate is still the fleet's...
    assert stolen.publish(events_topic("van-1"), b"from the thief") == NOT_AUTHORIZED  # ...but
    van2 = device_peer(peers, out, port, "van-2", "van-2")
    assert van2.connect(), broker.log
    assert van2.publish(events_topic("van-2"), b"sentinel") != NOT_AUTHORIZED
    assert depot.expect(events_topic("van-2"), b"sentinel") == [
        (events_topic("van-2"), b"sentinel")
    ]


def test_the_readme_documents_the_command_and_the_fleet_file() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Production set-up" in readme
    assert "lastmile depot provision DEVICES.toml --out DIR" in readme
    for key in (
        "host =",
        "port =",
        "names =",
        "dir =",
        "user =",
        "workers =",
        "[[van]]",
        "[[locker]]",
    ):
        assert key in readme.split("## Production set-up")[1].split("\n## ")[0], key
