"""The exception root of the edge package."""


class EdgeError(Exception):
    """A device workflow could not do what was asked."""
