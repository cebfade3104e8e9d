"""Whether the depot is doing its job right now: the judgement behind `GET /health`.

Owns the list of conditions that make the depot unhealthy, each reported as a sentence a
person on call can act on:

- the broker: not configured, unreachable, silent, or refusing the depot's credentials (the
  MQTT session says which, `sync.mqtt.MqttSession.problem`): devices' events cannot arrive;
- the database does not answer (the error, without a password: the store redacts it);
- ingest is not keeping up: more than `max_events_waiting` stored events wait for the
  projection;
- the webhook outbox is backlogged (its oldest pending row is older than
  `max_webhook_age_s` on the depot's clock) or holds dead letters (a person must look).

Must never: say ok while any of these holds, change anything, or wait on the depot's writer
(every question is one read on a reader connection of its own, opened and closed per check).
"""

from __future__ import annotations

from typing import Any

from depot.store import DATABASE_ERRORS, DepotDatabase, StoreError, events, outbox
from sync.clock import Clock, SystemClock
from sync.mqtt import MqttSession

__all__ = ["MAX_EVENTS_WAITING", "MAX_WEBHOOK_AGE_S", "DepotHealth"]

MAX_EVENTS_WAITING = 5000  # a morning's burst of a fleet projects in seconds; more is a stall
MAX_WEBHOOK_AGE_S = 900.0  # a receiver down for 15 minutes: someone should know
_DATABASE_ERRORS: tuple[type[Exception], ...] = (*DATABASE_ERRORS, StoreError)  # reader() too


class DepotHealth:
    """The depot's health on demand: `check()` returns `{"ok", "problems", ...}`."""

    def __init__(
        self,
        database: DepotDatabase,
        *,
        session: MqttSession | None,
        clock: Clock | None = None,
        max_events_waiting: int = MAX_EVENTS_WAITING,
        max_webhook_age_s: float = MAX_WEBHOOK_AGE_S,
    ) -> None:
        """`session`: the depot's MQTT session, or None for a depot with no broker configured
        (it cannot receive device events, and says so)."""
        self.database = database
        self.session = session
        self.clock: Clock = clock or SystemClock()
        self.max_events_waiting = max_events_waiting
        self.max_webhook_age_s = max_webhook_age_s

    def check(self) -> dict[str, Any]:
        problems: list[str] = []
        doc: dict[str, Any] = {"broker": self._broker(problems)}
        try:
            conn = self.database.reader()
            try:
                waiting = events.waiting_count(conn)
                hooks = outbox.counts(conn)
                oldest_ns = outbox.oldest_pending_ns(conn)
                losses = events.loss_counts(conn)
            finally:
                self.database.close_reader(conn)
        except _DATABASE_ERRORS as exc:
            problems.append(f"database error: {exc}")
            doc["database"] = {"ok": False}
            return {"ok": False, "problems": problems, **doc}
        doc["database"] = {"ok": True, "where": self.database.where}
        if waiting > self.max_events_waiting:
            problems.append(
                f"ingest is behind: {waiting} stored events wait for the projection "
                f"(more than {self.max_events_waiting})"
            )
        age_s = None
        if oldest_ns is not None:
            age_s = max(0.0, (self.clock.wall_ns() - oldest_ns) / 1e9)
            if age_s > self.max_webhook_age_s:
                problems.append(
                    f"webhook outbox backlog: {hooks['pending']} pending, the oldest for "
                    f"{age_s:.0f} s (more than {self.max_webhook_age_s:g} s)"
                )
        if hooks["dead"]:
            problems.append(
                f"{hooks['dead']} webhook(s) dead-lettered: their receivers refused them or "
                "never answered; a person must look (and retry them)"
            )
        # Not a problem of the depot's own: each loss is an alarm a person acknowledges.
        doc["losses"] = losses
        doc["webhooks"] = {
            "pending": hooks["pending"],
            "dead": hooks["dead"],
            "oldest_pending_s": None if age_s is None else round(age_s, 3),
        }
        return {"ok": not problems, "problems": problems, **doc}

    def _broker(self, problems: list[str]) -> dict[str, Any]:
        if self.session is None:
            problems.append("no broker configured: no device events can arrive")
            return {"connected": False, "problem": "not configured"}
        problem = self.session.problem
        address = self.session.address
        if problem is not None:
            problems.append(problem)
        return {
            "connected": problem is None,
            "address": f"{address.host}:{address.port}",
            "username": address.username,
            "problem": problem,
        }
