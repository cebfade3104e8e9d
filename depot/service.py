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

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depot.alarms import notify_operator, open_count, raise_alarm
from depot.cards import CARD_URL, CardAnswer, card_answer, card_url
from depot.config import DepotConfig, load_depot_config
from depot.customer import (
    EXTEND,
    PICKUP_REQUESTS,
    PREFERENCES,
    REDELIVER,
    TRACKING_URL,
    CustomerView,
    LinkExpired,
    NoticeRenderer,
    PickupOffer,
    customer_view,
    find_link,
    last_card,
    link_at_rest,
    pickup_choice,
    record_link,
    redelivery_decision,
    tracking_url,
)
from depot.errors import DepotError
from depot.imports import ImportResult, read_import
from depot.ingest import Depot, DepotStore
from depot.keys import DepotKeys
from depot.pickup import (
    ExtendRefused,
    check_extend_token,
    extend_link,
    extend_refusal,
    extend_token,
    notice_body,
)
from depot.policy import (
    LockerSite,
    NextAction,
    PickupChoice,
    PolicyError,
    RequestDeclined,
    decide_after_failure,
    decide_after_hold_expired,
    free_sites,
    nearest_locker,
)
from depot.preferences import (
    PreferencesRefused,
    care_of,
    change_refusal,
    customer_care,
    locker_instead_refusal,
    store_choices,
    take_compartment,
)
from depot.returns import BookedReturn, ReturnDesk, ReturnRefused
from depot.routing import DEFERRAL_REASONS, build_manifest, nearest_round, plan_routes
from depot.store import Conn, book, collections, open_database, sends
from depot.store import outcomes as outcome_table
from depot.tracking import (
    REQUEST_STEP,
    LockerDrop,
    Notification,
    ParcelBook,
    Transition,
    iso_utc,
)
from depot.webhooks import WebhookSender, encode_body, enqueue
from parcel.cards import card_tag
from parcel.care import Care
from parcel.errors import ParcelError
from parcel.geo import distance_m
from parcel.manifest import DoorPickup, LockerReturn, Manifest, Stop
from parcel.runlog import needs_restart, reload_failed, reload_log_level, report_reload
from sync.clock import Clock, SystemClock
from sync.errors import WireError
from sync.mqtt import BrokerAddress
from sync.uplink import broker_change
from sync.wire import check_command, command_topic

log = logging.getLogger(__name__)

COMMAND_TTL_S = 600.0  # a reserve that has not reached the locker in 10 min is sent afresh
PUBACK_WAIT_S = 5.0
# The transitions the exceptions policy acts on (`_react`); the projection queues them.
REACT_TO = frozenset(
    {"attempted", "hold_expired", "reserve_failed", "returning", "return_dropped", "pickup_missed"}
)
SHARE_GROUP = "depot"  # the MQTT v5 shared subscription group of the depot's workers
CLAIM_LEASE_S = 4 * PUBACK_WAIT_S  # real seconds a worker holds a manifest or command it sends
# An abandoned drop-off waits this long (depot clock) for the locker's own retry (a bigger
# compartment) or the courier's before the parcel is put back on the van's round.
ABANDONED_GRACE_S = 120.0
LOCKER_DROP_ALARM = "locker_drop_unconfirmed"
# Where a parcel can be while the van that brought it still has it.
_ON_THE_ROUND = frozenset({"loaded", "out_for_delivery", "attempted", "redirected"})
# Where an operator may put a parcel back to be planned (not in a locker: its recipient
# collects it there; not `returning`: booked for its sender) or send it back to its sender.
REPLAN_FROM = frozenset({"at_depot", "hold_expired"}) | _ON_THE_ROUND
RETURN_FROM = frozenset({"received", "at_depot", "returning", "hold_expired"}) | _ON_THE_ROUND
MAX_REASON = 200  # an operator's reason for a command, as the locker journals it
IDLE_WAKE_S = 1.0  # retries of unsent manifests and commands; no work is done when idle
# The longest a healthy logistics pass takes: a fleet's morning backlog projected, decided and
# sent, on a Pi's SD card or a busy PostgreSQL. A logistics thread that has not come round for
# three times that is stalled (`DepotService.health`).
LOGISTICS_PASS_S = 20.0
# What `DepotService.reload` applies while running, and how depot.toml names the rest.
_DEPOT_LIVE = frozenset(
    {"log_level", "broker", "worker_passwords", "worker_certs", "source", "overridden"}
)
_DEPOT_SETTINGS = {
    "database": "depot.database",
    "lat": "depot.lat",
    "lon": "depot.lon",
    "vans": "depot.vans",
    "api": "depot.api",
    "public_url": "depot.public_url",
    "signing_key": "depot.signing_key",
    "sealing_key": "depot.sealing_key",
    "workers": "depot.workers",
    "webhook_secrets": "webhooks.secrets_file",
    "webhook_max_attempts": "webhooks.max_attempts",
    "webhook_backoff_base_s": "webhooks.backoff_base_s",
    "webhook_backoff_max_s": "webhooks.backoff_max_s",
    "operator_webhook": "operator.webhook",
    "max_attempts": "policy.max_attempts",
    "max_locker_km": "policy.max_locker_km",
    "locker_hold_h": "policy.locker_hold_h",
    "extend_hold_h": "policy.extend_hold_h",
    "locker_confirm_min": "policy.locker_confirm_min",
    "lockers": "[[lockers]]",
    "vehicles": "[[vehicles]]",
    "broker": "[broker]",
    "worker_passwords": "broker.password_file",
    "worker_certs": "broker.tls_cert",
}

class DepotServiceError(DepotError):
    """The depot cannot do what was asked (no broker, no key, no such van)."""


class ArrivalRefused(DepotServiceError):
    """An arrival scan of a parcel whose journey has ended; nothing was recorded."""

    def __init__(self, parcel: str, reason: str) -> None:
        super().__init__(f"{parcel}: {reason}")
        self.parcel = parcel
        self.reason = reason


@dataclass(frozen=True)
class Arrival:
    """A parcel received at the dock; `unknown` when no merchant's import announced it."""

    parcel: str
    unknown: bool


@dataclass(frozen=True)
class PlanResult:
    manifests: dict[str, Manifest]
    unassigned: list[str]
    # Parcels the plan left at the depot for another day: parcel -> reason (a key of
    # `depot.routing.DEFERRAL_REASONS`); each has a `deferred` timeline entry saying why.
    deferred: dict[str, str] = dataclasses.field(default_factory=dict)

    def deferred_by_reason(self) -> dict[str, int]:
        """How many parcels waited, per reason."""
        return dict(sorted(Counter(self.deferred.values()).items()))


class DepotService:
    """One depot: its store, parcel book, policy, outboxes, and HTTP API."""

    def __init__(
        self,
        config: DepotConfig,
        *,
        clock: Clock | None = None,
        signing_key_pem: bytes | None = None,
        sealing_key_pems: Sequence[bytes] = (),
        worker: int = 1,
    ) -> None:
        """`worker` (1..config.workers) says which of the depot's workers this process is:
        its broker account, and whether it serves the HTTP API (worker 1 alone does).

        The keys are the files `config` names, unless given here as PEM bytes (a run that made
        its own keys, such as the simulated day)."""
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
        self.keys = DepotKeys.from_files(
            None if signing_key_pem is not None else config.signing_key,
            None if sealing_key_pems else config.sealing_key,
        )
        if signing_key_pem is not None or sealing_key_pems:
            given = DepotKeys.from_pem(signing_key_pem, sealing_key_pems)
            self.keys.signing = given.signing or self.keys.signing
            self.keys.sealing = given.sealing or self.keys.sealing
        self.depot: Depot | None = None
        self._ingest_database = self.database
        address = config.broker_for(worker)
        if address is not None:
            # On PostgreSQL the ingest gets a connection of its own (the process's pool is
            # two): storing and acknowledging batches then never waits behind a projection
            # pass or a claim on the other. SQLite has one writer whatever the connections.
            if self.database.dialect == "postgresql":
                self._ingest_database = open_database(config.database)
            self.depot = self._ingest(address)
        self._started = False
        self.webhooks = WebhookSender(
            self.database,
            secret_for=self._secret_for,
            clock=self.clock,
            max_attempts=config.webhook_max_attempts,
            backoff_base_s=config.webhook_backoff_base_s,
            backoff_max_s=config.webhook_backoff_max_s,
            render=NoticeRenderer(self.keys, encode_body) if self.keys.sealing else None,
        )
        self.api: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pass_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._beat_at = time.monotonic()  # the logistics thread's last time round
        # A claim on a manifest or command outlives a publish's PUBACK wait several times over,
        # in this depot's clock (a simulated one runs faster than real time).
        speed = float(getattr(self.clock, "speed", 1.0)) or 1.0
        self._lease_ns = int(CLAIM_LEASE_S * speed * 1e9)
        self.decisions: list[tuple[str, NextAction]] = []
        self.returns = ReturnDesk(
            config=config,
            database=self.database,
            book=self.book,
            keys=self.keys,
            clock=self.clock,
            send_command=self.send_command,
            locker_sites=self._locker_sites,
        )

    # --- running ----------------------------------------------------------------------------

    def _ingest(self, address: BrokerAddress) -> Depot:
        """The event ingest on its broker session, as this worker runs it."""
        return Depot(
            DepotStore(self._ingest_database),
            address,
            client_id=address.username,
            shared=SHARE_GROUP if self.config.workers > 1 else None,
            statuses=self.worker == 1,
            on_stored=self._stored,
        )

    def start(self) -> None:
        self._started = True
        if self.config.api is not None and self.worker == 1:
            from depot.web import DepotWeb
            from depot.web.context import Sites

            host, port = self.config.api
            self.api = DepotWeb(
                self.book,
                host=host,
                port=port,
                health=self.check_health,
                clock=self.clock,
                actions=self,
                sites=Sites(
                    depot=(self.config.lat, self.config.lon),
                    lockers=tuple(self.config.lockers),
                    vans=tuple(self.config.vans),
                ),
            )
            self.api.start()
        self.webhooks.start()
        self._thread = threading.Thread(target=self._run, name="depot-logistics", daemon=True)
        self._thread.start()
        if self.depot is not None:
            self.depot.start()

    def stop(self) -> None:
        self._started = False
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

    def reload(self) -> list[str]:
        """SIGHUP: read `depot.toml` again and apply what can change while the depot runs:
        the log level, and this worker's broker address (host, port, credentials, TLS files:
        the ingest leaves the old broker and connects to the new one; what it has not
        acknowledged, the devices send again). Every other changed setting is named in a line
        of its own ("depot.database changed: restart to apply"); settings the command line
        gave (`--database`, `--workers`) stay as given. A file that no longer loads changes
        nothing and is one error line. Returns the lines it logged."""
        if self.config.source is None:
            return reload_failed(log, "the depot was not started from a configuration file")
        try:
            new = load_depot_config(self.config.source)
        except DepotError as exc:
            return reload_failed(log, exc)
        for name in self.config.overridden:
            setattr(new, name, getattr(self.config, name))
        new.overridden = self.config.overridden
        said = [reload_log_level(self.config.log_level, new.log_level)]
        live = set(_DEPOT_LIVE)
        old_address, address = self.config.broker_for(self.worker), new.broker_for(self.worker)
        if self.depot is not None and address is not None and old_address is not None:
            said.append(broker_change(old_address, address))
            if said[-1] is not None:
                self._move_ingest(address)
        else:
            live -= {"broker", "worker_passwords", "worker_certs"}  # added or taken away
        restart = needs_restart(self.config, new, live=live, names=_DEPOT_SETTINGS)
        kept = {name: getattr(new, name) for name in live}
        self.config = dataclasses.replace(self.config, **kept)
        return report_reload(log, [line for line in said if line], restart)

    def _move_ingest(self, address: BrokerAddress) -> None:
        # A new session rather than a changed one: paho sets TLS up once per client. The
        # logistics thread publishes through `self.depot`; between the two it finds the old
        # one disconnected and leaves its sends for the next pass.
        moved = self._ingest(address)
        old = self.depot
        if self._started and old is not None:
            old.stop()
        self.depot = moved
        if self._started:
            moved.start()

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
            self._beat_at = time.monotonic()
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
        self._check_locker_drops()
        if self.config.operator_webhook:  # alarms this pass (or another worker's) recorded
            notify_operator(
                self.database, url=self.config.operator_webhook, now_ns=self.clock.wall_ns()
            )
        self._publish_manifests()
        self._publish_commands()
        self.webhooks.wake()
        return handled

    def health(self) -> list[str]:
        """The depot's own threads that are dead or stalled, by name (empty: all is well): the
        logistics loop and the ingest's network thread. Not the depot's judgement of its work
        (`check_health`): a broker or a database that is down is no reason to restart it."""
        problems: list[str] = []
        thread = self._thread
        if thread is not None:
            limit = 3 * LOGISTICS_PASS_S
            if not thread.is_alive():
                problems.append(f"{thread.name} thread is not running")
            elif time.monotonic() - self._beat_at > limit:
                problems.append(f"{thread.name} thread stalled (no pass for over {limit:g} s)")
        if self.depot is not None:
            dead = self.depot.session.thread_problem()
            if dead is not None:
                problems.append(f"ingest {dead}")
        return problems

    def status_line(self) -> str:
        """For `systemctl status`: `online, worker 1/1, 120 batches stored`.

        Only what the process holds in memory: the service loop asks every few seconds, and
        must not queue behind a long pass for the database's lock (its watchdog pings wait).
        """
        where = f"worker {self.worker}/{self.config.workers}"
        if self.depot is None:
            return f"no broker, {where}"
        link = "online" if self.depot.session.connected else "offline"
        return f"{link}, {where}, {self.depot.batches} batches stored"

    def check_health(self) -> dict[str, Any]:
        """The depot's judgement of itself (`depot.health`): `{"ok", "problems", ...}`."""
        from depot.health import DepotHealth

        session = self.depot.session if self.depot is not None else None
        return DepotHealth(self.database, session=session, clock=self.clock).check()

    def alarms_open(self) -> int:
        """Alarms nobody has acknowledged yet (the simulated day's report)."""
        with self.database.reading() as conn:
            return open_count(conn)

    def settled(self, *, webhooks: bool = True) -> bool:
        """Nothing left to do: every stored event projected, every manifest, command and
        webhook sent (or dead-lettered). `webhooks=False`: webhooks waiting for a receiver
        (or their next retry) do not count."""
        from depot.webhooks import stats

        with self._pass_lock:  # not halfway through a pass: its reactions are not written yet
            return self._settled(stats, webhooks=webhooks)

    def _settled(self, stats: Any, *, webhooks: bool) -> bool:
        with self._db_lock:
            hooks = stats(self._db) if webhooks else {"pending": 0}
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

    def arrival_scan(self, code: str, aim: str | None = None) -> Arrival:
        """A parcel scanned at the depot's dock: validated by the scanner rules, then received.

        Its recipient data may already be here (the merchant's import) or follow later; a
        parcel without an address waits at the depot and is left out of planning until then
        (`Arrival.unknown` says the depot had no import for it: someone should ask why).
        Raises `parcel.identify.Rejection` for a code that is not a valid parcel id, and
        `ArrivalRefused` (nothing recorded) for a parcel whose journey has ended: delivered,
        picked up, or returned to its sender.
        """
        from depot.tracking import FINAL_STATES
        from parcel.identify import identify

        parcel = identify(code, aim)
        info = self.book.parcel(parcel.id)
        if info is not None and info.get("state") in FINAL_STATES:
            raise ArrivalRefused(parcel.id, f"already {str(info['state']).replace('_', ' ')}")
        self.book.receive(
            {"id": parcel.id, "raw": parcel.raw, "kind": parcel.kind},
            now_ns=self.clock.wall_ns(),
            source="arrival_scan",
        )
        self._wake.set()
        return Arrival(parcel.id, unknown=info is None or not info.get("merchant"))

    def plan_day(self, day: str, vans: Sequence[str] | None = None) -> PlanResult:
        """Assign every parcel waiting at the depot to a vehicle within its load and shift
        (`depot.routing`, `[[vehicles]]`) and issue each one's manifest; a parcel no vehicle
        has room or time for stays at the depot with a `deferred` timeline entry saying why
        (`PlanResult.deferred`) and is among the first planned the next day."""
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
        records = self._care_and_lockers(records)

        # A parcel that already waited a day or failed at the door is the last to wait again.
        waited = Counter(self.book.times_deferred(before=day))
        waited.update({str(r["id"]): int(r.get("attempts") or 0) for r in records})
        plans = plan_routes(
            [ParcelRecord.from_doc(r["record"]) for r in records],
            self.config.fleet(vans),
            (self.config.lat, self.config.lon),
            waited=waited,
        )
        for left in plans.deferred:
            text = DEFERRAL_REASONS[left.reason]
            self.book.record_deferral(left.parcel, day=day, reason=left.reason, text=text)
        if plans.deferred:
            log.warning(
                "plan of %s: %d parcels wait for another day (%s)",
                day,
                len(plans.deferred),
                ", ".join(f"{n} {why}" for why, n in plans.deferred_by_reason().items()),
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
            manifests[van] = self._with_locker_stops(manifest, records, lockers)
        manifests = self._with_collections(manifests, lockers)
        manifests = self._with_door_pickups(manifests)
        for van, manifest in manifests.items():
            self._issue(manifest)
            for stop in manifest.stops:
                for parcel in stop.parcels:
                    self.book.assign(parcel, van, stop.stop, manifest.version)
            self._note_collections(manifest)
            for ret in manifest.pickups:
                self.returns.pickup_planned(ret, van, manifest.day)
        self._wake.set()
        return PlanResult(manifests, unassigned, {d.parcel: d.reason for d in plans.deferred})

    def _care_and_lockers(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each waiting parcel's record with its care as it is now (the customer's choices
        over the merchant's, `depot.preferences.care_of`), for the manifest; and each whose
        customer asked for a locker instead of the door sent to a locker (`_locker_instead`)
        unless the policy already sent it to one."""
        sites = self._locker_sites()
        out = []
        for r in records:
            with self.database.reading() as conn:
                care = care_of(conn, str(r["id"]))
            if care is None:
                out.append(r)
                continue
            r = {**r, "record": {**r["record"], "care": care.to_doc()}}
            if care.locker_instead and not (r.get("next_action") == "locker" and r.get("locker")):
                r, sites = self._locker_instead(r, care, sites)
            out.append(r)
        return out

    def _locker_instead(
        self, r: dict[str, Any], care: Care, sites: list[LockerSite]
    ) -> tuple[dict[str, Any], list[LockerSite]]:
        """The customer asked for a locker instead of the door: the locker the policy would
        choose after a failure (`depot.policy.nearest_locker`: the nearest with a fitting free
        compartment within `[policy] max_locker_km` of the address), reserved the same way
        (`reserve`; `_with_locker_stops` puts it on the round's locker stop). Without one it
        goes to the door, with the reason in its timeline (next action `door`), said once
        while the reason stays the same."""
        parcel, record = str(r["id"]), r["record"]
        size = str(record.get("size", "S"))
        why = locker_instead_refusal(record, care)
        found = None
        if why is None:
            found = nearest_locker(
                size,
                float(record["lat"]),
                float(record["lon"]),
                sites,
                max_locker_km=self.config.max_locker_km,
            )
            if found is None:
                why = (
                    f"no locker within {self.config.max_locker_km:g} km has a free "
                    f"compartment for a size {size} parcel"
                )
        asked = "the customer asked for a locker instead of the door"
        if found is None:
            if r.get("next_action") != "door":
                self.book.set_next_action(parcel, "door", reason=f"{asked}, but {why}")
            return {**r, "next_action": "door"}, sites
        locker, km = found
        self.book.set_next_action(
            parcel,
            "locker",
            locker=locker,
            reason=f"{asked}: {locker} is {km:.1f} km away with a free compartment for a "
            f"size {size} parcel",
        )
        self.send_command(locker, "reserve", self._reserve_args(parcel, record, locker, None))
        return {**r, "next_action": "locker", "locker": locker}, take_compartment(
            sites, locker, size
        )

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
            card = t.details.get("card")
            self._after_failure(
                t.parcel,
                reason=str(t.details.get("reason", "")),
                card=card if isinstance(card, str) else None,
            )
        elif t.state == "hold_expired":
            decision = decide_after_hold_expired(str(t.details.get("locker") or t.device))
            self.book.set_next_action(t.parcel, decision.kind, reason=decision.reason)
            self.decisions.append((t.parcel, decision))
            self._plan_collection(t)
        elif t.state == "reserve_failed":
            self._after_failure(t.parcel, reason=None)
        elif t.state == "return_dropped":  # a customer's return: collected like an expiry
            self.returns.step(t.parcel, "dropped")
            self._plan_collection(t)
        elif t.state == "pickup_missed":
            # The courier could not take a door return: its customer and merchant are told
            # (once per van event); it stays uncollected, so the next day's plan takes it again.
            self.returns.pickup_missed(t.parcel, t.event_uuid, t.details)
        elif t.state == "returning":
            with self.database.transaction() as conn:  # out of its locker, if it was in one
                collections.mark_done(conn, t.parcel, self.clock.wall_ns())
            # Out of a locker, or handed to the courier at the door: in the courier's van.
            collected = t.step in ("collected_for_return", "collected_at_door")
            self.returns.step(t.parcel, "collected" if collected else "at_depot")
            if not collected:
                # Back at the depot (the van's return scan): handed to the return to the
                # merchant. Taken out of a locker, it is still in the courier's van.
                self.book.mark_returned_to_sender(t.parcel)

    def _after_failure(
        self,
        parcel: str,
        *,
        reason: str | None,
        tried_too: Sequence[str] = (),
        card: str | None = None,
    ) -> None:
        """Decide what follows a failed attempt (or a refused reservation) and send it.

        `card` is the code of the card the courier left: a staffed counter chosen for the
        parcel gets its tag (parcel.cards.card_tag, never the code), so the customer can
        collect there with the card and their name."""
        info = self.book.parcel(parcel)
        if info is None:
            return
        record = info.get("record") or {}
        # Read from the book, not kept in memory: another worker, or this one before a restart,
        # may have sent the parcel to a locker that then refused it.
        tried = [*self.book.lockers_decided(parcel), *tried_too]
        if reason is None:  # a reservation refused: same failure, next locker
            reason = str(info.get("last_reason") or "not_at_home")
        try:
            decision = self._decide(info, record, reason, tried)
        except PolicyError as exc:  # e.g. a reason this depot does not know: a person decides
            log.error("no policy decision for %s: %s", parcel, exc)
            return
        self._carry_out(parcel, decision, info, card=card)

    def _carry_out(
        self, parcel: str, decision: NextAction, info: Mapping[str, Any], *, card: str | None
    ) -> None:
        """Record `decision` for `parcel` (`info`: the book's row before it) and act on it:
        the policy's own after a failure, or the customer's choice of a locker or a counter
        (`customer_to_locker`). A locker or counter is reserved with a signed command, with
        the tag of the card `card` when it is a counter, and a van still out with the parcel
        gets it moved to that site's stop."""
        record = info.get("record") or {}
        self.decisions.append((parcel, decision))
        state = self.book.set_next_action(
            parcel, decision.kind, locker=decision.locker, reason=decision.reason
        )
        if state == "returning":  # already back at the depot: hand it to the return at once
            self.book.mark_returned_to_sender(parcel)
        if decision.kind == "locker" and decision.locker is not None:
            args = self._reserve_args(parcel, record, decision.locker, card)
            self.send_command(decision.locker, "reserve", args)
            van = info.get("van")
            if van and info.get("state") not in ("at_depot",):
                self._redirect_on_route(str(van), parcel, decision.locker)

    def _reserve_args(
        self, parcel: str, record: Mapping[str, Any], site_name: str, card: str | None
    ) -> dict[str, Any]:
        """A `reserve` command's arguments for `parcel` at `site_name`. A staffed counter also
        gets the tag of the card `card` (parcel.cards.card_tag, never the code) and the proof
        its staff must ask, as the door would (parcel.care): a signature, an ID check's age."""
        args: dict[str, Any] = {
            "parcel": parcel,
            "size": str(record.get("size", "S")),
            "hours": self.config.locker_hold_h,
        }
        site = next((s for s in self.config.lockers if s.name == site_name), None)
        if site is None or site.kind != "counter":
            return args
        if card is not None:
            tag = card_tag(site.name, card, str(record.get("recipient", "")))
            if tag is not None:
                args["card_tag"] = tag
        with self.database.reading() as conn:
            care = care_of(conn, parcel)
        args["signature"] = care is not None and care.needs_signature
        if care is not None and care.age_min is not None:
            args["age_min"] = care.age_min
        return args

    def _check_locker_drops(self) -> None:
        """Act on drops the van and the locker still disagree about after their time: an
        operator alarm for a claim the locker never confirmed or a deposit the van never
        claimed (after `[policy] locker_confirm_min`); for a drop-off the locker saw abandoned
        and nobody retried, the parcel goes back on the van's round (`_after_abandoned`).
        One transaction per disagreement, which closes it: it is acted on once."""
        now = self.clock.wall_ns()
        due = self.book.locker_drops_due(
            unconfirmed_before_ns=now - int(self.config.locker_confirm_min * 60e9),
            abandoned_before_ns=now - int(ABANDONED_GRACE_S * 1e9),
        )
        for drop in due:
            with self.database.transaction() as conn:
                if not self.book.forget_locker_drop(drop):
                    continue  # another worker acted on it
                if drop.kind != "abandoned":
                    raise_alarm(
                        conn,
                        device=drop.van or drop.locker,
                        alarm=LOCKER_DROP_ALARM,
                        facts=_disagreement(drop, now),
                        at_ns=now,
                        key=f"{LOCKER_DROP_ALARM}:{drop.parcel}:{drop.event_uuid}",
                    )
                    continue
                try:
                    with self.database.transaction():  # a savepoint, as in `_react_next`
                        self._after_abandoned(drop)
                except Exception:
                    log.exception("abandoned drop-off of %s: no decision", drop.parcel)

    def _after_abandoned(self, drop: LockerDrop) -> None:
        """The parcel is still with the courier: the policy chooses again with that locker
        tried (another locker on the van's route, as after a refused reservation; else a second
        attempt or the return), and unless it chose another locker the van's manifest is
        re-issued without the parcel, so the courier keeps it for the depot."""
        info = self.book.parcel(drop.parcel)
        if info is None or info.get("state") not in _ON_THE_ROUND or not info.get("van"):
            return  # in a locker after all, back at the depot, or final
        self._after_failure(drop.parcel, reason=None, tried_too=(drop.locker,))
        van = str(info["van"])
        current = self.current_manifest(van)
        due = current.stop_of(drop.parcel) if current is not None else None
        if current is None or due is None:
            return
        stop = current.stop(due)
        if stop.kind == "locker" and stop.locker != drop.locker:
            return  # the policy sent it on to another locker (`_redirect_on_route`)
        stops = tuple(
            dataclasses.replace(
                s,
                parcels=tuple(p for p in s.parcels if p != drop.parcel),
                care={p: c for p, c in s.care.items() if p != drop.parcel},
            )
            for s in current.stops
        )
        self._issue(
            dataclasses.replace(
                current,
                version=self._next_version(van, current.day),
                stops=stops,
                issued_at=self.clock.wall_ns() / 1e9,
            )
        )

    def _decide(
        self,
        info: Mapping[str, Any],
        record: Mapping[str, Any],
        reason: str,
        tried: list[str],
    ) -> NextAction:
        """The policy's next action for a failed parcel. A parcel that must be signed for or
        needs an ID check goes to no locker (a locker opens for a code alone), only to a
        staffed counter, whose staff ask for both."""
        with self.database.reading() as conn:
            care = care_of(conn, str(info.get("id") or record.get("id") or ""))
        sites = self._locker_sites()
        if care is not None and care.needs_signature:
            counters = {s.name for s in self.config.lockers if s.kind == "counter"}
            sites = [s for s in sites if s.name in counters]
        return decide_after_failure(
            reason=reason,
            attempts=int(info.get("attempts") or 0),
            # A customer the depot cannot send the pickup code to could never collect: a
            # locker only for those with a notification address.
            locker_ok=bool(record.get("locker_ok", True)) and bool(info.get("customer_webhook")),
            size=str(record.get("size", "S")),
            stop_lat=float(record.get("lat", self.config.lat)),
            stop_lon=float(record.get("lon", self.config.lon)),
            lockers=sites,
            tried_lockers=tuple(tried),
            max_attempts=self.config.max_attempts,
            max_locker_km=self.config.max_locker_km,
        )

    def _locker_sites(self) -> list[LockerSite]:
        """Free compartments per locker: its sizes minus the parcels held or reserved there."""
        return free_sites(self.config.lockers, self.book.locker_occupancy())

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

    # --- collections: expired holds back to the depot ----------------------------------------

    def collections_planned(self) -> dict[str, int]:
        """Collections of expired holds: `planned` (every expiry the depot reacted to),
        `collected` (the parcel left its locker for the depot), `open` (still to do)."""
        with self.database.reading() as conn:
            return collections.planned_count(conn)

    def _plan_collection(self, t: Transition) -> None:
        """Record that the expired parcel is to be collected, and put it on the round of the
        van out today whose round passes nearest the locker (a new manifest version); with
        no van out, the next day's plan takes it (`plan_day` adds every open collection)."""
        locker = str(t.details.get("locker") or t.device)
        compartment = t.details.get("compartment")
        with self.database.transaction() as conn:
            collections.plan(
                conn,
                parcel=t.parcel,
                locker=locker,
                compartment=str(compartment) if compartment else None,
                event_uuid=t.event_uuid,
                now_ns=self.clock.wall_ns(),
            )
        out = {v: m for v in self.config.vans if (m := self._out_today(v)) is not None}
        lockers = {site.name: site for site in self.config.lockers}
        site = lockers.get(locker)
        if site is None or not out:
            return
        van = nearest_round((site.lat, site.lon), {v: m.stops for v, m in out.items()}, self._here)
        if van is None:
            return
        current = out[van]
        updated = self._collecting(current, locker, lockers, self._next_version(van, current.day))
        if updated is None:
            return
        self._issue(updated)
        self._note_collections(updated)
        log.info("collection at %s added to %s's manifest v%d", locker, van, updated.version)

    @property
    def _here(self) -> tuple[float, float]:
        return (self.config.lat, self.config.lon)

    def _out_today(self, van: str) -> Manifest | None:
        """The manifest `van` runs now, or None when it has none or has closed its day."""
        current = self.current_manifest(van)
        if current is None:
            return None
        if any(r["day"] == current.day for r in self.book.reconciliations(van)):
            return None
        return current

    def _open_returns(self) -> dict[str, list[LockerReturn]]:
        with self.database.reading() as conn:
            rows = collections.open_collections(conn)
        found: dict[str, list[LockerReturn]] = {}
        for parcel, locker, compartment in rows:
            found.setdefault(str(locker), []).append(
                LockerReturn(str(parcel), str(compartment) if compartment else None)
            )
        return found

    def _collecting(
        self, manifest: Manifest, locker: str, lockers: Mapping[str, Any], version: int
    ) -> Manifest | None:
        """`manifest` as a new version collecting every open return of `locker`; None when
        it collects them all already."""
        returns = self._open_returns().get(locker, [])
        if all(manifest.collected_at(r.parcel) is not None for r in returns):
            return None
        return _move_to_lockers(
            manifest,
            {},
            lockers,
            version=version,
            issued_at=self.clock.wall_ns() / 1e9,
            collect={locker: returns},
        )

    def _with_collections(
        self, manifests: Mapping[str, Manifest], lockers: Mapping[str, Any]
    ) -> dict[str, Manifest]:
        """The day's manifests with every open collection on the round nearest its locker."""
        out = dict(manifests)
        for locker, returns in self._open_returns().items():
            site = lockers.get(locker)
            if site is None:
                log.error("expired parcels at %s, a locker this depot does not know", locker)
                continue
            rounds = {v: m.stops for v, m in out.items()}
            van = nearest_round((site.lat, site.lon), rounds, self._here)
            if van is None:
                break
            m = out[van]
            out[van] = _move_to_lockers(
                m, {}, lockers, version=m.version, collect={locker: returns}
            )
        return out

    def _note_collections(self, manifest: Manifest) -> None:
        if not manifest.collections:
            return
        with self.database.transaction() as conn:
            for parcel in manifest.collections:
                collections.note_on_manifest(
                    conn, parcel, van=manifest.van, day=manifest.day, version=manifest.version
                )

    # --- customers' returns (depot.returns) ---------------------------------------------------

    def book_return(
        self,
        parcel: str,
        *,
        by: str,
        size: str | None = None,
        locker: str | None = None,
        merchant: str | None = None,
        handover: str = "locker",
    ) -> BookedReturn:
        """Book the return of a delivered parcel (`ReturnDesk.book`; ReturnRefused says why
        not): the locker is told to expect it, the merchant and the customer are told. A
        return handed over at the door (`handover="door"`) goes on the round of a van out
        today that still calls at the address (`_plan_door_pickup`), else on the next day's
        plan (`_with_door_pickups`)."""
        booked = self.returns.book(
            parcel, by=by, size=size, locker=locker, merchant=merchant, handover=handover
        )
        if booked.handover == "door":
            try:
                self._plan_door_pickup(booked.return_id)
            except Exception:  # booked and told: the next day's plan takes it all the same
                log.exception("door pickup of %s not planned today", booked.return_id)
        self._wake.set()
        return booked

    def customer_return(self, token: str, how: str) -> BookedReturn:
        """The customer booked a return from their page: `how` is `locker` (the nearest
        locker with room, a code on the page) or `door` (a courier calls at the address).
        UnknownLink, LinkExpired or ReturnRefused say why not."""
        if how not in ("locker", "door"):
            raise ReturnRefused("choose a parcel locker or the courier at your door", status=400)
        with self.database.reading() as conn:
            parcel = self._customer_parcel(conn, token)
        return self.book_return(parcel, by="customer", handover=how)

    def _plan_door_pickup(self, return_id: str) -> None:
        """Put a door return's pickup on the stop at its address of a van out today that has
        not called there yet (a new manifest version); without one, the next day's plan."""
        ret = next((r for r in self.returns.door_pickups() if r["return_id"] == return_id), None)
        if ret is None:
            return
        for van in self.config.vans:
            current = self._out_today(van)
            if current is None or current.picked_up_at(return_id) is not None:
                continue
            stop = next(
                (
                    s
                    for s in current.stops
                    if _same_door(s, ret["record"]) and self._not_called_yet(van, s)
                ),
                None,
            )
            if stop is None:
                continue
            updated = dataclasses.replace(
                _with_pickup_at(current, stop.stop, return_id),
                version=self._next_version(van, current.day),
                issued_at=self.clock.wall_ns() / 1e9,
            )
            self._issue(updated)
            self.returns.pickup_planned(return_id, van, current.day)
            log.info("door pickup of %s added to %s's manifest v%d, stop %d", return_id, van,
                     updated.version, stop.stop)
            return

    def _not_called_yet(self, van: str, stop: Stop) -> bool:
        """Whether `van` still has to call at `stop`: a parcel of it is still on its way."""
        for parcel in stop.parcels:
            info = self.book.parcel(parcel) or {}
            if info.get("van") == van and info.get("state") in _STILL_TO_CALL:
                return True
        return False

    def _with_door_pickups(self, manifests: Mapping[str, Manifest]) -> dict[str, Manifest]:
        """The day's manifests with every door return no courier has taken yet: on a stop at
        its address when a round has one, else a new stop on the round passing nearest, where
        it lengthens the round least (`_with_pickup_stop`)."""
        out = dict(manifests)
        for ret in self.returns.door_pickups():
            return_id, record = str(ret["return_id"]), ret["record"]
            if any(m.picked_up_at(return_id) is not None for m in out.values()):
                continue
            hit = next(
                ((v, s) for v, m in out.items() for s in m.stops if _same_door(s, record)), None
            )
            if hit is not None:
                van, stop = hit
                out[van] = _with_pickup_at(out[van], stop.stop, return_id)
                continue
            try:
                place = (float(record["lat"]), float(record["lon"]))
            except (KeyError, TypeError, ValueError):
                log.error("door return %s: its parcel's address has no position", return_id)
                continue
            nearest = nearest_round(place, {v: m.stops for v, m in out.items()}, self._here)
            if nearest is None:
                log.warning("door return %s: no round to pick it up on", return_id)
                break
            out[nearest] = _with_pickup_stop(out[nearest], record, return_id, self._here)
        return out

    def card_figures(self) -> dict[str, int]:
        """Failure cards the vans left, and how many led their customer to a choice on the
        parcel's page (deliver again, a locker, the counter)."""
        with self.database.reading() as conn:
            left, used = outcome_table.card_uses(
                conn, REQUEST_STEP, {REDELIVER, *PICKUP_REQUESTS.values()}
            )
        return {"left": left, "used_on_page": used}

    def customer_returns(self) -> dict[str, int]:
        """Customers' returns booked, dropped, collected and back at the depot."""
        return self.returns.counts()

    # --- signed commands ---------------------------------------------------------------------

    def send_command(self, target: str, action: str, args: Mapping[str, Any]) -> str:
        """Queue a signed command; it is signed afresh (same id) each time it is published.

        An action a locker does not know, arguments it would refuse, or a target that is not
        one of this depot's lockers are a DepotServiceError here, before anything is queued.
        """
        import uuid

        try:
            args = check_command(action, args)
        except WireError as exc:
            raise DepotServiceError(str(exc)) from None
        if target not in {site.name for site in self.config.lockers}:
            known = ", ".join(site.name for site in self.config.lockers) or "none"
            raise DepotServiceError(f"{target!r} is not one of this depot's lockers ({known})")
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
        if self.keys.signing is None:
            return
        from sync.signing import sign_command

        now = self.clock.wall_ns()
        rows = sends.claim_commands(self.database, now_ns=now, until_ns=now + self._lease_ns)
        for i, (cid, target, action, args) in enumerate(rows):
            payload = sign_command(
                self.keys.signing,
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
        body: Mapping[str, Any] = n.body
        if body.get("state") == "in_locker":
            body = self._pickup_notice(conn, n)
        details = body.get("details")
        if isinstance(details, Mapping) and details.get("card_left"):
            # A failed attempt that left a card: where its code is typed (`depot.cards`).
            body = {**body, "details": {**details, CARD_URL: card_url(self.public_url)}}
        if n.audience == "customer":  # the merchant's copy never: the page shows the code
            parcel = str(n.body.get("parcel"))
            link = link_at_rest(conn, self.keys, parcel, self.public_url, self.clock.wall_ns())
            if link is not None:
                body = {**body, TRACKING_URL: link}
        enqueue(
            conn,
            event_id=n.event_id,
            url=n.url,
            body=body,
            key_id=key_id,
            now_ns=self.clock.wall_ns(),
        )

    def _pickup_notice(self, conn: Conn, n: Notification) -> Mapping[str, Any]:
        """An `in_locker` message as a pickup notice, when a locker's deposit caused it (the
        deposit's sealed credential goes in the customer's copy, opened only when sent)."""
        entry = n.event_id.rpartition(":")[0]
        found = book.deposit_of_entry(conn, entry)
        if found is None:
            return n.body  # in the locker again after an extension: where and until when
        locker, payload = found
        deposit = json.loads(str(payload))
        parcel = str(n.body.get("parcel"))
        sites = {site.name: site for site in self.config.lockers}
        token = extend_token(self.keys, parcel)
        base = self.public_url
        return notice_body(
            n.body,
            audience=n.audience,
            deposit=deposit,
            site=sites.get(str(locker)),
            locker=str(locker),
            extend_url=extend_link(base, parcel, token) if base and token else None,
        )

    @property
    def public_url(self) -> str | None:
        """Where customers reach this depot's API (links in notices), if anywhere."""
        if self.config.public_url:
            return self.config.public_url
        if self.config.api is None:
            return None
        host, port = self.config.api
        if self.api is not None:
            port = int(self.api.port)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def extend_hold(self, parcel: str, token: str) -> tuple[str, float]:
        """The customer's extend-hold link was used: queue `extend_hold` for the parcel's
        locker; (the command's id, the hours asked for). ExtendRefused (said to the customer)
        when the token is not the depot's, the parcel is not waiting in a locker, or its hold
        was extended before or is over: once, before it ends, is the carrier's offer."""
        if not check_extend_token(self.keys, parcel, token):
            raise ExtendRefused("this link is not valid for that parcel", forbidden=True)
        command, hours, locker = self._queue_extend(parcel, {})
        log.info("customer asked for %g more hours for %s at %s", hours, parcel, locker)
        return command, hours

    def _queue_extend(self, parcel: str, extra: Mapping[str, Any]) -> tuple[str, float, str]:
        """`extend_hold` for `parcel` at its locker under the one rule (`extend_refusal`:
        once, while it waits in a locker, before the hold ends), whoever asks; (the command's
        id, the hours, the locker). ExtendRefused before anything is queued."""
        if self.keys.signing is None:
            raise ExtendRefused("this depot cannot send commands to lockers just now")
        info = self.book.parcel(parcel)
        if info is None:
            raise ExtendRefused(f"unknown parcel {parcel}")
        with self.database.reading() as conn:
            asked = book.commands_noted(conn, parcel, "extend_hold") > 0
        locker = info.get("locker")
        refusal = extend_refusal(info.get("state"), asked_before=asked, locker=locker)
        if refusal is not None:
            raise ExtendRefused(refusal)
        hours = self.config.extend_hold_h
        args = {"parcel": parcel, "hours": hours, **extra}
        return self.send_command(str(locker), "extend_hold", args), hours, str(locker)

    # --- the operators' console (depot.web.pages.lockers) -------------------------------------

    def operator_extend_hold(self, parcel: str, by: str, reason: str) -> tuple[str, float]:
        """An operator asked from the console for more time for `parcel` at its locker: the
        customer's rule (`extend_refusal`: once, while it waits in a locker, before the hold
        ends) without the link's token; the operator's name and reason are signed into the
        command, so the depot's outbox row and the locker's journal both say who and why.
        (the command's id, the hours asked for); ExtendRefused or DepotServiceError say why
        not, before anything is queued."""
        by, reason = _who_and_why(by, reason)
        command, hours, locker = self._queue_extend(parcel, {"by": by, "reason": reason})
        log.info("%s asked for %g more hours for %s at %s: %s", by, hours, parcel, locker, reason)
        return command, hours

    def operator_remote_open(self, locker: str, compartment: str, by: str, reason: str) -> str:
        """An operator opens a compartment from the console: a signed `remote_open` through
        the command outbox, naming who and why (the locker journals both with its answer);
        the command's id. A reason is required: a door opened from afar must be explained."""
        return self._operator_command(locker, "remote_open", compartment, by, reason)

    def operator_set_in_service(
        self, locker: str, compartment: str, by: str, reason: str
    ) -> str:
        """An operator puts back in service a compartment the locker took out (a jammed lock,
        fixed): a signed `set_in_service`, naming who and why; the command's id. The locker
        refuses it (`command_failed`) for a compartment that is in service."""
        return self._operator_command(locker, "set_in_service", compartment, by, reason)

    def _operator_command(
        self, locker: str, action: str, compartment: str, by: str, reason: str
    ) -> str:
        by, reason = _who_and_why(by, reason)
        if self.keys.signing is None:
            raise DepotServiceError("this depot has no key to sign commands to lockers")
        command = self.send_command(
            locker, action, {"compartment": compartment, "by": by, "reason": reason}
        )
        log.info("%s: %s %s at %s: %s", by, action, compartment, locker, reason)
        return command

    # --- the customer's page (depot.customer) ----------------------------------------------

    def card_link(self, code: str) -> CardAnswer:
        """Where the failure card with `code` leads (`depot.cards.card_answer`): its parcel's
        tracking page while the journey is open, its link recorded so the page finds it.
        CardUnreadable or UnknownCard say why not."""
        with self.database.transaction() as conn:
            return card_answer(conn, self.keys, code, self.clock.wall_ns())

    def customer_preferences(self, token: str, form: Mapping[str, str]) -> Care:
        """The customer changed their delivery preferences on their page (`form`: the page's
        fields, `depot.preferences.customer_care`): stored, in the parcel's timeline
        (`preferences_changed`), and, when the parcel is on a van's manifest today, that
        manifest re-issued with the new care (`_reissue_with_care`), in one transaction. The
        care now is returned; UnknownLink, LinkExpired or PreferencesRefused (in the
        customer's words) say why not, and nothing is recorded then. The same choices again
        record nothing."""
        with self.database.transaction() as conn:
            parcel = self._customer_acts(conn, token)
            info = book.parcel_row(conn, parcel) or {}
            refusal = change_refusal(str(info.get("state")))
            if refusal is not None:
                raise PreferencesRefused(f"{refusal}, so they can no longer be changed")
            current = care_of(conn, parcel) or Care.default()
            care = customer_care(current, form, info)
            if care == current:
                return care
            store_choices(conn, parcel, care, self.clock.wall_ns())
            self.book.record_request(parcel, PREFERENCES, {"care": care.to_doc()})
            self._reissue_with_care(parcel, info.get("van"), care)
        log.info("customer changed the delivery preferences of %s", parcel)
        self._wake.set()
        return care

    def _reissue_with_care(self, parcel: str, van: object, care: Care) -> None:
        """The van that has `parcel` at an address stop of today's manifest gets a new
        version of it with the parcel's new care, so the courier's screen and the van's
        refusals follow the customer's word (as a redirect re-issues it, `_redirect_on_route`).
        A parcel on its way to a locker keeps its locker stop: the door is not asked there."""
        current = self._out_today(str(van)) if van else None
        due = current.stop_of(parcel) if current is not None else None
        if current is None or due is None or current.stop(due).kind != "address":
            return
        stops = tuple(
            dataclasses.replace(s, care={**s.care, parcel: care}) if s.stop == due else s
            for s in current.stops
        )
        updated = dataclasses.replace(
            current,
            version=self._next_version(current.van, current.day),
            stops=stops,
            issued_at=self.clock.wall_ns() / 1e9,
        )
        self._issue(updated)
        log.info("%s's manifest v%d: new care for %s", current.van, updated.version, parcel)

    def tracking_link(self, parcel: str) -> str | None:
        """`parcel`'s tracking link, as its customer's notices carry it (recorded, so it
        works from now on); None when the depot has no sealing key, or no such parcel."""
        with self.database.transaction() as conn:
            if book.state_of(conn, parcel) is None:
                return None
            token = record_link(conn, self.keys, parcel, self.clock.wall_ns())
        return None if token is None else tracking_url(self.public_url, token)

    def customer_view(self, token: str) -> CustomerView:
        """What the customer's page of `token` shows now (`depot.customer.customer_view`);
        UnknownLink for a token the depot did not give out."""
        with self.database.reading() as conn:
            return customer_view(
                conn,
                token,
                keys=self.keys,
                lockers=self.config.lockers,
                now_ns=self.clock.wall_ns(),
                max_attempts=self.config.max_attempts,
                can_command=self.keys.signing is not None,
                max_locker_km=self.config.max_locker_km,
            )

    def _customer_parcel(self, conn: Conn, token: str) -> str:
        link = find_link(conn, token)
        if link.expired(self.clock.wall_ns()):
            raise LinkExpired()
        return link.parcel

    def _customer_acts(self, conn: Conn, token: str) -> str:
        """The parcel of `token`, locked for this transaction (`lock_parcel`): what the
        customer's request reads of it next stays true until it has acted."""
        parcel = self._customer_parcel(conn, token)
        self.database.lock_parcel(conn, parcel)
        return parcel

    def customer_extend(self, token: str) -> tuple[str, float]:
        """The customer asked for more time from their page: `extend_hold` for the parcel of
        `token` (the same rule, once, before the hold ends), and the request in its timeline,
        in one transaction. UnknownLink, LinkExpired or ExtendRefused say why not."""
        with self.database.transaction() as conn:
            parcel = self._customer_acts(conn, token)
            proof = extend_token(self.keys, parcel)
            if proof is None:
                raise ExtendRefused("this depot cannot extend holds just now")
            command, hours = self.extend_hold(parcel, proof)
            self.book.record_request(parcel, EXTEND, {"hours": hours, "command": command})
        return command, hours

    def customer_redeliver(self, token: str) -> NextAction:
        """The customer asked for delivery on the next day from their page: the request is
        recorded in the parcel's timeline and the policy decides it
        (`depot.policy.decide_on_redelivery_request`: a `second_attempt` the next day's plan
        carries out), in one transaction. UnknownLink, LinkExpired or RequestDeclined (the
        policy's reason, in the customer's words) when it is not taken; nothing is recorded
        then."""
        with self.database.transaction() as conn:
            parcel = self._customer_acts(conn, token)
            decision = redelivery_decision(conn, parcel, max_attempts=self.config.max_attempts)
            self.book.record_request(parcel, REDELIVER, {})
            self.book.set_next_action(parcel, decision.kind, reason=decision.reason)
        self.decisions.append((parcel, decision))
        log.info("customer asked for %s to be delivered again: %s", parcel, decision.kind)
        self._wake.set()
        return decision

    def customer_to_locker(self, token: str) -> PickupOffer:
        """The customer chose, after a missed delivery, to collect the parcel from a locker
        (`depot.policy.decide_on_pickup_choice`: the nearest with room within `[policy]
        max_locker_km`): reserved and, with the parcel still on a van, moved to that locker's
        stop (`_carry_out`, as the policy's own choice), the request in the timeline, in one
        transaction. UnknownLink, LinkExpired or RequestDeclined say why not."""
        return self._customer_pickup(token, "locker")

    def customer_to_counter(self, token: str) -> PickupOffer:
        """As `customer_to_locker`, to the nearest staffed counter with room; its `reserve`
        carries the tag of the card the last attempt left, so the card and a name collect it."""
        return self._customer_pickup(token, "counter")

    def _customer_pickup(self, token: str, choice: PickupChoice) -> PickupOffer:
        with self.database.transaction() as conn:
            parcel = self._customer_acts(conn, token)
            decision, offer = pickup_choice(
                conn,
                parcel,
                choice,
                lockers=self.config.lockers,
                max_locker_km=self.config.max_locker_km,
            )
            if self.keys.signing is None:
                raise RequestDeclined("the depot cannot send commands to lockers just now")
            card = last_card(conn, parcel)
            info = self.book.parcel(parcel) or {}
            self.book.record_request(parcel, PICKUP_REQUESTS[choice], {"site": offer.site})
            self._carry_out(parcel, decision, info, card=card)
        log.info("customer chose to collect %s at %s %s", parcel, choice, offer.site)
        self._wake.set()
        return offer

    # --- the operators' console (depot.web.pages.exceptions) --------------------------------

    def operator_replan(self, parcel: str, by: str, *, alarm: int | None = None) -> str:
        """An operator puts the parcel back to be planned: the policy's `second_attempt`
        (the next `plan_day` puts a parcel at the depot on a van; one still with a van is
        planned once its return scan brings it back to the depot), recorded in its timeline
        with the operator's name; `alarm` (the disagreement that led here) is acknowledged in
        the same transaction. Returns the parcel's state. DepotServiceError when the parcel
        cannot go out again from where it is (`REPLAN_FROM`)."""
        with self.database.transaction() as conn:
            self._operator_parcel(conn, parcel, REPLAN_FROM, "re-plan")
            state = self.book.set_next_action(
                parcel, "second_attempt", reason=f"re-planned by {by} at the console"
            )
            self._operator_ack(conn, alarm, by, "re-planned the parcel")
        self.decisions.append(
            (parcel, NextAction("second_attempt", None, f"re-planned by {by}"))
        )
        log.info("operator %s re-planned %s (%s)", by, parcel, state)
        self._wake.set()
        return state

    def operator_return_to_sender(self, parcel: str, by: str, *, alarm: int | None = None) -> str:
        """An operator sends the parcel back to its sender: `return_to_sender` recorded with
        the operator's name; a parcel at the depot (received, at_depot, returning) is booked
        handed back at once (`mark_returned_to_sender`, as `_after_failure` does), one still
        out comes back with its van and is booked then. `alarm` is acknowledged with it.
        Returns the parcel's state; DepotServiceError outside `RETURN_FROM`."""
        with self.database.transaction() as conn:
            self._operator_parcel(conn, parcel, RETURN_FROM, "return to its sender")
            state = self.book.set_next_action(
                parcel, "return_to_sender", reason=f"returned to its sender by {by} at the console"
            )
            if state in ("received", "at_depot", "returning"):
                self.book.mark_returned_to_sender(parcel)
                state = "returned_to_sender"
            self._operator_ack(conn, alarm, by, "returned the parcel to its sender")
        self.decisions.append(
            (parcel, NextAction("return_to_sender", None, f"returned by {by}"))
        )
        log.info("operator %s returned %s to its sender (%s)", by, parcel, state)
        self._wake.set()
        return state

    def operator_retry_webhook(self, event_id: str, by: str) -> None:
        """An operator requeues a dead letter (after fixing the receiver or a key): pending
        again, a fresh budget of attempts, due at once (`depot.webhooks.retry_dead`).
        DepotServiceError when it is not a dead letter (sent or requeued meanwhile)."""
        from depot.webhooks import retry_dead

        with self.database.transaction() as conn:
            if not retry_dead(conn, event_id):
                raise DepotServiceError(f"webhook {event_id} is not a dead letter (any more)")
        log.info("operator %s requeued the dead webhook %s", by, event_id)
        self.webhooks.wake()

    def _operator_parcel(
        self, conn: Conn, parcel: str, allowed: frozenset[str], doing: str
    ) -> str:
        state = book.state_of(conn, parcel)
        if state is None:
            raise DepotServiceError(f"no parcel {parcel!r} at this depot")
        if state not in allowed:
            raise DepotServiceError(
                f"{parcel} is {state.replace('_', ' ')}: cannot {doing} it from there"
            )
        return state

    def _operator_ack(self, conn: Conn, alarm_id: int | None, by: str, note: str) -> None:
        """Acknowledge the alarm an operator's action answered (one acknowledged meanwhile
        keeps its first acknowledgement: the action stands anyway)."""
        if alarm_id is None:
            return
        from depot.alarms import AlarmStateError, acknowledge

        with contextlib.suppress(AlarmStateError):
            acknowledge(conn, alarm_id, by=by, note=note, now_ns=self.clock.wall_ns())

    def _secret_for(self, key_id: str) -> bytes:
        try:
            return self.config.webhook_secrets[key_id]
        except KeyError:
            raise DepotServiceError(f"no webhook secret for {key_id!r}") from None


def _who_and_why(by: str, reason: str) -> tuple[str, str]:
    """An operator's name and reason as a command carries them: one line each (a locker takes
    printable text only), the reason at most `MAX_REASON` characters; DepotServiceError when
    either is missing, so no command goes out unexplained."""
    by, reason = " ".join(by.split()), " ".join(reason.split())
    if not by:
        raise DepotServiceError("a command from a person must say who asked")
    if not reason:
        raise DepotServiceError("say why (a reason is required)")
    if len(reason) > MAX_REASON or len(by) > MAX_REASON:
        raise DepotServiceError(f"a reason is at most {MAX_REASON} characters")
    return by, reason


def _disagreement(drop: LockerDrop, now_ns: int) -> dict[str, Any]:
    """What the operator is told about a drop the van and the locker disagree on."""
    if drop.kind == "claim":
        say = f"{drop.van} says it dropped {drop.parcel} at {drop.locker}; the locker has not"
    else:
        say = f"{drop.locker} holds {drop.parcel}; {drop.van} has not said it dropped it there"
    return {
        "parcel": drop.parcel,
        "locker": drop.locker,
        "van": drop.van,
        "compartment": drop.compartment,
        "unconfirmed": "van_claim" if drop.kind == "claim" else "locker_deposit",
        "since": iso_utc(drop.since_ns),
        "waited_min": round((now_ns - drop.since_ns) / 60e9, 1),
        "say": say,
    }


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
    collect: Mapping[str, Sequence[LockerReturn]] | None = None,
) -> Manifest:
    """A copy of `manifest` with each parcel in `moving` taken off its stop and put on a
    locker stop, and each locker's returns in `collect` added to its stop (one stop per
    locker, appended after the existing stops or extended)."""
    stops: list[Stop] = []
    locker_stops: dict[str, list[str]] = {}
    returns: dict[str, dict[str, LockerReturn]] = {}
    for s in manifest.stops:
        kept = tuple(p for p in s.parcels if p not in moving)
        if s.kind == "locker" and s.locker is not None:
            locker_stops.setdefault(s.locker, []).extend(kept)
            returns.setdefault(s.locker, {}).update({r.parcel: r for r in s.collect})
            continue
        stops.append(_renumber(s, len(stops) + 1, kept))
    for parcel, locker in moving.items():
        locker_stops.setdefault(locker, []).append(parcel)
    for locker, added in (collect or {}).items():
        locker_stops.setdefault(locker, [])
        returns.setdefault(locker, {}).update({r.parcel: r for r in added})
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
                collect=tuple(returns.get(locker, {}).values()),
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


# A parcel in one of these states is still to be handed over on its van's round.
_STILL_TO_CALL = frozenset({"received", "at_depot", "loaded", "out_for_delivery"})


def _door_text(text: object) -> str:
    return " ".join(str(text or "").split()).casefold()


def _same_door(stop: Stop, record: Mapping[str, Any]) -> bool:
    """Whether `stop` calls at the address of the parcel `record`: the same address text
    (case and spacing aside). Neighbours in one building are different doors."""
    address = _door_text(record.get("address"))
    return stop.kind == "address" and bool(address) and _door_text(stop.address) == address


def _with_pickup_at(manifest: Manifest, number: int, return_id: str) -> Manifest:
    """`manifest` with the door return's pickup added to stop `number` (same version)."""
    stops = tuple(
        dataclasses.replace(s, pickups=(*s.pickups, DoorPickup(return_id)))
        if s.stop == number
        else s
        for s in manifest.stops
    )
    return dataclasses.replace(manifest, stops=stops)


def _with_pickup_stop(
    manifest: Manifest, record: Mapping[str, Any], return_id: str, depot: tuple[float, float]
) -> Manifest:
    """`manifest` with a new address stop for a door return at its original's address, put
    among the address stops where it adds the least distance (locker stops stay last), the
    stops renumbered. Checked by reading it back as the van will."""
    lat, lon = float(record["lat"]), float(record["lon"])
    doors = [s for s in manifest.stops if s.kind == "address"]
    rest = [s for s in manifest.stops if s.kind != "address"]
    after = (rest[0].lat, rest[0].lon) if rest else depot

    def detour(i: int) -> float:
        before = depot if i == 0 else (doors[i - 1].lat, doors[i - 1].lon)
        nxt = (doors[i].lat, doors[i].lon) if i < len(doors) else after
        return (
            distance_m(*before, lat, lon) + distance_m(lat, lon, *nxt) - distance_m(*before, *nxt)
        )

    at = min(range(len(doors) + 1), key=detour)
    stop = Stop(
        stop=0,
        kind="address",
        lat=lat,
        lon=lon,
        parcels=(),
        address=str(record.get("address") or ""),
        recipient=str(record.get("recipient") or ""),
        instructions=str(record.get("instructions") or ""),
        access_code=str(record.get("access_code") or ""),
        pickups=(DoorPickup(return_id),),
    )
    ordered = [*doors[:at], stop, *doors[at:], *rest]
    stops = tuple(dataclasses.replace(s, stop=i) for i, s in enumerate(ordered, start=1))
    return Manifest.from_doc(dataclasses.replace(manifest, stops=stops).to_doc())


def _renumber(s: Stop, number: int, parcels: tuple[str, ...]) -> Stop:
    """`s` as stop `number` with only `parcels`; the care of a parcel that left it goes with
    it (a manifest names care only for parcels due at the stop), the rest is kept."""
    return dataclasses.replace(
        s,
        stop=number,
        parcels=parcels,
        care={p: c for p, c in s.care.items() if p in parcels},
    )
