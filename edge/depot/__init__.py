"""The depot's logistics: parcels in, manifests out, parcel states, notifications.

Built on `sync.depot` (which stores every device event exactly once and knows nothing of
parcels); this package turns those events into parcel states and tells people about them.
It lives in `edge` because it is parcel logic and shares the identifier rules and the
manifest document with the devices; `sync` must never import it.
"""
