"""Overdue acknowledgements: what the box sent and the centre has not answered, counted sans-IO.

Uploads that reach no ingest worker are otherwise silent: the box resends them
and the centre never hears of them. The protocol counts what has gone
unanswered for its ack timeout (however often it was resent meanwhile) and the
box's telemetry carries the count and the age of the oldest.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from linetap.firmware.clock import ManualClock
from linetap.sync import fleetwire, wire
from linetap.sync.upload import MANIFEST, Overdue, Pending, Publish, SegmentInfo, Upload
from linetap.sync.uploader import with_overdue_acks
from linetap.sync.wire import Ack, ObjectRef

DEVICE = "lt-desk-1"
TIMEOUT = 30.0


def rid(n: int) -> str:
    return f"0199a000-0000-7000-8000-{n:012d}"


def segment(n: int) -> bytes:
    return hashlib.sha256(rid(n).encode()).digest() * 4


def manifest(n: int) -> bytes:
    return b"manifest of %d" % n


def pending(n: int) -> Pending:
    data = segment(n)
    return Pending(rid(n), n, False, hashlib.sha256(manifest(n)).hexdigest(),
                   (SegmentInfo(0, len(data), hashlib.sha256(data).hexdigest()),))


def read(recording_id: str, ref: ObjectRef) -> bytes:
    n = int(recording_id.rsplit("-", 1)[1])
    return manifest(n) if ref == MANIFEST else segment(n)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def start(clock: ManualClock, recordings: int = 3) -> tuple[Upload, list[wire.Part]]:
    up = Upload(DEVICE, read, clock, window=8, ack_timeout_s=TIMEOUT)
    up.set_backlog([pending(n) for n in range(1, recordings + 1)])
    up.connected()
    return up, [o.part for o in up.poll() if isinstance(o, Publish)]


def stored(p: wire.Part, **kw) -> Ack:
    return Ack(p.recording_id, p.object, p.sha256, "stored", **kw)


def test_nothing_is_overdue_before_the_ack_timeout(clock: ManualClock) -> None:
    up, sent = start(clock)
    assert len(sent) == 3 and up.overdue() == Overdue(0, None)
    clock.advance(TIMEOUT - 0.1)
    up.poll()
    assert up.overdue() == Overdue(0, None)


def test_unanswered_messages_are_counted_and_resends_do_not_make_them_young(clock: ManualClock) -> None:
    up, sent = start(clock)
    clock.advance(TIMEOUT)
    resent = [o.part for o in up.poll() if isinstance(o, Publish)]
    assert resent == sent  # the protocol sent them again ...
    assert up.overdue() == Overdue(3, TIMEOUT)  # ... but they are still owed an answer since the first send
    up.acked(stored(sent[0]))  # one object is stored: answered
    clock.advance(TIMEOUT)
    up.poll()
    assert up.overdue() == Overdue(2, 2 * TIMEOUT)


@pytest.mark.parametrize("answer", [
    lambda p: stored(p, part=0),  # a part-level ack
    lambda p: stored(p),  # an object-level ack
    lambda p: Ack(p.recording_id, p.object, p.sha256, "retry", code="disk-full"),
    lambda p: Ack(p.recording_id, p.object, p.sha256, "rejected", code="malformed", reason="x"),
])
def test_any_answer_from_the_centre_ends_the_debt(clock: ManualClock, answer) -> None:
    up, sent = start(clock, recordings=1)
    up.acked(answer(sent[0]))
    clock.advance(2 * TIMEOUT)
    up.poll()
    assert up.overdue() == Overdue(0, None)


def test_a_reconnect_starts_the_count_again(clock: ManualClock) -> None:
    up, _ = start(clock)
    clock.advance(TIMEOUT)
    up.poll()
    assert up.overdue().count == 3
    up.disconnected()
    assert up.overdue() == Overdue(0, None)  # while the link is down nothing is owed
    clock.advance(10 * TIMEOUT)
    up.connected()
    up.poll()
    assert up.overdue() == Overdue(0, None)
    clock.advance(TIMEOUT)
    assert up.overdue() == Overdue(3, TIMEOUT)


def test_a_manifest_is_owed_its_answer_too(clock: ManualClock) -> None:
    up, sent = start(clock, recordings=1)
    up.acked(stored(sent[0]))
    [manifest] = [o.part for o in up.poll() if isinstance(o, Publish)]
    assert manifest.object == MANIFEST
    clock.advance(TIMEOUT)
    assert up.overdue() == Overdue(1, TIMEOUT)


def test_telemetry_carries_the_count_and_the_oldest_age() -> None:
    base = fleetwire.Outbound(fleetwire.telemetry_topic(DEVICE), json.dumps({"uptime_s": 5}).encode(), qos=0)
    message = with_overdue_acks(base, {"overdue_acks": 4, "oldest_overdue_s": 91.7})
    assert json.loads(message.payload) == {"uptime_s": 5, "upload": {"overdue_acks": 4, "oldest_overdue_s": 91}}
    assert (message.topic, message.qos, message.retain) == (base.topic, 0, False)
    calm = with_overdue_acks(base, {"overdue_acks": 0, "oldest_overdue_s": None})
    assert json.loads(calm.payload)["upload"] == {"overdue_acks": 0, "oldest_overdue_s": None}
