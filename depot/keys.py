"""The depot's private keys: the one that signs locker commands, the ones that open credentials.

Owns loading the depot's key files and the two things done with them, so no other module reads
a PEM or tries keys in turn: signing a command (`signing`) and opening a pickup credential a
locker sealed to the depot (`open_credential`). A locker seals with the one public sealing key
in its configuration; after a rotation, credentials sealed under an older key are still in
lockers, so every sealing key the depot still holds is tried, newest first.

Must never: log or return a secret anywhere but to its caller, or guess which key sealed a
credential from anything but whether it opens (the AEAD tag says so).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depot.errors import DepotError
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    SealError,
    SigningKeyError,
    associated_data,
    load_sealing_key,
    load_signing_key,
    unseal,
)

__all__ = ["CredentialError", "DepotKeys"]


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
        """The keys named in depot.toml (either may be absent); an unreadable file is a
        DepotError naming it."""

        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise DepotError(f"cannot read the {what} {path}: {exc.strerror}") from None

        seal = read(sealing, "credential-sealing key")
        return cls.from_pem(read(signing, "command-signing key"), [seal] if seal else [])

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
