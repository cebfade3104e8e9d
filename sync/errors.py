"""The exception root of the sync package and its structured children."""


class SyncError(Exception):
    """The journal, the wire contract, the uplink or the depot could not do what was asked."""


class WireError(SyncError):
    """A payload or topic does not follow the wire contract; the reason says what is wrong."""


class ChainConflict(WireError):
    """A verified batch contradicts what the depot holds of its journal (a fork): the depot
    refuses it and says so in its acknowledgement (`Ack.refused`)."""


class JournalError(SyncError):
    """The journal cannot store or read events; a person may need to look at the device."""


class JournalFull(JournalError):
    """The disk (or the journal's size limit) is full: the event was NOT stored.

    The courier must be told the scan was refused; nothing is confirmed that was not stored.
    """
