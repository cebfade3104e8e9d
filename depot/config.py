"""The depot service's settings, read from one TOML file.

Owns the shape of `depot.toml` and its validation: every mistake is reported with the key
that holds it, before anything starts, so an operator never finds out at the first failed
delivery that a locker's coordinates were typed as text.

Example::

    [depot]
    database = "depot.db"              # a SQLite file, relative to this file (the default),
                                       # or "postgresql://depot@db-host/depot" (password from
                                       # PGPASSWORD or ~/.pgpass, never written here)
    lat = 52.3676
    lon = 4.9041
    vans = ["van-1", "van-2"]
    api = "127.0.0.1:8080"             # the HTTP JSON API ("" to disable; worker 1 serves it)
    public_url = "https://depot.example.com"  # the API as customers reach it (the extend-hold
                                       # link in pickup notices); default http://{api}
    workers = 1                        # processes sharing the devices' stream (MQTT v5 shared
                                       # subscriptions); accounts are then {username}-1..N
    signing_key = "keys/command-signing.pem"
    sealing_key = "keys/credential-sealing.pem"

    [broker]
    host = "127.0.0.1"
    port = 8883
    username = "depot"
    password_file = "depot.password"   # with workers: "depot-{worker}.password", one each
    ca_file = "ca.crt"
    tls_cert = "depot.crt"             # a client certificate, for a broker that asks for one
    tls_key = "depot.key"              # (`lastmile depot provision`); with workers:
                                       # "depot-{worker}.crt" and ".key", one each

    [webhooks]
    secrets_file = "webhook-secrets.toml"  # key id (merchant, or "customer") = "secret"
    max_attempts = 12                  # about 2.5 to 5 hours of retries at the defaults
    backoff_base_s = 30
    backoff_max_s = 3600

    [operator]
    webhook = "https://ops.example.com/hooks/alarms"  # every alarm, once; signed with the
                                       # secret "operator" of webhooks.secrets_file

    [policy]
    max_attempts = 2
    max_locker_km = 3.0
    locker_hold_h = 48
    extend_hold_h = 24                 # a customer's extend-hold link adds this, once
    locker_confirm_min = 30            # a van's locker drop the locker has not confirmed (or
                                       # a deposit the van has not claimed) after this many
                                       # minutes is an operator alarm

    [log]
    level = "info"                     # debug | info | warning | error; SIGHUP re-reads it

    [[lockers]]
    name = "locker-1"
    lat = 52.37
    lon = 4.90
    compartments = { S = 8, M = 6, L = 2 }
    title = "Central Station locker"   # what the pickup notice calls it (default: its name)
    address = "Stationsplein 1, Amsterdam"

    [[lockers]]                        # a staffed collection point (`lastmile counter`)
    name = "counter-1"
    kind = "counter"
    capacity = 40                      # parcels of any size held or reserved at once
    lat = 52.36
    lon = 4.88

    [[vehicles]]                       # what a van device drives, for the day plan: a van in
    name = "bike-1"                    # depot.vans without an entry is a "van" with its
    type = "cargo_bike"                # type's defaults; an entry not in depot.vans joins
    volume_l = 1500                    # the fleet. type: van | cargo_bike | on_foot; any of
                                       # parcels, weight_kg, volume_l, shift_h, speed_kmh,
                                       # stop_min, parcel_kg overrides the type's default
                                       # (depot/vehicles.py says what they are and why)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depot.errors import DepotError
from depot.vehicles import Vehicle, VehicleError, vehicle
from parcel.runlog import log_level
from sync.mqtt import BrokerAddress, tls_client_files
from sync.wire import MAX_COMMAND_HOURS

SIZES = ("S", "M", "L")


class DepotConfigError(DepotError):
    """The depot's settings file cannot be used; the message names the key."""


@dataclass(frozen=True)
class LockerSiteConfig:
    """A parcel locker the depot may redirect parcels to."""

    name: str
    lat: float
    lon: float
    compartments: Mapping[str, int]
    title: str = ""  # what customers are told it is called, e.g. "Station Square locker"
    address: str = ""  # where customers find it (the pickup notice says both)
    # "locker", or "counter": a staffed collection point (`lastmile counter`) that speaks a
    # locker's events and commands but has shelves: it takes a parcel of any size while fewer
    # than `capacity` are held or reserved there (its `compartments` are unused).
    kind: str = "locker"
    capacity: int = 0


@dataclass
class DepotConfig:
    database: str | Path  # a SQLite file, or a postgresql:// URL (depot.store.open_database)
    lat: float
    lon: float
    vans: list[str]
    broker: BrokerAddress | None = None
    api: tuple[str, int] | None = None
    public_url: str = ""  # the API as customers reach it (links in notices); default: `api`
    signing_key: Path | None = None
    sealing_key: Path | None = None
    webhook_secrets: dict[str, bytes] = field(default_factory=dict)
    webhook_max_attempts: int = 12
    webhook_backoff_base_s: float = 30.0
    webhook_backoff_max_s: float = 3600.0
    operator_webhook: str | None = None  # where alarms go (signed with secret "operator")
    max_attempts: int = 2
    max_locker_km: float = 3.0
    locker_hold_h: float = 48.0
    extend_hold_h: float = 24.0  # what a customer's extend-hold link adds, once
    locker_confirm_min: float = 30.0  # a van's drop and the locker's word disagree this long
    lockers: list[LockerSiteConfig] = field(default_factory=list)
    # [[vehicles]]: the type and limits of each van device that has an entry (all in `vans`)
    vehicles: dict[str, Vehicle] = field(default_factory=dict)
    workers: int = 1  # depot processes sharing the broker's stream and the database
    worker_passwords: dict[int, str] = field(default_factory=dict)  # worker -> its own secret
    # worker -> its client certificate and key files (None, None: the broker asks for none)
    worker_certs: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    log_level: int = logging.INFO  # [log] level
    source: Path | None = None  # the file this was read from (a reload reads it again)
    # Settings the command line gave instead of the file's (database, workers): a reload
    # keeps them as they are.
    overridden: set[str] = field(default_factory=set)

    def fleet(self, vans: Sequence[str] | None = None) -> list[Vehicle]:
        """The vehicles of `vans` (default: all), as planning sees them: each its
        `[[vehicles]]` entry, or a `van` with the type's defaults when it has none."""
        return [
            self.vehicles.get(name) or Vehicle.of_type(name, "van")
            for name in (self.vans if vans is None else vans)
        ]

    def broker_for(self, worker: int) -> BrokerAddress | None:
        """Worker `worker`'s broker account (1-based): the configured one when the depot runs
        alone, else `{username}-{worker}`, each a broker account of its own with the depot's
        rights, so the broker (and its log) can tell the workers apart."""
        if self.broker is None or self.workers == 1:
            return self.broker
        if not 1 <= worker <= self.workers:
            raise DepotConfigError(f"worker {worker} is not one of 1..{self.workers}")
        cert, key = self.worker_certs.get(worker, (self.broker.tls_cert, self.broker.tls_key))
        return dataclasses.replace(
            self.broker,
            username=f"{self.broker.username}-{worker}",
            password=self.worker_passwords.get(worker, self.broker.password),
            tls_cert=cert,
            tls_key=key,
        )


def _number(
    section: Mapping[str, Any], key: str, where: str, default: float | None = None
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DepotConfigError(f"{where}.{key} must be a number")
    return float(value)


def _int(section: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DepotConfigError(f"{where}.{key} must be a positive integer")
    return value


def _path(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DepotConfigError(f"{key} must be a path")
    p = Path(value)
    return p if p.is_absolute() else base / p


def _database(base: Path, depot: Mapping[str, Any]) -> str | Path:
    """`depot.database`: a PostgreSQL URL as written, else a SQLite path (`db`, its old name)."""
    if "database" in depot and "db" in depot:
        raise DepotConfigError("depot.database and depot.db name the same thing: keep database")
    key = "database" if "database" in depot else "db"
    value = depot.get(key, "depot.db")
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        return value
    return _path(base, value, f"depot.{key}")


def load_depot_config(path: str | os.PathLike[str]) -> DepotConfig:
    """Read and check `depot.toml`; raises DepotConfigError naming the first bad key."""
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DepotConfigError(f"cannot read {file}: {exc}") from None
    base = file.parent
    depot = doc.get("depot")
    if not isinstance(depot, dict):
        raise DepotConfigError("[depot] section is missing")
    vans = depot.get("vans", [])
    if not isinstance(vans, list) or not all(isinstance(v, str) and v for v in vans):
        raise DepotConfigError("depot.vans must be a list of van device names")
    config = DepotConfig(
        database=_database(base, depot),
        lat=_number(depot, "lat", "depot"),
        lon=_number(depot, "lon", "depot"),
        vans=list(vans),
        source=file,
    )
    log = doc.get("log", {})
    if not isinstance(log, dict) or set(log) - {"level"}:
        raise DepotConfigError("[log] takes only level")
    try:
        config.log_level = log_level(log.get("level", "info"))
    except ValueError as exc:
        raise DepotConfigError(str(exc)) from None
    api = depot.get("api", "")
    if api:
        host, sep, port = str(api).rpartition(":")
        if not sep or not port.isdigit():
            raise DepotConfigError("depot.api must be HOST:PORT")
        config.api = (host or "127.0.0.1", int(port))
    config.public_url = _text(depot, "public_url", "depot")
    if config.public_url and not config.public_url.startswith(("http://", "https://")):
        raise DepotConfigError("depot.public_url must be an http(s) URL")
    for key in ("signing_key", "sealing_key"):
        if key in depot:
            setattr(config, key, _path(base, depot[key], f"depot.{key}"))
    config.workers = _int(depot, "workers", "depot", 1)
    broker = doc.get("broker")
    if isinstance(broker, dict):
        password = ""
        if "password_file" in broker:
            # "depot-{worker}.password": each worker's account has a secret of its own.
            template = str(broker["password_file"])
            for worker in range(1, config.workers + 1) if "{worker}" in template else [1]:
                pw_path = _path(
                    base, template.replace("{worker}", str(worker)), "broker.password_file"
                )
                try:
                    config.worker_passwords[worker] = pw_path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise DepotConfigError(f"broker.password_file: {exc}") from None
            password = config.worker_passwords[1]
        else:
            password = os.environ.get("LASTMILE_MQTT_PASSWORD", "")
        ca = broker.get("ca_file")
        # "depot-{worker}.crt": each worker shows a certificate of its own, naming its account.
        templated = any("{worker}" in str(broker.get(k, "")) for k in ("tls_cert", "tls_key"))
        for worker in range(1, config.workers + 1) if templated else [1]:
            section = {
                k: str(v).replace("{worker}", str(worker)) if k.startswith("tls_") else v
                for k, v in broker.items()
            }
            try:
                config.worker_certs[worker] = tls_client_files(base, section)
            except ValueError as exc:
                raise DepotConfigError(str(exc)) from None
        cert_file, key_file = config.worker_certs[1]
        config.broker = BrokerAddress(
            str(broker.get("host", "127.0.0.1")),
            int(_number(broker, "port", "broker", 1883)),
            str(broker.get("username", "depot")),
            password,
            tls_ca=str(_path(base, ca, "broker.ca_file")) if ca else None,
            tls_cert=cert_file,
            tls_key=key_file,
        )
    hooks = doc.get("webhooks", {})
    if not isinstance(hooks, dict):
        raise DepotConfigError("[webhooks] must be a table")
    if "secrets_file" in hooks:
        secrets_path = _path(base, hooks["secrets_file"], "webhooks.secrets_file")
        try:
            secrets = tomllib.loads(secrets_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DepotConfigError(f"webhooks.secrets_file: {exc}") from None
        for key_id, secret in secrets.items():
            if not isinstance(secret, str) or len(secret) < 16:
                raise DepotConfigError(
                    f"webhook secret {key_id!r} must be a string of at least 16 characters"
                )
            config.webhook_secrets[str(key_id)] = secret.encode()
    config.webhook_max_attempts = _int(hooks, "max_attempts", "webhooks", 12)
    config.webhook_backoff_base_s = _number(hooks, "backoff_base_s", "webhooks", 30.0)
    config.webhook_backoff_max_s = _number(hooks, "backoff_max_s", "webhooks", 3600.0)
    operator = doc.get("operator", {})
    if not isinstance(operator, dict):
        raise DepotConfigError("[operator] must be a table")
    if "webhook" in operator:
        url = operator["webhook"]
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise DepotConfigError("operator.webhook must be an http(s) URL")
        if "operator" not in config.webhook_secrets:
            raise DepotConfigError(
                'operator.webhook needs a secret named "operator" in webhooks.secrets_file'
            )
        config.operator_webhook = url
    policy = doc.get("policy", {})
    if not isinstance(policy, dict):
        raise DepotConfigError("[policy] must be a table")
    config.max_attempts = _int(policy, "max_attempts", "policy", 2)
    config.max_locker_km = _number(policy, "max_locker_km", "policy", 3.0)
    config.locker_hold_h = _number(policy, "locker_hold_h", "policy", 48.0)
    config.extend_hold_h = _number(policy, "extend_hold_h", "policy", 24.0)
    config.locker_confirm_min = _number(policy, "locker_confirm_min", "policy", 30.0)
    if not 0 < config.locker_confirm_min <= 24 * 60:
        raise DepotConfigError("policy.locker_confirm_min must be above 0 and at most 1440")
    if not 0 < config.extend_hold_h <= MAX_COMMAND_HOURS:
        raise DepotConfigError(
            f"policy.extend_hold_h must be above 0 and at most {MAX_COMMAND_HOURS:g}"
        )
    lockers = doc.get("lockers", [])
    if not isinstance(lockers, list):
        raise DepotConfigError("[[lockers]] must be an array of tables")
    for i, item in enumerate(lockers):
        where = f"lockers[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise DepotConfigError(f"{where}.name must be a device name")
        comps = item.get("compartments", {})
        if not isinstance(comps, dict) or not all(
            k in SIZES and isinstance(v, int) and v >= 0 for k, v in comps.items()
        ):
            raise DepotConfigError(f"{where}.compartments must map S/M/L to counts")
        kind = item.get("kind", "locker")
        if kind not in ("locker", "counter"):
            raise DepotConfigError(f'{where}.kind must be "locker" or "counter"')
        capacity = item.get("capacity", 0)
        if kind == "counter" and (
            not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1
        ):
            raise DepotConfigError(f"{where}.capacity must be a number of parcels (1 or more)")
        config.lockers.append(
            LockerSiteConfig(
                item["name"],
                _number(item, "lat", where),
                _number(item, "lon", where),
                dict(comps),
                _text(item, "title", where),
                _text(item, "address", where),
                kind=kind,
                capacity=capacity if kind == "counter" else 0,
            )
        )
    vehicles = doc.get("vehicles", [])
    if not isinstance(vehicles, list):
        raise DepotConfigError("[[vehicles]] must be an array of tables")
    for i, item in enumerate(vehicles):
        where = f"vehicles[{i}]"
        if not isinstance(item, dict):
            raise DepotConfigError(f"{where} must be a table")
        try:
            one = vehicle(item, where=where)
        except VehicleError as exc:
            raise DepotConfigError(str(exc)) from None
        if one.name in config.vehicles:
            raise DepotConfigError(f"{where}.name {one.name!r} has an entry already")
        config.vehicles[one.name] = one
        if one.name not in config.vans:
            config.vans.append(one.name)
    return config


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise DepotConfigError(f"{where}.{key} must be text")
    return value
