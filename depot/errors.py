"""The exception root of the depot package."""


class DepotError(Exception):
    """The depot cannot do what was asked; the message says what and, where it can, why."""
