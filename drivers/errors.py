"""The exception root of the drivers package."""


class DriverError(Exception):
    """Something a device or its wire did that a driver could not turn into a fact."""
