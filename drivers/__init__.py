"""Drivers: bytes on a wire in, device facts out.

A driver knows its device's protocol and nothing of parcels, couriers or the depot.
Every driver error derives from :class:`DriverError`.
"""

from drivers.errors import DriverError
from drivers.gnss import (
    BadNmeaChecksum,
    BadSentence,
    Fix,
    GnssCounters,
    GnssError,
    GnssReader,
    NmeaFramer,
    parse_sentence,
)
from drivers.lockboard import (
    BadChecksum,
    BoardConfig,
    BoardOffline,
    BoardStatus,
    BusError,
    FrameError,
    GarbledReply,
    LockBoardError,
    LockBus,
    ReplyParser,
    StatusReply,
    WrongAddress,
    encode_command,
)
from drivers.scanner import Rejected, Scan, ScanFramer, ScannerError, ScannerReader

__all__ = [
    "BadChecksum",
    "BadNmeaChecksum",
    "BadSentence",
    "BoardConfig",
    "BoardOffline",
    "BoardStatus",
    "BusError",
    "DriverError",
    "Fix",
    "FrameError",
    "GarbledReply",
    "GnssCounters",
    "GnssError",
    "GnssReader",
    "LockBoardError",
    "LockBus",
    "NmeaFramer",
    "Rejected",
    "ReplyParser",
    "Scan",
    "ScanFramer",
    "ScannerError",
    "ScannerReader",
    "StatusReply",
    "WrongAddress",
    "encode_command",
    "parse_sentence",
]
