"""Faults of a central store on several hosts: two ``serve`` processes with separate folders, one real
PostgreSQL, one real SeaweedFS, one real Mosquitto, a real box uploading multi-part segments.

PostgreSQL restarted mid-ingest, the S3 server restarted mid-ingest, one ``serve`` SIGKILLed mid-object:
afterwards every recording is stored exactly once (one version of each object), byte-identical to the
box's files, the box holds the receipt the index logged, nothing is left staged and ``verify --all`` is
clean. The box's ack timeout is longer than the wait: a recording that completed only because the box
sent everything again (parts staged on a lost host's disk) fails the test.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from central_boxes import Box, make_box
from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.keys import keys_init
from linetap.firmware.spool import CodecParams, Spool, list_recordings
from linetap.firmware.spool.layout import RECEIPT_FILE
from linetap.sync import wire
from linetap.sync.boxsync import BoxSync
from linetap.sync.broker import LocalBroker
from linetap.sync.central.demo_scale import ScaleSite
from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.store import manifest_key, segment_key

WAIT = 60.0
ACK_TIMEOUT_S = 300.0  # far past WAIT: only the store's own staging can finish an object in time
# 22 s at 64 kbit/s: a first segment of about 160 KB (two upload parts) and a short second one.
CODEC = CodecParams(rate=8000, bitrate=64000, segment_s=20.0)
CALLS = 3
CHANGED = threading.Condition()  # the box marked something synced, or a part-level ack went by
_names = itertools.count(1)


class WatchedSpool(Spool):
    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        super().mark_synced(recording_id, index)
        with CHANGED:
            CHANGED.notify_all()


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    with CHANGED:
        return CHANGED.wait_for(predicate, timeout)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path_factory.mktemp("broker")) as started:
        yield started


@pytest.fixture
def site(tmp_path: Path, pg_url: str, seaweed: LocalSeaweed, s3_bucket: str,
         broker: LocalBroker) -> Iterator[ScaleSite]:
    made = ScaleSite(tmp_path / "central", pg_url=pg_url, s3_endpoint=seaweed.endpoint,
                     s3_keys=(seaweed.access_key, seaweed.secret_key), bucket=s3_bucket, broker_port=broker.port,
                     name=f"faults{next(_names)}")
    yield made
    codes = made.stop()
    assert not any(codes.values()), {h.name: c for h, c in codes.items()}  # every serve stopped cleanly


@pytest.fixture
def box(tmp_path: Path, site: ScaleSite) -> Box:
    """A box trusting the store's receipts, enrolled, with CALLS recorded calls of multi-part segments."""
    from linetap.sync.central.keys import load_identity

    made = make_box(tmp_path / "boxes", f"lt-scale-{next(_names)}", load_identity(site.hosts[0]))
    keys_init(made.data_dir, site.keys.recipient, store_key=site.keys.store_public_key_b64)
    site.enroll(made.device_id, made.public_key_b64)
    for _ in range(CALLS):
        made.call(22, codec=CODEC)
    made.spool.close()
    return made


class Uploading:
    """The box's BoxSync over the broker, and a listener that counts part-level acks to it."""

    def __init__(self, box: Box, port: int) -> None:
        config = Config().model_copy(update={
            "device": Config().device.model_copy(update={"id": box.device_id}),
            "sync": Config().sync.model_copy(update={"broker": "127.0.0.1", "port": port, "tls": False,
                                                      "reconnect_max_s": 1.0, "ack_timeout_s": ACK_TIMEOUT_S,
                                                      "bandwidth_bytes_s": 300_000, "window": 4})})
        self.box = box
        self.spool = WatchedSpool(box.data_dir, device_id=box.device_id, clock=SystemClock(),
                                  disk_free=lambda _p: 10 ** 12)
        self.sync = BoxSync(config, self.spool, box.data_dir, clock=SystemClock())
        self.part_acks = 0
        self._listener = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self._listener.on_message = self._heard
        self._listener.connect("127.0.0.1", port)
        self._listener.subscribe(wire.ack_filter(box.device_id), qos=1)
        self._listener.loop_start()

    def _heard(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        ack = wire.parse_ack(message.topic, message.payload, self.box.device_id)
        if ack.part is not None and ack.status == "stored":
            with CHANGED:
                self.part_acks += 1
                CHANGED.notify_all()

    def synced(self) -> int:
        return sum(r["state"] == "synced" for r in list_recordings(self.box.data_dir))

    def __enter__(self) -> Uploading:
        self.sync.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync.close()
        self.spool.close()
        self._listener.loop_stop()
        self._listener.disconnect()


def assert_stored_exactly_once(site: ScaleSite, box: Box, seaweed: LocalSeaweed, bucket: str, pg_url: str) -> None:
    """Each object one version in the bucket, byte-identical to the box's; receipts kept; verify clean."""
    client = seaweed.client()
    versions = [v["Key"] for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket)
                for v in page.get("Versions", [])]
    expected = {}
    for rid in box.calls:
        expected["site/" + manifest_key(box.device_id, rid)] = box.manifest(rid)
        for index, data in box.segments(rid):
            expected["site/" + segment_key(box.device_id, rid, index)] = data
    assert sorted(versions) == sorted(expected)  # nothing twice, nothing missing, nothing else
    for key, data in expected.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key
    with PgIndex(pg_url) as index:
        assert index.staged() == []
        for rid in box.calls:
            logged = index.receipt(box.device_id, rid)
            assert logged is not None and (box.folder(rid) / RECEIPT_FILE).read_bytes() == logged["data"]
    done = site.verify(site.hosts[1])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("server", ["postgresql", "s3"])
def test_a_server_restarted_mid_ingest(server: str, site: ScaleSite, box: Box, broker: LocalBroker,
                                       request: pytest.FixtureRequest, seaweed: LocalSeaweed, s3_bucket: str,
                                       pg_url: str) -> None:
    restart = request.getfixturevalue("postgres").restart if server == "postgresql" else seaweed.restart
    for host in site.hosts:
        site.start(host)
    with Uploading(box, broker.port) as up:
        assert wait_for(lambda: up.part_acks >= 1)
        restart()
        assert up.synced() < CALLS
        assert wait_for(lambda: up.synced() == CALLS), up.sync.status()
    assert_stored_exactly_once(site, box, seaweed, s3_bucket, pg_url)


def test_one_serve_killed_mid_object_and_its_disk_lost_the_object_completes(site: ScaleSite, box: Box, broker: LocalBroker,
                                                                 seaweed: LocalSeaweed, s3_bucket: str,
                                                                 pg_url: str) -> None:
    first, second = site.hosts
    site.start(first)
    with Uploading(box, broker.port) as up:
        assert wait_for(lambda: up.part_acks >= 1)  # the first host staged a part of an object, not all of it
        site.kill(first)
        with PgIndex(pg_url) as index:
            left = index.staged()
        assert left and all(s["parts"] >= 1 for s in left)  # durable in the shared index, not on its disk
        site.wipe(first)  # its disk is lost with it: what it staged survives only in the shared index
        site.start(second)
        site.start(first)  # rebuilt under its name: its broker session holds what it had not acknowledged
        assert wait_for(lambda: up.synced() == CALLS), up.sync.status()
    assert_stored_exactly_once(site, box, seaweed, s3_bucket, pg_url)
