"""Sync: the durable outbox (journal), the MQTT wire contract, the device uplink, the depot.

Sync never imports edge: it moves and stores events without knowing what they mean.
Every sync error derives from :class:`SyncError`.
"""

from sync.clock import Clock, ScaledClock, SystemClock
from sync.errors import JournalError, JournalFull, SyncError, WireError
from sync.journal import Journal
from sync.mqtt import BrokerAddress
from sync.wire import Event

__all__ = [
    "BrokerAddress",
    "Clock",
    "Event",
    "Journal",
    "JournalError",
    "JournalFull",
    "ScaledClock",
    "SyncError",
    "SystemClock",
    "WireError",
]
