"""The upload wire format: what one end writes, the other reads back, and garbage is refused."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.sync import wire
from linetap.sync.wire import Ack, ObjectRef, WireError

DEV = "lt-desk-1"
REC = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize("size", [0, 1, wire.PART_BYTES - 1, wire.PART_BYTES, wire.PART_BYTES + 1,
                                  3 * wire.PART_BYTES + 17])
def test_split_parts_parse_back_and_join_to_the_object(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    parts = wire.split(DEV, REC, ObjectRef.segment(3), data)
    assert len(parts) == max(1, -(-size // wire.PART_BYTES))
    read = [wire.parse_part(p.topic, p.payload, p.user_properties()) for p in parts]
    assert read == parts
    assert all(len(p.payload) <= wire.PART_BYTES for p in read)
    assert wire.join([p.payload for p in read], read[0].sha256, read[0].size) == data


def test_a_whole_message_stays_under_the_limit() -> None:
    part = wire.split(DEV, REC, ObjectRef.manifest(), bytes(wire.PART_BYTES * 2))[0]
    headers = len(part.topic) + sum(len(k) + len(v) + 4 for k, v in part.user_properties()) + 16
    assert len(part.payload) + headers <= wire.MAX_MESSAGE


def test_join_refuses_a_wrong_hash_or_size() -> None:
    parts = wire.split(DEV, REC, ObjectRef.manifest(), b"abc")
    with pytest.raises(WireError, match="sha256"):
        wire.join([b"abd"], parts[0].sha256, 3)
    with pytest.raises(WireError, match="bytes"):
        wire.join([b"ab"], parts[0].sha256, 3)


@pytest.mark.parametrize("topic, why", [
    (f"linetap/v2/{DEV}/up/{REC}/manifest/0", "is not"),
    (f"linetap/v1/Bad_Dev/up/{REC}/manifest/0", "device id"),
    (f"linetap/v1/{DEV}/up/not-a-uuid/manifest/0", "recording id"),
    (f"linetap/v1/{DEV}/up/{REC}/seg/01/0", "neither"),
    (f"linetap/v1/{DEV}/up/{REC}/audio/0", "neither"),
    (f"linetap/v1/{DEV}/up/{REC}/manifest/x", "decimal"),
    (f"linetap/v1/{DEV}/up/{REC}/manifest/1", "out of range"),
])
def test_bad_topics_are_refused_naming_the_problem(topic: str, why: str) -> None:
    props = [("sha256", hashlib.sha256(b"x").hexdigest()), ("size", "1"), ("parts", "1")]
    with pytest.raises(WireError, match=why):
        wire.parse_part(topic, b"x", props)


@pytest.mark.parametrize("props, payload, why", [
    ([("size", "1"), ("parts", "1")], b"x", "sha256"),
    ([("sha256", "XYZ"), ("size", "1"), ("parts", "1")], b"x", "hex"),
    ([("sha256", "a" * 64), ("size", "1"), ("parts", "2")], b"x", "cannot carry"),
    ([("sha256", "a" * 64), ("size", "2"), ("parts", "1")], b"x", "expected 2"),
    ([("sha256", "a" * 64), ("size", "-1"), ("parts", "1")], b"x", "decimal"),
])
def test_bad_properties_are_refused(props: list[tuple[str, str]], payload: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        wire.parse_part(f"linetap/v1/{DEV}/up/{REC}/manifest/0", payload, props)


def test_ack_round_trip_and_addressing() -> None:
    ack = Ack(REC, ObjectRef.segment(2), "b" * 64, "rejected", code="missing-segments",
              reason="segments 1 and 4 are not stored", missing=(1, 4))
    topic = wire.ack_topic(DEV, REC)
    assert wire.parse_ack(topic, ack.encode(), DEV) == ack
    with pytest.raises(WireError, match="not 'other"):
        wire.parse_ack(topic, ack.encode(), "other")
    with pytest.raises(WireError, match="names recording"):
        wire.parse_ack(wire.ack_topic(DEV, "0190a1b2-c3d4-7e5f-8a9b-000000000000"), ack.encode(), DEV)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=80))
def test_garbage_is_a_wire_error_never_a_crash(payload: bytes, topic_tail: str) -> None:
    for call in (lambda: wire.parse_ack(wire.ack_topic(DEV, REC), payload, DEV),
                 lambda: wire.parse_part(f"linetap/v1/{DEV}/up/{topic_tail}", payload,
                                         [("sha256", "a" * 64), ("size", "1"), ("parts", "1")])):
        try:
            call()
        except WireError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["recording_id", "object", "sha256", "status", "part", "code",
                                        "reason", "missing"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=10), st.booleans(),
                                 st.lists(st.integers(), max_size=3))))
def test_malformed_ack_members_are_refused(body: dict) -> None:
    import json
    payload = json.dumps(body).encode()
    with pytest.raises(WireError):
        wire.parse_ack(wire.ack_topic(DEV, REC), payload, DEV)


# ------------------------------------------------- numbers and JSON from the wire --

GOOD_PROPS = [("sha256", hashlib.sha256(b"x").hexdigest()), ("size", "1"), ("parts", "1")]


@pytest.mark.parametrize("topic", [
    f"linetap/v1/{DEV}/up/{REC}/seg/\u0663/0",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
    f"linetap/v1/{DEV}/up/{REC}/seg/\u00b2/0",  # SUPERSCRIPT TWO: isdigit() says yes, int() raises
    f"linetap/v1/{DEV}/up/{REC}/seg/\uff13/0",  # FULLWIDTH DIGIT THREE
    f"linetap/v1/{DEV}/up/{REC}/seg/0/\u00b2",
    f"linetap/v1/{DEV}/up/{REC}/seg/0/\u0660",
    f"linetap/v1/{DEV}/up/{REC}/manifest/\u0660",
    f"linetap/v1/{DEV}/up/{REC}/seg/+1/0",
    f"linetap/v1/{DEV}/up/{REC}/seg/1_0/0",
])
def test_topic_numbers_are_ascii_digits_only(topic: str) -> None:
    with pytest.raises(WireError, match="is neither|decimal"):
        wire.parse_part(topic, b"x", GOOD_PROPS)


@pytest.mark.parametrize("name, value", [("size", "\u00b9"), ("size", "\u0661"), ("size", "\uff11"),
                                         ("parts", "\u00b9"), ("parts", "\u0661"), ("size", " 1"),
                                         ("parts", "1_0"), ("size", "1" * 400)])
def test_user_property_numbers_are_ascii_digits_only(name: str, value: str) -> None:
    props = [(k, value if k == name else v) for k, v in GOOD_PROPS]
    with pytest.raises(WireError, match=f"{name} .* is not a decimal number"):
        wire.parse_part(f"linetap/v1/{DEV}/up/{REC}/seg/0/0", b"x", props)


def test_a_repeated_user_property_is_refused() -> None:
    # Two readers of one message must never see two different values.
    props = GOOD_PROPS + [("size", "2")]
    with pytest.raises(WireError, match="repeats the user property 'size'"):
        wire.parse_part(f"linetap/v1/{DEV}/up/{REC}/seg/0/0", b"x", props)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=8))
def test_a_part_number_in_any_script_but_ascii_is_refused(digits: str) -> None:
    topic = f"linetap/v1/{DEV}/up/{REC}/seg/{digits}/{digits}"
    if digits.isascii():
        return  # plain digits: covered above
    with pytest.raises(WireError):
        wire.parse_part(topic, b"x", GOOD_PROPS)


def ack_body(**changes: object) -> dict:
    body = {"recording_id": REC, "object": "seg/1", "sha256": "b" * 64, "status": "stored", "part": 0}
    body.update(changes)
    return body


@pytest.mark.parametrize("payload, why", [
    (b'{"recording_id":"%s","object":"seg/1","sha256":"%s","status":"stored","status":"rejected"}'
     % (REC.encode(), b"b" * 64), "repeats the key 'status'"),
    (b"[" * 2000 + b"]" * 2000, "nests deeper"),
    (json.dumps(ack_body(part=2**64)).encode(), "outside"),
    (json.dumps(ack_body(part=0.5)).encode(), "not an integer"),
    (json.dumps(ack_body(object="seg/\u0663")).encode(), "is neither"),
    (b"\xff" * 10, "not UTF-8"),
    (json.dumps(ack_body(missing=[1, 2**70])).encode(), "outside"),
])
def test_hostile_acks_are_wire_errors(payload: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        wire.parse_ack(wire.ack_topic(DEV, REC), payload, DEV)


@pytest.mark.parametrize("char", ["a", "\u00e9", "\"", "\x01", "\U0001f4de"])
def test_an_ack_with_the_longest_reason_still_fits_and_reads_back(char: str) -> None:
    # A reason may quote hostile text; escaped, one character can take 12 bytes.
    ack = Ack(REC, ObjectRef.manifest(), "c" * 64, "rejected", code="missing-segments",
              reason=char * 5000, missing=tuple(range(999_000, 999_000 + 300)))
    encoded = ack.encode()
    assert len(encoded) <= wire.MAX_ACK
    read = wire.parse_ack(wire.ack_topic(DEV, REC), encoded, DEV)
    assert read.missing == tuple(range(999_000, 999_000 + wire.MAX_MISSING))
    assert read.reason and set(read.reason) == {char} and len(read.reason) <= wire.MAX_REASON
    assert len(read.reason) == wire.MAX_REASON or len(encoded) > wire.MAX_ACK - 12
