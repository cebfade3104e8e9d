"""Pickup credentials: issued, stored without plaintext, verified; the keypad's lockout."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.credentials import (
    FIRST_LOCKOUT_S,
    MAX_LOCKOUT_S,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    WRONG_CODES_BEFORE_LOCKOUT,
    CredentialError,
    IssuedCredential,
    KeypadGuard,
    KeypadLocked,
    LockoutStarted,
    StoredCredential,
    hash_presented,
    issue_credential,
    lockout_seconds,
    lookup_tag,
    sealed_for_depot,
    verify_code,
    verify_qr,
)
from edge.errors import EdgeError
from sync.signing import (
    PICKUP_CREDENTIAL_PURPOSE,
    SealError,
    associated_data,
    generate_sealing_keypair,
    load_sealing_key,
    unseal,
)


@pytest.fixture(scope="module")
def issued() -> IssuedCredential:
    return issue_credential()


def _other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


# --- issuing -------------------------------------------------------------------------------


def test_code_is_six_ascii_digits_and_tokens_differ() -> None:
    creds = [issue_credential() for _ in range(8)]
    for c in creds:
        assert re.fullmatch(r"[0-9]{6}", c.code)
        raw = base64.urlsafe_b64decode(c.qr_token + "=" * (-len(c.qr_token) % 4))
        assert len(raw) * 8 >= 128
    assert len({c.qr_token for c in creds}) == len(creds)
    assert len({c.stored.salt for c in creds}) == len(creds)
    assert len({c.code for c in creds}) > 1


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_drawn_code_verifies_leading_zeros_included(rng: random.Random) -> None:
    cred = issue_credential(rng)
    assert re.fullmatch(r"[0-9]{6}", cred.code)
    assert verify_code(cred.stored, cred.code)
    assert verify_qr(cred.stored, cred.qr_token)


def test_a_code_with_leading_zeros_keeps_them() -> None:
    seed = next(s for s in range(10_000) if random.Random(s).randrange(10**6) < 1000)
    cred = issue_credential(random.Random(seed))
    assert cred.code.startswith("000")
    assert verify_code(cred.stored, cred.code)
    assert not verify_code(cred.stored, cred.code.lstrip("0"))


# --- verifying -----------------------------------------------------------------------------


def test_right_code_and_qr_verify(issued: IssuedCredential) -> None:
    assert verify_code(issued.stored, issued.code)
    assert verify_qr(issued.stored, issued.qr_token)


@pytest.mark.parametrize(
    "attempt",
    ["", "12345", "1234567", " 123456", "12345a", "١٢٣٤٥٦", "000000\n"],
)
def test_malformed_codes_never_verify(issued: IssuedCredential, attempt: str) -> None:
    assert not verify_code(issued.stored, attempt)


def test_wrong_code_and_qr_do_not_verify(issued: IssuedCredential) -> None:
    assert not verify_code(issued.stored, _other_code(issued.code))
    assert not verify_qr(issued.stored, issued.qr_token[:-1])
    assert not verify_qr(issued.stored, issued.qr_token + "A")
    assert not verify_qr(issued.stored, "")
    assert not verify_qr(issued.stored, issued.code)
    assert not verify_code(issued.stored, issued.qr_token)
    other = issue_credential()
    assert not verify_qr(other.stored, issued.qr_token)
    if other.code != issued.code:
        assert not verify_code(other.stored, issued.code)


def test_stored_record_holds_no_plaintext_and_round_trips(issued: IssuedCredential) -> None:
    record = issued.stored.to_record()
    text = json.dumps(record)
    assert issued.code not in text
    assert issued.qr_token not in text
    assert record["kdf"] == "scrypt" and record["n"] == SCRYPT_N
    again = StoredCredential.from_record(json.loads(text))
    assert again == issued.stored
    assert verify_code(again, issued.code)
    assert verify_qr(again, issued.qr_token)


def test_repr_and_str_leak_nothing(issued: IssuedCredential) -> None:
    record = issued.stored.to_record()
    for shown in (repr(issued), str(issued), f"{issued}", repr(issued.stored), str(issued.stored)):
        assert issued.code not in shown
        assert issued.qr_token not in shown
        assert record["code_hash"] not in shown
        assert record["salt"] not in shown


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"kdf": "md5"},
        {"n": 2**20},  # a tampered record must not make a keypad entry take minutes
        {"n": 3000},
        {"r": True},
        {"salt": "not base64!"},
        {"code_hash": ""},
        {"qr_hash": None},
    ],
)
def test_damaged_records_are_refused(issued: IssuedCredential, change: dict[str, object]) -> None:
    record = {**issued.stored.to_record(), **change}
    with pytest.raises(CredentialError):
        StoredCredential.from_record(record)
    assert issubclass(CredentialError, EdgeError)


def test_measured_verify_time_is_reported_not_asserted(issued: IssuedCredential) -> None:
    start = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        verify_code(issued.stored, _other_code(issued.code))
    per = (time.perf_counter() - start) / rounds
    print(f"\nverify_code: {per * 1000:.1f} ms per code (scrypt N={SCRYPT_N})")


# --- found by the locker's lookup tag --------------------------------------------------------

LOCKER_SALT = bytes(range(16))


@pytest.fixture(scope="module")
def in_locker() -> IssuedCredential:
    """A credential as a locker issues it: under the locker's own lookup salt."""
    return issue_credential(lookup_salt=LOCKER_SALT)


@pytest.fixture(scope="module")
def of_its_own() -> IssuedCredential:
    """A credential as lockers issued them before: under a salt of its own."""
    return issue_credential()


class ScryptCalls:
    """Counts the scrypt hashes edge.credentials makes (the real function does the work)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = hashlib.scrypt

        def counted(*args: Any, **kwargs: Any) -> bytes:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(hashlib, "scrypt", counted)


def test_under_a_lookup_salt_the_stored_hashes_are_the_lookup_tags(
    in_locker: IssuedCredential,
) -> None:
    code_tag, qr_tag = in_locker.lookup_tags()
    assert code_tag == lookup_tag(in_locker.code, LOCKER_SALT, is_code=True)
    assert qr_tag == lookup_tag(in_locker.qr_token, LOCKER_SALT, is_code=False)
    # The record keeps its version-1 form: software that verifies it the old way still can.
    record = in_locker.stored.to_record()
    assert record["v"] == 1 and record["kdf"] == "scrypt"
    again = StoredCredential.from_record(json.loads(json.dumps(record)))
    assert again.salt == LOCKER_SALT
    assert verify_code(again, in_locker.code) and verify_qr(again, in_locker.qr_token)
    assert not verify_code(again, _other_code(in_locker.code))
    with pytest.raises(ValueError):
        issue_credential(lookup_salt=b"short")


def test_a_presented_code_opens_its_credential_with_one_hash(
    in_locker: IssuedCredential, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = ScryptCalls(monkeypatch)
    presented = hash_presented(in_locker.code, LOCKER_SALT, is_code=True)
    assert presented is not None and calls.count == 1
    assert presented.tag == in_locker.lookup_tags()[0]
    assert presented.opens(in_locker.stored)
    assert calls.count == 1  # the tag was the proof: no second scrypt


def test_a_credential_of_its_own_salt_still_opens_with_a_second_hash(
    of_its_own: IssuedCredential, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an older locker stored: its own salt, found by a tag under the locker's salt.
    presented = hash_presented(of_its_own.code, LOCKER_SALT, is_code=True)
    assert presented is not None
    calls = ScryptCalls(monkeypatch)
    assert presented.opens(of_its_own.stored)
    assert calls.count == 1
    wrong = hash_presented(_other_code(of_its_own.code), LOCKER_SALT, is_code=True)
    assert wrong is not None and not wrong.opens(of_its_own.stored)
    token = hash_presented(of_its_own.qr_token, LOCKER_SALT, is_code=False)
    assert token is not None and token.opens(of_its_own.stored)
    other_token = hash_presented(of_its_own.qr_token + "A", LOCKER_SALT, is_code=False)
    assert other_token is not None and not other_token.opens(of_its_own.stored)


def test_a_presented_secret_opens_no_other_credential(in_locker: IssuedCredential) -> None:
    other = issue_credential(lookup_salt=LOCKER_SALT)
    code = hash_presented(in_locker.code, LOCKER_SALT, is_code=True)
    token = hash_presented(in_locker.qr_token, LOCKER_SALT, is_code=False)
    assert code is not None and token is not None
    if other.code != in_locker.code:
        assert not code.opens(other.stored)
    assert not token.opens(other.stored)
    assert token.opens(in_locker.stored)
    wrong = hash_presented(_other_code(in_locker.code), LOCKER_SALT, is_code=True)
    assert wrong is not None and not wrong.opens(in_locker.stored)
    # The same code at another locker is another tag: that locker's index does not find it.
    elsewhere = hash_presented(in_locker.code, bytes(16), is_code=True)
    assert elsewhere is not None and elsewhere.tag != code.tag
    # A code taken for a QR token is not the token.
    as_token = hash_presented(in_locker.code, LOCKER_SALT, is_code=False)
    assert as_token is not None and not as_token.opens(in_locker.stored)


def test_a_record_at_another_cost_is_verified_at_its_own_cost(
    in_locker: IssuedCredential,
) -> None:
    """A record under the locker's salt but another scrypt cost (issued by a version with
    other parameters) is not the tag: it is checked with its own hash, right and wrong."""
    cost = {"n": SCRYPT_N // 2, "r": SCRYPT_R, "p": SCRYPT_P}
    code_hash = hashlib.scrypt(
        in_locker.code.encode(), salt=LOCKER_SALT, dklen=32, maxmem=2**26, **cost
    )
    stored = StoredCredential(
        salt=LOCKER_SALT, code_hash=code_hash, qr_hash=in_locker.stored.qr_hash, **cost
    )
    right = hash_presented(in_locker.code, LOCKER_SALT, is_code=True)
    wrong = hash_presented(_other_code(in_locker.code), LOCKER_SALT, is_code=True)
    assert right is not None and wrong is not None
    assert right.opens(stored)
    assert not wrong.opens(stored)


@pytest.mark.parametrize("secret", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦"])
def test_a_malformed_code_is_not_hashed_at_all(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = ScryptCalls(monkeypatch)
    assert hash_presented(secret, LOCKER_SALT, is_code=True) is None
    assert calls.count == 0
    assert hash_presented("x" * 257, LOCKER_SALT, is_code=False) is None


def test_a_presented_secret_never_shows_itself(in_locker: IssuedCredential) -> None:
    for secret, is_code in ((in_locker.code, True), (in_locker.qr_token, False)):
        presented = hash_presented(secret, LOCKER_SALT, is_code=is_code)
        assert presented is not None
        for text in (repr(presented), str(presented)):
            assert secret not in text and presented.tag not in text


# --- sealing for the depot -----------------------------------------------------------------


def test_sealed_credential_opens_only_at_the_depot_for_its_parcel(issued: IssuedCredential) -> None:
    private_pem, public = generate_sealing_keypair()
    plaintext = {"code": issued.code, "qr": "LMQR:" + issued.qr_token}
    sealed = sealed_for_depot(plaintext, public, locker_id="locker-7", parcel_id="RR123456785NL")
    assert issued.code not in sealed and issued.qr_token not in sealed
    json.dumps({"credential_for_depot": sealed})  # fits in a journal event as it is
    key = load_sealing_key(private_pem)
    ad = associated_data(PICKUP_CREDENTIAL_PURPOSE, "locker-7", "RR123456785NL")
    assert json.loads(unseal(key, sealed, ad)) == plaintext
    with pytest.raises(SealError):
        unseal(key, sealed, associated_data(PICKUP_CREDENTIAL_PURPOSE, "locker-7", "other"))
    with pytest.raises(SealError):
        unseal(key, sealed, associated_data(PICKUP_CREDENTIAL_PURPOSE, "locker-8", "RR123456785NL"))


# --- keypad guard --------------------------------------------------------------------------


def _fail(guard: KeypadGuard, times: int, now: float) -> LockoutStarted | None:
    result = None
    for _ in range(times):
        assert guard.check(now) is None
        result = guard.record_attempt(False, now)
    return result


def test_five_wrong_codes_lock_the_keypad() -> None:
    guard = KeypadGuard()
    assert _fail(guard, WRONG_CODES_BEFORE_LOCKOUT - 1, 100.0) is None
    assert guard.check(100.0) is None
    lockout = guard.record_attempt(False, 101.0)
    assert lockout == LockoutStarted(seconds=FIRST_LOCKOUT_S, count=1, until=131.0)
    assert guard.check(101.0) == pytest.approx(30.0)
    assert guard.check(130.9) == pytest.approx(0.1)
    assert guard.check(131.0) is None


def test_an_attempt_during_a_lockout_is_refused() -> None:
    guard = KeypadGuard()
    _fail(guard, 5, 0.0)
    remaining = guard.check(10.0)
    assert remaining == pytest.approx(20.0)
    with pytest.raises(KeypadLocked) as caught:
        guard.record_attempt(True, 10.0)  # even a right code: it must not have been checked
    assert caught.value.remaining_s == pytest.approx(20.0)
    assert guard.lockouts == 1
    assert guard.check(10.0) == pytest.approx(20.0)


def test_delay_grows_with_each_lockout_up_to_the_cap() -> None:
    guard = KeypadGuard()
    now = 0.0
    seen = []
    for _ in range(10):
        lockout = _fail(guard, 5, now)
        assert lockout is not None
        seen.append(lockout.seconds)
        now = lockout.until
    assert seen == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert lockout_seconds(1000) == MAX_LOCKOUT_S


def test_a_right_code_resets_the_streak_and_the_escalation() -> None:
    guard = KeypadGuard()
    _fail(guard, 4, 0.0)
    assert guard.record_attempt(True, 1.0) is None
    assert guard.wrong_streak == 0
    assert _fail(guard, 4, 2.0) is None  # 4 + right + 4: never five in a row
    lockout = guard.record_attempt(False, 3.0)
    assert lockout is not None and lockout.count == 1
    second = _fail(guard, 5, lockout.until)
    assert second is not None and second.seconds == 60
    guard.record_attempt(True, second.until)
    third = _fail(guard, 5, second.until + 1)
    assert third is not None and third.seconds == FIRST_LOCKOUT_S


def test_state_survives_a_journal_round_trip() -> None:
    guard = KeypadGuard()
    _fail(guard, 5, 0.0)
    _fail(guard, 3, 30.0)
    again = KeypadGuard.from_record(json.loads(json.dumps(guard.to_record())))
    assert (again.wrong_streak, again.lockouts) == (3, 1)
    lockout = _fail(again, 2, 31.0)
    assert lockout is not None and lockout.seconds == 60  # the escalation was kept

    locked = KeypadGuard.from_record(json.loads(json.dumps(again.to_record())))
    assert locked.check(40.0) == pytest.approx(51.0)


def test_a_power_cut_never_shortens_a_lockout() -> None:
    guard = KeypadGuard()
    lockout = _fail(guard, 5, 5000.0)  # locked at uptime 5000 s for 30 s
    assert lockout is not None
    record = json.loads(json.dumps(guard.to_record()))
    after_boot = KeypadGuard.from_record(record)
    # The monotonic clock restarted near zero: the whole lockout is still ahead.
    assert after_boot.check(12.0) == pytest.approx(30.0)
    assert after_boot.check(41.0) == pytest.approx(1.0)
    assert after_boot.check(42.0) is None


def test_a_lockout_that_ended_before_the_power_cut_stays_ended() -> None:
    guard = KeypadGuard()
    _fail(guard, 5, 100.0)
    guard.check(200.0)
    assert guard.check(3.0) is None


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"v": 1, "streak": -1, "lockouts": 0, "locked_until": None, "last_now": None},
        {"v": 1, "streak": 5, "lockouts": 0, "locked_until": None, "last_now": None},
        {"v": 1, "streak": 0, "lockouts": 0, "locked_until": "soon", "last_now": None},
        {"v": 1, "streak": 0, "lockouts": 0, "locked_until": float("nan"), "last_now": 1.0},
    ],
)
def test_a_damaged_guard_record_is_refused(record: dict[str, object]) -> None:
    with pytest.raises(CredentialError):
        KeypadGuard.from_record(record)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 4000), st.booleans()), max_size=60))
def test_no_more_than_five_wrong_codes_between_lockouts(
    steps: list[tuple[bool, float, bool]],
) -> None:
    guard = KeypadGuard()
    now = 0.0
    wrong_in_a_row = 0
    last_seconds = 0.0
    for ok, dt, reload in steps:
        now += dt
        if reload:
            guard = KeypadGuard.from_record(json.loads(json.dumps(guard.to_record())))
        if guard.check(now) is not None:
            with pytest.raises(KeypadLocked):
                guard.record_attempt(ok, now)
            continue
        lockout = guard.record_attempt(ok, now)
        if ok:
            wrong_in_a_row, last_seconds = 0, 0.0
            assert lockout is None
            continue
        wrong_in_a_row += 1
        assert wrong_in_a_row <= WRONG_CODES_BEFORE_LOCKOUT
        if lockout is not None:
            assert wrong_in_a_row == WRONG_CODES_BEFORE_LOCKOUT
            assert lockout.seconds >= last_seconds and lockout.seconds <= MAX_LOCKOUT_S
            wrong_in_a_row, last_seconds = 0, lockout.seconds
            assert guard.check(now) == pytest.approx(lockout.seconds)
