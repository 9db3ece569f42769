"""The sans-IO upload protocol against a model centre: order, window, resends, acks, bandwidth."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import ConfigError, SpoolError
from linetap.sync import wire
from linetap.sync.upload import (
    MANIFEST,
    Alarm,
    Pending,
    Publish,
    RecordingSynced,
    SegmentInfo,
    SegmentsLost,
    SegmentSynced,
    Upload,
    message_bytes,
)
from linetap.sync.wire import Ack, ObjectRef

DEVICE = "lt-desk-1"


def rid(n: int) -> str:
    return f"0199a000-0000-7000-8000-{n:012d}"


@dataclass
class Store:
    """Recordings as the spool would hold them: bytes per object, and catalogue flags."""

    objects: dict[tuple[str, ObjectRef], bytes] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, bool] = field(default_factory=dict)
    synced_segments: set[tuple[str, int]] = field(default_factory=set)
    synced: set[str] = field(default_factory=set)
    reads: list[tuple[str, ObjectRef]] = field(default_factory=list)

    def add(self, n: int, sizes: list[int], *, flagged: bool = False) -> str:
        r = rid(n)
        self.seq[r], self.flagged[r] = n, flagged
        for i, size in enumerate(sizes):
            self.objects[r, ObjectRef.segment(i)] = hashlib.sha256(f"{r}/{i}".encode()).digest() * (size // 32) \
                + bytes(size % 32)
        self.objects[r, MANIFEST] = json.dumps({"recording": r, "segments": list(range(len(sizes)))}).encode()
        return r

    def read(self, recording_id: str, ref: ObjectRef) -> bytes:
        self.reads.append((recording_id, ref))
        try:
            return self.objects[recording_id, ref]
        except KeyError:
            raise SpoolError(f"{ref} of {recording_id} is gone") from None

    def segments(self, r: str) -> list[int]:
        return json.loads(self.objects[r, MANIFEST])["segments"]

    def backlog(self) -> list[Pending]:
        return [Pending(r, self.seq[r], self.flagged[r], sha(self.objects[r, MANIFEST]),
                        tuple(SegmentInfo(i, len(self.objects[r, ObjectRef.segment(i)]),
                                          sha(self.objects[r, ObjectRef.segment(i)]),
                                          (r, i) in self.synced_segments) for i in self.segments(r)))
                for r in sorted(self.seq, key=self.seq.get) if r not in self.synced]

    def apply(self, out: list) -> list[wire.Part]:
        sent = []
        for o in out:
            if isinstance(o, Publish):
                sent.append(o.part)
            elif isinstance(o, SegmentSynced):
                self.synced_segments.add((o.recording_id, o.index))
            elif isinstance(o, SegmentsLost):
                self.synced_segments -= {(o.recording_id, i) for i in o.indexes}
            elif isinstance(o, RecordingSynced):
                self.synced.add(o.recording_id)
        return sent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Centre:
    """The centre's contract, modelled: stage parts, store whole objects, manifest last."""

    def __init__(self, store: Store, *, part_acks: bool = True) -> None:
        self.store = store
        self.part_acks = part_acks
        self.staged: dict[tuple[str, ObjectRef], dict[int, bytes]] = defaultdict(dict)
        self.stored: dict[tuple[str, ObjectRef], bytes] = {}
        self.received = 0

    def receive(self, part: wire.Part) -> list[Ack]:
        self.received += 1
        key = (part.recording_id, part.object)
        self.staged[key][part.part] = part.payload
        # Part-level acks are optional for one-part objects only: without them an object of more
        # parts than the window could never complete.
        acks = [Ack(part.recording_id, part.object, part.sha256, "stored", part=part.part)] \
            if self.part_acks or part.parts > 1 else []
        if len(self.staged[key]) < part.parts:
            return acks
        data = wire.join([self.staged[key][k] for k in range(part.parts)], part.sha256, part.size)
        if part.object == MANIFEST:
            missing = tuple(i for i in json.loads(data)["segments"]
                            if (part.recording_id, ObjectRef.segment(i)) not in self.stored)
            if missing:
                return acks + [Ack(part.recording_id, MANIFEST, part.sha256, "rejected",
                                   code="missing-segments", missing=missing)]
        self.stored[key] = data
        return acks + [Ack(part.recording_id, part.object, part.sha256, "stored")]

    def complete(self, r: str) -> bool:
        return all(self.stored.get((r, ref)) == data for (rr, ref), data in self.store.objects.items() if rr == r)


def make(store: Store, clock: ManualClock, **kw) -> Upload:
    up = Upload(DEVICE, store.read, clock, **kw)
    up.set_backlog(store.backlog())
    return up


def run_clean(up: Upload, store: Store, centre: Centre, clock: ManualClock, limit: int = 10_000) -> list[wire.Part]:
    """A perfect network: deliver everything at once; let time pass only when nothing else happens."""
    sent_all = []
    queue = store.apply(up.poll())
    for _ in range(limit):
        if not queue:
            wake = up.wake_at()
            if wake is None:
                break
            clock.advance(max(0.0, wake - clock.monotonic()))
        sent_all += queue
        for part in queue:
            for ack in centre.receive(part):
                up.acked(ack)
        queue = store.apply(up.poll())
    return sent_all


# ------------------------------------------------------------------ basics --

def test_a_backlog_drains_in_order_with_each_manifest_after_its_segments(clock: ManualClock) -> None:
    store = Store()
    old, new = store.add(1, [100, 200, 300]), store.add(2, [50])
    up = make(store, clock, window=2)
    up.connected()
    centre = Centre(store)
    sent = run_clean(up, store, centre, clock)
    order = [(p.recording_id, str(p.object)) for p in sent]
    assert order == [(old, "seg/0"), (old, "seg/1"), (old, "seg/2"), (new, "seg/0"), (old, "manifest"),
                     (new, "manifest")]
    assert store.synced == {old, new} and centre.complete(old) and centre.complete(new)
    assert up.recordings == 0 and up.wake_at() is None


def test_flagged_recordings_jump_the_queue(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10])
    flagged = store.add(2, [10], flagged=True)
    up = make(store, clock, window=1)
    up.connected()
    first = store.apply(up.poll())
    assert [p.recording_id for p in first] == [flagged]


def test_the_window_bounds_unacknowledged_messages(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10] * 20)
    up = make(store, clock, window=3)
    up.connected()
    sent = store.apply(up.poll())
    assert len(sent) == 3 and up.in_flight == 3
    assert store.apply(up.poll()) == []
    up.acked(Ack(sent[1].recording_id, sent[1].object, sent[1].sha256, "stored", part=0))
    again = store.apply(up.poll())
    assert [str(p.object) for p in again] == ["seg/3"] and up.in_flight == 3


def test_nothing_is_sent_while_disconnected_and_all_goes_again_after_a_reconnect(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10, 10])
    up = make(store, clock, window=8)
    assert up.poll() == [] and up.wake_at() is None
    up.connected()
    first = store.apply(up.poll())
    up.acked(Ack(first[0].recording_id, first[0].object, first[0].sha256, "stored", part=0))
    up.disconnected()
    assert up.poll() == []
    up.connected()
    again = store.apply(up.poll())
    assert [str(p.object) for p in again] == ["seg/0", "seg/1"]  # seg/0 had no object-level ack


def test_an_unacknowledged_message_goes_again_after_the_timeout(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10])
    up = make(store, clock, window=8, ack_timeout_s=30)
    up.connected()
    [part] = store.apply(up.poll())
    assert up.wake_at() == pytest.approx(clock.monotonic() + 30)
    clock.advance(29.9)
    assert store.apply(up.poll()) == []
    clock.advance(0.1)
    assert store.apply(up.poll()) == [part]


def test_staged_parts_without_an_object_ack_go_again(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10])
    up = make(store, clock, window=8, ack_timeout_s=10)
    up.connected()
    [part] = store.apply(up.poll())
    up.acked(Ack(part.recording_id, part.object, part.sha256, "stored", part=0))
    assert up.in_flight == 0 and store.apply(up.poll()) == []
    clock.advance(10)
    assert store.apply(up.poll()) == [part]


def test_a_large_object_goes_in_parts_and_is_synced_only_when_whole(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [2 * wire.PART_BYTES + 5])
    up = make(store, clock, window=2)
    up.connected()
    sent = store.apply(up.poll())
    assert [p.part for p in sent] == [0, 1] and all(p.parts == 3 for p in sent)
    for p in sent:
        up.acked(Ack(r, p.object, p.sha256, "stored", part=p.part))
    third = store.apply(up.poll())
    assert [p.part for p in third] == [2] and (r, 0) not in store.synced_segments
    up.acked(Ack(r, third[0].object, third[0].sha256, "stored", part=2))
    assert not any(isinstance(o, SegmentSynced) for o in up.poll())
    up.acked(Ack(r, third[0].object, third[0].sha256, "stored"))
    out = up.poll()
    assert SegmentSynced(r, 0) in out
    assert [str(o.part.object) for o in out if isinstance(o, Publish)] == ["manifest"]


def test_acks_for_another_hash_or_recording_change_nothing(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10])
    up = make(store, clock)
    up.connected()
    [part] = store.apply(up.poll())
    up.acked(Ack(r, part.object, "0" * 64, "stored"))
    up.acked(Ack(rid(99), part.object, part.sha256, "stored"))
    up.acked(Ack(r, ObjectRef.segment(7), part.sha256, "stored"))
    assert store.apply(up.poll()) == [] and not store.synced_segments and up.in_flight == 1


def test_retry_backs_off_and_doubles(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10])
    up = make(store, clock, retry_base_s=2, ack_timeout_s=60)
    up.connected()
    delays = []
    for _ in range(3):
        [part] = store.apply(up.poll())
        sent_at = clock.monotonic()
        up.acked(Ack(r, part.object, part.sha256, "retry", code="store-unavailable"))
        assert store.apply(up.poll()) == []
        clock.advance(up.wake_at() - clock.monotonic())
        delays.append(clock.monotonic() - sent_at)
    assert delays == [2, 4, 8]


def test_a_passed_back_off_does_not_keep_waking_the_caller(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10, 10])
    up = make(store, clock, window=1, retry_base_s=2, ack_timeout_s=60)
    up.connected()
    [first] = store.apply(up.poll())
    up.acked(Ack(r, first.object, first.sha256, "retry", code="store-unavailable"))
    clock.advance(2)
    [again] = store.apply(up.poll())
    assert again == first
    # Sent again and waiting for its ack: the next thing due is that ack's timeout, not the past back-off.
    assert up.wake_at() == pytest.approx(clock.monotonic() + 60)


def test_a_back_off_that_passes_while_the_window_is_full_waits_for_an_ack(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10, 10])
    up = make(store, clock, window=1, retry_base_s=2, ack_timeout_s=60)
    up.connected()
    [seg0] = store.apply(up.poll())
    up.acked(Ack(r, seg0.object, seg0.sha256, "retry", code="store-unavailable"))
    [seg1] = store.apply(up.poll())
    clock.advance(2)
    assert store.apply(up.poll()) == []  # seg/0 is due but seg/1 holds the only slot
    assert up.wake_at() == pytest.approx(clock.monotonic() - 2 + 60)  # seg/1's ack timeout
    up.acked(Ack(r, seg1.object, seg1.sha256, "stored"))
    assert store.apply(up.poll()) == [seg0]


def test_a_rejection_raises_an_alarm_and_stops_that_recording_only(clock: ManualClock) -> None:
    store = Store()
    bad, good = store.add(1, [10, 10]), store.add(2, [10])
    up = make(store, clock, window=2)
    up.connected()
    first = store.apply(up.poll())
    up.acked(Ack(bad, first[0].object, first[0].sha256, "rejected", code="hash-mismatch", reason="altered"))
    out = up.poll()
    assert Alarm(bad, ObjectRef.segment(0), "hash-mismatch", "altered") in out
    assert up.is_blocked(bad)
    centre = Centre(store)
    sent = run_clean(up, store, centre, clock)
    assert {p.recording_id for p in sent} == {good} and store.synced == {good}
    up.set_backlog(store.backlog())  # a rescan does not revive it
    assert up.is_blocked(bad) and up.poll() == []


def test_missing_segments_are_sent_again_before_the_manifest(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10, 20, 30])
    store.synced_segments = {(r, 0), (r, 1), (r, 2)}  # the catalogue believes the centre has them
    up = make(store, clock)
    up.connected()
    centre = Centre(store)
    centre.stored[r, ObjectRef.segment(0)] = store.objects[r, ObjectRef.segment(0)]
    sent = run_clean(up, store, centre, clock)
    assert [str(p.object) for p in sent] == ["manifest", "seg/1", "seg/2", "manifest"]
    assert store.synced == {r} and centre.complete(r)


def test_missing_segments_the_box_cannot_supply_raise_an_alarm(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [])
    up = make(store, clock)
    up.connected()
    [manifest] = store.apply(up.poll())
    up.acked(Ack(r, MANIFEST, manifest.sha256, "rejected", code="missing-segments", missing=(4,)))
    [alarm] = up.poll()
    assert isinstance(alarm, Alarm) and alarm.code == "missing-segments" and "[4]" in alarm.reason


def test_an_unreadable_or_altered_object_raises_an_alarm(clock: ManualClock) -> None:
    store = Store()
    gone, altered = store.add(1, [10]), store.add(2, [10])
    up = make(store, clock)
    del store.objects[gone, ObjectRef.segment(0)]
    store.objects[altered, ObjectRef.segment(0)] = b"something else"
    up.connected()
    alarms = {o.recording_id: o.code for o in up.poll() if isinstance(o, Alarm)}
    assert alarms == {gone: "unreadable", altered: "altered"}


def test_a_restart_sends_only_what_the_catalogue_lacks(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10, 10, 10, 10])
    up = make(store, clock, window=1)
    up.connected()
    centre = Centre(store)
    for _ in range(2):
        [part] = store.apply(up.poll())
        for ack in centre.receive(part):
            up.acked(ack)
    store.apply(up.poll())
    assert store.synced_segments == {(r, 0), (r, 1)}
    store.reads.clear()
    restarted = make(store, clock, window=8)
    restarted.connected()
    sent = run_clean(restarted, store, centre, clock)
    assert [str(p.object) for p in sent] == ["seg/2", "seg/3", "manifest"]
    assert {str(ref) for _, ref in store.reads} == {"seg/2", "seg/3", "manifest"}
    assert store.synced == {r}


def test_recordings_that_leave_the_backlog_are_forgotten(clock: ManualClock) -> None:
    store = Store()
    store.add(1, [10, 10])
    up = make(store, clock)
    up.connected()
    assert len(store.apply(up.poll())) == 2
    up.set_backlog([])
    assert up.recordings == 0 and up.in_flight == 0 and up.wake_at() is None


def test_bad_settings_are_refused(clock: ManualClock) -> None:
    with pytest.raises(ConfigError, match="window"):
        Upload(DEVICE, Store().read, clock, window=0)


# --------------------------------------------------------------- bandwidth --

@pytest.mark.parametrize("rate", [20_000, 200_000])
def test_the_bandwidth_cap_holds_over_any_few_seconds(clock: ManualClock, rate: int) -> None:
    store = Store()
    for n in range(1, 4):
        store.add(n, [30_000 + 977 * k for k in range(12)])
    up = make(store, clock, window=8, bandwidth_bytes_s=rate)
    up.connected()
    centre = Centre(store)
    log: list[tuple[float, int]] = []
    queue = store.apply(up.poll())
    while up.recordings:
        for part in queue:
            log.append((clock.monotonic(), message_bytes(part)))
            for ack in centre.receive(part):
                up.acked(ack)
        queue = store.apply(up.poll())
        if not queue and up.recordings:
            clock.advance(max(0.0, up.wake_at() - clock.monotonic()))
    biggest = max(size for _, size in log)
    span = 3.0
    for start, _ in log:
        in_window = sum(size for t, size in log if start <= t < start + span)
        assert in_window <= rate * span + biggest
    total = sum(size for _, size in log)
    elapsed = log[-1][0] - log[0][0]
    assert abs(total / (elapsed + log[-1][1] / rate) - rate) <= 0.1 * rate


# ------------------------------------------------------------- properties --

OPS = st.one_of(
    st.tuples(st.sampled_from(["up", "drop-up", "dup-up", "down", "drop-down", "dup-down"]),
              st.integers(0, 50)),
    st.tuples(st.just("reconnect"), st.booleans()),
    st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
    st.tuples(st.just("rescan"), st.just(0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.lists(st.sampled_from([0, 1, 500, wire.PART_BYTES + 1]), max_size=4),
                      min_size=1, max_size=4),
       flagged=st.lists(st.booleans(), min_size=4, max_size=4),
       window=st.integers(1, 5), part_acks=st.booleans(),
       ops=st.lists(OPS, max_size=80))
def test_any_ack_order_loss_duplicate_and_reconnect_ends_with_everything_synced(
        sizes, flagged, window, part_acks, ops) -> None:
    clock = ManualClock()
    timeout = 30.0
    store = Store()
    ids = [store.add(n + 1, s, flagged=flagged[n]) for n, s in enumerate(sizes)]
    up = make(store, clock, window=window, ack_timeout_s=timeout)
    centre = Centre(store, part_acks=part_acks)
    up_queue: list[wire.Part] = []
    down_queue: list[Ack] = []
    object_acked: set[tuple[str, ObjectRef]] = set()  # object-level stored acks the box has seen
    published_at: dict[tuple[str, ObjectRef, int], float] = {}

    def deliver(ack: Ack) -> None:
        key = (ack.recording_id, ack.object)
        if ack.status == "stored" and ack.part is None:
            object_acked.add(key)
        if ack.code == "missing-segments":
            object_acked.difference_update((ack.recording_id, ObjectRef.segment(i)) for i in ack.missing)
        for k in [k for k in published_at if k[:2] == key and (ack.part is None or k[2] == ack.part)]:
            del published_at[k]
        up.acked(ack)

    def step() -> None:
        for o in up.poll():
            if isinstance(o, Publish):
                p = o.part
                if p.object == MANIFEST:
                    segments = store.segments(p.recording_id)
                    assert all((p.recording_id, ObjectRef.segment(i)) in object_acked for i in segments), \
                        "manifest sent before all its segments were acknowledged"
                published_at[p.recording_id, p.object, p.part] = clock.monotonic()
                up_queue.append(p)
            elif isinstance(o, SegmentSynced):
                assert (o.recording_id, ObjectRef.segment(o.index)) in object_acked
            elif isinstance(o, RecordingSynced):
                assert (o.recording_id, MANIFEST) in object_acked
            assert not isinstance(o, Alarm), o
            store.apply([o])
        recent = [k for k, t in published_at.items() if t > clock.monotonic() - timeout]
        assert len(recent) <= window and up.in_flight <= window

    up.connected()
    step()
    for op, arg in ops:
        if op in ("up", "drop-up", "dup-up") and up_queue:
            part = up_queue[arg % len(up_queue)] if op == "dup-up" else up_queue.pop(arg % len(up_queue))
            if op != "drop-up":
                down_queue.extend(centre.receive(part))
        elif op in ("down", "drop-down", "dup-down") and down_queue:
            ack = down_queue[arg % len(down_queue)] if op == "dup-down" else down_queue.pop(arg % len(down_queue))
            if op != "drop-down":
                deliver(ack)
        elif op == "reconnect":
            up.disconnected()
            published_at.clear()
            if arg:  # the link lost what was on the way
                up_queue.clear()
                down_queue.clear()
            step()
            up.connected()
        elif op == "advance":
            clock.advance(arg)
        elif op == "rescan":
            up.set_backlog(store.backlog())
        step()

    for _ in range(5000):  # then the network heals
        if not up_queue and not down_queue:
            if store.synced == set(ids):
                break
            wake = up.wake_at()
            assert wake is not None, "stalled with recordings unsynced"
            clock.advance(max(0.0, wake - clock.monotonic()))
        while up_queue:
            down_queue.extend(centre.receive(up_queue.pop(0)))
        while down_queue:
            deliver(down_queue.pop(0))
        step()
    assert store.synced == set(ids)
    assert all(centre.complete(r) for r in ids)
