"""The uplink's patience for an ack grows with each silence in a row and resets on an ack.

A depot working through a fleet's morning backlog is slow, not gone; a device that resent its
whole window every ack timeout would bury it deeper (python -m bench fleet showed the storm).
"""

from __future__ import annotations

from pathlib import Path

from depot.ingest import Depot, DepotStore
from simulators.broker import Broker
from sync.journal import Journal
from sync.uplink import ACK_PATIENCE_MAX, Uplink
from tests.conftest import address

ACK_TIMEOUT_S = 0.2
WAIT_S = 30.0


def test_patience_grows_with_silences_and_an_ack_resets_it(
    broker: Broker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "van.db", "van-1")
    journal.append_many([("scan", {"n": i}) for i in range(20)])
    uplink = Uplink(
        journal,
        address(broker, "van-1"),
        ack_timeout_s=ACK_TIMEOUT_S,
        keepalive_s=2,
        backoff_min_s=0.1,
        backoff_max_s=0.5,
    )
    uplink.start()
    store = DepotStore(tmp_path / "depot.db")
    depot = Depot(store, address(broker, "depot"))
    try:
        # No depot yet: nothing answers, and each silence makes the next wait longer.
        seen: list[tuple[int, float]] = []
        assert uplink.session.wait_connected(10)
        while len({k for k, _ in seen}) < 4:
            seen.append(uplink.patience)
            uplink.wait_acked(1, 0.05)  # nothing acknowledges; this only paces the look
            assert len(seen) < WAIT_S / 0.05, f"no silences counted: {seen[-1]}"
        for silences, patience in seen:
            window = min(ACK_TIMEOUT_S * ACK_PATIENCE_MAX, ACK_TIMEOUT_S * 2**silences)
            assert max(ACK_TIMEOUT_S, window / 2) <= patience <= window, (silences, patience)
        assert max(p for _, p in seen) > 2 * ACK_TIMEOUT_S
        assert uplink.resends >= 3
        # The depot comes: the first ack resets the patience to the ack timeout.
        depot.start()
        assert uplink.wait_acked(journal.last_seq, WAIT_S)
        assert uplink.patience == (0, ACK_TIMEOUT_S)
    finally:
        uplink.stop()
        depot.stop()
        store.close()
        journal.close()
