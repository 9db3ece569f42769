"""The upload wire format: what one end writes, the other reads back, and garbage is refused."""

from __future__ import annotations

import hashlib

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
