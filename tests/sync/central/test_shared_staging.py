"""Shared staging: staged bytes in the index, alike on both backends, and two ingest hosts with separate
data dirs joining each other's parts through one PostgreSQL and one S3 bucket."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central_boxes import BIG_CODEC, Box, enrolled
from linetap.sync import wire
from linetap.sync.central.index import SCHEMA_VERSION, IndexTables, SqliteIndex
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.locals3 import LocalSeaweed
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.s3store import S3Store
from linetap.sync.central.staging import Staging
from linetap.sync.central.store import DurableFiles, segment_key

SHA_A, SHA_B = "a" * 64, "b" * 64

pytestmark = pytest.mark.embedded_only("picks its index and store itself: one run is enough")


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "index.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def open_index(location: str) -> IndexTables:
    return PgIndex(location) if location.startswith("postgresql://") else SqliteIndex(Path(location))


@pytest.fixture
def index(location: str) -> Iterator[IndexTables]:
    with open_index(location) as opened:
        yield opened


def test_staged_bytes_live_with_their_rows_alike_on_both_backends(index: IndexTables) -> None:
    index.stage_part("box-a", "r1", "seg/0", SHA_A, 1, b"\x00second", 10)
    index.stage_part("box-a", "r1", "seg/0", SHA_A, 0, b"first", 20)
    index.stage_part("box-a", "r1", "seg/0", SHA_A, 0, b"first!", 30)  # sent again: replaced
    index.stage_part("box-a", "r1", "seg/0", SHA_B, 0, b"other version", 30)
    index.stage("box-a", "r1", "seg/0", SHA_A, 2, 99, 30)  # a file-staged part: no bytes here
    assert index.staged_count("box-a", "r1", "seg/0", SHA_A) == 2
    assert index.staged_parts("box-a", "r1", "seg/0", SHA_A) == [(0, b"first!"), (1, b"\x00second")]
    assert index.staged_parts("box-b", "r1", "seg/0", SHA_A) == []
    assert index.held_bytes("box-a") == 6 + 7 + 13 + 99
    assert [(s["sha256"], s["parts"], s["last_ms"]) for s in index.staged()] == [(SHA_A, 3, 30), (SHA_B, 1, 30)]
    index.unstage("box-a", "r1", "seg/0", SHA_A)
    assert index.staged_count("box-a", "r1", "seg/0", SHA_A) == 0
    assert index.held_bytes("box-a") == 13


def test_the_newest_waiting_manifest_is_the_pending_one(index: IndexTables) -> None:
    assert index.staged_pending("box-a", "r1") is None
    index.stage_part("box-a", "r1", "pending-manifest", SHA_B, 0, b'{"old": 1}', 10)
    index.stage_part("box-a", "r1", "pending-manifest", SHA_A, 0, b'{"new": 2}', 20)
    index.stage_part("box-a", "r1", "seg/0", SHA_A, 0, b"not a manifest", 30)
    assert index.staged_pending("box-a", "r1") == b'{"new": 2}'
    assert index.staged_pending("box-a", "r2") is None
    index.unstage("box-a", "r1", "pending-manifest")
    assert index.staged_pending("box-a", "r1") is None


def test_an_index_of_schema_3_gains_staged_bytes_and_keeps_its_staging(location: str) -> None:
    with open_index(location) as made:
        made.stage("box-a", "r1", "seg/0", SHA_A, 0, 5, 10)
    downgrade_to_3(location)
    with open_index(location) as index:
        assert [s["bytes"] for s in index.staged()] == [5]
        index.stage_part("box-a", "r1", "seg/0", SHA_A, 1, b"bytes", 20)
        assert index.staged_parts("box-a", "r1", "seg/0", SHA_A) == [(1, b"bytes")]
        assert index.staged_count("box-a", "r1", "seg/0", SHA_A) == 1  # the old row had none
    assert schema_version(location) == SCHEMA_VERSION


def schema_version(location: str) -> int:
    if location.startswith("postgresql://"):
        with psycopg.connect(location) as db:
            return int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])
    with sqlite3.connect(location) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def downgrade_to_3(location: str) -> None:
    """Make the index look like schema 3 as far as staging goes: ``staged`` without ``data``. (Tables of
    later versions stay: their steps only create tables, IF NOT EXISTS, so they run again harmlessly.)"""
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as db:
            db.execute("ALTER TABLE staged DROP COLUMN data")
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (3, 0)")
        return
    with sqlite3.connect(location) as db:
        db.execute("ALTER TABLE staged DROP COLUMN data")
        db.execute("PRAGMA user_version = 3")


def test_staging_keeps_bytes_in_the_index_only_when_it_is_shared(tmp_path: Path, pg_url: str) -> None:
    with SqliteIndex(tmp_path / "index.db") as local, PgIndex(pg_url) as shared:
        assert Staging(tmp_path, local, DurableFiles()).in_index is False
        assert Staging(tmp_path, shared, DurableFiles()).in_index is True
        assert Staging(tmp_path, local, DurableFiles(), in_index=True).in_index is True


def test_staging_in_the_index_is_aged_out_with_its_bytes(tmp_path: Path, pg_url: str) -> None:
    data = bytes(range(256)) * 1000
    parts = wire.split("box-a", "0190a000-0000-7000-8000-000000000001", wire.ObjectRef.segment(0), data)
    with PgIndex(pg_url) as index:
        staging = Staging(tmp_path, index, DurableFiles())
        staging.put_part(parts[0], 1_000)
        staging.put_pending("box-a", "0190a000-0000-7000-8000-000000000002", b'{"manifest": 1}', 5_000)
        assert staging.assemble(parts[0]) is None  # one part of two
        aged = staging.age_out(cutoff_ms=2_000)
        assert [(a.object, a.bytes) for a in aged] == [("seg/0", len(parts[0].payload))]
        assert index.staged_parts("box-a", parts[0].recording_id, "seg/0", parts[0].sha256) == []
        assert staging.pending("box-a", "0190a000-0000-7000-8000-000000000002") == b'{"manifest": 1}'
    assert not (tmp_path / "staging").exists()  # nothing of it ever touched the host's disk


# -- two hosts --

@pytest.fixture
def host_b(tmp_path: Path, central: Path) -> Path:
    """A second ingest host's data dir: its own folder, the same keys (as a deployment copies them)."""
    folder = tmp_path / "central-b"
    folder.mkdir(mode=0o700)
    shutil.copytree(central / "keys", folder / "keys")
    return folder


@pytest.fixture
def big_box(tmp_path: Path, central: Path, pg_url: str) -> Iterator[Box]:
    with PgIndex(pg_url) as index:
        made = enrolled_on(index, tmp_path, central)
    yield made
    made.spool.close()


def enrolled_on(index: PgIndex, tmp_path: Path, central: Path) -> Box:
    made = enrolled(tmp_path, central, "desk-shared")  # enrolled in the embedded index; enrol it here too
    index.enroll(made.device_id, made.public_key_b64, 1)
    return made


def two_hosts(central: Path, host_b: Path, pg_url: str, store: S3Store, clock) -> tuple[Ingest, Ingest]:
    return (Ingest(central, clock=clock, store=store, index=PgIndex(pg_url)),
            Ingest(host_b, clock=clock, store=store, index=PgIndex(pg_url)))


def test_parts_of_one_object_on_two_hosts_are_joined_once_with_no_shared_disk(
        big_box: Box, central: Path, host_b: Path, pg_url: str, s3_store: S3Store, seaweed: LocalSeaweed,
        s3_bucket: str, clock) -> None:
    rid = big_box.call(25, codec=BIG_CODEC)
    parts = big_box.parts(rid)
    assert max(p.parts for p in parts) > 1
    a, b = two_hosts(central, host_b, pg_url, s3_store, clock)
    try:
        acks = [ack for k, part in enumerate(parts) for ack in (a if k % 2 else b).receive(part)]
        finals = {ack.object: ack.status for ack in acks if ack.part is None}
        assert set(finals.values()) == {"stored"} and wire.ObjectRef.manifest() in finals
        recording = a.index.recording(rid, big_box.device_id)
        assert recording is not None and b.index.receipt(big_box.device_id, rid) is not None
        for index, data in big_box.segments(rid):
            assert s3_store.get(segment_key(big_box.device_id, rid, index)) == data
        assert a.index.staged() == []  # every staged byte removed once its object was stored
    finally:
        a.close(), b.close()
        a.index.close(), b.index.close()
    versions = seaweed.client().list_object_versions(Bucket=s3_bucket).get("Versions", [])
    keys = [v["Key"] for v in versions]
    assert len(keys) == len(set(keys)) == len(big_box.segments(rid)) + 1  # each object written once
    assert not any((folder / "staging").exists() and any((folder / "staging").rglob("*"))
                   for folder in (central, host_b))


def test_two_hosts_staging_the_last_parts_at_once_store_the_object_once(
        big_box: Box, central: Path, host_b: Path, pg_url: str, s3_store: S3Store, clock) -> None:
    rid = big_box.call(25, codec=BIG_CODEC)
    index, data = big_box.segments(rid)[0]
    parts = wire.split(big_box.device_id, rid, wire.ObjectRef.segment(index), data)
    assert len(parts) >= 2
    a, b = two_hosts(central, host_b, pg_url, s3_store, clock)
    try:
        for part in parts[:-2]:
            a.receive(part)
        start = threading.Barrier(2)
        results: dict[str, list[wire.Ack]] = {}

        def last(name: str, host: Ingest, part: wire.Part) -> None:
            start.wait(10)
            results[name] = host.receive(part)
        threads = [threading.Thread(target=last, args=("a", a, parts[-2])),
                   threading.Thread(target=last, args=("b", b, parts[-1]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        objects = [ack for acks in results.values() for ack in acks if ack.part is None]
        assert {ack.status for ack in objects} == {"stored"} and objects  # at least one host joined it
        assert s3_store.get(segment_key(big_box.device_id, rid, index)) == data
        row = a.index.object(big_box.device_id, rid, f"seg/{index}")
        assert row is not None and row["stored_ms"] is not None
        assert a.index.staged() == []
    finally:
        a.close(), b.close()
        a.index.close(), b.index.close()
