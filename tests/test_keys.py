"""The depot's keys as an operator handles them: `lastmile depot keygen` never overwrites keys,
`--rotate` keeps the old ones working until `--retire`, and the depot (DepotKeys.from_files)
opens credentials sealed under any sealing key it still holds."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from depot.errors import DepotError
from depot.keys import CredentialError, DepotKeys, KeyDirectory
from edge.credentials import sealed_for_depot
from sync.signing import (
    CommandRejected,
    CommandVerifier,
    MemoryReplayStore,
    load_signing_key,
    public_raw,
    sign_command,
)

ROOT = Path(__file__).resolve().parent.parent
LOCKER = "locker-1"
PARCEL = "RB123456785GB"
CREDENTIAL = {"code": "123456", "qr": "q-token"}


def keygen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", "depot", "keygen", *map(str, args)],
        cwd=ROOT, text=True, capture_output=True, timeout=60, check=False,
    )


def made(*args: str | Path) -> dict[str, Any]:
    """Run keygen, which must succeed, and return what it printed."""
    result = keygen(*args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def locker_depot(doc: dict[str, Any]) -> tuple[list[bytes], bytes]:
    """(command_keys, sealing_key) as a locker reads them from its [depot] section."""
    depot = doc["locker_config"]["depot"]
    return [base64.b64decode(k) for k in depot["command_keys"]], base64.b64decode(
        depot["sealing_key"]
    )


def depot_keys(directory: Path) -> DepotKeys:
    return DepotKeys.from_files(directory / "command-signing.pem",
                                directory / "credential-sealing.pem")


def accepts(command_keys: list[bytes], signing_pem: bytes) -> bool:
    """Whether a locker trusting `command_keys` carries out a command signed with the key."""
    verifier = CommandVerifier(command_keys, LOCKER, seen=MemoryReplayStore())
    now = datetime.now(UTC).timestamp()
    payload = sign_command(load_signing_key(signing_pem), target=LOCKER, action="remote_open",
                           args={"compartment": "A1"}, ttl_s=60, now=now)
    try:
        verifier.verify(payload, now)
    except CommandRejected as rejected:
        assert rejected.reason == "bad_signature"
        return False
    return True


def test_keygen_refuses_to_overwrite_keys_and_touches_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = made("--out", keys)
    before = snapshot(keys)
    assert set(before) == {"command-signing.pem", "credential-sealing.pem"}
    again = keygen("--out", keys)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip().splitlines() == [
        f"lastmile depot keygen: keys exist in {keys}; use --rotate to make new ones "
        "(old ones are kept)"
    ]
    assert snapshot(keys) == before
    # The printed locker config still names the keys on disk.
    command_keys, sealing = locker_depot(first)
    assert accepts(command_keys, before["command-signing.pem"])
    assert public_raw(depot_keys(keys).sealing[0]) == sealing


def test_keygen_refuses_when_only_one_key_is_there(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made("--out", keys)
    (keys / "command-signing.pem").unlink()
    before = snapshot(keys)
    result = keygen("--out", keys)
    assert result.returncode == 1 and "keys exist" in result.stderr
    assert snapshot(keys) == before


def test_rotate_keeps_the_old_keys_until_they_are_retired(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = made("--out", keys)
    old = snapshot(keys)
    old_commands, old_sealing = locker_depot(first)
    # A locker configured before the rotation seals under the old key.
    sealed_old = sealed_for_depot(CREDENTIAL, old_sealing, locker_id=LOCKER, parcel_id=PARCEL)

    rotated = made("--out", keys, "--rotate")
    [entry] = rotated["retired"]
    stamp = entry["stamp"]
    new = snapshot(keys)
    assert new["command-signing.pem"] != old["command-signing.pem"]
    assert new["credential-sealing.pem"] != old["credential-sealing.pem"]
    assert new[f"retired/{stamp}-credential-sealing.pem"] == old["credential-sealing.pem"]
    assert entry["command_key"] == first["locker_config"]["depot"]["command_keys"][0]

    command_keys, sealing = locker_depot(rotated)
    assert command_keys[1:] == old_commands and len(command_keys) == 2
    assert accepts(command_keys, new["command-signing.pem"])
    assert accepts(command_keys, old["command-signing.pem"])  # until retired
    assert not accepts(old_commands, new["command-signing.pem"])  # why lockers need the config

    depot = depot_keys(keys)
    assert public_raw(depot.sealing[0]) == sealing  # the current key comes first
    assert depot.open_credential(sealed_old, locker=LOCKER, parcel=PARCEL) == CREDENTIAL
    sealed_new = sealed_for_depot(CREDENTIAL, sealing, locker_id=LOCKER, parcel_id=PARCEL)
    assert depot.open_credential(sealed_new, locker=LOCKER, parcel=PARCEL) == CREDENTIAL

    # Retiring drops the old command key from the lockers' list, and keeps its sealing key.
    retired = made("--out", keys, "--retire", stamp)
    assert retired["retired"] == [{**entry, "command_key": None}]
    command_keys, _ = locker_depot(retired)
    assert command_keys == [command_keys[0]] and accepts(command_keys, new["command-signing.pem"])
    assert not accepts(command_keys, old["command-signing.pem"])
    assert depot_keys(keys).open_credential(sealed_old, locker=LOCKER, parcel=PARCEL) == CREDENTIAL

    # Dropping the old sealing key is asked for separately; then the old credential is lost.
    dropped = made("--out", keys, "--retire", stamp, "--drop-sealing-key")
    assert dropped["retired"] == []
    assert set(snapshot(keys)) == {"command-signing.pem", "credential-sealing.pem"}
    with pytest.raises(CredentialError, match="opens with none of the depot's 1 sealing key"):
        depot_keys(keys).open_credential(sealed_old, locker=LOCKER, parcel=PARCEL)
    assert depot_keys(keys).open_credential(sealed_new, locker=LOCKER, parcel=PARCEL) == CREDENTIAL


def test_rotations_in_one_second_are_kept_apart_and_tried_newest_first(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.create()
    now = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
    sealing_publics = [public_raw(depot_keys(keys.path).sealing[0])]
    stamps = []
    for _ in range(11):  # past .9, so .10 must sort after .9, not after the first
        stamps.append(keys.rotate(now))
        sealing_publics.append(public_raw(depot_keys(keys.path).sealing[0]))
    assert stamps[:3] == ["20250301T101500Z", "20250301T101500Z.2", "20250301T101500Z.3"]
    assert stamps[-1] == "20250301T101500Z.11"
    assert [r["stamp"] for r in keys.report()["retired"]] == stamps[::-1]
    held = [public_raw(k) for k in depot_keys(keys.path).sealing]
    assert held == sealing_publics[::-1]
    command_keys = keys.report()["locker_config"]["depot"]["command_keys"]
    assert len(command_keys) == len(set(command_keys)) == 12


def test_rotate_without_keys_makes_the_first_ones(tmp_path: Path) -> None:
    doc = made("--out", tmp_path / "keys", "--rotate")
    assert doc["retired"] == [] and len(doc["locker_config"]["depot"]["command_keys"]) == 1


def test_a_damaged_key_stops_the_rotation_before_anything_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made("--out", keys)
    (keys / "credential-sealing.pem").write_bytes(b"not a key\n")
    before = snapshot(keys)
    result = keygen("--out", keys, "--rotate")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert str(keys / "credential-sealing.pem") in line and "X25519" in line
    assert snapshot(keys) == before and not (keys / "retired").exists()


def test_retire_errors_are_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    made("--out", keys)
    made("--out", keys, "--rotate")
    before = snapshot(keys)
    unknown = keygen("--out", keys, "--retire", "../command-signing")
    assert unknown.returncode == 1
    [line] = unknown.stderr.strip().splitlines()
    assert "no retired keys '../command-signing'" in line
    usage = keygen("--out", keys, "--drop-sealing-key")
    assert usage.returncode == 2 and "needs --retire" in usage.stderr
    both = keygen("--out", keys, "--rotate", "--retire", "x")
    assert both.returncode == 2
    assert snapshot(keys) == before


def test_from_files_names_the_file_it_cannot_use(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    with pytest.raises(DepotError, match=f"cannot read the key file {keys.signing}"):
        DepotKeys.from_files(keys.signing, None)
    keys.create()
    assert DepotKeys.from_files(None, None) == DepotKeys()
    only_signing = DepotKeys.from_files(keys.signing, None)
    assert only_signing.signing is not None and only_signing.sealing == []
    # Keys of the wrong kind, named in the wrong place of depot.toml.
    with pytest.raises(DepotError, match=f"{keys.sealing}: the command-signing key is not"):
        DepotKeys.from_files(keys.sealing, None)
    stamp = keys.rotate()
    damaged = keys.retired / f"{stamp}-credential-sealing.pem"
    damaged.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DepotError, match=f"{damaged}: a credential-sealing key is not"):
        DepotKeys.from_files(keys.signing, keys.sealing)
    # A file that is not one of keygen's is not a key, and not an error.
    damaged.unlink()
    (keys.retired / "notes.txt").write_text("rotated because of the March incident\n")
    assert len(DepotKeys.from_files(keys.signing, keys.sealing).sealing) == 1
