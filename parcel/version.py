"""Which version of this software runs here, and which of its extras are installed.

A fleet's update system installs new versions; the project only has to tell which device runs
what. So the version a device reports in its status, the one `lastmile --version` prints and the
one the depot runs are all read here, from the installed distribution's metadata (which
pyproject.toml's `version` becomes at install), never typed a second time in the code where it
could drift from what pip installed.

The extras keep small devices small: the base install is a van or a locker without a camera,
and `camera`, `depot` and `sim` bring the rest (pyproject.toml). Code that needs an extra asks
here whether its modules are there, so that every "install this" sentence names the same
extra and the same command.

Neutral on purpose: the devices (`sync.uplink`, `drivers`), the depot and the CLI all need it,
and `parcel` is what all of them may import.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

__all__ = [
    "DISTRIBUTION",
    "EXTRAS",
    "UNKNOWN",
    "extra_providing",
    "install_command",
    "missing_modules",
    "software_version",
]

DISTRIBUTION = "lastmile-edge"
# Run from a checkout that was never installed (no metadata to read): say so rather than guess,
# so a depot never shows a version that is not the one running.
UNKNOWN = "unknown"

# The top-level modules each extra of pyproject.toml brings (tests/test_packaging.py checks
# that each comes from a distribution that extra requires).
EXTRAS: Mapping[str, tuple[str, ...]] = {
    "camera": ("cv2", "numpy", "zxingcpp", "pyzbar"),
    "depot": ("psycopg", "psycopg_pool", "segno", "starlette", "uvicorn", "jinja2", "argon2"),
    "sim": ("amqtt", "barcode"),
}


@functools.cache
def software_version() -> str:
    """The installed lastmile-edge version ("0.1.0"), or "unknown" when it is not installed.

    Cached: the metadata does not change under a running process (an update restarts it), and
    the uplink asks on every connect.
    """
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN


def install_command(extra: str) -> str:
    """What a person types to add `extra`: ``pip install 'lastmile-edge[camera]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that are not installed (none: the extra is there).

    Looked up without importing them, so asking costs no OpenCV start-up.
    """
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def extra_providing(module: str | None) -> str | None:
    """The extra that brings `module` (a dotted name is taken by its top level), or None for a
    module no extra of ours brings."""
    top = (module or "").split(".")[0]
    return next((extra for extra, names in EXTRAS.items() if top in names), None)
