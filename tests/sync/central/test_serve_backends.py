"""``linetap-central serve`` on PostgreSQL + S3: its worker processes open the index and bucket the
config names in their own process, and a part published to the broker ends up in both."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3 import store_toml
from test_hostile_ingest import DEVICE, Box, make_central, recording_id, serve_process, settings_for, stop

from central_boxes import central_index, stored_keys, stored_object
from linetap.sync import wire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.ingestworker import IngestWorker
from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.store import segment_key

pytestmark = pytest.mark.broker("session")


def test_serve_with_worker_processes_stores_in_the_bucket_and_indexes_in_postgres(
        broker: LocalBroker, tmp_path: Path, pg_url: str, seaweed: LocalSeaweed, s3_bucket: str) -> None:
    central = tmp_path / "central"
    central.mkdir(mode=0o700)
    (central / "central.toml").write_text(
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nworkers = 2\n'
        'group = "serve-s3"\nclient_id = "serve-s3"\n'
        f'[index]\nurl = "{pg_url}"\npool_size = 2\n' + store_toml(seaweed, s3_bucket, central))
    make_central(central)  # keys, and the device enrolled in the PostgreSQL index the config names
    with Ingest(central) as core:  # both worker sessions exist before the publish, so the broker keeps it
        for n in range(2):
            IngestWorker(core, settings_for(broker), group="serve-s3", client_id=f"serve-s3-{n}").start().close()
    box = Box(broker, "serve-s3-box")
    part = wire.split(DEVICE, recording_id(7), wire.ObjectRef.segment(0), b"a segment for the bucket")[0]
    try:
        box.publish(part.topic, part.payload, part.user_properties())
        proc = serve_process(central)
        try:
            acks = box.acks_until(recording_id(7))
        finally:
            code, errors = stop(proc)
    finally:
        box.close()
    assert code == 0, errors
    assert [(a.status, a.code) for a in acks] == [("stored", None)]
    key = segment_key(DEVICE, recording_id(7), 0)
    assert stored_keys(central) == [key] and stored_object(central, key) == b"a segment for the bucket"
    assert not (central / "objects").exists() and not (central / "index.db").exists()
    with central_index(central) as index:
        assert index.object(DEVICE, recording_id(7), "seg/0")["stored_ms"] is not None
