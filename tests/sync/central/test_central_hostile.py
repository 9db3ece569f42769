"""Hostile boxes and hostile files at the central store.

Manifests and sealed caller ids that would crash a parser, two boxes with one
recording id, and a box filling the centre's disk with what never completes:
each through the real ``Ingest``, SQLite index and file store, and the real
``linetap-central`` command line where the finding is there.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pyrage
import pytest

from central_boxes import BIG_CODEC, Box, add_config, central_index, enrolled, stored_object
from linetap.firmware import manifest as mf
from linetap.firmware.clock import ManualClock
from linetap.firmware.keys import load_signing_key
from linetap.sync import wire
from linetap.sync.central.cli import main
from linetap.sync.central.config import IngestSection
from linetap.sync.central.index import SCHEMA_VERSION, AmbiguousRecording, SqliteIndex
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.store import StoreUnavailable, segment_key
from linetap.sync.central.tools import StoreTools

DAY_S = 86_400.0


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = enrolled(tmp_path, central, "desk-1")
    yield made
    made.spool.close()


def feed(core: Ingest, parts: list[wire.Part]) -> list[wire.Ack]:
    return [ack for part in parts for ack in core.receive(part)]


def manifest_ack(acks: list[wire.Ack]) -> wire.Ack:
    return [a for a in acks if a.object == wire.ObjectRef.manifest() and a.part is None][-1]


# -- 1. hostile JSON from a box --

def resigned(box: Box, rid: str, change: dict, raw: bytes | None = None, *, signed: bool = True) -> bytes:
    """The box's manifest of ``rid`` with ``change`` laid over it, signed with its enrolled key.

    ``raw`` is JSON text put in member ``x`` as is (deeper than json.dumps can write)."""
    body = {k: v for k, v in json.loads(box.manifest(rid)).items() if k != "signature"} | change
    if raw is not None:
        body["x"] = "RAW"
    key = load_signing_key(box.data_dir)
    unsigned = mf.canonical(body).replace(b'"RAW"', raw or b'"RAW"')
    if not signed:
        return unsigned
    signature = {"alg": "ed25519", "public_key": box.public_key_b64,
                 "value": base64.b64encode(key.sign(unsigned)).decode()}
    return mf.canonical(body | {"signature": signature}).replace(b'"RAW"', raw or b'"RAW"')


HOSTILE = {
    "deep": ({}, b"[" * 50_000 + b"]" * 50_000, "nests deeper"),
    "long-integer": ({}, b"9" * 100_000, "integer"),
    "seq-2**64": ({"seq": 2**64}, None, "integer"),
    "wall_ms-10**20": ({"started": {"wall_ms": 10**20}}, None, "integer"),
}


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_manifest_is_rejected_malformed_never_a_crash(box: Box, central: Path, clock, name: str,
                                                                 signed: bool) -> None:
    change, raw, reason = HOSTILE[name]
    rid = box.call(1.5)
    data = resigned(box, rid, change, raw, signed=signed)
    with Ingest(central, clock=clock) as core:
        feed(core, box.parts(rid, manifest=False))
        acks = feed(core, wire.split(box.device_id, rid, wire.ObjectRef.manifest(), data))
        ack = manifest_ack(acks)
        assert (ack.status, ack.code) == ("rejected", "malformed")
        if signed or raw is not None:
            assert reason in ack.reason
        assert core.index.recordings() == []
        # The box's own manifest of that recording is still taken.
        assert manifest_ack(feed(core, box.parts(rid))[-1:]).status == "stored"
    with StoreTools(central) as tools:
        assert all(r.ok for r in tools.verify())


def seal(central: Path, plaintext: bytes) -> str:
    recipient = load_identity(central).to_public()
    return base64.b64encode(pyrage.encrypt(plaintext, [recipient])).decode()


@pytest.mark.parametrize("plaintext", [b"[" * 50_000, b'{"number":' + b"1" * 100_000 + b"}",
                                       b'{"number":"1","number":"2"}'], ids=["deep", "long-integer", "twice"])
def test_a_hostile_sealed_caller_id_is_left_unread_and_the_recording_stored(box: Box, central: Path, clock,
                                                                            plaintext: bytes) -> None:
    rid = box.call(1.5)
    data = resigned(box, rid, {"caller": seal(central, plaintext)})
    with Ingest(central, clock=clock) as core:
        feed(core, box.parts(rid, manifest=False))
        acks = feed(core, wire.split(box.device_id, rid, wire.ObjectRef.manifest(), data))
        assert manifest_ack(acks).status == "stored"
        row = core.index.recording(rid, box.device_id)
    assert (row["caller_number"], row["caller_name"]) == (None, None)


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_a_hostile_json_column_in_the_index_is_an_error_not_a_crash(box: Box, central: Path, clock) -> None:
    rid = box.call(1.5)
    with Ingest(central, clock=clock) as core:
        feed(core, box.parts(rid))
    with sqlite3.connect(central / "index.db") as db:
        db.execute("UPDATE recordings SET consent = ?", ("[" * 50_000,))
    assert cli(central, "list", "--json") == 1  # one clear line, not a RecursionError


# -- 2. recording ids are unique per device only --

@pytest.mark.parametrize("first", ["desk-a", "desk-b"])
def test_two_devices_with_one_recording_id_are_both_stored_listed_verified_and_erased_apart(
        tmp_path: Path, central: Path, clock, capsys, first: str) -> None:
    boxes = {name: enrolled(tmp_path, central, name) for name in ("desk-a", "desk-b")}
    rids = {name: b.call(1.5, number=f"+1555000{i}") for i, (name, b) in enumerate(sorted(boxes.items()))}
    assert rids["desk-a"] == rids["desk-b"], "both boxes start from the same clock: one id"
    rid = rids["desk-a"]
    second = "desk-b" if first == "desk-a" else "desk-a"
    with Ingest(central, clock=clock) as core:
        for name in (first, second):
            acks = feed(core, boxes[name].parts(rid))
            assert {a.status for a in acks} == {"stored"}, name
        assert {r["device_id"] for r in core.index.recordings()} == {"desk-a", "desk-b"}
        assert core.index.recording(rid, "desk-a")["caller_number"] == "+15550000"
        assert core.index.recording(rid, "desk-b")["caller_number"] == "+15550001"
        with pytest.raises(AmbiguousRecording, match="--device"):
            core.index.recording(rid)
    capsys.readouterr()
    assert cli(central, "list", "--json") == 0
    assert sorted(r["device_id"] for r in json.loads(capsys.readouterr().out)) == ["desk-a", "desk-b"]
    assert cli(central, "verify", "--all", "--strict", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [(d["device_id"], d["recordings"], d["ok"]) for d in report["devices"]] == \
        [("desk-a", 1, True), ("desk-b", 1, True)]

    out = tmp_path / "out.ogg"
    for argv in (("verify", rid), ("erase", rid, "--reason", "request"), ("hold", "set", rid),
                 ("export", rid, "-o", str(out))):
        assert cli(central, *argv) == 1
        err = capsys.readouterr().err
        assert "desk-a, desk-b" in err and "--device" in err, argv
    assert not out.exists()
    assert cli(central, "export", rid, "--device", second, "-o", str(out)) == 0
    assert out.stat().st_size > 0
    assert cli(central, "verify", rid, "--device", "desk-b") == 0
    assert cli(central, "hold", "set", rid, "--device", second, "--reason", "case 7") == 0
    assert cli(central, "erase", rid, "--device", second, "--reason", "x") == 1  # held
    assert cli(central, "erase", rid, "--device", first, "--reason", "data subject request") == 0
    capsys.readouterr()
    with StoreTools(central) as tools:
        kept = tools.index.recording(rid, second)
        assert tools.index.recording(rid, first)["erased_ms"] is not None
        assert kept["erased_ms"] is None and kept["caller_number"] is not None
        for index, data in boxes[second].segments(rid):
            assert stored_object(central, segment_key(second, rid, index)) == data
        assert stored_object(central, segment_key(first, rid, 0)) is None
    assert cli(central, "verify", "--all", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert {d["device_id"]: d["erased"] for d in report["devices"]} == {first: [1], second: []}
    for b in boxes.values():
        b.spool.close()


# The index as it was before recordings were keyed by device (schema version 0).
V0_SCHEMA = """
CREATE TABLE devices (device_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, enrolled_ms BIGINT NOT NULL);
CREATE TABLE objects (device_id TEXT NOT NULL, recording_id TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, size BIGINT NOT NULL, object_key TEXT NOT NULL, claimed_ms BIGINT NOT NULL,
    stored_ms BIGINT, PRIMARY KEY (device_id, recording_id, name));
CREATE TABLE recordings (recording_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, seq BIGINT NOT NULL,
    started_ms BIGINT, ended_ms BIGINT, duration_ms BIGINT, flagged INTEGER NOT NULL, recorded INTEGER NOT NULL,
    discarded INTEGER NOT NULL, ended_by TEXT, consent TEXT, metrics TEXT, caller_number TEXT,
    caller_name TEXT, manifest_sha256 TEXT NOT NULL, prev TEXT NOT NULL, segments INTEGER NOT NULL,
    bytes BIGINT NOT NULL, manifest_key TEXT NOT NULL, stored_ms BIGINT NOT NULL,
    hold INTEGER NOT NULL DEFAULT 0, hold_reason TEXT, erased_ms BIGINT, erase_reason TEXT, tombstone_key TEXT);
CREATE INDEX recordings_device_seq ON recordings (device_id, seq);
CREATE INDEX recordings_started ON recordings (started_ms);
CREATE TABLE problems (device_id TEXT NOT NULL, recording_id TEXT, seq BIGINT, kind TEXT NOT NULL,
    detail TEXT NOT NULL, found_ms BIGINT NOT NULL);
"""


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_an_index_of_schema_version_0_is_migrated_at_open_and_stays_readable(
        tmp_path: Path, central: Path, box: Box, clock, capsys) -> None:
    rids = [box.call(1.5), box.call(1.5)]
    with Ingest(central, clock=clock) as core:
        for rid in rids:
            feed(core, box.parts(rid))
    # Rewrite the index as the previous version wrote it: same rows, old tables, user_version 0.
    new, old = central / "index.db", tmp_path / "v0.db"
    with sqlite3.connect(old) as db, sqlite3.connect(new) as src:
        db.executescript(V0_SCHEMA)
        for table in ("devices", "objects", "recordings", "problems"):
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", rows)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    src.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{new}{suffix}").unlink(missing_ok=True)
    old.rename(new)

    with Ingest(central, clock=clock) as core:  # as `serve` does at start: receipts for what was stored before
        assert core.issue_missing_receipts() == 2
    assert cli(central, "verify", "--all", "--strict") == 0  # every old object is vouched for
    assert cli(central, "list", "--json") == 0
    capsys.readouterr()
    with sqlite3.connect(new) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        keys = [r[1] for r in db.execute("PRAGMA table_info(recordings)") if r[5]]
        assert keys == ["recording_id", "device_id"] or sorted(keys) == ["device_id", "recording_id"]
    db.close()
    with SqliteIndex(new) as index:  # a second open changes nothing
        assert [r["recording_id"] for r in index.device_recordings(box.device_id)] == rids
    # And a second device may now have the same recording id.
    twin = enrolled(tmp_path, central, "desk-2")
    with Ingest(central, clock=clock) as core:
        assert manifest_ack(feed(core, twin.parts(twin.call(1.5)))).status == "stored"
        assert len(core.index.recordings_with_id(rids[0])) == 2
    twin.spool.close()


# -- 3. quotas, age-out and orphans --

def test_staging_past_the_device_quota_is_retried_and_other_devices_are_not_held_up(
        tmp_path: Path, central: Path, box: Box, clock) -> None:
    other = enrolled(tmp_path, central, "desk-2")
    firsts = []
    for _ in range(3):
        rid = box.call(25, codec=BIG_CODEC)
        firsts.append([p for p in box.parts(rid) if p.parts > 1 and p.part == 0][0])
    limits = IngestSection(device_quota_bytes=2 * wire.PART_BYTES)
    with Ingest(central, clock=clock, limits=limits) as core:
        # A box that sends the first part of object after object and never the rest.
        assert [(a.status, a.part) for a in core.receive(firsts[0])] == [("stored", 0)]
        assert [(a.status, a.part) for a in core.receive(firsts[1])] == [("stored", 0)]
        [refused] = core.receive(firsts[2])
        assert (refused.status, refused.code, refused.part) == ("retry", "store-unavailable", 0)
        assert "quota of 245760 bytes" in refused.reason and "device_quota_bytes" in refused.reason
        assert core.index.held_bytes(box.device_id) == 2 * wire.PART_BYTES
        # The quota is per device: another box stores as usual.
        acks = feed(core, other.parts(other.call(25, codec=BIG_CODEC)))
        assert {a.status for a in acks} == {"stored"}


def test_segments_without_a_manifest_count_and_a_completing_manifest_always_gets_in(
        central: Path, box: Box, clock) -> None:
    rid = box.call(3.5)
    segments = box.parts(rid, manifest=False)
    quota = sum(p.size for p in segments)
    with Ingest(central, clock=clock, limits=IngestSection(device_quota_bytes=quota)) as core:
        assert {a.status for a in feed(core, segments)} == {"stored"}
        assert core.index.held_bytes(box.device_id) == quota
        stray = box.parts(box.call(1.5), manifest=False)[0]
        assert [(a.status, a.code) for a in core.receive(stray)] == [("retry", "store-unavailable")]
        # The manifest vouching for them passes the quota and frees it.
        assert manifest_ack(feed(core, box.parts(rid)[-1:])).status == "stored"
        assert core.index.held_bytes(box.device_id) == 0
        assert core.receive(stray)[0].status == "stored"


def test_incomplete_staging_is_aged_out_by_its_age_on_the_ingest_clock(central: Path, box: Box) -> None:
    clock = ManualClock()
    rid = box.call(25, codec=BIG_CODEC)
    parts = box.parts(rid)
    first = [p for p in parts if p.parts > 1][0]
    with Ingest(central, clock=clock) as core:
        core.receive(first)
        feed(core, parts[-1:])  # the manifest waits for segments that never come
        assert core.index.held_bytes(box.device_id) == len(first.payload) + len(box.manifest(rid))
        clock.advance(6 * DAY_S)
        assert core.age_out() == []
        clock.advance(1.5 * DAY_S)
        removed = core.age_out()
        assert sorted((r.device_id, r.recording_id, r.object, r.bytes) for r in removed) == [
            (box.device_id, rid, "pending-manifest", len(box.manifest(rid))),
            (box.device_id, rid, str(first.object), len(first.payload))]
        assert not any((central / "staging").rglob("*"))
        assert core.index.staged() == []
        # The box, never acknowledged for the whole object, sends it again and it completes.
        acks = feed(core, parts)
        assert manifest_ack(acks).status == "stored"


def test_verify_lists_orphans_and_fails_on_them_only_when_strict(tmp_path: Path, central: Path, box: Box,
                                                                 capsys) -> None:
    clock = ManualClock()  # 2026-01-01: old by the system clock `verify` and `retention run` use
    done, waiting, partial = box.call(1.5), box.call(3.5), box.call(25, codec=BIG_CODEC)
    with Ingest(central, clock=clock) as core:
        feed(core, box.parts(done))
        segs = box.parts(waiting, manifest=False)
        assert len(segs) > 2
        feed(core, segs[:-1] + box.parts(waiting)[-1:])  # manifest waits for its last segment
        big = [p for p in box.parts(partial) if p.parts > 1][0]
        core.receive(big)  # one part of an object that never completes
    assert cli(central, "verify", "--all", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    orphans = sorted((o["kind"], o["recording_id"], o["object"]) for o in report["devices"][0]["orphans"])
    assert orphans == sorted(
        [("unvouched-object", waiting, str(p.object)) for p in segs[:-1]]
        + [("waiting-manifest", waiting, "pending-manifest"), ("stale-staging", partial, str(big.object))])
    assert report["devices"][0]["ok"] and report["orphans"] == len(orphans)
    assert cli(central, "verify", "--all", "--strict") == 1
    assert "orphan stale-staging" in capsys.readouterr().out
    assert cli(central, "verify", done, "--strict") == 0  # a recording's own check lists its own orphans
    capsys.readouterr()

    assert cli(central, "retention", "run", "--dry-run", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)["stale_staging"]) == 2
    with central_index(central) as index:
        assert sorted(r["recording_id"] for r in index.staged()) == sorted([waiting, partial])
    assert cli(central, "retention", "run", "--json") == 0
    aged = json.loads(capsys.readouterr().out)["aged_out"]
    assert sorted((a["device_id"], a["recording_id"], a["object"], a["bytes"]) for a in aged) == sorted([
        (box.device_id, waiting, "pending-manifest", len(box.manifest(waiting))),
        (box.device_id, partial, str(big.object), len(big.payload))])
    with central_index(central) as index:
        assert index.staged() == []
    assert cli(central, "verify", "--all", "--json") == 0
    left = json.loads(capsys.readouterr().out)["devices"][0]["orphans"]
    assert {o["kind"] for o in left} == {"unvouched-object"}  # stored segments stay for the operator


def test_fresh_staging_is_not_aged_out_by_retention_run(central: Path, box: Box, capsys) -> None:
    import time

    clock = ManualClock(wall_offset=time.time())  # staged now
    rid = box.call(25, codec=BIG_CODEC)
    with Ingest(central, clock=clock) as core:
        core.receive([p for p in box.parts(rid) if p.parts > 1][0])
    assert cli(central, "retention", "run", "--json") == 0
    assert json.loads(capsys.readouterr().out)["aged_out"] == []
    with central_index(central) as index:
        assert [r["recording_id"] for r in index.staged()] == [rid]


def test_the_quota_and_age_come_from_the_ingest_section_of_the_config(central: Path, capsys) -> None:
    add_config(central, "[ingest]\ndevice_quota_bytes = 1000\nstale_staging_days = 2\n")
    assert cli(central, "retention", "run") == 0
    assert "older than 2 days" in capsys.readouterr().out
    add_config(central, "[ingest]\nstale_staging_dayz = 2\n")
    assert cli(central, "retention", "run") == 1
    assert "stale_staging_dayz" in capsys.readouterr().err


def test_staging_files_the_index_does_not_know_are_aged_out_by_their_time(central: Path, box: Box) -> None:
    import os

    clock = ManualClock()
    rid = box.call(25, codec=BIG_CODEC)
    first = [p for p in box.parts(rid) if p.parts > 1][0]
    folder = central / "staging" / box.device_id / rid
    old = folder / "seg-0" / first.sha256 / "0000"  # as a version before the staging table left it
    debris = folder / "seg-0" / first.sha256 / ".tmp-123-0001"  # a write cut short
    fresh = central / "staging" / box.device_id / "other" / "pending-manifest"
    for path in (old, debris, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    eight_days_ago = clock.wall() - 8 * DAY_S
    for path in (old, debris):
        os.utime(path, (eight_days_ago, eight_days_ago))
    os.utime(fresh, (clock.wall(), clock.wall()))
    with Ingest(central, clock=clock) as core:
        removed = core.age_out()
    assert sorted((r.device_id, r.recording_id, r.object, r.bytes) for r in removed) == [
        (box.device_id, rid, "seg/0", 10), (box.device_id, rid, "seg/0", 10)]
    assert not folder.exists() and fresh.is_file()


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_an_index_from_a_newer_version_is_refused_with_what_to_do(central: Path) -> None:
    with SqliteIndex(central / "index.db"):
        pass
    with sqlite3.connect(central / "index.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(Exception, match="newer than this program's"):
        SqliteIndex(central / "index.db")
    assert cli(central, "list") == 1


def test_an_index_that_cannot_work_is_store_unavailable_so_ingest_stops_rather_than_rejecting(
        tmp_path: Path) -> None:
    """The worker's rule: StoreUnavailable (an OSError) ends the worker and leaves the message for
    later; anything else is that one message's rejection. A broken index is the former."""
    index = SqliteIndex(tmp_path / "index.sqlite")
    index.enroll("desk-a", "AAAA", 1)
    index.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        index.device_key("desk-a")
