"""The van's delivery round: manifest, loading, stops, outcomes, returns, the day's reconciliation.

Owns the courier's workflow on the handheld between the depot's manifest and the end of the
day, and what a scan means in each phase of it (docs/DELIVERY.md is the contract: event kinds
and payloads). Every fact is a journal event, and the round's state — the manifest it runs,
the phase, the current stop, what happened to each parcel — lives in tables of the same
journal file, written in the same transaction as the event that changed it. A van process
killed at any instant comes back with exactly the round its journal tells.

Must never: tell the courier anything is done before its event is committed; run a manifest
older than the one it runs, or another van's; journal an outcome the courier's input does not
support (a handover without a name, a safe place without a photo, a handover without the
parcel's scan or the courier's reason for none, a signature without the signer's name);
record as delivered a handover the parcel's care forbids (it is journaled as
`outcome_refused` instead); keep an ID's number; record a proof of delivery with a hole (no
scan and no reason, no fix and no reason: `DeliveryRound._pod`); talk to the broker (the
uplink drains the journal; the depot reads `manifest_applied` as the van's acknowledgement).

Door pickups: an address stop may list customers' returns to take at that door
(`Stop.pickups`). At that stop the return's scan (its label is its id) or the courier's
`{"do": "pickup"}` journals `return_collected_at_door`; the return is then on the van like a
parcel collected from a locker and goes back with the evening's return scans. A return listed
at another stop, or at none, is refused like any wrong scan. When nobody hands it over, the
courier says why (`{"do": "pickup_missed"}`: `return_pickup_missed`, one of
`parcel.codes.PICKUP_MISSED_REASONS`): the stop no longer lists it and it is not on the van,
so the depot can tell the customer and plan it again; should the customer come running after
all, its scan or `pickup` at that stop still takes it and wins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from drivers.errors import DriverError
from drivers.photo import Jpeg
from drivers.scanner import Scan
from edge.errors import EdgeError
from edge.signature import CONTENT_TYPE as SIGNATURE_TYPE
from edge.signature import Signature, SignatureError
from parcel.cards import new_card_code
from parcel.care import REFUSALS, Care, CareError, IdCheck
from parcel.codes import CARD_LEFT_FOR, DELIVERED_BY, FAILURE_REASONS, PICKUP_MISSED_REASONS
from parcel.geo import distance_m
from parcel.identify import Rejection, identify
from parcel.manifest import Manifest, ManifestError, Stop
from sync.clock import Clock
from sync.errors import JournalError
from sync.journal import Journal, JournalTransaction
from sync.photos import PhotoOutbox
from sync.wire import Event

log = logging.getLogger("edge.delivery")
_T = TypeVar("_T")

# --- the contract's vocabulary (docs/DELIVERY.md) --------------------------------------------

MANIFEST_APPLIED = "manifest_applied"
MANIFEST_REJECTED = "manifest_rejected"
PARCEL_LOADED = "parcel_loaded"
LOAD_REFUSED = "load_refused"
DEPARTED = "departed"
STOP_ARRIVED = "stop_arrived"
STOP_SCAN_REFUSED = "stop_scan_refused"
PARCEL_SCANNED_AT_STOP = "parcel_scanned_at_stop"
PARCEL_DELIVERED = "parcel_delivered"
DELIVERY_FAILED = "delivery_failed"
PARCEL_REDIRECTED = "parcel_redirected"
PARCEL_DROPPED_AT_LOCKER = "parcel_dropped_at_locker"
PARCEL_COLLECTED_FROM_LOCKER = "parcel_collected_from_locker"
RETURN_COLLECTED_AT_DOOR = "return_collected_at_door"  # a customer's return, taken at a door
RETURN_PICKUP_MISSED = "return_pickup_missed"  # ... that the courier could not take there
ROUND_ENDED = "round_ended"
PARCEL_RETURNED_TO_DEPOT = "parcel_returned_to_depot"
RETURN_REFUSED = "return_refused"
DAY_CLOSED = "day_closed"
OUTCOME_REFUSED = "outcome_refused"  # a handover the parcel's care forbids: nothing delivered
SCAN_REJECTED = "scan_rejected"  # an unreadable label, as the plain scan desk records it

#: A fix further than this from the stop's coordinates marks the proof of delivery `far`.
FAR_M = 100.0

#: Why the courier hands a parcel over without a scan at this visit, as they say it. A proof
#: of delivery has the scan or one of these: a parcel marked delivered from the driver's seat
#: and one whose torn label would not read are different facts for whoever reads the proof.
NO_SCAN_REASONS = ("label_unreadable", "label_missing", "scanner_fault")
#: The van's own word when the courier gave none and the outcome does not need a scan (a
#: failed attempt, a redirect, a locker drop: nothing was handed over).
NOT_SCANNED = "not_scanned"

#: Why the van has no position of its own: no receiver configured, the position source
#: raised, it gave coordinates that are not numbers, or it returned nothing and said no more.
#: A receiver's own reasons (drivers.gnss.NoFixReason) come through as they are.
NO_RECEIVER = "no_receiver"
POSITION_ERROR = "position_error"
BAD_POSITION = "bad_position"
NO_POSITION = "no_position"


DELIVERED_TO = ("recipient", "neighbour", "safe_place")


# Phases of a round. `idle`: no manifest yet; `closed`: the day is reconciled. In both a scan
# is a load scan without a manifest.
IDLE = "idle"
LOADING = "loading"
ON_ROUTE = "on_route"
RETURNING = "returning"
CLOSED = "closed"

# What became of a parcel (the `outcome` column); NULL while nothing has.
DELIVERED = "delivered"
FAILED = "failed"
REDIRECTED = "redirected"
IN_LOCKER = "in_locker"
COLLECTED = "collected"  # taken out of a locker (an expired hold): on the van, for the depot
PICKED_UP = "picked_up_at_door"  # a customer's return taken at its door: on the van, for the depot
# A customer's return the courier could not take at its door: never loaded, so never on the van
# (not in `end_round`'s on_van nor `close_day`'s unaccounted); no longer waiting at its stop.
PICKUP_MISSED = "pickup_missed"
_TAKEN_BACK = (COLLECTED, PICKED_UP)  # on the van for the depot, never due at a stop
_FINAL = (DELIVERED, IN_LOCKER)

Tone = Literal["ok", "repeat", "warn", "refuse", "wrong_stop", "error"]
"""What the courier hears. `ok`: done; `repeat`: nothing new (a second load scan); `warn`:
done, but look at the screen (parcels missing at departure); `refuse`: not accepted (unknown
parcel, unreadable label, not on the van); `wrong_stop`: this parcel is due at another stop;
`error`: the device could not store it — nothing happened."""

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE delivery_round (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        day TEXT NOT NULL, version INTEGER NOT NULL, manifest TEXT NOT NULL,
        phase TEXT NOT NULL, current_stop INTEGER, pending TEXT)""",
    """CREATE TABLE delivery_parcels (
        parcel TEXT PRIMARY KEY,
        stop INTEGER,
        loaded_raw TEXT, loaded_shelf INTEGER,
        scan_stop INTEGER, scan_raw TEXT, scanned_at_ns INTEGER,
        outcome TEXT, locker TEXT,
        returned_raw TEXT,
        failures INTEGER NOT NULL DEFAULT 0)""",
    "CREATE TABLE delivery_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_PARCEL_COLUMNS = (
    "parcel, stop, loaded_raw, loaded_shelf, scan_stop, scan_raw, scanned_at_ns, "
    "outcome, locker, returned_raw, failures"
)


class RoundError(EdgeError):
    """The round cannot do what was asked; `reason` is a short code, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidOutcome(RoundError):
    """An outcome the courier's input does not support (no name, no photo, unknown reason)."""


class PreferenceRefused(RoundError):
    """A handover the parcel's care forbids (`reason` is a parcel.care.REFUSALS key); the
    refusal is journaled (`outcome_refused`), the parcel is not delivered."""


class NotRecorded(RoundError):
    """The device could not store the fact: nothing happened, tell the courier so."""


@runtime_checkable
class Position(Protocol):
    """A position fix as the GNSS driver reports it (drivers.gnss.Fix satisfies it)."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...

    @property
    def accuracy_m(self) -> float | None: ...

    @property
    def utc(self) -> object: ...


@dataclass(frozen=True)
class NoFix:
    """No position, and why: what a position source answers instead of a fix.

    A proof of delivery takes its position from one such answer, so it carries either the
    fix or the reason, never neither (`DeliveryRound._pod`).
    """

    reason: str


@runtime_checkable
class CourierFeedback(Protocol):
    """What the courier hears and reads for each step of the round: a tone and a line of text.

    `facts` holds the stored event (`event`, `seq`, `uuid` and its payload) when there is one.
    """

    def tell(self, tone: Tone, say: str, facts: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Parcel:
    """One row of `delivery_parcels`: what this van knows of a parcel today."""

    parcel: str
    stop: int | None  # due stop on the manifest the van runs; None: not (or no longer) on it
    loaded_raw: str | None
    loaded_shelf: int | None
    scan_stop: int | None  # the scan at the stop being visited, cleared at every arrival
    scan_raw: str | None
    scanned_at_ns: int | None
    outcome: str | None
    locker: str | None
    returned_raw: str | None
    failures: int

    @property
    def loaded(self) -> bool:
        return self.loaded_raw is not None

    @property
    def on_van(self) -> bool:
        return self.loaded and self.outcome not in _FINAL and self.returned_raw is None


@dataclass(frozen=True)
class RoundProgress:
    """The round as a position sample tells it: phase, current stop, stops done of all."""

    phase: str
    current_stop: int | None
    stops_done: int
    stops_total: int
    depot: tuple[float, float] | None

    @property
    def on_the_road(self) -> bool:
        """Departed and not yet closed: the van is out (or on its way back)."""
        return self.phase in (ON_ROUTE, RETURNING)


def _event_facts(event: Event) -> dict[str, Any]:
    return {"event": event.kind, "seq": event.seq, "uuid": event.uuid, **event.payload}


def _utc_text(value: object) -> object:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _readable_version(payload: bytes) -> int | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _stop_identity(stop: Stop) -> tuple[object, ...]:
    return (stop.kind, stop.lat, stop.lon, stop.locker, stop.address)


def _clean(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidOutcome("bad_input", f"{what} must be text")
    return value.strip() or None


def _no_scan(value: object) -> str | None:
    """The courier's reason for an outcome without a scan, checked before anything else."""
    reason = _clean(value, "no_scan")
    if reason is not None and reason not in NO_SCAN_REASONS:
        raise InvalidOutcome("bad_no_scan", f"no_scan must be one of {', '.join(NO_SCAN_REASONS)}")
    return reason


def care_notes(care: Care) -> list[str]:
    """What the courier must know of a parcel's care, in a few words each (the stop's screen).

    Everything that limits the handover is named; a safe place only when one may be used."""
    notes = []
    if care.needs_signature:
        notes.append("signature")
    if care.age_min is not None:
        notes.append(f"ID {care.age_min}+")
    if not care.neighbour:
        notes.append("no neighbour")
    if care.safe_place and not care.needs_signature:
        note = care.safe_place_note.strip()
        notes.append(f"safe place: {note}" if note else "safe place allowed")
    else:
        notes.append("no safe place")
    if care.locker_instead:
        notes.append("customer prefers a locker")
    return notes


def _signature(value: object) -> Signature | None:
    if value is None:
        return None
    try:
        return Signature.from_doc(value)
    except SignatureError as exc:
        raise InvalidOutcome("bad_signature", str(exc)) from None


def _id_check(value: object) -> IdCheck | None:
    if value is None:
        return None
    try:
        return IdCheck.from_doc(value)
    except CareError as exc:
        raise InvalidOutcome("bad_id_check", str(exc)) from None


class DeliveryRound:
    """A van's round for the day, driven by scans, courier input and the depot's manifests.

    Scans come from the scanner thread, courier input from the screen (the CLI's stdin),
    manifests from the uplink: one lock serialises them, and every method decides from the
    committed tables, writes the event and the state in one transaction, then tells the courier.
    `position()` returns the current GNSS fix, or a `NoFix` saying why there is none (None
    is taken as a `NoFix` without a known reason: `no_position`).
    """

    def __init__(
        self,
        journal: Journal,
        feedback: CourierFeedback,
        *,
        van_id: str,
        position: Callable[[], Position | NoFix | None],
        clock: Clock | None = None,
        photos: Callable[[str], Jpeg] | None = None,
    ) -> None:
        """`photos(spec)` turns the courier's `photo` field into a JPEG: by default the
        field names an image file (from the handheld's camera app); a van with a camera
        also takes `"camera"` (see `edge.van`). DriverError from it refuses the outcome."""
        self.journal = journal
        self.feedback = feedback
        self.van_id = van_id
        self._position = position
        self._take_photo = photos if photos is not None else _photo_file
        self._photo_outbox = PhotoOutbox(journal)
        self._clock: Clock = clock or journal.clock
        self._lock = threading.RLock()
        self._manifest: Manifest | None = None
        self._phase = IDLE
        self._current_stop: int | None = None
        self._pending: Manifest | None = None
        journal.ensure_tables("delivery", SCHEMA_VERSION, _SCHEMA)
        self._load()

    # --- state -------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the round row back after every commit: memory never runs ahead of the file."""
        rows = self.journal.query(
            "SELECT day, version, manifest, phase, current_stop, pending FROM delivery_round"
        )
        if not rows:
            return
        day, version, body, phase, current_stop, pending = rows[0]
        if self._manifest is None or (self._manifest.day, self._manifest.version) != (
            day,
            version,
        ):
            self._manifest = Manifest.from_json(str(body))
        self._phase = str(phase)
        self._current_stop = None if current_stop is None else int(current_stop)
        if not pending:
            self._pending = None
        elif self._pending is None or self._pending.to_json().decode() != pending:
            self._pending = Manifest.from_json(str(pending))

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    @property
    def current_stop(self) -> int | None:
        return self._current_stop

    def _row(self, parcel: str) -> _Parcel | None:
        rows = self.journal.query(
            f"SELECT {_PARCEL_COLUMNS} FROM delivery_parcels WHERE parcel=?", (parcel,)
        )
        return _Parcel(*rows[0]) if rows else None

    def _rows(self) -> list[_Parcel]:
        return [
            _Parcel(*r)
            for r in self.journal.query(f"SELECT {_PARCEL_COLUMNS} FROM delivery_parcels")
        ]

    def _in_manifest_order(self, parcels: set[str]) -> list[str]:
        order = {p: i for i, p in enumerate(self._manifest.parcels)} if self._manifest else {}
        return sorted(parcels, key=lambda p: (order.get(p, len(order)), p))

    def _commit(
        self,
        what: str,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        statements: Sequence[tuple[str, Sequence[Any]]] = (),
        then: Callable[[JournalTransaction], list[Event]] | None = None,
    ) -> list[Event]:
        """Events and state changes in one transaction; the round row is re-read after it."""
        try:
            with self.journal.transaction(what) as tx:
                stored = [tx.append(kind, payload) for kind, payload in events]
                for sql, params in statements:
                    tx.execute(sql, params)
                if then is not None:
                    stored += then(tx)
        finally:
            self._load()
        return stored

    def _tell(self, tone: Tone, say: str, event: Event | None = None, **facts: Any) -> None:
        try:
            self.feedback.tell(tone, say, {**(_event_facts(event) if event else {}), **facts})
        except Exception:
            log.exception("courier feedback failed")

    # --- the depot's manifest ----------------------------------------------------------------

    def apply_manifest(self, payload: bytes) -> Event | None:
        """Run a manifest the depot sent, if it is this van's and newer than the one it runs.

        Returns the `manifest_applied` (or `manifest_rejected`) event, or None when it was
        ignored: an equal version is the broker's retained copy delivered again, a lower one
        is stale, a later day's waits until this day is closed.
        """
        with self._lock:
            try:
                return self._apply_manifest(payload)
            except JournalError as exc:
                # The retained manifest comes again on the next connection.
                log.error("%s: manifest not applied, storage failed: %s", self.van_id, exc)
                self._tell("error", "manifest NOT applied: the device cannot store it")
                return None

    def _apply_manifest(self, payload: bytes) -> Event | None:
        digest = hashlib.sha256(payload).hexdigest()
        try:
            manifest = Manifest.from_json(payload)
        except ManifestError as exc:
            return self._reject(digest, "unreadable", exc.reason, _readable_version(payload))
        if manifest.van != self.van_id:
            return self._reject(
                digest,
                "wrong_van",
                f"manifest is for {manifest.van}, this is {self.van_id}",
                manifest.version,
                van=manifest.van,
            )
        current = self._manifest
        if current is None or (manifest.day > current.day and self._phase == CLOSED):
            return self._start_round(manifest)
        if manifest.day < current.day:
            log.warning(
                "%s: manifest for %s ignored, running %s", self.van_id, manifest.day, current.day
            )
            return None
        if manifest.day > current.day:
            self._hold(manifest)
            return None
        if manifest.version <= current.version:
            # Equal: the broker's retained copy again after a reconnect; lower: stale.
            log.log(
                logging.DEBUG if manifest.version == current.version else logging.WARNING,
                "%s: manifest version %d ignored, running %d",
                self.van_id,
                manifest.version,
                current.version,
            )
            return None
        if self._phase == CLOSED:
            return self._reject(
                digest, "day_closed", f"the round of {current.day} is closed", manifest.version
            )
        return self._update_round(manifest)

    def _reject(
        self, digest: str, reason: str, detail: str, version: int | None, **facts: Any
    ) -> Event | None:
        seen = self.journal.query("SELECT value FROM delivery_meta WHERE key='last_rejected'")
        if seen and seen[0][0] == digest:
            return None  # the same retained document again: rejected once is enough
        payload: dict[str, Any] = {"reason": reason, "detail": detail, **facts}
        if version is not None:
            payload["version"] = version
        (event,) = self._commit(
            "manifest rejection not stored",
            [(MANIFEST_REJECTED, payload)],
            [
                (
                    "INSERT OR REPLACE INTO delivery_meta(key, value) VALUES ('last_rejected', ?)",
                    (digest,),
                )
            ],
        )
        log.warning("%s: manifest rejected (%s): %s", self.van_id, reason, detail)
        self._tell("refuse", f"manifest refused: {detail}", event)
        return event

    def _hold(self, manifest: Manifest) -> None:
        pending = self._pending
        if pending is not None and (pending.day, pending.version) >= (
            manifest.day,
            manifest.version,
        ):
            return
        self._commit(
            "manifest not stored",
            [],
            [("UPDATE delivery_round SET pending=?", (manifest.to_json().decode(),))],
        )
        log.info(
            "%s: manifest for %s waits until %s is closed",
            self.van_id,
            manifest.day,
            self._manifest.day if self._manifest else "?",
        )
        self._tell("warn", f"manifest for {manifest.day} received: close today's round first")

    def _start_round(self, manifest: Manifest) -> Event:
        (event,) = self._commit("manifest not stored", [], then=self._new_round_tx(manifest))
        self._tell_applied(event, manifest)
        return event

    def _new_round_tx(self, manifest: Manifest) -> Callable[[JournalTransaction], list[Event]]:
        """A new day's round: failure counts carry over for parcels that come round again."""
        failures = {r.parcel: r.failures for r in self._rows() if r.failures}
        pending = self._pending
        keep = pending if pending and pending.day > manifest.day else None

        def write(tx: JournalTransaction) -> list[Event]:
            tx.execute("DELETE FROM delivery_parcels")
            for parcel in manifest.parcels:
                tx.execute(
                    "INSERT INTO delivery_parcels(parcel, stop, failures) VALUES (?, ?, ?)",
                    (parcel, manifest.stop_of(parcel), failures.get(parcel, 0)),
                )
            tx.execute("DELETE FROM delivery_round")
            tx.execute(
                "INSERT INTO delivery_round(id, day, version, manifest, phase, current_stop, "
                "pending) VALUES (1, ?, ?, ?, ?, NULL, ?)",
                (
                    manifest.day,
                    manifest.version,
                    manifest.to_json().decode(),
                    LOADING,
                    keep.to_json().decode() if keep else None,
                ),
            )
            return [tx.append(MANIFEST_APPLIED, self._applied_payload(manifest, []))]

        return write

    def _update_round(self, manifest: Manifest) -> Event:
        """A newer version of today's manifest replaces the plan; what happened stays."""
        old = self._manifest
        assert old is not None
        rows = {r.parcel: r for r in self._rows()}
        statements: list[tuple[str, Sequence[Any]]] = []
        # The locker's word wins over the courier's: a parcel this van dropped at a locker that
        # the depot's new version no longer has at that locker's stop never went in (the
        # locker saw the drop-off abandoned). It is on the van again: due at the locker the
        # depot chose instead, or to be kept for the depot.
        back_on_van: list[str] = []
        for parcel, row in rows.items():
            if row.outcome != IN_LOCKER:
                continue
            due = manifest.stop_of(parcel)
            where = manifest.stop(due) if due is not None else None
            if where is not None and where.kind == "locker" and where.locker == row.locker:
                continue
            back_on_van.append(parcel)
            elsewhere = where.locker if where is not None and where.kind == "locker" else None
            outcome = REDIRECTED if elsewhere else FAILED
            statements.append(
                (
                    "UPDATE delivery_parcels SET outcome=?, locker=? WHERE parcel=?",
                    (outcome, elsewhere, parcel),
                )
            )
            rows[parcel] = dataclasses.replace(row, outcome=outcome, locker=elsewhere)
        off_manifest = [
            p
            for p, r in rows.items()
            if r.on_van and r.outcome not in _TAKEN_BACK and manifest.stop_of(p) is None
        ]
        for parcel, row in rows.items():
            due = manifest.stop_of(parcel)
            if due != row.stop:
                statements.append(
                    ("UPDATE delivery_parcels SET stop=? WHERE parcel=?", (due, parcel))
                )
        statements += [
            ("INSERT INTO delivery_parcels(parcel, stop) VALUES (?, ?)", (p, manifest.stop_of(p)))
            for p in manifest.parcels
            if p not in rows
        ]
        here = self._current_stop
        # Stop numbers may shift in a new version: the courier is still at the same place
        # only if that number still names the same place, else they arrive again.
        keep_stop = (
            here is not None
            and here <= len(manifest.stops)
            and _stop_identity(old.stop(here)) == _stop_identity(manifest.stop(here))
        )
        if here is not None and not keep_stop:
            statements.append(("UPDATE delivery_round SET current_stop=NULL", ()))
            statements.append(
                (
                    "UPDATE delivery_parcels SET scan_stop=NULL, scan_raw=NULL, scanned_at_ns=NULL",
                    (),
                )
            )
        statements.append(
            (
                "UPDATE delivery_round SET version=?, manifest=?",
                (manifest.version, manifest.to_json().decode()),
            )
        )
        (event,) = self._commit(
            "manifest not stored",
            [
                (
                    MANIFEST_APPLIED,
                    {
                        **self._applied_payload(
                            manifest, self._in_manifest_order(set(off_manifest))
                        ),
                        **({"back_on_van": sorted(back_on_van)} if back_on_van else {}),
                    },
                )
            ],
            statements,
        )
        self._tell_applied(event, manifest, stop_cleared=here is not None and not keep_stop)
        return event

    def _applied_payload(self, manifest: Manifest, off_manifest: list[str]) -> dict[str, Any]:
        return {
            "version": manifest.version,
            "day": manifest.day,
            "stops": len(manifest.stops),
            "parcels": len(manifest.parcels),
            "off_manifest": off_manifest,
        }

    def _tell_applied(
        self, event: Event, manifest: Manifest, *, stop_cleared: bool = False
    ) -> None:
        say = (
            f"manifest {manifest.version} for {manifest.day}: {len(manifest.stops)} stops, "
            f"{len(manifest.parcels)} parcels"
        )
        off = list(event.payload["off_manifest"])
        back = list(event.payload.get("back_on_van", ()))
        if back:
            say += f"; the locker did not take {', '.join(back)}: it is on the van again"
        if off:
            say += f"; no longer on it, keep on the van for the depot: {', '.join(off)}"
        if stop_cleared:
            say += "; the stops were renumbered: arrive at your stop again"
        self._tell("warn" if off or back or stop_cleared else "ok", say, event)

    # --- scans ------------------------------------------------------------------------------

    def on_scan(self, scan: Scan) -> None:
        """The scanner driver's callback."""
        self.scan(scan.data, scan.aim)

    def scan(self, data: str, aim: str | None = None) -> Event | None:
        """What a scan means in this phase: a load, a parcel in hand at a stop, or a return.

        Every scan is journaled, refused ones too (with their reason); the courier hears the
        tone after the commit. Returns the stored event, or None when nothing could be stored.
        """
        with self._lock:
            try:
                return self._scan(data, aim)
            except JournalError as exc:
                log.error("%s: scan NOT recorded: %s", self.van_id, exc)
                self._tell("error", "scan NOT recorded: the device cannot store it", raw=data)
                return None

    def _scan(self, data: str, aim: str | None) -> Event:
        try:
            parcel = identify(data, aim)
        except Rejection as rejection:
            (event,) = self._commit(
                "scan not stored",
                [(SCAN_REJECTED, {"raw": data, "aim": aim, "reason": rejection.reason})],
            )
            self._tell("refuse", rejection.reason, event)
            return event
        if self._phase in (IDLE, CLOSED):
            return self._refuse_load(parcel.id, data, "no_manifest", "no manifest for this van yet")
        if self._phase == LOADING:
            return self._load_scan(parcel.id, data)
        if self._phase == ON_ROUTE:
            return self._stop_scan(parcel.id, data)
        return self._return_scan(parcel.id, data)

    def _refuse_load(
        self, parcel: str, raw: str, reason: str, say: str, tone: Tone = "refuse", **facts: Any
    ) -> Event:
        (event,) = self._commit(
            "scan not stored",
            [(LOAD_REFUSED, {"parcel": parcel, "raw": raw, "reason": reason})],
        )
        self._tell(tone, say, event, **facts)
        return event

    def _load_scan(self, parcel: str, raw: str) -> Event:
        manifest = self._manifest
        assert manifest is not None
        row = self._row(parcel)
        if row is not None and row.loaded:
            return self._refuse_load(
                parcel,
                raw,
                "already_loaded",
                f"already loaded, shelf {row.loaded_shelf}",
                tone="repeat",
                shelf=row.loaded_shelf,
            )
        stop = manifest.stop_of(parcel)
        shelf = manifest.shelf_of(parcel)
        if row is None or stop is None or shelf is None:
            return self._refuse_load(parcel, raw, "unknown", "not on this van's manifest")
        (event,) = self._commit(
            "scan not stored",
            [(PARCEL_LOADED, {"parcel": parcel, "stop": stop, "shelf": shelf, "raw": raw})],
            [
                (
                    "UPDATE delivery_parcels SET loaded_raw=?, loaded_shelf=? WHERE parcel=?",
                    (raw, shelf, parcel),
                )
            ],
        )
        self._tell("ok", f"shelf {shelf} (stop {stop})", event)
        return event

    def _due_here(self, row: _Parcel, stop: Stop) -> bool:
        if row.stop == stop.stop:
            return True
        # A parcel the courier redirected at a door is due at any stop at that locker.
        return stop.kind == "locker" and row.outcome == REDIRECTED and row.locker == stop.locker

    def _stop_scan(self, parcel: str, raw: str) -> Event:
        manifest = self._manifest
        assert manifest is not None
        here = self._current_stop
        row = self._row(parcel)
        pickup_at = manifest.picked_up_at(parcel)
        taken = row is not None and row.outcome == PICKED_UP
        if here is not None and pickup_at == here and not taken:
            return self._pickup(parcel, raw)
        if here is not None and pickup_at is None and self._collectable(row, manifest.stop(here)):
            return self._collect(parcel, raw)
        refusal: tuple[str, Tone, str] | None = None
        if taken:
            refusal = ("already_done", "repeat", "return already picked up")
        elif pickup_at is not None:
            where = "arrive at a stop first" if here is None else "not for this stop"
            refusal = ("not_this_stop", "wrong_stop", f"{where}: a return to pick up at stop "
                       f"{pickup_at}")
        elif row is not None and row.outcome == COLLECTED:
            refusal = ("already_done", "repeat", f"already collected from {row.locker}")
        elif row is None or not row.loaded:
            refusal = ("not_on_van", "refuse", "not loaded on this van")
        elif row.outcome in _FINAL or (
            row.outcome == REDIRECTED and (here is None or manifest.stop(here).kind != "locker")
        ):
            refusal = ("already_done", "refuse", f"already done: {row.outcome}")
        elif here is None:
            refusal = ("not_this_stop", "wrong_stop", "arrive at a stop first")
        elif not self._due_here(row, manifest.stop(here)):
            due = "not on the manifest any more" if row.stop is None else f"stop {row.stop}"
            refusal = ("not_this_stop", "wrong_stop", f"not for this stop: {due}")
        if refusal is not None:
            reason, tone, say = refusal
            payload = {
                "parcel": parcel,
                "raw": raw,
                "stop": here,
                "reason": reason,
                "due_stop": pickup_at if pickup_at is not None else (row.stop if row else None),
            }
            (event,) = self._commit("scan not stored", [(STOP_SCAN_REFUSED, payload)])
            self._tell(tone, say, event)
            return event
        assert here is not None
        (event,) = self._commit(
            "scan not stored",
            [(PARCEL_SCANNED_AT_STOP, {"parcel": parcel, "stop": here, "raw": raw})],
            [
                (
                    "UPDATE delivery_parcels SET scan_stop=?, scan_raw=?, scanned_at_ns=? "
                    "WHERE parcel=?",
                    (here, raw, self._clock.wall_ns(), parcel),
                )
            ],
        )
        self._tell("ok", f"stop {here}: in hand", event)
        return event

    def _return_scan(self, parcel: str, raw: str) -> Event:
        row = self._row(parcel)
        tone: Tone
        if row is not None and row.returned_raw is not None:
            reason, tone, say = "already_returned", "repeat", "already scanned back"
        elif row is None or not row.on_van:
            shown = (*_FINAL, PICKUP_MISSED)
            what = row.outcome if row is not None and row.outcome in shown else "not loaded"
            reason, tone, say = "not_on_van", "refuse", f"not on this van ({what})"
        else:
            (event,) = self._commit(
                "scan not stored",
                [(PARCEL_RETURNED_TO_DEPOT, {"parcel": parcel, "raw": raw})],
                [("UPDATE delivery_parcels SET returned_raw=? WHERE parcel=?", (raw, parcel))],
            )
            self._tell("ok", "back at the depot", event)
            return event
        (event,) = self._commit(
            "scan not stored",
            [(RETURN_REFUSED, {"parcel": parcel, "raw": raw, "reason": reason})],
        )
        self._tell(tone, say, event)
        return event

    # --- the courier's steps ----------------------------------------------------------------

    def _courier_commit(
        self,
        events: Sequence[tuple[str, Mapping[str, Any]]],
        statements: Sequence[tuple[str, Sequence[Any]]] = (),
        then: Callable[[JournalTransaction], list[Event]] | None = None,
    ) -> list[Event]:
        return self._typed(
            lambda: self._commit("courier input not stored", events, statements, then)
        )

    def _typed(self, record: Callable[[], _T]) -> _T:
        """`record()` for a courier's command: a journal that cannot store it is the courier's
        `NotRecorded` (a scan's path says so on the screen itself, `_on_scan`)."""
        try:
            return record()
        except JournalError as exc:
            log.error("%s: %s", self.van_id, exc)
            raise NotRecorded("not_recorded", "NOT recorded: the device cannot store it") from exc

    def _require_manifest(self) -> Manifest:
        if self._manifest is None or self._phase == CLOSED:
            raise RoundError("no_manifest", "no manifest for this van yet")
        return self._manifest

    def depart(self) -> Event:
        """The courier leaves the depot: which manifest parcels were never loaded."""
        with self._lock:
            manifest = self._require_manifest()
            if self._phase != LOADING:
                raise RoundError("already_departed", "the van has already left the depot")
            rows = self._rows()
            loaded = self._in_manifest_order({r.parcel for r in rows if r.loaded})
            missing = self._in_manifest_order(
                {r.parcel for r in rows if r.stop is not None and not r.loaded}
            )
            (event,) = self._courier_commit(
                [(DEPARTED, {"version": manifest.version, "loaded": loaded, "missing": missing})],
                [("UPDATE delivery_round SET phase=?", (ON_ROUTE,))],
            )
            if missing:
                self._tell("warn", f"{len(missing)} not loaded: {', '.join(missing)}", event)
            else:
                self._tell("ok", f"all {len(loaded)} parcels loaded", event)
            return event

    def arrive(self, stop: int) -> Event:
        """The courier is at a stop: outcomes and stop scans now refer to it."""
        with self._lock:
            manifest = self._require_manifest()
            if self._phase != ON_ROUTE:
                raise RoundError("not_on_route", "not on the route: depart first")
            if not isinstance(stop, int) or isinstance(stop, bool):
                raise RoundError("bad_input", "stop must be a stop number")
            if not 1 <= stop <= len(manifest.stops):
                raise RoundError("no_such_stop", f"no stop {stop} (stops 1..{len(manifest.stops)})")
            where = manifest.stop(stop)
            (event,) = self._courier_commit(
                [(STOP_ARRIVED, {"stop": stop, "fix": self._fix_doc(self._locate())})],
                [
                    ("UPDATE delivery_round SET current_stop=?", (stop,)),
                    # A scan proves the parcel in hand at this visit, not at an earlier one.
                    (
                        "UPDATE delivery_parcels SET scan_stop=NULL, scan_raw=NULL, "
                        "scanned_at_ns=NULL WHERE scan_stop IS NOT NULL",
                        (),
                    ),
                ],
            )
            due = [r for r in self._rows() if self._due_here(r, where) and r.on_van]
            due_ids = self._in_manifest_order({r.parcel for r in due})
            place = f"locker {where.locker}" if where.kind == "locker" else where.address
            place = place or f"{where.lat:.5f}, {where.lon:.5f}"
            say = f"stop {stop}: {place}, {len(due_ids)} parcels"
            collect = [c.parcel for c in where.collect]
            if collect:
                say += f"; collect {len(collect)} expired: badge in, #2"
            pickups = self._pickups_waiting(where)
            if pickups:
                say += f"; pick up {len(pickups)} return(s): {', '.join(pickups)}"
            # What the door needs, on the screen before the first parcel comes out: the
            # building's code and instructions, and each parcel's care (only parcels the
            # manifest names a care for: an older depot's parcels show as before).
            care = {p: care_notes(where.care[p]) for p in due_ids if p in where.care}
            if where.access_code:
                say += f"; access code {where.access_code}"
            if where.instructions:
                say += f"; {where.instructions}"
            for p, notes in care.items():
                say += f"; {p}: {', '.join(notes)}"
            self._tell(
                "ok",
                say,
                event,
                due=due_ids,
                collect=collect,
                pickups=pickups,
                instructions=where.instructions,
                access_code=where.access_code,
                care=care,
            )
            return event

    def _stop_here(self) -> Stop:
        """The stop the courier is at, on the route; RoundError when there is none."""
        manifest = self._require_manifest()
        if self._phase != ON_ROUTE:
            raise RoundError("not_on_route", "not on the route")
        if self._current_stop is None:
            raise RoundError("no_stop", "arrive at a stop first")
        return manifest.stop(self._current_stop)

    def _outcome_target(
        self, parcel: str, *, locker_stop: bool, allowed: tuple[str | None, ...]
    ) -> tuple[Stop, _Parcel]:
        stop = self._stop_here()
        row = self._row(parcel)
        if row is None or not row.loaded:
            raise RoundError("not_on_van", f"{parcel} is not loaded on this van")
        if row.outcome not in allowed or row.returned_raw is not None:
            raise RoundError("already_done", f"{parcel} is already {row.outcome}")
        if not self._due_here(row, stop):
            due = "not on the manifest any more" if row.stop is None else f"stop {row.stop}"
            raise RoundError("not_this_stop", f"{parcel} is not due at stop {stop.stop}: {due}")
        if locker_stop and stop.kind != "locker":
            raise RoundError("not_a_locker_stop", f"stop {stop.stop} is not a locker stop")
        if not locker_stop and stop.kind == "locker":
            raise RoundError(
                "locker_stop", f"stop {stop.stop} is a locker stop: drop the parcel in the locker"
            )
        return stop, row

    def _locate(self) -> Position | NoFix:
        """Where the handheld is, or why that is not known: never neither."""
        try:
            found = self._position()
        except Exception:
            log.exception("position source failed")
            return NoFix(POSITION_ERROR)
        if found is None:
            return NoFix(NO_POSITION)
        if isinstance(found, NoFix):
            return found
        if not (math.isfinite(found.lat) and math.isfinite(found.lon)):
            return NoFix(BAD_POSITION)
        return found

    @staticmethod
    def _fix_doc(fix: Position | NoFix) -> dict[str, Any] | None:
        if isinstance(fix, NoFix):
            return None
        accuracy = fix.accuracy_m
        return {
            "lat": float(fix.lat),
            "lon": float(fix.lon),
            "accuracy_m": None if accuracy is None else float(accuracy),
            "utc": _utc_text(fix.utc),
        }

    def _photo(
        self, spec: str | None
    ) -> tuple[dict[str, Any] | None, list[tuple[str, Sequence[Any]]]]:
        """The photo's reference for the event, and the statement that stores its bytes in
        the same transaction (so no event ever names a photo the device does not hold)."""
        if spec is None:
            return None, []
        try:
            jpeg = self._take_photo(spec)
        except DriverError as exc:
            raise InvalidOutcome("photo_unusable", f"the photo cannot be used: {exc}") from exc
        ref, statement = self._photo_outbox.statement(jpeg.data)
        return {**ref.as_payload(), "width": jpeg.width, "height": jpeg.height}, [statement]

    @staticmethod
    def _scanned_here(row: _Parcel, stop: Stop) -> bool:
        return row.scan_stop == stop.stop and row.scan_raw is not None

    def _unscanned_reason(
        self, row: _Parcel, stop: Stop, said: str | None, *, required: bool
    ) -> str | None:
        """Why the proof has no scan at this visit: None when it has one, else the courier's
        reason; an outcome that hands the parcel over is refused without either."""
        if self._scanned_here(row, stop):
            return None  # the scan is the better proof: a reason given as well is not kept
        if said is not None:
            return said
        if required:
            raise InvalidOutcome(
                "scan_missing",
                f"{row.parcel} is not scanned here: scan it, or say why it cannot be "
                f"(no_scan: {' | '.join(NO_SCAN_REASONS)})",
            )
        return NOT_SCANNED

    def _pod(
        self, row: _Parcel, stop: Stop, photo: dict[str, Any] | None, no_scan: str | None
    ) -> dict[str, Any]:
        """Proof of delivery: the scan at this visit, where the handheld was, and when.

        The one place a proof is built, so its two holes cannot open: it has the scan or the
        reason there is none (`no_scan_reason`), and the fix or the reason there is none
        (`no_fix_reason`), each pair taken from one answer.
        """
        located = self._locate()
        fix = None if isinstance(located, NoFix) else located
        distance = None
        if fix is not None:
            distance = round(distance_m(fix.lat, fix.lon, stop.lat, stop.lon), 1)
        scanned = self._scanned_here(row, stop)
        return {
            "scan": row.scan_raw if scanned else None,
            "scanned_at_ns": row.scanned_at_ns if scanned else None,
            "no_scan_reason": None if scanned else (no_scan or NOT_SCANNED),
            "fix": self._fix_doc(located),
            "no_fix": fix is None,
            "no_fix_reason": located.reason if isinstance(located, NoFix) else None,
            "distance_m": distance,
            "far": distance is not None and distance > FAR_M,
            "at_ns": self._clock.wall_ns(),
            "photo": photo,
        }

    def _tell_outcome(self, event: Event, say: str) -> None:
        pod = event.payload["pod"]
        notes = []
        if pod["scan"] is None:
            notes.append(f"not scanned here ({pod['no_scan_reason'].replace('_', ' ')})")
        if pod["no_fix"]:
            notes.append(f"no GNSS fix ({pod['no_fix_reason'].replace('_', ' ')})")
        elif pod["far"]:
            notes.append(f"{pod['distance_m']:.0f} m from the stop")
        self._tell("warn" if notes else "ok", "; ".join([say, *notes]), event)

    def deliver(
        self,
        parcel: str,
        to: str = "recipient",
        name: str | None = None,
        neighbour_address: str | None = None,
        photo: str | None = None,
        no_scan: str | None = None,
        signature: Mapping[str, Any] | None = None,
        signed_by: str | None = None,
        id_check: Mapping[str, Any] | None = None,
    ) -> Event:
        """Handed over (or left in a safe place); the proof the courier must give comes first.

        That proof includes the parcel's scan at this visit, or the courier's `no_scan`
        reason (NO_SCAN_REASONS) when its label cannot be read: a handover is never recorded
        on a typed id alone. A `signature` (the screen's strokes, edge.signature) comes with
        the signer's printed name `signed_by`, which is also the `name` when none is given;
        an `id_check` is the ID's type and year of birth (parcel.care.IdCheck), never its
        number.

        Before anything is recorded the parcel's care is asked (`Stop.care_of(...).refusal`,
        in the van clock's UTC year): a handover it forbids is journaled as `outcome_refused`
        and raises PreferenceRefused; the parcel stays on the van, not delivered."""
        no_scan = _no_scan(no_scan)
        name = _clean(name, "name")
        neighbour_address = _clean(neighbour_address, "neighbour_address")
        photo = _clean(photo, "photo")
        signed_by = _clean(signed_by, "signed_by")
        if to not in DELIVERED_TO:
            raise InvalidOutcome("bad_to", f"to must be one of {', '.join(DELIVERED_TO)}")
        strokes = _signature(signature)
        checked = _id_check(id_check)
        if strokes is not None and signed_by is None:
            raise InvalidOutcome("signer_missing", "signed: the signer's printed name is needed")
        if strokes is None and signed_by is not None:
            raise InvalidOutcome(
                "signature_missing", "signed_by without a signature: the signer signs first"
            )
        if to == "safe_place" and (strokes is not None or checked is not None):
            raise InvalidOutcome(
                "bad_input", "left in a safe place: nobody there to sign or show an ID"
            )
        if name is None:
            name = signed_by
        with self._lock:
            stop, row = self._outcome_target(parcel, locker_stop=False, allowed=(None, FAILED))
            care = stop.care_of(parcel)
            refused = care.refusal(
                to, signed=strokes is not None, id_check=checked, year=self._utc_year()
            )
            if refused is not None:
                self._refuse_outcome(parcel, stop, to, refused, care)
            if to == "recipient" and name is None:
                raise InvalidOutcome("name_missing", "handed to the recipient: whose name?")
            if to == "neighbour" and (name is None or neighbour_address is None):
                raise InvalidOutcome(
                    "neighbour_missing", "left with a neighbour: their name and address are needed"
                )
            if to != "neighbour" and neighbour_address is not None:
                raise InvalidOutcome(
                    "bad_input", "neighbour_address is only for a parcel left with a neighbour"
                )
            if to == "safe_place" and photo is None:
                raise InvalidOutcome("photo_missing", "left in a safe place: a photo is needed")
            no_scan = self._unscanned_reason(row, stop, no_scan, required=True)
            picture, store = self._photo(photo)
            signed: dict[str, Any] | None = None
            if strokes is not None:
                ref, statement = self._photo_outbox.statement(strokes.to_bytes(), SIGNATURE_TYPE)
                signed = ref.as_payload()
                store.append(statement)
            codes = DELIVERED_BY[to]
            payload = {
                "parcel": parcel,
                "stop": stop.stop,
                "to": to,
                "name": name,
                "neighbour_address": neighbour_address,
                "photo": picture,
                "pod": self._pod(row, stop, picture, no_scan),
                "upu": codes.upu,
                "x12": codes.x12,
                "x12_reason": codes.x12_reason,
                "signature": signed,
                "signed_by": signed_by,
                "id_check": checked.to_doc() if checked is not None else None,
            }
            (event,) = self._courier_commit(
                [(PARCEL_DELIVERED, payload)],
                [
                    ("UPDATE delivery_parcels SET outcome=? WHERE parcel=?", (DELIVERED, parcel)),
                    *store,
                ],
            )
            say = f"delivered ({to.replace('_', ' ')})"
            if signed_by is not None:
                say += f", signed by {signed_by}"
            if checked is not None:
                say += f", ID checked ({checked.id_type.replace('_', ' ')}, {checked.birth_year})"
            self._tell_outcome(event, say)
            return event

    def _utc_year(self) -> int:
        """The year by the van's clock, in UTC: the year an ID's holder is old enough in."""
        return dt.datetime.fromtimestamp(self._clock.wall_ns() / 1e9, dt.UTC).year

    def _refuse_outcome(self, parcel: str, stop: Stop, to: str, reason: str, care: Care) -> None:
        """Journal a handover the parcel's care forbids, tell the courier, raise the refusal.

        The event changes nothing on the van or at the depot: it is the record that the
        courier tried (the depot counts refusals), so a forbidden handover never goes unseen."""
        text = REFUSALS[reason]
        (event,) = self._courier_commit(
            [
                (
                    OUTCOME_REFUSED,
                    {
                        "parcel": parcel,
                        "stop": stop.stop,
                        "to": to,
                        "reason": reason,
                        "care": care.to_doc(),
                    },
                )
            ],
        )
        self._tell("refuse", f"NOT delivered: {text}", event)
        raise PreferenceRefused(reason, text)

    def fail(
        self, parcel: str, reason: str, photo: str | None = None, no_scan: str | None = None
    ) -> Event:
        """A failed attempt; the parcel stays on the van (another stop, a locker, or back).

        After a failure someone could have taken the parcel (parcel.codes.CARD_LEFT_FOR) at
        an address, the courier leaves a card: the van makes its code (`card`, shown to be
        written on it), which the customer uses to choose what happens next. An
        `age_check_failed` is only for a parcel whose care asks for an age."""
        no_scan = _no_scan(no_scan)
        photo = _clean(photo, "photo")
        codes = FAILURE_REASONS.get(reason) if isinstance(reason, str) else None
        if codes is None:
            raise InvalidOutcome(
                "bad_reason", f"reason must be one of {', '.join(FAILURE_REASONS)}"
            )
        with self._lock:
            stop, row = self._outcome_target(parcel, locker_stop=False, allowed=(None, FAILED))
            if reason == "age_check_failed" and stop.care_of(parcel).age_min is None:
                raise InvalidOutcome(
                    "bad_reason", f"{parcel} has no age limit: age_check_failed does not apply"
                )
            no_scan = self._unscanned_reason(row, stop, no_scan, required=False)
            picture, store = self._photo(photo)
            card = new_card_code() if reason in CARD_LEFT_FOR and stop.kind == "address" else None
            payload = {
                "parcel": parcel,
                "stop": stop.stop,
                "reason": reason,
                "upu": codes.upu,
                "x12": codes.x12,
                "x12_reason": codes.x12_reason,
                "attempt": row.failures + 1,
                "card": card,
                "pod": self._pod(row, stop, picture, no_scan),
            }
            (event,) = self._courier_commit(
                [(DELIVERY_FAILED, payload)],
                [
                    (
                        "UPDATE delivery_parcels SET outcome=?, failures=failures+1 WHERE parcel=?",
                        (FAILED, parcel),
                    ),
                    *store,
                ],
            )
            say = f"not delivered: {reason.replace('_', ' ')}"
            if card is not None:
                say += f"; card: {card}"
            self._tell_outcome(event, say)
            return event

    def redirect(
        self, parcel: str, locker: str, photo: str | None = None, no_scan: str | None = None
    ) -> Event:
        """The courier takes the parcel to a locker instead; it is on the van until dropped."""
        no_scan = _no_scan(no_scan)
        photo = _clean(photo, "photo")
        name = _clean(locker, "locker")
        if name is None:
            raise InvalidOutcome("locker_missing", "redirect to which locker?")
        with self._lock:
            stop, row = self._outcome_target(parcel, locker_stop=False, allowed=(None, FAILED))
            no_scan = self._unscanned_reason(row, stop, no_scan, required=False)
            picture, store = self._photo(photo)
            payload = {
                "parcel": parcel,
                "stop": stop.stop,
                "locker": name,
                "pod": self._pod(row, stop, picture, no_scan),
            }
            (event,) = self._courier_commit(
                [(PARCEL_REDIRECTED, payload)],
                [
                    (
                        "UPDATE delivery_parcels SET outcome=?, locker=? WHERE parcel=?",
                        (REDIRECTED, name, parcel),
                    ),
                    *store,
                ],
            )
            self._tell_outcome(event, f"for locker {name}")
            return event

    def drop_at_locker(
        self, parcel: str, photo: str | None = None, no_scan: str | None = None
    ) -> Event:
        """At a locker stop: the courier has put the parcel in the locker (which records it;
        its word, not a scan here, is what puts the parcel in: no scan is required)."""
        no_scan = _no_scan(no_scan)
        photo = _clean(photo, "photo")
        with self._lock:
            stop, row = self._outcome_target(
                parcel, locker_stop=True, allowed=(None, FAILED, REDIRECTED)
            )
            no_scan = self._unscanned_reason(row, stop, no_scan, required=False)
            picture, store = self._photo(photo)
            payload = {
                "parcel": parcel,
                "stop": stop.stop,
                "locker": stop.locker,
                "pod": self._pod(row, stop, picture, no_scan),
            }
            (event,) = self._courier_commit(
                [(PARCEL_DROPPED_AT_LOCKER, payload)],
                [
                    (
                        "UPDATE delivery_parcels SET outcome=?, locker=? WHERE parcel=?",
                        (IN_LOCKER, stop.locker, parcel),
                    ),
                    *store,
                ],
            )
            self._tell_outcome(event, f"in locker {stop.locker}")
            return event

    @staticmethod
    def _collectable(row: _Parcel | None, stop: Stop) -> bool:
        """A parcel in hand at a locker stop that is not on the van came out of the locker:
        a return the courier collects (one this van dropped earlier, or any other)."""
        return stop.kind == "locker" and (row is None or row.outcome == IN_LOCKER)

    def collect(self, parcel: str, raw: str | None = None) -> Event:
        """At a locker stop: the courier took the parcel out of the locker (its hold ran out)
        and has it on the van for the depot. The locker records its own `parcel_returned`.

        A scan of a parcel not on the van at a locker stop does this; `raw` is that scan, or
        None when the courier typed the id (a torn label).
        """
        with self._lock:
            stop = self._stop_here()
            if stop.kind != "locker":
                raise RoundError("not_a_locker_stop", f"stop {stop.stop} is not a locker stop")
            row = self._row(parcel)
            if row is not None and row.outcome == COLLECTED:
                raise RoundError("already_done", f"{parcel} is already collected")
            if not self._collectable(row, stop):
                raise RoundError("on_van", f"{parcel} is on the van: it did not come out here")
            return self._typed(lambda: self._collect(parcel, raw))

    def _collect(self, parcel: str, raw: str | None) -> Event:
        manifest = self._manifest
        here = self._current_stop
        assert manifest is not None and here is not None
        stop = manifest.stop(here)
        listed = next((c for c in stop.collect if c.parcel == parcel), None)
        payload = {
            "parcel": parcel,
            "stop": here,
            "locker": stop.locker,
            "compartment": listed.compartment if listed is not None else None,
            "listed": listed is not None,
            "raw": raw,
            "fix": self._fix_doc(self._locate()),
        }
        (event,) = self._commit(
            "collection not stored",
            [(PARCEL_COLLECTED_FROM_LOCKER, payload)],
            [
                (
                    "INSERT INTO delivery_parcels(parcel, stop, loaded_raw, outcome, locker) "
                    "VALUES (?, NULL, ?, ?, ?) ON CONFLICT(parcel) DO UPDATE SET stop=NULL, "
                    "loaded_raw=excluded.loaded_raw, outcome=excluded.outcome, "
                    "locker=excluded.locker, returned_raw=NULL",
                    (parcel, raw if raw is not None else parcel, COLLECTED, stop.locker),
                )
            ],
        )
        say = f"collected from locker {stop.locker}: back to the depot"
        self._tell("ok" if listed else "warn", say if listed else f"{say} (not on the list)", event)
        return event

    def _pickups_waiting(self, stop: Stop) -> list[str]:
        """The returns listed at `stop` that are not on the van yet and that the courier has
        not recorded missed today, in the manifest's order."""
        done = {
            str(r[0])
            for r in self.journal.query(
                "SELECT parcel FROM delivery_parcels WHERE outcome IN (?, ?)",
                (PICKED_UP, PICKUP_MISSED),
            )
        }
        return [p.parcel for p in stop.pickups if p.parcel not in done]

    def pickup(self, parcel: str, raw: str | None = None) -> Event:
        """At an address stop: the customer handed the courier a return the stop lists; it is
        on the van for the depot. A scan of that return at the stop does this; `raw` is the
        scan, or None when the courier typed the id (no label, a torn one)."""
        with self._lock:
            self._listed_pickup(parcel, self._row(parcel))
            return self._typed(lambda: self._pickup(parcel, raw))

    def _listed_pickup(self, parcel: str, row: _Parcel | None) -> Stop:
        """The stop the van is at, when it lists the return `parcel` and the return is not
        picked up yet (`row`: the van's row of it); else RoundError says why."""
        stop = self._stop_here()
        if row is not None and row.outcome == PICKED_UP:
            raise RoundError("already_done", f"{parcel} is already picked up")
        if not any(p.parcel == parcel for p in stop.pickups):
            listed = self._require_manifest().picked_up_at(parcel)
            where = f"it is picked up at stop {listed}" if listed else "no return of that id"
            raise RoundError(
                "not_this_stop", f"{parcel} is not a pickup of stop {stop.stop}: {where}"
            )
        return stop

    def _pickup(self, parcel: str, raw: str | None) -> Event:
        """Journal a return taken at the door and put it on the van, in one transaction."""
        here = self._current_stop
        assert here is not None
        payload = {
            "parcel": parcel,
            "stop": here,
            "raw": raw,
            "fix": self._fix_doc(self._locate()),
        }
        (event,) = self._commit(
            "pickup not stored",
            [(RETURN_COLLECTED_AT_DOOR, payload)],
            [
                (
                    "INSERT INTO delivery_parcels(parcel, stop, loaded_raw, outcome, locker) "
                    "VALUES (?, NULL, ?, ?, NULL) ON CONFLICT(parcel) DO UPDATE SET stop=NULL, "
                    "loaded_raw=excluded.loaded_raw, outcome=excluded.outcome, locker=NULL, "
                    "returned_raw=NULL",
                    (parcel, raw if raw is not None else parcel, PICKED_UP),
                )
            ],
        )
        self._tell("ok", f"return {parcel} picked up: on the van for the depot", event)
        return event

    def pickup_missed(self, parcel: str, reason: str) -> Event:
        """At an address stop: the courier could not take a return the stop lists (`reason`,
        one of parcel.codes.PICKUP_MISSED_REASONS: nobody in, or not packed yet). Journaled so
        the depot can tell the customer and plan it again; the stop no longer lists it, and it
        is not on the van. A later scan or `pickup` of it at this stop still takes it."""
        if not isinstance(reason, str) or reason not in PICKUP_MISSED_REASONS:
            raise InvalidOutcome(
                "bad_reason", f"reason must be one of {', '.join(PICKUP_MISSED_REASONS)}"
            )
        with self._lock:
            row = self._row(parcel)
            if row is not None and row.outcome == PICKUP_MISSED:
                self._stop_here()  # arrived first, as every stop command
                raise RoundError("already_done", f"{parcel} is already recorded missed")
            stop = self._listed_pickup(parcel, row)
            if row is not None and row.on_van:  # taken out of a locker earlier: it is here
                raise RoundError("on_van", f"{parcel} is on the van already")
            payload = {
                "parcel": parcel,
                "stop": stop.stop,
                "reason": reason,
                "fix": self._fix_doc(self._locate()),
            }
            (event,) = self._courier_commit(
                [(RETURN_PICKUP_MISSED, payload)],
                [
                    (
                        "INSERT INTO delivery_parcels(parcel, stop, outcome) VALUES (?, NULL, ?) "
                        "ON CONFLICT(parcel) DO UPDATE SET stop=NULL, outcome=excluded.outcome",
                        (parcel, PICKUP_MISSED),
                    )
                ],
            )
            say = f"return {parcel} not picked up: {PICKUP_MISSED_REASONS[reason]}"
            self._tell("warn", say, event)
            return event

    def end_round(self) -> Event:
        """Heading back: from now on a scan is a parcel coming back to the depot."""
        with self._lock:
            self._require_manifest()
            if self._phase != ON_ROUTE:
                raise RoundError("not_on_route", "not on the route")
            on_van = self._in_manifest_order({r.parcel for r in self._rows() if r.on_van})
            (event,) = self._courier_commit(
                [(ROUND_ENDED, {"on_van": on_van})],
                [("UPDATE delivery_round SET phase=?, current_stop=NULL", (RETURNING,))],
            )
            self._tell("ok", f"round ended: scan the {len(on_van)} parcels coming back", event)
            return event

    def close_day(self) -> Event:
        """The van's reconciliation: where every loaded parcel ended up, or that nobody knows."""
        with self._lock:
            manifest = self._require_manifest()
            rows = [r for r in self._rows() if r.loaded]
            delivered = self._in_manifest_order({r.parcel for r in rows if r.outcome == DELIVERED})
            in_locker = self._in_manifest_order({r.parcel for r in rows if r.outcome == IN_LOCKER})
            returned = self._in_manifest_order(
                {r.parcel for r in rows if r.returned_raw is not None and r.outcome not in _FINAL}
            )
            unaccounted = self._in_manifest_order({r.parcel for r in rows if r.on_van})
            payload = {
                "day": manifest.day,
                "version": manifest.version,
                "delivered": delivered,
                "in_locker": in_locker,
                "returned": returned,
                "unaccounted": unaccounted,
            }
            pending = self._pending
            events = self._courier_commit(
                [(DAY_CLOSED, payload)],
                [("UPDATE delivery_round SET phase=?, current_stop=NULL", (CLOSED,))],
                then=self._new_round_tx(pending) if pending is not None else None,
            )
            say = (
                f"day closed: {len(delivered)} delivered, {len(in_locker)} in lockers, "
                f"{len(returned)} returned"
            )
            if unaccounted:
                say += f"; UNACCOUNTED: {', '.join(unaccounted)}"
            self._tell("warn" if unaccounted else "ok", say, events[0])
            if pending is not None:
                self._tell_applied(events[1], pending)
            return events[0]

    # --- the screen -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the courier's screen shows: phase, manifest, current stop, parcel counts."""
        with self._lock:
            manifest = self._manifest
            rows = self._rows()
            doc: dict[str, Any] = {
                "van": self.van_id,
                "phase": self._phase,
                "day": manifest.day if manifest else None,
                "version": manifest.version if manifest else None,
                "stops": len(manifest.stops) if manifest else 0,
                "current_stop": self._current_stop,
                "pending_day": self._pending.day if self._pending else None,
                "parcels": {
                    "on_manifest": sum(r.stop is not None for r in rows),
                    "loaded": sum(r.loaded for r in rows),
                    "on_van": sum(r.on_van for r in rows),
                    "delivered": sum(r.outcome == DELIVERED for r in rows),
                    "failed": sum(r.outcome == FAILED for r in rows),
                    "redirected": sum(r.outcome == REDIRECTED for r in rows),
                    "in_locker": sum(r.outcome == IN_LOCKER for r in rows),
                    "collected": sum(r.outcome == COLLECTED for r in rows),
                    "picked_up": sum(r.outcome == PICKED_UP for r in rows),
                    "pickup_missed": sum(r.outcome == PICKUP_MISSED for r in rows),
                    "returned": sum(r.returned_raw is not None for r in rows),
                },
            }
            if manifest is not None and self._current_stop is not None:
                where = manifest.stop(self._current_stop)
                doc["due_here"] = self._in_manifest_order(
                    {r.parcel for r in rows if r.on_van and self._due_here(r, where)}
                )
                # The door's notes again, for a screen drawn afresh (a restarted handheld).
                doc["access_code"] = where.access_code
                doc["instructions"] = where.instructions
                doc["care"] = {
                    p: care_notes(where.care[p]) for p in doc["due_here"] if p in where.care
                }
                doc["pickups"] = self._pickups_waiting(where)
            return doc

    def progress(self) -> RoundProgress | None:
        """How far the round has got, for the van's position samples; None without a manifest.

        Read without the round's lock (the GNSS reader thread asks, once per sample, and must
        not wait behind a courier's photo): the phase and stop are the last committed ones.
        A stop is done when no parcel loaded for it is still waiting for its outcome.
        """
        manifest, phase, current = self._manifest, self._phase, self._current_stop
        if manifest is None:
            return None
        total = len(manifest.stops)
        waiting = {
            int(r[0])
            for r in self.journal.query(
                "SELECT DISTINCT stop FROM delivery_parcels WHERE stop IS NOT NULL "
                "AND loaded_raw IS NOT NULL AND outcome IS NULL AND returned_raw IS NULL"
            )
        }
        done = sum(1 for s in manifest.stops if s.stop not in waiting)
        return RoundProgress(phase, current, done, total, manifest.depot)

    # --- courier input as documents (the CLI's stdin) ------------------------------------------

    def courier(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """One courier command as a JSON object -> a JSON-able result; RoundError if refused.

        `{"do": "depart" | "arrive" | "deliver" | "fail" | "redirect" | "drop" | "collect" |
        "pickup" | "pickup_missed" | "end_round" | "close_day" | "status", ...}`; unknown
        fields are refused, so a typo cannot drop a name.
        """
        if not isinstance(doc, Mapping):
            raise RoundError("bad_input", "a courier command is a JSON object")
        do = doc.get("do")
        fields = _COURIER_FIELDS.get(do) if isinstance(do, str) else None
        if not isinstance(do, str) or fields is None:
            raise RoundError("bad_input", f"do must be one of {', '.join(_COURIER_FIELDS)}")
        unknown = set(doc) - {"do", *fields}
        if unknown:
            raise RoundError("bad_input", f"{do} takes {sorted(fields)}, not {sorted(unknown)}")
        args = {k: v for k, v in doc.items() if k != "do"}
        if do == "status":
            return self.status()
        if "parcel" in fields:
            if not isinstance(args.get("parcel"), str) or not args["parcel"].strip():
                raise RoundError("bad_input", f"{do} needs a parcel id")
            args["parcel"] = self._parcel_id(args["parcel"])
        if "stop" in fields and "stop" not in args:
            raise RoundError("bad_input", f"{do} needs a stop number")
        if do in ("fail", "redirect", "pickup_missed") and fields[1] not in args:
            raise InvalidOutcome(f"{fields[1]}_missing", f"{do} needs a {fields[1]}")
        action: Callable[..., Event] = getattr(self, _COURIER_METHODS.get(do, do))
        return _event_facts(action(**args))

    def _parcel_id(self, text: str) -> str:
        """The courier may type the canonical id or a label's text: both name one parcel."""
        text = text.strip()
        if self._row(text) is not None:
            return text
        try:
            return identify(text).id
        except Rejection:
            return text


def _photo_file(spec: str) -> Jpeg:
    """The default photo source: `spec` is the path of an image the handheld's app saved."""
    from drivers.photo import load_photo  # OpenCV is loaded with the first photo only

    return load_photo(spec)


_COURIER_FIELDS: Mapping[str, tuple[str, ...]] = {
    "depart": (),
    "arrive": ("stop",),
    "deliver": (
        "parcel",
        "to",
        "name",
        "neighbour_address",
        "photo",
        "no_scan",
        "signature",
        "signed_by",
        "id_check",
    ),
    "fail": ("parcel", "reason", "photo", "no_scan"),
    "redirect": ("parcel", "locker", "photo", "no_scan"),
    "drop": ("parcel", "photo", "no_scan"),
    "collect": ("parcel",),
    "pickup": ("parcel",),
    "pickup_missed": ("parcel", "reason"),
    "end_round": (),
    "close_day": (),
    "status": (),
}
_COURIER_METHODS: Mapping[str, str] = {"drop": "drop_at_locker"}
