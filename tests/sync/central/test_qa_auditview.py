"""The access log page's filters and exports (sans-IO): bad filters named and left out, exports complete."""

from __future__ import annotations

import csv
import io
import json

from linetap.sync.central.accesslog import COLUMNS, GENESIS, entry_sha256, verify_log
from linetap.sync.central.qa import auditview


def log(n: int) -> list[dict]:
    entries, prev = [], GENESIS
    for pos in range(n):
        entry = {"pos": pos, "at_ms": 1_764_547_200_000 + pos * 3_600_000,  # 2025-12-01T00:00Z, hourly
                 "actor": ["rita", "=cmd|' /C calc'!A0", "Ann"][pos % 3], "action": ["listen", "evaluate", "login"][pos % 3],
                 "device_id": "desk-1" if pos % 2 else None, "recording_id": f"r{pos}" if pos % 2 else None,
                 "origin": f"web 127.0.0.{pos % 4}", "detail": None if pos % 5 else "x,\"y\"", "prev": prev}
        entry["sha256"] = entry_sha256(entry)
        entries.append(entry)
        prev = entry["sha256"]
    return entries


def test_filters_combine() -> None:
    entries = log(30)
    query = auditview.parse({"actor": "RIT", "action": "listen", "since": "2025-12-01T03:00", "until": "2025-12-02"})
    assert query.problems == []
    assert [e["pos"] for e in auditview.select(entries, query)] == [3, 6, 9, 12, 15, 18, 21]
    assert [e["pos"] for e in auditview.select(entries, auditview.parse({"device": "desk-1", "recording": "r7"}))] == [7]
    assert len(auditview.select(entries, auditview.parse({"origin": "127.0.0.3"}))) == 7


def test_bad_filters_are_named_and_left_out() -> None:
    query = auditview.parse({"action": "drop-table", "since": "yesterday", "page": "0", "actor": "x" * 201,
                             "recording": "r1"})
    assert query.values == {"recording": "r1"}
    text = " | ".join(query.problems)
    assert "action 'drop-table' is not logged; choose one of" in text
    assert "since 'yesterday' is not a date; write e.g. 2026-12-01" in text
    assert "page '0' is not a page number" in text and "actor is 201 characters" in text


def test_pages_newest_first() -> None:
    entries = log(250)
    shown, pages = auditview.page_of(entries, auditview.parse({}))
    assert pages == 3 and shown[0]["pos"] == 249 and len(shown) == 100
    shown, _ = auditview.page_of(entries, auditview.parse({"page": "9"}))  # past the end: the last page
    assert [e["pos"] for e in shown] == list(range(49, -1, -1))


def test_exports_hold_every_column_and_the_chain_checks_from_them() -> None:
    entries = log(12)
    rows = list(csv.DictReader(io.StringIO(auditview.as_csv(entries))))
    assert len(rows) == 12 and rows[0]["at"] == "2025-12-01T00:00:00.000+00:00"
    assert rows[1]["actor"] == "'=cmd|' /C calc'!A0"  # a formula is written as text
    assert rows[0]["detail"] == "x,\"y\""
    lines = auditview.as_jsonl(entries).splitlines()
    back = [json.loads(line) for line in lines]
    assert set(back[0]) == set(COLUMNS) and verify_log(back) is None
    back[4]["actor"] = "mallory"
    assert verify_log(back)[0] == 4
