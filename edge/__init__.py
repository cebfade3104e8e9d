"""Edge: the device logic of the van scanner and the parcel locker.

Edge composes drivers (the hardware) and sync (the journal and uplink). Every edge error
derives from :class:`EdgeError`.
"""

from edge.errors import EdgeError

__all__ = ["EdgeError"]
