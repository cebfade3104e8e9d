"""Depot: everything that runs at the depot, as a service of its own.

`depot.ingest` stores every device event exactly once (hash chains verified, gaps asked for
again, garbage quarantined) and acknowledges it; `depot.tracking` turns those events into
parcel states; `depot.policy`, `depot.routing` and `depot.imports` decide what happens to a
parcel; `depot.service` runs it all and sends what follows (manifests, signed commands,
`depot.webhooks`); `depot.http` and `depot.epcis` let people and other systems read it.

Imports only `sync` (the wire contract, signing, MQTT) and `parcel` (what both sides speak):
never `edge`, `drivers` or `simulators`. Every depot error derives from :class:`DepotError`.
"""

from depot.errors import DepotError

__all__ = ["DepotError"]
