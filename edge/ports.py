"""What to tell a person when a device's serial port cannot be used at start.

A van or a locker that starts with a port that is not there, or that another program holds,
cannot do its job; the person starting it needs one line saying which port, what is wrong
and what to do, not a driver's traceback. This module owns that wording for every edge
device. It only looks at a path and at an error already raised: it never opens a port (the
drivers do) and never decides whether a device goes on running.
"""

from __future__ import annotations

import errno
import os

from edge.errors import EdgeError

__all__ = ["PortError", "port_problem", "require_port"]

_BUSY = frozenset({errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


class PortError(EdgeError):
    """A configured serial port is missing, busy or not ours to open: a configuration error."""


def _is_device_path(port: str) -> bool:
    # pyserial URLs (socket://, loop://, rfc2217://...) name no file to look for.
    return "://" not in port


def require_port(port: str, what: str, setting: str) -> None:
    """Raise PortError when a device-path port does not exist (a dangling symlink included).

    ``what`` names the device ("scanner"), ``setting`` where the config names its port
    ("[scanner] port").
    """
    if _is_device_path(port) and not os.path.exists(port):
        raise PortError(
            f"{what} port {port} does not exist: check {setting} in the config "
            f"and that the {what} is plugged in"
        )


def port_problem(
    port: str, what: str, setting: str, error: BaseException, *, device: str
) -> PortError:
    """The PortError to raise for ``error`` (or an error it was raised from) opening ``port``.

    ``device`` is what else would hold the port when it is busy ("locker").
    """
    code: int | None = None
    seen: BaseException | None = error
    while seen is not None and code is None:  # the driver's error wraps pyserial's
        code = seen.errno if isinstance(seen, OSError) else None
        seen = seen.__cause__
    if code == errno.ENOENT:
        return PortError(
            f"{what} port {port} does not exist: check {setting} in the config "
            f"and that the {what} is plugged in"
        )
    if code in _BUSY:
        return PortError(
            f"{what} port {port} is in use by another program (is another {device} running?)"
        )
    if code in _DENIED:
        return PortError(
            f"no permission to open {what} port {port}: add this user to the port's group "
            f"(often dialout) or fix {setting}"
        )
    return PortError(f"cannot open {what} port {port} ({error}): check {setting} in the config")
