"""The exception root of the simulators package."""


class SimulatorError(Exception):
    """A simulator could not set up or drive its end of a wire."""
