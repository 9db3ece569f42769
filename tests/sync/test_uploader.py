"""The uploader with a real spool, a real Mosquitto and a small fake centre speaking sync/wire.py."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware import receipt
from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import SyncSection
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink, list_recordings
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.link import Link
from linetap.sync.upload import message_bytes
from linetap.sync.uploader import Uploader
from linetap.sync.wire import Ack

DEVICE = "lt-desk-1"
WAIT = 20.0
RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=1.0)
# Signalled whenever the fake centre stores something or the catalogue marks something synced.
CHANGED = threading.Condition()


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    with CHANGED:
        return CHANGED.wait_for(predicate, timeout)


class NotifyingSpool(Spool):
    """The real spool, telling waiting tests when the catalogue changes."""

    def __init__(self, *args: object, **kw: object) -> None:
        self.calls: list[tuple[str, str]] = []  # (what, recording id), in order
        super().__init__(*args, **kw)

    def keep_receipt(self, recording_id: str, data: bytes) -> None:
        super().keep_receipt(recording_id, data)
        self.calls.append(("keep_receipt", recording_id))

    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        super().mark_synced(recording_id, index)
        self.calls.append(("mark_synced", recording_id))
        with CHANGED:
            CHANGED.notify_all()

    def mark_segments_synced(self, recording_id: str, indexes: Iterable[int]) -> None:
        super().mark_segments_synced(recording_id, indexes)
        with CHANGED:
            CHANGED.notify_all()


class RandomSegmenter:
    """An encoder stand-in: one segment of ``size`` random bytes per second of audio."""

    size = 3000

    def __init__(self, codec: CodecParams) -> None:
        self._per_segment = int(codec.rate * codec.segment_s)
        self._frames = 0
        self._rng = np.random.default_rng(self._per_segment)

    def write(self, frames: np.ndarray) -> list[bytes]:
        self._frames += len(frames)
        out = []
        while self._frames >= self._per_segment:
            self._frames -= self._per_segment
            out.append(self._rng.bytes(self.size))
        return out

    def finish(self) -> bytes:
        return b""


_ids = iter(range(1, 10 ** 6))


def record(spool: Spool, clock: ManualClock, seconds: int, *, flagged: bool = False) -> str:
    sink = SpoolSink(spool, CODEC, RandomSegmenter)
    call = CallRecord(f"0199b000-0000-7000-8000-{next(_ids):012d}", clock.monotonic(), clock.wall(), True,
                      flagged=flagged)
    sink.open(call)
    sink.write(np.zeros((RATE * seconds, 2), np.int16))
    clock.advance(seconds)
    ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                          "ended_mono": clock.monotonic(),
                          "events": (CallEvent(0.0, "call-start", {"source": "gpio"}),)})
    sink.close(Recording(ended, RATE * seconds, 0.0, (), {}))
    return call.call_id


class FakeCentre:
    """Stores what it receives and acknowledges per sync/wire.py, on its paho thread.

    ``drop(ack)`` decides which acks are lost; ``answer(part)`` may replace the
    normal answers (a rejection). ``log`` keeps (monotonic time, message bytes).
    """

    def __init__(self, broker: LocalBroker) -> None:
        self.staged: dict[tuple[str, str], dict[int, bytes]] = {}
        self.stored: dict[tuple[str, str], bytes] = {}
        self.received: list[tuple[str, str]] = []
        self.log: list[tuple[float, int]] = []
        self.drop: Callable[[Ack], bool] = lambda ack: False
        self.answer: Callable[[wire.Part], list[Ack] | None] = lambda part: None
        self.receipt_key: Ed25519PrivateKey | None = None  # signs a receipt into each manifest's stored ack
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-centre", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        # Subscribed again on every connect: the broker may restart and forget it.
        self.client.on_connect = lambda c, *_a: c.subscribe(wire.up_filter(), qos=1)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(WAIT)

    def _on_message(self, _c, _u, msg) -> None:
        part = wire.parse_part(msg.topic, msg.payload, msg.properties.UserProperty)
        self.log.append((time.monotonic(), message_bytes(part)))
        key = (part.recording_id, str(part.object))
        acks = self.answer(part)
        if acks is None:
            acks = self._store(part, key)
        with CHANGED:
            self.received.append(key)
            CHANGED.notify_all()
        for ack in acks:
            if not self.drop(ack):
                self.client.publish(wire.ack_topic(part.device_id, part.recording_id), ack.encode(), qos=1)

    def _store(self, part: wire.Part, key: tuple[str, str]) -> list[Ack]:
        self.staged.setdefault(key, {})[part.part] = part.payload
        acks = [Ack(part.recording_id, part.object, part.sha256, "stored", part=part.part)]
        if len(self.staged[key]) < part.parts:
            return acks
        data = wire.join([self.staged[key][k] for k in range(part.parts)], part.sha256, part.size)
        if part.object.kind == "manifest":
            missing = tuple(s["index"] for s in json.loads(data)["segments"]
                            if self.stored.get((part.recording_id, f"seg/{s['index']}")) is None)
            if missing:
                return acks + [Ack(part.recording_id, part.object, part.sha256, "rejected",
                                   code="missing-segments", missing=missing)]
        with CHANGED:
            self.stored[key] = data
            CHANGED.notify_all()
        signed = None
        if part.object.kind == "manifest" and self.receipt_key is not None:
            signed = receipt.encode(receipt.sign(
                self.receipt_key, device_id=part.device_id, recording_id=part.recording_id, seq=1,
                manifest_sha256=part.sha256, stored_ms=1_700_000_000_000, prev=receipt.GENESIS))
        return acks + [Ack(part.recording_id, part.object, part.sha256, "stored", receipt=signed)]

    def close(self) -> None:
        self.client.disconnect()  # first, so that the network thread ends without waiting out its select
        self.client.loop_stop()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    keys_init(tmp_path / "data", str(pyrage.x25519.Identity.generate().to_public()))
    return tmp_path / "data"


pytestmark = pytest.mark.broker("test")


@pytest.fixture
def centre(broker: LocalBroker) -> Iterator[FakeCentre]:
    fake = FakeCentre(broker)
    yield fake
    fake.close()


def open_spool(data: Path) -> Spool:
    return NotifyingSpool(data, device_id=DEVICE, clock=ManualClock(), disk_free=lambda _p: 10 ** 12)


class Box:
    """A spool, a link and an uploader wired as the app wires them."""

    def __init__(self, data: Path, broker: LocalBroker, *, trusted: dict | None = None, **sync: object) -> None:
        self.settings = SyncSection(broker=broker.host, port=broker.port, tls=False, reconnect_max_s=1, **sync)
        self.spool = open_spool(data)
        self.alarms: list[tuple[str, str]] = []
        self.down = threading.Event()
        self.link = Link(self.settings, client_id=DEVICE, data_dir=data, clock=SystemClock(),
                         on_connected=lambda: self.uploader.on_connected(),
                         on_disconnected=self._disconnected,
                         on_message=lambda message: self.uploader.on_message(message))
        self.uploader = Uploader(self.spool, self.link, self.settings, clock=SystemClock(),
                                 on_alarm=self._alarm, trusted=trusted)

    def _alarm(self, kind: str, detail: str) -> None:
        with CHANGED:
            self.alarms.append((kind, detail))
            CHANGED.notify_all()

    def _disconnected(self, reason: str) -> None:
        self.down.set()
        self.uploader.on_disconnected(reason)

    def __enter__(self) -> Box:
        self.uploader.start()
        self.link.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uploader.close()
        self.link.close()
        self.spool.close()


def states(data: Path) -> dict[str, str]:
    return {r["id"]: r["state"] for r in list_recordings(data)}


def wait_synced(data: Path, ids: list[str]) -> bool:
    return wait_until(lambda: all(states(data).get(r) == "synced" for r in ids))


def stored_identical(data: Path, centre: FakeCentre, rid: str) -> bool:
    folder = data / "spool" / rid
    manifest = json.loads((folder / "manifest.json").read_bytes())
    return centre.stored.get((rid, "manifest")) == (folder / "manifest.json").read_bytes() and all(
        centre.stored.get((rid, f"seg/{s['index']}")) == (folder / f"{s['index']:06d}.age").read_bytes()
        for s in manifest["segments"])


def test_a_backlog_drains_and_every_recording_ends_synced(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        clock = ManualClock()
        ids = [record(spool, clock, n) for n in (3, 1, 2, 4)]
    with Box(data, broker, window=4) as box:
        before = box.uploader.status()
        assert wait_synced(data, ids), states(data)
        box.uploader.sync_now()
    assert all(stored_identical(data, centre, r) for r in ids)
    after = box.uploader.status()  # the thread has stopped: the figures are final
    assert after["backlog_recordings"] == 0 and after["backlog_bytes"] == 0 and after["last_sync_wall"]
    assert before["last_sync_wall"] is None and not box.alarms
    order = centre.received
    assert order.index((ids[0], "manifest")) > order.index((ids[0], "seg/2"))


def test_a_recording_closed_while_running_is_picked_up_by_notify(data: Path, broker, centre) -> None:
    with Box(data, broker) as box:
        rid = record(box.spool, ManualClock(), 2)
        box.uploader.notify()
        assert wait_synced(data, [rid])
        assert stored_identical(data, centre, rid)


def test_broker_stopped_mid_upload_and_restarted_drains_with_nothing_lost(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        clock = ManualClock()
        ids = [record(spool, clock, 3) for _ in range(6)]
    with Box(data, broker, window=2, ack_timeout_s=2) as box:  # what the centre missed while it re-subscribed
        assert wait_synced(data, ids[:1])
        broker.stop()
        assert box.down.wait(WAIT)
        assert states(data)[ids[-1]] == "closed"  # stopped mid-upload
        broker.start()
        assert wait_synced(data, ids), states(data)
    assert all(stored_identical(data, centre, r) for r in ids)


def test_lost_acks_are_answered_by_resending(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        ids = [record(spool, ManualClock(), 2) for _ in range(2)]
    seen: set[tuple[str, str, int | None]] = set()

    def first_object_ack_lost(ack: Ack) -> bool:
        key = (ack.recording_id, str(ack.object), ack.part)
        lost = ack.part is None and key not in seen
        seen.add(key)
        return lost

    centre.drop = first_object_ack_lost
    with Box(data, broker, ack_timeout_s=1):
        assert wait_synced(data, ids), states(data)
    for rid in ids:
        for obj in ("seg/0", "seg/1", "manifest"):
            assert centre.received.count((rid, obj)) >= 2  # each object went again after its ack was lost


def test_a_restarted_uploader_sends_only_what_is_not_acknowledged(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        rid = record(spool, ManualClock(), 6)
    centre.drop = lambda ack: ack.object.kind == "seg" and ack.object.index >= 3
    with Box(data, broker, window=8) as box:
        assert wait_until(lambda: all((rid, f"seg/{i}") in centre.stored for i in range(6)))
        assert wait_until(lambda: synced_flags(box.spool, rid) == [True] * 3 + [False] * 3)
    centre.drop = lambda ack: False
    centre.received.clear()
    with Box(data, broker):
        assert wait_synced(data, [rid])
    assert set(centre.received) == {(rid, "seg/3"), (rid, "seg/4"), (rid, "seg/5"), (rid, "manifest")}
    assert stored_identical(data, centre, rid)


def synced_flags(spool: Spool, rid: str) -> list[bool]:
    return [s.synced for s in spool.segments(rid)]


def test_a_segment_mark_lost_to_a_power_cut_only_sends_that_segment_again(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        rid = record(spool, ManualClock(), 4)
    centre.drop = lambda ack: ack.object.kind == "manifest"
    with Box(data, broker) as box:
        assert wait_until(lambda: synced_flags(box.spool, rid) == [True] * 4)
        assert wait_until(lambda: (rid, "manifest") in centre.stored)
        # What a power cut can do to the last marks, which are committed without an fsync.
        box.spool.mark_unsynced(rid, [2])
    centre.drop = lambda ack: False
    centre.received.clear()
    with Box(data, broker):
        assert wait_synced(data, [rid])
    assert sorted(centre.received) == [(rid, "manifest"), (rid, "seg/2")]
    assert stored_identical(data, centre, rid)


def test_a_rejection_raises_an_alarm_and_the_rest_still_drains(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        clock = ManualClock()
        bad, good = record(spool, clock, 1), record(spool, clock, 1)

    def refuse_bad(part: wire.Part) -> list[Ack] | None:
        if part.recording_id != bad:
            return None
        return [Ack(bad, part.object, part.sha256, "rejected", code="not-enrolled", reason="enroll lt-desk-1")]

    centre.answer = refuse_bad
    with Box(data, broker) as box:
        assert wait_synced(data, [good])
        assert wait_until(lambda: bool(box.alarms))
    assert (bad, "manifest") not in centre.received
    kind, detail = box.alarms[0]
    assert kind == "upload-rejected" and bad in detail and "code=not-enrolled" in detail
    assert states(data)[bad] == "closed"


STORE_KEY = Ed25519PrivateKey.generate()
TRUSTED = {receipt.key_id(STORE_KEY.public_key()): STORE_KEY.public_key()}


def test_a_valid_receipt_is_kept_before_the_recording_is_marked_synced(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        rid = record(spool, ManualClock(), 2)
    centre.receipt_key = STORE_KEY
    with Box(data, broker, trusted=TRUSTED) as box:
        assert wait_synced(data, [rid])
    assert box.spool.calls == [("keep_receipt", rid), ("mark_synced", rid)] and not box.alarms
    kept = (data / "spool" / rid / "receipt.json").read_bytes()
    manifest = (data / "spool" / rid / "manifest.json").read_bytes()
    assert receipt.verify(kept, TRUSTED, device_id=DEVICE, recording_id=rid,
                          manifest_sha256=hashlib.sha256(manifest).hexdigest()).data == kept
    assert [r["receipt_stored_ms"] is not None for r in list_recordings(data)] == [True]


def test_a_forged_receipt_raises_the_alarm_and_the_recording_stays_unsynced(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        rid = record(spool, ManualClock(), 1)
    centre.receipt_key = Ed25519PrivateKey.generate()
    with Box(data, broker, trusted=TRUSTED, ack_timeout_s=1) as box:
        assert wait_until(lambda: centre.received.count((rid, "manifest")) >= 2)  # asked again after back-off
        assert wait_until(lambda: bool(box.alarms))
    kind, detail = box.alarms[0]
    assert kind == "upload-rejected" and rid in detail and "code=receipt-invalid" in detail
    assert "does not trust" in detail
    assert states(data)[rid] == "closed" and not (data / "spool" / rid / "receipt.json").exists()
    assert ("mark_synced", rid) not in box.spool.calls


def test_a_recording_synced_before_the_store_key_fetches_its_receipt(data: Path, broker, centre) -> None:
    with open_spool(data) as spool:
        rid = record(spool, ManualClock(), 2)
        spool.mark_synced(rid)  # synced by a box that had no store key: no receipt
    for path in sorted((data / "spool" / rid).glob("*.age")):  # the centre has its segments already
        centre.stored[(rid, f"seg/{int(path.stem)}")] = path.read_bytes()
    centre.receipt_key = STORE_KEY
    with Box(data, broker, trusted=TRUSTED):
        assert wait_until(lambda: (data / "spool" / rid / "receipt.json").exists() and states(data)[rid] == "synced")
    # Its segments were not sent again: only the manifest (perhaps twice, as a resend on a
    # reconnect may repeat what is unacknowledged; the centre answers a repeat alike).
    assert centre.received and set(centre.received) == {(rid, "manifest")}


def test_the_bandwidth_cap_holds_on_the_wire(data: Path, broker, centre) -> None:
    RandomSegmenter.size = 12_000
    try:
        with open_spool(data) as spool:
            ids = [record(spool, ManualClock(), 5) for _ in range(4)]
    finally:
        RandomSegmenter.size = 3000
    rate = 100_000
    with Box(data, broker, bandwidth_bytes_s=rate, window=16):
        assert wait_synced(data, ids)
    times = [t for t, _ in centre.log]
    sizes = [s for _, s in centre.log]
    # The first message leaves at once (the burst of one); the rest are paced.
    measured = sum(sizes[1:]) / (times[-1] - times[0])
    assert abs(measured - rate) <= 0.1 * rate, measured
    assert sum(sizes) > 2 * rate  # long enough for the figure to mean something
