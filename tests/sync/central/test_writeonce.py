"""Write-once storage on the real SeaweedFS: a recording's objects locked at ingest before its index row
and ack, a legal hold on every object, and an erase of a COMPLIANCE-locked recording refused before any
tombstone is written or the index says erased."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from s3 import store_section

from central_boxes import Box, make_box
from linetap.sync import wire
from linetap.sync.central.config import CentralConfig, RetentionSection
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.store import ObjectLocked, manifest_key, segment_key
from linetap.sync.central.tools import StoreTools

DAY_S = 86_400
pytestmark = pytest.mark.embedded_only("its tests make their own config: object lock on their own bucket, the index beside it")


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = make_box(tmp_path / "boxes", "desk-lock", load_identity(central))
    with StoreTools(central, config=CentralConfig()) as tools:
        tools.enroll(made.device_id, made.public_key_b64)
    yield made
    made.spool.close()


def locking(seaweed: LocalSeaweed, bucket: str, central: Path, box: Box, *, mode: str = "compliance",
            spare_days: int = 30) -> CentralConfig:
    """A config storing on ``bucket`` with object lock, the default category kept until ``spare_days``
    after today (the box's clock starts in the past, so the lock's date is counted from its start)."""
    days = int((time.time() - box.clock.wall()) // DAY_S) + spare_days
    return CentralConfig(store=store_section(seaweed, bucket, central, object_lock=mode),
                         retention=RetentionSection(default_days=days, flagged_days=days + 365))


def keys_of(box: Box, rid: str) -> list[str]:
    return [segment_key(box.device_id, rid, i) for i, _ in box.segments(rid)] + [manifest_key(box.device_id, rid)]


def head(seaweed: LocalSeaweed, bucket: str, key: str) -> dict:
    return seaweed.client().head_object(Bucket=bucket, Key="site-a/" + key)


def feed(core: Ingest, parts: list[wire.Part]) -> list[wire.Ack]:
    return [ack for part in parts for ack in core.receive(part)]


def test_a_completed_recording_is_locked_to_its_category_before_it_is_indexed(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str) -> None:
    config = locking(seaweed, s3_bucket, central, box)
    plain, flagged = box.call(2.5), box.call(1.5, flagged=True)
    with Ingest(central, clock=clock, config=config) as core:
        acks = feed(core, box.parts(plain) + box.parts(flagged))
        assert {a.status for a in acks} == {"stored"}
        assert core.index.recording(plain)["started_ms"] is not None
        for rid, days in ((plain, config.retention.default_days), (flagged, config.retention.flagged_days)):
            started = dt.datetime.fromtimestamp(core.index.recording(rid)["started_ms"] / 1000, dt.timezone.utc)
            for key in keys_of(box, rid):
                answer = head(seaweed, s3_bucket, key)
                assert answer["ObjectLockMode"] == "COMPLIANCE", key
                assert abs(answer["ObjectLockRetainUntilDate"] - (started + dt.timedelta(days=days))) < \
                    dt.timedelta(seconds=1), key


def test_a_bucket_that_cannot_lock_gets_a_retry_and_no_index_row_or_receipt(
        box: Box, central: Path, clock, seaweed: LocalSeaweed) -> None:
    bucket = seaweed.create_bucket(f"nolock-{box.device_id}", object_lock=False)
    config = locking(seaweed, bucket, central, box)
    rid = box.call(1.5)
    with Ingest(central, clock=clock, config=config) as core:
        acks = feed(core, box.parts(rid))
        final = acks[-1]
        assert (final.object.kind, final.status, final.code) == ("manifest", "retry", "store-unavailable")
        assert "object lock" in final.reason and final.receipt is None
        assert core.index.recording(rid, box.device_id) is None  # no row before the lock
        assert core.index.receipt(box.device_id, rid) is None


def test_erasing_a_compliance_locked_recording_is_refused_before_any_tombstone(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str) -> None:
    config = locking(seaweed, s3_bucket, central, box)
    rid = box.call(1.5)
    with Ingest(central, clock=clock, config=config) as core:
        assert {a.status for a in feed(core, box.parts(rid))} == {"stored"}
    with StoreTools(central, config=config) as tools:
        with pytest.raises(ObjectLocked) as refused:
            tools.erase(rid, "customer request")
        assert refused.value.mode == "COMPLIANCE" and refused.value.until > dt.datetime.now(dt.timezone.utc)
        assert f"recording {rid}" in str(refused.value) and "retained until" in str(refused.value)
        row = tools.index.recording(rid)
        assert row["erased_ms"] is None and row["caller_number"] == "+15551230001"  # nothing marked
        assert [tools.store.get(k) for k in keys_of(box, rid)[:-1]] == [d for _, d in box.segments(rid)]
        due, held = tools.retention_run(RetentionSection(default_days=1))  # a shorter rule than the lock's
        assert (due, held) == ([], [(box.device_id, rid)])
    listed = seaweed.client().list_object_versions(Bucket=s3_bucket)
    assert not [v for v in listed.get("Versions", []) if v["Key"].endswith("tombstone.json")]


def test_a_legal_hold_reaches_every_object_and_is_cleared_from_every_one(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str) -> None:
    config = locking(seaweed, s3_bucket, central, box, mode="governance")
    rid = box.call(1.5)
    with Ingest(central, clock=clock, config=config) as core:
        feed(core, box.parts(rid))
    with StoreTools(central, config=config) as tools:
        tools.set_hold(rid, True, "litigation 42")
        assert {head(seaweed, s3_bucket, k)["ObjectLockLegalHoldStatus"] for k in keys_of(box, rid)} == {"ON"}
        assert tools.index.recording(rid)["hold"]
        tools.set_hold(rid, False)
        assert {head(seaweed, s3_bucket, k)["ObjectLockLegalHoldStatus"] for k in keys_of(box, rid)} == {"OFF"}
        assert not tools.index.recording(rid)["hold"]


def test_a_recording_whose_retention_already_ended_is_stored_unlocked_not_retried_for_ever(
        box: Box, central: Path, clock, seaweed: LocalSeaweed, s3_bucket: str) -> None:
    # An old backlog or a card brought in late: kept 30 days from a start 40 days ago. S3 takes no
    # retain-until in the past, so a lock would make every resend a retry; the recording is due anyway.
    config = CentralConfig(store=store_section(seaweed, s3_bucket, central, object_lock="compliance"),
                           retention=RetentionSection(default_days=30, flagged_days=30))
    rid = box.call(1.5)
    clock.advance(40 * DAY_S)
    with Ingest(central, clock=clock, config=config) as core:
        assert {a.status for a in feed(core, box.parts(rid))} == {"stored"}
        assert core.index.recording(rid) is not None
    for key in keys_of(box, rid):
        assert "ObjectLockMode" not in head(seaweed, s3_bucket, key), key
