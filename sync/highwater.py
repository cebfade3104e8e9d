"""The journal's high-water mark: how far the journal got, kept outside the journal file.

A power cut can damage a SQLite write-ahead log in a way SQLite cannot tell from a clean one: it
replays the frames up to the first bad checksum and the database opens, `integrity_check` says
ok, and the last commits are simply gone. Confirmed events are gone with them, and the device
would hand out their sequence numbers again. The only way to notice is to remember, somewhere
else, how far the journal had got: this small file, rewritten and fsync'd after every commit.

The file holds two fixed-size slots written in turn, each with a counter and a CRC, so a write
torn by a power cut damages only the slot being written and the other still holds the previous
mark. Reading takes the valid slot with the higher counter.

Owns: the file `<journal>.hw`. Must never: report a mark it cannot verify (a slot with a bad CRC
is ignored), or be written before the commit it describes is durable.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from sync.durable import fsync_dir
from sync.errors import JournalError

_MAGIC = b"LMHW"
_VERSION = 1
# magic, version, counter, journal id (32 ascii hex), last seq, last hash; then a CRC32 of it all.
_BODY = struct.Struct(">4sBQ32sQ32s")
_SLOT = 128
_CRC = struct.Struct(">I")


@dataclass(frozen=True)
class Mark:
    """Journal `journal_id` had committed every event up to `last_seq`, ending in `last_hash`."""

    journal_id: str
    last_seq: int
    last_hash: bytes


class HighWater:
    """Read at start, rewritten after every commit; one writer (the journal's, under its lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the high-water file {self.path}: {exc}") from exc
        if created:
            fsync_dir(self.path.parent)
        self._counter = 0
        self.mark: Mark | None = None
        # The file existed with bytes in it but neither slot verifies: the check it exists for
        # cannot be made this time, and a person should hear that.
        self.unreadable = False
        self._read()

    def _read(self) -> None:
        data = os.pread(self._fd, 2 * _SLOT, 0)
        best: tuple[int, Mark] | None = None
        for start in (0, _SLOT):
            slot = data[start : start + _SLOT]
            parsed = _parse(slot)
            if parsed is not None and (best is None or parsed[0] > best[0]):
                best = parsed
        if best is None:
            self.unreadable = any(data)
            return
        self._counter, self.mark = best

    def record(self, mark: Mark) -> None:
        """Write `mark` to the older slot and fsync it; raises JournalError if the disk refuses."""
        self._counter += 1
        body = _BODY.pack(
            _MAGIC,
            _VERSION,
            self._counter,
            mark.journal_id.encode("ascii"),
            mark.last_seq,
            mark.last_hash,
        )
        slot = body + _CRC.pack(zlib.crc32(body))
        slot += bytes(_SLOT - len(slot))
        try:
            os.pwrite(self._fd, slot, (self._counter % 2) * _SLOT)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise JournalError(f"high-water mark not recorded in {self.path}: {exc}") from exc
        self.mark = mark

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _parse(slot: bytes) -> tuple[int, Mark] | None:
    if len(slot) < _BODY.size + _CRC.size:
        return None
    body = slot[: _BODY.size]
    (crc,) = _CRC.unpack_from(slot, _BODY.size)
    if zlib.crc32(body) != crc:
        return None
    magic, version, counter, jid, last_seq, last_hash = _BODY.unpack(body)
    if magic != _MAGIC or version != _VERSION:
        return None
    try:
        journal_id = jid.decode("ascii")
    except UnicodeDecodeError:
        return None
    return counter, Mark(journal_id, last_seq, last_hash)


