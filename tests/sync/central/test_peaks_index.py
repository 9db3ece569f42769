"""The peaks table behaves alike on SQLite and PostgreSQL (the index contract's backends)."""

from __future__ import annotations

from test_index_contract import backend, index, row  # noqa: F401  (fixtures of the contract)

from linetap.sync.central.index import IndexTables


def test_peaks_are_kept_once_found_missing_and_dropped_on_erasure(index: IndexTables) -> None:  # noqa: F811
    for n in (1, 2, 3):
        index.add_recording(row("desk-1", n))
    index.add_recording(row("desk-1", 4, recorded=False, segments=0))  # no audio: never asked for peaks
    assert [r["recording_id"] for r in index.without_peaks(10)] == [row("desk-1", n)["recording_id"]
                                                                     for n in (1, 2, 3)]
    first = row("desk-1", 1)["recording_id"]
    assert index.add_peaks("desk-1", first, b"\x00\xffpeaks", 7) is True
    assert index.add_peaks("desk-1", first, b"other", 8) is False  # made once; a second host repeats nothing
    assert index.peaks("desk-1", first) == {"made_ms": 7, "data": b"\x00\xffpeaks", "problem": None}
    second = row("desk-1", 2)["recording_id"]
    assert index.add_peaks("desk-1", second, None, 9, problem="does not decode " + "x" * 900)
    kept = index.peaks("desk-1", second)
    assert kept["data"] is None and kept["problem"].startswith("does not decode") and len(kept["problem"]) == 500
    left = index.without_peaks(10)
    assert [r["recording_id"] for r in left] == [row("desk-1", 3)["recording_id"]]
    assert index.without_peaks(10, since_ms=left[0]["stored_ms"] + 1) == []
    index.mark_erased(first, 10, "subject asked", "desk-1/x/tombstone.json", device_id="desk-1")
    assert index.peaks("desk-1", first) is None
    assert index.add_peaks("desk-1", first, b"late", 11) is False  # an erased recording gets none back
    assert index.add_peaks("desk-9", first, b"stray", 11) is False  # nor one that is not there
    index.drop_peaks("desk-1", second)
    assert index.peaks("desk-1", second) is None
