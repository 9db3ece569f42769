"""Draining a backlog: the uploader against raw paho publishing, and the bandwidth cap's accuracy.

Backlog: one stereo call-hour in the real spool: 6 calls of 10 minutes, 10 s
segments of about 30 KB (random bytes of that size through the spool's
encryption and durable writes, since the encoder's output does not change
what sync does), 360 segments and 6 signed manifests.

Ours: the :class:`~linetap.sync.uploader.Uploader` with its
:class:`~linetap.sync.link.Link` (plain TCP, default timeouts) drains that
backlog through a loopback Mosquitto to a small centre that acknowledges as
the central ingest does (``sync/wire.py``: a part-level ack for each part of a
multi-part object, an object-level ack for every object), until every
recording is ``synced`` in the catalogue: reading files, hashing, windowed
acknowledgements and catalogue commits included.

Peer, in the same run and through the same broker: one paho client publishes
the same bytes on the same topics at QoS 1, all at once, waits for every
PUBACK, and the clock stops when the centre has received every message. It
neither waits for application acks nor reads files. The figure is the peer's
time over ours (target >= 0.7).

Both run in this one process with the centre, on a machine that may be
busy: each window size in :data:`WINDOWS` is measured :data:`REPEATS` times as
a pair (the peer, then ours on a fresh copy of the backlog), and the medians
are reported; the headline is the default ``sync.window``. Memory in flight is
at most window x 128 KiB of upload messages.

Bandwidth cap: the uploader drains 2 MB with ``bandwidth_bytes_s`` = 200 kB/s;
the rate is measured from the centre's receive times (bytes after the first
message over the time from the first to the last).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pyrage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.clock import SystemClock
from linetap.firmware.config import SyncSection
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.link import Link
from linetap.sync.upload import message_bytes
from linetap.sync.uploader import Uploader

DEVICE = "lt-bench"
RATE = 8000
SEGMENT_S = 10.0
SEGMENT_BYTES = 30_000
CALLS = 6
CALL_S = 600
CAP_BYTES_S = 200_000
CAP_DRAIN_BYTES = 2_000_000
TARGET_RATIO = 0.7
WAIT_S = 120.0
WINDOWS = (8, 16, 32, 64)
REPEATS = 3


class _RandomSegmenter:
    def __init__(self, codec: CodecParams) -> None:
        self._per_segment = int(codec.rate * codec.segment_s)
        self._frames = 0
        self._rng = np.random.default_rng()

    def write(self, frames: np.ndarray) -> list[bytes]:
        self._frames += len(frames)
        out = []
        while self._frames >= self._per_segment:
            self._frames -= self._per_segment
            out.append(self._rng.bytes(SEGMENT_BYTES))
        return out

    def finish(self) -> bytes:
        return b""


class _WatchedSpool(Spool):
    """Sets ``drained`` when the last unsynced recording is marked synced."""

    drained: threading.Event

    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        super().mark_synced(recording_id, index)
        if index is None and not self.unsynced():
            self.drained.set()


class _Centre:
    """Stages parts, acknowledges part and object; the manifest's segments are taken as checked."""

    def __init__(self, broker: LocalBroker, *, acks: bool) -> None:
        self.acks = acks
        self.count = 0
        self.expected = 0
        self.done = threading.Event()
        self.log: list[tuple[float, int]] = []
        self._staged: dict[tuple[str, str], int] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-centre-{acks}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(wire.up_filter(), qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("the bench centre could not subscribe to the loopback broker")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        part = wire.parse_part(msg.topic, msg.payload, msg.properties.UserProperty)
        self.log.append((time.monotonic(), message_bytes(part)))
        self.count += 1
        if self.expected and self.count >= self.expected:
            self.done.set()
        if not self.acks:
            return
        topic = wire.ack_topic(part.device_id, part.recording_id)
        if part.parts > 1:  # as the central ingest: a one-part object gets its object-level ack only
            self.client.publish(topic, wire.Ack(part.recording_id, part.object, part.sha256, "stored",
                                                part=part.part).encode(), qos=1)
        key = (part.recording_id, str(part.object))
        self._staged[key] = self._staged.get(key, 0) + 1
        if self._staged[key] >= part.parts:
            self.client.publish(topic, wire.Ack(part.recording_id, part.object, part.sha256, "stored").encode(),
                                qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _make_backlog(data: Path, calls: int, call_s: int) -> list[wire.Part]:
    keys_init(data, str(pyrage.x25519.Identity.generate().to_public()))
    codec = CodecParams(rate=RATE, segment_s=SEGMENT_S)
    clock = SystemClock()
    parts: list[wire.Part] = []
    with Spool(data, device_id=DEVICE, clock=clock) as spool:
        sink = SpoolSink(spool, codec, _RandomSegmenter)
        for _ in range(calls):
            call = CallRecord(str(uuid.uuid4()), clock.monotonic(), clock.wall(), True)
            sink.open(call)
            sink.write(np.zeros((RATE * call_s, 2), np.int16))
            ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                                  "ended_mono": clock.monotonic() + call_s,
                                  "events": (CallEvent(0.0, "call-start", {"source": "gpio"}),)})
            sink.close(Recording(ended, RATE * call_s, 0.0, (), {}))
            for s in spool.segments(call.call_id):
                parts += wire.split(DEVICE, call.call_id, wire.ObjectRef.segment(s.index),
                                    spool.read_object(call.call_id, s.index))
            parts += wire.split(DEVICE, call.call_id, wire.ObjectRef.manifest(), spool.read_object(call.call_id))
    return parts


def _drain(data: Path, broker: LocalBroker, centre: _Centre, **sync: Any) -> float:
    """Seconds from the uploader's start until the catalogue has nothing unsynced."""
    settings = SyncSection(broker=broker.host, port=broker.port, tls=False, **sync)
    clock = SystemClock()
    spool = _WatchedSpool(data, device_id=DEVICE, clock=clock)
    spool.drained = threading.Event()
    connected = threading.Event()
    uploader: Uploader | None = None

    def on_connected() -> None:
        connected.set()
        if uploader is not None:
            uploader.on_connected()

    link = Link(settings, client_id=DEVICE, data_dir=data, clock=clock, on_connected=on_connected,
                on_disconnected=lambda reason: uploader.on_disconnected(reason) if uploader else None,
                on_message=lambda message: uploader.on_message(message) if uploader else None)
    link.start()
    try:
        if not connected.wait(10):
            raise RuntimeError("the uploader's link did not connect to the loopback broker")
        uploader = Uploader(spool, link, settings, clock=clock)
        started = time.perf_counter()
        uploader.start()
        if not spool.drained.wait(WAIT_S):
            raise RuntimeError(f"the backlog did not drain within {WAIT_S:.0f} s: {uploader.status()}")
        elapsed = time.perf_counter() - started
        uploader.close()
    finally:
        link.close()
        spool.close()
    return elapsed


def _raw_paho(broker: LocalBroker, centre: _Centre, parts: list[wire.Part]) -> float:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    centre.count, centre.expected = 0, len(parts)
    centre.done.clear()
    started = time.perf_counter()
    infos = []
    for part in parts:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = part.user_properties()
        infos.append(client.publish(part.topic, part.payload, qos=1, properties=props))
    for info in infos:
        info.wait_for_publish(WAIT_S)
    if not centre.done.wait(WAIT_S):
        raise RuntimeError(f"the centre received {centre.count} of {len(parts)} raw messages")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


def _window_pairs(work: Path, broker: LocalBroker, parts: list[wire.Part]) -> dict[int, dict[str, Any]]:
    """Per window size: median seconds of the peer and of ours, and the median of the paired ratios."""
    runs: dict[int, list[tuple[float, float, int]]] = {w: [] for w in WINDOWS}
    for _ in range(REPEATS):
        for window in WINDOWS:
            raw_centre = _Centre(broker, acks=False)
            raw_s = _raw_paho(broker, raw_centre, parts)
            raw_centre.close()
            copy = work / "drain"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(work / "hour", copy)
            centre = _Centre(broker, acks=True)
            ours_s = _drain(copy, broker, centre, window=window)
            centre.close()
            runs[window].append((raw_s, ours_s, centre.count))
    return {w: {"raw_paho_qos1_s": round(statistics.median(r for r, _, _ in pairs), 3),
                "ours_s": round(statistics.median(o for _, o, _ in pairs), 3),
                "ratio_ours_to_raw": round(statistics.median(r / o for r, o, _ in pairs), 3),
                "ours_messages_received": min(n for _, _, n in pairs),
                "max_in_flight_bytes": w * wire.MAX_MESSAGE}
            for w, pairs in runs.items()}


def run() -> dict[str, Any]:
    default_window = SyncSection().window
    with tempfile.TemporaryDirectory(prefix="linetap-bench-drain-") as tmp:
        work = Path(tmp)
        parts = _make_backlog(work / "hour", CALLS, CALL_S)
        payload = sum(len(p.payload) for p in parts)
        with LocalBroker(work / "broker", persistence=False) as broker:
            windows = _window_pairs(work, broker, parts)
            cap_calls = max(1, CAP_DRAIN_BYTES // (SEGMENT_BYTES * 60))
            _make_backlog(work / "capped", cap_calls, 600)
            capped = _Centre(broker, acks=True)
            _drain(work / "capped", broker, capped, bandwidth_bytes_s=CAP_BYTES_S)
            capped.close()
    times = [t for t, _ in capped.log]
    sizes = [s for _, s in capped.log]
    measured = sum(sizes[1:]) / (times[-1] - times[0])
    headline = windows[default_window] if default_window in windows else None
    return {
        "backlog": {"recordings": CALLS, "segments": sum(1 for p in parts if p.object.kind == "seg"),
                    "messages": len(parts), "mb": round(payload / 1e6, 2), "call_hours": CALLS * CALL_S / 3600},
        "repeats": REPEATS,
        "default_window": default_window,
        **({} if headline is None else {
            "ours_s": headline["ours_s"],
            "ours_mb_s": round(payload / 1e6 / headline["ours_s"], 1),
            "raw_paho_qos1_s": headline["raw_paho_qos1_s"],
            "raw_paho_mb_s": round(payload / 1e6 / headline["raw_paho_qos1_s"], 1),
            "ratio_ours_to_raw": headline["ratio_ours_to_raw"]}),
        "ratio_target": TARGET_RATIO,
        "by_window": windows,
        "bandwidth_cap": {"cap_bytes_s": CAP_BYTES_S, "bytes": sum(sizes), "seconds": round(times[-1] - times[0], 3),
                          "measured_bytes_s": round(measured), "error": round(measured / CAP_BYTES_S - 1, 4)},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
