"""The access log: the CLI logs export, hold, unhold, erase and evidence; one hash chain, checked by audit verify."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from central_boxes import central_index, enrolled
from linetap.sync.central.accesslog import GENESIS, Access, entry_sha256, os_actor, verify_log
from linetap.sync.central.cli import main
from linetap.sync.central.index import INDEX_FILE, SqliteIndex


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


def audit(central: Path, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli(central, "audit", "list", "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_the_cli_logs_who_exported_held_and_erased_what(central: Path, tmp_path: Path, capsys) -> None:
    box = enrolled(tmp_path, central, "desk-1")
    rid, other = box.call(1.5), box.call(1.0)
    box.spool.close()
    assert cli(central, "import", str(box.data_dir)) == 0
    assert cli(central, "export", rid, "-o", str(tmp_path / "a.wav")) == 0
    assert cli(central, "hold", "set", rid, "--reason", "case 7") == 0
    assert cli(central, "hold", "clear", rid) == 0
    assert cli(central, "erase", other, "--reason", "asked by the caller") == 0
    assert cli(central, "evidence", rid, "-o", str(tmp_path / "a.zip")) == 0
    entries = audit(central, capsys)
    assert [(e["action"], e["recording_id"], e["detail"]) for e in entries] == [
        ("export", rid, "file a.wav"), ("hold", rid, "case 7"), ("unhold", rid, None),
        ("erase", other, "asked by the caller"), ("evidence", rid, "bundle a.zip")]
    assert {(e["actor"], e["origin"], e["device_id"]) for e in entries} == {(os_actor(), "cli", "desk-1")}
    assert [e["pos"] for e in entries] == list(range(5)) and entries[0]["prev"] == GENESIS
    assert cli(central, "audit", "list") == 0
    assert "evidence" in capsys.readouterr().out
    assert cli(central, "audit", "verify") == 0
    assert "5 entries" in capsys.readouterr().out
    with central_index(central) as index:
        assert [e["action"] for e in index.access_log("desk-1", other)] == ["erase"]


def test_a_failed_export_is_not_logged(central: Path, tmp_path: Path, capsys) -> None:
    box = enrolled(tmp_path, central, "desk-1")
    rid = box.call(1.0)
    box.spool.close()
    assert cli(central, "import", str(box.data_dir)) == 0
    (tmp_path / "a.wav").write_bytes(b"there")
    assert cli(central, "export", rid, "-o", str(tmp_path / "a.wav")) == 1
    assert audit(central, capsys) == []


def _log(central: Path, n: int) -> None:
    with central_index(central) as index:
        for i in range(n):
            index.log_access(Access("ann", "export", "cli", "desk-1", None, f"#{i}"), 1000 + i)


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_audit_verify_names_the_first_edited_removed_or_inserted_entry(central: Path, capsys) -> None:
    _log(central, 6)
    db = sqlite3.connect(central / INDEX_FILE)
    db.execute("UPDATE access_log SET actor = 'bob' WHERE pos = 2")
    db.commit()
    assert cli(central, "audit", "verify") == 1
    out = capsys.readouterr().out
    assert "broken at position 2" in out and "edited" in out
    db.execute("UPDATE access_log SET actor = 'ann' WHERE pos = 2")
    db.execute("DELETE FROM access_log WHERE pos = 4")
    db.commit()
    assert cli(central, "audit", "verify") == 1
    assert "broken at position 5" in capsys.readouterr().out
    db.close()
    with central_index(central) as index:
        entries = index.access_log()
    rehashed = [dict(e) for e in entries]
    rehashed[1]["detail"] = "forged"  # a forger recomputing the row's own hash still breaks the next link
    rehashed[1]["sha256"] = entry_sha256(rehashed[1])
    assert verify_log(rehashed)[0] == 2


@pytest.mark.embedded_only("appending processes on one SQLite file (PostgreSQL: test_index_contract)")
def test_processes_appending_at_once_keep_one_chain(central: Path) -> None:
    _log(central, 1)  # the index exists before the writers start
    code = ("import sys; from pathlib import Path; from linetap.sync.central.index import SqliteIndex; "
            "from linetap.sync.central.accesslog import Access\n"
            "with SqliteIndex(Path(sys.argv[1])) as index:\n"
            "    for i in range(40): index.log_access(Access(sys.argv[2], 'export', 'cli', 'desk-1', None), i)\n")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(central / INDEX_FILE), f"w{n}"]) for n in range(3)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    with central_index(central) as index:
        entries = index.access_log()
    assert len(entries) == 121 and verify_log(entries) is None
