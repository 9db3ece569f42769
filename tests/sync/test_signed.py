"""Signed envelopes: what a sender seals opens, and everything else is refused by name."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linetap.firmware.errors import AuthError, ConfigError
from linetap.firmware.keys import fingerprint
from linetap.firmware.manifest import canonical
from linetap.sync import signed
from linetap.sync.signed import (ClockUnsynced, EnvelopeError, EnvelopeRefused, Expired, Malformed, NotYetValid,
                                 Oversized, ReplayGuard, Replayed, SignatureMismatch, UnknownKey, Unsigned,
                                 WrongDevice, WrongKind, key_table, open_envelope, seal)

DEV = "lt-desk-1"
NOW = 1_767_225_600_000
TTL = 60_000
OPERATOR = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = key_table([OPERATOR.public_key()])
BODY = {"args": {"seconds": 5}, "name": "identify"}
VALID = seal("cmd", DEV, BODY, OPERATOR, seq=7, now_ms=NOW, ttl_ms=TTL)
# Each mutation below must be refused with one of these; which one depends on where it lands.
TAMPER_ERRORS = (Malformed, Unsigned, UnknownKey, SignatureMismatch)


def open_cmd(data: bytes, *, now_ms: int | None = NOW, kind: str = "cmd", device: str = DEV,
             max_bytes: int = 16_384) -> signed.Envelope:
    return open_envelope(data, trusted_keys=TRUSTED, device_id=device, kind=kind, now_ms=now_ms,
                         max_bytes=max_bytes)


def members(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def resign(value: dict[str, Any], key: Ed25519PrivateKey = OPERATOR) -> bytes:
    """Sign arbitrary members the way a sender would, bypassing seal's own checks."""
    unsigned = {k: v for k, v in value.items() if k != "signature"}
    value = dict(unsigned, signature={"alg": "ed25519", "key_id": fingerprint(key.public_key()),
                                      "value": base64.b64encode(key.sign(canonical(unsigned))).decode()})
    return canonical(value)


def test_what_is_sealed_opens_with_its_members() -> None:
    env = open_cmd(VALID)
    assert (env.kind, env.device, env.seq, env.nonce, env.body) == ("cmd", DEV, 7, None, BODY)
    assert (env.issued_ms, env.expires_ms) == (NOW, NOW + TTL)
    assert env.key_id == fingerprint(OPERATOR.public_key())
    assert env.time_checked


def test_a_config_for_every_device_opens_on_any_box() -> None:
    data = seal("config", "*", {"toml": ""}, OPERATOR, seq=3, now_ms=NOW, ttl_ms=TTL)
    assert open_cmd(data, kind="config", device="lt-other").device == "*"


@pytest.mark.parametrize("kwargs, why", [
    ({"device": "*"}, "every device"),
    ({"seq": None}, "seq or a nonce"),
    ({"seq": 0}, "seq 0"),
    ({"nonce": "short"}, "nonce"),
    ({"ttl_ms": 0}, "ttl_ms"),
    ({"body": {"level": 0.5}}, "float"),
    ({"device": "Front Desk"}, "device id"),
])
def test_seal_refuses_what_could_not_be_opened(kwargs: dict[str, Any], why: str) -> None:
    args = {"kind": "cmd", "device": DEV, "body": BODY, "seq": 1, "now_ms": NOW, "ttl_ms": TTL} | kwargs
    with pytest.raises(EnvelopeError, match=why):
        seal(args.pop("kind"), args.pop("device"), args.pop("body"), OPERATOR, **args)


def test_a_config_without_a_version_cannot_be_sealed() -> None:
    with pytest.raises(EnvelopeError, match="version"):
        seal("config", DEV, {}, OPERATOR, seq=None, nonce="n" * 16, now_ms=NOW, ttl_ms=TTL)


@pytest.mark.parametrize("make, error", [
    (lambda: VALID, Oversized),
    (lambda: b"\xff" + VALID, Malformed),
    (lambda: json.dumps(members(VALID), indent=1).encode(), Malformed),
    (lambda: json.dumps(members(VALID), sort_keys=True, ensure_ascii=True).encode(), Malformed),
    (lambda: canonical({k: v for k, v in members(VALID).items() if k != "signature"}), Unsigned),
    (lambda: seal("cmd", DEV, BODY, STRANGER, seq=7, now_ms=NOW, ttl_ms=TTL), UnknownKey),
    (lambda: canonical(members(VALID) | {"seq": 8}), SignatureMismatch),
    (lambda: canonical(members(VALID) | {"device": "lt-desk-2"}), SignatureMismatch),
    (lambda: canonical(members(VALID) | {"expires_ms": NOW + 10 * TTL}), SignatureMismatch),
    (lambda: seal("cmd", "lt-desk-2", BODY, OPERATOR, seq=7, now_ms=NOW, ttl_ms=TTL), WrongDevice),
    (lambda: seal("config", DEV, {}, OPERATOR, seq=7, now_ms=NOW, ttl_ms=TTL), WrongKind),
    (lambda: seal("cmd", DEV, BODY, OPERATOR, seq=7, now_ms=NOW - TTL - 1, ttl_ms=TTL), Expired),
    (lambda: seal("cmd", DEV, BODY, OPERATOR, seq=7, now_ms=NOW + signed.MAX_SKEW_MS + 1, ttl_ms=TTL),
     NotYetValid),
    (lambda: resign(members(VALID) | {"device": "*"}), WrongDevice),
    (lambda: resign(members(VALID) | {"extra": 1}), Malformed),
    (lambda: resign(members(VALID) | {"expires_ms": NOW}), Malformed),
    (lambda: resign({k: v for k, v in members(VALID).items() if k != "seq"}), Malformed),
], ids=["oversized", "not-utf8", "indented", "ascii-escaped", "unsigned", "unknown-key", "seq-changed",
        "device-swapped", "expiry-extended", "other-device", "wrong-kind", "expired", "future",
        "star-command", "extra-member", "expires-at-issue", "no-seq-no-nonce"])
def test_each_fault_is_refused_with_its_own_error(make: Any, error: type[EnvelopeRefused]) -> None:
    data = make()
    with pytest.raises(error) as caught:
        open_cmd(data, max_bytes=len(VALID) - 1 if error is Oversized else 16_384)
    assert caught.value.code != "refused" and isinstance(caught.value, AuthError)


def test_within_the_skew_allowance_an_early_envelope_is_accepted() -> None:
    early = seal("cmd", DEV, BODY, OPERATOR, seq=7, now_ms=NOW + signed.MAX_SKEW_MS, ttl_ms=TTL)
    assert open_cmd(early).seq == 7


def test_the_signature_value_has_one_spelling() -> None:
    value = members(VALID)
    text = value["signature"]["value"]  # 64 bytes: 86 characters, the last holding 4 spare bits, then ==
    spare = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = spare.index(text[85])
    twin = text[:85] + spare[last ^ 1] + text[86:]
    assert base64.b64decode(twin) == base64.b64decode(text)
    value["signature"] = value["signature"] | {"value": twin}
    with pytest.raises(Malformed, match="canonical base64"):
        open_cmd(canonical(value))


def test_unsynced_clock_accepts_by_seq_and_says_so() -> None:
    stale = seal("cmd", DEV, BODY, OPERATOR, seq=7, now_ms=NOW - 10 * TTL, ttl_ms=TTL)
    env = open_cmd(stale, now_ms=None)
    assert env.seq == 7 and not env.time_checked
    nonce_only = seal("cmd", DEV, BODY, OPERATOR, seq=None, nonce="abcdefgh12345678", now_ms=NOW, ttl_ms=TTL)
    with pytest.raises(ClockUnsynced, match="send it with a seq"):
        open_cmd(nonce_only, now_ms=None)
    assert open_cmd(nonce_only).nonce == "abcdefgh12345678"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_refused_by_name(data: bytes) -> None:
    with pytest.raises(EnvelopeRefused):
        open_cmd(data)


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=12))
def test_any_json_is_refused_by_name(value: Any) -> None:
    with pytest.raises(EnvelopeRefused):
        open_cmd(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(Malformed):
        open_cmd(b"[" * 100_000 + b"]" * 100_000, max_bytes=1_000_000)
    with pytest.raises(Malformed):
        open_cmd(b'{"seq":' + b"9" * 5000 + b"}")


@pytest.mark.parametrize("data", [
    b'{"body":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"body":{"args":{"seconds":' + b"9" * 100_000 + b"}}}",
], ids=["50000-deep", "100000-digits"])
def test_a_huge_document_is_malformed_before_anything_is_built(data: bytes) -> None:
    with pytest.raises(Malformed, match="cmd envelope"):
        open_cmd(data, max_bytes=1_000_000)


@pytest.mark.parametrize("body, why", [
    ({"args": {"seconds": 2 ** 53}, "name": "identify"}, "integer"),
    ({"args": {"seconds": [[[[[[[[5]]]]]]]]}, "name": "identify"}, "deeper than 8"),
], ids=["beyond-i-json", "too-deep"])
def test_a_signed_envelope_out_of_json_bounds_is_malformed(body: dict[str, Any], why: str) -> None:
    with pytest.raises(Malformed, match=why):
        open_cmd(seal("cmd", DEV, body, OPERATOR, seq=7, now_ms=NOW, ttl_ms=TTL))


def test_a_repeated_key_is_malformed_whoever_signed_it() -> None:
    twice = VALID.replace(b'{"body":', b'{"body":{},"body":', 1)
    with pytest.raises(Malformed, match="repeats the key 'body'"):
        open_cmd(twice)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) * 8 - 1))
def test_any_bit_flip_is_refused(bit: int) -> None:
    data = bytearray(VALID)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(TAMPER_ERRORS):
        open_cmd(bytes(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["kind", "device", "issued_ms", "expires_ms", "seq", "body", "format"]),
       st.none() | st.booleans() | st.integers(-2, 2**60) | st.text(max_size=20)
       | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
def test_any_changed_member_is_refused(name: str, new: Any) -> None:
    value = members(VALID)
    if value[name] == new and type(value[name]) is type(new):
        return
    value[name] = new
    with pytest.raises(TAMPER_ERRORS):
        open_cmd(canonical(value))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(VALID)))
def test_any_truncation_is_refused(length: int) -> None:
    if length == len(VALID):
        assert open_cmd(VALID[:length]).seq == 7
        return
    with pytest.raises(Malformed):
        open_cmd(VALID[:length])


# ----------------------------------------------------------------- replay --


class SavingGuard:
    """A replay guard whose every admission is saved before it takes effect, as the box does."""

    def __init__(self, *, save: Any, state: Any = None, max_nonces: int = 256) -> None:
        self.guard, self.save = ReplayGuard(state, max_nonces=max_nonces), save

    def admit(self, envelope: signed.Envelope, *, now_ms: int) -> None:
        admitted = self.guard.admit(envelope, now_ms=now_ms)
        self.save(admitted.state())
        self.guard = admitted

    def state(self) -> dict[str, Any]:
        return self.guard.state()


def cmd(seq: int | None = None, nonce: str | None = None, *, expires_in: int = TTL,
        key: Ed25519PrivateKey = OPERATOR) -> signed.Envelope:
    data = seal("cmd", DEV, BODY, key, seq=seq, nonce=nonce, now_ms=NOW, ttl_ms=expires_in)
    return open_envelope(data, trusted_keys=key_table([OPERATOR.public_key(), STRANGER.public_key()]),
                         device_id=DEV, kind="cmd", now_ms=NOW, max_bytes=16_384)


def test_a_seq_is_accepted_once_and_never_below_the_highest() -> None:
    saved: list[dict[str, Any]] = []
    guard = SavingGuard(save=saved.append)
    guard.admit(cmd(5), now_ms=NOW)
    for old in (5, 4, 1):
        with pytest.raises(Replayed, match="not above 5"):
            guard.admit(cmd(old), now_ms=NOW)
    guard.admit(cmd(9), now_ms=NOW)
    guard.admit(cmd(1, key=STRANGER), now_ms=NOW)  # each signing key counts on its own
    assert len(saved) == 3 and saved[-1] == guard.state()


def test_a_nonce_is_accepted_once() -> None:
    guard = SavingGuard(save=lambda state: None)
    guard.admit(cmd(nonce="n" * 16), now_ms=NOW)
    with pytest.raises(Replayed, match="already accepted"):
        guard.admit(cmd(nonce="n" * 16), now_ms=NOW)
    guard.admit(cmd(nonce="m" * 16), now_ms=NOW)


def test_forgotten_nonces_raise_a_floor_instead_of_reopening_replays() -> None:
    guard = SavingGuard(save=lambda state: None, max_nonces=3)
    for i in range(4):
        guard.admit(cmd(nonce=f"nonce-{i:011d}", expires_in=TTL + i), now_ms=NOW)
    assert len(guard.state()["nonces"]) == 3
    assert guard.state()["nonce_floor_ms"] == NOW + TTL
    with pytest.raises(Replayed, match="no longer remembers"):
        guard.admit(cmd(nonce="nonce-00000000000", expires_in=TTL), now_ms=NOW)
    guard.admit(cmd(nonce="nonce-fresh-000000", expires_in=2 * TTL), now_ms=NOW)


def test_expired_nonces_are_forgotten() -> None:
    guard = SavingGuard(save=lambda state: None)
    guard.admit(cmd(nonce="a" * 16, expires_in=10), now_ms=NOW)
    guard.admit(cmd(nonce="b" * 16), now_ms=NOW + 11)
    assert list(guard.state()["nonces"]) == [f"cmd/{fingerprint(OPERATOR.public_key())}/{'b' * 16}"]


def test_replay_state_survives_a_save_and_load_round_trip() -> None:
    disk: dict[str, str] = {}
    guard = SavingGuard(save=lambda state: disk.update(state=json.dumps(state)))
    guard.admit(cmd(41), now_ms=NOW)
    guard.admit(cmd(nonce="q" * 16), now_ms=NOW)
    reborn = SavingGuard(save=lambda state: None, state=json.loads(disk["state"]))
    with pytest.raises(Replayed):
        reborn.admit(cmd(41), now_ms=NOW)
    with pytest.raises(Replayed):
        reborn.admit(cmd(nonce="q" * 16), now_ms=NOW)
    reborn.admit(cmd(42), now_ms=NOW)


def test_a_failed_save_admits_nothing() -> None:
    def full_disk(state: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    guard = SavingGuard(save=full_disk)
    with pytest.raises(OSError):
        guard.admit(cmd(3), now_ms=NOW)
    assert guard.state()["highest_seq"] == {}


@pytest.mark.parametrize("state", [{}, {"highest_seq": [], "nonces": {}, "nonce_floor_ms": 0},
                                   {"highest_seq": {"a": "1"}, "nonces": {}, "nonce_floor_ms": 0}, "x"])
def test_a_damaged_replay_state_is_refused_not_reset(state: Any) -> None:
    with pytest.raises(ConfigError, match="replay state"):
        SavingGuard(save=lambda s: None, state=state)
