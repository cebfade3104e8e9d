"""The exception root of the parcel package."""


class ParcelError(Exception):
    """A parcel fact both ends speak (an identifier, a manifest) cannot be used as given."""
