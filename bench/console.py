"""`bench console`: how fast and how big the operators' console pages are on a busy depot.

What is measured: a depot database is filled with `--parcels` (default 10,000) parcels in the
states of a working day, each with the timeline the product itself writes: the merchant's
import (`ParcelBook.receive`), the day's manifests (`ParcelBook.assign`), then what the vans
and lockers journal (real `sync.journal.Journal`s, carried as the wire carries them through
`encode_batch`/`decode_batch`, stored by `DepotStore.ingest` and projected by the book), and
the policy's decisions (`ParcelBook.set_next_action`). The real depot service then starts its
web port (no broker: nothing new arrives while it is measured), an operator signs in through
the sign-in form, and every console page, a parcel search, a parcel's page and a customer's
tracking page (`/t/{token}`) are fetched `--n` times each, round-robin, on one keep-alive
connection. Figures per page: p50/p95 milliseconds (request sent to last byte read) and bytes.

Baseline: `/health` in the same run, on the same connection and database (it too reads the
database: events waiting, the webhook outbox, losses); ratio = page p95 / health p95. It
answers 503 here, and says why: the bench's depot has no broker, so no device could report.

Targets (docs of issue 12): every page p95 < 300 ms and < 200 KB with 10,000 parcels. A page
that answers 404 is reported as missing (its helper has not built it yet), and the targets are
then not met; any other status is reported as it came.

Back ends (`--database`, repeatable): `sqlite` (a file in the scratch directory, the default),
`postgresql` (a private server of the bench's own, `simulators.postgres`), or a
`postgresql://` URL of an empty database.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import re
import secrets
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.rig import BenchError, describe_mount, host_facts, percentile, rounded, scratch_dir
from bench.route import DEPOT, town

TARGET_P95_MS = 300.0
TARGET_BYTES = 200 * 1024
HTTP_TIMEOUT_S = 30.0
VAN_STEP_S = 45  # simulated seconds between two events of one device
BATCH = 1000  # events per wire batch, as an uplink sends them
LOCKER_SIZES = {"S": 12, "M": 8, "L": 4}
USER = "bench"


def _backend(text: str) -> str:
    if text in ("sqlite", "postgresql") or text.startswith(("postgresql://", "postgres://")):
        return text
    raise argparse.ArgumentTypeError("sqlite, postgresql or a postgresql:// URL")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parcels", type=int, default=10_000,
                   help="parcels in the depot's book (default 10000)")
    p.add_argument("--vans", type=int, default=20, help="vans on today's rounds (default 20)")
    p.add_argument("--lockers", type=int, default=4, help="parcel lockers (default 4)")
    p.add_argument("--n", type=int, default=40, help="fetches of each page measured (default 40)")
    p.add_argument("--warmup", type=int, default=3,
                   help="fetches of each page before measuring (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the day (default 1)")
    p.add_argument("--database", type=_backend, action="append", metavar="BACKEND",
                   help="sqlite (default), postgresql (a private server) or a postgresql:// URL "
                   "of an empty database; repeat to measure several")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the scratch directory goes (default: the current directory)")


# --- filling the book ---------------------------------------------------------------------------


@dataclass
class _DeviceClock:
    """A device's synchronised clock that moves `VAN_STEP_S` per event (readable timelines)."""

    wall: int
    boot_id: str = "bench-boot"
    start: int = 0

    def __post_init__(self) -> None:
        self.start = self.wall

    def monotonic_ns(self) -> int:
        return self.wall - self.start

    def wall_ns(self) -> int:
        self.wall += VAN_STEP_S * 10**9
        return self.wall

    def wall_synced(self) -> bool:
        return True


@dataclass
class _BookClock:
    """The depot's clock while the bench writes its own facts: the time the bench says."""

    now: int
    boot_id: str = "bench-depot"

    def monotonic_ns(self) -> int:
        return self.now

    def wall_ns(self) -> int:
        return self.now

    def wall_synced(self) -> bool:
        return True


@dataclass
class _Device:
    name: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def emit(self, kind: str, **payload: Any) -> None:
        self.events.append((kind, payload))


@dataclass
class Filled:
    names: list[str]
    lockers: list[str]
    by_state: dict[str, int]
    events: int
    timeline: int
    seconds: float
    search: str  # a parcel id to search for and to open
    in_locker: str | None  # a parcel whose customer page is measured


_FATES = (("delivered", 75), ("attempted", 12), ("locker", 10), ("returned", 5))
LEFT_BEHIND = 0.02  # parcels a courier could not find in the morning


def fill(spec: str, workdir: Path, *, parcels: int, vans: int, lockers: int, seed: int,
         day_start_ns: int) -> Filled:
    """Fill the depot database `spec` with a working day, through the product's own book,
    journals, wire and ingest (see the module's docstring)."""
    from depot.store import open_database
    from depot.store.events import DepotStore
    from depot.tracking import ParcelBook
    from sync.journal import Journal
    from sync.wire import decode_batch, encode_batch

    started = time.perf_counter()
    rng = random.Random(seed)
    records = town(parcels, seed)
    names = [f"van-{i + 1}" for i in range(vans)]
    locker_names = [f"locker-{i + 1}" for i in range(lockers)]
    clock = _BookClock(day_start_ns - 3600 * 10**9)
    database = open_database(spec)
    try:
        book = ParcelBook(database, clock=clock)  # no reactions queued: the bench decides
        with database.reading() as conn:
            if conn.execute("SELECT count(*) FROM parcels").fetchone()[0]:
                raise BenchError(f"{database.where} already holds parcels; give an empty one")
        # The merchants' import, early in the morning.
        for chunk in _chunks(records, 500):
            with database.transaction():
                for r in chunk:
                    doc = r.to_doc()
                    doc["size"] = rng.choices("SML", weights=(6, 3, 1))[0]
                    doc["locker_ok"] = rng.random() < 0.85
                    clock.now += 10**8
                    book.receive(doc, now_ns=clock.now)
        # Today's manifests: 10 % came in too late for them.
        planned = [r.id for r in records if rng.random() < 0.9]
        per_van = {name: planned[i::vans] for i, name in enumerate(names)} if vans else {}
        for name, ids in per_van.items():
            with database.transaction():
                for stop, pid in enumerate(ids, 1):
                    book.assign(pid, name, stop, 1)
        # The devices' day.
        devices = {n: _Device(n) for n in (*names, *locker_names)}
        attempted: list[str] = []
        returned_all: list[str] = []
        in_locker: list[str] = []
        for k, (name, ids) in enumerate(per_van.items()):
            van = devices[name]
            left = [p for p in ids if rng.random() >= LEFT_BEHIND]
            for stop, pid in enumerate(left, 1):
                van.emit("parcel_loaded", parcel=pid, stop=stop, shelf=f"S{stop % 12 + 1}")
            if k == 0:
                continue  # the first van is still loading
            van.emit("departed", version=1, missing=[p for p in ids if p not in left])
            # Half the vans are still on their round: their last stops are out for delivery.
            visited = len(left) if k % 2 else int(len(left) * 0.8)
            returned: list[str] = []
            for stop, pid in enumerate(left[:visited], 1):
                fate = _fate(rng)
                if fate == "delivered":
                    van.emit("parcel_delivered", parcel=pid, stop=stop, to="recipient",
                             name="J. Jansen", pod={"photo": None, "lat": DEPOT[0],
                                                    "lon": DEPOT[1]})
                elif fate == "attempted":
                    van.emit("delivery_failed", parcel=pid, stop=stop, attempt=1,
                             reason=rng.choice(("not_at_home", "no_access", "business_closed")))
                    attempted.append(pid)
                elif fate == "returned":
                    van.emit("delivery_failed", parcel=pid, stop=stop, attempt=1,
                             reason=rng.choice(("refused", "address_not_found", "damaged")))
                    returned.append(pid)
                elif locker_names:  # to a locker
                    where = locker_names[stop % len(locker_names)]
                    compartment = f"{'ABCD'[stop % 4]}{stop % 16 + 1}"
                    van.emit("delivery_failed", parcel=pid, stop=stop, attempt=1,
                             reason="not_at_home")
                    van.emit("parcel_redirected", parcel=pid, stop=stop, locker=where)
                    van.emit("parcel_dropped_at_locker", parcel=pid, stop=stop, locker=where,
                             compartment=compartment)
                    locker = devices[where]
                    locker.emit("parcel_deposited", parcel=pid, compartment=compartment,
                                size="M", hold_until_ns=day_start_ns + 48 * 3600 * 10**9)
                    roll = rng.random()
                    if roll < 0.4:
                        locker.emit("parcel_picked_up", parcel=pid, compartment=compartment)
                    elif roll < 0.5:
                        locker.emit("hold_expired", parcel=pid, compartment=compartment)
                    else:
                        in_locker.append(pid)
            if visited == len(left):  # back at the depot with what failed for good
                for pid in returned:
                    van.emit("parcel_returned_to_depot", parcel=pid)
            returned_all += returned
        for i, name in enumerate(locker_names):
            if i % 2 == 0:
                devices[name].emit("alarm", alarm="door_forced", compartment="B2",
                                   reason="a door opened without a command")
        events = 0
        for n, device in enumerate(devices.values()):
            events += _journal_and_ingest(
                device, workdir, DepotStore(database), Journal, encode_batch, decode_batch,
                _DeviceClock(day_start_ns + n * 10**9, boot_id=f"boot-{device.name}"),
            )
        while book.waiting_events():
            book.project_new_events(BATCH)
        # The policy's decisions on what failed.
        clock.now = day_start_ns + 11 * 3600 * 10**9
        with database.transaction():
            for pid in attempted:
                book.set_next_action(pid, "second_attempt", reason="a second attempt tomorrow")
            for i, pid in enumerate(returned_all):
                if i % 2:
                    book.set_next_action(pid, "second_attempt", reason="the customer called")
                    continue
                now = book.set_next_action(pid, "return_to_sender", reason="undeliverable")
                if now == "returning" and i % 4 == 0:
                    book.mark_returned_to_sender(pid)  # handed back to the merchant's carrier
        for name in (*names, *locker_names):
            DepotStore(database).set_status(name, "offline" if name == names[-1] else "online")
        with database.reading() as conn:
            by_state = {str(s): int(c) for s, c in
                        conn.execute("SELECT state, count(*) FROM parcels GROUP BY state")}
            timeline = int(conn.execute("SELECT count(*) FROM timeline").fetchone()[0])
    finally:
        database.close()
    search = attempted[0] if attempted else records[0].id
    return Filled(names, locker_names, by_state, events, timeline,
                  time.perf_counter() - started, search, in_locker[0] if in_locker else None)


def _fate(rng: random.Random) -> str:
    return rng.choices([f for f, _ in _FATES], weights=[w for _, w in _FATES])[0]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _journal_and_ingest(device: _Device, workdir: Path, store: Any, journal_type: Any,
                        encode: Any, decode: Any, clock: _DeviceClock) -> int:
    """Journal a device's events (one commit), then carry them to the depot in wire batches."""
    if not device.events:
        return 0
    journal = journal_type(workdir / f"{device.name}.journal.db", device.name, clock=clock)
    try:
        journal.append_many(device.events)
        acked = 0
        while True:
            prev, batch = journal.read(acked, BATCH)
            if not batch:
                break
            result = store.ingest(decode(encode(device.name, journal.journal_id, prev, batch)))
            if result.gap or result.ack.seq <= acked:
                raise BenchError(f"{device.name}: the depot did not take batch after {acked}")
            acked = result.ack.seq
        return acked
    finally:
        journal.close()


# --- measuring ------------------------------------------------------------------------------


class _Client:
    """One keep-alive HTTP/1.1 connection with a session cookie, as a browser tab has."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
        self.conn.connect()
        # As browsers do: without it, a request's second write waits for the server's delayed
        # ACK (40 ms on Linux), which would be measured as the page's time.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                ) -> tuple[int, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, data

    def sign_in(self, name: str, password: str) -> None:
        status, page = self.request("GET", "/signin")
        nonce = re.search(rb'name="nonce" value="([^"]+)"', page)
        if status != 200 or nonce is None:
            raise BenchError(f"the sign-in page answered {status} without its form")
        status, _ = self.request("POST", "/signin", {
            "nonce": nonce.group(1).decode(), "name": name, "password": password,
            "next": "/console"})
        if status != 303:
            raise BenchError(f"signing in answered {status}, not 303")

    def close(self) -> None:
        self.conn.close()


def pages(filled: Filled, token: str | None) -> list[tuple[str, str]]:
    """(name, path) of every page measured; `health` first, the baseline."""
    out = [
        ("health", "/health"),
        ("today", "/console"),
        ("fleet", "/console/fleet"),
        ("parcels", "/console/parcels"),
        ("parcels_search", "/console/parcels?" + urllib.parse.urlencode({"q": filled.search})),
        ("parcel", f"/console/parcels/{filled.search}"),
        ("lockers", "/console/lockers"),
        ("exceptions", "/console/exceptions"),
    ]
    if token is not None:
        out.append(("customer", f"/t/{token}"))
    return out


def measure(spec: str, filled: Filled, *, n: int, warmup: int) -> dict[str, Any]:
    """The real depot service's web port on the filled database: every page, `n` times."""
    from depot.config import DepotConfig, LockerSiteConfig
    from depot.customer import record_link
    from depot.service import DepotService
    from depot.web.auth import add_user
    from sync.signing import generate_sealing_keypair

    sealing_pem, _public = generate_sealing_keypair()
    sites = [
        LockerSiteConfig(name, DEPOT[0] + 0.01 * (i + 1), DEPOT[1], dict(LOCKER_SIZES),
                         title=f"Bench locker {i + 1}", address=f"Plein {i + 1}, Amsterdam")
        for i, name in enumerate(filled.lockers)
    ]
    config = DepotConfig(database=spec, lat=DEPOT[0], lon=DEPOT[1], vans=filled.names,
                         api=("127.0.0.1", 0), lockers=sites)
    service = DepotService(config, sealing_key_pems=[sealing_pem])
    service.start()
    try:
        password = secrets.token_urlsafe(16)
        add_user(service.database, USER, "viewer", password)
        token = None
        if filled.in_locker is not None:
            with service.database.transaction() as conn:
                token = record_link(conn, service.keys, filled.in_locker, time.time_ns())
        client = _Client(service.api.host, service.api.port)
        try:
            client.sign_in(USER, password)
            chosen = pages(filled, token)
            timings: dict[str, list[float]] = {name: [] for name, _ in chosen}
            sizes: dict[str, int] = {}
            statuses: dict[str, Counter[int]] = {name: Counter() for name, _ in chosen}
            for i in range(warmup + n):
                for name, path in chosen:
                    t0 = time.perf_counter()
                    status, body = client.request("GET", path)
                    elapsed = time.perf_counter() - t0
                    if i >= warmup:
                        timings[name].append(elapsed * 1000)
                        statuses[name][status] += 1
                        sizes[name] = max(sizes.get(name, 0), len(body))
        finally:
            client.close()
    finally:
        service.stop()
    health = _figures(timings["health"], sizes["health"], statuses["health"])
    per_page: dict[str, Any] = {}
    for name, path in chosen:
        if name == "health":
            continue
        figures = _figures(timings[name], sizes[name], statuses[name])
        figures["path"] = path
        figures["ratio_p95_vs_health"] = rounded(figures["p95_ms"] / health["p95_ms"], 2) \
            if health["p95_ms"] > 0 else None
        figures["missing"] = figures["status"] == 404
        figures["met"] = (figures["status"] == 200 and figures["p95_ms"] < TARGET_P95_MS
                          and figures["bytes"] < TARGET_BYTES)
        per_page[name] = figures
    if token is None:
        per_page["customer"] = {"path": "/t/{token}", "missing": True, "met": False,
                                "status": None, "why": "no parcel waits in a locker"}
    return {"health": health, "pages": per_page}


def _figures(ms: list[float], size: int, statuses: Counter[int]) -> dict[str, Any]:
    status = statuses.most_common(1)[0][0]
    return {
        "status": status if len(statuses) == 1 else dict(statuses),
        "p50_ms": rounded(percentile(ms, 50), 2),
        "p95_ms": rounded(percentile(ms, 95), 2),
        "bytes": size,
    }


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.parcels < 1 or args.n < 1 or args.warmup < 0 or args.vans < 1 or args.lockers < 0:
        raise BenchError("--parcels, --n and --vans must be at least 1, --warmup and --lockers "
                         "not negative")
    backends: list[str] = args.database or ["sqlite"]
    day_start_ns = (time.time_ns() // (86_400 * 10**9)) * 86_400 * 10**9 + 7 * 3600 * 10**9
    runs = []
    with scratch_dir(args.dir, "console") as workdir, contextlib.ExitStack() as stack:
        postgres: Any = None
        for k, backend in enumerate(backends):
            spec = backend
            if backend == "sqlite":
                spec = str(workdir / f"depot-{k}.db")
            elif backend == "postgresql":
                if postgres is None:
                    from simulators.postgres import PostgresServer, find_postgres

                    if find_postgres() is None:
                        raise BenchError("PostgreSQL is not installed (no "
                                         "/usr/lib/postgresql/*/bin/initdb; run .ci/setup)")
                    postgres = stack.enter_context(PostgresServer())
                spec = postgres.new_database(f"console_{k}")
            devices_dir = workdir / f"devices-{k}"
            filled = fill(spec, devices_dir, parcels=args.parcels, vans=args.vans,
                          lockers=args.lockers, seed=args.seed, day_start_ns=day_start_ns)
            figures = measure(spec, filled, n=args.n, warmup=args.warmup)
            missing = [name for name, p in figures["pages"].items() if p["missing"]]
            runs.append({
                "backend": "sqlite" if backend == "sqlite" else "postgresql",
                "fill_s": rounded(filled.seconds, 1),
                "events": filled.events,
                "timeline_entries": filled.timeline,
                "by_state": dict(sorted(filled.by_state.items())),
                **figures,
                "missing_pages": missing,
                "targets_met": all(p["met"] for p in figures["pages"].values()),
            })
        mount = describe_mount(workdir)
    return {
        "benchmark": "console",
        "parcels": args.parcels,
        "vans": args.vans,
        "lockers": args.lockers,
        "n": args.n,
        "warmup": args.warmup,
        "runs": runs,
        "targets": {"p95_ms_max": TARGET_P95_MS, "bytes_max": TARGET_BYTES},
        "targets_met": all(r["targets_met"] for r in runs),
        "mount": mount,
        "host": host_facts(),
    }


def summary(r: dict[str, Any]) -> str:
    lines = [f"console: {r['parcels']} parcels, {r['n']} fetches a page; targets p95 < "
             f"{r['targets']['p95_ms_max']:g} ms and < {r['targets']['bytes_max'] // 1024} KB "
             f"{'met' if r['targets_met'] else 'NOT met'}"]
    for run in r["runs"]:
        h = run["health"]
        lines.append(f"  {run['backend']} (filled in {run['fill_s']} s, {run['events']} events): "
                     f"baseline /health p50 {h['p50_ms']} ms, p95 {h['p95_ms']} ms")
        for name, p in run["pages"].items():
            if p.get("p95_ms") is None:
                lines.append(f"    {name:15} missing ({p.get('why', '')})")
                continue
            state = "missing (404)" if p["missing"] else f"status {p['status']}"
            lines.append(
                f"    {name:15} p50 {p['p50_ms']:8} ms  p95 {p['p95_ms']:8} ms "
                f"(x{p['ratio_p95_vs_health']})  {p['bytes'] / 1024:7.1f} KB  {state}"
                f"{'' if p['met'] else '  NOT met'}"
            )
    return "\n".join(lines)
