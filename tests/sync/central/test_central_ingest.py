"""The central ingest core: every part/object path, idempotence, concurrency, each refusal, disk full."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_boxes import BIG_CODEC, Box, central_index, make_box, stored_keys, stored_object
from linetap.firmware import manifest as mf
from linetap.sync import wire
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.store import DurableFiles, manifest_key, segment_key
from linetap.sync.central.tools import StoreTools


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = make_box(tmp_path / "boxes", "desk-1", load_identity(central))
    with StoreTools(central) as tools:
        tools.enroll(made.device_id, made.public_key_b64)
    yield made
    made.spool.close()


@pytest.fixture
def ingest(central: Path, clock) -> Ingest:
    with Ingest(central, clock=clock) as core:
        yield core


def feed(core: Ingest, parts: list[wire.Part]) -> list[wire.Ack]:
    return [ack for part in parts for ack in core.receive(part)]


def object_acks(acks: list[wire.Ack], obj: wire.ObjectRef) -> list[wire.Ack]:
    return [a for a in acks if a.object == obj and a.part is None]


def test_single_part_objects_are_stored_acked_and_indexed(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(3.5)
    acks = feed(ingest, box.parts(rid))
    assert [a.status for a in acks] == ["stored"] * len(acks)
    assert all(a.part is None for a in acks)  # one object-level ack per single-part object
    assert object_acks(acks, wire.ObjectRef.manifest())[0].sha256 == hashlib.sha256(box.manifest(rid)).hexdigest()
    for index, data in box.segments(rid):
        assert stored_object(central, segment_key(box.device_id, rid, index)) == data
    assert "/2026/01/01/" in manifest_key(box.device_id, rid)  # the date of the UUIDv7 id (ManualClock: 2026-01-01)
    row = ingest.index.recording(rid)
    assert (row["seq"], row["segments"], row["duration_ms"]) == (1, len(box.segments(rid)), 3500)
    assert (row["caller_number"], row["caller_name"]) == ("+15551230001", "ACME Corp")
    assert [e["kind"] for e in row["consent"]] == ["announcement-start", "announcement-end"]
    assert row["metrics"] == {"talk_share": "0.5"}
    assert not (central / "staging").exists() or not any((central / "staging").rglob("*.age"))


@pytest.mark.embedded_only("looks at the staging files (a PostgreSQL index keeps staged parts in its rows)")
def test_multi_part_object_is_staged_per_part_then_joined(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    big = [p for p in box.parts(rid) if p.parts > 1]
    assert big, "the 20 s segment at 64 kbit/s should need more than one part"
    first = ingest.receive(big[0])
    assert [(a.status, a.part) for a in first] == [("stored", 0)]
    assert not (central / "objects" / segment_key(box.device_id, rid, 0)).exists()
    staged = list((central / "staging").rglob("0000"))
    assert len(staged) == 1 and staged[0].read_bytes() == big[0].payload
    last = ingest.receive(big[1])
    assert [(a.status, a.part) for a in last] == [("stored", 1), ("stored", None)]
    assert stored_object(central, segment_key(box.device_id, rid, 0)) == dict(box.segments(rid))[0]
    assert not any((central / "staging").rglob("*")), "staging is removed once the object is stored"
    acks = feed(ingest, [p for p in box.parts(rid) if p.parts == 1])
    assert object_acks(acks, wire.ObjectRef.manifest())[0].status == "stored"


def test_parts_in_any_order_and_duplicates_are_stored_once(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    parts = box.parts(rid)
    feed(ingest, list(reversed(parts)))  # manifest first: it waits for its segments
    acks = feed(ingest, parts + parts)
    assert all(a.status == "stored" for a in acks)
    manifest_acks = object_acks(acks, wire.ObjectRef.manifest())
    assert manifest_acks and all(a.status == "stored" for a in manifest_acks)
    assert len(ingest.index.recordings()) == 1
    assert len(stored_keys(central)) == len(box.segments(rid)) + 1
    with StoreTools(central) as tools:
        assert all(r.ok for r in tools.verify())


def test_a_manifest_waiting_for_segments_is_finished_by_the_last_segment(box: Box, ingest: Ingest) -> None:
    rid = box.call(3)
    parts = box.parts(rid)
    segments, manifest = parts[:-1], parts[-1]
    feed(ingest, segments[:-1])
    early = ingest.receive(manifest)
    assert early[0].status == "rejected" and early[0].code == "missing-segments"
    assert early[0].missing == (segments[-1].object.index,)
    late = ingest.receive(segments[-1])
    assert [(a.object, a.status) for a in late] == [(segments[-1].object, "stored"),
                                                   (wire.ObjectRef.manifest(), "stored")]
    assert ingest.index.recording(rid) is not None


def test_threads_feeding_one_recording_store_it_exactly_once(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    parts = box.parts(rid)
    acks: list[wire.Ack] = []
    lock = threading.Lock()
    start = threading.Event()

    def worker(mine: list[wire.Part]) -> None:
        start.wait(5)
        for part in mine:
            got = ingest.receive(part)
            with lock:
                acks.extend(got)

    threads = [threading.Thread(target=worker, args=(parts[k::2] + parts,), name=f"ingest-test-{k}")
               for k in range(2)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert not [a for a in acks if a.status == "retry"]
    assert any(a.status == "stored" for a in object_acks(acks, wire.ObjectRef.manifest()))
    assert len(ingest.index.recordings()) == 1
    assert len(stored_keys(central)) == len(box.segments(rid)) + 1


FEEDER = """
import json, sys
sys.path.insert(0, sys.argv[4])
from pathlib import Path
from central_boxes import Box
from linetap.sync import wire
from linetap.sync.central.ingest import Ingest
central, box_dir, parity = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rid = sys.argv[5]
box = Box(box_dir, "desk-1", None, None, "")
parts = box.parts(rid)
sys.stdin.readline()  # both processes start together
with Ingest(central) as core:
    for part in parts[parity::2] + parts:
        for ack in core.receive(part):
            print(json.dumps([str(ack.object), ack.part, ack.status, ack.code]), flush=True)
"""


def test_two_processes_feeding_one_recording_store_it_exactly_once(box: Box, central: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", FEEDER, str(central), str(box.data_dir), str(k), here, rid],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in range(2)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    acks = [json.loads(line) for out in outputs for line in out.splitlines()]
    assert not [a for a in acks if a[2] == "retry"]
    assert ["manifest", None, "stored", None] in acks
    with central_index(central) as index:
        assert [r["recording_id"] for r in index.recordings()] == [rid]
    assert len(stored_keys(central)) == len(box.segments(rid)) + 1


# -- refusals --

def test_a_device_that_is_not_enrolled_is_refused_and_nothing_is_stored(tmp_path: Path, central: Path,
                                                                        ingest: Ingest) -> None:
    stranger = make_box(tmp_path / "boxes", "stranger", load_identity(central))
    rid = stranger.call(1.5)
    acks = feed(ingest, stranger.parts(rid))
    assert {(a.status, a.code) for a in acks} == {("rejected", "not-enrolled")}
    assert stored_keys(central) == []
    stranger.spool.close()


def test_a_malformed_part_is_refused(box: Box, ingest: Ingest) -> None:
    rid = box.call(1.5)
    good = box.parts(rid)[0]
    short = dataclasses.replace(good, payload=good.payload[:-1])
    assert [(a.status, a.code) for a in ingest.receive(short)] == [("rejected", "malformed")]
    bad_device = dataclasses.replace(good, device_id="Desk_1")
    assert ingest.receive(bad_device)[0].code == "malformed"


def test_a_segment_whose_bytes_do_not_match_its_hash_is_refused(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(1.5)
    good = box.parts(rid)[0]
    flipped = dataclasses.replace(good, payload=bytes([good.payload[0] ^ 1]) + good.payload[1:])
    assert [(a.status, a.code) for a in ingest.receive(flipped)] == [("rejected", "hash-mismatch")]
    assert stored_keys(central) == []
    assert ingest.receive(good)[0].status == "stored"


def test_a_multi_part_object_that_joins_to_another_hash_is_refused(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    first, second = [p for p in box.parts(rid) if p.parts > 1]
    ingest.receive(first)
    damaged = dataclasses.replace(second, payload=b"\0" * len(second.payload))
    acks = ingest.receive(damaged)
    assert acks[-1].status == "rejected" and acks[-1].code == "hash-mismatch"
    assert stored_keys(central) == []
    assert not any((central / "staging").rglob("0000")), "the bad staging is dropped so a resend starts clean"


def test_another_object_under_a_stored_name_is_a_conflict(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(1.5)
    good = box.parts(rid)[0]
    ingest.receive(good)
    other = wire.split(box.device_id, rid, good.object, b"age-encryption.org/v1\nsomething else")[0]
    assert [(a.status, a.code) for a in ingest.receive(other)] == [("rejected", "conflict")]
    assert stored_object(central, segment_key(box.device_id, rid, 0)) == good.payload
    assert ingest.receive(good)[0].status == "stored"  # the original again: stored, once


def test_a_manifest_with_a_bad_signature_is_refused_and_reported(box: Box, ingest: Ingest, central: Path) -> None:
    rid = box.call(1.5)
    parts = box.parts(rid, manifest=False)
    feed(ingest, parts)
    forged = json.loads(box.manifest(rid))
    forged["flagged"] = True
    data = mf.canonical(forged)
    acks = feed(ingest, wire.split(box.device_id, rid, wire.ObjectRef.manifest(), data))
    assert [(a.status, a.code) for a in acks] == [("rejected", "bad-signature")]
    assert ingest.index.recording(rid) is None
    with StoreTools(central) as tools:
        report = tools.verify()[0]
    assert not report.ok and report.problems[0]["kind"] == "refused-bad-signature"


def test_a_manifest_under_another_device_is_refused(tmp_path: Path, box: Box, central: Path, ingest: Ingest) -> None:
    rid = box.call(1.5)
    with StoreTools(central) as tools:
        tools.enroll("desk-2", box.public_key_b64)  # the same key enrolled twice: only the name differs
    moved = [dataclasses.replace(p, device_id="desk-2") for p in box.parts(rid)]
    acks = feed(ingest, moved)
    assert object_acks(acks, wire.ObjectRef.manifest())[0].code == "wrong-device"
    assert ingest.index.recordings() == []


def test_an_oversized_manifest_is_refused(box: Box, ingest: Ingest) -> None:
    rid = box.call(1.5)
    size = mf.MAX_BYTES + 1
    part = wire.Part(box.device_id, rid, wire.ObjectRef.manifest(), 0, -(-size // wire.PART_BYTES),
                     "0" * 64, size, b"\0" * wire.PART_BYTES)
    assert [(a.status, a.code) for a in ingest.receive(part)] == [("rejected", "too-large")]


def test_a_chain_break_is_stored_and_reported(tmp_path: Path, box: Box, ingest: Ingest, central: Path) -> None:
    # A clone of the box (same key and id, its own history) sends seq 2: its prev names a seq 1
    # the centre never received. Refusing it would lose evidence; it is stored and reported.
    clone_root = tmp_path / "clone"
    shutil.copytree(box.data_dir / "keys", clone_root / box.device_id / "keys")
    clone = make_box(clone_root, box.device_id, load_identity(central))
    clone.clock.advance(3600)  # other recording ids than the original's
    feed(ingest, box.parts(box.call(1.5)))
    clone.call(1.5)
    second = clone.call(1.5)
    acks = feed(ingest, clone.parts(second))
    assert object_acks(acks, wire.ObjectRef.manifest())[0].status == "stored"
    assert [p["kind"] for p in ingest.index.problems(box.device_id)] == ["chain-break"]
    with StoreTools(central) as tools:
        report = tools.verify()[0]
    assert [(p["kind"], p["seq"]) for p in report.problems] == [("broken-link", 2)]
    clone.spool.close()


class FullDisk(DurableFiles):
    def __init__(self) -> None:
        super().__init__()
        self.full = True

    def write(self, path: Path, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        super().write(path, data)


@pytest.mark.embedded_only("a full local disk: staging and the file store write through the failing files")
def test_a_full_disk_asks_for_a_resend_and_leaves_nothing_half_written(box: Box, central: Path, clock) -> None:
    rid = box.call(25, codec=BIG_CODEC)
    disk = FullDisk()
    with Ingest(central, clock=clock, files=disk) as core:
        parts = box.parts(rid)
        acks = feed(core, parts)
        assert {(a.status, a.code) for a in acks} == {("retry", "store-unavailable")}
        assert [a.part for a in acks if a.object == parts[0].object] == [0, 1]  # per part when multi-part
        assert stored_keys(central) == []
        assert core.index.recordings() == []
        disk.full = False
        acks = feed(core, parts)
    assert object_acks(acks, wire.ObjectRef.manifest())[0].status == "stored"
    assert not [p for p in (central / "objects").rglob(".tmp-*")]


def test_an_erased_recording_sent_again_is_acked_and_not_stored_again(box: Box, ingest: Ingest,
                                                                     central: Path) -> None:
    rid = box.call(1.5)
    parts = box.parts(rid)
    feed(ingest, parts)
    with StoreTools(central) as tools:
        tools.erase(rid, "customer request")
    acks = feed(ingest, parts)
    assert {a.status for a in acks} == {"stored"}
    assert [k.rsplit("/", 1)[1] for k in stored_keys(central)] == ["tombstone.json"]


def test_caller_ids_stay_sealed_without_the_central_identity(tmp_path: Path, box: Box, central: Path,
                                                           clock) -> None:
    elsewhere = tmp_path / "no-keys"
    with StoreTools(elsewhere) as tools:
        tools.enroll(box.device_id, box.public_key_b64)
    rid = box.call(1.5)
    with Ingest(elsewhere, clock=clock, store_key=Ed25519PrivateKey.generate()) as core:
        acks = feed(core, box.parts(rid))
        assert object_acks(acks, wire.ObjectRef.manifest())[0].status == "stored"
        row = core.index.recording(rid)
    assert row["caller_number"] is None and row["seq"] == 1
