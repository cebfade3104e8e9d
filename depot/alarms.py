"""Alarms: what a device, or the depot itself, says a person must look at.

Owns what an alarm is at the depot (its table's statements are `depot.store.alarms`'s):

- A device journals an alarm as an event of kind `alarm` with payload `{"alarm": name,
  ...facts}` (`door_left_open`, `forced_open`, `lock_jammed`, `board_offline`,
  `item_mismatch`, `journal_corrupt`, `photo_corrupt`, ...). The parcel book's projection
  records it here (`record_device_alarm`) in the transaction of its batch: one alarm per
  device event uuid, however often the event is replayed.
- A part of the depot raises one of its own (`raise_alarm`, e.g. a locker and a van that
  disagree about a parcel), idempotent on the key it chooses.
- An alarm is `open` until a person acknowledges it (`acknowledge`: who, and a note);
  acknowledging twice is refused, so one person's note is never overwritten by another's.
- The operator's webhook (`[operator] webhook` in depot.toml, signed with the secret of key
  id `operator`) hears of every alarm once: `notify_operator` puts it in the webhook outbox
  and marks it told, in one transaction. Alarms are recorded whether or not an operator
  webhook is configured; they stay listed (`GET /alarms`, `lastmile depot alarms`).

Must never: drop an alarm a device sent (a name this depot does not know is kept as it came),
delete one, or reopen an acknowledged one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from depot.errors import DepotError
from depot.store import Conn, DepotDatabase
from depot.store import alarms as table
from depot.webhooks import enqueue
from sync.journal import ALARM_KIND

__all__ = [
    "ALARM_KIND",
    "OPERATOR_KEY_ID",
    "STATES",
    "AlarmError",
    "AlarmStateError",
    "UnknownAlarmError",
    "acknowledge",
    "list_alarms",
    "notify_operator",
    "open_alarms",
    "open_by_device",
    "open_count",
    "open_count_of",
    "raise_alarm",
    "record_device_alarm",
]

STATES = ("open", "acknowledged")
OPERATOR_KEY_ID = "operator"  # the webhook secret that signs the operator's notifications
MAX_LISTED = 1000  # newest first; an operator with more open alarms has a bigger problem
NOTIFY_BATCH = 100
MAX_BY = 100
MAX_NOTE = 2000


class AlarmError(DepotError):
    """An alarm cannot be recorded or acknowledged as asked."""


class UnknownAlarmError(AlarmError):
    def __init__(self, alarm_id: int) -> None:
        super().__init__(f"no alarm {alarm_id}")
        self.alarm_id = alarm_id


class AlarmStateError(AlarmError):
    """The alarm is not open: it was acknowledged before (by `doc['acknowledged_by']`)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        super().__init__(
            f"alarm {doc['id']} was already acknowledged by {doc['acknowledged_by']} "
            f"at {doc['acknowledged_at']}"
        )
        self.doc = dict(doc)


# --- recording ------------------------------------------------------------------------------


def raise_alarm(
    conn: Conn, *, device: str, alarm: str, facts: Mapping[str, Any], at_ns: int, key: str
) -> bool:
    """Record an alarm the depot itself raises, inside the caller's transaction; False if one
    with the same `key` was raised before (nothing is written then).

    `device` is what the alarm is about (a locker, a van, or "depot"); `facts` must be JSON.
    """
    if not alarm or not device or not key:
        raise AlarmError("an alarm needs a device, a name and a key")
    return _record(
        conn, key=f"depot:{key}", source="depot", device=device, alarm=alarm, facts=facts,
        at_ns=at_ns,
    )


def record_device_alarm(
    conn: Conn, *, event_uuid: str, device: str, payload: Mapping[str, Any], at_ns: int
) -> bool:
    """Record a device's alarm event (kind `alarm`) inside the caller's transaction (the
    projection's); False if this event was recorded before."""
    name = payload.get("alarm")
    facts = {k: v for k, v in payload.items() if k != "alarm"}
    return _record(
        conn,
        key=f"event:{event_uuid}",
        source="device",
        device=device,
        alarm=name if isinstance(name, str) and name else "unnamed",
        facts=facts,
        at_ns=at_ns,
    )


def _record(
    conn: Conn,
    *,
    key: str,
    source: str,
    device: str,
    alarm: str,
    facts: Mapping[str, Any],
    at_ns: int,
) -> bool:
    try:
        text = json.dumps(dict(facts), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise AlarmError(f"alarm {alarm} from {device}: facts are not JSON: {exc}") from None
    return table.add(
        conn,
        key=key,
        source=source,
        device=device,
        alarm=alarm,
        facts=text,
        raised_ns=int(at_ns),
        recorded_ns=time.time_ns(),
    )


# --- reading and acknowledging ------------------------------------------------------------------


def list_alarms(conn: Conn, state: str = "open", limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    """Alarms in `state` (`open`, `acknowledged` or `all`), newest first."""
    if state != "all" and state not in STATES:
        raise AlarmError(f"unknown alarm state {state!r}; states: open, acknowledged, all")
    return [_doc(r) for r in table.listing(conn, None if state == "all" else state, limit)]


def open_alarms(
    conn: Conn, limit: int, *, alarm: str | None = None, other_than: str | None = None
) -> list[dict[str, Any]]:
    """Open alarms, newest first: only those named `alarm`, or all but `other_than`."""
    return [_doc(r) for r in table.open_listing(conn, limit, alarm=alarm, other_than=other_than)]


def open_count_of(conn: Conn, alarm: str) -> int:
    """Open alarms named `alarm`."""
    return table.open_count_of(conn, alarm)


def acknowledge(
    conn: Conn, alarm_id: int, *, by: str, note: str | None = None, now_ns: int
) -> dict[str, Any]:
    """A person has seen the alarm: mark it acknowledged, inside the caller's transaction,
    and return it. Raises UnknownAlarmError, or AlarmStateError if it was acknowledged before.
    """
    by = by.strip()
    if not by or len(by) > MAX_BY:
        raise AlarmError(f"say who acknowledges (1 to {MAX_BY} characters)")
    if note is not None and len(note) > MAX_NOTE:
        raise AlarmError(f"a note is at most {MAX_NOTE} characters")
    if not table.acknowledge(conn, alarm_id, by=by, note=note or None, now_ns=now_ns):
        row = table.one(conn, alarm_id)
        if row is None:
            raise UnknownAlarmError(alarm_id)
        raise AlarmStateError(_doc(row))
    row = table.one(conn, alarm_id)
    assert row is not None
    return _doc(row)


def open_count(conn: Conn) -> int:
    """Alarms nobody has acknowledged yet (the simulated day reports it)."""
    return table.open_count(conn)


def open_by_device(conn: Conn) -> dict[str, int]:
    """Open alarms per device (devices with none are left out)."""
    return table.open_by_device(conn)


# --- telling the operator --------------------------------------------------------------------


def notify_operator(database: DepotDatabase, *, url: str, now_ns: int) -> int:
    """Put every alarm the operator has not been sent into the webhook outbox (event id
    `alarm-<id>`, key id `operator`), marking each told in the same transaction; return how
    many. Several workers may call it at once: each takes the alarms no other holds."""
    total = 0
    while True:
        with database.transaction() as conn:
            rows = table.unnotified(conn, NOTIFY_BATCH, database.skip_locked)
            for row in rows:
                doc = _doc(row)
                enqueue(
                    conn,
                    event_id=f"alarm-{doc['id']}",
                    url=url,
                    body={"type": "alarm", "alarm": doc},
                    key_id=OPERATOR_KEY_ID,
                    now_ns=now_ns,
                )
            if rows:
                table.mark_notified(conn, [int(r[0]) for r in rows], now_ns)
        total += len(rows)
        if len(rows) < NOTIFY_BATCH:
            return total


def _doc(row: tuple[Any, ...]) -> dict[str, Any]:
    from depot.tracking import iso_utc  # the book's one time format (it imports this module)

    aid, source, device, alarm, facts, raised_ns, state, ack_ns, ack_by, note = row
    try:
        facts_doc = json.loads(str(facts))
    except ValueError:
        facts_doc = {}
    return {
        "id": int(aid),
        "source": str(source),
        "device": str(device),
        "alarm": str(alarm),
        "facts": facts_doc,
        "raised_at": iso_utc(int(raised_ns)),
        "state": str(state),
        "acknowledged_at": iso_utc(int(ack_ns)) if ack_ns is not None else None,
        "acknowledged_by": None if ack_by is None else str(ack_by),
        "note": None if note is None else str(note),
    }
