"""Depot-signed commands (every way to refuse one) and secrets sealed for the depot."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.errors import SyncError
from sync.signing import (
    MAX_CLOCK_SKEW_S,
    MAX_COMMAND_BYTES,
    MAX_LIFETIME_S,
    CommandRejected,
    CommandVerifier,
    MemoryReplayStore,
    ReplayStoreError,
    SealError,
    SigningKeyError,
    SqliteReplayStore,
    canonical_json,
    generate_keypair,
    generate_sealing_keypair,
    key_fingerprint,
    load_sealing_key,
    load_signing_key,
    public_raw,
    seal,
    sign_command,
    unseal,
    write_private_key,
)

NOW = 1_700_000_000.0
LOCKER = "locker-7"
REASONS = {
    "malformed",
    "unsigned",
    "bad_signature",
    "wrong_target",
    "lifetime_too_long",
    "expired",
    "not_yet_valid",
    "replayed",
}

_PEM, _PUBLIC = generate_keypair()
KEY = load_signing_key(_PEM)


def _verifier(store: Any | None = None, keys: list[bytes] | None = None) -> CommandVerifier:
    return CommandVerifier(
        [_PUBLIC] if keys is None else keys,
        LOCKER,
        seen=MemoryReplayStore() if store is None else store,
    )


def _open(ttl_s: float = 60.0, now: float = NOW, **kw: Any) -> bytes:
    return sign_command(
        KEY,
        target=kw.pop("target", LOCKER),
        action="open",
        args=kw.pop("args", {"compartment": "A1"}),
        ttl_s=ttl_s,
        now=now,
        **kw,
    )


def _hand_signed(fields: dict[str, Any], key: Ed25519PrivateKey = KEY) -> bytes:
    """An envelope the depot's sign_command() would refuse to make, signed anyway."""
    sig = base64.b64encode(key.sign(canonical_json(fields))).decode()
    return canonical_json({**fields, "sig": sig})


def _rejected(verifier: CommandVerifier, payload: bytes, now: float = NOW) -> CommandRejected:
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(payload, now)
    assert caught.value.reason in REASONS
    assert isinstance(caught.value, SyncError)
    return caught.value


# --- accepted ------------------------------------------------------------------------------


def test_a_signed_command_verifies() -> None:
    payload = _open(args={"compartment": "A1", "why": "customer called"})
    doc = json.loads(payload)
    assert set(doc) == {"v", "id", "target", "action", "args", "issued_at", "expires_at", "sig"}
    assert payload == canonical_json(doc)
    cmd = _verifier().verify(payload, NOW + 1)
    assert (cmd.target, cmd.action) == (LOCKER, "open")
    assert cmd.args == {"compartment": "A1", "why": "customer called"}
    assert (cmd.issued_at, cmd.expires_at) == (NOW, NOW + 60)
    assert cmd.id == doc["id"] and len(cmd.id) == 32
    assert cmd.signer == key_fingerprint(_PUBLIC)


def test_every_old_and_new_key_in_a_rotation_is_trusted() -> None:
    new_pem, new_public = generate_keypair()
    verifier = _verifier(keys=[_PUBLIC, new_public])
    verifier.verify(_open(), NOW)
    cmd = verifier.verify(
        sign_command(
            load_signing_key(new_pem), target=LOCKER, action="x", args={}, ttl_s=5, now=NOW
        ),
        NOW,
    )
    assert cmd.signer == key_fingerprint(new_public)


def test_the_clock_skew_is_tolerated_both_ways() -> None:
    verifier = _verifier()
    verifier.verify(_open(), NOW - MAX_CLOCK_SKEW_S + 1)  # device clock behind the depot
    verifier.verify(_open(), NOW + 60 + MAX_CLOCK_SKEW_S - 1)  # device clock ahead


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    )
)
def test_any_json_arguments_survive_signing(args: dict[str, Any]) -> None:
    cmd = _verifier().verify(_open(args=args), NOW)
    assert canonical_json(cmd.args) == canonical_json(args)


# --- refused: one test per reason ----------------------------------------------------------


def test_flipping_a_byte_of_the_arguments_breaks_the_signature() -> None:
    payload = _open()
    tampered = payload.replace(b'"compartment":"A1"', b'"compartment":"A2"')
    assert tampered != payload
    assert _rejected(_verifier(), tampered).reason == "bad_signature"


def test_a_stripped_signature_is_unsigned() -> None:
    doc = json.loads(_open())
    del doc["sig"]
    rejected = _rejected(_verifier(), canonical_json(doc))
    assert rejected.reason == "unsigned"
    assert rejected.command_id == doc["id"]


def test_another_key_is_a_bad_signature() -> None:
    other = Ed25519PrivateKey.generate()
    payload = sign_command(other, target=LOCKER, action="open", args={}, ttl_s=60, now=NOW)
    assert _rejected(_verifier(), payload).reason == "bad_signature"


def test_a_signature_that_is_not_base64_is_a_bad_signature() -> None:
    doc = json.loads(_open())
    doc["sig"] = "!!!"
    assert _rejected(_verifier(), canonical_json(doc)).reason == "bad_signature"


def test_a_device_without_trusted_keys_refuses_everything() -> None:
    assert _rejected(_verifier(keys=[]), _open()).reason == "bad_signature"


def test_a_command_for_another_locker_is_refused() -> None:
    assert _rejected(_verifier(), _open(target="locker-8")).reason == "wrong_target"


def test_an_expired_command_is_refused() -> None:
    rejected = _rejected(_verifier(), _open(ttl_s=60), NOW + 60 + MAX_CLOCK_SKEW_S + 1)
    assert rejected.reason == "expired"


def test_a_command_from_the_future_beyond_the_skew_is_refused() -> None:
    rejected = _rejected(_verifier(), _open(now=NOW + MAX_CLOCK_SKEW_S + 1), NOW)
    assert rejected.reason == "not_yet_valid"


def test_too_long_a_lifetime_is_refused() -> None:
    fields = {
        "v": 1,
        "id": "f" * 32,
        "target": LOCKER,
        "action": "open",
        "args": {},
        "issued_at": NOW,
        "expires_at": NOW + MAX_LIFETIME_S + 1,
    }
    assert _rejected(_verifier(), _hand_signed(fields)).reason == "lifetime_too_long"
    with pytest.raises(ValueError):
        _open(ttl_s=MAX_LIFETIME_S + 1)


def test_a_replayed_command_is_refused() -> None:
    verifier = _verifier()
    payload = _open()
    verifier.verify(payload, NOW)
    rejected = _rejected(verifier, payload, NOW + 1)
    assert rejected.reason == "replayed"
    # The depot re-sending under the same id is the same command, also refused.
    again = _open(command_id=rejected.command_id)
    assert _rejected(verifier, again, NOW + 2).reason == "replayed"


def test_a_replay_after_a_power_cut_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    payload = _open()
    with SqliteReplayStore(path) as store:
        _verifier(store).verify(payload, NOW)
    with SqliteReplayStore(path) as reopened:
        assert _rejected(_verifier(reopened), payload, NOW + 5).reason == "replayed"


def test_a_clock_set_back_by_a_power_cut_cannot_revive_old_commands(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    old = _open(ttl_s=60)  # captured by someone, never delivered
    stale_but_seen = _open(ttl_s=60, args={"compartment": "B2"})
    later = _open(ttl_s=60, now=NOW + 3600)
    with SqliteReplayStore(path) as store:
        verifier = _verifier(store)
        verifier.verify(stale_but_seen, NOW)
        verifier.verify(later, NOW + 3600)
        assert store.count() == 1  # the first id was pruned: the depot's own time passed it
    # After the power cut the board's clock restarts an hour behind, inside both windows.
    with SqliteReplayStore(path) as reopened:
        verifier = _verifier(reopened)
        assert _rejected(verifier, old, NOW + 10).reason == "expired"
        assert _rejected(verifier, stale_but_seen, NOW + 10).reason == "expired"
        assert _rejected(verifier, later, NOW + 3600).reason == "replayed"


# --- refused: malformed --------------------------------------------------------------------


def _fields(**change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_open())
    del doc["sig"]
    doc.update(change)
    return doc


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"{}",
        b'{"v": NaN}',
        b"[" * 100_000,
        b'{"a": 1e999}',
        b"1" * 5000,
        b" " * (MAX_COMMAND_BYTES + 1),
        canonical_json({**_fields(), "extra": 1}),
        canonical_json(_fields(v=2)),
        canonical_json(_fields(v=True)),
        canonical_json(_fields(id="short")),
        canonical_json(_fields(args=[1])),
        canonical_json(_fields(issued_at="now")),
        canonical_json(_fields(expires_at=NOW - 1)),
        canonical_json(_fields(target="")),
    ],
)
def test_malformed_envelopes(payload: bytes) -> None:
    assert _rejected(_verifier(), payload).reason == "malformed"


def test_duplicate_keys_are_malformed_even_when_signed() -> None:
    payload = _open()
    doubled = payload[:-1] + b',"action":"open"}'
    assert _rejected(_verifier(), doubled).reason == "malformed"


def test_signed_fields_that_are_not_the_envelope_are_malformed() -> None:
    assert _rejected(_verifier(), _hand_signed(_fields(v=2))).reason == "malformed"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_are_only_ever_malformed(payload: bytes) -> None:
    assert _rejected(_verifier(), payload).reason == "malformed"


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "target", "action", "args", "issued_at", "expires_at", "sig"])
        | st.text(max_size=4),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=40)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        max_size=9,
    )
)
def test_random_envelopes_are_only_ever_refused(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc).encode()
    _rejected(_verifier(), payload)


# --- replay stores -------------------------------------------------------------------------


def test_sqlite_replay_store_refuses_a_file_it_does_not_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(foreign)
    newer = tmp_path / "newer.db"
    with SqliteReplayStore(newer):
        pass
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(newer)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReplayStoreError):
        SqliteReplayStore(garbage)
    assert garbage.read_bytes() == b"this is not sqlite" * 100  # kept for a person


def test_the_memory_store_prunes_by_the_depot_floor() -> None:
    store = MemoryReplayStore()
    store.remember("a" * 32, NOW + 60)
    store.raise_floor(NOW + 60 + MAX_CLOCK_SKEW_S)
    assert store.seen("a" * 32)
    store.raise_floor(NOW + 61 + MAX_CLOCK_SKEW_S)
    assert not store.seen("a" * 32) and store.count() == 0
    store.raise_floor(NOW)  # never goes down
    assert store.floor() == NOW + 61 + MAX_CLOCK_SKEW_S


# --- keys ----------------------------------------------------------------------------------


def test_keys_round_trip_and_kinds_are_not_mixed_up(tmp_path: Path) -> None:
    sealing_pem, sealing_public = generate_sealing_keypair()
    assert public_raw(load_sealing_key(sealing_pem)) == sealing_public
    assert public_raw(KEY) == _PUBLIC
    with pytest.raises(SigningKeyError):
        load_signing_key(sealing_pem)
    with pytest.raises(SigningKeyError):
        load_sealing_key(_PEM)
    with pytest.raises(SigningKeyError):
        load_signing_key(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyError):
        CommandVerifier([b"short"], LOCKER, seen=MemoryReplayStore())
    path = tmp_path / "depot-command.pem"
    write_private_key(path, _PEM)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_raw(load_signing_key(path.read_bytes())) == _PUBLIC


# --- sealed secrets ------------------------------------------------------------------------

_SEAL_PEM, _SEAL_PUBLIC = generate_sealing_keypair()
SEAL_KEY = load_sealing_key(_SEAL_PEM)


@settings(max_examples=50)
@given(st.binary(max_size=200), st.binary(max_size=50))
def test_seal_round_trip(plaintext: bytes, associated: bytes) -> None:
    sealed = seal(_SEAL_PUBLIC, plaintext, associated)
    json.dumps(sealed)
    assert unseal(SEAL_KEY, sealed, associated) == plaintext


def test_sealing_twice_gives_different_texts() -> None:
    assert seal(_SEAL_PUBLIC, b"123456", b"ad") != seal(_SEAL_PUBLIC, b"123456", b"ad")


def _flip(sealed: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("index", [0, 1, 20, 33, 40, -1])
def test_tampered_ciphertext_does_not_open(index: int) -> None:
    sealed = seal(_SEAL_PUBLIC, b'{"code":"123456"}', b"ad")
    with pytest.raises(SealError):
        unseal(SEAL_KEY, _flip(sealed, index), b"ad")


def test_wrong_key_or_context_does_not_open() -> None:
    sealed = seal(_SEAL_PUBLIC, b"secret", b"locker-7|RR1")
    other = load_sealing_key(generate_sealing_keypair()[0])
    with pytest.raises(SealError):
        unseal(other, sealed, b"locker-7|RR1")
    with pytest.raises(SealError):
        unseal(SEAL_KEY, sealed, b"locker-7|RR2")


@pytest.mark.parametrize("text", ["", "abc", "not base64 at all!", "é", "AQ"])
def test_garbage_does_not_open(text: str) -> None:
    with pytest.raises(SealError):
        unseal(SEAL_KEY, text, b"")


def test_an_unusable_recipient_key_is_refused() -> None:
    with pytest.raises(SealError):
        seal(b"\x00" * 32, b"secret", b"")  # a low-order point: shared secret all zeros
    with pytest.raises(SealError):
        seal(b"\x01" * 31, b"secret", b"")
