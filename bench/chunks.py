"""Serving a release: the centre's chunk server against raw paho publishing of the same bytes.

Release: one wheel of :data:`RELEASE_MB` MB of random bytes and a small one,
built and signed in a temporary central data dir
(:class:`~linetap.sync.central.releases.ReleaseStore`), 128 KiB chunks.

Ours: a :class:`~linetap.sync.central.chunkserver.ChunkServer` on a loopback
Mosquitto; one box (a paho client) asks for every chunk of every file with
:data:`WINDOW` requests outstanding, as the box's fetcher does, and the clock
stops when it holds every chunk. Each chunk is read from the kept file,
checked against the signed manifest and framed. Measured twice: without a
rate bound (the server's own cost) and with the default per-box bound
(:data:`~linetap.sync.central.chunkserver.CHUNKS_PER_S`, what one box gets).

Peer, in the same run through the same broker and the same box: a bare
responder, one paho client whose network thread queues each request and one
thread that answers it with the frame already in memory (no file, no check,
no per-box bound, no round robin). The figure is the peer's time over ours without the bound.
"""

from __future__ import annotations

import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.sync import release, updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.chunkserver import CHUNKS_PER_S, ChunkServer
from linetap.sync.central.releases import KeptRelease, ReleaseStore
from linetap.sync.mqtt import BrokerSettings

RELEASE_MB = 24
WINDOW = 4  # the box fetcher's (sync/update.py)
REPEATS = 3
WAIT_S = 120.0
DEVICE = "bench-box"


def _client(broker: LocalBroker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


class _Box:
    """Receives chunk frames; asks for the next one as each arrives, ``WINDOW`` outstanding."""

    def __init__(self, broker: LocalBroker, wanted: list[tuple[str, int]], release_id: str) -> None:
        self.wanted, self.release_id = wanted, release_id
        self.done = threading.Event()
        self.got = 0
        self._next = 0
        self._lock = threading.Lock()
        subscribed: queue.Queue[int] = queue.Queue()
        self.client = _client(broker, f"{DEVICE}-{os.getpid()}")
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self.client.on_message = self._on_message
        self.client.subscribe(updatewire.chunk_topic(DEVICE), qos=1)
        subscribed.get(timeout=10)

    def ask(self, count: int) -> None:
        with self._lock:
            start, self._next = self._next, min(len(self.wanted), self._next + count)
        for sha, index in self.wanted[start:self._next]:
            self.client.publish(updatewire.get_topic(DEVICE), updatewire.get_payload(self.release_id, sha, index),
                                qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        release.unpack_chunk(msg.payload)
        self.got += 1
        if self.got >= len(self.wanted):
            self.done.set()
        else:
            self.ask(1)

    def fetch(self) -> float:
        """Seconds to receive every chunk wanted, ``WINDOW`` requests outstanding."""
        try:
            started = time.perf_counter()
            self.ask(WINDOW)
            if not self.done.wait(WAIT_S):
                raise RuntimeError(f"the box had {self.got} of {len(self.wanted)} chunks after {WAIT_S:.0f} s")
            return time.perf_counter() - started
        finally:
            self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ours(broker: LocalBroker, store: ReleaseStore, kept: KeptRelease, rate: float) -> float:
    settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=30)
    wanted = [(f.sha256, i) for f in kept.release.files for i in range(len(f.chunks))]
    with ChunkServer(store, settings, client_id=f"bench-chunks-{rate:.0f}", rate=rate, burst=WINDOW) as server:
        server.wait_ready(10)
        return _Box(broker, wanted, kept.release_id).fetch()


class Responder:
    """A bare responder: answers each request with the frame already in memory (no file, no check, no
    per-box bound); paho's thread only queues, as in ours (a publish from it waits for its loop)."""

    def __init__(self, broker: LocalBroker, frames: dict[tuple[str, int], bytes], client_id: str) -> None:
        self.frames = frames
        self.client = _client(broker, client_id)
        subscribed: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self._asked: queue.Queue[bytes | None] = queue.Queue()
        self.client.on_message = lambda _c, _u, msg: self._asked.put(msg.payload)
        self._thread = threading.Thread(target=self._answer, name=client_id)
        self._thread.start()
        self.client.subscribe(updatewire.get_topic(DEVICE), qos=1)
        subscribed.get(timeout=10)

    def _answer(self) -> None:
        while (payload := self._asked.get()) is not None:
            get = updatewire.read_get(payload)
            self.client.publish(updatewire.chunk_topic(DEVICE), self.frames[(get.file_sha256, get.chunk)], qos=1)

    def close(self) -> None:
        self._asked.put(None)
        self._thread.join()
        self.client.disconnect()
        self.client.loop_stop()


def _peer(broker: LocalBroker, kept: KeptRelease, frames: dict[tuple[str, int], bytes]) -> float:
    responder = Responder(broker, frames, "bench-peer")
    try:
        return _Box(broker, list(frames), kept.release_id).fetch()
    finally:
        responder.close()


def bench_release(work: Path, key: Ed25519PrivateKey, **build) -> tuple[ReleaseStore, KeptRelease,
                                                                       dict[tuple[str, int], bytes]]:
    """The benchmark's release kept under ``work``, and its chunk frames by (file, index)."""
    wheels = work / "wheels"
    wheels.mkdir()
    (wheels / "linetap-9.0.0-py3-none-any.whl").write_bytes(os.urandom(RELEASE_MB * 1_000_000))
    (wheels / "dep-1.0-py3-none-any.whl").write_bytes(os.urandom(200_000))
    store = ReleaseStore(work / "central")
    kept, _ = store.build(key, wheels, now_ms=int(time.time() * 1000), **build)
    frames = {(f.sha256, i): release.pack_chunk(kept.release_id, f.sha256, i,
                                                 store.chunk(kept.release_id, f.sha256, i))
              for f in kept.release.files for i in range(len(f.chunks))}
    return store, kept, frames


def run() -> dict:
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        store, kept, frames = bench_release(work, Ed25519PrivateKey.generate())
        megabytes = kept.release.size / 1e6
        with LocalBroker(work / "broker", persistence=False) as broker:
            pairs = [(_peer(broker, kept, frames), _ours(broker, store, kept, 1e9)) for _ in range(REPEATS)]
            bounded = _ours(broker, store, kept, CHUNKS_PER_S)
    peer = statistics.median(p for p, _ in pairs)
    ours = statistics.median(o for _, o in pairs)
    return {"release_mb": round(megabytes, 1), "chunks": len(frames), "window": WINDOW,
            "ours_s": round(ours, 3), "ours_mb_s": round(megabytes / ours, 1),
            "peer_s": round(peer, 3), "peer_mb_s": round(megabytes / peer, 1),
            "peer_over_ours": round(peer / ours, 2),
            "one_box_default_rate_mb_s": round(megabytes / bounded, 2),
            "default_rate_cap_mb_s": round(CHUNKS_PER_S * release.CHUNK_SIZE / 1e6, 2)}
