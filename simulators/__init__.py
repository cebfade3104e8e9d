"""Simulators: the far side of every wire, and the scenario runner.

A simulator implements its device's protocol on its own; it never imports the driver it
stands in for, so a framing bug cannot hide on both sides of a test.
"""

from simulators.errors import SimulatorError

__all__ = ["SimulatorError"]
