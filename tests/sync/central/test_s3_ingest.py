"""The real ingest core and operator tools on the S3 store: stored once, byte-identical, verified, erased;
the S3 server stopped mid-recording means retries, never a lost or doubled object."""

from __future__ import annotations

from pathlib import Path

import pytest

from central_boxes import BIG_CODEC, Box, make_box
from linetap.sync import wire
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.store import manifest_key, segment_key
from linetap.sync.central.tools import StoreTools

pytestmark = pytest.mark.embedded_only("picks its index and store itself: one run is enough")


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = make_box(tmp_path / "boxes", "desk-s3", load_identity(central))
    with StoreTools(central) as tools:
        tools.enroll(made.device_id, made.public_key_b64)
    yield made
    made.spool.close()


def feed(core: Ingest, parts: list[wire.Part]) -> list[wire.Ack]:
    return [ack for part in parts for ack in core.receive(part)]


def bucket_keys(seaweed: LocalSeaweed, bucket: str) -> list[str]:
    """Every object version in the bucket, by key (a key twice means a doubled write)."""
    page = seaweed.client().list_object_versions(Bucket=bucket)
    return sorted(v["Key"] for v in page.get("Versions", []))


def test_ingest_stores_each_object_once_on_s3_and_the_tools_read_it_back(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str, s3_store: S3Store) -> None:
    rid = box.call(3.5)
    with Ingest(central, clock=clock, store=s3_store) as core:
        acks = feed(core, box.parts(rid) + box.parts(rid))  # everything twice, as a box resending would
    assert {a.status for a in acks} == {"stored"}
    expected = [segment_key(box.device_id, rid, i) for i, _ in box.segments(rid)] + [manifest_key(box.device_id, rid)]
    assert bucket_keys(seaweed, s3_bucket) == sorted("site-a/" + k for k in expected)
    for index, data in box.segments(rid):
        assert s3_store.get(segment_key(box.device_id, rid, index)) == data
    with StoreTools(central, store=s3_store) as tools:
        [report] = tools.verify(rid)
        assert report.ok, report.problems
        tombstone = tools.erase(rid, "customer request")
    assert bucket_keys(seaweed, s3_bucket) == ["site-a/" + tombstone]  # every version of every object gone


def test_the_s3_server_stopped_mid_recording_means_retry_then_exactly_once(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str, s3_store: S3Store) -> None:
    rid = box.call(25, codec=BIG_CODEC)  # multi-part segments: staged per part, joined, then put
    parts = box.parts(rid)
    half = len(parts) // 2
    with Ingest(central, clock=clock, store=s3_store) as core:
        first = feed(core, parts[:half])
        seaweed.stop()
        try:
            during = feed(core, parts[half:])
        finally:
            seaweed.start()
        segments_during = [a for a in during if a.part is None and a.object.kind == "seg"]
        assert segments_during and {(a.status, a.code) for a in segments_during} == {("retry", "store-unavailable")}
        assert "stored" not in {a.status for a in during if a.part is None}  # nothing acked unstored
        assert core.index.recording(rid) is None  # the manifest waits for its segments
        again = feed(core, parts)  # the box resends what was not acknowledged (and more)
    finals = {a.object: a.status for a in first + again if a.part is None}
    assert set(finals.values()) == {"stored"} and wire.ObjectRef.manifest() in finals
    keys = bucket_keys(seaweed, s3_bucket)
    assert len(keys) == len(set(keys)) == len(box.segments(rid)) + 1  # each object once, one version each
    with StoreTools(central, store=s3_store) as tools:
        [report] = tools.verify(rid)
    assert report.ok, report.problems
