"""Delivery receipts at the central store: signed on the manifest's ack, one chained log, checked by verify."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_boxes import Box, central_index, enrolled
from linetap.firmware import manifest as mf
from linetap.firmware import receipt
from linetap.firmware.receipt import GENESIS
from linetap.firmware.keys import WrongKeyKind
from linetap.sync import wire
from linetap.sync.central import indexschema
from linetap.sync.central.cli import main
from linetap.sync.central.index import SCHEMA_VERSION, SqliteIndex
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import CentralKeyMissing, load_store_key


def cli(central: Path, *argv: str) -> int:
    return main(["--data-dir", str(central), *argv])


@pytest.fixture
def box(tmp_path: Path, central: Path) -> Box:
    made = enrolled(tmp_path, central, "desk-1")
    yield made
    made.spool.close()


def trusted(central: Path) -> dict:
    public = load_store_key(central).public_key()
    return {receipt.key_id(public): public}


def manifest_ack(acks: list[wire.Ack]) -> wire.Ack:
    return [a for a in acks if a.object == wire.ObjectRef.manifest() and a.part is None][-1]


def sent(core: Ingest, box: Box, rid: str) -> wire.Ack:
    """Every part of the recording through the core; the manifest's object-level ack, as the box parses it."""
    acks = [ack for part in box.parts(rid) for ack in core.receive(part)]
    assert all(a.receipt is None for a in acks if a.object.kind == "seg")
    ack = manifest_ack(acks)
    return wire.parse_ack(wire.ack_topic(box.device_id, rid), ack.encode(), box.device_id)


def checked(central: Path, box: Box, rid: str, ack: wire.Ack) -> receipt.Receipt:
    assert ack.status == "stored" and ack.receipt is not None
    return receipt.verify(receipt.decode(ack.receipt), trusted(central), device_id=box.device_id,
                          recording_id=rid, manifest_sha256=mf.manifest_hash(box.manifest(rid)))


def verify_json(central: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli(central, "verify", "--all", "--json")
    return code, json.loads(capsys.readouterr().out)


def problems(report: dict) -> list[tuple[str, str | None]]:
    return [(p["kind"], p["recording_id"]) for d in report["devices"] for p in d["problems"]]


# -- ingest --

def test_the_manifest_stored_ack_carries_a_receipt_the_box_can_verify(box: Box, central: Path, clock) -> None:
    rid = box.call(2.5)
    clock.advance(1234.5)
    with Ingest(central, clock=clock) as core:
        ack = sent(core, box, rid)
        r = checked(central, box, rid, ack)
        logged = core.index.receipt(box.device_id, rid)
    assert (r.seq, r.prev, r.stored_ms) == (1, GENESIS, round(clock.wall() * 1000))
    assert r.key_id == receipt.key_id(load_store_key(central).public_key())
    assert logged["data"] == r.data and logged["sha256"] == r.sha256 and logged["pos"] == 0


def test_a_repeated_manifest_gets_the_same_receipt_bytes(box: Box, central: Path, clock) -> None:
    rid = box.call(1.5)
    with Ingest(central, clock=clock) as core:
        first = sent(core, box, rid)
        clock.advance(60)
        again = [a for p in wire.split(box.device_id, rid, wire.ObjectRef.manifest(), box.manifest(rid))
                 for a in core.receive(p)]
        assert len(core.index.receipts()) == 1
    assert manifest_ack(again).receipt == first.receipt
    with Ingest(central, clock=clock) as restarted:  # another worker, later: the log's receipt
        assert sent(restarted, box, rid).receipt == first.receipt


def test_receipts_of_two_devices_chain_in_one_log(tmp_path: Path, box: Box, central: Path, clock) -> None:
    other = enrolled(tmp_path, central, "desk-2")
    a1, b1, a2 = box.call(1.5), other.call(1.5), box.call(1.5)
    with Ingest(central, clock=clock) as core:
        got = [checked(central, b, rid, sent(core, b, rid)) for b, rid in ((box, a1), (other, b1), (box, a2))]
        log = core.index.receipts()
    assert [r.prev for r in got] == [GENESIS, got[0].sha256, got[1].sha256]
    assert [(r["device_id"], r["seq"]) for r in log] == [("desk-1", 1), ("desk-2", 1), ("desk-1", 2)]
    other.spool.close()


FEEDER = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from central_boxes import Box
from linetap.sync.central.ingest import Ingest
central, box_dir, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4]
box = Box(box_dir, device, None, None, "")
parts = [p for rid in sys.argv[5:] for p in box.parts(rid)]
with Ingest(central) as core:
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()  # both processes start together
    for part in parts:
        for ack in core.receive(part):
            assert ack.status == "stored", ack
"""


def test_the_chain_holds_with_two_processes_appending_at_once(tmp_path: Path, box: Box, central: Path,
                                                               capsys) -> None:
    other = enrolled(tmp_path, central, "desk-2")
    calls = [(b, [b.call(1.0) for _ in range(6)]) for b in (box, other)]
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", FEEDER, str(central), str(b.data_dir), here, b.device_id,
                               *rids], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for b, rids in calls]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    with central_index(central) as index:
        log = index.receipts()
    assert [r["pos"] for r in log] == list(range(12))
    assert [r["prev"] for r in log] == [GENESIS] + [r["sha256"] for r in log[:-1]]
    assert {(r["device_id"], r["recording_id"]) for r in log} == {(b.device_id, rid) for b, rids in calls
                                                                  for rid in rids}
    code, report = verify_json(central, capsys)
    assert code == 0 and report["ok"] and [d["receipts"] for d in report["devices"]] == [6, 6]
    other.spool.close()


# -- verify --

def three_stored(tmp_path: Path, central: Path, box: Box, clock) -> list[str]:
    rids = [box.call(1.0) for _ in range(3)]
    with Ingest(central, clock=clock) as core:
        for rid in rids:
            sent(core, box, rid)
    return rids


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_verify_passes_a_whole_log_and_names_a_receipt_with_a_changed_byte(tmp_path: Path, box: Box,
                                                                          central: Path, clock, capsys) -> None:
    rids = three_stored(tmp_path, central, box, clock)
    code, report = verify_json(central, capsys)
    assert code == 0 and problems(report) == [] and report["devices"][0]["receipts"] == 3
    with sqlite3.connect(central / "index.db") as db:
        data = db.execute("SELECT data FROM receipts WHERE pos = 1").fetchone()[0]
        changed = data.replace(b'"seq":2', b'"seq":7')
        assert changed != data
        db.execute("UPDATE receipts SET data = ? WHERE pos = 1", (changed,))
    code, report = verify_json(central, capsys)
    assert code == 1
    assert ("bad-receipt", rids[1]) in problems(report)
    assert ("broken-receipt-link", rids[2]) in problems(report)  # the next one names the old bytes' hash
    assert not [p for p in problems(report) if p[1] == rids[0]]


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_verify_names_a_missing_receipt_and_the_link_it_breaks(tmp_path: Path, box: Box, central: Path, clock,
                                                               capsys) -> None:
    rids = three_stored(tmp_path, central, box, clock)
    with sqlite3.connect(central / "index.db") as db:
        db.execute("DELETE FROM receipts WHERE pos = 1")
    code, report = verify_json(central, capsys)
    assert code == 1
    assert sorted(problems(report)) == [("broken-receipt-link", rids[2]), ("missing-receipt", rids[1])]


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_verify_names_a_well_signed_receipt_that_links_to_the_wrong_prev(tmp_path: Path, box: Box, central: Path,
                                                                        clock, capsys) -> None:
    rids = three_stored(tmp_path, central, box, clock)
    with SqliteIndex(central / "index.db") as index:
        row = index.receipt(box.device_id, rids[2])
    forged = receipt.sign(load_store_key(central), device_id=row["device_id"], recording_id=row["recording_id"],
                          seq=row["seq"], manifest_sha256=row["manifest_sha256"], stored_ms=row["stored_ms"],
                          prev="ab" * 32)
    with sqlite3.connect(central / "index.db") as db:
        db.execute("UPDATE receipts SET data = ?, sha256 = ?, prev = ? WHERE pos = 2",
                   (forged.data, forged.sha256, forged.prev))
    code, report = verify_json(central, capsys)
    assert code == 1 and problems(report) == [("broken-receipt-link", rids[2])]


def test_list_json_says_when_each_recording_was_receipted(box: Box, central: Path, clock, capsys) -> None:
    rid = box.call(1.0)
    with Ingest(central, clock=clock) as core:
        r = checked(central, box, rid, sent(core, box, rid))
    capsys.readouterr()
    assert cli(central, "list", "--json") == 0
    assert [row["receipt_stored_ms"] for row in json.loads(capsys.readouterr().out)] == [r.stored_ms]


# -- the schema --

@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_an_index_of_the_previous_version_gains_an_empty_receipt_log(tmp_path: Path, box: Box, central: Path,
                                                                     clock, capsys) -> None:
    rid = box.call(1.0)
    with Ingest(central, clock=clock) as core:
        sent(core, box, rid)
    with sqlite3.connect(central / "index.db") as db:  # the file as version 1 left it
        for table in ("receipts", "timestamps", "access_log"):
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 1")
    with SqliteIndex(central / "index.db") as index:
        assert index.receipts() == []
        assert index.recording(rid, box.device_id) is not None
    with sqlite3.connect(central / "index.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"receipts", "timestamps", "access_log"} <= tables
    code, report = verify_json(central, capsys)
    assert code == 1 and problems(report) == [("missing-receipt", rid)]  # stored before the log began
    with Ingest(central, clock=clock) as core:  # the box sends the manifest again: it gets one then
        r = checked(central, box, rid, sent(core, box, rid))
    assert r.prev == GENESIS
    assert verify_json(central, capsys)[0] == 0


@pytest.mark.embedded_only("edits the SQLite file directly to tamper with or age the index (PostgreSQL: the index contract tests)")
def test_serve_signs_receipts_for_recordings_stored_before_the_log(tmp_path: Path, box: Box, central: Path,
                                                                    clock, capsys) -> None:
    rids = three_stored(tmp_path, central, box, clock)
    with sqlite3.connect(central / "index.db") as db:
        db.execute("DELETE FROM receipts")
        stored_ms = [db.execute("SELECT stored_ms FROM recordings WHERE recording_id = ?", (rid,)).fetchone()[0]
                     for rid in rids]
    with Ingest(central, clock=clock) as core:
        assert core.issue_missing_receipts() == 3
        assert core.issue_missing_receipts() == 0
        log = core.index.receipts()
    assert [(r["recording_id"], r["stored_ms"]) for r in log] == list(zip(rids, stored_ms))
    assert verify_json(central, capsys)[0] == 0
    assert "CREATE TABLE IF NOT EXISTS receipts" in indexschema.SCHEMA


# -- the store key --

def test_keys_init_adds_a_store_key_to_an_existing_store_and_never_replaces_it(central: Path, capsys) -> None:
    keys = central / "keys"
    (keys / "store.key").unlink()  # a store made before receipts
    before = {name: (keys / name).read_bytes() for name in ("central.key", "operator.key")}
    capsys.readouterr()
    assert cli(central, "keys", "init") == 0
    out = capsys.readouterr().out
    assert "created store key" in out and "kept existing age identity" in out and "kept existing operator key" in out
    assert {name: (keys / name).read_bytes() for name in before} == before
    assert stat.S_IMODE((keys / "store.key").stat().st_mode) == 0o600
    store = (keys / "store.key").read_bytes()
    public = mf_public(central)
    assert f"--store-key BASE64):\n  {public}" in out
    assert cli(central, "keys", "init") == 0
    assert "kept existing store key" in capsys.readouterr().out
    assert (keys / "store.key").read_bytes() == store
    assert cli(central, "keys", "show") == 0
    assert public in capsys.readouterr().out
    assert b"PRIVATE" not in out.encode()


def mf_public(central: Path) -> str:
    from linetap.firmware.keys import public_key_b64

    return public_key_b64(load_store_key(central).public_key())


def test_a_store_key_of_the_wrong_kind_is_refused_by_name(central: Path, tmp_path: Path) -> None:
    keys = central / "keys"
    (keys / "store.key").write_bytes((keys / "operator.key").read_bytes())
    with pytest.raises(WrongKeyKind, match="is the operator key"):
        load_store_key(central)
    (keys / "store.key").write_bytes((keys / "central.key").read_bytes())
    with pytest.raises(WrongKeyKind, match="holds an age identity"):
        load_store_key(central)
    (keys / "store.key").unlink()
    with pytest.raises(CentralKeyMissing, match="keys init"):
        Ingest(central)


def test_serve_refuses_to_start_without_a_store_key(central: Path, capsys) -> None:
    (central / "keys" / "store.key").unlink()
    assert cli(central, "serve") == 1
    err = capsys.readouterr().err
    assert "store.key" in err and "linetap-central keys init" in err


def test_an_injected_store_key_signs_and_nothing_is_read_per_message(box: Box, central: Path, clock) -> None:
    key = Ed25519PrivateKey.generate()
    rid = box.call(1.0)
    with Ingest(central, clock=clock, store_key=key) as core:
        (central / "keys" / "store.key").unlink()  # loaded once, never again
        ack = sent(core, box, rid)
    public = key.public_key()
    r = receipt.verify(receipt.decode(ack.receipt), {receipt.key_id(public): public}, device_id=box.device_id,
                       recording_id=rid, manifest_sha256=mf.manifest_hash(box.manifest(rid)))
    assert r.prev == GENESIS
