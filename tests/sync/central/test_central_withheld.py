"""Why a caller ID was withheld reaches the central index and ``linetap-central list``, in the clear."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from central_boxes import CODEC, RATE, Box, make_box, uuid7_at
from linetap.drivers.events import CallerId
from linetap.drivers.v253 import V253Parser
from linetap.firmware.callflow import CallRecord
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import SpoolSink
from linetap.sync.central import index, indexschema
from linetap.sync.central.cli import main
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity
from linetap.sync.central.tools import StoreTools


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = make_box(tmp_path / "boxes", "desk-1", load_identity(central))
    with StoreTools(central) as tools:
        tools.enroll(made.device_id, made.public_key_b64)
    yield made
    made.spool.close()


def record(box: Box, caller: CallerId | None) -> str:
    """A short call on the box's own spool, closed by hang-up."""
    rid = uuid7_at(box.clock.wall(), len(box.calls) + 1)
    call = CallRecord(rid, box.clock.monotonic(), box.clock.wall(), True, caller=caller)
    sink = SpoolSink(box.spool, CODEC)
    sink.open(call)
    sink.write(np.zeros((RATE, 2), np.int16))
    box.clock.advance(1)
    ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                          "ended_mono": box.clock.monotonic()})
    sink.close(Recording(ended, RATE, 0.0, (), {}))
    box.calls.append(rid)
    box.clock.advance(60)
    return rid


def caller_id_from(data: bytes) -> CallerId:
    parser = V253Parser()
    parser.receive_data(data)
    parser.flush()
    [caller] = list(parser.events())
    return caller


def test_the_index_row_carries_the_reason_and_no_placeholder(box: Box, central: Path, clock) -> None:
    # Conexant/CX93001 (AT+VCID=1) on a line whose caller withholds the number.
    private = record(box, caller_id_from(b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Restricted\r\n"))
    # Rockwell (AT#CID=1): an international call.
    abroad = record(box, caller_id_from(b"DATE = 0321\r\nTIME = 1405\r\nNMBR = O\r\nNAME = O\r\n"))
    known = record(box, CallerId(number="+15551230001", name="ACME Corp"))
    unknown = record(box, None)
    with Ingest(central, clock=clock) as ingest:
        for rid in box.calls:
            for part in box.parts(rid):
                ingest.receive(part)
        rows = {rid: ingest.index.recording(rid) for rid in box.calls}
    assert (rows[private]["caller_withheld"], rows[private]["caller_number"]) == ("private", None)
    assert (rows[abroad]["caller_withheld"], rows[abroad]["caller_number"]) == ("out-of-area", None)
    assert (rows[known]["caller_withheld"], rows[known]["caller_number"]) == (None, "+15551230001")
    assert rows[unknown]["caller_withheld"] is None


def test_list_shows_the_reason_where_a_number_would_be(box: Box, central: Path, clock, capsys) -> None:
    rid = record(box, CallerId(reason_withheld="private"))
    with Ingest(central, clock=clock) as ingest:
        for part in box.parts(rid):
            ingest.receive(part)
    assert main(["--data-dir", str(central), "list"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("(private)")
    assert main(["--data-dir", str(central), "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["caller_withheld"] == "private"


def test_a_reason_that_is_not_a_plain_word_is_not_indexed(box: Box, central: Path, clock) -> None:
    rid = record(box, CallerId(reason_withheld="Restricted 5551234"))
    with Ingest(central, clock=clock) as ingest:
        for part in box.parts(rid):
            ingest.receive(part)
        assert ingest.index.recording(rid)["caller_withheld"] is None


def test_an_index_from_before_the_reason_gains_its_column(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    old = sqlite3.connect(path)
    old.executescript(indexschema.SCHEMA.replace("    caller_withheld TEXT,\n", ""))
    old.close()
    with index.SqliteIndex(path) as opened:
        opened.enroll("desk-1", "key", 0)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(recordings)")]
    assert "caller_withheld" in columns
