"""A parcel locker's configuration: its boards, its compartments and their sizes, its keys.

Read from TOML. Sizes are named (S, M, L…) with inner dimensions in centimetres and ordered
by volume, so "the smallest free compartment that fits" and "a bigger one" are well defined.

A camera is named here only by its source, never opened: the camera driver (and OpenCV behind
it) must stay unloaded in a locker that has none.
"""

from __future__ import annotations

import base64
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.lockboard import BoardConfig
from edge.errors import EdgeError
from parcel.runlog import log_level
from sync.mqtt import BrokerAddress, tls_client_files

DEFAULT_HOLD_H = 72.0
DEFAULT_SIZES = {"S": (8.0, 38.0, 64.0), "M": (19.0, 38.0, 64.0), "L": (41.0, 38.0, 64.0)}


class LockerConfigError(EdgeError):
    """The locker configuration is missing something or contradicts itself."""


@dataclass(frozen=True)
class CompartmentSpec:
    """One door of the locker: where its lock is on the bus, and how big it is inside."""

    id: str
    board: int
    lock: int
    size: str


@dataclass
class LockerConfig:
    device_id: str
    journal: Path
    lockboard_port: str
    boards: list[BoardConfig]
    compartments: list[CompartmentSpec]
    sizes: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(DEFAULT_SIZES)
    )
    hold_s: float = DEFAULT_HOLD_H * 3600
    door_open_alarm_s: float = 120.0
    jam_timeout_s: float = 3.0
    poll_interval_s: float = 0.25
    courier_badges: frozenset[str] = frozenset()
    courier_session_s: float = 300.0
    depot_sealing_key: bytes | None = None
    command_keys: list[bytes] = field(default_factory=list)
    scanner_port: str | None = None
    keypad_port: str | None = None
    # What `drivers.camera.Camera` opens: a device index (int), a device path, a video file or
    # a stream URL. None: no camera; pickup QRs come from the serial scanner only.
    camera_source: int | str | None = None
    broker: BrokerAddress | None = None
    sync: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.INFO  # [log] level
    source: Path | None = None  # the file this was read from: a reload reads it again

    def __post_init__(self) -> None:
        seen: set[tuple[int, int]] = set()
        boards = {b.board for b in self.boards}
        for c in self.compartments:
            if c.size not in self.sizes:
                raise LockerConfigError(f"compartment {c.id}: unknown size {c.size!r}")
            if c.board not in boards:
                raise LockerConfigError(f"compartment {c.id}: board {c.board} not configured")
            if not 0 <= c.lock < 16:
                raise LockerConfigError(f"compartment {c.id}: lock {c.lock} is not 0..15")
            if (c.board, c.lock) in seen:
                raise LockerConfigError(f"compartment {c.id}: board {c.board} lock {c.lock} twice")
            seen.add((c.board, c.lock))
        if len({c.id for c in self.compartments}) != len(self.compartments):
            raise LockerConfigError("compartment ids must be unique")

    def size_rank(self, size: str) -> float:
        w, h, d = self.sizes[size]
        return w * h * d


def _key(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise LockerConfigError(f"a key is not base64: {exc}") from exc


def _camera_source(section: dict[str, Any]) -> int | str:
    """``[camera] source``, read by the driver's own rule (`drivers.camera.parse_source`)."""
    from drivers.camera import CameraError, parse_source  # only when a camera is configured

    try:
        return parse_source(section["source"])
    except CameraError as exc:
        raise LockerConfigError(f"[camera] {exc}") from exc


def read_broker(
    doc: dict[str, Any], base: Path, device_id: str, where: str
) -> BrokerAddress | None:
    """A device file's ``[broker]`` section (None: there is none), as a locker and a staffed
    counter both write it; paths are relative to the file's folder, `base`. KeyError for a
    missing ``port`` (the caller names the file); LockerConfigError for what else is wrong."""
    if "broker" not in doc:
        return None
    b = doc["broker"]
    password = b.get("password")
    if "password_file" in b:
        password = (base / b["password_file"]).read_text().strip()
    password = password or os.environ.get("LASTMILE_MQTT_PASSWORD")
    try:
        tls_cert, tls_key = tls_client_files(base, b)
    except ValueError as exc:
        raise LockerConfigError(f"{where}: {exc}") from None
    if not password and tls_cert is None:  # a client certificate names the device
        raise LockerConfigError("broker password missing")
    return BrokerAddress(
        str(b.get("host", "127.0.0.1")),
        int(b["port"]),
        str(b.get("username", device_id)),
        password or "",
        tls_ca=str(base / b["ca_file"]) if "ca_file" in b else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


def read_log(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """A device file's ``[log]`` section, as a locker and a staffed counter both write it: only
    ``level`` (parcel.runlog.log_level reads it), so a misspelt key is said, not ignored.
    LockerConfigError, naming the file (`where`), for anything else."""
    log = doc.get("log", {})
    if not isinstance(log, dict) or set(log) - {"level"}:
        raise LockerConfigError(f"{where}: [log] takes only level")
    return log


def read_key(text: str) -> bytes:
    """A base64 key of the ``[depot]`` section (sealing key, command keys)."""
    return _key(text)


def load_locker_config(path: str | os.PathLike[str]) -> LockerConfig:
    """Read a locker's TOML file (see README for an example)."""
    base = Path(path).parent
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LockerConfigError(f"cannot read locker config {path}: {exc}") from exc
    try:
        device_id = str(doc["device_id"])
        sizes = {
            str(k): (float(v[0]), float(v[1]), float(v[2]))
            for k, v in doc.get("sizes", DEFAULT_SIZES).items()
        }
        board_docs = doc["lockboard"].get("boards", [{"board": 0}])
        boards = [
            BoardConfig(
                board=int(b["board"]),
                lock_bit_open=bool(b.get("lock_bit_open", True)),
                item_bit_present=bool(b.get("item_bit_present", True)),
            )
            for b in board_docs
        ]
        compartments = [
            CompartmentSpec(str(c["id"]), int(c["board"]), int(c["lock"]), str(c["size"]))
            for c in doc["compartments"]
        ]
        broker = read_broker(doc, base, device_id, f"locker config {path}")
        depot = doc.get("depot", {})
        log = read_log(doc, f"locker config {path}")
        return LockerConfig(
            device_id=device_id,
            journal=base / doc.get("journal", f"{device_id}.journal.db"),
            lockboard_port=str(doc["lockboard"]["port"]),
            boards=boards,
            compartments=compartments,
            sizes=sizes,
            hold_s=float(doc.get("hold_hours", DEFAULT_HOLD_H)) * 3600,
            door_open_alarm_s=float(doc.get("door_open_alarm_s", 120.0)),
            jam_timeout_s=float(doc.get("jam_timeout_s", 3.0)),
            poll_interval_s=float(doc.get("poll_interval_s", 0.25)),
            courier_badges=frozenset(str(x) for x in doc.get("couriers", {}).get("badges", [])),
            depot_sealing_key=_key(depot["sealing_key"]) if "sealing_key" in depot else None,
            command_keys=[_key(k) for k in depot.get("command_keys", [])],
            scanner_port=doc.get("scanner", {}).get("port"),
            keypad_port=doc.get("keypad", {}).get("port"),
            camera_source=_camera_source(doc["camera"]) if "camera" in doc else None,
            broker=broker,
            sync=dict(doc.get("sync", {})),
            log_level=log_level(log.get("level", "info")),  # ValueError: said below
            source=Path(path),
        )
    except KeyError as exc:
        raise LockerConfigError(f"locker config {path} lacks {exc}") from exc
    except (TypeError, ValueError, OSError) as exc:
        raise LockerConfigError(f"locker config {path}: {exc}") from exc
