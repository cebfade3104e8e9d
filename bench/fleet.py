"""`bench fleet`: a whole fleet's morning against the real broker and the real depot service.

What is measured: N simulated devices (default 2,000) in this one asyncio process, each with its
own broker account, come back from an outage at the same time. Each holds a backlog (default an
hour of scans, 180 events), reconnects after a random delay (`--reconnect-jitter-s`, so the
fleet arrives over a few seconds, as vans leaving a dead zone together do), drains it to the
depot, then keeps scanning for `--steady-s` seconds at `--steady-rate` events/s per device.

The depot is the whole production service (`python -m lastmile depot --config depot.toml
--workers N`), the same code in every set-up: ingest, the parcel book's projection of every
stored event, the outboxes. Its depot.toml is written here: the set-up's database and worker
count, the broker's address and the depot's account; no HTTP API, no keys, no webhooks (a
morning's scans send nothing out but acks). With N > 1 the command is a supervisor that starts
N worker processes, each a whole depot service with its own broker account (`depot-1..N`),
sharing the devices' batches through an MQTT v5 shared subscription. The depot runs in
processes of its own, so its CPU and memory can be read from /proc apart from the rest; the
broker is Mosquitto with one account per device, the depot's accounts and the project's ACL
(`simulators.broker.Broker`).

Set-ups (`--setups`, default `sqlite:1,postgresql:1,postgresql:2,postgresql:4`): a back end
and a worker count each; the first is the baseline every ratio is against. Each runs against
its own fresh broker and its own fresh database: a SQLite file in the scratch directory, or a
new database on one private PostgreSQL server started for the whole bench run
(`simulators.postgres.PostgresServer`: its own cluster on a free port, never the machine's
server). Without PostgreSQL installed only the SQLite set-ups run, and `setups_not_run` says
why. That server runs durably (`durable=True`: fsync, synchronous commit and full-page writes
on, PostgreSQL's defaults), as SQLite commits with WAL and synchronous=FULL, so both pay for a
flush per commit; `database_server` reports the settings so the figures are read against them.

Figures per set-up:

- `events_per_s`: backlog events stored and acknowledged per second, over `drain_s`;
- `drain_s`: from the first device's first connection attempt to the depot's acknowledgement
  of the last backlog event;
- `ack_p50_ms`, `ack_p99_ms`: steady phase, from the moment a scan's event is created on the
  device to the moment the device reads the depot's ack (`…/ack`, not the broker's PUBACK)
  covering it;
- CPU (user + sys from /proc/PID/stat, % of one core) over the drain and over the steady
  phase: the depot's (the supervisor and all its children, summed, and its busiest process),
  the PostgreSQL server's (`database_cpu_pct`: the postmaster and its backends), the broker's,
  this process's (the simulated fleet) and the rest of the machine's (`other_cpu_pct`, from
  /proc/stat: other people's jobs and the kernel's own work), because all of them share the
  machine's cores;
- `depot_rss_mb`: the sum of the depot processes' peak resident sizes (VmHWM).

Then the depot's database is read back (read-only) and every device's journal compared with
it: each event stored exactly once and hash for hash the one the device made (`lost`,
`duplicates`, `chain_breaks`: quarantined payloads and stored events whose hash differs), and
the depot's `gaps` table.

Why: every van and locker of a depot comes back online at the start of the morning and after a
network outage; the depot must take all their backlogs at once, in under a minute for 2,000
devices, while it keeps acknowledging new scans in under 250 ms; and a carrier that outgrows
one process needs to know what PostgreSQL and more workers buy on the same machine.

Each device speaks the real wire, MQTT v5 as the uplink does: its events are chained with
`sync.wire.chain_hash` and sent with `sync.wire.encode_batch` (zlib, the uplink's content type
and `enc` user property), its `online` status is published retained on connect with the
`offline` last will, it keeps one batch in flight and sends the next when the depot's ack
confirms it; a `resend` in an ack, a reconnect or 10 s without an ack makes it resend from the
last acknowledgement, as `sync.uplink.Uplink` does, and, as it does, each silence in a row
makes the device wait longer for the next (up to 8×, reset by an ack that moves). What differs
from a real van, so that one process can be 2,000 of them: the journal is in memory (the
device's SQLite commit is not what is measured here; `bench scan` measures it), the MQTT
client is the lean one below, and each device's first backlog batch is encoded before the
clock starts (the real van spends that CPU on its own processor, not on the depot's machine).

The transport is plain TCP on 127.0.0.1: TLS would add the broker's handshakes to the morning
(a real cost, left out so the figure is the depot's), and nothing leaves the machine.

Bounded: every wait has a timeout, and every process started here (broker, depot and its
workers, PostgreSQL) is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import secrets
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bench.rig import BenchError, describe_mount, host_facts, percentile, rounded, scratch_dir
from bench.sync import scan_payloads
from edge.van import PARCEL_SCANNED
from simulators.broker import Broker, encode_str, find_mosquitto, remaining_length
from sync.errors import WireError
from sync.mqtt import backoff_delay
from sync.uplink import ACK_PATIENCE_MAX
from sync.wire import (
    BATCH_CONTENT_TYPE,
    BATCH_ENCODING,
    Event,
    ack_topic,
    canonical_payload,
    chain_hash,
    decode_ack,
    encode_batch,
    encode_status,
    events_topic,
    genesis_hash,
    split_topic,
    status_topic,
)

if TYPE_CHECKING:
    from simulators.postgres import PostgresServer

log = logging.getLogger("bench.fleet")

HOST = "127.0.0.1"
DEPOT_USER = "depot"
DEPOT_LAT, DEPOT_LON = 52.3676, 4.9041  # depot.toml needs a position; nothing is planned here
PROBE = "bench-probe"  # a device account of its own: proves the depot listens before the clock
BATCH_EVENTS = 1000  # the uplink's batch size
ACK_TIMEOUT_S = 10.0  # the uplink's: no ack for this long while a batch is in flight → resend
PROBE_ACK_TIMEOUT_S = 0.5  # the probe resends this often until the depot has subscribed
KEEPALIVE_S = 60
CONNECT_TIMEOUT_S = 10.0  # TCP connect + CONNACK, per attempt
BACKOFF_S = (0.5, 8.0)  # reconnect backoff window, equal jitter, as sync.mqtt
HANDSHAKES_AT_ONCE = 64  # connects in flight at once: inside Mosquitto's listen backlog (100)
BACKLOG_SPAN_S = 3600.0  # the outage the backlog covers: an hour
PAYLOAD_POOL = 4096  # distinct scan payloads, reused: labels cost ~30 µs each to make
# Python start-up, the schema migration (one worker at a time) and the broker connection of
# up to 4 workers on a loaded 2-core machine.
DEPOT_READY_TIMEOUT_S = 60.0
WORKERS_POLL_S = 0.1  # how often the broker's log is read while the workers connect
DRAIN_TIMEOUT_S = 600.0
STEADY_ACK_TIMEOUT_S = 60.0  # after the last steady scan, for its ack
STOP_TIMEOUT_S = 10.0
# The supervisor stops its workers (each closing its store, depot.workers.STOP_WAIT_S = 20 s
# at most) before it exits itself; after this the depot's process group is killed.
DEPOT_STOP_TIMEOUT_S = 30.0
DATABASE_TIMEOUT_S = 30  # connect and statement timeout of the read-back's connection
FD_HEADROOM = 256
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

TARGET_DEVICES = 2000  # the drain and latency targets are stated for this fleet...
TARGET_BACKLOG_EVENTS = 180  # ...each device holding an hour of scans
TARGET_EVENTS_PER_S_POSTGRESQL = 10_000.0
TARGET_DRAIN_S = 60.0
TARGET_ACK_P99_MS = 250.0
BUSY_PCT = 85.0  # a process above this share of one core is taken as CPU-bound
NOTABLE_PCT = 25.0  # the rest of the machine is named in `where_time_goes` above this share


# --- set-ups ---------------------------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Setup:
    """One way to run the whole depot service: a database back end and its worker processes."""

    backend: str
    workers: int

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.workers}"


SETUPS: tuple[Setup, ...] = (
    Setup("sqlite", 1),  # the baseline: the embedded depot, one process
    Setup("postgresql", 1),
    Setup("postgresql", 2),
    Setup("postgresql", 4),
)


def parse_setups(text: str) -> tuple[Setup, ...]:
    """`sqlite:1,postgresql:2`: back end and worker count (`:1` may be left out), in order.

    The argparse type of `--setups`; the first set-up is the baseline of every ratio.
    """
    setups: list[Setup] = []
    for item in text.split(","):
        backend, sep, count = item.strip().partition(":")
        if backend not in BACKENDS:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r}: the back end is one of {', '.join(BACKENDS)}")
        if sep and not (count.isdigit() and int(count) >= 1):
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: workers must be at least 1")
        setup = Setup(backend, int(count) if sep else 1)
        if setup in setups:
            raise argparse.ArgumentTypeError(f"{setup.name} is listed twice")
        setups.append(setup)
    return tuple(setups)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=TARGET_DEVICES,
                   help=f"simulated devices, one broker account each (default {TARGET_DEVICES})")
    p.add_argument("--backlog-events", type=int, default=TARGET_BACKLOG_EVENTS,
                   help="events each device holds when it comes back (default "
                        f"{TARGET_BACKLOG_EVENTS}: an hour of a scan every 20 s)")
    p.add_argument("--reconnect-jitter-s", type=float, default=5.0,
                   help="devices reconnect at random over this many seconds (default 5)")
    p.add_argument("--steady-s", type=float, default=60.0,
                   help="seconds of scanning after the drain (default 60)")
    p.add_argument("--steady-rate", type=float, default=1 / 15,
                   help="new events per second per device in the steady phase (default 1/15: "
                        "a scan every 15 s on average)")
    p.add_argument("--ack-timeout-s", type=float, default=ACK_TIMEOUT_S,
                   help="a device resends from its last ack after this long without one, "
                        "longer after each silence in a row, as the uplink (default "
                        f"{ACK_TIMEOUT_S:g}, the uplink's)")
    p.add_argument("--setups", type=parse_setups, default=SETUPS, metavar="BACKEND:WORKERS,...",
                   help="set-ups to run, in order, the first the baseline (default "
                        f"{','.join(s.name for s in SETUPS)}); PostgreSQL set-ups are skipped, "
                        "and listed as not run, when PostgreSQL is not installed")
    p.add_argument("--seed", type=int, default=1, help="random seed of events and timings")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the scratch directory here (default: the current directory; "
                        "not tmpfs, where fsync is free)")


# --- a lean MQTT v5 client -------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
PROTOCOL_LEVEL_V5 = 5
SESSION_EXPIRY_S = 7 * 24 * 3600  # the uplink's persistent session


class ProtocolError(Exception):
    """The broker sent something this client does not expect."""


class Refused(ProtocolError):
    """The broker refused the account or its subscription: retrying cannot help."""


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 21:
            raise ProtocolError("malformed variable byte integer")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _bin(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(username: str, password: str, will: tuple[str, bytes]) -> bytes:
    """CONNECT v5 as the uplink sends it: persistent session, 7-day expiry, retained QoS 1 will."""
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # username, password, will retain, will QoS 1, will
    props = b"\x11" + struct.pack("!I", SESSION_EXPIRY_S)
    body = (
        encode_str("MQTT") + bytes([PROTOCOL_LEVEL_V5, flags]) + struct.pack("!H", KEEPALIVE_S)
        + remaining_length(len(props)) + props
        + encode_str(username)  # the client id; the broker uses the username anyway
        + b"\x00" + encode_str(will[0]) + _bin(will[1])  # no will properties
        + encode_str(username) + _bin(password.encode())
    )
    return _packet(CONNECT << 4, body)


def subscribe_packet(pid: int, topic_filter: str) -> bytes:
    body = struct.pack("!H", pid) + b"\x00" + encode_str(topic_filter) + b"\x01"  # QoS 1
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(topic: str, payload: bytes, pid: int, *, props: bytes = b"",
                   retain: bool = False) -> bytes:
    """PUBLISH at QoS 1."""
    first = (PUBLISH << 4) | 0x02 | (0x01 if retain else 0)
    head = encode_str(topic) + struct.pack("!H", pid) + remaining_length(len(props)) + props
    return _packet(first, head + payload)


# What the uplink sends with every batch: its content type and the `enc` user property.
BATCH_PROPS = (b"\x03" + encode_str(BATCH_CONTENT_TYPE)
               + b"\x26" + encode_str("enc") + encode_str(BATCH_ENCODING))
PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])  # normal disconnection: the will is not sent


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet; IncompleteReadError when the broker hangs up."""
    head = await reader.readexactly(2)
    first, byte = head[0], head[1]
    length, shift = byte & 0x7F, 7
    while byte & 0x80:
        if shift > 21:
            raise ProtocolError("malformed remaining length")
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
    return first, (await reader.readexactly(length) if length else b"")


def parse_publish(first: int, body: bytes) -> tuple[str, int | None, bytes]:
    """(topic, packet id or None at QoS 0, payload) of an incoming v5 PUBLISH."""
    n = struct.unpack_from("!H", body)[0]
    topic = body[2 : 2 + n].decode()
    i = 2 + n
    pid = None
    if (first >> 1) & 0x03:
        pid = struct.unpack_from("!H", body, i)[0]
        i += 2
    props_len, i = _read_varint(body, i)
    return topic, pid, body[i + props_len :]


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Counters:
    """What went on the wire, for the report and for a person reading a failed run."""

    connects: int = 0
    reconnects: int = 0
    batches: int = 0
    resends_after_timeout: int = 0  # no ack for the device's patience: the batch is resent
    resends_asked: int = 0  # the depot's ack said `resend` (it saw a gap)
    refused_pubacks: int = 0
    connect_s: list[float] = field(default_factory=list)
    ack_latency_s: list[float] = field(default_factory=list)


class Fleet:
    """The devices of one run, the broker's address, and the moments the phases end."""

    def __init__(self, port: int, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.port = port
        self.ack_timeout_s = ack_timeout_s
        self.devices: list[Device] = []
        self.stats = Counters()
        self.stopping = False
        self.first_attempt_at: float | None = None
        self.backlog_acked_at = 0.0
        self._backlogs_left = 0
        self._devices_left = 0
        self.backlogs_done = asyncio.Event()
        self.all_done = asyncio.Event()
        self.refused = asyncio.Event()  # a device was refused: the run cannot succeed
        self.refusal = ""
        self.handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)

    def add(self, device: Device) -> None:
        self.devices.append(device)

    def expect(self) -> None:
        """Call once every device holds its backlog and knows its plan."""
        self._backlogs_left = sum(1 for d in self.devices if d.backlog)
        self._devices_left = len(self.devices)
        if not self._backlogs_left:
            self.backlogs_done.set()

    def backlog_acked(self, at: float) -> None:
        self._backlogs_left -= 1
        if self._backlogs_left == 0:
            self.backlog_acked_at = at
            self.backlogs_done.set()

    def refuse(self, reason: str) -> None:
        if not self.refused.is_set():
            self.refusal = reason
            self.refused.set()

    def device_done(self) -> None:
        self._devices_left -= 1
        if self._devices_left == 0:
            self.all_done.set()

    @property
    def backlogs_left(self) -> int:
        return self._backlogs_left

    @property
    def devices_left(self) -> int:
        return self._devices_left

    async def stop(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Every device says DISCONNECT (no will); tasks still running after that are ended."""
        self.stopping = True
        for d in self.devices:
            d.hang_up()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class Device:
    """One van's journal (in memory) and its uplink, on one MQTT v5 connection.

    Like `sync.uplink.Uplink` with a window of one batch: it sends at most `BATCH_EVENTS`
    events beyond the depot's last ack and the next batch when an ack covers the one in
    flight; it rewinds to the ack after a reconnect, on `resend`, and after the ack timeout,
    whose patience grows with each silence in a row and resets on an ack that moves, as the
    uplink's does (`sync.uplink.ACK_PATIENCE_MAX`, `sync.mqtt.backoff_delay`).
    """

    def __init__(self, fleet: Fleet, name: str, password: str, rng: random.Random) -> None:
        self.fleet = fleet
        self.name = name
        self.password = password
        self.rng = rng
        self.journal_id = f"{rng.getrandbits(128):032x}"
        self.boot_id = f"{rng.getrandbits(128):032x}"
        # Monotonic clock of this device's boot, which was hours before the outage began.
        self.mono_offset_ns = int((BACKLOG_SPAN_S + rng.uniform(3600, 4 * 3600)) * 1e9)
        self.hashes: list[bytes] = []  # hash of event n at [n - 1], kept for the read-back
        self.unacked: list[Event] = []  # the journal's outbox: every event after `acked`
        self.acked = 0
        self.backlog = 0
        self.planned = 0  # events this device makes in the whole run
        self.inflight_last = 0  # last seq of the batch in flight; 0: none
        self.created_at: dict[int, float] = {}  # steady-phase events: seq → perf_counter()
        # (silences in a row, seconds to wait for an ack): the uplink's patience.
        self.patience = (0, fleet.ack_timeout_s)
        self._encoded: tuple[int, int, bytes] | None = None  # (first, last, payload) ready
        self._writer: asyncio.StreamWriter | None = None
        self._subscribed = False
        self._pid = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._wrote = False  # since the last keepalive tick
        self._ack_topic = ack_topic(name)
        self._events_topic = events_topic(name)

    # --- the journal ---

    def append(self, payload: dict[str, Any], payload_json: str, mono_ns: int,
               wall_ns: int) -> Event:
        """One scan into the chain, exactly as `JournalTransaction.append` makes it."""
        seq = len(self.hashes) + 1
        prev = self.hashes[-1] if self.hashes else genesis_hash(self.journal_id)
        uid = f"{self.rng.getrandbits(128):032x}"
        h = chain_hash(prev, seq, uid, self.boot_id, mono_ns, wall_ns, True, PARCEL_SCANNED,
                       payload_json)
        event = Event(seq, uid, self.boot_id, mono_ns, wall_ns, True, PARCEL_SCANNED, payload, h)
        self.hashes.append(h)
        self.unacked.append(event)
        return event

    def prepare_first_batch(self) -> None:
        """Encode the batch sent on connect now, off the clock (see the module docstring)."""
        if self.unacked:
            events = self.unacked[:BATCH_EVENTS]
            payload = encode_batch(self.name, self.journal_id, self._prev_hash(), events)
            self._encoded = (events[0].seq, events[-1].seq, payload)

    def scan(self, payload: dict[str, Any], payload_json: str) -> None:
        """A scan in the steady phase: stamped when it happens, sent if nothing is in flight."""
        now = time.perf_counter()
        event = self.append(payload, payload_json, time.monotonic_ns() + self.mono_offset_ns,
                            time.time_ns())
        self.created_at[event.seq] = now
        self._pump()

    def _prev_hash(self) -> bytes:
        return self.hashes[self.acked - 1] if self.acked else genesis_hash(self.journal_id)

    # --- the connection ---

    async def run(self, delay_s: float) -> None:
        """Come back after `delay_s`, then stay connected (reconnecting) until the fleet stops."""
        await asyncio.sleep(delay_s)
        attempt = 0
        while not self.fleet.stopping:
            try:
                if await self._session():
                    attempt = 0
            except Refused as exc:
                self.fleet.refuse(f"{self.name}: {exc}")
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                if not self.fleet.stopping:
                    log.info("%s: connection ended: %r", self.name, exc)
            if self.fleet.stopping:
                return
            self.fleet.stats.reconnects += 1
            window = min(BACKOFF_S[1], BACKOFF_S[0] * 2**attempt)
            attempt += 1
            await asyncio.sleep(self.rng.uniform(window / 2, window))

    async def _session(self) -> bool:
        """One connection, from TCP connect to hang-up; True if the broker accepted it."""
        fleet = self.fleet
        started = time.perf_counter()
        if fleet.first_attempt_at is None:
            fleet.first_attempt_at = started
        async with fleet.handshakes, asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, fleet.port)
            try:
                offline = encode_status("offline", self.boot_id)
                writer.write(connect_packet(self.name, self.password,
                                            (status_topic(self.name), offline)))
                first, body = await read_packet(reader)
            except BaseException:
                writer.close()
                raise
        try:
            if first >> 4 != CONNACK or len(body) < 2 or body[1] != 0:
                raise Refused(f"connection refused: packet {first >> 4}, "
                                    f"reason {body[1] if len(body) > 1 else '?'}")
            fleet.stats.connects += 1
            fleet.stats.connect_s.append(time.perf_counter() - started)
            self._writer = writer
            self._subscribed = False
            self.inflight_last = 0  # whatever was in flight may be gone: resend from the ack
            self._send(subscribe_packet(self._next_pid(), self._ack_topic))
            online = encode_status("online", self.boot_id, journal=self.journal_id)
            self._send(publish_packet(status_topic(self.name), online, self._next_pid(),
                                      retain=True))
            self._ping_timer = asyncio.get_running_loop().call_later(
                KEEPALIVE_S / 2, self._keepalive)
            while True:
                first, body = await read_packet(reader)
                self._handle(first, body)
        finally:
            self._writer = None
            self._cancel_timers()
            writer.close()

    def hang_up(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(DISCONNECT_PACKET)
                writer.write_eof()

    def _send(self, packet: bytes) -> None:
        assert self._writer is not None
        self._writer.write(packet)  # small packets: the transport buffers, nothing to await
        self._wrote = True

    def _next_pid(self) -> int:
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def _cancel_timers(self) -> None:
        for timer in (self._ack_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._ack_timer = self._ping_timer = None

    def _keepalive(self) -> None:
        """Every half keepalive: a PINGREQ if nothing else was written since the last tick."""
        if self._writer is None:
            return
        if not self._wrote:
            self._send(PINGREQ_PACKET)
        self._wrote = False
        self._ping_timer = asyncio.get_running_loop().call_later(KEEPALIVE_S / 2, self._keepalive)

    def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            topic, pid, payload = parse_publish(first, body)
            if pid is not None:
                self._send(_packet(PUBACK << 4, struct.pack("!H", pid)))
            if topic == self._ack_topic:
                self._on_ack(payload)
        elif kind == PUBACK:
            if len(body) > 2 and body[2] >= 0x80:  # a v5 reason code: refused (ACL, quota…)
                self.fleet.stats.refused_pubacks += 1
                log.warning("%s: the broker refused a publish: reason 0x%02x", self.name, body[2])
        elif kind == SUBACK:
            props_len, i = _read_varint(body, 2)
            codes = body[i + props_len :]
            if not codes or codes[0] >= 0x80:
                raise Refused(f"subscription to {self._ack_topic} refused: {codes!r}")
            self._subscribed = True
            self._pump()
        elif kind == DISCONNECT:
            raise ProtocolError(f"the broker disconnected us: {body[:1].hex()}")
        elif kind != PINGRESP:
            raise ProtocolError(f"unexpected packet type {kind}")

    # --- the uplink ---

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except WireError as exc:
            log.error("%s: malformed ack ignored: %s", self.name, exc)
            return
        if ack.journal_id != self.journal_id:
            return
        if ack.seq > self.acked:
            now = time.perf_counter()
            for seq in range(self.acked + 1, min(ack.seq, len(self.hashes)) + 1):
                created = self.created_at.pop(seq, None)
                if created is not None:
                    self.fleet.stats.ack_latency_s.append(now - created)
            was = self.acked
            self.acked = min(ack.seq, len(self.hashes))
            del self.unacked[: self.acked - was]
            if was < self.backlog <= self.acked:
                self.fleet.backlog_acked(now)
            if was < self.planned <= self.acked:
                self.fleet.device_done()
            self.patience = (0, self.fleet.ack_timeout_s)  # an ack moved: patience resets
            self._arm_ack_timer()  # progress: the timeout counts from here
        if ack.resend_from is not None:
            self.fleet.stats.resends_asked += 1
            self.inflight_last = 0
        elif self.inflight_last and ack.seq >= self.inflight_last:
            self.inflight_last = 0
        self._pump()

    def _pump(self) -> None:
        if self._writer is None or not self._subscribed or self.inflight_last or not self.unacked:
            return
        events = self.unacked[:BATCH_EVENTS]
        first, last = events[0].seq, events[-1].seq
        ready, self._encoded = self._encoded, None
        if ready is not None and ready[:2] == (first, last):
            payload = ready[2]
        else:
            payload = encode_batch(self.name, self.journal_id, self._prev_hash(), events)
        self._send(publish_packet(self._events_topic, payload, self._next_pid(),
                                  props=BATCH_PROPS))
        self.fleet.stats.batches += 1
        self.inflight_last = last
        self._arm_ack_timer()

    def _arm_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.inflight_last:
            self._ack_timer = asyncio.get_running_loop().call_later(
                self.patience[1], self._ack_timed_out)

    def _ack_timed_out(self) -> None:
        self._ack_timer = None
        if self.inflight_last:
            silences, waited_s = self.patience
            log.info("%s: no ack for %.1f s; resending from %d", self.name, waited_s,
                     self.acked + 1)
            self.fleet.stats.resends_after_timeout += 1
            self.inflight_last = 0
            low = self.fleet.ack_timeout_s
            self.patience = (silences + 1, max(low, backoff_delay(
                silences + 1, low, low * ACK_PATIENCE_MAX, self.rng)))
            self._pump()


# --- processes and /proc -----------------------------------------------------------------------

# /proc/PID/task/TID/children lists a thread's children (CONFIG_PROC_CHILDREN); without those
# files the tree is found from every process's parent instead.
_CHILDREN_FILES = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()
_GONE = (FileNotFoundError, ProcessLookupError)  # a process that exited while it was read


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on: [1] is the parent; [11:15] utime, stime,
    cutime, cstime (proc(5)). The name before them, in parentheses, may hold spaces."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def proc_cpu_s(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + sys) of `pid`. With `reaped`, also those of the children it has
    waited for: a process tree's sum then keeps the time of a child that exited (a worker
    restarted, a PostgreSQL backend whose connection closed) between two marks."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if reaped else 0)
    return ticks / CLOCK_TICKS_PER_S


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except _GONE:
        return kids
    for tid in tasks:
        with contextlib.suppress(*_GONE):
            kids.extend(int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                        .split())
    return kids


def _children_by_parent() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(*_GONE):
                found.setdefault(int(_stat_fields(int(name))[1]), []).append(int(name))
    return found


def process_tree(root: int) -> list[int]:
    """`root` and every descendant alive now: the depot's supervisor and its workers, or the
    postmaster and its backends. Empty when `root` is gone."""
    by_parent = None if _CHILDREN_FILES else _children_by_parent()
    tree: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if not Path(f"/proc/{pid}").exists():
            continue
        tree.append(pid)
        todo.extend(_children(pid) if by_parent is None else by_parent.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> dict[int, float]:
    """CPU seconds of each process of `root`'s tree, with the children each has reaped."""
    out: dict[int, float] = {}
    for pid in process_tree(root):
        with contextlib.suppress(*_GONE):
            out[pid] = proc_cpu_s(pid, reaped=True)
    return out


def tree_peak_rss_mb(root: int) -> tuple[float, int]:
    """The sum of the peak resident sizes (VmHWM) of `root`'s tree, and how many processes."""
    kb = count = 0
    for pid in process_tree(root):
        with contextlib.suppress(*_GONE):
            kb += proc_status_kb(pid, "VmHWM")
            count += 1
    return kb / 1024, count


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot: /proc/stat's first line but idle and iowait
    (guest time is already inside user)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds at one moment: each depot and PostgreSQL process (with the children it
    reaped), the broker, this process (the fleet) and the whole machine."""

    at: float
    depot: Mapping[int, float]
    database: Mapping[int, float] | None
    broker_s: float
    bench_s: float
    machine_s: float


@dataclass(frozen=True)
class Watched:
    """The processes a run reads from /proc: the depot's first process (the supervisor when
    there are workers), the broker and, for a PostgreSQL set-up, the postmaster."""

    depot: int
    broker: int
    database: int | None

    def mark(self) -> CpuMark:
        return CpuMark(
            at=time.perf_counter(),
            depot=tree_cpu_s(self.depot),
            database=tree_cpu_s(self.database) if self.database is not None else None,
            broker_s=proc_cpu_s(self.broker),
            bench_s=time.process_time(),
            machine_s=machine_busy_s(),
        )


def cpu_pct(a: CpuMark, b: CpuMark) -> dict[str, float | None]:
    """% of one core each part spent between two marks. `depot` sums the depot's processes,
    `depot_busiest` is the one that spent most; `other` is the machine's busy time that none
    of ours account for: other people's jobs and the kernel's own work (loopback softirqs)."""
    wall = b.at - a.at
    if wall <= 0:
        wall = float("inf")
    depot = sum(b.depot.values()) - sum(a.depot.values())
    busiest = max((s - a.depot.get(pid, 0.0) for pid, s in b.depot.items()), default=0.0)
    database = (sum(b.database.values()) - sum(a.database.values())
                if a.database is not None and b.database is not None else None)
    broker = b.broker_s - a.broker_s
    bench = b.bench_s - a.bench_s
    machine = b.machine_s - a.machine_s
    other = max(0.0, machine - depot - (database or 0.0) - broker - bench)

    def pct(seconds: float) -> float:
        return rounded(seconds / wall * 100, 1)

    return {
        "depot": pct(depot),
        "depot_busiest": pct(busiest),
        "database": pct(database) if database is not None else None,
        "broker": pct(broker),
        "bench": pct(bench),
        "machine": pct(machine),
        "other": pct(other),
    }


def raise_fd_limit(needed: int) -> int:
    """Lift this process's soft open-file limit to `needed` (Mosquitto, started after, inherits
    it): every device is a socket here and another in the broker. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            try:  # root may raise the hard limit too
                resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            except (ValueError, OSError) as exc:
                raise BenchError(f"{needed} open files needed, the hard limit is {hard}: "
                                 f"{exc} (raise `ulimit -Hn`)") from None
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_depot(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the depot, as an operator stops it: the supervisor stops its workers and each
    closes its store. After DEPOT_STOP_TIMEOUT_S, or if anything of its process group (started
    as a session of its own) outlives it, the group is killed: no worker is left behind."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(DEPOT_STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            log.warning("depot pid %d or its workers did not stop; killing its group", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
            deadline = time.monotonic() + STOP_TIMEOUT_S  # orphans are reaped by init
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    return proc.returncode


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def worker_restarts(depot_log: Path) -> int:
    """Workers the supervisor restarted during the run (depot.workers logs each); a restart
    means a worker died mid-run and the devices resent its share."""
    try:
        text = depot_log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "exited (" in line and "restarting" in line)


def disk_commit_ms(workdir: Path, n: int = 50) -> float:
    """Median of `n` one-row commits (WAL, synchronous=FULL) here: what one depot write costs."""
    path = workdir / "commit-probe.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (x INTEGER)")
        took = []
        for i in range(n):
            started = time.perf_counter()
            db.execute("INSERT INTO t VALUES (?)", (i,))
            took.append(time.perf_counter() - started)
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rounded(percentile(took, 50) * 1000, 3)


# --- the depot's configuration ---------------------------------------------------------------


def depot_accounts(setup: Setup, depot_password: str, workers: Mapping[str, str]
                   ) -> dict[int, str]:
    """Worker number → the password of its broker account: `depot` alone, else `depot-K`
    (from `Broker.depot_workers`)."""
    if setup.workers == 1:
        return {1: depot_password}
    try:
        return {k: workers[f"{DEPOT_USER}-{k}"] for k in range(1, setup.workers + 1)}
    except KeyError as exc:
        raise BenchError(f"the broker has no account {exc} for a depot worker") from None


def write_depot_config(workdir: Path, setup: Setup, database: str, port: int,
                       passwords: Mapping[int, str]) -> Path:
    """depot.toml for the whole service, and each worker's password file (mode 0600).

    Only what a morning's ingest needs, the same for every set-up: the database, the worker
    count and the broker. No API, keys or webhooks: nothing in a fleet of scans would use them,
    and a set-up must differ from the baseline only in back end and workers.
    """
    template = "depot-{worker}.password" if setup.workers > 1 else "depot.password"
    for worker, password in passwords.items():
        path = workdir / template.replace("{worker}", str(worker))
        path.touch(0o600)
        path.write_text(password + "\n")
    config = workdir / "depot.toml"
    config.write_text("\n".join([
        "[depot]",
        f"database = {json.dumps(database)}",  # a JSON string is a TOML basic string
        f"lat = {DEPOT_LAT}",
        f"lon = {DEPOT_LON}",
        "vans = []",
        f"workers = {setup.workers}",
        "",
        "[broker]",
        f"host = {json.dumps(HOST)}",
        f"port = {port}",
        f"username = {json.dumps(DEPOT_USER)}",
        f"password_file = {json.dumps(template)}",
        "",
    ]))
    return config


def depot_command(config: Path, workers: int) -> list[str]:
    """The production depot service; with workers > 1 the supervisor of its workers."""
    return [sys.executable, "-m", "lastmile", "depot", "--config", str(config),
            "--workers", str(workers)]


# --- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every run sends: the same fleet, the same sizes, the same seed."""

    devices: int
    backlog: int
    steady: int  # events per device in the steady phase
    steady_s: float
    jitter_s: float
    ack_timeout_s: float
    seed: int


def steady_events_per_device(steady_s: float, rate: float) -> int:
    """The same count for every device, so `events` is exact: at least one scan each."""
    return max(1, round(steady_s * rate))


def device_names(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"van-{i:0{width}d}" for i in range(1, n + 1)]


def build_fleet(fleet: Fleet, plan: Plan, passwords: dict[str, str],
                payloads: list[tuple[dict[str, Any], str]], rng: random.Random) -> None:
    """Every device with its hour of backlog, timed as the scans were made, and its plan."""
    now_mono, now_wall = time.monotonic_ns(), time.time_ns()
    for name in device_names(plan.devices):
        d = Device(fleet, name, passwords[name], rng)
        # Scans at random moments of the outage, oldest first: its events' clocks as a van's.
        for ago_s in sorted((rng.uniform(0, BACKLOG_SPAN_S) for _ in range(plan.backlog)),
                            reverse=True):
            payload, text = payloads[rng.randrange(len(payloads))]
            ago_ns = int(ago_s * 1e9)
            d.append(payload, text, now_mono + d.mono_offset_ns - ago_ns, now_wall - ago_ns)
        d.backlog = plan.backlog
        d.planned = plan.backlog + plan.steady
        d.prepare_first_batch()
        fleet.add(d)
    fleet.expect()


@contextlib.contextmanager
def watch_exit(pid: int) -> Iterator[asyncio.Future[None]]:
    """A future done when the child `pid` exits (a pidfd turns readable): a dead depot ends
    the wait at once instead of at its timeout."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    fd = os.pidfd_open(pid)

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        yield exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def wait_for_event(fleet: Fleet, event: asyncio.Event, timeout: float,
                         depot_exited: asyncio.Future[None]) -> bool:
    """Whether `event` was set within `timeout`; BenchError at once if the depot died or the
    broker refused a device meanwhile."""
    waiter = asyncio.create_task(event.wait())
    refused = asyncio.create_task(fleet.refused.wait())
    watched: set[asyncio.Future[Any]] = {waiter, refused, depot_exited}
    try:
        await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        refused.cancel()
    if event.is_set():
        return True
    if depot_exited.done():
        raise BenchError("the depot exited during the run")
    if fleet.refused.is_set():
        raise BenchError(f"the broker refused {fleet.refusal}")
    return False


async def await_workers(broker_log: Path, workers: int,
                        depot_exited: asyncio.Future[None]) -> None:
    """Return once every worker's account (`depot-1..N`) has connected to the broker.

    The probe's ack proves only that one worker listens: the others may still be starting,
    and the first to subscribe would take the whole morning's first seconds alone. Mosquitto
    logs each connection with its username (`connection_messages`); each worker subscribes
    from its connect callback, a few milliseconds later, before the probe's round trips end.
    """
    wanted = {k: f"u'{DEPOT_USER}-{k}')" for k in range(1, workers + 1)}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEPOT_READY_TIMEOUT_S
    while True:
        try:
            text = broker_log.read_text(errors="replace")
        except OSError:
            text = ""
        missing = [k for k, needle in wanted.items() if needle not in text]
        if not missing:
            return
        if depot_exited.done():
            raise BenchError("the depot exited before its workers connected")
        if loop.time() >= deadline:
            raise BenchError(f"depot workers {missing} did not connect to the broker in "
                             f"{DEPOT_READY_TIMEOUT_S} s")
        await asyncio.sleep(WORKERS_POLL_S)


async def await_depot(port: int, password: str, depot_exited: asyncio.Future[None],
                      rng: random.Random) -> None:
    """Return once the depot acknowledged a batch from the probe device.

    Until then the depot may not have subscribed, and a device's batch would be lost and wait
    out its 10 s ack timeout: the run would measure the timeout, not the depot. The probe
    resends every PROBE_ACK_TIMEOUT_S; the depot deduplicates.
    """
    fleet = Fleet(port, ack_timeout_s=PROBE_ACK_TIMEOUT_S)
    probe = Device(fleet, PROBE, password, rng)
    payload = {"probe": "bench fleet"}
    probe.append(payload, canonical_payload(payload), time.monotonic_ns(), time.time_ns())
    probe.backlog = probe.planned = 1
    fleet.add(probe)
    fleet.expect()
    task = asyncio.create_task(probe.run(0.0))
    try:
        if not await wait_for_event(fleet, fleet.all_done, DEPOT_READY_TIMEOUT_S,
                                    depot_exited):
            raise BenchError(f"the depot acknowledged nothing in {DEPOT_READY_TIMEOUT_S} s")
    finally:
        await fleet.stop([task])


@dataclass
class Morning:
    """What one morning measured: the fleet (its counters and journals), the drain's seconds,
    CPU marks at the start, at the drain's end and after the steady phase, and the depot's
    summed peak memory and process count read at the end."""

    fleet: Fleet
    drain_s: float
    start: CpuMark
    drained: CpuMark
    steady: CpuMark
    depot_rss_mb: float
    depot_processes: int


async def morning(plan: Plan, setup: Setup, broker: Broker, passwords: dict[str, str],
                  depot: subprocess.Popen[bytes], watched: Watched,
                  payloads: list[tuple[dict[str, Any], str]]) -> Morning:
    """The scenario on one depot: its workers connected, probe, backlog drain, steady scans."""
    rng = random.Random(plan.seed)
    with watch_exit(depot.pid) as depot_exited:
        if setup.workers > 1:
            await await_workers(broker.log_path, setup.workers, depot_exited)
        await await_depot(broker.port, passwords[PROBE], depot_exited, rng)
        fleet = Fleet(broker.port, ack_timeout_s=plan.ack_timeout_s)
        build_fleet(fleet, plan, passwords, payloads, rng)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            start = watched.mark()
            tasks = [asyncio.create_task(d.run(rng.uniform(0, plan.jitter_s)))
                     for d in fleet.devices]
            if not await wait_for_event(fleet, fleet.backlogs_done, DRAIN_TIMEOUT_S,
                                        depot_exited):
                raise BenchError(f"{fleet.backlogs_left} of {plan.devices} devices still had "
                                 f"backlog after {DRAIN_TIMEOUT_S} s")
            drained = watched.mark()
            assert fleet.first_attempt_at is not None
            drain_s = fleet.backlog_acked_at - fleet.first_attempt_at
            # The steady phase: each device's scans evenly spread, each at a random moment of
            # its slot, so the depot sees a steady trickle rather than a fleet in lock-step.
            t0 = loop.time()
            slot = plan.steady_s / plan.steady
            for d in fleet.devices:
                for k in range(plan.steady):
                    payload, text = payloads[rng.randrange(len(payloads))]
                    loop.call_at(t0 + (k + rng.random()) * slot, d.scan, payload, text)
            if not await wait_for_event(fleet, fleet.all_done,
                                        plan.steady_s + STEADY_ACK_TIMEOUT_S, depot_exited):
                raise BenchError(f"{fleet.devices_left} of {plan.devices} devices still waited "
                                 f"for acks {STEADY_ACK_TIMEOUT_S} s after the steady phase")
            steady = watched.mark()
            rss_mb, processes = tree_peak_rss_mb(depot.pid)
        finally:
            await fleet.stop(tasks)
    return Morning(fleet, drain_s, start, drained, steady, rss_mb, processes)


@dataclass
class RunResult:
    setup: Setup
    drain_s: float
    backlog_events: int
    latencies_s: list[float]
    cpu_drain: dict[str, float | None]
    cpu_steady: dict[str, float | None]
    depot_rss_mb: float
    depot_processes: int
    depot_restarts: int
    depot_exit_status: int
    broker_rss_mb: float
    load_before: float
    started_at: str
    stats: Counters
    checks: dict[str, int]

    def figures(self) -> dict[str, Any]:
        lat_ms = [s * 1000 for s in self.latencies_s]
        st = self.stats
        drain, steady = self.cpu_drain, self.cpu_steady
        return {
            "backend": self.setup.backend,
            "workers": self.setup.workers,
            "events_per_s": round(self.backlog_events / self.drain_s) if self.drain_s else None,
            "drain_s": rounded(self.drain_s, 2),
            "ack_p50_ms": rounded(percentile(lat_ms, 50), 1) if lat_ms else None,
            "ack_p99_ms": rounded(percentile(lat_ms, 99), 1) if lat_ms else None,
            # CPU over the drain, % of one core; the same names with _steady: the steady phase.
            "depot_cpu_pct": drain["depot"],
            "depot_busiest_process_cpu_pct": drain["depot_busiest"],
            "database_cpu_pct": drain["database"],  # None: SQLite, inside the depot's processes
            "broker_cpu_pct": drain["broker"],
            "bench_cpu_pct": drain["bench"],
            "other_cpu_pct": drain["other"],
            "machine_cpu_pct": drain["machine"],
            "depot_cpu_pct_steady": steady["depot"],
            "depot_busiest_process_cpu_pct_steady": steady["depot_busiest"],
            "database_cpu_pct_steady": steady["database"],
            "broker_cpu_pct_steady": steady["broker"],
            "bench_cpu_pct_steady": steady["bench"],
            "other_cpu_pct_steady": steady["other"],
            "machine_cpu_pct_steady": steady["machine"],
            "depot_rss_mb": rounded(self.depot_rss_mb, 1),  # summed over its processes
            "depot_processes": self.depot_processes,
            "depot_worker_restarts": self.depot_restarts,
            "depot_exit_status": self.depot_exit_status,
            "broker_rss_mb": rounded(self.broker_rss_mb, 1),
            "loadavg_1m_before": rounded(self.load_before, 2),
            "started_at": self.started_at,  # to line a run up with other jobs on the machine
            "ack_samples": len(lat_ms),
            "ack_max_ms": rounded(max(lat_ms), 1) if lat_ms else None,
            "connect_p50_ms": rounded(percentile(st.connect_s, 50) * 1000, 1),
            "connect_p99_ms": rounded(percentile(st.connect_s, 99) * 1000, 1),
            "connects": st.connects,
            "reconnects": st.reconnects,
            "batches": st.batches,
            # A resent batch is decoded and verified again by the depot, then deduplicated.
            "resends": st.resends_after_timeout + st.resends_asked,
            "resends_after_ack_timeout": st.resends_after_timeout,
            "resends_asked_by_depot": st.resends_asked,
            "refused_pubacks": st.refused_pubacks,
            **self.checks,
        }


def run_setup(setup: Setup, plan: Plan, workdir: Path,
              payloads: list[tuple[dict[str, Any], str]],
              postgres: PostgresServer | None, index: int) -> RunResult:
    """A fresh broker, a fresh database and the whole depot service for one set-up; the
    morning; the read-back."""
    workdir.mkdir(parents=True)
    passwords = {name: secrets.token_urlsafe(12) for name in device_names(plan.devices)}
    passwords[PROBE] = secrets.token_urlsafe(12)
    depot_password = secrets.token_urlsafe(18)
    database_pid: int | None = None
    if setup.backend == "postgresql":
        if postgres is None or postgres.pid is None:
            raise BenchError(f"{setup.name}: the PostgreSQL server is not running")
        database = postgres.new_database(f"fleet_{index}_{setup.backend}_{setup.workers}")
        database_pid = postgres.pid
    else:
        database = str(workdir / "depot.db")
    depot_log = workdir / "depot.log"
    run_start_ns = time.time_ns()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()[0]
    with Broker(workdir / "broker", devices=passwords, depot=(DEPOT_USER, depot_password),
                depot_workers=setup.workers) as broker:
        broker_pid = broker.pid
        if broker_pid is None:
            raise BenchError("the broker is not running")
        config = write_depot_config(
            workdir, setup, database, broker.port,
            depot_accounts(setup, depot_password, broker.depot_workers))
        with depot_log.open("wb") as out:
            # A session of its own: stop_depot can end the supervisor's workers with it.
            depot = subprocess.Popen(depot_command(config, setup.workers),
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=workdir,
                                     start_new_session=True)
        try:
            watched = Watched(depot.pid, broker_pid, database_pid)
            try:
                m = asyncio.run(morning(plan, setup, broker, passwords, depot, watched,
                                        payloads))
            except BenchError as exc:
                pg_log = (f"\npostgres log:\n{postgres.log_tail(10)}"
                          if postgres is not None and database_pid is not None else "")
                raise BenchError(f"{setup.name}: {exc}\ndepot log:\n{log_tail(depot_log)}\n"
                                 f"broker log:\n{broker.log_tail(10)}{pg_log}") from None
            broker_mb = proc_status_kb(broker_pid, "VmHWM") / 1024
        finally:
            status = stop_depot(depot)
    if status != 0:
        log.warning("the depot exited with status %s:\n%s", status, log_tail(depot_log))
    checks = read_back(setup.backend, database, m.fleet.devices, run_start_ns)
    return RunResult(
        setup=setup,
        drain_s=m.drain_s,
        backlog_events=plan.devices * plan.backlog,
        latencies_s=m.fleet.stats.ack_latency_s,
        cpu_drain=cpu_pct(m.start, m.drained),
        cpu_steady=cpu_pct(m.drained, m.steady),
        depot_rss_mb=m.depot_rss_mb,
        depot_processes=m.depot_processes,
        depot_restarts=worker_restarts(depot_log),
        depot_exit_status=status,
        broker_rss_mb=broker_mb,
        load_before=load_before,
        started_at=started_at,
        stats=m.fleet.stats,
        checks=checks,
    )


# --- reading the depot back ----------------------------------------------------------------------


class _Cursor(Protocol):
    def execute(self, sql: str) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@contextlib.contextmanager
def open_readonly(backend: str, database: str) -> Iterator[_Cursor]:
    """A read-only cursor on the depot's database (a SQLite path or a PostgreSQL URL)."""
    if backend == "sqlite":
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            yield conn.cursor()
        finally:
            conn.close()
    elif backend == "postgresql":
        import psycopg  # only a PostgreSQL set-up needs the driver

        with psycopg.connect(database, connect_timeout=DATABASE_TIMEOUT_S,
                             options=f"-c statement_timeout={DATABASE_TIMEOUT_S}s") as pg:
            pg.read_only = True
            with pg.cursor() as cur:
                yield cur
    else:
        raise BenchError(f"no read-back for back end {backend!r}")


def read_back(backend: str, database: str, devices: Sequence[Device],
              run_start_ns: int) -> dict[str, int]:
    """Every device's journal against what the depot stored, event by event.

    Only this run's streams count (device and journal id, which is random per run), though
    each set-up has a fresh database: the probe's stream is not a device's. Queries take no
    parameters: the same text runs on either back end.
    """
    expected = {(d.name, d.journal_id): d.hashes for d in devices}
    names = {d.name for d in devices}
    seen: dict[tuple[str, str], set[int]] = {key: set() for key in expected}
    duplicates = altered = 0
    with open_readonly(backend, database) as cur:
        cur.execute("SELECT device, journal, seq, hash FROM events")
        for device, journal, seq, digest in cur.fetchall():
            key = (device, journal)
            hashes = expected.get(key)
            if hashes is None:
                continue  # another run's stream
            if seq in seen[key] or not 1 <= seq <= len(hashes):
                duplicates += 1  # stored twice, or an event this device never made
                continue
            seen[key].add(seq)
            if bytes(digest) != hashes[seq - 1]:
                altered += 1
        cur.execute("SELECT device, journal FROM gaps")
        gaps = sum(1 for device, journal in cur.fetchall() if (device, journal) in expected)
        cur.execute("SELECT topic, received_ns FROM quarantine")
        quarantined = 0
        for topic, received_ns in cur.fetchall():
            with contextlib.suppress(WireError):
                if split_topic(topic)[0] in names and received_ns >= run_start_ns:
                    quarantined += 1
    lost = sum(len(hashes) - len(seen[key]) for key, hashes in expected.items())
    return {
        "events_stored": sum(len(s) for s in seen.values()),
        "lost": lost,
        "duplicates": duplicates,
        "gaps": gaps,
        "chain_breaks": quarantined + altered,
        "quarantined": quarantined,
    }


def describe_postgres(server: PostgresServer) -> dict[str, Any]:
    """The private server's version and the settings a commit's cost depends on."""
    import psycopg

    settings = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                "wal_level", "shared_buffers", "max_connections")
    out: dict[str, Any] = {}
    with psycopg.connect(server.url, connect_timeout=DATABASE_TIMEOUT_S) as pg:
        for name in settings:
            row = pg.execute(f"SHOW {name}").fetchone()
            out[name] = row[0] if row else None
    out["cluster_fstype"] = describe_mount(server.workdir).get("fstype")
    durable = server.durable and out.get("fsync") == "on" and out.get("synchronous_commit") == "on"
    out["note"] = (
        "the bench's private cluster (simulators.postgres), durable: a commit waits for its "
        "flush, as SQLite's does with synchronous=FULL"
        if durable
        else "the bench's private cluster with durability off: a commit flushes nothing, where "
        "SQLite's (synchronous=FULL) does; read the PostgreSQL figures as optimistic"
    )
    return out


# --- the report --------------------------------------------------------------------------------

TARGET_PHASE = {  # the phase whose CPU explains a missed target
    "events_per_s_postgresql_10000": "drain",
    "drain_under_60s": "drain",
    "ack_p99_under_250ms": "steady",
}


def runs_missing(target: str, runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that fall short of `target` (for the events/s target: every PostgreSQL run,
    since the best one was short)."""
    if target == "events_per_s_postgresql_10000":
        return [r for r in runs if r["backend"] == "postgresql"]
    if target == "drain_under_60s":
        return [r for r in runs if r["drain_s"] >= TARGET_DRAIN_S]
    return [r for r in runs if r["ack_p99_ms"] is None or r["ack_p99_ms"] >= TARGET_ACK_P99_MS]


def phase_note(run: dict[str, Any], phase: str, cores: int, commit_ms: float) -> str:
    """Which process held the cores in one phase of one run, from the CPU shares measured."""
    sfx = "" if phase == "drain" else "_steady"
    depot, busiest = run[f"depot_cpu_pct{sfx}"], run[f"depot_busiest_process_cpu_pct{sfx}"]
    database, broker = run[f"database_cpu_pct{sfx}"], run[f"broker_cpu_pct{sfx}"]
    bench, other = run[f"bench_cpu_pct{sfx}"], run[f"other_cpu_pct{sfx}"]
    shares = {"the depot": depot, "PostgreSQL": database, "the broker": broker,
              "the fleet simulator": bench, "the rest of the machine": other}
    measured = {k: v for k, v in shares.items() if v is not None}
    total = sum(measured.values())
    largest = max(measured, key=lambda k: measured[k])
    text = (f"{phase} ({run['backend']}:{run['workers']}): depot {depot} % "
            f"({run['depot_processes']} process{'es' if run['depot_processes'] > 1 else ''}, "
            f"busiest {busiest} %)"
            + (f", PostgreSQL {database} %" if database is not None else "")
            + f", broker {broker} %, fleet simulator {bench} %, rest of the machine {other} % "
            "of one core; ")
    if total >= BUSY_PCT * cores:
        verdict = (f"the machine's {cores} cores are full ({total:.0f} % of {cores * 100} %): "
                   f"depot, database, broker and fleet share them, and {largest} takes most")
    elif busiest >= BUSY_PCT:
        verdict = ("a depot process is CPU-bound: each worker takes its share of the batches "
                   "on one thread (decode, hash chain, store, ack) and projects them on "
                   "another under the same database lock, so one core per worker is the "
                   "ceiling")
    elif database is not None and database >= BUSY_PCT:
        verdict = "PostgreSQL is CPU-bound"
    elif database is not None and run["workers"] == 1 and depot + database >= BUSY_PCT:
        verdict = ("the depot's one process and its PostgreSQL backend take turns (every "
                   "statement a round trip on one connection): together one core's work in "
                   "series, however many cores are free")
    elif bench >= BUSY_PCT:
        verdict = "the simulated fleet (one Python process) is the bottleneck, not the depot"
    elif broker >= BUSY_PCT:
        verdict = "the broker (one thread) is CPU-bound"
    elif run["backend"] == "sqlite":
        verdict = (f"no process is CPU-bound (the largest share is {largest}'s): the time "
                   f"goes to waiting, on commits ({commit_ms} ms each on this disk) and "
                   "acknowledgement round trips")
    else:
        verdict = (f"no process is CPU-bound (the largest share is {largest}'s): the time "
                   "goes to waiting, on round trips to PostgreSQL"
                   + (", on the workers' locks" if run["workers"] > 1 else "")
                   + " and on acknowledgements")
    if other >= NOTABLE_PCT and largest != "the rest of the machine":
        verdict += f"; other jobs on the machine took {other} % of a core meanwhile"
    return text + verdict


def where_time_goes(runs: Sequence[dict[str, Any]], missed: Sequence[str], cores: int,
                    commit_ms: float) -> str:
    """For each missed target, the runs that missed it and where their CPU went then."""
    notes: list[str] = []
    done: set[tuple[int, str]] = set()
    for target in missed:
        phase = TARGET_PHASE[target]
        for run in runs_missing(target, runs):
            key = (runs.index(run), phase)
            if key in done:
                continue
            done.add(key)
            note = phase_note(run, phase, cores, commit_ms)
            if run["resends"]:
                note += (f"; {run['resends']} batches were sent again (ack timeout or the "
                         "depot's resend), each decoded and verified again before it was "
                         "found stored")
            if run["depot_worker_restarts"]:
                note += f"; {run['depot_worker_restarts']} depot workers died and restarted"
            notes.append(note)
    return f"missed {', '.join(missed)}. " + " | ".join(notes)


@contextlib.contextmanager
def terminate_as_error() -> Iterator[None]:
    """SIGTERM (a CI job's timeout, `kill`) raises BenchError, so that every `finally` stops
    what it started: Python's default exits at once and would leave the broker, the depot and
    PostgreSQL running. A second SIGTERM during that cleanup is ignored (the cleanup is
    bounded; SIGKILL still ends it)."""

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise BenchError(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.devices < 1 or args.backlog_events < 1:
        raise BenchError("--devices and --backlog-events must be at least 1")
    if min(args.steady_s, args.steady_rate, args.ack_timeout_s) <= 0 or (
            args.reconnect_jitter_s < 0):
        raise BenchError("--steady-s, --steady-rate and --ack-timeout-s must be positive, "
                         "--reconnect-jitter-s not negative")
    if find_mosquitto() is None:
        raise BenchError("bench fleet needs Mosquitto (apt-get install mosquitto)")
    from simulators.postgres import PostgresError, PostgresServer, find_postgres

    setups: tuple[Setup, ...] = args.setups
    chosen = list(setups)
    not_run: list[dict[str, Any]] = []
    if any(s.backend == "postgresql" for s in setups) and find_postgres() is None:
        why = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; Debian: "
               "apt-get install postgresql)")
        log.warning("%s: running only the SQLite set-ups", why)
        chosen = [s for s in setups if s.backend != "postgresql"]
        not_run = [{"backend": s.backend, "workers": s.workers, "why": why}
                   for s in setups if s.backend == "postgresql"]
    if not chosen:
        raise BenchError(f"no set-up can run: {not_run[0]['why'] if not_run else 'none asked'}")
    fd_limit = raise_fd_limit(args.devices + FD_HEADROOM)
    plan = Plan(
        devices=args.devices,
        backlog=args.backlog_events,
        steady=steady_events_per_device(args.steady_s, args.steady_rate),
        steady_s=args.steady_s,
        jitter_s=args.reconnect_jitter_s,
        ack_timeout_s=args.ack_timeout_s,
        seed=args.seed,
    )
    rng = random.Random(plan.seed)
    payloads = [(p, canonical_payload(p))
                for p in scan_payloads(min(PAYLOAD_POOL, plan.devices * plan.backlog), rng)]
    results: list[RunResult] = []
    load_before = os.getloadavg()[0]
    database_server: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminate_as_error())
        workdir = stack.enter_context(scratch_dir(args.dir, "fleet"))
        commit_ms = disk_commit_ms(workdir)
        postgres: PostgresServer | None = None
        if any(s.backend == "postgresql" for s in chosen):
            # One server for the whole run (a database of its own per set-up), stopped and
            # removed by the stack whatever happens.
            postgres = PostgresServer(durable=True)  # as SQLite commits: synchronous=FULL
            try:
                stack.enter_context(postgres)
                database_server = describe_postgres(postgres)
            except PostgresError as exc:
                raise BenchError(f"the PostgreSQL server did not start: {exc}") from None
        for index, setup in enumerate(chosen, 1):
            log.info("running %s with %d devices", setup.name, plan.devices)
            try:
                results.append(run_setup(setup, plan, workdir / f"{index}-{setup.backend}-"
                                         f"{setup.workers}", payloads, postgres, index))
            except PostgresError as exc:
                raise BenchError(f"{setup.name}: {exc}") from None
        mount = describe_mount(workdir)
    runs = [r.figures() for r in results]
    return report(plan, runs, not_run, commit_ms, fd_limit, mount, load_before,
                  database_server)


def _ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return None
    return rounded(value / base, 3)


def report(plan: Plan, runs: list[dict[str, Any]], not_run: list[dict[str, Any]],
           commit_ms: float, fd_limit: int, mount: dict[str, Any], load_before: float,
           database_server: dict[str, Any] | None) -> dict[str, Any]:
    base = runs[0]
    compared = ("events_per_s", "drain_s", "ack_p50_ms", "ack_p99_ms", "depot_cpu_pct",
                "depot_rss_mb")
    for r in runs:
        r["ratios_to_baseline"] = {k: _ratio(r[k], base[k]) for k in compared}
    ratios = [{"backend": r["backend"], "workers": r["workers"], **r["ratios_to_baseline"]}
              for r in runs]
    at_scale = plan.devices >= TARGET_DEVICES and plan.backlog >= TARGET_BACKLOG_EVENTS
    pg = [r["events_per_s"] for r in runs
          if r["backend"] == "postgresql" and r["events_per_s"] is not None]
    targets_met: dict[str, bool | None] = {
        # The best PostgreSQL set-up counts: that is the one a carrier would run.
        "events_per_s_postgresql_10000": (
            max(pg) >= TARGET_EVENTS_PER_S_POSTGRESQL if pg and at_scale else None),
        # Every set-up must drain and acknowledge in time: each is a way to run the depot.
        "drain_under_60s": (all(r["drain_s"] < TARGET_DRAIN_S for r in runs)
                            if at_scale else None),
        "ack_p99_under_250ms": (
            all(r["ack_p99_ms"] is not None and r["ack_p99_ms"] < TARGET_ACK_P99_MS
                for r in runs) if at_scale else None),
    }
    out: dict[str, Any] = {
        "benchmark": "fleet",
        "devices": plan.devices,
        "events": plan.devices * (plan.backlog + plan.steady),  # per run: every run the same
        "backlog_events_per_device": plan.backlog,
        "steady_events_per_device": plan.steady,
        "lost": sum(r["lost"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "gaps": sum(r["gaps"] for r in runs),
        "chain_breaks": sum(r["chain_breaks"] for r in runs),
        "runs": runs,
        "ratios": ratios,
        "setups_not_run": not_run,
        "targets": {
            "events_per_s_postgresql_min": TARGET_EVENTS_PER_S_POSTGRESQL,
            "drain_s_max": TARGET_DRAIN_S,
            "ack_p99_ms_max": TARGET_ACK_P99_MS,
            "judged_at": f"{TARGET_DEVICES} devices with {TARGET_BACKLOG_EVENTS} events each "
                         "(null below that, or with no PostgreSQL run); events/s: the best "
                         "PostgreSQL run; drain and ack p99: every run",
        },
        "targets_met": targets_met,
        "reconnect_jitter_s": plan.jitter_s,
        "ack_timeout_s": plan.ack_timeout_s,
        "steady_s": plan.steady_s,
        "transport": "MQTT v5, plain TCP on 127.0.0.1",
        "depot": "the whole service: python -m lastmile depot --config depot.toml --workers N",
        "disk_commit_ms": commit_ms,
        "database_server": database_server,
        "fd_limit": fd_limit,
        "mount": mount,
        # Another job on the machine takes cores from fleet, broker and depot alike: see each
        # run's loadavg_1m_before and other_cpu_pct too.
        "host": {**host_facts(), "loadavg_1m_before": rounded(load_before, 2),
                 "loadavg_1m_after": rounded(os.getloadavg()[0], 2)},
    }
    missed = [name for name, ok in targets_met.items() if ok is False]
    if missed:
        out["where_time_goes"] = where_time_goes(runs, missed, os.cpu_count() or 1, commit_ms)
    return out


def summary(r: dict[str, Any]) -> str:
    runs = "; ".join(
        f"{x['backend']}:{x['workers']}: {x['events_per_s']} events/s, drain {x['drain_s']} s, "
        f"ack p50 {x['ack_p50_ms']} ms p99 {x['ack_p99_ms']} ms, depot {x['depot_cpu_pct']} % "
        f"CPU {x['depot_rss_mb']} MB"
        + (f", database {x['database_cpu_pct']} % CPU" if x["database_cpu_pct"] is not None
           else "")
        for x in r["runs"]
    )
    not_run = "".join(f"; {x['backend']}:{x['workers']} not run: {x['why']}"
                      for x in r["setups_not_run"])
    met = ", ".join(f"{k}: {v}" for k, v in r["targets_met"].items())
    return (f"fleet: {r['devices']} devices, {r['events']} events per run; {runs}{not_run}; "
            f"lost {r['lost']}, duplicates {r['duplicates']}, gaps {r['gaps']}, "
            f"chain breaks {r['chain_breaks']}; targets {met}")
