"""The store's error: the depot's database cannot be used as it is."""

from depot.errors import DepotError


class StoreError(DepotError):
    """The depot's own database cannot be used (a person must look at it)."""
