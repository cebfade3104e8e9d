"""Parcel: what the devices and the depot both speak, and nothing else.

Parcel identifiers and their check digits (`parcel.identify`), the van's manifest document
(`parcel.manifest`), delivery outcome codes (`parcel.codes`) and the distance formula
(`parcel.geo`). Both `edge` (the van, the locker) and `depot` import it; it imports neither,
nor `drivers`, `sync` or `simulators`, so neither side drags the other's workflows in.
Every parcel error derives from :class:`ParcelError`.
"""

from parcel.errors import ParcelError

__all__ = ["ParcelError"]
