"""Manifests: canonical form, signatures, sealed caller data, and the chain verifier."""

from __future__ import annotations

import base64
import hashlib
import json

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware import manifest as mf


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def body(seq: int, prev: str, **extra) -> dict:
    return {"format": mf.FORMAT, "recording_id": f"rec-{seq:03d}", "device_id": "lt-desk-1",
            "seq": seq, "prev": prev, "segments": [{"index": 0, "bytes": 10, "sha256": "ab" * 32}],
            "started": {"wall_ms": 1_767_225_600_123, "clock_synced": True}, **extra}


def chain(key: Ed25519PrivateKey, n: int) -> list[bytes]:
    out, prev = [], mf.GENESIS
    for seq in range(1, n + 1):
        data = mf.sign(body(seq, prev), key)
        out.append(data)
        prev = mf.manifest_hash(data)
    return out


def test_canonical_form_is_sorted_compact_utf8() -> None:
    assert mf.canonical({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()


@pytest.mark.parametrize("value", [1.5, {"t": 0.1}, [1, 2.0]])
def test_canonical_refuses_floats(value) -> None:
    with pytest.raises(mf.ManifestError, match="float"):
        mf.canonical(value)


def test_plain_turns_fractions_into_decimal_strings() -> None:
    assert mf.plain({"share": 0.25, "n": 3, "spans": [[1.5, 2.0]], "ok": True}) == \
        {"share": "0.25", "n": 3, "spans": [["1.5", "2.0"]], "ok": True}
    assert mf.ms(1.2345) == 1234 and mf.ms(None) is None


def test_signed_manifest_verifies_and_hash_is_over_the_file(key) -> None:
    data = mf.sign(body(1, mf.GENESIS), key)
    m = mf.verify(data, key.public_key())
    assert m["seq"] == 1 and m["signature"]["alg"] == "ed25519"
    assert mf.manifest_hash(data) == hashlib.sha256(data).hexdigest()


def test_an_altered_manifest_fails(key) -> None:
    data = mf.sign(body(1, mf.GENESIS), key)
    m = json.loads(data)
    m["segments"][0]["bytes"] = 11
    with pytest.raises(mf.BadSignature, match="altered"):
        mf.verify(mf.canonical(m), key.public_key())


def test_a_manifest_signed_by_another_device_fails(key) -> None:
    data = mf.sign(body(1, mf.GENESIS), Ed25519PrivateKey.generate())
    assert mf.verify(data)["seq"] == 1  # intact, by its own embedded key
    with pytest.raises(mf.BadSignature, match="not the device's enrolled key"):
        mf.verify(data, key.public_key())


def test_non_canonical_bytes_are_refused(key) -> None:
    data = mf.sign(body(1, mf.GENESIS), key)
    with pytest.raises(mf.ManifestError, match="canonical"):
        mf.verify(json.dumps(json.loads(data), indent=1).encode(), key.public_key())
    with pytest.raises(mf.ManifestError):
        mf.verify(b"\xff\x00garbage", key.public_key())


def test_caller_is_sealed_to_the_central_recipient() -> None:
    central = pyrage.x25519.Identity.generate()
    sealed = mf.seal_caller("+15551234567", "Ann Example", central.to_public())
    assert "5551234567" not in sealed and "Ann" not in sealed
    plain = json.loads(pyrage.decrypt(base64.b64decode(sealed), [central]))
    assert plain == {"number": "+15551234567", "name": "Ann Example"}
    assert mf.seal_caller(None, None, central.to_public()) is None


def test_an_intact_chain_verifies(key) -> None:
    report = mf.verify_chain(chain(key, 5), key.public_key())
    assert report.ok, report.problems
    assert report.checked == 5 and report.last.seq == 5


def kinds(report: mf.ChainReport) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in report.problems]


def test_a_missing_recording_is_reported_with_its_seq(key) -> None:
    manifests = chain(key, 5)
    del manifests[2]
    assert kinds(mf.verify_chain(manifests, key.public_key())) == [("missing", 3)]


def test_an_explained_gap_is_not_reported(key) -> None:
    manifests = chain(key, 5)
    del manifests[2]
    assert mf.verify_chain(manifests, key.public_key(), explained={3: "purged"}).ok


def test_an_altered_recording_is_reported(key) -> None:
    manifests = chain(key, 4)
    m = json.loads(manifests[1])
    m["flagged"] = True
    manifests[1] = mf.canonical(m)
    report = mf.verify_chain(manifests, key.public_key())
    assert ("altered", 2) in kinds(report)


def test_a_re_signed_alteration_breaks_the_next_link(key) -> None:
    manifests = chain(key, 4)
    m = json.loads(manifests[1])
    del m["signature"]
    m["segments"] = []
    manifests[1] = mf.sign(m, key)  # a thief with the device key rewrites seq 2
    assert kinds(mf.verify_chain(manifests, key.public_key())) == [("broken-link", 3)]


def test_reordered_recordings_are_reported(key) -> None:
    manifests = chain(key, 4)
    manifests[1], manifests[2] = manifests[2], manifests[1]
    assert kinds(mf.verify_chain(manifests, key.public_key())) == [("reordered", 2)]


def test_an_inserted_recording_is_reported(key) -> None:
    manifests = chain(key, 3)
    forged = mf.sign(body(2, mf.manifest_hash(manifests[0]), recording_id="rec-forged"), key)
    report = mf.verify_chain(manifests[:2] + [forged] + manifests[2:], key.public_key())
    assert ("duplicate", 2) in kinds(report)


def test_a_relinked_chain_is_reported(key) -> None:
    manifests = chain(key, 4)
    m = json.loads(manifests[3])
    del m["signature"]
    m["prev"] = mf.manifest_hash(manifests[1])  # seq 4 claims to follow seq 2
    manifests[3] = mf.sign(m, key)
    assert kinds(mf.verify_chain(manifests, key.public_key())) == [("reordered", 4)]


def test_a_chain_must_start_at_genesis_unless_told_otherwise(key) -> None:
    manifests = chain(key, 5)[2:]
    assert kinds(mf.verify_chain(manifests, key.public_key())) == [("missing", 1), ("missing", 2)]
    assert mf.verify_chain(manifests, key.public_key(), after=None).ok
    trusted = mf.ChainPoint(2, mf.manifest_hash(chain(key, 2)[1]))  # Ed25519 signing is deterministic
    assert mf.verify_chain(manifests, key.public_key(), after=trusted).ok
    wrong = mf.ChainPoint(2, "f" * 64)
    assert kinds(mf.verify_chain(manifests, key.public_key(), after=wrong)) == [("broken-link", 3)]


def test_malformed_input_is_reported_not_raised(key) -> None:
    report = mf.verify_chain([b"", b"{}"] + chain(key, 1), key.public_key())
    assert [p.kind for p in report.problems] == ["malformed", "malformed"]


# -- hostile input: bounded before anything else looks at it --

def signed_with_raw(key: Ed25519PrivateKey, manifest: dict, raw: bytes) -> bytes:
    """A validly signed manifest whose member ``x`` is the JSON text ``raw`` (too deep for json.dumps)."""
    unsigned = mf.canonical(manifest | {"x": "RAW"}).replace(b'"RAW"', raw)
    signature = {"alg": "ed25519", "public_key": base64.b64encode(key.public_key().public_bytes_raw()).decode(),
                 "value": base64.b64encode(key.sign(unsigned)).decode()}
    return mf.canonical(manifest | {"x": "RAW", "signature": signature}).replace(b'"RAW"', raw)


DEEP = b"[" * 50_000 + b"]" * 50_000
HUGE = b"1" * 100_000


@pytest.mark.parametrize("raw, reason", [(DEEP, "nests deeper"), (HUGE, "integer")])
def test_deep_nesting_and_huge_integers_are_malformed_signed_or_not(key, raw, reason) -> None:
    for data in (signed_with_raw(key, body(1, mf.GENESIS), raw),
                 mf.canonical(body(1, mf.GENESIS) | {"x": "RAW"}).replace(b'"RAW"', raw)):
        with pytest.raises(mf.ManifestError, match=reason):
            mf.verify(data, key.public_key())
        with pytest.raises(mf.ManifestError, match=reason):
            mf.verify(data)
        report = mf.verify_chain([data], key.public_key())
        assert [(p.kind, p.seq) for p in report.problems] == [("malformed", None)]
    with pytest.raises(mf.ManifestError, match="nests deeper"):
        mf.parse(b"[" * 50_000)


@pytest.mark.parametrize("change", [{"seq": 2**64}, {"seq": 2**53}, {"seq": 0}, {"seq": -1},
                                    {"started": {"wall_ms": 10**20}}, {"ended": {"wall_ms": -(2**63)}}])
def test_integers_outside_what_every_peer_and_column_holds_are_malformed(key, change) -> None:
    data = mf.sign(body(1, mf.GENESIS) | change, key)  # signed by the right key: only the value is wrong
    with pytest.raises(mf.ManifestError):
        mf.verify(data, key.public_key())
    assert [p.kind for p in mf.verify_chain([data], key.public_key()).problems] == ["malformed"]


def test_the_largest_safe_seq_verifies_and_its_gap_is_one_finding(key) -> None:
    first = mf.sign(body(1, mf.GENESIS), key)
    far = mf.sign(body(2**53 - 1, mf.manifest_hash(first)), key)
    assert mf.verify(far, key.public_key())["seq"] == 2**53 - 1
    report = mf.verify_chain([first, far], key.public_key())  # must not list 9e15 gaps one by one
    assert [(p.kind, p.seq) for p in report.problems] == [("missing", 2)]
    assert "to 9007199254740990" in report.problems[0].detail


def test_an_unusable_embedded_key_is_malformed_not_a_crash(key) -> None:
    data = json.loads(mf.sign(body(1, mf.GENESIS), key))
    data["signature"]["public_key"] = "not base64!"
    with pytest.raises(mf.ManifestError, match="public key"):
        mf.verify(mf.canonical(data))
