"""Fetching a release on the box: the update thread against a bare receiver of the same chunks.

Release: :func:`bench.chunks.bench_release` (a 24 MB wheel of random bytes and a small one, signed,
128 KiB chunks),
answered by the bare responder of :mod:`bench.chunks` (frames already in
memory), so the centre costs both sides the same.

Ours: the box's :class:`~linetap.sync.updater.Updater` with its own link:
the offer opened and verified, every chunk asked for (window
:data:`linetap.sync.update.WINDOW`), checked against the signed digests,
written to ``.part`` and fsynced with its index, each file hashed whole and
renamed, the release staged (links) and ``request.json`` written; the clock
stops at the state ``preparing``.

Peer, in the same run through the same broker and responder: the bare box of
:mod:`bench.chunks` (asks with the same window, unpacks each frame, keeps
nothing). Figures: seconds, MB/s, the process's CPU seconds for each (the
responder runs in this process for both, so the difference is the box's own
cost), and the peer's time over ours.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import public_key_b64
from linetap.sync import updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.link import Link
from linetap.sync.signed import seal
from linetap.sync.update import WINDOW
from linetap.sync.updater import Updater, python_tag

from .chunks import DEVICE, Responder, _Box, bench_release

REPEATS = 3
WAIT_S = 120.0


def _ours(broker: LocalBroker, work: Path, kept, key: Ed25519PrivateKey, operator: Ed25519PrivateKey,
          run: int) -> float:
    data = work / f"box-{run}"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "operator.pub").write_text(public_key_b64(operator.public_key()) + "\n")
    (data / "keys" / "release.pub").write_text(public_key_b64(key.public_key()) + "\n")
    defaults = Config()
    config = defaults.model_copy(update={
        "device": defaults.device.model_copy(update={"id": DEVICE}),
        "sync": defaults.sync.model_copy(update={"broker": broker.host, "port": broker.port, "tls": False}),
        "spool": defaults.spool.model_copy(update={"min_free_mb": 16})})
    holder: list[Updater] = []
    link = Link(config.sync, client_id=f"{DEVICE}-{run}", data_dir=data, clock=SystemClock(),
                on_connected=lambda: holder[0].on_connected(), on_message=lambda m: holder[0].on_message(m))
    updater = Updater(config, link, data, clock=SystemClock(), app_root=work / f"app-{run}",
                      uploads_pending=lambda: False, factory_wheels=work / "none")
    holder.append(updater)
    offer = seal("update", DEVICE, updatewire.offer_body(kept.release.data, kept.signature, rollout="bench"),
                 operator, seq=run + 1, now_ms=int(time.time() * 1000), ttl_ms=3_600_000)
    with updater, link:
        while not link.connected:
            time.sleep(0.01)
        started = time.perf_counter()
        updater.on_message(_Inbound(updatewire.offer_topic(DEVICE), offer))
        while updater.core.state != "preparing":
            if updater.core.state in ("refused", "failed") or time.perf_counter() - started > WAIT_S:
                raise RuntimeError(f"the box's update is {updater.core.state}: {updater.core.report()}")
            time.sleep(0.005)
        return time.perf_counter() - started


class _Inbound:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


def _timed(fetch) -> tuple[float, float]:
    cpu = time.process_time()
    seconds = fetch()
    return seconds, time.process_time() - cpu


def run() -> dict:
    key, operator = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        _store, kept, frames = bench_release(work, key, machine=os.uname().machine, python=python_tag())
        megabytes = kept.release.size / 1e6
        with LocalBroker(work / "broker", persistence=False) as broker:
            responder = Responder(broker, frames, "bench-fetch-responder")
            try:
                pairs = [(_timed(lambda: _Box(broker, list(frames), kept.release_id).fetch()),
                          _timed(lambda n=n: _ours(broker, work, kept, key, operator, n)))
                         for n in range(REPEATS)]
            finally:
                responder.close()
    peer, ours = (statistics.median(p[0] for p, _ in pairs), statistics.median(o[0] for _, o in pairs))
    peer_cpu, ours_cpu = (statistics.median(p[1] for p, _ in pairs), statistics.median(o[1] for _, o in pairs))
    return {"release_mb": round(megabytes, 1), "chunks": len(frames), "window": WINDOW,
            "bytes_fetched": sum(len(f) for f in frames.values()),
            "ours_s": round(ours, 3), "ours_mb_s": round(megabytes / ours, 1), "ours_cpu_s": round(ours_cpu, 2),
            "peer_s": round(peer, 3), "peer_mb_s": round(megabytes / peer, 1), "peer_cpu_s": round(peer_cpu, 2),
            "peer_over_ours": round(peer / ours, 2)}
