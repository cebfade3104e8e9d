"""Broker provisioning for a fleet: the files a production Mosquitto and every device need.

`lastmile depot provision DEVICES.toml --out DIR` reads the fleet (below) and writes, once, a
certificate authority of the fleet's own, the broker's TLS-only configuration and topic ACL,
and for each device and each depot worker a client certificate and the `[broker]` section of
its configuration. Owns the fleet file's shape and checks, the certificates' contents, and the
broker's configuration for production (`simulators/broker.py` keeps its own for tests).

Who is who: the broker requires a client certificate signed by the fleet CA
(`require_certificate true`) and takes the certificate's common name as the MQTT username
(`use_identity_as_username true`); the ACL binds each username to its own topic subtree. A
device therefore cannot claim to be another one: whatever username and password it sends, it
is the device its certificate names. Mosquitto cannot also check a password *bound to* that
certificate (with certificate identity it ignores the password; with passwords the certificate
only proves "one of the fleet"), so no broker passwords are made: a secret the broker never
checks would only suggest a protection that is not there. A device's key never leaves it.

DEVICES.toml::

    [broker]
    host = "broker.depot.example"   # the name devices connect to; in the server certificate
    port = 8883                     # the TLS listener (default 8883)
    names = ["10.20.0.5"]           # more names or addresses for the server certificate
    dir = "/etc/mosquitto/lastmile" # where mosquitto/ will live on the broker host
                                    # (default: DIR/mosquitto, as written)
    user = "mosquitto"              # the account Mosquitto runs as (default: its own default)

    [depot]
    username = "depot"              # the depot's account; with workers, depot-1..N
    workers = 2

    [[van]]
    id = "van-1"

    [[locker]]
    id = "locker-1"

DIR afterwards (private keys 0600, in directories only their owner may enter)::

    ca/ca.crt, ca/ca.key                   the fleet CA: keep ca.key offline, it mints devices
    mosquitto/mosquitto.conf, acl, ca.crt, server.crt, server.key
    devices/<id>/broker.toml, ca.crt, client.crt, client.key
    depot/broker.toml, ca.crt, <account>.crt, <account>.key   (one pair per worker)

Must never: overwrite anything (a new CA would lock every device in the field out, so an
existing non-empty DIR is refused), leave a private key readable by others even for a moment,
or write a half-provisioned DIR (all is written beside it, then moved into place at once).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from depot.errors import DepotError
from sync.wire import (
    TOPIC_ROOT,
    ack_topic,
    command_topic,
    events_topic,
    photo_ack_topic,
    status_topic,
)

__all__ = [
    "MAX_QUEUED_MESSAGES",
    "MOSQUITTO_LOGGING",
    "Fleet",
    "Issued",
    "ProvisionError",
    "Provisioned",
    "cert_pem",
    "issue",
    "load_fleet",
    "make_ca",
    "provision",
    "write_pair",
]

DEFAULT_PORT: Final = 8883
CA_DAYS: Final = 3650  # the CA outlives several generations of device certificates
CERT_DAYS: Final = 825  # devices and the broker: renewed within a little over two years
# Mosquitto's default of 1000 queued messages per offline persistent session is a few minutes
# of a busy van; a day in a dead zone needs far more.
MAX_QUEUED_MESSAGES: Final = 100_000
# Mosquitto's log: every connection and refusal, timestamped, on stderr (journald's, under
# systemd); the simulated day's broker logs the same way.
MOSQUITTO_LOGGING: Final = (
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "log_type information",
    "connection_messages true",
    "log_timestamp true",
    "log_timestamp_format %Y-%m-%dT%H:%M:%S",
)

# Account names become certificate common names, MQTT usernames, ACL lines and topic levels: no
# wildcards, no separators, nothing a shell, a config parser or a log would mangle.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_SECTIONS: Final = {"broker", "depot", "van", "locker"}
_BROKER_KEYS: Final = {"host", "port", "names", "dir", "user"}
_DEPOT_KEYS: Final = {"username", "workers"}
_DEVICE_KEYS: Final = {"id"}


class ProvisionError(DepotError):
    """The fleet file or the output directory cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Fleet:
    """What DEVICES.toml says: the broker's address, the depot's accounts, the devices."""

    host: str
    port: int = DEFAULT_PORT
    names: tuple[str, ...] = ()
    broker_dir: Path | None = None  # where mosquitto/ lives on the broker host; None: DIR/mosquitto
    run_as: str | None = None
    depot_username: str = "depot"
    workers: int = 1
    vans: tuple[str, ...] = ()
    lockers: tuple[str, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        return self.vans + self.lockers

    @property
    def depot_accounts(self) -> tuple[str, ...]:
        """The depot's broker accounts, as `depot.config.DepotConfig.broker_for` names them."""
        if self.workers == 1:
            return (self.depot_username,)
        return tuple(f"{self.depot_username}-{k}" for k in range(1, self.workers + 1))


@dataclass(frozen=True)
class Provisioned:
    """Where the written files are (all under `out`)."""

    out: Path
    mosquitto_conf: Path
    ca_key: Path
    devices: Mapping[str, Path]  # device id -> its directory
    depot: Path


# --- the fleet file -----------------------------------------------------------------------------


def _table(doc: Mapping[str, Any], key: str, known: set[str]) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ProvisionError(f"[{key}] must be a table")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ProvisionError(f"[{key}] has unknown keys {unknown}; known: {sorted(known)}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProvisionError(
            f"{where} = {value!r}: 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


def _server_name(value: Any, where: str) -> str:
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            if _HOST.fullmatch(value) and ".." not in value:
                return value
    raise ProvisionError(f"{where} = {value!r} is not a host name or an IP address")


def _path_text(value: Any, where: str) -> Path:
    # Mosquitto's configuration parser ends a path at the first space.
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"\s", value):
        raise ProvisionError(f"{where} = {value!r} must be an absolute path without spaces")
    return Path(value)


def _devices(doc: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    items = doc.get(kind, [])
    if not isinstance(items, list):
        raise ProvisionError(f"[[{kind}]] must be an array of tables")
    ids = []
    for i, item in enumerate(items):
        where = f"{kind}[{i}]"
        if not isinstance(item, dict):
            raise ProvisionError(f"{where} must be a table")
        unknown = sorted(set(item) - _DEVICE_KEYS)
        if unknown:
            raise ProvisionError(f"{where} has unknown keys {unknown}; known: ['id']")
        if "id" not in item:
            raise ProvisionError(f"{where}.id is missing")
        ids.append(_name(item["id"], f"{where}.id"))
    return tuple(ids)


def load_fleet(path: str | os.PathLike[str]) -> Fleet:
    """Read and check DEVICES.toml; raises ProvisionError naming the first bad key."""
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"cannot read {file}: {exc}") from None
    unknown = sorted(set(doc) - _SECTIONS)
    if unknown:
        raise ProvisionError(f"{file}: unknown sections {unknown}; known: {sorted(_SECTIONS)}")
    broker = _table(doc, "broker", _BROKER_KEYS)
    if "host" not in broker:
        raise ProvisionError("broker.host is missing: the name devices connect to")
    port = broker.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ProvisionError(f"broker.port = {port!r} is not a TCP port")
    names = broker.get("names", [])
    if not isinstance(names, list):
        raise ProvisionError("broker.names must be a list of host names or addresses")
    run_as = broker.get("user")
    if run_as is not None:
        run_as = _name(run_as, "broker.user")
    depot = _table(doc, "depot", _DEPOT_KEYS)
    workers = depot.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ProvisionError(f"depot.workers = {workers!r} must be a positive integer")
    fleet = Fleet(
        host=_server_name(broker["host"], "broker.host"),
        port=port,
        names=tuple(_server_name(n, "broker.names") for n in names),
        broker_dir=_path_text(broker["dir"], "broker.dir") if "dir" in broker else None,
        run_as=run_as,
        depot_username=_name(depot.get("username", "depot"), "depot.username"),
        workers=workers,
        vans=_devices(doc, "van"),
        lockers=_devices(doc, "locker"),
    )
    if not fleet.devices:
        raise ProvisionError(f"{file} names no devices: add [[van]] or [[locker]] tables")
    seen: set[str] = set()
    for account in (*fleet.devices, *fleet.depot_accounts):
        if account in seen:
            raise ProvisionError(f"{account!r} is named twice (every account needs its own name)")
        seen.add(account)
    return fleet


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key (a CA's, the broker's, or one account's)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lastmile fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(host: str, now: datetime.datetime) -> Issued:
    """A fleet's certificate authority (P-256, CA_DAYS), named after the broker it serves."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _subject(f"lastmile fleet CA for {host}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    common_name: str,
    now: datetime.datetime,
    *,
    server_names: Sequence[str] = (),
) -> Issued:
    """A leaf certificate: for the broker (`server_names` given) or for one client account."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in dict.fromkeys(server_names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


# --- files --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, *, private: bool = False) -> None:
    """Create `path`; a private file is 0600 from the moment it exists, not after a chmod."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM text (what ca.crt files hold)."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(directory: Path, stem: str, issued: Issued) -> None:
    """`stem`.crt and `stem`.key (0600) in `directory`; neither may exist yet."""
    _write(directory / f"{stem}.crt", cert_pem(issued.cert))
    _write(directory / f"{stem}.key", _key_pem(issued.key), private=True)


def acl_text(fleet: Fleet) -> str:
    """The broker's `acl_file`: each account its own block, so a certificate whose name has no
    block (a retired device's, say) gets no topic at all. Topics as docs/WIRE.md lists them."""
    lines = [
        "# Written by `lastmile depot provision`. The username is the client certificate's",
        "# common name. A device reads and writes only its own subtree; the depot all of v1.",
    ]
    for device in fleet.devices:
        lines += [
            "",
            f"user {device}",
            f"topic write {events_topic(device)}",
            f"topic write {status_topic(device)}",
            f"topic write {TOPIC_ROOT}/{device}/up/#",
            f"topic read {ack_topic(device)}",
            f"topic read {photo_ack_topic(device)}",
            f"topic read {command_topic(device)}",
        ]
    for account in fleet.depot_accounts:
        lines += ["", f"user {account}", f"topic readwrite {TOPIC_ROOT}/#"]
    return "\n".join([*lines, ""])


def mosquitto_conf_text(fleet: Fleet, broker_dir: Path) -> str:
    """Mosquitto 2.0: one TLS listener, certificate identity, the ACL, persistent sessions."""
    lines = [
        f"# Mosquitto 2.0 for the lastmile fleet at {fleet.host}; written by",
        "# `lastmile depot provision`. TLS only: every client shows a certificate from the fleet",
        "# CA, and its common name is its username (the password it sends is not used).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {broker_dir / 'acl'}",
        f"listener {fleet.port}",
        f"cafile {broker_dir / 'ca.crt'}",
        f"certfile {broker_dir / 'server.crt'}",
        f"keyfile {broker_dir / 'server.key'}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        # The session is named by the certificate, not by the client id a client claims, so no
        # device can take over another's session.
        "use_username_as_clientid true",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "max_queued_bytes 0",
        "persistence true",
        f"persistence_location {broker_dir}/",
        *MOSQUITTO_LOGGING,
    ]
    if fleet.run_as is not None:
        lines.append(f"user {fleet.run_as}")
    return "\n".join([*lines, ""])


def _broker_section(fleet: Fleet, username: str, cert: str, key: str, comment: str) -> str:
    return "\n".join(
        [
            comment,
            "[broker]",
            f'host = "{fleet.host}"',
            f"port = {fleet.port}",
            f'username = "{username}"',
            'ca_file = "ca.crt"',
            f'tls_cert = "{cert}"',
            f'tls_key = "{key}"',
            "",
        ]
    )


def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise ProvisionError(f"--out {out} exists and is not a directory")
        if any(out.iterdir()):
            raise ProvisionError(
                f"--out {out} is not empty; provisioning makes a new CA, which would lock out "
                "every device already given the old one: choose an empty directory"
            )
    if not out.parent.is_dir():
        raise ProvisionError(f"--out {out}: {out.parent} is not a directory")
    if re.search(r"\s", str(out)):
        raise ProvisionError(f"--out {out}: Mosquitto cannot read paths with spaces")


def provision(
    fleet: Fleet, out: str | os.PathLike[str], *, now: datetime.datetime | None = None
) -> Provisioned:
    """Write everything for `fleet` into `out` (absent or empty); see the module docstring."""
    final = Path(out).absolute()
    _check_out(final)
    now = now or datetime.datetime.now(datetime.UTC)
    broker_dir = fleet.broker_dir or final / "mosquitto"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))  # 0700
    try:
        ca = make_ca(fleet.host, now)
        ca_pem = cert_pem(ca.cert)
        (staging / "ca").mkdir(mode=0o700)
        _write(staging / "ca" / "ca.crt", ca_pem)
        _write(staging / "ca" / "ca.key", _key_pem(ca.key), private=True)

        mosq = staging / "mosquitto"
        mosq.mkdir(mode=0o700)
        _write(mosq / "ca.crt", ca_pem)
        server = issue(ca, fleet.host, now, server_names=[fleet.host, *fleet.names])
        write_pair(mosq, "server", server)
        _write(mosq / "acl", acl_text(fleet))
        _write(mosq / "mosquitto.conf", mosquitto_conf_text(fleet, broker_dir))

        (staging / "devices").mkdir(mode=0o755)
        for device in fleet.devices:
            home = staging / "devices" / device
            home.mkdir(mode=0o700)
            _write(home / "ca.crt", ca_pem)
            write_pair(home, "client", issue(ca, device, now))
            kind = "van" if device in fleet.vans else "locker"
            _write(
                home / "broker.toml",
                _broker_section(
                    fleet,
                    device,
                    "client.crt",
                    "client.key",
                    f"# The [broker] section of {kind} {device}'s configuration. Put ca.crt,\n"
                    "# client.crt and client.key next to that file (the key stays on the device).",
                ),
            )

        depot = staging / "depot"
        depot.mkdir(mode=0o700)
        _write(depot / "ca.crt", ca_pem)
        for account in fleet.depot_accounts:
            write_pair(depot, account, issue(ca, account, now))
        if fleet.workers == 1:
            cert, key, note = f"{fleet.depot_username}.crt", f"{fleet.depot_username}.key", ""
        else:
            cert = f"{fleet.depot_username}-{{worker}}.crt"
            key = f"{fleet.depot_username}-{{worker}}.key"
            note = f"\n# With [depot] workers = {fleet.workers}: each worker its own certificate."
        _write(
            depot / "broker.toml",
            _broker_section(
                fleet,
                fleet.depot_username,
                cert,
                key,
                "# The [broker] section of depot.toml. Put this directory's files next to it."
                + note,
            ),
        )
        staging.replace(final)  # an empty directory is replaced; a non-empty one refused
        final.chmod(0o700)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ProvisionError(f"cannot write {final}: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Provisioned(
        out=final,
        mosquitto_conf=final / "mosquitto" / "mosquitto.conf",
        ca_key=final / "ca" / "ca.key",
        devices={d: final / "devices" / d for d in fleet.devices},
        depot=final / "depot",
    )
