"""Progress of long jobs: figures, time left, at most one line per interval, text or JSON lines."""

from __future__ import annotations

import json

from linetap.firmware.clock import ManualClock
from linetap.sync.central.progress import Progress


def make(as_json: bool = True, **totals: int) -> tuple[Progress, ManualClock, list[str]]:
    clock, lines = ManualClock(), []
    return Progress("copy", lines.append, as_json=as_json, clock=clock, **totals), clock, lines


def test_rate_and_time_left_come_from_what_this_run_moved() -> None:
    progress, clock, lines = make(objects=100, nbytes=10_000_000)
    progress.advance(40, 4_000_000, skipped=True)  # found copied by an earlier run: instant, not a rate
    clock.advance(2.0)
    progress.advance(10, 1_000_000)
    last = json.loads(lines[-1])
    assert last["objects"] == 50 and last["bytes"] == 5_000_000 and last["total_objects"] == 100
    assert last["bytes_per_s"] == 500_000 and last["objects_per_s"] == 5.0
    assert last["left_s"] == 10.0  # 5 MB left at 0.5 MB/s


def test_lines_are_rate_limited_and_the_last_always_shown() -> None:
    progress, clock, lines = make()
    for _ in range(1000):
        progress.advance(1, 100)
        clock.advance(0.01)  # 10 s in all
    assert 9 <= len(lines) <= 11
    final = progress.finish()
    assert final["done"] and final["objects"] == 1000 and json.loads(lines[-1])["done"] is True


def test_text_lines_name_objects_bytes_rate_and_time_left() -> None:
    progress, clock, lines = make(as_json=False, objects=10, nbytes=10_000_000)
    clock.advance(1.0)
    progress.advance(1, 1_000_000)
    assert lines[-1] == "copy: 1/10 objects, 1.0/10.0 MB, 1.0 MB/s (1 objects/s), 0:09 left"
    clock.advance(3600)
    progress.finish()
    assert lines[-1].endswith("done in 1:00:01") and "left" not in lines[-1]


def test_without_totals_no_time_left_is_guessed() -> None:
    progress, clock, lines = make()
    clock.advance(1.0)
    progress.advance(3, 300)
    assert json.loads(lines[-1])["left_s"] is None and json.loads(lines[-1])["total_objects"] is None


def test_import_of_a_card_shows_recordings_and_bytes_on_stderr(tmp_path, capsys) -> None:
    from central_boxes import enrolled
    from linetap.sync.central.cli import main
    from linetap.sync.central.keys import keys_init

    central = tmp_path / "central"
    keys_init(central)
    box = enrolled(tmp_path, central, "desk-9")
    rids = [box.call(1.5) for _ in range(3)]
    box.spool.close()
    listed = sum(len(box.manifest(r)) + sum(len(d) for _, d in box.segments(r)) for r in rids)
    assert main(["--data-dir", str(central), "import", str(box.data_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["status"] for r in json.loads(out)] == ["stored"] * 3  # stdout: the result alone
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines[0]["progress"] == "import" and lines[0]["total_objects"] == 3
    assert lines[-1]["done"] and lines[-1]["objects"] == 3 and lines[-1]["bytes"] == lines[-1]["total_bytes"] == listed
