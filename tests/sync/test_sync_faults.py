"""Box to central store through a real Mosquitto, with the faults of a real office.

The box is the real spool, link and uploader (``BoxSync``); the centre is the
real ingest behind real workers (in-process, or ``linetap-central serve`` in a
subprocess where it must be killed). After each fault every recording must be
at the centre exactly once, byte-identical, and ``verify`` must be clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from linetap.firmware.callflow import CallEvent, CallRecord, uuid7
from linetap.firmware.clock import ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink, list_recordings
from linetap.sync.boxsync import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import keys_init as central_keys_init
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.worker import BrokerSettings, IngestWorker
from netproxy import Proxy

DEVICE = "lt-faults-1"
RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=1.0)
CALLS = 6
WAIT = 60.0
SYNCED = threading.Condition()  # notified whenever the box's catalogue marks something synced


class WatchedSpool(Spool):
    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        super().mark_synced(recording_id, index)
        with SYNCED:
            SYNCED.notify_all()


def synced_count(box: Path) -> int:
    return sum(row["state"] == "synced" for row in list_recordings(box))


def wait_synced(box: Path, count: int) -> bool:
    with SYNCED:
        return SYNCED.wait_for(lambda: synced_count(box) >= count, WAIT)


def record_calls(box: Path, seconds: float = 4.0) -> list[str]:
    clock = ManualClock()
    ids = []
    with Spool(box, device_id=DEVICE, clock=clock, disk_free=lambda _p: 10 ** 12) as spool:
        for n in range(CALLS):
            sink = SpoolSink(spool, CODEC)
            call = CallRecord(uuid7(), clock.monotonic(), clock.wall(), True, flagged=n == 4)
            t = np.arange(int(RATE * seconds)) / RATE
            frames = (np.stack([np.sin(2 * np.pi * (300 + 40 * n) * t), np.sin(2 * np.pi * 700 * t)], axis=1)
                      * 5000).astype(np.int16)
            sink.open(call)
            for start in range(0, len(frames), 160):
                sink.write(frames[start:start + 160])
                clock.advance(0.02)
            ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                                  "ended_mono": clock.monotonic(),
                                  "events": (CallEvent(0.0, "announcement-start", {}),)})
            sink.close(Recording(ended, len(frames), 0.0, (), {}))
            ids.append(call.call_id)
            clock.advance(30)
    return ids


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    central, box = tmp_path / "central", tmp_path / "box"
    recipient = central_keys_init(central).recipient
    info = keys_init(box, recipient)
    with StoreTools(central) as tools:
        tools.enroll(DEVICE, info.public_key_b64)
    yield central, box, record_calls(box)


def box_sync(box: Path, port: int, **sync: object) -> tuple[BoxSync, Spool]:
    config = Config().model_copy(update={
        "device": Config().device.model_copy(update={"id": DEVICE}),
        "sync": Config().sync.model_copy(update={"broker": "127.0.0.1", "port": port, "tls": False,
                                                  "reconnect_max_s": 1.0, **sync})})
    spool = WatchedSpool(box, device_id=DEVICE, clock=SystemClock(), disk_free=lambda _p: 10 ** 12)
    return BoxSync(config, spool, box, clock=SystemClock()), spool


def assert_exactly_once(central: Path, box: Path, ids: list[str]) -> None:
    assert synced_count(box) == len(ids)
    with StoreTools(central) as tools:
        [report] = tools.verify()
        assert report.ok and report.recordings == len(ids) and not report.missing, report.as_dict()
        for rid in ids:
            row = tools.index.recording(rid)
            assert row is not None and row["device_id"] == DEVICE
            stored = tools.store.path(row["manifest_key"]).parent
            on_box = sorted(p.name for p in (box / "spool" / rid).iterdir())
            assert sorted(p.name for p in stored.iterdir()) == on_box  # nothing twice, nothing extra
            for name in on_box:
                assert (stored / name).read_bytes() == (box / "spool" / rid / name).read_bytes()


def central_worker(central: Path, port: int) -> IngestWorker:
    return IngestWorker(Ingest(central), BrokerSettings(host="127.0.0.1", port=port, tls=False),
                        client_id="faults-central-0").start()


def test_a_broker_stopped_mid_upload_and_restarted(site, tmp_path: Path) -> None:
    central, box, ids = site
    broker = LocalBroker(tmp_path / "broker").start()
    # Mosquitto does not restore shared subscriptions from its persistence file: what the box
    # resends before the workers have resubscribed reaches nobody and goes again after the ack timeout.
    sync, spool = box_sync(box, broker.port, bandwidth_bytes_s=20_000, window=2, ack_timeout_s=2.0)
    try:
        with central_worker(central, broker.port), sync:
            assert wait_synced(box, 1)
            broker.stop()
            assert synced_count(box) < len(ids)
            broker.start()
            assert wait_synced(box, len(ids)), sync.status()
    finally:
        spool.close()
        broker.stop()
    assert_exactly_once(central, box, ids)


def test_a_central_store_killed_mid_ingest_and_restarted(site, tmp_path: Path) -> None:
    central, box, ids = site
    config = tmp_path / "central.toml"
    with LocalBroker(tmp_path / "broker") as broker:
        config.write_text(f"[broker]\nhost = \"127.0.0.1\"\nport = {broker.port}\nworkers = 1\n"
                          f"client_id = \"faults-central\"\n")
        command = [sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(central), "serve",
                   "--config", str(config)]
        serve = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sync, spool = box_sync(box, broker.port, bandwidth_bytes_s=20_000, window=2, ack_timeout_s=2.0)
        try:
            with sync:
                assert wait_synced(box, 1)
                os.kill(serve.pid, signal.SIGKILL)
                serve.wait(10)
                assert synced_count(box) < len(ids)
                serve = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                assert wait_synced(box, len(ids)), sync.status()
        finally:
            spool.close()
            serve.send_signal(signal.SIGTERM)
            _, err = serve.communicate(timeout=20)
        assert serve.returncode == 0, err.decode()[-2000:]
    assert_exactly_once(central, box, ids)


def test_a_flapping_connection(site, tmp_path: Path) -> None:
    central, box, ids = site
    with LocalBroker(tmp_path / "broker") as broker:
        proxy = Proxy(broker.port)
        sync, spool = box_sync(box, proxy.port, bandwidth_bytes_s=30_000, window=3, ack_timeout_s=2.0)
        try:
            with central_worker(central, broker.port), sync:
                for done in range(1, 4):  # cut the box's connection each time another call is through
                    assert wait_synced(box, done)
                    proxy.cut()
                assert wait_synced(box, len(ids)), sync.status()
        finally:
            spool.close()
            proxy.close()
    assert_exactly_once(central, box, ids)
