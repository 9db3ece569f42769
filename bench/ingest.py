"""Central ingest rate with 1 and 2 worker processes, for 20 simulated devices.

Setup per run: a loopback Mosquitto, a fresh central data dir with 20 devices
enrolled, and ``run_workers(n, ..., processes=True)`` with the real
:class:`~linetap.sync.central.ingest.Ingest` (hash check, claim in the SQLite
index, durable write of the object: temp file, fsync, rename, fsync of the
folder; then the ack published at QoS 1). Each worker holds its first part
until a start signal, so the backlog is already queued at the broker when the
clock starts: 20 devices x 40 segments of 30 KB (a 10 s segment at 24
kbit/s, plus age overhead), each a one-part upload message. The figure is
parts per second from the start signal until an observer has seen every
object-level ack.

Comparison in the same run: the same backlog through 1 and through 2 worker
processes; target 2 workers >= 1.8x of 1. Two workers can only scale if the
machine has a core for each besides the broker's, so ``cpus`` is reported.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linetap.firmware.keys import public_key_b64
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init
from linetap.sync.central.worker import BrokerSettings, run_workers

DEVICES = 20
RECORDINGS_PER_DEVICE = 4
SEGMENTS_PER_RECORDING = 10
SEGMENT_BYTES = 30_000
TARGET_SPEEDUP = 1.8
WAIT_S = 120.0


class GatedIngest:
    """The real Ingest, holding the first part until the benchmark starts its clock."""

    def __init__(self, data_dir: Path, go: threading.Event) -> None:
        self._ingest = Ingest(data_dir)
        self._go = go

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        self._go.wait(WAIT_S)
        return self._ingest.receive(part)

    def close(self) -> None:
        self._ingest.close()


def _backlog() -> list[wire.Part]:
    parts = []
    for d in range(DEVICES):
        for _ in range(RECORDINGS_PER_DEVICE):
            rid = str(uuid.uuid4())
            for index in range(SEGMENTS_PER_RECORDING):
                parts += wire.split(f"bench-{d:02d}", rid, wire.ObjectRef.segment(index),
                                    os.urandom(SEGMENT_BYTES))
    return parts


def _enroll(data_dir: Path) -> None:
    with Ingest(data_dir) as ingest:
        for d in range(DEVICES):
            key = public_key_b64(Ed25519PrivateKey.generate().public_key())
            ingest.index.enroll(f"bench-{d:02d}", key, int(time.time() * 1000))


class AckCounter:
    """One client reading every device's acks; ``done`` once all objects are acknowledged stored."""

    def __init__(self, broker: LocalBroker, expected: int) -> None:
        self.expected = expected
        self.stored = 0
        self.other: list[str] = []
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-acks", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{wire.ROOT}/+/ack/#", qos=1)
        self.client.loop_start()
        subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[2]
        ack = wire.parse_ack(msg.topic, msg.payload, device)
        if ack.part is None and ack.status == "stored":
            self.stored += 1
            if self.stored >= self.expected:
                self.done.set()
        elif ack.part is None:
            self.other.append(f"{ack.status}/{ack.code}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: LocalBroker, parts: list[wire.Part]) -> None:
    clients: dict[str, mqtt.Client] = {}
    pending = []
    for part in parts:
        client = clients.get(part.device_id)
        if client is None:
            client = clients[part.device_id] = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=part.device_id, protocol=mqtt.MQTTv5)
            client.max_inflight_messages_set(100)
            client.connect(broker.host, broker.port)
            client.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = part.user_properties()
        pending.append(client.publish(part.topic, part.payload, qos=1, properties=props))
    for info in pending:
        info.wait_for_publish(WAIT_S)
    for client in clients.values():
        client.disconnect()
        client.loop_stop()


def _run_once(workers: int, work: Path, parts: list[wire.Part]) -> dict:
    data_dir = work / f"central-{workers}"
    data_dir.mkdir()
    keys_init(data_dir)  # Ingest needs the store key (manifest receipts) to start
    _enroll(data_dir)
    go = multiprocessing.get_context("spawn").Event()
    with LocalBroker(work / f"broker-{workers}", persistence=False) as broker:
        settings = BrokerSettings(host=broker.host, port=broker.port, tls=False)
        counter = AckCounter(broker, len(parts))
        try:
            with run_workers(workers, functools.partial(GatedIngest, data_dir, go), settings,
                             group=f"bench{workers}", client_id_prefix=f"bench{workers}",
                             processes=True) as group:
                if not group.wait_ready(30):
                    raise RuntimeError(f"ingest workers did not connect:\n{broker.log_tail()}")
                _publish(broker, parts)
                start = time.perf_counter()
                go.set()
                finished = counter.done.wait(WAIT_S)
                seconds = time.perf_counter() - start
        finally:
            counter.close()
    if not finished or counter.other:
        raise RuntimeError(f"{workers} worker(s): {counter.stored} of {len(parts)} stored; "
                           f"other acks: {counter.other[:5]}")
    stored = sum(1 for _ in (data_dir / "objects").rglob("*.age"))
    megabytes = len(parts) * SEGMENT_BYTES / 1e6
    return {"seconds": round(seconds, 3), "parts_per_s": round(len(parts) / seconds, 1),
            "mb_per_s": round(megabytes / seconds, 2), "objects_on_disk": stored}


def run() -> dict:
    parts = _backlog()
    with tempfile.TemporaryDirectory(prefix="linetap-bench-ingest-") as tmp:
        work = Path(tmp)
        one = _run_once(1, work, parts)
        two = _run_once(2, work, parts)
    speedup = two["parts_per_s"] / one["parts_per_s"]
    return {
        "store": "real Ingest (sync/central/ingest.py), segments only",
        "devices": DEVICES,
        "parts": len(parts),
        "part_bytes": SEGMENT_BYTES,
        "cpus": os.cpu_count(),
        "workers_1": one,
        "workers_2": two,
        "speedup_2_vs_1": round(speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": speedup >= TARGET_SPEEDUP,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
