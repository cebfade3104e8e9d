"""The van_positions table: every statement about where the vans were, by name.

The one owner of `van_positions` (created by `depot.store.migrations`, number 13). The ingest
records the samples vans send on their round (`sync.wire.decode_positions`); the ETA
(`depot.eta`) and the operator's fleet page read them. A van keeps about a day of samples
here (`HISTORY_S`, on the van's own clock: a simulated day ages its samples in its own time),
older ones are deleted as new ones arrive. Portable SQL, run on the caller's connection
inside the caller's transaction (`depot.store.postgres` translates placeholders and
`OR IGNORE`).

Must never: commit or begin a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from depot.store.base import Conn
from sync.wire import PositionSample

__all__ = [
    "HISTORY_S",
    "VanPosition",
    "count",
    "latest",
    "latest_of",
    "record",
    "track",
    "track_today",
]

#: How far back a van's samples are kept, before its newest one.
HISTORY_S = 24 * 3600.0
_COLUMNS = (
    "van, fix_ns, lat, lon, accuracy_m, speed_mps, stop, stops_done, stops_total, received_ns"
)


@dataclass(frozen=True)
class VanPosition:
    """One stored sample: where `van` was at `fix_ns` (its clock), and its round's progress."""

    van: str
    fix_ns: int
    lat: float
    lon: float
    accuracy_m: float | None
    speed_mps: float | None
    stop: int | None
    stops_done: int
    stops_total: int
    received_ns: int


def _row(r: Sequence[object]) -> VanPosition:
    van, fix_ns, lat, lon, acc, speed, stop, done, total, received = r
    return VanPosition(
        str(van),
        int(str(fix_ns)),
        float(str(lat)),
        float(str(lon)),
        None if acc is None else float(str(acc)),
        None if speed is None else float(str(speed)),
        None if stop is None else int(str(stop)),
        int(str(done)),
        int(str(total)),
        int(str(received)),
    )


def record(
    conn: Conn,
    van: str,
    samples: Sequence[PositionSample],
    *,
    received_ns: int,
    history_s: float = HISTORY_S,
) -> int:
    """Store a van's samples (one already held is skipped); drop what is older than
    `history_s` before its newest; the number of new samples stored."""
    stored = 0
    for s in samples:
        cur = conn.execute(
            f"INSERT OR IGNORE INTO van_positions({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                van,
                s.at_ns,
                s.lat,
                s.lon,
                s.accuracy_m,
                s.speed_mps,
                s.stop,
                s.stops_done,
                s.stops_total,
                received_ns,
            ),
        )
        stored += max(0, cur.rowcount)
    if samples:
        newest = conn.execute(
            "SELECT max(fix_ns) FROM van_positions WHERE van=?", (van,)
        ).fetchone()[0]
        conn.execute(
            "DELETE FROM van_positions WHERE van=? AND fix_ns < ?",
            (van, int(newest) - int(history_s * 1e9)),
        )
    return stored


def latest_of(conn: Conn, van: str) -> VanPosition | None:
    """The van's newest sample, or None when it has sent none (that is kept)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM van_positions WHERE van=? ORDER BY fix_ns DESC LIMIT 1", (van,)
    ).fetchone()
    return None if row is None else _row(row)


def latest(conn: Conn) -> dict[str, VanPosition]:
    """Every van's newest sample, by van (the fleet's map)."""
    rows = conn.execute(
        f"SELECT {', '.join('p.' + c.strip() for c in _COLUMNS.split(','))} "
        "FROM van_positions p JOIN (SELECT van, max(fix_ns) AS newest FROM van_positions "
        "GROUP BY van) n ON n.van = p.van AND n.newest = p.fix_ns ORDER BY p.van"
    ).fetchall()
    return {p.van: p for p in map(_row, rows)}


def track(conn: Conn, van: str, since_ns: int) -> list[VanPosition]:
    """The van's samples from `since_ns` on (its clock), oldest first: the way it went."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM van_positions WHERE van=? AND fix_ns >= ? ORDER BY fix_ns",
        (van, since_ns),
    ).fetchall()
    return [_row(r) for r in rows]


def count(conn: Conn, van: str | None = None) -> int:
    """Samples held (of one van, or of all)."""
    if van is None:
        row = conn.execute("SELECT count(*) FROM van_positions").fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM van_positions WHERE van=?", (van,)).fetchone()
    return int(row[0])


_DAY_NS = 86_400 * 10**9


def track_today(conn: Conn, van: str, now_ns: int) -> list[VanPosition]:
    """The van's samples since midnight (UTC, the depot's clock) of `now_ns`'s day."""
    return track(conn, van, now_ns - now_ns % _DAY_NS)
