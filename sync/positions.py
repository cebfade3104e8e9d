"""The van's position outbox: samples of where it is on its round, waiting for the uplink.

Positions are not facts: nothing is decided on them, and the next sample, 30 s later, makes
a lost one irrelevant. So they stay out of the journal's hash chain and its acknowledgements,
and live in a small table of the same file instead: durable enough that samples taken in a
dead zone go out once the link is back (the operator's map shows the way the van went), and
bounded (`MAX_KEPT`, oldest dropped) so a van offline all day never fills its card with them.
A sample leaves the table once the uplink has handed it to the MQTT session (QoS 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from sync.journal import Journal
from sync.wire import PositionSample

OWNER = "position_outbox"
VERSION = 1
_SCHEMA = (
    """CREATE TABLE position_outbox (
        at_ns       INTEGER PRIMARY KEY,
        lat         REAL NOT NULL,
        lon         REAL NOT NULL,
        accuracy_m  REAL,
        speed_mps   REAL,
        stop        INTEGER,
        stops_done  INTEGER NOT NULL,
        stops_total INTEGER NOT NULL
    )""",
)
#: Samples kept while they cannot be sent: a whole day of a round at one per 30 s.
MAX_KEPT = 2880
_COLUMNS = "at_ns, lat, lon, accuracy_m, speed_mps, stop, stops_done, stops_total"


class PositionOutbox:
    """Position samples in the journal file until the uplink has sent them."""

    def __init__(self, journal: Journal, *, max_kept: int = MAX_KEPT) -> None:
        self.journal = journal
        self.max_kept = max_kept
        journal.ensure_tables(OWNER, VERSION, _SCHEMA)

    def add(self, sample: PositionSample) -> None:
        """Keep a sample (one per time: a second one at the same instant replaces it) and
        drop the oldest beyond `max_kept`. Raises JournalError when the file cannot take it."""
        with self.journal.transaction("position sample not stored") as tx:
            tx.execute(
                f"INSERT OR REPLACE INTO position_outbox({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    sample.at_ns,
                    sample.lat,
                    sample.lon,
                    sample.accuracy_m,
                    sample.speed_mps,
                    sample.stop,
                    sample.stops_done,
                    sample.stops_total,
                ),
            )
            tx.execute(
                "DELETE FROM position_outbox WHERE at_ns NOT IN "
                "(SELECT at_ns FROM position_outbox ORDER BY at_ns DESC LIMIT ?)",
                (self.max_kept,),
            )

    def pending(self, limit: int) -> list[PositionSample]:
        """The oldest `limit` samples still to send, oldest first."""
        rows = self.journal.query(
            f"SELECT {_COLUMNS} FROM position_outbox ORDER BY at_ns LIMIT ?", (limit,)
        )
        return [
            PositionSample(
                int(at),
                float(lat),
                float(lon),
                None if acc is None else float(acc),
                None if speed is None else float(speed),
                None if stop is None else int(stop),
                int(done),
                int(total),
            )
            for at, lat, lon, acc, speed, stop, done, total in rows
        ]

    def sent(self, samples: Sequence[PositionSample]) -> None:
        """Forget samples the MQTT session has taken."""
        with self.journal.transaction("sent positions not recorded") as tx:
            for s in samples:
                tx.execute("DELETE FROM position_outbox WHERE at_ns=?", (s.at_ns,))

    def count(self) -> int:
        return int(self.journal.query("SELECT count(*) FROM position_outbox")[0][0])
