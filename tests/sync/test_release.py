"""Release manifests, chunk frames and the update wire: every refusal by its code."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.manifest import canonical
from linetap.sync import release, signed, updatewire

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
WHEEL = bytes(range(256)) * 1100  # 281,600 bytes: three chunks, the last short
DEP = b"dependency wheel" * 10


def manifest(version: str = "0.2.0", **overrides) -> bytes:
    fields = dict(version=version, min_previous="0.1.0", created_ms=1_767_225_600_000, boards=["*"],
                  machine="aarch64", python="cp311",
                  files=[release.describe_file(f"linetap-{version}-py3-none-any.whl", WHEEL),
                         release.describe_file("dep-1.0-py3-none-any.whl", DEP)])
    fields.update(overrides)
    return release.build_manifest(**fields)


def signed_release(**overrides) -> release.Release:
    data = manifest(**overrides)
    return release.verify(data, release.sign(data, KEY), [KEY.public_key()])


def test_a_signed_manifest_verifies_and_describes_its_files():
    rel = signed_release()
    own = rel.files[1]
    assert (rel.version, own.name, own.size, len(own.chunks)) == ("0.2.0", "linetap-0.2.0-py3-none-any.whl",
                                                                 len(WHEEL), 3)
    assert rel.size == len(WHEEL) + len(DEP) and len(rel.release_id) == 64


@pytest.mark.parametrize("tamper", ["other-key", "altered", "short-signature", "no-key"])
def test_a_release_not_signed_by_a_trusted_key_is_refused(tamper):
    data = manifest()
    sig, trusted = release.sign(data, KEY), [KEY.public_key()]
    if tamper == "other-key":
        sig = release.sign(data, OTHER)
    elif tamper == "altered":
        data = data.replace(b'"0.1.0"', b'"0.0.1"')
    elif tamper == "short-signature":
        sig = sig[:63]
    else:
        trusted = []
    with pytest.raises(release.BadSignature) as caught:
        release.verify(data, sig, trusted)
    assert caught.value.code == "bad-signature"


@pytest.mark.parametrize("change, words", [
    ({"version": "0.2.0-rc1"}, "dotted whole numbers"),
    ({"machine": "Arm 64"}, "machine"),
    ({"boards": []}, "board"),
    ({"chunk_size": 1 << 20}, "chunk_size"),
    ({"files": []}, "1 to"),
])
def test_a_malformed_manifest_is_refused_before_signing(change, words):
    with pytest.raises(release.ReleaseError, match=words):
        manifest(**change)


def test_a_manifest_must_carry_its_own_linetap_wheel_and_safe_names():
    with pytest.raises(release.ReleaseError, match="exactly one linetap wheel"):
        manifest(files=[release.describe_file("linetap-0.1.9-py3-none-any.whl", WHEEL)])
    with pytest.raises(release.ReleaseError, match="not a wheel file name"):
        manifest(files=[release.describe_file("linetap-0.2.0-py3-none-any.whl", WHEEL),
                        release.describe_file("../evil.whl", DEP)])


def test_hostile_manifest_bytes_are_bounded_and_must_be_canonical():
    value = json.loads(manifest())
    spaced = json.dumps(value, sort_keys=True).encode()
    with pytest.raises(release.ReleaseError, match="canonical"):
        release.verify(spaced, release.sign(spaced, KEY), [KEY.public_key()])
    value["files"][1]["chunks"] = value["files"][1]["chunks"][:1]
    data = canonical(value)
    with pytest.raises(release.ReleaseError, match="chunks must be"):
        release.verify(data, release.sign(data, KEY), [KEY.public_key()])
    with pytest.raises(release.TooLarge):
        release.verify(b" " * (release.MAX_MANIFEST + 1), bytes(64), [KEY.public_key()])


@pytest.mark.parametrize("current, board, machine, allow, code", [
    ("0.1.0", "sim", "aarch64", False, None),
    ("0.2.0", "sim", "aarch64", False, "already-installed"),
    ("0.3.0", "sim", "aarch64", False, "downgrade"),
    ("0.3.0", "sim", "aarch64", True, None),
    ("0.0.9", "sim", "aarch64", False, "too-old-to-update"),
    ("0.1.0", "sim", "x86_64", False, "wrong-platform"),
])
def test_judge_names_why_a_box_may_not_install(current, board, machine, allow, code):
    refusal = release.judge(signed_release(), current=current, board=board, machine=machine, python="cp311",
                            allow_downgrade=allow)
    assert (refusal.code if refusal else None) == code


def test_a_release_for_other_boards_is_refused():
    rel = signed_release(boards=["pi4-usb-codec"])
    assert release.judge(rel, current="0.1.0", board="sim", machine="aarch64", python="cp311").code == "wrong-board"
    assert release.judge(rel, current="0.1.0", board="pi4-usb-codec", machine="aarch64", python="cp311") is None


def test_chunk_frames_round_trip_and_wrong_bytes_are_named():
    rel = signed_release()
    own = rel.files[1]
    offset, length = release.chunk_span(rel, own, 2)
    assert (offset, length) == (2 * release.CHUNK_SIZE, len(WHEEL) - 2 * release.CHUNK_SIZE)
    frame = release.pack_chunk(rel.release_id, own.sha256, 2, WHEEL[offset:offset + length])
    chunk = release.unpack_chunk(frame)
    assert release.check_chunk(rel, chunk) == own
    with pytest.raises(release.HashMismatch) as caught:
        release.check_chunk(rel, release.unpack_chunk(frame[:-1] + b"\x00"))
    assert caught.value.code == "hash-mismatch"
    with pytest.raises(release.ReleaseError, match="out of range"):
        release.check_chunk(rel, release.unpack_chunk(release.pack_chunk(rel.release_id, own.sha256, 3, b"x")))
    with pytest.raises(release.ReleaseError, match="header"):
        release.unpack_chunk(frame[:10])
    with pytest.raises(release.ReleaseError, match="LTU1"):
        release.unpack_chunk(b"XXXX" + frame[4:])


def test_an_offer_travels_in_an_update_envelope_with_a_seq():
    data = manifest()
    body = updatewire.offer_body(data, release.sign(data, KEY), rollout="r-1")
    sealed = signed.seal("update", "lt-desk-1", body, OTHER, seq=3, now_ms=1000, ttl_ms=10_000)
    envelope = signed.open_envelope(sealed, trusted_keys=signed.key_table([OTHER.public_key()]),
                                    device_id="lt-desk-1", kind="update", now_ms=2000,
                                    max_bytes=updatewire.MAX_OFFER_BYTES)
    offer = updatewire.read_offer(envelope.body)
    assert release.verify(offer.manifest, offer.signature, [KEY.public_key()]).version == "0.2.0"
    with pytest.raises(signed.EnvelopeError, match="needs a seq"):
        signed.seal("update", "lt-desk-1", body, OTHER, seq=None, now_ms=1000, ttl_ms=10_000, nonce="n" * 16)
    with pytest.raises(release.ReleaseError, match="rollout"):
        updatewire.read_offer({**body, "rollout": "a/b"})


def test_get_and_state_payloads_are_bounded_and_checked():
    rid, sha = "a" * 64, "b" * 64
    assert updatewire.read_get(updatewire.get_payload(rid, sha, 7)) == updatewire.Get(rid, sha, 7)
    for bad in (b'{"chunk":-1,"file":"' + b"b" * 64 + b'","release":"' + b"a" * 64 + b'"}',
                b'{"chunk":1}', b"[" * 40, b"x" * 600):
        with pytest.raises(release.ReleaseError):
            updatewire.read_get(bad)
    state = updatewire.UpdateState(state="fetching", current="0.1.0", version="0.2.0", release=rid,
                                   have=10, total=20, at_ms=5)
    assert updatewire.read_state(updatewire.state_payload(state)) == state
    with pytest.raises(release.ReleaseError, match="state"):
        updatewire.read_state(b'{"current":"0.1.0","state":"exploded"}')
    with pytest.raises(release.ReleaseError, match="code"):
        updatewire.read_state(b'{"code":"nope","current":"0.1.0","state":"refused"}')
