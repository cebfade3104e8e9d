"""Real parts for the tests: a Mosquitto broker on a free port, with an account per device."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import Broker
from sync.mqtt import BrokerAddress

DEVICES = ("van-1", "van-2")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with persistence off, so a restart loses everything it held in memory."""
    devices = {name: secrets.token_hex(8) for name in DEVICES}
    with Broker(tmp_path / "broker", devices=devices, persistence=False) as running:
        yield running


def address(broker: Broker, who: str, port: int | None = None) -> BrokerAddress:
    """Connection details for a device (or "depot"), optionally through a link proxy's port."""
    user, password = broker.depot_credentials if who == "depot" else broker.credentials(who)
    return BrokerAddress(broker.host, port or broker.port, user, password)
