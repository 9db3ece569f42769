"""The secure spool: encrypted durable segments, catalogue, recovery, retention, disk full."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.drivers.events import CallerId
from linetap.firmware import manifest as mf
from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import SpoolError
from linetap.firmware.keys import KeyMissing, keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import (
    CodecParams,
    DurableFiles,
    RecordingGone,
    Spool,
    SpoolFull,
    SpoolSettings,
    SpoolSink,
    list_recordings,
    verify_spool,
)
from linetap.firmware import receipt

RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=1.0)
PLAINTEXT_MAGIC = (b"OggS", b"RIFF", b"OpusHead")


class FakeSegmenter:
    """Stands in for the Opus encoder: one "OggS"-tagged plaintext piece per segment_s of frames.

    The tag makes the no-plaintext-on-disk scan meaningful.
    """

    def __init__(self, codec: CodecParams) -> None:
        self._per_segment = int(codec.rate * codec.segment_s)
        self._pending = np.zeros((0, 2), np.int16)

    def write(self, frames: np.ndarray) -> list[bytes]:
        self._pending = np.concatenate([self._pending, frames])
        out = []
        while len(self._pending) >= self._per_segment:
            piece, self._pending = self._pending[:self._per_segment], self._pending[self._per_segment:]
            out.append(b"OggS" + piece.tobytes())
        return out

    def finish(self) -> bytes:
        rest, self._pending = self._pending, np.zeros((0, 2), np.int16)
        return b"OggS" + rest.tobytes() if len(rest) else b""


@pytest.fixture
def central() -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.generate()


@pytest.fixture
def data(tmp_path: Path, central) -> Path:
    keys_init(tmp_path / "data", str(central.to_public()))
    return tmp_path / "data"


def open_spool(data: Path, clock: ManualClock, **kw) -> Spool:
    kw.setdefault("disk_free", lambda _path: 10 ** 12)
    return Spool(data, device_id="lt-desk-1", clock=clock, **kw)


_ids = iter(range(1, 10 ** 6))


def make_call(clock: ManualClock, **kw) -> CallRecord:
    return CallRecord(f"0199a000-0000-7000-8000-{next(_ids):012d}", clock.monotonic(), clock.wall(),
                      True, **kw)


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, (int(RATE * seconds), 2), dtype=np.int16)


def run_call(sink: SpoolSink, clock: ManualClock, seconds: float, *, close: bool = True,
             **call_kw) -> tuple[CallRecord, np.ndarray]:
    call = make_call(clock, **call_kw)
    frames = audio(seconds)
    sink.open(call)
    for start in range(0, len(frames), 160):
        sink.write(frames[start:start + 160])
        clock.advance(0.02)
    if close:
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": clock.monotonic(),
                              "events": call.events or (CallEvent(0.0, "call-start", {"source": "gpio"}),)})
        sink.close(Recording(ended, len(frames), 0.0, ((1.0, 1.25),), {"talk_share": 0.5}))
    return call, frames


def decrypt_recording(folder: Path, central) -> bytes:
    manifest = json.loads((folder / "manifest.json").read_bytes())
    return b"".join(pyrage.decrypt((folder / f"{s['index']:06d}.age").read_bytes(), [central])
                    for s in manifest["segments"])


def test_a_call_is_stored_encrypted_signed_and_catalogued(data: Path, clock, central) -> None:
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call, frames = run_call(sink, clock, 3.5)
    folder = data / "spool" / call.call_id
    manifest = mf.verify((folder / "manifest.json").read_bytes(), spool.public_key)
    assert [s["index"] for s in manifest["segments"]] == [0, 1, 2, 3]
    assert manifest["seq"] == 1 and manifest["prev"] == mf.GENESIS
    assert manifest["ended_by"] == "hang-up" and manifest["masks"] == [[1000, 1250]]
    assert manifest["metrics"] == {"talk_share": "0.5"}
    assert manifest["started"]["boot_id"] and manifest["codec"]["segment_ms"] == 1000
    plain = decrypt_recording(folder, central)
    assert plain.replace(b"OggS", b"") == frames.tobytes()
    [row] = list_recordings(data)
    assert row["state"] == "closed" and row["segments"] == 4 and row["seq"] == 1
    assert not (folder / "open.json").exists()
    assert verify_spool(data)["ok"]


def test_the_age_command_decrypts_a_segment(data: Path, clock, central, tmp_path: Path) -> None:
    identity = tmp_path / "central.key"
    identity.write_text(str(central) + "\n")
    with open_spool(data, clock) as spool:
        call, frames = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 1.0)
    segment = data / "spool" / call.call_id / "000000.age"
    out = subprocess.run(["age", "-d", "-i", str(identity), str(segment)], capture_output=True,
                         check=True, timeout=10).stdout
    assert out == b"OggS" + frames.tobytes()


def test_sequence_numbers_chain_across_restarts(data: Path, clock) -> None:
    for _ in range(3):
        with open_spool(data, clock) as spool:
            run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    rows = list_recordings(data)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    report = verify_spool(data)
    assert report["ok"] and report["chain"]["last_seq"] == 3


def test_no_plaintext_audio_reaches_the_disk(data: Path, clock, tmp_path: Path) -> None:
    started = time.time()
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        run_call(sink, clock, 2.5)
        run_call(sink, clock, 1.0, close=False)
        sink.discard()
    scanned = 0
    for root in (tmp_path, Path(tempfile.gettempdir())):
        for path in root.rglob("*"):
            try:
                if not path.is_file() or (root != tmp_path and path.stat().st_mtime < started):
                    continue
                content = path.read_bytes()
            except OSError:
                continue  # other users' files and sockets in the system temp dir
            scanned += 1
            assert not any(magic in content for magic in PLAINTEXT_MAGIC), path
    assert scanned >= 8


def test_opt_out_destroys_segments_but_keeps_the_consent_record(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call, frames = run_call(sink, clock, 2.5, close=False)
        folder = spool.root / call.call_id
        assert list(folder.glob("*.age"))
        sink.discard()
        assert not list(folder.glob("*.age"))
        opted = CallRecord(**{**call.__dict__, "ended_by": "hang-up", "ended_mono": clock.monotonic(),
                              "events": (CallEvent(0.5, "announcement-start", {"language": "en"}),
                                         CallEvent(2.0, "opt-out", {"by": "caller"}))})
        sink.close(Recording(opted, 0, None, (), {}))
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["segments"] == [] and manifest["discarded"] is True and manifest["recorded"] is False
    assert [e["kind"] for e in manifest["events"]] == ["announcement-start", "opt-out"]
    [row] = list_recordings(data)
    assert row["discarded"] and [e["kind"] for e in row["consent"]] == ["announcement-start", "opt-out"]


def test_caller_details_are_sealed_everywhere(data: Path, clock, central) -> None:
    caller = CallerId(number="5551234567", name="ANN EXAMPLE")
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call, _ = run_call(sink, clock, 0.5, caller=caller, close=False)
        open_json = (spool.root / call.call_id / "open.json").read_bytes()
        ended = CallRecord(**{**call.__dict__, "ended_by": "hang-up", "ended_mono": clock.monotonic()})
        sink.close(Recording(ended, 4000, 0.0, (), {}))
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    for blob in [open_json] + [p.read_bytes() for p in data.rglob("*") if p.is_file()]:
        assert b"5551234567" not in blob and b"ANN EXAMPLE" not in blob
    sealed = pyrage.decrypt(base64.b64decode(manifest["caller"]), [central])
    assert json.loads(sealed) == {"number": "5551234567", "name": "ANN EXAMPLE"}


def test_recording_is_refused_without_a_recipient(tmp_path: Path, clock) -> None:
    with pytest.raises(KeyMissing, match="linetap keys init --central-recipient"):
        open_spool(tmp_path, clock)


# ---------------------------------------------------------------- recovery --

def crash_mid_call(data: Path, clock, seconds: float = 2.5) -> tuple[CallRecord, Path]:
    spool = open_spool(data, clock)
    call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, seconds, close=False)
    spool.close()  # the process dies here: no close, no manifest
    return call, data / "spool" / call.call_id


def test_an_open_recording_is_closed_from_its_segments_after_a_crash(data: Path, clock, central) -> None:
    call, folder = crash_mid_call(data, clock)
    (folder / ".000002.age.tmp").write_bytes(b"half a segment")
    with open_spool(data, clock) as spool:
        assert [f.kind for f in spool.recovery.findings] == ["temp-removed", "closed-after-crash"]
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["ended_by"] == "power-loss" and manifest["ended"]["estimated"] is True
    assert [s["index"] for s in manifest["segments"]] == [0, 1]
    assert decrypt_recording(folder, central).startswith(b"OggS")
    assert [r["seq"] for r in list_recordings(data)] == [1, 2]
    assert verify_spool(data)["ok"]


def test_a_segment_written_but_not_catalogued_is_adopted(data: Path, clock) -> None:
    call, folder = crash_mid_call(data, clock)
    db = sqlite3.connect(data / "spool" / "catalogue.db")
    db.execute("DELETE FROM segments WHERE idx = 1")
    db.commit()
    db.close()
    with open_spool(data, clock):
        pass
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert [s["index"] for s in manifest["segments"]] == [0, 1]


@pytest.mark.parametrize("damage,expected", [
    (lambda p: p.write_bytes(b""), "zero-length file"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated"),
    (lambda p: p.write_bytes(b"\x00garbage" * 40), "not an age file"),
])
def test_bad_segments_of_an_open_recording_are_quarantined(data: Path, clock, damage, expected) -> None:
    call, folder = crash_mid_call(data, clock)
    db = sqlite3.connect(data / "spool" / "catalogue.db")
    db.execute("DELETE FROM segments WHERE idx = 1")  # as if the crash came before its row
    db.commit()
    db.close()
    damage(folder / "000001.age")
    with open_spool(data, clock) as spool:
        [bad] = spool.recovery.of("bad-segment")
        assert expected in bad.detail and "segment 1" in bad.detail
        assert Path(bad.moved_to).exists() and Path(bad.moved_to).is_relative_to(data / "quarantine")
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)  # new calls still recorded
    manifest = json.loads((folder / "manifest.json").read_bytes())
    assert [s["index"] for s in manifest["segments"]] == [0]
    assert [r["state"] for r in list_recordings(data)] == ["closed", "closed"]


def test_a_truncated_catalogued_segment_is_caught_by_its_size(data: Path, clock) -> None:
    call, folder = crash_mid_call(data, clock)
    path = folder / "000000.age"
    path.write_bytes(path.read_bytes()[:-1])
    with open_spool(data, clock) as spool:
        [bad] = spool.recovery.of("bad-segment")
        assert "expected" in bad.detail and "segment 0" in bad.detail


def closed_call(data: Path, clock) -> tuple[CallRecord, Path]:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 2.5)
    return call, data / "spool" / call.call_id


def test_an_altered_segment_of_a_closed_recording_is_quarantined(data: Path, clock) -> None:
    call, folder = closed_call(data, clock)
    blob = bytearray((folder / "000001.age").read_bytes())
    blob[-5] ^= 1
    (folder / "000001.age").write_bytes(bytes(blob))
    assert verify_spool(data)["problems"][0]["kind"] == "bad-segment"
    with open_spool(data, clock) as spool:
        [bad] = spool.recovery.of("bad-segment")
        assert "000001.age: sha256 does not match" in bad.detail
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    assert not folder.exists() and (Path(bad.moved_to) / "000001.age").exists()
    assert [r["state"] for r in list_recordings(data)] == ["quarantined", "closed"]
    assert verify_spool(data)["ok"]  # the gap is explained by the quarantined row


def test_a_manifest_with_a_bad_signature_is_quarantined(data: Path, clock) -> None:
    call, folder = closed_call(data, clock)
    m = json.loads((folder / "manifest.json").read_bytes())
    m["flagged"] = True
    (folder / "manifest.json").write_bytes(mf.canonical(m))
    with open_spool(data, clock) as spool:
        [bad] = spool.recovery.of("bad-manifest")
        assert "signature does not verify" in bad.detail and bad.recording_id == call.call_id
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    assert [r["seq"] for r in list_recordings(data)] == [1, 2]


def test_a_row_whose_files_are_gone_is_reported_and_kept(data: Path, clock) -> None:
    call, folder = closed_call(data, clock)
    shutil.rmtree(folder)
    with open_spool(data, clock) as spool:
        [gone] = spool.recovery.of("missing-files")
        assert "seq=1" in gone.detail and json.loads(Path(gone.moved_to).read_text())["id"] == call.call_id
    assert list_recordings(data)[0]["state"] == "quarantined"


def test_files_without_rows_are_quarantined(data: Path, clock) -> None:
    call, folder = closed_call(data, clock)
    (folder / "000099.age").write_bytes(b"stray")
    (data / "spool" / "not-a-recording").mkdir()
    (data / "spool" / "not-a-recording" / "x").write_bytes(b"x")
    with open_spool(data, clock) as spool:
        kinds = sorted(f.kind for f in spool.recovery.quarantined)
        assert kinds == ["orphan-file", "orphan-recording"]
    assert not (folder / "000099.age").exists()
    assert verify_spool(data)["ok"]


def test_a_corrupt_catalogue_is_quarantined_and_rebuilt_without_reusing_seqs(data: Path, clock) -> None:
    closed_call(data, clock)
    call, folder = crash_mid_call(data, clock)
    for part in (data / "spool").glob("catalogue.db*"):
        part.unlink()
    (data / "spool" / "catalogue.db").write_bytes(b"this is not sqlite" * 100)
    with open_spool(data, clock) as spool:
        [corrupt] = spool.recovery.of("corrupt-catalogue")
        assert "catalogue database unreadable" in corrupt.detail
        assert len(spool.recovery.of("adopted")) == 2 and spool.recovery.of("closed-after-crash")
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    assert [r["seq"] for r in list_recordings(data)] == [1, 2, 3]
    assert verify_spool(data)["ok"]


# -------------------------------------------------------------- disk full --

class FillingDisk(DurableFiles):
    """A disk that runs out of space after ``room`` segment files: partial write, then ENOSPC."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, path: Path, data: bytes) -> None:
        if path.suffix == ".age":
            if self.room == 0:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data[: len(data) // 2])
                tmp.unlink()  # what DurableFiles does on failure
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            self.room -= 1
        super().write(path, data)


class FailingDisk(DurableFiles):
    """A disk whose third segment write fails with an I/O error; the writes after it would succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.segment_writes = 0

    def write(self, path: Path, data: bytes) -> None:
        if path.suffix == ".age":
            self.segment_writes += 1
            if self.segment_writes == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        super().write(path, data)


def test_an_io_error_mid_call_ends_the_kept_audio_there_with_no_gap_hidden_inside(data: Path, clock,
                                                                                  central) -> None:
    disk = FailingDisk()
    with open_spool(data, clock, files=disk) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call = make_call(clock)
        sink.open(call)
        frames = audio(4.0)
        with pytest.raises(SpoolError, match="Input/output error"):
            for start in range(0, len(frames), 160):
                sink.write(frames[start:start + 160])
        for start in range(0, len(frames), 160):  # the call flow has not reacted yet: more audio comes
            sink.write(frames[start:start + 160])
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "fault",
                              "ended_mono": clock.monotonic()})
        sink.close(Recording(ended, len(frames), 0.0, (), {}))
    assert disk.segment_writes == 3  # nothing was written after the failure
    folder = data / "spool" / call.call_id
    manifest = mf.verify((folder / "manifest.json").read_bytes())
    assert [s["index"] for s in manifest["segments"]] == [0, 1]
    assert decrypt_recording(folder, central).replace(b"OggS", b"") == frames[:2 * RATE].tobytes()


def test_disk_full_mid_call_keeps_the_stored_part_valid_and_raises_the_alarm(data: Path, clock,
                                                                            central) -> None:
    alarms = []
    with open_spool(data, clock, files=FillingDisk(room=2),
                    on_alarm=lambda kind, why: alarms.append(kind)) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call = make_call(clock)
        sink.open(call)
        frames = audio(4.0)
        with pytest.raises(SpoolFull, match="disk full"):
            for start in range(0, len(frames), 160):
                sink.write(frames[start:start + 160])
        sink.write(frames[:160])  # later frames of the call are dropped, not raised again
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": clock.monotonic()})
        sink.close(Recording(ended, len(frames), 0.0, (), {}))
        assert spool.fault is not None and alarms == ["spool-full"]
    folder = data / "spool" / call.call_id
    manifest = mf.verify((folder / "manifest.json").read_bytes())
    assert [s["index"] for s in manifest["segments"]] == [0, 1]
    assert manifest["audio"]["stopped_by_full_disk"] is True
    assert decrypt_recording(folder, central).replace(b"OggS", b"") == frames[:2 * RATE].tobytes()
    assert not list(data.rglob("*.tmp"))


def test_a_full_disk_met_by_the_catalogue_is_spool_full_with_the_alarm(data: Path, clock, central) -> None:
    """SQLite's "database or disk is full" reaches the recorder as SpoolFull (a SpoolError, so a Fault)."""
    alarms = []
    with open_spool(data, clock, on_alarm=lambda kind, why: alarms.append((kind, why))) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call = make_call(clock)
        sink.open(call)
        pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
        spool.db.execute(f"PRAGMA max_page_count = {pages}")  # the catalogue cannot grow: SQLITE_FULL
        frames = audio(120.0)
        with pytest.raises(SpoolFull, match="disk full while writing segment") as full:
            for start in range(0, len(frames), RATE):
                sink.write(frames[start:start + RATE])
        assert isinstance(full.value.__cause__, sqlite3.OperationalError)
        kept = len(sink.recording.segments)
        sink.write(frames[:160])  # later frames of the call are dropped, not raised again
        assert spool.fault.startswith("disk-full") and [kind for kind, _ in alarms] == ["spool-full"]
        spool.db.execute("PRAGMA max_page_count = 1073741823")  # space freed before the call ends
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": clock.monotonic()})
        sink.close(Recording(ended, len(frames), 0.0, (), {}))
    folder = data / "spool" / call.call_id
    manifest = mf.verify((folder / "manifest.json").read_bytes())
    assert [s["index"] for s in manifest["segments"]] == list(range(kept))
    assert manifest["audio"]["stopped_by_full_disk"] is True
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.age" for i in range(kept)] + ["manifest.json"]
    assert decrypt_recording(folder, central).replace(b"OggS", b"") == frames[:kept * RATE].tobytes()
    assert verify_spool(data)["ok"]


def test_any_other_catalogue_error_while_writing_is_a_spool_error(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        call = make_call(clock)
        sink.open(call)
        spool.db.execute("PRAGMA query_only = 1")  # every write is refused: SQLITE_READONLY
        with pytest.raises(SpoolError, match="writing segment 0 of recording .* failed") as failed:
            sink.write(audio(1.0))
        assert not isinstance(failed.value, SpoolFull) and spool.fault is None
        assert not list((data / "spool" / call.call_id).glob("*.age"))  # no segment the catalogue lacks


# ---------------------------------------------------------------- sync hooks --

def synchronous_at_commit(statements: list[str]) -> str | None:
    """The ``PRAGMA synchronous`` level in force when the traced transaction committed."""
    level = "FULL"  # what the spool opens its catalogue with
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            level = sql.partition("=")[2]
        elif sql == "COMMIT":
            return level
    return None


def test_segments_list_the_catalogue_and_marks_go_both_ways(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 3.5)
        spool.mark_segments_synced(call.call_id, [0, 2])
        spool.mark_synced(call.call_id, 3)
        spool.mark_unsynced(call.call_id, [2])
        with pytest.raises(RecordingGone, match="no-such-recording"):
            spool.segments("no-such-recording")
        with pytest.raises(RecordingGone):
            spool.mark_unsynced("no-such-recording", [0])
    manifest = json.loads((data / "spool" / call.call_id / "manifest.json").read_bytes())
    with open_spool(data, clock) as spool:  # the marks outlive the process that wrote them
        segments = spool.segments(call.call_id)
    assert [s.synced for s in segments] == [True, False, False, True]
    assert [(s.index, s.size, s.sha256) for s in segments] == \
        [(m["index"], m["bytes"], m["sha256"]) for m in manifest["segments"]]
    assert [r["state"] for r in list_recordings(data)] == ["closed"]


def test_read_object_gives_the_stored_bytes_and_refuses_what_the_spool_does_not_write(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 1.5)
        folder = data / "spool" / call.call_id
        assert spool.read_object(call.call_id) == (folder / "manifest.json").read_bytes()
        segments = spool.segments(call.call_id)
        assert [hashlib.sha256(spool.read_object(call.call_id, s.index)).hexdigest() for s in segments] == \
            [s.sha256 for s in segments]
        (folder / "000001.age").unlink()
        os.mkfifo(folder / "000001.age")  # reading a FIFO waits for a writer forever
        with pytest.raises(SpoolError, match="000001.age"):
            spool.read_object(call.call_id, 1)
        with pytest.raises(SpoolError, match="not a recording id"):
            spool.read_object("../keys")


def test_segment_marks_skip_the_fsync_and_the_recording_mark_does_not(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 2.5)
        statements: list[str] = []
        spool.db.set_trace_callback(statements.append)
        spool.mark_segments_synced(call.call_id, [0, 1])
        hint, statements[:] = list(statements), []
        spool.mark_unsynced(call.call_id, [1])
        unmark, statements[:] = list(statements), []
        spool.mark_synced(call.call_id)
        final = list(statements)
        level_after = spool.db.execute("PRAGMA synchronous").fetchone()[0]
    assert synchronous_at_commit(hint) == "NORMAL" and synchronous_at_commit(unmark) == "NORMAL"
    assert synchronous_at_commit(final) == "FULL"
    assert level_after == 2  # FULL again for the segment rows the call thread writes
    # Synced is one transaction: the state and every segment's mark together.
    assert sum(sql.startswith("UPDATE") for sql in final) == 2 and final.count("COMMIT") == 1
    assert [r["state"] for r in list_recordings(data)] == ["synced"]


# --------------------------------------------------------------- retention --

STORE_KEY = Ed25519PrivateKey.generate()


def signed_receipt(spool: Spool, recording_id: str, *, key: Ed25519PrivateKey = STORE_KEY,
                   manifest_sha256: str | None = None) -> bytes:
    """A store receipt for a closed recording, as the centre signs it."""
    digest = manifest_sha256 or hashlib.sha256(spool.read_object(recording_id)).hexdigest()
    return receipt.sign(key, device_id=spool.device_id, recording_id=recording_id, seq=1,
                        manifest_sha256=digest, stored_ms=1_700_000_000_000, prev=receipt.GENESIS).data


def synced_with_receipt(spool: Spool, recording_id: str) -> None:
    spool.keep_receipt(recording_id, signed_receipt(spool, recording_id))
    spool.mark_synced(recording_id)


def test_synced_recordings_expire_after_keep_synced_days(data: Path, clock) -> None:
    with open_spool(data, clock, settings=SpoolSettings(keep_synced_days=7)) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        old, _ = run_call(sink, clock, 0.5)
        unsynced, _ = run_call(sink, clock, 0.5)
        synced_with_receipt(spool, old.call_id)
        clock.advance(6 * 86400)
        assert spool.enforce_retention() == []
        clock.advance(2 * 86400)
        assert spool.enforce_retention() == [old.call_id]
        with pytest.raises(RecordingGone):
            spool.mark_synced("no-such-recording")
    assert [r["state"] for r in list_recordings(data)] == ["purged", "closed"]
    assert not (data / "spool" / old.call_id).exists() and (data / "spool" / unsynced.call_id).exists()
    assert verify_spool(data)["ok"]


def test_over_max_bytes_synced_go_first_then_stop_and_alarm(data: Path, clock) -> None:
    alarms = []
    settings = SpoolSettings(max_bytes=51_000)  # room for one call
    with open_spool(data, clock, settings=settings, on_alarm=lambda k, why: alarms.append(why)) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        first, _ = run_call(sink, clock, 1.0)   # about 32 KB of ciphertext each
        second, _ = run_call(sink, clock, 1.0)
        synced_with_receipt(spool, first.call_id)
        assert spool.enforce_retention() == [first.call_id]
        assert spool.fault is None
        run_call(sink, clock, 1.0)
        assert spool.enforce_retention() == []
        assert spool.fault is not None and "max_bytes" in alarms[0]
        with pytest.raises(SpoolFull, match="refuses new calls"):
            sink.open(make_call(clock))
    assert [r["state"] for r in list_recordings(data)] == ["purged", "closed", "closed"]


def test_overwrite_oldest_deletes_unsynced_when_chosen(data: Path, clock) -> None:
    settings = SpoolSettings(max_bytes=70_000, on_full="overwrite-oldest")  # room for two calls
    with open_spool(data, clock, settings=settings) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        first, _ = run_call(sink, clock, 1.0)
        run_call(sink, clock, 1.0)
        run_call(sink, clock, 1.0)
        assert spool.enforce_retention() == [first.call_id]
        assert spool.fault is None


def test_free_space_floor_stops_new_calls(data: Path, clock) -> None:
    free = [10 ** 9]
    with open_spool(data, clock, disk_free=lambda _p: free[0],
                    settings=SpoolSettings(min_free_bytes=10 ** 8)) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        run_call(sink, clock, 0.5)
        free[0] = 10 ** 7
        with pytest.raises(SpoolFull, match="min_free_bytes"):
            sink.open(make_call(clock))
        free[0] = 10 ** 9
        run_call(sink, clock, 0.5)
        assert spool.fault is None
    assert [r["seq"] for r in list_recordings(data)] == [1, 2]


# ---------------------------------------------------------------- receipts --

def test_receipt_is_kept_durably_beside_the_manifest_and_listed(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
        signed = signed_receipt(spool, call.call_id)
        spool.keep_receipt(call.call_id, signed)
        spool.mark_synced(call.call_id)
        assert spool.status()["synced_without_receipt"] == 0
    assert (data / "spool" / call.call_id / "receipt.json").read_bytes() == signed
    [row] = list_recordings(data)
    # The time listed is the store's, from the receipt (signed_receipt's stored_ms), not the box's clock.
    assert row["state"] == "synced" and row["receipt_stored_ms"] == 1_700_000_000_000 != mf.ms(clock.wall())
    listed = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "spool", "list", "--data-dir",
                             str(data)], capture_output=True, text=True, check=True).stdout
    assert "receipt 20" in listed
    assert verify_spool(data)["ok"]
    with open_spool(data, clock) as spool:  # recovery keeps it: not a stray
        assert not spool.recovery.quarantined
    assert (data / "spool" / call.call_id / "receipt.json").read_bytes() == signed


def test_keep_receipt_writes_through_durable_files_and_refuses_what_is_not_closed(data: Path, clock) -> None:
    written = []

    class Recording(DurableFiles):
        def write(self, path: Path, data: bytes) -> None:
            written.append(path.name)
            super().write(path, data)

    with open_spool(data, clock, files=Recording()) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
        spool.keep_receipt(call.call_id, signed_receipt(spool, call.call_id))
        assert written[-1] == "receipt.json"
        with pytest.raises(RecordingGone):
            spool.keep_receipt("no-such-recording", b"{}")
        with pytest.raises(SpoolError, match="over 1024"):
            spool.keep_receipt(call.call_id, b"x" * 2000)


def provision_store_key(data: Path) -> None:
    (data / "keys" / "store.pub").write_text(base64.b64encode(STORE_KEY.public_key().public_bytes_raw()).decode())


def test_retention_keeps_a_synced_recording_without_a_receipt(data: Path, clock) -> None:
    provision_store_key(data)
    with open_spool(data, clock, settings=SpoolSettings(keep_synced_days=1)) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        bare, _ = run_call(sink, clock, 0.5)
        kept, _ = run_call(sink, clock, 0.5)
        spool.mark_synced(bare.call_id)
        synced_with_receipt(spool, kept.call_id)
        clock.advance(2 * 86400)
        assert spool.enforce_retention() == [kept.call_id]
        assert spool.purge_synced() == []
        assert spool.status()["synced_without_receipt"] == 1
    assert (data / "spool" / bare.call_id).is_dir()
    assert [r["state"] for r in list_recordings(data)] == ["synced", "purged"]
    listed = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "spool", "list", "--data-dir",
                             str(data)], capture_output=True, text=True, check=True).stdout
    assert "no receipt" in listed


def test_a_box_without_a_store_key_deletes_synced_recordings_as_before(data: Path, clock) -> None:
    """It cannot check a receipt, so waiting for one would only fill the spool and stop recording."""
    with open_spool(data, clock, settings=SpoolSettings(keep_synced_days=1)) as spool:
        assert not spool.requires_receipts
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
        spool.mark_synced(call.call_id)
        clock.advance(2 * 86400)
        assert spool.enforce_retention() == [call.call_id]
    assert not (data / "spool" / call.call_id).exists()


def test_spool_verify_finds_a_receipt_for_another_manifest_or_forged(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
        spool.keep_receipt(call.call_id, signed_receipt(spool, call.call_id, manifest_sha256="ab" * 32))
        spool.mark_synced(call.call_id)
    report = verify_spool(data)
    assert not report["ok"] and [p["kind"] for p in report["problems"]] == ["bad-receipt"]
    assert "manifest_sha256" in report["problems"][0]["detail"]
    # With the store key provisioned, a receipt signed by another key is found too.
    provision_store_key(data)
    with open_spool(data, clock) as spool:
        forged = signed_receipt(spool, call.call_id, key=Ed25519PrivateKey.generate())
        spool.keep_receipt(call.call_id, forged)
    report = verify_spool(data)
    assert [p["kind"] for p in report["problems"]] == ["bad-receipt"]
    assert "does not trust" in report["problems"][0]["detail"]


def test_a_catalogue_from_before_receipts_opens_and_keeps_its_rows(data: Path, clock) -> None:
    with open_spool(data, clock) as spool:
        call, _ = run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
        spool.mark_synced(call.call_id)
    db = sqlite3.connect(data / "spool" / "catalogue.db")
    db.execute("ALTER TABLE recordings DROP COLUMN receipt_stored_ms")
    db.commit()
    db.close()
    [old] = list_recordings(data)  # read as it is, before the service migrates it
    assert old["state"] == "synced" and old["receipt_stored_ms"] is None
    with open_spool(data, clock) as spool:
        assert not spool.recovery.quarantined
        spool.keep_receipt(call.call_id, signed_receipt(spool, call.call_id))
    [row] = list_recordings(data)
    assert row["id"] == call.call_id and row["receipt_stored_ms"] is not None

