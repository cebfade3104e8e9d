"""Depot-signed commands and secrets sealed for the depot: the cryptography both ends share.

Owns: the signed command envelope (Ed25519 over canonical JSON), its verification on a device
(signature, target, lifetime, clock window, replay), the durable memory of commands already
carried out, and sealing a secret to the depot's X25519 key (ephemeral X25519, HKDF-SHA256,
ChaCha20-Poly1305) so that only the depot can read it.
Must never: act on, or let a caller act on, a command that did not pass every check; forget a
command id while that command could still be accepted; seal or unseal without authenticating
the associated data; log, repr or keep a plaintext it seals.

Sync never imports edge: the device decides what a command means, this module only decides
whether the depot really sent it, to this device, recently, and only once.

Envelope (version 1), sent as the canonical JSON text of all its fields::

    {"action": "open", "args": {...}, "expires_at": 1700000060.0, "id": "<32 hex>",
     "issued_at": 1700000000.0, "sig": "<base64 Ed25519>", "target": "locker-7", "v": 1}

`sig` signs the canonical JSON (sorted keys, compact separators, UTF-8) of every other field.
Times are wall-clock seconds of the depot. A device's wall clock may be wrong (no real-time
clock, NTP not yet reached), so it is trusted only within MAX_CLOCK_SKEW_S, and the newest
depot-signed issue time a device accepted is kept as a floor that its own clock cannot undo.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sync.durable import fsync_dir, write_atomically
from sync.errors import SyncError

ENVELOPE_VERSION = 1
# A locker without a real-time clock may be this far off the depot's clock and still take
# commands. Larger lets a stale command live that much longer; smaller strands lockers whose
# clock drifted between NTP syncs. Fixed in code: the replay store prunes with the same value.
MAX_CLOCK_SKEW_S = 120.0
# No command may be valid for longer than this (expires_at - issued_at), so a leaked command,
# or one the depot signed with a wrong ttl, cannot open doors for days.
MAX_LIFETIME_S = 24 * 3600.0
# Commands are small (an action and a few arguments); anything larger is refused unread.
MAX_COMMAND_BYTES = 64 * 1024

RejectReason = Literal[
    "malformed",
    "unsigned",
    "bad_signature",
    "wrong_target",
    "lifetime_too_long",
    "expired",
    "not_yet_valid",
    "replayed",
]

_ENVELOPE_FIELDS = frozenset({"v", "id", "target", "action", "args", "issued_at", "expires_at"})
_COMMAND_ID = re.compile(r"[0-9A-Za-z_-]{8,64}")

_SEAL_VERSION = 1
_SEAL_INFO = b"lastmile-seal-v1"
_X25519_BYTES = 32
_TAG_BYTES = 16
_NONCE_BYTES = 12

# Seal purpose shared by the locker (which seals) and the depot (which unseals): the pickup
# code and QR token of one parcel, bound to the locker and the parcel they belong to.
PICKUP_CREDENTIAL_PURPOSE = "pickup-credential"


class CommandRejected(SyncError):
    """A command was refused; `reason` is one machine-readable word, the message is for people.

    `command_id` is set when the envelope was readable enough to carry one, so the device can
    journal which command it refused.
    """

    def __init__(self, reason: RejectReason, message: str, command_id: str | None = None):
        super().__init__(message)
        self.reason: RejectReason = reason
        self.command_id = command_id


class SealError(SyncError):
    """A sealed secret cannot be opened: tampered, truncated, wrong key or wrong context.

    Deliberately one error for all of these: telling them apart would help only an attacker.
    """


class SigningKeyError(SyncError):
    """Key material is not a key of the expected kind (a config or key-file mistake)."""


class ReplayStoreError(SyncError):
    """The durable memory of seen commands cannot be read or written; refuse commands."""


# --- keys --------------------------------------------------------------------------------


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """The 32 raw public-key bytes: what device configuration files carry (base64)."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 command-signing key for the depot: (private PKCS#8 PEM, public raw)."""
    key = Ed25519PrivateKey.generate()
    return _private_pem(key), public_raw(key)


def generate_sealing_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key the depot receives sealed secrets with: (private PEM, public raw)."""
    key = X25519PrivateKey.generate()
    return _private_pem(key), public_raw(key)


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    """The depot's Ed25519 signing key from its PEM text; refuses any other kind of key."""
    key = _load_private(pem)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_sealing_key(pem: bytes) -> X25519PrivateKey:
    """The depot's X25519 unsealing key from its PEM text; refuses any other kind of key."""
    key = _load_private(pem)
    if not isinstance(key, X25519PrivateKey):
        raise SigningKeyError(f"expected an X25519 private key, got {type(key).__name__}")
    return key


def _load_private(pem: bytes) -> object:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # The exception text never quotes the key material, so it is safe to pass on.
        raise SigningKeyError(f"not an unencrypted PEM private key: {exc}") from None


def write_private_key(path: str | os.PathLike[str], pem: bytes) -> None:
    """Write a private key readable by its owner only, atomically, and durably.

    Created 0600 from the first byte (never chmod'ed after the fact), renamed into place, and
    the directory fsync'd, so a power cut leaves either the old key or the new one.
    """
    write_atomically(path, pem, mode=0o600)


def key_fingerprint(public: bytes) -> str:
    """A short, stable name for a public key in logs and events (not a secret)."""
    return hashlib.sha256(public).hexdigest()[:16]


# --- canonical JSON ------------------------------------------------------------------------


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The one byte string a signature covers: sorted keys, compact, UTF-8, no NaN/Infinity.

    Raises ValueError (or TypeError) for what JSON cannot carry exactly.
    """
    text = json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different duplicates would see different commands under one
    # signature; a duplicate key is never legitimate in an envelope.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return doc


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- signed commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCommand:
    """A command that passed every check; the only thing a device may act on."""

    id: str
    target: str
    action: str
    args: Mapping[str, Any]
    issued_at: float
    expires_at: float
    signer: str  # key_fingerprint() of the trusted key that verified it


def sign_command(
    private_key: Ed25519PrivateKey,
    *,
    target: str,
    action: str,
    args: Mapping[str, Any],
    ttl_s: float,
    now: float,
    command_id: str | None = None,
) -> bytes:
    """The depot's side: a signed envelope for one device, valid for `ttl_s` from `now`.

    Pass `command_id` to re-send the same command (the device carries it out at most once);
    by default every call is a new command. Raises ValueError for what a device would refuse
    anyway (no target, ttl beyond MAX_LIFETIME_S, arguments JSON cannot carry).
    """
    if not target or not action:
        raise ValueError("a command needs a target device and an action")
    if not (math.isfinite(now) and math.isfinite(ttl_s)) or not 0 < ttl_s <= MAX_LIFETIME_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_LIFETIME_S}] and now finite")
    cid = uuid.uuid4().hex if command_id is None else command_id
    if not _COMMAND_ID.fullmatch(cid):
        raise ValueError("command_id must be 8-64 characters of [0-9A-Za-z_-]")
    fields: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": cid,
        "target": target,
        "action": action,
        "args": dict(args),
        "issued_at": float(now),
        "expires_at": float(now) + float(ttl_s),
    }
    signature = private_key.sign(canonical_json(fields))
    return canonical_json({**fields, "sig": base64.b64encode(signature).decode("ascii")})


class ReplayStore(Protocol):
    """Where a device remembers the ids of commands it accepted, durably, until they expire."""

    def seen(self, command_id: str) -> bool: ...

    def remember(self, command_id: str, expires_at: float) -> None: ...


@runtime_checkable
class DepotTimeFloor(Protocol):
    """Optional for a ReplayStore: keeps the newest depot-signed issue time ever accepted.

    A device's own wall clock may go backwards (a power cut on a board without a real-time
    clock restores an old time until NTP answers). The depot's signed issue times cannot be
    undone that way, so a command that had expired by a time the depot itself signed is
    refused whatever the local clock says, and a store may forget ids below that floor.
    """

    def floor(self) -> float: ...

    def raise_floor(self, issued_at: float) -> None: ...


class CommandVerifier:
    """A device's gate for depot commands: only what the depot signed, for us, now, once.

    Checks in this order, the first failure deciding the reason: a readable envelope
    (malformed), a signature present (unsigned) and made by a trusted key (bad_signature),
    addressed to this device (wrong_target), a lifetime within MAX_LIFETIME_S
    (lifetime_too_long), issued no later than now + skew (not_yet_valid), expiring no earlier
    than now - skew and than the depot time floor - skew (expired), and never accepted before
    (replayed). The id is stored durably before `verify` returns, so a command whose effect
    is interrupted by a power cut is not carried out twice.

    With no trusted keys every command is refused (bad_signature): a device that was never
    given the depot's key fails closed. One verifier per device process: seen/remember run
    under a lock so two threads cannot both accept one command.
    """

    def __init__(
        self, trusted_public_keys: Sequence[bytes], target: str, *, seen: ReplayStore
    ) -> None:
        if not target:
            raise ValueError("a verifier needs the id of the device it guards")
        self.target = target
        self._keys: list[tuple[str, Ed25519PublicKey]] = []
        for raw in trusted_public_keys:
            try:
                key = Ed25519PublicKey.from_public_bytes(bytes(raw))
            except ValueError as exc:
                raise SigningKeyError(f"a trusted command key is not Ed25519: {exc}") from None
            self._keys.append((key_fingerprint(bytes(raw)), key))
        self._store = seen
        self._lock = threading.Lock()
        # Without a durable floor the verifier still keeps one for the life of the process.
        self._floor = seen.floor() if isinstance(seen, DepotTimeFloor) else 0.0

    def verify(self, payload: bytes, now: float) -> VerifiedCommand:
        """Return the command if it may be carried out now; raise CommandRejected otherwise.

        `now` is this device's wall clock in seconds (time.time()). Errors of the replay
        store propagate as they are: the command is then not accepted either.
        """
        if not math.isfinite(now):
            raise ValueError("now must be a finite wall-clock time")
        doc = _parse_envelope(payload)
        sig_text = doc.pop("sig", None)
        cmd = _envelope_fields(doc)
        if sig_text is None:
            raise CommandRejected("unsigned", f"command {cmd.id} carries no signature", cmd.id)
        if not isinstance(sig_text, str):
            raise CommandRejected("malformed", f"command {cmd.id}: sig is not text", cmd.id)
        signer = self._signer(canonical_json(doc), sig_text)
        if signer is None:
            raise CommandRejected(
                "bad_signature",
                f"command {cmd.id} is not signed by a trusted depot key "
                f"({len(self._keys)} trusted)",
                cmd.id,
            )
        cmd = dataclasses.replace(cmd, signer=signer)
        self._check_policy(cmd, now)
        with self._lock:
            if self._floor > cmd.expires_at + MAX_CLOCK_SKEW_S:
                raise CommandRejected(
                    "expired",
                    f"command {cmd.id} expired {self._floor - cmd.expires_at:.0f} s before a "
                    "later command the depot signed: this device's clock is behind",
                    cmd.id,
                )
            if self._store.seen(cmd.id):
                raise CommandRejected("replayed", f"command {cmd.id} was already accepted", cmd.id)
            self._store.remember(cmd.id, cmd.expires_at)
            if cmd.issued_at > self._floor:
                self._floor = cmd.issued_at
                if isinstance(self._store, DepotTimeFloor):
                    self._store.raise_floor(cmd.issued_at)
        return cmd

    def _signer(self, message: bytes, sig_text: str) -> str | None:
        try:
            signature = base64.b64decode(sig_text, validate=True)
        except ValueError:
            return None
        if len(signature) != 64:
            return None
        for fingerprint, key in self._keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            return fingerprint
        return None

    def _check_policy(self, cmd: VerifiedCommand, now: float) -> None:
        if cmd.target != self.target:
            raise CommandRejected(
                "wrong_target",
                f"command {cmd.id} is for {cmd.target!r}, not {self.target!r}",
                cmd.id,
            )
        lifetime = cmd.expires_at - cmd.issued_at
        if lifetime > MAX_LIFETIME_S:
            raise CommandRejected(
                "lifetime_too_long",
                f"command {cmd.id} would be valid for {lifetime:.0f} s; "
                f"at most {MAX_LIFETIME_S:.0f} s is allowed",
                cmd.id,
            )
        if cmd.issued_at > now + MAX_CLOCK_SKEW_S:
            raise CommandRejected(
                "not_yet_valid",
                f"command {cmd.id} is issued {cmd.issued_at - now:.0f} s in this device's "
                f"future (allowed skew {MAX_CLOCK_SKEW_S:.0f} s): is the device clock behind?",
                cmd.id,
            )
        if now > cmd.expires_at + MAX_CLOCK_SKEW_S:
            raise CommandRejected(
                "expired",
                f"command {cmd.id} expired {now - cmd.expires_at:.0f} s ago "
                f"(allowed skew {MAX_CLOCK_SKEW_S:.0f} s)",
                cmd.id,
            )


def _parse_envelope(payload: bytes) -> dict[str, Any]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CommandRejected("malformed", "command payload is not bytes")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected(
            "malformed", f"command payload is {len(payload)} bytes, over {MAX_COMMAND_BYTES}"
        )
    try:
        doc = json.loads(
            bytes(payload).decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_float=_finite_float,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeError are both
        raise CommandRejected("malformed", f"command payload is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandRejected("malformed", "command payload is not a JSON object")
    return doc


def _envelope_fields(doc: dict[str, Any]) -> VerifiedCommand:
    """The envelope's fields, typed; `signer` is empty until a signature has been checked."""
    raw_id = doc.get("id")
    cid = raw_id if isinstance(raw_id, str) and _COMMAND_ID.fullmatch(raw_id) else None

    def bad(what: str) -> CommandRejected:
        return CommandRejected("malformed", f"command {cid or '(no id)'}: {what}", cid)

    if set(doc) != _ENVELOPE_FIELDS:
        missing = sorted(_ENVELOPE_FIELDS - set(doc))
        extra = sorted(set(doc) - _ENVELOPE_FIELDS)
        raise bad(f"fields missing {missing} or unexpected {extra[:5]}")
    if type(doc["v"]) is not int or doc["v"] != ENVELOPE_VERSION:
        raise bad(f"unsupported envelope version {doc['v']!r}")
    if cid is None:
        raise bad("id is not 8-64 characters of [0-9A-Za-z_-]")
    target, action, args = doc["target"], doc["action"], doc["args"]
    if not (isinstance(target, str) and target and isinstance(action, str) and action):
        raise bad("target and action must be non-empty text")
    if not isinstance(args, dict):
        raise bad("args is not an object")
    times = []
    for name in ("issued_at", "expires_at"):
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"{name} is not a number")
        times.append(float(value))
    issued_at, expires_at = times
    if not (math.isfinite(issued_at) and math.isfinite(expires_at)):
        raise bad("times are not finite")
    if expires_at <= issued_at:
        raise bad("expires_at is not after issued_at")
    try:
        canonical_json(doc)  # what JSON cannot carry exactly cannot have been signed
    except (ValueError, TypeError, RecursionError) as exc:
        raise bad(f"not canonical JSON: {exc}") from None
    return VerifiedCommand(cid, target, action, args, issued_at, expires_at, signer="")


# --- replay stores -------------------------------------------------------------------------


class MemoryReplayStore:
    """Seen ids in memory: for tests and for a depot-side dry run, never for a device.

    A device that restarts with this store forgets what it did; use SqliteReplayStore (or a
    table in the device's own journal) there.
    """

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}
        self._floor = 0.0
        self._lock = threading.Lock()

    def seen(self, command_id: str) -> bool:
        with self._lock:
            return command_id in self._ids

    def remember(self, command_id: str, expires_at: float) -> None:
        with self._lock:
            self._ids[command_id] = expires_at

    def floor(self) -> float:
        with self._lock:
            return self._floor

    def raise_floor(self, issued_at: float) -> None:
        with self._lock:
            self._floor = max(self._floor, issued_at)
            for cid in [c for c, e in self._ids.items() if e + MAX_CLOCK_SKEW_S < self._floor]:
                del self._ids[cid]

    def count(self) -> int:
        """Ids remembered now.

        Not __len__: an empty store would be falsy, and `store or default` would silently
        swap it for another one.
        """
        with self._lock:
            return len(self._ids)


_REPLAY_SCHEMA_VERSION = 1
_REPLAY_SCHEMA = (
    "CREATE TABLE seen_commands (id TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta(key, value) VALUES ('floor', '0.0')",
)


class SqliteReplayStore:
    """Seen command ids in their own small SQLite file, durable across power cuts.

    Every remember() is committed and fsync'd (WAL, synchronous=FULL) before it returns, so a
    command that was acted on is refused after any restart. Ids are pruned once they expired
    (plus MAX_CLOCK_SKEW_S) before the depot time floor, never by the local wall clock: a
    clock that jumps ahead and back again must not make the store forget an id that could
    still be accepted. A file that is corrupt, foreign or from newer software is refused
    (ReplayStoreError) and left where it is for a person: without its memory no command can
    be shown to be fresh.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        created = not (self.path.exists() and self.path.stat().st_size > 0)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"cannot open replay store {self.path}: {exc}") from exc
        try:
            self._open(created)
        except sqlite3.Error as exc:
            self._conn.close()
            raise ReplayStoreError(f"replay store {self.path} is unusable: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    def _open(self, created: bool) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ReplayStoreError(f"replay store {self.path} cannot use WAL (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise ReplayStoreError(f"{self.path} holds tables that are not a replay store")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _REPLAY_SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={_REPLAY_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            if created:
                fsync_dir(self.path.parent)
            return
        if version > _REPLAY_SCHEMA_VERSION:
            raise ReplayStoreError(
                f"replay store {self.path} has schema {version}, newer than this software"
            )
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise ReplayStoreError(
                f"replay store {self.path} is corrupt (kept for inspection): {problems[:3]}"
            )

    def seen(self, command_id: str) -> bool:
        with self._lock, self._errors("read"):
            row = self._conn.execute(
                "SELECT 1 FROM seen_commands WHERE id=?", (command_id,)
            ).fetchone()
            return row is not None

    def remember(self, command_id: str, expires_at: float) -> None:
        with self._lock, self._errors("remember a command"):
            self._conn.execute(
                "INSERT OR IGNORE INTO seen_commands(id, expires_at) VALUES (?, ?)",
                (command_id, float(expires_at)),
            )

    def floor(self) -> float:
        with self._lock, self._errors("read the time floor"):
            row = self._conn.execute("SELECT value FROM meta WHERE key='floor'").fetchone()
            return float(row[0]) if row is not None else 0.0

    def raise_floor(self, issued_at: float) -> None:
        with self._lock, self._errors("raise the time floor"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute("SELECT value FROM meta WHERE key='floor'").fetchone()
                current = float(row[0]) if row is not None else 0.0
                if issued_at > current:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES ('floor', ?)",
                        (repr(float(issued_at)),),
                    )
                    self._conn.execute(
                        "DELETE FROM seen_commands WHERE expires_at + ? < ?",
                        (MAX_CLOCK_SKEW_S, float(issued_at)),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    def count(self) -> int:
        """Ids remembered now (not __len__, so an empty store is never falsy)."""
        with self._lock, self._errors("count"):
            return int(self._conn.execute("SELECT count(*) FROM seen_commands").fetchone()[0])

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"replay store {self.path}: cannot {what}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteReplayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- sealed secrets ------------------------------------------------------------------------


def associated_data(purpose: str, *parts: str) -> bytes:
    """Unambiguous context bytes a seal is bound to, e.g. (purpose, locker id, parcel id).

    JSON of the list, so ("a|b", "c") and ("a", "b|c") can never collide.
    """
    return json.dumps(["lastmile-seal-v1", purpose, *parts], separators=(",", ":")).encode()


def _seal_keys(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    # Both public keys go into the derivation (as in HPKE), so a seal is bound to the one
    # recipient key it was made for. The ephemeral key is new for every seal, so the derived
    # key is too, and a nonce derived alongside it is never reused under it.
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=32 + _NONCE_BYTES,
        salt=None,
        info=_SEAL_INFO + ephemeral + recipient,
    ).derive(shared)
    return okm[:32], okm[32:]


def seal(recipient_public_raw: bytes, plaintext: bytes, associated: bytes) -> str:
    """Encrypt `plaintext` so only the holder of the recipient's X25519 key can read it.

    The result is URL-safe base64 text (fits in JSON): version byte, ephemeral public key,
    ChaCha20-Poly1305 ciphertext and tag. `associated` is authenticated, not encrypted: the
    same bytes must be given to unseal(). ChaCha20 rather than AES-GCM because the Raspberry
    Pi's CPUs lack AES instructions, where ChaCha20 is both faster and free of table lookups.
    """
    recipient_public_raw = bytes(recipient_public_raw)
    if len(recipient_public_raw) != _X25519_BYTES:
        raise SealError(f"recipient key must be {_X25519_BYTES} raw bytes")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = public_raw(ephemeral)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public_raw))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise SealError("recipient key is not a usable X25519 public key") from None
    key, nonce = _seal_keys(shared, ephemeral_raw, recipient_public_raw)
    header = bytes([_SEAL_VERSION]) + ephemeral_raw
    body = ChaCha20Poly1305(key).encrypt(nonce, plaintext, header + associated)
    return base64.urlsafe_b64encode(header + body).rstrip(b"=").decode("ascii")


def unseal(recipient_private_key: X25519PrivateKey, sealed: str, associated: bytes) -> bytes:
    """The depot's side of seal(): the plaintext, or SealError if anything does not match."""
    try:
        text = sealed.encode("ascii")
        blob = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (ValueError, AttributeError):
        raise SealError("sealed text is not URL-safe base64") from None
    if len(blob) < 1 + _X25519_BYTES + _TAG_BYTES or blob[0] != _SEAL_VERSION:
        raise SealError("sealed text is truncated or of an unknown version")
    header, body = blob[: 1 + _X25519_BYTES], blob[1 + _X25519_BYTES :]
    ephemeral_raw = header[1:]
    try:
        shared = recipient_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError:
        raise SealError("sealed text carries an unusable ephemeral key") from None
    key, nonce = _seal_keys(shared, ephemeral_raw, public_raw(recipient_private_key))
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, header + associated)
    except InvalidTag:
        raise SealError("sealed text does not open: tampered, wrong key or wrong context") from None


__all__ = [
    "ENVELOPE_VERSION",
    "MAX_CLOCK_SKEW_S",
    "MAX_COMMAND_BYTES",
    "MAX_LIFETIME_S",
    "PICKUP_CREDENTIAL_PURPOSE",
    "CommandRejected",
    "CommandVerifier",
    "DepotTimeFloor",
    "MemoryReplayStore",
    "RejectReason",
    "ReplayStore",
    "ReplayStoreError",
    "SealError",
    "SigningKeyError",
    "SqliteReplayStore",
    "VerifiedCommand",
    "associated_data",
    "canonical_json",
    "generate_keypair",
    "generate_sealing_keypair",
    "key_fingerprint",
    "load_sealing_key",
    "load_signing_key",
    "public_raw",
    "seal",
    "sign_command",
    "unseal",
    "write_private_key",
]
