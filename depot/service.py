"""The depot service: events in, parcel states, exceptions handled, manifests and notices out.

Owns the orchestration around `depot.ingest.Depot` (which stores every device event exactly
once): after each stored batch it projects the new events onto the parcel book, applies the
exceptions policy to what changed, and sends what follows from it: a signed `reserve` to a
locker, an updated manifest to a van, webhooks to merchants and customers.

Everything the depot promises to send is written to a table first (manifests, commands,
webhooks) in the same database as the events (one `depot.store.Database` for the process), and
sent from there; a row is marked sent only once the broker (PUBACK) or the receiver (2xx) has
it. A crash between the two resends, and the far end is built to take that: a van ignores a
manifest version it already runs, a locker refuses a command id it has seen, a webhook
receiver dedups on the event id.

Must never: publish anything from the MQTT network thread (it would stall the acks), or
decide the same failure twice (the book's projection is idempotent per event, and the
policy runs only on the transitions that projection returns).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depot.config import DepotConfig
from depot.errors import DepotError
from depot.imports import ImportResult, read_import
from depot.ingest import Depot, DepotStore
from depot.policy import LockerSite, NextAction, PolicyError, decide_after_failure
from depot.routing import build_manifest, plan_routes
from depot.store import Conn, open_database, sends
from depot.tracking import Notification, ParcelBook, Transition
from depot.webhooks import WebhookSender, enqueue
from parcel.errors import ParcelError
from parcel.manifest import Manifest, Stop
from sync.clock import Clock, SystemClock
from sync.wire import command_topic

log = logging.getLogger(__name__)

COMMAND_TTL_S = 600.0  # a reserve that has not reached the locker in 10 min is sent afresh
PUBACK_WAIT_S = 5.0
# The transitions the exceptions policy acts on (`_react`); the projection queues them.
REACT_TO = frozenset({"attempted", "hold_expired", "reserve_failed", "returning"})
SHARE_GROUP = "depot"  # the MQTT v5 shared subscription group of the depot's workers
CLAIM_LEASE_S = 4 * PUBACK_WAIT_S  # real seconds a worker holds a manifest or command it sends
IDLE_WAKE_S = 1.0  # retries of unsent manifests and commands; no work is done when idle

class DepotServiceError(DepotError):
    """The depot cannot do what was asked (no broker, no key, no such van)."""


@dataclass(frozen=True)
class PlanResult:
    manifests: dict[str, Manifest]
    unassigned: list[str]


class DepotService:
    """One depot: its store, parcel book, policy, outboxes, and HTTP API."""

    def __init__(
        self,
        config: DepotConfig,
        *,
        clock: Clock | None = None,
        signing_key_pem: bytes | None = None,
        worker: int = 1,
    ) -> None:
        """`worker` (1..config.workers) says which of the depot's workers this process is:
        its broker account, and whether it serves the HTTP API (worker 1 alone does)."""
        self.config = config
        self.worker = worker
        self.clock: Clock = clock or SystemClock()
        # One database, one connection, one lock for every part of the depot in this process.
        self.database = open_database(config.database)
        self.store = DepotStore(self.database)
        self.book = ParcelBook(
            self.database, notify=self._notify, clock=self.clock, queue_for=REACT_TO
        )
        self._db = self.database.connection  # manifests and commands; used holding _db_lock
        self._db_lock = self.database.lock
        pem = signing_key_pem
        if pem is None and config.signing_key is not None:
            pem = config.signing_key.read_bytes()
        self._signing_key: Any = None
        if pem is not None:
            from sync.signing import load_signing_key

            self._signing_key = load_signing_key(pem)
        self.depot: Depot | None = None
        self._ingest_database = self.database
        address = config.broker_for(worker)
        if address is not None:
            # On PostgreSQL the ingest gets a connection of its own (the process's pool is
            # two): storing and acknowledging batches then never waits behind a projection
            # pass or a claim on the other. SQLite has one writer whatever the connections.
            if self.database.dialect == "postgresql":
                self._ingest_database = open_database(config.database)
            self.depot = Depot(
                DepotStore(self._ingest_database),
                address,
                client_id=address.username,
                shared=SHARE_GROUP if config.workers > 1 else None,
                statuses=worker == 1,
                on_stored=self._stored,
            )
        self.webhooks = WebhookSender(
            self.database,
            secret_for=self._secret_for,
            clock=self.clock,
            max_attempts=config.webhook_max_attempts,
            backoff_base_s=config.webhook_backoff_base_s,
            backoff_max_s=config.webhook_backoff_max_s,
        )
        self.api: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pass_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # A claim on a manifest or command outlives a publish's PUBACK wait several times over,
        # in this depot's clock (a simulated one runs faster than real time).
        speed = float(getattr(self.clock, "speed", 1.0)) or 1.0
        self._lease_ns = int(CLAIM_LEASE_S * speed * 1e9)
        self.decisions: list[tuple[str, NextAction]] = []

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.api is not None and self.worker == 1:
            from depot.http import DepotApi

            host, port = self.config.api
            self.api = DepotApi(self.book, host=host, port=port)
            self.api.start()
        self.webhooks.start()
        self._thread = threading.Thread(target=self._run, name="depot-logistics", daemon=True)
        self._thread.start()
        if self.depot is not None:
            self.depot.start()

    def stop(self) -> None:
        if self.depot is not None:
            self.depot.stop()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.webhooks.stop()
        if self.api is not None:
            self.api.stop()
        if self._ingest_database is not self.database:
            self._ingest_database.close()
        self.database.close()

    def __enter__(self) -> DepotService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self) -> None:
        self._wake.set()

    def _stored(self, device: str, result: object) -> None:
        # On the MQTT network thread: only wake the worker, never work here.
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAKE_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.process()
            except Exception:  # the loop must outlive one bad event; the event stays stored
                log.exception("depot logistics pass failed; retrying on the next wake")

    def process(self) -> int:
        """One pass: project stored events, react to what changed, send what is due."""
        with self._pass_lock:
            return self._process()

    def _process(self) -> int:
        handled = 0
        while True:
            transitions = self.book.project_new_events()  # queues what the policy reacts to
            handled += len(transitions)
            if not transitions:
                break
        while self._react_next():
            pass
        self._publish_manifests()
        self._publish_commands()
        self.webhooks.wake()
        return handled

    def settled(self) -> bool:
        """Nothing left to do: every stored event projected, every manifest, command and
        webhook sent (or dead-lettered)."""
        from depot.webhooks import stats

        with self._pass_lock:  # not halfway through a pass: its reactions are not written yet
            return self._settled(stats)

    def _settled(self, stats: Any) -> bool:
        with self._db_lock:
            hooks = stats(self._db)
            unsent = sends.unsent_count(self._db)
        return (
            self.book.waiting_events() == 0
            and self.book.reactions_waiting() == 0
            and hooks["pending"] == 0
            and not unsent
        )

    # --- parcels in, manifests out ------------------------------------------------------------

    def import_parcels(
        self, source: str | Path | bytes, *, format: str | None = None
    ) -> ImportResult:
        """Validate and receive an import; bad rows are reported, good rows are received."""
        result = read_import(source, format=format)  # type: ignore[arg-type]
        now = self.clock.wall_ns()
        for record in result.records:
            self.book.receive(record.to_doc(), now_ns=now, source="import")
        self._wake.set()
        return result

    def arrival_scan(self, code: str, aim: str | None = None) -> str:
        """A parcel scanned at the depot's dock: validated by the scanner rules, then received.

        Its recipient data may already be here (the merchant's import) or follow later; a
        parcel without an address waits at the depot and is left out of planning until then.
        Raises `parcel.identify.Rejection` for a code that is not a valid parcel id.
        """
        from parcel.identify import identify

        parcel = identify(code, aim)
        self.book.receive(
            {"id": parcel.id, "raw": parcel.raw, "kind": parcel.kind},
            now_ns=self.clock.wall_ns(),
            source="arrival_scan",
        )
        self._wake.set()
        return parcel.id

    def plan_day(self, day: str, vans: Sequence[str] | None = None) -> PlanResult:
        """Assign every parcel waiting at the depot to a van and issue each van's manifest."""
        vans = list(vans or self.config.vans)
        if not vans:
            raise DepotServiceError("no vans to plan for (depot.vans is empty)")
        from depot.imports import ParcelRecord

        waiting = self.book.awaiting_assignment()
        records, unassigned = [], []
        for r in waiting:
            if r.get("next_action") == "return_to_sender":
                continue
            try:
                ParcelRecord.from_doc(r["record"])
            except (DepotError, ParcelError, KeyError, TypeError, ValueError):
                unassigned.append(str(r["id"]))  # scanned in, but no address data yet
                continue
            records.append(r)

        plans = plan_routes(
            [ParcelRecord.from_doc(r["record"]) for r in records],
            vans,
            (self.config.lat, self.config.lon),
        )
        lockers = {site.name: site for site in self.config.lockers}
        manifests: dict[str, Manifest] = {}
        for van, stops in plans.items():
            version = self._next_version(van, day)
            manifest = build_manifest(
                van,
                version,
                day,
                stops,
                depot=(self.config.lat, self.config.lon),
                issued_at=self.clock.wall_ns() / 1e9,
            )
            manifest = self._with_locker_stops(manifest, records, lockers)
            self._issue(manifest)
            for stop in manifest.stops:
                for parcel in stop.parcels:
                    self.book.assign(parcel, van, stop.stop, version)
            manifests[van] = manifest
        self._wake.set()
        return PlanResult(manifests, unassigned)

    def _with_locker_stops(
        self,
        manifest: Manifest,
        records: Sequence[Mapping[str, Any]],
        lockers: Mapping[str, Any],
    ) -> Manifest:
        """Parcels whose next action is a locker drop leave their address stop for a locker
        stop at the end of the round (the courier drops them after the last door)."""
        moving = {
            str(r["id"]): str(r["locker"])
            for r in records
            if r.get("next_action") == "locker" and r.get("locker")
        }
        moving = {p: lk for p, lk in moving.items() if manifest.stop_of(p) is not None}
        if not moving:
            return manifest
        return _move_to_lockers(manifest, moving, lockers, version=manifest.version)

    def current_manifest(self, van: str, day: str | None = None) -> Manifest | None:
        with self._db_lock:
            body = sends.current_manifest_body(self._db, van, day)
        return Manifest.from_json(body) if body is not None else None

    def _next_version(self, van: str, day: str) -> int:
        with self._db_lock:
            return sends.next_manifest_version(self._db, van, day)

    def _issue(self, manifest: Manifest) -> None:
        with self.database.transaction() as conn:
            sends.issue_manifest(
                conn,
                van=manifest.van,
                day=manifest.day,
                version=manifest.version,
                body=manifest.to_json(),
                issued_ns=self.clock.wall_ns(),
            )

    def _publish_manifests(self) -> None:
        """Publish, retained, the newest unpublished manifest of each van."""
        if self.depot is None or not self.depot.session.connected:
            return
        now = self.clock.wall_ns()
        rows = sends.claim_manifests(self.database, now_ns=now, until_ns=now + self._lease_ns)
        for i, (van, day, version, body) in enumerate(rows):
            info = self.depot.session.client.publish(
                command_topic(str(van), "manifest"), bytes(body), qos=1, retain=True
            )
            if not _published(info):  # the connection went away; the next pass retries
                sends.release(self.database, sends.MANIFESTS, rows[i:])
                return
            with self.database.transaction() as conn:
                sends.mark_manifest_published(
                    conn, van=van, day=day, version=version, now_ns=self.clock.wall_ns()
                )
            log.info("manifest %s v%d published", van, version)

    # --- the exceptions policy -----------------------------------------------------------------

    def _react_next(self) -> bool:
        """Take the oldest queued transition (any worker's projection queued it) and decide
        what follows, in one transaction with its removal from the queue; False when none
        waits. A decision that raises is undone and logged, and the transition dropped: the
        parcel waits for a person, as it did before the queue (the error says which)."""
        with self.book.next_reaction() as t:
            if t is None:
                return False
            try:
                with self.database.transaction():  # a savepoint: a failed decision undoes itself
                    self._react(t)
            except Exception:
                log.exception("no decision for %s (%s); a person must look", t.parcel, t.state)
        return True

    def _react(self, t: Transition) -> None:
        if t.state == "attempted":
            self._after_failure(t.parcel, reason=str(t.details.get("reason", "")))
        elif t.state == "hold_expired":
            self.book.set_next_action(t.parcel, "return_to_sender", reason="locker hold expired")
            self.decisions.append(
                (t.parcel, NextAction("return_to_sender", None, "locker hold expired"))
            )
        elif t.state == "reserve_failed":
            self._after_failure(t.parcel, reason=None)
        elif t.state == "returning":
            # Back at the depot, or taken out of a locker by the returns courier who drives to
            # the linehaul hub: either way the parcel is handed to the return to the merchant.
            self.book.mark_returned_to_sender(t.parcel)

    def _after_failure(self, parcel: str, *, reason: str | None) -> None:
        info = self.book.parcel(parcel)
        if info is None:
            return
        record = info.get("record") or {}
        # Read from the book, not kept in memory: another worker, or this one before a restart,
        # may have sent the parcel to a locker that then refused it.
        tried = self.book.lockers_decided(parcel)
        if reason is None:  # a reservation refused: same failure, next locker
            reason = str(info.get("last_reason") or "not_at_home")
        try:
            decision = self._decide(info, record, reason, tried)
        except PolicyError as exc:  # e.g. a reason this depot does not know: a person decides
            log.error("no policy decision for %s: %s", parcel, exc)
            return
        self.decisions.append((parcel, decision))
        state = self.book.set_next_action(
            parcel, decision.kind, locker=decision.locker, reason=decision.reason
        )
        if state == "returning":  # already back at the depot: hand it to the return at once
            self.book.mark_returned_to_sender(parcel)
        if decision.kind == "locker" and decision.locker is not None:
            self.send_command(
                decision.locker,
                "reserve",
                {
                    "parcel": parcel,
                    "size": str(record.get("size", "S")),
                    "hours": self.config.locker_hold_h,
                },
            )
            van = info.get("van")
            if van and info.get("state") not in ("at_depot",):
                self._redirect_on_route(str(van), parcel, decision.locker)

    def _decide(
        self,
        info: Mapping[str, Any],
        record: Mapping[str, Any],
        reason: str,
        tried: list[str],
    ) -> NextAction:
        return decide_after_failure(
            reason=reason,
            attempts=int(info.get("attempts") or 0),
            locker_ok=bool(record.get("locker_ok", True)),
            size=str(record.get("size", "S")),
            stop_lat=float(record.get("lat", self.config.lat)),
            stop_lon=float(record.get("lon", self.config.lon)),
            lockers=self._locker_sites(),
            tried_lockers=tuple(tried),
            max_attempts=self.config.max_attempts,
            max_locker_km=self.config.max_locker_km,
        )

    def _locker_sites(self) -> list[LockerSite]:
        """Free compartments per locker: its sizes minus the parcels held or reserved there."""
        busy = self.book.locker_occupancy()
        sites = []
        for site in self.config.lockers:
            free = dict(site.compartments)
            for size, n in busy.get(site.name, {}).items():
                free[size] = max(0, free.get(size, 0) - n)
            sites.append(LockerSite(site.name, site.lat, site.lon, free))
        return sites

    def _redirect_on_route(self, van: str, parcel: str, locker: str) -> None:
        """A van still out gets a new manifest version with the parcel moved to a locker stop."""
        current = self.current_manifest(van)
        if current is None or current.stop_of(parcel) is None:
            return
        lockers = {site.name: site for site in self.config.lockers}
        updated = _move_to_lockers(
            current,
            {parcel: locker},
            lockers,
            version=self._next_version(van, current.day),
            issued_at=self.clock.wall_ns() / 1e9,
        )
        self._issue(updated)
        stop = next(s.stop for s in updated.stops if parcel in s.parcels)
        self.book.assign(parcel, van, stop, updated.version)

    # --- signed commands ---------------------------------------------------------------------

    def send_command(self, target: str, action: str, args: Mapping[str, Any]) -> str:
        """Queue a signed command; it is signed afresh (same id) each time it is published."""
        import uuid

        cid = uuid.uuid4().hex
        parcel = args.get("parcel")
        if parcel:
            # A locker's answer names only the command id: the book maps it back to the parcel.
            self.book.note_command(cid, locker=target, action=action, parcel=str(parcel))
        with self.database.transaction() as conn:
            sends.add_command(
                conn,
                command_id=cid,
                target=target,
                action=action,
                args=json.dumps(dict(args), sort_keys=True),
                created_ns=self.clock.wall_ns(),
            )
        self._wake.set()
        return cid

    def _publish_commands(self) -> None:
        if self.depot is None or not self.depot.session.connected:
            return
        if self._signing_key is None:
            return
        from sync.signing import sign_command

        now = self.clock.wall_ns()
        rows = sends.claim_commands(self.database, now_ns=now, until_ns=now + self._lease_ns)
        for i, (cid, target, action, args) in enumerate(rows):
            payload = sign_command(
                self._signing_key,
                target=str(target),
                action=str(action),
                args=json.loads(str(args)),
                ttl_s=COMMAND_TTL_S,
                now=time.time(),  # a locker checks commands against its own wall clock
                command_id=str(cid),
            )
            info = self.depot.session.client.publish(
                command_topic(str(target), str(action)), payload, qos=1
            )
            if not _published(info):
                sends.release(self.database, sends.COMMANDS, rows[i:])
                return
            with self.database.transaction() as conn:
                sends.mark_command_published(conn, cid, self.clock.wall_ns())

    # --- notifications --------------------------------------------------------------------------

    def _notify(self, conn: Conn, n: Notification) -> None:
        key_id = n.audience if n.audience == "customer" else str(n.body.get("merchant") or "")
        enqueue(
            conn,
            event_id=n.event_id,
            url=n.url,
            body=n.body,
            key_id=key_id,
            now_ns=self.clock.wall_ns(),
        )

    def _secret_for(self, key_id: str) -> bytes:
        try:
            return self.config.webhook_secrets[key_id]
        except KeyError:
            raise DepotServiceError(f"no webhook secret for {key_id!r}") from None


def _published(info: Any) -> bool:
    """Wait for the broker's PUBACK of one publish; False when it did not come."""
    try:
        info.wait_for_publish(PUBACK_WAIT_S)
    except (RuntimeError, ValueError):
        return False  # not queued: the connection went away
    return bool(info.is_published())


def _move_to_lockers(
    manifest: Manifest,
    moving: Mapping[str, str],
    lockers: Mapping[str, Any],
    *,
    version: int,
    issued_at: float | None = None,
) -> Manifest:
    """A copy of `manifest` with each parcel in `moving` taken off its stop and put on a
    locker stop (one per locker, appended after the existing stops or extended)."""
    stops: list[Stop] = []
    locker_stops: dict[str, list[str]] = {}
    for s in manifest.stops:
        kept = tuple(p for p in s.parcels if p not in moving)
        if s.kind == "locker" and s.locker is not None:
            locker_stops.setdefault(s.locker, []).extend(kept)
            continue
        stops.append(_renumber(s, len(stops) + 1, kept))
    for parcel, locker in moving.items():
        locker_stops.setdefault(locker, []).append(parcel)
    for locker, parcels in locker_stops.items():
        site = lockers.get(locker)
        lat, lon = (site.lat, site.lon) if site is not None else (0.0, 0.0)
        stops.append(
            Stop(
                stop=len(stops) + 1,
                kind="locker",
                lat=lat,
                lon=lon,
                parcels=tuple(dict.fromkeys(parcels)),
                address=f"parcel locker {locker}",
                locker=locker,
            )
        )
    return Manifest(
        van=manifest.van,
        version=version,
        day=manifest.day,
        stops=tuple(stops),
        issued_at=manifest.issued_at if issued_at is None else issued_at,
        depot=manifest.depot,
    )


def _renumber(s: Stop, number: int, parcels: tuple[str, ...]) -> Stop:
    return Stop(
        stop=number,
        kind=s.kind,
        lat=s.lat,
        lon=s.lon,
        parcels=parcels,
        address=s.address,
        recipient=s.recipient,
        window=s.window,
        instructions=s.instructions,
        locker=s.locker,
    )
