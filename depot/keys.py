"""The depot's private keys: the one that signs locker commands, the ones that open credentials.

Owns loading the depot's key files and the two things done with them, so no other module reads
a PEM or tries keys in turn: signing a command (`signing`) and opening a pickup credential a
locker sealed to the depot (`open_credential`). A locker seals with the one public sealing key
in its configuration; after a rotation, credentials sealed under an older key are still in
lockers, so every sealing key the depot still holds is tried, newest first.

Also owns the directory `lastmile depot keygen` keeps them in (`KeyDirectory`), so that making,
rotating and retiring keys and loading them for the service agree on one layout::

    DIR/command-signing.pem                      the current command-signing key (Ed25519)
    DIR/credential-sealing.pem                   the current credential-sealing key (X25519)
    DIR/retired/STAMP-command-signing.pub        an old command key's public half (base64),
                                                 still listed for lockers until retired
    DIR/retired/STAMP-credential-sealing.pem     an old sealing key, tried after the current one

STAMP is the UTC second of the rotation (20250301T101500Z; .2, .3, ... for a second rotation in
the same second). An old command key's private half is not kept: the depot only ever signs with
the current key, and a key rotated away because it may have leaked should not linger on disk.

Must never: log or return a secret anywhere but to its caller, or guess which key sealed a
credential from anything but whether it opens (the AEAD tag says so); overwrite a key file
except when rotating, and then only after the old key is safely stored in retired/; delete an
old sealing key unless its caller asked for exactly that.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from depot.errors import DepotError
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    SealError,
    SigningKeyError,
    associated_data,
    generate_keypair,
    generate_sealing_keypair,
    load_sealing_key,
    load_signing_key,
    public_raw,
    unseal,
    write_private_key,
)

__all__ = ["CredentialError", "DepotKeys", "KeyDirectory", "KeysExistError"]

SIGNING_FILE = "command-signing.pem"
SEALING_FILE = "credential-sealing.pem"
RETIRED_DIR = "retired"  # next to the current sealing key: where from_files finds old ones
_RETIRED_SIGNING = "command-signing.pub"
_RETIRED_SEALING = "credential-sealing.pem"
_STAMP = re.compile(r"(\d{8}T\d{6}Z)(?:\.([2-9]|[1-9]\d{1,5}))?")
_RETIRED_NAME = re.compile(
    rf"(?P<stamp>{_STAMP.pattern})-(?P<what>{re.escape(_RETIRED_SIGNING)}|"
    rf"{re.escape(_RETIRED_SEALING)})"
)


class CredentialError(DepotError):
    """A sealed pickup credential that none of the depot's sealing keys opens, or that opens to
    something that is not a credential."""


@dataclass
class DepotKeys:
    """The depot's signing key (or None: commands cannot be sent) and its sealing keys."""

    signing: Any = None  # an Ed25519PrivateKey
    sealing: list[Any] = field(default_factory=list)  # X25519PrivateKeys, newest first

    @classmethod
    def from_pem(cls, signing: bytes | None, sealing: Sequence[bytes] = ()) -> DepotKeys:
        """Keys from PEM bytes; a PEM of the wrong kind is a DepotError naming which."""
        try:
            signer = load_signing_key(signing) if signing is not None else None
        except (SigningKeyError, ValueError) as exc:
            raise DepotError(
                f"the command-signing key is not an Ed25519 private key: {exc}"
            ) from exc
        openers = []
        for pem in sealing:
            try:
                openers.append(load_sealing_key(pem))
            except (SigningKeyError, ValueError) as exc:
                raise DepotError(
                    f"a credential-sealing key is not an X25519 private key: {exc}"
                ) from exc
        return cls(signer, openers)

    @classmethod
    def from_files(cls, signing: Path | None, sealing: Path | None) -> DepotKeys:
        """The keys named in depot.toml (either may be absent), and the old sealing keys kept
        in retired/ next to the sealing key, newest first after the current one.

        A file that cannot be read or is not the right kind of key is a DepotError naming it.
        """
        signer = None
        if signing is not None:
            signer = _load(signing, lambda pem: cls.from_pem(pem).signing)
        openers: list[Any] = []
        if sealing is not None:
            retired = _retired_keys(sealing.parent / RETIRED_DIR)
            for path in [sealing, *(r.sealing_key for r in retired if r.sealing_key)]:
                openers.extend(_load(path, lambda pem: cls.from_pem(None, [pem]).sealing))
        return cls(signer, openers)

    def open_credential(self, sealed: str, *, locker: str, parcel: str) -> dict[str, str]:
        """The code and QR token `locker` sealed for `parcel`, opened with whichever of the
        depot's sealing keys it was sealed to."""
        if not self.sealing:
            raise CredentialError("the depot has no credential-sealing key (depot.sealing_key)")
        bound = associated_data(PICKUP_CREDENTIAL_PURPOSE, locker, parcel)
        for key in self.sealing:
            try:
                plain = unseal(key, sealed, bound)
            except SealError:
                continue
            try:
                doc = json.loads(plain)
            except ValueError:
                raise CredentialError(f"{locker}'s credential for {parcel} is not JSON") from None
            if not isinstance(doc, dict) or not {"code", "qr"} <= doc.keys():
                raise CredentialError(f"{locker}'s credential for {parcel} lacks a code or QR")
            return {str(k): str(v) for k, v in doc.items()}
        raise CredentialError(
            f"{locker}'s credential for {parcel} opens with none of the depot's "
            f"{len(self.sealing)} sealing key(s)"
        )


def _load(path: Path, parse: Any) -> Any:
    """parse(the bytes of `path`), every failure one DepotError line naming the file."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise DepotError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        return parse(pem)
    except DepotError as exc:
        raise DepotError(f"{path}: {exc}") from None


class KeysExistError(DepotError):
    """The key directory already holds keys, and the caller did not ask to rotate them."""


@dataclass(frozen=True)
class _RetiredKeys:
    """What one rotation left in retired/: the old command key's public half (None once it is
    retired) and the old sealing key's file (None once it is dropped)."""

    stamp: str
    command_key: bytes | None
    sealing_key: Path | None


def _stamp_order(stamp: str) -> tuple[str, int]:
    match = _STAMP.fullmatch(stamp)
    assert match is not None  # only called on names _RETIRED_NAME matched
    return match.group(1), int(match.group(2) or 1)


def _retired_keys(retired: Path) -> list[_RetiredKeys]:
    """Every rotation with something left in `retired`, newest first (none: no directory)."""
    try:
        names = [entry.name for entry in os.scandir(retired) if entry.is_file()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DepotError(f"cannot list the retired keys in {retired}: {exc.strerror}") from None
    found: dict[str, dict[str, Path]] = {}
    for name in names:
        match = _RETIRED_NAME.fullmatch(name)
        if match is not None:
            found.setdefault(match["stamp"], {})[match["what"]] = retired / name
    result = []
    for stamp in sorted(found, key=_stamp_order, reverse=True):
        files = found[stamp]
        command_key = None
        if _RETIRED_SIGNING in files:
            path = files[_RETIRED_SIGNING]
            command_key = _load(path, _public_key_text)
        result.append(_RetiredKeys(stamp, command_key, files.get(_RETIRED_SEALING)))
    return result


def _public_key_text(text: bytes) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DepotError("not a base64 public key") from None
    if len(raw) != 32:
        raise DepotError(f"a public key is 32 bytes, this one {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write_new(path: Path, data: bytes) -> None:
    """Write `path` (owner-only, durably) only if it does not exist: FileExistsError if it
    does, even when another process creates it at the same moment (a link never replaces)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_private_key(tmp, data)
    try:
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class KeyDirectory:
    """The depot's key directory: make keys once, rotate them, retire old ones, and say what
    lockers must be configured with (`locker_config`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signing = path / SIGNING_FILE
        self.sealing = path / SEALING_FILE
        self.retired = path / RETIRED_DIR

    def create(self) -> None:
        """The first keys; KeysExistError (nothing touched) if either key file exists."""
        present = [p for p in (self.signing, self.sealing) if p.exists()]
        if present:
            raise KeysExistError(f"keys exist in {self.path}")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_new(self.signing, generate_keypair()[0])
            _write_new(self.sealing, generate_sealing_keypair()[0])
        except FileExistsError:  # another keygen made them between the check and now
            raise KeysExistError(f"keys exist in {self.path}") from None

    def rotate(self, now: datetime | None = None) -> str | None:
        """New current keys; the old pair is kept in retired/ under the returned stamp (None:
        there were no keys, so these are the first). Every old file is read and checked before
        anything is written, and stored before the current key is replaced."""
        def sealing_pem(pem: bytes) -> bytes:
            DepotKeys.from_pem(None, [pem])  # only to refuse a file that is not a sealing key
            return pem

        old_signing = self._current(self.signing, lambda pem: DepotKeys.from_pem(pem).signing)
        old_sealing = self._current(self.sealing, sealing_pem)
        if old_signing is None and old_sealing is None:
            self.create()
            return None
        self.retired.mkdir(mode=0o700, exist_ok=True)
        base = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        stamp, n = base, 1
        while any(self.retired.glob(f"{stamp}-*")):
            n += 1
            stamp = f"{base}.{n}"
        try:
            if old_signing is not None:
                text = _b64(public_raw(old_signing)) + "\n"
                _write_new(self.retired / f"{stamp}-{_RETIRED_SIGNING}", text.encode())
            if old_sealing is not None:
                _write_new(self.retired / f"{stamp}-{_RETIRED_SEALING}", old_sealing)
        except FileExistsError:
            raise DepotError(f"another keygen is rotating the keys in {self.path}") from None
        write_private_key(self.signing, generate_keypair()[0])
        write_private_key(self.sealing, generate_sealing_keypair()[0])
        return stamp

    def retire(self, stamp: str, *, drop_sealing_key: bool = False) -> None:
        """Stop listing the command key rotated away at `stamp` for lockers; with
        `drop_sealing_key` also delete that rotation's sealing key, after which a credential
        a locker sealed under it can never be opened."""
        retired = {r.stamp: r for r in _retired_keys(self.retired)}
        if stamp not in retired:
            known = ", ".join(retired) or "none"
            raise DepotError(f"no retired keys {stamp!r} in {self.retired} (there are: {known})")
        names = [f"{stamp}-{_RETIRED_SIGNING}"]
        if drop_sealing_key:
            names.append(f"{stamp}-{_RETIRED_SEALING}")
        for name in names:
            try:
                (self.retired / name).unlink()
            except FileNotFoundError:
                pass  # retired (or dropped) before: retiring twice is no mistake
            except OSError as exc:
                raise DepotError(f"cannot delete {self.retired / name}: {exc.strerror}") from None
        # Not fsync'd: a deletion a power cut undoes lists a key again; run --retire again.

    def report(self) -> dict[str, Any]:
        """The key files, what is still kept of every rotation (newest first), and the
        [depot] section lockers need: the current command key then every old one not yet
        retired, and the current sealing key."""
        keys = DepotKeys.from_files(self.signing, self.sealing)
        retired = _retired_keys(self.retired)
        command_keys = [_b64(public_raw(keys.signing))]
        for old in retired:
            if old.command_key is not None and _b64(old.command_key) not in command_keys:
                command_keys.append(_b64(old.command_key))
        return {
            "command_signing_key": str(self.signing),
            "credential_sealing_key": str(self.sealing),
            "retired": [
                {
                    "stamp": old.stamp,
                    "command_key": _b64(old.command_key) if old.command_key else None,
                    "sealing_key": str(old.sealing_key) if old.sealing_key else None,
                }
                for old in retired
            ],
            "locker_config": {
                "depot": {
                    "command_keys": command_keys,
                    "sealing_key": _b64(public_raw(keys.sealing[0])),
                }
            },
        }

    @staticmethod
    def _current(path: Path, parse: Any) -> Any:
        if not path.exists():
            return None
        return _load(path, parse)
