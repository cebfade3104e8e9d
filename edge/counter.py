"""A staffed collection point (a shop or post-office desk): check-in, holds, hand-out, returns.

A counter is a locker whose doors are a person: a scanner and a screen at a desk, shelves
behind it, no lock boards. It speaks the locker's events, credentials and depot commands
(docs/DELIVERY.md, "Staffed collection point"), so the depot runs it with the locker's policy
and states and needs no new event kind:

- **check-in**: the staff scans a parcel the depot reserved here (`reserve`, as for a locker):
  `parcel_deposited` with `compartment` = the shelf place ("shelf-12", shown to the staff) and
  the same sealed credential a locker issues; the depot sends the customer code and QR. A
  parcel not reserved is refused unless the config allows walk-in drops (`walk_in`).
- **hand-out**: the customer's pickup code (typed by the staff) or QR (scanned) finds the
  parcel; the screen says which shelf; the staff scans the parcel to prove it is that one,
  types the customer's name, and the counter records `parcel_picked_up` with `name`. A card
  code with a surname works the same when the depot's reservation carried its tag
  (parcel.cards). Wrong codes are throttled by the locker's KeypadGuard.
- **proof**: a parcel the depot reserved with `signature` or `age_min` (it must be signed
  for, or needs an ID check: parcel.care) is handed out only with the proof the door asks,
  by the same rule (`Care.refusal`): the customer's signature strokes (edge.signature,
  stored in the journal's photo outbox in the event's transaction, as the van does) and
  the ID's type and year of birth, never its number. `parcel_picked_up` then carries
  `signature`, `signed_by` and `id_check` as the van's `parcel_delivered` does; without the
  proof the screen says why (`handout_refused` is journaled) and nothing is handed out.
- **holds** expire as a locker's (`hold_expired`): the parcel goes on the returns pile; a
  courier who identifies (badge) and scans it takes it (`parcel_returned`).

One controller thread owns all state; scans, the staff's lines and depot commands are queued
to it, so a depot command never waits in the network thread and two inputs never interleave.
State lives in tables of the journal's SQLite file, written in the same transaction as the
event that changed it.

Must never: hold a pickup code, QR token or card code in plaintext anywhere (journal,
tables, logs), hand out a parcel whose scan did not match the credential presented, record
a hand-out without the name the staff typed or without the proof its reservation asked,
or carry out an unverified depot command.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.scanner import ScannerReader
from edge.counter_config import CounterConfig
from edge.counter_screen import ScreenDisplay, StaffSocket
from edge.credentials import KeypadGuard
from edge.desk import (
    BADGE_PREFIX,
    GUARD_TABLE,
    QR_PREFIX,
    Controller,
    badge_refusal,
    carry_out,
    command_verifier,
    extend_hold,
    find_credential,
    issue_unique,
    journal_attempt,
    journal_deposit,
    load_guard,
    lockout_wait,
    lookup_salt,
    parcel_label,
    raise_alarm,
)
from edge.errors import EdgeError
from edge.locker import Display
from edge.locker_device import INPUT_WAIT_S
from edge.ports import require_port
from edge.signature import CONTENT_TYPE as SIGNATURE_TYPE
from edge.signature import Signature, SignatureError
from parcel.cards import card_tag
from parcel.care import AGE_LIMITS, REFUSALS, Care, CareError, IdCheck
from parcel.identify import Rejection
from sync.clock import Clock
from sync.journal import Journal, JournalTransaction
from sync.photos import PhotoOutbox
from sync.signing import ReplayStore
from sync.uplink import DRAIN_ON_STOP_S, Uplink

log = logging.getLogger("edge.counter")

SCHEMA_VERSION = 1
_SCHEMA = [
    # One row per parcel the counter has known; `reserved`, `stored` and `expired` hold a
    # shelf place. Tags are the credential's lookup hashes (edge.credentials), never secrets.
    """CREATE TABLE held (
        parcel TEXT PRIMARY KEY, shelf TEXT NOT NULL, state TEXT NOT NULL,
        size TEXT, reserved_until_ns INTEGER, deposited_ns INTEGER, hold_until_ns INTEGER,
        credential TEXT, code_tag TEXT, qr_tag TEXT, card_tag TEXT)""",
    "CREATE INDEX held_code_tag ON held(code_tag)",
    "CREATE INDEX held_qr_tag ON held(qr_tag)",
    "CREATE INDEX held_card_tag ON held(card_tag)",
    "CREATE TABLE counter_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    GUARD_TABLE,
]
ON_SHELF = ("reserved", "stored", "expired")
# The proof a reserved parcel's hand-out needs (the depot's `reserve` said so): a table of its
# own, so a journal made before it gains it without touching `held`. A parcel without a row
# needs no proof (a walk-in drop, a reservation that asked for none).
PROOF_SCHEMA_VERSION = 1
_PROOF_SCHEMA = [
    "CREATE TABLE proof_needed (parcel TEXT PRIMARY KEY, age_min INTEGER, "
    "signature INTEGER NOT NULL)",
]

#: How long the staff's screen waits for the controller's answer to one line.
STAFF_WAIT_S = 10.0
#: The longest a healthy controller goes between two passes (a journal commit with its fsync
#: on an SD card, a credential issued, a card tag's scrypt); three times that is a stall.
CONTROLLER_PASS_S = 2.0
MAX_NAME = 100


class CounterError(EdgeError):
    """A counter action could not be carried out."""


@dataclass
class _Handout:
    """A hand-out under way at the desk: the credential matched, the parcel is being fetched."""

    parcel: str
    shelf: str
    method: str  # code | qr | card
    name: str | None = None  # known up front for a card hand-out
    confirmed: bool = False  # the staff scanned the right parcel
    proof: Care = field(default_factory=Care)  # what the hand-out needs: signature, age_min

    def needs(self) -> dict[str, Any]:
        """The proof still to take, as facts for the staff's screen (empty: none)."""
        if not self.proof.needs_signature:
            return {}
        needs = ["signature"] if self.proof.age_min is None else ["id_check", "signature"]
        facts: dict[str, Any] = {"needs": needs}
        if self.proof.age_min is not None:
            facts["age_min"] = self.proof.age_min
        return facts

    def needs_said(self) -> str:
        if self.proof.age_min is not None:
            return f"check the ID ({self.proof.age_min}+) and take the signature"
        return "take the signature" if self.proof.needs_signature else ""


@dataclass
class _CourierSession:
    badge: str
    until: float
    returned: list[str] = field(default_factory=list)


def _say(message: str, **facts: Any) -> dict[str, Any]:
    return {"display": message, **facts}


def _refuse(why: str, **facts: Any) -> dict[str, Any]:
    """An answer to a staff line that did nothing: said, and marked so a screen can beep."""
    return {"display": why, "refused": True, **facts}


class Counter:
    """A running counter. Inputs are queued (`scan`, `staff`, `command`); `start()` runs it."""

    def __init__(
        self,
        config: CounterConfig,
        journal: Journal,
        display: Display,
        *,
        replay_store: ReplayStore | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.display = display
        self._shelves = config.shelf_ids()
        self._controller = Controller("counter")
        self._handout: _Handout | None = None
        self._courier: _CourierSession | None = None
        journal.ensure_tables("counter", SCHEMA_VERSION, _SCHEMA)
        journal.ensure_tables("counter_proof", PROOF_SCHEMA_VERSION, _PROOF_SCHEMA)
        self._photos = PhotoOutbox(journal)  # signatures wait there for the depot, as photos
        self._salt = lookup_salt(journal, "counter_meta")
        self._verifier, self._controller.own_store = command_verifier(
            config.journal, config.command_keys, config.device_id, replay_store
        )
        self._guard = load_guard(journal, self._guard_damaged)
        self._badge_guard = KeypadGuard()

    def _guard_damaged(self, tx: JournalTransaction, error: str) -> None:
        self._alarm(tx, "keypad_state_damaged", error=error)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._controller.start(self._run)

    def stop(self, timeout: float = 5.0) -> None:
        self._controller.stop(timeout)

    def health(self) -> list[str]:
        """The controller thread, if it is dead or stalled (empty: healthy, or not started)."""
        return self._controller.health(max(CONTROLLER_PASS_S, self.config.expiry_check_s))

    def status_line(self) -> str:
        """`12/40 shelves in use, 2 to return`."""
        counts = dict(self.journal.query("SELECT state, count(*) FROM held GROUP BY state"))
        used = sum(int(counts.get(s, 0)) for s in ON_SHELF)
        line = f"{used}/{len(self._shelves)} shelves in use"
        if counts.get("expired"):
            line += f", {counts['expired']} to return"
        return line

    # --- inputs (any thread) ---------------------------------------------------------------

    def scan(self, data: str, aim: str | None = None) -> None:
        """A read from the desk's scanner: a parcel label, a courier badge or a pickup QR.
        What it leads to is shown on the display."""
        self._controller.inbox.put(lambda: self._show(self._on_scan(data, aim)))

    def staff(self, line: str) -> dict[str, Any]:
        """One line the staff sent from the screen (a JSON object, `{"do": ...}`); the answer
        to show, `{"display": ..., facts}`. Waits for the controller at most STAFF_WAIT_S."""
        answer: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def job() -> None:
            try:
                answer.set_result(self._on_staff(line))
            except Exception as exc:
                answer.set_exception(exc)

        self._controller.inbox.put(job)
        try:
            return answer.result(timeout=STAFF_WAIT_S)
        except concurrent.futures.TimeoutError:
            return _refuse("the counter is busy; try again")

    def command(self, name: str, payload: bytes) -> None:
        """A depot command as it came off the wire; verified on the controller thread."""
        self._controller.inbox.put(lambda: self._on_command(name, payload))

    # --- the controller thread -------------------------------------------------------------

    def _run(self) -> None:
        ctl = self._controller
        next_check = time.monotonic()
        while not ctl.stopping.is_set():
            ctl.beat_at = time.monotonic()
            try:
                job = ctl.inbox.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                job = None
            try:
                if job is not None:
                    job()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.config.expiry_check_s
                    self._expire()
            except Exception:
                log.exception("counter controller step failed")  # one bad input, not the end

    # --- helpers ---------------------------------------------------------------------------

    def _show(self, answer: Mapping[str, Any]) -> None:
        facts = dict(answer)
        self.display.show(str(facts.pop("display", "")), **facts)

    def _now_ns(self) -> int:
        return self.journal.clock.wall_ns()

    def _alarm(self, tx: JournalTransaction, alarm: str, **facts: Any) -> None:
        raise_alarm(tx, log, alarm, **facts)

    def _row(self, parcel: str) -> dict[str, Any] | None:
        rows = self.journal.query(
            "SELECT shelf, state, size, hold_until_ns FROM held WHERE parcel=?", (parcel,)
        )
        if not rows:
            return None
        shelf, state, size, until = rows[0]
        return {"shelf": shelf, "state": state, "size": size, "hold_until_ns": until}

    def _free_shelf(self) -> str | None:
        used = {
            str(r[0])
            for r in self.journal.query(
                "SELECT shelf FROM held WHERE state IN ('reserved', 'stored', 'expired')"
            )
        }
        return next((s for s in self._shelves if s not in used), None)

    def _courier_active(self) -> _CourierSession | None:
        if self._courier is not None and time.monotonic() > self._courier.until:
            self._courier = None
        return self._courier

    def _returns_pile(self) -> list[dict[str, str]]:
        return [
            {"parcel": str(p), "shelf": str(s)}
            for p, s in self.journal.query(
                "SELECT parcel, shelf FROM held WHERE state='expired' ORDER BY shelf, parcel"
            )
        ]

    # --- scans -----------------------------------------------------------------------------

    def _on_scan(self, data: str, aim: str | None) -> dict[str, Any]:
        if data.startswith(BADGE_PREFIX):
            return self._login(data[len(BADGE_PREFIX) :])
        if data.startswith(QR_PREFIX):
            return self._present("qr", data[len(QR_PREFIX) :])
        parcel = parcel_label(self.journal, data, aim)
        if isinstance(parcel, Rejection):
            return _say("not a parcel label", reason=parcel.reason)
        if self._handout is not None:
            return self._confirm(parcel)
        row = self._row(parcel)
        courier = self._courier_active()
        if courier is not None and row is not None and row["state"] == "expired":
            return self._give_back(courier, parcel, row["shelf"])
        if row is not None and row["state"] in ("stored", "expired"):
            return _say(
                "already here",
                parcel=parcel,
                shelf=row["shelf"],
                state=row["state"],
            )
        return self._check_in(parcel, row)

    def _check_in(self, parcel: str, row: dict[str, Any] | None) -> dict[str, Any]:
        """Take a parcel in: onto the shelf the depot reserved for it, or a free one for a
        walk-in drop if the config allows them. The deposit and its credential commit with
        the shelf's new state."""
        reserved = row is not None and row["state"] == "reserved"
        shelf = row["shelf"] if reserved and row is not None else None
        size = row["size"] if reserved and row is not None else None
        if shelf is None:
            reason = None
            if not self.config.walk_in:
                reason = "not reserved for this counter"
            else:
                shelf = self._free_shelf()
                if shelf is None:
                    reason = "counter full"
            if reason is not None or shelf is None:
                with self.journal.transaction() as tx:
                    tx.append("dropoff_refused", {"parcel": parcel, "reason": reason})
                return _say("parcel refused", parcel=parcel, reason=reason)
        with self.journal.transaction("cannot record a check-in") as tx:
            self._deposit(tx, parcel, shelf, size)
        return _say(f"put it on {shelf}", parcel=parcel, shelf=shelf)

    def _deposit(self, tx: JournalTransaction, parcel: str, shelf: str, size: Any) -> None:
        issued, code_tag, qr_tag = issue_unique(self.journal, self._salt, "held")
        now = self._now_ns()
        hold_until = now + int(self.config.hold_s * 1e9)
        card = self.journal.query("SELECT card_tag FROM held WHERE parcel=?", (parcel,))
        tx.execute(
            "INSERT OR REPLACE INTO held(parcel, shelf, state, size, reserved_until_ns, "
            "deposited_ns, hold_until_ns, credential, code_tag, qr_tag, card_tag) "
            "VALUES (?,?,'stored',?,NULL,?,?,?,?,?,?)",
            (
                parcel,
                shelf,
                size,
                now,
                hold_until,
                json.dumps(issued.stored.to_record()),
                code_tag,
                qr_tag,
                card[0][0] if card else None,
            ),
        )
        journal_deposit(
            tx,
            issued,
            parcel=parcel,
            place=shelf,
            size=size,
            hold_until=hold_until,
            sealing_key=self.config.depot_sealing_key,
            device_id=self.config.device_id,
        )

    # --- hand-out --------------------------------------------------------------------------

    def _present(
        self, method: str, secret: str, name: str | None = None
    ) -> dict[str, Any]:
        """A customer's credential: found, counted (codes and card codes only: a QR token
        cannot be guessed), and the hand-out of its parcel begins."""
        if self._handout is not None:
            h = self._handout
            return _say(
                "finish or cancel the hand-out under way first", parcel=h.parcel, shelf=h.shelf
            )
        now = time.monotonic()
        guarded = method != "qr"
        if guarded:
            wait = lockout_wait(self.journal, self._guard, "pickup_attempt", method, now)
            if wait is not None:
                return _say("too many wrong codes; wait", seconds=round(wait))
        match = self._find(method, secret, name)
        found = match[0] if match is not None else None
        with self.journal.transaction() as tx:
            guard = self._guard if guarded else None
            journal_attempt(tx, "pickup_attempt", method, found, guard, now)
        if match is None:
            return _say("code not recognised")
        parcel, shelf = match
        h = self._handout = _Handout(parcel, shelf, method, name=name, proof=self._proof(parcel))
        say = f"fetch the parcel from {shelf} and scan it"
        if h.needs():
            say += f"; {h.needs_said()} before it is handed out"
        return _say(say, parcel=parcel, shelf=shelf, **h.needs())

    def _proof(self, parcel: str) -> Care:
        """What the depot's reservation asked of this parcel's hand-out (the one rule's
        document, parcel.care, with only `signature` and `age_min` set)."""
        rows = self.journal.query(
            "SELECT age_min, signature FROM proof_needed WHERE parcel=?", (parcel,)
        )
        if not rows:
            return Care()
        age_min, signature = rows[0]
        try:
            return Care(signature=bool(signature), age_min=age_min)
        except CareError as exc:  # a damaged row: ask the most, never less
            strictest = max(AGE_LIMITS)
            log.error("proof needed for %s is damaged (%s): asking for a %d+ ID check", parcel,
                      exc, strictest)
            return Care(signature=True, age_min=strictest)

    def _find(self, method: str, secret: str, name: str | None) -> tuple[str, str] | None:
        """The parcel held here (on hold, or on the returns pile: the customer came late but
        before the courier) that the secret collects, and its shelf."""
        if method == "card":
            tag = card_tag(self.config.device_id, secret, name or "")
            if tag is None:
                return None
            rows = self.journal.query(
                "SELECT parcel, shelf FROM held WHERE card_tag=? AND state IN "
                "('stored', 'expired')",
                (tag,),
            )
            return (str(rows[0][0]), str(rows[0][1])) if rows else None
        is_code = method == "code"
        return find_credential(
            self.journal, secret, self._salt, is_code, log,
            table="held", place="shelf", states=("stored", "expired"),
        )

    def _confirm(self, parcel: str) -> dict[str, Any]:
        h = self._handout
        assert h is not None
        if parcel != h.parcel:
            with self.journal.transaction() as tx:
                tx.append(
                    "handout_wrong_parcel", {"expected": h.parcel, "scanned": parcel}
                )
            return _say(
                f"wrong parcel: fetch the one on {h.shelf}", parcel=h.parcel, shelf=h.shelf,
                scanned=parcel,
            )
        h.confirmed = True
        if h.name is not None and not h.needs():
            return self._hand_over(h.name)
        if h.needs():
            who = "" if h.name is not None else ", type the customer's name"
            return _say(f"right parcel: {h.needs_said()}{who}", parcel=parcel, **h.needs())
        return _say("right parcel: type the customer's name", parcel=parcel)

    def _hand_over(
        self,
        name: str,
        signature: Signature | None = None,
        signed_by: str | None = None,
        id_check: IdCheck | None = None,
    ) -> dict[str, Any]:
        """Record the hand-out, if the proof its reservation asked was given (the door's
        rule: `Care.refusal` for a handover to the recipient, in the UTC year of the
        journal's clock); else say why, journal `handout_refused`, and keep the hand-out
        under way so the staff can take the proof or cancel."""
        h = self._handout
        assert h is not None and h.confirmed
        refused = h.proof.refusal(
            "recipient", signed=signature is not None, id_check=id_check, year=self._utc_year()
        )
        if refused is not None:
            with self.journal.transaction() as tx:
                tx.append(
                    "handout_refused",
                    {"parcel": h.parcel, "compartment": h.shelf, "reason": refused},
                )
            return _refuse(
                f"NOT handed out: {REFUSALS[refused]}", reason=refused, parcel=h.parcel,
                shelf=h.shelf, **h.needs(),
            )
        with self.journal.transaction("cannot record a hand-out") as tx:
            signed = None
            if signature is not None:
                signed = self._photos.stage(tx, signature.to_bytes(), SIGNATURE_TYPE).as_payload()
            tx.execute("UPDATE held SET state='picked_up' WHERE parcel=?", (h.parcel,))
            tx.execute("DELETE FROM proof_needed WHERE parcel=?", (h.parcel,))
            tx.append(
                "parcel_picked_up",
                {
                    "parcel": h.parcel,
                    "compartment": h.shelf,
                    "name": name,
                    "method": h.method,
                    "signature": signed,
                    "signed_by": signed_by if signature is not None else None,
                    "id_check": id_check.to_doc() if id_check is not None else None,
                },
            )
        self._handout = None
        facts: dict[str, Any] = {"parcel": h.parcel, "name": name}
        if signature is not None:
            facts["signed_by"] = signed_by
        if id_check is not None:
            facts["id_check"] = id_check.to_doc()
        return _say("hand it over", **facts)

    def _utc_year(self) -> int:
        """The year by the journal's clock, in UTC: the year an ID's holder is old enough in
        (the van's rule)."""
        return dt.datetime.fromtimestamp(self._now_ns() / 1e9, dt.UTC).year

    # --- couriers and returns --------------------------------------------------------------

    def _login(self, badge: str) -> dict[str, Any]:
        now = time.monotonic()
        refused = badge_refusal(
            self.journal, self._badge_guard, self.config.courier_badges, badge, now, log
        )
        if refused is not None:
            return _say(refused)
        self._courier = _CourierSession(badge, now + self.config.courier_session_s)
        with self.journal.transaction() as tx:
            tx.append("courier_identified", {"courier": badge})
        return _say(
            "courier welcome: scan each parcel to return, and each to check in",
            courier=badge,
            returns=self._returns_pile(),
        )

    def _give_back(self, courier: _CourierSession, parcel: str, shelf: str) -> dict[str, Any]:
        with self.journal.transaction("cannot record a return") as tx:
            tx.execute("UPDATE held SET state='returned' WHERE parcel=?", (parcel,))
            tx.append(
                "parcel_returned",
                {"parcel": parcel, "compartment": shelf, "courier": courier.badge},
            )
        courier.returned.append(parcel)
        left = self._returns_pile()
        return _say(
            "give it to the courier" if left else "give it to the courier; returns done",
            parcel=parcel,
            shelf=shelf,
            returns=left,
        )

    def _expire(self) -> None:
        """Reservations the depot made that lapsed free their shelf; holds that ran out put
        their parcel on the returns pile."""
        now = self._now_ns()
        lapsed = self.journal.query(
            "SELECT parcel, shelf FROM held WHERE state='reserved' AND reserved_until_ns <= ?",
            (now,),
        )
        due = self.journal.query(
            "SELECT parcel, shelf FROM held WHERE state='stored' AND hold_until_ns <= ?", (now,)
        )
        if not lapsed and not due:
            return
        with self.journal.transaction() as tx:
            for parcel, shelf in lapsed:
                tx.execute("DELETE FROM held WHERE parcel=?", (parcel,))
                tx.execute("DELETE FROM proof_needed WHERE parcel=?", (parcel,))
                tx.append("reservation_lapsed", {"compartment": shelf, "parcel": parcel})
            for parcel, shelf in due:
                tx.execute("UPDATE held SET state='expired' WHERE parcel=?", (parcel,))
                tx.append("hold_expired", {"parcel": parcel, "compartment": shelf})
        for parcel, shelf in due:
            self.display.show("hold expired: put it on the returns pile", parcel=parcel,
                              shelf=shelf)

    # --- the staff's screen ----------------------------------------------------------------

    def _on_staff(self, line: str) -> dict[str, Any]:
        """`{"do": "code", "code": "123456"}`, `{"do": "card", "card": "ABCD-2345", "name":
        "A. Jansen"}`, `{"do": "name", "name": "A. Jansen"}` (with the proof a parcel needs:
        `"signature": {"width", "height", "strokes"}`, `"signed_by"` (the name, when not
        given), `"id_check": {"id_type", "birth_year"}`; `name` may be left out after a
        card, which gave it), `{"do": "cancel"}`, `{"do": "badge", "badge": "C42"}`,
        `{"do": "logout"}`, `{"do": "returns"}`, `{"do": "status"}` (docs/DELIVERY.md,
        "Staffed collection point")."""
        try:
            doc = json.loads(line)
        except ValueError:
            return _refuse('not JSON: send {"do": ...}')
        if not isinstance(doc, dict) or not isinstance(doc.get("do"), str):
            return _refuse('send an object with "do"')
        do = doc["do"]
        if do == "code":
            code = doc.get("code")
            if not isinstance(code, str):
                return _refuse("code needs a code")
            return self._present("code", code.strip())
        if do == "card":
            card, name = doc.get("card"), _name(doc.get("name"))
            if not isinstance(card, str) or name is None:
                return _refuse("card needs a card code and the customer's name")
            return self._present("card", card, name)
        if do == "name":
            h = self._handout
            given = doc.get("name")
            name = _name(given if given is not None or h is None else h.name)
            if name is None:
                return _refuse(f"name must be printable text of 1..{MAX_NAME} characters")
            if h is None:
                return _refuse("no hand-out under way")
            if not h.confirmed:
                return _refuse("scan the parcel first", parcel=h.parcel, shelf=h.shelf)
            return self._with_proof(name, doc)
        if do == "cancel":
            h = self._handout
            if h is None:
                return _say("nothing to cancel")
            self._handout = None
            with self.journal.transaction() as tx:
                tx.append("handout_cancelled", {"parcel": h.parcel, "compartment": h.shelf})
            return _say(f"hand-out cancelled: the parcel stays on {h.shelf}", parcel=h.parcel)
        if do == "badge":
            badge = doc.get("badge")
            if not isinstance(badge, str) or not badge:
                return _refuse("badge needs a badge")
            return self._login(badge)
        if do == "logout":
            self._courier = None
            return _say("goodbye")
        if do == "returns":
            return _say("returns pile", returns=self._returns_pile())
        if do == "status":
            return _say(self.status_line())
        return _refuse(f"unknown command {do!r}")

    def _with_proof(self, name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The staff's `name` line with the proof it carries, checked as the van checks the
        courier's (edge.delivery): a bad signature or ID check is refused in one line."""
        try:
            raw = doc.get("signature")
            signature = None if raw is None else Signature.from_doc(raw)
            raw = doc.get("id_check")
            id_check = None if raw is None else IdCheck.from_doc(raw)
        except (SignatureError, CareError) as exc:
            return _refuse(str(exc))
        signed_by = doc.get("signed_by")
        if signed_by is not None:
            signed_by = _name(signed_by)
            if signed_by is None:
                return _refuse(f"signed_by must be printable text of 1..{MAX_NAME} characters")
            if signature is None:
                return _refuse("signed_by without a signature: the customer signs first")
        elif signature is not None:
            signed_by = name  # at the desk the one who signs is the one who takes it
        return self._hand_over(name, signature, signed_by, id_check)

    # --- depot commands --------------------------------------------------------------------

    def _on_command(self, name: str, payload: bytes) -> None:
        """Verified and carried out as a locker's are (edge.desk.carry_out); a counter has no
        door to open after the commit."""
        carry_out(
            self.journal,
            self._verifier,
            name,
            payload,
            lambda tx, action, args: (self._apply(tx, action, args), None),
            CounterError,
        )

    def _apply(
        self, tx: JournalTransaction, action: str, args: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Carry out a verified command inside `tx`; returns its facts."""
        if action == "reserve":
            parcel = str(args["parcel"])
            row = self._row(parcel)
            if row is not None and row["state"] == "reserved":
                return {"parcel": parcel, "compartment": row["shelf"], "again": True}
            if row is not None and row["state"] in ("stored", "expired"):
                raise CounterError(f"parcel {parcel} is already held here")
            # Any size fits a shelf: only room counts.
            shelf = self._free_shelf()
            if shelf is None:
                raise CounterError("no free shelf place")
            until = self._now_ns() + int(float(args.get("hours", 24)) * 3600e9)
            tx.execute(
                "INSERT OR REPLACE INTO held(parcel, shelf, state, size, reserved_until_ns, "
                "card_tag) VALUES (?,?,'reserved',?,?,?)",
                (parcel, shelf, args.get("size"), until, args.get("card_tag")),
            )
            proof = Care(signature=bool(args.get("signature")), age_min=args.get("age_min"))
            tx.execute("DELETE FROM proof_needed WHERE parcel=?", (parcel,))
            if proof.needs_signature:
                tx.execute(
                    "INSERT INTO proof_needed(parcel, age_min, signature) VALUES (?,?,?)",
                    (parcel, proof.age_min, int(proof.signature)),
                )
            facts: dict[str, Any] = {"parcel": parcel, "compartment": shelf}
            if proof.needs_signature:  # said back, so the depot's log shows the staff know
                facts["signature"] = True
            if proof.age_min is not None:
                facts["age_min"] = proof.age_min
            return facts
        if action == "extend_hold":
            extended = extend_hold(self.journal, tx, "held", args)
            if extended is None:
                raise CounterError(f"parcel {args['parcel']} is not held here")
            return extended
        if action in ("remote_open", "set_in_service"):
            raise CounterError(f"a counter has no doors: {action} does not apply")
        raise CounterError(f"unknown action {action!r}")


def _name(value: object) -> str | None:
    """The customer's name as the staff typed it, or None if it is not a usable name."""
    if not isinstance(value, str):
        return None
    name = " ".join(value.split())
    if not 0 < len(name) <= MAX_NAME or not name.isprintable():
        return None
    return name


class CounterDevice:
    """Everything a counter process runs: journal, scanner, counter, uplink; `start()` and
    `stop()` it as one. The staff's screen is a unix socket when the config names one
    (`[staff] socket`, edge.counter_screen: what is shown goes to `display` and to every
    connected screen), else lines on a descriptor (`take_staff_input`; stdin in the CLI),
    read as the van's handheld is (edge.van.CourierInput)."""

    def __init__(
        self, config: CounterConfig, display: Display, *, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.journal = Journal(config.journal, config.device_id, clock=clock)
        screens: ScreenDisplay | None = None
        if config.staff_socket is not None:
            display = screens = ScreenDisplay(display)
        self.display = display
        self.counter = Counter(config, self.journal, display)
        self.staff_socket: StaffSocket | None = None
        if screens is not None and config.staff_socket is not None:
            self.staff_socket = screens.socket = StaffSocket(
                config.staff_socket, self.counter.staff, self._reply
            )
        self.reader: ScannerReader | None = None
        self._scanner_up = threading.Event()
        if config.scanner_port:
            self.reader = ScannerReader(
                config.scanner_port,
                on_scan=lambda scan: self.counter.scan(scan.data, scan.aim),
                on_connection=lambda up: self._scanner_up.set() if up else self._scanner_up.clear(),
            )
        self.uplink = (
            Uplink(self.journal, config.broker, on_command=self.counter.command, **config.sync)
            if config.broker
            else None
        )
        self._staff_input: Any = None

    def take_staff_input(self, fd: int) -> None:
        """Read the staff's lines (JSON objects, one per line) from `fd` once started; each
        answer is shown on the display."""
        from edge.van import CourierInput  # the same reader as the van's handheld

        self._staff_input = CourierInput(fd, self.counter.staff, self._reply)

    def _reply(self, answer: Mapping[str, Any]) -> None:
        facts = dict(answer)
        self.display.show(str(facts.pop("display", facts.pop("error", ""))), **facts)

    def start(self) -> None:
        """Start everything; a missing or busy scanner port raises PortError first, a staff
        socket that cannot be served StaffScreenError."""
        if self.config.scanner_port:
            require_port(self.config.scanner_port, "scanner", "[scanner] port")
        if self.staff_socket is not None:
            self.staff_socket.start()
        self.counter.start()
        if self.reader is not None:
            self.reader.start()
        if self.uplink is not None:
            self.uplink.start()
        if self._staff_input is not None:
            self._staff_input.start()
        ready = self.reader is None or self._scanner_up.wait(INPUT_WAIT_S)
        self.display.show(
            "ready" if ready else "ready, but the scanner is missing",
            counter=self.config.device_id,
        )

    def stop(self) -> None:
        if self._staff_input is not None:
            self._staff_input.stop()
        if self.staff_socket is not None:
            self.staff_socket.stop()
        if self.reader is not None:
            self.reader.stop()
        self.counter.stop()
        if self.uplink is not None:
            self.uplink.stop(drain_s=DRAIN_ON_STOP_S)
        self.journal.close()

    def health(self) -> list[str]:
        """Dead or stalled threads by name (empty: all is well), as the locker says them."""
        found = [] if self.reader is None else [self.reader.problem()]
        if self.staff_socket is not None:
            found.append(self.staff_socket.problem())
        problems = [p for p in found if p is not None] + self.counter.health()
        return problems + (self.uplink.health() if self.uplink is not None else [])

    def status_line(self) -> str:
        """For `systemctl status`: `online, backlog 0, 12/40 shelves in use`."""
        link = self.uplink.status_line() if self.uplink is not None else "no broker configured"
        return f"{link}, {self.counter.status_line()}"
