"""The box's own tools against a damaged spool: ``spool list`` and ``spool verify`` report, never crash or write.

And the service's recovery meets the same damage without dying: what it
cannot make sense of goes to quarantine and the catalogue is rebuilt so that
``spool list`` shows what it showed before.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.cli import main
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CatalogueUnreadable, SpoolSink, list_recordings, verify_spool

from test_spool import CODEC, FakeSegmenter, central, crash_mid_call, data, open_spool, run_call  # noqa: F401


def cli(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--data-dir", str(data)])
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, times and bytes: proof that nothing was written."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


def two_calls(data: Path, clock) -> list[CallRecord]:
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        return [run_call(sink, clock, 2.5)[0], run_call(sink, clock, 1.5)[0]]


def catalogue(data: Path) -> Path:
    return data / "spool" / "catalogue.db"


def replace_catalogue(data: Path, make) -> None:
    for part in (data / "spool").glob("catalogue.db*"):
        part.unlink()
    make(catalogue(data))


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def a_folder(path: Path) -> None:
    path.mkdir()


def wrong_tables(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()


def wrong_columns(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE recordings (id TEXT, seq INTEGER)")
    db.execute("INSERT INTO recordings VALUES ('x', 1)")
    db.commit()
    db.close()


@pytest.mark.parametrize("make, says", [
    (random_bytes, "is not a SQLite database"),
    (empty, "is empty (0 bytes)"),
    (a_folder, "is a folder, not a SQLite database file"),
    (wrong_tables, "is not a linetap catalogue: it has no recordings table"),
    (wrong_columns, "is not a linetap catalogue: its recordings table lacks the columns state,"),
])
def test_list_and_verify_report_a_garbage_catalogue_and_write_nothing(data: Path, clock, capsys, make,
                                                                       says: str) -> None:
    two_calls(data, clock)
    replace_catalogue(data, make)
    before = snapshot(data)
    code, out, err = cli(capsys, data, "spool", "list")
    assert code == 1 and out == ""
    assert f"linetap: the catalogue {catalogue(data)} {says}" in err
    assert "rebuilds the catalogue from the recordings when it starts" in err
    code, out, err = cli(capsys, data, "spool", "verify")
    assert code == 1 and "PROBLEMS" in out and f"bad-catalogue: None: the catalogue {catalogue(data)} {says}" in out
    code, out, _ = cli(capsys, data, "spool", "verify", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["manifests"] == 2 and report["chain"]["ok"]
    assert [p["kind"] for p in report["problems"]] == ["bad-catalogue"]  # no orphan noise on top
    with pytest.raises(CatalogueUnreadable, match=re.escape(says)):
        list_recordings(data)  # the doctor catches it as sqlite3.DatabaseError
    assert snapshot(data) == before


def test_rows_with_garbage_values_are_reported_and_the_good_rows_still_listed(data: Path, clock,
                                                                              capsys) -> None:
    first, second = two_calls(data, clock)
    db = sqlite3.connect(catalogue(data))
    db.execute("UPDATE recordings SET seq = 'one', consent = '{{' WHERE id = ?", (first.call_id,))
    db.commit()
    db.close()
    before = snapshot(data)
    code, out, err = cli(capsys, data, "spool", "list")
    assert code == 1 and second.call_id in out and first.call_id not in out
    assert f"makes no sense: seq = 'one' is not a whole number from 1 to" in err
    assert "moves the row to quarantine when it starts" in err
    code, out, _ = cli(capsys, data, "spool", "verify", "--json")
    report = json.loads(out)
    assert code == 1 and {p["kind"] for p in report["problems"]} == {"bad-catalogue-row", "orphan-recording"}
    assert snapshot(data) == before


@pytest.mark.parametrize("value", ["x" * 10, 10**30, 2.5, b"\x00\x01", -5])
def test_any_wrongly_typed_value_is_a_problem_not_a_crash(data: Path, clock, capsys, value) -> None:
    [first, _] = two_calls(data, clock)
    for column in ("segments", "bytes", "flagged", "clock_synced", "state", "manifest_sha256"):
        db = sqlite3.connect(catalogue(data))
        saved = db.execute(f"SELECT {column} FROM recordings WHERE id = ?", (first.call_id,)).fetchone()[0]
        db.execute(f"UPDATE recordings SET {column} = ? WHERE id = ?",
                   (str(value) if isinstance(value, int) and value > 2**63 else value, first.call_id))
        db.commit()
        code, out, err = cli(capsys, data, "spool", "list", "--json")
        assert code == 1 and f"{column} = " in err and len(json.loads(out)) == 1
        assert cli(capsys, data, "spool", "verify")[0] == 1
        db.execute(f"UPDATE recordings SET {column} = ? WHERE id = ?", (saved, first.call_id))
        db.commit()
        db.close()


def test_a_spool_that_is_a_file_is_reported_and_left_alone(data: Path, clock, capsys) -> None:
    (data / "spool").write_bytes(b"not a folder")
    before = snapshot(data)
    for args in (("spool", "list"), ("spool", "verify")):
        code, out, err = cli(capsys, data, *args)
        assert code == 1 and "Traceback" not in out + err
        assert f"{data / 'spool'} is a file, not a folder" in out + err and "restart the service" in out + err
    assert snapshot(data) == before
    with open_spool(data, clock) as spool:  # the service moves it aside and records again
        [moved] = spool.recovery.of("spool-not-a-folder")
        assert Path(moved.moved_to).read_bytes() == b"not a folder"
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    assert verify_spool(data)["ok"]


def test_verify_never_reads_a_device_or_pipe_in_place_of_a_file(data: Path, clock, capsys) -> None:
    first, second = two_calls(data, clock)
    segment = data / "spool" / first.call_id / "000000.age"
    segment.unlink()
    os.mkfifo(segment)  # reading a FIFO waits for a writer forever
    manifest = data / "spool" / second.call_id / "manifest.json"
    manifest.unlink()
    manifest.symlink_to("/dev/zero")  # reading /dev/zero never ends
    code, out, _ = cli(capsys, data, "spool", "verify")
    assert code == 1
    assert "000000.age: is a pipe, not a file" in out
    assert "manifest.json is a character device, not a regular file" in out


def test_recovery_quarantines_garbage_rows_and_adopts_the_files_again(data: Path, clock, capsys) -> None:
    first, second = two_calls(data, clock)
    _, before, _ = cli(capsys, data, "spool", "list")
    db = sqlite3.connect(catalogue(data))
    db.execute("UPDATE recordings SET seq = 'one' WHERE id = ?", (first.call_id,))
    db.execute("UPDATE segments SET size = 'big' WHERE recording_id = ? AND idx = 0", (second.call_id,))
    db.commit()
    db.close()
    with open_spool(data, clock) as spool:
        kinds = [f.kind for f in spool.recovery.findings]
        assert kinds.count("bad-catalogue-row") == 2 and "adopted" in kinds
    assert cli(capsys, data, "spool", "list") == (0, before, "")
    assert cli(capsys, data, "spool", "verify")[0] == 0


def test_recovery_rebuilds_a_catalogue_with_the_wrong_columns(data: Path, clock, capsys) -> None:
    two_calls(data, clock)
    _, before, _ = cli(capsys, data, "spool", "list")
    replace_catalogue(data, wrong_columns)
    with open_spool(data, clock) as spool:
        assert spool.recovery.of("corrupt-catalogue")
    assert cli(capsys, data, "spool", "list") == (0, before, "")


def test_a_rebuilt_catalogue_lists_the_same_kept_figures(data: Path, clock, capsys) -> None:
    with open_spool(data, clock) as spool:
        sink = SpoolSink(spool, CODEC, FakeSegmenter)
        run_call(sink, clock, 2.5)
        call, _ = run_call(sink, clock, 1.5, close=False)
        sink.discard()  # opted out: nothing kept, before and after
        opted = CallRecord(**{**call.__dict__, "ended_by": "hang-up", "ended_mono": clock.monotonic(),
                              "events": (CallEvent(0.5, "announcement-start", {"language": "en"}),
                                         CallEvent(1.0, "opt-out", {"by": "caller"}))})
        sink.close(Recording(opted, 0, None, (), {}))
        run_call(sink, clock, 1.0, flagged=True)
    code, listed, _ = cli(capsys, data, "spool", "list")
    _, as_json, _ = cli(capsys, data, "spool", "list", "--json")
    assert code == 0 and listed.count("(nothing kept)") == 1
    for part in (data / "spool").glob("catalogue.db*"):
        part.unlink()
    with open_spool(data, clock) as spool:
        assert len(spool.recovery.of("adopted")) == 3
    assert cli(capsys, data, "spool", "list") == (0, listed, "")
    assert json.loads(cli(capsys, data, "spool", "list", "--json")[1]) == json.loads(as_json)


def test_hostile_files_in_an_open_recording_do_not_stop_recovery(data: Path, clock) -> None:
    call, folder = crash_mid_call(data, clock)
    os.mkfifo(folder / "000002.age")
    (folder / "\u0660\u0660\u0660\u0660\u0660\u0663.age").write_bytes(b"age-encryption.org/v1\n")  # Arabic digits
    (data / "spool" / "chain.json").write_text('{"allocated": 1, "allocated": 9, "last": {}}')
    with open_spool(data, clock) as spool:
        kinds = sorted(f.kind for f in spool.recovery.findings)
        assert kinds == ["bad-segment", "closed-after-crash", "corrupt-chain-head", "orphan-file"]
        run_call(SpoolSink(spool, CODEC, FakeSegmenter), clock, 0.5)
    assert [r["seq"] for r in list_recordings(data)] == [1, 2]
    assert verify_spool(data)["ok"]


def test_an_open_json_with_garbage_is_quarantined_not_trusted(data: Path, clock) -> None:
    call, folder = crash_mid_call(data, clock)
    for part in (data / "spool").glob("catalogue.db*"):
        part.unlink()
    (folder / "open.json").write_text('{"recording_id": "%s", "seq": 1, "started": {"wall_ms": 1e999}}'
                                      % call.call_id)
    with open_spool(data, clock) as spool:
        [orphan] = spool.recovery.of("orphan-recording")
        assert "not an integer" in orphan.detail


@pytest.mark.parametrize("left_behind", ["wal-and-shm", "wal-only"])
def test_list_reads_what_a_crash_left_in_the_wal_without_writing(data: Path, clock, capsys,
                                                                 left_behind: str) -> None:
    two_calls(data, clock)
    _, expected, _ = cli(capsys, data, "spool", "list")
    scratch = data.parent / "crashed"
    db = sqlite3.connect(catalogue(data))
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("UPDATE recordings SET flagged = 1")  # committed to the WAL only
    db.commit()
    for part in (data / "spool").glob("catalogue.db*"):  # the files as a power cut leaves them
        (scratch / part.name).parent.mkdir(exist_ok=True)
        (scratch / part.name).write_bytes(part.read_bytes())
    db.close()
    for part in scratch.iterdir():
        (data / "spool" / part.name).write_bytes(part.read_bytes())
    if left_behind == "wal-only":
        (data / "spool" / "catalogue.db-shm").unlink()
    assert (data / "spool" / "catalogue.db-wal").stat().st_size > 0
    before = snapshot(data)
    code, out, err = cli(capsys, data, "spool", "list")
    assert (code, err) == (0, "") and out.count("flagged") == 2 and out != expected
    if left_behind == "wal-and-shm":  # SQLite's shared-memory index is rebuilt; data and WAL are untouched
        for state in (before, after := snapshot(data)):
            state.pop("spool/catalogue.db-shm")
        assert after == before
    else:
        assert snapshot(data) == before
