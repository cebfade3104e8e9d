"""Depot: everything that runs at the depot, as a service of its own.

`depot.store` is the one owner of the depot's database (SQLite or PostgreSQL: the connection,
the numbered migrations, every statement by name); `depot.ingest` takes every device batch off
the broker and has it stored exactly once (hash chains verified, gaps asked for again, garbage
quarantined) before acknowledging it; `depot.tracking` turns those events into parcel states;
`depot.policy`, `depot.routing` and `depot.imports` decide what happens to a parcel;
`depot.service` runs it all and sends what follows (manifests, signed commands,
`depot.webhooks`); `depot.workers` runs several of it on one database; `depot.http` and
`depot.epcis` let people and other systems read it.

Imports only `sync` (the wire contract, signing, MQTT) and `parcel` (what both sides speak):
never `edge`, `drivers` or `simulators`. Every depot error derives from :class:`DepotError`.
"""

from depot.errors import DepotError

__all__ = ["DepotError"]
